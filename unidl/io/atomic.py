"""Atomic file writes: a reader sees the old file or the complete new one, never half of either.

The data goes to a temporary file in the target's directory (same file system, so the rename is
atomic), which is flushed and fsynced, renamed over the target with ``os.replace``, and then the
directory itself is fsynced so that the rename survives a power cut. A temporary file is named
``.<target>.unidl-<host>-<pid>-<random>.tmp``; one left by a process that died mid-write (SIGKILL,
power cut) is removed by the next write into the same directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import time
from typing import BinaryIO, Iterator

from unidl.io.owner import HOST as _HOST, process_alive as _process_alive

_TEMPORARY = re.compile(r"^\..+\.unidl-([0-9a-f]{8})-(\d+)-[0-9a-f]{12}\.tmp$")
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


def _create_temporary(path: str) -> tuple[str, int]:
    directory, name = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = os.path.join(directory, f".{name}.unidl-{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp")
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


@contextlib.contextmanager
def atomic_open(path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing, atomically: the file appears under its name only if the block succeeds.

    Example::

        with atomic_open("weights.bin") as f:
            f.write(header)
            f.write(body)

    If the block raises, the temporary file is removed and ``path`` keeps its previous content
    (or stays absent).
    """
    path = _check_target(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(directory)
    existed = os.path.exists(path)
    try:
        temporary, descriptor = _create_temporary(path)
    except OSError as error:
        raise _with_path(error, path, existed) from error
    try:
        try:
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


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace the content of ``path`` with ``data`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as handle:
        handle.write(data)
