"""unidl's functional ops on JAX: ``jax.numpy``, ``jax.nn`` and ``jax.lax``, NCHW throughout.

XLA's convolutions take the layout as an argument (``dimension_numbers``), so NCHW activations and
OIHW kernels run as they are; batch norm computes channels-last inside (``batch_norm``: XLA's CPU convolutions
are channels-last, and its transposes then cancel). Parameters arrive as ``JaxVariable``s and are unwrapped to their
arrays here. Checks that need values (labels in range) run eagerly, and inside compiled steps
through ``checkify`` (every compiled step of this backend is checkified).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np

from unidl import config
from jax.experimental import checkify

from unidl.backends.jax.eager import compiled_when_eager
from unidl.backends.jax.variable import unwrap as _v
from unidl.errors import IndexOutOfRangeError, ValueOutOfRangeError, marked_error_from
from unidl.input_checks import check_known_shape as check_shape  # sizes are always known here
from unidl.input_checks import check_known_values, float_bound


def _unwrapped(function):
    def call(*args):
        return function(*[_v(a) for a in args])

    call.__name__ = getattr(function, "__name__", "op")
    return call


def matmul(a, b):
    """``jnp.matmul``; in half precision, batches that broadcast (an axis of 1 beside another size) are broadcast
    first, as PyTorch's matmul expands them, and their gradients summed over the broadcast axes in float32 and
    rounded once (``_broadcast``): JAX's product contracted a batch axis of 1 with the other operand's in one
    product, and its broadcast's gradient summed in bfloat16, each one bfloat16 step off PyTorch's gradient."""
    a, b = _v(a), _v(b)
    if a.dtype in (jnp.bfloat16, jnp.float16) and a.ndim > 2 and b.ndim > 2 and a.shape[:-2] != b.shape[:-2]:
        batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a, b = _broadcast(a, batch + a.shape[-2:]), _broadcast(b, batch + b.shape[-2:])
    return jnp.matmul(a, b)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _broadcast(x, shape):
    """``jnp.broadcast_to``, whose gradient sums over the broadcast axes in float32, rounded once to ``x``'s dtype
    (PyTorch's sum of an expanded half-precision tensor's gradient)."""
    return jnp.broadcast_to(x, shape)


@_broadcast.defjvp
def _broadcast_tangent(shape, primals, tangents):
    """The tangent broadcast in float32, whose transpose (the gradient) sums in float32; rounded to the tangent's
    precision there (``reduce_precision``), as XLA folded the conversion into the product before it, whose sums
    were then never rounded to bfloat16. A JVP rule, not a VJP: ``jax.linearize`` takes it too."""
    (x,), (tangent,) = primals, tangents
    info = jnp.finfo(tangent.dtype)
    widened = jnp.broadcast_to(tangent.astype(jnp.float32), shape)
    rounded = jax.lax.reduce_precision(widened, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    return jnp.broadcast_to(x, shape), rounded.astype(tangent.dtype)


relu = _unwrapped(jax.nn.relu)
sigmoid = _unwrapped(jax.nn.sigmoid)
tanh = _unwrapped(jnp.tanh)
exp = _unwrapped(jnp.exp)
log = _unwrapped(jnp.log)
sqrt = _unwrapped(jnp.sqrt)


@compiled_when_eager("x")
def abs(x):
    # |x| as x * sign(x): PyTorch's gradient at 0 is sign(0) = 0, jnp.abs's is 1 (also through L1Loss)
    x = _v(x)
    return x * jnp.sign(x)


sign = _unwrapped(jnp.sign)
stop_gradient = _unwrapped(jax.lax.stop_gradient)
square = _unwrapped(jnp.square)
where = _unwrapped(jnp.where)
zeros_like = _unwrapped(jnp.zeros_like)
silu = _unwrapped(jax.nn.silu)
log1p = _unwrapped(jnp.log1p)
framework_maximum = _unwrapped(jnp.maximum)  # for ud.ops' callers whose ties carry no gradient (unidl/ops.py)


@compiled_when_eager("a", "b")
def maximum(a, b):
    """``jnp.maximum``'s value with ``torch.maximum``'s gradient (the rule in ``unidl/ops.py``): JAX's own splits a
    tie as PyTorch does but gives a NaN's gradient to neither input, PyTorch to both."""
    return _split_ties(jnp.maximum, _maximum_split_ties, _v(a), _v(b))


@compiled_when_eager("a", "b")
def minimum(a, b):
    """``jnp.minimum``'s value with ``torch.minimum``'s gradient (see ``maximum``)."""
    return _split_ties(jnp.minimum, _minimum_split_ties, _v(a), _v(b))


def _split_ties(select, split, a, b):
    dtype = jnp.result_type(a, b)  # JAX's promotion (a Python number takes the other's dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        return select(a, b)  # integers: no gradient
    return split(jnp.asarray(a, dtype), jnp.asarray(b, dtype))


@jax.custom_jvp
def _maximum_split_ties(a, b):
    return jnp.maximum(a, b)


@jax.custom_jvp
def _minimum_split_ties(a, b):
    return jnp.minimum(a, b)


def _tie_shares(select, a_loses, b_loses, primals, tangents):
    """PyTorch's rule (derivatives.yaml) as a JVP, linear in the tangents: each input's tangent halved where
    ``a == b``, dropped where that input loses, whole where neither loses (a NaN); broadcast to the output."""
    (a, b), (tangent_a, tangent_b) = primals, tangents
    ties = a == b

    def share(tangent, loses):
        return jnp.where(loses, jnp.zeros((), tangent.dtype), jnp.where(ties, tangent * 0.5, tangent))

    return select(a, b), share(tangent_a, a_loses(a, b)) + share(tangent_b, b_loses(a, b))


