"""Number arguments (kernel sizes, strides, layer sizes, probabilities, learning rates) read once, where a layer's
constructor, a functional op or an optimizer takes them, so that every backend below sees plain Python numbers.

A NumPy scalar (``np.int64(3)`` read from a config array, ``np.float32(1e-3)``) or a 0-d NumPy array is taken as
the Python int or float it holds, as ``torch.nn`` takes it; a bool is never a size or a rate (``kernel_size=True``
is a mistake, refused by the caller's check), nor is a float where an int is needed (``kernel_size=2.0``). A
sequence of them (a tuple, a list, a 1-d array, a tensor's shape, a range) is read by ``sequence``. Each check
tries plain Python values first: they are what a forward pass passes, every call.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from unidl.dtype_kinds import dtype_name

# a loss's reductions, PyTorch's (``KLDivLoss`` and ``kl_div`` add 'batchmean')
REDUCTIONS = ("mean", "sum", "none")

#: the counters every backend keeps in int64 (an optimizer's step, a checkpoint's epoch and step) lie below it
INT64_END = 2 ** 63


def integer(value) -> int | None:
    """``value`` as a Python int where it is an integer: an int, a NumPy integer or a 0-d NumPy integer array;
    None for anything else (a bool, a float even when whole, a string, a framework's tensor)."""
    if type(value) is int:
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return None


def real(value) -> float | None:
    """``value`` as a Python float where it is a real number: an int, a float, a NumPy integer or float, or a 0-d
    NumPy array of one; None for anything else (a bool, a complex number, a string, a framework's tensor)."""
    if type(value) in (float, int):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    return None


def sequence(value) -> tuple | None:
    """``value`` as a tuple where it lists several arguments: a tuple or a list, a 1-d NumPy array, a tensor's
    shape (``torch.Size``, TensorFlow's ``TensorShape``), a range, any other iterable; None for a string, a number,
    a 0-d or n-d array or a framework's tensor (whose elements are tensors, not sizes)."""
    if type(value) is tuple:
        return value
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return None
    if isinstance(value, np.ndarray):
        return tuple(value) if value.ndim == 1 else None
    if hasattr(value, "dtype"):
        return None
    return tuple(value)


def positive_int(owner: str, name: str, value) -> int:
    """``value`` as a Python int (a NumPy integer or 0-d integer array too), checked positive; a bool, a float
    (even 2.0) or a size below 1 is a ``ValueError`` naming ``owner`` and ``name``."""
    checked = integer(value)
    if checked is None or checked <= 0:
        raise ValueError(f"{owner} {name} must be a positive integer, got {value!r}")
    return checked


def non_negative_int(owner: str, name: str, value) -> int:
    """``value`` as a Python int (a NumPy integer or 0-d integer array too), checked to be at least 0 (a patience, a
    cooldown); a bool, a float or a negative number is a ``ValueError`` naming ``owner`` and ``name``."""
    checked = integer(value)
    if checked is None or checked < 0:
        raise ValueError(f"{owner} {name} must be a non-negative integer, got {value!r}")
    return checked


def normalized_shape(owner: str, value) -> tuple:
    """A layer norm's ``normalized_shape`` (``nn.LayerNorm``'s and ``ud.ops.layer_norm``'s) as a tuple of positive
    Python ints: one int is a shape of one axis, as ``nn.LayerNorm`` takes it; anything else (an empty shape, a size
    below 1, a float) is a ``ValueError``."""
    single = integer(value)
    shape = (single,) if single is not None else sequence(value) or ()
    shape = tuple(integer(s) for s in shape)
    if not shape or not all(s is not None and s > 0 for s in shape):
        raise ValueError(f"{owner} normalized_shape must be a positive int or a tuple of them, got {value!r}")
    return shape


def integers(value, rank: int) -> tuple | None:
    """``value`` as a tuple of ``rank`` Python ints: one integer (repeated), or a ``sequence`` of ``rank``
    integers; None for anything else. Bounds are the caller's to check."""
    single = integer(value)
    if single is not None:
        return (single,) * rank
    return _integer_sequence(value, rank)


def _integer_sequence(value, rank: int) -> tuple | None:
    values = sequence(value)
    if values is None or len(values) != rank:
        return None
    values = tuple(integer(v) for v in values)
    return None if None in values else values


def int_or_ints(owner: str, name: str, value, rank: int, minimum: int = 1):
    """``value`` checked as a functional op's size argument: one integer as a Python int, or ``rank`` of them as a
    tuple of Python ints, each at least ``minimum``; else a ``ValueError`` naming ``owner``, ``name`` and what is
    valid (the message of the layers' own checks)."""
    if type(value) is int and value >= minimum:
        return value
    if type(value) is tuple and len(value) == rank and all(type(v) is int and v >= minimum for v in value):
        return value
    single = integer(value)
    values = (single,) if single is not None else _integer_sequence(value, rank)
    if values is None or any(v < minimum for v in values):
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{owner} {name} must be a {kind} int or {rank} of them, got {value!r}")
    return single if single is not None else values


def ints(owner: str, name: str, value, rank: int, minimum: int = 1) -> tuple:
    """``int_or_ints`` always as a tuple of ``rank`` Python ints (a layer's stored kernel size, stride, padding)."""
    checked = int_or_ints(owner, name, value, rank, minimum)
    return (checked,) * rank if type(checked) is int else checked


def check_same_padding(owner: str, padding, stride) -> None:
    """``ValueError`` for ``padding='same'`` with a stride other than 1 (an int or a tuple of ints), as PyTorch's
    convolutions refuse it (TensorFlow's SAME padding of a strided convolution gives another output size)."""
    if isinstance(padding, str) and padding == "same" and any(s != 1 for s in (
            stride if isinstance(stride, (tuple, list)) else (stride,))):
        raise ValueError(f"{owner} padding='same' needs stride=1, got stride={stride!r}")


def check_output_padding(owner: str, output_padding: tuple, stride: tuple, dilation: tuple) -> None:
    """``ValueError`` for a transposed convolution's ``output_padding`` (tuples of ints, one per axis, as the
    stride and the dilation) not smaller than the stride or the dilation along each axis, as PyTorch refuses it."""
    if any(extra >= max(s, d) for extra, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"{owner} output_padding {output_padding} must be smaller than stride {stride} or "
                         f"dilation {dilation} on each axis")


def sizes_or_none(owner: str, name: str, value, rank: int) -> tuple:
    """An adaptive pooling's ``output_size``: one positive integer or None (repeated), or a ``sequence`` of
    ``rank`` of them, as a tuple of Python ints and Nones (None keeps that axis' size); else a ``ValueError``
    naming ``owner``."""
    if value is None or integer(value) is not None:
        values = (value,) * rank
    else:
        values = sequence(value)
        values = values if values is not None and len(values) == rank else ()
    checked = tuple(None if v is None else integer(v) for v in values)
    if not values or any(c is None and v is not None for v, c in zip(values, checked)) or \
            any(c is not None and c <= 0 for c in checked):
        raise ValueError(f"{owner} {name} must be a positive int or {rank} of them (None keeps that axis), "
                         f"got {value!r}")
    return checked


def axis(owner: str, name: str, value, optional: bool = True):
    """An axis argument (``dim``, ``start_dim``) as a Python int (a NumPy integer too), None as it is where
    ``optional`` (a softmax's dim) and refused where not (an unflatten's dim); a float or a bool is a ``ValueError``
    naming ``owner`` and ``name`` on every backend (the frameworks raised four different errors for one, and took
    the other)."""
    if type(value) is int or (value is None and optional):
        return value
    checked = integer(value)
    if checked is None:
        raise ValueError(f"{owner} {name} must be an int (an axis), got {value!r}")
    return checked


def reduced_axes(owner: str, name: str, value):
    """A reduction's axes (an int, a sequence of them, or None for all), as given; an empty sequence is a
    ``ValueError`` naming ``owner`` on every backend: PyTorch reduces every axis over ``dim=()``, NumPy,
    TensorFlow, Keras and JAX none, so either reading would be a silent difference."""
    if value is None or type(value) is int or not isinstance(value, (tuple, list)) or len(value):
        return value
    raise ValueError(f"{owner} {name}={value!r} is ambiguous (PyTorch reduces every axis, NumPy none); pass "
                     f"{name}=None to reduce every axis")


def flag(owner: str, name: str, value) -> bool:
    """A True/False option (a Python or NumPy bool, or the integer 0 or 1, as torch takes ``nesterov=1``) as a
    Python bool; anything else (a float, a string, which ``bool()`` would take as True) is a ``ValueError``."""
    if isinstance(value, (bool, np.bool_)) or integer(value) in (0, 1):
        return bool(value)
    raise ValueError(f"{owner} {name} must be True or False, got {value!r}")


def boolean(owner: str, name: str, value) -> bool:
    """A True/False argument that PyTorch takes as a bool only (a Python or NumPy bool) as a Python bool; anything
    else (None, which ``bool()`` would take as False, a string, an int) is a ``TypeError``, as torch's. ``flag``
    is the looser rule of options torch takes as 0 or 1."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")


def plain_number(owner: str, name: str, value):
    """A functional op's number argument (a slope, an epsilon, a bound) with a NumPy scalar or 0-d array taken as
    the Python int or float it holds, which every framework takes alike (torch refused a 0-d array, the others took
    it; an integer stays an int, so that an integer tensor clipped to it stays integer; a bool the Python bool, taken
    as ``True`` is, as torch takes ``np.True_``); anything else (a Python number, a framework's tensor) is left to
    the op; another NumPy scalar (a string, a complex number) is a ``ValueError`` naming ``owner``."""
    if type(value) is float:
        return value
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        if np.asarray(value).dtype == np.bool_:
            return bool(value)
        if np.asarray(value).dtype.kind == "V" and "float" in np.asarray(value).dtype.name:
            value = np.asarray(value).astype(np.float64)  # (ml_dtypes' bfloat16, no NumPy number: a 0-d tensor's)
        number = integer(value)
        number = real(value) if number is None else number
        if number is None:
            raise ValueError(f"{owner} {name} must be a number, got {value!r}")
        return number
    return value


def known_number(owner: str, name: str, value):
    """``plain_number``'s number, with a 0-d tensor of the backend in force also taken as the Python int or float
    it holds, as PyTorch takes a 0-d tensor where it takes a number (an activation's ``alpha``, ``lambd``,
    ``eps``, ``beta``, ``threshold``), its value needed when the layer or op is built. A tensor of more axes, or a
    0-d tensor whose value a graph being traced cannot read (one of its own), is a ``TypeError`` naming the
    argument; another framework's tensor is left to the caller's check (a ``TypeError`` too)."""
    from unidl import config  # (here, not at the top: config imports the backends' registry, which imports this)

    if not hasattr(value, "shape") or isinstance(value, (np.ndarray, np.generic)):
        return plain_number(owner, name, value)
    backend = config.backend()
    if not backend.is_tensor(value):
        return value
    if len(tuple(value.shape)) != 0:
        raise TypeError(f"{owner} {name} must be a number or a 0-d tensor, got a tensor of rank {len(value.shape)}")
    if "bfloat16" in str(value.dtype):  # (exact in float32; Keras's to_numpy refused a bfloat16 tensor)
        value = backend.ops.cast(value, "float32")
    traced = TypeError(f"{owner} {name} is a 0-d tensor of a graph being traced, whose value is not known yet, and "
                       f"it must be known to build the op; give a Python number (float(t) read before the compiled "
                       f"function is called: torch.compile traces even a tensor made outside it)")
    try:
        array = backend.to_numpy(value)
    # (each framework's error for a traced value read in Python, and no other: a TensorFlow symbolic tensor's
    # AttributeError, its NotImplementedError under Keras, a JAX tracer's TypeError)
    except (AttributeError, NotImplementedError, TypeError):
        raise traced from None
    try:
        return plain_number(owner, name, array)
    except ValueError:  # (a 0-d tensor of real numbers always reads as one, but where torch.compile traces the
        if "complex" in str(value.dtype):  # conversion: an array of its own, whose value is known only when the
            raise  # graph runs, stands for it)
        raise traced from None


def shown(value) -> str:
    """``value`` as an error message names it: a framework's tensor by its shape and dtype, with its value where it
    is 0-d and can be read now ('a tensor of shape (2,) and dtype float32', 'a 0-d tensor of dtype float32 holding
    0.1; give a Python number, float(t)'), in the same words on every backend (a tensor's repr differs by
    framework: ``tensor(...)``, ``<tf.Tensor ...>``, ``Array(...)``); anything else as its repr. A 0-d tensor
    holding NaN, a string or a complex number without the advice to give ``float(t)``, which gives no number that
    is taken."""
    if isinstance(value, (np.ndarray, np.generic)) or not (hasattr(value, "shape") and hasattr(value, "dtype")):
        return repr(value)
    from unidl import config  # (here, not at the top: config imports the backends' registry, which imports this)

    shape, dtype = tuple(value.shape), dtype_name(value.dtype)
    if shape:
        return f"a tensor of shape {shape} and dtype {dtype}"
    backend = config.backend()
    readable = backend.is_tensor(value) and backend.is_concrete(value) and "bfloat16" not in dtype
    # (bfloat16: Keras's to_numpy refuses it; a string tensor's is bytes, no array: read through np.asarray)
    number = np.asarray(backend.to_numpy(value))[()] if readable else None
    held = "" if number is None else f" holding {str(number)}"
    # float(t) only where it gives a number that is taken: not of NaN, a string or a complex number
    kind = None if number is None else np.asarray(number).dtype.kind
    refused = kind is not None and (kind not in "biuf" or kind == "f" and np.isnan(number))
    advice = "" if refused else "; give a Python number, float(t)"
    return f"a 0-d tensor of dtype {dtype}{held}{advice}"


def check_range(owner: str, name: str, value, low=0.0, high=math.inf, low_open=False, high_open=True) -> float:
    """``value`` as a Python float (a NumPy scalar or 0-d array too, as ``torch.optim`` takes them); ``ValueError``
    naming the hyperparameter unless it is a number (not a bool, not NaN) with low <= value < high (bounds as
    asked)."""
    number = real(value)
    if number is None:
        raise ValueError(f"{owner} {name} must be a number, got {shown(value)}")
    if math.isnan(number):
        raise ValueError(f"{owner} {name} must be a number, not NaN, got {shown(value)}")
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{owner} {name}={value!r} is invalid: it must lie in {left}{low}, {high}{right}")
    return number


def tensor_argument(value) -> bool:
    """Whether ``value`` is a framework's 0-d tensor (a scheduled value, a graph's input): a loss takes it as it is,
    unchecked (its value may be known only when a graph runs), as it did before its numbers were checked."""
    return (hasattr(value, "shape") and not isinstance(value, (np.ndarray, np.generic)) and hasattr(value, "dtype")
            and tuple(value.shape) == ())


def label_smoothing(owner: str, value) -> float:
    """A cross-entropy's ``label_smoothing`` as a Python float, checked to lie in [0, 1] (``ValueError`` otherwise, as
    PyTorch's above 1; a negative one, which PyTorch takes, unidl refuses too: it is no mixture with the uniform
    distribution); a 0-d tensor as it is (``tensor_argument``)."""
    if tensor_argument(value):
        return value
    number = real(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise ValueError(f"{owner} label_smoothing must lie in [0, 1], got {value!r}")
    return number


def huber_delta(owner: str, value) -> float:
    """A Huber loss's ``delta`` as a Python float, checked to be positive, as PyTorch's; a 0-d tensor as it is."""
    if tensor_argument(value):
        return value
    number = real(value)
    if number is None or not number > 0:
        raise ValueError(f"{owner} delta must be positive, got {value!r}")
    return number


def smooth_l1_beta(owner: str, value) -> float:
    """A smooth L1 loss's ``beta`` as a Python float, checked to be non-negative, as PyTorch's; a 0-d tensor as it
    is."""
    if tensor_argument(value):
        return value
    number = real(value)
    if number is None or not number >= 0:
        raise ValueError(f"{owner} beta must be non-negative, got {value!r}")
    return number


def probability(owner: str, name: str, value) -> float:
    """A dropout rate as a Python float (a NumPy scalar or 0-d array too), checked to lie in [0, 1]."""
    if type(value) is float and 0 <= value <= 1:
        return value
    return check_range(owner, name, value, 0, 1, high_open=False)
