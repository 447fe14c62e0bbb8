"""Batches that cross from a worker process to the main process through shared memory instead of a pipe.

A large batch sent through a ``multiprocessing`` queue is pickled, written through a pipe, read and
unpickled: several copies and many system calls (about 3x slower than shared memory for 4 MiB batches,
and 3x the main process's CPU time). Here the worker writes its arrays once into a file of
``/dev/shm`` (memory, not disk) and sends only their layout; the main process copies them out once and
unlinks the file first. The main process names every segment before the batch is handed out
(``segment_name``), so that it can remove any segment a worker created but never delivered (a worker
killed, an epoch stopped early, an abandoned iteration): none outlives the pool (``pool.py``), and
those of a main process that was itself killed are removed by the next pool on the same host
(``remove_abandoned``).

Small batches, for which a segment costs more than it saves, travel pickled, and so does every batch
where ``/dev/shm`` is missing (not Linux) or full: the pages are reserved before writing
(``posix_fallocate``), so a full ``/dev/shm`` means pickling, never a bus error in the worker.
"""

from __future__ import annotations

import itertools
import mmap
import os
from dataclasses import dataclass

import numpy as np

from unidl.data.dataset import Fields
from unidl.io.owner import HOST, process_alive

#: batches of at least this many bytes travel through shared memory (measured crossover: 256 KiB - 1 MiB)
MIN_BYTES = 1 << 20
#: where the segments live: a tmpfs, memory that the kernel frees when the last mapping and name are gone
DIRECTORY = "/dev/shm"
#: prefix of unidl's segment names, followed by the host, the main process's id and a serial number
PREFIX = "unidl-batch-"

#: this host and PID namespace, in segment names (``unidl.io.owner``)
_HOST = HOST
_ALIGNMENT = 64
_serials = itertools.count()


def available() -> bool:
    """Whether this process can create segments (a writable ``/dev/shm``)."""
    return os.path.isdir(DIRECTORY) and os.access(DIRECTORY, os.W_OK | os.X_OK)


def segment_name() -> str:
    """A new segment name, unique on this machine while this process lives."""
    return f"{PREFIX}{_HOST}-{os.getpid()}-{next(_serials)}"


@dataclass(frozen=True)
class SharedBatch:
    """Where a worker left a batch: the segment's name and each array's (dtype, shape, byte offset)."""

    name: str
    layouts: tuple
    layout: object = None  # a ``Fields`` batch's layout (None: a plain tuple)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(DIRECTORY, name))
    except FileNotFoundError:
        pass


def write(name: str, arrays: tuple) -> SharedBatch | None:
    """Copy ``arrays`` into a new segment ``name`` (the worker's side); None, and no segment, when
    ``/dev/shm`` has no room for it (the batch is then pickled)."""
    layouts, size = [], 0
    for array in arrays:
        size += -size % _ALIGNMENT
        layouts.append((array.dtype, array.shape, size))  # the dtype itself: a structured one keeps its fields
        size += array.nbytes
    size = max(size, 1)
    path = os.path.join(DIRECTORY, name)
    try:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # left by an earlier process that had the same process id
            _unlink(name)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # not writable (EACCES, EROFS), out of inodes (ENOSPC), out of descriptors (EMFILE)
        return None  # pickled instead, as when there is no room
    try:
        try:
            os.posix_fallocate(descriptor, 0, size)
        except OSError:  # no room (ENOSPC) or no support: pickled instead
            _unlink(name)
            return None
        with mmap.mmap(descriptor, size) as mapped:
            for array, (_, _, offset) in zip(arrays, layouts):
                np.ndarray(array.shape, array.dtype, buffer=mapped, offset=offset)[...] = array
    except BaseException:
        _unlink(name)
        raise
    finally:
        os.close(descriptor)
    return SharedBatch(name, tuple(layouts), arrays.layout if isinstance(arrays, Fields) else None)


def read(batch: SharedBatch) -> tuple:
    """The arrays of ``batch`` as fresh arrays of this process (the main process's side); the segment's
    name is removed first, and its memory goes with the mapping."""
    path = os.path.join(DIRECTORY, batch.name)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        with mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ) as mapped:
            arrays = tuple(np.ndarray(shape, dtype, buffer=mapped, offset=offset).copy()
                           for dtype, shape, offset in batch.layouts)
            return arrays if batch.layout is None else Fields(arrays, batch.layout)
    finally:
        os.close(descriptor)


def discard(name: str) -> None:
    """Remove segment ``name`` if a worker created it: its batch will never be read."""
    _unlink(name)


def remove_abandoned() -> None:
    """Remove the segments of main processes of this host that no longer exist (killed before they could)."""
    try:
        names = os.listdir(DIRECTORY)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        host, owner = (name[len(PREFIX):].split("-") + ["", ""])[:2]
        if host == _HOST and owner.isdigit() and not process_alive(int(owner)):
            _unlink(name)


def worth_sharing(arrays: tuple, min_bytes: int) -> bool:
    """Whether ``arrays`` (NumPy arrays) should travel through shared memory: ``min_bytes`` or more, and
    no Python objects (which live outside the array's memory)."""
    return (sum(array.nbytes for array in arrays) >= min_bytes
            and not any(array.dtype.hasobject for array in arrays))