_maximum_split_ties.defjvp(lambda primals, tangents: _tie_shares(jnp.maximum, jnp.less, jnp.greater, primals,
                                                                 tangents))
_minimum_split_ties.defjvp(lambda primals, tangents: _tie_shares(jnp.minimum, jnp.greater, jnp.less, primals,
                                                                 tangents))


_HALF = (jnp.float16, jnp.bfloat16)


@compiled_when_eager("x", "weight", "bias")
def linear(x, weight, bias=None):
    x, weight = _v(x), _v(weight)
    if x.dtype in _HALF and weight.dtype == x.dtype:
        # PyTorch's half-precision linear: products summed in float32, the bias added, rounded once to the input's
        # dtype; and so in the backward, whose bias and weight gradients sum the batch in float32 (summed in
        # float16, a batch's partial sums of a loss-scaled gradient overflow where torch's do not)
        y = jnp.matmul(x, weight.T, preferred_element_type=jnp.float32)  # (half inputs: a GPU's tensor cores)
        return (y + _v(bias).astype(jnp.float32) if bias is not None else y).astype(x.dtype)
    y = jnp.matmul(x, weight.T)
    return y + _v(bias) if bias is not None else y


@compiled_when_eager("x")
def leaky_relu(x, negative_slope=0.01):
    x = _v(x)
    return jnp.where(x > 0, x, x * jnp.asarray(negative_slope, x.dtype))  # (at 0 the slope's gradient, as torch)


@compiled_when_eager("x")
def softmax(x, dim=-1):
    x = _v(x)
    if x.dtype in _HALF:  # in float32, rounded once, as PyTorch's kernel (a unit off else)
        return jax.nn.softmax(x.astype(jnp.float32), axis=dim).astype(x.dtype)
    return jax.nn.softmax(x, axis=dim)


def amax(x, dim, keepdim=False):
    return jnp.max(_v(x), axis=dim, keepdims=keepdim)


def log_softmax(x, dim=-1):
    return jax.nn.log_softmax(_v(x), axis=dim)


def _pair(value):
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _conv_padding(padding, kernel_hw, dilation=(1, 1)):
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":  # PyTorch's: the extra pixel of an even (dilated) kernel goes after
        return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel_hw, dilation)]
    ph, pw = _pair(padding)
    return [(ph, ph), (pw, pw)]


@compiled_when_eager("x", "weight", "bias")
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    weight = _v(weight)
    dilation = _pair(dilation)
    x = _v(x)
    half = x.dtype in _HALF and weight.dtype == x.dtype  # summed in float32, rounded once (``linear``)
    y = jax.lax.conv_general_dilated(x, weight, _pair(stride), _conv_padding(padding, weight.shape[2:], dilation),
                                     rhs_dilation=dilation, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     feature_group_count=groups, preferred_element_type=jnp.float32 if half else None)
    if bias is not None:
        y = y + _v(bias).astype(y.dtype).reshape(1, -1, 1, 1)
    return y.astype(x.dtype) if half else y


def _pool(x, kernel_size, stride, padding, init, reduce):
    return jax.lax.reduce_window(_v(x), init, reduce, *_window(kernel_size, stride, padding))


