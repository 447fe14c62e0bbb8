"""unidl's reader of ``torch.save`` archives without torch (``unidl.io.torch_archive``): what
``torch.load(weights_only=True)`` gives, bit for bit; every global but a state dict's refused before it runs; and a
PyTorch state dict loaded with ``ud.load_weights`` where torch cannot be imported."""

import collections
import os
import pickle
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
import torch

import unidl as ud
from tests.helpers import last_json_line, run_python
from unidl.io.torch_archive import _get_layout, read_torch_archive, shown_error
from unidl.io.torch_checkpoint import read_with_torch, read_without_torch


def _state_dict() -> dict:
    """Every dtype a model's state dict holds, a transposed view, two keys of one storage, one tensor under two
    keys, a scalar count, a Parameter and a conjugated complex view."""
    torch.manual_seed(0)
    shared = torch.randn(12)
    state = collections.OrderedDict(
        weight=torch.randn(3, 4), double=torch.randn(2, 3, dtype=torch.float64),
        half=torch.randn(5).half(), brain=torch.randn(2, 3).to(torch.bfloat16),
        float8=torch.randn(4).to(torch.float8_e4m3fn), index=torch.tensor([-(2 ** 40), 7]),
        mask=torch.tensor([True, False, True]), small=torch.tensor([0, 255], dtype=torch.uint8),
        transposed=torch.randn(3, 5).t(), head=shared[2:6], tail=shared.view(3, 4)[:, 1:],
        num_batches_tracked=torch.tensor(12), parameter=torch.nn.Parameter(torch.randn(2, 2)),
        conjugated=torch.randn(3, dtype=torch.complex64).conj(), empty=torch.zeros(0, 3))
    state["tied"] = state["weight"]  # (one object under two keys)
    return state


def _as_read(tensor: torch.Tensor) -> np.ndarray:
    """What both readers give for ``tensor``: its values, bfloat16 and float8 widened to float32 (NumPy has
    neither), a complex view's conjugate bit applied."""
    tensor = tensor.detach().resolve_conj()
    if tensor.dtype == torch.bfloat16 or "float8" in str(tensor.dtype):
        tensor = tensor.float()
    return tensor.numpy()


def _assert_same(found: dict, expected: dict) -> None:
    assert list(found) == list(expected)
    for key, value in expected.items():
        reference = _as_read(value)
        assert found[key].dtype == reference.dtype and found[key].shape == reference.shape, key
        assert np.ascontiguousarray(found[key]).tobytes() == np.ascontiguousarray(reference).tobytes(), key


def _rewritten(source, target, replaced: dict) -> None:
    """``source``'s archive with the entries ``replaced`` names (under its root folder) given new bytes, stored."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        root = archive.namelist()[0].split("/")[0]
        for entry in archive.infolist():
            inside = entry.filename.split("/", 1)[1]
            out.writestr(entry.filename, replaced.get(inside, archive.read(entry)))
        assert {f"{root}/{name}" for name in replaced} <= set(archive.namelist())


def test_the_reader_without_torch_gives_what_torch_load_gives(tmp_path):
    """Each tensor's dtype, shape and bytes as ``torch.load(weights_only=True)`` gives them (the reader with torch
    too), from a state dict and from a training checkpoint holding one; the two keys of one storage share the bytes
    read once; the tensors' dtypes are torch's."""
    state = _state_dict()
    torch.save(state, tmp_path / "state.pth")
    torch.save({"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "checkpoint.pth")
    for path in (tmp_path / "state.pth", tmp_path / "checkpoint.pth"):
        loaded = torch.load(path, weights_only=True)
        loaded = loaded.get("state_dict", loaded)
        _assert_same(read_without_torch(str(path)), loaded)
        _assert_same(read_with_torch(str(path)), loaded)
    stored = read_torch_archive(str(tmp_path / "state.pth"))
    assert {key: tensor.dtype for key, tensor in stored.items()} == {
        key: str(value.dtype).removeprefix("torch.") for key, value in state.items()}
    assert stored["head"].storage.data.obj is stored["tail"].storage.data.obj
    assert stored["weight"].storage.data.obj is not stored["head"].storage.data.obj
    found = read_without_torch(str(tmp_path / "state.pth"))  # (each key its own array, though one tensor was saved)
    assert found["tied"] is not found["weight"] and not np.shares_memory(found["tied"], found["weight"])


def test_a_big_endian_archive_is_read_in_its_byte_order(tmp_path):
    """An archive whose ``byteorder`` entry says big: its storages' bytes are read big-endian, as ``torch.load``
    reads them (the same file with ``little`` gives other values)."""
    state = {"weight": torch.randn(2, 3), "index": torch.arange(4), "brain": torch.randn(3).to(torch.bfloat16)}
    torch.save(state, tmp_path / "little.pth")
    swapped = {f"data/{key}": (value.view(torch.int16) if value.dtype == torch.bfloat16 else value).numpy()
               .byteswap().tobytes() for key, value in enumerate(state.values())}  # (torch.save's keys: 0, 1, ...)
    _rewritten(tmp_path / "little.pth", tmp_path / "big.pth", {"byteorder": b"big", **swapped})
    _assert_same(read_without_torch(str(tmp_path / "big.pth")), torch.load(tmp_path / "big.pth", weights_only=True))
    _assert_same(read_without_torch(str(tmp_path / "big.pth")), state)
    _rewritten(tmp_path / "big.pth", tmp_path / "wrong.pth", {"byteorder": b"little"})
    assert not np.array_equal(read_without_torch(str(tmp_path / "wrong.pth"))["weight"], state["weight"].numpy())


class RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Rebuilt:
    """Pickles as ``torch._utils._rebuild_tensor_v2`` of ``tensor``'s storage with the view and state given."""

    def __init__(self, tensor, offset, size, stride, state=None):
        self.tensor, self.view, self.state = tensor, (offset, size, stride), state

    def __reduce_ex__(self, protocol):
        storage = torch.storage.TypedStorage(wrap_storage=self.tensor.untyped_storage(), dtype=self.tensor.dtype,
                                             _internal=True)
        arguments = (storage, *self.view, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, arguments) + ((self.state,) if self.state else ())


