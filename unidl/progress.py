"""Per-epoch progress for ``fit``: a live bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """``verbose=0`` silent; 1 bar (terminal) or a line per epoch; 2 always a line per epoch."""

    def __init__(self, verbose: int, epochs: int, stream=None):
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.epochs = epochs
        self.live = verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def begin_epoch(self, epoch: int, steps: int | None):
        self._start = time.perf_counter()
        self._epoch, self._steps = epoch, steps

    @staticmethod
    def _format(logs: dict) -> str:
        return "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, float))

    def batch(self, step: int, logs: dict):
        now = time.perf_counter()
        if not self.live or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        total = self._steps or 0
        done = int(30 * (step + 1) / total) if total else 0
        bar = "=" * done + "." * (30 - done) if total else ""
        self.stream.write(f"\rEpoch {self._epoch + 1}/{self.epochs} [{bar}] {step + 1}/{total or '?'}  "
                          f"{self._format(logs)}  {now - self._start:.1f}s")
        self.stream.flush()

    def end_epoch(self, logs: dict, steps: int):
        if not self.verbose:
            return
        elapsed = time.perf_counter() - self._start
        line = f"Epoch {self._epoch + 1}/{self.epochs}  {steps} steps  {self._format(logs)}  {elapsed:.1f}s"
        self.stream.write(("\r" + line + " " * 10 + "\n") if self.live else line + "\n")
        self.stream.flush()
