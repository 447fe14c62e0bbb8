"""Compiled functions on JAX: ``StatefulJit`` (state in, state out), ``ud.function`` and ``custom_gradient``.

``jax.jit`` compiles pure functions, while unidl code reads and writes variables. ``StatefulJit``
bridges them: the values of the variables a function may touch go in as arguments, their
``.value`` holds the tracers while the function is traced, and the values the function wrote come
out and are written back after each call. One compilation per input signature (shape and dtype:
XLA specialises on shapes, so a smaller last batch is one more trace, and no more: a bounded set).
Every compiled function is checkified, so value checks inside it (labels in range) raise unidl's
message after the call.

``ud.function``'s rule on JAX: Python ``if``/``for``/``while`` on a tensor's *value* cannot be
traced (JAX has no AutoGraph). Such a function runs eagerly, op by op, with one warning naming
it; write the branch with ``ud.ops.where`` or the loop with ``ud.ops.scan`` to compile it.
Loops over Python ranges of static sizes (``range(ud.ops.shape(x)[0])``) are unrolled and compile.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.array import ArrayImpl
from jax.experimental import checkify

from unidl import devices
from unidl.data.pool import interrupts_held
from unidl.tracing import ModesReached, python_randomness_guard, warn_running_eagerly
from unidl.backends.jax import ops as jax_ops, variable as jax_variable
from unidl.errors import GraphConstructError, RetraceWarning, marked_error_from
from unidl.optim.param_groups import ConstantOptions

#: what tracing raises where a function needs a traced tensor's value: Python control flow on it, and a boolean mask
#: as an index (``o[o > 0]``: a shape known only from the values, a ``JAXIndexError`` rather than a concretization
#: error, which the eager fallback and the GraphConstructError missed)
_CONCRETIZATION = (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
                   jax.errors.TracerIntegerConversionError, jax.errors.TracerArrayConversionError,
                   jax.errors.NonConcreteBooleanIndexError)


_ARRAY_TYPES = (jax.Array, ArrayImpl)  # (not ``type(jnp.zeros(()))``: that starts XLA, see KeyStream)


def _is_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _signature(value):
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return ("array", tuple(value.shape), str(value.dtype))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__,) + tuple(_signature(v) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple((k, _signature(v)) for k, v in sorted(value.items()))
    try:
        hash(value)
        # (1, 1.0 and True are equal keys but bake in apart; -0.0 equals 0.0 and NaN nothing: a float by its bits)
        return ("static", type(value), value.hex() if isinstance(value, float) else value)
    except TypeError:
        return ("object", id(value))


def _split_static(args):
    """Array leaves go in as arguments, a variable as its value (one trace per shape, as a TensorFlow graph takes
    it, not one per variable); anything else (Python numbers, strings, callables) is baked in."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    leaves = [leaf.value if isinstance(leaf, jax_variable.JaxVariable) else leaf for leaf in leaves]
    dynamic = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    return leaves, treedef, dynamic


#: a donated array must come back from the call even when the function leaves it as it was; below this many
#: elements (learning rates, step counts, flags, random keys) donating saves nothing, so such a variable goes in
#: without donation and comes back only when the function writes it
_DONATE_MIN_SIZE = 16

#: the thread tracing a compiled function with checkify's error codes numbered from 1 (and its nesting depth)
_numbering = threading.local()
_numbering_lock = threading.RLock()


@contextlib.contextmanager
def error_codes_numbered_per_trace():
    """Number checkify's error codes from 1 in each outermost trace, instead of from its process-wide counter.

    A code is a constant of the compiled program, so with the global counter two traces of the same step (the same
    model built again, a test after another, a new process) are different programs to XLA's compilation cache and
    each pays a full compile (seconds on a CPU for a small CNN). Codes need only be unique within one checkified
    function: a trace nested in another goes on with the outer numbering. Where JAX's private counter is not
    there, nothing changes (only the cache misses)."""
    from jax._src import checkify as checkify_internals

    if getattr(_numbering, "depth", 0) or not hasattr(checkify_internals, "next_code"):
        _numbering.depth = getattr(_numbering, "depth", 0) + 1
        try:
            yield
        finally:
            _numbering.depth -= 1
        return
    with _numbering_lock:  # (the counter is module-wide: one thread renumbers at a time)
        saved, checkify_internals.next_code = checkify_internals.next_code, itertools.count(1).__next__
        _numbering.depth = 1
        try:
            yield
        finally:
            _numbering.depth = 0
            checkify_internals.next_code = saved


