"""``ModelCheckpoint``: files per epoch or only on improvement, weights-only or ``ud.load``-able, state on resume."""

import os

import numpy as np
import pytest

import unidl as ud
from tests.callbacks.conftest import keras_compares_in_float32, train


class Recorder(ud.callbacks.Callback):
    """The weights at the end of every epoch."""

    def __init__(self):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.trainer.model.state_dict())


def improvements(values, mode="min"):
    best, epochs = (np.inf if mode == "min" else -np.inf), []
    for epoch, value in enumerate(values):
        if (value < best) if mode == "min" else (value > best):
            best = value
            epochs.append(epoch)
    return epochs


def test_best_only_saves_the_improving_epochs(backend, problem, tmp_path):
    recorder = Recorder()
    every = ud.callbacks.ModelCheckpoint(tmp_path / "best-{epoch:02d}-{val_loss:.4f}.safetensors",
                                         save_best_only=True, save_weights_only=True)
    fixed = ud.callbacks.ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_accuracy", save_best_only=True)
    _, _, history = train(problem, 6, [recorder, every, fixed], lr=2.0)
    expected = improvements(history["val_loss"])
    names = sorted(name for name in os.listdir(tmp_path) if name.startswith("best-"))
    assert names == [f"best-{e + 1:02d}-{history['val_loss'][e]:.4f}.safetensors" for e in expected]
    assert every.best == min(history["val_loss"]) and every.state_dict() == {"best": every.best}
    model, _, _ = problem[2]()
    model.load_weights(tmp_path / names[-1])
    for key, value in recorder.weights[expected[-1]].items():
        np.testing.assert_array_equal(model.state_dict()[key], value)
    best_accuracy = improvements(history["val_accuracy"], "max")[-1]  # 'acc' in the name: mode max
    loaded = ud.load(tmp_path / "best.safetensors")  # a whole-model file rebuilds the model
    assert type(loaded).__name__ == "TwoLayerNet"
    for key, value in recorder.weights[best_accuracy].items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)


def test_every_epoch_without_best_only(backend, problem, tmp_path):
    callback = ud.callbacks.ModelCheckpoint(tmp_path / "run" / "epoch{epoch}.safetensors", save_weights_only=True)
    train(problem, 3, [callback], validation_data=None)  # no monitor needed
    assert sorted(os.listdir(tmp_path / "run")) == ["epoch1.safetensors", "epoch2.safetensors", "epoch3.safetensors"]
    assert callback.last_saved == os.path.join(tmp_path, "run", "epoch3.safetensors")


def test_errors_name_the_logs(backend, problem, tmp_path):
    with pytest.raises(KeyError, match="monitors 'val_loss', but fit reports only"):
        train(problem, 1, [ud.callbacks.ModelCheckpoint(tmp_path / "m", save_best_only=True)], validation_data=None)
    with pytest.raises(KeyError, match="names 'val_f1', which is not among the epoch's logs"):
        train(problem, 1, [ud.callbacks.ModelCheckpoint(tmp_path / "m{val_f1}")])
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        ud.callbacks.ModelCheckpoint(tmp_path / "m", mode="lowest")


def test_best_value_survives_a_resume(backend, problem, tmp_path):
    first = ud.callbacks.ModelCheckpoint(tmp_path / "best.safetensors", save_best_only=True)
    train(problem, 3, [ud.callbacks.Checkpoint(tmp_path / "ckpt"), first])
    resumed = ud.callbacks.ModelCheckpoint(tmp_path / "best.safetensors", save_best_only=True)
    train(problem, 3, [ud.callbacks.Checkpoint(tmp_path / "ckpt"), resumed], resume_from=tmp_path / "ckpt")
    assert resumed.best == first.best
    with pytest.raises(ud.errors.CheckpointStateError, match="ModelCheckpoint state must be"):
        resumed.load_state_dict({"best": "low"})


def test_improvements_are_keras_float32_comparisons(backend, tmp_path):
    """``save_best_only`` saves where Keras's ``ModelCheckpoint`` does: a value below the best by less than
    float32's resolution (0.8 then 0.8 - 1e-9) is no improvement there (unidl's float64 comparison saved it)."""
    import types

    keras = pytest.importorskip("keras")
    values = [0.8, 0.8 - 1e-9, 0.7, 0.9]
    saved = []
    reference = keras.callbacks.ModelCheckpoint(str(tmp_path / "k-{epoch}.weights.h5"), monitor="m", mode="min",
                                                save_best_only=True, save_weights_only=True)
    reference.set_model(types.SimpleNamespace(save_weights=lambda path, overwrite=True: saved.append(path)))
    callback = ud.callbacks.ModelCheckpoint(tmp_path / "u-{epoch}.safetensors", monitor="m", mode="min",
                                            save_best_only=True, save_weights_only=True)
    callback.trainer = types.SimpleNamespace(model=ud.nn.Linear(1, 1))
    for epoch, value in enumerate(values):
        reference.on_epoch_end(epoch, {"m": value})
        callback.on_epoch_end(epoch, {"m": value})
    assert sorted(os.listdir(tmp_path)) == ["u-1.safetensors", "u-3.safetensors"]  # plain Keras's, on every host
    if keras_compares_in_float32():
        assert [os.path.basename(path) for path in saved] == ["k-1.weights.h5", "k-3.weights.h5"]
