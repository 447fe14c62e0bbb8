"""TensorFlow's data-parallel engine for unidl: ``tf.distribute.MultiWorkerMirroredStrategy`` joins the workers
named in ``TF_CONFIG``, and its replica context's all-reduce averages the gradients of the tensorflow backend's
training step inside the step's graph, before the optimizer's in-graph update.

``data_parallel(step, variables)`` is what ``Backend.train_step`` compiles: the step itself in one process, in
a group the step run through ``strategy.run`` (the replica context the strategy's collectives need), with rank
0's values of the model's variables broadcast once. Inside the step, ``average_gradients`` is the strategy's
``ReplicaContext.all_reduce(MEAN)``; the variables stay plain ``tf.Variable``s (one replica per process).
TensorFlow configures its collectives when its runtime starts, so ``Engine.start`` must run before any
TensorFlow op of the process (``unidl.distributed.launch`` and ``init()`` at the top of a script do so).

One process driving several devices (``init(devices=[...])``, ``Engine.start_devices``) runs the same step
through ``tf.distribute.MirroredStrategy``: ``data_parallel`` splits each batch (``x`` and ``y``; the step's extra
inputs go whole to every replica) into contiguous shares, one per device, the replicas' gradients are averaged
by the same ``average_gradients``, and ``update_once`` runs the optimizer's update once (in the strategy's
cross-replica context, ``merge_call``) on the one copy of each variable all replicas read.
"""

from __future__ import annotations

import contextvars
import functools
import os

import tensorflow as tf
from tensorflow.python.eager import context  # whether the runtime started (no public query)

from unidl.errors import DeviceUnavailableError, DistributedError

_strategy = None  # the running MultiWorkerMirroredStrategy or MirroredStrategy, None outside a group


def strategy():
    """The ``tf.distribute.MultiWorkerMirroredStrategy`` this process joined (``unidl.distributed.init``), or
    its ``MirroredStrategy`` over several devices (``init(devices=...)``), or None outside a group: for code of
    one's own that runs in the same job (``strategy().run(fn)``)."""
    return _strategy


def _replicas_in_process() -> bool:
    """True when this process's strategy runs several replicas here (``MirroredStrategy``), not one per process."""
    return isinstance(_strategy, tf.distribute.MirroredStrategy)


def writes_state_here() -> bool:
    """Whether this replica writes state a forward updates (BatchNorm's running statistics): True outside a
    ``MirroredStrategy`` and in its first replica; its other replicas share the same variables and leave them to
    the first, whose statistics of its own share are those torch's DistributedDataParallel keeps (it broadcasts
    rank 0's buffers) - each replica writing in turn chained the updates, and counted each batch once a replica."""
    if not _replicas_in_process():
        return True
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica: not inside a replica's forward
        return True
    return tf.get_static_value(context.replica_id_in_sync_group) in (0, None)


def _device_name(device: str) -> str:
    """A device of ``init(devices=...)`` ('cpu', 'cpu:1', 'cuda:0', 'gpu:0') as 'cpu:N' or 'cuda:N'."""
    kind, _, index = str(device).strip().lower().partition(":")
    if kind not in ("cpu", "cuda", "gpu") or (index and not index.isdigit()):
        raise DeviceUnavailableError(f"device {device!r} is not a device name; use 'cpu:N' or 'cuda:N'")
    return f"{'cpu' if kind == 'cpu' else 'cuda'}:{int(index or 0)}"


def _logical_devices() -> dict:
    """TensorFlow's logical CPU and GPU devices here, by their names as 'cpu:N' / 'cuda:N'."""
    found = {}
    for logical in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(logical.name)
        if spec.device_type in ("CPU", "GPU"):
            found[f"{'cpu' if spec.device_type == 'CPU' else 'cuda'}:{spec.device_index or 0}"] = logical.name
    return found


