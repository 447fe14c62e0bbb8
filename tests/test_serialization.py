"""``ud.save`` / ``ud.load``: one file, loadable on every backend, that never runs code from the file."""

import itertools
import json
import os
import pickle
import sys

import numpy as np
import pytest

import unidl as ud
from unidl.io.safetensors import load_file, save_file
from unidl.serialization import CANONICAL_LAYOUT, _registry, encode_metadata, model_metadata
from unidl.testing import max_relative_difference

BACKENDS = ud.available_backends()


def _outputs(model, x):
    return ud.to_numpy(model(ud.tensor(x)))


@pytest.mark.parametrize("source,target", list(itertools.product(BACKENDS, BACKENDS)))
def test_saved_on_one_backend_loads_on_every_other(tmp_path, rng, source, target):
    x = rng.standard_normal((5, 6)).astype(np.float32)
    with ud.use_backend(source):
        ud.manual_seed(0)
        original = ud.models.TwoLayerNet(6, 16, 3)
        expected = _outputs(original, x)
        ud.save(original, tmp_path / "net.safetensors")
    with ud.use_backend(target):
        ud.manual_seed(1)  # different initial weights: the loaded ones must win
        loaded = ud.load(tmp_path / "net.safetensors")
        assert isinstance(loaded, ud.models.TwoLayerNet) and loaded.backend == target
        assert loaded.config == {"D_in": 6, "H": 16, "D_out": 3}
        assert max_relative_difference(_outputs(loaded, x), expected) < 2e-6


def test_metadata_describes_the_model(tmp_path, backend):
    model = ud.models.TwoLayerNet(3, 4, 2)
    ud.save(model, tmp_path / "net.safetensors")
    tensors, file_metadata = load_file(tmp_path / "net.safetensors")
    metadata = json.loads(file_metadata["unidl"])
    assert metadata["class"] == "TwoLayerNet" and metadata["config"] == {"D_in": 3, "H": 4, "D_out": 2}
    assert metadata["layout"] == CANONICAL_LAYOUT and metadata["format_version"] == 2
    assert metadata["backend"] == backend and metadata["versions"] == model._backend.versions()
    assert metadata["unidl_version"] == ud.__version__
    assert set(tensors) == set(model.state_dict())


def test_load_weights_into_a_built_model(tmp_path, backend, rng):
    source = ud.models.TwoLayerNet(3, 4, 2)
    ud.save(source, tmp_path / "net.safetensors")
    ud.manual_seed(7)
    target = ud.models.TwoLayerNet(3, 4, 2)
    target.load_weights(tmp_path / "net.safetensors")
    other = ud.models.TwoLayerNet(3, 4, 2)
    ud.load_weights(other, str(tmp_path / "net.safetensors"))
    for model in (target, other):
        for key, value in source.state_dict().items():
            np.testing.assert_array_equal(model.state_dict()[key], value)


class Wider(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = ud.nn.Linear(5, 4)
        self.head = ud.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.linear1(x))


def test_strict_load_of_another_architecture_lists_every_mismatch(tmp_path):
    ud.save(ud.models.TwoLayerNet(3, 4, 2), tmp_path / "net.safetensors")
    with pytest.raises(ud.StateDictError) as error:
        ud.load_weights(Wider(), tmp_path / "net.safetensors")
    message = str(error.value)
    assert "linear1.weight: expected shape (4, 5), found (4, 3)" in message
    assert "head.weight (expected shape (2, 4))" in message and "head.bias (expected shape (2,))" in message
    assert "linear2.weight (shape (2, 4))" in message and "linear2.bias (shape (2,))" in message


# ---- files that must not run code ----------------------------------------

