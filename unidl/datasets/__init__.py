"""Small image-classification datasets as NumPy arrays ``(x, y)``: float32 NCHW images in [0, 1] and int64
labels. Nothing is ever downloaded: ``digits`` ships with scikit-learn, ``mnist`` and ``cifar10`` read files
you already have, ``synthetic`` is generated.
"""

from unidl.datasets.cifar10 import cifar10
from unidl.datasets.digits import digits
from unidl.datasets.mnist import mnist
from unidl.datasets.synthetic import synthetic

__all__ = ["digits", "mnist", "cifar10", "synthetic"]
