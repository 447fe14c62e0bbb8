"""Optimizers: one and ten steps agree across backends to 1e-6 on the same parameters and gradients;
PyTorch's defaults; validation; L1; schedules; state round trips."""

import copy
import os

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference

R = np.random.default_rng(3)
START = R.standard_normal((20, 10)).astype(np.float32)
GRADS = [(R.standard_normal((20, 10)) * scale * (R.random((20, 10)) > 0.3)).astype(np.float32)
         for scale in np.logspace(-6, 0, 10)]

CASES = {
    "SGD": (ud.optim.SGD, dict(lr=0.1)),
    "SGD-momentum": (ud.optim.SGD, dict(lr=0.1, momentum=0.9)),
    "SGD-nesterov-wd": (ud.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "SGD-l1": (ud.optim.SGD, dict(lr=0.1, l1=1e-2)),
    "Adam": (ud.optim.Adam, dict(lr=1e-2)),
    "Adam-wd": (ud.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, betas=(0.8, 0.99), eps=1e-6)),
    "AdamW": (ud.optim.AdamW, dict(lr=1e-2)),
    "RMSprop": (ud.optim.RMSprop, dict(lr=1e-2)),
    "RMSprop-wd": (ud.optim.RMSprop, dict(lr=1e-2, alpha=0.9, weight_decay=1e-3)),
    "RMSprop-momentum-centered": (ud.optim.RMSprop, dict(lr=1e-2, alpha=0.9, momentum=0.9, centered=True)),
    "Adagrad": (ud.optim.Adagrad, dict(lr=1e-1)),
    "Adagrad-init": (ud.optim.Adagrad, dict(lr=1e-1, initial_accumulator_value=0.1, weight_decay=1e-3)),
    "Adam-amsgrad-maximize": (ud.optim.Adam, dict(lr=1e-2, amsgrad=True, maximize=True, weight_decay=1e-2)),
    "AdamW-amsgrad": (ud.optim.AdamW, dict(lr=1e-2, amsgrad=True)),
    "SGD-momentum-maximize": (ud.optim.SGD, dict(lr=0.1, momentum=0.9, maximize=True, weight_decay=1e-2)),
    "RMSprop-maximize": (ud.optim.RMSprop, dict(lr=1e-2, maximize=True, momentum=0.5)),
    "Adagrad-lr_decay-maximize": (ud.optim.Adagrad, dict(lr=1e-1, lr_decay=0.1, maximize=True)),
    "SGD-dampening": (ud.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    "Adam-decoupled": (ud.optim.Adam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    "NAdam": (ud.optim.NAdam, dict(lr=1e-2, weight_decay=1e-2, momentum_decay=0.01)),
    "RAdam-decoupled": (ud.optim.RAdam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    "Adamax": (ud.optim.Adamax, dict(lr=1e-2, weight_decay=1e-2)),
    "Adadelta": (ud.optim.Adadelta, dict(lr=1.0, rho=0.8, maximize=True)),
    "Rprop": (ud.optim.Rprop, dict(lr=1e-2, etas=(0.3, 1.5), step_sizes=(1e-3, 2e-2))),
}


class Holder(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = self.parameter(START)


def _steps(backend, cls, kwargs, n):
    """The weights and the optimizer's state after ``n`` steps of ``GRADS`` on ``backend``."""
    return _steps_at(backend, cls, kwargs, (n,))[n]


def _steps_at(backend, cls, kwargs, counts):
    """``_steps`` after each number of steps in ``counts``, of one run: {count: (weights, state)}."""
    taken = {}
    with ud.use_backend(backend):
        holder = Holder()
        optimizer = cls(holder.parameters(), **kwargs)
        for index, g in enumerate(GRADS[:max(counts)], start=1):
            optimizer.apply([ud.tensor(g)])
            if index in counts:  # (copies: torch's steps go on in place)
                taken[index] = copy.deepcopy((holder.state_dict()["w"], optimizer.state_dict()))
        return taken


def _torch_optim_steps(cls, kwargs, n):
    """Plain ``torch.optim``'s weights after ``n`` steps of ``GRADS`` with ``cls``'s namesake (None for unidl's L1)."""
    import torch

    if kwargs.get("l1"):
        return None
    param = torch.nn.Parameter(torch.tensor(START))
    optimizer = getattr(torch.optim, cls.__name__)([param], **kwargs)
    for g in GRADS[:n]:
        param.grad = torch.tensor(g)
        optimizer.step()
    return param.detach().numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_parity(case):
    """Every backend's weights and slots agree with the torch backend's, and those with plain ``torch.optim``'s (the
    oracle: the torch backend runs unidl's own rule where torch.optim cannot run it), to 1e-6 in float32, after 1
    and after 10 steps (of one run per backend)."""
    cls, kwargs = CASES[case]
    runs = {b: _steps_at(b, cls, kwargs, (1, 10)) for b in ud.available_backends()}
    for n in (1, 10):
        results = {b: run[n] for b, run in runs.items()}
        reference, ref_state = results["torch"]
        assert not np.array_equal(reference, START)
        oracle = _torch_optim_steps(cls, kwargs, n)
        assert oracle is None or max_relative_difference(reference, oracle) < 1e-6
        for name, (weights, state) in results.items():
            assert max_relative_difference(weights, reference) < 1e-6, (name, n)
            assert state["step"] == n
            for slot in ref_state["slots"][0]:
                assert max_relative_difference(state["slots"][0][slot], ref_state["slots"][0][slot]) < 1e-6, \
                    (name, n, slot)


def _compiled_steps_fuse_multiply_adds() -> bool:
    """Whether the current backend's compiled functions round ``a + w * (b - a)`` once, as a fused multiply-add
    (XLA contracts it: jax, Keras-on-JAX; TensorFlow's graphs round the product and the sum apart)."""
    a, b = START.ravel(), GRADS[-1].ravel()
    got = ud.to_numpy(ud.function(lambda a, b: a + 0.1 * (b - a))(ud.tensor(a), ud.tensor(b)))
    # (the product of two float32 numbers is exact in float64: only the sum rounds, to float64 then float32)
    fused = (a.astype(np.float64) + float(np.float32(0.1)) * (b - a).astype(np.float64)).astype(np.float32)
    return np.array_equal(got, fused)


def test_adams_moments_round_as_torch_optims(backend):
    """Adam's ``exp_avg`` and ``exp_avg_sq`` after 10 steps of ``GRADS`` in a compiled function, against plain
    ``torch.optim.Adam``'s: torch's kernels round each moment once (``lerp_`` and ``addcmul_`` are fused
    multiply-adds), so a backend whose compiled steps fuse a multiply and an add gives them bit for bit (jax fused
    the other product of ``exp_avg_sq``'s sum: one rounding off torch's in 16-22% of the elements from the second
    step); one that rounds twice (TensorFlow) within one rounding of the largest element."""
    import torch

    param = torch.nn.Parameter(torch.tensor(START))
    reference = torch.optim.Adam([param], lr=1e-2)
    holder = Holder()
    optimizer = ud.optim.Adam(holder.parameters(), lr=1e-2)
    step = ud.function(lambda g: optimizer.apply([g]))
    for g in GRADS:
        param.grad = torch.tensor(g)
        reference.step()
        step(ud.tensor(g))
    fused = _compiled_steps_fuse_multiply_adds()
    for name, slot in optimizer.state_dict()["slots"][0].items():
        expected = reference.state[param][name].numpy()
        if fused:
            assert np.array_equal(slot, expected), (name, int((slot != expected).sum()))
        else:
            assert np.abs(slot - expected).max() <= np.spacing(np.abs(expected).max()), name


def test_sgd_rule_against_numpy():
    weights, _ = _steps("torch", ud.optim.SGD, dict(lr=0.1, momentum=0.9), 3)
    p, b = START.astype(np.float64), np.zeros_like(START, dtype=np.float64)
    for g in GRADS[:3]:
        b = 0.9 * b + g
        p = p - 0.1 * b
    assert max_relative_difference(weights, p) < 1e-6


class UnfusedSGD(ud.optim.SGD):
    """SGD that no backend may run as a fused kernel: the rule the fused kernels must reproduce."""

    def heavy_ball(self):
        return None


@pytest.mark.parametrize("kwargs", [dict(lr=0.1, momentum=0.9),
                                    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, l1=1e-3)])
def test_fused_momentum_kernel_is_the_update_rule(backend, kwargs):
    fused, fused_state = _steps(backend, ud.optim.SGD, kwargs, 10)
    rule, rule_state = _steps(backend, UnfusedSGD, kwargs, 10)
    assert not np.array_equal(rule, START)
    assert max_relative_difference(fused, rule) < 1e-7
    assert max_relative_difference(fused_state["slots"][0]["momentum_buffer"],
                                   rule_state["slots"][0]["momentum_buffer"]) < 1e-7


class HalfStepSGD(ud.optim.SGD):
    """A subclass with its own rule: graph backends must run it, not the fused kernel for SGD's."""

    def update(self, param, grad, slots, lr, step, ops):
        delta, slots = super().update(param, grad, slots, lr, step, ops)
        return 0.5 * delta, slots


def test_sgd_subclass_with_its_own_rule_is_not_fused(backend):
    holder = Holder()
    HalfStepSGD(holder.parameters(), lr=0.1, momentum=0.9).apply([ud.tensor(GRADS[-1])])
    weights = holder.state_dict()["w"]
    assert max_relative_difference(weights - START, -0.5 * 0.1 * GRADS[-1]) < 1e-5


class SignMomentum(ud.optim.Optimizer):
    """A user's own optimizer: momentum on the sign of the gradient, with a step-dependent rate."""

    slots = ("velocity",)
    uses_step = True

    def __init__(self, params, lr=0.1, beta=0.5):
        super().__init__(params, lr, beta=beta)

    def update(self, param, grad, slots, lr, step, ops):
        velocity = self.hyper["beta"] * slots["velocity"] + ops.sign(grad)
        return (lr / step) * velocity, {"velocity": velocity}


def _sign_momentum_numpy(n, lr=0.1, beta=0.5, l1=0.0):
    p, v = START.astype(np.float64), np.zeros(START.shape)
    for t, g in enumerate(GRADS[:n], start=1):
        v = beta * v + np.sign(g + l1 * np.sign(p))
        p = p - lr / t * v
    return p, v


class Scaled(Holder):
    """``x * w``: under the loss ``sum(output * y)`` of an input of ones, ``w``'s gradient is ``y``."""

    def forward(self, x):
        return x * self.w


class GradientAsTarget(ud.nn.Module):
    """The loss ``sum(output * y)``."""

    def forward(self, output, y):
        return ud.ops.sum(output * y)


class _ScaledSGD(ud.optim.SGD):
    """A user's rule that reads its own Python attribute at every update."""

    factor = 1.0

    def update(self, param, grad, slots, lr, step, ops):
        return self.factor * lr * grad, {}


def test_a_users_rule_reads_its_own_attribute_at_every_eager_step(backend):
    """``train_step(eager=True)`` runs a user's ``update()`` at every step on every backend, as torch's loop runs
    its optimizer's Python: an attribute set to 0 between steps stops the updates (jax's eager step, compiled once
    for a user's rule, kept the value of its first step and moved the weight again)."""
    model = ud.nn.Linear(3, 2)
    model.load_state_dict({"weight": np.full((2, 3), 0.5, np.float32), "bias": np.zeros(2, np.float32)})
    optimizer = _ScaledSGD(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, eager=True)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    step(x, y)
    moved = ud.to_numpy(model.weight).copy()
    assert not np.allclose(moved, 0.5)
    optimizer.factor = 0.0
    step(x, y)
    np.testing.assert_array_equal(ud.to_numpy(model.weight), moved)
    optimizer.factor = 2.0
    step(x, y)
    assert not np.array_equal(ud.to_numpy(model.weight), moved)


def test_user_optimizer_subclass_runs_its_own_rule_on_every_backend(backend):
    """A user's ``update()`` is the rule on every backend (torch included: no torch.optim stands in), through
    ``apply()``, a compiled ``train_step``, ``fit`` and an eager ``train_step``."""
    holder = Holder()
    optimizer = SignMomentum(holder.parameters())
    assert SignMomentum.builtin_rule() is None
    for g in GRADS[:4]:
        optimizer.apply([ud.tensor(g)])
    expected, velocity = _sign_momentum_numpy(4)
    assert max_relative_difference(holder.state_dict()["w"], expected) < 1e-6
    state = optimizer.state_dict()
    assert state["step"] == 4
    assert max_relative_difference(state["slots"][0]["velocity"], velocity) < 1e-6
    # the state round-trips into a fresh optimizer, which continues the same trajectory
    again = Holder()
    again.load_state_dict(holder.state_dict())
    resumed = SignMomentum(again.parameters())
    resumed.load_state_dict(state)
    for g in GRADS[4:6]:
        optimizer.apply([ud.tensor(g)])
        resumed.apply([ud.tensor(g)])
    assert max_relative_difference(again.state_dict()["w"], holder.state_dict()["w"]) < 1e-7
    # the same rule compiled: two steps of train_step, then two of fit (batches of one, in order), GRADS[:4] in all
    model, ones = Scaled(), np.ones((1, *START.shape), np.float32)
    optimizer = SignMomentum(model.parameters())
    step = ud.train_step(model, GradientAsTarget(), optimizer)
    for g in GRADS[:2]:
        step(ud.tensor(ones), ud.tensor(g[None]))
    ud.fit(model, np.repeat(ones, 2, axis=0), np.stack(GRADS[2:4]), batch_size=1, epochs=1, shuffle=False,
           loss=GradientAsTarget(), optimizer=optimizer, verbose=0)
    assert max_relative_difference(model.state_dict()["w"], expected) < 1e-6
    assert optimizer.state_dict()["step"] == 4
    assert max_relative_difference(optimizer.state_dict()["slots"][0]["velocity"], velocity) < 1e-6
    # and in an eager step (on jax its update one compiled program of this rule)
    model = Scaled()
    optimizer = SignMomentum(model.parameters())
    step = ud.train_step(model, GradientAsTarget(), optimizer, eager=True)
    for g in GRADS[:3]:
        step(ud.tensor(ones), ud.tensor(g[None]))
    expected, velocity = _sign_momentum_numpy(3)
    assert max_relative_difference(model.state_dict()["w"], expected) < 1e-6
    assert optimizer.state_dict()["step"] == 3
    assert max_relative_difference(optimizer.state_dict()["slots"][0]["velocity"], velocity) < 1e-6


class Float64SignMomentum(SignMomentum):
    """A user's load that casts every slot by NumPy's ``astype`` before unidl's load takes it."""

    def load_state_dict(self, state):
        self.cast = [{name: value.astype(np.float64) for name, value in entry.items()} for entry in state["slots"]]
        super().load_state_dict(dict(state, slots=self.cast))


class CheckedSignMomentum(SignMomentum):
    """A user's check that reads each slot's values (``.min()``) before unidl's."""

    def check_state_dict(self, state):
        if any(value.min() < -1e6 for entry in state["slots"] for value in entry.values()):
            raise ud.errors.CheckpointStateError("velocity out of range")
        super().check_state_dict(state)


@pytest.mark.parametrize("cls", [Float64SignMomentum, CheckedSignMomentum])
def test_a_subclass_overriding_its_load_gets_the_checkpoints_slots_as_arrays(backend, tmp_path, cls):
    """``load_checkpoint`` hands unidl's own load each slot unread (read as it is written), and a subclass that
    overrides ``load_state_dict`` or ``check_state_dict`` arrays, as ``load_state_dict`` is given them."""
    holder = Holder()
    optimizer = cls(holder.parameters())
    for g in GRADS[:3]:
        optimizer.apply([ud.tensor(g)])
    path = ud.save_checkpoint(tmp_path, holder, optimizer)
    again = Holder()
    resumed = cls(again.parameters())
    ud.load_checkpoint(path, again, resumed)
    saved, loaded = optimizer.state_dict(), resumed.state_dict()
    assert loaded["step"] == saved["step"] == 3
    np.testing.assert_array_equal(loaded["slots"][0]["velocity"], saved["slots"][0]["velocity"])
    if cls is Float64SignMomentum:
        np.testing.assert_array_equal(resumed.cast[0]["velocity"], saved["slots"][0]["velocity"])


def test_builtin_rule_names_the_fast_path_only_when_the_rule_is_unchanged():
    class Defaults(ud.optim.Adam):  # new defaults, same rule: still Adam's fast path
        def __init__(self, params):
            super().__init__(params, lr=3e-4)

    assert ud.optim.AdamW.builtin_rule() == "AdamW"
    assert Defaults.builtin_rule() == "Adam"
    assert HalfStepSGD.builtin_rule() is None
    assert UnfusedSGD.builtin_rule() is None


def test_torch_style_step_runs_a_user_rule():
    with ud.use_backend("torch"):
        model = ud.models.TwoLayerNet(4, 3, 1)
        optimizer = SignMomentum(model.parameters(), lr=0.1)
        loss = ud.nn.MSELoss()(model(ud.tensor(np.ones((2, 4)))), ud.tensor(np.zeros((2, 1))))
        optimizer.zero_grad()
        loss.backward()
        before = model.state_dict()
        signs = {name: np.sign(ud.to_numpy(p.grad)) for name, p in model.named_parameters()}
        optimizer.step()
        after = model.state_dict()
        for name in signs:
            assert np.allclose(before[name] - after[name], 0.1 * signs[name], atol=1e-7), name


# the backends whose optimizers run inside TensorFlow's graphs: keras where Keras runs on TensorFlow (KERAS_BACKEND
# unset or tensorflow, read here without importing Keras); on its other frameworks they run in JAX's or torch's code
KERAS_ON_TENSORFLOW = os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
TENSORFLOW_GRAPHS = ["tensorflow"] + (["keras"] if KERAS_ON_TENSORFLOW else [])


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_sgd_momentum_runs_tensorflows_fused_kernel_in_graphs(name):
    import tensorflow as tf

    def kernels(cls, **kwargs):
        with ud.use_backend(name):
            optimizer = cls(Holder().parameters(), lr=0.1, **kwargs)
            optimizer.apply([ud.tensor(GRADS[0])])  # builds Keras's slots outside the trace
            graph = tf.function(lambda g: optimizer.apply([g])).get_concrete_function(
                tf.TensorSpec(START.shape, tf.float32)).graph
            library = graph.as_graph_def().library.function  # the update runs in the guard's tf.cond branch
            return {op.type for op in graph.get_operations()} | {n.op for f in library for n in f.node_def}

    assert "ResourceApplyMomentum" in kernels(ud.optim.SGD, momentum=0.9)
    assert "ResourceApplyMomentum" not in kernels(UnfusedSGD, momentum=0.9)
    # momentum 0, never changed: a constant of the graph, which runs plain SGD (no momentum kernel, no buffer)
    assert "ResourceApplyMomentum" not in kernels(ud.optim.SGD)


def test_l1_matches_hand_written_penalty(backend):
    holder = Holder()
    optimizer = ud.optim.SGD(holder.parameters(), lr=0.1, l1=0.05)
    optimizer.apply([ud.tensor(GRADS[-1])])
    expected = START - 0.1 * (GRADS[-1] + 0.05 * np.sign(START))
    assert max_relative_difference(holder.state_dict()["w"], expected) < 1e-6


@pytest.mark.parametrize("groups, options, penalty", [
    ([{"l1": 0.05}], {}, 0.05),  # a group's own l1 (it was ignored on torch)
    ([{"l1": 0.05}, {"l1": 0.05}], {}, 0.05),
    ([{"l1": 0.0}], {"l1": 0.05}, 0.0),  # (torch added the constructor's)
])
def test_l1_of_the_param_groups_is_the_penalty_applied(backend, groups, options, penalty):
    """Every group's own ``l1`` is its penalty, also where torch.optim runs the rule (on torch, which added the
    constructor's ``l1`` to the gradients: a group's ``l1=0.05`` trained without penalty)."""
    holder = Holder()
    starts = np.array_split(np.arange(START.size), len(groups))
    parts = [holder.parameter(START.reshape(-1)[part]) for part in starts]
    optimizer = ud.optim.SGD([{"params": [p], **g} for p, g in zip(parts, groups)], lr=0.1, momentum=0.9, **options)
    grads = GRADS[-1].reshape(-1)
    for _ in range(2):
        optimizer.apply([ud.tensor(grads[part]) for part in starts])
    for part, parameter in zip(starts, parts):
        start = START.reshape(-1)[part]
        velocity = grads[part] + penalty * np.sign(start)
        first = start - 0.1 * velocity
        velocity = 0.9 * velocity + grads[part] + penalty * np.sign(first)
        assert max_relative_difference(ud.to_numpy(parameter), first - 0.1 * velocity) < 1e-6


def test_a_gradient_of_another_shape_or_not_of_floats_is_refused_before_anything_changes(backend):
    """``apply`` checks each gradient against its parameter, eagerly and inside ``ud.function`` (where a graph knows
    the sizes only when it runs): another shape is a ``ShapeMismatchError`` naming both (jax broadcast a (1, 10)
    gradient into the parameter, tensorflow and keras did too in a graph, and eagerly raised after updating the
    parameters before it; a gradient of another rank in a graph traced for any sizes shows them as None),
    integers a ``DtypeMismatchError``; nothing changes. A float64 gradient of a float32
    parameter is cast to it, on every backend (tensorflow's kernels raised)."""
    model = ud.nn.Linear(10, 20)
    optimizer = ud.optim.Adam(model.parameters(), lr=0.1)
    before = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}
    good = [np.asarray(GRADS[0]), np.ones(20, np.float32)]
    in_graph = ud.function(lambda a, b: optimizer.apply([a, b]))
    for bad in ([good[0], np.ones((1, 20), np.float32)], [good[0][:1], good[1]]):
        for run in (optimizer.apply, lambda grads: in_graph(*map(ud.tensor, grads))):
            with pytest.raises(ud.errors.ShapeMismatchError,
                               match=r"Adam.apply: parameter \d of 2 \(in params order\) has shape \(20(, 10)?,?\), "
                                     r"its gradient \((1, (20|10)|None, None)\); each gradient must have its "
                                     r"parameter's shape"):
                run(bad)
    with pytest.raises(ud.errors.DtypeMismatchError, match="Adam.apply: gradient 1 holds int64 values; its "
                                                           "parameter is float32, and a gradient must hold floats"):
        optimizer.apply([good[0], ud.tensor(np.ones(20, np.int64))])
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(ud.to_numpy(value), before[key])
    assert optimizer.state_dict()["step"] == 0
    optimizer.apply([ud.tensor(good[0], "float64"), ud.tensor(good[1], "float64")])
    twin = ud.nn.Linear(10, 20)
    twin.load_state_dict(before)
    ud.optim.Adam(twin.parameters(), lr=0.1).apply([ud.tensor(g) for g in good])
    for key, value in twin.state_dict().items():
        assert ud.to_numpy(model.state_dict()[key]).dtype == np.float32
        np.testing.assert_array_equal(ud.to_numpy(model.state_dict()[key]), ud.to_numpy(value))


def test_pytorch_defaults():
    with ud.use_backend("torch"):
        params = Holder().parameters()
        assert ud.optim.Adam(params).hyper["eps"] == 1e-8 and ud.optim.Adam(params).lr == 1e-3
        assert ud.optim.Adam(params).hyper["betas"] == (0.9, 0.999)
        assert ud.optim.AdamW(params).hyper["weight_decay"] == 1e-2
        assert ud.optim.RMSprop(params).hyper["alpha"] == 0.99 and ud.optim.RMSprop(params).lr == 1e-2
        assert ud.optim.Adagrad(params).hyper["eps"] == 1e-10


@pytest.mark.parametrize("build, message", [
    (lambda p: ud.optim.SGD(p, lr=-0.1), r"SGD lr=-0.1 is invalid"),
    (lambda p: ud.optim.SGD(p, lr=0.1, momentum=1.0), r"SGD momentum=1.0 is invalid: it must lie in \[0.0, 1.0\)"),
    (lambda p: ud.optim.SGD(p, lr=0.1, momentum=-0.5), r"momentum=-0.5 is invalid"),
    (lambda p: ud.optim.SGD(p, lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda p: ud.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=0.9), "SGD nesterov must be True or False, got 0.9"),
    (lambda p: ud.optim.Adam(p, betas=(0.9, 1.0)), r"betas\[1\]=1.0 is invalid"),
    (lambda p: ud.optim.Adam(p, eps=-1), "eps=-1 is invalid"),
    (lambda p: ud.optim.SGD([], lr=0.1), "empty parameter list"),
    (lambda p: ud.optim.SGD(p, lr=0.1, l1=-1), "l1=-1 is invalid"),
    (lambda p: ud.optim.NAdam(p, lr=-1e-3), "NAdam lr=-0.001 is invalid"),
    (lambda p: ud.optim.NAdam(p, momentum_decay=-1), "NAdam momentum_decay=-1 is invalid"),
    (lambda p: ud.optim.RAdam(p, betas=(1.0, 0.9)), r"RAdam betas\[0\]=1.0 is invalid"),
    (lambda p: ud.optim.RAdam(p, weight_decay=-0.1), "RAdam weight_decay=-0.1 is invalid"),
    (lambda p: ud.optim.Adamax(p, betas=(0.9,)), r"Adamax betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
    (lambda p: ud.optim.Adamax(p, eps=-1e-8), "Adamax eps=-1e-08 is invalid"),
    (lambda p: ud.optim.Adadelta(p, rho=1.5), r"Adadelta rho=1.5 is invalid: it must lie in \[0.0, 1.0\]"),
    (lambda p: ud.optim.Adadelta(p, lr=-1), "Adadelta lr=-1 is invalid"),
    (lambda p: ud.optim.Rprop(p, etas=(0.5, 0.9)), r"Rprop etas must be a pair \(etaminus, etaplus\) with 0 < "
                                                    r"etaminus < 1 < etaplus, got \(0.5, 0.9\)"),
    (lambda p: ud.optim.Rprop(p, step_sizes=(float("nan"), 50)), r"Rprop step_sizes must be a pair of numbers"),
    (lambda p: ud.optim.Rprop([{"params": p, "etas": (0, 2)}]), r"Rprop param group 0 etas must be a pair"),
])
def test_invalid_hyperparameters(backend, build, message):
    with pytest.raises(ValueError, match=message):
        build(Holder().parameters())


def test_a_tensor_hyperparameter_is_named_in_the_same_words_on_every_backend(backend):
    """A framework's tensor given where a number is wanted (``lr``, ``momentum``) is the ``ValueError`` it was on
    every backend, but its message names the tensor by its shape and dtype (a 0-d one with its value, and the fix),
    the same words on every backend: it showed each framework's repr (``tensor([...])``, ``<tf.Tensor ...>``,
    ``Array(...)``)."""
    params = Holder().parameters()
    for build, message in [
        (lambda: ud.optim.SGD(params, lr=ud.tensor(np.array([0.1, 0.2], np.float32))),
         "SGD lr must be a number, got a tensor of shape (2,) and dtype float32"),
        (lambda: ud.optim.SGD(params, lr=ud.tensor(np.float32(0.1))),
         "SGD lr must be a number, got a 0-d tensor of dtype float32 holding 0.1; give a Python number, float(t)"),
        (lambda: ud.optim.SGD(params, lr=0.1, momentum=ud.tensor(np.zeros((1, 1), np.int64))),
         "SGD momentum must be a number, got a tensor of shape (1, 1) and dtype int64"),
        # NaN: no advice to give float(t), which is NaN too and refused alike (it was given)
        (lambda: ud.optim.SGD(params, lr=ud.tensor(np.float32("nan"))),
         "SGD lr must be a number, got a 0-d tensor of dtype float32 holding nan"),
        (lambda: ud.optim.SGD(params, lr=float("nan")), "SGD lr must be a number, not NaN, got nan"),
    ]:
        with pytest.raises(ValueError) as caught:
            build()
        assert str(caught.value) == message


@pytest.mark.parametrize("build, message", [
    (lambda p: ud.optim.RMSprop(p, foreach=True), "RMSprop foreach=True: unidl's RMSprop does not implement it"),
    (lambda p: ud.optim.Adam(p, fused=True), "Adam fused=True: .* takes fused at PyTorch's default only, None or False"),
    (lambda p: ud.optim.AdamW(p, capturable=True), "AdamW capturable=True: .* does not implement it"),
    (lambda p: ud.optim.SGD(p, 0.1, 0.9, foreach=True), "SGD foreach=True: .* training unlike torch.optim.SGD"),
    (lambda p: ud.optim.Adagrad(p, 0.1, 0.1, differentiable=True), "Adagrad differentiable=True: .* does not "),
    (lambda p: ud.optim.Adam(p, momentum=0), r"Adam has no option 'momentum': .* Adam takes lr, betas, eps, "
                                             r"weight_decay, amsgrad, maximize, decoupled_weight_decay, l1, clip_grad_norm"),
    (lambda p: ud.optim.SGD(p, lr=0.1, centered=False), "SGD has no option 'centered'"),
    (lambda p: ud.optim.NAdam(p, foreach=True), "NAdam foreach=True: unidl's NAdam does not implement it"),
    (lambda p: ud.optim.RAdam(p, capturable=True), "RAdam capturable=True: .* does not implement it"),
    (lambda p: ud.optim.Adamax(p, 0.1, (0.9, 0.99), 1e-8, 0, True), "Adamax foreach=True: .* torch.optim.Adamax"),
    (lambda p: ud.optim.Adadelta(p, 1.0, 0.9, 1e-6, 0, True), "Adadelta foreach=True: .* does not implement it"),
    (lambda p: ud.optim.RAdam(p, amsgrad=True), "RAdam has no option 'amsgrad'"),
    (lambda p: ud.optim.Rprop(p, differentiable=True), "Rprop differentiable=True: .* does not implement it"),
    (lambda p: ud.optim.Rprop(p, weight_decay=0.1), "Rprop has no option 'weight_decay'"),
])
def test_an_option_torch_has_and_unidl_does_not_is_an_error_not_ignored(build, message):
    """torch.optim's options that unidl's rule does not implement would train differently from torch if kept as
    unused hyperparameters: each is a TypeError naming it (by keyword or at its torch position), and an option the
    class's namesake does not have is one naming what the class takes (torch's TypeError too)."""
    with ud.use_backend("torch"):
        with pytest.raises(TypeError, match=message):
            build(Holder().parameters())


def test_positional_arguments_are_torch_optims(backend):
    """Each optimizer reads positional arguments in ``torch.optim``'s order (Adagrad read ``eps`` where torch reads
    ``lr_decay``, RMSprop ``l1`` where torch reads ``momentum``, silently: weights 0.97 apart, or NaN), and
    ``named_parameters()`` as torch.optim takes it: plain PyTorch's weights after three steps, float64."""
    import torch

    start = START.astype(np.float64)
    for build, reference in [
            (lambda p: ud.optim.SGD(p, 0.1, 0.9, 0, 1e-2, True), lambda p: torch.optim.SGD(p, 0.1, 0.9, 0, 1e-2, True)),
            (lambda p: ud.optim.Adam(p, 0.01, (0.8, 0.9), 1e-6, 0.1, False),
             lambda p: torch.optim.Adam(p, 0.01, (0.8, 0.9), 1e-6, 0.1, False)),
            (lambda p: ud.optim.AdamW(p, 0.01, (0.8, 0.9), 1e-6, 0.1),
             lambda p: torch.optim.AdamW(p, 0.01, (0.8, 0.9), 1e-6, 0.1)),
            (lambda p: ud.optim.RMSprop(p, 0.01, 0.9, 1e-6, 0.1, 0.9, True),
             lambda p: torch.optim.RMSprop(p, 0.01, 0.9, 1e-6, 0.1, 0.9, True)),
            (lambda p: ud.optim.Adagrad(p, 0.1, 0, 0.1, 0.2, 1e-6),
             lambda p: torch.optim.Adagrad(p, 0.1, 0, 0.1, 0.2, 1e-6)),
            (lambda p: ud.optim.NAdam(p, 0.01, (0.8, 0.9), 1e-6, 0.1, 0.01, True),
             lambda p: torch.optim.NAdam(p, 0.01, (0.8, 0.9), 1e-6, 0.1, 0.01, True)),
            (lambda p: ud.optim.RAdam(p, 0.01, (0.8, 0.9), 1e-6, 0.1, True),
             lambda p: torch.optim.RAdam(p, 0.01, (0.8, 0.9), 1e-6, 0.1, True)),
            (lambda p: ud.optim.Adamax(p, 0.01, (0.8, 0.9), 1e-6, 0.1, None),
             lambda p: torch.optim.Adamax(p, 0.01, (0.8, 0.9), 1e-6, 0.1, None)),
            (lambda p: ud.optim.Adadelta(p, 0.5, 0.8, 1e-4, 0.1, None),
             lambda p: torch.optim.Adadelta(p, 0.5, 0.8, 1e-4, 0.1, None)),
            (lambda p: ud.optim.Rprop(p, 0.01, (0.4, 1.5), (1e-3, 0.02)),
             lambda p: torch.optim.Rprop(p, 0.01, (0.4, 1.5), (1e-3, 0.02)))]:
        expected = torch.nn.Parameter(torch.tensor(start))
        optimizer = reference([expected])
        with ud.use_dtype("float64"):
            holder = Holder()
            holder.load_state_dict({"w": start})
            ours = build(holder.named_parameters())
            for g in GRADS[-3:]:
                expected.grad = torch.tensor(g, dtype=torch.float64)
                optimizer.step()
                ours.apply([ud.tensor(g.astype(np.float64))])
        # (NAdam too: its mu_product a float32 number, as torch.optim's in a float64 run; 5e-11 apart as a float64)
        assert max_relative_difference(holder.state_dict()["w"], expected.detach().numpy()) < 1e-12, type(ours)


@pytest.mark.parametrize("build, neutral", [
    (ud.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0, maximize=False, foreach=None, differentiable=False)),
    (ud.optim.Adam, dict(lr=0.01, amsgrad=False, fused=None, capturable=False, maximize=False,
                         decoupled_weight_decay=False)),
    (ud.optim.RMSprop, dict(lr=0.01, foreach=False, capturable=False)),
    (ud.optim.Adagrad, dict(lr=0.1, lr_decay=0, fused=None)),
    (ud.optim.NAdam, dict(lr=0.01, foreach=None, capturable=False, decoupled_weight_decay=False)),
    (ud.optim.RAdam, dict(lr=0.01, differentiable=False, decoupled_weight_decay=False, maximize=False)),
    (ud.optim.Adamax, dict(lr=0.01, foreach=None, capturable=False)),
    (ud.optim.Adadelta, dict(lr=1.0, foreach=False, differentiable=False)),
    (ud.optim.Rprop, dict(lr=0.01, foreach=None, capturable=False, maximize=False)),
])
def test_torchs_options_at_their_defaults_build_and_train_as_without_them(backend, build, neutral):
    """A ``torch.optim`` call copied as it is, with the options whose defaults are unidl's rule (``dampening=0``,
    ``amsgrad=False``, ``foreach=None``, ...): it builds and trains as without them (each was a ``TypeError``);
    any other value stays one."""
    plain = {k: v for k, v in neutral.items() if k == "lr" or (k == "momentum" and build is ud.optim.SGD)}
    runs = []
    for options in (neutral, plain):
        holder = Holder()
        optimizer = build(holder.parameters(), **options)
        for grads in GRADS[:3]:
            optimizer.apply([ud.tensor(grads)])
        runs.append(holder.state_dict()["w"])
    np.testing.assert_array_equal(runs[0], runs[1])
    with pytest.raises(TypeError, match="differentiable=True: .* does not implement it"):
        build(Holder().parameters(), **{**plain, "differentiable": True})


class _OwnRMSprop(ud.optim.RMSprop):
    """RMSprop's rule as a user's class: ``update()`` on every backend, torch's ``RuleOptimizer`` included."""

    def update(self, param, grad, slots, lr, step, ops):
        return super().update(param, grad, slots, lr, step, ops)


@pytest.mark.parametrize("cls", [ud.optim.RMSprop, _OwnRMSprop])
def test_rmsprop_momentum_and_centered_as_torch_optim(backend, cls):
    """``momentum`` and ``centered`` as ``torch.optim.RMSprop`` (plain PyTorch the oracle), in float64 to the last
    bits, through torch.optim's kernel and through unidl's rule; the slots are those the options use."""
    import torch

    start = START.astype(np.float64)
    for options in (dict(momentum=0.9), dict(centered=True), dict(momentum=0.5, centered=True, alpha=0.3,
                                                                      weight_decay=0.1)):
        reference = torch.nn.Parameter(torch.tensor(start))
        expected = torch.optim.RMSprop([reference], lr=0.01, **options)
        with ud.use_dtype("float64"):
            holder = Holder()
            holder.load_state_dict({"w": start})
            optimizer = cls(holder.parameters(), lr=0.01, **options)
            for g in GRADS:
                reference.grad = torch.tensor(g, dtype=torch.float64)
                expected.step()
                optimizer.apply([ud.tensor(g.astype(np.float64))])
        assert max_relative_difference(holder.state_dict()["w"], reference.detach().numpy()) < 1e-12, options
        state = optimizer.state_dict()["slots"][0]
        assert sorted(state) == sorted(set(expected.state[reference]) - {"step"})
        for name, value in state.items():
            assert max_relative_difference(value, expected.state[reference][name].numpy()) < 1e-12, (options, name)


def test_adamw_decays_as_torch_optim_bit_for_bit(backend):
    """AdamW multiplies the parameter by ``1 - lr * weight_decay`` before its step, as ``torch.optim.AdamW``: with
    no gradient to step by, 100 float32 steps give torch's weights bit for bit (``p - (lr wd p + step)``, the same in
    exact arithmetic, drifted 1.5e-6 from them)."""
    import torch

    reference = torch.nn.Parameter(torch.tensor(START))
    expected = torch.optim.AdamW([reference], lr=0.01, weight_decay=0.1)
    holder = Holder()
    optimizer = ud.optim.AdamW(holder.parameters(), lr=0.01, weight_decay=0.1)
    zeros = np.zeros_like(START)
    for _ in range(100):
        reference.grad = torch.tensor(zeros)
        expected.step()
        optimizer.apply([ud.tensor(zeros)])
    np.testing.assert_array_equal(holder.state_dict()["w"], reference.detach().numpy())


def test_nadam_keeps_mu_product_and_steps_as_torch_optim(backend):
    """NAdam's ``mu_product`` is one float32 number per parameter (0-d), as ``torch.optim.NAdam``'s, equal to it after
    40 float32 steps; the step is subtracted in torch's two ``addcdiv_`` in turn, so the weights stay within 2.5e-7
    of torch's (its one summed step drifted 5e-7 by then, 1.5e-6 after 300)."""
    import torch

    rng = np.random.default_rng(0)
    grads = [(rng.standard_normal(START.shape) * scale).astype(np.float32) for scale in np.logspace(-2, 0, 40)]
    reference = torch.nn.Parameter(torch.tensor(START))
    expected = torch.optim.NAdam([reference], lr=0.01)
    holder = Holder()
    optimizer = ud.optim.NAdam(holder.parameters(), lr=0.01)
    for g in grads:
        reference.grad = torch.tensor(g)
        expected.step()
        optimizer.apply([ud.tensor(g)])
    product = optimizer.state_dict()["slots"][0]["mu_product"]
    assert product.shape == () and product.dtype == np.float32
    assert product == expected.state[reference]["mu_product"].numpy()
    assert max_relative_difference(holder.state_dict()["w"], reference.detach().numpy()) < 2.5e-7


def test_rprop_takes_the_step_sizes_torch_optim_takes(backend):
    """Rprop's ``step_sizes`` as ``torch.optim.Rprop`` takes them (a ``ValueError`` before): a negative least step
    (as 0) and a least step above the largest (torch's clamp gives the largest) train as torch.optim's, and a torch
    state holding them loads."""
    import torch

    for sizes in ((-1.0, 50.0), (0.1, 0.01)):
        reference = torch.nn.Parameter(torch.tensor(START))
        expected = torch.optim.Rprop([reference], lr=0.05, step_sizes=sizes)
        holder = Holder()
        optimizer = ud.optim.Rprop(holder.parameters(), lr=0.05, step_sizes=sizes)
        for g in GRADS[-4:]:
            reference.grad = torch.tensor(g)
            expected.step()
            optimizer.apply([ud.tensor(g)])
        assert max_relative_difference(holder.state_dict()["w"], reference.detach().numpy()) < 1e-6, sizes
        resumed = ud.optim.Rprop(Holder().parameters())
        resumed.load_state_dict(expected.state_dict())
        assert resumed.param_groups[0]["step_sizes"] == sizes


NEW_RULES = {"NAdam": dict(lr=0.01, weight_decay=0.1), "RAdam": dict(lr=0.01, decoupled_weight_decay=True,
                                                                     weight_decay=0.1),
             "Adamax": dict(lr=0.01), "Adadelta": dict(rho=0.8), "Rprop": dict(lr=0.01, step_sizes=(1e-3, 0.05))}


def test_a_parameter_without_a_gradient_counts_no_step_as_in_torch_optim(backend):
    """NAdam, RAdam, Adamax, Adadelta and Rprop over two parameters, the second without a gradient at some steps
    (``.grad`` None in torch): the weights and per-parameter step counts of plain ``torch.optim`` (RAdam rectified
    from its 6th step on the first), the second untouched while it has none."""
    import torch

    has_gradient = [True, False, True, True, False, True, True, True, False]
    for name, options in NEW_RULES.items():
        references = [torch.nn.Parameter(torch.tensor(START)) for _ in range(2)]
        expected = getattr(torch.optim, name)(references, **options)
        holders = [Holder(), Holder()]
        optimizer = getattr(ud.optim, name)([h.w for h in holders], **options)
        for step, given in enumerate(has_gradient):
            grads = [GRADS[step], GRADS[step + 1] if given else None]
            for reference, g in zip(references, grads):
                reference.grad = None if g is None else torch.tensor(g)
            expected.step()
            optimizer.apply([None if g is None else ud.tensor(g) for g in grads])
        assert [int(expected.state[r]["step"]) for r in references] == [9, 6]
        # (Adadelta's rule reads no step count: it keeps none)
        assert optimizer.state_dict().get("param_steps", [9, 6]) == [9, 6], name
        for holder, reference in zip(holders, references):
            assert max_relative_difference(holder.state_dict()["w"], reference.detach().numpy()) < 1e-6, name


def test_the_torch_backend_runs_torch_optims_own_classes():
    """On the torch backend NAdam, RAdam, Adamax, Adadelta and Rprop run ``torch.optim``'s classes, as Adam does (a
    Python rule per tensor was 1.2 to 4.3 times slower), whose state is unidl's: a state saved before any update
    resumes as torch.optim starts (Rprop's step sizes at the lr, NAdam's mu_product at 1)."""
    import torch

    with ud.use_backend("torch"):
        for name, options in NEW_RULES.items():
            holder = Holder()
            optimizer = getattr(ud.optim, name)(holder.parameters(), **options)
            assert type(optimizer.native) is getattr(torch.optim, name)
            optimizer.load_state_dict(getattr(ud.optim, name)(Holder().parameters(), **options).state_dict())
            reference = torch.nn.Parameter(torch.tensor(START))
            expected = getattr(torch.optim, name)([reference], **options)
            for g in GRADS[-3:]:
                reference.grad = torch.tensor(g)
                expected.step()
                optimizer.apply([ud.tensor(g)])
            np.testing.assert_array_equal(holder.state_dict()["w"], reference.detach().numpy(), err_msg=name)


def test_rmsprop_slots_are_fixed_when_built(backend):
    """A group built with momentum=0 keeps no momentum buffer (torch.optim's after its first step): turning its
    momentum on, or ``centered`` at all, is one ``ValueError`` naming the way; a state of other slots does not
    load; OneCycleLR's momentum cycling needs momentum when built."""
    optimizer = ud.optim.RMSprop(Holder().parameters())
    assert sorted(optimizer.state_dict()["slots"][0]) == ["square_avg"]
    with pytest.raises(ValueError, match=r"cannot become 0.9: the group was built with momentum=0, .* build the "
                                         r"RMSprop with momentum > 0"):
        optimizer.param_groups[0]["momentum"] = 0.9
    with pytest.raises(ValueError, match=r"\['centered'\] cannot change after the optimizer is built"):
        optimizer.param_groups[0]["centered"] = True
    with pytest.raises(ValueError, match=r"OneCycleLR cycle_momentum=True: .* built with momentum=0.* or pass "
                                         r"cycle_momentum=False"):
        ud.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, 10)
    other = ud.optim.RMSprop(Holder().parameters(), momentum=0.9)
    other.apply([ud.tensor(GRADS[0])])
    other.param_groups[0]["momentum"] = 0.0  # (and back: the buffer stays)
    other.param_groups[0]["momentum"] = 0.5
    with pytest.raises(ValueError, match="momentum"):
        optimizer.load_state_dict(other.state_dict())
    assert optimizer.state_dict()["step"] == 0 and optimizer.param_groups[0]["momentum"] == 0


def test_apply_takes_numpy_gradients_as_tensors_with_every_option(backend):
    """``apply`` of NumPy arrays (or lists) gives what it gives for ``ud.tensor`` of them, with clipping, L1 and L2
    too (TensorFlow's value clipping raised an ``AttributeError``, Keras-on-torch's weight decay a ``TypeError``)."""
    options = dict(lr=0.1, weight_decay=0.1, l1=0.01, clip_grad_value=0.5, clip_grad_norm=0.8)
    runs = []
    for convert in (np.asarray, ud.tensor, lambda g: g.tolist()):
        holder = Holder()
        optimizer = ud.optim.Adam(holder.parameters(), **options)
        for g in GRADS[-2:]:
            optimizer.apply([convert(g)])
        runs.append(holder.state_dict()["w"])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[2], runs[1])


