"""Datasets: anything with ``__len__`` and ``__getitem__``; ``TensorDataset`` keeps whole arrays in memory
so that the loader can cut a batch with one slice per array.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from unidl.tensors import as_numpy_values, to_numpy


class Fields(tuple):
    """A batch's fields, flat, with the ``layout`` the loader hands them out in (a plain tuple batch is a plain
    tuple): ``SINGLE``, the one tensor bare (samples that are single arrays, as ``torch.utils.data.DataLoader``
    yields them), a namedtuple class, the fields as that namedtuple (as PyTorch's ``default_collate`` keeps it;
    a plain tuple before), or a tuple of keys, the fields as a dict of them (dict samples). It crosses from a worker
    process pickled, or its layout beside a shared batch."""

    def __new__(cls, values, layout):
        fields = super().__new__(cls, values)
        fields.layout = layout
        return fields

    def __reduce__(self):
        return Fields, (tuple(self), self.layout)

    def like(self, values) -> Fields:
        """``values`` (one per field) in this batch's layout."""
        return Fields(values, self.layout)

    def rebuilt(self, values):
        """``values`` (one per field: the batch's tensors) as the loader yields them."""
        if isinstance(self.layout, tuple):
            return dict(zip(self.layout, values))
        return values[0] if self.layout == SINGLE else self.layout(*values)  # (== : SINGLE comes back pickled)


#: ``Fields``' layout of a batch of samples that are single arrays
SINGLE = "single"


def flat_fields(batch):
    """A collated batch as the loader carries it: a tuple or list as a tuple, a namedtuple as ``Fields`` of its
    class, a dict as ``Fields`` of its values by its keys, anything else (one array) as ``Fields`` of it alone
    (``SINGLE``)."""
    if isinstance(batch, dict):
        return Fields(tuple(batch.values()), tuple(batch))
    if isinstance(batch, tuple) and hasattr(type(batch), "_fields"):
        return Fields(batch, type(batch))
    if isinstance(batch, (tuple, list)):
        return tuple(batch)
    return Fields((batch,), SINGLE)


def default_collate(samples: list):
    """Stack a list of samples field by field: ``[(x0, y0), (x1, y1)] -> (stack([x0, x1]), stack([y0, y1]))``; samples
    that are single arrays stack into one array, ``[x0, x1] -> stack([x0, x1])``, which the loader yields bare.

    A batch is a flat tuple of arrays: samples of different numbers of fields are a ``ValueError`` (as PyTorch's
    ``default_collate`` refuses them; the extra fields were dropped), and a field holding arrays or tensors (a
    nested ``(x, (y_a, y_b))`` of arrays) or a dict a ``TypeError`` (PyTorch keeps the structure; stacked, it became
    one array). A field that is a tuple or list of numbers is one array of them, (N, k), where PyTorch's
    ``default_collate`` makes k tensors of N: a value, as ``ud.tensor`` reads it.

    Dict samples stack key by key into a dict, as PyTorch's ``default_collate`` stacks them (the loader yields a dict
    of tensors): every sample needs the first sample's keys, and a value that is itself a structure (a dict, a tuple
    of arrays) is a ``TypeError``, as a nested field is."""
    if isinstance(samples[0], dict):
        keys = list(samples[0])
        for index, sample in enumerate(samples):
            if not isinstance(sample, dict) or list(sample) != keys and set(sample) != set(keys):
                what = f"keys {list(sample)}" if isinstance(sample, dict) else f"a {type(sample).__name__}"
                raise ValueError(f"DataLoader: the dict samples of a batch must have the same keys: the batch's first "
                                 f"sample has keys {keys}, its sample {index} {what}")
        for key in keys:
            check_flat_field(samples[0][key], repr(key), "the samples")
        return {key: _stacked([to_numpy(sample[key]) for sample in samples], f"field {key!r}") for key in keys}
    if isinstance(samples[0], (tuple, list)):
        count = len(samples[0])
        for index, sample in enumerate(samples):
            if not isinstance(sample, (tuple, list)) or len(sample) != count:
                what = f"{len(sample)} fields" if isinstance(sample, (tuple, list)) else type(sample).__name__
                raise ValueError(f"DataLoader: the samples of a batch must have the same number of fields, as "
                                 f"PyTorch's default_collate asks: the batch's first sample has {count}, its sample "
                                 f"{index} {what}")
        for field in range(count):
            check_flat_field(samples[0][field], field, "the samples")
        fields = tuple(_stacked([to_numpy(sample[field]) for sample in samples], f"field {field}")
                       for field in range(count))
        kind = type(samples[0])  # (a namedtuple stays one, as in PyTorch's default_collate)
        return kind(*fields) if isinstance(samples[0], tuple) and hasattr(kind, "_fields") else fields
    return _stacked([to_numpy(sample) for sample in samples], "the samples")


