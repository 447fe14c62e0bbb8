"""Gradients on every backend: ``grad`` and ``value_and_grad`` in JAX's spelling, and custom
gradients (``custom_gradient``, or PyTorch's ``Function`` with ``forward``/``backward``).

``value_and_grad(f, argnums)(*args)`` differentiates with respect to tensor
arguments; ``value_and_grad(f, params)()`` with respect to a list of variables
(a model's parameters); ``value_and_grad(f, argnums, params=...)`` with respect to
both in one pass. Each works eagerly and inside ``ud.function``/a compiled step,
where the framework's own machinery (autograd, GradientTape) does the work.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

from unidl import config, ops, tracing
from unidl.dtype_kinds import dtype_name, is_floating
from unidl.errors import ShapeMismatchError


def _normalize(argnums, params):
    """``(argnums, params, single)``: the argument indices (a tuple, or None), the parameters (a list, or None) and
    whether the argument gradients come back as one tensor (``argnums`` an int), from ``value_and_grad``'s two
    forms: ``argnums`` alone (indices, or the older list of parameters), or ``params`` with or without indices."""
    if params is not None:
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a list or tuple of parameters (such as model.parameters()), got a "
                            f"{type(params).__name__}")
        if argnums is None:
            return None, list(params), False
        if isinstance(argnums, int) and not isinstance(argnums, bool):
            return (argnums,), list(params), True
        if isinstance(argnums, tuple) and all(isinstance(a, int) and not isinstance(a, bool) for a in argnums):
            return argnums, list(params), False
        raise TypeError(f"with params given, argnums must be None, an int or a tuple of ints (the arguments' "
                        f"indices), got {argnums!r}: give the parameters once, as params")
    if argnums is None or isinstance(argnums, int) and not isinstance(argnums, bool):
        return (0 if argnums is None else argnums,), None, True
    if isinstance(argnums, tuple) and argnums and all(isinstance(a, int) for a in argnums):
        return argnums, None, False
    if isinstance(argnums, (list, tuple)):
        return None, list(argnums), False
    raise TypeError(f"argnums must be an int, a tuple of ints or a list of parameters, got {argnums!r}")


def value_and_grad(f: Callable, argnums=None, params=None) -> Callable:
    """Return ``g(*args) -> (f(*args), gradients)``.

    ``argnums``: an int (gradient has the argument's shape; 0 when neither ``argnums`` nor ``params`` is given), a
    tuple of ints (a tuple of gradients), or a list of variables such as ``model.parameters()`` (a list of
    gradients, one per variable; ``f`` may then take no arguments; None for a variable ``f`` does not use, as
    PyTorch's autograd gives, which ``optimizer.apply`` skips). ``params``: the same list of variables as a
    keyword, alone (the list form of ``argnums``) or beside argument indices: then the gradients are
    ``(argument gradients, parameter gradients)``, the first as ``argnums`` alone gives them, the second as
    the list form gives it, all from one forward and one backward pass, as ``torch.autograd.grad(value,
    inputs + params)`` (adversarial training: the gradient with respect to the input and the weights). A frozen
    parameter (``requires_grad`` False) gets None. ``f`` must return a scalar, and the differentiated arguments
    must be floating-point; otherwise a ``ValueError``/``TypeError`` says which.

    Example (the lecture's graph)::

        def c(x, y, z):
            return ud.ops.sum(x * y + z)
        grad_x, grad_y, grad_z = ud.grad(c, argnums=(0, 1, 2))(x, y, z)

    Example (the input's and the weights' gradients in one pass)::

        loss, (grad_x, weight_grads) = ud.value_and_grad(lambda x: loss_fn(model(x), y), argnums=0,
                                                         params=model.parameters())(x)
    """
    argnums, params, single = _normalize(argnums, params)

    def value_and_grad_fn(*args):
        backend = config.backend()
        if argnums is not None:
            for index in argnums:
                if index >= len(args):
                    raise ValueError(f"argnums {index} is out of range for {len(args)} arguments")
        if params is None:
            value, grads = backend.value_and_grad(f, args, argnums, None)
            return value, (grads[0] if single else tuple(grads))
        from unidl.nn.module import is_trainable

        # frozen parameters are constants here: None, as PyTorch's autograd gives (a ud.function tracing this is
        # keyed on their flags: tracing.parameters_read)
        trainable = [is_trainable(p) for p in params]
        tracing.parameters_read(params)
        active = [p for p, t in zip(params, trainable) if t]
        if argnums is None and not active:
            value, found = f(*args), []
        else:
            value, found = backend.value_and_grad(f, args, argnums, active or None)
        count = 0 if argnums is None else len(argnums)
        found_params = iter(found[count:])
        param_grads = [next(found_params) if t else None for t in trainable]
        if argnums is None:
            return value, param_grads
        return value, (found[0] if single else tuple(found[:count]), param_grads)

    return value_and_grad_fn


def grad(f: Callable, argnums=None, params=None) -> Callable:
    """Like ``value_and_grad`` but return only the gradients."""
    value_and_grad_fn = value_and_grad(f, argnums, params)

    def grad_fn(*args):
        return value_and_grad_fn(*args)[1]

    return grad_fn


def check_scalar(value, backend_name: str) -> None:
    """The error ``grad`` raises for a function that does not return a floating-point scalar tensor (a tuple of a
    value and extra outputs, as ``jax.value_and_grad(has_aux=True)`` takes, included: unidl has no ``has_aux``)."""
    if isinstance(value, (int, float)):  # (no tensor: computed outside the framework, nothing to differentiate)
        raise TypeError(f"grad needs a function that returns one scalar tensor, but it returned the Python "
                        f"{type(value).__name__} {value!r} (on {backend_name}): no gradient reaches a number computed "
                        f"outside the framework; compute the value with ud.ops on the tensors")
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"grad needs a function that returns one scalar tensor, but it returned a "
                        f"{type(value).__name__} (on {backend_name}); return the scalar alone: reduce or drop the "
                        f"extra outputs (compute them outside the differentiated function)")
    shape = tuple(value.shape)
    if any(d != 1 for d in shape if d is not None) or None in shape:
        raise ValueError(f"grad needs a function that returns a scalar, but it returned a tensor of shape {shape} "
                         f"(on {backend_name}); reduce it first, e.g. with ud.ops.sum or ud.ops.mean")
    dtype = dtype_name(value.dtype) if hasattr(value, "dtype") else type(value).__name__
    if "float" not in dtype:
        raise TypeError(f"grad needs a function that returns a floating-point scalar, but it returned dtype {dtype} "
                        f"(on {backend_name}); an integer has no gradient: cast it, e.g. ud.ops.cast(v, 'float32')")


def check_float(values: Sequence, what: str) -> None:
    """The ``TypeError`` of every backend for a value ``grad`` cannot differentiate with respect to: integers,
    booleans, or no tensor at all (a Python number or list, which torch.autograd refuses too)."""
    for index, value in enumerate(values):
        dtype = getattr(value, "dtype", None)
        dtype = "" if dtype is None else dtype_name(dtype)  # (NumPy's name: the same message on every backend)
        if not dtype:
            raise TypeError(f"grad can only differentiate with respect to floating-point tensors; {what} {index} "
                            f"is a {type(value).__name__}, not a tensor: make one with ud.tensor")
        if "float" not in dtype:
            raise TypeError(f"grad can only differentiate with respect to floating-point tensors; {what} {index} "
                            f"has dtype {dtype}")


def custom_gradient(forward_fn: Callable) -> Callable:
    """Give a function your own backward pass, on every backend (TensorFlow's spelling).

    ``forward_fn(*xs)`` returns ``(y, backward)``; ``backward(dy)`` returns the gradient of the
    loss w.r.t. each input given ``dy``, its gradient w.r.t. ``y`` (one tensor for one input, a
    tuple otherwise). The inputs must be tensors; ``forward_fn`` should compute from its inputs
    only (gradients to variables it reads directly are not defined). Works eagerly, under
    ``ud.grad`` and inside ``ud.function``: ``torch.autograd.Function`` on torch,
    ``tf.custom_gradient`` on tensorflow, and the one of the framework Keras runs on.

    Example (ReLU with the gradient scaled by 3)::

        @ud.custom_gradient
        def relu3(x):
            def backward(dy):
                return 3 * ud.ops.where(x > 0, dy, ud.ops.zeros_like(dy))
            return ud.ops.relu(x), backward
    """
    compiled = {}

    def in_input_dtypes(*inputs):
        """``forward_fn`` whose backward gives each float input's gradient in that input's dtype, as
        torch.autograd casts it (TensorFlow and JAX kept the backward's: float64 for a float32 input)."""
        y, backward = forward_fn(*inputs)

        def cast_backward(dy):
            grads = backward(dy)
            many = isinstance(grads, (tuple, list))
            listed = list(grads) if many else [grads]
            _check_backward_count(forward_fn, len(listed), len(inputs))
            for index, (grad, x) in enumerate(zip(listed, inputs)):
                listed[index] = grad = _gradient_shaped_as_input(forward_fn, index, grad, x)
                wanted, given = getattr(x, "dtype", None), getattr(grad, "dtype", None)
                if given is not None and wanted is not None and given != wanted and is_floating(given) \
                        and is_floating(wanted):
                    listed[index] = ops.cast_like(grad, x)
            return type(grads)(listed) if many else listed[0]

        return y, cast_backward

    @functools.wraps(forward_fn)
    def with_custom_gradient(*args):
        backend = config.backend()
        if backend.name not in compiled:
            compiled[backend.name] = backend.custom_gradient(in_input_dtypes)
        return compiled[backend.name](*[a if backend.is_tensor(a) else backend.tensor(a) for a in args])

    return with_custom_gradient


def _check_backward_count(forward_fn, found: int, expected: int) -> None:
    """The ``TypeError`` of every backend for a custom backward that returns another number of gradients than its
    function has inputs (torch's "incorrect number of gradients", JAX's pytree structure error before)."""
    if found != expected:
        raise TypeError(f"the backward of custom_gradient {getattr(forward_fn, '__name__', forward_fn)!r} returned "
                        f"{found} gradient{'s' if found != 1 else ''} for {expected} input"
                        f"{'s' if expected != 1 else ''}: return one gradient per input, in order (None for an input "
                        f"without one)")


def _gradient_shaped_as_input(forward_fn, index: int, grad, x):
    """``grad``, the custom backward's gradient of input ``index``, in ``x``'s shape: equal, or summed over the axes
    along which ``x`` broadcasts to it (torch.autograd's rule); any other shape is a ``ShapeMismatchError`` naming
    the input and both shapes (torch's and JAX's own errors differed). Sizes unknown in a graph are not compared."""
    if grad is None or not hasattr(grad, "shape") or not hasattr(x, "shape"):
        return grad
    found, expected = tuple(grad.shape), tuple(x.shape)
    known = all(isinstance(d, int) for d in found + expected)
    if not known or found == expected:
        return grad
    lead = len(found) - len(expected)
    if lead >= 0 and all(e in (1, f) for e, f in zip(expected, found[lead:])):
        grad = ops.sum(grad, dim=tuple(range(lead))) if lead else grad
        ones = tuple(i for i, (e, f) in enumerate(zip(expected, found[lead:])) if e == 1 and f != 1)
        return ops.sum(grad, dim=ones, keepdim=True) if ones else grad
    raise ShapeMismatchError(f"the backward of custom_gradient {getattr(forward_fn, '__name__', forward_fn)!r} "
                             f"returned a gradient of shape {found} for input {index}, of shape {expected}: return "
                             f"each input's gradient in that input's shape")


class FunctionContext:
    """What ``Function.forward`` leaves for ``backward``: ``save_for_backward(*tensors)``, ``saved_tensors``,
    and any attribute set on it."""

    def __init__(self):
        self.saved_tensors = ()

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors


class Function:
    """PyTorch's spelling of a custom gradient: subclass with static ``forward(ctx, *xs)`` and
    ``backward(ctx, dy)``, call ``MyFunction.apply(*xs)``. Built on ``custom_gradient``, so it
    works on every backend, eagerly and inside ``ud.function``.

    Example (the lecture's hand-written ReLU)::

        class MyReLU(ud.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return ud.ops.relu(x)

            @staticmethod
            def backward(ctx, grad_output):
                (x,) = ctx.saved_tensors
                return ud.ops.where(x > 0, grad_output, ud.ops.zeros_like(grad_output))

        y = MyReLU.apply(x)
    """

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError("a ud.autograd.Function subclass must define forward(ctx, *args)")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("a ud.autograd.Function subclass must define backward(ctx, grad_output)")

    @classmethod
    def apply(cls, *args):
        if "_with_custom_gradient" not in cls.__dict__:
            def forward_fn(*inputs):
                ctx = FunctionContext()
                return cls.forward(ctx, *inputs), lambda dy: cls.backward(ctx, dy)

            forward_fn.__name__ = cls.__name__  # (what an error about its backward names)
            cls._with_custom_gradient = custom_gradient(forward_fn)
        return cls._with_custom_gradient(*args)
