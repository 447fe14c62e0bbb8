"""Keras's data-parallel engine is its host framework's (``host.py``), where that engine can carry Keras's own
train step: on Keras-on-TensorFlow, ``tf.distribute.MultiWorkerMirroredStrategy`` runs the step in its replica
context and its all-reduce sums the gradients inside the step, before unidl's guard, clipping and update.

Keras scales each rank's loss by ``1 / ranks`` inside a ``tf.distribute`` replica context (its trainer's own
rule), so the *sum* over the ranks of the gradients is their mean, as Keras's TensorFlow optimizer would
compute it; unidl sums them itself (``sum_in_step``) so that the non-finite guard and clipping see the job's
gradient, and Keras's optimizer then updates without summing again. Keras's float16 loss scaler checks each
rank's own gradients for overflow: ``finite_on_every_rank`` makes that the job's decision.

On Keras-on-torch, Keras's trainer runs eagerly and calls ``loss.backward()`` itself: its model is a
``torch.nn.Module`` whose parameters are the Keras variables, so its forward runs through torch's
``DistributedDataParallel`` (``forward_through_engine``) and DDP's reducer averages the gradients in that
backward, the step's loss riding in that all-reduce for the guard (``mark_loss``); a loss's own parameters, which
DDP does not hold, are averaged after it (``_outside_the_engine_averaged``).

On Keras-on-JAX, Keras's train step is one compiled program, as the jax backend's: the jax engine averages its
loss and gradients over the ranks inside it (``averages_in_step``: an ``io_callback``, ``sum_in_step``) before
unidl's guard, clipping and update, Keras's own update then running as in one process, and rank 0's weights are
broadcast when a model is compiled for a step (``from_rank_0``). There a window of ``accumulate`` N > 1, which
Keras's functional trainer keeps in its state, stays each rank's own and is averaged once, at its last micro-step
(``reduces_window_in_step``: the jax engine's callback inside a ``lax.cond``), float16's window (Keras's loss
scaler's) too, its finite flag in the same all-reduce, before the scaler's overflow check reads the job's sums.

With ``accumulate`` N > 1 in a job, on either host, the optimizer keeps this rank's window and reduces it over the
ranks with its finite flag in one all-reduce when the window closes (``accumulates_locally``, ``reduce_window``):
one collective per update, as torch's ``no_sync()`` accumulation (Keras-on-torch: every micro-step's backward
under ``no_sync()``, float16's window, Keras's loss scaler's, too; Keras-on-TensorFlow: a graph without a
collective for the other micro-steps, ``graph_per_window_place``). Whether a micro-step closes the window is
decided in Python, from the window's count kept there (``optimizer.LocalWindow.closes_window``).

One process on several devices (``init(devices=...)``) trains on Keras-on-TensorFlow only, through the tensorflow
engine's ``MirroredStrategy``: Keras's train step runs in each replica on its share of the batch, and its
gradients are summed over the replicas inside the step (``sum_in_step``, as between ranks); the replicas read one
copy of each variable (unidl's Keras variables are not made under the strategy's scope), so the guard, clipping,
a window's micro-step and Keras's update run once, in the strategy's cross-replica context (``update_once``),
Keras's trackers are read after every replica added its share (``replicas_in_process``), and the first replica
writes BatchNorm's statistics (``writes_state_here``). The other hosts have no such engine (``start_devices``).
"""

from __future__ import annotations

import contextlib
import math

from unidl.backends.keras.host import HOST
from unidl.errors import DistributedError


def engine():
    """The host's engine when it can carry Keras's step: one that runs a step in its replica context
    (``data_parallel`` and ``reduce_in_step``: TensorFlow's strategy), or one that wraps a forward
    (``wrap_forward``: torch's DistributedDataParallel, see ``forward_through_engine``); else a
    ``DistributedError`` naming what works."""
    found = HOST.distributed_engine()
    if found is not None and hasattr(found, "reduce_in_step"):  # (TensorFlow's strategy, or JAX's in-step average)
        return _HostEngine(found)
    if found is not None and hasattr(found, "wrap_forward"):
        return _ForwardWrappingEngine(found)
    raise DistributedError(
        f"the keras backend trains data-parallel on Keras-on-TensorFlow (tf.distribute.MultiWorkerMirroredStrategy), "
        f"Keras-on-torch (DistributedDataParallel) and Keras-on-JAX (jax.distributed) only; Keras runs on "
        f"{HOST.name} here: set KERAS_BACKEND=tensorflow, torch or jax, or use unidl's torch, tensorflow or jax "
        f"backend for a data-parallel job")


