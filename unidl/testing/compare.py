"""How unidl measures agreement between two tensors: max|a - b| / max|b|."""

from __future__ import annotations

import numpy as np


def max_relative_difference(a, b) -> float:
    """max|a - b| / max|b| (or max|a - b| when b is all zeros), in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    difference = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return difference / scale if scale > 0 else difference
