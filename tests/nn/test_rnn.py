"""``ud.nn.RNN``, ``LSTM``, ``GRU``: PyTorch's parameters and numbers on every backend, any sequence length and any
``lengths`` in one graph."""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn as tnn

import unidl as ud
from tests.parity.torch_oracle import RUNS, Case, compare_table
from unidl.testing import max_relative_difference


class LastStep(ud.nn.Module):
    """A sequence regressor: RNN, then a linear layer on the last hidden state."""

    def __init__(self):
        super().__init__()
        self.rnn = ud.nn.RNN(3, 8, batch_first=True)
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
    # (the sizes of test_matches_torch_nn_rnn's batch-first case: eager JAX's compiled ops serve both)
    rnn = ud.nn.RNN(4, 6, batch_first=True)
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    h0 = rng.standard_normal((1, 3, 6)).astype(np.float32)
    reference = torch.nn.RNN(4, 6, batch_first=True)
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
    rnn = ud.nn.RNN(4, 6)  # (test_matches_torch_nn_rnn's sizes, sequence-first: eager JAX's ops compiled there)
    forward = ud.function(lambda x: rnn(x)[0])
    for length in (7, 4):
        x = rng.standard_normal((length, 3, 4)).astype(np.float32)
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


# ---- LSTM, GRU and RNN options against plain torch.nn (the oracle), through the shared parity harness ---------

R = np.random.default_rng(21)
SEQUENCE = R.standard_normal((4, 3, 4))                    # (T, N, F)
BATCH_FIRST = R.standard_normal((3, 4, 4))                  # (N, T, F)
LENGTHS = np.array([4, 1, 3])
INITIAL = R.standard_normal((4, 3, 3))                      # (num_layers * 2, N, H)


class Outputs(ud.nn.Module):
    """Every output of a recurrent layer flattened into one vector (the harness compares one tensor)."""

    def __init__(self, layer, lengths=False, initial=False):
        super().__init__()
        self.layer, self.lengths, self.initial = layer, lengths, initial

    def forward(self, x, *extra):
        extra = list(extra)
        hx = extra.pop(0) if self.initial else None
        if isinstance(self.layer, ud.nn.LSTM) and hx is not None:
            hx = (hx, ud.ops.tanh(hx))
        output, state = self.layer(x, hx, lengths=extra.pop(0) if self.lengths else None)
        parts = [output] + list(state if isinstance(state, tuple) else (state,))
        return ud.ops.concat([ud.ops.reshape(p, (-1,)) for p in parts], 0)


class TorchOutputs(tnn.Module):
    def __init__(self, layer, lengths=False, initial=False):
        super().__init__()
        self.layer, self.lengths, self.initial = layer, lengths, initial

    def forward(self, x, *extra):
        extra = list(extra)
        hx = extra.pop(0) if self.initial else None
        if isinstance(self.layer, tnn.LSTM) and hx is not None:
            hx = (hx, torch.tanh(hx))
        if self.lengths:
            total = x.shape[1 if self.layer.batch_first else 0]
            packed = tnn.utils.rnn.pack_padded_sequence(x, extra.pop(0), self.layer.batch_first, enforce_sorted=False)
            output, state = self.layer(packed, hx)
            output, _ = tnn.utils.rnn.pad_packed_sequence(output, self.layer.batch_first, total_length=total)
        else:
            output, state = self.layer(x, hx)
        parts = [output] + list(state if isinstance(state, tuple) else (state,))
        return torch.cat([p.reshape(-1) for p in parts])


def recurrent(name, options, *inputs, lengths=False, initial=False):
    ours, theirs = getattr(ud.nn, name), getattr(tnn, name)
    return Case(lambda: Outputs(ours(4, 3, **options), lengths, initial),
                lambda: TorchOutputs(theirs(4, 3, **options), lengths, initial), list(inputs))


