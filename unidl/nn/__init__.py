"""Layers, losses and the ``Module`` base class, written once and run by every backend."""

from unidl.nn import init
from unidl.nn.activation import (ELU, GELU, Hardtanh, LeakyReLU, LogSoftmax, PReLU, ReLU, ReLU6, Sigmoid, SiLU, Softmax,
                                 Softplus, Tanh)
from unidl.nn.batchnorm import BatchNorm1d, BatchNorm2d
from unidl.nn.container import ModuleDict, ModuleList, Sequential
from unidl.nn.conv import Conv2d
from unidl.nn.dropout import Dropout
from unidl.nn.flatten import Flatten, Unflatten
from unidl.nn.linear import Identity, Linear
from unidl.nn.loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss, NLLLoss,
                           SmoothL1Loss)
from unidl.nn.module import Module
from unidl.nn.normalization import LayerNorm
from unidl.nn.pooling import AvgPool2d, MaxPool2d
from unidl.nn.rnn import RNN
from unidl.nn.sparse import Embedding

__all__ = [
    "Module", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten", "Dropout", "BatchNorm1d", "BatchNorm2d",
    "LayerNorm", "Embedding", "Sequential", "ModuleList", "ModuleDict", "Identity", "Unflatten", "RNN",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "GELU", "SiLU", "ELU", "Softplus", "Hardtanh", "ReLU6",
    "PReLU", "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss", "SmoothL1Loss",
    "HuberLoss", "KLDivLoss", "init",
]
