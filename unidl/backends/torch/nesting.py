"""Whether torch code runs inside a computation unidl differentiates (a ``value_and_grad`` function, a train step's
forward and loss): a ``ud.grad`` there returns a differentiable gradient (``torch.autograd.grad``'s
``create_graph``), as JAX's and TensorFlow's are, so that a gradient of a gradient (a Hessian-vector product, MAML,
a gradient penalty in a loss) is not silently 0 on torch alone."""

from __future__ import annotations

import contextvars

_DEPTH = contextvars.ContextVar("unidl_torch_differentiated", default=0)


def nested() -> bool:
    """Whether this code runs inside a differentiated computation."""
    return _DEPTH.get() > 0


class differentiated:  # noqa: N801  (used as a context manager, like contextlib's)
    """The block as a computation unidl differentiates (see the module doc). A class rather than a generator:
    every torch train step enters one, and this costs a third as much."""

    __slots__ = ("_token",)

    def __enter__(self):
        self._token = _DEPTH.set(_DEPTH.get() + 1)

    def __exit__(self, *exc_info):
        _DEPTH.reset(self._token)
