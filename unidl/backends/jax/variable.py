"""``JaxVariable``: a parameter or buffer of the jax backend, a mutable holder of an immutable JAX array.

JAX arrays cannot change, so a module's parameters are small holders (as Keras's variables on JAX
and Flax's ``nnx.Param`` are) whose ``.value`` is the current array. Compiled steps take every
holder's value as an argument ("state in"), and the values they compute are written back ("state
out", ``StatefulJit``); while a step is traced, ``.value`` holds the tracer. Every live holder is
known (``live()``), so ``ud.function`` can thread the state a user's function touches.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from unidl.nn.freezing import requires_grad_method, trainable_refused

_serials = itertools.count()
#: bumped by every change of a variable's ``requires_grad`` (freezing, unfreezing), so that
#: ``trainable_mask_cached`` recomputes a step's trainable mask only after one (itertools.count: atomic under threads)
_freezing_versions = itertools.count()
freezing_version = next(_freezing_versions)
_live: "weakref.WeakValueDictionary[int, JaxVariable]" = weakref.WeakValueDictionary()


def serial_floor() -> int:
    """A serial below that of every variable created after this call (it spends one serial): where a trace
    began, for ``forget_traced``."""
    return next(_serials)


def forget_traced(floor: int) -> None:
    """Take out of ``live()`` the variables created since ``floor`` (``serial_floor``) that hold a tracer: made
    inside a trace that has ended (a module built inside a compiled function, a loss with a class ``weight``), their
    values are that trace's and can never be read again. A trace that raised can leave such a module referenced (its
    error's traceback holds the frames that built it); left listed, every later ``ud.function``, which threads
    every live variable, read the dead tracer and failed with JAX's ``UnexpectedTracerError``."""
    for serial, variable in list(_live.items()):
        if serial > floor and isinstance(variable._value, jax.core.Tracer):
            del _live[serial]
            _forgotten.add(serial)


#: the serials ``forget_traced`` took out of ``live()``: such a variable given a value again (``load_state_dict``, an
#: assignment) is listed again, so that compiled functions thread it rather than bake its value in as a constant
_forgotten: set[int] = set()


def live() -> list["JaxVariable"]:
    """Every ``JaxVariable`` still referenced, in creation order. (``items()`` holds each one while it is listed: a
    key listed first and looked up after could be gone by then, freed by a garbage collection in between.)"""
    return [variable for _, variable in sorted(_live.items(), key=lambda item: item[0])]


#: how many ``reads_recorded`` blocks are open, in any thread: ``JaxVariable.value`` looks no further while it is 0
_recording = 0
_recording_lock = threading.Lock()
#: per thread, the serials read in its open ``reads_recorded`` block (None outside one)
_thread = threading.local()


@contextlib.contextmanager
def reads_recorded():
    """Record the serials of the variables whose ``value`` this thread reads in the block (a ``StatefulJit`` trace:
    a variable read there and not threaded would be baked into the program as a constant). Nested blocks' reads
    count in the outer one too. Bookkeeping that saves and restores every live variable reads ``_value``, which is
    not recorded."""
    global _recording
    outer = getattr(_thread, "reads", None)
    reads = _thread.reads = set()
    with _recording_lock:
        _recording += 1
    try:
        yield reads
    finally:
        with _recording_lock:
            _recording -= 1
        _thread.reads = outer
        if outer is not None:
            outer.update(reads)


def recording() -> bool:
    """Whether this thread is inside a ``reads_recorded`` block (a compiled function being traced)."""
    return _recording > 0 and getattr(_thread, "reads", None) is not None


def _record(variable) -> None:
    reads = getattr(_thread, "reads", None)
    if reads is not None:
        reads.add(variable.serial)


def unwrap(value):
    """The JAX array of a ``JaxVariable``; anything else as it is."""
    return value.value if isinstance(value, JaxVariable) else value


def made_beside(variables):
    """A block in which JAX makes new arrays on the device of ``variables``' first value (``jax.default_device``),
    for state made beside parameters after they were (a loss scale, an accumulation window): ``jnp.asarray`` and
    ``jnp.zeros`` put it where JAX's default device is otherwise, which is not the parameters' when the two differ
    (``UNIDL_DEVICE=cpu`` on a GPU machine), and an eager step mixing the two fails. No-op inside a trace."""
    value = unwrap(variables[0]) if variables else None
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and len(value.devices()) == 1:
        return jax.default_device(next(iter(value.devices())))
    return contextlib.nullcontext()


def host_constant(value, dtype, shape=()) -> jax.Array:
    """``value`` (a number, repeated over ``shape``) as a JAX array of ``dtype`` on JAX's default device, made in
    NumPy and put there: ``jnp.asarray(0, jnp.int64)``, ``jnp.full`` and ``jnp.zeros`` outside a trace each compile
    an XLA program per dtype and shape (jax 0.10: ``convert_element_type``, ``broadcast_in_dim``, ``stage``), 0.1 to
    0.5 s each on a CPU, for state an optimizer or a loss scaler makes once (the same values: NumPy rounds a Python
    number to ``dtype`` as XLA's conversion does)."""
    return jax.device_put(np.full(shape, value, dtype))


