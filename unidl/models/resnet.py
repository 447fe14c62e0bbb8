"""ResNet-18/34 with torchvision's module and parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``,
``fc``), written once against ``unidl.nn``: the ImageNet stem (7x7 stride-2 conv, 3x3 max-pool) or, for 32x32 images,
the CIFAR stem (3x3 stride-1 conv, no pool)."""

from __future__ import annotations

import math

from unidl import nn
from unidl import ops
from unidl.nn import init


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),
    the shortcut a 1x1 conv-BN (``downsample``) when the stride or the width changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of ``BasicBlock``\\s, ``layers`` blocks per stage (64, 128, 256, 512 channels), global average
    pooling (``avgpool``) and ``fc``. Convolutions start as torchvision's (Kaiming normal, fan out), BatchNorm at 1
    and 0.

    Args:
        layers: blocks per stage, (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-34.
        num_classes: outputs of ``fc``. in_channels: channels of the input images.
        cifar_stem: a 3x3 stride-1 ``conv1`` and no max-pool (``maxpool`` is an ``Identity``), for 32x32 images.
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3, cifar_stem: bool = False):
        super().__init__()
        self.config = {"layers": list(layers), "num_classes": num_classes, "in_channels": in_channels,
                       "cifar_stem": cifar_stem}
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes))
            stage = [BasicBlock(inplanes, planes, stride, downsample)]
            inplanes = planes
            stage += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        # a child of its own, as torchvision's: ``Sequential(*list(model.children())[:-1])`` is the usual feature
        # extractor, (N, 512, 1, 1), and ``named_modules()`` lists it
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                shape = tuple(module.weight.shape)
                fan_out = shape[0] * shape[2] * shape[3]
                module.load_state_dict({"weight": init.normal(shape, 0.0, math.sqrt(2.0 / fan_out))})

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(ops.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3, cifar_stem: bool = False) -> ResNet:
    """ResNet-18 (torchvision's names and layout); ``cifar_stem=True`` for 32x32 images."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, cifar_stem)


def resnet34(num_classes: int = 1000, in_channels: int = 3, cifar_stem: bool = False) -> ResNet:
    """ResNet-34 (torchvision's names and layout); ``cifar_stem=True`` for 32x32 images."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, cifar_stem)
