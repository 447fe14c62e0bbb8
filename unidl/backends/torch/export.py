"""Export on torch: ``torch.export`` programs (``.pt2``) and ONNX files, both with a dynamic batch size."""

from __future__ import annotations

import torch

from unidl.backends.torch import SPEC
from unidl.errors import UnidlError

#: the formats ``Backend.export`` writes on torch: those its SPEC describes
EXPORT_FORMATS = tuple(SPEC.export_formats)


class ExportModule(torch.nn.Module):
    """``forward(x)`` over a unidl module's ``NativeModule``: one named input for a dynamic batch dimension. With
    ``flat`` (ONNX), a nested output comes as ``unidl.export.flat_outputs`` flattens it, as on every backend."""

    def __init__(self, native, flat: bool = False):
        super().__init__()
        self.model = native
        self.flat = flat
        self.training = False  # only this wrapper: the unidl modules' modes are the caller's business

    def forward(self, x):
        from unidl.export import flat_outputs

        output = self.model(x)
        return flat_outputs(output) if self.flat else output


def _exported_program(module, input_shape, input_dtype, flat: bool):
    """``torch.export`` of the module's forward on an example of ``input_dtype`` (None: the module's dtype), its
    batch dimension dynamic."""
    native = module.native
    first = next(native.parameters(), None)
    dtype = getattr(torch, input_dtype) if input_dtype else first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    # batch 2, not 1: torch.export specializes dimensions of size 0 and 1 to constants
    example = torch.zeros((2, *input_shape), dtype=dtype, device=device)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}}
    return torch.export.export(ExportModule(native, flat), (example,), dynamic_shapes=dynamic_shapes)


def export_module(module, path: str, format: str, input_shape, input_dtype=None) -> None:
    """Write ``module`` as a ``torch.export`` program (``format='torch_export'``) or an ONNX model."""
    if format == "torch_export":
        program = _exported_program(module, input_shape, input_dtype, flat=False)
        with open(path, "wb") as file:  # (a path named the archive's root folder after the export's temporary name)
            torch.export.save(program, file)
        return
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"exporting to ONNX on torch needs the onnx and onnxscript packages ({error}); "
                          f"pip install 'unidl[onnx]'") from None
    # traced here rather than by torch.onnx.export, which raises a unidl error (a wrong input_shape's
    # ShapeMismatchError) wrapped in its own TorchExportError: unidl's comes out as torch_export gives it
    program = _exported_program(module, input_shape, input_dtype, flat=True)
    try:
        # outputs named by unidl.export (y, y_1, ...) as on every backend
        torch.onnx.export(program, f=path, input_names=["x"], dynamic_shapes={"x": {0: "batch"}}, dynamo=True,
                          external_data=False, verbose=False)
    except Exception as error:
        cause = _unidl_cause(error)
        if cause is None:
            raise
        raise cause.with_traceback(cause.__traceback__) from None


def _unidl_cause(error):
    """The unidl error in ``error``'s chain of causes, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UnidlError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
