"""Export on jax: ``stablehlo`` through ``jax.export`` (always), and a SavedModel through ``jax2tf`` where
TensorFlow is installed; both with the batch size left symbolic and the module's weights inside."""

from __future__ import annotations

import importlib.util

#: where a ``stablehlo`` program runs: the platforms unidl's jax backend computes on (lowered for each, no device
#: of either needed to export; ``Exported.call`` picks the one it runs on)
STABLEHLO_PLATFORMS = ("cpu", "cuda")


def export_formats() -> tuple[str, ...]:
    return ("stablehlo",) + (("saved_model",) if importlib.util.find_spec("tensorflow") is not None else ())


def export_module(module, path: str, format: str, input_shape) -> None:
    """Write ``module``'s eval-mode forward in ``format`` (one of ``export_formats()``) to ``path``."""
    if format == "stablehlo":
        _export_stablehlo(module, path, input_shape)
    else:
        _export_saved_model(module, path, input_shape)


def _dtype(module):
    params = module.native.params
    return next(iter(params.values())).dtype if params else "float32"


def _export_stablehlo(module, path: str, input_shape) -> None:
    """A serialized ``jax.export.Exported`` of ``x -> module(x)`` (the weights are constants of the program):
    ``jax.export.deserialize(bytearray(open(path, "rb").read())).call(x)`` runs it with jax alone."""
    import jax
    from jax import export

    native = module.native
    params = native.params
    forward = jax.jit(lambda x: native.apply(params, x))
    shape = export.symbolic_shape(f"b, {', '.join(str(d) for d in input_shape)}")
    exported = export.export(forward, platforms=STABLEHLO_PLATFORMS)(jax.ShapeDtypeStruct(shape, _dtype(module)))
    with open(path, "wb") as file:
        file.write(exported.serialize())


def _export_saved_model(module, path: str, input_shape) -> None:
    """A SavedModel (endpoint ``serve``, signature ``serving_default``) whose weights are the module's current
    values."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    native = module.native
    params = native.params
    converted = jax2tf.convert(lambda p, x: native.apply(p, x),
                               polymorphic_shapes=[None, f"(b, {', '.join(str(d) for d in input_shape)})"])
    holder = tf.Module()
    holder.params = {name.replace(".", "/"): tf.Variable(value, trainable=False) for name, value in params.items()}
    names = list(params)

    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.as_dtype(str(_dtype(module))), name="x")],
                 autograph=False)
    def serve(x):
        return converted({name: holder.params[name.replace(".", "/")] for name in names}, x)

    holder.serve = serve
    tf.saved_model.save(holder, path, signatures={"serving_default": serve})