def _window(kernel_size, stride, padding):
    """``reduce_window``'s window, strides and padding of an NCHW pooling."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    ph, pw = _pair(padding)
    return (1, 1, kh, kw), (1, 1, sh, sw), [(0, 0), (0, 0), (ph, ph), (pw, pw)]


@compiled_when_eager("x")
def max_pool2d(x, kernel_size, stride=None, padding=0):
    """XLA's max pooling with PyTorch's gradient: a window that holds NaN pools to NaN (XLA's does too) and its
    gradient goes to the window's last NaN in row-major order (PyTorch's kernel takes a NaN over any value and
    a later NaN over an earlier one; XLA's gradient picks by comparisons that a NaN fails); a window of nothing
    but -inf (padding counts as -inf) gives its gradient to its first element inside the input (XLA's, to a
    pad). The forward is XLA's pooling alone (inference, and an exported program, hold no branch); the rule is
    in its JVP (``_max_pool_jvp``). Integers are padded with their lowest value, a scalar of their own dtype
    (``reduce_window`` refuses an init of another, and a Python int is int64 under x64)."""
    x = jnp.asarray(_v(x))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return _pool(x, kernel_size, stride, padding, jnp.array(jnp.iinfo(x.dtype).min, x.dtype), jax.lax.max)
    return _max_pool(x, _pair(kernel_size), _pair(stride) if stride is not None else None, _pair(padding))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, kernel_size, stride, padding):
    return _pool(x, kernel_size, stride, padding, -jnp.inf, jax.lax.max)  # a Python scalar: the differentiable monoid


@_max_pool.defjvp
def _max_pool_jvp(kernel_size, stride, padding, primals, tangents):
    """XLA's pooling, and as its tangent each window's chosen element's: PyTorch's choice (``_chosen_positions``).
    Its gradient is a gather's transpose, a scatter-add onto those elements. XLA's own JVP (select_and_gather_add,
    whose transpose is select_and_scatter_add) chose otherwise for NaN and all -inf windows, and its fix-up
    (``_fixed_up_jvp``: a ``lax.cond`` on whether the pool held either, two more poolings of positions and a
    gather) made the gradient's two XLA programs take seconds to compile on the CPU where these take a fraction of
    that. XLA's GPU compiler has no variadic ``reduce_window`` (JAX's own max pooling avoids it there), so a JAX
    whose default platform is not the CPU keeps the fix-up."""
    (x,), (tangent,) = primals, tangents
    if jax.default_backend() != "cpu":
        return _fixed_up_jvp(kernel_size, stride, padding, x, tangent)
    y = _pool(x, kernel_size, stride, padding, -jnp.inf, jax.lax.max)
    n, c, height, width = x.shape
    # sizes spelled out, not -1: an empty batch cannot infer them
    source = _chosen_positions(jax.lax.stop_gradient(x), kernel_size, stride, padding).reshape(
        n, c, y.shape[2] * y.shape[3])
    y_tangent = jnp.take_along_axis(tangent.reshape(n, c, height * width), source, axis=2, mode="clip")
    return y, y_tangent.reshape(y.shape)


def _fixed_up_jvp(kernel_size, stride, padding, x, tangent):
    """XLA's pooling and its JVP, with each window that holds NaN taking the tangent of its last NaN and each
    window of -inf alone the tangent of its first element inside the input. Whether some window is either is
    one sum over the output (``_needs_torch_rule``: NaN or -inf there; also +inf, and the exact path leaves such
    windows as they are) deciding a ``lax.cond`` on the tangent: a gradient whose pools hold neither pays the sum
    and the cond, with XLA's own rule."""

    def pool(x):
        return _pool(x, kernel_size, stride, padding, -jnp.inf, jax.lax.max)

    y, y_tangent = jax.jvp(pool, (x,), (tangent,))

    def as_torch(x, tangent, y_tangent):
        # positions pooled in float32, 1-based (exact up to 2 ** 24 positions a plane): the last NaN's, and the
        # first element's inside the input (counted from the end, so that the largest is the first; padding -inf)
        n, c, height, width = x.shape
        positions = jnp.arange(1, height * width + 1, dtype=jnp.float32).reshape(height, width)
        last_nan = pool(jnp.where(jnp.isnan(x), positions, 0.0))
        first = height * width + 1 - pool(jnp.broadcast_to(height * width + 1 - positions, (1, 1, height, width)))
        source = jnp.where(last_nan > 0, last_nan, first).astype(jnp.int32) - 1
        # sizes spelled out, not -1: an empty batch cannot infer them
        source = jnp.broadcast_to(source, y.shape).reshape(n, c, y.shape[2] * y.shape[3])
        routed = jnp.take_along_axis(tangent.reshape(n, c, height * width), source, axis=2).reshape(y.shape)
        return jnp.where((last_nan > 0) | (y == -jnp.inf), routed, y_tangent)

    y_tangent = jax.lax.cond(_needs_torch_rule(y), as_torch, lambda x, tangent, y_tangent: y_tangent,
                             x, tangent, y_tangent)
    return y, y_tangent


def _needs_torch_rule(y):
    """Whether the max pooling ``y`` may hold a window that PyTorch's kernel routes otherwise than XLA's: its sum
    is not finite (NaN or -inf there; also +inf). The sum is taken in float32 at least: float16's overflowed to
    inf past 65504, and every float16 gradient took the exact path."""
    return jnp.logical_not(jnp.isfinite(jnp.sum(y, dtype=jnp.promote_types(y.dtype, jnp.float32))))


def _chosen_positions(x, kernel_size, stride, padding):
    """For each max-pooling window of NCHW ``x``, the flat (H * W) position of the element PyTorch's kernel gives
    the window's gradient: its last NaN in row-major order where it holds NaN (a NaN is taken over any value, a
    later one over an earlier one), else its first maximum (a later value must be greater), so that a window of
    nothing but -inf chooses its first element inside the input, never a pad. One variadic ``reduce_window`` over
    (value, position) pairs; the order it reduces in does not matter, as the choice is a total order's maximum."""
    height, width = x.shape[2:]
    positions = jnp.broadcast_to(jnp.arange(height * width, dtype=jnp.int32).reshape(height, width), x.shape)

    def better(a, b):
        (a_value, a_position), (b_value, b_position) = a, b
        a_nan, b_nan = jnp.isnan(a_value), jnp.isnan(b_value)
        a_wins = jnp.where(a_nan | b_nan, a_nan & (~b_nan | (a_position > b_position)),
                           (a_value > b_value) | ((a_value == b_value) & (a_position < b_position)))
        return jnp.where(a_wins, a_value, b_value), jnp.where(a_wins, a_position, b_position)

    # a pad is (-inf, past the last position): it loses to every element inside the input, -inf ones included
    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(height * width, jnp.int32))
    return jax.lax.reduce_window((x, positions), init, better, *_window(kernel_size, stride, padding))[1]


@compiled_when_eager("x", "indices")
def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    x, indices = _v(x), _v(indices)
    n, c = x.shape[:2]
    height, width = output_size
    values, index = x.reshape(n * c, -1), indices.reshape(n * c, -1)
    rows = jnp.arange(n * c)[:, None]
    zeros = jnp.zeros((n * c, height * width), x.dtype)
    # the values written (one per index), with the gradient of their sum: each value sharing an index gets the
    # output's gradient there, as in PyTorch (the gradient of .set reaches only the value that was kept)
    written, added = zeros.at[rows, index].set(values), zeros.at[rows, index].add(values)
    flat = jax.lax.stop_gradient(written) + (added - jax.lax.stop_gradient(added))
    return flat.reshape(n, c, height, width)


@compiled_when_eager("x")
def avg_pool2d(x, kernel_size, stride=None, padding=0):
    kh, kw = _pair(kernel_size)
    return _pool(x, kernel_size, stride, padding, 0.0, jax.lax.add) / (kh * kw)


