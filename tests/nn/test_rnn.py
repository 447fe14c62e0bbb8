"""``ud.nn.RNN``: PyTorch's parameters and numbers on every backend, any sequence length in one graph."""

import math
import warnings

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference


class LastStep(ud.nn.Module):
    """A sequence regressor: RNN, then a linear layer on the last hidden state."""

    def __init__(self):
        super().__init__()
        self.rnn = ud.nn.RNN(3, 8)
        self.head = ud.nn.Linear(8, 1)

    def forward(self, x):
        _, h_n = self.rnn(x)
        return self.head(h_n[0])


def _torch_reference(state, x, batch_first, nonlinearity):
    reference = torch.nn.RNN(x.shape[-1], state["weight_hh_l0"].shape[0], batch_first=batch_first,
                             nonlinearity=nonlinearity)
    reference.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    output, h_n = reference(torch.tensor(x))
    (output.square().sum() + h_n.sum()).backward()
    grads = {name: p.grad.numpy() for name, p in reference.named_parameters()}
    return output.detach().numpy(), h_n.detach().numpy(), grads


@pytest.mark.parametrize("batch_first, nonlinearity", [(True, "tanh"), (False, "relu")])
def test_matches_torch_nn_rnn(backend, rng, batch_first, nonlinearity):
    rnn = ud.nn.RNN(4, 6, batch_first=batch_first, nonlinearity=nonlinearity)
    x = rng.standard_normal((3, 7, 4) if batch_first else (7, 3, 4)).astype(np.float32)
    expected_output, expected_h, expected_grads = _torch_reference(rnn.state_dict(), x, batch_first, nonlinearity)

    output, h_n = rnn(ud.tensor(x))
    assert tuple(output.shape) == expected_output.shape and tuple(h_n.shape) == (1, 3, 6)
    assert max_relative_difference(ud.to_numpy(output), expected_output) < 2e-6
    assert max_relative_difference(ud.to_numpy(h_n), expected_h) < 2e-6

    def objective():
        output, h_n = rnn(ud.tensor(x))
        return ud.ops.sum(ud.ops.square(output)) + ud.ops.sum(h_n)

    grads = ud.grad(objective, rnn.parameters())()
    for (name, _), grad in zip(rnn.named_parameters(), grads):
        assert max_relative_difference(ud.to_numpy(grad), expected_grads[name]) < 1e-5, name


def test_parameters_named_and_initialised_as_in_pytorch(backend):
    rnn = ud.nn.RNN(5, 16)
    shapes = {name: tuple(value.shape) for name, value in rnn.state_dict().items()}
    assert shapes == {"weight_ih_l0": (16, 5), "weight_hh_l0": (16, 16), "bias_ih_l0": (16,), "bias_hh_l0": (16,)}
    bound = 1 / math.sqrt(16)
    assert all(np.abs(v).max() <= bound for v in rnn.state_dict().values())
    torch.nn.RNN(5, 16, batch_first=True).load_state_dict({k: torch.tensor(v) for k, v in rnn.state_dict().items()})


def test_initial_state_is_used(backend, rng):
    rnn = ud.nn.RNN(2, 3)
    x = rng.standard_normal((4, 5, 2)).astype(np.float32)
    h0 = rng.standard_normal((1, 4, 3)).astype(np.float32)
    reference = torch.nn.RNN(2, 3, batch_first=True)
    reference.load_state_dict({k: torch.tensor(v) for k, v in rnn.state_dict().items()})
    expected, _ = reference(torch.tensor(x), torch.tensor(h0))
    output, _ = rnn(ud.tensor(x), ud.tensor(h0))
    assert max_relative_difference(ud.to_numpy(output), expected.detach().numpy()) < 2e-6


def test_wrong_input_size_names_the_layer(backend):
    with pytest.raises(ud.ShapeMismatchError, match="RNN.*input_size 3.*\\(2, 5, 4\\)"):
        ud.nn.RNN(3, 4)(ud.tensor(np.zeros((2, 5, 4), np.float32)))


def _sequences(rng, lengths, batch_sizes):
    for length, batch in zip(lengths, batch_sizes):
        x = rng.standard_normal((batch, length, 3)).astype(np.float32)
        yield x, x.sum(axis=(1, 2))[:, None].astype(np.float32) / length


def test_train_step_over_new_sequence_lengths_does_not_retrace(rng):
    with ud.use_backend("tensorflow"), warnings.catch_warnings():
        warnings.simplefilter("error", ud.RetraceWarning)
        model = LastStep()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.Adam(model.parameters(), lr=1e-2))
        losses = [float(step(x, y)) for x, y in _sequences(rng, [5, 9, 2, 13, 5], [4, 4, 7, 3, 4])]
        assert step.trace_count == 1
        assert all(np.isfinite(losses))


def test_function_over_new_sequence_lengths_does_not_retrace(rng):
    with ud.use_backend("tensorflow"), warnings.catch_warnings():
        warnings.simplefilter("error", ud.RetraceWarning)
        model = LastStep()
        loss_fn = ud.nn.MSELoss()
        optimizer = ud.optim.SGD(model.parameters(), lr=1e-2)

        @ud.function
        def step(x, y):
            loss, grads = ud.value_and_grad(lambda: loss_fn(model(x), y), model.parameters())()
            optimizer.apply(grads)
            return loss

        for x, y in _sequences(rng, [5, 9, 2, 13], [4, 4, 7, 3]):
            step(x, y)
        assert step.trace_count == 1


def test_compiled_forward_matches_eager(backend, rng):
    rnn = ud.nn.RNN(3, 5)
    forward = ud.function(lambda x: rnn(x)[0])
    for length in (4, 9):
        x = rng.standard_normal((2, length, 3)).astype(np.float32)
        eager, _ = rnn(ud.tensor(x))
        assert max_relative_difference(ud.to_numpy(forward(x)), ud.to_numpy(eager)) < 2e-6


def test_train_step_learns_on_every_backend(backend, rng):
    model = LastStep()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.Adam(model.parameters(), lr=2e-2))
    x, y = next(_sequences(rng, [6], [32]))
    first = float(step(x, y))
    for _ in range(40):
        loss = float(step(x, y))
    assert loss < 0.5 * first
