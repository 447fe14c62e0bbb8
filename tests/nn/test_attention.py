"""``MultiheadAttention``, ``TransformerEncoderLayer``, ``TransformerEncoder`` and ``ops.scaled_dot_product_attention``
against plain ``torch.nn`` (the oracle): outputs, attention weights and input/weight gradients, every mask, on every
backend, float32 inside ``ud.function`` and float64 eagerly; PyTorch's ``state_dict`` keys; clear errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn
from torch.nn.attention import SDPBackend, sdpa_kernel

import unidl as ud
from unidl.testing import max_relative_difference
from tests.parity.torch_oracle import RUNS, Case, compare_table

R = np.random.default_rng(31)
SEQUENCE = R.standard_normal((4, 2, 6))           # (L, N, E)
BATCH_FIRST = R.standard_normal((2, 4, 6))        # (N, L, E)
MEMORY = R.standard_normal((2, 3, 5))             # (N, S, kdim)
PADDING = np.zeros((2, 4), bool)
PADDING[1, 2:] = True
BLOCKED = np.triu(np.ones((4, 4), bool), 1)       # True: may not attend (MultiheadAttention's convention)
HEAD_MASK = R.standard_normal((2 * 3, 4, 4))     # (N * num_heads, L, S)
QUERIES, KEYS, VALUES = R.standard_normal((2, 3, 4, 5)), R.standard_normal((2, 3, 6, 5)), R.standard_normal((2, 3, 6, 2))
TAKE_PART = R.random((4, 6)) > 0.3
TAKE_PART[:, 0] = True
NOTHING_TO_TAKE = TAKE_PART.copy()
NOTHING_TO_TAKE[2] = False                        # query 2 may attend to no key: output 0, as torch's safe softmax
ALL_PADDING = PADDING.copy()
ALL_PADDING[1] = True                             # every key of the second sequence is padding


class Joined(ud.nn.Module):
    """A layer's outputs (tensors, tuples, None) flattened into one vector, for the harness."""

    def __init__(self, layer, call):
        super().__init__()
        self.layer, self.call = layer, call

    def forward(self, *inputs):
        outputs = self.call(self.layer, *inputs)
        parts = [o for o in (outputs if isinstance(outputs, tuple) else (outputs,)) if o is not None]
        return ud.ops.concat([ud.ops.reshape(p, (-1,)) for p in parts], 0)


class TorchJoined(tnn.Module):
    def __init__(self, layer, call):
        super().__init__()
        self.layer, self.call = layer, call

    def forward(self, *inputs):
        outputs = self.call(self.layer, *inputs)
        parts = [o for o in (outputs if isinstance(outputs, tuple) else (outputs,)) if o is not None]
        return torch.cat([p.reshape(-1) for p in parts])


def layer_case(build, call, *inputs):
    return Case(lambda: Joined(build(ud.nn), call), lambda: TorchJoined(build(tnn), call), list(inputs))


def self_attention(**options):
    return lambda layer, x, *masks: layer(x, x, x, **dict(zip(options.get("masks", ()), masks)),
                                          **{k: v for k, v in options.items() if k != "masks"})


