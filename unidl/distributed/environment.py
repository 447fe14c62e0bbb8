"""Where this process sits in a data-parallel job, read from the environment a launcher set.

Three launchers are understood, checked in this order: unidl's own variables (``UNIDL_RANK``,
``UNIDL_WORLD_SIZE``, ``UNIDL_LOCAL_RANK``, ``UNIDL_MASTER_ADDR``, ``UNIDL_MASTER_PORT``), torchrun's
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and TensorFlow's
``TF_CONFIG`` (``cluster.worker`` addresses and ``task.index``). None of them: one process, rank 0 of 1.
A world size above 1 needs a rank and a port (1..65535); torchrun's variables need ``MASTER_ADDR`` too, as
torch's ``env://`` does, where unidl's take 127.0.0.1 for a missing ``UNIDL_MASTER_ADDR`` (``launch`` always sets
it). ``TF_CONFIG`` must name workers only, each as ``host:port``: worker 0 is rank 0, so a separate 'chief' task,
which TensorFlow counts beside the workers, is refused rather than left a second rank 0.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from unidl.errors import DistributedError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Rendezvous:
    """This process's rank among ``world_size`` processes and where rank 0 listens (``address:port``)."""

    rank: int
    world_size: int
    local_rank: int
    address: str
    port: int | None
    source: str  # which launcher's variables these came from, for error messages


def local_rank_of(rank: int) -> int:
    """This process's rank among those of its machine (which GPU it takes), from the launcher's variables; ``rank``
    where they name none."""
    try:
        return rendezvous().local_rank
    except DistributedError:
        return rank


def no_own_gpu(local_rank: int, gpus: int, how: str = "CUDA_VISIBLE_DEVICES"):
    """The ``DeviceUnavailableError`` of a rank of local rank ``local_rank`` on a machine that shows each process
    ``gpus`` GPUs, one per process, where it has none of its own (two ranks would share one GPU); ``how``: the
    setting that gives each process its own."""
    from unidl.errors import DeviceUnavailableError

    return DeviceUnavailableError(f"local rank {local_rank} of a data-parallel job has no GPU of its own: this "
                                  f"machine shows it {gpus} GPUs, one per process; start at most {gpus} processes "
                                  f"per machine, or give each its own with {how}, or train on 'cpu'")


MAX_PORT = 65535


def _integer(environ, name: str, minimum: int, maximum: int | None = None) -> int:
    text = environ[name]
    try:
        value = int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r} is not an integer") from None
    if maximum is not None and not minimum <= value <= maximum:
        raise DistributedError(f"{name}={value} must be in {minimum}..{maximum}")
    if value < minimum:
        raise DistributedError(f"{name}={value} must be >= {minimum}")
    return value


