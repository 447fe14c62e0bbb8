"""The callbacks named as Keras's take Keras's arguments in Keras's order (a positional call means what it means in
Keras), honour Keras's ``verbose``, and refuse by name a Keras option unidl does not implement."""

import inspect

import numpy as np
import pytest

import unidl as ud
from tests.callbacks.conftest import train

NAMES = ["EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint", "CSVLogger", "LearningRateScheduler",
         "TerminateOnNaN", "TensorBoard", "LambdaCallback"]
#: Keras defaults unidl deliberately does not share (documented on the class)
OWN_DEFAULTS = {("TensorBoard", "write_graph")}


def positional(function) -> list:
    return [p for p in inspect.signature(function).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]


@pytest.mark.parametrize("name", NAMES)
def test_positional_order_and_defaults_are_keras(name):
    """Every argument of Keras's callback is a positional argument of unidl's at the same place with the same
    default: ``EarlyStopping("val_loss", 0, 5)`` read 0 as patience and 5 as min_delta (Keras: min_delta 0,
    patience 5), ``ReduceLROnPlateau``'s fourth was mode, ``ModelCheckpoint``'s third mode."""
    keras = pytest.importorskip("keras")
    theirs, ours = positional(getattr(keras.callbacks, name).__init__), positional(getattr(ud.callbacks, name).__init__)
    assert [p.name for p in ours[:len(theirs)]] == [p.name for p in theirs]
    for mine, keras_parameter in zip(ours, theirs):
        if (name, mine.name) not in OWN_DEFAULTS:
            assert mine.default == keras_parameter.default, (name, mine.name)
    stopping = ud.callbacks.EarlyStopping("val_loss", 0, 5)
    assert (stopping.min_delta, stopping.patience) == (0, 5)


@pytest.mark.parametrize("build, message", [
    (lambda: ud.callbacks.ModelCheckpoint("m", save_freq=10), "ModelCheckpoint save_freq=10 is Keras's, which unidl "
                                                              "does not implement .*Checkpoint\\(every_steps=N\\)"),
    (lambda: ud.callbacks.TensorBoard("logs", write_images=True), "TensorBoard write_images=True is Keras's"),
    (lambda: ud.callbacks.TensorBoard("logs", profile_batch=(2, 4)), r"TensorBoard profile_batch=\(2, 4\) is Keras's"),
    (lambda: ud.callbacks.LambdaCallback(on_train_batch_begin=print, on_batch_begin=print), "name the same hook"),
    (lambda: ud.callbacks.LambdaCallback(on_train_batch_end=print, on_batch_end=print), "name the same hook"),
    (lambda: ud.callbacks.EarlyStopping(verbose="loud"), "EarlyStopping verbose must be 0 .* got 'loud'"),
    (lambda: ud.callbacks.ReduceLROnPlateau(verbose=-1), "ReduceLROnPlateau verbose must be 0"),
    (lambda: ud.callbacks.ModelCheckpoint("m", initial_value_threshold="low"), "initial_value_threshold must be"),
    (lambda: ud.callbacks.TerminateOnNaN("yes"), "raise_error must be True or False"),
])
def test_keras_options_unidl_cannot_honour_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_keras_keywords_are_honoured(backend, problem, tmp_path, capsys):
    """``verbose=1`` prints Keras's lines; ``initial_value_threshold`` is the value to beat; the batch hook is
    called under Keras's name ``on_train_batch_end``; ``TerminateOnNaN(raise_error=True)`` raises."""
    batches = []
    callbacks = [ud.callbacks.EarlyStopping("loss", 1e9, 0, 1, restore_best_weights=True),
                 ud.callbacks.LearningRateScheduler(lambda epoch, lr: lr / 2, 1),
                 ud.callbacks.ModelCheckpoint(tmp_path / "m{epoch}.safetensors", "val_loss", 1, True, True,
                                              initial_value_threshold=0.0),
                 ud.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append(batch))]
    _, _, history = train(problem, 3, callbacks)
    printed = capsys.readouterr().out
    assert len(history["loss"]) == 2 and batches == [0, 1, 2] * 2
    assert "Epoch 1: LearningRateScheduler setting learning rate to 0.25." in printed
    assert "Epoch 2: early stopping" in printed and "the end of the best epoch: 1." in printed
    assert not list(tmp_path.iterdir())  # no val_loss beats 0
    x = np.ones((4, 2), np.float32)
    y = np.full((4, 1), np.nan, np.float32)
    with pytest.raises(ud.errors.NonFiniteLossError, match="training loss became nan at epoch 1, step 1"):
        ud.fit(ud.nn.Linear(2, 1), x, y, 2, 2, 0, loss="mse", optimizer="sgd",
               callbacks=[ud.callbacks.TerminateOnNaN(raise_error=True)])
