"""unidl's reader and writer of the safetensors format, the file format of ``unidl.save``.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the tensors' bytes, little-endian and in C order, back to back. The reader trusts
nothing in the file: every size is checked against the file's real size before anything
is read or allocated, so a damaged or hostile file gives a ``CorruptFileError``, never a crash.

A file is read only if two parsers accept its header: unidl's (below: the header-size limit before
anything is read, strict checks with precise messages, the crc32 checksums unidl writes) and the
audited ``safetensors`` package (``check_with_package``), which must see the same tensors. unidl then
reads the tensors' bytes itself, at the offsets both checked, straight into the aligned buffers the
frameworks adopt: the package's NumPy reader copies each tensor once more (unaligned), its memory
map keeps every page read resident until closed, and it cannot read bfloat16 (NumPy has none).
Writing is unidl's: it adds the checksums and writes atomically.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
import zlib
from typing import Mapping

import numpy as np

from unidl.errors import CorruptFileError
from unidl.io.atomic import atomic_open
from unidl.io.buffers import aligned_empty

#: Headers above this size are refused before being read (real headers are a few kB to a few MB); the
#: safetensors package's own limit, so that both parsers refuse the same files.
MAX_HEADER_BYTES = 100_000_000

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


def widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values, given as the unsigned integers of their bits, as float32 (exact: a bfloat16 is the upper
    half of a float32). A uint32 array is widened in place; the result is a view of it."""
    upper = bits if bits.dtype == np.uint32 else bits.astype(np.uint32)
    np.left_shift(upper, 16, out=upper)
    return upper.view(np.float32)


# ---- integrity -----------------------------------------------------------

#: ``__metadata__`` key holding ``{tensor name: crc32 of its bytes}`` as JSON (covered by the header checksum)
TENSOR_CHECKSUMS_KEY = "unidl.crc32"
#: ``__metadata__`` key holding the crc32 of the canonical header without this key
HEADER_CHECKSUM_KEY = "unidl.header_crc32"
INTEGRITY_KEYS = (TENSOR_CHECKSUMS_KEY, HEADER_CHECKSUM_KEY)
_CHUNK_BYTES = 1024 * 1024


def header_checksum(header: dict) -> int:
    """crc32 of the header's canonical JSON (sorted keys, no spaces), its header-checksum entry left out.

    Computed over the parsed header, so any byte change that alters what the header means changes it,
    and a change that does not (padding, whitespace) leaves it, and the file, valid.
    """
    metadata = {k: v for k, v in header.get(_METADATA_KEY, {}).items() if k != HEADER_CHECKSUM_KEY}
    canonical = dict(header, **{_METADATA_KEY: metadata})
    return zlib.crc32(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("utf-8"))


# ---- writing -------------------------------------------------------------

def _extra_state_hint(name: str) -> str:
    return (" (a module's get_extra_state: return an array or a tensor to save it in a file)"
            if name.endswith("_extra_state") else "")


def _host_array(name: str, value) -> np.ndarray:
    """``value`` as a NumPy array: a tensor of any framework through ``unidl.tensors.to_numpy`` (a module's extra
    state may be a GPU tensor, or one that requires a gradient, which ``np.asarray`` refuses with the framework's
    words); what is no array at all is a ``TypeError`` naming its key."""
    from unidl.tensors import to_numpy

    try:
        return np.asarray(to_numpy(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"tensor {name!r} is a {type(value).__name__}, which is no array ({error})"
                        f"{_extra_state_hint(name)}") from None


def _dtype_name(name: str, array: np.ndarray) -> str:
    dtype_name = _NAMES_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if dtype_name is None:
        raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store"
                        f"{_extra_state_hint(name)}; valid dtypes are {', '.join(str(d) for d in DTYPES.values())}")
    return dtype_name


