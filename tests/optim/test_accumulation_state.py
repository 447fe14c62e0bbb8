"""Gradient accumulation's window (``train_step(accumulate=N)``) as optimizer state: a checkpoint taken in the
middle of a window resumes to the weights of the uninterrupted run (bit-identical on one backend, 1e-6 from
torch's checkpoint on every other), a part-full window refuses another ``accumulate``, and a non-finite
micro-step skips its whole window at the window's update, the same on every backend."""

import numpy as np
import pytest

import unidl as ud
from unidl.errors import CheckpointStateError
from unidl.testing import max_relative_difference

ACCUMULATE, BEFORE, AFTER = 3, 4, 5  # the checkpoint 1 micro-step into the second window; 3 updates in all


def _batches():
    rng = np.random.default_rng(3)
    return [(rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32))
            for _ in range(BEFORE + AFTER)]


def _training(accumulate=ACCUMULATE, loss=None):
    ud.manual_seed(1)
    model = ud.models.TwoLayerNet(5, 6, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # a step that grows with the gradient
    if accumulate is None:  # no train step yet
        return model, optimizer, None
    return model, optimizer, ud.train_step(model, loss or ud.nn.MSELoss(), optimizer, accumulate=accumulate)


def _weights(model):
    return {name: np.array(ud.to_numpy(value)) for name, value in model.state_dict().items()}


def _uninterrupted():
    model, _, step = _training()
    for x, y in _batches():
        step(x, y)
    return _weights(model)


def _checkpoint_mid_window(directory):
    model, optimizer, step = _training()
    for x, y in _batches()[:BEFORE]:
        step(x, y)
    state = optimizer.state_dict()
    assert state["accumulation"]["micro_steps"] == BEFORE % ACCUMULATE and state["step"] == BEFORE // ACCUMULATE
    return ud.save_checkpoint(directory, model, optimizer)


def _resume(path, step_first):
    """A fresh model and optimizer loading ``path``, with the train step built before or after the load."""
    model, optimizer, step = _training(accumulate=ACCUMULATE if step_first else None)
    ud.load_checkpoint(path, model, optimizer)
    if not step_first:
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=ACCUMULATE)
    for x, y in _batches()[BEFORE:]:
        step(x, y)
    assert optimizer.state_dict()["step"] == (BEFORE + AFTER) // ACCUMULATE
    return _weights(model)


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    """torch's uninterrupted weights, and its checkpoint taken mid-window."""
    if "torch" not in ud.available_backends():
        pytest.skip("the torch backend is not installed")
    with ud.use_backend("torch"):
        return _uninterrupted(), _checkpoint_mid_window(tmp_path_factory.mktemp("torch_window"))


def test_a_resume_mid_window_trains_the_weights_of_the_uninterrupted_run(backend, tmp_path, torch_run):
    expected = _uninterrupted()
    path = _checkpoint_mid_window(tmp_path)
    got = _resume(path, step_first=False)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # torch's checkpoint, loaded into a step built first, goes on to torch's uninterrupted weights
    reference, torch_path = torch_run
    got = _resume(torch_path, step_first=True)
    for name, value in reference.items():
        assert max_relative_difference(got[name], value) <= 1e-6, name


def test_without_its_window_a_resume_differs_by_far_more_than_the_bound(torch_run):
    """What the window is for: the same checkpoint loaded without it (as checkpoints were before) trains other
    weights (torch; the window's state is the same on every backend)."""
    reference, torch_path = torch_run
    with ud.use_backend("torch"):
        model, optimizer, step = _training()
        ud.load_checkpoint(torch_path, model, optimizer)
        optimizer.load_state_dict({k: v for k, v in optimizer.state_dict().items() if k != "accumulation"})
        for x, y in _batches()[BEFORE:]:
            step(x, y)
        assert max(max_relative_difference(v, reference[k]) for k, v in _weights(model).items()) > 1e-3


