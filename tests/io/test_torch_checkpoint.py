"""``ud.load_weights(model, "x.pth")`` reads a ``torch.save`` state dict safely (``torch.load(weights_only=True)``)
into a unidl model on every backend; other architectures and pickled objects are clear errors."""

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference


class NotATensor:
    pass


def test_pth_state_dict_loads_on_every_backend(backend, tmp_path):
    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    path = tmp_path / "lstm.pth"
    torch.save(reference.state_dict(), path)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    model = ud.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    ud.load_weights(model, str(path))
    expected, _ = reference(torch.tensor(x))
    assert max_relative_difference(ud.to_numpy(model(ud.tensor(x))[0]), expected.detach().numpy()) < 2e-6

    with pytest.raises(ud.StateDictError, match=r"weight_ih_l0: expected shape \(20, 3\).*missing keys: weight_ih_l0_reverse"):
        ud.load_weights(ud.nn.LSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True), str(path))


def test_pth_with_other_objects_is_refused(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, path)
    with ud.use_backend("torch"), pytest.raises(ud.CorruptFileError, match=r"weights_only=True\) refused it"):
        ud.load_weights(ud.nn.Linear(2, 1), str(path))
