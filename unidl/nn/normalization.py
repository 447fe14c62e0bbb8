"""``LayerNorm`` and ``RMSNorm`` (over each sample's last axes) and ``GroupNorm`` (over groups of channels), with
PyTorch's arguments, parameters and defaults."""

from __future__ import annotations

import numpy as np

from unidl import arguments, dtype_kinds, input_checks, ops as functional
from unidl.arguments import positive_int
from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.nn.module import Module


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, the mean and biased variance taken over the last
    ``len(normalized_shape)`` axes of each sample (in training and evaluation alike).

    Args:
        normalized_shape: int or tuple, the shape of those last axes.
        eps: added to the variance.
        elementwise_affine: learn ``weight`` (starting at 1) of shape ``normalized_shape``.
        bias: with ``elementwise_affine``, learn ``bias`` (starting at 0) too.

    Example::

        norm = ud.nn.LayerNorm(64)          # x: (batch, time, 64)
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        shape = arguments.normalized_shape("LayerNorm", normalized_shape)
        self.normalized_shape = shape
        self.elementwise_affine = elementwise_affine = arguments.flag("LayerNorm", "elementwise_affine",
                                                                      elementwise_affine)
        self.eps = arguments.check_range("LayerNorm", "eps", eps, low_open=True)
        self.weight = self.parameter(init.ones(shape)) if elementwise_affine else None
        self.bias = self.parameter(init.zeros(shape)) if elementwise_affine and bias else None

    def forward(self, x):
        x = input_checks.check_normalized_input(self.describe, x, self.normalized_shape)
        if self.weight is None:  # (no weight to compare with: PyTorch's kernels take floats only)
            input_checks.check_floating(self.describe, x)
        mixed = input_checks.check_parameters_dtype(self.describe, x, self.weight, halves=True, autocast=False)
        return functional._layer_norm_as_torch(self._ops, x, self.normalized_shape, self.weight, self.bias,
                                               self.eps, mixed)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, the mean taken over the last ``len(normalized_shape)`` axes of each
    sample, as ``torch.nn.RMSNorm`` (no centring, no bias).

    Args:
        normalized_shape: int or tuple, the shape of those last axes.
        eps: added to the mean square; None (default) is the machine epsilon of the dtype computed in, as PyTorch's:
            float64's for float64 input, float32's otherwise (float16 and bfloat16 input is computed in float32).
        elementwise_affine: learn ``weight`` (starting at 1) of shape ``normalized_shape``.

    Example::

        norm = ud.nn.RMSNorm(64)            # x: (batch, time, 64)
    """

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True):
        super().__init__()
        shape = arguments.normalized_shape("RMSNorm", normalized_shape)
        self.normalized_shape = shape
        self.elementwise_affine = elementwise_affine = arguments.flag("RMSNorm", "elementwise_affine",
                                                                      elementwise_affine)
        self.eps = None if eps is None else arguments.check_range("RMSNorm", "eps", eps)
        self.weight = self.parameter(init.ones(shape)) if elementwise_affine else None

    def forward(self, x):
        ops = self._ops
        x = input_checks.check_normalized_input(self.describe, x, self.normalized_shape)
        if self.weight is None:  # (no weight to compare with: PyTorch's kernels take floats only)
            input_checks.check_floating(self.describe, x)
        mixed = input_checks.check_parameters_dtype(self.describe, x, self.weight, halves=True, autocast=False)
        given, weight = x, self.weight
        if mixed or dtype_kinds.is_half(x.dtype):  # (PyTorch's opmath: float32)
            x = ops.cast(x, "float32")
            weight = None if weight is None else ops.cast(weight, "float32")
        eps = self.eps if self.eps is not None else float(np.finfo(input_checks.dtype_name(x.dtype)).eps)
        axes = tuple(range(-len(self.normalized_shape), 0))
        y = x / ops.sqrt(functional.mean(ops.square(x), axes, keepdim=True) + eps)
        if weight is not None:
            y = y * weight
        return y if x is given else ops.cast_like(y, given)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, the mean and biased variance taken over each sample's
    group of ``num_channels / num_groups`` channels and all their positions, as ``torch.nn.GroupNorm``.

    Args:
        num_groups: how many groups the channels (axis 1) are split into; it must divide ``num_channels``.
        num_channels: C of the (N, C, *) input.
        eps: added to the variance.
        affine: learn a per-channel ``weight`` (starting at 1) and ``bias`` (starting at 0).
        bias: with ``affine``, whether there is a ``bias`` (False: the weight alone, as PyTorch's ``bias=False``).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 bias: bool = True):
        super().__init__()
        num_groups = positive_int("GroupNorm", "num_groups", num_groups)
        num_channels = positive_int("GroupNorm", "num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels = num_groups, num_channels
        self.affine = affine = arguments.flag("GroupNorm", "affine", affine)
        self.eps = arguments.check_range("GroupNorm", "eps", eps, low_open=True)
        self.weight = self.parameter(init.ones((num_channels,))) if affine else None
        self.bias = self.parameter(init.zeros((num_channels,))) if affine and bias else None

    def _mismatch(self, owner, received) -> str:
        return f"{owner} expected input of shape (N, {self.num_channels}, *), received {received}"

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) < 2 or (shape[1] is not None and shape[1] != self.num_channels):
            raise ShapeMismatchError(self._mismatch(self.describe(), shape))
        if shape[1] is None:  # (a graph traced for any sizes: checked when it runs)
            x = input_checks.require_sizes(self.describe, x, {1: self.num_channels}, self._mismatch)
        if self.weight is None:  # (no weight to compare with: PyTorch's kernels take floats only)
            input_checks.check_floating(self.describe, x)
        if input_checks.check_parameters_dtype(self.describe, x, self.weight, halves=True, autocast=False):
            return functional.cast_like(functional.group_norm(functional.cast(x, "float32"), self.num_groups,
                                                              self.weight, self.bias, self.eps), x)
        return functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")
