"""``ud.ops.pad``'s rules, PyTorch's, checked before any framework sees the pad, so that one pad gives one result
or one error on every backend.

The frameworks disagree off the usual path: TensorFlow and JAX reflect-pad any axis where PyTorch pads only the
last one to three axes of a batched or unbatched input; JAX reflects a pad as long as its axis (PyTorch and
TensorFlow refuse it); a negative amount crops on PyTorch and is an error elsewhere. Here the amounts and the
sizes are checked as PyTorch checks them (sizes that a traced graph leaves unknown, when the graph runs), the
positive amounts go to the backend's pad and the negative ones crop by slicing, on every backend. PyTorch's
circular pad with a negative amount reads memory it does not own (its values are garbage), so that is refused.
"""

from __future__ import annotations

from unidl import arguments, config, dtype_kinds, input_checks, ops
from unidl.errors import PaddingLengthError

MODES = ("constant", "reflect", "replicate", "circular")


def checked_amounts(x, pad, mode, value) -> tuple:
    """``pad`` as a tuple of ints, after PyTorch's checks of the amounts against ``mode`` and ``x``'s rank; a
    ``ValueError`` (``TypeError`` for amounts that are not ints) naming what was wrong and what is valid."""
    if mode not in MODES:
        raise ValueError(f"pad mode {mode!r} is not one of {', '.join(map(repr, MODES))}")
    amounts = tuple(arguments.integer(p) for p in pad)  # NumPy integers and 0-d integer arrays as ints
    if None in amounts:
        raise TypeError(f"pad amounts must be ints, got {pad!r}")
    rank = len(x.shape)
    if len(amounts) % 2:
        raise PaddingLengthError(f"pad {amounts} has an odd length: it lists (before, after) pairs, last axis first")
    axes = len(amounts) // 2
    if axes > rank:
        raise ValueError(f"pad {amounts} pads {axes} axes, but the input has {rank}")
    if mode == "constant":
        return amounts
    if value != 0:
        raise ValueError(f"pad mode {mode!r} takes no value (got value={value!r}); the value is for mode 'constant'")
    if axes not in (1, 2, 3):
        raise PaddingLengthError(f"pad mode {mode!r} pads the last 1, 2 or 3 axes (a pad of length 2, 4 or 6), as "
                                 f"in PyTorch; got a pad of length {len(amounts)}")
    if rank not in (axes + 1, axes + 2):
        raise ValueError(f"pad mode {mode!r} pads the last 1, 2 or 3 axes of an input with one or two more axes (a "
                         f"pad of length 2 takes a 2-D or 3-D input, 4 a 3-D or 4-D one, 6 a 4-D or 5-D one), as in "
                         f"PyTorch; got a pad of length {len(amounts)} for a {rank}-D input")
    if mode == "circular" and min(amounts) < 0:
        raise ValueError(f"pad mode 'circular' takes no negative amounts, got {amounts} (PyTorch's circular pad "
                         f"gives wrong values for them); crop the input by slicing first")
    return amounts


def constant_value(x, value):
    """A constant pad's ``value`` as PyTorch's pad takes it for ``x``'s dtype: a bool for booleans (non-zero is
    True), an int truncated toward zero for integers, a ``ValueError`` for one outside their range (NaN too);
    floats' as given. (TensorFlow refused a float beside integers or booleans, Keras one with a fraction, and
    TensorFlow, Keras and JAX wrapped -1 around to 255 in uint8.)"""
    value = arguments.plain_number("pad", "value", value)
    if config.backend().is_tensor(value):
        value = _tensor_value(x, value)
    dtype = getattr(x, "dtype", None)
    if dtype is None or not isinstance(value, (int, float)):
        return value
    if dtype_kinds.dtype_name(dtype) == "bool":
        return bool(value)
    if isinstance(value, bool):
        return int(value)  # True is 1 beside numbers, as PyTorch takes it (TensorFlow refused True beside uint8)
    if not dtype_kinds.is_integer(dtype):
        return value
    input_checks.check_bounds("pad", x, (value,), floats=True, what="value")
    return int(value)


