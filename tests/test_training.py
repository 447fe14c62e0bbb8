"""``train_step``: the one loop, its tracing on tensorflow, and its input checks."""

import collections

import numpy as np
import pytest

import unidl as ud

from tests.helpers import alive_after_training


def _slice(rng, n=64):
    x = rng.standard_normal((n, 30)).astype(np.float32)
    y = (0.5 * x[:, :4] - 0.25 * x[:, 4:8]).astype(np.float32)  # learnable, so the loss can fall
    model = ud.models.TwoLayerNet(30, 16, 4)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
    return model, step, x, y


def test_loss_decreases_and_is_a_float(backend, rng):
    model, step, x, y = _slice(rng)
    first = float(step(x, y))
    for _ in range(150):
        loss = step(x, y)
    assert float(loss) < 0.5 * first


def test_native_tensors_are_accepted(backend, rng):
    model, step, x, y = _slice(rng)
    a = float(step(ud.tensor(x), ud.tensor(y)))
    assert np.isfinite(a)


#: a step's traces over 50 calls alternating two batch sizes, by framework (README): TensorFlow's graph is traced once
#: for any batch size, XLA compiles one program per input shape (two), torch runs eagerly (no trace to count)
TRACES_OVER_TWO_BATCH_SIZES = {"tensorflow": 1, "jax": 2, "torch": None}


def test_a_step_traces_once_per_batch_size_at_most(backend, rng):
    """On the keras backend the count of Keras's host framework: one graph on Keras-on-TensorFlow (as the tensorflow
    backend's), one jitted program per batch size on Keras-on-JAX (as the jax backend's), none on Keras-on-torch."""
    framework = ud.backends.load("keras").host.name if backend == "keras" else backend
    model, step, x, y = _slice(rng)
    for t in range(50):
        n = 64 if t % 2 else 17
        step(x[:n], y[:n])
    assert step.trace_count == TRACES_OVER_TWO_BATCH_SIZES[framework]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_step_returns_its_loss_in_the_weights_dtype(backend, rng, dtype):
    """Compiled and eager, as a value ``ud.to_numpy`` reads in the weights' dtype (Keras's ``train_on_batch`` gave a
    Python float: float64 from a float32 model)."""
    with ud.use_dtype(dtype):
        model, _, x, y = _slice(rng)
        for eager in (False, True):
            step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2), eager=eager)
            loss = step(x, y)
            assert ud.to_numpy(loss).dtype == dtype and ud.to_numpy(loss).shape == (), (eager, type(loss))
            assert float(loss) > 0


def test_step_returns_the_loss_of_this_batch_before_its_update(backend, rng):
    model, step, x, y = _slice(rng)
    loss_fn = ud.nn.MSELoss()
    def loss_now(n):
        return float(ud.to_numpy(loss_fn(model(ud.tensor(x[:n])), ud.tensor(y[:n]))))

    for n in (64, 17, 40):  # a running mean over the calls (Keras's loss tracker unreset) would differ
        before = loss_now(n)
        assert float(step(x[:n], y[:n])) == pytest.approx(before, rel=1e-5)
        assert loss_now(n) < before


def test_batch_mismatch_raises_before_any_computation(backend, rng):
    model, step, x, y = _slice(rng)
    before = model.state_dict()
    with pytest.raises(ud.ShapeMismatchError, match=r"same number of samples.*\(64, 30\).*\(63, 4\)"):
        step(x, y[:63])
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_wrong_feature_size_in_step_names_layer(backend, rng):
    model, step, x, y = _slice(rng)
    step(x, y)
    with pytest.raises(ud.ShapeMismatchError, match=r"at 'linear1' expected input of shape \(N, 30\), received \(64, 29\)"):
        step(x[:, :29], y)


