"""``fit``'s verbose output: ``ud.callbacks.ProgressBar``, live on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations


class Progress:
    """``verbose=0`` silent; 1 the live bar on a terminal or notebook (a line per epoch otherwise); 2 always a
    line per epoch. ``stream``: a file to write to instead of standard output."""

    def __init__(self, verbose: int, epochs: int, stream=None):
        self.verbose = verbose
        self.bar = None
        if verbose:
            from rich.console import Console

            from unidl.callbacks.progress_bar import ProgressBar

            console = Console(file=stream, highlight=False) if stream is not None else None
            self.bar = ProgressBar(epochs=epochs, console=console, live=None if verbose == 1 else False)

    def begin_epoch(self, epoch: int, steps: int | None):
        if self.bar is not None:
            self.bar.begin_epoch(epoch, steps)

    def batch(self, step: int, logs: dict):
        if self.bar is not None:
            self.bar.batch(step, logs)

    def end_epoch(self, logs: dict, steps: int):
        if self.bar is not None:
            self.bar.end_epoch(logs, steps)
