"""What ``TransformerEncoder`` leaves at padded positions, against plain ``torch.nn.TransformerEncoder``: PyTorch's
evaluation output (``torch.no_grad()``: its nested-tensor path, zeros at padded positions) and its training output
(computed values), with and without ``enable_nested_tensor``, ``mask_check`` and a float mask, on every backend."""

import warnings

import numpy as np
import torch
from torch import nn as tnn

import unidl as ud
from unidl.testing import max_relative_difference

X = np.random.default_rng(8).standard_normal((3, 5, 8)).astype(np.float32)
AT_THE_END = np.zeros((3, 5), bool)
AT_THE_END[1, 3:] = True
AT_THE_END[2, :] = True                     # no real token: torch's nested path gives zeros, not NaN
IN_THE_MIDDLE = np.zeros((3, 5), bool)
IN_THE_MIDDLE[1, 1] = True                  # not left-aligned: mask_check sends torch down its ordinary path
AS_FLOATS = np.where(AT_THE_END, -np.inf, 0.0).astype(np.float32)


def _pair(norm_first=False, final_norm=True, **options):
    encoders = []
    for nn in (ud.nn, tnn):
        with warnings.catch_warnings():  # torch warns that norm_first disables its nested path
            warnings.simplefilter("ignore")
            encoders.append(nn.TransformerEncoder(
                nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first), 1,
                norm=nn.LayerNorm(8) if final_norm else None, **options))
    encoder, reference = encoders
    if final_norm:  # a bias, so that norm(0) at a zeroed position is not 0
        encoder.norm.load_state_dict({"weight": np.full(8, 1.5), "bias": np.linspace(-1, 1, 8)})
    reference.load_state_dict({key: torch.tensor(value) for key, value in encoder.state_dict().items()})
    assert encoder.use_nested_tensor == reference.use_nested_tensor
    return encoder, reference


def _expected(reference, padding, training=False):
    reference.train(training)
    with torch.no_grad(), warnings.catch_warnings():  # no_grad: how torch evaluates, its nested path's condition
        warnings.simplefilter("ignore")  # "nested tensors are in prototype stage"
        return reference(torch.tensor(X), src_key_padding_mask=torch.tensor(padding)).numpy()


def _assert_same(found, expected):
    valid = np.isfinite(expected).all(-1)
    assert np.array_equal(np.isfinite(found).all(-1), valid)  # NaN exactly where torch has NaN
    assert max_relative_difference(found[valid], expected[valid]) < 2e-6


def test_evaluation_zeroes_padding_as_torchs_nested_path_and_training_does_not(backend):
    encoder, reference = _pair()
    assert reference.use_nested_tensor
    forward = ud.function(lambda x, padding: encoder(x, src_key_padding_mask=padding))
    encoder.eval()
    for padding in (AS_FLOATS, IN_THE_MIDDLE, AT_THE_END):
        found = ud.to_numpy(forward(ud.tensor(X), ud.tensor(padding)))
        _assert_same(found, _expected(reference, padding))
    assert np.allclose(found[AT_THE_END], np.linspace(-1, 1, 8))  # norm(0): the zeroed rows, then the final norm
    encoder.train()
    trained = ud.function(lambda x, padding: encoder(x, src_key_padding_mask=padding))
    found = ud.to_numpy(trained(ud.tensor(X), ud.tensor(AT_THE_END)))
    # the row with no real token too: torch's training path gives it finite values through
    # F.scaled_dot_product_attention, as unidl's MultiheadAttention does in training (NaN on the inference path)
    _assert_same(found, _expected(reference, AT_THE_END, training=True))
    assert np.isfinite(found[2]).all()
    assert np.abs(found[1, 3:] - np.linspace(-1, 1, 8)).min() > 1e-3  # computed values, not norm(0)


