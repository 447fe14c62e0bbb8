"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download) with a fixed train/test split."""

from __future__ import annotations

import numpy as np

from unidl.datasets._files import check_split

TRAIN_SIZE = 1437  # the other 360 images are the test split


def _split_indices(count: int, split: str | None) -> np.ndarray:
    if split is None:
        return np.arange(count)
    order = np.random.default_rng(0).permutation(count)  # fixed: same split on every machine
    return np.sort(order[:TRAIN_SIZE] if split == "train" else order[TRAIN_SIZE:])


def digits(split: str | None = "train", flatten: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The digits images and labels of ``split`` ('train': 1,437, 'test': 360, None: all 1,797).

    Returns ``(x, y)``: x float32 (N, 1, 8, 8) in [0, 1] (or (N, 64) with ``flatten=True``), y int64 in 0..9.
    """
    check_split("digits", split, ("train", "test", None))
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("unidl.datasets.digits needs scikit-learn: pip install 'unidl[data]'") from None
    bunch = load_digits()
    indices = _split_indices(len(bunch.target), split)
    images = (bunch.images[indices] / 16.0).astype(np.float32)
    x = images.reshape(len(indices), 64) if flatten else images[:, None, :, :]
    return np.ascontiguousarray(x), bunch.target[indices].astype(np.int64)
