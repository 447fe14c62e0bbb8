"""The process group of a data-parallel job: ``init`` joins it through the backend's own engine (torch's
``torch.distributed``, TensorFlow's ``MultiWorkerMirroredStrategy``, JAX's ``jax.distributed``), and ``rank``,
``world_size``, ``barrier`` and ``all_reduce`` ask that engine.

The front end never talks to a framework here: ``Backend.distributed_engine()`` returns the engine, which
lives in ``unidl/backends/<name>/distributed.py``. One process (no launcher's variables) is a group of
one, with no engine started: the same script runs unchanged with and without a launcher.

``init(devices=[...])``: one process that trains one replica on each of several devices, through the engine's
``start_devices`` (TensorFlow's ``MirroredStrategy``). The group is still one process: ``rank()`` and
``world_size()`` count processes (what loaders shard by, what writes files), and ``num_replicas()`` counts the
replicas; the engine splits each batch over the devices inside the step.
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass

import numpy as np

from unidl.distributed import environment
from unidl.errors import DistributedError, DistributedNotInitializedError

REDUCE_OPS = ("sum", "mean", "max", "min")
"""The reductions ``all_reduce`` offers (its ``op``)."""
DEFAULT_TIMEOUT = 300.0


@dataclass(eq=False)  # (one group equals itself only: a step's or compile's job is that group, not a like one)
class ProcessGroup:
    rank: int
    world_size: int
    local_rank: int
    backend: object       # the unidl backend whose engine joined the group
    engine: object        # that engine, or None for a group of one
    devices: tuple = ()   # init(devices=...): this process's devices, one replica each (() : one device)
    device_engine: object = None  # the engine running those replicas


_group: ProcessGroup | None = None


def current() -> ProcessGroup | None:
    """The group this process joined, or None (no error: for code that works with and without one)."""
    return _group


def sharding() -> tuple[int, int] | None:
    """``(rank, world_size)`` when this process trains with others (world size > 1), else None."""
    group = _group
    return (group.rank, group.world_size) if group is not None and group.world_size > 1 else None


def _require(what: str) -> ProcessGroup:
    if _group is None:
        raise DistributedNotInitializedError(
            f"unidl.distributed.{what}() needs the process group: call unidl.distributed.init() first (in every "
            f"process; unidl.distributed.launch and `unidl train --nproc N` call it for you)")
    return _group


def init(backend: str | None = None, timeout: float = DEFAULT_TIMEOUT, devices=None) -> ProcessGroup:
    """Join the data-parallel job this process was launched into (see ``unidl.distributed``).

    ``backend``: the unidl backend whose engine carries the gradients (default: the current backend).
    ``timeout``: seconds a collective waits for the other ranks before failing. ``devices``: in a process
    started without a launcher, two or more devices ('cpu:0', 'cpu:1', 'cuda:0', ...) that train one replica
    each, the batch split over them (tensorflow backend: ``tf.distribute.MirroredStrategy``; the other
    backends raise ``DistributedError`` naming what they support). Calling ``init`` again in the same group
    returns it; a second group needs ``shutdown()`` first.
    """
    global _group
    from unidl import config

    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    devices = _check_devices(devices)
    place = environment.rendezvous()
    backend_object = config.backend() if backend is None else _load(backend)
    if _group is not None:
        if (_group.rank, _group.world_size, _group.backend, _group.devices) == (place.rank, place.world_size,
                                                                                backend_object, devices):
            return _group
        raise DistributedError(f"this process already joined a group (rank {_group.rank} of {_group.world_size} "
                               f"on {_group.backend.name}); call unidl.distributed.shutdown() first")
    engine = None
    if place.world_size > 1:
        engine = backend_object.distributed_engine()
        if engine is None:
            raise DistributedError(f"the {backend_object.name} backend has no distributed engine in unidl; "
                                   f"data-parallel training runs on the torch, tensorflow and jax backends and "
                                   f"on Keras-on-TensorFlow, Keras-on-torch and Keras-on-JAX")
        # (torchrun's own agent already listens on MASTER_PORT, and the engine joins through it)
        if place.rank == 0 and place.source == "unidl's variables" and place.address in (environment.LOOPBACK,
                                                                                       "localhost"):
            environment.check_port_free(place.address, place.port, f"rank 0 of {place.world_size} "
                                                                   f"({place.source})")
        engine.start(place.rank, place.world_size, place.address, place.port, float(timeout))
    device_engine = _start_devices(backend_object, devices, place, float(timeout)) if devices else None
    _group = ProcessGroup(place.rank, place.world_size, place.local_rank, backend_object, engine, devices,
                          device_engine)
    return _group


def _check_devices(devices) -> tuple:
    """``init``'s ``devices`` as a tuple of two or more names (() for None), or a ``ValueError``."""
    if devices is None:
        return ()
    if isinstance(devices, str) or not all(isinstance(d, str) for d in devices):
        raise ValueError(f"devices must be a list of device names such as ['cpu:0', 'cpu:1'], got {devices!r}")
    devices = tuple(devices)
    if len(devices) < 2:
        raise ValueError(f"devices must name two or more devices (one replica each), got {list(devices)}; for one "
                         f"device leave it out and use ud.set_device")
    return devices


