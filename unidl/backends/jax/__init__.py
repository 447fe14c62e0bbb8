"""JAX backend metadata; the implementation lives in ``backend.py`` and is imported on first use."""

from unidl.backends import BackendSpec

SPEC = BackendSpec(name="jax", aliases=(), extra="jax", priority=3, required_modules=lambda: ("jax",))
