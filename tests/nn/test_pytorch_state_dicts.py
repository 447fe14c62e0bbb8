"""A ``state_dict`` saved by plain PyTorch for the same architecture loads into the unidl model on every backend and
gives PyTorch's outputs: a 2-layer bidirectional ``torch.nn.LSTM`` (with and without ``proj_size``) and a
``torch.nn.TransformerEncoder``."""

import numpy as np
import pytest
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


@pytest.mark.parametrize("proj_size", [0, 2])
def test_torch_lstm_state_dict_loads_and_runs_the_same(backend, proj_size):
    torch.manual_seed(0)
    reference = tnn.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True, proj_size=proj_size)
    expected, (h_n, c_n) = reference(torch.tensor(X))
    lstm = ud.nn.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True, proj_size=proj_size)
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


def test_torchs_own_parameters_load_as_they_are(backend):
    """PyTorch's tensors that require a gradient (a model's ``named_parameters()``, ``Embedding.weight``), which
    ``np.asarray`` refuses ("Can't call numpy() on Tensor that requires grad"; a GPU tensor likewise): they load into
    a model, build an embedding through ``from_pretrained`` and weigh a loss's classes on every backend."""
    torch.manual_seed(0)
    reference, embedding = tnn.Linear(4, 3), tnn.Embedding(5, 2)
    weight = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    model = ud.nn.Linear(4, 3)
    model.load_state_dict(dict(reference.named_parameters()))
    got = ud.to_numpy(model(ud.tensor(X[0])))
    assert max_relative_difference(got, reference(torch.tensor(X[0])).detach().numpy()) < 2e-6
    pretrained = ud.nn.Embedding.from_pretrained(embedding.weight)
    np.testing.assert_array_equal(ud.to_numpy(pretrained.weight), embedding.weight.detach().numpy())
    labels = np.array([0, 2, 1, 2, 0])
    loss = ud.nn.CrossEntropyLoss(weight=weight)(ud.tensor(got), ud.tensor(labels))
    expected = tnn.CrossEntropyLoss(weight=weight.detach())(torch.tensor(got), torch.tensor(labels))
    assert abs(float(loss) - float(expected)) < 1e-6


def test_torch_parameters_load_under_another_backend_without_loading_torchs():
    """A fresh interpreter on jax: a plain PyTorch model's parameters load without unidl loading its torch backend,
    whose load sets torch's seed, threads and float32 mode (a user's ``set_float32_matmul_precision("high")``)."""
    from tests.helpers import last_json_line, run_python

    pytest.importorskip("jax")
    out = run_python(
        "import json, numpy as np, torch, unidl as ud\nfrom unidl import backends\n"
        "ud.set_backend('jax'); ud.manual_seed(0); torch.set_float32_matmul_precision('high')\n"
        "net = torch.nn.Linear(3, 2); model = ud.nn.Linear(3, 2)\n"
        "model.load_state_dict(dict(net.named_parameters()))\n"
        "same = bool(np.array_equal(ud.to_numpy(model.weight), net.weight.detach().numpy()))\n"
        "t = torch.zeros(3); copied = ud.to_numpy(t); t.add_(1)\n"
        "half = ud.to_numpy(torch.ones(2, dtype=torch.bfloat16))\n"
        "print(json.dumps([same, sorted(backends.loaded_backends()), torch.get_float32_matmul_precision(),"
        " copied.tolist(), half.dtype.name]))")
    # a copy, never a view of the tensor; bfloat16 as ml_dtypes' (np.asarray refuses it), as the torch backend gives
    assert last_json_line(out.stdout) == [True, ["jax"], "high", [0.0, 0.0, 0.0], "bfloat16"]
