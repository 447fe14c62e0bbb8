"""Freezing with PyTorch's names (``module.requires_grad_(False)``, ``param.requires_grad = False``) is honoured
by every loop on every backend: frozen weights and their optimizer state stay bit-identical. An optimizer over
some of a model's parameters (a head only), or over them in another order, trains as ``torch.optim`` does."""

import warnings

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.errors import UnsupportedFlagError
from unidl.testing import max_relative_difference

R = np.random.default_rng(4)
X, Y = R.standard_normal((8, 3)).astype(np.float32), R.standard_normal((8, 2)).astype(np.float32)


class Net(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = ud.nn.Linear(3, 4)
        self.head = ud.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(ud.ops.relu(self.body(x)))


def _loops(model, optimizer):
    loss_fn = ud.nn.MSELoss()
    step = ud.train_step(model, loss_fn, optimizer)
    return {
        "train_step": lambda: step(X, Y),
        "fit": lambda: ud.fit(model, (X, Y), loss=loss_fn, optimizer=optimizer, epochs=1, batch_size=4, verbose=0),
        "value_and_grad": lambda: optimizer.apply(
            ud.value_and_grad(lambda: loss_fn(model(ud.tensor(X)), ud.tensor(Y)), model.parameters())()[1]),
        "apply": lambda: optimizer.apply([ud.tensor(np.ones(p.shape, np.float32)) for p in model.parameters()]),
    }


@pytest.mark.parametrize("how, loop", [(how, loop) for how in ("module", "attribute")
                                       for loop in ("train_step", "fit", "value_and_grad", "apply")]
                         + [("method", "train_step"), ("method", "apply")])
def test_frozen_parameters_stay_bit_identical(backend, how, loop):
    model = Net()
    optimizer = ud.optim.Adam(model.parameters(), lr=0.05)
    run = _loops(model, optimizer)[loop]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()  # a first step while everything trains (optimizer state everywhere, graphs traced)
        if how == "module":
            model.body.requires_grad_(False)
        elif how == "attribute":
            for p in model.body.parameters():
                p.requires_grad = False
        else:  # PyTorch's Parameter.requires_grad_, on every backend's variables
            assert all(p.requires_grad_(False) is p for p in model.body.parameters())
        weights, slots = model.state_dict(), optimizer.state_dict()["slots"]
        run()
        run()
    after, slots_after = model.state_dict(), optimizer.state_dict()["slots"]
    for name in ("body.weight", "body.bias"):
        assert np.array_equal(weights[name], after[name]), name
    for index in (0, 1):
        for slot in slots[index]:
            assert np.array_equal(slots[index][slot], slots_after[index][slot])
    assert not np.array_equal(weights["head.weight"], after["head.weight"])
    model.body.requires_grad_(True)  # unfrozen: trains again (compiled steps are rebuilt)
    with warnings.catch_warnings(record=True) as more:
        warnings.simplefilter("always")
        run()
    caught += more
    assert not np.array_equal(after["body.weight"], model.state_dict()["body.weight"])
    # silently, as torch.optim leaves a parameter without a gradient (Keras warned "Gradients do not exist")
    assert not [w for w in caught if "radient" in str(w.message)], [str(w.message) for w in caught]


def test_trainable_flag_is_refused_on_parameters_and_modules(backend):
    """Keras's and TensorFlow's ``trainable``, which unidl does not read, is one error on every backend (it froze on
    keras, was ignored on torch and failed with the framework's own error elsewhere): on the assignment where unidl
    can see it, else at the first step, before any weight moves."""
    model = Net()
    weights = model.state_dict()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(UnsupportedFlagError, match=r"module\.requires_grad_\(False\)"):
        model.body.trainable = False
    with pytest.raises(UnsupportedFlagError, match=r"param\.requires_grad_\(False\)"):
        model.body.weight.trainable = False
        step(X, Y)
    assert isinstance(UnsupportedFlagError("x"), (TypeError, AttributeError))
    for name, value in model.state_dict().items():
        assert np.array_equal(weights[name], value), name


def test_gradients_of_frozen_parameters_are_none(backend):
    model = Net().requires_grad_(False)
    model.head.requires_grad_(True)
    _, grads = ud.value_and_grad(lambda: ud.ops.sum(model(ud.tensor(X))), model.parameters())()
    assert [g is None for g in grads] == [True, True, False, False]
    assert model.num_parameters(trainable_only=True) == 4 * 2 + 2


SQUARE = [R.standard_normal(s).astype(np.float32) for s in [(4, 4), (4,), (4, 4), (4,)]]  # same-shape layers
XS, YS = R.standard_normal((8, 4)).astype(np.float32), R.standard_normal((8, 4)).astype(np.float32)


def _head_or_reversed(kind, params):
    """The head only (one group), or every parameter in reverse order with a group of its own rate per layer."""
    if kind == "head":
        return [{"params": params[2:]}]
    reversed_params = params[::-1]
    return [{"params": reversed_params[:2]}, {"params": reversed_params[2:], "lr": 0.05}]


def trained_against_torch_optim(kind):
    """A model of two same-shape layers and SGD with momentum over ``_head_or_reversed(kind, ...)`` of its
    parameters, on the backend in force, trained by ``train_step`` for two steps, then by ``fit`` for one epoch of
    two batches, against plain ``torch.optim`` on a plain torch model from the same weights: per loop the largest
    relative difference of a parameter, and whether the body kept its weights bit for bit (a head-only optimizer).
    (On Keras-on-JAX: scripts/run-tests.sh's run of this file's keras tests.)"""
    reference = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
    with torch.no_grad():
        for p, value in zip(reference.parameters(), SQUARE):
            p.copy_(torch.tensor(value))
    reference_optimizer = torch.optim.SGD(_head_or_reversed(kind, list(reference.parameters())), lr=0.1,
                                          momentum=0.9)

    def difference(*batches):
        for rows in batches:
            reference_optimizer.zero_grad()
            torch.nn.functional.mse_loss(reference(torch.tensor(XS[rows])), torch.tensor(YS[rows])).backward()
            reference_optimizer.step()
        state = model.state_dict()
        return max(max_relative_difference(state[name], p.detach().numpy())
                   for name, p in zip(state, reference.parameters()))

    model = ud.nn.Sequential(ud.nn.Linear(4, 4), ud.nn.Tanh(), ud.nn.Linear(4, 4))
    model.load_state_dict(dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], SQUARE)))
    optimizer = ud.optim.SGD(_head_or_reversed(kind, list(model.parameters())), lr=0.1, momentum=0.9)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    step(XS, YS)
    step(XS, YS)
    outcome = {"train_step": difference(slice(None), slice(None))}
    ud.fit(model, (XS, YS), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=1, batch_size=4, shuffle=False,
           verbose=0)
    outcome["fit"] = difference(slice(0, 4), slice(4, 8))
    outcome["body_kept"] = all(np.array_equal(np.asarray(model.state_dict()[name]), value)
                               for name, value in zip(["0.weight", "0.bias"], SQUARE))
    return outcome


