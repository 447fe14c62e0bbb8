"""Mixed precision on TensorFlow: the forward traced with explicit casts (``unidl.precision.autocast_modules``,
torch.autocast's rule), float32 master weights, and dynamic loss scaling for float16 as ``tf.Variable``s
updated inside the step's graph (a step whose gradients overflow is skipped by the optimizer's non-finite
guard, which then clips the unscaled gradients)."""

from __future__ import annotations

import tensorflow as tf

from unidl.fit_options import rank_0_state
from unidl.nn.module import trainable_mask
from unidl.precision import BACKOFF_FACTOR, GROWTH_FACTOR, autocast_modules, modules_of
from unidl.backends.tensorflow import ops as tf_ops
from unidl.backends.tensorflow.distributed import (accumulates_locally, average_gradients, data_parallel,
                                                   reduce_in_step, update_once)
from unidl.backends.tensorflow.function import PerModeGraphs, to_graph_input, with_summary
from unidl.backends.tensorflow.control_flow import gradient_conditions
from unidl.backends.tensorflow.optimizer import assign_numpy, finite_marker, read_numpy
from unidl.training import loss_scale_storage


class LossScale(tf.Module):
    """The dynamic loss scale (``torch.amp.GradScaler``'s rule) as variables a compiled step updates."""

    def __init__(self, precision):
        super().__init__(name="loss_scale")
        self.precision = precision
        self.scale = tf.Variable(float(precision.init_scale), dtype=tf.float32, trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def unscale(self, grads, loss):
        """``grads / scale`` (None stays None) and whether every one is finite and so is ``loss`` (the step's, or
        the window's losses: a non-finite loss whose gradients are finite counts as an overflow, as torch's step
        counts it, so that it too halves the scale and restarts the growth tracker)."""
        inverse = 1.0 / self.scale
        unscaled = [None if g is None else tf.convert_to_tensor(g) * tf.cast(inverse, g.dtype) for g in grads]
        checks = [tf.reduce_all(tf.math.is_finite(g)) for g in [loss, *unscaled] if g is not None]
        return unscaled, tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)

    def update(self, finite):
        p = self.precision
        good = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
        grow = good >= p.growth_interval
        grown = self.scale * GROWTH_FACTOR  # (kept where it would overflow float32, as GradScaler keeps it)
        grown = tf.where(tf.math.is_finite(grown), grown, self.scale)
        self.scale.assign(tf.where(finite, tf.where(grow, grown, self.scale), self.scale * BACKOFF_FACTOR))
        self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good))

    def checkpointed(self):
        """This scale as a ``unidl.training.LossScaler`` (the optimizer's checkpointed state)."""
        from unidl.training import variable_scaler

        return variable_scaler(self.precision, self.scale, self.good_steps, read_numpy, assign_numpy)


