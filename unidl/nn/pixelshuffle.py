"""``PixelShuffle`` and ``PixelUnshuffle``: move channels into space (sub-pixel upsampling) and back, in
``torch.nn``'s NCHW order: ``ud.ops.pixel_shuffle`` and ``pixel_unshuffle``, the errors naming the layer."""

from __future__ import annotations

from unidl import arguments, pixel_shuffle_ops
from unidl.nn.module import Module


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
        return pixel_shuffle_ops.shuffled(self.describe, x, self.upscale_factor)

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
        return pixel_shuffle_ops.unshuffled(self.describe, x, self.downscale_factor)

    def extra_repr(self):
        return f"downscale_factor={self.downscale_factor}"
