"""Training checkpoints: model, optimizer, RNG, data-loader, scheduler and callback state in one safetensors file.

Files are named ``checkpoint-{epoch:04d}-{step:07d}.safetensors``, written atomically with a checksum
of every tensor and of the header; only the newest ``keep`` are kept. Loading checks everything
(checksums, every tensor's name, shape and dtype, and every piece of state) before it changes
anything; from a directory it takes the newest intact checkpoint, warning about each corrupt one
it skips, so training can always resume.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings

import numpy as np

from unidl.arguments import INT64_END
from unidl.distributed import process_group
from unidl import backends, random as unidl_random
from unidl.errors import CheckpointStateError, CorruptFileError, StateDictError
from unidl.nn.rollback import restored_on_failure
from unidl.io.safetensors import SafetensorsFile, StoredTensor, check_readable_file, save_file
from unidl.optim.optimizer import Optimizer
from unidl.training import job_window_state
from unidl.serialization import (MODEL_PREFIX, check_entries, checked_load, decode_metadata, encode_metadata,
                                 model_metadata, to_json)

OPTIMIZER_PREFIX = "optimizer/"
#: prefix of the summed gradients of an accumulation window in progress (``optimizer_window/<param index>``)
WINDOW_PREFIX = "optimizer_window/"
#: prefix of the training loss module's state, its parameters and buffers (``loss/<state-dict key>``: a
#: ``LinearCrossEntropyLoss``'s ``linear``, which the optimizer trains with the model)
LOSS_PREFIX = "loss/"
#: prefix of the model-shaped arrays a callback keeps (``callbacks/<class>#<count>/<state-dict key>``)
CALLBACK_PREFIX = "callbacks/"
_FILE_PATTERN = re.compile(r"^checkpoint-(\d{4,})-(\d{7,})\.safetensors$")
#: the type of each field of a data loader's state (``unidl.data.DataLoader.state_dict``, whose keys it must have)
_LOADER_FIELDS = {"epoch": int, "position": int, "seed": (int, type(None)), "shuffle": bool, "length": int,
                  "batch_size": int, "drop_last": bool, "sampler": dict}
MAX_LOADER_SEED = 2**64 - 1


def checkpoint_name(epoch: int, step: int) -> str:
    """The file name of the checkpoint taken at ``epoch``, ``step``."""
    return f"checkpoint-{epoch:04d}-{step:07d}.safetensors"


def list_checkpoints(directory) -> list[str]:
    """Paths of the checkpoints in ``directory``, oldest first (ordered by epoch, then step)."""
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        return []
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory!r} is a file, expected a checkpoint directory")
    found = [os.path.join(directory, name) for name in os.listdir(directory) if _FILE_PATTERN.match(name)]
    return sorted(found, key=lambda path: (_position(path), path))


def _position(path: str) -> tuple[int, int]:
    """(epoch, step) of a checkpoint file of ``list_checkpoints``, as it orders them (numbers, not names)."""
    match = _FILE_PATTERN.match(os.path.basename(path))
    return int(match.group(1)), int(match.group(2))


def latest_checkpoint(directory, verify: bool = True) -> str | None:
    """Path of the newest intact checkpoint in ``directory``, or None if there is none (or no such directory).

    With ``verify`` (the default) each candidate's checksums are checked, newest first; a corrupt
    one is skipped with a ``RuntimeWarning`` naming it. ``verify=False`` only looks at file names.
    """
    checkpoints = list_checkpoints(directory)
    if not verify:
        return checkpoints[-1] if checkpoints else None
    for path in reversed(checkpoints):
        try:
            with _open_checkpoint(path) as reader:
                reader.verify()
            return path
        except (CorruptFileError, FileNotFoundError, IsADirectoryError) as error:
            _warn_skipped(path, error, stacklevel=3)
    return None


def _warn_skipped(path: str, error: Exception, stacklevel: int) -> None:
    warnings.warn(f"skipping corrupt checkpoint {path!r} ({error}); trying the previous one",
                  RuntimeWarning, stacklevel=stacklevel)


def _check_count(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _stateful(callbacks) -> list[tuple[str, object]]:
    """``(key, callback)`` for the callbacks that have state to checkpoint (a ``state_dict`` method). The key is
    the class name and its count among them (``EarlyStopping#0``), so adding or removing a stateless callback
    at resume does not move any state to another callback."""
    seen: dict[str, int] = {}
    keyed = []
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):  # one callback, as fit takes it
        callbacks = [callbacks]
    for callback in callbacks or ():
        if callable(getattr(callback, "state_dict", None)):
            name = type(callback).__name__
            keyed.append((f"{name}#{seen.get(name, 0)}", callback))
            seen[name] = seen.get(name, 0) + 1
    return keyed


#: directories save_checkpoint warned about for holding checkpoints past the one it wrote (see there)
_warned_newer: set[str] = set()


def _check_arguments(function: str, model, optimizer, loader, scheduler, method: str, loss=None) -> None:
    """A ``TypeError`` naming the argument where ``model`` (or ``loss``, where given) is not a unidl module, or
    ``optimizer``, ``loader`` or ``scheduler`` (each optional) lacks the ``method`` a checkpoint calls (``state_dict``
    to save, ``load_state_dict`` to load; an optimizer its ``params`` too): a string, or a framework's own object,
    gave an ``AttributeError`` deep inside, after the checkpoint's directory was made."""
    from unidl.nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"{function}: model must be a unidl.nn.Module, got {type(model).__name__}")
    if loss is not None and not isinstance(loss, Module):
        raise TypeError(f"{function}: loss must be a unidl.nn.Module (a ud.nn loss), got {type(loss).__name__}")
    for name, value, needs, what in (("optimizer", optimizer, ("params", method), "a unidl.optim optimizer"),
                                     ("loader", loader, (method,), "a unidl.data.DataLoader"),
                                     ("scheduler", scheduler, (method,), "a unidl.optim.lr_scheduler scheduler")):
        if value is not None and not all(hasattr(value, attribute) for attribute in needs):
            native = backends.framework_of(type(value)) is not None
            raise TypeError(f"{function}: {name} must be {what}, got {type(value).__name__}"
                            + (" (a framework's own object, whose state unidl does not keep)" if native else ""))


