"""The non-finite guard, the same on every backend and loop: a step whose loss or any gradient is NaN or infinite
updates nothing (weights, slots and step count bit-identical), ``fit`` and ``train_step`` raise
``NonFiniteLossError`` at the same epoch and step, and ``Checkpoint`` never saves non-finite weights."""

import numpy as np
import pytest

import unidl as ud


def _weights(model):
    return {name: np.array(value) for name, value in model.state_dict().items()}


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_nan_pixel_stops_fit_before_the_update_at_the_same_step_everywhere(backend):
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    x[40, 2] = np.nan  # batch 3 of 4 (16 a batch, no shuffling)
    y = np.arange(64) % 3

    def fit(samples, epochs):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(4, 5, 3)
        optimizer = ud.optim.Adam(model.parameters(), lr=0.05)
        try:
            ud.fit(model, (x[:samples], y[:samples]), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer,
                   epochs=epochs, batch_size=16, shuffle=False, verbose=0)
        except ud.NonFiniteLossError as error:
            return model, optimizer, str(error)
        return model, optimizer, None

    model, optimizer, error = fit(64, 2)
    assert error is not None and "at epoch 1, step 3" in error
    clean, _, _ = fit(32, 1)  # the same two clean batches: the weights before batch 3
    after = _weights(model)
    assert _same(after, _weights(clean)) and all(np.isfinite(v).all() for v in after.values())
    assert optimizer.state_dict()["step"] == 2


@pytest.mark.parametrize("loop", ["fit", "train_step"])
def test_a_nan_pixel_stops_an_eager_fit_and_train_step_before_the_update(backend, loop):
    """The NaN-pixel run with ``eager=True`` (Python runs the forward at every step, no compiled step on any
    backend), through ``fit`` and a hand-written loop of ``train_step`` calls, in float32: the same error at the
    same step (epoch 1, step 3; call 3) before the update, the weights bit for bit those after the two clean
    batches and the optimizer's step count 2, as the compiled steps'."""
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    x[40, 2] = np.nan  # batch 3 of 4 (16 a batch, no shuffling)
    y = np.arange(64) % 3

    def train(samples):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(4, 5, 3)
        optimizer = ud.optim.Adam(model.parameters(), lr=0.05)
        try:
            if loop == "fit":
                ud.fit(model, (x[:samples], y[:samples]), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer,
                       epochs=1, batch_size=16, shuffle=False, verbose=0, eager=True)
            else:
                step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, eager=True)
                for start in range(0, samples, 16):
                    step(x[start:start + 16], y[start:start + 16])
        except ud.NonFiniteLossError as error:
            return model, optimizer, str(error)
        return model, optimizer, None

    model, optimizer, error = train(64)
    assert error is not None and ("at epoch 1, step 3" if loop == "fit" else "train_step call 3") in error, error
    clean, _, _ = train(32)  # the same two clean batches: the weights before batch 3
    after = _weights(model)
    assert _same(after, _weights(clean)) and all(np.isfinite(v).all() for v in after.values())
    assert optimizer.state_dict()["step"] == 2 and all(value.dtype == np.float32 for value in after.values())


class _SqrtNet(ud.nn.Module):
    """A finite loss whose gradient is infinite where ``w x`` is 0 (d sqrt(w x)/dw = x / (2 sqrt(w x)) = x / 0)."""

    def __init__(self):
        super().__init__()
        self.w = self.parameter(np.full((1, 2), 0.5, np.float32))

    def forward(self, x):
        return ud.ops.sqrt(ud.ops.linear(x, self.w))


def test_a_finite_loss_with_an_infinite_gradient_is_caught_too(backend):
    model = _SqrtNet()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    good = np.ones((2, 2), np.float32)
    y = np.ones((2, 1), np.float32)
    step(good, y)
    before, slots = _weights(model), optimizer.state_dict()
    with pytest.raises(ud.NonFiniteLossError, match="train_step call 2"):
        step(np.array([[1, 1], [1, -1]], np.float32), y)  # w x = 0 in the second row: a finite loss
    assert _same(_weights(model), before)
    assert np.array_equal(optimizer.state_dict()["slots"][0]["momentum_buffer"], slots["slots"][0]["momentum_buffer"])
    assert optimizer.state_dict()["step"] == 1


