"""unidl's functional ops in ``keras.ops``, so they run on whichever framework Keras runs on.

Activations are NCHW in and out. Where the host framework's kernels are channels-first
(``Backend.native_layout``) convolutions and pools call them directly; elsewhere they transpose
around a channels-last kernel. The host backend's ops that take Keras's tensors as they are
(``Backend.keras_native_ops``) replace the portable ones (see the end of this file).
"""

from __future__ import annotations

import functools
import math
import keras
import numpy as np
from keras import ops as K

from unidl import config
from unidl.backends.keras.host import HOST
from unidl.backends.keras.module import note_state_written
from unidl.dtype_kinds import is_half, is_integer
from unidl.input_checks import float_bound

_CHANNELS_FIRST_NATIVE = HOST.native_layout == "NCHW"
_NCHW_TO_NHWC = (0, 2, 3, 1)
_NHWC_TO_NCHW = (0, 3, 1, 2)

relu = K.relu
sigmoid = K.sigmoid
tanh = K.tanh
exp = K.exp
log = K.log
sqrt = K.sqrt


def matmul(a, b):
    # the host's own product for integers (Keras-on-TensorFlow multiplied them in float32, inexact past 2 ** 24; the
    # front end refuses integers by floats) and for bfloat16 (TensorFlow's kernel, which keras.ops.matmul calls,
    # gave garbage for batches broadcast over an axis of 1: the tensorflow backend's product spells the batch out)
    if is_integer(a.dtype) or "bfloat16" in str(a.dtype):
        return HOST.ops.matmul(_tensor(a), _tensor(b))
    return K.matmul(a, b)


def _tensor(x):
    """``x``, a Keras variable (a unidl parameter) read as its value: every op takes a parameter as a tensor, as
    torch's ops take a ``Parameter``, where some of keras.ops take no variable (``where``, ``zeros_like``, ``scan``
    and ``random.dropout`` on JAX: JAX's ValueError; ``stack`` on TensorFlow), nor do the JAX and TensorFlow hosts'
    own max pooling (``_input_read``). The ops below that call those on an argument read it through this first."""
    return x.value if isinstance(x, keras.Variable) else x


def stop_gradient(x):
    return K.stop_gradient(_tensor(x))


def abs(x):
    # |x| with PyTorch's gradient at 0, sign(0) = 0 (JAX's abs gives 1); +0.0 for -0.0 (x * sign(x) gives -0.0 on TF)
    x = _tensor(x)
    return K.where(x == 0, K.zeros_like(x), K.abs(x))


sign = K.sign
square = K.square


def where(condition, a, b):
    return K.where(_tensor(condition), _tensor(a), _tensor(b))


def zeros_like(x):
    return K.zeros_like(_tensor(x))


silu = K.silu
log1p = K.log1p
framework_maximum = K.maximum  # for ud.ops' internal callers whose ties carry no gradient (unidl/ops.py)


def maximum(a, b):
    # the host's maximum, which has PyTorch's gradient at a tie and a NaN (keras.ops' is the framework's own:
    # the whole of a tie's to the first input on TensorFlow, none of a NaN's on JAX), on Keras's promoted inputs
    return HOST.ops.maximum(*_promoted(a, b))


def minimum(a, b):
    return HOST.ops.minimum(*_promoted(a, b))


def _promoted(a, b):
    """``a`` and ``b`` as tensors of one dtype: a Python number of no higher kind than the tensor beside it takes
    that tensor's dtype, as PyTorch types it (``ud.ops.maximum`` hands a number so, ``_numbers_as_torch``), others
    Keras's promotion (two tensors come in one dtype, ``ud.ops.maximum`` having cast them to torch's result
    dtype). Keras's ``result_type`` makes int64 and int64 int32 (``keras.ops.maximum`` of two int64 tensors is
    int32 on torch) and int64 beside a Python int int32 on JAX and torch; PyTorch keeps int64."""
    dtypes = [keras.backend.standardize_dtype(x.dtype) if hasattr(x, "dtype") else type(x) for x in (a, b)]
    tensors = [d for d in dtypes if isinstance(d, str)]
    if len(tensors) == 1 and _kind(tensors[0]) >= _kind(next(d for d in dtypes if not isinstance(d, str))):
        dtype = tensors[0]
    else:
        dtype = dtypes[0] if dtypes[0] == dtypes[1] and tensors else keras.backend.result_type(*dtypes)
    return K.convert_to_tensor(a, dtype), K.convert_to_tensor(b, dtype)