def test_where_torch_takes_its_ordinary_path_so_does_unidl(backend):
    """Without the nested path (its switch off, pre-norm, an odd nhead) the padded positions hold computed
    values, NaN for a row with no real token, as torch's; with ``mask_check=False`` padding anywhere is zeroed."""
    for options in ({"norm_first": True}, {"enable_nested_tensor": False}):
        assert not _pair(**options)[0].use_nested_tensor  # the same answer as torch's, checked in _pair
    encoder, reference = _pair(enable_nested_tensor=False)
    forward = ud.function(lambda x, mask: encoder.eval()(x, src_key_padding_mask=mask))
    found = ud.to_numpy(forward(ud.tensor(X), ud.tensor(AT_THE_END)))
    _assert_same(found, _expected(reference, AT_THE_END))
    assert np.isnan(found[2]).all()
    encoder, _ = _pair(mask_check=False, final_norm=False)  # torch's nested path assumes the padding at the end
    forward = ud.function(lambda x, mask: encoder.eval()(x, src_key_padding_mask=mask))
    found = ud.to_numpy(forward(ud.tensor(X), ud.tensor(IN_THE_MIDDLE)))
    assert (found[1, 1] == 0).all() and not (found[~IN_THE_MIDDLE] == 0).all(-1).any()


def _torch_eval(module, *args, **kwargs):
    module.eval()
    with torch.no_grad():
        return module(*args, **kwargs)


def test_a_fully_masked_query_in_evaluation_gets_torchs_path_by_mask_dtype_activation_and_hooks(backend):
    """Which of PyTorch's paths a query whose every key is masked takes in evaluation (fused: NaN; plain: finite)
    depends on the masks' dtype for ``MultiheadAttention`` (float masks: plain), and for a ``TransformerEncoderLayer``
    on its activation and hooks (not relu or gelu, or a hook attached: plain): unidl gave the fused path's NaN."""
    padding = np.zeros((2, 4), bool)
    padding[1] = True  # (row 1: no key left)
    x = X[:2, :4]
    attention, reference = ud.nn.MultiheadAttention(8, 2, batch_first=True), tnn.MultiheadAttention(
        8, 2, batch_first=True)
    reference.load_state_dict({k: torch.tensor(v) for k, v in attention.state_dict().items()})
    attention.eval()
    for mask in (padding, np.where(padding, -np.inf, 0.0).astype(np.float32)):
        found = ud.to_numpy(attention(x, x, x, key_padding_mask=mask, need_weights=False)[0])
        expected = _torch_eval(reference, *(torch.tensor(x),) * 3, key_padding_mask=torch.tensor(mask),
                               need_weights=False)[0].numpy()
        assert np.array_equal(np.isnan(found), np.isnan(expected))
        _assert_same(np.nan_to_num(found), np.nan_to_num(expected))
    for activation, hooked in (("relu", False), ("prelu", False), ("relu", True)):
        layers = [nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                             activation=nn.PReLU() if activation == "prelu" else activation)
                  for nn in (ud.nn, tnn)]
        layer, torch_layer = layers
        torch_layer.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
        if hooked:
            for module in layers:
                module.linear2.register_forward_hook(lambda m, args, out: out)
        layer.eval()
        found = ud.to_numpy(layer(x, src_key_padding_mask=padding))
        expected = _torch_eval(torch_layer, torch.tensor(x), src_key_padding_mask=torch.tensor(padding)).numpy()
        assert np.array_equal(np.isnan(found), np.isnan(expected)), (activation, hooked)
        _assert_same(np.nan_to_num(found), np.nan_to_num(expected))


def test_evaluation_on_the_nested_path_has_finite_gradients_and_reads_a_float_mask_as_torch(backend):
    """On PyTorch's nested-tensor path, a float mask's non-zero entries are padding and the layers run without it
    (a real position attends to real positions only: unidl added finite entries to the scores, and the valid
    positions differed by 0.3), and a row without a real token is dropped (unidl's softmax over its masked keys
    was NaN: the output, zeroed, was torch's, but the gradients of the input and of nearly every weight were NaN)."""
    encoder, reference = _pair()
    encoder.eval()
    finite = np.where(AT_THE_END, 0.7, 0.0).astype(np.float32)
    finite[1, 4] = -2.0

    def outputs_and_gradients(x, finite, padding):
        def loss(x):
            return ud.ops.sum(encoder(x, src_key_padding_mask=padding))
        return ((encoder(x, src_key_padding_mask=finite),) + ud.grad(loss, (0,))(x)
                + tuple(ud.value_and_grad(lambda: loss(x), encoder.parameters())()[1]))

    found, *gradients = ud.function(outputs_and_gradients)(*map(ud.tensor, (X, finite, AT_THE_END)))
    _assert_same(ud.to_numpy(found), _expected(reference, finite))
    assert all(np.isfinite(ud.to_numpy(g)).all() for g in gradients)
    assert not ud.to_numpy(gradients[0])[AT_THE_END].any()  # (no gradient reaches a padded position)
