"""``LayerNorm``: normalisation over each sample's last axes, with PyTorch's arguments, parameters and defaults."""

from __future__ import annotations

from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.nn.module import Module


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, the mean and biased variance taken over the last
    ``len(normalized_shape)`` axes of each sample (in training and evaluation alike).

    Args:
        normalized_shape: int or tuple, the shape of those last axes.
        eps: added to the variance.
        elementwise_affine: learn ``weight`` (starting at 1) of shape ``normalized_shape``.
        bias: with ``elementwise_affine``, learn ``bias`` (starting at 0) too.

    Example::

        norm = ud.nn.LayerNorm(64)          # x: (batch, time, 64)
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"LayerNorm normalized_shape must be a positive int or a tuple of them, got {normalized_shape!r}")
        if eps <= 0:
            raise ValueError(f"LayerNorm eps must be positive, got {eps!r}")
        self.normalized_shape, self.eps, self.elementwise_affine = shape, float(eps), bool(elementwise_affine)
        self.weight = self.parameter(init.ones(shape)) if elementwise_affine else None
        self.bias = self.parameter(init.zeros(shape)) if elementwise_affine and bias else None

    def forward(self, x):
        tail = tuple(x.shape)[-len(self.normalized_shape):]
        if len(tail) != len(self.normalized_shape) or any(a is not None and a != b for a, b in zip(tail, self.normalized_shape)):
            raise ShapeMismatchError(f"{self.describe()} expected input whose last axes are {self.normalized_shape}, "
                                     f"received shape {tuple(x.shape)}")
        return self._ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
