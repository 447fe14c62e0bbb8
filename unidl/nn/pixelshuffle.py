"""``PixelShuffle`` and ``PixelUnshuffle``: move channels into space (sub-pixel upsampling) and back, in
``torch.nn``'s NCHW order, by one reshape and permutation on every backend."""

from __future__ import annotations

from unidl import arguments, input_checks
from unidl.errors import ShapeMismatchError
from unidl.nn.module import Module


def _checked_sizes(layer, x):
    """``(x, its sizes)`` after checking it has at least 3 axes (*, C, H, W); sizes are ints, or scalar tensors
    where a graph leaves them unknown."""
    if len(tuple(x.shape)) < 3:
        raise ShapeMismatchError(f"{layer.describe()} expected input of at least 3 axes (*, C, H, W), received "
                                 f"shape {tuple(x.shape)}")
    return input_checks.sizes_of(x)


def _require_divisible(layer, x, sizes, axis, factor, what):
    """``x`` after checking that axis ``axis`` of its ``sizes`` divides by ``factor`` (now, or when a graph runs):
    ``ShapeMismatchError`` naming the layer, the axis and the shape."""
    rank = len(sizes)

    def template():
        return (f"{input_checks.literal(layer.describe)}: the {what} {{}} of the input is not divisible by {factor} "
                f"(input shape {input_checks.shape_template(rank)})")

    return input_checks.require(x, input_checks.holds(sizes[axis] % factor == 0), template,
                                (sizes[axis],) + tuple(sizes))


class PixelShuffle(Module):
    """(*, C * r * r, H, W) -> (*, C, H * r, W * r), r = ``upscale_factor``, as ``torch.nn.PixelShuffle``: output
    [c, h * r + i, w * r + j] = input[c * r * r + i * r + j, h, w].

    Args:
        upscale_factor: r, a positive int.
    """

    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = arguments.positive_int("PixelShuffle", "upscale_factor", upscale_factor)

    def forward(self, x):
        r = self.upscale_factor
        sizes = _checked_sizes(self, x)
        x = _require_divisible(self, x, sizes, -3, r * r, "channels (axis -3)")
        *batch, channels, height, width = sizes
        x = self._ops.reshape(x, [*batch, channels // (r * r), r, r, height, width])
        k = len(batch)
        x = self._ops.permute(x, tuple(range(k)) + (k, k + 3, k + 1, k + 4, k + 2))
        return self._ops.reshape(x, [*batch, channels // (r * r), height * r, width * r])

    def extra_repr(self):
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H * r, W * r) -> (*, C * r * r, H, W), r = ``downscale_factor``: the inverse of ``PixelShuffle``, as
    ``torch.nn.PixelUnshuffle``.

    Args:
        downscale_factor: r, a positive int.
    """

    def __init__(self, downscale_factor: int):
        super().__init__()
        self.downscale_factor = arguments.positive_int("PixelUnshuffle", "downscale_factor", downscale_factor)

    def forward(self, x):
        r = self.downscale_factor
        sizes = _checked_sizes(self, x)
        x = _require_divisible(self, x, sizes, -2, r, "height (axis -2)")
        x = _require_divisible(self, x, sizes, -1, r, "width (axis -1)")
        *batch, channels, height, width = sizes
        x = self._ops.reshape(x, [*batch, channels, height // r, r, width // r, r])
        k = len(batch)
        x = self._ops.permute(x, tuple(range(k)) + (k, k + 2, k + 4, k + 1, k + 3))
        return self._ops.reshape(x, [*batch, channels * r * r, height // r, width // r])

    def extra_repr(self):
        return f"downscale_factor={self.downscale_factor}"
