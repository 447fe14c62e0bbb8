"""BatchNorm's ``num_batches_tracked`` and ``momentum=None`` against plain ``torch.nn.BatchNorm*d``: the counter's
name and dtype in ``state_dict()``, counted in training only (eagerly, in ``ud.function`` and in a compiled
training step), and the cumulative moving average it drives, on every backend."""

import re

import numpy as np
import pytest
import torch
from torch import nn as tnn

import unidl as ud
from unidl.io.safetensors import save_file
from unidl.testing import max_relative_difference


def _batches(count, shape, dtype=np.float32):
    rng = np.random.default_rng(5)
    return [(rng.standard_normal(shape) * (1 + i) + i).astype(dtype) for i in range(count)]


def test_num_batches_tracked_is_torchs_int64_buffer_counted_in_training_only(backend):
    layer = ud.nn.BatchNorm1d(3)
    state = layer.state_dict()
    assert list(state) == list(tnn.BatchNorm1d(3).state_dict())
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"].shape == ()
    batches = _batches(3, (6, 3))
    for x in batches[:2]:
        layer(ud.tensor(x))
    compiled = ud.function(lambda x: layer(x))
    compiled(ud.tensor(batches[2]))
    assert int(layer.state_dict()["num_batches_tracked"]) == 3
    layer.eval()
    layer(ud.tensor(batches[0]))
    ud.function(lambda x: layer(x))(ud.tensor(batches[0]))  # a new trace: the old one was traced in training
    assert int(layer.state_dict()["num_batches_tracked"]) == 3
    assert layer.num_parameters() == 6 and len(list(layer.named_buffers())) == 3


@pytest.mark.parametrize("dtype, tolerance", [("float32", 2e-6), ("float64", 1e-12)])
def test_momentum_none_is_torchs_cumulative_average(backend, dtype, tolerance):
    """``momentum=None``: the running statistics are the plain average of every batch's, as torch's, eagerly and
    inside ``ud.function``; eval then normalises with them."""
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        reference = tnn.BatchNorm2d(3, momentum=None)
    finally:
        torch.set_default_dtype(torch.float32)
    with ud.use_dtype(dtype):
        layer = ud.nn.BatchNorm2d(3, momentum=None)
        batches = _batches(4, (5, 3, 4, 4), dtype)
        compiled = ud.function(lambda x: layer(x))
        for index, x in enumerate(batches):
            expected = reference(torch.tensor(x)).detach().numpy()
            found = ud.to_numpy(compiled(ud.tensor(x)) if index % 2 else layer(ud.tensor(x)))
            assert max_relative_difference(found, expected) < tolerance
        state = layer.state_dict()
        for key, value in reference.state_dict().items():
            assert max_relative_difference(state[key], value.numpy()) < tolerance, key
        assert int(state["num_batches_tracked"]) == 4
        reference.eval(), layer.eval()
        expected = reference(torch.tensor(batches[0])).detach().numpy()
        assert max_relative_difference(ud.to_numpy(layer(ud.tensor(batches[0]))), expected) < tolerance


def test_training_steps_count_batches_and_torch_state_dicts_load_strictly(backend):
    """Three compiled training steps (Keras's own trainer on keras) count three batches as torch does, and
    torch's state dict, counter included, loads with strict=True and gives torch's eval outputs."""
    def build(nn):
        return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=None), nn.Flatten(), nn.Linear(12, 2))

    ud.manual_seed(0)
    model, reference = build(ud.nn), build(tnn)
    reference.load_state_dict({key: torch.tensor(value) for key, value in model.state_dict().items()})
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    y = np.random.default_rng(2).standard_normal((4, 2)).astype(np.float32)
    for x in _batches(3, (4, 2, 4, 4)):
        step(x, y)
        optimizer.zero_grad()
        tnn.functional.mse_loss(reference(torch.tensor(x)), torch.tensor(y)).backward()
        optimizer.step()
    state = model.state_dict()
    assert int(state["1.num_batches_tracked"]) == int(reference[1].num_batches_tracked) == 3
    for key, value in reference.state_dict().items():
        assert max_relative_difference(state[key], value.numpy()) < 1e-5, key
    fresh = build(ud.nn).eval()
    fresh.load_state_dict({key: value.numpy() for key, value in reference.state_dict().items()}, strict=True)
    assert int(fresh.state_dict()["1.num_batches_tracked"]) == 3
    x = _batches(1, (2, 2, 4, 4))[0]
    expected = reference.eval()(torch.tensor(x)).detach().numpy()
    assert max_relative_difference(ud.to_numpy(fresh(ud.tensor(x))), expected) < 2e-6


