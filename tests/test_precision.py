"""Mixed precision (``precision=`` of ``ud.fit`` and ``ud.train_step``) on every backend: bf16 compute
really happens and still trains the CNN, fp16 loss scaling skips an overflowing step, bad input is refused."""

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference


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


@pytest.mark.parametrize("precision, rounding", [("bf16-mixed", 2.0 ** -8), ("16-mixed", 2.0 ** -11)])
def test_mixed_precision_computes_in_the_lower_precision(backend, rng, precision, rounding):
    x, y = _regression(rng)
    losses = {}
    for name in ("32", precision):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(8, 16, 3)
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), precision=name)
        losses[name] = float(step(x, y))
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
    step(x, y)
    trained = model.state_dict()
    assert not all(np.array_equal(after[k], trained[k]) for k in after)  # a finite step updates
    step(x, y)
    assert step.loss_scale >= 2.0 ** 16  # two finite steps in a row (growth_interval=2) doubled the scale


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
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with ud.use_dtype("float64"):
        model64 = ud.models.TwoLayerNet(8, 16, 3)
        with pytest.raises(ValueError, match="keeps float32 master weights.*'float64'"):
            ud.train_step(model64, ud.nn.MSELoss(), ud.optim.SGD(model64.parameters(), lr=0.1), precision="bf16-mixed")


# ---- mixed precision with gradient accumulation (torch.amp.GradScaler's accumulation rule) --------------------

def _torch_autocast_loop(state, batches, accumulate, lr=0.1, dtype="bfloat16"):
    """The hand-written PyTorch loop: the forward under ``torch.autocast`` (``dtype``), ``(loss / N).backward()``
    over N micro-batches, then one SGD step (no overflow here: a loss scale changes nothing); the trained state."""
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    net.load_state_dict({k.replace("linear1", "0").replace("linear2", "2"): torch.tensor(np.array(v))
                         for k, v in state.items()})
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for index, (x, y) in enumerate(batches, start=1):
        with torch.autocast("cpu", dtype=getattr(torch, dtype)):
            outputs = net(torch.tensor(x))
        (torch.nn.functional.mse_loss(outputs.float(), torch.tensor(y)) / accumulate).backward()
        if index % accumulate == 0:
            opt.step()
            opt.zero_grad()
    return {k.replace("0.", "linear1.").replace("2.", "linear2."): v.detach().numpy()
            for k, v in net.state_dict().items()}


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
    scale = step.loss_scale  # (a new step's, or on keras the optimizer's loss scaler's)
    for i, (xb, yb) in enumerate(batches):  # two finite windows: two updates
        step(xb, yb)
        assert step.loss_scale == (scale if i < 3 else 2 * scale)  # growth_interval=2 counts updates
    assert optimizer.state_dict()["step"] == 2
    trained = model.state_dict()
    for name in after:  # the scaled sums unscaled: the hand loop's change, to float16's rounding
        assert max_relative_difference(trained[name] - after[name], expected[name] - after[name]) < 1e-2, name


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
