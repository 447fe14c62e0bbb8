"""Checkpoints under faults: damaged files fall back or fail cleanly, and a failed load changes nothing."""

import json
import os
import re
import warnings

import numpy as np
import pytest

import unidl as ud
from unidl import random as unidl_random
from unidl.errors import CheckpointStateError, CorruptFileError, StateDictError, UnidlError
from unidl.io.safetensors import SafetensorsFile, load_file, save_file


def _setup(seed):
    ud.manual_seed(seed)
    model = ud.models.TwoLayerNet(3, 4, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = np.arange(30, dtype=np.float32).reshape(10, 3) / 30
    y = np.arange(20, dtype=np.float32).reshape(10, 2) / 20
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4, shuffle=True, seed=7)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    for xb, yb in loader:
        step(xb, yb)
    return model, optimizer, loader


def _schedule_and_callbacks(model, optimizer, epochs, best):
    """A StepLR stepped ``epochs`` times and an EarlyStopping whose best ``loss`` is ``best`` (epoch 0), with
    best weights kept: the scheduler and callback state a checkpoint carries."""
    scheduler = ud.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(epochs):
        scheduler.step()
    stopping = ud.callbacks.EarlyStopping(monitor="loss", patience=3, restore_best_weights=True)
    stopping.load_state_dict({"best": best, "best_epoch": 0, "wait": epochs, "stopped_epoch": None})
    stopping.load_state_weights({key: value + best for key, value in model.state_dict().items()})
    return scheduler, [stopping]


def _snapshot(model, optimizer, loader, scheduler=None, callbacks=()):
    """Everything a load may change, as plain data."""
    state = optimizer.state_dict()
    return {"model": model.state_dict(), "slots": state["slots"], "step": state["step"], "lr": state["lr"],
            "rng": unidl_random.get_rng_state(), "loader": loader.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "callbacks": [callback.state_dict() for callback in callbacks],
            "callback_weights": [callback.state_weights() for callback in callbacks]}


def _assert_same(a, b):
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key], b["model"][key])
    for slots_a, slots_b in zip(a["slots"], b["slots"]):
        for name in slots_a:
            np.testing.assert_array_equal(slots_a[name], slots_b[name])
    assert (a["step"], a["lr"], a["rng"], a["loader"]) == (b["step"], b["lr"], b["rng"], b["loader"])
    assert (a["scheduler"], a["callbacks"]) == (b["scheduler"], b["callbacks"])
    for weights_a, weights_b in zip(a["callback_weights"], b["callback_weights"], strict=True):
        assert weights_a.keys() == weights_b.keys()
        for key in weights_a:
            np.testing.assert_array_equal(weights_a[key], weights_b[key])


def _rewrite_metadata(path, change):
    """Rewrite the checkpoint at ``path`` with ``change(metadata)`` applied: an intact file (valid checksums)
    whose content does not fit."""
    tensors, file_metadata = load_file(path)
    metadata = json.loads(file_metadata["unidl"])
    change(metadata)
    save_file(tensors, path, {"unidl": json.dumps(metadata)})


def _rename_loader_key(metadata):
    metadata["loader"]["positon"] = metadata["loader"].pop("position")


BAD_STATES = {
    "renamed loader key": (_rename_loader_key, "positon"),
    "string loader seed": (lambda m: m["loader"].update(seed="7"), "seed"),
    "huge loader seed": (lambda m: m["loader"].update(seed=2**70), "seed"),
    "bool loader seed": (lambda m: m["loader"].update(seed=True), "seed True"),
    "no seed for a shuffled loader": (lambda m: m["loader"].update(seed=None), "shuffled loader needs one"),
    # an unshuffled loader's checkpoint (its seed None) given to a shuffled loader: told of shuffle, as
    # DataLoader.load_state_dict tells it, not of the seed
    "unshuffled loader's state": (lambda m: m["loader"].update(shuffle=False, seed=None),
                                  "has shuffle=False but this loader has shuffle=True"),
    "other loader batch size": (lambda m: m["loader"].update(batch_size=5), "batch_size"),
    "short RNG state": (lambda m: m["rng"]["bit_generator"].pop("state"), "bit_generator"),
    "RNG seed too large": (lambda m: m["rng"].update(seed=2**64), "seed"),
    "bad optimizer step": (lambda m: m["optimizer"].update(step=-1), "step"),
    "other optimizer class": (lambda m: m["optimizer"].update({"class": "Adam"}), "Adam"),
    # checked after the RNG, loader and optimizer states, each of which would load if nothing checked these
    "negative scheduler epoch": (lambda m: m["scheduler"]["state"].update(last_epoch=-1), "last_epoch"),
    "other scheduler class": (lambda m: m["scheduler"].update({"class": "ExponentialLR"}), "ExponentialLR"),
    "string callback wait": (lambda m: m["callbacks"]["EarlyStopping#0"].update(wait="2"), "EarlyStopping.*wait"),
    "callback key missing": (lambda m: m["callbacks"]["EarlyStopping#0"].pop("best"), "EarlyStopping.*keys"),
}


