"""``MaxPool2d``, ``MaxUnpool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d`` and ``AdaptiveMaxPool2d`` over NCHW input, and
``MaxPool1d``, ``AvgPool1d``, ``AdaptiveAvgPool1d`` and ``AdaptiveMaxPool1d`` over NCL input (``ud.ops.max_pool1d``,
...: pooled as (N, C, 1, L) by the 2-d ones' arithmetic), with PyTorch's arguments and semantics: floor mode by
default (``ceil_mode`` adds PyTorch's last, partial windows), zero padding counted in an average unless
``count_include_pad=False``, padding -inf for a maximum; ``MaxPool2d``'s ``return_indices`` gives the positions
that ``MaxUnpool2d`` writes back to."""

from __future__ import annotations

from unidl import arguments, input_checks, ops as functional, spatial1d_ops, spatial_ops
from unidl.errors import PoolPaddingError, ShapeMismatchError
from unidl.nn.conv import check_nchw, unbatched
from unidl.nn.module import Module


def _window(owner: str, kernel_size, stride, padding, rank: int = 2):
    """``(kernel, stride, padding)`` tuples of ``rank`` ints of a pooling layer named ``owner`` (stride defaults to
    the kernel); ``ValueError`` for a padding that is not a non-negative int or ``rank`` of them."""
    kernel = arguments.ints(owner, "kernel_size", kernel_size, rank)
    given = stride is not None and arguments.sequence(stride) != ()  # an empty stride is the kernel, as in torch
    stride = arguments.ints(owner, "stride", stride, rank) if given else kernel
    return kernel, stride, arguments.ints(owner, "padding", padding, rank, minimum=0)


def _check_spatial(layer: Module, x) -> None:
    """``ShapeMismatchError`` naming ``layer`` for input of another rank than (N, C, *spatial) (``layer.rank``
    spatial axes; one sample without its batch axis is unbatched before)."""
    if layer.rank == 2:
        check_nchw(layer, x, None)
    elif len(tuple(x.shape)) != 3:
        raise ShapeMismatchError(f"{layer.describe()} expected NCL input of rank 3 (or one sample (C, L)), received "
                                 f"shape {tuple(x.shape)}")


class _Pool2d(Module):
    _averages = False  # a mean of each window (floats only), or its maximum (any numbers)
    rank = 2  # spatial axes (one sample (C, H, W) is taken too: ``unbatched``)

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        owner = type(self).__name__
        self.kernel_size, self.stride, self.padding = _window(owner, kernel_size, stride, padding, self.rank)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise PoolPaddingError(f"{owner} padding {padding!r} must be non-negative and at most half the kernel "
                                   f"size {self.kernel_size}")
        self.ceil_mode = bool(ceil_mode)
        # the arguments as given, as torch.nn's reprs print them (stride: the kernel size where None)
        self._given = dict(kernel_size=kernel_size, stride=kernel_size if stride is None else stride, padding=padding)

    @unbatched
    def forward(self, x):
        _check_spatial(self, x)
        if self.rank == 1:
            return spatial1d_ops.pool1d(self.describe, x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                        **self._options())
        input_checks.check_poolable(self.describe, x, average=self._averages)
        spans = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self._dilation()))
        x = input_checks.check_window_fits(self.describe, x, spans, self.padding,
                                           "use a smaller kernel, more padding or a larger input")
        return self._pool(x, self.kernel_size, self.stride, self.padding)

    def _dilation(self):
        """The distance between a window's taps per axis (a maximum's ``dilation``; an average's are adjacent)."""
        return (1,) * self.rank

    def extra_repr(self):
        return ", ".join(f"{key}={value}" for key, value in self._given.items())