@pytest.mark.parametrize("kind", ["head", "reversed"])
def test_optimizer_over_some_parameters_or_another_order_follows_torch_optim(backend, kind):
    """Matched by identity to the model's parameters (not by position): the head alone updates, the body keeps
    its weights; in reverse order each parameter gets its own momentum slot and its group's rate, as torch.optim
    (same-shape layers: a positional match would swap them silently). ``train_step`` for two steps, then ``fit``
    for one epoch of two batches."""
    outcome = trained_against_torch_optim(kind)
    assert outcome["train_step"] < 1e-6 and outcome["fit"] < 1e-6, outcome
    assert outcome["body_kept"] == (kind == "head"), outcome


FROZEN = r"every parameter of the model is frozen \(requires_grad=False\), so a step has nothing"


@pytest.mark.parametrize("loop", ["train_step", "fit"])
def test_every_parameter_frozen_is_an_error_before_anything_changes(backend, loop):
    """A model all of whose parameters are frozen has nothing to train: PyTorch's ``backward()`` raises (the loss
    requires no gradient), so every backend raises ``NothingToTrainError`` (a ``RuntimeError`` as PyTorch's), in a
    compiled step traced while everything trained as in a fresh eager one, weights and optimizer state unchanged;
    unfrozen, it trains again."""
    oracle = torch.nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(RuntimeError):
        torch.nn.functional.mse_loss(oracle(torch.from_numpy(X)), torch.from_numpy(Y)).backward()
    model = Net()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    run = step if loop != "fit" else lambda x, y: ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer,
                                                         epochs=1, batch_size=8, verbose=0)
    run(X, Y)  # traced while everything trains
    model.requires_grad_(False)
    weights, state = model.state_dict(), optimizer.state_dict()
    # the same text on every backend: the call of the step, or the epoch and step of fit (as NonFiniteLossError)
    where = "train_step call 2" if loop != "fit" else "fit at epoch 1, step 1"
    with pytest.raises(ud.errors.NothingToTrainError, match=f"^{where}: {FROZEN}"):
        run(X, Y)
    assert all(np.array_equal(weights[name], value) for name, value in model.state_dict().items())
    assert optimizer.state_dict()["step"] == state["step"]
    with pytest.raises(RuntimeError, match=f"^train_step call 1: {FROZEN}"):  # a fresh step too, eager
        ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=True)(X, Y)
    model.head.requires_grad_(True)
    run(X, Y)
    after = model.state_dict()
    assert np.array_equal(weights["body.weight"], after["body.weight"])
    assert not np.array_equal(weights["head.weight"], after["head.weight"])


