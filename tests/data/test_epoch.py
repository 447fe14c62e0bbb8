"""``Epoch.take_arrays``/``advance``: an epoch handed to a framework trainer as whole arrays visits the same
samples in the same order as iterating it, and keeps the loader's resume position exact."""

import numpy as np
import pytest

import unidl as ud
from unidl.data import DataLoader, Epoch, TensorDataset
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


@pytest.mark.parametrize("framework", ["tensorflow", "torch"])
def test_keras_fit_keeps_exact_positions(framework):
    """Keras-TensorFlow: unidl's loop over Keras's train-step graph iterates the epoch; Keras's other
    frameworks: ``Model.fit`` is given each epoch's arrays and reports every batch it consumed."""
    import keras

    if keras.backend.backend() == framework:  # this process's Keras (a fresh interpreter costs seconds)
        result = keras_fit_positions()
    else:  # Keras fixes its framework when first imported
        result = last_json_line(run_python(_KERAS_FIT_POSITIONS, env={"KERAS_BACKEND": framework}).stdout)
    assert result["framework"] == framework
    assert result["taken"] == ([] if framework == "tensorflow" else [True, True])
    assert result["positions"] == _EXPECTED_POSITIONS
