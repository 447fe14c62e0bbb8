"""DataLoader: every sample once per epoch, seeded orders, mid-epoch resume, worker threads, backend tensors."""

import json
import re

import numpy as np
import pytest

import unidl as ud
from unidl import config
from unidl.data import DataLoader, Dataset, TensorDataset


def make_dataset(n=23):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int64)
    return TensorDataset(x, y)


def epoch_labels(loader):
    """The labels of one epoch, batch by batch, as lists of ints."""
    return [ud.to_numpy(y).tolist() for _, y in loader]


def flatten(batches):
    return [label for batch in batches for label in batch]


class RowDataset(Dataset):
    """A map-style dataset without batch slicing: exercises __getitem__ + collate."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return np.full(3, index * 3, dtype=np.float32) + np.arange(3, dtype=np.float32), np.int64(index)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(shuffle, drop_last):
    loader = DataLoader(make_dataset(23), batch_size=5, shuffle=shuffle, seed=3, drop_last=drop_last)
    for _ in range(3):
        batches = epoch_labels(loader)
        assert len(batches) == len(loader)
        labels = flatten(batches)
        assert len(labels) == len(set(labels))
        if drop_last:
            assert [len(b) for b in batches] == [5] * 4
        else:
            assert sorted(labels) == list(range(23))
            assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        if not shuffle:
            assert labels == sorted(labels)


def test_features_stay_aligned_with_labels():
    for x, y in DataLoader(make_dataset(23), batch_size=4, shuffle=True, seed=0):
        x, y = ud.to_numpy(x), ud.to_numpy(y)
        np.testing.assert_array_equal(x[:, 0], y * 3)


def test_len_with_and_without_drop_last():
    assert len(DataLoader(make_dataset(23), batch_size=5)) == 5
    assert len(DataLoader(make_dataset(23), batch_size=5, drop_last=True)) == 4
    assert len(DataLoader(make_dataset(20), batch_size=5, drop_last=True)) == 4
    assert len(DataLoader(make_dataset(20), batch_size=5)) == 4
    assert len(DataLoader(make_dataset(3), batch_size=10)) == 1


def test_order_is_fixed_by_seed_and_differs_between_epochs():
    first = DataLoader(make_dataset(50), batch_size=7, shuffle=True, seed=11)
    second = DataLoader(make_dataset(50), batch_size=7, shuffle=True, seed=11)
    other = DataLoader(make_dataset(50), batch_size=7, shuffle=True, seed=12)
    epochs = [epoch_labels(first) for _ in range(3)]
    assert epochs == [epoch_labels(second) for _ in range(3)]
    assert epochs[0] != epoch_labels(other)
    assert epochs[0] != epochs[1] != epochs[2]
    assert first.epoch == 2


def test_seed_none_is_reproducible_after_manual_seed():
    ud.manual_seed(5)
    first = epoch_labels(DataLoader(make_dataset(30), batch_size=4, shuffle=True))
    ud.manual_seed(5)
    second = epoch_labels(DataLoader(make_dataset(30), batch_size=4, shuffle=True))
    assert first == second


def test_set_epoch_replays_an_epoch():
    loader = DataLoader(make_dataset(30), batch_size=4, shuffle=True, seed=1)
    epochs = [epoch_labels(loader) for _ in range(3)]
    loader.set_epoch(1)
    assert epoch_labels(loader) == epochs[1]
    assert epoch_labels(loader) == epochs[2]


@pytest.mark.parametrize("drop_last", [False, True])
def test_mid_epoch_state_dict_resumes_exactly(drop_last):
    def make():
        return DataLoader(make_dataset(23), batch_size=4, shuffle=True, seed=7, drop_last=drop_last)

    reference = make()
    uninterrupted = [epoch_labels(reference) for _ in range(4)]

    loader = make()
    seen = [epoch_labels(loader) for _ in range(2)]
    iterator = iter(loader)  # epoch 2
    partial = [ud.to_numpy(next(iterator)[1]).tolist() for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["epoch"] == 2 and state["position"] == 3

    resumed = make()
    resumed.load_state_dict(state)
    rest = epoch_labels(resumed)
    assert seen + [partial + rest] + [epoch_labels(resumed)] == uninterrupted


def test_state_dict_at_epoch_end_points_to_next_epoch():
    loader = DataLoader(make_dataset(10), batch_size=3, shuffle=True, seed=0)
    epoch_labels(loader)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0


def test_a_new_iteration_starts_the_next_epoch_after_one_broken_off_where_state_dict_names_its_next_batch():
    """``state_dict()`` names the batch the iteration under way (or broken off) yields next: a checkpoint's resume
    point. A new ``iter(loader)`` never goes on with an iteration broken off mid-epoch: it starts the next epoch,
    as ``next_iteration()`` says. The two agree where a position was set (``load_state_dict``, ``set_epoch``)."""
    def make():
        return DataLoader(make_dataset(16), batch_size=4, shuffle=True, seed=5)

    reference = make()
    epochs = [epoch_labels(reference) for _ in range(4)]
    loader = make()

    def state():
        return loader.state_dict()["epoch"], loader.state_dict()["position"]

    assert state() == loader.next_iteration() == (0, 0)
    iterator = iter(loader)
    next(iterator), next(iterator)
    assert state() == (0, 2) and loader.next_iteration() == (1, 0)
    del iterator  # broken off
    assert state() == (0, 2) and loader.next_iteration() == (1, 0)
    assert epoch_labels(loader) == epochs[1]
    assert state() == loader.next_iteration() == (2, 0)
    loader.load_state_dict(dict(loader.state_dict(), epoch=0, position=2))
    assert state() == loader.next_iteration() == (0, 2)
    assert epoch_labels(loader) == epochs[0][2:]
    loader.set_epoch(3)
    assert state() == loader.next_iteration() == (3, 0)
    assert epoch_labels(loader) == epochs[3]


def test_resume_takes_the_seed_from_the_state():
    ud.manual_seed(1)
    loader = DataLoader(make_dataset(20), batch_size=3, shuffle=True)
    expected = [epoch_labels(loader) for _ in range(2)]
    ud.manual_seed(2)  # a different drawn seed: the state's seed must win
    resumed = DataLoader(make_dataset(20), batch_size=3, shuffle=True)
    resumed.load_state_dict({**loader.state_dict(), "epoch": 1})
    assert epoch_labels(resumed) == expected[1]


def test_load_state_dict_rejects_a_different_setup():
    state = DataLoader(make_dataset(20), batch_size=3).state_dict()
    with pytest.raises(ud.StateDictError, match="batch_size"):
        DataLoader(make_dataset(20), batch_size=4).load_state_dict(state)
    with pytest.raises(ud.StateDictError, match="missing"):
        DataLoader(make_dataset(20), batch_size=3).load_state_dict({"epoch": 0})


@pytest.mark.parametrize("key, value, message", [
    ("seed", None, "seed None is not a non-negative integer .a shuffled loader needs one"),
    ("seed", "abc", "seed 'abc'"), ("seed", -5, "seed -5"), ("seed", 1.5, "seed 1.5"),
    ("position", 1.5, "position 1.5 is not an integer in 0..7"), ("position", True, "position True"),
    ("position", "1", "position '1'"), ("epoch", -1, "epoch -1 is not an integer >= 0"), ("epoch", 1.0, "epoch 1.0")])
def test_load_state_dict_checks_every_value_before_it_changes_anything(key, value, message):
    """A bad seed, position or epoch is a ``StateDictError`` naming it, and the loader keeps its state (a bad epoch
    was refused after the seed had been set; a bad seed broke the next iteration with NumPy's error)."""
    loader = DataLoader(make_dataset(20), batch_size=3, shuffle=True, seed=7)
    state = dict(loader.state_dict(), **{key: value})
    with pytest.raises(ud.StateDictError, match=message):
        loader.load_state_dict(state)
    assert loader.state_dict() == DataLoader(make_dataset(20), batch_size=3, shuffle=True, seed=7).state_dict()
    assert epoch_labels(loader) == epoch_labels(DataLoader(make_dataset(20), batch_size=3, shuffle=True, seed=7))


def test_set_epoch_or_load_state_dict_is_not_moved_by_an_iterator_still_alive():
    """An older iterator that goes on after ``set_epoch`` or ``load_state_dict`` does not move the position they set
    (the next epoch skipped the batches it had yielded)."""
    loader = DataLoader(make_dataset(8), batch_size=2)
    old = iter(loader)
    next(old)
    loader.set_epoch(3)
    next(old), next(old)
    assert loader.next_iteration() == (3, 0)
    assert len(epoch_labels(loader)) == 4
    old = iter(loader)
    start = DataLoader(make_dataset(8), batch_size=2).state_dict()
    loader.load_state_dict(start)
    next(old)
    assert loader.state_dict() == start


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dataset", [make_dataset(37), RowDataset(37)], ids=["tensor", "generic"])
def test_workers_give_the_same_batches(dataset, shuffle):
    def run(num_workers):
        loader = DataLoader(dataset, batch_size=5, shuffle=shuffle, seed=4, num_workers=num_workers,
                            **({"prefetch": 2} if num_workers else {}))
        return [[(ud.to_numpy(x).tolist(), ud.to_numpy(y).tolist()) for x, y in loader] for _ in range(2)]

    reference = run(0)
    assert run(1) == reference
    assert run(3) == reference


def test_generic_dataset_matches_tensor_dataset():
    tensor_batches = [(ud.to_numpy(x), ud.to_numpy(y)) for x, y in
                      DataLoader(make_dataset(23), batch_size=6, shuffle=True, seed=2)]
    generic_batches = [(ud.to_numpy(x), ud.to_numpy(y)) for x, y in
                       DataLoader(RowDataset(23), batch_size=6, shuffle=True, seed=2)]
    for (x1, y1), (x2, y2) in zip(tensor_batches, generic_batches, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


class Scaled(TensorDataset):
    """An augmentation: a subclass of TensorDataset whose samples are its rows scaled, in its own __getitem__."""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x * 100, y


class ScaledBatches(TensorDataset):
    """An augmentation in a TensorDataset subclass's own ``batch`` (its fast path): x scaled, as a view where the
    rows are consecutive (legal NumPy; the loader must not adopt it as a fresh array)."""

    def batch(self, indices):
        if np.array_equal(indices, np.arange(indices[0], indices[-1] + 1)):
            x, y = (array[indices[0]:indices[-1] + 1] for array in self.arrays)
        else:
            x, y = super().batch(indices)
        return x * 100, y[:]


def doubled(samples):
    return np.stack([x for x, _ in samples]) * 2, np.stack([y for _, y in samples])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_tensor_datasets_collate_fn_or_a_subclasss_getitem_makes_its_batches_as_in_torch(backend, num_workers):
    """A ``collate_fn`` given with a ``TensorDataset``, or a subclass's own ``__getitem__`` or ``batch``, makes the
    batches, as PyTorch's loader reads them (its rows were sliced past both), and ``fit`` trains on those batches on
    every backend (Keras's trainer slices the arrays itself only where the batches are plain slices of them: a
    subclass's own ``batch`` was skipped on Keras-on-JAX and Keras-on-torch, whose ``take_arrays`` now refuses)."""
    import torch

    x, y = make_dataset(8).arrays
    rows = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    class TorchScaled(torch.utils.data.TensorDataset):
        def __getitem__(self, index):
            a, b = super().__getitem__(index)
            return a * 100, b

    oracles = [torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=lambda s: doubled([(a.numpy(), b.numpy())
                                                                                           for a, b in s])),
               torch.utils.data.DataLoader(TorchScaled(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4)]
    loaders = [DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=doubled, num_workers=num_workers),
               DataLoader(Scaled(x, y), batch_size=4, num_workers=num_workers),
               DataLoader(ScaledBatches(x, y), batch_size=4, num_workers=num_workers)]
    oracles.append(oracles[1])
    for loader, oracle in zip(loaders, oracles):
        assert loader.sliced_arrays() is None and iter(loader).take_arrays() is None
        for (bx, by), (ox, oy) in zip(loader, oracle):
            np.testing.assert_array_equal(ud.to_numpy(bx), np.asarray(ox))
            np.testing.assert_array_equal(ud.to_numpy(by), np.asarray(oy))
    assert DataLoader(TensorDataset(x, y), batch_size=4).sliced_arrays() is not None

    def fitted(data):
        ud.manual_seed(0)
        model = ud.nn.Linear(3, 1)
        ud.fit(model, data, loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=1e-6), epochs=1,
               verbose=0, metrics=[])
        return ud.to_numpy(model.weight)

    targets = np.ones((8, 1), np.float32)
    for kind in (Scaled, ScaledBatches):
        np.testing.assert_allclose(fitted(DataLoader(kind(x, targets), batch_size=4)),
                                   fitted(DataLoader(TensorDataset(x * 100, targets), batch_size=4)), rtol=1e-6)


