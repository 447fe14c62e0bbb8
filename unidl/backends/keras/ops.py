"""unidl's functional ops in ``keras.ops``, so they run on whichever framework Keras runs on.

Activations are NCHW in and out. Where the host framework's kernels are channels-first
(``Backend.native_layout``) convolutions and pools call them directly; elsewhere they transpose
around a channels-last kernel. The host backend's ops that take Keras's tensors as they are
(``Backend.keras_native_ops``) replace the portable ones (see the end of this file).
"""

from __future__ import annotations

import keras
from keras import ops as K

from unidl.backends.keras.host import HOST

_CHANNELS_FIRST_NATIVE = HOST.native_layout == "NCHW"
_NCHW_TO_NHWC = (0, 2, 3, 1)
_NHWC_TO_NCHW = (0, 3, 1, 2)

matmul = K.matmul
relu = K.relu
sigmoid = K.sigmoid
tanh = K.tanh
exp = K.exp
log = K.log
sqrt = K.sqrt
abs = K.abs
sign = K.sign
square = K.square
maximum = K.maximum
where = K.where
zeros_like = K.zeros_like

def linear(x, weight, bias=None):
    y = K.matmul(x, K.transpose(weight))
    return y + bias if bias is not None else y


def leaky_relu(x, negative_slope=0.01):
    return K.where(x > 0, x, x * K.cast(negative_slope, x.dtype))  # the slope in x's precision (float64 too)


def softmax(x, dim=-1):
    return K.softmax(x, axis=dim)


