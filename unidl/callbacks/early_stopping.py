"""``EarlyStopping``: stop ``fit`` when a monitored metric stops improving."""

from __future__ import annotations

import math

from unidl.callbacks.callback import Callback, resolve_mode, settle_mode


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without an improvement of more than ``min_delta`` in ``monitor``.

    ``mode``: 'min', 'max' or 'auto' (the loss's and ``ud.metrics``' directions, as Keras 3: ``resolve_mode``).
    ``restore_best_weights`` loads the weights of the best epoch at the end.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False):
        mode = resolve_mode("EarlyStopping", monitor, mode)
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping patience must be a non-negative integer, got {patience!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        self.mode = mode
        self.restore_best_weights = restore_best_weights
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self._wait = 0
        self._best_state = None

    def state_dict(self) -> dict:
        """Best value so far, its epoch, epochs waited and the stopping epoch (for checkpoints); the best
        weights kept for ``restore_best_weights`` travel as ``state_weights()``."""
        return {"best": float(self.best), "best_epoch": self.best_epoch, "wait": self._wait,
                "stopped_epoch": self.stopped_epoch}

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing."""
        from unidl.errors import CheckpointStateError

        keys = {"best", "best_epoch", "wait", "stopped_epoch"}
        if not isinstance(state, dict) or set(state) != keys:
            raise CheckpointStateError(f"EarlyStopping state must have exactly the keys {sorted(keys)}, got "
                                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if not isinstance(state["best"], (int, float)) or isinstance(state["best"], bool):
            raise CheckpointStateError(f"EarlyStopping state best must be a number, got {state['best']!r}")
        for key in ("best_epoch", "stopped_epoch", "wait"):
            value = state[key]
            if not (value is None and key != "wait") and (not isinstance(value, int) or isinstance(value, bool)
                                                         or value < 0):
                raise CheckpointStateError(f"EarlyStopping state {key} must be a non-negative integer, got {value!r}")

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict()``: the best value and the patience already used."""
        self.check_state_dict(state)
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        self._wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]

    def state_weights(self) -> dict | None:
        """The weights of the best epoch, kept for ``restore_best_weights`` (None if none are kept)."""
        return self._best_state

    def load_state_weights(self, weights: dict | None) -> None:
        self._best_state = dict(weights) if weights else None

    def _improved(self, value) -> bool:
        settle_mode(self, "EarlyStopping")
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
