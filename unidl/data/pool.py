"""A DataLoader's workers seen from the main process: start them (threads, or processes of a
``multiprocessing`` context), hand them batches, collect the batches in order, and stop them on
exhaustion, error, timeout, Ctrl-C and garbage collection alike.

The main process never blocks for long: it waits for results ``POLL`` seconds at a time, checking in
between that every worker is alive and within the timeout, so that Ctrl-C and a dead worker are noticed
within ``POLL`` seconds. Starting and stopping the workers hold Ctrl-C back until they are done
(``interrupts_held``): cut halfway, they would leave workers that nobody stops. A worker thread finishes the sample
in hand when its pool stops, unless the user asked to stop now (Ctrl-C) or declared that sample stuck (its batch
overran ``timeout=``, or the sample itself runs longer than it, then or later): then an exception raised in the
sample stops it (``thread_stop.py``), and the few that this cannot stop are named. Large batches of worker
processes come through shared memory (``shared_batches.py``): the pool names each batch's segment when it hands the
batch out and removes every segment that was not delivered when it stops.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import queue
import signal
import sys
import threading
import time
import warnings
import weakref

from unidl import config
from unidl.data import shared_batches, thread_stop, worker
from unidl.data.result_pipes import ResultPipes
from unidl.errors import DataLoaderError

#: seconds between checks while the main process waits for a batch
POLL = 0.05
#: seconds workers get to stop by themselves before they are terminated: after a normal end, after a failure
GRACE, GRACE_ON_FAILURE = 1.0, 0.1
#: seconds worker threads get to end once interrupted (an exception raised in the sample): a sample in a Python
#: loop ends within milliseconds, one sleeping in short steps within a step; one still inside its sample and not on
#: its way out after ``THREAD_STOP_AGAIN`` s gets the exception once more (a garbage collection's finalizer that ran
#: in the sample took the first: ``StopSwitch.stop_again``)
THREAD_STOP_WAIT, THREAD_STOP_AGAIN = 0.2, 0.05
#: seconds between a watcher thread's looks at the worker threads a stop left in their samples (``_watch``)
WATCH_POLL = 0.1

_generations = itertools.count()


def pickled_for_workers(dataset, collate_fn, worker_init_fn) -> bytes:
    """(dataset, collate_fn, worker_init_fn) pickled once for all worker processes, or a
    ``DataLoaderError`` naming the object that does not pickle."""
    objects = {"dataset": dataset, "collate_fn": collate_fn, "worker_init_fn": worker_init_fn}
    try:
        return pickle.dumps(tuple(objects.values()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        culprit, cause = "dataset, collate_fn and worker_init_fn together", error
    for name, value in objects.items():
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            culprit, cause = f"{name} {_short_repr(value)}", error
            break
    raise DataLoaderError(
        f"DataLoader(worker_type='process'): the {culprit} cannot be pickled, and worker processes receive "
        f"them pickled ({type(cause).__name__}: {cause}). Define them at module level of an importable module "
        f"(not inside a function, not as a lambda), or use worker_type='thread'") from cause


_RAISED_AS: dict = {}


def _raised_as(original) -> type:
    """``DataLoaderError`` that is also an instance of ``original``'s class (a ``KeyError`` a sample raised in a
    worker is caught by ``except KeyError``, as without workers and as PyTorch's loader raises it again), where
    the two classes combine; else ``DataLoaderError`` alone (a class whose instances have another layout, and
    ``StopIteration`` and ``StopAsyncIteration``, which end iterations: raised in the loader's generators, Python
    made them ``RuntimeError: generator raised StopIteration``, PEP 479)."""
    kind = type(original) if isinstance(original, Exception) else None
    if kind is None or issubclass(DataLoaderError, kind) or issubclass(kind, (StopIteration, StopAsyncIteration)):
        return DataLoaderError
    if kind not in _RAISED_AS:
        try:
            combined = type(f"DataLoaderError[{kind.__name__}]", (DataLoaderError, kind),
                            {"__str__": BaseException.__str__, "__module__": DataLoaderError.__module__,
                             "__reduce__": _reduce_raised_as, "_original_kind": kind})
            combined("a check that its instances can be made")
        except TypeError:
            combined = DataLoaderError
        _RAISED_AS[kind] = combined
    return _RAISED_AS[kind]


def _reduce_raised_as(error):
    """Pickle a ``_raised_as`` error by its original class (its own has no importable name: a job's rank sends
    errors back pickled, and so does a process pool)."""
    return _rebuilt_raised_as, (error._original_kind, error.args, dict(error.__dict__))


def _rebuilt_raised_as(kind, args, state):
    error = _raised_as(kind.__new__(kind))(*args)
    error.__dict__.update(state)
    return error


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@contextlib.contextmanager
def sigint_handled_by(wrap):
    """Run the block with SIGINT (Ctrl-C) handled by ``wrap(previous)``, ``previous`` being the handler in force,
    and ``previous`` back as the block ends; the block gets ``previous`` (``with ... as previous``).

    Python runs signal handlers in the main thread only, and only there can one be swapped: elsewhere, or where
    SIGINT has no Python handler (ignored, or the default action), the block runs as it is and gets None. The new
    handler is installed inside the ``try``, so that a Ctrl-C raised as it is installed does not leave it there.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield None
        return
    try:
        signal.signal(signal.SIGINT, wrap(previous))
        yield previous
    finally:
        signal.signal(signal.SIGINT, previous)


