"""The registry of backends: one sub-package per framework, found by scanning this folder.

Each backend package's ``__init__`` holds only metadata (``SPEC``) and never
imports its framework; the implementation in ``<name>/backend.py`` is imported
the first time the backend is used. Adding a backend means adding a folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from dataclasses import dataclass, field
from typing import Callable

from unidl.errors import BackendInterfaceError, BackendNotInstalledError, ConfigurationError, UnknownBackendError


@dataclass(frozen=True)
class BackendSpec:
    """What unidl knows about a backend before importing its framework.

    ``required_modules`` returns the top-level modules that must be importable
    (a function, because Keras's needs depend on ``KERAS_BACKEND``);
    ``priority`` orders the default choice (lowest first).
    """

    name: str
    aliases: tuple[str, ...]
    extra: str
    priority: int
    required_modules: Callable[[], tuple[str, ...]]
    #: ``missing modules -> message`` when the default "install it with pip install 'unidl[extra]'" would
    #: not be the fix (Keras's needs depend on ``KERAS_BACKEND``, which may name no framework at all)
    install_hint: Callable[[list[str]], str] | None = None
    #: ``() -> message or None``: what is wrong with a setting the backend reads (Keras's ``KERAS_BACKEND`` naming
    #: no framework it runs on), checked before its modules: a ``ConfigurationError``, as no install is the fix
    setting_problem: Callable[[], str | None] | None = None
    #: the inference formats this backend's framework defines -> what ``ud.export`` writes in it and how to run that
    #: without unidl (``unidl.export.FORMATS`` gathers them); a backend that writes another's format (jax's
    #: SavedModel) does not repeat it
    export_formats: dict[str, str] = field(default_factory=dict, hash=False)
    #: for a backend that runs on another backend's framework (keras): the names of the backends it can run on
    hosts: Callable[[], tuple[str, ...]] | None = None
    #: libraries of the framework's own ecosystem, besides ``required_modules``, whose objects a user may pass
    #: where unidl's are expected (jax's optax optimizers), so that an error can say it is a framework's object
    companion_modules: tuple[str, ...] = ()


_specs: dict[str, BackendSpec] | None = None
_loaded: dict[str, object] = {}
_load_lock = threading.RLock()


def specs() -> dict[str, BackendSpec]:
    """All backends that have a folder here, by canonical name, in priority order."""
    global _specs
    if _specs is None:
        found = []
        for info in pkgutil.iter_modules(__path__):
            if info.ispkg:
                package = importlib.import_module(f"{__name__}.{info.name}")
                found.append(package.SPEC)
        _specs = {spec.name: spec for spec in sorted(found, key=lambda s: s.priority)}
    return _specs


def missing_modules(name: str) -> list[str]:
    """The framework modules of backend ``name`` that cannot be imported here."""
    return [m for m in specs()[name].required_modules() if importlib.util.find_spec(m) is None]


def available_backends() -> list[str]:
    """Canonical names of the backends whose frameworks are installed and whose settings let them load (keras
    under ``KERAS_BACKEND=numpy`` is not one: ``load`` refuses it), in default order."""
    return [name for name, spec in specs().items()
            if not (spec.setting_problem is not None and spec.setting_problem()) and not missing_modules(name)]


def export_formats() -> dict[str, str]:
    """Every export format some backend writes -> its description, gathered from the backends' ``SPEC``s (no
    framework import); two backends describing one format differently is a ``BackendInterfaceError``."""
    formats: dict[str, str] = {}
    for spec in specs().values():
        for format, description in spec.export_formats.items():
            if formats.setdefault(format, description) != description:
                raise BackendInterfaceError(f"backend {spec.name!r} describes export format {format!r} otherwise "
                                            f"than an earlier backend does; describe a format in one backend's SPEC")
    return formats


def hosted_backends() -> dict[str, tuple[str, ...]]:
    """The backends that run on another backend's framework -> the backends each can run on (keras -> torch,
    tensorflow, jax), from the ``SPEC``s' ``hosts``."""
    return {name: tuple(spec.hosts()) for name, spec in specs().items() if spec.hosts is not None}


def framework_of(kind: type) -> str | None:
    """The framework (top-level module: 'torch', 'tensorflow', 'keras', 'jax', or a companion such as 'optax') that
    defines class ``kind``, where some backend computes with it; None otherwise. Imports no framework."""
    module = kind.__module__ if isinstance(getattr(kind, "__module__", None), str) else ""
    root = module.split(".")[0]
    known = {m for spec in specs().values() for m in (*spec.required_modules(), *spec.companion_modules)}
    return root if root in known else None


