"""NCHW on the outside, NHWC inside: how the tensorflow backend meets TensorFlow's CPU kernels.

unidl's tensors are NCHW (PyTorch's layout), but TensorFlow convolves and pools in NHWC. Every
layout-aware op (convolution, pooling, element-wise activations, batch norm) therefore works on
NHWC and hands back an NCHW *view*: a transpose with a recognisable name. In a graph, the next
layout-aware op looks through that view and takes the NHWC tensor it came from, so a
conv -> ReLU -> pool -> conv chain runs without a transpose between layers; a view nobody else
consumes is pruned from the graph. Only the input (NCHW -> NHWC) and the flatten before the
classifier (which must keep PyTorch's C, H, W feature order) transpose for real.

Grappler's own layout optimizer (``data_format="NCHW"`` ops) was measured slower: it cannot see
through the activation between a conv and a pool, and converts each op on its own. In eager mode a
tensor carries no op, so every layout-aware op transposes in and out, which is correct and simple.
"""

from __future__ import annotations

import tensorflow as tf

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
_VIEW = "unidl_nchw_view"


def nchw_view(y_nhwc):
    """The NCHW tensor for an NHWC result (a transpose that later ops in a graph may look through)."""
    return tf.transpose(y_nhwc, NHWC_TO_NCHW, name=_VIEW)


def nhwc_source(x):
    """The NHWC tensor that ``x`` is a view of, when ``x`` came from :func:`nchw_view` in a graph; else None."""
    if tf.executing_eagerly():
        return None
    op = getattr(x, "op", None)
    if op is None or op.type != "Transpose" or not op.name.rsplit("/", 1)[-1].startswith(_VIEW):
        return None
    return op.inputs[0]


def to_nhwc(x):
    """``x`` (NCHW) in NHWC: the tensor its view came from when there is one, else a transpose."""
    source = nhwc_source(x)
    return source if source is not None else tf.transpose(x, NCHW_TO_NHWC)


def elementwise(fn):
    """``fn`` (element-wise in its first argument) made to keep a graph's NHWC chain unbroken."""
    def apply(x, *args, **kwargs):
        source = nhwc_source(x)
        if source is None:
            return fn(x, *args, **kwargs)
        return nchw_view(fn(source, *args, **kwargs))

    apply.__name__ = apply.__qualname__ = getattr(fn, "__name__", "elementwise")
    apply.__doc__ = fn.__doc__
    return apply
