"""``train_step``: the one training loop's unit of work, compiled or eager as the backend prefers.

The front end only checks what it can check cheaply in Python (matching batch
sizes, and the shapes of each new input signature once); the backend then
runs forward, gradients and update as one dispatch.
"""

from __future__ import annotations

import contextlib

from unidl import arguments, config, devices
from unidl.distributed import process_group
from unidl.errors import BackendMismatchError, NonFiniteLossError, ShapeMismatchError
from unidl.precision import precision_policy
from unidl.tracing import python_randomness_preserved


def _shape(value):
    shape = getattr(value, "shape", None)
    if shape is None:
        raise TypeError(f"train_step inputs must be arrays or tensors, got {type(value).__name__}")
    return tuple(shape)


def check_same_backend(model, *others) -> object:
    """The backend shared by a model and its loss/optimizer, or a ``BackendMismatchError`` naming both."""
    backend = model._backend
    for other in others:
        if other is not None and other._backend is not backend:
            raise BackendMismatchError(
                f"{type(other).__name__} was created under backend {other._backend.name!r} but the model "
                f"{type(model).__name__} under {backend.name!r}; create them under the same backend")
    return backend


def check_optimizer_trains(model, loss_fn, optimizer, where: str) -> None:
    """A ``ValueError`` where none of ``optimizer``'s parameters is the model's or the loss module's (an optimizer
    of another model, or of a copy of this one): every step would change nothing, silently (Keras's ``compile``
    cannot get there)."""
    params = getattr(optimizer, "params", None)
    if not params:
        return
    owned = {id(p) for module in (model, loss_fn) if hasattr(module, "parameters") for p in module.parameters()}
    if not any(id(p) in owned for p in params):
        raise ValueError(f"{where}: none of the optimizer's {len(params)} parameters belongs to the model "
                         f"{type(model).__name__} (or to the loss), so training would change nothing; build the "
                         f"optimizer over model.parameters() of this model (after any deepcopy or rebuild)")


def check_accumulate(accumulate) -> int:
    """``accumulate`` (micro-steps per optimizer update) as an int, or ``ValueError`` saying what is valid."""
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer (micro-steps per optimizer update, 1 for none), "
                         f"got {accumulate!r}")
    return accumulate


class AccumulationWindow:
    """The window of a train step with ``accumulate`` N > 1 (what it keeps between micro-steps), as canonical
    state for ``optimizer.state_dict()`` and checkpoints, the same on every backend and precision::

        {"accumulate": N, "micro_steps": k, "finite": bool, "gradients": [np.ndarray, ...],
         "has_gradient": [bool, ...]}

    ``k`` micro-steps have run since the last update (0 < k < N), ``finite``: each had a finite loss and
    gradients, ``gradients``: the sum of their gradients of ``loss / N``, unscaled, one per parameter in
    ``optimizer.params`` order (zeros where none was accumulated), ``has_gradient``: whether each parameter had
    a gradient in one of them (PyTorch's ``.grad is not None``: one without updates not at all; a state without
    the key, saved before it was kept, counts every trainable parameter as having one). A backend builds it from
    ``read() -> (micro_steps, finite, gradients, has_gradient)`` and ``write(micro_steps, finite, gradients,
    has_gradient)`` (``has_gradient`` None: every trainable parameter) over its own storage
    (``.grad``; variables: ``variable_window``), and hands it to ``accumulation_window``, which keeps one per
    optimizer for every step that trains it. ``storage``: that storage, as the backend's steps use it;
    ``count()``: the micro-steps run (``read()``'s first value, without reading the sums); ``key``: the
    ``(accumulate, precision name)`` it accumulates for (set by ``accumulation_window``)."""

    def __init__(self, accumulate: int, read, write, storage=None, count=None):
        self.accumulate, self._read, self._write = accumulate, read, write
        self.storage, self.key = storage, None
        self._count = count if count is not None else (lambda: read()[0])

    def micro_steps(self) -> int:
        """The micro-steps run since the last update (0: the window is empty)."""
        return int(self._count())

    def state(self) -> dict | None:
        """The window's state, or None when it is empty (at an update: nothing to keep)."""
        import numpy as np

        micro_steps, finite, gradients, has_gradient = self._read()
        if not micro_steps:
            return None
        return {"accumulate": self.accumulate, "micro_steps": int(micro_steps), "finite": bool(finite),
                "gradients": [np.asarray(g) for g in gradients], "has_gradient": [bool(h) for h in has_gradient]}

    def load(self, state: dict | None) -> None:
        """Restore ``state`` (None: empty the window), checked first by ``check_window_state``."""
        if state is None:
            self._write(0, True, None, None)
        else:
            self._write(int(state["micro_steps"]), bool(state["finite"]), state["gradients"],
                        state.get("has_gradient"))