def test_shapes_are_checked_once_apart_from_the_batch_size_and_a_batch_of_one_apart(backend, rng):
    """A step checks the shapes of a new input before its graph runs (``check_shapes``: on tensorflow a trace of
    the forward at those shapes), once per shape apart from the batch size, so that an epoch's last, smaller
    batch is not traced again; a batch of one apart, where batch norm's statistics of one value per channel are
    an error (PyTorch's), raised before anything changes."""
    backend_object = ud.backends.load(backend)
    checked, check = [], backend_object.check_shapes
    model = ud.nn.Sequential(ud.nn.Linear(30, 8), ud.nn.BatchNorm1d(8), ud.nn.Linear(8, 4))
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2))
    x, y = rng.standard_normal((16, 30)).astype(np.float32), rng.standard_normal((16, 4)).astype(np.float32)
    backend_object.check_shapes = lambda *args: (checked.append(args[2].shape), check(*args))[1]
    try:
        for n in (16, 5, 16, 2):
            step(x[:n], y[:n])
        assert [tuple(shape) for shape in checked] == [(16, 30)]
        before = model.state_dict()
        with pytest.raises(ud.ShapeMismatchError, match="expected more than 1 value per channel when training"):
            step(x[:1], y[:1])
        assert [tuple(shape) for shape in checked] == [(16, 30), (1, 30)]
        assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
        with pytest.raises(ud.ShapeMismatchError, match=r"expected input of shape \(N, 30\), received \(5, 29\)"):
            step(x[:5, :29], y[:5])  # another shape apart from the batch: checked again
    finally:
        backend_object.check_shapes = check


def test_wrong_target_shape_names_loss(backend, rng):
    model, step, x, y = _slice(rng)
    with pytest.raises(ud.ShapeMismatchError, match=r"MSELoss.*prediction has shape \(64, 4\), target has shape \(64, 5\)"):
        step(x, np.zeros((64, 5), np.float32))


def test_a_loss_or_model_that_is_not_a_module_is_a_clear_error(backend):
    """A plain function as the loss (``F.mse_loss``'s habit) or as the model: one TypeError naming what is valid on
    every backend, as ``fit``'s, where it was an AttributeError ('function' object has no attribute '_backend')."""
    model = ud.nn.Linear(3, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"train_step's loss must be a ud\.nn module .*got function"):
        ud.train_step(model, lambda out, y: ud.ops.mean((out - y) ** 2), optimizer)
    with pytest.raises(TypeError, match=r"train_step's model must be a ud\.nn module .*got function"):
        ud.train_step(lambda x: x, ud.nn.MSELoss(), optimizer)


def test_loss_and_optimizer_must_share_the_model_backend(rng):
    with ud.use_backend("torch"):
        model = ud.models.TwoLayerNet(3, 2, 1)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    with ud.use_backend("tensorflow"):
        loss = ud.nn.MSELoss()
    with pytest.raises(ud.BackendMismatchError, match="MSELoss was created under backend 'tensorflow'"):
        ud.train_step(model, loss, optimizer)


class Heads(collections.namedtuple("Heads", "a b extra")):
    """Two heads' outputs as a NamedTuple, and a field that is None."""


class TwoHeads(ud.nn.Module):
    """A forward returning two heads over the same input: a tuple, or a NamedTuple with a None beside them; and a
    loss over both."""

    def __init__(self, kind="tuple"):
        super().__init__()
        self.a, self.b = ud.nn.Linear(4, 3), ud.nn.Linear(4, 3)
        self.kind = kind

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return Heads(a, b, None) if self.kind == "namedtuple" else (a, b)


class BothHeads(ud.nn.Module):
    def forward(self, outputs, y):
        a, b = outputs[:2]
        return ud.ops.mean((a - y) ** 2) + ud.ops.mean((b - y) ** 2)


class FirstHeadCrossEntropy(ud.nn.CrossEntropyLoss):
    """Cross-entropy over the first of several outputs."""

    def forward(self, outputs, target):
        return super().forward(outputs[0], target)