LAYERS = {
    "MultiheadAttention-batch-first-padding-causal-per-head": layer_case(
        lambda nn: nn.MultiheadAttention(6, 2, batch_first=True),
        self_attention(masks=("key_padding_mask", "attn_mask"), average_attn_weights=False),
        BATCH_FIRST, PADDING, BLOCKED),
    "MultiheadAttention-bias-kv-zero-attn-padding-causal": layer_case(  # both masks extended by two columns
        lambda nn: nn.MultiheadAttention(6, 2, batch_first=True, add_bias_kv=True, add_zero_attn=True),
        self_attention(masks=("key_padding_mask", "attn_mask"), average_attn_weights=False),
        BATCH_FIRST, PADDING, BLOCKED),
    "MultiheadAttention-float-masks-no-weights": layer_case(
        lambda nn: nn.MultiheadAttention(6, 3, bias=False),
        self_attention(masks=("attn_mask",), need_weights=False), SEQUENCE, HEAD_MASK),
    "MultiheadAttention-every-key-padding-no-weights": layer_case(  # torch's SDPA path: zeros, not NaN
        lambda nn: nn.MultiheadAttention(6, 2, batch_first=True),
        self_attention(masks=("key_padding_mask",), need_weights=False), BATCH_FIRST, ALL_PADDING),
    "MultiheadAttention-kdim-vdim": layer_case(
        lambda nn: nn.MultiheadAttention(6, 2, kdim=5, vdim=5, batch_first=True),
        lambda layer, q, kv: layer(q, kv, kv), BATCH_FIRST, MEMORY),
    "MultiheadAttention-unbatched": layer_case(lambda nn: nn.MultiheadAttention(6, 2), self_attention(),
                                               SEQUENCE[:, 0]),
    "TransformerEncoderLayer-pre-norm-gelu-batch-first-masks": layer_case(
        lambda nn: nn.TransformerEncoderLayer(6, 3, 8, dropout=0.0, activation="gelu", batch_first=True,
                                              norm_first=True),
        lambda layer, x, padding, mask: layer(x, src_mask=mask, src_key_padding_mask=padding),
        BATCH_FIRST, PADDING, BLOCKED),
    "TransformerEncoder-post-norm-final-norm-padding": layer_case(
        lambda nn: nn.TransformerEncoder(nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True), 1,
                                         norm=nn.LayerNorm(6), enable_nested_tensor=False),
        lambda layer, x, padding: layer(x, src_key_padding_mask=padding), BATCH_FIRST, PADDING),
}

OPS = {
    "scaled_dot_product_attention-bool-mask-scale": Case(
        lambda: lambda q, k, v, m: ud.ops.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3),
        lambda: lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3),
        [QUERIES, KEYS, VALUES, TAKE_PART]),
    "scaled_dot_product_attention-a-query-without-keys": Case(
        lambda: lambda q, k, v, m: ud.ops.scaled_dot_product_attention(q, k, v, attn_mask=m),
        lambda: lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        [QUERIES, KEYS, VALUES, NOTHING_TO_TAKE]),
    "scaled_dot_product_attention-causal": Case(
        lambda: lambda q, k, v: ud.ops.scaled_dot_product_attention(q, k, v, is_causal=True),
        lambda: lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [QUERIES, KEYS, VALUES]),
}


# float64's encoder: one case for the float32 table's two (each case is a graph's gradients to trace), on the inputs
# of the float64 attention case: an encoder of a pre-norm GELU layer (GELU's constants are where float64 lost digits)
# with a final norm, both masks
FLOAT64_ENCODER = {"TransformerEncoder-pre-norm-gelu-final-norm-masks": layer_case(
    lambda nn: nn.TransformerEncoder(nn.TransformerEncoderLayer(6, 3, 8, dropout=0.0, activation="gelu",
                                                                batch_first=True, norm_first=True),
                                     1, norm=nn.LayerNorm(6), enable_nested_tensor=False),
    lambda layer, x, padding, mask: layer(x, mask=mask, src_key_padding_mask=padding), BATCH_FIRST, PADDING, BLOCKED)}


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_attention_layers_match_torch(backend, dtype, modes):
    """float32 for every case; float64 for attention with both masks and ``FLOAT64_ENCODER`` (the table's cost is
    mostly eager JAX compiling each op, and TensorFlow tracing each case's gradients); each eagerly and inside
    ud.function (``RUNS``)."""
    cases = {**LAYERS, **OPS}
    if dtype == "float64":
        cases = {name: case for name, case in cases.items() if name.startswith("MultiheadAttention-batch-first")}
        cases.update(FLOAT64_ENCODER)
    assert compare_table(cases, backend, dtype, modes) == []


