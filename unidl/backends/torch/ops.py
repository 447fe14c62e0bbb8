"""unidl's functional ops on PyTorch: mostly ``torch.nn.functional`` itself, NCHW throughout."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from unidl import config

from unidl.errors import IndexOutOfRangeError, ValueOutOfRangeError
from unidl.input_checks import check_known_shape as check_shape  # sizes are always known here
from unidl.input_checks import check_known_values, float_bound
from unidl.nested import tree_leaves, tree_map

linear = F.linear
matmul = torch.matmul
relu = torch.relu
sigmoid = torch.sigmoid
tanh = torch.tanh
exp = torch.exp
log = torch.log
sqrt = torch.sqrt
abs = torch.abs
stop_gradient = torch.Tensor.detach
sign = torch.sign
square = torch.square
where = torch.where
zeros_like = torch.zeros_like
silu = F.silu
log1p = torch.log1p


def maximum(a, b):
    """``torch.maximum``, a Python number on either side taken as PyTorch takes one in ``x + 0.5`` (torch's own
    refuses numbers): ``torch.maximum(x, torch.tensor(0.5, dtype=x.dtype))``, see ``_with_tensors``."""
    return torch.maximum(*_with_tensors(a, b))


def minimum(a, b):
    return torch.minimum(*_with_tensors(a, b))


def _with_tensors(a, b):
    """``a`` and ``b``, a number (or NumPy scalar) among them as a tensor in the other's dtype where that holds it
    (any number for a float tensor, an integer for an integer one), else in torch's default dtype for its kind,
    from which torch's promotion goes on (an integer tensor and 0.5: a float result, as ``x + 0.5``)."""
    if not isinstance(a, torch.Tensor):
        a = _number_like(a, b)
    if not isinstance(b, torch.Tensor):
        b = _number_like(b, a)
    return a, b


def _number_like(number, other):
    # a 0-dim tensor on the CPU, which torch's binary ops take beside a tensor on any device (one on ``other``'s
    # device would be a blocking host-to-device copy a call on CUDA)
    tensor = torch.as_tensor(number)
    holds_it = isinstance(other, torch.Tensor) and (
        other.is_floating_point() or (not tensor.is_floating_point() and other.dtype != torch.bool))
    # made in ``other``'s dtype at once: 0.1 by way of float32 is 0.10000000149 in float64
    return torch.as_tensor(number, dtype=other.dtype) if holds_it else tensor


def leaky_relu(x, negative_slope=0.01):
    return F.leaky_relu(x, negative_slope)


def softmax(x, dim=-1):
    return torch.softmax(x, dim)


def amax(x, dim, keepdim=False):
    return torch.amax(x, dim, keepdim)


def log_softmax(x, dim=-1):
    return torch.log_softmax(x, dim)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """``F.max_pool2d``; inside ``torch.compile`` (not ``torch.export``) PyTorch's own kernel as one opaque op
    (``_max_pool2d_kernel``): Inductor's lowering takes a window's first NaN, not its last, and sends the gradient
    of a window of nothing but -inf to a pad (an index out of bounds), where the kernel takes its first element
    inside the input. An export keeps the plain op, which its consumers (ONNX) know."""
    stride = stride if stride is not None else kernel_size
    if _COMPILED_KERNEL and torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        pairs = [list(value) if isinstance(value, (tuple, list)) else [value, value]
                 for value in (kernel_size, stride, padding)]
        return _max_pool2d_kernel(x, *pairs)[0]
    return F.max_pool2d(x, kernel_size, stride, padding)


#: torch has custom ops and tells an export apart (2.5 on); on an older torch the compiler's lowering stays
_COMPILED_KERNEL = hasattr(torch.library, "custom_op") and hasattr(torch.compiler, "is_exporting")


def _max_pool2d_kernel(x: torch.Tensor, kernel_size: list[int], stride: list[int],
                       padding: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's max pooling kernel (values, indices), which a compiler sees as one op and calls as it is."""
    return torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding)


