"""The lecture's LeNet-style CNN, written once for every backend."""

from unidl import nn
from unidl.models.pretrained import load_pretrained


def lenet_padding(image_size: int) -> int:
    """0 (the classic LeNet) when the image is large enough for two 5x5 convs and 2x2 pools, else 2 ('same')."""
    for padding in (0, 2):
        size = image_size
        for _ in range(2):
            size = (size + 2 * padding - 4) // 2
        if size >= 1 and image_size + 2 * padding >= 5:
            return padding
    raise ValueError(f"CNN image_size={image_size} is too small: two 5x5 convolutions and 2x2 pools need at least 4 pixels")


class CNN(nn.Module):
    """conv 6@5x5 -> max-pool 2 -> conv 16@5x5 -> max-pool 2 -> fc 120 -> fc 84 -> fc num_classes, ReLU between.

    For 3x32x32 (CIFAR-10) this is LeNet exactly; for small images such as 1x8x8 (digits) the
    convolutions pad by 2 so that every shape stays valid. ``pretrained=True`` loads the weights
    shipped for the 8x8 digits (only ``CNN(in_channels=1, num_classes=10, image_size=8)``; about
    97% test accuracy).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, pretrained: bool = False):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
        padding = lenet_padding(image_size)
        size = ((image_size + 2 * padding - 4) // 2 + 2 * padding - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * size * size, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )
        if pretrained:
            load_pretrained(self, "cnn_digits.safetensors")

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))
