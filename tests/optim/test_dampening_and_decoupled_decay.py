"""SGD's ``dampening`` and Adam's ``decoupled_weight_decay``: torch.optim's rules on every backend (plain PyTorch the
oracle, float64), per param group, eagerly and in compiled train steps, through a state saved on one backend and
loaded on another; fixed once built, with torch.optim's checks."""

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference

R = np.random.default_rng(11)
W, B = R.standard_normal((3, 4)), R.standard_normal(3)
X, Y = R.standard_normal((6, 4)), R.standard_normal((6, 3))

CASES = {  # torch class, unidl class, constructor options, the bias group's own options
    "SGD-dampening-groups": (torch.optim.SGD, ud.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5),
                             dict(dampening=0.2, weight_decay=0.1)),
    "SGD-dampening-one-group": (torch.optim.SGD, ud.optim.SGD, dict(lr=0.1, momentum=0.8, weight_decay=0.1),
                                dict(dampening=0.7, maximize=True)),
    "Adam-decoupled": (torch.optim.Adam, ud.optim.Adam, dict(lr=0.1, weight_decay=0.3, decoupled_weight_decay=True),
                       dict(decoupled_weight_decay=False)),
    "Adam-decoupled-group-amsgrad": (torch.optim.Adam, ud.optim.Adam, dict(lr=0.1, weight_decay=0.3),
                                     dict(decoupled_weight_decay=True, amsgrad=True)),
}


def _torch_weights(case, steps):
    torch_class, _, options, second = CASES[case]
    layer = torch.nn.Linear(4, 3).double()
    layer.load_state_dict({"weight": torch.tensor(W), "bias": torch.tensor(B)})
    optimizer = torch_class([{"params": [layer.weight]}, {"params": [layer.bias], **second}], **options)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(layer(torch.tensor(X)), torch.tensor(Y)).backward()
        optimizer.step()
    return {k: v.detach().numpy() for k, v in layer.state_dict().items()}


def _ours(case):
    _, unidl_class, options, second = CASES[case]
    layer = ud.nn.Linear(4, 3)
    layer.load_state_dict({"weight": W, "bias": B})
    return layer, unidl_class([{"params": [layer.weight]}, {"params": [layer.bias], **second}], **options)


def _eager_steps(layer, optimizer, steps):
    loss = ud.nn.MSELoss()
    for _ in range(steps):
        _, grads = ud.value_and_grad(lambda: loss(layer(ud.tensor(X)), ud.tensor(Y)), layer.parameters())()
        optimizer.apply(grads)


@pytest.mark.parametrize("case", list(CASES))
def test_the_rules_are_torch_optims_eagerly_and_compiled(backend, case):
    expected = _torch_weights(case, 4)
    with ud.use_dtype("float64"):
        eager, eager_optimizer = _ours(case)
        _eager_steps(eager, eager_optimizer, 4)
        compiled, compiled_optimizer = _ours(case)
        step = ud.train_step(compiled, ud.nn.MSELoss(), compiled_optimizer)
        for _ in range(4):
            step(X, Y)
    for layer in (eager, compiled):
        for key, value in layer.state_dict().items():
            assert max_relative_difference(value, expected[key]) < 1e-12, key


@pytest.mark.parametrize("case", ["SGD-dampening-groups", "Adam-decoupled"])
def test_a_state_saved_on_one_backend_goes_on_as_torch_on_another(backend, case):
    """Two steps on torch's backend, the states loaded here, two more: torch.optim's four (a dampened buffer must
    not start again as the gradient after the load)."""
    with ud.use_dtype("float64"):
        with ud.use_backend("torch"):
            first, first_optimizer = _ours(case)
            _eager_steps(first, first_optimizer, 2)
            weights, state = first.state_dict(), first_optimizer.state_dict()
        layer, optimizer = _ours(case)
        layer.load_state_dict(weights)
        optimizer.load_state_dict(state)
        _eager_steps(layer, optimizer, 2)
    expected = _torch_weights(case, 4)
    for key, value in layer.state_dict().items():
        assert max_relative_difference(value, expected[key]) < 1e-12, key


def test_options_are_checked_as_torch_optims_and_fixed_once_built(backend):
    layer = ud.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="nesterov=True needs zero dampening, got dampening=0.5"):
        ud.optim.SGD(layer.parameters(), 0.1, 0.9, 0.5, 0.0, True)
    with pytest.raises(ValueError, match=r"param group 1: nesterov=True needs zero dampening"):
        ud.optim.SGD([{"params": [layer.weight]}, {"params": [layer.bias], "nesterov": True}], lr=0.1, momentum=0.9,
                     dampening=0.1)
    with pytest.raises(ValueError, match="dampening=-0.1 is invalid"):
        ud.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, dampening=-0.1)
    with pytest.raises(TypeError, match="AdamW has no option 'decoupled_weight_decay'"):
        ud.optim.AdamW(layer.parameters(), decoupled_weight_decay=False)
    with pytest.raises(ValueError, match=r"decoupled_weight_decay must be True or False, got 'yes'"):
        ud.optim.Adam(layer.parameters(), decoupled_weight_decay="yes")
    sgd = ud.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"\['dampening'\] cannot change after the optimizer is built"):
        sgd.param_groups[0]["dampening"] = 0.5
    adam = ud.optim.Adam(layer.parameters())
    with pytest.raises(ValueError, match=r"\['decoupled_weight_decay'\] cannot change after the optimizer is built"):
        adam.param_groups[0]["decoupled_weight_decay"] = True


def test_a_dampened_buffer_starts_at_the_first_update_with_momentum_as_torch_optims(backend):
    """torch.optim starts a dampened buffer as the gradient at a parameter's first step with momentum (not its first
    step), and keeps it while momentum is 0: momentum 0 for two steps, then 0.9, then 0 and 0.9 again (a schedule
    touching 0), eagerly and compiled, as plain torch.optim.SGD."""
    schedule = [0.0, 0.0, 0.9, 0.9, 0.0, 0.9]
    layer = torch.nn.Linear(4, 3).double()
    layer.load_state_dict({"weight": torch.tensor(W), "bias": torch.tensor(B)})
    reference = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.0, dampening=0.5)
    for momentum in schedule:
        reference.param_groups[0]["momentum"] = momentum
        reference.zero_grad()
        torch.nn.functional.mse_loss(layer(torch.tensor(X)), torch.tensor(Y)).backward()
        reference.step()
    with ud.use_dtype("float64"):
        for compiled in (False, True):
            ours = ud.nn.Linear(4, 3)
            ours.load_state_dict({"weight": W, "bias": B})
            optimizer = ud.optim.SGD(ours.parameters(), lr=0.1, momentum=0.0, dampening=0.5)
            step = ud.train_step(ours, ud.nn.MSELoss(), optimizer) if compiled else None
            for momentum in schedule:
                optimizer.param_groups[0]["momentum"] = momentum
                if compiled:
                    step(X, Y)
                else:
                    _eager_steps(ours, optimizer, 1)
            for key, value in ours.state_dict().items():
                assert max_relative_difference(value, layer.state_dict()[key].detach().numpy()) < 1e-12, (compiled, key)
