"""The backend contract: ops declared once (the registry), pure ops (batch norm returns its statistics,
dropout takes its generator), and the keras backend delegating to its host framework's backend."""

import inspect
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unidl as ud
from unidl import config
from unidl.backends import interface, load, op_registry, specs
from unidl.errors import BackendInterfaceError
from unidl.testing import max_relative_difference

R = np.random.default_rng(11)
IMAGES = (R.standard_normal((6, 3, 5, 5)) * 2 + 1).astype(np.float32)


# ---- the op registry ---------------------------------------------------------
def test_required_ops_are_derived_from_the_declarations():
    declared = [name for name, spec in op_registry.REGISTRY.items() if not spec.optional]
    assert interface.OPS == tuple(declared)
    assert "apply_momentum" in op_registry.optional_ops() and "apply_momentum" not in interface.OPS
    for name in interface.OPS:
        spec = op_registry.REGISTRY[name]
        if spec.public:
            public = getattr(ud.ops, name)
            assert inspect.signature(public) == spec.signature, name
            assert public.__doc__ == spec.declaration.__doc__, name


def test_every_loaded_backend_meets_the_registry(backend):
    ops = config.backend().ops
    op_registry.check_backend_ops(backend, ops)  # raises on any problem
    for name in interface.OPS:
        assert callable(getattr(ops, name)), name


def test_a_backend_missing_an_op_or_a_parameter_fails_naming_both():
    ops = types.SimpleNamespace(**{name: getattr(load("torch").ops, name) for name in interface.OPS})
    del ops.scan
    ops.linear = lambda x, weight: x  # the declaration passes (x, weight, bias)
    with pytest.raises(BackendInterfaceError, match=r"'fake'.*linear \(takes 2 positional.*x, weight, bias\).*scan \(missing\)"):
        op_registry.check_backend_ops("fake", ops)


def test_optional_ops_are_reached_only_by_declared_name():
    with pytest.raises(BackendInterfaceError, match="not a declared optional op"):
        op_registry.optional_op(load("tensorflow").ops, "apply_adam")
    assert op_registry.optional_op(load("torch").ops, "apply_momentum") is None
    assert callable(op_registry.optional_op(load("tensorflow").ops, "apply_momentum"))


def test_an_op_declared_twice_is_an_error():
    def relu(x):
        """A second declaration of an existing op."""

    with pytest.raises(BackendInterfaceError, match="'relu' is declared twice"):
        op_registry.declare(lambda: None)(relu)


# ---- pure ops ----------------------------------------------------------------
def _run_batch_norm(training, compiled):
    mean0, var0 = np.linspace(-1, 1, 3).astype(np.float32), np.linspace(0.5, 2, 3).astype(np.float32)
    running_mean, running_var = ud.tensor(mean0), ud.tensor(var0)
    weight, bias = ud.tensor(np.array([1.5, 0.5, 2.0])), ud.tensor(np.array([0.1, -0.2, 0.3]))

    def norm(x):
        return ud.ops.batch_norm(x, running_mean, running_var, weight, bias, training, 0.2, 1e-5)

    y, new_mean, new_var = (ud.function(norm) if compiled else norm)(ud.tensor(IMAGES))
    # the op is pure: its arguments are unchanged
    assert np.array_equal(ud.to_numpy(running_mean), mean0) and np.array_equal(ud.to_numpy(running_var), var0)
    t_mean, t_var = torch.tensor(mean0), torch.tensor(var0)
    expected = F.batch_norm(torch.tensor(IMAGES), t_mean, t_var, torch.tensor([1.5, 0.5, 2.0]),
                            torch.tensor([0.1, -0.2, 0.3]), training, 0.2, 1e-5)
    assert max_relative_difference(ud.to_numpy(y), expected.numpy()) < 2e-6
    assert max_relative_difference(ud.to_numpy(new_mean), t_mean.numpy()) < 2e-6
    assert max_relative_difference(ud.to_numpy(new_var), t_var.numpy()) < 2e-6


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_batch_norm_op_returns_new_statistics_and_changes_nothing(backend, training, compiled):
    _run_batch_norm(training, compiled)