def test_step_takes_torch_optims_closure(backend):
    """``step(closure)`` calls the closure (zero_grad, forward, backward) and returns its loss, as ``torch.optim``'s:
    plain PyTorch's weights (LBFGS-style loops copied from PyTorch run); the backends that keep no gradients on
    the parameters explain the alternative before the closure runs."""
    import torch

    calls = []
    holder = Holder()
    optimizer = ud.optim.SGD(holder.parameters(), lr=0.1, momentum=0.9)
    if backend != "torch":
        with pytest.raises(RuntimeError, match="optimizer.apply"):
            optimizer.step(lambda: calls.append(1))
        assert calls == []
        return
    reference = torch.nn.Parameter(torch.tensor(START))
    expected = torch.optim.SGD([reference], lr=0.1, momentum=0.9)

    def closure(parameter, opt):
        def run():
            opt.zero_grad()
            loss = (parameter * parameter).sum()
            loss.backward()
            return loss
        return run

    for _ in range(3):
        ours, theirs = optimizer.step(closure(holder.w, optimizer)), expected.step(closure(reference, expected))
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    np.testing.assert_allclose(holder.state_dict()["w"], reference.detach().numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="closure must be a function"):
        optimizer.step(0.5)


def test_a_torch_format_state_is_named_as_such():
    """``load_state_dict`` of ``torch.optim.lr_scheduler``'s own state says what it is and what loads (it listed the
    keys it missed); ``torch.optim``'s own state loads (tests/optim/test_torch_optim_state.py), a state of neither
    format is named by the keys unidl's holds."""
    import torch

    from unidl.errors import CheckpointStateError

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    with ud.use_backend("torch"):
        ours = ud.optim.SGD(Holder().parameters(), lr=0.1)
        with pytest.raises(CheckpointStateError, match=r"must be a dict with .step., .lr. and .slots."):
            ours.load_state_dict({"state": {}})
        schedule = ud.optim.lr_scheduler.StepLR(ours, 2)
        with pytest.raises(CheckpointStateError, match="is a torch.optim.lr_scheduler state_dict, not unidl's"):
            schedule.load_state_dict(torch.optim.lr_scheduler.StepLR(optimizer, 2).state_dict())


