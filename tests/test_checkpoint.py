"""Checkpoints: model, optimizer, RNG and loader state saved atomically, rotated, and restored past a corrupt file."""

import collections
import os
import pickle
import warnings

import numpy as np
import torch
import pytest

import unidl as ud
from unidl import random as unidl_random
from unidl.serialization import _registry
from unidl.testing import max_relative_difference


class MomentumStandIn:
    """Just the optimizer contract the checkpoints use: params, state_dict(), load_state_dict()."""

    def __init__(self, model, lr=0.1):
        self.params = model.parameters()
        self.shapes = [value.shape for value in model.state_dict().values()]
        self.lr, self.step = lr, 0
        self.velocity = [np.zeros(shape, np.float32) for shape in self.shapes]

    def advance(self, rng):
        self.step += 1
        self.velocity = [v + rng.standard_normal(v.shape).astype(np.float32) for v in self.velocity]

    def state_dict(self):
        return {"step": self.step, "lr": self.lr,
                "slots": [{"velocity": v.copy(), "nested/name": np.array(i)} for i, v in enumerate(self.velocity)]}

    def load_state_dict(self, state):
        self.step, self.lr = state["step"], state["lr"]
        self.velocity = [slots["velocity"] for slots in state["slots"]]
        assert [int(slots["nested/name"]) for slots in state["slots"]] == list(range(len(self.velocity)))


class LoaderStandIn:
    def __init__(self, position=0):
        self.position = position

    def state_dict(self):
        return {"position": self.position, "order_seed": 12345678901234567890}

    def load_state_dict(self, state):
        self.position = state["position"]


def _model(seed):
    ud.manual_seed(seed)
    return ud.models.TwoLayerNet(3, 4, 2)


def test_round_trip_restores_everything(tmp_path, rng):
    model, loader = _model(0), LoaderStandIn(position=17)
    optimizer = MomentumStandIn(model, lr=0.05)
    optimizer.advance(rng)
    path = ud.save_checkpoint(tmp_path, model, optimizer, epoch=2, step=340, loader=loader,
                              extra={"best_loss": 0.25, "note": "ok"})
    assert os.path.basename(path) == "checkpoint-0002-0000340.safetensors"
    draws_after_save = unidl_random.generator().standard_normal(3)

    restored, restored_optimizer, restored_loader = _model(99), MomentumStandIn(_model(5)), LoaderStandIn()
    unidl_random.generator().standard_normal(10)  # move the RNG on: loading must bring it back
    info = ud.load_checkpoint(tmp_path, restored, restored_optimizer, restored_loader)

    assert (info["epoch"], info["step"], info["extra"]) == (2, 340, {"best_loss": 0.25, "note": "ok"})
    assert info["path"] == path and info["optimizer"]["class"] == "MomentumStandIn"
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value)
    assert (restored_optimizer.step, restored_optimizer.lr) == (1, 0.05)
    for restored_velocity, velocity in zip(restored_optimizer.velocity, optimizer.velocity):
        np.testing.assert_array_equal(restored_velocity, velocity)
    assert restored_loader.position == 17
    np.testing.assert_array_equal(unidl_random.generator().standard_normal(3), draws_after_save)


def test_model_only_checkpoint_also_loads_with_ud_load(tmp_path):
    model = _model(0)
    path = ud.save_checkpoint(tmp_path, model, epoch=1)
    info = ud.load_checkpoint(path, _model(3))
    assert info["optimizer"] is None and info["epoch"] == 1
    loaded = ud.load(path)
    np.testing.assert_array_equal(loaded.state_dict()["linear1.weight"], model.state_dict()["linear1.weight"])