class _HostEngine:
    """The host's engine, carrying Keras's step. Several devices of one process (``start_devices``) only where
    it runs Keras's step in replicas that read one copy of each variable and has the update run once for all of
    them (``update_once``: TensorFlow's ``MirroredStrategy``, whose replicas each run Keras's forward and backward
    on their share of the batch); refused on the other hosts, which have no such engine."""

    def __init__(self, host_engine):
        self._host_engine = host_engine

    def __getattr__(self, name):
        return getattr(self._host_engine, name)

    def start_devices(self, devices, timeout):
        if hasattr(self._host_engine, "update_once"):
            return self._host_engine.start_devices(devices, timeout)
        raise DistributedError(
            f"the keras backend trains one device per process on Keras-on-{HOST.name} (devices={list(devices)} in "
            f"one process is not available: its engine runs no replicas of Keras's step in one process); use "
            f"KERAS_BACKEND=tensorflow or unidl's tensorflow backend (tf.distribute.MirroredStrategy) for several "
            f"devices in one process, or one process per device (unidl.distributed.launch(fn, "
            f"nprocs={len(devices)}))")


class _ForwardWrappingEngine(_HostEngine):
    """The host's engine where it averages gradients in the backward of a wrapped forward (torch's
    ``DistributedDataParallel``): Keras's own train step runs its forward through the wrapper
    (``forward_through_engine``), so that ``loss.backward()`` in Keras's trainer leaves every rank the averaged
    gradients, with the step's loss marked in them (``mark_loss``); a window of micro-steps is averaged by the
    optimizer when it closes (``reduce_window``)."""

    gradients_averaged_in_backward = True

    @staticmethod
    def data_parallel(step, variables=()):
        return step  # no compiled Keras step on this host: Keras's trainer runs forward_through_engine

    def reduce_in_step(self, values, op="mean"):
        """``values`` (tensors; None kept) reduced over the ranks with ``op``: one collective per dtype among them
        (each dtype's values flattened into one buffer, reduced, and cut back into their shapes)."""
        import keras

        present = [v for v in values if v is not None]
        reduced = {}
        for dtype in dict.fromkeys(keras.backend.standardize_dtype(v.dtype) for v in present):
            group = [v for v in present if keras.backend.standardize_dtype(v.dtype) == dtype]
            flat = self._host_engine.all_reduce(
                keras.ops.concatenate([keras.ops.reshape(v, (-1,)) for v in group]), op)
            start = 0
            for v in group:
                size = math.prod(v.shape)  # (static: no read from the device)
                reduced[id(v)] = keras.ops.reshape(flat[start:start + size], tuple(v.shape))
                start += size
        return [None if v is None else reduced[id(v)] for v in values]


def _running():
    """The engine of the job this process trains in: its ranks' (``init()`` in a launched job), or its devices'
    (``init(devices=...)``); None outside one."""
    from unidl.distributed import process_group

    group = process_group.current()
    if group is None:
        return None
    running = group.engine if group.engine is not None else group.device_engine
    if (running is not None and group.backend.name != "keras" and not hasattr(running, "data_parallel")
            and not hasattr(running, "reduce_in_step")):  # (another backend's job: torch's engine)
        return _carrying_keras(group, running)
    return running


def _carrying_keras(group, running):
    """The engine ``running`` of a job that another unidl backend joined, one that wraps a forward and carries no
    step of its own (torch's: ``launch(backend="torch")``, then the keras backend used in it), as the keras
    backend's would be (``engine()``) where it is the engine of Keras's host framework (Keras-on-torch); a
    ``DistributedError`` naming what to do where it is not (a torch job's engine cannot carry Keras-on-TensorFlow's
    step), where Keras's step failed with an ``AttributeError``."""
    adopted = _adopted.get(id(running))
    if adopted is not None and adopted._host_engine is running:
        return adopted
    if group.backend.name != HOST.name or not hasattr(running, "wrap_forward"):
        raise DistributedError(
            f"this process joined its data-parallel job on the {group.backend.name} backend's engine "
            f"(init or launch with backend={group.backend.name!r}), which cannot carry the keras backend's step on "
            f"Keras-on-{HOST.name}: start the job with backend='keras' (unidl.distributed.launch(fn, nprocs=N, "
            f"backend='keras') or init(backend='keras')) to train the keras backend in it")
    _adopted.clear()
    _adopted[id(running)] = adopted = _ForwardWrappingEngine(running)
    return adopted


