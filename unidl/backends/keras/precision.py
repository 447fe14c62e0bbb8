"""Mixed precision on Keras: Keras's own trainer with the forward traced through explicit casts
(``unidl.precision.autocast_modules``, torch.autocast's rule) over the float32 variables, and for float16
Keras's ``LossScaleOptimizer`` around the unidl optimizer (dynamic loss scaling that skips an overflowing
step, halving the scale; doubling it after ``growth_interval`` finite steps), on whichever host runs Keras."""

from __future__ import annotations

import contextlib

import keras

from unidl.backends.keras import distributed as keras_distributed
from unidl.backends.keras import ops as keras_ops
from unidl.backends.keras.dtypes import floatx
from unidl.backends.keras.host import HOST
from unidl.backends.keras.module import step_key
from unidl.backends.keras.optimizer import (LocalWindow, assign_numpy, dense_gradient, gradients_used,
                                           numpy_initializer, own_gradients, read_numpy,
                                           trainer_values_in_optimizer_order)
from unidl.precision import autocast_modules, modules_of


class LossScaleOptimizer(LocalWindow, keras.optimizers.LossScaleOptimizer):
    """Keras's loss scaler that also hands the step's (unscaled) loss to the unidl optimizer it wraps, whose
    non-finite guard reads it, and reports a skipped step in that optimizer's ``last_step_finite``.

    With ``accumulate`` N > 1 (``prepare_window``) it keeps ``torch.amp.GradScaler``'s accumulation: each
    micro-step adds its scaled gradients of ``loss / N`` to a window, and the N-th hands their sum to Keras's
    own scaler logic: one overflow check, one scale move and one (unscaled, guarded, clipped) update per window,
    the same rule whether Keras's trainer updates variables in place (``apply``) or threads them as values
    (``stateless_apply``, Keras-on-JAX). In a data-parallel job each rank keeps its own window, reduced over the
    ranks once, when it closes, before the overflow check (Keras-on-torch's DDP and TensorFlow's strategy:
    ``_local_micro_step``, on TensorFlow in the graph traced for the window's last micro-step; JAX's engine: inside
    the step, ``keras_distributed.window_in_step``); a step without a window (``accumulate`` 1) on JAX's engine is
    averaged before that check too, in one all-reduce (``_stateless_apply``). Replicas of one process
    (``init(devices=...)``) share one window, the job's gradients added to it once per micro-step
    (``_apply_once``)."""

    _window_size = 1
    _closing_finite = None  # (the closing window's finite flag while Keras's apply of its sums runs: check_finite)

    def scale_loss(self, loss):
        self.inner_optimizer.scale_loss(loss)
        return super().scale_loss(loss)

    def _apply_closing(self, finite, apply):
        """``apply()`` (Keras's scaler logic on a closing window's sums) with the window's finite flag ``finite``
        (its losses') held for ``check_finite``, as the wrapped optimizer holds the step's loss (``scale_loss``):
        a window of finite gradients and a non-finite loss is skipped and halves the scale, as an overflow."""
        object.__setattr__(self, "_closing_finite", finite)
        try:
            return apply()
        finally:
            object.__setattr__(self, "_closing_finite", None)

    def _loss_finite(self, finite):
        """The window's finite flag ``finite`` (so far) with this micro-step's loss (where Keras's variables
        change in place the wrapped optimizer holds it, ``scale_loss``): a scalar, kept between micro-steps
        (``_window_finite``), no read from the device."""
        loss = self.inner_optimizer._step_loss
        return finite if loss is None else keras.ops.logical_and(finite, keras.ops.all(keras.ops.isfinite(loss)))

    def prepare_window(self, accumulate: int, params) -> None:
        """Set the micro-steps per update, creating (eagerly, never inside a trace) the window's variables: the
        scaler's own (``variables``), so that a trainer that threads the optimizer's state (Keras-on-JAX) carries
        the window from call to call."""
        object.__setattr__(self, "_window_size", accumulate)
        if accumulate > 1 and getattr(self, "_window", None) is None:
            with keras.name_scope(self.name):
                # (initial values from NumPy, each with its dtype: keras/optimizer.py ``numpy_initializer``)
                window = [self.add_variable(tuple(p.shape), initializer=numpy_initializer(0), dtype=p.dtype,
                                            name="accumulated_scaled_gradient") for p in params]
                count = self.add_variable((), initializer=numpy_initializer(0), dtype="int64", name="micro_steps")
                # per parameter: it had a gradient in a micro-step of the window so far (torch's .grad is not None)
                has_gradient = [self.add_variable((), initializer=numpy_initializer(False), dtype="bool",
                                                  name="has_gradient")
                                for _ in params]
                # every micro-step's loss so far was finite (a non-finite loss may come with finite gradients)
                finite = self.add_variable((), initializer=numpy_initializer(True), dtype="bool",
                                           name="window_finite")
            object.__setattr__(self, "_window", window)
            object.__setattr__(self, "_window_finite", finite)
            object.__setattr__(self, "_window_count", count)
            object.__setattr__(self, "_window_has_gradient", has_gradient)
            object.__setattr__(self, "_window_params", params)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """``apply``'s rule where Keras threads the optimizer's state as values (Keras-on-JAX's trainer): each
        micro-step adds its scaled gradients of ``loss / N`` to the window, and the N-th hands the window's sum to
        Keras's own ``stateless_apply`` (one overflow check, one scale move, one update), the window then empty.
        The trainer's values and gradients (the model's trainable variables, in its order) are matched to the
        optimizer's by identity (``trainer_values_in_optimizer_order``)."""
        return trainer_values_in_optimizer_order(self.inner_optimizer, self._stateless_apply, optimizer_variables,
                                                 grads, trainable_variables)

    def _stateless_apply(self, optimizer_variables, grads, trainable_variables):
        accumulate = getattr(self, "_window_size", 1)
        inner = self.inner_optimizer
        in_job = keras_distributed.averages_in_step()
        if accumulate == 1:
            if not in_job:
                return super().stateless_apply(optimizer_variables, grads, trainable_variables)
            # in a job on JAX's engine: the job's gradients and loss, in one all-reduce, before Keras's overflow
            # check reads them (as torch's GradScaler checks the gradients DDP averaged)
            loss, grads, present = inner.job_gradients(inner._step_loss, grads, inner._trainable_variables)
            with inner.applying_the_jobs(loss, present):
                return super().stateless_apply(optimizer_variables, grads, trainable_variables)
        variables = self.variables
        with keras.StatelessScope(state_mapping=list(zip(variables, optimizer_variables))) as scope:
            indices = [inner._get_variable_index(v) for v in inner._trainable_variables]
            totals, flags = [self._window[i] for i in indices], [self._window_has_gradient[i] for i in indices]
            # PyTorch's rule over the window: a variable the micro-step's loss did not use (no gradient now, where
            # Keras's trainer gives zeros: ``gradients_used``) keeps its sum, and updates where the window closes
            # if it had a gradient at an earlier micro-step (``had``: None where it has one now)
            now = gradients_used(grads, inner.used_gradients)
            sums = [None if g is None else t.value if n is None else t + keras.ops.cast(n, t.dtype) / accumulate
                    for t, g, n in zip(totals, grads, now)]
            had = [None if total is None or n is not None else flag.value
                   for total, n, flag in zip(sums, now, flags)]
            count = self._window_count + 1
            closes = count >= accumulate
            for total, new, flag, earlier in zip(totals, sums, flags, had):
                if new is not None:  # the window starts again when it closes
                    total.assign(keras.ops.where(closes, keras.ops.zeros_like(new), new))
                    still_open = keras.ops.logical_not(closes)
                    flag.assign(still_open if earlier is None else keras.ops.logical_and(still_open, earlier))
            self._window_count.assign(keras.ops.where(closes, keras.ops.zeros_like(count), count))
            # a loss's NaN is in its gradients, so in the sums (keras/module.py ``_loss_marked_in_a_gradient``),
            # which the checkpoint reads too; where the optimizer's parameters are all frozen (no sums) in the
            # gradient read as the loss (``trainer_values_in_optimizer_order``), kept here for the window
            finite = self._loss_finite(self._window_finite.value)
            self._window_finite.assign(keras.ops.logical_or(closes, finite))
            inner.finite.assign(True)  # a micro-step inside the window: nothing skipped yet
        state = [scope.get_current_value(v) for v in variables]
        if in_job:  # on JAX's engine: where the window closes, its sums, flags and finite flag as the job's, in one
            # all-reduce (none at the other micro-steps), before Keras's overflow check (PyTorch's rule with DDP: a
            # variable updates if any rank's window had a gradient for it)
            sums, had, finite = keras_distributed.window_in_step(sums, had, finite, closes)

        def update():
            # the window's sums and flags as they are (its losses are in its finite flag, agreed with its sums in a
            # job): no second ``gradients_used`` of the closing micro-step alone
            with inner.applying_the_jobs(None, had):
                return self._apply_closing(finite, lambda: super(LossScaleOptimizer, self).stateless_apply(
                    state, sums, trainable_variables))

        return keras.ops.cond(closes, update, lambda: (list(trainable_variables), state))

    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        before = keras.ops.multiply(self.dynamic_scale, 1.0)  # (a copy: the scale before Keras may double it)
        super()._stateful_handle_finite_grads(grads, trainable_variables)
        self.dynamic_scale.assign(_kept_finite(self.dynamic_scale, before))

    def _stateless_handle_finite_grads(self, optimizer_variables, grads, trainable_variables):
        trainable_variables, values = super()._stateless_handle_finite_grads(optimizer_variables, grads,
                                                                             trainable_variables)
        index = [id(v) for v in self.variables].index(id(self.dynamic_scale))
        values = list(values)
        values[index] = _kept_finite(values[index], optimizer_variables[index])
        return trainable_variables, values

    def _stateless_handle_non_finite_grads(self, optimizer_variables, trainable_variables):
        # Keras's (scale halved, update skipped), with the step reported skipped in last_step_finite
        trainable_variables, values = super()._stateless_handle_non_finite_grads(optimizer_variables,
                                                                                trainable_variables)
        index = [id(v) for v in self.variables].index(id(self.inner_optimizer.finite))
        values[index] = keras.ops.convert_to_tensor(False)
        return trainable_variables, values

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is not None:  # (a trainer's: every trainable variable of the model; the overflow
            # check reads the optimizer's gradients only, as torch's GradScaler unscales only those)
            grads, trainable_variables, _ = own_gradients(self.inner_optimizer, grads, list(trainable_variables))
        accumulate = getattr(self, "_window_size", 1)
        if keras_distributed.replicas_in_process():
            return self._apply_once(grads, trainable_variables, accumulate)
        if accumulate == 1:
            return super().apply(grads, trainable_variables)
        variables = list(trainable_variables) if trainable_variables is not None else list(self._trainable_variables)
        grads = [None if g is None else dense_gradient(g) for g in grads]  # (an Embedding's rows: summed into totals)
        local = keras_distributed.accumulates_locally()  # this rank's window, reduced over the ranks at its end
        if local:
            inner = self.inner_optimizer
            indices = [inner._get_variable_index(v) for v in variables]
            # a parameter read only by a loop or branch that did not run has no gradient (NativeOptimizer.apply)
            reads = HOST.gradient_conditions(variables, grads, agree=False)
            # every write of the micro-step waits for its gradients and loss (a value check failed in the forward:
            # none)
            with self._this_micro_step(), HOST.after([*grads, inner._step_loss]):
                self._local_micro_step(grads, variables, indices, [self._window[i] for i in indices], reads,
                                       accumulate)
            return
        self._micro_step(grads, variables, accumulate, lambda sums: super(LossScaleOptimizer, self).apply(
            sums, variables))

    def _micro_step(self, grads, variables, accumulate, apply):
        """A micro-step of the window of this process (one replica, or several that share it: run once for them,
        on the job's gradients): ``grads`` added to the window, and at its last micro-step the window's sums handed
        to ``apply`` (Keras's scaler logic: one overflow check, one scale move, one update), the window emptied."""
        inner = self.inner_optimizer
        indices = [inner._get_variable_index(v) for v in variables]
        totals = [self._window[i] for i in indices]
        # a parameter read only by a loop or branch that did not run has no gradient (NativeOptimizer.apply)
        reads = HOST.gradient_conditions(variables, grads)
        # every write of the micro-step waits for its gradients and loss (a value check failed in the forward: none)
        computed = [*grads, inner._step_loss]
        self.set_window_position(None)  # (the count moves on the device)
        flags = {i: self._window_has_gradient[i] for i, g, read in zip(indices, grads, reads)
                 if g is None or read is not None}
        with HOST.after(computed):
            for total, grad, index, read in zip(totals, grads, indices, reads):
                if grad is not None:
                    total.assign(total + keras.ops.cast(grad, total.dtype) / accumulate)
                    flag = self._window_has_gradient[index]
                    flag.assign(keras.ops.convert_to_tensor(True) if read is None
                                else keras.ops.logical_or(flag, read))
            count = self._window_count + 1
            self._window_count.assign(count)
            closes = count >= accumulate
            finite = self._loss_finite(keras.ops.convert_to_tensor(self._window_finite))
            self._window_finite.assign(keras.ops.logical_or(closes, finite))  # (True again once the window closes)

        def update():
            # PyTorch's rule over the window: a parameter without a gradient now updates with its sum if it had
            # one in an earlier micro-step (its flag), else keeps its value and slots (NativeOptimizer's rule)
            sums = [keras.ops.convert_to_tensor(t) for t in totals]
            had = {i: keras.ops.convert_to_tensor(flag) for i, flag in flags.items()}
            inner._with_window_rule(had, lambda: self._apply_closing(finite, lambda: apply(sums)))
            for total, index in zip(totals, indices):
                total.assign(keras.ops.zeros_like(total))
                self._window_has_gradient[index].assign(keras.ops.convert_to_tensor(False))
            self._window_count.assign(keras.ops.convert_to_tensor(0, "int64"))
            return keras.ops.convert_to_tensor(True)

        def wait():  # a micro-step inside the window: nothing skipped yet
            inner.finite.assign(True)
            return keras.ops.convert_to_tensor(True)

        keras.ops.cond(closes, update, wait)

    def _apply_once(self, grads, trainable_variables, accumulate):
        """``apply`` where several replicas of this process share the variables (``init(devices=...)``): the
        job's gradients and loss in one all-reduce in each replica (``job_gradients``), then Keras's overflow check,
        scale move and the guarded update once for all of them (``keras_distributed.update_once``, as the
        tensorflow backend's loss scaler under its ``MirroredStrategy``): the collective cannot run inside the
        check's conditional there (``merge_call`` inside a ``tf.cond``). With ``accumulate`` N > 1 the job's
        gradients are added once to the one window the replicas share (``_micro_step``), which at its last
        micro-step runs the same check, move and update on its sums, as one device's window."""
        inner = self.inner_optimizer
        variables = list(trainable_variables) if trainable_variables is not None else list(self._trainable_variables)
        if accumulate > 1:
            grads = [None if g is None else dense_gradient(g) for g in grads]  # (as apply's window)
        loss, grads, present = inner.job_gradients(inner._step_loss, grads, variables)
        with inner.applying_the_jobs(loss, present):
            # (Keras's rule without its TensorFlow entry, which refuses the cross-replica context it runs in here)
            if accumulate == 1:
                return keras_distributed.update_once(lambda: self._common_apply(grads, trainable_variables))
            return keras_distributed.update_once(lambda: self._micro_step(
                grads, variables, accumulate, lambda sums: self._common_apply(sums, variables)))

    @property
    def window_size(self) -> int:
        """The micro-steps per update of the steps compiled with this scaler (1: no window)."""
        return self._window_size

    @property
    def _window_counter(self):
        return self._window_count  # (LocalWindow's count variable)

    def _local_micro_step(self, grads, variables, indices, totals, reads, accumulate):
        """``apply``'s micro-step of a window kept on this rank (``keras_distributed.accumulates_locally``: every
        micro-step's backward ran under DDP's ``no_sync()``), the float16 counterpart of
        ``NativeOptimizer._local_micro_step``: this rank's scaled gradients added to its window, and its loss to
        the window's finite flag (``LocalWindow._add_to_local_window``); at the window's last micro-step (decided in
        Python: ``micro_step_at``) its scaled sums, has-gradient flags and finite flag are averaged over the ranks
        in one all-reduce, an overflow of any rank's window reaching every rank's sums and a non-finite loss of any
        rank every rank's flag, and Keras's scaler logic runs once on the job's sums and flag
        (``_apply_closing``): every rank skips the window and halves its scale, or updates, alike."""
        inner = self.inner_optimizer
        finite = self._loss_finite(keras.ops.convert_to_tensor(self._window_finite))
        closed = self._add_to_local_window(totals, grads, indices, reads, accumulate, window_finite=finite)
        if closed is None:
            self._window_finite.assign(finite)
            inner.finite.assign(True)  # a micro-step inside the window: nothing skipped yet
            return
        self._window_finite.assign(keras.ops.convert_to_tensor(True))
        sums, flags, job_finite = closed
        # on TensorFlow's strategy the job's sums and flag are in hand (reduce_window): Keras's overflow check and
        # the update inside its conditional reduce nothing again (a second sum, and a collective inside the cond);
        # DDP's (Keras-on-torch) reductions there are none already
        with (inner.applying_the_jobs(None, None) if keras_distributed.in_group() else contextlib.nullcontext()):
            inner._with_window_rule(flags, lambda: self._apply_closing(
                job_finite, lambda: super(LossScaleOptimizer, self).apply(sums, variables)))

    def checkpointed(self):
        """This scaler's scale as a ``unidl.training.LossScaler`` (the optimizer's checkpointed state): Keras's
        ``dynamic_scale`` and ``step_counter`` (finite steps in a row since the scale moved: GradScaler's growth
        tracker)."""
        from unidl.training import variable_scaler

        return variable_scaler(self.unidl_precision, self.dynamic_scale, self.step_counter, read_numpy, assign_numpy)

    def check_finite(self, grads):
        """Keras's check of the (scaled) gradients, and of the losses: the step's (``accumulate`` 1) or the
        closing window's flag (``_apply_closing``). A non-finite loss with finite gradients is an overflow too
        (torch's step): skipped, the scale halved, the growth tracker reset."""
        finite = super().check_finite(grads)
        if self._window_size == 1:
            finite = self._loss_finite(finite)
        elif self._closing_finite is not None:
            finite = keras.ops.logical_and(finite, self._closing_finite)
        if self.inner_optimizer.applies_the_jobs:  # (the job's gradients and losses, reduced by this scaler
            # before its check: every rank decides alike, with no second all-reduce)
            return finite
        # in a data-parallel job the grads here are this rank's own: the overflow decision is the job's (any rank)
        return keras_distributed.finite_on_every_rank(finite)

    def _stateful_handle_non_finite_grads(self):
        self.inner_optimizer.finite.assign(False)  # the step was skipped: last_step_finite says so
        return super()._stateful_handle_non_finite_grads()