def test_rotation_keeps_the_newest(tmp_path):
    model = _model(0)
    for epoch, step in [(0, 5), (1, 10), (9, 100), (10, 5), (10, 6)]:
        ud.save_checkpoint(tmp_path, model, epoch=epoch, step=step, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0010-0000005.safetensors",
                                            "checkpoint-0010-0000006.safetensors"]
    assert ud.latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-0010-0000006.safetensors")
    ud.save_checkpoint(tmp_path, model, epoch=11, keep=None)
    assert len(os.listdir(tmp_path)) == 3
    with pytest.raises(ValueError, match="keep"):
        ud.save_checkpoint(tmp_path, model, keep=0)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_newest_falls_back_with_a_warning(tmp_path, damage):
    model = _model(0)
    ud.save_checkpoint(tmp_path, model, epoch=1)
    newest = ud.save_checkpoint(tmp_path, _model(1), epoch=2)
    data = open(newest, "rb").read()
    corrupted = {"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 10, "empty": b""}[damage]
    open(newest, "wb").write(corrupted)

    restored = _model(2)
    with pytest.warns(RuntimeWarning, match="checkpoint-0002-0000000.safetensors"):
        info = ud.load_checkpoint(tmp_path, restored)
    assert info["epoch"] == 1
    np.testing.assert_array_equal(restored.state_dict()["linear2.bias"], model.state_dict()["linear2.bias"])
    with pytest.raises(ud.CorruptFileError, match="checkpoint-0002"):
        ud.load_checkpoint(newest, restored)  # an explicit file gets no fall-back


def test_all_corrupt_raises(tmp_path):
    path = ud.save_checkpoint(tmp_path, _model(0))
    open(path, "wb").write(b"nope")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(ud.CorruptFileError, match="no readable checkpoint"):
            ud.load_checkpoint(tmp_path, _model(0))


def test_mismatched_optimizer_changes_nothing(tmp_path, rng):
    model = _model(0)
    optimizer = MomentumStandIn(model)
    ud.save_checkpoint(tmp_path, model, optimizer)
    other = _model(1)
    before = other.state_dict()
    fewer = MomentumStandIn(other)
    fewer.params = fewer.params[:2]
    with pytest.raises(ValueError, match="4 parameters"):
        ud.load_checkpoint(tmp_path, other, fewer)
    with pytest.raises(ValueError, match="no data-loader state"):
        ud.load_checkpoint(tmp_path, other, loader=LoaderStandIn())
    for key, value in before.items():
        np.testing.assert_array_equal(other.state_dict()[key], value)


def test_wrong_architecture_lists_mismatches(tmp_path):
    ud.save_checkpoint(tmp_path, _model(0))
    with pytest.raises(ud.StateDictError, match=r"linear1.weight: expected shape \(4, 5\), found \(4, 3\)"):
        ud.load_checkpoint(tmp_path, ud.models.TwoLayerNet(5, 4, 2))


def test_bad_paths(tmp_path):
    model = _model(0)
    assert ud.latest_checkpoint(tmp_path / "missing") is None
    assert ud.latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="missing"):
        ud.load_checkpoint(tmp_path / "missing", model)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ud.load_checkpoint(tmp_path, model)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        ud.save_checkpoint(tmp_path / "file", model)
    with pytest.raises(NotADirectoryError, match="file"):
        ud.latest_checkpoint(tmp_path / "file")
    with pytest.raises(TypeError, match="extra"):
        ud.save_checkpoint(tmp_path / "new", model, extra={"f": object()})
    assert not (tmp_path / "new").exists()  # (refused before the directory is made)
    for arguments, match in (((torch.nn.Linear(2, 2),), "model must be a unidl.nn.Module, got Linear"),
                             ((model, "adam"), "optimizer must be a unidl.optim optimizer, got str"),
                             ((model, None, torch.utils.data.DataLoader([1.0])),
                              "loader must be a unidl.data.DataLoader, got DataLoader .a framework's own")):
        with pytest.raises(TypeError, match=match):
            ud.save_checkpoint(tmp_path / "other", arguments[0], *arguments[1:2],
                               **({"loader": arguments[2]} if len(arguments) > 2 else {}))
        with pytest.raises(TypeError, match=match):
            ud.load_checkpoint(tmp_path, *arguments)
    assert not (tmp_path / "other").exists()
    with pytest.raises(TypeError, match="ud.load_weights expects a unidl.nn.Module, got Linear"):
        ud.load_weights(torch.nn.Linear(2, 2), tmp_path / "file")
    path = ud.save_checkpoint(tmp_path / "one", model, callbacks=ud.callbacks.EarlyStopping())  # (one, as fit's)
    assert ud.load_checkpoint(path, model, callbacks=ud.callbacks.EarlyStopping())["path"] == path