def test_a_query_whose_every_key_is_padding_gets_what_torchs_path_gives(backend):
    """0 (then out_proj.bias) where torch's module runs F.scaled_dot_product_attention, NaN where it runs a plain
    softmax (need_weights) or, in evaluation under no_grad, its fused inference path (batch-first self-attention);
    the table above checks the values and gradients of the first."""
    ours, theirs = ud.nn.MultiheadAttention(6, 2, batch_first=True), tnn.MultiheadAttention(6, 2, batch_first=True)
    state = {**ours.state_dict(), "out_proj.bias": np.arange(6.0)}
    ours.load_state_dict(state)
    theirs.load_state_dict({name: torch.tensor(value, dtype=torch.float32) for name, value in state.items()})
    x = BATCH_FIRST.astype(np.float32)
    ours_x, ours_memory, padding = ud.tensor(x), ud.tensor(x.copy()), ud.tensor(ALL_PADDING)
    theirs_x, theirs_memory = torch.tensor(x), torch.tensor(x.copy())
    for training, need_weights, cross, nan in ((True, True, False, True), (True, False, False, False),
                                              (False, False, False, True), (False, False, True, False)):
        ours.train(training), theirs.train(training)
        with torch.set_grad_enabled(training):
            expected = theirs(theirs_x, *(theirs_memory if cross else theirs_x,) * 2,
                              key_padding_mask=torch.tensor(ALL_PADDING), need_weights=need_weights)[0].detach().numpy()
        found = ud.to_numpy(ours(ours_x, *(ours_memory if cross else ours_x,) * 2, key_padding_mask=padding,
                                 need_weights=need_weights)[0])
        case = f"training={training} need_weights={need_weights} cross={cross}"
        assert np.isnan(expected[1]).all() == nan and np.array_equal(np.isnan(found), np.isnan(expected)), case
        if not nan:
            assert np.array_equal(found[1], np.tile(np.arange(6, dtype=np.float32), (4, 1))), case
        assert max_relative_difference(found[0], expected[0]) < 1e-5, case


def test_is_causal_alone_applies_the_causal_mask(backend):
    layer = ud.nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0)
    x = ud.tensor(SEQUENCE.astype(np.float32))
    causal = layer(x, is_causal=True)
    masked = layer(x, src_mask=ud.tensor(BLOCKED))  # the explicit mask's effect is checked against torch above
    assert np.array_equal(ud.to_numpy(causal), ud.to_numpy(masked))


def test_state_dict_keys_are_pytorchs(backend):
    ours = ud.nn.TransformerEncoder(ud.nn.TransformerEncoderLayer(6, 2, 8), 2, norm=ud.nn.LayerNorm(6))
    theirs = tnn.TransformerEncoder(tnn.TransformerEncoderLayer(6, 2, 8), 2, norm=tnn.LayerNorm(6),
                                    enable_nested_tensor=False)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    state = ours.state_dict()  # every copy starts from the layer's weights, as torch's deep copies do
    assert np.array_equal(state["layers.0.linear1.weight"], state["layers.1.linear1.weight"])
    assert not state["layers.0.self_attn.in_proj_bias"].any()
    bound = np.sqrt(6 / (6 + 18))  # xavier_uniform over (3E, E)
    assert 0.5 * bound < np.abs(state["layers.0.self_attn.in_proj_weight"]).max() <= bound
    ours, theirs = (nn.MultiheadAttention(6, 2, add_bias_kv=True, kdim=5) for nn in (ud.nn, tnn))
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in theirs.state_dict().items()]


def test_bad_configurations_and_masks_are_clear_errors(backend):
    with pytest.raises(ValueError, match=r"embed_dim \(6\) must be divisible by num_heads \(4\)"):
        ud.nn.MultiheadAttention(6, 4)
    attention = ud.nn.MultiheadAttention(6, 2, batch_first=True)
    x = ud.tensor(BATCH_FIRST.astype(np.float32))
    with pytest.raises(ud.ShapeMismatchError, match=r"key_padding_mask of shape \(2, 4\).*received \(2, 3\)"):
        attention(x, x, x, key_padding_mask=PADDING[:, :3])
    with pytest.raises(ud.ShapeMismatchError, match=r"attn_mask of shape \(L, S\) = \(4, 4\).*received \(3, 4\)"):
        attention(x, x, x, attn_mask=BLOCKED[:3])
    with pytest.raises(ud.ShapeMismatchError, match=r"query of shape \(N, L, E\).*E = 6, received \(2, 4, 5\)"):
        attention(ud.tensor(np.zeros((2, 4, 5), np.float32)), x, x)
    with pytest.raises(ValueError, match="add_zero_attn must be True or False"):
        ud.nn.MultiheadAttention(6, 2, add_zero_attn="yes")


