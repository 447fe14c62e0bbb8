"""Undo a load that failed part-way: a module's ``set_extra_state`` is the user's code, run (as torch runs it) after
the variables are written, and it may refuse what it is given (a version check)."""

import contextlib
import copy


@contextlib.contextmanager
def restored_on_failure(model, whole: bool = False):
    """Run the block (a load into ``model``); if it raises, put back every parameter, persistent buffer and extra
    state it could have changed, bit for bit, and re-raise. Only a model with extra state (a module that overrides
    ``set_extra_state``), or one whose load may still be refused after the writes (``whole``: load post-hooks,
    whose keys a strict load checks after them), is copied first, to the host: without it a load's checks come
    before the first write, so nothing can fail after it, and the load keeps its bound of one tensor held outside
    the model. Extra state is
    deep-copied (tensors as NumPy arrays): what ``get_extra_state`` returns is often the module's own array, which a
    ``set_extra_state`` then writes into."""
    from unidl.nn.module import ExtraState, Module, _as_loaded

    entries = list(model._state_variables(extra_state="set_extra_state"))
    if not whole and not any(isinstance(entry, ExtraState) for _, entry in entries):
        yield
        return
    backend = model._backend
    variables = [(entry, backend.to_numpy(entry)) for _, entry in entries if not isinstance(entry, ExtraState)]
    extra = [(entry.module, _host_copy(entry.module.get_extra_state())) for _, entry in entries
             if isinstance(entry, ExtraState) and type(entry.module).get_extra_state is not Module.get_extra_state]
    try:
        yield
    except BaseException as error:
        try:
            for variable, value in variables:
                backend.assign(variable, _as_loaded(value))
            for module, state in extra:
                module.set_extra_state(state)
        except Exception as failed:  # (the load's own error is the one to see; this one is told beside it)
            error.add_note(f"putting the model back after this failed load failed too: "
                           f"{type(failed).__name__}: {failed}")
        raise


def _host_copy(value):
    """A deep copy of an extra state, its tensors (of any backend) as NumPy arrays."""
    from unidl import backends
    from unidl.tensors import to_numpy

    if any(backend.is_tensor(value) for backend in backends.loaded_backends().values()):
        return to_numpy(value).copy()
    if isinstance(value, dict):  # (a copy of its own type first: a defaultdict keeps its factory)
        copied = copy.copy(value)
        for key, item in value.items():
            copied[key] = _host_copy(item)
        return copied
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_host_copy(item) for item in value)
    return copy.deepcopy(value)
