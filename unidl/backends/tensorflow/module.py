"""The ``tf.Module`` that mirrors a unidl module tree over the very same ``tf.Variable`` objects."""

from __future__ import annotations

import tensorflow as tf


class NativeModule(tf.Module):
    """A ``tf.Module`` view of a unidl module: tracks its variables (for ``tf.train.Checkpoint``
    and ``tf.saved_model``) and calls its forward."""

    def __init__(self, module):
        super().__init__(name=type(module).__name__)
        self._unidl_module = module
        self.parameters = dict(module.named_parameters(remove_duplicate=False))  # (every state_dict name)
        self.buffers = dict(module.named_buffers(remove_duplicate=False))

    def __call__(self, *args, **kwargs):
        return self._unidl_module(*args, **kwargs)
