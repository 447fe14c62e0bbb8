"""``ud.ops`` takes PyTorch's parameter names: every public op with a ``torch.nn.functional`` (else ``torch``)
counterpart accepts each of the counterpart's parameters by keyword (a call ported from PyTorch, such as
``F.cross_entropy(input=logits, target=y, weight=w)`` or ``torch.zeros(size=(2, 3))``, works as written), positional
use unchanged; an option unidl takes at one value only is refused with unidl's error at any other, never silently
ignored; unidl's former names (``x``, ``logits``, ``axis``, ``keepdims``) still work by keyword. Values by torch's
names are compared with plain ``torch``/``torch.nn.functional`` on torch and TensorFlow (eager)."""

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unidl as ud
from unidl.errors import UnsupportedOptionError
from unidl.torch_names import TORCH_NAMES

# The counterpart of each public op: torch's callable where its signature is introspectable, else its parameters
# written out from PyTorch's documentation (the C++ builtins; ``size`` is ``torch.zeros``' keyword for the sizes).
_INPUT_OUT = ("input", "out")
_CREATION = ("out", "dtype", "layout", "device", "requires_grad")
_MAX_POOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
TORCH_COUNTERPARTS = {
    **{name: _INPUT_OUT for name in ("abs", "exp", "log", "log1p", "sqrt", "square", "sign")},
    **{name: ("input", "other", "out") for name in ("matmul", "maximum", "minimum")},
    "where": ("condition", "input", "other", "out"),
    "clip": ("input", "min", "max", "out"),
    "mean": ("input", "dim", "keepdim", "dtype", "out"),
    "sum": ("input", "dim", "keepdim", "dtype", "out"),
    "amax": ("input", "dim", "keepdim", "out"),
    "argmax": ("input", "dim", "keepdim", "out"),
    "take": ("input", "index"),
    "gather": ("input", "dim", "index", "sparse_grad", "out"),
    "index_select": ("input", "dim", "index", "out"),
    "zeros_like": ("input", "dtype", "layout", "device", "requires_grad", "memory_format"),
    "reshape": ("input", "shape"),
    "flatten": ("input", "start_dim", "end_dim"),
    "permute": ("input", "dims"),
    "transpose": ("input", "dim0", "dim1"),
    "unsqueeze": ("input", "dim"),
    "squeeze": ("input", "dim"),
    **{name: ("tensors", "dim", "out") for name in ("cat", "concat", "stack")},
    "zeros": ("size",) + _CREATION,
    "ones": ("size",) + _CREATION,
    "arange": ("start", "end", "step") + _CREATION,
    "cond": torch.cond,
    # torch.nn.functional
    **{name: getattr(F, name) for name in (
        "relu", "relu6", "elu", "celu", "selu", "silu", "mish", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu",
        "threshold", "dropout", "dropout2d", "rrelu", "sigmoid", "tanh", "softsign", "tanhshrink", "glu", "softmax",
        "log_softmax", "softmin", "adaptive_avg_pool2d", "max_unpool2d", "batch_norm", "layer_norm", "group_norm",
        "pad", "interpolate", "embedding", "cross_entropy", "nll_loss", "kl_div", "binary_cross_entropy",
        "binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "ctc_loss",
        "cosine_embedding_loss", "gaussian_nll_loss", "hinge_embedding_loss", "linear_cross_entropy",
        "margin_ranking_loss", "multi_margin_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss",
        "poisson_nll_loss", "soft_margin_loss", "triplet_margin_loss", "triplet_margin_with_distance_loss")},
    "logsigmoid": ("input",),
    "softplus": ("input", "beta", "threshold"),
    "gelu": ("input", "approximate"),
    "hardshrink": ("input", "lambd"),
    "softshrink": ("input", "lambd"),
    "prelu": ("input", "weight"),
    "linear": ("input", "weight", "bias"),
    **{name: ("input", "weight", "bias", "stride", "padding", "dilation", "groups") for name in ("conv1d", "conv2d")},
    **{name: ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
       for name in ("conv_transpose1d", "conv_transpose2d")},
    "max_pool1d": _MAX_POOL,
    "max_pool2d": _MAX_POOL,
    "avg_pool1d": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive_avg_pool1d": ("input", "output_size"),
    "adaptive_max_pool1d": ("input", "output_size", "return_indices"),
    "adaptive_max_pool2d": ("input", "output_size", "return_indices"),
    "cosine_similarity": ("x1", "x2", "dim", "eps"),
    "pairwise_distance": ("x1", "x2", "p", "eps", "keepdim"),
    "pixel_shuffle": ("input", "upscale_factor"),
    "pixel_unshuffle": ("input", "downscale_factor"),
    "one_hot": ("input", "num_classes"),  # (its documentation says ``tensor``: the keyword is ``input``)
    "scaled_dot_product_attention": ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                                     "enable_gqa"),
}
# the public functions of ud.ops that mirror no torch function (unidl's own, or the registry's tools)
WITHOUT_COUNTERPART = {"active_ops", "attention", "bce_with_logits", "cast", "cast_like", "causal_mask",
                       "check_in_range", "check_index", "check_shape", "check_values", "composite",
                       "cross_entropy_loss", "declare", "embedding_rows", "fused_attention", "fused_ctc_loss",
                       "fused_interpolate", "implicit_softmax_dim", "op", "optional_op", "scan", "segment_sum",
                       "shape", "stop_gradient", "take_in_range", "uniform_like"}