def test_a_subclasss_own_batch_is_what_fit_checks_and_a_view_it_returns_is_copied(backend):
    """A ``TensorDataset`` subclass's own ``batch`` makes the batches that ``fit`` checks (labels 1..3 that it shifts
    to 0..2 train; fit read the raw arrays and refused them), and a view of the dataset that it returns is copied,
    so an in-place op on a batch leaves the dataset as it was."""

    class ShiftedLabels(TensorDataset):
        def batch(self, indices):
            x, y = (array[indices[0]:indices[-1] + 1] for array in self.arrays)  # views: consecutive rows
            return x, y - 1

    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    dataset = ShiftedLabels(x, np.array([1, 2, 3, 1, 2, 3, 1, 2]))
    ud.manual_seed(0)
    model = ud.nn.Linear(3, 3)
    history = ud.fit(model, DataLoader(dataset, batch_size=4), loss="cross_entropy", optimizer="sgd", epochs=1,
                     verbose=0)
    assert np.isfinite(history["loss"][0])
    for batch_x, _ in DataLoader(dataset, batch_size=4):
        native = batch_x.native if hasattr(batch_x, "native") else batch_x
        if hasattr(native, "mul_"):  # torch: an in-place op on the batch
            native.mul_(0)
    np.testing.assert_array_equal(dataset.arrays[0], x)


