"""Layers, losses and the ``Module`` base class, written once and run by every backend."""

from unidl.nn import init
from unidl.nn.activation import (CELU, ELU, GELU, GLU, SELU, Hardshrink, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU,
                                 LogSigmoid, LogSoftmax, Mish, PReLU, ReLU, ReLU6, RReLU, Sigmoid, SiLU, Softmax,
                                 Softmax2d, Softmin, Softplus, Softshrink, Softsign, Tanh, Tanhshrink, Threshold)
from unidl.nn.attention import MultiheadAttention
from unidl.nn.batchnorm import BatchNorm1d, BatchNorm2d
from unidl.nn.container import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from unidl.nn.conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from unidl.nn.distance import CosineSimilarity, PairwiseDistance
from unidl.nn.dropout import Dropout, Dropout2d
from unidl.nn.flatten import Flatten, Unflatten
from unidl.nn.linear import Identity, Linear
from unidl.nn.loss import (BCELoss, BCEWithLogitsLoss, CosineEmbeddingLoss, CTCLoss, CrossEntropyLoss, GaussianNLLLoss,
                           HingeEmbeddingLoss, HuberLoss, KLDivLoss, L1Loss, MarginRankingLoss, MSELoss,
                           MultiLabelMarginLoss, MultiLabelSoftMarginLoss, MultiMarginLoss, NLLLoss, PoissonNLLLoss,
                           SmoothL1Loss, SoftMarginLoss, TripletMarginLoss, TripletMarginWithDistanceLoss,
                           LinearCrossEntropyLoss)
from unidl.nn.module import Module
from unidl.nn.instancenorm import InstanceNorm1d, InstanceNorm2d
from unidl.nn.normalization import GroupNorm, LayerNorm, RMSNorm
from unidl.nn.padding import (CircularPad1d, CircularPad2d, ConstantPad1d, ConstantPad2d, ReflectionPad1d,
                               ReflectionPad2d, ReplicationPad1d, ReplicationPad2d, ZeroPad1d, ZeroPad2d)
from unidl.nn.parameter import Parameter
from unidl.nn.pixelshuffle import PixelShuffle, PixelUnshuffle
from unidl.nn.pooling import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveMaxPool1d, AdaptiveMaxPool2d, AvgPool1d,
                              AvgPool2d, MaxPool1d, MaxPool2d, MaxUnpool2d)
from unidl.nn.rnn import GRU, LSTM, RNN
from unidl.nn.rnn_cell import GRUCell, LSTMCell, RNNCell
from unidl.nn.sparse import Embedding
from unidl.nn.transformer import (Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                                  TransformerEncoderLayer)
from unidl.nn.upsample import Upsample

__all__ = [
    "Module", "Linear", "Conv2d", "MaxPool2d", "MaxUnpool2d", "AvgPool2d", "Flatten", "Dropout", "BatchNorm1d",
    "BatchNorm2d", "LayerNorm", "Embedding", "Sequential", "ModuleList", "ModuleDict", "Parameter", "ParameterList",
    "ParameterDict", "Identity", "Unflatten",
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MultiheadAttention",
    "TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer", "TransformerDecoder", "Transformer",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "GELU", "SiLU", "ELU", "Softplus", "Hardtanh",
    "ReLU6",
    "PReLU", "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss", "SmoothL1Loss",
    "HuberLoss", "KLDivLoss", "MarginRankingLoss", "HingeEmbeddingLoss", "SoftMarginLoss", "CosineEmbeddingLoss",
    "TripletMarginLoss", "MultiLabelSoftMarginLoss", "MultiMarginLoss", "MultiLabelMarginLoss", "PoissonNLLLoss",
    "GaussianNLLLoss", "CTCLoss", "TripletMarginWithDistanceLoss", "LinearCrossEntropyLoss", "init",
    "Conv1d", "ConvTranspose2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "GroupNorm", "Dropout2d", "Upsample",
    "RMSNorm", "InstanceNorm1d", "InstanceNorm2d",
    "Mish", "Hardswish", "Hardsigmoid", "SELU", "CELU", "Softsign", "LogSigmoid", "Softmin", "GLU", "Tanhshrink",
    "Softshrink", "Hardshrink", "Threshold", "CosineSimilarity", "PairwiseDistance",
    "ZeroPad1d", "ZeroPad2d", "ConstantPad1d", "ConstantPad2d", "ReflectionPad1d", "ReflectionPad2d",
    "ReplicationPad1d", "ReplicationPad2d", "CircularPad1d", "CircularPad2d", "PixelShuffle", "PixelUnshuffle",
    "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool1d", "AdaptiveMaxPool1d", "ConvTranspose1d", "RReLU", "Softmax2d",
]
