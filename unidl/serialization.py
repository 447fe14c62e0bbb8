"""``save`` / ``load``: a model as one safetensors file, readable on any backend.

The file holds the ``state_dict()`` (canonical layout) and, in its ``__metadata__``, JSON naming
the model's class and constructor arguments. ``load`` rebuilds the model on the current backend
from a registry of known classes only: nothing named in a file is ever imported, and pickles are
refused unless the caller opts in with ``allow_pickle=True``.
"""

from __future__ import annotations

import contextlib
import json
import pickle

import numpy as np

from unidl import arguments
from unidl.errors import CorruptFileError, StateDictError, UnknownModelError, UnsafeFormatError
from unidl.io.safetensors import SafetensorsFile, check_readable_file, is_safetensors, load_file, save_file
from unidl.io.torch_checkpoint import read_torch_state_dict
from unidl.nn import loading
from unidl.nn.incompatible_keys import IncompatibleKeys
from unidl.nn.rollback import restored_on_failure

#: 2: every tensor and the header carry a crc32 (version-1 files, without them, still load)
FORMAT_VERSION = 2
CANONICAL_LAYOUT = "canonical (NCHW activations, OIHW kernels, (out,in) linear weights)"
#: key of ``__metadata__`` under which unidl keeps its JSON
METADATA_KEY = "unidl"
#: prefix of the model's tensors inside a checkpoint file
MODEL_PREFIX = "model/"

_registry: dict[str, type] = {}


# ---- model registry ------------------------------------------------------

def register_model(cls: type | None = None, name: str | None = None):
    """Let ``unidl.load`` rebuild models of class ``cls`` (registered under ``name``, default its ``__name__``).

    Usable as a decorator, bare or as ``@register_model(name="...")``. The built-in ``unidl.models``
    are known without registering. Example::

        @ud.register_model
        class MyNet(ud.nn.Module):
            def __init__(self, width):
                super().__init__()
                self.config = {"width": width}
                ...
    """
    from unidl.nn.module import Module

    if cls is None:
        return lambda decorated: register_model(decorated, name)
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"register_model expects a subclass of unidl.nn.Module, got {cls!r}")
    name = name or cls.__name__
    known = _registry.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"a different class is already registered as {name!r} "
                         f"({known.__module__}.{known.__qualname__}); pass name= to register {cls.__qualname__} under another name")
    _registry[name] = cls
    return cls


def _registered_name(cls: type) -> str:
    for name, known in _registry.items():
        if known is cls:
            return name
    return cls.__name__


def _is_builtin_module(module: str) -> bool:
    """Whether ``module`` is one of unidl's built-in models (``unidl.models`` and the modules in it)."""
    return module == "unidl.models" or module.startswith("unidl.models.")


def _model_class(name: str, defined_in: str | None, path: str) -> type:
    """The class registered as ``name``, else the built-in ``unidl.models.<name>``; never an import from the file.
    The module the file names (``class_module``) tells a built-in from a user's class of the same name: a file of
    a built-in loads as the built-in even where a user's class is registered under its name, and a file of a
    user's class never as the built-in of its name (each rebuilt the other quietly, with other outputs)."""
    from unidl import models

    builtin = getattr(models, name) if name in getattr(models, "__all__", ()) else None
    of_builtin = defined_in is not None and _is_builtin_module(defined_in)
    registered = _registry.get(name)
    if registered is not None and not (of_builtin and builtin is not None):
        return registered
    if builtin is not None and (defined_in is None or of_builtin):  # (a file of before class_module: the built-in)
        return builtin
    where = f" (defined in module {defined_in!r} when saved)" if defined_in else ""
    raise UnknownModelError(
        f"{path!r} holds a model of class {name!r}{where}, which is not registered; unidl never imports "
        f"code named in a file. Import that class yourself and call ud.register_model({name}) before "
        f"ud.load, or build the model and call ud.load_weights(model, {path!r})")


# ---- metadata ------------------------------------------------------------

def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def to_json(value, what: str) -> str:
    """``value`` as JSON text (NumPy scalars and arrays become plain numbers and lists), or a TypeError naming ``what``."""
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serializable (numbers, strings, lists, dicts): {error}") from None


