"""A train step follows the train/eval mode of every module, as torch does: ``model.bn.eval()`` between steps
(freezing a BatchNorm's statistics while the rest trains) makes the next steps normalise with the running
statistics and leave them unchanged, on every backend, even where the step is a compiled graph; so does a head
replaced or a bias removed after the step was compiled."""

import numpy as np
import pytest
import torch

import unidl as ud

pytestmark = pytest.mark.heavy  # minutes of tests: run first (tests/conftest.py)

R = np.random.default_rng(13)
X = R.standard_normal((16, 4)).astype(np.float32) * 2 + 1
Y = R.standard_normal((16, 2)).astype(np.float32)


class Net(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 3)
        self.bn = ud.nn.BatchNorm1d(3)
        self.head = ud.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.bn(self.fc(x)))


def _oracle(state):
    net = torch.nn.Sequential()
    net.add_module("fc", torch.nn.Linear(4, 3))
    net.add_module("bn", torch.nn.BatchNorm1d(3))
    net.add_module("head", torch.nn.Linear(3, 2))
    net.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return net


def _torch_step(net, optimizer):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(net(torch.tensor(X)), torch.tensor(Y))
    loss.backward()
    optimizer.step()
    return loss.item()


def _assert_states_close(state, oracle):
    for key, value in oracle.state_dict().items():
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_submodule_put_in_eval_between_steps_uses_and_keeps_running_statistics(backend):
    model = Net()
    oracle = _oracle(model.state_dict())
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    torch_optimizer = torch.optim.SGD(oracle.parameters(), lr=0.1)

    for _ in range(2):  # all in training mode
        assert abs(float(step(X, Y)) - _torch_step(oracle, torch_optimizer)) < 1e-5
    _assert_states_close(model.state_dict(), oracle)

    model.bn.eval()
    oracle.bn.eval()
    frozen = {k: v.copy() for k, v in model.state_dict().items() if k.startswith("bn.running")}
    for _ in range(2):
        assert abs(float(step(X, Y)) - _torch_step(oracle, torch_optimizer)) < 1e-5
    state = model.state_dict()
    for key, value in frozen.items():
        assert np.array_equal(state[key], value), f"{key} moved while bn was in eval mode"
    assert model.training and not model.bn.training  # the step changed no module's mode
    _assert_states_close(state, oracle)

    model.bn.train()  # back to batch statistics: the statistics move again
    oracle.bn.train()
    assert abs(float(step(X, Y)) - _torch_step(oracle, torch_optimizer)) < 1e-5
    state = model.state_dict()
    assert not np.array_equal(state["bn.running_mean"], frozen["bn.running_mean"])
    _assert_states_close(state, oracle)


def test_setting_a_submodule_training_flag_directly_is_followed(backend):
    model = Net()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    step(X, Y)
    model.bn.training = False  # as torch code sometimes does, without eval()
    before = model.state_dict()["bn.running_var"].copy()
    step(X, Y)
    assert np.array_equal(model.state_dict()["bn.running_var"], before)


class _PenalisedMSE(ud.nn.Module):
    """A loss module with a mode of its own: MSE, plus an output penalty in training mode only."""

    def forward(self, outputs, targets):
        loss = ud.ops.mean((outputs - targets) * (outputs - targets))
        return loss + 0.5 * ud.ops.mean(outputs * outputs) if self.training else loss


def test_a_train_step_follows_the_mode_of_a_loss_module_outside_the_model(backend):
    """A compiled step keys its graphs on the modes of its model's modules and also on those of the modules its
    trace reaches outside the model (the loss module here): ``loss.eval()`` between steps drops the penalty, as
    torch's eager step does, with one more trace, and ``loss.train()`` brings it back."""
    model, loss = Net(), _PenalisedMSE()
    step = ud.train_step(model, loss, ud.optim.SGD(model.parameters(), lr=0.0))  # lr 0: the weights stay
    eager = {}
    for mode in (True, False):
        loss.train(mode)
        eager[mode] = float(loss(model(ud.tensor(X)), ud.tensor(Y)))
    assert eager[True] > eager[False] + 1e-3
    traces = []
    for mode in (True, False, True):
        loss.train(mode)
        assert abs(float(step(X, Y)) - eager[mode]) < 1e-5 * eager[mode], (mode, eager)
        traces.append(step.trace_count)
    # one trace per new mode, none when one comes back (Keras's trainer compiles for one set of modes: the step
    # switches back to that mode's compile, traced already); None where the step runs eagerly (torch)
    assert traces in ([1, 2, 2], [None] * 3), traces