def test_a_pickle_that_runs_code_or_reads_past_its_storage_is_refused(tmp_path):
    """A ``data.pkl`` whose object's ``__reduce__`` calls ``os.system``, put in a ``torch.save`` archive, is refused
    naming the global, and the command never runs (as ``torch.load(weights_only=True)`` refuses it); a view that
    reaches past its storage's bytes, and a tensor or a global whose attributes the pickle sets (BUILD) are refused
    before any value is read."""
    marker = tmp_path / "ran"
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pth")
    _rewritten(tmp_path / "plain.pth", tmp_path / "hostile.pth",
               {"data.pkl": pickle.dumps({"weight": RunsACommand(f"touch {marker}")}, protocol=2)})
    with pytest.raises(ud.CorruptFileError, match=r"hostile.pth': its pickle names the global (posix|os|nt)\.system,"
                                                  r" which a state dict of tensors does not hold"):
        read_without_torch(str(tmp_path / "hostile.pth"))
    with ud.use_backend("torch"), pytest.raises(ud.CorruptFileError, match=r"weights_only=True\) refused it"):
        ud.load_weights(ud.nn.Linear(1, 2, bias=False), str(tmp_path / "hostile.pth"))
    assert not marker.exists()

    values = torch.arange(6.0)
    for view, match in (((4, (3,), (1,)), r"reaches element 6 of a storage of 6"),
                        ((0, (2, 4), (4, 1)), r"size \(2, 4\) and stride \(4, 1\) from offset 0 reaches element 7"),
                        ((0, (3,), (-1,)), r"stride \(-1,\)"),
                        ((0, (0, 2 ** 62), (1, 1)), r"size \(0, 4611686018427387904\)")):  # (past NumPy's bytes)
        torch.save({"weight": _Rebuilt(values, *view)}, tmp_path / "past.pth")
        with pytest.raises(ud.CorruptFileError, match=match):
            read_without_torch(str(tmp_path / "past.pth"))
    torch.save({"weight": _Rebuilt(values, 0, (2,), (1,), state={"shape": (10 ** 6,)})}, tmp_path / "state.pth")
    with pytest.raises(ud.CorruptFileError, match=r"state.pth': its pickle sets the state of a StorageView"):
        read_without_torch(str(tmp_path / "state.pth"))
    # (the global _rebuild_tensor_v2, then BUILD with the slot state {"__defaults__": (1,)}: the next file's defaults)
    defaults = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b."
    _rewritten(tmp_path / "plain.pth", tmp_path / "defaults.pth", {"data.pkl": defaults})
    with pytest.raises(ud.CorruptFileError, match=r"defaults.pth': its pickle sets the state of a _Global"):
        read_without_torch(str(tmp_path / "defaults.pth"))
    _assert_same(read_without_torch(str(tmp_path / "plain.pth")), {"weight": torch.zeros(2)})


