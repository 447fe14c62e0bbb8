"""``CSVLogger``: Keras's columns and file, append, and a resumed run continuing the file."""

import csv

import numpy as np
import pytest

import unidl as ud
from unidl.checkpoint import list_checkpoints
from tests.callbacks.conftest import train


def read(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_columns_and_values_are_the_history(backend, problem, tmp_path):
    path = tmp_path / "logs" / "run.csv"
    _, _, history = train(problem, 3, [ud.callbacks.CSVLogger(path)])
    rows = read(path)
    keys = sorted(history.history)
    assert rows[0] == ["epoch", *keys] == ["epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2"]
    for epoch, row in enumerate(rows[1:]):
        assert [float(cell) for cell in row[1:]] == [history[key][epoch] for key in keys]  # repr: exact


def test_same_file_as_keras_csv_logger(backend, problem, tmp_path):
    keras = pytest.importorskip("keras")
    recorded = []
    train(problem, 2, [ud.callbacks.CSVLogger(tmp_path / "unidl.csv", separator=";"),
                       lambda epoch, logs: recorded.append((epoch, dict(logs)))])
    reference = keras.callbacks.CSVLogger(str(tmp_path / "keras.csv"), separator=";")
    reference.on_train_begin()
    for epoch, logs in recorded:
        reference.on_epoch_end(epoch, logs)
    reference.on_train_end()
    assert (tmp_path / "unidl.csv").read_bytes() == (tmp_path / "keras.csv").read_bytes()


@pytest.mark.parametrize("validation", ["every second epoch", "none"])
def test_validation_now_and_then_or_never_gives_keras_columns(backend, problem, tmp_path, validation):
    """With ``validation_freq=2`` the first epoch has no 'val_' logs: Keras adds a 'val_' column for each name
    ('NA' where an epoch has none), where the validation values were dropped; without validation, the same
    columns of 'NA'."""
    keras = pytest.importorskip("keras")
    recorded = []
    options = dict(validation_freq=2) if validation != "none" else dict(validation_data=None)
    _, _, history = train(problem, 3, [ud.callbacks.CSVLogger(tmp_path / "unidl.csv"),
                                       lambda epoch, logs: recorded.append((epoch, dict(logs)))], **options)
    reference = keras.callbacks.CSVLogger(str(tmp_path / "keras.csv"))
    reference.on_train_begin()
    for epoch, logs in recorded:
        reference.on_epoch_end(epoch, logs)
    reference.on_train_end()
    assert (tmp_path / "unidl.csv").read_bytes() == (tmp_path / "keras.csv").read_bytes()
    rows = read(tmp_path / "unidl.csv")
    column = rows[0].index("val_loss")
    assert [row[column] for row in rows[1:]] == (["NA", repr(history["val_loss"][0]), "NA"]
                                                 if validation != "none" else ["NA"] * 3)


def test_append_continues_without_a_second_header(backend, problem, tmp_path):
    path = tmp_path / "run.csv"
    train(problem, 2, [ud.callbacks.CSVLogger(path)], validation_data=None)
    train(problem, 1, [ud.callbacks.CSVLogger(path, append=True)], validation_data=None)
    rows = read(path)
    assert rows[0] == ["epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss", "val_lr"]  # (Keras's NA columns)
    assert [row[0] for row in rows[1:]] == ["0", "1", "0"] and rows[1][4:] == ["NA"] * 3
    train(problem, 1, [ud.callbacks.CSVLogger(path)], validation_data=None)  # without append: a new file
    assert [row[0] for row in read(path)] == ["epoch", "0"]


def test_a_resumed_run_continues_the_file_after_the_checkpointed_epochs(backend, problem, tmp_path):
    path = tmp_path / "run.csv"
    _, _, straight = train(problem, 3, [ud.callbacks.Checkpoint(tmp_path / "ckpt", keep=3), ud.callbacks.CSVLogger(path)])
    second_epoch = list_checkpoints(tmp_path / "ckpt")[1]  # as if the run had been killed during epoch 3
    logger = ud.callbacks.CSVLogger(path)
    _, _, resumed = train(problem, 3, [ud.callbacks.Checkpoint(tmp_path / "ckpt2"), logger], resume_from=second_epoch)
    rows = read(path)
    assert [row[0] for row in rows] == ["epoch", "0", "1", "2"]  # epoch 2 once, written by the resumed run
    np.testing.assert_allclose([float(row[2]) for row in rows[1:]], straight["loss"], rtol=1e-5)
    assert logger.state_dict() == {"keys": rows[0][1:], "lines": 4}
    with pytest.raises(ud.errors.CheckpointStateError, match="CSVLogger state must be"):
        logger.load_state_dict({"keys": None, "lines": -1})
