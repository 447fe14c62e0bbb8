"""Gradient clipping (every optimizer's ``clip_grad_norm`` / ``clip_grad_value`` / ``clip_per_tensor``) and gradient
accumulation (``train_step(accumulate=N)``, ``fit(accumulate=N)``): each backend against plain PyTorch
(``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` and a hand-accumulated loop), to 1e-6."""

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference

R = np.random.default_rng(5)
SHAPES = [(6, 5), (5,), (3, 6)]
START = [R.standard_normal(s).astype(np.float32) for s in SHAPES]
GRADS = [[(R.standard_normal(s) * scale).astype(np.float32) for s in SHAPES] for scale in (0.05, 3.0, 40.0)]


class _Params(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (self.parameter(value) for value in START)


def _keras_clipnorm_(params, max_norm):
    """Keras's ``clipnorm``: each gradient on its own, ``g * c / max(|g|, c)``."""
    for p in params:
        p.grad.mul_(max_norm / torch.clamp(torch.linalg.vector_norm(p.grad), min=max_norm))


CASES = {  # unidl optimizer options -> what plain PyTorch does to .grad before step()
    "global-norm": (dict(clip_grad_norm=1.0), lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0)),
    "value": (dict(clip_grad_value=0.5), lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.5)),
    "per-tensor-norm": (dict(clip_grad_norm=1.0, clip_per_tensor=True), lambda ps: _keras_clipnorm_(ps, 1.0)),
    "value-then-norm": (dict(clip_grad_value=2.0, clip_grad_norm=3.0),
                        lambda ps: (torch.nn.utils.clip_grad_value_(ps, 2.0), torch.nn.utils.clip_grad_norm_(ps, 3.0))),
}
OPTIMIZERS = {"SGD": (ud.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
              "Adam": (ud.optim.Adam, torch.optim.Adam, dict(lr=0.01))}


def _plain_torch(case, optimizer):
    _, clip = CASES[case]
    _, torch_class, kwargs = OPTIMIZERS[optimizer]
    params = [torch.tensor(value, requires_grad=True) for value in START]
    opt = torch_class(params, **kwargs)
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        clip(params)
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("case,optimizer", [(c, "SGD") for c in CASES] + [("global-norm", "Adam")])
def test_clipping_matches_torch_nn_utils(backend, case, optimizer):
    options, _ = CASES[case]
    unidl_class, _, kwargs = OPTIMIZERS[optimizer]
    holder = _Params()
    opt = unidl_class(holder.parameters(), **kwargs, **options)
    for grads in GRADS:
        opt.apply([ud.tensor(g) for g in grads])
    expected = _plain_torch(case, optimizer)
    assert not np.allclose(expected[0], _plain_torch_unclipped(optimizer)[0])  # the clipping mattered
    for name, value in zip("abc", expected):
        assert max_relative_difference(holder.state_dict()[name], value) < 1e-6, name


@pytest.mark.parametrize("options", [dict(clip_grad_norm=float("inf"), clip_per_tensor=True),
                                     dict(clip_grad_norm=float("inf")), dict(clip_grad_value=float("inf"))])
def test_an_infinite_bound_clips_nothing_as_torch_nn_utils(backend, options):
    """``clip_grad_norm=inf`` (PyTorch's "measure, do not clip") and ``clip_grad_value=inf`` leave the gradients
    alone: the per-tensor rule made every weight NaN (g * inf / inf), after the non-finite guard had run."""
    holder = _Params()
    opt = ud.optim.SGD(holder.parameters(), lr=0.1, momentum=0.9, **options)
    for grads in GRADS:
        opt.apply([ud.tensor(g) for g in grads])
    assert opt.last_step_finite
    for name, value in zip("abc", _plain_torch_unclipped("SGD")):
        assert max_relative_difference(holder.state_dict()[name], value) < 1e-6, name


def _plain_torch_unclipped(optimizer):
    _, torch_class, kwargs = OPTIMIZERS[optimizer]
    params = [torch.tensor(value, requires_grad=True) for value in START]
    opt = torch_class(params, **kwargs)
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


FLOAT64_CASES = {  # unidl optimizer and options -> torch.optim's, and what plain PyTorch does to .grad
    "value": (ud.optim.SGD, dict(lr=0.1, clip_grad_value=0.05), torch.optim.SGD, dict(lr=0.1),
              lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.05)),
    "per-tensor-norm": (ud.optim.SGD, dict(lr=0.1, clip_grad_norm=10.3, clip_per_tensor=True), torch.optim.SGD,
                        dict(lr=0.1), lambda ps: _keras_clipnorm_(ps, 10.3)),
    "adagrad-initial": (ud.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1), torch.optim.Adagrad,
                        dict(lr=0.1, initial_accumulator_value=0.1), lambda ps: None),
}


