"""Random but learnable classification data: each class is a fixed mean image plus Gaussian noise."""

from __future__ import annotations

import numpy as np


def synthetic(n: int = 1000, num_classes: int = 10, image_size: int = 8, channels: int = 1,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``num_classes`` classes, the same for the same arguments.

    Returns ``(x, y)``: x float32 (n, channels, image_size, image_size), y int64 in 0..num_classes-1.
    Class means are drawn from N(0, 1) per pixel and the noise is N(0, 1), so the classes overlap
    pixel by pixel but are easily separated by a linear model on the whole image.
    """
    for name, value in (("n", n), ("num_classes", num_classes), ("image_size", image_size),
                        ("channels", channels)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"synthetic: {name} must be a positive integer, got {value!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:  # (None: another set each call)
        raise ValueError(f"synthetic: seed must be a non-negative integer (the same images for the same seed), got "
                         f"{seed!r}")
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (num_classes, channels, image_size, image_size))
    y = rng.integers(0, num_classes, n)
    x = means[y] + rng.normal(0.0, 1.0, (n, channels, image_size, image_size))
    return x.astype(np.float32), y.astype(np.int64)
