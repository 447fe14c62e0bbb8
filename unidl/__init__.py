"""unidl: one model, one optimizer, one data loader and one training loop for PyTorch, TensorFlow, Keras and JAX.

``import unidl`` imports no framework; a backend's framework is imported the
first time that backend is used.
"""

from unidl import models, nn, ops, optim
from unidl import callbacks, data, datasets, metrics
from unidl import autograd
from unidl import distributed
from unidl.threads import set_num_threads
from unidl.float32_precision import get_float32_precision, set_float32_precision
from unidl.autograd import custom_gradient, grad, value_and_grad
from unidl.config import (available_backends, get_backend, get_device, get_dtype, set_backend, set_device,
                          set_dtype, use_backend, use_device, use_dtype)
from unidl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from unidl.errors import (BackendMismatchError, NonFiniteLossError, BackendNotInstalledError, CorruptFileError, DeviceUnavailableError,
                          ShapeMismatchError, StateDictError, UnidlError, UnknownBackendError, UnknownModelError,
                          UnsafeFormatError, ExportFormatError, ExportInputError)
from unidl.devices import info, log_device_placement
from unidl.errors import (AxisOutOfRangeError, DtypeMismatchError, GraphConstructError, IndexOutOfRangeError,
                          ModelPlacementError, PaddingLengthError, PoolPaddingError, RetraceWarning,
                          ValueOutOfRangeError)
from unidl.function import function
from unidl.random import manual_seed
from unidl.export import export
from unidl.serialization import load, load_weights, register_model, save
from unidl.tensors import tensor, to_numpy
from unidl.fit import History, evaluate, fit, predict
from unidl.summary import summary
from unidl.plot import plot_history
from unidl.training import train_step
from unidl.precision import Precision

__version__ = "0.1.0"


def __getattr__(name):
    """``ud.testing`` without a separate ``import unidl.testing`` (imported on first use; no framework)."""
    if name == "testing":
        import importlib

        return importlib.import_module("unidl.testing")
    raise AttributeError(f"module 'unidl' has no attribute {name!r}")

__all__ = [
    "nn", "ops", "optim", "models", "data", "datasets", "tensor", "to_numpy", "grad", "value_and_grad", "train_step", "Precision", "fit", "evaluate", "predict", "History", "summary", "plot_history", "callbacks", "metrics", "manual_seed",
    "distributed", "set_num_threads", "set_float32_precision", "get_float32_precision", "autograd", "custom_gradient", "function", "info", "log_device_placement", "GraphConstructError", "IndexOutOfRangeError", "DtypeMismatchError", "ModelPlacementError", "RetraceWarning", "AxisOutOfRangeError",
    "ValueOutOfRangeError", "PaddingLengthError", "PoolPaddingError",
    "available_backends", "get_backend", "set_backend", "use_backend",
    "get_device", "set_device", "use_device", "get_dtype", "set_dtype", "use_dtype",
    "UnidlError", "UnknownBackendError", "BackendNotInstalledError", "BackendMismatchError",
    "DeviceUnavailableError", "NonFiniteLossError", "ShapeMismatchError", "StateDictError",
    "export", "save", "load", "load_weights", "register_model", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
    "CorruptFileError", "UnsafeFormatError", "UnknownModelError", "ExportFormatError", "ExportInputError", "testing",
]