@pytest.mark.filterwarnings("ignore::unidl.errors.RetraceWarning")  # (each shape a program of its own on jax)
@pytest.mark.parametrize("traced", [False, True])
def test_a_key_and_value_that_do_not_pair_up_are_one_clear_error(backend, traced):
    """A value of another batch or source length than the key, or a key of another batch than the query, is one
    ``ShapeMismatchError`` naming both, eagerly and inside a graph that knows the sizes only when it runs (a value
    of batch 1 and length 6 was reshaped into the key's (2, 3): a wrong result and no error; the others were the
    framework's reshape errors), as PyTorch's module asserts."""
    rng = np.random.default_rng(0)
    x = ud.tensor(rng.standard_normal((2, 3, 4)).astype(np.float32))
    first = ud.nn.MultiheadAttention(4, 2, batch_first=True)
    sequence_first = ud.nn.MultiheadAttention(4, 2)
    def attend(layer, q, k, v):
        return layer(q, k, v)[0]

    call = ud.function(attend) if traced else attend
    for layer, key, value, message in [
        (first, x, rng.standard_normal((1, 6, 4)), r"expected value of the key's \(N, S\) = \(2, 3\), received "
                                                   r"value of shape \(1, 6, 4\)"),
        (first, x, rng.standard_normal((2, 4, 4)), r"expected value of the key's \(N, S\) = \(2, 3\)"),
        (first, rng.standard_normal((3, 3, 4)), rng.standard_normal((3, 3, 4)),
         r"expected key of the query's batch size N = \(2,\), received key of shape \(3, 3, 4\)"),
        (sequence_first, rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 4)),
         r"expected key of the query's batch size N = \(3,\), received key of shape \(2, 5, 4\)"),
    ]:
        key, value = (ud.tensor(np.asarray(t, np.float32)) for t in (key, value))
        with pytest.raises(ud.ShapeMismatchError, match=message):
            call(layer, x, key, value)


def test_the_fused_kernel_and_the_composed_softmax_agree_with_causal_and_padding_masks():
    """``ops.attention`` without weights takes a backend's fused kernel where it has one (torch's
    ``scaled_dot_product_attention``; Keras-on-torch's too, checked in its own interpreter), with the weights the
    composed softmax: both give the same output and gradients for the causal mask joined with a padding mask, a
    query without keys included (0). Run on the backends with the kernel (the others compose both)."""
    from unidl import backends
    from unidl.backends.op_registry import optional_op

    padding = np.ones((2, 1, 1, 4), bool)
    padding[1, :, :, 0] = False  # the second sequence's first query (causal: key 0 only) attends to nothing
    fused_on = [name for name in ud.available_backends() if optional_op(backends.load(name).ops, "fused_attention")]
    assert "torch" in fused_on
    for name in fused_on:
        with ud.use_backend(name):
            inputs = [ud.tensor(a[:, :, :4].astype(np.float32)) for a in (QUERIES, KEYS, VALUES)]
            masks = (ud.tensor(padding),)
            weights = ud.tensor(np.random.default_rng(3).standard_normal((2, 3, 4, 2)).astype(np.float32))
            results = []
            for need_weights in (True, False):
                def attend(q, k, v, need_weights=need_weights):
                    return ud.ops.attention(q, k, v, is_causal=True, masks=masks, need_weights=need_weights)[0]

                gradients = ud.grad(lambda *a: ud.ops.sum(attend(*a) * weights), (0, 1, 2))(*inputs)
                results.append([ud.to_numpy(attend(*inputs))] + [ud.to_numpy(g) for g in gradients])
            assert not np.abs(results[1][0][1, :, 0]).any(), name
            for composed, fused in zip(*results):
                assert max_relative_difference(fused, composed) < 1e-5, name


