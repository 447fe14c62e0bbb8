"""``Flatten``: collapse all axes from ``start_dim`` on, in NCHW order on every backend."""

from unidl.nn.module import Module


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W) with the features in NCHW (channel-major) order."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return self._ops.flatten(x, self.start_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}"
