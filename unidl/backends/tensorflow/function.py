"""``GraphFunction``: a Python function compiled into ``tf.function`` graphs, one per input rank and dtype.

Every input dimension is left unknown in the signature, so a new batch size or
sequence length reuses the graph; only a new rank or dtype traces again, with
a ``RetraceWarning``. ``trace_count`` counts real traces, for tests and users.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from unidl import config


class RetraceWarning(UserWarning):
    """A compiled function met inputs of a new rank or dtype and was traced again."""


_FLOAT_DTYPES = {"float32": tf.float32, "float64": tf.float64}


def to_graph_input(value):
    """NumPy or tensor -> tf tensor: floats in unidl's dtype, integers as int64, tensors as they are."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype.is_floating and value.dtype != _FLOAT_DTYPES[config.get_dtype()]:
            return tf.cast(value, _FLOAT_DTYPES[config.get_dtype()])
        return value
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return tf.convert_to_tensor(array, _FLOAT_DTYPES[config.get_dtype()])
    if array.dtype.kind in "iu":
        return tf.convert_to_tensor(array, tf.int64)
    return tf.convert_to_tensor(array)


class GraphFunction:
    """``fn`` as a static graph: traced once per (rank, dtype) signature, then run without Python."""

    def __init__(self, fn, jit_compile: bool = False, device: str | None = None, name: str | None = None):
        self._fn = fn
        self._jit_compile = bool(jit_compile)
        self._device = device
        self._graphs: dict = {}
        self.trace_count = 0
        self.__name__ = name or getattr(fn, "__name__", "graph_function")

    def _traced(self, *args):
        self.trace_count += 1
        if self._device is None:
            return self._fn(*args)
        with tf.device(self._device):
            return self._fn(*args)

    def _graph_for(self, key):
        if self._graphs:
            warnings.warn(
                f"{self.__name__} traced again for inputs of a new rank or dtype {key} "
                f"(already traced for {list(self._graphs)}); a new batch size or length never retraces",
                RetraceWarning, stacklevel=3)
        signature = [tf.TensorSpec([None] * rank, dtype) for rank, dtype in key]
        compiled = tf.function(self._traced, input_signature=signature, jit_compile=self._jit_compile,
                               reduce_retracing=True)
        graph = compiled.get_concrete_function()
        self._graphs[key] = graph
        return graph

    def __call__(self, *args):
        tensors = [to_graph_input(a) for a in args]
        key = tuple((t.shape.rank, t.dtype) for t in tensors)
        graph = self._graphs.get(key) or self._graph_for(key)
        return graph(*tensors)
