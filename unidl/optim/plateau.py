"""``ReduceLROnPlateau``: torch's schedule that lowers the rates when a metric a loop hands it stops improving.

For a hand-written loop (``scheduler.step(val_loss)`` after each epoch), with ``torch.optim.lr_scheduler``'s rule,
defaults and state; ``fit`` takes Keras's rule as the callback ``ud.callbacks.ReduceLROnPlateau(monitor=...)``,
which reads the metric from the epoch's logs.
"""

from __future__ import annotations

import math

from unidl import arguments
from unidl.optim.lr_scheduler import LRScheduler, refuse_epoch

_STATE_KEYS = {"last_epoch", "best", "num_bad_epochs", "cooldown_counter", "last_lr", "settings"}


class ReduceLROnPlateau(LRScheduler):
    """Multiply each param group's rate by ``factor`` (down to its ``min_lr``) once the metric given to ``step`` has
    not improved for more than ``patience`` steps, as ``torch.optim.lr_scheduler.ReduceLROnPlateau``: better means
    below ``best * (1 - threshold)`` (mode 'min', threshold_mode 'rel'), ``best - threshold`` ('abs'), or above
    ``best * (1 + threshold)`` / ``best + threshold`` (mode 'max'); ``cooldown`` steps after a reduction count no
    bad step; a change of ``eps`` or less is not made. Building it changes no rate.

    ``step(metrics)`` takes the metric (a number, or a 0-d tensor or array); torch's deprecated ``epoch`` argument
    is not taken. In ``fit`` use the callback ``ud.callbacks.ReduceLROnPlateau`` (Keras's rule, the metric read from
    the logs): ``LearningRateScheduler`` refuses this schedule, whose ``step`` needs the metric."""

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr=0, eps: float = 1e-8):
        owner = "ReduceLROnPlateau"
        if mode not in ("min", "max"):
            raise ValueError(f"{owner} mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{owner} threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = arguments.check_range(owner, "factor", factor, 0.0, 1.0)  # (torch: "Factor should be < 1.0")
        self.patience = arguments.non_negative_int(owner, "patience", patience)
        self.cooldown = arguments.non_negative_int(owner, "cooldown", cooldown)
        self.threshold = arguments.check_range(owner, "threshold", threshold)
        self.eps = arguments.check_range(owner, "eps", eps)
        count = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != count:
                raise ValueError(f"{owner} expected {count} min_lrs (one per param group), got {len(min_lr)}")
            self.min_lrs = [arguments.check_range(owner, f"min_lr[{i}]", v) for i, v in enumerate(min_lr)]
        else:
            self.min_lrs = [arguments.check_range(owner, "min_lr", min_lr)] * count
        self.mode, self.threshold_mode = mode, threshold_mode
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]  # (fit's new-lr rule scales them)
        self.last_epoch = 0
        self._last_lr = list(self.base_lrs)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0

    def _is_better(self, value: float) -> bool:
        if self.mode == "min":
            return value < (self.best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                            else self.best - self.threshold)
        return value > (self.best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                        else self.best + self.threshold)

    def step(self, metrics, epoch=None) -> float:
        """One epoch's ``metrics`` (a number, or a 0-d tensor or array): count it, and reduce the rates after more than
        ``patience`` bad ones; returns the first group's rate."""
        refuse_epoch(type(self).__name__, epoch)
        current = _number(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # (bad epochs in cooldown are not counted)
        if self.num_bad_epochs > self.patience:
            for index, group in enumerate(self.optimizer.param_groups):
                old = float(group["lr"])
                new = max(old * self.factor, self.min_lrs[index])
                if old - new > self.eps:
                    self.optimizer.set_group_lr(index, new)
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return self.optimizer.lr

    def lr_at(self, epoch, base_lr):
        raise NotImplementedError("ReduceLROnPlateau has no closed form: its rates follow the metrics it was given")

    def state_dict(self) -> dict:
        """Where the plateau stands (steps, best value, bad steps, cooldown left) and the settings, as plain data."""
        return {"last_epoch": self.last_epoch, "best": float(self.best), "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "last_lr": self.get_last_lr(), "settings": self.settings()}

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing."""
        from unidl.errors import CheckpointStateError

        if not isinstance(state, dict) or set(state) != _STATE_KEYS:
            raise CheckpointStateError(f"ReduceLROnPlateau state must have exactly the keys {sorted(_STATE_KEYS)}, "
                                       f"got {sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if arguments.real(state["best"]) is None or math.isnan(state["best"]):
            raise CheckpointStateError(f"ReduceLROnPlateau state best must be a number, got {state['best']!r}")
        for key in ("last_epoch", "num_bad_epochs", "cooldown_counter"):
            if arguments.integer(state[key]) is None or state[key] < 0:
                raise CheckpointStateError(f"ReduceLROnPlateau state {key} must be an integer >= 0, got "
                                           f"{state[key]!r}")
        last = state["last_lr"]
        if not isinstance(last, list) or len(last) != len(self.optimizer.param_groups):
            raise CheckpointStateError(f"ReduceLROnPlateau state holds last rates {last!r}; its optimizer has "
                                       f"{len(self.optimizer.param_groups)} param groups")
        if not isinstance(state["settings"], dict):
            raise CheckpointStateError(f"ReduceLROnPlateau state settings must be a dict, got {state['settings']!r}")
        self._check_settings(state)

    def load_state_dict(self, state: dict) -> None:
        """Continue the plateau from ``state`` (checked first); the rates are the optimizer's state."""
        self.check_state_dict(state)
        self._warn_given_settings(state)
        self.last_epoch, self.best = int(state["last_epoch"]), float(state["best"])
        self.num_bad_epochs, self.cooldown_counter = int(state["num_bad_epochs"]), int(state["cooldown_counter"])
        self._last_lr = [float(rate) for rate in state["last_lr"]]


def _number(metrics) -> float:
    """The metric as a Python float: a number, or a 0-d tensor or array (torch's ``float(metrics)``)."""
    if getattr(metrics, "shape", ()) not in ((), (1,)) or isinstance(metrics, (str, bytes)):
        raise TypeError(f"ReduceLROnPlateau.step(metrics) takes one number (or a 0-d tensor or array), got "
                        f"{type(metrics).__name__} of shape {getattr(metrics, 'shape', None)}")
    if hasattr(metrics, "shape"):
        from unidl.tensors import to_numpy

        metrics = to_numpy(metrics)
    return float(metrics)
