"""``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d`` and ``AdaptiveMaxPool2d`` over NCHW input, with PyTorch's arguments and
semantics: floor mode by default (``ceil_mode`` adds PyTorch's last, partial windows), zero padding counted in
an average unless ``count_include_pad=False``, padding -inf for a maximum."""

from __future__ import annotations

from unidl import input_checks, ops as functional
from unidl.nn.conv import as_pair, check_nchw
from unidl.nn.module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
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
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x):
        check_nchw(self, x, None)
        x = input_checks.check_window_fits(self.describe, x, self.kernel_size, self.padding,
                                           "use a smaller kernel, more padding or a larger input")
        return self._pool(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        text = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        return text + ", ceil_mode=True" if self.ceil_mode else text


class MaxPool2d(_Pool2d):
    """Maximum over each window (padding counts as -inf), as ``torch.nn.MaxPool2d``. ``dilation`` other than 1
    and ``return_indices=True`` are not supported (a ``ValueError`` on every backend)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        if dilation not in (1, (1, 1), [1, 1]):
            raise ValueError(f"MaxPool2d dilation={dilation!r} is not supported; only dilation=1")
        if return_indices:
            raise ValueError("MaxPool2d return_indices=True is not supported; use return_indices=False")

    def _pool(self, x, kernel, stride, padding):
        if self.ceil_mode:
            return functional.max_pool2d(x, kernel, stride, padding, ceil_mode=True)
        return self._ops.max_pool2d(x, kernel, stride, padding)


class AvgPool2d(_Pool2d):
    """Mean over each window, as ``torch.nn.AvgPool2d``: zero padding counts in the divisor unless
    ``count_include_pad=False``; ``divisor_override`` divides every window's sum by that number instead."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        if divisor_override is not None and (not isinstance(divisor_override, int) or isinstance(divisor_override, bool)
                                             or divisor_override <= 0):
            raise ValueError(f"AvgPool2d divisor_override must be a positive int or None, got {divisor_override!r}")
        self.count_include_pad, self.divisor_override = bool(count_include_pad), divisor_override

    def _pool(self, x, kernel, stride, padding):
        if self.ceil_mode or not self.count_include_pad or self.divisor_override is not None:
            return functional.avg_pool2d(x, kernel, stride, padding, ceil_mode=self.ceil_mode,
                                         count_include_pad=self.count_include_pad,
                                         divisor_override=self.divisor_override)
        return self._ops.avg_pool2d(x, kernel, stride, padding)

    def extra_repr(self):
        text = super().extra_repr()
        if not self.count_include_pad:
            text += ", count_include_pad=False"
        return text + (f", divisor_override={self.divisor_override}" if self.divisor_override is not None else "")


class _AdaptivePool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        pair = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
        if len(pair) != 2 or not all(o is None or (isinstance(o, int) and not isinstance(o, bool) and o > 0)
                                     for o in pair):
            raise ValueError(f"{type(self).__name__} output_size must be a positive int or a pair of them (None keeps "
                             f"that axis), got {output_size!r}")
        self.output_size = pair

    def forward(self, x):
        check_nchw(self, x, None)
        return self._pool(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Mean over ``output_size`` bins of NCHW input, as ``torch.nn.AdaptiveAvgPool2d``: bin i of an axis of size n
    spans [floor(i * n / out), ceil((i + 1) * n / out)). ``output_size``: an int or (oh, ow), None keeping that
    axis' size. ``AdaptiveAvgPool2d(1)`` is global average pooling."""

    _pool = staticmethod(functional.adaptive_avg_pool2d)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Maximum over the bins of ``AdaptiveAvgPool2d``, as ``torch.nn.AdaptiveMaxPool2d``; ``return_indices=True``
    is not supported (a ``ValueError`` on every backend)."""

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        if return_indices:
            raise ValueError("AdaptiveMaxPool2d return_indices=True is not supported; use return_indices=False")

    _pool = staticmethod(functional.adaptive_max_pool2d)