def _kind(dtype) -> int:
    """0 for booleans, 1 for integers, 2 for floats (and anything else): of a dtype name or a Python type."""
    if isinstance(dtype, type):
        return 0 if issubclass(dtype, (bool, np.bool_)) else 1 if issubclass(dtype, (int, np.integer)) else 2
    return 0 if dtype == "bool" else 1 if is_integer(dtype) else 2


def linear(x, weight, bias=None):
    if is_half(K.dtype(x)) and K.dtype(weight) == K.dtype(x):
        # PyTorch's half-precision linear: products summed in float32, the bias added, rounded once (a half matmul
        # rounds the product, then the bias rounds again); keras.ops' matmul takes no float32 accumulator type.
        # Only Keras-on-JAX runs this: the other hosts' own linear replaces it (keras_native_ops)
        y = K.matmul(K.cast(x, "float32"), K.transpose(K.cast(weight, "float32")))
        return K.cast(y + K.cast(bias, "float32") if bias is not None else y, K.dtype(x))
    y = K.matmul(x, K.transpose(weight))
    return _add_bias(y, bias) if bias is not None else y


def _add_bias(y, bias):
    """``y + bias``; in half precision added in float32 and rounded once, so that the backward sums a loss-scaled
    bias gradient over the batch in float32 as PyTorch's does (summed in float16 its partial sums can overflow
    where torch's do not: Keras-on-JAX; jax/ops.py ``linear``)."""
    if is_half(K.dtype(y)):
        return K.cast(K.cast(y, "float32") + K.cast(bias, "float32"), K.dtype(y))
    return y + bias


def leaky_relu(x, negative_slope=0.01):
    x = _tensor(x)
    return K.where(x > 0, x, x * K.cast(negative_slope, x.dtype))  # the slope in x's precision (float64 too)


def softmax(x, dim=-1):
    if is_half(K.dtype(x)):  # in float32, rounded once, as PyTorch's kernel (a unit off else)
        return K.cast(K.softmax(K.cast(x, "float32"), axis=dim), K.dtype(x))
    return K.softmax(x, axis=dim)


def amax(x, dim, keepdim=False):
    shape = tuple(x.shape)
    if 0 in shape and None not in shape:  # Keras-on-torch refuses the max of any empty tensor: its empty result
        dims = range(len(shape)) if dim is None else dim if isinstance(dim, (tuple, list)) else (dim,)
        axes = {axis % len(shape) for axis in dims}
        if all(shape[axis] for axis in axes):  # (over an empty axis: the front end's error)
            kept = [1 if axis in axes else size for axis, size in enumerate(shape)]
            return K.zeros(kept if keepdim else [size for axis, size in enumerate(shape) if axis not in axes],
                           dtype=x.dtype)
    if K.dtype(x) == "bool":  # (TensorFlow's max has no boolean kernel: any, as PyTorch's amax of booleans)
        return K.any(x, axis=dim, keepdims=keepdim)
    return K.max(x, axis=dim, keepdims=keepdim)


def log_softmax(x, dim=-1):
    return K.log_softmax(x, axis=dim)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _explicit_padding(padding, kernel_hw, dilation=(1, 1)):
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":  # PyTorch's: the extra pixel of an even (dilated) kernel goes after
        return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel_hw, dilation))
    ph, pw = _pair(padding)
    return ((ph, ph), (pw, pw))


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # keras.ops.conv infers the groups from the kernel's input channels (in_channels / groups)
    pads = _explicit_padding(padding, tuple(weight.shape[2:4]), _pair(dilation))
    if _CHANNELS_FIRST_NATIVE:
        if any(pads[0]) or any(pads[1]):
            x = K.pad(x, ((0, 0), (0, 0)) + pads)
        y = K.conv(x, K.transpose(weight, (2, 3, 1, 0)), strides=_pair(stride), padding="valid",
                   data_format="channels_first", dilation_rate=_pair(dilation))
        return _add_bias(y, K.reshape(bias, (1, -1, 1, 1))) if bias is not None else y
    xh = K.transpose(x, _NCHW_TO_NHWC)
    if any(pads[0]) or any(pads[1]):
        xh = K.pad(xh, ((0, 0),) + pads + ((0, 0),))
    y = K.conv(xh, K.transpose(weight, (2, 3, 1, 0)), strides=_pair(stride), padding="valid",
               data_format="channels_last", dilation_rate=_pair(dilation))
    if bias is not None:
        y = _add_bias(y, bias)
    return K.transpose(y, _NHWC_TO_NCHW)