def test_state_that_does_not_fit_changes_nothing(tmp_path, backend):
    model, optimizer, loader = _setup(0)
    scheduler, callbacks = _schedule_and_callbacks(model, optimizer, epochs=2, best=0.5)
    source = ud.save_checkpoint(tmp_path / "source", model, optimizer, loader=loader, epoch=1, step=3,
                                scheduler=scheduler, callbacks=callbacks)
    model, optimizer, loader = _setup(1)
    scheduler, callbacks = _schedule_and_callbacks(model, optimizer, epochs=1, best=0.9)
    unidl_random.generator().standard_normal(3)
    before = _snapshot(model, optimizer, loader, scheduler, callbacks)
    for name, (change, message) in BAD_STATES.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(open(source, "rb").read())
        _rewrite_metadata(path, change)
        with pytest.raises(StateDictError, match=message):
            ud.load_checkpoint(path, model, optimizer, loader, scheduler=scheduler, callbacks=callbacks)
        _assert_same(_snapshot(model, optimizer, loader, scheduler, callbacks), before)
    # the intact file loads all of it: each state above differed from the source's
    ud.load_checkpoint(source, model, optimizer, loader, scheduler=scheduler, callbacks=callbacks)
    assert scheduler.state_dict()["last_epoch"] == 2 and callbacks[0].state_dict()["best"] == 0.5


def test_fit_resume_from_a_loader_seed_that_does_not_fit_changes_nothing(tmp_path, backend):
    """``fit(resume_from=...)`` restores through ``load_checkpoint``'s checks (``BAD_STATES``): a seed of None for
    a shuffled loader is refused before the model, optimizer and RNG change (they were restored, then the loader
    refused).
    (The loader's own position is fit's to set when a run starts, before it resumes.)"""
    model, optimizer, loader = _setup(0)
    path = ud.save_checkpoint(tmp_path, model, optimizer, loader=loader, epoch=1, step=3)
    _rewrite_metadata(path, lambda metadata: metadata["loader"].update(seed=None))
    model, optimizer, loader = _setup(1)
    before = {**_snapshot(model, optimizer, loader), "loader": None}
    with pytest.raises(StateDictError, match="data-loader state seed"):
        ud.fit(model, loader, loss="mse", optimizer=optimizer, epochs=3, resume_from=path, verbose=0)
    _assert_same({**_snapshot(model, optimizer, loader), "loader": None}, before)


def test_a_tensor_of_the_wrong_dtype_changes_nothing(tmp_path, backend):
    """Floats for an integer variable (a normalization's count) are refused, nothing changed; integers for a float
    variable load, cast, as ``load_state_dict`` loads them (torch's rule, the same from every format)."""
    model, optimizer, loader = _setup(0)
    path = ud.save_checkpoint(tmp_path, model, optimizer, loader=loader)
    tensors, file_metadata = load_file(path)
    tensors["model/linear2.bias"] = np.arange(2, dtype=np.int32)
    save_file(tensors, path, file_metadata)
    target = _setup(1)
    ud.load_checkpoint(path, *target[:2], target[2])
    assert np.array_equal(ud.to_numpy(target[0].linear2.bias), [0.0, 1.0])

    norm = ud.nn.BatchNorm1d(2)
    path = ud.save_checkpoint(tmp_path / "norm", norm)
    tensors, file_metadata = load_file(path)
    tensors["model/num_batches_tracked"] = np.float32(3.5)
    save_file(tensors, path, file_metadata)
    target = ud.nn.BatchNorm1d(2)
    before = {key: ud.to_numpy(value).copy() for key, value in target.state_dict().items()}
    with pytest.raises(StateDictError, match="num_batches_tracked: expected an integer tensor, found dtype F32"):
        ud.load_checkpoint(path, target)
    assert all(np.array_equal(ud.to_numpy(value), before[key]) for key, value in target.state_dict().items())


def _slots_mismatch(state):
    state["slots"][-1]["momentum_buffer"] = np.zeros(5, np.float32)


def _slots_of_text(state):
    state["slots"][-1]["momentum_buffer"] = np.full(state["slots"][-1]["momentum_buffer"].shape, "x")


BAD_OPTIMIZER_STATES = {  # each applied to a state whose step, lr and other slots differ from the optimizer's
    "last slot of another shape": (_slots_mismatch, r"slot 'momentum_buffer' of parameter 3: expected shape \(2,\)"),
    "last slot of text": (_slots_of_text, "expected numbers, found dtype <U1"),
    "missing slot": (lambda state: state["slots"][-1].clear(), r"entry 3 has slots \[\], expected \['momentum_buffer"),
    "one entry short": (lambda state: state["slots"].pop(), "has 3 parameter entries, expected 4"),
    "negative lr": (lambda state: state.update(lr=-0.1), "lr"),
    "negative step": (lambda state: state.update(step=-2), r"step must be an integer in 0..2\*\*63 - 1, got -2"),
    # (past int64: TensorFlow and JAX failed as they wrote it, after a checkpoint's other state was restored)
    "step past int64": (lambda state: state.update(step=2 ** 70), r"step must be an integer in 0..2\*\*63 - 1"),
    "other class": (lambda state: state.update({"class": "Adam"}), "cannot load Adam state into SGD"),
}


def test_optimizer_state_that_does_not_fit_changes_nothing(backend):
    """``Optimizer.load_state_dict`` checks the whole state before it writes any slot, the step or the lr."""
    model, optimizer, loader = _setup(0)
    source = optimizer.state_dict()
    source.update(lr=0.2, step=source["step"] + 4,
                  slots=[{name: value + 1 for name, value in entry.items()} for entry in source["slots"]])
    before = _snapshot(model, optimizer, loader)
    for name, (change, message) in BAD_OPTIMIZER_STATES.items():
        state = {**source, "slots": [dict(entry) for entry in source["slots"]]}
        change(state)
        with pytest.raises(CheckpointStateError, match=message):
            optimizer.load_state_dict(state)
        _assert_same(_snapshot(model, optimizer, loader), before)
    optimizer.load_state_dict(source)  # the intact state loads: each one above differed from the optimizer's
    loaded = optimizer.state_dict()
    assert (loaded["step"], loaded["lr"]) == (source["step"], 0.2)
    np.testing.assert_array_equal(loaded["slots"][0]["momentum_buffer"], source["slots"][0]["momentum_buffer"])


