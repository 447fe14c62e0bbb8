"""``launch(fn, nprocs)``: run ``fn`` in ``nprocs`` fresh local processes that form one data-parallel job.

Each rank is a spawned interpreter whose environment is set before anything is imported: the launcher's
variables (``UNIDL_RANK`` ...), a free port on 127.0.0.1, gloo's loopback interface, ``TF_CONFIG`` naming
a free port per rank (for ``tf.distribute``, whose workers each listen on one), and one thread per
framework pool (``unidl.set_num_threads(1)``: N processes share the machine's cores). A rank that raises
or dies ends the job: the parent stops every other rank (they would wait in a collective for ever) and
raises ``DistributedError`` naming the rank, with its traceback (a rank its engine ends, ``environment.end_process``:
with the engine's message). No rank outlives ``launch``.
"""

from __future__ import annotations

import multiprocessing
import numbers
import os
import pickle
import queue
import time
import traceback

from unidl.distributed import environment
from unidl.errors import DistributedError

GRACE = 5.0  # seconds a rank gets to exit after SIGTERM before SIGKILL


def _run_rank(payload: bytes, rank: int, env: dict, results) -> None:
    """Body of one rank: environment first, then the user's function (unpickled only now, so that its
    module's imports see the environment), inside the process group."""
    os.environ.update(env)
    try:
        from unidl import distributed, threads

        threads.set_num_threads(int(env["UNIDL_NUM_THREADS"]))
        environment.on_end_process = lambda message, where: _report_ended(results, rank, message, where)
        fn, args = pickle.loads(payload)
        distributed.init(backend=env.get("UNIDL_BACKEND") or None, timeout=float(env["UNIDL_DISTRIBUTED_TIMEOUT"]))
        try:
            result = fn(*args)
        except BaseException as error:  # noqa: BLE001 - reported before the group goes down (see below)
            _report(results, rank, error)
            distributed.shutdown()
            raise SystemExit(1) from None
        distributed.shutdown()
        results.put(("ok", rank, pickle.dumps(result)))
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - every failure is reported to the parent, then the rank ends
        _report(results, rank, error)
        raise SystemExit(1) from None


def _report(results, rank, error) -> None:
    """Send the parent one rank's failure with the time it happened: a failing rank's exit makes its peers'
    collectives fail too (connection reset), and the parent names the rank that failed first."""
    results.put(("error", rank, f"{type(error).__name__}: {error}", traceback.format_exc(), time.time()))


def _report_ended(results, rank, message, where) -> None:
    """Send the parent the message of an engine that ends this rank (``environment.end_process``: no Python
    exception can leave its wait), with where the rank waited, before the process exits."""
    results.put(("error", rank, f"DistributedError: {message}", f"(ended by the engine; the rank waited in:)\n{where}",
                 time.time()))
    results.close()
    results.join_thread()  # (the message is sent before os._exit, which skips the queue's own flush)


def _check(fn, nprocs, args, timeout, port):
    if not callable(fn):
        raise TypeError(f"launch: fn must be callable, got {fn!r}")
    if not isinstance(nprocs, numbers.Integral) or isinstance(nprocs, bool) or nprocs < 1:
        raise ValueError(f"launch: nprocs must be a positive integer (the number of processes), got {nprocs!r}")
    if timeout is not None and (not isinstance(timeout, numbers.Real) or isinstance(timeout, bool)
                                or not timeout > 0):
        raise ValueError(f"launch: timeout must be None or a positive number of seconds, got {timeout!r}")
    if port is not None:
        if not isinstance(port, numbers.Integral) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"launch: port must be an integer 1..65535, got {port!r}")
        environment.check_port_free(environment.LOOPBACK, port, "launch")
    try:
        return pickle.dumps((fn, tuple(args)))
    except Exception as error:  # noqa: BLE001 - any pickling failure means the same thing here
        raise DistributedError(f"launch: fn and args must be picklable to reach the spawned ranks (a function "
                               f"defined at module level of an importable module): {error}") from None