def public_functions() -> list:
    return sorted(name for name in dir(ud.ops) if not name.startswith("_")
                  and inspect.isfunction(getattr(ud.ops, name)))


def torch_parameters(name) -> tuple:
    """The counterpart's parameter names, but its private ones (``_stacklevel``)."""
    counterpart = TORCH_COUNTERPARTS[name]
    if callable(counterpart):
        counterpart = tuple(inspect.signature(counterpart).parameters)
    return tuple(p for p in counterpart if not p.startswith("_"))


def test_every_public_op_is_classified_and_its_counterpart_is_torchs():
    """A new op must say whether it mirrors torch (then it is checked below): the two lists cover ud.ops exactly,
    and each counterpart is torch.nn.functional's, else torch's, function of the same name."""
    assert set(public_functions()) == set(TORCH_COUNTERPARTS) | WITHOUT_COUNTERPART
    assert not set(TORCH_COUNTERPARTS) & WITHOUT_COUNTERPART
    for name in TORCH_COUNTERPARTS:
        assert hasattr(F, name) or hasattr(torch, name), name
    for name in WITHOUT_COUNTERPART:
        assert not hasattr(F, name) and not hasattr(torch, name), name


@pytest.mark.parametrize("name", sorted(TORCH_COUNTERPARTS))
def test_each_torch_parameter_binds_by_keyword(name):
    signature = inspect.signature(getattr(ud.ops, name))
    for parameter in torch_parameters(name):
        signature.bind_partial(**{parameter: object()})  # (a TypeError names the parameter)
        kind = signature.parameters[parameter].kind
        assert kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY), (name, parameter)


def _other_value(default):
    return {None: "given", False: True, True: False}.get(default, 0) if isinstance(default, (bool, type(None))) \
        else default + 1


