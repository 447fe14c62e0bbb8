"""Who left a file behind: the tag of this host and PID namespace that unidl writes into the names of its
temporary files and shared-memory segments beside the writer's process id, and whether such a process is
still alive. A process id means something only inside its own PID namespace on its own host, while a
directory (a shared file system, a ``/dev/shm`` shared by the containers of one pod) may be seen from
several: a leftover is removed only where both match and the process is gone."""

from __future__ import annotations

import os
import socket
import zlib


def _tag() -> str:
    try:
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: the host alone
        pid_namespace = 0
    return f"{zlib.crc32(f'{socket.gethostname()}/{pid_namespace}'.encode()):08x}"


#: this host and PID namespace, as 8 hex digits
HOST = _tag()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this namespace exists (another user's process counts as alive: it may still
    be writing or reading)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True
