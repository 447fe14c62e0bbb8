"""Stopping a DataLoader worker thread from outside: CPython cannot end a thread, but it can raise an exception
in one (``PyThreadState_SetAsyncExc``), at the thread's next bytecode. ``pool.py`` asks a worker thread to stop
this way only where the user asked to stop now (Ctrl-C) or declared its sample stuck (``timeout=``: the batch that
overran it, and any sample that has run longer than it once the pool stops, ``StopSwitch.overdue``); ``worker.py``
runs each call of the user's code (a batch, ``worker_init_fn``) inside the thread's ``StopSwitch``, the only place
where the exception can be raised, and ends a batch between two samples once a stop was asked.

A sample stuck in a Python loop, or in a loop of short ``time.sleep`` calls, stops; one blocked inside a single
call that does not return to Python (a long ``time.sleep``, a blocking read, C code) stops only when that call
returns, and one that catches ``BaseException`` may not stop at all: ``pool.py`` names such threads. A stop that
lands in a garbage collection's finalizer run inside the sample ends that finalizer instead (Python drops what a
finalizer raises); it is raised once more (``StopSwitch.stop_again``), once only.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time


class WorkerStopped(BaseException):
    """Raised inside a worker thread's own call of the user's code to stop the thread. A ``BaseException``, as
    ``KeyboardInterrupt``, so that a sample's ``except Exception`` does not swallow it; the worker's loop catches
    it and ends quietly (``worker.serve``)."""


def _api(argument):
    """``PyThreadState_SetAsyncExc(thread id, argument)`` with the exception's type ``argument`` (``py_object``:
    an exception class; ``c_void_p``: None is NULL, which withdraws a pending one), or None off CPython. A
    prototype of its own, so that another library setting ``ctypes.pythonapi``'s argument types does not matter."""
    pythonapi = getattr(ctypes, "pythonapi", None)
    if pythonapi is None or not hasattr(pythonapi, "PyThreadState_SetAsyncExc"):
        return None
    return ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, argument)(("PyThreadState_SetAsyncExc", pythonapi))


_raise_in, _withdraw_in = _api(ctypes.py_object), _api(ctypes.c_void_p)

#: whether this Python can raise an exception in another thread (CPython can)
AVAILABLE = _raise_in is not None


def _delivered_here() -> None:
    """A few backward jumps, at each of which CPython raises an exception pending for this thread."""
    for _ in range(1000):
        pass


def _handling_a_stop(thread_id: int) -> bool:
    """Whether thread ``thread_id`` is handling a ``WorkerStopped`` now (in an ``except`` or ``finally`` it runs on
    its way out), as far as this Python can tell (``sys._current_exceptions``, CPython 3.12+: an exception; 3.11:
    an ``exc_info`` triple)."""
    current = getattr(sys, "_current_exceptions", dict)().get(thread_id)
    if isinstance(current, tuple):
        current = current[1]
    return isinstance(current, WorkerStopped)


class StopSwitch:
    """One worker thread's switch: ``with switch:`` around each call of the user's code in that thread; ``stop()``,
    from another thread, asks it to stop (it leaves its block with ``WorkerStopped`` as the block ends and enters
    none), and with ``interrupt`` raises ``WorkerStopped`` in it at once if it is inside such a block now.

    ``limit`` (the loader's ``timeout=``, None: none) is how long one step of the user's code (a sample, a collate
    with its conversion, ``worker_init_fn``) may run: a step that ran longer is stuck by the user's own definition
    (``overdue()``), which is when the pool may interrupt a thread that it would otherwise let finish its sample. A
    step begins as the block begins and at each ``check()``.

    The exception can surface only inside the block or as it ends, never after: ``stop()`` raises it only while
    the thread is inside a block (both under one lock, so never in a thread that finished meanwhile, whose id a
    new thread may have taken), and a block left after a stop takes in any exception still pending for its thread
    before it ends (pending past the block, it would surface in the worker's loop, or in ``threading``'s own code
    as the thread ends). ``with switch:`` raises ``WorkerStopped`` whenever a stop was asked before the
    block ended, also where the user's code caught it or it came before the block began; ``check()`` raises it
    inside the block where a stop was asked (between two steps).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._inside: int | None = None  # the id of the thread inside a block, if one is
        self._since: float | None = None  # when its current step began (time.monotonic()), inside a block
        self.limit: float | None = None
        self.requested = False
        self.raised = False  # whether stop() raised WorkerStopped in the thread
        self.raised_again = False  # whether stop_again() raised it a second time

    def __enter__(self):
        with self._lock:
            if self.requested:
                raise WorkerStopped
            self._inside, self._since = threading.get_ident(), time.monotonic()
        return self

    def __exit__(self, kind, value, traceback):
        with self._lock:
            self._inside = self._since = None
        if self.raised:
            # stop() can no longer raise here: take in what it raised if that is still pending (a pending exception
            # is replaced by this one, raised and caught below), so that nothing surfaces after the block
            _raise_in(ctypes.c_ulong(threading.get_ident()), ctypes.py_object(WorkerStopped))
            try:
                _delivered_here()
            except WorkerStopped:
                pass
        if self.requested:
            raise WorkerStopped
        return False

    def check(self) -> None:
        """Raise ``WorkerStopped`` here (in the thread's own code, between two steps: samples, the collate) if a stop
        was asked; else a new step begins. Once a stop was asked no step begins, so that the step in hand is the
        last and its start stays put (``overdue()``)."""
        with self._lock:
            if self.requested:
                raise WorkerStopped
            self._since = time.monotonic()

    def seconds_to_overdue(self) -> float | None:
        """Seconds until the thread's step in hand has run longer than ``limit`` (negative: it has), or None where the
        thread is in no step (outside its block) or there is no limit."""
        with self._lock:
            if self._since is None or self.limit is None:
                return None
            return self._since + self.limit - time.monotonic()

    def overdue(self) -> bool:
        """Whether the thread is in a step of the user's code that has run longer than ``limit``."""
        left = self.seconds_to_overdue()
        return left is not None and left < 0

    def stop(self, interrupt: bool = True) -> bool:
        """Ask the thread to stop: it leaves its block with ``WorkerStopped`` (and enters none); ``interrupt``: raise
        ``WorkerStopped`` in it now if it is inside a block and none was raised before (not from the thread itself:
        the exception would end whatever that thread runs now, a garbage collection's finalizer). True where it was
        raised, now or before."""
        with self._lock:
            self.requested = True
            if interrupt and not self.raised:
                self.raised = self._raise_inside()
            return self.raised

    def stop_again(self) -> bool:
        """Raise ``WorkerStopped`` once more in a thread that ``stop()`` interrupted and that is still inside its
        block without handling it: a garbage collection's finalizer that ran in the sample took it, and Python
        dropped it there ("Exception ignored in ..."). Once at most, and never in a thread on its way out (its
        ``except``/``finally`` cleanup would be cut short). True where it was raised."""
        with self._lock:
            if self.raised and not self.raised_again and self._inside is not None \
                    and not _handling_a_stop(self._inside):
                self.raised_again = self._raise_inside()
            return self.raised_again

    def _raise_inside(self) -> bool:
        """Raise ``WorkerStopped`` in the thread inside the block, if one is (the lock held)."""
        if self._inside is None or not AVAILABLE:
            return False
        affected = _raise_in(ctypes.c_ulong(self._inside), ctypes.py_object(WorkerStopped))
        if affected > 1:  # (one thread per id: never, but the C API asks to withdraw it then)
            _withdraw_in(ctypes.c_ulong(self._inside), None)
        return affected == 1
