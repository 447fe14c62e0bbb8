"""Parameter groups with per-group options, as ``torch.optim`` takes them: trajectories against plain
``torch.optim`` (with a per-group ``StepLR``, and with every changeable option changed mid-run, eagerly, inside a
compiled train step and inside a ``ud.function`` calling ``apply``, which retrace once at an option's first change
and never after), options never changed held as constants, ``param_groups[i]["lr"]``, state round trips, bad groups."""

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
    options = {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "maximize": False}  # every group's, as torch's
    assert state["param_groups"] == [{"lr": 0.1, "size": 1, **options}, {"lr": 0.0, "size": 2, **options}]
    other = ud.optim.SGD([{"params": [holder.a]}, {"params": [holder.b, holder.c], "lr": 0.5}], lr=0.1, momentum=0.9)
    other.load_state_dict(state)
    assert [g["lr"] for g in other.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="param groups"):
        ud.optim.SGD(holder.parameters(), lr=0.1, momentum=0.9).load_state_dict(state)
    opt.param_groups[1]["momentum"] = 0.5  # a changed option is saved and restored with the group
    state = opt.state_dict()
    assert state["param_groups"][1] == {"lr": 0.0, "size": 2, **options, "momentum": 0.5}
    other.load_state_dict(state)
    assert [g["momentum"] for g in other.param_groups] == [0.9, 0.5]
    with pytest.raises(ud.errors.CheckpointStateError, match=r"param group 1 holds options \['alpha'\]"):
        other.load_state_dict({**state, "param_groups": [state["param_groups"][0], {**state["param_groups"][1], "alpha": 1}]})
    with pytest.raises(ValueError, match=r"\['l1'\] cannot change .* a group may change: lr, maximize, momentum, nesterov"):
        opt.param_groups[0]["l1"] = 0.5
    with pytest.raises(ValueError, match="param group 1 momentum=1.5 is invalid"):
        opt.param_groups[1]["momentum"] = 1.5
    adam = ud.optim.Adam([{"params": [holder.a], "amsgrad": True}, {"params": [holder.b]}])
    assert adam.slots == ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # (the slot kept where a group is amsgrad)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['amsgrad'\] cannot change after the optimizer is built"):
        adam.param_groups[1]["amsgrad"] = True
    class OwnRule(ud.optim.SGD):
        def update(self, param, grad, slots, lr, step, ops):
            return lr * grad, slots

    with pytest.raises(ValueError, match=r"OwnRule cannot change .* has its own update rule"):
        OwnRule(holder.parameters(), lr=0.1, momentum=0.9).param_groups[0]["momentum"] = 0.5
    plain = ud.optim.SGD(holder.parameters(), lr=0.1)
    plain.param_groups[0]["nesterov"] = True  # (torch.optim checks it only when built, and runs plain SGD, as here)
    assert plain.param_groups[0]["nesterov"] is True
    # torch.optim's nesterov=1, taken alike by the constructor and a group (a group refused it); a float neither
    opt = ud.optim.SGD(holder.parameters(), lr=0.1, momentum=0.9, nesterov=1)
    opt.param_groups[0]["nesterov"] = 0
    assert opt.param_groups[0]["nesterov"] is False and opt.hyper["nesterov"] is True
    with pytest.raises(ValueError, match="param group 0 nesterov must be True or False, got 0.5"):
        opt.param_groups[0]["nesterov"] = 0.5