# few cases, each covering several options: every scan is a loop to trace and differentiate on each backend
RECURRENT = {
    "LSTM-2-layers-lengths-initial-state": recurrent(
        "LSTM", dict(num_layers=2), SEQUENCE, INITIAL[:2], LENGTHS, lengths=True, initial=True),
    "LSTM-proj-size-bidirectional-batch-first-lengths": recurrent(
        "LSTM", dict(bidirectional=True, batch_first=True, proj_size=2), BATCH_FIRST, LENGTHS, lengths=True),
    "GRU-bidirectional-batch-first-lengths-no-bias": recurrent(
        "GRU", dict(bidirectional=True, batch_first=True, bias=False), BATCH_FIRST, LENGTHS, lengths=True),
}
# the plain RNN's options, run in both dtypes: two layers of relu with an initial state, and a bidirectional tanh
# one, both over ``lengths`` (torch's packed sequences)
RNN_CASES = {
    "RNN-relu-2-layers-lengths-initial-state": recurrent(
        "RNN", dict(num_layers=2, nonlinearity="relu"), SEQUENCE, INITIAL[:2], LENGTHS, lengths=True, initial=True),
    "RNN-tanh-bidirectional-batch-first-lengths": recurrent(
        "RNN", dict(bidirectional=True, batch_first=True), BATCH_FIRST, LENGTHS, lengths=True),
}
RECURRENT.update(RNN_CASES)
# LSTM and GRU over ``lengths`` in float64 too, as small as shows them: two steps, two sequences of lengths 2 and 1
# (the second's last step masked: its final state the first step's, its output there 0), one layer, one direction
# (the reverse direction's masking is the plain RNN's, ``RNN_CASES``); each step is ops to run and differentiate
SHORT_SEQUENCE, SHORT_LENGTHS = SEQUENCE[:2, :2], np.array([2, 1])
FLOAT64_LENGTHS_CASES = {
    "LSTM-lengths": recurrent("LSTM", {}, SHORT_SEQUENCE, SHORT_LENGTHS, lengths=True),
    "GRU-lengths": recurrent("GRU", {}, SHORT_SEQUENCE, SHORT_LENGTHS, lengths=True),
}


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_recurrent_layers_match_torch(backend, dtype, modes):
    """Outputs, final states, and gradients w.r.t. inputs, initial states and every weight, as torch.nn's
    (``lengths`` as ``pack_padded_sequence`` + ``pad_packed_sequence``), eagerly and in a graph: float32 for every
    case, float64 for two (unbatched input; two layers of projected LSTM, whose float32 gradients drift past 1e-5),
    the plain RNN's (``RNN_CASES``: 2 layers, bidirectional, tanh and relu, ``lengths``) and LSTM's and GRU's over
    ``lengths`` (``FLOAT64_LENGTHS_CASES``)."""
    cases = RECURRENT if dtype == "float32" else {
        "GRU": recurrent("GRU", dict(bidirectional=True), SEQUENCE[:, 0]),
        "LSTM-proj-size-2-layers": recurrent("LSTM", dict(num_layers=2, proj_size=2), SEQUENCE), **RNN_CASES,
        **FLOAT64_LENGTHS_CASES}
    assert compare_table(cases, backend, dtype, modes) == []


@pytest.mark.parametrize("name, options", [("LSTM", {}), ("GRU", {}), ("LSTM", {"proj_size": 2})])
def test_state_dict_keys_and_layout_are_pytorchs(backend, name, options):
    ours = getattr(ud.nn, name)(4, 3, num_layers=2, bidirectional=True, **options)
    theirs = getattr(tnn, name)(4, 3, num_layers=2, bidirectional=True, **options)
    assert repr(ours) == repr(theirs)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    bound = 1 / math.sqrt(3)
    assert all(0 < np.abs(v).max() <= bound for v in ours.state_dict().values())


def test_dropout_between_layers_in_training_only(backend, rng):
    """p=1 zeroes the second layer's input in training (deterministic, as torch's); eval leaves it alone."""
    lstm = ud.nn.LSTM(2, 3, num_layers=2, dropout=1.0)
    reference = tnn.LSTM(2, 3, num_layers=2, dropout=1.0)
    reference.load_state_dict({k: torch.tensor(v) for k, v in lstm.state_dict().items()})
    x = rng.standard_normal((3, 2, 2)).astype(np.float32)
    for training in (True, False):
        lstm.train(training)
        reference.train(training)
        expected, _ = reference(torch.tensor(x))
        output, _ = lstm(ud.tensor(x))
        assert max_relative_difference(ud.to_numpy(output), expected.detach().numpy()) < 2e-6, training


