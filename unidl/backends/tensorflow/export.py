"""Export on tensorflow: a SavedModel whose ``serve`` function takes canonical (NCHW) input of any batch size."""

from __future__ import annotations

import tensorflow as tf

from unidl.backends.tensorflow import SPEC
from unidl.backends.tensorflow.layout import tracing_for_export

#: the formats ``Backend.export`` writes on tensorflow: those its SPEC describes
EXPORT_FORMATS = tuple(SPEC.export_formats)


class ExportModule(tf.Module):
    """A ``tf.Module`` holding the model's variables and ``serve(x)``, its forward as a ``tf.function``; a nested
    output (which a SavedModel signature cannot hold) comes as ``unidl.export.flat_outputs`` flattens it."""

    def __init__(self, native, input_signature):
        from unidl.export import flat_outputs

        super().__init__(name="unidl_export")
        self.model = native  # tracks the variables, so that they are saved with the graph
        self.serve = tf.function(lambda x: flat_outputs(native(x)), input_signature=input_signature, autograph=False)


def export_module(module, path: str, format: str, input_shape, input_dtype=None) -> None:
    """Write ``module`` as a SavedModel at ``path`` (signature ``serving_default`` = ``serve``), its input of
    ``input_dtype`` (None: the module's dtype)."""
    native = module.native
    variables = list(native.parameters.values()) + list(native.buffers.values())
    dtype = tf.as_dtype(input_dtype) if input_dtype else variables[0].dtype if variables else tf.float32
    signature = [tf.TensorSpec([None, *input_shape], dtype, name="x")]
    exported = ExportModule(native, signature)
    with tracing_for_export():  # the SavedModel runs without unidl: none of unidl's gradient rules in its graphs
        tf.saved_model.save(exported, path, signatures={"serving_default": exported.serve})
