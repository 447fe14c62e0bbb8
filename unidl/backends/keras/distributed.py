"""Keras's data-parallel engine is its host framework's (``host.py``), where that engine can carry Keras's own
train step: on Keras-on-TensorFlow, ``tf.distribute.MultiWorkerMirroredStrategy`` runs the step in its replica
context and its all-reduce sums the gradients inside the step, before unidl's guard, clipping and update.

Keras scales each rank's loss by ``1 / ranks`` inside a ``tf.distribute`` replica context (its trainer's own
rule), so the *sum* over the ranks of the gradients is their mean, as Keras's TensorFlow optimizer would
compute it; unidl sums them itself (``sum_in_step``) so that the non-finite guard and clipping see the job's
gradient, and Keras's optimizer then updates without summing again.
"""

from __future__ import annotations

from unidl.backends.keras.host import HOST
from unidl.errors import DistributedError


def engine():
    """The host's engine when it can carry Keras's step (``data_parallel`` and ``reduce_in_step``); else a
    ``DistributedError`` naming what works."""
    found = HOST.distributed_engine()
    if found is None or not hasattr(found, "reduce_in_step"):
        raise DistributedError(
            f"the keras backend trains data-parallel on Keras-on-TensorFlow only (KERAS_BACKEND=tensorflow, "
            f"tf.distribute.MultiWorkerMirroredStrategy); Keras runs on {HOST.name} here: use unidl's "
            f"{HOST.name} backend for a data-parallel job, or KERAS_BACKEND=tensorflow")
    return found


def _running():
    from unidl.distributed import process_group

    group = process_group.current()
    return group.engine if group is not None and group.engine is not None else None


def in_group() -> bool:
    """True while this process trains with others (a group with an engine)."""
    return _running() is not None


def data_parallel(step, variables=()):
    """``step`` in the engine's replica context with rank 0's ``variables`` broadcast; ``step`` outside a group."""
    running = _running()
    return step if running is None else running.data_parallel(step, variables)


def sum_in_step(values):
    """``values`` summed over the ranks inside a ``data_parallel`` step (None entries kept); as they are
    outside a group."""
    running = _running()
    return list(values) if running is None else running.reduce_in_step(values, "sum")