def variable_window(accumulate: int, sums, count, finite, to_numpy, assign, on_write=None,
                    scale=None, storage=None, has_gradient=None) -> AccumulationWindow:
    """The ``AccumulationWindow`` over a window a backend keeps in variables (the optimizer's own, or a mixed
    precision step's), whatever the framework: what differs is ``to_numpy(variable)`` (its value as a NumPy
    array) and ``assign(variable, array)`` (an array of the variable's dtype and shape).

    ``sums``: one variable per parameter, the micro-steps' gradients of ``loss / N`` summed (times the loss
    scale ``scale()`` in force where the step scales them: unscaled on reading, scaled on writing, exactly for
    a power of two). ``count``: the micro-steps run. ``finite``: where the window's finite flag is kept: a
    boolean variable (read as False where a sum is not finite too); or the window's N losses (finite when its
    first ``count`` are; a non-finite window is written as a NaN first loss).
    ``on_write(micro_steps)`` is told of each write. ``storage``: the backend's object that holds these variables
    (``AccumulationWindow.storage``).
    ``has_gradient``: ``(flags, params)``, one boolean variable per parameter, whether it had a gradient in a
    micro-step of the window so far (PyTorch's ``.grad is not None``), read into the canonical state and written
    back from it (a state without them: every trainable parameter of a part-full window has one; none of an
    empty one). Without ``has_gradient`` every trainable parameter reads as having one."""
    import numpy as np

    def read():
        micro_steps = int(to_numpy(count))
        stored = [np.array(to_numpy(total)) for total in sums]
        flag = to_numpy(finite)  # (a boolean flag reads the sums too: non-finite gradients are only in them)
        is_finite = (bool(np.isfinite(flag[:micro_steps]).all()) if np.ndim(flag) else
                     bool(flag) and all(np.isfinite(s).all() for s in stored))
        if scale is not None:
            stored = [s / np.asarray(scale(), s.dtype) for s in stored]
        flags = ([True] * len(stored) if has_gradient is None else
                 [bool(np.asarray(to_numpy(flag))) for flag in has_gradient[0]])
        return micro_steps, is_finite, stored, flags

    def write(micro_steps, is_finite, gradients, had_gradient=None):
        assign(count, np.asarray(micro_steps, np.asarray(to_numpy(count)).dtype))
        flag = np.asarray(to_numpy(finite))
        assign(finite, np.asarray(bool(is_finite)) if not flag.ndim else
               np.asarray([0.0 if is_finite or index else np.nan for index in range(accumulate)], flag.dtype))
        if has_gradient is not None:
            from unidl.nn.module import is_trainable

            had = had_gradient if had_gradient is not None else [True] * len(has_gradient[0])
            for flag, param, had_one in zip(*has_gradient, had):
                assign(flag, np.asarray(bool(micro_steps) and is_trainable(param) and bool(had_one)))
        if on_write is not None:
            on_write(micro_steps)
        for total, value in zip(sums, gradients if micro_steps else [None] * len(sums)):
            current = np.asarray(to_numpy(total))
            if value is None:
                value = np.zeros_like(current)
            else:
                value = np.asarray(value).astype(current.dtype)
                if scale is not None:
                    value = value * np.asarray(scale(), current.dtype)
            assign(total, value)

    return AccumulationWindow(accumulate, read, write, storage=storage, count=lambda: to_numpy(count))


class LossScaler:
    """The dynamic loss scale of a float16 train step (``precision="16-mixed"``, ``torch.amp.GradScaler``'s rule)
    as canonical state for ``optimizer.state_dict()`` and checkpoints, the same on every backend::

        {"scale": float, "growth_tracker": int}

    ``scale``: the scale in force (> 0, finite), ``growth_tracker``: the finite updates in a row since the scale
    last moved (0 <= it < ``growth_interval``), as GradScaler's own ``state_dict``. A backend builds it from
    ``read() -> (scale, growth_tracker)`` and ``write(scale, growth_tracker)`` over its own storage
    (``variable_scaler``); ``loss_scale_storage`` registers it with the optimizer when its first float16 step
    creates that storage, so that a resumed run goes on with the scale it had instead of restarting at
    ``init_scale``. ``storage``: the backend's storage it reads and writes (the scale every float16 step of the
    optimizer moves); ``settings``: the ``Precision`` settings it was created with."""

    def __init__(self, precision, read, write):
        self.growth_interval, self.init_scale = precision.growth_interval, float(precision.init_scale)
        self._read, self._write = read, write
        self.storage = None

    @property
    def settings(self) -> dict:
        """The loss-scaling settings of ``Precision`` this scale moves by (the growth and backoff factors are fixed)."""
        return _scale_settings(self)

    def state(self) -> dict:
        scale, growth_tracker = self._read()
        return {"scale": float(scale), "growth_tracker": int(growth_tracker)}

    def load(self, state: dict | None) -> None:
        """Restore ``state`` (checked first by ``check_scaler_state``); None: the scale a new step starts with
        (a state taken with no float16 step had no scale moved)."""
        if state is None:
            self._write(self.init_scale, 0)
        else:
            self._write(float(state["scale"]), int(state["growth_tracker"]))


def variable_scaler(precision, scale, growth_tracker, to_numpy, assign) -> LossScaler:
    """The ``LossScaler`` over a loss scale a backend keeps in variables (or attributes), whatever the framework:
    ``scale`` and ``growth_tracker`` (finite updates in a row), read with ``to_numpy(variable)`` (a NumPy value)
    and written with ``assign(variable, value)`` (a NumPy value of the variable's dtype)."""
    import numpy as np

    def write(value, tracker):
        assign(scale, np.asarray(value, np.asarray(to_numpy(scale)).dtype))
        assign(growth_tracker, np.asarray(tracker, np.asarray(to_numpy(growth_tracker)).dtype))

    return LossScaler(precision, lambda: (to_numpy(scale), to_numpy(growth_tracker)), write)