def checkified(f):
    """``(flat, error_structure)``: ``flat(*args)`` is ``f``'s ``(checkify's error as a list of arrays, result)``,
    with the value checks of unidl's ops inside it (``ops.check_index``, ``ops.check_shape``: ``f`` traces them
    inside ``jax_ops.checkified_trace``) staged by checkify, for a ``jax.jit`` of ``flat``; ``error_structure``
    (a list) holds the error's structure of each of its traces (one ``jax.jit`` traces again for new shapes, whose
    checks say other things), for ``raise_failed_check``. The list of arrays is empty for a trace without value
    checks, so that its calls skip rebuilding the error object in Python (a few µs a step); otherwise it starts with
    whether any check failed (any of checkify's predicates, its boolean leaves) and the trace's number in
    ``error_structure``, so that a call whose checks passed reads one scalar (rebuilding and reading checkify's
    error: 38 µs a call)."""
    checked = checkify.checkify(f, errors=checkify.user_checks)
    error_structure = []

    def flat(*args):
        with error_codes_numbered_per_trace():
            error, out = checked(*args)
        error_leaves, structure = jax.tree_util.tree_flatten(error)
        if not error_leaves:
            return error_leaves, out
        if structure not in error_structure:
            error_structure.append(structure)
        flags = [jnp.any(leaf) for leaf in error_leaves if leaf.dtype == jnp.bool_]
        failed = functools.reduce(jnp.logical_or, flags, jnp.bool_(not flags))
        return [failed, jnp.int32(error_structure.index(structure)), *error_leaves], out

    return flat, error_structure


def raise_failed_check(error_structure, error_leaves) -> None:
    """Raise the unidl error (``IndexOutOfRangeError``, ``ShapeMismatchError``) of a value check that a call of a
    ``checkified`` function reports in ``error_leaves`` (nothing if none failed), or checkify's own error for a check
    that is not unidl's."""
    failed, index, error_leaves = error_leaves[0], error_leaves[1], error_leaves[2:]
    if not failed:  # (no check failed; never a trace's value: such calls are traced inline, ``inside_a_trace``)
        return
    try:
        jax.tree_util.tree_unflatten(error_structure[int(index)], error_leaves).throw()
    except checkify.JaxRuntimeError as runtime_error:  # an in-graph check (ops.check_index, ops.check_shape) failed
        marked = marked_error_from(runtime_error)
        if marked is None:
            raise
        raise marked from None


def _call_and_write_back(function, donated_values, kept_values, dynamic_leaves, variables) -> tuple:
    """``function``'s call (a ``StatefulJit`` entry's), the values it wrote stored in ``variables``; returns
    ``(checkify's error leaves, result)``. The call of an entry whose calls take jaxlib's C++ fast path (see
    ``StatefulJit._held_call`` for the others).

    The call donates the variables' buffers: once it has run, its outputs are the only values the variables have.
    A Ctrl-C that lands while XLA runs comes out as ``KeyboardInterrupt`` as soon as the call returns to Python, and
    one may land amid the write-back: dropping the outputs there would leave a model whose parameters are deleted
    arrays. On the C++ fast path no Python runs inside the call once XLA has consumed the buffers, so the call is
    made from C (``map``) and its outputs stored from C (``list.extend``), with no point in between where Python
    raises, and a ``KeyboardInterrupt`` after it finishes the write-back before it goes on. (Not covered: a second
    Ctrl-C during that finishing write-back, microseconds; a call that leaves the fast path after it was seen on
    it, as when jaxlib's cache of the function drops its entry.)"""
    outputs = []
    try:
        outputs.extend(map(function, [donated_values], [kept_values], [dynamic_leaves]))
        return _write_back(outputs[0], variables)
    except KeyboardInterrupt:
        if outputs:
            _write_back(outputs[0], variables)
        raise


#: a variable's array, read as bookkeeping (not recorded as a read)
_VALUE = operator.attrgetter("_value")


def _write_back(outputs, variables) -> tuple:
    error_leaves, (result, written) = outputs
    for index, value in written.items():
        variables[index]._value = value  # a jit output: already committed (the setter's check is per-step cost)
    return error_leaves, result


def step_result(loss, outputs, y, with_outputs):
    """What a train step returns (``Backend.train_step``): the loss, with the outputs where ``with_outputs`` is True,
    or with ``with_outputs(outputs, y)`` where it is a function (``summary_in_step``: fit's metric statistics traced
    into the step's program, where a function of the outputs compiled apart was a program per batch shape)."""
    if not with_outputs:
        return loss
    return loss, (with_outputs(outputs, y) if callable(with_outputs) else outputs)