def _start_devices(backend_object, devices, place, timeout):
    """The engine running one replica on each of ``devices`` in this process, started; or ``DistributedError``."""
    if place.world_size > 1:
        raise DistributedError(f"devices={list(devices)} in a job of {place.world_size} processes "
                               f"({place.source}): unidl runs one device per process there; start one process per "
                               f"device (unidl.distributed.launch(fn, nprocs=N)) and leave devices out")
    engine = backend_object.distributed_engine()
    if engine is None or not hasattr(engine, "start_devices"):
        raise DistributedError(f"the {backend_object.name} backend cannot train on several devices of one process "
                               f"in unidl (devices={list(devices)}); the tensorflow backend does "
                               f"(tf.distribute.MirroredStrategy)")
    engine.start_devices(devices, timeout)
    return engine


def _load(name: str):
    from unidl import backends

    return backends.load(name)


def shutdown() -> None:
    """Leave the group (the engine's resources are released); a no-op without one."""
    global _group
    from unidl import config

    group, _group = _group, None
    config._set_local_gpu(0)  # (an engine that gave each rank its own GPU: 'cuda' is cuda:0 again)
    if group is not None and group.engine is not None:
        group.engine.stop()
    if group is not None and group.device_engine is not None:
        group.device_engine.stop()


def job_of_step() -> ProcessGroup | None:
    """The job a step built now trains in: the group this process joined where it has an engine (several processes,
    or several devices of this one: ``init(devices=...)``, whose step runs in the engine's replicas), else None (a
    step built outside one, or in a group of one process on one device, depends on no engine)."""
    if _group is None or (_group.engine is None and _group.device_engine is None):
        return None
    return _group


def _place(group: ProcessGroup) -> str:
    """Where ``group`` trains, for an error: its rank and backend, and its devices where it has several."""
    devices = f", devices {list(group.devices)}" if group.devices else ""
    return f"rank {group.rank} of {group.world_size} on {group.backend.name}{devices}"


def check_job_of_step(job: ProcessGroup | None, what: str) -> None:
    """A ``DistributedError`` where ``what`` (a step) was built in another place than the job this process is in now
    (``job`` is ``job_of_step()`` when it was built): built in a job that this process has left since
    (``shutdown()``), the step carries the job's collectives (DDP's, the strategy's, the jax engine's callback) and
    would fail in them or wait for ranks that left; built before this process joined its job, it carries none and
    would train this rank alone with its own gradients, unaveraged (on torch silently). Either is refused before
    it runs."""
    now = job_of_step()
    if job is now:
        return
    if job is None:
        raise DistributedError(f"{what} was built before this process joined its data-parallel job ({_place(now)}): "
                               f"it holds none of the job's collectives, so this rank would train alone on its own "
                               f"gradients, unaveraged; build the step (and model and optimizer: ud.train_step or "
                               f"fit) after unidl.distributed.init()")
    raise DistributedError(f"{what} was built in a data-parallel job ({_place(job)}) that this process has left "
                           f"(unidl.distributed.shutdown()): its gradients would be averaged over ranks (or devices) "
                           f"that are gone; build a new step (and model and optimizer, ud.train_step or fit) outside "
                           f"the job, or call it before shutdown()")


def is_initialized() -> bool:
    """True after ``init()`` (and before ``shutdown()``)."""
    return _group is not None


def rank() -> int:
    """This process's rank, 0 .. world_size - 1."""
    return _require("rank").rank


def local_rank() -> int:
    """This process's rank among the processes of its machine (which GPU it takes)."""
    return _require("local_rank").local_rank


def world_size() -> int:
    """How many processes train together."""
    return _require("world_size").world_size


def num_replicas() -> int:
    """How many replicas of the model train together: ``world_size()`` times this process's devices
    (``init(devices=...)``; one without)."""
    group = _require("num_replicas")
    return group.world_size * max(1, len(group.devices))


def is_main() -> bool:
    """True on rank 0, the process that writes checkpoints and logs."""
    return _require("is_main").rank == 0


def barrier() -> None:
    """Wait until every rank reaches this call."""
    group = _require("barrier")
    if group.engine is not None:
        group.engine.barrier()


def all_reduce(value, op: str = "sum"):
    """``value`` (NumPy array, number or the backend's tensor) reduced over every rank with ``op``
    ('sum', 'mean', 'max', 'min'); every rank gets the result, as a tensor of the group's backend.
    ``value`` itself is left unchanged."""
    group = _require("all_reduce")
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce op must be one of {list(REDUCE_OPS)}, got {op!r}")
    backend = group.backend
    tensor = value if backend.is_tensor(value) else backend.tensor(np.asarray(value))
    if group.engine is None:
        return backend.tensor(tensor)
    return group.engine.all_reduce(tensor, op)


def broadcast_value(value: int) -> int:
    """Rank 0's integer on every rank (a drawn seed that all ranks must share)."""
    group = _group
    if group is None or group.engine is None:
        return int(value)
    reduced = group.engine.all_reduce(group.backend.tensor(np.asarray(int(value) if group.rank == 0 else 0,
                                                                       dtype=np.int64)), "sum")
    return int(group.backend.to_numpy(reduced))


