"""Mixed precision on JAX: the forward traced with explicit casts (``unidl.precision.autocast_modules``,
torch.autocast's rule), float32 master weights, and dynamic loss scaling for float16 held in ``JaxVariable``s
that the compiled step threads like the optimizer's state (an overflowing step is skipped by the optimizer's
non-finite guard: every parameter and slot keeps its value)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unidl.fit_options import rank_0_state
from unidl.backends.jax import distributed as jax_distributed, ops as jax_ops
from unidl.backends.jax.function import step_result
from unidl.backends.jax.optimizer import (all_finite, assign_numpy, gradient_flags, keep_window,
                                          read_numpy, window_micro_step)
from unidl.backends.jax.variable import JaxVariable, host_constant, made_beside
from unidl.nn.module import trainable_mask
from unidl.precision import BACKOFF_FACTOR, GROWTH_FACTOR, autocast_modules, modules_of
from unidl.training import loss_scale_storage


class LossScale:
    """The dynamic loss scale (``torch.amp.GradScaler``'s rule): ``scale`` and the finite steps in a row."""

    def __init__(self, precision):
        self.precision = precision
        self.scale = JaxVariable(host_constant(precision.init_scale, jnp.float32), trainable=False)
        self.good_steps = JaxVariable(host_constant(0, jnp.int32), trainable=False)

    def variables(self) -> list:
        return [self.scale, self.good_steps]

    def update(self, finite, when=True) -> None:
        """Move the scale by the step's ``finite`` flag, where the boolean ``when`` holds (an update's step)."""
        p = self.precision
        scale, good = self.scale.value, jnp.where(finite, self.good_steps.value + 1, 0)
        grow = good >= p.growth_interval
        grown = jnp.where(jnp.isfinite(scale * GROWTH_FACTOR), scale * GROWTH_FACTOR, scale)  # (GradScaler's)
        new_scale = jnp.where(finite, jnp.where(grow, grown, scale), scale * BACKOFF_FACTOR)
        self.scale.value = jnp.where(when, new_scale, scale)
        self.good_steps.value = jnp.where(when, jnp.where(grow, 0, good), self.good_steps.value)

    def checkpointed(self):
        """This scale as a ``unidl.training.LossScaler`` (the optimizer's checkpointed state)."""
        from unidl.training import variable_scaler

        return variable_scaler(self.precision, self.scale, self.good_steps, read_numpy, assign_numpy)


class Window:
    """What gradient accumulation keeps between micro-steps (``accumulate`` N > 1): the sum of the micro-steps'
    scaled gradients of ``loss / N``, which parameters had a gradient in them, their losses, and how many have
    run."""

    def __init__(self, params, accumulate):
        self.accumulate, self.params = accumulate, params
        self.sums = [JaxVariable(host_constant(0, p.dtype, p.shape), trainable=False) for p in params]
        self.has_gradient = gradient_flags(params)
        self.losses = JaxVariable(host_constant(0, jnp.float32, (accumulate,)), trainable=False)
        self.count = JaxVariable(host_constant(0, jnp.int32), trainable=False)

    def variables(self) -> list:
        return [*self.sums, *self.has_gradient, self.losses, self.count]

    def add(self, grads, loss, present=None):
        """``(sums, losses, updates, has_gradient)`` with this micro-step added; ``updates``: it is the window's
        last; ``has_gradient``: per parameter, None or whether it had a gradient in the window
        (``unidl.backends.jax.optimizer.window_micro_step``, PyTorch's rule). The window keeps them, or restarts
        after its last micro-step."""
        n = self.accumulate
        sums, has_gradient = window_micro_step(self.sums, self.has_gradient, grads, n, self.params, present)
        losses = self.losses.value.at[self.count.value].set(loss.astype(jnp.float32))
        count = self.count.value + 1
        updates = count >= n
        keep_window(self.sums, self.has_gradient, sums, has_gradient, ~updates)
        self.losses.value = losses
        self.count.value = jnp.where(updates, 0, count)
        return sums, losses, updates, has_gradient

    def checkpointed(self, scaler):
        """This window as a ``unidl.training.AccumulationWindow``: its sums unscaled by ``scaler``'s scale in
        force (None: no scaling; a power of two, so exactly), its finite flag read from its losses."""
        from unidl.training import variable_window

        scale = (lambda: float(np.asarray(scaler.scale.value))) if scaler is not None else None
        return variable_window(self.accumulate, self.sums, self.count, self.losses, read_numpy, assign_numpy,
                               scale=scale, storage=self,
                               has_gradient=(self.has_gradient, self.params))


def _float32(outputs):
    """A forward's outputs (an array, or tuples, lists and dicts of them) with their floats in float32."""
    return jax.tree_util.tree_map(
        lambda value: value.astype(jnp.float32) if isinstance(value, jax.Array)
        and jnp.issubdtype(value.dtype, jnp.floating) else value, outputs)


def train_step(backend, model, loss_fn, optimizer, precision, with_outputs, eager, accumulate=1):
    """``Backend.mixed_precision_train_step`` of the jax backend: one ``jax.jit`` step (state in, state out),
    or eager with ``eager=True``, like its ``train_step``. With ``accumulate`` N > 1 the scaled gradients add up
    in a ``Window``; the N-th micro-step's flag selects the one unscale, check, scale move and update."""
    params = optimizer.params
    native = optimizer.native
    modules = modules_of(model, loss_fn)
    compute = precision.compute_dtype
    # the optimizer's one loss scale (every float16 step of it moves the same; its checkpointed state)
    scaler = None
    if precision.scales_loss:
        with made_beside(params):  # (made now or by an earlier step: on the parameters' device)
            scaler = loss_scale_storage(optimizer, precision, lambda: LossScale(precision))
    window = None
    if accumulate > 1:  # the optimizer's one window: every step of it with this accumulate and precision adds to it
        from unidl.training import accumulation_window

        with made_beside(params):
            window = accumulation_window(optimizer, accumulate, precision,
                                         lambda: Window(params, accumulate).checkpointed(scaler)).storage
    name = f"train_step of {type(model).__name__}"

    def step(x, y, *inputs):
        def loss_of():
            with autocast_modules(modules, jax_ops, compute):
                outputs = _float32(model(x, *inputs))
                loss = loss_fn(outputs, y)
            scaled = loss * scaler.scale.value.astype(loss.dtype) if scaler is not None else loss
            return scaled, (loss, outputs)

        mask = trainable_mask(params)  # at trace time (the static key): frozen parameters are constants
        active = [p for p, m in zip(params, mask) if m]
        (_, (loss, outputs)), found = backend._value_and_grad(
            loss_of, (), None, active, with_aux=True, name=f"the forward of {type(model).__name__} in ud.train_step")
        found = iter(found)
        # in a data-parallel job: the job's gradients, and its loss for the checks (``average_in_step``; a
        # window's micro-step: this rank's, the window averaged when it closes)
        checked, grads, present = jax_distributed.average_in_step(loss, [next(found) if m else None for m in mask],
                                                                  params, accumulate)
        # a value check that failed (a label out of range) stops the step before its update, as torch's error; the
        # parameters and slots take its flag into their update's own selection (``JaxOptimizer.apply``: selected
        # again after it, XLA computed every slot twice)
        passed = jax_ops.checks_passed()
        with jax_ops.unless_a_check_failed(native.not_selected_by_update(updated)):
            updates, has_gradient, agreed = True, present, True
            if window is not None:
                grads, checked, updates, has_gradient = window.add(grads, checked, present)
                # in a data-parallel job: the job's window at its last micro-step (one all-reduce per update), not
                # finite on every rank where any rank's losses are not
                grads, has_gradient, agreed = jax_distributed.window_in_step(grads, has_gradient,
                                                                             all_finite([checked]), updates)
            if scaler is not None:
                inverse = 1.0 / scaler.scale.value
                grads = [None if g is None else g * inverse.astype(g.dtype) for g in grads]
            # the step's loss, or the window's losses, and the gradients: read by the scaler and the window only
            # (a bf16 step without a window leaves the check to ``native.apply``, one pass over the gradients)
            finite = all_finite([checked, *grads]) & agreed if scaler is not None or window is not None else None
            if scaler is not None:  # a non-finite loss with finite gradients moves the scale as an overflow (torch's)
                scaler.update(finite, when=updates)
            if window is None:
                native.guarded_apply(grads, checked, present=present, passed=passed)  # skipped if not finite
            else:  # the optimizer's guard and clipping, selected by the window's last micro-step
                native.finite.value = jnp.where(updates, finite, True)  # inside the window nothing is skipped yet
                update = updates & finite if passed is None else updates & finite & passed
                native._update(native._spec.clip_gradients(grads, native._ops), update, has_gradient)
        return step_result(loss, outputs, y, with_outputs)

    updated = ([*params, *native.variables()] + (scaler.variables() if scaler is not None else [])
               + (window.variables() if window is not None else []))
    variables = (backend._model_state(model, optimizer, loss_fn) + (scaler.variables() if scaler is not None else [])
                 + (window.variables() if window is not None else []))
    # (in a job: rank 0's start on every rank, the loss's own parameters' too)
    jax_distributed.broadcast_from_rank_0(rank_0_state(model, loss_fn, optimizer))
    run, compiled = backend.compile_step(step, variables, model, params, name, eager)
    return _WithScale(run, compiled, scaler)


class _WithScale:
    """A step that also reports its loss scale (``loss_scale()``) and its ``trace_count``."""

    def __init__(self, run, compiled, scaler):
        self._run, self._compiled, self._scaler = run, compiled, scaler

    def __call__(self, *args):
        return self._run(*args)

    def loss_scale(self) -> float:
        return float(self._scaler.scale.value) if self._scaler is not None else 1.0

    @property
    def trace_count(self):
        return self._compiled.trace_count
