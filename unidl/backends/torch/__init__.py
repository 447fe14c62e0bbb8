"""PyTorch backend metadata; the implementation lives in ``backend.py`` and is imported on first use."""

from unidl.backends import BackendSpec

SPEC = BackendSpec(name="torch", aliases=("pytorch",), extra="torch", priority=0,
                   required_modules=lambda: ("torch",))
