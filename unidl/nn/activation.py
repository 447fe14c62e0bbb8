"""Activations as layers, with PyTorch's constructor arguments and defaults: ``ReLU``, ``LeakyReLU``, ``Sigmoid``,
``Tanh``, ``Softmax``, ``LogSoftmax``, ``GELU``, ``SiLU``, ``ELU``, ``Softplus``, ``Hardtanh``, ``ReLU6``, ``PReLU``,
``Mish``, ``Hardswish``, ``Hardsigmoid``, ``SELU``, ``CELU``, ``Softsign``, ``LogSigmoid``, ``Softmin``, ``GLU``,
``Tanhshrink``, ``Softshrink``, ``Hardshrink``, ``Threshold``. ``inplace`` is accepted for PyTorch's signature
where PyTorch takes it; unidl's ops never modify their input."""

from __future__ import annotations

import numpy as np

from unidl import arguments, ops as functional
from unidl import activation_ops, input_checks  # (after ops, which imports them first: they import each other)
from unidl.arguments import positive_int
from unidl.errors import ShapeMismatchError
from unidl.nn.module import Module


def _floats(layer, x):
    """``x`` as the functional op takes it: integers and booleans become floats of the dtype in force, as
    ``ud.ops.sigmoid`` makes them (the layers passed them to the framework, which refused them or gave float64)."""
    return input_checks.as_floating(layer.describe, "input", x)


class _Inplace(Module):
    """``inplace`` accepted for PyTorch's signature (not shown by the repr: PyTorch's Hardswish and Hardsigmoid);
    unidl's ops never modify their input."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)


class _InplaceShown(_Inplace):
    """``inplace`` accepted for PyTorch's signature and shown by the repr, as PyTorch's."""

    def _with_inplace(self, shown: str) -> str:
        """The repr's ``shown`` arguments followed by ``inplace=True`` where it was given, as PyTorch's."""
        return ", ".join(part for part in (shown, "inplace=True" if self.inplace else "") if part)

    def extra_repr(self):
        return self._with_inplace("")


class _Elementwise(Module):
    """An activation that is its functional op of the input alone (``function``, called with ``arguments()``)."""

    function = None

    def arguments(self) -> tuple:
        return ()

    def forward(self, x):
        return type(self).function(x, *self.arguments())


class ReLU(_InplaceShown):
    """max(x, 0). ``inplace`` is accepted for PyTorch's signature; unidl's ops never modify their input."""

    def forward(self, x):
        input_checks.check_numbers(self.describe, x)
        return self._ops.relu(x)


class LeakyReLU(_InplaceShown):
    """x if x > 0 else negative_slope * x (PyTorch's default slope 0.01). ``inplace`` is accepted for PyTorch's
    signature; unidl's ops never modify their input."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__(inplace)
        self.negative_slope = float(activation_ops.number("LeakyReLU", "negative_slope", negative_slope))

    def forward(self, x):
        return self._ops.leaky_relu(_floats(self, x), self.negative_slope)

    def extra_repr(self):
        return self._with_inplace(f"negative_slope={self.negative_slope}")


class RReLU(Module):
    """The randomized leaky ReLU, as ``torch.nn.RReLU``: x if x > 0 else a * x. In training every element of
    x <= 0 draws its own slope a uniformly from [lower, upper], its gradient a; in eval a = (lower + upper) / 2.
    The slopes come from the backend's generator (``Backend.generator``, seeded by ``ud.manual_seed``), as
    ``Dropout``'s masks: a fresh draw at every call, inside a compiled ``train_step`` too, and, as those masks,
    differing across backends. ``lower > upper`` is a ``ValueError``; ``inplace`` is PyTorch's signature (never in
    place).

    Args:
        lower: the smallest slope (1/8).
        upper: the largest slope (1/3).
        inplace: accepted, and shown by the repr, as PyTorch's.
    """

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3, inplace: bool = False):
        super().__init__()
        self.lower, self.upper = activation_ops.rrelu_bounds("RReLU", lower, upper)
        self.inplace = bool(inplace)

    def forward(self, x):
        x = _floats(self, x)
        return activation_ops.rrelu(x, self.lower, self.upper, self.training,
                                    generator=self._backend.generator() if self.training else None)

    def extra_repr(self):
        return f"lower={self.lower}, upper={self.upper}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x):
        return self._ops.sigmoid(_floats(self, x))


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x):
        return self._ops.tanh(_floats(self, x))