def log_softmax(x, dim=-1):
    return K.log_softmax(x, axis=dim)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _explicit_padding(padding, kernel_hw):
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        return tuple(((k - 1) // 2, (k - 1) - (k - 1) // 2) for k in kernel_hw)
    ph, pw = _pair(padding)
    return ((ph, ph), (pw, pw))


def conv2d(x, weight, bias=None, stride=1, padding=0):
    pads = _explicit_padding(padding, tuple(weight.shape[2:4]))
    if _CHANNELS_FIRST_NATIVE:
        if any(pads[0]) or any(pads[1]):
            x = K.pad(x, ((0, 0), (0, 0)) + pads)
        y = K.conv(x, K.transpose(weight, (2, 3, 1, 0)), strides=_pair(stride), padding="valid",
                   data_format="channels_first")
        return y + K.reshape(bias, (1, -1, 1, 1)) if bias is not None else y
    xh = K.transpose(x, _NCHW_TO_NHWC)
    if any(pads[0]) or any(pads[1]):
        xh = K.pad(xh, ((0, 0),) + pads + ((0, 0),))
    y = K.conv(xh, K.transpose(weight, (2, 3, 1, 0)), strides=_pair(stride), padding="valid",
               data_format="channels_last")
    if bias is not None:
        y = y + bias
    return K.transpose(y, _NHWC_TO_NCHW)


def _pool(x, kernel_size, stride, padding, pool, pad_value):
    stride = _pair(stride if stride is not None else kernel_size)
    ph, pw = _pair(padding)
    if _CHANNELS_FIRST_NATIVE:
        if ph or pw:
            x = K.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
        return pool(x, _pair(kernel_size), stride, padding="valid", data_format="channels_first")
    xh = K.transpose(x, _NCHW_TO_NHWC)
    if ph or pw:
        xh = K.pad(xh, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    y = pool(xh, _pair(kernel_size), stride, padding="valid", data_format="channels_last")
    return K.transpose(y, _NHWC_TO_NCHW)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    return _pool(x, kernel_size, stride, padding, K.max_pool, float("-inf"))


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return _pool(x, kernel_size, stride, padding, K.average_pool, 0.0)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    rank = len(x.shape)
    axes = [0] if rank == 2 else [0] + list(range(2, rank))
    broadcast = [1, -1] + [1] * (rank - 2)
    if training:
        # shifted moments: the first mean's rounding error is measured on the centred data and removed
        shift = K.stop_gradient(K.mean(x, axis=axes, keepdims=True))
        centred = x - shift
        correction = K.mean(centred, axis=axes)
        mean = K.reshape(shift, (-1,)) + correction
        var = K.mean(K.square(centred), axis=axes) - K.square(correction)
        count = K.cast(K.prod(K.take(K.shape(x), axes)) if None in x.shape else
                       _static_count(x.shape, axes), x.dtype)
        unbiased = var * count / K.maximum(count - 1, 1)
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    scale = K.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    y = (x - K.reshape(mean, broadcast)) * K.reshape(scale, broadcast)  # centred first, as PyTorch does
    return (y + K.reshape(bias, broadcast) if bias is not None else y), new_mean, new_var


def _static_count(shape, axes):
    count = 1
    for axis in axes:
        count *= shape[axis]
    return count


def dropout(x, p, training=True, generator=None):
    """``generator``: a ``keras.random.SeedGenerator`` (the backend's, see ``Backend.generator``)."""
    if not training or p == 0:
        return x
    return keras.random.dropout(x, p, seed=generator)


def reshape(x, shape):
    return K.reshape(x, shape)


def flatten(x, start_dim=1):
    tail = x.shape[start_dim:]
    if all(d is not None for d in x.shape[1:]):
        return K.reshape(x, [-1] + list(x.shape[1:start_dim]) + [_static_count(tail, range(len(tail)))])
    # inside a compiled function dimensions may be unknown (None): read those at run time
    dynamic = K.shape(x)
    return K.reshape(x, [dynamic[i] if d is None else d for i, d in enumerate(x.shape[:start_dim])] + [-1])


def concat(tensors, axis=0):
    return K.concatenate(list(tensors), axis)


def stack(tensors, axis=0):
    return K.stack(list(tensors), axis)


def mean(x, axis=None, keepdims=False):
    return K.mean(x, axis, keepdims)


def sum(x, axis=None, keepdims=False):
    return K.sum(x, axis, keepdims)


def clip(x, minimum=None, maximum=None):
    if minimum is not None:
        x = K.maximum(x, minimum)
    if maximum is not None:
        x = K.minimum(x, maximum)
    return x


def shape(x):
    return tuple(K.shape(x))


def cast_like(x, like):
    return K.cast(x, like.dtype)


def one_hot(labels, num_classes):
    return K.one_hot(K.cast(labels, "int32"), num_classes, dtype="int64")


def _reduce(values, reduction):
    return K.mean(values) if reduction == "mean" else K.sum(values)


def mse_loss(prediction, target, reduction="mean"):
    return _reduce(K.square(prediction - K.cast(target, prediction.dtype)), reduction)


def l1_loss(prediction, target, reduction="mean"):
    return _reduce(K.abs(prediction - K.cast(target, prediction.dtype)), reduction)


def cross_entropy(logits, labels, reduction="mean"):
    if not isinstance(labels, keras.KerasTensor) and HOST.is_concrete(labels):
        values = K.convert_to_numpy(labels)
        if values.size and (values.min() < 0 or values.max() >= logits.shape[-1]):
            raise ValueError(f"CrossEntropyLoss labels must lie in [0, {logits.shape[-1]}); "
                             f"found labels from {int(values.min())} to {int(values.max())}")
    losses = K.sparse_categorical_crossentropy(K.cast(labels, "int32"), logits, from_logits=True)
    return _reduce(losses, reduction)


def bce_with_logits(logits, targets, reduction="mean"):
    targets = K.cast(targets, logits.dtype)
    losses = K.maximum(logits, 0) - logits * targets + K.log1p(K.exp(-K.abs(logits)))
    return _reduce(losses, reduction)


def scan(fn, init, xs, axis=0):
    carry, ys = K.scan(fn, init, K.moveaxis(xs, axis, 0))
    return carry, K.moveaxis(ys, 0, axis)


# the host's own kernels where they take Keras's tensors as they are (faster than keras.ops' spellings)
globals().update({name: getattr(HOST.ops, name) for name in HOST.keras_native_ops})
