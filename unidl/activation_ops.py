"""Activations and distances composed once over the registry's ops, so every backend runs the same arithmetic:
``mish``, ``hardswish``, ``hardsigmoid``, ``selu``, ``celu``, ``softsign``, ``logsigmoid``, ``softmin``, ``glu``,
``tanhshrink``, ``softshrink``, ``hardshrink``, ``threshold``, ``rrelu``, ``cosine_similarity`` and
``pairwise_distance``, exported as ``ud.ops.<name>`` with ``torch.nn.functional``'s arguments.

Each is written so that autodiff gives PyTorch's gradient, at the kinks too: a ``where`` picks the branch whose
derivative PyTorch's backward kernel takes there (``hardswish``'s outer pieces at -3 and 3, 0 on
``hardshrink``'s and ``softshrink``'s closed interval, 0 at ``threshold``'s threshold), and a norm of 0 has
PyTorch's gradient 0 rather than sqrt's NaN.
"""

from __future__ import annotations

import math

import numpy as np

from unidl import arguments, dtype_kinds, input_checks, ops
from unidl.errors import ShapeMismatchError
from unidl.spatial_ops import composite

SELU_ALPHA = 1.6732632423543772848170429916717  # (torch's constants, ATen's Activation.cpp)
SELU_SCALE = 1.0507009873554804934193349852946
_SIXTH = float(np.float32(1.0 / 6.0))  # (hardsigmoid's gradient in ATen: 1.0f / 6.0f)


def _floats(owner, x):
    return input_checks.as_floating(owner, "x", x)


@composite("x")
def mish(x):
    """x * tanh(softplus(x)). Integers are floats of the dtype in force, as the other float math."""
    x = _floats("mish", x)
    return x * ops.tanh(ops.softplus(x))


@composite("x")
def hardswish(x):
    """x * relu6(x + 3) / 6, with PyTorch's gradient: 0 up to -3, x / 3 + 1/2 strictly between -3 and 3, 1 from 3
    on."""
    x = _floats("hardswish", x)
    return ops.where(x <= -3.0, ops.zeros_like(x), ops.where(x < 3.0, x * (x + 3.0) / 6.0, x))


@composite("x")
def hardsigmoid(x):
    """relu6(x + 3) / 6; the gradient is 1/6 strictly inside (-3, 3), 0 elsewhere (PyTorch's: its 1/6 rounded to
    float32 in every dtype, which the value's exact division keeps apart from)."""
    clipped = ops.hardtanh(_floats("hardsigmoid", x) + 3.0, 0.0, 6.0)
    return clipped * _SIXTH + ops.stop_gradient(clipped / 6.0 - clipped * _SIXTH)


@composite("x")
def selu(x):
    """scale * elu(x, alpha) with PyTorch's constants alpha = 1.6732632..., scale = 1.0507009... (the left side's
    gradient at 0, as ``elu``'s)."""
    return SELU_SCALE * ops.elu(_floats("selu", x), SELU_ALPHA)


def celu_alpha(owner, alpha):
    alpha = arguments.plain_number(owner, "alpha", alpha)
    if alpha == 0:  # (PyTorch's RuntimeError "ZeroDivisionError: alpha cannot be 0 for CELU", when it runs)
        raise ValueError(f"{owner} alpha cannot be 0: it divides the input (alpha * (exp(x / alpha) - 1)); "
                         f"give a non-zero alpha, e.g. 1.0")
    return alpha


@composite("x")
def celu(x, alpha=1.0):
    """x if x > 0 else alpha * (exp(x / alpha) - 1); ``alpha=0`` is a ``ValueError`` (PyTorch's error)."""
    alpha, x = celu_alpha("celu", alpha), _floats("celu", x)
    return ops.where(x > 0, x, alpha * ops.elu(x / alpha, 1.0))


@composite("x")
def softsign(x):
    """x / (1 + |x|)."""
    x = _floats("softsign", x)
    return x / (ops.abs(x) + 1.0)


@composite("x")
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
    """x - tanh(x)."""
    x = _floats("tanhshrink", x)
    return x - ops.tanh(x)


def shrink_lambd(owner, lambd):
    """``softshrink``'s ``lambd``: a number >= 0 (PyTorch refuses a negative one when it runs)."""
    lambd = arguments.plain_number(owner, "lambd", lambd)
    if not lambd >= 0:
        raise ValueError(f"{owner} lambd must be >= 0 (the half-width of the interval mapped to 0), got {lambd!r}")
    return lambd


@composite("x")
def softshrink(x, lambd=0.5):
    """x - lambd above lambd, x + lambd below -lambd, 0 on [-lambd, lambd] (gradient 0 there, its ends included, as
    PyTorch's). A negative ``lambd`` is a ``ValueError``, as PyTorch's."""
    lambd, x = shrink_lambd("softshrink", lambd), _floats("softshrink", x)
    inside = ops.abs(x) <= lambd  # (NaN is outside: it stays NaN)
    return ops.where(inside, ops.zeros_like(x), ops.where(x > lambd, x - lambd, x + lambd))


@composite("x")
def hardshrink(x, lambd=0.5):
    """x outside [-lambd, lambd], 0 on it (gradient 0 there, its ends included, as PyTorch's; a negative ``lambd``
    keeps every x, as PyTorch's)."""
    lambd, x = arguments.plain_number("hardshrink", "lambd", lambd), _floats("hardshrink", x)
    return ops.where(ops.abs(x) <= lambd, ops.zeros_like(x), x)