def _flip(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x5A
    open(path, "wb").write(bytes(data))


def _header_size(path):
    return int.from_bytes(open(path, "rb").read(8), "little")


DAMAGES = {
    "truncated": lambda path: open(path, "r+b").truncate(os.path.getsize(path) - 7),
    "header byte flipped": lambda path: _flip(path, open(path, "rb").read().index(b"epoch")),
    "data byte flipped": lambda path: _flip(path, os.path.getsize(path) - 3),
    "header length flipped": lambda path: _flip(path, 1),
}


def test_corrupt_newest_falls_back_to_the_previous_and_an_explicit_file_changes_nothing(tmp_path, backend):
    model, optimizer, loader = _setup(0)
    newer = _setup(5)
    target = _setup(9)
    for damage in DAMAGES:
        directory = tmp_path / damage
        ud.save_checkpoint(directory, model, optimizer, loader=loader, epoch=1, step=3)
        expected = _snapshot(model, optimizer, loader)
        newest = ud.save_checkpoint(directory, *newer[:2], loader=loader, epoch=2, step=6)
        DAMAGES[damage](newest)

        before = _snapshot(*target)
        with pytest.raises(CorruptFileError, match="checkpoint-0002-0000006") as error:
            ud.load_checkpoint(newest, *target[:2], target[2])
        if damage == "data byte flipped":
            assert "tensor 'optimizer/3/momentum_buffer'" in str(error.value)
        _assert_same(_snapshot(*target), before)

        with pytest.warns(RuntimeWarning, match="checkpoint-0002-0000006"):
            assert ud.latest_checkpoint(directory) == str(directory / "checkpoint-0001-0000003.safetensors")
        with pytest.warns(RuntimeWarning, match="skipping corrupt checkpoint .*checkpoint-0002-0000006"):
            info = ud.load_checkpoint(directory, *target[:2], target[2])
        assert (info["epoch"], info["step"]) == (1, 3), damage
        _assert_same(_snapshot(*target), expected)
        target = _setup(9)


def test_files_of_other_tools_and_of_older_unidl_load_without_checksums(tmp_path):
    from safetensors.numpy import save_file as reference_save_file

    model = ud.models.TwoLayerNet(3, 4, 2)
    reference_save_file(dict(model.state_dict()), str(tmp_path / "theirs.safetensors"))
    assert SafetensorsFile(tmp_path / "theirs.safetensors").checksums is None
    target = ud.models.TwoLayerNet(3, 4, 2)
    ud.load_weights(target, tmp_path / "theirs.safetensors")
    np.testing.assert_array_equal(target.state_dict()["linear1.weight"], model.state_dict()["linear1.weight"])
    # unidl's own pretrained weights predate checksums (format version 1)
    shipped = os.path.join(os.path.dirname(ud.models.__file__), "weights", "cnn_digits.safetensors")
    if os.path.exists(shipped):
        assert SafetensorsFile(shipped).checksums is None
        ud.load(shipped)


def test_a_version_2_file_stripped_of_its_checksums_is_refused(tmp_path):
    from safetensors.numpy import save_file as reference_save_file

    path = tmp_path / "net.safetensors"
    ud.save(ud.models.TwoLayerNet(3, 4, 2), path)
    tensors, metadata = load_file(path)  # metadata without the checksum keys
    reference_save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CorruptFileError, match="carry checksums, but it has none"):
        ud.load(path)


def test_header_flips_are_detected_or_harmless(tmp_path, backend):
    """A few hundred single-byte flips of a checkpoint's header: each one raises one of unidl's errors with
    nothing changed, or loads exactly the values that were saved, never a raw KeyError or RuntimeError."""
    model, optimizer, loader = _setup(0)
    path = ud.save_checkpoint(tmp_path / "source", model, optimizer, loader=loader, epoch=1, step=3)
    saved = _snapshot(model, optimizer, loader)
    original = open(path, "rb").read()
    header_end = 8 + _header_size(path)
    rng = np.random.default_rng(0)
    offsets = sorted(set(range(8)) | set(rng.integers(8, header_end, 300).tolist()))
    target = _setup(3)
    damaged = str(tmp_path / "damaged.safetensors")
    outcomes = {"detected": 0, "harmless": 0}
    # the target's state before each load: the one taken after the previous load (nothing touches the target between
    # the two; a snapshot costs as much as a load)
    before = _snapshot(*target)
    for offset in offsets:
        data = bytearray(original)
        data[offset] ^= int(rng.integers(1, 256))
        with open(damaged, "wb") as handle:
            handle.write(bytes(data))
        try:
            info = ud.load_checkpoint(damaged, *target[:2], target[2])
        except UnidlError:
            outcomes["detected"] += 1
            after = _snapshot(*target)
            _assert_same(after, before)
        else:
            outcomes["harmless"] += 1
            assert (info["epoch"], info["step"]) == (1, 3), offset
            after = _snapshot(*target)
            _assert_same(after, saved)
        before = after
    assert outcomes["detected"] > 0.9 * len(offsets), outcomes

    # crc32 detects every single-byte change of a tensor's bytes
    for offset in rng.integers(header_end, len(original), 100).tolist():
        data = bytearray(original)
        data[offset] ^= int(rng.integers(1, 256))
        with open(damaged, "wb") as handle:
            handle.write(bytes(data))
        with pytest.raises(CorruptFileError, match="do not match their checksum"):
            ud.load_checkpoint(damaged, *target[:2], target[2])
        after = _snapshot(*target)
        _assert_same(after, before)
        before = after


