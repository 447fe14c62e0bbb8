"""``ReduceLROnPlateau``: Keras's rule (against Keras's own callback), in ``fit``, and its state on resume."""

import types

import numpy as np
import pytest

import unidl as ud
from tests.callbacks.conftest import keras_compares_in_float32, train


def keras_rates(values, **kwargs):
    """The lr Keras's ReduceLROnPlateau leaves after each value, driven on a stand-in model."""
    keras = pytest.importorskip("keras")
    model = types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=1.0))
    callback = keras.callbacks.ReduceLROnPlateau(monitor="m", **kwargs)
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"m": value})
        rates.append(float(model.optimizer.learning_rate))
    return rates


class Holder(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = self.parameter(np.ones((2,), np.float32))


@pytest.mark.parametrize("kwargs", [
    dict(mode="min", factor=0.5, patience=2),
    dict(mode="min", factor=0.5, patience=1, cooldown=2, min_lr=0.1),
    dict(mode="max", factor=0.2, patience=3, min_delta=0.05, cooldown=1),
    dict(mode="min", factor=0.0, patience=0, min_delta=0.0),
])
def test_rates_are_keras(backend, kwargs):
    values = list(np.random.default_rng(5).standard_normal(40).cumsum() * 0.1)
    rates = unidl_rates(values, **kwargs)
    np.testing.assert_allclose(rates, keras_rates(values, **kwargs), rtol=1e-12)
    assert len(set(rates)) > 1


def unidl_rates(values, **kwargs):
    """The lr unidl's ReduceLROnPlateau leaves after each value, on an SGD optimizer starting at 1."""
    callback = ud.callbacks.ReduceLROnPlateau(monitor="m", **kwargs)
    optimizer = ud.optim.SGD(Holder().parameters(), lr=1.0)
    callback.trainer = types.SimpleNamespace(optimizer=optimizer)
    callback.on_train_begin()
    rates = []
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"m": value})
        rates.append(optimizer.lr)
    return rates


def test_a_change_of_exactly_min_delta_is_no_improvement_as_keras(backend):
    """0.8 then 0.7 with ``min_delta=0.1`` is no improvement in Keras (0.7 + 0.1 against 0.8 in float32), so a
    patience of 1 lowers the rate there (unidl's float64 ``0.7 < 0.8 - 0.1`` counted an improvement)."""
    values, kwargs = [0.8, 0.7, 0.6], dict(mode="min", factor=0.5, patience=1, min_delta=0.1)
    assert unidl_rates(values, **kwargs) == [1.0, 0.5, 0.5]  # plain Keras's, on every host
    if keras_compares_in_float32():
        assert keras_rates(values, **kwargs) == [1.0, 0.5, 0.5]


def test_in_fit(backend, problem):
    # min_delta so large that only the first epoch improves: reductions follow from patience and cooldown alone
    callback = ud.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1, min_delta=1e9,
                                              min_lr=0.02)
    _, optimizer, history = train(problem, 9, [callback], lr=0.1, validation_data=None)
    np.testing.assert_allclose(history["lr"], [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02], rtol=1e-12)
    assert optimizer.lr == pytest.approx(0.02)


def test_state_continues_on_resume(backend, problem, tmp_path):
    def callbacks(directory):
        return [ud.callbacks.Checkpoint(directory, keep=5),
                ud.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_delta=1e9)]

    _, _, straight = train(problem, 5, callbacks(tmp_path / "a"), lr=0.1, validation_data=None)
    from unidl.checkpoint import list_checkpoints

    train(problem, 5, callbacks(tmp_path / "b"), lr=0.1, validation_data=None)
    _, _, resumed = train(problem, 5, callbacks(tmp_path / "c"), lr=0.1, validation_data=None,
                          resume_from=list_checkpoints(tmp_path / "b")[1])
    assert resumed["lr"] == straight["lr"] == [0.1, 0.1, 0.1, 0.05, 0.05]


def test_bad_arguments():
    for kwargs, message in [(dict(factor=1.0), "factor must be a number in"), (dict(patience=-1), "patience must be"),
                            (dict(cooldown=1.5), "cooldown must be"), (dict(min_lr=-1), "min_lr=-1 is invalid"),
                            (dict(mode="up"), "mode must be")]:
        with pytest.raises(ValueError, match=message):
            ud.callbacks.ReduceLROnPlateau(**kwargs)
    with pytest.raises(ud.errors.CheckpointStateError, match="exactly the keys"):
        ud.callbacks.ReduceLROnPlateau().load_state_dict({"best": 1.0})