class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_planted_pickle_is_refused_and_never_run(tmp_path, backend, protocol):
    """Through every reader (``ud.load``, ``ud.load_weights``, ``ud.load_checkpoint`` of the file and of a
    directory holding it under a checkpoint's name): refused with an error naming the file, the model unchanged."""
    marker = tmp_path / "marker"
    payload = pickle.dumps({"linear1.weight": _WritesMarker(marker)}, protocol=protocol)
    path = tmp_path / "model.pt"
    path.write_bytes(payload)
    model = ud.models.TwoLayerNet(3, 4, 2)
    before = model.state_dict()
    with pytest.raises((ud.UnsafeFormatError, ud.CorruptFileError), match="model.pt.*allow_pickle=True"):
        ud.load(path)
    with pytest.raises((ud.UnsafeFormatError, ud.CorruptFileError), match="model.pt.*allow_pickle=True"):
        ud.load_weights(model, path)
    with pytest.raises(ud.CorruptFileError, match="model.pt"):
        ud.load_checkpoint(path, model)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint-0001-0000001.safetensors").write_bytes(payload)
    with pytest.warns(RuntimeWarning, match="skipping corrupt checkpoint .*checkpoint-0001-0000001"):
        with pytest.raises(ud.CorruptFileError, match="no readable checkpoint in .*run"):
            ud.load_checkpoint(tmp_path / "run", model)
    assert not marker.exists()
    for key, value in before.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_damaged_torch_zip_file_is_refused(tmp_path):
    """A torch.save archive is read only by torch.load(weights_only=True) (tests/io/test_torch_checkpoint.py) or,
    without torch, unidl's restricted reader (tests/io/test_torch_archive.py); a damaged one is a CorruptFileError,
    never an unpickling."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ud.CorruptFileError, match=r"model.pt' is not a readable zip archive"):
        ud.load(path)


def test_trusted_pickle_loads_with_allow_pickle(tmp_path):
    source = ud.models.TwoLayerNet(3, 4, 2)
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(dict(source.state_dict())))
    target = ud.models.TwoLayerNet(3, 4, 2)
    ud.load_weights(target, path, allow_pickle=True)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key], value)
    with pytest.raises(ud.UnknownModelError, match="load_weights"):
        ud.load(path, allow_pickle=True)  # a bare dict of arrays does not say which model it is


def test_unknown_class_is_refused_and_nothing_is_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "planted_module_for_unidl_test.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n"
                                                              f"class Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = ud.models.TwoLayerNet(3, 4, 2).state_dict()
    metadata = {"format": "unidl", "format_version": 1, "kind": "model", "layout": CANONICAL_LAYOUT,
                "class": "Evil", "class_module": "planted_module_for_unidl_test", "config": {}}
    save_file(state, tmp_path / "evil.safetensors", {"unidl": json.dumps(metadata)})
    with pytest.raises(ud.UnknownModelError, match=r"ud\.register_model\(Evil\)"):
        ud.load(tmp_path / "evil.safetensors")
    assert not marker.exists() and "planted_module_for_unidl_test" not in sys.modules


def test_registered_class_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr("unidl.serialization._registry", dict(_registry))

    class Scaled(ud.nn.Module):
        def __init__(self, width, scale=1.0):
            super().__init__()
            self.config = {"width": width, "scale": scale}
            self.linear = ud.nn.Linear(width, width)

        def forward(self, x):
            return self.linear(x) * self.config["scale"]

    model = Scaled(3, scale=2.0)
    ud.save(model, tmp_path / "scaled.safetensors")
    with pytest.raises(ud.UnknownModelError, match="register_model"):
        ud.load(tmp_path / "scaled.safetensors")
    assert ud.register_model(Scaled) is Scaled
    loaded = ud.load(tmp_path / "scaled.safetensors")
    assert type(loaded) is Scaled and loaded.config == {"width": 3, "scale": 2.0}
    np.testing.assert_array_equal(loaded.state_dict()["linear.weight"], model.state_dict()["linear.weight"])

    class Other(ud.nn.Module):
        pass

    Other.__name__ = "Scaled"
    with pytest.raises(ValueError, match="already registered"):
        ud.register_model(Other)
    assert ud.register_model(name="OtherScaled")(Other) is Other
    assert _registry is not __import__("unidl").serialization._registry  # the patched copy, not the real one
    with pytest.raises(TypeError, match="subclass of unidl.nn.Module"):
        ud.register_model(dict)


def test_a_users_class_named_as_a_built_in_never_loads_as_the_other(tmp_path, monkeypatch):
    """A user's ``TwoLayerNet`` (the lecture's name, another activation) is refused until registered, where it
    loaded as ``unidl.models.TwoLayerNet``; registered, it loads as itself, and a file of the built-in still loads
    as the built-in (it loaded as the user's class): the file's ``class_module`` tells them apart."""
    monkeypatch.setattr("unidl.serialization._registry", dict(_registry))

    class TwoLayerNet(ud.nn.Module):
        def __init__(self, D_in, H, D_out):
            super().__init__()
            self.config = {"D_in": D_in, "H": H, "D_out": D_out}
            self.linear1, self.linear2 = ud.nn.Linear(D_in, H), ud.nn.Linear(H, D_out)

        def forward(self, x):
            return self.linear2(ud.ops.tanh(self.linear1(x)))

    mine, builtin = TwoLayerNet(4, 8, 2), ud.models.TwoLayerNet(4, 8, 2)
    ud.save(mine, tmp_path / "mine.safetensors")
    ud.save(builtin, tmp_path / "builtin.safetensors")
    with pytest.raises(ud.UnknownModelError, match=r"class 'TwoLayerNet' \(defined in module "):
        ud.load(tmp_path / "mine.safetensors")
    ud.register_model(TwoLayerNet)
    assert type(ud.load(tmp_path / "mine.safetensors")) is TwoLayerNet
    assert type(ud.load(tmp_path / "builtin.safetensors")) is ud.models.TwoLayerNet


def test_config_must_be_json(tmp_path):
    model = ud.models.TwoLayerNet(3, 4, 2)
    model.config = {"D_in": object()}
    with pytest.raises(TypeError, match="JSON-serializable"):
        ud.save(model, tmp_path / "net.safetensors")
    assert os.listdir(tmp_path) == []


def test_bad_paths(tmp_path):
    model = ud.models.TwoLayerNet(3, 4, 2)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        ud.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        ud.load_weights(model, tmp_path / "nope.safetensors")
    with pytest.raises(IsADirectoryError, match=tmp_path.name):
        ud.load(tmp_path)
    with pytest.raises(IsADirectoryError, match=tmp_path.name):
        ud.save(model, tmp_path)
    with pytest.raises(FileNotFoundError, match="no_dir"):
        ud.save(model, tmp_path / "no_dir" / "net.safetensors")


def test_corrupt_file_is_reported(tmp_path):
    ud.save(ud.models.TwoLayerNet(3, 4, 2), tmp_path / "net.safetensors")
    data = (tmp_path / "net.safetensors").read_bytes()
    (tmp_path / "net.safetensors").write_bytes(data[:-3])
    with pytest.raises(ud.CorruptFileError, match="net.safetensors"):
        ud.load(tmp_path / "net.safetensors")


def test_load_weights_reports_what_load_state_dict_reports(tmp_path, backend):
    """``load_weights(strict=False)`` of weights without BatchNorm's ``num_batches_tracked`` (a state dict of
    before unidl kept it) reports it missing no more than ``load_state_dict`` and PyTorch do, and both list the
    keys in the model's order (a set's order before)."""
    model = ud.nn.Sequential(ud.nn.Linear(3, 2), ud.nn.BatchNorm1d(2), ud.nn.Linear(2, 2))
    state = {k: v for k, v in model.state_dict().items() if "num_batches" not in k and k != "2.bias"}
    state["extra"] = np.zeros(2, np.float32)
    save_file(state, tmp_path / "w.safetensors")
    expected = (["2.bias"], ["extra"])  # (missing_keys, unexpected_keys), as torch's
    assert model.load_state_dict(state, strict=False) == expected
    assert model.load_weights(tmp_path / "w.safetensors", strict=False) == expected


def test_save_refuses_a_config_that_no_longer_describes_the_model(tmp_path, backend):
    """A built-in model whose head was replaced (transfer learning) saved a config of the old head: ``ud.load``
    could never rebuild the file. ``ud.save`` says so, naming the weights; with the config updated it saves and
    loads."""
    model = ud.models.TwoLayerNet(4, 8, 10)
    model.linear2 = ud.nn.Linear(8, 3)
    with pytest.raises(ud.StateDictError, match=r"linear2.weight: the config builds \(10, 8\), the model holds "
                                                r"\(3, 8\).*update model.config"):
        ud.save(model, tmp_path / "head.safetensors")
    assert not (tmp_path / "head.safetensors").exists()
    model.config["D_out"] = 3
    ud.save(model, tmp_path / "head.safetensors")
    assert tuple(ud.load(tmp_path / "head.safetensors").state_dict()["linear2.weight"].shape) == (3, 8)


def test_save_runs_no_constructor_of_a_users_class(tmp_path, monkeypatch):
    """``ud.save`` checks the config of a built-in model against its weights by building one; a user's class is not
    built (its constructor's draws moved NumPy's global generator, and its side effects ran, at every save)."""
    monkeypatch.setattr("unidl.serialization._registry", dict(_registry))
    built = []

    @ud.register_model
    class Counted(ud.nn.Module):
        def __init__(self, width):
            super().__init__()
            built.append(width)
            self.config = {"width": width}
            self.linear = ud.nn.Linear(width, width)

    model = Counted(3)
    ud.save(model, tmp_path / "counted.safetensors")
    assert built == [3]


def test_a_file_replaced_while_it_is_read_is_read_whole_as_it_was(tmp_path, monkeypatch):
    """Another writer's atomic save to the same path landing between the reader's steps (after the header's
    checks, after the checksums) leaves the read whole and as it was: the reader opens the file once (it opened it
    by path up to four times and mixed the old header with the new bytes: a spurious CorruptFileError)."""
    import unidl.io.safetensors as safetensors

    ud.manual_seed(1)
    first = ud.models.TwoLayerNet(4, 5, 3)
    ud.manual_seed(2)
    second = ud.models.TwoLayerNet(4, 5, 3)
    path = tmp_path / "w.safetensors"
    checked, verified = safetensors.check_with_package, safetensors.SafetensorsFile.verify

    def check_then_replace(*args, **kwargs):
        ud.save(second, path)
        return checked(*args, **kwargs)

    def verify_then_replace(self):
        verified(self)
        ud.save(second, path)

    for name, replacement in (("check_with_package", check_then_replace), ("verify", verify_then_replace)):
        ud.save(first, path)
        with monkeypatch.context() as patched:
            owner = safetensors if name == "check_with_package" else safetensors.SafetensorsFile
            patched.setattr(owner, name, replacement)
            loaded = ud.load(path)
        for key, value in first.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=name)


def test_a_float64_model_loads_in_float64_whatever_dtype_is_in_force(backend, tmp_path, rng):
    """``ud.load`` builds the model in the dtype it was saved in, as Keras's ``load_model`` keeps a dtype policy (a
    float64 model came back float32, its weights rounded)."""
    with ud.use_dtype("float64"):
        model = ud.models.TwoLayerNet(3, 4, 2)
    ud.save(model, tmp_path / "m.safetensors")
    loaded = ud.load(tmp_path / "m.safetensors")
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == np.float64
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    x = rng.standard_normal((2, 3))
    with ud.use_dtype("float64"):
        np.testing.assert_array_equal(ud.to_numpy(loaded(ud.tensor(x))), ud.to_numpy(model(ud.tensor(x))))
    assert ud.get_dtype() == "float32"


def test_a_model_whose_constructor_copies_a_layer_saves_and_loads(backend, tmp_path, rng):
    """``TransformerClassifier`` (its ``TransformerEncoder`` deep-copies its layer while built): the shape-only
    build that checks a file's config gave the copies no shape, and ``ud.save`` refused the model."""
    model = ud.models.TransformerClassifier(20, 3, d_model=8, nhead=2, num_layers=2)
    ud.save(model, tmp_path / "m.safetensors")
    loaded = ud.load(tmp_path / "m.safetensors")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)