def ctrl_c_noted(raised: list):
    """Run the block with each ``KeyboardInterrupt`` that the SIGINT handler raises (Ctrl-C) noted in ``raised``,
    so that the caller can raise again one that code inside the block swallowed: Keras's own trainer converts its
    logs under a bare ``except`` (``keras.src.utils.python_utils.pythonify_logs``), where a Ctrl-C that lands is
    lost and training goes on (``ud.fit``, and a keras ``train_step``, raise it again). A handler that does not
    raise (a user's own) is left to its business; where no handler can be swapped the block runs as it is
    (``sigint_handled_by``)."""
    def noting(previous):
        def handler(signum, frame):
            try:
                previous(signum, frame)
            except KeyboardInterrupt:
                raised.append(True)
                raise

        return handler

    return sigint_handled_by(noting)


@contextlib.contextmanager
def interrupts_held():
    """Run the block with SIGINT (Ctrl-C) held back, then hand a SIGINT that came meanwhile to the handler
    that was in force (Python's default raises ``KeyboardInterrupt``) as the block ends.

    Starting or stopping workers cut halfway by ``KeyboardInterrupt`` leaves workers running that nobody
    will stop (a process spawned but not yet recorded, a queue that never gets its stop message). The
    blocks held are short: starting launches the workers without waiting for them, and stopping waits
    ``grace`` seconds at most before it terminates processes. Where no handler can be swapped
    (``sigint_handled_by``) the block runs as it is.
    """
    held, previous = [], None
    try:
        with sigint_handled_by(lambda _: lambda signum, frame: held.append(frame)) as previous:
            yield
    finally:
        if held:
            previous(signal.SIGINT, held[0])


def in_finalizer(stop, *args) -> None:
    """``stop(*args)`` (stopping workers) as a garbage-collection finalizer runs it: to the end whatever Ctrl-C
    does, held back while it runs, and run again where Ctrl-C lands before it could be held back (on the first
    lines here).

    The ``KeyboardInterrupt`` itself is lost all the same: Python drops what a finalizer raises (printed as
    ``Exception ignored in: <finalize object ...>``), and handing the SIGINT on from here
    (``_thread.interrupt_main``, a signal to this process) does not help, since Python takes it at its next
    check, which comes before the finalizer has returned. Where Ctrl-C lands on ``weakref.finalize``'s own
    lines, before this function runs, the stop too waits for the interpreter's exit.
    """
    try:
        with interrupts_held():
            stop(*args)
    except KeyboardInterrupt:  # landed before it was held back, or held back and handed on as the stop ended
        with interrupts_held():
            stop(*args)  # stopping again is harmless: the stop messages meet stopped workers or closed queues
        raise


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by signal {signal.Signals(-exitcode).name} (exit code {exitcode})"
        except ValueError:
            pass
    return f"exited unexpectedly with exit code {exitcode}"