def test_an_optimizer_whose_own_parameters_are_frozen_steps_as_torch_optim_and_fit_stops_at_a_callbacks_freeze(
        backend):
    """An Adam over the head alone, the head frozen while the body trains (a second optimizer): PyTorch's
    backward() runs and ``step()`` changes nothing, so the head's step runs and leaves the model as it was, on
    every backend, in ``train_step``, ``value_and_grad`` + ``apply`` and ``fit``; each such step counts in the
    optimizer's ``"step"`` (torch.optim's ``step()`` was called), none in a parameter's own count (torch.optim's
    ``state[p]["step"]``, checked against it). A callback that freezes the whole model during ``fit`` stops it with
    ``NothingToTrainError`` naming the epoch and step before the next batch (also in Keras's own fit loop), the
    weights as that batch left them."""
    reference = torch.nn.Linear(4, 2)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.1)
    model = Net()
    body = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.body.parameters(), lr=0.1))
    head_optimizer = ud.optim.Adam(model.head.parameters(), lr=0.1)
    head = ud.train_step(model, ud.nn.MSELoss(), head_optimizer)
    body(X, Y)
    head(X, Y)
    reference(torch.ones(1, 4)).sum().backward()
    reference_optimizer.step()
    model.head.requires_grad_(False)
    reference.requires_grad_(False)
    before = model.state_dict()
    head(X, Y)
    _, grads = ud.value_and_grad(lambda: ud.nn.MSELoss()(model(ud.tensor(X)), ud.tensor(Y)),
                                 model.head.parameters())()
    head_optimizer.apply(grads)
    ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=head_optimizer, epochs=1, batch_size=4, verbose=0)
    reference_optimizer.zero_grad()  # (PyTorch's loop: the frozen head's .grad stays None from here)
    for _ in range(4):
        reference_optimizer.step()
    assert all(np.array_equal(before[name], value) for name, value in model.state_dict().items())
    state = head_optimizer.state_dict()
    assert state["step"] == 1 + 4, state["step"]  # the trained step; frozen: train_step, apply, fit's 2 batches
    torch_counts = [int(reference_optimizer.state[p]["step"]) for p in reference.parameters()]
    assert state["param_steps"] == torch_counts == [1, 1], state["param_steps"]
    model.head.requires_grad_(True)
    seen = []

    def freeze_after_the_second(batch, logs):
        seen.append({k: v.copy() for k, v in model.state_dict().items()})
        if batch == 1:
            model.requires_grad_(False)

    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ud.errors.NothingToTrainError, match=f"^fit at epoch 1, step 3: {FROZEN}"):
        ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=2, batch_size=2, verbose=0,
               shuffle=False, callbacks=[ud.callbacks.LambdaCallback(on_batch_end=freeze_after_the_second)])
    assert len(seen) == 2 and not np.array_equal(seen[0]["head.weight"], seen[1]["head.weight"])
    assert all(np.array_equal(seen[1][name], value) for name, value in model.state_dict().items())


