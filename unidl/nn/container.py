"""Containers: ``Sequential`` (modules applied in turn), ``ModuleList`` and ``ModuleDict`` (modules held
and registered, called by the user's own ``forward``), ``ParameterList`` and ``ParameterDict`` (parameters held and
registered), with PyTorch's indexing, names and ``state_dict`` keys."""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Iterable, Iterator, Mapping

from unidl.dtype_kinds import dtype_name
from unidl.errors import MissingKeyError
from unidl.nn.module import Module


def _check_module(owner: str, where, module) -> Module:
    if not isinstance(module, Module):
        raise TypeError(f"{owner} item {where} must be a unidl.nn.Module, got {type(module).__name__}")
    return module


class _IndexedModules(Module):
    """Children named '0', '1', ... addressed by position: indexing (negative too), slicing (a new container
    over the same modules), assignment, deletion (the rest renumbered, as in PyTorch), ``append``,
    ``extend``, ``insert``, ``pop``, ``len`` and iteration."""

    def _index(self, index) -> int:
        index = operator.index(index)
        size = len(self._modules)
        if not -size <= index < size:
            raise IndexError(f"{type(self).__name__} index {index} is out of range for {size} modules")
        return index % size

    def _renumber(self, modules: list[Module]) -> None:
        """Hold exactly ``modules``, named '0', '1', ... in order; each is checked before anything changes."""
        for index, module in enumerate(modules):
            _check_module(type(self).__name__, index, module)
        for name in list(self._modules):
            delattr(self, name)
        for index, module in enumerate(modules):
            self.add_module(str(index), module)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(*list(self._modules.values())[index])
        return list(self._modules.values())[self._index(index)]

    def __setitem__(self, index, module) -> None:
        if isinstance(index, slice):  # (a bad item emptied a ModuleList, or cut a Sequential short, then raised)
            raise TypeError(f"{type(self).__name__} indices must be integers, not slice: torch.nn's containers "
                            f"have no slice assignment; assign one module at a time (seq[i] = module), or del "
                            f"seq[a:b] and insert")
        name = list(self._modules)[self._index(index)]
        setattr(self, name, _check_module(type(self).__name__, index, module))

    def __delitem__(self, index) -> None:
        modules = list(self._modules.values())
        del modules[index if isinstance(index, slice) else self._index(index)]
        self._renumber(modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def append(self, module: Module):
        """Add ``module`` at the end; returns the container."""
        self.add_module(str(len(self._modules)), _check_module(type(self).__name__, len(self._modules), module))
        return self

    def extend(self, modules: Iterable[Module]):
        """Add each of ``modules`` at the end; returns the container. Each is checked before the first is added."""
        modules = list(modules)
        for index, module in enumerate(modules, len(self._modules)):
            _check_module(type(self).__name__, index, module)
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Put ``module`` before position ``index``, as a list's ``insert``."""
        modules = list(self._modules.values())
        modules.insert(index, _check_module(type(self).__name__, index, module))
        self._renumber(modules)

    def pop(self, index: int = -1) -> Module:
        """Remove and return the module at ``index``."""
        module = self[index]
        del self[index]
        return module


class Sequential(_IndexedModules):
    """Chain of modules: ``Sequential(a, b, c)(x) == c(b(a(x)))``.

    Children are named '0', '1', ... (so ``state_dict()`` keys are ``'0.weight'``, as in PyTorch), or
    by the keys of an ``OrderedDict`` given as the only argument. ``seq[i]``, ``seq[i] = layer`` (the
    new layer takes the old one's name and place), ``seq[a:b]`` (a Sequential over the same layers),
    ``del seq[i]``, ``append``, ``insert``, ``len`` and iteration work as in PyTorch.

    Example::

        model.classifier[-1] = ud.nn.Linear(84, 2)     # a new head
    """

    _passes_inputs_on = True  # (its first module, maybe a user's, takes the arguments as given)

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                self.add_module(name, _check_module("Sequential", repr(name), layer))
            return
        for index, layer in enumerate(layers):
            self.add_module(str(index), _check_module("Sequential", index, layer))

    def __getitem__(self, index):
        if isinstance(index, slice):  # keeps the names (an OrderedDict's keys too)
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)

    def insert(self, index: int, module: Module) -> "Sequential":
        """Put ``module`` before position ``index``; returns the Sequential, as torch.nn's (a ModuleList's
        ``insert`` returns None, as a list's)."""
        super().insert(index, module)
        return self

    def _repeats(self, times) -> int:
        """``times`` checked as torch.nn's ``Sequential * times``: an int (``TypeError``), positive (``ValueError``)."""
        if not isinstance(times, int) or isinstance(times, bool):
            raise TypeError(f"unsupported operand type(s) for *: Sequential and {type(times).__name__} "
                            f"(a positive int repeats it)")
        if times <= 0:
            raise ValueError(f"Non-positive multiplication factor {times} for Sequential")
        return times

    def _checked_sequential(self, other) -> "Sequential":
        if not isinstance(other, Sequential):
            raise ValueError(f"add operator supports only objects of Sequential class, but {type(other).__name__} "
                             f"is given")
        return other

    def __add__(self, other: "Sequential") -> "Sequential":
        """A new Sequential of this one's modules and then ``other``'s (the same modules), numbered from 0, as
        torch.nn's."""
        return Sequential(*self, *self._checked_sequential(other))

    def __iadd__(self, other: "Sequential") -> "Sequential":
        """``other``'s modules appended, as torch.nn's."""
        return self.extend(list(self._checked_sequential(other)))

    def __mul__(self, times: int) -> "Sequential":
        """A new Sequential of this one's modules ``times`` over (the same modules), as torch.nn's."""
        return Sequential(*list(self) * self._repeats(times))

    __rmul__ = __mul__

    def __imul__(self, times: int) -> "Sequential":
        """This one's modules repeated ``times`` over in place, as torch.nn's."""
        return self.extend(list(self) * (self._repeats(times) - 1))

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