#: ``_carrying_keras``'s adopted engine, by the id of the engine it wraps (one job at a time)
_adopted: dict = {}


def replicas_in_process() -> bool:
    """Whether this process runs several replicas of Keras's step that read one copy of each variable
    (``init(devices=...)``: TensorFlow's ``MirroredStrategy``): their gradients summed over them inside the step
    (``sum_in_step``), the update then run once (``update_once``), and Keras's logs read after every replica ran
    (``function._train_step``)."""
    running = _running()
    return running is not None and getattr(running, "replicas_in_process", lambda: False)()


def update_once(update):
    """``update()`` (a closure over the job's gradients: the non-finite guard, clipping, a window's micro-step and
    the optimizer's update) run once per step where several replicas of this process share the variables (the
    engine's ``update_once``: in its cross-replica context, every replica getting its result), as the tensorflow
    backend runs its optimizer's; called as it is elsewhere (one replica a process)."""
    running = _running()
    once = getattr(running, "update_once", None) if running is not None else None
    return update() if once is None else once(update)


def writes_state_here() -> bool:
    """Whether this replica writes the state a forward updates (BatchNorm's running statistics): the first of the
    replicas of this process that share the variables (the engine's ``writes_state_here``, as the tensorflow
    backend's: each replica writing in turn would chain their updates), and True elsewhere."""
    running = _running()
    here = getattr(running, "writes_state_here", None) if running is not None else None
    return True if here is None else here()


def share_loss_weight():
    """In a replica of this process's engine that splits each batch over its devices (TensorFlow's
    ``MirroredStrategy``): the weight of its share's mean loss in Keras's loss tracker (the engine's: the whole
    batch's samples over the replicas), so that the step reports the shares' average; None elsewhere."""
    running = _running()
    weight = getattr(running, "share_loss_weight", None) if running is not None else None
    return None if weight is None else weight()


def job_key():
    """Which job a step compiled now trains in, for the compile's key: ``job_of_step()``, the group itself (None
    outside a job; a group equals itself only). Keras's compiled step of a job holds the engine's collectives
    (Keras-on-JAX's ``io_callback``, the strategy's all-reduce), and one compiled outside a job holds none: neither
    is restored in the other (after ``shutdown()``, or for a model compiled before ``init()``), nor in another
    job."""
    from unidl.distributed import process_group

    return process_group.job_of_step()


def in_group() -> bool:
    """True while this process trains with others on an engine that carries Keras's step in its replica
    context (TensorFlow's strategy: the gradients are summed by ``sum_in_step``, and Keras's own update must
    not sum them again); False outside a group and where the engine averaged them in the backward (torch's
    DDP) or averages them in a compiled step without a replica context (JAX's ``averages_in_step``), where
    Keras's own update runs as in one process."""
    running = _running()
    return running is not None and not _averages(running)


def _averages(running) -> bool:
    """Whether the engine ``running`` gives each rank the job's mean gradient (in the backward: torch's DDP;
    inside the step: JAX's), not a sum that Keras's per-replica loss scaling makes the mean (TensorFlow's)."""
    return getattr(running, "gradients_averaged_in_backward", False) or getattr(running, "averages_in_step", False)


def data_parallel(step, variables=()):
    """``step`` in the engine's replica context with rank 0's ``variables`` broadcast; ``step`` outside a group."""
    running = _running()
    return step if running is None else running.data_parallel(step, variables)


