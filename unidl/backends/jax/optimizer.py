"""unidl optimizers on JAX: the optimizer's own ``update()`` over slot variables, written as JAX arrays.

The state (learning rate, step count, one ``JaxVariable`` per slot and parameter) lives in
``JaxVariable``s, so a compiled training step threads it like the parameters (state in, state
out) and a new learning rate is a new argument value, never a retrace.
"""

from __future__ import annotations

import jax.numpy as jnp

from unidl.backends.jax.variable import JaxVariable


class JaxOptimizer:
    """The state of one unidl optimizer; ``apply(grads)`` runs its rule (eagerly or inside a trace)."""

    def __init__(self, optimizer, ops):
        self._spec, self._ops = optimizer, ops
        dtype = optimizer.params[0].dtype
        # one learning rate per param group (the first is ``learning_rate``)
        self.learning_rates = [JaxVariable(jnp.asarray(group["lr"], dtype), trainable=False)
                               for group in optimizer.param_groups]
        self.learning_rate = self.learning_rates[0]
        self.iterations = JaxVariable(jnp.asarray(0, jnp.int64), trainable=False)
        self.finite = JaxVariable(jnp.asarray(True), trainable=False)
        self.slot_variables = [
            {name: JaxVariable(jnp.full(p.shape, optimizer.initial_slot_value, p.dtype), trainable=False)
             for name in optimizer.slots}
            for p in optimizer.params]

    def variables(self) -> list[JaxVariable]:
        """Everything a step of this optimizer reads and writes, besides the parameters."""
        return ([*self.learning_rates, self.iterations, self.finite]
                + [v for slots in self.slot_variables for v in slots.values()]
                + ([self.micro_steps, *self.accumulated] if getattr(self, "accumulated", None) else []))

    def prepare_accumulation(self) -> None:
        """Create what ``apply(..., accumulate=N)`` keeps between micro-steps (before a step is compiled)."""
        if getattr(self, "accumulated", None) is None:
            self.accumulated = [JaxVariable(jnp.zeros(p.shape, p.dtype), trainable=False) for p in self._spec.params]
            self.micro_steps = JaxVariable(jnp.asarray(0, jnp.int64), trainable=False)

    def apply(self, grads, loss=None, accumulate: int = 1) -> None:
        """One guarded update: when ``loss`` or a gradient is not finite every parameter, slot and the step count
        keep their values (``jnp.where`` on one boolean scalar inside the trace, fused by XLA into each update).
        With ``accumulate`` N > 1, one micro-step: ``grads / N`` joins the accumulated gradients and every N-th
        finite micro-step updates with their sum (a non-finite one discards the window)."""
        finite = all_finite([loss, *grads])
        self.finite.value = finite
        update = finite
        if accumulate > 1:
            sums = [None if g is None else a.value + g / jnp.asarray(accumulate, g.dtype)
                    for a, g in zip(self.accumulated, grads)]
            count = jnp.where(finite, self.micro_steps.value + 1, 0)
            update = count >= accumulate
            grads = sums
        grads = self._spec.clip_gradients(grads, self._ops)
        self._update(grads, update)
        if accumulate > 1:
            keep = finite & ~update  # a window still filling; else (updated or discarded) it starts again
            for variable, total in zip(self.accumulated, sums):
                if total is not None:
                    variable.value = jnp.where(keep, total, jnp.zeros_like(total))
            self.micro_steps.value = jnp.where(keep, count, 0)

    def _update(self, grads, update) -> None:
        """Every parameter and slot: its new value where ``update`` (a boolean scalar) holds, else its old one."""
        spec, ops = self._spec, self._ops
        step_count = self.iterations.value + 1
        self.iterations.value = jnp.where(update, step_count, self.iterations.value)
        lr = self.learning_rate.value
        step = step_count.astype(lr.dtype) if spec.uses_step else None
        for index, (param, grad, slots) in enumerate(zip(spec.params, grads, self.slot_variables)):
            if grad is None:  # PyTorch's rule: no gradient, no update
                continue
            rule, lr = spec.rule_for(index), self.learning_rates[spec.group_of(index)].value  # its param group's
            grad = rule.regularized_gradient(param, grad, ops)
            heavy_ball = rule.heavy_ball()
            if heavy_ball is not None:
                delta = _heavy_ball(slots, grad, lr, update, *heavy_ball)
            else:
                delta, new_slots = rule.update(param, grad, slots, lr, step, ops)
                for name, value in new_slots.items():
                    if value is not slots[name]:
                        _guarded_assign(slots[name], value, update)
            _guarded_assign(param, param.value - delta, update)


def _heavy_ball(slots, grad, lr, update, buffer_name, momentum, nesterov):
    """SGD's momentum rule (``Optimizer.heavy_ball``) with the guard on the buffer before the step is taken from
    it, so XLA computes the new buffer once and the parameter's update reads it, as a hand-written step does
    (selecting both results at the end makes XLA recompute the buffer from the old one in the parameter's
    update: one more read of every gradient and buffer); returns the parameter's decrement."""
    buffer = slots[buffer_name]
    _guarded_assign(buffer, momentum * buffer.value + grad, update)
    direction = grad + momentum * buffer.value if nesterov else buffer.value
    return lr * direction


def _guarded_assign(variable, value, update) -> None:
    """``variable`` takes ``value`` (cast to its dtype) where the boolean scalar ``update`` holds, else keeps its own."""
    variable.value = jnp.where(update, jnp.asarray(value, variable.dtype), variable.value)


def all_finite(values):
    """A boolean scalar: every element of every array in ``values`` (None entries ignored) is finite.

    ``sum(v - v)`` is 0 for finite elements and NaN once one is infinite or NaN (no overflow, unlike ``sum(v)``);
    XLA reads each array once in a vectorised float reduction, cheaper than ``all(isfinite(v))``, which
    materialises a boolean array first."""
    sums = [jnp.sum(v - v).astype(jnp.float32) for v in values if v is not None]
    return jnp.all(jnp.isfinite(jnp.stack(sums))) if sums else jnp.asarray(True)
