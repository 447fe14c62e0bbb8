"""Element-wise activations as layers: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``."""

from __future__ import annotations

from unidl.nn.module import Module


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        return self._ops.relu(x)


class LeakyReLU(Module):
    """x if x > 0 else negative_slope * x (PyTorch's default slope 0.01)."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return self._ops.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x):
        return self._ops.sigmoid(x)


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x):
        return self._ops.tanh(x)


class Softmax(Module):
    """exp(x) / sum(exp(x)) along ``dim`` (default: the last axis)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return self._ops.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"
