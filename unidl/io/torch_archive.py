"""A reader of ``torch.save``'s zip archive that needs no torch, so that a PyTorch checkpoint loads on any backend.

The archive (the default since torch 1.6) holds ``<name>/data.pkl``, a pickle of the saved object whose tensors name
their storage by key, and each storage's raw bytes in ``<name>/data/<key>``. The pickle is read by a restricted
unpickler that builds only what a state dict holds (dicts, tensors, the storage and dtype names they refer to) and
refuses every other global the pickle names before anything runs. ``unidl.io.torch_checkpoint`` uses it where torch
is not installed, and checks its result as it checks ``torch.load(weights_only=True)``'s.
"""

from __future__ import annotations

import math
import os
import pickle
import reprlib
import sys
import zipfile
from collections import OrderedDict

import numpy as np

from unidl.errors import CorruptFileError
from unidl.io.safetensors import widen_bfloat16

#: a tensor dtype as torch names it in the pickle (the global ``torch.float32``) -> its NumPy dtype
NUMPY_DTYPES = {name: np.dtype(code) for name, code in (
    ("float64", "f8"), ("float32", "f4"), ("float16", "f2"), ("complex128", "c16"), ("complex64", "c8"),
    ("int64", "i8"), ("int32", "i4"), ("int16", "i2"), ("int8", "i1"),
    ("uint64", "u8"), ("uint32", "u4"), ("uint16", "u2"), ("uint8", "u1"), ("bool", "?"))}