def test_batch_norm_module_writes_the_statistics_in_training_only(backend):
    layer = ud.nn.BatchNorm2d(3, momentum=0.2)
    before = layer.state_dict()
    layer.eval()
    layer(ud.tensor(IMAGES))
    assert all(np.array_equal(v, layer.state_dict()[k]) for k, v in before.items())
    layer.train()
    layer(ud.tensor(IMAGES))
    reference = torch.nn.BatchNorm2d(3, momentum=0.2)
    reference(torch.tensor(IMAGES))
    assert max_relative_difference(layer.state_dict()["running_var"], reference.running_var.numpy()) < 2e-6
    assert max_relative_difference(layer.state_dict()["running_mean"], reference.running_mean.numpy()) < 2e-6


def test_dropout_takes_its_generator_explicitly(backend):
    """The mask comes from the generator passed in: re-seeding the backend reproduces it, and the
    module's masks are the op's masks with the backend's generator."""
    x = ud.tensor(np.ones((64, 32), dtype=np.float32))
    ud.manual_seed(5)
    first = ud.to_numpy(ud.ops.dropout(x, 0.5, True, config.backend().generator()))
    ud.manual_seed(5)
    again = ud.to_numpy(ud.ops.dropout(x, 0.5))
    ud.manual_seed(5)
    module = ud.to_numpy(ud.nn.Dropout(0.5)(x))
    assert np.array_equal(first, again) and np.array_equal(first, module)
    assert set(np.unique(first)) == {0.0, 2.0}
    assert 0.35 < (first == 0).mean() < 0.65
    assert np.array_equal(ud.to_numpy(ud.ops.dropout(x, 0.5, training=False)), np.ones((64, 32)))


def test_torch_dropout_draws_from_a_generator_of_the_callers():
    with ud.use_backend("torch"):
        x = ud.tensor(np.ones((64, 32), dtype=np.float32))
        masks = []
        for _ in range(2):
            generator = torch.Generator().manual_seed(3)
            torch.manual_seed(99)  # the global generator must not matter
            masks.append(ud.to_numpy(ud.ops.dropout(x, 0.25, True, generator)))
            torch.manual_seed(100)
        assert np.array_equal(masks[0], masks[1])
        assert 0.15 < (masks[0] == 0).mean() < 0.35


# ---- keras delegates to its host ---------------------------------------------
def test_keras_delegates_to_the_backend_of_its_framework():
    import keras

    keras_backend = load("keras")
    host = keras_backend.host
    assert host is load(keras.backend.backend())
    assert keras_backend.devices() == host.devices()
    versions = keras_backend.versions()
    assert all(f"keras backend {name}" in versions for name in host.versions())
    for name in host.keras_native_ops:  # the host's own kernel (max pooling's reads a Keras variable's value first)
        op = getattr(keras_backend.ops, name)
        assert (op.__wrapped__ if name in keras_backend.ops._INPUT_READ else op) is getattr(host.ops, name), name


def test_keras_never_branches_on_its_framework():
    """Only host.py asks Keras which framework it runs on (export.py reads its host's capabilities instead)."""
    from pathlib import Path

    folder = Path(interface.__file__).parent / "keras"
    asking = sorted(p.name for p in folder.glob("*.py") if "keras.backend.backend()" in p.read_text())
    assert asking == ["host.py"]


def test_keras_backend_value_names_the_valid_frameworks(monkeypatch):
    spec = specs()["keras"]
    monkeypatch.setenv("KERAS_BACKEND", "foo")
    hint = spec.install_hint(["foo"])
    assert "KERAS_BACKEND='foo'" in hint and "torch" in hint and "tensorflow" in hint
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert spec.install_hint(["torch"]) == "install it with: pip install 'unidl[keras,torch]'"
    assert spec.required_modules() == ("keras", "torch")