class _Doubling(ud.nn.Module):
    """Twice its input in training mode, its input in eval mode (a mode a step's graph bakes in)."""

    def forward(self, x):
        return x * 2.0 if self.training else x


class _WithOutside(ud.nn.Module):
    """Net, whose output goes through a module it holds outside its tree (a plain attribute, not a submodule)."""

    def __init__(self, outside):
        super().__init__()
        self.net = Net()
        self.__dict__["outside"] = outside

    def forward(self, x):
        return self.outside(self.net(x))


def test_a_train_step_follows_the_mode_of_a_module_the_forward_holds_outside_the_model(backend):
    """A module the forward calls outside the model's tree (and the loss's) keys the compiled step too, on every
    backend and on Keras's own trainer (whose compile key held only the model's and the loss's modes: the step
    kept doubling after ``outside.eval()``): the first trace finds it, the second call reuses that trace, eval()
    traces once more, and train() goes back to the first graph."""
    outside = _Doubling()
    model = _WithOutside(outside)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.0))  # lr 0: weights stay
    expected = {}
    for mode in (True, False):
        outside.train(mode)
        expected[mode] = float(np.mean((ud.to_numpy(model(ud.tensor(X))) - Y) ** 2))
    assert expected[True] > expected[False] + 1e-3
    traces = []
    for mode in (True, True, False, True):
        outside.train(mode)
        assert abs(float(step(X, Y)) - expected[mode]) < 1e-5 * expected[mode], (mode, expected)
        traces.append(step.trace_count)
    assert traces in ([1, 1, 2, 2], [None] * 4), traces


class _CallingAnother(ud.nn.Module):
    """A loss that calls another loss module it holds outside its tree (a plain attribute)."""

    def __init__(self, inner):
        super().__init__()
        self.__dict__["inner"] = inner

    def forward(self, outputs, targets):
        return self.inner(outputs, targets) * 1.0


def test_a_loss_module_of_one_step_reached_by_another_steps_loss_keys_that_step(backend):
    """Two steps over one model: the first's loss module is inside its own step's trees, and outside the second's
    (whose loss calls it). After both ran, ``eval()`` of the first loss changes the second step's loss too (Keras's
    trainer counted the module as inside for good once the first step had seen it: the second step kept it in
    training mode)."""
    model, inner = Net(), _PenalisedMSE()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.0)
    first, second = (ud.train_step(model, loss, optimizer) for loss in (inner, _CallingAnother(inner)))
    first(X, Y)
    second(X, Y)
    inner.eval()
    expected = float(inner(model(ud.tensor(X)), ud.tensor(Y)))
    assert abs(float(second(X, Y)) - expected) < 1e-5 * expected


def test_a_train_step_follows_a_head_replaced_and_a_bias_removed_after_it_was_compiled(backend):
    """A compiled step bakes in the modules and parameters its forward reached: a head replaced and ``fc.bias`` set
    to None after the step ran are followed by the next steps, as a torch loop follows them (tensorflow, jax and keras
    ran the old head and bias, silently: a loss of 0.01 where torch's was 0.08)."""
    ud.manual_seed(0)
    model = Net()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    oracle = _oracle({k: np.asarray(ud.to_numpy(v)) for k, v in model.state_dict().items()})
    torch_optimizer = torch.optim.SGD(oracle.parameters(), lr=0.1)
    losses = [float(ud.to_numpy(step(X, Y)))]
    expected = [_torch_step(oracle, torch_optimizer)]
    ud.manual_seed(1)
    model.head = ud.nn.Linear(3, 2)
    model.fc.bias = None
    oracle.head = torch.nn.Linear(3, 2)
    with torch.no_grad():
        oracle.head.weight.copy_(torch.tensor(np.asarray(ud.to_numpy(model.head.weight))))
        oracle.head.bias.copy_(torch.tensor(np.asarray(ud.to_numpy(model.head.bias))))
    oracle.fc.bias = None
    for _ in range(2):
        losses.append(float(ud.to_numpy(step(X, Y))))
        expected.append(_torch_step(oracle, torch_optimizer))
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    _assert_states_close({k: np.asarray(ud.to_numpy(v)) for k, v in model.state_dict().items()}, oracle)