@compiled_when_eager("x", "running_mean", "running_var", "weight", "bias")
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """PyTorch's batch norm over axis 1, computed with the channels moved last and the result moved back.

    XLA's CPU backend runs convolutions channels-last whatever layout they are given, so NCHW activations are
    transposed around each one. With the moments reduced over NCHW's (0, 2, 3), those transposes stayed in the
    compiled ResNet-18 step (155 activation-sized transposing fusions against a channels-last JAX step's 71);
    reduced channels-last, each transpose meets its inverse or passes through the element-wise ops between
    (ReLU, the residual add) and XLA removes them (83, the rest transposing the convolutions' weights)."""
    x, running_mean, running_var = _v(x), _v(running_mean), _v(running_var)
    x = jnp.moveaxis(x, 1, -1)
    axes = tuple(range(x.ndim - 1))
    if training:
        # shifted moments: the first mean's rounding error is measured on the centred data and removed
        shift = jax.lax.stop_gradient(jnp.mean(x, axes, keepdims=True))
        centred = x - shift
        correction = jnp.mean(centred, axes)
        mean = shift.reshape(-1) + correction
        var = jnp.mean(jnp.square(centred), axes) - jnp.square(correction)
        count = math.prod(x.shape[:-1])
        # the running statistics carry no gradient (torch updates them under no_grad): an eval forward reading them
        # inside the same differentiated function gave the input a second path, 0.11 off torch's gradient
        batch_mean, batch_var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        new_mean = (1 - momentum) * running_mean + momentum * batch_mean
        new_var = (1 - momentum) * running_var + momentum * batch_var * (count / max(count - 1, 1))
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    scale = jax.lax.rsqrt(var + eps)
    if weight is not None:
        scale = scale * _v(weight)
    y = (x - mean) * scale  # centred first, as PyTorch does
    if bias is not None:
        y = y + _v(bias)
    return jnp.moveaxis(y, -1, 1), new_mean, new_var


def dropout(x, p, training=True, generator=None):
    """``generator``: the backend's ``KeyStream`` (``Backend.generator``): each call takes a fresh key."""
    x = _v(x)
    if not training or p == 0:
        return x
    if p == 1:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(generator.next_key(), 1 - p, x.shape)
    return jnp.where(keep, x / (1 - p), jnp.zeros_like(x))


def uniform_like(x, low, high, generator):
    """``generator``: the backend's ``KeyStream`` (``Backend.generator``): each call takes a fresh key."""
    x = _v(x)
    return jax.random.uniform(generator.next_key(), x.shape, x.dtype, low, high)


def reshape(x, shape):
    return jnp.reshape(_v(x), tuple(shape))


def flatten(x, start_dim=1):
    x = _v(x)
    # the size spelled out, not -1: an empty batch cannot infer it (jnp.reshape divides by 0)
    return jnp.reshape(x, x.shape[:start_dim] + (math.prod(x.shape[start_dim:]),))


def concat(tensors, axis=0):
    return jnp.concatenate([_v(t) for t in tensors], axis)


def stack(tensors, axis=0):
    return jnp.stack([_v(t) for t in tensors], axis)


def mean(x, axis=None, keepdims=False):
    x = _v(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):  # the mean of integers in the float dtype in force
        x = x.astype(config.get_dtype())
    return jnp.mean(x, axis, keepdims=keepdims)


def sum(x, axis=None, keepdims=False):
    return jnp.sum(_v(x), axis, keepdims=keepdims)


def clip(x, minimum=None, maximum=None):
    return _clip(x, minimum, maximum, config.get_dtype())


@compiled_when_eager("x")
def _clip(x, minimum, maximum, float_dtype):
    # selects, not jnp.clip: PyTorch's clamp passes the gradient at a bound whole (jnp.clip's ties give half)
    x = _v(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) and (float_bound(minimum) or float_bound(maximum)):
        x = x.astype(float_dtype)  # a float bound makes integers floats, as PyTorch's promotion
    # a NaN bound is NaN's everywhere, as PyTorch's clamp (never below or above it, a select skipped it)
    if minimum is not None:
        x = jnp.where((x < minimum) | jnp.isnan(jnp.asarray(minimum, x.dtype)), jnp.asarray(minimum, x.dtype), x)
    if maximum is not None:
        x = jnp.where((x > maximum) | jnp.isnan(jnp.asarray(maximum, x.dtype)), jnp.asarray(maximum, x.dtype), x)
    return x


def shape(x):
    return tuple(_v(x).shape)


def cast_like(x, like):
    return jnp.asarray(_v(x), _v(like).dtype)


def one_hot(labels, num_classes):
    return jax.nn.one_hot(_v(labels), num_classes, dtype=jnp.int64)


def _reduce(values, reduction):
    if reduction == "none":
        return values
    return jnp.mean(values) if reduction == "mean" else jnp.sum(values)


@compiled_when_eager("prediction", "target")
def mse_loss(prediction, target, reduction="mean"):
    prediction = _v(prediction)
    return _reduce(jnp.square(prediction - jnp.asarray(_v(target), prediction.dtype)), reduction)


@compiled_when_eager("prediction", "target")
def l1_loss(prediction, target, reduction="mean"):
    prediction = _v(prediction)
    return _reduce(abs(prediction - jnp.asarray(_v(target), prediction.dtype)), reduction)


_trace = threading.local()


