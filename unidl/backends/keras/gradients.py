"""Gradients for the keras backend, through the framework Keras runs on (Keras 3 has no portable grad API)."""

from __future__ import annotations

import keras

from unidl.autograd import check_float, check_scalar


def value_and_grad(f, args, argnums, params, to_tensor):
    """``(f(*args), grads)`` with TensorFlow's GradientTape or torch's autograd, as Keras is configured."""
    framework = keras.backend.backend()
    args = list(args)
    if argnums is not None:
        check_float([args[i] for i in argnums], "argument")
    else:
        check_float(params, "parameter")
    if framework == "tensorflow":
        import tensorflow as tf

        if argnums is not None:
            for i in argnums:
                args[i] = tf.convert_to_tensor(to_tensor(args[i]))
        targets = [args[i] for i in argnums] if argnums is not None else [p.value for p in params]
        with tf.GradientTape() as tape:
            for t in targets:
                tape.watch(t)
            value = f(*args)
        check_scalar(value, "keras")
        grads = tape.gradient(value, targets, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return value, [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
    if framework == "torch":
        import torch

        if argnums is not None:
            for i in argnums:
                args[i] = to_tensor(args[i]).detach().requires_grad_(True)
        targets = [args[i] for i in argnums] if argnums is not None else [p.value for p in params]
        with torch.enable_grad():
            value = f(*args)
            check_scalar(value, "keras")
            grads = torch.autograd.grad(value, targets, allow_unused=True)
        return value.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]
    raise NotImplementedError(f"unidl's keras backend computes gradients on Keras's tensorflow and torch "
                              f"backends; KERAS_BACKEND={framework!r} is not supported")