class ModuleList(_IndexedModules):
    """A list of modules, registered so that their parameters belong to the owner (``layers.1.bias``).

    It has no ``forward``: the owner's ``forward`` calls the modules. Indexing, slicing (a ModuleList
    over the same modules), assignment, ``del``, ``append``, ``extend``, ``insert``, ``+=``, ``len``
    and iteration work as for a Python list.

    Example::

        self.layers = ud.nn.ModuleList(ud.nn.Linear(8, 8) for _ in range(3))
    """

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __repr__(self):
        """As torch.nn's: runs of equal modules collapsed, ``(0-2): 3 x Linear(...)``."""
        runs = []  # [first index, last index, repr]
        for index, module in enumerate(self):
            text = repr(module)
            if runs and runs[-1][2] == text:
                runs[-1][1] = index
            else:
                runs.append([index, index, text])
        if not runs:
            return f"{type(self).__name__}()"
        lines = [(f"({first}): {text}" if first == last else f"({first}-{last}): {last - first + 1} x {text}")
                 .replace("\n", "\n  ") for first, last, text in runs]
        return f"{type(self).__name__}(" + "".join(f"\n  {line}" for line in lines) + "\n)"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModuleList(list(self._modules.values())[index])
        return super().__getitem__(index)

    def __iadd__(self, modules: Iterable[Module]):
        return self.extend(modules)

    def __add__(self, modules: Iterable[Module]) -> "ModuleList":
        """A new ModuleList of this one's modules and then those of ``modules`` (the same modules), as torch.nn's."""
        return ModuleList([*self, *modules])

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward: call its modules from the owner's forward")


class ModuleDict(Module):
    """A dict of modules by name, registered so that their parameters belong to the owner
    (``heads.cls.weight``), in insertion order. ``md[name]``, ``md[name] = module``, ``del md[name]``,
    ``in``, ``len``, iteration over the names, ``keys()``, ``values()``, ``items()``, ``update()``,
    ``pop()`` and ``clear()`` work as for a dict. It has no ``forward``."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, name: str) -> Module:
        if name not in self._modules:
            raise KeyError(f"ModuleDict has no module {name!r}; it holds {list(self._modules)}")
        return self._modules[name]

    def __setitem__(self, name: str, module: Module) -> None:
        self.add_module(name, _check_module("ModuleDict", repr(name), module))

    def __delitem__(self, name: str) -> None:
        self[name]  # noqa: B018  (the KeyError naming what there is)
        delattr(self, name)

    def __contains__(self, name) -> bool:
        return name in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._modules))

    def keys(self):
        return list(self._modules.keys())

    def values(self):
        return list(self._modules.values())

    def items(self):
        return list(self._modules.items())

    def update(self, modules) -> None:
        """Add or replace modules from a mapping or from (name, module) pairs."""
        pairs = modules.items() if isinstance(modules, (Mapping, ModuleDict)) else modules
        for entry in pairs:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise TypeError(f"ModuleDict.update needs a mapping or (name, module) pairs, got {entry!r}")
            self[entry[0]] = entry[1]

    def pop(self, name: str) -> Module:
        module = self[name]
        del self[name]
        return module

    def clear(self) -> None:
        for name in list(self._modules):
            delattr(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict has no forward: call its modules from the owner's forward")


def _held(owner: Module, value):
    """``value`` as a ``ParameterList``/``ParameterDict`` holds it, torch's rule: a tensor that is not a parameter of
    the owner's backend becomes one (``owner.parameter``: a copy, in unidl's float dtype; a NumPy array and another
    framework's tensor too), a parameter is held as it is, and anything else (a number, a module) as an attribute."""
    if owner._backend.is_parameter(value) or isinstance(value, type) or not (hasattr(value, "shape")
                                                                             and hasattr(value, "dtype")):
        return value
    return owner.parameter(value)


