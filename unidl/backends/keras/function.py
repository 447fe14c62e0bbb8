"""The train step graph for the keras backend: Keras's own ``Model.train_step``, compiled by the host.

``ud.function``, ``ud.custom_gradient``, gradients and devices are the host backend's (``host.py``); on a host
that keeps Keras's state functional (JAX), through Keras's variables' values (``stateless.py``).
"""

from __future__ import annotations

from unidl.backends.keras import distributed as keras_distributed
from unidl.backends.keras.module import train_step_name
from unidl.backends.keras.host import HOST


def train_step_graph(native, per_batch: bool):
    """Keras's own ``Model.train_step`` of a compiled ``keras.Model`` (forward, Keras's loss, gradients,
    the compiled optimizer, Keras's loss and metric trackers) as one graph compiled by the host backend's
    ``function``, traced once per input rank and dtype; None where the host compiles no graphs (the
    caller then uses Keras's ``train_on_batch`` / ``Model.fit``).

    ``per_batch``: ``step(x, y)`` resets the trackers first and returns this batch's loss, as
    ``train_on_batch`` does; otherwise it returns Keras's logs (running means since the last
    ``reset_metrics()``), as ``Model.fit`` reports them. Either way without ``train_on_batch``'s and
    ``fit``'s per-call Python (a generator wrapped for a nested-argument ``tf.function``, an eager
    metric reset, callbacks, the logs converted back): about 0.4 ms a step on a 2-core CPU for
    ``train_on_batch``, 2 ms for ``fit``, against 1 ms for the two-layer net's whole graph.
    """
    if not HOST.compiles_keras_train_step:
        return None
    step = _train_step(native, per_batch)
    # in a job with a window kept on each rank: a graph for the micro-steps that close it, one for the others
    return keras_distributed.graph_per_window_place(
        native, lambda: HOST.keras_train_step_function(step, train_step_name(native)))


def eager_train_step(native, per_batch: bool = False):
    """Keras's own ``Model.train_step`` of a compiled ``keras.Model`` run by Python at every call, as Keras's
    ``run_eagerly`` runs it, returning Keras's running logs as ``train_step_graph(native, per_batch)`` does (the
    batch's loss with ``per_batch``); None on a host that keeps Keras's state functional (JAX: its ``train_step``
    takes and returns the state). For ``ud.fit(eager=True)`` with per-step inputs, which ``Model.fit`` cannot take
    batch by batch (its ``tf.data`` input pipeline refuses a number's rank-0 tensor), and for ``eager=True`` in a
    job whose engine runs Keras's step in its replica context (``keras_distributed.in_group``: TensorFlow's
    strategy), which Keras's eager ``train_on_batch`` and ``Model.fit`` would leave (their gradients summed over
    no rank): this step runs in it, eagerly, as the compiled one does in its graph."""
    if not HOST.keras_state_in_place:
        return None
    return _train_step(native, per_batch=per_batch)


def _train_step(native, per_batch: bool):
    """``step(x, y, *inputs)``: Keras's ``train_step`` on one batch (see ``train_step_graph``). With several
    replicas in this process (``keras_distributed.replicas_in_process``) each runs Keras's step on its share and
    adds it to the same loss and metric trackers: they are reset before the replicas and read after them."""
    replicas = keras_distributed.replicas_in_process()

    def train_step(x, y, *inputs):  # extra step inputs reach the forward as model(x, *inputs)
        if per_batch and not replicas:
            native.reset_metrics()
        logs = native.train_step(((x, *inputs) if inputs else x, y, None))
        if replicas:  # (each replica's logs miss the trackers' updates of the replicas after it)
            return None
        return logs["loss"] if per_batch else logs

    # in a data-parallel job: run in the engine's replica context, rank 0's weights on every rank
    step = keras_distributed.data_parallel(train_step, native.weights)
    if not replicas:
        return step
    _loss_counted_per_share(native._loss_tracker)

    def replicated_step(x, y, *inputs):
        # several replicas of this process add their shares to the same trackers: reset before any of them runs,
        # and the logs read after all of them ran (the graph orders the trackers' reads and writes as made)
        if per_batch:
            native.reset_metrics()
        step(x, y, *inputs)
        logs = native.get_metrics_result()
        return logs["loss"] if per_batch else logs

    return replicated_step


def _loss_counted_per_share(tracker):
    """Make Keras's loss ``tracker`` (a ``Mean`` that counts each update by its share's samples) count a replica's
    share by the engine's ``share_loss_weight`` (the batch's samples over the replicas) where one is in force:
    a batch split unevenly (5 samples: 2 + 3) then reports the shares' average, as the tensorflow backend's step
    and DDP's rank losses do, the objective whose gradient the summed replica gradients are, not the whole
    batch's mean; an epoch's running loss weighs each batch by its size, as ``fit``'s own loop. As it is
    elsewhere (outside a replica no weight is in force). Once per tracker (a compile has its own)."""
    if getattr(tracker, "_unidl_counted_per_share", False):
        return
    update = tracker.update_state

    def update_state(values, sample_weight=None):
        weight = keras_distributed.share_loss_weight()
        return update(values, sample_weight=sample_weight if weight is None else weight)

    object.__setattr__(tracker, "update_state", update_state)
    object.__setattr__(tracker, "_unidl_counted_per_share", True)
