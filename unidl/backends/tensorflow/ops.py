"""unidl's functional ops on TensorFlow, taking and returning NCHW.

TensorFlow's CPU kernels convolve and pool in NHWC only; ``layout.py`` says how the
layout-aware ops here (conv, pools, activations, batch norm) run NHWC and chain without
transposes in graphs. Kernels stay OIHW in the variables and are transposed in the graph.
Everything here works in eager mode and in graphs with unknown batch size.
"""

from __future__ import annotations


import tensorflow as tf

from unidl.backends.tensorflow.layout import (elementwise, flatten_view, flattened_nhwc_source, nchw_view,
                                              nhwc_source, to_nhwc)

matmul = tf.linalg.matmul
relu = elementwise(tf.nn.relu)
sigmoid = elementwise(tf.sigmoid)
tanh = elementwise(tf.tanh)
exp = tf.exp
log = tf.math.log
sqrt = tf.sqrt
abs = tf.abs
sign = tf.sign
square = tf.square
maximum = tf.maximum
where = tf.where
zeros_like = tf.zeros_like

def linear(x, weight, bias=None):
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
    else:
        y = tf.einsum("...i,oi->...o", x, weight)
    return tf.nn.bias_add(y, bias) if bias is not None else y


def apply_momentum(param, buffer, lr, grad, momentum, nesterov):
    """``buffer = momentum * buffer + grad``, then ``param -= lr * (grad + momentum * buffer if nesterov
    else buffer)``, in place, as one kernel (``ResourceApplyMomentum``: PyTorch's SGD arithmetic, in
    the same order without Nesterov; with it TensorFlow computes ``lr * grad + lr * momentum * buffer``,
    equal up to the last bit). It replaces five ops a parameter (two reads of the buffer, two writes);
    ``param`` and ``buffer`` may be ``tf.Variable``s or Keras variables on TensorFlow."""
    if isinstance(grad, tf.IndexedSlices):
        grad = tf.convert_to_tensor(grad)
    dtype = grad.dtype
    return tf.raw_ops.ResourceApplyMomentum(var=param.handle, accum=buffer.handle, lr=tf.cast(lr, dtype), grad=grad,
                                            momentum=tf.constant(momentum, dtype), use_nesterov=bool(nesterov))


@elementwise
def leaky_relu(x, negative_slope=0.01):
    if x.dtype == tf.float64:  # TensorFlow's kernel holds alpha as a float32: slope rounded, errors near 1e-9
        return tf.where(x > 0, x, x * tf.constant(negative_slope, tf.float64))
    return tf.nn.leaky_relu(x, alpha=negative_slope)


def softmax(x, dim=-1):
    return tf.nn.softmax(x, axis=dim)


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


def _padding_argument(pads, kernel_hw, stride_hw, explicit):
    """TensorFlow's fastest spelling of the padding amounts: 'VALID', 'SAME', or the explicit list
    (its CPU kernel with explicit amounts is several times slower, so only when nothing else fits)."""
    if not any(pads[0]) and not any(pads[1]):
        return "VALID"
    if stride_hw == (1, 1) and pads == conv_padding("same", kernel_hw):
        return "SAME"
    return explicit


def conv2d(x, weight, bias=None, stride=1, padding=0):
    kernel_hw = tuple(weight.shape[2:4])
    pads = conv_padding(padding, kernel_hw)
    (top, bottom), (left, right) = pads
    sh, sw = _pair(stride)
    y = tf.nn.conv2d(to_nhwc(x), tf.transpose(weight, (2, 3, 1, 0)), strides=(1, sh, sw, 1),
                     padding=_padding_argument(pads, kernel_hw, (sh, sw),
                                               ((0, 0), (top, bottom), (left, right), (0, 0))))
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return nchw_view(y)