def _describe_held(module: Module, entries) -> str:
    """torch's ``extra_repr`` of a ``ParameterList``/``ParameterDict``: a line per (key, value) of ``entries``."""
    lines = []
    for key, value in entries:
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            kind = "Parameter" if module._backend.is_parameter(value) else "Tensor"
            device = module._backend.device_of(value)
            lines.append(f"  ({key}): {kind} containing: [{dtype_name(value.dtype)} of size "
                         f"{'x'.join(str(size) for size in value.shape)}{'' if device == 'cpu' else f' ({device})'}]")
        else:
            lines.append(f"  ({key}): Object of type: {type(value).__name__}")
    return "\n".join(lines)


class ParameterList(Module):
    """A list of parameters, registered so that they belong to the owner (``params.0``, ``params.1`` in
    ``parameters()``, ``named_parameters()`` and ``state_dict()``, as torch.nn's): optimizers, ``train_step`` and
    ``fit`` train them, and a ``torch.nn.ParameterList``'s state dict loads into it.

    As torch.nn's, an item that is a tensor but not a parameter becomes one: a tensor of this backend, a NumPy array
    or another framework's tensor is copied into a new parameter (``ud.nn.Parameter``'s rule: unidl's float dtype,
    the device in force; torch's shares the tensor's memory). A parameter (``ud.nn.Parameter(...)``,
    ``module.parameter(...)``) is held as it is; anything else (a number, a module) is kept as torch keeps it.
    Indexing (negative too), slicing (a new ParameterList over the same parameters), assignment, ``append``,
    ``extend``, ``+=``, ``len`` and iteration work as for a Python list; as torch's, items cannot be deleted and the
    list cannot be called.

    Args:
        values: the first items, an iterable (None: empty).

    Example::

        self.weights = ud.nn.ParameterList(ud.nn.Parameter(np.ones((4, 4), np.float32)) for _ in range(3))
    """

    def __init__(self, values: Iterable | None = None):
        super().__init__()
        self._size = 0
        if values is not None:
            self.extend(values)

    def _name(self, index) -> str:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range")
        return str(index % len(self))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(self[i] for i in range(*index.indices(len(self))))
        return getattr(self, self._name(index))

    def __setitem__(self, index, value) -> None:
        setattr(self, self._name(index), _held(self, value))

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator:
        return iter([self[i] for i in range(len(self))])

    def __iadd__(self, values: Iterable) -> "ParameterList":
        return self.extend(values)

    def append(self, value) -> "ParameterList":
        """Add ``value`` at the end (a tensor made a parameter, as the class says); returns the list.

        Args:
            value: a parameter, a tensor or array (made a parameter), or any other object (kept as it is).
        """
        setattr(self, str(len(self)), _held(self, value))
        self._size += 1  # (after the registration: one that raises leaves the list as it was)
        return self

    def extend(self, values: Iterable) -> "ParameterList":
        """Add each of ``values`` at the end; returns the list. A tensor or a non-iterable is torch's
        ``TypeError`` (a tensor is one item: ``append`` it).

        Args:
            values: an iterable of items, each as ``append`` takes it.
        """
        if not isinstance(values, Iterable) or hasattr(values, "shape"):
            raise TypeError(f"ParameterList.extend should be called with an iterable, but got "
                            f"{type(values).__name__}; append a single tensor or parameter")
        for value in values:
            self.append(value)
        return self

    def extra_repr(self) -> str:
        return _describe_held(self, enumerate(self))

    def __call__(self, *args, **kwargs):
        raise RuntimeError("ParameterList should not be called.")