def test_fit_checks_that_something_trains_once_per_batch_in_its_own_words(backend, monkeypatch):
    """``fit`` checks before each batch that something is trainable (``require_trainable``) once, naming the epoch
    and step, in every loop (unidl's over ``TrainStep``, Keras's own): the step it drives does not check again
    with its "train_step call N" text, which a ``train_step`` of its own still checks at each call."""
    import importlib

    import unidl.nn.module

    fit_module = importlib.import_module("unidl.fit")  # (the attribute ud.fit is the function)
    checked = []

    def counted(parameters, where, *modules):
        checked.append(where() if callable(where) else where)
        return require_trainable(parameters, where, *modules)

    require_trainable = unidl.nn.module.require_trainable
    monkeypatch.setattr(unidl.nn.module, "require_trainable", counted)
    monkeypatch.setattr(fit_module, "require_trainable", counted)
    model = Net()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=2, batch_size=4, verbose=0)
    assert checked == [f"fit at epoch {epoch}, step {step}" for epoch in (1, 2) for step in (1, 2)], checked
    checked.clear()
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    step(X, Y)
    step(X, Y)
    assert checked == ["train_step call 1", "train_step call 2"], checked


#: per step of [finite, NaN, finite, finite] batches: torch.optim's count of steps, the non-finite guard's flag,
#: and with float16 GradScaler's scale and growth tracker (a NaN loss halves the scale and resets the tracker)
_FROZEN_BOOKKEEPING = {
    ("32", 1): [(1, True), (1, False), (2, True), (3, True)],
    ("32", 2): [(0, True), (0, False), (0, True), (1, True)],  # the window of the NaN is skipped at its close
    ("16-mixed", 1): [(1, True, 65536.0, 1), (1, False, 32768.0, 0), (2, True, 32768.0, 1), (3, True, 32768.0, 2)],
    ("16-mixed", 2): [(0, True, 65536.0, 0), (0, False, 32768.0, 0), (0, True, 32768.0, 0), (1, True, 32768.0, 1)],
}


def frozen_optimizer_bookkeeping() -> dict:
    """For each precision and ``accumulate`` of ``_FROZEN_BOOKKEEPING``, what an Adam over a frozen head reports
    after each ``train_step`` of a finite, a NaN, and two finite batches while the body trains: the guard, the
    window and the loss scaler run as for any step; and whether the head kept its weights and its parameters'
    own counts (torch.optim's ``state[p]["step"]``) stayed 0."""
    nan_x = X.copy()
    nan_x[0, 0] = np.nan
    outcome = {}
    for precision, accumulate in _FROZEN_BOOKKEEPING:
        model = Net()
        model.head.requires_grad_(False)
        head = model.state_dict()["head.weight"]
        optimizer = ud.optim.Adam(model.head.parameters(), lr=0.1)
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, accumulate=accumulate,
                             check_finite=False)
        reports = []
        for x in (X, nan_x, X, X):
            step(x, Y)
            state = optimizer.state_dict()
            scaler = [state["loss_scaler"][key] for key in ("scale", "growth_tracker") if "loss_scaler" in state]
            reports.append((state["step"], optimizer.last_step_finite, *scaler))
        untouched = np.array_equal(head, model.state_dict()["head.weight"]) and not any(state["param_steps"])
        outcome[precision, accumulate] = reports, untouched
    return outcome


def test_an_optimizer_whose_own_parameters_are_frozen_keeps_the_guard_the_window_and_the_loss_scaler(backend):
    """Its step is a step with no update: a NaN loss is caught by the non-finite guard and not counted, a window of
    ``accumulate`` micro-steps counts once at its close (skipped where one was NaN), float16's loss scale halves at
    the NaN and grows its tracker at each finite step, as torch.optim's step with GradScaler (the numbers: the torch
    backend's, on every backend)."""
    for key, (reports, untouched) in frozen_optimizer_bookkeeping().items():
        assert reports == _FROZEN_BOOKKEEPING[key] and untouched, (key, reports)


