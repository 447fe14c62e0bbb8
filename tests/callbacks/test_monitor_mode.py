"""``mode="auto"`` of the callbacks that monitor a log (``EarlyStopping``, ``ModelCheckpoint``,
``ReduceLROnPlateau``), as Keras 3's: the loss is minimized, a metric goes by its direction, any other name is an
error asking for the mode (not a guess by the letters 'acc')."""

import pytest

import unidl as ud

BUILDERS = {
    "EarlyStopping": lambda monitor: ud.callbacks.EarlyStopping(monitor=monitor),
    "ModelCheckpoint": lambda monitor: ud.callbacks.ModelCheckpoint("best.safetensors", monitor=monitor),
    "ReduceLROnPlateau": lambda monitor: ud.callbacks.ReduceLROnPlateau(monitor=monitor),
}
DIRECTIONS = {"loss": "min", "val_loss": "min", "val_accuracy": "max", "acc": "max", "top5": "max", "val_f1": "max",
              "val_auc": "max", "precision_macro": "max", "val_weighted_recall": "max", "mae": "min", "val_mse": "min"}


@pytest.mark.parametrize("callback", BUILDERS)
def test_auto_mode_follows_the_metrics_direction_as_keras(callback):
    """F1, AUC, precision and recall improve upwards (they were minimized: only names holding 'acc' were maximized),
    errors and the loss downwards; a name of no known metric is a ``ValueError`` naming it and the fix, as Keras's."""
    for monitor, direction in DIRECTIONS.items():
        assert BUILDERS[callback](monitor).mode == direction, monitor
    with pytest.raises(ValueError, match=rf"{callback} cannot tell whether 'score' improves upwards or downwards .* "
                                         r"pass mode='max' or mode='min'"):
        BUILDERS[callback]("score")