class StepStorage:
    """Optimizer state that lives in storage a train step creates as it is built: the accumulation window and
    the float16 loss scale, one mechanism for both. The step registers a holder of its storage (``attach``: an
    ``AccumulationWindow``, a ``LossScaler``), through which ``optimizer.state_dict()`` reads the state and
    ``load_state_dict`` writes it. A state loaded while no holder is registered (a checkpoint loaded before the
    step is built) waits on the optimizer, and ``state_dict`` saves it again, until a step registers its holder,
    which takes it (None too: an empty window, the initial scale) after ``check(optimizer, state, setting)``
    against that step's setting (the holder's attribute ``setting``: ``accumulate``, ``growth_interval``).
    ``expect`` notes the setting of the step about to be built (``TrainStep``, ``fit``), so that a state loaded
    before its holder exists is checked against it at once."""

    def __init__(self, name: str, setting: str, check):
        self.setting, self.check = setting, check
        self._holder, self._pending, self._expected = f"_{name}", f"_pending_{name}", f"_train_step_{setting}"
        self.holder_attribute = self._holder  # (the optimizer's attribute a step reads at every call)

    def expect(self, optimizer, setting) -> None:
        optimizer.__dict__[self._expected] = setting

    def holder(self, optimizer):
        """The registered holder, or None."""
        return optimizer.__dict__.get(self._holder)

    def setting_in_force(self, optimizer):
        """The registered holder's setting, else the expected one (None: neither)."""
        holder = optimizer.__dict__.get(self._holder)
        return getattr(holder, self.setting) if holder is not None else optimizer.__dict__.get(self._expected)

    def check_pending(self, optimizer, setting) -> None:
        """Check the state loaded before any holder (if any) against a step with ``setting``."""
        self.check(optimizer, optimizer.__dict__.get(self._pending), setting)

    def state(self, optimizer):
        """The registered holder's state, else the one loaded for a holder to come (None: none)."""
        holder = optimizer.__dict__.get(self._holder)
        return holder.state() if holder is not None else optimizer.__dict__.get(self._pending)

    def load(self, optimizer, state) -> None:
        """Write ``state`` (checked already) into the registered holder, else keep it for the next one."""
        holder = optimizer.__dict__.get(self._holder)
        if holder is not None:
            holder.load(state)
        else:
            optimizer.__dict__[self._pending] = state

    def detach(self, optimizer) -> None:
        """Unregister the holder (if any); a state loaded next waits for the next one (``attach``)."""
        optimizer.__dict__.pop(self._holder, None)

    def attach(self, optimizer, setting, holder=None) -> None:
        """Register ``holder`` (None: unregister; the step keeps no such state) for a step with ``setting``,
        after checking a state loaded before it, which it then takes (a step built again over the same storage,
        after a mode change, keeps its state)."""
        loaded = self._pending in optimizer.__dict__
        self.check_pending(optimizer, setting)
        pending = optimizer.__dict__.pop(self._pending, None)
        if holder is None:
            optimizer.__dict__.pop(self._holder, None)
            return
        optimizer.__dict__[self._holder] = holder
        if loaded:
            holder.load(pending)


def _check_keys(optimizer, name: str, state, keys: set) -> None:
    """Raise ``CheckpointStateError`` unless ``state`` (the optimizer state's entry ``name``) is a dict of ``keys``."""
    from unidl.errors import CheckpointStateError

    if not isinstance(state, dict) or set(state) != keys:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointStateError(f"{type(optimizer).__name__} state {name!r} must have the keys {sorted(keys)}, "
                                   f"found {found}")


def check_window_state(optimizer, state, accumulate: int | None = None) -> None:
    """Raise ``CheckpointStateError`` unless ``state`` (an ``AccumulationWindow.state()`` or None) fits
    ``optimizer`` and a train step with ``accumulate`` micro-steps per update (None: the accumulation of the
    window registered now, if any). The rule: a part-full window resumes only under the ``accumulate`` it was
    taken with (its sum is of ``loss / N`` and its update comes after N micro-steps); an empty one (a checkpoint
    taken at an update) resumes under any."""
    import numpy as np

    from unidl.errors import CheckpointStateError

    if state is None:
        return
    owner = type(optimizer).__name__
    _check_keys(optimizer, "accumulation", state, {"accumulate", "micro_steps", "finite", "gradients"}
                | ({"has_gradient"} & set(state) if isinstance(state, dict) else set()))  # (optional: states before it)
    saved, micro_steps = state["accumulate"], state["micro_steps"]
    if (not isinstance(saved, (int, np.integer)) or isinstance(saved, bool) or saved < 2
            or not isinstance(micro_steps, (int, np.integer)) or isinstance(micro_steps, bool)
            or not 0 < micro_steps < saved):
        raise CheckpointStateError(f"{owner} state 'accumulation' must hold 0 < micro_steps < accumulate (integers, "
                                   f"accumulate >= 2), got micro_steps={micro_steps!r}, accumulate={saved!r}")
    gradients = state["gradients"]
    if not isinstance(gradients, (list, tuple)) or len(gradients) != len(optimizer.params):
        count = len(gradients) if isinstance(gradients, (list, tuple)) else type(gradients).__name__
        raise CheckpointStateError(f"{owner} accumulation window holds {count} gradients, expected "
                                   f"{len(optimizer.params)}")
    for index, (param, value) in enumerate(zip(optimizer.params, gradients)):
        if tuple(np.shape(value)) != tuple(param.shape) or np.asarray(value).dtype.kind != "f":
            raise CheckpointStateError(f"{owner} accumulation window gradient {index}: expected floats of shape "
                                       f"{tuple(param.shape)}, found {np.asarray(value).dtype} of shape "
                                       f"{tuple(np.shape(value))}")
    flags = state.get("has_gradient")
    if flags is not None and (not isinstance(flags, (list, tuple)) or len(flags) != len(optimizer.params)
                              or not all(isinstance(flag, (bool, np.bool_)) for flag in flags)):
        raise CheckpointStateError(f"{owner} accumulation window 'has_gradient' must hold one bool per parameter "
                                   f"({len(optimizer.params)}), got {flags!r}")
    if accumulate is None:
        accumulate = optimizer.__dict__.get(_RESUMING)  # fit resuming with its own accumulate: that one only
    if accumulate is None:  # the window's train step, or the last one built (Keras builds its window later)
        accumulate = _WINDOW.setting_in_force(optimizer)
        if saved in optimizer.__dict__.get(_BUILT_ACCUMULATES, ()):  # another step of the optimizer takes it
            accumulate = saved
    if accumulate is not None and accumulate != saved:
        raise CheckpointStateError(
            f"the state was taken {micro_steps} micro-step(s) into an accumulation window of accumulate={saved}, "
            f"but this train step has accumulate={accumulate}; resume with accumulate={saved} (a part-full "
            f"window holds the sum of loss / {saved} over its micro-steps), or from a state taken at an update")


