"""``EarlyStopping``: stop ``fit`` when a monitored metric stops improving."""

from __future__ import annotations

import math

from unidl.callbacks.callback import Callback


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without an improvement of more than ``min_delta`` in ``monitor``.

    ``mode``: 'min', 'max' or 'auto' (max for names containing 'acc', else min).
    ``restore_best_weights`` loads the weights of the best epoch at the end.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'auto', 'min' or 'max', got {mode!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping patience must be a non-negative integer, got {patience!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.restore_best_weights = restore_best_weights
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self._wait = 0
        self._best_state = None

    def _improved(self, value) -> bool:
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor not in (logs or {}):
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but fit reports only {sorted(logs or {})}; "
                           f"pass validation_data for 'val_*' metrics")
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_state = self.trainer.model.state_dict()
        else:
            self._wait += 1
            if self._wait > self.patience:
                self.stopped_epoch = epoch
                self.trainer.stop()

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self._best_state is not None:
            self.trainer.model.load_state_dict(self._best_state)