#: dtypes NumPy has not -> the unsigned integers of their bits; their values are widened to float32 (exactly), as
#: the reader with torch widens them (``Tensor.float()``); the float8 formats are decoded by ml_dtypes
WIDENED_BITS = {"bfloat16": np.dtype("u2"), **{name: np.dtype("u1") for name in (
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")}}
#: the storage classes torch pickles for the dtypes it had before 2.1 (a newer dtype pickles ``UntypedStorage``,
#: whose size counts bytes, and names the tensor's dtype beside it)
STORAGE_DTYPES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
                  "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
                  "ComplexFloatStorage": "complex64", "LongStorage": "int64", "IntStorage": "int32",
                  "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}
#: dtypes torch saves as plain tensors whose values NumPy cannot hold -> their item size: read as far as the refusal
#: that names the dtype, as the reader with torch refuses them (``.numpy()``), not as a global a state dict lacks
NO_NUMPY_DTYPES = {"complex32": 4}
#: the layouts torch names by ``str(layout)`` in the pickle of a sparse tensor (``torch.serialization._get_layout``)
LAYOUTS = frozenset(("torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch.sparse_bsr",
                     "torch.sparse_bsc", "torch._mkldnn", "torch.jagged"))


def _itemsize(dtype: str) -> int:
    known = NUMPY_DTYPES.get(dtype) or WIDENED_BITS.get(dtype)
    return NO_NUMPY_DTYPES[dtype] if known is None else known.itemsize


def _bounded_repr() -> reprlib.Repr:
    """``reprlib.Repr`` that writes at most 4 items a container and 3 levels deep: a few hundred characters."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother = 3, 60, 60
    shown.maxtuple = shown.maxlist = shown.maxdict = shown.maxset = shown.maxfrozenset = 4
    return shown


_SHOWN = _bounded_repr()


def shown(value) -> str:
    """``repr(value)`` cut to a few levels and items: a value the file chose, named in an error. Its full text can
    be exponentially longer than the file (a tuple of two references to one tuple of two references to ...: 700
    bytes made hours of CPU and terabytes of text), this one is at most a few hundred characters."""
    return _SHOWN.repr(value)


def shown_error(error: BaseException) -> str:
    """``str(error)`` of an exception raised while reading a file, bounded as ``shown``: an exception of pickle or
    zipfile holds a text, one raised on the file's own objects (a ``KeyError``) may hold one of them."""
    if all(isinstance(argument, (str, int)) for argument in error.args):
        return str(error)[:300]
    return ", ".join(shown(argument) for argument in error.args)


def _refuse_build(self, state):
    """``__setstate__`` of every object the pickle can reach but not build: its BUILD opcode, which would set their
    attributes (a tensor's shape past its storage's bytes, a function's defaults for the next file), is refused."""
    raise CorruptFileError(f"its pickle sets the state of a {type(self).__name__}, which torch.save never does")


class _Name(str):
    """A dtype or storage-class global of the pickle (``torch.float32``, ``torch.FloatStorage``), as the name of
    the dtype it stands for."""
    __slots__ = ()
    __setstate__ = _refuse_build


class _StorageType(_Name):
    """A storage-class global (``torch.FloatStorage``), told apart from a dtype: only it names a storage's type."""
    __slots__ = ()


class _Global:
    """A function the pickle may call by name (the unpickler hands out this wrapper, never the function itself)."""
    __slots__ = ("function",)
    __setstate__ = _refuse_build

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)


class Storage:
    """The bytes of one ``data/<key>`` entry, in the byte order the archive names, and the dtype its pickle named."""
    __slots__ = ("data", "dtype", "byteorder")
    __setstate__ = _refuse_build

    def __init__(self, data, dtype: str, byteorder: str):
        self.data, self.dtype, self.byteorder = data, dtype, byteorder

    @property
    def nbytes(self) -> int:
        return len(self.data)


class StorageView:
    """A tensor as the archive describes it: ``shape`` and ``stride`` (in elements) from ``storage_offset`` of a
    storage, its values read only by ``take_values()``. A sparse or meta tensor (``layout``, ``device``) has no storage
    here: it is kept to be named in an error. ``unidl.io.torch_checkpoint`` checks these attributes, which a
    ``torch.Tensor`` is read through too."""
    __setstate__ = _refuse_build

    def __init__(self, dtype: str, shape: tuple, stride: tuple, storage_offset: int = 0,
                 storage: Storage | None = None, layout: str = "torch.strided", device: str = "cpu"):
        self.dtype, self.shape, self.stride, self.storage_offset = dtype, shape, stride, storage_offset
        self.storage, self.layout, self.device = storage, layout, device
        self.conjugate = self.negative = False

    @property
    def element_size(self) -> int:
        return _itemsize(self.dtype)

    @property
    def stored_bytes(self) -> int:
        return 0 if self.storage is None else self.storage.nbytes

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=object))

    def take_values(self) -> np.ndarray:
        """The values as a new C-ordered array of native byte order (bfloat16 and float8 widened to float32). The
        tensor then lets go of its storage, whose bytes are freed with the last tensor that views them: reading a
        state dict holds its arrays and about one storage beyond them, not the file's bytes beside its arrays."""
        if self.dtype in NO_NUMPY_DTYPES:
            raise TypeError(f"NumPy has no {self.dtype}")
        bits = WIDENED_BITS.get(self.dtype)
        stored = (bits or NUMPY_DTYPES[self.dtype]).newbyteorder("<" if self.storage.byteorder == "little" else ">")
        if self.numel() == 0:
            values = np.zeros(self.shape, stored.newbyteorder("="))
        else:
            base = np.frombuffer(self.storage.data, stored, count=self.storage.nbytes // stored.itemsize)
            steps = [step * stored.itemsize if length > 1 else 0 for length, step in zip(self.shape, self.stride)]
            # (a dimension of one value may have any stride: its step is never taken, and may not fit NumPy's intp)
            view = np.lib.stride_tricks.as_strided(base[self.storage_offset:], self.shape, steps, writeable=False)
            values = np.array(view, stored.newbyteorder("="))  # (its own memory, not the file's bytes)
        self.storage = None
        if bits is not None:
            values = _widened(values, self.dtype)
        if self.conjugate:
            values = np.conj(values)
        return np.negative(values) if self.negative else values


def _widened(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return widen_bfloat16(bits)
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(f"reading {dtype} without torch needs the ml_dtypes package (pip install ml_dtypes)") from None
    return bits.view(getattr(ml_dtypes, dtype)).astype(np.float32)


def _is_index(value) -> bool:
    """A size, stride, offset or element count as torch keeps one (an int64 of at least 0)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63


def _rebuild_tensor(storage, storage_offset, size, stride, dtype=None) -> StorageView:
    """``torch._utils._rebuild_tensor``: a view of ``storage``, refused unless every element it reaches lies inside
    the storage (NumPy's ``as_strided`` would read past it)."""
    dtype = storage.dtype if dtype is None and isinstance(storage, Storage) else dtype
    if not isinstance(storage, Storage) or not isinstance(dtype, str) or dtype not in _DTYPE_NAMES:
        raise CorruptFileError(f"a tensor of dtype {shown(dtype)} over a {type(storage).__name__}")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
        raise CorruptFileError(f"a tensor of size {shown(size)} and stride {shown(stride)}")
    size, stride = tuple(size), tuple(stride)
    if not (_is_index(storage_offset) and len(size) == len(stride) and all(map(_is_index, size + stride))
            and _is_index(math.prod(length for length in size if length) * _itemsize(dtype))):  # (NumPy's bound)
        raise CorruptFileError(f"a tensor of size {shown(size)}, stride {shown(stride)} and storage offset "
                               f"{shown(storage_offset)}")
    elements = storage.nbytes // _itemsize(dtype)
    last = storage_offset + sum((length - 1) * step for length, step in zip(size, stride))
    if 0 not in size and last >= elements:
        raise CorruptFileError(f"a tensor of size {size} and stride {stride} from offset {storage_offset} reaches "
                               f"element {last} of a storage of {elements}")
    return StorageView(str(dtype), size, stride, storage_offset, storage)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _with_metadata(_rebuild_tensor(storage, storage_offset, size, stride), metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, _Name) or isinstance(dtype, _StorageType):
        raise CorruptFileError(f"a tensor whose dtype is {shown(dtype)}")
    return _with_metadata(_rebuild_tensor(storage, storage_offset, size, stride, dtype), metadata)


def _with_metadata(tensor: StorageView, metadata) -> StorageView:
    """The conjugate and negative bits torch keeps beside a complex view's storage, applied when it is read."""
    if not isinstance(metadata, (dict, type(None))):
        raise CorruptFileError(f"tensor metadata {shown(metadata)} (torch writes a dict)")
    metadata = dict(metadata or {})
    tensor.conjugate, tensor.negative = bool(metadata.pop("conj", False)), bool(metadata.pop("neg", False))
    if metadata:
        raise CorruptFileError(f"tensor metadata {shown(list(metadata))} (torch writes conj and neg only)")
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """A ``torch.nn.Parameter`` as its tensor (a state dict's parameters load as tensors; attributes dropped)."""
    return data


def _get_layout(name) -> str:
    """``torch.serialization._get_layout``: the layout named ``name``, as its name (one of ``LAYOUTS`` only)."""
    if type(name) is not str or name not in LAYOUTS:
        raise CorruptFileError(f"a tensor layout {shown(name)}, not one of torch's")
    return name


def _rebuild_sparse_tensor(layout, data):
    if type(layout) is not str or layout not in LAYOUTS - {"torch.strided"}:
        raise CorruptFileError(f"a sparse tensor of layout {shown(layout)}")
    return StorageView("float32", (), (), layout=layout)


def _rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad=False):
    if not isinstance(dtype, _Name) or isinstance(dtype, _StorageType):
        raise CorruptFileError(f"a meta tensor whose dtype is {shown(dtype)}")
    return StorageView(str(dtype), tuple(size), tuple(stride), device="meta")


def _ordered_dict(*items):
    """``collections.OrderedDict`` as ``torch.save`` calls it, with no arguments (its items come after, each key
    checked by ``_StateDictUnpickler``): given items, it would hash keys unchecked."""
    if items:
        raise CorruptFileError(f"an OrderedDict built from {shown(items)} (torch.save gives none)")
    return OrderedDict()


#: the types of a dict's key or a set's item whose hash costs no more than the key's own bytes in the pickle (a
#: tuple of tuples that share their halves hashes 2**depth strings: 700 bytes made hours of ``dict[key] = value``)
_FLAT_KEYS = (str, int, float, bool, type(None), bytes)


def _checked_keys(keys) -> None:
    """``CorruptFileError`` unless each of ``keys`` is a flat key (one of ``_FLAT_KEYS``, or a tuple of them)."""
    for key in keys:
        if type(key) not in _FLAT_KEYS and not (type(key) is tuple and all(type(item) in _FLAT_KEYS for item in key)):
            raise CorruptFileError(f"a dict key or set item {shown(key)}, which a state dict or a checkpoint's "
                                   f"entries do not hold")


_DTYPE_NAMES = set(NUMPY_DTYPES) | set(WIDENED_BITS) | set(NO_NUMPY_DTYPES)
#: every global the pickle of a state dict (or of a dict holding one) names -> what it is read as
_ALLOWED = {
    ("collections", "OrderedDict"): _Global(_ordered_dict),
    ("torch", "Size"): tuple,
    ("torch.serialization", "_get_layout"): _Global(_get_layout),  # (a sparse tensor's layout, by its name)
    ("torch.storage", "UntypedStorage"): _StorageType("uint8"),  # (its size counts bytes)
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): _Name(name) for name in _DTYPE_NAMES},
    **{("torch._utils", name): _Global(function) for name, function in (
        ("_rebuild_tensor", _rebuild_tensor), ("_rebuild_tensor_v2", _rebuild_tensor_v2),
        ("_rebuild_tensor_v3", _rebuild_tensor_v3), ("_rebuild_parameter", _rebuild_parameter),
        ("_rebuild_parameter_with_state", _rebuild_parameter), ("_rebuild_sparse_tensor", _rebuild_sparse_tensor),
        ("_rebuild_meta_tensor_no_storage", _rebuild_meta_tensor_no_storage))},
}