class WorkerPool:
    """``num_workers`` workers of one kind ('thread' or 'process'), one task queue each and one result queue
    (processes: a pipe each, read as one queue, ``result_pipes.py``); they run from ``start()`` to ``shutdown()``.

    A pool serves one iteration at a time (``deliver``); a persistent pool serves the iterations of many
    epochs, each tagged with a generation number so that batches left over from an abandoned iteration
    are dropped.
    """

    def __init__(self, kind: str, num_workers: int, dataset, collate_fn, worker_init_fn, mp_context,
                 seed, epoch):
        self.kind = kind
        self.num_workers = num_workers
        self.generation = None
        self._ready_at: list[float | None] = [None] * num_workers  # when each worker could take batches
        # (generation, batch) -> the shared-memory segment named for it, until it is read or removed
        self._segments: dict[tuple[int, int], str] = {}
        self._share = kind == "process" and shared_batches.available()
        if self._share:
            shared_batches.remove_abandoned()
        self._switches = [None] * num_workers  # worker threads': where the pool may stop them (thread_stop.py)
        if kind == "process":
            payload = pickled_for_workers(dataset, collate_fn, worker_init_fn)
            self._results = ResultPipes()  # one pipe per worker, made as it starts (result_pipes.py)
            self._tasks = [mp_context.Queue() for _ in range(num_workers)]
            self._current = [mp_context.RawArray("q", [-1, -1]) for _ in range(num_workers)]
            settings, tasks, current = config.settings(), self._tasks, self._current
            self._mp_context = mp_context
            self._process = lambda w, results: mp_context.Process(  # (no reference to the pool: no cycle)
                target=worker.process_main, name=f"unidl-data-worker-{w}", daemon=True,
                args=(w, payload, tasks[w], results, current[w], seed, epoch, settings))
            self._workers = []  # (start() makes each process, with its pipe)
        else:
            self._results = queue.Queue()
            self._tasks = [queue.Queue() for _ in range(num_workers)]
            # daemon threads: one stuck in a sample cannot keep the interpreter from exiting
            self._current = [[-1, -1] for _ in range(num_workers)]
            self._switches = [thread_stop.StopSwitch() for _ in range(num_workers)]
            self._workers = [threading.Thread(target=worker.serve, name=f"unidl-data-worker-{w}", daemon=True,
                                              args=(w, dataset, collate_fn, worker_init_fn, self._tasks[w],
                                                    self._results, self._current[w], seed, epoch),
                                              kwargs={"seeding": False, "portable": False,
                                                      "stop_switch": self._switches[w]})
                             for w in range(num_workers)]
        # the workers of a pool dropped without shutdown() (Ctrl-C landing just before it) stop all the same
        # (interrupting none: a drop lets worker threads finish the sample in hand)
        self._finalizer = weakref.finalize(self, in_finalizer, _stop, kind, self._workers, self._switches,
                                           self._tasks, self._results, self._segments, GRACE_ON_FAILURE)

    def start(self) -> None:
        """Start the workers, all of them or (on any error, Ctrl-C included) none."""
        try:
            with interrupts_held():
                if self.kind == "process":
                    self._start_processes()
                else:
                    for w, handle in enumerate(self._workers):
                        handle.start()
                        self._ready_at[w] = time.monotonic()
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                self.shutdown_now()
            else:
                self.shutdown(GRACE_ON_FAILURE)
            raise

    def _start_processes(self) -> None:
        """Make and start each worker process with its result pipe (``result_pipes.py``)."""
        try:
            for w in range(self.num_workers):
                sender = self._results.new_pipe(self._mp_context)
                try:
                    self._workers.append(self._process(w, sender))
                    self._workers[w].start()
                finally:  # (the worker's copy is its own now: only its end makes the pipe's end of file)
                    sender.close()
        finally:  # (it holds the pickled dataset, which a started Process drops from its arguments)
            self._process = None

    @property
    def closed(self) -> bool:
        """Whether the workers were told to stop (``shutdown``)."""
        return not self._finalizer.alive

    def describe(self, worker_id: int) -> str:
        if self.kind == "process":
            pid = self._workers[worker_id].pid
            return f"DataLoader worker {worker_id} (process {pid})"
        return f"DataLoader worker {worker_id} (thread {self._workers[worker_id].name})"

    def new_epoch(self, seed, epoch) -> None:
        """Re-seed persistent workers for a new epoch (worker w from (seed, epoch, w)); worker processes take the
        backend, device and dtype of the context this is called in, as a new pool's do."""
        settings = config.settings() if self.kind == "process" else None
        for tasks in self._tasks:
            tasks.put(("epoch", seed, epoch, settings))

    # ---- one iteration ------------------------------------------------------
    def deliver(self, batches: list, start: int, seed, epoch: int, timeout: float | None, prefetch: int,
                context=None, convert=None):
        """Yield what the workers make of ``batches`` (index arrays of batches ``start, start+1, ...`` of
        ``epoch``), in order: arrays from processes, ``convert(arrays)`` run in ``context`` from threads."""
        generation = self.generation = next(_generations)
        for switch in self._switches:  # (threads': how long a sample may run before a stop may interrupt it)
            if switch is not None:
                switch.limit = timeout
        done: dict[int, object] = {}  # batch -> arrays, tensors or worker.Failure, until its turn
        submitted = 0
        in_flight = self.num_workers * prefetch
        for position in range(len(batches)):
            if self.generation != generation:
                error = DataLoaderError("a newer iteration of this DataLoader took over its persistent "
                                        "workers; an older iterator cannot go on")
                error.superseded = True
                raise error
            while submitted < min(len(batches), position + in_flight):
                owner = submitted % self.num_workers
                batch = start + submitted
                batch_seed = (seed, epoch, batch) if self.kind == "process" else None
                shared = None
                if self._share:
                    name = self._segments[generation, batch] = shared_batches.segment_name()
                    shared = (name, shared_batches.MIN_BYTES)
                self._tasks[owner].put(("batch", generation, batch, batches[submitted], batch_seed, context,
                                        convert, shared))
                submitted += 1
            batch, owner = start + position, position % self.num_workers
            waiting_since = time.monotonic()
            while batch not in done:
                try:
                    message = self._results.get(timeout=POLL)
                except queue.Empty:
                    message = None
                if message is not None:
                    self._receive(message, generation, done, epoch, batches, start)
                    continue
                death = self._death(epoch, batches, start)
                if death is not None:
                    # what the worker sent before it ended comes first: the batches it finished, in turn, or the
                    # failure it reported; its death is the error of the first batch that is missing
                    for message in self._drain():
                        self._receive(message, generation, done, epoch, batches, start)
                    if batch in done:
                        break
                    if death.worker_id != owner and self._workers[owner].is_alive():
                        # the batch in turn is a live worker's: wait for it (and its timeout); the dead worker's
                        # error is that of its first batch that is missing, in turn
                        self._check_timeout(owner, batch, waiting_since, timeout, epoch, batches[position])
                        continue
                    raise death
                self._check_timeout(owner, batch, waiting_since, timeout, epoch, batches[position])
            result = done.pop(batch)
            if isinstance(result, worker.Failure):  # raised in turn: the batches before it are delivered
                raise self._failure_error(result, epoch, batches, start)
            yield result

    def _receive(self, message, generation, done, epoch, batches, start) -> None:
        kind, worker_id = message[0], message[1]
        if kind == "ready":
            self._ready_at[worker_id] = time.monotonic()
        elif kind == "failed":
            failure = message[3]
            if failure.batch is None:  # the worker could not start: nothing it was given will come
                raise self._failure_error(failure, epoch, batches, start)
            self._forget_segment(message[2], failure.batch)
            if message[2] == generation:
                done[failure.batch] = failure
        else:  # "batch"; one of an abandoned iteration is dropped
            _, worker_id, batch_generation, batch, payload = message
            self._segments.pop((batch_generation, batch), None)
            if isinstance(payload, shared_batches.SharedBatch):
                if batch_generation != generation:
                    shared_batches.discard(payload.name)
                    return
                payload = self._read_shared(payload, worker_id, batch, epoch)
            if batch_generation == generation:
                done[batch] = payload

    def _forget_segment(self, generation, batch) -> None:
        name = self._segments.pop((generation, batch), None)
        if name is not None:
            shared_batches.discard(name)

    def _read_shared(self, payload, worker_id, batch, epoch):
        try:
            return shared_batches.read(payload)
        except OSError as error:
            raise DataLoaderError(f"{self.describe(worker_id)} left batch {batch} of epoch {epoch} in shared "
                                  f"memory ({shared_batches.DIRECTORY}/{payload.name}), but it could not be read "
                                  f"back: {error}") from error

    def _failure_error(self, failure: worker.Failure, epoch, batches, start) -> DataLoaderError:
        who = self.describe(failure.worker_id)
        if failure.stage == "start":
            where = "while starting (unpickling the dataset, collate_fn and worker_init_fn)"
        elif failure.stage == "worker_init_fn":
            where = f"in worker_init_fn({failure.worker_id})"
        else:
            step = {"sample": f"on sample {failure.index}", "collate": "in collate_fn",
                    "convert": "converting to tensors"}[failure.stage]
            where = (f"{step} of batch {failure.batch} of epoch {epoch} "
                     f"(samples {batches[failure.batch - start].tolist()})")
        original = failure.original()
        error = _raised_as(original)(f"{who} failed {where}: {failure.summary}\n\n"
                                     f"Traceback in the worker:\n{failure.traceback}")
        error.worker_id, error.batch, error.index = failure.worker_id, failure.batch, failure.index
        error.worker_traceback = failure.traceback
        error.__cause__ = original
        return error

    def _drain(self):
        while True:
            try:
                yield self._results.get(timeout=POLL)
            except queue.Empty:
                return

    def _death(self, epoch, batches, start) -> DataLoaderError | None:
        """The error for the first worker found dead, or None when all are alive."""
        for worker_id, handle in enumerate(self._workers):
            if handle.is_alive():
                continue
            exitcode = getattr(handle, "exitcode", None)
            generation, batch = self._current[worker_id]
            if batch < 0 or generation != self.generation:
                batch = None
            fine = "the main process and the other workers are fine, but this iteration cannot go on"
            if batch is not None:
                doing = (f"while preparing batch {batch} of epoch {epoch} "
                         f"(samples {batches[batch - start].tolist()})")
            elif self.kind == "process" and self._ready_at[worker_id] is None:  # (it never said it was ready)
                doing = "while starting, before it could report ready"
                fine = ("its stderr above holds the cause; a script that starts process workers (start method "
                        "'spawn' or 'forkserver', which run the script's module again in each worker) needs its "
                        "loop under `if __name__ == \"__main__\":`")
            else:
                doing = "between batches"
            what = _exit_description(exitcode) if self.kind == "process" else "ended unexpectedly"
            error = DataLoaderError(f"{self.describe(worker_id)} {what} {doing}; {fine}")
            error.worker_id, error.exitcode, error.batch = worker_id, exitcode, batch
            return error
        return None

    def _check_timeout(self, owner, batch, waiting_since, timeout, epoch, indices) -> None:
        ready_at = self._ready_at[owner]
        if not timeout or ready_at is None:
            return  # no timeout, or a worker process still starting (interpreter, imports, unpickling)
        waited = time.monotonic() - max(waiting_since, ready_at)
        if waited > timeout:
            # stopped here, so that the error can say whether its thread could not be (a user should not learn it from
            # top); that thread is interrupted, and others only where their sample has run past the timeout too
            left = self.shutdown(GRACE_ON_FAILURE, warn=False, interrupt=(owner,))
            stuck = "" if self.kind == "process" else f"; {left}" if left else "; its thread was stopped"
            error = DataLoaderError(f"{self.describe(owner)} did not deliver batch {batch} of epoch {epoch} "
                                    f"(samples {indices.tolist()}) within timeout={timeout:g} s{stuck}")
            error.worker_id, error.batch = owner, batch
            raise error

    # ---- stopping -----------------------------------------------------------
    def shutdown(self, grace: float = GRACE, warn: bool = True, interrupt=()) -> str | None:
        """Stop every worker: ask, wait up to ``grace`` seconds, then terminate and kill processes. A worker thread
        finishes the sample in hand (never more: asked to stop, it ends its batch there) and ends by itself, but
        those of ``interrupt`` (worker ids) and those whose sample has run longer than the loader's ``timeout=`` that
        are still in a sample then: ``WorkerStopped`` is raised there (``thread_stop.py``) and they get
        ``THREAD_STOP_WAIT`` s more. Only Ctrl-C (``shutdown_now``) and a sample stuck by the user's definition, past
        ``timeout=``, interrupt one: elsewhere (a ``break``, a close, a drop) the exception could land anywhere in a
        healthy sample's code, the dataset's, a library's, a framework's, and leave its state half-changed or a lock
        held. Where a timeout is set, a thread still in a healthy sample is interrupted once that sample runs past it,
        by a watcher thread that ends with the last such thread (``_stop_threads``): the caller does not wait for it.

        Returns what names the interrupted worker threads that did not stop, and why, or None; ``warn``: say it in a
        ``RuntimeWarning`` too (the caller that puts it in its error does not). Worker threads are daemon threads,
        which never keep the interpreter from exiting.
        """
        with interrupts_held():
            if self._finalizer.detach() is not None:  # the first call: from here on the pool is closed
                self.generation = None
                return _stop(self.kind, self._workers, self._switches, self._tasks, self._results,
                             self._segments, grace, warn, interrupt)
        return None

    def shutdown_now(self) -> str | None:
        """Stop every worker as Ctrl-C asks: ``shutdown`` after a failure's grace, with every worker thread still in
        a sample interrupted."""
        return self.shutdown(GRACE_ON_FAILURE, interrupt=range(self.num_workers))


