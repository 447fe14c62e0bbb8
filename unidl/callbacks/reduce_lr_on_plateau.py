"""``ReduceLROnPlateau``: lower the learning rate when a metric stops improving, as Keras's callback does."""

from __future__ import annotations

import math

from unidl import arguments

from unidl.callbacks.callback import (Callback, check_monitor, check_verbose, improved, monitored, resolve_mode,
                                      settle_mode)


class ReduceLROnPlateau(Callback):
    """Multiply the optimizer's lr by ``factor`` once ``monitor`` has not improved for ``patience`` epochs,
    with ``keras.callbacks.ReduceLROnPlateau``'s rule, defaults and order of arguments (``verbose``: 1 prints a
    line at each reduction):

    - an epoch improves when ``value + min_delta < best`` (mode 'min') or ``value - min_delta > best`` ('max'),
      compared in float32 as Keras (``callback.improved``: a change of exactly ``min_delta`` is none);
      'auto' goes by the loss's and ``ud.metrics``' directions, as Keras 3 (``callback.resolve_mode``);
    - after ``patience`` epochs in a row without improvement, lr = max(lr * factor, min_lr) (if lr > min_lr);
    - then ``cooldown`` epochs pass in which the count of epochs without improvement stays at 0.

    The new rate takes effect at the next epoch (no compiled step is retraced). Each ``fit`` starts afresh;
    ``state_dict()`` holds the best value and both counters, so that a resumed ``fit`` continues the same plateau.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        number = arguments.real(factor)
        if number is None or not 0 <= number < 1:  # (NaN and strings too: Python's own comparison errors)
            raise ValueError(f"ReduceLROnPlateau factor must be a number in [0, 1) (it multiplies the lr), got "
                             f"{factor!r}")
        factor = number
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            arguments.non_negative_int("ReduceLROnPlateau", name, value)
        min_lr = arguments.check_range("ReduceLROnPlateau", "min_lr", min_lr)
        min_delta = arguments.check_range("ReduceLROnPlateau", "min_delta", min_delta, -math.inf)
        patience, cooldown = int(patience), int(cooldown)
        self.monitor, self.mode = monitor, resolve_mode("ReduceLROnPlateau", monitor, mode)
        self.factor, self.patience, self.min_delta = float(factor), patience, abs(float(min_delta))
        self.cooldown, self.min_lr, self.verbose = cooldown, float(min_lr), check_verbose("ReduceLROnPlateau", verbose)
        self._resumed = False
        self._reset()

    def _reset(self):
        self.best = -math.inf if self.mode == "max" else math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def state_dict(self) -> dict:
        """Best value so far, epochs waited, cooldown epochs left (for checkpoints)."""
        return {"best": float(self.best), "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing."""
        from unidl.errors import CheckpointStateError

        keys = {"best", "wait", "cooldown_counter"}
        if not isinstance(state, dict) or set(state) != keys:
            raise CheckpointStateError(f"ReduceLROnPlateau state must have exactly the keys {sorted(keys)}, got "
                                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if not isinstance(state["best"], (int, float)) or isinstance(state["best"], bool):
            raise CheckpointStateError(f"ReduceLROnPlateau state best must be a number, got {state['best']!r}")
        for key in ("wait", "cooldown_counter"):
            if not isinstance(state[key], int) or isinstance(state[key], bool) or state[key] < 0:
                raise CheckpointStateError(f"ReduceLROnPlateau state {key} must be a non-negative integer, "
                                           f"got {state[key]!r}")

    def load_state_dict(self, state) -> None:
        self.check_state_dict(state)
        self.best, self.wait, self.cooldown_counter = float(state["best"]), state["wait"], state["cooldown_counter"]
        self._resumed = True

    def on_train_begin(self, logs=None):
        check_monitor(self, "ReduceLROnPlateau")
        if not self._resumed:  # each fit starts a new plateau, as in Keras; a resumed one continues its own
            self._reset()
        self._resumed = False

    def _improved(self, value: float) -> bool:
        settle_mode(self, "ReduceLROnPlateau")
        return improved(self.mode, value, self.best, self.min_delta)

    def on_epoch_end(self, epoch, logs=None):
        value = monitored(self, "ReduceLROnPlateau", epoch, logs)
        if value is None:  # an epoch that validation_freq does not validate: no count, no cooldown (Keras's)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                optimizer = self.trainer.optimizer
                rates = [group["lr"] for group in optimizer.param_groups]
                if any(rate > self.min_lr for rate in rates):  # each group from its own rate, as torch's
                    for index, rate in enumerate(rates):
                        if rate > self.min_lr:
                            optimizer.set_group_lr(index, max(rate * self.factor, self.min_lr))
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {optimizer.lr}")
                    self.cooldown_counter, self.wait = self.cooldown, 0
