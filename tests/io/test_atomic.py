"""Atomic writes: the target holds the old content or the complete new one, and no temporary file is left behind."""

import os
import stat

import pytest

from unidl.io.atomic import atomic_open, atomic_write_bytes


def test_write_creates_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_replaces_existing_content(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_open(target) as handle:
        handle.write(b"new ")
        handle.write(b"content")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_exception_mid_write_keeps_previous_file(tmp_path, interruption):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(interruption):
        with atomic_open(target) as handle:
            handle.write(b"half of the new")
            assert target.read_bytes() == b"previous"  # nothing visible under the name yet
            raise interruption("disk full")
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_exception_when_target_did_not_exist_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "out.bin") as handle:
            handle.write(b"x")
            raise RuntimeError
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_file_gets_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "out.bin").st_mode) == 0o644


def test_bad_targets(tmp_path):
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        atomic_write_bytes(tmp_path, b"x")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        atomic_write_bytes(tmp_path / "no_such_dir" / "out.bin", b"x")
    assert os.listdir(tmp_path) == []


def test_a_replaced_file_keeps_its_permissions_and_a_symlink_stays_one(tmp_path):
    """As ``open(path, "wb")`` (and ``torch.save``) write: a private 0600 file stayed 0600 (the temporary renamed
    over it made it 0644), and a link to a file stays a link whose target holds the new content (the link was
    replaced by a plain file)."""
    private = tmp_path / "private.bin"
    private.write_bytes(b"old")
    os.chmod(private, 0o600)
    atomic_write_bytes(private, b"new")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and private.read_bytes() == b"new"
    target, link = tmp_path / "store" / "weights.bin", tmp_path / "weights.bin"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.bin", "store", "weights.bin"]
    assert [p.name for p in target.parent.iterdir()] == ["weights.bin"]
