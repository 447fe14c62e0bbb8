"""``LearningRateScheduler``: set the learning rate at the start of each epoch."""

from __future__ import annotations

import inspect
import math

import numpy as np

from unidl.callbacks.callback import Callback, check_verbose


class LearningRateScheduler(Callback):
    """``schedule`` is a ``unidl.optim.lr_scheduler`` object (stepped after every epoch, or after every update
    with ``interval="batch"``, as ``OneCycleLR`` wants: with ``fit(accumulate=N)`` after every N-th batch, as a
    PyTorch loop steps it after ``optimizer.step()``) or a function ``(epoch, lr) -> new lr`` called before every
    epoch, for each param group's rate (Keras's, for one group), or ``(epoch) -> new lr`` (Keras's older form, which
    Keras 3 still takes). Either way no compiled step is retraced.
    ``verbose``: 1 prints the rate at the start of each epoch (Keras's line); ``interval`` is by keyword only, after
    Keras's ``(schedule, verbose)``."""

    def __init__(self, schedule, verbose: int = 0, *, interval: str = "epoch"):
        if not callable(schedule) and not hasattr(schedule, "step"):  # (a number or a name did nothing at all)
            raise TypeError(f"LearningRateScheduler takes a unidl.optim.lr_scheduler object or a function (epoch, "
                            f"lr) -> new lr, got {type(schedule).__name__} {schedule!r}; for a constant rate give "
                            f"the optimizer that lr")
        from unidl.optim.plateau import ReduceLROnPlateau

        if isinstance(schedule, ReduceLROnPlateau):
            raise TypeError(f"LearningRateScheduler cannot step a {type(schedule).__name__}: its step(metrics) needs "
                            f"the epoch's metric; in fit use ud.callbacks.ReduceLROnPlateau(monitor='val_loss', ...)")
        if interval not in ("epoch", "batch"):
            raise ValueError(f"LearningRateScheduler interval must be 'epoch' or 'batch', got {interval!r}")
        if interval == "batch" and not hasattr(schedule, "step"):
            raise ValueError("LearningRateScheduler interval='batch' needs a unidl.optim.lr_scheduler object; "
                             "a function (epoch, lr) -> lr is called once per epoch")
        self.schedule, self.interval = schedule, interval
        self._takes_rate = True if hasattr(schedule, "step") else _takes_rate(schedule)
        self.verbose = check_verbose("LearningRateScheduler", verbose)

    def on_train_begin(self, logs=None):
        scheduled = getattr(self.schedule, "optimizer", None)
        if hasattr(self.schedule, "step") and scheduled is not None and scheduled is not self.trainer.optimizer:
            raise ValueError(f"LearningRateScheduler: its {type(self.schedule).__name__} schedules another optimizer "
                             f"than the one fit trains with, so it would change no rate fit uses; build the "
                             f"schedule on fit's optimizer (an optimizer given to fit by name is made by fit: "
                             f"make it yourself and pass it)")

    def on_epoch_begin(self, epoch, logs=None):
        if callable(self.schedule) and not hasattr(self.schedule, "step"):
            optimizer = self.trainer.optimizer
            for index, rate in enumerate([group["lr"] for group in optimizer.param_groups]):
                new = self.schedule(epoch, rate) if self._takes_rate else self.schedule(epoch)
                if getattr(new, "shape", None) == () and hasattr(new, "dtype"):  # (a 0-d array or tensor: its value)
                    from unidl.tensors import to_numpy

                    new = np.asarray(to_numpy(new))[()]
                if isinstance(new, (bool, np.bool_)) or not isinstance(new, (int, float, np.integer, np.floating)) \
                        or not math.isfinite(float(new)) or float(new) < 0:
                    raise ValueError(f"LearningRateScheduler: the schedule's return value should be a float, a "
                                     f"finite rate of at least 0 (a number, or a 0-d array or tensor of one); at "
                                     f"epoch {epoch} it gave {type(new).__name__} {new!r}")
                optimizer.set_group_lr(index, float(new))
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {self.trainer.optimizer.lr}.")

    def on_batch_end(self, batch, logs=None):
        if self.interval == "batch" and getattr(self.trainer, "updated", True):
            self.schedule.step()

    def on_epoch_end(self, epoch, logs=None):
        if self.interval == "epoch" and hasattr(self.schedule, "step"):
            self.schedule.step()

    def state_dict(self) -> dict | None:
        """The schedule's own state (``unidl.optim.lr_scheduler`` objects), None for a plain function."""
        state_dict = getattr(self.schedule, "state_dict", None)
        return {"schedule": type(self.schedule).__name__, "state": state_dict()} if callable(state_dict) else None

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing."""
        from unidl.errors import CheckpointStateError

        mine = self.state_dict()
        if mine is None or state is None:
            if (mine is None) != (state is None):
                raise CheckpointStateError(f"LearningRateScheduler state {state!r} does not fit a schedule of type "
                                           f"{type(self.schedule).__name__}")
            return
        if not isinstance(state, dict) or state.get("schedule") != mine["schedule"] or "state" not in state:
            raise CheckpointStateError(f"LearningRateScheduler state {state!r} does not fit a "
                                       f"{mine['schedule']} schedule")
        check = getattr(self.schedule, "check_state_dict", None)
        if callable(check):
            check(state["state"])

    def load_state_dict(self, state) -> None:
        """Continue the schedule where ``state_dict()`` left it (its position and base rates; the rates are the
        optimizer's state, which a checkpoint restores too)."""
        self.check_state_dict(state)
        if state is not None:
            self.schedule.load_state_dict(state["state"])


def _takes_rate(schedule) -> bool:
    """Whether a schedule function is called ``(epoch, lr)`` (True) or ``(epoch)``, Keras's older form (False), from
    its signature, read once (a one-argument schedule raised Python's arity error at the first epoch); a signature
    that takes neither is a ``TypeError`` naming it. A function whose signature Python cannot read gets both."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):
        return True
    for arguments, takes_rate in (((0, 0.1), True), ((0,), False)):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return takes_rate
    raise TypeError(f"LearningRateScheduler's schedule function must take (epoch, lr) or (epoch) and return the new "
                    f"rate; {getattr(schedule, '__name__', type(schedule).__name__)} takes {signature}")
