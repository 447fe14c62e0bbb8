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


def _plain_torch_unclipped(optimizer):
    _, torch_class, kwargs = OPTIMIZERS[optimizer]
    params = [torch.tensor(value, requires_grad=True) for value in START]
    opt = torch_class(params, **kwargs)
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


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
