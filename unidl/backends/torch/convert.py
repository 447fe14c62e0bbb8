"""Host arrays of PyTorch tensors: the torch backend's ``to_numpy``, and ``unidl.backends.to_numpy_unloaded``'s
for a plain PyTorch model's tensors under another backend. Imports torch only; loads nothing of unidl's (loading
the torch backend sets torch's seed, threads and float32 mode)."""

from __future__ import annotations

import torch


def _bfloat16():
    """NumPy's bfloat16 dtype, from ml_dtypes (which JAX and TensorFlow install); a clear error without it."""
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("a bfloat16 tensor as a NumPy array needs the ml_dtypes package (pip install ml_dtypes); "
                        "or convert it first with ud.ops.cast(x, 'float32')") from None
    return ml_dtypes.bfloat16


def to_numpy(value):
    """``value`` as a NumPy array of its own (detached, copied off a GPU, never a view that a later update of the
    tensor would change; bfloat16 as ml_dtypes' bfloat16, as JAX and TensorFlow give it), or None if it is not a
    torch tensor."""
    if not isinstance(value, torch.Tensor):
        return None
    if value.dtype is torch.bfloat16:
        return value.detach().cpu().view(torch.int16).numpy().view(_bfloat16()).copy()
    return value.detach().cpu().numpy().copy()