def _tensor_value(x, value):
    """A tensor given for a pad's value: the number it holds where it has one now (eagerly, as PyTorch's pad takes
    it), then taken as a number is; inside a graph, cast to ``x``'s dtype, which truncates toward zero and makes
    non-zero True as that rule does. There its range is not checked (a value outside an integer dtype's range wraps
    around as the framework casts it: eagerly, and for numbers, it is a ``ValueError``). A tensor of more than one
    value is a ``ValueError`` (TensorFlow and Keras refused a float one beside integers, JAX and torch took it)."""
    if len(tuple(value.shape)) != 0:
        raise ValueError(f"pad value must be a number or a 0-d tensor, got a tensor of rank {len(tuple(value.shape))}")
    name = dtype_kinds.dtype_name(value.dtype)
    number = bool if name == "bool" else int if dtype_kinds.is_integer(value.dtype) else float
    try:
        return number(value)
    except Exception:  # a graph's tensor (TensorFlow's, a JAX tracer): its value is known only when the graph runs
        return ops.cast(value, dtype_kinds.dtype_name(x.dtype))


def check_sizes(x, amounts, mode, owner=None):
    """``x`` after PyTorch's checks of the sizes against the amounts: a constant pad crops (its negative amounts
    first) no more than an axis holds; the other modes leave at least one entry; reflect and replicate take no empty
    axis but the batch axis (padded or not), a reflect pad is shorter than its axis, a circular one no longer.
    ``ShapeMismatchError`` now, or when a graph runs for sizes it leaves unknown, its message starting with
    ``owner`` (a layer's name, or a callable giving it: ``unidl.nn``'s padding layers) or else the pad's mode."""
    sizes = input_checks.sizes_of(x)
    rank, axes = len(sizes), len(amounts) // 2
    shape = input_checks.shape_template(rank)
    checks = []  # (holds, the axis, what is wrong)
    if mode in ("reflect", "replicate"):
        for axis in range(1 if rank == axes + 2 else 0, rank - axes):  # the channel axis (unpadded)
            checks.append((sizes[axis] > 0, axis, "is empty: only the batch axis may be"))
    for i in range(axes):
        axis, before, after = rank - 1 - i, amounts[2 * i], amounts[2 * i + 1]
        size, pair = sizes[axis], f"the pad ({before}, {after}) of axis {axis}"
        if mode == "constant":
            checks.append((size + min(before, 0) + min(after, 0) >= 0, axis, f"{pair} crops more than the axis holds"))
            continue
        if min(before, after) < 0:
            checks.append((size + before + after >= 1, axis, f"{pair} leaves no entry"))
        if mode == "reflect":
            checks.append((size > max(before, after), axis, f"{pair} is not shorter than the axis"))
        elif mode == "circular":
            checks.append((size >= max(before, after), axis, f"{pair} is longer than the axis"))
        else:
            checks.append((size > 0, axis, f"{pair} pads an empty axis"))
    for holds, axis, problem in checks:
        def template(problem=problem):
            named = f"pad mode {mode!r}" if owner is None else input_checks.literal(owner)
            return f"{named}: {problem} (axis size {{}}, input shape {shape})"

        x = input_checks.require(x, input_checks.holds(holds), template, (sizes[axis],) + tuple(sizes))
    return x


def crop(x, amounts):
    """``x`` cropped by the negative amounts of ``amounts`` (a pad, last axis first), by slicing."""
    rank = len(x.shape)
    index = [slice(None)] * rank
    for i in range(len(amounts) // 2):
        before, after = amounts[2 * i], amounts[2 * i + 1]
        index[rank - 1 - i] = slice(-before if before < 0 else None, after if after < 0 else None)
    return x[tuple(index)]