def test_a_finite_loss_with_an_infinite_gradient_stops_fit_before_the_update(backend):
    """``fit``'s guard reads the gradients, not only the loss: a batch whose loss is finite and whose gradient is
    infinite stops ``fit`` with ``NonFiniteLossError`` naming its epoch and step, before the update (the weights bit
    for bit those after the clean batches, the optimizer's step count theirs), on every backend."""
    x = np.ones((12, 2), np.float32)
    x[9] = [1, -1]  # batch 3 (4 a batch, in order): w x = 0, a finite loss and an infinite gradient
    y = np.full((12, 1), 2.0, np.float32)

    def fit(samples):
        model = _SqrtNet()
        optimizer = ud.optim.Adam(model.parameters(), lr=0.05)
        try:
            ud.fit(model, (x[:samples], y[:samples]), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=1,
                   batch_size=4, shuffle=False, verbose=0)
        except ud.NonFiniteLossError as error:
            return model, optimizer, str(error)
        return model, optimizer, None

    model, optimizer, error = fit(12)
    assert error is not None and "at epoch 1, step 3" in error, error
    clean, clean_optimizer, clean_error = fit(8)  # the two clean batches: the weights before batch 3
    assert clean_error is None and not _same(_weights(clean), _weights(_SqrtNet()))
    assert _same(_weights(model), _weights(clean)) and np.isfinite(_weights(model)["w"]).all()
    assert optimizer.state_dict()["step"] == clean_optimizer.state_dict()["step"] == 2


def test_check_finite_false_skips_the_step_silently_and_training_goes_on(backend):
    model = ud.models.TwoLayerNet(3, 4, 2)
    optimizer = ud.optim.Adam(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, check_finite=False)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    before = _weights(model)
    step(np.full((4, 3), np.inf, np.float32), y)
    assert not optimizer.last_step_finite and _same(_weights(model), before)
    assert optimizer.state_dict()["step"] == 0
    step(x, y)
    assert optimizer.last_step_finite and optimizer.state_dict()["step"] == 1
    assert not _same(_weights(model), before)
    with pytest.raises(TypeError, match="check_finite"):
        ud.train_step(model, ud.nn.MSELoss(), optimizer, check_finite="no")
    assert ud.train_step(model, ud.nn.MSELoss(), optimizer, check_finite=np.False_).check_finite is False


def test_the_guard_decides_every_step_afresh_after_a_skipped_one(backend):
    """The guard keeps no verdict from one step to the next: after a skipped non-finite step a finite one updates,
    and a non-finite one after it is skipped again, three times over (torch's fused check keeps its flag between
    steps and sets it back to zero only where a step set it: a flag left set would skip every later step)."""
    model = ud.models.TwoLayerNet(3, 4, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, check_finite=False)
    x, bad, y = np.ones((4, 3), np.float32), np.full((4, 3), np.nan, np.float32), np.zeros((4, 2), np.float32)
    for updates in range(1, 4):
        before = _weights(model)
        step(bad, y)
        assert not optimizer.last_step_finite and _same(_weights(model), before)
        step(x, y)
        assert optimizer.last_step_finite and optimizer.state_dict()["step"] == updates
        assert not _same(_weights(model), before)