def test_setting_negative_lr_is_rejected(backend):
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr=-1 is invalid"):
        optimizer.lr = -1


def _scheduled(backend, scheduler_factory, epochs=6):
    with ud.use_backend(backend):
        holder = Holder()
        optimizer = ud.optim.SGD(holder.parameters(), lr=0.5)
        scheduler = scheduler_factory(optimizer)
        rates = []
        for _ in range(epochs):
            optimizer.apply([ud.tensor(GRADS[-1])])
            rates.append(optimizer.lr)
            scheduler.step()
        return rates, holder.state_dict()["w"]


@pytest.mark.parametrize("factory, expected", [
    (lambda o: ud.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1), [0.5, 0.5, 0.05, 0.05, 0.005, 0.005]),
    (lambda o: ud.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4),
     [0.5, 0.5 * (1 + np.cos(np.pi / 4)) / 2, 0.25, 0.5 * (1 + np.cos(3 * np.pi / 4)) / 2, 0.0, 0.5 * (1 + np.cos(5 * np.pi / 4)) / 2]),
])
def test_schedules_apply_the_same_on_every_backend(factory, expected):
    runs = {b: _scheduled(b, factory) for b in ud.available_backends()}
    for name, (rates, weights) in runs.items():
        np.testing.assert_allclose(rates, expected, rtol=1e-12, atol=1e-15)
        assert max_relative_difference(weights, runs["torch"][1]) < 1e-6, name


