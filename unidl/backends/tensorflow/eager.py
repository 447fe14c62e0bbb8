"""Composite ops that loop, compiled as one ``tf.function`` when called eagerly.

Eagerly, TensorFlow runs a ``ud.ops.scan`` (a ``tf.while_loop``) step by step in Python, every op of every step
dispatched on its own, and its gradient tape records each of them: the CTC recursion ran about 200x slower than
torch's kernel. ``compiled_when_eager`` runs such a composite as one ``tf.function`` of its body instead (its
options, everything but its tensors, part of the trace's key), traced first for the shapes given and then for any
sizes (``reduce_retracing``: a new sequence length costs no trace); a call is one graph, its gradient another.
Inside a graph (``ud.function``, a train step) the body is traced inline as before.
"""

from __future__ import annotations

import functools

import tensorflow as tf

_COMPILED: dict = {}


def compiled_when_eager(function, device: str, dtype: str):
    """``function`` (a composite: it reads no state but its arguments, and its Python options are hashable) run
    eagerly as one ``tf.function``, one a device and dtype in force, which its constants read and a trace bakes in;
    inside a graph, ``function`` itself."""
    key = (function, device, dtype)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = tf.function(function, autograph=False, reduce_retracing=True)

    @functools.wraps(function)
    def call(*args, **kwargs):
        if not tf.executing_eagerly():
            return function(*args, **kwargs)
        with tf.device(device):
            return compiled(*args, **kwargs)

    return call