class StatefulJit:
    """``fn`` compiled with ``jax.jit`` over the variables ``variables()`` returns, which it may read and write.

    ``static_key()`` adds Python state that changes the trace (the modules' train/eval mode); with
    ``keyed_modules()`` (the modules whose modes ``static_key`` holds), the modes of the other modules its traces
    reach (a loss module: ``ModesReached``) are keyed too. An option changed for the first time by an optimizer
    whose rule the traces ran (``ConstantOptions``: they hold it as a constant) retraces once. ``trace_count``
    counts traces. With ``donate``, the buffers of the variables' arrays (those of at least ``_DONATE_MIN_SIZE``
    elements) are donated to the call, so XLA updates them in place; such a call is written back whatever Ctrl-C
    does (``_call_and_write_back``, ``_held_call``)."""

    def __init__(self, fn, variables, name: str, static_key=None, donate: bool = False, warn_retrace: bool = True,
                 keyed_modules=None):
        self._reached = ModesReached(keyed_modules) if keyed_modules is not None else None
        if self._reached is not None:
            fn = self._reached.traced(fn)
        self._fn, self._variables, self._static_key = fn, variables, static_key
        self._donate, self._warn_retrace = donate, warn_retrace
        self._compiled: dict = {}
        self._options = ConstantOptions()  # the optimizers whose options the traces hold as constants
        self._last_variables, self._last_serials = None, ()
        self._outside: list = []  # variables its traces wrote or read outside ``variables()`` (``_StateOutside``)
        self._only_read: set = set()  # the serials of those only read there: not donated
        self._with_outside = (None, None)  # (``variables()``'s list, that list with ``_outside`` appended)
        self._args_device = None  # the parameters' device once a call's arrays had to move there (then moved first)
        self.trace_count = 0
        self.__name__ = name

    def _pure(self, leaves_fixed, treedef, dynamic, variables, donated):
        """The pure function of (donated values, other values, array leaves of the arguments) that jax traces:
        ``(result, {index: new value})`` with every donated variable's value (its input buffer is gone after
        the call) and the others' that ``fn`` wrote."""
        kept = [i for i in range(len(variables)) if i not in donated]

        def pure(donated_values, kept_values, dynamic_leaves):
            self.trace_count += 1
            floor = jax_variable.serial_floor()
            saved = [v._value for v in variables]  # (bookkeeping: ``_value``, not recorded as a read)
            threaded = {v.serial for v in variables}
            # (a write there, or a read: _StateOutside; bookkeeping reads ``_value``, which is not recorded)
            others = [v for v in jax_variable.live() if v.serial not in threaded]
            others_saved = [v._value for v in others]
            values = [None] * len(variables)
            for i, value in zip(donated, donated_values):
                values[i] = value
            for i, value in zip(kept, kept_values):
                values[i] = value
            leaves = list(leaves_fixed)
            for i, leaf in zip(dynamic, dynamic_leaves):
                leaves[i] = leaf
            try:
                for v, value in zip(variables, values):
                    v.value = value
                with python_randomness_guard(self.__name__, self._fn), jax_ops.checkified_trace(), \
                        self._options.recording(), jax_variable.reads_recorded() as reads:
                    result = self._fn(*jax.tree_util.tree_unflatten(treedef, leaves))
                    # a variable returned as it is (a parameter, batch norm's running statistics in eval mode)
                    # comes out as its value, as torch's function returns the parameter, a tensor
                    result = jax.tree_util.tree_map(jax_variable.unwrap, result)
                written = {i: v._value for i, (v, value) in enumerate(zip(variables, values))
                           if i in donated or v._value is not value}
                outside = [v for v, value in zip(others, others_saved) if v._value is not value]
                written_outside = {v.serial for v in outside}
                read = [v for v in others if v.serial in reads and v.serial not in written_outside]
            finally:
                for v, value in zip((*variables, *others), (*saved, *others_saved)):
                    v.value = value
                jax_variable.forget_traced(floor)
            if outside or read:
                raise _StateOutside(outside + read, {v.serial for v in read})
            return result, written

        return pure

    def _serials(self, variables) -> tuple:
        if variables is not self._last_variables:  # a fixed list (a train step's) is keyed once
            self._last_variables, self._last_serials = variables, tuple(v.serial for v in variables)
        return self._last_serials

    def _compile(self, key, args, leaves, treedef, dynamic, variables, dynamic_leaves):
        """The cache entry for ``key``: ``[caller, jitted function, checkify's error structure, donated variables,
        other variables]``, where ``caller(function, donated values, other values, array leaves, variables)``
        makes the call and writes it back: ``_call_and_write_back``, or ``_held_call`` while a call may run
        jax's Python after the donation. ``dynamic_leaves``: the call's array leaves, as the call passes them
        (a tuple or a list: jax traces each pytree apart)."""
        if self._compiled and self._warn_retrace:
            warnings.warn(f"{self.__name__} traced again for inputs of a new shape or dtype "
                          f"({len(self._compiled)} traces so far): XLA compiles one program per shape",
                          RetraceWarning, stacklevel=4)
        if treedef is None:
            treedef = jax.tree_util.tree_structure(list(args))
        _commit_beside_the_parameters(variables)
        fixed = [None if i in dynamic else leaf for i, leaf in enumerate(leaves)]
        donated = {i for i, v in enumerate(variables)  # (not a variable found outside only read: nothing to save)
                   if self._donate and v._value.size >= _DONATE_MIN_SIZE and v.serial not in self._only_read}
        flat, error_structure = checkified(self._pure(fixed, treedef, list(dynamic), variables, sorted(donated)))
        function = jax.jit(flat, donate_argnums=(0,) if donated else ())
        entry = [_call_and_write_back, function, error_structure,
                 [v for i, v in enumerate(variables) if i in donated],
                 [v for i, v in enumerate(variables) if i not in donated]]
        devices.compiled_placed(self.__name__, "traced for the shapes of its inputs", "the default device", "jax.jit")
        if donated:
            # traced and compiled ahead, where Ctrl-C stops it at once (the call reuses both, tested): its first
            # calls hold Ctrl-C back, which then covers only running the program. Filed once that is done, so that
            # a Ctrl-C here leaves no entry whose first call would go unheld.
            traced = function.trace([v._value for v in entry[3]], [v._value for v in entry[4]], dynamic_leaves)
            traced.lower().compile()
            slow = bool(traced.jaxpr.effects) or bool(getattr(jax.config, "jax_enable_pgle", False))
            entry[0] = self._held_call(entry, slow)
        self._compiled[key] = entry
        return entry

    @staticmethod
    def _held_call(entry, slow: bool):
        """The caller of ``entry`` while its calls may take jax's Python path: with Ctrl-C held back
        (``interrupts_held``) until the outputs are written back, then raised.

        jaxlib's C++ fast path runs no Python between XLA's consumption of the donated buffers and the return, but
        a call that misses its C++ cache (the first of every compiled program, one with arguments placed or
        committed otherwise) runs jax's Python there (``_run_python_pjit``, ``_get_fastpath_data``), and so does
        every call of a program with effects (``jax.debug.print``, ``io_callback``) or under profile-guided
        optimization: a ``KeyboardInterrupt`` raised there would drop the outputs, leaving the variables deleted
        arrays. ``slow`` (such a program): every call is held. Otherwise the entry goes to ``_call_and_write_back``
        (no per-step cost) after a held call that jaxlib's cache answered (its size unchanged: a C++ hit, which
        with no effects is the fast path), or, where jaxlib does not tell its cache's size, after the first.
        The size is read from the function passed in, never kept: the entry holds ``held``, and a bound method of
        jaxlib's function held there (a nanobind object, which Python's garbage collector does not see into) made
        the cycle model -> step -> entry -> function -> model uncollectable, so every model whose step program
        ran only held calls (one call of a batch shape) was never freed."""

        def held(function, donated_values, kept_values, dynamic_leaves, variables):
            size = None if slow else getattr(function, "_cache_size", None)
            before = size() if size is not None else None
            with interrupts_held():
                outputs = _write_back(function(donated_values, kept_values, dynamic_leaves), variables)
            if not slow and (size is None or size() == before):
                entry[0] = _call_and_write_back
            return outputs

        return held

    def __call__(self, *args):
        if jax_variable.recording():
            # called while another compiled function is traced (a ``ud.function`` inside a train step): traced into
            # that one, which then records what it reads and writes, as an optimizer's apply inside a step is
            return jax.tree_util.tree_map(jax_variable.unwrap, self._fn(*args))
        given = args
        if self._args_device is not None:  # (a caller whose batches come from another device keeps sending them)
            args = _moved_to(args, self._args_device)
        placed = outside = False  # each cause of a retry happens once: a second time is an error
        while True:
            try:
                # (``_state()`` inline where nothing was found outside: one Python frame less a step)
                return self._call(self._state() if self._outside else self._variables(), args)
            except ValueError as error:  # (jax.jit checks its arguments' devices before the call: nothing donated)
                if placed or _INCOMPATIBLE_DEVICES not in str(error):
                    raise
                moved_state = _placed_beside_the_parameters(self._state())
                device = _parameters_device(self._state())  # (the caller's arrays go there, from where they were)
                placed_args = given if device is None else _moved_to(given, device)
                self._args_device = device if placed_args is not given else None
                if placed_args is args and not moved_state:
                    raise
                args, placed = placed_args, True
            except _StateOutside as found:  # (raised while traced, before the call ran: nothing donated)
                if outside:
                    raise GraphConstructError(
                        f"{self.__name__} writes or reads new variables each time it is traced ({found.variables}): "
                        f"create modules and variables outside the function and call them inside it") from None
                outside = True
                self._outside += found.variables
                self._only_read |= found.only_read
                self._compiled.clear()  # (its programs take the shorter state: they will not be called again)

    def _state(self) -> list:
        """``variables()``, then the variables its traces wrote outside them (``_outside``), as one list that stays
        the same object while ``variables()``'s does (its serials are keyed once: ``_serials``)."""
        variables = self._variables()
        if not self._outside:
            return variables
        if self._with_outside[0] is not variables or len(self._with_outside[1]) != len(variables) + len(self._outside):
            self._with_outside = (variables, [*variables, *self._outside])
        return self._with_outside[1]

    def _call(self, variables, args):
        static = self._static_key() if self._static_key else None
        if self._reached is not None:
            reached = self._reached.key()
            static = (static, reached)
        signature = [(a.shape, a.dtype) for a in args if type(a) in _ARRAY_TYPES]
        if len(signature) == len(args):  # the common case (only arrays), keyed without flattening, in one pass
            leaves, treedef, dynamic = args, None, range(len(args))
            key = (self._serials(variables), tuple(signature), static)
        else:
            leaves, treedef, dynamic = _split_static(args)
            key = (self._serials(variables), treedef, tuple(_signature(leaf) for leaf in leaves), static)
        if self._options.stale():  # an optimizer bound an option the traces hold as a constant
            self._compiled.clear()
        dynamic_leaves = args if treedef is None else [leaves[i] for i in dynamic]
        entry = self._compiled.get(key)
        if entry is None:
            entry = self._compile(key, args, leaves, treedef, dynamic, variables, dynamic_leaves)
        call, function, error_structure, donated, kept = entry
        # (``map`` of an attrgetter: read in C, where a list comprehension is one more Python frame a step)
        error_leaves, result = call(function, list(map(_VALUE, donated)), list(map(_VALUE, kept)), dynamic_leaves,
                                    variables)
        if self._reached is not None and len(self._reached.modules) != len(reached):
            # the call's trace (jax.jit traces at the first call) reached modules outside ``keyed_modules``: its
            # program is filed under their modes too; those filed under fewer modules go
            self._compiled = {(*key[:-1], (static[0], self._reached.key())): entry}
        if error_leaves:
            raise_failed_check(error_structure, error_leaves)
        return result


