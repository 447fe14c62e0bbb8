"""``LambdaCallback``, plain functions as callbacks, and ``TerminateOnNaN``."""

import numpy as np
import pytest

import unidl as ud
from tests.callbacks.conftest import train


def test_lambda_callback_calls_each_hook(backend, problem):
    calls = []
    callback = ud.callbacks.LambdaCallback(
        on_train_begin=lambda logs: calls.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: calls.append(f"epoch_begin {epoch}"),
        on_batch_end=lambda batch, logs: calls.append(f"batch_end {batch} {sorted(logs)}"),
        on_epoch_end=lambda epoch, logs: calls.append(f"epoch_end {epoch} {sorted(logs)}"),
        on_train_end=lambda logs: calls.append("train_end"))
    train(problem, 2, [callback], validation_data=None)
    batches = [f"batch_end {b} ['accuracy', 'loss']" for b in range(3)]
    assert calls == ["train_begin",
                     "epoch_begin 0", *batches, "epoch_end 0 ['accuracy', 'loss', 'lr']",
                     "epoch_begin 1", *batches, "epoch_end 1 ['accuracy', 'loss', 'lr']", "train_end"]
    with pytest.raises(TypeError, match="on_epoch_end must be a function"):
        ud.callbacks.LambdaCallback(on_epoch_end=3)


def test_a_plain_function_is_called_at_every_epoch_end(backend, problem):
    seen = []

    def log(epoch, logs):
        seen.append((epoch, dict(logs)))

    _, _, history = train(problem, 3, [log, ud.callbacks.EarlyStopping(monitor="loss", patience=5)])
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert [logs["val_loss"] for _, logs in seen] == history["val_loss"]
    with pytest.raises(TypeError, match="callbacks must be ud.callbacks.Callback objects or functions"):
        train(problem, 1, ["log"])


def test_one_callback_alone_and_a_callback_class(backend, problem):
    """Keras's ``fit(callbacks=EarlyStopping(...))``, one callback not in a list, is a list of one (it was a
    ``TypeError``: not iterable); a class where an object belongs is a ``TypeError`` naming it (it was taken as a
    callback and failed on its hooks)."""
    stopping = ud.callbacks.EarlyStopping(monitor="loss", min_delta=1e9)
    _, _, history = train(problem, 4, stopping)
    assert len(history["loss"]) == 2 and stopping.stopped_epoch == 1
    seen = []
    train(problem, 2, lambda epoch, logs: seen.append(epoch))
    assert seen == [0, 1]
    for given in (ud.callbacks.EarlyStopping, [ud.callbacks.EarlyStopping]):
        with pytest.raises(TypeError, match=r"callbacks hold the class EarlyStopping, not a callback: pass an object "
                                            r"of it, EarlyStopping\(...\)"):
            train(problem, 1, given)


def test_a_key_a_callback_adds_to_the_logs_reaches_history(backend, problem, tmp_path):
    """History records an epoch's logs after the other callbacks, as Keras's History runs last (a key one of them
    added was dropped), before a ``Checkpoint`` (whose checkpoint holds the epoch), and also for the epoch in which
    a callback stops training."""
    def add(epoch, logs):
        logs["my_metric"] = 1.0 + epoch

    stopping = ud.callbacks.EarlyStopping(monitor="my_metric", mode="min", patience=0)
    checkpoint = ud.callbacks.Checkpoint(tmp_path)
    _, _, history = train(problem, 4, [checkpoint, add, stopping], validation_data=None)
    assert history["my_metric"] == [1.0, 2.0] and history.epochs == 2 and stopping.stopped_epoch == 1
    # Keras's History attributes: the epochs logged, fit's settings, the model (missing before)
    assert history.epoch == [0, 1] and history.params == {"verbose": 0, "epochs": 4, "steps": 3}
    assert history.model is checkpoint.trainer.model
    saved = ud.checkpoint.load_checkpoint(tmp_path, *problem[2]()[:2])["extra"]["history"]
    assert saved["my_metric"] == [1.0, 2.0]


