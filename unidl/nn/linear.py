"""``Linear``: y = x W^T + b, with W stored as (out_features, in_features) on every backend."""

from __future__ import annotations

from unidl import input_checks
from unidl.arguments import positive_int
from unidl.errors import ShapeMismatchError
from unidl.input_checks import check_floating
from unidl.nn import init
from unidl.nn.module import Module


class Linear(Module):
    """Fully connected layer, ``y = x @ weight.T + bias``: (*, in_features) -> (*, out_features), one sample
    (in_features,) -> (out_features,) too, as in PyTorch. Integer input is a ``DtypeMismatchError``.

    Args:
        in_features: size of each input sample (the last axis).
        out_features: size of each output sample.
        bias: learn an additive bias (default True).

    Weights start as in PyTorch: U(-1/sqrt(in_features), 1/sqrt(in_features)) for both.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        in_features = positive_int("Linear", "in_features", in_features)
        out_features = positive_int("Linear", "out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = self.parameter(init.kaiming_uniform((out_features, in_features), in_features))
        self.bias = self.parameter(init.bias_uniform((out_features,), in_features)) if bias else None

    def forward(self, x):
        shape = tuple(x.shape)
        if not shape:  # (PyTorch: "both arguments to linear need to be at least 1D")
            raise ShapeMismatchError(f"{self.describe()} expected input of shape (N, {self.in_features}) or "
                                     f"({self.in_features},), received a 0-d input (shape ())")
        if shape[-1] != self.in_features:
            if shape[-1] is not None:
                raise ShapeMismatchError(self._mismatch(self.describe(), shape))
            # a graph traced for any sizes: checked when it runs (TensorFlow's error at its BiasAdd otherwise)
            x = input_checks.require_sizes(self.describe, x, {-1: self.in_features}, self._mismatch)
        check_floating(self.describe, x)
        input_checks.check_parameters_dtype(self.describe, x, self.weight)
        return self._ops.linear(x, self.weight, self.bias)

    def _mismatch(self, owner, received) -> str:
        return f"{owner} expected input of shape (N, {self.in_features}), received {received}"

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """Returns its input unchanged; takes (and ignores) any constructor arguments, as in PyTorch.
    A placeholder, e.g. for a removed head: ``model.fc = ud.nn.Identity()``."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