class Window(tf.Module):
    """What gradient accumulation keeps between micro-steps (``accumulate`` N > 1): the sum of the micro-steps'
    scaled gradients of ``loss / N``, which parameters had a gradient in them, their losses, and how many have
    run."""

    def __init__(self, params, accumulate):
        super().__init__(name="accumulation_window")
        self.accumulate, self._params = accumulate, params
        self.sums = [tf.Variable(tf.zeros_like(p), trainable=False, name="accumulated_gradient") for p in params]
        self.has_gradient = [tf.Variable(False, trainable=False, name="has_gradient") for _ in params]
        self.losses = tf.Variable(tf.zeros([accumulate], tf.float32), trainable=False, name="window_losses")
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="micro_steps")
        self.position = 0  # the micro-steps so far, in Python: a window kept on this rank in a job closes in a graph
        # of its own (its update's all-reduce), chosen before the call

    def add(self, grads, loss, reads):
        """Add one micro-step (``reads``: per parameter None, or whether the control flow that alone reads it ran,
        ``gradient_conditions``); the number of micro-steps in the window now. Every write waits for the loss and
        the gradients: a value check that fails in the forward (a label out of range) stops them, as torch's error."""
        with tf.control_dependencies([loss, *(g for g in grads if g is not None)]):
            for total, flag, grad, read in zip(self.sums, self.has_gradient, grads, reads):
                if grad is not None:
                    total.assign_add(grad / tf.cast(self.accumulate, grad.dtype))
                    flag.assign(True if read is None else tf.logical_or(flag.read_value(), read))
            self.losses.scatter_nd_update([[self.count]], tf.reshape(tf.cast(loss, tf.float32), [1]))
            return self.count.assign_add(1)

    def take(self, present, grads, reads):
        """The summed gradients (None where ``present`` is False), the window's losses and, per parameter, whether
        it had a gradient in the window (PyTorch's rule, ``NativeOptimizer._update``; None where not ``present``
        or where this micro-step's ``grads`` hold one unconditionally (``reads``): it had, and None lets the update
        take the fused kernel, as ``GraphOptimizer.apply``'s float32 window does); the window restarts."""
        sums = [total.read_value() if used else None for total, used in zip(self.sums, present)]
        has_gradient = [flag.read_value() if used and (grad is None or read is not None) else None
                        for flag, used, grad, read in zip(self.has_gradient, present, grads, reads)]
        losses = self.losses.read_value()
        with tf.control_dependencies([s for s in sums + has_gradient if s is not None] + [losses]):
            for total, flag, used in zip(self.sums, self.has_gradient, present):
                if used:
                    total.assign(tf.zeros_like(total))
                    flag.assign(False)
            self.count.assign(0)
        return sums, losses, has_gradient

    def checkpointed(self, scaler):
        """This window as a ``unidl.training.AccumulationWindow``: its sums unscaled by ``scaler``'s scale in
        force (None: no scaling; a power of two, so exactly), its finite flag read from its losses."""
        from unidl.training import variable_window

        scale = (lambda: float(scaler.scale.numpy())) if scaler is not None else None
        return variable_window(self.accumulate, self.sums, self.count, self.losses, read_numpy, assign_numpy,
                               scale=scale, storage=self, has_gradient=(self.has_gradient, self._params),
                               on_write=self._set_position)

    def _set_position(self, micro_steps: int) -> None:
        self.position = micro_steps

    def closes(self) -> bool:
        """Whether the next micro-step is the window's last (in Python: a graph of its own in a job)."""
        return self.position + 1 >= self.accumulate

    def advance(self) -> None:
        self.position = (self.position + 1) % self.accumulate

    def marks(self):
        """For the closing micro-step of a window kept on this rank in a data-parallel job (after ``add``, before
        ``take``, which empties the flags): a marker that is NaN where a micro-step's loss was not finite (else 0)
        and, per parameter, 1.0 where it had a gradient in the window (else 0.0), in the sums' dtype, to be
        averaged over the ranks with the sums in one collective: the guard then sees a NaN of any rank, and a
        parameter that any rank's micro-steps reached updates on every rank (DDP's rule)."""
        finite = tf.reduce_all(tf.math.is_finite(self.losses.read_value()))
        dtype = self.sums[0].dtype
        return finite_marker(finite, dtype), tf.cast(tf.stack([flag.read_value() for flag in self.has_gradient]), dtype)



def _float32(outputs):
    """A forward's outputs (a tensor, or tuples, lists and dicts of them) with their floats in float32."""
    return tf.nest.map_structure(
        lambda value: tf.cast(value, tf.float32) if tf.is_tensor(value) and value.dtype.is_floating
        and value.dtype != tf.float32 else value, outputs)