def _training_setup(seed, optimizer_name):
    model = _model(seed)
    optimizer = (ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer_name == "SGD"
                 else ud.optim.Adam(model.parameters(), lr=0.01))
    return model, optimizer, ud.train_step(model, ud.nn.MSELoss(), optimizer)


@pytest.mark.parametrize("optimizer_name", ["SGD", "Adam"])
def test_resuming_training_matches_uninterrupted_training(tmp_path, backend, rng, optimizer_name):
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    model, optimizer, step = _training_setup(0, optimizer_name)
    for _ in range(3):
        step(x, y)
    ud.save_checkpoint(tmp_path, model, optimizer, step=3)
    uninterrupted = [float(step(x, y)) for _ in range(3)]

    model, optimizer, step = _training_setup(1, optimizer_name)
    info = ud.load_checkpoint(tmp_path, model, optimizer)
    assert info["optimizer"]["step"] == 3 and optimizer.lr == info["optimizer"]["lr"]
    resumed = [float(step(x, y)) for _ in range(3)]
    np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-6)


def test_checkpoint_resumes_on_another_backend(tmp_path, rng):
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    source, *targets = ud.available_backends()
    with ud.use_backend(source):
        model, optimizer, step = _training_setup(0, "Adam")
        for _ in range(3):
            step(x, y)
        ud.save_checkpoint(tmp_path, model, optimizer, step=3)
        uninterrupted = [float(step(x, y)) for _ in range(3)]
    for target in targets:
        with ud.use_backend(target):
            model, optimizer, step = _training_setup(1, "Adam")
            ud.load_checkpoint(tmp_path, model, optimizer)
            resumed = [float(step(x, y)) for _ in range(3)]
        assert max_relative_difference(resumed, uninterrupted) < 1e-5, target


def _stepped_adam(features):
    """A Linear(features, features) and its Adam after one update (slots of torch.optim's, of every parameter)."""
    model = ud.nn.Linear(features, features)
    optimizer = ud.optim.Adam(model.parameters(), lr=0.01)
    optimizer.apply([ud.tensor(np.full(tuple(p.shape), 0.5, np.float32)) for p in model.parameters()])
    return model, optimizer


def test_on_torch_a_checkpoints_optimizer_slots_are_the_arrays_read(tmp_path):
    """A slot ``load_checkpoint`` reads is the load's to give away (``Backend.given_slot``): torch.optim's slots
    that the load creates are the arrays read, not clones of them (a second copy of each slot). NumPy's arrays are
    traced by tracemalloc: the slots count in the memory still allocated after the load. (A first load allocates
    the framework's own objects, untraced.)"""
    import tracemalloc

    with ud.use_backend("torch"), ud.use_device("cpu"):  # (on a GPU the slots are copied there)
        model, optimizer = _stepped_adam(256)
        ud.save_checkpoint(tmp_path, model, optimizer, step=1)
        ud.load_checkpoint(tmp_path, model, optimizer)
        tracemalloc.start()
        try:
            ud.load_checkpoint(tmp_path, model, optimizer)
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        slot_bytes = sum(slot.nbytes for entry in optimizer.state_dict()["slots"] for slot in entry.values())
    assert held >= slot_bytes, (held, slot_bytes)


def test_arrays_a_user_gives_optimizer_load_state_dict_are_copied(backend):
    """The user may keep using the arrays of a state they load (and change them): the optimizer copies them, also
    where the framework could share their memory (64-byte aligned arrays: JAX and TensorFlow on the CPU)."""
    from unidl.io.buffers import aligned_zeros

    _, source = _stepped_adam(4)
    state = source.state_dict()
    expected = [{name: np.array(slot) for name, slot in entry.items()} for entry in state["slots"]]
    state["slots"] = [{name: aligned_zeros(slot.shape, slot.dtype) for name, slot in entry.items()}
                      for entry in expected]
    for given, slots in zip(state["slots"], expected):
        for name, slot in slots.items():
            given[name][...] = slot
    _, optimizer = _stepped_adam(4)
    optimizer.load_state_dict(state)
    for entry in state["slots"]:
        for slot in entry.values():
            slot[...] = 123.0
    for loaded, slots in zip(optimizer.state_dict()["slots"], expected):
        for name, slot in slots.items():
            np.testing.assert_array_equal(loaded[name], slot)