class Softmax(Module):
    """exp(x) / sum(exp(x)) along ``dim``. ``dim=None`` (``torch.nn.Softmax``'s default) picks PyTorch's implicit
    axis (0 for inputs of rank 0, 1 or 3, else 1: not the last axis of a sequence's), with its warning; give
    ``dim`` explicitly."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = arguments.axis("Softmax", "dim", dim)

    def forward(self, x):
        x = _floats(self, x)
        input_checks.check_axes(self.describe, "dim", self.dim, x)
        return self._ops.softmax(x, self.dim if self.dim is not None else functional.implicit_softmax_dim("Softmax", x))

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax2d(Module):
    """Softmax over the channels of each position of (N, C, H, W) or (C, H, W) input (axis -3), as
    ``torch.nn.Softmax2d``; another rank is a ``ShapeMismatchError`` (PyTorch's ``ValueError``)."""

    def forward(self, x):
        rank = len(tuple(x.shape))
        if rank not in (3, 4):
            raise ShapeMismatchError(f"{self.describe()}: expected input to be 3D or 4D, (N, C, H, W) or (C, H, W), "
                                     f"got {rank}D instead")
        return self._ops.softmax(_floats(self, x), -3)


class LogSoftmax(Module):
    """log(softmax(x)) along ``dim``, computed stably. ``dim=None`` picks PyTorch's implicit axis
    (0 for inputs of rank 0, 1 or 3, else 1), with its warning; give ``dim`` explicitly."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = arguments.axis("LogSoftmax", "dim", dim)

    def forward(self, x):
        x = _floats(self, x)
        input_checks.check_axes(self.describe, "dim", self.dim, x)
        return self._ops.log_softmax(x, self.dim if self.dim is not None else
                                     functional.implicit_softmax_dim("LogSoftmax", x))

    def extra_repr(self):
        return f"dim={self.dim}"


class GELU(Module):
    """x * Phi(x), Phi the standard normal CDF; ``approximate='tanh'`` uses
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), as PyTorch."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return self._ops.gelu(_floats(self, x), self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(_InplaceShown):
    """x * sigmoid(x). ``inplace`` is accepted for PyTorch's signature; unidl's ops never modify their input."""

    def forward(self, x):
        return functional.silu(_floats(self, x))  # (half input rounded once, as the op's)


class ELU(_InplaceShown):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__(inplace)
        self.alpha = float(activation_ops.number("ELU", "alpha", alpha))

    def forward(self, x):
        return self._ops.elu(_floats(self, x), self.alpha)

    def extra_repr(self):
        return self._with_inplace(f"alpha={self.alpha}")


class Softplus(Module):
    """log(1 + exp(beta * x)) / beta, reverting to x where beta * x > threshold."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        beta, threshold = (activation_ops.number("Softplus", name, value) for name, value in
                           (("beta", beta), ("threshold", threshold)))
        if beta == 0:  # (a negative beta is PyTorch's formula too; 0 divides by it)
            raise ValueError(f"Softplus beta must not be 0 (log(1 + exp(beta * x)) / beta), got {beta!r}")
        self.beta, self.threshold = float(beta), float(threshold)
        self._given = (beta, threshold)  # (the repr shows them as given, as PyTorch's: beta=2, not 2.0)

    def forward(self, x):
        return functional.softplus(_floats(self, x), self.beta, self.threshold)  # (rounded once)

    def extra_repr(self):
        return "beta={}, threshold={}".format(*self._given)


class Hardtanh(_InplaceShown):
    """x limited to [min_val, max_val] (gradient 1 strictly inside, 0 outside)."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        super().__init__(inplace)
        if not max_val > min_val:
            raise ValueError(f"{type(self).__name__} max_val must be greater than min_val, got "
                             f"min_val={min_val!r}, max_val={max_val!r}")
        self.min_val, self.max_val = float(min_val), float(max_val)
        self._given = (min_val, max_val)  # (the repr's, as PyTorch's)

    def forward(self, x):
        input_checks.check_numbers(self.describe, x)
        input_checks.check_bounds(self.describe, x, (self.min_val, self.max_val), floats=True)
        return self._ops.hardtanh(x, self.min_val, self.max_val)

    def extra_repr(self):
        return self._with_inplace("min_val={}, max_val={}".format(*self._given))


class ReLU6(Hardtanh):
    """min(max(x, 0), 6)."""

    def __init__(self, inplace: bool = False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self):
        return self._with_inplace("")


