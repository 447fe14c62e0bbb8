"""Keras on JAX (one fresh interpreter: ``KERAS_BACKEND`` is read at import): ``ud.grad`` with respect to a
model's Keras variables and ``ud.function`` compiled over them, against torch on the same weights and batch; and
``ud.fit`` through Keras's JAX trainer, which holds the state outside the variables during an epoch: a mid-epoch
checkpoint resumes bit for bit, a non-finite gradient stops fit at its step, float16 accumulation is GradScaler's,
and float64 training is plain torch's to 1e-12; TensorBoard's model graph is the jaxpr over the variables' values;
train steps and fit called in turn keep their jitted steps."""

import pytest

from tests.helpers import last_json_line, run_python
# tests/test_examples.py's checks of Keras on another framework than TensorFlow, run here on JAX (``framework``,
# ``checks``): this interpreter's Keras runs there already (one interpreter start fewer)
from tests.test_examples import (  # noqa: F401
    test_keras_on_another_framework_agrees_with_that_backend,
    test_keras_on_another_framework_exports_programs_that_run_without_unidl,
    test_keras_on_another_framework_fit_reaches_accuracy,
    test_keras_on_another_framework_follows_the_off_path_rules,
    test_keras_on_another_framework_gives_the_model_graph,
    test_keras_on_another_framework_trains_each_step_with_its_own_loss,
)

# (one subprocess of a minute and more: run first, tests/conftest.py)
pytestmark = pytest.mark.heavy