def save_checkpoint(directory, model, optimizer=None, *, epoch: int = 0, step: int = 0, loader=None,
                    scheduler=None, callbacks=None, extra: dict | None = None, keep: int | None = 3,
                    loss=None) -> str:
    """Write a checkpoint of ``model`` (and ``optimizer``, ``loader``, ``scheduler``, the state of each of
    ``callbacks`` that has a ``state_dict``, and the model-shaped weights one keeps (``state_weights()``),
    unidl's RNG, ``extra``, and the parameters and buffers of ``loss``, a loss module the optimizer may train
    with the model) into ``directory``.

    Returns the new file's path. ``extra`` must be JSON-serializable. Stale temporary files of writers
    that died mid-save are removed first. After writing, all but the newest ``keep`` checkpoints of the
    directory are deleted (``keep=None`` keeps every one); one that cannot be deleted gives a warning.
    An OS error while writing (full disk, file-size limit) names the file and leaves the previous
    checkpoints as they were.
    """
    _check_arguments("save_checkpoint", model, optimizer, loader, scheduler, "state_dict", loss)
    epoch, step = _check_count("epoch", epoch), _check_count("step", step)
    if keep is not None and (_check_count("keep", keep) < 1):
        raise ValueError(f"keep must be a positive integer or None, got {keep!r}")
    directory = os.fspath(directory)
    group = process_group.current()
    job = group is not None and group.world_size > 1
    # an accumulation window in progress is each rank's own until its update: the job's, agreed by every rank
    window = job_window_state(optimizer) if job and optimizer is not None else None
    if job and group.rank != 0:  # rank 0 writes the job's checkpoint (the ranks hold the same state otherwise)
        process_group.barrier()
        return os.path.join(directory, checkpoint_name(epoch, step))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory!r} is a file, expected a checkpoint directory")

    tensors = {MODEL_PREFIX + name: value for name, value in model.state_dict().items()}
    if loss is not None:  # (a resume that restored the optimizer's slots of a loss's weights but not the weights
        # restarted them from their initial values)
        tensors.update({LOSS_PREFIX + name: value for name, value in loss.state_dict().items()})
    metadata = model_metadata(model)
    metadata.update(kind="checkpoint", epoch=epoch, step=step, optimizer=None, loader=None, scheduler=None,
                    callbacks=None, rng=unidl_random.get_rng_state(), extra=extra)
    if optimizer is not None:
        state = optimizer.state_dict()
        slots = list(state["slots"])
        for index, param_slots in enumerate(slots):
            for slot_name, value in param_slots.items():
                tensors[f"{OPTIMIZER_PREFIX}{index}/{slot_name}"] = np.asarray(value)
        metadata["optimizer"] = {"class": type(optimizer).__name__, "lr": float(state["lr"]),
                                 "step": int(state["step"]), "num_params": len(slots), "hyper": state.get("hyper")}
        for key in _OPTIONAL_OPTIMIZER_ENTRIES:  # per-parameter step counts (Adam), param groups' lrs and options,
            # the rates a schedule built after a load starts from
            if key in state:
                metadata["optimizer"][key] = state[key]
        window = window if job else state.get("accumulation")
        if window is not None:  # a train step's accumulation window in progress: its sums and count
            for index, value in enumerate(window["gradients"]):
                tensors[f"{WINDOW_PREFIX}{index}"] = np.asarray(value)
            metadata["optimizer"]["accumulation"] = {key: window[key] for key in ("accumulate", "micro_steps", "finite",
                                                                                  "has_gradient") if key in window}
        if state.get("loss_scaler") is not None:  # a float16 step's dynamic loss scale (two numbers)
            metadata["optimizer"]["loss_scaler"] = dict(state["loss_scaler"])
    if loader is not None:
        metadata["loader"] = loader.state_dict()
    if scheduler is not None:
        metadata["scheduler"] = {"class": type(scheduler).__name__, "state": scheduler.state_dict()}
    stateful = _stateful(callbacks)
    if stateful:
        metadata["callbacks"] = {key: callback.state_dict() for key, callback in stateful}
        for key, callback in stateful:  # model-shaped arrays a callback keeps (EarlyStopping's best weights)
            weights = callback.state_weights() if callable(getattr(callback, "state_weights", None)) else None
            for name, value in (weights or {}).items():
                tensors[f"{CALLBACK_PREFIX}{key}/{name}"] = np.asarray(value)
    to_json(extra, "extra")
    to_json(metadata["optimizer"], "optimizer.state_dict() hyperparameters")
    to_json(metadata["loader"], "loader.state_dict()")
    to_json(metadata["scheduler"], "scheduler.state_dict()")
    to_json(metadata["callbacks"], "callbacks' state_dict()")

    os.makedirs(directory, exist_ok=True)  # (once everything is known to be saveable: a refusal leaves no directory)
    path = os.path.join(directory, checkpoint_name(epoch, step))
    previous = list_checkpoints(directory)
    newer = [old for old in previous if _position(old) > (epoch, step)]
    if newer and os.path.abspath(directory) not in _warned_newer:  # (once per directory: every save would repeat it)
        _warned_newer.add(os.path.abspath(directory))
        warnings.warn(f"{directory!r} already holds checkpoints past the one written now ({os.path.basename(path)}), "
                      f"the newest {os.path.basename(newer[-1])!r}: another run's, or a run rolled back to an earlier "
                      f"checkpoint. load_checkpoint(directory), latest_checkpoint and resume_from='auto' take the "
                      f"newest by name, that one, and rotation (keep) deletes this run's first; give this run a "
                      f"directory of its own, or remove those files", RuntimeWarning, stacklevel=2)
    try:
        save_file(tensors, path, encode_metadata(metadata))
    except OSError as error:
        intact = (f"the previous checkpoint {previous[-1]!r} is intact" if previous
                  else "no checkpoint was written")
        message = f"{error.strerror or error}; {intact}"
        raise (OSError(error.errno, message) if error.errno is not None else type(error)(message)) from error
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            if os.path.abspath(old) != os.path.abspath(path):
                try:
                    os.unlink(old)
                except FileNotFoundError:
                    pass  # another process rotated it first
                except OSError as error:  # the new checkpoint is written: a rotation failure must not undo that
                    warnings.warn(f"could not delete old checkpoint {old!r} while keeping the newest {keep}: "
                                  f"{error}; {path!r} was written", RuntimeWarning, stacklevel=2)
    if job:
        process_group.barrier()  # no rank reads the directory before the checkpoint is in it
    return path


