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


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def dropout(x, p, training):
    return F.dropout(x, p, training)


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