def check_scaler_state(optimizer, state, growth_interval: int | None = None) -> None:
    """Raise ``CheckpointStateError`` unless ``state`` (a ``LossScaler.state()`` or None) is a loss scale a float16
    step with ``growth_interval`` (None: the registered scaler's, if any) can go on from: a positive finite
    scale and a growth tracker 0 <= it < growth_interval."""
    import math

    import numpy as np

    from unidl.errors import CheckpointStateError

    if state is None:
        return
    owner = type(optimizer).__name__
    _check_keys(optimizer, "loss_scaler", state, {"scale", "growth_tracker"})
    scale, tracker = state["scale"], state["growth_tracker"]
    if (not isinstance(scale, (int, float, np.integer, np.floating)) or isinstance(scale, bool)
            or not math.isfinite(float(scale)) or not scale > 0):
        raise CheckpointStateError(f"{owner} state 'loss_scaler' scale must be a finite number > 0, got {scale!r}")
    if not isinstance(tracker, (int, np.integer)) or isinstance(tracker, bool) or tracker < 0:
        raise CheckpointStateError(f"{owner} state 'loss_scaler' growth_tracker must be a non-negative integer "
                                   f"(finite updates in a row), got {tracker!r}")
    if growth_interval is None:  # the registered float16 step's, or that of the step about to be built
        growth_interval = _SCALER.setting_in_force(optimizer)
    if growth_interval is not None and tracker >= growth_interval:
        raise CheckpointStateError(
            f"the state's loss scaler has growth_tracker={tracker} finite updates in a row, but this float16 step "
            f"has growth_interval={growth_interval} (the tracker must be below it); resume with a growth_interval "
            f"above {tracker}")


_WINDOW = StepStorage("accumulation_window", "accumulate", check_window_state)
_SCALER = StepStorage("loss_scaler", "growth_interval", check_scaler_state)


# the accumulates of the train steps (and fits) built over an optimizer: a part-full window loaded while a step
# of another accumulate holds the optimizer's window loads for a step of its own accumulate, where one was built
_BUILT_ACCUMULATES = "_train_step_accumulates"


_RESUMING = "_resuming_accumulate"


@contextlib.contextmanager
def resuming_with(optimizer, accumulate: int):
    """The block loads a checkpoint for ``fit`` with ``accumulate``: a part-full window of another ``accumulate``
    is refused before anything changes, even where another step of the optimizer has that one (the window would
    wait for a step this ``fit`` does not run)."""
    optimizer.__dict__[_RESUMING] = accumulate
    try:
        yield
    finally:
        optimizer.__dict__.pop(_RESUMING, None)


def expect_accumulate(optimizer, accumulate: int) -> None:
    """Note that ``optimizer`` trains in steps of ``accumulate`` micro-steps (a ``TrainStep``, ``fit``), so that a
    state loaded before the step builds its window is checked against it at once (``check_window_state``)."""
    _WINDOW.expect(optimizer, accumulate)
    optimizer.__dict__.setdefault(_BUILT_ACCUMULATES, set()).add(accumulate)


def window_micro_steps(optimizer) -> int:
    """The micro-steps in the optimizer's accumulation window (0: empty), read without its gradients."""
    holder = _WINDOW.holder(optimizer)
    if holder is not None:
        return holder.micro_steps()
    pending = optimizer.__dict__.get(_WINDOW._pending)  # (one loaded for a step not built yet)
    return int(pending["micro_steps"]) if pending else 0


def window_state(optimizer) -> dict | None:
    """The accumulation window ``optimizer.state_dict()`` saves: the registered window's, else one loaded
    for a train step not built yet; None when there is none or it is empty."""
    return _WINDOW.state(optimizer)