def _from_variables(environ, prefix: str, source: str) -> Rendezvous:
    names = {key: prefix + key for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    missing = [names[key] for key in ("WORLD_SIZE",) if names[key] not in environ]
    if missing:
        raise DistributedError(f"{names['RANK']} is set but {', '.join(missing)} is not ({source}); set "
                               f"{names['RANK']}, {names['WORLD_SIZE']}, {names['MASTER_ADDR']} and "
                               f"{names['MASTER_PORT']} together")
    rank, world_size = _integer(environ, names["RANK"], 0), _integer(environ, names["WORLD_SIZE"], 1)
    if rank >= world_size:
        raise DistributedError(f"{names['RANK']}={rank} must be below {names['WORLD_SIZE']}={world_size}")
    local_rank = _integer(environ, names["LOCAL_RANK"], 0) if names["LOCAL_RANK"] in environ else rank
    port = _integer(environ, names["MASTER_PORT"], 1, MAX_PORT) if names["MASTER_PORT"] in environ else None
    if world_size > 1 and port is None:
        raise DistributedError(f"{names['WORLD_SIZE']}={world_size} needs {names['MASTER_PORT']}, the port rank 0 "
                               f"listens on ({source})")
    address = environ.get(names["MASTER_ADDR"]) or None
    if world_size > 1 and address is None and not prefix:
        # (torch's env:// requires it; a default address would send each rank of a job of several machines to its
        # own loopback, to wait there until the timeout)
        raise DistributedError(f"{names['WORLD_SIZE']}={world_size} needs {names['MASTER_ADDR']}, the address rank 0 "
                               f"listens on ({source}, as torch's env:// requires it); set MASTER_ADDR=127.0.0.1 "
                               f"for a job on this machine")
    return Rendezvous(rank, world_size, local_rank, address or LOOPBACK, port, source)


def tf_config_workers(text: str) -> tuple[list[str], int]:
    """The ``host:port`` addresses of ``cluster.worker`` in ``TF_CONFIG`` (``text``) and this process's index among
    them, checked: a multi-worker configuration of workers only (a 'chief' would be a second process claiming rank
    0: unidl's rank 0 is worker 0, which TensorFlow's strategy makes its chief when none is named), and every
    address a host and a port."""
    try:
        config = json.loads(text)
        workers, task = list(config["cluster"]["worker"]), config["task"]
        rank, kind = int(task["index"]), task.get("type", "worker")
        others = sorted(set(config["cluster"]) - {"worker"})
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DistributedError(f"TF_CONFIG is not a multi-worker configuration ({error!r}); expected "
                               f'{{"cluster": {{"worker": ["host:port", ...]}}, "task": {{"type": "worker", '
                               f'"index": N}}}}') from None
    fix = ("unidl's data-parallel jobs run workers only, worker 0 being rank 0 (TensorFlow's chief where none is "
           "named): list every process under cluster.worker, the chief's address first, each task of type 'worker'")
    if others:
        raise DistributedError(f"TF_CONFIG's cluster names task types {others} besides 'worker'; {fix}")
    if kind != "worker":
        raise DistributedError(f"TF_CONFIG's task is of type {kind!r}; {fix}")
    if not 0 <= rank < len(workers):
        raise DistributedError(f"TF_CONFIG task {task!r} is not one of the {len(workers)} workers")
    for index, worker in enumerate(workers):
        host, _, port = str(worker).rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
            raise DistributedError(f"TF_CONFIG cluster.worker[{index}] is {worker!r}, not an address with a port: "
                                   f"expected 'host:port' (such as '127.0.0.1:2000', a port in 1..{MAX_PORT})")
    return [str(worker) for worker in workers], rank


def _from_tf_config(text: str) -> Rendezvous:
    workers, rank = tf_config_workers(text)
    address, _, port = workers[0].rpartition(":")
    return Rendezvous(rank, len(workers), rank, address, int(port), "TF_CONFIG")


def rendezvous(environ=None) -> Rendezvous:
    """This process's place in the job, from the first launcher whose variables are set (module docstring)."""
    environ = os.environ if environ is None else environ
    for prefix, source in (("UNIDL_", "unidl's variables"), ("", "torchrun's variables")):
        if prefix + "RANK" in environ:
            return _from_variables(environ, prefix, source)
        if environ.get(prefix + "WORLD_SIZE", "").strip().isdigit() and int(environ[prefix + "WORLD_SIZE"]) > 1:
            # (without its rank a process of the job would train alone, its peers waiting for it)
            size = environ[prefix + "WORLD_SIZE"]
            raise DistributedError(f"{prefix}WORLD_SIZE={size} is set but {prefix}RANK is not ({source}): each "
                                   f"process of the job needs its rank; set {prefix}RANK (0 .. {int(size) - 1}) in "
                                   f"each, or unset {prefix}WORLD_SIZE for a process that trains alone")
    if environ.get("TF_CONFIG"):
        return _from_tf_config(environ["TF_CONFIG"])
    return Rendezvous(0, 1, 0, LOOPBACK, None, "no launcher (one process)")


def started_by_torchrun(environ=None) -> bool:
    """Whether torchrun's agent started this process (it sets ``TORCHELASTIC_RUN_ID`` in every worker it starts):
    its rendezvous store then already listens on ``MASTER_PORT``, where an engine that serves rank 0's port itself
    (JAX's coordination service) cannot listen."""
    environ = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in environ


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port nobody listens on at ``address`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def worker_addresses(port: int, nprocs: int, address: str = LOOPBACK) -> list[str]:
    """``host:port`` of each of ``nprocs`` local workers: rank 0 on ``port``, the others on free ports (engines
    whose every worker listens, as ``tf.distribute``'s do; the others listen on rank 0's port only)."""
    ports = [int(port)]
    while len(ports) < nprocs:
        candidate = free_port(address)
        if candidate not in ports:
            ports.append(candidate)
    return [f"{address}:{p}" for p in ports]


def tf_config(workers: list[str], rank: int) -> str:
    """The ``TF_CONFIG`` of worker ``rank`` of ``workers`` (TensorFlow's multi-worker cluster description)."""
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": rank}})


def check_port_free(address: str, port: int, what: str) -> None:
    """Raise ``DistributedError`` naming ``port`` if another process listens on it at ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, int(port)))
        except OSError as error:
            raise DistributedError(f"{what}: port {port} on {address} is in use ({error.strerror}); pick a free "
                                   f"port, or leave it out and unidl.distributed.launch picks one") from None


def loopback_interface() -> str | None:
    """The name of the loopback network interface ('lo' on Linux, 'lo0' on macOS), or None."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def sigterm_back_to_python() -> None:
    """Give SIGTERM back the handler Python holds for it (the default action, ending the process, or the user's
    own), after an engine started. The coordination service of TensorFlow's strategy and of JAX's
    ``jax.distributed`` installs a C++ SIGTERM handler (its preemption notifier) that only records the signal: a
    rank told to stop, by ``unidl.distributed.launch`` when another rank failed, by a job scheduler or by ``kill``,
    ran on (in a collective, until its timeout) and had to be killed. Python can install a handler in the main
    thread only; an engine started elsewhere keeps its framework's."""
    import signal
    import threading

    handler = signal.getsignal(signal.SIGTERM)  # (None: one installed outside Python, by an embedding program)
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


#: Called with the message of ``end_process`` before the process ends: ``launch``'s rank reports it to the parent
#: as that rank's error (None: nobody to tell)
on_end_process = None


def end_process(message: str) -> None:
    """End this process at once with exit status 1, after writing ``message`` to stderr (and handing it to
    ``on_end_process``): for an engine whose wait inside the framework (a collective that runs in XLA) no Python
    exception can interrupt, as JAX's coordination service ends a process whose peer died. Callable from any
    thread; ``os._exit``: no cleanup runs, since the main thread is still inside that wait."""
    import sys
    import threading
    import traceback

    main = sys._current_frames().get(threading.main_thread().ident)  # where the rank was left waiting
    where = "".join(traceback.format_stack(main)) if main is not None else ""
    try:
        print(f"unidl: {message}\nWhere the main thread waited:\n{where}", file=sys.stderr, flush=True)
        if on_end_process is not None:
            on_end_process(message, where)
    finally:
        os._exit(1)