@contextlib.contextmanager
def checkified_trace(given_back=None):
    """Marks the trace running in this thread as one that ``checkify`` transforms (``StatefulJit``: every
    compiled step of this backend), where value checks may be ``checkify.check``s; each records its predicate
    for ``checks_passed``. ``given_back``: a function of no arguments, called once the trace starts, giving the
    variables whose values the caller gives back as it was given them where a check failed (Keras-on-JAX's train
    step: the weights, the optimizer's and the metrics' variables, keras/module.py ``_value_checked``), so that a
    write to one of them needs no selection of its own (``variables_given_back``)."""
    previous = (getattr(_trace, "checkified", False), getattr(_trace, "predicates", None),
                getattr(_trace, "given_back", frozenset()))
    _trace.checkified, _trace.predicates, _trace.given_back = True, [], frozenset()
    try:
        if given_back is not None:
            _trace.given_back = frozenset(id(variable) for variable in given_back())
        yield
    finally:
        _trace.checkified, _trace.predicates, _trace.given_back = previous


def variables_given_back() -> frozenset:
    """The ids of the variables whose values the caller of the checkified trace running in this thread gives back
    where a check failed (``checkified_trace``'s ``given_back``); empty for a trace nested in it, which has its
    own state and checks."""
    return getattr(_trace, "given_back", frozenset())


def in_checkified_trace() -> bool:
    """Whether the trace running in this thread is one that ``checkify`` transforms (``checkified_trace``)."""
    return getattr(_trace, "checkified", False)


def _stages_checks() -> bool:
    """Whether a value check of a traced value made now is staged (``_staged_check``): in a checkified trace, or in
    the body of a ``scan`` that reports its checks (``_scan_reporting_checks``: an eager one too). Asked by every
    value check that meets a traced value, which an open ``unknown_values_checked`` block notes."""
    noted = getattr(_trace, "unknown_values_checked", None)
    if noted is not None:
        noted.append(True)
    return getattr(_trace, "checkified", False) or bool(getattr(_trace, "scan_bodies", None))


@contextlib.contextmanager
def unknown_values_checked():
    """A list, non-empty after the block where a value check in it met a traced value (``_stages_checks``): in an
    abstract pass (``jax.eval_shape``) such a check cannot raise as it does eagerly (the backend's
    ``probe_forward`` then runs the forward eagerly)."""
    previous = getattr(_trace, "unknown_values_checked", None)
    noted = _trace.unknown_values_checked = []
    try:
        yield noted
    finally:
        _trace.unknown_values_checked = previous


def _staged_check(passed, message: str, **values) -> None:
    """``checkify.check`` of ``passed`` (a traced boolean scalar), which raises unidl's error after the compiled
    call, recorded for ``checks_passed``. In the body of a ``scan`` being traced (``_scan_reporting_checks``) the
    check is the body's, handed out of the scan as its outputs (checkify did not report a check in the body of a
    differentiated scan); one in a trace of its own inside that body (a ``cond`` branch) is checkify's."""
    bodies = getattr(_trace, "scan_bodies", None)
    if bodies and bodies[-1].trace is not None and getattr(passed, "_trace", None) is bodies[-1].trace:
        bodies[-1].checks.append((passed, message, values))
        return
    if getattr(_trace, "checkified", False):
        checkify.check(passed, message, **values)
        _trace.predicates.append(passed)


def checks_passed():
    """A boolean scalar: every value check staged so far in this checkified trace, in a trace still active here,
    passed; None where there is none (checks of a trace that has ended, a trace of the forward made for another
    purpose, cannot be read here and are not counted; a ``scan``'s body's are one check after the scan,
    ``_scan_reporting_checks``). An update selected by it changes nothing in
    a step whose check fails, as the error, raised after the compiled call, stops the same step before its update in
    torch's eager code and in a TensorFlow graph."""
    predicates = getattr(_trace, "predicates", None)
    if not predicates:
        return None
    from jax._src import core  # (the active traces: no public API names them; a JAX without these: no selection)

    if not hasattr(core, "unsafe_get_trace_stack") or not hasattr(core, "unsafe_get_current_trace"):
        return None
    active = {id(trace) for trace in core.unsafe_get_trace_stack(core.unsafe_get_current_trace())}
    predicates = [p for p in predicates if id(getattr(p, "_trace", None)) in active]
    return functools.reduce(jnp.logical_and, predicates) if predicates else None


@contextlib.contextmanager
def unless_a_check_failed(variables):
    """The block's writes to ``variables`` stand only where every value check staged before it in this trace
    passed (``checks_passed``); a block with none staged runs as it is."""
    passed = checks_passed()
    before = [v._value for v in variables] if passed is not None else None  # (bookkeeping: not a recorded read)
    yield
    if passed is not None:
        for variable, old in zip(variables, before):
            if variable._value is not old:
                variable.value = jnp.where(passed, variable._value, old)


def _count_outside(x, low, high):
    return jnp.sum(jnp.logical_or(x < low, x > high))


@functools.partial(jax.jit, static_argnames=("bounds",))
def _count_outside_compiled(x, bounds):
    """``_count_outside`` of a concrete array (``_concrete``) as one program, ``bounds`` its ``(type, value)``
    pairs (static: ``0 == 0.0`` must not share a trace): an eager check is one compilation per shape, dtype and
    bounds and one dispatch a call, where its four primitives were four of each (a compilation per new shape of
    every eager loss call that checks its values)."""
    (_, low), (_, high) = bounds
    return _count_outside(x, low, high)


@jax.jit
def _extremes(indices):
    """The least and the greatest of concrete ``indices`` (``_concrete``): one program for an eager check, where
    ``jnp.min`` and ``jnp.max`` were a compilation and a dispatch each."""
    return jnp.min(indices), jnp.max(indices)