def job_window_state(optimizer) -> dict | None:
    """``window_state`` of the job, on every rank of a data-parallel job (each must call it: one all-reduce where a
    window is part-full): a window kept on each rank (torch's ``no_sync()`` ``.grad``, TensorFlow's and Keras's per-rank
    windows) holds that rank's own micro-steps until its update averages them, so a checkpoint of rank 0's alone
    would resume every rank with rank 0's sums. The job's: the sums averaged over the ranks (an update averages
    them again with the micro-steps after the resume: the mean is linear, so the resumed window's update is the
    uninterrupted one's), finite where every rank's is, a parameter with a gradient where any rank had one (DDP's
    rule). The micro-step count is the same on every rank, so every rank calls the collective or none does."""
    import numpy as np

    from unidl.tensors import to_numpy

    state = window_state(optimizer)
    if state is None or process_group.sharding() is None:
        return state
    gradients = [np.asarray(g) for g in state["gradients"]]
    flags = state.get("has_gradient") or [True] * len(gradients)
    dtype = np.result_type(*gradients)
    flat = np.concatenate([g.reshape(-1).astype(dtype) for g in gradients]
                          + [np.asarray([0.0 if state["finite"] else 1.0], dtype), np.asarray(flags, dtype)])
    summed = np.asarray(to_numpy(process_group.all_reduce(flat, "sum")))
    ranks = process_group.sharding()[1]
    averaged, start = [], 0
    for gradient in gradients:
        averaged.append((summed[start:start + gradient.size] / ranks).reshape(gradient.shape).astype(gradient.dtype))
        start += gradient.size
    return dict(state, gradients=averaged, finite=bool(summed[start] == 0),
                has_gradient=[bool(value > 0) for value in summed[start + 1:]])


def load_window_state(optimizer, state: dict | None) -> None:
    """Restore the window of ``optimizer.load_state_dict`` (checked already): into the registered window, else
    kept until a train step with accumulation creates its window (``attach_window``). A part-full window of
    another ``accumulate`` than the registered window's belongs to another step built over the optimizer
    (``check_window_state``): the registered window is emptied (a load replaces the optimizer's whole state) and
    given up, and the loaded one waits as for a step not built yet, so that a step of its ``accumulate`` takes it
    at its next call and a step of another refuses to run (``CheckpointStateError``, the same on every backend,
    whether or not the first step has created its window yet)."""
    current = _WINDOW.holder(optimizer)
    if state is not None and current is not None and current.accumulate != state["accumulate"]:
        current.load(None)
        _WINDOW.detach(optimizer)
    _WINDOW.load(optimizer, state)


def attach_window(optimizer, accumulate: int, window: AccumulationWindow | None = None) -> None:
    """Register the window of a train step being built with ``accumulate`` (None for ``accumulate`` 1), after
    checking a window loaded before it (``load_state_dict`` before the step was built), which it then takes."""
    _WINDOW.attach(optimizer, accumulate, window)


def _window_key(accumulate: int, precision) -> tuple | None:
    """What a step's micro-steps accumulate for: ``(accumulate, precision name)``, None for ``accumulate`` 1 (a
    step that keeps no window). Only steps of one key can add to one window: its sums are of ``loss / N``, and
    under float16 loss scaling they are scaled."""
    return None if accumulate == 1 else (accumulate, "32" if precision is None else precision.name)


def _describe_window_key(key) -> str:
    return "accumulate=1" if key is None else f"accumulate={key[0]} (precision={key[1]!r})"


def claim_window(optimizer, accumulate: int, precision=None) -> None:
    """Make the optimizer's one accumulation window that of a step with ``accumulate`` under ``precision``
    (None: "32"), before the step is built or runs a micro-step: the window registered now, if of another
    ``accumulate`` or precision, must be empty (a ``AccumulationMismatchError`` naming both, before anything
    changes, where it is part-full: its micro-steps would count in no update or in one of another size). An
    empty one gives way: to this key's window where one was created before (the same storage, whichever step
    created it), else to none until the step creates it (``accumulation_window``); for ``accumulate`` 1, to none.
    The common case, this key's window already registered, is one dictionary look-up (it runs at every call)."""
    from unidl.errors import AccumulationMismatchError

    key = _window_key(accumulate, precision)
    current = _WINDOW.holder(optimizer)
    if current is not None and current.key == key:
        return
    if current is None:
        if key is None:
            _WINDOW.attach(optimizer, 1)  # (a window loaded before any step: checked against accumulate 1)
            return
    else:
        micro_steps = current.micro_steps()
        if micro_steps:
            raise AccumulationMismatchError(
                f"{type(optimizer).__name__} has an accumulation window of {_describe_window_key(current.key)} "
                f"with {micro_steps} of its {current.accumulate} micro-steps run, but this step has "
                f"{_describe_window_key(key)}; unidl keeps one accumulation window per optimizer, shared by every "
                f"step that trains it (as torch accumulates in the parameters' .grad), so finish the window with "
                f"{current.accumulate - micro_steps} more micro-step(s) of a {_describe_window_key(current.key)} "
                f"step first")
        _WINDOW.detach(optimizer)
    window = optimizer.__dict__.get("_accumulation_windows", {}).get(key)
    if window is not None:
        _WINDOW.attach(optimizer, accumulate, window)