class PReLU(Module):
    """x if x >= 0 else weight * x, with a learnt ``weight``: one for all channels (``num_parameters=1``)
    or one per channel (axis 1 of the input), each starting at ``init``. Parameter ``weight``
    (num_parameters,), as in PyTorch."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        super().__init__()
        num_parameters = positive_int("PReLU", "num_parameters", num_parameters)
        self.num_parameters = num_parameters
        self.weight = self.parameter(np.full((num_parameters,), float(init)))

    def _mismatch(self, owner, received) -> str:
        return (f"{owner} has one weight per channel: it expected input of shape (N, {self.num_parameters}, ...), "
                f"received {received}")

    def forward(self, x):
        shape = tuple(x.shape)
        if self.num_parameters > 1 and (len(shape) < 2 or shape[1] not in (self.num_parameters, None)):
            raise ShapeMismatchError(self._mismatch(self.describe(), shape))
        if self.num_parameters > 1 and shape[1] is None:  # (a graph traced for any sizes: checked when it runs)
            x = input_checks.require_sizes(self.describe, x, {1: self.num_parameters}, self._mismatch)
        input_checks.check_parameters_dtype(self.describe, x, self.weight)
        return functional.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class Mish(_InplaceShown, _Elementwise):
    """x * tanh(softplus(x))."""

    function = staticmethod(activation_ops.mish)


class Hardswish(_Inplace, _Elementwise):
    """x * relu6(x + 3) / 6 (gradient 0 at -3 and 1 at 3, as PyTorch's)."""

    function = staticmethod(activation_ops.hardswish)


class Hardsigmoid(_Inplace, _Elementwise):
    """relu6(x + 3) / 6 (gradient 1/6 strictly inside (-3, 3), 0 elsewhere)."""

    function = staticmethod(activation_ops.hardsigmoid)


class SELU(_InplaceShown, _Elementwise):
    """scale * elu(x, alpha), alpha = 1.6732632..., scale = 1.0507009... (PyTorch's constants)."""

    function = staticmethod(activation_ops.selu)


class CELU(_InplaceShown, _Elementwise):
    """x if x > 0 else alpha * (exp(x / alpha) - 1), for any non-zero ``alpha``; ``alpha=0``, which PyTorch refuses
    when it runs (a RuntimeError), is a ``ValueError`` when the layer is built."""

    function = staticmethod(activation_ops.celu)

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__(inplace)
        self.alpha = activation_ops.celu_alpha("CELU", alpha)  # (as given: the repr's, as PyTorch's)

    def arguments(self):
        return (self.alpha,)

    def extra_repr(self):
        return self._with_inplace(f"alpha={self.alpha}")


class Softsign(_Elementwise):
    """x / (1 + |x|)."""

    function = staticmethod(activation_ops.softsign)


class LogSigmoid(_Elementwise):
    """log(sigmoid(x)), computed stably."""

    function = staticmethod(activation_ops.logsigmoid)


class Tanhshrink(_Elementwise):
    """x - tanh(x)."""

    function = staticmethod(activation_ops.tanhshrink)


class Softmin(Module):
    """softmax(-x) along ``dim``. ``dim=None`` (``torch.nn.Softmin``'s default) picks PyTorch's implicit axis
    (0 for inputs of rank 0, 1 or 3, else 1), with its warning; give ``dim`` explicitly."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = arguments.axis("Softmin", "dim", dim)

    def forward(self, x):
        return activation_ops.softmin(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class GLU(Module):
    """a * sigmoid(b), ``a`` and ``b`` the two halves of the input along ``dim`` (an odd size there is a
    ``ShapeMismatchError`` naming it)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = arguments.axis("GLU", "dim", dim, optional=False)

    def forward(self, x):
        return activation_ops.glu(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class _Shrink(_Elementwise):
    """A shrink of the input toward 0 by ``lambd``, shown by the repr as given, as PyTorch's (``Softshrink(1)``)."""

    def __init__(self, lambd: float = 0.5):
        super().__init__()
        self.lambd = self._checked(lambd)

    @staticmethod
    def _checked(lambd):
        raise NotImplementedError

    def arguments(self):
        return (self.lambd,)

    def extra_repr(self):
        return f"{self.lambd}"


class Softshrink(_Shrink):
    """x - lambd above lambd, x + lambd below -lambd, 0 between. A negative ``lambd``, which PyTorch refuses when it
    runs (a RuntimeError), is a ``ValueError`` when the layer is built."""

    function = staticmethod(activation_ops.softshrink)

    @staticmethod
    def _checked(lambd):
        return activation_ops.shrink_lambd("Softshrink", lambd)


class Hardshrink(_Shrink):
    """x outside [-lambd, lambd], 0 on it."""

    function = staticmethod(activation_ops.hardshrink)

    @staticmethod
    def _checked(lambd):
        return activation_ops.number("Hardshrink", "lambd", lambd)


class Threshold(_InplaceShown, _Elementwise):
    """x where x > threshold, else ``value`` (integers stay integers, as PyTorch's)."""

    function = staticmethod(activation_ops.threshold)

    def __init__(self, threshold: float, value: float, inplace: bool = False):
        super().__init__(inplace)
        self.threshold = activation_ops.number("Threshold", "threshold", threshold)
        self.value = activation_ops.number("Threshold", "value", value)

    def arguments(self):
        return (self.threshold, self.value)

    def extra_repr(self):
        return self._with_inplace(f"threshold={self.threshold}, value={self.value}")