def test_a_part_full_window_refuses_another_accumulate(backend, tmp_path):
    path = _checkpoint_mid_window(tmp_path)
    model, optimizer, _ = _training(accumulate=2)
    before = _weights(model)
    with pytest.raises(CheckpointStateError, match=r"accumulate=3.*accumulate=2"):
        ud.load_checkpoint(path, model, optimizer)  # a step with accumulate=2 is built: refused before any change
    assert all(np.array_equal(v, before[k]) for k, v in _weights(model).items())
    model, optimizer, _ = _training(accumulate=None)
    ud.load_checkpoint(path, model, optimizer)  # no step yet: the window waits for one
    for accumulate in (1, 2):
        with pytest.raises(CheckpointStateError, match=rf"accumulate=3.*accumulate={accumulate}"):
            ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=accumulate)
    ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=3)
    # a state taken at an update holds no window and loads under any accumulate
    model, optimizer, step = _training()
    for x, y in _batches()[:ACCUMULATE]:
        step(x, y)
    assert "accumulation" not in optimizer.state_dict()
    other = _training(accumulate=2)[1]
    other.load_state_dict(optimizer.state_dict())


@pytest.mark.parametrize("called", [False, True])
def test_a_part_full_window_loads_for_its_step_beside_a_step_of_another_accumulate(backend, torch_run, called):
    """Two steps train one optimizer, accumulate=3 (the checkpoint's) and accumulate=2, built last, so that its
    empty window is the registered one (``called``: both have run a whole window, so each created its window;
    else neither ran). torch's checkpoint taken one micro-step into an accumulate=3 window loads (it was refused
    for the other step's window), the accumulate=2 step refuses to run over it, and the accumulate=3 step goes on
    to torch's uninterrupted weights. An optimizer with no accumulate=3 step still refuses it at once."""
    reference, torch_path = torch_run
    model, optimizer, step = _training()
    other = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2)
    if called:
        for x, y in _batches()[:ACCUMULATE]:
            step(x, y)
        for x, y in _batches()[:2]:
            other(x, y)
    ud.load_checkpoint(torch_path, model, optimizer)
    assert optimizer.state_dict()["accumulation"]["micro_steps"] == BEFORE % ACCUMULATE
    loaded = _weights(model)
    with pytest.raises(CheckpointStateError, match=r"accumulate=3.*accumulate=2"):
        other(*_batches()[BEFORE])
    assert all(np.array_equal(v, loaded[k]) for k, v in _weights(model).items())
    for x, y in _batches()[BEFORE:]:
        step(x, y)
    assert optimizer.state_dict()["step"] == (BEFORE + AFTER) // ACCUMULATE
    for name, value in reference.items():
        assert max_relative_difference(_weights(model)[name], value) <= 1e-6, name
    model, optimizer, _ = _training(accumulate=2)
    with pytest.raises(CheckpointStateError, match=r"accumulate=3.*accumulate=2"):
        ud.load_checkpoint(torch_path, model, optimizer)


def _poisoned(x, y):
    """The batch with one NaN target: its loss and gradients are NaN (data, so that a compiled step sees it)."""
    y = y.copy()
    y[0, 0] = np.nan
    return x, y


def test_a_non_finite_micro_step_skips_its_window_at_the_update(backend):
    """float32's rule, as mixed precision's and torch DDP's: the window's N-th call skips the update (weights,
    slots, step count unchanged) and empties the window; the micro-steps before it are not flagged."""
    batches = _batches()[:2 * ACCUMULATE]
    model, optimizer, _ = _training(accumulate=None)
    start = _weights(model)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=ACCUMULATE, check_finite=False)
    flags = []
    for index, batch in enumerate(batches):
        step(*(_poisoned(*batch) if index == 1 else batch))
        flags.append(optimizer.last_step_finite)
        if index == ACCUMULATE - 1:
            assert all(np.array_equal(v, start[k]) for k, v in _weights(model).items())
    assert flags == [True, True, False, True, True, True] and optimizer.state_dict()["step"] == 1
    clean, _, clean_step = _training()  # the second window alone, from the same start
    for x, y in batches[ACCUMULATE:]:
        clean_step(x, y)
    for name, value in _weights(clean).items():
        np.testing.assert_array_equal(_weights(model)[name], value, err_msg=name)
    # check_finite=True: the error comes at the window's update, not at the poisoned micro-step
    model, optimizer, step = _training()
    step(*_poisoned(*batches[0]))
    step(*batches[1])
    with pytest.raises(ud.NonFiniteLossError):
        step(*batches[2])