def test_load_state_dict_restores_every_saved_option_as_torch_optim(backend):
    """``load_state_dict`` restores every option the state was saved with (betas, weight decay, a group's own
    options), as ``torch.optim``'s does, whatever the loading optimizer was built with: only the lr was restored,
    and a resumed run trained on with the new betas and weight decay silently. Trajectory against torch.optim: two
    steps, saved, loaded into an optimizer built otherwise, two more. A rule of the user's own, whose options
    cannot change, refuses a state of other options before anything changes."""
    saved_options, other_options = (dict(lr=0.01, betas=(0.9, 0.999)), dict(lr=0.05, betas=(0.5, 0.9),
                                                                             weight_decay=0.1))
    second = dict(betas=(0.7, 0.99))  # the saved optimizer's second group's own option

    def torch_run():
        params = [torch.tensor(value, requires_grad=True) for value in START]
        groups = lambda options: torch.optim.Adam([{"params": params[:2]}, {"params": params[2:], **options}],
                                                  **(saved_options if options else other_options))
        opt = groups(second)
        for index, grads in enumerate(GRADS):
            if index == 2:
                state, opt = opt.state_dict(), groups({})
                opt.load_state_dict(state)
            for p, g in zip(params, grads):
                p.grad = torch.tensor(g)
            opt.step()
        return [p.detach().numpy() for p in params], [(g["betas"], g["weight_decay"]) for g in opt.param_groups]

    holder = _Params()
    groups = lambda options: ud.optim.Adam([{"params": [holder.a, holder.b]}, {"params": [holder.c], **options}],
                                           **(saved_options if options else other_options))
    opt = groups(second)
    for index, grads in enumerate(GRADS):
        if index == 2:
            state, opt = opt.state_dict(), groups({})
            opt.load_state_dict(state)
        opt.apply([ud.tensor(g) for g in grads])
    expected, options = torch_run()
    assert [(g["betas"], g["weight_decay"]) for g in opt.param_groups] == options
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    for name, value in zip("abc", expected):
        assert max_relative_difference(holder.state_dict()[name], value) < 1e-6, name

    class OwnRule(ud.optim.SGD):
        def update(self, param, grad, slots, lr, step, ops):
            return lr * grad, slots

    own = OwnRule(holder.parameters(), lr=0.1, momentum=0.5)
    with pytest.raises(ud.errors.CheckpointStateError, match=r"OwnRule cannot change .* its own update rule"):
        own.load_state_dict(OwnRule(holder.parameters(), lr=0.1, momentum=0.9).state_dict())
    assert own.param_groups[0]["momentum"] == 0.5


def test_every_way_to_write_a_group_goes_through_the_optimizer(backend):
    """``param_groups[i] |= {...}`` and ``setdefault`` set options as ``param_groups[i][key] = value`` does (they
    wrote dict entries past the optimizer: the group showed lr 1.0 and trained with 0.1, and a state saved the new
    momentum that the rule never used); removing an entry is an error naming the way to set one."""
    holder = _Params()
    opt = ud.optim.SGD(holder.parameters(), lr=0.1)
    opt.param_groups[0] |= {"lr": 1.0, "momentum": 0.5}
    assert opt.param_groups[0].setdefault("momentum", 0.9) == 0.5 and opt.lr == 1.0
    opt.apply([ud.tensor(np.ones(s, np.float32)) for s in SHAPES])
    opt.apply([ud.tensor(np.ones(s, np.float32)) for s in SHAPES])
    params = [torch.tensor(value, requires_grad=True) for value in START]
    oracle = torch.optim.SGD(params, lr=0.1)
    oracle.param_groups[0] |= {"lr": 1.0, "momentum": 0.5}
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        oracle.step()
    for name, value in zip("abc", params):
        assert max_relative_difference(holder.state_dict()[name], value.detach().numpy()) < 1e-6, name
    with pytest.raises(ValueError, match=r"\['centered'\] cannot change after the optimizer is built"):
        opt.param_groups[0].setdefault("centered", False)  # (not SGD's option)
    with pytest.raises(ValueError, match=r"\['dampening'\] cannot change after the optimizer is built"):
        opt.param_groups[0] |= {"dampening": 0.5}
    assert opt.param_groups[0].setdefault("dampening", 0.5) == 0  # (dict's rule: an entry there is kept)
    for remove in (lambda g: g.pop("momentum"), lambda g: g.__delitem__("lr"), lambda g: g.clear()):
        with pytest.raises(ValueError, match=r"param_groups\[0\] entries cannot be removed"):
            remove(opt.param_groups[0])
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.state_dict()["param_groups"][0]["momentum"] == 0.5


