"""Mixed precision (``precision=`` of ``ud.fit`` and ``ud.train_step``) on every backend: bf16 compute
really happens and still trains the CNN, fp16 loss scaling skips an overflowing step, bad input is refused."""

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference

pytestmark = pytest.mark.heavy  # minutes of tests: run first (tests/conftest.py)


class ScaledMSE(ud.nn.Module):
    """MSE times ``factor``: a huge factor forces the scaled gradients of a float16 forward to overflow."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, outputs, target):
        return ud.ops.mse_loss(outputs, target) * self.factor


def _regression(rng):
    x = rng.standard_normal((16, 8)).astype(np.float32)
    y = rng.standard_normal((16, 3)).astype(np.float32)
    return x, y


def test_bf16_cnn_on_digits_reaches_95_percent(backend):
    x, y = ud.datasets.digits("train")
    x_test, y_test = ud.datasets.digits("test")
    n = len(x) // 32 * 32  # whole batches: one compiled step shape
    model = ud.models.CNN(in_channels=1, num_classes=10, image_size=8)
    schedule = ud.callbacks.LearningRateScheduler(lambda epoch, lr: 4e-3 if epoch < 4 else 8e-4)
    ud.fit(model, (x[:n], y[:n]), loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.Adam(model.parameters(), lr=4e-3),
           epochs=6, batch_size=32, verbose=0, seed=0, callbacks=[schedule], precision="bf16-mixed")
    assert all(v.dtype == np.float32 for v in model.state_dict().values())  # float32 master weights
    accuracy = (ud.to_numpy(ud.predict(model, x_test)).argmax(1) == y_test).mean()
    assert accuracy >= 0.95


_FLOAT32_LOSSES = {}  # (backend, data) -> the float32 loss of the step below: one float32 run for both precisions


def _first_step_loss(x, y, precision):
    """The loss of one SGD train step at ``precision`` of the two-layer net from seed 0 on (x, y)."""
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(8, 16, 3)
    return float(ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1),
                               precision=precision)(x, y))


@pytest.mark.parametrize("precision, rounding", [("bf16-mixed", 2.0 ** -8), ("16-mixed", 2.0 ** -11)])
def test_mixed_precision_computes_in_the_lower_precision(backend, rng, precision, rounding):
    x, y = _regression(rng)
    key = backend, x.tobytes(), y.tobytes()
    if key not in _FLOAT32_LOSSES:
        _FLOAT32_LOSSES[key] = _first_step_loss(x, y, "32")
    losses = {"32": _FLOAT32_LOSSES[key], precision: _first_step_loss(x, y, precision)}
    difference = abs(losses[precision] - losses["32"]) / losses["32"]
    # the lower precision's rounding shows (float32 alone would agree to ~1e-7), within a few of its units
    assert rounding / 64 < difference < 8 * rounding


def test_fp16_loss_scaling_skips_an_overflowing_step(backend, rng):
    x, y = _regression(rng)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    precision = ud.Precision("16-mixed", growth_interval=2)
    step = ud.train_step(model, ScaledMSE(1e30), optimizer, precision=precision)
    assert step.loss_scale == 2.0 ** 16
    before = model.state_dict()
    loss = float(step(x, y))  # finite in float32, but its float16 gradients overflow once scaled
    assert np.isfinite(loss)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # the step was skipped
    assert step.loss_scale == 2.0 ** 15  # and the scale halved

    step = ud.train_step(model, ScaledMSE(1.0), optimizer, precision=precision)
    assert step.loss_scale == 2.0 ** 15  # the optimizer's one scale, halved by the other step
    step(x, y)
    trained = model.state_dict()
    assert not all(np.array_equal(after[k], trained[k]) for k in after)  # a finite step updates
    step(x, y)
    assert step.loss_scale == 2.0 ** 16  # two finite steps in a row (growth_interval=2) doubled the scale


def test_fit_in_fp16_goes_on_past_steps_the_loss_scaler_skips(backend, rng):
    """An overflow that the float16 loss scaler skips is not an error in ``fit`` (GradScaler's rule in a torch
    loop, and ``train_step``'s): the epoch ends, the skipped steps left the weights as they were."""
    x, y = _regression(rng)
    model = ud.models.TwoLayerNet(8, 16, 3)
    before = model.state_dict()
    history = ud.fit(model, (x, y), loss=ScaledMSE(1e30), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
                     batch_size=8, epochs=1, verbose=0, precision="16-mixed")
    assert np.isfinite(history.history["loss"][0])
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_lightnings_aliases_name_the_same_precisions():
    """Lightning's accepted spellings (its names, the string aliases "16" and "bf16", the integers), matched as
    written as Lightning matches them: "16" and "bf16" were refused here though the integer 16 was taken."""
    for given, name in (("32", "32"), ("32-true", "32"), (32, "32"), ("bf16-mixed", "bf16-mixed"),
                        ("bf16", "bf16-mixed"), ("16-mixed", "16-mixed"), ("16", "16-mixed"), (16, "16-mixed")):
        assert ud.Precision(given).name == name, given
    assert ud.Precision("16", init_scale=8.0).init_scale == 8.0  # the float16 loss scaling's settings are taken
    # (Lightning's "-true" names and 64 keep float16, bfloat16 or float64 weights: not unidl's precisions)
    for refused in ("BF16", "bf16-true", "16-true", "64", 64, True):
        with pytest.raises(ValueError, match=r"precision must be one of .*aliases"):
            ud.Precision(refused)


def test_precision_refuses_bad_values_before_training(backend, rng):
    x, y = _regression(rng)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"precision must be one of '32', 'bf16-mixed', '16-mixed'.*'fp8'"):
        ud.train_step(model, ud.nn.MSELoss(), optimizer, precision="fp8")
    with pytest.raises(ValueError, match=r"precision must be one of .*'fp8'"):
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=8, verbose=0, precision="fp8")
    with pytest.raises(ValueError, match="growth_interval must be a positive integer"):
        ud.Precision("16-mixed", growth_interval=0)
    for scale in (1e39, float("inf"), float("nan"), -1.0, "big"):  # (1e39: inf on every backend but torch's)
        with pytest.raises(ValueError, match=r"init_scale must be a positive number no larger than float32's "
                                             r"maximum \(3.4028235e\+38\)"):
            ud.Precision("16-mixed", init_scale=scale)
    with pytest.raises(ValueError, match="set the loss scaling of precision='16-mixed'; precision='bf16-mixed' "
                                         "scales no loss"):
        ud.Precision("bf16-mixed", init_scale=8.0)
    numpy_numbers = ud.Precision("16-mixed", init_scale=np.float32(1024.0), growth_interval=np.int64(100))
    assert (numpy_numbers.init_scale, numpy_numbers.growth_interval) == (1024.0, 100)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with ud.use_dtype("float64"):
        model64 = ud.models.TwoLayerNet(8, 16, 3)
        with pytest.raises(ValueError, match="keeps float32 master weights.*'float64'"):
            ud.train_step(model64, ud.nn.MSELoss(), ud.optim.SGD(model64.parameters(), lr=0.1), precision="bf16-mixed")