def test_changing_lr_never_retraces_tensorflow(rng):
    with ud.use_backend("tensorflow"):
        model = ud.models.TwoLayerNet(6, 4, 2)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        scheduler = ud.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
        x, y = rng.standard_normal((8, 6)).astype(np.float32), np.zeros((8, 2), np.float32)
        before = model.state_dict()["linear2.bias"]
        for _ in range(4):
            step(x, y)
            scheduler.step()
        assert step.trace_count == 1
        assert optimizer.native.learning_rate.numpy() == pytest.approx(0.1 / 16)
        assert not np.array_equal(before, model.state_dict()["linear2.bias"])


@pytest.mark.parametrize("cls", [ud.optim.Adam, ud.optim.NAdam, ud.optim.RAdam, ud.optim.Adamax, ud.optim.Adadelta,
                                 ud.optim.Rprop])
def test_state_round_trip_across_backends(cls):
    weights, state = _steps("torch", cls, dict(lr=1e-2), 5)
    finals = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            holder = Holder()
            holder.load_state_dict({"w": weights})
            optimizer = cls(holder.parameters(), lr=1e-2)
            optimizer.load_state_dict(state)
            for g in GRADS[5:]:
                optimizer.apply([ud.tensor(g)])
            finals[name] = holder.state_dict()["w"]
    uninterrupted, _ = _steps("torch", cls, dict(lr=1e-2), 10)
    for name, w in finals.items():
        assert max_relative_difference(w, uninterrupted) < 1e-6, name