def model_metadata(model) -> dict:
    """What ``load`` needs to rebuild ``model``, and what a reader needs to trust the numbers."""
    from unidl import __version__

    config = getattr(model, "config", None)
    to_json(config, f"{type(model).__name__}.config")
    return {
        "format": "unidl",
        "format_version": FORMAT_VERSION,
        "kind": "model",
        "layout": CANONICAL_LAYOUT,
        "class": _registered_name(type(model)),
        "class_module": type(model).__module__,
        "config": config,
        "dtype": _float_dtype(model),
        "backend": model._backend.name,
        "versions": dict(model._backend.versions()),
        "unidl_version": __version__,
    }


def _float_dtype(model) -> str | None:
    """The one float dtype of ``model``'s parameters and buffers ('float32', 'float64'), which ``load`` builds the
    model in; None where it has none or several."""
    from unidl.dtype_kinds import dtype_name, is_floating

    names = {dtype_name(v.dtype) for _, v in model._state_variables() if is_floating(v.dtype)}
    return names.pop() if len(names) == 1 else None


def encode_metadata(metadata: dict) -> dict[str, str]:
    """unidl's metadata as safetensors ``__metadata__`` (string values only)."""
    return {METADATA_KEY: to_json(metadata, "metadata")}


def decode_metadata(file_metadata: dict[str, str], path: str, checksummed: bool | None = None) -> dict | None:
    """unidl's metadata from a safetensors ``__metadata__``; None when the file was not written by unidl.

    ``checksummed``: whether the file carried checksums (None: not known here). A file of format
    version 2 or later without them was damaged (its checksum entries lost), and is refused.
    """
    if METADATA_KEY not in file_metadata:
        return None
    try:
        metadata = json.loads(file_metadata[METADATA_KEY])
    except (ValueError, RecursionError) as error:
        raise CorruptFileError(f"{path!r}: unidl metadata is not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"{path!r}: unidl metadata is a JSON {type(metadata).__name__}, expected an object")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CorruptFileError(f"{path!r} has unidl format version {version!r}; this unidl reads versions up to "
                               f"{FORMAT_VERSION} (upgrade unidl to read newer files)")
    if checksummed is False and version >= 2:
        raise CorruptFileError(f"{path!r} says unidl format version {version}, whose files carry checksums, "
                               f"but it has none (damaged header)")
    if metadata.get("layout", CANONICAL_LAYOUT) != CANONICAL_LAYOUT:
        raise CorruptFileError(f"{path!r} declares layout {metadata.get('layout')!r}; expected {CANONICAL_LAYOUT!r}")
    return metadata


# ---- reading weights -----------------------------------------------------

_PICKLE_PREFIXES = tuple(b"\x80" + bytes([protocol]) for protocol in range(2, 6))
#: what a legacy (non-zip) torch.save file begins with: a pickled magic number, 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_PREFIX = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_ZIP_PREFIX = b"PK\x03\x04"


def _refuse_pickle(path: str, kind: str) -> UnsafeFormatError:
    return UnsafeFormatError(
        f"{path!r} is not a safetensors file but {kind}. Unpickling a file can run arbitrary code, so "
        f"unidl refuses it by default. If you trust where the file came from, pass allow_pickle=True "
        f"(it must hold a pickled dict of NumPy arrays); better, convert it once with ud.save(model, path)")


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor inside a trusted pickle
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read_pickle(path: str) -> tuple[dict, dict | None]:
    with open(path, "rb") as handle:
        try:
            payload = pickle.load(handle)
        except Exception as error:
            raise CorruptFileError(f"{path!r} could not be unpickled: {type(error).__name__}: {error}") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        metadata = payload.get(METADATA_KEY) if isinstance(payload.get(METADATA_KEY), dict) else None
        payload = payload["state_dict"]
    else:
        metadata = None
    if not isinstance(payload, dict) or not all(isinstance(key, str) for key in payload):
        raise CorruptFileError(f"{path!r} unpickled to {type(payload).__name__}, expected a dict of name -> array")
    return {key: _as_array(value) for key, value in payload.items()}, metadata