def _stop(kind, workers, switches, tasks_queues, results, segments, grace: float, warn: bool = True,
          interrupt=()) -> str | None:
    """Stop a pool's workers (``WorkerPool.shutdown``, ``interrupt``: the ids of the worker threads to interrupt),
    from its parts: also the finalizer of a pool that was dropped without ``shutdown``. Returns (and, with ``warn``,
    warns) what names the interrupted threads left."""
    for tasks in tasks_queues:
        try:
            tasks.put(None)
        except (ValueError, OSError):  # a queue already closed
            pass
    for switch in switches:  # (threads': no sample after the one in hand, nor the batches queued before the None)
        if switch is not None:
            switch.stop(interrupt=False)
    deadline = time.monotonic() + grace
    # (a finalizer runs where the garbage is collected: never join the thread it runs in)
    started = [handle for handle in workers
               if handle.ident is not None and handle is not threading.current_thread()]
    for handle in started:
        handle.join(max(0.0, deadline - time.monotonic()))
    left = _stop_threads(workers, switches, interrupt) if kind == "thread" else None
    if kind == "process":
        for handle in started:
            if handle.is_alive():
                handle.terminate()
        for handle in started:
            handle.join(1.0)
            if handle.is_alive():
                handle.kill()
                handle.join()
        for channel in tasks_queues:
            channel.cancel_join_thread()  # never block the main process on a pipe nobody reads
            channel.close()
        results.close()
    # every worker has stopped: no segment named for a batch that was not read can appear any more
    for name in segments.values():
        shared_batches.discard(name)
    segments.clear()
    if left and warn:  # (last: a warnings filter that raises must not cut the stop short)
        warnings.warn(f"DataLoader: {left}", RuntimeWarning, stacklevel=2)
    return left


