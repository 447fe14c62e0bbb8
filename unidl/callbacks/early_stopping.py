"""``EarlyStopping``: stop ``fit`` when a monitored metric stops improving."""

from __future__ import annotations

import math

from unidl import arguments
from unidl.callbacks.callback import (Callback, check_monitor, check_verbose, improved, monitored, resolve_mode,
                                      settle_mode)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs, by Keras 3's
    rule: an epoch without an improvement counts one, and the run stops when the count reaches ``patience``
    (at least one such epoch; never after the first epoch). An improvement is Keras's float32 comparison
    (``callback.improved``: one of exactly ``min_delta`` is none).

    Arguments in ``keras.callbacks.EarlyStopping``'s order (``EarlyStopping("val_loss", 0, 5)``: patience 5).
    ``verbose``: 1 prints Keras's lines at the end (the epoch it stopped at, the best epoch restored).
    ``mode``: 'min', 'max' or 'auto' (the loss's and ``ud.metrics``' directions, as Keras 3: ``resolve_mode``).
    ``baseline``: an improvement resets the count only where it also beats this value. ``start_from_epoch``:
    epochs before it are not watched (a warm-up). ``restore_best_weights`` loads the weights of the best epoch at
    the end. Each ``fit`` starts afresh (one object serves several runs, as Keras's); a run resumed from a
    checkpoint continues the state saved there.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: float | None = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0):
        mode = resolve_mode("EarlyStopping", monitor, mode)
        self.verbose = check_verbose("EarlyStopping", verbose)
        if arguments.real(min_delta) is None or math.isnan(arguments.real(min_delta)):
            raise ValueError(f"EarlyStopping min_delta must be a number, got {min_delta!r}")
        for name, value in (("patience", patience), ("start_from_epoch", start_from_epoch)):
            arguments.non_negative_int("EarlyStopping", name, value)
        if baseline is not None and (arguments.real(baseline) is None or math.isnan(arguments.real(baseline))):
            raise ValueError(f"EarlyStopping baseline must be a number or None, got {baseline!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(arguments.real(min_delta))
        self.mode = mode
        self.restore_best_weights = arguments.flag("EarlyStopping", "restore_best_weights", restore_best_weights)
        self.baseline = None if baseline is None else arguments.real(baseline)
        self.start_from_epoch = int(start_from_epoch)
        self._resumed = False
        self._reset()

    def _reset(self) -> None:
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
        """Continue from a ``state_dict()``: the best value and the patience already used (the next ``fit``
        goes on from them instead of starting afresh)."""
        self.check_state_dict(state)
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        self._wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self._resumed = True

    def state_weights(self) -> dict | None:
        """The weights of the best epoch, kept for ``restore_best_weights`` (None if none are kept)."""
        return self._best_state

    def load_state_weights(self, weights: dict | None) -> None:
        self._best_state = dict(weights) if weights else None

    def _improved(self, value, reference) -> bool:
        return improved(self.mode, value, reference, self.min_delta)

    def on_train_begin(self, logs=None):
        check_monitor(self, "EarlyStopping")
        if not self._resumed:  # each fit starts afresh, as Keras's; a resumed one continues its own
            self._reset()
        elif self.stopped_epoch is not None:  # a run it had ended, resumed (a restarted job): it stays ended
            self.trainer.stop()
        self._resumed = False

    def on_epoch_end(self, epoch, logs=None):
        value = monitored(self, "EarlyStopping", epoch, logs)
        if value is None or epoch < self.start_from_epoch:  # (an epoch that validation_freq does not validate)
            return
        settle_mode(self, "EarlyStopping")
        if self.restore_best_weights and self._best_state is None:  # (Keras's: the first watched epoch's at least)
            self._best_state, self.best_epoch = self.trainer.model.state_dict(), epoch
        self._wait += 1
        if self._improved(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self._best_state = self.trainer.model.state_dict()
            if self.baseline is None or self._improved(value, self.baseline):
                self._wait = 0
            return
        if self._wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop()

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self._best_state is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.trainer.model.load_state_dict(self._best_state)