def test_torch_style_zero_grad_and_step():
    import torch

    with ud.use_backend("torch"):
        model = ud.models.TwoLayerNet(4, 3, 1)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        loss = ud.nn.MSELoss()(model(ud.tensor(np.ones((2, 4)))), ud.tensor(np.zeros((2, 1))))
        optimizer.zero_grad()
        loss.backward()
        before = model.state_dict()["linear2.bias"]
        optimizer.step()
        assert not np.array_equal(before, model.state_dict()["linear2.bias"])
        optimizer.zero_grad()
        assert all(p.grad is None for p in model.parameters())
        assert isinstance(optimizer.native, torch.optim.SGD)
        loss = ud.nn.MSELoss()(model(ud.tensor(np.ones((2, 4)))), ud.tensor(np.zeros((2, 1))))
        loss.backward()
        optimizer.zero_grad(set_to_none=False)  # torch.optim's option: zeros kept in place
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
        model.zero_grad()  # torch.nn.Module's (an AttributeError before)
        assert all(p.grad is None for p in model.parameters())
        ud.nn.MSELoss()(model(ud.tensor(np.ones((2, 4)))), ud.tensor(np.zeros((2, 1)))).backward()
        model.zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("name", ["torch", "tensorflow", "keras", "jax"])
def test_defaults_as_torch_optim_and_add_param_group_refused(name):
    """``defaults`` holds the constructor's options (``torch.optim``'s attribute); ``add_param_group`` is one
    ``NotImplementedError`` naming the alternative on every backend (an ``AttributeError`` before)."""
    with ud.use_backend(name):
        model = ud.models.TwoLayerNet(4, 3, 1)
        first, rest = model.parameters()[:1], model.parameters()[1:]
        optimizer = ud.optim.Adam([{"params": first, "lr": 0.1}, {"params": rest}], lr=1e-3, weight_decay=0.01)
        assert optimizer.defaults == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01,
                                      "amsgrad": False, "maximize": False, "decoupled_weight_decay": False, "l1": 0.0}
        optimizer.zero_grad(set_to_none=False)  # (nothing stored off torch: a no-op, as zero_grad())
        model.zero_grad()
        with pytest.raises(NotImplementedError, match=r"keeps the parameter groups it was built with; build a new "
                                                      r"optimizer over every group"):
            optimizer.add_param_group({"params": rest})