def _max_pool2d_save(ctx, inputs, output):
    x, ctx.kernel_size, ctx.stride, ctx.padding = inputs
    ctx.save_for_backward(x, output[1])


def _max_pool2d_backward(ctx, grad, _indices_grad):
    # the gradient to the kernel's own indices (a compiler may lower this op: it reads the indices given)
    x, indices = ctx.saved_tensors
    grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, ctx.kernel_size, ctx.stride, ctx.padding,
                                                              [1, 1], False, indices)
    return grad_x, None, None, None


if _COMPILED_KERNEL:
    _aten_max_pool2d = _max_pool2d_kernel
    _max_pool2d_kernel = torch.library.custom_op("unidl::max_pool2d", mutates_args=())(_aten_max_pool2d)
    _max_pool2d_kernel.register_fake(_aten_max_pool2d)  # (on fake tensors aten's own meta kernel: the shapes)
    _max_pool2d_kernel.register_autograd(_max_pool2d_backward, setup_context=_max_pool2d_save)


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    # scatter's gradient for the values is the output's gradient gathered at each index, as max_unpool2d's
    n, c = x.shape[:2]
    height, width = output_size
    flat = x.new_zeros((n, c, height * width)).scatter(2, indices.reshape(n, c, -1), x.reshape(n, c, -1))
    return flat.reshape(n, c, height, width)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return F.avg_pool2d(x, kernel_size, stride if stride is not None else kernel_size, padding)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if not training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps), running_mean, running_var
    if isinstance(momentum, torch.Tensor):  # the kernel takes a number (torch's own BatchNorm calls float() too)
        momentum = float(momentum)
    # torch's kernel updates the statistics it is given in place: give it copies, so the op stays pure (torch's
    # function, which a Keras variable unwraps itself in: the keras backend runs this op on Keras-on-torch)
    new_mean, new_var = torch.clone(running_mean), torch.clone(running_var)
    return F.batch_norm(x, new_mean, new_var, weight, bias, True, momentum, eps), new_mean, new_var


def all_finite(values):
    """A boolean scalar: every element of every tensor in ``values`` (None entries ignored) is finite. One fused
    pass over all of them, the kernel ``torch.amp``'s scaler and the torch backend's guard run (optimizer.py
    ``guard_and_clip``), for the keras backend's guard on Keras's tensors: ``isfinite`` and ``all`` per tensor read
    each tensor four times and cost 5% of a ResNet-18 step on one CPU thread (benchmarks/RESULTS.md, stop 63).
    Composed per tensor inside ``torch.compile``, and over tensors on several devices or not of a float dtype."""
    tensors = [torch.as_tensor(v).detach() for v in values if v is not None]
    if not tensors:
        return torch.tensor(True)
    device = tensors[0].device
    if torch.compiler.is_compiling() or any(t.device != device or not t.is_floating_point() for t in tensors):
        return torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    found_inf = torch.zeros(1, device=device)
    # sets found_inf where a value is not finite, and multiplies every value by one in place (unchanged)
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, torch.ones(1, device=device))
    return found_inf[0] == 0


def _is_default_generator(generator) -> bool:
    """None or a device's default generator (the backend's own, ``Backend.generator``: that of the device in
    force). F.dropout's fused kernel then draws from the default generator of x's own device, which may not be the
    device in force (a model kept on the CPU while a GPU is), where an explicit one would be refused."""
    return generator is None or generator is torch.default_generator or any(
        generator is default for default in torch.cuda.default_generators)


def dropout(x, p, training=True, generator=None):
    if not training or p == 0:
        return x
    if _is_default_generator(generator):
        return F.dropout(x, p, True)  # the fused kernel draws from the device's default generator
    if p == 1:
        return torch.zeros_like(x)
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator)
    return x * keep / (1 - p)