def _concrete(x) -> bool:
    """Whether ``x`` is a JAX array with values (not a tracer, nor another framework's array such as a Keras
    variable on JAX), which the compiled checks take."""
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def _plain_number(value) -> bool:
    return isinstance(value, (int, float)) and value == value  # (NaN is not equal to itself: no cached trace)


def check_in_range(x, low, high, what="values"):
    x = _v(x)
    if not x.size:
        return x
    if _concrete(x) and _plain_number(low) and _plain_number(high):
        outside = _count_outside_compiled(x, bounds=((type(low), low), (type(high), high)))
    else:
        outside = _count_outside(x, low, high)
    if isinstance(outside, jax.core.Tracer):  # (checkify raises it after a compiled step, as check_index's)
        if _stages_checks():
            message = f"{ValueOutOfRangeError.marker}{what} must lie in [{low}, {high}]; found {{n}} value(s) outside"
            _staged_check(outside == 0, message, n=outside)
    elif int(outside):
        raise ValueOutOfRangeError(f"{what} must lie in [{low}, {high}]; found {int(outside)} value(s) outside")
    return x


def check_index(indices, size, what="index"):
    indices = _v(indices)
    if not indices.size:
        return indices
    low, high = _extremes(indices) if _concrete(indices) else (jnp.min(indices), jnp.max(indices))
    if isinstance(low, jax.core.Tracer):
        # inside a compiled step checkify raises it after the step; a jax.jit that is not checkified (Keras's
        # own trainer on JAX) cannot stage a check at all, so there is none there
        if _stages_checks():
            message = f"{IndexOutOfRangeError.marker}{what} must lie in [0, {size}); found values from {{low}} to {{high}}"
            _staged_check((low >= 0) & (high < size), message, low=low, high=high)
    elif int(low) < 0 or int(high) >= size:
        raise IndexOutOfRangeError(f"{what} must lie in [0, {size}); found values from {int(low)} to {int(high)}")
    return indices


def check_values(x, condition, message, values=()):
    condition = _v(condition)
    if not isinstance(condition, jax.core.Tracer):
        return check_known_values(x, condition, message, values)
    if _stages_checks():  # (checkify raises it after a compiled step, as check_index's)
        names = {f"value{i}": jnp.asarray(_v(value)) for i, value in enumerate(values)}
        _staged_check(condition, ValueOutOfRangeError.marker + message.format(*(f"{{{n}}}" for n in names)), **names)
    return x


def segment_sum(data, segment_ids, num_segments):
    return jax.ops.segment_sum(_v(data), _v(segment_ids).astype(jnp.int32), num_segments)


def cross_entropy(logits, labels, reduction="mean", ignore_index=-100):
    logits, labels = _v(logits), _v(labels)
    # the labels' range checked first, outside the compiled body (whose trace cannot raise on values)
    kept = (_labels_kept(labels, ignore_index) if _concrete(labels) and isinstance(ignore_index, int)
            else jnp.where(labels != ignore_index, labels, 0))
    checked = check_index(kept, logits.shape[-1], "CrossEntropyLoss labels")
    return _cross_entropy(logits, labels, checked, reduction, ignore_index)


@functools.partial(jax.jit, static_argnames=("ignore_index",))
def _labels_kept(labels, ignore_index):
    """Concrete ``labels`` with 0 where they are ``ignore_index`` (static: a Python int, as the eager ``!=`` takes
    it): one program per shape and dtype of an eager loss's labels, where ``!=`` and ``where`` were a compilation
    each."""
    return jnp.where(labels != ignore_index, labels, 0)


@compiled_when_eager("logits", "labels", "checked")
def _cross_entropy(logits, labels, checked, reduction, ignore_index):
    """``cross_entropy`` of ``checked``: ``labels`` in range, with 0 where they are ``ignore_index``."""
    kept = labels != ignore_index
    labels = checked
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    losses = -jnp.take_along_axis(log_probs, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]
    losses = jnp.where(kept, losses, 0)
    if reduction == "mean":
        return jnp.sum(losses) / jnp.sum(kept.astype(losses.dtype))
    return _reduce(losses, reduction)


@compiled_when_eager("logits", "targets")
def bce_with_logits(logits, targets, reduction="mean"):
    logits = _v(logits)
    targets = jnp.asarray(_v(targets), logits.dtype)
    # max(x, 0) and -|x| as selects on x >= 0 (TensorFlow's arithmetic): PyTorch's gradient at x = 0, sigmoid(0) - t
    # (jnp.maximum splits the tie and jnp.abs has slope 1 there: -t)
    positive = logits >= 0
    negative_abs = jnp.where(positive, -logits, logits)
    losses = jnp.where(positive, logits, 0) - logits * targets + jnp.log1p(jnp.exp(negative_abs))
    return _reduce(losses, reduction)


def scan(fn, init, xs, axis=0, reverse=False):
    """``jax.lax.scan``; the value checks of the body (an index out of range) are raised as the eager loop raises
    them, at the first step where one fails (``_scan_reporting_checks``), in a checkified trace and eagerly."""
    # reverse as a forward scan over the slices taken from the end (lax.scan's own definition of it): the same
    # arithmetic, and a program that exporters without a reverse scan convert (jax2onnx: a bidirectional RNN to ONNX)
    xs = jax.tree_util.tree_map(lambda x: _from_the_end(jnp.moveaxis(_array(x), axis, 0), reverse), xs)
    init = jax.tree_util.tree_map(_array, init)  # (a parameter as init too)
    at_once = _values_read_at_once()
    if at_once or _stages_checks():
        carry, ys = _scan_reporting_checks(fn, init, xs, at_once)
    else:  # (a jax.jit that is not checkified, such as an eager op's: its checks could not be reported)
        carry, ys = jax.lax.scan(fn, init, xs)
    return carry, jax.tree_util.tree_map(lambda y: jnp.moveaxis(_from_the_end(y, reverse), 0, axis), ys)