_SCRIPT = r"""
import inspect
import json
import os
import signal
import threading
import time
import numpy as np
import unidl as ud
from unidl.testing import max_relative_difference

rng = np.random.default_rng(0)
x = rng.standard_normal((8, 6)).astype(np.float32)
y = rng.standard_normal((8, 3)).astype(np.float32)


def net():
    ud.manual_seed(0)
    return ud.nn.Sequential(ud.nn.Linear(6, 5), ud.nn.ReLU(), ud.nn.BatchNorm1d(5), ud.nn.Linear(5, 3))


def run(backend):
    with ud.use_backend(backend):
        model, loss = net(), ud.nn.MSELoss()
        model.load_state_dict(reference)
        params = model.parameters()
        value, grads = ud.value_and_grad(lambda: loss(model(ud.tensor(x)), ud.tensor(y)), argnums=params)()
        after_grad = {k: np.asarray(v) for k, v in model.state_dict().items()}  # batch norm's statistics moved
        optimizer = ud.optim.SGD(params, lr=0.1, momentum=0.9)

        @ud.function
        def step(a, b):
            v, g = ud.value_and_grad(lambda: loss(model(a), b), argnums=params)()
            optimizer.apply(g)
            return v

        losses = [float(step(x, y)) for _ in range(4)]
        return dict(value=float(value), grads=[np.asarray(ud.to_numpy(g)) for g in grads], after_grad=after_grad,
                    losses=losses, state={k: np.asarray(v) for k, v in model.state_dict().items()},
                    traces=step.trace_count)


def unseeded_dropout_in_function():
    # run before anything calls ud.manual_seed: the keras backend makes its dropout generator at its first draw,
    # here inside ud.function's trace (its state's value once leaked a tracer out of it)
    with ud.use_backend("keras"):
        drop = ud.function(lambda a: ud.ops.dropout(a, 0.5))
        try:
            first, second = (np.asarray(ud.to_numpy(drop(np.ones((100, 100), np.float32)))) for _ in range(2))
        except Exception as error:
            return dict(error=f"{type(error).__name__}: {str(error).splitlines()[0]}")
        return dict(kept=[float((m != 0).mean()) for m in (first, second)],
                    values=sorted(float(v) for v in np.unique(np.concatenate([first, second]))),
                    same=bool(np.array_equal(first, second)))


def dropout_in_train_step():
    # Keras's JAX trainer threads its state as values: the dropout generator's state, which the forward writes, must
    # be threaded too, else every step draws the first step's mask; with lr=0 the losses differ only by the masks
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Linear(6, 10), ud.nn.Dropout(0.5), ud.nn.Linear(10, 3))
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.0))
        losses = [float(step(x, y)) for _ in range(4)]
        # and in fit, whose epoch holds the state outside the variables: 4 batches, one draw each
        from unidl import config
        state = config.backend().generator().state
        before = int(np.asarray(state.value)[1])
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.0), epochs=1,
               batch_size=2, shuffle=False, verbose=0)
        return dict(losses=losses, fit_draws=int(np.asarray(state.value)[1]) - before)


def retrace_reaching_new_variables():
    # a function whose variables depend on the traced shape: the retrace for a small batch reads `second`,
    # which the first trace never read; after `second` changes, the compiled call must see its new weights
    with ud.use_backend("keras"):
        first, second = ud.nn.Linear(6, 3), ud.nn.Linear(6, 3)

        @ud.function
        def branch(a):
            return first(a) if a.shape[0] > 4 else second(a)

        small = x[:2]
        branch(x), branch(small)
        second.load_state_dict({k: np.asarray(v) * 2 for k, v in second.state_dict().items()})
        return float(np.max(np.abs(ud.to_numpy(branch(small)) - ud.to_numpy(second(ud.tensor(small))))))


def mode_reads():
    # flags read inside ud.function without calling their modules (a branch on head.training, dropout with
    # training=switch.training): each new combination of modes traces once, each result is the eager one
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        body, head, switch = ud.nn.Linear(6, 3), ud.nn.Linear(3, 3), ud.nn.Identity()

        @ud.function
        def forward(a):
            hidden = body(a)
            return hidden * 2.0 if head.training else hidden - 1.0, ud.ops.dropout(a, 0.5, training=switch.training)

        positive = np.abs(x) + 1.0  # no zeros: a zero in the output is dropout's
        hidden = np.asarray(ud.to_numpy(body(ud.tensor(positive))))
        checks = []
        for head_mode, switch_mode in [(True, True), (False, True), (False, False), (True, True), (False, True)]:
            head.train(head_mode), switch.train(switch_mode)
            branch, dropped = (np.asarray(ud.to_numpy(t)) for t in forward(positive))
            expected = hidden * 2.0 if head_mode else hidden - 1.0
            dropout = 0.2 < (dropped == 0).mean() < 0.8 if switch_mode else np.array_equal(dropped, positive)
            checks.append(dict(branch=float(np.max(np.abs(branch - expected))), dropout=bool(dropout),
                               traces=forward.trace_count))
        # a train step (Keras's JAX trainer) follows the mode of a loss module outside the model
        from tests.test_submodule_modes import _PenalisedMSE
        loss = _PenalisedMSE()
        step = ud.train_step(body, loss, ud.optim.SGD(body.parameters(), lr=0.0))
        for mode in (True, False, True):
            loss.train(mode)
            expected = float(loss(body(ud.tensor(x)), ud.tensor(y)))
            checks.append(dict(branch=abs(float(step(x, y)) - expected) / expected, dropout=True,
                               traces=step.trace_count))
        # jax.jit traces Keras's step once per input shape: a smaller batch once more, then neither again
        traces = []
        for batch in (3, 3, 8):
            step(x[:batch], y[:batch])
            traces.append(step.trace_count)
        eager = ud.train_step(body, loss, ud.optim.SGD(body.parameters(), lr=0.0), eager=True)
        eager(x, y)
        return checks, traces + [eager.trace_count]


def state(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def resumable_fit(directory, resume_from=None):
    # 3 batches an epoch, a checkpoint every 2 steps: step 4's is mid epoch 2
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(3, 4, 1)
        data = np.random.default_rng(1).standard_normal((12, 3)).astype(np.float32)
        loader = ud.data.DataLoader(ud.data.TensorDataset(data, data.sum(1, keepdims=True)), batch_size=4,
                                    shuffle=True, seed=1)
        history = ud.fit(model, loader, loss=ud.nn.MSELoss(), optimizer=ud.optim.Adam(model.parameters(), lr=0.05),
                         epochs=2, callbacks=[ud.callbacks.Checkpoint(directory, every_steps=2, keep=None)],
                         verbose=0, metrics=["mae"], resume_from=resume_from).history
        return history, state(model)


def mid_epoch_resume():
    # a fresh run resumed from the uninterrupted run's checkpoint of step 4 (as after a crash at step 5)
    import os, tempfile
    directory = tempfile.mkdtemp()
    straight, straight_state = resumable_fit(os.path.join(directory, "straight"))
    checkpoint = os.path.join(directory, "straight", "checkpoint-0001-0000004.safetensors")
    resumed, resumed_state = resumable_fit(os.path.join(directory, "resumed"), resume_from=checkpoint)
    return dict(history=resumed == straight, straight=straight,
                weights=all(np.array_equal(v, resumed_state[k]) for k, v in straight_state.items()))


class SqrtNet(ud.nn.Module):  # a finite loss whose gradient is infinite where w x is 0 (tests/optim)
    def __init__(self):
        super().__init__()
        self.w = self.parameter(np.full((1, 2), 0.5, np.float32))

    def forward(self, x):
        return ud.ops.sqrt(ud.ops.linear(x, self.w))


class Record(ud.callbacks.Callback):
    def on_batch_end(self, batch, logs=None):
        self.weights = state(self.trainer.model)


def infinite_gradient_in_fit():
    # batch 3 (4 a batch, in order) holds the row where w x = 0: its loss is finite, its gradient infinite
    with ud.use_backend("keras"):
        data = np.ones((12, 2), np.float32)
        data[9] = [1, -1]
        model, record = SqrtNet(), Record()
        optimizer = ud.optim.Adam(model.parameters(), lr=0.05)
        try:
            ud.fit(model, (data, np.full((12, 1), 2.0, np.float32)), loss=ud.nn.MSELoss(), optimizer=optimizer,
                   epochs=1, batch_size=4, shuffle=False, verbose=0, callbacks=[record])
            error = None
        except ud.NonFiniteLossError as caught:
            error = str(caught)
        weights = state(model)["w"]
        return dict(error=error, steps=optimizer.state_dict()["step"], moved=bool(np.all(weights != 0.5)),
                    before=bool(np.array_equal(weights, record.weights["w"])))


def fp16_accumulation():
    # GradScaler's rule with accumulate=2: a window whose scaled float16 gradients overflow (targets 1000 times
    # too far: the float32 loss stays finite) skips its one update and halves the scale once; finite windows
    # (through fit) update with the unscaled sum, as the hand-written torch autocast loop
    from tests.test_precision import _torch_autocast_loop
    with ud.use_backend("keras"):
        px, py = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal((16, 3)).astype(np.float32)
        ud.manual_seed(0)
        model, loss = ud.models.TwoLayerNet(8, 16, 3), ud.nn.MSELoss()
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        precision = ud.Precision("16-mixed", growth_interval=2)
        before = state(model)
        step = ud.train_step(model, loss, optimizer, precision=precision, accumulate=2)
        finite_losses = [bool(np.isfinite(float(step(px[:8], py[:8] * 1e3))))]
        inside = dict(scale=step.loss_scale, finite=optimizer.last_step_finite)
        finite_losses.append(bool(np.isfinite(float(step(px[8:], py[8:] * 1e3)))))
        after = state(model)
        overflow = dict(scale=step.loss_scale, finite=optimizer.last_step_finite, steps=optimizer.state_dict()["step"],
                        unchanged=all(np.array_equal(before[k], v) for k, v in after.items()), losses=finite_losses)
        expected = _torch_autocast_loop(after, [(px[i:i + 4], py[i:i + 4]) for i in range(0, 16, 4)], accumulate=2,
                                        dtype="float16")
        ud.fit(model, (px, py), loss=loss, optimizer=optimizer, epochs=1, batch_size=4, shuffle=False, verbose=0,
               precision=precision, accumulate=2)
        trained = state(model)
        change = max(max_relative_difference(trained[k] - after[k], expected[k] - after[k]) for k in after)
        return dict(inside=inside, overflow=overflow, steps=optimizer.state_dict()["step"], change=change)


def partial_use_windows():
    # windows of accumulate=2 in which a layer is used at the first micro-step only, the last only, none (its depth
    # read from the batch's size: a step input's value is traced here), against torch's autocast and GradScaler
    # loop (tests/optim/test_accumulation_partial_use.py): per case the largest relative difference over its bound;
    # bf16's window is the optimizer's own, as float32's, and float16's the loss scaler's (with Adam too)
    from tests.optim.test_accumulation_partial_use import BOUNDS, partial_use_differences
    with ud.use_backend("keras"):
        return {f"{precision} {kind}": max(partial_use_differences(precision, kind, depth_input=False).values())
                / BOUNDS[precision] for precision, kind in (("bf16-mixed", "sgd"), ("16-mixed", "sgd"),
                                                            ("16-mixed", "adam"))}


def loss_only_non_finite_windows():
    # a loss infinite at a window's first micro-step while its gradients are finite (a term of the data alone):
    # Keras's JAX trainer hands its optimizer only the gradients. float32: the window's update skipped and
    # train_step's NonFiniteLossError at its last call (float16's windows: tests/test_precision.py's keras test, in
    # scripts/run-tests.sh's Keras-on-JAX run)
    from tests.test_precision import TargetTermMSE, _windows_with_a_non_finite_loss
    with ud.use_backend("keras"):
        batches = _windows_with_a_non_finite_loss()
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(8, 16, 3)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = ud.train_step(model, TargetTermMSE(), optimizer, accumulate=2)
        for batch in batches[:3]:  # window A, then B's first micro-step (its loss infinite)
            step(*batch)
        inside, before = optimizer.last_step_finite, state(model)
        window_finite = optimizer.state_dict()["accumulation"]["finite"]
        try:
            step(*batches[3])
            error = None
        except ud.NonFiniteLossError as caught:
            error = str(caught)
        unchanged = all(np.array_equal(before[k], v) for k, v in state(model).items())
        return dict(float32=dict(inside=inside, error=error, unchanged=unchanged,
                                            steps=optimizer.state_dict()["step"], window_finite=window_finite))


def keras_model_graph():
    # TensorBoard(write_graph=True)'s graph: the jaxpr of the forward over the Keras variables' values
    from tests.callbacks.test_tensorboard import cnn_graph
    return cnn_graph("keras")


def float64_fit():
    # Keras's JAX trainer in float64 (Keras's fit slices the arrays itself), against plain torch.nn and torch.optim
    import torch as plain_torch
    data = np.random.default_rng(2)
    fx, fy = data.standard_normal((12, 6)), data.standard_normal((12, 3))
    with ud.use_backend("keras"), ud.use_dtype("float64"):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(6, 5, 3)
        start = state(model)
        history = ud.fit(model, (fx, fy), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1,
                         momentum=0.9), epochs=2, batch_size=4, shuffle=False, verbose=0).history
        trained = state(model)
    plain = plain_torch.nn.Sequential(plain_torch.nn.Linear(6, 5), plain_torch.nn.ReLU(), plain_torch.nn.Linear(5, 3))
    plain = plain.double()
    names = {"0": "linear1", "2": "linear2"}
    plain.load_state_dict({k: plain_torch.tensor(start[names[k[0]] + k[1:]]) for k in plain.state_dict()})
    optimizer, losses = plain_torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), []
    for i in range(6):
        batch = slice(i % 3 * 4, i % 3 * 4 + 4)
        optimizer.zero_grad()
        loss = plain_torch.nn.functional.mse_loss(plain(plain_torch.tensor(fx[batch])), plain_torch.tensor(fy[batch]))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    expected = {names[k[0]] + k[1:]: v.detach().numpy() for k, v in plain.state_dict().items()}
    return dict(weights=max(max_relative_difference(trained[k], v) for k, v in expected.items()),
                losses=max_relative_difference(np.array(history["loss"]), np.array([np.mean(losses[:3]),
                                                                                     np.mean(losses[3:])])))


def half_bias_gradient():
    # a float16 linear's bias gradient over 1024 loss-scaled rows (+40000 then -40000): 0 when summed in float32 as
    # torch does; summed in float16 its partial sums overflow (NaN)
    import jax
    import jax.numpy as jnp
    from unidl.backends.keras import ops as keras_ops
    rows = jnp.concatenate([jnp.full((512, 1), 40000.0), jnp.full((512, 1), -40000.0)])
    x, w = jnp.ones((1024, 8), jnp.float16), jnp.ones((4, 8), jnp.float16)
    grad = jax.grad(lambda b: (keras_ops.linear(x, w, b).astype(jnp.float32) * rows).sum())(jnp.zeros((4,), jnp.float16))
    return np.asarray(grad, np.float32).tolist()


def unused_layer():
    # Keras's JAX trainer gives a layer the loss does not use zeros; PyTorch's rule: no gradient, no update
    from tests.optim.test_optimizers import unused_layer_under_adam
    with ud.use_backend("keras"):
        return [unused_layer_under_adam(fit) for fit in (False, True)]


def frozen_layer():
    # a layer frozen (requires_grad_(False)) after a first update, its parameters still in the optimizer (SGD with
    # momentum), where Keras's JAX trainer hands the optimizer the trainable variables only: through train_step,
    # fit and a float16 window (Keras's loss scaler around the optimizer) the frozen layer stays bit for bit, and
    # the other trains as torch's loop with the same freeze (its frozen parameters' .grad None: skipped)
    import warnings
    import torch
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    outcomes = {}
    for how, precision, accumulate in (("train_step", "32", 1), ("fit", "32", 1), ("fp16_window", "16-mixed", 2)):
        before = [halves[:accumulate]]  # the updates' micro-batches before and after the freeze
        after = [[halves[0]], [halves[1]]] if accumulate == 1 else [halves, halves]
        with ud.use_backend("keras"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # (Keras warned "Gradients do not exist" for the frozen ones)
            ud.manual_seed(0)
            model = ud.models.TwoLayerNet(6, 5, 3)
            start = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}
            optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, accumulate=accumulate)
            for batch in before[0]:
                step(*batch)
            model.linear1.requires_grad_(False)
            frozen = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items() if "linear1" in k}
            if how == "fit":
                ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=1, batch_size=4,
                       shuffle=False, verbose=0)
            else:
                for update in after:
                    for batch in update:
                        step(*batch)
            trained = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}
        net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        net.load_state_dict({k.replace("linear1", "0").replace("linear2", "2"): torch.tensor(v)
                             for k, v in start.items()})
        sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for index, update in enumerate(before + after):
            net[0].requires_grad_(index == 0)
            for a, b in update:
                (torch.nn.functional.mse_loss(net(torch.tensor(a)), torch.tensor(b)) / accumulate).backward()
            sgd.step()
            sgd.zero_grad()
        expected = {k.replace("0.", "linear1.").replace("2.", "linear2."): v.detach().numpy()
                    for k, v in net.state_dict().items()}
        outcomes[how] = dict(
            frozen=all(np.array_equal(trained[k], v) for k, v in frozen.items()),
            warned=[str(w.message)[:80] for w in caught if "radient" in str(w.message)],
            others=max(max_relative_difference(trained[k] - start[k], expected[k] - start[k])
                       for k in trained if "linear2" in k))
    return outcomes


def subset_or_reversed():
    # float16's optimizer over the parameters in another order, where Keras's JAX trainer hands the model's values
    # in its order (the head-only and reversed optimizers of float32: tests/nn/test_freeze.py's keras test, in
    # scripts/run-tests.sh's Keras-on-JAX run)
    return {"float16": float16_in_another_order()}


def float16_in_another_order():
    # float16 (Keras's loss scaler calls the inner optimizer's stateless_apply in turn): eight train steps of SGD
    # with momentum and a rate per layer, the optimizer over the parameters in the model's order and in reverse:
    # the same weights (a second match of the values, by the nested call, gave each the other's rate and slots)
    from tests.nn.test_freeze import SQUARE, XS, YS
    weights = []
    with ud.use_backend("keras"):
        for reverse in (False, True):
            model = ud.nn.Sequential(ud.nn.Linear(4, 4), ud.nn.Tanh(), ud.nn.Linear(4, 4))
            model.load_state_dict(dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], SQUARE)))
            params = list(model.parameters())
            groups = ([{"params": params[2:][::-1]}, {"params": params[:2][::-1], "lr": 0.05}] if reverse else
                      [{"params": params[:2], "lr": 0.05}, {"params": params[2:]}])
            step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(groups, lr=0.1, momentum=0.9),
                                 precision="16-mixed")
            for _ in range(8):
                step(XS, YS)
            weights.append({k: np.asarray(v) for k, v in model.state_dict().items()})
    return dict(same=all(np.array_equal(v, weights[1][k]) for k, v in weights[0].items()),
                trained=all(not np.array_equal(weights[0][name], value)
                            for name, value in zip(["0.weight", "2.weight"], [SQUARE[0], SQUARE[2]])))


def alternated():
    # two train steps and fit of one model called in turn: each traced once, and once more after the momentum's
    # first change (tests/backends/test_keras.py)
    from tests.backends.test_keras import alternated_steps_and_fit
    return alternated_steps_and_fit(rounds=3, bind_momentum=True)


def parity_rules():
    # the tests of files outside the Keras-on-JAX run of scripts/run-tests.sh, run here on Keras-on-JAX: "ok" or the
    # failure, by name: ud.function's Python arguments (baked in, where Keras-on-JAX had refused strings and
    # functions), a layer held outside the model read as it is at each train step (its first trace's weights were
    # baked in), gradients through BatchNorm in ud.function (its writes leaked JAX's tracers). The parity tests of the
    # ops whose rules differ by framework (tests/parity: maximum's ties, softmax over inf, the half-precision linear,
    # cross-entropy's dtype) and the index checks of tests/nn/test_sparse.py (Keras's jitted train, test and predict
    # steps) ran here too until that run took them, each a test of its own there (10 to 20 s of this interpreter's
    # 100 s of CPU; tests/test_run_tests_script.py pins those files to that run)
    from functools import partial

    from tests import test_function
    from tests.nn import test_batchnorm

    outcomes = {}
    for test in (test_function.test_python_values_reach_the_function_as_they_are,
                 partial(test_batchnorm.test_a_layer_held_outside_the_model_is_read_as_it_is_at_each_step_as_in_torch,
                         entry="train_step", holder="list"),
                 partial(test_batchnorm.test_no_running_statistics_and_no_bias_as_torch, dtype="float64",
                         tolerance=1e-12)):
        name = getattr(test, "func", test).__name__ + "".join(f"[{v}]" for v in getattr(test, "keywords", {}).values())
        try:
            with ud.use_backend("keras"):
                wants_rng = "rng" in inspect.signature(test).parameters
                test("keras", *([np.random.default_rng(0)] if wants_rng else []))
            outcomes[name] = "ok"
        except Exception as error:
            outcomes[name] = f"{type(error).__name__}: {str(error)[:300]}"
    return outcomes


def traced_step_inputs():
    # a forward looping over a step input's value: one GraphConstructError naming the rule, from train_step's
    # extra inputs as from fit's step_inputs (train_step gave Keras's own "Unable to automatically build" error)
    from tests.test_dynamic_forward import DynamicNet, X, Y
    errors = []
    with ud.use_backend("keras"):
        model = DynamicNet()
        for call in (lambda: ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05))(
                         X[:8], Y[:8], 2),
                     lambda: ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(
                         model.parameters(), lr=0.05), epochs=1, batch_size=8, verbose=0,
                         step_inputs=lambda epoch, step: (2,))):
            try:
                call()
                errors.append(None)
            except Exception as error:
                errors.append([type(error).__name__, str(error).split(":")[0]])
        # a branch on a tensor's value, no step inputs: the same error, eager=True too (JAX's own
        # TracerBoolConversionError from train_step, Keras's "Unable to automatically build" from fit)
        from tests.test_dynamic_forward import BranchOnValue
        branching = BranchOnValue()
        for call in (lambda eager: ud.train_step(branching, ud.nn.MSELoss(), ud.optim.SGD(
                         branching.parameters(), lr=0.05), eager=eager)(X[:8], Y[:8]),
                     lambda eager: ud.fit(branching, (X, Y), loss="mse", optimizer="sgd", epochs=1, batch_size=8,
                                          verbose=0, eager=eager)):
            for eager in (False, True):
                try:
                    call(eager)
                    errors.append(None)
                except Exception as error:
                    errors.append([type(error).__name__, str(error).split(":")[0]])
    return errors


def function_draws():
    # a ud.function drawing from Python's random as it is traced draws once, as on every other backend (the probe
    # that finds its Keras variables drew once more first)
    import random

    with ud.use_backend("keras"):
        linear = ud.nn.Linear(4, 1, bias=False)
        scaled = ud.function(lambda x: linear(x) * random.random())
        random.seed(5)
        scaled(np.ones((2, 4), np.float32))
        after = random.random()
    random.seed(5)
    random.random()
    return after == random.random()


def draws_warned():
    # a compiled train step and a ud.function drawing from Python's random while traced warn (RetraceWarning), as
    # on the jax backend (tests/test_dynamic_forward.py); a step with eager=True runs its Python every call: none
    import random
    import warnings

    from tests.test_dynamic_forward import DynamicNet, X, Y
    warned = []
    with ud.use_backend("keras"):
        for eager in (False, True):
            model = DynamicNet()
            step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05), eager=eager)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step(X, Y)
            warned.append([str(w.message).split(" while ")[0] for w in caught if "drew from" in str(w.message)])
        linear = ud.nn.Linear(4, 1)
        scaled = ud.function(lambda x: linear(x) * random.random())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scaled(np.ones((2, 4), np.float32))
        warned.append([str(w.message).split(" while ")[0] for w in caught if "drew from" in str(w.message)])
        generators = [np.random.default_rng(3)]  # (in the closure of the function ud.function traces)

        def shifted(x):
            return linear(x) + float(generators[0].random())

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ud.function(shifted)(np.ones((2, 4), np.float32))
        warned.append([str(w.message).split(" while ")[0] for w in caught if "drew from" in str(w.message)])
    return warned


def eager_random_depths():
    # train_step(eager=True) of a forward that draws its depth from Python's random every step: torch's losses
    # and weights (Keras's abstract pass before its first step drew a depth the step then missed)
    from tests.test_dynamic_forward import _trajectory
    (losses, weights, _), (reference, wanted, _) = _trajectory("keras", "eager"), _trajectory("torch", "eager")
    return max(max_relative_difference(losses, reference), *(max_relative_difference(weights[k], wanted[k])
                                                            for k in wanted))


class Sigint:
    # a thread that sends SIGINT 5 ms after arm's callback (in a step's `skip`-th next run) has returned into XLA's
    # long matmuls (tens of ms), while the main thread waits for them in the jitted call (at 1 ms a loaded machine
    # now and then delivered it while jax's callback wrapper still ran Python: see landed_in_the_callback)
    armed = None

    def __init__(self, skip=0):
        self.skip, self.ran, self.cancelled = skip, threading.Event(), False
        self.thread = threading.Thread(target=self.send)
        self.thread.start()
        Sigint.armed = self

    def send(self):
        self.ran.wait()
        if not self.cancelled:
            time.sleep(0.005)
            os.kill(os.getpid(), signal.SIGINT)

    def close(self):
        Sigint.armed, self.cancelled = None, not self.ran.is_set()
        self.ran.set()
        try:
            self.thread.join()
        except KeyboardInterrupt:  # (one that came too late for the step)
            self.thread.join()


def arm(value):
    # 1 where this call fires the armed SIGINT (then the step stalls), else 0
    sigint = Sigint.armed
    fired = sigint is not None and sigint.skip == 0
    if fired:
        Sigint.armed = None
        sigint.ran.set()
    elif sigint is not None:
        sigint.skip -= 1
    return np.asarray(fired, value.dtype)


class Stalled(ud.nn.Module):
    # a linear layer whose forward keeps XLA busy for tens of ms after arm's callback fired (two 1200x1200 products: two
    # of 600x600 took under 5 ms on an idle machine, so every SIGINT came after the step), or sends SIGINT from the
    # trace of Keras's train step after its kill_in_trace-th (a Ctrl-C while the step compiles)
    kill_in_trace = None

    def __init__(self):
        super().__init__()
        self.linear = ud.nn.Linear(6, 3)

    def forward(self, a):
        import jax
        import jax.numpy as jnp
        if Stalled.kill_in_trace is not None and self.native.train_step_runs > Stalled.kill_in_trace:
            Stalled.kill_in_trace = None
            os.kill(os.getpid(), signal.SIGINT)
        fired = jax.pure_callback(arm, jax.ShapeDtypeStruct((), a.dtype), jax.lax.stop_gradient(a[0, 0]))

        def stall(start):
            square = jnp.full((1200, 1200), start)
            return jnp.sum(square @ square @ square)

        # (only the call that fires: the runs' other forwards, dozens of them, skip the products)
        busy = jax.lax.cond(fired > 0, stall, lambda start: jnp.zeros((), start.dtype), fired)
        return self.linear(a) + 0.0 * busy


def landed_in_the_callback(error):
    # a SIGINT after arm returned that a loaded machine delivered while jax's callback wrapper still ran
    # Python (the callback runs in the calling thread): jax reports it as the callback's error, not as a Ctrl-C in
    # XLA's work; a miss of what the runs test, so the run is tried again (from ``values``: see ``repaired``)
    return "KeyboardInterrupt" in str(error) and "callback" in str(error)


def values(model):
    # the Keras variables a step is given (and donated), with their values, before a run
    native = model.native
    variables = (native.trainable_variables + native.non_trainable_variables + native.optimizer.variables
                 + native.metrics_variables)
    return [(v, np.array(v.value)) for v in variables if v._value is not None and not v._value.is_deleted()]


def repaired(snapshot):
    # after a miss (landed_in_the_callback): the step failed inside XLA after its state was donated, which no
    # library can take back (outside what the runs test); the values from before the run go back, so that the next
    # try runs on a whole model
    for variable, value in snapshot:
        if variable._value is None or variable._value.is_deleted():
            variable.assign(value)
    model.native._jax_state = None  # (Keras's own copy of the failed step's state: never synced back over these)


def deleted_arrays(model):
    native = model.native
    variables = (native.trainable_variables + native.non_trainable_variables + native.optimizer.variables
                 + native.metrics_variables)
    return sum(v._value is None or v._value.is_deleted() for v in variables)


def ctrl_c_in_steps():
    # a real SIGINT (Python's default handler) that lands in Keras's jitted step, in a train step, in fit, in
    # fit's first step while it traces, in predict's step (Keras donates the state to it too) and evaluate's:
    # KeyboardInterrupt, then a model with no deleted arrays that evaluates and trains on with finite losses; a
    # train step's interrupted state is the step's new one or its old one, a prediction's the one before
    signal.signal(signal.SIGINT, signal.default_int_handler)
    outcomes = []
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model, loss = Stalled(), ud.nn.MSELoss()
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        step = ud.train_step(model, loss, optimizer)
        step(x, y)

        def fit_stopped_while_compiling():
            ud.evaluate(model, (x, y), loss=loss)  # (after which Keras holds no state of its own for fit's cleanup)
            Stalled.kill_in_trace = model.native.train_step_runs  # (a new optimizer: fit traces Keras's step)
            ud.fit(model, (x, y), loss=loss, optimizer=ud.optim.SGD(model.parameters(), lr=0.05), epochs=1,
                   batch_size=4, verbose=0)

        runs = [(lambda: step(x, y), 0),
                (lambda: ud.fit(model, (x, y), loss=loss, optimizer=optimizer, epochs=1, batch_size=2, shuffle=False,
                                verbose=0), 1),  # (in fit's second step)
                (fit_stopped_while_compiling, None),
                (lambda: ud.predict(model, x), 0),  # (compiled by the predict before)
                (lambda: ud.evaluate(model, (x, y), loss=loss), 0)]
        for index, (run, skip) in enumerate(runs):
            interrupted = False
            for attempt in range(3):  # (a SIGINT later than the step can be lost in Keras's bare except: again)
                before = state(model)  # (per try: a try whose SIGINT came too late has trained a step)
                sigint = Sigint(skip=skip) if skip is not None else None
                snapshot = values(model)
                try:
                    run()
                except KeyboardInterrupt:
                    interrupted = True
                except Exception as error:
                    if not landed_in_the_callback(error):
                        raise
                    repaired(snapshot)
                finally:
                    Stalled.kill_in_trace = None
                    if sigint is not None:
                        sigint.close()
                if interrupted:
                    break
            dead = deleted_arrays(model)
            if dead:  # (a model left so trains no more)
                outcomes.append(dict(interrupted=interrupted, deleted=dead))
                break
            after, kept = state(model), None
            if index == 0:
                model.load_state_dict(before)
                step(x, y)
                new = state(model)
                kept = ("new" if all(np.array_equal(v, new[k]) for k, v in after.items()) else
                        "old" if all(np.array_equal(v, before[k]) for k, v in after.items()) else "other")
            elif index >= 3:
                kept = "old" if all(np.array_equal(v, before[k]) for k, v in after.items()) else "other"
            try:
                finite = bool(np.isfinite(ud.evaluate(model, (x, y), loss=loss)["loss"]))
                finite = finite and bool(np.isfinite(float(step(x, y))))
                # (and Keras's predict step compiled, so that the prediction's run below lands in a compiled call:
                # evaluate's program is one of its own, no longer Keras's predict step)
                finite = finite and bool(np.all(np.isfinite(ud.predict(model, x))))
            except Exception as error:
                finite = f"{type(error).__name__}: {str(error)[:100]}"
            outcomes.append(dict(interrupted=interrupted, deleted=dead, finite=finite, kept=kept))
        threads = (ctrl_c_in_a_prediction_beside_another_threads(model, loss) if not dead else
                   "not run: a run above left deleted arrays")
    return dict(runs=outcomes, threads=threads, after=settings_after_ctrl_c(), **errors_in_fit())


def settings_after_ctrl_c():
    # after the Ctrl-Cs in steps above (the KeyboardInterrupt raised at the first call after the step returned): no
    # setting of an interrupted step is left in the thread's context, and another model (of more variables than
    # Stalled's), whose steps run eagerly (without a checked predict step of their own), predicts and evaluates with
    # its own step (it ran Stalled's traced predict step: a ValueError)
    from unidl.backends.keras import module
    left = [name for name, setting in (("predict step", module._PREDICT_STEP_TRACED),
                                       ("writes", module._WRITES_BEFORE_THE_ERROR)) if setting.get() is not None]
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        other = ud.nn.Sequential(ud.nn.Linear(6, 4), ud.nn.ReLU(), ud.nn.Linear(4, 3))
        try:
            ud.train_step(other, ud.nn.MSELoss(), ud.optim.SGD(other.parameters(), lr=0.1), eager=True)(x, y)
            predicted = np.asarray(ud.to_numpy(ud.predict(other, x)))
            forward = np.asarray(ud.to_numpy(other(ud.tensor(x))))
            own = bool(np.allclose(predicted, forward, rtol=1e-5, atol=1e-6))
            own = own and bool(np.isfinite(ud.evaluate(other, (x, y), loss=ud.nn.MSELoss())["loss"]))
        except Exception as error:
            own = f"{type(error).__name__}: {str(error)[:120]}"
    return dict(left=left, own=own)


def ctrl_c_in_a_prediction_beside_another_threads(model, loss):
    # a prediction of the main thread (Keras's predict_on_batch in a KeptStepState call, as ud.predict makes it)
    # while another thread is inside a KeptStepState call of the same model, entered after the main thread's: a real
    # SIGINT in the main thread's step leaves no deleted array (its own call kept the state its step was given; the
    # kept state was the model's, and the main thread's step kept it in the other thread's list, which wrote nothing)
    from unidl.backends.keras.module import KeptStepState
    native, interrupted, inputs = model.native, False, model._backend.to_input(x)
    native.predict_on_batch(inputs)  # (compiled for these inputs before: see KeptStepState's "Not covered")
    for attempt in range(3):  # (a SIGINT later than the step can be lost: again)
        inside, leave = threading.Event(), threading.Event()

        def other():
            with KeptStepState(native):
                inside.set()
                leave.wait()

        thread = threading.Thread(target=other)
        sigint, snapshot = None, values(model)
        try:
            with KeptStepState(native):
                thread.start()
                inside.wait()
                sigint = Sigint()
                native.predict_on_batch(inputs)
        except KeyboardInterrupt:
            interrupted = True
        except Exception as error:
            if not landed_in_the_callback(error):
                raise
            repaired(snapshot)
        finally:
            leave.set()
            if sigint is not None:  # first: its close takes a SIGINT that came after the prediction (a late one),
                sigint.close()      # which the join below raised, out of the test (a flake of a loaded machine)
            thread.join()
        if interrupted:
            break
    dead = deleted_arrays(model)
    try:
        finite = dead == 0 and bool(np.isfinite(ud.evaluate(model, (x, y), loss=loss)["loss"]))
    except Exception as error:
        finite = f"{type(error).__name__}: {str(error)[:100]}"
    return dict(interrupted=interrupted, deleted=dead, finite=finite)


class FailsInTrace(ud.nn.Module):
    # a linear layer whose forward raises an ordinary error while Keras's train step traces (fit's first step)
    def __init__(self):
        super().__init__()
        self.linear = ud.nn.Linear(6, 3)

    def forward(self, a):
        import jax
        if isinstance(a, jax.core.Tracer) and self.native.train_step_runs > 0:
            raise ValueError("fails in trace")
        return self.linear(a)


def errors_in_fit():
    # a callback that zeroes the weights after fit's first step, then raises KeyboardInterrupt: the zeros stay (no
    # write-back of the older step state over live values); an ordinary error in fit's first step while it
    # compiles: no variable left emptied, and a forward runs after it
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model, loss = ud.nn.Sequential(ud.nn.Linear(6, 3)), ud.nn.MSELoss()

        class Zeroes(ud.callbacks.Callback):
            def on_batch_end(self, index, logs=None):
                for variable in model.native.trainable_variables:
                    variable.assign(np.zeros(variable.shape, np.float32))
                raise KeyboardInterrupt

        try:
            ud.fit(model, (x, y), loss=loss, optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1,
                   batch_size=4, verbose=0, callbacks=[Zeroes()])
            zeroed = "no KeyboardInterrupt"
        except KeyboardInterrupt:
            zeroed = all(not np.asarray(v.value).any() for v in model.native.trainable_variables)
        model = FailsInTrace()
        try:
            ud.fit(model, (x, y), loss=loss, optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1,
                   batch_size=4, verbose=0)
            failed = "no error"
        except Exception as error:
            failed = type(error).__name__
        emptied = deleted_arrays(model)
        try:
            forward = bool(np.isfinite(np.asarray(model(x))).all())
        except Exception as error:
            forward = f"{type(error).__name__}: {str(error)[:100]}"
    return dict(zeroed=zeroed, compile_error=dict(failed=failed, emptied=emptied, forward=forward))


unseeded_dropout = unseeded_dropout_in_function()  # first: no ud.manual_seed before it
with ud.use_backend("torch"):
    reference = {k: np.asarray(v) for k, v in net().state_dict().items()}
ours, torch = run("keras"), run("torch")
import sys
# (ud.manual_seed has run on Keras-on-JAX: Keras's set_random_seed imports TensorFlow to seed it where it is installed)
seeded_without_tensorflow = "tensorflow" not in sys.modules
import keras
from tests.test_examples import keras_checks
def copied_in():
    # load_state_dict, register_buffer and ud.tensor of NumPy arrays that JAX would share (64-byte aligned, as
    # every torch tensor's .numpy() is): the caller editing them after leaves the model as it is
    import torch

    with ud.use_backend("keras"):
        source = {k: v.detach().numpy() for k, v in torch.nn.Linear(64, 64).state_dict().items()}
        model = ud.nn.Linear(64, 64)
        model.load_state_dict(source)
        loaded = np.array(ud.to_numpy(model.weight))
        buffer, values = torch.zeros(64).numpy(), torch.ones(64).numpy()
        model.register_buffer("kept", buffer)
        tensor = ud.tensor(values)
        source["weight"][:] = 7.0
        buffer[:] = 3.0
        values[:] = 5.0
        return {"weight": bool(np.array_equal(ud.to_numpy(model.weight), loaded)),
                "buffer": bool(not ud.to_numpy(model.kept).any()),
                "tensor": bool((ud.to_numpy(tensor) == 1.0).all())}


def ctc_of_a_parameter():
    # ud.ops.ctc_loss runs as one jax.jit of its recursion when called eagerly: a parameter (a Keras variable) given
    # to it, eagerly or as a model's variable inside ud.value_and_grad, reached jit as it was (JAX's ValueError)
    import torch

    scores = rng.standard_normal((6, 2, 4))
    log_probs = (scores - np.log(np.exp(scores).sum(2, keepdims=True))).astype(np.float32)
    targets, input_lengths, target_lengths = np.array([[1, 1], [2, 3]]), np.array([6, 5]), np.array([2, 1])
    expected = torch.tensor(log_probs, requires_grad=True)
    loss = torch.nn.functional.ctc_loss(expected, *map(torch.tensor, (targets, input_lengths, target_lengths)))
    loss.backward()
    with ud.use_backend("keras"):
        p = ud.nn.Parameter(ud.tensor(log_probs))
        f = lambda: ud.ops.ctc_loss(p, targets, input_lengths, target_lengths)
        try:
            eager = float(f())
            value, (grad,) = ud.value_and_grad(f, argnums=[p])()
        except Exception as error:
            return f"{type(error).__name__}: {str(error).splitlines()[0]}"
        return max(abs(eager - loss.item()), abs(float(value) - loss.item()),
                   float(np.abs(np.asarray(ud.to_numpy(grad)) - expected.grad.numpy()).max()))


def max_norm_writes():
    # Embedding(max_norm=...) writes its weight in the forward: kept by ud.function as torch keeps it; Keras's own
    # train step (train_step and fit, eager or not), which threads the non-trainable variables alone and would drop
    # it, refuses the forward
    out = {"errors": []}
    with ud.use_backend("keras"):
        embed = ud.nn.Embedding(3, 2, max_norm=1.0)
        embed.load_state_dict({"weight": np.array([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])})
        ud.function(lambda tokens: embed(tokens))(ud.tensor(np.array([0, 1])))
        out["function"] = np.round(ud.to_numpy(embed.weight).astype(np.float64), 6).tolist()
        model = ud.nn.Sequential(embed, ud.nn.Flatten(), ud.nn.Linear(4, 2))
        tokens, labels = np.array([[0, 1], [2, 2]]), np.array([0, 1])
        for eager in (False, True):
            for call in (lambda: ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(
                             model.parameters(), lr=0.5), eager=eager)(tokens, labels),
                         lambda: ud.fit(model, tokens, labels, loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.SGD(
                             model.parameters(), lr=0.5), verbose=0, eager=eager)):
                try:
                    call()
                    out["errors"].append(None)
                except Exception as error:
                    out["errors"].append([type(error).__name__, str(error).split(" (of shape")[0]])
        # Keras's predict step threads the non-trainable variables alone too: the same error (it dropped the write
        # silently); a frozen Embedding's weight is threaded, so its step keeps the write
        try:
            ud.predict(model, tokens)
            out["errors"].append(None)
        except Exception as error:
            out["errors"].append([type(error).__name__, str(error).split(" (of shape")[0]])
        # evaluate's compiled evaluation (a ud.function over every variable's value) keeps it, as torch's forward
        # (it was refused as in predict): the loss and the weight against torch's, two batches of one sample each
        state = {k: np.asarray(ud.to_numpy(v), np.float64) for k, v in model.state_dict().items()}
        evaluated = ud.evaluate(model, tokens, labels, loss=ud.nn.CrossEntropyLoss(), batch_size=1)
        out["evaluated"] = [evaluated["loss"], np.asarray(ud.to_numpy(embed.weight), np.float64).tolist()]
    import torch

    reference = torch.nn.Sequential(torch.nn.Embedding(3, 2, max_norm=1.0), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    reference.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()})
    with torch.no_grad():
        losses = [float(torch.nn.functional.cross_entropy(reference(torch.tensor(tokens[i:i + 1])),
                                                          torch.tensor(labels[i:i + 1]))) for i in range(2)]
    out["torch_evaluated"] = [sum(losses) / 2, reference[0].weight.double().tolist()]
    with ud.use_backend("keras"):
        frozen = ud.nn.Embedding.from_pretrained(ud.tensor(np.array([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])),
                                                 max_norm=1.0)
        model = ud.nn.Sequential(frozen, ud.nn.Flatten(), ud.nn.Linear(4, 2))
        ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.5))(tokens, labels)
        out["frozen"] = np.round(ud.to_numpy(frozen.weight).astype(np.float64), 6).tolist()
    return out


def composite_per_backend():
    # one jit per composite, device and dtype was shared by JAX and Keras on JAX (whose looping composite is its
    # host's composite): the backend called second ran the first one's trace, built with the other backend's ops
    # (a body's Python runs once per trace)
    from unidl import config

    calls = []

    def doubled(x):
        calls.append(config.get_backend())
        return x * 2

    for name in ("jax", "keras", "jax", "keras"):
        with ud.use_backend(name):
            config.backend().looping_composite(doubled, ("x",))(ud.tensor(np.ones(3, np.float32)))
    return calls


def composite_programs():
    # the XLA programs lowered by the first eager call of a composite activation (mish), a composite loss (soft
    # margin's core) and that loss's value and gradient, on operands of a shape used nowhere else here: the
    # composite's one jit (its gradient's: the jit's linearized forward and its transpose), where Keras-on-JAX ran
    # the ops one by one, each a program of its own (mish: 9, the loss's gradient: 17)
    import jax

    lowered = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(kwargs.get("fun_name"))

    with ud.use_backend("keras"):
        draws = np.random.default_rng(3)  # (the script's rng draws the other entries' data)
        scores = ud.tensor(draws.standard_normal((3, 7)).astype(np.float32))
        signs = ud.tensor(np.sign(draws.standard_normal((3, 7))).astype(np.float32))
        ud.value_and_grad(lambda a: ud.ops.sum(a * a))(ud.tensor(np.ones(2, np.float32)))  # (any gradient's seed)
        calls = {"activation": lambda: ud.ops.mish(scores), "loss": lambda: ud.nn.SoftMarginLoss()(scores, signs),
                 "gradient": lambda: ud.value_and_grad(lambda a: ud.nn.SoftMarginLoss()(a, signs))(scores)}
        programs = {}
        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            for name, call in calls.items():
                lowered.clear()
                ud.to_numpy(jax.tree_util.tree_leaves(call())[0])
                programs[name] = list(lowered)
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
    return programs


print(json.dumps({
    "copied_in": copied_in(),
    "composite_programs": composite_programs(),
    "composite_per_backend": composite_per_backend(),
    "ctc_of_a_parameter": ctc_of_a_parameter(),
    "framework": keras.backend.backend(),
    "seeded_without_tensorflow": seeded_without_tensorflow,
    "value": abs(ours["value"] - torch["value"]) / abs(torch["value"]),
    "grads": max(max_relative_difference(a, b) for a, b in zip(ours["grads"], torch["grads"])),
    "after_grad": max(max_relative_difference(ours["after_grad"][k], v) for k, v in torch["after_grad"].items()),
    "moved": any(not np.array_equal(torch["after_grad"][k], reference[k]) for k in reference if "running" in k),
    "losses": max_relative_difference(np.array(ours["losses"]), np.array(torch["losses"])),
    "falling": ours["losses"][-1] < ours["losses"][0],
    "state": max(max_relative_difference(ours["state"][k], v) for k, v in torch["state"].items()),
    "traces": ours["traces"],
    "stale": retrace_reaching_new_variables(),
    "unseeded_dropout": unseeded_dropout,
    "dropout_in_step": dropout_in_train_step(),
    "mode_reads": mode_reads(),
    "resume": mid_epoch_resume(),
    "non_finite": infinite_gradient_in_fit(),
    "fp16": fp16_accumulation(),
    "partial_use": partial_use_windows(),
    "loss_windows": loss_only_non_finite_windows(),
    "float64_fit": float64_fit(),
    "graph": keras_model_graph(),
    "unused": unused_layer(),
    "frozen": frozen_layer(),
    "subset_or_reversed": subset_or_reversed(),
    "half_bias": half_bias_gradient(),
    "traced_step_inputs": traced_step_inputs(),
    "eager_random_depths": eager_random_depths(),
    "function_draws": function_draws(),
    "draws_warned": draws_warned(),
    "alternated": alternated(),
    "parity_rules": parity_rules(),
    "ctrl_c": ctrl_c_in_steps(),
    "max_norm": max_norm_writes(),
    "keras_checks": keras_checks(),  # (last: it seeds, imports TensorFlow for a SavedModel and sets the backend)
}))
"""


