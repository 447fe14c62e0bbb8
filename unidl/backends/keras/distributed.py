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
backward; unidl only averages the step's loss for the guard.
"""

from __future__ import annotations

import contextlib

from unidl.backends.keras.host import HOST
from unidl.errors import DistributedError


def engine():
    """The host's engine when it can carry Keras's step: one that runs a step in its replica context
    (``data_parallel`` and ``reduce_in_step``: TensorFlow's strategy), or one that wraps a forward
    (``wrap_forward``: torch's DistributedDataParallel, see ``forward_through_engine``); else a
    ``DistributedError`` naming what works."""
    found = HOST.distributed_engine()
    if found is not None and hasattr(found, "reduce_in_step"):
        return _OneDevicePerProcess(found)
    if found is not None and hasattr(found, "wrap_forward"):
        return _ForwardWrappingEngine(found)
    raise DistributedError(
        f"the keras backend trains data-parallel on Keras-on-TensorFlow (tf.distribute.MultiWorkerMirroredStrategy) "
        f"and Keras-on-torch (DistributedDataParallel) only; Keras runs on {HOST.name} here: use unidl's "
        f"{HOST.name} backend for a data-parallel job, or KERAS_BACKEND=tensorflow or torch")


class _OneDevicePerProcess:
    """The host's engine, refusing several devices in one process: Keras's optimizer updates its variables in
    every replica of a ``MirroredStrategy`` unless Keras made them under the strategy's scope, which unidl's
    keras models do not (so N replicas would apply N updates)."""

    def __init__(self, host_engine):
        self._host_engine = host_engine

    def __getattr__(self, name):
        return getattr(self._host_engine, name)

    def start_devices(self, devices, timeout):
        raise DistributedError(
            f"the keras backend trains one device per process (devices={list(devices)} in one process is not "
            f"available: Keras's optimizer would update once per replica); use unidl's tensorflow backend for "
            f"several devices in one process, or one process per device (unidl.distributed.launch(fn, "
            f"nprocs={len(devices)}))")


class _ForwardWrappingEngine(_OneDevicePerProcess):
    """The host's engine where it averages gradients in the backward of a wrapped forward (torch's
    ``DistributedDataParallel``): Keras's own train step runs its forward through the wrapper
    (``forward_through_engine``), so that ``loss.backward()`` in Keras's trainer leaves every rank the averaged
    gradients; the optimizer then only agrees the step's loss over the ranks (``sum_in_step``)."""

    gradients_averaged_in_backward = True

    @staticmethod
    def data_parallel(step, variables=()):
        return step  # no compiled Keras step on this host: Keras's trainer runs forward_through_engine

    def reduce_in_step(self, values, op="mean"):
        """``values`` (tensors; None kept) reduced over the ranks with ``op``, one collective each."""
        return [None if v is None else self._host_engine.all_reduce(v, op) for v in values]


def _running():
    from unidl.distributed import process_group

    group = process_group.current()
    return group.engine if group is not None and group.engine is not None else None


def in_group() -> bool:
    """True while this process trains with others on an engine that carries Keras's step in its replica
    context (TensorFlow's strategy: the gradients are summed by ``sum_in_step``, and Keras's own update must
    not sum them again); False outside a group and where the engine averaged them in the backward (torch's
    DDP), where Keras's own update runs as in one process."""
    running = _running()
    return running is not None and not getattr(running, "gradients_averaged_in_backward", False)


def data_parallel(step, variables=()):
    """``step`` in the engine's replica context with rank 0's ``variables`` broadcast; ``step`` outside a group."""
    running = _running()
    return step if running is None else running.data_parallel(step, variables)


def sum_in_step(values):
    """``values`` (the step's loss, then its gradients) summed over the ranks inside a ``data_parallel`` step
    (None entries kept); as they are outside a group. Where the engine averaged the gradients in the backward
    already (``forward_through_engine``), the gradients stay as they are and the loss, not scaled by Keras on
    that host, is averaged, so that the non-finite guard decides alike on every rank."""
    running = _running()
    if running is None:
        return list(values)
    if getattr(running, "gradients_averaged_in_backward", False):
        loss, *grads = values
        return [running.reduce_in_step([loss], "mean")[0], *grads]
    return running.reduce_in_step(values, "sum")


@contextlib.contextmanager
def forward_through_engine(native):
    """For the duration of Keras's train step of ``native`` (a ``keras.Model`` that is a ``torch.nn.Module``),
    its forward runs through the engine's wrapper (``wrap_forward``: DistributedDataParallel, made once per
    model, which broadcasts rank 0's weights then), so that the step's ``loss.backward()`` averages the
    gradients over the ranks; nothing outside a group or with an engine that carries the step otherwise."""
    running = _running()
    wrap = getattr(running, "wrap_forward", None)
    if wrap is None:
        yield
        return
    wrapped = native.__dict__.get("_unidl_wrapped_forward")
    if wrapped is None:
        wrapped = wrap(native)
        object.__setattr__(native, "_unidl_wrapped_forward", wrapped)
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
    try:
        yield
    finally:
        del native.__dict__["call"]


def finite_on_every_rank(finite):
    """``finite`` (this rank's boolean scalar: its gradients are finite) as the job's: False on every rank where it
    is False on any (a sum of the ranks' "not finite" flags in the engine's all-reduce), so that Keras's loss
    scaler, which checks each rank's own scaled gradients before they are summed, skips a step on every rank
    alike and moves every rank's scale alike; ``finite`` itself outside a group."""
    running = _running()
    if running is None:
        return finite
    import keras

    (overflows,) = running.reduce_in_step([keras.ops.cast(keras.ops.logical_not(finite), "float32")], "sum")
    return keras.ops.equal(overflows, 0.0)
