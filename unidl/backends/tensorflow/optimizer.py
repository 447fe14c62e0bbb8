"""unidl optimizers on TensorFlow: slot variables updated inside the graph by the optimizer's own ``update()``,
or by TensorFlow's fused kernel for the same rule where there is one (SGD with momentum: ``Optimizer.apply_fused``)."""

from __future__ import annotations

import tensorflow as tf

from unidl.backends.tensorflow.control_flow import gradient_conditions
from unidl.backends.tensorflow import ops as tf_ops, xla_checks
from unidl.optim.optimizer import bound_rule, changeable_options, stepped
from unidl.optim.param_groups import read_group_option, write_group_options


class GraphOptimizer(tf.Module):
    """The state of one unidl optimizer as ``tf.Variable``s (learning rate, step count, slots).

    ``apply(grads)`` is plain TensorFlow, so it runs eagerly or inside a compiled train step;
    the learning rate is a variable, so changing it never retraces.
    """

    def __init__(self, optimizer, ops):
        super().__init__(name=type(optimizer).__name__)
        self._spec = optimizer
        self._ops = ops
        dtype = optimizer.params[0].dtype
        # one learning rate per param group (the first is ``learning_rate``)
        self.learning_rates = [tf.Variable(group["lr"], dtype=dtype, trainable=False, name="learning_rate")
                               for group in optimizer.param_groups]
        self.learning_rate = self.learning_rates[0]
        # each group's changeable hyperparameters (momentum, betas, ...) as variables (float64; nesterov a bool):
        # a compiled step reads those bound since construction (``bound_rule``), so that a later
        # ``param_groups[i][key] = value`` reaches it without a retrace; the others are constants of its graph
        self.group_options = [{key: _option_variables(value) for key, value in changeable_options(optimizer, g).items()}
                              for g in range(len(optimizer.param_groups))]
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        # a rule that reads the step reads each parameter's own count (torch.optim's per-parameter state["step"])
        self.param_steps = ([tf.Variable(0, dtype=tf.int64, trainable=False, name="step") for _ in optimizer.params]
                            if optimizer.uses_step else None)
        self.finite = tf.Variable(True, trainable=False, name="last_step_finite")
        self.last_flag = None  # the flag a compiled train step last returned (see Backend.last_step_finite)
        self.slot_variables = [
            {name: tf.Variable(tf.fill(optimizer.slot_shape(name, p.shape), tf_ops.as_dtype(
                optimizer.initial_slot_value, tf.as_dtype(optimizer.slot_dtype(name, p.dtype)))),
                               trainable=False, name=name) for name in optimizer.slots}
            for p in optimizer.params
        ]

    def prepare_accumulation(self, accumulate: int) -> None:
        """Create (eagerly, never inside a trace) what ``apply(..., accumulate=N)`` keeps between micro-steps, the
        optimizer's one window (``unidl.training.accumulation_window``: every step of it with this ``accumulate``
        adds to the same variables), registered as its checkpointed window."""
        from unidl.training import accumulation_window, variable_window

        def create():
            if getattr(self, "accumulated", None) is None:
                self.accumulated = [tf.Variable(tf.zeros_like(p), trainable=False, name="accumulated_gradient")
                                    for p in self._spec.params]
                self.micro_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="micro_steps")
                self.window_finite = tf.Variable(True, trainable=False, name="window_finite")
                # per parameter: it had a gradient in a micro-step of the window so far (torch's .grad is not None)
                self.window_has_gradient = [tf.Variable(False, trainable=False, name="has_gradient")
                                            for _ in self._spec.params]
            return variable_window(accumulate, self.accumulated, self.micro_steps, self.window_finite, read_numpy,
                                   assign_numpy, on_write=self._set_position, storage=self,
                                   has_gradient=(self.window_has_gradient, self._spec.params))

        accumulation_window(self._spec, accumulate, None, create)  # (float32 steps: mixed precision keeps its own)
        self.window_position = int(self.micro_steps.numpy())  # the micro-steps so far, in Python (``closes``)

    def _set_position(self, micro_steps: int) -> None:
        """After a window is written (loaded): its position."""
        self.window_position = micro_steps

    def apply(self, grads, loss=None, accumulate: int = 1, reduce=None, closes: bool = False, has_gradient=None):
        """``guarded_apply`` whose writes stand only where every value check made before them in a call that XLA
        compiles passed (``xla_checks.unless_a_check_failed``: an index out of range before the update, whose error
        is raised after the call, leaves the weights and this state as they were, as an eager step that raises
        before its update; a plain graph's assertions stop its writes already, ``all_finite`` depending on them)."""
        with xla_checks.unless_a_check_failed([*self._spec.params, *self.variables]):
            return self.guarded_apply(grads, loss, accumulate, reduce, closes, has_gradient)

    def guarded_apply(self, grads, loss=None, accumulate: int = 1, reduce=None, closes: bool = False,
                      has_gradient=None):
        """One guarded update: skipped entirely (``finite`` False) when ``loss`` or a gradient is not finite,
        decided inside the graph (one reduction per tensor, ``all_finite``, and a ``tf.cond``). With ``accumulate``
        N > 1 this is one micro-step: ``grads / N`` is added to the accumulated gradients, and every N-th
        updates with their sum, unless a micro-step of the window was not finite: then the whole window is
        skipped and discarded at its N-th micro-step (the flag is False there; inside the window it is True).
        ``reduce`` (``accumulate`` N > 1 in a data-parallel job whose micro-steps are this rank's own): a graph per
        place in the window, ``closes`` saying (in Python) whether this micro-step is the window's last; only
        that one averages the window's sums and its finite flag over the ranks (one all-reduce per update, as
        DDP's ``no_sync``), so that every rank applies the job's mean gradient or skips the window alike (a
        collective inside a ``tf.cond`` is not possible under a ``tf.distribute`` strategy).
        ``has_gradient`` (``accumulate`` 1 over a window summed elsewhere, a mixed precision step's): per parameter,
        None or a boolean scalar, whether it had a gradient in the window (``_update``).
        Returns the flag, so that a compiled step can hand it out with the loss (reading ``finite`` back is
        one more eager op)."""
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        finite = all_finite([loss, *grads])
        # per parameter: None, or whether the loop or branch that alone reads it ran (control_flow.py): a False
        # one had no gradient in this run, as PyTorch's (not zeros). A caller's flags (a window's) already say it
        reads = (gradient_conditions(self._spec.params, grads, agree=reduce is None) if has_gradient is None
                 else [None] * len(grads))
        if accumulate == 1:
            self.finite.assign(finite)
            flags = has_gradient if has_gradient is not None else (reads if any(r is not None for r in reads) else None)
            tf.cond(finite, lambda: self._clip_and_update(grads, flags), lambda: tf.constant(False))
            return finite
        if reduce is not None:
            return self._local_micro_step(grads, finite, accumulate, reduce, closes, reads)
        from unidl.nn.module import is_trainable

        # PyTorch's rule over the window: a parameter without a gradient now updates with its sum if it had one in
        # an earlier micro-step (its flag, read as the step runs), else keeps its value and slots; frozen ones
        # (no gradient, not trainable) are left out as without accumulation
        present = [g is not None or is_trainable(p) for g, p in zip(grads, self._spec.params)]
        # every write waits for ``finite`` (the loss and the gradients): a value check that fails in the forward
        # (a label out of range) stops them, as torch's error stops its step
        with tf.control_dependencies([finite]):
            for variable, flag, grad, read in zip(self.accumulated, self.window_has_gradient, grads, reads):
                if grad is not None:
                    variable.assign_add(grad / tf.cast(accumulate, grad.dtype))
                    flag.assign(True if read is None else tf.logical_or(flag.read_value(), read))
            window_finite = tf.logical_and(self.window_finite.read_value(), finite)  # (a value, not a lazy read)
            self.window_finite.assign(window_finite)
            count = self.micro_steps.read_value() + 1
            self.micro_steps.assign(count)

        def close_window():
            sums = [a.read_value() if used else None for a, used in zip(self.accumulated, present)]
            has_gradient = [None if grad is not None and read is None else flag.read_value()
                            for grad, flag, read in zip(grads, self.window_has_gradient, reads)]
            tf.cond(window_finite, lambda: self._clip_and_update(sums, has_gradient), lambda: tf.constant(False))
            with tf.control_dependencies([s for s in sums if s is not None]):
                for variable, flag, used in zip(self.accumulated, self.window_has_gradient, present):
                    if used:
                        variable.assign(tf.zeros_like(variable))
                        flag.assign(False)
                self.micro_steps.assign(0)
                self.window_finite.assign(True)
            return tf.identity(window_finite)

        flag = tf.cond(count >= accumulate, close_window, lambda: tf.constant(True))
        self.finite.assign(flag)
        return flag

    def _local_micro_step(self, grads, finite, accumulate, reduce, closes, reads):
        """``apply``'s micro-step of a window kept on this rank (``reduce``: the average over the ranks), with
        PyTorch's rule over the window as ``apply``'s: a parameter updates with its sum if it had a gradient in
        any micro-step on any rank (the ranks' flags are averaged with the sums, in the same collective), keeps
        its value and slots if in none, and every sum and flag is emptied at the update (none is carried over)."""
        from unidl.nn.module import is_trainable

        present = [g is not None or is_trainable(p) for g, p in zip(grads, self._spec.params)]
        sums = [None if not used else a.read_value() if g is None else a.read_value() + g / tf.cast(accumulate, g.dtype)
                for a, g, used in zip(self.accumulated, grads, present)]
        flags = [flag.read_value() if g is None else tf.constant(True) if read is None
                 else tf.logical_or(flag.read_value(), read)
                 for flag, g, read in zip(self.window_has_gradient, grads, reads)]
        window_finite = tf.logical_and(self.window_finite.read_value(), finite)
        if not closes:
            with tf.control_dependencies([finite]):  # (after a failed value check in the forward: none, as ``apply``)
                for variable, flag, total, had, grad in zip(self.accumulated, self.window_has_gradient, sums, flags,
                                                            grads):
                    if grad is not None:
                        variable.assign(total)
                        flag.assign(had)
                self.window_finite.assign(window_finite)
                self.micro_steps.assign_add(1)
                self.finite.assign(True)
                return tf.constant(True)
        dtype = self.accumulated[0].dtype
        marker = finite_marker(window_finite, dtype)
        had_any = tf.cast(tf.stack(flags), dtype)  # averaged: above 0 where a rank had a gradient
        marker, had_any, *sums = reduce([marker, had_any, *sums])
        agreed = tf.math.is_finite(marker)
        has_gradient = [None if grad is not None and read is None else had_any[index] > 0
                        for index, (grad, read) in enumerate(zip(grads, reads))]
        tf.cond(agreed, lambda: self._clip_and_update(sums, has_gradient), lambda: tf.constant(False))
        with tf.control_dependencies([s for s in sums if s is not None]):
            for variable, flag, used in zip(self.accumulated, self.window_has_gradient, present):
                if used:
                    variable.assign(tf.zeros_like(variable))
                    flag.assign(False)
            self.micro_steps.assign(0)
            self.window_finite.assign(True)
        self.finite.assign(agreed)
        return agreed

    def option_variables(self, group: int, key: str) -> tuple:
        """The variables of option ``key`` of param group ``group``: one, or two for ``betas``."""
        entry = self.group_options[group][key]
        return entry if isinstance(entry, tuple) else (entry,)

    def _read_option(self, group: int, key: str):
        """Option ``key`` of param group ``group`` as the graph reads it from its variables (``bound_rule``)."""
        return read_group_option(self._spec, group, key, lambda variable: variable.read_value())

    def _clip_and_update(self, grads, has_gradient=None):
        self._update(self._spec.clip_gradients(grads, self._ops), has_gradient)
        return tf.constant(True)

    def _update(self, grads, has_gradient=None):
        """Every parameter with a gradient updates by its rule; ``has_gradient`` (an accumulation window's): per
        parameter, None or a boolean scalar that must hold too (it had a gradient in the window), else the
        parameter and its slots keep their values."""
        spec, ops = self._spec, self._ops
        self.iterations.assign_add(1)
        for index, (param, grad, slots) in enumerate(zip(spec.params, grads, self.slot_variables)):
            if grad is None:  # PyTorch's rule: no gradient, no update (nor a step counted for it)
                continue
            rule, lr = bound_rule(spec, index, self._read_option), self.learning_rates[spec.group_of(index)]
            grad = rule.regularized_gradient(param, grad, ops)
            applies = None if has_gradient is None else has_gradient[index]
            step = None if self.param_steps is None else self._count_step(index, applies)
            if applies is None and rule.apply_fused(param, grad, slots, lr, ops):
                continue
            delta, new_slots = rule.update(param, grad, slots, lr, step, ops)
            for name, value in new_slots.items():  # (``applies`` a flag: only where it holds)
                if value is not slots[name]:
                    slots[name].assign(value if applies is None else
                                       tf.where(applies, tf.cast(value, slots[name].dtype), slots[name]))
            factor = rule.shrink(param, lr, ops)
            if applies is None and factor is None and not isinstance(delta, tuple):
                param.assign_sub(delta)
            elif applies is None:
                param.assign(stepped(param, factor, delta))
            else:
                param.assign(tf.where(applies, stepped(param, factor, delta, lambda d: tf.cast(d, param.dtype)),
                                      param))

    def _count_step(self, index: int, applies):
        """Parameter ``index``'s step count with this update (where ``applies``, a boolean scalar or None for
        always, holds), as the rule reads it: a float of the learning rate's dtype."""
        variable = self.param_steps[index]
        count = variable.read_value() + 1  # (the rule reads it either way: never the 0 of a first skipped update)
        variable.assign(count if applies is None else tf.where(applies, count, variable))
        return tf.cast(count, self.learning_rate.dtype)