def test_break_with_workers_then_resume():
    loader = DataLoader(make_dataset(40), batch_size=4, shuffle=True, seed=9, num_workers=2)
    expected = DataLoader(make_dataset(40), batch_size=4, shuffle=True, seed=9)
    full = epoch_labels(expected)
    taken = []
    for _, y in loader:
        taken.append(ud.to_numpy(y).tolist())
        if len(taken) == 4:
            break
    resumed = DataLoader(make_dataset(40), batch_size=4, shuffle=True, seed=9, num_workers=2)
    resumed.load_state_dict(loader.state_dict())
    assert taken + epoch_labels(resumed) == full


@pytest.mark.parametrize("num_workers", [0, 2])
def test_yields_native_tensors_of_the_current_backend(backend, num_workers):
    loader = DataLoader(make_dataset(10), batch_size=4, num_workers=num_workers)
    native = config.backend()
    batches = list(loader)
    assert len(batches) == 3
    for x, y in batches:
        assert native.is_tensor(x) and native.is_tensor(y)
        assert ud.to_numpy(x).dtype == np.float32
        assert ud.to_numpy(y).dtype == np.int64
    np.testing.assert_array_equal(ud.to_numpy(batches[0][1]), [0, 1, 2, 3])


def test_worker_threads_see_the_callers_backend_scope(backend):
    seen = set()

    def collate(samples):
        seen.add(config.get_backend())  # runs on a worker thread, inside the caller's context
        return tuple(np.stack(field) for field in zip(*samples))

    list(DataLoader(RowDataset(12), batch_size=3, num_workers=2, collate_fn=collate))
    assert seen == {backend}


