"""Callbacks for ``ud.fit``: early stopping, learning-rate schedules, checkpoints, logging, and plain functions."""

from unidl.callbacks.callback import Callback
from unidl.callbacks.checkpoint import Checkpoint
from unidl.callbacks.csv_logger import CSVLogger
from unidl.callbacks.early_stopping import EarlyStopping
from unidl.callbacks.lambda_callback import LambdaCallback
from unidl.callbacks.lr_schedule import LearningRateScheduler
from unidl.callbacks.model_checkpoint import ModelCheckpoint
from unidl.callbacks.progress_bar import ProgressBar
from unidl.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from unidl.callbacks.tensorboard import TensorBoard
from unidl.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = ["Callback", "EarlyStopping", "LearningRateScheduler", "Checkpoint", "ModelCheckpoint",
           "CSVLogger", "ReduceLROnPlateau", "LambdaCallback", "TerminateOnNaN", "TensorBoard", "ProgressBar"]
