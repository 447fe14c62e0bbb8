"""``ud.load_weights(model, "x.pth")`` reads a ``torch.save`` state dict safely (``torch.load(weights_only=True)``)
into a unidl model on every backend; other architectures and pickled objects are clear errors."""

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference


class NotATensor:
    pass


def test_pth_state_dict_loads_on_every_backend(backend, tmp_path):
    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    path = tmp_path / "lstm.pth"
    torch.save(reference.state_dict(), path)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    model = ud.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    ud.load_weights(model, str(path))
    expected, _ = reference(torch.tensor(x))
    assert max_relative_difference(ud.to_numpy(model(ud.tensor(x))[0]), expected.detach().numpy()) < 2e-6

    with pytest.raises(ud.StateDictError, match=r"weight_ih_l0: expected shape \(20, 3\).*missing keys: weight_ih_l0_reverse"):
        ud.load_weights(ud.nn.LSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True), str(path))


def test_the_same_state_dict_loads_the_same_from_memory_pth_and_safetensors(backend, tmp_path):
    """An int64 tensor into a float variable is cast, as ``torch.nn``'s ``load_state_dict`` casts it, whichever the
    source: a dict, a ``.pth`` file or a safetensors file (which refused it); a float tensor into an integer
    variable is refused from each, nothing changed."""
    from unidl.io.safetensors import save_file

    state = {"weight": torch.arange(12).reshape(3, 4), "bias": torch.zeros(3)}
    torch.save(state, tmp_path / "w.pth")
    save_file({key: value.numpy() for key, value in state.items()}, tmp_path / "w.safetensors")
    for source in (state, tmp_path / "w.pth", tmp_path / "w.safetensors"):
        model = ud.nn.Linear(4, 3)
        if isinstance(source, dict):
            model.load_state_dict({key: value.numpy() for key, value in source.items()})
        else:
            ud.load_weights(model, source)
        weight = ud.to_numpy(model.weight)
        assert weight.dtype == np.float32 and np.array_equal(weight, np.arange(12).reshape(3, 4)), source
    # uint64 values past int64 into a float variable: cast from either source (the check of counts past int64
    # is for integer variables, which they would wrap negative)
    big = {"weight": np.full((3, 4), 2**63 + 2048, np.uint64), "bias": np.zeros(3, np.float32)}
    save_file(big, tmp_path / "u.safetensors")
    from_memory, from_file = ud.nn.Linear(4, 3), ud.nn.Linear(4, 3)
    from_memory.load_state_dict(big)
    ud.load_weights(from_file, tmp_path / "u.safetensors")
    np.testing.assert_array_equal(ud.to_numpy(from_file.weight), ud.to_numpy(from_memory.weight))

    norm = ud.nn.BatchNorm1d(3)
    state = {key: ud.to_numpy(value) for key, value in norm.state_dict().items()}
    state["num_batches_tracked"] = np.float32(state["num_batches_tracked"] + 2.5)
    torch.save({key: torch.from_numpy(np.asarray(value)) for key, value in state.items()}, tmp_path / "n.pth")
    save_file(state, tmp_path / "n.safetensors")
    for load in (lambda: norm.load_state_dict(state), lambda: ud.load_weights(norm, tmp_path / "n.pth"),
                 lambda: ud.load_weights(norm, tmp_path / "n.safetensors")):
        with pytest.raises(ud.StateDictError, match="num_batches_tracked: expected an integer tensor, found dtype"):
            load()
        assert int(ud.to_numpy(norm.num_batches_tracked)) == 0


def test_a_training_checkpoints_state_dict_loads_and_other_layouts_say_what_to_pass(tmp_path):
    """``torch.save({"state_dict": ..., "epoch": n})`` (Lightning's layout) loads its state dict, as the same pickle
    does with ``allow_pickle=True`` (``torch.load(weights_only=True)`` reads it safely: no opt-in); a state dict
    under another key is an error naming the key to pass; torch's refusal of a whole module comes without the
    terminal's escape codes it holds."""
    reference = torch.nn.Linear(4, 3)
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, tmp_path / "c.pth")
    with ud.use_backend("torch"):
        for allow_pickle in (False, True):
            model = ud.nn.Linear(4, 3)
            ud.load_weights(model, tmp_path / "c.pth", allow_pickle=allow_pickle)
            assert np.array_equal(ud.to_numpy(model.weight), reference.weight.detach().numpy())
        torch.save({"model": reference.state_dict(), "optimizer": {"lr": 0.1}}, tmp_path / "m.pth")
        with pytest.raises(ud.CorruptFileError, match=r"pass the one it holds, model.load_state_dict\(torch.load\("
                                                      r"path, weights_only=True\)\['model'\]\)"):
            ud.load_weights(model, tmp_path / "m.pth")
        torch.save(reference, tmp_path / "whole.pth")
        with pytest.raises(ud.CorruptFileError, match=r"(?s)refused it: .*save model.state_dict\(\) instead") as \
                refused:
            ud.load_weights(model, tmp_path / "whole.pth")
        assert "\x1b" not in str(refused.value)


def test_pth_with_other_objects_is_refused(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, path)
    with ud.use_backend("torch"), pytest.raises(ud.CorruptFileError, match=r"weights_only=True\) refused it"):
        ud.load_weights(ud.nn.Linear(2, 1), str(path))


def test_a_recompressed_archive_is_refused_before_anything_is_inflated(tmp_path):
    """``torch.save`` stores its entries uncompressed: an archive re-packed with compression (300 KB that inflate
    to 300 MB in torch.load) is a ``CorruptFileError`` naming its compressed entries, read from the zip directory
    alone."""
    import zipfile

    source = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(64, 64)}, source)
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(source) as plain, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in plain.infolist():
            archive.writestr(entry.filename, plain.read(entry.filename))
    with pytest.raises(ud.CorruptFileError, match=r"packed.pt': compressed entries .* stores its entries uncompressed"):
        ud.load_weights(ud.nn.Linear(64, 64, bias=False), str(packed))
    ud.load_weights(ud.nn.Linear(64, 64, bias=False), str(source))  # (torch.save's own archive loads)