def written_in_place(variable, value) -> None:
    """Set ``variable`` to ``value`` (a NumPy array or number, cast to the variable's dtype) on the device of its
    current value, outside a trace: a load or a scheduler's write, never moving the state off its device."""
    variable.value = jax.device_put(np.asarray(value, variable.dtype), next(iter(variable.value.devices())))


def committed(value):
    """``value`` placed on its device for good: a compiled step's outputs are committed arrays, and
    jit keys its cache on commitment, so a variable that started uncommitted (``jnp.asarray``) would
    compile every step twice (once for the initial values, once for the written-back ones)."""
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and not value.committed:
        return jax.device_put(value, next(iter(value.devices())))
    return value


def _binary(op):
    def forward(self, other):
        return op(self.value, unwrap(other))

    def reverse(self, other):
        return op(unwrap(other), self.value)

    return forward, reverse


class JaxVariable:
    """A named slot for one JAX array: ``value`` (read and replaced, never mutated), ``trainable``.

    Arithmetic operators, indexing, ``shape`` and ``dtype`` act on the value, so a layer's forward
    reads ``x @ self.weight`` as on any backend; JAX functions take ``variable.value``."""

    __slots__ = ("_value", "_trainable", "_requires_grad", "serial", "__weakref__")

    def __init__(self, value, trainable: bool = True):
        self.serial = next(_serials)
        self.value = value
        self._trainable = bool(trainable)
        # False: a buffer, or frozen (Module.requires_grad_), as torch's (a new variable: in no mask yet, no bump)
        self._requires_grad = bool(trainable)
        _live[self.serial] = self

    @property
    def value(self):
        """The current JAX array (a tracer while a step is traced)."""
        if _recording:
            _record(self)
        return self._value

    @value.setter
    def value(self, value):
        self._value = committed(value)
        if _forgotten and self.serial in _forgotten and not isinstance(value, jax.core.Tracer):
            _forgotten.discard(self.serial)
            _live[self.serial] = self

    @property
    def trainable(self) -> bool:
        """A parameter (True) or a buffer, fixed when it is made; freezing is ``requires_grad_``."""
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        raise trainable_refused(f"{self!r}.trainable = {value!r}")

    @property
    def requires_grad(self):
        """False: a buffer, or a frozen parameter (PyTorch's flag, set by ``requires_grad_`` or assigned)."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        global freezing_version
        self._requires_grad = value
        freezing_version = next(_freezing_versions)  # (after the write: a mask computed before it is stale)

    requires_grad_ = requires_grad_method()  # PyTorch's name for freezing (the flag ``requires_grad``)

    @property
    def shape(self):
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self):
        return self.value.ndim

    def assign(self, value) -> None:
        """Replace the value (cast to this variable's dtype)."""
        value = unwrap(value)
        value = value if getattr(value, "dtype", None) == self.value.dtype else jnp.asarray(value, self.value.dtype)
        self.value = value

    def numpy(self) -> np.ndarray:
        return np.array(self.value)

    def __array__(self, dtype=None, copy=None):
        array = np.asarray(self.value)
        return array.astype(dtype) if dtype is not None else array

    def __getitem__(self, index):
        return self.value[index]

    def __neg__(self):
        return -self.value

    def __len__(self):
        return len(self.value)

    def __iter__(self):
        """The value's rows (without it, Python iterated through ``__getitem__``, which JAX clamps: a row
        repeated for ever where torch's and TensorFlow's iteration ends)."""
        return iter(self.value)

    __add__, __radd__ = _binary(lambda a, b: a + b)
    __sub__, __rsub__ = _binary(lambda a, b: a - b)
    __mul__, __rmul__ = _binary(lambda a, b: a * b)
    __truediv__, __rtruediv__ = _binary(lambda a, b: a / b)
    __pow__, __rpow__ = _binary(lambda a, b: a ** b)
    __matmul__, __rmatmul__ = _binary(lambda a, b: a @ b)
    __lt__, _ = _binary(lambda a, b: a < b)
    __gt__, _ = _binary(lambda a, b: a > b)
    __le__, _ = _binary(lambda a, b: a <= b)
    __ge__, _ = _binary(lambda a, b: a >= b)

    def __repr__(self):
        kind = "parameter" if self.trainable else "buffer"
        return f"JaxVariable({kind}, shape={self.shape}, dtype={self.dtype})"


def trainable_mask_cached(params):
    """``mask()``: ``trainable_mask(params)`` (the frozen set a compiled step keys its trace on), computed again only
    after a ``requires_grad`` change of some variable (``freezing_version``) instead of at every step; every call
    where ``params`` are not all this backend's variables (whose changes it cannot see)."""
    from unidl.nn.module import trainable_mask

    if not all(isinstance(p, JaxVariable) for p in params):
        return lambda: trainable_mask(params)
    cached = [(None, ())]  # [(version, mask)], replaced whole (threads)

    def mask():
        version, mask = cached[0]
        if version == freezing_version:
            return mask
        version = freezing_version  # (read before the flags: a change amid them leaves a stale version, not mask)
        mask = trainable_mask(params)
        cached[0] = (version, mask)
        return mask

    return mask
