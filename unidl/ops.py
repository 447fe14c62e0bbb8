"""Functional ops for code inside a user's own ``forward``: they run on the backend in force.

This file is also the op registry's source: each function below declares one op (its signature and
docstring are the contract every backend's ``ops`` module implements), and ``@op`` turns the
declaration into a dispatcher that calls the backend's native function (``torch.nn.functional``,
``tf.nn``, ``keras.ops``) on native tensors. ``interface.OPS`` is derived from these declarations;
adding an op means declaring it here and implementing it in each backend's ``ops.py``. The
arithmetic operators (+, -, *, /, @) of native tensors work as usual. Activations are NCHW,
kernels OIHW, on every backend. Ops are pure: stateful results (batch norm's running statistics)
are returned, randomness (dropout) takes an explicit generator.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np

from unidl import arguments, config, dtype_kinds, input_checks
from unidl.composites import composite
from unidl.errors import DtypeMismatchError, PoolPaddingError, ShapeMismatchError
from unidl.backends import op_registry
from unidl.backends.op_registry import CONVERTED, declare, optional_op
from unidl.precision import active_ops
from unidl.torch_names import TORCH_NAMES
from unidl.torch_names import generator_or_inplace as _generator_or_inplace


def _ops():
    # inside a mixed-precision forward on a backend without a framework autocast: the cast-inserting ops
    return active_ops() or config.backend().ops


# the parameters that take tensors, whose NumPy arrays, lists and numbers every public op converts as ``ud.tensor`` does
_TENSOR_PARAMETERS = frozenset({"x", "a", "b", "weight", "bias", "prediction", "target", "logits", "targets",
                                "running_mean", "running_var"})
# the parameters that take tensors (tuples of them: ``tensors``, ``masks``), where another framework's tensor is a
# ``BackendMismatchError`` in every public op (``unidl.native_tensors``)
_TENSOR_ARGUMENTS = _TENSOR_PARAMETERS | {"labels", "indices", "index", "condition", "like", "tensors", "minimum",
                                          "maximum", "probabilities", "log_probabilities", "pos_weight", "query",
                                          "key", "value", "attn_mask", "masks"}


def op(declaration=None, **options):
    """Declare an op (see ``unidl.backends.op_registry.declare``). ``indices``/``floating``: the parameters that
    take integer indices (a float or boolean one is a ``DtypeMismatchError``) or floating-point values (integers
    become the float dtype in force, as ``torch.exp`` makes them floats). ``summable``: the parameters whose booleans
    and other integers become int64, as ``torch.sum`` sums them. ``reduced``: a reduction's axes (an empty
    sequence is a ``ValueError``: PyTorch reduces every axis over it, NumPy none). ``axes``: the parameters that
    take an axis number (a NumPy integer becomes a Python int; a float or a bool is a ``ValueError``).
    ``arrays``: the parameters whose NumPy arrays and scalars, lists, tuples and Python numbers become tensors as
    ``ud.tensor`` makes them (floats of the dtype in force), as a module's call converts its arguments; by default
    a public op's parameters named in ``_TENSOR_PARAMETERS`` (torch's backend refused them all, the others took
    some, each in dtypes of its own), but those of ``indices`` (which check a NumPy array's dtype first); an op
    whose operands convert beside each other (``maximum``: ``input_checks.operands``) says ``arrays=()``.
    ``numeric``: the parameters that take numbers alone (booleans are a ``DtypeMismatchError``, as PyTorch has no
    boolean kernel). ``booleans_as_int64``: the parameters whose booleans become int64, as PyTorch's ``square``.
    ``dims`` (``new_dims``, ``permutation``): ``{parameter: tensor parameter}``, the parameters that take axes of
    that tensor (the axis the op inserts; ``permute``'s order of all of them): one out of range is an
    ``AxisOutOfRangeError`` on every backend (some wrapped it silently, ``% rank``), before the backend sees it.
    Another framework's tensor given to a public op's parameter named in ``_TENSOR_ARGUMENTS`` is a
    ``BackendMismatchError`` (``declare``'s ``tensors``)."""
    indices = options.pop("indices", ())
    arrays = options.pop("arrays", None)
    checks = {**{p: input_checks.check_integer for p in indices},
              **{p: input_checks.as_floating for p in options.pop("floating", ())},
              **{p: input_checks.as_summable for p in options.pop("summable", ())},
              **{p: arguments.reduced_axes for p in options.pop("reduced", ())},
              **{p: arguments.axis for p in options.pop("axes", ())},
              **{p: input_checks.as_numbers for p in options.pop("numeric", ())},
              **{p: input_checks.booleans_as_int64 for p in options.pop("booleans_as_int64", ())}}
    if checks:
        options["inputs"] = checks
    # ``dims``: {parameter: tensor parameter} whose axes it names; ``new_dims``: the axis an op inserts;
    # ``permutation``: permute's
    dims = {**{p: (t, input_checks.check_axes) for p, t in options.pop("dims", {}).items()},
            **{p: (t, input_checks.check_new_axis) for p, t in options.pop("new_dims", {}).items()},
            **{p: (t, input_checks.check_permutation) for p, t in options.pop("permutation", {}).items()}}
    if dims:
        options["dims"] = dims

    def register(declaration):
        public = options.get("public", True) and not options.get("optional")
        names = arrays
        if names is None:
            names = () if not public else [p for p in inspect.signature(declaration).parameters
                                           if p in _TENSOR_PARAMETERS and p not in indices]
        converters = {p: input_checks.value_as_tensor for p in names}
        return declare(_ops, arrays=converters, tensors=_tensor_arguments(declaration) if public else (),
                       torch_names=TORCH_NAMES.get(declaration.__name__) if public else None, **options)(declaration)

    return register if declaration is None else register(declaration)


def _tensor_arguments(function) -> tuple:
    """The parameters of ``function`` that take tensors (``_TENSOR_ARGUMENTS``)."""
    return tuple(p for p in inspect.signature(function).parameters if p in _TENSOR_ARGUMENTS)


def _composed(function=None, *, arrays=()):
    """A public function of ``ud.ops`` composed of declared ops (a loss, ``prelu``), taking another framework's tensor
    as the ops do: a ``BackendMismatchError`` naming it (``declare``'s ``tensors``; not an op a backend provides).
    ``arrays``: the parameters whose NumPy arrays, lists and numbers become tensors first, as an op's do."""
    if function is None:
        return lambda function: _composed(function, arrays=arrays)
    converters = {p: input_checks.value_as_tensor for p in arrays} or None
    return op_registry.composed(_ops, function, _tensor_arguments(function), converters,
                                TORCH_NAMES.get(function.__name__))


@op(dispatch=False)
def linear(x, weight, bias=None):
    """x @ weight.T + bias, weight of shape (out, in). Floats of another dtype than ``weight``'s are a
    ``DtypeMismatchError`` outside ``ud.Precision``'s autocast, as PyTorch's (JAX promoted them)."""
    input_checks.check_parameters_dtype("linear", x, weight)
    if bias is not None:
        input_checks.check_parameters_dtype("linear", bias, weight, what="bias")
    return _ops().linear(x, weight, bias)


@op(dispatch=False, arrays=())
def matmul(a, b):
    """Matrix product with broadcasting over leading axes, as ``torch.matmul``: a 1-d operand is a row before the
    other (a column after it), its axis dropped, two of them a dot product. Integers times floats is a
    ``DtypeMismatchError`` on every backend (PyTorch and TensorFlow refuse it in their own words, JAX and Keras
    promoted the integers). A NumPy array or list beside a tensor converts as ``maximum``'s operands do. A 0-d
    operand, a contraction of two sizes or batch axes that do not broadcast are a ``ShapeMismatchError`` naming both
    shapes, as ``maximum``'s (known sizes)."""
    if isinstance(a, CONVERTED) or isinstance(b, CONVERTED):
        a, b = input_checks.operands("matmul", a, b, numbers=False)
    input_checks.check_same_kind("matmul", a, b)
    a = input_checks.check_matmul_shapes(a, b)
    if active_ops() is None:  # (a mixed-precision scope casts floats of two widths first)
        input_checks.check_matmul_dtypes(a, b)
    return _ops().matmul(a, b)


@op(numeric=("x",))
def relu(x):
    """max(x, 0). Booleans are a ``DtypeMismatchError``, as in PyTorch."""


@op(floating=("x",), dispatch=False)
def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x. ``negative_slope``: a number, or a 0-d tensor taken as the number it
    holds (no gradient reaches it), eagerly and inside graphs, as ``torch.nn.functional.leaky_relu`` takes them
    (TensorFlow's kernel refused a tensor); a tensor of more axes is a ``TypeError``, as PyTorch's."""
    negative_slope = _number_or_tensor("leaky_relu", "negative_slope", negative_slope, x,
                                       "; use prelu for a slope per channel")
    return _ops().leaky_relu(x, negative_slope)


def _number_or_tensor(owner, name, value, like, hint=""):
    """An activation's number that its kernel takes as a tensor too (``leaky_relu``'s ``negative_slope``,
    ``elu``'s ``alpha``, ``softplus``'s ``beta`` and ``threshold``): a NumPy scalar or 0-d array as the Python
    number it holds (``arguments.plain_number``), a 0-d tensor of the backend in force as a tensor in ``like``'s
    dtype with no gradient, eagerly and inside graphs (where its value is known only when the graph runs: a
    variable read there is its value then), as PyTorch takes one; a tensor of more axes is a ``TypeError``."""
    value = arguments.plain_number(owner, name, value)
    if not config.backend().is_tensor(value):
        return value
    if len(tuple(value.shape)) != 0:
        raise TypeError(f"{owner} {name} must be a number or a 0-d tensor, got a tensor of rank "
                        f"{len(tuple(value.shape))}{hint}")
    return cast_like(stop_gradient(value), like)


@op(floating=("x",))
def sigmoid(x):
    """1 / (1 + exp(-x))."""


@op(floating=("x",))
def tanh(x):
    """Hyperbolic tangent."""


@op(floating=("x",), axes=("dim",), dims={"dim": "x"}, dispatch=False)
def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) along ``dim``; ``dim=None`` is PyTorch's implicit axis (``implicit_softmax_dim``)."""
    return _ops().softmax(x, implicit_softmax_dim("softmax", x) if dim is None else dim)


@op(floating=("x",), axes=("dim",), dims={"dim": "x"}, dispatch=False)
def log_softmax(x, dim=-1):
    """log(softmax(x)) computed stably along ``dim``; ``dim=None`` is PyTorch's implicit axis."""
    return _ops().log_softmax(x, implicit_softmax_dim("log_softmax", x) if dim is None else dim)


def implicit_softmax_dim(owner: str, x) -> int:
    """PyTorch's axis for a softmax given no ``dim`` (``torch.nn.functional._get_softmax_dim``): 0 for inputs of rank
    0, 1 or 3, else 1, with PyTorch's warning to give it (each framework took None otherwise: the last axis on
    TensorFlow, every axis on JAX, torch's backend a ``TypeError``)."""
    warnings.warn(f"{owner}: implicit dimension choice (dim=None) as PyTorch's, deprecated there; give dim",
                  UserWarning, stacklevel=3)
    return 0 if len(x.shape) in (0, 1, 3) else 1


@op(dispatch=False)
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation of NCHW ``x`` with an OIHW ``weight`` of shape (out, in / groups, kh, kw), as
    ``torch.nn.functional.conv2d``: padding int, pair, 'same' or 'valid'; ``dilation`` spaces the kernel's
    taps; ``groups`` splits the channels into that many independent convolutions. A kernel larger than the
    padded input is a ``ShapeMismatchError`` (inside graphs too, where the sizes are known only when it runs).
    Sizes may be NumPy integers (taken as ints, as PyTorch takes them); a float or a bool is a ``ValueError``.
    One sample (C, H, W) gives its (out, H', W'), as PyTorch's; input of another rank, or a weight of another rank
    than 4, is a ``ShapeMismatchError``. Integers give integers, as PyTorch's CPU kernel (``_integer_conv2d``)."""
    stride, dilation, padding, groups = _conv_arguments("conv2d", stride, dilation, padding, groups)
    input_checks.check_parameters_dtype("conv2d", x, weight)
    x = _check_conv_ranks("conv2d", x, weight, 2)
    if bias is not None:  # (jax promoted the two; tensorflow and keras raised in their own words)
        input_checks.check_parameters_dtype("conv2d", bias, weight, what="bias")
        bias = input_checks.check_conv_bias("conv2d", bias, weight, groups)
    return _one_sample_as_batch(x, 2, lambda batch: _conv2d(*input_checks.check_conv_channels(
        "conv2d", batch, weight, groups), bias, stride, padding, dilation, groups))


def _conv2d(x, weight, bias, stride, padding, dilation, groups):
    """``conv2d`` over size arguments already checked (the layers' and ``spatial_ops``' own calls, which would
    otherwise check them again on every forward)."""
    if dtype_kinds.is_integer(x.dtype) and dtype_kinds.is_integer(weight.dtype):
        return _integer_conv2d(x, weight, bias, stride, padding, dilation, groups)
    if padding != "same" and len(x.shape) == 4 and len(weight.shape) == 4:
        kernel = input_checks.sizes_of(weight)[2:]
        spans = [d * (k - 1) + 1 for k, d in zip(kernel, _pair(dilation))]
        paddings = ("valid", "valid") if padding == "valid" else _pair(padding)
        x = input_checks.check_window_fits("conv2d", x, spans, paddings, "use a smaller kernel or dilation, more "
                                                                          "padding or a larger input")
    return _ops().conv2d(x, weight, bias, stride, padding, dilation, groups)


def _integer_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """The convolution of integers, as PyTorch's CPU kernel computes it (TensorFlow has no integer kernel, torch none
    on CUDA): in float64, exact while every sum stays within 2 ** 53, then through int64 back to ``x``'s dtype
    (wrapping as integer arithmetic wraps)."""
    wide = [None if t is None else cast(t, "float64") for t in (x, weight, bias)]
    return cast(cast(_conv2d(*wide, stride, padding, dilation, groups), "int64"), dtype_kinds.dtype_name(x.dtype))


def _probability(name, p):
    """A dropout probability as a Python float (a NumPy scalar or 0-d array too); outside [0, 1], a bool or not a
    number at all is a ``ValueError``, as ``torch.nn.functional.dropout`` refuses it. A framework's tensor is left to
    the backend."""
    if type(p) is float and 0 <= p <= 1:
        return p
    if hasattr(p, "shape") and not isinstance(p, numbers.Number) and type(p).__module__ != "numpy":
        return p
    return arguments.probability(name, "p", p)


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv_arguments(name, stride, dilation, padding, groups, rank=2):
    """A convolution's size arguments as Python ints (or tuples of them) the backends take as they are, checked
    once here: NumPy integers become ints; floats, bools, sizes below 1 (below 0 for padding) and 'same' padding
    of a stride other than 1 are ``ValueError``s naming the op, as the layers' constructors raise them."""
    stride = arguments.int_or_ints(name, "stride", stride, rank)
    dilation = arguments.int_or_ints(name, "dilation", dilation, rank)
    if not (isinstance(padding, str) and padding in ("same", "valid")):
        padding = arguments.int_or_ints(name, "padding", padding, rank, minimum=0)
    arguments.check_same_padding(name, padding, stride)  # (TensorFlow, JAX and Keras padded as TensorFlow's SAME)
    return stride, dilation, padding, arguments.positive_int(name, "groups", groups)


def _pool_arguments(name, kernel_size, stride, padding):
    """A pooling window's (kernel, stride, padding) as Python ints or pairs of them (stride None stays None),
    checked as ``_conv_arguments`` checks a convolution's. An empty stride (``[]``) is the kernel size, as in
    PyTorch (whose signature's default it is)."""
    kernel_size = arguments.int_or_ints(name, "kernel_size", kernel_size, 2)
    stride = None if stride is None or arguments.sequence(stride) == () else \
        arguments.int_or_ints(name, "stride", stride, 2)
    return kernel_size, stride, arguments.int_or_ints(name, "padding", padding, 2, minimum=0)


def _checked_pool(name, x, kernel_size, padding, dilation=1):
    """``x`` after the checks PyTorch makes of a pooling window and its input: padding at most half the kernel, a
    window (its ``dilation``'s span) no larger than the padded input, numbers (an average of floats; see
    ``input_checks.check_poolable``)."""
    input_checks.check_poolable(name, x, average=name == "avg_pool2d")
    kernel, pads = _pair(kernel_size), _pair(padding)
    if len(pads) != 2 or any(not isinstance(p, int) or p < 0 or 2 * p > k for p, k in zip(pads, kernel)):
        raise PoolPaddingError(f"{name} padding {padding!r} must be non-negative and at most half the kernel size "
                               f"{kernel}")
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, _pair(dilation)))
    return input_checks.check_window_fits(name, x, spans, pads, "use a smaller kernel, more padding or a larger input")


@op(dispatch=False)
def max_pool2d(x, kernel_size, stride=None, padding=0, *, dilation=1, ceil_mode=False, return_indices=False):
    """Maximum over windows of NCHW ``x``, or of one sample (C, H, W) as PyTorch takes it (stride defaults to the
    kernel size; padding counts as -inf).
    ``ceil_mode``: a last, partial window where PyTorch has one (it starts inside the input or its left padding).
    ``return_indices``: ``(output, indices)``, each index (int64) the position of the window's maximum in the
    flattened H * W plane of its sample and channel, as PyTorch gives it (the input of ``max_unpool2d``).
    ``dilation``: the window's taps that far apart (an int or a pair), as PyTorch's.
    A window that holds NaN pools to NaN, its gradient and index going to its last NaN in row-major order, as
    PyTorch's kernels do, on every backend (TensorFlow's own skip NaN)."""
    kernel_size, stride, padding = _pool_arguments("max_pool2d", kernel_size, stride, padding)
    dilation = arguments.int_or_ints("max_pool2d", "dilation", dilation, 2)
    x = _check_pool_rank("max_pool2d", x)
    return _one_sample_as_batch(x, 2, lambda batch: _max_pool2d(batch, kernel_size, stride, padding, ceil_mode,
                                                               return_indices, dilation))


_LAYOUTS = {1: ("(N, C, L)", "(C, L)", "k"), 2: ("(N, C, H, W)", "(C, H, W)", "kh, kw")}


def _check_pool_rank(name, x, spatial: int = 2):
    """``x``, after checking that it is a batch (N, C, *spatial) or one sample (C, *spatial) of ``spatial`` axes, as
    PyTorch's poolings and convolutions take them: another rank is a ``ShapeMismatchError`` (the frameworks raised
    an ``IndexError`` or errors of their own). A graph's tensor of unknown rank is left as it is."""
    rank = _rank(x)
    if rank is not None and rank not in (spatial + 1, spatial + 2):
        batched, one, _ = _LAYOUTS[spatial]
        raise ShapeMismatchError(f"{name} expected input of shape {batched} or {one}, received input of "
                                 f"{rank} axes")  # (no sizes: a graph may not know them yet)
    return x


def _check_conv_ranks(name, x, weight, spatial: int, transposed: bool = False):
    """``x``, after ``_check_pool_rank`` and checking that ``weight`` has ``spatial + 2`` axes, (out, in / groups,
    *kernel) (``transposed``: (in, out / groups, *kernel)), as PyTorch's convolutions: another is a
    ``ShapeMismatchError`` (the frameworks raised errors of their own, torch's naming another op)."""
    rank = _rank(weight)
    if rank is not None and rank != spatial + 2:
        channels = "in, out / groups" if transposed else "out, in / groups"
        raise ShapeMismatchError(f"{name} expected a weight of shape ({channels}, {_LAYOUTS[spatial][2]}), received "
                                 f"a weight of {rank} axes")
    return _check_pool_rank(name, x, spatial)


def _one_sample_as_batch(x, spatial: int, compute):
    """``compute(x)`` for ``x`` of shape (N, C, *spatial) (``spatial`` axes); for one sample (C, *spatial), computed
    as a batch of one and that axis dropped from each output (a tuple's too), as ``torch.nn.functional``'s
    poolings and ``torch.nn``'s convolutions and poolings take one (the layers' ``unbatched``)."""
    if _rank(x) != spatial + 1:  # (None: a graph's tensor of unknown rank, taken as a batch)
        return compute(x)
    out = compute(unsqueeze(x, 0))
    return tuple(squeeze(o, 0) for o in out) if isinstance(out, tuple) else squeeze(out, 0)


def _max_pool2d(x, kernel_size, stride, padding, ceil_mode=False, return_indices=False, dilation=1):
    """``max_pool2d`` over a window already checked (the layers' and ``spatial_ops``' own calls). A dilated window
    is pooled from its taps' strided views on every backend (the frameworks' own poolings have no dilation)."""
    x = _checked_pool("max_pool2d", x, kernel_size, padding, dilation)
    if return_indices or _pair(dilation) != (1, 1):
        from unidl import spatial_ops

        pooled = spatial_ops.max_pool2d_with_indices(x, kernel_size, stride, padding, ceil_mode, dilation)
        return pooled if return_indices else pooled[0]
    if ceil_mode:
        from unidl import spatial_ops

        return spatial_ops.pool2d_with_options("max", x, kernel_size, stride, padding, ceil_mode)
    return _ops().max_pool2d(x, kernel_size, stride, padding)


@op(dispatch=False)
def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """The partial inverse of ``max_pool2d(..., return_indices=True)``, as ``torch.nn.functional.max_unpool2d``:
    a zero NCHW tensor of (H, W) = (h - 1) * stride - 2 * padding + kernel (or ``output_size``'s last two entries,
    strictly within ``stride`` of that) with each value of ``x`` written at its index into its sample's and
    channel's flattened plane. The gradient of each value is the output's gradient at its index (every value
    that shares an index gets it). An index outside the plane is an ``IndexOutOfRangeError``; indices of another
    shape than ``x``'s, or an inconsistent ``output_size``, a ``ShapeMismatchError``; ``output_size``'s sizes may
    be ``ud.ops.shape``'s scalar tensors."""
    from unidl import spatial_ops

    kernel_size, stride, padding = _pool_arguments("max_unpool2d", kernel_size, stride, padding)
    indices = input_checks.check_integer("max_unpool2d", "indices", indices)
    if len(x.shape) != 4 or len(indices.shape) != 4:
        raise ValueError(f"max_unpool2d takes (N, C, h, w) input and indices, got shapes {tuple(x.shape)} and "
                         f"{tuple(indices.shape)}")
    x = input_checks.check_same_shape("max_unpool2d", x, indices, names=("input", "indices"))  # (the framework's
    # own scatter error, on every backend: PyTorch's names them too)
    sizes, x = spatial_ops.unpooled_size("max_unpool2d", x, kernel_size, stride, padding, output_size)
    indices = _ops().check_index(indices, sizes[0] * sizes[1], "max_unpool2d index")
    return _ops().max_unpool2d(x, indices, kernel_size, stride, padding, sizes)


@op(dispatch=False)
def avg_pool2d(x, kernel_size, stride=None, padding=0, *, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over windows of NCHW ``x`` (or of one sample (C, H, W)), as ``torch.nn.functional.avg_pool2d``: zero
    padding counts in the divisor
    unless ``count_include_pad=False``; ``ceil_mode`` adds PyTorch's last, partial windows (their divisor never
    counts what lies past the padding); ``divisor_override`` divides every window's sum by that number."""
    kernel_size, stride, padding = _pool_arguments("avg_pool2d", kernel_size, stride, padding)
    if divisor_override is not None:
        divisor_override = arguments.positive_int("avg_pool2d", "divisor_override", divisor_override)
    x = _check_pool_rank("avg_pool2d", x)
    return _one_sample_as_batch(x, 2, lambda batch: _avg_pool2d(batch, kernel_size, stride, padding, ceil_mode,
                                                               count_include_pad, divisor_override))


def _avg_pool2d(x, kernel_size, stride, padding, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """``avg_pool2d`` over a window and divisor already checked (the layers' and ``spatial_ops``' own calls)."""
    x = _checked_pool("avg_pool2d", x, kernel_size, padding)
    if ceil_mode or not count_include_pad or divisor_override is not None:
        from unidl import spatial_ops

        return spatial_ops.pool2d_with_options("avg", x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                               divisor_override)
    return _ops().avg_pool2d(x, kernel_size, stride, padding)


@op(dispatch=False)
def dropout(x, p=0.5, training=True, generator=None):
    """Zero elements with probability ``p`` (0.5 by default, as ``torch.nn.functional.dropout``'s) and scale the
    rest by 1/(1-p) when ``training``.

    The mask is drawn from ``generator``: the backend's own generator (``Backend.generator()``,
    seeded by ``ud.manual_seed``) when None, or one of the framework's generators passed explicitly."""
    generator = _generator_or_inplace("dropout", generator)
    p = _probability("dropout", p)
    ops = _ops()
    if training and p:  # (integers: floats of the dtype in force, as the losses and float math take them)
        x = input_checks.as_floating("dropout", "x", x)
    if generator is None and training and p:
        generator = config.backend().generator()
    return ops.dropout(x, p, training, generator)


@op(public=False)
def uniform_like(x, low, high, generator):
    """A tensor of ``x``'s shape and float dtype of values drawn uniformly from [low, high) (``low`` and ``high``
    Python floats) from ``generator``, the backend's own (``Backend.generator``), as ``dropout`` draws its mask: a
    fresh draw at every call, inside compiled steps too (``RReLU``'s slopes)."""


@op(dispatch=False)
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Normalise NCHW (or (N, C), (N, C, L)) ``x`` per channel; returns ``(y, new_running_mean, new_running_var)``.

    Training: the batch's mean and biased variance normalise ``x``; the new running statistics are
    ``(1 - momentum) * running + momentum * batch`` (unbiased variance), as in PyTorch; ``momentum`` is a
    number or a scalar tensor of the statistics' dtype (``BatchNorm(momentum=None)``'s ``1 / n``). Eval: the
    running statistics normalise ``x`` and come back unchanged. Pure: the arguments are never
    modified; ``nn.BatchNorm*`` writes the returned statistics into its buffers. Training on one value per
    channel is a ``ShapeMismatchError``, as in PyTorch. Training without running statistics (None, as PyTorch's
    ``F.batch_norm`` takes them) normalises by the batch's and gives None for them; outside training they are
    needed (a ``ValueError``, as in PyTorch). Integer input: floats of the dtype in force. The running statistics,
    ``weight`` and ``bias`` have shape (C,): another is a ``ShapeMismatchError`` naming it, as PyTorch's (never
    broadcast)."""
    momentum = arguments.plain_number("batch_norm", "momentum", momentum)
    eps = arguments.plain_number("batch_norm", "eps", eps)
    x = input_checks.check_channels_input("batch_norm", input_checks.as_floating("batch_norm", "x", x))
    x = input_checks.check_parameter_shapes("batch_norm", x, {"running_mean": running_mean, "running_var": running_var,
                                                              "weight": weight, "bias": bias},
                                            (input_checks.sizes_of(x)[1],), "one value per channel of the input")
    if running_mean is None or running_var is None:
        if not training:
            raise ValueError("batch_norm: running_mean and running_var are needed outside training, which "
                             "normalises by them (PyTorch refuses None there too)")
        like = dtype_kinds.dtype_name(next((t for t in (running_mean, running_var, weight) if t is not None), x).dtype)
        channels = (shape(x)[1],)
        y, new_mean, new_var = batch_norm(
            x, zeros(channels, dtype=like) if running_mean is None else running_mean,
            ones(channels, dtype=like) if running_var is None else running_var, weight, bias, True, momentum, eps)
        return y, None if running_mean is None else new_mean, None if running_var is None else new_var
    if training:
        x = input_checks.check_batch_statistics("batch_norm", x)
    if input_checks.normalization_parameters("batch_norm", x, {"running_mean": running_mean,
                                                                "running_var": running_var, "weight": weight,
                                                                "bias": bias}):
        y, running_mean, running_var = _ops().batch_norm(cast(x, "float32"), running_mean, running_var, weight, bias,
                                                         training, momentum, eps)
        return cast_like(y, x), running_mean, running_var
    return _ops().batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


@op(dispatch=False)
def reshape(x, shape):
    """View of ``x`` with a new shape (-1 infers one axis). A shape ``torch.reshape`` refuses (another number of
    elements, two -1s, a size below -1, a -1 beside a 0) is one ``ShapeMismatchError`` naming it and the input's
    shape on every backend, eagerly and inside ``ud.function`` (each framework raised its own error)."""
    x, shape = input_checks.check_reshape("reshape", x, shape)
    return _ops().reshape(x, shape)


@op(dispatch=False)
def flatten(x, start_dim=1):
    """Collapse the axes from ``start_dim`` on, in row-major (NCHW) order (``start_dim`` 0: one axis). A
    ``start_dim`` outside the input's axes is a ``ShapeMismatchError`` (PyTorch raised an ``IndexError``, the
    other backends added an axis of size 1)."""
    return _ops().flatten(x, input_checks.start_axis("flatten", x, start_dim))


@op(dims={"axis": "tensors"}, dispatch=False)
def concat(tensors, axis=0):
    """Join tensors along an existing axis; tensors of several dtypes are promoted as ``torch.cat`` promotes them
    (TensorFlow refused them). Tensors of two ranks, or of two sizes off ``axis``, are a ``ShapeMismatchError``
    naming their shapes (known sizes), as PyTorch refuses them."""
    tensors = input_checks.joined("concat", _promoted_together("concat", tensors), axis)
    return _ops().concat(tensors, axis)


@op(new_dims={"axis": "tensors"}, dispatch=False)
def stack(tensors, axis=0):
    """Join tensors along a new axis; tensors of several dtypes are promoted as ``torch.stack`` promotes them
    (TensorFlow refused them). Tensors of two shapes are a ``ShapeMismatchError`` naming them (known sizes)."""
    tensors = input_checks.joined("stack", _promoted_together("stack", tensors), None)
    return _ops().stack(tensors, axis)


def _promoted_together(name, tensors):
    """``tensors`` (a sequence), those of a dtype other than the one ``torch.cat`` gives them all cast to it (a float
    over an integer over a bool, the wider of one kind: ``_torch_result_dtype``); as they are where they share one,
    or where one has no dtype (a list) or a dtype of another kind."""
    tensors = list(tensors)
    if any(isinstance(t, CONVERTED) for t in tensors):  # NumPy arrays, lists: as ``input_checks.operands``
        beside = next((t for t in tensors if not isinstance(t, CONVERTED) and dtype_kinds.holds_floats(t)), None)
        tensors = [input_checks.operand(name, "tensors", t, beside) if isinstance(t, CONVERTED) else t
                   for t in tensors]
    dtypes = [getattr(t, "dtype", None) for t in tensors]
    if len(set(dtypes)) < 2 or any(d is None for d in dtypes):  # (not ``None in``: a NumPy dtype equals None)
        return tensors
    names = [dtype_kinds.dtype_name(d) for d in dtypes]
    result = names[0]
    for name in names[1:]:
        result = result if name == result else _torch_result_dtype(result, False, name, False)
        if result is None:
            return tensors
    return [t if name == result else cast(t, result) for t, name in zip(tensors, names)]


@op(reduced=("axis",), dims={"axis": "x"})
def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes when None; ``keepdims`` keeps them as size 1 either way)."""


