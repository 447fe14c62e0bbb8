"""The tutorial's dynamic net on every backend: per-step inputs (``step(x, y, depth)``, ``fit``'s ``step_inputs``)
become graph inputs, eager=True runs Python every step, and Python randomness frozen by a trace is reported
(docs/dynamic-forward.md)."""

import contextlib
import os
import random
import warnings

import numpy as np
import pytest
import torch

import unidl as ud
from tests.test_resume_state import Crash, CrashAt
from unidl.errors import RetraceWarning
from unidl.testing import max_relative_difference

R = np.random.default_rng(8)
X, Y = R.standard_normal((16, 4)).astype(np.float32), R.standard_normal((16, 1)).astype(np.float32)
DEPTHS = [0, 2, 1, 3, 2, 0, 1, 3]


class DynamicNet(ud.nn.Module):
    """Redraws its depth every step (PyTorch's "dynamic graph" example): the middle layer is reused 0-3 times."""

    def __init__(self):
        super().__init__()
        self.entry = ud.nn.Linear(4, 8)
        self.middle = ud.nn.Linear(8, 8)
        self.exit = ud.nn.Linear(8, 1)

    def forward(self, x, depth=None):
        h = ud.ops.relu(self.entry(x))
        for _ in range(random.randint(0, 3) if depth is None else depth):
            h = ud.ops.relu(self.middle(h))
        return self.exit(h)


def _trajectory(backend, mode):
    with ud.use_backend(backend):
        ud.manual_seed(0)
        model = DynamicNet()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05),
                             eager=(mode == "eager"))
        losses = []
        random.seed(1)
        for depth in DEPTHS:
            if mode in ("input", "numpy input"):  # a Python int, or NumPy's (a depth from a NumPy generator)
                losses.append(float(ud.to_numpy(step(X, Y, depth if mode == "input" else np.int64(depth)))))
            else:
                losses.append(float(ud.to_numpy(step(X, Y))))
        return np.array(losses), model.state_dict(), step.trace_count


@pytest.mark.parametrize("mode", ["input", "numpy input", "eager"])
def test_dynamic_net_trains_the_same_on_every_backend(mode):
    runs = {b: _trajectory(b, mode) for b in ud.available_backends()}
    reference, weights, _ = runs["torch"]
    for backend, (losses, trained, traces) in runs.items():
        assert max_relative_difference(losses, reference) < 1e-5, backend
        assert all(max_relative_difference(trained[k], weights[k]) < 1e-5 for k in weights), backend
        if mode == "eager":
            assert traces in (None, 0), backend  # nothing compiled
    if mode != "eager" and "tensorflow" in runs:
        assert runs["tensorflow"][2] == 1  # the depth is a graph input: one graph for every depth


def _warns_where_traced(name, match):
    """``pytest.warns(RetraceWarning, match=match)`` where ``name``'s steps and functions are traced; on Keras-on-torch
    (``KERAS_BACKEND=torch``, which scripts/run-tests.sh runs), whose trainer (no ``jit_compile``) and
    ``ud.function`` run the forward in Python at every call as torch does, a draw is a new one each step: no
    warning may be given there (``test_no_warning_where_python_runs_every_step``)."""
    if name == "keras" and os.environ.get("KERAS_BACKEND") == "torch":
        return _no_retrace_warning()
    return pytest.warns(RetraceWarning, match=match)


@contextlib.contextmanager
def _no_retrace_warning():
    """A RetraceWarning in the block is an error: Python ran the forward, so nothing was frozen to warn of."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RetraceWarning)
        yield


@pytest.mark.parametrize("name", ["tensorflow", "keras", "jax"])
def test_python_randomness_in_a_traced_forward_warns(name):
    """One message on every backend that traces, naming the step and its model (Keras on TensorFlow or JAX)."""
    with ud.use_backend(name):
        model = DynamicNet()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05))
        with _warns_where_traced(name, match=r"^train_step of DynamicNet drew from Python's random while being "
                                             r"traced.*eager=True"):
            step(X, Y)


DEPTH_GENERATOR = np.random.default_rng(3)


class GeneratorDepthNet(DynamicNet):
    """Draws its depth from a NumPy ``Generator``: its own attribute, or one of its forward's module globals."""

    def __init__(self, own):
        super().__init__()
        self.generator = np.random.default_rng(3) if own else None

    def forward(self, x):
        return super().forward(x, int((self.generator or DEPTH_GENERATOR).integers(0, 4)))


@pytest.mark.parametrize("name, own", [("tensorflow", True), ("keras", False), ("jax", True), ("jax", False)])
def test_a_numpy_generator_drawn_in_a_traced_forward_warns(name, own):
    """A NumPy ``Generator`` a called module holds, or its forward's globals hold, is frozen into the graph as the
    global ``np.random`` is: the same warning, from ``train_step`` and ``ud.function`` alike."""
    with ud.use_backend(name):
        model = GeneratorDepthNet(own)
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05))
        drew = r"drew from a NumPy Generator \(np.random.default_rng\(\)\) while being traced"
        with _warns_where_traced(name, match=r"^train_step of GeneratorDepthNet " + drew):
            step(X, Y)

        def forward_of_model(x):
            return model(x)

        with _warns_where_traced(name, match=r"^forward_of_model " + drew):
            ud.function(forward_of_model)(ud.tensor(X))