def read_weights(path, *, allow_pickle: bool = False) -> tuple[dict[str, np.ndarray], dict | None]:
    """(state dict, unidl metadata or None) from a unidl/safetensors file (or, if allowed, a pickle)."""
    path = check_readable_file(path)
    if not is_safetensors(path):
        with open(path, "rb") as handle:
            head = handle.read(len(_TORCH_LEGACY_PREFIX))
        if head.startswith(_ZIP_PREFIX):
            _refuse_npz(path)
            return read_torch_state_dict(path), None
        if head == _TORCH_LEGACY_PREFIX:  # (its storages' sizes, read before any check, are the file's to choose)
            raise UnsafeFormatError(
                f"{path!r} is a torch.save file in PyTorch's legacy format (before 1.6, or "
                f"_use_new_zipfile_serialization=False), which unidl does not read: re-save it in the zip format "
                f"where torch is installed, torch.save(torch.load(path, weights_only=True), new_path), or as "
                f"safetensors")
        if head.startswith(_PICKLE_PREFIXES) and not allow_pickle:
            raise _refuse_pickle(path, "a pickle")
        if allow_pickle:
            return _read_pickle(path)
        # not a recognizable pickle either: let the safetensors reader say precisely what is wrong
        try:
            load_file(path)
        except CorruptFileError as error:
            raise CorruptFileError(f"{error} (if it is a pickle from an older protocol: unpickling can run "
                                   f"arbitrary code; pass allow_pickle=True only if you trust the file. A program "
                                   f"that ud.export wrote, ONNX or StableHLO, holds no weights to load: run it with "
                                   f"its runtime)") from None
    reader, metadata, names = open_weights(path)
    return {key: array for key, (_, array) in zip(names, reader.tensors(list(names.values())))}, metadata


def _refuse_npz(path: str) -> None:
    """``CorruptFileError`` naming the format of a NumPy ``.npz`` archive (``np.savez`` of a state dict: ``.npy``
    entries at the archive's root), which shares the zip signature of a ``torch.save`` file and got torch's error
    about a missing subdirectory; it says how to load one and how to save weights unidl reads."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # (read_torch_state_dict names what is wrong with it)
    if names and all(name.endswith(".npy") and "/" not in name for name in names):
        raise CorruptFileError(
            f"{path!r} is a NumPy .npz archive ({len(names)} arrays), not a weights file that ud.load_weights reads: "
            f"load it with model.load_state_dict(dict(np.load(path, allow_pickle=False))), or save weights with "
            f"ud.save(model, path) (safetensors)")


def open_weights(path) -> tuple[SafetensorsFile, dict | None, dict[str, str]]:
    """(checked reader, unidl metadata or None, {state-dict key: tensor name in the file}) of a weights
    or checkpoint file; only the header has been read."""
    reader = SafetensorsFile(path)
    metadata = decode_metadata(reader.metadata, reader.path, reader.checksums is not None)
    if metadata is not None and metadata.get("kind") == "checkpoint":
        names = {name[len(MODEL_PREFIX):]: name for name in reader.entries if name.startswith(MODEL_PREFIX)}
    else:
        names = {name: name for name in reader.entries}
    return reader, metadata, names


# ---- checking a file against a model, before anything changes -------------

def _dtype_kind(variable) -> str:
    """'f', 'i', 'u' or 'b' for a native variable, read from its dtype's name (no copy of its value)."""
    dtype = variable.dtype
    name = getattr(dtype, "name", None) or str(dtype).replace("torch.", "")
    if "bfloat16" in name:
        return "f"
    try:
        return np.dtype(name).kind
    except TypeError:
        return "f"


_FILE_KINDS = {"BOOL": "b", "BF16": "f", "F16": "f", "F32": "f", "F64": "f"}


