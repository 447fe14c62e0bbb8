"""Host arrays of PyTorch tensors without the torch backend (``unidl.backends.to_numpy_unloaded``): a plain PyTorch
model's parameters loaded under another backend. Imports torch only; loads nothing of unidl's."""

from __future__ import annotations

import torch


def to_numpy(value):
    """``value`` on the host as a NumPy array (detached, copied off a GPU), or None if it is not a torch tensor."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else None
