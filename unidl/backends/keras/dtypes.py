"""Keras's float types under unidl: float64 computed in float64 on every framework Keras runs on.

Keras rounds float64 to float32 in two ways of its own: its type promotion on frameworks other than
TensorFlow, and wherever it turns a Python float or a NumPy array into a tensor of its default float type
(``keras.config.floatx()``: a forward's ``0.5 * weight`` and an update rule's ``momentum * buffer`` on
Keras-on-torch, the arrays ``Model.fit`` slices). The promotion is set here once; the default float type follows
the dtype in use around forwards (``forward_caller``), update rules and ``fit`` (``floatx``), so that a float64
model agrees with torch to 1e-12 on Keras-on-torch and Keras-on-JAX as on Keras-on-TensorFlow.
"""

from __future__ import annotations

import contextlib

import keras
from keras.src.backend.common import dtypes as keras_dtypes  # Keras's promotion table, not re-exported

from unidl import config


def keep_float64_in_type_promotion() -> None:
    """Make Keras's type promotion (``keras.backend.result_type``, behind ``keras.ops.matmul``, ``add``,
    ``multiply``, ...) keep float64 as float64 on every framework, as it does on TensorFlow.

    Keras narrows every float64 result to float32 on torch and JAX, to match JAX's default of 64-bit types off
    (keras-team/keras#23704): two float64 operands gave a float32 product, so a float64 model's forward and
    gradients on Keras-on-torch or Keras-on-JAX were 1e-7 from torch's. unidl runs JAX with 64-bit types on
    and torch promotes float64 as NumPy does, so float64 stays float64 there too. Process-wide, since Keras
    reads the table at every call; its 64-bit integer rule (int64 to int32) is left as it is."""
    keras_dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"


@contextlib.contextmanager
def floatx(dtype):
    """Keras's default float type set to ``dtype`` inside the block: what Keras gives a Python float (on
    Keras-on-torch, ``0.9 * variable`` rounds 0.9 to it first), the float arrays its ``Model.fit`` slices
    (cast to it) and the variables it creates (learning rate, loss and metric trackers), so that a float64
    model or optimizer is float64 throughout. Where it is ``dtype`` already (float32, the common case: an
    optimizer's update of every variable at every step) the block runs as it is."""
    dtype = keras.backend.standardize_dtype(dtype)
    previous = keras.config.floatx()
    if previous == dtype:
        yield
        return
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def forward_caller(host_caller):
    """``Backend.forward_caller`` for the keras backend: the host's (``host_caller``, or a plain ``forward`` where it
    is None) with Keras's default float type set to unidl's dtype for the call, so that a Python float in a
    forward (``0.5 * self.weight``, a user's module included) meets a float64 variable in float64, as on torch.
    Where the two already agree (float32, or inside a float64 module's call) the forward runs as it is."""

    def call(module, args, kwargs):
        dtype = config.get_dtype()
        if keras.config.floatx() == dtype:
            return module.forward(*args, **kwargs) if host_caller is None else host_caller(module, args, kwargs)
        with floatx(dtype):
            return module.forward(*args, **kwargs) if host_caller is None else host_caller(module, args, kwargs)

    return call