def test_a_registered_model_with_extra_state_loads_with_it(backend, tmp_path, monkeypatch):
    """``ud.load`` of a registered model whose module defines ``get_extra_state``/``set_extra_state`` rebuilds it
    with its extra state, from the safetensors file ``ud.save`` writes and from a pickle (the file's
    ``_extra_state`` key was refused as not in the model, so ``ud.save`` wrote files ``ud.load`` never read); a
    file without that key is the error naming it as missing extra state, as ``load_state_dict``'s missing key."""
    monkeypatch.setattr("unidl.serialization._registry", dict(_registry))

    @ud.register_model
    class Counted(ud.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.config, self.fc, self.calls = {"n": n}, ud.nn.Linear(n, n), 0

        def get_extra_state(self):
            return np.array([self.calls])

        def set_extra_state(self, state):
            self.calls = int(state[0])

    model = Counted(2)
    model.calls = 5
    ud.save(model, tmp_path / "counted.safetensors")
    with open(tmp_path / "counted.pkl", "wb") as handle:
        pickle.dump({"state_dict": model.state_dict(), "unidl": model_metadata(model)}, handle)
    for loaded in (ud.load(tmp_path / "counted.safetensors"), ud.load(tmp_path / "counted.pkl", allow_pickle=True)):
        assert type(loaded) is Counted and loaded.calls == 5
        np.testing.assert_array_equal(loaded.state_dict()["fc.weight"], model.state_dict()["fc.weight"])
    without = {key: value for key, value in model.state_dict().items() if key != "_extra_state"}
    save_file(without, tmp_path / "without.safetensors", encode_metadata(model_metadata(model)))
    with pytest.raises(ud.StateDictError, match=r"_extra_state \(extra state\) is not in the file"):
        ud.load(tmp_path / "without.safetensors")


def test_a_numpy_npz_state_dict_is_named_with_how_to_load_it(tmp_path):
    """``np.savez`` of a state dict shares the zip signature of ``torch.save`` files and got torch's error about an
    archive without a subdirectory: the error names the format and how to load it."""
    model = ud.models.TwoLayerNet(4, 8, 3)
    np.savez(tmp_path / "sd.npz", **{key: ud.to_numpy(value) for key, value in model.state_dict().items()})
    with pytest.raises(ud.CorruptFileError, match=r"is a NumPy .npz archive \(4 arrays\), not a weights file .*"
                                                  r"model.load_state_dict\(dict\(np.load\(path, allow_pickle=False"):
        ud.load_weights(model, tmp_path / "sd.npz")


def test_loading_an_exported_program_as_weights_says_what_it_is(tmp_path):
    """``ud.load_weights`` of a ``torch_export`` program: a ``CorruptFileError`` saying it is an exported program and
    how to run it (torch.load's "internal miniz error" before); an ONNX program's error says such programs hold no
    weights to load (it hinted at pickles only)."""
    with ud.use_backend("torch"):
        model = ud.nn.Linear(2, 1)
        ud.export(model, tmp_path / "m.pt2", format="torch_export", input_shape=(2,))
        with pytest.raises(ud.errors.CorruptFileError, match=r"is a torch.export program .* not a weights file: run "
                                                             r"it with torch.export.load\(path\).module\(\)\(x\)"):
            model.load_weights(tmp_path / "m.pt2")
        (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(64))
        with pytest.raises(ud.errors.CorruptFileError, match="A program that ud.export wrote, ONNX or StableHLO, "
                                                             "holds no weights to load"):
            model.load_weights(tmp_path / "m.onnx")