def mean_over_ranks(logs: dict, count: int) -> dict:
    """Per-rank means of ``count`` samples each -> the means over every rank's samples (one all-reduce)."""
    group = _group
    if group is None or group.engine is None or not logs:
        return logs
    keys = [key for key, value in logs.items() if isinstance(value, numbers.Real) and not isinstance(value, bool)]
    sums = np.asarray([float(logs[key]) * count for key in keys] + [float(count)], dtype=np.float64)
    reduced = group.backend.to_numpy(group.engine.all_reduce(group.backend.tensor(sums, dtype="float64"), "sum"))
    total = reduced[-1]
    return dict(logs, **{key: float(reduced[i] / total) for i, key in enumerate(keys)}) if total else logs


def rank_from_environment() -> int:
    """This process's rank by the launcher's variables, without joining (0 without a launcher)."""
    if _group is not None:
        return _group.rank
    try:
        return environment.rendezvous(os.environ).rank
    except DistributedError:
        return 0


def sum_over_ranks(*values: float) -> tuple:
    """Each of ``values`` summed over every rank (one all-reduce); the values themselves without a group."""
    group = _group
    if group is None or group.engine is None:
        return values
    sums = group.backend.tensor(np.asarray(values, dtype=np.float64), dtype="float64")
    reduced = group.backend.to_numpy(group.engine.all_reduce(sums, "sum"))
    return tuple(type(value)(total) for value, total in zip(values, reduced))


_warned_uneven: set = set()  # the loaders' (length, batch_size, drop_last, replicas) warned of in this process


def check_training_loader(loader) -> None:
    """In a data-parallel job (several ranks, or several devices in this process), refuse a loader whose last
    batch leaves a replica without a sample (its step would average nothing), before any rank trains; warn once
    of one whose batches do not split equally (``warn_uneven_batches``)."""
    replicas = num_replicas() if _group is not None else 1
    if replicas >= 2 and hasattr(loader, "smallest_share"):
        check_shares(loader, replicas)
        warn_uneven_batches(loader, replicas)


def check_shares(loader, replicas: int) -> None:
    """A ``ValueError`` where a batch of ``loader`` leaves one of ``replicas`` (the ranks of this job, or the devices
    of this process) without a sample, whose step would average nothing (a NaN loss, all-reduced to every rank):
    ``fit`` checks before any rank trains, a sharded ``DataLoader`` as each of its iterations begins (a loop of
    the user's own)."""
    if loader.smallest_share(replicas) >= 1:
        return
    if _group.devices:  # (one process: a job of several refuses devices)
        sharers, per, one = f"{len(_group.devices)} devices in this process", "replicas", "a device"
        fix = "leaves every batch at least one sample per replica"
    else:
        sharers, per, one = f"{replicas} ranks", "ranks", "a rank"
        fix = "is at least the number of ranks and leaves a last batch of at least that many"
    length, batch_size = loader.samples_per_epoch, loader.batch_size
    raise ValueError(f"with {sharers}, a batch of the loader ({length} samples, batch_size={batch_size}, last batch "
                     f"{length % batch_size or batch_size}) has fewer samples than {per}, so {one} would train on "
                     f"none; use drop_last=True, or a batch_size that {fix}")


def warn_uneven_batches(loader, replicas: int) -> None:
    """A ``UserWarning``, once per loader's settings in this process, where a batch of ``loader`` splits unevenly
    over ``replicas``: the engines average each replica's mean gradient with equal weight (PyTorch DDP's rule), so
    a step over shares of unequal sizes weighs the samples of the smaller share more than one process does. Not
    corrected: each share's weight would be its size over the batch's only for a loss that is a plain mean over the
    samples, which a step cannot know (a sum, a class-weighted or ``ignore_index`` mean, ``sample_weight``).
    Rank 0 alone warns, as it alone prints ``fit``'s progress: every rank's loader is the same."""
    size = loader.uneven_batch(replicas)
    key = (loader.samples_per_epoch, loader.batch_size, loader.drop_last, replicas)
    if size is None or key in _warned_uneven or not is_writer():
        return
    _warned_uneven.add(key)
    sharers = f"{len(_group.devices)} devices in this process" if _group.devices else f"{replicas} ranks"
    # (drop_last helps only where the last batch alone splits unevenly)
    fix = (f"use drop_last=True, or a dataset length divisible by {replicas}" if key[1] % replicas == 0 else
           f"use a batch_size divisible by {replicas} (and drop_last=True, or a dataset length divisible by it)")
    warnings.warn(f"with {sharers}, a batch of {size} samples of the loader ({key[0]} samples, "
                  f"batch_size={key[1]}) splits unevenly, and each share's mean gradient counts equally in the "
                  f"average (as in PyTorch DDP), so that step trains other weights than one process with the same "
                  f"batch; {fix}, for the weights of one process", UserWarning, stacklevel=4)


def is_writer() -> bool:
    """True where files and logs are written: outside a group, or on rank 0 of one (no error before ``init``)."""
    return _group is None or _group.rank == 0
