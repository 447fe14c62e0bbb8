"""``Subset``, ``ConcatDataset`` and ``random_split`` against ``torch.utils.data``'s: the same lengths, samples and
errors; splits fixed by a seed or by ``ud.manual_seed``; a loader over a subset gives the subset's samples."""

import numpy as np
import pytest
import torch.utils.data as torch_data

import unidl as ud
from unidl.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset, random_split


def _dataset(n=10):
    return TensorDataset(np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n, dtype=np.int64))


def _labels(dataset):
    return [int(dataset[i][1]) for i in range(len(dataset))]


@pytest.mark.parametrize("lengths", [[7, 3], [0.8, 0.2], [0.5, 0.3, 0.2], [1 / 3] * 3, [0.25, 0.25, 0.25, 0.25]])
def test_random_split_sizes_are_torchs_and_the_splits_partition_the_dataset(lengths):
    dataset = _dataset(10)
    splits = random_split(dataset, lengths, seed=0)
    expected = torch_data.random_split(range(10), lengths)
    assert [len(s) for s in splits] == [len(s) for s in expected]
    labels = [_labels(s) for s in splits]
    assert sorted(label for split in labels for label in split) == list(range(10))
    assert all(isinstance(s, Subset) and s.dataset is dataset for s in splits)


def test_random_split_is_fixed_by_its_seed_or_by_manual_seed():
    dataset = _dataset(50)
    first = [_labels(s) for s in random_split(dataset, [40, 10], seed=3)]
    assert first == [_labels(s) for s in random_split(dataset, [40, 10], seed=3)]
    assert first != [_labels(s) for s in random_split(dataset, [40, 10], seed=4)]
    ud.manual_seed(7)
    drawn = [_labels(s) for s in random_split(dataset, [0.8, 0.2])]
    ud.manual_seed(7)
    assert drawn == [_labels(s) for s in random_split(dataset, [0.8, 0.2])]


def test_random_split_refuses_lengths_torch_refuses():
    dataset = _dataset(10)
    for lengths, error, match in (([6, 3], ValueError, "sum to 9, not to the dataset's length 10"),
                                  ([0.5, 0.6], ValueError, "fractions must each be from 0 to 1 and sum to 1"),
                                  ([11, -1], ValueError, "must not be negative"),
                                  (["7", "3"], TypeError, "integers or of fractions"),
                                  ([], TypeError, "non-empty")):
        with pytest.raises(error, match=match):
            random_split(dataset, lengths, seed=0)
        if lengths and lengths != [11, -1]:  # (torch takes a negative length: a split of the wrong size)
            with pytest.raises((ValueError, TypeError)):
                torch_data.random_split(range(10), lengths)
    with pytest.raises(ValueError, match="random_split seed must be an integer"):
        random_split(dataset, [5, 5], seed=-1)
    with pytest.warns(UserWarning, match="the split at index 1 has no samples"):
        assert [len(s) for s in random_split(_dataset(2), [0.9, 0.1], seed=0)] == [2, 0]


def test_subset_reads_the_datasets_samples_at_its_indices_as_torchs():
    dataset = _dataset(10)
    indices = [9, 0, -1, 4]
    subset, expected = Subset(dataset, indices), torch_data.Subset(dataset, indices)
    assert len(subset) == len(expected) == 4
    for i in range(4):
        for ours, theirs in zip(subset[i], expected[i]):
            np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(subset[1:3], expected[1:3]):  # (a slice, as torch's)
        np.testing.assert_array_equal(ours, theirs)
    nested = Subset(subset, [3, 1])
    assert _labels(nested) == [4, 0]
    with pytest.raises(IndexError, match="index 10 is out of range for a dataset of 10 samples"):
        Subset(dataset, [1, 10])
    with pytest.raises(TypeError, match="indices must be a sequence of integers, got a list of float64"):
        Subset(dataset, [1.0, 2.0])
    assert len(Subset(dataset, [])) == 0


class _Rows(Dataset):
    """Samples read one by one (no batch slicing)."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return np.full(2, index, np.float32), np.int64(index)


@pytest.mark.parametrize("base", [_dataset, lambda n: _Rows()], ids=["arrays", "samples"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_loader_over_a_subset_gives_the_subsets_samples(base, shuffle):
    dataset = base(6)
    subset = Subset(dataset, [5, 2, 3, 0])
    batches = [(ud.to_numpy(x), ud.to_numpy(y)) for x, y in DataLoader(subset, batch_size=3, shuffle=shuffle, seed=1)]
    assert [len(y) for _, y in batches] == [3, 1]
    labels = np.concatenate([y for _, y in batches]).tolist()
    assert sorted(labels) == [0, 2, 3, 5]
    if not shuffle:
        assert labels == [5, 2, 3, 0]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), np.stack([dataset[v][0] for v in labels]))


def test_concat_dataset_indexes_as_torchs():
    a, b = _dataset(3), _Rows()
    ours, theirs = ConcatDataset([a, b]), torch_data.ConcatDataset([a, b])
    assert len(ours) == len(theirs) == 9
    assert ours.cumulative_sizes == theirs.cumulative_sizes == [3, 9]
    for index in (0, 2, 3, 8, -1, -9):
        for mine, expected in zip(ours[index], theirs[index]):
            np.testing.assert_array_equal(mine, expected)
    for index in (9, -10):
        with pytest.raises(IndexError, match="out of range for 9 samples"):
            ours[index]
    with pytest.raises(ValueError, match="should not be an empty iterable"):
        ConcatDataset([])
    labels = np.concatenate([ud.to_numpy(y) for _, y in DataLoader(ours, batch_size=4)]).tolist()
    assert labels == [0, 1, 2, 0, 1, 2, 3, 4, 5]


def test_a_loader_over_a_subset_runs_in_process_workers():
    train, _ = random_split(_dataset(10), [0.7, 0.3], seed=0)
    expected = [_labels(train)[i:i + 3] for i in range(0, 7, 3)]
    loader = DataLoader(train, batch_size=3, num_workers=2, worker_type="process")
    assert [ud.to_numpy(y).tolist() for _, y in loader] == expected
