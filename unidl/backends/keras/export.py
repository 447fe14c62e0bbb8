"""Export on keras: a SavedModel written by Keras's own ``ExportArchive`` (endpoint ``serve``, NCHW input) where
Keras writes one (on TensorFlow and JAX), and the host framework's own formats where the host's exporter takes the
Keras model as it takes a module of its own (on torch a Keras layer is a ``torch.nn.Module`` whose parameters are
the Keras variables: ``torch.export`` programs and ONNX files, as the torch backend writes them)."""

from __future__ import annotations

import keras

from unidl.backends.keras.host import HOST


def export_formats() -> tuple[str, ...]:
    """The formats ``Backend.export`` writes on keras, which depend on the framework under Keras: told by its
    host's capabilities (``keras_writes_saved_model``, ``exports_keras_models``)."""
    own = ("saved_model",) if HOST.keras_writes_saved_model else ()
    return own + (tuple(HOST.export_formats()) if HOST.exports_keras_models else ())


def export_module(module, path: str, format: str, input_shape, input_dtype=None) -> None:
    """Write ``module`` as a SavedModel at ``path`` (endpoint ``serve``, also signature ``serving_default``), or in
    a format of the host's, written by the host's exporter; the input of ``input_dtype`` (None: the module's
    dtype), a nested output as ``unidl.export.flat_outputs`` flattens it (a signature holds no nesting)."""
    native = module.native
    variables = native.unidl_parameters + native.unidl_buffers
    dtype = input_dtype or (variables[0].dtype if variables else "float32")
    if variables and "float" in str(dtype) and str(dtype) != str(variables[0].dtype):
        _forward_takes(module, input_shape, str(dtype))
    if format != "saved_model":
        HOST.export(module, path, format, input_shape, input_dtype)
        return
    from unidl.backends.tensorflow.layout import tracing_for_export  # TensorFlow writes the SavedModel
    from unidl.export import flat_outputs

    archive = keras.export.ExportArchive()
    archive.track(native)
    with tracing_for_export():  # the SavedModel runs without unidl: none of unidl's gradient rules in its graphs
        archive.add_endpoint("serve", lambda x: flat_outputs(native(x, training=False)),
                             input_signature=[keras.InputSpec(shape=(None, *input_shape), dtype=dtype, name="x")])
        archive.write_out(path, verbose=False)


def _forward_takes(module, input_shape, dtype: str) -> None:
    """Run the forward once on a sample of ``dtype`` (another float dtype than the model's): its own
    ``DtypeMismatchError`` where it refuses one, as every other format raises it (Keras's layer casts float inputs to
    its dtype before the forward sees them, so that the SavedModel took float64 into a float32 model)."""
    import numpy as np

    from unidl.tensors import tensor

    module(tensor(np.zeros((1, *input_shape)), dtype))
