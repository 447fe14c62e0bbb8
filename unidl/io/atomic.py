"""Atomic file writes: a reader sees the old file or the complete new one, never half of either.

The data goes to a temporary file in the target's directory (same file system, so the rename is
atomic), which is flushed and fsynced, renamed over the target with ``os.replace``, and then the
directory itself is fsynced so that the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import BinaryIO, Iterator


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
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 filtered by the umask: the new file gets the permissions open() would give it
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue


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
    temporary, descriptor = _create_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace the content of ``path`` with ``data`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as handle:
        handle.write(data)
