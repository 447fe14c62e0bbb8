"""MNIST from the four IDX files you already have (plain or ``.gz``); unidl never downloads them.

IDX layout: 2 zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, one big-endian
uint32 per dimension, then the values. Every one of these is checked before the data is read.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from unidl.datasets._files import check_labels, check_split, missing_files_error

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UNSIGNED_BYTE = 0x08


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"mnist: {path} is not a complete gzip file ({error})") from None


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """The uint8 array stored in IDX file ``path``, which must have ``expected_dims`` dimensions."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"mnist: {path} is truncated: expected at least 4 header bytes, found {len(data)}")
    zeros, type_code, dims = data[:2], data[2], data[3]
    if zeros != b"\x00\x00" or type_code != _UNSIGNED_BYTE or dims != expected_dims:
        expected = f"00 00 08 {expected_dims:02x}"
        raise ValueError(f"mnist: {path} is not an IDX file of {expected_dims}-d unsigned bytes: magic number "
                         f"{data[:4].hex(' ')}, expected {expected}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"mnist: {path} is truncated: expected {header} header bytes, found {len(data)}")
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", dims, offset=4))
    expected_bytes = header + int(np.prod(shape))
    if len(data) != expected_bytes:
        problem = "truncated" if len(data) < expected_bytes else "too long"
        raise ValueError(f"mnist: {path} is {problem}: shape {shape} needs {expected_bytes} bytes, "
                         f"found {len(data)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def mnist(directory, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The MNIST ``split`` ('train': 60,000, 'test': 10,000) read from IDX files in ``directory``.

    Returns ``(x, y)``: x float32 (N, 1, 28, 28) in [0, 1], y int64 in 0..9.
    """
    check_split("mnist", split)
    directory = Path(directory).expanduser()
    names = FILES[split]
    paths = [_find(directory, name) for name in names]
    if None in paths:
        missing = [f"{name} (or {name}.gz)" for name, path in zip(names, paths) if path is None]
        raise missing_files_error("mnist", [directory], missing,
                                  f"put the {split} files {' and '.join(names)} (plain or .gz) there")
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"mnist: {paths[0]} holds images of {images.shape[1]}x{images.shape[2]} pixels, "
                         f"expected 28x28")
    if len(images) != len(labels):
        raise ValueError(f"mnist: {paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, check_labels("mnist", paths[1], labels)
