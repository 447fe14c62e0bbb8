"""``MaxPool2d`` and ``AvgPool2d`` over NCHW input (PyTorch semantics: floor mode, zero padding counted in the average)."""

from __future__ import annotations

from unidl.nn.conv import as_pair, check_nchw, check_window_fits
from unidl.nn.module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        owner = type(self).__name__
        self.kernel_size = as_pair(owner, "kernel_size", kernel_size)
        self.stride = as_pair(owner, "stride", stride) if stride is not None else self.kernel_size
        if isinstance(padding, bool) or not isinstance(padding, (int, tuple, list)):
            raise ValueError(f"{owner} padding must be a non-negative int or pair, got {padding!r}")
        pair = (padding, padding) if isinstance(padding, int) else tuple(padding)
        if len(pair) != 2 or any(not isinstance(p, int) or p < 0 or 2 * p > k for p, k in zip(pair, self.kernel_size)):
            raise ValueError(f"{owner} padding {padding!r} must be non-negative and at most half the kernel size "
                             f"{self.kernel_size}")
        self.padding = pair

    def forward(self, x):
        shape = check_nchw(self, x, None)
        check_window_fits(self, shape, self.kernel_size, self.padding)
        return self._pool(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over each window (padding counts as -inf)."""

    def _pool(self, x, kernel, stride, padding):
        return self._ops.max_pool2d(x, kernel, stride, padding)


class AvgPool2d(_Pool2d):
    """Mean over each window (zero padding counts in the divisor, like PyTorch's default)."""

    def _pool(self, x, kernel, stride, padding):
        return self._ops.avg_pool2d(x, kernel, stride, padding)