# ---- mixed precision with gradient accumulation (torch.amp.GradScaler's accumulation rule) --------------------

def _torch_autocast_loop(state, batches, accumulate, lr=0.1, dtype="bfloat16", losses=("mse_loss",)):
    """The hand-written PyTorch loop: the forward under ``torch.autocast`` (``dtype``), ``(loss / N).backward()``
    over N micro-batches, then one SGD step (no overflow here: a loss scale changes nothing); the trained state.
    ``losses``: the ``torch.nn.functional`` losses of the batches in turn."""
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    net.load_state_dict({k.replace("linear1", "0").replace("linear2", "2"): torch.tensor(np.array(v))
                         for k, v in state.items()})
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for index, (x, y) in enumerate(batches, start=1):
        with torch.autocast("cpu", dtype=getattr(torch, dtype)):
            outputs = net(torch.tensor(x))
        loss = getattr(torch.nn.functional, losses[(index - 1) % len(losses)])
        (loss(outputs.float(), torch.tensor(y)) / accumulate).backward()
        if index % accumulate == 0:
            opt.step()
            opt.zero_grad()
    return {k.replace("0.", "linear1.").replace("2.", "linear2."): v.detach().numpy()
            for k, v in net.state_dict().items()}


@pytest.mark.parametrize("middle", ["PReLU", "GroupNorm", "LayerNorm", "BatchNorm1d"])
def test_a_prelu_or_a_normalization_trains_in_bf16_as_a_torch_autocast_loop(backend, rng, middle):
    """A net with a ``PReLU`` (one weight per channel) or a normalization between its linear layers trained in
    "bf16-mixed": the hand-written torch autocast loop's losses and weights (TensorFlow and Keras raised a
    ``TypeError``: a float32 PReLU or GroupNorm weight times bfloat16 activations)."""
    import torch

    arguments = {"PReLU": (3,), "GroupNorm": (1, 3), "LayerNorm": (3,), "BatchNorm1d": (3,)}[middle]
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)
    model = ud.nn.Sequential(ud.nn.Linear(4, 3), getattr(ud.nn, middle)(*arguments), ud.nn.Linear(3, 1))
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), getattr(torch.nn, middle)(*arguments), torch.nn.Linear(3, 1))
    net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in model.state_dict().items()})
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), precision="bf16-mixed")

    loss_of = _bf16_autocast_mse(x, y)
    _trains_as_a_torch_autocast_loop(step, model, net, loss_of, x, y, lr=0.1, loss_bound=1e-2)


@pytest.mark.parametrize("norm_first", [False, True])
def test_a_transformer_layer_on_a_float32_stream_trains_in_bf16_as_a_torch_autocast_loop(backend, rng, norm_first):
    """A ``TransformerEncoderLayer`` after a float32 layer (an embedding's output, a LayerNorm's under autocast):
    its residual sums promote float32 and bfloat16 to float32 as torch.autocast's (TensorFlow and Keras raised a
    ``TypeError`` for the sum: ``TransformerClassifier`` could not train in "bf16-mixed" there)."""
    import torch

    class Stream(ud.nn.Module):
        def __init__(self, nn):
            super().__init__() if nn is ud.nn else None
            self.norm = nn.LayerNorm(8)
            self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True,
                                                    norm_first=norm_first)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(self.layer(self.norm(x)))

    class TorchStream(torch.nn.Module):
        def __init__(self):
            super().__init__()
            Stream.__init__(self, torch.nn)

        forward = Stream.forward

    x, y = rng.standard_normal((4, 5, 8)).astype(np.float32), rng.standard_normal((4, 5, 1)).astype(np.float32)
    model, net = Stream(ud.nn), TorchStream()
    net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in model.state_dict().items()})
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), precision="bf16-mixed")

    loss_of = _bf16_autocast_mse(x, y)
    initial = model.state_dict()
    _trains_as_a_torch_autocast_loop(step, model, net, loss_of, x, y, lr=0.1, loss_bound=2e-2, weight_bound=None)
    # the updates of all the weights together (a bias from zero moves by 1e-3 in three steps, and bfloat16's rounding
    # of the attention is a tenth of that: no bound per bias)
    moved = np.concatenate([(model.state_dict()[k] - v).ravel() for k, v in initial.items()])
    expected = np.concatenate([(net.state_dict()[k].numpy() - v).ravel() for k, v in initial.items()])
    assert max_relative_difference(moved, expected) < 5e-2


