"""PyTorch's parameter names for ``ud.ops``: each public op that mirrors ``torch.nn.functional.X`` (else ``torch.X``)
takes torch's names by keyword (``cross_entropy(input=..., target=...)``, ``mean(x, dim=1, keepdim=True)``), so that
a call ported from PyTorch works as written. ``TORCH_NAMES`` is the one table; the registry's dispatcher
(``op_registry._dispatcher``) builds each op's public signature from it, positional use unchanged.

Per op: ``renamed`` maps the declaration's parameter to torch's name (the declaration's name, the one unidl documented
before, stays accepted by keyword, out of the signature); ``fixed`` holds torch's options that unidl takes at one
value only (``inplace=False``, ``out=None``), keyword-only with torch's default: that value is honoured (it is what
unidl does), any other is ``refuse``'s clear error, never silently ignored.
"""

from __future__ import annotations

from unidl.errors import UnsupportedOptionError

_INPUT = {"x": "input"}
_INPLACE = {"inplace": False}
_OUT = {"out": None}
_LEGACY = {"size_average": None, "reduce": None}
_CREATION = {"out": None, "layout": None, "requires_grad": False}

# op: (renamed {declared name: torch's name}, fixed {torch's option: the one value unidl takes})
TORCH_NAMES: dict[str, tuple[dict, dict]] = {
    # elementwise math (torch.X)
    **{name: (_INPUT, _OUT) for name in ("abs", "exp", "log", "log1p", "sqrt", "square", "sign")},
    "matmul": ({"a": "input", "b": "other"}, _OUT),
    "maximum": ({"a": "input", "b": "other"}, _OUT),
    "minimum": ({"a": "input", "b": "other"}, _OUT),
    "where": ({"a": "input", "b": "other"}, _OUT),
    "clip": ({"x": "input", "minimum": "min", "maximum": "max"}, _OUT),
    # reductions and indexing (torch.X)
    "mean": ({"x": "input", "axis": "dim", "keepdims": "keepdim"}, {"dtype": None, "out": None}),
    "sum": ({"x": "input", "axis": "dim", "keepdims": "keepdim"}, {"dtype": None, "out": None}),
    "amax": (_INPUT, _OUT),
    "argmax": (_INPUT, _OUT),
    "take": ({"x": "input", "indices": "index"}, {}),
    "gather": (_INPUT, {"sparse_grad": False, "out": None}),
    "index_select": (_INPUT, _OUT),
    "zeros_like": (_INPUT, {"dtype": None, "layout": None, "device": None, "requires_grad": False,
                            "memory_format": None}),
    # shapes (torch.X)
    "reshape": (_INPUT, {}),
    "flatten": (_INPUT, {"end_dim": -1}),
    "permute": (_INPUT, {}),
    "transpose": (_INPUT, {}),
    "unsqueeze": (_INPUT, {}),
    "squeeze": (_INPUT, {}),
    "concat": ({"axis": "dim"}, _OUT),
    "stack": ({"axis": "dim"}, _OUT),
    "cat": ({}, _OUT),
    # creation (torch.X): the sizes, dtype and device are the ops' own parameters
    "zeros": ({}, _CREATION),
    "ones": ({}, _CREATION),
    "arange": ({}, _CREATION),
    # activations (torch.nn.functional.X)
    **{name: (_INPUT, _INPLACE) for name in ("relu", "relu6", "elu", "celu", "selu", "silu", "mish", "hardswish",
                                             "hardsigmoid", "hardtanh", "leaky_relu", "threshold", "dropout",
                                             "dropout2d")},
    **{name: (_INPUT, {}) for name in ("sigmoid", "tanh", "softsign", "tanhshrink", "logsigmoid", "softshrink",
                                       "hardshrink", "softplus", "gelu", "glu", "prelu", "pixel_shuffle",
                                       "pixel_unshuffle", "linear", "conv1d", "conv2d", "conv_transpose1d",
                                       "conv_transpose2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
                                       "max_unpool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                                       "adaptive_max_pool1d", "batch_norm", "layer_norm", "group_norm", "pad",
                                       "rrelu")},
    **{name: (_INPUT, {"dtype": None}) for name in ("softmax", "log_softmax", "softmin")},
    "adaptive_max_pool2d": (_INPUT, {"return_indices": False}),
    "interpolate": (_INPUT, {"antialias": False}),
    "embedding": ({"indices": "input"}, {"scale_grad_by_freq": False, "sparse": False}),
    "one_hot": ({"labels": "input"}, {}),
    # losses (torch.nn.functional.X)
    "cross_entropy": ({"logits": "input", "labels": "target"}, {}),
    "nll_loss": ({"log_probabilities": "input", "labels": "target"}, {}),  # (size_average, reduce: its own)
    "kl_div": ({"log_probabilities": "input"}, _LEGACY),
    "binary_cross_entropy": ({"probabilities": "input"}, _LEGACY),
    "binary_cross_entropy_with_logits": ({"logits": "input"}, _LEGACY),
    "mse_loss": ({"prediction": "input"}, {**_LEGACY, "weight": None}),
    "l1_loss": ({"prediction": "input"}, {**_LEGACY, "weight": None}),
    "smooth_l1_loss": ({"prediction": "input"}, _LEGACY),
    "huber_loss": ({"prediction": "input"}, {"weight": None}),
    # control flow (torch.cond)
    "cond": ({"condition": "pred"}, {}),
}