def _pool(x, kernel_size, stride, padding, pool, pad_value):
    x = _tensor(x)
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


# max_pool2d: every host's own (keras_native_ops, end of this file), with PyTorch's NaN and -inf windows


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    shape = K.shape(x)
    planes = shape[0] * shape[1]
    height, width = output_size
    index = K.reshape(K.cast(indices, "int64"), (planes, -1))
    rows = K.broadcast_to(K.expand_dims(K.arange(planes, dtype="int64"), 1), K.shape(index))
    coordinates, values = K.reshape(K.stack([rows, index], -1), (-1, 2)), K.reshape(x, (-1,))
    size = (planes, height * width)
    # the values written (one per index), with the gradient of their sum: each value sharing an index gets the
    # output's gradient there, as in PyTorch, whichever framework's scatter gradient Keras runs on
    written = K.scatter_update(K.zeros(size, x.dtype), coordinates, values)
    added = K.scatter(coordinates, values, size)
    flat = K.stop_gradient(written) + (added - K.stop_gradient(added))
    return K.reshape(flat, (shape[0], shape[1], height, width))


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
        # the statistics read as tensors: a Python float times a Keras variable is Keras's op, which on torch
        # rounds the float to Keras's default float type first (float32); times a tensor it is the tensor's dtype
        # (no gradient through the running statistics, as torch's no_grad update: on jax an eval forward reading
        # them in the same differentiated function gave the input a second path)
        new_mean = (1 - momentum) * K.convert_to_tensor(running_mean) + momentum * K.stop_gradient(mean)
        new_var = (1 - momentum) * K.convert_to_tensor(running_var) + momentum * K.stop_gradient(unbiased)
    else:
        mean, var = K.convert_to_tensor(running_mean), K.convert_to_tensor(running_var)
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
    x = _tensor(x)
    if not training or p == 0:
        return x
    if generator is not None and hasattr(generator, "state"):
        # the draw writes the generator's state: where Keras's train step threads the state as values (JAX), the
        # step must thread this variable too, else the write is dropped and every step draws the same mask
        note_state_written(generator.state)
    return keras.random.dropout(x, p, seed=generator)


def uniform_like(x, low, high, generator):
    """``generator``: a ``keras.random.SeedGenerator`` (the backend's), whose state the draw writes (see
    ``dropout``)."""
    x = _tensor(x)
    if hasattr(generator, "state"):
        note_state_written(generator.state)
    return keras.random.uniform(K.shape(x), low, high, dtype=keras.backend.standardize_dtype(x.dtype), seed=generator)


def reshape(x, shape):
    return K.reshape(x, shape)


def flatten(x, start_dim=1):
    if start_dim == 0:  # (the front end gives a non-negative start_dim)
        return K.reshape(x, [-1])
    tail = x.shape[start_dim:]
    if all(d is not None for d in x.shape[1:]):
        return K.reshape(x, [-1] + list(x.shape[1:start_dim]) + [_static_count(tail, range(len(tail)))])
    # inside a compiled function dimensions may be unknown (None): read those at run time
    dynamic = K.shape(x)
    return K.reshape(x, [dynamic[i] if d is None else d for i, d in enumerate(x.shape[:start_dim])] + [-1])


def concat(tensors, axis=0):
    return K.concatenate(list(tensors), axis)


def stack(tensors, axis=0):
    return K.stack([_tensor(x) for x in tensors], axis)


def mean(x, axis=None, keepdims=False):
    if "float" not in K.dtype(x):  # the mean of integers in the float dtype in force
        x = K.cast(x, config.get_dtype())
    return K.mean(x, axis, keepdims)


def sum(x, axis=None, keepdims=False):
    if axis is None and keepdims:  # (keras.ops.sum on torch dropped every axis: a 0-d sum)
        rank = x.shape.rank if hasattr(x.shape, "rank") else len(x.shape)  # (None: a TensorFlow graph's unknown)
        axis = None if rank is None else tuple(range(rank))
    if is_half(K.dtype(x)):  # summed in float32 as PyTorch sums it, then rounded (inf else)
        return K.cast(K.sum(K.cast(x, "float32"), axis, keepdims), K.dtype(x))
    return K.sum(x, axis, keepdims)