def _bf16_autocast_mse(x, y):
    """``loss_of(net)`` for ``_trains_as_a_torch_autocast_loop``: the MSE of ``net``'s outputs on ``x`` (forward
    under bfloat16 autocast) against ``y``, in float32."""
    import torch

    def loss_of(net):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = net(torch.tensor(x))
        return torch.nn.functional.mse_loss(outputs.float(), torch.tensor(y))

    return loss_of


def _trains_as_a_torch_autocast_loop(step, model, net, loss_of, x, y, lr, loss_bound, weight_bound=1e-2):
    """Three calls of ``step(x, y)`` against three steps of the hand-written torch loop over ``net`` (plain SGD at
    ``lr``; ``loss_of(net)``: its loss of the batch, the forward under ``torch.autocast``): each loss within
    ``loss_bound`` of torch's (relative), then ``model``'s weights within ``weight_bound`` of ``net``'s."""
    import torch

    oracle = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(3):
        loss = loss_of(net)
        oracle.zero_grad()
        loss.backward()
        oracle.step()
        assert abs(float(ud.to_numpy(step(x, y))) - loss.item()) < loss_bound * abs(loss.item())
    for name, value in net.state_dict().items() if weight_bound is not None else ():
        assert max_relative_difference(model.state_dict()[name], value.numpy()) < weight_bound, name


