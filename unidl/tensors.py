"""Moving values between NumPy and the current backend: ``tensor`` and ``to_numpy``."""

from __future__ import annotations

import numpy as np

from unidl import config


def tensor(value, dtype: str | None = None):
    """NumPy array (or nested list, or scalar) -> the current backend's tensor on the current device.

    Floating values take ``dtype`` or unidl's current dtype (float32 by default); integer values
    become int64 tensors.
    """
    backend = config.backend()
    with backend.device_scope(config.get_device()):
        return backend.tensor(value, dtype)


def to_numpy(value) -> np.ndarray:
    """Any backend's tensor or variable (or a NumPy array) -> NumPy array on the host."""
    if isinstance(value, np.ndarray):
        return value
    from unidl import backends

    for backend in backends.loaded_backends().values():
        if backend.is_tensor(value):
            return backend.to_numpy(value)
    return np.asarray(value)