@pytest.mark.parametrize("name", sorted(n for n in TORCH_NAMES if TORCH_NAMES[n][1]) + ["rrelu"])
def test_torchs_options_taken_at_one_value_refuse_any_other(name):
    """The options unidl takes at torch's default only (``inplace=False``, ``out=None``, ``size_average=None``) are
    torch's parameters of that op, and any other value is unidl's error naming the option (the deprecated
    ``size_average``/``reduce`` the losses' ``ValueError``), whatever the other arguments."""
    fixed = dict(TORCH_NAMES[name][1]) or {"inplace": False}
    function = getattr(ud.ops, name)
    required = [p for p in inspect.signature(function).parameters.values()
                if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    with ud.use_backend("torch"):
        x = ud.tensor(np.ones((2, 3, 4, 4)))
        for option, default in fixed.items():
            assert option in torch_parameters(name), (name, option)
            assert inspect.signature(function).parameters[option].default == default
            with pytest.raises((UnsupportedOptionError, ValueError), match=option):
                function(*[x] * len(required), **{option: _other_value(default)})


R = np.random.default_rng(15)
ROWS = R.standard_normal((4, 6))
IMAGES = R.standard_normal((2, 3, 5, 5))
KERNEL = R.standard_normal((4, 3, 3, 3))
LABELS = np.array([0, 5, 2, 2])
CLASS_WEIGHT = R.random(6) + 0.5
INDEX = np.array([[1, 0], [5, 5], [2, 3], [0, 4]])


def _t(value):
    return torch.as_tensor(value)


# (ud.ops op, its keyword arguments by torch's names (NumPy for tensors), the torch oracle given the same)
CALLS = [
    ("cross_entropy", dict(input=ROWS, target=LABELS, weight=CLASS_WEIGHT, label_smoothing=0.1),
     lambda a: F.cross_entropy(**a)),
    ("nll_loss", dict(input=ROWS, target=LABELS, reduction="sum", size_average=None), lambda a: F.nll_loss(**a)),
    ("mse_loss", dict(input=ROWS, target=ROWS[::-1].copy(), reduction="none", reduce=None), lambda a: F.mse_loss(**a)),
    ("softmax", dict(input=ROWS, dim=0, dtype=None), lambda a: F.softmax(**a)),
    ("leaky_relu", dict(input=ROWS, negative_slope=0.2, inplace=False), lambda a: F.leaky_relu(**a)),
    ("mean", dict(input=ROWS, dim=1, keepdim=True), lambda a: torch.mean(**a)),
    ("sum", dict(input=ROWS, dim=0, keepdim=False), lambda a: torch.sum(**a)),
    ("clip", dict(input=ROWS, min=-0.5, max=0.5), lambda a: torch.clip(**a)),
    ("gather", dict(input=ROWS, dim=1, index=INDEX, sparse_grad=False), lambda a: torch.gather(**a)),
    ("take", dict(input=ROWS, index=INDEX), lambda a: torch.take(**a)),
    ("matmul", dict(input=ROWS, other=ROWS.T.copy()), lambda a: torch.matmul(**a)),
    ("where", dict(condition=ROWS > 0, input=ROWS, other=-ROWS), lambda a: torch.where(**a)),
    ("flatten", dict(input=IMAGES, start_dim=1, end_dim=-1), lambda a: torch.flatten(**a)),
    ("transpose", dict(input=IMAGES, dim0=1, dim1=3), lambda a: torch.transpose(**a)),
    ("conv2d", dict(input=IMAGES, weight=KERNEL, stride=2, padding=1), lambda a: F.conv2d(**a)),
    ("max_pool2d", dict(input=IMAGES, kernel_size=2, stride=1, ceil_mode=True), lambda a: F.max_pool2d(**a)),
    ("layer_norm", dict(input=ROWS, normalized_shape=(6,), eps=1e-3), lambda a: F.layer_norm(**a)),
    ("embedding", dict(input=INDEX, weight=ROWS.T.copy(), padding_idx=0, sparse=False), lambda a: F.embedding(**a)),
    ("one_hot", dict(input=LABELS, num_classes=7), lambda a: F.one_hot(**a)),
    ("concat", dict(tensors=[ROWS, ROWS], dim=1), lambda a: torch.concat(**a)),
    ("zeros", dict(size=(2, 3), dtype="float64"), lambda a: torch.zeros(size=a["size"], dtype=torch.float64)),
]


@pytest.mark.parametrize("backend_name", ["torch", "tensorflow"])
@pytest.mark.parametrize("name,arguments,oracle", CALLS, ids=[c[0] for c in CALLS])
def test_ops_called_by_torchs_keyword_names_give_torchs_values(backend_name, name, arguments, oracle):
    theirs = oracle({k: _t(v) if isinstance(v, np.ndarray) else
                     [_t(t) for t in v] if isinstance(v, list) else v for k, v in arguments.items()})
    with ud.use_backend(backend_name), ud.use_dtype("float64"):
        ours = getattr(ud.ops, name)(**{k: ud.tensor(v) if isinstance(v, np.ndarray) and v.dtype != bool else
                                        ud.tensor(v, "bool") if isinstance(v, np.ndarray) else
                                        [ud.tensor(t) for t in v] if isinstance(v, list) else v
                                        for k, v in arguments.items()})
        ours = ud.to_numpy(ours)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-12)