def _stop_threads(workers, switches, interrupt) -> str | None:
    """Interrupt the worker threads of ``interrupt`` (ids) and those in a step of the user's code that has run longer
    than the loader's ``timeout=`` (``StopSwitch.overdue``: stuck by the user's own definition), as
    ``_interrupted_and_left`` does; what names those that did not end, where they are and why, or None.

    The other threads were asked to stop after the sample in hand, and are left to it: where the loader has a timeout
    and one is still in a sample, a watcher thread (``_watch``) interrupts it once that sample runs past the timeout,
    so that none runs on for ever, while the caller goes on at once."""
    overdue = {worker_id for worker_id, switch in enumerate(switches) if switch.overdue()}
    left = _not_stopped(_interrupted_and_left(workers, switches, set(interrupt) | overdue))
    pending = {worker_id for worker_id, (handle, switch) in enumerate(zip(workers, switches))
               if switch.limit is not None and not switch.raised and handle.ident is not None and handle.is_alive()}
    if pending and not sys.is_finalizing():
        watcher = threading.Thread(target=_watch, args=(workers, switches, pending), name="unidl-data-worker-watch",
                                   daemon=True)
        try:
            watcher.start()
        except RuntimeError:  # (no thread starts at the interpreter's exit, whose end ends the daemon workers too)
            pass
    return left