def _array(x):
    """A leaf of a scan's ``init`` or ``xs`` as ``lax.scan`` takes it: a variable's array (unidl's; a Keras
    variable's on Keras-on-JAX, whose scan this is), anything else as it is."""
    x = _v(x)
    return jnp.asarray(x) if hasattr(x, "__jax_array__") else x


def _current_trace():
    """The trace running in this thread, or None on a JAX that does not say (no public API names it)."""
    from jax._src import core

    return core.unsafe_get_current_trace() if hasattr(core, "unsafe_get_current_trace") else None


def _values_read_at_once() -> bool:
    """Whether the values computed now are had at once: no trace runs in this thread but transformations of eager
    values (an eager call, or an eager gradient's, whose primal values are computed as they go)."""
    from jax._src import core
    from jax._src.interpreters import partial_eval

    trace = _current_trace()
    if trace is None or not hasattr(core, "unsafe_get_trace_stack"):
        return False
    return not any(isinstance(each, partial_eval.DynamicJaxprTrace) for each in core.unsafe_get_trace_stack(trace))


class _BodyChecks:
    """The value checks staged while a ``scan``'s body is traced (``_staged_check``), each ``(passed, message,
    values)``, ``passed`` a boolean scalar of the body's trace ``trace``."""

    def __init__(self, trace):
        self.trace, self.checks = trace, []


def _scan_reporting_checks(fn, init, xs, at_once: bool):
    """``jax.lax.scan(fn, init, xs)`` whose body's value checks are raised as the eager loop raises them: each
    step's checks (whether each held, and the values its message names) are more outputs of the body, and after the
    scan the first step where one failed, and its first check that failed, is one check of the trace around the
    scan (checkify's, recorded for ``checks_passed``: a write after the scan stands only where it held; the body's
    check where the scan is in another scan's body), or raised at once where the values are (``at_once``: eagerly,
    in an eager gradient too). Checkify reports a check inside the body itself only where the scan is not
    differentiated (a ``ud.train_step`` computed with the index out of range: a NaN row, a wrapped negative index),
    and ``checks_passed`` could not read it after the scan, so a write after the scan stood. The steps after the
    failing one still run (their values are never read: the error is raised); a body with no check is the plain
    scan, with no more outputs."""
    traced = []  # (lax.scan may trace the body again where a carry's weak type changed: the last trace is the scan)

    def body(carry, x):
        recorded = _BodyChecks(_current_trace())  # (the body's trace, which its checks' predicates belong to)
        bodies = _trace.__dict__.setdefault("scan_bodies", [])
        bodies.append(recorded)
        try:
            result = fn(carry, x)
        finally:
            bodies.pop()
        traced.append(recorded)
        if not recorded.checks:
            return result
        new_carry, y = result
        values = [{name: jax.lax.stop_gradient(jnp.asarray(value)) for name, value in names.items()}
                  for _, _, names in recorded.checks]
        return new_carry, (y, jnp.stack([passed for passed, _, _ in recorded.checks]), values)

    carry, ys = jax.lax.scan(body, init, xs)
    if not traced or not traced[-1].checks:
        return carry, ys
    ys, passed, values = ys
    _report_the_first_failure([message for _, message, _ in traced[-1].checks], passed, values, at_once)
    return carry, ys


def _report_the_first_failure(messages, passed, values, at_once: bool) -> None:
    """Stage (or raise, ``at_once``) the first failure of a scan's body checks: ``passed`` (steps, checks) says
    whether each held at each step, ``values`` each check's message values per step. One check per message, which
    fails only where it is the first that failed at the first step where one did, with that step's values."""
    failed_steps = jnp.logical_not(jnp.all(passed, axis=1))
    step = jnp.argmax(failed_steps)  # (the first step where a check failed; 0 where none did)
    first = jnp.argmax(jnp.logical_not(passed[step]))  # (its first check that failed, in program order)
    failed = failed_steps[step]
    from jax._src import core  # (an eager gradient's tracer read as its primal value)

    for index, message in enumerate(messages):
        held = jnp.logical_not(failed & (first == index))
        named = {name: value[step] for name, value in values[index].items()}
        known = core.to_concrete_value(held) if at_once else None
        if known is None:  # (a trace's: staged; an eager vmap's has no one value either)
            _staged_check(held, message, **named)
        elif not known:
            _raise_now(message, named)


def _raise_now(message: str, values) -> None:
    """Raise unidl's error of a check that failed where its values are had (``message`` a template of ``values``,
    an eager gradient's tracers among them), in the words checkify gives a compiled call's
    (``function.raise_failed_check``)."""
    from jax._src import core  # (an eager gradient's tracer read as its primal value)

    raise marked_error_from(message.format(**{name: core.concrete_or_error(np.asarray, value)
                                              for name, value in values.items()}))


def _from_the_end(x, reverse):
    """``x`` with its first axis reversed when ``reverse``, else as it is."""
    return jnp.flip(x, 0) if reverse else x


@compiled_when_eager("x")
def gelu(x, approximate="none"):
    return jax.nn.gelu(_v(x), approximate=approximate == "tanh")


@compiled_when_eager("x")
def elu(x, alpha=1.0):
    x = _v(x)
    # expm1 of the negative part only: the branch not taken must not overflow (its gradient would be NaN)
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.where(x > 0, 0, x)))  # (at 0 the gradient alpha, as torch)


