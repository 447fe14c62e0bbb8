"""Spatial functional ops composed once over the registry's ops, so every backend runs the same arithmetic:
``conv1d``, ``conv_transpose2d``, pooling's ``ceil_mode``/``count_include_pad``, adaptive average and maximum pooling,
``group_norm``, channel dropout and ``interpolate``. They are exported as ``ud.ops.<name>``.

Sizes may be unknown while a graph is traced (TensorFlow's ``ud.function`` leaves every dimension open):
what depends on a spatial size is computed with ops from ``ud.ops.shape``, never from a Python int alone.
Resampling (adaptive pooling, interpolation) is a product with a small (out, in) weight matrix per axis,
built from the sizes: exact for nearest (a one-hot row picks the input), PyTorch's weights for bilinear; an input
holding NaN or inf is resampled from each output's taps or bin alone instead (0 * inf in a product is NaN).
Each op (but ``dropout2d``, which draws from the backend's generator) runs as the backend runs a composite
(``Backend.composite``: on JAX, called eagerly, one compiled program rather than one per op inside it).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from unidl import arguments, config, dtype_kinds, input_checks, ops
from unidl.backends.op_registry import CONVERTED, optional_op
from unidl.composites import composite
from unidl.tensors import tensor
from unidl.torch_names import generator_or_inplace


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


def _single(value) -> int:
    return value if isinstance(value, int) else tuple(value)[0]


def _floor(value):
    """floor of a non-negative float tensor, in its own dtype (truncation through int64)."""
    return ops.cast_like(ops.cast(value, "int64"), value)


def _as_float(size, like):
    """A size (an int, or a scalar tensor inside a graph) as a number or tensor of ``like``'s dtype."""
    return size if isinstance(size, int) else ops.cast_like(size, like)


def _quotient(size, other):
    """``size / other`` (sizes: numbers, or a graph's scalar tensors) rounded once, as PyTorch's kernels divide
    them in double: a graph's division by a known size through the backend's ``exact_divide`` where it has one
    (TensorFlow's graph multiplied by the reciprocal, one unit off, and an infinity behind a tap of weight 0 gave
    inf for PyTorch's NaN)."""
    if isinstance(size, (int, float)) and isinstance(other, (int, float)):
        return size / other
    return (optional_op(ops._ops(), "exact_divide") or operator.truediv)(size, other)


def _positions(size, like):
    """0, 1, ..., size - 1 in ``like``'s dtype."""
    return ops.cast_like(_indices(size), like)


def _indices(size):
    """0, 1, ..., size - 1 as int64 (a size: an int, or a graph's scalar tensor)."""
    return ops.arange(0, size, 1, "int64")


def _picks(index, size, like):
    """(len(index), size) in ``like``'s dtype: row j is 1 at position ``index[j]`` (int64), 0 elsewhere."""
    return ops.cast_like(ops.unsqueeze(_indices(size), 0) == ops.unsqueeze(index, 1), like)


def _constant(array, like):
    """A NumPy array (computed in float64) as a tensor of ``like``'s dtype: when every size is known, the small
    resampling matrices are one constant rather than a dozen ops (which eager frameworks dispatch one by one)."""
    return ops.cast_like(tensor(np.asarray(array, np.float64), "float64"), like)


def _computed_like(x):
    """``x``, or for float16 and bfloat16 a float32 slice of it: the dtype in which PyTorch's kernels compute
    half precision (its opmath), whose results they round once to the input's dtype."""
    return ops.cast(x[:1, :1], "float32") if dtype_kinds.is_half(x.dtype) else x


def _widened(x):
    """``x``, float16 and bfloat16 cast to float32 (``_computed_like``'s dtype)."""
    return ops.cast(x, "float32") if dtype_kinds.is_half(x.dtype) else x


def _crop(x, axis, start, stop):
    """``x[..., start:stop, ...]`` along ``axis`` (stop an int, a scalar tensor or None)."""
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


# ---- convolutions --------------------------------------------------------------------------------------------