def canonical_name(name: str) -> str:
    """Map a backend name or alias (case-insensitive) to its canonical name."""
    if not isinstance(name, str):
        raise UnknownBackendError(f"backend name must be a string, got {type(name).__name__} {name!r}")
    wanted = name.strip().lower()
    for spec in specs().values():
        if wanted == spec.name or wanted in spec.aliases:
            return spec.name
    valid = ", ".join(f"{s.name!r}" + (f" (aliases {', '.join(map(repr, s.aliases))})" if s.aliases else "")
                      for s in specs().values())
    raise UnknownBackendError(
        f"unknown backend {name!r}; valid backends are {valid}; "
        f"installed here: {', '.join(available_backends()) or 'none'}"
    )


def load(name: str):
    """Return the (cached) backend object for ``name``, importing its framework now."""
    canonical = canonical_name(name)
    with _load_lock:
        if canonical not in _loaded:
            spec = specs()[canonical]
            problem = spec.setting_problem() if spec.setting_problem is not None else None
            if problem is not None:
                raise ConfigurationError(f"backend {canonical!r} cannot be used: {problem}")
            missing = missing_modules(canonical)
            if missing:
                hint = (spec.install_hint(missing) if spec.install_hint is not None
                        else f"install it with: pip install 'unidl[{spec.extra}]'")
                raise BackendNotInstalledError(
                    f"backend {canonical!r} needs {', '.join(missing)}, which is not installed; {hint}")
            module = importlib.import_module(f"{__name__}.{canonical}.backend")
            backend = module.Backend()
            from unidl import threads

            threads.apply(backend)  # UNIDL_NUM_THREADS / set_num_threads, before the framework computes anything
            from unidl import float32_precision

            float32_precision.apply(backend)  # float32 products computed alike on every framework (a GPU's TF32)
            from unidl import random as unidl_random

            if unidl_random.initial_seed() is not None:  # a seed set before the backend: its generators now, after
                # the threads (TensorFlow's generator starts its runtime, whose thread pools then keep their size)
                backend.seed(unidl_random.initial_seed())
            _loaded[canonical] = backend
        return _loaded[canonical]


def to_numpy_unloaded(value):
    """A host array of a framework's tensor (a PyTorch tensor that requires a gradient, lives on a GPU or holds
    bfloat16, which ``np.asarray`` refuses; a copy, never a view), converted by the ``convert`` module of the
    backend of the framework the value comes from, which imports that framework only: no backend is loaded (loading
    one sets the framework's seed, threads and float32 mode). None where no backend has a converter that takes it."""
    for converter in _converters(type(value)):
        converted = converter.to_numpy(value)
        if converted is not None:
            return converted
    return None


_converter_cache: dict[type, list] = {}


def _converters(kind: type) -> list:
    """The ``convert`` modules of the backends whose framework defines ``kind`` or a class it derives from (a
    tensor subclass defined outside its framework), found once per type: a Python number or a list finds none."""
    found = _converter_cache.get(kind)
    if found is None:
        frameworks = {c.__module__.split(".")[0] for c in kind.__mro__ if isinstance(c.__module__, str)}
        found = []
        for name, spec in specs().items():
            if not frameworks & set(spec.required_modules()):
                continue
            try:
                found.append(importlib.import_module(f"{__name__}.{name}.convert"))
            except ModuleNotFoundError as error:
                if error.name != f"{__name__}.{name}.convert":
                    raise
        _converter_cache[kind] = found
    return found


_foreign_cache: dict[tuple[type, str], str | None] = {}


def foreign_framework(kind: type, name: str) -> str | None:
    """The framework (top-level module: 'torch', 'tensorflow', 'jax', 'keras'; a backend's own wrapper type, jax's
    ``JaxVariable``, counts as its framework's) whose class ``kind`` is or derives
    from, where it is one that some backend computes with but backend ``name`` does not (a torch tensor given to a
    TensorFlow model); None for this backend's own frameworks' types and for types of no framework. Cached per type:
    a module's call asks it once for each type it has not seen."""
    key = (kind, name)
    if key not in _foreign_cache:
        frameworks = set()
        for c in kind.__mro__:
            parts = c.__module__.split(".") if isinstance(c.__module__, str) else [""]
            if parts[:2] == ["unidl", "backends"] and len(parts) > 2 and parts[2] in specs():
                # a backend's own wrapper of its framework's arrays (jax's JaxVariable): that backend's frameworks
                frameworks.update(specs()[parts[2]].required_modules())
            else:
                frameworks.add(parts[0])
        known = {module for spec in specs().values() for module in spec.required_modules()}
        foreign = sorted(frameworks & known - set(specs()[name].required_modules()))
        _foreign_cache[key] = foreign[0] if foreign else None
    return _foreign_cache[key]


def loaded_backends() -> dict[str, object]:
    """The backends already imported in this process (no framework import happens here)."""
    return dict(_loaded)
