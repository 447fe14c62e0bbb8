"""unidl's functional ops on TensorFlow, taking and returning NCHW.

TensorFlow's CPU kernels convolve and pool in NHWC only; ``layout.py`` says how the
layout-aware ops here (conv, pools, activations, batch norm) run NHWC and chain without
transposes in graphs. Kernels stay OIHW in the variables and are transposed in the graph.
Everything here works in eager mode and in graphs with unknown batch size.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from numbers import Integral

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record as tape  # custom_gradient's tape, without its per-call registry

from unidl import config
from unidl.errors import MARKER_END, IndexOutOfRangeError, ShapeMismatchError, ValueOutOfRangeError
from unidl.input_checks import check_known_shape, check_known_values, float_bound
from unidl.backends.tensorflow import xla_checks
from unidl.backends.tensorflow.layout import (NHWC_TO_NCHW, elementwise, flatten_view, flattened_nhwc_source, nchw_view,
                                              nhwc_source, to_nhwc, tracing_export_graph, tracing_shape_graph,
                                              tracing_xla_graph)


#: the half-precision dtypes, which PyTorch's kernels compute in float32 (its opmath)
_HALF = (tf.float16, tf.bfloat16)


def matmul(a, b):
    """``torch.matmul``: a 1-d operand is a row before the other (a column after it), its axis dropped from the
    product, two of them a dot product (``tf.linalg.matmul`` refuses 1-d operands)."""
    if a.shape.rank is None or b.shape.rank is None:
        return _matmul_of_unknown_rank(a, b)
    a_vector, b_vector = a.shape.rank == 1, b.shape.rank == 1
    if not (a_vector or b_vector):
        return _matrix_product(a, b)
    if a_vector and b_vector:
        return tf.tensordot(a, b, 1)
    if a_vector:
        return tf.squeeze(_matrix_product(a[None], b), -2)
    return tf.squeeze(_matrix_product(a, b[:, None]), -1)


def _matrix_product(a, b):
    """``tf.linalg.matmul`` of operands of rank 2 or more. In bfloat16 with batch axes that differ, TensorFlow's CPU
    kernel (oneDNN's, TensorFlow 2.21) gave garbage where a batch axis of 1 was broadcast (values of 1e30 and NaN
    for (2, 1, 4, 4) @ (4, 8) and (2, 1, 4, 4) @ (1, 1, 4, 8); computing it in float32 between two casts did not
    help inside a graph, whose rewrite fused the casts back into the bfloat16 kernel): such a product broadcasts
    both batches to their common shape and multiplies them as one batch axis, which that kernel gets right. (Inside
    ``ud.function``'s graphs sizes are often unknown: there any bfloat16 batch takes that way.) In half precision
    a batch of matrices beside one matrix is folded into one product, as PyTorch's matmul folds it (``_folded``;
    a matrix on the left, ``_left_matrix_product``)."""
    if a.dtype in (tf.bfloat16, tf.float16) and (a.shape.rank == 2) != (b.shape.rank == 2):
        return _folded(a, b) if b.shape.rank == 2 else _left_matrix_product(a, b)
    return _batched_product(a, b)


def _batched_product(a, b):
    """``_matrix_product``'s batched product (TensorFlow's, its bfloat16 broadcast spelled out)."""
    batches = a.shape[:-2], b.shape[:-2]
    if a.dtype != tf.bfloat16 or batches[0].rank == batches[1].rank == 0 or (
            batches[0].is_fully_defined() and batches[1].is_fully_defined()
            and batches[0].as_list() == batches[1].as_list()):
        return tf.linalg.matmul(a, b)
    batch = tf.broadcast_dynamic_shape(tf.shape(a)[:-2], tf.shape(b)[:-2])
    known = tf.broadcast_static_shape(*batches)
    rows, columns = a.shape[-2:-1], b.shape[-1:]
    a, b = (tf.reshape(tf.broadcast_to(t, tf.concat([batch, tf.shape(t)[-2:]], 0)),
                       tf.concat([[-1], tf.shape(t)[-2:]], 0)) for t in (a, b))
    product = tf.linalg.matmul(a, b)
    product = tf.reshape(product, tf.concat([batch, tf.shape(product)[-2:]], 0))
    product.set_shape(known.concatenate(rows).concatenate(columns))  # (the sizes a graph knows, as matmul's)
    return product


def _folded(a, b):
    """``a @ b`` where one operand is a matrix and the other a batch of them, as one product of the batch folded
    into rows (``a``'s) or columns (``b``'s, through the transposed product), as PyTorch's matmul computes it: the
    matrix's gradient is then one product over the whole batch, rounded once, where TensorFlow's batched product
    rounded each batch's to bfloat16 before their sum (one bfloat16 step off PyTorch's)."""
    if b.shape.rank == 2:
        sizes = tf.shape(a)
        product = tf.linalg.matmul(tf.reshape(a, tf.stack([-1, sizes[-1]])), b)
        product = tf.reshape(product, tf.concat([sizes[:-1], tf.shape(b)[-1:]], 0))
        product.set_shape(a.shape[:-1].concatenate(b.shape[-1:]))
        return product
    return tf.linalg.matrix_transpose(_folded(tf.linalg.matrix_transpose(b), tf.transpose(a)))


def _left_matrix_product(a, b):
    """``a @ b`` of a half-precision matrix ``a`` and a batch ``b``: TensorFlow's batched product forward, and the
    gradients of the folded product (``_folded``: PyTorch's rounding of ``a``'s, one product over the batch). The
    fold's transposes of the whole batch are paid in the gradient alone, which recomputes the folded product: in
    the forward they made bfloat16 interpolation, whose constant matrices stand on the left and whose gradient is
    its own, 1.25 times slower."""

    @tf.custom_gradient
    def product(a, b):
        def gradient(upstream):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                folded = _folded(a, b)
            return tape.gradient(folded, [a, b], output_gradients=upstream)

        return _batched_product(a, b), gradient

    return product(a, b)


def _matmul_of_unknown_rank(a, b):
    """``matmul`` inside a graph traced for operands of unknown rank (a ``tf.function`` given ``TensorSpec(None)``):
    the same rule, decided in the graph from ``tf.rank``: a 1-d operand is reshaped to a row (a column) and its axis
    dropped from the product again. Reshapes, not a ``tf.cond`` between shapes of two ranks, which XLA refuses (it
    folds these shape computations, the ranks being known when it compiles)."""
    a_vector = tf.cast(tf.equal(tf.rank(a), 1), tf.int32)
    b_vector = tf.cast(tf.equal(tf.rank(b), 1), tf.int32)
    product = tf.linalg.matmul(tf.reshape(a, tf.concat([tf.ones([a_vector], tf.int32), tf.shape(a)], 0)),
                               tf.reshape(b, tf.concat([tf.shape(b), tf.ones([b_vector], tf.int32)], 0)))
    sizes = tf.shape(product)
    return tf.reshape(product, tf.concat([sizes[:-2], sizes[-2:-1][:1 - a_vector], sizes[-1:][:1 - b_vector]], 0))


relu = elementwise(tf.nn.relu)
sigmoid = elementwise(tf.sigmoid)
tanh = elementwise(tf.tanh)
exp = tf.exp
stop_gradient = tf.stop_gradient
log = tf.math.log
sqrt = tf.sqrt
square = tf.square
where = tf.where
zeros_like = tf.zeros_like
silu = elementwise(tf.nn.silu)
log1p = tf.math.log1p
framework_maximum = tf.maximum  # for ud.ops' internal callers whose ties carry no gradient (unidl/ops.py)


def exact_divide(a, b):
    """``a / b`` rounded once (unidl/ops.py's ``exact_divide``): Grappler's constant folding turns a division by a
    constant into a product with its reciprocal, but leaves ``DivNoNan`` alone, whose quotient is the division's
    wherever ``b`` is not 0 (there the plain quotient's inf or NaN, which the reciprocal's product gives alike)."""
    a = tf.convert_to_tensor(a)
    b = tf.cast(b, a.dtype)
    return tf.where(tf.equal(b, 0), a / b, tf.math.divide_no_nan(a, b))


def abs(x):
    """``tf.abs``; unsigned integers are their own absolute value (TensorFlow has no kernel for them, PyTorch
    gives them back)."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and tf.as_dtype(dtype).is_unsigned:
        return tf.convert_to_tensor(x) if isinstance(x, np.ndarray) else x
    return tf.abs(x)


def sign(x):
    """``tf.sign``; unsigned integers are 1 where positive, else 0, in their own dtype (TensorFlow has no kernel for
    them)."""
    dtype = getattr(x, "dtype", None)
    return tf.cast(x > 0, dtype) if dtype is not None and tf.as_dtype(dtype).is_unsigned else tf.sign(x)


def maximum(a, b):
    """``tf.maximum``'s value with ``torch.maximum``'s gradient (the rule in ``unidl/ops.py``): TensorFlow's own
    gives a tie's gradient to ``a`` and a NaN's to ``b``, PyTorch splits a tie in halves and gives a NaN's to both.
    Integers have no gradient: TensorFlow's own op."""
    a, b = _same_dtype_tensors(a, b)
    if a.dtype == tf.bool:  # TensorFlow has no boolean Maximum kernel; torch's maximum of booleans is their or
        return tf.logical_or(a, b)
    return _maximum_split_ties(a, b) if a.dtype.is_floating else tf.maximum(a, b)


def minimum(a, b):
    """``tf.minimum``'s value with ``torch.minimum``'s gradient (see ``maximum``)."""
    a, b = _same_dtype_tensors(a, b)
    if a.dtype == tf.bool:  # torch's minimum of booleans is their and
        return tf.logical_and(a, b)
    return _minimum_split_ties(a, b) if a.dtype.is_floating else tf.minimum(a, b)


def _same_dtype_tensors(a, b):
    """``a`` and ``b`` as tensors, converted as ``tf.maximum`` converts them (a Python number takes the other's
    dtype, a variable is read): ``tf.custom_gradient`` takes tensors only. Tensors of two dtypes come cast to
    torch's result dtype by ``ud.ops.maximum`` (``tf.maximum`` refuses them)."""
    if not isinstance(a, tf.Tensor):
        a = tf.convert_to_tensor(a, dtype_hint=getattr(b, "dtype", None))
    if not isinstance(b, tf.Tensor):
        b = tf.convert_to_tensor(b, dtype_hint=a.dtype)
    return a, b


@tf.custom_gradient
def _maximum_split_ties(a, b):
    return tf.maximum(a, b), lambda upstream: _tie_shares(a, b, upstream, tf.less(a, b), tf.greater(a, b))


@tf.custom_gradient
def _minimum_split_ties(a, b):
    return tf.minimum(a, b), lambda upstream: _tie_shares(a, b, upstream, tf.greater(a, b), tf.less(a, b))


def _tie_shares(a, b, upstream, a_loses, b_loses):
    """PyTorch's gradients of ``maximum``/``minimum`` (derivatives.yaml): ``upstream`` halved where ``a == b``, 0
    for the input that loses, the whole to both where neither loses (a NaN); each summed over the axes that
    broadcasting added to or stretched in its input, as TensorFlow's own gradient of ``Maximum`` does."""
    shared = tf.where(tf.equal(a, b), upstream * 0.5, upstream)
    zero = tf.zeros((), shared.dtype)
    grad_a, grad_b = tf.where(a_loses, zero, shared), tf.where(b_loses, zero, shared)
    if a.shape.is_fully_defined() and a.shape == b.shape:
        return grad_a, grad_b
    shape_a, shape_b = tf.shape(a), tf.shape(b)
    axes_a, axes_b = tf.raw_ops.BroadcastGradientArgs(s0=shape_a, s1=shape_b)
    return (tf.reshape(tf.reduce_sum(grad_a, axes_a), shape_a), tf.reshape(tf.reduce_sum(grad_b, axes_b), shape_b))


def linear(x, weight, bias=None):
    if x.dtype in _HALF and weight.dtype == x.dtype:
        # PyTorch's half-precision linear: products summed in float32, the bias added, rounded once to the input's
        # dtype (TensorFlow's half MatMul rounds its partial sums, then BiasAdd rounds again); and so in the
        # backward, whose bias gradient sums the batch in float32 (as jax/ops.py ``linear``)
        return tf.cast(linear(tf.cast(x, tf.float32), tf.cast(weight, tf.float32),
                              tf.cast(bias, tf.float32) if bias is not None else None), x.dtype)
    # the (out, in) weight is multiplied transposed inside the kernel (no transposed copy per step), and
    # BiasAdd's fused gradient is cheaper than broadcasting AddV2's (a Sum over the batch)
    source = flattened_nhwc_source(x) if x.shape.rank == 2 and weight.shape.rank == 2 else None
    if source is not None and source.shape[-1] is not None:
        # under XLA: flatten the NHWC tensor as it is and permute the weight's (C, H*W) columns to (H*W, C)
        channels = source.shape[-1]
        out, features = weight.shape
        weight = tf.reshape(tf.transpose(tf.reshape(weight, (out, channels, features // channels)), (0, 2, 1)),
                            (out, features))
        x = tf.reshape(source, tf.shape(x))
    if x.shape.rank == 2:
        y = tf.linalg.matmul(x, weight, transpose_b=True)
    elif x.shape.rank == 1:  # one sample (in,) -> (out,), as torch
        # as a row times the transposed weight, not tf.linalg.matvec: Grappler's constant folding ran
        # matvec's product of a wrong-sized sample before the graph's size check (Linear's)
        y = tf.squeeze(tf.linalg.matmul(x[None], weight, transpose_b=True), 0)
        return y + bias if bias is not None else y
    else:
        return _linear_nd(x, weight, bias)
    return tf.nn.bias_add(y, bias) if bias is not None else y


def _linear_nd(x, weight, bias):
    """``linear`` of (..., in) as one 2-D MatMul over the flattened leading axes. Not ``tf.einsum``: with the
    leading sizes unknown while tracing, its gradient for the weight is the einsum ``...o,...i->oi...`` (an
    outer product per row, 32x64x128x128 floats for one Linear of the transformer benchmark) and then a sum,
    which made the TensorFlow transformer step 100x slower than a hand-written one."""
    leading = tf.shape(x)[:-1]
    flat = tf.reshape(x, tf.stack([-1, tf.shape(x)[-1]]) if x.shape[-1] is None else [-1, x.shape[-1]])
    y = tf.linalg.matmul(flat, weight, transpose_b=True)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    out = weight.shape[0] if weight.shape[0] is not None else tf.shape(weight)[0]
    y = tf.reshape(y, tf.concat([leading, [out]], 0))
    y.set_shape(x.shape[:-1].concatenate([weight.shape[0]]))  # the static sizes known while tracing, as einsum's
    return y


def apply_momentum(param, buffer, lr, grad, momentum, nesterov):
    """``buffer = momentum * buffer + grad``, then ``param -= lr * (grad + momentum * buffer if nesterov
    else buffer)``, in place, as one kernel (``ResourceApplyMomentum``: PyTorch's SGD arithmetic, in
    the same order without Nesterov; with it TensorFlow computes ``lr * grad + lr * momentum * buffer``,
    equal up to the last bit). It replaces five ops a parameter (two reads of the buffer, two writes);
    ``param`` and ``buffer`` may be ``tf.Variable``s or Keras variables on TensorFlow."""
    if isinstance(grad, tf.IndexedSlices):
        grad = tf.convert_to_tensor(grad)
    dtype = grad.dtype  # momentum and nesterov are Python values (Optimizer.heavy_ball): a constant of the
    # parameters' dtype (tf.cast of a Python float would round it to float32 first: 0.9 -> 0.89999998)
    return tf.raw_ops.ResourceApplyMomentum(var=param.handle, accum=buffer.handle, lr=tf.cast(lr, dtype), grad=grad,
                                            momentum=tf.constant(momentum, dtype), use_nesterov=nesterov)


@elementwise
def leaky_relu(x, negative_slope=0.01):
    if tf.is_tensor(negative_slope):  # (a 0-d tensor, which TensorFlow's kernel refuses: alpha is an attribute)
        return tf.where(x > 0, x, x * tf.cast(negative_slope, x.dtype))
    if x.dtype == tf.float64:  # TensorFlow's kernel holds alpha as a float32: slope rounded, errors near 1e-9
        return tf.where(x > 0, x, x * tf.constant(negative_slope, tf.float64))
    return tf.nn.leaky_relu(x, alpha=negative_slope)


def softmax(x, dim=-1):
    """``tf.nn.softmax`` with PyTorch's rows that hold ``inf`` or NaN: NaN over the whole row, where TensorFlow's
    kernel leaves the row's other entries 0 (``[inf, 1, 2]`` gives ``[nan, 0, 0]``). Adding the row's sum times 0
    (0 in a finite row, NaN in the others) spreads the NaN and leaves finite rows as they are, bit for bit; it runs
    only when the sum of the whole output is not finite (a cond: a reduction a call, where adding to every row cost
    the forward and backward of an attention's softmax 5%). It stays out of the gradient, which is NaN over such a
    row already (TensorFlow's softmax gradient sums the row). XLA's softmax gives such rows NaN already. float16
    and bfloat16 are computed in float32 and rounded once, as PyTorch's kernel (float16's own arithmetic was a unit
    off in half the values)."""
    if x.dtype in _HALF:
        return tf.cast(softmax(tf.cast(x, tf.float32), dim), x.dtype)
    y = tf.nn.softmax(x, axis=dim)
    if tracing_xla_graph() or tracing_shape_graph():
        return y

    def nan_rows():
        return y + tf.stop_gradient(tf.reduce_sum(y, dim, keepdims=True) * 0)

    return tf.cond(tf.math.is_finite(tf.stop_gradient(tf.reduce_sum(y))), lambda: y, nan_rows)


def amax(x, dim, keepdim=False):
    if x.dtype == tf.bool:  # (reduce_max has no boolean kernel: any, as PyTorch's amax of booleans)
        return tf.reduce_any(x, dim, keepdims=keepdim)
    return tf.reduce_max(x, dim, keepdims=keepdim)


def log_softmax(x, dim=-1):
    return tf.nn.log_softmax(x, axis=dim)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_padding(padding, kernel_hw, stride_hw=(1, 1)):
    """PyTorch's padding argument as explicit ((top, bottom), (left, right)) amounts."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        totals = [k - 1 for k in kernel_hw]
        return tuple((t // 2, t - t // 2) for t in totals)
    ph, pw = _pair(padding)
    return ((ph, ph), (pw, pw))


def _padded_for(xh, pads, kernel_hw, stride_hw):
    """``(input, padding argument)``: TensorFlow's fastest spelling of the padding amounts on an NHWC input:
    'VALID', 'SAME' (stride 1, the amounts 'SAME' gives), else the input zero-padded by ``tf.pad`` and 'VALID'.
    Its CPU convolution with explicit amounts is several times slower than both (the stride-2 convolutions of
    ResNet-18 took a twentieth of its step), for the same numbers."""
    if not any(pads[0]) and not any(pads[1]):
        return xh, "VALID"
    if stride_hw == (1, 1) and None not in kernel_hw and pads == conv_padding("same", kernel_hw):
        return xh, "SAME"
    (top, bottom), (left, right) = pads
    return tf.pad(xh, [[0, 0], [top, bottom], [left, right], [0, 0]]), "VALID"


def _dilated_kernel(kernel, axis, rate):
    """An HWIO kernel with ``rate - 1`` zeros between its taps along ``axis`` (0 or 1): TensorFlow's CPU
    kernels have no gradient for a dilated convolution, so the dilation is spelled out in the kernel."""
    spread = tf.stack([kernel] + [tf.zeros_like(kernel)] * (rate - 1), axis + 1)
    shape = tf.unstack(tf.shape(kernel))
    shape[axis] = shape[axis] * rate
    spread = tf.reshape(spread, tf.stack(shape))
    return spread[:1 - rate] if axis == 0 else spread[:, :1 - rate]  # no zeros after the last tap


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    kernel = tf.transpose(weight, (2, 3, 1, 0))
    dilation = _pair(dilation)
    for axis, rate in enumerate(dilation):
        if rate > 1:
            kernel = _dilated_kernel(kernel, axis, rate)
    kernel_hw = tuple(None if k is None else (k - 1) * d + 1 for k, d in zip(weight.shape[2:4], dilation))
    sh, sw = _pair(stride)
    xh = to_nhwc(x)
    if padding == "same" and None in kernel_hw:
        # a kernel whose size the graph learns only when it runs (an argument of ud.function): pad by it then
        totals = tf.shape(kernel)[:2] - 1
        before = totals // 2
        xh = tf.pad(xh, [[0, 0], [before[0], totals[0] - before[0]], [before[1], totals[1] - before[1]], [0, 0]])
        padding_argument = "VALID"
    else:
        xh, padding_argument = _padded_for(xh, conv_padding(padding, kernel_hw), kernel_hw, (sh, sw))
    if xh.shape[0] == 0:  # an empty batch (eagerly, or a graph traced for one): see _empty_batch_output
        y = _empty_batch_output(xh, kernel, (sh, sw), padding_argument)
    elif groups == 1:
        y = tf.nn.conv2d(xh, kernel, strides=(1, sh, sw, 1), padding=padding_argument)
    elif kernel.shape[2] == 1 and sh == sw:
        # one input channel a group (depthwise): TensorFlow's depthwise kernel, which has CPU gradients; the
        # (kh, kw, 1, C * multiplier) kernel holds output channel c * multiplier + m as (c, m)
        depthwise = tf.reshape(kernel, tf.concat([tf.shape(kernel)[:2], [groups, -1]], 0))
        y = tf.nn.depthwise_conv2d(xh, depthwise, strides=(1, sh, sw, 1), padding=padding_argument)
    else:
        y = _grouped_conv2d(xh, kernel, groups, (sh, sw), padding_argument)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return nchw_view(y)


def _empty_batch_output(xh, kernel, stride_hw, padding_argument):
    """The convolution of NHWC ``xh``, an empty batch, by ``kernel`` (HWIO), without TensorFlow's kernel: for an
    empty batch its CPU convolution hands back a tensor of the input's shape (eagerly to the bias add's error, in a
    graph silently: Grappler drops a reshape to the right shape as a no-op), where PyTorch gives (0, C_out, H_out,
    W_out). Zeros of that shape, connected to ``xh`` and ``kernel`` so that both get PyTorch's zero gradients.
    Only where the batch is known to be empty (eagerly, or the graph ``ud.function`` traces for an empty input): a
    graph traced for any batch size keeps TensorFlow's kernel, since a guard there would keep Grappler from fusing
    every convolution with its bias and activation."""
    size = tf.shape(xh)
    taps = tf.shape(kernel)
    spatial = [(size[1 + axis] + stride_hw[axis] - 1) // stride_hw[axis] if padding_argument == "SAME"
               else (size[1 + axis] - taps[axis]) // stride_hw[axis] + 1 for axis in (0, 1)]
    connected = (tf.reduce_sum(xh) + tf.reduce_sum(kernel)) * 0
    return tf.zeros(tf.stack([size[0], spatial[0], spatial[1], taps[3]]), xh.dtype) + connected


def _grouped_conv2d(xh, kernel, groups, stride, padding_argument):
    # TensorFlow's CPU kernels have no gradient for a grouped convolution: one convolution a group
    inputs = tf.split(xh, groups, axis=-1)
    kernels = tf.split(kernel, groups, axis=-1)
    return tf.concat([tf.nn.conv2d(x, k, strides=(1,) + stride + (1,), padding=padding_argument)
                      for x, k in zip(inputs, kernels)], -1)


def _pool(x, kernel_size, stride, padding, pool, pad_value):
    """``pool`` of NCHW ``x`` padded with ``pad_value`` (the padding op named ``_POOL_PADDING``)."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    ph, pw = _pair(padding)
    xh = to_nhwc(x)
    if ph or pw:
        xh = tf.pad(xh, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value, name=_POOL_PADDING)
    if xh.shape[0] == 0:
        # an empty batch known while tracing (eagerly, always): the output's shape by slicing, since the gradient of
        # TF's CPU pooling over 0 samples aborts the process. A graph traced for any batch size (unidl's leave it
        # unknown) keeps TensorFlow's kernel: a guard there (a cond) would cost every step of every model
        size = tf.shape(xh)
        return nchw_view(xh[:, :(size[1] - kh) // sh + 1, :(size[2] - kw) // sw + 1, :])
    arguments = dict(ksize=(kh, kw), strides=(sh, sw), padding="VALID")
    return nchw_view(pool(xh, **arguments))


_POOL_PADDING = "UnidlPoolPadding"


def max_pool2d(x, kernel_size, stride=None, padding=0):
    lowest = float("-inf") if x.dtype.is_floating else x.dtype.min  # padding counts as that
    return _pool(x, kernel_size, stride, padding, functools.partial(_max_pool_as_torch, pads=_pair(padding)), lowest)


def _max_pool_as_torch(xh, pads, **arguments):
    """TensorFlow's max pooling of NHWC ``xh`` (padded by ``pads`` with -inf) with PyTorch's choices where
    TensorFlow's kernels differ: a window that holds NaN pools to NaN and its gradient goes to the window's last
    NaN in row-major order (PyTorch's kernel takes a NaN over any value and a later NaN over an earlier one;
    TensorFlow's kernels, eager, graph and XLA, skip NaN); a window of nothing but -inf pools to -inf (TensorFlow's
    kernel starts each window at the dtype's lowest finite value, -3.4e38 in float32) and gives its gradient to
    its first element inside the input (TensorFlow's, to a pad); a window whose maximum is that lowest value
    gives it to its first one (oneDNN's graph kernel, to a -inf before it). ``_needs_torch_rule`` (a sum over the
    input, and a minimum over the output) decides a cond in the forward (off the gradient's path) and one in the
    gradient: a step whose pools hold no such window pays those reductions and two branches, and TensorFlow's
    own gradient. In a graph the gradient is given to the tape (a tape inside the graph) as one operation, and,
    through a gradient registered once for the graph's ``MaxPool`` op, to a gradient of the whole graph (a tape
    around a compiled function); ``tf.custom_gradient`` would leave every traced graph in TensorFlow's gradient
    registry (docs/guarantees.md). A graph traced for export (``tracing_for_export``) names no registered
    gradient: the SavedModel runs without unidl, and its pools have TensorFlow's own gradient."""
    if not xh.dtype.is_floating or tracing_shape_graph():
        return tf.nn.max_pool2d(xh, **arguments)
    if tf.executing_eagerly():
        y = tf.nn.max_pool2d(xh, **arguments)
        if not bool(_needs_torch_rule(xh, y)):
            return y
        routed, sources = _torch_routes(xh, y, pads, arguments)  # differentiable as they are
        return tf.where(routed, tf.gather_nd(_planes(xh), sources), y)

    with tape.stop_recording():
        # a graph written for export runs without unidl: TensorFlow's own gradient there (tf.saved_model.save
        # traces a registered gradient with no upstream, which this one cannot take)
        gradient_rule = contextlib.nullcontext() if tracing_export_graph() else xh.graph.gradient_override_map(
            {"MaxPool": _MAX_POOL_GRADIENT_AS_TORCH})
        with gradient_rule:
            y = tf.nn.max_pool2d(xh, **arguments)
        needs = _needs_torch_rule(xh, y)
        # NaN or +inf subtracted, 0 elsewhere (which leaves -0.0 as it is), the cond outside the gradient (a
        # gradient through a cond asks for its intermediates, which XLA cannot output): the gradient to ``y`` whole
        pooled = y - tf.stop_gradient(tf.cond(needs, lambda: _torch_correction(xh, y, arguments),
                                              lambda: tf.zeros_like(y)))
    tape.record_operation("MaxPool", [pooled], [xh],
                          lambda upstream: [_max_pool_gradient(xh, y, upstream, pads, arguments, needs)])
    return pooled


def _needs_torch_rule(xh, y):
    """Whether TensorFlow's max pooling ``y`` of ``xh`` may hold a window that PyTorch's kernel pools or routes
    otherwise: ``xh`` holds NaN (its sum is NaN; ``inf - inf`` also gives NaN, and the exact path finds no NaN
    window there), or some window's maximum is at most the lowest finite value (-inf windows, which TensorFlow's
    kernels give that value and XLA's -inf, and windows of -inf and that value). A graph's ``xh`` made by an op
    that never gives -inf (a ReLU: a CNN's pools) needs the first alone. The sum is taken in float32 at least:
    float16's overflowed past 65504 (to NaN where large values of both signs met) and took the exact path."""
    holds_nan = tf.math.is_nan(tf.reduce_sum(xh if xh.dtype.size >= 4 else tf.cast(xh, tf.float32)))
    if _never_minus_inf(xh):
        return holds_nan
    return tf.logical_or(holds_nan, tf.reduce_min(y) <= y.dtype.min)


def _torch_correction(xh, y, arguments):
    """What to subtract from TensorFlow's max pooling ``y`` of NHWC ``xh`` (padded with -inf, ``arguments``
    VALID) for PyTorch's values: NaN at windows holding NaN, +inf at windows of -inf alone (TensorFlow's kernel
    gave them the lowest finite value), 0 elsewhere. The windows' choices (``_torch_routes``) are not needed for
    the values: two poolings of indicators, a tenth of that rule's operations, which a graph's forward traces
    for every pool (a cond's branch is traced whether it runs or not)."""
    nan_window = tf.nn.max_pool2d(tf.where(tf.math.is_nan(xh), 1.0, 0.0), **arguments) > 0
    minus_inf_window = tf.nn.max_pool2d(tf.where(xh > float("-inf"), 1.0, 0.0), **arguments) == 0
    return tf.where(nan_window, tf.constant(float("nan"), y.dtype),
                    tf.where(minus_inf_window, tf.constant(float("inf"), y.dtype), tf.zeros((), y.dtype)))


def _torch_routes(xh, y, pads, arguments):
    """The windows of the max pooling ``y`` of NHWC ``xh`` (padded by ``pads``, ``arguments`` VALID) that
    PyTorch's kernel routes otherwise than TensorFlow's (booleans shaped as ``y``); and for every window, the (n,
    h * W + w, c) in ``xh`` viewed as (N, H * W, C) of PyTorch's choice there (every window has one, so that the
    shapes are known while tracing: XLA compiles no ``tf.where`` of one argument). PyTorch's choice: a window's
    last NaN; else in a window whose maximum is at most the lowest finite value, its first element above -inf, or
    where it holds none its first inside the input. Positions are pooled in float32, 1-based (exact up to 2 ** 24
    a plane; GPUs pool no int32), counted from the end where the first is wanted. (A graph traces this for every
    pool, in a branch that runs only on such windows: each size is read once, ``_sizes``.)"""
    _, height, width, _ = _sizes(xh)
    plane = tf.stack([1, height, width, 1])
    positions = tf.reshape(tf.range(1, height * width + 1, dtype=tf.float32), plane)
    from_end = tf.cast(height * width + 1, tf.float32) - positions
    if pads == (0, 0):  # every position is inside the input
        first_inside = tf.nn.max_pool2d(from_end, **arguments)
    else:
        inside = tf.pad(tf.ones(tf.stack([1, height - 2 * pads[0], width - 2 * pads[1], 1])),
                        ((0, 0), (pads[0], pads[0]), (pads[1], pads[1]), (0, 0)))
        first_inside = tf.nn.max_pool2d(from_end * inside, **arguments)
    last_nan = tf.nn.max_pool2d(tf.where(tf.math.is_nan(xh), positions, 0.0), **arguments)
    first_above = tf.nn.max_pool2d(tf.where(xh > float("-inf"), from_end, 0.0), **arguments)
    nan_window = last_nan > 0
    low_window = tf.logical_and(tf.logical_not(nan_window), y <= y.dtype.min)
    first = tf.cast(height * width + 1, tf.float32) - tf.where(first_above > 0, first_above, first_inside)
    source = tf.cast(tf.where(nan_window, last_nan, first), tf.int64) - 1
    size = tf.shape(source, out_type=tf.int64)
    samples, _, _, channels = tf.unstack(size, 4)
    samples = tf.broadcast_to(tf.reshape(tf.range(samples, dtype=tf.int64), (-1, 1, 1, 1)), size)
    channels = tf.broadcast_to(tf.reshape(tf.range(channels, dtype=tf.int64), (1, 1, 1, -1)), size)
    return tf.logical_or(nan_window, low_window), tf.stack([samples, source, channels], -1)


def _sizes(xh):
    """(N, H, W, C) of NHWC ``xh``: Python ints where the graph knows them, else scalar tensors, read at once."""
    known = xh.shape.as_list()
    if None not in known:
        return known
    read = tf.unstack(tf.shape(xh), 4)
    return [size if size is not None else value for size, value in zip(known, read)]


def _planes(xh):
    """``xh`` (N, H, W, C) viewed as (N, H * W, C)."""
    size = tf.shape(xh)
    return tf.reshape(xh, tf.stack([size[0], -1, size[3]]))


def _planes_shape(xh):
    """The shape of ``_planes(xh)``, (N, H * W, C), as a vector."""
    samples, height, width, channels = _sizes(xh)
    return tf.stack([samples, height * width, channels])


def _max_pool_gradient(xh, y, upstream, pads, arguments, needs):
    """The gradient of ``_max_pool_as_torch`` in a graph: TensorFlow's own (``MaxPoolGrad``) where ``needs`` is
    false; else each window that ``_torch_routes`` names gives its ``upstream`` to PyTorch's choice, the other
    windows to TensorFlow's. The ``MaxPoolGrad`` of the common case stays outside the cond, beside its
    ``MaxPool``: oneDNN's pair passes the forward's choices to the gradient, which a ``MaxPoolGrad`` inside a
    branch recomputes (+29% of a CNN's training step); the other branch runs its own."""
    def max_pool_grad(grad):
        return tf.raw_ops.MaxPoolGrad(orig_input=xh, orig_output=y, grad=grad, ksize=(1, *arguments["ksize"], 1),
                                      strides=(1, *arguments["strides"], 1), padding=arguments["padding"])

    def as_torch():
        routed, sources = _torch_routes(xh, y, pads, arguments)
        zero = tf.zeros((), upstream.dtype)
        scattered = tf.scatter_nd(sources, tf.where(routed, upstream, zero), tf.cast(_planes_shape(xh), tf.int64))
        return max_pool_grad(tf.where(routed, zero, upstream)) + tf.reshape(scattered, tf.shape(xh))

    own = max_pool_grad(upstream)
    return tf.cond(needs, as_torch, lambda: own)


_MAX_POOL_GRADIENT_AS_TORCH = "UnidlMaxPoolAsTorch"


@tf.RegisterGradient(_MAX_POOL_GRADIENT_AS_TORCH)
def _registered_max_pool_gradient(op, upstream):
    """``_max_pool_gradient`` of a graph's ``MaxPool`` op made by ``_max_pool_as_torch``, for a gradient of the
    whole graph (a tape around a compiled function): the windows looked for again, in the input and output the
    op kept, and the padding read from ``_pool``'s padding op that made its input."""
    xh, y = op.inputs[0], op.outputs[0]
    arguments = dict(ksize=tuple(op.get_attr("ksize")[1:3]), strides=tuple(op.get_attr("strides")[1:3]),
                     padding=op.get_attr("padding").decode())
    pads = (0, 0)
    if xh.op.type in ("Pad", "PadV2") and xh.op.name.rsplit("/", 1)[-1].startswith(_POOL_PADDING):
        paddings = tf.get_static_value(xh.op.inputs[1])
        pads = (int(paddings[1][0]), int(paddings[2][0]))
    return _max_pool_gradient(xh, y, upstream, pads, arguments, _needs_torch_rule(xh, y))


#: ops whose outputs are never -inf (a NaN stays NaN)
_NEVER_MINUS_INF = {"Elu", "Relu", "Relu6", "Selu", "Sigmoid", "Softmax", "Softplus", "Tanh"}


def _never_minus_inf(xh):
    """Whether ``xh``, in a graph, is the output of an op that never gives -inf, padded or not (padding at most
    half the kernel leaves a real value in every window), through identities (Keras's layers add them)."""
    op = None if tf.executing_eagerly() else getattr(xh, "op", None)
    while op is not None and op.type in ("Identity", "Pad", "PadV2") and op.inputs:
        op = op.inputs[0].op
    return op is not None and op.type in _NEVER_MINUS_INF


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    # TensorScatterUpdate's gradient for the values gathers the output's gradient at each index (a shared index
    # gives it to every value written there), as PyTorch's max_unpool2d does
    shape = tf.shape(x, out_type=tf.int64)
    planes = shape[0] * shape[1]
    height, width = (tf.cast(size, tf.int64) for size in output_size)
    index = tf.reshape(tf.cast(indices, tf.int64), tf.stack([planes, -1]))
    rows = tf.broadcast_to(tf.range(planes)[:, None], tf.shape(index, out_type=tf.int64))
    flat = tf.tensor_scatter_nd_update(tf.zeros(tf.stack([planes, height * width]), x.dtype),
                                       tf.stack([rows, index], -1), tf.reshape(x, tf.stack([planes, -1])))
    return tf.reshape(flat, tf.stack([shape[0], shape[1], height, width]))


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return _pool(x, kernel_size, stride, padding, tf.nn.avg_pool2d, 0.0)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    source = nhwc_source(x)
    if training and _fuses(x, running_mean, eps):
        if source is not None:  # the NHWC tensor, and the chain stays unbroken
            y, new_mean, new_var = _fused_batch_norm(source, "NHWC", running_mean, running_var, weight, bias,
                                                     momentum, eps)
            return nchw_view(y), new_mean, new_var
        rank = x.shape.rank  # (N, C) and (N, C, L) as (N, C, 1, 1) and (N, C, L, 1): no copy
        x4 = x if rank == 4 else tf.expand_dims(x, -1) if rank == 3 else tf.expand_dims(tf.expand_dims(x, -1), -1)
        y, new_mean, new_var = _fused_batch_norm(x4, "NCHW", running_mean, running_var, weight, bias, momentum, eps)
        return (y if rank == 4 else tf.squeeze(y, list(range(rank, 4)))), new_mean, new_var
    if source is not None:  # normalise the NHWC tensor over N, H, W and keep the chain unbroken
        y, new_mean, new_var = _batch_norm(source, [0, 1, 2], [1, 1, 1, -1], running_mean, running_var, weight,
                                           bias, training, momentum, eps)
        return nchw_view(y), new_mean, new_var
    axes = [0] if x.shape.rank == 2 else [0] + list(range(2, x.shape.rank))
    broadcast = [1, -1] + [1] * (x.shape.rank - 2)
    return _batch_norm(x, axes, broadcast, running_mean, running_var, weight, bias, training, momentum, eps)


def _fuses(x, statistics, eps) -> bool:
    """Whether training-mode ``batch_norm`` of ``x`` runs as ``_fused_batch_norm``: float32 input and statistics
    (the kernel has no float64) of rank 2 to 4, ``eps`` at least cuDNN's smallest (1e-5), outside XLA (which
    expands the kernel into E[x^2] - E[x]^2, and fuses the element-wise spelling as well)."""
    return (x.dtype == tf.float32 and tf.as_dtype(statistics.dtype) == tf.float32 and x.shape.rank in (2, 3, 4)
            and eps >= 1e-5 and not tracing_xla_graph())


def _fused_batch_norm(x, data_format, running_mean, running_var, weight, bias, momentum, eps):
    """Training-mode batch norm of a 4-D ``x`` as TensorFlow's fused kernel (``FusedBatchNormV3``: statistics
    and normalisation in one kernel, its gradient in one more), forward and backward twice as fast as the
    element-wise ops of ``_batch_norm`` at ResNet-18's sizes. The kernel accumulates in float32, so when
    |mean| >> std its statistics lose what PyTorch's float32 kernel loses (2e-6 of the output at |mean|/std = 30
    on 400 values a channel, 2e-5 on 32768): it normalises ``x`` minus the first sample's mean instead, which
    batch norm's output and gradient do not depend on, and whose mean is within sqrt(N) standard deviations of
    the batch's (usually far less). Its ``batch_variance`` is the unbiased one, what the running estimate takes."""
    channels_last = data_format == "NHWC"
    reduced = [0, 1, 2] if channels_last else [0, 2, 3]
    shift = tf.stop_gradient(tf.reduce_mean(x[:1], reduced, keepdims=True))
    y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x - shift, scale=tf.ones_like(running_mean) if weight is None else weight,
        offset=tf.zeros_like(running_mean) if bias is None else bias,
        mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=eps, exponential_avg_factor=1.0,
        data_format=data_format, is_training=True)
    mean = tf.reshape(shift, [-1]) + mean
    return y, (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * unbiased


def _batch_norm(x, axes, broadcast, running_mean, running_var, weight, bias, training, momentum, eps):
    if training:
        # shifted moments: the first mean's rounding error (about |mean| * 1e-7 in float32) is measured on the
        # centred data and removed, so the statistics stay accurate when |mean| >> std, as PyTorch's do
        shift = tf.stop_gradient(tf.reduce_mean(x, axes, keepdims=True))
        centred = x - shift
        correction = tf.reduce_mean(centred, axes)
        mean = tf.reshape(shift, [-1]) + correction
        var = tf.reduce_mean(tf.square(centred), axes) - tf.square(correction)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
        unbiased = var * count / tf.maximum(count - 1, 1)
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    scale = tf.math.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    # centre first, as PyTorch does: x * scale - mean * scale cancels catastrophically when |mean| >> std
    y = (x - tf.reshape(mean, broadcast)) * tf.reshape(scale, broadcast)
    return (y + tf.reshape(bias, broadcast) if bias is not None else y), new_mean, new_var


def dropout(x, p, training=True, generator=None):
    """``generator``: a ``tf.random.Generator`` (the backend's, see ``Backend.generator``)."""
    if not training or p == 0:
        return x
    if p == 1:
        return tf.zeros_like(x)
    keep = generator.uniform(tf.shape(x), dtype=x.dtype) >= p
    return tf.where(keep, x / (1 - p), tf.zeros_like(x))


def uniform_like(x, low, high, generator):
    """``generator``: a ``tf.random.Generator`` (the backend's, see ``Backend.generator``)."""
    return generator.uniform(tf.shape(x), low, high, dtype=x.dtype)


def reshape(x, shape):
    return tf.reshape(x, shape)


def flatten(x, start_dim=1):
    if start_dim == 0:  # (the front end gives a non-negative start_dim)
        return tf.reshape(x, [-1])
    tail = x.shape[start_dim:]
    if tail.is_fully_defined() and all(d is not None for d in x.shape[1:start_dim]):
        size = 1
        for d in tail:
            size *= d
        shape = [-1] + list(x.shape[1:start_dim]) + [size]
    else:
        shape = tf.concat([tf.shape(x)[:start_dim], [-1]], 0)
    if start_dim == 1 and x.shape.rank == 4 and nhwc_source(x) is not None:
        return flatten_view(x, shape)  # a Linear next may take the NHWC tensor instead (layout.py)
    return tf.reshape(x, shape)


def concat(tensors, axis=0):
    return tf.concat(list(tensors), axis)


def stack(tensors, axis=0):
    return tf.stack(list(tensors), axis)


def mean(x, axis=None, keepdims=False):
    if not x.dtype.is_floating:  # the mean of integers in the float dtype in force (reduce_mean would truncate)
        x = tf.cast(x, config.get_dtype())
    elif x.dtype in _HALF:  # summed in float32 as PyTorch sums it (a float16 sum overflowed)
        return tf.cast(tf.reduce_mean(tf.cast(x, tf.float32), axis, keepdims), x.dtype)
    return tf.reduce_mean(x, axis, keepdims)


def sum(x, axis=None, keepdims=False):
    if x.dtype in _HALF:  # summed in float32 as PyTorch sums it, then rounded
        return tf.cast(tf.reduce_sum(tf.cast(x, tf.float32), axis, keepdims), x.dtype)
    return tf.reduce_sum(x, axis, keepdims)


def clip(x, minimum=None, maximum=None):
    if not x.dtype.is_floating and (float_bound(minimum) or float_bound(maximum)):
        x = tf.cast(x, config.get_dtype())  # a float bound makes integers floats, as PyTorch's promotion (no truncation)
    if minimum is not None:
        x = tf.maximum(x, as_dtype(minimum, x.dtype))
    if maximum is not None:
        x = tf.minimum(x, as_dtype(maximum, x.dtype))
    return x


def as_dtype(x, dtype):
    """``x`` in ``dtype``: a Python or NumPy number made a constant of that dtype at once (``tf.cast`` of a Python
    float makes it a float32 tensor first: 0.05 in float64 became 0.05000000074505806), a tensor cast."""
    number = isinstance(x, (float, int, np.floating, np.integer)) and not isinstance(x, bool)
    if number and (tf.as_dtype(dtype).is_floating or isinstance(x, (int, np.integer))):
        return tf.constant(x, dtype)
    return tf.cast(x, dtype)  # (a float for integers: truncated, as a cast does; tf.constant refuses it)


def shape(x):
    """The sizes of ``x``: ints where the graph knows them, else scalar tensors, read in one op (``tf.unstack``)
    rather than one slice and its three constants per size (a graph of unknown sizes reads many), and once per
    tensor and graph: a convolution's checks read its input's sizes three times (``_read_sizes``)."""
    static = tuple(x.shape)
    if None not in static:
        return static
    read = _read_sizes(x)
    if read is not None:
        return tuple(d if d is not None else size for d, size in zip(static, read))
    source = nhwc_source(x)
    if source is not None:  # read the NHWC tensor's sizes: tf.shape of a view would make the view a real transpose
        dynamic = tf.gather(tf.shape(source), NHWC_TO_NCHW)
    else:
        dynamic = tf.shape(x)
    sizes = tf.unstack(dynamic, num=len(static))
    _read_sizes(x, sizes)
    if sizes and isinstance(x, tf.Tensor):
        vectors = _SIZE_VECTORS.setdefault(sizes[0].graph, {})
        vectors[id(sizes[0].op)] = (weakref.ref(sizes[0].op), static, weakref.ref(x))
    return tuple(d if d is not None else size for d, size in zip(static, sizes))


# graph -> {id(tensor): (the tensor, its sizes)}, weakly on both sides: a graph's tensors hold it (a strong value
# kept every traced graph alive)
_SIZES_READ: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# graph -> {id(the Unpack that ``shape`` read sizes with): (that op, the sizes the graph knew, the tensor read)},
# weakly as ``_SIZES_READ``: which sizes ``sizes_hold`` may compare as the one shape vector they were read from
_SIZE_VECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _read_sizes(x, sizes=None):
    """The sizes of ``x`` (or of the tensor behind its ``Identity`` ops: a check's output) read already in the graph
    being built, or None; with ``sizes``, keeps them. Kept by graph: a branch of a conditional, a graph of its own,
    reads its own."""
    if tf.executing_eagerly() or not isinstance(x, tf.Tensor) or not hasattr(x, "op"):
        return None
    while x.op.type == "Identity" and x.op.inputs[0].shape.rank == x.shape.rank:
        x = x.op.inputs[0]
    read = _SIZES_READ.setdefault(tf.compat.v1.get_default_graph(), {})
    if sizes is not None:
        read[id(x)] = (weakref.ref(x), [weakref.ref(size) for size in sizes])
        return sizes
    kept = read.get(id(x))
    if kept is None or kept[0]() is not x:
        return None
    sizes = [size() for size in kept[1]]
    return None if any(size is None for size in sizes) else sizes


# ops whose output has the shape of their first input (element-wise of one tensor), and element-wise ops of two or
# three tensors whose output has the shape of any input the others broadcast to (scalars, sizes of 1)
_SHAPE_OF_INPUT = frozenset({"Identity", "Cast", "Neg", "Abs", "Sign", "Relu", "Relu6", "Elu", "Selu", "Sigmoid",
                             "Tanh", "Exp", "Log", "Log1p", "Sqrt", "Rsqrt", "Square", "Floor", "Ceil", "Round",
                             "LogicalNot", "StopGradient", "IsNan", "IsFinite", "IsInf", "Softplus", "Erf",
                             "ZerosLike", "OnesLike", "Reciprocal", "Expm1"})
_SHAPE_OF_BROADCAST = frozenset({"Greater", "GreaterEqual", "Less", "LessEqual", "Equal", "NotEqual", "AddV2", "Add",
                                 "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "LogicalAnd", "LogicalOr", "SelectV2",
                                 "Pow", "FloorDiv", "FloorMod"})
# how many ops back ``size_keys`` follows a size: a deeper one keeps a key of its own (its check stays in the graph)
_SIZE_KEY_DEPTH = 48


def size_keys(x):
    """The sizes of ``x`` as keys that say which sizes a traced graph knows to be equal without reading them: an int
    where the graph knows it, else a hashable key, equal for two sizes the ops that made them give one value when
    the graph runs (``x > 0`` beside ``x``; ``tf.range(n)`` beside ``tf.zeros_like(tf.range(n)) + 1``; each of the
    two broadcast inputs of a ``tf.maximum`` that share a size). Read from the ops that made ``x`` while tracing;
    adds nothing to the graph, so that a check whose sizes agree by construction adds nothing either."""
    return _size_keys(x, {}, _SIZE_KEY_DEPTH)


def _size_keys(x, memo: dict, depth: int) -> tuple:
    # (keys of tuples of strings and numbers, never of tensors or their ``ref()``s, which refuse to be compared with
    # anything else; a tensor's ``id`` names it while its graph is traced, which keeps it)
    static = tuple(x.shape)
    if None not in static:
        return static
    if id(x) not in memo:
        derived = None
        if depth > 0 and isinstance(x, tf.Tensor) and hasattr(x, "op") and not tf.executing_eagerly():
            derived = _derived_size_keys(x, memo, depth - 1)
        if derived is None or len(derived) != len(static):
            derived = (None,) * len(static)
        memo[id(x)] = tuple(size if size is not None else key if key is not None else ("size", id(x), axis)
                            for axis, (size, key) in enumerate(zip(static, derived)))
    return memo[id(x)]


def _derived_size_keys(x, memo: dict, depth: int):
    """The size keys of ``x`` read from the inputs of the op that made it (None per size it does not tell; None
    for an op whose output's sizes are not its inputs')."""
    operation = x.op
    kind = operation.type
    if kind in _SHAPE_OF_INPUT:
        return _size_keys(operation.inputs[0], memo, depth)
    if kind == "IdentityN":  # (a custom gradient's outputs: each its input)
        return _size_keys(operation.inputs[x.value_index], memo, depth)
    if kind in _SHAPE_OF_BROADCAST:
        inputs = [_size_keys(t, memo, depth) for t in operation.inputs if t.shape.rank is not None]
        if len(inputs) != len(operation.inputs):
            return None
        rank = x.shape.rank
        if any(len(keys) > rank for keys in inputs):
            return None
        padded = [(1,) * (rank - len(keys)) + keys for keys in inputs]
        axes = [{key for key in keys if key != 1} for keys in zip(*padded)]
        return tuple(keys.pop() if len(keys) == 1 else None for keys in axes)
    if kind == "ExpandDims":
        axis, keys = tf.get_static_value(operation.inputs[1]), _size_keys(operation.inputs[0], memo, depth)
        if axis is None or np.ndim(axis) != 0:
            return None
        axis = int(axis) % (len(keys) + 1)
        return keys[:axis] + (1,) + keys[axis:]
    if kind == "Range":  # (its length is a function of its start, limit and delta)
        return (("Range",) + tuple(_scalar_key(t) for t in operation.inputs),)
    return None


#: the ops one comparison of a relation builds (``_related``), for ``sizes_hold``'s choice between one comparison of
#: two shape vectors and one per size
_RELATION_OPS = {"equal": 1, "at_most": 1, "broadcasts_to": 3, "broadcast": 5}


def sizes_hold(relation, a, b, axes, agreeing=()):
    """Whether ``relation`` holds between the sizes of ``a`` and ``b`` (tuples of one length: ints, and int32 scalar
    tensors where the graph leaves a size unknown) on each of ``axes``; on ``agreeing`` it is known to hold, where
    comparing them changes nothing. A bool where that is decided while tracing (sizes ``size_keys`` knows to be
    equal hold every relation), else one boolean scalar tensor. Where ``shape`` read each side as one vector of a
    tensor's every size (or where packing the sizes into two vectors makes fewer ops), one comparison of two
    vectors and one reduction: a comparison per size built an ``Equal`` (and for broadcasting two more and two
    ``LogicalOr``) per size, and its constants, in every check of a graph traced for any size."""
    memo: dict = {}
    compared = [axis for axis in axes if not _known_equal(a[axis], b[axis], memo)]
    if not compared:
        return True
    if any(s.dtype != tf.int32 for axis in compared for s in (a[axis], b[axis]) if isinstance(s, tf.Tensor)):
        return _all_hold(relation, a, b, compared)  # (sizes of another dtype: compared one by one, as they were)
    cost = _RELATION_OPS[relation]
    if len(compared) > 1 and len(set(axes) | set(agreeing)) == len(a):
        vectors = _size_vector(a), _size_vector(b)
        if None not in vectors:  # both shape vectors read already: no op to make them
            return _reduce_all(_related(relation, *vectors))
    constants = {s for axis in compared for s in (a[axis], b[axis]) if not isinstance(s, tf.Tensor)}
    packed = 2 + len(constants) + cost + 2  # (two packs, their constants, the comparison, its reduction and axis)
    if packed >= len(compared) * (cost + 1) - 1:  # (a few sizes: as few ops, or fewer, one by one)
        return _all_hold(relation, a, b, compared)
    return _reduce_all(_related(relation, *(tf.stack([_as_size(s[axis]) for axis in compared]) for s in (a, b))))


def sizes_broadcast(sizes):
    """Whether tensors of ``sizes`` (ints, and int32 scalar tensors ``shape`` read) broadcast together, as one
    comparison of their stacked shape vectors: on each axis every size is 1 or the axis's largest size other than 1
    (a 0 beside 1 broadcasts, as in PyTorch). Seven ops for a ``where``'s three tensors, where a comparison per pair
    built twenty; None where a tensor's sizes are not one vector ``shape`` read (or known ints) or the ranks differ
    (the caller compares them pair by pair)."""
    ranks = {len(s) for s in sizes}
    if len(ranks) != 1 or 0 in ranks:
        return None
    vectors = []
    for one in sizes:
        if all(isinstance(size, Integral) for size in one):
            vectors.append(_graph_constant(tuple(int(size) for size in one)))
            continue
        vector = _size_vector(one)
        if vector is None or vector.dtype != tf.int32:
            return None
        vectors.append(vector)
    stacked = tf.stack(vectors)
    ones = tf.equal(stacked, _graph_constant(1))
    common = tf.reduce_max(tf.where(ones, _graph_constant(-1), stacked), axis=_graph_constant(0))
    return tf.reduce_all(tf.logical_or(ones, tf.equal(stacked, common)), axis=_graph_constant((0, 1)))


def _all_hold(relation, a, b, axes):
    """``sizes_hold`` per size: the conjunction of one comparison of each pair."""
    held = [_related(relation, a[axis], b[axis]) for axis in axes]
    held = [h for h in held if h is not True]
    if any(h is False for h in held):
        return False
    if not held:
        return True
    return functools.reduce(tf.logical_and, held)


def _related(relation, a, b):
    """``relation`` of two sizes or two shape vectors, element-wise (ints, or int32 tensors): a bool where decided
    by ints alone."""
    if relation == "equal":
        return _equal(a, b)
    if relation == "at_most":
        return a <= b if isinstance(a, Integral) and isinstance(b, Integral) else tf.less_equal(*_as_sizes(a, b))
    if relation == "broadcasts_to":  # (a broadcasts to b: 1 or b's)
        return _either(_equal(a, 1), _equal(a, b))
    return _either(_equal(a, b), _either(_equal(a, 1), _equal(b, 1)))  # broadcast: equal, or either of them 1


def _equal(a, b):
    if isinstance(a, Integral) and isinstance(b, Integral):
        return a == b
    return tf.equal(*_as_sizes(a, b))


def _either(a, b):
    if a is True or b is True:
        return True
    if a is False or b is False:
        return b if a is False else a
    return tf.logical_or(a, b)


def _reduce_all(held):
    return held if isinstance(held, bool) else tf.reduce_all(held, axis=_graph_constant(0))


def _as_size(size, dtype=tf.int32):
    """A size as a tensor: a known one as the graph's one constant of its value, in ``dtype``."""
    return size if isinstance(size, tf.Tensor) else _graph_constant(int(size), dtype)


def _as_sizes(a, b):
    """Two sizes (one a tensor at least) as tensors, a known one in the other's dtype (as ``t == 1`` converts it)."""
    return _as_size(a, getattr(b, "dtype", tf.int32)), _as_size(b, getattr(a, "dtype", tf.int32))


# graph -> {(value, dtype): its constant}, weakly on both sides (as ``_SIZES_READ``)
_CONSTANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graph_constant(value, dtype=tf.int32):
    """The constant ``value`` (an int, or a tuple of them) of ``dtype`` in the graph being built, made once per graph
    for every check's comparisons and reductions (``x == 1`` made a constant each time), outside any control
    dependencies (a constant under a check's would hold every later comparison to it)."""
    graph = tf.compat.v1.get_default_graph()
    kept = _CONSTANTS.setdefault(graph, {})
    key = (value, tf.as_dtype(dtype).name)
    constant = kept[key]() if key in kept else None
    if constant is None:
        with tf.control_dependencies(None):
            constant = tf.constant(value, dtype)
        kept[key] = weakref.ref(constant)
    return constant


def _size_read(size):
    """``(the Unpack op of shape, the sizes the graph knew, the tensor read)`` that ``shape`` read ``size`` (a scalar
    tensor) with, or None."""
    operation = size.op
    if operation.type != "Unpack":
        return None
    kept = _SIZE_VECTORS.get(operation.graph, {}).get(id(operation))
    if kept is None or kept[0]() is not operation or kept[2]() is None:
        return None
    return operation, kept[1], kept[2]()


def _size_vector(sizes):
    """The vector ``shape`` read ``sizes`` from (every size of one tensor, in order; its known ones ints), or None."""
    first = next((s for s in sizes if isinstance(s, tf.Tensor)), None)
    read = _size_read(first) if first is not None else None
    if read is None:
        return None
    operation, static, _ = read
    outputs = operation.outputs
    if len(outputs) != len(sizes) or not all(s is outputs[axis] if isinstance(s, tf.Tensor) else static[axis] == s
                                             for axis, s in enumerate(sizes)):
        return None
    if operation.graph is not tf.compat.v1.get_default_graph():
        return None  # (read in an enclosing graph: its sizes, not its vector, are this graph's captures)
    return operation.inputs[0]


def _known_equal(a, b, memo: dict) -> bool:
    """Whether two sizes are known equal while tracing: equal ints, one tensor, or sizes ``shape`` read of tensors
    whose ``size_keys`` agree there (a mask's size beside the input's it was made from)."""
    if a is b:
        return True
    if not (isinstance(a, tf.Tensor) and isinstance(b, tf.Tensor)):
        return isinstance(a, Integral) and isinstance(b, Integral) and a == b
    reads = _size_read(a), _size_read(b)
    if None in reads:
        return False
    (first, _, x), (second, _, y) = reads
    axis_a = next(axis for axis, s in enumerate(first.outputs) if s is a)
    axis_b = next(axis for axis, s in enumerate(second.outputs) if s is b)
    return _size_keys(x, memo, _SIZE_KEY_DEPTH)[axis_a] == _size_keys(y, memo, _SIZE_KEY_DEPTH)[axis_b]


def _scalar_key(t):
    """A scalar tensor as a key: its value where the graph knows it, else the tensor behind any ``Identity`` and
    any cast of integers to a wider integer dtype, which keep its value (a size read as int32, cast to int64 for
    each ``arange`` of it)."""
    value = tf.get_static_value(t)
    if value is not None and np.ndim(value) == 0:
        return ("value", np.asarray(value).item())
    while t.op.type == "Identity" or t.op.type == "Cast" and _widens(t.op.inputs[0].dtype, t.dtype):
        t = t.op.inputs[0]
    return ("tensor", id(t))


def _widens(source, target) -> bool:
    """Whether a cast from the integer dtype ``source`` to ``target`` keeps every value."""
    return source.is_integer and target.is_integer and source.is_unsigned == target.is_unsigned and \
        source.size <= target.size


def cast_like(x, like):
    return as_dtype(x, like.dtype)


def one_hot(labels, num_classes):
    return tf.one_hot(tf.cast(labels, tf.int64), num_classes, dtype=tf.int64)  # (int32 would wrap large labels)


def _reduce(values, reduction):
    """A loss's reduction, in float32 for float16 and bfloat16 values as PyTorch's (``mean``, ``sum``): a float16
    mean of 300000 values was NaN (its running sum overflowed)."""
    if reduction == "none":
        return values
    return mean(values) if reduction == "mean" else sum(values)


def mse_loss(prediction, target, reduction="mean"):
    return _reduce(tf.square(prediction - tf.cast(target, prediction.dtype)), reduction)


def l1_loss(prediction, target, reduction="mean"):
    return _reduce(tf.abs(prediction - tf.cast(target, prediction.dtype)), reduction)


def _in_shape_check() -> bool:
    """Whether the graph being traced is a shape check's (``tracing_for_shapes``: traced for its shapes and errors,
    never run), where a check of values is left out: its ``Assert`` fails only when a graph runs, and the step's own
    graph holds it (a shape check traced a third of the CNN's forward again for the labels' check). XLA's checks,
    TensorFlow's static assertions that can fail while tracing, are kept."""
    return tracing_shape_graph() and not tracing_xla_graph()


def check_in_range(x, low, high, what="values"):
    if _in_shape_check():
        return x
    outside = tf.reduce_sum(tf.cast(tf.logical_or(x < low, x > high), tf.int64))
    if tf.executing_eagerly():
        if int(outside):
            raise ValueOutOfRangeError(f"{what} must lie in [{low}, {high}]; found {int(outside)} value(s) outside")
        return x
    template = f"{what} must lie in [{low}, {high}]; found {{}} value(s) outside"
    if xla_checks.recording():  # under XLA: the check is an output of the compiled function (xla_checks.py)
        xla_checks.record(tf.equal(outside, 0), ValueOutOfRangeError, template, (outside,))
        return x
    if tracing_xla_graph():  # XLA keeps no string formatting: the range without the count
        message = f"{ValueOutOfRangeError.marker}{what} must lie in [{low}, {high}]"
        checks = [tf.debugging.assert_equal(outside, tf.constant(0, tf.int64), message=message)]
        xla_checks.in_program_order()
    else:
        checks = [marked_check(tf.equal(outside, 0), ValueOutOfRangeError, template, (outside,), tf.int64)]
    with tf.control_dependencies(checks):
        source = nhwc_source(x)  # keep an NCHW view recognisable (layout.py): check the NHWC tensor behind it
        return nchw_view(tf.identity(source)) if source is not None else tf.identity(x)


def check_index(indices, size, what="index"):
    if tf.executing_eagerly():
        if tf.size(indices):
            low, high = int(tf.reduce_min(indices)), int(tf.reduce_max(indices))
            if low < 0 or high >= int(size):
                raise IndexOutOfRangeError(f"{what} must lie in [0, {int(size)}); found values from {low} to {high}")
        return indices
    # in a graph: GPU kernels return NaN or zeros for such indices (and TensorFlow's CPU gather zeros), so
    # check with the graph; GraphFunction turns the marked error into IndexOutOfRangeError when the graph runs
    if _in_shape_check():
        return indices
    template = f"{what} must lie in [0, {{}}); found values from {{}} to {{}}"
    if tracing_xla_graph() and not xla_checks.recording():  # XLA keeps no string formatting: no values found
        bound = size if isinstance(size, int) else "its size"
        message = f"{IndexOutOfRangeError.marker}{what} must lie in [0, {bound})"
        checks = [tf.debugging.assert_non_negative(indices, message=message),
                  tf.debugging.assert_less(indices, tf.cast(size, indices.dtype), message=message)]
        xla_checks.in_program_order()
        with tf.control_dependencies(checks):
            return tf.identity(indices)
    valid, low, high = _indices_in_range(indices, size)
    if xla_checks.recording():  # under XLA: the check is an output of the compiled function (xla_checks.py)
        xla_checks.record(valid, IndexOutOfRangeError, template, (size, low, high))
        return indices
    check = marked_check(valid, IndexOutOfRangeError, template, (size, low, high), tf.int64)
    with tf.control_dependencies([check]):
        return tf.identity(indices)


def _indices_in_range(indices, size):
    """``(whether every index lies in [0, size), the smallest, the largest)`` in a graph, in few ops: the
    reductions of an empty tensor of signed integers are the dtype's largest and smallest values, which pass (an
    empty tensor needs no test of its size, but of unsigned integers, whose largest is then 0)."""
    dtype = indices.dtype
    axes = _graph_constant(tuple(range(indices.shape.rank))) if indices.shape.rank is not None else None
    low, high = tf.reduce_min(indices, axes), tf.reduce_max(indices, axes)
    bound = _graph_constant(int(size), dtype) if isinstance(size, Integral) else tf.cast(size, dtype)
    valid = tf.less(high, bound)
    if not dtype.is_unsigned:
        valid = tf.logical_and(tf.greater_equal(low, _graph_constant(0, dtype)), valid)
    else:
        valid = tf.logical_or(tf.equal(tf.size(indices), _graph_constant(0)), valid)
    return valid, low, high


def check_values(x, condition, message, values=()):
    if tf.executing_eagerly():
        return check_known_values(x, condition, message, values)
    if _in_shape_check():
        return x
    if xla_checks.recording():  # under XLA: the check is an output of the compiled function (xla_checks.py)
        xla_checks.record(condition, ValueOutOfRangeError, message, values)
        return x
    if tracing_xla_graph():  # XLA keeps no string formatting: the message without the values
        text = ValueOutOfRangeError.marker + message.replace("{}", "?")
        checks = [tf.debugging.assert_equal(tf.cast(condition, tf.bool), True, message=text)]
        xla_checks.in_program_order()
    else:
        checks = [marked_check(condition, ValueOutOfRangeError, message, values, tf.int64)]
    with tf.control_dependencies(checks):
        return tf.identity(x)


def segment_sum(data, segment_ids, num_segments):
    return tf.math.unsorted_segment_sum(data, tf.cast(segment_ids, tf.int32), num_segments)


def marked_check(condition, error_class, message, values, dtype=tf.int32):
    """An op that, when the graph runs, fails unless ``condition`` holds, printing ``error_class``'s marked
    template ``message`` and then ``values`` (the ints put in the template now, the scalar tensors printed as
    ``dtype``: int32 for a graph's sizes, int64 for indices, as text); ``marked_error_from`` fills the template's
    other ``{}`` with them, so GraphFunction raises exactly the unidl error an eager check gives. A plain
    ``Assert``: TensorFlow guards one whose data are strings and int32 with no cond and prints the data only on
    failure, so a passing check costs the comparison (and an index check two casts to text), and tracing it costs
    no cond's two branch graphs (two checks per convolution or pooling whose input sizes a graph leaves unknown,
    one per cross-entropy's labels). An exported graph, run without unidl to fill the template, formats the
    whole message itself, on failure (a cond's branch)."""
    if tracing_export_graph():
        return _formatted_check(condition, error_class, message, values)
    pieces, printed = message.split("{}"), []
    if len(pieces) == len(values) + 1:  # a template of one {} a value (``input_checks``: braces are only those)
        message = pieces[0]
        for value, piece in zip(values, pieces[1:]):
            known = isinstance(value, Integral)
            message += (str(int(value)) if known else "{}") + piece
            printed += [] if known else [_printable(value, dtype)]
    else:
        printed = [_printable(value, dtype) for value in values]
    data = [error_class.marker + message + MARKER_END] + printed
    check = tf.debugging.Assert(tf.cast(condition, tf.bool), data, summarize=1)
    xla_checks.in_program_order()  # (after the graph's writes made before it, before those after it)
    return check


def _formatted_check(condition, error_class, message, values):
    """``marked_check`` with the message formatted inside the graph, in the branch a failure takes."""

    def fail():
        text = tf.strings.format(error_class.marker + message + MARKER_END, [tf.cast(v, tf.int64) for v in values])
        return tf.debugging.Assert(False, [text])

    check = tf.cond(tf.cast(condition, tf.bool), tf.no_op, fail)
    xla_checks.in_program_order()
    return check


def _printable(value, dtype):
    """A scalar as ``Assert`` data that needs no guard: int32 as it is, int64 as its decimal string (TensorFlow
    wraps an ``Assert`` holding other dtypes in a cond, which the check is written to avoid)."""
    value = tf.cast(value, dtype)
    return value if dtype == tf.int32 else tf.strings.as_string(value)


def _known_size(size):
    """A size as a traced graph knows it: its int, or "?" where it is known only when the graph runs."""
    value = tf.get_static_value(size)
    return "?" if value is None else int(value)


def check_shape(x, condition, message, sizes=()):
    if tf.executing_eagerly():
        return check_known_shape(x, condition, message, sizes)
    if tracing_xla_graph():  # XLA runs no assertions: what tracing knows (a rank that differs) is checked now
        if condition is False:
            raise ShapeMismatchError(message.format(*(_known_size(size) for size in sizes)))
        if condition is not True and xla_checks.recording():  # sizes known when it runs: an output (xla_checks.py)
            xla_checks.record(condition, ShapeMismatchError, message, sizes)
        return x
    with tf.control_dependencies([marked_check(condition, ShapeMismatchError, message, sizes)]):
        source = nhwc_source(x)  # keep the NCHW view recognisable (layout.py): check the NHWC tensor behind it
        return nchw_view(tf.identity(source)) if source is not None else tf.identity(x)


def cross_entropy(logits, labels, reduction="mean", ignore_index=-100):
    labels = tf.cast(labels, tf.int64)
    kept = tf.not_equal(labels, ignore_index)
    labels = check_index(tf.where(kept, labels, tf.zeros_like(labels)), logits.shape[-1] if logits.shape[-1]
                         is not None else tf.shape(logits, out_type=tf.int64)[-1], "CrossEntropyLoss labels")
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    losses = tf.where(kept, losses, tf.zeros_like(losses))
    if reduction == "mean":
        return tf.reduce_sum(losses) / tf.reduce_sum(tf.cast(kept, losses.dtype))
    return _reduce(losses, reduction)


def bce_with_logits(logits, targets, reduction="mean"):
    """``tf.nn.sigmoid_cross_entropy_with_logits``'s arithmetic (the same ops, the same values and gradients), without
    its check that the two shapes are one when the graph is traced: there the front end's check of the sizes (which a
    graph traced for any sizes knows only when it runs) raises unidl's error, as eagerly."""
    targets = tf.cast(targets, logits.dtype)
    positive = logits >= 0
    relu_logits = tf.where(positive, logits, tf.zeros_like(logits))
    negative_abs_logits = tf.where(positive, -logits, logits)
    return _reduce(relu_logits - logits * targets + tf.math.log1p(tf.exp(negative_abs_logits)), reduction)




def _move_axis(x, source, destination):
    rank = x.shape.rank
    order = [a for a in range(rank) if a != source % rank]
    order.insert(destination % rank, source % rank)
    return tf.transpose(x, order)


def scan(fn, init, xs, axis=0, reverse=False):
    # a tf.while_loop over TensorArrays: the length may be unknown until run time, with no retrace. The
    # first step runs before the loop: its outputs give the TensorArrays' dtypes (any nesting, any shape)
    xs = tf.nest.map_structure(lambda x: _move_axis(x, axis, 0) if axis % x.shape.rank else x, xs)
    length = tf.shape(tf.nest.flatten(xs)[0])[0]
    first = length - 1 if reverse else tf.constant(0)
    carry, y = fn(init, tf.nest.map_structure(lambda x: x[first], xs))
    ys = tf.nest.map_structure(lambda y: tf.TensorArray(y.dtype, size=length).write(first, y), y)

    def body(t, carry, ys):
        carry, y = fn(carry, tf.nest.map_structure(lambda x: x[t], xs))
        return t + (-1 if reverse else 1), carry, tf.nest.map_structure(lambda array, y: array.write(t, y), ys, y)

    start = first + (-1 if reverse else 1)
    _, carry, ys = tf.while_loop(lambda t, carry, ys: t >= 0 if reverse else t < length, body, (start, carry, ys))
    return carry, tf.nest.map_structure(
        lambda array, y: _move_axis(array.stack(), 0, axis) if axis % (y.shape.rank + 1) else array.stack(), ys, y)


@elementwise
def gelu(x, approximate="none"):
    # PyTorch's arithmetic, constants in x's dtype (tf.nn.gelu rounds them to float32 in float64)
    if approximate == "tanh":
        return 0.5 * x * (1 + tf.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return x * 0.5 * (1 + tf.math.erf(x * math.sqrt(0.5)))


@elementwise
def elu(x, alpha=1.0):
    # expm1 of the negative part only: the branch not taken must not overflow (its gradient would be NaN)
    return tf.where(x > 0, x, alpha * tf.math.expm1(tf.where(x > 0, tf.zeros_like(x), x)))


@elementwise
def softplus(x, beta=1.0, threshold=20.0):
    scaled = x * beta
    # (a select, not minimum: at NaN PyTorch's NaN gradient, which tf.minimum's 20 cut off)
    linear = scaled > threshold
    return tf.where(linear, x, tf.math.log1p(tf.exp(tf.where(linear, tf.zeros_like(scaled), scaled))) / beta)


@elementwise
def hardtanh(x, min_val=-1.0, max_val=1.0):
    # tf.constant, not tf.cast: a Python float cast from float32 would lose float64 digits. Selects, not
    # clip_by_value: at a bound the constant, whose gradient is 0 as PyTorch's (clip_by_value passes it whole)
    if x.dtype.is_integer:  # float bounds truncated toward zero, as PyTorch's (tf.constant refused them)
        min_val, max_val = int(min_val), int(max_val)
    low, high = tf.constant(min_val, x.dtype), tf.constant(max_val, x.dtype)
    return tf.where(x <= low, low, tf.where(x >= high, high, x))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    axes = list(range(-len(normalized_shape), 0))
    centered = x - tf.reduce_mean(x, axes, keepdims=True)
    y = centered * tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def embedding_rows(indices, weight, padding_idx=None):
    indices = check_index(indices, _axis_size(weight, 0), "Embedding indices")
    rows = tf.gather(weight, indices)
    if padding_idx is None:
        return rows
    return tf.where(tf.expand_dims(tf.equal(indices, tf.cast(padding_idx, indices.dtype)), -1), tf.stop_gradient(rows), rows)


def _axis_size(x, axis):
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x, out_type=tf.int64)[axis]


def take(x, indices, axis=0):
    return tf.gather(x, check_index(indices, _axis_size(x, axis), "take indices"), axis=axis)


def take_in_range(x, indices, axis):
    if axis == x.shape.rank - 1 and axis:  # (gathered along the axis before it: along the last, one element at a
        # time, 4 to 6 times slower than the two transposes and the gather of rows)
        swap = list(range(axis - 1)) + [axis, axis - 1]
        return tf.transpose(tf.gather(tf.transpose(x, swap), indices, axis=axis - 1), swap)
    return tf.gather(x, indices, axis=axis)


def cond(condition, true_fn, false_fn, operands):
    return tf.cond(condition, lambda: true_fn(*operands), lambda: false_fn(*operands))


def gather(x, dim, index):
    rank = x.shape.rank
    dim %= rank
    index = check_index(index, _axis_size(x, dim), "gather index")
    # torch.gather as a batched gather over the other axes, on which index may be shorter than x
    x_last, index_last = _move_axis(x, dim, rank - 1), _move_axis(index, dim, rank - 1)
    x_last = tf.slice(x_last, tf.zeros([rank], tf.int32),
                      tf.concat([tf.shape(index_last)[:-1], tf.shape(x_last)[-1:]], 0))
    return _move_axis(tf.gather(x_last, index_last, batch_dims=rank - 1), rank - 1, dim)


def cast(x, dtype):
    return tf.cast(x, dtype)


def zeros(shape, dtype):
    return tf.zeros(shape, dtype)


def ones(shape, dtype):
    return tf.ones(shape, dtype)


def arange(start, end, step, dtype):
    return tf.range(start, end, step, dtype=dtype)


def argmax(x, dim=None, keepdim=False):
    if dim is None:
        index = _argmax(tf.reshape(x, [-1]), 0)
        return tf.reshape(index, [1] * x.shape.rank) if keepdim else index
    index = _argmax(x, dim)
    return tf.expand_dims(index, dim) if keepdim else index


def _argmax(x, axis):
    """``tf.argmax`` with a NaN counted as the largest value (its first one wins), as PyTorch's and NumPy's;
    TensorFlow's skips NaN."""
    index = tf.argmax(x, axis, output_type=tf.int64)
    if not x.dtype.is_floating:
        return index
    nan = tf.math.is_nan(x)
    return tf.where(tf.reduce_any(nan, axis), tf.argmax(tf.cast(nan, tf.int8), axis, output_type=tf.int64), index)


def permute(x, dims):
    return tf.transpose(x, list(dims))


def unsqueeze(x, dim):
    return tf.expand_dims(x, dim)


def squeeze(x, dim=None):
    if dim is None:
        return tf.squeeze(x)
    dims = [d % x.shape.rank for d in ((dim,) if isinstance(dim, int) else dim)]
    dims = [d for d in dims if x.shape[d] == 1 or x.shape[d] is None]  # torch leaves other axes as they are
    return tf.squeeze(x, dims) if dims else x


def _pad_amounts(rank, pad):
    amounts = [[0, 0] for _ in range(rank)]
    for i in range(len(pad) // 2):
        amounts[rank - 1 - i] = [int(pad[2 * i]), int(pad[2 * i + 1])]
    return amounts


def pad(x, pad, mode="constant", value=0.0):
    amounts = _pad_amounts(x.shape.rank, pad)
    if mode == "constant":
        # (a tensor value is the front end's, of x's dtype, from inside a graph: unidl/padding.py)
        value = tf.cast(value, x.dtype) if tf.is_tensor(value) else tf.constant(value, x.dtype)
        return tf.pad(x, amounts, constant_values=value)
    if mode == "reflect":
        return tf.pad(x, amounts, mode="REFLECT")
    for axis, (before, after) in enumerate(amounts):  # replicate and circular: a gather of edge or wrapped rows
        if before or after:
            size = tf.shape(x)[axis]
            positions = tf.range(-before, size + after)
            positions = tf.clip_by_value(positions, 0, size - 1) if mode == "replicate" else tf.math.floormod(positions, size)
            x = tf.gather(x, positions, axis=axis)
    return x