@pytest.mark.parametrize("name", ["tensorflow", "keras", "jax"])
def test_step_without_backward_explains(name):
    with ud.use_backend(name):
        optimizer = ud.optim.SGD(Holder().parameters(), lr=0.1)
        with pytest.raises(RuntimeError, match=rf"the {name} backend does not keep.*optimizer.apply"):
            optimizer.step()


class _HalfUsed(ud.nn.Module):
    """A model with a layer its forward never calls (a frozen-out head, an unused branch)."""

    def __init__(self):
        super().__init__()
        self.used = ud.nn.Linear(3, 2)
        self.unused = ud.nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("loop", ["value_and_grad", "train_step"])
def test_unused_parameters_are_left_alone_by_every_loop(backend, loop):
    """PyTorch's rule on every backend: a parameter without a gradient is not updated, even with momentum
    (whose buffer a zero gradient would keep moving)."""
    model = _HalfUsed()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.apply([ud.tensor(np.ones(p.shape, np.float32)) for p in model.parameters()])  # momentum everywhere
    before, slots = model.state_dict(), optimizer.state_dict()["slots"]
    loss_fn = ud.nn.MSELoss()
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    for _ in range(2):
        if loop == "value_and_grad":
            _, grads = ud.value_and_grad(lambda: loss_fn(model(ud.tensor(x)), ud.tensor(y)), model.parameters())()
            assert [g is None for g in grads] == [False, False, True, True]
            optimizer.apply(grads)
        else:
            ud.train_step(model, loss_fn, optimizer)(x, y)
    after, slots_after = model.state_dict(), optimizer.state_dict()["slots"]
    for name in ("unused.weight", "unused.bias"):
        assert np.array_equal(before[name], after[name]), name
    for index in (2, 3):
        assert np.array_equal(slots[index]["momentum_buffer"], slots_after[index]["momentum_buffer"])
    assert not np.array_equal(before["used.weight"], after["used.weight"])