def test_hyper_and_the_lists_of_groups_and_parameters_cannot_be_changed_past_the_optimizer(backend):
    """``optimizer.hyper``, ``param_groups`` and a group's ``"params"`` are read-only: a write to ``hyper`` changed
    training on some backends only (torch.optim never read it, compiled steps baked in their trace's value), and a
    parameter or group appended was accepted and never trained; each is a ``TypeError`` saying what to do. ``hyper``
    reads, pickles and serialises as a dict, and a shallow copy of the optimizer works."""
    import copy
    import json
    import pickle

    holder = _Params()
    opt = ud.optim.SGD([{"params": [holder.a]}, {"params": [holder.b]}], lr=0.1)
    before = opt.state_dict()
    writes = [lambda: opt.hyper.__setitem__("weight_decay", 5.0), lambda: opt.hyper.update(momentum=0.5),
              lambda: opt.param_groups[0]["params"].append(holder.c),
              lambda: opt.param_groups[0]["params"].extend([holder.c]),
              lambda: opt.param_groups.append({"params": [holder.c]}),
              lambda: opt.param_groups.__setitem__(1, {"params": [holder.c]}),
              lambda: opt.param_groups.__delitem__(1)]
    for write in writes:
        with pytest.raises(TypeError, match=r"(read-only|cannot change once the optimizer is built)"):
            write()
    assert json.loads(json.dumps(opt.hyper)) == dict(opt.hyper) and {**opt.hyper}["weight_decay"] == 0.0
    assert pickle.loads(pickle.dumps(opt.hyper)) == opt.hyper and type(pickle.loads(pickle.dumps(opt.hyper))) is \
        type(opt.hyper)
    assert copy.copy(opt).hyper == opt.hyper
    assert [len(group["params"]) for group in opt.param_groups] == [1, 1]
    opt.apply([ud.tensor(np.ones(s, np.float32)) for s in SHAPES[:2]])
    assert opt.state_dict()["hyper"] == before["hyper"]
    np.testing.assert_allclose(ud.to_numpy(holder.a), START[0] - 0.1)


def test_param_groups_copy_as_torch_optims_plain_dicts(backend):
    """``copy.deepcopy(optimizer.param_groups)`` is a list of plain dicts holding copies of the parameters, as
    torch.optim's (it raised: dict's copy wrote "params" through the group, or carried the optimizer along); a
    shallow copy of a group shares its parameters; the optimizer is untouched."""
    import copy

    holder = _Params()
    opt = ud.optim.SGD([{"params": [holder.a]}, {"params": [holder.b], "lr": 0.5}], lr=0.1, momentum=0.9)
    groups = copy.deepcopy(opt.param_groups)
    assert type(groups) is list and [type(group) for group in groups] == [dict, dict]
    assert [group["lr"] for group in groups] == [0.1, 0.5] and groups[1]["momentum"] == 0.9
    assert groups[0]["params"][0] is not holder.a
    np.testing.assert_array_equal(ud.to_numpy(groups[0]["params"][0]), START[0])
    shallow = copy.copy(opt.param_groups[1])
    assert type(shallow) is dict and shallow["params"][0] is holder.b
    opt.apply([ud.tensor(np.ones(s, np.float32)) for s in SHAPES[:2]])
    np.testing.assert_allclose(ud.to_numpy(holder.a), START[0] - 0.1)


