"""A pure-NumPy reader and writer of the safetensors format, the file format of ``unidl.save``.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the tensors' bytes, little-endian and in C order, back to back. The reader trusts
nothing in the file: every size is checked against the file's real size before anything
is read or allocated, so a damaged or hostile file gives a ``CorruptFileError``, never a crash.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Mapping

import numpy as np

from unidl.errors import CorruptFileError
from unidl.io.atomic import atomic_open

#: Headers above this size are refused before being read (real headers are a few kB to a few MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: safetensors dtype name -> little-endian NumPy dtype
DTYPES = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
}
#: bfloat16 has no NumPy dtype: read as its upper 16 bits of a float32, widened to float32.
_BF16_ITEMSIZE = 2
_NAMES_BY_KIND = {(dtype.kind, dtype.itemsize): name for name, dtype in DTYPES.items()}
_METADATA_KEY = "__metadata__"
_ALIGNMENT = 8


# ---- writing -------------------------------------------------------------

def _dtype_name(name: str, array: np.ndarray) -> str:
    dtype_name = _NAMES_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if dtype_name is None:
        raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store; "
                        f"valid dtypes are {', '.join(str(d) for d in DTYPES.values())}")
    return dtype_name


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors bytes of ``tensors`` (name -> array) and string ``metadata``."""
    header: dict = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {type(value).__name__}")
        header[_METADATA_KEY] = dict(metadata)
    chunks, offset = [], 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == _METADATA_KEY:
            raise ValueError(f"{_METADATA_KEY!r} is reserved for metadata and cannot name a tensor")
        array = np.asarray(value)
        dtype_name = _dtype_name(name, array)
        data = np.ascontiguousarray(array, dtype=DTYPES[dtype_name]).tobytes()
        header[name] = {"dtype": dtype_name, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # pad with spaces (valid JSON) so that the buffer starts 8-byte aligned, as the reference writer does
    header_bytes += b" " * (-(8 + len(header_bytes)) % _ALIGNMENT)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks)


def save_file(tensors: Mapping[str, np.ndarray], path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> NumPy array) and string ``metadata`` to ``path`` atomically."""
    data = serialize(tensors, metadata)
    with atomic_open(path) as handle:
        handle.write(data)


# ---- reading -------------------------------------------------------------

def check_readable_file(path) -> str:
    """``path`` as a string, or FileNotFoundError / IsADirectoryError naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, expected a file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    return path


def _reject_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(handle, path: str, file_size: int) -> tuple[dict, int]:
    """Parse and validate the header; returns (header, offset of the buffer in the file)."""
    def corrupt(problem: str) -> CorruptFileError:
        return CorruptFileError(f"{path!r} is not a valid safetensors file: {problem}")

    if file_size < 8:
        raise corrupt(f"it is {file_size} bytes long, shorter than the 8-byte header length")
    (header_size,) = struct.unpack("<Q", handle.read(8))
    if header_size > MAX_HEADER_BYTES:
        raise corrupt(f"header length {header_size} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if 8 + header_size > file_size:
        raise corrupt(f"header length {header_size} runs past the end of the {file_size}-byte file (truncated?)")
    raw = handle.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise corrupt(f"header is not valid UTF-8 JSON ({type(error).__name__}: {error})") from None
    if not isinstance(header, dict):
        raise corrupt(f"header is a JSON {type(header).__name__}, expected an object")
    metadata = header.get(_METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt(f"{_METADATA_KEY} must be an object mapping strings to strings")

    buffer_size = file_size - 8 - header_size
    entries = []
    for name, entry in header.items():
        if name == _METADATA_KEY:
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise corrupt(f"tensor {name!r}: entry must have exactly the keys dtype, shape, data_offsets")
        dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype_name == "BF16":
            itemsize = _BF16_ITEMSIZE
        elif dtype_name in DTYPES:
            itemsize = DTYPES[dtype_name].itemsize
        else:
            raise corrupt(f"tensor {name!r} has unknown dtype {dtype_name!r}; "
                          f"known dtypes are {', '.join(list(DTYPES) + ['BF16'])}")
        if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
            raise corrupt(f"tensor {name!r} has invalid shape {shape!r}; expected a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise corrupt(f"tensor {name!r} has invalid data_offsets {offsets!r}; expected [begin, end] with begin <= end")
        expected = math.prod(shape) * itemsize
        if offsets[1] - offsets[0] != expected:
            raise corrupt(f"tensor {name!r} ({dtype_name}, shape {tuple(shape)}) needs {expected} bytes "
                          f"but data_offsets {offsets} span {offsets[1] - offsets[0]}")
        entries.append((offsets[0], offsets[1], name))

    # the tensors must tile the buffer exactly: no overlap, no hole, nothing after the last one
    position = 0
    for begin, end, name in sorted(entries):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else f"leaves a gap of {begin - position} bytes"
            raise corrupt(f"tensor {name!r} data_offsets [{begin}, {end}] {what}")
        position = end
    if position > buffer_size:
        raise corrupt(f"tensors need a {position}-byte buffer but the file holds only {buffer_size} bytes "
                      f"after the header (truncated)")
    if position < buffer_size:
        raise corrupt(f"{buffer_size - position} bytes of trailing data after the last tensor")
    header[_METADATA_KEY] = metadata
    return header, 8 + header_size


def _decode(data: bytes, dtype_name: str, shape: list) -> np.ndarray:
    if dtype_name == "BF16":
        upper = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return upper.view(np.float32).reshape(shape)
    array = np.frombuffer(bytearray(data), dtype=DTYPES[dtype_name]).reshape(shape)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def load_file(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``, tensors in file order as writable NumPy arrays.

    Raises ``CorruptFileError`` naming the file and the problem for anything malformed,
    ``FileNotFoundError`` / ``IsADirectoryError`` for a bad path. Never unpickles.
    """
    path = check_readable_file(path)
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header, start = read_header(handle, path, file_size)
        metadata = header.pop(_METADATA_KEY)
        tensors = {}
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            handle.seek(start + begin)
            data = handle.read(end - begin)
            if len(data) != end - begin:
                raise CorruptFileError(f"{path!r} is not a valid safetensors file: tensor {name!r} "
                                       f"was cut short while reading (file changed or truncated)")
            tensors[name] = _decode(data, entry["dtype"], entry["shape"])
    return tensors, dict(metadata)


def is_safetensors(path) -> bool:
    """Whether ``path`` starts like a safetensors file (a plausible header length, then '{')."""
    path = check_readable_file(path)
    file_size = os.path.getsize(path)
    if file_size < 9:
        return False
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        return header_size <= min(MAX_HEADER_BYTES, file_size - 8) and handle.read(1) == b"{"
