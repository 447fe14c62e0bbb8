"""ResNet with torchvision's names: a plain-PyTorch ResNet's state_dict loads and gives its outputs on every backend.
The reference is ``benchmarks.native_models.torch_resnet``, written in plain PyTorch with torchvision's module names
(torchvision itself is not installed beside this torch); the ResNet-18 benchmark trains the same one."""

import numpy as np
import torch
from torch import nn as tnn

import unidl as ud
from benchmarks.native_models import torch_resnet
from unidl.testing import max_relative_difference


def test_resnet18_has_torchvisions_keys_and_shapes(backend):
    ours = ud.models.resnet18(num_classes=10).state_dict()
    theirs = {k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
              for k, v in torch_resnet((2, 2, 2, 2), 10).state_dict().items()}
    assert {k: (v.shape, v.dtype.name) for k, v in ours.items()} == theirs  # num_batches_tracked: int64 too
    cifar = ud.models.resnet18(num_classes=10, cifar_stem=True)
    assert cifar.state_dict()["conv1.weight"].shape == (64, 3, 3, 3) and isinstance(cifar.maxpool, ud.nn.Identity)



def test_resnet_modules_are_torchvisions_and_its_children_but_fc_extract_features(backend):
    """``named_modules()`` and ``children()`` of ``ud.models.resnet18`` are a plain-PyTorch ResNet-18's
    (torchvision's), ``avgpool`` included, in torchvision's order, so that the usual feature extractor,
    ``Sequential(*list(model.children())[:-1])``, ends in the global average pool: (N, 512, 1, 1), as torchvision's
    (without ``avgpool`` it ended in layer4's (N, 512, 4, 4)); its values are the reference's to 2e-6."""
    for cifar_stem in (False, True):
        model = ud.models.resnet18(num_classes=10, cifar_stem=cifar_stem)
        reference = torch_resnet((2, 2, 2, 2), 10, cifar_stem=cifar_stem)
        assert [name for name, _ in model.named_modules()] == [name for name, _ in reference.named_modules()]
        assert [name for name, _ in model.named_children()] == [name for name, _ in reference.named_children()]
        assert [type(m).__name__ for m in model.children()] == [type(m).__name__ for m in reference.children()]
    torch.manual_seed(2)
    reference = _trained_looking(torch_resnet((2, 2, 2, 2), 10, cifar_stem=True))
    model = ud.models.resnet18(num_classes=10, cifar_stem=True).eval()
    model.load_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, strict=True)
    features = ud.nn.Sequential(*list(model.children())[:-1])
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = tnn.Sequential(*list(reference.children())[:-1])(torch.tensor(x)).detach().numpy()
    out = ud.to_numpy(features(ud.tensor(x)))
    assert out.shape == expected.shape == (2, 512, 1, 1)
    assert max_relative_difference(out, expected) < 2e-6

def _trained_looking(reference):
    """``reference`` in eval mode with its batch norms' statistics and affine parameters as after training (so that
    evaluation uses them), drawn from torch's generator as the caller seeded it."""
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return reference.eval()


def test_pytorch_resnet18_checkpoint_file_loads_and_gives_its_outputs(backend, tmp_path):
    """The Must-show: a ResNet-18 of plain PyTorch (torchvision's ImageNet stem), its state_dict saved by
    ``torch.save`` to a file, read by ``ud.load_weights`` into ``ud.models.resnet18``, gives PyTorch's outputs to
    2e-6 in float32. (The CIFAR stem's keys and shapes: ``test_resnet18_has_torchvisions_keys_and_shapes``; one
    stem here, as each ResNet-18 forward compiles tens of ops afresh on JAX.)"""
    cifar_stem = False
    torch.manual_seed(0)
    reference = _trained_looking(torch_resnet((2, 2, 2, 2), 5, cifar_stem=cifar_stem))
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = reference(torch.tensor(x)).detach().numpy()
    model = ud.models.resnet18(num_classes=5, cifar_stem=cifar_stem).eval()
    ud.load_weights(model, str(path))
    assert max_relative_difference(ud.to_numpy(model(ud.tensor(x))), expected) < 2e-6


def test_resnet34_has_torchvisions_keys_and_shapes_and_gives_a_pytorch_resnet34s_outputs(backend):
    """``ud.models.resnet34``: its ``state_dict()`` keys, shapes and dtypes are a plain-PyTorch ResNet-34's
    (torchvision's module names, blocks (3, 4, 6, 3)), and that model's state_dict, loaded with ``strict=True``, gives
    its outputs to 2e-6 in float32 on every backend (ImageNet stem: the stems are ResNet-18's code, checked there)."""
    torch.manual_seed(1)
    reference = _trained_looking(torch_resnet((3, 4, 6, 3), 7))
    model = ud.models.resnet34(num_classes=7)
    theirs = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in reference.state_dict().items()}
    assert {k: (v.shape, v.dtype.name) for k, v in model.state_dict().items()} == theirs
    assert len([k for k in theirs if k.endswith(".conv1.weight")]) == 3 + 4 + 6 + 3
    model.load_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, strict=True)
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = reference(torch.tensor(x)).detach().numpy()
    assert max_relative_difference(ud.to_numpy(model.eval()(ud.tensor(x))), expected) < 2e-6