@pytest.fixture(scope="module")
def result():
    # (one interpreter runs every check: ~100 s on an idle 2-core machine, over 300 s, the helper's default
    # timeout, at a load of 10; the timeout is there for a hang)
    return last_json_line(run_python(_SCRIPT, env={"KERAS_BACKEND": "jax"}, timeout=1200).stdout)


@pytest.fixture
def framework():
    """The framework under Keras for tests/test_examples.py's tests imported above."""
    return "jax"


@pytest.fixture
def checks(result):
    """tests/test_examples.py's ``keras_checks()`` on Keras-on-JAX, from this file's interpreter."""
    return result["keras_checks"]


def test_arrays_given_to_a_model_are_copied_in_on_jax(result):
    """JAX on the CPU takes an aligned NumPy array without a copy: a torch state dict's .numpy() arrays loaded into
    a Keras-on-JAX model stayed shared, and one SGD step of the torch model changed the unidl one."""
    assert result["copied_in"] == {"weight": True, "buffer": True, "tensor": True}


def test_ctc_loss_of_a_parameter_on_jax_matches_torch(result):
    """CTC's compiled recursion (one ``jax.jit``) takes a parameter, eagerly and under ``ud.value_and_grad``, as
    torch's ``F.ctc_loss`` takes one: its value and gradient."""
    assert result["ctc_of_a_parameter"] < 1e-5