def accumulation_window(optimizer, accumulate: int, precision, create) -> AccumulationWindow:
    """The one accumulation window of ``optimizer`` for steps of ``accumulate`` N > 1 micro-steps under
    ``precision`` (None: "32"), shared by every train step that trains it (``train_step``, ``fit``, Keras's
    trainer, a step built again after a mode or option change), as torch's ``.grad`` is: the first call creates
    it, ``create()`` -> the ``AccumulationWindow`` over the backend's new storage (its ``storage``, what the
    backend's steps add to), registered as the optimizer's checkpointed window (taking a window loaded before
    it); later calls return that window, so that a micro-step of any of these steps counts in it and the N-th,
    from whichever step, updates. A window of another ``accumulate`` or precision in progress is an
    ``AccumulationMismatchError`` (``claim_window``)."""
    claim_window(optimizer, accumulate, precision)
    key = _window_key(accumulate, precision)
    windows = optimizer.__dict__.setdefault("_accumulation_windows", {})
    window = windows.get(key)
    if window is None:
        window = create()
        window.key = key
        windows[key] = window
    if _WINDOW.holder(optimizer) is not window:
        attach_window(optimizer, accumulate, window)
    return window


def expect_precision(optimizer, precision) -> None:
    """Note that ``optimizer`` trains under ``precision`` (a ``TrainStep``, ``fit``), so that a loss scale loaded
    before its float16 step is built is checked against its ``growth_interval`` at once (``check_scaler_state``)."""
    _SCALER.expect(optimizer, precision.growth_interval if precision.scales_loss else None)


def scaler_state(optimizer) -> dict | None:
    """The loss scale ``optimizer.state_dict()`` saves: the registered float16 step's, else one loaded for a
    float16 step not built yet; None when there is none."""
    return _SCALER.state(optimizer)


def load_scaler_state(optimizer, state: dict | None) -> None:
    """Restore the loss scale of ``optimizer.load_state_dict`` (checked already): into the registered float16
    step's scaler (None: back to its ``init_scale``), else kept (and saved again by ``state_dict``) until a float16
    step is built (``attach_scaler``); a step without loss scaling never reads it."""
    _SCALER.load(optimizer, state)


def attach_scaler(optimizer, scaler: LossScaler) -> None:
    """Register the loss scaler of a float16 step being built, after checking a scale loaded before it
    (``load_state_dict`` before the step was built), which it then takes."""
    _SCALER.attach(optimizer, scaler.growth_interval, scaler)


def _scale_settings(precision) -> dict:
    """The loss-scaling settings of ``precision`` (a ``Precision``, or a ``LossScaler`` built from one)."""
    return {"init_scale": float(precision.init_scale), "growth_interval": precision.growth_interval}


def check_loss_scale_settings(optimizer, precision) -> None:
    """Raise ``LossScaleMismatchError`` where ``precision`` scales the loss with other settings than the loss
    scale ``optimizer`` already has (its first float16 step's): one scale per optimizer, as a torch loop keeps
    one ``GradScaler`` for it, so every float16 step of one optimizer moves it by the same rule."""
    from unidl.errors import LossScaleMismatchError

    scaler = _SCALER.holder(optimizer)
    if scaler is None or not precision.scales_loss or scaler.settings == _scale_settings(precision):
        return
    have = ", ".join(f"{k}={v!r}" for k, v in scaler.settings.items())
    asked = ", ".join(f"{k}={v!r}" for k, v in _scale_settings(precision).items())
    raise LossScaleMismatchError(
        f"{type(optimizer).__name__} already has a float16 loss scale with {have} (its first float16 step's), but "
        f"this step asks for {asked}; unidl keeps one loss scale per optimizer, shared by every float16 step that "
        f"trains it (as one torch.amp.GradScaler), so pass the same settings: ud.Precision('16-mixed', {have})")


def loss_scale_storage(optimizer, precision, create):
    """The one float16 loss scale of ``optimizer``, shared by every float16 step that trains it (``train_step``,
    ``fit``, Keras's trainer, a step built again): the first call creates it, ``create()`` -> the backend's storage
    (whatever its steps read and move: scale, growth tracker), whose ``checkpointed()`` is its ``LossScaler``,
    registered as the optimizer's checkpointed scale (taking a scale loaded before it); later calls return that
    storage, so a step that overflows halves the scale the other steps use next. A ``precision`` with other
    loss-scaling settings is a ``LossScaleMismatchError`` naming both (``check_loss_scale_settings``)."""
    check_loss_scale_settings(optimizer, precision)
    scaler = _SCALER.holder(optimizer)
    if scaler is not None and scaler.storage is not None:
        return scaler.storage
    storage = create()
    scaler = storage.checkpointed()
    scaler.storage = storage
    attach_scaler(optimizer, scaler)
    return storage


