"""Optimizers with PyTorch's update rules on every backend, and learning-rate schedules."""

from unidl.optim import lr_scheduler
from unidl.optim.adadelta import Adadelta
from unidl.optim.adagrad import Adagrad
from unidl.optim.adam import Adam, AdamW
from unidl.optim.adamax import Adamax
from unidl.optim.nadam import NAdam
from unidl.optim.optimizer import Optimizer
from unidl.optim.radam import RAdam
from unidl.optim.rmsprop import RMSprop
from unidl.optim.rprop import Rprop
from unidl.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad", "Adadelta",
           "Rprop", "lr_scheduler"]