def _commit_beside_the_parameters(variables) -> None:
    """Place the state among ``variables`` that holds a NumPy value (the generator's key, made without starting
    XLA) on the device of the trainable variables (else JAX's default), committed as a variable's arrays are
    (``variable.committed``), before a program's first call: jax.jit keys its programs by whether an argument is
    committed, and the call writes such state back as a committed array, so every compiled step or function that
    drew dropout masks lowered and compiled its program again at its second call (1.4 s on a CPU)."""
    device = _parameters_device(variables)
    for v in variables:
        if isinstance(v._value, np.ndarray):
            v.value = jax.device_put(v._value.copy(), device)  # (a copy: the CPU's device_put may share NumPy's)


#: the start of jax.jit's error for arguments committed to different devices
_INCOMPATIBLE_DEVICES = "Received incompatible devices for jitted computation"


def _parameters_device(variables):
    """The one device of the trainable variables among ``variables`` (unsharded), or None."""
    devices = {frozenset(v._value.devices()) for v in variables
               if v.trainable and isinstance(v._value, jax.Array)}
    if len(devices) != 1 or len(next(iter(devices))) != 1:
        return None
    return next(iter(next(iter(devices))))


def _placed_beside_the_parameters(variables) -> bool:
    """Move the non-trainable state that a compiled function threads (the generator's key, optimizer slots and
    counters, a loss scale, an accumulation window, buffers) to the device of its trainable variables, where
    ``jax.jit`` refused them on different devices; whether any moved. Such state is made where JAX's default
    device is (``jnp.asarray``, ``jax.random.PRNGKey``: the generator's key at the backend's load and at
    ``manual_seed``, a loaded optimizer state), which is not the device unidl trains on when the two differ
    (``UNIDL_DEVICE=cpu`` on a machine with a GPU, a model on ``cuda:1``); trainable variables are never moved
    (they agree, or nothing moves)."""
    device = _parameters_device(variables)
    if device is None:
        return False
    moved = False
    for variable in variables:
        value = variable._value
        if not variable.trainable and isinstance(value, jax.Array) and value.devices() != {device}:
            variable._value = jax.device_put(value, device)
            moved = True
    return moved