class _StateDictUnpickler(pickle._Unpickler):
    """``pickle.Unpickler`` that resolves only ``_ALLOWED``'s globals, reads a storage's bytes from the archive when
    the pickle first refers to it (once per key: two views of one storage share its bytes), and checks each dict key
    and set item before it is hashed (``_checked_keys``). It is pickle's Python unpickler, whose opcodes can be
    checked one by one (the C one's cannot): a state dict's pickle is a few bytes a tensor, its storages apart."""
    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_setitem(self):
        _checked_keys(self.stack[-2:-1])
        pickle._Unpickler.load_setitem(self)

    def _load_setitems(self):
        _checked_keys(self.stack[0::2])  # (the items since the mark, which pickle's Python unpickler keeps as stack)
        pickle._Unpickler.load_setitems(self)

    def _load_additems(self):
        _checked_keys(self.stack)
        pickle._Unpickler.load_additems(self)

    def _load_frozenset(self):
        _checked_keys(self.stack)
        pickle._Unpickler.load_frozenset(self)

    dispatch.update({pickle.SETITEM[0]: _load_setitem, pickle.SETITEMS[0]: _load_setitems,
                     pickle.ADDITEMS[0]: _load_additems, pickle.FROZENSET[0]: _load_frozenset})

    def __init__(self, archive: zipfile.ZipFile, root: str, byteorder: str):
        super().__init__(archive.open(f"{root}/data.pkl"))
        self.archive, self.root, self.byteorder = archive, root, byteorder
        self.entries: dict[str, bytes] = {}

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise CorruptFileError(
                f"its pickle names the global {module}.{name}, which a state dict of tensors does not hold; unidl's "
                f"reader (torch is not installed) refuses it without running it. Save model.state_dict() (plain "
                f"tensors, in dicts), or load the file where torch is installed")
        return found

    def persistent_load(self, reference):
        if not (isinstance(reference, tuple) and len(reference) == 5 and reference[0] == "storage"
                and isinstance(reference[1], _StorageType) and isinstance(reference[2], str)
                and _is_index(reference[4])):
            raise CorruptFileError(f"a storage reference {shown(reference)} that torch.save does not write")
        _, dtype, key, _, numel = reference  # (its location, the device it was saved from, is not needed on a host)
        needed = numel * _itemsize(dtype)
        if key not in self.entries:
            try:
                entry = self.archive.getinfo(f"{self.root}/data/{key}")
            except KeyError:
                raise CorruptFileError(f"storage {key!r} has no entry data/{key}") from None
            if entry.file_size < needed:
                raise CorruptFileError(f"storage {key!r} of {numel} {dtype} elements holds {entry.file_size} bytes")
            self.entries[key] = self.archive.read(entry)
        if len(self.entries[key]) < needed:
            raise CorruptFileError(f"storage {key!r} of {numel} {dtype} elements holds {len(self.entries[key])} bytes")
        return Storage(memoryview(self.entries[key])[:needed], str(dtype), self.byteorder)