def test_a_checkpoint_keeps_param_groups_and_per_parameter_steps(backend, tmp_path):
    """``save_checkpoint``/``load_checkpoint`` carry every param group's lr and changed options and Adam's
    per-parameter step counts (a checkpoint of a two-group optimizer used to be refused on load, and the counts are
    what Adam's bias correction reads); bad counts are clear errors."""
    holder = _Params()

    def adam():
        return ud.optim.Adam([{"params": [holder.a, holder.b]}, {"params": [holder.c], "lr": 0.05}], lr=0.01)

    opt = adam()
    for index, grads in enumerate(GRADS[:3]):  # the last parameter has no gradient in the second step
        opt.apply([ud.tensor(g) if index != 1 or n < 2 else None for n, g in enumerate(grads)])
    opt.param_groups[1]["lr"], opt.param_groups[1]["betas"] = 0.02, (0.8, 0.9)
    state = opt.state_dict()
    assert state["step"] == 3 and state["param_steps"] == [3, 3, 2]
    ud.save_checkpoint(tmp_path, holder, opt, epoch=1, step=3)
    other = adam()
    ud.load_checkpoint(tmp_path, holder, other)
    loaded = other.state_dict()
    assert (loaded["param_groups"], loaded["param_steps"], loaded["step"]) == (
        state["param_groups"], [3, 3, 2], 3)
    assert [g["betas"] for g in other.param_groups] == [(0.9, 0.999), (0.8, 0.9)]
    for mine, theirs in zip(loaded["slots"], state["slots"]):
        assert all(np.array_equal(mine[name], theirs[name]) for name in theirs)
    for bad, message in [([3, 3], "one step count per parameter"), ([3, 3, 4], r"param_steps\[2\] .* 0..3"),
                         ([3, True, 2], r"param_steps\[1\]")]:
        with pytest.raises(ud.errors.CheckpointStateError, match=message):
            other.load_state_dict({**state, "param_steps": bad})
    with pytest.raises(ud.errors.CheckpointStateError, match="reads no step count"):
        ud.optim.SGD(holder.parameters(), lr=0.1).load_state_dict(
            {"class": "SGD", "lr": 0.1, "step": 1, "slots": [{} for _ in SHAPES], "param_steps": [1, 1, 1]})
    old_format = {key: value for key, value in state.items() if key != "param_steps"}
    other.load_state_dict(old_format)  # saved before per-parameter counts: each parameter had every update
    assert other.state_dict()["param_steps"] == [3, 3, 3]


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
    # a single parameter: torch.optim's TypeError (torch's backend called it no parameter, keras raised a raw error)
    with pytest.raises(TypeError, match=r"SGD params should be an iterable of parameters or dicts .* got a single"):
        ud.optim.SGD(holder.a, lr=0.1)


CHANGES = {  # (unidl class, torch class, constructor options, group 1's own, {step: [(group, option, value)]})
    "SGD": (ud.optim.SGD, torch.optim.SGD, dict(lr=0.1), dict(momentum=0.9),
            {1: [(0, "momentum", 0.8), (1, "nesterov", True), (1, "weight_decay", 0.1)],
             3: [(0, "momentum", 0.0), (1, "momentum", 0.5), (1, "maximize", True)]}),
    "Adam": (ud.optim.Adam, torch.optim.Adam, dict(lr=0.01), dict(weight_decay=0.01, amsgrad=True),
             {1: [(0, "betas", (0.5, 0.9)), (1, "eps", 1e-3)],
              3: [(0, "weight_decay", 0.2), (1, "betas", (0.8, 0.99)), (0, "maximize", True)]}),
    "AdamW": (ud.optim.AdamW, torch.optim.AdamW, dict(lr=0.01), dict(),
              {2: [(0, "weight_decay", 0.5), (1, "betas", (0.6, 0.95))]}),
    "RMSprop": (ud.optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01), dict(alpha=0.9),
                {2: [(0, "alpha", 0.5), (1, "eps", 0.1), (1, "weight_decay", 0.3)]}),
    "RMSprop-momentum-centered": (ud.optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True),
                                  dict(alpha=0.9),
                                  {1: [(0, "momentum", 0.0)], 3: [(0, "momentum", 0.5), (1, "alpha", 0.5)]}),
    "Adagrad": (ud.optim.Adagrad, torch.optim.Adagrad, dict(lr=0.1), dict(),
                {2: [(0, "eps", 0.5), (1, "weight_decay", 0.2), (1, "lr_decay", 0.3)]}),
    "NAdam": (ud.optim.NAdam, torch.optim.NAdam, dict(lr=0.01), dict(weight_decay=0.1, decoupled_weight_decay=True),
              {1: [(0, "momentum_decay", 0.05), (1, "betas", (0.8, 0.9))],
               3: [(0, "weight_decay", 0.2), (1, "maximize", True)]}),
    "Rprop": (ud.optim.Rprop, torch.optim.Rprop, dict(lr=0.01), dict(etas=(0.3, 1.5)),
              {2: [(0, "etas", (0.2, 2.0)), (1, "step_sizes", (1e-3, 0.02)), (1, "maximize", True)]}),
    # (RAdam's rho_t, which decides its rectification (off in these 5 steps), reads the bound betas)
    "RAdam": (ud.optim.RAdam, torch.optim.RAdam, dict(lr=0.01, betas=(0.9, 0.9)), dict(weight_decay=0.1),
              {2: [(0, "betas", (0.5, 0.8)), (1, "eps", 1e-3), (1, "weight_decay", 0.2)]}),
    "Adamax": (ud.optim.Adamax, torch.optim.Adamax, dict(lr=0.01), dict(),
               {2: [(0, "betas", (0.5, 0.9)), (1, "eps", 1e-3), (0, "maximize", True)]}),
    "Adadelta": (ud.optim.Adadelta, torch.optim.Adadelta, dict(lr=1.0), dict(),
                 {2: [(0, "rho", 0.5), (1, "eps", 1e-3), (1, "weight_decay", 0.2), (0, "maximize", True)]}),
}
X = R.standard_normal((6, 4)).astype(np.float32)
Y = R.standard_normal((6, 3)).astype(np.float32)
LAYER = {"weight": R.standard_normal((3, 4)).astype(np.float32), "bias": R.standard_normal(3).astype(np.float32)}


