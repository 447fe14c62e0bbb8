"""The lecture's two-layer net: Linear -> ReLU -> Linear, written once for every backend."""

from unidl import nn


class TwoLayerNet(nn.Module):
    """``y = W2 relu(W1 x + b1) + b2`` (CS231n lecture 8's running example).

    Args: D_in (input size), H (hidden size), D_out (output size).
    """

    def __init__(self, D_in: int, H: int, D_out: int):
        super().__init__()
        self.config = {"D_in": D_in, "H": H, "D_out": D_out}
        self.linear1 = nn.Linear(D_in, H)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(H, D_out)

    def forward(self, x):
        return self.linear2(self.relu(self.linear1(x)))
