"""Gradients on every backend: ``grad`` and ``value_and_grad``, in JAX's spelling.

``value_and_grad(f, argnums)(*args)`` differentiates with respect to tensor
arguments; ``value_and_grad(f, params)()`` with respect to a list of variables
(a model's parameters). Either works eagerly and inside ``ud.function``/a
compiled step, where the framework's own machinery (autograd, GradientTape)
does the work.
"""

from __future__ import annotations

from typing import Callable, Sequence

from unidl import config


def _normalize(argnums_or_params):
    if isinstance(argnums_or_params, int) and not isinstance(argnums_or_params, bool):
        return (argnums_or_params,), None, True
    if isinstance(argnums_or_params, tuple) and argnums_or_params and all(isinstance(a, int) for a in argnums_or_params):
        return argnums_or_params, None, False
    if isinstance(argnums_or_params, (list, tuple)):
        return None, list(argnums_or_params), False
    raise TypeError(f"argnums must be an int, a tuple of ints or a list of parameters, got {argnums_or_params!r}")


def value_and_grad(f: Callable, argnums=0) -> Callable:
    """Return ``g(*args) -> (f(*args), gradients)``.

    ``argnums``: an int (gradient has the argument's shape), a tuple of ints (a tuple of
    gradients), or a list of variables such as ``model.parameters()`` (a list of gradients,
    one per variable; ``f`` may then take no arguments). ``f`` must return a scalar, and the
    differentiated arguments must be floating-point; otherwise a ``ValueError``/``TypeError``
    says which.

    Example (the lecture's graph)::

        def c(x, y, z):
            return ud.ops.sum(x * y + z)
        grad_x, grad_y, grad_z = ud.grad(c, argnums=(0, 1, 2))(x, y, z)
    """
    argnums, params, single = _normalize(argnums)

    def value_and_grad_fn(*args):
        backend = config.backend()
        if argnums is not None:
            for index in argnums:
                if index >= len(args):
                    raise ValueError(f"argnums {index} is out of range for {len(args)} arguments")
        value, grads = backend.value_and_grad(f, args, argnums, params)
        if single:
            return value, grads[0]
        return value, (list(grads) if params is not None else tuple(grads))

    return value_and_grad_fn


def grad(f: Callable, argnums=0) -> Callable:
    """Like ``value_and_grad`` but return only the gradients."""
    value_and_grad_fn = value_and_grad(f, argnums)

    def grad_fn(*args):
        return value_and_grad_fn(*args)[1]

    return grad_fn


def check_scalar(value, backend_name: str) -> None:
    """The error ``grad`` raises for a function that does not return a scalar."""
    shape = tuple(value.shape)
    if any(d != 1 for d in shape if d is not None) or None in shape:
        raise ValueError(f"grad needs a function that returns a scalar, but it returned a tensor of shape {shape} "
                         f"(on {backend_name}); reduce it first, e.g. with ud.ops.sum or ud.ops.mean")


def check_float(values: Sequence, what: str) -> None:
    for index, value in enumerate(values):
        dtype = str(getattr(value, "dtype", ""))
        if "float" not in dtype:
            raise TypeError(f"grad can only differentiate with respect to floating-point tensors; {what} {index} "
                            f"has dtype {dtype or type(value).__name__}")