def _torch_changed_trajectory(case, steps):
    _, torch_class, options, second, changes = CHANGES[case]
    return _torch_trajectory_with_changes(torch_class, options, second, changes, steps)


def _torch_trajectory_with_changes(torch_class, options, second, changes, steps):
    """The weights of a ``torch.nn.Linear`` (weight in group 0, bias in group 1) after ``steps`` steps on (X, Y),
    with ``changes`` ({step: [(group, option, value)]}) made to the param groups before those steps."""
    layer = torch.nn.Linear(4, 3)
    layer.load_state_dict({k: torch.tensor(v) for k, v in LAYER.items()})
    opt = torch_class([{"params": [layer.weight]}, {"params": [layer.bias], **second}], **options)
    for step in range(steps):
        for group, key, value in changes.get(step, []):
            opt.param_groups[group][key] = value
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(torch.tensor(X)), torch.tensor(Y)).backward()
        opt.step()
    return {k: v.detach().numpy() for k, v in layer.state_dict().items()}


def _expected_traces(changes, steps) -> list[int]:
    """A compiled step's trace count after each of ``steps`` steps with ``changes`` made before them: one trace at
    the first step, one more at each later step before which an option changed for the first time (every change
    in ``changes`` changes the value), none for a later change of an option changed before."""
    changed, count, counts = set(), 0, []
    for index in range(steps):
        first = [(group, key) for group, key, _ in changes.get(index, []) if (group, key) not in changed]
        changed.update(first)
        count += 1 if index == 0 or first else 0
        counts.append(count)
    return counts


@pytest.mark.parametrize("case", list(CHANGES))
def test_changed_group_options_take_effect_at_the_next_step(backend, case):
    """Every option torch.optim lets a group change, changed between steps (also from 0 to non-zero and back,
    and nesterov switched on), gives torch.optim's trajectory: inside a compiled train step and through ``apply``
    outside it. The compiled step holds an option never changed as a constant: it retraces once at the step
    before which an option changed for the first time, and not for a later change (then a graph input)."""
    unidl_class, _, options, second, changes = CHANGES[case]
    steps = 5
    expected = _torch_changed_trajectory(case, steps)
    for compiled in (True, False):
        layer = ud.nn.Linear(4, 3)
        layer.load_state_dict(LAYER)
        opt = unidl_class([{"params": [layer.weight]}, {"params": [layer.bias], **second}], **options)
        loss = ud.nn.MSELoss()
        step = ud.train_step(layer, loss, opt)
        traces = []
        for index in range(steps):
            for group, key, value in changes.get(index, []):
                opt.param_groups[group][key] = value
            if compiled:
                step(ud.tensor(X), ud.tensor(Y))
                traces.append(step.trace_count)
            else:
                _, grads = ud.value_and_grad(lambda: loss(layer(ud.tensor(X)), ud.tensor(Y)), layer.parameters())()
                opt.apply(grads)
        if compiled and traces[0] is not None:  # (None: eager torch, Keras's own jit on Keras-on-JAX)
            assert traces == _expected_traces(changes, steps), f"{case}: trace counts {traces}"
        for name, value in expected.items():
            difference = max_relative_difference(layer.state_dict()[name], value)
            assert difference < 1e-5, f"{case} {'compiled' if compiled else 'apply'} {name}: {difference:.2e}"


