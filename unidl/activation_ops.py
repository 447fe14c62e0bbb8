"""Activations and distances composed once over the registry's ops, so every backend runs the same arithmetic:
``mish``, ``hardswish``, ``hardsigmoid``, ``selu``, ``celu``, ``softsign``, ``logsigmoid``, ``softmin``, ``glu``,
``tanhshrink``, ``softshrink``, ``hardshrink``, ``threshold``, ``rrelu``, ``cosine_similarity`` and
``pairwise_distance``, exported as ``ud.ops.<name>`` with ``torch.nn.functional``'s arguments.

Each is written so that autodiff gives PyTorch's gradient, at the kinks too: a ``where`` picks the branch whose
derivative PyTorch's backward kernel takes there (``hardswish``'s outer pieces at -3 and 3, 0 on
``hardshrink``'s and ``softshrink``'s closed interval, 0 at ``threshold``'s threshold), and a norm of 0 has
PyTorch's gradient 0 rather than sqrt's NaN. float16 and bfloat16 input is computed in float32 and rounded once,
as PyTorch's CPU kernels compute it (its comparisons with ``lambd`` and ``threshold`` too).

Their number arguments are checked where torch takes them, when a layer is built and on every call: a bool, None,
a string or a tensor of more than 0 axes is a ``TypeError`` naming the argument on every backend (they failed in
each framework's own words when the layer ran). A 0-d tensor is the number it holds (``number``); these ops need
its value when they are built, so one of a graph being traced is a ``TypeError`` saying so (``ud.ops.elu``,
``leaky_relu`` and ``softplus``, whose kernels take a tensor, take that one too). Where PyTorch refuses a value
when it runs (a RuntimeError), unidl refuses it when the layer is built, with a ``ValueError``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from unidl import arguments, dtype_kinds, input_checks, ops, torch_names
from unidl.errors import ShapeMismatchError
from unidl.composites import composite

SELU_ALPHA = 1.6732632423543772848170429916717  # (torch's constants, ATen's Activation.cpp)
SELU_SCALE = 1.0507009873554804934193349852946
_SIXTH = float(np.float32(1.0 / 6.0))  # (hardsigmoid's gradient in ATen: 1.0f / 6.0f)


def _floats(owner, x):
    return input_checks.as_floating(owner, "x", x)


def _rounded_once(function):
    """``function`` of a float16 or bfloat16 ``x`` computed in float32 and rounded once to ``x``'s dtype, as
    PyTorch's CPU kernels compute reduced floats (each step rounded to float16 was a last place off for one
    element in five, and ``0.3`` rounded up to float16 moved ``softshrink``'s and ``threshold``'s decisions)."""

    @functools.wraps(function)
    def call(x, *args, **kwargs):
        dtype = getattr(x, "dtype", None)
        if dtype is None or not dtype_kinds.is_half(dtype):
            return function(x, *args, **kwargs)
        return ops.cast(function(ops.cast(x, "float32"), *args, **kwargs), dtype_kinds.dtype_name(dtype))

    return call


def number(owner, name, value):
    """A number argument (``alpha``, ``lambd``, ``threshold``, ``value``, ``eps``, ``p``): a Python or NumPy int or
    float, as given (an int stays an int: the repr shows it as PyTorch's does), or a 0-d tensor of the backend in
    force taken as the number it holds (``arguments.known_number``: PyTorch takes one); anything else, a bool, None,
    a string or a tensor of more axes, is a ``TypeError`` naming the argument, the same on every backend."""
    value = arguments.known_number(owner, name, value)
    if isinstance(value, bool) or arguments.real(value) is None:
        raise TypeError(f"{owner} {name} must be a number (an int or a float), got {value!r}")
    return value


@composite("x")
@_rounded_once
def mish(x):
    """x * tanh(softplus(x)). Integers are floats of the dtype in force, as the other float math."""
    x = _floats("mish", x)
    return x * ops.tanh(ops.softplus(x))


@composite("x")
@_rounded_once
def hardswish(x):
    """x * relu6(x + 3) / 6, with PyTorch's gradient: 0 up to -3, x / 3 + 1/2 strictly between -3 and 3, 1 from 3
    on (at +-inf too: the middle piece takes 0 outside (-3, 3), so its infinite derivative there is no NaN). Up to -3
    the value is x * 0, as PyTorch's: -0, and NaN at -inf."""
    x = _floats("hardswish", x)
    middle = ops.where(ops.abs(x) < 3.0, x, ops.zeros_like(x))
    return ops.where(x <= -3.0, x * 0.0, ops.where(x < 3.0, middle * (middle + 3.0) / 6.0, x))


@composite("x")
@_rounded_once
def hardsigmoid(x):
    """relu6(x + 3) / 6; the gradient is 1/6 strictly inside (-3, 3), 0 elsewhere, at NaN too (PyTorch's: its 1/6
    rounded to float32 in every dtype, which the value's exact division keeps apart from; hardtanh passes NaN's)."""
    x = _floats("hardsigmoid", x)
    clipped = ops.hardtanh(x + 3.0, 0.0, 6.0)
    clipped = ops.where(ops.abs(x) < 3.0, clipped, ops.stop_gradient(clipped))
    return clipped * _SIXTH + ops.stop_gradient(clipped / 6.0 - clipped * _SIXTH)


@composite("x")
@_rounded_once
def selu(x):
    """scale * elu(x, alpha) with PyTorch's constants alpha = 1.6732632..., scale = 1.0507009... (the left side's
    gradient at 0, as ``elu``'s)."""
    return SELU_SCALE * ops.elu(_floats("selu", x), SELU_ALPHA)


def celu_alpha(owner, alpha):
    """``celu``'s ``alpha``: a non-zero number (PyTorch refuses 0 when it runs, with a RuntimeError)."""
    alpha = number(owner, "alpha", alpha)
    if alpha == 0:  # (PyTorch's RuntimeError "ZeroDivisionError: alpha cannot be 0 for CELU", when it runs)
        raise ValueError(f"{owner} alpha cannot be 0: it divides the input (alpha * (exp(x / alpha) - 1)); "
                         f"give a non-zero alpha, e.g. 1.0")
    return alpha


@composite("x")
@_rounded_once
def celu(x, alpha=1.0):
    """x if x > 0 else alpha * (exp(x / alpha) - 1), for any non-zero ``alpha`` (a negative one too, as PyTorch's);
    ``alpha=0``, which PyTorch refuses when it runs (a RuntimeError), is a ``ValueError``."""
    alpha, x = celu_alpha("celu", alpha), _floats("celu", x)
    if alpha > 0:  # (elu branches on the sign of x / alpha, which is x's only for a positive alpha)
        return ops.where(x > 0, x, alpha * ops.elu(x / alpha, 1.0))
    # (x at 0, as PyTorch's +0 with gradient 1; exp reads 0 where x >= 0: x / alpha < 0 there, no overflow untaken)
    negative = ops.where(x < 0, x, ops.zeros_like(x))
    return ops.where(x < 0, alpha * (ops.exp(negative / alpha) - 1.0), x)


@composite("x")
def softsign(x):
    """x / (1 + |x|) (in float16 and bfloat16 each step rounded to their dtype, as PyTorch's, which composes it too)."""
    x = _floats("softsign", x)
    return x / (ops.abs(x) + 1.0)


@composite("x")
@_rounded_once
def logsigmoid(x):
    """log(sigmoid(x)), computed stably as PyTorch's kernel: min(x, 0) - log1p(exp(-|x|)) (gradient 1/2 at 0)."""
    x = _floats("logsigmoid", x)
    negative = x < 0
    # -|x| spelled as a where, so that at 0 its derivative is -1 (abs's is 0 there): PyTorch's 1/2 in all
    return ops.where(negative, x, ops.zeros_like(x)) - ops.log1p(ops.exp(ops.where(negative, x, -x)))


def softmin(x, dim=None):
    """softmax(-x) along ``dim``; ``dim=None`` (``torch.nn.functional.softmin``'s default) is PyTorch's implicit
    axis, with its warning (``ud.ops.implicit_softmax_dim``)."""
    x = input_checks.as_floating("softmin", "x", input_checks.as_tensor("softmin", "x", x))
    dim = arguments.axis("softmin", "dim", dim)
    input_checks.check_axes("softmin", "dim", dim, x)
    return ops.softmax(-x, ops.implicit_softmax_dim("softmin", x) if dim is None else dim)


@composite("x")
@_rounded_once
def glu(x, dim=-1):
    """a * sigmoid(b), ``a`` the first half of ``x`` along ``dim`` and ``b`` the second. A 0-d input, or an odd size
    along ``dim``, is a ``ShapeMismatchError`` naming the size (inside graphs, where it is known only when the
    graph runs, too), as PyTorch refuses them."""
    x = input_checks.as_floating("glu", "x", input_checks.as_tensor("glu", "x", x))
    dim = arguments.axis("glu", "dim", dim)
    if len(x.shape) == 0:
        raise ShapeMismatchError("glu does not take a 0-d input: it halves an axis of even size")
    input_checks.check_axes("glu", "dim", dim, x)
    axis, sizes = dim % len(x.shape), input_checks.sizes_of(x)
    x = input_checks.require(x, input_checks.holds(sizes[axis] % 2 == 0), lambda: (
        f"glu halves dimension {dim}, whose size must be even, but it is size {{}} (input shape "
        f"{input_checks.shape_template(len(sizes))})"), (sizes[axis],) + tuple(sizes))
    half = sizes[axis] // 2
    first, second = [slice(None)] * len(x.shape), [slice(None)] * len(x.shape)
    first[axis], second[axis] = slice(None, half), slice(half, None)
    return x[tuple(first)] * ops.sigmoid(x[tuple(second)])


@composite("x")
def tanhshrink(x):
    """x - tanh(x) (in float16 and bfloat16 each step rounded to their dtype, as PyTorch's, which composes it too)."""
    x = _floats("tanhshrink", x)
    return x - ops.tanh(x)


def shrink_lambd(owner, lambd):
    """``softshrink``'s ``lambd``: a number >= 0 (PyTorch refuses a negative one when it runs, a RuntimeError)."""
    lambd = number(owner, "lambd", lambd)
    if not lambd >= 0:
        raise ValueError(f"{owner} lambd must be >= 0 (the half-width of the interval mapped to 0), got {lambd!r}")
    return lambd


@composite("x")
@_rounded_once
def softshrink(x, lambd=0.5):
    """x - lambd above lambd, x + lambd below -lambd, 0 on [-lambd, lambd] (gradient 0 there, its ends included, as
    PyTorch's). A negative ``lambd``, which PyTorch refuses when it runs (a RuntimeError), is a ``ValueError``."""
    lambd, x = shrink_lambd("softshrink", lambd), _floats("softshrink", x)
    inside = ops.abs(x) <= lambd  # (NaN is outside: it stays NaN)
    return ops.where(inside, ops.zeros_like(x), ops.where(x > lambd, x - lambd, x + lambd))


@composite("x")
def hardshrink(x, lambd=0.5):
    """x outside [-lambd, lambd], 0 on it (gradient 0 there, its ends included, as PyTorch's; a negative ``lambd``
    keeps every x, as PyTorch's). float16 and bfloat16 compare with ``lambd`` rounded to their dtype, as PyTorch's
    kernel (which, unlike ``softshrink``'s, holds it in the input's dtype)."""
    lambd, x = number("hardshrink", "lambd", lambd), _floats("hardshrink", x)
    return ops.where(ops.abs(x) <= lambd, ops.zeros_like(x), x)


@composite("x")
@_rounded_once
def threshold(x, threshold, value):
    """x where x > threshold, else ``value`` (the gradient 0 at and below the threshold; NaN stays NaN), as
    ``torch.nn.functional.threshold``. Integers stay integers, ``threshold`` and ``value`` truncated toward zero as
    PyTorch casts them (either outside their dtype's range, or not finite, is a ``ValueError`` naming it, which
    PyTorch raises as a RuntimeError); booleans are a ``DtypeMismatchError``."""
    threshold, value = number("threshold", "threshold", threshold), number("threshold", "value", value)
    input_checks.check_numbers("threshold", x)
    if not dtype_kinds.is_floating(x.dtype):  # (each cast to the integers' dtype as torch casts it: truncated)
        for name, given in (("threshold", threshold), ("value", value)):
            if not math.isfinite(given):
                raise ValueError(f"threshold {name} {given!r} cannot be converted to the input's integer dtype "
                                 f"{dtype_kinds.dtype_name(x.dtype)}; give a finite {name}")
            input_checks.check_bounds("threshold", x, (given,), floats=True, what=name)
        threshold, value = int(threshold), int(value)
    return ops.where(x <= threshold, ops.zeros_like(x) + value, x)


def rrelu_bounds(owner, lower, upper) -> tuple:
    """``(lower, upper)`` as Python floats; a ``ValueError`` naming ``owner`` for one that is not a real number or
    for ``lower > upper`` (PyTorch's "Lower bound should be less than or equal to the upper bound")."""
    lower, upper = arguments.plain_number(owner, "lower", lower), arguments.plain_number(owner, "upper", upper)
    if not lower <= upper:
        raise ValueError(f"{owner} lower ({lower}) must be at most upper ({upper}): the negative slopes are drawn "
                         f"from [lower, upper]")
    return float(lower), float(upper)


@ops._composed(arrays=("x",))
def rrelu(x, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False, generator=None):
    """The randomized leaky ReLU, as ``torch.nn.functional.rrelu``: x if x > 0 else a * x. In training each element
    of x <= 0 draws its own slope a uniformly from [lower, upper] (``generator``: the backend's own, seeded by
    ``ud.manual_seed``, when None; a fresh draw at every call, inside compiled steps too), its gradient a; out of
    training a = (lower + upper) / 2 (``leaky_relu``, its gradient at 0 the slope, as PyTorch's). ``inplace``:
    PyTorch's signature; True is ``UnsupportedOptionError`` (unidl never writes its input: use the result), as every
    op's ``inplace``. Not a composite: it draws from the generator."""
    if inplace:
        torch_names.refuse("rrelu", "inplace", inplace, False)
    lower, upper = rrelu_bounds("rrelu", lower, upper)
    x = _floats("rrelu", x)
    if not training:
        return ops.leaky_relu(x, (lower + upper) / 2)
    from unidl import config

    slopes = ops._ops().uniform_like(x, lower, upper, generator if generator is not None else
                                     config.backend().generator())
    return ops.where(x > 0, x, x * ops.stop_gradient(slopes))


def _operands(owner, x1, x2):
    """``x1`` and ``x2`` as tensors in the one float dtype ``torch.result_type`` gives them (integers: floats of
    the dtype in force), after checking that they broadcast (a ``ShapeMismatchError`` naming both shapes), and that
    dtype's name. float16 and bfloat16 come back in float32, to compute in, as PyTorch's norms accumulate them (the
    sum of squares of float16 overflowed from |x| = 256 on)."""
    x1, x2 = input_checks.as_tensor(owner, "x1", x1), input_checks.as_tensor(owner, "x2", x2)
    x1, x2 = ops._check_broadcastable(owner, x1, x2, names=("x1", "x2"))
    x1, x2 = ops._promoted_as_torch(x1, x2, broadcast=True)
    x1, x2 = input_checks.as_floating(owner, "x1", x1), input_checks.as_floating(owner, "x2", x2)
    dtype = dtype_kinds.dtype_name(x1.dtype)
    if dtype_kinds.is_half(dtype):
        x1, x2 = ops.cast(x1, "float32"), ops.cast(x2, "float32")
    return x1, x2, dtype


def _in_dtype(result, dtype):
    """``result`` (computed in float32 for float16 or bfloat16 operands) rounded once to the operands' ``dtype``."""
    return ops.cast(result, dtype) if dtype_kinds.is_half(dtype) else result


def _power_of_positive(values, exponent):
    """values ** exponent (sqrt for 1/2) where ``values`` > 0, else 0, with gradient 0 there rather than a NaN or an
    infinity: PyTorch's norm masks the gradient of a norm of 0 (and of an element of 0 for p < 1)."""
    positive = values > 0
    safe = ops.where(positive, values, ops.zeros_like(values) + 1.0)
    return ops.where(positive, ops.sqrt(safe) if exponent == 0.5 else safe ** exponent, ops.zeros_like(values))


def _clamped_below(norm, eps):
    """max(norm, eps) whose gradient reaches ``norm`` whole, as PyTorch's in-place clamp under ``no_grad`` (an
    infinite norm stays infinite: norm + (max(norm, eps) - norm) was inf - inf, NaN)."""
    return ops.where(norm < eps, norm - ops.stop_gradient(norm) + eps, norm)


def cosine_eps(owner, eps):
    """``cosine_similarity``'s ``eps``: a number >= 0 (PyTorch refuses a negative one when it runs, a RuntimeError)."""
    eps = number(owner, "eps", eps)
    if not eps >= 0:
        raise ValueError(f"{owner} eps must be >= 0 (the least norm each input is divided by), got {eps!r}")
    return eps


@composite("x1", "x2")
def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """sum(x1 / max(||x1||, eps) * x2 / max(||x2||, eps)) along ``dim`` of the two broadcast together, as PyTorch
    computes it (each norm clamped on its own, the clamp passing the gradient to the norm whole; a zero vector's
    norm has gradient 0). A negative ``eps``, which PyTorch refuses when it runs (a RuntimeError), is a
    ``ValueError``."""
    eps, dim = cosine_eps("cosine_similarity", eps), arguments.axis("cosine_similarity", "dim", dim)
    x1, x2, dtype = _operands("cosine_similarity", x1, x2)
    # broadcast first, always: dim is an axis of their common shape (a graph's unknown sizes compare equal)
    x1, x2 = x1 + ops.zeros_like(x2), x2 + ops.zeros_like(x1)
    input_checks.check_axes("cosine_similarity", "dim", dim, x1)
    n1, n2 = (_clamped_below(_power_of_positive(ops.sum(x * x, dim, True), 0.5), eps) for x in (x1, x2))
    return _in_dtype(ops.sum((x1 / n1) * (x2 / n2), dim), dtype)


@composite("x1", "x2")
def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """The p-norm of x1 - x2 + eps (``eps`` added to each difference, not to the norm) along the last axis of
    the two broadcast together, as ``torch.nn.functional.pairwise_distance``: sum(|d| ** p) ** (1 / p) for any
    other ``p`` than 0 (the count of non-zero differences, without a gradient) and +-inf (the largest and smallest
    |d|). A norm of 0, and an element of 0 for p < 1, have gradient 0, as PyTorch's."""
    p, eps = number("pairwise_distance", "p", p), number("pairwise_distance", "eps", eps)
    keepdim = arguments.boolean("pairwise_distance", "keepdim", keepdim)
    x1, x2, dtype = _operands("pairwise_distance", x1, x2)
    return _in_dtype(_p_norm(x1 - x2 + eps, p, keepdim), dtype)


def _p_norm(difference, p, keepdim):
    """``pairwise_distance``'s p-norm of ``difference`` along its last axis."""
    if len(difference.shape) == 0:  # (PyTorch's norm of a 0-d difference: its absolute value)
        difference, keepdim = ops.reshape(difference, (1,)), False
    magnitude = ops.abs(difference)
    if p == 0:
        return ops.sum(ops.cast_like(ops.stop_gradient(magnitude) != 0, magnitude), -1, keepdim)
    if abs(p) == math.inf:  # (an empty axis has no largest or smallest |d|: PyTorch's RuntimeError)
        largest = "largest" if p > 0 else "smallest"
        magnitude = ops._check_not_empty(f"pairwise_distance with p={p} (the {largest} |x1 - x2 + eps|)", magnitude, -1)
        return ops._amax(magnitude, -1, keepdim) if p > 0 else -ops._amax(-magnitude, -1, keepdim)
    if p == 2:
        return _power_of_positive(ops.sum(difference * difference, -1, keepdim), 0.5)
    if p > 0:
        return _power_of_positive(ops.sum(_power_of_positive(magnitude, p), -1, keepdim), 1.0 / p)
    # (p < 0: an element of 0 is an infinite power, and the norm 0, with gradient 0 throughout, as PyTorch's)
    zero = magnitude == 0
    powers = ops.where(zero, ops.zeros_like(magnitude) + math.inf,
                       ops.where(zero, ops.zeros_like(magnitude) + 1.0, magnitude) ** p)
    return ops.sum(powers, -1, keepdim) ** (1.0 / p)
