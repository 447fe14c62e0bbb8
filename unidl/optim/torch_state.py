"""``torch.optim``'s ``state_dict`` in unidl's format, so that a PyTorch run's optimizer resumes on any backend.

``Optimizer.load_state_dict`` converts such a state here, then checks and loads it as one of its own (nothing
changes unless all of it fits). torch.optim numbers the parameters over its groups in order and keeps the slot
names unidl uses (``exp_avg``, ``momentum_buffer``, ``sum`` ...) in torch's layout, unidl's canonical one.
"""

from __future__ import annotations

import numpy as np

from unidl.errors import CheckpointStateError


def is_torch_state(state) -> bool:
    """Whether ``state`` has ``torch.optim.Optimizer.state_dict()``'s keys (``'state'`` and ``'param_groups'``)."""
    return isinstance(state, dict) and set(state) == {"state", "param_groups"}


def _number(value):
    """A 0-d tensor or array (torch's ``step``, a tensor ``lr``) as a Python number; a list (``betas``) as a tuple."""
    from unidl.tensors import to_numpy

    if isinstance(value, (list, tuple)):
        return tuple(_number(v) for v in value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    array = to_numpy(value)
    return array.item() if array.ndim == 0 else value


def another_class(owner: str, group) -> str:
    """The end of an error for a ``torch.optim`` state that is not ``owner``'s: which of torch.optim's classes unidl
    has wrote a group with ``group``'s keys (the one whose ``torch_group_keys`` it holds the most of: RAdam's
    group holds Adamax's keys too), as far as the keys tell."""
    import unidl.optim

    keys = set(group) if isinstance(group, dict) else set()
    classes = [getattr(unidl.optim, name) for name in unidl.optim.__all__ if name not in ("Optimizer", "lr_scheduler")]
    fits = {cls.__name__: len(cls.torch_group_keys) for cls in classes
            if cls.__name__ != owner and set(cls.torch_group_keys) <= keys
            and keys <= {"params", "lr", "initial_lr", *cls.torch_options, *cls.torch_group_keys, "maximize",
                         "decoupled_weight_decay"}}
    best = [name for name, count in fits.items() if count == max(fits.values())]
    guess = f" (its group's keys are torch.optim.{' or torch.optim.'.join(best)}'s)" if best else ""
    return f"a state of another optimizer class than {owner}{guess}?"


def _group_entry(optimizer, index: int, group: dict) -> dict:
    """Param group ``index``'s entry of unidl's state (``{"lr", "size", **options}``) from torch's group ``group``:
    its options unidl's class has; torch's kernel choices (``foreach``, ``fused`` ...) at their neutral values
    only; an option fixed once built (``amsgrad``, ``centered``, ``dampening`` ...) at the value built."""
    from unidl.optim.optimizer import torch_option
    from unidl.optim.param_groups import FIXED_OPTIONS

    owner, ours = type(optimizer).__name__, optimizer.param_groups[index]
    missing = [key for key in type(optimizer).torch_group_keys if key not in group]
    if missing:
        raise CheckpointStateError(f"torch.optim param group {index} has no {', '.join(map(repr, missing))}, which "
                                   f"torch.optim.{owner} writes in every group: {another_class(owner, group)}")
    entry = {"size": len(group["params"])}
    for key, value in group.items():
        if key in ("params", "initial_lr"):
            continue
        value = _number(value)
        if key == "lr":
            entry["lr"] = value
        elif key in type(optimizer).torch_options:
            try:
                torch_option(type(optimizer), key, value)
            except TypeError as error:
                raise CheckpointStateError(f"torch.optim param group {index}: {error}") from None
        elif key not in ours:
            options = ", ".join(k for k in ours if k != "params")
            raise CheckpointStateError(f"torch.optim param group {index} has option {key!r}, which unidl's {owner} "
                                       f"has not ({options}): {another_class(owner, group)}")
        elif key in FIXED_OPTIONS:
            if value != ours[key]:
                raise CheckpointStateError(f"torch.optim param group {index} has {key}={value!r}; this {owner}'s "
                                           f"group {index} was built with {key}={ours[key]!r}, fixed once built: "
                                           f"build it with {key}={value!r} to load this state")
        else:
            entry[key] = value
    return entry


def _slot_values(optimizer, group: int, position: int, key, saved: dict, shape: tuple) -> dict:
    """One parameter's unidl slots from its torch.optim state ``saved`` (``{}`` before its first step): each slot
    torch holds as it is (one it keeps as a number, ``scalar_slots``, 0-d as unidl keeps it), one torch has
    not (yet: a ``momentum_buffer`` None) at its initial value, and SGD's
    ``momentum_started`` 1 where torch's buffer exists (torch's dampened buffer starts as the gradient)."""
    from unidl import config
    from unidl.tensors import to_numpy

    values = {}
    for name in optimizer.slots:
        if name == "momentum_started":
            values[name] = np.full(shape, float(saved.get("momentum_buffer") is not None), config.get_dtype())
        elif saved.get(name) is None:
            values[name] = np.full(optimizer.slot_shape(name, shape), optimizer.initial_slot_value,
                                   optimizer.slot_dtype(name, config.get_dtype()))
        else:
            values[name] = to_numpy(saved[name])
            if tuple(values[name].shape) != optimizer.slot_shape(name, shape):
                raise CheckpointStateError(f"torch.optim param group {group}, parameter {position} (index {key}): "
                                           f"its {name!r} has shape {tuple(values[name].shape)}, this "
                                           f"{type(optimizer).__name__}'s parameter has shape {shape} "
                                           f"(its {name!r} {optimizer.slot_shape(name, shape)})")
    return values


def unidl_state(optimizer, state: dict) -> dict:
    """``state`` (``torch.optim``'s ``state_dict()``, tensors as torch tensors or NumPy arrays) as
    ``optimizer.state_dict()`` would hold it: group ``i``'s ``j``-th parameter is the unidl optimizer's group ``i``'s
    ``j``-th; each parameter's ``step`` its count of updates (``param_steps``), the largest the optimizer's
    ``step`` (0 for SGD, whose torch state counts none); each group's ``lr`` and options, and ``initial_lr`` (a
    schedule's) as ``initial_lrs``. ``CheckpointStateError`` for what it cannot honour: another number of groups or
    of parameters in one, another shape, state or an option of another optimizer class, an option unidl does not
    implement or one fixed at another value."""
    owner = type(optimizer).__name__
    groups, per_parameter = state["param_groups"], state["state"]
    if (not isinstance(groups, (list, tuple)) or not isinstance(per_parameter, dict)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), (list, tuple)) for g in groups)):
        raise CheckpointStateError(f"{owner}: a torch.optim state_dict holds 'param_groups', a list of dicts each "
                                   f"with 'params' (parameter indices), and 'state', a dict by parameter index; got "
                                   f"{type(groups).__name__} and {type(per_parameter).__name__}")
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointStateError(f"{owner}: the torch.optim state has {len(groups)} param groups, this optimizer "
                                   f"{len(optimizer.param_groups)}")
    indices = [key for group in groups for key in group["params"]]
    if set(per_parameter) - set(indices):  # (keys of a JSON copy are strings: their state would be left out)
        raise CheckpointStateError(f"{owner}: the torch.optim state holds state for parameters "
                                   f"{sorted(map(repr, set(per_parameter) - set(indices)))}, which no param group "
                                   f"lists (its groups list {indices})")
    known = {*type(optimizer).slots, "step"}
    entries, slots, counts = [], [], []
    for index, (group, ours) in enumerate(zip(groups, optimizer.param_groups)):
        if len(group["params"]) != len(ours["params"]):
            raise CheckpointStateError(f"{owner}: torch.optim param group {index} holds {len(group['params'])} "
                                       f"parameters, this optimizer's group {index} {len(ours['params'])}")
        entries.append(_group_entry(optimizer, index, group))
        for position, (key, param) in enumerate(zip(group["params"], ours["params"])):
            saved = per_parameter.get(key, {})
            if not isinstance(saved, dict) or set(saved) - known:
                found = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
                raise CheckpointStateError(f"{owner}: torch.optim state of parameter {key} (param group {index}) "
                                           f"holds {found}; torch.optim.{owner}'s holds some of {sorted(known)}: "
                                           f"{another_class(owner, group)}")
            slots.append(_slot_values(optimizer, index, position, key, saved, tuple(param.shape)))
            counts.append(int(round(float(_number(saved.get("step", 0))))))
            lacking = [name for name in optimizer.torch_slots(index) if saved.get(name) is None]
            if counts[-1] > 0 and lacking:
                raise CheckpointStateError(f"{owner}: torch.optim state of parameter {key} (param group {index}) "
                                           f"has step {counts[-1]} but no {', '.join(map(repr, lacking))}, which "
                                           f"torch.optim.{owner} keeps for every parameter it updated: "
                                           f"{another_class(owner, group)}")
    converted = {"class": owner, "lr": entries[0].get("lr"), "step": max(counts), "slots": slots,
                 "param_groups": entries}
    if optimizer.uses_step:
        converted["param_steps"] = counts
    if all("initial_lr" in group for group in groups):
        converted["initial_lrs"] = [_number(group["initial_lr"]) for group in groups]
    return converted