@pytest.mark.parametrize("case", FLOAT64_CASES)
def test_float64_clipping_and_slot_values_keep_their_digits(backend, case):
    """A clipping bound or a slot's initial value given as a Python float is a float64 constant in a float64 step,
    to 1e-12 of ``torch.optim`` (TensorFlow's and Keras-on-TensorFlow's casts made 0.05 and Adagrad's 0.1 float32
    numbers first: 3e-10 to 5e-9 off, on those two backends alone)."""
    unidl_class, options, torch_class, torch_options, clip = FLOAT64_CASES[case]
    start = [value.astype(np.float64) for value in START]
    params = [torch.tensor(value, requires_grad=True) for value in start]
    opt = torch_class(params, **torch_options)
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g.astype(np.float64))
        clip(params)
        opt.step()
    with ud.use_dtype("float64"):
        holder = _Params()
        holder.load_state_dict(dict(zip("abc", start)))
        step = ud.function(unidl_class(holder.parameters(), **options).apply)
        for grads in GRADS:
            step([ud.tensor(g.astype(np.float64)) for g in grads])
    for name, value in zip("abc", params):
        assert max_relative_difference(holder.state_dict()[name], value.detach().numpy()) < 1e-12, name


def test_bad_clipping_options_are_clear_errors(backend):
    params = _Params().parameters()
    for bad in (dict(clip_grad_norm=-1.0), dict(clip_grad_norm=0), dict(clip_grad_value=float("nan")),
                dict(clip_grad_value="1"), dict(clip_per_tensor=True), dict(clip_grad_norm=1.0, clip_per_tensor=1)):
        with pytest.raises(ValueError, match="clip_"):
            ud.optim.SGD(params, lr=0.1, **bad)


# ---- clipping and accumulation inside train_step and fit, against a plain PyTorch loop ----------------------

X = R.standard_normal((12, 4)).astype(np.float32)
Y = (R.standard_normal((12, 3)) * 4).astype(np.float32)


def _torch_net(model):
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    state = model.state_dict()
    net.load_state_dict({k.replace("linear1", "0").replace("linear2", "2"): torch.tensor(np.array(v))
                         for k, v in state.items()})
    return net