class ListedGeneratorNet(DynamicNet):
    """Draws its depth from a NumPy ``Generator`` held in a list attribute."""

    def __init__(self, generator):
        super().__init__()
        self.generators = [generator]

    def forward(self, x):
        return super().forward(x, int(self.generators[0].integers(0, 4)))


def closure_net(generator):
    """A ``DynamicNet`` whose forward reads ``generator`` from its closure."""
    class ClosureNet(DynamicNet):
        def forward(self, x):
            return super().forward(x, int(generator.integers(0, 4)))

    return ClosureNet()


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
def test_a_generator_in_a_list_or_a_closure_drawn_in_a_traced_forward_warns(name):
    """A NumPy ``Generator`` in a module's list attribute or in its forward's closure, or in the closure of the
    function ``ud.function`` traces, is seen as one the module holds: the same warning (it was not seen: the draw
    was frozen into the graph silently)."""
    drew = r"drew from a NumPy Generator \(np.random.default_rng\(\)\) while being traced"
    with ud.use_backend(name):
        for model in (ListedGeneratorNet(np.random.default_rng(3)), closure_net(np.random.default_rng(3))):
            step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05))
            with pytest.warns(RetraceWarning, match=rf"^train_step of {type(model).__name__} " + drew):
                step(X, Y)
        generator, model = np.random.default_rng(3), DynamicNet()

        def random_depth(x):
            return model(x, int(generator.integers(0, 4)))

        with pytest.warns(RetraceWarning, match=r"^random_depth " + drew):
            ud.function(random_depth)(ud.tensor(X))


def test_no_warning_where_python_runs_every_step():
    for name, eager in (("torch", False), ("tensorflow", True)):
        with ud.use_backend(name), warnings.catch_warnings():
            warnings.simplefilter("error", RetraceWarning)
            model = DynamicNet()
            ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05), eager=eager)(X, Y)


def test_fit_eager_runs_python_every_step(backend):
    model = DynamicNet()
    calls = []
    original = model.forward

    def counted(x, depth=None):
        calls.append(1)
        return original(x, 1)

    object.__setattr__(model, "forward", counted)
    ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.05), epochs=2,
           batch_size=4, verbose=0, eager=True)
    assert len(calls) >= 8  # every one of the 2 x 4 steps ran the Python forward


class BranchOnValue(ud.nn.Module):
    """Python control flow on a tensor's value: one of two layers, by the sign of the batch's sum."""

    def __init__(self):
        super().__init__()
        self.a, self.b = ud.nn.Linear(4, 1), ud.nn.Linear(4, 1)

    def forward(self, x):
        return self.a(x) if ud.ops.sum(x) > 0 else self.b(x)


def test_eager_steps_and_gradients_take_python_control_flow_on_a_value_as_torch(backend):
    """``eager=True`` and ``ud.value_and_grad`` run a forward that branches on a tensor's value (the jax backend's
    check of which parameters the loss uses traced it abstractly: JAX's TracerBoolConversionError), the layer of the
    branch not taken keeping no gradient (None) and its weights, as in plain PyTorch."""
    ud.manual_seed(0)
    model = BranchOnValue()
    reference = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})
    reference.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    torch_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05), eager=True)
    for x in (X, -X, X):
        with _refused_where_keras_traces_every_step(backend, "BranchOnValue"):
            step(x, Y)
        if _keras_trainer_traces(backend):  # (the gradients below are not Keras's trainer's: they run there)
            break
        torch_optimizer.zero_grad()
        layer = reference["a"] if x.sum() > 0 else reference["b"]
        torch.nn.functional.mse_loss(layer(torch.tensor(x)), torch.tensor(Y)).backward()
        torch_optimizer.step()
    for key, value in reference.state_dict().items():
        np.testing.assert_allclose(ud.to_numpy(model.state_dict()[key]), value.numpy(), rtol=1e-5, atol=1e-6)
    _, grads = ud.value_and_grad(lambda: ud.ops.sum(model(ud.tensor(-X))), model.parameters())()
    taken_a = (-X).sum() > 0
    assert [g is None for g in grads] == [not taken_a] * 2 + [taken_a] * 2  # (a.weight, a.bias, b.weight, b.bias)


class DrawnBranch(BranchOnValue):
    """One of two layers by a draw from Python's ``random``, then a branch on the output's value."""

    def forward(self, x):
        h = (self.a if random.random() < 0.5 else self.b)(x)
        return h if ud.ops.sum(h) > -1e9 else -h


def test_the_parameters_a_drawn_branch_used_get_the_gradients(backend):
    """A forward that draws its layer from Python's ``random`` and branches on a value: the layer the draw picked
    gets the gradient, the other None, as torch (the jax backend's check of the parameters used ran the forward
    again from other draws: the unused layer got a gradient of zeros, the used one None)."""
    ud.manual_seed(0)
    model, x = DrawnBranch(), ud.tensor(X)
    for seed in range(4):
        random.seed(seed)
        picked_a = random.Random(seed).random() < 0.5
        _, grads = ud.value_and_grad(lambda: ud.ops.sum(model(x)), model.parameters())()
        assert [g is None for g in grads] == [not picked_a] * 2 + [picked_a] * 2, seed