def _cluster(rank: int, world_size: int) -> list[str]:
    """The workers' ``host:port`` addresses from ``TF_CONFIG``, checked against this process's place."""
    from unidl.distributed.environment import tf_config_workers

    text = os.environ.get("TF_CONFIG")
    if not text:
        raise DistributedError(
            "the tensorflow backend's engine (tf.distribute.MultiWorkerMirroredStrategy) joins the workers "
            "named in TF_CONFIG, which is not set: start the job with unidl.distributed.launch(..., "
            "backend='tensorflow') or `unidl train --nproc N` (they set it), or set TF_CONFIG yourself; "
            "torchrun's variables name only rank 0's address")
    workers, index = tf_config_workers(text)  # (workers only: a chief would be TensorFlow's replica beside them)
    if (index, len(workers)) != (rank, world_size):
        raise DistributedError(f"TF_CONFIG places this process as worker {index} of {len(workers)}, but the "
                               f"launcher's variables say rank {rank} of {world_size}; make them agree")
    return workers


class Engine:
    """The ``MultiWorkerMirroredStrategy`` of this process (see ``unidl.distributed.process_group``); the keras
    backend on TensorFlow builds its steps through ``data_parallel`` and ``reduce_in_step`` too."""

    def start(self, rank, world_size, address, port, timeout):
        global _strategy
        from unidl.distributed.environment import check_port_free, local_rank_of, sigterm_back_to_python

        workers = _cluster(rank, world_size)
        if context.context()._context_handle is not None:  # noqa: SLF001 - TensorFlow has no public query
            raise DistributedError(
                "the tensorflow engine must start before any TensorFlow op of this process (TensorFlow sets up "
                "its collectives when its runtime starts): call unidl.distributed.init() at the top of the "
                "script, before building a model or a tensor")
        host, _, own_port = workers[rank].rpartition(":")
        if host in ("127.0.0.1", "localhost"):
            check_port_free(host, int(own_port), f"worker {rank} of {world_size} (TF_CONFIG)")
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # one replica per process (unidl's variables are plain): this process's GPU only
            tf.config.set_visible_devices(gpus[local_rank_of(rank) % len(gpus)], "GPU")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=(tf.distribute.experimental.CommunicationImplementation.AUTO if gpus else  # NCCL there
                            tf.distribute.experimental.CommunicationImplementation.RING), timeout_seconds=timeout)
        _strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
            communication_options=options)
        if _strategy.num_replicas_in_sync != world_size:
            replicas, _strategy = _strategy.num_replicas_in_sync, None
            raise DistributedError(f"MultiWorkerMirroredStrategy made {replicas} replicas for {world_size} "
                                   f"processes; unidl runs one replica per process")
        sigterm_back_to_python()
        self._reducers = {}

    def start_devices(self, devices, timeout):
        """One process, one replica on each of ``devices`` (``tf.distribute.MirroredStrategy``); each must be one
        of TensorFlow's logical devices (several CPUs: ``tf.config.set_logical_device_configuration`` before
        the process's first TensorFlow op)."""
        global _strategy
        visible, wanted = _logical_devices(), [_device_name(device) for device in devices]
        missing = [device for device, name in zip(devices, wanted) if name not in visible]
        if missing:
            raise DeviceUnavailableError(
                f"devices {missing} are not among TensorFlow's logical devices here ({', '.join(visible)}); several "
                f"CPU devices need tf.config.set_logical_device_configuration(...) before the first TensorFlow op")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"devices {list(devices)} name a device twice; give each device once")
        _strategy = tf.distribute.MirroredStrategy([visible[name] for name in wanted])
        self._reducers = {}

    def barrier(self):
        self.all_reduce(tf.zeros([], tf.int32), "sum").numpy()  # a collective returns once every rank joined it

    def all_reduce(self, tensor, op):
        if op not in self._reducers:
            self._reducers[op] = tf.function(functools.partial(_strategy.run, functools.partial(_reduce, op=op)),
                                             reduce_retracing=True)
        return self._reducers[op](args=(tf.convert_to_tensor(tensor),))

    data_parallel = staticmethod(lambda step, variables=(): data_parallel(step, variables))
    reduce_in_step = staticmethod(lambda values, op="mean": reduce_in_step(values, op))
    require_replica_context = staticmethod(lambda: require_replica_context())
    # (for the keras backend's step on this engine, whose replicas of one process share one copy of each variable)
    replicas_in_process = staticmethod(lambda: _replicas_in_process())
    update_once = staticmethod(lambda update: update_once(update))
    writes_state_here = staticmethod(lambda: writes_state_here())
    share_loss_weight = staticmethod(lambda: share_loss_weight())

    def stop(self):
        global _strategy
        if _strategy is not None and not _replicas_in_process():
            _strategy.extended._stop_check_health_thread()  # noqa: SLF001 - its peer pings would outlive the job
        _strategy = None  # TensorFlow keeps its collective runtime until the process ends
        _broadcaster.cache_clear()


