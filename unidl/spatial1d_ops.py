"""The 1-d poolings and transposed convolution of ``torch.nn.functional`` (``max_pool1d``, ``avg_pool1d``,
``adaptive_avg_pool1d``, ``adaptive_max_pool1d``, ``conv_transpose1d``) over (N, C, L) input or one sample (C, L),
run as their 2-d ops over (N, C, 1, L) on every backend. Exported as ``ud.ops.<name>``; the ``torch.nn`` layers
(``MaxPool1d``, ...) call the same functions, with their own names in the errors (``owner``: a string, or a
callable such as ``layer.describe`` that gives it when a message is needed)."""

from __future__ import annotations

from unidl import arguments, input_checks, ops, spatial_ops
from unidl.errors import PoolPaddingError


def _window(owner: str, kernel_size, stride, padding) -> tuple:
    """``(kernel, stride, padding)`` as 1-tuples (stride the kernel where None or empty, as in PyTorch); a
    ``ValueError`` naming ``owner`` for one that is not an int or one int, a ``PoolPaddingError`` for a padding over
    half the kernel."""
    kernel = arguments.ints(owner, "kernel_size", kernel_size, 1)
    given = stride is not None and arguments.sequence(stride) != ()
    stride = arguments.ints(owner, "stride", stride, 1) if given else kernel
    pads = arguments.ints(owner, "padding", padding, 1, minimum=0)
    if 2 * pads[0] > kernel[0]:
        raise PoolPaddingError(f"{owner} padding {padding!r} must be non-negative and at most half the kernel size "
                               f"{kernel}")
    return kernel, stride, pads


def _as_planes(x, pool):
    """``pool`` of (N, C, L) ``x`` taken as (N, C, 1, L), that axis dropped from each output (an index into a plane
    of one row is the index along L)."""
    out = pool(ops.unsqueeze(x, 2))
    return tuple(ops.squeeze(o, 2) for o in out) if isinstance(out, tuple) else ops.squeeze(out, 2)


def pool1d(owner, x, kernel, stride, padding, ceil_mode=False, return_indices=False, count_include_pad=None,
           dilation=(1,)):
    """The maximum (``count_include_pad`` None; its taps ``dilation`` apart) or the mean over each window of
    (N, C, L) ``x``, its window checked (``_window``), after PyTorch's checks of the input: numbers (floats for a
    mean), a window no larger than the padded input (a ``ShapeMismatchError`` naming ``owner``, when a graph runs
    where it leaves sizes unknown)."""
    average = count_include_pad is not None
    input_checks.check_poolable(owner, x, average=average)
    x = input_checks.check_window_fits(owner, x, (dilation[0] * (kernel[0] - 1) + 1,), padding,
                                       "use a smaller kernel, more padding or a larger input")
    planes = (1,) + kernel, (1,) + stride, (0,) + padding
    if average:
        return _as_planes(x, lambda y: ops._avg_pool2d(y, *planes, ceil_mode, count_include_pad))
    return _as_planes(x, lambda y: ops._max_pool2d(y, *planes, ceil_mode, return_indices, (1,) + dilation))


