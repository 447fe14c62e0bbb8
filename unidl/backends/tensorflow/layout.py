"""NCHW on the outside, NHWC inside: how the tensorflow backend meets TensorFlow's CPU kernels.

unidl's tensors are NCHW (PyTorch's layout), but TensorFlow convolves and pools in NHWC. Every
layout-aware op (convolution, pooling, element-wise activations, batch norm) therefore works on
NHWC and hands back an NCHW *view*: a transpose with a recognisable name. In a graph, the next
layout-aware op looks through that view and takes the NHWC tensor it came from, so a
conv -> ReLU -> pool -> conv chain runs without a transpose between layers; a view nobody else
consumes is pruned from the graph. Only the input (NCHW -> NHWC) and the flatten before the
classifier (which must keep PyTorch's C, H, W feature order) transpose for real.

Under XLA (and only there: measured slower without it) the flatten's transpose moves to the weight: a
flatten of a view is a recognisable reshape, and the next ``linear`` flattens the NHWC tensor as it is and
permutes the columns of its (out, C*H*W) weight to (out, H*W*C) instead, which XLA's layout assignment
handles for free while the activation's transpose cost it about 2% of the CNN step.

Grappler's own layout optimizer (``data_format="NCHW"`` ops) was measured slower: it cannot see
through the activation between a conv and a pool, and converts each op on its own. In eager mode a
tensor carries no op, so every layout-aware op transposes in and out, which is correct and simple.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
_VIEW = "unidl_nchw_view"
_FLATTENED_VIEW = "unidl_flattened_nchw_view"
_tracing = threading.local()


def tracing_for_xla(enabled: bool):
    """Mark the graph being traced in this thread as one XLA will compile (``jit_compile=True``)."""
    return _thread_flag("xla", bool(enabled))


@contextlib.contextmanager
def _thread_flag(name: str, value: bool):
    """The block with this thread's tracing flag ``name`` set to ``value``, and its previous value back after."""
    previous = getattr(_tracing, name, False)
    setattr(_tracing, name, value)
    try:
        yield
    finally:
        setattr(_tracing, name, previous)


def tracing_xla_graph() -> bool:
    """Whether the graph being traced in this thread is one XLA will compile (which runs no assertions)."""
    return getattr(_tracing, "xla", False) and not tf.executing_eagerly()


@contextlib.contextmanager
def tracing_for_export():
    """Mark the graphs traced in this thread as ones written for export (a SavedModel), which run without unidl:
    no gradient rule of unidl's may be named in them. The block holds the export's own graphs of the compiled
    functions it calls (``export_graphs``): one a function and signature, kept by nothing after the export."""
    previous = getattr(_tracing, "export_graphs", None)
    _tracing.export_graphs = {}
    try:
        with _thread_flag("export", True):
            yield
    finally:
        _tracing.export_graphs = previous


def export_graphs() -> dict:
    """The graphs traced for the export this thread is writing (see ``tracing_for_export``), by whatever key the
    caller gives them; outside an export, an empty dict that keeps nothing."""
    graphs = getattr(_tracing, "export_graphs", None)
    return graphs if graphs is not None else {}


def tracing_for_shapes():
    """Mark the graphs traced in this thread as shape checks (``check_shapes``): traced for their shapes and
    errors and never run, so the rules that change a result's values and not its shape (PyTorch's NaN windows
    of max pooling, NaN rows of softmax) may leave their conds out, which otherwise cost a fifth of the first
    step's trace of a CNN on tensorflow."""
    return _thread_flag("shapes", True)


def tracing_kept_graph():
    """Mark the graph traced in this block (a compiled function's own, which its cache keeps and every later call
    runs) as no shape check, whatever its caller traces: its value rules are needed, a shape check's among them."""
    return _thread_flag("shapes", False)


def tracing_shape_graph() -> bool:
    """Whether the graph being traced in this thread is a shape check's (see ``tracing_for_shapes``)."""
    return getattr(_tracing, "shapes", False) and not tf.executing_eagerly()


def tracing_export_graph() -> bool:
    """Whether the graph being traced in this thread is one written for export (see ``tracing_for_export``)."""
    return getattr(_tracing, "export", False) and not tf.executing_eagerly()


def nchw_view(y_nhwc):
    """The NCHW tensor for an NHWC result (a transpose that later ops in a graph may look through)."""
    return tf.transpose(y_nhwc, NHWC_TO_NCHW, name=_VIEW)


def nhwc_source(x):
    """The NHWC tensor that ``x`` is a view of, when ``x`` came from :func:`nchw_view` in a graph, or the NHWC
    counterpart of an element-wise sum, difference or product of views (see ``_binary_source``); else None."""
    if tf.executing_eagerly():
        return None
    op = getattr(x, "op", None)
    if op is None:
        return None
    if op.type == "Transpose" and _is_view(op, _VIEW):
        return op.inputs[0]
    if op.type in _BINARY:
        return _binary_source(x, op)
    return None


#: element-wise binary ops that commute with a transpose of both operands
_BINARY = {"AddV2": tf.math.add, "Add": tf.math.add, "Sub": tf.math.subtract, "Mul": tf.math.multiply}


def _binary_source(x, op):
    """A residual connection (``out + identity`` of two views, as ResNet's blocks write it) is computed by
    TensorFlow's own operator on the NCHW views, which then become real transposes: two into NCHW before the
    add and one back into NHWC for the next convolution, each as large as the activation, and as many in the
    backward pass (about 40 a step of ResNet-18, several per cent of its time). The same op on the NHWC tensors
    behind the views gives the same numbers in NHWC; the NCHW op, which then feeds nothing, is pruned from the
    graph. One counterpart a result and graph, so that every later consumer reads the same tensor."""
    sources = [nhwc_source(operand) for operand in op.inputs]
    if None in sources or any(source.shape.rank != 4 for source in sources):
        return None
    graph = tf.compat.v1.get_default_graph()  # the graph being built (a branch may read outer tensors)
    known = getattr(graph, "_unidl_nhwc_counterparts", None)  # the graph's own, freed with it
    if known is None:
        known = graph._unidl_nhwc_counterparts = {}
    if x.ref() not in known:
        known[x.ref()] = _BINARY[op.type](*sources)
    return known[x.ref()]


def _is_view(op, name: str) -> bool:
    return op.name.rsplit("/", 1)[-1].startswith(name)


def flatten_view(x, flat_shape):
    """``x`` (NCHW) reshaped to ``flat_shape`` (N, C*H*W), recognisable by ``flattened_nhwc_source``."""
    return tf.reshape(x, flat_shape, name=_FLATTENED_VIEW)


def flattened_nhwc_source(x):
    """When ``x`` is the flatten of a view, in a graph traced for XLA: the NHWC tensor behind it; else None."""
    if not getattr(_tracing, "xla", False) or tf.executing_eagerly():
        return None
    op = getattr(x, "op", None)
    if op is None or op.type != "Reshape" or not _is_view(op, _FLATTENED_VIEW):
        return None
    return nhwc_source(op.inputs[0])


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