@composite("x", "weight", "bias")
def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation of (N, C, L) ``x`` with an (out, in / groups, k) ``weight``, as
    ``torch.nn.functional.conv1d`` (padding an int, 'same' or 'valid'): the 2-D kernel over a height of 1. One
    sample (C, L) gives its (out, L'), as PyTorch's; another rank is a ``ShapeMismatchError``."""
    stride, dilation, padding, groups = ops._conv_arguments("conv1d", stride, dilation, padding, groups, rank=1)
    input_checks.check_parameters_dtype("conv1d", x, weight)
    x = ops._check_conv_ranks("conv1d", x, weight, 1)
    if bias is not None:  # (jax promoted the two; tensorflow and keras raised in their own words)
        input_checks.check_parameters_dtype("conv1d", bias, weight, what="bias")
        bias = input_checks.check_conv_bias("conv1d", bias, weight, groups)
    return ops._one_sample_as_batch(x, 1, lambda batch: _conv1d(batch, weight, bias, stride, padding, dilation,
                                                                groups))


def _conv1d(x, weight, bias, stride, padding, dilation, groups):
    """``conv1d`` of a batch (N, C, L), its arguments checked."""
    x, weight = input_checks.check_conv_channels("conv1d", x, weight, groups)
    if padding != "same" and len(x.shape) == 3 and len(weight.shape) == 3:  # a kernel larger than the padded input
        span = _single(dilation) * (input_checks.sizes_of(weight)[2] - 1) + 1
        x = input_checks.check_window_fits("conv1d", x, (span,), ("valid",) if padding == "valid" else
                                           (_single(padding),), "use a smaller kernel or dilation, more padding or "
                                                                "a larger input")
    padding = padding if isinstance(padding, str) else (0, _single(padding))
    y = ops._conv2d(ops.unsqueeze(x, 2), ops.unsqueeze(weight, 2), bias, (1, _single(stride)), padding,
                    (1, _single(dilation)), groups)
    return ops.squeeze(y, 2)


def _spread(x, axis, stride):
    """``x`` with ``stride - 1`` zeros after each element along spatial ``axis`` (2 or 3) of NCHW ``x``."""
    sizes = list(ops.shape(x))
    x = ops.pad(ops.unsqueeze(x, axis + 1), _pad_amounts_for(5, axis + 1, 0, stride - 1))
    sizes[axis] = sizes[axis] * stride
    return ops.reshape(x, sizes)


def _pad_amounts_for(rank, axis, before, after):
    """``pad()``'s amounts (last axis first) that pad only ``axis`` of a rank-``rank`` tensor."""
    amounts = [0, 0] * (rank - axis)
    amounts[-2:] = [before, after]
    return tuple(amounts)


@composite("x", "weight", "bias")
def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The transposed 2-D convolution of NCHW ``x`` with an (in, out / groups, kh, kw) ``weight``, as
    ``torch.nn.functional.conv_transpose2d``: output size (H - 1) * stride - 2 * padding + dilation * (k - 1)
    + output_padding + 1, ``output_padding`` smaller than the stride or the dilation on each axis (a ``ValueError``
    otherwise, as PyTorch's). Computed as the plain convolution of ``x`` spread out by ``stride`` (zeros between
    its elements) and padded by dilation * (k - 1) - padding, with the kernel flipped and its in/out swapped. One
    sample (C, H, W) gives its (out, H', W'), as PyTorch's; another rank is a ``ShapeMismatchError``."""
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d padding must be an int or a pair of ints, got {padding!r}")
    stride, dilation, padding, groups = ops._conv_arguments("conv_transpose2d", stride, dilation, padding, groups)
    input_checks.check_parameters_dtype("conv_transpose2d", x, weight)
    x = ops._check_conv_ranks("conv_transpose2d", x, weight, 2, transposed=True)
    if bias is not None:  # (jax promoted the two; tensorflow and keras raised in their own words)
        input_checks.check_parameters_dtype("conv_transpose2d", bias, weight, what="bias")
        bias = input_checks.check_conv_bias("conv_transpose2d", bias, weight, groups, transposed=True)
    output_padding = arguments.int_or_ints("conv_transpose2d", "output_padding", output_padding, 2, minimum=0)
    arguments.check_output_padding("conv_transpose2d", _pair(output_padding), _pair(stride), _pair(dilation))
    return ops._one_sample_as_batch(x, 2, lambda batch: _conv_transpose2d(batch, weight, bias, stride, padding,
                                                                          output_padding, groups, dilation))


def _conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """``conv_transpose2d`` of a batch (N, C, H, W), its arguments checked."""
    x, weight = input_checks.check_conv_channels("conv_transpose2d", x, weight, groups, transposed=True)
    # sizes: ints, or scalar tensors where a graph leaves them unknown (a TensorFlow ud.function's argument)
    in_channels, out_per_group, kh, kw = input_checks.sizes_of(weight)
    kernel = ops.reshape(weight, (groups, in_channels // groups, out_per_group, kh, kw))
    kernel = ops.reshape(ops.permute(kernel, (0, 2, 1, 3, 4)), (groups * out_per_group, in_channels // groups, kh, kw))
    # flipped by products with the exchange matrix: two exact products, in graphs and eagerly
    kernel = ops.matmul(ops.matmul(_exchange(kh, kernel), kernel), _exchange(kw, kernel))
    strides, pads, extras, dilations = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    for axis, k in ((2, kh), (3, kw)):
        s, p, extra, d = strides[axis - 2], pads[axis - 2], extras[axis - 2], dilations[axis - 2]
        if s > 1:
            x = _spread(x, axis, s)
        before = d * (k - 1) - p
        x = _pad_or_crop(x, axis, before, before + extra - (s - 1))  # _spread left s - 1 zeros at the end
    return ops._conv2d(x, kernel, bias, 1, 0, dilations, groups)


def _exchange(size, like):
    """The (size, size) exchange matrix (ones on the anti-diagonal) in ``like``'s dtype: a constant for a known
    size, built from the graph's scalar for one a graph leaves unknown."""
    if isinstance(size, int):
        return _constant(np.eye(size)[::-1], like)
    return _picks((_as_int64(size) - 1) - _indices(size), size, like)


def _pad_or_crop(x, axis, before, after):
    """``x`` padded with zeros along ``axis`` by ``before`` and ``after`` (ints, or scalar tensors where a graph
    leaves the kernel's size unknown), a negative amount cropping instead."""
    if isinstance(before, int) and isinstance(after, int):
        if before > 0 or after > 0:
            x = ops.pad(x, _pad_amounts_for(4, axis, max(before, 0), max(after, 0)))
        if before < 0 or after < 0:
            x = _crop(x, axis, -before if before < 0 else None, after if after < 0 else None)
        return x
    before, after = _as_int64(before), _as_int64(after)
    sizes = [_as_int64(size) for size in ops.shape(x)]
    length = sizes[axis]

    def zeros(amount):  # zeros of x's shape but ``amount`` (none where it is negative) along ``axis``
        sizes[axis] = ops.maximum(amount, 0)
        return ops.zeros(tuple(sizes), dtype=dtype_kinds.dtype_name(x.dtype))

    x = ops.concat([zeros(before), x, zeros(after)], axis)
    return _crop(x, axis, ops.maximum(-before, 0), ops.maximum(before, 0) + length + after)


# ---- pooling --------------------------------------------------------------------------------------------------

def _pooled_size(size, kernel, stride, padding, ceil_mode):
    """PyTorch's output size of a pooling window along one axis (``size`` an int or a scalar tensor)."""
    out = (size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if not ceil_mode:
        return out
    last_starts_past_input = (out - 1) * stride >= size + padding  # PyTorch drops a window starting in the padding
    if isinstance(size, int):
        return out - 1 if last_starts_past_input else out
    return out - ops.cast_like(last_starts_past_input, out)


@composite("x")
def pool2d_with_options(kind, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    """``max_pool2d``/``avg_pool2d`` with PyTorch's ``ceil_mode``, ``count_include_pad`` and ``divisor_override``,
    over the backend's plain pooling: the input is padded (by ``stride - 1`` more on the right in ceil mode),
    pooled without padding and cropped to PyTorch's output size; an average divides the window's sum by the
    number of counted elements, itself the pooled sum of a mask of ones."""
    kernel = _pair(kernel_size)
    strides = _pair(stride if stride is not None else kernel_size)
    pads = _pair(padding)
    extras = tuple(s - 1 if ceil_mode else 0 for s in strides)
    sizes = ops.shape(x)[2:]
    out = [_pooled_size(n, k, s, p, ceil_mode) for n, k, s, p in zip(sizes, kernel, strides, pads)]
    amounts = (pads[1], pads[1] + extras[1], pads[0], pads[0] + extras[0])

    def pooled(tensor, value, pool):
        y = pool(ops.pad(tensor, amounts, value=value), kernel, strides, 0)
        return y[:, :, :out[0], :out[1]]

    if kind == "max":
        # ceil mode's extra rows and columns (never a window's first element) padded here, the padding given to
        # the backend's pooling, which knows it from the input: a window of nothing but -inf gives its gradient
        # to its first element inside the input, as PyTorch's kernel, not to a pad
        extended = ops.pad(x, (0, extras[1], 0, extras[0]), value=_lowest(x))
        return ops._max_pool2d(extended, kernel, strides, pads)[:, :, :out[0], :out[1]]
    sums = pooled(x, 0.0, ops._avg_pool2d)  # the mean over the whole window: its sum / (kh * kw)
    if divisor_override is not None:
        return sums * (kernel[0] * kernel[1] / divisor_override)
    ones = ops.zeros_like(x[:1, :1]) + 1
    if count_include_pad:  # the padding counts, what ceil mode adds past it does not
        ones = ops.pad(ones, (pads[1], pads[1], pads[0], pads[0]), value=1.0)
        mask = ops.pad(ones, (0, extras[1], 0, extras[0]))
        counts = ops._avg_pool2d(mask, kernel, strides, 0)[:, :, :out[0], :out[1]]
    else:
        counts = pooled(ones, 0.0, ops._avg_pool2d)
    return sums / counts


def _as_int64(size):
    return size if isinstance(size, int) else ops.cast(size, "int64")


@composite("x")
def max_pool2d_with_indices(x, kernel_size, stride=None, padding=0, ceil_mode=False, dilation=1):
    """``max_pool2d`` and, for each window, the position of its maximum as ``torch.nn.functional.max_pool2d(...,
    return_indices=True)`` gives it: an int64 index into the flattened (H * W) plane of the sample's channel, the
    first maximum in the window's row-major order where several are equal (a window of nothing but -inf: its
    first element inside the input, never a pad), its last NaN where it holds NaN. The kh * kw strided views of
    the padded input are stacked and the first view equal to their maximum picks both the value and the offset
    (not ``argmax``, which on TensorFlow starts at the lowest finite value and so can pick a -inf beside it), so
    the gradient flows to the chosen input alone (summed over windows that share it), as PyTorch's does.
    ``dilation``: a window's taps ``dilation`` apart (PyTorch's dilated pooling; what it spans sets the output size)."""
    kernel = _pair(kernel_size)
    strides = _pair(stride if stride is not None else kernel_size)
    pads, dilations = _pair(padding), _pair(dilation)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    height, width = ops.shape(x)[2:]
    out = [_pooled_size(n, k, s, p, ceil_mode) for n, k, s, p in zip((height, width), spans, strides, pads)]
    extras = tuple(s - 1 if ceil_mode else 0 for s in strides)
    amounts = (pads[1], pads[1] + extras[1], pads[0], pads[0] + extras[0])

    def stacked_views(tensor, value):  # (N, C, kh * kw, oh, ow), in the window's row-major order
        padded = ops.pad(tensor, amounts, value=value)
        taps = [range(0, k * d, d) for k, d in zip(kernel, dilations)]  # offsets of the window's rows, columns
        return ops.stack([padded[:, :, i::strides[0], j::strides[1]][:, :, :out[0], :out[1]]
                          for i in taps[0] for j in taps[1]], 2)

    stacked = stacked_views(x, _lowest(x))
    inside = stacked_views(ops.zeros_like(x[:1, :1]) + 1, 0) != 0  # (1, 1, kh * kw, oh, ow): not a pad
    offsets = ops.reshape(ops.arange(0, kernel[0] * kernel[1], 1, "int64"), (1, 1, kernel[0] * kernel[1], 1, 1))
    choice = _first_maximum(stacked, inside, offsets + 1, 2)  # the views are in the window's row-major order
    # the chosen view's value, summed with zeros (exact; the gradient reaches the chosen element only)
    values = ops.sum(ops.where(choice == offsets, stacked, ops.zeros_like(stacked)), 2)
    if not dtype_kinds.is_floating(x.dtype):
        values = ops.cast_like(values, x)  # integers are summed in int64; the maximum keeps the input's dtype
    choice = ops.squeeze(choice, 2)
    rows = ops.unsqueeze(ops.arange(0, _as_int64(out[0]), 1, "int64") * strides[0] - pads[0], 1)
    columns = ops.arange(0, _as_int64(out[1]), 1, "int64") * strides[1] - pads[1]
    indices = ((rows + choice // kernel[1] * dilations[0]) * _as_int64(width) + columns
               + choice % kernel[1] * dilations[1])
    return values, indices


def unpooled_size(owner, x, kernel_size, stride=None, padding=0, output_size=None):
    """The (H, W) that ``max_unpool2d`` writes into: (h - 1) * stride - 2 * padding + kernel by default, or the
    last two entries of ``output_size``, which must lie strictly within ``stride`` of that default (PyTorch's
    rule: the sizes a pooling with these arguments could have come from). Returns the sizes (ints, or scalar
    tensors where a graph leaves the input's size unknown) and ``x`` (carrying that check inside a graph)."""
    kernel = _pair(kernel_size)
    strides = _pair(stride if stride is not None else kernel_size)
    pads = _pair(padding)
    sizes = input_checks.sizes_of(x)
    defaults = [(n - 1) * s - 2 * p + k for n, k, s, p in zip(sizes[2:], kernel, strides, pads)]
    if output_size is None:
        return tuple(defaults), x
    given = spatial_output_size(owner, output_size)
    for axis, (size, default, s) in enumerate(zip(given, defaults, strides)):
        holds = input_checks.all_of([input_checks.holds(default - s < size), input_checks.holds(size < default + s)])

        def template(axis=axis):
            return (f"{input_checks.literal(owner)}: output_size {input_checks.shape_template(len(given))} is "
                    f"inconsistent with the input: its {('height', 'width')[axis]} must lie strictly between {{}} "
                    f"and {{}} (input shape {input_checks.shape_template(len(sizes))})")

        x = input_checks.require(x, holds, template, tuple(given) + (default - s, default + s) + tuple(sizes))
    return given, x


def spatial_output_size(owner, output_size, rank: int = 2) -> tuple:
    """The (H, W) an ``output_size`` argument names: the last two of 2 or 4 sizes (``rank`` 1: the (L,) of 1 or 3),
    each an int or a scalar integer tensor (``ud.ops.shape(x)`` where a graph leaves a size unknown); else a
    ``ValueError`` naming ``owner``, and the fix where a size is None (``x.shape`` while a TensorFlow graph is
    traced)."""
    given = arguments.sequence(output_size)
    if given is not None and len(given) in (rank, rank + 2) and any(size is None for size in given[-rank:]):
        raise ValueError(f"{input_checks.literal(owner)} output_size {output_size!r} holds sizes a graph leaves "
                         f"unknown (x.shape while tracing); give ud.ops.shape(x), whose unknown sizes are tensors, "
                         f"or ints")
    if given is None or len(given) not in (rank, rank + 2) or not all(_is_size(o) for o in given[-rank:]):
        forms = "2 ints (H, W) or 4 (N, C, H, W)" if rank == 2 else "1 int (L,) or 3 (N, C, L)"
        raise ValueError(f"{input_checks.literal(owner)} output_size must be {forms}, got {output_size!r}")
    return tuple(size if (number := arguments.integer(size)) is None else number for size in given[-rank:])


def transposed_output_padding(owner, x, output_size, kernel, strides, pads, dilations):
    """What ``ConvTranspose2d(x, output_size=)`` needs (``torch.nn.ConvTranspose2d._output_padding``): the output
    padding, and the sizes to crop the output to (None where the padding gives them), and ``x`` carrying the check
    that each size lies in [smallest, smallest + stride - 1], the sizes the input can give (smallest: output padding
    0). Where a graph leaves a size unknown, the padding is the largest (stride - 1) and the output is cropped:
    output padding only appends rows and columns, each computed as the others."""
    given, sizes = spatial_output_size(owner, output_size, len(kernel)), input_checks.sizes_of(x)
    labels = ("length",) if len(kernel) == 1 else ("height", "width")
    smallest = [(n - 1) * s - 2 * p + d * (k - 1) + 1
                for n, k, s, p, d in zip(sizes[2:], kernel, strides, pads, dilations)]
    for axis, (size, low, s) in enumerate(zip(given, smallest, strides)):
        holds = input_checks.all_of([input_checks.holds(low <= size), input_checks.holds(size <= low + s - 1)])

        def template(axis=axis):
            return (f"{input_checks.literal(owner)}: output_size {input_checks.shape_template(len(given))} is not a "
                    f"size the input can give: its {labels[axis]} must lie in [{{}}, {{}}] (input shape "
                    f"{input_checks.shape_template(len(sizes))})")

        x = input_checks.require(x, holds, template, tuple(given) + (low, low + s - 1) + tuple(sizes))
    if all(isinstance(n, int) for n in (*given, *smallest)):
        return tuple(n - low for n, low in zip(given, smallest)), None, x
    return tuple(s - 1 for s in strides), given, x


def cropped(x, sizes):
    """NCHW ``x`` cut to its first ``sizes`` (H, W) rows and columns (ints or scalar tensors); NCL ``x`` to its
    first ``sizes`` (L,)."""
    for axis, size in enumerate(sizes, 2):
        x = _crop(x, axis, None, size)
    return x


def _is_size(value) -> bool:
    """An int, or a scalar integer tensor (a size ``ud.ops.shape`` gives where a graph leaves it unknown)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    return shape is not None and len(tuple(shape)) == 0 and dtype is not None and dtype_kinds.is_integer(dtype)


def _bins(size, bins, like):
    """(bins, size) booleans: row i marks PyTorch's adaptive-pooling bin i, [floor(i * size / bins),
    ceil((i + 1) * size / bins)); and each bin's length, (bins, 1)."""
    if isinstance(size, int) and isinstance(bins, int):
        start = np.arange(bins) * size // bins
        end = -(-(np.arange(bins) + 1) * size // bins)
        inside = (np.arange(size) >= start[:, None]) & (np.arange(size) < end[:, None])
        return _constant(inside, like) > 0, _constant((end - start)[:, None], like)
    # in int64, exactly as the NumPy branch (floats rounded 5 * 7 / 7 to 4.99..: bins shifted inside graphs)
    index, total, count = _indices(bins), _as_int64(size), _as_int64(bins)
    start = (index * total) // count
    end = ((index + 1) * total + (count - 1)) // count
    positions = ops.unsqueeze(_indices(size), 0)
    inside = (positions >= ops.unsqueeze(start, 1)) & (positions < ops.unsqueeze(end, 1))
    return inside, ops.cast_like(ops.unsqueeze(end - start, 1), like)


def _bin_matrix(size, bins, like):
    """(bins, size): row i averages adaptive-pooling bin i."""
    inside, lengths = _bins(size, bins, like)
    return ops.cast_like(inside, like) / lengths


def _binned(x, size, bins, fill):
    """``x`` (..., size) spread over the adaptive-pooling bins of its last axis: (..., bins, size), each row the
    inputs of its bin and ``fill`` elsewhere; and ``_bins``' (bins, size) booleans and (bins, 1) lengths."""
    inside, lengths = _bins(size, bins, x)
    spread = ops.unsqueeze(x, -2)  # (..., 1, size) against the (bins, size) mask
    return ops.where(inside, spread, ops.zeros_like(spread) + fill), inside, lengths


def _bin_mean(x, size, bins):
    """The mean of each adaptive-pooling bin along the last axis of ``x``: (..., size) -> (..., bins), the sum of
    its own inputs alone over its length, as PyTorch's kernel (a NaN or an infinity reaches the bins holding it)."""
    masked, _, lengths = _binned(x, size, bins, 0.0)
    return ops.squeeze(ops.sum(masked, -1, keepdim=True) / lengths, -1)


def _bin_maximum(x, size, bins):
    """The maximum of each adaptive-pooling bin along the last axis of ``x``: (..., size) -> (..., bins), with
    PyTorch's gradient: all of it to the bin's first maximum (a bin of -inf: its first position), where the
    reduction's own would split it over equal maxima (zeros after a ReLU, say)."""
    masked, inside, _ = _binned(x, size, bins, float("-inf"))  # every bin holds at least one position
    choice = _first_maximum(masked, inside, ops.arange(1, _as_int64(size) + 1, 1, "int64"), -1)
    # (``choice`` is a position of its bin, always in range: a compiled composite checks no values)
    return ops.squeeze(ops.gather(masked, -1, choice), -1)


def _lowest(x):
    """What padding counts as in a max pooling of ``x``: -inf, or an integer dtype's lowest value."""
    name = input_checks.dtype_name(x.dtype)
    return float("-inf") if input_checks.is_floating(x.dtype) else int(np.iinfo(name).min)


def _first_maximum(values, allowed, order, axis):
    """PyTorch's choice in each window or bin of ``values`` along ``axis`` (int64 positions, the axis kept): its
    first maximum among the ``allowed`` positions (a window of nothing but -inf: its first allowed one, never a
    pad), or its last NaN where it holds NaN (``order``: 1, 2, ... along ``axis``; see ``_last_nan_first``). The
    first maximum is an ``argmax`` of equality with the maximum, not of the values: TensorFlow's starts at the
    lowest finite value and so can pick a -inf beside it."""
    first = ops.argmax(ops.cast(allowed & (values == ops._amax(values, axis, True)), "int32"), axis, True)
    return _last_nan_first(values, ops.cast(first, "int64"), order, axis)


def _last_nan_first(values, choice, order, axis):
    """``choice`` (int64 positions along ``axis``, kept), but where ``values`` holds NaN along ``axis`` the
    position of its last NaN (``order``: 1, 2, ... along ``axis``): a window or bin that holds NaN pools to NaN
    and its gradient goes there, as in PyTorch's max pooling kernels, which take a NaN over any value and a
    later NaN over an earlier one. One reduction: the largest ``order`` of a NaN, 0 where there is none."""
    last = ops._amax(ops.cast(values != values, "int64") * order, axis, True)
    return ops.where(last > 0, last - 1, choice)


@composite("x")
def adaptive_max_pool2d(x, output_size):
    """Maximum over PyTorch's adaptive bins of NCHW ``x`` to ``output_size`` (int or (oh, ow); None keeps that
    axis' size), the bins of ``adaptive_avg_pool2d``. Floating-point input only: PyTorch has no integer adaptive
    max pooling (a ``DtypeMismatchError`` on every backend)."""
    output_size = arguments.sizes_or_none("adaptive_max_pool2d", "output_size", output_size, 2)
    input_checks.check_floating("adaptive_max_pool2d", x)
    sizes = ops.shape(x)[2:]
    out = tuple(n if o is None else o for n, o in zip(sizes, output_size))
    if all(isinstance(n, int) and isinstance(o, int) and n % o == 0 for n, o in zip(sizes, out)):
        window = tuple(n // o for n, o in zip(sizes, out))  # equal bins: the plain pooling kernel
        return ops._max_pool2d(x, window, window, 0)
    y = x if output_size_kept(output_size, 1) else _bin_maximum(x, sizes[1], out[1])
    if output_size_kept(output_size, 0):
        return y
    return ops.transpose(_bin_maximum(ops.transpose(y, 2, 3), sizes[0], out[0]), 2, 3)


@composite("x")
def adaptive_avg_pool2d(x, output_size):
    """Mean over PyTorch's adaptive bins of NCHW ``x`` to ``output_size`` (int or (oh, ow); None keeps that
    axis' size): bin i of an axis of size n spans [floor(i * n / out), ceil((i + 1) * n / out)). A NaN or an
    infinity reaches the bins that hold it alone (+inf and -inf in one bin: NaN), as in PyTorch."""
    output_size = arguments.sizes_or_none("adaptive_avg_pool2d", "output_size", output_size, 2)
    return _adaptive_avg_pool2d(x, output_size)


def _adaptive_avg_pool2d(x, output_size):
    """``adaptive_avg_pool2d`` to an ``output_size`` already checked: a pair of ints or Nones, or of scalar tensors
    (``interpolate``'s 'area' mode inside a graph, where the input's sizes are known only when it runs).
    Floating-point input only, as PyTorch's (a ``DtypeMismatchError`` on every backend)."""
    input_checks.check_floating("adaptive_avg_pool2d", x)
    sizes = ops.shape(x)[2:]
    out = tuple(n if o is None else o for n, o in zip(sizes, output_size))
    if all(isinstance(n, int) and isinstance(o, int) and n % o == 0 for n, o in zip(sizes, out)):
        window = tuple(n // o for n, o in zip(sizes, out))  # equal bins: the plain pooling kernel
        return ops._avg_pool2d(x, window, window, 0)
    same = [output_size_kept(output_size, axis) or (isinstance(n, int) and isinstance(o, int) and n == o)
            for axis, (n, o) in enumerate(zip(sizes, out))]
    if same[0]:
        return x if same[1] else _bin_means(x, sizes[1:], out[1:])
    if same[1]:  # the height alone, as the last axis
        return ops.transpose(_bin_means(ops.transpose(x, 2, 3), sizes[:1], out[:1]), 2, 3)
    return _bin_means(x, sizes, out)


def _bin_means(x, sizes, outs):
    """The means over PyTorch's adaptive bins of the last one or two axes of (N, C, H, W) ``x`` (``sizes``, to
    ``outs``): products with (out, in) matrices of 1 / length in each bin where ``x`` is finite (torch's kernel on
    torch), each bin's own sum where it holds NaN or inf (``_products_or_taps``, which computes half precision in
    float32)."""
    matrices = [_bin_matrix(n, o, _computed_like(x)) for n, o in zip(sizes, outs)]
    kept = tuple(ops.shape(x)[2:4 - len(sizes)])  # (torch's kernel takes every spatial size)

    def tapped(x):  # the last axis first
        y = _bin_mean(x, sizes[-1], outs[-1])
        return ops.transpose(_bin_mean(ops.transpose(y, 2, 3), sizes[0], outs[0]), 2, 3) if len(sizes) == 2 else y

    return _products_or_taps(x, matrices, tapped, lambda kernel, x: kernel(x, kept + tuple(outs), None, "area", None))


def output_size_kept(output_size, axis) -> bool:
    """Whether ``output_size`` (an int or a pair) keeps spatial ``axis`` as it is (None)."""
    return _pair(output_size)[axis] is None


# ---- normalization and dropout --------------------------------------------------------------------------------

@composite("x", "weight", "bias")
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias, the mean and biased variance taken over each sample's group of
    ``C / num_groups`` channels (and every position); ``weight`` and ``bias`` have shape (C,). Float input of
    another dtype than theirs is a ``DtypeMismatchError`` but float16 or bfloat16 beside float32, computed in
    float32 and given back in the input's dtype, as PyTorch's. Integer input: floats of the dtype in force. A
    ``weight`` or ``bias`` of another shape than (C,) is a ``ShapeMismatchError`` naming it, as PyTorch's (never
    broadcast)."""
    x = input_checks.check_channels_input("group_norm", input_checks.as_floating("group_norm", "x", x))
    num_groups, sizes = arguments.positive_int("group_norm", "num_groups", num_groups), input_checks.sizes_of(x)
    # channels that num_groups does not divide: PyTorch's error (the frameworks' reshape raised its own), now or
    # when a graph that leaves them unknown runs
    x = input_checks.require(x, input_checks.holds(sizes[1] % num_groups == 0), lambda: (
        f"group_norm expected the input's channels to be divisible by num_groups={num_groups}, got {{}} channels "
        f"(input shape {input_checks.shape_template(len(sizes))})"), (sizes[1],) + tuple(sizes))
    x = input_checks.check_parameter_shapes("group_norm", x, {"weight": weight, "bias": bias},
                                            (input_checks.sizes_of(x)[1],), "one value per channel of the input")
    if input_checks.normalization_parameters("group_norm", x, {"weight": weight, "bias": bias}):
        return ops.cast_like(group_norm(ops.cast(x, "float32"), num_groups, weight, bias, eps), x)
    sizes = ops.shape(x)
    # the group's size spelled out, not -1: an empty batch cannot infer it (torch and jax refuse)
    grouped = ops.reshape(x, (sizes[0], num_groups, math.prod(sizes[2:], start=sizes[1] // num_groups)))
    centred = grouped - ops.mean(grouped, 2, True)
    variance = ops.mean(ops.square(centred), 2, True)
    y = ops.reshape(centred / ops.sqrt(variance + eps), sizes)
    broadcast = (1, -1) + (1,) * (len(x.shape) - 2)
    if weight is not None:
        y = y * ops.reshape(weight, broadcast)
    return y + ops.reshape(bias, broadcast) if bias is not None else y


def dropout2d(x, p=0.5, training=True, generator=None):
    """Zero whole channels of NCHW (or NCL) ``x`` with probability ``p`` (one draw per sample and channel) and scale the
    rest by 1 / (1 - p) when ``training``; the mask comes from ``generator`` as ``dropout``'s does."""
    generator = generator_or_inplace("dropout2d", generator)
    if isinstance(x, CONVERTED):  # (NumPy, lists: as every op converts them)
        x = input_checks.value_as_tensor("dropout2d", "x", x)
    if not training or not p:
        return x
    x = input_checks.as_floating("dropout2d", "x", x)  # (integers: floats of the dtype in force, as dropout's)
    one_per_channel = x[(slice(None), slice(None)) + (slice(0, 1),) * (len(x.shape) - 2)]
    return x * ops.dropout(ops.zeros_like(one_per_channel) + 1, p, True, generator)


# ---- interpolation --------------------------------------------------------------------------------------------

INTERPOLATION_MODES = {3: ("nearest", "nearest-exact", "linear", "area"),
                       4: ("nearest", "nearest-exact", "bilinear", "bicubic", "area")}
#: the modes that take ``align_corners``
ALIGNABLE_MODES = ("linear", "bilinear", "bicubic")
#: the largest output height + width that PyTorch's CPU 'bilinear' kernel resamples with its channels-last kernel
_BILINEAR_CHANNELS_LAST_OUTPUTS = 128
#: the cubic convolution's parameter in PyTorch's (and OpenCV's) bicubic kernel
_CUBIC_A = -0.75


def _cubic_weights(t):
    """The four weights of PyTorch's bicubic kernel (Keys' cubic convolution, A = -0.75) for the inputs at
    floor(s) - 1, floor(s), floor(s) + 1 and floor(s) + 2, ``t`` = s - floor(s) (an array or a tensor)."""
    a = _CUBIC_A

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    opposite = 1 - t  # (and 2 - t as PyTorch's (1 - t) + 1: two roundings in float32)
    return far(t + 1), near(t), near(opposite), far(opposite + 1)


def _true_floor(value):
    """floor of a float tensor that may be negative (``_floor`` truncates toward zero)."""
    truncated = _floor(value)
    return truncated - ops.cast_like(value < truncated, value)


def _copies_equal_sizes(mode: str, axes: int) -> bool:
    """Whether PyTorch's kernel for ``mode`` over ``axes`` spatial axes copies an axis whose output size equals its
    input's, whatever the scale factor (``scale_factor=1.2`` on 4 positions: 4 again, but resampled by 1 / 1.2 in
    the others): 1-d 'linear', 2-d 'nearest' and 'bilinear' do; 1-d 'nearest', 'nearest-exact' and 'bicubic' not."""
    return (axes == 1 and mode == "linear") or (axes == 2 and mode in ("nearest", "bilinear"))


def _identity_where_equal(matrix, size, out, like):
    """``matrix`` (out, size), or the identity where ``out == size`` (in a graph of unknown sizes: selected)."""
    if isinstance(size, int) and isinstance(out, int):
        return _constant(np.eye(size), like) if size == out else matrix
    identity = _picks(_indices(out), size, like)
    return ops.where(_as_int64(size) == _as_int64(out), identity, matrix)


def _interpolation_matrix(size, out, mode, align_corners, scale, like):
    """(out, size): row j holds the weights of the input positions that give output position j."""
    if isinstance(size, int) and isinstance(out, int) and not hasattr(scale, "dtype"):
        return _constant(_interpolation_weights(size, out, mode, align_corners, scale, _numpy_dtype(like)), like)
    destination = _positions(out, like)
    last = _as_float(size, like) - 1
    positions = ops.unsqueeze(_positions(size, like), 0)
    if mode in ("nearest", "nearest-exact"):  # PyTorch's float32 arithmetic, as the NumPy branch's
        scale32 = ops.cast(scale, "float32") if hasattr(scale, "dtype") else float(np.float32(scale))
        steps = _indices(out)
        if mode == "nearest":  # floorf(j * scale)
            source = _floor(ops.cast(steps, "float32") * scale32)
        else:  # floorf((j + 0.5) * scale): the product in double, rounded to float
            source = _floor(ops.cast((ops.cast(steps, "float64") + 0.5) * ops.cast(scale32, "float64"), "float32"))
        index = ops.minimum(ops.cast(source, "int64"), ops.zeros_like(steps) + (_as_int64(size) - 1))
        return _picks(index, size, like)
    if mode == "bicubic":  # four taps, clamped to the edge; the source is not clamped at 0 (PyTorch's)
        source = destination * scale if align_corners else _centre_sources(destination, scale, like)
        low = _true_floor(source)
        fraction = ops.unsqueeze(source - low, 1)
        zero, matrix = ops.zeros_like(low), 0.0
        for offset, weight in zip((-1, 0, 1, 2), _cubic_weights(fraction)):
            index = ops.minimum(ops.maximum(low + offset, zero), zero + last)
            matrix = matrix + weight * ops.cast_like(positions == ops.unsqueeze(index, 1), like)
        return matrix
    if align_corners:
        source = destination * scale
    else:
        source = ops.maximum(_centre_sources(destination, scale, like), ops.zeros_like(destination))
    low = _floor(source)
    high = ops.minimum(low + 1, ops.zeros_like(low) + last)
    fraction = ops.unsqueeze(source - low, 1)
    picks = [ops.cast_like(positions == ops.unsqueeze(index, 1), like) for index in (low, high)]
    return (1 - fraction) * picks[0] + fraction * picks[1]


def _interpolation_weights(size, out, mode, align_corners, scale, dtype) -> np.ndarray:
    """``_interpolation_matrix`` in NumPy, for known sizes (nearest in float32, as PyTorch's kernel computes it; the
    linear modes' taps in ``dtype``, ``_tap_arrays``', summed in float64)."""
    weights = np.zeros((out, size))
    rows = np.arange(out)
    if mode in ("nearest", "nearest-exact"):
        destination = np.arange(out, dtype=np.float64)
        if mode == "nearest":  # PyTorch: floorf(j * scale), scale a float
            source = np.floor(destination.astype(np.float32) * np.float32(scale))
        else:  # floorf((j + 0.5) * scale): the product in double, rounded to float
            source = np.floor(((destination + 0.5) * np.float64(np.float32(scale))).astype(np.float32))
        weights[rows, np.minimum(source.astype(np.int64), size - 1)] = 1.0
        return weights
    for index, weight in _tap_arrays(size, out, mode, align_corners, scale, dtype):
        np.add.at(weights, (rows, index), weight)
    return weights


@composite("x")
def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None):
    """``torch.nn.functional.interpolate`` for (N, C, L) and (N, C, H, W) ``x``: resize to ``size`` or by
    ``scale_factor`` (an int/float or one per spatial axis; the output size is floor(in * scale_factor)).
    ``mode``: 'nearest' (PyTorch's: input floor(j * in / out)), 'nearest-exact', 'linear' (3-D) / 'bilinear'
    (4-D) / 'bicubic' (4-D: PyTorch's cubic convolution with A = -0.75 over four inputs, clamped at the edges)
    with ``align_corners`` False (pixel centres, the default) or True (corner pixels aligned), or 'area'
    (adaptive average pooling). With ``scale_factor`` the source positions use 1 / scale_factor, as PyTorch
    does, unless ``recompute_scale_factor`` is True."""
    rank = len(x.shape)
    if rank not in INTERPOLATION_MODES:
        raise ValueError(f"interpolate takes (N, C, L) or (N, C, H, W) input, got shape {tuple(x.shape)}")
    spatial = rank - 2
    if mode not in INTERPOLATION_MODES[rank]:
        raise ValueError(f"interpolate mode {mode!r} is not available for {rank}-D input; use one of "
                         f"{', '.join(INTERPOLATION_MODES[rank])}")
    linear = mode in ALIGNABLE_MODES
    if align_corners is not None and not linear:
        raise ValueError(f"interpolate align_corners applies to the 'linear', 'bilinear' and 'bicubic' modes only, "
                         f"not {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate takes exactly one of size and scale_factor")
    if recompute_scale_factor and size is not None:
        raise ValueError("interpolate recompute_scale_factor is for scale_factor, not size")
    if mode in ("nearest", "nearest-exact"):
        input_checks.check_numbers("interpolate", x)
    else:  # a weighted mean (PyTorch refuses integers here, but uint8 in bilinear and bicubic, which it rounds)
        input_checks.check_floating(f"interpolate mode {mode!r}", x)
    sizes = ops.shape(x)[2:]
    if size is not None:
        outs = arguments.integers(size, spatial)  # NumPy integers as ints; a float, bool or string: refused
        factors = (None,) * spatial
        if outs is None or not all(o > 0 for o in outs):
            raise ValueError(f"interpolate size must be a positive int or {spatial} of them, got {size!r}")
    else:
        factors = (scale_factor,) * spatial if arguments.real(scale_factor) is not None else \
            arguments.sequence(scale_factor) or ()
        factors = tuple(arguments.real(f) for f in factors)  # NumPy numbers as floats; a bool: None, refused
        if len(factors) != spatial or not all(f is not None and f > 0 for f in factors):
            raise ValueError(f"interpolate scale_factor must be a positive number or {spatial} of them, "
                             f"got {scale_factor!r}")
        # floor(n * f) in double, as PyTorch's (in x's dtype a graph's float32 30 * 2.1 gave 62, bfloat16 301 * 2 600)
        outs = tuple(int(n * f) if isinstance(n, int) else ops.cast(_floor(ops.cast(n, "float64") * f), "int64")
                     for n, f in zip(sizes, factors))
        # an output of size 0: PyTorch's error (the frameworks gave an empty tensor), when a graph runs for sizes it
        # leaves unknown
        x = input_checks.require(x, input_checks.all_of([input_checks.holds(o > 0) for o in outs]), lambda: (
            f"interpolate scale_factor={scale_factor!r} gives an output of size {input_checks.shape_template(spatial)}"
            f" from the input's spatial size {input_checks.shape_template(spatial)}: every size must be at least 1; "
            f"give a larger scale_factor, or size"), tuple(outs) + tuple(sizes))
    # sizes and positions are computed in a floating dtype: x's own (the checked x's), or float32 for integers
    # (nearest modes), as PyTorch's uint8 kernel computes them
    like = x if dtype_kinds.is_floating(x.dtype) else ops.cast(x[:1, :1], "float32")
    if mode == "area":
        if spatial == 1:
            return ops.squeeze(_adaptive_avg_pool2d(ops.unsqueeze(x, 2), (1, outs[0])), 2)
        return _adaptive_avg_pool2d(x, outs)
    return _resample(x, sizes, outs, factors, mode, align_corners, recompute_scale_factor, like)


def _resample(x, sizes, outs, factors, mode, align_corners, recompute_scale_factor, like):
    """``interpolate``'s products of ``x`` with one (out, in) matrix per spatial axis, in ``like``'s floating
    dtype; the nearest modes take the input each one-hot row picks, exact in any width and for any value (a product
    went through float32 on Keras, torch has no integer product on CUDA, and 0 * inf is NaN). The linear modes
    multiply through ``_products_or_taps``, whose taps' branch (``tapped``) gathers each output's taps."""
    # positions and weights are computed in float32 for float16 and bfloat16 input (PyTorch's opmath; whole numbers
    # above 256 and 2048 do not exist in those), as the products and taps are (``_products_or_taps``)
    target, like = like, _computed_like(like)
    axes = []  # (size, output size, scale factor, scale) per spatial axis
    for n, out, factor in zip(sizes, outs, factors):
        if mode in ALIGNABLE_MODES and align_corners:
            if isinstance(out, int):
                scale = _quotient(_as_float(n, like) - 1, out - 1) if out > 1 else 0.0
            else:  # (a graph's size: an output of 1 takes position 0 whatever the scale, never 0 / 0's NaN)
                scale = _quotient(_as_float(n, like) - 1, ops.maximum(_as_float(out, like) - 1, 1.0))
        elif factor is not None and not recompute_scale_factor:
            scale = 1.0 / factor
        elif mode in ("nearest", "nearest-exact") and not (isinstance(n, int) and isinstance(out, int)):
            # in float64, then rounded to float32 (the NumPy branch's): a float32 quotient in an XLA graph came out
            # one unit low (5 / 25), and a nearest pick floors it
            scale = ops.cast(_as_int64(n), "float64") / ops.cast(_as_int64(out), "float64")
        else:
            scale = _quotient(_as_float(n, like), _as_float(out, like))
        axes.append((n, out, factor, scale))

    half_weights = _keeps_half_weights(mode, outs)

    def rounded(weights):  # weights rounded to a half-precision input's dtype where PyTorch's CPU kernel keeps them
        # so (``_keeps_half_weights``), then widened for the float32 arithmetic
        if like is target or half_weights is False:
            return weights
        kept = ops.cast_like(ops.cast_like(weights, target), like)
        return kept if half_weights is True else ops.where(half_weights, kept, weights)

    def taps_of(n, out, scale):  # each output's (input index, weight) along one axis, the weights ``rounded``
        taps = _taps(n, out, mode, align_corners, scale, like)
        if _copies_equal_sizes(mode, len(sizes)):
            taps = _copied_where_equal(taps, n, out, like)
        if mode in ("linear", "bilinear") and like is not target:  # PyTorch's: 1 minus the far tap's rounded
            # weight, rounded
            (near, _), (far, fraction) = taps
            taps = [(near, 1 - rounded(fraction)), (far, fraction)]
        return [(index, rounded(weight)) for index, weight in taps]

    matrices = []
    for n, out, factor, scale in axes:
        if like is not target and half_weights is not False:  # the sum of the taps' rounded weights, as PyTorch
            # multiplies by each (taps clamped to an edge merged before rounding were a unit off there in bicubic)
            matrix = 0.0
            for index, weight in taps_of(n, out, scale):
                matrix = matrix + _picks(index, n, like) * ops.unsqueeze(weight, 1)
            matrices.append(matrix)
            continue
        matrix = _interpolation_matrix(n, out, mode, align_corners, scale, like)
        if factor is not None and _copies_equal_sizes(mode, len(sizes)):
            matrix = _identity_where_equal(matrix, n, out, like)
        matrices.append(rounded(matrix))
    if not dtype_kinds.is_floating(x.dtype) or mode in ("nearest", "nearest-exact"):  # each output an input's
        # copy: picked, not a product (0 * inf of the other inputs made NaN rows around an infinite value, and
        # integers went through floats). (Not ``like is not x``: inside a graph a checked x is another tensor.)
        for axis, matrix in enumerate(matrices, 2):
            x = ops.take(x, ops.argmax(matrix, 1), axis)
        return x

    def tapped(x):  # the last axis first, as PyTorch's kernel sums each row's taps, then the rows'
        for axis, (n, out, _, scale) in reversed(list(enumerate(axes, 2))):
            x = _resampled(x, axis, taps_of(n, out, scale))
        return x

    # (the sizes where torch's kernel would recompute them: floor(in * scale_factor))
    resized = factors[0] is None or recompute_scale_factor
    return _products_or_taps(x, matrices, tapped, lambda kernel, x: kernel(
        x, tuple(outs) if resized else None, None if resized else factors, mode, bool(align_corners)))


def _keeps_half_weights(mode, outs):
    """Whether PyTorch's CPU kernel keeps the weights of a float16 or bfloat16 resampling to ``outs`` in that dtype
    (True, False, or inside a graph of unknown sizes a boolean tensor): its generic kernel does ('linear',
    'bicubic', and 'bilinear' to an output of height + width above 128); its channels-last kernel, which
    'bilinear' takes for outputs of height + width up to 128, keeps them in float32 (ATen's
    ``_use_channels_last_kernel_2d``; 30x210 -> 31x250 float16 was off in 3797 of 7750 outputs with float32
    weights). The nearest modes have no weights (False)."""
    if mode not in ALIGNABLE_MODES:
        return False
    if mode != "bilinear":
        return True
    return _as_int64(outs[0]) + _as_int64(outs[1]) > _BILINEAR_CHANNELS_LAST_OUTPUTS


def _products_or_taps(x, matrices, tapped, fused):
    """``x`` times one (out, in) matrix per trailing spatial axis (``matrices``, one or two: (H, W) or W), in ``x``'s
    dtype (float16 and bfloat16 computed in float32, with float32 ``matrices``, and rounded once, products and taps
    alike, as PyTorch's kernels), with PyTorch's values for any input: the backend's kernel where it has one
    (``fused(kernel, x)`` calls the optional op ``fused_interpolate``), else the products where ``x`` is finite and
    ``tapped(x)`` (each output summed from the inputs it reads alone) where it holds NaN or inf, one ``cond`` on a sum:
    a NaN or an infinity reaches the outputs that read it and no other, where a product spread it to every output of its
    plane (0 * NaN); taps for every input made bilinear 2x upsampling 3.5-4 times slower on CPU. The gradient, the same
    linear map for any input, is the matrices' transposed product (torch's own kernel's took 1.5 times as long on
    CPU)."""
    # the backend's own product, not a mixed-precision scope's (which computes it in float16 or bfloat16): an
    # interpolation is computed in its input's dtype, as torch's autocast leaves F.interpolate (and the taps' branch,
    # which has no product, came out in another dtype than the products' branch of the cond)
    matmul = config.backend().ops.matmul
    kernel = optional_op(ops._ops(), "fused_interpolate")

    def products(x, *matrices, transposed=False):  # (transposed: the gradient's, dx = M0^T dy M1)
        wide = _widened(x)
        first, last = (ops.transpose(matrices[0], 0, 1) if transposed else matrices[0]), matrices[-1]
        out, size = tuple(last.shape)
        if transposed and len(matrices) == 2 and isinstance(out, int) and isinstance(size, int) and out < size:
            # the first axis' product on the smaller dy, where the last axis narrows (a product with a matrix on
            # the left is transposed into place on JAX: the gradient of a downsampling took 15% longer the other way)
            return in_dtype_of(matmul(matmul(first, wide), last), x)
        y = matmul(wide, last if transposed else ops.transpose(last, 0, 1))
        return in_dtype_of(matmul(first, y) if len(matrices) == 2 else y, x)

    def in_dtype_of(y, x):  # x's dtype: rounded once from float32 (and torch's own autocast, which the raw product
        # still runs under, made bfloat16)
        return y if y.dtype == x.dtype else ops.cast(y, dtype_kinds.dtype_name(x.dtype))

    def forward(x, *matrices):  # (the matrices as inputs: JAX's custom gradient takes no traced value from outside)
        def backward(dy):
            return (products(dy, *matrices, transposed=True),) + (None,) * len(matrices)

        def finished(rows, wide):  # the products, of ``rows`` = x times the last axis' matrix where there are two axes
            return matmul(matrices[0], rows) if len(matrices) == 2 else products(wide, *matrices)

        def finite(t):  # (t is float32 for half precision: a float16 sum overflowed to inf past 65504, and nearly
            # every float16 image batch took the taps' slower branch)
            total = ops.sum(t)
            return total - total == 0  # (inf - inf, NaN - NaN: NaN)

        # (zero channels are left to the products, which give their empty output where torch's kernel refuses them)
        if kernel is not None and x.shape[1] != 0:
            return fused(kernel, x), backward
        # the last axis' product outside the cond (XLA's CPU runs a product inside one without its intra-op threads:
        # both inside, JAX's forward took 20% longer on 2 cores); the gradient, x's in both branches, is the
        # products' alone (through the cond JAX's backward took 25% longer)
        wide = _widened(x)  # (one cast, outside the cond: both branches compute in float32 and are rounded once)
        rows = matmul(wide, ops.transpose(matrices[-1], 0, 1)) if len(matrices) == 2 else wide
        if _shrinks(matrices):
            # fewer outputs than inputs: both products first, and the sum of y decides (summing x made a (30, 30) to
            # (7, 7) adaptive average pooling 30-40% slower on JAX's CPU). A NaN or an infinity in x reaches every
            # output of its plane through the products (0 * NaN), so y is finite only where x is (and where a finite
            # x overflows, the taps give the same). The cond gives zeros or the taps, which a select takes: a branch
            # returning y itself became an ONNX If (jax2onnx) whose Identity read y before the node that made it
            y = finished(rows, wide)
            kept = finite(y)
            return in_dtype_of(ops.where(kept, y, ops.cond(kept, lambda x: ops.zeros_like(y), tapped, (wide,))),
                               x), backward
        return in_dtype_of(ops.cond(finite(wide), finished, lambda rows, x: tapped(x), (rows, wide)), x), backward

    return config.backend().custom_gradient(forward)(x, *matrices)


def _shrinks(matrices) -> bool:
    """Whether (out, in) ``matrices`` give fewer outputs than they read inputs, their sizes known (False where a
    graph leaves one unknown)."""
    shapes = [tuple(matrix.shape) for matrix in matrices]
    if not all(isinstance(n, int) for shape in shapes for n in shape):
        return False
    return math.prod(out for out, _ in shapes) < math.prod(size for _, size in shapes)


def _taps(size, out, mode, align_corners, scale, like):
    """The input positions that each of ``out`` output positions reads along one axis of ``size`` in the linear
    modes, and their weights: a list of (index, weight), index (out,) int64 in [0, size), weight (out,) in
    ``like``'s dtype. Every position PyTorch's kernel reads is a tap, of weight 0 too (0 * NaN)."""
    if isinstance(size, int) and isinstance(out, int) and not hasattr(scale, "dtype"):
        return [(tensor(index, "int64"), _constant(weight, like))
                for index, weight in _tap_arrays(size, out, mode, align_corners, scale, _numpy_dtype(like))]
    destination = _positions(out, like)
    last = _as_float(size, like) - 1
    if mode == "bicubic":  # four taps, clamped to the edge; the source is not clamped at 0 (PyTorch's)
        source = destination * scale if align_corners else _centre_sources(destination, scale, like)
        low = _true_floor(source)
        zero = ops.zeros_like(low)
        return [(ops.cast(ops.minimum(ops.maximum(low + offset, zero), zero + last), "int64"), weight)
                for offset, weight in zip((-1, 0, 1, 2), _cubic_weights(source - low))]
    if align_corners:
        source = destination * scale
    else:
        source = ops.maximum(_centre_sources(destination, scale, like), ops.zeros_like(destination))
    low = ops.minimum(_floor(source), ops.zeros_like(source) + last)
    high = ops.minimum(low + 1, ops.zeros_like(low) + last)
    fraction = source - low
    return [(ops.cast(low, "int64"), 1 - fraction), (ops.cast(high, "int64"), fraction)]


def _tap_arrays(size, out, mode, align_corners, scale, dtype) -> list:
    """``_taps`` in NumPy, for known sizes: the scale, positions and weights in ``dtype`` (float32, or float64 for
    float64 input), as PyTorch's kernels compute them in their input's opmath type (float64 positions gave a
    float16 3000 -> 5001 'linear' resampling other weights, and outputs, than PyTorch's in 1271 of 10002)."""
    scale = dtype(scale)
    destination = np.arange(out, dtype=dtype)
    if mode == "bicubic":
        source = destination * scale if align_corners else _centre_source_array(destination, scale)
        low = np.floor(source)
        return [(np.clip(low.astype(np.int64) + offset, 0, size - 1), weight)
                for offset, weight in zip((-1, 0, 1, 2), _cubic_weights(source - low))]
    source = destination * scale if align_corners else np.maximum(_centre_source_array(destination, scale), 0)
    low = np.minimum(np.floor(source).astype(np.int64), size - 1)
    fraction = source - low.astype(dtype)
    return [(low, 1 - fraction), (np.minimum(low + 1, size - 1), fraction)]


def _centre_sources(destination, scale, like):
    """PyTorch's source positions scale * (j + 0.5) - 0.5 of output positions j (``destination``, of ``like``'s
    dtype) where corners are not aligned: in float32 rounded once (through float64, where the product is exact), as
    PyTorch's x86 CPU kernels compute them in one fused multiply-add (rounded twice, the weights of a float32
    1000 -> 7777 'linear' resampling were a unit off in 5 of 3892 places, a float16 bicubic 9x13 by (1.7, 2.3) off in
    11 of 870 outputs); in float64 as written."""
    if dtype_kinds.dtype_name(like.dtype) != "float32":
        return (destination + 0.5) * scale - 0.5
    wide = ops.cast(scale, "float64") if hasattr(scale, "dtype") else float(np.float32(scale))
    return ops.cast((ops.cast(destination, "float64") + 0.5) * wide - 0.5, "float32")


def _centre_source_array(destination, scale):
    """``_centre_sources`` in NumPy, ``destination`` and ``scale`` of the same dtype."""
    if destination.dtype != np.float32:
        return (destination + 0.5) * scale - 0.5
    return ((destination + 0.5).astype(np.float64) * np.float64(scale) - 0.5).astype(np.float32)


def _numpy_dtype(like):
    """The NumPy dtype of ``like`` (float32 or float64: the dtype in which resampling positions are computed)."""
    return np.dtype(dtype_kinds.dtype_name(like.dtype)).type


def _copied_where_equal(taps, size, out, like):
    """``taps``, or where ``out == size`` (in a graph of unknown sizes: chosen when it runs) PyTorch's copy: each
    output position reads its own input twice, with weights 1 and 0 (an infinity gives NaN there, as in PyTorch,
    whose kernel copies equal sizes whatever the scale or ``align_corners``)."""
    if isinstance(size, int) and isinstance(out, int):
        if size != out:
            return taps
        own = tensor(np.arange(out), "int64")
        return [(own, _constant(np.full(out, float(k == 0)), like)) for k in range(len(taps))]
    equal, steps = _as_int64(size) == _as_int64(out), _indices(out)
    own = ops.minimum(steps, ops.zeros_like(steps) + (_as_int64(size) - 1))  # (in range where the sizes differ too)
    return [(ops.where(equal, own, index), ops.where(equal, ops.zeros_like(weight) + float(k == 0), weight))
            for k, (index, weight) in enumerate(taps)]


def _resampled(x, axis, taps):
    """``x`` resampled along ``axis`` by ``_taps``: the sum of the slices each tap picks times its weights (one per
    output position), from the first tap to the last as PyTorch's kernel sums them."""
    broadcast = (-1,) + (1,) * (len(x.shape) - 1 - axis)
    y = None
    for index, weight in taps:
        term = ops.take_in_range(x, index, axis) * ops.reshape(weight, broadcast)
        y = term if y is None else y + term
    return y
