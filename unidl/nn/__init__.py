"""Layers, losses and the ``Module`` base class, written once and run by every backend."""

from unidl.nn import init
from unidl.nn.activation import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from unidl.nn.batchnorm import BatchNorm1d, BatchNorm2d
from unidl.nn.container import ModuleDict, ModuleList, Sequential
from unidl.nn.conv import Conv2d
from unidl.nn.dropout import Dropout
from unidl.nn.flatten import Flatten, Unflatten
from unidl.nn.linear import Identity, Linear
from unidl.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss
from unidl.nn.module import Module
from unidl.nn.pooling import AvgPool2d, MaxPool2d
from unidl.nn.rnn import RNN

__all__ = [
    "Module", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten", "Dropout", "BatchNorm1d", "BatchNorm2d",
    "Sequential", "ModuleList", "ModuleDict", "Identity", "Unflatten", "RNN", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax",
    "MSELoss", "L1Loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "init",
]