def check_entries(model, entries: dict[str, tuple[str, tuple]], strict: bool = True,
                  what: str | None = None) -> IncompatibleKeys:
    """Raise ``StateDictError`` unless tensors ``{key: (safetensors dtype, shape)}`` load into ``model``:
    every name, shape and dtype. The key rule is ``load_state_dict``'s (``loading.walk``: a key under a child set to
    None is no unexpected key), and so is the dtype rule (``nn.module._loadable_values``), torch's:
    any number into a floating-point variable (cast, as an in-memory dict or a ``.pth`` file loads), integers or
    booleans into an integer variable, never floats (they would be truncated). A module's extra state
    (``set_extra_state``) takes the tensor under its key as it is. Returns the missing and unexpected keys (those a
    load that is not strict leaves)."""
    from unidl.nn.module import ExtraState

    found = loading.walk(model, entries)
    mismatched, wrong_kind = [], []
    for key, variable in found.entries.items():
        if key in entries and not isinstance(variable, ExtraState):
            dtype_name, shape = entries[key]
            expected = tuple(variable.shape)
            if expected != tuple(shape):
                mismatched.append(f"{key}: expected shape {expected}, found {tuple(shape)}")
            kind, file_kind = _dtype_kind(variable), _FILE_KINDS.get(dtype_name, dtype_name[:1].lower())
            if kind in "iu" and file_kind not in "iub":
                wrong_kind.append(f"{key}: expected an integer tensor, found dtype {dtype_name}")
    problems = []
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if wrong_kind:
        problems.append("dtype mismatches: " + "; ".join(wrong_kind))
    problems += loading.key_problems(strict, found.missing, found.unexpected, found.entries,
                                     {key: entries[key][1] for key in found.unexpected if key in entries})
    if problems:
        raise StateDictError(f"cannot load {what or 'state dict'} into {type(model).__name__}: " + " | ".join(problems))
    return IncompatibleKeys(found.missing, found.unexpected)


def check_values(model, reader: SafetensorsFile, names: dict[str, str], what: str | None = None) -> None:
    """Raise ``StateDictError`` where the file's uint64 tensor for an integer variable holds counts past int64 (they
    would wrap negative), as ``load_state_dict`` refuses them: those tensors are read (a buffer's count: small),
    nothing is written. Call beside ``check_entries``, before the first variable changes."""
    own = dict(model._state_variables())
    beyond = []
    for key in [key for key in names if key in own and reader.entries[names[key]][0] == "U64"
                and _dtype_kind(own[key]) in "iu"]:  # (into a float variable they are cast, as from memory)
        top = reader.read(names[key]).max(initial=0)
        if top >> 63:
            beyond.append(f"{key}: values beyond int64 (up to {top})")
    if beyond:
        raise StateDictError(f"cannot load {what or repr(reader.path)} into {type(model).__name__}: dtype "
                             f"mismatches: " + "; ".join(beyond))


def stage_tensors(model, reader: SafetensorsFile, names: dict[str, str]) -> dict[str, np.ndarray]:
    """``{state-dict key: array}`` of the file's tensors that ``model`` loads, each read into a new (64-byte aligned)
    buffer and its checksum verified, in the order ``stream_into`` writes them: every read (an I/O error, a
    ``MemoryError``, a file changed since the checks) happens here, before the model changes."""
    return {key: reader.read(names[key]) for key, _ in model._state_variables(extra_state="set_extra_state")
            if key in names}


def stream_into(model, keys, take, written: list | None = None) -> None:
    """Write the tensors of ``keys`` into ``model``, module by module in torch's order (a module's parameters, buffers
    and extra state, then its children's: a ``set_extra_state`` that reads its own weight sees the loaded one, a
    parent's reading a child's the one before, as ``load_state_dict``'s), one at a time: ``take(key)`` gives each
    (read from the file then, or popped from the staged tensors, ``stage_tensors``), its buffer handed to its variable
    (``Backend.donated_tensor``: TensorFlow and Keras keep it as the variable's memory, torch copies it in place) and
    released before the next, so at most one tensor's bytes beyond those ``take`` still holds are outside the model.
    Call only after ``check_entries``, ``reader.verify()`` and ``check_values``; ``set_extra_state`` is the user's code
    and may refuse what it is given (a version check): a loader into an existing model calls this inside
    ``restored_on_failure``. Each key is appended to ``written`` once its tensor is in the model (what a failure
    part-way has changed)."""
    from unidl.nn.module import ExtraState

    backend = model._backend
    for key, own in model._state_variables(extra_state="set_extra_state"):
        if key not in keys:
            continue
        if isinstance(own, ExtraState):
            own.module.set_extra_state(take(key))
        else:  # (a file's tensor read through the reader's own handle: the file it checked)
            backend.assign(own, backend.donated_tensor(take(key)))
        if written is not None:
            written.append(key)


