"""Composite ops that loop, compiled as one ``tf.function`` when called eagerly.

Eagerly, TensorFlow runs a ``ud.ops.scan`` (a ``tf.while_loop``) step by step in Python, every op of every step
dispatched on its own, and its gradient tape records each of them: the CTC recursion ran about 200x slower than
torch's kernel. ``compiled_when_eager`` runs such a composite as one ``tf.function`` of its body instead (its
options, everything but its tensors, part of the trace's key), traced first for the shapes given; the first call
with other shapes traces it once more with every size unknown (each tensor's rank and dtype kept), which every later
size takes without a trace (``reduce_retracing`` relaxes one axis at a time: a trace per axis that changes, each
seconds for the CTC recursion). A call is one graph, its gradient another. Inside a graph (``ud.function``, a train
step) the body is traced inline as before.
"""

from __future__ import annotations

import functools

import tensorflow as tf

_COMPILED: dict = {}


class _Compiled:
    """``function`` as a ``tf.function`` traced for the first call's shapes, and for every other size at once."""

    def __init__(self, function):
        self._function = tf.function(function, autograph=False)
        self._first_shapes = None

    def __call__(self, *args, **kwargs):
        shapes = _shapes((args, kwargs))
        if self._first_shapes is None:
            self._first_shapes = shapes
        elif shapes != self._first_shapes:
            # the trace with every size unknown (a lookup once traced): TensorFlow dispatches a call to the most
            # specific trace that takes it, this one for any shapes but the first call's
            self._function.get_concrete_function(*_any_size(args), **_any_size(kwargs))
        return self._function(*args, **kwargs)


def _shapes(structure) -> tuple:
    return tuple((tuple(x.shape), x.dtype) for x in tf.nest.flatten(structure) if isinstance(x, tf.Tensor))


def _any_size(structure):
    """``structure`` with each tensor as a ``tf.TensorSpec`` of its rank and dtype, every size unknown."""
    return tf.nest.map_structure(
        lambda x: tf.TensorSpec([None] * x.shape.rank, x.dtype) if isinstance(x, tf.Tensor) else x, structure)


def compiled_when_eager(function, backend: str, device: str, dtype: str):
    """``function`` (a composite: it reads no state but its arguments, and its Python options are hashable) run
    eagerly as one ``tf.function``, one for each backend (whose ops the trace runs: TensorFlow's own, or Keras's on
    TensorFlow), device and dtype in force, which its constants read and a trace bakes in; inside a graph,
    ``function`` itself."""
    key = (function, backend, device, dtype)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = _Compiled(function)

    @functools.wraps(function)
    def call(*args, **kwargs):
        if not tf.executing_eagerly():
            return function(*args, **kwargs)
        with tf.device(device):
            return compiled(*args, **kwargs)

    return call