@pytest.mark.parametrize("kind", ["tuple", "namedtuple"])
@pytest.mark.parametrize("precision, eager", [(None, False), (None, True), ("bf16-mixed", False), ("16-mixed", True)])
def test_a_forward_returning_a_tuple_trains_as_torch_or_is_one_clear_error(backend, precision, eager, kind):
    """A loss takes the tuple a forward returns in every precision (a NamedTuple, a None among them too): torch's
    float32 loss (mixed precision: within its rounding), and ``fit`` trains it too. It was an ``AttributeError``
    (``.float()``, ``.dtype``) in every mixed precision step and in torch's ``fit``. Keras's trainer matches a loss
    to each output: one ``TypeError`` there (Keras raised a ``KeyError`` about paths). Metrics over such outputs:
    one ``TypeError`` on every backend."""
    import torch

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    ud.manual_seed(0)
    model = TwoHeads(kind)
    weights = {k: torch.tensor(np.array(v)) for k, v in model.state_dict().items()}
    step = ud.train_step(model, BothHeads(), ud.optim.SGD(model.parameters(), lr=0.1), precision=precision,
                         eager=eager)
    with pytest.raises(TypeError, match="metrics compare a model's scores with the labels, so they need a forward "
                                        "that returns one tensor; TwoHeads's returns several"):
        ud.fit(model, (x, y), loss=BothHeads(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1,
               batch_size=3, verbose=0, metrics=["accuracy"])
    if backend == "keras":
        with pytest.raises(TypeError, match=r"the keras backend trains a forward that returns one tensor .*: "
                                            r"TwoHeads's returns a (tuple of 2|Heads of 3)"):
            step(x, y)
        return
    loss = float(ud.to_numpy(step(x, y)))
    t, target = torch.tensor(x), torch.tensor(y)
    wanted = sum(torch.mean((t @ weights[f"{h}.weight"].T + weights[f"{h}.bias"] - target) ** 2) for h in "ab").item()
    assert abs(loss - wanted) <= (1e-6 if precision is None else 1e-2) * wanted, (loss, wanted)
    history = ud.fit(model, (x, y), loss=BothHeads(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=2,
                     batch_size=3, verbose=0, precision=precision, validation_data=(x, y))
    assert np.all(np.isfinite(history["loss"])) and history["loss"][1] < history["loss"][0]
    if precision is None and not eager:  # no implicit accuracy over several outputs (it raised metrics' TypeError)
        labels = np.array([0, 1, 2, 0, 1, 2])
        assert ud.evaluate(model, (x, labels)) == {}
        history = ud.fit(model, (x, labels), loss=FirstHeadCrossEntropy(), epochs=1, batch_size=3, verbose=0,
                         optimizer=ud.optim.SGD(model.parameters(), lr=0.1))
        assert list(history.history) == ["loss", "lr"] and np.isfinite(history["loss"][0])


def test_an_optimizer_of_another_model_is_an_error(backend, rng):
    """An optimizer none of whose parameters is the model's (or the loss's): every step changed nothing, and fit
    reported a normal History."""
    import copy

    model = ud.models.TwoLayerNet(4, 5, 3)
    other = copy.deepcopy(model)
    optimizer = ud.optim.SGD(other.parameters(), lr=0.1)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="train_step: none of the optimizer's 4 parameters belongs to the model "
                                         "TwoLayerNet"):
        ud.train_step(model, ud.nn.MSELoss(), optimizer)
    with pytest.raises(ValueError, match="fit: none of the optimizer's 4 parameters belongs to the model"):
        ud.fit(model, x, y, batch_size=4, loss="mse", optimizer=optimizer, verbose=0)
    ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD([*model.parameters()[:1], *other.parameters()], lr=0.1))



def test_train_steps_flags_are_true_or_false(backend):
    """``eager`` is True or False, as ``check_finite`` is (a bool only, a ``TypeError`` else): a string, even 'no',
    was taken as True (an eager step where a compiled one was asked), on every backend alike."""
    model = ud.models.TwoLayerNet(4, 5, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="train_step: eager must be True or False, got 'no'"):
        ud.train_step(model, ud.nn.MSELoss(), optimizer, eager="no")
    with pytest.raises(TypeError, match="train_step: check_finite must be True or False, got 'False'"):
        ud.train_step(model, ud.nn.MSELoss(), optimizer, check_finite="False")
    assert ud.train_step(model, ud.nn.MSELoss(), optimizer, eager=np.bool_(True)).eager is True