def _cycled_momentum_as_torch(optimizers, schedule, torch_schedule, steps):
    """A schedule that cycles momentum or beta1 (``schedule(optimizer)``, and ``torch_schedule(optimizer)`` its
    torch namesake): each step's rate and momentum (or beta1) are torch's, and after ``steps`` steps inside one
    compiled train step the weights are torch.optim's trajectory."""
    for unidl_class, torch_class, options in optimizers:
        reference = torch.nn.Linear(4, 3)
        reference.load_state_dict({k: torch.tensor(v) for k, v in LAYER.items()})
        expected = torch_class(reference.parameters(), lr=0.1, **options)
        theirs = torch_schedule(expected)
        layer = ud.nn.Linear(4, 3)
        layer.load_state_dict(LAYER)
        opt = unidl_class(layer.parameters(), lr=0.1, **options)
        ours = schedule(opt)
        step = ud.train_step(layer, ud.nn.MSELoss(), opt)
        key = "momentum" if "momentum" in options else "betas"
        for _ in range(steps):
            expected.zero_grad()
            torch.nn.functional.mse_loss(reference(torch.tensor(X)), torch.tensor(Y)).backward()
            expected.step()
            theirs.step()
            step(ud.tensor(X), ud.tensor(Y))
            ours.step()
            assert opt.param_groups[0][key] == pytest.approx(expected.param_groups[0][key], rel=1e-12)
            assert opt.lr == pytest.approx(expected.param_groups[0]["lr"], rel=1e-12)
        assert step.trace_count in (None, 1)
        for name, value in reference.state_dict().items():
            assert max_relative_difference(layer.state_dict()[name], value.numpy()) < 1e-5, (unidl_class, name)


def test_cyclic_lr_cycles_momentum_and_beta1_as_torch(backend):
    """``CyclicLR`` with ``cycle_momentum=True`` (PyTorch's default) writes each step's rate and momentum (SGD) or
    beta1 (Adam): torch.optim's trajectory under torch's CyclicLR, inside one compiled train step."""
    _cycled_momentum_as_torch([(ud.optim.SGD, torch.optim.SGD, dict(momentum=0.9)),
                               (ud.optim.Adam, torch.optim.Adam, dict())],
                              lambda o: ud.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, mode="triangular2"),
                              lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, mode="triangular2"), 6)


def test_a_nesterov_momentum_cycled_down_to_0_runs_on_as_torch(backend):
    """A Nesterov SGD's momentum cycled to 0 (``base_momentum=0``) runs on as torch.optim's, which checks nesterov
    against momentum only when built (it raised in the schedule's second step, its rate already written)."""
    _cycled_momentum_as_torch([(ud.optim.SGD, torch.optim.SGD, dict(momentum=0.9, nesterov=True))],
                              lambda o: ud.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, base_momentum=0.0),
                              lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, base_momentum=0.0), 6)


def test_one_cycle_cycles_momentum_and_beta1_as_torch(backend):
    """``OneCycleLR`` (``cycle_momentum=True``, the default as PyTorch's) writes each step's momentum (SGD, RMSprop) or
    beta1 (Adam) into the param groups: torch.optim's trajectory under torch's OneCycleLR, inside one compiled train
    step."""
    _cycled_momentum_as_torch([(ud.optim.SGD, torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
                               (ud.optim.Adam, torch.optim.Adam, dict()),
                               (ud.optim.RMSprop, torch.optim.RMSprop, dict(momentum=0.5))],
                              lambda o: ud.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=6, three_phase=True),
                              lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=6, three_phase=True), 5)


GRAPH_BACKENDS = [name for name in ("tensorflow", "jax", "keras") if name in ud.available_backends()]