@pytest.mark.parametrize("dtype, tolerance", [("float32", 2e-6), ("float64", 1e-12)])
def test_no_running_statistics_and_no_bias_as_torch(backend, dtype, tolerance):
    """``BatchNorm*d(track_running_stats=False)`` keeps no running statistics (none in ``state_dict()``) and
    normalises with the batch's in eval too; ``bias=False`` (BatchNorm, GroupNorm) learns a weight alone: PyTorch's
    state dict keys, outputs and weight gradients, in training and eval, eagerly and inside ``ud.function``, and a
    training step that moves the weight alone; the reprs are torch's."""
    def build(nn):
        return [nn.BatchNorm2d(3, track_running_stats=False),
                nn.BatchNorm1d(3, affine=False, track_running_stats=False), nn.BatchNorm2d(3, bias=False),
                nn.GroupNorm(1, 3, bias=False)]

    batches = [x.astype(dtype) for x in _batches(3, (5, 3, 4, 4))]
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        references = build(tnn)
    finally:
        torch.set_default_dtype(torch.float32)
    with ud.use_dtype(dtype):
        layers = build(ud.nn)
        for layer, reference in zip(layers, references):
            assert repr(layer) == repr(reference)
            assert list(layer.state_dict()) == list(reference.state_dict())
            for mode in ("train", "eval"):
                getattr(layer, mode)(), getattr(reference, mode)()
                for index, x in enumerate(batches):
                    x = x[:, :, 0, 0] if isinstance(reference, tnn.BatchNorm1d) else x
                    inputs = torch.tensor(x, requires_grad=True)
                    expected = reference(inputs)
                    expected.backward(torch.tensor(x) ** 2)
                    compute = lambda t: ud.ops.sum(layer(t) * ud.tensor(x) ** 2)
                    call = ud.function(lambda t: ud.value_and_grad(compute)(t)) if index % 2 else \
                        ud.value_and_grad(compute)
                    value, gradient = call(ud.tensor(x))  # (one call a batch: the running statistics move once)
                    wanted = float((expected * torch.tensor(x) ** 2).sum())
                    assert abs(float(value) - wanted) < tolerance * abs(wanted), (layer, mode, index)
                    assert max_relative_difference(ud.to_numpy(gradient), inputs.grad.numpy()) < tolerance * 10
        model = ud.nn.Sequential(ud.nn.Conv2d(3, 3, 1, bias=False),  # (a bias before it would get no gradient)
                                 ud.nn.BatchNorm2d(3, bias=False, track_running_stats=False))
        before = model.state_dict()
        ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))(batches[0], batches[1])
        after = model.state_dict()
        assert list(after) == ["0.weight", "1.weight"]
        assert all(not np.array_equal(after[key], before[key]) for key in after)


def test_bad_momentum_is_a_clear_error():
    with pytest.raises(ValueError, match=r"BatchNorm2d momentum=1.5 is invalid: it must lie in \[0.0, 1.0\]"):
        ud.nn.BatchNorm2d(3, momentum=1.5)