class ModelLoad:
    """The load of a checked file into a model. Called, it reads each tensor as it writes it (``stream_into``: one
    tensor at a time beyond the model; an I/O error, a ``MemoryError`` or a file changed in place during the reads
    leaves the model partly loaded, which ``ud.load``'s new model, then dropped, never shows, and which the error
    raised into an existing model says in a note naming the tensors written: ``_partly_loaded``). ``stage()`` first
    reads every tensor into fresh memory (checksums verified), about the file's size, and the call then only writes
    them, freeing each as it is written: ``load_checkpoint`` stages the model and the optimizer before it changes
    anything, so such a failure leaves every object as it was. Returns the missing and unexpected keys."""

    def __init__(self, model, reader: SafetensorsFile, names: dict[str, str], strict: bool, keys, restore: bool):
        self.model, self.reader, self.names, self.strict, self.keys, self.restore = \
            model, reader, names, strict, keys, restore
        self.staged = None

    def stage(self) -> None:
        if self.keys is None:  # (load hooks: the whole state dict, for the model's load_state_dict)
            self.staged = {key: self.reader.read(name) for key, name in self.names.items()}
        else:
            self.staged = stage_tensors(self.model, self.reader, self.names)

    def __call__(self):
        staged, self.staged = self.staged, None  # (the staged buffers freed as they are written, not held to the end)
        if self.keys is None:
            if staged is None:
                staged = {key: self.reader.read(name) for key, name in self.names.items()}
            return self.model.load_state_dict(staged, strict=self.strict)
        if staged is None:
            keys, take = self.names, lambda key: self.reader.read(self.names[key])
        else:
            keys, take = staged, staged.pop
        written, undone = [], False
        try:
            with restored_on_failure(self.model) if self.restore else contextlib.nullcontext(False) as undone:
                stream_into(self.model, keys, take, written)
        except BaseException as error:
            if written and self.restore and not undone:
                try:
                    note = _partly_loaded(self.model, self.reader.path, self.names, written, staged is not None)
                except Exception:  # (a note that cannot be made never replaces the error it would explain)
                    note = None
                if note is not None:
                    error.add_note(note)
            raise
        return self.keys


def _partly_loaded(model, path: str, keys, written: list[str], staged: bool) -> str:
    """The note on an error raised while a checked file was written into an existing model after ``written``:
    streamed (``ud.load_weights(staged=False)``), nothing holds those tensors' earlier values (the memory bound of
    one tensor beyond the model); staged, every read had passed and a write failed (a device's allocation, Ctrl-C).
    Either way the user is told which tensors changed rather than left to find out."""
    total = sum(1 for key, _ in model._state_variables(extra_state="set_extra_state") if key in keys)
    shown = ", ".join(written[:4]) + (", ..." if len(written) > 4 else "")
    how = ("every tensor was read and verified before the first write; this error came while they were written"
           if staged else "after its checks, which passed, each tensor is read as it is written, so that no copy of "
           "the model is held")
    return (f"{type(model).__name__} is partly loaded: {len(written)} of the {total} tensors loaded from {path!r} "
            f"({shown}) were written before this error, the others keep their earlier values ({how}); load the "
            f"file again")


def checked_load(model, reader: SafetensorsFile, names: dict[str, str], strict: bool = True,
                 what: str | None = None, restore: bool = True) -> ModelLoad:
    """Check the file's tensors (``{state-dict key: name in the file}``) against ``model`` and return the load to run
    once everything else is checked too (a ``ModelLoad``: ``stage()`` reads every tensor, then calling it writes
    them). A model with load hooks (``has_load_hooks``) has the file read whole and given to its ``load_state_dict``,
    whose hooks take the state dict, as torch's (and which checks it after them); the others have every name, shape,
    dtype, checksum and uint64 count checked here (``check_entries``, ``reader.verify()``, ``check_values``), then
    the tensors written in (``stream_into``; staged first with ``stage()``), the model put back as it was where a
    ``set_extra_state`` refuses its state (``restore``; ``ud.load``'s new model is dropped instead: no copy of it is
    made). The one way ``ud.load``, ``ud.load_weights`` and ``load_checkpoint`` load a file into a model."""
    if has_load_hooks(model):
        reader.verify()
        return ModelLoad(model, reader, names, strict, None, restore)
    keys = check_entries(model, {key: reader.entries[name] for key, name in names.items()}, strict, what)
    reader.verify()
    check_values(model, reader, names, what)
    return ModelLoad(model, reader, names, strict, keys, restore)


