"""Moving values between NumPy and the current backend: ``tensor`` and ``to_numpy``."""

from __future__ import annotations

import numpy as np

from unidl import config
from unidl.errors import DtypeMismatchError


def tensor(value, dtype: str | None = None):
    """NumPy array (or nested list, or scalar) -> the current backend's tensor on the current device.

    Floating values take ``dtype`` or unidl's current dtype (float32 by default); integer values
    become int64 tensors. Anything that is not numbers (a string, an object) is a ``DtypeMismatchError``
    (a ``TypeError``) on every backend.
    """
    backend = config.backend()
    if isinstance(value, np.ndarray) or not backend.is_tensor(value):
        array = value if isinstance(value, np.ndarray) else None if isinstance(value, (str, bytes)) else np.asarray(value)
        if array is None or array.dtype.kind not in _NUMBER_KINDS:
            what = f"{type(value).__name__} {value!r}" if array is None else f"an array of dtype {array.dtype}"
            raise DtypeMismatchError(f"ud.tensor takes numbers (floats, ints or bools: a NumPy array, nested lists or "
                                     f"a scalar), got {what}")
    with backend.device_scope(config.get_device()):
        return backend.tensor(value, dtype)


_NUMBER_KINDS = "fiub"  # NumPy's kinds of floats, signed and unsigned ints, bools


def to_numpy(value) -> np.ndarray:
    """Any backend's tensor or variable (or a NumPy array) -> NumPy array on the host."""
    if isinstance(value, np.ndarray):
        return value
    from unidl import backends

    for backend in backends.loaded_backends().values():
        if backend.is_tensor(value):
            return backend.to_numpy(value)
    return np.asarray(value)
