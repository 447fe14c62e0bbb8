"""How ``load_state_dict`` walks a module tree, torch.nn's way: each module in turn (depth first, a module before
its children) runs its load pre-hooks on its part of the state dict, then takes its own entries; after the
writes, each module's load post-hooks run once its children are loaded. unidl walks the tree before writing
anything (all or nothing), so the walk notes what torch's hooks would see and replays the post-hooks after."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from unidl.nn.incompatible_keys import IncompatibleKeys


@dataclass
class Walk:
    """What the walk found: ``entries`` (key: variable or ``ExtraState``, torch's load order), ``found`` (key:
    value for the entries the state dict holds, after the pre-hooks), ``missing``/``unexpected``/``errors`` (torch's
    lists, the pre-hooks' additions too) and ``ends`` (each module where its subtree ends, with the lists' lengths
    then: where torch calls its post-hooks)."""

    entries: OrderedDict = field(default_factory=OrderedDict)
    found: OrderedDict = field(default_factory=OrderedDict)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    ends: list = field(default_factory=list)


def has_hooks(model, table: str) -> bool:
    """Whether a module of ``model``'s tree has hooks in ``table`` (``_load_state_dict_pre_hooks``, ...)."""
    return any(module.__dict__.get(table) for module in model.modules())


def walk(model, state_dict) -> Walk:
    """Walk ``model`` as torch's ``load_state_dict`` does, writing nothing: ``hook(module, state_dict, prefix,
    local_metadata, strict, missing_keys, unexpected_keys, error_msgs)`` of each module's load pre-hooks on a copy
    of the state dict (a child's: its parent's after the parent's hooks, its own keys only, so that a hook may
    rename or drop them), then its parameters, persistent buffers and extra state, then its children. ``strict`` is
    True whatever the load's, as torch passes it (the keys are collected either way; the load decides). A key is
    unexpected where the module it names (torch's rule: the first part after the prefix a child, else its own) has
    no such entry; a child set to None takes every key under its name, as torch's. Each module reads only the keys
    under its prefix (its parent hands them on, sorted by child), and a copy is made only for a module with
    pre-hooks: a model without them costs one pass per level of depth, not a copy of the dict per module."""
    metadata = getattr(state_dict, "_metadata", None)
    result = Walk()

    def visit(module, keys, source, prefix):
        hooks = module.__dict__.get("_load_state_dict_pre_hooks")
        if hooks:  # (the hooks' own copy, which they may change: a rename is seen from here down)
            source = OrderedDict((key, source[key]) for key in keys)
            local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
            for hook, _ in tuple(hooks.values()):
                hook(module, source, prefix, local_metadata, True, result.missing, result.unexpected, result.errors)
            keys = list(source)
        names = _take_own(module, prefix, source, result)
        children = {}
        for key in keys:
            if not isinstance(key, str):  # (the top's only: no child is handed one)
                result.unexpected.append(key)
                continue
            head, dot, _ = key[len(prefix):].partition(".")
            if dot and head in module._modules:
                children.setdefault(head, []).append(key)
            elif dot or head not in names:
                result.unexpected.append(key)
        for name, child in module._modules.items():
            if child is not None:
                visit(child, children.get(name, ()), source, f"{prefix}{name}.")
        result.ends.append((module, len(result.missing), len(result.unexpected)))

    state_dict = OrderedDict(state_dict)
    visit(model, list(state_dict), state_dict, "")
    return result


def _take_own(module, prefix: str, source, result: Walk) -> set:
    """Note ``module``'s parameters, persistent buffers and extra state (torch's order) in ``result``: each an
    entry, found in ``source`` or missing (unless optional). Returns their names."""
    from unidl.nn.module import EXTRA_STATE_KEY, ExtraState, Module

    left_out = module.__dict__.get("_non_persistent", ())
    own = [(name, value) for name, value in module._parameters.items() if value is not None]
    own += [(name, value) for name, value in module._buffers.items() if value is not None and name not in left_out]
    if type(module).set_extra_state is not Module.set_extra_state:
        own.append((EXTRA_STATE_KEY, ExtraState(module)))
    for name, entry in own:
        key = prefix + name
        result.entries[key] = entry
        if key in source:
            result.found[key] = source[key]
        elif name not in type(module)._optional_buffers:
            result.missing.append(key)
    return {name for name, _ in own}


def key_problems(strict: bool, missing: list, unexpected: list, entries: dict, shapes: dict) -> list[str]:
    """A strict load's complaints about ``missing`` and ``unexpected`` keys (``walk``'s, or its post-hooks'), each
    with what it should hold (``entries``: ``Walk.entries``) or holds (``shapes``: an unexpected key's shape; a key a
    hook added may be in neither). One wording for ``load_state_dict`` and the file loads."""
    from unidl.nn.module import ExtraState

    if not strict:
        return []
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(
            f"{k} ({ExtraState.expected(entries[k])})" if k in entries else k for k in missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(
            f"{k} (shape {tuple(shapes[k])})" if k in shapes else k for k in unexpected))
    return problems


def run_post_hooks(found: Walk) -> IncompatibleKeys:
    """Call each module's load post-hooks, ``hook(module, incompatible_keys)``, where torch's walk would (a module
    after its children), with the keys torch's lists hold there; a hook may change the lists in place (clear them:
    a strict load then does not raise), as torch's. Returns the keys as the hooks left them."""
    keys, seen_missing, seen_unexpected = IncompatibleKeys([], []), 0, 0
    for module, missing, unexpected in found.ends:
        keys.missing_keys.extend(found.missing[seen_missing:missing])
        keys.unexpected_keys.extend(found.unexpected[seen_unexpected:unexpected])
        seen_missing, seen_unexpected = missing, unexpected
        for hook, _ in tuple(module.__dict__.get("_load_state_dict_post_hooks", {}).values()):
            if hook(module, keys) is not None:
                raise AssertionError("Hooks registered with ``register_load_state_dict_post_hook`` are not expected "
                                     "to return new values, if incompatible_keys need to be modified, it should be "
                                     "done inplace.")
    return keys