def _stacked(values: list, what: str) -> np.ndarray:
    """``np.stack(values)``; values of different shapes a ``ValueError`` naming ``what`` and the first two shapes
    that differ (NumPy's "all input arrays must have the same shape" named neither)."""
    try:
        return np.stack(values)
    except ValueError:
        shapes = [np.shape(value) for value in values]
        other = next((index for index, shape in enumerate(shapes) if shape != shapes[0]), None)
        if other is None:
            raise
        raise ValueError(f"DataLoader: {what} of the batch's samples have different shapes: {shapes[0]} in its first "
                         f"sample, {shapes[other]} in its sample {other}; pad them to one shape, or join them in a "
                         f"collate_fn of your own") from None


def check_flat_field(value, position, source: str) -> None:
    """A ``TypeError`` where field ``position`` of a batch or sample (from ``source``) is a nested structure: a dict,
    or a tuple or list holding arrays or tensors (lists of numbers, nested too, are values and convert)."""
    if _nested(value):
        raise TypeError(f"a DataLoader batch is a flat tuple of arrays; {source} gave a {type(value).__name__} of "
                        f"arrays as field {position} (a nested structure, which PyTorch's loader keeps and stacking "
                        f"would turn into one array): flatten it into fields of their own, (x, y_a, y_b)")


def _nested(value) -> bool:
    """Whether ``value`` is a dict, or a tuple or list holding an array, a tensor or a dict at any depth."""
    if isinstance(value, dict):
        return True
    return isinstance(value, (tuple, list)) and any(
        _nested(item) or (hasattr(item, "shape") and not isinstance(item, np.generic)) for item in value)


def sliced_arrays(dataset, collate_fn) -> tuple[np.ndarray, ...] | None:
    """The arrays whose slices are ``dataset``'s batches as a loader with ``collate_fn`` makes them (one slice per
    array: ``TensorDataset.batch``), or None where a batch runs code of the user's: samples read one by one through
    a subclass's own ``__getitem__`` (an augmentation), a subclass's own ``batch``, or another ``collate_fn`` than
    ``default_collate``. Only plain slices may be handed to a framework's trainer whole, read for labels, or
    adopted without a copy; the user's code runs per batch, seeded, as PyTorch's loader runs it."""
    if not batched_by_dataset(dataset, collate_fn):
        return None
    kind = type(dataset)
    if kind.batch is not TensorDataset.batch or kind.__getitem__ is not TensorDataset.__getitem__:
        return None
    return dataset.arrays


def batched_by_dataset(dataset, collate_fn) -> bool:
    """Whether the loader's batch is ``dataset.batch(indices)`` (a ``TensorDataset`` joined by ``default_collate``,
    its ``batch`` the fast path: a subclass's own, or TensorDataset's where ``__getitem__`` is not overridden) rather
    than ``collate_fn`` of the samples read one by one."""
    if isinstance(dataset, Subset):  # (a subset's batch: the dataset's at the subset's indices)
        return batched_by_dataset(dataset.dataset, collate_fn)
    if not isinstance(dataset, TensorDataset) or collate_fn is not default_collate:
        return False
    kind = type(dataset)
    return not (kind.__getitem__ is not TensorDataset.__getitem__ and kind.batch is TensorDataset.batch)


