"""``composite``: a function composed of many ops that a backend may run as one compiled program (on JAX,
called eagerly, one ``jax.jit`` rather than one small program per op). The spatial ops, the losses and the
activations composed over the registry's ops (``unidl.ops`` and the modules beside it) decorate their math with it.
"""

from __future__ import annotations

import functools
import inspect

from unidl import config, input_checks
from unidl.backends.op_registry import CONVERTED
from unidl.precision import active_ops


def composite(*arrays: str, loops: bool = False, numbers: tuple[str, ...] = (), sequences: tuple[str, ...] = ()):
    """Decorates a composite op whose parameters named in ``arrays`` take tensors: each call runs the version that
    the backend in force gives (``Backend.composite``; ``Backend.looping_composite`` for one that ``loops``, a
    ``scan`` over a long axis). The op must read no state but its arguments (a compiled version caches its trace);
    inside a mixed-precision scope, whose cast-inserting ops it would read, it runs as it is.

    ``numbers`` names Python float options that the op only computes with (a margin, an eps; never in an ``if``
    or passed to an op that checks its type): a compiled version takes them as it takes tensors, as traced 0-d
    values, so that one program serves every value (a sweep over a margin compiles once). Traced, such a number
    meets the tensors as the Python number does (JAX's weak type: rounded to their dtype), the same result.

    ``sequences`` names parameters that take a tuple of tensors (attention's masks): a compiled version takes them as
    it takes tensors; they are taken as given (a tuple is not one array to convert)."""

    def decorate(function):
        positions = {i: p for i, p in enumerate(inspect.signature(function).parameters) if p in arrays}

        @functools.wraps(function)
        def call(*args, **kwargs):
            if (any(isinstance(args[i], CONVERTED) for i in positions if i < len(args))
                    or any(isinstance(kwargs.get(p), CONVERTED) for p in arrays)):
                args, kwargs = _converted(function.__name__, positions, arrays, args, kwargs)
            if active_ops() is not None:
                return function(*args, **kwargs)
            backend = config.backend()
            compiled = backend.looping_composite if loops else backend.composite
            return compiled(function, arrays + sequences + numbers)(*args, **kwargs)

        return call

    return decorate


def _converted(owner, positions, arrays, args, kwargs):
    """``args`` and ``kwargs`` with the NumPy arrays, lists and numbers given for the parameters named in ``arrays``
    (at ``positions``, index to name) converted as ``ud.tensor`` converts them, as every registry op converts them
    (torch's backend refused them)."""
    args = [input_checks.value_as_tensor(owner, positions[i], a) if i in positions and isinstance(a, CONVERTED) else a
            for i, a in enumerate(args)]
    kwargs = {k: input_checks.value_as_tensor(owner, k, v) if k in arrays and isinstance(v, CONVERTED) else v
              for k, v in kwargs.items()}
    return tuple(args), kwargs