# why an option is taken at one value only, and what to do instead
_WHY = {
    "inplace": "unidl's ops never write their input (TensorFlow's and JAX's tensors cannot be): use the result",
    "out": "unidl's ops return a new tensor: use the result",
    "dtype": "cast the input first: ud.ops.cast(x, dtype)",
    "layout": "unidl's tensors are dense and strided",
    "memory_format": "unidl's tensors have one layout",
    "device": "the result is on the input's device",
    "requires_grad": "unidl differentiates with ud.grad / ud.value_and_grad, not a tensor's flag",
    "sparse_grad": "unidl's gradients are dense",
    "sparse": "unidl's gradients are dense",
    "scale_grad_by_freq": "not implemented: scale the gradient yourself",
    "weight": "multiply the loss of reduction='none' by the weight instead",
    "end_dim": "reshape instead (ud.ops.reshape)",
    "return_indices": "not implemented for 2-D adaptive max pooling",
    "antialias": "not implemented",
}
# values of an option that mean torch's default though they are not ``fixed``'s (the framework's own objects, by the
# name after their module's: ``strided`` for torch's dense layout)
_DEFAULT_NAMES = {"layout": {"strided"}, "memory_format": {"preserve_format"}}


def refuse(owner: str, name: str, value, default) -> None:
    """Raise the error for torch's option ``name`` given ``value`` where unidl takes only ``default``: PyTorch's
    deprecated ``size_average``/``reduce`` the ``ValueError`` naming ``reduction=`` (as every loss of unidl's), any
    other an ``UnsupportedOptionError`` naming the option, the value, why, and what to do. A value that is torch's
    default by another spelling (``layout=torch.strided``) is taken."""
    if value is not None and str(value).rpartition(".")[2] in _DEFAULT_NAMES.get(name, ()):
        return
    if name in ("size_average", "reduce"):
        from unidl.loss_ops import refuse_legacy_reduction

        refuse_legacy_reduction(owner, **{"size_average": None, "reduce": None, name: value})
    raise UnsupportedOptionError(f"{owner} does not take PyTorch's {name}={value!r}: {_WHY.get(name, 'unsupported')}"
                                 f" (leave it at {default!r})")


def both_given(owner: str, name: str, old_name: str) -> TypeError:
    """The ``TypeError`` for one argument given under torch's name and under unidl's former name."""
    return TypeError(f"{owner}() got {name!r} and {old_name!r}, two names of one argument: give {name}= alone")


def missing(owner: str, name: str) -> TypeError:
    """The ``TypeError`` for a required argument given under neither of its names, as Python's own."""
    return TypeError(f"{owner}() missing required argument: {name!r}")


def generator_or_inplace(owner: str, generator):
    """``dropout``'s and ``dropout2d``'s ``generator``, their fourth argument, where ``torch.nn.functional``'s is
    ``inplace`` (``F.dropout(x, 0.5, True, False)``): a bool there is torch's ``inplace``, False taken (the backend's
    own generator), True ``refuse``'s error; it reached the framework as a generator, which failed in its own words."""
    if type(generator) is bool:
        if generator:
            refuse(owner, "inplace", True, False)
        return None
    return generator