@op(summable=("x",), reduced=("axis",), dims={"axis": "x"})
def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (all axes when None; ``keepdims`` keeps them as size 1 either way). Booleans and integers
    are summed in int64, as ``torch.sum`` sums them."""


@op(dispatch=False)
def clip(x, minimum=None, maximum=None):
    """Limit values to [minimum, maximum] (either bound may be None). Integers clipped to a float bound are floats
    of the dtype in force; an integer bound outside the range of integer ``x``'s dtype is a ``ValueError``.
    Booleans clipped to a number are int64 (floats of the dtype in force for a float bound), as in PyTorch; with
    boolean numbers alone as bounds they are a ``DtypeMismatchError``, and with a tensor bound they take the dtype
    ``torch.clamp`` gives them (booleans beside booleans, int8 beside int8). No bound at all is a ``ValueError``,
    as in PyTorch (the other frameworks gave ``x`` back)."""
    if minimum is None and maximum is None:
        raise ValueError("clip: give minimum or maximum (or both), as torch.clip needs one; both were None")
    minimum, maximum = arguments.plain_number("clip", "minimum", minimum), arguments.plain_number("clip", "maximum",
                                                                                                   maximum)
    if minimum is not None and maximum is not None and _is_number(minimum) != _is_number(maximum) and (
            len(getattr(minimum, "shape", ())) or len(getattr(maximum, "shape", ()))):  # (a 0-d tensor is a number)
        kinds = ("a number", "a tensor") if _is_number(minimum) else ("a tensor", "a number")
        raise TypeError(f"clip takes two numbers or two tensors as bounds (or one and None), as torch.clip, got "
                        f"{kinds[0]} minimum and {kinds[1]} maximum")
    dtype = getattr(x, "dtype", None)
    if dtype is not None and dtype_kinds.dtype_name(dtype) == "bool":
        return _clip_booleans(x, minimum, maximum)
    if dtype is not None:
        minimum, maximum = (_clip_bound(x, name, bound) for name, bound in (("minimum", minimum),
                                                                            ("maximum", maximum)))
    input_checks.check_bounds("clip", x, (minimum, maximum), floats=False)
    return _ops().clip(x, minimum, maximum)


def _clip_bound(x, name, bound):
    """A tensor ``bound`` of ``clip``: a NumPy array or a list as values in ``x``'s dtype (rounded once); a tensor of
    another dtype than ``x``'s a ``DtypeMismatchError`` (``torch.clamp`` promotes the three by rules of their ranks
    and kinds; TensorFlow and JAX kept ``x``'s dtype, Keras refused it)."""
    if bound is None or _is_number(bound):
        return int(bound) if isinstance(bound, bool) else bound  # (True beside int8: Keras-on-TensorFlow refused it)
    if isinstance(bound, (np.ndarray, list, tuple)):
        return cast_like(np.asarray(bound), x)
    given, held = dtype_kinds.dtype_name(bound.dtype), dtype_kinds.dtype_name(x.dtype)
    if given != held:
        raise DtypeMismatchError(f"clip of {held} input to a {given} {name}: give the bounds the input's dtype, "
                                 f"ud.ops.cast({name}, '{held}')")
    return bound