def _moved_to(args, device):
    """``args`` (an array, or any tree of them) with its arrays on another device than ``device`` moved there (a
    batch made on JAX's default device, or placed on another by the caller, as torch's backend moves a step's
    tensors; tracers stay): a new tree if any moved, else ``args`` itself."""
    moved = []

    def beside(leaf):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.devices() != {device}:
            moved.append(leaf)
            return jax.device_put(leaf, device)
        return leaf

    placed = jax.tree_util.tree_map(beside, args)
    return placed if moved else args


class _StateOutside(Exception):
    """Raised out of a ``StatefulJit`` trace that wrote or read ``variables`` outside the ones it threads (a
    BatchNorm or a layer held outside the model's tree, which a train step reaches through a plain list or a
    closure: torch updates its running statistics as it calls it, and reads its weights as they are at each call):
    the write would leak a tracer and be lost, the read would be baked into the program as a constant, so the
    function is traced again with them threaded too."""

    def __init__(self, variables, only_read=frozenset()):
        super().__init__(f"{len(variables)} variables written or read outside the compiled function's state")
        self.variables, self.only_read = variables, only_read


class JaxFunction:
    """``ud.function`` on jax: ``fn`` compiled by ``jax.jit`` over every live variable (``StatefulJit``), or
    run eagerly, with one warning, where its Python control flow needs tensor values (see the module doc)."""

    def __init__(self, fn, name: str):
        self._fn = fn
        self._jit = StatefulJit(fn, jax_variable.live, name)
        self._eager = False
        self.__name__ = name

    @property
    def trace_count(self):
        return None if self._eager else self._jit.trace_count

    def __call__(self, *args):
        if not self._eager and not inside_a_trace(args):  # (inside another trace: inlined into it, see below)
            try:
                return self._jit(*args)
            except _CONCRETIZATION as error:
                self._eager = True
                warn_running_eagerly(self.__name__, "jax", "jax.jit", error)
        return self._fn(*args)