class TrainStep:
    """``step(x, y) -> loss`` for a model, loss and optimizer; see ``train_step``. ``check_trainable=False``: the
    caller makes ``require_trainable``'s check before each call itself, in its own words (``fit``'s ``before_batch``:
    "fit at epoch E, step S: ..."), so the step does not check a second time ("train_step call N: ...").
    ``run``: the backend's step that an earlier ``TrainStep`` of the same model, optimizer and options built
    (``fit``'s kept step, ``Backend.reuses_train_steps``), called instead of building one again (whose programs
    would compile again); every check of a new step is made all the same."""

    def __init__(self, model, loss_fn, optimizer, with_outputs: bool = False, eager: bool = False, precision=None,
                 check_finite: bool = True, accumulate: int = 1, check_trainable: bool = True, run=None):
        check_finite = arguments.boolean("train_step", "check_finite", check_finite)
        check_trainable = arguments.boolean("train_step", "check_trainable", check_trainable)
        self.accumulate = check_accumulate(accumulate)
        from unidl.fit_options import check_reduced_loss
        from unidl.nn.module import Module

        for what, value in (("model", model), ("loss", loss_fn)):
            if not isinstance(value, Module):  # (its backend, modes and buffers are read from it: an AttributeError)
                raise TypeError(f"train_step's {what} must be a ud.nn module (a loss: ud.nn.MSELoss(), "
                                f"ud.nn.CrossEntropyLoss(), ...; a function goes in the forward of a ud.nn.Module "
                                f"of its own), got {type(value).__name__}")
        check_reduced_loss(loss_fn, "train_step")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.precision = precision_policy(precision)
        self.eager, self.check_finite, self.check_trainable, self.calls = bool(eager), check_finite, check_trainable, 0
        self._backend = check_same_backend(model, loss_fn, optimizer)
        check_optimizer_trains(model, loss_fn, optimizer, "train_step")
        # a window loaded into the optimizer before this step must fit its accumulate (checked before anything is
        # built); the backend registers its own window next, where accumulate > 1
        _WINDOW.check_pending(optimizer, self.accumulate)
        # the optimizer's one window (its micro-steps from any step) must not be in progress for another accumulate
        claim_window(optimizer, self.accumulate, self.precision)
        self._window_key = _window_key(self.accumulate, self.precision)
        expect_accumulate(optimizer, self.accumulate)
        if self.precision.scales_loss:  # likewise a loss scale loaded before it must fit its growth_interval,
            # and one the optimizer has already (its first float16 step's, which this one shares) its settings
            _SCALER.check_pending(optimizer, self.precision.growth_interval)
            check_loss_scale_settings(optimizer, self.precision)
        expect_precision(optimizer, self.precision)
        if run is not None:
            self._run = run
        elif self.precision.mixed:
            self._run = self._backend.mixed_precision_train_step(model, loss_fn, optimizer, self.precision,
                                                                 with_outputs, self.eager, accumulate=self.accumulate)
        elif self.accumulate > 1:
            self._run = self._backend.train_step(model, loss_fn, optimizer, with_outputs, self.eager,
                                                 accumulate=self.accumulate)
        else:
            self._run = self._backend.train_step(model, loss_fn, optimizer, with_outputs, self.eager)
        self._checked = set()
        self._job = process_group.job_of_step()
        from unidl.nn.module import require_trainable

        self._require_trainable = require_trainable
        self._what = f"train_step of {type(model).__name__}"

    @property
    def check_finite(self) -> bool:
        """Whether a step whose update the non-finite guard skipped raises ``NonFiniteLossError``."""
        return self._check_finite

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        # what each call checks after the step, decided here rather than at every call (a step's Python is its cost
        # on a small net); a loss scaler's skipped overflow step is its own business, not an error
        self._check_finite = value
        self._guarded = bool(value) and not self.precision.scales_loss

    def _call_number(self) -> str:
        """Where a check of the call running fails, for its message (built only for an error)."""
        return f"train_step call {self.calls + 1}"

    def __call__(self, x, y, *inputs):
        process_group.check_job_of_step(self._job, self._what)
        x_shape, y_shape = getattr(x, "shape", None), getattr(y, "shape", None)
        if x_shape is None or y_shape is None:
            _shape(x), _shape(y)  # (its TypeError, naming what was given; ``_shape`` inline otherwise)
        x_shape, y_shape = tuple(x_shape), tuple(y_shape)
        if not x_shape or not y_shape or x_shape[0] != y_shape[0]:
            raise ShapeMismatchError(
                f"x and y must hold the same number of samples along axis 0; x has shape {x_shape}, "
                f"y has shape {y_shape}")
        if x_shape[0] == 0:  # the frameworks differ there (NaN, wrong shapes, errors, a crash of TF's pooling)
            raise ShapeMismatchError(f"train_step got an empty batch (x of shape {x_shape}): a step needs at least "
                                     f"one sample; skip empty batches before training on them")
        # checked once per shape apart from the batch size (2 or more alike: the last, smaller batch of an epoch
        # is not traced again); a batch of one apart (batch statistics of one value per channel are an error)
        key = (x_shape[1:], y_shape[1:], min(x_shape[0], 2), getattr(x, "dtype", None), getattr(y, "dtype", None))
        if not inputs and key not in self._checked:  # (a forward with extra inputs is checked by running it)
            if not self._checked:
                devices.compiled_placed(self._what, "first call",
                                        config.resolve_device(config._requested_device(), self._backend),
                                        self._backend.name)
            with python_randomness_preserved():  # a shape check is not a step: it draws nothing
                self._backend.check_shapes(self.model, self.loss_fn, x, y)
            self._checked.add(key)
        if self.check_trainable:
            self._require_trainable(self.optimizer.params, self._call_number, self.model, self.loss_fn)
        # another step may have used the optimizer's window since (``_WINDOW.holder``, inline)
        window = self.optimizer.__dict__.get(_WINDOW.holder_attribute)
        if (window.key if window is not None else None) != self._window_key:
            claim_window(self.optimizer, self.accumulate, self.precision)
        result = self._run(x, y, *inputs)
        self.calls += 1
        if self._guarded and not self._backend.last_step_finite(self.optimizer):
            raise NonFiniteLossError(
                f"train_step call {self.calls}: the loss or a gradient was NaN or infinite, so this step's update "
                f"was skipped (weights and optimizer state are those before it); lower the learning rate or "
                f"check the data for NaN/inf, or pass check_finite=False to skip such steps without an error")
        return result

    @property
    def loss_scale(self) -> float:
        """The dynamic loss scale in force (``precision="16-mixed"``); 1.0 for the other precisions."""
        return float(self._run.loss_scale()) if self.precision.scales_loss else 1.0

    @property
    def trace_count(self) -> int | None:
        """How many times the backend traced the step into a graph (None for eager backends)."""
        return getattr(self._run, "trace_count", None)