def launch(fn, nprocs: int, backend: str | None = None, args=(), *, timeout: float | None = None,
           port: int | None = None, threads: int = 1, collective_timeout: float = 120.0) -> list:
    """Run ``fn(*args)`` on ranks 0 .. nprocs-1 of a new local job and return the ranks' results, in rank order.

    Args:
        fn: a module-level function (it is pickled into spawned processes); ``unidl.distributed.init()``
            has already run when it is called, and it may call ``fit``/``train_step`` unchanged.
        nprocs: processes to start (a positive integer).
        backend: unidl backend of the ranks (default: ``UNIDL_BACKEND`` or the default backend there).
        timeout: seconds the whole job may take; past it every rank is stopped and ``DistributedError``
            raised (None: no limit).
        port: rank 0's port on 127.0.0.1 (default: a free one; a port in use is an error).
        threads: framework threads per rank (``unidl.set_num_threads``).
        collective_timeout: seconds a rank's collective waits for the others before failing.

    Example::

        def train(rank_seed):
            ud.manual_seed(rank_seed)                       # same initial weights on every rank
            return ud.fit(model, loader, ...).as_dict()     # batches sharded, gradients averaged

        histories = ud.distributed.launch(train, nprocs=2, backend="torch", args=(0,))
    """
    payload = _check(fn, nprocs, args, timeout, port)
    if backend is not None:
        from unidl import backends

        backend = backends.canonical_name(backend)
    port = port or environment.free_port()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    common = {"UNIDL_WORLD_SIZE": str(nprocs), "UNIDL_MASTER_ADDR": environment.LOOPBACK,
              "UNIDL_MASTER_PORT": str(port), "UNIDL_NUM_THREADS": str(threads),
              "UNIDL_DISTRIBUTED_TIMEOUT": str(collective_timeout), "OMP_NUM_THREADS": str(threads)}
    if backend:
        common["UNIDL_BACKEND"] = backend
    interface = environment.loopback_interface()
    if interface:
        common.setdefault("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", interface))
    workers = environment.worker_addresses(port, nprocs)
    processes = []
    try:
        for rank in range(nprocs):
            env = dict(common, UNIDL_RANK=str(rank), UNIDL_LOCAL_RANK=str(rank),
                       TF_CONFIG=environment.tf_config(workers, rank))
            process = context.Process(target=_run_rank, args=(payload, rank, env, results),
                                      name=f"unidl-rank-{rank}")
            process.start()
            processes.append(process)
        return _collect(processes, results, timeout)
    finally:
        _stop(processes)
        results.close()


def _collect(processes, results, timeout) -> list:
    """Every rank's result, or ``DistributedError`` at the first rank that raised, died or ran past ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    outcomes: dict[int, object] = {}
    while len(outcomes) < len(processes):
        try:
            message = results.get(timeout=0.1)
        except queue.Empty:
            for rank, process in enumerate(processes):
                if rank not in outcomes and process.exitcode is not None:
                    try:  # its report may have arrived just after the poll above
                        message = results.get(timeout=1.0)
                    except queue.Empty:
                        raise DistributedError(f"rank {rank} of {len(processes)} died with exit code "
                                               f"{process.exitcode} before reporting; the other ranks were "
                                               f"stopped") from None
                    break
            else:
                if deadline is not None and time.monotonic() > deadline:
                    running = [rank for rank in range(len(processes)) if rank not in outcomes]
                    raise DistributedError(f"launch: ranks {running} of {len(processes)} still running after "
                                           f"timeout={timeout} s; every rank was stopped")
                continue
        if message[0] == "error":
            _, rank, summary, trace, _when = min([message] + _more_errors(results), key=lambda m: m[4])
            raise DistributedError(f"rank {rank} of {len(processes)} raised {summary}; the other ranks were "
                                   f"stopped.\nTraceback of rank {rank}:\n{trace}")
        _, rank, result = message
        outcomes[rank] = pickle.loads(result)
    for process in processes:
        process.join(GRACE)
    return [outcomes[rank] for rank in range(len(processes))]


def _more_errors(results, window: float = 1.0) -> list:
    """Other ranks' failures reported within ``window`` seconds of the first one the parent read."""
    found, deadline = [], time.monotonic() + window
    while time.monotonic() < deadline:
        try:
            message = results.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if message[0] == "error":
            found.append(message)
    return found


def _stop(processes) -> None:
    """SIGTERM every rank still running, SIGKILL those that do not exit within ``GRACE``; reap them all."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + GRACE
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