class _CountedOps:
    """The torch functions called in the block, by name, a tensor's attributes aside (a ``TorchFunctionMode``:
    deterministic, unlike a timing)."""

    def __init__(self):
        from torch.overrides import TorchFunctionMode

        counts = self.counts = collections.Counter()

        class Counting(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", str(func))
                if name not in ("__get__", "__set__"):  # (a tensor's attributes: read, not run)
                    counts[name] += 1
                return func(*args, **(kwargs or {}))

        self._mode = Counting()

    def __enter__(self):
        self._mode.__enter__()
        return self.counts

    def __exit__(self, *exc_info):
        self._mode.__exit__(*exc_info)


def _warm_two_layer_steps(rng):
    """A unidl torch train step of the two-layer net and the same step written by hand in torch (``zero_grad``,
    forward, ``backward``, ``torch.optim.SGD``'s ``step()``), each run twice (the first steps create the momentum
    buffers): (model, step, native_step, x, y), for tests that compare what one more step of each calls. Called
    under ``ud.use_backend("torch")``."""
    import torch

    x, y = rng.standard_normal((8, 30)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    model = ud.models.TwoLayerNet(30, 16, 4)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
    native = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(native.parameters(), lr=1e-2, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def native_step():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(native(tx), ty)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for _ in range(2):
        step(tx, ty), native_step()
    return model, step, native_step, tx, ty


def test_a_torch_step_calls_no_more_than_the_hand_written_step_and_its_guard(rng):
    """The torch functions a torch train step calls beyond ``zero_grad``, forward, ``backward`` and
    ``torch.optim.SGD``'s ``step()`` written by hand are the non-finite guard's (the fused check, one host read),
    nothing per step besides (two more detaches of the loss were there, the guard reset its flag and viewed the loss
    as 1-d at every step, and x's and y's dtypes were checked as floats even where they are unidl's dtype; the
    benchmark's two-layer step is under a millisecond, so each call counts)."""
    with ud.use_backend("torch"), ud.use_device("cpu"):
        _, step, native_step, tx, ty = _warm_two_layer_steps(rng)
        with _CountedOps() as unidl_calls:
            step(tx, ty)
        with _CountedOps() as native_calls:
            native_step()
    guard = {"_amp_foreach_non_finite_check_and_unscale_": 1, "item": 1}
    assert dict(unidl_calls - native_calls) == guard


def test_a_torch_step_runs_the_hand_written_steps_kernels_and_its_guards_without_zero_grads_annotation(rng):
    """The ATen ops a torch train step runs are the hand-written step's (``zero_grad``, forward, ``backward``,
    ``torch.optim.SGD``'s ``step()``) and the non-finite guard's two (the fused check, its read), less the profiler
    annotation torch.optim's ``zero_grad`` wraps its loop in (two profiler ops, ~6 us a step on a CPU: the step
    clears the gradients by that loop itself), and the gradients are cleared all the same: a parameter the next
    forward does not reach keeps no gradient (PyTorch's None-gradient rule), one the forward reaches gets a fresh
    one, not the sum of two steps'."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counted(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[func._overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with ud.use_backend("torch"), ud.use_device("cpu"):
        model, step, native_step, tx, ty = _warm_two_layer_steps(rng)
        with Counted() as unidl_ops:
            step(tx, ty)
        with Counted() as native_ops:
            native_step()
        assert dict(unidl_ops.counts - native_ops.counts) == {
            "_amp_foreach_non_finite_check_and_unscale_": 1, "_local_scalar_dense": 1}
        assert dict(native_ops.counts - unidl_ops.counts) == {
            "_record_function_enter_new": 1, "_record_function_exit": 1}

        # the gradients cleared: a stale one is neither kept nor added to
        stale = torch.full_like(model.linear2.weight, 1e3)
        model.linear2.weight.grad = stale.clone()
        unused = torch.nn.Parameter(torch.ones(3))
        unused.grad = torch.ones(3)
        sgd = ud.optim.SGD([*model.parameters(), unused], lr=0.0)
        plain = ud.train_step(model, ud.nn.MSELoss(), sgd)
        plain(tx, ty)
        assert unused.grad is None
        expected = torch.autograd.grad(torch.nn.functional.mse_loss(model(tx), ty), model.linear2.weight)[0]
        torch.testing.assert_close(model.linear2.weight.grad, expected, rtol=0, atol=0)


def test_a_profiled_torch_step_shows_torch_optims_zero_grad_and_step(rng):
    """Under torch's profiler a torch train step clears the gradients by torch.optim's ``zero_grad`` itself, so the
    trace names it as a hand-written step's does (outside a profiler the step runs the same loop without that
    annotation: the test above)."""
    import torch

    x, y = rng.standard_normal((8, 30)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    with ud.use_backend("torch"), ud.use_device("cpu"):
        model = ud.models.TwoLayerNet(30, 16, 4)
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
        step(x, y)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            step(x, y)
    names = {event.name for event in profile.events()}
    assert "Optimizer.zero_grad#SGD.zero_grad" in names and "Optimizer.step#SGD.step" in names
    assert all(p.grad is not None for p in model.parameters())  # (the step's own gradients, cleared before it)


def test_a_trained_model_its_optimizer_and_loss_are_freed(backend, rng):
    """Nothing a train step or fit builds (compiled programs, the steps a model keeps) keeps the model, its
    optimizer or its loss alive once the caller drops them, so a loop that builds and trains models in turn (a
    hyperparameter search) holds no more memory than one of them (on jax every such model stayed alive)."""
    x, y = rng.standard_normal((10, 3)).astype(np.float32), rng.standard_normal((10, 32)).astype(np.float32)
    # (a weight of 16 elements or more: jax's step donates it, the path whose first calls kept the model alive)
    assert alive_after_training(lambda: ud.nn.Linear(3, 32), x, y) == []
