"""Initial weights drawn in NumPy from unidl's seed, in the canonical layout, with PyTorch's default rules.

Drawing here rather than in each framework is what makes a seed give
bit-identical starting weights on every backend.
"""

from __future__ import annotations

import math

import numpy as np

from unidl import random as _random


def uniform(shape, bound: float) -> np.ndarray:
    """Samples of U(-bound, bound), drawn in float64 so the dtype cast is the only rounding."""
    return _random.generator().uniform(-bound, bound, size=tuple(shape))


def kaiming_uniform(shape, fan_in: int) -> np.ndarray:
    """PyTorch's default weight init, ``kaiming_uniform_(a=sqrt(5))``: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    gain = math.sqrt(2.0 / (1 + 5))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in))


def bias_uniform(shape, fan_in: int) -> np.ndarray:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(shape, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


def zeros(shape) -> np.ndarray:
    return np.zeros(tuple(shape))


def ones(shape) -> np.ndarray:
    return np.ones(tuple(shape))


def normal(shape, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """Samples of N(mean, std^2) (``Embedding``'s default weights, as PyTorch's ``normal_``). The generator scales
    and shifts its draws itself (the same values as ``mean + std * standard_normal``): inside
    ``unidl.random.shape_only`` that arithmetic made a full array of the zero-stride draw, so ``ud.load`` of a
    file whose config claims a huge ResNet spent seconds and gigabytes before refusing it."""
    return _random.generator().normal(mean, std, size=tuple(shape))


def zero_row(weight: np.ndarray, row: int) -> np.ndarray:
    """``weight`` with row ``row`` set to zero, in place (``Embedding``'s padding row). A draw of
    ``unidl.random.shape_only`` (one read-only zero seen through every index) is zero already and is returned as it
    is: a copy of it with the row written made the whole table, so ``ud.load`` of a file whose config claims a
    vocabulary of 30 million took 15 GB and a minute before refusing it."""
    if not any(weight.strides) and weight.size and weight.flat[0] == 0:
        return weight
    weight[row] = 0.0
    return weight
