"""``Epoch.take_arrays``/``advance``: an epoch handed to a framework trainer as whole arrays visits the same
samples in the same order as iterating it, and keeps the loader's resume position exact; ``fit`` trains the epoch
it numbers from its first batch after an iteration broken off mid-epoch, and from a position ``load_state_dict``
set, on either path (unidl's loop over the epoch, Keras's ``Model.fit`` over its arrays)."""

import numpy as np
import pytest

import unidl as ud
from unidl.data import DataLoader, Dataset, Epoch, TensorDataset
from tests.data.test_dataloader import RowDataset, make_dataset
from tests.helpers import last_json_line, run_python


def _iterated(loader, epoch, position=0):
    loader.load_state_dict(dict(loader.state_dict(), epoch=epoch, position=position))
    batches = list(loader)
    return [np.concatenate([ud.to_numpy(b[i]) for b in batches]) for i in range(2)]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("position", [0, 2])
def test_arrays_follow_the_iteration_order(shuffle, drop_last, position):
    loader = DataLoader(make_dataset(23), batch_size=5, shuffle=shuffle, seed=3, drop_last=drop_last)
    expected = _iterated(loader, 1, position)
    loader.load_state_dict(dict(loader.state_dict(), epoch=1, position=position))
    arrays = iter(loader).take_arrays()
    assert len(arrays) == 2
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)
    if not shuffle:  # an unshuffled epoch is a view of the dataset, not a copy
        assert np.shares_memory(arrays[0], loader.dataset.arrays[0])


def test_handed_over_epoch_yields_nothing_and_advance_moves_the_position():
    loader = DataLoader(make_dataset(23), batch_size=5)
    epoch = iter(loader)
    assert epoch.take_arrays() is not None
    assert list(epoch) == []
    assert loader.state_dict()["position"] == 0
    epoch.advance()
    epoch.advance()
    assert loader.state_dict()["position"] == 2
    epoch.advance(3)
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 0)  # all 5 batches delivered: next epoch


def test_no_arrays_once_iteration_began_or_without_tensor_dataset():
    loader = DataLoader(make_dataset(23), batch_size=5)
    epoch = iter(loader)
    next(epoch)
    assert epoch.take_arrays() is None
    assert len(list(epoch)) == 4  # iteration goes on normally
    assert iter(DataLoader(RowDataset(7), batch_size=2)).take_arrays() is None
    assert epoch.take_arrays() is None  # exhausted


def test_a_newer_epoch_iterator_owns_the_position():
    loader = DataLoader(make_dataset(23), batch_size=5)
    old = iter(loader)
    old.take_arrays()
    new = iter(loader)  # starts epoch 1
    old.advance()
    assert loader.state_dict()["position"] == 0
    next(new)
    assert loader.state_dict() == dict(loader.state_dict(), epoch=1, position=1)


def keras_fit_positions() -> dict:
    """Keras's framework, whether ``fit`` on the keras backend took each epoch's arrays (``Epoch.take_arrays``; none
    asked for: ``[]``), and the loader's ``(epoch, position)`` after each trained batch, over 2 epochs of 5 batches."""
    taken = []
    original = Epoch.take_arrays

    def spy(epoch):
        arrays = original(epoch)
        taken.append(arrays is not None)
        return arrays

    Epoch.take_arrays = spy
    try:
        rng = np.random.default_rng(0)
        with ud.use_backend("keras"):
            ud.manual_seed(0)
            model = ud.models.TwoLayerNet(4, 8, 3)
            x, y = rng.standard_normal((23, 4)).astype(np.float32), rng.integers(0, 3, 23)
            loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, seed=1)
            positions = []

            class Record(ud.callbacks.Callback):
                def on_batch_end(self, batch, logs=None):
                    state = loader.state_dict()
                    positions.append([state["epoch"], state["position"]])

            ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
                   epochs=2, verbose=0, metrics=(), callbacks=[Record()])
    finally:
        Epoch.take_arrays = original
    import keras
    return {"framework": keras.backend.backend(), "taken": taken, "positions": positions}


_KERAS_FIT_POSITIONS = """
import json
from tests.data.test_epoch import keras_fit_positions
print(json.dumps(keras_fit_positions()))
"""
# after each trained batch the state points at the next one (the next epoch's first after the last)
_EXPECTED_POSITIONS = [[0, 1], [0, 2], [0, 3], [0, 4], [1, 0], [1, 1], [1, 2], [1, 3], [1, 4], [2, 0]]


def check_keras_fit_positions(result, framework) -> None:
    """``keras_fit_positions()``'s result on Keras over ``framework``: Keras-TensorFlow's epoch iterated by unidl's
    loop over Keras's train-step graph; Keras's other frameworks' ``Model.fit`` given each epoch's arrays."""
    assert result["framework"] == framework
    assert result["taken"] == ([] if framework == "tensorflow" else [True, True])
    assert result["positions"] == _EXPECTED_POSITIONS


def test_keras_fit_keeps_exact_positions():
    """Keras-TensorFlow: unidl's loop over Keras's train-step graph iterates the epoch, reporting every batch. On
    Keras's other frameworks the check runs in tests/test_examples.py's interpreters whose Keras runs there (a
    fresh interpreter of its own cost seconds): test_keras_on_torch_keeps_exact_loader_positions."""
    import keras

    if keras.backend.backend() == "tensorflow":  # this process's Keras
        result = keras_fit_positions()
    else:  # Keras fixes its framework when first imported
        result = last_json_line(run_python(_KERAS_FIT_POSITIONS, env={"KERAS_BACKEND": "tensorflow"}).stdout)
    check_keras_fit_positions(result, "tensorflow")


