"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download) with a fixed train/test split."""

from __future__ import annotations

import gzip
import importlib.util
import os

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
    images, target = _load()
    indices = _split_indices(len(target), split)
    images = (images[indices] / 16.0).astype(np.float32)
    x = images.reshape(len(indices), 64) if flatten else images[:, None, :, :]
    return np.ascontiguousarray(x), target[indices].astype(np.int64)


def _load() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``load_digits`` gives them: images (1797, 8, 8) float64 in 0..16 and their labels.

    Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, 64 pixels and the label a
    row) as ``load_digits`` reads it, without importing ``sklearn.datasets``, which imports SciPy and most of
    scikit-learn: 0.7 s of CPU, more than the rest of a first call, paid by every fresh interpreter that trains on
    digits. Where the file is not found there (another layout), ``load_digits`` itself."""
    spec = importlib.util.find_spec("sklearn")  # (finds the package without importing it)
    if spec is None:
        raise ImportError("unidl.datasets.digits needs scikit-learn: pip install 'unidl[data]'")
    for folder in spec.submodule_search_locations or ():
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, mode="rt", encoding="utf-8") as file:
                data = np.loadtxt(file, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target