@pytest.mark.parametrize("layer, shape, expected", [
    ("BatchNorm1d", (2, 3, 4, 5), "(N, 3) or (N, 3, L)"),
    ("BatchNorm2d", (2, 3, 4), "(N, 3, H, W)"),
])
def test_an_input_of_another_rank_is_named_with_torchs_axis_names(backend, layer, shape, expected):
    """A BatchNorm given an input of a rank it does not take names the shapes it takes as the other layers write
    them, with torch.nn's axis names (BatchNorm2d's read ``('N', 3, 'L', 'L')``: quoted, L for H and W)."""
    norm = getattr(ud.nn, layer)(3)
    with pytest.raises(ud.errors.ShapeMismatchError, match=re.escape(f"expected input of shape {expected}, "
                                                                     f"received {shape}")):
        norm(np.zeros(shape, np.float32))


def test_state_dicts_saved_before_the_counter_still_load_strictly(backend, tmp_path):
    """A state dict without ``num_batches_tracked`` (unidl's files before it kept the counter) loads with
    strict=True, the counter left as it is, as PyTorch loads BatchNorm state dicts older than its counter."""
    layer = ud.nn.BatchNorm1d(2)
    old = {"weight": np.array([2.0, 3.0]), "bias": np.zeros(2), "running_mean": np.ones(2), "running_var": np.ones(2)}
    assert layer.load_state_dict(old, strict=True) == ([], [])  # (missing_keys, unexpected_keys)
    state = layer.state_dict()
    assert np.array_equal(state["weight"], [2.0, 3.0]) and int(state["num_batches_tracked"]) == 0
    with pytest.raises(ud.StateDictError, match=r"missing keys: running_var \(expected shape \(2,\)\)"):
        layer.load_state_dict({k: v for k, v in old.items() if k != "running_var"})
    save_file({key: np.asarray(value, np.float32) for key, value in old.items()}, tmp_path / "old.safetensors")
    ud.load_weights(ud.nn.BatchNorm1d(2), tmp_path / "old.safetensors")  # a file: checked before anything loads


def test_an_empty_batch_leaves_the_running_statistics_as_torch_does(backend):
    """An empty batch in training counts as a batch and leaves the running statistics alone (PyTorch's rule; its
    statistics would be NaN), eagerly, compiled with the batch size known, and in a graph where it is known only
    when the graph runs (a function over several batch sizes). Against plain torch.nn.BatchNorm1d."""
    reference, layer = tnn.BatchNorm1d(3), ud.nn.BatchNorm1d(3)
    compiled = ud.function(lambda x: layer(x))
    batches = _batches(3, (6, 3)) + [np.zeros((0, 3), np.float32)] + _batches(2, (4, 3)) + [np.zeros((0, 3), np.float32)]
    for index, x in enumerate(batches):
        reference(torch.tensor(x))
        (layer if index < 4 else compiled)(ud.tensor(x))  # eager first, then compiled (6, 4 and 0 samples)
    compiled(ud.tensor(np.zeros((0, 3), np.float32)))
    reference(torch.zeros((0, 3)))
    expected = reference.state_dict()
    for key, value in layer.state_dict().items():
        assert max_relative_difference(value, expected[key].numpy()) < 1e-6, key


class _TorchOutside(tnn.Module):
    """The oracle: a BatchNorm held in a plain list, so not a submodule (not in ``parameters()`` nor
    ``state_dict()``), whose running statistics torch still updates when the forward calls it in training mode."""

    def __init__(self, fc, norm):
        super().__init__()
        self.fc = fc
        self.outside = [norm]

    def forward(self, x):
        return self.outside[0](self.fc(x))


class _Outside(ud.nn.Module):
    """``_TorchOutside`` in unidl: the BatchNorm in a plain list, or reached through a closure."""

    def __init__(self, norm, holder):
        super().__init__()
        self.fc = ud.nn.Linear(4, 16)  # (16 features: buffers big enough that the jax backend donates them)
        self.outside = [norm] if holder == "list" else None
        self.normalise = (lambda h: norm(h)) if holder == "closure" else None

    def forward(self, x):
        h = self.fc(x)
        return self.outside[0](h) if self.outside is not None else self.normalise(h)