def inside_a_trace(args) -> bool:
    """Whether ``args`` hold values of a trace in progress (a ``ud.function`` called inside another, or inside a
    compiled step, ``scan`` or an export): such a call is traced into that one, as a plain function, so that its
    value checks join the enclosing trace's (numbered there) and its variables are the enclosing trace's state;
    compiled on its own, its checks met the enclosing trace's codes (another check's message) or a trace with no
    checkify at all (an error)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args))


def traced_forward_error(error, name: str) -> GraphConstructError:
    """unidl's error for a forward that needs tensor values while a training step is compiled."""
    return GraphConstructError(
        f"{name} uses the value of a tensor in Python control flow (if/while/bool/int on a traced value) or as a "
        f"boolean mask (x[mask], whose shape depends on the values) while the jax backend compiles it with jax.jit, "
        f"which cannot: write branches with ud.ops.where and loops with ud.ops.scan, or pass eager=True where the "
        f"step offers it. ({type(error).__name__}: "
        f"{str(error).splitlines()[0]})")


def custom_gradient(forward_fn):
    """``f(*xs) -> y`` differentiated by the ``backward`` that ``forward_fn`` returns (``jax.custom_vjp``;
    the backward pass calls ``forward_fn`` again on the saved inputs to obtain ``backward``)."""

    @jax.custom_vjp
    def with_custom_gradient(*inputs):
        return forward_fn(*inputs)[0]

    def forward(*inputs):
        return forward_fn(*inputs)[0], inputs

    def backward(inputs, dy):
        grads = forward_fn(*inputs)[1](dy)
        return tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)

    with_custom_gradient.defvjp(forward, backward)
    return with_custom_gradient