def test_a_class_weighted_smoothed_cross_entropy_trains_in_bf16_as_a_torch_autocast_loop(backend, rng):
    """``CrossEntropyLoss(weight=..., label_smoothing=...)`` (not the fused kernel: the composite of log-softmax,
    gather and class weights) trained in "bf16-mixed": the torch autocast loop's losses and weights, the losses
    in float32 as torch.autocast computes them (on Keras-on-TensorFlow a float32 class weight times bfloat16
    log-probabilities was a ``TypeError``; on Keras's other hosts the loss was computed in bfloat16, 7e-4 off);
    and such a loss computed inside the forward, on the bfloat16 logits of a ``Linear`` (a ``DtypeMismatchError``
    between the two dtypes; TensorFlow and Keras a ``TypeError``)."""
    import torch

    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    weight = [1.0, 2.5, 0.5]
    model = ud.nn.Sequential(ud.nn.Linear(4, 8), ud.nn.ReLU(), ud.nn.Linear(8, 3))
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in model.state_dict().items()})
    loss_fn = ud.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)
    step = ud.train_step(model, loss_fn, ud.optim.SGD(model.parameters(), lr=0.5), precision="bf16-mixed")

    def loss_of(net):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y),
                                                     weight=torch.tensor(weight), label_smoothing=0.1)
        assert loss.dtype == torch.float32
        return loss

    _trains_as_a_torch_autocast_loop(step, model, net, loss_of, x, y, lr=0.5, loss_bound=1e-5)

    class LossInside(ud.nn.Module):  # a model that returns its own loss
        def __init__(self):
            super().__init__()
            self.linear, self.criterion = ud.nn.Linear(4, 3), ud.nn.CrossEntropyLoss(weight=weight)

        def forward(self, x, y):
            return self.criterion(self.linear(x), y)

    class Returned(ud.nn.Module):  # the train step's loss: the model's output
        def forward(self, loss, target):
            return loss

    inside = LossInside()
    linear = torch.nn.Linear(4, 3)
    linear.load_state_dict({k: torch.tensor(np.array(v)) for k, v in inside.linear.state_dict().items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wanted = torch.nn.functional.cross_entropy(linear(torch.tensor(x)), torch.tensor(y), torch.tensor(weight))
    step = ud.train_step(inside, Returned(), ud.optim.SGD(inside.parameters(), lr=0.5), precision="bf16-mixed")
    assert abs(float(ud.to_numpy(step(x, y, y))) - wanted.item()) < 1e-6 * wanted.item()


def test_bf16_accumulation_matches_a_torch_autocast_loop(backend, rng):
    x, y = _regression(rng)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    model = ud.models.TwoLayerNet(8, 16, 3)
    start = model.state_dict()
    expected = _torch_autocast_loop(start, batches, accumulate=2)
    unaccumulated = _torch_autocast_loop(start, batches, accumulate=1)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision="bf16-mixed", accumulate=2)
    for xb, yb in batches:
        step(xb, yb)
    assert optimizer.state_dict()["step"] == 2  # updates, not micro-steps
    trained = model.state_dict()
    for name in start:  # the weights' change, to bfloat16's rounding (accumulation changes it far more)
        change, wanted = trained[name] - start[name], expected[name] - start[name]
        assert max_relative_difference(change, wanted) < 2e-2, name
        assert max_relative_difference(unaccumulated[name] - start[name], wanted) > 0.1, name


def test_fp16_accumulation_checks_and_scales_once_per_update(backend, rng):
    x, y = _regression(rng)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    precision = ud.Precision("16-mixed", growth_interval=2)
    before = model.state_dict()
    step = ud.train_step(model, ScaledMSE(1e30), optimizer, precision=precision, accumulate=2)
    # one window whose scaled float16 gradients overflow (its losses are finite in float32)
    assert np.isfinite(float(step(x[:8], y[:8])))
    assert step.loss_scale == 2.0 ** 16 and optimizer.last_step_finite  # no check before the window's update
    assert np.isfinite(float(step(x[8:], y[8:])))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # the whole update was skipped
    assert optimizer.state_dict()["step"] == 0 and not optimizer.last_step_finite
    assert step.loss_scale == 2.0 ** 15  # halved once for the window, not per micro-step

    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    expected = _torch_autocast_loop(after, batches, accumulate=2, dtype="float16")
    step = ud.train_step(model, ScaledMSE(1.0), optimizer, precision=precision, accumulate=2)
    scale = step.loss_scale
    assert scale == 2.0 ** 15  # the optimizer's one scale, halved by the other step's window
    for i, (xb, yb) in enumerate(batches):  # two finite windows: two updates
        step(xb, yb)
        assert step.loss_scale == (scale if i < 3 else 2 * scale)  # growth_interval=2 counts updates
    assert optimizer.state_dict()["step"] == 2
    trained = model.state_dict()
    for name in after:  # the scaled sums unscaled: the hand loop's change, to float16's rounding
        assert max_relative_difference(trained[name] - after[name], expected[name] - after[name]) < 1e-2, name


class TargetTermMSE(ud.nn.Module):
    """MSE against the first three target columns plus the mean of the fourth: a term of the data alone, without a
    gradient, so that an infinite fourth column makes the loss infinite while every gradient stays finite."""

    def forward(self, outputs, target):
        return ud.ops.mse_loss(outputs, target[:, :3]) + ud.ops.mean(target[:, 3:])


def _windows_with_a_non_finite_loss():
    """Four float16 windows of accumulate=2 (batches of 2 of ``_regression``, an extra zero target column for
    ``TargetTermMSE``): A, B, C, D; B's first micro-step's loss is infinite (its gradients finite)."""
    x, y = _regression(np.random.default_rng(0))
    y = np.concatenate([y, np.zeros((len(y), 1), np.float32)], axis=1)
    batches = [(x[i:i + 2], y[i:i + 2].copy()) for i in range(0, 16, 2)]
    batches[2][1][:, 3] = np.inf
    return batches


def non_finite_loss_windows(eager=False) -> dict:
    """``_windows_with_a_non_finite_loss`` through a float16 ``train_step`` (init_scale 2**10, growth_interval=2,
    SGD with momentum)
    under the backend in force, for ``check_non_finite_loss_windows``: the start and the weights after each window
    (JSON-able lists), the loss scaler state, step count and ``last_step_finite`` after each window, and what B's
    first micro-step reported. Also run on Keras-on-JAX (scripts/run-tests.sh's run of this file's keras tests)."""
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    precision = ud.Precision("16-mixed", init_scale=2.0 ** 10, growth_interval=2)  # (no float16 overflow here)
    step = ud.train_step(model, TargetTermMSE(), optimizer, precision=precision, accumulate=2, eager=eager)
    weights = [{k: ud.to_numpy(v).tolist() for k, v in model.state_dict().items()}]
    windows, inside = [], None
    for index, batch in enumerate(_windows_with_a_non_finite_loss()):
        loss = float(step(*batch))
        if index == 2:  # B's first micro-step: no check, no skip and no scale move before the window's update,
            # and the window's checkpointed flag already False (a state taken here resumes to B's skip)
            inside = {"loss": loss, "finite": optimizer.last_step_finite, "scale": step.loss_scale,
                      "window_finite": optimizer.state_dict()["accumulation"]["finite"]}
        if index % 2:
            weights.append({k: ud.to_numpy(v).tolist() for k, v in model.state_dict().items()})
            windows.append({**optimizer.state_dict()["loss_scaler"], "finite": optimizer.last_step_finite,
                            "steps": optimizer.state_dict()["step"]})
    return {"weights": weights, "windows": windows, "inside": inside}


def _torch_grad_scaler_windows(start, batches):
    """The oracle: a plain torch loop with ``torch.amp.GradScaler`` (init_scale 2**10, growth_interval=2) and
    ``torch.autocast`` float16, ``scaler.scale(loss / 2).backward()`` per micro-step, ``scaler.step``/``update``
    per window, where window B (whose loss is infinite, its gradients finite, which GradScaler alone would apply)
    is given one infinite gradient: the window a non-finite gradient skips. The weights after each window, and
    the scaler's state after each."""
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    net.load_state_dict({k.replace("linear1", "0").replace("linear2", "2"): torch.tensor(np.asarray(v, np.float32))
                         for k, v in start.items()})
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    weights, windows = [], []
    for index, (x, y) in enumerate(batches):
        with torch.autocast("cpu", dtype=torch.float16):
            outputs = net(torch.tensor(x))
        target = torch.tensor(y)
        loss = torch.nn.functional.mse_loss(outputs.float(), target[:, :3]) + target[:, 3:].mean()
        scaler.scale(loss / 2).backward()
        if index % 2:
            if index == 3:  # (B's gradients are finite: GradScaler alone would apply it)
                assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())
                net[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            weights.append({k.replace("0.", "linear1.").replace("2.", "linear2."): v.detach().numpy().copy()
                            for k, v in net.state_dict().items()})
            state = scaler.state_dict()
            windows.append({"scale": state["scale"], "growth_tracker": state["_growth_tracker"]})
    return weights, windows


def check_non_finite_loss_windows(result) -> None:
    """``non_finite_loss_windows``' run treats window B as the float16 loss scaler treats a window with a
    non-finite gradient: B's micro-steps report nothing before its update, but its checkpointed finite flag
    reads False after its first; its update is skipped (weights bit
    for bit those after A, no step counted, ``last_step_finite`` False, no error), the scale halved once and
    the growth tracker reset (the tracker of 1 from A does not reach growth_interval=2 and double the scale);
    the scale, tracker and weights of every window as torch's ``GradScaler`` loop (weights: their change, to
    float16's rounding)."""
    start, *after = ({k: np.asarray(v, np.float32) for k, v in w.items()} for w in result["weights"])
    assert result["inside"] == {"loss": float("inf"), "finite": True, "scale": 2.0 ** 10,
                                "window_finite": False}, result["inside"]
    expected_weights, expected_windows = _torch_grad_scaler_windows(start, _windows_with_a_non_finite_loss())
    assert expected_windows == [{"scale": 2.0 ** 10, "growth_tracker": 1}, {"scale": 2.0 ** 9, "growth_tracker": 0},
                                {"scale": 2.0 ** 9, "growth_tracker": 1}, {"scale": 2.0 ** 10, "growth_tracker": 0}]
    assert result["windows"] == [dict(window, finite=index != 1, steps=[1, 1, 2, 3][index])
                                 for index, window in enumerate(expected_windows)], result["windows"]
    for name in start:
        np.testing.assert_array_equal(after[1][name], after[0][name], err_msg=name)  # B changed nothing
        for got, wanted in zip(after, expected_weights):
            assert max_relative_difference(got[name] - start[name], wanted[name] - start[name]) < 1e-2, name


def test_a_float16_window_with_a_non_finite_loss_of_finite_gradients_is_skipped_as_an_overflow(backend):
    """Issue 13's rule in a float16 window (``check_non_finite_loss_windows``): a loss that is infinite at a
    micro-step that is not the window's last, while its gradients are finite, skips the window, halves the scale
    once and resets the growth tracker, as an overflowing gradient does; on every backend (Keras-on-JAX and
    Keras-on-torch: scripts/run-tests.sh's runs of this file's keras tests)."""
    check_non_finite_loss_windows(non_finite_loss_windows())


def test_a_float16_step_with_a_non_finite_loss_of_finite_gradients_is_skipped_as_an_overflow(backend):
    """Without accumulation too: after one finite step (growth tracker 1), a step whose loss is infinite with
    finite gradients changes no weight, counts no step, halves the scale and resets the tracker (torch's rule,
    where ``GradScaler`` alone sees only gradients); the tracker's 1 must not reach growth_interval=2."""
    batches = _windows_with_a_non_finite_loss()
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = ud.train_step(model, TargetTermMSE(), optimizer,
                         precision=ud.Precision("16-mixed", init_scale=2.0 ** 10, growth_interval=2))
    step(*batches[0])
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 2.0 ** 10, "growth_tracker": 1}
    before = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
    assert float(step(*batches[2])) == float("inf")  # no error: the loss scaler's skip
    assert not optimizer.last_step_finite and optimizer.state_dict()["step"] == 1
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 2.0 ** 9, "growth_tracker": 0}
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(ud.to_numpy(value), before[name], err_msg=name)