def _reduce(tensor, op):
    """``tensor`` reduced over the replicas, in the strategy's replica context."""
    replicas = tf.distribute.get_replica_context()
    tensor = tf.identity(tensor)  # placed on this worker's device, where the collective sends it from
    if op in ("sum", "mean"):
        total = replicas.all_reduce(tf.distribute.ReduceOp.SUM, tensor)
        if op == "sum":
            return total
        count = tf.cast(replicas.num_replicas_in_sync, tensor.dtype)
        return total / count if tensor.dtype.is_floating else total // count
    gathered = replicas.all_gather(tensor[None], axis=0)  # the strategy's all-reduce knows only sum and mean
    return tf.reduce_max(gathered, axis=0) if op == "max" else tf.reduce_min(gathered, axis=0)


def data_parallel(step, variables=()):
    """``step``, or in a group of several processes ``step`` run in the strategy's replica context (where
    ``reduce_in_step`` reaches the other ranks), after rank 0's values of ``variables`` (the model's
    parameters and buffers, and the loss's own trained ones: ``fit_options.rank_0_state``) are broadcast to every
    rank, as torch's DDP does."""
    if _strategy is None:
        return step
    if _replicas_in_process():
        return _split_over_replicas(step)  # one copy of each variable: nothing to broadcast
    _broadcast(list(variables))

    @functools.wraps(step)
    def replicated(*args):
        # the strategy calls ``step`` in a thread of its own: with this thread's context variables (the backend,
        # dtype and device in force, a precision scope), which the forward reads while it is traced
        context = contextvars.copy_context()
        return _strategy.run(lambda *values: context.run(step, *values), args=args)

    return replicated


#: in a replica of this process's ``MirroredStrategy``: the whole batch's sample count over the replicas (each
#: replica's thread runs in a copy of the context ``_split_over_replicas`` set it in); None elsewhere
_share_loss_weight = contextvars.ContextVar("unidl_share_loss_weight", default=None)


