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
        self.learning_rate = JaxVariable(jnp.asarray(optimizer.lr, dtype), trainable=False)
        self.iterations = JaxVariable(jnp.asarray(0, jnp.int64), trainable=False)
        self.slot_variables = [
            {name: JaxVariable(jnp.full(p.shape, optimizer.initial_slot_value, p.dtype), trainable=False)
             for name in optimizer.slots}
            for p in optimizer.params]

    def variables(self) -> list[JaxVariable]:
        """Everything a step of this optimizer reads and writes, besides the parameters."""
        return [self.learning_rate, self.iterations] + [v for slots in self.slot_variables for v in slots.values()]

    def apply(self, grads) -> None:
        spec, ops = self._spec, self._ops
        self.iterations.value = self.iterations.value + 1
        lr = self.learning_rate.value
        step = self.iterations.value.astype(lr.dtype) if spec.uses_step else None
        for param, grad, slots in zip(spec.params, grads, self.slot_variables):
            if grad is None:  # PyTorch's rule: no gradient, no update
                continue
            grad = spec.regularized_gradient(param, grad, ops)
            delta, new_slots = spec.update(param, grad, slots, lr, step, ops)
            for name, value in new_slots.items():
                if value is not slots[name]:
                    slots[name].assign(value)
            param.assign(param.value - delta)