def is_map_style(dataset) -> bool:
    """Whether ``dataset`` is map-style, as a loader, ``Subset`` and ``ConcatDataset`` take it: ``__len__`` and
    ``__getitem__`` (a ``Dataset``, a ``TensorDataset``, a list of samples), a ``__getitem__`` of its own rather
    than the placeholder of unidl's or torch's ``Dataset`` (a torch ``IterableDataset`` with a ``__len__``, or a
    ``Dataset`` subclass defining ``__iter__`` alone, passed, and its first batch raised ``NotImplementedError``)."""
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        return False
    owner = next((kind for kind in type(dataset).__mro__ if "__getitem__" in vars(kind)), None)
    return owner is None or (owner.__module__, owner.__qualname__) not in _PLACEHOLDERS


#: the base classes whose ``__getitem__`` only raises ``NotImplementedError``, named (torch is never imported here)
_PLACEHOLDERS = (("unidl.data.dataset", "Dataset"), ("torch.utils.data.dataset", "Dataset"))


class Dataset:
    """A sized collection of samples; ``dataset[i]`` is one sample (an array, or a tuple of arrays)."""

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def __add__(self, other) -> ConcatDataset:
        """``self`` then ``other``, as ``torch.utils.data.Dataset``'s ``+``."""
        return ConcatDataset([self, other])


def _as_array(position, array) -> np.ndarray:
    """A TensorDataset's array as NumPy: a tensor's values, nested lists as ``ud.tensor`` reads them (ragged ones a
    ``ValueError`` naming the array, not NumPy's "setting an array element with a sequence")."""
    if isinstance(array, (list, tuple)):
        try:
            return as_numpy_values(array)
        except ValueError as error:
            raise ValueError(f"TensorDataset: array {position}: {error}") from None
    return np.asarray(to_numpy(array))


class TensorDataset(Dataset):
    """Samples are the rows (axis 0) of equally long arrays: ``TensorDataset(x, y)[i] == (x[i], y[i])``.

    Backend tensors are converted to NumPy once, here, so that batching never touches a framework.
    """

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(_as_array(position, array) for position, array in enumerate(arrays))
        for position, array in enumerate(self.arrays):
            if array.ndim == 0:
                raise ValueError(f"TensorDataset: array {position} is a scalar; every array needs an axis 0 "
                                 f"indexing the samples")
        lengths = [len(array) for array in self.arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"TensorDataset: arrays must have the same length along axis 0, got lengths "
                             f"{lengths}")
        if lengths[0] == 0:
            raise ValueError("TensorDataset: the arrays are empty (length 0 along axis 0)")

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(array[index] for array in self.arrays)

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        """The samples at ``indices``, one array per field, cut with a single slice per array. The arrays
        are fresh copies (fancy indexing), which the loader hands to the backend without copying again."""
        return tuple(array[indices] for array in self.arrays)


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order, as ``torch.utils.data.Subset``: ``subset[i] ==
    dataset[indices[i]]``. ``indices`` are integers within ``dataset``'s length (negative ones count from its end),
    checked here (an index out of range failed only when the loader reached it). A subset of a ``TensorDataset``
    batches with one slice per array, as the whole dataset does."""

    def __init__(self, dataset, indices):
        if not is_map_style(dataset):
            raise TypeError(f"Subset takes a map-style dataset (__len__ and __getitem__), got {type(dataset).__name__}")
        array = np.asarray(indices)
        if array.size == 0:
            array = array.astype(np.int64).reshape(0)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise TypeError(f"Subset: indices must be a sequence of integers, got {_described(indices, array)}")
        length = len(dataset)
        outside = array[(array < -length) | (array >= length)]
        if outside.size:
            raise IndexError(f"Subset: index {int(outside[0])} is out of range for a dataset of {length} samples "
                             f"(valid: -{length} to {length - 1})")
        self.dataset, self.indices = dataset, array.astype(np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, list):  # (torch's Subset reads a list of indices through the dataset)
            return self.dataset[[int(self.indices[i]) for i in index]]
        if isinstance(index, slice):  # (as torch's: the dataset read at the subset's indices in that slice)
            return self.dataset[self.indices[index]]
        return self.dataset[int(self.indices[index])]

    def batch(self, indices: np.ndarray):
        """The samples at ``indices`` of the subset, through the dataset's own ``batch`` (``batched_by_dataset``)."""
        return self.dataset.batch(self.indices[indices])