def _option_variables(value):
    """A param group's option as ``tf.Variable``s: a bool as a bool, a number as float64, a pair as a pair."""
    if isinstance(value, tuple):
        return tuple(_option_variables(v) for v in value)
    return tf.Variable(value, dtype=tf.bool if isinstance(value, bool) else tf.float64, trainable=False, name="option")


def set_group_options(optimizer, group: int, keys) -> None:
    """Write options ``keys`` of param group ``group`` into their variables (read by the next step)."""
    write_group_options(optimizer, group, keys, lambda variable, value: variable.assign(value))


def all_finite(values):
    """A boolean scalar: every element of every tensor in ``values`` (None entries ignored) is finite.

    Spelled as ``sum(v * 0)`` per tensor, 0 when every element is finite and NaN otherwise (inf * 0 and NaN * 0
    are NaN), not ``reduce_all(is_finite(v))``: Grappler moves an ``IsFinite`` above the transpose that a
    convolution kernel's gradient comes out of (TensorFlow's HWIO into the variable's OIHW) and then transposes
    booleans, with a kernel several times slower than the float one (about 5% of a ResNet-18 step). One zero a
    dtype, not one a tensor: a graph's first trace makes every constant anew."""
    zeros, sums = {}, []
    for v in values:
        if v is not None:
            if v.dtype not in zeros:
                zeros[v.dtype] = tf.zeros((), v.dtype)
            sums.append(tf.cast(tf.reduce_sum(v * zeros[v.dtype]), tf.float32))
    return tf.math.is_finite(tf.add_n(sums)) if sums else tf.constant(True)


def finite_marker(finite, dtype):
    """0 where the boolean scalar ``finite`` is True, else NaN, in ``dtype``: a window's finite flag averaged over
    the ranks beside its sums in one collective (NaN on any rank makes the mean NaN on every rank)."""
    return tf.where(finite, tf.constant(0.0, dtype), tf.constant(float("nan"), dtype))


def read_numpy(variable):
    """A variable's value as NumPy (how ``unidl.training.variable_window`` and ``variable_scaler`` read one)."""
    return variable.numpy()


def assign_numpy(variable, value) -> None:
    """Write a NumPy value of a variable's dtype into it (for ``variable_window`` and ``variable_scaler``)."""
    variable.assign(value)
