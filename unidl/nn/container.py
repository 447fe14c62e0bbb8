"""Containers: ``Sequential`` (modules applied in turn), ``ModuleList`` and ``ModuleDict`` (modules held
and registered, called by the user's own ``forward``), with PyTorch's indexing, names and ``state_dict`` keys."""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Iterable, Iterator, Mapping

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