@pytest.mark.parametrize("entry, holder", [("train_step", "list"), ("fit", "closure")])
def test_a_batchnorm_held_outside_the_model_updates_its_running_statistics_as_torchs(backend, entry, holder):
    """A BatchNorm the forward reaches outside the model's tree (a plain list, a closure) moves its running
    statistics and counts its batches at each training step, as torch's does, in ``ud.train_step`` and ``ud.fit``
    on every backend (Keras-on-JAX's stateless step dropped the writes; the jax backend's leaked tracers into them);
    its own parameters are the optimizer's no more than in torch, and stay."""
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((16, 4)) * 2 + 1).astype(np.float32)
    y = rng.standard_normal((16, 16)).astype(np.float32)
    norm = ud.nn.BatchNorm1d(16)
    model = _Outside(norm, holder)
    assert list(model.state_dict()) == ["fc.weight", "fc.bias"]  # outside the tree, as in torch
    oracle = _TorchOutside(tnn.Linear(4, 16), tnn.BatchNorm1d(16))
    oracle.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    torch_optimizer = torch.optim.SGD(oracle.parameters(), lr=0.1)
    for _ in range(3):
        torch_optimizer.zero_grad()
        tnn.functional.mse_loss(oracle(torch.tensor(x)), torch.tensor(y)).backward()
        torch_optimizer.step()

    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    if entry == "train_step":
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
        for _ in range(3):
            step(x, y)
    else:
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=3, batch_size=16, shuffle=False,
               verbose=0)
    expected = oracle.outside[0].state_dict()
    state = norm.state_dict()
    assert int(state["num_batches_tracked"]) == 3
    for key in ("running_mean", "running_var", "weight", "bias"):
        assert max_relative_difference(state[key], expected[key].numpy()) < 1e-5, key
    for key, value in oracle.fc.state_dict().items():
        assert max_relative_difference(model.state_dict()[f"fc.{key}"], value.numpy()) < 1e-5, key


