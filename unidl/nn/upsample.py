"""``Upsample``: resize (N, C, L) or (N, C, H, W) input by ``ud.ops.interpolate``, with ``torch.nn.Upsample``'s arguments."""

from __future__ import annotations

from unidl import ops as functional
from unidl.nn.module import Module
from unidl.spatial_ops import ALIGNABLE_MODES, INTERPOLATION_MODES


class Upsample(Module):
    """Resize to ``size`` or by ``scale_factor`` (exactly one of them), as ``torch.nn.Upsample``.

    Args:
        size: output size, an int or one per spatial axis.
        scale_factor: multiplier of each spatial size (output floor(in * scale_factor)).
        mode: 'nearest' (default), 'nearest-exact', 'linear' (3-D input), 'bilinear' (4-D), 'bicubic' (4-D:
            PyTorch's cubic convolution, A = -0.75) or 'area'.
        align_corners: for 'linear'/'bilinear'/'bicubic' only: align the corner pixels (True) or the pixel
            centres (False, the default).
        recompute_scale_factor: compute source positions from the sizes rather than from ``scale_factor``.

    Example::

        up = ud.nn.Upsample(scale_factor=2, mode="bilinear")    # (N, C, 8, 8) -> (N, C, 16, 16)
    """

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        modes = sorted(set(INTERPOLATION_MODES[3] + INTERPOLATION_MODES[4]))
        if mode not in modes:
            raise ValueError(f"Upsample mode must be one of {', '.join(map(repr, modes))}, got {mode!r}")
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample takes exactly one of size and scale_factor")
        if align_corners is not None and mode not in ALIGNABLE_MODES:
            raise ValueError(f"Upsample align_corners applies to the 'linear', 'bilinear' and 'bicubic' modes only, "
                             f"not {mode!r}")
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def forward(self, x):
        return functional.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                                      self.recompute_scale_factor)

    def extra_repr(self):  # torch.nn's: the scale factor as floats, no align_corners
        if self.scale_factor is None:
            return f"size={self.size!r}, mode={self.mode!r}"
        factor = self.scale_factor
        factor = tuple(float(f) for f in factor) if isinstance(factor, (tuple, list)) else float(factor)
        return f"scale_factor={factor!r}, mode={self.mode!r}"
