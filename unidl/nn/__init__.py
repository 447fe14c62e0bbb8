"""Layers, losses and the ``Module`` base class, written once and run by every backend."""

from unidl.nn.activation import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from unidl.nn.container import Sequential
from unidl.nn.linear import Linear
from unidl.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss
from unidl.nn.module import Module

__all__ = [
    "Module", "Linear", "Sequential", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax",
    "MSELoss", "L1Loss", "CrossEntropyLoss", "BCEWithLogitsLoss",
]
