"""The unidl backend of the framework Keras runs on (``KERAS_BACKEND``): the keras backend's host.

Keras 3 has no portable API for gradients, compiled functions, custom gradients or device
queries, so the keras backend delegates those to the unidl backend of the same framework
instead of branching on Keras's framework; a framework Keras supports becomes a keras host by
having a unidl backend of its own (a folder in ``unidl/backends/``). The host also says which of
its ops take Keras's tensors and variables as they are (``Backend.keras_native_ops``).
"""

from __future__ import annotations

import keras

from unidl import backends
from unidl.errors import BackendNotInstalledError, UnknownBackendError


def _load_host():
    framework = keras.backend.backend()
    try:
        return backends.load(framework)
    except UnknownBackendError:
        hosts = ", ".join(name for name in backends.specs() if name != "keras")
        raise BackendNotInstalledError(
            f"Keras runs on {framework!r} here (KERAS_BACKEND), but unidl has no {framework!r} backend for its "
            f"keras backend to delegate gradients, compiled functions and devices to; set KERAS_BACKEND to "
            f"one of unidl's backends: {hosts}") from None


HOST = _load_host()
