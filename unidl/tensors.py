"""Moving values between NumPy and the current backend: ``tensor`` and ``to_numpy``."""

from __future__ import annotations

import numpy as np

from unidl import config
from unidl.errors import DtypeMismatchError


def tensor(value, dtype: str | None = None):
    """NumPy array (or nested list, or scalar) -> the current backend's tensor on the current device.

    Floating values take unidl's current dtype (float32 by default); integer values become int64 tensors.
    ``dtype``: any dtype ``ud.ops.cast`` takes ('float16', 'bfloat16', 'int32', 'bool', ...), the same on every
    backend (the torch and TensorFlow backends took float32 and float64 alone, with a ``KeyError``); values are
    rounded once, from float64. Anything that is not numbers (a string, an object) is a ``DtypeMismatchError``
    (a ``TypeError``) on every backend; nested lists with rows of several lengths, and integers beyond int64
    without a ``dtype``, are a ``ValueError``.
    """
    backend = config.backend()
    if isinstance(value, np.ndarray) or not backend.is_tensor(value):
        array = (value if isinstance(value, np.ndarray) else None if isinstance(value, (str, bytes))
                 else as_numpy_values(value))
        if array is not None and array.dtype == object and array.size and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in array.flat):
            array = value = _python_numbers(array, dtype)  # ints beyond uint64, which NumPy holds as objects
        if array is None:
            raise DtypeMismatchError(f"ud.tensor {NUMBERS}, got {type(value).__name__} {value!r}")
        array = value = number_array(array, dtype)
    if dtype is not None and (type(dtype) is not str or dtype not in _BACKEND_DTYPES):
        from unidl import ops

        name = ops._dtype_name(dtype)  # a NumPy dtype as its name; a TypeError naming the dtypes there are
        if name not in _BACKEND_DTYPES:
            if name.startswith(("int", "uint")) and not backend.is_tensor(value):
                _check_fits(np.asarray(value), name)
            with backend.device_scope(config.get_device()):
                return ops.cast(backend.tensor(value, "float64" if _holds_floats(value) else None), name)
        dtype = name
    with backend.device_scope(config.get_device()):
        return backend.tensor(value, dtype)


#: what ud.tensor and the DataLoader take, in their messages
NUMBERS = "takes numbers (floats, ints or bools: a NumPy array, nested lists or a scalar)"


def number_array(array: np.ndarray, dtype=None, owner: str = "ud.tensor", where: str = "") -> np.ndarray:
    """``array`` as numbers that every backend's ``tensor`` takes alike, the one check of ``ud.tensor`` and of the
    DataLoader's batches (each field of each batch, never each element: the loader's zero-copy path stays fast).

    bfloat16 (ml_dtypes', what ``to_numpy`` gives back) and long doubles become float32 and float64, floats that a
    backend then makes the float dtype in force (torch and jax refused them, TensorFlow kept bfloat16); anything
    that is not numbers (complex, strings, objects, dates) is a ``DtypeMismatchError`` (TensorFlow made complex
    and string tensors, the others failed in words of their own); uint64 values beyond int64 without a ``dtype``
    a ``ValueError`` (they wrapped around to negative numbers; torch's raised a ``TypeError``). ``owner`` and
    ``where`` name the caller and the value in the messages."""
    if array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        return array.astype(np.float64)
    if array.dtype.kind not in _NUMBER_KINDS:
        raise DtypeMismatchError(f"{owner} {NUMBERS}, got an array of dtype {array.dtype}{where}")
    if dtype is None and array.dtype == np.uint64:  # (to int64, which 2 ** 63 and above do not fit)
        _check_fits(array, "int64", owner, where)
    return array


def as_numpy_values(value) -> np.ndarray:
    """``np.asarray(value)``, with nested lists of rows of several lengths a ``ValueError`` saying so (as
    ``torch.tensor`` refuses them; NumPy's own message speaks of "setting an array element with a sequence")."""
    try:
        return np.asarray(value)
    except ValueError as error:
        if "inhomogeneous" not in str(error):
            raise
        raise ValueError(f"ud.tensor takes nested lists whose rows along each axis have one length (a rectangular "
                         f"array), got rows of several lengths ({error})") from None


def _python_numbers(array: np.ndarray, dtype) -> np.ndarray:
    """An object array of Python ints and floats (NumPy's for ints beyond uint64): ``ValueError`` if they are all
    ints and no float dtype is asked for (they fit no integer dtype, as ``torch.tensor`` refuses them); else
    their float64 values, which ``torch.tensor`` takes them as beside floats or for a float dtype."""
    from unidl import ops

    name = "int64" if dtype is None else ops._dtype_name(dtype)
    if name.startswith(("int", "uint")) and all(isinstance(v, int) for v in array.flat):
        _check_fits(array, name)
    return array.astype(np.float64)


_BACKEND_DTYPES = ("float32", "float64")  # the dtypes every backend's ``tensor`` makes itself


def _check_fits(array: np.ndarray, name: str, owner: str = "ud.tensor", where: str = "") -> None:
    """``ValueError`` for values an integer dtype cannot hold, as ``torch.tensor`` raises (the frameworks' casts
    wrapped them around: ``ud.tensor([-1, 300], 'uint8')`` gave [255, 44]); NaN and infinities too."""
    if not array.size or array.dtype.kind == "b":
        return
    info = np.iinfo(name)
    finite = np.isfinite(array).all() if array.dtype.kind == "f" else True
    if not finite or array.min() < info.min or array.max() > info.max:
        raise ValueError(f"{owner}: values from {array.min()} to {array.max()} do not fit {name}{where}, whose range "
                         f"is [{info.min}, {info.max}]; pass values within it, or a wider dtype")


def _holds_floats(value) -> bool:
    """Whether a NumPy array, nested list or a framework's tensor holds floating-point values."""
    dtype = getattr(value, "dtype", None)
    return "float" in str(dtype) if dtype is not None else np.asarray(value).dtype.kind == "f"


_NUMBER_KINDS = "fiub"  # NumPy's kinds of floats, signed and unsigned ints, bools


def to_numpy(value) -> np.ndarray:
    """Any backend's tensor or variable (or a NumPy array) -> NumPy array on the host: a GPU tensor, one that
    requires a gradient and a framework's own parameter too (``np.asarray`` refuses them), also from a framework
    whose unidl backend is not loaded (a plain PyTorch model's parameters loaded under the jax backend: converted
    by ``backends.to_numpy_unloaded``, which loads no backend and so changes no framework setting)."""
    if isinstance(value, np.ndarray):
        return value
    from unidl import backends

    for backend in backends.loaded_backends().values():
        if backend.is_tensor(value):
            return backend.to_numpy(value)
    converted = backends.to_numpy_unloaded(value)
    return np.asarray(value) if converted is None else converted
