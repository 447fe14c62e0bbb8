"""What unidl can tell about a function while a backend traces it into a graph.

A trace runs a forward once; Python's and NumPy's global random generators drawn from during it
give one value that the compiled graph then reuses at every step (the tutorial's "dynamic net"
that redraws its depth would train one fixed depth), and so do NumPy ``Generator``s a called module
holds or its ``forward``'s module globals hold. Backends that trace wrap the trace in
``python_randomness_guard`` so that this warns, naming the function and the fixes.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import random
import warnings

import numpy as np

from unidl.errors import RetraceWarning

_called_modules: contextvars.ContextVar = contextvars.ContextVar("unidl_called_modules", default=None)

#: the dict of the innermost ``recording_module_calls`` block running here, or None outside one: the getter of
#: ``Module.training`` notes its module there itself (a bound method: the getter runs at every read of a flag)
current_recording = _called_modules.get


def module_called(module) -> None:
    """``Module.__call__``'s note to the ``recording_module_calls`` block it runs in, if any, and to the
    ``python_randomness_guard`` it is traced in (the generators it can draw from, before its forward runs)."""
    called = _called_modules.get()
    if called is not None:
        called.setdefault(id(module), module)
    watched = _watched_generators.get()
    if watched is not None:
        _watch_generators(watched, module)


class _Recording:
    """A block that collects id -> object notes made to its ``ContextVar`` (``_notes``) in the order first met, nested
    blocks included (an inner block's notes reach the outer one). A class rather than a generator: ``ud.function``
    enters one at every call, and this costs a third as much."""

    __slots__ = ("notes", "_outer", "_token")
    _notes: contextvars.ContextVar

    def __enter__(self) -> dict:
        self._outer = self._notes.get()
        self.notes = {}
        self._token = self._notes.set(self.notes)
        return self.notes

    def __exit__(self, *exc_info) -> None:
        self._notes.reset(self._token)
        if self._outer is not None:
            for key, noted in self.notes.items():
                self._outer.setdefault(key, noted)


class recording_module_calls(_Recording):  # noqa: N801  (used as a context manager, like contextlib's)
    """Collect the modules called in the block, and those whose ``training`` flag it reads without calling them
    (``ops.dropout(x, p, training=model.training)``, ``if self.head.training:``), as id -> module: a graph bakes in
    each one's Python-level flag, so ``ud.function`` keys its graphs on them."""

    __slots__ = ()
    _notes = _called_modules


_read_parameters: contextvars.ContextVar = contextvars.ContextVar("unidl_read_parameters", default=None)


def parameters_read(parameters) -> None:
    """``value_and_grad``'s note of the parameters whose ``requires_grad`` it read (the frozen ones are constants
    of its graph) to the ``recording_parameters_read`` block it runs in, if any: a parameter outside every module a
    ``ud.function`` reaches (a bare ``ud.nn.Parameter``) is keyed on its flag there too."""
    read = _read_parameters.get()
    if read is not None:
        for parameter in parameters:
            read.setdefault(id(parameter), parameter)


class recording_parameters_read(_Recording):  # noqa: N801  (used as a context manager, like contextlib's)
    """Collect the parameters whose trainability ``value_and_grad`` read in the block (``parameters_read``), as
    id -> parameter: ``ud.function`` keys its graphs on their ``requires_grad`` flags."""

    __slots__ = ()
    _notes = _read_parameters


class ModesReached:
    """The modules a compiled step's traces reach (called, or their ``training`` flag read) beyond those its key
    already holds (``keyed()``: its model's modules): a loss module, a second model called in the loss. A graph
    bakes in their flags as well, so the step keys on ``key()`` too: their flags, a tuple of a bool or two for
    most steps, read at every call. ``traced(fn)`` is ``fn`` noting what each of its runs reaches (a graph runs it
    only while being traced); a run that reached new modules changes ``len(modules)``, and the caller files the
    graph just traced under the longer key.

    ``key()`` is cached until a flag or a module tree changes anywhere (``unidl.nn.module``'s mode version, as
    ``training_modes``) or ``modules`` grows: each read of ``Module.training`` costs a context-variable lookup.
    Inside a recording block (a step called in a ``ud.function``'s trace) it reads the flags, so that the reads
    note the modules there."""

    __slots__ = ("modules", "_keyed", "_cached", "_versions")

    def __init__(self, keyed):
        from unidl.nn import module as module_lib  # (unidl.nn.module imports this module)

        self.modules: tuple = ()
        self._keyed = keyed
        self._cached = (None, None, ())  # (mode version, modules, key)
        self._versions = module_lib

    def key(self) -> tuple:
        modules = self.modules
        if not modules:
            return ()
        version = self._versions._mode_version
        cached = self._cached
        if cached[0] == version and cached[1] is modules and current_recording() is None:
            return cached[2]
        key = tuple(self._versions.graph_flags(module) for module in modules)  # (flags, and hooks if any)
        self._cached = (version, modules, key)
        return key

    def traced(self, fn):
        def run(*args):
            with recording_module_calls() as reached:
                result = fn(*args)
            known = {id(module) for module in (*self._keyed(), *self.modules)}
            self.modules += tuple(module for key, module in reached.items() if key not in known)
            return result

        return run


#: id -> (generator, state before) of the NumPy generators seen by the innermost ``python_randomness_guard``
_watched_generators: contextvars.ContextVar = contextvars.ContextVar("unidl_watched_generators", default=None)


def _generator_state(generator):
    state = generator.bit_generator.state if isinstance(generator, np.random.Generator) else generator.get_state()
    return repr(state)  # (nested dicts and arrays: compared as text)


_GENERATORS = (np.random.Generator, np.random.RandomState)
#: a list, tuple or dict of at most this many items (a module's attribute, a closure's cell) is looked into for
#: generators; a larger one (a data set held by a module) is not walked at every trace
_LOOKED_INTO = 64


def _watch_generators(watched: dict, module) -> None:
    """Note the state of each NumPy ``Generator`` (or ``RandomState``) among ``module``'s attributes (in a list,
    tuple or dict attribute too) and what its ``forward`` reads beside them (its module globals, its closure's cells),
    the first time the trace meets it. Reachable further (through another object) it is not seen:
    docs/dynamic-forward.md names that limit."""
    _note_generators(watched, (*vars(module).values(), *_read_by(type(module).forward)))


def _read_by(function) -> list:
    """What ``function`` (a plain or bound one) can read beside its arguments: its module globals and the contents
    of its closure's cells (a generator made in an enclosing function)."""
    function = getattr(function, "__func__", function)
    values = list(getattr(function, "__globals__", {}).values())
    for cell in getattr(function, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # (a cell not filled yet)
            continue
    return values


def _note_generators(watched: dict, values) -> None:
    """``watched[id(g)] = (g, its state)`` for each generator among ``values`` or in a small list, tuple or dict
    among them (``_LOOKED_INTO``), the first time it is met."""
    for value in values:
        if isinstance(value, (list, tuple, dict)) and len(value) <= _LOOKED_INTO:
            items = value.values() if isinstance(value, dict) else value
        else:
            items = (value,)
        for item in items:
            if isinstance(item, _GENERATORS) and id(item) not in watched:
                watched[id(item)] = (item, _generator_state(item))


def _states():
    numpy_state = np.random.get_state(legacy=False)
    return random.getstate(), (numpy_state["state"]["pos"], numpy_state["state"]["key"].tobytes(),
                               numpy_state["has_gauss"])


@contextlib.contextmanager
def python_randomness_guard(name: str, function=None):
    """Warn (``RetraceWarning``) if the block draws from Python's ``random``, NumPy's global generator or a NumPy
    generator held by a module it calls (or read by its ``forward``: module globals, closure), or read by
    ``function`` (the function being traced: a ``ud.function``'s)."""
    before = _states()
    watched = {}
    if function is not None:
        _note_generators(watched, _read_by(function))
    token = _watched_generators.set(watched)
    try:
        yield
    finally:
        _watched_generators.reset(token)
    python_before, numpy_before = before
    python_after, numpy_after = _states()
    generator_drawn = any(_generator_state(generator) != state for generator, state in watched.values())
    drawn = [label for label, changed in (("Python's random", python_before != python_after),
                                          ("NumPy's global np.random", numpy_before != numpy_after),
                                          ("a NumPy Generator (np.random.default_rng())", generator_drawn))
             if changed]
    if drawn:
        warnings.warn(
            f"{name} drew from {' and '.join(drawn)} while being traced into a graph: the value drawn is frozen "
            f"into the graph and every step reuses it. Pass it as an extra step input (step(x, y, value), which "
            f"becomes a graph input), train with eager=True (ud.train_step(..., eager=True), ud.fit(..., "
            f"eager=True)) so that Python runs every step, or use the framework's own randomness "
            f"(ud.ops.dropout). See docs/dynamic-forward.md.", RetraceWarning, stacklevel=4)


def python_randomness_state():
    """Python's ``random`` and NumPy's global generator state, for ``python_randomness_preserved``."""
    return random.getstate(), np.random.get_state()


@contextlib.contextmanager
def python_randomness_preserved(replay=None):
    """Python's ``random`` and NumPy's global generator as they were before the block: for runs of a
    forward that are not steps (an abstract shape check), so that they draw nothing a step would.
    ``replay``: a ``python_randomness_state()`` to run the block from (a second trace of the same step
    draws what the step drew)."""
    python_state, numpy_state = python_randomness_state()
    if replay is not None:
        random.setstate(replay[0])
        np.random.set_state(replay[1])
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def warn_running_eagerly(name: str, where: str, compiler: str, error: BaseException, what: str = "ud.function") -> None:
    """The one warning of a ``ud.function`` (or ``what``: ``ud.predict``'s forward) that falls back to running
    eagerly because its Python control flow, or a boolean-mask index, needs a traced value (``where``: the backend
    as users name it; ``compiler``: what could not compile it)."""
    warnings.warn(
        f"{what} {name!r} on {where} uses the value of a tensor in Python control flow (if/while/bool/int "
        f"on a traced value) or as a boolean mask (x[mask]), which {compiler} cannot compile; it now runs eagerly, "
        f"op by op. To compile it, write branches with ud.ops.where and loops with ud.ops.scan. "
        f"({type(error).__name__})",
        RetraceWarning, stacklevel=3)


def forward_binding_error(model, inputs: tuple) -> tuple[str, TypeError] | None:
    """``(the forward's name and signature, Python's binding error)`` where ``model.forward`` cannot be called on
    ``inputs``, checked before any framework runs or traces it (each would fail its own way); None where it can, or
    where Python cannot describe the forward, or where a forward pre-hook of ``model`` may give it other inputs (as
    ``register_forward_pre_hook(lambda module, args: (args[0], 1.0))`` completes them): the call itself then says."""
    if model.__dict__.get("_forward_pre_hooks"):
        return None
    forward = getattr(model, "forward", None)
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*inputs)
    except TypeError as error:
        return f"{getattr(forward, '__qualname__', type(model).__name__ + '.forward')}{signature}", error
    return None
