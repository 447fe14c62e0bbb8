"""Functional ops for code inside a user's own ``forward``: they run on the backend in force.

Each call goes straight to the backend's native function (``torch.nn.functional``,
``tf.nn``, ``keras.ops``) on native tensors; the arithmetic operators (+, -, *, /, @)
of native tensors work as usual. Activations are NCHW, kernels OIHW, on every backend.
"""

from __future__ import annotations

from unidl import config


def _ops():
    return config.backend().ops


def linear(x, weight, bias=None):
    """x @ weight.T + bias, weight of shape (out, in)."""
    return _ops().linear(x, weight, bias)


def matmul(a, b):
    """Matrix product with broadcasting over leading axes."""
    return _ops().matmul(a, b)


def relu(x):
    """max(x, 0)."""
    return _ops().relu(x)


def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x."""
    return _ops().leaky_relu(x, negative_slope)


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _ops().sigmoid(x)


def tanh(x):
    """Hyperbolic tangent."""
    return _ops().tanh(x)


def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) along ``dim``."""
    return _ops().softmax(x, dim)


def log_softmax(x, dim=-1):
    """log(softmax(x)) computed stably along ``dim``."""
    return _ops().log_softmax(x, dim)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation of NCHW ``x`` with an OIHW ``weight``; padding int, pair, 'same' or 'valid'."""
    return _ops().conv2d(x, weight, bias, stride, padding)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum over windows of NCHW ``x`` (stride defaults to the kernel size)."""
    return _ops().max_pool2d(x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over windows of NCHW ``x`` (zero padding counted, as in PyTorch)."""
    return _ops().avg_pool2d(x, kernel_size, stride, padding)


def dropout(x, p, training=True):
    """Zero elements with probability ``p`` and scale the rest by 1/(1-p) when ``training``."""
    return _ops().dropout(x, p, training)


def reshape(x, shape):
    """View of ``x`` with a new shape (-1 infers one axis)."""
    return _ops().reshape(x, shape)


def flatten(x, start_dim=1):
    """Collapse the axes from ``start_dim`` on, in row-major (NCHW) order."""
    return _ops().flatten(x, start_dim)


def concat(tensors, axis=0):
    """Join tensors along an existing axis."""
    return _ops().concat(tensors, axis)


def stack(tensors, axis=0):
    """Join tensors along a new axis."""
    return _ops().stack(tensors, axis)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes when None)."""
    return _ops().mean(x, axis, keepdims)


def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (all axes when None)."""
    return _ops().sum(x, axis, keepdims)


def clip(x, minimum=None, maximum=None):
    """Limit values to [minimum, maximum] (either bound may be None)."""
    return _ops().clip(x, minimum, maximum)


def exp(x):
    return _ops().exp(x)


def log(x):
    return _ops().log(x)


def sqrt(x):
    return _ops().sqrt(x)


def abs(x):
    return _ops().abs(x)


def square(x):
    return _ops().square(x)


def sign(x):
    return _ops().sign(x)


def maximum(a, b):
    """Element-wise maximum."""
    return _ops().maximum(a, b)


def where(condition, a, b):
    """a where condition holds, else b."""
    return _ops().where(condition, a, b)


def zeros_like(x):
    return _ops().zeros_like(x)


def one_hot(labels, num_classes):
    """Integer labels (N,) -> (N, num_classes) indicator matrix."""
    return _ops().one_hot(labels, num_classes)


def mse_loss(prediction, target, reduction="mean"):
    return _ops().mse_loss(prediction, target, reduction)


def l1_loss(prediction, target, reduction="mean"):
    return _ops().l1_loss(prediction, target, reduction)


def cross_entropy(logits, labels, reduction="mean"):
    """Softmax cross-entropy of (N, C) logits against integer labels (N,)."""
    return _ops().cross_entropy(logits, labels, reduction)


def bce_with_logits(logits, targets, reduction="mean"):
    """Binary cross-entropy on logits, numerically stable."""
    return _ops().bce_with_logits(logits, targets, reduction)


def shape(x):
    """The shape as a tuple: ints where known, scalar tensors where a graph leaves a dimension unknown
    (so ``range(ud.ops.shape(x)[1])`` works inside ``ud.function`` for any length)."""
    return _ops().shape(x)


def scan(fn, init, xs, axis=0):
    """Loop ``carry, y = fn(carry, x)`` over the slices ``x`` of ``xs`` along ``axis``, starting from ``init``.

    Returns ``(final carry, ys)`` with the ``y``s stacked along ``axis`` (same dtype as the carry).
    It is the plain Python loop on torch, a ``tf.while_loop`` on tensorflow (so the length may be
    unknown inside a graph, and a new length never retraces) and ``keras.ops.scan`` on keras.
    """
    return _ops().scan(fn, init, xs, axis)