@pytest.mark.parametrize("name", ["tensorflow", "keras"])
def test_an_eager_float16_window_with_a_non_finite_loss_is_skipped_as_an_overflow(name):
    """The same outside the graph (``train_step(eager=True)``: TensorFlow's ops one by one, Keras's
    ``train_on_batch`` in eager mode), where the window's code runs as Python."""
    with ud.use_backend(name):
        check_non_finite_loss_windows(non_finite_loss_windows(eager=True))


def test_a_resume_mid_window_trains_the_uninterrupted_weights(backend, rng):
    """The window of mixed precision's accumulation (its scaled sums, count and losses) is optimizer state: a
    state taken 1 micro-step into the second window of accumulate=3 and loaded into a fresh model and optimizer
    goes on to the weights of the uninterrupted run, bit for bit. (float16 with loss scaling: bf16's window is
    the same without the scale, or on keras the optimizer's own, tested in tests/optim/test_accumulation_state.py)"""
    precision = "16-mixed"
    x, y = _regression(rng)
    batches = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 14, 2)]

    def training():
        ud.manual_seed(2)
        model = ud.models.TwoLayerNet(8, 16, 3)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, optimizer, ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, accumulate=3)

    model, optimizer, step = training()
    for index, batch in enumerate(batches):
        step(*batch)
        if index == 3:
            saved = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, optimizer.state_dict()
    expected = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
    assert saved[1]["accumulation"]["micro_steps"] == 1
    model, optimizer, step = training()
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    for batch in batches[4:]:
        step(*batch)
    for name, value in expected.items():
        np.testing.assert_array_equal(ud.to_numpy(model.state_dict()[name]), value, err_msg=name)


def _scaler_run(rng):
    """A float16 run whose loss scale moves: two overflowing steps (targets 1000x too large: their scaled
    float16 gradients overflow, the float32 loss is finite) halve it twice, two finite steps double it once
    (growth_interval=2); the fifth step is one finite update into the next growth interval."""
    x, y = _regression(rng)
    batches = [(x[:4], y[:4] * 1e3)] * 2 + [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)] + [(x[:4], y[:4])]

    def training():
        ud.manual_seed(3)
        model = ud.models.TwoLayerNet(8, 16, 3)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = ud.train_step(model, ScaledMSE(1.0), optimizer, precision=ud.Precision("16-mixed", growth_interval=2))
        return model, optimizer, step

    return batches, training