def _plain_torch_loop(net, batches, accumulate, clip_norm, lr=0.1):
    """The hand-written PyTorch loop: (loss / N).backward() over N micro-batches, clip, step, zero."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for index, (x, y) in enumerate(batches, start=1):
        (torch.nn.functional.mse_loss(net(torch.tensor(x)), torch.tensor(y)) / accumulate).backward()
        if index % accumulate == 0:
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
            opt.step()
            opt.zero_grad()
    return {k.replace("0.", "linear1.").replace("2.", "linear2."): v.detach().numpy()
            for k, v in net.state_dict().items()}


@pytest.mark.parametrize("accumulate,clip_norm", [(3, None), (2, 0.3)])
def test_train_step_accumulates_and_clips_as_a_plain_torch_loop(backend, accumulate, clip_norm):
    model = ud.models.TwoLayerNet(4, 5, 3)
    expected = _plain_torch_loop(_torch_net(model), [(X[i:i + 2], Y[i:i + 2]) for i in range(0, 12, 2)],
                                 accumulate, clip_norm)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, clip_grad_norm=clip_norm)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=accumulate)
    for i in range(0, 12, 2):
        step(X[i:i + 2], Y[i:i + 2])
    assert optimizer.state_dict()["step"] == 6 // accumulate  # updates, not micro-steps
    for name, value in model.state_dict().items():
        assert max_relative_difference(value, expected[name]) < 1e-6, name


def test_fit_accumulates_as_a_plain_torch_loop(backend):
    model = ud.models.TwoLayerNet(4, 5, 3)
    expected = _plain_torch_loop(_torch_net(model), [(X[i:i + 3], Y[i:i + 3]) for i in range(0, 12, 3)], 2, None)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=3, shuffle=False, verbose=0,
           accumulate=2)
    assert optimizer.state_dict()["step"] == 2
    for name, value in model.state_dict().items():
        assert max_relative_difference(value, expected[name]) < 1e-6, name


def _weights(model):
    return {name: np.array(ud.to_numpy(value)) for name, value in model.state_dict().items()}


def test_steps_of_one_optimizer_share_its_accumulation_window(backend):
    """The window is the optimizer's, as torch's ``.grad`` is: two ``accumulate=2`` train steps built for one
    optimizer (called with other batch sizes) and ``fit`` add their micro-steps to one window, and its second
    micro-step, from whichever of them, updates: the weights of a hand-accumulated torch loop over the same
    batches. ``state_dict`` holds that one window, whichever step ran last."""
    model = ud.models.TwoLayerNet(4, 5, 3)
    batches = [(X[0:2], Y[0:2]), (X[2:5], Y[2:5]), (X[5:8], Y[5:8]), (X[8:12], Y[8:12])]
    expected = _plain_torch_loop(_torch_net(model), batches, 2, None)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    small = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2)
    large = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2)  # built last
    small(*batches[0])
    assert optimizer.state_dict()["accumulation"]["micro_steps"] == 1
    # fit's first batch closes the window small opened (the first update), its second opens the next one
    ud.fit(model, (X[2:8], Y[2:8]), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=3, shuffle=False,
           verbose=0, accumulate=2)
    state = optimizer.state_dict()
    assert state["step"] == 1 and state["accumulation"]["micro_steps"] == 1
    large(*batches[3])  # closes fit's window: the second update
    assert optimizer.state_dict()["step"] == 2 and "accumulation" not in optimizer.state_dict()
    for name, value in _weights(model).items():
        assert max_relative_difference(value, expected[name]) < 1e-6, name


def test_another_accumulate_beside_a_window_in_progress_is_a_clear_error(backend):
    """A step of another ``accumulate`` (1 too: it would update from a part of the window) or another precision
    while the optimizer's window is part-full: ``AccumulationMismatchError`` naming both, before anything changes,
    at build and at call (a step built while the window was empty); once the window has closed, it trains."""
    model = ud.models.TwoLayerNet(4, 5, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plain = ud.train_step(model, ud.nn.MSELoss(), optimizer)  # built while no window is in progress
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2)
    step(X[:3], Y[:3])
    before, window = _weights(model), optimizer.state_dict()["accumulation"]
    mismatch = ud.errors.AccumulationMismatchError
    with pytest.raises(mismatch, match=r"accumulate=2 \(precision='32'\) with 1 of its 2 .*accumulate=3"):
        ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=3)
    with pytest.raises(mismatch, match=r"accumulate=2 \(precision='32'\).*accumulate=2 \(precision='bf16-mixed'\)"):
        ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2, precision="bf16-mixed")
    with pytest.raises(mismatch, match=r"accumulate=2 .*accumulate=1\b"):
        ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=3, verbose=0)
    with pytest.raises(mismatch, match=r"accumulate=2 .*accumulate=1\b"):
        plain(X[:3], Y[:3])
    assert all(np.array_equal(v, before[k]) for k, v in _weights(model).items())
    after = optimizer.state_dict()["accumulation"]
    assert after["micro_steps"] == 1 and all(np.array_equal(a, b) for a, b in zip(after["gradients"],
                                                                                   window["gradients"]))
    step(X[3:6], Y[3:6])  # the window closes: the other steps train now
    plain(X[:3], Y[:3])
    ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=3)(X[:3], Y[:3])
    assert optimizer.state_dict()["step"] == 2 and optimizer.state_dict()["accumulation"]["accumulate"] == 3


def test_float16_steps_of_one_optimizer_share_its_accumulation_window(backend):
    """Mixed precision's windows (loss-scaled sums, kept apart from the optimizer on tensorflow and jax) are the
    optimizer's too: micro-steps alternating between two float16 ``accumulate=2`` steps train the weights that
    one such step trains over the same batches."""
    batches = [(X[i:i + 3], Y[i:i + 3]) for i in range(0, 12, 3)]  # (one shape: one trace per step)
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(4, 5, 3)
    start = _weights(model)
    results = []
    for steps in (1, 2):
        model.load_state_dict(start)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        precision, loss = ud.Precision("16-mixed", init_scale=2.0 ** 8), ud.nn.MSELoss()  # (no overflow)
        built = [ud.train_step(model, loss, optimizer, accumulate=2, precision=precision) for _ in range(steps)]
        for index, batch in enumerate(batches):
            built[index % steps](*batch)
        assert optimizer.state_dict()["step"] == 2
        results.append(_weights(model))
    assert any(not np.array_equal(results[1][k], start[k]) for k in start)
    for name, value in results[0].items():
        np.testing.assert_allclose(results[1][name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_bad_accumulate_is_a_clear_error(backend):
    model = ud.models.TwoLayerNet(4, 5, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="accumulate"):
            ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=bad)
        with pytest.raises(ValueError, match="accumulate"):
            ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=3, verbose=0, accumulate=bad)


def test_backward_and_step_clip_as_torch_nn_utils_on_torch():
    with ud.use_backend("torch"):
        model = ud.models.TwoLayerNet(4, 5, 3)
        net = _torch_net(model)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, clip_grad_norm=0.3)
        for i in range(0, 6, 2):
            optimizer.zero_grad()
            ud.nn.MSELoss()(model(ud.tensor(X[i:i + 2])), ud.tensor(Y[i:i + 2])).backward()
            optimizer.step()
        expected = _plain_torch_loop(net, [(X[i:i + 2], Y[i:i + 2]) for i in range(0, 6, 2)], 1, 0.3)
        for name, value in model.state_dict().items():
            assert max_relative_difference(value, expected[name]) < 1e-6, name