def test_check_finite_set_on_a_built_step_decides_its_next_call(backend):
    """``step.check_finite`` set after the step is built decides its next call, as the argument does (the step
    decides once what its calls check after the update: a decision kept from before would raise after ``False``,
    or skip silently after ``True``)."""
    model = ud.models.TwoLayerNet(3, 4, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    bad, y = np.full((4, 3), np.inf, np.float32), np.zeros((4, 2), np.float32)
    before = _weights(model)
    step.check_finite = False
    step(bad, y)  # skipped, silently
    assert not optimizer.last_step_finite and _same(_weights(model), before)
    step.check_finite = True
    with pytest.raises(ud.NonFiniteLossError, match="train_step call 2"):
        step(bad, y)
    assert _same(_weights(model), before) and optimizer.state_dict()["step"] == 0


def test_apply_skips_non_finite_gradients_in_the_manual_loop(backend):
    model = ud.models.TwoLayerNet(3, 4, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads = [np.ones(tuple(p.shape), np.float32) for p in model.parameters()]
    optimizer.apply([ud.tensor(g) for g in grads])
    before, state = _weights(model), optimizer.state_dict()
    grads[1][0] = np.nan
    optimizer.apply([ud.tensor(g) for g in grads])
    assert not optimizer.last_step_finite and _same(_weights(model), before)
    assert optimizer.state_dict()["step"] == state["step"] == 1


def test_apply_skips_non_finite_gradients_inside_a_compiled_step(backend):
    """The manual loop's rule (``test_apply_skips_non_finite_gradients_in_the_manual_loop``: a NaN or infinite
    gradient skips the whole update, weights, momentum and step count as they were, ``last_step_finite`` False, no
    error) inside ``ud.function`` too (a TensorFlow graph, a jit-compiled JAX or Keras step), for a finite loss
    whose gradient is infinite, and the next finite step updates again."""
    model = _SqrtNet()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = ud.nn.MSELoss()

    @ud.function
    def step(x, y):
        loss, grads = ud.value_and_grad(lambda: loss_fn(model(x), y), model.parameters())()
        optimizer.apply(grads)
        return loss

    good, bad = np.ones((2, 2), np.float32), np.array([[1, 1], [1, -1]], np.float32)  # bad: w x = 0, finite loss
    y = np.full((2, 1), 2.0, np.float32)
    step(ud.tensor(good), ud.tensor(y))
    before, state = _weights(model), optimizer.state_dict()
    loss = step(ud.tensor(bad), ud.tensor(y))
    assert np.isfinite(ud.to_numpy(loss)) and not optimizer.last_step_finite
    after = optimizer.state_dict()
    assert _same(_weights(model), before) and after["step"] == state["step"] == 1
    assert np.array_equal(after["slots"][0]["momentum_buffer"], state["slots"][0]["momentum_buffer"])
    step(ud.tensor(good), ud.tensor(y))
    assert optimizer.last_step_finite and optimizer.state_dict()["step"] == 2
    assert not _same(_weights(model), before)


def test_checkpoint_keeps_the_newest_finite_checkpoint(backend, tmp_path):
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    model = ud.models.TwoLayerNet(3, 4, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    fit = dict(loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=8, verbose=0)
    ud.fit(model, (x, y), epochs=1, callbacks=[ud.callbacks.Checkpoint(tmp_path, keep=1)], **fit)
    first = sorted(p.name for p in tmp_path.iterdir())
    state = model.state_dict()
    state[next(iter(state))] = np.full_like(state[next(iter(state))], np.nan)
    model.load_state_dict(state)  # weights already broken (as by a hand-made update)
    with pytest.warns(RuntimeWarning, match="not saving"):
        ud.fit(model, (x, y), epochs=1, callbacks=[ud.callbacks.Checkpoint(tmp_path, keep=1),
                                                   ud.callbacks.TerminateOnNaN(verbose=False)], **fit)
    assert sorted(p.name for p in tmp_path.iterdir()) == first


def test_backward_and_step_skip_a_non_finite_gradient_on_torch():
    with ud.use_backend("torch"):
        model = ud.models.TwoLayerNet(3, 4, 2)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        before = _weights(model)
        loss = ud.nn.MSELoss()(model(ud.tensor(np.full((2, 3), np.nan, np.float32))), ud.tensor(np.zeros((2, 2))))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert not optimizer.last_step_finite and _same(_weights(model), before)
        assert optimizer.state_dict()["step"] == 0
