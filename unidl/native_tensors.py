"""Which values an op's tensor argument takes on the backend in force: another framework's tensor is one
``BackendMismatchError`` on every backend, eagerly and in graphs (TensorFlow and Keras converted it silently through
``__array__``, without its gradient; torch and JAX raised TypeErrors of their own).

An op's dispatcher (``unidl.backends.op_registry``) looks a tensor argument's type up in ``passing_types`` of the
backend in force, a set: this backend's tensors, variables and tracers, once seen, and None. Any other value goes
through ``admitted``: a NumPy array, list or number is converted as before (each time), another framework's tensor
refused, and any other type seen once, then passing at the set lookup.
"""

from __future__ import annotations

from unidl import backends, config
from unidl.backends.op_registry import CONVERTED
from unidl.errors import BackendMismatchError

#: per backend object, the types its ops' tensor arguments take as they are (read by the dispatchers)
PASSING: dict = {}


def passing_types(backend=None) -> set:
    """The set of types that ``backend``'s (by default: the one in force) ops take as they are, made on first use."""
    backend = backend or config.backend()
    passing = PASSING.get(backend)
    if passing is None:
        passing = PASSING[backend] = {type(None)}  # (never empty: the dispatchers take an empty set for a miss)
    return passing


def admitted(owner: str, what: str, value, convert=None):
    """``value``, given for the tensor argument ``what`` of the op ``owner``, as the op takes it: a NumPy array or
    scalar, a list, a tuple or a number converted by ``convert`` (kept as it is without one); another framework's
    tensor (one of a list's or tuple's items too: ``concat``'s) a ``BackendMismatchError``; anything else as it is,
    and its type then passes at once (``passing_types``)."""
    if isinstance(value, CONVERTED):
        if isinstance(value, (list, tuple)):
            passing = passing_types()
            for index, item in enumerate(value):  # (a list of this backend's tensors: a set lookup an item)
                if type(item) not in passing and not isinstance(item, CONVERTED):
                    admitted(owner, f"{what}[{index}]", item)
        return value if convert is None else convert(owner, what, value)
    backend = config.backend()
    if backends.foreign_framework(type(value), backend.name) is not None:  # (the message made only then)
        refuse_foreign(f"ud.ops.{owner}", f"argument {what}", value, backend,
                       f"convert it with ud.tensor(ud.to_numpy({what})) (a copy, outside the gradient of what made "
                       f"it)", "switch backends with")
    passing_types(backend).add(type(value))
    return value


def refuse_foreign(user: str, what: str, value, backend, convert: str, instead: str) -> None:
    """``BackendMismatchError`` where ``value`` (``what`` of ``user``, which runs on ``backend``) is a tensor of a
    framework ``backend`` does not compute with (its class's or a base's module: no framework is imported here),
    naming it and the fixes: ``convert`` it, or ``instead`` one of the backends that compute with that framework."""
    foreign = backends.foreign_framework(type(value), backend.name)
    if foreign is None:
        return
    hosts = " or ".join(f"ud.use_backend({name!r})" for name, spec in backends.specs().items()
                        if foreign in spec.required_modules())
    raise BackendMismatchError(f"{user} runs on backend {backend.name!r} but {what} is a {foreign} "
                               f"{type(value).__name__}; {convert}, or {instead} {hosts}")
