"""Host buffers that a framework can adopt as a variable's memory without copying them.

TensorFlow's kernels need 64-byte aligned memory to use a NumPy buffer in place (NumPy's own are
16-byte aligned); ``ud.load`` reads each tensor of a file into such a buffer and hands it over.
"""

from __future__ import annotations

import math

import numpy as np

#: the alignment TensorFlow's (Eigen's) kernels need to use a buffer in place
ALIGNMENT = 64


def _aligned(raw: np.ndarray, nbytes: int) -> np.ndarray:
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes]


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialized uint8 buffer of ``nbytes`` starting at an ``ALIGNMENT``-byte boundary."""
    return _aligned(np.empty(nbytes + ALIGNMENT, dtype=np.uint8), nbytes)


def is_undrawn_zeros(value) -> bool:
    """Whether ``value`` is an array of zeros that takes no memory (zero strides): a weight while ``ud.load``
    builds the model it then reads the file into (``unidl.random.shape_only``). A backend creates such a
    variable from ``aligned_zeros`` rather than converting it, which would write every byte."""
    return isinstance(value, np.ndarray) and value.size > 1 and not any(value.strides) and not value.flat[0]


def aligned_zeros(shape, dtype) -> np.ndarray:
    """Zeros of ``shape`` and ``dtype`` starting at an ``ALIGNMENT``-byte boundary. Large ones are fresh
    zero pages of the operating system, which take no memory until written: what a variable holds
    while ``ud.load`` builds the model, before the file's tensor replaces it."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    return _aligned(np.zeros(nbytes + ALIGNMENT, dtype=np.uint8), nbytes).view(dtype).reshape(shape)
