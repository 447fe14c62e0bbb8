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
    of the state dict (a child's: its parent's after the parent's hooks, its own keys only, so that a hook may rename
    or drop them), then its parameters, persistent buffers and extra state, then its children. ``strict`` is True
    whatever the load's, as torch passes it (the keys are collected either way; the load decides). A key is unexpected
    where the module it names (torch's rule: the first part after the prefix a child, else its own) has no such
    entry."""
    from unidl.nn.module import EXTRA_STATE_KEY, ExtraState, Module

    metadata = getattr(state_dict, "_metadata", None)
    result = Walk()

    def visit(module, local, prefix):
        local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
        for hook, _ in tuple(module.__dict__.get("_load_state_dict_pre_hooks", {}).values()):
            hook(module, local, prefix, local_metadata, True, result.missing, result.unexpected, result.errors)
        left_out = module.__dict__.get("_non_persistent", ())
        own = [(name, value) for name, value in module._parameters.items() if value is not None]
        own += [(name, value) for name, value in module._buffers.items() if value is not None and name not in left_out]
        if type(module).set_extra_state is not Module.set_extra_state:
            own.append((EXTRA_STATE_KEY, ExtraState(module)))
        for name, entry in own:
            key = prefix + name
            result.entries[key] = entry
            if key in local:
                result.found[key] = local[key]
            elif name not in type(module)._optional_buffers:
                result.missing.append(key)
        names = {name for name, _ in own}
        for key in local:
            if not isinstance(key, str):  # (the top's only: no child's copy holds one)
                result.unexpected.append(key)
            elif key.startswith(prefix):
                head = key[len(prefix):].split(".", 1)
                if (head[0] not in module._modules) if len(head) > 1 else (head[0] not in names):
                    result.unexpected.append(key)
        for name, child in module._modules.items():
            if child is not None:
                child_prefix = f"{prefix}{name}."
                visit(child, {key: value for key, value in local.items()
                              if isinstance(key, str) and key.startswith(child_prefix)},
                      child_prefix)
        result.ends.append((module, len(result.missing), len(result.unexpected)))

    visit(model, OrderedDict(state_dict), "")
    return result


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
