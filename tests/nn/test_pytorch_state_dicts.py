"""A ``state_dict`` saved by plain PyTorch for the same architecture loads into the unidl model on every backend and
gives PyTorch's outputs: a 2-layer bidirectional ``torch.nn.LSTM`` and a ``torch.nn.TransformerEncoder``."""

import numpy as np
import torch
from torch import nn as tnn

import unidl as ud
from unidl.testing import max_relative_difference

R = np.random.default_rng(41)
X = R.standard_normal((2, 5, 4)).astype(np.float32)    # (N, T, features)
PADDING = np.zeros((2, 5), bool)
PADDING[0, 3:] = True


def _numpy_state(module):
    return {key: value.detach().numpy().copy() for key, value in module.state_dict().items()}


def test_torch_lstm_state_dict_loads_and_runs_the_same(backend):
    torch.manual_seed(0)
    reference = tnn.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True)
    expected, (h_n, c_n) = reference(torch.tensor(X))
    lstm = ud.nn.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True)
    lstm.load_state_dict(_numpy_state(reference))
    output, (ours_h, ours_c) = lstm(ud.tensor(X))
    for got, want in ((output, expected), (ours_h, h_n), (ours_c, c_n)):
        assert max_relative_difference(ud.to_numpy(got), want.detach().numpy()) < 2e-6


def test_torch_transformer_encoder_state_dict_loads_and_runs_the_same(backend):
    torch.manual_seed(0)
    reference = tnn.TransformerEncoder(tnn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 2,
                                       norm=tnn.LayerNorm(4), enable_nested_tensor=False).eval()
    expected = reference(torch.tensor(X), src_key_padding_mask=torch.tensor(PADDING))
    encoder = ud.nn.TransformerEncoder(ud.nn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 2,
                                       norm=ud.nn.LayerNorm(4), enable_nested_tensor=False).eval()
    encoder.load_state_dict(_numpy_state(reference))
    output = encoder(ud.tensor(X), src_key_padding_mask=ud.tensor(PADDING))
    assert max_relative_difference(ud.to_numpy(output), expected.detach().numpy()) < 2e-6


def test_a_checkpoint_for_another_architecture_lists_every_mismatch(backend):
    state = _numpy_state(tnn.LSTM(4, 3, num_layers=2))
    try:
        ud.nn.LSTM(4, 5, bidirectional=True).load_state_dict(state)
    except ud.StateDictError as error:
        message = str(error)
    else:
        raise AssertionError("an LSTM of another size loaded")
    for key in ("weight_ih_l0: expected shape (20, 4), found (12, 4)", "weight_ih_l0_reverse", "weight_ih_l1 (shape (12, 3))"):
        assert key in message, (key, message)
