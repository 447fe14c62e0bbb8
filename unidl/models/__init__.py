"""Ready-made models written against ``unidl.nn`` only: no backend in sight."""

from unidl.models.cnn import CNN
from unidl.models.lstm_classifier import LSTMClassifier
from unidl.models.resnet import ResNet, resnet18, resnet34
from unidl.models.transformer_classifier import TransformerClassifier
from unidl.models.two_layer_net import TwoLayerNet

__all__ = ["TwoLayerNet", "CNN", "LSTMClassifier", "TransformerClassifier", "ResNet", "resnet18", "resnet34"]
