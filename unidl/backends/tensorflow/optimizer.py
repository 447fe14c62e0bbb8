"""unidl optimizers on TensorFlow: slot variables updated inside the graph by the optimizer's own ``update()``,
or by TensorFlow's fused kernel for the same rule where there is one (SGD with momentum: ``Optimizer.apply_fused``)."""

from __future__ import annotations

import tensorflow as tf


class GraphOptimizer(tf.Module):
    """The state of one unidl optimizer as ``tf.Variable``s (learning rate, step count, slots).

    ``apply(grads)`` is plain TensorFlow, so it runs eagerly or inside a compiled train step;
    the learning rate is a variable, so changing it never retraces.
    """

    def __init__(self, optimizer, ops):
        super().__init__(name=type(optimizer).__name__)
        self._spec = optimizer
        self._ops = ops
        dtype = optimizer.params[0].dtype
        # one learning rate per param group (the first is ``learning_rate``)
        self.learning_rates = [tf.Variable(group["lr"], dtype=dtype, trainable=False, name="learning_rate")
                               for group in optimizer.param_groups]
        self.learning_rate = self.learning_rates[0]
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.finite = tf.Variable(True, trainable=False, name="last_step_finite")
        self.last_flag = None  # the flag a compiled train step last returned (see Backend.last_step_finite)
        self.slot_variables = [
            {name: tf.Variable(tf.fill(tf.shape(p), tf.cast(optimizer.initial_slot_value, p.dtype)),
                               trainable=False, name=name) for name in optimizer.slots}
            for p in optimizer.params
        ]

    def prepare_accumulation(self) -> None:
        """Create (eagerly, never inside a trace) what ``apply(..., accumulate=N)`` keeps between micro-steps."""
        if getattr(self, "accumulated", None) is None:
            self.accumulated = [tf.Variable(tf.zeros_like(p), trainable=False, name="accumulated_gradient")
                                for p in self._spec.params]
            self.micro_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="micro_steps")

    def apply(self, grads, loss=None, accumulate: int = 1):
        """One guarded update: skipped entirely (``finite`` False) when ``loss`` or a gradient is not finite,
        decided inside the graph (one ``is_finite`` reduction per tensor and a ``tf.cond``). With ``accumulate``
        N > 1 this is one micro-step: ``grads / N`` is added to the accumulated gradients, and every N-th
        finite micro-step updates with their sum (a non-finite one discards the window). Returns the flag, so
        that a compiled step can hand it out with the loss (reading ``finite`` back is one more eager op)."""
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        finite = all_finite([loss, *grads])
        self.finite.assign(finite)
        if accumulate == 1:
            tf.cond(finite, lambda: self._clip_and_update(grads), lambda: tf.constant(False))
            return finite
        present = [g is not None for g in grads]

        def reset():
            for variable, used in zip(self.accumulated, present):
                if used:
                    variable.assign(tf.zeros_like(variable))
            self.micro_steps.assign(0)
            return tf.constant(False)

        def update_from_sum():
            self._clip_and_update([a.read_value() if used else None for a, used in zip(self.accumulated, present)])
            return reset()

        def micro_step():
            for variable, grad in zip(self.accumulated, grads):
                if grad is not None:
                    variable.assign_add(grad / tf.cast(accumulate, grad.dtype))
            count = self.micro_steps.assign_add(1)
            return tf.cond(count >= accumulate, update_from_sum, lambda: tf.constant(False))

        tf.cond(finite, micro_step, reset)
        return finite

    def _clip_and_update(self, grads):
        self._update(self._spec.clip_gradients(grads, self._ops))
        return tf.constant(True)

    def _update(self, grads):
        spec, ops = self._spec, self._ops
        iterations = self.iterations.assign_add(1)
        step = tf.cast(iterations, self.learning_rate.dtype) if spec.uses_step else None
        for index, (param, grad, slots) in enumerate(zip(spec.params, grads, self.slot_variables)):
            if grad is None:
                continue
            rule, lr = spec.rule_for(index), self.learning_rates[spec.group_of(index)]  # its param group's
            grad = rule.regularized_gradient(param, grad, ops)
            if rule.apply_fused(param, grad, slots, lr, ops):
                continue
            delta, new_slots = rule.update(param, grad, slots, lr, step, ops)
            for name, value in new_slots.items():
                if value is not slots[name]:
                    slots[name].assign(value)
            param.assign_sub(delta)


def all_finite(values):
    """A boolean scalar: every element of every tensor in ``values`` (None entries ignored) is finite."""
    flags = [tf.reduce_all(tf.math.is_finite(v)) for v in values if v is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)
