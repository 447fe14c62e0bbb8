"""Which backend, device and dtype unidl uses now: process defaults plus context-local overrides.

``set_backend`` / ``set_device`` / ``set_dtype`` change the process default;
``use_backend`` / ``use_device`` / ``use_dtype`` scope a choice to a ``with`` block and to the
current thread or task only (``contextvars``), so that two threads never flip
each other's backend, device or dtype. Unset defaults come from ``UNIDL_BACKEND`` and
``UNIDL_DEVICE``, read and checked at the first call that needs them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re

from unidl import backends, dtype_kinds
from unidl.errors import DeviceUnavailableError, UnknownBackendError

_backend_override: contextvars.ContextVar = contextvars.ContextVar("unidl_backend", default=None)
_device_override: contextvars.ContextVar = contextvars.ContextVar("unidl_device", default=None)
_dtype_override: contextvars.ContextVar = contextvars.ContextVar("unidl_dtype", default=None)
_default_backend = None
_default_backend_name: str | None = None  # a default to load at first use (a DataLoader worker's: adopt_settings)
_default_device: str | None = None
_default_dtype = "float32"
_resolved_devices: dict[tuple[str, str], str] = {}
#: which GPU 'auto', 'cuda' and 'gpu' name, modulo the GPUs seen: this process's local rank in a data-parallel job of
#: several processes (``unidl.distributed.init``: one GPU per process, as torchrun's LOCAL_RANK means), 0 outside one
_local_gpu = 0
_checked_env_device: str | None = None  # the last UNIDL_DEVICE value found valid

DTYPES = ("float32", "float64")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|gpu)(?::(\d+))?$")


# ---- backend -------------------------------------------------------------

def _default_backend_object():
    global _default_backend
    if _default_backend is None:
        requested = _default_backend_name or os.environ.get("UNIDL_BACKEND", "").strip()
        if requested:
            try:
                _default_backend = backends.load(requested)
            except UnknownBackendError as error:
                raise UnknownBackendError(f"UNIDL_BACKEND={requested!r}: {error}") from None
        else:
            installed = backends.available_backends()
            if not installed:
                names = ", ".join(f"unidl[{s.extra}]" for s in backends.specs().values())
                raise backends.BackendNotInstalledError(
                    f"no backend is installed; install one of {names}")
            _default_backend = backends.load(installed[0])
    return _default_backend


def backend():
    """The backend object in force here (context override, else the process default)."""
    return _backend_override.get() or _default_backend_object()


def get_backend() -> str:
    """Canonical name of the backend in force: 'torch', 'tensorflow' or 'keras'."""
    return backend().name


def set_backend(name: str) -> None:
    """Make ``name`` (or an alias such as 'pytorch', 'tf') the process-wide default backend."""
    global _default_backend
    _default_backend = backends.load(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Use backend ``name`` inside the ``with`` block, in this thread/context only."""
    token = _backend_override.set(backends.load(name))
    try:
        yield _backend_override.get()
    finally:
        _backend_override.reset(token)


def available_backends() -> list[str]:
    """Names of the installed backends, in the order the default is picked from."""
    return backends.available_backends()


def settings() -> dict:
    """The backend, device and dtype chosen in this context (scoped or process-wide; None where nothing was chosen
    and the environment variables decide), for a process that works for this one to take (``adopt_settings``)."""
    chosen = _backend_override.get() or _default_backend
    return {"backend": None if chosen is None else chosen.name,
            "device": _device_override.get() or _default_device, "dtype": get_dtype()}


def adopt_settings(chosen: dict) -> None:
    """Make ``chosen`` (``settings()`` of the process this one works for: a DataLoader's worker process) this
    process's defaults, so that a sample computed here is the one the caller's own process would compute (a
    spawned worker took ``UNIDL_BACKEND``'s backend and float32 instead). The backend loads at its first use, as
    ``UNIDL_BACKEND``'s does: a worker that computes nothing imports no framework."""
    global _default_backend, _default_backend_name, _default_device, _default_dtype
    if _default_backend is not None and _default_backend.name != chosen["backend"]:
        _default_backend = None  # (a persistent worker's next epoch under another backend)
    _default_backend_name, _default_device, _default_dtype = chosen["backend"], chosen["device"], chosen["dtype"]


# ---- device --------------------------------------------------------------

def parse_device(spec: str) -> tuple[str, int | None]:
    """Split a device name into ('auto'|'cpu'|'gpu', index); 'cuda' is an alias of 'gpu'."""
    match = _DEVICE_PATTERN.match(str(spec).strip().lower())
    if not match or (match.group(1) in ("auto", "cpu") and match.group(2) is not None):
        raise DeviceUnavailableError(
            f"invalid device {spec!r}; valid devices are 'auto', 'cpu', 'cuda', 'cuda:N', 'gpu', 'gpu:N'")
    kind = "gpu" if match.group(1) == "cuda" else match.group(1)
    return kind, (int(match.group(2)) if match.group(2) is not None else None)


