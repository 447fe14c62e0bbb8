"""``mode="auto"`` of the callbacks that monitor a log (``EarlyStopping``, ``ModelCheckpoint``,
``ReduceLROnPlateau``), as Keras 3's: the loss is minimized, a metric goes by its direction, any other name is an
error asking for the mode (not a guess by the letters 'acc')."""

import os
import tempfile

import numpy as np
import pytest

import unidl as ud

BUILDERS = {
    "EarlyStopping": lambda monitor: ud.callbacks.EarlyStopping(monitor=monitor),
    "ModelCheckpoint": lambda monitor: ud.callbacks.ModelCheckpoint(os.path.join(tempfile.mkdtemp(), "best.weights"),
                                                                    monitor=monitor, save_weights_only=True),
    "ReduceLROnPlateau": lambda monitor: ud.callbacks.ReduceLROnPlateau(monitor=monitor),
}
DIRECTIONS = {"loss": "min", "val_loss": "min", "val_accuracy": "max", "acc": "max", "top5": "max", "val_f1": "max",
              "val_auc": "max", "precision_macro": "max", "val_weighted_recall": "max", "mae": "min", "val_mse": "min"}


@pytest.mark.parametrize("callback", BUILDERS)
def test_auto_mode_follows_the_metrics_direction_as_keras(callback, rng):
    """F1, AUC, precision and recall improve upwards (they were minimized: only names holding 'acc' were maximized),
    errors and the loss downwards. A name ud.metrics does not know is settled at the first comparison by the run's
    metric of that name (a renamed accuracy improves upwards), and is a ``ValueError`` naming it and the fix where
    the run has none, as Keras 3's."""
    for monitor, direction in DIRECTIONS.items():
        assert BUILDERS[callback](monitor).mode == direction, monitor
    x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.integers(0, 2, 8)
    model = ud.nn.Linear(3, 2)
    for monitor, expected in (("my_acc", "max"), ("score", None)):
        built = BUILDERS[callback](monitor)
        if callback == "ModelCheckpoint":
            built.save_best_only = True  # (else it compares nothing)
        run = lambda: ud.fit(model, x, y, 4, 1, 0, loss="cross_entropy", optimizer="sgd", callbacks=[scored, built],
                             metrics=[ud.metrics.Accuracy(name="my_acc")])
        scored = ud.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(score=1.0))
        if expected is None:
            with pytest.raises(ValueError, match=rf"{callback} cannot tell whether 'score' improves upwards or "
                                                 r"downwards .* pass mode='max' or mode='min'"):
                run()
        else:
            run()
            assert built.mode == expected and built.best > float("-inf")


@pytest.mark.parametrize("callback", BUILDERS)
def test_epochs_that_validation_freq_skips_are_skipped_as_keras(callback, backend, rng):
    """With ``validation_freq=2`` the odd epochs log no 'val_loss': the callback skips them and watches the
    validated ones, as Keras's (a ``KeyError`` ended the first epoch). A name that can never be logged is still the
    ``KeyError`` naming the logs: no validation data at all, or a name that a validated epoch does not log, raised
    before any epoch trains (it came after the first); a function before the callback may add the name itself."""
    x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.integers(0, 2, 8)
    trained = []

    def run(monitor, before=(), **options):
        built = BUILDERS[callback](monitor)
        built.save_best_only = True  # (ModelCheckpoint's: else it compares nothing)
        history = ud.fit(ud.nn.Linear(3, 2), x, y, 4, 4, 0, loss="cross_entropy", optimizer="sgd",
                         callbacks=[*before, built, lambda epoch, logs: trained.append(epoch)], **options)
        return built, history

    built, history = run("val_loss", validation_data=(x, y), validation_freq=2)
    assert len(history["loss"]) == 4 and len(history["val_loss"]) == 2
    assert built.best == pytest.approx(min(history["val_loss"]))
    with pytest.raises(KeyError, match=rf"{callback} monitors 'val_loss', but fit reports only \['accuracy', 'loss', "
                                       r"'lr'\]; pass validation_data"):
        run("val_loss")
    with pytest.raises(KeyError, match=rf"{callback} monitors 'val_los', but fit reports only .*'val_loss'\]\W*$"):
        run("val_los", validation_data=(x, y), validation_freq=2)
    assert trained == [0, 1, 2, 3]  # (the first run's epochs alone: the others raised before training)

    def add(epoch, logs):
        logs["val_mae"] = 1.0

    assert run("val_mae", [add], validation_data=(x, y))[0].best == 1.0
