"""Mixed precision (``precision=`` of ``ud.fit`` and ``ud.train_step``) on every backend: bf16 compute
really happens and still trains the CNN, fp16 loss scaling skips an overflowing step, bad input is refused."""

import numpy as np
import pytest

import unidl as ud


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
