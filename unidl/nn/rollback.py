"""Undo a load that failed part-way: a module's ``set_extra_state`` is the user's code, run (as torch runs it) after
the variables are written, and it may refuse what it is given (a version check)."""

import contextlib
import copy

import numpy as np

from unidl import config
from unidl.dtype_kinds import dtype_name, is_floating


@contextlib.contextmanager
def restored_on_failure(model, whole: bool = False):
    """Run the block (a load into ``model``); if it raises, put back every parameter, persistent buffer and extra
    state it could have changed, bit for bit, and re-raise. Only a model with extra state (a module that overrides
    ``set_extra_state``), or one whose load may still be refused after the writes (``whole``: load post-hooks,
    whose keys a strict load checks after them), is copied first, to the host: without it a load's checks come
    before the first write, so nothing can fail after it, and the load keeps its bound of one tensor held outside
    the model. Extra state is deep-copied, a tensor as a copy of the framework's own on its device: what
    ``get_extra_state`` returns is often the module's own array, which a ``set_extra_state`` then writes into.
    Yields whether it holds that copy (a failure in the block is then undone; without it the block's own checks are
    all there is, and a writer that can still fail, a read of a streamed file, must say what it left)."""
    from unidl.nn.module import ExtraState, Module, _as_loaded

    entries = list(model._state_variables(extra_state="set_extra_state"))
    if not whole and not any(isinstance(entry, ExtraState) for _, entry in entries):
        yield False
        return
    backend = model._backend
    variables = [(entry, backend.to_numpy(entry)) for _, entry in entries if not isinstance(entry, ExtraState)]
    extra = [(entry.module, _host_copy(entry.module.get_extra_state())) for _, entry in entries
             if isinstance(entry, ExtraState) and type(entry.module).get_extra_state is not Module.get_extra_state]
    try:
        yield True
    except BaseException as error:
        try:
            for variable, value in variables:
                backend.assign(variable, _as_loaded(value))
            for module, state in extra:
                module.set_extra_state(_rebuilt(state))
        except Exception as failed:  # (the load's own error is the one to see; this one is told beside it)
            error.add_note(f"putting the model back after this failed load failed too: "
                           f"{type(failed).__name__}: {failed}")
        raise


class _HostTensor:
    """A framework's tensor of an extra state, kept as its values on the host: ``rebuilt`` makes it again, of its
    framework, dtype and device, bit for bit (a refused load put it back as a NumPy array)."""

    def __init__(self, backend, value):
        self.backend, self.array = backend, backend.to_numpy(value).copy()
        self.dtype, self.device = dtype_name(value.dtype), backend.device_of(value)

    def rebuilt(self):
        """The tensor again: made on its own device (``tensor()`` places on unidl's device in force, which
        ``use_device`` sets; a framework's own device scope it overrides) from float64, int64 or bool values, the
        kinds every backend's ``tensor()`` makes, then cast to its dtype (float16 from float64: exact, as each
        value came from float16; an int32 or uint8 from int64 likewise)."""
        floating = is_floating(self.dtype)
        with config.use_device(self.device), self.backend.device_scope(self.device):
            tensor = self.backend.tensor(self.array.astype(np.float64) if floating else self.array,
                                         "float64" if floating else None)
            return tensor if dtype_name(tensor.dtype) == self.dtype else self.backend.ops.cast(tensor, self.dtype)


def _host_copy(value):
    """A deep copy of an extra state, its tensors (of any backend) as ``_HostTensor``s."""
    from unidl import backends

    def leaf(item):
        for backend in backends.loaded_backends().values():
            if backend.is_tensor(item):
                return _HostTensor(backend, item)
        return copy.deepcopy(item)

    return _each(value, leaf)


def _rebuilt(value):
    """``_host_copy``'s copy as the extra state was, each ``_HostTensor`` a tensor again."""
    return _each(value, lambda item: item.rebuilt() if isinstance(item, _HostTensor) else item)


def _each(value, leaf):
    """``value`` with ``leaf`` applied to every item that is no dict, list or tuple (nor a framework's tensor), at
    any depth; each dict a copy of its own type first (a defaultdict keeps its factory)."""
    if isinstance(value, dict):
        mapped = copy.copy(value)
        for key, item in value.items():
            mapped[key] = _each(item, leaf)
        return mapped
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_each(item, leaf) for item in value)
    return leaf(value)
