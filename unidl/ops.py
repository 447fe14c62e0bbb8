"""Functional ops for code inside a user's own ``forward``: they run on the backend in force.

This file is also the op registry's source: each function below declares one op (its signature and
docstring are the contract every backend's ``ops`` module implements), and ``@op`` turns the
declaration into a dispatcher that calls the backend's native function (``torch.nn.functional``,
``tf.nn``, ``keras.ops``) on native tensors. ``interface.OPS`` is derived from these declarations;
adding an op means declaring it here and implementing it in each backend's ``ops.py``. The
arithmetic operators (+, -, *, /, @) of native tensors work as usual. Activations are NCHW,
kernels OIHW, on every backend. Ops are pure: stateful results (batch norm's running statistics)
are returned, randomness (dropout) takes an explicit generator.
"""

from __future__ import annotations

from unidl import config
from unidl.backends.op_registry import declare


def _ops():
    return config.backend().ops


def op(declaration=None, **options):
    """Declare an op (see ``unidl.backends.op_registry.declare``)."""
    if declaration is None:
        return lambda d: declare(_ops, **options)(d)
    return declare(_ops)(declaration)


@op
def linear(x, weight, bias=None):
    """x @ weight.T + bias, weight of shape (out, in)."""


@op
def matmul(a, b):
    """Matrix product with broadcasting over leading axes."""


@op
def relu(x):
    """max(x, 0)."""


@op
def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x."""


@op
def sigmoid(x):
    """1 / (1 + exp(-x))."""


@op
def tanh(x):
    """Hyperbolic tangent."""


@op
def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) along ``dim``."""


@op
def log_softmax(x, dim=-1):
    """log(softmax(x)) computed stably along ``dim``."""


@op
def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation of NCHW ``x`` with an OIHW ``weight``; padding int, pair, 'same' or 'valid'."""


@op
def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum over windows of NCHW ``x`` (stride defaults to the kernel size)."""


@op
def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over windows of NCHW ``x`` (zero padding counted, as in PyTorch)."""


@op(dispatch=False)
def dropout(x, p, training=True, generator=None):
    """Zero elements with probability ``p`` and scale the rest by 1/(1-p) when ``training``.

    The mask is drawn from ``generator``: the backend's own generator (``Backend.generator()``,
    seeded by ``ud.manual_seed``) when None, or one of the framework's generators passed explicitly."""
    ops = _ops()
    if generator is None and training and p:
        generator = config.backend().generator()
    return ops.dropout(x, p, training, generator)


@op
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Normalise NCHW (or (N, C), (N, C, L)) ``x`` per channel; returns ``(y, new_running_mean, new_running_var)``.

    Training: the batch's mean and biased variance normalise ``x``; the new running statistics are
    ``(1 - momentum) * running + momentum * batch`` (unbiased variance), as in PyTorch. Eval: the
    running statistics normalise ``x`` and come back unchanged. Pure: the arguments are never
    modified; ``nn.BatchNorm*`` writes the returned statistics into its buffers."""


@op
def reshape(x, shape):
    """View of ``x`` with a new shape (-1 infers one axis)."""


@op
def flatten(x, start_dim=1):
    """Collapse the axes from ``start_dim`` on, in row-major (NCHW) order."""


@op
def concat(tensors, axis=0):
    """Join tensors along an existing axis."""


@op
def stack(tensors, axis=0):
    """Join tensors along a new axis."""


@op
def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes when None)."""


@op
def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (all axes when None)."""


@op
def clip(x, minimum=None, maximum=None):
    """Limit values to [minimum, maximum] (either bound may be None)."""


@op
def exp(x):
    """e ** x, element-wise."""


@op
def log(x):
    """Natural logarithm, element-wise."""


@op
def sqrt(x):
    """Square root, element-wise."""


@op
def abs(x):
    """Absolute value, element-wise."""


@op
def square(x):
    """x * x, element-wise."""


@op
def sign(x):
    """-1, 0 or 1 by the sign of each element."""


@op
def maximum(a, b):
    """Element-wise maximum."""


@op
def where(condition, a, b):
    """a where condition holds, else b."""


@op
def zeros_like(x):
    """Zeros of ``x``'s shape and dtype."""


@op
def cast_like(x, like):
    """``x`` converted to ``like``'s dtype."""


@op
def one_hot(labels, num_classes):
    """Integer labels (N,) -> (N, num_classes) indicator matrix."""


@op
def mse_loss(prediction, target, reduction="mean"):
    """Mean (or sum) of squared differences."""


@op
def l1_loss(prediction, target, reduction="mean"):
    """Mean (or sum) of absolute differences."""


@op
def cross_entropy(logits, labels, reduction="mean"):
    """Softmax cross-entropy of (N, C) logits against integer labels (N,)."""


@op
def bce_with_logits(logits, targets, reduction="mean"):
    """Binary cross-entropy on logits, numerically stable."""


@op
def shape(x):
    """The shape as a tuple: ints where known, scalar tensors where a graph leaves a dimension unknown
    (so ``range(ud.ops.shape(x)[1])`` works inside ``ud.function`` for any length)."""


@op
def scan(fn, init, xs, axis=0):
    """Loop ``carry, y = fn(carry, x)`` over the slices ``x`` of ``xs`` along ``axis``, starting from ``init``.

    Returns ``(final carry, ys)`` with the ``y``s stacked along ``axis`` (same dtype as the carry).
    It is the plain Python loop on torch, a ``tf.while_loop`` on tensorflow (so the length may be
    unknown inside a graph, and a new length never retraces) and ``keras.ops.scan`` on keras.
    """


@op(name="apply_momentum", optional=True, public=False)
def _apply_momentum(param, buffer, lr, grad, momentum, nesterov):
    """A framework's fused in-place heavy-ball kernel (``buffer = momentum * buffer + grad``;
    ``param -= lr * (grad + momentum * buffer if nesterov else buffer)``), used by
    ``Optimizer.apply_fused`` as a fast path for SGD with momentum where a backend has one."""
