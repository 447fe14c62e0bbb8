"""How worker processes send their results (batches, failures, "ready") to the main process: one pipe per worker,
written synchronously.

A ``multiprocessing.Queue`` shared by the workers, as PyTorch's loader uses, loses and hangs on a worker that ends
abruptly (``os._exit`` or a crash in a sample, the OOM killer): its ``put`` hands the message to a feeder thread,
which dies with the process whatever it had not written yet, so that the batch the worker had finished is lost (the
loader's error came one batch early, at random), or, for a message larger than the pipe's buffer, cut halfway; the
main process, which holds the queue's write end itself, then waits forever for the rest of it. Here a worker's
``put`` returns once its message is in the pipe, so that everything a worker finished reaches the main process
before it goes on to the next batch, and each pipe's write end lives in its worker alone (the main process closes
its copy as the worker starts; the pipe is made just before, so no other worker inherits it), so that a message
cut by the worker's end is an end of file, never a wait.
"""

from __future__ import annotations

import collections
import queue
import sys
from multiprocessing.connection import wait


class PipeSender:
    """A worker process's end of its result pipe, with ``queue.Queue``'s ``put`` (which ``worker.serve`` calls)."""

    def __init__(self, connection):
        self.put = connection.send


class ResultPipes:
    """The main process's ends of the workers' result pipes, read as one queue: ``get(timeout)`` returns the next
    message of any worker or raises ``queue.Empty``."""

    def __init__(self):
        self._open = []   # readers whose worker may still write
        self._pending = collections.deque()

    def new_pipe(self, mp_context):
        """A new pipe for a worker about to start: returns its write end, for the worker, which the caller closes
        in this process once the worker has started."""
        reader, writer = mp_context.Pipe(duplex=False)
        self._open.append(reader)
        _widen(writer)
        return writer

    def get(self, timeout: float):
        if not self._pending:
            for reader in wait(self._open, timeout):
                try:
                    while True:  # every whole message there now
                        self._pending.append(reader.recv())
                        if not reader.poll():
                            break
                except (EOFError, OSError):  # the worker ended (mid-message, perhaps): nothing more will come
                    self._open.remove(reader)
                    reader.close()
        if not self._pending:
            raise queue.Empty
        return self._pending.popleft()

    def close(self) -> None:
        for reader in self._open:
            reader.close()
        self._open.clear()
        self._pending.clear()


#: bytes a result pipe holds where the system lets it (Linux): a worker's ``put`` of a batch that does not go through
#: shared memory (``shared_batches.MIN_BYTES``, 1 MiB) returns at once, as a queue's did, and the worker goes on to
#: its next batch while the main process trains (with the default 64 KiB it waited for the main process to read)
PIPE_BYTES = (4 << 20, 1 << 20)


def _widen(connection) -> None:
    """Make the pipe of ``connection`` hold ``PIPE_BYTES`` where Linux lets an unprivileged process (up to
    ``/proc/sys/fs/pipe-max-size``, 1 MiB by default); else it stays as it is, which is only slower."""
    if not sys.platform.startswith("linux"):
        return
    import fcntl

    for size in PIPE_BYTES:
        try:
            fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, size)
            return
        except OSError:
            continue
