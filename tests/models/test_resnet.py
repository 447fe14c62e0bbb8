"""ResNet with torchvision's names: a plain-PyTorch ResNet's state_dict loads and gives its outputs on every backend.
The reference is written here in plain PyTorch with torchvision's module names (torchvision itself is not installed
beside this torch)."""

import numpy as np
import torch
from torch import nn as tnn

import unidl as ud
from unidl.testing import max_relative_difference


class TorchBasicBlock(tnn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(tnn.Module):
    def __init__(self, layers, num_classes):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU()
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = [TorchBasicBlock(inplanes, planes, 1 if index == 0 else 2)]
            stage += [TorchBasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", tnn.Sequential(*stage))
            inplanes = planes
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnet18_has_torchvisions_keys_and_shapes(backend):
    ours = ud.models.resnet18(num_classes=10).state_dict()
    theirs = {k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
              for k, v in TorchResNet((2, 2, 2, 2), 10).state_dict().items()}
    assert {k: (v.shape, v.dtype.name) for k, v in ours.items()} == theirs  # num_batches_tracked: int64 too
    cifar = ud.models.resnet18(num_classes=10, cifar_stem=True)
    assert cifar.state_dict()["conv1.weight"].shape == (64, 3, 3, 3) and isinstance(cifar.maxpool, ud.nn.Identity)


def test_pytorch_resnet_state_dict_loads_and_gives_its_outputs(backend):
    torch.manual_seed(0)
    reference = TorchResNet((1, 1, 1, 1), 5)
    with torch.no_grad():  # statistics as after training, so evaluation uses them
        for module in reference.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    reference.eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = reference(torch.tensor(x)).detach().numpy()
    model = ud.models.ResNet((1, 1, 1, 1), num_classes=5).eval()
    model.load_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, strict=True)
    assert max_relative_difference(ud.to_numpy(model(ud.tensor(x))), expected) < 2e-5
