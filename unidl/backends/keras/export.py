"""Export on keras: a SavedModel written by Keras's own ``ExportArchive`` (endpoint ``serve``, NCHW input)."""

from __future__ import annotations

import keras

#: Keras writes SavedModels from these of its own backends only
_SAVED_MODEL_FRAMEWORKS = ("tensorflow", "jax")


def export_formats() -> tuple[str, ...]:
    """The formats ``Backend.export`` writes on keras, which depend on the framework under Keras."""
    return ("saved_model",) if keras.backend.backend() in _SAVED_MODEL_FRAMEWORKS else ()


def export_module(module, path: str, format: str, input_shape) -> None:
    """Write ``module`` as a SavedModel at ``path`` (endpoint ``serve``, also signature ``serving_default``)."""
    native = module.native
    variables = native.unidl_parameters + native.unidl_buffers
    dtype = variables[0].dtype if variables else "float32"
    from unidl.backends.tensorflow.layout import tracing_for_export  # TensorFlow writes the SavedModel

    archive = keras.export.ExportArchive()
    archive.track(native)
    with tracing_for_export():  # the SavedModel runs without unidl: none of unidl's gradient rules in its graphs
        archive.add_endpoint("serve", lambda x: native(x, training=False),
                             input_signature=[keras.InputSpec(shape=(None, *input_shape), dtype=dtype, name="x")])
        archive.write_out(path, verbose=False)
