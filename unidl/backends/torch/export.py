"""Export on torch: ``torch.export`` programs (``.pt2``) and ONNX files, both with a dynamic batch size."""

from __future__ import annotations

import torch

#: the formats ``Backend.export`` writes on torch
EXPORT_FORMATS = ("torch_export", "onnx")


class ExportModule(torch.nn.Module):
    """``forward(x)`` over a unidl module's ``NativeModule``: one named input for a dynamic batch dimension."""

    def __init__(self, native):
        super().__init__()
        self.model = native
        self.training = False  # only this wrapper: the unidl modules' modes are the caller's business

    def forward(self, x):
        return self.model(x)


def _exported_program(module, input_shape):
    native = module.native
    first = next(native.parameters(), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    # batch 2, not 1: torch.export specializes dimensions of size 0 and 1 to constants
    example = torch.zeros((2, *input_shape), dtype=dtype, device=device)
    batch = torch.export.Dim("batch")
    wrapper = ExportModule(native)
    return wrapper, example, {"x": {0: batch}}


def export_module(module, path: str, format: str, input_shape) -> None:
    """Write ``module`` as a ``torch.export`` program (``format='torch_export'``) or an ONNX model."""
    wrapper, example, dynamic_shapes = _exported_program(module, input_shape)
    if format == "torch_export":
        program = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, path)
        return
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"exporting to ONNX on torch needs the onnx and onnxscript packages ({error}); "
                          f"pip install 'unidl[onnx]'") from None
    torch.onnx.export(wrapper, (example,), path, input_names=["x"], output_names=["y"],
                      dynamic_shapes=dynamic_shapes, dynamo=True, external_data=False, verbose=False)