def test_a_resumed_fp16_run_keeps_its_loss_scale(backend, rng, tmp_path):
    """The dynamic loss scale and its growth tracker are optimizer state (``"loss_scaler"``, as GradScaler's
    ``state_dict``): a fresh model, optimizer and step that load a state taken after the scale moved report the
    scale of the uninterrupted run and go on bit for bit, its next doubling included (the tracker was kept),
    through ``optimizer.load_state_dict`` into a built step and through a checkpoint loaded before the step."""
    batches, training = _scaler_run(rng)
    model, optimizer, step = training()
    scales = []
    for index, batch in enumerate(batches):
        step(*batch)
        scales.append(step.loss_scale)
        if index == 4:
            saved = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, optimizer.state_dict()
            path = ud.save_checkpoint(tmp_path, model, optimizer)
    expected = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
    assert scales == [2.0 ** 15, 2.0 ** 14, 2.0 ** 14, 2.0 ** 15, 2.0 ** 15, 2.0 ** 16, 2.0 ** 16]
    assert saved[1]["loss_scaler"] == {"scale": 2.0 ** 15, "growth_tracker": 1}

    def resumed_run(model, step):
        assert step.loss_scale == 2.0 ** 15
        later = []
        for batch in batches[5:]:
            step(*batch)
            later.append(step.loss_scale)
        assert later == scales[5:]  # the first finite step doubles the scale: the tracker was restored
        for name, value in expected.items():
            np.testing.assert_array_equal(ud.to_numpy(model.state_dict()[name]), value, err_msg=name)

    model, optimizer, step = training()  # the step built first: the state goes into its scaler
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    resumed_run(model, step)

    ud.manual_seed(3)  # no step yet: the checkpoint's scale waits for the float16 step built next
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ud.load_checkpoint(path, model, optimizer)
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 2.0 ** 15, "growth_tracker": 1}
    resumed_run(model, ud.train_step(model, ScaledMSE(1.0), optimizer,
                                     precision=ud.Precision("16-mixed", growth_interval=2)))


def test_a_bad_loss_scaler_state_is_refused_before_anything_changes(backend, rng, tmp_path):
    """A malformed ``"loss_scaler"`` (or a growth tracker a step with this growth_interval never reaches) is a
    ``CheckpointStateError`` naming it, before the optimizer, the scale or (``fit(resume_from=)``) the model
    changes; a scale loaded into an optimizer whose step has no loss scaling is kept for a float16 step built
    later, not dropped."""
    x, y = _regression(rng)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    ud.train_step(model, ud.nn.MSELoss(), optimizer)(x, y)  # a float32 step: no scale
    state = optimizer.state_dict()
    assert "loss_scaler" not in state
    optimizer.load_state_dict(dict(state, loss_scaler={"scale": 8.0, "growth_tracker": 1}))
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 8.0, "growth_tracker": 1}  # kept, saved again
    with pytest.raises(ud.errors.CheckpointStateError, match="growth_interval=1"):  # checked as the step is built
        ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=ud.Precision("16-mixed", growth_interval=1))
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=ud.Precision("16-mixed", growth_interval=2))
    assert step.loss_scale == 8.0  # the float16 step built later takes it
    before = optimizer.state_dict()
    for bad, match in [({"scale": -1.0, "growth_tracker": 0}, "finite number > 0"),
                       ({"scale": float("inf"), "growth_tracker": 0}, "finite number > 0"),
                       ({"scale": 8.0, "growth_tracker": 1.5}, "non-negative integer"),
                       ({"scale": 8.0}, "must have the keys"),
                       ({"scale": 8.0, "growth_tracker": 2}, "growth_interval=2")]:
        with pytest.raises(ud.errors.CheckpointStateError, match=match):
            optimizer.load_state_dict(dict(before, lr=0.5, loss_scaler=bad))
        assert optimizer.lr == 0.1 and step.loss_scale == 8.0  # nothing changed
    optimizer.load_state_dict(dict(before, loss_scaler={"scale": 4.0, "growth_tracker": 1}))
    assert step.loss_scale == 4.0 and optimizer.state_dict()["loss_scaler"] == {"scale": 4.0, "growth_tracker": 1}
    path = ud.save_checkpoint(tmp_path, model, optimizer)
    model = ud.models.TwoLayerNet(8, 16, 3)
    weights = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ud.errors.CheckpointStateError, match="growth_interval=1"):  # fit: before any change
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=1, batch_size=8, verbose=0,
               resume_from=path, precision=ud.Precision("16-mixed", growth_interval=1))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(ud.to_numpy(value), weights[name], err_msg=name)


def test_float16_steps_of_one_optimizer_share_its_loss_scale(backend, rng):
    """The loss scale is the optimizer's, one per optimizer as one ``torch.amp.GradScaler`` in a torch loop: two
    float16 train steps built for it (other batch sizes) and ``fit`` move the same scale, so an overflow in one
    halves the scale the others use next and finite updates in any of them count towards its doubling; its
    ``state_dict`` saves that one scale, and a loaded one reaches every step. Another step with other
    loss-scaling settings is a ``LossScaleMismatchError`` naming both, before anything changes."""
    x, y = _regression(rng)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    precision = ud.Precision("16-mixed", growth_interval=2)
    small = ud.train_step(model, ScaledMSE(1.0), optimizer, precision=precision)
    large = ud.train_step(model, ScaledMSE(1.0), optimizer, precision=precision)  # built last: no owner of its own
    small(x[:4], y[:4] * 1e3)  # its scaled float16 gradients overflow: skipped, the scale halved
    assert small.loss_scale == large.loss_scale == 2.0 ** 15
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 2.0 ** 15, "growth_tracker": 0}
    large(x[:8], y[:8])  # one finite update: the tracker counts it
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 2.0 ** 15, "growth_tracker": 1}
    ud.fit(model, (x, y), loss=ScaledMSE(1.0), optimizer=optimizer, batch_size=16, epochs=1, verbose=0,
           precision=precision)  # the second finite update in a row: growth_interval=2 doubles the scale
    assert small.loss_scale == large.loss_scale == 2.0 ** 16
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 2.0 ** 16, "growth_tracker": 0}
    optimizer.load_state_dict(dict(optimizer.state_dict(), loss_scaler={"scale": 8.0, "growth_tracker": 1}))
    assert small.loss_scale == large.loss_scale == 8.0

    weights = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
    with pytest.raises(ud.errors.LossScaleMismatchError, match=r"growth_interval=2\b.*growth_interval=3\b"):
        ud.train_step(model, ScaledMSE(1.0), optimizer, precision=ud.Precision("16-mixed", growth_interval=3))
    with pytest.raises(ud.errors.LossScaleMismatchError, match=r"init_scale=65536\.0.*init_scale=1024\.0"):
        ud.fit(model, (x, y), loss=ScaledMSE(1.0), optimizer=optimizer, batch_size=16, epochs=1, verbose=0,
               precision=ud.Precision("16-mixed", init_scale=2 ** 10, growth_interval=2))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(ud.to_numpy(value), weights[name], err_msg=name)
    assert optimizer.state_dict()["loss_scaler"] == {"scale": 8.0, "growth_tracker": 1}
    assert ud.train_step(model, ud.nn.MSELoss(), optimizer, precision="bf16-mixed")  # no loss scale: no conflict


