"""unidl's safetensors reader (its checks around the safetensors package) and writer: round trips, the package
reading unidl's files and unidl the package's, and a strict reader for damaged or hostile files."""

import json
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import safetensors.numpy as reference

from unidl.errors import CorruptFileError
from unidl.io.buffers import ALIGNMENT
from unidl.io.safetensors import (DTYPES, HEADER_CHECKSUM_KEY, MAX_HEADER_BYTES, TENSOR_CHECKSUMS_KEY, SafetensorsFile,
                                  header_checksum, load_file, save_file, serialize)

ALL_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
              np.float16, np.float32, np.float64]


def write_raw(path, header, buffer=b"", header_size=None):
    """A file with the given header (dict, or raw bytes) and buffer, and optionally a lying header length."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(header_bytes) if header_size is None else header_size
    path.write_bytes(struct.pack("<Q", size) + header_bytes + buffer)
    return path


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_every_dtype(tmp_path, rng, dtype):
    values = (rng.standard_normal((3, 4, 2)) * 50).astype(dtype)
    tensors = {"x": values, "scalar": values.reshape(-1)[:1].reshape(()), "empty": values[:0]}
    save_file(tensors, tmp_path / "t.safetensors")
    loaded, metadata = load_file(tmp_path / "t.safetensors")
    assert metadata == {}
    assert list(loaded) == ["x", "scalar", "empty"]
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].ctypes.data % ALIGNMENT == 0 or not value.size  # memory TensorFlow and JAX can adopt
    loaded["x"][...] = 0  # arrays are writable copies, not views of a read-only buffer


def test_non_contiguous_and_big_endian_inputs_are_stored_little_endian_c_order(tmp_path):
    base = np.arange(12, dtype=">f8").reshape(3, 4)
    save_file({"t": base.T}, tmp_path / "t.safetensors", {"k": "v"})
    loaded, metadata = load_file(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(loaded["t"], base.T)
    assert loaded["t"].dtype == np.float64 and loaded["t"].flags.c_contiguous
    assert metadata == {"k": "v"}


def test_layout_matches_the_format(tmp_path):
    data = serialize({"a": np.array([1.5, -2.0], np.float32), "b": np.array([[7]], np.int64)}, {"who": "unidl"})
    (size,) = struct.unpack("<Q", data[:8])
    assert (8 + size) % 8 == 0  # buffer aligned, header padded with spaces
    header = json.loads(data[8:8 + size])
    checksums = {"a": zlib.crc32(struct.pack("<2f", 1.5, -2.0)), "b": zlib.crc32(struct.pack("<q", 7))}
    assert header["__metadata__"]["who"] == "unidl"
    assert json.loads(header["__metadata__"][TENSOR_CHECKSUMS_KEY]) == checksums
    assert header["__metadata__"][HEADER_CHECKSUM_KEY] == str(header_checksum(header))
    assert header["a"] == {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "I64", "shape": [1, 1], "data_offsets": [8, 16]}
    assert data[8 + size:] == struct.pack("<2f", 1.5, -2.0) + struct.pack("<q", 7)


def test_bfloat16_is_read_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    write_raw(tmp_path / "b.safetensors", {"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, raw)
    np.testing.assert_array_equal(load_file(tmp_path / "b.safetensors")[0]["w"], values)


def test_matches_the_reference_implementation(tmp_path, rng):
    tensors = {"w": rng.standard_normal((4, 3)).astype(np.float32), "i": np.arange(5, dtype=np.int32)}
    save_file(tensors, tmp_path / "ours.safetensors", {"m": "1"})
    for name, value in reference.load_file(str(tmp_path / "ours.safetensors")).items():
        np.testing.assert_array_equal(value, tensors[name])
    reference.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"m": "2"})
    loaded, metadata = load_file(tmp_path / "theirs.safetensors")
    assert metadata == {"m": "2"}
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)


def test_writer_rejects_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="complex128"):
        save_file({"z": np.zeros(2, np.complex128)}, tmp_path / "z.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        save_file({"x": np.zeros(2)}, tmp_path / "z.safetensors", {"n": 1})
    with pytest.raises(ValueError, match="reserved"):
        save_file({"__metadata__": np.zeros(2)}, tmp_path / "z.safetensors")
    assert os.listdir(tmp_path) == []


# ---- damaged and hostile files ---------------------------------------------

def _valid(path):
    save_file({"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2), np.float64)}, path)
    return path


GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CORRUPTIONS = {
    "empty file": (lambda p: p.write_bytes(b""), "shorter than the 8-byte"),
    "4-byte file": (lambda p: p.write_bytes(b"\x01\x00\x00\x00"), "shorter than the 8-byte"),
    "truncated buffer": (lambda p: p.write_bytes(_valid(p).read_bytes()[:-5]), "truncated"),
    "truncated header": (lambda p: p.write_bytes(_valid(p).read_bytes()[:20]), "runs past the end"),
    "header length > file": (lambda p: write_raw(p, {"a": GOOD_ENTRY}, bytes(8), header_size=10_000),
                             "runs past the end"),
    "huge header length": (lambda p: write_raw(p, b"{}", header_size=2**63), "exceeds the limit"),
    "header just over the cap": (lambda p: write_raw(p, b"{}", header_size=MAX_HEADER_BYTES + 1), "exceeds the limit"),
    "bad JSON": (lambda p: write_raw(p, b'{"a": [1, 2'), "not valid UTF-8 JSON"),
    "not UTF-8": (lambda p: write_raw(p, b'{"\xff\xfe": 1}'), "not valid UTF-8 JSON"),
    "deeply nested JSON": (lambda p: write_raw(p, b"{" + b"[" * 100_000 + b"]" * 100_000), "not valid UTF-8 JSON"),
    "JSON array": (lambda p: write_raw(p, b"[1, 2]"), r"header begins with b'\[1, 2\]', not '\{'"),
    "leading space": (lambda p: write_raw(p, b' {"__metadata__": {}}'), r"header begins with b' \{"),
    "duplicate tensor": (lambda p: write_raw(p, b'{"a": {}, "a": {}}'), "duplicate key"),
    "unknown dtype": (lambda p: write_raw(p, {"a": dict(GOOD_ENTRY, dtype="F128")}, bytes(8)), "unknown dtype 'F128'"),
    "missing field": (lambda p: write_raw(p, {"a": {"dtype": "F32", "shape": [2]}}, bytes(8)), "exactly the keys"),
    "negative dim": (lambda p: write_raw(p, {"a": dict(GOOD_ENTRY, shape=[-2])}, bytes(8)), "invalid shape"),
    "reversed offsets": (lambda p: write_raw(p, {"a": dict(GOOD_ENTRY, data_offsets=[8, 0])}, bytes(8)),
                         "invalid data_offsets"),
    "length != prod(shape)*itemsize": (lambda p: write_raw(p, {"a": dict(GOOD_ENTRY, shape=[3])}, bytes(8)),
                                       "needs 12 bytes"),
    "overlapping offsets": (lambda p: write_raw(p, {"a": GOOD_ENTRY, "b": dict(GOOD_ENTRY, data_offsets=[4, 12])},
                                                bytes(12)), "overlaps"),
    "gap between tensors": (lambda p: write_raw(p, {"a": GOOD_ENTRY, "b": dict(GOOD_ENTRY, data_offsets=[12, 20])},
                                                bytes(20)), "gap"),
    "offsets outside the buffer": (lambda p: write_raw(p, {"a": dict(GOOD_ENTRY, shape=[2**40],
                                                                      data_offsets=[0, 2**42])}, bytes(8)),
                                   "truncated"),
    "trailing garbage": (lambda p: p.write_bytes(_valid(p).read_bytes() + b"garbage"), "trailing data"),
    "metadata not strings": (lambda p: write_raw(p, {"__metadata__": {"k": 1}}), "mapping strings to strings"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_files_raise_corrupt_file_error(tmp_path, name):
    damage, message = CORRUPTIONS[name]
    path = tmp_path / "bad.safetensors"
    damage(path)
    with pytest.raises(CorruptFileError, match=message) as error:
        load_file(path)
    assert "bad.safetensors" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_header_length_over_the_limit_is_refused_before_the_header_is_read(tmp_path):
    """A length just over the limit, with that many bytes really in the file: refused by unidl's pre-check, which
    reads 8 bytes, before either parser reads the header (the package's limit is the same)."""
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{")
        handle.truncate(8 + MAX_HEADER_BYTES + 1)  # sparse: no disk used
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match=f"big.safetensors.*header length {MAX_HEADER_BYTES + 1} exceeds"):
            SafetensorsFile(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak  # the 100 MB header was never read


def test_a_header_only_the_safetensors_package_refuses_is_corrupt_naming_the_file(tmp_path):
    """Python's JSON parser takes a lone UTF-16 surrogate in a tensor name; the safetensors package's parser,
    which checks every header after unidl's, refuses it: a CorruptFileError naming the file, never the package's
    SafetensorError. The same header without the surrogate loads."""
    entry = b'{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
    path = write_raw(tmp_path / "surrogate.safetensors", b'{"w\\ud800":' + entry + b"}", bytes(8))
    with pytest.raises(CorruptFileError, match=r"surrogate.safetensors.*the safetensors package refuses it \(.+\)"):
        load_file(path)
    write_raw(path, b'{"w":' + entry + b"}", bytes(8))
    assert load_file(path)[0]["w"].shape == (2,)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_file(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError, match=str(tmp_path.name)):
        load_file(tmp_path)
    with pytest.raises(IsADirectoryError):
        save_file({"a": np.zeros(1)}, tmp_path)


def test_known_dtypes_are_little_endian():
    assert all(d.str[0] in "<|" for d in DTYPES.values())


def test_one_reader_read_from_several_threads_gives_each_its_own_bytes_and_pickles(tmp_path):
    """Reads are positioned (no shared seek on the reader's one handle): four threads reading one reader at once
    each get their tensors, checksums intact; a reader pickles (a dataset holding one goes to worker processes)
    and reopens its file."""
    import pickle
    import threading

    from unidl.io.safetensors import SafetensorsFile

    arrays = {f"t{i}": np.full((64, 64), i, np.float32) for i in range(16)}
    path = tmp_path / "many.safetensors"
    save_file(arrays, path)
    reader, errors = SafetensorsFile(path), []

    def work():
        try:
            for _ in range(20):
                for name, array in arrays.items():
                    assert np.array_equal(reader.read(name), array)
        except Exception as error:  # noqa: BLE001 (any failure of a thread is the test's)
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    again = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(again.read("t7"), arrays["t7"])
    again.close()
    reader.close()
