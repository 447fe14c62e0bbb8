"""``Module``: the base class of every layer and model, written once for all backends.

A module is bound to the backend in force when it was created. Its
parameters are that framework's own variables (``torch.nn.Parameter``,
``tf.Variable``, ``keras.Variable``; made by ``module.parameter(value)``, or
``ud.nn.Parameter(value)`` outside a module, and held by attributes or by a
``ParameterList``/``ParameterDict``), so the forward pass runs on native
tensors with no wrapper in between; only ``state_dict()`` crosses into NumPy,
in the canonical layout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
import functools
import inspect
import itertools
import re
import weakref
from typing import Iterator

import numpy as np

from unidl import arguments, config, devices, native_tensors
from unidl.dtype_kinds import dtype_name, is_floating, is_integer
from unidl.errors import BackendMismatchError, DtypeMismatchError, NothingToTrainError, StateDictError
from unidl.nn import hooks, loading, placement
from unidl.nn.freezing import is_trainable, trainable_refused
from unidl.nn.incompatible_keys import IncompatibleKeys
from unidl.nn.rollback import restored_on_failure
from unidl.scoped_flags import ScopedFlag
from unidl.tensors import to_numpy
from unidl.tracing import current_recording, module_called


_forward_callers: dict = {}


def _forward_caller(backend, module_class):
    """``backend.forward_caller(module_class)``, asked once per (backend, class)."""
    key = (backend.name, module_class)
    if key not in _forward_callers:
        _forward_callers[key] = backend.forward_caller(module_class)
    return _forward_callers[key]


def require_trainable(parameters, where, *modules) -> None:
    """Raise ``NothingToTrainError`` where nothing a step could train is trainable: none of the optimizer's
    ``parameters`` and none of ``modules``' (the model's and the loss's). PyTorch's ``backward()`` raises there
    (the loss requires no gradient) where tensorflow, keras and jax would run a step that changes nothing; an
    optimizer whose own parameters are all frozen while others of the model train runs its no-op step, as
    ``torch.optim``'s. Checked at every step, as freezing may change between steps; it stops at the first
    trainable parameter, so the modules are walked only when the optimizer's are all frozen. ``where`` names the
    step in the message, the same on every backend: ``"train_step call N"``, or in ``fit`` ``"fit at epoch E, step
    S"`` (as ``NonFiniteLossError``'s); a string, or a callable giving it (built only for the error)."""
    for parameter in parameters:
        if is_trainable(parameter):
            return
    for module in modules:
        if isinstance(module, Module) and any(is_trainable(p) for p in module.parameters()):
            return
    where = where() if callable(where) else where
    raise NothingToTrainError(
        f"{where}: every parameter of the model is frozen (requires_grad=False), so a step has "
        f"nothing to train (PyTorch's backward() raises here); unfreeze those to train (p.requires_grad = True, "
        f"module.requires_grad_(True)); to run the model without training, call it (model(x)) or use ud.evaluate")


def trainable_mask(parameters) -> tuple[bool, ...]:
    """``is_trainable`` of each parameter: what a compiled step keys its graph on, so that freezing or
    unfreezing a parameter between steps builds the step again instead of training a frozen weight."""
    return tuple(is_trainable(p) for p in parameters)


def requires_grad_flags(parameters) -> tuple:
    """The ``requires_grad`` flag of each parameter (True where it has none): the frozen set as a graph already
    traced keys on it at every call (``ud.function``), at a fraction of ``trainable_mask``'s cost (TensorFlow's
    ``trainable`` property, which ``is_trainable`` reads to refuse it, costs ten times the flag); a refused
    ``trainable`` flag is met by ``is_trainable`` where the trace reads the parameters."""
    return tuple([getattr(p, "requires_grad", True) for p in parameters])


#: bumped by every change of a module's ``training`` flag or of a module tree's structure, so that
#: ``training_modes`` recomputes a tree's flags only after one (itertools.count: atomic under threads)
_mode_versions = itertools.count()
_mode_version = next(_mode_versions)


def _modes_changed() -> None:
    global _mode_version
    _mode_version = next(_mode_versions)


def _forget_structure_below(module) -> None:
    """Empty the structure caches of ``module`` and of every module below it (a child replaced or removed): a
    ``ud.function`` that called it directly keeps its mark there, and must trace the new structure."""
    if isinstance(module, Module):
        for below in module.modules():
            below.__dict__.get("_structure_cache", {}).clear()


#: the dtypes of real numbers a state dict's value may hold (NumPy's names, and ml_dtypes' floats)
_REAL = re.compile(r"(float|bfloat|int|uint)\d*(_\w+)?|bool")


def _loadable_values(own: dict, state_dict) -> tuple[dict, list, list, list]:
    """The entries of ``state_dict`` for the variables ``own``, as they are (read one at a time by
    ``_as_loaded`` while they are written: a state dict of GPU tensors is never on the host whole), with the entries
    of another shape, those that are no real numbers (strings, objects, complex numbers, None), and floats for an
    integer variable or integers beyond int64 (a buffer's count: truncated or wrapped negative, where a safetensors
    file's floats were refused) described: ``load_state_dict`` refuses them before writing anything."""
    values, mismatched, unreadable, wrong_kind = {}, [], [], []
    for key, variable in own.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):  # (a list, a number: small, read now)
            try:
                value = np.asarray(to_numpy(value))
            except Exception as error:  # (a value no framework can read: the error names it)
                unreadable.append(f"{key}: {type(error).__name__}: {error}")
                continue
        dtype = dtype_name(value.dtype)
        if not _REAL.fullmatch(dtype):
            unreadable.append(f"{key}: found dtype {np.dtype(value.dtype) if isinstance(value, np.ndarray) else dtype}")
        elif tuple(variable.shape) != tuple(value.shape):
            mismatched.append(f"{key}: expected shape {tuple(variable.shape)}, found {tuple(value.shape)}")
        elif is_integer(variable.dtype) and not (is_integer(value.dtype) or dtype == "bool"):
            wrong_kind.append(f"{key}: expected an integer tensor, found dtype {dtype}")
        elif dtype == "uint64" and is_integer(variable.dtype) and np.asarray(to_numpy(value)).max(initial=0) >> 63:
            wrong_kind.append(f"{key}: values beyond int64 (up to {np.asarray(to_numpy(value)).max()})")
        values[key] = value
    return values, mismatched, unreadable, wrong_kind


def _key_problems(strict: bool, missing: list, unexpected: list, found, state_dict) -> list[str]:
    """``loading.key_problems`` of a state dict in memory (an unexpected key's shape: its value's)."""
    shapes = {key: np.shape(state_dict[key]) for key in unexpected if key in state_dict}
    return loading.key_problems(strict, missing, unexpected, found.entries, shapes)


def _real_array(what: str, value) -> np.ndarray:
    """``value`` as a NumPy array for a new variable (``what``: a parameter, a buffer); strings, objects and complex
    numbers are one ``DtypeMismatchError`` naming ``what`` on every backend (a complex value lost its imaginary part
    with only a framework's warning, which ``load_state_dict`` refuses; a string was a ``TypeError`` on torch and a
    ``ValueError`` elsewhere)."""
    array = np.asarray(to_numpy(value))
    if not _REAL.fullmatch(dtype_name(array.dtype)):
        raise DtypeMismatchError(f"{what} must hold real numbers (floats, integers or bools), as load_state_dict "
                                 f"takes them, got dtype {array.dtype}"
                                 + ("; keep the real and imaginary parts apart" if array.dtype.kind == "c" else ""))
    return array


def new_parameter(backend, what: str, value):
    """A new trainable variable of ``backend`` holding ``value`` (``_real_array``'s checks, ``what`` naming it), in
    the dtype and on the device in force: ``Module.parameter``'s and ``ud.nn.Parameter``'s."""
    value = _real_array(what, value)
    with backend.device_scope(config.resolve_device(config._requested_device(), backend)):
        return backend.parameter(value, trainable=True)