def has_load_hooks(model) -> bool:
    """Whether a module of ``model`` has load pre- or post-hooks: its load goes through ``load_state_dict``."""
    return loading.has_hooks(model, "_load_state_dict_pre_hooks") or \
        loading.has_hooks(model, "_load_state_dict_post_hooks")


class _ShapeOnlyVariable:
    def __init__(self, value, trainable):
        self.shape, self.dtype, self.trainable = tuple(np.shape(value)), np.asarray(value).dtype, trainable

    def __array__(self, dtype=None, copy=None):
        """Zeros of its shape that take no memory (a zero-stride view): what a constructor that copies a layer
        (``copy.deepcopy``, as ``TransformerEncoder`` does) reads, so that the copies keep the shapes."""
        return np.broadcast_to(np.zeros((), dtype or self.dtype), self.shape)


class _TooManyVariables(Exception):
    """A shape-only build made more variables than its limit (a file's config of a model far larger than the
    tensors the file stores)."""


class _ShapeOnlyBackend:
    """The model's backend, except that new variables record only their shape: no weight is allocated, and writes
    into them (a constructor's own initialisation: ``assign`` of zeros) do nothing. More than ``limit`` variables
    stop the build (``_TooManyVariables``): a crafted config of millions of layers is refused before it is built."""

    def __init__(self, real, limit=None):
        self._real, self._limit, self._made = real, limit, 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def parameter(self, value, trainable=True, dtype=None):
        self._made += 1
        if self._limit is not None and self._made > self._limit:
            raise _TooManyVariables(self._limit)
        return _ShapeOnlyVariable(value, trainable)

    def assign(self, variable, value):
        if tuple(np.shape(value)) != variable.shape:
            raise ValueError(f"assign of shape {tuple(np.shape(value))} to a variable of shape {variable.shape}")

    def is_parameter(self, value):
        return isinstance(value, _ShapeOnlyVariable) and value.trainable

    def device_of(self, tensor):
        return "cpu"


def state_shapes(model) -> dict[str, tuple | None]:
    """``{state-dict key: shape}`` of what ``model`` loads: its variables' shapes, and ``None`` for a module's extra
    state (``set_extra_state``), whose value has no shape fixed by the model."""
    from unidl.nn.module import ExtraState

    return {name: None if isinstance(variable, ExtraState) else tuple(variable.shape)
            for name, variable in model._state_variables(extra_state="set_extra_state")}


def architecture_shapes(cls, config: dict, limit: int | None = None) -> dict[str, tuple | None]:
    """``{state-dict key: shape}`` of ``cls(**config)`` (``state_shapes``: ``None`` for extra state), learned without
    allocating its weights (``shape_only_model``)."""
    return state_shapes(shape_only_model(cls, config, limit))


def shape_only_model(cls, config: dict, limit: int | None = None):
    """``cls(**config)`` built against a backend whose variables hold only shapes, with weights drawn as zero-stride
    arrays; more than ``limit`` variables raise ``_TooManyVariables``."""
    from unidl import config as unidl_config, random as unidl_random

    token = unidl_config._backend_override.set(_ShapeOnlyBackend(unidl_config.backend(), limit))
    try:
        with unidl_random.shape_only():
            model = cls(**config)
    finally:
        unidl_config._backend_override.reset(token)
    return model


# ---- public API ----------------------------------------------------------

def save(model, path) -> None:
    """Write ``model``'s weights and what is needed to rebuild it to ``path`` (one safetensors file), atomically.

    The weights are in the canonical layout, so the file loads on every backend. ``model.config``
    (its constructor arguments, if it keeps them) must be JSON-serializable.
    """
    from unidl.nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"ud.save expects a unidl.nn.Module, got {type(model).__name__}")
    metadata = model_metadata(model)
    _check_config_describes(model, metadata["config"])
    save_file(model.state_dict(), path, encode_metadata(metadata))