def test_a_callbacks_partial_freeze_mid_epoch_holds_from_the_next_batch(backend):
    """A callback that freezes the body after an epoch's second batch (transfer learning's "train all, then the
    head") trains as the torch loop freezing it there: the body keeps the weights the second batch left, the head
    trains on, and the epoch's loss is the mean over all its batches; also where Keras's compiled step holds the
    set it trains (Keras-on-TensorFlow's step graph, compiled once an epoch: its fit went on training the body).
    Weights and the loss to 1e-6, the body bit-identical."""
    model = Net()
    start = {name: np.array(value) for name, value in model.state_dict().items()}
    seen = []

    def freeze_the_body_after_the_second(batch, logs):
        seen.append(np.array(model.state_dict()["body.weight"]))
        if batch == 1:
            model.body.requires_grad_(False)

    history = ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
                     epochs=1, batch_size=2, verbose=0, shuffle=False,
                     callbacks=[ud.callbacks.LambdaCallback(on_batch_end=freeze_the_body_after_the_second)])
    trained = {name: np.array(value) for name, value in model.state_dict().items()}

    plain = torch.nn.ModuleDict({"body": torch.nn.Linear(3, 4), "head": torch.nn.Linear(4, 2)})
    plain.load_state_dict({name: torch.tensor(value) for name, value in start.items()})
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    losses = []
    for batch in range(4):
        optimizer.zero_grad()
        x, y = torch.tensor(X[2 * batch:2 * batch + 2]), torch.tensor(Y[2 * batch:2 * batch + 2])
        loss = torch.nn.functional.mse_loss(plain["head"](torch.relu(plain["body"](x))), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if batch == 1:
            plain["body"].requires_grad_(False)
    assert np.array_equal(trained["body.weight"], seen[1]) and not np.array_equal(seen[0], seen[1])
    for name, value in plain.state_dict().items():
        assert max_relative_difference(trained[name], value.numpy()) < 1e-6, name
    assert abs(history.history["loss"][0] - np.mean(losses)) < 1e-6 * abs(np.mean(losses))


def test_a_callbacks_mode_switch_mid_epoch_holds_from_the_next_batch(backend):
    """A callback that puts the model in eval mode after an epoch's second batch (BatchNorm then normalises with
    its running statistics and stops updating them) trains as the torch loop switching there, also where Keras's
    compiled step baked in the modes of the epoch's start (Keras-on-TensorFlow's step graph; Keras-on-JAX's
    jitted step, which ran on in train mode): the running statistics, their count and the weights to 1e-6."""
    ud.manual_seed(3)
    model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.BatchNorm1d(4), ud.nn.ReLU(), ud.nn.Linear(4, 2))
    start = {name: np.array(value) for name, value in model.state_dict().items()}

    def evaluate_after_the_second(batch, logs):
        if batch == 1:
            model.eval()

    ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1,
           batch_size=2, verbose=0, shuffle=False,
           callbacks=[ud.callbacks.LambdaCallback(on_batch_end=evaluate_after_the_second)])
    trained = {name: np.array(value) for name, value in model.state_dict().items()}

    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    plain.load_state_dict({name: torch.tensor(value) for name, value in start.items()})
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    for batch in range(4):
        optimizer.zero_grad()
        x, y = torch.tensor(X[2 * batch:2 * batch + 2]), torch.tensor(Y[2 * batch:2 * batch + 2])
        torch.nn.functional.mse_loss(plain(x), y).backward()
        optimizer.step()
        if batch == 1:
            plain.eval()
    assert int(trained["1.num_batches_tracked"]) == 2
    for name, value in plain.state_dict().items():
        assert max_relative_difference(trained[name], value.numpy()) < 1e-6, name


def test_an_optimizer_over_a_layer_the_forward_does_not_use_counts_its_steps_and_sees_a_nan_loss(backend):
    """An optimizer over a layer the forward never calls (trainable: Keras-on-JAX's trainer hands it zeros, not
    None) steps as ``torch.optim`` does, and its non-finite guard still sees a NaN loss: the NaN step is not
    counted and ``last_step_finite`` says so (Keras-on-JAX counted it as a good step)."""
    model = Net()
    model.spare = ud.nn.Linear(2, 2)  # a sub-module that Net's forward never calls
    optimizer = ud.optim.Adam(model.spare.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, check_finite=False)
    poisoned = X.copy()
    poisoned[0, 0] = np.nan
    seen = []
    for x in (X, poisoned, X):
        step(x, Y)
        seen.append((optimizer.state_dict()["step"], optimizer.last_step_finite))
    assert seen == [(1, True), (1, False), (2, True)]


def test_requires_grad_reads_as_torchs_before_any_freeze(backend):
    """``p.requires_grad`` is True for every parameter and False for buffers from the start, as torch's: the
    fine-tuning idiom ``Adam(p for p in model.parameters() if p.requires_grad)`` raised an AttributeError on
    tensorflow and keras until a parameter had been frozen."""
    import torch

    model = ud.nn.Sequential(ud.nn.Linear(3, 2), ud.nn.BatchNorm1d(2))
    reference = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in reference.parameters()]
    assert [b.requires_grad for _, b in model.named_buffers()] == [b.requires_grad for b in reference.buffers()]
    model[0].requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(trained) == 2 and all(p is q for p, q in zip(trained, model[1].parameters()))
    ud.optim.Adam(trained, lr=0.1)