def test_weights_file_flips_are_detected_or_harmless(tmp_path, backend):
    path = tmp_path / "net.safetensors"
    source = ud.models.TwoLayerNet(3, 4, 2)
    ud.save(source, path)
    original = path.read_bytes()
    rng = np.random.default_rng(1)
    damaged = tmp_path / "damaged.safetensors"
    for offset in rng.integers(0, len(original), 200).tolist():
        data = bytearray(original)
        data[offset] ^= int(rng.integers(1, 256))
        damaged.write_bytes(bytes(data))
        try:
            loaded = ud.load(damaged)
        except UnidlError:
            continue
        for key, value in source.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("damage", ["not JSON", "truncated", "data byte flipped", "empty"])
def test_malformed_weights_file_names_the_file(tmp_path, backend, damage):
    path = tmp_path / "net.safetensors"
    ud.save(ud.models.TwoLayerNet(3, 4, 2), path)
    data = path.read_bytes()
    path.write_bytes({"not JSON": data[:8] + b"x" + data[9:], "truncated": data[:-9],
                      "data byte flipped": data[:-1] + bytes([data[-1] ^ 1]), "empty": b""}[damage])
    model = ud.models.TwoLayerNet(3, 4, 2)
    before = model.state_dict()
    for load in (lambda: ud.load(path), lambda: ud.load_weights(model, path)):
        with pytest.raises(CorruptFileError, match="net.safetensors"):
            load()
    for key, value in before.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_explicit_checkpoint_with_mismatched_model_raises_state_dict_error_before_any_change(tmp_path):
    model, optimizer, loader = _setup(0)
    path = ud.save_checkpoint(tmp_path, model, optimizer, loader=loader)
    other = ud.models.TwoLayerNet(3, 5, 2)
    before = other.state_dict()
    rng_before = unidl_random.get_rng_state()
    with pytest.raises(StateDictError, match=r"linear1.weight: expected shape \(5, 3\), found \(4, 3\)"):
        ud.load_checkpoint(path, other)
    assert unidl_random.get_rng_state() == rng_before
    for key, value in before.items():
        np.testing.assert_array_equal(other.state_dict()[key], value)
    with pytest.raises(CheckpointStateError):
        ud.load_checkpoint(path, ud.models.TwoLayerNet(3, 4, 2), ud.optim.Adam(model.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ud.load_checkpoint(path, ud.models.TwoLayerNet(3, 4, 2))


@pytest.mark.parametrize("slot, message", [
    (np.ones((2,), np.bool_), "slot 'momentum_buffer' of parameter 3: expected numbers, found dtype bool"),
    (np.ones((3,), np.float32), r"slot 'momentum_buffer' of parameter 3: expected shape \(2,\), found \(3,\)")])
def test_an_optimizer_slot_of_another_dtype_or_shape_in_a_checkpoint_changes_nothing(tmp_path, slot, message):
    """The slots are read only as the load writes them: their dtypes and shapes are checked from the header first,
    and a checkpoint whose last slot does not fit is refused with the model, optimizer and loader untouched."""
    model, optimizer, loader = _setup(0)
    path = ud.save_checkpoint(tmp_path, model, optimizer, loader=loader)
    tensors, metadata = load_file(path)
    tensors["optimizer/3/momentum_buffer"] = slot
    save_file(tensors, path, {k: v for k, v in metadata.items() if "crc32" not in k})  # (checksums made anew)
    target = _setup(9)
    before = _snapshot(*target)
    with pytest.raises(CheckpointStateError, match=message):
        ud.load_checkpoint(path, *target)
    _assert_same(_snapshot(*target), before)


def test_a_file_changed_while_it_is_read_after_the_checks_is_corrupt_naming_the_tensor(tmp_path):
    """Every tensor's bytes are checked before anything changes and again as each is read, all before the first
    object changes, so a file changed in place after the checks (here by ``check``, the last of them) is a
    ``CorruptFileError`` naming the tensor, never silently other values, and the model, the optimizer, the loader and
    the generators are as they were (they took part of the file when the tensors were read as each was written)."""
    model, optimizer, loader = _setup(0)
    path = ud.save_checkpoint(tmp_path, model, optimizer, loader=loader)
    reader = SafetensorsFile(path)
    begin = reader._start + reader._offsets["optimizer/3/momentum_buffer"][0]
    reader.close()

    def change_the_file(metadata, checked_path):
        with open(checked_path, "r+b") as file:
            file.seek(begin)
            file.write(b"\x7f\x7f\x7f\x7f")

    target = _setup(9)
    before = _snapshot(*target)
    with pytest.raises(CorruptFileError, match="the bytes of tensor 'optimizer/3/momentum_buffer'"):
        ud.load_checkpoint(path, *target, check=change_the_file)
    _assert_same(_snapshot(*target), before)


@pytest.mark.parametrize("alias", ["03", "\u0663", "+3"])
def test_an_optimizer_slot_named_twice_is_corrupt_not_a_silent_choice(tmp_path, alias):
    """An optimizer tensor whose parameter index is not written as ``save_checkpoint`` writes it ('03', Arabic-Indic
    digits) named slot 3 a second time, the later tensor winning silently: a ``CorruptFileError`` naming it, and
    nothing restored."""
    model = ud.nn.Sequential(ud.nn.Linear(3, 3), ud.nn.Linear(3, 1))
    optimizer = ud.optim.Adam(model.parameters(), lr=0.1)
    ud.train_step(model, ud.nn.MSELoss(), optimizer)(np.ones((2, 3), np.float32), np.ones((2, 1), np.float32))
    path = ud.save_checkpoint(tmp_path, model, optimizer, epoch=0, step=1)
    tensors, metadata = load_file(path)
    tensors[f"optimizer/{alias}/exp_avg"] = np.full_like(tensors["optimizer/3/exp_avg"], 1e6)
    save_file(tensors, path, {k: v for k, v in metadata.items() if "crc32" not in k})  # (checksums made anew)
    before = optimizer.state_dict()
    with pytest.raises(CorruptFileError, match=re.escape(f"malformed optimizer tensor name 'optimizer/{alias}/")):
        ud.load_checkpoint(path, model, optimizer)
    assert str(optimizer.state_dict()) == str(before)


@pytest.mark.parametrize("where, error, message", [
    ("epoch", CorruptFileError, r"checkpoint epoch must be an integer in 0..2\*\*63 - 1, got 1180591620717411303424"),
    ("step", CorruptFileError, r"checkpoint step must be an integer in 0..2\*\*63 - 1"),
    ("loader", CheckpointStateError, r"data-loader state epoch must be an integer in 0..2\*\*63 - 1")])
def test_counters_past_int64_are_refused_before_anything_is_restored(tmp_path, where, error, message):
    """A checkpoint's epoch or step, or its loader's epoch, of 2 ** 70 (an int64 counter on every backend; the
    loader's failed in NumPy after the rest was restored) is refused, the loader and generator untouched."""
    model = ud.nn.Linear(2, 1)
    loader = ud.data.DataLoader(ud.data.TensorDataset(np.ones((4, 2), np.float32)), batch_size=2)
    path = ud.save_checkpoint(tmp_path, model, loader=loader, epoch=1, step=2)
    tensors, metadata = load_file(path)
    saved = json.loads(metadata["unidl"])
    if where == "loader":
        saved["loader"]["epoch"] = 2 ** 70
    else:
        saved[where] = 2 ** 70
    save_file(tensors, path, {"unidl": json.dumps(saved)})
    generator = unidl_random.get_rng_state()
    with pytest.raises(error, match=message):
        ud.load_checkpoint(path, model, loader=loader)
    assert loader.state_dict()["epoch"] == 0 and unidl_random.get_rng_state() == generator


def _fail_reading(monkeypatch, tensor: str, error: BaseException) -> None:
    """Make every read of the bytes of ``tensor`` (``SafetensorsFile._read_bytes``, under each tensor a load reads
    after its checks; ``verify`` streams through ``_read_at`` instead) raise ``error``."""
    original = SafetensorsFile._read_bytes

    def failing(self, name):
        if name == tensor:
            raise error
        return original(self, name)

    monkeypatch.setattr(SafetensorsFile, "_read_bytes", failing)


_SAVED_CHECKPOINTS = {}  # backend -> what _saved_checkpoint returns


def _saved_checkpoint(tmp_path_factory, backend):
    """The checkpoint of ``_setup(0)``'s objects with a scheduler and callbacks, once per backend: ``(its file's
    name, its bytes, their snapshot at the save)``. The nine fault cases of a backend each load the same file; each
    built and trained the same objects again (a traced step each) only to save them."""
    if backend not in _SAVED_CHECKPOINTS:
        model, optimizer, loader = _setup(0)
        scheduler, callbacks = _schedule_and_callbacks(model, optimizer, 2, 0.5)
        path = ud.save_checkpoint(tmp_path_factory.mktemp("saved"), model, optimizer, loader=loader,
                                  scheduler=scheduler, callbacks=callbacks)
        saved = _snapshot(model, optimizer, loader, scheduler, callbacks)
        _SAVED_CHECKPOINTS[backend] = os.path.basename(path), open(path, "rb").read(), saved
    return _SAVED_CHECKPOINTS[backend]


@pytest.mark.parametrize("fault", ["OSError", "MemoryError", "changed"])
@pytest.mark.parametrize("tensor", ["model/linear2.weight", "optimizer/2/momentum_buffer",
                                    "callbacks/EarlyStopping#0/linear2.bias"])
def test_a_read_that_fails_after_the_checks_leaves_every_object_as_it_was(tmp_path, tmp_path_factory, backend,
                                                                          monkeypatch, fault, tensor):
    """Once every check passed (``check``, the last of them, arms the fault), an ``OSError`` or a ``MemoryError``
    while a tensor is read, or the file changed in place (a ``CorruptFileError`` naming the tensor), leaves the
    model's weights, the optimizer's slots, step and lr, the generators, the loader, the scheduler and the callbacks
    (their best weights too) bit for bit as they were: every tensor is read into fresh memory, its checksum verified,
    before the first object changes. Then a load of the same checkpoint restores it all."""
    name, original, saved = _saved_checkpoint(tmp_path_factory, backend)
    path = tmp_path / name
    path.write_bytes(original)
    with SafetensorsFile(path) as reader:
        begin = reader._start + reader._offsets[tensor][0]

    target_model, target_optimizer, target_loader = _setup(9)
    next(iter(target_loader))  # (a loader position other than the checkpoint's)
    target = (target_model, target_optimizer, target_loader,
              *_schedule_and_callbacks(target_model, target_optimizer, 1, 2.0))
    before = _snapshot(*target)
    for key in ("model", "rng", "loader", "lr", "scheduler", "callbacks"):  # (what the load would change)
        assert str(before[key]) != str(saved[key]), key

    def arm(metadata, checked_path):
        if fault == "changed":
            with open(checked_path, "r+b") as file:
                file.seek(begin)
                file.write(b"\x7f\x7f\x7f\x7f")
        else:
            _fail_reading(monkeypatch, tensor, OSError(5, "Input/output error") if fault == "OSError"
                          else MemoryError())

    raised = {"OSError": OSError, "MemoryError": MemoryError, "changed": CorruptFileError}[fault]
    with pytest.raises(raised, match=f"the bytes of tensor '{re.escape(tensor)}'" if fault == "changed" else None):
        ud.load_checkpoint(path, target[0], target[1], target[2], scheduler=target[3], callbacks=target[4],
                           check=arm)
    _assert_same(_snapshot(*target), before)

    monkeypatch.undo()
    with open(path, "wb") as file:
        file.write(original)
    ud.load_checkpoint(path, target[0], target[1], target[2], scheduler=target[3], callbacks=target[4])
    _assert_same(_snapshot(*target), saved)


class _Renaming(ud.models.TwoLayerNet):
    """A ``TwoLayerNet`` with a load pre-hook: its loads take ``load_state_dict``'s path (the file read whole)."""

    def __init__(self, D_in, H, D_out):
        super().__init__(D_in, H, D_out)
        self.register_load_state_dict_pre_hook(lambda *arguments: None)


@pytest.mark.parametrize("fault", [OSError(5, "Input/output error"), MemoryError()], ids=["OSError", "MemoryError"])
def test_load_and_load_weights_with_load_hooks_that_fail_reading_change_nothing(tmp_path, backend, monkeypatch,
                                                                                fault):
    """``ud.load`` whose read of a tensor fails raises the error with the generators unmoved (its new model is
    dropped); ``ud.load_weights`` into a model with load hooks (the file read whole, then ``load_state_dict``) leaves
    every weight as it was; both then load the file. (``ud.load_weights`` of a model without load hooks reads one
    tensor at a time: its limit in docs/guarantees.md.)"""
    ud.manual_seed(0)
    path = tmp_path / "model.safetensors"
    ud.save(ud.models.TwoLayerNet(3, 4, 2), path)
    saved = load_file(path)[0]
    model = _Renaming(3, 4, 2)
    before = model.state_dict()
    generator = unidl_random.get_rng_state()
    _fail_reading(monkeypatch, "linear2.weight", fault)
    with pytest.raises(type(fault)):
        ud.load(path)
    assert unidl_random.get_rng_state() == generator
    with pytest.raises(type(fault)):
        ud.load_weights(model, path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
        assert not np.array_equal(value, saved[key]), key  # (the load would change it)
    monkeypatch.undo()
    ud.load_weights(model, path)
    for loaded in (model, ud.load(path)):
        for key, value in loaded.state_dict().items():
            np.testing.assert_array_equal(value, saved[key])


class _RefusingLinear(ud.nn.Linear):
    """A layer whose ``set_extra_state`` refuses a version other than 0: a model that refuses a load after its
    checks (and takes its own state back)."""

    version = 0

    def get_extra_state(self):
        return np.array([self.version])

    def set_extra_state(self, state):
        if int(np.asarray(state)[0]) != 0:
            raise ValueError("refused by set_extra_state")


def _stateful_model(seed, first=None):
    """A Linear (or ``first``), a BatchNorm1d and a Linear whose every parameter and buffer holds values drawn from
    ``seed`` (the BatchNorm's count ``seed + 3``; extra state as it is): two seeds differ in every tensor, so a load
    that wrote any would show it."""
    ud.manual_seed(seed)
    model = ud.nn.Sequential(first or ud.nn.Linear(4, 6), ud.nn.BatchNorm1d(6), ud.nn.Linear(6, 3))
    rng = np.random.default_rng(seed)
    model.load_state_dict({key: value if key.endswith("_extra_state")
                           else np.array(seed + 3, np.int64) if np.asarray(value).dtype.kind in "iu"
                           else rng.uniform(0.5, 2.0, np.shape(value)).astype(np.float32)
                           for key, value in model.state_dict().items()})
    return model


def _bits(state) -> dict:
    """``{key: (dtype, bytes)}`` of a model's state dict or of a file's tensors: equal only bit for bit."""
    return {key: (np.asarray(value).dtype.str, np.asarray(value).tobytes()) for key, value in state.items()}


@pytest.mark.parametrize("damage", ["last tensor's data byte flipped", "truncated"])
def test_load_weights_of_a_corrupt_file_leaves_every_parameter_and_buffer_as_it_was(tmp_path, backend, damage):
    """``ud.load_weights`` and ``Module.load_weights`` of a file whose tensor written last (the second Linear's bias)
    has a flipped data byte, or that is cut short: a ``CorruptFileError`` naming the tensor (the file), and every
    parameter and buffer (the BatchNorm's statistics and count too) bit for bit as before, though each of them would
    change: every checksum is verified before the first write. Then the intact file loads."""
    path, damaged = tmp_path / "model.safetensors", tmp_path / "damaged.safetensors"
    ud.save(_stateful_model(0), path)
    saved = _bits(load_file(path)[0])
    model = _stateful_model(1)
    before = _bits(model.state_dict())
    last = list(before)[-1]
    assert last == "2.bias" and all(before[key] != saved[key] for key in before)
    with SafetensorsFile(path) as reader:
        end = reader._start + reader._offsets[last][1]
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[-3:]
        match = r"damaged.safetensors' is not a valid safetensors file: tensors need a \d+-byte buffer"
    else:
        data[end - 1] ^= 0x40
        match = r"damaged.safetensors' is corrupt: the bytes of tensor '2.bias' do not match their checksum"
    damaged.write_bytes(bytes(data))
    for load in (lambda: ud.load_weights(model, damaged), lambda: model.load_weights(damaged)):
        with pytest.raises(CorruptFileError, match=match):
            load()
        assert _bits(model.state_dict()) == before
    ud.load_weights(model, path)
    assert _bits(model.state_dict()) == saved


def _fail_after_the_checks(monkeypatch, fault: str, name: str) -> type:
    """Make the read of tensor ``name`` fail once every check has passed: an ``OSError``, a ``MemoryError``, or the
    file changed in place by another program right after ``verify`` (then read as a ``CorruptFileError``). Returns
    the error type the load raises."""
    if fault == "changed":
        verify = SafetensorsFile.verify

        def verify_then_change(self):  # (another program writes into the file once it is checked)
            verify(self)
            with open(self.path, "r+b") as file:
                file.seek(self._start + self._offsets[name][0])
                file.write(b"\x7f\x7f\x7f\x7f")

        monkeypatch.setattr(SafetensorsFile, "verify", verify_then_change)
    else:
        _fail_reading(monkeypatch, name, OSError(5, "Input/output error") if fault == "OSError" else MemoryError())
    return {"OSError": OSError, "MemoryError": MemoryError, "changed": CorruptFileError}[fault]


@pytest.mark.parametrize("fault", ["OSError", "MemoryError", "changed"])
def test_load_weights_whose_read_fails_after_the_checks_changes_nothing(tmp_path, backend, monkeypatch, fault):
    """``ud.load_weights`` (and ``Module.load_weights``) stage by default: every tensor is read, its checksum
    verified, before the first write, so an ``OSError`` or ``MemoryError`` while the tensor written last is read, or
    the file changed in place after the checks, leaves every parameter and buffer bit for bit as it was, with no
    note of a partial load (it wrote the tensors before it: the model was partly loaded). Then the intact file
    loads."""
    path = tmp_path / "model.safetensors"
    ud.save(_stateful_model(0), path)
    original, saved = path.read_bytes(), _bits(load_file(path)[0])
    model = _stateful_model(1)
    before = _bits(model.state_dict())
    raised = _fail_after_the_checks(monkeypatch, fault, list(before)[-1])
    for load in (lambda: ud.load_weights(model, path), lambda: model.load_weights(path)):
        with pytest.raises(raised) as failed:
            load()
        assert not getattr(failed.value, "__notes__", None)
        assert _bits(model.state_dict()) == before
        path.write_bytes(original)
    monkeypatch.undo()
    model.load_weights(path)
    assert _bits(model.state_dict()) == saved
    with pytest.raises(TypeError, match="staged must be True or False, got 'False'"):
        ud.load_weights(model, path, staged="False")
    ud.load_weights(_stateful_model(1), path, staged=np.False_)  # (a NumPy bool, as torch's flags take it)


def test_load_weights_whose_write_fails_says_which_tensors_it_wrote(tmp_path, backend, monkeypatch):
    """Staged, every read passes before the first write; a write that fails then (a device's allocation, Ctrl-C
    between two tensors) leaves the tensors before it loaded, and the error's note says which, and that the reads had
    passed (it said nothing: the model was silently partly loaded)."""
    path = tmp_path / "model.safetensors"
    ud.save(_stateful_model(0), path)
    saved = _bits(load_file(path)[0])
    model = _stateful_model(1)
    before = _bits(model.state_dict())
    keys = list(before)
    backend_class, writes = type(model._backend), []
    assign = backend_class.assign

    def failing(self, variable, value):
        writes.append(variable)
        if len(writes) == len(keys):  # (the last tensor's write)
            raise MemoryError("out of device memory")
        return assign(self, variable, value)

    monkeypatch.setattr(backend_class, "assign", failing)
    with pytest.raises(MemoryError) as failed:
        ud.load_weights(model, path)
    monkeypatch.undo()
    note = "\n".join(getattr(failed.value, "__notes__", []))
    assert (f"Sequential is partly loaded: {len(keys) - 1} of the {len(keys)} tensors loaded from {str(path)!r} "
            f"({', '.join(keys[:4])}, ...) were written before this error, the others keep their earlier values "
            f"(every tensor was read and verified before the first write") in note, note
    after = _bits(model.state_dict())
    assert {key for key in keys if after[key] == saved[key]} == set(keys[:-1])
    assert after[keys[-1]] == before[keys[-1]]


@pytest.mark.parametrize("fault", ["OSError", "MemoryError", "changed"])
def test_load_weights_whose_read_fails_after_the_checks_says_which_tensors_it_wrote(tmp_path, backend, monkeypatch,
                                                                                    fault):
    """``ud.load_weights(staged=False)`` into a model without load hooks or extra state reads each tensor as it
    writes it (one tensor beyond the model), so an ``OSError`` or a ``MemoryError`` while its last tensor is read
    after every check passed, or the file changed in place after the checks (a ``CorruptFileError`` naming the
    tensor), leaves the tensors before it loaded (its limit in docs/guarantees.md). The error says so in a note,
    naming the tensors written, and what it says is what happened: those hold the file's values, the others their
    earlier ones (the error had no note: the model was silently partly loaded). Then the intact file loads."""
    path = tmp_path / "model.safetensors"
    ud.save(_stateful_model(0), path)
    original, saved = path.read_bytes(), _bits(load_file(path)[0])
    model = _stateful_model(1)
    before = _bits(model.state_dict())
    keys = list(before)
    last, written = keys[-1], keys[:-1]
    raised = _fail_after_the_checks(monkeypatch, fault, last)
    with pytest.raises(raised, match="the bytes of tensor '2.bias'" if fault == "changed" else None) as failed:
        ud.load_weights(model, path, staged=False)
    note = "\n".join(getattr(failed.value, "__notes__", []))
    assert (f"Sequential is partly loaded: {len(written)} of the {len(keys)} tensors loaded from {str(path)!r} "
            f"({', '.join(written[:4])}, ...) were written before this error, the others keep their earlier values "
            f"(after its checks, which passed, each tensor is read as it is written") in note, note
    after = _bits(model.state_dict())
    assert {key for key in keys if after[key] == saved[key]} == set(written)
    assert {key for key in keys if after[key] == before[key]} == {last}
    monkeypatch.undo()
    path.write_bytes(original)
    ud.load_weights(model, path)
    assert _bits(model.state_dict()) == saved


def test_load_weights_into_a_model_with_extra_state_whose_read_fails_puts_it_back(tmp_path, backend, monkeypatch):
    """A model with extra state is copied to the host before ``ud.load_weights`` writes anything (its
    ``set_extra_state`` may refuse after the writes), so a read that fails part-way puts every parameter and buffer
    back bit for bit, and the error says nothing of a partial load."""
    path = tmp_path / "model.safetensors"
    ud.save(_stateful_model(0, _RefusingLinear(4, 6)), path)
    model = _stateful_model(1, _RefusingLinear(4, 6))
    before = _bits(model.state_dict())
    _fail_reading(monkeypatch, list(before)[-1], OSError(5, "Input/output error"))
    with pytest.raises(OSError) as failed:
        ud.load_weights(model, path)
    assert not getattr(failed.value, "__notes__", None)
    assert _bits(model.state_dict()) == before


@pytest.mark.parametrize("fault", ["read", "set_extra_state"])
def test_a_loss_state_is_checkpointed_staged_and_put_back_when_the_load_fails(tmp_path, backend, monkeypatch, fault):
    """Checkpoints held no loss state: a loss whose parameters the optimizer trains (``LinearCrossEntropyLoss``'s
    ``linear``) restarted from its initial values at a resume. ``save_checkpoint(loss=)`` writes its parameters and
    buffers (``loss/`` tensors) and ``load_checkpoint(loss=)`` restores them, staged with the model's: a read that
    fails after the checks, or a model whose ``set_extra_state`` refuses after the loss took its state, leaves the
    loss as it was. A checkpoint written without a loss leaves the loss as it is."""
    ud.manual_seed(0)
    model, loss = _RefusingLinear(3, 3) if fault == "set_extra_state" else ud.nn.Linear(3, 3), \
        ud.nn.LinearCrossEntropyLoss(3, 4)
    saved = {key: np.array(value) for key, value in loss.state_dict().items()}
    bare = ud.save_checkpoint(tmp_path / "without", model)
    for load in (lambda: ud.save_checkpoint(tmp_path / "refused", model, loss="cross_entropy"),
                 lambda: ud.load_checkpoint(bare, model, loss=len)):
        with pytest.raises(TypeError, match="loss must be a unidl.nn.Module"):
            load()
    assert not (tmp_path / "refused").exists()
    model.version = 1  # (saved: refused by the load)
    path = ud.save_checkpoint(tmp_path / "with", model, loss=loss)
    model.version = 0
    with SafetensorsFile(path) as reader:
        assert sorted(name for name in reader.entries if name.startswith("loss/")) == ["loss/linear.weight"]

    ud.manual_seed(1)
    target = ud.nn.LinearCrossEntropyLoss(3, 4)
    before = {key: np.array(value) for key, value in target.state_dict().items()}
    assert not np.array_equal(before["linear.weight"], saved["linear.weight"])
    ud.load_checkpoint(bare, model, loss=target)  # (no loss state: the loss as it is)
    assert all(np.array_equal(target.state_dict()[key], value) for key, value in before.items())
    if fault == "read":
        _fail_reading(monkeypatch, "loss/linear.weight", OSError(5, "Input/output error"))
        with pytest.raises(OSError):
            ud.load_checkpoint(path, model, loss=target)
    else:
        with pytest.raises(ValueError, match="refused by set_extra_state") as refused:
            ud.load_checkpoint(path, model, loss=target)
        assert not getattr(refused.value, "__notes__", None)  # (the model and the loss were put back)
    assert all(np.array_equal(target.state_dict()[key], value) for key, value in before.items())
    if fault == "read":
        monkeypatch.undo()
        ud.load_checkpoint(path, model, loss=target)
        assert all(np.array_equal(target.state_dict()[key], value) for key, value in saved.items())
