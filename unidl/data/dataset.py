"""Datasets: anything with ``__len__`` and ``__getitem__``; ``TensorDataset`` keeps whole arrays in memory
so that the loader can cut a batch with one slice per array.
"""

from __future__ import annotations

import numpy as np

from unidl.tensors import as_numpy_values, to_numpy


class SingleField(tuple):
    """A batch of samples that are single arrays (not tuples): the loader yields its one tensor bare, as
    ``torch.utils.data.DataLoader`` does (a 1-tuple before), where a tuple sample's batch is a tuple of fields."""


def default_collate(samples: list):
    """Stack a list of samples field by field: ``[(x0, y0), (x1, y1)] -> (stack([x0, x1]), stack([y0, y1]))``; samples
    that are single arrays stack into one array, ``[x0, x1] -> stack([x0, x1])``, which the loader yields bare.

    A batch is a flat tuple of arrays: samples of different numbers of fields are a ``ValueError`` (as PyTorch's
    ``default_collate`` refuses them; the extra fields were dropped), and a field holding arrays or tensors (a
    nested ``(x, (y_a, y_b))`` of arrays) or a dict a ``TypeError`` (PyTorch keeps the structure; stacked, it became
    one array). A field that is a tuple or list of numbers is one array of them, (N, k), where PyTorch's
    ``default_collate`` makes k tensors of N: a value, as ``ud.tensor`` reads it."""
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
        return tuple(_stacked([to_numpy(sample[field]) for sample in samples], f"field {field}")
                     for field in range(count))
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


def check_flat_field(value, position: int, source: str) -> None:
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
    if not isinstance(dataset, TensorDataset) or collate_fn is not default_collate:
        return False
    kind = type(dataset)
    return not (kind.__getitem__ is not TensorDataset.__getitem__ and kind.batch is TensorDataset.batch)


class Dataset:
    """A sized collection of samples; ``dataset[i]`` is one sample (an array, or a tuple of arrays)."""

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")


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
