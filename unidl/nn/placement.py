"""``Module.to`` and its shorthands (``cpu``, ``cuda``, ``float``, ``double``, ``half``, ``bfloat16``), as torch's
methods are called: the module itself where it already is on that device in that dtype (``model = model.to(device)``
runs unchanged), a ``ModelPlacementError`` saying how to build it there otherwise.

unidl places and types a model's variables when it builds them (``ud.use_device``, ``ud.use_dtype``), the same on
every backend: a TensorFlow or Keras variable cannot change its device or dtype in place, and variables made anew
would leave an optimizer made before them training the old ones, silently.
"""

from __future__ import annotations

import numpy as np

from unidl import config
from unidl.dtype_kinds import dtype_name, is_floating, is_half
from unidl.errors import ModelPlacementError

#: floating dtypes a ``to()`` may name, each as NumPy names it
_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _is_dtype(value) -> bool:
    """Whether ``value`` names a dtype at all (a NumPy dtype or scalar type, Python's ``float``/``int``/``bool``, a
    framework's dtype object), floating or not, rather than a device."""
    if isinstance(value, np.dtype):
        return True
    if isinstance(value, type):
        return issubclass(value, (np.generic, float, int, bool, complex))
    if isinstance(value, str):  # (a dtype's name: 'float64', 'int64'; a device's is no NumPy dtype)
        try:
            np.dtype(value)
        except TypeError:
            return value == "bfloat16"
        return True
    return type(value).__name__ in ("dtype", "DType")


def _dtype_named(value) -> str | None:
    """``value`` as a floating dtype's name where it is one (a string, a NumPy, torch or other framework dtype),
    else None."""
    if isinstance(value, str):
        return value if value in _FLOATS else None
    if isinstance(value, type):  # (NumPy's scalar types name their dtype; Python's float is float64, as torch's)
        name = np.dtype(value).name if issubclass(value, (np.generic, float)) else None
        return name if name in _FLOATS else None
    if hasattr(value, "shape") and not isinstance(value, np.dtype):  # (a tensor: read apart)
        return None
    try:
        name = dtype_name(value)
    except Exception:
        return None
    return name if name in _FLOATS else None


def requested(owner: str, backend, args: tuple, kwargs: dict) -> tuple[str | None, str | None]:
    """The device and floating dtype a ``to(*args, **kwargs)`` asks for, torch's forms: ``to(device)``,
    ``to(dtype)``, ``to(device, dtype)``, ``to(tensor)``, and the keywords ``device``, ``dtype``, ``non_blocking`` (a
    hint) and ``memory_format`` (``torch.preserve_format`` alone: unidl keeps its canonical layouts)."""
    unknown = set(kwargs) - {"device", "dtype", "non_blocking", "memory_format"}
    if unknown:
        raise TypeError(f"{owner}.to() got unexpected keyword arguments {sorted(unknown)}; it takes device, dtype, "
                        f"non_blocking and memory_format, as torch.nn.Module.to")
    layout = kwargs.get("memory_format")
    if layout is not None and str(layout) != "torch.preserve_format":  # (channels_last would re-lay the kernels)
        raise ValueError(f"{owner}.to(): memory_format={layout} is not supported (unidl keeps its canonical layouts "
                         f"on every backend); leave it out")
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    for value in args:
        if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):  # a tensor
            device, dtype = backend.device_of(value), value.dtype
        elif _is_dtype(value):
            dtype = value
        elif value is not None:
            device = value
    if dtype is not None:
        name = _dtype_named(dtype)
        if name is None:
            raise TypeError(f"{owner}.to(): dtype must be a floating dtype ({', '.join(_FLOATS)}), as "
                            f"torch.nn.Module.to takes, got {dtype!r}")
        dtype = name
    if device is not None:
        device = f"cuda:{device}" if isinstance(device, int) and not isinstance(device, bool) else str(device)
        if device.startswith("cpu:"):  # (torch.device("cpu", 0): the one CPU)
            device = "cpu"
    return device, dtype


def moved(module, device: str | None, dtype: str | None, method: str):
    """``module`` where its variables are all on ``device`` and its floating ones all of ``dtype`` (either None: any),
    else a ``ModelPlacementError`` naming where they are and how to build the model there."""
    backend = module._backend
    variables = [v for _, v in (*module.named_parameters(), *module.named_buffers())]
    target = config.resolve_device(device, backend) if device is not None else None  # (an unknown or absent device:
    # DeviceUnavailableError listing those the backend sees, as torch raises for a GPU it does not have)
    devices = sorted({backend.device_of(v) for v in variables})
    dtypes = sorted({dtype_name(v.dtype) for v in variables if is_floating(v.dtype)})
    if (target is None or set(devices) <= {target}) and (dtype is None or set(dtypes) <= {dtype}):
        return module
    wanted = " and ".join(part for part in (target and f"device {target!r}", dtype and f"dtype {dtype}") if part)
    half = is_half(dtype)  # (parameters are float32 or float64: half precision is compute's)
    build = " and ".join(part for part in (target and f"with ud.use_device({target!r})",
                                           dtype and not half and f"with ud.use_dtype({dtype!r})") if part)
    raise ModelPlacementError(
        f"{module.describe()}.{method}: asks for {wanted}, but its variables are on {', '.join(devices)} in "
        f"{', '.join(dtypes) or 'no floating dtype'}. unidl places and types a model's variables when it builds them, "
        f"on every backend (TensorFlow and Keras variables cannot move or change dtype in place, and new ones would "
        f"leave an optimizer made before them training the old): "
        + (f"build the model {build} (or ud.set_device / ud.set_dtype, UNIDL_DEVICE), then "
           f"new_model.load_state_dict(model.state_dict()) to keep its weights; " if build else "")
        + "for half-precision compute of float32 weights use fit(..., precision='bf16-mixed' or '16-mixed')")