def uniform_like(x, low, high, generator):
    # (the default generator: None, which draws on x's own device as F.dropout's fused kernel does)
    return torch.empty_like(x).uniform_(low, high, generator=None if _is_default_generator(generator) else generator)


def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


def flatten(x, start_dim=1):
    return torch.flatten(x, start_dim)


def concat(tensors, axis=0):
    return torch.cat(list(tensors), axis)


def stack(tensors, axis=0):
    return torch.stack(list(tensors), axis)


def mean(x, axis=None, keepdims=False):
    if not x.is_floating_point():  # the mean of integers in the float dtype in force (torch.mean refuses them)
        x = x.to(getattr(torch, config.get_dtype()))
    return torch.mean(x) if axis is None and not keepdims else torch.mean(x, axis, keepdims)


def sum(x, axis=None, keepdims=False):
    return torch.sum(x) if axis is None and not keepdims else torch.sum(x, axis, keepdims)


def clip(x, minimum=None, maximum=None):
    if not x.is_floating_point() and (float_bound(minimum) or float_bound(maximum)):
        x = x.to(getattr(torch, config.get_dtype()))  # the float dtype in force, as on the other backends
    return torch.clamp(x, minimum, maximum)


def shape(x):
    return tuple(x.shape)


def cast_like(x, like):
    return x.to(like.dtype)


def one_hot(labels, num_classes):
    # a comparison, not F.one_hot: a label out of range gives a row of zeros, as on the other backends (F.one_hot
    # raises, after reading the labels' smallest and largest values back to the host at every call)
    return (labels.long().unsqueeze(-1) == torch.arange(num_classes, device=labels.device)).long()


#: ``torch.nn.functional``'s number of each reduction (``torch.nn._reduction.get_enum``)
_REDUCTION_ENUMS = {"none": 0, "mean": 1, "sum": 2}


def _elementwise_loss(kernel, functional, prediction, target, reduction):
    """``functional(prediction, target, reduction=reduction)`` (``F.mse_loss``, ``F.l1_loss``) as the ``kernel`` it
    calls, where the two have one shape (always, from unidl's callers, which check it): its Python then only
    broadcasts them into themselves, and costs as much as the kernel on a small batch."""
    if prediction.shape == target.shape:
        return kernel(prediction, target, _REDUCTION_ENUMS[reduction])
    return functional(prediction, target, reduction=reduction)


def mse_loss(prediction, target, reduction="mean"):
    return _elementwise_loss(torch._C._nn.mse_loss, F.mse_loss, prediction, target, reduction)


def l1_loss(prediction, target, reduction="mean"):
    return _elementwise_loss(torch._C._nn.l1_loss, F.l1_loss, prediction, target, reduction)


def _exporting() -> bool:
    """Whether ``torch.export`` is tracing (``ud.export``): a read of a tensor's values is an error there
    (``GuardOnDataDependentSymNode``), and the exported program runs without unidl's checks."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(exporting and exporting())


def check_in_range(x, low, high, what="values"):
    """unidl's ``ValueOutOfRangeError`` for a value outside [low, high], by one read of the count outside (as
    ``check_index``: a device-side assert would leave a GPU's CUDA context unusable)."""
    if x.numel() and not x.is_meta and not _exporting():
        values = x.detach()
        outside = int(torch.logical_or(values < low, values > high).sum())
        if outside:
            raise ValueOutOfRangeError(f"{what} must lie in [{low}, {high}]; found {outside} value(s) outside")
    return x


