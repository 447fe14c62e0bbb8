"""``set_num_threads``: how many CPU threads the framework in use may run an op on.

A framework's default pool takes every core; on a machine shared with other work (or with other ranks of a
data-parallel job) that oversubscribes the cores, and small models run many times slower than with one
thread. ``set_num_threads(n)`` (or ``UNIDL_NUM_THREADS=n``) sizes the intra- and inter-op pools of every
backend already loaded and of each backend loaded later, through ``Backend.set_num_threads``.
"""

from __future__ import annotations

import numbers
import os

_requested: int | None = None
#: the most threads every framework takes (a C int: torch raised "Overflow when unpacking long" past it)
MAX_THREADS = 2**31 - 1


def _check(value, what: str) -> int:
    """``value`` as a thread count; else a ``ConfigurationError`` (a ``ValueError``) naming ``what``, which the
    command line reports in one line, as it does a bad ``UNIDL_DEVICE``."""
    from unidl.errors import ConfigurationError

    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigurationError(f"{what} must be a positive integer, got {value!r}") from None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 1 <= value <= MAX_THREADS:
        raise ConfigurationError(f"{what} must be a positive integer up to 2**31 - 1 (threads per framework pool), "
                                 f"got {value!r}")
    return int(value)


def requested() -> int | None:
    """The thread count asked for by ``set_num_threads`` or ``UNIDL_NUM_THREADS``; None: frameworks' defaults."""
    if _requested is not None:
        return _requested
    text = os.environ.get("UNIDL_NUM_THREADS", "").strip()
    return _check(text, "UNIDL_NUM_THREADS") if text else None


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the intra-op and the inter-op pool of every framework unidl runs on.

    Applies to the backends already loaded and to those loaded later. Some frameworks fix a pool when it is
    first used (TensorFlow's, torch's inter-op pool, XLA's): call this before the first computation, e.g.
    at the top of a script, or set ``UNIDL_NUM_THREADS``. ``unidl train`` uses one thread per process
    unless told otherwise (docs/distributed.md has the measurements).
    """
    global _requested
    _requested = _check(n, "set_num_threads(n)")
    from unidl import backends

    for backend in backends.loaded_backends().values():
        backend.set_num_threads(_requested, _requested)


def apply(backend) -> None:
    """Size a newly loaded backend's pools as requested (called by ``unidl.backends.load``)."""
    count = requested()
    if count is not None:
        backend.set_num_threads(count, count)