@pytest.mark.parametrize("name", GRAPH_BACKENDS)
def test_options_never_changed_are_constants_of_the_compiled_step(name):
    """Default SGD (momentum 0, no weight decay, never changed) compiles to plain SGD: the step holds its options
    as constants and leaves their terms out, never reading their variables (NaN written into them behind the
    optimizer's back changes nothing: torch.optim.SGD's trajectory) and never touching the momentum buffer. The
    first change of momentum binds that option alone: one retrace, then the step reads momentum (and only it:
    weight decay's variable still holds NaN) and takes torch's momentum steps."""
    from unidl import config

    with ud.use_backend(name):
        layer = ud.nn.Linear(4, 3)
        layer.load_state_dict(LAYER)
        opt = ud.optim.SGD(layer.parameters(), lr=0.1)
        for key in ("momentum", "weight_decay"):
            for variable in opt.native.option_variables(0, key):
                config.backend().assign(variable, np.float64(np.nan))
        step = ud.train_step(layer, ud.nn.MSELoss(), opt)
        traces = []
        for index in range(4):
            if index == 2:
                opt.param_groups[0]["momentum"] = 0.9
            step(ud.tensor(X), ud.tensor(Y))
            traces.append(step.trace_count)
            if index == 1:
                buffers = [entry["momentum_buffer"] for entry in opt.state_dict()["slots"]]
                assert all(not np.any(buffer) for buffer in buffers), "plain SGD wrote the momentum buffer"
        # (None: Keras's own jit on Keras-on-JAX)
        assert traces == [1, 1, 2, 2] or (traces == [None] * 4 and name == "keras"), traces
    # (torch.optim's groups: the weight, then the bias; both change alike here)
    expected = _torch_trajectory_with_changes(torch.optim.SGD, dict(lr=0.1), {},
                                              {2: [(0, "momentum", 0.9), (1, "momentum", 0.9)]}, 4)
    for key, value in expected.items():
        assert max_relative_difference(layer.state_dict()[key], value) < 1e-5, key


def test_a_function_calling_apply_retraces_at_an_options_first_change(backend):
    """``ud.function`` over a loop body that calls ``opt.apply``: its graph holds options never changed as
    constants, so an option's first change retraces it once and later changes do not; torch.optim's trajectory."""
    layer = ud.nn.Linear(4, 3)
    layer.load_state_dict(LAYER)
    opt = ud.optim.SGD([{"params": [layer.weight]}, {"params": [layer.bias]}], lr=0.1)
    loss = ud.nn.MSELoss()

    @ud.function
    def train(x, y):
        _, grads = ud.value_and_grad(lambda: loss(layer(x), y), layer.parameters())()
        opt.apply(grads)
        return 0.0

    changes = {1: [(1, "momentum", 0.9)], 2: [(1, "momentum", 0.5)], 3: [(0, "weight_decay", 0.1)]}
    traces = []
    for index in range(4):
        for group, key, value in changes.get(index, []):
            opt.param_groups[group][key] = value
        train(ud.tensor(X), ud.tensor(Y))
        traces.append(train.trace_count)
    if traces[0] is not None:  # (None: eager torch)
        assert traces == _expected_traces(changes, 4) == [1, 2, 2, 3], traces
    expected = _torch_trajectory_with_changes(torch.optim.SGD, dict(lr=0.1), {}, changes, 4)
    for key, value in expected.items():
        assert max_relative_difference(layer.state_dict()[key], value) < 1e-5, key


@pytest.mark.parametrize("name", GRAPH_BACKENDS)
def test_a_first_change_retraces_only_what_runs_that_optimizer(name):
    """Two models with an optimizer each, a compiled train step each, and a ``ud.function`` that uses neither
    optimizer (an evaluation of the first model): the first change of optimizer A's momentum retraces A's step once
    and neither B's step nor the evaluation (a graph holds only the options of the optimizers whose rule its
    traces ran); a later change of A's momentum retraces nothing."""
    with ud.use_backend(name):
        models = [ud.nn.Linear(4, 3) for _ in range(2)]
        optimizers = [ud.optim.SGD(model.parameters(), lr=0.1) for model in models]
        steps = [ud.train_step(model, ud.nn.MSELoss(), opt) for model, opt in zip(models, optimizers)]
        evaluate = ud.function(lambda x: models[0](x))
        counts = []
        for momentum in (None, 0.9, 0.5):  # A's momentum set before each call
            if momentum is not None:
                optimizers[0].param_groups[0]["momentum"] = momentum
            for step in steps:
                step(ud.tensor(X), ud.tensor(Y))
            evaluate(ud.tensor(X))
            counts.append((steps[0].trace_count, steps[1].trace_count, evaluate.trace_count))
    expected = [(1, 1, 1), (2, 1, 1), (2, 1, 1)]
    if name == "keras" and None in counts[0]:  # (None: Keras's own jit on Keras-on-JAX, eager Keras-on-torch)
        expected = [tuple(None if first is None else e for first, e in zip(counts[0], row)) for row in expected]
    assert counts == expected, counts