def test_unidls_former_names_still_work_by_keyword_and_not_beside_torchs():
    """Code written against unidl's documented names (``mean(x, axis=1, keepdims=True)``, ``cross_entropy(logits=,
    labels=)``) gives what torch's names give; one argument under both names is a ``TypeError``, and a required one
    under neither is Python's missing-argument ``TypeError`` naming torch's name."""
    with ud.use_backend("torch"), ud.use_dtype("float64"):
        x, labels = ud.tensor(ROWS), ud.tensor(LABELS)
        pairs = [
            (ud.ops.mean(x=x, axis=1, keepdims=True), ud.ops.mean(input=x, dim=1, keepdim=True)),
            (ud.ops.cross_entropy(logits=x, labels=labels), ud.ops.cross_entropy(input=x, target=labels)),
            (ud.ops.clip(x, minimum=-0.1, maximum=0.2), ud.ops.clip(x, min=-0.1, max=0.2)),
            (ud.ops.concat([x, x], axis=1), ud.ops.concat([x, x], dim=1)),
            (ud.ops.mse_loss(prediction=x, target=x * 2), ud.ops.mse_loss(input=x, target=x * 2)),
            (ud.ops.relu(x=x), ud.ops.relu(x)),
        ]
        for former, torchs in pairs:
            np.testing.assert_array_equal(ud.to_numpy(former), ud.to_numpy(torchs))
        with pytest.raises(TypeError, match="'dim' and 'axis'"):
            ud.ops.mean(x, dim=1, axis=1)
        with pytest.raises(TypeError, match="missing required argument: 'input'"):
            ud.ops.gather(dim=1, index=ud.tensor(INDEX))


def test_zeros_and_ones_take_torchs_size_and_device_keywords():
    with ud.use_backend("torch"):
        assert tuple(ud.ops.zeros(size=(2, 3)).shape) == (2, 3)
        assert tuple(ud.ops.ones(size=[4], dtype="int64", device="cpu").shape) == (4,)
        assert ud.to_numpy(ud.ops.ones(2, device=torch.device("cpu"))).tolist() == [1.0, 1.0]
        assert ud.to_numpy(ud.ops.arange(3, device="cpu")).tolist() == [0, 1, 2]
        assert tuple(ud.ops.zeros(2, layout=torch.strided).shape) == (2,)  # (torch's default, by its own object)
        with pytest.raises(TypeError, match="not both"):
            ud.ops.zeros(2, size=(2,))


def test_dropouts_p_defaults_to_torchs():
    """``F.dropout(x)`` drops half: ``ud.ops.dropout(input=x)`` too (p was required)."""
    with ud.use_backend("torch"):
        kept = ud.to_numpy(ud.ops.dropout(input=ud.tensor(np.ones((100, 100))))) != 0
        assert 0.45 < kept.mean() < 0.55
        assert inspect.signature(ud.ops.dropout).parameters["p"].default == inspect.signature(F.dropout).parameters[
            "p"].default


@pytest.mark.parametrize("backend_name", ["torch", "tensorflow"])
def test_positional_calls_in_torchs_order_give_torchs_values_or_unidls_error(backend_name):
    """A call ported from PyTorch with its arguments positionally: ``F.nll_loss(lp, y, None, None, 2)`` ignores
    class 2 as torch's does, and its deprecated ``size_average`` in fourth place (``F.nll_loss(lp, y, None, False)``,
    torch's sum) is the losses' ``ValueError`` naming ``reduction=`` (it was taken as ``ignore_index``: class 0
    ignored, a wrong value); ``F.dropout(x, 0.5, True, False)``'s fourth, ``inplace``, False runs and True is
    refused (it reached the framework as a generator, which failed in its own words), ``dropout2d``'s too."""
    log_probabilities = torch.log_softmax(_t(ROWS), 1)
    with ud.use_backend(backend_name), ud.use_dtype("float64"):
        ours = ud.ops.nll_loss(ud.tensor(log_probabilities.numpy()), ud.tensor(LABELS), None, None, 2)
        np.testing.assert_allclose(ud.to_numpy(ours), F.nll_loss(log_probabilities, _t(LABELS), None, None, 2).numpy(),
                                   rtol=1e-12)
        with pytest.raises(ValueError, match="size_average.*reduction="):
            ud.ops.nll_loss(ud.tensor(log_probabilities.numpy()), ud.tensor(LABELS), None, False)
        with pytest.raises(ValueError, match="size_average.*reduction="):
            ud.ops.nll_loss(ud.tensor(log_probabilities.numpy()), ud.tensor(LABELS), None, None, -100, False)
        images = ud.tensor(np.ones((2, 3, 4, 4)))
        for dropout in (ud.ops.dropout, ud.ops.dropout2d):
            kept = ud.to_numpy(dropout(images, 0.5, True, False)) != 0
            assert 0 < kept.mean() < 1, dropout.__name__
            with pytest.raises(UnsupportedOptionError, match="inplace"):
                dropout(images, 0.5, True, True)
