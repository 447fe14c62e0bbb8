"""``unidl plot``, ``unidl train --logdir`` and ``unidl compare --plot``: CSV, TensorBoard events and PNG files."""

import csv
import json
import os

import pytest

from unidl import cli, config

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path, min_bytes=10_000):
    data = open(path, "rb").read()
    return data.startswith(PNG_SIGNATURE) and len(data) >= min_bytes


@pytest.fixture(autouse=True)
def keep_default_backend(monkeypatch):
    monkeypatch.setattr(config, "_default_backend", config._default_backend)
    monkeypatch.setattr(config, "_default_device", config._default_device)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))  # the command sets it


def test_train_logdir_writes_csv_events_and_plot(tmp_path, capsys):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "two_layer", "--dataset", "synthetic", "--backend", "torch", "--epochs", "1",
                     "--verbose", "0", "--logdir", str(run)]) == 0
    assert f"run logged in {run}" in capsys.readouterr().out
    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0"] and "val_accuracy" in rows[0]
    assert is_png(run / "history.png")
    events = event_accumulator.EventAccumulator(str(run / "validation")).Reload()
    assert [round(e.value, 5) for e in events.Scalars("epoch_accuracy")] == \
        [round(float(row["val_accuracy"]), 5) for row in rows]


def test_plot_a_csv_a_run_directory_and_a_json_history(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "history.csv").write_text("epoch,loss,val_loss\n0,1.5,1.6\n1,1.0,1.2\n2,0.7,0.9\n")
    assert cli.main(["plot", str(tmp_path / "run")]) == 0
    assert is_png(tmp_path / "run" / "history.png")
    assert cli.main(["plot", str(tmp_path / "run" / "history.csv"), "-o", str(tmp_path / "out" / "a.png")]) == 0
    assert is_png(tmp_path / "out" / "a.png")
    (tmp_path / "history.json").write_text(json.dumps({"loss": [1.0, 0.5, 0.25], "accuracy": [0.5, 0.75, 0.9]}))
    assert cli.main(["plot", str(tmp_path / "history.json")]) == 0
    assert is_png(tmp_path / "history.png")
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "history.png")


@pytest.mark.parametrize("content, message", [
    (None, "does not exist: pass a CSVLogger file"),
    ("a,b\n1,2\n", "is not a CSVLogger file"),
])
def test_plot_errors_are_one_line_with_status_2(tmp_path, capsys, content, message):
    path = tmp_path / "run.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("unidl plot: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_compare_plot_draws_every_backend(tmp_path, capsys):
    assert cli.main(["compare", "--steps", "3", "--plot", str(tmp_path / "parity.png")]) == 0
    assert "loss curves: " in capsys.readouterr().out
    assert is_png(tmp_path / "parity.png", min_bytes=15_000)