def test_fit_raises_a_non_finite_micro_step_at_its_windows_update_as_train_step(backend):
    """``fit(accumulate=N)`` follows ``train_step``'s rule: a NaN batch at a window's first micro-step raises at
    the window's update (step 3 here), with the window emptied, so another ``fit`` of the optimizer runs (it raised
    at the micro-step itself, leaving a half-full poisoned window that the next ``fit`` refused; in a data-parallel
    job the other ranks waited in the next all-reduce)."""
    batches = _batches()[:ACCUMULATE]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    x[1] = np.nan  # (in the first batch of 4)
    model, optimizer, _ = _training(accumulate=None)
    start = _weights(model)
    with pytest.raises(ud.NonFiniteLossError, match=f"at epoch 1, step {ACCUMULATE};"):
        ud.fit(model, x, y, batch_size=4, epochs=1, shuffle=False, loss="mse", optimizer=optimizer,
               accumulate=ACCUMULATE, verbose=0)
    assert optimizer.state_dict().get("accumulation") is None and optimizer.state_dict()["step"] == 0
    assert all(np.array_equal(v, start[k]) for k, v in _weights(model).items())
    ud.fit(model, *_batches()[0], batch_size=4, epochs=1, loss="mse", optimizer=optimizer, verbose=0)
    assert optimizer.state_dict()["step"] == 1


def test_fit_resumes_a_window_from_its_checkpoint_callback(backend, tmp_path):
    """``fit(accumulate=3)`` with a ``Checkpoint`` every 4 batches (1 micro-step into the second window; Keras's
    own trainer on keras): resumed from it, the weights of the uninterrupted fit; with accumulate=2, refused before
    any change, also where the optimizer has an accumulate=3 step besides (whose window it would have been)."""
    x, y = (np.concatenate(parts) for parts in zip(*_batches()[:7]))

    def fit(directory, resume_from=None, accumulate=ACCUMULATE):
        model, optimizer, _ = _training(accumulate=None)
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=4, verbose=0, seed=0,
               callbacks=[ud.callbacks.Checkpoint(directory, every_steps=4)], accumulate=accumulate,
               resume_from=resume_from)
        return _weights(model)

    expected = fit(tmp_path / "whole")
    first = ud.checkpoint.list_checkpoints(tmp_path / "whole")[0]
    assert first.endswith("checkpoint-0000-0000004.safetensors")
    got = fit(tmp_path / "resumed", resume_from=first)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    with pytest.raises(CheckpointStateError, match=r"accumulate=3.*accumulate=2"):
        fit(tmp_path / "other", resume_from=first, accumulate=2)
    model, optimizer, _ = _training()  # an accumulate=3 step of the optimizer besides
    before = _weights(model)
    with pytest.raises(CheckpointStateError, match=r"accumulate=3.*accumulate=2"):
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=4, verbose=0, seed=0,
               accumulate=2, resume_from=first)
    assert all(np.array_equal(v, before[k]) for k, v in _weights(model).items()) and optimizer.state_dict()["step"] == 0


class _TargetTermMSE(ud.nn.Module):
    """MSE against all target columns but the last, plus the last column's mean: a term without a gradient, so
    that an infinite last column makes the loss infinite while every gradient stays finite."""

    def forward(self, outputs, target):
        return ud.ops.mse_loss(outputs, target[:, :-1]) + ud.ops.mean(target[:, -1:])


