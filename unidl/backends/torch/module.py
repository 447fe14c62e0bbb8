"""The ``torch.nn.Module`` that mirrors a unidl module tree over the very same ``Parameter`` objects."""

from __future__ import annotations

import torch


class NativeModule(torch.nn.Module):
    """A ``torch.nn.Module`` view of a unidl module: same parameters, buffers, names and forward.

    ``native.state_dict()`` keys equal ``module.state_dict()`` keys; the optimizers and
    tools of the PyTorch ecosystem (hooks, ``torch.compile``, ``torch.export``) work on it.
    """

    def __init__(self, module, root: bool = True):
        super().__init__()
        object.__setattr__(self, "_unidl_module", module)
        for name, parameter in module._parameters.items():
            self.register_parameter(name, parameter)
        for name, buffer in module._buffers.items():
            self.register_buffer(name, buffer, persistent=module._persists(name))
        for name, child in module._modules.items():
            self.add_module(name, None if child is None else NativeModule(child, root=False))
        self.training = module.training  # (each view its module's own mode: train() would set the children's)

    def forward(self, *args, **kwargs):
        return self._unidl_module(*args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self._unidl_module.train(mode)
        return self