def clip(x, minimum=None, maximum=None):
    # selects: PyTorch's clamp passes the gradient at a bound whole (a maximum's tie gives half on JAX)
    x = _tensor(x)
    if "float" not in K.dtype(x) and (float_bound(minimum) or float_bound(maximum)):
        x = K.cast(x, config.get_dtype())  # a float bound makes integers floats, as PyTorch's promotion
    # a NaN bound is NaN's everywhere, as PyTorch's clamp (never below or above it, a select skipped it); integers
    # hold no NaN (Keras's isnan of integers needs their shape, which a TensorFlow graph may leave unknown)
    floating = "float" in K.dtype(x)
    if minimum is not None:
        bound = as_dtype(minimum, x.dtype)
        x = K.where(K.logical_or(x < bound, K.isnan(bound)) if floating else x < bound, bound, x)
    if maximum is not None:
        bound = as_dtype(maximum, x.dtype)
        x = K.where(K.logical_or(x > bound, K.isnan(bound)) if floating else x > bound, bound, x)
    return x


def as_dtype(x, dtype):
    """``x`` in ``dtype``: a Python or NumPy number converted in that dtype at once (``K.cast`` of a Python float
    made a float32 tensor first on TensorFlow: 0.05 in float64 became 0.05000000074505806), a tensor cast."""
    if isinstance(x, (float, int, np.floating, np.integer)) and not isinstance(x, bool):
        return K.convert_to_tensor(np.asarray(x, dtype=keras.backend.standardize_dtype(dtype)))
    return K.cast(x, dtype)


def shape(x):
    static = tuple(x.shape)
    return static if None not in static else tuple(K.shape(x))


def cast_like(x, like):
    return as_dtype(x, like.dtype)


def one_hot(labels, num_classes):
    # a comparison: a label out of range gives a row of zeros on every host (Keras's one_hot raises on torch)
    return K.cast(K.expand_dims(K.cast(labels, "int64"), -1) == K.arange(num_classes, dtype="int64"), "int64")


def _reduce(values, reduction):
    if reduction == "none":
        return values
    return K.mean(values) if reduction == "mean" else K.sum(values)


def mse_loss(prediction, target, reduction="mean"):
    return _reduce(K.square(prediction - K.cast(target, prediction.dtype)), reduction)


def l1_loss(prediction, target, reduction="mean"):
    return _reduce(abs(prediction - K.cast(target, prediction.dtype)), reduction)


def check_in_range(x, low, high, what="values"):
    if isinstance(x, keras.KerasTensor):  # (the host checks its own tensors, as check_index)
        return x
    return HOST.ops.check_in_range(x, low, high, what)


def check_index(indices, size, what="index"):
    # the host checks its own tensors, eagerly and inside the graphs it compiles (a symbolic KerasTensor
    # while Keras builds a model has no values to check)
    if isinstance(indices, keras.KerasTensor):
        return indices
    return HOST.ops.check_index(indices, size, what)


def check_values(x, condition, message, values=()):
    if isinstance(x, keras.KerasTensor):  # (the host checks its own tensors, as check_index)
        return x
    return HOST.ops.check_values(x, condition, message, values)


def segment_sum(data, segment_ids, num_segments):
    return K.segment_sum(data, K.cast(segment_ids, "int32"), num_segments=num_segments)


def check_shape(x, condition, message, sizes=()):
    # the host checks its own tensors (in the graphs it compiles too); a symbolic KerasTensor has no sizes yet
    if isinstance(x, keras.KerasTensor):
        return x
    return HOST.ops.check_shape(x, condition, message, sizes)


def cross_entropy(logits, labels, reduction="mean", ignore_index=-100):
    labels = _tensor(labels)
    kept = K.not_equal(labels, ignore_index)
    labels = check_index(K.where(kept, labels, K.zeros_like(labels)), logits.shape[-1], "CrossEntropyLoss labels")
    losses = K.sparse_categorical_crossentropy(K.cast(labels, "int32"), logits, from_logits=True)
    if keras.backend.standardize_dtype(losses.dtype) != keras.backend.standardize_dtype(logits.dtype):
        # (Keras-on-JAX with 64-bit types on: its one-hot labels are float64, and so were float32 logits' losses;
        # each loss is one log-probability times 1, so the cast back is exact)
        losses = K.cast(losses, logits.dtype)
    losses = K.where(kept, losses, K.zeros_like(losses))
    if reduction == "mean":
        return K.sum(losses) / K.sum(K.cast(kept, losses.dtype))
    return _reduce(losses, reduction)