@pytest.mark.parametrize("entry, holder", [("train_step", "list"), ("fit", "closure")])
def test_a_layer_held_outside_the_model_is_read_as_it_is_at_each_step_as_in_torch(backend, entry, holder):
    """A layer the forward reaches outside the model's tree (a plain list, a closure), whose weights change between
    steps (loaded, or trained by another optimizer), is read as it is at each call, as torch reads it: in
    ``ud.train_step``, across two ``ud.fit`` calls and in ``predict``. The jax backend baked the weights of its first
    trace into the compiled step and forward as constants (the loss after the change was the old one)."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 16)).astype(np.float32)
    head = ud.nn.Linear(16, 16)
    model = _Outside(head, holder)
    oracle = _TorchOutside(tnn.Linear(4, 16), tnn.Linear(16, 16))
    oracle.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    oracle.outside[0].load_state_dict({k: torch.tensor(v) for k, v in head.state_dict().items()})
    new_head = {"weight": rng.standard_normal((16, 16)).astype(np.float32) * 0.5,
                "bias": rng.standard_normal(16).astype(np.float32)}
    torch_optimizer = torch.optim.SGD(oracle.parameters(), lr=0.1)
    for index in range(4):
        if index == 2:
            oracle.outside[0].load_state_dict({k: torch.tensor(v) for k, v in new_head.items()})
        torch_optimizer.zero_grad()
        tnn.functional.mse_loss(oracle(torch.tensor(x)), torch.tensor(y)).backward()
        torch_optimizer.step()

    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer) if entry == "train_step" else None
    first = ud.predict(model, x) if entry == "fit" else None  # (its forward compiled before the change)
    for half in range(2):
        if half == 1:
            head.load_state_dict({k: ud.tensor(v) for k, v in new_head.items()})
        if step is not None:
            step(x, y)
            step(x, y)
        else:
            ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=2, batch_size=16, shuffle=False,
                   verbose=0)
    for key, value in oracle.fc.state_dict().items():
        assert max_relative_difference(model.state_dict()[f"fc.{key}"], value.numpy()) < 1e-5, key
    with torch.no_grad():
        expected = oracle(torch.tensor(x)).numpy()
    assert first is None or max_relative_difference(first, expected) > 1e-2  # (the change shows in the outputs)
    assert max_relative_difference(ud.predict(model, x), expected) < 1e-5


@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_running_statistics_carry_no_gradient_as_torchs(backend, momentum):
    """A train forward then an eval forward inside one differentiated function: the eval forward reads the running
    statistics the train forward wrote, which carry no gradient, as torch updates them under no_grad (on jax, and
    Keras on jax, the input had a second path through them: gradients 0.11 off), eagerly and in ``ud.function``."""
    x = _batches(1, (4, 3))[0]
    reference = tnn.BatchNorm1d(3, momentum=momentum)
    inputs = torch.tensor(x, requires_grad=True)
    reference.train()
    reference(inputs)
    reference.eval()
    expected = torch.autograd.grad(reference(inputs).sum(), inputs)[0].numpy()
    for compiled in (False, True):
        layer = ud.nn.BatchNorm1d(3, momentum=momentum)

        def objective(a):
            layer.train()
            layer(a)
            layer.eval()
            return ud.ops.sum(layer(a))

        gradient = ud.function(ud.grad(objective)) if compiled else ud.grad(objective)
        np.testing.assert_allclose(ud.to_numpy(gradient(ud.tensor(x))), expected, atol=1e-5)
        np.testing.assert_allclose(layer.state_dict()["running_var"], reference.running_var.numpy(), rtol=1e-6)


def test_a_float_or_a_count_beyond_int64_for_num_batches_tracked_is_refused_in_every_format(backend, tmp_path):
    """Floats for the integer counter are a ``StateDictError`` naming a dtype mismatch from a state dict and a .pth
    file as from a safetensors file (they were truncated: 2.7 loaded as 2), and uint64 counts beyond int64 too (one
    wrapped to a negative count, from a safetensors file still after the other formats refused it); nothing is
    written."""
    layer = ud.nn.BatchNorm1d(3)
    for value, expected in ((np.array(2.7, np.float32), r"dtype mismatches: num_batches_tracked: expected an integer "
                                                         r"tensor, found dtype float32"),
                            (np.array(2**63 + 5, np.uint64), r"num_batches_tracked: values beyond int64")):
        state = {**layer.state_dict(), "num_batches_tracked": value}
        with pytest.raises(ud.errors.StateDictError, match=expected):
            layer.load_state_dict(state)
        if value.dtype == np.float32:
            torch.save({k: torch.tensor(v) for k, v in state.items()}, tmp_path / "f.pth")
            with pytest.raises(ud.errors.StateDictError, match="expected an integer tensor, found dtype float32"):
                ud.load_weights(layer, tmp_path / "f.pth")
        save_file({**state, "running_mean": np.ones(3, np.float32)}, tmp_path / "f.safetensors")
        with pytest.raises(ud.errors.StateDictError, match=r"dtype mismatches: num_batches_tracked: (expected an "
                                                           r"integer tensor, found dtype F32|values beyond int64)"):
            ud.load_weights(layer, tmp_path / "f.safetensors")
        assert not layer.state_dict()["running_mean"].any()
        assert int(layer.state_dict()["num_batches_tracked"]) == 0
    layer.load_state_dict({**layer.state_dict(), "num_batches_tracked": np.array(7, np.uint64)})
    assert int(layer.state_dict()["num_batches_tracked"]) == 7
