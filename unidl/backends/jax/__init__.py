"""JAX backend metadata; the implementation lives in ``backend.py`` and is imported on first use."""

from unidl.backends import BackendSpec

SPEC = BackendSpec(name="jax", aliases=(), extra="jax", priority=3, required_modules=lambda: ("jax",),
                   export_formats={"stablehlo": "a serialized jax.export.Exported: "
                                                "jax.export.deserialize(bytearray(open(path, 'rb').read())).call(x) "
                                                "(int64 or float64 inputs: after jax.config.update('jax_enable_x64', "
                                                "True))"},
                   companion_modules=("optax",))
