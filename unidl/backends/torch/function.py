"""``ud.function`` and ``ud.custom_gradient`` on PyTorch: eager by default, ``torch.compile`` on request.

PyTorch runs Python control flow on tensor values as it is, so an eager
function needs no conversion; a custom gradient is one ``torch.autograd.Function``.
"""

from __future__ import annotations

import torch

from unidl.backends.torch import ops as torch_ops


class EagerFunction:
    """``fn`` run eagerly, or through ``torch.compile`` when ``jit_compile`` (``ud.function`` has made its array
    arguments tensors)."""

    trace_count = None  # nothing is traced eagerly; torch.compile keeps its own cache

    def __init__(self, fn, jit_compile: bool, name: str):
        if jit_compile:
            torch_ops.untraced_checks()  # (torch.compile imports torch._dynamo: unidl's import does not)
        self._run = torch.compile(fn) if jit_compile else fn
        self.__name__ = name

    def __call__(self, *args):
        return self._run(*args)


class _CustomGradient(torch.autograd.Function):
    """Runs a user's ``forward_fn`` (returning ``(y, backward)``) and calls ``backward`` for the gradient."""

    @staticmethod
    def forward(ctx, forward_fn, *inputs):
        y, backward = forward_fn(*inputs)
        ctx.user_backward = backward
        return y

    @staticmethod
    def backward(ctx, dy):
        grads = ctx.user_backward(dy)
        return (None,) + (tuple(grads) if isinstance(grads, (tuple, list)) else (grads,))


def custom_gradient(forward_fn):
    """``f(*xs) -> y`` differentiated by the ``backward`` that ``forward_fn`` returns."""

    def with_custom_gradient(*inputs):
        return _CustomGradient.apply(forward_fn, *inputs)

    return with_custom_gradient
