"""``ud.function``: a Python function compiled the way its backend compiles, with one spelling everywhere.

On tensorflow it becomes a static graph (``tf.function`` with AutoGraph, one trace per
input rank and dtype); on torch it runs eagerly, or through ``torch.compile`` with
``jit_compile=True``; on keras it follows the framework Keras runs on.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from unidl import config, devices, tracing
from unidl.nn import module as nn_module


def _as_argument(backend, value):
    """``value`` as a compiled function takes it: a NumPy array, or an array of another framework (a TF tensor on
    torch, a ``DataLoader``'s torch batch on jax, which ``ud.fit`` hands its metrics as it came), becomes the
    backend's tensor (``backend.function_argument``); the backend's own tensors and variables, Python and NumPy
    numbers and anything else go in as they are. Done here once, so that every backend takes the same arguments."""
    if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and not isinstance(value, np.generic)
                                         and not backend.is_tensor(value)):
        return backend.function_argument(value)
    return value


#: the prefix of the key under which a method's ``Function`` keeps its bound function in an instance's ``__dict__``
BOUND_PREFIX = "_ud_function_bound_"


class Function:
    """A function compiled per backend on its first call there; see ``function``.

    A graph bakes in the ``training`` flag of every module it calls or whose flag it reads (dropout on or off,
    batch or running statistics, a branch on the flag), so there is one compiled function per backend and per
    mode of the modules its traces called or read (``unidl.tracing.recording_module_calls``): ``model.eval()``
    after a call in training mode traces again instead of running the training graph. A graph also holds the
    variables of the sub-modules it called: a sub-module or parameter added, replaced or removed below a module
    it called (a new head) drops its functions for the backend, so the next call traces the new structure
    (a graph ran the old head). A graph bakes in which parameters are frozen too (``value_and_grad`` gives a
    frozen one no gradient, ``optimizer.apply`` skips it), so the functions are keyed on the frozen set of the
    parameters of those modules as well, as compiled train steps are: a freeze or unfreeze after the first call
    traces again, and a set seen before reuses its graph (the graph went on training a layer frozen after its
    trace; a parameter outside every module it reached is not keyed). Keyword arguments are bound to ``fn``'s
    parameters and passed by position; on a method each instance gets a function of its own."""

    def __init__(self, fn, jit_compile: bool = False):
        functools.update_wrapper(self, fn)
        if not hasattr(self, "__name__"):  # a callable object (a module: ``ud.function(model)``, as torch.compile)
            self.__name__ = type(fn).__name__
        self._fn = fn
        self.jit_compile = bool(jit_compile)
        # backend name -> {((dtype, device), the modules' training flags, their parameters' requires_grad): compiled}
        self._compiled: dict = {}
        self._modules: dict = {}  # backend name -> the modules its calls called, in call order
        self._reached: dict = {}  # backend name -> (mode version, modules, their training flags, their parameters)
        # backend name -> the parameters whose trainability its traces read (value_and_grad's: a bare one's too)
        self._bare: dict = {}
        self._bare_ids: dict = {}  # backend name -> their ids
        self._known: dict = {}  # backend name -> their ids
        # a mark each called module keeps in its structure cache, which a change of structure below it empties
        self._mark = object()
        self._checked: dict = {}  # backend name -> the modules' mode version when their marks were last checked
        self._signature = None

    def __get__(self, instance, owner=None):
        """``@ud.function`` on a method: the function of ``fn`` bound to ``instance``, one per instance (its
        graphs hold that instance's modules), as ``tf.function`` binds methods. It is kept in the instance's own
        ``__dict__`` (never by the instance's hash or equality), so it lives and dies with the instance."""
        if instance is None:
            return self
        state = getattr(instance, "__dict__", None)
        if state is None:
            raise TypeError(f"ud.function {self.__name__!r} on a method keeps one function per instance in the "
                            f"instance's __dict__; {type(instance).__name__} has none (__slots__): add '__dict__' "
                            f"to its __slots__")
        key = f"{BOUND_PREFIX}{self.__name__}_{id(self)}"
        bound = state.get(key)
        if bound is None:
            bound = state[key] = Function(functools.partial(self._fn, instance), self.jit_compile)
            bound.__name__ = self.__name__
        return bound

    def _positional(self, args, kwargs) -> tuple:
        """``args`` and ``kwargs`` as ``fn``'s positional arguments (each one not given at its default), or a
        ``TypeError`` naming what does not bind, as a call of ``fn`` would."""
        if self._signature is None:
            self._signature = inspect.signature(self._fn)
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"ud.function {self.__name__!r}: {error}") from None
        keyword_only = [name for name in bound.arguments if self._signature.parameters[name].kind in (
            inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)]
        if keyword_only:
            raise TypeError(f"ud.function {self.__name__!r} passes its arguments by position: keyword-only "
                            f"arguments {keyword_only} cannot be passed; make them positional parameters")
        bound.apply_defaults()  # (a parameter skipped before one given by keyword takes its default's place)
        return bound.args

    def _drop_if_restructured(self, name: str) -> None:
        """Forget the functions of backend ``name`` where a module they called lost this function's mark (its
        structure, or a sub-module's, changed since): checked only after a module's mode or structure changed."""
        modules = self._modules.get(name)
        if not modules or self._checked.get(name) == nn_module._mode_version:
            return
        self._checked[name] = nn_module._mode_version
        if all(self._mark in module.structure_cache() for module in modules):
            return
        for table in (self._compiled, self._modules, self._known, self._reached, self._bare, self._bare_ids):
            table.pop(name, None)

    def _key(self, name: str, placed: tuple, modules: tuple) -> tuple:
        """What a graph of backend ``name`` bakes in beside its inputs: the dtype and device in force (``placed``),
        the ``training`` flag of each module its traces reached (``modules``), and which of their parameters (their
        sub-modules' too: a forward may read a child's weight without calling it) and of the parameters whose
        trainability ``value_and_grad`` read in them (``_bare``: a bare ``ud.nn.Parameter`` too) are frozen. The
        flags and the parameters are read again only after a module's mode or structure changed, or a parameter is
        new (``_mode_version``: a parameter added or replaced changes the structure), so that a call reads one
        ``requires_grad`` per parameter; inside an enclosing recording (a call in another function's trace) the flags
        are read, so that the reads note the modules there."""
        version = nn_module._mode_version
        cached = self._reached.get(name)
        bare = self._bare.get(name, ())
        if cached is None or cached[0] != version or cached[1] is not modules or cached[4] is not bare:
            parameters = {}
            for module in modules:
                for parameter in module.parameters():
                    parameters.setdefault(id(parameter), parameter)
            for parameter in bare:
                parameters.setdefault(id(parameter), parameter)
            modes = tuple(module.training for module in modules)
            cached = self._reached[name] = (version, modules, modes, tuple(parameters.values()), bare)
        elif tracing.current_recording() is not None:
            cached = (*cached[:2], tuple(module.training for module in modules), *cached[3:])
        return placed, cached[2], nn_module.requires_grad_flags(cached[3])

    def _compiled_for(self, backend, key):
        compiled = self._compiled.setdefault(backend.name, {}).get(key)
        if compiled is None:
            compiled = backend.function(self._fn, self.jit_compile, self.__name__)
            self._compiled[backend.name][key] = compiled
            devices.compiled_placed(f"ud.function {self.__name__!r}", "first call",
                                    config.resolve_device(config._requested_device(), backend),
                                    f"{backend.name}, jit_compile={self.jit_compile}")
        return compiled

    def __call__(self, *args, **kwargs):
        if kwargs:
            args = self._positional(args, kwargs)
        backend = config.backend()
        self._drop_if_restructured(backend.name)
        modules = self._modules.get(backend.name, ())
        # the dtype and device in force are read where the function is traced (``ud.tensor``, ``ud.ops.zeros``):
        # a graph traced under another is not this call's (float32 constants under ud.use_dtype('float64'))
        placed = (config.get_dtype(), config._requested_device())  # (as requested: resolving it cost a microsecond)
        compiled = self._compiled_for(backend, self._key(backend.name, placed, modules))
        args = [_as_argument(backend, a) for a in args]
        with tracing.recording_module_calls() as called, tracing.recording_parameters_read() as read:
            result = compiled(*args)
        # inside an enclosing function's trace, its graph bakes in this one's frozen set too, which a call that did
        # not trace again does not read: told to the enclosing recording (module parameters: ``_key`` reads them)
        tracing.parameters_read(self._bare.get(backend.name, ()))
        known = self._known.setdefault(backend.name, set())  # (one object: another thread may drop the entry)
        new_modules = called and not called.keys() <= known
        bare_ids = self._bare_ids.setdefault(backend.name, set())
        new_bare = read and not read.keys() <= bare_ids
        if new_modules or new_bare:
            if new_modules:
                modules = self._modules[backend.name] = (*modules, *(m for key, m in called.items()
                                                                     if key not in known))
                known.update(called)
                for module in modules:
                    module.structure_cache()[self._mark] = True
            if new_bare:  # (parameters whose requires_grad its trace read: value_and_grad's, a bare one's too)
                self._bare[backend.name] = (*self._bare.get(backend.name, ()),
                                            *(p for key, p in read.items() if key not in bare_ids))
                bare_ids.update(read)
            # the call traced (or ran) modules or parameters not keyed before: its function is the one for their
            # modes and frozen flags now; functions keyed on fewer are dropped (traced again if those come back)
            self._compiled[backend.name] = {self._key(backend.name, placed, modules): compiled}
        return result

    @property
    def trace_count(self) -> int | None:
        """Traces on the current backend: an int where the backend traces graphs (tensorflow,
        keras on TensorFlow), None where it runs eagerly or before the first call."""
        counts = [compiled.trace_count for compiled in self._compiled.get(config.backend().name, {}).values()]
        return None if not counts or None in counts else sum(counts)


def function(fn=None, *, jit_compile: bool = False):
    """Compile ``fn`` for the backend in force: ``@ud.function`` or ``@ud.function(jit_compile=True)``.

    Inside, ``ud.value_and_grad``, ``optimizer.apply`` and Python control flow on tensors
    (``if ud.ops.sum(x) > 0:``, ``for i in range(ud.ops.shape(x)[0])``, ``while``) work on
    every backend: tensorflow converts them to graph control flow (AutoGraph), torch runs
    them as they are. Every input dimension stays unknown in a tensorflow graph, so a new
    batch size or sequence length never retraces; a new input rank or dtype traces again
    with a ``RetraceWarning`` (an input with no elements, e.g. a batch of 0 samples, gets a graph
    of its own exact shapes, silently: TensorFlow's kernels fail on an empty batch in the others).
    A call under another dtype or device in force (``ud.use_dtype``, ``ud.use_device``) than earlier
    calls runs a function traced for it, as torch runs the Python under them each call.
    A Python number, bool, None or string argument reaches ``fn`` as itself on every backend, baked
    into the graph where the backend traces: a new value traces again (pass ``ud.tensor(value)`` for
    a value that changes every call; a NumPy scalar is a tensor too).
    Python code a graph cannot express (``float(t)``, an explicit ``bool(t)``) raises
    ``GraphConstructError`` naming the construct. ``trace_count`` tells how many graphs were
    traced (None on eager backends). The modules it calls, and those whose ``training`` flag
    it reads without calling them (``ops.dropout(x, p, training=model.training)``, ``if self.head.training:``),
    keep their mode: after ``model.eval()`` (or ``train()``) a call traces again, once per new combination of
    modes, instead of reusing a graph that baked in the other one (dropout, batch statistics, the branch taken).
    Freezing or unfreezing (``requires_grad_``) a parameter of those modules after a call likewise traces again,
    once per new frozen set: the graph baked in which parameters ``value_and_grad`` and ``optimizer.apply`` skip.

    Example::

        @ud.function
        def step(x, y):
            loss, grads = ud.value_and_grad(lambda: loss_fn(model(x), y), model.parameters())()
            optimizer.apply(grads)
            return loss
    """
    if fn is None:
        return lambda f: Function(f, jit_compile)
    return Function(fn, jit_compile)