def _clip_booleans(x, low, high):
    """``clip`` of booleans ``x``, as ``torch.clamp`` gives it: to a tensor bound, the maximum and minimum of the
    two promoted as torch promotes them (booleans: their or, then their and); to numbers, int64 (or floats for a
    float bound) clipped; to boolean numbers alone, a ``DtypeMismatchError`` (torch has no kernel for it)."""
    bounds = [bound for bound in (low, high) if bound is not None]
    if any(not _is_number(bound) for bound in bounds):
        x = x if low is None else maximum(x, low)
        return x if high is None else minimum(x, high)
    if all(isinstance(bound, bool) for bound in bounds):
        input_checks.check_numbers("clip", x)
    x = input_checks.booleans_as_int64("clip", "x", x)
    input_checks.check_bounds("clip", x, (low, high), floats=False)
    return _ops().clip(x, low, high)


@op(floating=("x",))
def exp(x):
    """e ** x, element-wise."""


@op(floating=("x",))
def log(x):
    """Natural logarithm, element-wise."""


@op(floating=("x",))
def sqrt(x):
    """Square root, element-wise."""


@op
def stop_gradient(x):
    """``x``, through which no gradient flows (``torch.Tensor.detach``, ``tf.stop_gradient``,
    ``jax.lax.stop_gradient``): a value the gradient treats as a constant."""


@op(numeric=("x",))
def abs(x):
    """Absolute value, element-wise. Booleans are a ``DtypeMismatchError``, as in PyTorch."""


@op(booleans_as_int64=("x",))
def square(x):
    """x * x, element-wise; booleans give int64 0 and 1, as in PyTorch."""