class ParameterDict(Module):
    """A dict of parameters by name, registered so that they belong to the owner (``params.left`` in
    ``parameters()``, ``named_parameters()`` and ``state_dict()``, as torch.nn's), in insertion order: optimizers,
    ``train_step`` and ``fit`` train them, and a ``torch.nn.ParameterDict``'s state dict loads into it.

    Values are made parameters as ``ParameterList``'s items are. Keys are strings, without '.' and not the name of
    an attribute of the dict (``"keys"``), as torch's; ``pd[key]``, ``pd[key] = value``, ``del pd[key]``, ``in``,
    ``len``, iteration over the keys, ``keys()``, ``values()``, ``items()``, ``get``, ``setdefault``, ``pop``,
    ``popitem``, ``clear``, ``copy``, ``fromkeys``, ``update`` and ``|`` work as torch's (``update`` of a plain
    dict adds its keys in sorted order, as torch's; an ``OrderedDict``, a ``ParameterDict`` or pairs keep theirs).
    A missing key is a ``MissingKeyError``: a ``KeyError``, as a dict's, and torch's ``AttributeError``.

    Args:
        parameters: the first entries, a mapping or an iterable of (key, value) pairs (None: empty).

    Example::

        self.heads = ud.nn.ParameterDict({"left": np.zeros((5, 10), np.float32), "right": np.ones((5, 10), np.float32)})
    """

    def __init__(self, parameters=None):
        super().__init__()
        self._keys = {}
        if parameters is not None:
            self.update(parameters)

    def _checked_key(self, key) -> str:
        if not isinstance(key, str):
            raise TypeError(f"Index given to ParameterDict cannot be used as a key as it is not a string (type is "
                            f"'{type(key).__name__}')")
        return key

    def __getitem__(self, key: str):
        if self._checked_key(key) not in self._keys:
            raise MissingKeyError(f"ParameterDict has no key {key!r}; it holds {list(self._keys)}")
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        if self._checked_key(key) not in self._keys:
            self._check_new_name("ParameterDict[key] = value", key, self._parameters)
        setattr(self, key, _held(self, value))
        self._keys[key] = None  # (after the registration: one that raises leaves the dict as it was)

    def __delitem__(self, key: str) -> None:
        self[key]  # noqa: B018  (the KeyError naming what there is)
        del self._keys[key]
        delattr(self, key)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._keys))

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self._keys))

    def __contains__(self, key) -> bool:
        return key in self._keys

    def keys(self):
        return self._keys.keys()

    def items(self):
        return ((key, self[key]) for key in list(self._keys))

    def values(self):
        return (self[key] for key in list(self._keys))

    def get(self, key: str, default=None):
        """The value under ``key``, or ``default`` where there is none, as a dict's.

        Args:
            key: the name to look up.
            default: what to return where ``key`` is missing.
        """
        return self[key] if key in self else default

    def setdefault(self, key: str, default=None):
        """The value under ``key``, after adding ``default`` there (made a parameter where it is a tensor) where
        the key is missing, as a dict's.

        Args:
            key: the name to look up or add.
            default: the value to add where ``key`` is missing.
        """
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str):
        """Remove ``key`` and return its value; a missing key is a ``MissingKeyError``, as torch's.

        Args:
            key: the name to remove.
        """
        value = self[key]
        del self[key]
        return value

    def popitem(self) -> tuple:
        """Remove and return the last (key, value) added."""
        if not self._keys:
            raise KeyError("popitem(): ParameterDict is empty")
        key = next(reversed(self._keys))
        return key, self.pop(key)

    def clear(self) -> None:
        for key in list(self._keys):
            del self[key]

    def copy(self) -> "ParameterDict":
        """A new ParameterDict over the same parameters, in the same order."""
        return ParameterDict(OrderedDict(self.items()))

    def fromkeys(self, keys: Iterable[str], default=None) -> "ParameterDict":
        """A new ParameterDict with ``keys``, each holding ``default`` (made a parameter where it is a tensor).

        Args:
            keys: the names of the new dict, in order.
            default: the value each key holds: a parameter is shared by every key, a tensor or array is made a
                parameter of its own for each.
        """
        return ParameterDict((key, default) for key in keys)

    def update(self, parameters) -> None:
        """Add or replace entries from a mapping or from (key, value) pairs: torch's order (a plain dict's keys
        sorted) and torch's errors (a non-iterable, or an item that is no pair: ``TypeError``, a sequence of
        another length: ``ValueError``).

        Args:
            parameters: a mapping of names to values, or an iterable of (name, value) pairs.
        """
        if not isinstance(parameters, Iterable):
            raise TypeError(f"ParametersDict.update should be called with an iterable of key/value pairs, but got "
                            f"{type(parameters).__name__}")
        if isinstance(parameters, (OrderedDict, ParameterDict)):
            pairs = list(parameters.items())
        elif isinstance(parameters, Mapping):
            pairs = sorted(parameters.items())
        else:
            pairs = list(parameters)
            for index, pair in enumerate(pairs):
                if not isinstance(pair, Iterable):
                    raise TypeError(f"ParameterDict update sequence element #{index} should be Iterable; is "
                                    f"{type(pair).__name__}")
                if len(pair) != 2:
                    raise ValueError(f"ParameterDict update sequence element #{index} has length {len(pair)}; 2 is "
                                     f"required")
        for key, value in pairs:
            self[key] = value

    def __or__(self, other: "ParameterDict") -> "ParameterDict":
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: "ParameterDict") -> "ParameterDict":
        merged = other.copy()
        merged.update(self)
        return merged

    def __ior__(self, other: "ParameterDict") -> "ParameterDict":
        self.update(other)
        return self

    def extra_repr(self) -> str:
        return _describe_held(self, self.items())

    def __call__(self, *args, **kwargs):
        raise RuntimeError("ParameterDict should not be called.")