def _interrupted_and_left(workers, switches, interrupt) -> list:
    """Raise ``WorkerStopped`` in each worker thread of ``interrupt`` (ids) still running that is inside a sample (or
    ``worker_init_fn``), once more after ``THREAD_STOP_AGAIN`` s in one still inside it and not on its way out, and
    wait up to ``THREAD_STOP_WAIT`` s in all for them to end; the threads that did not."""
    interrupted = {}
    for worker_id in sorted(interrupt):
        handle, switch = workers[worker_id], switches[worker_id]
        # (a garbage collection's finalizer may run this in a worker thread: that one is told, not interrupted)
        if handle.ident is not None and handle.is_alive() and handle is not threading.current_thread():
            interrupted[handle] = switch
            switch.stop()
    if not interrupted:
        return []
    began = time.monotonic()
    for handle, switch in interrupted.items():
        handle.join(max(0.0, began + THREAD_STOP_AGAIN - time.monotonic()))
    for handle, switch in interrupted.items():
        if handle.is_alive():
            switch.stop_again()
    for handle in interrupted:
        handle.join(max(0.0, began + THREAD_STOP_WAIT - time.monotonic()))
    return [handle for handle in interrupted if handle.is_alive()]


def _watch(workers, switches, pending: set) -> None:
    """A watcher thread's life (``_stop_threads``): until every worker thread of ``pending`` (ids, each in a sample
    that has not yet run past the loader's timeout as its pool stopped) has ended, interrupt each whose sample runs
    past it, as the stop does, and warn naming those that still cannot be stopped (waited for no more). It wakes as
    the first sample in hand runs past the timeout, and every ``WATCH_POLL`` s to see which threads have ended."""
    while pending:
        pending = {worker_id for worker_id in pending if workers[worker_id].is_alive()}
        overdue = {worker_id for worker_id in pending if switches[worker_id].overdue()}
        if overdue:
            pending -= overdue
            left = _not_stopped(_interrupted_and_left(workers, switches, overdue))
            if left:
                warnings.warn(f"DataLoader: {left}", RuntimeWarning)
            continue
        soonest = min((seconds for seconds in (switches[worker_id].seconds_to_overdue() for worker_id in pending)
                       if seconds is not None), default=WATCH_POLL)
        time.sleep(min(WATCH_POLL, max(0.0, soonest) + 0.001))


def _not_stopped(left: list) -> str | None:
    """What names the interrupted worker threads ``left`` that did not end, where they are and why, or None."""
    if not left:
        return None
    frames = sys._current_frames()
    where = ", ".join(f"{handle.name} ({_whereabouts(frames.get(handle.ident))})" for handle in left)
    if not thread_stop.AVAILABLE:
        why = ("this Python cannot raise an exception in another thread to stop it: each keeps running in this "
               "process until its sample returns")
    else:
        why = ("the exception that stops a thread (WorkerStopped, raised in its sample) takes effect at the thread's "
               "next Python bytecode: a thread inside one call that does not return to Python until it ends (a long "
               "time.sleep, a blocking read, C code) keeps running in this process until that call returns, one "
               "whose sample catches BaseException until that sample returns")
    return (f"worker thread{'s' if len(left) > 1 else ''} {where} could not be stopped within {THREAD_STOP_WAIT:g} s: "
            f"{why}; worker_type='process' runs samples in worker processes, which a timeout or Ctrl-C ends")


def _whereabouts(frame) -> str:
    """Where a thread's innermost Python frame is, as ``file.py:line in function``."""
    if frame is None:
        return "ended meanwhile"
    code = frame.f_code
    return f"at {os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_name}"