def test_a_ud_function_follows_a_freeze_of_a_bare_parameter_made_after_its_first_call(backend):
    """A parameter outside every module (a bare ``ud.nn.Parameter`` handed to ``value_and_grad`` and an optimizer)
    frozen after a ``ud.function``'s first call stays as it is from then on, and trains again once unfrozen, as in
    torch's eager loop: the function is keyed on the ``requires_grad`` of every parameter whose trainability its
    trace read (tensorflow, keras and jax ran the graph of the first call, which went on moving it); a call with
    nothing changed traces nothing."""
    scale = ud.nn.Parameter(np.ones((3, 2), np.float32))
    shift = ud.nn.Parameter(np.zeros((2,), np.float32))
    optimizer = ud.optim.SGD([scale, shift], lr=0.1)

    def train(x, y):
        loss, grads = ud.value_and_grad(lambda: ud.ops.mean((ud.ops.matmul(x, scale) + shift - y) ** 2),
                                        [scale, shift])()
        optimizer.apply(grads)
        return loss

    step = ud.function(train)
    x, y = ud.tensor(X), ud.tensor(Y)
    step(x, y)
    step(x, y)
    counts = [step.trace_count]
    scale.requires_grad = False
    before = ud.to_numpy(scale).copy()
    shift_before = ud.to_numpy(shift).copy()
    step(x, y)
    step(x, y)
    counts.append(step.trace_count)
    assert np.array_equal(before, ud.to_numpy(scale))
    assert not np.array_equal(shift_before, ud.to_numpy(shift))
    scale.requires_grad = True
    step(x, y)
    counts.append(step.trace_count)
    assert not np.array_equal(before, ud.to_numpy(scale))
    assert counts == [None] * 3 or counts == [counts[0], counts[0] + 1, counts[0] + 1], counts


def test_a_bare_parameter_frozen_is_followed_by_a_function_calling_another_that_traced_it(backend):
    """An outer ``ud.function`` that calls an inner one (already traced over a bare parameter's ``value_and_grad``)
    is keyed on that parameter's flag too: frozen after both ran, it stays as it is through either (the inner call
    inside the outer's trace does not run its Python again, so the outer graph baked in the trained parameter and
    moved it on tensorflow and keras)."""
    w = ud.nn.Parameter(np.ones(3, np.float32))
    optimizer = ud.optim.SGD([w], lr=0.1)
    x = ud.tensor(np.ones(3, np.float32))

    @ud.function
    def inner(x):
        loss, grads = ud.value_and_grad(lambda: ud.ops.sum(w * x), [w])()
        optimizer.apply(grads)
        return loss

    @ud.function
    def outer(x):
        return inner(x) * 1.0

    inner(x)
    outer(x)
    trained = ud.to_numpy(w).copy()
    assert not np.allclose(trained, 1.0)
    w.requires_grad_(False)
    inner(x)
    outer(x)
    np.testing.assert_array_equal(ud.to_numpy(w), trained)
    w.requires_grad_(True)
    outer(x)
    assert not np.array_equal(ud.to_numpy(w), trained)