@pytest.mark.parametrize("name, value", [("keep", 0), ("keep", -1), ("keep", 1.5), ("keep", "3"), ("keep", True),
                                         ("every_steps", True), ("every_steps", 0), ("every_steps", 2.0)])
def test_checkpoint_arguments_are_checked_when_it_is_made(tmp_path, name, value):
    """A bad ``keep`` or ``every_steps`` is refused by the constructor (``keep`` was refused at the first save, after
    an epoch of training); NumPy integers are taken, a bool is not a count (unidl's argument rule)."""
    with pytest.raises(ValueError, match=f"Checkpoint {name} must be a positive integer or None, got "):
        ud.callbacks.Checkpoint(tmp_path, **{name: value})
    checkpoint = ud.callbacks.Checkpoint(tmp_path, every_steps=np.int64(5), keep=np.int32(2))
    assert (checkpoint.every_steps, checkpoint.keep) == (5, 2) and type(checkpoint.every_steps) is int


def test_a_fifo_or_a_directory_named_like_the_newest_checkpoint_is_skipped(tmp_path):
    """A FIFO named like a checkpoint is skipped with a warning, never opened (``open`` blocked for ever: a scan, a
    ``load_checkpoint`` of the directory, a ``fit`` resume hung), and so is a directory named like one (its
    ``IsADirectoryError`` ended the scan); the newest intact checkpoint is found behind them."""
    import threading

    model = ud.nn.Linear(2, 1)
    path = ud.save_checkpoint(tmp_path, model, epoch=0, step=1)
    os.mkfifo(tmp_path / "checkpoint-0005-0000050.safetensors")
    os.mkdir(tmp_path / "checkpoint-0009-0000090.safetensors")
    found = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        scan = threading.Thread(target=lambda: found.append(ud.latest_checkpoint(tmp_path)), daemon=True)
        scan.start()
        scan.join(20)
    assert found == [path]
    skipped = sorted(str(w.message).split("'")[1] for w in caught if issubclass(w.category, RuntimeWarning))
    assert [os.path.basename(p) for p in skipped] == ["checkpoint-0005-0000050.safetensors",
                                                      "checkpoint-0009-0000090.safetensors"]
    with pytest.warns(RuntimeWarning, match="is not a regular file"):
        assert ud.load_checkpoint(tmp_path, model)["step"] == 1