class _MaxPool(_Pool2d):
    """What ``MaxPool1d`` and ``MaxPool2d`` share."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.dilation = arguments.ints(type(self).__name__, "dilation", dilation, self.rank)
        self.return_indices = bool(return_indices)
        self._given.update(dilation=dilation, ceil_mode=ceil_mode)

    def _options(self):
        return {"return_indices": self.return_indices, "dilation": self.dilation}

    def _dilation(self):
        return self.dilation

    def _pool(self, x, kernel, stride, padding):
        if self.return_indices or self.ceil_mode or self.dilation != (1, 1):
            return functional._max_pool2d(x, kernel, stride, padding, self.ceil_mode, self.return_indices,
                                          self.dilation)
        return self._ops.max_pool2d(x, kernel, stride, padding)


class MaxPool2d(_MaxPool):
    """Maximum over each window (padding counts as -inf), as ``torch.nn.MaxPool2d``. ``return_indices=True``:
    the layer returns ``(output, indices)``, each index (int64) the position of the window's maximum in the
    flattened H * W plane of its sample and channel (PyTorch's layout, what ``MaxUnpool2d`` takes).
    ``dilation``: the window's taps that far apart (an int or a pair), as PyTorch's."""


class MaxPool1d(_MaxPool):
    """Maximum over each window of (N, C, L) or (C, L) input (padding counts as -inf), as ``torch.nn.MaxPool1d``:
    ``MaxPool2d``'s arguments, each one int. ``return_indices=True``: ``(output, indices)``, each index (int64) the
    window's maximum's position along L. ``dilation``: the window's taps that far apart, as PyTorch's."""

    rank = 1


class MaxUnpool2d(Module):
    """The partial inverse of ``MaxPool2d(..., return_indices=True)``, as ``torch.nn.MaxUnpool2d``: zeros
    everywhere but at the pooled maxima's positions, which get the input's values. ``forward(x, indices,
    output_size=None)``: the output is (h - 1) * stride - 2 * padding + kernel_size per axis, or
    ``output_size`` ((H, W) or (N, C, H, W)) where pooling lost a remainder; it must lie strictly within
    ``stride`` of that size.

    Example::

        pool, unpool = ud.nn.MaxPool2d(2, return_indices=True), ud.nn.MaxUnpool2d(2)
        y, indices = pool(x)
        restored = unpool(y, indices, output_size=ud.ops.shape(x))

    (``ud.ops.shape``: ints, or scalar tensors for the sizes a graph leaves unknown, which ``x.shape`` gives as
    None inside a TensorFlow graph, a ``ValueError`` saying so.)
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _window(type(self).__name__, kernel_size, stride, padding)

    def forward(self, x, indices, output_size=None):
        check_nchw(self, x, None)  # (output_size's sizes are read by spatial_ops.spatial_output_size)
        return functional.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _AvgPool(_Pool2d):
    """What ``AvgPool1d`` and ``AvgPool2d`` share."""

    _averages = True

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        if divisor_override is not None:
            divisor_override = arguments.positive_int(type(self).__name__, "divisor_override", divisor_override)
        self.count_include_pad, self.divisor_override = bool(count_include_pad), divisor_override

    def _options(self):
        return {"count_include_pad": self.count_include_pad}  # (no divisor_override in 1-d)

    def _pool(self, x, kernel, stride, padding):
        if self.ceil_mode or not self.count_include_pad or self.divisor_override is not None:
            return functional._avg_pool2d(x, kernel, stride, padding, self.ceil_mode, self.count_include_pad,
                                          self.divisor_override)
        return self._ops.avg_pool2d(x, kernel, stride, padding)


class AvgPool2d(_AvgPool):
    """Mean over each window, as ``torch.nn.AvgPool2d``: zero padding counts in the divisor unless
    ``count_include_pad=False``; ``divisor_override`` divides every window's sum by that number instead."""


class AvgPool1d(_AvgPool):
    """Mean over each window of (N, C, L) or (C, L) input, as ``torch.nn.AvgPool1d``: ``AvgPool2d``'s arguments,
    each one int, but ``divisor_override`` (which PyTorch's 1-d pooling lacks)."""

    rank = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        # (torch.nn's repr prints them as 1-tuples)
        self._given = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)


class _AdaptivePool2d(Module):
    rank = 2  # spatial axes (one sample (C, H, W) is taken too: ``unbatched``)

    def __init__(self, output_size):
        super().__init__()
        owner = type(self).__name__
        self.output_size = (arguments.sizes_or_none(owner, "output_size", output_size, 2) if self.rank == 2 else
                            arguments.ints(owner, "output_size", output_size, 1))
        self._given = output_size  # (as torch.nn's repr prints it)

    @unbatched
    def forward(self, x):
        _check_spatial(self, x)
        if self.rank == 1:
            return spatial1d_ops.adaptive_pool1d(self.describe, x, self.output_size, self._kind)
        input_checks.check_floating(self.describe, x)  # PyTorch's adaptive poolings take floats only
        return self._pool(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self._given}"


class _AdaptiveAvgPool(_AdaptivePool2d):
    _kind = "avg"
    _pool = staticmethod(spatial_ops._adaptive_avg_pool2d)  # (output_size checked once, in the constructor)


class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """Mean over ``output_size`` bins of NCHW input, as ``torch.nn.AdaptiveAvgPool2d``: bin i of an axis of size n
    spans [floor(i * n / out), ceil((i + 1) * n / out)). ``output_size``: an int or (oh, ow), None keeping that
    axis' size. ``AdaptiveAvgPool2d(1)`` is global average pooling."""


class _AdaptiveMaxPool(_AdaptivePool2d):
    _kind = "max"

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        if return_indices:
            raise ValueError(f"{type(self).__name__} return_indices=True is not supported; use return_indices=False")

    _pool = staticmethod(functional.adaptive_max_pool2d)


class AdaptiveMaxPool2d(_AdaptiveMaxPool):
    """Maximum over the bins of ``AdaptiveAvgPool2d``, as ``torch.nn.AdaptiveMaxPool2d``; ``return_indices=True``
    is not supported (a ``ValueError`` on every backend)."""


class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """Mean over ``output_size`` (a positive int) bins of (N, C, L) or (C, L) input, as
    ``torch.nn.AdaptiveAvgPool1d``: ``AdaptiveAvgPool2d``'s bins along L."""

    rank = 1


class AdaptiveMaxPool1d(_AdaptiveMaxPool):
    """Maximum over the bins of ``AdaptiveAvgPool1d``, as ``torch.nn.AdaptiveMaxPool1d``; ``return_indices=True``
    is not supported (a ``ValueError`` on every backend)."""

    rank = 1