class Scaled(ud.nn.Module):
    """A linear layer times a per-step input; records the dtype each Python run of its forward computed in."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 1)
        self.dtypes = []

    def forward(self, x, scale):
        out = self.fc(x) * scale
        self.dtypes.append(str(out.dtype).replace("torch.", "").replace("<dtype: '", "").rstrip("'>"))
        return out


def _scaled_step_loss(eager, precision=None):
    """``(model, loss)`` of one step of a new ``Scaled`` with a float64 tensor of the backend as its scale."""
    ud.manual_seed(0)
    model = Scaled()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05), eager=eager,
                         precision=precision)
    return model, ud.to_numpy(step(X, Y, ud.tensor(np.array([2.0]), "float64")))


@pytest.mark.parametrize("eager", [False, True])
def test_a_float64_tensor_among_the_step_inputs_computes_in_unidls_dtype(backend, eager):
    """A step input that is a float64 tensor of the backend (a per-step scale) reaches the forward in unidl's
    float32, as x does, on every backend: torch's step passed it on as it was and alone trained in float64 (its
    loss float64 too). The loss is torch's float32 oracle's."""
    model, loss = _scaled_step_loss(eager)
    assert loss.dtype == np.float32 and model.dtypes and set(model.dtypes) == {"float32"}, (loss.dtype, model.dtypes)
    ud.manual_seed(0)
    initial = Scaled().state_dict()  # (the weights before the step: the same seed)
    weight, bias = torch.tensor(np.array(initial["fc.weight"])), torch.tensor(np.array(initial["fc.bias"]))
    wanted = torch.mean((2.0 * (torch.tensor(X) @ weight.T + bias) - torch.tensor(Y)) ** 2)
    assert abs(float(loss) - wanted.item()) <= 1e-6 * wanted.item()


@pytest.mark.parametrize("name", [name for name in ("torch", "jax") if name in ud.available_backends()])
def test_a_float64_tensor_among_mixed_precision_step_inputs_is_cast_as_x(name):
    """The same under ``precision="bf16-mixed"``: the forward's bfloat16 output times the float32 scale is float32
    (torch's and JAX's promotion; TensorFlow refuses arithmetic on two dtypes, as it does outside unidl), where
    torch's step computed it in float64."""
    with ud.use_backend(name):
        model, loss = _scaled_step_loss(False, "bf16-mixed")
    assert loss.dtype == np.float32 and model.dtypes and set(model.dtypes) == {"float32"}, (loss.dtype, model.dtypes)


class DrawingClassifier(DynamicNet):
    """DynamicNet with three class scores: ``fit`` checks its labels and metrics against one forward first."""

    def __init__(self):
        super().__init__()
        self.exit = ud.nn.Linear(8, 3)


def test_fit_draws_from_pythons_random_only_in_its_steps(backend):
    """``fit`` of a net that draws its depth from Python's ``random`` (eager steps: Python runs every one) gives the
    losses of a ``train_step`` loop over the same batches from the same seed, and leaves ``random`` where that loop
    does: the forward ``fit`` runs first to check the labels and metrics against its output draws nothing (it took
    one draw, so every step's depth was the loop's next one)."""
    labels = (np.abs(Y[:, 0]) * 2).astype(np.int64) % 3

    def run(train):
        ud.manual_seed(0)
        random.seed(1)
        model = DrawingClassifier()
        losses = train(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.05))
        return losses, random.random()

    def loop(model, loss, optimizer):
        step = ud.train_step(model, loss, optimizer, eager=True)
        return [np.mean([float(ud.to_numpy(step(X[i:i + 8], labels[i:i + 8]))) for i in (0, 8)]) for _ in range(2)]

    def fitted(model, loss, optimizer):
        return ud.fit(model, (X, labels), loss=loss, optimizer=optimizer, epochs=2, batch_size=8, shuffle=False,
                      verbose=0, eager=True, metrics=["accuracy"])["loss"]

    (expected, after), (got, got_after) = run(loop), run(fitted)
    assert max_relative_difference(np.array(got), np.array(expected)) < 1e-6 and got_after == after


FORWARD_DEPTHS = []  # the depth each Python run of CountedNet's forward saw: once per trace in a graph


class CountedNet(DynamicNet):
    """DynamicNet that records every Python run of its forward (a graph runs it once, when traced)."""

    def forward(self, x, depth=None):
        FORWARD_DEPTHS.append(depth)
        return DynamicNet.forward(self, x, depth)


def _depth_of(asked):
    """``step_inputs`` for fit over 2 batches of 8 an epoch: the depth of ``DEPTHS`` at that step, noting each ask."""
    def depth_of(epoch, step):
        asked.append((epoch, step))
        return DEPTHS[2 * epoch + step]
    return depth_of


