"""Atomic file writes: a reader sees the old file or the complete new one, never half of either.

The data goes to a temporary file in the target's directory (same file system, so the rename is
atomic), which is flushed and fsynced, renamed over the target with ``os.replace``, and then the
directory itself is fsynced so that the rename survives a power cut. A temporary file is named
``.<target>.unidl-<host>-<pid>-<random>.tmp``, followed by the target's extension where the writer reads the
format from it (an export's ``.onnx``, ``.pt2``); one left by a process that died mid-write (SIGKILL, power
cut), a file or an export's directory, is removed by the next write into the same directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import threading
import time
from typing import BinaryIO, Iterator

from unidl.io.owner import HOST as _HOST, process_alive as _process_alive

_TEMPORARY = re.compile(r"^\..+\.unidl-([0-9a-f]{8})-(\d+)-[0-9a-f]{12}\.tmp(?:\.[A-Za-z0-9]+)?$")
#: temporaries of the previous naming (no host or pid): removed only once clearly abandoned
_OLD_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
#: a temporary of another host (shared file system) is taken as abandoned after this many seconds
ABANDONED_AFTER_S = 24 * 3600
_in_progress: set[str] = set()
_in_progress_lock = threading.Lock()


def _check_target(path: str) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a directory, expected a file path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    return path


def _temporary_name(path: str, extension: str = "") -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.unidl-{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp{extension}")


def _create_temporary(path: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = _temporary_name(path)
        with _in_progress_lock:
            _in_progress.add(temporary)
        try:
            # 0o666 filtered by the umask: the new file gets the permissions open() would give it
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
        except BaseException:
            with _in_progress_lock:
                _in_progress.discard(temporary)
            raise


@contextlib.contextmanager
def temporary_path(path, extension: str = "") -> Iterator[str]:
    """A fresh temporary name beside ``path`` for a writer that creates the file (or directory) itself, such as a
    framework's exporter; ``extension`` (e.g. ``".onnx"``) ends the name where the writer reads the format from it.

    The name is the one ``atomic_open`` gives its temporaries, so that ``remove_stale_temporaries`` removes what a
    writer that died left under it, and never while the block runs. Nothing is created or removed here: the caller
    writes, fsyncs (``fsync_tree``) and renames the temporary, and removes it on failure.
    """
    while True:
        temporary = _temporary_name(os.fspath(path), extension)
        if not os.path.lexists(temporary):
            break
    with _in_progress_lock:
        _in_progress.add(temporary)
    try:
        yield temporary
    finally:
        with _in_progress_lock:
            _in_progress.discard(temporary)


def remove_stale_temporaries(directory) -> list[str]:
    """Delete the temporary files that writers which died mid-write left in ``directory``; returns their paths.

    Only unidl's own temporaries are touched: those of a dead process on this host, and those of another
    host or of the previous naming once older than ``ABANDONED_AFTER_S``. Failures to delete are ignored.
    """
    directory = os.fspath(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(directory, name)
        match = _TEMPORARY.match(name)
        if match:
            host, pid = match.group(1), int(match.group(2))
            with _in_progress_lock:
                ours = path in _in_progress
            if ours or (host == _HOST and pid != os.getpid() and _process_alive(pid)):
                continue
            if host != _HOST and not _older_than(path, now, ABANDONED_AFTER_S):
                continue
        elif not (_OLD_TEMPORARY.match(name) and _older_than(path, now, ABANDONED_AFTER_S)):
            continue
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):  # an export's SavedModel directory
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
    return removed


def _older_than(path: str, now: float, seconds: float) -> bool:
    try:
        return now - os.stat(path).st_mtime > seconds
    except OSError:
        return False


def _with_path(error: OSError, path: str, existed: bool) -> OSError:
    """``error`` again (same class and errno), its message naming ``path`` and what became of it."""
    outcome = (f"its previous content is intact" if existed else "nothing was written under that name")
    message = f"could not write {path!r}: {error.strerror or error}; {outcome}"
    if error.errno is None:
        return type(error)(message)
    return OSError(error.errno, message)


def fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fsync_tree(path: str) -> None:
    """Flush ``path`` to disk before it is renamed into place: a file, or a directory with every file and directory
    in it (a SavedModel), so that a power cut after the rename leaves the complete content, not empty files."""
    if not os.path.isdir(path) or os.path.islink(path):
        _fsync_file(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            _fsync_file(os.path.join(root, name))
        fsync_directory(root)


def _fsync_file(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_open(path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing, atomically: the file appears under its name only if the block succeeds.

    Example::

        with atomic_open("weights.bin") as f:
            f.write(header)
            f.write(body)

    If the block raises, the temporary file is removed and ``path`` keeps its previous content
    (or stays absent). A file replaced keeps its permissions (and owner, where allowed); a symbolic link stays one
    and its target gets the content, as a plain ``open(path, "wb")`` behaves.
    """
    path = _check_target(path)
    if os.path.islink(path):  # the link's target gets the new content and the link stays, as open() writes
        path = _check_target(os.path.realpath(path))
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(directory)
    existed = os.path.exists(path)
    try:
        temporary, descriptor = _create_temporary(path)
    except OSError as error:
        raise _with_path(error, path, existed) from error
    try:
        try:
            if existed:  # the file keeps its permissions (a private 0600 file stayed private when open() wrote it)
                _keep_owner_and_mode(descriptor, path)
            with os.fdopen(descriptor, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:  # a full disk, a file-size limit, a read-only file system: say which file
            raise _with_path(error, path, existed) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    finally:
        with _in_progress_lock:
            _in_progress.discard(temporary)
    fsync_directory(directory)


def _keep_owner_and_mode(descriptor: int, path: str) -> None:
    """Give the temporary file at ``descriptor`` the permission bits (and, where allowed, the owner and group) of
    the file it replaces."""
    info = os.stat(path)
    if hasattr(os, "fchmod"):
        os.fchmod(descriptor, stat.S_IMODE(info.st_mode))
    if hasattr(os, "fchown"):
        with contextlib.suppress(OSError):  # (another owner needs privileges: the writer's own, as open() keeps)
            os.fchown(descriptor, info.st_uid, info.st_gid)


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace the content of ``path`` with ``data`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as handle:
        handle.write(data)
