"""``ProgressBar``: a live per-epoch bar (steps done, ETA, steps/s, running metrics) drawn with ``rich``.

``fit(verbose=1)`` shows it (``unidl/progress.py``); it is also a callback of its own. On a terminal the
bar is redrawn in place at most ``refresh_interval`` apart; elsewhere (a log file, CI) it prints one
plain line per epoch, as Keras does with ``verbose=2``.
"""

from __future__ import annotations

import numbers
import sys
import time

import numpy as np

from unidl.callbacks.callback import Callback


def format_logs(logs) -> str:
    """'loss 0.1234  accuracy 0.9000  lr 1.0000e-05': the numbers of ``logs`` in their order (a NumPy number too),
    as Keras's progress bar writes them: 4 decimals, or 4 significant digits and an exponent for a value of 1e-3 or
    less (a small rate printed as 0.0000)."""
    return "  ".join(f"{key} {_number(value)}" for key, value in (logs or {}).items()
                     if isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, bool))


def _number(value) -> str:
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


class ProgressBar(Callback):
    """Show training progress: for every epoch 'Epoch 2/10', a bar, 'steps done/steps', the time elapsed and
    the estimated time left, steps per second, and the running means of the loss and metrics; at the end
    of the epoch the line stays with the epoch's logs (validation included).

    Args:
        epochs: the number of epochs, for 'Epoch e/epochs' (default: ``fit``'s, when it tells the callback).
        console: a ``rich.console.Console`` to draw on (default: standard output).
        live: ``True`` redraw the bar in place, ``False`` one plain line per epoch, ``None`` (default)
            live exactly when the console is a terminal or a notebook.
        refresh_interval: the least time in seconds between two redraws of a live bar.

    Pass ``verbose=0`` to ``fit`` when giving this callback, or ``fit``'s own bar is shown as well.
    """

    def __init__(self, epochs: int | None = None, console=None, live: bool | None = None,
                 refresh_interval: float = 0.1):
        from rich.console import Console

        self.console = console if console is not None else Console(highlight=False)
        self.live = (self.console.is_terminal or self.console.is_jupyter) if live is None else bool(live)
        self.epochs, self.refresh_interval = epochs, float(refresh_interval)
        self._progress = self._task = None
        self._last_draw, self._drawn_width = 0.0, 0
        self._epoch, self._steps, self._start = 0, None, time.perf_counter()
        self._seen = 0  # batches of the epoch seen as a callback

    # ---- what fit's verbose output calls --------------------------------------

    def begin_epoch(self, epoch: int, steps: int | None) -> None:
        """Start the bar of ``epoch`` (from 0), of ``steps`` batches (``None``: unknown)."""
        self._epoch, self._steps, self._start = epoch, steps, time.perf_counter()
        self._last_draw, self._drawn_width = 0.0, 0
        if self.live:
            self._progress = self._new_progress()
            self._task = self._progress.add_task(self._title(), total=steps, metrics="")

    def batch(self, index: int, logs) -> None:
        """Batch ``index`` (from 0) of the epoch is done; ``logs`` are the running means."""
        if not self.live or self._progress is None:
            return
        self._progress.update(self._task, completed=index + 1, metrics=format_logs(logs))
        now = time.perf_counter()
        if now - self._last_draw >= self.refresh_interval:
            self._last_draw = now
            self._draw()

    def end_epoch(self, logs, steps: int | None) -> None:
        """The epoch is over: leave its line with the epoch's ``logs`` (``steps`` batches were trained)."""
        elapsed = time.perf_counter() - self._start
        if self.live and self._progress is not None:
            self._progress.update(self._task, completed=steps, total=self._steps or steps, metrics=format_logs(logs))
            self._draw(final=True)
            self._progress = self._task = None
            return
        rate = f"  {steps / elapsed:.1f} steps/s" if steps and elapsed > 0 else ""
        self.console.print(f"{self._title()}  {steps} steps  {format_logs(logs)}  {elapsed:.1f}s{rate}",
                           markup=False, highlight=False, soft_wrap=True)

    # ---- as a callback ---------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        trainer = self.trainer
        if self.epochs is None:
            self.epochs = getattr(trainer, "epochs", None)
        from unidl.data import DataLoader

        loader = getattr(trainer, "loader", None)
        try:
            steps = len(loader)
        except TypeError:  # a pipeline of unknown length (a tf.data.Dataset of unknown cardinality)
            steps = None
        if isinstance(loader, DataLoader):  # a resumed epoch starts part-way
            steps -= loader.next_iteration()[1]
        self._seen = 0
        self.begin_epoch(epoch, steps)

    def on_batch_end(self, batch, logs=None):
        self._seen = batch + 1
        self.batch(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.end_epoch(logs, self._seen)

    # ---- drawing ---------------------------------------------------------------

    def _title(self) -> str:
        return f"Epoch {self._epoch + 1}/{self.epochs}" if self.epochs else f"Epoch {self._epoch + 1}"

    def _new_progress(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        class StepsPerSecond(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f} steps/s" if speed else "? steps/s", style="progress.data.speed")

        return Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(compact=True), StepsPerSecond(),
                        TextColumn("{task.fields[metrics]}"),
                        console=self.console, auto_refresh=False, expand=False)

    def _draw(self, final: bool = False) -> None:
        """Rewrite the current line with the bar (rich renders it; a carriage return puts it in place), so a
        run that stops with an error leaves no live display, redirected output or hidden cursor behind."""
        from rich.segment import Segment, Segments

        console = self.console
        table = self._progress.make_tasks_table(self._progress.tasks)
        # laid out as one unwrapped line; a line still redrawn is cut at the console's width (the end of the
        # metrics goes first), since a carriage return cannot go back over a wrapped line
        line = console.render_lines(table, console.options.update(width=10_000, no_wrap=True), pad=False)[0]
        if not final:
            line = list(Segment.split_and_crop_lines(line, console.width, pad=False))[0]
        width = Segment.get_line_length(line)
        with console.capture() as capture:
            console.print(Segments(line), end="", crop=False, soft_wrap=True)
        line = capture.get()
        padding = " " * max(0, self._drawn_width - width)
        self._drawn_width = width
        stream = console.file if console.file is not None else sys.stdout
        stream.write("\r" + line + padding + ("\n" if final else ""))
        stream.flush()