class _Scaled(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = ud.nn.Linear(3, 2)
        self.register_buffer("s", np.ones(2))

    def forward(self, x):
        return self.lin(x) * self.s


def test_a_buffer_given_a_new_variable_after_a_step_was_compiled_is_read_by_the_next_call(backend):
    """A buffer registered again, filled in after being None, or given a value of another shape gets a new variable:
    compiled steps and ``ud.function`` read that one from their next call, as eager code does (tensorflow, jax and
    keras read the old one: a loss of 1.0 where it was 25.0)."""
    model = _Scaled()
    model.load_state_dict({"lin.weight": np.zeros((2, 3)), "lin.bias": np.ones(2), "s": np.ones(2)})
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.0))
    forward = ud.function(lambda t: model(t))
    x, y = np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32)
    assert float(ud.to_numpy(step(x, y))) == 1.0 and ud.to_numpy(forward(ud.tensor(x)))[0, 0] == 1.0

    def refill():
        model.s = None
        model.s = np.full(2, 3.0)

    for change, scale in ((lambda: model.register_buffer("s", np.full(2, 5.0)), 5.0), (refill, 3.0),
                          (lambda: setattr(model, "s", np.full(1, 2.0)), 2.0)):
        change()
        assert float(ud.to_numpy(step(x, y))) == scale ** 2
        np.testing.assert_array_equal(ud.to_numpy(forward(ud.tensor(x))), np.full((2, 2), scale))


def test_a_change_to_a_shared_or_loss_module_is_followed_and_hooks_or_ties_add_no_traces(backend):
    """The structure key is each module's own: a bias removed from an encoder shared by two models is followed by
    both models' steps (the second kept the old bias), a loss module's buffer registered again by the step that
    reaches it (the old one was read); a hook added and removed around eager calls, or weights tied again in every
    forward, trace no new graph (every such change traced one more)."""
    encoder = ud.nn.Linear(2, 2)
    encoder.load_state_dict({"weight": np.zeros((2, 2)), "bias": np.ones(2)})
    owners = [ud.nn.Sequential(encoder), ud.nn.Sequential(encoder)]
    x, y = np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)
    steps = [ud.train_step(owner, ud.nn.MSELoss(), ud.optim.SGD(owner.parameters(), lr=0.0)) for owner in owners]
    assert [float(ud.to_numpy(step(x, y))) for step in steps] == [1.0, 1.0]
    encoder.bias = None
    assert [float(ud.to_numpy(step(x, y))) for step in steps] == [0.0, 0.0]

    class Scaled(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", np.ones(1))

        def forward(self, output, target):
            return ud.ops.mean((output - target) ** 2) * ud.ops.sum(self.scale)

    loss = Scaled()
    step = ud.train_step(owners[0], loss, ud.optim.SGD(owners[0].parameters(), lr=0.0))
    assert float(ud.to_numpy(step(x, y + 1))) == 1.0
    loss.register_buffer("scale", np.full(1, 4.5))
    assert float(ud.to_numpy(step(x, y + 1))) == 4.5

    class Tied(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = ud.nn.Linear(2, 2), ud.nn.Linear(2, 2)

        def forward(self, x):
            self.b.weight = self.a.weight
            return self.b(self.a(x))

    model = Tied()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(3):
        step(x, y)
        model(ud.tensor(x))
        handle = model.register_forward_hook(lambda module, inputs, output: None)
        model(ud.tensor(x))
        handle.remove()
    if step.trace_count is not None:  # (None: eager torch, Keras-on-torch)
        assert step.trace_count == 1
