"""``ud.plot_history``: a run's loss and metric curves as one PNG (matplotlib, the optional ``viz`` extra).

Reads what ``fit`` returns (``History``) or what ``CSVLogger`` writes, so a run from any backend plots the same.
"""

from __future__ import annotations

import csv
import math
import os


def _import_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise ImportError("ud.plot_history needs matplotlib, which is not installed: "
                          "pip install 'unidl[viz]' (or pip install matplotlib)") from error
    return Figure, FigureCanvasAgg, MaxNLocator


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # CSVLogger's 'NA'


def read_history(history_or_csv) -> tuple[list, dict]:
    """(epoch numbers from 1, {log name: values}) from a ``History``, its ``state_dict()`` or ``.history`` dict,
    or a CSV file written by ``CSVLogger`` (any separator among ',', ';' and tab). An epoch a log was not written at
    (a CSV's 'NA'; a History's ``logged_epochs``, under ``validation_freq``) is NaN there, so each value keeps its
    epoch."""
    if isinstance(history_or_csv, (str, os.PathLike)):
        with open(history_or_csv, newline="") as handle:
            text = handle.read()
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t") if text.strip() else csv.excel
        rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
        if not rows or "epoch" not in rows[0]:
            raise ValueError(f"{os.fspath(history_or_csv)!r} is not a CSVLogger file: it needs a header with "
                             f"'epoch' and at least one row")
        epochs = [int(float(row["epoch"])) + 1 for row in rows]
        logs = {key: [_number(row[key]) for row in rows] for key in rows[0] if key != "epoch"}
        return epochs, logs
    if isinstance(history_or_csv, dict) and set(history_or_csv) == {"history", "epoch", "logged_epochs"}:
        from unidl.fit import History  # (History.state_dict(), read back from JSON: each value at its epoch)

        history_or_csv = History.from_state_dict(history_or_csv)
    logs = getattr(history_or_csv, "history", history_or_csv)
    if not isinstance(logs, dict):
        raise TypeError(f"plot_history needs a History, a dict of per-epoch lists or a CSV path; "
                        f"got {type(history_or_csv).__name__}")
    length = max((len(v) for v in logs.values()), default=0)
    aligned = {key: [_number(v) for v in values] for key, values in logs.items()}
    epochs = list(getattr(history_or_csv, "epoch", []))
    if len(epochs) == length:  # a key logged at some epochs only (val_* under validation_freq): NaN at the others
        position = {epoch: index for index, epoch in enumerate(epochs)}
        for key, logged in getattr(history_or_csv, "logged_epochs", {}).items():
            if key in aligned and len(aligned[key]) < length and len(logged) == len(aligned[key]):
                row = [math.nan] * length
                for epoch, value in zip(logged, aligned[key]):
                    row[position[epoch]] = value
                aligned[key] = row
    return list(range(1, length + 1)), aligned


def plot_history(history_or_csv, path, title: str | None = None) -> str:
    """Write the curves of a run to the PNG file ``path`` and return ``path``.

    One panel per quantity, training and validation together ('loss' with 'val_loss', 'accuracy' with
    'val_accuracy', ...), and the learning rate ('lr') in a panel of its own on a log scale.

    Args:
        history_or_csv: the ``History`` returned by ``ud.fit`` (or its ``state_dict()``, which keeps the epochs
            of a log written at some epochs only, or its ``.history`` dict), or the path of a ``CSVLogger`` file.
        path: the PNG to write (its directory is created).
        title: a title over the panels.
    """
    Figure, FigureCanvasAgg, MaxNLocator = _import_matplotlib()
    epochs, logs = read_history(history_or_csv)
    names = sorted({key.removeprefix("val_") for key in logs}, key=lambda k: (k != "loss", k == "lr", k))
    if not names or not epochs:
        raise ValueError("plot_history got no epochs to plot")
    figure = Figure(figsize=(4.5 * len(names), 3.6), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in logs:  # the epochs it was logged at, joined by one line (NaN would break it into dots)
                points = [(epoch, value) for epoch, value in zip(epochs, logs[key]) if not math.isnan(value)]
                axes.plot([epoch for epoch, _ in points], [value for _, value in points],
                          marker="o" if len(points) < 30 else None, label=label)
        if name == "lr":
            if all(v > 0 for v in logs.get("lr", []) if not math.isnan(v)):
                axes.set_yscale("log")
            axes.set_title("learning rate")
        else:
            axes.set_title(name)
            axes.legend()
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(title)
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    canvas.print_png(path)
    return path


def plot_curves(curves: dict, path, title: str | None = None, xlabel: str = "step", ylabel: str = "loss") -> str:
    """Write several curves on one set of axes to the PNG file ``path`` and return ``path``: ``curves`` maps a
    label to its values (one per step), as ``unidl compare --plot`` draws each backend's loss, the picture of
    parity (identical runs lie on one line). A log scale is used when every value is positive."""
    Figure, FigureCanvasAgg, _ = _import_matplotlib()
    if not curves or not any(len(values) for values in curves.values()):
        raise ValueError("plot_curves got no values to plot")
    figure = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    styles = ("-", "--", ":", "-.")
    for index, (label, values) in enumerate(curves.items()):
        values = [_number(v) for v in values]
        axes.plot(range(len(values)), values, linestyle=styles[index % len(styles)], linewidth=1.5, label=label)
    if all(v > 0 for values in curves.values() for v in map(_number, values) if not math.isnan(v)):
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.print_png(path)
    return path