def _kept_finite(scale, before):
    """The loss scale after Keras's growth, or ``before`` where the growth overflowed float32 (GradScaler keeps a
    scale whose growth would overflow; Keras's became inf, and every later step was skipped)."""
    return keras.ops.where(keras.ops.isfinite(scale), scale, before)


def keras_optimizer(optimizer, precision, accumulate=1):
    """The Keras optimizer to compile with: the unidl optimizer's own, or for "16-mixed" its loss scaler, the
    optimizer's one loss scale (``unidl.training.loss_scale_storage``: created by its first float16 step, then
    compiled into every later one, ``ud.train_step``'s and ``ud.fit``'s alike, so that they move one scale, which
    carries over from epoch to epoch). bf16 with ``accumulate`` runs the optimizer's own accumulation; Keras's
    loss scaler checks and moves its scale at every micro-step, so for float16 with ``accumulate`` the window is
    the scaler's (``prepare_window``). Either window is the optimizer's one (``unidl.training.accumulation_window``:
    every step of it with this ``accumulate`` and precision adds to the same variables)."""
    from unidl.training import accumulation_window, loss_scale_storage, variable_window

    if precision is None or not precision.scales_loss:
        if accumulate > 1:
            accumulation_window(optimizer, accumulate, precision, lambda: optimizer.native.window(accumulate))
        return optimizer.native

    def create():
        with floatx("float32"):
            scaler = LossScaleOptimizer(optimizer.native, initial_scale=precision.init_scale,
                                        dynamic_growth_steps=precision.growth_interval)
            scaler.build(optimizer.params)  # its scale now, eagerly: never created inside a graph being traced
        scaler.unidl_precision = precision
        return scaler

    scaler = loss_scale_storage(optimizer, precision, create)
    # the window is the scaler's (its sum checked once per update); the wrapped optimizer updates at every call
    optimizer.native.prepare_accumulation(1)
    scaler.prepare_window(accumulate, optimizer.params)
    if accumulate > 1:  # the scaler's window (scaled sums, count, finite flag) is the optimizer's checkpointed
        # window: its sums unscaled by the scale in force; a non-finite window is its flag False (or a NaN in its
        # sums), found by the scaler's one check of the sums and the flag at the update (``check_finite``)
        accumulation_window(optimizer, accumulate, precision, lambda: variable_window(
            accumulate, scaler._window, scaler._window_count, scaler._window_finite, read_numpy, assign_numpy,
            on_write=scaler.set_window_position,
            scale=lambda: float(keras.ops.convert_to_numpy(scaler.dynamic_scale)), storage=scaler,
            has_gradient=(scaler._window_has_gradient, scaler._window_params)))
    return scaler


