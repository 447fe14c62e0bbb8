"""``save`` / ``load``: a model as one safetensors file, readable on any backend.

The file holds the ``state_dict()`` (canonical layout) and, in its ``__metadata__``, JSON naming
the model's class and constructor arguments. ``load`` rebuilds the model on the current backend
from a registry of known classes only: nothing named in a file is ever imported, and pickles are
refused unless the caller opts in with ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import pickle

import numpy as np

from unidl.errors import CorruptFileError, UnknownModelError, UnsafeFormatError
from unidl.io.safetensors import check_readable_file, is_safetensors, load_file, save_file

FORMAT_VERSION = 1
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


def _model_class(name: str, defined_in: str | None, path: str) -> type:
    """The class registered as ``name``, else the built-in ``unidl.models.<name>``; never an import from the file."""
    if name in _registry:
        return _registry[name]
    from unidl import models

    if name in getattr(models, "__all__", ()):
        return getattr(models, name)
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
        "backend": model._backend.name,
        "versions": dict(model._backend.versions()),
        "unidl_version": __version__,
    }


def encode_metadata(metadata: dict) -> dict[str, str]:
    """unidl's metadata as safetensors ``__metadata__`` (string values only)."""
    return {METADATA_KEY: to_json(metadata, "metadata")}


def decode_metadata(file_metadata: dict[str, str], path: str) -> dict | None:
    """unidl's metadata from a safetensors ``__metadata__``; None when the file was not written by unidl."""
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
    if metadata.get("layout", CANONICAL_LAYOUT) != CANONICAL_LAYOUT:
        raise CorruptFileError(f"{path!r} declares layout {metadata.get('layout')!r}; expected {CANONICAL_LAYOUT!r}")
    return metadata


# ---- reading weights -----------------------------------------------------

_PICKLE_PREFIXES = tuple(b"\x80" + bytes([protocol]) for protocol in range(2, 6))
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
            head = handle.read(4)
        if head.startswith(_ZIP_PREFIX):
            if not allow_pickle:
                raise _refuse_pickle(path, "a zip archive (the torch.save format, which holds a pickle)")
            raise CorruptFileError(
                f"{path!r} is a zip archive (the torch.save format); unidl reads only plain pickles of a dict of "
                f"arrays. Load it with torch.load yourself and pass the result to model.load_state_dict")
        if head.startswith(_PICKLE_PREFIXES) and not allow_pickle:
            raise _refuse_pickle(path, "a pickle")
        if allow_pickle:
            return _read_pickle(path)
        # not a recognizable pickle either: let the safetensors reader say precisely what is wrong
        try:
            load_file(path)
        except CorruptFileError as error:
            raise CorruptFileError(f"{error} (if it is a pickle from an older protocol: unpickling can run "
                                   f"arbitrary code; pass allow_pickle=True only if you trust the file)") from None
    tensors, file_metadata = load_file(path)
    metadata = decode_metadata(file_metadata, path)
    if metadata is not None and metadata.get("kind") == "checkpoint":
        tensors = {key[len(MODEL_PREFIX):]: value for key, value in tensors.items() if key.startswith(MODEL_PREFIX)}
    return tensors, metadata


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
    save_file(model.state_dict(), path, encode_metadata(metadata))


def load(path, *, allow_pickle: bool = False):
    """Rebuild the model saved at ``path`` on the current backend and load its weights (strictly).

    The class must be a built-in ``unidl.models`` class or registered with ``ud.register_model``;
    a checkpoint file works too. Pickles are refused unless ``allow_pickle=True``.
    """
    path = check_readable_file(path)
    state, metadata = read_weights(path, allow_pickle=allow_pickle)
    if metadata is None or not isinstance(metadata.get("class"), str):
        raise UnknownModelError(f"{path!r} does not say which model it holds (no unidl metadata); build the model "
                                f"yourself and call ud.load_weights(model, {path!r})")
    cls = _model_class(metadata["class"], metadata.get("class_module"), path)
    config = metadata.get("config")
    if config is not None and not isinstance(config, dict):
        raise CorruptFileError(f"{path!r}: model config must be a JSON object, got {type(config).__name__}")
    try:
        model = cls(**(config or {}))
    except TypeError as error:
        raise TypeError(f"cannot rebuild {metadata['class']} from {path!r} with config {config!r}: {error}") from None
    model.load_state_dict(state, strict=True)
    return model


def load_weights(model, path, strict: bool = True, *, allow_pickle: bool = False) -> dict:
    """Load only the weights at ``path`` into ``model`` (see ``Module.load_state_dict`` for ``strict``)."""
    state, _ = read_weights(path, allow_pickle=allow_pickle)
    return model.load_state_dict(state, strict=strict)