def test_jax_and_keras_on_jax_compile_a_composite_apart(result):
    assert result["composite_per_backend"] == ["jax", "keras"]


def test_a_composite_called_eagerly_on_jax_is_one_program(result):
    """A composite op (``unidl.composites.composite``: an activation, a loss's math) called eagerly on Keras-on-JAX
    runs as one ``jax.jit`` of its body, as on the jax backend (the keras backend's ``composite`` is its host's): its
    first call lowers that one program, its value and gradient that program's JVP and transpose, where op by op every
    primitive in it lowered and dispatched a program of its own."""
    assert result["composite_programs"] == {"activation": ["jit(mish)"], "loss": ["jit(_soft_margin_core)"],
                                            "gradient": ["jit(_soft_margin_core)"] * 2}, result["composite_programs"]


def test_grad_and_function_over_keras_variables_on_jax_match_torch(result):
    assert result["framework"] == "jax"
    assert result["value"] < 1e-5 and result["grads"] < 1e-5
    # the forward's batch norm statistics, assigned inside the stateless trace, are written back
    assert result["moved"] and result["after_grad"] < 1e-5
    # ud.function: one trace, the optimizer's and batch norm's updates written back after every call
    assert result["traces"] == 1
    assert result["falling"] and result["losses"] < 1e-5 and result["state"] < 1e-5
    # a retrace reaching variables the first trace did not takes them as values, never as stale constants
    assert result["stale"] < 1e-6