def sum_in_step(values):
    """``values`` (the step's loss, then its gradients) summed over the ranks inside a ``data_parallel`` step
    (None entries kept), averaged on JAX's engine (``averages_in_step``: Keras scales no loss per replica there);
    as they are outside a group. Where the engine averaged the gradients in the backward
    already (``forward_through_engine``), they stay as they are: a rank's non-finite loss reached every rank's
    averaged gradients in that all-reduce (``mark_loss``), so that the non-finite guard, which checks this rank's
    loss and those gradients, decides alike on every rank without a collective of its own."""
    running = _running()
    if running is None or getattr(running, "gradients_averaged_in_backward", False):
        return list(values)
    return running.reduce_in_step(values, "mean" if _averages(running) else "sum")


def average_in_step(loss, grads, variables):
    """``(loss, grads, present)``: the step's loss and gradients as the job's (``sum_in_step``); a trainable
    variable this rank's loss did not reach (its gradient None: a layer a rank's forward skipped) counts zeros where
    one collective must carry the same values on every rank, and ``present`` gives it a boolean scalar, whether any
    rank had a gradient for it (PyTorch's rule with DDP: a parameter no rank's loss reached is not updated), None
    for the others: on JAX's engine (its ``average_in_step``) and for the variables outside the engine's wrapper
    (``_outside_the_engine_averaged``); ``present`` None elsewhere. As they are outside a group."""
    running = _running()
    averages = getattr(running, "average_in_step", None)
    if averages is None:
        loss, *grads = sum_in_step([loss, *grads])
        grads, present = _outside_the_engine_averaged(running, grads, variables)
        return loss, grads, present
    return averages(loss, grads, variables)


def _outside_the_engine(running) -> set:
    """The ids of the variables Keras's step trains outside the model whose gradients the engine's wrapper averages in
    the backward (``forward_through_engine``: torch's DDP over the Keras model): the compiled loss module's own
    parameters (``module.loss_parameters``), which DDP does not hold; empty elsewhere."""
    if not getattr(running, "gradients_averaged_in_backward", False) or not _stepping:
        return set()
    from unidl.backends.keras.module import loss_parameters

    return {id(parameter) for parameter in loss_parameters(_stepping[-1].module)}


def _outside_the_engine_averaged(running, grads, variables):
    """``(grads, present)``: ``grads`` of ``variables``, those of the variables outside the engine's wrapper
    (``_outside_the_engine``: a loss's own parameters under DDP) averaged over the ranks too, in one collective per
    dtype, so that every rank applies the job's gradient to them, as one process does. Every rank joins with every
    such variable (they come from the compile, the same on every rank), whether or not its loss reached it (a branch
    of a loss's forward that reads a parameter for one rank's data only): zeros for a gradient None, as DDP's
    ``find_unused_parameters``, and a flag per variable in the same collective, ``present`` (None for the others),
    so that a variable no rank's loss reached keeps its value and slots (PyTorch's rule). Joining only with the
    gradients in hand hung the job where the ranks' counts differed, and summed one variable's gradient into
    another's where they did not."""
    outside = _outside_the_engine(running)
    outside = [index for index, variable in enumerate(variables) if id(variable) in outside]
    if not outside:
        return grads, None
    import keras

    grads = list(grads)
    filled = [grads[index] if grads[index] is not None
              else keras.ops.zeros(tuple(variables[index].shape), variables[index].dtype) for index in outside]
    had = keras.ops.convert_to_tensor([0.0 if grads[index] is None else 1.0 for index in outside],
                                      keras.backend.standardize_dtype(filled[0].dtype))  # (in the values' collective)
    *averaged, had = running.reduce_in_step([*filled, had], "mean")
    present = [None] * len(grads)
    for position, (index, value) in enumerate(zip(outside, averaged)):
        if grads[index] is None:
            present[index] = had[position] > 0
        grads[index] = value
    return grads, present


