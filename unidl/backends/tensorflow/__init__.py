"""TensorFlow backend metadata; the implementation lives in ``backend.py`` and is imported on first use."""

from unidl.backends import BackendSpec

SPEC = BackendSpec(name="tensorflow", aliases=("tf",), extra="tensorflow", priority=1,
                   required_modules=lambda: ("tensorflow",))