def _layout(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> tuple[bytes, list[np.ndarray]]:
    """(length-prefixed header bytes with checksums, the tensors as little-endian C-ordered arrays)."""
    header: dict = {}
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {type(value).__name__}")
        if key in INTEGRITY_KEYS:
            raise ValueError(f"metadata key {key!r} is reserved for unidl's checksums")
    arrays, checksums, offset = [], {}, 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == _METADATA_KEY:
            raise ValueError(f"{_METADATA_KEY!r} is reserved for metadata and cannot name a tensor")
        array = value if isinstance(value, np.ndarray) else _host_array(name, value)
        dtype_name = _dtype_name(name, array)
        array = np.asarray(array, dtype=DTYPES[dtype_name], order="C")  # no copy when already so; 0-d stays 0-d
        header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        checksums[name] = zlib.crc32(memoryview(array.reshape(-1)).cast("B")) if array.size else 0
        arrays.append(array)
        offset += array.nbytes
    metadata[TENSOR_CHECKSUMS_KEY] = json.dumps(checksums, separators=(",", ":"))
    header[_METADATA_KEY] = metadata
    metadata[HEADER_CHECKSUM_KEY] = str(header_checksum(header))
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # pad with spaces (valid JSON) so that the buffer starts 8-byte aligned, as the reference writer does
    header_bytes += b" " * (-(8 + len(header_bytes)) % _ALIGNMENT)
    return struct.pack("<Q", len(header_bytes)) + header_bytes, arrays


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors bytes of ``tensors`` (name -> array) and string ``metadata``, with unidl's checksums."""
    header, arrays = _layout(tensors, metadata)
    return header + b"".join(array.tobytes() for array in arrays)


def save_file(tensors: Mapping[str, np.ndarray], path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> NumPy array) and string ``metadata`` to ``path`` atomically.

    The ``__metadata__`` also gets a crc32 of every tensor's bytes and of the header, which the
    reader checks. Tensors are written from their own memory, never gathered into one buffer.
    """
    header, arrays = _layout(tensors, metadata)
    with atomic_open(path) as handle:
        handle.write(header)
        for array in arrays:
            if array.size:
                handle.write(memoryview(array.reshape(-1)).cast("B"))


# ---- reading -------------------------------------------------------------

def check_readable_file(path) -> str:
    """``path`` as a string, or FileNotFoundError / IsADirectoryError naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, expected a file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if not os.path.isfile(path):  # (a FIFO or a device: reading it would block or never end)
        raise CorruptFileError(f"{path!r} is not a regular file (a FIFO, a socket or a device), expected a file")
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
    if not raw.startswith(b"{"):  # (the format's rule; is_safetensors tells files apart by it)
        raise corrupt(f"header begins with {raw[:8]!r}, not '{{' (the safetensors format requires it)")
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


def check_with_package(path: str, entries: dict[str, tuple[str, tuple]], metadata: dict[str, str],
                       shown: str | None = None) -> None:
    """Raise ``CorruptFileError`` naming ``path`` unless the safetensors package accepts the file's header and
    reads from it the tensors ``{name: (dtype name, shape)}`` and the ``metadata`` that unidl's parser read.

    The package (imported here, so that ``import unidl`` stays light) parses the header in its own, audited
    code and checks what unidl checks too (JSON, dtypes, shapes against byte lengths, offsets that tile the
    buffer to the end of the file); unidl's parser ran first, so its refusals keep their precise messages,
    and a header that the two read differently (a parser differential) is refused. No tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as handle:  # maps the file; only the header's pages are read
            seen = {}
            for name in handle.keys():
                view = handle.get_slice(name)
                seen[name] = (view.get_dtype(), tuple(view.get_shape()))
            seen_metadata = handle.metadata() or {}
    except SafetensorError as error:
        raise CorruptFileError(f"{shown or path!r} is not a valid safetensors file: the safetensors package refuses "
                               f"it ({error})") from None
    differences = [name for name in sorted(set(seen) | set(entries)) if seen.get(name) != entries.get(name)]
    if seen_metadata != metadata:
        differences.append(_METADATA_KEY)
    if differences:
        raise CorruptFileError(f"{shown or path!r} is not a valid safetensors file: unidl's parser and the "
                               f"safetensors package read its header differently (entries {differences[:5]})")


class SafetensorsFile:
    """A safetensors file whose header has been read and checked; tensors are read one at a time.

    ``entries`` maps each tensor name to ``(dtype name, shape)`` in file order; ``metadata`` is the
    ``__metadata__`` without unidl's checksum keys; ``checksums`` is ``{name: crc32}`` when the file
    carries them (every file unidl writes does), else None. Opening checks the header with unidl's
    parser and with the safetensors package (``check_with_package``), then the header checksum;
    ``read`` and ``verify`` check a tensor's bytes against its checksum, so a corrupt file gives a
    ``CorruptFileError`` naming the file and the tensor. Nothing is read before it is needed: a
    tensor is read straight into the one (64-byte aligned) array returned, and ``verify`` streams in
    small chunks. The file is opened once and every read goes through that handle (the package's check through
    ``/proc/self/fd`` where there is one), so a file that another process replaces meanwhile (an atomic save to
    the same path) is read whole as it was, never half old and half new (a spurious "corrupt").
    """

    def __init__(self, path):
        self.path = path = check_readable_file(path)
        self._handle, self._lock = open(path, "rb"), threading.Lock()
        try:
            self.file_size = os.fstat(self._handle.fileno()).st_size
            header, self._start = read_header(self._handle, path, self.file_size)
            metadata = dict(header.pop(_METADATA_KEY))
            self._offsets = {name: tuple(entry["data_offsets"])
                             for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])}
            self.entries = {name: (header[name]["dtype"], tuple(header[name]["shape"])) for name in self._offsets}
            check_with_package(self._same_file(), self.entries, metadata, shown=path)
            self.checksums = self._check_integrity(header, metadata)
        except BaseException:
            self._handle.close()
            raise
        self.metadata = {k: v for k, v in metadata.items() if k not in INTEGRITY_KEYS}

    def __getstate__(self) -> dict:
        """Pickled without its handle (a dataset holding a reader goes to worker processes), reopened by path."""
        state = dict(self.__dict__)
        del state["_handle"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._handle, self._lock = open(self.path, "rb"), threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _same_file(self) -> str:
        """A path to the very file this reader opened, even once another has been renamed over its path."""
        own = f"/proc/self/fd/{self._handle.fileno()}"
        return own if os.path.exists(own) else self.path

    def close(self) -> None:
        self._handle.close()

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    def _corrupt(self, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path!r} is corrupt: {problem}")

    def _check_integrity(self, header: dict, metadata: dict) -> dict | None:
        present = [key for key in INTEGRITY_KEYS if key in metadata]
        if not present:
            return None  # written by another tool: nothing to check against
        if len(present) != len(INTEGRITY_KEYS):
            missing = [key for key in INTEGRITY_KEYS if key not in metadata]
            raise self._corrupt(f"its header has {present} but lacks {missing} (damaged header)")
        expected = metadata[HEADER_CHECKSUM_KEY]
        if expected != str(header_checksum(dict(header, **{_METADATA_KEY: metadata}))):
            raise self._corrupt(f"the header does not match its checksum {expected!r} (a byte of the header "
                                f"changed after writing)")
        try:
            checksums = json.loads(metadata[TENSOR_CHECKSUMS_KEY])
        except ValueError:
            checksums = None
        if (not isinstance(checksums, dict) or set(checksums) != set(self.entries)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in checksums.values())):
            raise self._corrupt(f"{TENSOR_CHECKSUMS_KEY} must map every tensor of the file to an integer crc32")
        return checksums

    def __contains__(self, name) -> bool:
        return name in self.entries

    def nbytes(self, name: str) -> int:
        begin, end = self._offsets[name]
        return end - begin

    def _read_at(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from the file at ``offset`` (from the buffer's start); the bytes read, fewer at its end. A
        positioned read, no shared seek: threads reading one reader at once each get their own bytes."""
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                got = os.preadv(self._handle.fileno(), [view[done:]], self._start + offset + done)
            else:  # (no positioned read here: the seek and the read under one lock)
                with self._lock:
                    self._handle.seek(self._start + offset + done)
                    got = self._handle.readinto(view[done:])
            if not got:
                break
            done += got
        return done

    def _read_bytes(self, name: str) -> np.ndarray:
        begin, end = self._offsets[name]
        buffer = aligned_empty(end - begin)
        if self._read_at(memoryview(buffer), begin) != end - begin:
            raise self._corrupt(f"tensor {name!r} was cut short while reading (file changed or truncated)")
        self._check_tensor(name, zlib.crc32(buffer) if buffer.size else 0)
        return buffer

    def _check_tensor(self, name: str, crc: int) -> None:
        if self.checksums is not None and crc != self.checksums[name]:
            raise self._corrupt(f"the bytes of tensor {name!r} do not match their checksum (crc32 "
                                f"{crc:#010x}, recorded {self.checksums[name]:#010x})")

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new writable NumPy array (native byte order), its checksum verified."""
        dtype_name, shape = self.entries[name]
        buffer = self._read_bytes(name)
        if dtype_name == "BF16":
            upper = buffer.view("<u2").astype(np.uint32)
            del buffer  # (the bytes freed before the float32 array is made: one widened copy at a time)
            return widen_bfloat16(upper).reshape(shape)
        array = buffer.view(DTYPES[dtype_name]).reshape(shape)
        return array.astype(array.dtype.newbyteorder("="), copy=False)

    def verify(self) -> None:
        """Check every tensor's bytes against its checksum, in small chunks (no-op without checksums), once: a load
        whose steps each ask for it (``serialization.checked_load``) reads the file once."""
        if self.checksums is None or self.__dict__.get("_verified"):
            return
        largest = max((end - begin for begin, end in self._offsets.values()), default=1)
        chunk = bytearray(max(1, min(_CHUNK_BYTES, largest)))
        view = memoryview(chunk)
        for name, (begin, end) in self._offsets.items():
            crc, done = 0, 0
            while done < end - begin:
                got = self._read_at(view[:min(end - begin - done, len(chunk))], begin + done)
                if not got:
                    raise self._corrupt(f"tensor {name!r} was cut short while reading (file changed or truncated)")
                crc, done = zlib.crc32(view[:got], crc), done + got
            self._check_tensor(name, crc)
        self._verified = True

    def tensors(self, names=None):
        """Yield ``(name, array)`` for ``names`` (default: all, in file order), one array alive at a time."""
        for name in (self.entries if names is None else names):
            yield name, self.read(name)


class StoredTensor:
    """Tensor ``name`` of an open ``SafetensorsFile``: its ``shape`` and ``dtype`` (those of
    ``SafetensorsFile.read``) from the header, its values read by ``stage()`` into a new array, checksum verified.

    A load checks a whole state from the header, stages every tensor (``load_checkpoint``'s optimizer slots), and
    only then changes anything: the first conversion (``np.asarray``) gives the staged array away, a new array
    nobody else holds, which the optimizer's load may adopt as the slot's memory (``Backend.given_slot``) and which
    is freed once written. A tensor not staged (or converted again) is read anew from the file.
    """

    def __init__(self, reader: SafetensorsFile, name: str):
        self.reader, self.name, self._staged = reader, name, None
        dtype_name, self.shape = reader.entries[name]
        self.dtype = np.dtype(np.float32) if dtype_name == "BF16" else DTYPES[dtype_name].newbyteorder("=")

    def stage(self) -> None:
        """Read the tensor now (I/O errors and a changed file surface here, before the load changes anything)."""
        self._staged = self.reader.read(self.name)

    def __array__(self, dtype=None, copy=None):
        array, self._staged = self._staged, None  # (given away: held here no longer than until it is written)
        if array is None:
            array = self.reader.read(self.name)  # (a new array: any copy asked for is made)
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self):
        return f"StoredTensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def load_file(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``, tensors in file order as writable NumPy arrays.

    Raises ``CorruptFileError`` naming the file and the problem for anything malformed or not matching
    its checksums, ``FileNotFoundError`` / ``IsADirectoryError`` for a bad path. Never unpickles.
    """
    with SafetensorsFile(path) as reader:
        return dict(reader.tensors()), dict(reader.metadata)


def is_safetensors(path) -> bool:
    """Whether ``path`` starts like a safetensors file (a plausible header length, then '{')."""
    path = check_readable_file(path)
    file_size = os.path.getsize(path)
    if file_size < 9:
        return False
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        return header_size <= min(MAX_HEADER_BYTES, file_size - 8) and handle.read(1) == b"{"
