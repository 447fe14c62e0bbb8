"""``ProgressBar``: the live bar drawn by rich (steps, ETA, steps/s, metrics) and fit's verbose output."""

import io
import re

from rich.console import Console

import unidl as ud
from tests.callbacks.conftest import train


def terminal(width=200):
    """A rich console that is a terminal writing into a string, without colours."""
    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def test_live_bar_shows_steps_eta_speed_and_running_metrics():
    console = terminal()
    bar = ud.callbacks.ProgressBar(epochs=3, console=console, refresh_interval=0)
    assert bar.live
    bar.begin_epoch(0, 10)
    for index in range(4):
        bar.batch(index, {"loss": 0.5 - index / 100, "accuracy": 0.75})
    bar.end_epoch({"loss": 0.4, "accuracy": 0.8, "val_loss": 0.45}, 10)
    frames = console.file.getvalue().split("\r")[1:]
    assert len(frames) == 5 and frames[-1].endswith("\n") and not any(f.endswith("\n") for f in frames[:-1])
    assert re.search(r"^Epoch 1/3 \S+ +4/10 0:00:0\d eta \d\d:\d\d [\d.]+ steps/s loss 0\.4700  accuracy 0\.7500",
                     frames[3])
    assert "10/10" in frames[-1] and "loss 0.4000  accuracy 0.8000  val_loss 0.4500" in frames[-1]


def test_a_redrawn_line_never_wraps_and_the_final_line_keeps_every_metric():
    console = terminal(width=70)
    bar = ud.callbacks.ProgressBar(epochs=1, console=console, refresh_interval=0)
    bar.begin_epoch(0, 2)
    logs = {f"metric{i}": 0.5 for i in range(6)}
    bar.batch(0, logs)
    bar.end_epoch(logs, 2)
    running, final = console.file.getvalue().split("\r")[1:]
    assert len(running) <= 70 and "metric5 0.5000" in final


def test_plain_line_per_epoch_off_a_terminal(backend, problem):
    console = Console(file=io.StringIO(), width=80)
    train(problem, 2, [ud.callbacks.ProgressBar(console=console)])
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2  3 steps  loss ") and "val_accuracy" in lines[1]


def test_the_line_writes_numbers_as_keras_progress_bar():
    """Values of 1e-3 or less keep their digits (a rate of 1e-5 printed as 0.0000), and a NumPy number (a user's
    metric) is shown, as Keras's ``Progbar`` writes them."""
    import numpy as np

    from unidl.callbacks.progress_bar import format_logs

    assert format_logs({"loss": 1.09, "score": np.float32(0.07), "lr": 1e-5, "steps": np.int64(3), "flag": True}) \
        == "loss 1.0900  score 0.0700  lr 1.0000e-05  steps 3.0000"
