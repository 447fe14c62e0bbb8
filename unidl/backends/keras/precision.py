"""Mixed precision on Keras: Keras's own trainer with the forward traced through explicit casts
(``unidl.precision.autocast_modules``, torch.autocast's rule) over the float32 variables, and for float16
Keras's ``LossScaleOptimizer`` around the unidl optimizer (dynamic loss scaling that skips an overflowing
step, halving the scale; doubling it after ``growth_interval`` finite steps), on whichever host runs Keras."""

from __future__ import annotations

import keras

from unidl.backends.keras import ops as keras_ops
from unidl.nn.module import trainable_mask
from unidl.precision import autocast_modules, modules_of


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's loss scaler that also hands the step's (unscaled) loss to the unidl optimizer it wraps, whose
    non-finite guard reads it."""

    def scale_loss(self, loss):
        self.inner_optimizer.scale_loss(loss)
        return super().scale_loss(loss)


def keras_optimizer(optimizer, precision):
    """The Keras optimizer to compile with: the unidl optimizer's own, or for "16-mixed" its loss scaler (one
    per optimizer and settings, kept on it, so that the scale carries over from epoch to epoch)."""
    if precision is None or not precision.scales_loss:
        return optimizer.native
    scaler = optimizer.__dict__.get("_keras_loss_scaler")
    if scaler is None or scaler.unidl_precision != precision:
        from unidl.backends.keras.backend import floatx

        with floatx("float32"):
            scaler = LossScaleOptimizer(optimizer.native, initial_scale=precision.init_scale,
                                        dynamic_growth_steps=precision.growth_interval)
            scaler.build(optimizer.params)  # its scale now, eagerly: never created inside a graph being traced
        scaler.unidl_precision = precision
        object.__setattr__(optimizer, "_keras_loss_scaler", scaler)
    return scaler


def loss_scale(optimizer) -> float:
    scaler = optimizer.__dict__.get("_keras_loss_scaler")
    return float(keras.ops.convert_to_numpy(scaler.dynamic_scale)) if scaler is not None else 1.0


def forward_scope(model, loss_fn, precision):
    """The casts of ``precision`` in force for the model's and the loss's forward while Keras traces or runs it."""
    return autocast_modules(modules_of(model, loss_fn), keras_ops, precision.compute_dtype)


def train_step(backend, model, loss_fn, optimizer, precision, with_outputs, eager):
    """``Backend.mixed_precision_train_step`` of the keras backend: its ``train_step`` (Keras's
    ``Model.train_step``) compiled with ``keras_optimizer`` and run in ``forward_scope``."""
    if with_outputs:
        raise NotImplementedError("the keras backend trains through Keras's trainer, which returns no outputs; "
                                  "ud.fit uses fit_epoch instead")
    from unidl.backends.keras.backend import _FreezeAwareStep

    keras_optimizer(optimizer, precision)  # the loss scale exists (and reads init_scale) before the first step
    run = _FreezeAwareStep(lambda: backend._train_step(model, loss_fn, optimizer, eager, precision),
                           lambda: trainable_mask(optimizer.params))

    return _ScopedStep(run, lambda: forward_scope(model, loss_fn, precision), lambda: loss_scale(optimizer))


class _ScopedStep:
    """The step run with mixed precision's casts in force; ``loss_scale()`` and ``trace_count`` as the others'."""

    def __init__(self, run, scope, scale):
        self._run, self._scope, self.loss_scale = run, scope, scale

    def __call__(self, *args):
        with self._scope():
            return self._run(*args)

    @property
    def trace_count(self):
        return self._run.trace_count