def _check_config_describes(model, config) -> None:
    """``StateDictError`` where the config of a built-in model (``unidl.models``) builds a model of other weights
    than ``model``'s (a head replaced after building, as transfer learning does): ``load`` could never rebuild the
    file (it refused it only then). A user's class is left to ``load`` (building it here would run its constructor,
    its draws and its side effects, at every save); so is a model without a config."""
    if config is None or not _is_builtin_module(type(model).__module__):
        return
    try:
        expected = architecture_shapes(type(model), config)
    except Exception:  # (not its constructor's arguments: ud.load_weights into a model built by hand still works)
        return
    found = state_shapes(model)
    if expected == found:
        return
    differences = [f"{k}: the config builds {expected[k]}, the model holds {found[k]}" for k in found
                   if k in expected and expected[k] != found[k]]
    differences += [f"{k}: not built by the config" for k in found if k not in expected]
    differences += [f"{k}: built by the config, not in the model" for k in expected if k not in found]
    raise StateDictError(
        f"ud.save: {type(model).__name__}.config {config} describes other weights than the model holds "
        f"({'; '.join(differences[:6])}), so ud.load could never rebuild it; update model.config to describe the "
        f"model (a replaced head: its new size), or keep the weights alone (ud.save_checkpoint, or "
        f"safetensors of model.state_dict()) and load them into a model built by hand with ud.load_weights")


def load(path, *, allow_pickle: bool = False):
    """Rebuild the model saved at ``path`` on the current backend and load its weights (strictly).

    The class must be a built-in ``unidl.models`` class or registered with ``ud.register_model``;
    a checkpoint file works too. Pickles are refused unless ``allow_pickle=True``.

    Before any weight is allocated, the architecture that the file's config describes is compared
    with the tensors stored in the file (names and shapes; learned by building the model against
    variables that hold only shapes), and every tensor's checksum is verified; then the model is
    built without drawing initial weights (the generator is not advanced; a constructor that uses
    drawn values for anything but its parameters and buffers sees zeros) and the tensors are read
    into it one at a time, so loading takes little memory beyond the model itself. A class with load hooks
    (``register_load_state_dict_pre_hook``/``post_hook``, which may map the file's keys) is the exception: the
    shapes are not compared before the build, the model is built (its weights allocated) and the file read whole
    into its ``load_state_dict``, which then finds any mismatch.
    """
    path = check_readable_file(path)
    if not is_safetensors(path):
        state, metadata = read_weights(path, allow_pickle=allow_pickle)
        cls, config = _class_and_config(metadata, path)
        _check_architecture(cls, config, {key: tuple(np.shape(value)) for key, value in state.items()}, metadata,
                            path)  # (before building: a config of a huge model beside small tensors)
        model = _build(cls, config, metadata, path)
        model.load_state_dict(state, strict=True)
        return model
    reader, metadata, names = open_weights(path)
    cls, config = _class_and_config(metadata, path)
    entries = {key: reader.entries[name] for key, name in names.items()}
    _check_architecture(cls, config, {key: tuple(entry[1]) for key, entry in entries.items()}, metadata, path)
    reader.verify()
    model = _build(cls, config, metadata, path)
    checked_load(model, reader, names, what=repr(path), restore=False)()
    return model


def _check_architecture(cls, config: dict, stored: dict, metadata: dict, path: str) -> None:
    """``StateDictError`` before anything is built where the architecture that ``config`` describes (its tensors'
    names and shapes, learned without allocating them) does not match the ``stored`` shapes of the file, or has
    more variables than twice the file's tensors and 16 (the build stops there: a config of millions of layers is
    refused in the time of a few). A built-in model whose config does not build is refused here too; a user's
    class whose constructor needs real variables is built for real by the caller, where a bad config fails with
    its own error and the tensors are checked before any is read."""
    limit = 2 * len(stored) + 16  # (non-persistent buffers are built and not stored)
    try:
        model = shape_only_model(cls, config, limit)
    except _TooManyVariables:
        raise StateDictError(f"{path!r}: the {metadata['class']} that its config {config!r} describes has more than "
                             f"{limit} tensors, where the file stores {len(stored)}; nothing was built") from None
    except Exception as error:
        if _is_builtin_module(cls.__module__):  # (its constructor's refusal, as the real build gives it)
            kind = TypeError if isinstance(error, TypeError) else ValueError if isinstance(error, ValueError) else \
                StateDictError
            raise kind(f"cannot rebuild {metadata['class']} from {path!r} with config {config!r}: "
                       f"{type(error).__name__}: {error}; nothing was built") from None
        return
    if has_load_hooks(model):  # (a load pre-hook may map the file's keys to others: an old checkpoint's names)
        return
    expected, keys = state_shapes(model), loading.walk(model, stored)  # (the key rule of load_state_dict)
    problems = [f"{key}: config gives shape {shape}, file stores {stored[key]}"  # (extra state: any shape)
                for key, shape in expected.items() if key in stored and shape is not None and stored[key] != shape]
    problems += [f"{key} ({'extra state' if expected[key] is None else f'shape {expected[key]}'}) is not in the file"
                 for key in keys.missing]
    problems += [f"{key} is in the file but not in the model" for key in keys.unexpected]
    if problems:
        raise StateDictError(f"{path!r}: the {metadata['class']} that its config {config!r} describes does not "
                             f"match the tensors stored in the file; nothing was built: " + "; ".join(problems))


