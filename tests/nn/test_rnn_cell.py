"""``RNNCell``, ``LSTMCell``, ``GRUCell`` against plain ``torch.nn`` (the oracle): PyTorch's ``state_dict``, the new
state and its gradients with respect to the input, the state and every parameter, batched and unbatched, with and
without a state, on every backend (float32 in ``ud.function``, float64 eagerly); clear errors."""

import numpy as np
import pytest

import unidl as ud
from tests.nn.test_attention import layer_case
from tests.parity.torch_oracle import RUNS, compare_table

R = np.random.default_rng(5)
X, H, C = R.standard_normal((3, 4)), R.standard_normal((3, 5)), R.standard_normal((3, 5))

CELLS = {
    "RNNCell-relu-no-bias-state": layer_case(lambda nn: nn.RNNCell(4, 5, bias=False, nonlinearity="relu"),
                                             lambda cell, x, h: cell(x, h), X, H),
    "RNNCell-unbatched": layer_case(lambda nn: nn.RNNCell(4, 5), lambda cell, x: cell(x), X[0]),
    "LSTMCell-state": layer_case(lambda nn: nn.LSTMCell(4, 5), lambda cell, x, h, c: cell(x, (h, c)), X, H, C),
    "LSTMCell-unbatched": layer_case(lambda nn: nn.LSTMCell(4, 5), lambda cell, x: cell(x), X[0]),
    "GRUCell": layer_case(lambda nn: nn.GRUCell(4, 5), lambda cell, x: cell(x), X),
    "GRUCell-no-bias-unbatched-state": layer_case(lambda nn: nn.GRUCell(4, 5, bias=False),
                                                  lambda cell, x, h: cell(x, h), X[0], H[0]),
}


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_cells_match_torch(backend, dtype, modes):
    """float32 inside ud.function for every case; float64 eagerly for the LSTM cell (eager JAX compiles each op)."""
    cases = CELLS if dtype == "float32" else {"LSTMCell-state": CELLS["LSTMCell-state"]}
    assert compare_table(cases, backend, dtype, modes) == []


def test_a_cell_is_its_sequence_layers_step_and_refuses_what_torch_refuses(backend):
    lstm, cell = ud.nn.LSTM(4, 5), ud.nn.LSTMCell(4, 5)
    cell.load_state_dict({name[:-3]: value for name, value in lstm.state_dict().items()})  # (weight_ih_l0 -> weight_ih)
    x = X.astype(np.float32)
    _, (h, c) = lstm(x[None])
    h_cell, c_cell = cell(x)
    assert np.array_equal(ud.to_numpy(h[0]), ud.to_numpy(h_cell)) and np.array_equal(ud.to_numpy(c[0]),
                                                                                      ud.to_numpy(c_cell))
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        ud.nn.RNNCell(4, 5, nonlinearity="gelu")
    with pytest.raises(ud.errors.ShapeMismatchError, match=r"expected input of shape \(N, 4\) or unbatched \(4,\)"):
        cell(x[None])
    with pytest.raises(ud.errors.ShapeMismatchError, match=r"expected a state of shape \(\d+, 5\) \(batch, hidden_size\)"):
        cell(x, (x[:, :3], x[:, :3]))
    with pytest.raises(TypeError, match=r"expected the state as a pair \(h, c\)"):
        cell(x, x)
