"""Export on tensorflow: a SavedModel whose ``serve`` function takes canonical (NCHW) input of any batch size."""

from __future__ import annotations

import tensorflow as tf

from unidl.backends.tensorflow.layout import tracing_for_export

#: the formats ``Backend.export`` writes on tensorflow
EXPORT_FORMATS = ("saved_model",)


class ExportModule(tf.Module):
    """A ``tf.Module`` holding the model's variables and ``serve(x)``, its forward as a ``tf.function``."""

    def __init__(self, native, input_signature):
        super().__init__(name="unidl_export")
        self.model = native  # tracks the variables, so that they are saved with the graph
        self.serve = tf.function(lambda x: native(x), input_signature=input_signature, autograph=False)


def export_module(module, path: str, format: str, input_shape) -> None:
    """Write ``module`` as a SavedModel at ``path`` (signature ``serving_default`` = ``serve``)."""
    native = module.native
    variables = list(native.parameters.values()) + list(native.buffers.values())
    dtype = variables[0].dtype if variables else tf.float32
    signature = [tf.TensorSpec([None, *input_shape], dtype, name="x")]
    exported = ExportModule(native, signature)
    with tracing_for_export():  # the SavedModel runs without unidl: none of unidl's gradient rules in its graphs
        tf.saved_model.save(exported, path, signatures={"serving_default": exported.serve})