@pytest.mark.parametrize("eager", [False, True])
def test_fit_passes_step_inputs_to_the_forward_as_graph_inputs(backend, eager):
    """ud.fit with step_inputs trains as the torch train_step loop over the same batches and depths, asking
    for each step's depth once, in order; on tensorflow the depth is a graph input (one trace for 8 steps);
    with eager=True Python runs the forward at every step with that step's depth, on every backend."""
    with ud.use_backend("torch"):  # the oracle: torch's eager step(x, y, depth), batch by batch
        ud.manual_seed(0)
        reference = DynamicNet()
        step = ud.train_step(reference, ud.nn.MSELoss(), ud.optim.SGD(reference.parameters(), lr=0.05))
        step_losses = [float(ud.to_numpy(step(X[8 * (i % 2):][:8], Y[8 * (i % 2):][:8], depth)))
                       for i, depth in enumerate(DEPTHS)]
    ud.manual_seed(0)
    model = CountedNet()
    asked = []
    FORWARD_DEPTHS.clear()
    with _refused_where_keras_traces_every_step(backend, "CountedNet"):
        history = ud.fit(model, (X, Y), batch_size=8, epochs=4, shuffle=False, loss=ud.nn.MSELoss(),
                         optimizer=ud.optim.SGD(model.parameters(), lr=0.05), verbose=0,
                         step_inputs=_depth_of(asked), eager=eager)
    if _keras_trainer_traces(backend):
        return
    assert asked == [(epoch, step) for epoch in range(4) for step in range(2)]
    epoch_losses = np.mean(np.reshape(step_losses, (4, 2)), axis=1)  # equal batches: the epoch mean
    assert max_relative_difference(np.array(history.history["loss"]), epoch_losses) < 1e-5
    weights = reference.state_dict()
    trained = model.state_dict()
    assert all(max_relative_difference(trained[k], weights[k]) < 1e-5 for k in weights)
    if eager or backend == "torch":  # Python runs every step with that step's depth (jax's eager step runs the
        runs = [int(depth) for depth in FORWARD_DEPTHS]  # forward twice: once more to find the parameters used)
        assert len(runs) in (len(DEPTHS), 2 * len(DEPTHS))
        assert runs == [depth for depth in DEPTHS for _ in range(len(runs) // len(DEPTHS))]
    elif backend == "tensorflow":
        assert len(FORWARD_DEPTHS) == 1 and not isinstance(FORWARD_DEPTHS[0], int)  # one graph, depth a tensor


@pytest.mark.parametrize("name", [name for name in ("torch", "keras") if name in ud.available_backends()])
def test_a_resumed_fit_asks_for_the_step_inputs_of_the_uninterrupted_run(tmp_path, name):
    """unidl's own epoch loop (torch; tensorflow and jax run the same) and Keras's trainer (keras's fit_epoch)."""
    def run(directory, crash_after=None, resume_from=None):
        asked = []
        callbacks = [ud.callbacks.Checkpoint(directory, every_steps=3)]
        if crash_after is not None:
            callbacks.append(CrashAt(crash_after))
        with ud.use_backend(name):
            ud.manual_seed(0)
            model = DynamicNet()
            try:
                ud.fit(model, (X, Y), batch_size=8, epochs=3, shuffle=False, loss=ud.nn.MSELoss(), verbose=0,
                       optimizer=ud.optim.SGD(model.parameters(), lr=0.05), callbacks=callbacks,
                       step_inputs=_depth_of(asked), resume_from=resume_from)
            except Crash:
                pass
            return asked, model.state_dict()

    with _refused_where_keras_traces_every_step(name, "DynamicNet"):
        straight, weights = run(tmp_path / "straight")
    if _keras_trainer_traces(name):
        return
    run(tmp_path / "run", crash_after=4)  # in epoch 1 (0-based): the newest checkpoint is after its first batch
    resumed, trained = run(tmp_path / "run", resume_from=tmp_path / "run")
    assert resumed == straight[3:] == [(1, 1), (2, 0), (2, 1)]
    assert all(max_relative_difference(trained[k], weights[k]) < 1e-6 for k in weights)


@pytest.mark.parametrize("step_inputs, given", [
    (3, "int"), (lambda epoch, step: "deep", "str 'deep'"), (lambda epoch, step: [1, 2], r"list \[1, 2\]"),
    (lambda epoch, step: (1, None), r"tuple \(1, None\)"),
])
def test_fit_refuses_bad_step_inputs_before_training(backend, step_inputs, given):
    """Not a function, or a value that is not a number, array, tensor or tuple of them: a TypeError naming it,
    before the first step changes a weight."""
    model = DynamicNet()
    before = model.state_dict()
    with pytest.raises(TypeError, match=rf"step_inputs.*{given}"):
        ud.fit(model, (X, Y), batch_size=8, loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.05),
               verbose=0, step_inputs=step_inputs)
    assert all(np.array_equal(model.state_dict()[k], before[k]) for k in before)



class _ScaledNet(ud.nn.Module):
    """A forward whose step input has no default: trained by step_inputs, it cannot run as model(x) alone."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 3)

    def forward(self, x, scale):
        return self.fc(x) * scale


@pytest.mark.parametrize("options", [dict(loss="cross_entropy"), dict(loss="mse", metrics=["mae"])],
                         ids=["label check", "metrics"])
def test_fits_probe_of_a_forward_whose_step_input_has_no_default_is_one_clear_type_error(backend, options):
    # fit reads the output's shape from model(x) of one sample before training: Python's bare "missing 1 required
    # positional argument" did not say why fit called the forward without its step inputs, nor what to change
    model = _ScaledNet()
    targets = np.arange(16) % 3 if options["loss"] == "cross_entropy" else np.zeros((16, 3), np.float32)
    with pytest.raises(TypeError, match=r"_ScaledNet.forward\(x, scale\) cannot be called on x alone: missing a "
                                        r"required argument: 'scale'.*give the forward's extra inputs defaults"):
        ud.fit(model, (X, targets), batch_size=8, optimizer="sgd", verbose=0, step_inputs=lambda epoch, step: 2.0,
               **options)


def test_fits_probe_calls_a_forward_whose_missing_input_a_forward_pre_hook_gives(backend):
    # the probe checked the forward's signature against model(x) alone and refused what the pre-hook completes;
    # validation's loss is the hook's forward of the trained weights: torch's cross entropy of 2 * (x W^T + b)
    model = _ScaledNet()
    model.register_forward_pre_hook(lambda module, args: (args[0], 2.0))
    targets = np.arange(16) % 3
    history = ud.fit(model, (X, targets), batch_size=8, loss="cross_entropy", optimizer="sgd", verbose=0,
                     validation_data=(X, targets))
    weights = {key: torch.tensor(np.asarray(value)) for key, value in model.state_dict().items()}
    logits = 2.0 * torch.nn.functional.linear(torch.tensor(X), weights["fc.weight"], weights["fc.bias"])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(targets)).item()
    assert abs(history["val_loss"][0] - expected) < 1e-5 * max(1.0, abs(expected))


class _TorchDynamicNet(torch.nn.Module):
    """DynamicNet in plain PyTorch (the oracle of the accumulation test)."""

    def __init__(self, state):
        super().__init__()
        self.entry, self.middle, self.exit = torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)
        self.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state.items()})

    def forward(self, x, depth):
        h = torch.relu(self.entry(x))
        for _ in range(depth):
            h = torch.relu(self.middle(h))
        return self.exit(h)


# accumulate=2 windows of depths: the middle layer gets a gradient in the last micro-step only, the first only
# (its sum must not leak into the next window), in none (not at depth 0), in both
WINDOWS_WITH_NONE = [0, 2, 2, 0, 0, 0, 1, 1]
WINDOWS_WITH_SOME = [0, 2, 2, 0, 1, 1]
_OPTIMIZERS = {"sgd": ("SGD", dict(lr=0.05, momentum=0.9)), "adam": ("Adam", dict(lr=0.01))}


def accumulation_differences(backend, kind, eager, depths, accumulate=2) -> dict:
    """``{parameter: max relative difference}`` between DynamicNet trained on ``backend`` by ``train_step`` with
    ``accumulate`` over ``depths`` (two 8-sample batches in turn) and the same in plain PyTorch: ``(loss / N)
    .backward()`` per micro-step, ``step()`` and ``zero_grad(set_to_none=True)`` every N-th. With Adam, also
    ``"param_steps"``: 0 when unidl's per-parameter step counts equal torch.optim's ``state[p]["step"]``, else 1."""
    name, options = _OPTIMIZERS[kind]
    with ud.use_backend(backend):
        model = DynamicNet()
        net = _TorchDynamicNet(model.state_dict())
        expected_optimizer = getattr(torch.optim, name)(net.parameters(), **options)
        optimizer = getattr(ud.optim, name)(model.parameters(), **options)
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=accumulate, eager=eager)
        for index, depth in enumerate(depths):
            batch = slice(8 * (index % 2), 8 * (index % 2) + 8)
            step(X[batch], Y[batch], depth)
            loss = torch.nn.functional.mse_loss(net(torch.tensor(X[batch]), depth), torch.tensor(Y[batch]))
            (loss / accumulate).backward()
            if (index + 1) % accumulate == 0:
                expected_optimizer.step()
                expected_optimizer.zero_grad(set_to_none=True)
        expected = net.state_dict()
        differences = {key: max_relative_difference(value, expected[key].numpy())
                       for key, value in model.state_dict().items()}
        if kind == "adam":
            counts = [int(expected_optimizer.state[p]["step"]) if p in expected_optimizer.state else 0
                      for p in net.parameters()]
            differences["param_steps"] = int(optimizer.state_dict()["param_steps"] != counts)
        return differences


def keras_host_accumulation():
    """Where Keras runs on torch (tests/test_examples.py's interpreter), on the keras backend there: the SGD-momentum
    case of the accumulation test below and Adam's per-parameter steps (``accumulation_differences``), and the
    float16 run (``_float16_run``) against torch's: ``{"sgd": differences, "adam": differences, "float16": (same
    loss-scale decisions, weights' largest difference)}``. None on Keras's other frameworks (Keras-on-JAX cannot
    build DynamicNet with a depth input: docs/dynamic-forward.md)."""
    import keras

    if keras.backend.backend() != "torch":
        return None
    decisions, weights = _float16_run("keras")
    expected_decisions, expected = _float16_run("torch")
    return {"sgd": accumulation_differences("keras", "sgd", True, WINDOWS_WITH_NONE),
            "adam": accumulation_differences("keras", "adam", True, WINDOWS_WITH_NONE, 1),
            "float16": (decisions == expected_decisions,
                        max(max_relative_difference(weights[k], expected[k]) for k in expected))}


@pytest.mark.parametrize("kind,eager,depths", [("sgd", True, WINDOWS_WITH_NONE), ("adam", False, WINDOWS_WITH_SOME)])
def test_accumulation_updates_a_parameter_with_a_gradient_in_any_micro_step(backend, kind, eager, depths):
    """accumulate=2 follows PyTorch's rule for a parameter that gets no gradient in some micro-steps (the middle
    layer at depth 0): ``.grad`` sums the micro-steps it had one in, ``step()`` updates it (and its momentum /
    Adam slots) if it had one in any, skips it if in none, and ``zero_grad()`` empties the window for all; against
    a plain torch.optim loop. A window without any gradient for it runs eagerly: in a TensorFlow graph the depth
    is a graph input, and a loop run 0 times gives zero gradients (a zero gradient still moves momentum).
    Keras on torch: tests/test_examples.py (``keras_host_accumulation``) and scripts/run-tests.sh."""
    with _refused_where_keras_traces_every_step(backend, "DynamicNet"):
        differences = accumulation_differences(backend, kind, eager, depths)
    if _keras_trainer_traces(backend):
        return
    assert all(difference < 1e-6 for difference in differences.values()), differences


@pytest.mark.parametrize("eager", [True, False])
def test_a_window_resumed_from_a_checkpoint_keeps_which_parameters_had_a_gradient(backend, tmp_path, eager):
    """A checkpoint taken one micro-step into an accumulate=2 window in which the middle layer has had no gradient
    (depth 0), resumed by a fresh model, optimizer and step: the layer still has none, so the window's update
    leaves it (and its momentum) alone, as the uninterrupted torch.optim loop does. The window's state keeps
    ``has_gradient``; before, a loaded part-full window counted every parameter as having one, and momentum moved
    the layer. Graphs: the depth is a graph input, where TensorFlow's loop run 0 times gives zeros (flagged as
    no gradient)."""
    depths = [2, 2, 0, 0, 1, 1]
    with ud.use_backend(backend):
        ud.manual_seed(0)
        model = DynamicNet()
        net = _TorchDynamicNet(model.state_dict())
        expected_optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for index, depth in enumerate(depths):
            batch = slice(8 * (index % 2), 8 * (index % 2) + 8)
            (torch.nn.functional.mse_loss(net(torch.tensor(X[batch]), depth), torch.tensor(Y[batch])) / 2).backward()
            if index % 2:
                expected_optimizer.step()
                expected_optimizer.zero_grad(set_to_none=True)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2, eager=eager)
        with _refused_where_keras_traces_every_step(backend, "DynamicNet"):
            for index, depth in enumerate(depths[:3]):
                step(X[8 * (index % 2):8 * (index % 2) + 8], Y[8 * (index % 2):8 * (index % 2) + 8], depth)
        if _keras_trainer_traces(backend):
            return
        assert optimizer.state_dict()["accumulation"]["has_gradient"] == [True, True, False, False, True, True]
        path = ud.save_checkpoint(tmp_path, model, optimizer)
        resumed = DynamicNet()
        resumed_optimizer = ud.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
        ud.load_checkpoint(path, resumed, resumed_optimizer)
        step = ud.train_step(resumed, ud.nn.MSELoss(), resumed_optimizer, accumulate=2, eager=eager)
        for index, depth in enumerate(depths[3:], start=3):
            step(X[8 * (index % 2):8 * (index % 2) + 8], Y[8 * (index % 2):8 * (index % 2) + 8], depth)
        expected = net.state_dict()
        for key, value in resumed.state_dict().items():
            assert max_relative_difference(value, expected[key].numpy()) < 1e-6, key


@pytest.mark.parametrize("accumulate", [1, 2])
def test_adam_counts_steps_per_parameter(backend, accumulate):
    """Adam's bias correction of a layer that some steps skip (the middle layer at depth 0) follows that layer's
    own updates, as torch.optim's per-parameter ``state["step"]`` does (with one count per optimizer, it was about
    2e-3 off after a skipped step), with and without accumulation; ``state_dict()["param_steps"]`` holds the counts.
    Eager, where every backend's gradient of a skipped layer is None (a TensorFlow graph's loop gives zeros:
    docs/dynamic-forward.md)."""
    with _refused_where_keras_traces_every_step(backend, "DynamicNet"):
        differences = accumulation_differences(backend, "adam", True, WINDOWS_WITH_NONE, accumulate)
    if _keras_trainer_traces(backend):
        return
    assert all(difference < 1e-6 for difference in differences.values()), differences


@pytest.mark.parametrize("kind,accumulate", [("sgd", 1), ("sgd", 2), ("adam", 1)])
def test_a_graph_leaves_a_layer_its_loop_skipped_alone(backend, kind, accumulate):
    """Compiled, with the depth a graph input: where the loop runs no iteration, the middle layer has no gradient
    on every backend, as in PyTorch's eager loop, and momentum / Adam leave it alone. A TensorFlow graph (and
    Keras-on-TF's) gives it zeros there, which moved it with momentum (about 1e-2 off torch); the optimizers now
    read whether the loop ran (tensorflow/control_flow.py)."""
    with _refused_where_keras_traces_every_step(backend, "DynamicNet"):
        differences = accumulation_differences(backend, kind, False, WINDOWS_WITH_NONE, accumulate)
    if _keras_trainer_traces(backend):
        return
    assert all(difference < 1e-5 for difference in differences.values()), differences


def _float16_weights(eager, accumulate):
    ud.manual_seed(0)
    model = DynamicNet()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                         accumulate=accumulate, eager=eager, precision="16-mixed")
    for index, depth in enumerate(WINDOWS_WITH_NONE):
        batch = slice(8 * (index % 2), 8 * (index % 2) + 8)
        step(X[batch], Y[batch] * 0.01, depth)  # (small losses: no overflow at the initial scale)
    return model.state_dict()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_float16_graph_leaves_a_layer_its_loop_skipped_alone(backend, accumulate):
    """The same under float16 mixed precision (its loss scaler and window, Keras's loss-scale optimizer): the
    compiled step equals the eager one, where a skipped layer's gradient is None on every backend."""
    if _keras_trainer_traces(backend):
        for eager in (True, False):
            with _refused_where_keras_traces_every_step(backend, "DynamicNet"):
                _float16_weights(eager, accumulate)
        return
    eager, compiled = _float16_weights(True, accumulate), _float16_weights(False, accumulate)
    assert all(max_relative_difference(compiled[k], eager[k]) < 1e-5 for k in eager), backend


class BranchNet(DynamicNet):
    """The middle layer in one branch of a conditional on a step input (a ``tf.cond`` in a TensorFlow graph)."""

    def forward(self, x, use):
        h = ud.ops.relu(self.entry(x))
        if use > 0:
            h = ud.ops.relu(self.middle(h))
        else:
            h = h * 2.0
        return self.exit(h)


def test_a_graph_leaves_a_layer_of_the_branch_not_taken_alone(backend):
    """A layer read only in the branch not taken has no gradient (PyTorch's rule), in one graph for both branches
    on TensorFlow: Adam leaves it, its moments and its step count alone; against plain torch.optim."""
    uses = [1, 0, 0, 1, 0, 1]
    model = BranchNet()
    if _keras_trainer_traces(backend):
        with _refused_where_keras_traces_every_step(backend, "BranchNet"):
            ud.train_step(model, ud.nn.MSELoss(), ud.optim.Adam(model.parameters(), lr=0.01))(X[:8], Y[:8], 1)
        return
    net = _TorchDynamicNet(model.state_dict())
    expected_optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    optimizer = ud.optim.Adam(model.parameters(), lr=0.01)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    for index, use in enumerate(uses):
        batch = slice(8 * (index % 2), 8 * (index % 2) + 8)
        step(X[batch], Y[batch], use)
        h = torch.relu(net.entry(torch.tensor(X[batch])))
        h = torch.relu(net.middle(h)) if use else h * 2.0
        torch.nn.functional.mse_loss(net.exit(h), torch.tensor(Y[batch])).backward()
        expected_optimizer.step()
        expected_optimizer.zero_grad(set_to_none=True)
    expected = net.state_dict()
    for key, value in model.state_dict().items():
        assert max_relative_difference(value, expected[key].numpy()) < 1e-5, key
    assert optimizer.state_dict()["param_steps"] == [6, 6, 3, 3, 6, 6]
    if ud.get_backend() == "tensorflow":
        assert step.trace_count == 1  # one graph for both branches


def _float16_run(backend):
    """DynamicNet trained 8 steps with ``precision="16-mixed"``: each step's (finite, loss scale), and the weights."""
    with ud.use_backend(backend):
        ud.manual_seed(0)
        model = DynamicNet()
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision="16-mixed")
        decisions = []
        for index, depth in enumerate([1, 2, 1, 3, 2, 1, 1, 3]):
            batch = slice(8 * (index % 2), 8 * (index % 2) + 8)
            step(X[batch], Y[batch], depth)
            decisions.append((optimizer.last_step_finite, step.loss_scale))
        return decisions, model.state_dict()


