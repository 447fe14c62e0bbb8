"""``pixel_shuffle`` and ``pixel_unshuffle`` of ``torch.nn.functional``: move channels into space (sub-pixel
upsampling) and back, in NCHW order, by one reshape and permutation on every backend. Exported as
``ud.ops.<name>``; ``PixelShuffle``/``PixelUnshuffle`` call ``shuffled``/``unshuffled`` with their own names in the
errors (``owner``: a string, or a callable such as ``layer.describe``)."""

from __future__ import annotations

from unidl import arguments, input_checks, ops
from unidl.errors import ShapeMismatchError


def _checked_sizes(owner, x):
    """The sizes of ``x`` after checking it has at least 3 axes (*, C, H, W); ints, or scalar tensors where a graph
    leaves them unknown."""
    if len(tuple(x.shape)) < 3:
        raise ShapeMismatchError(f"{input_checks.literal(owner)} expected input of at least 3 axes (*, C, H, W), "
                                 f"received shape {tuple(x.shape)}")
    return input_checks.sizes_of(x)


def _require_divisible(owner, x, sizes, axis, factor, what):
    """``x`` after checking that axis ``axis`` of its ``sizes`` divides by ``factor`` (now, or when a graph runs):
    ``ShapeMismatchError`` naming ``owner``, the axis and the shape."""
    rank = len(sizes)

    def template():
        return (f"{input_checks.literal(owner)}: the {what} {{}} of the input is not divisible by {factor} "
                f"(input shape {input_checks.shape_template(rank)})")

    return input_checks.require(x, input_checks.holds(sizes[axis] % factor == 0), template,
                                (sizes[axis],) + tuple(sizes))


def shuffled(owner, x, r: int):
    """``pixel_shuffle`` of ``x`` by a checked factor ``r``, its errors naming ``owner``."""
    sizes = _checked_sizes(owner, x)
    x = _require_divisible(owner, x, sizes, -3, r * r, "channels (axis -3)")
    *batch, channels, height, width = sizes
    x = ops.reshape(x, [*batch, channels // (r * r), r, r, height, width])
    k = len(batch)
    x = ops.permute(x, tuple(range(k)) + (k, k + 3, k + 1, k + 4, k + 2))
    return ops.reshape(x, [*batch, channels // (r * r), height * r, width * r])


def unshuffled(owner, x, r: int):
    """``pixel_unshuffle`` of ``x`` by a checked factor ``r``, its errors naming ``owner``."""
    sizes = _checked_sizes(owner, x)
    x = _require_divisible(owner, x, sizes, -2, r, "height (axis -2)")
    x = _require_divisible(owner, x, sizes, -1, r, "width (axis -1)")
    *batch, channels, height, width = sizes
    x = ops.reshape(x, [*batch, channels, height // r, r, width // r, r])
    k = len(batch)
    x = ops.permute(x, tuple(range(k)) + (k, k + 2, k + 4, k + 1, k + 3))
    return ops.reshape(x, [*batch, channels * r * r, height // r, width // r])


@ops._composed(arrays=("x",))
def pixel_shuffle(x, upscale_factor):
    """(*, C * r * r, H, W) -> (*, C, H * r, W * r), r = ``upscale_factor`` (a positive int), as
    ``torch.nn.functional.pixel_shuffle``: output [c, h * r + i, w * r + j] = input[c * r * r + i * r + j, h, w].
    Channels not divisible by r * r, or fewer than 3 axes, are a ``ShapeMismatchError``."""
    return shuffled("pixel_shuffle", x, arguments.positive_int("pixel_shuffle", "upscale_factor", upscale_factor))


@ops._composed(arrays=("x",))
def pixel_unshuffle(x, downscale_factor):
    """(*, C, H * r, W * r) -> (*, C * r * r, H, W), r = ``downscale_factor`` (a positive int): the inverse of
    ``pixel_shuffle``, as ``torch.nn.functional.pixel_unshuffle``; H or W not divisible by r is a
    ``ShapeMismatchError``."""
    return unshuffled("pixel_unshuffle", x, arguments.positive_int("pixel_unshuffle", "downscale_factor",
                                                                   downscale_factor))