#: the masked cases of the tables above, run on the keras backend in the interpreter whose Keras runs on torch
#: (tests/test_examples.py's KERAS_RUN), where its attention, LayerNorm and Linear are torch's kernels: a boolean
#: padding mask joined with a causal one, a query without keys, the causal flag, a float mask (the composed softmax),
#: LayerNorm pre- and post-norm
KERAS_HOST_CASES = ("MultiheadAttention-float-masks-no-weights", "MultiheadAttention-every-key-padding-no-weights",
                    "TransformerEncoderLayer-pre-norm-gelu-batch-first-masks",
                    "TransformerEncoder-post-norm-final-norm-padding", "scaled_dot_product_attention-a-query-without-keys",
                    "scaled_dot_product_attention-causal")


def keras_host_attention():
    """Where Keras runs on torch, ``[failures, aten ops]``: the failures of ``KERAS_HOST_CASES`` on the keras
    backend against torch (float32 in ``ud.function``, float64 eagerly), and the names of the aten ops a pre-norm
    ``TransformerEncoderLayer``'s forward and backward with a padding mask ran; None on Keras's other frameworks
    (their keras backend composes these ops as on Keras-TensorFlow, which the tables above check: ~40 s more on
    Keras-on-JAX, whose eager ops each compile)."""
    import keras

    if keras.backend.backend() != "torch":
        return None
    cases = {name: case for name, case in {**LAYERS, **OPS}.items() if name in KERAS_HOST_CASES}
    failures = [failure for dtype, modes in RUNS for failure in compare_table(cases, "keras", dtype, modes)]
    with ud.use_backend("keras"):
        layer = ud.nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True, norm_first=True)
        x, padding = ud.tensor(BATCH_FIRST.astype(np.float32)), ud.tensor(PADDING)
        with torch.profiler.profile() as profile:
            ud.value_and_grad(lambda: ud.ops.sum(layer(x, src_key_padding_mask=padding)), layer.parameters())()
    return [failures, sorted({event.name for event in profile.events() if event.name.startswith("aten::")})]


def test_encoder_layers_own_their_activation_module(backend):
    """``TransformerEncoder`` copies its layer as PyTorch's ``_get_clones`` deep-copies it: an activation module is
    each layer's own (it was shared: a torch checkpoint of two PReLU weights loaded as the last one twice, and the
    outputs differed from torch's by 0.9)."""
    torch.manual_seed(0)
    reference = tnn.TransformerEncoder(tnn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, activation=tnn.PReLU(),
                                                                   batch_first=True), 2, enable_nested_tensor=False)
    with torch.no_grad():
        reference.layers[0].activation.weight.fill_(0.9)
        reference.layers[1].activation.weight.fill_(-0.7)
    encoder = ud.nn.TransformerEncoder(ud.nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, activation=ud.nn.PReLU(),
                                                                      batch_first=True), 2, enable_nested_tensor=False)
    assert encoder.layers[0].activation is not encoder.layers[1].activation
    encoder.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    state = encoder.state_dict()
    assert (state["layers.0.activation.weight"], state["layers.1.activation.weight"]) == (
        pytest.approx([0.9]), pytest.approx([-0.7]))
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    expected = reference(torch.tensor(x)).detach().numpy()
    assert max_relative_difference(ud.to_numpy(encoder(ud.tensor(x))), expected) < 1e-5