def accumulates_locally() -> bool:
    """Whether a step with ``accumulate`` N > 1 keeps its window on this rank and reduces it over the ranks once, at
    the window's last micro-step (``reduce_window``), as DDP's ``no_sync()`` accumulation: in any group of one
    replica a process. Not where replicas of one process share one window (``replicas_in_process``): they sum every
    micro-step's gradients and add them to it once (``update_once``). On torch's DDP the micro-steps' backwards run
    under ``no_sync()`` (``forward_through_engine``): Keras's trainer zeroes ``.grad`` before every backward, so the
    window cannot wait in ``.grad`` for the last backward's all-reduce as in torch's own idiom, and is the
    optimizer's. On TensorFlow's strategy the step has a graph without a collective for the micro-steps that do not
    close the window, and one with it for those that do (``graph_per_window_place``). Not on JAX's engine
    (``averages_in_step``): Keras's functional trainer keeps the optimizer's window in its state, reduced inside the
    step where it closes (``reduces_window_in_step``)."""
    running = _running()
    return (running is not None and not getattr(running, "averages_in_step", False)
            and not replicas_in_process())  # (replicas of one process share one window: summed at every micro-step)


def averages_in_step() -> bool:
    """Whether this process trains in a job whose engine averages inside Keras's compiled step (JAX's:
    ``average_in_step``, ``window_in_step``), where Keras's functional trainer keeps the optimizer's state."""
    running = _running()
    return running is not None and getattr(running, "averages_in_step", False)


def reduces_window_in_step() -> bool:
    """Whether a window of ``accumulate`` N > 1 that Keras's trainer keeps in its own state (Keras-on-JAX's
    functional trainer, on JAX's engine: ``averages_in_step``) stays on this rank and is reduced over the ranks
    once, inside the step at the window's last micro-step (``window_in_step``), as the jax backend's window."""
    return averages_in_step()


def window_in_step(sums, has_gradient, finite, closes):
    """``(sums, has_gradient, finite)`` of a window kept on this rank as the job's where ``closes`` (a boolean
    scalar: the window's last micro-step), in one all-reduce inside the step (the jax engine's ``window_in_step``:
    its ``io_callback`` inside a ``lax.cond``, no collective at the other micro-steps); ``has_gradient`` None where
    this rank had a gradient now (``reduces_window_in_step``)."""
    return _running().window_in_step(sums, has_gradient, finite, closes)


def reduce_window(values):
    """``values`` (a closing window's finite marker, has-gradient flags and sums: tensors, None kept) as the job's,
    in one collective (per dtype): summed where Keras scaled each rank's loss by ``1 / ranks`` (a ``tf.distribute``
    replica context: the sum is the mean, as ``sum_in_step``'s), else averaged (``accumulates_locally``)."""
    running = _running()
    return running.reduce_in_step(values, "mean" if _averages(running) else "sum")


def graph_per_window_place(native, make):
    """The compiled train step of ``native`` (``make()``: a new graph); where its compiled optimizer keeps a window
    of ``accumulate`` N > 1 on this rank in a group (``accumulates_locally``), two such graphs, one traced for the
    micro-steps that do not close the window (no collective) and one for those that do (the window reduced over
    the ranks), each call running the one its place in the window asks for: a collective inside the graph's
    conditional cannot run under TensorFlow's strategy (``merge_call`` inside a ``tf.cond``)."""
    optimizer = getattr(native, "optimizer", None)
    if getattr(optimizer, "window_size", 1) > 1 and accumulates_locally():
        return _WindowGraphs(optimizer, make)
    return make()


class _WindowGraphs:
    """``graph_per_window_place``'s two graphs, made at their first call; ``trace_count`` and
    ``concrete_functions`` over both."""

    def __init__(self, optimizer, make):
        self._optimizer, self._make, self._graphs = optimizer, make, {}

    def __call__(self, *args):
        closes = self._optimizer.closes_window()  # (the window's count kept in Python: no read from the device)
        graph = self._graphs.get(closes)
        if graph is None:
            graph = self._graphs[closes] = self._make()
        with self._optimizer.micro_step_at(closes):  # (read while the graph traces; the count moves past it)
            return graph(*args)

    @property
    def trace_count(self):
        return sum(graph.trace_count for graph in self._graphs.values())

    @property
    def concrete_functions(self):
        return [f for graph in self._graphs.values() for f in getattr(graph, "concrete_functions", [])]


def from_rank_0(native) -> None:
    """Rank 0's weights of ``native`` (a ``keras.Model`` being compiled for a step) on every rank, where the engine
    averages Keras's step inside it (JAX's ``averages_in_step``: its step has no ``data_parallel`` wrapper, which
    broadcasts them on TensorFlow's strategy; DDP broadcasts them when it wraps the model); nothing elsewhere."""
    running = _running()
    if running is None or not getattr(running, "averages_in_step", False):
        return
    import keras

    for variable, value in zip(native.weights, running.from_rank_0([keras.ops.convert_to_numpy(v.value)
                                                                     for v in native.weights])):
        variable.assign(value)


