"""``Conv1d``, ``Conv2d``, ``ConvTranspose1d`` and ``ConvTranspose2d`` over NCL/NCHW input, with PyTorch's arguments,
defaults, initialisation and ``state_dict()`` names (``weight`` OIHW, or (in, out / groups, kh, kw) when transposed)."""

from __future__ import annotations

import functools

from unidl import arguments, input_checks, ops as functional, spatial1d_ops, spatial_ops
from unidl.arguments import positive_int
from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.nn.module import Module


def check_nchw(layer: Module, x, channels: int | None) -> tuple:
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ShapeMismatchError(f"{layer.describe()} expected NCHW input of rank 4 (or one sample (C, H, W)), "
                                 f"received shape {shape}")
    if channels is not None and shape[1] is not None and shape[1] != channels:
        raise ShapeMismatchError(
            f"{layer.describe()} expected input of shape (N, {channels}, H, W), received {shape}")
    return shape


def unbatched(forward):
    """A layer's ``forward`` that also takes one sample without its batch axis, (C, *spatial) where the layer
    takes (N, C, *spatial) (``rank`` spatial axes), as ``torch.nn``'s convolutions and poolings do: run as a batch
    of one, that axis dropped from the output (each output: ``return_indices``'s too)."""

    @functools.wraps(forward)
    def run(self, x, *args, **kwargs):
        return functional._one_sample_as_batch(x, self.rank, lambda batch: forward(self, batch, *args, **kwargs))

    return run


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvNd(Module):
    """What ``Conv1d``, ``Conv2d`` and the transposed ones share: argument checks, weights and the padding modes.

    Weights are drawn as PyTorch draws them (Kaiming-uniform with a=sqrt(5), bias U(-1/sqrt(fan_in),
    1/sqrt(fan_in))), fan_in being the weight's second axis times the kernel's size."""

    rank = 2
    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode):
        super().__init__()
        owner = type(self).__name__
        in_channels = positive_int(owner, "in_channels", in_channels)
        out_channels = positive_int(owner, "out_channels", out_channels)
        groups = positive_int(owner, "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{owner} in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                             f"divisible by groups ({groups})")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{owner} padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, "
                             f"got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = arguments.ints(owner, "kernel_size", kernel_size, self.rank)
        self.stride = arguments.ints(owner, "stride", stride, self.rank)
        self.dilation = arguments.ints(owner, "dilation", dilation, self.rank)
        self.padding_mode = padding_mode
        if isinstance(padding, str) and padding in ("same", "valid") and not self.transposed:
            arguments.check_same_padding(owner, padding, stride)
            self.padding = padding
        else:
            self.padding = arguments.ints(owner, "padding", padding, self.rank, minimum=0)
        shape = ((in_channels, out_channels // groups) if self.transposed else (out_channels, in_channels // groups)) \
            + self.kernel_size
        fan_in = shape[1]
        for k in self.kernel_size:
            fan_in *= k
        self.weight = self.parameter(init.kaiming_uniform(shape, fan_in))
        self.bias = self.parameter(init.bias_uniform((out_channels,), fan_in)) if bias else None

    def _explicit_padding(self) -> tuple:
        """``pad()``'s amounts (last axis first) for a padding mode other than 'zeros', as PyTorch computes them."""
        if self.padding == "valid":
            pairs = [(0, 0)] * self.rank
        elif self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            pairs = [(t // 2, t - t // 2) for t in totals]
        else:
            pairs = [(p, p) for p in self.padding]
        return tuple(v for pair in reversed(pairs) for v in pair)

    def _check_input(self, x):
        """``x`` after checking its rank, channels and dtype, and that the kernel fits the padded input (inside
        graphs too, where the sizes are known only when it runs: see ``unidl.input_checks``)."""
        shape = tuple(x.shape)
        layout = ("N", self.in_channels) + ("L",) if self.rank == 1 else ("N", self.in_channels, "H", "W")

        def mismatch(owner, received):
            return (f"{owner} expected input of shape ({', '.join(map(str, layout))}) or "
                    f"({', '.join(map(str, layout[1:]))}), received {received}")

        if len(shape) != self.rank + 2 or (shape[1] is not None and shape[1] != self.in_channels):
            raise ShapeMismatchError(mismatch(self.describe(), shape))
        if None in shape:  # (a graph traced for any sizes: checked when it runs)
            x = input_checks.require_sizes(self.describe, x, {1: self.in_channels}, mismatch)
        input_checks.check_floating(self.describe, x)
        input_checks.check_parameters_dtype(self.describe, x, self.weight)
        if self.transposed:
            return x
        spans = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
        paddings = (self.padding,) * self.rank if isinstance(self.padding, str) else self.padding
        return input_checks.check_window_fits(self.describe, x, spans, paddings,
                                              "use a smaller kernel or dilation, more padding or a larger input")

    def _padded(self, x):
        """``x`` padded by the padding mode (reflect, replicate, circular), and the padding left for the kernel."""
        if self.padding_mode == "zeros":
            return x, self.padding
        return functional.pad(x, self._explicit_padding(), self.padding_mode), 0

    def extra_repr(self):
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self.rank:
            text += f", padding={self.padding}"  # (a string unquoted, as torch.nn's)
        if self.dilation != (1,) * self.rank:
            text += f", dilation={self.dilation}"
        if getattr(self, "output_padding", (0,) * self.rank) != (0,) * self.rank:
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


class Conv2d(_ConvNd):
    """2-D convolution: ``y[n, o] = bias[o] + sum_c weight[o, c] * x[n, c]`` (cross-correlation), as ``torch.nn.Conv2d``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw), default 1.
        padding: int, (ph, pw), 'valid' (none) or 'same' (output size = input size, stride 1).
        dilation: int or (dh, dw): the spacing of the kernel's taps, default 1.
        groups: split the channels into ``groups`` independent convolutions (``in_channels`` for depthwise).
        bias: learn an additive bias per output channel.
        padding_mode: 'zeros' (default), 'reflect', 'replicate' or 'circular'.

    Input (N, in_channels, H, W); weight (out_channels, in_channels / groups, kh, kw), initialised as in
    PyTorch (Kaiming-uniform with a=sqrt(5), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    """

    rank = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)

    @unbatched
    def forward(self, x):
        x = self._check_input(x)
        if self.padding_mode == "zeros" and self.dilation == (1, 1) and self.groups == 1:
            return self._ops.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        x, padding = self._padded(x)
        return self._ops.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class Conv1d(_ConvNd):
    """1-D convolution over (N, in_channels, L) input, as ``torch.nn.Conv1d`` (the arguments of ``Conv2d``, each
    one int); weight (out_channels, in_channels / groups, k)."""

    rank = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)

    @unbatched
    def forward(self, x):
        x = self._check_input(x)
        x, padding = self._padded(x)
        padding = padding if isinstance(padding, str) else _single(padding)
        return functional.conv1d(x, self.weight, self.bias, self.stride[0], padding, self.dilation[0], self.groups)


def _single(value) -> int:
    return value if isinstance(value, int) else value[0]


class _ConvTransposeNd(_ConvNd):
    """What ``ConvTranspose1d`` and ``ConvTranspose2d`` share: a 1-d one runs as the 2-d one over (N, C, 1, L) with
    a kernel of height 1."""

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias, dilation,
                 padding_mode):
        owner = type(self).__name__
        if padding_mode != "zeros":
            raise ValueError(f"{owner} supports padding_mode='zeros' only (as PyTorch), got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"{owner} padding must be an int or {'a pair of ints' if self.rank == 2 else 'one int'}, "
                             f"got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        self.output_padding = arguments.ints(owner, "output_padding", output_padding, self.rank, minimum=0)
        arguments.check_output_padding(owner, self.output_padding, self.stride, self.dilation)

    def forward(self, x, output_size=None):
        """``output_size`` (the spatial sizes, or (N, C, *spatial) of which those are read, (C, *spatial) for one
        unbatched sample; ints, or ``ud.ops.shape(x)``'s sizes where a graph leaves them unknown), as PyTorch's: the
        output's spatial size, one of the ``stride`` sizes the input can give; it sets the output padding of this
        call (``output_padding`` is then not used). ``ShapeMismatchError`` (a ``ValueError``) for a size out of that
        range."""
        given = arguments.sequence(output_size) if len(getattr(x, "shape", ())) == self.rank + 1 else None
        if given is not None and len(given) == self.rank + 1:  # an unbatched sample's (C, *spatial)
            output_size = tuple(given[1:])
        elif given is not None and len(given) != self.rank:  # (torch's rule: no (N, C, *spatial) for one sample)
            forms = "2 sizes (H, W) or 3 (C, H, W)" if self.rank == 2 else "1 size (L,) or 2 (C, L)"
            raise ValueError(f"{self.describe()}: for one unbatched sample of shape {tuple(x.shape)}, output_size "
                             f"must be {forms}, got {output_size!r}")
        return self._forward(x, output_size)

    @unbatched
    def _forward(self, x, output_size):
        x = self._check_input(x)
        padding, crop = self.output_padding, None
        if output_size is not None:
            padding, crop, x = spatial_ops.transposed_output_padding(
                self.describe, x, output_size, self.kernel_size, self.stride, self.padding, self.dilation)
        if self.rank == 2:
            y = functional.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, padding, self.groups,
                                            self.dilation)
        else:
            y = spatial1d_ops.transposed1d(x, self.weight, self.bias, self.stride, self.padding, tuple(padding),
                                           self.groups, self.dilation)
        return y if crop is None else spatial_ops.cropped(y, crop)


class ConvTranspose2d(_ConvTransposeNd):
    """The transposed 2-D convolution (the gradient of ``Conv2d`` with respect to its input), as
    ``torch.nn.ConvTranspose2d``: output size (H - 1) * stride - 2 * padding + dilation * (k - 1) +
    output_padding + 1.

    Args: those of ``Conv2d`` (padding an int or pair only, padding_mode 'zeros' only, as in PyTorch), and
    ``output_padding`` (int or pair, smaller than stride or dilation): added to one side of the output.
    Weight (in_channels, out_channels / groups, kh, kw), fan_in out_channels / groups * kh * kw (PyTorch's).
    """

    rank = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode)


class ConvTranspose1d(_ConvTransposeNd):
    """The transposed 1-D convolution over (N, in_channels, L) or (in_channels, L) input, as
    ``torch.nn.ConvTranspose1d``: output length (L - 1) * stride - 2 * padding + dilation * (k - 1) +
    output_padding + 1; the arguments of ``ConvTranspose2d``, each one int. Weight (in_channels,
    out_channels / groups, k); ``forward(x, output_size=)`` takes (L,), (N, C, L) or, for one sample, (C, L).
    """

    rank = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode)
