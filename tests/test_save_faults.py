"""Saves under faults: a writer killed mid-save leaves nothing the next save does not clean up, OS errors
name the file and leave the previous checkpoint intact, a failed rotation only warns; seeds are checked
before any generator changes."""

import errno
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import unidl as ud
from tests.helpers import ROOT
from unidl import random as unidl_random
from unidl.io import atomic
from unidl.io.atomic import atomic_open, atomic_write_bytes, remove_stale_temporaries

KILLED_WRITER = """
import os, signal, sys
from unidl.io.atomic import atomic_open
with atomic_open(sys.argv[1]) as handle:
    handle.write(b"x" * 100_000)
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_writer_killed_mid_save_leaves_the_old_file_and_a_temporary_the_next_save_removes(tmp_path):
    target = tmp_path / "checkpoint-0001-0000001.safetensors"
    target.write_bytes(b"previous")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(leftovers) == 1 and target.read_bytes() == b"previous"  # no truncated final file
    atomic_write_bytes(tmp_path / "other.bin", b"next save")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0001-0000001.safetensors", "other.bin"]


def test_only_abandoned_temporaries_of_unidl_are_removed(tmp_path):
    host = atomic._HOST
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        names = {
            f".a.bin.unidl-{host}-{live.pid}-{'0' * 12}.tmp": True,          # a live writer here: kept
            f".a.bin.unidl-{host}-999999999-{'1' * 12}.tmp": False,          # a dead writer here: removed
            f".a.bin.unidl-{'f' * 8}-123-{'2' * 12}.tmp": True,              # another host, recent: kept
            ".a.bin.0123456789ab.tmp": True,                                 # older naming, recent: kept
            "notes.tmp": True,                                               # not unidl's: kept
        }
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        old = time.time() - atomic.ABANDONED_AFTER_S - 10
        (tmp_path / "stale").mkdir()
        stale = tmp_path / "stale" / ".a.bin.0123456789ab.tmp"
        stale.write_bytes(b"x")
        os.utime(stale, (old, old))
        with atomic_open(tmp_path / "a.bin") as handle:
            in_progress = [n for n in os.listdir(tmp_path) if n.endswith(".tmp") and n not in names]
            assert len(in_progress) == 1
            assert remove_stale_temporaries(tmp_path) == []  # our own in-progress temporary is never touched
            handle.write(b"data")
        kept = {name for name, keep in names.items() if keep}
        assert set(os.listdir(tmp_path)) == kept | {"a.bin", "stale"}
        assert remove_stale_temporaries(tmp_path / "stale") == [str(stale)]
    finally:
        live.kill()
        live.wait()


def test_file_size_limit_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, backend):
    model = ud.models.TwoLayerNet(3, 4, 2)
    previous = ud.save_checkpoint(tmp_path, model, epoch=1)
    previous_bytes = open(previous, "rb").read()
    big = ud.models.TwoLayerNet(300, 400, 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # Python ignores SIGXFSZ: write() fails with EFBIG
    try:
        with pytest.raises(OSError) as error:
            ud.save_checkpoint(tmp_path, big, epoch=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(error.value)
    assert error.value.errno == errno.EFBIG
    assert "checkpoint-0002-0000000.safetensors" in message and f"previous checkpoint {previous!r} is intact" in message
    assert os.listdir(tmp_path) == [os.path.basename(previous)]
    assert open(previous, "rb").read() == previous_bytes


class FullDisk:
    """A file whose disk fills up after ``room`` bytes: the write that crosses it puts what fits and fails with
    ENOSPC, as a write(2) on a full file system does."""

    def __init__(self, handle, room: int):
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data):
        data = memoryview(data).cast("B")
        if self.written + len(data) > self.room:
            self.handle.write(data[:self.room - self.written])
            self.written = self.room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.handle.close()


def test_full_disk_error_names_the_file(tmp_path, monkeypatch, backend):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old")

    def no_space(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(OSError, match=r"weights.safetensors.*No space left on device.*previous content is intact"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["weights.safetensors"]

    # a checkpoint whose disk fills up part-way through its tensors (save_checkpoint, on every backend)
    directory = tmp_path / "run"
    model = ud.models.TwoLayerNet(3, 4, 2)
    optimizer = ud.optim.Adam(model.parameters(), lr=0.01)
    previous = ud.save_checkpoint(directory, model, optimizer, epoch=1)
    previous_bytes = open(previous, "rb").read()
    saved = {key: ud.to_numpy(value).copy() for key, value in model.state_dict().items()}
    real_fdopen = os.fdopen
    room = 8 + int.from_bytes(previous_bytes[:8], "little") + 1000  # about the header, and 1000 bytes of its 5 KB
    with monkeypatch.context() as patch:
        patch.setattr(atomic.os, "fdopen", lambda *args, **kwargs: FullDisk(real_fdopen(*args, **kwargs), room))
        with pytest.raises(OSError) as error:
            ud.save_checkpoint(directory, ud.models.TwoLayerNet(30, 40, 2), epoch=2)
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC
    assert "checkpoint-0002-0000000.safetensors" in message and "No space left on device" in message
    assert f"the previous checkpoint {previous!r} is intact" in message
    assert os.listdir(directory) == [os.path.basename(previous)]  # no temporary, no part of the new file
    assert open(previous, "rb").read() == previous_bytes
    restored = ud.models.TwoLayerNet(3, 4, 2)
    restored_optimizer = ud.optim.Adam(restored.parameters(), lr=0.5)
    info = ud.load_checkpoint(directory, restored, restored_optimizer)
    assert info["path"] == previous and info["epoch"] == 1
    for key, value in restored.state_dict().items():
        assert np.array_equal(ud.to_numpy(value), saved[key]), key
    assert restored_optimizer.lr == 0.01


def test_rotation_failure_warns_and_keeps_the_new_checkpoint(tmp_path, monkeypatch, backend):
    model = ud.models.TwoLayerNet(3, 4, 2)
    first = ud.save_checkpoint(tmp_path, model, epoch=1, keep=1)
    real_unlink = os.unlink

    def refuse(path, *args, **kwargs):
        if os.fspath(path) == first:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr("unidl.checkpoint.os.unlink", refuse)
    with pytest.warns(RuntimeWarning, match=r"could not delete old checkpoint .*checkpoint-0001-0000000"):
        newest = ud.save_checkpoint(tmp_path, model, epoch=2, keep=1)
    assert os.path.exists(newest) and ud.latest_checkpoint(tmp_path) == newest
    monkeypatch.undo()
    assert os.path.exists(first)  # (the file it could not delete: still there, older than the new one)
    assert ud.load_checkpoint(tmp_path, ud.models.TwoLayerNet(3, 4, 2))["path"] == newest  # the new one stands


@pytest.mark.parametrize("seed", [2**32, 2**64, -1, "1", 1.0, True, None])
def test_manual_seed_refuses_a_bad_seed_before_changing_any_generator(backend, seed):
    ud.manual_seed(5)
    before = unidl_random.get_rng_state()
    with pytest.raises(ValueError, match=r"from 0 to 2\*\*32 - 1"):
        ud.manual_seed(seed)
    assert unidl_random.get_rng_state() == before
    ud.manual_seed(2**32 - 1)  # the largest seed every framework accepts


def test_rng_state_a_framework_refuses_is_rolled_back(backend):
    state = unidl_random.get_rng_state()
    before = unidl_random.generator().bit_generator.state
    broken = {**state, "backends": {name: _break(value) for name, value in state["backends"].items()}}
    if broken == state:
        pytest.skip("no loaded backend keeps a generator state of numbers")
    with pytest.raises(ud.StateDictError):
        unidl_random.set_rng_state(broken)
    assert unidl_random.get_rng_state() == state and unidl_random.generator().bit_generator.state == before


def _break(value):
    """The same structure with every number out of any framework's range."""
    if isinstance(value, dict):
        return {key: _break(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_break(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return 2**80
    return value
