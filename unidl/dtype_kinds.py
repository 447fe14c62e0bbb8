"""What kind of values a framework's dtype holds, by its NumPy name: one rule for the front end's checks
(``input_checks``), mixed precision's casts (``precision``) and the losses, whatever object a framework uses for
a dtype (``torch.float32``, ``tf.float32``, a JAX/NumPy dtype, Keras's ``"float32"``). The answers are cached per
dtype object: they are asked at every op that checks its inputs. No framework or unidl module is imported here,
so that any module can use it."""

from __future__ import annotations

_FLOATING: dict = {}
_INTEGER: dict = {}
_NAMES: dict = {}
_HALF_NAMES = ("float16", "bfloat16")


def dtype_name(dtype) -> str:
    """A framework's dtype as NumPy names it ('float32', 'int64'). (Cached: TensorFlow's ``DType.name`` costs
    about a microsecond, asked by every layer call that checks its input.)"""
    name = _NAMES.get(dtype)
    if name is None:
        name = getattr(dtype, "name", None)
        name = _NAMES[dtype] = name if isinstance(name, str) else str(dtype).rsplit(".", 1)[-1]
    return name


def is_floating(dtype) -> bool:
    """True for a floating-point dtype of any width (float16, bfloat16, float32, float64)."""
    floating = _FLOATING.get(dtype)
    if floating is None:
        floating = _FLOATING[dtype] = "float" in dtype_name(dtype)
    return floating


def is_half(dtype) -> bool:
    """True for float16 and bfloat16 (a dtype, or its name), the widths PyTorch computes in float32 and rounds
    once ("opmath"), and mixed precision runs its ops in."""
    return dtype_name(dtype) in _HALF_NAMES


def is_integer(dtype) -> bool:
    """True for a signed or unsigned integer dtype (not bool)."""
    integer = _INTEGER.get(dtype)
    if integer is None:
        integer = _INTEGER[dtype] = dtype_name(dtype).startswith(("int", "uint"))
    return integer


def holds_floats(value) -> bool:
    """True for a tensor or array whose dtype is floating-point; False for one of another dtype and for values
    without a dtype (Python numbers and lists)."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and is_floating(dtype)
