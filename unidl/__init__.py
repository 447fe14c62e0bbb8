"""unidl: one model, one optimizer, one data loader and one training loop for PyTorch, TensorFlow and Keras.

``import unidl`` imports no framework; a backend's framework is imported the
first time that backend is used.
"""

from unidl import models, nn, ops, optim
from unidl import data, datasets
from unidl.autograd import grad, value_and_grad
from unidl.config import (available_backends, get_backend, get_device, get_dtype, set_backend, set_device,
                          set_dtype, use_backend, use_device, use_dtype)
from unidl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from unidl.errors import (BackendMismatchError, BackendNotInstalledError, CorruptFileError, DeviceUnavailableError,
                          ShapeMismatchError, StateDictError, UnidlError, UnknownBackendError, UnknownModelError,
                          UnsafeFormatError)
from unidl.random import manual_seed
from unidl.serialization import load, load_weights, register_model, save
from unidl.tensors import tensor, to_numpy
from unidl.training import train_step

__version__ = "0.1.0"

__all__ = [
    "nn", "ops", "optim", "models", "data", "datasets", "tensor", "to_numpy", "grad", "value_and_grad", "train_step", "manual_seed",
    "available_backends", "get_backend", "set_backend", "use_backend",
    "get_device", "set_device", "use_device", "get_dtype", "set_dtype", "use_dtype",
    "UnidlError", "UnknownBackendError", "BackendNotInstalledError", "BackendMismatchError",
    "DeviceUnavailableError", "ShapeMismatchError", "StateDictError",
    "save", "load", "load_weights", "register_model", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
    "CorruptFileError", "UnsafeFormatError", "UnknownModelError",
]
