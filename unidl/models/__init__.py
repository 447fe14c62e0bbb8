"""Ready-made models written against ``unidl.nn`` only: no backend in sight."""

from unidl.models.cnn import CNN
from unidl.models.two_layer_net import TwoLayerNet

__all__ = ["TwoLayerNet", "CNN"]