def _requested_device() -> str:
    override = _device_override.get()
    if override is not None:
        return override
    if _default_device is not None:
        return _default_device
    global _checked_env_device
    requested = os.environ.get("UNIDL_DEVICE", "auto").strip() or "auto"
    if requested != _checked_env_device:  # (checked once per value: a step's inputs ask for the device each call)
        try:
            parse_device(requested)
        except DeviceUnavailableError as error:
            raise DeviceUnavailableError(f"UNIDL_DEVICE={requested!r}: {error}") from None
        _checked_env_device = requested
    return requested


def resolve_device(requested: str, backend_object) -> str:
    """Map a requested device to one the backend sees ('cpu' or 'cuda:N'), or raise.

    No silent fall-back: asking for a GPU the backend cannot see is an error
    that lists the devices it does see.
    """
    key = (backend_object.name, requested)
    if key not in _resolved_devices:
        kind, index = parse_device(requested)
        visible = backend_object.devices()
        gpus = [d for d in visible if d != "cpu"]
        if kind == "cpu" or (kind == "auto" and not gpus):
            resolved = "cpu"
        elif index is None and gpus:  # in a job of several processes: the GPU of this rank's local rank (modulo
            resolved = gpus[_local_gpu % len(gpus)]  # the GPUs it sees: one each, by CUDA_VISIBLE_DEVICES, is cuda:0)
        else:
            resolved = f"cuda:{index or 0}"
            if resolved not in gpus:
                raise DeviceUnavailableError(
                    f"device {requested!r} is not visible to backend {backend_object.name!r}; "
                    f"it sees: {', '.join(visible)}")
        _resolved_devices[key] = resolved
    return _resolved_devices[key]


def _set_local_gpu(index: int) -> None:
    """Make 'auto', 'cuda' and 'gpu' name GPU ``index`` modulo the GPUs a backend sees (``unidl.distributed.init``:
    the local rank of a process of a data-parallel job, 0 again at its ``shutdown``): every rank of a machine on a GPU
    of its own, as torchrun's ``LOCAL_RANK`` means, where each would otherwise take cuda:0 (NCCL refuses two ranks on
    one GPU); a process given one GPU of its own (``CUDA_VISIBLE_DEVICES``) sees it as cuda:0. As TensorFlow's
    engine picks its GPU."""
    global _local_gpu
    if index != _local_gpu:
        _local_gpu = index
        _resolved_devices.clear()


def get_device() -> str:
    """The device in force for the current backend, resolved: 'cpu' or 'cuda:N'."""
    return resolve_device(_requested_device(), backend())


def set_device(device: str) -> None:
    """Make ``device`` the process-wide default ('auto', 'cpu', 'cuda', 'cuda:N', 'gpu', 'gpu:N')."""
    global _default_device
    parse_device(device)
    if _backend_override.get() is not None or _default_backend is not None:
        resolve_device(device, backend())  # an unseen GPU is reported now and leaves the default as it was
    _default_device = device


@contextlib.contextmanager
def use_device(device: str):
    """Use ``device`` inside the ``with`` block, in this thread/context only."""
    parse_device(device)
    token = _device_override.set(device)
    try:
        yield get_device()
    finally:
        _device_override.reset(token)


# ---- dtype ---------------------------------------------------------------

def _dtype_name(dtype) -> str:
    """``dtype`` (a name, or a NumPy, torch, TensorFlow or JAX float dtype) as 'float32' or 'float64', else a
    ``ValueError`` naming the valid dtypes (and, for float16/bfloat16, the mixed precision that trains in them)."""
    # np.float64 and jnp.float64 (types), np.dtype('float64') and tf.float64 (.name), torch.float64 ('torch.float64')
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None) or getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype).rsplit(".", 1)[-1]
    if name in DTYPES:
        return name
    half = (f"; {name} parameters would lose their updates to rounding: keep float32 weights and train in "
            f"{name} with precision='{'bf16' if name == 'bfloat16' else '16'}-mixed' (ud.fit, ud.train_step)"
            if dtype_kinds.is_half(name) else "")
    raise ValueError(f"unsupported dtype {dtype!r}; valid dtypes are {', '.join(DTYPES)}{half}")


def get_dtype() -> str:
    """The floating dtype new parameters and tensors get here: 'float32' (default) or 'float64'."""
    return _dtype_override.get() or _default_dtype


def set_dtype(dtype: str) -> None:
    """Switch parameters and computation created from now on to ``dtype`` on every backend (process-wide).

    Args:
        dtype: 'float32' or 'float64', or that dtype as NumPy, torch, TensorFlow or JAX names it
            (``torch.float64``); float16 and bfloat16 are a ``ValueError`` pointing to mixed precision.
    """
    global _default_dtype
    _default_dtype = _dtype_name(dtype)


@contextlib.contextmanager
def use_dtype(dtype: str):
    """Use ``dtype`` for everything created inside the ``with`` block, in this thread/context only.

    As ``use_backend``: another thread building a model meanwhile keeps its own dtype, and two threads' blocks
    ending in any order leave the process default as it was (a process-wide switch left it at the dtype of
    whichever block ended last). Takes the dtypes ``set_dtype`` takes.
    """
    token = _dtype_override.set(_dtype_name(dtype))
    try:
        yield
    finally:
        _dtype_override.reset(token)