def _as_loaded(value) -> np.ndarray:
    """A checked state-dict value as a NumPy array every backend assigns: a bfloat16 or float8 array of
    ``ml_dtypes`` in float32, whose values it holds exactly (torch's backend could not take them)."""
    value = np.asarray(to_numpy(value))
    return value.astype(np.float32) if value.dtype.kind == "V" and is_floating(value.dtype) else value


#: the ``state_dict`` key (after a module's path) of what its ``get_extra_state`` returns, torch's
EXTRA_STATE_KEY = "_extra_state"


class ExtraState:
    """A module's extra state as ``Module._state_variables`` lists it (``get_extra_state``): no variable, so
    each place that reads variables tells it apart."""

    def __init__(self, module):
        self.module = module

    @staticmethod
    def expected(entry) -> str:
        """What a state dict's missing ``entry`` should have held, as a load's error names it."""
        return "extra state" if isinstance(entry, ExtraState) else f"expected shape {tuple(entry.shape)}"


def training_modes(module) -> tuple[bool, ...]:
    """The ``training`` flag of every module of ``module``'s tree (``modules()`` order), with its hooks where it has
    any, and the count of changes to its structure (``graph_flags``): what a compiled step keys its graph on, since a
    graph bakes in each module's mode (``model.bn.eval()`` while the model trains must not reuse the training graph)
    and the modules and parameters it reached. Cached until any flag or structure changes: a step pays one lookup."""
    cached = module.__dict__.get("_training_modes")
    if cached is not None and cached[0] == _mode_version:
        if current_recording() is not None:  # flags read from the cache are read too (a step inside ud.function)
            for m in module.modules():
                module_called(m)
        return cached[1]
    version = _mode_version
    modes = tuple(graph_flags(m) for m in module.modules())
    object.__setattr__(module, "_training_modes", (version, modes))
    return modes


def step_modes(model, loss_fn) -> tuple:
    """``training_modes`` of a train step's model, and of its loss where that is a module with modes of its own: a
    step compiled by a framework's trainer (Keras's) keys on both, as it bakes in both."""
    return training_modes(model), training_modes(loss_fn) if isinstance(loss_fn, Module) else ()


def restore_modes(saved) -> None:
    """Set each ``(module, training)`` pair of ``saved`` back (a block that ran a tree in another mode ends)."""
    for module, mode in saved:
        object.__setattr__(module, "training", mode)
    _modes_changed()


#: per backend object, the argument types its modules take as they are (its tensor types join on first sight; see
#: ``_inputs``): one set for all backends let a torch tensor, once seen, pass unchecked into a TensorFlow model
_PASSED_AS_THEY_ARE: dict = {}
_PLAIN_TYPES = (type(None), bool, int, float, tuple, list, dict)


def _passed_as_they_are(backend) -> set:
    """The types ``backend``'s modules take as they are, made on the first call of one of them."""
    passed = _PASSED_AS_THEY_ARE.get(backend)
    if passed is None:
        passed = _PASSED_AS_THEY_ARE[backend] = set(_PLAIN_TYPES)
    return passed


#: those of them that one of unidl's layers takes as a tensor when given for a tensor argument (``_converts_lists``)
_CONVERTED = (list, tuple, int, float, bool)


def _converts_lists(module) -> bool:
    """Whether ``module`` takes nested lists (or tuples) of numbers, or a Python number, given for its tensor
    arguments (the first ``_tensor_arguments`` positional ones: a loss's prediction and target) as a tensor,
    ``ud.tensor``'s, as its op takes them (``ReLU()(3.0)`` was torch's TypeError, float32 on TensorFlow and Keras,
    float64 on JAX): one whose ``forward`` is unidl's own (a user's subclass of a layer too), but a container's,
    which passes its arguments on (a ``Sequential``'s first module may be a user's, which takes a list as it is),
    as does a user's module."""
    return type(module).forward.__module__.startswith("unidl.") and not type(module)._passes_inputs_on


def _converted_here(module, args) -> bool:
    """Whether ``module`` converts one of ``args`` that passed as they are (see ``_converts_lists``)."""
    for value in args[:module._tensor_arguments]:  # (a loop, not any() of a generator: a loss runs it every call)
        if type(value) in _CONVERTED:
            return _converts_lists(module)
    return False


@functools.cache
def _renames_input(cls) -> bool:
    """Whether ``cls`` is one of unidl's layers whose ``forward`` names its first input otherwise than ``input``
    (``x``, ``prediction``), which ``torch.nn``'s layers name ``input``: ``layer(input=x)`` then passes it first."""
    if not cls.__module__.startswith("unidl.nn."):
        return False
    parameters = [p for p in inspect.signature(cls.forward).parameters.values() if p.name != "self"]
    return bool(parameters) and parameters[0].name != "input" and "input" not in [p.name for p in parameters]


def _inputs(module, args) -> tuple:
    """A module's positional arguments as ``forward`` gets them, the same on every backend: NumPy arrays (and
    NumPy scalars) become tensors as ``train_step`` converts them (``ud.tensor``: floats in unidl's dtype,
    integers int64); tensors pass. unidl's own layers take nested lists or tuples of numbers, or numbers, for their
    tensor arguments as ``ud.tensor`` makes them (as their ops do; it was an ``AttributeError``:
    ``_converts_lists``), and refuse a first argument that is neither (a string, an object) with a ``TypeError``
    naming the layer; a user's module passes it on to its ``forward``."""
    converted, seen = list(args), {}
    for index, value in enumerate(args):
        if isinstance(value, (np.ndarray, np.generic)):
            from unidl.tensors import tensor  # (on the module's backend: __call__ checked that it is the current one)

            if id(value) not in seen:  # (one array given twice is one tensor: self-attention's attention(x, x, x))
                seen[id(value)] = tensor(value)
            converted[index] = seen[id(value)]
        elif type(value) in _CONVERTED:
            from unidl import input_checks

            listed = type(value) in (list, tuple)
            if index < module._tensor_arguments and _converts_lists(module) and not (
                    listed and input_checks.holds_tensors(value)):
                # a number or nested lists of numbers into one of unidl's layers, as its op takes them
                converted[index] = input_checks.value_as_tensor(module.describe, "input", value)
        elif module._backend.is_tensor(value) or (hasattr(value, "shape") and hasattr(value, "dtype")):
            _refuse_foreign(module, f"argument {index}", value)
        elif index == 0 and type(module).__module__.startswith("unidl."):
            raise TypeError(f"{module.describe()} takes a tensor or a NumPy array, got {type(value).__name__}")
    return tuple(converted)


def _refuse_foreign(module, what: str, value) -> None:
    """``BackendMismatchError`` where ``value`` (a tensor-like argument, ``what`` naming it) is another framework's
    tensor (each framework raised its own error, or TensorFlow converted some silently, without their gradients);
    else its type passes as it is from now on (``_passed_as_they_are``)."""
    native_tensors.refuse_foreign(module.describe(), what, value, module._backend,
                                  "convert it with ud.tensor(x) (a copy, outside the gradient of what made it)",
                                  "build the module under")
    _passed_as_they_are(module._backend).add(type(value))


def _run_forward(module, args: tuple, kwargs: dict):
    """``module.forward`` of ``args`` and ``kwargs``, the inputs converted as ``_inputs`` says, through the backend's
    forward caller (``Backend.forward_caller``). ``input=`` (torch.nn's keyword for a layer's input) is passed first
    to one of unidl's layers whose ``forward`` names it otherwise, here, after the pre-hooks: they see the call as
    written, as torch's."""
    if "input" in kwargs and not args and _renames_input(type(module)):
        kwargs = dict(kwargs)
        args = (kwargs.pop("input"),)
    passed = _PASSED_AS_THEY_ARE.get(module._backend) or _passed_as_they_are(module._backend)
    for value in args:
        if type(value) not in passed:
            args = _inputs(module, args)
            break
    else:  # (every argument passes as it is: a list or a number for a tensor argument of one of unidl's layers?)
        if args and (type(args[0]) in _CONVERTED or module._tensor_arguments > 1) and _converted_here(module, args):
            args = _inputs(module, args)
    for key, value in kwargs.items():  # (a keyword's tensor: another framework's too, a mask=, key_padding_mask=)
        if type(value) not in passed and hasattr(value, "shape") and hasattr(value, "dtype") and \
                not isinstance(value, (np.ndarray, np.generic)):
            _refuse_foreign(module, f"argument {key}=", value)
    caller = module._forward_caller
    if caller is None:
        return module.forward(*args, **kwargs)
    return caller(module, args, kwargs)


