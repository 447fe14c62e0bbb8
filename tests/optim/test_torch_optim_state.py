"""A PyTorch run's optimizer resumes on every backend: ``load_state_dict`` of ``torch.optim``'s ``state_dict()``
(against plain ``torch.optim``, which goes on training beside), and what it cannot honour refused before anything
changes."""

import copy

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.errors import CheckpointStateError

R = np.random.default_rng(5)
X, Y = R.standard_normal((6, 6, 4)), R.standard_normal((6, 6, 2))  # 6 batches: 3 in torch, then 3 on both

#: (torch.optim class, its options, the options the unidl optimizer is built with: those fixed once built (the rest,
#: lr, betas, momentum, weight decay ..., come from torch's state), the second param group's own options in both
CASES = {
    "SGD": (torch.optim.SGD, dict(lr=0.1), {}),  # (no state at all in torch's)
    "SGD-nesterov": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2), {}),
    "SGD-dampening-maximize": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, maximize=True),
                               dict(dampening=0.3)),
    "Adam-amsgrad": (torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), amsgrad=True, weight_decay=1e-2),
                     dict(amsgrad=True)),
    "Adam-decoupled-maximize": (torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True,
                                                       maximize=True), dict(decoupled_weight_decay=True)),
    "AdamW": (torch.optim.AdamW, dict(lr=1e-2, eps=1e-6), {}),
    "RMSprop-momentum-centered": (torch.optim.RMSprop, dict(lr=1e-2, alpha=0.9, momentum=0.9, centered=True,
                                                            weight_decay=1e-3), dict(momentum=0.5, centered=True)),
    "RMSprop": (torch.optim.RMSprop, dict(lr=1e-2), {}),
    "Adagrad": (torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1),
                dict(initial_accumulator_value=0.1)),
    "NAdam-decoupled": (torch.optim.NAdam, dict(lr=1e-2, momentum_decay=0.01, weight_decay=0.1,
                                                decoupled_weight_decay=True), dict(decoupled_weight_decay=True)),
    "RAdam": (torch.optim.RAdam, dict(lr=1e-2, weight_decay=1e-2), {}),  # (rectified from step 6, the last)
    "Adamax": (torch.optim.Adamax, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2), {}),
    "Adadelta": (torch.optim.Adadelta, dict(lr=0.5, rho=0.8, weight_decay=1e-2, maximize=True), {}),
    "Rprop": (torch.optim.Rprop, dict(lr=1e-2, etas=(0.4, 1.5), step_sizes=(1e-4, 0.02)), {}),
}