def check_index(indices, size, what="index"):
    """unidl's ``IndexOutOfRangeError`` for an index outside ``[0, size)``, on every device. On a GPU torch's own
    kernels check with a device-side assert, which leaves the process's CUDA context unusable (every later CUDA
    call fails, JAX's in the same process too; seen on an H200): the smallest and largest index come back to the
    host in one read first. On a GPU that read waits for the work queued before it (a read of an idle queue took
    0.02 ms there; what the lost overlap costs a GPU-bound step has not been measured) and is a graph break under
    torch.compile, as it is on the CPU. Meta tensors (shapes only) hold no values to check; nor does a program
    torch.export traces (``_exporting``)."""
    if indices.numel() and not indices.is_meta and not _exporting():
        # (Dynamo reads is_compiling as True while it traces; eagerly it is a flag's read, which imports nothing)
        if not torch.compiler.is_compiling():
            if _untraced_check_index_values is None and "torch._dynamo" in sys.modules:
                untraced_checks()  # (for a user's own torch.compile of code that ran eagerly first)
            _check_index_values(indices, size, what)
        else:
            (_untraced_check_index_values or _check_index_values)(indices, size, what)
    return indices


def _check_index_values(indices, size, what):
    """``check_index``'s read and raise. Under torch.compile it runs untraced (``untraced_checks``): the read
    breaks the graph either way, and a traced one compiled this function again for each rank, dtype and size it
    met."""
    low, high = torch.stack(torch.aminmax(indices.detach())).tolist()  # (one read, on every device)
    if low < 0 or high >= size:
        raise IndexOutOfRangeError(f"{what} must lie in [0, {size}); found values from {low} to {high}")


#: ``_check_index_values`` as torch.compile runs it, untraced (``torch.compiler.disable``); built by
#: ``untraced_checks`` where torch.compile is called, not at import: ``torch.compiler.disable`` imports torch._dynamo
#: (0.8 s of CPU in every process that ran a torch op), and building it inside a traced frame breaks the graph there.
_untraced_check_index_values = None


def untraced_checks():
    """Builds the checks that torch.compile runs untraced (``_untraced_check_index_values``); called where unidl
    calls torch.compile (``ud.function(jit_compile=True)``), which imports torch._dynamo anyway, and by an eager check
    once torch._dynamo is imported. A user's own torch.compile that checks indices before either traces the plain
    check: the same errors, compiled once per rank, dtype and size of the indices."""
    global _untraced_check_index_values
    if _untraced_check_index_values is None:
        _untraced_check_index_values = torch.compiler.disable(_check_index_values)


def check_values(x, condition, message, values=()):
    """``check_known_values`` by one read of ``condition`` (and of ``values`` on failure), as ``check_index``;
    meta tensors and a program torch.export traces hold no values to check."""
    if isinstance(condition, torch.Tensor) and (condition.is_meta or _exporting()):
        return x
    return check_known_values(x, condition, message, values)


def segment_sum(data, segment_ids, num_segments):
    return torch.zeros(num_segments, dtype=data.dtype, device=data.device).index_add(0, segment_ids.long(), data)


def cross_entropy(logits, labels, reduction="mean", ignore_index=-100):
    # ignored labels read as 0 (as the tensorflow, jax and keras ops check them): a select, where a boolean mask
    # would cost a GPU sync of its own to size its result
    check_index(torch.where(labels != ignore_index, labels, torch.zeros_like(labels)), logits.shape[-1],
                "CrossEntropyLoss labels")
    return F.cross_entropy(logits, labels.long(), reduction=reduction, ignore_index=ignore_index)


def bce_with_logits(logits, targets, reduction="mean"):
    # targets in the logits' dtype, as the other backends' ops take them (the loss modules refuse integer targets)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction=reduction)


def fused_ctc_loss(log_probs, labels, input_lengths, target_lengths, blank=0, zero_infinity=False):
    return F.ctc_loss(log_probs, labels, input_lengths, target_lengths, blank, "none", zero_infinity)


def fused_interpolate(x, size, scale_factor, mode, align_corners):
    return F.interpolate(x, size, scale_factor, mode, align_corners)


def cond(condition, true_fn, false_fn, operands):
    return true_fn(*operands) if bool(condition) else false_fn(*operands)