def test_seeding_keras_on_jax_leaves_tensorflow_unimported(result):
    """``ud.manual_seed`` on Keras-on-JAX seeds Keras (``keras.utils.set_random_seed``) without importing TensorFlow,
    which Keras seeds wherever it is installed: seconds and a second framework's memory in every Keras-on-JAX
    process (a data-parallel job's ranks each), for a seed that nothing of unidl's draws from there."""
    assert result["seeded_without_tensorflow"]


def test_dropout_in_a_function_before_any_seed_draws_a_fresh_mask_per_call_on_jax(result):
    """In a process that never called ``ud.manual_seed``, ``ud.ops.dropout`` without a generator makes the keras
    backend's generator inside ``ud.function``'s trace: its state gets its value outside the trace and goes in as
    state, so the call works and each call draws a new mask, as torch's global generator does."""
    check = result["unseeded_dropout"]
    assert "error" not in check, check
    assert all(0.45 < kept < 0.55 for kept in check["kept"]) and check["values"] == [0.0, 2.0], check
    assert not check["same"], check


def test_dropout_in_a_train_step_draws_a_fresh_mask_each_step_on_jax(result):
    """A forward's dropout inside Keras's train step on JAX (a stateless step over the model's state) draws a new
    mask at each step, as on every other backend: its generator's state is threaded through the step, in
    ``ud.train_step`` and in ``fit``'s epoch."""
    losses = result["dropout_in_step"]["losses"]
    assert len(set(losses)) == len(losses), losses
    assert result["dropout_in_step"]["fit_draws"] == 4, result["dropout_in_step"]  # fit's steps keep drawing