@pytest.mark.parametrize("reader", [read_with_torch, read_without_torch], ids=["torch", "without_torch"])
def test_both_readers_refuse_what_no_model_state_dict_holds(reader, tmp_path):
    """The checks after reading are one code for both readers: a sparse or meta tensor named by key, a state dict
    under a key other than ``state_dict`` named with the key to pass, a zero-stride view of far more values than
    stored refused before it is widened."""
    path = str(tmp_path / "w.pth")
    for state, match in (({"weight": torch.eye(2).to_sparse()}, r"tensor 'weight' is torch.sparse_coo on cpu, not a "
                                                                r"dense tensor"),
                         ({"weight": torch.empty(2, device="meta")}, r"tensor 'weight' is torch.strided on meta"),
                         ({"model": {"weight": torch.zeros(2)}}, r"holds dict with keys \['model'\]; pass the one it "
                                                                 r"holds.*\['model'\]"),
                         ({"view": torch.zeros(1, dtype=torch.bfloat16).expand(16000, 16000)},
                          r"tensor 'view' of shape \(16000, 16000\) holds far more values than the 2 bytes stored")):
        torch.save(state, path)
        with pytest.raises(ud.CorruptFileError, match=match):
            reader(path)


def test_a_pytorch_state_dict_loads_where_torch_cannot_be_imported(tmp_path):
    """A small PyTorch model's state dict (convolution, batch norm with its count, linear), saved by torch, loads with
    ``ud.load_weights`` in a process where ``import torch`` fails (a TensorFlow or JAX user's), on tensorflow and
    jax, and gives the PyTorch model's outputs. Before, reading a ``.pth`` needed torch."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))
    reference(torch.randn(8, 3, 5, 5))  # (running statistics and a count other than their defaults)
    reference.eval()
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", reference(torch.from_numpy(x)).detach().numpy())
    code = f"""
import json, sys
sys.modules["torch"] = None  # (import torch raises ImportError, as where it is not installed)
import numpy as np
import unidl as ud
from unidl.testing import max_relative_difference

x, expected = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "expected.npy")!r})
differences = {{}}
for backend in ("tensorflow", "jax"):
    with ud.use_backend(backend):
        model = ud.nn.Sequential(ud.nn.Conv2d(3, 4, 3, padding=1), ud.nn.BatchNorm2d(4), ud.nn.ReLU(),
                                 ud.nn.Flatten(), ud.nn.Linear(4 * 5 * 5, 3)).eval()
        ud.load_weights(model, {str(tmp_path / "model.pth")!r})
        differences[backend] = [max_relative_difference(ud.to_numpy(model(ud.tensor(x))), expected),
                                int(ud.to_numpy(model[1].num_batches_tracked))]
