"""JAX's data-parallel engine for unidl: ``jax.distributed`` joins the job (its coordination service on rank 0's
address and port), and XLA's CPU collectives (gloo) average the gradients of the jax backend's training step.

One device per process: a ``Mesh`` over every process's first CPU device, named ``"ranks"``. A reduction
(``reduce_on_host``) makes each rank's NumPy values one global array sharded over that mesh, one row per rank, and
runs a compiled ``shard_map`` of ``psum``/``pmax``/``pmin`` over it: one collective per dtype of the values. The
training step stays one compiled program (state in, state out): ``average_in_step`` is an ``io_callback`` inside
it that runs that reduction between the backward and the update, one all-reduce per step. With ``accumulate``
N > 1 each rank keeps its own window and reduces it, with its finite flag, in one all-reduce at the window's last
micro-step (``window_in_step``: the callback inside a ``lax.cond`` on that place), as torch's ``no_sync()``
accumulation and TensorFlow's engine do. A watchdog bounds each collective's wait by the job's collective timeout
(``_Watchdog``: past it the process ends with a message naming the rank and the collective).
``jax.distributed.initialize`` must run before XLA starts
(the first array or device query of the process): ``unidl.distributed.init`` at the top of a script, as
``unidl.distributed.launch`` calls it.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unidl.errors import DistributedError

_AXIS = "ranks"
_job = None  # the running ``_Job``, None outside a job of several processes

_COLLECTIVES = {"sum": jax.lax.psum, "mean": jax.lax.psum, "max": jax.lax.pmax, "min": jax.lax.pmin}


#: a reduction's values are padded with zeros to a power of two from ``_SMALLEST_REDUCTION`` up to
#: ``_REDUCTION_BUCKET`` elements, and to a multiple of it above: the compiled collective is one program per length
#: and dtype, and the reductions of a job (its steps' gradients, the broadcast of each model's weights, a loader's
#: seed, a guard's flags) have many lengths, each a compilation of 0.2 s or more on a CPU where the padding costs
#: microseconds (at most 64K elements, or doubling one of fewer)
_SMALLEST_REDUCTION, _REDUCTION_BUCKET = 64, 1 << 16


def _padded_size(size: int) -> int:
    """The length a reduction of ``size`` values runs at (``_REDUCTION_BUCKET``)."""
    if size <= _REDUCTION_BUCKET:
        return max(_SMALLEST_REDUCTION, 1 << max(size - 1, 0).bit_length())
    return -(-size // _REDUCTION_BUCKET) * _REDUCTION_BUCKET


class _Watchdog:
    """Bounds the wait of this rank's collectives by the job's collective ``timeout`` (seconds): gloo's collectives
    inside XLA take no deadline, so a live peer that stops calling them (stuck, or held up by a long evaluation)
    would leave this rank waiting for ever. A thread looks every ``timeout / 4`` seconds (1 s at most) at the
    collective in progress; one that has waited longer than ``timeout`` ends the process with exit status 1 and a
    message naming the rank, the collective and the timeout (``environment.end_process``: no Python exception can
    leave XLA's wait), as JAX's coordination service ends a process whose peer died."""

    def __init__(self, rank: int, world_size: int, timeout: float):
        import threading

        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        self.waiting = None  # (what, since when): the collective in progress
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, name="unidl-jax-collective-watchdog", daemon=True).start()

    def _watch(self):
        from unidl.distributed.environment import end_process

        while not self.stopped.wait(min(1.0, self.timeout / 4)):
            waiting = self.waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                end_process(f"rank {self.rank} of {self.world_size} waited {time.monotonic() - waiting[1]:.0f} s, "
                            f"past the job's collective timeout of {self.timeout:g} s, for the other ranks in the "
                            f"jax engine's {waiting[0]}: a rank is stuck or held up (a long evaluation or I/O "
                            f"between steps) and stopped calling collectives; this process ends (exit status 1), "
                            f"since XLA's gloo collective cannot be interrupted. Raise the timeout "
                            f"(unidl.distributed.init(timeout=...), launch(collective_timeout=...)) if the ranks "
                            f"legitimately take longer between collectives")


class _Job:
    """This process's place in the job: the mesh of one CPU device per rank, its own device there, and the watchdog
    of its collectives."""

    def __init__(self, rank: int, world_size: int, timeout: float):
        self.world_size = world_size
        self.all_reduces = 0  # the collectives run so far (``all_reduces_run``)
        # (CPU devices on a GPU machine too: the reduction's values are NumPy arrays on the host, and gloo is
        # JAX's CPU collectives)
        self.devices = [jax.local_devices(process_index=index, backend="cpu")[0] for index in range(world_size)]
        self.own = jax.local_devices(backend="cpu")[0]
        mesh = Mesh(np.array(self.devices), (_AXIS,))
        self.rows = NamedSharding(mesh, PartitionSpec(_AXIS))
        # one compiled function per collective ("sum" and "mean" share psum's: two were two compilations of each
        # length, one for the broadcast of the weights and one for the steps' gradients)
        compiled = {collective: jax.jit(jax.shard_map(functools.partial(collective, axis_name=_AXIS), mesh=mesh,
                                                      in_specs=PartitionSpec(_AXIS), out_specs=PartitionSpec(),
                                                      check_vma=False))
                    for collective in set(_COLLECTIVES.values())}
        self.reducers = {op: compiled[collective] for op, collective in _COLLECTIVES.items()}
        self.watchdog = _Watchdog(rank, world_size, timeout)  # last: nothing after it can fail and leave it running

    def reduce(self, flat: np.ndarray, op: str) -> np.ndarray:
        """``flat`` (a 1-D NumPy array) reduced over the ranks with ``op``: every rank gets the same values."""
        self.all_reduces += 1
        padded = np.zeros(_padded_size(flat.size), flat.dtype)  # (zeros: every op reduces each element on its own,
        padded[:flat.size] = flat  # and the padding is cut off again)
        row = jax.device_put(padded[None], self.own)
        rows = jax.make_array_from_single_device_arrays((self.world_size, padded.size), self.rows, [row])
        self.watchdog.waiting = (f"all-reduce #{self.all_reduces} ({op} of {flat.size} {flat.dtype} values)",
                                 time.monotonic())
        try:
            # under one default device wherever it is called from (a step's callback thread, a device scope of
            # fit's): jit keys its programs on that setting too, which made the same reduction compile again
            with jax.default_device(self.own):
                result = np.asarray(self.reducers[op](rows).addressable_data(0)).reshape(-1)[:flat.size]
        finally:
            self.watchdog.waiting = None
        if op != "mean":
            return result
        return result / self.world_size if jnp.issubdtype(result.dtype, jnp.inexact) else result // self.world_size


class Engine:
    """``jax.distributed`` and XLA's CPU collectives (see ``unidl.distributed.process_group``); on Keras-on-JAX
    the keras backend's engine too (``unidl/backends/keras/distributed.py``)."""

    #: Keras's train step on this engine (Keras-on-JAX, one compiled program) averages its loss and gradients over
    #: the ranks inside the step (``reduce_in_step``), Keras scaling no loss per replica here (TensorFlow's strategy
    #: does, so that its sum is the mean)
    averages_in_step = True

    def __init__(self, backend):
        self._backend = backend

    def start(self, rank, world_size, address, port, timeout):
        global _job
        from jax._src import xla_bridge  # whether XLA started (no public query)

        from unidl import config
        from unidl.distributed.environment import local_rank_of, sigterm_back_to_python

        _refuse_torchrun(rank, world_size)
        if xla_bridge.backends_are_initialized():
            raise DistributedError(
                "the jax engine must start before JAX's first array or device query in this process "
                "(jax.distributed.initialize joins the job before XLA starts): call unidl.distributed.init() at the "
                "top of the script, before building a model or a tensor")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        seconds = max(1, math.ceil(timeout))
        own_gpu = local_device_ids(local_rank_of(rank), visible_gpus(), config._requested_device())
        # the coordination service ends a process whose peer stopped answering for ``timeout`` seconds (its own
        # fatal error, not a hang), and a rank that leaves waits as long for the others at the shutdown barrier
        try:
            jax.distributed.initialize(f"{address}:{port}", world_size, rank, local_device_ids=own_gpu,
                                       initialization_timeout=seconds, heartbeat_timeout_seconds=seconds,
                                       shutdown_timeout_seconds=seconds)
        except RuntimeError as error:  # (JaxRuntimeError too)
            raise DistributedError(f"rank {rank} of {world_size} could not join the job through jax.distributed "
                                   f"at {address}:{port} within {seconds} s: {error}") from error
        sigterm_back_to_python()
        try:
            _job = _Job(rank, world_size, timeout)
        except BaseException:  # (no group: init raises, and this process is in no job, jax.distributed's included)
            jax.distributed.shutdown()
            raise

    def barrier(self):
        _job.reduce(np.zeros(1, np.int32), "sum")  # a collective returns once every rank joined it

    def all_reduce(self, tensor, op):
        value = np.asarray(tensor)
        return self._backend.tensor(_job.reduce(value.reshape(-1), op).reshape(value.shape))

    @staticmethod
    def reduce_in_step(values, op="mean") -> list:
        """``values`` (arrays, inside a trace or not; None kept) reduced over the ranks with ``op``: one
        ``io_callback`` (``reduce_on_host``: one collective per dtype among them)."""
        present = [v for v in values if v is not None]
        reduced = iter(_reduced_in_step(present, op) if present else [])
        return [None if v is None else next(reduced) for v in values]

    window_in_step = staticmethod(lambda sums, has_gradient, finite, closes: window_in_step(
        sums, has_gradient, finite, closes))  # (Keras-on-JAX's window: keras/distributed.py)
    average_in_step = staticmethod(lambda loss, grads, params: average_in_step(
        loss, grads, params))  # (Keras-on-JAX's step: a parameter this rank's loss did not reach counts zeros)

    @staticmethod
    def from_rank_0(values) -> list:
        """``values`` (NumPy arrays: a model's weights) as rank 0 has them, on every rank (``broadcast_from_rank_0``'s
        sum to which only rank 0 contributes)."""
        own = [np.asarray(v) if jax.process_index() == 0 else np.zeros(v.shape, v.dtype) for v in values]
        return reduce_on_host(own, "sum")

    def stop(self):
        global _job
        if _job is not None:
            _job.watchdog.stopped.set()
        _job = None
        jax.distributed.shutdown()


def visible_gpus(platforms: str | None = None) -> int:
    """How many GPUs JAX would show this process, counted without starting XLA (``local_device_ids`` must be chosen
    before it starts): none where JAX's ``platforms`` (default: its ``jax_platforms`` setting, which
    ``JAX_PLATFORMS`` sets) name neither 'cuda' nor 'gpu' (a CPU-only job on a GPU machine), none without a jax
    CUDA plugin package, else ``gpus_listed()``. ROCm's are not counted."""
    from unidl.backends.jax.backend import _installed

    platforms = jax.config.jax_platforms if platforms is None else platforms
    if platforms and not {name.strip().lower() for name in platforms.split(",")} & {"cuda", "gpu"}:
        return 0
    return gpus_listed() if _installed("jax-cuda13-plugin") or _installed("jax-cuda12-plugin") else 0


def gpus_listed(environ=None, driver_gpus: str = "/proc/driver/nvidia/gpus") -> int:
    """The GPUs CUDA would show this process: the entries of ``CUDA_VISIBLE_DEVICES`` where it is set, up to the
    first that names no GPU (CUDA ignores the rest: '-1' hides them all), else those the NVIDIA driver lists
    (``driver_gpus``, one folder each on Linux; 0 where there is none)."""
    import os

    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        try:
            return len(os.listdir(driver_gpus))
        except OSError:
            return 0
    count = 0
    for entry in listed.split(","):
        entry = entry.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        count += 1
    return count


def local_device_ids(local_rank: int, gpus: int, device: str, environ=None) -> list[int] | None:
    """The ``local_device_ids`` of ``jax.distributed.initialize`` for the rank of local rank ``local_rank`` on a
    host whose every process would see ``gpus`` GPUs (``visible_gpus``), training on unidl's requested ``device``
    ('auto', 'cuda', 'cuda:N', 'cpu', ...): with several GPUs, its own, the GPU of its local rank (as torchrun's
    LOCAL_RANK means; JAX then shows the process that one only, as its 'cuda:0', and allocates on no other); None
    with one GPU or none (a process's one GPU is its own: ``CUDA_VISIBLE_DEVICES`` per rank), or where the user
    chose them (``JAX_LOCAL_DEVICE_IDS``, which JAX reads). More local ranks than GPUs: a
    ``DeviceUnavailableError`` on a GPU (two ranks would share one), and on the CPU the GPU of ``local_rank % gpus``
    (so that the rank does not allocate memory on every GPU)."""
    import os

    environ = os.environ if environ is None else environ
    if gpus <= 1 or environ.get("JAX_LOCAL_DEVICE_IDS"):
        return None
    if local_rank < gpus:
        return [local_rank]
    if device.strip().lower().startswith("cpu"):
        return [local_rank % gpus]
    from unidl.distributed.environment import no_own_gpu

    raise no_own_gpu(local_rank, gpus, "CUDA_VISIBLE_DEVICES (or JAX_LOCAL_DEVICE_IDS)")


def _refuse_torchrun(rank, world_size):
    """A ``DistributedError`` in a process torchrun started: ``jax.distributed``'s coordination service would
    listen on ``MASTER_PORT``, which torchrun's own store holds (rank 0 failed to start its server, or crashed)."""
    from unidl.distributed.environment import started_by_torchrun

    if started_by_torchrun():
        raise DistributedError(
            f"rank {rank} of {world_size} was started by torchrun, whose jobs the jax engine cannot join "
            f"(jax.distributed's coordination service would listen on MASTER_PORT, where torchrun's store already "
            f"listens): start the job with `unidl train --nproc {world_size}` or unidl.distributed.launch(fn, "
            f"nprocs={world_size}), which give the jax engine a port of its own; torchrun runs the torch backend "
            f"and Keras-on-torch")


def reduce_on_host(values: list, op: str = "mean") -> list:
    """``values`` (NumPy arrays) reduced over the ranks with ``op``, one collective per dtype among them, in
    their order and shapes."""
    if _job is None:  # (a compiled step of a job that this process left: ``check_job_of_step`` refuses it first)
        raise DistributedError("the jax engine's reduction ran outside a data-parallel job (after "
                               "unidl.distributed.shutdown()); build the step again outside the job")
    reduced = list(values)
    for dtype in dict.fromkeys(np.asarray(value).dtype for value in values):
        where = [index for index, value in enumerate(values) if np.asarray(value).dtype == dtype]
        flat = _job.reduce(np.concatenate([np.asarray(values[index]).reshape(-1) for index in where]), op)
        for index, part in zip(where, np.split(flat, np.cumsum([np.size(values[i]) for i in where])[:-1])):
            reduced[index] = part.reshape(np.shape(values[index])).astype(dtype)
    return reduced


def all_reduces_run() -> int:
    """How many collectives this process has run in its job so far (0 outside one): one per dtype of each
    reduction, a train step's included once it has run."""
    return 0 if _job is None else _job.all_reduces


def average_in_step(loss, grads, params, accumulate: int = 1):
    """``(loss, grads, present)``: in a job, this step's loss (None kept) and gradients averaged over the ranks
    (inside a trace: an ``io_callback``, one all-reduce); outside one, and for a micro-step of a window of
    ``accumulate`` N > 1 (kept on this rank and reduced when it closes, ``window_in_step``), the values themselves
    and ``present`` None.

    A trainable parameter this rank's loss did not reach (a dynamic net's skipped layer: None here, where another
    rank's may have one) counts zeros, as with DDP, and ``present`` gives it a boolean scalar: whether any rank had
    a gradient for it (PyTorch's rule: a parameter no rank's loss reached is not updated). ``present`` is None for
    the others. A non-finite loss or gradient of any rank makes the averages non-finite on every rank, so that the
    guard skips the update everywhere alike."""
    if _job is None or accumulate > 1:
        return loss, grads, None
    from unidl.nn.module import is_trainable

    missing = [g is None and is_trainable(p) for g, p in zip(grads, params)]
    filled = [jnp.zeros(p.shape, p.dtype) if miss else g for g, p, miss in zip(grads, params, missing)]
    values = [v for v in (loss, *filled) if v is not None]  # (Keras-on-JAX's loss: None, carried in a gradient)
    had, *found = _reduced_in_step([jnp.asarray([0.0 if miss else 1.0 for miss in missing], values[0].dtype),
                                    *values])
    found = iter(found)
    loss = None if loss is None else next(found)
    grads = [None if g is None else next(found) for g in filled]
    present = [had[index] > 0 if miss else None for index, miss in enumerate(missing)]
    return loss, grads, present


def window_in_step(sums, has_gradient, finite, closes):
    """``(sums, has_gradient, finite)`` of a window of micro-steps kept on this rank (``window_micro_step``'s sums
    and gradient flags, None kept, and ``finite``, a boolean scalar: its losses and gradients so far are) as the
    job's where ``closes`` (a boolean scalar, the same on every rank: the window's last micro-step): the sums and
    flags averaged and the finite flags agreed in one all-reduce inside a ``lax.cond`` (no collective at the
    other micro-steps), as torch's ``no_sync()`` accumulation. A parameter with a gradient on any rank in the
    window has one (PyTorch's rule); ``finite`` is False on every rank where it is on any. As they are outside a
    job."""
    if _job is None:
        return sums, has_gradient, finite
    kept = [index for index, total in enumerate(sums) if total is not None]
    if not kept:
        return sums, has_gradient, finite
    dtype = sums[kept[0]].dtype
    flags = jnp.stack([jnp.asarray(True) if has_gradient[i] is None else has_gradient[i] for i in kept])
    sent = (jnp.where(finite, 0, 1).astype(dtype), flags.astype(dtype), *[sums[i] for i in kept])
    not_finite, had, *averaged = jax.lax.cond(closes, lambda values: tuple(_reduced_in_step(values)),
                                              lambda values: values, sent)
    sums, has_gradient = list(sums), list(has_gradient)
    for position, index in enumerate(kept):
        sums[index] = averaged[position]
        if has_gradient[index] is not None:  # (None: this rank had one now, so the job had one)
            has_gradient[index] = had[position] > 0
    return sums, has_gradient, not_finite == 0


def _reduced_in_step(values, op: str = "mean"):
    """``values`` (arrays of a trace, or concrete) reduced over the ranks with ``op`` by an ``io_callback``
    (``reduce_on_host``)."""
    return io_callback(lambda *host: reduce_on_host(list(host), op),
                       [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in values], *values)


def broadcast_from_rank_0(variables) -> None:
    """Rank 0's value of each of ``variables`` (``JaxVariable``s: the model's parameters and buffers) on every rank,
    as torch's DDP does when it wraps a model: a sum to which only rank 0 contributes (an integer's exactly); nothing
    outside a job."""
    from unidl.backends.jax.variable import written_in_place

    if _job is None or not variables:
        return
    for variable, value in zip(variables, Engine.from_rank_0([v.value for v in variables])):
        written_in_place(variable, value)
