"""``LearningRateScheduler``: set the learning rate at the start of each epoch."""

from __future__ import annotations

from unidl.callbacks.callback import Callback


class LearningRateScheduler(Callback):
    """``schedule`` is a ``unidl.optim.lr_scheduler`` object (stepped after every epoch) or a function
    ``(epoch, lr) -> new lr`` called before every epoch. Either way no compiled step is retraced."""

    def __init__(self, schedule):
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        if callable(self.schedule) and not hasattr(self.schedule, "step"):
            optimizer = self.trainer.optimizer
            optimizer.lr = float(self.schedule(epoch, optimizer.lr))

    def on_epoch_end(self, epoch, logs=None):
        if hasattr(self.schedule, "step"):
            self.schedule.step()