def test_function_follows_a_mode_it_reads_without_calling_the_module_on_jax(result):
    """Keras-on-JAX's ``ud.function`` (a stateless trace) keys its traces on a flag only read, as the other
    backends do (tests/backends/test_traced_functions.py): one trace per new combination of modes, eager results;
    and its train step (Keras's JAX trainer) follows a loss module's mode (tests/test_submodule_modes.py), with
    its real ``trace_count``."""
    checks, step_traces = result["mode_reads"]
    # the step's traces (Python runs of Keras's train step, which jax.jit runs only while tracing): one per new
    # mode; a mode that comes back switches back to its compile, traced already (tests/test_submodule_modes.py)
    assert [check["traces"] for check in checks] == [1, 2, 3, 3, 3, 1, 2, 2], checks
    assert all(check["branch"] < 1e-5 and check["dropout"] for check in checks), checks
    # one more trace for a smaller batch, none when a shape comes back; eager=True traces nothing (None)
    assert step_traces == [3, 3, 3, None], step_traces


def test_fit_on_jax_in_float64_agrees_with_torch_to_1e_12(result):
    """``ud.fit`` through Keras's JAX trainer in float64: the trajectory of plain ``torch.nn`` with ``torch.optim``
    (weights and the epochs' mean losses). Keras's type promotion would narrow the float64 matmuls to float32 on
    JAX, and its ``Model.fit`` would cast the float64 arrays it slices to float32 (its default float type)."""
    assert result["float64_fit"]["weights"] < 1e-12 and result["float64_fit"]["losses"] < 1e-12, result["float64_fit"]