def test_tensor_dataset_accepts_backend_tensors(backend):
    x = ud.tensor(np.arange(12, dtype=np.float32).reshape(6, 2))
    dataset = TensorDataset(x, np.arange(6))
    assert isinstance(dataset.arrays[0], np.ndarray)
    (xb, yb), = list(DataLoader(dataset, batch_size=6))
    np.testing.assert_array_equal(ud.to_numpy(xb), np.arange(12).reshape(6, 2))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(make_dataset(10), batch_size=batch_size)


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="length 0"):
        TensorDataset(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        DataLoader(RowDataset(0), batch_size=2)


def test_arrays_of_different_lengths_are_an_error():
    with pytest.raises(ValueError, match=r"\[5, 4\]"):
        TensorDataset(np.zeros((5, 2)), np.zeros(4))


def test_drop_last_with_batch_larger_than_dataset_is_an_error():
    with pytest.raises(ValueError, match="no batch"):
        DataLoader(make_dataset(3), batch_size=4, drop_last=True)


def test_iterating_a_shuffled_sampler_again_reshuffles_as_torchs():
    """Each ``iter`` of a Sampler or BatchSampler is the next epoch, as torch's RandomSampler reshuffles at each
    iteration (the same order came back each time)."""
    from unidl.data import BatchSampler, Sampler

    sampler = Sampler(20, shuffle=True, seed=0)
    first, second = list(sampler), list(sampler)
    assert first != second and sorted(first) == sorted(second) == list(range(20))
    assert (first, second) == (sampler.order(0).tolist(), sampler.order(1).tolist())
    batches = BatchSampler(Sampler(20, shuffle=True, seed=0), 5)
    assert [i for b in batches for i in b] == first and [i for b in batches for i in b] == second


def test_a_sampler_overriding_iter_but_not_order_is_refused():
    """BatchSampler reads ``order(epoch)`` (an epoch replayed, resumed): a subclass's own ``__iter__`` was never
    called, its batches Sampler's order."""
    from unidl.data import BatchSampler, Sampler

    class Reversed(Sampler):
        def __iter__(self):
            return iter(reversed(range(self.length)))

    class ReversedOrder(Sampler):
        def order(self, epoch):
            return np.arange(self.length)[::-1]

    with pytest.raises(TypeError, match="Reversed leaves as Sampler's while overriding __iter__: override order"):
        BatchSampler(Reversed(5), 2)
    assert [list(b) for b in BatchSampler(ReversedOrder(5), 2)] == [[4, 3], [2, 1], [0]]


@pytest.mark.parametrize("value", ["False", None, 0])
def test_drop_last_other_than_a_bool_is_an_error(value):
    """As torch's BatchSampler: ``drop_last="False"`` (true) dropped the last batch."""
    with pytest.raises(ValueError, match=f"drop_last must be True or False, got {value!r}"):
        DataLoader(make_dataset(10), batch_size=4, drop_last=value)


@pytest.mark.parametrize("name, value", [("num_workers", -1), ("prefetch", 0)])
def test_bad_worker_settings(name, value):
    with pytest.raises(ValueError, match=name):
        DataLoader(make_dataset(10), batch_size=2, **{name: value})


def test_a_ragged_list_is_an_error_naming_the_array():
    """Nested lists with rows of several lengths are ``ud.tensor``'s ``ValueError``, naming the array (NumPy's
    spoke of "setting an array element with a sequence"); rectangular lists are taken as NumPy takes them."""
    with pytest.raises(ValueError) as caught:
        TensorDataset(np.zeros((2, 3)), [[1.0, 2.0], [3.0]])
    assert str(caught.value).startswith("TensorDataset: array 1: ud.tensor takes nested lists whose rows along each "
                                        "axis have one length (a rectangular array), got rows of several lengths")
    np.testing.assert_array_equal(TensorDataset([[1, 2], [3, 4]], (5, 6))[1][0], [3, 4])


class Samples(Dataset):
    """Samples given as they are: ``Samples([(x, y), ...])``."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_nested_fields_or_samples_of_different_lengths_are_errors_not_stacked_or_dropped():
    """A batch is a flat tuple of arrays: a sample ``(x, (y_a, y_b))``, a collate_fn's ``((x_a, x_b), y)`` or a
    ``TensorDataset`` subclass's own ``batch`` giving ``(x, (y_a, y_b))`` is a
    ``TypeError`` (stacked, the inner tuple became one array, its batch axis moved; PyTorch keeps the structure),
    samples of different numbers of fields a ``ValueError`` (the extra fields were dropped; PyTorch refuses them
    too); a field that is a list of numbers still converts as ``ud.tensor`` converts it."""
    x = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="the samples gave a tuple of arrays as field 1 .* flatten it"):
        next(iter(DataLoader(Samples([(x, (x, x))] * 2), batch_size=2)))
    with pytest.raises(ValueError, match="the batch's first sample has 2, its sample 1 3 fields"):
        next(iter(DataLoader(Samples([(x, 0), (x, 1, 99)]), batch_size=2)))
    class NestedBatches(TensorDataset):
        def batch(self, indices):
            features, labels = super().batch(indices)
            return features, (labels, labels)

    with pytest.raises(TypeError, match=r"NestedBatches.batch gave a tuple of arrays as field 1"):
        next(iter(DataLoader(NestedBatches(np.ones((4, 3), np.float32), np.arange(4)), batch_size=2)))
    pairs = Samples([(x, 0)] * 4)
    with pytest.raises(TypeError, match=r"the collate of samples \(<lambda>\) gave a tuple of arrays as field 0"):
        next(iter(DataLoader(pairs, batch_size=2, collate_fn=lambda s: ((np.stack([a for a, _ in s]),) * 2, [0, 1]))))
    batch = next(iter(DataLoader(Samples([(x, [1, 2]), (x, [3, 4])]), batch_size=2)))
    np.testing.assert_array_equal(ud.to_numpy(batch[1]), [[1, 2], [3, 4]])


def test_iterable_datasets_ragged_samples_and_bare_samplers_say_what_is_wrong():
    """An iterable dataset or a generator is a ``TypeError`` saying the loader takes map-style datasets (Python's
    "has no len()"), samples of different shapes a ``ValueError`` naming the field and both shapes (NumPy's named
    neither), and ``Sampler``/``BatchSampler`` iterate epoch 0 as PyTorch's iterate theirs, refusing a length or a
    sampler they cannot use (a float length was truncated, ``range`` an ``AttributeError``)."""
    from unidl.data import BatchSampler, Sampler

    with pytest.raises(TypeError, match="DataLoader takes a map-style dataset .* got generator"):
        DataLoader((i for i in range(3)), batch_size=2)
    ragged = Samples([(np.ones(2), 0), (np.ones(3), 1)])
    with pytest.raises(ValueError, match=r"field 0 of the batch's samples have different shapes: \(2,\) in its "
                                         r"first sample, \(3,\) in its sample 1"):
        next(iter(DataLoader(ragged, batch_size=2)))
    assert list(Sampler(5)) == [0, 1, 2, 3, 4] and list(BatchSampler(Sampler(5), 2)) == [[0, 1], [2, 3], [4]]
    assert sorted(Sampler(5, shuffle=True, seed=1)) == [0, 1, 2, 3, 4]
    for length in (2.7, -3):
        with pytest.raises(ValueError, match="Sampler length must be a non-negative integer"):
            Sampler(length)
    with pytest.raises(TypeError, match="BatchSampler cuts a unidl Sampler's order per epoch, got range"):
        BatchSampler(range(5), 2)


def test_a_dataset_that_grows_or_shrinks_between_epochs_is_read_whole_as_in_torch():
    """The loader reads the dataset's length at each epoch, as PyTorch's: new samples are visited, ``len`` and
    ``state_dict`` agree with what is iterated (the length was frozen when the loader was built: new samples never
    visited, a shrunk dataset an ``IndexError``)."""
    samples = [(np.float32(i), i) for i in range(4)]
    loader = DataLoader(Samples(samples), batch_size=2)
    assert epoch_labels(loader) == [[0, 1], [2, 3]]
    samples += [(np.float32(i), i) for i in range(4, 7)]
    assert len(loader) == 4 and loader.state_dict()["length"] == 7
    assert epoch_labels(loader) == [[0, 1], [2, 3], [4, 5], [6]]
    del samples[2:]
    assert epoch_labels(loader) == [[0, 1]]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batches_pass_ud_tensors_check_of_their_numbers_alike_on_every_backend(backend, num_workers):
    """Each field of each batch is checked as ``ud.tensor`` checks its value (``number_array``): uint64 values beyond
    int64 are its ``ValueError`` (they wrapped around to negative numbers), complex numbers, strings and dates its
    ``DtypeMismatchError`` (TensorFlow made complex and string tensors, the others raised errors of their own), and
    bfloat16 and long doubles become the float dtype in force (torch and jax refused them, TensorFlow kept
    bfloat16): through the TensorDataset's slices, a collate of samples, and arrays handed over whole alike."""
    import ml_dtypes

    def first(arrays, **options):
        return next(iter(DataLoader(arrays, batch_size=2, num_workers=num_workers, **options)))

    big = np.array([2**63 + 5, 7], np.uint64)
    for data in (TensorDataset(big), list(big)):
        with pytest.raises(ValueError, match=r"DataLoader: values from 7 to 9223372036854775813 do not fit int64 in "
                                             r"field 0 of a batch"):
            first(data)
    for values in (np.ones(2, np.complex64), np.array(["a", "b"]), np.array(["2020-01-01"] * 2, "datetime64[D]")):
        for data in (TensorDataset(values), Samples([(np.float32(0), value) for value in values])):
            field = 0 if isinstance(data, TensorDataset) else 1
            expected = rf"DataLoader takes numbers .*dtype {re.escape(str(values.dtype))} in field {field}"
            with pytest.raises(ud.errors.DtypeMismatchError, match=expected):
                first(data)
    for dtype in (ml_dtypes.bfloat16, np.longdouble):
        (batch,) = first(TensorDataset(np.ones(2, dtype)))
        assert ud.to_numpy(batch).dtype == np.float32
        with ud.use_dtype("float64"):
            assert ud.to_numpy(first([np.ones(1, dtype)] * 2)).dtype == np.float64
    epoch = iter(DataLoader(TensorDataset(big), batch_size=2))
    with pytest.raises(ValueError, match="do not fit int64 in field 0"):  # (arrays handed over whole: take_arrays)
        epoch.take_arrays()
    assert ud.tensor(np.ones(2, np.longdouble)).dtype == ud.tensor(np.ones(2, np.float64)).dtype
    # a collate_fn's own tensors: the dtypes its NumPy arrays would become (an int32 tensor stayed int32 where the
    # same values as arrays were int64), floats and bools as they are
    native = first(list(range(4)), collate_fn=lambda samples: (ud.ops.cast(ud.tensor(np.array(samples)), "int32"),
                                                                ud.tensor(np.array(samples) > 1)))
    assert [ud.to_numpy(t).dtype for t in native] == [np.int64, np.bool_]
    assert native[0].dtype == first(list(range(4)), collate_fn=lambda samples: (np.int32(samples),))[0].dtype


def test_a_sharded_loader_leaving_a_rank_an_empty_batch_is_refused_as_its_iteration_begins(backend, monkeypatch):
    """A rank's share of a batch too small to split (9 samples, batch_size=4, 2 ranks: rank 0 got [[0, 1], [4, 5],
    []], a NaN mean loss all-reduced to every rank in a loop of the user's own) is ``fit``'s error as each iteration
    begins, on every rank; drop_last=True, or shard=False, iterates, and ``evaluate`` takes it (it skips an empty
    share and sums the ranks' counts)."""
    from unidl.distributed import process_group

    x = np.arange(9, dtype=np.float32)
    for rank in (0, 1):
        group = process_group.ProcessGroup(rank=rank, world_size=2, local_rank=rank, backend=None, engine=None)
        monkeypatch.setattr(process_group, "_group", group)
        loader = DataLoader(TensorDataset(x), batch_size=4)
        with pytest.raises(ValueError, match=r"with 2 ranks, a batch of the loader \(9 samples, batch_size=4, last "
                                             r"batch 1\) has fewer samples than ranks.* use drop_last=True"):
            iter(loader)
        shares = [ud.to_numpy(b[0]).tolist() for b in DataLoader(TensorDataset(x), batch_size=4, drop_last=True)]
        assert shares == [[0, 1], [4, 5]] if rank == 0 else [[2, 3], [6, 7]]
        assert len(list(DataLoader(TensorDataset(x), batch_size=4, shard=False))) == 3
        # evaluate skips an empty share and sums every rank's counts
        evaluated = ud.evaluate(ud.nn.Linear(1, 1), DataLoader(TensorDataset(x[:, None], x[:, None]), batch_size=4),
                                loss="mse", metrics=[])
        assert np.isfinite(evaluated["loss"])


@pytest.mark.parametrize("name", ["shuffle", "shard", "persistent_workers", "pin_memory"])
@pytest.mark.parametrize("value", ["False", "no", None, 0.5])
def test_a_true_or_false_option_other_than_a_bool_is_an_error(name, value):
    """As drop_last: a string was taken as True (shard="False" sharded, persistent_workers="no" kept the workers,
    shuffle="False" shuffled, pin_memory="False" said nothing could pin), whatever it said."""
    with pytest.raises(ValueError, match=f"DataLoader {name} must be True or False, got {re.escape(repr(value))}"):
        DataLoader(make_dataset(10), batch_size=4, num_workers=1, **{name: value})
    with pytest.raises(ValueError, match="Sampler shuffle must be True or False, got 'False'"):
        ud.data.Sampler(10, shuffle="False")


def test_an_iterable_dataset_with_a_len_is_refused_as_the_loader_is_built():
    """A torch ``IterableDataset`` with a ``__len__``, or a ``Dataset`` subclass defining ``__iter__`` but no
    ``__getitem__``, has only its base class's ``__getitem__``, which raises: they passed the map-style check and
    the first batch raised ``NotImplementedError``."""
    torch_data = pytest.importorskip("torch.utils.data")

    class TorchIterable(torch_data.IterableDataset):
        def __iter__(self):
            return iter(np.arange(5, dtype=np.float32))

        def __len__(self):
            return 5

    class Iterable(Dataset):
        def __iter__(self):
            return iter(np.arange(5, dtype=np.float32))

        def __len__(self):
            return 5

    for dataset in (TorchIterable(), Iterable()):
        with pytest.raises(TypeError, match=f"DataLoader takes a map-style dataset .* got {type(dataset).__name__}"):
            DataLoader(dataset, batch_size=2)
        with pytest.raises(TypeError, match="Subset takes a map-style dataset"):
            ud.data.Subset(dataset, [0])
    assert len(list(DataLoader(torch_data.TensorDataset(torch_data.default_collate([1.0, 2.0])), batch_size=2))) == 1


def test_dict_samples_batch_to_a_dict_of_tensors_and_fit_says_it_takes_x_y(backend):
    """Dict samples stack key by key into a dict of tensors, as PyTorch's default_collate (refused with a message of
    "field 0 ... dtype object" before); samples with other keys, or a value that is a structure, are errors naming
    them; ``fit`` refuses a loader of dict batches with its (x, y) message, before reading any as x and y."""
    x = np.ones(3, np.float32)
    batch = next(iter(DataLoader(Samples([{"x": x, "y": i} for i in range(4)]), batch_size=4)))
    assert sorted(batch) == ["x", "y"] and tuple(batch["x"].shape) == (4, 3)
    assert ud.to_numpy(batch["y"]).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"the batch's first sample has keys \['x', 'y'\], its sample 1 keys \['x'\]"):
        next(iter(DataLoader(Samples([{"x": x, "y": 0}, {"x": x}]), batch_size=2)))
    with pytest.raises(TypeError, match="the samples gave a dict of arrays as field 'x'"):
        next(iter(DataLoader(Samples([{"x": {"a": x}}] * 2), batch_size=2)))
    model = ud.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"take batches of two fields \(x, y\); the data gave a dict of \['x', 'y'\]"):
        ud.fit(model, DataLoader(Samples([{"x": x, "y": 0}] * 4), batch_size=2), loss="cross_entropy",
               optimizer=ud.optim.SGD(model.parameters(), lr=0.1), verbose=0, metrics=[])


