"""The lecture's two-layer net: Linear -> ReLU -> Linear, written once for every backend."""

from unidl import nn
from unidl.models.pretrained import load_pretrained


class TwoLayerNet(nn.Module):
    """``y = W2 relu(W1 x + b1) + b2`` (CS231n lecture 8's running example).

    Args: D_in (input size), H (hidden size), D_out (output size), pretrained (load the weights
    shipped for the 8x8 digits: only ``TwoLayerNet(64, 100, 10)``, which takes the images flattened,
    ``x.reshape(len(x), -1)``, and reaches about 98% test accuracy).
    """

    def __init__(self, D_in: int, H: int, D_out: int, pretrained: bool = False):
        super().__init__()
        self.config = {"D_in": D_in, "H": H, "D_out": D_out}
        self.linear1 = nn.Linear(D_in, H)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(H, D_out)
        if pretrained:
            load_pretrained(self, "two_layer_net_digits.safetensors")

    def forward(self, x):
        return self.linear2(self.relu(self.linear1(x)))