@composite("x")
def threshold(x, threshold, value):
    """x where x > threshold, else ``value`` (the gradient 0 at and below the threshold; NaN stays NaN), as
    ``torch.nn.functional.threshold``. Integers stay integers, ``value`` truncated toward zero as PyTorch casts it
    (a value outside their dtype's range is a ``ValueError``); booleans are a ``DtypeMismatchError``."""
    threshold = arguments.plain_number("threshold", "threshold", threshold)
    value = arguments.plain_number("threshold", "value", value)
    input_checks.check_numbers("threshold", x)
    if not dtype_kinds.is_floating(x.dtype):  # x <= t of integers is x <= floor(t); value cast as torch casts it
        threshold, value = math.floor(threshold), int(value)
        input_checks.check_bounds("threshold", x, (value,), floats=False, what="value")
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
    PyTorch's signature (unidl never writes its input). Not a composite: it draws from the generator."""
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
    the dtype in force), after checking that they broadcast (a ``ShapeMismatchError`` naming both shapes)."""
    x1, x2 = input_checks.as_tensor(owner, "x1", x1), input_checks.as_tensor(owner, "x2", x2)
    ops._check_broadcastable(owner, x1, x2, names=("x1", "x2"))
    x1, x2 = ops._promoted_as_torch(x1, x2, broadcast=True)
    return input_checks.as_floating(owner, "x1", x1), input_checks.as_floating(owner, "x2", x2)


def _power_of_positive(values, exponent):
    """values ** exponent (sqrt for 1/2) where ``values`` > 0, else 0, with gradient 0 there rather than a NaN or an
    infinity: PyTorch's norm masks the gradient of a norm of 0 (and of an element of 0 for p < 1)."""
    positive = values > 0
    safe = ops.where(positive, values, ops.zeros_like(values) + 1.0)
    return ops.where(positive, ops.sqrt(safe) if exponent == 0.5 else safe ** exponent, ops.zeros_like(values))


def _clamped_below(norm, eps):
    """max(norm, eps) whose gradient reaches ``norm`` whole, as PyTorch's in-place clamp under ``no_grad``."""
    return norm + ops.stop_gradient(ops.maximum(norm, eps) - norm)


@composite("x1", "x2")
def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """sum(x1 / max(||x1||, eps) * x2 / max(||x2||, eps)) along ``dim`` of the two broadcast together, as PyTorch
    computes it (each norm clamped on its own, the clamp passing the gradient to the norm whole; a zero vector's
    norm has gradient 0)."""
    x1, x2 = _operands("cosine_similarity", x1, x2)
    eps, dim = arguments.plain_number("cosine_similarity", "eps", eps), arguments.axis("cosine_similarity", "dim", dim)
    if tuple(x1.shape) != tuple(x2.shape):  # (broadcast first: dim is an axis of their common shape)
        x1, x2 = x1 + ops.zeros_like(x2), x2 + ops.zeros_like(x1)
    input_checks.check_axes("cosine_similarity", "dim", dim, x1)
    n1, n2 = (_clamped_below(_power_of_positive(ops.sum(x * x, dim, True), 0.5), eps) for x in (x1, x2))
    return ops.sum((x1 / n1) * (x2 / n2), dim)


@composite("x1", "x2")
def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """The p-norm of x1 - x2 + eps (``eps`` added to each difference, not to the norm) along the last axis of
    the two broadcast together, as ``torch.nn.functional.pairwise_distance``: sum(|d| ** p) ** (1 / p) for any
    other ``p`` than 0 (the count of non-zero differences, without a gradient) and +-inf (the largest and smallest
    |d|). A norm of 0, and an element of 0 for p < 1, have gradient 0, as PyTorch's."""
    p = arguments.plain_number("pairwise_distance", "p", p)
    eps, keepdim = arguments.plain_number("pairwise_distance", "eps", eps), bool(keepdim)
    x1, x2 = _operands("pairwise_distance", x1, x2)
    difference = x1 - x2 + eps
    if len(difference.shape) == 0:  # (PyTorch's norm of a 0-d difference: its absolute value)
        difference, keepdim = ops.reshape(difference, (1,)), False
    magnitude = ops.abs(difference)
    if p == 0:
        return ops.sum(ops.cast_like(ops.stop_gradient(magnitude) != 0, magnitude), -1, keepdim)
    if p == math.inf:
        return ops.amax(magnitude, -1, keepdim)
    if p == -math.inf:
        return -ops.amax(-magnitude, -1, keepdim)
    if p == 2:
        return _power_of_positive(ops.sum(difference * difference, -1, keepdim), 0.5)
    if p > 0:
        return _power_of_positive(ops.sum(_power_of_positive(magnitude, p), -1, keepdim), 1.0 / p)
    # (p < 0: an element of 0 is an infinite power, and the norm 0, with gradient 0 throughout, as PyTorch's)
    zero = magnitude == 0
    powers = ops.where(zero, ops.zeros_like(magnitude) + math.inf,
                       ops.where(zero, ops.zeros_like(magnitude) + 1.0, magnitude) ** p)
    return ops.sum(powers, -1, keepdim) ** (1.0 / p)