def test_keras_hooks_are_called_with_keras_logs(backend, problem):
    """A callback of Keras's hooks gets every call: ``on_train_batch_begin``/``_end`` around each training batch,
    ``on_test_*`` around validation, ``{}`` at a begin hook and the last epoch's logs at ``on_train_end`` (Keras's
    names got no call, and ``def on_train_begin(self, logs)`` a ``TypeError``: fit passed no logs); a predict hook,
    which fit never calls, is a ``TypeError`` before training."""
    calls = []

    class KerasStyle(ud.callbacks.Callback):
        def on_train_begin(self, logs):
            calls.append(("train_begin", logs))

        def on_epoch_begin(self, epoch, logs):
            calls.append(("epoch_begin", logs))

        def on_train_batch_begin(self, batch, logs=None):
            calls.append(("train_batch_begin", batch, logs))

        def on_train_batch_end(self, batch, logs=None):
            calls.append(("train_batch_end", batch, sorted(logs)))

        def on_test_begin(self, logs=None):
            calls.append(("test_begin", logs))

        def on_test_batch_end(self, batch, logs=None):
            calls.append(("test_batch_end", batch, sorted(logs)))

        def on_test_end(self, logs=None):
            calls.append(("test_end", sorted(logs)))

        def on_train_end(self, logs):
            calls.append(("train_end", sorted(logs)))

    train(problem, 1, [KerasStyle()])
    batches = [call for index in range(3) for call in (("train_batch_begin", index, {}),
                                                        ("train_batch_end", index, ["accuracy", "loss"]))]
    assert calls == [("train_begin", {}), ("epoch_begin", {}), *batches, ("test_begin", {}),
                     ("test_batch_end", 0, ["accuracy", "loss"]), ("test_end", ["accuracy", "loss"]),
                     ("train_end", ["accuracy", "loss", "lr", "val_accuracy", "val_loss"])]
    begun = []
    train(problem, 1, [ud.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: begun.append(batch))])
    assert begun == [0, 1, 2]

    class Predicting(ud.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            pass

    with pytest.raises(TypeError, match="callback Predicting defines on_predict_batch_end: Keras's hooks of predict, "
                                        "which ud.fit never calls"):
        train(problem, 1, [Predicting()])
    import keras  # a Keras callback object: its base class's predict hooks are no-ops, not the user's (refused once)

    ends = []
    train(problem, 1, [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(epoch))])
    assert ends == [0]


def regression(rng, nan_at):
    """A TwoLayerNet 4-3-1 with SGD and MSELoss, and (x, y) whose target ``nan_at`` is NaN."""
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = rng.standard_normal((60, 1)).astype(np.float32)
    y[nan_at] = np.nan
    model = ud.models.TwoLayerNet(4, 3, 1)
    return model, ud.optim.SGD(model.parameters(), lr=0.01), ud.nn.MSELoss(), (x, y)


def test_terminate_on_nan_stops_after_the_batch(backend, rng, capsys):
    model, optimizer, loss, data = regression(rng, nan_at=45)  # third batch of 20
    seen = []
    history = ud.fit(model, data, loss=loss, optimizer=optimizer, epochs=3, batch_size=20, shuffle=False,
                     verbose=0, callbacks=[ud.callbacks.TerminateOnNaN(),
                                           ud.callbacks.LambdaCallback(on_batch_end=lambda b, logs: seen.append(b),
                                                                       on_train_end=lambda logs: seen.append("end"))])
    assert history.epochs == 1 and np.isnan(history["loss"][0])
    assert seen == [0, 1, 2, "end"]  # every callback saw the batch, then the run ended
    assert "Epoch 1, batch 3: loss is nan, terminating training" in capsys.readouterr().out


def test_terminate_on_nan_mid_epoch(backend, rng):
    model, optimizer, loss, data = regression(rng, nan_at=5)  # the first batch: the epoch's others never run
    stop = ud.callbacks.TerminateOnNaN(verbose=False)
    epochs, batches = [], []
    history = ud.fit(model, data, loss=loss, optimizer=optimizer, epochs=2, batch_size=20, shuffle=False, verbose=0,
                     callbacks=[stop, ud.callbacks.LambdaCallback(on_batch_end=lambda b, logs: batches.append(b)),
                                lambda epoch, logs: epochs.append(epoch)])
    assert stop.stopped_at == (0, 0) and batches == [0] and epochs == [0] and history.epochs == 1
