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
        self.learning_rate = tf.Variable(optimizer.lr, dtype=dtype, trainable=False, name="learning_rate")
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.slot_variables = [
            {name: tf.Variable(tf.fill(tf.shape(p), tf.cast(optimizer.initial_slot_value, p.dtype)),
                               trainable=False, name=name) for name in optimizer.slots}
            for p in optimizer.params
        ]

    def apply(self, grads):
        spec, ops = self._spec, self._ops
        iterations = self.iterations.assign_add(1)
        step = tf.cast(iterations, self.learning_rate.dtype) if spec.uses_step else None
        for param, grad, slots in zip(spec.params, grads, self.slot_variables):
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                grad = tf.convert_to_tensor(grad)
            grad = spec.regularized_gradient(param, grad, ops)
            if spec.apply_fused(param, grad, slots, self.learning_rate, ops):
                continue
            delta, new_slots = spec.update(param, grad, slots, self.learning_rate, step, ops)
            for name, value in new_slots.items():
                if value is not slots[name]:
                    slots[name].assign(value)
            param.assign_sub(delta)