@pytest.mark.parametrize("how", ["module", "attribute"])
def test_a_ud_function_follows_a_freeze_and_an_unfreeze_made_after_its_first_call(backend, how):
    """A ``ud.function`` step (``value_and_grad`` over the model's parameters, then ``optimizer.apply``) honours a
    freeze made after its first call, and an unfreeze after that, as torch's eager step does: a graph bakes in which
    parameters are frozen, so it is keyed on their set, as compiled train steps are (tensorflow, keras and jax went on
    training the frozen layer with the graph of their first call, and kept an unfrozen one still). Frozen weights
    and their Adam state bit-identical; a new set traces once, a set seen before and calls with nothing changed
    trace nothing (where the backend traces: ``trace_count`` None on torch); a function first called with the layer
    frozen trains it once unfrozen."""
    model = Net()
    optimizer = ud.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = ud.nn.MSELoss()

    def train(x, y):
        loss, grads = ud.value_and_grad(lambda: loss_fn(model(x), y), model.parameters())()
        optimizer.apply(grads)
        return loss

    step = ud.function(train)

    def freeze(flag):
        if how == "module":
            model.body.requires_grad_(flag)
        else:
            for p in model.body.parameters():
                p.requires_grad = flag

    x, y = ud.tensor(X), ud.tensor(Y)
    step(x, y)
    step(x, y)  # (the Adam slots exist from the first call: the same graph)
    counts = [step.trace_count]
    freeze(False)
    weights, slots = model.state_dict(), optimizer.state_dict()
    step(x, y)
    step(x, y)
    counts.append(step.trace_count)
    after, slots_after = model.state_dict(), optimizer.state_dict()
    for name in ("body.weight", "body.bias"):
        assert np.array_equal(weights[name], after[name]), name
    for index in (0, 1):
        assert slots_after["param_steps"][index] == slots["param_steps"][index] == 2
        for slot in slots["slots"][index]:
            assert np.array_equal(slots["slots"][index][slot], slots_after["slots"][index][slot]), (index, slot)
    assert not np.array_equal(weights["head.weight"], after["head.weight"])
    freeze(True)  # unfrozen: the body trains again, with the graph of the first calls
    step(x, y)
    counts.append(step.trace_count)
    assert not np.array_equal(after["body.weight"], model.state_dict()["body.weight"])
    assert optimizer.state_dict()["param_steps"] == [3, 3, 5, 5]
    freeze(False)  # frozen again: the graph of the frozen set, traced before
    frozen = model.state_dict()["body.weight"]
    step(x, y)
    counts.append(step.trace_count)
    assert np.array_equal(frozen, model.state_dict()["body.weight"])
    assert counts == [None] * 4 or counts == [counts[0], counts[0] + 1, counts[0] + 1, counts[0] + 1], counts
    first_frozen = ud.function(train)  # first called while the body is frozen, then unfrozen: the body trains
    first_frozen(x, y)
    freeze(True)
    first_frozen(x, y)
    assert not np.array_equal(frozen, model.state_dict()["body.weight"])


def _every_optimizer(params):
    """One of each optimizer class ``ud.optim`` has (SGD also with Nesterov momentum; RMSprop centred, with
    momentum: every slot it can have), each over ``params()``, at a rate that moves the weights in one step."""
    return [ud.optim.SGD(params(), lr=0.1), ud.optim.SGD(params(), lr=0.1, momentum=0.9, nesterov=True),
            ud.optim.Adam(params(), lr=0.05), ud.optim.AdamW(params(), lr=0.05), ud.optim.NAdam(params(), lr=0.05),
            ud.optim.RAdam(params(), lr=0.05), ud.optim.Adamax(params(), lr=0.05),
            ud.optim.RMSprop(params(), lr=0.05, momentum=0.9, centered=True), ud.optim.Adagrad(params(), lr=0.1),
            ud.optim.Adadelta(params(), lr=1.0), ud.optim.Rprop(params(), lr=0.05)]


@pytest.mark.parametrize("eager", [False, True])
def test_every_optimizer_leaves_a_layer_frozen_between_steps_and_its_state_bit_identical(backend, eager):
    """Each optimizer class of ``ud.optim`` (every class ``ud.optim.__all__`` names), through ``train_step``
    compiled and with ``eager=True``: a layer frozen after a first step keeps its weights and its optimizer
    state (slots, the parameter's own step count) bit for bit at the next step while the other layer trains."""
    models = []

    def params():
        models.append(Net())
        return models[-1].parameters()

    optimizers = _every_optimizer(params)
    classes = {getattr(ud.optim, name) for name in ud.optim.__all__ if name not in ("Optimizer", "lr_scheduler")}
    assert {type(optimizer) for optimizer in optimizers} == classes
    for model, optimizer in zip(models, optimizers):
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, eager=eager)
        step(X, Y)
        model.body.requires_grad_(False)
        weights, state = model.state_dict(), optimizer.state_dict()
        step(X, Y)
        after, state_after = model.state_dict(), optimizer.state_dict()
        name = type(optimizer).__name__
        for key in ("body.weight", "body.bias"):
            assert np.array_equal(weights[key], after[key]), (name, key)
        assert not np.array_equal(weights["head.weight"], after["head.weight"]), name
        for index in (0, 1):
            for slot, value in state["slots"][index].items():
                assert np.array_equal(value, state_after["slots"][index][slot]), (name, index, slot)
        if "param_steps" in state:
            assert state_after["param_steps"] == [1, 1, 2, 2], (name, state_after["param_steps"])
        assert state_after["step"] == 2, name