def _pool(x, kernel_size, stride, padding, pool, pad_value):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    ph, pw = _pair(padding)
    xh = to_nhwc(x)
    if ph or pw:
        xh = tf.pad(xh, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    return nchw_view(pool(xh, ksize=(kh, kw), strides=(sh, sw), padding="VALID"))


def max_pool2d(x, kernel_size, stride=None, padding=0):
    return _pool(x, kernel_size, stride, padding, tf.nn.max_pool2d, float("-inf"))


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return _pool(x, kernel_size, stride, padding, tf.nn.avg_pool2d, 0.0)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    source = nhwc_source(x)
    if source is not None:  # normalise the NHWC tensor over N, H, W and keep the chain unbroken
        y, new_mean, new_var = _batch_norm(source, [0, 1, 2], [1, 1, 1, -1], running_mean, running_var, weight,
                                           bias, training, momentum, eps)
        return nchw_view(y), new_mean, new_var
    axes = [0] if x.shape.rank == 2 else [0] + list(range(2, x.shape.rank))
    broadcast = [1, -1] + [1] * (x.shape.rank - 2)
    return _batch_norm(x, axes, broadcast, running_mean, running_var, weight, bias, training, momentum, eps)


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


def reshape(x, shape):
    return tf.reshape(x, shape)


def flatten(x, start_dim=1):
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
    return tf.reduce_mean(x, axis, keepdims)


def sum(x, axis=None, keepdims=False):
    return tf.reduce_sum(x, axis, keepdims)


def clip(x, minimum=None, maximum=None):
    if minimum is not None:
        x = tf.maximum(x, tf.cast(minimum, x.dtype))
    if maximum is not None:
        x = tf.minimum(x, tf.cast(maximum, x.dtype))
    return x


def shape(x):
    dynamic = tf.shape(x)
    return tuple(d if d is not None else dynamic[i] for i, d in enumerate(x.shape))


def cast_like(x, like):
    return tf.cast(x, like.dtype)


def one_hot(labels, num_classes):
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.int64)


def _reduce(values, reduction):
    return tf.reduce_mean(values) if reduction == "mean" else tf.reduce_sum(values)


def mse_loss(prediction, target, reduction="mean"):
    return _reduce(tf.square(prediction - tf.cast(target, prediction.dtype)), reduction)


def l1_loss(prediction, target, reduction="mean"):
    return _reduce(tf.abs(prediction - tf.cast(target, prediction.dtype)), reduction)


def cross_entropy(logits, labels, reduction="mean"):
    labels = tf.cast(labels, tf.int64)
    classes = tf.cast(tf.shape(logits)[-1], tf.int64)
    message = "CrossEntropyLoss labels must lie in [0, number of classes)"
    if tf.executing_eagerly():
        if tf.size(labels) and (tf.reduce_min(labels) < 0 or tf.reduce_max(labels) >= classes):
            raise ValueError(f"CrossEntropyLoss labels must lie in [0, {int(classes)}); found labels from "
                             f"{int(tf.reduce_min(labels))} to {int(tf.reduce_max(labels))}")
    else:  # GPU kernels return NaN for such labels, so check in the graph
        with tf.control_dependencies([tf.debugging.assert_non_negative(labels, message=message),
                                      tf.debugging.assert_less(labels, classes, message=message)]):
            labels = tf.identity(labels)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return _reduce(losses, reduction)


def bce_with_logits(logits, targets, reduction="mean"):
    return _reduce(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(targets, logits.dtype), logits=logits),
                   reduction)




def _move_axis(x, source, destination):
    rank = x.shape.rank
    order = [a for a in range(rank) if a != source % rank]
    order.insert(destination % rank, source % rank)
    return tf.transpose(x, order)


def scan(fn, init, xs, axis=0):
    # a tf.while_loop over a TensorArray: the length may be unknown until run time, with no retrace
    xs = _move_axis(xs, axis, 0) if axis % xs.shape.rank else xs
    length = tf.shape(xs)[0]

    def body(t, carry, ys):
        carry, y = fn(carry, xs[t])
        return t + 1, carry, ys.write(t, y)

    ys = tf.TensorArray(init.dtype, size=length)
    _, carry, ys = tf.while_loop(lambda t, carry, ys: t < length, body, (tf.constant(0), init, ys))
    ys = ys.stack()
    return carry, (_move_axis(ys, 0, axis) if axis % xs.shape.rank else ys)