def _indexed_loader(dataset=None) -> DataLoader:
    """16 samples, sample i one-hot at i (target 1), in 4 shuffled batches an epoch; epoch 0 and epoch 1 group the
    samples into other batches."""
    if dataset is None:
        dataset = TensorDataset(np.eye(16, dtype=np.float32), np.ones((16, 1), np.float32))
    loader = DataLoader(dataset, batch_size=4, shuffle=True, seed=5)
    assert _order(loader, 0) != _order(loader, 1)
    return loader


def _order(loader, epoch) -> list:
    """The samples of each batch of ``epoch``, sorted."""
    return [sorted(batch.tolist()) for batch in loader.batch_sampler.batches(epoch)]


def _broken_off(loader) -> None:
    """Iterate 2 of the loader's 4 batches and drop the iteration, as a ``break`` (or Ctrl-C) leaves it."""
    for index, _ in enumerate(loader):
        if index == 1:
            break
    assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (0, 2)


def _fit_one_epoch(loader, eager, capsys, monkeypatch) -> dict:
    """``fit`` of ``Linear(16, 1, bias=False)`` for one epoch: the samples of each batch it trained on (those whose
    weight the step moved: sample i's one-hot input reaches weight i alone), the checkpoint position after each
    (``trainer.loader_state()``), the steps ``fit`` reported, its History, whether it took the epoch's arrays."""
    taken, original = [], Epoch.take_arrays
    monkeypatch.setattr(Epoch, "take_arrays", lambda epoch: taken.append(original(epoch)) or taken[-1])
    ud.manual_seed(0)
    model, trained, positions = ud.nn.Linear(16, 1, bias=False), [], []
    weights = [ud.to_numpy(model.weight).copy()]

    class Record(ud.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            weights.append(ud.to_numpy(model.weight).copy())
            trained.append(np.flatnonzero(weights[-1] != weights[-2]).tolist())
            state = self.trainer.loader_state()
            positions.append((state["epoch"], state["position"]))

    capsys.readouterr()
    history = ud.fit(model, loader, loss="mse", optimizer=ud.optim.SGD(model.parameters(), lr=0.5), epochs=1,
                     verbose=2, eager=eager, callbacks=[Record()])
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    state = loader.state_dict()
    return {"trained": trained, "positions": positions, "steps": line.split("  ")[1], "loss": history["loss"],
            "after": (state["epoch"], state["position"]), "took_arrays": any(arrays is not None for arrays in taken)}


@pytest.mark.parametrize("eager", [False, True])
def test_fit_after_an_iteration_broken_off_mid_epoch_trains_its_epoch_from_the_first_batch(
        backend, eager, capsys, monkeypatch):
    """A loader iterated 2 of 4 batches and dropped is no resume point: ``fit(epochs=1)`` trains the 4 batches of
    epoch 0 in epoch 0's order (not epoch 1's, where the next ``iter`` would go on), and the steps, checkpoint
    positions and History it reports are those of the uninterrupted epoch 0; the loader is then at epoch 1.
    (keras, eager: Keras's own ``Model.fit`` over the epoch's arrays, on any host framework.)"""
    reference = _fit_one_epoch(_indexed_loader(), eager, capsys, monkeypatch)
    loader = _indexed_loader()
    _broken_off(loader)
    got = _fit_one_epoch(loader, eager, capsys, monkeypatch)
    assert got["trained"] == reference["trained"] == _order(loader, 0)
    assert got["positions"] == [(0, 1), (0, 2), (0, 3), (1, 0)]
    assert got["steps"] == "4 steps" and got["loss"] == reference["loss"]
    assert got["after"] == (1, 0)
    assert got["took_arrays"] or not (backend == "keras" and eager)


@pytest.mark.parametrize("eager", [False, True])
def test_fit_goes_on_from_a_position_load_state_dict_set(backend, eager, capsys, monkeypatch):
    """A resume point (``load_state_dict`` at epoch 0, batch 2), even over an iteration broken off: ``fit`` trains
    only the last 2 batches of epoch 0."""
    loader = _indexed_loader()
    _broken_off(loader)
    loader.load_state_dict(dict(loader.state_dict(), epoch=0, position=2))
    got = _fit_one_epoch(loader, eager, capsys, monkeypatch)
    assert got["trained"] == _order(loader, 0)[2:]
    assert got["positions"] == [(0, 3), (1, 0)] and got["steps"] == "2 steps" and got["after"] == (1, 0)
    assert got["took_arrays"] or not (backend == "keras" and eager)


class ReadRows(Dataset):
    """Sample i: (features [i, 0, 0], label i % 2); records the index of every sample read, in order."""

    def __init__(self, n):
        self.n, self.reads = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.reads.append(int(index))
        return np.array([index, 0, 0], np.float32), np.int64(index % 2)


def test_fits_probe_of_the_first_sample_reads_the_first_batch_it_trains(backend):
    """``fit``'s probe of the batch layout (``DataLoader.first_sample``, here for the accuracy metric) reads the
    first sample of the batch it trains first, not of the batch a broken-off iteration left behind; then the
    samples of epoch 0 in its order."""
    loader = _indexed_loader(ReadRows(16))
    _broken_off(loader)
    loader.dataset.reads.clear()
    model = ud.nn.Linear(3, 2)
    ud.fit(model, loader, loss="cross_entropy", optimizer="sgd", epochs=1, verbose=0, metrics=["accuracy"])
    order = [int(index) for batch in loader.batch_sampler.batches(0) for index in batch]
    assert loader.dataset.reads == [order[0]] + order
