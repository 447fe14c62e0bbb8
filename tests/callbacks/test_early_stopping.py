"""``EarlyStopping``: Keras 3's rule (against Keras's own callback, driven with the same values), a fresh start
for each ``fit`` of one object, and its arguments."""

import types

import numpy as np
import pytest

import unidl as ud
from tests.callbacks.conftest import keras_compares_in_float32, train


def keras_stops(values, **kwargs):
    """(the epoch Keras's EarlyStopping stopped at or None, its best epoch) for ``values``, on a stand-in model."""
    keras = pytest.importorskip("keras")
    model = types.SimpleNamespace(stop_training=False, get_weights=lambda: [], set_weights=lambda weights: None)
    callback = keras.callbacks.EarlyStopping(monitor="m", **kwargs)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"m": value})
        if model.stop_training:
            return epoch, callback.best_epoch
    return None, callback.best_epoch


def unidl_stops(values, **kwargs):
    stopped = []
    model = types.SimpleNamespace(state_dict=lambda: {}, load_state_dict=lambda state: None)
    callback = ud.callbacks.EarlyStopping(monitor="m", **kwargs)
    callback.trainer = types.SimpleNamespace(model=model, stop=lambda: stopped.append(True))
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"m": value})
        if stopped:
            return epoch, callback.best_epoch
    return None, callback.best_epoch


@pytest.mark.parametrize("kwargs", [
    dict(mode="min", patience=0), dict(mode="min", patience=1), dict(mode="min", patience=3),
    dict(mode="max", patience=2, min_delta=0.05), dict(mode="min", patience=2, baseline=-0.2),
    dict(mode="min", patience=1, start_from_epoch=4), dict(mode="min", patience=2, restore_best_weights=True),
])
def test_stops_where_keras_stops(kwargs):
    """The epoch the run stops at and the best epoch are Keras 3's for random walks (a run waited one epoch more
    than Keras for any patience of 1 or more; ``baseline`` and ``start_from_epoch`` were missing). Pure Python:
    the same on every backend."""
    rng = np.random.default_rng(7)
    stops = 0
    for _ in range(40):
        values = list(rng.standard_normal(30).cumsum() * 0.1)
        expected = keras_stops(values, **kwargs)
        assert unidl_stops(values, **kwargs) == expected, (values, kwargs)
        stops += expected[0] is not None
    assert stops > 5  # (the walks do stop the run)


def test_one_object_serves_two_fits_as_keras(problem):
    """A second ``fit`` with the same ``EarlyStopping`` starts afresh (it compared with the first run's best and
    stopped a run that was still improving), as Keras's ``on_train_begin`` resets it."""
    stopping = ud.callbacks.EarlyStopping(monitor="loss", patience=1)
    train(problem, 3, [stopping], lr=0.5)
    first_best = stopping.best
    _, _, history = train(problem, 4, [stopping], lr=1e-4)  # (a slow run: improving every epoch, all above the best)
    assert min(history["loss"]) > first_best
    assert len(history["loss"]) == 4 and stopping.stopped_epoch is None and stopping.best == history["loss"][-1]


def test_bad_arguments():
    for kwargs, message in [(dict(patience=-1), "patience must be a non-negative integer"),
                            (dict(patience=1.5), "patience must be a non-negative integer"),
                            (dict(start_from_epoch=-2), "start_from_epoch must be a non-negative integer"),
                            (dict(baseline="low"), "baseline must be a number or None, got 'low'")]:
        with pytest.raises(ValueError, match=message):
            ud.callbacks.EarlyStopping(monitor="loss", **kwargs)


def test_an_improvement_of_exactly_min_delta_is_none_as_keras():
    """0.8 then 0.7 with ``min_delta=0.1``: Keras compares 0.7 + 0.1 with 0.8 in float32, equal, so it is no
    improvement and a patience of 1 stops there (unidl's float64 ``0.7 < 0.8 - 0.1`` counted one and went on);
    a change below float32's resolution is none either."""
    for values, kwargs in (([0.8, 0.7, 0.6], dict(min_delta=0.1)), ([0.8, 0.8 - 1e-9, 0.5], {})):
        assert unidl_stops(values, mode="min", patience=1, **kwargs) == (1, 0)  # plain Keras's, on every host
        if keras_compares_in_float32():
            assert keras_stops(values, mode="min", patience=1, **kwargs) == (1, 0)


def test_a_run_it_ended_stays_ended_when_resumed(backend, problem, tmp_path):
    """A run that EarlyStopping had ended, resumed from its last checkpoint (a restarted job), ends at once with
    the uninterrupted run's weights and History: it trained another epoch, from the last epoch's weights."""
    (x, y), _, build = problem
    runs = []
    for resume in (False, True):
        model, optimizer, loss = build()
        stopping = ud.callbacks.EarlyStopping("loss", patience=0, min_delta=10.0, restore_best_weights=True)
        history = ud.fit(model, x, y, batch_size=20, epochs=6, loss=loss, optimizer=optimizer, verbose=0,
                         callbacks=[ud.callbacks.Checkpoint(tmp_path), stopping],
                         resume_from=tmp_path if resume else None)
        runs.append((model.state_dict(), history.history["loss"], optimizer.state_dict()["step"],
                     stopping.stopped_epoch))
    (weights, losses, steps, stopped), (resumed_weights, resumed_losses, resumed_steps, resumed_stopped) = runs
    assert stopped == resumed_stopped == 1 and steps == resumed_steps == 6
    assert resumed_losses == losses
    for key, value in weights.items():
        np.testing.assert_array_equal(resumed_weights[key], value)


def test_bad_callback_and_fit_options_are_clear_errors_and_numpy_numbers_are_taken(backend, problem):
    """Options that were raw Python errors (comparisons of strings), accepted silently (NaN, a string for a flag,
    fit's shuffle='batch'), or refused in NumPy form (np.int64 epochs and patience, an np.float32 split)."""
    (x, y), _, build = problem
    for make, error, match in (
            (lambda: ud.callbacks.ReduceLROnPlateau(factor="0.5"), ValueError, "factor must be a number in"),
            (lambda: ud.callbacks.ReduceLROnPlateau(min_lr="a"), ValueError, "min_lr must be a number"),
            (lambda: ud.callbacks.ReduceLROnPlateau(min_delta=None), ValueError, "min_delta must be a number"),
            (lambda: ud.callbacks.ReduceLROnPlateau(min_lr=float("nan")), ValueError, "min_lr must be a number"),
            (lambda: ud.callbacks.EarlyStopping(monitor=3), TypeError, "monitor must be the name of a logged value"),
            (lambda: ud.callbacks.EarlyStopping(min_delta=float("nan")), ValueError, "min_delta must be a number"),
            (lambda: ud.callbacks.EarlyStopping(restore_best_weights="no"), ValueError,
             "restore_best_weights must be True or False")):
        with pytest.raises(error, match=match):
            make()
    ud.callbacks.ReduceLROnPlateau(patience=np.int64(2), cooldown=np.int64(1), factor=np.float32(0.5))
    model, optimizer, loss = build()
    for shuffle in ("batch", None):
        with pytest.raises(ValueError, match="fit shuffle must be True or False"):
            ud.fit(model, x, y, batch_size=20, loss=loss, optimizer=optimizer, shuffle=shuffle, verbose=0)
    history = ud.fit(model, x, y, batch_size=20, epochs=np.int64(2), loss=loss, optimizer=optimizer, verbose=0,
                     validation_split=np.float32(0.25))
    assert len(history.history["val_loss"]) == 2