def scan(fn, init, xs, axis=0, reverse=False):
    length = tree_leaves(xs)[0].shape[axis]
    carry, ys = init, [None] * length
    for t in (reversed(range(length)) if reverse else range(length)):
        carry, ys[t] = fn(carry, tree_map(lambda x: x.select(axis, t), xs))
    return carry, tree_map(lambda *y: torch.stack(y, axis), *ys)


def gelu(x, approximate="none"):
    return F.gelu(x, approximate=approximate)


def elu(x, alpha=1.0):
    return F.elu(x, alpha)


def softplus(x, beta=1.0, threshold=20.0):
    return F.softplus(x, beta, threshold)


def hardtanh(x, min_val=-1.0, max_val=1.0):
    return F.hardtanh(x, min_val, max_val)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    return F.layer_norm(x, tuple(normalized_shape), weight, bias, eps)


def fused_attention(query, key, value, masks=(), is_causal=False, scale=None):
    # one boolean mask for F.scaled_dot_product_attention (its CPU flash kernel takes one)
    mask = None
    for each in masks:
        mask = each if mask is None else torch.logical_and(mask, each)
    if mask is None:
        return F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scale)
    if is_causal:  # the function takes the causal flag or a mask, not both
        rows, columns = query.shape[-2], key.shape[-2]
        mask = torch.logical_and(mask, torch.ones(rows, columns, dtype=torch.bool, device=query.device).tril())
    # a query whose every key is masked attends to nothing (output 0, no gradient): not every kernel of the
    # function gives 0 there (CUDA's memory-efficient one has given NaN), so such a query is shown every key and
    # its output dropped; (..., L, 1) factors, next to the attention's cost
    attends = mask.any(-1, keepdim=True)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask | ~attends, scale=scale)
    return torch.where(attends, output, torch.zeros((), dtype=output.dtype, device=output.device))


def embedding_rows(indices, weight, padding_idx=None):
    return F.embedding(check_index(indices, weight.shape[0], "Embedding indices"), weight, padding_idx)


def take(x, indices, axis=0):
    axis %= x.dim()
    check_index(indices, x.shape[axis], "take indices")
    picked = torch.index_select(x, axis, indices.reshape(-1))
    return picked.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def take_in_range(x, indices, axis):
    if axis == x.dim() - 1:  # (index_select copies the last axis one element at a time: 5 times slower there)
        return x[..., indices]
    return torch.index_select(x, axis, indices)


def gather(x, dim, index):
    return torch.gather(x, dim, check_index(index, x.shape[dim], "gather index"))


def _device():
    from unidl import backends  # the torch backend's device in force (this module never holds one)

    return backends.loaded_backends()["torch"].current_device()


def cast(x, dtype):
    return x.to(getattr(torch, dtype))


def zeros(shape, dtype):
    return torch.zeros(tuple(shape), dtype=getattr(torch, dtype), device=_device())


def ones(shape, dtype):
    return torch.ones(tuple(shape), dtype=getattr(torch, dtype), device=_device())


def arange(start, end, step, dtype):
    return torch.arange(start, end, step, dtype=getattr(torch, dtype), device=_device())


def argmax(x, dim=None, keepdim=False):
    return torch.argmax(x, dim, keepdim)


def permute(x, dims):
    return x.permute(*dims)


def unsqueeze(x, dim):
    return torch.unsqueeze(x, dim)


def squeeze(x, dim=None):
    return torch.squeeze(x) if dim is None else torch.squeeze(x, dim)


def pad(x, pad, mode="constant", value=0.0):
    # in x's dtype under autocast too: torch's CPU autocast runs reflection and replication padding in float32 (its
    # CUDA autocast does not), so the ops after them ran in float32 on torch's CPU alone; padding copies values, so
    # the cast back is exact
    padded = F.pad(x, pad, mode, value if mode == "constant" else None)
    return padded if padded.dtype == x.dtype else padded.to(x.dtype)