def _with_an_infinite_loss_term(x, y):
    """The batch for ``_TargetTermMSE`` with its loss infinite and its gradients finite."""
    return x, np.concatenate([y, np.full((len(y), 1), np.inf, np.float32)], axis=1)


def _with_a_finite_loss_term(x, y):
    return x, np.concatenate([y, np.zeros((len(y), 1), np.float32)], axis=1)


@pytest.mark.parametrize("precision, poison", [("32", "target"), ("16-mixed", "target"), ("16-mixed", "loss term")])
def test_a_window_with_a_non_finite_micro_step_resumes_to_its_skipped_update(backend, precision, poison):
    """The window's finite flag is state too, wherever the backend keeps it (float32: the optimizer's flag;
    float16: the window's losses, ``.grad``'s micro-steps, or on keras the loss scaler's flag): a state taken after
    a poisoned first micro-step (a NaN target: loss and gradients NaN; or a loss infinite by a term without a
    gradient, its gradients finite) reads back from a fresh optimizer as it was saved, and its window's update is
    skipped as the uninterrupted run's is (weights, step count and loss scale of that run: float16's halved once)."""
    batches = _batches()[:ACCUMULATE]
    loss, poisoned, clean = ((ud.nn.MSELoss(), _poisoned, lambda x, y: (x, y)) if poison == "target" else
                             (_TargetTermMSE(), _with_an_infinite_loss_term, _with_a_finite_loss_term))

    def training():
        model, optimizer, _ = _training(accumulate=None)
        return model, optimizer, ud.train_step(model, loss, optimizer, accumulate=ACCUMULATE, precision=precision,
                                               check_finite=False)

    model, optimizer, step = training()
    start = _weights(model)
    step(*poisoned(*batches[0]))
    saved = optimizer.state_dict()
    assert saved["accumulation"]["finite"] is False and saved["accumulation"]["micro_steps"] == 1
    for batch in batches[1:]:
        step(*clean(*batch))
    assert not optimizer.last_step_finite and optimizer.state_dict()["step"] == 0
    model, optimizer, resumed = training()
    optimizer.load_state_dict(saved)
    window = optimizer.state_dict()["accumulation"]
    assert window["finite"] is False and window["micro_steps"] == 1
    for got, expected in zip(window["gradients"], saved["accumulation"]["gradients"]):
        np.testing.assert_array_equal(got, expected)
    for batch in batches[1:]:
        resumed(*clean(*batch))
    assert not optimizer.last_step_finite and optimizer.state_dict()["step"] == 0
    assert resumed.loss_scale == step.loss_scale == (1.0 if precision == "32" else 2.0 ** 15)
    for name, value in start.items():
        np.testing.assert_array_equal(_weights(model)[name], value, err_msg=name)


def test_fit_raises_a_non_finite_micro_step_of_its_last_open_window_at_its_end(backend):
    """A NaN in the run's last window, which ``fit`` ends before its update: the window is emptied and ``fit``
    raises (it returned normally with a NaN History, and the next ``fit`` raised at its own first step)."""
    x, y = np.ones((6, 5), np.float32), np.zeros((6, 3), np.float32)
    x[4:] = np.nan  # (the third batch of 2: the first micro-step of a window of 2 the run does not finish)
    model, optimizer, _ = _training(accumulate=None)
    with pytest.raises(ud.NonFiniteLossError, match="in the run's last accumulation window .1 of 2 micro-steps"):
        ud.fit(model, x, y, batch_size=2, epochs=1, shuffle=False, loss="mse", optimizer=optimizer, accumulate=2,
               verbose=0)
    assert optimizer.state_dict().get("accumulation") is None and optimizer.state_dict()["step"] == 1
    history = ud.fit(model, x[:4], y[:4], batch_size=2, epochs=1, loss="mse", optimizer=optimizer, accumulate=2,
                     verbose=0)
    assert np.isfinite(history.history["loss"]).all() and optimizer.state_dict()["step"] == 2