def test_unused_parameters_are_left_alone_inside_a_compiled_step(backend):
    """The eager loop's rule (``test_unused_parameters_are_left_alone_by_every_loop``) inside ``ud.function`` (a
    TensorFlow graph, a jit-compiled JAX or Keras step): ``value_and_grad`` gives no gradient for the unused layer,
    and ``apply`` neither moves it (Adam's weight decay would, fed a zero) nor counts a step or a moment for it."""
    model = _HalfUsed()
    optimizer = ud.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    loss_fn = ud.nn.MSELoss()
    traced = []  # which gradients are None, as each trace (or torch's each call) saw them

    @ud.function
    def step(x, y):
        loss, grads = ud.value_and_grad(lambda: loss_fn(model(x), y), model.parameters())()
        traced.append([g is None for g in grads])
        optimizer.apply(grads)
        return loss

    before = model.state_dict()
    for _ in range(3):
        step(ud.tensor(np.ones((4, 3), np.float32)), ud.tensor(np.zeros((4, 2), np.float32)))
    after, state = model.state_dict(), optimizer.state_dict()
    assert traced and all(seen == [False, False, True, True] for seen in traced), traced
    for name in ("unused.weight", "unused.bias"):
        assert np.array_equal(before[name], after[name]), name
    assert not np.array_equal(before["used.weight"], after["used.weight"])
    assert state["param_steps"] == [3, 3, 0, 0]
    for slot in state["slots"][2:]:
        assert all(not np.any(value) for value in slot.values()), slot