def test_a_mid_epoch_checkpoint_in_fit_on_jax_resumes_to_the_same_history(result):
    """Keras's JAX trainer keeps the weights, slots and loss/metric trackers outside their variables during an
    epoch: the checkpoint of step 4 (mid epoch 2) still holds that step's, and a run resumed from it ends with the
    uninterrupted run's History (loss and mae, whose running sums go on from the checkpoint's) and weights, bit
    for bit."""
    resume = result["resume"]
    assert resume["history"] and resume["weights"], resume["straight"]


def test_a_finite_loss_with_an_infinite_gradient_stops_fit_on_jax(result):
    """Issue 13's rule in Keras's JAX trainer: the step is named and its update skipped (the weights are those
    after step 2, which had moved them)."""
    non_finite = result["non_finite"]
    assert "gradient became NaN or infinite at epoch 1, step 3" in (non_finite["error"] or "")
    assert non_finite["steps"] == 2 and non_finite["moved"] and non_finite["before"]


def test_fp16_accumulation_on_jax_checks_and_scales_once_per_update(result):
    """``precision="16-mixed"`` with ``accumulate=2`` on Keras-on-JAX, as tests/test_precision.py on the others."""
    fp16 = result["fp16"]
    assert fp16["inside"] == {"scale": 2.0 ** 16, "finite": True}  # no check before the window's update
    # the overflowing window: no update, the scale halved once (not per micro-step), the skip reported
    assert fp16["overflow"] == {"scale": 2.0 ** 15, "finite": False, "steps": 0, "unchanged": True,
                                "losses": [True, True]}
    assert fp16["steps"] == 2 and fp16["change"] < 1e-2  # two finite windows through fit: the torch loop's change


def test_a_layer_used_at_some_micro_steps_of_a_window_updates_as_torch_on_jax(result):
    """A layer used at a window's first micro-step only, at its last only, and at none (tests/optim/
    test_accumulation_partial_use.py): updated with its momentum, Adam's moments and step count in the first two
    windows and left alone in the third, as torch's loop, in bf16 (the optimizer's window, float32's too) and
    float16 (each value: the largest difference over its bound). float16's window, Keras's loss scaler's, dropped
    the sum of a layer the window's last micro-step did not use (the first window's update lost: 0.7 off with SGD,
    Adam's step not counted), and its checkpointed flags said no parameter had a gradient."""
    assert all(ratio < 1 for ratio in result["partial_use"].values()), result["partial_use"]


def test_a_window_with_a_non_finite_loss_of_finite_gradients_is_skipped_on_jax(result):
    """Keras-on-JAX's optimizer sees only the gradients, which carry the step's loss (``0 * loss`` in one element
    of the smallest used variable): a float32 window whose first micro-step's loss is infinite, its gradients
    finite, skips its update and raises at the window's last call, as on the other backends, and after that first
    micro-step its checkpointed ``finite`` reads False. A float16 one is skipped as an overflow (GradScaler's rule,
    scale halved once, tracker reset; its NaN in its sums alone: ``unidl.training.variable_window``):
    tests/test_precision.py's keras test, in scripts/run-tests.sh's Keras-on-JAX run."""
    windows = result["loss_windows"]
    float32 = windows["float32"]
    assert float32["inside"] and float32["unchanged"] and float32["steps"] == 1, float32
    assert float32["window_finite"] is False, float32  # (float16's: check_non_finite_loss_windows)
    assert "train_step call 4" in (float32["error"] or ""), float32


def test_model_graph_of_keras_on_jax(result):
    """``TensorBoard(write_graph=True)`` on Keras's default framework: the forward traced by ``jax.make_jaxpr`` over
    the Keras variables' values (a StatelessScope), drawn as on the jax backend (tests/callbacks/test_tensorboard.py
    checks the others)."""
    from tests.callbacks.test_tensorboard import assert_cnn_graph

    assert_cnn_graph(result["graph"], "conv_general_dilated", "dot_general")


def test_an_unused_layer_keeps_its_weights_and_adam_steps_on_jax(result):
    """Keras's JAX trainer differentiates every trainable variable (zeros for a layer the loss skips); unidl treats
    the ones the loss's jaxpr does not use as without a gradient, so Adam with weight decay leaves them alone and
    counts no step for them, through ``train_step`` and ``fit`` (tests/optim/test_optimizers.py on the others)."""
    assert result["unused"] == [{"kept": True, "moved": True, "param_steps": [3, 3, 0, 0]}] * 2, result["unused"]


def test_a_frozen_layer_still_in_the_optimizer_stays_and_the_rest_trains_as_torch_on_jax(result):
    """Issue 13's freezing on Keras-on-JAX, whose trainer hands ``stateless_apply`` the trainable variables only
    (Keras's refuses fewer than it was built with): a layer frozen after a first update while its parameters stay
    in the optimizer keeps its weights bit for bit through ``train_step``, ``fit`` and a float16 window (the loss
    scaler's), and the other layer's change is torch's loop's with the same freeze (float16: to its rounding)."""
    frozen = result["frozen"]
    assert all(outcome["frozen"] for outcome in frozen.values()), frozen
    assert not any(outcome["warned"] for outcome in frozen.values()), frozen  # silently, as torch.optim
    assert frozen["train_step"]["others"] < 1e-5 and frozen["fit"]["others"] < 1e-5, frozen
    assert frozen["fp16_window"]["others"] < 1e-2, frozen


def test_an_optimizer_over_some_parameters_or_another_order_follows_torch_optim_on_jax(result):
    """Keras-on-JAX's trainer hands ``stateless_apply`` the model's values in the model's order; unidl matches
    them to the optimizer's by identity: in float16 (Keras's loss scaler around the optimizer) one over the
    parameters in reverse order makes the same update. A head-only optimizer, and one in reverse order, through
    ``train_step`` and ``fit`` in float32: tests/nn/test_freeze.py's keras test, in scripts/run-tests.sh's
    Keras-on-JAX run."""
    outcome = result["subset_or_reversed"]
    assert outcome["float16"] == dict(same=True, trained=True), outcome  # float16: the same update in either order


def test_a_float16_bias_gradient_is_summed_in_float32_on_jax(result):
    """Keras-on-JAX's float16 linear adds its bias in float32 and rounds once, so the backward sums a loss-scaled
    bias gradient over the batch in float32, as PyTorch's (in float16 the partial sums overflowed: NaN, a skipped
    step where torch takes it)."""
    assert result["half_bias"] == [0.0, 0.0, 0.0, 0.0], result["half_bias"]


