"""``Conv2d``: 2-D convolution over NCHW input with an OIHW kernel, PyTorch's arguments and initialisation."""

from __future__ import annotations

from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.nn.module import Module


def as_pair(owner: str, name: str, value) -> tuple[int, int]:
    """An int or a pair of ints, checked positive, as (height, width)."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{owner} {name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair


def as_padding(owner: str, value, stride) -> tuple[int, int] | str:
    """0, an int, a pair of non-negative ints, 'same' (stride 1 only, as in PyTorch) or 'valid'."""
    if value in ("same", "valid"):
        if value == "same" and stride != (1, 1):
            raise ValueError(f"{owner} padding='same' needs stride=1, got stride={stride}")
        return value
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair):
        raise ValueError(f"{owner} padding must be a non-negative int, a pair of them, 'same' or 'valid'; got {value!r}")
    return pair


def padded_size(size, padding, kernel: int) -> int | None:
    if size is None:
        return None
    if padding == "same":
        return size + kernel - 1
    if padding == "valid":
        return size
    return size + 2 * padding


def check_window_fits(layer: Module, x_shape, kernel, padding) -> None:
    """ValueError when the (padded) spatial size of ``x`` is smaller than the window."""
    for axis, label in ((2, "height"), (3, "width")):
        k = kernel[axis - 2]
        p = padding if isinstance(padding, str) else padding[axis - 2]
        size = padded_size(x_shape[axis], p, k)
        if size is not None and size < k:
            raise ShapeMismatchError(
                f"{layer.describe()}: kernel {label} {k} is larger than the padded input {label} {size} "
                f"(input shape {tuple(x_shape)}); use a smaller kernel, more padding or a larger input")


def check_nchw(layer: Module, x, channels: int | None) -> tuple:
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ShapeMismatchError(f"{layer.describe()} expected NCHW input of rank 4, received shape {shape}")
    if channels is not None and shape[1] is not None and shape[1] != channels:
        raise ShapeMismatchError(
            f"{layer.describe()} expected input of shape (N, {channels}, H, W), received {shape}")
    return shape


class Conv2d(Module):
    """2-D convolution: ``y[n, o] = bias[o] + sum_c weight[o, c] * x[n, c]`` (cross-correlation).

    Args:
        in_channels, out_channels: channel counts of input and output.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw), default 1.
        padding: int, (ph, pw), 'valid' (none) or 'same' (output size = input size, stride 1).
        bias: learn an additive bias per output channel.

    Input (N, in_channels, H, W); weight (out_channels, in_channels, kh, kw), initialised as in
    PyTorch (Kaiming-uniform with a=sqrt(5), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Conv2d {label} must be a positive integer, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = as_pair("Conv2d", "kernel_size", kernel_size)
        self.stride = as_pair("Conv2d", "stride", stride)
        self.padding = as_padding("Conv2d", padding, self.stride)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight = self.parameter(init.kaiming_uniform((out_channels, in_channels) + self.kernel_size, fan_in))
        self.bias = self.parameter(init.bias_uniform((out_channels,), fan_in)) if bias else None

    def forward(self, x):
        shape = check_nchw(self, x, self.in_channels)
        check_window_fits(self, shape, self.kernel_size, self.padding)
        return self._ops.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, bias={self.bias is not None}")