# ---- reading and checking ---------------------------------------------------

def _open_checkpoint(path: str) -> SafetensorsFile:
    reader = SafetensorsFile(path)
    try:
        metadata = decode_metadata(reader.metadata, path, reader.checksums is not None)
        if metadata is None or metadata.get("kind") != "checkpoint":
            raise CorruptFileError(f"{path!r} is not a unidl checkpoint (its metadata does not say kind "
                                   f"'checkpoint')")
        for key in ("epoch", "step", "rng"):
            if key not in metadata:
                raise CorruptFileError(f"{path!r}: checkpoint metadata lacks {key!r}")
        for key in ("epoch", "step"):  # (counters of int64 on every backend, as the optimizer's step)
            value = metadata[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < INT64_END:
                raise CorruptFileError(f"{path!r}: checkpoint {key} must be an integer in 0..2**63 - 1, got "
                                       f"{metadata[key]!r}")
    except BaseException:  # (its handle closed now, not when the reader is collected)
        reader.close()
        raise
    reader.unidl_metadata = metadata
    return reader


def _open_newest(directory: str) -> SafetensorsFile:
    """The newest checkpoint of ``directory`` whose header and checksums are intact, skipping (with a
    warning naming it) each newer one that is not."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint-*.safetensors files in directory {directory!r}")
    problems = []
    for path in reversed(candidates):
        reader = None
        try:
            reader = _open_checkpoint(path)
            reader.verify()
            return reader
        except (CorruptFileError, FileNotFoundError, IsADirectoryError) as error:
            if reader is not None:
                reader.close()
            problems.append(f"{path}: {error}")
            _warn_skipped(path, error, stacklevel=4)
    raise CorruptFileError(f"no readable checkpoint in {directory!r}:\n  " + "\n  ".join(problems))


#: the entries of ``Optimizer.state_dict()`` that a checkpoint keeps in its metadata where the state has them
_OPTIONAL_OPTIMIZER_ENTRIES = ("param_steps", "param_groups", "initial_lrs")


def _takes_stored_tensors(optimizer) -> bool:
    """Whether ``optimizer``'s ``load_state_dict`` and ``check_state_dict`` are unidl's ``Optimizer``'s, which take
    a slot as a ``StoredTensor`` (read by ``np.asarray`` as it is written), not one a subclass overrides."""
    return isinstance(optimizer, Optimizer) and all(
        getattr(type(optimizer), name) is getattr(Optimizer, name) for name in ("load_state_dict", "check_state_dict"))


def _optimizer_state(reader: SafetensorsFile, saved, optimizer) -> dict:
    """The optimizer's canonical state from the file, checked against ``optimizer`` (nothing changes)."""
    path = reader.path
    if not isinstance(saved, dict) or not isinstance(saved.get("class"), str) or not {"lr", "step"} <= set(saved):
        raise CorruptFileError(f"{path!r}: malformed optimizer metadata {saved!r}")
    if saved["class"] != type(optimizer).__name__:
        raise CheckpointStateError(f"{path!r} holds {saved['class']} state, which cannot load into "
                                   f"{type(optimizer).__name__}")
    count = saved.get("num_params")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise CorruptFileError(f"{path!r}: optimizer num_params must be a non-negative integer, got {count!r}")
    if count != len(optimizer.params):
        raise CheckpointStateError(f"{path!r} holds optimizer state for {count} parameters but the "
                                   f"{type(optimizer).__name__} has {len(optimizer.params)}")
    names: list[dict] = [{} for _ in range(count)]
    for key in reader.entries:
        if key.startswith(OPTIMIZER_PREFIX):
            index, _, slot_name = key[len(OPTIMIZER_PREFIX):].partition("/")
            # the index as save_checkpoint writes it: ASCII digits, no leading zero ('03' and Arabic-Indic digits
            # named slot 3 twice, the later one winning)
            if (not (index.isascii() and index.isdigit()) or index != str(int(index)) or int(index) >= count
                    or not slot_name):
                raise CorruptFileError(f"{path!r}: malformed optimizer tensor name {key!r}")
            names[int(index)][slot_name] = key
    optional = {key: saved[key] for key in _OPTIONAL_OPTIMIZER_ENTRIES if key in saved}
    if saved.get("hyper") is not None:  # (the options a load restores, checked with the rest)
        optional["hyper"] = saved["hyper"]
    # a unidl optimizer's slots are ``StoredTensor``s: their shapes and dtypes are checked here from the header, their
    # bytes against their checksums by ``reader.verify()``; load_checkpoint stages them (reads each into an array its
    # optimizer's load may adopt, Backend.given_slot) once everything is checked, so that each is held once, not read
    # and then converted (Adam's two slots of every weight, held twice over, peaked at 1.35x the file on torch).
    # Only unidl's own load and check take them: a
    # subclass's (``SignMomentum`` of tests/optim) may use any NumPy method on a slot, and gets arrays
    read = StoredTensor if _takes_stored_tensors(optimizer) else SafetensorsFile.read
    slots = [{slot: read(reader, key) for slot, key in entry.items()} for entry in names]
    state = {"class": saved["class"], "step": saved["step"], "lr": saved["lr"], "slots": slots, **optional}
    if callable(getattr(optimizer, "check_state_dict", None)):  # (before the window's gradients are read)
        optimizer.check_state_dict(state)
    window = saved.get("accumulation")
    if window is not None:
        keys = [f"{WINDOW_PREFIX}{index}" for index in range(count)]
        if not isinstance(window, dict) or any(key not in reader.entries for key in keys):
            raise CorruptFileError(f"{path!r}: optimizer accumulation window {window!r} without its {count} "
                                   f"{WINDOW_PREFIX}* gradients")
        state["accumulation"] = dict(window, gradients=[reader.read(key) for key in keys])
    if saved.get("loss_scaler") is not None:
        state["loss_scaler"] = saved["loss_scaler"]
    if callable(getattr(optimizer, "check_state_dict", None)):
        optimizer.check_state_dict(state)
    return state


def check_loader_state(loader, state) -> None:
    """Raise ``CheckpointStateError`` unless ``loader.load_state_dict(state)`` would succeed; changes nothing."""
    from unidl.data import DataLoader
    from unidl.data.dataloader import sampler_mismatch, seed_problem

    _check_state(loader, state, "data-loader state")
    if not isinstance(loader, DataLoader):
        return
    mine = loader.state_dict()
    if not isinstance(state, dict) or set(state) - {"sampler"} != set(mine) - {"sampler"}:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointStateError(f"data-loader state must have exactly the keys {sorted(mine)}, found {found}")
    for key, kind in _LOADER_FIELDS.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointStateError(f"data-loader state {key} must be of type "
                                       f"{getattr(kind, '__name__', 'int or None')}, got {value!r}")
    if not 0 <= state["epoch"] < INT64_END:
        raise CheckpointStateError(f"data-loader state epoch must be an integer in 0..2**63 - 1, got "
                                   f"{state['epoch']!r}")
    for key in ("shuffle", "length", "batch_size", "drop_last"):
        if key in mine and state[key] != mine[key]:
            raise CheckpointStateError(f"the checkpoint's data loader has {key}={state[key]!r} but this loader has "
                                       f"{key}={mine[key]!r}; resuming needs the same dataset length, batch_size, "
                                       f"shuffle and drop_last")
    # (after the settings: a shuffled loader given an unshuffled one's checkpoint is told of shuffle, as
    # DataLoader.load_state_dict tells it)
    problem = seed_problem(state["seed"], loader.shuffle)
    if problem is not None:
        raise CheckpointStateError(f"data-loader state {problem}")
    if state["seed"] is not None and not state["seed"] <= MAX_LOADER_SEED:
        raise CheckpointStateError(f"data-loader state seed must lie in [0, 2**64), got {state['seed']!r}")
    mismatch = sampler_mismatch(state, mine)
    if mismatch is not None:
        raise CheckpointStateError(f"the checkpoint's data loader: {mismatch}")
    if not 0 <= state["position"] <= len(loader):
        raise CheckpointStateError(f"data-loader state position {state['position']} is outside 0..{len(loader)} "
                                   f"(batches per epoch)")


def _check_state(owner, state, what: str) -> None:
    check = getattr(owner, "check_state_dict", None)
    if callable(check):
        try:
            check(state)
        except StateDictError:
            raise
        except (TypeError, ValueError, KeyError) as error:
            raise CheckpointStateError(f"{what}: {error}") from None


def load_checkpoint(path_or_directory, model, optimizer=None, loader=None, *, scheduler=None, callbacks=None,
                    check=None, loss=None) -> dict:
    """Restore ``model`` (strictly), and ``optimizer``, ``loader``, ``scheduler``, ``callbacks``, unidl's RNG and
    ``loss``'s parameters and buffers (strictly, where the checkpoint holds a loss's state: one written without it
    leaves ``loss`` as it is), from a checkpoint. A checkpoint that holds a loss's state, loaded with an optimizer
    that trains parameters outside ``model`` but without ``loss``, is a ``CheckpointStateError`` before anything
    changes: the optimizer's slots for those parameters would be restored while their values stayed as built (a
    resumed ``LinearCrossEntropyLoss`` restarting its ``linear`` under restored momentum); without such parameters
    the loss's state (a class ``weight`` buffer, a setting the caller builds the loss with) is left unread.

    Given a directory, the newest intact checkpoint is used; corrupt ones (bad checksum, truncated,
    malformed) are skipped with a warning naming them. Returns ``{'epoch', 'step', 'extra', 'path',
    'optimizer', 'loader', 'metadata'}``.

    All or nothing: the checksums, every model tensor's name, shape and dtype, the optimizer's slots,
    the RNG, loader, scheduler and callback states (and ``check(metadata, path)``, if given) are all checked
    before the first object changes (a model with load hooks, whose hooks take the state dict, has its tensors
    checked by its ``load_state_dict``, after the generators were set: a refusal puts them back); any failure
    raises (``CorruptFileError``, ``StateDictError``) with the model, optimizer, loader and generators untouched.
    The generators change first (a framework that still refuses its state puts every generator back itself, before
    anything else changed), then the model: its variables, then each module's ``set_extra_state``, as
    ``load_state_dict`` orders them (torch's order). Where
    ``set_extra_state`` (the user's code, which may refuse the state it is given) raises, the model's variables and
    extra state are put back as they were, bit for bit (a model with extra state is copied to the host first), and
    the generators too, before anything else changed, so that exception, too, leaves everything as it was.
    Once everything is checked, every tensor (the model's, the optimizer's slots, the callbacks' weights) is read
    into fresh memory and its checksum verified again, before the first object changes: an I/O error, a
    ``MemoryError`` or another program changing the file in place during the load (a ``CorruptFileError`` naming
    the tensor) leaves the generators, model, loader, optimizer, scheduler and callbacks as they were. The staged
    tensors cost about the file's size beyond the model at the peak; each is freed (or adopted as its variable's
    memory) as it is written. A loss's state is loaded before the model, its variables copied to the host first, so
    that a model that still refuses its load (its ``set_extra_state``) puts the loss back too.
    """
    _check_arguments("load_checkpoint", model, optimizer, loader, scheduler, "load_state_dict", loss)
    target = os.fspath(path_or_directory)
    if os.path.isdir(target):
        reader = _open_newest(target)
    else:
        reader = _open_checkpoint(check_readable_file(target))
        reader.verify()
    path, metadata = reader.path, reader.unidl_metadata

    # ---- check everything ----
    names = {key[len(MODEL_PREFIX):]: key for key in reader.entries if key.startswith(MODEL_PREFIX)}
    load_model = checked_load(model, reader, names, what=repr(path))
    optimizer_state = None
    if optimizer is not None:
        if not metadata.get("optimizer"):
            raise CheckpointStateError(f"{path!r} holds no optimizer state, but an optimizer was given to restore")
        optimizer_state = _optimizer_state(reader, metadata["optimizer"], optimizer)
    unidl_random.check_rng_state(metadata["rng"])
    if loader is not None:
        if metadata.get("loader") is None:
            raise CheckpointStateError(f"{path!r} holds no data-loader state, but a loader was given to restore")
        check_loader_state(loader, metadata["loader"])
    scheduler_state = None
    if scheduler is not None:
        saved = metadata.get("scheduler")
        if not isinstance(saved, dict) or saved.get("class") != type(scheduler).__name__:
            raise CheckpointStateError(f"{path!r} holds scheduler state {saved!r}, which does not fit a "
                                       f"{type(scheduler).__name__}")
        scheduler_state = saved.get("state")
        _check_state(scheduler, scheduler_state, f"{path!r} scheduler state")
    callback_states = []
    saved_callbacks = metadata.get("callbacks") or {}
    if not isinstance(saved_callbacks, dict):
        raise CorruptFileError(f"{path!r}: callbacks state must be an object, got {type(saved_callbacks).__name__}")
    for key, callback in _stateful(callbacks):
        if key not in saved_callbacks:
            warnings.warn(f"{path!r} holds no state for callback {key}; it starts afresh", RuntimeWarning,
                          stacklevel=2)
            continue
        _check_state(callback, saved_callbacks[key], f"{path!r} state of callback {key}")
        prefix = f"{CALLBACK_PREFIX}{key}/"
        weight_names = {name[len(prefix):]: name for name in reader.entries if name.startswith(prefix)}
        if weight_names:
            if not callable(getattr(callback, "load_state_weights", None)):
                raise CheckpointStateError(f"{path!r} holds weights for callback {key}, which cannot take them")
            check_entries(model, {k: reader.entries[name] for k, name in weight_names.items()},
                          what=f"{path!r} weights of callback {key}")
        callback_states.append((callback, saved_callbacks[key], weight_names))
    if check is not None:
        check(metadata, path)
    load_loss = None  # (after ``check``: fit's refusal of another loss names the loss, not its tensors)
    loss_names = {key[len(LOSS_PREFIX):]: key for key in reader.entries if key.startswith(LOSS_PREFIX)}
    if loss is not None and loss_names:
        load_loss = checked_load(loss, reader, loss_names, what=f"{path!r} loss state")
    elif loss_names and optimizer is not None:
        owned = {id(p) for p in model.parameters()}
        if any(id(p) not in owned for p in getattr(optimizer, "params", None) or ()):
            raise CheckpointStateError(
                f"{path!r} holds the state of the loss its run trained ({', '.join(sorted(loss_names.values()))}) "
                f"and the optimizer trains parameters outside the model: pass loss= (the loss module) so that their "
                f"values are restored with the optimizer's slots")

    # ---- then read every tensor into fresh memory, its checksum verified again (an I/O error, a MemoryError or a
    # file changed in place since the checks raises here, before anything changed): the model's, the optimizer's
    # slots (given away to the optimizer's load, each freed as it is written) and the callbacks' weights ----
    load_model.stage()
    if load_loss is not None:
        load_loss.stage()
    for entry in (optimizer_state or {}).get("slots", ()):
        for value in entry.values():
            if isinstance(value, StoredTensor):
                value.stage()
    callback_weights = [{k: reader.read(name) for k, name in weight_names.items()} or None
                        for _, _, weight_names in callback_states]

    # ---- then change: the generators first (a framework's RNG can still refuse its state, and then rolls itself
    # back, before anything else changed), then the model, module by module as torch orders them (the user's
    # set_extra_state, or a load post-hook's keys, can still refuse it: the model's rollback and the generators'
    # previous state undo the load); the rest was checked and takes its state as it is ----
    previous_rng = unidl_random.get_rng_state()
    unidl_random.set_rng_state(metadata["rng"])
    try:
        # the loss's variables copied to the host first (whole), where it loads: a model that refuses its state after
        # the loss took its own puts the loss back too
        with restored_on_failure(loss, whole=True) if load_loss is not None else contextlib.nullcontext():
            if load_loss is not None:
                load_loss()
            load_model()
    except BaseException:
        unidl_random.set_rng_state(previous_rng)
        raise
    if loader is not None:
        loader.load_state_dict(metadata["loader"])
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        del optimizer_state  # (its staged slots that the optimizer did not adopt)
    if scheduler is not None:
        scheduler.load_state_dict(scheduler_state)
    for (callback, state, _), weights in zip(callback_states, callback_weights):
        callback.load_state_dict(state)
        if callable(getattr(callback, "load_state_weights", None)):
            callback.load_state_weights(weights)
    return {"epoch": metadata["epoch"], "step": metadata["step"], "extra": metadata.get("extra"), "path": path,
            "optimizer": metadata.get("optimizer"), "loader": metadata.get("loader"), "metadata": metadata}
