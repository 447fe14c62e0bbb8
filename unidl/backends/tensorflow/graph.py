"""The model graph TensorBoard shows: the ``tf.function`` graph of the forward (``Backend.model_graph``).

TensorFlow's own ``GraphDef``, as Keras's ``TensorBoard(write_graph=True)`` writes it; tracing runs
nothing, so the model's variables are untouched.
"""

from __future__ import annotations

import tensorflow as tf


def model_graph(module, x: tf.Tensor, device: str) -> bytes:
    """The serialized ``GraphDef`` of ``module``'s forward on inputs like ``x`` (any batch size)."""
    spec = tf.TensorSpec([None, *x.shape[1:]], x.dtype, name="input")
    with tf.device(device):
        concrete = tf.function(lambda inputs: module(inputs)).get_concrete_function(spec)
    return concrete.graph.as_graph_def().SerializeToString()