def train_step(model, loss_fn, optimizer, *, eager: bool = False, precision=None,
               check_finite: bool = True, accumulate: int = 1) -> TrainStep:
    """Build ``step(x, y, *inputs) -> loss`` that runs one training step of ``model``.

    ``inputs``: extra per-step values the forward takes, ``model(x, *inputs)`` (a dynamic net's depth
    for this step): graph inputs where the step is a graph, so a new value never freezes the old one.
    ``eager=True``: no graph on any backend; Python runs the forward at every step, for forwards
    that need Python per step (Keras's ``run_eagerly``). See docs/dynamic-forward.md.
    Non-finite guard, the same on every backend: a step whose loss or any gradient is NaN or infinite
    updates nothing (parameters, optimizer slots and step count stay bit-identical; the check runs inside
    the graph where the step is one). With ``check_finite=True`` (the default) that step then raises
    ``NonFiniteLossError``; with ``check_finite=False`` it is skipped silently (``optimizer.last_step_finite``
    says so), as a loss scaler skips an overflowing step. Gradient clipping is the optimizer's
    (``clip_grad_norm=``, ``clip_grad_value=``).
    ``accumulate=N``: each call is a micro-step; every N-th call updates with the mean of the N micro-steps'
    gradients (PyTorch's ``(loss / N).backward()`` idiom), clipped after accumulation. The optimizer's step
    count (Adam's bias correction, schedules) counts updates, not micro-steps. The accumulation stays inside the
    graph on tensorflow, keras and jax. In a data-parallel job the micro-steps that do not update keep their
    gradients on their rank (torch: DDP's ``no_sync()``; tensorflow's ``MultiWorkerMirroredStrategy``: a window
    per rank), one all-reduce per update. One non-finite rule, for every precision and on one process as in a
    job: a micro-step whose loss or gradients are NaN or infinite marks its window, and the window's N-th call
    skips the whole update and empties the window (the calls before it report ``last_step_finite`` True; the
    N-th reports False and, unless ``check_finite=False`` or float16 loss scaling skips silently, raises
    ``NonFiniteLossError``). Waiting for the update keeps the ranks of a job in lockstep: each rank's micro-steps
    check their own losses, and the update's guard agrees over the ranks with one all-reduce (no rank raises
    or skips alone). The window is optimizer state: ``optimizer.state_dict()`` and checkpoints taken between
    micro-steps keep it (``"accumulation"``), and a part-full window resumes only under the same ``accumulate``
    (``CheckpointStateError`` naming both), so a resumed run equals the uninterrupted one. It is one per
    optimizer, as torch's ``.grad``: every step of the optimizer with the same ``accumulate`` and precision
    (other train steps, ``fit``) adds to the same window, and the N-th micro-step from any of them updates; a
    step with another ``accumulate`` (1 too) or precision while the window is part-full is an
    ``AccumulationMismatchError`` naming both, before anything changes, at build or call.
    ``precision``: "32" (the default), "bf16-mixed" or "16-mixed" (a ``ud.Precision`` for loss-scaling
    settings): float32 weights, bfloat16/float16 compute, loss scaling for float16 (``unidl.precision``);
    ``step.loss_scale`` is the scale in force. The float16 loss scale belongs to the optimizer, one per
    optimizer as one ``torch.amp.GradScaler``: every float16 step that trains it (other train steps, ``fit``)
    moves the same scale, and one with other ``init_scale``/``growth_interval`` is a ``LossScaleMismatchError``.
    It is optimizer state too: ``optimizer.state_dict()`` and checkpoints keep its scale and growth tracker
    (``"loss_scaler"``), a resumed float16 step goes on from them instead of ``init_scale`` (one loaded before
    the step is built waits for it; a step without loss scaling keeps it untouched and saves it again), a
    malformed one or a tracker not below this step's ``growth_interval`` is a ``CheckpointStateError`` before
    anything changes. With ``accumulate`` too, as ``torch.amp.GradScaler`` with accumulation: the scaled
    gradients add up over the window, and its N-th call makes the window's one non-finite check (an overflow
    skips the whole update), clips, updates and moves the scale once.

    ``x`` and ``y`` may be NumPy arrays or the backend's own tensors; ``float(loss)`` works.
    On torch the step is eager; on tensorflow it is one ``tf.function`` graph (forward,
    gradients, in-graph variable updates), traced once per input rank and dtype; on keras it
    runs Keras's own ``Model.train_step`` (one graph likewise on Keras-TensorFlow).

    Example::

        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2))
        for t in range(500):
            loss = step(x, y)
    """
    # (a string, even 'no' or 'False', was taken as True; a bool only, as check_finite and check_trainable)
    eager = arguments.boolean("train_step", "eager", eager)
    return TrainStep(model, loss_fn, optimizer, eager=eager, precision=precision, check_finite=check_finite,
                     accumulate=accumulate)