assert sys.modules["torch"] is None
print(json.dumps(differences))
"""
    differences = last_json_line(run_python(code).stdout)
    assert set(differences) == {"tensorflow", "jax"}
    for backend, (difference, count) in differences.items():
        assert difference < 2e-6 and count == 1, (backend, difference, count)


def _shared_tuples(depth: int) -> bytes:
    """Pickle opcodes that leave on the stack T_depth, where T_0 = ('xxxxxxxx',) and T_i = (T_i-1, T_i-1), each
    built from the memo: a few bytes a level, a text of ``repr`` or ``str`` 2**depth times as long."""
    opcodes = b"X\x08\x00\x00\x00xxxxxxxx\x85q\x000"
    for level in range(1, depth + 1):
        opcodes += b"h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"\x86q" + bytes([level]) + b"0"
    return opcodes + b"h" + bytes([depth])


@pytest.mark.parametrize("via, match", [
    ("_get_layout", r"a tensor layout \(\(\(\("), ("sparse", r"a sparse tensor of layout \(\(\(\("),
    ("meta", r"a meta tensor whose dtype is \(\(\(\("), ("reference", r"a storage reference \(\(\(\(")])
def test_a_value_the_file_chose_is_named_in_a_bounded_form(via, match, tmp_path):
    """A 700-byte pickle whose tuples of depth 40 share their halves (2**40 strings deep, were they written out),
    given as a layout, a dtype or a storage reference, is refused naming it in a few hundred characters: its full
    ``repr``/``str`` (the layout's name was taken by ``str``) would take hours and terabytes."""
    top = _shared_tuples(40)
    pickles = {"_get_layout": b"\x80\x02ctorch.serialization\n_get_layout\n" + top + b"\x85R.",
               "sparse": b"\x80\x02ctorch._utils\n_rebuild_sparse_tensor\n" + top + b"N\x86R.",
               "meta": b"\x80\x02ctorch._utils\n_rebuild_meta_tensor_no_storage\n" + top + b"))\x87R.",
               "reference": b"\x80\x02" + top + b"Q."}
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pth")
    _rewritten(tmp_path / "plain.pth", tmp_path / "bomb.pth", {"data.pkl": pickles[via]})
    assert os.path.getsize(tmp_path / "bomb.pth") < 2000
    with pytest.raises(ud.CorruptFileError, match=match) as refused:
        read_without_torch(str(tmp_path / "bomb.pth"))
    assert len(str(refused.value)) < 500
    # (a layout torch names still reads as its name, to be refused as sparse by the checks after reading)
    assert _get_layout("torch.sparse_coo") == "torch.sparse_coo"
    with pytest.raises(ud.CorruptFileError, match=r"a tensor layout 'strided', not one of torch's"):
        _get_layout("strided")


@pytest.mark.parametrize("opcodes", [
    b"\x80\x02}" + _shared_tuples(40) + b"K\x01s.", b"\x80\x02}(" + _shared_tuples(40) + b"K\x01u.",
    b"\x80\x04(" + _shared_tuples(40) + b"\x91.", b"\x80\x04\x8f(" + _shared_tuples(40) + b"\x90."],
    ids=["setitem", "setitems", "frozenset", "additems"])
def test_a_dict_key_or_set_item_the_file_chose_is_checked_before_it_is_hashed(opcodes, tmp_path):
    """The tuples of depth 40 that share their halves as a dict's key or a set's item: hashing one hashes 2**40
    strings (a 700-byte file took hours in pickle's own ``dict[key] = value``); refused before, as is an
    ``OrderedDict`` given items to hash (torch.save calls it with none). A checkpoint's int keys and flat tuple keys
    still load."""
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pth")
    ordered = b"\x80\x02ccollections\nOrderedDict\n" + _shared_tuples(40) + b"\x85R."
    for pickled, match in ((opcodes, r"a dict key or set item \(\(\(\("), (ordered, r"an OrderedDict built from")):
        _rewritten(tmp_path / "plain.pth", tmp_path / "bomb.pth", {"data.pkl": pickled})
        with pytest.raises(ud.CorruptFileError, match=match) as refused:
            read_torch_archive(str(tmp_path / "bomb.pth"))
        assert len(str(refused.value)) < 500
    torch.save({"state_dict": {"weight": torch.ones(2)}, "optimizer": {"state": {0: {"step": 3}}},
                "best": {(1, "a"): 2}}, tmp_path / "checkpoint.pth")
    read = read_torch_archive(str(tmp_path / "checkpoint.pth"))
    assert read["optimizer"] == {"state": {0: {"step": 3}}} and read["best"] == {(1, "a"): 2}


def test_an_error_raised_on_the_files_own_objects_is_named_in_a_bounded_form():
    """An exception that holds an object of the file (a ``KeyError`` of a key) is named by ``shown``, not ``str``;
    one that holds a text (pickle's, zipfile's) by its text."""
    deep = pickle.loads(b"\x80\x02" + _shared_tuples(40) + b".")
    assert len(shown_error(KeyError(deep))) < 300
    assert shown_error(pickle.UnpicklingError("invalid load key, 'x'.")) == "invalid load key, 'x'."


def _tensor_under_keys(path, keys: int, tied: bool) -> None:
    """``torch.save`` of one 1 MiB float32 tensor under ``keys`` keys: as one object (``tied``) or as a view each."""
    values = torch.arange(256 * 1024, dtype=torch.float32)
    torch.save({f"k{index}": values if tied else values[:] for index in range(keys)}, path)


@pytest.mark.parametrize("tied", [True, False], ids=["one_tensor", "views"])
def test_both_readers_bound_the_bytes_of_all_keys_read_from_a_file(tied, tmp_path):
    """Many keys over one stored MiB (one tensor under each, or a view each): the arrays read from the 1 MiB file
    total at most max(64 MiB, 16 times the file), by the same rule on both readers, which refuse the key where they
    pass it, before any array is made (a file of 150 such keys made 150 MiB; torch's reader loaded 150 tied keys
    and the other refused them as 0 bytes stored); 60 keys load on both, each key its own array."""
    path = str(tmp_path / "keys.pth")
    _tensor_under_keys(path, 70, tied)
    refusals = []
    for reader in (read_with_torch, read_without_torch):
        with pytest.raises(ud.CorruptFileError) as refused:
            reader(path)
        refusals.append(str(refused.value))
    again = ", the tensor of key 'k0' again" if tied else ""
    assert refusals[0] == refusals[1] == (
        f"{path!r}: tensor 'k64' of shape (262144,) (1048576 bytes as an array{again}) brings the state dict's "
        f"arrays to {65 * 2 ** 20} bytes, past {2 ** 26} (16 times the file's {os.path.getsize(path)} bytes, at "
        f"least 64 MiB): its keys view the same stored bytes over and over, which no model's state dict does: a "
        f"crafted file")
    _tensor_under_keys(path, 60, tied)
    for reader in (read_with_torch, read_without_torch):
        found = reader(path)
        assert list(found) == [f"k{index}" for index in range(60)]
        assert all(np.array_equal(value, np.arange(256 * 1024, dtype=np.float32)) for value in found.values())
        if tied:
            assert not np.shares_memory(found["k0"], found["k59"])


@pytest.mark.parametrize("reader", [read_torch_archive, read_without_torch])
def test_the_reader_without_torch_refuses_a_compressed_or_inflating_archive(reader, tmp_path):
    """``torch.save`` stores its entries: an archive with a deflated entry (a zip bomb's way: 64 MiB of zeros in a
    file of 64 KB) is refused, and one whose directory says its entries hold more bytes than the file."""
    torch.save({"weight": torch.zeros(16, 1024)}, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as archive, \
            zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as deflated, \
            zipfile.ZipFile(tmp_path / "inflating.pth", "w", zipfile.ZIP_STORED) as inflating:
        for entry in archive.infolist():
            deflated.writestr(entry.filename, archive.read(entry))
            inflating.writestr(entry.filename, archive.read(entry))
        inflating.infolist()[-1].file_size = 2 ** 30  # (the central directory, written on closing, says 1 GiB)
    with pytest.raises(ud.CorruptFileError, match=r"deflated.pth': compressed entries \['plain/data.pkl'"):
        reader(str(tmp_path / "deflated.pth"))
    with pytest.raises(ud.CorruptFileError, match=r"inflating.pth': its entries hold more bytes than the file"):
        reader(str(tmp_path / "inflating.pth"))
    assert reader(str(tmp_path / "plain.pth"))["weight"].shape == (16, 1024)


def test_the_reader_without_torch_lets_each_storage_go_once_its_values_are_taken(tmp_path):
    """Reading eight storages of 1 MiB holds the file's bytes and about one array beyond them at its peak (each
    storage freed once its values are copied out), not the file's bytes beside all its arrays (2x)."""
    torch.save({f"layer{index}": torch.randn(256 * 1024) for index in range(8)}, tmp_path / "eight.pth")
    size = os.path.getsize(tmp_path / "eight.pth")
    tracemalloc.start()
    try:
        found = read_without_torch(str(tmp_path / "eight.pth"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(value.nbytes for value in found.values()) == 8 * 2 ** 20
    assert peak < 1.5 * size, (peak, size)


@pytest.mark.parametrize("reader", [read_with_torch, read_without_torch], ids=["torch", "without_torch"])
def test_a_complex32_tensor_is_refused_as_having_no_numpy_dtype_by_both_readers(reader, tmp_path):
    """torch's complex32 (complex half), which NumPy has not: both readers refuse it naming the key and that it has
    no NumPy dtype (without torch its dtype's global was refused as one a state dict does not hold)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (torch: "ComplexHalf support is experimental")
        torch.save({"c32": torch.randn(2, dtype=torch.complex64).to(torch.complex32)}, tmp_path / "c32.pth")
    with pytest.raises(ud.CorruptFileError, match=r"tensor 'c32' of dtype torch.complex32 has no NumPy dtype"):
        reader(str(tmp_path / "c32.pth"))