def test_new_lengths_and_sequence_lengths_do_not_retrace(rng):
    with ud.use_backend("tensorflow"), warnings.catch_warnings():
        warnings.simplefilter("error", ud.RetraceWarning)
        lstm = ud.nn.LSTM(3, 4, batch_first=True, bidirectional=True)
        forward = ud.function(lambda x, lengths: lstm(x, lengths=lengths)[1][0])
        for steps, lengths in ((5, [5, 1]), (5, [2, 3]), (8, [8, 6])):
            x = rng.standard_normal((2, steps, 3)).astype(np.float32)
            h_n = ud.to_numpy(forward(x, np.array(lengths)))
            short = ud.to_numpy(lstm(ud.tensor(x[1:, :lengths[1]]))[1][0])  # the second sequence alone, cut
            assert max_relative_difference(h_n[:, 1:], short) < 2e-6
        assert forward.trace_count == 1


def test_bad_lengths_and_states_are_clear_errors(backend):
    gru = ud.nn.GRU(2, 3, num_layers=2)
    x = ud.tensor(np.zeros((4, 3, 2), np.float32))
    with pytest.raises(ud.ShapeMismatchError, match=r"lengths of shape \(3,\).*received \(2,\)"):
        gru(x, lengths=np.array([4, 4]))
    with pytest.raises(ud.IndexOutOfRangeError, match=r"lengths.*\[1, sequence length\]"):
        gru(x, lengths=np.array([4, 0, 2]))
    with pytest.raises(ud.IndexOutOfRangeError, match=r"lengths.*\[1, sequence length\]"):
        ud.function(lambda x, lengths: gru(x, lengths=lengths)[0])(x, np.array([5, 1, 2]))
    with pytest.raises(ud.ShapeMismatchError, match=r"initial state of shape \(2, 3, 3\).*received \(1, 3, 3\)"):
        gru(x, ud.tensor(np.zeros((1, 3, 3), np.float32)))
    with pytest.raises(TypeError, match=r"pair \(h_0, c_0\)"):
        ud.nn.LSTM(2, 3)(x, ud.tensor(np.zeros((1, 3, 3), np.float32)))
    with pytest.raises(ValueError, match=r"LSTM proj_size \(3\) must be smaller than hidden_size \(3\)"):
        ud.nn.LSTM(2, 3, proj_size=3)
    with pytest.raises(ud.ShapeMismatchError, match=r"initial state of shape \(1, 3, 2\).*received \(1, 3, 3\)"):
        ud.nn.LSTM(2, 3, proj_size=2)(x, (ud.tensor(np.zeros((1, 3, 3), np.float32)),) * 2)


@pytest.mark.parametrize("name", ["RNN", "GRU"])
@pytest.mark.parametrize("proj_size", [1, 0])
def test_a_projection_of_an_rnn_or_gru_is_a_value_error_as_torchs(backend, name, proj_size):
    """``proj_size`` is the LSTM's: given to ``RNN`` or ``GRU`` (any value, 0 too) it is a ``ValueError``, as torch.nn
    raises it (it was a ``TypeError``, an unexpected keyword), with torch's words and the class and value given."""
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        getattr(torch.nn, name)(3, 4, proj_size=proj_size)
    with pytest.raises(ValueError) as caught:
        getattr(ud.nn, name)(3, 4, proj_size=proj_size)
    assert type(caught.value) is ValueError
    assert str(caught.value) == (f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU (got "
                                 f"proj_size={proj_size})")


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_proj_size_none_is_refused_by_an_rnn_or_gru_as_by_torchs(backend, name):
    """``proj_size=None``, which torch.nn refuses as any value given to RNN or GRU, is the same ``ValueError`` here
    (None was unidl's default, so it was taken silently)."""
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        getattr(torch.nn, name)(3, 4, proj_size=None)
    with pytest.raises(ValueError, match=re.escape(f"{name}: proj_size argument is only supported for LSTM, not RNN "
                                                   f"or GRU (got proj_size=None)")):
        getattr(ud.nn, name)(3, 4, proj_size=None)
    assert getattr(ud.nn, name)(3, 4).hidden_size == 4  # (not given: the default, no projection)


def test_one_layers_dropout_warns_and_flags_are_checked_as_torch(backend):
    """``dropout`` with ``num_layers=1`` does nothing: torch's warning, word for word (it was silent); a string for
    ``bias`` or ``bidirectional`` is an error (it was taken as True)."""
    import torch

    for nn in (ud.nn, torch.nn):
        with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1, but got "
                                             "dropout=0.5 and num_layers=1"):
            nn.LSTM(3, 4, dropout=0.5)
    for option in ("bias", "bidirectional"):
        with pytest.raises(ValueError, match=f"GRU {option} must be True or False"):
            ud.nn.GRU(3, 4, **{option: "yes"})