def _torch_run(torch_class, options):
    """A plain torch model trained 3 steps by ``torch_class`` over two param groups (the second at half the rate and
    without weight decay), and its model and optimizer state dicts then."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    second = {"lr": options["lr"] / 2, **({"weight_decay": 0.0} if "weight_decay" in options else {})}
    optimizer = torch_class([{"params": model[0].parameters()}, {"params": model[2].parameters(), **second}],
                            **options)

    def step(x, y):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(torch.tensor(x)), torch.tensor(y)).backward()
        optimizer.step()

    for x, y in zip(X[:3], Y[:3]):
        step(x, y)
    return model, optimizer, step


@pytest.mark.parametrize("case", list(CASES))
def test_a_torch_optim_state_resumes_as_torch_optim_on_every_backend(backend, case):
    """3 steps of plain torch, its model and optimizer states loaded (NumPy arrays for one case, torch tensors for
    the others), then 3 more steps on both with the same data: the weights agree to 1e-10 in float64, with two
    param groups of their own options."""
    torch_class, options, built = CASES[case]
    model, optimizer, step = _torch_run(torch_class, options)
    state = optimizer.state_dict()
    if case == "AdamW":  # (tensors as NumPy arrays)
        state = {"state": {k: {n: v.numpy() for n, v in s.items()} for k, s in state["state"].items()},
                 "param_groups": state["param_groups"]}
    with ud.use_dtype("float64"):
        ours = ud.nn.Sequential(ud.nn.Linear(4, 3), ud.nn.Tanh(), ud.nn.Linear(3, 2))
        ours.load_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()})
        unidl_optimizer = getattr(ud.optim, torch_class.__name__)([{"params": ours[0].parameters()},
                                                                    {"params": ours[2].parameters()}], **built)
        unidl_optimizer.load_state_dict(state)
        loss = ud.nn.MSELoss()
        for x, y in zip(X[3:], Y[3:]):
            step(x, y)
            _, grads = ud.value_and_grad(lambda: loss(ours(ud.tensor(x)), ud.tensor(y)), ours.parameters())()
            unidl_optimizer.apply(grads)
    assert [group["lr"] for group in unidl_optimizer.param_groups] == [options["lr"], options["lr"] / 2]
    # (NAdam too: its mu_product a float32 number, as torch.optim's in a float64 run; 4e-9 apart as a float64)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_a_torch_optim_state_resumes_a_compiled_train_step(backend, name):
    """The same through ``ud.train_step`` (compiled where the backend compiles), with one group: Adam, and NAdam
    (its ``mu_product`` a float32 number per parameter, as torch's)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).double()
    optimizer = getattr(torch.optim, name)(model.parameters(), lr=1e-2, weight_decay=1e-2)
    for index, (x, y) in enumerate(zip(X, Y)):
        if index == 3:  # (torch's state_dict holds its live tensors)
            state = copy.deepcopy(optimizer.state_dict())
            weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(torch.tensor(x)), torch.tensor(y)).backward()
        optimizer.step()
    with ud.use_dtype("float64"):
        ours = ud.nn.Linear(4, 2)
        ours.load_state_dict(weights)
        unidl_optimizer = getattr(ud.optim, name)(ours.parameters())
        unidl_optimizer.load_state_dict(state)
        step = ud.train_step(ours, ud.nn.MSELoss(), unidl_optimizer)
        for x, y in zip(X[3:], Y[3:]):
            step(x, y)
    assert unidl_optimizer.state_dict()["param_steps"] == [6, 6]
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def _refused(build, state, match):
    """``load_state_dict(state)`` into ``build(params)`` over a (3, 4) and a (2, 3) parameter (two groups) is a
    ``CheckpointStateError`` matching ``match`` that changes neither the optimizer's state nor its options."""
    model = ud.nn.Sequential(ud.nn.Linear(4, 3, bias=False), ud.nn.Linear(3, 2, bias=False))
    optimizer = build([{"params": model[0].parameters()}, {"params": model[1].parameters()}])
    optimizer.apply([ud.tensor(np.ones(tuple(p.shape), np.float32)) for p in model.parameters()])
    before = optimizer.state_dict()
    with pytest.raises(CheckpointStateError, match=match):
        optimizer.load_state_dict(state)
    after = optimizer.state_dict()
    assert after["step"] == before["step"] and [g["lr"] for g in optimizer.param_groups] == [before["lr"]] * 2
    for old, new in zip(before["slots"], after["slots"]):
        assert all(np.array_equal(old[k], new[k]) for k in old)


def _torch_state(torch_class, shapes=((3, 4), (2, 3)), **options):
    """``torch_class``'s state after one step over parameters of ``shapes``, one per param group."""
    params = [torch.nn.Parameter(torch.ones(shape)) for shape in shapes]
    optimizer = torch_class([{"params": [p]} for p in params], lr=0.5, **options)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize("build, state, match", [
    (lambda p: ud.optim.Adam(p), lambda: _torch_state(torch.optim.Adam, ((3, 4), (3, 2))),
     r"param group 1, parameter 0 \(index 1\): its 'exp_avg' has shape \(3, 2\), .* has shape \(2, 3\)"),
    (lambda p: ud.optim.Adam(p), lambda: _torch_state(torch.optim.Adam, ((3, 4),)),
     "the torch.optim state has 1 param groups, this optimizer 2"),
    (lambda p: ud.optim.Adam(p), lambda: _torch_state(torch.optim.SGD, momentum=0.9),
     r"no 'betas', 'eps', 'amsgrad', which torch.optim.Adam writes .* than Adam \(.* torch.optim.SGD's\)"),
    (lambda p: ud.optim.AdamW(p), lambda: _torch_state(torch.optim.Adam),
     r"decoupled_weight_decay=False; this AdamW's group 0 was built with decoupled_weight_decay=True"),
    (lambda p: ud.optim.Adam(p), lambda: _torch_state(torch.optim.Adam, amsgrad=True),
     "amsgrad=True; .* built with amsgrad=False, fixed once built: build it with amsgrad=True"),
    (lambda p: ud.optim.Adam(p), lambda: _torch_state(torch.optim.Adam, foreach=True),
     "param group 0: Adam foreach=True: unidl's Adam does not implement it"),
    (lambda p: ud.optim.RMSprop(p), lambda: _torch_state(torch.optim.RMSprop, momentum=0.9),
     "cannot become 0.9: the group was built with momentum=0"),
])
def test_a_torch_optim_state_that_does_not_fit_is_refused_before_anything_changes(backend, build, state, match):
    """Another shape (named with its group, index and both shapes), another number of groups, another optimizer
    class (told by its options), an option fixed at another value or one unidl does not implement: a
    ``CheckpointStateError`` naming it; the optimizer keeps its state."""
    _refused(build, state(), match)


