"""CIFAR-10 from the Python-pickle batches you already have; unidl never downloads them.

The batches are pickles, and unpickling can run arbitrary code, so they are read with an unpickler
that rebuilds NumPy arrays and plain Python values and refuses every other class or function.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from unidl.datasets._files import check_labels, check_split, missing_files_error

FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
SUBDIRECTORY = "cifar-10-batches-py"


def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    """What pickled NumPy arrays may name, under both NumPy 1 (numpy.core) and NumPy 2 (numpy._core)."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # protocol 2 pickles bytes as _codecs.encode(str)
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED_GLOBALS = _numpy_reconstructors()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, dtypes and plain Python data; any other global is an UnpicklingError."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only NumPy arrays and plain Python values may "
                f"appear in a dataset pickle") from None


def load_pickle(path: Path):
    """Unpickle ``path`` with ``RestrictedUnpickler`` (bytes keys, as the Python 2 CIFAR files have)."""
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        if "refusing" in str(error):
            raise pickle.UnpicklingError(f"cifar10: {path}: {error}") from None
        raise ValueError(f"cifar10: {path} is truncated or corrupt ({len(data)} bytes): {error}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError) as error:
        raise ValueError(f"cifar10: {path} is truncated or corrupt ({len(data)} bytes): "
                         f"{type(error).__name__}: {error}") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"cifar10: {path} holds a {type(batch).__name__}, expected a dict with keys b'data' "
                         f"and b'labels'")
    batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"cifar10: {path} has keys {sorted(batch)}, expected 'data' and 'labels'")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"cifar10: {path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise ValueError(f"cifar10: {path}: {len(data)} images but labels of shape {labels.shape}")
    return data, check_labels("cifar10", path, labels)


def cifar10(directory, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10 ``split`` ('train': 50,000, 'test': 10,000) read from the batches in ``directory``
    (or in ``directory/cifar-10-batches-py``).

    Returns ``(x, y)``: x float32 (N, 3, 32, 32) in [0, 1], y int64 in 0..9.
    """
    check_split("cifar10", split)
    directory = Path(directory).expanduser()
    names = FILES[split]
    candidates = [directory, directory / SUBDIRECTORY]
    folder = next((c for c in candidates if all((c / name).is_file() for name in names)), None)
    if folder is None:
        best = max(candidates, key=lambda c: sum((c / name).is_file() for name in names))
        missing = [name for name in names if not (best / name).is_file()]
        raise missing_files_error("cifar10", candidates, missing,
                                  f"put the {split} batches {', '.join(names)} in one of these directories")
    batches = [_read_batch(folder / name) for name in names]
    data = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    x = (data.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
    return x, labels.astype(np.int64)