def bce_with_logits(logits, targets, reduction="mean"):
    # max(x, 0) and -|x| as selects on x >= 0 (TensorFlow's own arithmetic): PyTorch's gradient at x = 0, sigmoid(0) -
    # t (maximum's and abs's rules there gave 1 - t on TensorFlow, -t on JAX)
    targets = K.cast(targets, logits.dtype)
    positive = logits >= 0
    losses = K.where(positive, logits, 0) - logits * targets + K.log1p(K.exp(K.where(positive, -logits, logits)))
    return _reduce(losses, reduction)


def scan(fn, init, xs, axis=0, reverse=False):
    # nested carries, slices and outputs as jax.lax.scan (Keras-on-torch); on TensorFlow, whose Keras scan needs
    # outputs shaped as the carry, and on JAX, whose scan hands its body's checks out, the host's own scan replaces
    # this one (keras_native_ops)
    init = keras.tree.map_structure(_tensor, init)
    carry, ys = K.scan(fn, init, keras.tree.map_structure(lambda x: K.moveaxis(x, axis, 0), xs), reverse=reverse)
    return carry, keras.tree.map_structure(lambda y: K.moveaxis(y, 0, axis), ys)


def gelu(x, approximate="none"):
    # PyTorch's arithmetic, constants in x's dtype (TensorFlow's gelu rounds them to float32 in float64)
    if approximate == "tanh":
        return 0.5 * x * (1 + K.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return x * 0.5 * (1 + K.erf(x * math.sqrt(0.5)))


def elu(x, alpha=1.0):
    # expm1 of the negative part only: the branch not taken must not overflow (its gradient would be NaN)
    x = _tensor(x)
    return K.where(x > 0, x, alpha * K.expm1(K.where(x > 0, K.zeros_like(x), x)))  # (at 0: alpha, as torch)


def softplus(x, beta=1.0, threshold=20.0):
    x = _tensor(x)
    scaled = x * beta
    # (a select, not minimum: at scaled == threshold the whole gradient, as torch's; minimum's splits a tie)
    return K.where(scaled > threshold, x, K.log1p(K.exp(K.where(scaled > threshold, K.zeros_like(scaled), scaled)))
                   / beta)


def hardtanh(x, min_val=-1.0, max_val=1.0):
    x = _tensor(x)
    low, high = K.convert_to_tensor(min_val, x.dtype), K.convert_to_tensor(max_val, x.dtype)
    return K.where(x <= low, low, K.where(x >= high, high, x))  # (at a bound the gradient 0, as torch)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    axes = tuple(range(-len(normalized_shape), 0))
    centered = x - K.mean(x, axes, keepdims=True)
    y = centered * K.rsqrt(K.mean(K.square(centered), axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def embedding_rows(indices, weight, padding_idx=None):
    indices = check_index(indices, _axis_size(weight, 0), "Embedding indices")
    rows = K.take(weight, indices, axis=0)
    if padding_idx is None:
        return rows
    return K.where(K.expand_dims(K.equal(indices, padding_idx), -1), K.stop_gradient(rows), rows)


def _axis_size(x, axis):
    return x.shape[axis] if x.shape[axis] is not None else K.shape(x)[axis]


def take(x, indices, axis=0):
    return K.take(x, check_index(indices, _axis_size(x, axis), "take indices"), axis=axis)


def take_in_range(x, indices, axis):
    return K.take(x, indices, axis=axis)


def cond(condition, true_fn, false_fn, operands):
    return K.cond(condition, lambda: true_fn(*operands), lambda: false_fn(*operands))


def gather(x, dim, index):
    dim %= len(x.shape)
    index = check_index(index, _axis_size(x, dim), "gather index")
    if any(x.shape[d] is None or x.shape[d] != index.shape[d] for d in range(len(x.shape)) if d != dim):
        # torch.gather: index may be shorter than x on the other axes (take_along_axis would broadcast)
        sizes = [_axis_size(x, d) if d == dim else _axis_size(index, d) for d in range(len(x.shape))]
        x = K.slice(x, [0] * len(sizes), sizes)
    return K.take_along_axis(x, index, axis=dim)


def cast(x, dtype):
    return K.cast(x, dtype)


def zeros(shape, dtype):
    return K.zeros(shape, dtype)


def ones(shape, dtype):
    return K.ones(shape, dtype)


def arange(start, end, step, dtype):
    return K.arange(start, end, step, dtype=dtype)


def argmax(x, dim=None, keepdim=False):
    # Keras ranks -0.0 below +0.0 (it swaps -0.0 for a tiny negative number); torch and NumPy hold them equal and
    # take the first: zeros made +0.0 first (max pooling's indices, a tie of logits)
    x = _tensor(x)
    if "float" not in str(x.dtype):
        return K.cast(K.argmax(x, axis=dim, keepdims=keepdim), "int64")
    x = K.where(K.equal(x, 0), K.zeros_like(x), x)
    # a NaN counts as the largest value (its first one wins), as torch's and NumPy's (Keras on TensorFlow skips it)
    nan = K.isnan(x)
    first_nan = K.argmax(K.cast(nan, "int8"), axis=dim, keepdims=keepdim)
    return K.cast(K.where(K.any(nan, axis=dim, keepdims=keepdim), first_nan,
                          K.argmax(x, axis=dim, keepdims=keepdim)), "int64")


def permute(x, dims):
    return K.transpose(x, tuple(dims))


def unsqueeze(x, dim):
    return K.expand_dims(x, dim)


def squeeze(x, dim=None):
    if dim is None:
        return K.squeeze(x)
    rank = len(x.shape)
    dims = tuple(d % rank for d in ((dim,) if isinstance(dim, int) else dim) if x.shape[d] in (1, None))
    if not dims:
        return x  # torch leaves axes of another size as they are
    if all(x.shape[d] == 1 for d in dims):
        return K.squeeze(x, dims)
    # inside a graph that does not know the size (it must be 1): drop the axis by reshaping
    return K.reshape(x, [_axis_size(x, d) for d in range(rank) if d not in dims])


def pad(x, pad, mode="constant", value=0.0):
    rank = len(x.shape)
    amounts = [(0, 0)] * rank
    for i in range(len(pad) // 2):
        amounts[rank - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    if mode == "constant":
        return K.pad(x, amounts, constant_values=value)
    if mode == "reflect":
        return K.pad(x, amounts, mode="reflect")
    for axis, (before, after) in enumerate(amounts):  # replicate and circular: a gather of edge or wrapped rows
        if before or after:
            size = _axis_size(x, axis)
            positions = K.arange(-before, size + after)
            positions = K.clip(positions, 0, size - 1) if mode == "replicate" else K.mod(positions, size)
            x = K.take(x, positions, axis=axis)
    return x


def all_finite(values):
    """A boolean scalar: every element of every tensor in ``values`` (None entries ignored) is finite: the
    non-finite guard of the keras backend's optimizer (optimizer.py ``guarded_apply``), over the step's loss and
    gradients. A host's fused check replaces it where it has one (``keras_native_ops``)."""
    flags = [K.all(K.isfinite(v)) for v in values if v is not None]
    return K.all(K.stack(flags)) if flags else K.convert_to_tensor(True)


def _input_read(op):
    """The host's ``op`` with its first argument, the input, read through ``_tensor`` (the JAX and TensorFlow hosts'
    max pooling takes no Keras variable)."""
    @functools.wraps(op)
    def reading(x, *args, **kwargs):
        return op(_tensor(x), *args, **kwargs)

    return reading


#: the host kernels below whose first argument is an input that may be a Keras variable the host's kernel refuses
#: (the others take it as it is, or write it: the momentum update's first argument is the parameter it updates)
_INPUT_READ = ("gather", "max_pool2d", "take", "take_in_range")

#: the portable spellings that the host's kernels below replace, by name (benchmarks/keras_torch_step_ab.py times
#: a step with them put back)
PORTABLE = {name: globals()[name] for name in HOST.keras_native_ops if name in globals()}

# the host's own kernels where they take Keras's tensors as they are (faster than keras.ops' spellings)
globals().update({name: _input_read(getattr(HOST.ops, name)) if name in _INPUT_READ else getattr(HOST.ops, name)
                  for name in HOST.keras_native_ops})