def _root(archive: zipfile.ZipFile) -> str:
    """The folder ``torch.save`` put the archive's entries in (the file's name when it was written)."""
    roots = [name[:-len("/data.pkl")] for name in archive.namelist()
             if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(roots) != 1:
        raise CorruptFileError("a zip archive without one <name>/data.pkl: not a torch.save file")
    return roots[0]


def read_torch_archive(path) -> object:
    """The object ``torch.save`` wrote at ``path``, its tensors as ``StorageView``: nothing named in the file is
    imported or called, and the storages a tensor refers to are the only entries read besides the pickle."""
    check_stored_archive(path)
    try:
        with zipfile.ZipFile(path) as archive:
            root = _root(archive)
            try:
                byteorder = archive.read(f"{root}/byteorder").decode("ascii", "replace")
            except KeyError:  # (files before torch 1.13 name none: torch reads them in the host's order)
                byteorder = sys.byteorder
            if byteorder not in ("little", "big"):
                raise CorruptFileError(f"byte order {byteorder!r}, expected 'little' or 'big'")
            return _StateDictUnpickler(archive, root, byteorder).load()
    except CorruptFileError as error:
        raise CorruptFileError(f"{str(path)!r}: {error}") from None
    except Exception as error:  # (a damaged pickle or archive: whatever pickle or zipfile raised, named)
        raise CorruptFileError(f"{str(path)!r} is not a readable torch.save archive ({type(error).__name__}: "
                               f"{shown_error(error)})") from None


def check_stored_archive(path) -> None:
    """``CorruptFileError`` for a zip archive that ``torch.save`` did not write as it is: compressed entries (it
    writes none), or entries that together inflate past the file's own size (300 KB made 300 MB in memory)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise CorruptFileError(f"{path!r} is not a readable zip archive ({error})") from None
    inside = {entry.filename.split("/", 1)[-1] for entry in entries}  # (the paths under the archive's root folder)
    if {"archive_format", "models/model.json"} <= inside:  # (torch.load said "internal miniz error")
        raise CorruptFileError(f"{path!r} is a torch.export program (a .pt2 archive, as ud.export's 'torch_export' "
                               f"writes), not a weights file: run it with torch.export.load(path).module()(x); load "
                               f"weights from a file that ud.save, save_weights or torch.save wrote")
    compressed = [entry.filename for entry in entries if entry.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CorruptFileError(f"{path!r}: compressed entries {compressed[:3]} in a torch.save archive, which "
                               f"stores its entries uncompressed: a re-packed or hostile file")
    if sum(entry.file_size for entry in entries) > os.path.getsize(path):
        raise CorruptFileError(f"{path!r}: its entries hold more bytes than the file: not a torch.save archive")