def test_float16_steps_take_torchs_loss_scale_decisions(backend):
    """float16 with loss scaling: the same steps overflow (none here) and the weights follow torch's. jax summed a
    linear layer's loss-scaled bias gradient over the batch in float16, whose partial sums overflowed at the
    second step where torch's float32 sums do not (a skipped step, the scale halved, 0.16 off torch); it now sums
    in float32 and rounds once, as PyTorch's half-precision linear and convolution do."""
    with _refused_where_keras_traces_every_step(backend, "DynamicNet"):
        decisions, weights = _float16_run(backend)
    if _keras_trainer_traces(backend):
        return
    expected_decisions, expected = _float16_run("torch")
    assert decisions == expected_decisions
    assert all(max_relative_difference(weights[k], expected[k]) < 1e-3 for k in expected), backend


def _keras_trainer_traces(backend) -> bool:
    """Whether ``backend`` trains through Keras's trainer on JAX, which traces every step, eager=True included (a
    forward reading a traced value there is GraphConstructError, docs/dynamic-forward.md)."""
    return backend == "keras" and os.environ.get("KERAS_BACKEND") == "jax"


@contextlib.contextmanager
def _refused_where_keras_traces_every_step(backend, module):
    """Runs the block as it is, except where Keras's trainer on JAX traces every step (``KERAS_BACKEND=jax``, which
    scripts/run-tests.sh runs): there a forward looping or branching on a step input's or a tensor's value cannot
    be traced, and the block must raise unidl's GraphConstructError naming ``module``, what it did and the fixes
    (docs/dynamic-forward.md), rather than JAX's tracer error."""
    if not _keras_trainer_traces(backend):
        yield
        return
    with pytest.raises(ud.errors.GraphConstructError, match=rf"forward of {module} uses the value of a tensor in "
                       r"Python control flow.*Keras's own trainer on Keras-on-jax traces every step.*ud\.ops\.scan"):
        yield


