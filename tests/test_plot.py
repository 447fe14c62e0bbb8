"""``ud.plot_history``: PNG files of non-trivial size from a History and from a CSVLogger file, on every backend."""

import sys

import numpy as np
import pytest

import unidl as ud
from unidl.plot import read_history

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path, min_bytes=10_000):
    data = open(path, "rb").read()
    return data.startswith(PNG_SIGNATURE) and len(data) >= min_bytes


def test_history_and_csv_give_png_files(backend, rng, tmp_path):
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = ud.models.TwoLayerNet(4, 8, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.5)
    history = ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=4, batch_size=20,
                     validation_data=(x[:20], y[:20]), verbose=0,
                     callbacks=[ud.callbacks.CSVLogger(tmp_path / "run.csv"),
                                ud.callbacks.LearningRateScheduler(ud.optim.lr_scheduler.StepLR(optimizer, 1, 0.5))])
    assert ud.plot_history(history, tmp_path / "plots" / "history.png", title=backend).endswith("history.png")
    assert is_png(tmp_path / "plots" / "history.png")
    ud.plot_history(str(tmp_path / "run.csv"), tmp_path / "csv.png")
    assert is_png(tmp_path / "csv.png")
    epochs, logs = read_history(tmp_path / "run.csv")
    assert epochs == [1, 2, 3, 4] and logs.keys() == history.history.keys()
    np.testing.assert_allclose(logs["val_loss"], history["val_loss"], rtol=1e-15)


def test_na_cells_and_bad_input(tmp_path):
    (tmp_path / "na.csv").write_text("epoch;loss;val_loss\r\n0;1.5;NA\r\n1;1.25;1.0\r\n")
    epochs, logs = read_history(tmp_path / "na.csv")
    assert epochs == [1, 2] and logs["loss"] == [1.5, 1.25] and np.isnan(logs["val_loss"][0])
    ud.plot_history(tmp_path / "na.csv", tmp_path / "na.png")
    assert is_png(tmp_path / "na.png", min_bytes=5_000)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="is not a CSVLogger file"):
        ud.plot_history(tmp_path / "other.csv", tmp_path / "x.png")
    with pytest.raises(TypeError, match="needs a History"):
        ud.plot_history([1.0, 0.5], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no epochs"):
        ud.plot_history({}, tmp_path / "x.png")


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'unidl\[viz\]'"):
        ud.plot_history({"loss": [1.0]}, tmp_path / "x.png")


def test_validation_every_other_epoch_is_drawn_at_its_epochs(backend, rng, tmp_path):
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.standard_normal((20, 1)).astype(np.float32)
    model = ud.nn.Linear(4, 1)
    history = ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
                     epochs=4, batch_size=10, validation_data=(x, y), validation_freq=2, verbose=0,
                     callbacks=[ud.callbacks.CSVLogger(tmp_path / "run.csv")])
    assert len(history["val_loss"]) == 2 and history.logged_epochs["val_loss"] == [1, 3]  # as Keras's History
    epochs, logs = read_history(history)
    assert epochs == [1, 2, 3, 4]  # (val_loss was drawn at epochs 1 and 2)
    np.testing.assert_equal(logs["val_loss"], [np.nan, history["val_loss"][0], np.nan, history["val_loss"][1]])
    np.testing.assert_equal(logs["val_loss"], read_history(tmp_path / "run.csv")[1]["val_loss"])