def alternated_loss_steps(eager=False) -> dict:
    """Two float16 train steps of one model and optimizer with other loss modules (MSE, L1), called in turn on the
    batches of ``_regression``, under the backend in force: the weights before and after (JSON-able lists) and the
    optimizer's loss scaler state, for ``check_alternated_loss_steps``. Also run where Keras runs on torch and on
    JAX (tests/test_examples.py's ``KERAS_RUN``, a fresh interpreter that need not import torch)."""
    x, y = _regression(np.random.default_rng(0))
    model = ud.models.TwoLayerNet(8, 16, 3)
    start = {k: ud.to_numpy(v).tolist() for k, v in model.state_dict().items()}
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = [ud.train_step(model, loss, optimizer, precision="16-mixed", eager=eager)
             for loss in (ud.nn.MSELoss(), ud.nn.L1Loss())]
    for index in range(3):  # the third call, after the other step's, is the one a stale compile would get wrong
        steps[index % 2](x[4 * index:4 * index + 4], y[4 * index:4 * index + 4])
    return {"start": start, "trained": {k: ud.to_numpy(v).tolist() for k, v in model.state_dict().items()},
            "scaler": optimizer.state_dict()["loss_scaler"]}


def check_alternated_loss_steps(result) -> None:
    """``alternated_loss_steps``' run trained as the hand-written torch autocast loop alternating the two losses,
    with no step skipped (the scale never halved: three finite steps counted): each step its own loss, in float32
    under its own casts. A Keras trainer runs the model as last compiled, so each step must compile it back to its
    own loss first: the other's loss, outside this step's casts, computes in float16 and overflows the scale."""
    x, y = _regression(np.random.default_rng(0))
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]
    start = {k: np.asarray(v, np.float32) for k, v in result["start"].items()}
    expected = _torch_autocast_loop(start, batches, 1, dtype="float16", losses=("mse_loss", "l1_loss"))
    assert result["scaler"] == {"scale": 2.0 ** 16, "growth_tracker": 3}, result["scaler"]
    for name, value in result["trained"].items():  # the weights' change, to float16's rounding
        change = np.asarray(value, np.float32) - start[name]
        assert max_relative_difference(change, expected[name] - start[name]) < 1e-2, name


@pytest.mark.every_keras_framework  # (run again on Keras-on-JAX and -torch: scripts/run-tests.sh)
def test_float16_steps_with_other_losses_called_in_turn_train_as_one_loop():
    """Two float16 steps of one model with other losses, called in turn, train as the torch loop alternating the
    two losses (``check_alternated_loss_steps``). On Keras-TensorFlow in eager mode: ``train_on_batch``, which runs
    the model as last compiled, as the trainers of Keras-on-torch and Keras-on-JAX do (tests/test_examples.py)."""
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        check_alternated_loss_steps(alternated_loss_steps(eager=True))


def test_a_model_runs_under_a_users_own_torch_autocast(rng):
    """A user's own ``torch.autocast`` around a torch-backend model: its layers take the bfloat16 activations beside
    their float32 parameters, as ``torch.nn``'s do (the check of a layer's input dtype knows torch's autocast),
    with the torch net's output."""
    import torch

    x = rng.standard_normal((8, 4)).astype(np.float32)
    with ud.use_backend("torch"):
        model = ud.nn.Sequential(ud.nn.Linear(4, 3), ud.nn.LayerNorm(3), ud.nn.Linear(3, 1))
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 1))
        net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in model.state_dict().items()})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = model(ud.tensor(x)), net(torch.tensor(x))
    assert got.dtype == want.dtype == torch.bfloat16
    np.testing.assert_allclose(got.float().detach().numpy(), want.float().detach().numpy(), rtol=1e-2, atol=1e-2)


class _LossesInside(ud.nn.Module):
    """A forward computing losses from its (half precision) activations, whose sum it returns; ``seen`` gets each
    loss's dtype."""

    def __init__(self, seen):
        super().__init__()
        self.fc, self.seen = ud.nn.Linear(4, 4), seen

    def forward(self, x):
        h = ud.ops.relu(self.fc(x)) + 1.0
        zeros, p = ud.ops.zeros_like(h), ud.ops.sigmoid(h)
        losses = {"smooth_l1_loss": ud.ops.smooth_l1_loss(h, zeros, reduction="sum"),
                  "huber_loss": ud.ops.huber_loss(h, zeros, reduction="sum"),
                  # (the target held, as a distillation's: where softmax underflows to 0 its gradient is NaN, as
                  # PyTorch's, and every step would be skipped)
                  "kl_div": ud.ops.kl_div(ud.ops.log_softmax(h, 1), ud.ops.stop_gradient(ud.ops.softmax(h, 1)),
                                          reduction="sum"),
                  "binary_cross_entropy": ud.ops.binary_cross_entropy(p, ud.ops.zeros_like(p), reduction="sum")}
        self.seen.update({name: str(loss.dtype) for name, loss in losses.items()})
        return ud.ops.reshape(sum(losses.values()), (1,))


