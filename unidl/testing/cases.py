"""The built-in parity cases behind ``unidl parity``: the lecture's two-layer net and the CNN on fixed data.

Optimizers are module-level functions so that subprocess backends (``keras:torch``) can import them.
"""

from __future__ import annotations

import numpy as np

from unidl.models import CNN, TwoLayerNet
from unidl.nn import CrossEntropyLoss, MSELoss
from unidl.optim import SGD


def sgd_momentum(params):
    """SGD(lr=1e-2, momentum=0.9), the lecture's optimizer."""
    return SGD(params, lr=1e-2, momentum=0.9)


def case(model: str):
    """``(model class, kwargs, inputs, targets, loss)`` for 'two_layer' (N=64, 1000-100-10, MSE) or
    'cnn' (batch 16 of 3x32x32, 10 classes, cross-entropy)."""
    data = np.random.default_rng(0)
    if model == "two_layer":
        return (TwoLayerNet, {"D_in": 1000, "H": 100, "D_out": 10}, data.standard_normal((64, 1000)),
                data.standard_normal((64, 10)), MSELoss)
    if model == "cnn":
        return (CNN, {"in_channels": 3, "num_classes": 10, "image_size": 32}, data.standard_normal((16, 3, 32, 32)),
                data.integers(0, 10, 16), CrossEntropyLoss)
    raise ValueError(f"unknown parity model {model!r}; use 'two_layer' or 'cnn'")


def run_parity_command(model: str, backends=None, steps: int = 20, dtype: str = "float32"):
    from unidl.testing.parity import compare_backends

    model_class, kwargs, inputs, targets, loss = case(model)
    return compare_backends(model_class, inputs, targets, model_kwargs=kwargs, loss=loss, optimizer=sgd_momentum,
                            steps=steps, backends=backends, dtype=dtype)