class MaskedRows(ud.nn.Module):
    """Keeps the rows of its output whose sum is positive: a boolean mask as an index (a data-dependent shape)."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 3)

    def forward(self, x):
        out = self.fc(x)
        return out[ud.ops.sum(out, 1) > 0]


class MeanSquare(ud.nn.Module):
    def forward(self, outputs, target):
        return ud.ops.mean(outputs ** 2)


def _masked_rows_reference():
    ud.manual_seed(0)
    model = MaskedRows()
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict({k[3:]: torch.tensor(v) for k, v in model.state_dict().items()})  # (fc.)
    out = reference(torch.tensor(X))
    return model, reference, out[out.sum(1) > 0]


def test_a_boolean_mask_index_runs_eagerly_and_in_functions_as_torch(backend):
    """``out[mask]`` (a shape known only from the values) in an eager step, ``ud.grad``, ``ud.function`` and
    ``ud.predict`` gives torch's values on every backend: on jax the function and the prediction run eagerly with
    the one warning (JAX's raw NonConcreteBooleanIndexError before, from every path)."""
    model, reference, expected = _masked_rows_reference()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RetraceWarning)
        np.testing.assert_allclose(ud.to_numpy(ud.function(lambda x: model(x))(ud.tensor(X))),
                                   expected.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ud.predict(model, X), expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    grads = ud.grad(lambda: ud.ops.mean(model(ud.tensor(X)) ** 2), model.parameters())()
    torch.autograd.backward((expected ** 2).mean())
    for grad, parameter in zip(grads, reference.parameters()):
        np.testing.assert_allclose(ud.to_numpy(grad), parameter.grad.numpy(), rtol=1e-5, atol=1e-6)
    step = ud.train_step(model, MeanSquare(), ud.optim.SGD(model.parameters(), lr=0.1), eager=True)
    if _keras_trainer_traces(backend):
        with pytest.raises(ud.errors.GraphConstructError, match=r"MaskedRows.*boolean mask"):
            step(X, Y)
        return
    loss = step(X, Y)
    assert abs(float(ud.to_numpy(loss)) - float((expected ** 2).mean())) < 1e-5


def test_a_boolean_mask_index_in_a_compiled_jax_step_is_the_graph_construct_error():
    """On jax a compiled ``train_step`` cannot trace a boolean mask's shape: unidl's GraphConstructError naming the
    forward, the mask and the fix (eager=True), as for Python control flow on a value (docs/dynamic-forward.md)."""
    with ud.use_backend("jax"):
        model, _, _ = _masked_rows_reference()
        step = ud.train_step(model, MeanSquare(), ud.optim.SGD(model.parameters(), lr=0.1))
        with pytest.raises(ud.errors.GraphConstructError, match=r"MaskedRows.*boolean mask.*eager=True"):
            step(X, Y)


class BranchOnMean(ud.nn.Module):
    """Doubles its output where the input's mean, read as a Python float, is positive."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(x) * 2 if float(ud.ops.mean(x)) > 0 else self.fc(x)


def test_predict_evaluate_and_an_eager_fits_validation_take_python_control_flow_as_torch(backend):
    """``ud.predict``, ``ud.evaluate`` and the validation of ``fit(eager=True)`` run a forward that reads a value in
    Python as torch does on every backend (jax's compiled prediction raised JAX's ConcretizationTypeError, fit's
    validation after its eager epoch too): on jax they run it eagerly, with the one warning."""
    ud.manual_seed(0)
    model = BranchOnMean()
    reference = torch.nn.Linear(4, 1)
    reference.load_state_dict({k[3:]: torch.tensor(v) for k, v in model.state_dict().items()})  # (fc.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RetraceWarning)
        for x in (X, -X):
            expected = reference(torch.tensor(x)).detach().numpy() * (2 if x.mean() > 0 else 1)
            np.testing.assert_allclose(ud.predict(model, x, batch_size=16), expected, rtol=1e-5, atol=1e-6)
        expected = reference(torch.tensor(X)).detach().numpy() * (2 if X.mean() > 0 else 1)
        loss = ud.evaluate(model, X, Y, batch_size=16, loss="mse")["loss"]
        assert abs(loss - float(((expected - Y) ** 2).mean())) < 1e-5
        if _keras_trainer_traces(backend):  # (its training steps are the documented error; predict ran eagerly)
            return
        history = ud.fit(model, X, Y, batch_size=4, loss="mse", optimizer=ud.optim.SGD(model.parameters(), lr=0.05),
                         eager=True, validation_split=0.25, verbose=0)
    assert np.isfinite(history["val_loss"][0])


class BranchOnActivation(ud.nn.Module):
    """Doubles its output where the output's mean, read as a Python float, is positive: a value that depends on
    the parameters being differentiated."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 1)

    def forward(self, x):
        h = self.fc(x)
        return h * 2 if float(ud.ops.mean(h)) > 0 else h


def test_a_python_number_of_a_differentiated_value_is_torchs_or_one_clear_error_on_jax(backend):
    """``float()`` of an activation in an eager step or under ``ud.grad``: torch's result where the framework
    differentiates eagerly (torch, TensorFlow, Keras on either); on jax, which differentiates by tracing even
    eagerly, one GraphConstructError naming the forward and the fix (JAX's raw ConcretizationTypeError before)."""
    ud.manual_seed(0)
    model = BranchOnActivation()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05), eager=True)
    if backend == "jax" or _keras_trainer_traces(backend):
        with pytest.raises(ud.errors.GraphConstructError, match=r"BranchOnActivation.*(ud.ops.where|Keras's own)"):
            step(X, Y)
        with pytest.raises(ud.errors.GraphConstructError, match=r"depends on what is differentiated.*Python number"):
            ud.grad(lambda: ud.ops.sum(model(ud.tensor(X))), model.parameters())()
        return
    reference = torch.nn.Linear(4, 1)
    reference.load_state_dict({k[3:]: torch.tensor(v) for k, v in model.state_dict().items()})  # (fc.)
    h = reference(torch.tensor(X))
    expected = torch.nn.functional.mse_loss(h * 2 if float(h.mean()) > 0 else h, torch.tensor(Y))
    assert abs(float(ud.to_numpy(step(X, Y))) - float(expected)) < 1e-5