class _Itself(ud.nn.Module):
    def forward(self, output, target):
        return ud.ops.sum(output)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_losses_inside_a_forward_compute_in_float32_as_torch_autocast(backend, precision):
    """``smooth_l1_loss``, ``huber_loss``, ``kl_div`` and ``binary_cross_entropy`` of half-precision activations
    are float32, as ``torch.autocast`` computes every loss (they were bfloat16/float16: a float16 sum past 65504 was
    inf, and every step was skipped). The loss here, about 1e5, is finite."""
    seen = {}
    ud.manual_seed(0)
    model = _LossesInside(seen)
    x = np.full((8, 4), 5000.0, np.float32)
    optimizer = ud.optim.SGD(model.parameters(), lr=1e-9)
    step = ud.train_step(model, _Itself(), optimizer, precision=ud.Precision(precision) if precision ==
                         "bf16-mixed" else ud.Precision(precision, init_scale=1.0))
    loss = float(ud.to_numpy(step(x, np.zeros(8, np.float32))))
    assert {name: dtype.rsplit(".", 1)[-1].replace("<dtype: '", "").rstrip("'>") for name, dtype in seen.items()
            } == dict.fromkeys(seen, "float32") and len(seen) == 4
    assert 65504 < loss < np.inf  # (float16's gradients of x = 5000 overflow here, as torch's would: a skip)
    assert optimizer.last_step_finite or precision == "16-mixed"


def test_the_loss_scale_never_grows_past_float32(backend):
    """A scale whose growth would overflow float32 stays where it is, as ``torch.amp.GradScaler`` keeps it
    (torch's backend grew a Python float to 2**128 and skipped every other step; the other backends and Keras's
    loss scaler grew it to inf and skipped every later step)."""
    import torch

    class Bias(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = self.parameter(np.zeros(3, np.float32))

        def forward(self, x):
            return x * 0.5 + self.b

    x = np.full((4, 3), 1e-30, np.float32)
    model = Bias()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.L1Loss(), optimizer,
                         precision=ud.Precision("16-mixed", init_scale=2.0 ** 127, growth_interval=1))
    scales = []
    for _ in range(4):
        step(x, x)
        scales.append((step.loss_scale, optimizer.last_step_finite))
    b = torch.zeros(3, requires_grad=True)
    reference, scaler = torch.optim.SGD([b], lr=0.1), torch.amp.GradScaler("cpu", init_scale=2.0 ** 127,
                                                                           growth_interval=1)
    expected = []
    for _ in range(4):
        reference.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = torch.tensor(x) * 0.5 + b
        scaler.scale(torch.nn.functional.l1_loss(out.float(), torch.tensor(x))).backward()
        scaler.step(reference)
        scaler.update()
        expected.append((scaler.get_scale(), True))
    assert scales == expected == [(2.0 ** 127, True)] * 4


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "constant"])
def test_padding_keeps_its_inputs_dtype_under_autocast(backend, mode):
    """Padding a bfloat16 activation gives bfloat16 on every backend (torch's CPU autocast padded by reflection and
    replication in float32, so the ops after ran in float32 on torch alone; its CUDA autocast does not)."""
    seen = []

    class Padded(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ud.nn.Conv2d(1, 1, 3)

        def forward(self, x):
            padded = ud.ops.pad(self.conv(x), (1, 1, 1, 1), mode=mode)
            seen.append(str(padded.dtype))
            return ud.ops.reshape(padded, (-1, 36))

    model = Padded()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), precision="bf16-mixed")
    step(np.ones((2, 1, 6, 6), np.float32), np.zeros((2, 36), np.float32))
    assert "bfloat16" in seen[-1], seen  # (the step's trace; a shape check's may run outside autocast first)


@pytest.mark.parametrize("after_conv", [False, True])
def test_interpolation_keeps_its_inputs_dtype_under_autocast(backend, after_conv):
    """Bilinear upsampling and adaptive average pooling of unequal bins in a "bf16-mixed" step compute in their
    input's dtype on every backend, as torch's autocast leaves ``F.interpolate`` and ``F.adaptive_avg_pool2d``:
    float32 for the float32 batch, bfloat16 after a convolution (TensorFlow's and JAX's products went through the
    autocast product, in bfloat16, while the branch for non-finite inputs stayed float32: their cond refused the two
    dtypes with a TypeError; the pooling gave bfloat16 there, and on torch a ``DtypeMismatchError``)."""
    import torch

    seen, pooled = [], []

    class Upsampled(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ud.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            source = self.conv(x) if after_conv else x
            up = ud.ops.interpolate(source, scale_factor=2, mode="bilinear")
            seen.append(str(up.dtype))
            pooled.append(str(ud.ops.adaptive_avg_pool2d(source, 3).dtype))  # (bins of 4: 2 and 3 long)
            return ud.ops.reshape(up if after_conv else self.conv(up), (-1, 64))

    model = Upsampled()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), precision="bf16-mixed")
    loss = float(step(np.ones((2, 1, 4, 4), np.float32), np.zeros((2, 64), np.float32)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.ones(2, 1, 4, 4)
        x = torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3), padding=1) if after_conv else x
        wanted = str(torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear").dtype)
        assert str(torch.nn.functional.adaptive_avg_pool2d(x, 3).dtype) == wanted
    assert ("bfloat16" in seen[-1]) == ("bfloat16" in wanted) and np.isfinite(loss), (seen, wanted)
    assert ("bfloat16" in pooled[-1]) == ("bfloat16" in wanted), (pooled, wanted)