def test_saving_below_checkpoints_already_in_the_directory_warns_once(tmp_path):
    """A directory holding later checkpoints (another run's, or a run rolled back to an earlier one): the newest
    by name, not this run's, is what a resume takes and rotation keeps. Said once per directory (it was silent)."""
    model = _model(0)
    ud.save_checkpoint(tmp_path, model, epoch=7, step=70)
    with pytest.warns(RuntimeWarning, match=r"already holds checkpoints past the one written now "
                                            r"\(checkpoint-0000-0000001.safetensors\), the newest "
                                            r"'checkpoint-0007-0000070.safetensors'"):
        ud.save_checkpoint(tmp_path, model, epoch=0, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ud.save_checkpoint(tmp_path, model, epoch=0, step=2)
        ud.save_checkpoint(tmp_path / "fresh", model, epoch=0, step=1)
        ud.save_checkpoint(tmp_path / "long", model, epoch=3, step=9_999_999)  # (numbers, not names, compared)
        ud.save_checkpoint(tmp_path / "long", model, epoch=3, step=10_000_000)


class _Versioned(ud.nn.Linear):
    """A layer whose extra state is a format version, which ``set_extra_state`` takes as it is."""

    version = 2

    def get_extra_state(self):
        return np.array([self.version])

    def set_extra_state(self, state):
        self.version = int(np.asarray(state)[0])


class _Newer(_Versioned):
    """A later version of ``_Versioned`` that refuses another version's state, as torch code often does."""

    def set_extra_state(self, state):
        if int(np.asarray(state)[0]) != 3:
            raise ValueError(f"incompatible version {int(np.asarray(state)[0])}")
        super().set_extra_state(state)


class _Counting(ud.nn.Linear):
    """A layer whose ``get_extra_state`` returns its own array, which ``set_extra_state`` writes into (as much torch
    code does), refusing negative counts."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.config, self.counts = {"in_features": in_features, "out_features": out_features}, np.zeros(3)

    def get_extra_state(self):
        return self.counts

    def set_extra_state(self, state):
        if np.asarray(state).min() < 0:
            raise ValueError("negative counts")
        self.counts[:] = state


def test_a_refusing_set_extra_state_leaves_the_whole_run_unchanged(backend, tmp_path, monkeypatch):
    """Every load stays all or nothing when a module's ``set_extra_state`` raises after the weights were written
    (torch's order): ``load_checkpoint`` leaves the generators and the optimizer unchanged too, and the model's
    weights and extra state are put back bit for bit, also a module's extra state that ``get_extra_state`` returns
    as its own array (the rollback kept that array, which the load then wrote into), and through
    ``load_state_dict`` (a pickle's ``load_weights``), which left the model half loaded; ``ud.load`` of a
    registered model raises the refusal."""
    monkeypatch.setattr("unidl.serialization._registry", dict(_registry))
    model = ud.nn.Sequential(_Counting(2, 2), _Versioned(2, 2))
    model[0].counts[:] = [1, 2, 3]
    ud.save_checkpoint(tmp_path, model, ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epoch=1)
    ud.save(model, tmp_path / "model.safetensors")
    with open(tmp_path / "model.pkl", "wb") as handle:
        pickle.dump({"state_dict": model.state_dict()}, handle)
    ud.manual_seed(7)
    other = ud.nn.Sequential(_Counting(2, 2), _Newer(2, 2))
    other[0].counts[:] = [7, 8, 9]
    optimizer = ud.optim.SGD(other.parameters(), lr=0.5, momentum=0.9)
    weights, rng = {k: np.array(v) for k, v in other.state_dict().items()}, unidl_random.get_rng_state()
    for load in (lambda: ud.load_checkpoint(tmp_path, other, optimizer),
                 lambda: ud.load_weights(other, tmp_path / "model.safetensors"),
                 lambda: ud.load_weights(other, tmp_path / "model.pkl", allow_pickle=True),
                 lambda: other.load_state_dict(model.state_dict())):
        with pytest.raises(ValueError, match="incompatible version 2"):
            load()
        assert other.state_dict().keys() == weights.keys() and other[1].version == 2
        for key, value in weights.items():
            np.testing.assert_array_equal(other.state_dict()[key], value, err_msg=key)
        assert optimizer.state_dict()["lr"] == 0.5 and unidl_random.get_rng_state() == rng
    ud.register_model(_Counting)
    model[0].counts[:] = -1
    ud.save(model[0], tmp_path / "negative.safetensors")
    with pytest.raises(ValueError, match="negative counts"):
        ud.load(tmp_path / "negative.safetensors")


class _Reading(ud.nn.Linear):
    """A layer whose ``set_extra_state`` reads its weight (a derived copy, as torch code rebuilds one)."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.config = {"in_features": in_features, "out_features": out_features}

    def get_extra_state(self):
        return np.array([1])

    def set_extra_state(self, state):
        self.seen = ud.to_numpy(self.weight).copy()


class _TorchReading(torch.nn.Linear):
    def get_extra_state(self):
        return np.array([1])

    def set_extra_state(self, state):
        self.seen = self.weight.detach().numpy().copy()


def test_a_set_extra_state_that_reads_a_weight_sees_the_loaded_one_from_every_load_as_torchs(backend, tmp_path,
                                                                                               monkeypatch):
    """torch.nn's ``load_state_dict`` writes a module's weights before its ``set_extra_state``; the file loads
    (``ud.load_weights``, ``ud.load``, ``load_checkpoint`` of safetensors) called it first, so it saw the weights
    the model had before (``ud.load``: zeros), unlike ``load_state_dict`` and a pickle's load."""
    monkeypatch.setattr("unidl.serialization._registry", dict(_registry))
    ud.register_model(_Reading)
    source = _Reading(3, 2)
    ud.save(source, tmp_path / "m.safetensors")
    ud.save_checkpoint(tmp_path / "checkpoints", source)
    with open(tmp_path / "m.pkl", "wb") as handle:
        pickle.dump({"state_dict": source.state_dict()}, handle)
    oracle = _TorchReading(3, 2)
    oracle.load_state_dict({k: v if k == "_extra_state" else torch.tensor(v) for k, v in source.state_dict().items()})
    loads = {"load_state_dict": lambda m: m.load_state_dict(source.state_dict()),
             "load_weights": lambda m: ud.load_weights(m, tmp_path / "m.safetensors"),
             "pickle": lambda m: ud.load_weights(m, tmp_path / "m.pkl", allow_pickle=True),
             "load_checkpoint": lambda m: ud.load_checkpoint(tmp_path / "checkpoints", m)}
    for name, load in loads.items():
        model = _Reading(3, 2)
        load(model)
        np.testing.assert_array_equal(model.seen, oracle.seen, err_msg=name)
    np.testing.assert_array_equal(ud.load(tmp_path / "m.safetensors").seen, oracle.seen, err_msg="ud.load")


class _Tallies(ud.nn.Linear):
    """Extra state kept as a ``defaultdict`` (torch code's habit for counters)."""

    def __init__(self):
        super().__init__(2, 2)
        self.tallies = collections.defaultdict(int)

    def get_extra_state(self):
        return self.tallies

    def set_extra_state(self, state):
        self.tallies = state


def test_an_extra_state_of_a_defaultdict_loads_and_a_failed_restore_keeps_the_loads_own_error(backend):
    """The rollback's copy of extra state keeps a ``defaultdict`` (its factory too: copying it as ``type(d)(pairs)``
    was a TypeError that broke every load of such a module), and where putting the model back fails as well, the
    load's own error is raised with that failure noted beside it."""
    source, target = _Tallies(), _Tallies()
    source.tallies["seen"] = 3
    target.load_state_dict(source.state_dict())
    assert target.tallies["seen"] == 3 and target.tallies["never"] == 0
    calls = []

    def refuse_then_fail(state):
        calls.append(state)
        raise ValueError("refused") if len(calls) == 1 else RuntimeError("cannot restore")

    target.set_extra_state = refuse_then_fail
    with pytest.raises(ValueError, match="refused") as caught:
        target.load_state_dict(source.state_dict())
    assert "putting the model back after this failed load failed too: RuntimeError: cannot restore" in \
        "\n".join(getattr(caught.value, "__notes__", []))


class _OldNames(ud.nn.Module):
    """A model as an old release saved it: its layer's weight and bias under ``w`` and ``b``."""

    def __init__(self):
        super().__init__()
        self.config = {}
        self.w, self.b = self.parameter(np.full((1, 2), 3.0)), self.parameter(np.full(1, 4.0))


def _renamed(module, state, prefix, metadata, strict, missing, unexpected, errors):
    for old, new in (("w", "fc.weight"), ("b", "fc.bias")):
        if prefix + old in state:
            state[prefix + new] = state.pop(prefix + old)


class _NewNames(ud.nn.Module):
    """The same model in a later release (a ``Linear`` under ``fc``), whose load pre-hook renames an old file's
    keys, as torch code keeps old checkpoints loading."""

    def __init__(self):
        super().__init__()
        self.config = {}
        self.fc = ud.nn.Linear(2, 1)
        self.register_load_state_dict_pre_hook(_renamed)


def test_a_load_pre_hook_maps_an_old_files_keys_in_every_load_and_a_refused_load_changes_nothing(
        backend, tmp_path, monkeypatch):
    """A model's load pre-hooks rename an old file's keys in ``ud.load_weights`` (safetensors and a pickle),
    ``ud.load`` and ``load_checkpoint``, as they do in ``load_state_dict`` (the file loads compared the file's keys
    with the model's and refused it); a load post-hook that adds a missing key fails a strict load from a file too,
    and the model is then as it was."""
    monkeypatch.setattr("unidl.serialization._registry", {})
    ud.register_model(_OldNames, name="Net")
    ud.save(_OldNames(), tmp_path / "old.safetensors")
    ud.save_checkpoint(tmp_path / "checkpoints", _OldNames())
    with open(tmp_path / "old.pkl", "wb") as handle:
        pickle.dump({"state_dict": _OldNames().state_dict()}, handle)
    monkeypatch.setattr("unidl.serialization._registry", {})
    ud.register_model(_NewNames, name="Net")
    loads = {"load_weights": lambda m: ud.load_weights(m, tmp_path / "old.safetensors"),
             "pickle": lambda m: ud.load_weights(m, tmp_path / "old.pkl", allow_pickle=True),
             "load_checkpoint": lambda m: ud.load_checkpoint(tmp_path / "checkpoints", m),
             "load_state_dict": lambda m: m.load_state_dict(_OldNames().state_dict())}
    for name, load in loads.items():
        model = _NewNames()
        load(model)
        assert model.state_dict().keys() == {"fc.weight", "fc.bias"}, name
        assert (model.state_dict()["fc.weight"] == 3).all() and (model.state_dict()["fc.bias"] == 4).all(), name
        model.load_state_dict({"fc.weight": np.full((1, 2), 5.0), "fc.bias": np.full(1, 6.0)})
        before = model.state_dict()  # (5s and 6s: the refused load of the file's 3s and 4s would change them)
        handle = model.register_load_state_dict_post_hook(lambda m, keys: keys.missing_keys.append("fc.scale"))
        with pytest.raises(ud.errors.StateDictError, match="missing keys: fc.scale"):
            load(model)
        handle.remove()
        assert all((model.state_dict()[key] == value).all() for key, value in before.items()), name
    loaded = ud.load(tmp_path / "old.safetensors")
    assert isinstance(loaded, _NewNames) and (loaded.state_dict()["fc.bias"] == 4).all()


class _NoHead(ud.nn.Module):
    """A model whose ``head`` is set to None (``add_module("head", None)``), as a headless copy of a model."""

    def __init__(self):
        super().__init__()
        self.config, self.fc = {}, ud.nn.Linear(2, 2)
        self.add_module("head", None)


class _TorchNoHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.add_module("head", None)


def test_every_load_takes_the_keys_of_a_child_set_to_none_as_torchs(backend, tmp_path, monkeypatch):
    """A child set to None takes the keys under its name (torch's rule: they are not unexpected) in every load:
    ``load_state_dict`` did, the file loads (``ud.load_weights``, ``ud.load``, ``load_checkpoint``) called them
    unexpected, so the same state loaded or not by its file's format."""
    monkeypatch.setattr("unidl.serialization._registry", {})
    ud.register_model(_NoHead, name="NoHead")
    source = _NoHead()
    source.head = ud.nn.Linear(2, 1)
    ud.save(source, tmp_path / "m.safetensors")
    ud.save_checkpoint(tmp_path / "checkpoints", source)
    oracle = _TorchNoHead().load_state_dict({k: torch.tensor(v) for k, v in source.state_dict().items()})
    assert tuple(oracle) == ([], [])
    loads = {"load_state_dict": lambda m: m.load_state_dict(source.state_dict()),
             "load_weights": lambda m: ud.load_weights(m, tmp_path / "m.safetensors"),
             "not strict": lambda m: ud.load_weights(m, tmp_path / "m.safetensors", strict=False),
             "load_checkpoint": lambda m: ud.load_checkpoint(tmp_path / "checkpoints", m)}
    for name, load in loads.items():
        model = _NoHead()
        keys = load(model)
        if name != "load_checkpoint":
            assert tuple(keys) == ([], []), name
        np.testing.assert_array_equal(ud.to_numpy(model.fc.weight), ud.to_numpy(source.fc.weight), err_msg=name)
    monkeypatch.setattr("unidl.serialization._registry", {})
    ud.register_model(_NoHead, name="NoHead")
    assert ud.load(tmp_path / "m.safetensors").head is None


class _ParentReading(ud.nn.Module):
    """A module whose ``set_extra_state`` reads its child's weight."""

    def __init__(self):
        super().__init__()
        self.config, self.child = {}, ud.nn.Linear(2, 1)

    def get_extra_state(self):
        return np.array([1])

    def set_extra_state(self, state):
        self.seen = np.array(ud.to_numpy(self.child.weight))


class _TorchParentReading(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.child = torch.nn.Linear(2, 1)

    def get_extra_state(self):
        return np.array([1])

    def set_extra_state(self, state):
        self.seen = self.child.weight.detach().numpy().copy()


def test_modules_load_one_after_another_as_torchs_so_a_parents_extra_state_sees_its_childs_weight_before(
        backend, tmp_path):
    """torch loads module by module (a module's own variables and extra state, then its children's): a parent's
    ``set_extra_state`` that reads a child's weight sees the weight before the load. unidl wrote every variable
    before the first ``set_extra_state``, from memory and from files."""
    source = _ParentReading()
    ud.save(source, tmp_path / "m.safetensors")
    ud.save_checkpoint(tmp_path / "checkpoints", source)
    loads = {"load_state_dict": lambda m: m.load_state_dict(source.state_dict()),
             "load_weights": lambda m: ud.load_weights(m, tmp_path / "m.safetensors"),
             "load_checkpoint": lambda m: ud.load_checkpoint(tmp_path / "checkpoints", m)}
    for name, load in loads.items():
        model, oracle = _ParentReading(), _TorchParentReading()
        oracle.load_state_dict({k: v if k == "_extra_state" else torch.tensor(v)
                                for k, v in model.state_dict().items()})
        before = np.array(ud.to_numpy(model.child.weight))
        oracle.load_state_dict({k: v if k == "_extra_state" else torch.tensor(v)
                                for k, v in source.state_dict().items()})
        load(model)
        np.testing.assert_array_equal(model.seen, oracle.seen, err_msg=name)
        np.testing.assert_array_equal(model.seen, before, err_msg=name)


class _TensorState(ud.nn.Module):
    """Extra state kept as a tensor of the model's framework (of ``dtype``), refusing negative steps."""

    def __init__(self, dtype):
        super().__init__()
        self.fc = ud.nn.Linear(2, 2)
        self.steps = ud.tensor(np.array([5, 0.375, 2.5])[: 2 if dtype == "bool" else 3], dtype)

    def get_extra_state(self):
        return {"steps": self.steps}

    def set_extra_state(self, state):
        if np.asarray(ud.to_numpy(state["steps"])).min() < 0:
            raise ValueError("negative steps")
        self.steps = state["steps"]


def test_a_refused_load_puts_a_tensor_extra_state_back_as_the_tensor_it_was(backend):
    """A module (``a``) takes its new extra state, a later one (``b``) refuses its own: the rollback gives ``a``
    back its tensor of the same framework, dtype, values and bits, for every dtype (an int32 counter: torch,
    TensorFlow and Keras could remake only float32 and float64 tensors, so the rollback stopped with a note and
    ``a`` kept the refused load's state)."""
    for dtype in ("int32", "int64", "bool", "float16"):
        model = ud.nn.Sequential(collections.OrderedDict(a=_TensorState(dtype), b=_TensorState(dtype)))
        kept = np.array(ud.to_numpy(model.a.steps))
        state = model.state_dict()
        state["a._extra_state"] = {"steps": np.array([9])}
        state["b._extra_state"] = {"steps": np.array([-1])}
        with pytest.raises(ValueError, match="negative steps") as refused:
            model.load_state_dict(state)
        assert not getattr(refused.value, "__notes__", None), dtype
        assert type(model.a.steps) is type(model.b.steps) and ud.to_numpy(model.a.steps).dtype == kept.dtype, dtype
        np.testing.assert_array_equal(ud.to_numpy(model.a.steps).view(np.uint8), kept.view(np.uint8), err_msg=dtype)