#: set while ``ud.export`` traces a forward (``exporting``): a buffer written then is refused (``_refuse_in_export``)
_exporting = ScopedFlag("unidl_exporting")


#: set while a forward runs only for the shape of its output (``fit``'s and ``evaluate``'s probe of one sample):
#: the state it would write (``Embedding``'s ``max_norm`` renormalization, which torch makes in eval mode too) is
#: not written, as no forward of torch's ran there
_STATE_WRITES_SKIPPED = ScopedFlag("unidl_state_writes_skipped")


def exporting():
    """Within it, a forward that writes a parameter or buffer raises ``ExportInputError`` (``_refuse_in_export``)."""
    return _exporting.raised()


def state_writes_skipped():
    """The block's forwards write no parameter or buffer (``Module.write_parameter``, ``write_buffer``)."""
    return _STATE_WRITES_SKIPPED.raised()


def _refuse_in_export(module, name: str) -> None:
    """``ExportInputError`` where ``ud.export`` traces a forward that writes ``module``'s state ``name``: an exported
    program is a function of its input, whose state torch's and TensorFlow's programs went on updating at every call
    while jax's froze it at export (and torch's ONNX exporter failed on it)."""
    if _exporting:
        from unidl.errors import ExportInputError

        kind = "parameter" if name in module._parameters else "buffer"
        raise ExportInputError(f"ud.export: the forward of {module.describe()} writes its {kind} {name!r} in eval "
                               f"mode, which an exported program cannot do alike in every format (some would update "
                               f"it at every call, others keep its value at export); export a forward that leaves "
                               f"its state as it is (keep such a counter outside forward)")


def graph_flags(module):
    """What a graph traced through ``module`` bakes in of it: its ``training`` flag, its hooks where it has any
    (``unidl.nn.hooks``), and how often its own parameters, buffers or children were replaced where they ever were
    (``_structure_changed``: a graph holds the variables it reached). Compiled steps key on it for every module their
    traces reach: a module shared by two models, or a loss module, counts in each step that reaches it."""
    flags = (module.training, hooks.key(module)) if module._hooked else module.training
    version = module.__dict__.get("_structure_version")
    return (flags, version) if version else flags