def test_fit_follows_an_options_first_change_mid_epoch(backend):
    """A callback of ``ud.fit`` changing an option for the first time in the middle of an epoch (Keras's own
    compiled step on Keras-on-JAX, unidl's graph elsewhere): the next batch already uses it, as torch.optim's."""
    layer = ud.nn.Linear(4, 3)
    layer.load_state_dict(LAYER)
    opt = ud.optim.SGD(layer.parameters(), lr=0.1)

    def change(batch, logs):
        if batch == 0:
            opt.param_groups[0]["momentum"] = 0.9

    ud.fit(layer, (X, Y), batch_size=2, epochs=1, shuffle=False, verbose=0, loss=ud.nn.MSELoss(), optimizer=opt,
           callbacks=[ud.callbacks.LambdaCallback(on_batch_end=change)])
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict({k: torch.tensor(v) for k, v in LAYER.items()})
    expected = torch.optim.SGD(reference.parameters(), lr=0.1)
    for batch in range(3):
        expected.zero_grad()
        rows = slice(2 * batch, 2 * batch + 2)
        torch.nn.functional.mse_loss(reference(torch.tensor(X[rows])), torch.tensor(Y[rows])).backward()
        expected.step()
        if batch == 0:
            expected.param_groups[0]["momentum"] = 0.9
    for key, value in reference.state_dict().items():
        assert max_relative_difference(layer.state_dict()[key], value.detach().numpy()) < 1e-5, key


FIT_CASES = {  # (unidl class, torch class, constructor options, options of the second group)
    "NAdam": (ud.optim.NAdam, torch.optim.NAdam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
              dict(lr=0.05, momentum_decay=0.01, decoupled_weight_decay=False)),
    "RAdam": (ud.optim.RAdam, torch.optim.RAdam, dict(lr=0.01), dict(lr=0.05, weight_decay=0.1,
                                                                      decoupled_weight_decay=True)),
    "Adamax": (ud.optim.Adamax, torch.optim.Adamax, dict(lr=0.01), dict(lr=0.05, betas=(0.5, 0.9), maximize=True)),
    "Adadelta": (ud.optim.Adadelta, torch.optim.Adadelta, dict(lr=1.0), dict(lr=0.5, rho=0.5, weight_decay=0.1)),
    "Rprop": (ud.optim.Rprop, torch.optim.Rprop, dict(lr=0.01, etas=(0.3, 1.5)),
              dict(lr=0.05, step_sizes=(1e-3, 0.06), maximize=True)),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_fit_with_a_schedule_stepped_per_batch_follows_torch_optim(backend, case):
    """``fit`` (a compiled step: unidl's, or Keras's own trainer) over two param groups of their own options, with a
    ``StepLR`` stepped after every batch: torch.optim's trajectory under torch's StepLR (six steps: RAdam's
    rectification is on at the sixth)."""
    unidl_class, torch_class, options, second = FIT_CASES[case]
    layer = ud.nn.Linear(4, 3)
    layer.load_state_dict(LAYER)
    opt = unidl_class([{"params": [layer.weight]}, {"params": [layer.bias], **second}], **options)
    schedule = ud.callbacks.LearningRateScheduler(ud.optim.lr_scheduler.StepLR(opt, 2, 0.5), interval="batch")
    ud.fit(layer, (X, Y), batch_size=1, epochs=1, shuffle=False, verbose=0, loss=ud.nn.MSELoss(), optimizer=opt,
           callbacks=[schedule])
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict({k: torch.tensor(v) for k, v in LAYER.items()})
    expected = torch_class([{"params": [reference.weight]}, {"params": [reference.bias], **second}], **options)
    theirs = torch.optim.lr_scheduler.StepLR(expected, 2, 0.5)
    for row in range(len(X)):
        expected.zero_grad()
        torch.nn.functional.mse_loss(reference(torch.tensor(X[row:row + 1])), torch.tensor(Y[row:row + 1])).backward()
        expected.step()
        theirs.step()
    for key, value in reference.state_dict().items():
        assert max_relative_difference(layer.state_dict()[key], value.detach().numpy()) < 1e-5, key