@op(dispatch=False)
def sign(x):
    """-1, 0 or 1 by the sign of each element. Booleans are their own sign, as in PyTorch (TensorFlow, Keras and
    JAX refused them); NaN and -0.0 are 0 (+0.0), as in PyTorch (TensorFlow, Keras and JAX gave NaN and -0.0)."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and dtype_kinds.dtype_name(dtype) == "bool":
        return cast(input_checks.as_tensor("sign", "x", x), "bool")
    signs = _ops().sign(x)
    if dtype is None or not dtype_kinds.is_floating(dtype):
        return signs
    return where((x > 0) | (x < 0), signs, zeros_like(signs))  # (neither: NaN or a zero of either sign)


@op(dispatch=False, arrays=())
def maximum(a, b):
    """Element-wise maximum, broadcasting as ``torch.maximum``: a NaN in either input gives NaN. The value is the
    framework's own maximum, bit for bit; the gradient is PyTorch's on every backend (TensorFlow's and JAX's own
    differ): all of it to the larger input, half to each where the two are equal, all of it to both where either
    is NaN, summed over the axes an input was broadcast along (a bound of shape (1, C) against (N, C) gets the
    sum of its column's shares). Integers give integers and no gradient, booleans their or. A Python or NumPy
    number on either side is typed as in ``x + 0.5`` (``_numbers_as_torch``): a float beside integers or
    booleans gives the float dtype in force, an int beside booleans int64, else the tensor's dtype (an integer
    outside its range is a ``ValueError``); tensors of two dtypes promote as
    ``torch.maximum`` promotes them (an integer and a float tensor: the float's dtype; a 0-dim tensor takes a
    dimensioned one's dtype of the same kind), decided here for every backend (see ``_torch_result_dtype``).
    Sizes that do not broadcast are a ``ShapeMismatchError`` naming both shapes, eagerly and in every graph (a
    TensorFlow graph's sizes unknown until it runs: when it runs, with the same message)."""
    if isinstance(a, CONVERTED) or isinstance(b, CONVERTED):
        a, b = input_checks.operands("maximum", a, b)
    return _ops().maximum(*_typed_as_torch("maximum", *_check_broadcastable("maximum", a, b)))


@op(name="framework_maximum", optional=True, public=False)
def _framework_maximum(a, b):
    """The framework's own element-wise maximum, whatever its gradient at a tie or a NaN, for internal callers
    whose ties carry no gradient (attention's floor under its masked scores, gradient clipping's norms), where
    ``maximum``'s PyTorch rule would add graph ops for nothing. A backend whose ``maximum`` is the framework's
    own (torch) lacks it; callers fall back to ``maximum``."""


@op(name="size_keys", optional=True, public=False)
def _size_keys(x):
    """``x``'s sizes as keys, one per axis: an int where a traced graph knows the size, else a hashable key that
    is equal for two sizes the graph knows to be equal without reading them (``x > 0`` beside ``x``: the results of
    element-wise ops of one tensor and of scalars; two ``arange(n)``), so that a check of sizes that agree by
    construction (``where``'s, ``concat``'s) adds nothing to the graph. A backend whose sizes are always known while
    it traces lacks it."""


@op(name="sizes_hold", optional=True, public=False)
def _sizes_hold(relation, a, b, axes, agreeing):
    """Whether ``relation`` ('equal', 'broadcast': equal or either 1, 'broadcasts_to': ``a``'s 1 or ``b``'s,
    'at_most') holds between the sizes of ``a`` and ``b`` (tuples of one length: ints, and scalar tensors where a
    traced graph leaves a size unknown) on each of ``axes``, where it is known to hold on ``agreeing`` (comparing
    those too changes nothing): a bool where that is decided while tracing, else one boolean scalar tensor
    (``input_checks.sizes_hold``). A backend that compares two shape vectors in fewer graph ops than one
    comparison per size has it; the others' sizes are compared one by one."""


@op(name="sizes_broadcast", optional=True, public=False)
def _sizes_broadcast(sizes):
    """Whether tensors whose sizes are ``sizes`` (a tuple of one tuple per tensor: ints, and scalar tensors where a
    traced graph leaves a size unknown) broadcast together (on each axis every size 1 or one same size): one boolean
    scalar tensor, or None where the backend cannot compare them at once (``input_checks.check_broadcast`` then
    compares them pair by pair). A backend that compares the stacked shape vectors of three tensors in fewer graph
    ops than three pairwise comparisons has it."""


@op(name="exact_divide", optional=True, public=False)
def _exact_divide(a, b):
    """``a / b`` rounded once, as IEEE division, for internal callers that divide a graph's size by a known one
    (``interpolate``'s scales): a backend whose graph optimizer rewrites a division by a constant into a product
    with its reciprocal, one unit off (TensorFlow's Grappler: (4 - 1) / 5 gave 0.6000000000000001), has it; the
    others lack it and callers divide."""


def _typed_as_torch(name, a, b):
    """``a`` and ``b`` typed as PyTorch types a binary op's inputs: a number beside a tensor by
    ``_numbers_as_torch`` (left a number, which every backend gives the tensor's dtype), two tensors by
    ``_promoted_as_torch``."""
    if _is_number(a) or _is_number(b):
        return _numbers_as_torch(name, a, b, as_tensor=False)
    return _promoted_as_torch(a, b)


def _is_number(value) -> bool:
    """Whether ``value`` is a Python or NumPy number (NumPy's bool is no ``numbers.Number``)."""
    return isinstance(value, (numbers.Number, np.bool_))


def _promoted_as_torch(a, b, broadcast: bool = False):
    """``a`` and ``b``, tensors (or arrays) of two dtypes cast to the one ``torch.maximum`` gives them (a Python
    number is left to the backend, which gives it the other's dtype as in ``x + 0.5``); with ``broadcast``, as if
    neither were 0-dim (a loss, which broadcasts its operands before it promotes them)."""
    dtype_a, dtype_b = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if dtype_a is None or dtype_b is None or dtype_a == dtype_b or isinstance(a, numbers.Number) or isinstance(
            b, numbers.Number):
        return a, b
    name_a, name_b = dtype_kinds.dtype_name(dtype_a), dtype_kinds.dtype_name(dtype_b)
    dtype = _torch_result_dtype(name_a, not broadcast and _zero_dim(a), name_b, not broadcast and _zero_dim(b)) if (
        name_a != name_b) else None
    if dtype is None:
        return a, b
    return a if name_a == dtype else cast(a, dtype), b if name_b == dtype else cast(b, dtype)


def _zero_dim(x) -> bool:
    """Whether ``x`` is a 0-dim tensor (False where a TensorFlow graph leaves its rank unknown)."""
    try:
        return len(x.shape) == 0
    except (TypeError, ValueError):
        return False


def _torch_result_dtype(a, a_zero_dim, b, b_zero_dim):
    """The dtype name PyTorch gives a binary op of tensors of dtype names ``a`` and ``b`` (``torch.result_type``;
    ``*_zero_dim``: whether each is 0-dim), or None for a dtype that is neither bool, integer nor float: a float
    over an integer over a bool; a 0-dim tensor of the same kind as a dimensioned one (or a lower kind) takes the
    dimensioned one's dtype (int32 against a 0-dim int64: int32), one of a higher kind its own; else the wider of
    one kind (float16 with bfloat16: float32; a signed and an unsigned integer of one size: the next wider
    signed)."""
    kind_a, kind_b = _dtype_kind(a), _dtype_kind(b)
    if kind_a is None or kind_b is None:
        return None
    if a_zero_dim != b_zero_dim:
        (zero, zero_kind), (dimensioned, dimensioned_kind) = (
            ((a, kind_a), (b, kind_b)) if a_zero_dim else ((b, kind_b), (a, kind_a)))
        return zero if zero_kind > dimensioned_kind else dimensioned
    if kind_a != kind_b:
        return a if kind_a > kind_b else b
    if {a, b} == {"float16", "bfloat16"}:
        return "float32"
    bits_a, bits_b = _dtype_bits(a), _dtype_bits(b)
    if a.startswith("uint") != b.startswith("uint") and bits_a == bits_b:
        return f"int{min(2 * bits_a, 64)}"
    return max((a, b), key=lambda name: (_dtype_bits(name), not name.startswith("uint")))


def _dtype_kind(name):
    """2 for a float dtype name, 1 for an integer one, 0 for bool, else None (``unidl.dtype_kinds``' rule)."""
    return 2 if dtype_kinds.is_floating(name) else 1 if dtype_kinds.is_integer(name) else 0 if name == "bool" else None


def _dtype_bits(name) -> int:
    return int(name[len(name.rstrip("0123456789")):] or 8)


def _check_broadcastable(name, a, b, *, names=("a", "b"), **more) -> list:
    """The tensors of ``more`` (``{name: tensor}``, placed before ``a`` and ``b`` in the message), ``a`` and ``b``
    (called ``names``; tensors, arrays or numbers), after checking that their shapes broadcast: aligned from the last
    axis, each pair of sizes equal or one of them 1 (PyTorch's rule), else a ``ShapeMismatchError`` naming every
    shape (the frameworks raised four errors of their own), at once where the sizes are known, else (a TensorFlow
    graph's) when the graph runs, with the same message (``input_checks.check_broadcast``: no op where the graph
    knows the shapes to agree, as in ``where(x > 0, x, 0)``). Use the returned values."""
    named = {**more, names[0]: a, names[1]: b}
    try:  # (known sizes only: an exporter's symbolic size compared with an int would be specialised)
        shapes = [input_checks.known_shape(getattr(x, "shape", ())) for x in named.values()]
    except ValueError:
        return list(named.values())  # a TensorFlow graph's tensor of unknown rank: nothing known to check
    if shapes.count(shapes[0]) == len(shapes) and None not in shapes[0]:
        return list(named.values())  # the common case, decided at once
    if any(input_checks.broadcast_conflict(sizes) for sizes in input_checks.aligned(*shapes)):
        raise ShapeMismatchError(input_checks.broadcast_message(name, dict(zip(named, shapes))))
    return input_checks.check_broadcast(name, named)


@op(dispatch=False, arrays=())
def where(condition, a, b):
    """a where condition holds, else b. ``condition``: booleans (a ``DtypeMismatchError`` else, as PyTorch's;
    TensorFlow refused them too, JAX and Keras took non-zero as true); ``a`` and ``b`` tensors of two dtypes
    promote as ``torch.where`` promotes them (TensorFlow refused them). The three broadcast together, or it is
    ``maximum``'s ``ShapeMismatchError`` naming the three shapes."""
    if not config.backend().is_tensor(condition):  # a Python bool or a NumPy array (torch's where refused them)
        from unidl.tensors import tensor

        condition = tensor(condition)
    input_checks.check_condition("where", condition)
    if isinstance(a, CONVERTED) or isinstance(b, CONVERTED):
        a, b = input_checks.operands("where", a, b)
    condition, a, b = _check_broadcastable("where", a, b, condition=condition)
    if _is_number(a) or _is_number(b):
        return _ops().where(condition, *_numbers_as_torch("where", a, b, as_tensor=True))
    return _ops().where(condition, *_promoted_as_torch(a, b))


def _numbers_as_torch(name, a, b, as_tensor):
    """``a`` and ``b``, one of them a Python (or NumPy) number, as PyTorch types a number beside a tensor (``x +
    0.5``, ``torch.where(c, x, 0.5)``): a number of a higher kind than the tensor (a float beside integers, an int
    beside booleans) makes that tensor the float dtype in force or int64, else the number takes the tensor's
    dtype, an integer outside that dtype's range (or int64's) being a ``ValueError`` (PyTorch's ``where`` and
    ``maximum`` of a 0-d tensor wrapped it around, as the other frameworks did); two numbers: the first becomes a
    tensor (float: the dtype in force, int: int64, bool: bool), and so does a NumPy array. With ``as_tensor`` the
    number comes back as a 0-d tensor of that dtype (a TensorFlow graph typed a number by itself in ``where``:
    int32 beside a float tensor), else as a Python number of the tensor's kind, which every backend's
    ``maximum`` gives the tensor's dtype (TensorFlow refused True beside int8). (JAX gave float64 for a float
    beside int32 and for two floats, TensorFlow refused a float beside integers and booleans, Keras gave int32
    for two ints and for an int beside booleans.)"""
    from unidl.tensors import tensor

    if _is_number(a) and _is_number(b):
        kind = _number_kind(a)
        a = tensor(a, "bool" if kind == 0 else "int64" if kind == 1 else config.get_dtype())
    tensor_first = not _is_number(a)
    side, number = (a, b) if tensor_first else (b, a)
    if isinstance(side, np.ndarray):
        side = tensor(side)
    dtype = getattr(side, "dtype", None)
    kind = _dtype_kind(dtype_kinds.dtype_name(dtype)) if dtype is not None else None
    if kind is None:
        return a, b
    number_kind = _number_kind(number)
    if number_kind > kind:
        side = cast(side, config.get_dtype() if number_kind == 2 else "int64")
    held = dtype_kinds.dtype_name(side.dtype)
    if number_kind == 1:
        _check_number_fits(name, number, held)
    if as_tensor:
        number = tensor(number, held)
    else:
        number = (bool, int, float)[max(kind, number_kind)](number)
    return (side, number) if tensor_first else (number, side)


def _check_number_fits(name, number, dtype_name):
    """``ValueError`` for an integer beyond the range of an integer tensor's ``dtype_name`` beside it, or beyond
    int64's beside a float tensor (PyTorch's integers: torch raises, TensorFlow gave inf)."""
    integer = dtype_kinds.is_integer(dtype_name)
    info = np.iinfo(dtype_name if integer else "int64")
    if not info.min <= number <= info.max:
        holder = f"the {dtype_name} of the tensor beside it" if integer else "int64"
        raise ValueError(f"{name}: the number {number} does not fit {holder}, whose range is [{info.min}, "
                         f"{info.max}]; " + ("cast the tensor to a wider dtype first" if integer else
                                             "pass it as a float"))


def _number_kind(number) -> int:
    """2 for a float, 1 for an integer, 0 for a bool, as ``_dtype_kind``."""
    return 0 if isinstance(number, (bool, np.bool_)) else 1 if isinstance(number, numbers.Integral) else 2


@op
def zeros_like(x):
    """Zeros of ``x``'s shape and dtype."""


@op(dispatch=False, arrays=())
def cast_like(x, like):
    """``x`` converted to ``like``'s dtype (a NumPy array or scalar, a list or a number rounded once to it, by
    ``ud.tensor``)."""
    if isinstance(x, CONVERTED):
        from unidl.tensors import tensor

        x = input_checks.as_array("cast_like", "x", x)
        with input_checks.naming("cast_like", "x"):
            return tensor(x, dtype_kinds.dtype_name(like.dtype))
    return _ops().cast_like(x, like)


@op(indices=("labels",), dispatch=False)
def one_hot(labels, num_classes):
    """Integer labels (N,) -> (N, num_classes) int64 indicator matrix (any labels' shape gains a last axis). A label
    outside [0, num_classes) gives a row of zeros on every backend (``tf.one_hot``'s and ``jax.nn.one_hot``'s rule;
    ``torch.nn.functional.one_hot`` raises, after reading the labels back to the host). ``num_classes`` is a
    positive int: torch's -1 (the largest label plus one, read from the labels) is a ``ValueError`` on every
    backend, since a compiled graph cannot size its output from values (each framework raised its own error)."""
    count = arguments.integer(num_classes)
    if count is None or count <= 0:
        raise ValueError(f"one_hot num_classes must be a positive int, got {num_classes!r}"
                         + ("; unidl does not read it from the labels (torch's -1): give int(labels.max()) + 1"
                            if count == -1 else ""))
    return _ops().one_hot(labels, count)


@op(dispatch=False)
def mse_loss(prediction, target, reduction="mean"):
    """Squared differences, reduced by ``reduction``: 'mean', 'sum' or 'none' (element-wise). Integers are floats
    of the dtype in force, and two float dtypes promote as ``torch.nn.functional.mse_loss`` promotes them
    (``input_checks.loss_operands``)."""
    reduction = input_checks.check_reduction("mse_loss", reduction)
    return _ops().mse_loss(*_same_shape_operands("mse_loss", prediction, target), reduction)


@op(dispatch=False)
def l1_loss(prediction, target, reduction="mean"):
    """Absolute differences, reduced by ``reduction``: 'mean', 'sum' or 'none' (element-wise); dtypes as
    ``mse_loss``'s."""
    reduction = input_checks.check_reduction("l1_loss", reduction)
    return _ops().l1_loss(*_same_shape_operands("l1_loss", prediction, target), reduction)


def _same_shape_operands(owner, prediction, target):
    """``input_checks.loss_operands``, after checking that the two have one shape: a ``ShapeMismatchError`` naming both,
    as the loss modules' (PyTorch's functional losses broadcast them with a warning; these broadcast silently)."""
    prediction, target = input_checks.loss_operands(owner, prediction, target)
    return input_checks.check_same_shape(owner, prediction, target), target


def _rank(x) -> int | None:
    """``x``'s number of axes, or None where a graph does not know it (``squeeze()`` without dim)."""
    try:
        return len(x.shape)
    except (TypeError, ValueError):
        return None


def _fused_cross_entropy_ranks(logits, labels) -> bool:
    """Whether ``logits`` and ``labels`` go to the frameworks' fused cross-entropy kernel (``cross_entropy`` and
    ``nn.CrossEntropyLoss`` without options): (N, C) and (N,). A graph's tensor of unknown rank (``squeeze()`` without
    dim) counts as that rank, as before the labels' rank was checked; labels of another known rank, (N, 1), take
    ``cross_entropy_loss``, whose check of their shape a graph runs (TensorFlow's kernel raised its own error while it
    traced)."""
    return _rank(logits) is None or _rank(logits) == 2 and _rank(labels) in (1, None)


@op(name="cross_entropy", public=False)
def _fused_cross_entropy(logits, labels, reduction, ignore_index):
    """The frameworks' fused softmax cross-entropy of (N, C) logits against int64 labels (N,), checked: labels
    equal to ``ignore_index`` add nothing and do not count in the mean (0 where ``reduction`` is 'none'), any other
    outside [0, C) raises ``IndexOutOfRangeError`` (in a compiled graph too). ``ud.ops.cross_entropy`` and
    ``nn.CrossEntropyLoss`` without options call it."""


@_composed(arrays=("logits",))
def cross_entropy(logits, labels, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy``, its arguments in PyTorch's order: softmax cross-entropy of (N, C)
    logits against integer labels (N,) in [0, C) (the fused kernel), or (N, C, d1, ...) logits against labels
    (N, d1, ...), the classes on axis 1, or one sample's (C,) against a label (); labels of another shape are a
    ``ShapeMismatchError``. Float targets of the logits' shape are class probabilities.

    ``weight``: a (C,) rescaling of each class; ``ignore_index``: labels equal to it add nothing and do not count
    in the mean (any other label outside [0, C) raises ``IndexOutOfRangeError``, in a compiled graph too);
    ``reduction``: 'mean', 'sum' or 'none'; ``label_smoothing`` in [0, 1]: the target mixed with the uniform
    distribution. With a weight, label smoothing or probabilities it is ``cross_entropy_loss``'s arithmetic, else
    the frameworks' fused kernel. PyTorch's deprecated ``size_average`` and ``reduce`` are a ``ValueError`` naming
    the ``reduction=`` to give; a string in ``weight``'s place (``cross_entropy(x, y, 'sum')``, the order of unidl
    before it took PyTorch's) a ``TypeError`` saying to pass ``reduction=`` by keyword."""
    if isinstance(weight, str):
        raise TypeError(f"cross_entropy's third argument is the class weight, as PyTorch's, got {weight!r}; give "
                        f"the reduction by keyword: cross_entropy(logits, labels, reduction={weight!r})")
    if size_average is not None or reduce is not None:
        from unidl import loss_ops  # (it imports this module)

        loss_ops.refuse_legacy_reduction("cross_entropy", size_average, reduce)
    reduction = input_checks.check_reduction("cross_entropy", reduction)
    if weight is not None or _smoothing(label_smoothing) or _probability_targets(logits, labels):
        label_smoothing = arguments.label_smoothing("cross_entropy", label_smoothing)
        return _cross_entropy_loss(logits, labels, weight, ignore_index, reduction, label_smoothing, "cross_entropy")
    labels = input_checks.check_integer("cross_entropy", "labels", labels)
    logits = input_checks.as_floating("cross_entropy", "logits", logits)
    if not _fused_cross_entropy_ranks(logits, labels):
        return _cross_entropy_loss(logits, labels, None, ignore_index, reduction, 0.0, "cross_entropy")
    _, logits, labels = input_checks.class_loss_shapes("cross_entropy", logits, labels, False, what="logits")
    labels = input_checks.labels_beside("cross_entropy", labels, ignore_index)
    return _fused_cross_entropy(logits, labels, reduction, ignore_index)


def _probability_targets(logits, labels) -> bool:
    """Whether ``labels`` are class probabilities for ``logits``: floats of the logits' rank (PyTorch's rule)."""
    if isinstance(labels, CONVERTED):
        floats = np.asarray(labels).dtype.kind == "f"
        rank = np.ndim(labels)
    else:
        floats, rank = dtype_kinds.holds_floats(labels), _rank(labels)
    return floats and rank is not None and rank == _rank(logits)


@op(dispatch=False, arrays=("logits", "targets"))
def bce_with_logits(logits, targets, reduction="mean"):
    """Binary cross-entropy on logits, numerically stable; ``reduction`` 'mean', 'sum' or 'none'. ``targets`` of
    another shape than ``logits`` is a ``ShapeMismatchError`` (a ``ValueError``), as PyTorch refuses it (JAX and
    Keras broadcast them)."""
    reduction = input_checks.check_reduction("bce_with_logits", reduction)
    logits = input_checks.check_same_shape("bce_with_logits", logits, targets, names=("logits", "targets"))
    logits, targets, returned = _bce_with_logits_operands("bce_with_logits", logits, targets)
    return _in_dtype(_ops().bce_with_logits(logits, targets, reduction), returned)


@op
def shape(x):
    """The shape as a tuple: ints where known, scalar tensors where a graph leaves a dimension unknown
    (so ``range(ud.ops.shape(x)[1])`` works inside ``ud.function`` for any length)."""


@op(dispatch=False)
def scan(fn, init, xs, axis=0, reverse=False):
    """Loop ``carry, y = fn(carry, x)`` over the slices ``x`` of ``xs`` along ``axis``, starting from ``init``.

    Returns ``(final carry, ys)`` with the ``y``s stacked along ``axis`` (so each has at least ``axis`` axes). ``init``, ``xs`` and each ``y`` may be
    tensors or nested tuples, lists and dicts of them (``xs``' leaves sliced together; ``y`` of any structure,
    shape and dtype, not necessarily the carry's), as ``jax.lax.scan``. ``reverse`` runs from the last slice
    to the first, ``ys[t]`` still the output of slice t. It is the plain Python loop on torch, a
    ``tf.while_loop`` on tensorflow (so the length may be unknown inside a graph, and a new length never
    retraces), ``jax.lax.scan`` on jax and ``keras.ops.scan`` on keras. The length must be at least 1, the same for
    every leaf of ``xs``, and ``fn``'s carry must keep ``init``'s structure, shapes and dtypes, with no None in ``y``:
    otherwise one ``ShapeMismatchError``, ``DtypeMismatchError`` or ``TypeError`` naming the leaf, on every backend.
    NumPy arrays and scalars among the leaves of ``init`` and ``xs`` become tensors as ``ud.tensor`` makes them
    (torch's and TensorFlow's backends refused them; JAX and Keras took NumPy floats in float64).
    """
    init = input_checks.leaves_as_tensors("scan", "init", init)
    xs = input_checks.leaves_as_tensors("scan", "xs", xs)
    from unidl import scan_checks

    xs = scan_checks.check_scan_lengths(xs, axis)
    return _ops().scan(scan_checks.checked_scan_body(fn, init), init, xs, axis, reverse)


@op(dispatch=False, floating=("x",))
def gelu(x, approximate="none"):
    """x * Phi(x) with Phi the standard normal CDF (``approximate='none'``), or PyTorch's tanh approximation
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) with ``approximate='tanh'``. Any other ``approximate`` is
    a ``ValueError``, as PyTorch's (TensorFlow, JAX and Keras gave the exact GELU)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return _ops().gelu(x, approximate)


def _rounded_once(x, compute):
    """``compute(x)``, for float16 or bfloat16 ``x`` computed in float32 and rounded once to ``x``'s dtype, as
    PyTorch's CPU kernels compute reduced floats (each step rounded to float16 was a last place off); as it is on a
    backend whose kernels round once already (``rounds_half_activations_once``: no float32 copy kept for autodiff)."""
    dtype = dtype_kinds.dtype_name(x.dtype)
    if not dtype_kinds.is_half(dtype) or config.backend().rounds_half_activations_once:
        return compute(x)
    return cast(compute(cast(x, "float32")), dtype)


@op(floating=("x",), dispatch=False)
def silu(x):
    """x * sigmoid(x) (also called swish); float16 and bfloat16 computed in float32 and rounded once, as PyTorch's."""
    return _rounded_once(x, _ops().silu)


@op(floating=("x",), dispatch=False)
def elu(x, alpha=1.0):
    """x if x > 0 else alpha * (exp(x) - 1). ``alpha``: a number, or a 0-d tensor (no gradient reaches it), eagerly
    and inside graphs, as ``torch.nn.functional.elu`` takes one."""
    return _ops().elu(x, _number_or_tensor("elu", "alpha", alpha, x))


@op(floating=("x",), dispatch=False)
def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold (PyTorch's); float16 and bfloat16
    computed in float32 and rounded once, as PyTorch's. ``beta`` and ``threshold``: numbers, or 0-d tensors (no
    gradient reaches them), eagerly and inside graphs, as PyTorch takes them."""
    def compute(x):
        return _ops().softplus(x, *(_number_or_tensor("softplus", name, value, x)
                                    for name, value in (("beta", beta), ("threshold", threshold))))

    return _rounded_once(x, compute)


@op(dispatch=False)
def hardtanh(x, min_val=-1.0, max_val=1.0):
    """x limited to [min_val, max_val]; the gradient is 1 strictly inside, 0 elsewhere (PyTorch's). A bound outside
    the range of integer ``x``'s dtype is a ``ValueError``."""
    min_val = arguments.plain_number("hardtanh", "min_val", min_val)
    max_val = arguments.plain_number("hardtanh", "max_val", max_val)
    if min_val > max_val:  # (PyTorch's ValueError; the other frameworks gave max_val everywhere)
        raise ValueError(f"hardtanh min_val {min_val!r} cannot be greater than max_val {max_val!r}")
    input_checks.check_numbers("hardtanh", x)
    input_checks.check_bounds("hardtanh", x, (min_val, max_val), floats=True)
    return _ops().hardtanh(x, min_val, max_val)


@op(dispatch=False)
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias, with the mean and biased variance over the last
    ``len(normalized_shape)`` axes (an int or a tuple of ints, the shape of those axes: other input is a
    ``ShapeMismatchError``, as PyTorch's); ``weight`` and ``bias`` have shape ``normalized_shape`` (a
    ``ShapeMismatchError`` naming them otherwise, never broadcast). Float input of
    another dtype than theirs is a ``DtypeMismatchError`` but float16 or bfloat16 beside float32. float16 and
    bfloat16 input is computed in float32 (its parameters too) and given back in its dtype, as PyTorch's kernels
    compute it (in float16 the variance of [1, 2, 1000] overflowed: zeros)."""
    eps = arguments.plain_number("layer_norm", "eps", eps)
    normalized_shape = arguments.normalized_shape("layer_norm", normalized_shape)
    x = input_checks.as_floating("layer_norm", "x", x)  # (integers: floats of the dtype in force, as group_norm's)
    x = input_checks.check_parameter_shapes("layer_norm", x, {"weight": weight, "bias": bias}, normalized_shape,
                                            "normalized_shape")
    x = input_checks.check_normalized_input("layer_norm", x, normalized_shape)
    mixed = input_checks.normalization_parameters("layer_norm", x, {"weight": weight, "bias": bias})
    return _layer_norm_as_torch(_ops(), x, normalized_shape, weight, bias, eps, mixed)


def _layer_norm_as_torch(backend_ops, x, normalized_shape, weight, bias, eps, mixed: bool):
    """The layer norm of checked input ``x`` by ``backend_ops`` (an ops namespace): float16 and bfloat16 ``x`` (and,
    ``mixed``, ``x`` beside float32 parameters) computed in float32, its parameters too, and given back in its
    dtype, as PyTorch's kernels compute it (in float16 the variance of [1, 2, 1000] overflowed: zeros). Shared by
    ``layer_norm`` and ``nn.LayerNorm``, which check their input each in its own words."""
    if not mixed and not dtype_kinds.is_half(x.dtype):
        return backend_ops.layer_norm(x, normalized_shape, weight, bias, eps)
    weight, bias = (None if p is None else backend_ops.cast(p, "float32") for p in (weight, bias))
    y = backend_ops.layer_norm(backend_ops.cast(x, "float32"), normalized_shape, weight, bias, eps)
    return backend_ops.cast_like(y, x)


@op(indices=("indices",), public=False)
def embedding_rows(indices, weight, padding_idx=None):
    """``embedding``'s lookup (``unidl/embedding_ops.py``): the rows of the 2-D ``weight`` picked by ``indices``,
    ``padding_idx`` (None, an int counted from the start, or a graph's scalar tensor) already checked, its row
    given no gradient. An index outside [0, num_embeddings) raises ``IndexOutOfRangeError``, inside compiled
    graphs too."""


def _rows(weight):
    """The size of ``weight``'s first axis: an int, a scalar tensor where a graph leaves it unknown, or None where
    a graph leaves even the rank unknown."""
    try:
        return input_checks.sizes_of(weight)[0] if len(weight.shape) else None
    except (TypeError, ValueError):  # (TensorFlow's shape of unknown rank has no length)
        return None


@op(indices=("indices",), dims={"axis": "x"}, dispatch=False)
def take(x, indices, axis=None):
    """The entries of ``x`` picked by integer ``indices``, as ``torch.take`` and ``numpy.take``: without ``axis``,
    of ``x`` flattened (row-major), the result of ``indices``' shape; with ``axis``, slices along that axis
    (``torch.index_select`` for 1-D indices, ``numpy.take(axis=)``), the result's shape
    x.shape[:axis] + indices.shape + x.shape[axis+1:]. Indices outside [0, x.shape[axis]) (or [0, x.numel()))
    raise ``IndexOutOfRangeError``, inside compiled graphs too. Each backend's ``take`` is given the axis."""
    if axis is None:
        if _rank(x) != 1:  # (a 1-D x is its own flattening: no reshape)
            x = _ops().reshape(x, (-1,))
        axis = 0
    return _ops().take(x, indices, axis)


@_composed
def index_select(x, dim, index):
    """``torch.index_select``: the slices of ``x`` along ``dim`` picked by the 1-D (or 0-D) integer ``index``, in
    PyTorch's argument order; ``take(x, index, axis=dim)`` for a 1-D index. An index of another rank is a
    ``ShapeMismatchError`` (PyTorch's "Index is supposed to be a vector"), one out of range an
    ``IndexOutOfRangeError``."""
    given = isinstance(index, CONVERTED)  # (a list or an array: ``take`` checks and converts it)
    rank = np.ndim(index) if given else _rank(index)
    if rank is not None and rank > 1:
        raise ShapeMismatchError(f"index_select index must be 1-D (a vector) or 0-D, as PyTorch's; got shape "
                                 f"{tuple(np.shape(index) if given else index.shape)}")
    if rank == 0:  # (PyTorch keeps the axis, of size 1)
        index = [index] if given else _ops().reshape(index, (1,))
    return take(x, index, dim)


@op(public=False)
def take_in_range(x, indices, axis):
    """``take`` of 1-D int64 ``indices`` that unidl built itself, each known to lie in [0, x.shape[axis]): no check
    (``take``'s is a read back to the host on torch, an assert in TensorFlow's graph, a staged check in JAX's),
    for the composites' own gathers (``interpolate``'s taps)."""


@op(public=False)
def cond(condition, true_fn, false_fn, operands):
    """``true_fn(*operands)`` where the 0-d boolean ``condition`` holds, else ``false_fn(*operands)``; both return
    tensors of the same shapes and dtypes. Inside a graph both branches are traced and one runs (``tf.cond``,
    ``jax.lax.cond``, ``keras.ops.cond``); eagerly one is called (torch: a Python branch, one read of
    ``condition``). Gradients flow through the branch that ran. For composites whose fast path holds only under a
    condition on the input (``interpolate``'s products, for finite inputs)."""


@op(indices=("index",), dims={"dim": "x"}, dispatch=False)
def gather(x, dim, index):
    """``torch.gather``: ``out[i][j] = x[index[i][j]][j]`` for dim 0 (and alike for any ``dim``); ``index``
    has ``x``'s rank, and may be smaller than ``x`` on every axis. Indices out of range raise
    ``IndexOutOfRangeError``; an ``index`` of another rank, or larger than ``x`` on an axis other than ``dim``, a
    ``ShapeMismatchError`` naming both shapes, as PyTorch's (TensorFlow's named a slice), in graphs too."""
    return _ops().gather(x, dim, input_checks.check_gather_index(x, dim, index))


@op(public=False)
def check_index(indices, size, what="index"):
    """``indices`` unchanged, after checking that every value lies in [0, size): ``IndexOutOfRangeError``
    naming ``what`` if not, eagerly, and inside a compiled graph from a check that runs with it."""


@op(public=False)
def check_in_range(x, low, high, what="values"):
    """``x`` unchanged, after checking that no value lies outside [low, high] (NaN passes: a non-finite value is
    the non-finite guard's): ``ValueOutOfRangeError`` naming ``what`` and how many lie outside if one does, eagerly,
    and inside a compiled graph from a check that runs with it."""


@op(public=False)
def check_values(x, condition, message, values=()):
    """``x`` unchanged, after checking that ``condition`` (a boolean scalar tensor computed from tensors' values)
    holds: ``ValueOutOfRangeError(message.format(*values))`` if not, ``values`` ints or integer scalar tensors
    (where a bad value lies), eagerly, and inside a compiled graph from a check that runs with it (the same
    message): ``check_in_range`` for a rule a range cannot say."""


@op(public=False)
def segment_sum(data, segment_ids, num_segments):
    """A (num_segments,) tensor whose entry k is the sum of the entries of the 1-D ``data`` whose entry of the
    1-D integer ``segment_ids`` is k (``tf.math.unsorted_segment_sum``, ``jax.ops.segment_sum``): a weighted
    bincount, in O(len(data)) memory, graph-safe. Ids must lie in [0, num_segments) (callers ensure it)."""


@op(public=False)
def check_shape(x, condition, message, sizes=()):
    """``x`` unchanged, after checking that ``condition`` (a boolean scalar tensor: a comparison of sizes that a
    traced graph knows only when it runs) holds: ``ShapeMismatchError(message.format(*sizes))`` if not, with
    ``sizes`` ints or scalar tensors, eagerly, and inside a compiled graph from a check that runs with it (the
    same message). The front end (``unidl.input_checks``) decides known sizes itself."""


@op(dispatch=False, arrays=())
def cast(x, dtype):
    """``x`` converted to ``dtype``: a name ('float32', 'int64', 'bool', ...) or a NumPy dtype. A NumPy array (a
    list, a number) of floats or booleans is a tensor of its own (NumPy's) dtype first, converted once, not through
    the float dtype in force; integers of any width are int64 first."""
    if isinstance(x, CONVERTED):
        from unidl.tensors import tensor

        x = input_checks.as_array("cast", "x", x)
        with input_checks.naming("cast", "x"):
            if x.dtype.kind in "iu":  # int64 holds them all (uint64 beyond it: ud.tensor's ValueError)
                x = tensor(x if x.dtype == np.uint64 else x.astype(np.int64))
            elif x.dtype.kind in "bf" or x.dtype.name == "bfloat16":
                x = tensor(x, dtype_kinds.dtype_name(x.dtype))
            else:
                x = tensor(x)  # (complex numbers, strings: its DtypeMismatchError)
    return _ops().cast(x, _dtype_name(dtype))


@op(dispatch=False)
def zeros(*sizes, size=None, dtype=None, device=None):
    """A tensor of zeros of the sizes ``sizes`` and ``dtype`` (unidl's current float dtype by default), on
    ``device`` (the current device by default), as ``torch.zeros``: the sizes as arguments (``zeros(2, 3)``,
    ``zeros(3)``), one sequence of them (``zeros((2, 3))``, ``zeros([2, 3])``, ``zeros(())`` a scalar) or that
    sequence as torch's keyword ``size=`` (``zeros(size=(2, 3))``); each an int, or a size ``ud.ops.shape`` gives
    inside a graph. A dtype given among the sizes (``zeros(2, 'float64')``) is a ``TypeError`` naming ``dtype=``, as
    PyTorch's. Each backend's ``zeros(shape, dtype)`` takes the sizes as one tuple and the dtype's name."""
    return _created("zeros", _sizes("zeros", _given_sizes("zeros", sizes, size)), dtype, device)


@op(dispatch=False)
def ones(*sizes, size=None, dtype=None, device=None):
    """A tensor of ones of the sizes ``sizes`` and ``dtype`` (unidl's current float dtype by default), on ``device``
    (the current device by default), as ``torch.ones``: the sizes as ``zeros`` takes them (``ones(2, 3)``,
    ``ones((2, 3))``, ``ones(size=(2, 3))``)."""
    return _created("ones", _sizes("ones", _given_sizes("ones", sizes, size)), dtype, device)


def _given_sizes(owner, sizes, size) -> tuple:
    """``zeros``/``ones``' sizes, given as arguments or as torch's keyword ``size=`` (one sequence), not both."""
    if size is None:
        return sizes
    if sizes:
        raise TypeError(f"{owner} takes the sizes as arguments or as size=, not both: got {sizes!r} and "
                        f"size={size!r}")
    return (size,)


@op(dispatch=False)
def arange(start, end=None, step=1, dtype=None, *, device=None):
    """``start, start + step, ...`` below ``end`` (``arange(n)`` is 0 .. n-1), as in ``torch.arange``: int64
    when every argument is an int, else unidl's current float dtype, unless ``dtype`` says otherwise; on ``device``
    (the current device by default)."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        integral = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, step))
        dtype = "int64" if integral else config.get_dtype()
    numbers_given = all(isinstance(v, numbers.Real) for v in (start, end, step))  # (a graph's sizes: tensors)
    if numbers_given and step == 0:
        raise ValueError("arange step must be nonzero, as PyTorch's")
    if numbers_given and (end - start) * step < 0:  # (JAX gave an empty range, torch and TensorFlow raised)
        raise ValueError(f"arange from {start!r} to {end!r} cannot step by {step!r}: the step's sign must be the "
                         f"sign of end - start, as PyTorch's")
    if (numbers_given and dtype_kinds.is_integer(_dtype_name(dtype))
            and not all(isinstance(v, numbers.Integral) for v in (start, end, step))):
        start, end, step = _integral_range(start, end, step, _dtype_name(dtype))
    backend = config.backend()
    with backend.device_scope(_device(device, backend)):
        return backend.ops.arange(start, end, step, _dtype_name(dtype))


def _integral_range(start, end, step, dtype: str) -> tuple:
    """``arange``'s (start, end, step) in ints for an integer ``dtype`` given fractional bounds, as PyTorch's
    kernel computes them: start and step truncated toward zero (a step that truncates to 0 is its ``ValueError``),
    the length from the truncated end for int64 and from the fractional bounds for the other integer dtypes (JAX
    counted a fractional step's values and truncated each, TensorFlow refused the floats)."""
    if not all(math.isfinite(v) for v in (start, end, step)):  # (int() raised OverflowError, or NaN's ValueError)
        raise ValueError(f"arange in {dtype} needs finite bounds and step, as PyTorch's, got {start!r} -> {end!r} "
                         f"by {step!r}")
    first, last, stride = int(start), int(end), int(step)
    if stride == 0:
        raise ValueError(f"arange step must be nonzero, as PyTorch's: step {step!r} truncates to 0 in {dtype}")
    if dtype == "int64":
        count = len(range(first, last, stride))
    else:
        count = max(0, math.ceil((float(end) - float(start)) / float(step)))
    return first, first + count * stride, stride


@op(numeric=("x",), axes=("dim",), dims={"dim": "x"}, dispatch=False)
def argmax(x, dim=None, keepdim=False):
    """Index (int64) of the largest value along ``dim`` (of the flattened tensor when None); the first one on ties.
    Booleans are a ``DtypeMismatchError``, as in PyTorch (the other frameworks took them). ``dim`` is one axis: a
    tuple of them is a ``ValueError``, as PyTorch takes none (the frameworks raised errors of their own). An empty
    axis (``dim=None``: an empty tensor) has no largest value: ``ShapeMismatchError``, as ``amax``'s."""
    if getattr(x.shape, "rank", 0) is not None:  # (a graph's tensor of unknown rank: argmax reads none, as before)
        x = _check_not_empty("argmax", x, dim)
    return _ops().argmax(x, dim, keepdim)


@op(permutation={"dims": "x"}, dispatch=False)
def permute(x, dims):
    """``x`` with its axes reordered: axis i of the result is axis ``dims[i]`` of ``x``. Negative axes count from
    the end; the backend gets them as non-negative ones (TensorFlow's gradient of a transpose refused them)."""
    rank = _rank(x)
    if rank and isinstance(dims, (list, tuple)) and any(d < 0 for d in dims):
        dims = tuple(d % rank for d in dims)
    return _ops().permute(x, dims)


@op(new_dims={"dim": "x"})
def unsqueeze(x, dim):
    """``x`` with a new axis of size 1 at position ``dim``."""


@op(dims={"dim": "x"}, dispatch=False)
def squeeze(x, dim=None):
    """``x`` without its axes of size 1 (only axis ``dim``, an int or a tuple, when given; a given axis of another
    size stays, as in PyTorch, except inside a graph that does not know its size, where it must be 1: another size
    is a ``ShapeMismatchError`` saying so when the graph runs, where TensorFlow and Keras raised errors of their own
    that named no squeeze)."""
    if dim is not None:
        x = input_checks.check_squeezed_axes("squeeze", x, dim)
    return _ops().squeeze(x, dim)


@op(dispatch=False)
def pad(x, pad, mode="constant", value=0.0):
    """``torch.nn.functional.pad``: ``pad`` lists (before, after) amounts from the LAST axis backwards,
    e.g. (1, 1, 2, 0) pads the last axis by 1 on both sides and the one before by 2 in front; a negative amount
    crops. ``mode``: 'constant' (with ``value``), 'reflect', 'replicate' or 'circular' (those three on the last
    1 to 3 axes of a batched or unbatched input; reflect shorter than its axis, circular no longer and never
    negative). PyTorch's limits hold on every backend: what PyTorch refuses is one unidl error everywhere."""
    from unidl import padding

    value = 0.0 if value is None else value  # (PyTorch's default)
    amounts = padding.checked_amounts(x, pad, mode, value)
    if mode == "constant":
        value = padding.constant_value(x, value)
    if mode != "constant" or min(amounts, default=0) < 0:
        x = padding.check_sizes(x, amounts, mode)
    if max(amounts, default=0) > 0:
        if 0 in tuple(x.shape):  # an empty batch (the checks left no other empty axis): no values to reflect or
            mode = "constant"    # wrap, and TensorFlow's mirror pad refuses it
        x = _ops().pad(x, tuple(max(p, 0) for p in amounts), mode, value)
    return padding.crop(x, amounts) if min(amounts, default=0) < 0 else x


@op(floating=("x",))
def log1p(x):
    """log(1 + x), accurate for small x."""


@op(dispatch=False, arrays=())
def minimum(a, b):
    """Element-wise minimum, broadcasting as ``torch.minimum``: ``maximum``'s rules mirrored (the gradient all to
    the smaller input, half to each of equal ones, all to both where either is NaN; booleans give their and)."""
    if isinstance(a, CONVERTED) or isinstance(b, CONVERTED):
        a, b = input_checks.operands("minimum", a, b)
    return _ops().minimum(*_typed_as_torch("minimum", *_check_broadcastable("minimum", a, b)))


@op(dims={"dim": "x"}, dispatch=False)
def amax(x, dim, keepdim=False):
    """Largest value along ``dim`` (an int or a tuple of them), as ``torch.amax``. An empty axis among them has no
    largest value: ``ShapeMismatchError`` on every backend (TensorFlow gave -inf, Keras raised, JAX its own error)."""
    return _ops().amax(_check_not_empty("amax", x, dim), dim, keepdim)


def _check_not_empty(name, x, dim):
    """``x``, after checking that no axis of ``dim`` (an int, a tuple of them, or None for every axis) is empty:
    a reduction to one element of it (``amax``, ``argmax``) has none to give. ``ShapeMismatchError`` naming the
    axis, now or when a graph that leaves its size unknown runs (the frameworks gave -inf or errors of their own)."""
    sizes = tuple(x.shape)
    dims = range(len(sizes)) if dim is None else (dim,) if isinstance(dim, int) else \
        tuple(arguments.reduced_axes(name, "dim", dim))
    if any(sizes[d] is None or sizes[d] == 0 for d in dims):
        sizes = input_checks.sizes_of(x)
        for d in dims:
            def template(d=d):
                where = f"over axis {d}, which is empty" if dim is not None else "of an empty tensor"
                return f"{name} {where} (input shape {input_checks.shape_template(len(sizes))})"

            x = input_checks.require(x, input_checks.holds(sizes[d] > 0), template, tuple(sizes))
    return x


def _amax(x, dim, keepdim=False):
    """``amax`` without its empty-axis check, for callers whose axis is never empty (it would cost a graph op)."""
    return _ops().amax(x, dim, keepdim)


@op(name="apply_momentum", optional=True, public=False)
def _apply_momentum(param, buffer, lr, grad, momentum, nesterov):
    """A framework's fused in-place heavy-ball kernel (``buffer = momentum * buffer + grad``;
    ``param -= lr * (grad + momentum * buffer if nesterov else buffer)``), used by
    ``Optimizer.apply_fused`` as a fast path for SGD with momentum where a backend has one."""


@op(optional=True, public=False)
def fused_attention(query, key, value, masks=(), is_causal=False, scale=None):
    """A framework's fused attention kernel (torch's ``scaled_dot_product_attention``): ``attention``'s output,
    without its weights, for no dropout. ``masks``: boolean tensors, each broadcasting to (..., L, S), True where
    a query may attend to a key (all of them apply, and the causal mask too when ``is_causal``); ``scale`` None
    (1/sqrt(E)) or a number. A query whose every key is masked gets output 0 and gradients 0. Used by
    ``attention`` as a fast path where a backend has it."""


@op(optional=True, public=False)
def fused_ctc_loss(log_probs, labels, input_lengths, target_lengths, blank=0, zero_infinity=False):
    """A framework's CTC kernel (torch's ``ctc_loss``): the (N,) losses of inputs ``ud.ops.ctc_loss`` has checked,
    log_probs (T, N, C), padded int64 labels (N, S) (0 past each length), int64 lengths (N,) and ``blank`` an int,
    with that kernel's values and gradients (``zero_infinity`` too). Used by ``ctc_loss`` as a fast path where a
    backend has it; the others run its scan."""


@op(optional=True, public=False)
def fused_interpolate(x, size, scale_factor, mode, align_corners):
    """A framework's resampling kernel (torch's ``interpolate``) for the modes 'linear', 'bilinear' and
    'bicubic' of floating ``x`` that ``ud.ops.interpolate`` has checked: ``size`` a tuple of ints or None,
    ``scale_factor`` a tuple of floats (the scales the source positions use) or None, ``align_corners`` a bool;
    and 'area' (``size`` given, ``align_corners`` None): ``adaptive_avg_pool2d`` of unequal bins. Each output reads
    its taps or its bin alone (a NaN or an infinity reaches the outputs that read it). Used by ``interpolate`` and
    the adaptive average poolings as a fast path for the forward where a backend has it (the gradient is its own:
    the products' transposed); the others run its products."""


# ---- composed ops: written once over the registry's ops above, so every backend runs them -----------------
# (a backend may not replace them; what a framework has a kernel for is declared with @op instead)

_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


def _dtype_name(dtype) -> str:
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return dtype
    import numpy as np

    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = getattr(dtype, "name", str(dtype))
    if name not in _DTYPE_NAMES:
        raise TypeError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPE_NAMES)}")
    return name


def _created(kind, shape, dtype, device=None):
    backend = config.backend()
    shape = tuple(_size(kind, size, backend) for size in shape)
    with backend.device_scope(_device(device, backend)):
        return getattr(backend.ops, kind)(shape, _dtype_name(dtype or config.get_dtype()))


def _device(device, backend) -> str:
    """The device a created tensor goes to: ``device`` (a name, or torch's ``torch.device``, by its name) resolved as
    ``ud.use_device`` resolves one (a GPU the backend cannot see is its error), else the current device."""
    return config.resolve_device(config._requested_device() if device is None else str(device), backend)


def _sizes(owner, size) -> tuple:
    """The sizes ``zeros``/``ones`` were given, as PyTorch takes them: ints (``zeros(2, 3)``) or one sequence of
    them (``zeros((2, 3))``, a ``torch.Size`` or ``ud.ops.shape``'s tuple). A dtype among them is a ``TypeError``
    saying to pass ``dtype=`` (the old ``zeros(shape, dtype)``'s order, where PyTorch's dtype is a keyword)."""
    if not size:
        raise TypeError(f"{owner}() takes the sizes, as {owner}(2, 3) or {owner}((2, 3)); {owner}(()) is a scalar")
    if len(size) == 1 and not isinstance(size[0], (str, bytes)) and not _is_size_scalar(size[0]):
        try:
            size = tuple(size[0])
        except TypeError:
            pass  # (not a sequence: ``_size`` names it)
    for value in size:  # (first: ``zeros((2, 3), 'int64')`` is the dtype's error, not the nested sequence's)
        if isinstance(value, (str, np.dtype, type)) or "dtype" in type(value).__name__.lower():
            raise TypeError(f"{owner} takes the dtype as a keyword, as PyTorch's: {owner}(..., dtype={value!r}); "
                            f"got {value!r} among the sizes {size!r}")
    if any(isinstance(value, (tuple, list)) for value in size):
        raise TypeError(f"{owner} takes ints or one sequence of them, as {owner}(2, 3) or {owner}((2, 3)); "
                        f"got {size!r}")
    return size


def _is_size_scalar(value) -> bool:
    """Whether ``value`` is one size (a number, or a graph's scalar size) rather than a sequence of sizes."""
    if isinstance(value, numbers.Number) or isinstance(value, np.generic):
        return True
    backend = config.backend()
    return (backend.is_tensor(value) and len(value.shape) == 0) or backend.is_symbolic_size(value)


def _size(owner, size, backend):
    """One size of a tensor ``zeros``/``ones`` creates: a Python int (from a NumPy integer too), or a graph's scalar
    tensor as it is; a float or a bool is a ``TypeError`` and a negative int a ``ValueError``, as PyTorch's (a
    TensorFlow graph took 2.0 as 2, and each framework raised an error of its own)."""
    if type(size) is int and size >= 0:
        return size
    if backend.is_tensor(size) or backend.is_symbolic_size(size):
        return size
    checked = arguments.integer(size)
    if checked is None:
        raise TypeError(f"{owner} sizes must be ints, got {size!r} ({type(size).__name__})")
    if checked < 0:
        raise ValueError(f"{owner} sizes must be non-negative, got {checked}")
    return checked


def cat(tensors, dim=0):
    """``concat`` under PyTorch's name: join tensors along an existing axis ``dim``."""
    return concat(tensors, dim)


def transpose(x, dim0, dim1):
    """``x`` with axes ``dim0`` and ``dim1`` swapped (``torch.transpose``; ``permute`` for any order)."""
    input_checks.check_axes("transpose", "dim0", dim0, x)  # (``% rank`` swapped a wrapped axis silently)
    input_checks.check_axes("transpose", "dim1", dim1, x)
    rank = len(x.shape)
    dims = list(range(rank))
    dims[dim0 % rank], dims[dim1 % rank] = dims[dim1 % rank], dims[dim0 % rank]
    return permute(x, dims)


def relu6(x):
    """min(max(x, 0), 6)."""
    return hardtanh(x, 0.0, 6.0)


@_composed
def prelu(x, weight):
    """x if x >= 0 else weight * x, with one ``weight`` for all channels or one per channel (axis 1; an input of
    fewer than 2 axes has one channel). Another count of weights is a ``ShapeMismatchError`` naming both counts, as
    PyTorch refuses it (the frameworks raised their own broadcasting errors)."""
    if isinstance(x, CONVERTED) or isinstance(weight, CONVERTED):
        x, weight = input_checks.operands("prelu", x, weight, numbers=False)
    rank = len(x.shape)
    counts, sizes = input_checks.sizes_of(weight), input_checks.sizes_of(x)
    count, channels = math.prod(counts), sizes[1] if rank >= 2 else 1
    x = input_checks.require(x, input_checks._either(input_checks.holds(count == 1), input_checks.holds(
        count == channels)), lambda: (f"prelu has {{}} weights but the input has {{}} channels (shape "
                                      f"{input_checks.shape_template(len(sizes))}); give one weight, or one per "
                                      f"channel (axis 1)"), (count, channels) + tuple(sizes))
    if not dtype_kinds.is_floating(x.dtype):  # integers: floats of the dtype in force, as the other float math
        x = cast(x, config.get_dtype())
    if dtype_kinds.dtype_name(weight.dtype) != dtype_kinds.dtype_name(x.dtype):
        input_checks.check_parameters_dtype("prelu", x, weight)  # (outside autocast, torch's error)
        weight = cast_like(weight, x)  # a mixed-precision forward's float16 x: torch.autocast casts the weight too
    return _prelu_core(x, weight)


@composite("x", "weight")
def _prelu_core(x, weight):
    """``prelu`` of checked operands, one compiled program (``composite``)."""
    rank = len(x.shape)
    if rank >= 2:  # (C,) or (1,) -> (1, C, 1, ...): broadcasts along axis 1 either way
        weight = reshape(weight, (1, -1) + (1,) * (rank - 2))
    return where(x > 0, x, x * weight)  # (at 0 the gradient ``weight``, as torch's)


def _reduced(values, reduction):
    if reduction == "mean":
        return mean(values)
    if reduction == "sum":
        return sum(values)
    return values


@_composed
def smooth_l1_loss(prediction, target, reduction="mean", beta=1.0):
    """0.5 * d^2 / beta where |d| < beta, else |d| - 0.5 * beta, with d = prediction - target (L1 when beta is 0);
    dtypes as ``mse_loss``'s. A negative ``beta`` is a ``ValueError``, as PyTorch's."""
    reduction = input_checks.check_reduction("smooth_l1_loss", reduction)
    beta = arguments.smooth_l1_beta("smooth_l1_loss", beta)
    prediction, target = _same_shape_operands("smooth_l1_loss", prediction, target)
    prediction, target = input_checks.float32_under_autocast(prediction), input_checks.float32_under_autocast(target)
    return _smooth_l1_core(prediction, target, reduction, beta)


@composite("prediction", "target", numbers=("beta",))
def _smooth_l1_core(prediction, target, reduction, beta):
    """``smooth_l1_loss`` of checked operands, one compiled program (``composite``) for every ``beta``."""
    difference = abs(prediction - target)
    if arguments.tensor_argument(beta):  # (a graph's input or the compiled program's traced number: no Python
        # branch on its value; 0 is L1 here too)
        beta = cast_like(beta, difference)
        divisor = where(beta > 0, beta, zeros_like(beta) + 1)  # (no 0 / 0 in the branch not taken, nor its gradient)
        return _reduced(where(difference < beta, 0.5 * square(difference) / divisor, difference - 0.5 * beta),
                        reduction)
    if beta == 0:
        return _reduced(difference, reduction)
    return _reduced(where(difference < beta, 0.5 * square(difference) / beta, difference - 0.5 * beta), reduction)


@_composed
def huber_loss(prediction, target, reduction="mean", delta=1.0):
    """0.5 * d^2 where |d| < delta, else delta * (|d| - 0.5 * delta), with d = prediction - target, in the
    prediction's dtype, as ``torch.nn.functional.huber_loss`` (integers: floats of the dtype in force). ``delta`` must
    be positive (a ``ValueError``, as PyTorch's)."""
    reduction = input_checks.check_reduction("huber_loss", reduction)
    delta = arguments.huber_delta("huber_loss", delta)
    prediction = input_checks.float32_under_autocast(input_checks.as_floating(
        "huber_loss", "prediction", input_checks.as_tensor("huber_loss", "prediction", prediction)))
    target = cast_like(target, prediction)
    prediction = input_checks.check_same_shape("huber_loss", prediction, target)
    return _huber_core(prediction, target, reduction, delta)


@composite("prediction", "target", numbers=("delta",))
def _huber_core(prediction, target, reduction, delta):
    """``huber_loss`` of checked operands, one compiled program (``composite``) for every ``delta``."""
    difference = abs(prediction - target)
    return _reduced(where(difference < delta, 0.5 * square(difference), delta * (difference - 0.5 * delta)), reduction)


@_composed
def binary_cross_entropy(probabilities, target, weight=None, reduction="mean"):
    """-(t * log(p) + (1 - t) * log(1 - p)) with each log clamped at -100 (PyTorch's), times ``weight`` (which
    broadcasts); the probabilities' gradient is PyTorch's, (p - t) / max(p (1 - p), 1e-12) (finite at 0 and 1;
    below the floor a first derivative only). ``target`` of another shape than
    ``probabilities`` is a ``ShapeMismatchError`` (a ``ValueError``), a float tensor ``target`` of another float
    dtype a ``DtypeMismatchError``, and probabilities or a target outside [0, 1] a ``ValueOutOfRangeError``, as
    PyTorch refuses them (a NumPy array or a list takes the probabilities')."""
    reduction = input_checks.check_reduction("binary_cross_entropy", reduction)
    probabilities = input_checks.as_tensor("binary_cross_entropy", "probabilities", probabilities)
    # (the dtypes as given: under autocast the probabilities are float32 here, beside a half target of their own)
    input_checks.check_same_float_dtype("binary_cross_entropy", probabilities, target)
    probabilities = input_checks.float32_under_autocast(probabilities)
    target = cast_like(target, probabilities)
    probabilities = input_checks.check_same_shape("binary_cross_entropy", probabilities, target,
                                                  names=("probabilities", "target"))
    weight = input_checks.weight_like("binary_cross_entropy", "weight", weight, probabilities)
    probabilities = input_checks.check_broadcasts_to("binary_cross_entropy", "weight", weight, probabilities)
    # PyTorch's kernel: computed in float32 at least (its floor, 1e-12, is 0 in float16), rounded once; its
    # gradient (p - t) / max(p (1 - p), 1e-12) is the clamped logs' own where p (1 - p) >= 1e-12 (their second
    # derivative too), and below that floor (a probability of exactly 0 or 1: a float32 sigmoid of a logit past
    # 17), where autodiff of the logs gave NaN, a term of value 0 carries it, a first derivative only
    # PyTorch refuses probabilities outside [0, 1] (they gave NaN), and targets outside it (a finite loss of no
    # meaning here, silently); NaN passes, to the non-finite guard (a float16 step that overflowed is skipped, not
    # an error)
    probabilities = check_in_range(probabilities, 0, 1, "binary_cross_entropy probabilities")
    target = check_in_range(target, 0, 1, "binary_cross_entropy target")
    return _binary_cross_entropy_core(probabilities, target, weight, reduction)


@composite("probabilities", "target", "weight")
def _binary_cross_entropy_core(probabilities, target, weight, reduction):
    """``binary_cross_entropy`` of checked operands, one compiled program (``composite``)."""
    narrow = dtype_kinds.is_half(probabilities.dtype)
    p = cast(probabilities, "float32") if narrow else probabilities
    t = cast_like(target, p)

    def clamped_logs(q, t):
        return -(t * clip(log(q), -100.0) + (1 - t) * clip(log(1 - q), -100.0))

    floored = p * (1 - p) < 1e-12
    held, fixed = stop_gradient(p), stop_gradient(t)
    logs = clamped_logs(where(floored, zeros_like(p) + 0.5, p), t)  # (never differentiated at 0 or 1)
    losses = where(floored, clamped_logs(held, fixed) + (p - held) * stop_gradient((p - t) / 1e-12)
                   + _unclamped_target_slope(held, t, fixed), logs)
    if narrow:
        losses = cast_like(losses, probabilities)
    if weight is not None:
        losses = losses * weight
    return _reduced(losses, reduction)


def _unclamped_target_slope(p, t, fixed):
    """0, whose gradient with respect to the target ``t`` (``fixed``: its ``stop_gradient``) is PyTorch's for a binary
    cross-entropy of probabilities ``p`` (held): -logit(p), not clamped as the logs are (the clamped logs gave +-100
    at p of 0 or 1, where PyTorch's is +-inf, and less than PyTorch's below p = exp(-100))."""
    saturated = p * (1 - p) == 0
    ones = zeros_like(p) + 1
    inner = where(saturated, ones * 0.5, p)
    slope = (t - fixed) * stop_gradient(log1p(-inner) - log(inner))
    return slope + where(saturated, (1 - 2 * p) * _steep_zero(where(saturated, t - fixed, ones)), zeros_like(p))


@_composed
def binary_cross_entropy_with_logits(logits, target, weight=None, reduction="mean", pos_weight=None):
    """``torch.nn.functional.binary_cross_entropy_with_logits``: ``bce_with_logits`` with ``weight`` (each element's,
    broadcast) and ``pos_weight`` (the positive term's weight, broadcast from the last axis: one per class), as
    PyTorch computes them: ((1 - t) * x + (1 + (pos_weight - 1) * t) * softplus(-x)) * weight. Either of another
    shape than broadcasts to the logits' is a ``ShapeMismatchError``, as ``target`` of another shape than theirs."""
    reduction = input_checks.check_reduction("binary_cross_entropy_with_logits", reduction)
    owner = "binary_cross_entropy_with_logits"
    logits, target, returned = _bce_with_logits_operands(owner, input_checks.as_tensor(owner, "logits", logits), target)
    logits = input_checks.check_same_shape(owner, logits, target, names=("logits", "target"))
    weight = input_checks.weight_like(owner, "weight", weight, logits)
    pos_weight = input_checks.weight_like(owner, "pos_weight", pos_weight, logits)
    logits = input_checks.check_broadcasts_to(owner, "weight", weight, logits)
    target = input_checks.check_broadcasts_to(owner, "pos_weight", pos_weight, target)  # (before its term runs)
    return _in_dtype(_bce_with_logits_core(logits, target, weight, pos_weight, reduction), returned)


@composite("logits", "target", "weight", "pos_weight")
def _bce_with_logits_core(logits, target, weight, pos_weight, reduction):
    """``binary_cross_entropy_with_logits`` of checked operands, one compiled program (``composite``)."""
    losses = _ops().bce_with_logits(logits, target, "none")
    if pos_weight is not None:  # softplus(-x) as max(-x, 0) + log1p(exp(-|x|)): PyTorch's gradient at 0 (ties split)
        losses = losses + (pos_weight - 1) * target * (maximum(-logits, 0.0) + log1p(exp(-abs(logits))))
    if weight is not None:
        losses = losses * weight
    return _reduced(losses, reduction)


def _bce_with_logits_operands(owner, logits, target):
    """``(logits, target, returned)``: a float target of another dtype than the logits and the logits in the one
    ``torch.result_type`` gives them, and ``returned``, the dtype of the loss PyTorch's
    ``binary_cross_entropy_with_logits`` gives then, the target's (its kernel multiplies into 1 - target in place:
    float32 logits beside a float64 target gave a float32 loss, float16 logits beside float32 one in float16);
    otherwise the target in the logits' dtype (integers too, as the ops take them) and ``returned`` None."""
    target = input_checks.as_tensor(owner, "target", target, like=logits)
    dtype = getattr(target, "dtype", None)
    dtype = None if dtype is None else dtype_kinds.dtype_name(dtype)
    if dtype is None or not dtype_kinds.is_floating(dtype) or dtype == dtype_kinds.dtype_name(logits.dtype):
        return logits, cast_like(target, logits), None
    logits, target = _promoted_as_torch(logits, target, broadcast=True)
    return logits, target, dtype


def _in_dtype(x, dtype):
    """``x`` cast to ``dtype`` (a name), or as it is for None."""
    return x if dtype is None or dtype_kinds.dtype_name(x.dtype) == dtype else cast(x, dtype)


@_composed
def kl_div(log_probabilities, target, reduction="mean", log_target=False):
    """Pointwise target * (log(target) - input) (``log_target``: exp(t) * (t - input)), as PyTorch's: 0 * log(0) is
    0, a negative target's term NaN, and the target's gradient at 0 or below NaN.

    ``reduction``: 'mean' over every element (as PyTorch), 'batchmean' (the sum over the batch size: the
    mathematical KL divergence), 'sum' or 'none'."""
    reduction = input_checks.check_reduction("kl_div", reduction, arguments.REDUCTIONS + ("batchmean",))
    log_probabilities = input_checks.float32_under_autocast(
        input_checks.as_tensor("kl_div", "log_probabilities", log_probabilities))
    # a target of another float dtype: both in the one torch.result_type gives them, as PyTorch's (float32 beside a
    # float64 target was float32); a NumPy array or a list in the input's dtype, rounded once
    target = input_checks.as_tensor("kl_div", "target", target, like=log_probabilities)
    log_probabilities, target = _promoted_as_torch(log_probabilities, target, broadcast=True)
    log_probabilities = input_checks.check_same_shape("kl_div", log_probabilities, target,
                                                      names=("log_probabilities", "target"))
    return _kl_div_core(log_probabilities, target, reduction, bool(log_target))


@composite("log_probabilities", "target")
def _kl_div_core(log_probabilities, target, reduction, log_target):
    """``kl_div`` of checked operands, one compiled program (``composite``)."""
    if log_target:
        losses = exp(target) * (target - log_probabilities)
    else:  # PyTorch's xlogy(t, t) - t * input: 0 * log(0) is 0, a negative target's term NaN, and so is
        # 0 * -inf (a target of 0 where the input is -inf), as in PyTorch (both were 0); the target's gradient there
        # is PyTorch's NaN (it was -input)
        positive = target > 0
        ones = zeros_like(target) + 1
        safe = where(positive, target, ones)  # log(0) never evaluated: no NaN in the input's gradient
        other = where(positive, ones, target)  # (0 or negative: 0 or NaN, of NaN gradient)
        entropy = where(positive, target * log(safe), _steep_zero(other) - _steep_zero(other))
        losses = entropy - target * log_probabilities
    if reduction == "batchmean":
        return sum(losses) / _count(shape(log_probabilities)[:1], losses) if len(log_probabilities.shape) else sum(losses)
    return _reduced(losses, reduction)


def _steep_zero(zeros):
    """``zeros`` ** 0.5: 0 where ``zeros`` is 0, with an infinite gradient there (NaN for a negative value): the
    gradients of a loss's target that PyTorch's kernels give and autodiff of unidl's finite arithmetic cannot, +-inf
    (``binary_cross_entropy``'s -logit(p) at p of 0 or 1) and NaN (``kl_div``'s, xlogy(t, t)'s t / t at t = 0:
    inf - inf). A power, not ``sqrt``: TensorFlow's sqrt gradient is 0 where the gradient it receives is 0, PyTorch's
    0 * inf is NaN. Callers select it with ``where`` and hand it 1 where it is not selected (a finite gradient, which
    ``where`` drops)."""
    return zeros ** 0.5


def _count(sizes, like):
    """The product of ``sizes`` (ints, or scalar tensors where a graph leaves a size unknown) in ``like``'s dtype."""
    count, unknown = 1, []
    for size in sizes:
        if isinstance(size, int):
            count *= size
        else:
            unknown.append(size)
    for size in unknown:
        count = cast_like(size, like) * count
    return count


def _class_axis_last(x):
    """(N, C, d1, ...) -> (N, d1, ..., C); (N, C) as it is."""
    rank = len(x.shape)
    return x if rank <= 2 else permute(x, [0] + list(range(2, rank)) + [1])


@_composed
def nll_loss(log_probabilities, labels, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """-log_probabilities[n, labels[n]] * weight[labels[n]] for (N, C) or (N, C, d1, ...) input and integer
    labels (N,) or (N, d1, ...); labels equal to ``ignore_index`` count for nothing. 'mean' divides by
    the summed weights of the counted labels (PyTorch's); 'none' keeps the labels' shape. One sample's (C,) takes
    a label (). Labels of another shape, or a ``weight`` of another number of classes, are a
    ``ShapeMismatchError``, as ``nn.NLLLoss``'s (they were used as far as they went, or broadcast). The arguments
    in ``torch.nn.functional.nll_loss``'s order: its deprecated ``size_average`` and ``reduce``, fourth and sixth,
    are the losses' ``ValueError`` naming ``reduction=`` (a call ported from PyTorch with them positionally took
    ``size_average`` as ``ignore_index``)."""
    if size_average is not None or reduce is not None:
        from unidl import loss_ops  # (it imports this module)

        loss_ops.refuse_legacy_reduction("nll_loss", size_average, reduce)
    reduction = input_checks.check_reduction("nll_loss", reduction)
    owner = "nll_loss"
    log_probabilities = input_checks.float32_under_autocast(input_checks.as_floating(
        owner, "log_probabilities", input_checks.as_tensor(owner, "log_probabilities", log_probabilities)))
    labels = input_checks.check_labels(owner, "NLLLoss", labels, ignore_index)
    if len(log_probabilities.shape) == 1 and len(labels.shape) == 0:  # one sample: PyTorch's unbatched input
        loss = nll_loss(unsqueeze(log_probabilities, 0), unsqueeze(labels, 0), weight, ignore_index=ignore_index,
                        reduction=reduction)
        return squeeze(loss, 0) if reduction == "none" else loss
    weight = input_checks.as_tensor(owner, "weight", weight, like=log_probabilities)
    _, log_probabilities, labels = input_checks.class_loss_shapes(owner, log_probabilities, labels, False, weight)
    weight = input_checks.class_weight("NLLLoss", weight, log_probabilities)
    safe = _checked_labels("NLLLoss", log_probabilities, labels, ignore_index)
    return _nll_core(log_probabilities, labels, safe, weight, ignore_index, reduction)


def _checked_labels(owner, scores, labels, ignore_index):
    """``labels`` with 0 in place of each equal to ``ignore_index``, checked to lie in [0, C), C the classes of
    ``scores`` (axis 1): ``IndexOutOfRangeError`` naming ``owner``'s labels otherwise, eagerly before any of the
    loss's math runs, and inside a compiled graph from a check that runs with it."""
    return check_index(_kept_labels(labels, ignore_index), shape(scores)[1], f"{owner} labels")


@composite("labels", numbers=("ignore_index",))
def _kept_labels(labels, ignore_index):
    """``labels`` with 0 in place of each equal to ``ignore_index``, one compiled program (``composite``)."""
    return where(labels != ignore_index, labels, zeros_like(labels))


@composite("log_probabilities", "labels", "safe", "weight", numbers=("ignore_index",))
def _nll_core(log_probabilities, labels, safe, weight, ignore_index, reduction):
    """``nll_loss`` of checked operands (``safe``: ``_checked_labels``'), one compiled program (``composite``) for
    every ``ignore_index``."""
    return _nll(log_probabilities, labels, safe, weight, ignore_index, reduction)


def _nll(log_probabilities, labels, safe, weight, ignore_index, reduction):
    """The NLL loss's math (``nll_loss``, ``cross_entropy_loss``) of checked operands: ``safe`` the labels with 0 in
    place of ``ignore_index`` (``_checked_labels``)."""
    kept = labels != ignore_index
    picked = squeeze(_ops().gather(log_probabilities, 1, unsqueeze(safe, 1)), 1)  # (its shape fits: no check)
    mask = cast_like(kept, picked)
    weights = mask if weight is None else take(weight, safe) * mask
    losses = where(kept, -picked * weights, zeros_like(picked))  # a select: an ignored label's gradient is 0, never
    # 0 * inf (PyTorch's, when every label is ignored and the mean divides by 0)
    if reduction == "mean":
        return sum(losses) / sum(weights)
    return _reduced(losses, reduction)


@_composed
def cross_entropy_loss(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy``: logits (N, C) or (N, C, d1, ...) against integer class labels
    (N,)/(N, d1, ...) or class probabilities of the logits' shape, with class ``weight``, ``ignore_index``
    (labels only) and ``label_smoothing`` in [0, 1] (the target mixed with the uniform distribution; outside it a
    ``ValueError``)."""
    reduction = input_checks.check_reduction("cross_entropy_loss", reduction)
    label_smoothing = arguments.label_smoothing("cross_entropy_loss", label_smoothing)
    return _cross_entropy_loss(logits, target, weight, ignore_index, reduction, label_smoothing, "cross_entropy_loss")


def _smoothing(label_smoothing) -> bool:
    """Whether a cross-entropy mixes in the uniform distribution: a number other than 0, or a tensor (whose value a
    graph knows only when it runs)."""
    return arguments.tensor_argument(label_smoothing) or label_smoothing != 0


def _cross_entropy_loss(logits, target, weight, ignore_index, reduction, label_smoothing, owner):
    """``cross_entropy_loss``, its errors naming ``owner`` (the op called): its checks, then its math, one compiled
    program (``_cross_entropy_core``, ``_soft_cross_entropy_core``) for every ``ignore_index`` and non-zero
    ``label_smoothing`` (None for none: no mixture computed)."""
    logits, target = (input_checks.as_tensor(owner, what, x) for what, x in (("logits", logits), ("target", target)))
    if len(logits.shape) == 1 and (len(target.shape) == 0 or dtype_kinds.holds_floats(target)):
        # one sample, (C,) against a label () or probabilities (C,): PyTorch's unbatched input
        loss = _cross_entropy_loss(unsqueeze(logits, 0), unsqueeze(target, 0), weight, ignore_index, reduction,
                                   label_smoothing, owner)
        return squeeze(loss, 0) if reduction == "none" else loss
    log_probabilities = input_checks.float32_under_autocast(input_checks.as_floating(owner, "logits", logits))
    weight = input_checks.as_tensor(owner, "weight", weight, like=log_probabilities)
    _, logits, target = input_checks.class_loss_shapes(owner, logits, target, True, weight)
    # as log_softmax takes them (autocast's float32, then its own as_floating): the log-probabilities' dtype
    logits = input_checks.as_floating(owner, "logits", input_checks.float32_under_autocast(logits))
    label_smoothing = label_smoothing if _smoothing(label_smoothing) else None
    if len(target.shape) == len(logits.shape):  # class probabilities: PyTorch promotes the three dtypes
        if ignore_index >= 0:
            raise ValueError(f"{owner}: ignore_index={ignore_index} applies to integer labels, not to "
                             f"class probabilities (PyTorch refuses it); leave it at its default, -100")
        target = input_checks.as_floating(owner, "target", target)
        return _soft_cross_entropy_core(logits, target, weight, reduction, label_smoothing)
    weight = input_checks.class_weight("CrossEntropyLoss", weight, logits, "logits")
    target = input_checks.check_labels(owner, "CrossEntropyLoss", target, ignore_index)
    safe = _checked_labels("CrossEntropyLoss", logits, target, ignore_index)
    return _cross_entropy_core(logits, target, safe, weight, ignore_index, reduction, label_smoothing)


def _smoothing_like(label_smoothing, x):
    """A cross-entropy's ``label_smoothing`` beside ``x``: a tensor (a graph's input, the compiled program's traced
    number) in ``x``'s dtype (taken whatever its value, no Python branch), a Python number as it is."""
    return cast_like(label_smoothing, x) if arguments.tensor_argument(label_smoothing) else label_smoothing


@composite("logits", "labels", "safe", "weight", numbers=("ignore_index", "label_smoothing"))
def _cross_entropy_core(logits, labels, safe, weight, ignore_index, reduction, label_smoothing):
    """``cross_entropy_loss`` against checked class labels (``safe``: ``_checked_labels``'), one compiled program
    (``composite``) for every ``ignore_index`` and ``label_smoothing`` (None: none)."""
    log_probabilities = log_softmax(logits, 1)
    loss = _nll(log_probabilities, labels, safe, weight, ignore_index, reduction)
    if label_smoothing is None:
        return loss
    label_smoothing = _smoothing_like(label_smoothing, log_probabilities)
    broadcast = None if weight is None else reshape(weight, _per_class(logits))
    classes = _count(shape(logits)[1:2], log_probabilities)
    counted = labels != ignore_index
    smooth = -sum(log_probabilities if broadcast is None else log_probabilities * broadcast, 1)
    smooth = where(counted, smooth, zeros_like(smooth))  # a select, as in _nll
    if reduction == "mean":
        kept = cast_like(counted, log_probabilities)
        if weight is None:
            smooth = sum(smooth) / sum(kept)
        else:
            smooth = sum(smooth) / sum(take(weight, safe) * kept)
    else:
        smooth = _reduced(smooth, reduction)
    return (1 - label_smoothing) * loss + smooth * (label_smoothing / classes)


@composite("logits", "target", "weight", numbers=("label_smoothing",))
def _soft_cross_entropy_core(logits, target, weight, reduction, label_smoothing):
    """``cross_entropy_loss`` against checked class probabilities, one compiled program (``composite``) for every
    ``label_smoothing`` (None: none)."""
    log_probabilities = log_softmax(logits, 1)
    log_probabilities, target = _promoted_as_torch(log_probabilities, target, broadcast=True)
    broadcast = None if weight is None else reshape(weight, _per_class(logits))
    if broadcast is not None:
        log_probabilities, broadcast = _promoted_as_torch(log_probabilities, broadcast, broadcast=True)
        target = cast_like(target, log_probabilities)
    if label_smoothing is not None:  # (a tensor's in the promoted dtype: float64 probabilities keep theirs)
        smoothing = _smoothing_like(label_smoothing, target)
        target = target * (1 - smoothing) + smoothing / _count(shape(logits)[1:2], target)
    weighted = log_probabilities * target if broadcast is None else log_probabilities * target * broadcast
    losses = -sum(weighted, 1)
    if reduction == "mean":
        return sum(losses) / _count(shape(losses), losses)
    return _reduced(losses, reduction)


def _per_class(logits) -> tuple:
    """A class weight's shape beside ``logits`` (N, C, d1, ...): (1, C, 1, ...)."""
    return (1, -1) + (1,) * (len(logits.shape) - 2)


@_composed
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention``: softmax(query @ key^T * scale + mask) @ value over the
    last two axes ((..., L, E) queries, (..., S, E) keys, (..., S, Ev) values -> (..., L, Ev)).

    ``scale`` defaults to 1/sqrt(E). ``attn_mask`` broadcasts to (..., L, S): booleans say which keys each query
    may attend to (True takes part, as PyTorch's function; ``nn.MultiheadAttention``'s masks say the opposite), a
    float mask is added to the scores. ``is_causal`` lets query i attend to keys 0..i only (then ``attn_mask``
    must be None). ``dropout_p`` drops attention weights (from the backend's generator). A query whose every key
    is masked attends to nothing: its weights and output are 0, as PyTorch's function (not NaN). Query, key and
    value of two dtypes are a ``DtypeMismatchError`` outside autocast, as PyTorch's (JAX promoted them); of
    shapes that do not fit (fewer than 2 axes, two E or S, batch axes that do not broadcast) a ``ShapeMismatchError``
    naming the three, in graphs too. ``enable_gqa``: grouped-query attention, as PyTorch's (2.5+): the heads (axis
    -3) of ``key`` and of ``value`` each repeated (``repeat_interleave``) to the query's, whose number of heads
    they must divide (a ``ShapeMismatchError`` if not)."""
    if isinstance(query, CONVERTED) or isinstance(key, CONVERTED) or isinstance(value, CONVERTED):
        query, key, value = (input_checks.value_as_tensor("scaled_dot_product_attention", what, t)
                             if isinstance(t, CONVERTED) else t for what, t in zip(("query", "key", "value"),
                                                                                  (query, key, value)))
    input_checks.check_attention_dtypes("scaled_dot_product_attention", query, key, value)
    if enable_gqa:
        key, value = (_heads_repeated(query, t, what) for what, t in (("key", key), ("value", value)))
    query = input_checks.check_attention_shapes("scaled_dot_product_attention", query, key, value)
    attn_mask = input_checks.as_tensor("scaled_dot_product_attention", "attn_mask", attn_mask)
    input_checks.check_mask("scaled_dot_product_attention", "attn_mask", attn_mask, query, float32=True)
    attn_mask = input_checks.check_mask_broadcasts("scaled_dot_product_attention", "attn_mask", attn_mask, query,
                                                   key)
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: give either attn_mask or is_causal=True, not both "
                         "(as torch.nn.functional.scaled_dot_product_attention)")
    return attention(query, key, value, attn_mask, dropout_p, is_causal, scale, need_weights=False)[0]


def _heads_repeated(query, x, what):
    """``x`` (a key or value (..., H, S, E)) with each head repeated to the query's (..., Hq, L, E) Hq heads, head h
    of ``x`` serving query heads h * Hq / H to (h + 1) * Hq / H - 1, as ``repeat_interleave(Hq // H, -3)`` in
    PyTorch's ``enable_gqa``: a gather of whole heads, whose gradient sums each group's."""
    if _rank(query) is not None and _rank(query) < 3 or _rank(x) is not None and _rank(x) < 3:
        raise ShapeMismatchError(f"scaled_dot_product_attention enable_gqa=True needs query and {what} of at least 3 "
                                 f"axes (..., heads, length, features); got {tuple(query.shape)} and "
                                 f"{tuple(x.shape)}")
    query_heads, heads = input_checks.sizes_of(query)[-3], input_checks.sizes_of(x)[-3]
    message = (f"scaled_dot_product_attention enable_gqa=True: the {what}'s {{}} heads must divide the query's {{}} "
               f"(as PyTorch's)")
    positions = arange(0, query_heads, dtype="int64")
    if isinstance(query_heads, int) and isinstance(heads, int):
        if not heads or query_heads % heads:
            raise ShapeMismatchError(message.format(heads, query_heads))
        if heads == query_heads:
            return x
        return _ops().take_in_range(x, positions // (query_heads // heads), len(x.shape) - 3)
    # a graph's sizes (TensorFlow's, unknown until it runs): the check runs with it
    query_heads, heads = (cast_like(size, positions) for size in (query_heads, heads))
    x = _ops().check_shape(x, (heads > 0) & (query_heads % maximum(heads, 1) == 0), message, (heads, query_heads))
    return _ops().take_in_range(x, positions // (query_heads // maximum(heads, 1)), len(x.shape) - 3)


def causal_mask(query_length, key_length):
    """(L, S) booleans, True where query i may attend to key j (j <= i): PyTorch's ``is_causal`` mask."""
    rows = unsqueeze(arange(0, query_length, dtype="int64"), 1)
    return rows >= unsqueeze(arange(0, key_length, dtype="int64"), 0)


@_composed
def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, masks=(),
              safe_softmax=True, need_weights=True):
    """``scaled_dot_product_attention`` returning ``(output, weights)``, weights (..., L, S) after softmax and
    dropout. ``masks``: more masks in ``attn_mask``'s convention, each applied too (``nn.MultiheadAttention``'s).
    ``safe_softmax=False``: a query whose every key is masked gets NaN, as PyTorch's paths with a plain softmax.
    ``need_weights=False``: weights None; then, without dropout, the backend's fused kernel computes the output
    where it has one (the optional op ``fused_attention``) and the masks are boolean. The math after the checks is
    a composite (one compiled program on eager JAX for every ``scale``); dropout's mask, drawn from the backend's
    generator, is applied between the weights' composite and their product with ``value``."""
    for mask in (attn_mask,) + tuple(masks):
        input_checks.check_mask("attention", "attn_mask", mask)
    scale = _attention_scale(scale)
    if not need_weights and not dropout_p:
        output = _fused_attention(query, key, value, attn_mask, is_causal, scale, masks, safe_softmax)
        if output is not None:
            return output, None
    if scale is None:
        import math

        features = shape(query)[-1]  # a scalar tensor where a graph leaves it unknown
        scale = math.sqrt(1.0 / features) if isinstance(features, int) else 1.0 / sqrt(cast_like(features, query))
    masks = ((attn_mask,) if attn_mask is not None else ()) + tuple(masks)
    if not dropout_p:
        return _attention_core(query, key, value, masks, is_causal, scale, safe_softmax)
    # the dropout mask is drawn from the backend's generator, state that a composite may not read
    weights = dropout(_attention_weights(query, key, masks, is_causal, scale, safe_softmax), dropout_p, True)
    return matmul(weights, value), weights


def _attention_scale(scale):
    """``attention``'s ``scale`` as a Python float where it is a number (a NumPy scalar too, and a bool, as
    ``F.scaled_dot_product_attention`` takes them: a NumPy float64 would otherwise reach JAX as a float64 array and
    promote the product); None and a framework's tensor as they are; anything else, a NumPy array (0-d too, which
    torch refuses as it refuses a list), a ``TypeError``. NaN is a ``ValueError``: torch's own paths disagree on it
    (its math path gives NaN, its fused ones 0)."""
    if scale is None or (hasattr(scale, "shape") and not isinstance(scale, (np.ndarray, np.generic))):
        return scale
    number = None if isinstance(scale, np.ndarray) else float(scale) if isinstance(scale, (bool, np.bool_)) else \
        arguments.real(scale)
    if number is None:
        raise TypeError(f"attention: scale must be a real number (a Python or NumPy int or float), a 0-d tensor or "
                        f"None, as torch.nn.functional.scaled_dot_product_attention takes; got {scale!r}")
    if math.isnan(number):
        raise ValueError("attention: scale is NaN, which torch.nn.functional.scaled_dot_product_attention takes to NaN "
                         "on its math path and to 0 on its fused ones; give a real number, or None for 1/sqrt(E)")
    return number


@composite("query", "key", "value", sequences=("masks",), numbers=("scale",))
def _attention_core(query, key, value, masks, is_causal, scale, safe_softmax):
    """``attention`` without dropout of checked operands, ``(output, weights)`` as one compiled program
    (``composite``) for every ``scale``: ``masks`` (``attn_mask`` first) in ``attention``'s convention."""
    weights = _attention_weights(query, key, masks, is_causal, scale, safe_softmax)
    return matmul(weights, value), weights


@composite("query", "key", sequences=("masks",), numbers=("scale",))
def _attention_weights(query, key, masks, is_causal, scale, safe_softmax):
    """``attention``'s weights (..., L, S) before dropout, one compiled program (``composite``) for every ``scale``."""
    scores = matmul(query * scale, transpose(key, -2, -1))
    if is_causal:
        sizes = shape(scores)
        masks = tuple(masks) + (causal_mask(sizes[-2], sizes[-1]),)
    blocked = zeros_like(scores) - float("inf")
    for mask in masks:
        if "bool" in str(getattr(mask, "dtype", "")):
            scores = where(mask, scores, blocked)
        else:
            scores = scores + cast_like(mask, scores)
    if tuple(scores.shape)[-1] == 0:  # no key at all (known while tracing): PyTorch's output is 0
        return zeros_like(scores)
    if masks and safe_softmax:
        # a query whose every key is masked attends to nothing: weights and output 0, as PyTorch's safe softmax
        # in scaled_dot_product_attention (a plain softmax gives NaN, and NaN gradients to every weight). Its
        # scores are raised to 0 before the softmax (a -inf floor leaves the others as they are), so that
        # neither the forward nor the backward computes a NaN; (..., L, 1) factors, cheaper than full-size selects
        top = _amax(scores, -1, keepdim=True)
        attends = top > float("-inf")
        floor = where(attends, zeros_like(top) - float("inf"), zeros_like(top))
        ops = _ops()  # the framework's own maximum: a tie (a masked score at the -inf floor) has no gradient
        weights = softmax((optional_op(ops, "framework_maximum") or ops.maximum)(scores, floor), -1)
        return weights * cast_like(attends, scores)
    return softmax(scores, -1)


def _fused_attention(query, key, value, attn_mask, is_causal, scale, masks, safe_softmax):
    """``attention``'s output from the backend's ``fused_attention``, or None where it has none or the call needs
    the composed softmax: a float mask (added to the scores), a scale that is a tensor, or a plain softmax's NaN
    rows (``safe_softmax=False``) under any mask."""
    fused = optional_op(_ops(), "fused_attention")
    masks = ((attn_mask,) if attn_mask is not None else ()) + tuple(masks)
    if fused is None or not (isinstance(scale, (int, float)) or scale is None):
        return None
    if ((masks or is_causal) and not safe_softmax) or not all("bool" in str(getattr(m, "dtype", "")) for m in masks):
        return None
    return fused(query, key, value, masks, is_causal, scale)


# spatial ops composed over the registry's ops (their own module: unidl/spatial_ops.py)
from unidl import input_checks  # noqa: E402  (front-end checks of bad input, over the ops above)
from unidl.embedding_ops import embedding  # noqa: E402
from unidl.spatial_ops import (adaptive_avg_pool2d, adaptive_max_pool2d, conv1d, conv_transpose2d,  # noqa: E402
                               dropout2d, group_norm, interpolate)
from unidl.spatial1d_ops import (adaptive_avg_pool1d, adaptive_max_pool1d, avg_pool1d, conv_transpose1d,  # noqa: E402
                                 max_pool1d)
from unidl.pixel_shuffle_ops import pixel_shuffle, pixel_unshuffle  # noqa: E402
# activations and distances composed over the registry's ops (their own module: unidl/activation_ops.py)
from unidl.activation_ops import (celu, cosine_similarity, glu, hardshrink, hardsigmoid, hardswish,  # noqa: E402
                                  logsigmoid, mish, pairwise_distance, rrelu, selu, softmin, softshrink, softsign,
                                  tanhshrink, threshold)
# the margin, embedding, multi-label and likelihood losses composed over the registry's ops (unidl/loss_ops.py)
from unidl.loss_ops import (cosine_embedding_loss, gaussian_nll_loss, hinge_embedding_loss,  # noqa: E402
                            linear_cross_entropy, margin_ranking_loss, multi_margin_loss, multilabel_margin_loss,
                            multilabel_soft_margin_loss, poisson_nll_loss, soft_margin_loss, triplet_margin_loss,
                            triplet_margin_with_distance_loss)
# the CTC loss, its alpha recursion a scan over the registry's ops (its own module: unidl/ctc.py)
from unidl.ctc import ctc_loss  # noqa: E402


def _with_torch_names(namespace: dict) -> None:
    """Give the public functions of ``TORCH_NAMES`` that no declaration's dispatcher took it for (the composites,
    ``cat``, ``transpose``, ``relu6``) torch's names: a forwarding function of their own (``op_registry.composed``
    without checks: the function checks its arguments itself)."""
    for name, entry in TORCH_NAMES.items():
        function = namespace[name]
        if getattr(function, "__signature__", None) is None:
            namespace[name] = op_registry.composed(_ops, function, (), None, entry)


_with_torch_names(globals())