class Module:
    """Base class for layers and models: subclass it, create sub-modules and parameters in ``__init__``,
    write ``forward``. Calling the module calls ``forward``.

    Example::

        class Net(ud.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = ud.nn.Linear(4, 2)

            def forward(self, x):
                return ud.ops.relu(self.fc(x))
    """

    _optional_buffers: tuple[str, ...] = ()  # see optional_state_keys
    _version = 1  # torch's: a state dict's metadata (state_dict()._metadata) gives each module its class's
    _hooked = False  # whether forward hooks are registered (see register_forward_hook)
    _passes_inputs_on = False  # a container, whose forward hands its arguments to a module as they are (see _inputs)
    _tensor_arguments = 1  # how many of the first positional arguments of a unidl layer's forward take tensors

    def __init__(self):
        backend = config.backend()
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "_forward_caller", _forward_caller(backend, type(self)))
        object.__setattr__(self, "_ops", backend.ops)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_native", None)
        object.__setattr__(self, "_structure_cache", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parent", None)

    # ---- registration ------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning {name!r}")
        if name == "trainable":  # (Keras's idiom: ignored on every backend, the weights moved)
            raise trainable_refused(f"{type(self).__name__}.trainable = {value!r}", "module.requires_grad_(False)")
        is_module, is_parameter = isinstance(value, Module), self._backend.is_parameter(value)
        # (a module over a parameter too, as torch.nn: it silently took the parameter out of the state dict)
        if value is not None and not is_parameter and (not is_module or name in self._parameters):
            if name in self._buffers and self._buffers[name] is None:  # a buffer registered as None, filled in
                self.register_buffer(name, value, self._persists(name))
                return
            if name in self._buffers:  # ``self.count = self.count + 1``: still the buffer, as torch.nn's
                self._assign_buffer(name, value)
                return
            for kind, table, expected in (("parameter", self._parameters, "a parameter (module.parameter(value))"),
                                          ("child module", self._modules, "a unidl.nn.Module")):
                if name in table:  # (it was dropped from the parameters or children: from state_dict too)
                    raise TypeError(f"cannot assign a value of type {type(value).__name__} as {kind} {name!r} of "
                                    f"{type(self).__name__}: {expected} or None, as torch.nn; del it first to "
                                    f"make {name!r} a plain attribute")
        if value is None and name in self._buffers:  # a buffer set to None stays one, to be filled in again
            self.register_buffer(name, None, self._persists(name))
            return
        # a module (or parameter) replacing one of its kind keeps its place, as in PyTorch: the order of
        # ``_modules`` is the order of a Sequential and of the state_dict keys
        table = self._modules if is_module else self._parameters if is_parameter else None
        if table is not None and table.get(name) is value:  # the same one again (weights tied in every forward):
            return  # nothing changes, and no compiled step retraces for it
        if value is None:  # a child or parameter set to None keeps its place, as torch.nn's (and as ``add_module(name,
            # None)``, ``register_parameter(name, None)``): assigned again, it comes back there
            table = self._modules if name in self._modules else self._parameters if name in self._parameters else None
        _forget_structure_below(self._modules.get(name))  # (an outgoing child: what was built from it goes too)
        for other in (self._parameters, self._buffers, self._modules):
            if other is not table:
                other.pop(name, None)
        self.__dict__.get("_non_persistent", set()).discard(name)
        if isinstance(value, Module):
            self._check_backend(value._backend, f"sub-module {name!r} ({type(value).__name__})")
            self._modules[name] = value
            parent = value._parent[0]() if value._parent is not None else None
            if parent is None:  # the first live owner names it in errors (a slice of a Sequential does not)
                object.__setattr__(value, "_parent", (weakref.ref(self), name))
        elif table is not None and value is None:  # (None, in the child's or parameter's place)
            table[name] = None
        elif table is not None:
            self._parameters[name] = value
            devices.parameter_created(self, name, value, self._backend)
        if table is not None or name in self.__dict__ and isinstance(self.__dict__[name], Module):
            self._structure_changed()
        object.__setattr__(self, name, value)
        if name == "training":  # ``module.training = False``, as torch code does instead of eval()
            _modes_changed()

    def __delattr__(self, name):
        self.__dict__.get("_non_persistent", set()).discard(name)
        _forget_structure_below(self._modules.get(name))
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        self._structure_changed()
        object.__delattr__(self, name)

    def __deepcopy__(self, memo):
        """``copy.deepcopy(module)``, as PyTorch's: a module of the same class with new variables holding the same
        values (the same dtype, device, ``requires_grad`` and training mode), sub-modules copied alike, and a variable or
        sub-module shared in the original shared in the copy; what was built from the structure (``native``, a
        compiled forward) is built again for it. Ops namespaces and the backend are shared (they hold no state).
        An attribute that cannot be copied is a ``TypeError`` naming it."""
        import copy
        import types

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        trainable = {id(variable) for variable in self._parameters.values() if variable is not None}
        backend = self._backend
        for variable in (*self._parameters.values(), *self._buffers.values()):
            if variable is not None and id(variable) not in memo:
                value = np.asarray(to_numpy(variable))
                with backend.device_scope(backend.device_of(variable)):  # (the original's device, as torch's)
                    copied = backend.parameter(value, trainable=id(variable) in trainable, dtype=value.dtype.name)
                if not is_trainable(variable):
                    backend.set_requires_grad(copied, False)
                memo[id(variable)] = copied
        from unidl.function import BOUND_PREFIX

        for name, value in self.__dict__.items():
            if name.startswith(BOUND_PREFIX):  # (a method's graphs: traced anew)
                continue
            if name in ("_native", "_parent", "_training_modes"):  # (built again from the copy's structure)
                object.__setattr__(new, name, None)
            elif name == "_structure_cache":
                object.__setattr__(new, name, {})
            elif name == "_buffer_refs":  # (the copy's own buffers)
                object.__setattr__(new, name, [weakref.ref(buffer) for buffer in new._buffers.values()
                                               if buffer is not None])
            elif name == "_backend" or isinstance(value, types.ModuleType):
                object.__setattr__(new, name, value)
            else:
                try:
                    object.__setattr__(new, name, copy.deepcopy(value, memo))
                except TypeError as error:
                    raise TypeError(f"copy.deepcopy of {self.describe()}: its attribute {name!r} "
                                    f"({type(value).__name__}) cannot be copied: {error}") from None
        for name, child in new._modules.items():
            if child is not None and child._parent is None:
                object.__setattr__(child, "_parent", (weakref.ref(new), name))
        return new

    def __copy__(self):
        """``copy.copy(module)``: a module of the same class sharing this one's attributes (its variables and
        children too), as Python's default shallow copy makes it (pickling is refused: ``__reduce_ex__``)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __reduce_ex__(self, protocol):
        """Pickling a module is one ``TypeError`` on every backend, naming the portable ways: it holds its
        backend's variables and functions, which pickled on none of them alike (a ``TypeError`` about a Python
        module on torch, TensorFlow and JAX, an ``AttributeError`` about a local function on Keras)."""
        raise TypeError(f"cannot pickle {self.describe()}: a unidl module holds its backend's variables and "
                        f"functions; save its weights with ud.save(model, path) or model.state_dict() (NumPy arrays, "
                        f"which pickle) and load them into the model built again (copy.deepcopy(model) copies it "
                        f"in memory)")

    def _structure_changed(self, keep_native: bool = False) -> None:
        """Forget what was built from the structure of this module and of its owners (``native``, the
        ``structure_cache``): it holds the variables of then, so a head replaced afterwards (transfer learning)
        would neither train nor run. ``keep_native``: the variables are the same (a hook added), only what was
        traced goes."""
        _modes_changed()  # the tree's list of modules changed
        if not keep_native:  # (graph_flags: a hook changed is keyed by its own flags, and may come and go often)
            self.__dict__["_structure_version"] = self.__dict__.get("_structure_version", 0) + 1
        node = self
        while node is not None:
            if not keep_native:
                object.__setattr__(node, "_native", None)
            node.__dict__.get("_structure_cache", {}).clear()
            node = node._parent[0]() if node._parent is not None else None

    def structure_cache(self) -> dict:
        """A dict for what a backend builds from this module's structure and keeps (a compiled forward for
        ``predict``/``evaluate``): emptied when a sub-module or parameter below it is added, replaced or removed."""
        return self._structure_cache

    def add_module(self, name: str, module: "Module | None") -> None:
        """Register ``module`` as the child ``name`` (``setattr`` with a name that need not be an identifier)."""
        self._check_new_name("add_module", name, self._modules)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module({name!r}, ...) needs a unidl.nn.Module, "
                            f"got {type(module).__name__}")
        if module is None:
            self._modules[name] = None
            object.__setattr__(self, name, None)
            _modes_changed()
        else:
            setattr(self, name, module)

    register_module = add_module

    def _placement(self):
        """The backend's placement scope for the device in force, for new variables of this module."""
        return self._backend.device_scope(config.resolve_device(config._requested_device(), self._backend))

    def parameter(self, value) -> object:
        """A new trainable variable of this module's backend, holding ``value`` (cast to the current dtype)."""
        return new_parameter(self._backend, f"{type(self).__name__}.parameter: the value", value)

    def register_parameter(self, name: str, param) -> None:
        """Add ``param`` (a parameter of this module's backend, ``module.parameter(value)``) as the parameter
        ``name``, as torch.nn's: the name rules of ``add_module``; None makes the attribute None and nothing in
        ``parameters()`` or ``state_dict``, keeping the name's place for a parameter assigned to it later. Anything
        else (a tensor, an array) is a ``TypeError``: make it a parameter first."""
        self._check_new_name("register_parameter", name, self._parameters)
        if param is not None and not self._backend.is_parameter(param):
            raise TypeError(f"{type(self).__name__}.register_parameter({name!r}, ...) needs a parameter of the "
                            f"{self._backend.name} backend (module.parameter(value)) or None, got "
                            f"{type(param).__name__}")
        if param is None:
            if self._parameters.get(name) is not None:
                self._structure_changed()
            self._parameters[name] = None
            object.__setattr__(self, name, None)
            return
        setattr(self, name, param)

    def _check_new_name(self, method: str, name, table: dict) -> None:
        """torch.nn's checks of a new child's or buffer's ``name``: a string (``TypeError``), non-empty, without
        '.', and not an attribute the module already has outside ``table`` (``KeyError``: ``add_module("weight",
        ...)`` removed the parameter silently, ``"training"`` replaced the mode flag, ``ModuleDict({"keys": ...})``
        its method)."""
        owner = type(self).__name__
        if not isinstance(name, str):
            raise TypeError(f"{owner}.{method}: the name must be a string, got {type(name).__name__} {name!r}")
        if not name or "." in name:
            raise KeyError(f"{owner}.{method}: the name must be a non-empty string without '.', got {name!r}")
        if name not in table and getattr(self, name, None) is not None:  # (a None attribute may become one)
            raise KeyError(f"{owner}.{method}: attribute {name!r} already exists; pick another name (or del it "
                           f"first)")

    def register_buffer(self, name: str, value, persistent: bool = True) -> None:
        """Add non-trainable state (BatchNorm's running statistics) that ``state_dict()`` saves. A float
        ``value`` takes unidl's float dtype; an integer one keeps its own (``num_batches_tracked``, int64). None
        makes the attribute None and nothing in ``state_dict``, until a value assigned to it makes it a buffer
        again, as torch.nn's (code that fills a buffer in at its first forward). ``persistent=False``: a buffer
        that ``state_dict()`` leaves out (a cache, a mask derived from the configuration), as torch.nn's; it is
        still state of the module (``named_buffers``, compiled steps, data-parallel broadcasts). ``value`` is a
        tensor or an array of real numbers: a Python number, a list or a string is a ``TypeError``, as torch.nn's,
        and strings, objects or complex numbers in an array a ``DtypeMismatchError``, on every backend (a complex
        value lost its imaginary part; ``load_state_dict`` refuses them)."""
        self._check_new_name("register_buffer", name, self._buffers)
        persistent = arguments.boolean(f"{type(self).__name__}.register_buffer", "persistent", persistent)
        if value is not None:  # (checked before anything changes)
            self._check_buffer_value(name, value)
            value = _real_array(f"buffer {name!r} of {type(self).__name__}", value)
        non_persistent = self.__dict__.setdefault("_non_persistent", set())
        if persistent:
            non_persistent.discard(name)
        else:
            non_persistent.add(name)
        for table in (self._parameters, self._modules):  # (a None parameter or child of that name becomes it)
            table.pop(name, None)
        if value is None:  # (no variable: nothing in state_dict; a value assigned later makes it one, in this place)
            if self._buffers.get(name) is not None:
                self._structure_changed()
            self._buffers[name] = None
            object.__setattr__(self, name, None)
            return
        dtype = value.dtype.name if value.dtype.kind in "iub" else None
        with self._placement():
            variable = self._backend.parameter(value, trainable=False, dtype=dtype)
        self._buffers[name] = variable
        object.__setattr__(self, name, variable)
        # a new variable: what was built or traced from the old one goes (a buffer registered again, filled in or
        # given another shape after a step was compiled: tensorflow, jax and keras read the old one, silently)
        self._structure_changed()
        refs = self.__dict__.setdefault("_buffer_refs", [])  # (identities: a TensorFlow variable has no hash)
        refs[:] = [ref for ref in refs if ref() is not None] + [weakref.ref(variable)]
        devices.parameter_created(self, name, variable, self._backend, kind="buffer")

    def _persists(self, name: str) -> bool:
        """Whether buffer ``name`` is saved by ``state_dict`` (``register_buffer``'s ``persistent``)."""
        return name not in self.__dict__.get("_non_persistent", ())

    def _check_buffer_value(self, name: str, value) -> None:
        """A ``TypeError`` where ``value`` assigned to buffer ``name`` is no tensor or array, as torch.nn's."""
        if getattr(value, "shape", None) is None:
            raise TypeError(f"cannot assign a value of type {type(value).__name__} as buffer {name!r} of "
                            f"{type(self).__name__}: a tensor, an array or None, as torch.nn")

    def _assign_buffer(self, name: str, value) -> None:
        """``module.<buffer> = value``, as torch.nn's: ``value`` (a tensor, an array, a number) becomes the
        buffer's value and the buffer stays one, saved by ``state_dict`` (it was dropped from the buffers: a
        checkpoint lost it). A value of the buffer's shape is written into it, in the buffer's dtype, also inside a
        compiled step (``write_buffer``); one of another shape makes a new buffer in its place (eagerly)."""
        self._check_buffer_value(name, value)
        _refuse_in_export(self, name)
        current = self._buffers[name]
        if any(ref() is value for ref in self.__dict__.get("_buffer_refs", ())):  # a buffer variable of this
            self._buffers[name] = value  # module, as a swap assigns (a, b = b, a): that variable, as torch.nn's
            object.__setattr__(self, name, value)
            self._structure_changed()
            return
        if isinstance(value, (np.ndarray, np.generic)):
            value = _real_array(f"buffer {name!r} of {type(self).__name__}", value)
        if tuple(value.shape) != tuple(current.shape):
            self.register_buffer(name, value, self._persists(name))
            return
        if isinstance(value, np.ndarray):
            from unidl.tensors import tensor

            value = tensor(value, dtype_name(current.dtype))
        from unidl import ops

        self.write_buffer(name, ops.cast_like(value, current))

    def write_buffer(self, name: str, value) -> None:
        """Store ``value`` (a native tensor computed by the forward, e.g. new running statistics) as the
        buffer ``name``: in place where the framework allows, as the new state object where it does not
        (``Backend.write_state``)."""
        self._write_state(self._buffers, name, value)

    def write_parameter(self, name: str, value) -> None:
        """Store ``value`` (a native tensor computed by the forward from the parameter: ``Embedding``'s rows
        renormalized to ``max_norm``) as the parameter ``name``, as ``write_buffer`` stores a buffer: PyTorch's
        in-place write of a parameter outside autograd. A gradient taken through the forward reaches the parameter
        through ``value``, which must carry it (``embedding_ops.renormalized``); an optimizer step then updates the
        written value, as torch's."""
        self._write_state(self._parameters, name, value)

    def _write_state(self, store: dict, name: str, value) -> None:
        if _STATE_WRITES_SKIPPED:  # (a forward run for its output's shape alone: ``state_writes_skipped``)
            return
        _refuse_in_export(self, name)
        holder = self._backend.write_state(store[name], value)
        if holder is not store[name]:
            store[name] = holder
            object.__setattr__(self, name, holder)

    def _check_backend(self, other, what: str) -> None:
        if other is not self._backend:
            raise BackendMismatchError(
                f"{what} was created under backend {other.name!r} but {type(self).__name__} "
                f"belongs to {self._backend.name!r}; move weights across with state_dict()")

    # ---- mode --------------------------------------------------------------
    @property
    def training(self) -> bool:
        """True in training mode (``train()``: dropout on, batch statistics), False in evaluation mode (``eval()``).

        Read while a ``ud.function`` or a compiled step is traced, it notes this module as a call of it does
        (``unidl.tracing``): a graph bakes in the flag it read, so the function keys its graphs on this flag too,
        and a flag changed since traces again instead of running the graph of the other mode, even where the
        module is never called (``ops.dropout(x, p, training=model.training)``, a branch on ``self.head.training``)."""
        recording = current_recording()
        if recording is not None:
            recording.setdefault(id(self), self)
        return self._training

    @training.setter
    def training(self, mode) -> None:
        self.__dict__["_training"] = mode

    # ---- calling -----------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        current = config._backend_override.get() or config._default_backend
        if current is not None and current is not self._backend:
            raise BackendMismatchError(
                f"{type(self).__name__} was created under backend {self._backend.name!r} and cannot run "
                f"under {current.name!r}; build it again under {current.name!r} and load_state_dict() "
                f"from this one's state_dict()")
        module_called(self)  # for ud.function, whose graphs depend on this module's mode (unidl.tracing)
        if self._hooked:
            return hooks.call(self, args, kwargs, functools.partial(_run_forward, self))
        return _run_forward(self, args, kwargs)

    def register_forward_pre_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False):
        """Call ``hook(module, args)`` before each ``forward``, as torch.nn's: it returns None or new positional
        inputs (``with_kwargs=True``: ``hook(module, args, kwargs)`` returning None or ``(args, kwargs)``); hooks
        run in registration order, ``prepend=True`` first. Returns a handle whose ``remove()`` takes it off. In a
        compiled step (tensorflow, jax, Keras) the hook runs when the step is traced, as the forward's Python does
        (``unidl.nn.hooks``)."""
        return hooks.register(self, "_forward_pre_hooks", hook, prepend, {"with_kwargs": with_kwargs},
                              "register_forward_pre_hook")

    def register_forward_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False,
                              always_call: bool = False):
        """Call ``hook(module, args, output)`` after each ``forward``, as torch.nn's: it returns None or a new
        output (``with_kwargs=True``: ``hook(module, args, kwargs, output)``); ``always_call=True`` calls it, with
        the output so far, also when the forward raises. Hooks run in registration order, ``prepend=True`` first.
        Returns a handle whose ``remove()`` takes it off. Example, the features a layer computes::

            features = []
            handle = model.conv2.register_forward_hook(lambda module, args, output: features.append(output))
            model(x)
            handle.remove()

        In a compiled step (tensorflow, jax, Keras) the hook runs when the step is traced, as the forward's Python
        does: collect features from ``model(x)`` (eager on every backend), not from inside ``train_step``."""
        return hooks.register(self, "_forward_hooks", hook, prepend,
                              {"with_kwargs": with_kwargs, "always_call": always_call}, "register_forward_hook")

    def register_state_dict_pre_hook(self, hook):
        """Call ``hook(module, prefix, keep_vars)`` when ``state_dict()`` is called on this module or on one above
        it, before any state is read, as torch.nn's (``prefix``: this module's keys' start, ``"encoder.0."``), so
        that it may prepare what is saved. Hooks run in registration order, a module's before those below it; a
        file writer (``ud.save``, checkpoints) calls ``state_dict()``, so they run there too. Returns a handle
        whose ``remove()`` takes it off.

        Args:
            hook: the function to call; what it returns is ignored, as torch's.
        """
        return hooks.register(self, "_state_dict_pre_hooks", hook, False, {}, "register_state_dict_pre_hook")

    def register_state_dict_post_hook(self, hook):
        """Call ``hook(module, state_dict, prefix, local_metadata)`` when ``state_dict()`` has saved this module and
        those below it, as torch.nn's: it may change ``state_dict`` in place (drop a key, add one, convert a value);
        it must return None (anything else is torch's ``RuntimeError``). A module's post-hooks run after those
        below it; ``local_metadata`` is ``{"version": ...}``, the module's version as torch's (2 for BatchNorm and
        InstanceNorm, 1 for the others), which ``state_dict()``'s ``_metadata`` holds too. A file writer
        (``ud.save``, checkpoints) calls ``state_dict()``, so they run there too.

        Args:
            hook: the function to call.

        Returns:
            A handle whose ``remove()`` takes the hook off.
        """
        return hooks.register(self, "_state_dict_post_hooks", hook, False, {}, "register_state_dict_post_hook")

    def register_load_state_dict_pre_hook(self, hook):
        """Call ``hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
        error_msgs)`` when ``load_state_dict`` reaches this module, before it takes its entries, as torch.nn's:
        ``state_dict`` is the load's copy, holding this module's keys (those under ``prefix``; the whole one at the
        top), which the hook may change in place (rename an old checkpoint's keys: this module and those below it
        load the new ones); ``strict`` is True, whatever the load's, as torch passes it; a message appended to
        ``error_msgs`` makes the load fail (a ``StateDictError``, a ``RuntimeError`` as torch's), keys appended to
        the lists are reported as missing or unexpected. ``local_metadata`` is what the state dict's ``_metadata``
        holds for this module, as torch's (a ``state_dict()`` of unidl or torch carries it: ``{"version": ...}``; a
        dict without it, and the file loads, whose files keep only tensors: ``{}``). The hooks of every module run
        before anything is written (torch runs a child's after its parent's weights are written: only a hook that
        reads the model itself sees that difference), and ``ud.load_weights``, ``ud.load`` and ``load_checkpoint``
        of a model with load hooks read the file whole and go through ``load_state_dict`` (without hooks they read
        one tensor at a time). A hook that changes the model itself (makes a parameter anew) does so before the
        load's snapshot: a load refused later puts back the variables the hook left, not those it replaced.

        Args:
            hook: the function to call; what it returns is ignored, as torch's.

        Returns:
            A handle whose ``remove()`` takes the hook off.
        """
        return hooks.register(self, "_load_state_dict_pre_hooks", hook, False, {},
                              "register_load_state_dict_pre_hook")

    def register_load_state_dict_post_hook(self, hook):
        """Call ``hook(module, incompatible_keys)`` when ``load_state_dict`` has loaded this module and those below
        it, as torch.nn's: ``incompatible_keys`` holds the ``missing_keys`` and ``unexpected_keys`` found so far,
        lists the hook may change in place (clearing both: a strict load does not raise; adding one: it does). It
        must return None (anything else is torch's ``AssertionError``). A module's post-hooks run after those below
        it. The load stays all or nothing: a strict load that still finds missing or unexpected keys after the
        hooks puts every variable and extra state back as it was and raises (so a model with load post-hooks is
        copied to the host before each load).

        Args:
            hook: the function to call.

        Returns:
            A handle whose ``remove()`` takes the hook off.
        """
        return hooks.register(self, "_load_state_dict_post_hooks", hook, False, {},
                              "register_load_state_dict_post_hook")

    def _hooks_changed(self) -> None:
        """A hook was added or removed: compiled steps and ``ud.function``s that traced this module trace again
        (their keys hold ``graph_flags``; the structure caches of the module and its owners are emptied)."""
        object.__setattr__(self, "_hooked", bool(self.__dict__.get("_forward_pre_hooks")
                                                 or self.__dict__.get("_forward_hooks")))
        self._structure_changed(keep_native=True)

    # ---- traversal ---------------------------------------------------------
    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, "Module"]]:
        """(dotted path, module) for this module and every one below it, depth first, this one first
        with path ``prefix``; a module reached twice is listed once unless ``remove_duplicate`` is False."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self) -> list["Module"]:
        """Every module of the tree, this one first (see ``named_modules``), as a list."""
        return [module for _, module in self.named_modules()]

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) for each direct child, in registration order (each module once)."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator["Module"]:
        """The direct children, in registration order."""
        for _, child in self.named_children():
            yield child

    def get_submodule(self, target: str) -> "Module":
        """The module at dotted path ``target`` ('' is this module)."""
        module = self
        for part in target.split(".") if target else ():
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(module).__name__} has no child module {part!r} (path {target!r}); "
                                     f"its children: {list(module._modules)}")
            module = child
        return module

    def set_submodule(self, target: str, module: "Module", strict: bool = False) -> None:
        """Put ``module`` at dotted path ``target`` (``"net_b.net_c.conv"``), as torch.nn's: it replaces the child
        there in its place (its parameters take the old one's ``state_dict`` keys and order) or, unless ``strict``,
        becomes a new child of the module at the path's parent.

        Args:
            target: the dotted path of the child to set; its parent must exist (``get_submodule``'s
                ``AttributeError`` where it does not).
            module: the new child, a ``unidl.nn.Module`` of this module's backend (anything else: torch's
                ``ValueError``; another backend's: ``BackendMismatchError``).
            strict: True replaces an existing child only: a missing one is an ``AttributeError``, as torch's. An
                existing attribute that is no module (a parameter) is one either way.
        """
        strict = arguments.boolean(f"{type(self).__name__}.set_submodule", "strict", strict)
        if not isinstance(target, str) or target == "":
            raise ValueError(f"{type(self).__name__}.set_submodule: cannot set the submodule without a target name "
                             f"(a dotted path such as 'encoder.0'), got {target!r}")
        if not isinstance(module, Module):
            raise ValueError(f"{type(self).__name__}.set_submodule({target!r}, ...): `module` is not a "
                             f"unidl.nn.Module, found {type(module).__name__}")
        path, _, name = target.rpartition(".")
        parent = self.get_submodule(path)
        if strict and not hasattr(parent, name):
            raise AttributeError(f"{type(parent).__name__} has no attribute `{name}` (path {target!r}); with "
                                 f"strict=True set_submodule replaces an existing child only: its children: "
                                 f"{list(parent._modules)}")
        if hasattr(parent, name) and not isinstance(getattr(parent, name), Module):
            raise AttributeError(f"`{name}` is not a unidl.nn.Module (path {target!r}: a "
                                 f"{type(getattr(parent, name)).__name__}); set_submodule replaces a child module")
        setattr(parent, name, module)

    def get_parameter(self, target: str):
        """The parameter at dotted path ``target`` (``"0.weight"``), as torch.nn's: an ``AttributeError`` naming
        what the module there has where it has no such parameter."""
        return self._get_variable(target, "_parameters", "parameter")

    def get_buffer(self, target: str):
        """The buffer at dotted path ``target`` (``"bn.running_mean"``), as ``get_parameter`` finds a parameter."""
        return self._get_variable(target, "_buffers", "buffer")

    def _get_variable(self, target: str, table: str, kind: str):
        path, _, name = target.rpartition(".")
        module = self.get_submodule(path)
        variable = getattr(module, table).get(name)
        if variable is None:
            raise AttributeError(f"{type(module).__name__} has no {kind} {name!r} (path {target!r}); its {kind}s: "
                                 f"{[key for key, value in getattr(module, table).items() if value is not None]}")
        return variable

    def apply(self, fn) -> "Module":
        """Call ``fn(module)`` on every child (recursively, children first) and then on this module;
        returns this module. Example: ``model.apply(init_weights)``."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, object]]:
        """(dotted name, native variable) for every trainable parameter, in registration order, each once (a layer
        or parameter shared by two modules, weight tying: under its first name), as PyTorch's; with
        ``remove_duplicate=False`` under every name (``state_dict``'s keys). ``recurse=False``: this module's own.
        (Every name was listed: ``SGD(model.parameters())`` of a model with a tied weight was refused.)"""
        return self._named_variables("_parameters", prefix, recurse, remove_duplicate)

    def _named_variables(self, table: str, prefix: str, recurse: bool, remove_duplicate: bool):
        seen = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix,
                                                                                                          self)]
        for path, module in modules:
            for name, value in getattr(module, table).items():
                if value is None:  # (a parameter or buffer set to None: its place kept, nothing to list)
                    continue
                if remove_duplicate:
                    if id(value) in seen:
                        continue
                    seen.add(id(value))
                yield (f"{path}.{name}" if path else name), value

    def _state_variables(self, non_persistent: bool = False,
                         extra_state: str | None = None) -> Iterator[tuple[str, object]]:
        """(name, variable) of every parameter and persistent buffer (every buffer with ``non_persistent``) under
        every name, in ``state_dict``'s order: PyTorch's, each module's own parameters, then its own buffers, then
        its children's (every parameter came first). ``extra_state`` (``"get_extra_state"`` to save,
        ``"set_extra_state"`` to load): also ``(name, ExtraState(module))`` after the buffers of each module whose
        class defines that method (``<path>._extra_state``, torch's key)."""
        for path, module in self.named_modules(remove_duplicate=False):
            yield from ((f"{path}.{name}" if path else name, value) for name, value in module._parameters.items()
                        if value is not None)
            left_out = () if non_persistent else module.__dict__.get("_non_persistent", ())
            yield from ((f"{path}.{name}" if path else name, value) for name, value in module._buffers.items()
                        if value is not None and name not in left_out)
            if extra_state is not None and getattr(type(module), extra_state) is not getattr(Module, extra_state):
                yield (f"{path}.{EXTRA_STATE_KEY}" if path else EXTRA_STATE_KEY), ExtraState(module)

    def get_extra_state(self):
        """State of this module that is no parameter or buffer (a configuration, a step count kept in Python), for
        ``state_dict()`` to hold under ``<path>._extra_state``, as torch.nn's: define it, and ``set_extra_state``,
        in a subclass. ``state_dict()`` holds what it returns as it is; a file (``ud.save``, checkpoints) holds
        arrays only, so return an array (or a tensor of any framework: written as its values, also from a GPU or
        one that requires a gradient) for a model saved to one (anything else: a ``TypeError`` naming the key when
        the file is written). Not defined here: a module without it has no such key."""
        raise RuntimeError(f"{type(self).__name__}.get_extra_state is not defined: a subclass that keeps extra "
                           f"state defines get_extra_state and set_extra_state")

    def set_extra_state(self, state) -> None:
        """Restore what ``get_extra_state`` returned, called by ``load_state_dict`` with the value under
        ``<path>._extra_state``, after the module's own variables are written and before its children's, as
        torch.nn's. A module whose class defines it expects that key (missing: a missing key); an ``_extra_state``
        key for one that does not is an unexpected key. From a file (``ud.load_weights``, ``ud.load``,
        ``load_checkpoint``) it gets the array the file holds, in the same order; an exception it raises (a version
        check) puts the model back as it was and leaves a checkpoint's optimizer, loader and generators unchanged.

        Args:
            state: the value ``get_extra_state`` returned when the state dict was made.
        """
        raise RuntimeError(f"{type(self).__name__}.set_extra_state is not defined: a subclass that keeps extra "
                           f"state defines get_extra_state and set_extra_state")

    def parameters(self, recurse: bool = True) -> list:
        """The parameters as native variables, each once (give them to an optimizer); ``recurse=False``: this
        module's own, as torch.nn's. A list, where torch's is a generator: ``ud.value_and_grad`` takes it as the
        list of variables to differentiate (``next(iter(model.parameters()))`` reads the first on both)."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalars in the parameters, or (``trainable_only``) in those not frozen by
        ``requires_grad_(False)``. Buffers are not counted (``ud.summary`` lists them apart)."""
        return sum(int(np.prod(tuple(p.shape), dtype=np.int64)) for p in self.parameters()
                   if not trainable_only or is_trainable(p))

    def optional_state_keys(self) -> set[str]:
        """Dotted names of the buffers a state dict may leave out (each keeps its value): those a class lists in
        ``_optional_buffers``, as BatchNorm's ``num_batches_tracked``, which files saved before unidl kept it
        lack (PyTorch likewise loads BatchNorm state dicts older than its counter)."""
        return {f"{path}.{name}" if path else name for path, module in self.named_modules(remove_duplicate=False)
                for name in type(module)._optional_buffers if name in module._buffers}

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, object]]:
        """(dotted name, native variable) for every buffer (BatchNorm's running statistics; the non-persistent
        ones too), as ``named_parameters`` lists the parameters."""
        return self._named_variables("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator:
        """The buffers as native variables (see ``named_buffers``), each once."""
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients ``backward()`` left on this module's parameters, as ``torch.nn.Module.zero_grad`` (to
        None, or to zeros with ``set_to_none=False``); a no-op on the backends that store none (their gradients
        are returned, not kept), as ``optimizer.zero_grad()``."""
        self._backend.clear_gradients(self.parameters(), set_to_none=bool(set_to_none))

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze every parameter of this module and those below it, as PyTorch's
        ``Module.requires_grad_``: ``train_step``, ``fit``, ``value_and_grad`` and every optimizer leave a
        frozen parameter (and its optimizer state) exactly as it is, on every backend. Setting
        ``param.requires_grad = False`` on one parameter does the same. ``requires_grad`` is True or False, as
        torch's (``None`` froze, ``"False"`` unfroze)."""
        requires_grad = arguments.boolean(f"{type(self).__name__}.requires_grad_", "requires_grad", requires_grad)
        for parameter in self.parameters():
            self._backend.set_requires_grad(parameter, requires_grad)
        return self

    def train(self, mode: bool = True) -> "Module":
        """Training mode (batch statistics, dropout on) for this module and all below it: each child's own
        ``train`` is called, as torch.nn's (a backbone whose ``train`` keeps its BatchNorm in eval mode keeps it
        there). ``mode`` is True or False (``"False"`` was true)."""
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"{type(self).__name__}.train: mode must be True or False, got {mode!r}")
        object.__setattr__(self, "training", bool(mode))
        for child in self.children():
            child.train(mode)
        _modes_changed()
        return self

    def eval(self) -> "Module":
        """Evaluation mode (running statistics, dropout off)."""
        return self.train(False)

    @property
    def backend(self) -> str:
        """Name of the backend this module is bound to."""
        return self._backend.name

    @property
    def native(self):
        """The framework's own model object over the same variables (``torch.nn.Module``,
        ``tf.Module``, ``keras.Model``), built on first access."""
        if self._native is None:
            object.__setattr__(self, "_native", self._backend.native_module(self))
        return self._native

    # ---- placement (unidl/nn/placement.py) -----------------------------------
    def to(self, *args, **kwargs) -> "Module":
        """This module, where its variables already are on the device and of the floating dtype asked for, as
        ``torch.nn.Module.to`` is called (``to(device)``, ``to(dtype)``, ``to(device, dtype)``, ``to(tensor)``):
        ``model = model.to(device)`` runs unchanged. Anywhere else a ``ModelPlacementError``: unidl places and types
        variables when it builds them (build the model under ``ud.use_device``/``ud.use_dtype``); a device the
        backend does not see is a ``DeviceUnavailableError`` listing those it sees."""
        return placement.moved(self, *placement.requested(type(self).__name__, self._backend, args, kwargs), "to()")

    def cpu(self) -> "Module":
        """``to("cpu")``."""
        return placement.moved(self, "cpu", None, "cpu()")

    def cuda(self, device=None) -> "Module":
        """``to("cuda")`` (``cuda:N`` with ``device=N``)."""
        index = arguments.integer(device)  # (a NumPy integer too; a device object or string as it is)
        device = "cuda" if device is None else f"cuda:{index}" if index is not None else str(device)
        return placement.moved(self, device, None, "cuda()")

    def float(self) -> "Module":
        """``to(float32)``."""
        return placement.moved(self, None, "float32", "float()")

    def double(self) -> "Module":
        """``to(float64)``."""
        return placement.moved(self, None, "float64", "double()")

    def half(self) -> "Module":
        """``to(float16)``: float16 compute is ``fit(..., precision='16-mixed')``'s (see ``to``)."""
        return placement.moved(self, None, "float16", "half()")

    def bfloat16(self) -> "Module":
        """``to(bfloat16)``: bfloat16 compute is ``fit(..., precision='bf16-mixed')``'s (see ``to``)."""
        return placement.moved(self, None, "bfloat16", "bfloat16()")

    # ---- state -------------------------------------------------------------
    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        """Parameters and persistent buffers as NumPy arrays in the canonical layout, keyed by dotted name. The
        arrays are copies on every backend, where torch's share the tensors' memory: writing into one leaves the
        model as it is (``load_state_dict`` writes), and a state dict kept aside (the best weights so far) does
        not follow training. As torch.nn's: ``prefix`` starts every key (``"encoder."``), ``keep_vars=True`` gives
        the native variables themselves instead of copies, and ``destination`` (a mapping) receives the entries
        and is returned. A module that defines ``get_extra_state`` adds what it returns under
        ``<path>._extra_state``, after its own parameters and buffers, as torch.nn's. Each module's state-dict
        pre-hooks (``register_state_dict_pre_hook``) run before it saves anything, and its post-hooks
        (``register_state_dict_post_hook``) once it and its children are saved, as torch's."""
        if not isinstance(prefix, str):
            raise TypeError(f"{type(self).__name__}.state_dict: prefix must be a string, got {type(prefix).__name__}")
        keep_vars = arguments.boolean(f"{type(self).__name__}.state_dict", "keep_vars", keep_vars)
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()
        self._save_state(destination, prefix, keep_vars, (lambda variable: variable) if keep_vars else
                         self._backend.to_numpy)
        return destination

    def _save_state(self, destination, prefix: str, keep_vars: bool, to_numpy) -> None:
        """``state_dict``'s walk, torch's: this module's pre-hooks, its parameters, persistent buffers and extra
        state, its children's (each module under every name), then its post-hooks."""
        local_metadata = {"version": self._version}
        if hasattr(destination, "_metadata"):
            destination._metadata[prefix[:-1]] = local_metadata
        for hook, _ in tuple(self.__dict__.get("_state_dict_pre_hooks", {}).values()):
            hook(self, prefix, keep_vars)
        left_out = self.__dict__.get("_non_persistent", ())
        for name, value in itertools.chain(self._parameters.items(), self._buffers.items()):
            if value is not None and name not in left_out:
                destination[prefix + name] = to_numpy(value)
        if type(self).get_extra_state is not Module.get_extra_state:
            destination[prefix + EXTRA_STATE_KEY] = self.get_extra_state()
        for name, child in self._modules.items():
            if child is not None:
                child._save_state(destination, f"{prefix}{name}.", keep_vars, to_numpy)
        for hook, _ in tuple(self.__dict__.get("_state_dict_post_hooks", {}).values()):
            if hook(self, destination, prefix, local_metadata) is not None:
                raise RuntimeError("state_dict post-hook must return None")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False) -> IncompatibleKeys:
        """Copy values from a ``state_dict()`` (from any backend) into this module's variables.

        With ``strict`` (the default) missing keys, unexpected keys and shape mismatches are all
        reported in one ``StateDictError``; without it, the matching entries load and the
        rest are returned as torch's ``load_state_dict`` returns them, ``(missing_keys, unexpected_keys)``
        (``IncompatibleKeys``). Shape mismatches are always an error. ``state_dict`` is a mapping (anything else
        is torch's ``TypeError``). ``assign`` is torch's default, False, only: the values are written into the
        module's own variables, which an optimizer made before the load goes on training; ``assign=True``
        (torch puts the state dict's tensors in their place) is a ``TypeError`` on every backend.

        Every value is checked before the first is written (after the load pre-hooks, which may change the state
        dict: ``register_load_state_dict_pre_hook``). The modules load in torch's order, each its own parameters,
        buffers and extra state (``set_extra_state``), then its children: a ``set_extra_state`` that reads its own
        weight sees the loaded one, one that reads a child's weight the weight before the load. Then the load
        post-hooks run (``register_load_state_dict_post_hook``), and a strict load checks the keys they left. Where
        ``set_extra_state`` raises (the user's version check) or that check fails, every variable and extra state
        is put back as it was before the load, bit for bit, and the error is re-raised (torch leaves the model half
        loaded). To allow that, a model with extra state or load post-hooks is copied to the host before the load;
        a model without pays nothing.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}: "
                            f"{type(self).__name__}.load_state_dict takes a mapping of names to arrays or tensors, "
                            f"as state_dict() gives")
        if assign:  # (torch.nn's test: a falsy value is the default)
            raise TypeError(f"{type(self).__name__}.load_state_dict: assign={assign!r} is not supported, only "
                            f"assign=False (torch's default): unidl writes the values into the module's own "
                            f"variables on every backend; to load another dtype, build the model under "
                            f"ud.use_dtype and load into it")
        found = loading.walk(self, state_dict)
        own = OrderedDict((key, value) for key, value in found.entries.items() if not isinstance(value, ExtraState))
        values, mismatched, unreadable, wrong_kind = _loadable_values(own, found.found)
        problems = []
        if unreadable:
            problems.append("values that are not real numbers: " + "; ".join(unreadable))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if wrong_kind:
            problems.append("dtype mismatches: " + "; ".join(wrong_kind))
        if found.errors:
            problems.append("errors of load_state_dict pre-hooks: " + "; ".join(map(str, found.errors)))
        post_hooks = loading.has_hooks(self, "_load_state_dict_post_hooks")
        if problems or not post_hooks:  # (post-hooks may clear the keys: those are checked after them)
            problems += _key_problems(strict, found.missing, found.unexpected, found, state_dict)
        if problems:
            raise StateDictError(f"cannot load state dict into {type(self).__name__}: " + " | ".join(problems))
        with restored_on_failure(self, whole=post_hooks):  # (set_extra_state, or a post-hook, may refuse the load)
            for key, entry in found.entries.items():  # (torch's order: a module's own entries, then its children's)
                if key not in found.found:
                    continue
                if isinstance(entry, ExtraState):
                    entry.module.set_extra_state(found.found[key])
                else:
                    self._backend.assign(entry, _as_loaded(values[key]))
            if not post_hooks:
                return IncompatibleKeys(found.missing, found.unexpected)
            keys = loading.run_post_hooks(found)
            problems = _key_problems(strict, keys.missing_keys, keys.unexpected_keys, found, state_dict)
            if problems:
                raise StateDictError(f"cannot load state dict into {type(self).__name__}: " + " | ".join(problems))
        return keys

    def load_weights(self, path, strict: bool = True, *, allow_pickle: bool = False,
                     staged: bool = True) -> IncompatibleKeys:
        """Load weights saved by ``unidl.save`` (or a checkpoint) from ``path``; see ``unidl.load_weights``."""
        from unidl.serialization import load_weights

        return load_weights(self, path, strict, allow_pickle=allow_pickle, staged=staged)

    # ---- display -----------------------------------------------------------
    def describe(self) -> str:
        """The layer as errors name it: its repr line and its dotted path inside the model, if any."""
        parts, node = [], self
        while node._parent is not None:
            parent = node._parent[0]()
            if parent is None:
                break
            parts.append(node._parent[1])
            node = parent
        head = f"{type(self).__name__}({self.extra_repr()})"
        return f"{head} at '{'.'.join(reversed(parts))}'" if parts else head

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        """As torch.nn's: ``extra_repr`` on the header line when it is one line and there are no children, else
        each of its lines and each child on a line of its own, indented."""
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        lines = extra_lines + [f"({name}): " + repr(child).replace("\n", "\n  ")
                               for name, child in self._modules.items()]
        if len(lines) == 1 and extra_lines:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}(" + "".join(f"\n  {line}" for line in lines) + ("\n)" if lines else ")")
