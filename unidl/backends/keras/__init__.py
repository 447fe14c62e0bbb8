"""Keras 3 backend metadata; the implementation lives in ``backend.py`` and is imported on first use.

Keras itself runs on a framework of its own chosen by ``KERAS_BACKEND``
(TensorFlow when unset), which must be installed as well.
"""

import os

from unidl.backends import BackendSpec


def _required_modules():
    keras_backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return ("keras", {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}.get(keras_backend, keras_backend))


SPEC = BackendSpec(name="keras", aliases=(), extra="keras", priority=2, required_modules=_required_modules)
