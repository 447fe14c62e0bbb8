"""Parameter groups with per-group options, as ``torch.optim`` takes them: trajectories against plain
``torch.optim`` (with a per-group ``StepLR``), ``param_groups[i]["lr"]``, state round trips, bad groups."""

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference

R = np.random.default_rng(11)
SHAPES = [(4, 3), (3,), (2, 4)]
START = [R.standard_normal(s).astype(np.float32) for s in SHAPES]
GRADS = [[R.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(4)]

CASES = {  # (unidl class, torch class, constructor options, options of the second group)
    "SGD": (ud.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9), dict(lr=0.01, momentum=0.5, weight_decay=0.1)),
    "Adam": (ud.optim.Adam, torch.optim.Adam, dict(lr=0.01), dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.01)),
}


class _Params(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (self.parameter(value) for value in START)


def _torch_trajectory(case):
    _, torch_class, options, second = CASES[case]
    params = [torch.tensor(value, requires_grad=True) for value in START]
    opt = torch_class([{"params": params[:2]}, {"params": params[2:], **second}], **options)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
        schedule.step()
    return [p.detach().numpy() for p in params], [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("case", list(CASES))
def test_param_groups_follow_torch_optim(backend, case):
    unidl_class, _, options, second = CASES[case]
    holder = _Params()
    opt = unidl_class([{"params": [holder.a, holder.b]}, {"params": [holder.c], **second}], **options)
    schedule = ud.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for grads in GRADS:
        opt.apply([ud.tensor(g) for g in grads])
        schedule.step()
    expected, lrs = _torch_trajectory(case)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(lrs, rel=1e-12)
    for name, value in zip("abc", expected):
        assert max_relative_difference(holder.state_dict()[name], value) < 1e-6, name


def test_group_lr_can_be_set_and_the_state_round_trips(backend):
    holder = _Params()
    opt = ud.optim.SGD([{"params": [holder.a]}, {"params": [holder.b, holder.c], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["lr"] == 0.5
    opt.param_groups[1]["lr"] = 0.0  # the second group stops moving
    before = holder.state_dict()
    opt.apply([ud.tensor(np.ones(s, np.float32)) for s in SHAPES])
    after = holder.state_dict()
    assert np.array_equal(before["b"], after["b"]) and not np.array_equal(before["a"], after["a"])
    state = opt.state_dict()
    assert state["param_groups"] == [{"lr": 0.1, "size": 1}, {"lr": 0.0, "size": 2}]
    other = ud.optim.SGD([{"params": [holder.a]}, {"params": [holder.b, holder.c], "lr": 0.5}], lr=0.1, momentum=0.9)
    other.load_state_dict(state)
    assert [g["lr"] for g in other.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="param groups"):
        ud.optim.SGD(holder.parameters(), lr=0.1, momentum=0.9).load_state_dict(state)
    with pytest.raises(ValueError, match="only 'lr'"):
        opt.param_groups[0]["momentum"] = 0.5


def test_bad_param_groups_are_clear_errors(backend):
    holder = _Params()
    cases = [
        ([{"params": [holder.a], "lr": -1.0}], "lr"),
        ([{"params": [holder.a], "momentum": 1.5}], "momentum"),
        ([{"params": [holder.a], "betas": 0.9}], "unknown option 'betas'"),
        ([{"params": [holder.a]}, {"params": [holder.a]}], "twice"),
        ([{"lr": 0.1}], "'params'"),
        ([{"params": []}], "no parameters"),
        ([{"params": [holder.a]}, holder.b], "'params'"),
    ]
    for groups, message in cases:
        with pytest.raises(ValueError, match=message):
            ud.optim.SGD(groups, lr=0.1)
