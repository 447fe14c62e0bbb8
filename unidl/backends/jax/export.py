"""Export on jax: a SavedModel through ``jax2tf`` (where TensorFlow is installed), batch size left symbolic."""

from __future__ import annotations

import importlib.util


def export_formats() -> tuple[str, ...]:
    return ("saved_model",) if importlib.util.find_spec("tensorflow") is not None else ()


def export_module(module, path: str, format: str, input_shape) -> None:
    """Write ``module``'s eval-mode forward as a SavedModel (endpoint ``serve``, signature ``serving_default``)
    whose weights are the module's current values."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    native = module.native
    params = native.params
    dtype = next(iter(params.values())).dtype if params else "float32"
    converted = jax2tf.convert(lambda p, x: native.apply(p, x),
                               polymorphic_shapes=[None, f"(b, {', '.join(str(d) for d in input_shape)})"])
    holder = tf.Module()
    holder.params = {name.replace(".", "/"): tf.Variable(value, trainable=False) for name, value in params.items()}
    names = list(params)

    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.as_dtype(str(dtype)), name="x")],
                 autograph=False)
    def serve(x):
        return converted({name: holder.params[name.replace(".", "/")] for name in names}, x)

    holder.serve = serve
    tf.saved_model.save(holder, path, signatures={"serving_default": serve})
