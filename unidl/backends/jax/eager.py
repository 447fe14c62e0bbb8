"""Composite ops compiled as one XLA program when called eagerly.

Outside ``jax.jit`` JAX dispatches, and compiles once per shape and dtype, every primitive of an op on its own: a
max pooling's JVP, a loss or a norm cost tens of small compilations and as many dispatches per call, and their
gradients as many again. ``compiled_when_eager`` runs such an op through one ``jax.jit`` of its body instead, its
options (everything but its arrays) static, so that a call is one dispatch and its gradient one program per
transformation. Under a staging trace (``jax.jit``, ``ud.function``, a compiled step, export) an op of traced
arrays is traced inline as before (one whose arrays are all constants there is a nested jit, which XLA inlines);
eager differentiation (whose tracers hold concrete values) takes the compiled path. A body must read no state but its arguments (the jit caches its trace), and Python-level
checks raise while it is traced, before anything runs, with the same error as before.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import numpy as np

from unidl.backends.jax.variable import JaxVariable

_PLAIN_STATIC = (int, float, str, bool, type(None))


class _Inline(Exception):
    """An option that a compiled op cannot take as static (an array, an unhashable or a NaN value)."""


class _Items:
    """A tuple or list option as a static argument of ``jax.jit``, handed to the body as it was given. jit compares
    static arguments with ``==`` and their types at the top level only, and Python has ``(2, 2) == (2.0, True)``: a
    trace cached for one would run the other past a check that refuses floats or bools (a composite's own argument
    checks, ``unidl.spatial_ops``). This key compares the kind and each item's type as well."""

    __slots__ = ("_key", "_hash", "value")

    def __init__(self, value, items):
        self.value = value
        self._key = (type(value), tuple((type(item), item) for item in items))
        self._hash = hash(self._key)

    def __eq__(self, other):
        return type(other) is _Items and self._key == other._key

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return repr(self.value)


def _static(value):
    """``value`` as a static argument of ``jax.jit``: hashable and equal to itself, or ``_Inline``."""
    kind = type(value)
    if isinstance(value, (float, complex, np.floating, np.complexfloating)) and (
            value != value or (value == 0 and math.copysign(1.0, value.real) < 0)):
        # NaN is never equal to itself (a compile per call), and -0.0 equals 0.0 (one cached trace for both)
        raise _Inline
    if kind in _PLAIN_STATIC:
        return value
    if kind is tuple or kind is list:
        return _Items(value, [_static(v) for v in value])
    if isinstance(value, (jax.Array, JaxVariable)):
        raise _Inline
    try:
        hash(value)
    except TypeError:
        raise _Inline from None
    return value


def _staged(value) -> bool:
    """Whether ``value`` (an array or a sequence of them) is a tracer of a staging trace, whose body is traced
    inline; eager differentiation's tracers hold concrete values."""
    if isinstance(value, jax.core.Tracer):
        return value.to_concrete_value() is None
    if type(value) is tuple or type(value) is list:
        return any(_staged(v) for v in value)
    return False


def _given(value):
    """A static argument as the op was given it (``_Items``: its tuple or list)."""
    return value.value if type(value) is _Items else value


def _unwrapped(value):
    if isinstance(value, JaxVariable):
        return value.value
    if type(value) is tuple or type(value) is list:
        return type(value)(_unwrapped(v) for v in value)
    return value


def compiled_when_eager(*arrays: str):
    """Decorates an op whose parameters named in ``arrays`` take arrays (``JaxVariable``s, sequences of arrays
    or None; or Python numbers, which the jit traces as weakly typed scalars: one compilation for every value) and
    whose other parameters are Python options: called eagerly, the op runs as one ``jax.jit`` of its
    body with those options static (one compilation per shape, dtype and options); with an option that cannot
    be static (an array, a list of arrays, NaN) or an array of a staging trace, the body runs as it is."""

    def decorate(function):
        names = list(inspect.signature(function).parameters)
        unknown = set(arrays) - set(names)
        if unknown:
            raise TypeError(f"compiled_when_eager: {function.__name__} has no parameters {sorted(unknown)}")
        is_array = [name in arrays for name in names]

        @functools.wraps(function)  # (jit reads the parameters' names through it)
        def body(*args, **kwargs):
            return function(*[_given(v) for v in args], **{name: _given(v) for name, v in kwargs.items()})

        compiled = jax.jit(body, static_argnames=[name for name in names if name not in arrays])

        @functools.wraps(function)
        def call(*args, **kwargs):
            if len(args) > len(is_array):  # (Python's own TypeError for too many arguments)
                return function(*args, **kwargs)
            try:
                staged_args = [_unwrapped(v) if array else _static(v) for v, array in zip(args, is_array)]
                staged_kwargs = {name: _unwrapped(v) if name in arrays else _static(v) for name, v in kwargs.items()}
            except _Inline:
                return function(*args, **kwargs)
            if any(array and _staged(v) for v, array in zip(staged_args, is_array)) or any(
                    name in arrays and _staged(v) for name, v in staged_kwargs.items()):
                return function(*args, **kwargs)
            return compiled(*staged_args, **staged_kwargs)

        return call

    return decorate