def test_steps_and_fit_called_in_turn_keep_their_jitted_steps_on_jax(result):
    """Two train steps and ``ud.fit`` of one model with other losses, called in turn three times on Keras-on-JAX:
    each trains with its own loss (the plain torch loop alternating them, 1e-5), and a switch back restores its
    compile with Keras's jitted step: each traced once (a run of Keras's train step per jitted step; every switch
    compiled and traced again: [3, 6, 9]), and once more after the momentum's first change. A new jitted step
    (a new compile's, one made again for that change) never runs another's trace: ``jax.jit`` keeps traces by
    function, and Keras jits the model's bound ``train_step``, equal for every compile."""
    alternated = result["alternated"]
    assert alternated["weights"] < 1e-5 and alternated["history"] < 1e-5, alternated
    assert alternated["traces"] == [[1, 1], [1, 1], [2, 2]] and alternated["runs"] == [3, 3, 6], alternated


def test_a_forward_looping_over_a_step_input_is_one_error_on_jax(result):
    """Keras's JAX trainer traces every input of the step: a forward that loops over a step input's value cannot
    run there; ``train_step`` with an extra input and ``fit`` with ``step_inputs`` raise the same
    ``GraphConstructError`` (docs/dynamic-forward.md), and so do both, eager or not, for a forward branching on a
    tensor's value."""
    expected = ["GraphConstructError", "the forward of DynamicNet uses the value of a tensor in Python control flow "
                "(if/while/range/int on a traced value) or as a boolean mask (x[mask]), a step input among them "
                "(train_step's extra inputs, fit's step_inputs)"]
    branch = ["GraphConstructError", "the forward of BranchOnValue uses the value of a tensor in Python control flow "
              "(if/while/range/int on a traced value) or as a boolean mask (x[mask])"]
    assert result["traced_step_inputs"] == [expected, expected] + [branch] * 4, result["traced_step_inputs"]


def test_a_forward_writing_a_parameter_is_one_error_in_keras_own_step_on_jax(result):
    """``Embedding(max_norm=...)`` renormalizes its weight in the forward: ``ud.function`` keeps the write, as torch's
    in-place renormalization; Keras's JAX trainer threads the non-trainable variables alone and dropped it (a
    silent difference from torch), so ``train_step`` and ``fit``, eager or not, and ``predict`` raise one
    ``GraphConstructError``; ``evaluate``, whose compiled evaluation is a ``ud.function``, keeps it as torch does."""
    assert result["max_norm"]["function"] == [[0.6, 0.8], [0.3, 0.4], [6.0, 8.0]]
    expected = ["GraphConstructError", "the forward writes a trainable parameter"]
    # (train_step and fit, eager or not; predict, which dropped the write)
    assert result["max_norm"]["errors"] == [expected] * 5, result["max_norm"]["errors"]
    # evaluate (refused as predict before) keeps the write, as torch's forward: its loss and the weight written
    (loss, weight), (torch_loss, torch_weight) = result["max_norm"]["evaluated"], result["max_norm"]["torch_evaluated"]
    assert abs(loss - torch_loss) < 1e-6 * abs(torch_loss), (loss, torch_loss)
    assert max(abs(a - b) for row, torch_row in zip(weight, torch_weight) for a, b in zip(row, torch_row)) < 1e-6, \
        (weight, torch_weight)
    assert [round(value, 6) for value in weight[2]] == [0.6, 0.8], weight  # (the row the second batch renormalized)
    # a frozen Embedding's weight (Keras's trainable flag still True) is threaded as state: written as torch's
    assert result["max_norm"]["frozen"] == [[0.6, 0.8], [0.3, 0.4], [0.6, 0.8]], result["max_norm"]["frozen"]


def test_an_eager_step_of_a_forward_drawing_its_depth_trains_as_torch_on_jax(result):
    """``train_step(eager=True)`` runs the forward's Python every step, its draws from Python's ``random``
    included, as torch does (tests/test_dynamic_forward.py on the others): Keras's abstract pass before the first
    step (``_symbolic_build``) drew a depth the first step then missed; and a ``ud.function``'s trace draws once."""
    assert result["eager_random_depths"] < 1e-5, result["eager_random_depths"]
    # and a ud.function's trace draws once, as on the jax backend (the probe finding its variables drew first)
    assert result["function_draws"] is True
    # a draw frozen into a trace warns, a step that runs its Python every call does not
    # (and a NumPy Generator the traced function reads from its closure: it was not seen on Keras-on-JAX)
    assert result["draws_warned"] == [["train_step of DynamicNet drew from Python's random"], [],
                                      ["<lambda> drew from Python's random"],
                                      ["shifted drew from a NumPy Generator (np.random.default_rng())"]], \
        result["draws_warned"]


def test_the_ops_whose_rules_differ_by_framework_follow_torch_on_jax(result):
    """On Keras-on-JAX, against plain torch: ``ud.function``'s Python arguments reach it as they are
    (tests/test_function.py), a layer held outside the model is read as it is at each train step
    (tests/nn/test_batchnorm.py: Keras's jitted step had baked its first weights in), and gradients with respect to
    inputs through BatchNorm in ``ud.function`` write its statistics (they leaked JAX's tracers). ``ud.ops.maximum``/
    ``minimum``'s tie and NaN gradients, ``softmax`` of rows holding inf or NaN, the half-precision ``Linear``'s one
    rounding (tests/parity) and an index or a label out of range inside ``ud.function``, a train step, ``fit``,
    ``evaluate`` or ``predict`` as unidl's ``IndexOutOfRangeError`` (tests/nn/test_sparse.py: Keras-on-JAX's compiled
    functions and jitted steps were not checkified) are those files' own keras tests in the Keras-on-JAX run of
    scripts/run-tests.sh."""
    assert set(result["parity_rules"].values()) == {"ok"}, result["parity_rules"]
    assert len(result["parity_rules"]) == 3, result["parity_rules"]


def test_ctrl_c_in_a_step_on_jax_leaves_the_state_of_a_completed_step(result):
    """Issue 14 on Keras-on-JAX, whose trainer donates the state to its jitted step: a real SIGINT that lands while
    XLA runs a train step, while it runs fit's second step, while fit's first step traces (after Keras's fit has
    taken the state out of the variables), and while it runs ``predict``'s step (Keras's ``predict_on_batch``, which
    donates the state too) and ``evaluate``'s (one compiled program of the forward, the loss and the metrics, which
    donates nothing) ends the call with ``KeyboardInterrupt``, and the model has no
    deleted or emptied arrays: it evaluates and trains on with finite losses, the train step's state is the one it
    computed, and a prediction's the one before it (Keras's own cleanup had written the donated, deleted, arrays
    back, or none)."""
    outcomes = result["ctrl_c"]["runs"]
    assert all(outcome["deleted"] == 0 for outcome in outcomes), outcomes  # (a model left so: no more runs)
    assert [(outcome["interrupted"], outcome["finite"]) for outcome in outcomes] == [(True, True)] * 5, outcomes
    assert outcomes[0]["kept"] in ("new", "old"), outcomes
    assert [outcome["kept"] for outcome in outcomes[3:]] == ["old", "old"], outcomes  # (predict, evaluate)


def test_ctrl_c_in_a_prediction_on_jax_beside_another_threads_call_keeps_its_own_state(result):
    """``KeptStepState`` keeps the state per call and thread, not on the model: while another thread is inside a
    call of the same Keras-on-JAX model (entered after the main thread's), a real SIGINT in the main thread's
    prediction step leaves no deleted array (the main thread's step had kept its state in the other thread's list,
    so its own call found nothing to write back, and the model held the arrays the step was given)."""
    threads = result["ctrl_c"]["threads"]
    assert threads == {"interrupted": True, "deleted": 0, "finite": True}, threads


def test_ctrl_c_in_a_step_on_jax_leaves_no_setting_of_that_step_behind(result):
    """The settings of a Keras-on-JAX step (the traced predict step its call hands Keras's trace, the note of the
    writes its forward made before an error) live in a context of the step's own: after the real SIGINTs of the
    runs above, raised as the step returned, none is left in the thread's context, and another model predicts and
    evaluates with its own step (the KeyboardInterrupt, raised at the first call after the step, had skipped the
    resets after it: every later predict step, of another model too, ran the interrupted one's traced step, and
    ``ud.evaluate`` and ``ud.predict`` of a model of other variables raised Keras's ValueError)."""
    assert result["ctrl_c"]["after"] == {"left": [], "own": True}, result["ctrl_c"]["after"]


def test_an_error_ending_fit_on_jax_keeps_the_newest_state_and_empties_nothing(result):
    """The write-back of ``KeptStepState`` on Keras-on-JAX only where a variable has no live value: a callback that
    zeroes the weights after fit's first step, then raises ``KeyboardInterrupt``, leaves the zeros (not the older
    state of that step); an ordinary error raised while fit's first step compiles (Keras has emptied the variables
    and has nothing to put back) leaves no variable emptied, and a forward runs after it."""
    ctrl_c = result["ctrl_c"]
    assert ctrl_c["zeroed"] is True, ctrl_c["zeroed"]
    assert ctrl_c["compile_error"] == {"failed": "ValueError", "emptied": 0, "forward": True}, ctrl_c