def mark_loss(loss) -> None:
    """Before the backward of Keras's train step (its ``optimizer.scale_loss``) inside ``forward_through_engine``:
    ``loss`` rides in that backward's all-reduce of the gradients (the host engine's ``mark_losses``: ``0 * loss``,
    0 or NaN, added to one gradient element), so that a non-finite loss of any rank makes every rank's averaged
    gradients non-finite; nothing elsewhere. Under ``no_sync()`` (a window kept on each rank) the mark waits
    unread, replaced by the next step's: the window's own reduction carries its finite flag."""
    if _stepping:
        _running().mark_losses(_stepping[-1], loss)


_stepping = []  # the DDP wrapper whose forward Keras's train step now runs (forward_through_engine)


@contextlib.contextmanager
def forward_through_engine(native):
    """For the duration of Keras's train step of ``native`` (a ``keras.Model`` that is a ``torch.nn.Module``),
    its forward runs through the engine's wrapper (``wrap_forward``: DistributedDataParallel, made once per
    model, which broadcasts rank 0's weights then), so that the step's ``loss.backward()`` averages the
    gradients over the ranks, the loss riding along (``mark_loss``); where the compiled optimizer keeps a window
    of ``accumulate`` N > 1 micro-steps (its own, or float16's loss scaler's), under the wrapper's ``no_sync()``
    (no all-reduce: the optimizer averages the window once, when it closes). Nothing outside a group or with an
    engine that carries the step otherwise."""
    running = _running()
    wrap = getattr(running, "wrap_forward", None)
    if wrap is None:
        yield
        return
    wrapped = native.__dict__.get("_unidl_wrapped_forward")
    if wrapped is None:
        wrapped = wrap(native)
        object.__setattr__(native, "_unidl_wrapped_forward", wrapped)
    # the optimizer's own window, or float16's (its loss scaler's): both reduced over the ranks when they close
    local = getattr(getattr(native, "optimizer", None), "window_size", 1) > 1
    with wrapped.no_sync() if local else contextlib.nullcontext(), _through(native, wrapped):
        yield


@contextlib.contextmanager
def _through(native, wrapped):
    """``native``'s ``call`` routed through ``wrapped`` (which calls ``native`` back) for the block, and
    ``wrapped`` the one ``mark_loss`` marks (each synced backward of Keras's step comes after its ``scale_loss``,
    which marks it anew)."""
    own_call, inside = native.call, []

    def call(*args, **kwargs):
        if inside:  # the wrapper's own call of the model: the forward itself
            return own_call(*args, **kwargs)
        inside.append(True)
        try:
            return wrapped(*args, **kwargs)
        finally:
            inside.pop()

    object.__setattr__(native, "call", call)  # Keras's __call__ reads self.call
    _stepping.append(wrapped)
    try:
        yield
    finally:
        _stepping.pop()
        del native.__dict__["call"]


def finite_on_every_rank(finite):
    """``finite`` (this rank's boolean scalar: its gradients are finite) as the job's: False on every rank where it
    is False on any (a sum of the ranks' "not finite" flags in the engine's all-reduce), so that Keras's loss
    scaler, which checks each rank's own scaled gradients before they are summed, skips a step on every rank
    alike and moves every rank's scale alike; ``finite`` itself outside a group, and where the engine averaged the
    gradients in the backward (DDP: a rank's non-finite gradient, or loss riding along, is in every rank's
    average, so every rank decides alike without a collective of its own) unless the step trains variables outside
    it (``_outside_the_engine``: a loss's own parameters, whose gradients are this rank's here)."""
    running = _running()
    if running is None or (getattr(running, "gradients_averaged_in_backward", False)
                           and not _outside_the_engine(running)):
        return finite
    import keras

    (overflows,) = running.reduce_in_step([keras.ops.cast(keras.ops.logical_not(finite), "float32")], "sum")
    return keras.ops.equal(overflows, 0.0)
