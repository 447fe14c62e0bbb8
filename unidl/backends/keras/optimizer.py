"""unidl optimizers on Keras: a ``keras.optimizers.Optimizer`` running the unidl optimizer's own ``update()``.

Keras's built-in optimizers differ from PyTorch's rules (epsilon placement in
Adam, momentum sign convention in SGD), so unidl plugs its rule into Keras's
optimizer machinery instead: Keras still owns the slot variables, the
iteration counter and the learning-rate variable. Where Keras runs on TensorFlow,
SGD with momentum runs as TensorFlow's fused kernel for the same rule
(``Optimizer.apply_fused``).
"""

from __future__ import annotations

import keras
from keras import ops as K


class NativeOptimizer(keras.optimizers.Optimizer):
    """Keras optimizer whose ``update_step`` is ``spec.update`` (a unidl optimizer's rule)."""

    def __init__(self, spec, ops):
        super().__init__(learning_rate=spec.lr, name=type(spec).__name__.lower())
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_unidl_ops", ops)
        object.__setattr__(self, "_slot_table", [])

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        initializer = keras.initializers.Constant(self._spec.initial_slot_value)
        for variable in variables:
            self._slot_table.append({
                name: self.add_variable_from_reference(variable, name, initializer=initializer)
                for name in self._spec.slots})

    def slots_of(self, variable) -> dict:
        return self._slot_table[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        spec, ops = self._spec, self._unidl_ops
        slots = self.slots_of(variable)
        if hasattr(gradient, "indices") and hasattr(gradient, "dense_shape"):
            # a gather's gradient as rows (TensorFlow's IndexedSlices, for an Embedding): dense, as PyTorch's
            # gradient of an Embedding, for unidl's update rules
            gradient = K.scatter(K.expand_dims(K.cast(gradient.indices, "int32"), -1), gradient.values,
                                 K.cast(gradient.dense_shape, "int32"))
        gradient = spec.regularized_gradient(variable, gradient, ops)
        if spec.apply_fused(variable, gradient, slots, learning_rate, ops):  # where Keras's framework has a kernel
            return
        step = K.cast(self.iterations + 1, variable.dtype) if spec.uses_step else None
        delta, new_slots = spec.update(variable, gradient, slots, learning_rate, step, ops)
        for name, value in new_slots.items():
            if value is not slots[name]:
                self.assign(slots[name], value)
        self.assign_sub(variable, delta)
