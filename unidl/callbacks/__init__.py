"""Callbacks for ``ud.fit``: early stopping, learning-rate schedules, checkpoints."""

from unidl.callbacks.callback import Callback
from unidl.callbacks.checkpoint import Checkpoint
from unidl.callbacks.early_stopping import EarlyStopping
from unidl.callbacks.lr_schedule import LearningRateScheduler

__all__ = ["Callback", "EarlyStopping", "LearningRateScheduler", "Checkpoint"]