def forward_scope(model, loss_fn, precision):
    """The casts of ``precision`` in force for the model's and the loss's forward while Keras traces or runs it."""
    return autocast_modules(modules_of(model, loss_fn), keras_ops, precision.compute_dtype)


def train_step(backend, model, loss_fn, optimizer, precision, with_outputs, eager, accumulate=1):
    """``Backend.mixed_precision_train_step`` of the keras backend: its ``train_step`` (Keras's
    ``Model.train_step``) compiled with ``keras_optimizer`` and run in ``forward_scope``."""
    if with_outputs:
        raise NotImplementedError("the keras backend trains through Keras's trainer, which returns no outputs; "
                                  "ud.fit uses fit_epoch instead")
    from unidl.backends.keras.backend import _FreezeAwareStep

    scaler = keras_optimizer(optimizer, precision, accumulate)  # the loss scale exists (init_scale) before a step
    run = _FreezeAwareStep(lambda: backend._train_step(model, loss_fn, optimizer, eager, precision, accumulate),
                           lambda: step_key(model, loss_fn, optimizer))

    def loss_scale():
        return float(keras.ops.convert_to_numpy(scaler.dynamic_scale)) if precision.scales_loss else 1.0

    return _ScopedStep(run, lambda: forward_scope(model, loss_fn, precision), loss_scale)


class _ScopedStep:
    """The step run with mixed precision's casts in force; ``loss_scale()`` and ``trace_count`` as the others'."""

    def __init__(self, run, scope, scale):
        self._run, self._scope, self.loss_scale = run, scope, scale

    def __call__(self, *args):
        with self._scope():
            return self._run(*args)

    @property
    def trace_count(self):
        return self._run.trace_count