def _described(indices, array) -> str:
    kind = type(indices).__name__
    return f"a {kind} of shape {array.shape}" if array.ndim != 1 else f"a {kind} of {array.dtype} values"


class ConcatDataset(Dataset):
    """The samples of several datasets one after another, as ``torch.utils.data.ConcatDataset``: ``len`` is their
    sum and ``cumulative_sizes`` the running sums; a negative index counts from the end."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        for position, dataset in enumerate(self.datasets):
            if not is_map_style(dataset):
                raise TypeError(f"ConcatDataset: dataset {position} is not a map-style dataset (__len__ and "
                                f"__getitem__), got {type(dataset).__name__}")
        self.cumulative_sizes = np.cumsum([len(dataset) for dataset in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index):
        length = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"ConcatDataset indices must be integers, got {type(index).__name__}")
        if not -length <= index < length:
            raise IndexError(f"ConcatDataset: index {index} is out of range for {length} samples")
        index = int(index) + length if index < 0 else int(index)
        which = int(np.searchsorted(self.cumulative_sizes, index, side="right"))
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]


def random_split(dataset, lengths, seed: int | None = None) -> list[Subset]:
    """Split ``dataset`` into ``Subset``s of the given ``lengths`` over one random permutation, as
    ``torch.utils.data.random_split``: integers summing to the dataset's length, or fractions summing to 1 (each
    ``floor(n * fraction)``, the samples left over going one each to the first splits). The permutation is drawn
    from NumPy's generator seeded with ``seed``; ``None`` draws the seed from unidl's generator, so that
    ``ud.manual_seed`` fixes the split on every backend (torch's ``generator`` is a torch object: pass ``seed``).

    Example: ``train, val = random_split(TensorDataset(x, y), [0.8, 0.2], seed=0)``."""
    from unidl.data.sampler import draw_seed
    from unidl.random import check_seed

    length = len(dataset)
    values = list(lengths)
    if not values or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                             for v in values):
        raise TypeError(f"random_split: lengths must be a non-empty sequence of integers or of fractions, "
                        f"got {lengths!r}")
    if all(isinstance(v, (int, np.integer)) for v in values):
        sizes = [int(v) for v in values]
        if any(size < 0 for size in sizes):
            raise ValueError(f"random_split: lengths must not be negative, got {sizes}")
    else:
        if not math.isclose(sum(values), 1) or any(not 0 <= v <= 1 for v in values):
            raise ValueError(f"random_split: fractions must each be from 0 to 1 and sum to 1, got {values}")
        sizes = [int(math.floor(length * v)) for v in values]
        for i in range(length - sum(sizes)):
            sizes[i % len(sizes)] += 1
        for i, size in enumerate(sizes):
            if size == 0:
                warnings.warn(f"random_split: the split at index {i} has no samples", stacklevel=2)
    if sum(sizes) != length:
        raise ValueError(f"random_split: lengths {sizes} sum to {sum(sizes)}, not to the dataset's length {length}")
    seed = draw_seed() if seed is None else check_seed(seed, "random_split seed")
    order = np.random.default_rng(seed).permutation(length)
    ends = np.cumsum(sizes).tolist()
    return [Subset(dataset, order[end - size:end]) for size, end in zip(sizes, ends)]
