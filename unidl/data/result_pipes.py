"""How worker processes send their results (batches, failures, "ready") to the main process: one pipe per worker,
written synchronously, read without ever blocking.

A ``multiprocessing.Queue`` shared by the workers, as PyTorch's loader uses, loses and hangs on a worker that ends
abruptly (``os._exit`` or a crash in a sample, the OOM killer): its ``put`` hands the message to a feeder thread,
which dies with the process whatever it had not written yet, so that the batch the worker had finished is lost (the
loader's error came one batch early, at random), or, for a message larger than the pipe's buffer, cut halfway; the
main process, which holds the queue's write end itself, then waits forever for the rest of it. Here a worker's
``put`` returns once its message is in the pipe, so that everything a worker finished reaches the main process
before it goes on to the next batch; the main process closes its copy of each write end as the worker starts (the
pipe is made just before, so no other worker inherits it); and it reads what is there without blocking, keeping a
message that is not whole yet until the rest comes, so that a message cut by the worker's end is never waited for,
even where another process still holds the write end (a child process the worker started).
"""

from __future__ import annotations

import collections
import os
import queue
import struct
import sys
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler

#: whether the pipes are read as file descriptors, without blocking (POSIX); elsewhere (Windows) ``recv`` reads them
_RAW = os.name == "posix"
#: bytes read from a pipe at a time
_CHUNK = 1 << 20


class PipeSender:
    """A worker process's end of its result pipe, with ``queue.Queue``'s ``put`` (which ``worker.serve`` calls)."""

    def __init__(self, connection):
        self.put = connection.send


class ResultPipes:
    """The main process's ends of the workers' result pipes, read as one queue: ``get(timeout)`` returns the next
    message of any worker or raises ``queue.Empty``."""

    def __init__(self):
        self._open = {}   # reader -> the bytes read from it that are not a whole message yet (POSIX)
        self._pending = collections.deque()

    def new_pipe(self, mp_context):
        """A new pipe for a worker about to start: returns its write end, for the worker, which the caller closes
        in this process once the worker has started."""
        reader, writer = mp_context.Pipe(duplex=False)
        if _RAW:
            os.set_blocking(reader.fileno(), False)
        self._open[reader] = bytearray()
        _widen(reader)
        return writer

    def get(self, timeout: float):
        if not self._pending:
            for reader in _ready(list(self._open), timeout):
                self._read(reader)
        if not self._pending:
            raise queue.Empty
        return self._pending.popleft()

    def _read(self, reader) -> None:
        """Take the whole messages that ``reader`` holds now into ``_pending``; close it at its end of file (its worker
        ended: nothing more will come, and a message it cut is dropped)."""
        if not _RAW:
            try:
                while reader.poll():
                    self._pending.append(reader.recv())
            except (EOFError, OSError):
                self._close(reader)
            return
        buffer = self._open[reader]
        ended = False
        while True:
            try:
                data = os.read(reader.fileno(), _CHUNK)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            buffer += data
        while True:  # multiprocessing's framing: a signed 4-byte big-endian length, or -1 and an 8-byte one
            if len(buffer) < 4:
                break
            size, start = struct.unpack("!i", buffer[:4])[0], 4
            if size == -1:
                if len(buffer) < 12:
                    break
                size, start = struct.unpack("!Q", buffer[4:12])[0], 12
            if len(buffer) < start + size:
                break
            self._pending.append(ForkingPickler.loads(buffer[start:start + size]))
            del buffer[:start + size]
        if ended:
            self._close(reader)

    def _close(self, reader) -> None:
        self._open.pop(reader, None)
        _unwiden(reader)
        reader.close()

    def close(self) -> None:
        for reader in list(self._open):
            self._close(reader)
        self._pending.clear()


def _ready(readers: list, timeout: float) -> list:
    """The readers with something to read (or at their end), waiting up to ``timeout`` seconds for one; on Windows,
    whose wait takes at most 63 handles, in groups of 63, the first waited on, the others polled."""
    if sys.platform != "win32" or len(readers) <= 63:
        return wait(readers, timeout)
    ready = wait(readers[:63], timeout)
    for first in range(63, len(readers), 63):
        ready += wait(readers[first:first + 63], 0)
    return ready


#: bytes a result pipe holds where Linux lets an unprivileged process have them (``/proc/sys/fs/pipe-max-size``, 1 MiB
#: by default): a worker's ``put`` of a batch that does not go through shared memory (``shared_batches.MIN_BYTES``,
#: 1 MiB) returns at once, as a queue's did, and the worker goes on to its next batch while the main process trains;
#: with the default 64 KiB it waits for the main process to read
PIPE_BYTES = 1 << 20
#: widened pipes open at once in this process, at most: each counts 1 MiB against its user's allowance of pipe
#: buffers (``/proc/sys/fs/pipe-user-pages-soft``, 64 MiB by default), past which every new pipe of that user, in
#: any program, gets a 4 KiB-page buffer; the pipes of workers beyond it keep the default size (only slower)
MAX_WIDENED = 16
_widened: set = set()


def _widen(reader) -> None:
    if not sys.platform.startswith("linux") or len(_widened) >= MAX_WIDENED:
        return
    import fcntl

    try:
        fcntl.fcntl(reader.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # (over the allowance, or a smaller pipe-max-size: it stays as it is)
        return
    _widened.add(reader)


def _unwiden(reader) -> None:
    _widened.discard(reader)
