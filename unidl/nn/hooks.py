"""Forward hooks on modules, as ``torch.nn.Module``'s: functions called before and after a module's ``forward``
that may read or replace its inputs and output (feature extraction, activation statistics, input checks); and the
tables of ``state_dict``'s and ``load_state_dict``'s pre- and post-hooks, which no forward reads (they run in
``Module.state_dict`` and ``unidl.nn.loading``).

A hook is Python: it runs at every call where the forward runs in Python (torch, eager calls, ``model(x)``) and at
trace time where a compiled step or ``ud.function`` traces the forward (tensorflow, jax, Keras), exactly as the
forward's own Python code does (``docs/dynamic-forward.md``). A hook that changes values is part of the graph; a hook
that collects tensors gets symbolic ones inside a trace. Registering or removing one traces compiled steps again.
"""

from __future__ import annotations

from collections import OrderedDict
import itertools
import warnings
import weakref

from unidl import arguments

_handle_ids = itertools.count()

#: the tables of hooks that a forward runs: a change to one traces compiled steps again
FORWARD_TABLES = ("_forward_pre_hooks", "_forward_hooks")


class RemovableHandle:
    """What ``register_forward_hook``, ``register_forward_pre_hook`` and the state-dict hooks' registrations
    (``register_state_dict_pre_hook``, ``register_load_state_dict_post_hook``, ...) return, as torch's:
    ``remove()`` takes the hook off (a second ``remove()`` does nothing); a ``with`` block removes it at its end."""

    def __init__(self, module, table_name: str):
        self.id = next(_handle_ids)
        self._module, self._table_name = weakref.ref(module), table_name  # (a handle kept keeps no model alive)

    def remove(self) -> None:
        module = self._module()
        table = None if module is None else module.__dict__.get(self._table_name)
        if table is not None and table.pop(self.id, None) is not None and self._table_name in FORWARD_TABLES:
            module._hooks_changed()

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def register(module, table_name: str, hook, prepend: bool, flags: dict, method: str) -> RemovableHandle:
    """File ``hook`` in ``module``'s table ``table_name`` (``_forward_pre_hooks``, ``_forward_hooks``,
    ``_state_dict_pre_hooks``, ``_load_state_dict_post_hooks``, ...) with its ``flags`` (``with_kwargs``,
    ``always_call``), first with ``prepend``; the table is made on first use."""
    if not callable(hook):
        raise TypeError(f"{type(module).__name__}.{method}: the hook must be callable, got {type(hook).__name__}")
    owner = f"{type(module).__name__}.{method}"
    prepend = arguments.boolean(owner, "prepend", prepend)
    flags = {name: arguments.boolean(owner, name, value) for name, value in flags.items()}
    table = module.__dict__.get(table_name)
    if table is None:
        table = OrderedDict()
        object.__setattr__(module, table_name, table)
    handle = RemovableHandle(module, table_name)
    table[handle.id] = (hook, flags)
    if prepend:
        table.move_to_end(handle.id, last=False)
    if table_name in FORWARD_TABLES:
        module._hooks_changed()
    return handle


def key(module) -> tuple:
    """The ids of ``module``'s hooks, in calling order: a graph traced with them bakes them in."""
    return (tuple(module.__dict__.get("_forward_pre_hooks", ())), tuple(module.__dict__.get("_forward_hooks", ())))


def call(module, args: tuple, kwargs: dict, run):
    """``module(*args, **kwargs)`` with its hooks, as torch's ``Module.__call__``: the forward pre-hooks in order
    (``hook(module, args)`` gives None, the inputs as they are, or the new positional inputs, a value that is not a
    tuple being the one input; with ``with_kwargs``, ``hook(module, args, kwargs)`` gives None or ``(args,
    kwargs)``), then ``run(args, kwargs)`` (the forward), then the forward hooks in order (``hook(module, args,
    output)``, ``hook(module, args, kwargs, output)`` with ``with_kwargs``) each giving None (the output as it is)
    or the new output. Where any of that raises, the hooks registered with ``always_call`` that have not run yet
    run with the output so far (None before the forward's), an error of theirs a warning, and the error goes on."""
    output, called = None, set()
    try:
        for hook, flags in tuple(module.__dict__.get("_forward_pre_hooks", {}).values()):
            if flags["with_kwargs"]:
                result = hook(module, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"forward pre-hook {_name(hook)} of {module.describe()} must return None "
                                           f"or a tuple of (new_args, new_kwargs), but got {result!r}")
                    args, kwargs = result
            else:
                result = hook(module, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        output = run(args, kwargs)
        for hook_id, (hook, flags) in tuple(module.__dict__.get("_forward_hooks", {}).items()):
            if flags["always_call"]:
                called.add(hook_id)
            result = _call(hook, flags, module, args, kwargs, output)
            if result is not None:
                output = result
        return output
    except Exception:
        for hook_id, (hook, flags) in tuple(module.__dict__.get("_forward_hooks", {}).items()):
            if flags["always_call"] and hook_id not in called:
                try:
                    result = _call(hook, flags, module, args, kwargs, output)
                    if result is not None:
                        output = result
                except Exception as error:
                    warnings.warn(f"forward hook {_name(hook)} of {module.describe()} with always_call=True raised "
                                  f"an exception that was silenced as another error was raised in forward: {error}",
                                  stacklevel=3)
        raise


def _call(hook, flags, module, args, kwargs, output):
    return hook(module, args, kwargs, output) if flags["with_kwargs"] else hook(module, args, output)


def _name(hook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)
