"""``export``: a model's forward as a standalone inference program that runs without unidl.

The front end checks the request (format, input shape, target path) and places the result
atomically; the model's backend writes the program (see ``Backend.export``). Programs take
and return the canonical layout (NCHW images), with any batch size.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil

from unidl.errors import ExportFormatError
from unidl.io.atomic import fsync_directory
from unidl.nn.module import restore_modes

#: every export format unidl knows -> what it writes and how to load it without unidl
FORMATS = {
    "saved_model": "a SavedModel directory: tf.saved_model.load(path).serve(x)",
    "torch_export": "a .pt2 file: torch.export.load(path).module()(x)",
    "onnx": "an .onnx file: onnxruntime.InferenceSession(path).run(None, {'x': x})",
    "stablehlo": "a serialized jax.export.Exported: jax.export.deserialize(bytearray(open(path, 'rb').read())).call(x)",
}
#: formats that write a directory rather than a single file
DIRECTORY_FORMATS = ("saved_model",)


def default_input_shape(model) -> tuple[int, ...]:
    """One sample's shape, from ``model.config``: CNN-style (in_channels, image_size) or TwoLayerNet-style D_in."""
    config = getattr(model, "config", None) or {}
    if "in_channels" in config and "image_size" in config:
        size = config["image_size"]
        return (config["in_channels"], size, size)
    if "D_in" in config:
        return (config["D_in"],)
    raise ValueError(f"cannot tell the input shape of {type(model).__name__} from its config ({config!r}); "
                     f"pass input_shape= (one sample's shape without the batch dimension, e.g. (1, 8, 8))")


def _check_input_shape(input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be a non-empty sequence of positive ints without the batch "
                         f"dimension (e.g. (1, 8, 8)), got {input_shape!r}")
    return shape


def _check_format(format, backend) -> None:
    supported = tuple(backend.export_formats())
    if format in supported:
        return
    valid = ", ".join(repr(f) for f in supported) or "none"
    if format in FORMATS:
        raise ExportFormatError(f"the {backend.name} backend cannot export format {format!r}; valid formats on "
                                f"{backend.name}: {valid} (unidl knows {', '.join(map(repr, FORMATS))})")
    raise ExportFormatError(f"unknown export format {format!r}; valid formats on {backend.name}: {valid}")


def _check_target(path: str, format: str, overwrite: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot export to {path!r}: directory {directory!r} does not exist")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True to replace it")
    writes_directory = format in DIRECTORY_FORMATS
    if writes_directory and not os.path.isdir(path):
        raise NotADirectoryError(f"cannot export {format} to {path!r}: it exists and is not a directory")
    if not writes_directory and os.path.isdir(path):
        raise IsADirectoryError(f"cannot export {format} to {path!r}: it is a directory, expected a file path")
    if writes_directory and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        # never delete a whole directory that is not an earlier export
        raise FileExistsError(f"{path!r} is a directory that holds no SavedModel; refusing to replace it "
                              f"even with overwrite=True")


def _temporary_path(path: str, purpose: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    stem, suffix = os.path.splitext(name)
    # keep the suffix: some writers (ONNX, .pt2) look at it
    return os.path.join(directory, f".{stem}.{secrets.token_hex(6)}.{purpose}{suffix}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def _eval_mode(model):
    """Every module in eval mode for the trace, then each back in its own earlier mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        restore_modes(modes)


def export(model, path, format: str, input_shape=None, overwrite: bool = False) -> None:
    """Write ``model``'s forward, in eval mode, as an inference program that runs without unidl.

    Formats (each backend writes some; an unsupported one raises ``ExportFormatError`` listing them):

    - ``'saved_model'`` (tensorflow, keras; jax where TensorFlow is installed): a SavedModel directory;
      ``tf.saved_model.load(path)`` gives ``loaded.serve(x)`` and ``loaded.signatures['serving_default']``.
    - ``'torch_export'`` (torch): a ``.pt2`` file of ``torch.export``; ``torch.export.load(path).module()(x)``.
    - ``'onnx'`` (torch, jax): an ONNX file with input ``'x'`` and output ``'y'``, the weights inside; needs
      ``pip install 'unidl[onnx]'`` (torch: onnx and onnxscript; jax: jax2onnx). A float64 model gives a
      ``tensor(double)`` program; onnxruntime's CPU provider has no float64 ``Conv`` kernel, so it runs such a
      program only where it holds no convolution.
    - ``'stablehlo'`` (jax): a serialized ``jax.export.Exported``, StableHLO with the weights inside, lowered for
      CPU and CUDA; ``jax.export.deserialize(bytearray(open(path, 'rb').read())).call(x)``.

    Args:
        model: a ``unidl.nn.Module``; exported on its own backend, with its current weights.
        path: the file (or, for saved_model, directory) to create; its parent directory must exist.
        format: one of the formats above.
        input_shape: one sample's shape without the batch dimension, e.g. ``(1, 8, 8)``; by default
            taken from ``model.config`` (CNN: in_channels and image_size; TwoLayerNet: D_in).
        overwrite: replace an existing ``path`` (otherwise ``FileExistsError``).

    The program takes ``x`` of shape ``(batch, *input_shape)`` in the canonical layout (NCHW) and
    the model's dtype, for any batch size, and returns the model's output. It is written under a
    temporary name and renamed into place, so a failed export leaves nothing behind.

    Example::

        ud.export(model, "cnn.pt2", format="torch_export")      # under the torch backend
        program = torch.export.load("cnn.pt2").module()
        logits = program(torch.from_numpy(x))
    """
    from unidl.nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"ud.export expects a unidl.nn.Module, got {type(model).__name__}")
    backend = model._backend
    _check_format(format, backend)
    shape = _check_input_shape(default_input_shape(model) if input_shape is None else input_shape)
    path = os.fspath(path)
    _check_target(path, format, overwrite)

    temporary = _temporary_path(path, "tmp")
    try:
        with _eval_mode(model):
            backend.export(model, temporary, format, shape)
        _place(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def _place(temporary: str, path: str) -> None:
    """Rename ``temporary`` to ``path``; an existing directory is moved aside first and removed after
    (a rename cannot replace a non-empty directory)."""
    if not os.path.isdir(path) or os.path.islink(path):
        os.replace(temporary, path)
        return
    old = _temporary_path(path, "old")
    os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)