def unused_layer_under_adam(fit: bool) -> dict:
    """``_HalfUsed`` trained 3 steps by Adam with weight decay (``train_step``, or ``fit`` with 3 batches): whether
    the unused layer kept its weights, whether the used one moved, and Adam's per-parameter step counts. Keras on
    JAX runs it in tests/backends/test_keras_jax.py's interpreter."""
    model = _HalfUsed()
    before = model.state_dict()
    optimizer = ud.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    x, y = np.ones((6, 3), np.float32), np.zeros((6, 2), np.float32)
    if fit:
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=1, batch_size=2, verbose=0)
    else:
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
        for _ in range(3):
            step(x[:2], y[:2])
    after = model.state_dict()
    return {"kept": all(np.array_equal(before[k], after[k]) for k in ("unused.weight", "unused.bias")),
            "moved": not np.array_equal(before["used.weight"], after["used.weight"]),
            "param_steps": optimizer.state_dict()["param_steps"]}


@pytest.mark.parametrize("fit", [False, True])
def test_adam_leaves_an_unused_layer_alone_and_counts_no_step_for_it(backend, fit):
    """PyTorch's rule with Adam and weight decay (which a zero gradient would still apply): no update and no step
    counted for a layer without a gradient, through ``train_step`` and through ``fit`` (Keras's own trainer)."""
    assert unused_layer_under_adam(fit) == {"kept": True, "moved": True, "param_steps": [3, 3, 0, 0]}


def test_torch_backward_and_apply_agree_on_unused_parameters():
    with ud.use_backend("torch"):
        model = _HalfUsed()
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        optimizer.apply([ud.tensor(np.ones(p.shape, np.float32)) for p in model.parameters()])
        before = model.state_dict()
        loss = ud.nn.MSELoss()(model(ud.tensor(np.ones((4, 3)))), ud.tensor(np.zeros((4, 2))))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert np.array_equal(before["unused.weight"], model.state_dict()["unused.weight"])