def test_prefetch_factor_dataset_addition_and_len_of_an_iteration_as_in_torch():
    """PyTorch's ``prefetch_factor`` is ``prefetch`` (a ``TypeError`` before), ``dataset + dataset`` a
    ``ConcatDataset``, and ``len(iter(loader))`` the batches the iteration yields (both ``TypeError``s before)."""
    assert DataLoader(make_dataset(10), batch_size=4, num_workers=1, prefetch_factor=3).prefetch == 3
    with pytest.raises(ValueError, match="prefetch_factor is PyTorch's name for prefetch"):
        DataLoader(make_dataset(10), batch_size=4, num_workers=1, prefetch=2, prefetch_factor=3)
    with pytest.raises(ValueError, match="prefetch need"):
        DataLoader(make_dataset(10), batch_size=4, prefetch_factor=3)
    both = make_dataset(3) + RowDataset(2)
    assert isinstance(both, ud.data.ConcatDataset) and len(both) == 5 and both[4][1] == 1
    loader = DataLoader(make_dataset(10), batch_size=4)
    assert len(iter(loader)) == 3
    loader.load_state_dict(dict(loader.state_dict(), position=1))
    assert len(iter(loader)) == 2


def test_in_order_is_taken_as_torchs_default_and_refused_when_false():
    """torch's ``in_order=True`` (its default) is what unidl's loader does; ``False`` would let workers hand batches
    out of order, which the loader never does: a ``ValueError`` (an unexpected keyword argument before)."""
    import torch

    dataset, torch_dataset = TensorDataset(np.arange(10)), torch.utils.data.TensorDataset(torch.arange(10))
    assert len(DataLoader(dataset, batch_size=4, in_order=True)) == len(
        torch.utils.data.DataLoader(torch_dataset, batch_size=4, in_order=True)) == 3
    with pytest.raises(ValueError, match="in_order=False is not honoured"):
        DataLoader(dataset, batch_size=4, num_workers=2, in_order=False)