@pytest.mark.filterwarnings("ignore::unidl.errors.RetraceWarning")
@pytest.mark.parametrize("traced", [False, True])
def test_a_mask_or_state_of_the_wrong_rank_names_the_shape_it_needs(backend, traced):
    """The expected shape reads as sizes, or as their names where a graph leaves them unknown (a graph's message
    read ``('N', 'N')`` and ``(L, S) = (None, None)``; a cell's eager one ``('N', 6)`` beside a batch of 2; an
    unbatched GRU's 2-D state was described by the three names of a batched one)."""
    def call(layer, *tensors, **options):
        run = ud.function(lambda *t: layer(*t, **options)) if traced else (lambda *t: layer(*t, **options))
        return run(*[ud.tensor(t) for t in tensors])

    attention = ud.nn.MultiheadAttention(6, 2, batch_first=True)
    x = BATCH_FIRST.astype(np.float32)
    for name, mask, expected in (
            ("key_padding_mask", PADDING[:, None], r"key_padding_mask of shape \((2, 4|N, S)\) \(batch, source "),
            ("attn_mask", BLOCKED[None, None], r"attn_mask of shape \(L, S\)( = \(4, 4\))? or \(N \* num_heads, L, "
                                               r"S\)( = \(4, 4, 4\))?, received \(")):
        with pytest.raises(ud.ShapeMismatchError, match=expected):
            call(lambda x, mask: attention(x, x, x, **{name: mask}), x, mask)
    with pytest.raises(ud.ShapeMismatchError, match=r"initial state of shape \(1, 6\) \(num_layers \* num_directions, "
                                                    r"hidden_size\), received"):
        call(ud.nn.GRU(3, 6), np.zeros((5, 3), np.float32), np.zeros((1, 1, 6), np.float32))
    with pytest.raises(ud.ShapeMismatchError, match=r"state of shape \(2, 6\) \(batch, hidden_size\) as its input's, "
                                                    r"received \(2, 5\)"):
        call(ud.nn.GRUCell(3, 6), np.zeros((2, 3), np.float32), np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("traced", [False, True])
def test_a_numpy_scale_is_the_number_it_holds(backend, traced):
    """``scale`` given as a NumPy scalar (float64, float32, an integer, a bool) is the number it holds, as
    ``F.scaled_dot_product_attention`` takes it (on JAX a NumPy float64 became a float64 array whose product with
    float32 queries was a ``DtypeMismatchError``); a scale that is no number is one ``TypeError`` everywhere."""
    q, k, v = (QUERIES[:, :, :4].astype(np.float32), KEYS[:, :, :4].astype(np.float32),
               VALUES[:, :, :4].astype(np.float32))
    for scale in (np.float64(0.5), np.int64(2)):
        def attend(q, k, v, scale=scale):
            return ud.ops.attention(q, k, v, scale=scale)[0], ud.ops.scaled_dot_product_attention(q, k, v, scale=scale)

        call = ud.function(attend) if traced else attend
        expected = F.scaled_dot_product_attention(*(torch.tensor(t) for t in (q, k, v)), scale=scale).numpy()
        for found in call(*(ud.tensor(t) for t in (q, k, v))):
            assert max_relative_difference(ud.to_numpy(found), expected) < 1e-5, repr(scale)
    for scale in ("0.5", 1j, np.array(0.5)):  # (a 0-d array, as torch: "argument 'scale' must be float")
        with pytest.raises(TypeError, match="scale must be a real number"):
            ud.ops.scaled_dot_product_attention(*(ud.tensor(t) for t in (q, k, v)), scale=scale)
    with pytest.raises(TypeError, match="'scale' must be float, not numpy.ndarray"):
        F.scaled_dot_product_attention(*(torch.tensor(t) for t in (q, k, v)), scale=np.array(0.5))


def test_a_nan_scale_is_one_value_error(backend):
    """``scale=float('nan')``, which torch's own paths take apart (its math path gives NaN, its fused ones 0; unidl's
    torch backend gave 0, the others NaN), is one ``ValueError`` naming it on every backend."""
    q, k = ud.tensor(QUERIES.astype(np.float32)), ud.tensor(KEYS.astype(np.float32))
    v = k  # (CPU's fused kernel takes values of the keys' size)
    paths = []
    for path in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel(path):
            paths.append(F.scaled_dot_product_attention(*(torch.tensor(ud.to_numpy(t)) for t in (q, k, v)),
                                                        scale=math.nan))
    assert torch.isnan(paths[0]).all() and not torch.isnan(paths[1]).any()
    for call in (lambda: ud.ops.scaled_dot_product_attention(q, k, v, scale=math.nan),
                 lambda: ud.ops.attention(q, k, v, scale=math.nan)):
        with pytest.raises(ValueError, match="attention: scale is NaN"):
            call()
