"""The model graph TensorBoard shows: the ``tf.function`` graph of the forward (``Backend.model_graph``).

TensorFlow's own ``GraphDef``, as Keras's ``TensorBoard(write_graph=True)`` writes it; tracing runs
nothing, so the model's variables are untouched.
"""

from __future__ import annotations

import tensorflow as tf


def model_graph(module, x, device: str) -> bytes:
    """The serialized ``GraphDef`` of ``module``'s forward on inputs like ``x`` (a tensor, or a tuple of them:
    the forward's positional inputs), each a placeholder named as on the other backends ('input', 'input_1',
    ...) whose first axis, the batch, takes any size."""
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    specs = [tf.TensorSpec([None, *value.shape[1:]] if value.shape.rank else [], value.dtype,
                           name="input" if index == 0 else f"input_{index}")
             for index, value in enumerate(inputs)]
    with tf.device(device):
        concrete = tf.function(lambda *values: module(*values)).get_concrete_function(*specs)
    return concrete.graph.as_graph_def().SerializeToString()


def each(convert, x):
    """``x`` converted by ``convert``: one batch, or each of a tuple of them (the forward's positional inputs)."""
    return tuple(convert(value) for value in x) if isinstance(x, (tuple, list)) else convert(x)
