"""Training checkpoints: model, optimizer, RNG and data-loader state in one safetensors file per save.

Files are named ``checkpoint-{epoch:04d}-{step:07d}.safetensors`` and written atomically; only the
newest ``keep`` are kept. Loading from a directory takes the newest readable one, warning about
and skipping any that are corrupt (a crash mid-copy, a full disk), so training can always resume.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np

from unidl import random as unidl_random
from unidl.errors import CorruptFileError
from unidl.io.safetensors import check_readable_file, load_file, save_file
from unidl.serialization import MODEL_PREFIX, decode_metadata, encode_metadata, model_metadata, to_json

OPTIMIZER_PREFIX = "optimizer/"
_FILE_PATTERN = re.compile(r"^checkpoint-(\d{4,})-(\d{7,})\.safetensors$")


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
    found = []
    for name in os.listdir(directory):
        match = _FILE_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), os.path.join(directory, name)))
    return [path for _, _, path in sorted(found)]


def latest_checkpoint(directory) -> str | None:
    """Path of the newest checkpoint in ``directory``, or None if there is none (or no such directory)."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def _check_count(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def save_checkpoint(directory, model, optimizer=None, *, epoch: int = 0, step: int = 0, loader=None,
                    extra: dict | None = None, keep: int | None = 3) -> str:
    """Write a checkpoint of ``model`` (and ``optimizer``, ``loader``, unidl's RNG, ``extra``) into ``directory``.

    Returns the new file's path. ``extra`` must be JSON-serializable. After writing, all but the
    newest ``keep`` checkpoints of the directory are deleted (``keep=None`` keeps every one).
    """
    epoch, step = _check_count("epoch", epoch), _check_count("step", step)
    if keep is not None and (_check_count("keep", keep) < 1):
        raise ValueError(f"keep must be a positive integer or None, got {keep!r}")
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory!r} is a file, expected a checkpoint directory")
    os.makedirs(directory, exist_ok=True)

    tensors = {MODEL_PREFIX + name: value for name, value in model.state_dict().items()}
    metadata = model_metadata(model)
    metadata.update(kind="checkpoint", epoch=epoch, step=step, optimizer=None, loader=None,
                    rng=unidl_random.get_rng_state(), extra=extra)
    if optimizer is not None:
        state = optimizer.state_dict()
        slots = list(state["slots"])
        for index, param_slots in enumerate(slots):
            for slot_name, value in param_slots.items():
                tensors[f"{OPTIMIZER_PREFIX}{index}/{slot_name}"] = np.asarray(value)
        metadata["optimizer"] = {"class": type(optimizer).__name__, "lr": float(state["lr"]),
                                 "step": int(state["step"]), "num_params": len(slots), "hyper": state.get("hyper")}
    if loader is not None:
        metadata["loader"] = loader.state_dict()
    to_json(extra, "extra")
    to_json(metadata["optimizer"], "optimizer.state_dict() hyperparameters")
    to_json(metadata["loader"], "loader.state_dict()")

    path = os.path.join(directory, checkpoint_name(epoch, step))
    save_file(tensors, path, encode_metadata(metadata))
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            if os.path.abspath(old) != os.path.abspath(path):
                try:
                    os.unlink(old)
                except FileNotFoundError:
                    pass  # another process rotated it first
    return path


def _read_checkpoint(path: str) -> tuple[dict, dict]:
    tensors, file_metadata = load_file(path)
    metadata = decode_metadata(file_metadata, path)
    if metadata is None or metadata.get("kind") != "checkpoint":
        raise CorruptFileError(f"{path!r} is not a unidl checkpoint (its metadata does not say kind 'checkpoint')")
    for key in ("epoch", "step", "rng"):
        if key not in metadata:
            raise CorruptFileError(f"{path!r}: checkpoint metadata lacks {key!r}")
    return tensors, metadata


def _read_newest(directory: str) -> tuple[str, dict, dict]:
    candidates = list_checkpoints(directory)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint-*.safetensors files in directory {directory!r}")
    problems = []
    for path in reversed(candidates):
        try:
            return (path, *_read_checkpoint(path))
        except (CorruptFileError, FileNotFoundError) as error:
            problems.append(f"{path}: {error}")
            warnings.warn(f"skipping unreadable checkpoint {path!r} ({error}); trying the previous one",
                          RuntimeWarning, stacklevel=3)
    raise CorruptFileError(f"no readable checkpoint in {directory!r}:\n  " + "\n  ".join(problems))


def _optimizer_state(path: str, tensors: dict, saved: dict, optimizer) -> dict:
    if saved["class"] != type(optimizer).__name__:
        raise ValueError(f"{path!r} holds {saved['class']} state, which cannot load into {type(optimizer).__name__}")
    if saved["num_params"] != len(optimizer.params):
        raise ValueError(f"{path!r} holds optimizer state for {saved['num_params']} parameters but the "
                         f"{type(optimizer).__name__} has {len(optimizer.params)}")
    slots: list[dict] = [{} for _ in range(saved["num_params"])]
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            index, _, slot_name = key[len(OPTIMIZER_PREFIX):].partition("/")
            if not index.isdigit() or int(index) >= len(slots) or not slot_name:
                raise CorruptFileError(f"{path!r}: malformed optimizer tensor name {key!r}")
            slots[int(index)][slot_name] = value
    state = {"class": saved["class"], "step": saved["step"], "lr": saved["lr"], "slots": slots}
    if saved.get("hyper") is not None:
        state["hyper"] = saved["hyper"]
    return state


def load_checkpoint(path_or_directory, model, optimizer=None, loader=None) -> dict:
    """Restore ``model`` (strictly), and ``optimizer``, ``loader`` and unidl's RNG if given, from a checkpoint.

    Given a directory, the newest readable checkpoint is used; corrupt ones are skipped with a
    warning naming them. Returns ``{'epoch', 'step', 'extra', 'path', 'optimizer', 'loader', 'metadata'}``.
    Nothing is changed unless the whole checkpoint fits: model, optimizer and loader are checked first.
    """
    target = os.fspath(path_or_directory)
    if os.path.isdir(target):
        path, tensors, metadata = _read_newest(target)
    else:
        path = check_readable_file(target)
        tensors, metadata = _read_checkpoint(path)

    optimizer_state = None
    if optimizer is not None:
        if not metadata.get("optimizer"):
            raise ValueError(f"{path!r} holds no optimizer state, but an optimizer was given to restore")
        optimizer_state = _optimizer_state(path, tensors, metadata["optimizer"], optimizer)
    if loader is not None and metadata.get("loader") is None:
        raise ValueError(f"{path!r} holds no data-loader state, but a loader was given to restore")

    weights = {key[len(MODEL_PREFIX):]: value for key, value in tensors.items() if key.startswith(MODEL_PREFIX)}
    model.load_state_dict(weights, strict=True)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    unidl_random.set_rng_state(metadata["rng"])
    if loader is not None:
        loader.load_state_dict(metadata["loader"])
    return {"epoch": metadata["epoch"], "step": metadata["step"], "extra": metadata.get("extra"), "path": path,
            "optimizer": metadata.get("optimizer"), "loader": metadata.get("loader"), "metadata": metadata}