def train_step(backend, model, loss_fn, optimizer, precision, with_outputs, eager, accumulate=1):
    """``Backend.mixed_precision_train_step`` of the tensorflow backend: one graph per input signature, or
    eager with ``eager=True``, like its ``train_step``. With ``accumulate`` N > 1 the scaled gradients add up
    in a ``Window`` and the N-th micro-step unscales, checks, clips and updates once (``tf.cond`` in the graph)."""
    params = optimizer.params
    native = optimizer.native
    modules = modules_of(model, loss_fn)
    compute = precision.compute_dtype
    device = backend.current_device_name()
    with tf.device(device):
        # the optimizer's one loss scale (every float16 step of it moves the same; its checkpointed state)
        scaler = (loss_scale_storage(optimizer, precision, lambda: LossScale(precision)) if precision.scales_loss
                  else None)
    window = None
    if accumulate > 1:
        from unidl.training import accumulation_window

        def create():
            with tf.device(device):
                return Window(params, accumulate).checkpointed(scaler)

        # the optimizer's one window: every step of it with this accumulate and precision adds to it
        window = accumulation_window(optimizer, accumulate, precision, create).storage
    # in a job of one replica a process: the window kept on this rank, averaged once per update (DDP's no_sync)
    local_window = window is not None and accumulates_locally()

    def update(grads, loss, has_gradient=None):
        """The guarded update from (scaled) gradients: unscaled, one overflow check (of the gradients and ``loss``,
        the step's or the window's losses, or a job's marker) moving the scale, then the optimizer's non-finite
        guard (an overflowing step changes no weight or slot) and clipping."""
        if scaler is not None:
            grads, finite = scaler.unscale(grads, loss)
            scaler.update(finite)
        return native.apply(grads, loss, has_gradient=has_gradient)

    def step(x, y, *inputs):
        mask = trainable_mask(params)  # at trace time: a frozen parameter gets no gradient and no update
        with autocast_modules(modules, tf_ops, compute), tf.GradientTape() as tape:
            outputs = _float32(model(x, *inputs))
            loss = loss_fn(outputs, y)
            scaled = loss * tf.cast(scaler.scale, loss.dtype) if scaler is not None else loss
        found = tape.gradient(scaled, [p for p, m in zip(params, mask) if m])
        # in a process group: gradients over every rank, before unscaling, and the loss the guard checks averaged
        # too, so that every rank skips or applies the step alike (a window kept on this rank: at its update)
        found, checked = (found, loss) if local_window else average_gradients(found, loss)
        found = iter(found)
        grads = [next(found) if m else None for m in mask]
        if window is None:
            update_once(lambda: update(grads, checked))  # once per step with several devices in this process
        elif local_window:
            reads = gradient_conditions(params, grads, agree=False)  # (agreed with the sums, at the update)
            window.add(grads, checked, reads)
            if window.closes():  # (in Python: the graph of the window's last micro-step)
                marker, had = window.marks()
                sums, _, has_gradient = window.take(mask, grads, reads)
                marker, had, *sums = reduce_in_step([marker, had, *sums])
                update(sums, marker, [None if flag is None else had[index] > 0
                                      for index, flag in enumerate(has_gradient)])
            else:
                native.finite.assign(True)
        else:  # one process (several devices in it: the replicas' mean gradients, added to the one window once)
            update_once(lambda: micro_step(mask, grads, checked))
        return (loss, outputs) if with_outputs else loss

    def micro_step(mask, grads, checked):
        """A micro-step of the window in this process: added, and the window's update at its last."""
        reads = gradient_conditions(params, grads)  # (a loop that did not run: no gradient, as PyTorch's)
        count = window.add(grads, checked, reads)

        def wait():  # a micro-step inside the window: nothing skipped yet
            native.finite.assign(True)
            return tf.constant(True)

        return tf.cond(count >= accumulate, lambda: update(*window.take(mask, grads, reads)), wait)

    # in a process group: the strategy's replica context, rank 0's weights and loss parameters on every rank
    step = data_parallel(step, rank_0_state(model, loss_fn, optimizer))
    step = with_summary(step, with_outputs)  # fit's training metrics in the graph (Backend.summary_in_step)
    if eager:
        def run(*args):
            with tf.device(device):
                return step(*[to_graph_input(a) for a in args])
    else:
        run = PerModeGraphs(model, step, device, extra_key=lambda: (trainable_mask(params),
                                                                     local_window and window.closes()),
                            name=f"train_step of {type(model).__name__}")
    return _WithScale(run, scaler, native, window.advance if local_window else None)


class _WithScale:
    """A step that also reports its loss scale (``loss_scale()``) and its graphs' ``trace_count``."""

    def __init__(self, run, scaler, native, advance=None):
        self._run, self._scaler, self._native, self._advance = run, scaler, native, advance

    def __call__(self, *args):
        self._native.last_flag = None  # last_step_finite reads the optimizer's flag variable after this step
        result = self._run(*args)
        if self._advance is not None:  # a window kept on this rank: its place, for the next call's graph
            self._advance()
        return result

    def loss_scale(self) -> float:
        return float(self._scaler.scale.numpy()) if self._scaler is not None else 1.0

    @property
    def trace_count(self):
        return getattr(self._run, "trace_count", None)

    @property
    def concrete_functions(self):
        """The step's traced graphs (``PerModeGraphs.concrete_functions``); empty for an eager step."""
        return getattr(self._run, "concrete_functions", [])
