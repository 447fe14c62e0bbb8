"""unidl's functional ops on PyTorch: mostly ``torch.nn.functional`` itself, NCHW throughout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

linear = F.linear
matmul = torch.matmul
relu = torch.relu
sigmoid = torch.sigmoid
tanh = torch.tanh
exp = torch.exp
log = torch.log
sqrt = torch.sqrt
abs = torch.abs
sign = torch.sign
square = torch.square
maximum = torch.maximum
where = torch.where
zeros_like = torch.zeros_like


def leaky_relu(x, negative_slope=0.01):
    return F.leaky_relu(x, negative_slope)


def softmax(x, dim=-1):
    return torch.softmax(x, dim)


def log_softmax(x, dim=-1):
    return torch.log_softmax(x, dim)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    return F.conv2d(x, weight, bias, stride, padding)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    return F.max_pool2d(x, kernel_size, stride if stride is not None else kernel_size, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return F.avg_pool2d(x, kernel_size, stride if stride is not None else kernel_size, padding)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if not training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps), running_mean, running_var
    # torch's kernel updates the statistics it is given in place: give it copies, so the op stays pure
    new_mean, new_var = running_mean.clone(), running_var.clone()
    return F.batch_norm(x, new_mean, new_var, weight, bias, True, momentum, eps), new_mean, new_var


def _is_default_generator(generator, device) -> bool:
    if generator is None:
        return True
    if device.type == "cpu":
        return generator is torch.default_generator
    return device.type == "cuda" and generator is torch.cuda.default_generators[device.index or 0]


def dropout(x, p, training=True, generator=None):
    if not training or p == 0:
        return x
    if _is_default_generator(generator, x.device):
        return F.dropout(x, p, True)  # the fused kernel draws from the device's default generator
    if p == 1:
        return torch.zeros_like(x)
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator)
    return x * keep / (1 - p)


def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


def flatten(x, start_dim=1):
    return torch.flatten(x, start_dim)


def concat(tensors, axis=0):
    return torch.cat(list(tensors), axis)


def stack(tensors, axis=0):
    return torch.stack(list(tensors), axis)


def mean(x, axis=None, keepdims=False):
    return torch.mean(x) if axis is None else torch.mean(x, axis, keepdims)


def sum(x, axis=None, keepdims=False):
    return torch.sum(x) if axis is None else torch.sum(x, axis, keepdims)


def clip(x, minimum=None, maximum=None):
    return torch.clamp(x, minimum, maximum)


def shape(x):
    return tuple(x.shape)


def cast_like(x, like):
    return x.to(like.dtype)


def one_hot(labels, num_classes):
    return F.one_hot(labels.long(), num_classes)


def mse_loss(prediction, target, reduction="mean"):
    return F.mse_loss(prediction, target, reduction=reduction)


def l1_loss(prediction, target, reduction="mean"):
    return F.l1_loss(prediction, target, reduction=reduction)


def cross_entropy(logits, labels, reduction="mean"):
    if labels.device.type == "cpu" and labels.numel():  # on a GPU, torch's own device assert fires instead
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= logits.shape[-1]:
            raise ValueError(f"CrossEntropyLoss labels must lie in [0, {logits.shape[-1]}); "
                             f"found labels from {low} to {high}")
    return F.cross_entropy(logits, labels.long(), reduction=reduction)


def bce_with_logits(logits, targets, reduction="mean"):
    return F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)


def scan(fn, init, xs, axis=0):
    carry, ys = init, []
    for x in torch.unbind(xs, axis):
        carry, y = fn(carry, x)
        ys.append(y)
    return carry, torch.stack(ys, axis)