@ops._composed(arrays=("x",))
def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Maximum over windows of (N, C, L) ``x`` (or one sample (C, L)), as ``torch.nn.functional.max_pool1d``
    (padding counts as -inf; stride defaults to the kernel size; ``ceil_mode`` adds PyTorch's last, partial window).
    ``return_indices``: ``(output, indices)``, each index (int64) the window's maximum's position along L.
    ``dilation``: the window's taps that far apart, as PyTorch's."""
    kernel, stride, padding = _window("max_pool1d", kernel_size, stride, padding)
    dilation = arguments.ints("max_pool1d", "dilation", dilation, 1)
    x = ops._check_pool_rank("max_pool1d", x, 1)
    return ops._one_sample_as_batch(x, 1, lambda batch: pool1d("max_pool1d", batch, kernel, stride, padding,
                                                               bool(ceil_mode), bool(return_indices),
                                                               dilation=dilation))


@ops._composed(arrays=("x",))
def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Mean over windows of (N, C, L) ``x`` (or one sample (C, L)), as ``torch.nn.functional.avg_pool1d``: zero
    padding counts in the divisor unless ``count_include_pad=False``; ``ceil_mode`` adds PyTorch's last, partial
    windows. Floating-point input only, as PyTorch's."""
    kernel, stride, padding = _window("avg_pool1d", kernel_size, stride, padding)
    x = ops._check_pool_rank("avg_pool1d", x, 1)
    return ops._one_sample_as_batch(x, 1, lambda batch: pool1d("avg_pool1d", batch, kernel, stride, padding,
                                                               bool(ceil_mode), count_include_pad=bool(
                                                                   count_include_pad)))


def adaptive_pool1d(owner, x, output_size: tuple, kind: str):
    """The mean (``kind`` 'avg') or the maximum ('max') over ``output_size`` (a 1-tuple, checked) adaptive bins of
    (N, C, L) ``x``: bin i of L spans [floor(i * L / out), ceil((i + 1) * L / out)). Floats only, as PyTorch's."""
    input_checks.check_floating(owner, x)
    pool = spatial_ops._adaptive_avg_pool2d if kind == "avg" else spatial_ops.adaptive_max_pool2d
    return _as_planes(x, lambda planes: pool(planes, (1,) + output_size))


@ops._composed(arrays=("x",))
def adaptive_avg_pool1d(x, output_size):
    """Mean over ``output_size`` (a positive int or one of them) adaptive bins of (N, C, L) ``x`` (or one sample
    (C, L)), as ``torch.nn.functional.adaptive_avg_pool1d``: ``adaptive_avg_pool2d``'s bins along L."""
    output_size = arguments.ints("adaptive_avg_pool1d", "output_size", output_size, 1)
    x = ops._check_pool_rank("adaptive_avg_pool1d", x, 1)
    return ops._one_sample_as_batch(x, 1, lambda batch: adaptive_pool1d("adaptive_avg_pool1d", batch, output_size,
                                                                        "avg"))


@ops._composed(arrays=("x",))
def adaptive_max_pool1d(x, output_size, return_indices=False):
    """Maximum over the bins of ``adaptive_avg_pool1d``, as ``torch.nn.functional.adaptive_max_pool1d``;
    ``return_indices=True`` is not supported (a ``ValueError`` on every backend)."""
    output_size = arguments.ints("adaptive_max_pool1d", "output_size", output_size, 1)
    if return_indices:
        raise ValueError("adaptive_max_pool1d return_indices=True is not supported; use return_indices=False")
    x = ops._check_pool_rank("adaptive_max_pool1d", x, 1)
    return ops._one_sample_as_batch(x, 1, lambda batch: adaptive_pool1d("adaptive_max_pool1d", batch, output_size,
                                                                        "max"))


def transposed1d(x, weight, bias, stride: tuple, padding: tuple, output_padding: tuple, groups, dilation: tuple):
    """The transposed convolution of (N, C, L) ``x`` with an (in, out / groups, k) ``weight``, its arguments
    checked (1-tuples): ``conv_transpose2d`` over (N, C, 1, L) with a kernel of height 1."""
    return ops.squeeze(spatial_ops.conv_transpose2d(
        ops.unsqueeze(x, 2), ops.unsqueeze(weight, 2), bias, (1,) + stride, (0,) + padding, (0,) + output_padding,
        groups, (1,) + dilation), 2)


@ops._composed(arrays=("x", "weight", "bias"))
def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The transposed 1-D convolution of (N, C, L) ``x`` (or one sample (C, L)) with an (in, out / groups, k)
    ``weight``, as ``torch.nn.functional.conv_transpose1d``: output length (L - 1) * stride - 2 * padding +
    dilation * (k - 1) + output_padding + 1, ``output_padding`` smaller than the stride or the dilation (a
    ``ValueError`` otherwise, as PyTorch's); another rank is a ``ShapeMismatchError``."""
    owner = "conv_transpose1d"
    if isinstance(padding, str):
        raise ValueError(f"{owner} padding must be an int or one int, got {padding!r}")
    stride, dilation, padding, groups = ops._conv_arguments(owner, stride, dilation, padding, groups, rank=1)
    stride, dilation, padding = ((v,) if type(v) is int else v for v in (stride, dilation, padding))
    output_padding = arguments.ints(owner, "output_padding", output_padding, 1, minimum=0)
    arguments.check_output_padding(owner, output_padding, stride, dilation)
    input_checks.check_parameters_dtype(owner, x, weight)
    x = ops._check_conv_ranks(owner, x, weight, 1, transposed=True)
    if bias is not None:
        input_checks.check_parameters_dtype(owner, bias, weight, what="bias")
        bias = input_checks.check_conv_bias(owner, bias, weight, groups, transposed=True)
    return ops._one_sample_as_batch(x, 1, lambda batch: transposed1d(
        *input_checks.check_conv_channels(owner, batch, weight, groups, transposed=True), bias, stride, padding,
        output_padding, groups, dilation))