def test_the_torch_optim_state_of_another_class_is_told_by_its_slots(backend):
    """Per-parameter state of another class (Adagrad's ``sum`` into RMSprop) is refused, naming what it holds; so is
    state under keys no group lists (a JSON copy's strings), which would have been left out. A state whose group
    lacks a key the class's torch namesake always writes (RAdam's into Adam or NAdam, Adamax's before its first
    step into Adam), or whose updated parameter lacks a slot it always keeps (NAdam's ``mu_product``), is another
    class's too, named with both classes."""
    state = _torch_state(torch.optim.RMSprop)
    state["state"][0] = {"step": torch.tensor(1.0), "sum": torch.ones(3, 4)}
    _refused(lambda p: ud.optim.RMSprop(p), state, r"parameter 0 \(param group 0\) holds \['step', 'sum'\]")
    state["state"] = {str(key): value for key, value in _torch_state(torch.optim.RMSprop)["state"].items()}
    _refused(lambda p: ud.optim.RMSprop(p), state, r"state for parameters \[\"'0'\", \"'1'\"\], which no param group")
    radam = _torch_state(torch.optim.RAdam)
    _refused(lambda p: ud.optim.Adam(p), radam, r"group 0 has no 'amsgrad', which torch.optim.Adam writes in every "
             r"group: a state of another optimizer class than Adam \(its group's keys are torch.optim.RAdam's\)")
    _refused(lambda p: ud.optim.NAdam(p), radam, r"no 'momentum_decay', .* than NAdam .*torch.optim.RAdam's")
    fresh = torch.optim.Adamax([{"params": [torch.nn.Parameter(torch.ones(3, 4))]},
                                {"params": [torch.nn.Parameter(torch.ones(2, 3))]}]).state_dict()
    _refused(lambda p: ud.optim.Adam(p), fresh, r"no 'amsgrad', .* than Adam \(.*torch.optim.Adamax's\)")
    nadam = _torch_state(torch.optim.NAdam)
    del nadam["state"][1]["mu_product"]
    _refused(lambda p: ud.optim.NAdam(p), nadam, r"parameter 1 \(param group 1\) has step 1 but no 'mu_product'")


def test_a_scheduled_torch_optim_states_initial_lr_is_the_base_rate_of_later_schedules(backend):
    """A group's ``initial_lr`` (a ``torch.optim.lr_scheduler``'s) loads as PyTorch's load restores it: the base rate
    of a schedule built afterwards, while the group's ``lr`` is the decayed one."""
    state = _torch_state(torch.optim.SGD)
    for group in state["param_groups"]:
        group["initial_lr"], group["lr"] = group["lr"], group["lr"] / 10
    model = ud.nn.Sequential(ud.nn.Linear(4, 3, bias=False), ud.nn.Linear(3, 2, bias=False))
    optimizer = ud.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters()}], lr=1.0)
    optimizer.load_state_dict(state)
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.05]
    assert ud.optim.lr_scheduler.StepLR(optimizer, 1).base_lrs == [0.5, 0.5]


def test_a_momentum_buffer_torch_has_not_yet_starts_as_torchs_would(backend):
    """A ``momentum_buffer`` None (or no state: a parameter not yet updated) loads as zeros, and a dampened SGD's
    ``momentum_started`` is 0 there (torch's buffer starts as the gradient), 1 where torch's buffer exists."""
    state = _torch_state(torch.optim.SGD, momentum=0.9, dampening=0.3)
    state["state"][1] = {"momentum_buffer": None}
    model = ud.nn.Sequential(ud.nn.Linear(4, 3, bias=False), ud.nn.Linear(3, 2, bias=False))
    optimizer = ud.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters()}], dampening=0.3)
    optimizer.load_state_dict(state)
    slots = optimizer.state_dict()["slots"]
    assert [float(s["momentum_started"].mean()) for s in slots] == [1.0, 0.0]
    assert np.array_equal(slots[0]["momentum_buffer"], np.ones((3, 4))) and not slots[1]["momentum_buffer"].any()