def _class_and_config(metadata, path: str) -> tuple[type, dict]:
    if metadata is None or not isinstance(metadata.get("class"), str):
        raise UnknownModelError(f"{path!r} does not say which model it holds (no unidl metadata); build the model "
                                f"yourself and call ud.load_weights(model, {path!r})")
    cls = _model_class(metadata["class"], metadata.get("class_module"), path)
    config = metadata.get("config")
    if config is not None and not isinstance(config, dict):
        raise CorruptFileError(f"{path!r}: model config must be a JSON object, got {type(config).__name__}")
    return cls, config or {}


def _build(cls, config: dict, metadata: dict, path: str):
    """``cls(**config)`` with its initial weights left undrawn (zero-stride zeros): the file's weights replace
    them, so drawing would only cost memory (a float64 copy of each weight) and move unidl's generator. Built in
    the float dtype the saved model had (the metadata's ``dtype``; files written before it: the dtype in force), as
    Keras's ``load_model`` keeps a model's dtype policy (a float64 model came back float32, rounded)."""
    from unidl import config as unidl_config, random as unidl_random

    dtype = metadata.get("dtype")
    scope = unidl_config.use_dtype(dtype) if dtype in unidl_config.DTYPES else contextlib.nullcontext()
    try:
        with unidl_random.shape_only(), scope:
            return cls(**config)
    except TypeError as error:
        raise TypeError(f"cannot rebuild {metadata['class']} from {path!r} with config {config!r}: {error}") from None


def load_weights(model, path, strict: bool = True, *, allow_pickle: bool = False,
                 staged: bool = True) -> IncompatibleKeys:
    """Load only the weights at ``path`` into ``model`` (see ``Module.load_state_dict`` for ``strict``).

    Checked first: every tensor's name, shape, dtype and checksum is checked before the first variable changes (a
    corrupt file that unidl wrote, or a file that does not fit, changes nothing; a file of another tool, which has no
    checksums, is checked for names, shapes, dtypes and sizes only). Then, ``staged`` (the default), every tensor is
    read into fresh memory (about the file's size, as ``torch.load`` before ``load_state_dict``), its checksum
    verified again, before the first write, so that a read that fails after the checks (an I/O error, a
    ``MemoryError``, the file changed in place by another program) leaves the model as it was, as
    ``load_checkpoint`` does; the writes then free each staged tensor (or adopt it as its variable's memory) as they
    go (a write that fails, a device's allocation or Ctrl-C between two tensors, leaves those before it loaded,
    named in the error's note). ``staged=False`` is for a model whose second copy does not fit in memory: the tensors are read into the
    model one at a time, module by module as ``load_state_dict`` loads them (torch's order: a module's variables
    and ``set_extra_state``, then its children's), so that the load holds about one tensor beyond the model; a read
    that fails after the checks then leaves the tensors before it loaded, and the error's note names them: nothing
    holds their earlier values. Where ``set_extra_state`` refuses its state (or such a read fails), a model with
    extra state is put back as it was (it is copied to the host first; see ``Module.load_state_dict``). A model
    with load hooks (``register_load_state_dict_pre_hook``/``post_hook``) has the file read whole and given to its
    ``load_state_dict``, whose hooks may map the file's keys.
    """
    from unidl.nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"ud.load_weights expects a unidl.nn.Module, got {type(model).__name__}")
    staged = arguments.boolean("ud.load_weights", "staged", staged)  # (a string "False" would stage)
    path = check_readable_file(path)
    if not is_safetensors(path):
        state, _ = read_weights(path, allow_pickle=allow_pickle)
        return model.load_state_dict(state, strict=strict)
    reader, _, names = open_weights(path)
    load = checked_load(model, reader, names, strict)
    if staged:
        load.stage()
    return load()