def _split_over_replicas(step):
    """``step(x, y, *inputs)`` run by every replica of the process's ``MirroredStrategy`` on its contiguous share
    of the batch, ``x`` and ``y`` (each tensor in them; ``fit``'s sample weights travel in ``y``), the shares
    differing by one sample at most, as a ``DataLoader``'s rank shares do; the extra step ``inputs`` (a dynamic
    net's depth, a per-feature scale) whole to every replica, as every process of a job gets them. The results are
    combined as one device over the whole batch would return them: scalars (the loss) averaged over the replicas
    (the shares' average: the objective whose gradient the averaged gradients are, as DDP's rank losses),
    batched tensors (the outputs) concatenated; what every replica returns alike (the finite flag of
    ``update_once``) as it is. A batch with fewer samples than replicas, whose empty share would average nothing
    (a NaN loss), is a ``DistributedError``."""
    replicas = _strategy.num_replicas_in_sync

    def share(value, replica):
        if not isinstance(value, (tf.Tensor, tf.Variable)) or value.shape.rank == 0:
            return value
        count = tf.shape(value)[0]
        return value[count * replica // replicas:count * (replica + 1) // replicas]

    def combined(value):
        if not isinstance(value, tf.distribute.DistributedValues):
            return value
        parts = _strategy.experimental_local_results(value)
        if parts[0].shape.rank:
            return tf.concat(parts, axis=0)
        return tf.add_n(parts) / len(parts) if parts[0].dtype.is_floating else parts[0]

    def in_replica(weight, values):
        _share_loss_weight.set(weight)
        return step(*values)

    @functools.wraps(step)
    def replicated(x, y, *inputs):
        context = contextvars.copy_context()  # (see data_parallel), one copy per replica thread
        x, y = _at_least_one_sample_per_replica((x, y), replicas)
        first = tf.nest.flatten(x)[0]
        weight = tf.cast(tf.shape(first)[0], tf.float32) / replicas if isinstance(first, tf.Tensor) else None
        shares = _strategy.experimental_distribute_values_from_function(
            lambda where: tf.nest.map_structure(lambda value: share(value, where.replica_id_in_sync_group), (x, y)))
        result = _strategy.run(lambda *values: context.copy().run(in_replica, weight, (*values, *inputs)),
                               args=shares)
        return tf.nest.map_structure(combined, result)

    return replicated


def _at_least_one_sample_per_replica(batch, replicas):
    """``batch`` (``(x, y)``), checked to hold at least one sample per replica: a ``DistributedError`` now where
    the trace knows its size, else an in-graph check that raises it when the step runs (``fit`` refuses such a
    loader before training; a step of one's own meets it here, not as a NaN loss)."""
    from unidl.backends.tensorflow.ops import marked_check

    sizes = [value for value in tf.nest.flatten(batch) if isinstance(value, (tf.Tensor, tf.Variable))
             and value.shape.rank]
    if not sizes:
        return batch
    message = (f"with {replicas} devices in this process, a batch (size {{}}) has fewer samples than replicas, "
               f"so a device would train on none; use batches of at least {replicas} samples (fit: "
               f"drop_last=True, or a batch_size that leaves every batch at least one sample per replica)")
    known = sizes[0].shape[0]
    if known is not None:
        if known < replicas:
            raise DistributedError(message.format(known))
        return batch
    count = tf.shape(sizes[0])[0]
    check = marked_check(count >= replicas, DistributedError, message, (count,))
    with tf.control_dependencies([check]):
        return tf.nest.map_structure(lambda value: tf.identity(value) if value is sizes[0] else value, batch)


def share_loss_weight():
    """In a replica of this process's ``MirroredStrategy``: the weight of its share's mean loss in a running mean
    counted by samples (Keras's loss tracker), the whole batch's sample count over the replicas, so that the
    batch's loss is the shares' average, as ``_split_over_replicas`` returns it; None elsewhere."""
    return _share_loss_weight.get()


def update_once(update):
    """``update()`` (the optimizer's update, a zero-argument closure over the averaged gradients): called as it
    is, except in a replica of a ``MirroredStrategy`` of this process, where every replica reaches this point
    with the same averaged gradients but the variables are one copy: there it runs once, in the strategy's
    cross-replica context (``merge_call``), and every replica gets its result."""
    if not _replicas_in_process() or tf.distribute.in_cross_replica_context():
        return update()
    return tf.distribute.get_replica_context().merge_call(lambda _: update())


def require_replica_context() -> None:
    """In a group, outside the strategy's replica context (a step unidl did not build: Keras's own
    ``train_on_batch`` or ``Model.fit`` called on a unidl model's ``keras.Model``): a ``DistributedError``, as that
    step would train on this rank's gradients alone; nothing inside it, or outside a group. (unidl's steps run in
    it, ``eager=True`` too: ``data_parallel`` called eagerly runs the step through ``strategy.run`` eagerly.)"""
    if _strategy is None:
        return
    if not tf.distribute.has_strategy() or tf.distribute.get_strategy() is not _strategy \
            or tf.distribute.in_cross_replica_context():
        raise DistributedError(
            "a training step of this data-parallel job runs outside the replica context of its "
            f"tf.distribute.{type(_strategy).__name__}, so its gradients would not be averaged over the ranks (or "
            "devices): train with ud.train_step or ud.fit (eager=True too), not Keras's own train_on_batch or "
            "Model.fit")


def reduce_in_step(values, op="mean"):
    """``values`` (tensors; None entries kept) summed or averaged (``op`` 'sum' or 'mean') over the ranks by
    the strategy's all-reduce, in one batched collective; the values themselves outside a group.

    Called inside a step that ``data_parallel`` runs. In a group but outside the strategy's replica context
    (a step unidl did not build: Keras's own ``train_on_batch``), this raises: that step would train on this
    rank's gradients alone."""
    if _strategy is None:
        return list(values)
    require_replica_context()
    values = [tf.convert_to_tensor(v) if isinstance(v, tf.IndexedSlices) else v for v in values]
    present = [v for v in values if v is not None]
    reduce_op = tf.distribute.ReduceOp.SUM if op == "sum" else tf.distribute.ReduceOp.MEAN
    reduced = iter(_all_reduce_per_dtype(reduce_op, present))
    return [None if v is None else next(reduced) for v in values]


def _all_reduce_per_dtype(reduce_op, values):
    """``values`` reduced over the replicas with ``reduce_op``, in the current replica context: one batched
    all-reduce per dtype among them (TensorFlow packs a batched all-reduce's tensors into one concat, which takes
    a single dtype: an int64 buffer beside float32 weights, as BatchNorm's ``num_batches_tracked``, raised its
    ``TypeError``), in their order."""
    context, reduced = tf.distribute.get_replica_context(), list(values)
    for dtype in dict.fromkeys(value.dtype for value in values):
        where = [index for index, value in enumerate(values) if value.dtype == dtype]
        for index, value in zip(where, context.all_reduce(reduce_op, [values[index] for index in where])):
            reduced[index] = value
    return reduced


def average_gradients(grads, loss):
    """``(grads, loss)`` averaged over the ranks (``reduce_in_step``); the same values outside a group. The
    averaged loss is what the non-finite guard checks, so that every rank skips or applies a step alike."""
    if _strategy is None:
        return grads, loss
    loss, *grads = reduce_in_step([loss, *grads], "mean")
    return grads, loss


def _broadcast(variables):
    """Rank 0's value of each variable on every rank (a sum in which only rank 0 contributes; one per dtype)."""
    if variables:
        values = _broadcaster(len(variables))(*[tf.convert_to_tensor(v) for v in variables])
        for variable, value in zip(variables, values if isinstance(values, (list, tuple)) else [values]):
            variable.assign(value)


@functools.lru_cache(maxsize=None)
def _broadcaster(count: int):
    """The compiled broadcast of ``count`` values: one function per count, since ``reduce_retracing`` fails inside
    TensorFlow (an ``IndexError`` generalizing its signature) when one function meets calls with another number
    of arguments (a second model of another size in the same job)."""
    rank = _strategy.cluster_resolver.task_id

    def share(*values):
        kept = [tf.identity(v) if rank == 0 else tf.zeros_like(v) for v in values]  # (placed, see _reduce)
        return _all_reduce_per_dtype(tf.distribute.ReduceOp.SUM, kept)  # (an integer's sum is exact)

    return tf.function(lambda *values: _strategy.run(share, args=values), reduce_retracing=True)


def accumulates_locally() -> bool:
    """Whether a training step with gradient accumulation keeps its window on this rank and averages it over the
    ranks once per update (``reduce_in_step`` at the window's last micro-step), as DDP's ``no_sync``: in a
    ``MultiWorkerMirroredStrategy`` of one replica per process. Replicas of one process share one copy of each
    variable (and so one window): they average every micro-step's gradients instead."""
    return _strategy is not None and not _replicas_in_process()