@compiled_when_eager("x")
def softplus(x, beta=1.0, threshold=20.0):
    x = _v(x)
    scaled = x * beta
    # (a select, not minimum: at scaled == threshold the whole gradient, as torch's; minimum's splits a tie)
    return jnp.where(scaled > threshold, x, jnp.log1p(jnp.exp(jnp.where(scaled > threshold, 0, scaled))) / beta)


@compiled_when_eager("x")
def hardtanh(x, min_val=-1.0, max_val=1.0):
    x = _v(x)
    # at a bound the constant: PyTorch's gradient is 0 there (ReLU6 at 0 and 6 too)
    return jnp.where(x <= min_val, jnp.asarray(min_val, x.dtype),
                     jnp.where(x >= max_val, jnp.asarray(max_val, x.dtype), x))


@compiled_when_eager("x", "weight", "bias")
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = _v(x)
    axes = tuple(range(-len(normalized_shape), 0))
    centered = x - jnp.mean(x, axes, keepdims=True)
    y = centered * jax.lax.rsqrt(jnp.mean(jnp.square(centered), axes, keepdims=True) + eps)
    if weight is not None:
        y = y * _v(weight)
    return y + _v(bias) if bias is not None else y


@compiled_when_eager("query", "key", "value", "masks")
def fused_attention(query, key, value, masks=(), is_causal=False, scale=None):
    # the composed softmax attention, with a query whose every key is masked found from the masks ((N, 1, 1, 1) for
    # a key padding mask) instead of from the full (N, H, L, S) scores as ``ops.attention``'s guard does: such a
    # query is shown every key and its output dropped, so no NaN reaches the forward or the backward. XLA's CPU
    # backend runs the transformer classifier's step (batch 32, sequence 64) about 1.1x faster so
    query, key, value = _v(query), _v(key), _v(value)
    mask = None
    for each in masks:
        mask = _v(each) if mask is None else jnp.logical_and(mask, _v(each))
    if is_causal:
        causal = jnp.tril(jnp.ones((query.shape[-2], key.shape[-2]), dtype=bool))
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = jnp.matmul(query * scale, jnp.swapaxes(key, -2, -1))
    if mask is None:
        return jnp.matmul(jax.nn.softmax(scores, axis=-1), value)
    attends = jnp.any(mask, axis=-1, keepdims=True)
    weights = jax.nn.softmax(jnp.where(mask | ~attends, scores, -jnp.inf), axis=-1)
    return jnp.where(attends, jnp.matmul(weights, value), jnp.zeros((), value.dtype))


def embedding_rows(indices, weight, padding_idx=None):
    return _embedding(check_index(indices, _v(weight).shape[0], "Embedding indices"), weight, padding_idx)


@compiled_when_eager("indices", "weight")
def _embedding(indices, weight, padding_idx):
    weight = _v(weight)
    rows = jnp.take(weight, indices, axis=0)
    if padding_idx is None:
        return rows
    return jnp.where((indices == padding_idx)[..., None], jax.lax.stop_gradient(rows), rows)


def take(x, indices, axis=0):
    x = _v(x)
    return jnp.take(x, check_index(indices, x.shape[axis], "take indices"), axis=axis)


def take_in_range(x, indices, axis):
    return jnp.take(_v(x), _v(indices), axis=axis)


def cond(condition, true_fn, false_fn, operands):
    return jax.lax.cond(_v(condition), true_fn, false_fn, *(_v(operand) for operand in operands))


def gather(x, dim, index):
    x = _v(x)
    dim %= x.ndim
    return _gather(x, dim, check_index(index, x.shape[dim], "gather index"))


@compiled_when_eager("x", "index")
def _gather(x, dim, index):
    # torch.gather: index may be shorter than x on the other axes
    x = x[tuple(slice(None) if axis == dim else slice(0, size) for axis, size in enumerate(index.shape))]
    return jnp.take_along_axis(x, index, axis=dim)


def cast(x, dtype):
    return jnp.asarray(_v(x)).astype(dtype)


def zeros(shape, dtype):
    return jnp.zeros(tuple(shape), dtype)


def ones(shape, dtype):
    return jnp.ones(tuple(shape), dtype)


def arange(start, end, step, dtype):
    return jnp.arange(start, end, step, dtype=dtype)


@compiled_when_eager("x")
def argmax(x, dim=None, keepdim=False):
    return jnp.argmax(_v(x), axis=dim, keepdims=keepdim).astype(jnp.int64)


def permute(x, dims):
    return jnp.transpose(_v(x), tuple(dims))


def unsqueeze(x, dim):
    return jnp.expand_dims(_v(x), dim)


def squeeze(x, dim=None):
    x = _v(x)
    if dim is None:
        return jnp.squeeze(x)
    dims = tuple(d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim) if x.shape[d] == 1)
    return jnp.squeeze(x, dims) if dims else x  # torch leaves axes of another size as they are


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@compiled_when_eager("x")
def pad(x, pad, mode="constant", value=0.0):
    x = _v(x)
    amounts = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        amounts[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    if mode == "constant":
        return jnp.pad(x, amounts, constant_values=value)
    if mode == "replicate":  # each axis gathered at clipped positions: jnp.pad's 'edge' (broadcasts joined by a
        # concatenation) exported by jax2onnx to an ONNX model that onnxruntime refused (a Concat's declared shape)
        for axis, (before, after) in enumerate(amounts):
            if before or after:
                positions = jnp.clip(jnp.arange(-before, x.shape[axis] + after), 0, x.shape[axis] - 1)
                x = jnp.take(x, positions, axis=axis)
        return x
    return jnp.pad(x, amounts, mode=_PAD_MODES[mode])