def test_float8_tensors_load_as_torch_loads_them_and_sparse_ones_are_named(tmp_path):
    """A float8 tensor loads into float32 parameters, as torch's ``load_state_dict`` copies it (NumPy has no float8:
    ``.numpy()`` raised a raw ``TypeError``); a sparse or meta tensor is a ``CorruptFileError`` naming it."""
    reference = torch.nn.Linear(3, 2)
    state = {key: value.to(torch.float8_e4m3fn) for key, value in reference.state_dict().items()}
    path = tmp_path / "fp8.pt"
    torch.save(state, path)
    model = ud.nn.Linear(3, 2)
    ud.load_weights(model, str(path))
    for key, value in state.items():
        np.testing.assert_array_equal(ud.to_numpy(model.state_dict()[key]), value.float().numpy())
    torch.save({"weight": reference.weight.detach().to_sparse(), "bias": reference.bias.detach()}, path)
    with pytest.raises(ud.CorruptFileError, match=r"tensor 'weight' is torch.sparse_coo on cpu, not a dense tensor"):
        ud.load_weights(ud.nn.Linear(3, 2), str(path))


def test_a_view_of_fewer_stored_values_than_its_shape_is_refused_before_it_is_widened(tmp_path):
    """A 1.5 KB ``torch.save`` archive of a bfloat16 zero-stride view (one stored value, a 16000 x 16000 shape) was
    widened to float32 before any shape check: 1 GB from the file. Such a view is no model's weights."""
    path = tmp_path / "view.pt"
    torch.save({"linear1.weight": torch.zeros(1, dtype=torch.bfloat16).expand(16000, 16000)}, path)
    assert path.stat().st_size < 4096
    model = ud.models.TwoLayerNet(4, 8, 3)
    with pytest.raises(ud.CorruptFileError, match=r"tensor 'linear1.weight' of shape \(16000, 16000\) holds far "
                                                  r"more values than the 2 bytes stored for it"):
        model.load_weights(path)
    many = tmp_path / "many.pt"  # (views of 64 MiB each, under the bound one by one: their sum counts)
    torch.save({f"view{i}": torch.zeros(1).expand(2 ** 24) for i in range(24)}, many)
    with pytest.raises(ud.CorruptFileError, match="holds far more values than the"):
        model.load_weights(many, strict=False)
    tied = torch.nn.Linear(4, 8)  # (two names of one storage, a slice of a larger one, a small broadcast: fine)
    torch.save({"linear1.weight": tied.weight, "linear1.bias": torch.zeros(10)[2:], "linear2.weight": torch.zeros(
        3, 8), "linear2.bias": torch.ones(1).expand(3)}, tmp_path / "fine.pt")
    model.load_weights(tmp_path / "fine.pt")
    np.testing.assert_array_equal(model.state_dict()["linear1.weight"], tied.weight.detach().numpy())
    np.testing.assert_array_equal(model.state_dict()["linear2.bias"], np.ones(3))


def test_a_legacy_torch_file_is_refused_naming_its_format(tmp_path):
    """A ``torch.save(..., _use_new_zipfile_serialization=False)`` file was refused as a plain unsafe pickle (and with
    ``allow_pickle=True`` read as the format's magic number): the error names the format and how to re-save it."""
    path = tmp_path / "legacy.pt"
    torch.save({"linear1.weight": torch.zeros(8, 4)}, path, _use_new_zipfile_serialization=False)
    model = ud.models.TwoLayerNet(4, 8, 3)
    for allow_pickle in (False, True):
        with pytest.raises(ud.UnsafeFormatError, match="PyTorch's legacy format .* re-save it in the zip format"):
            model.load_weights(path, allow_pickle=allow_pickle)


def test_a_pth_whose_later_key_does_not_fit_changes_nothing(backend, tmp_path):
    """``ud.load_weights`` of a ``.pth`` (read whole by ``torch.load(weights_only=True)``, then ``load_state_dict``)
    whose last key has the wrong shape: a ``StateDictError`` naming it, and every parameter and buffer (a
    BatchNorm's statistics and count too) bit for bit as before, though each key before it fits and would change.
    Then the file with that key right loads."""
    model = ud.nn.Sequential(ud.nn.Linear(4, 6), ud.nn.BatchNorm1d(6), ud.nn.Linear(6, 3))
    rng = np.random.default_rng(0)
    state = {key: torch.tensor(7) if np.asarray(value).dtype.kind in "iu"
             else torch.tensor(rng.uniform(0.5, 2.0, np.shape(value)).astype(np.float32))
             for key, value in model.state_dict().items()}
    last = list(state)[-1]
    before = {key: np.array(value) for key, value in model.state_dict().items()}
    assert last == "2.bias" and not any(np.array_equal(before[key], state[key].numpy()) for key in state)
    torch.save(dict(state, **{last: torch.zeros(4)}), tmp_path / "wrong.pth")
    with pytest.raises(ud.StateDictError, match=r"shape mismatches: 2.bias: expected shape \(3,\), found \(4,\)"):
        ud.load_weights(model, tmp_path / "wrong.pth")
    for key, value in model.state_dict().items():
        assert np.asarray(value).dtype == before[key].dtype and np.asarray(value).tobytes() == before[key].tobytes()
    torch.save(state, tmp_path / "right.pth")
    ud.load_weights(model, tmp_path / "right.pth")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key].numpy())
