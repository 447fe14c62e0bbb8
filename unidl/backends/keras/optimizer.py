"""unidl optimizers on Keras: a ``keras.optimizers.Optimizer`` running the unidl optimizer's own ``update()``.

Keras's built-in optimizers differ from PyTorch's rules (epsilon placement in
Adam, momentum sign convention in SGD), so unidl plugs its rule into Keras's
optimizer machinery instead: Keras still owns the slot variables, the
iteration counter and the learning-rate variable. Where Keras runs on TensorFlow,
SGD with momentum runs as TensorFlow's fused kernel for the same rule
(``Optimizer.apply_fused``).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

import keras
from keras import ops as K

from unidl.backends.keras import distributed as keras_distributed
from unidl.backends.keras.dtypes import floatx
from unidl.backends.keras.host import HOST
from unidl.nn.module import is_trainable
from unidl.optim.optimizer import bound_rule, changeable_options, stepped
from unidl.optim.param_groups import read_group_option, write_group_options


class LocalWindow:
    """A window of micro-steps kept on this rank in a data-parallel job (``keras_distributed.accumulates_locally``)
    and reduced over the ranks once, when it closes: its count kept in Python, so that whether a micro-step closes
    the window is known without a read from the device and outside any conditional around the collective, and the
    part of a micro-step common to the windows that keep it (``NativeOptimizer``'s own, float16's loss scaler's:
    ``precision.LossScaleOptimizer``). A class using it has ``window_size`` (micro-steps per update),
    ``_window_counter`` (the window's count variable) and ``_window_has_gradient`` (per parameter index: it had
    a gradient in a micro-step of the window so far)."""

    _window_position = None  # (the window's count in Python: closes_window; None: to be read from the device)
    _window_closes = None  # (the place of the micro-step running or being traced: micro_step_at)

    def set_window_position(self, micro_steps: int | None) -> None:
        """After the window is written (a checkpoint or ``load_state_dict`` loaded, or emptied): its count; None
        where a step moved it on the device (outside a job: in a graph, or a functional trainer's)."""
        object.__setattr__(self, "_window_position", micro_steps)

    def closes_window(self) -> bool:
        """Whether the next micro-step of a window kept on this rank closes it, from the window's count kept in
        Python (no read from the device at each micro-step): moved by each such micro-step (``micro_step_at``),
        set by each write of the window (a checkpoint or ``load_state_dict`` loaded: ``set_window_position``);
        read from the count variable only where a step that counts on the device (outside a job) ran since."""
        if self._window_position is None:
            object.__setattr__(self, "_window_position", int(read_numpy(self._window_counter)))
        return self._window_position + 1 >= self.window_size

    @contextlib.contextmanager
    def micro_step_at(self, closes: bool):
        """For the micro-step of a window kept on this rank run in the block (``closes_window`` read just before):
        it closes the window (``closes``) or not, as ``_local_micro_step`` and a graph traced in the block read it;
        the window's count in Python moves past it when the block ends (unknown inside: an error leaves it to be
        read from the device)."""
        position = self._window_position
        object.__setattr__(self, "_window_closes", closes)
        object.__setattr__(self, "_window_position", None)
        try:
            yield
        finally:
            object.__setattr__(self, "_window_closes", None)
        object.__setattr__(self, "_window_position", 0 if closes else position + 1)

    def _this_micro_step(self):
        """The block of a micro-step of the window kept on this rank run by Python: ``micro_step_at`` its place,
        decided here from the count in Python (Keras-on-torch), unless a graph traced for that place is being
        traced (``_window_closes`` set already: ``keras_distributed.graph_per_window_place``)."""
        if self._window_closes is not None:
            return contextlib.nullcontext()
        return self.micro_step_at(self.closes_window())

    def _add_to_local_window(self, totals, grads, indices, reads, accumulate, window_finite):
        """The part of a micro-step of the window kept on this rank common to the windows that keep it (inside
        ``micro_step_at``): this rank's gradients ``grads`` of the parameters at ``indices`` (None: none;
        ``reads``: per parameter None, or whether the loop or branch that alone reads it ran) over ``accumulate``
        added to the window's sums (``totals``, variables) and has-gradient flags. ``window_finite``: the window's
        finite flag so far, this micro-step's included, reduced as a marker beside the sums (0 or NaN: NaN on any
        rank makes the job's NaN on every rank), the sums themselves left as they are.

        Inside the window: the sums and flags written back, the count moved on, and None returned. At its last
        micro-step (``_window_closes``): the window emptied, and its sums, flags and marker reduced over the ranks
        in one all-reduce (``keras_distributed.reduce_window``), returned as ``(sums, flags, finite)``: the job's
        sums, ``flags`` {parameter index: any rank had a gradient in the window} for the parameters that may have
        none (``_with_window_rule``), ``finite`` whether every rank's window was finite."""
        sums = [total.value if g is None else total.value + K.cast(g, total.dtype) / K.cast(accumulate, total.dtype)
                for total, g in zip(totals, grads)]
        had = [self._window_has_gradient[i].value if g is None else
               K.convert_to_tensor(True) if read is None else K.logical_or(self._window_has_gradient[i].value, read)
               for i, g, read in zip(indices, grads, reads)]
        counter = self._window_counter
        if not self._window_closes:
            for total, new, index, flag in zip(totals, sums, indices, had):
                total.assign(new)
                self._window_has_gradient[index].assign(flag)
            counter.assign(counter.value + 1)
            return None
        dtype = totals[0].dtype
        marker = K.where(window_finite, K.convert_to_tensor(0.0, dtype), K.convert_to_tensor(float("nan"), dtype))
        marker, had_any, *sums = keras_distributed.reduce_window([marker, K.cast(K.stack(had), dtype), *sums])
        flags = {i: had_any[k] > 0 for k, (i, g, read) in enumerate(zip(indices, grads, reads))
                 if g is None or read is not None}
        for total, index in zip(totals, indices):  # the window starts again (its job's sums are in hand)
            total.assign(K.zeros_like(total))
            self._window_has_gradient[index].assign(K.convert_to_tensor(False))
        counter.assign(K.convert_to_tensor(0, "int64"))
        return sums, flags, K.isfinite(marker)


def numpy_initializer(value):
    """A Keras initializer of ``value`` everywhere, made in NumPy and given to the host framework with its dtype: on
    Keras-on-JAX, Keras's own initializers (``"zeros"``) and a NumPy array given without its dtype (Keras converts
    an initializer's result so) each compile an XLA program per shape and dtype (``jnp.zeros``; jax 0.10's
    ``jnp.asarray``, a ``stage`` copy), 0.1 to 0.5 s each on a CPU, where an array with its dtype is only put on
    the device; the same values on every host."""
    def initializer(shape, dtype):
        dtype = keras.backend.standardize_dtype(dtype)
        return keras.ops.convert_to_tensor(np.full(shape, value, dtype), dtype)

    return initializer


class NativeOptimizer(LocalWindow, keras.optimizers.Optimizer):
    """Keras optimizer whose ``update_step`` is ``spec.update`` (a unidl optimizer's rule)."""

    def __init__(self, spec, ops):
        super().__init__(learning_rate=spec.lr, name=type(spec).__name__.lower())
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_unidl_ops", ops)
        object.__setattr__(self, "_slot_table", [])
        object.__setattr__(self, "_step_loss", None)
        object.__setattr__(self, "_gradient_flags", None)  # (an update's flags: ``_with_window_rule``)
        # per trainable variable, whether the loss of the step being traced uses it, where Keras's trainer gives
        # the others zeros (Keras-on-JAX: keras/module.py ``_gradients_of_used_variables``); None elsewhere
        object.__setattr__(self, "used_gradients", None)
        # the trainable variables of the model in the order its trainer hands their values to ``stateless_apply``
        # (Keras-on-JAX), set while a train step is traced (keras/module.py ``_trainer_variables_told``); None elsewhere
        object.__setattr__(self, "trainer_variables", None)
        # ``(present,)`` while the float16 loss scaler around it applies gradients it made the job's already
        # (``applying_the_jobs``); None elsewhere
        object.__setattr__(self, "_the_jobs", None)
        with keras.name_scope(self.name):
            # (each initial value a NumPy array of the variable's dtype: a Python number made one on Keras-on-JAX
            # by ``jnp.asarray(value, dtype)``, which compiles an XLA conversion per dtype, ``numpy_initializer``)
            self.finite = keras.Variable(np.asarray(True), dtype="bool", trainable=False, name="last_step_finite")
            # the learning rates of param groups after the first (whose rate is Keras's ``learning_rate``)
            # (attributes Keras tracks: its functional trainers thread them as the optimizer's state)
            self.group_learning_rates = [
                keras.Variable(np.asarray(group["lr"], keras.config.floatx()), dtype=keras.config.floatx(),
                               trainable=False, name="learning_rate")
                for group in spec.param_groups[1:]]
            # each group's changeable hyperparameters (momentum, betas, ...) as variables (float64; nesterov a
            # bool): a compiled step reads those bound since construction (``bound_rule``), so that a later
            # ``param_groups[i][key] = value`` reaches it without a retrace; the others are constants of its graph.
            # One flat list Keras tracks, and where each option's variables lie in it
            self.group_option_variables, layout = [], []
            for g in range(len(spec.param_groups)):
                entry = {}
                for key, value in changeable_options(spec, g).items():
                    values = value if isinstance(value, tuple) else (value,)
                    entry[key] = (len(self.group_option_variables), len(values))
                    self.group_option_variables.extend(
                        keras.Variable(np.asarray(v, "bool" if isinstance(v, bool) else "float64"),
                                       dtype="bool" if isinstance(v, bool) else "float64", trainable=False,
                                       name="option") for v in values)
                layout.append(entry)
            object.__setattr__(self, "_option_layout", layout)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # NumPy's value, in the variable's dtype (Keras's Constant rounds a Python float to float32 first on
        # TensorFlow: Adagrad's 0.1 in float64 was 0.10000000149011612)
        initializer = numpy_initializer(self._spec.initial_slot_value)
        spec = self._spec
        for variable in variables:  # (one number per parameter, ``scalar_slots``: 0-d, float32 as torch.optim's)
            self._slot_table.append({
                name: self.add_variable((), initializer=initializer, dtype=spec.slot_dtype(name, None), name=name)
                if name in spec.scalar_slots else self.add_variable_from_reference(variable, name,
                                                                                    initializer=initializer)
                for name in spec.slots})
        # a rule that reads the step reads each parameter's own count (torch.optim's per-parameter state["step"]),
        # not Keras's ``iterations`` (which counts every update, with or without a gradient for the parameter)
        object.__setattr__(self, "param_steps", [
            self.add_variable((), initializer=numpy_initializer(0), dtype="int64", aggregation="only_first_replica",
                              name="step")
            for _ in variables] if self._spec.uses_step else None)

    def slots_of(self, variable) -> dict:
        return self._slot_table[self._get_variable_index(variable)]

    def scale_loss(self, loss):
        # Keras's train step hands the step's loss here just before its gradients: kept for the guard in apply.
        # Where Keras's state is functional (JAX), the loss is a value inside the gradient transformation that
        # must not escape it: there the guard checks the gradients (a NaN loss makes them NaN too)
        if HOST.keras_state_in_place:
            object.__setattr__(self, "_step_loss", loss)
            keras_distributed.mark_loss(loss)  # (under DDP: the loss rides in the backward's all-reduce, for the guard)
        return super().scale_loss(loss)

    def prepare_accumulation(self, accumulate: int) -> None:
        """Set the micro-steps per update for the steps compiled next, creating (eagerly, never inside a trace)
        the accumulated gradients and the micro-step count they keep between calls (once: every step of the
        optimizer adds to them; ``window``)."""
        object.__setattr__(self, "_accumulate", accumulate)
        if accumulate > 1:
            self._create_window()

    def _create_window(self) -> None:
        if getattr(self, "_accumulated", None) is None:
            with keras.name_scope(self.name):
                # (from NumPy, each with its dtype: ``numpy_initializer``)
                self._accumulated = [
                    keras.Variable(numpy_initializer(0), shape=tuple(p.shape), dtype=p.dtype, trainable=False,
                                   name="accumulated_gradient")
                    for p in self._spec.params]
                self._micro_steps = keras.Variable(np.asarray(0, "int64"), dtype="int64", trainable=False,
                                                   name="micro_steps")
                self._window_finite = keras.Variable(np.asarray(True), dtype="bool", trainable=False,
                                                     name="window_finite")
                # per parameter: it had a gradient in a micro-step of the window so far (torch's .grad is not None)
                self._window_has_gradient = [keras.Variable(np.asarray(False), dtype="bool", trainable=False,
                                                            name="has_gradient")
                                             for _ in self._spec.params]

    def window(self, accumulate: int):
        """The accumulation variables (created once, eagerly, if not yet) as a ``unidl.training.AccumulationWindow``
        of ``accumulate`` micro-steps (the optimizer's checkpointed window)."""
        from unidl.training import variable_window

        self._create_window()
        return variable_window(accumulate, self._accumulated, self._micro_steps, self._window_finite, read_numpy,
                               assign_numpy, on_write=self.set_window_position, storage=self,
                               has_gradient=(self._window_has_gradient, self._spec.params))

    @property
    def window_size(self) -> int:
        """The micro-steps per update of the steps compiled with this optimizer (1: no window)."""
        return getattr(self, "_accumulate", 1)

    @property
    def _window_counter(self):
        return self._micro_steps  # (LocalWindow's count variable)

    def _filter_empty_gradients(self, grads, variables):
        """Keras's filter of the variables without a gradient, without its "Gradients do not exist" warning: a
        frozen parameter, or one the loss does not use, gets no gradient and no update, silently, as torch.optim
        leaves a parameter whose ``.grad`` is None (Keras-on-JAX's trainer hands every variable of the optimizer
        in, those without a gradient as None: ``trainer_values_in_optimizer_order``). None at all never comes
        here from unidl's steps (``_clip_and_apply`` counts that step itself); elsewhere Keras's ``ValueError``."""
        kept = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not kept:
            raise ValueError("No gradients provided for any variable.")
        return [g for g, _ in kept], [v for _, v in kept]

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        # (Keras-on-JAX's trainer: the model's trainable variables in its order, matched to this optimizer's)
        return trainer_values_in_optimizer_order(self, super().stateless_apply, optimizer_variables, grads,
                                                 trainable_variables)

    def apply(self, grads, trainable_variables=None):
        """``guarded_apply`` whose writes stand only where every value check of the host's graph made before them
        passed (``Backend.unless_a_check_failed``: under XLA on TensorFlow and JAX, where the call raises the
        check's error after the graph ran whole), as an eager step that raises before its update."""
        variables = list(trainable_variables) if trainable_variables is not None else list(self._trainable_variables)
        state = {id(v): v for v in [*variables, *self.variables, self.finite]}
        with HOST.unless_a_check_failed(list(state.values())):
            self.guarded_apply(grads, trainable_variables)

    def guarded_apply(self, grads, trainable_variables=None):
        """Keras's ``apply`` behind unidl's non-finite guard, clipping and accumulation: the update (and the
        iteration count) is skipped, inside the graph (``keras.ops.cond``), when the step's loss or a gradient
        is not finite; with ``accumulate`` N > 1 every N-th micro-step updates with the mean gradient, unless a
        micro-step of the window was not finite: then the whole window is skipped and discarded at its N-th
        micro-step (``finite`` False there; inside the window it is True)."""
        loss = self._step_loss
        object.__setattr__(self, "_step_loss", None)
        used = self.used_gradients
        if trainable_variables is not None:  # (a trainer's: every trainable variable of the model)
            grads, trainable_variables, used = own_gradients(self, grads, list(trainable_variables), used)
        if self._the_jobs is None:
            grads = gradients_used(grads, used)
        accumulate = getattr(self, "_accumulate", 1)
        local = accumulate > 1 and keras_distributed.accumulates_locally()  # this rank's window, averaged at its end
        # (Keras-on-JAX's window, in the trainer's state: this rank's too, reduced inside the step where it closes)
        variables = list(trainable_variables) if trainable_variables is not None else list(self._trainable_variables)
        present = None
        if self._the_jobs is not None:  # (the loss scaler's, averaged with the step's loss: ``applying_the_jobs``)
            (present,) = self._the_jobs
        elif not local and not (accumulate > 1 and keras_distributed.reduces_window_in_step()):
            # in a data-parallel job the job's gradients and loss (keras/distributed.py), before the guard
            loss, grads, present = keras_distributed.average_in_step(loss, grads, variables)
        # the rest once per step where replicas of this process share the variables (Keras's trainer runs this in
        # each): every replica holds the job's gradients and loss here
        keras_distributed.update_once(
            lambda: self._guarded_update(loss, grads, variables, present, accumulate, local))

    def _guarded_update(self, loss, grads, variables, present, accumulate, local):
        """``guarded_apply``'s update from the job's ``loss`` and ``grads`` of ``variables`` (``present``: None, or
        per variable None or whether any rank had a gradient), or with ``local`` from this rank's own for its
        window: the non-finite guard, a window's micro-step, clipping and Keras's update."""
        finite = self._unidl_ops.all_finite([loss, *grads])  # (the host's fused check where it has one)
        self.finite.assign(finite)
        if accumulate > 1 and not local:  # the count moves on the device (in a graph, or a functional trainer's)
            self.set_window_position(None)
        if not HOST.keras_state_in_place:  # no side effects inside a functional framework's cond
            self._apply_selected(grads, variables, finite, accumulate, present)
            return
        indices = [self._get_variable_index(v) for v in variables]
        # per variable: None, or whether the loop or branch that alone reads it in the host's graph ran (a False
        # one had no gradient in this run, as PyTorch's: tensorflow/control_flow.py); a window's rule (a float16
        # window's update, in force here) already says it
        reads = (HOST.gradient_conditions(variables, grads, agree=not local) if self._gradient_flags is None
                 else [None] * len(variables))  # (a local window's flags are agreed with its sums, at its end)
        if accumulate == 1:
            flags = {i: read for i, read in zip(indices, reads) if read is not None}
            if present is not None:  # (a loss's own parameter under DDP that no rank's loss reached: not updated)
                flags.update((i, had) for i, had in zip(indices, present) if had is not None)
            K.cond(finite, lambda: self._with_window_rule(flags, lambda: self._clip_and_apply(grads, variables))
                   if flags else self._clip_and_apply(grads, variables), _false)
            return
        if local:
            with self._this_micro_step(), HOST.after([finite]):
                self._local_micro_step(grads, variables, indices, reads, finite, accumulate)
            return
        sums = [self._accumulated[i] for i in indices]
        flags = {i: self._window_has_gradient[i] for i, g, read in zip(indices, grads, reads)
                 if g is None or read is not None}
        with HOST.after([finite]):  # (a value check failed in the forward: no write, as torch's error)
            for total, grad, index, read in zip(sums, grads, indices, reads):
                if grad is not None:
                    total.assign(total + grad / K.cast(accumulate, grad.dtype))
                    flag = self._window_has_gradient[index]
                    flag.assign(K.convert_to_tensor(True) if read is None else K.logical_or(flag, read))
            window_finite = K.logical_and(self._window_finite, finite)
            self._window_finite.assign(window_finite)
            count = self._micro_steps + 1
            self._micro_steps.assign(count)

        def close_window():
            # PyTorch's rule over the window: a parameter without a gradient now updates with its sum if it had
            # one in an earlier micro-step (its flag, read as the step runs), else keeps its value and slots
            K.cond(window_finite,
                   lambda: self._with_window_rule(flags, lambda: self._clip_and_apply(
                       [K.convert_to_tensor(t) for t in sums], variables)), _false)
            for total, index in zip(sums, indices):
                total.assign(K.zeros_like(total))
                self._window_has_gradient[index].assign(K.convert_to_tensor(False))
            self._micro_steps.assign(K.convert_to_tensor(0, "int64"))
            self._window_finite.assign(K.convert_to_tensor(True))
            return K.convert_to_tensor(window_finite)

        self.finite.assign(K.cond(count >= accumulate, close_window, lambda: K.convert_to_tensor(True)))

    def job_gradients(self, loss, grads, variables):
        """``(loss, grads, present)``: the step's ``loss`` (None: carried in a gradient) and ``grads`` of
        ``variables`` (this optimizer's own, in its order) as ``apply`` takes them, PyTorch's rule first (no gradient
        for a variable the step's loss did not use: ``gradients_used``), then in a data-parallel job as the job's
        (``keras_distributed.average_in_step``, one all-reduce; ``present`` its flags)."""
        return keras_distributed.average_in_step(loss, gradients_used(grads, self.used_gradients), variables)

    @property
    def applies_the_jobs(self) -> bool:
        """Whether the gradients in hand are the job's already (``applying_the_jobs``): the float16 loss scaler
        around this optimizer reduced them before its overflow check, which then reduces nothing again."""
        return self._the_jobs is not None

    @contextlib.contextmanager
    def applying_the_jobs(self, loss, present):
        """For the block, where the float16 loss scaler around this optimizer made the step's gradients and
        ``loss`` the job's already (``job_gradients``, or a window's ``keras_distributed.window_in_step``), before
        its overflow check: ``apply`` takes them as they are (no second all-reduce, and no ``gradients_used`` of
        averaged values), with ``present`` (None, or per variable None or whether any rank had a gradient)."""
        own_loss = self._step_loss
        object.__setattr__(self, "_step_loss", loss)
        object.__setattr__(self, "_the_jobs", (present,))
        try:
            yield
        finally:
            object.__setattr__(self, "_the_jobs", None)
            object.__setattr__(self, "_step_loss", own_loss)

    def _local_micro_step(self, grads, variables, indices, reads, finite, accumulate):
        """``apply``'s micro-step of a window kept on this rank (``keras_distributed.accumulates_locally``: its
        backward ran under DDP's ``no_sync()``, or its graph has no collective): added to the window
        (``LocalWindow._add_to_local_window``); at its last micro-step the window's sums, its finite flag (a
        marker, 0 or NaN: NaN on any rank makes the job's NaN on every rank) and its has-gradient flags are
        reduced over the ranks in one all-reduce (``reduce_window``), and every rank applies the job's mean
        gradient, or skips the window, alike. PyTorch's rule over the window as ``apply``'s, with DDP's over the
        ranks: a parameter updates if it had a gradient in a micro-step of any rank. Whether this micro-step
        closes the window is decided in Python, never in a conditional around the collective (which TensorFlow's
        strategy cannot run): in a graph (Keras-on-TensorFlow) the one traced for this place in the window says
        it (``_window_closes``, ``keras_distributed.graph_per_window_place``); run eagerly (Keras-on-torch) the
        window's count in Python does (``LocalWindow._this_micro_step``)."""
        window_finite = K.logical_and(self._window_finite.value, finite)
        closed = self._add_to_local_window([self._accumulated[i] for i in indices], grads, indices, reads,
                                           accumulate, window_finite=window_finite)
        if closed is None:
            self._window_finite.assign(window_finite)
            self.finite.assign(True)  # a micro-step inside the window: nothing skipped yet
            return
        sums, flags, agreed = closed
        self._window_finite.assign(K.convert_to_tensor(True))
        K.cond(agreed, lambda: self._with_window_rule(flags, lambda: self._clip_and_apply(sums, variables)), _false)
        self.finite.assign(agreed)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not keras_distributed.in_group():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        # in a data-parallel job ``apply`` has summed the gradients already: Keras's tf.distribute update would
        # sum them again (and it needs variables made under the strategy's scope); Keras's own loop otherwise
        for grad, variable in zip(grads, trainable_variables):
            self.update_step(grad, variable.value if isinstance(variable, keras.Variable) else variable, learning_rate)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        """Keras-on-TensorFlow's sum of the gradients over the replicas of a ``tf.distribute`` strategy, skipped
        where none is in force (one replica: the sum is the gradients themselves). There Keras's default replica
        context sums them through a ``tf.custom_gradient``, which in a graph being traced registers its gradient
        function in TensorFlow's global gradient registry, never unregistered, and that function holds the
        graph's tensors: every traced train step (one per compile: a new loss, metrics, precision) would stay
        alive with all its nested graphs (about 1.4 MB for a small net)."""
        import tensorflow as tf  # (called by Keras's TensorFlow optimizer only)

        if not tf.distribute.has_strategy():
            return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)

    def _apply_selected(self, grads, variables, finite, accumulate, present=None):
        """The guarded (and accumulating) update without a conditional: computed always, then each variable
        set to its new or its old value (``where``), as a functional framework (JAX) requires. ``present``: None,
        or per variable None or whether any rank had a gradient for it (``keras_distributed.average_in_step``)."""
        update = finite
        if accumulate > 1:
            indices = [self._get_variable_index(v) for v in variables]
            accumulated = [self._accumulated[i] for i in indices]
            had = [self._window_has_gradient[i] for i in indices]
            flags = {i: flag.value for i, flag, g in zip(indices, had, grads) if g is None}
            sums = [a.value if g is None else a.value + g / K.cast(accumulate, g.dtype)
                    for a, g in zip(accumulated, grads)]
            count = self._micro_steps.value + 1
            window_finite = K.logical_and(self._window_finite.value, finite)
            closes = count >= accumulate
            if keras_distributed.reduces_window_in_step():  # in a job: the job's window where it closes
                present = [None if g is not None else flag.value for g, flag in zip(grads, had)]
                sums, present, window_finite = keras_distributed.window_in_step(sums, present, window_finite, closes)
                flags = {i: flag for i, flag, g in zip(indices, present, grads) if g is None}
            update = K.logical_and(closes, window_finite)
            self.finite.assign(K.logical_or(K.logical_not(closes), window_finite))  # True inside the window
            micro_step_grads, grads = grads, sums  # (a parameter without a gradient now keeps its window flag)
        bookkeeping = {id(self.finite), *(id(v) for v in getattr(self, "_accumulated", None) or []),
                       *(id(v) for v in getattr(self, "_window_has_gradient", None) or [])}
        if getattr(self, "_micro_steps", None) is not None:
            bookkeeping.update((id(self._micro_steps), id(self._window_finite)))
        state = variables + [v for v in self.variables if id(v) not in bookkeeping]
        before = [K.convert_to_tensor(v.value) for v in state]
        if accumulate == 1 and present is not None:  # (PyTorch's rule over the ranks: the window's, for one step)
            flags = {self._get_variable_index(v): had for v, had in zip(variables, present) if had is not None}
        if accumulate > 1 or present is not None:
            self._with_window_rule(flags, lambda: self._clip_and_apply(grads, variables))
        else:
            self._clip_and_apply(grads, variables)
        for variable, old in zip(state, before):
            variable.assign(K.where(update, variable.value, old))
        if accumulate > 1:
            keep = K.logical_not(closes)  # a window still filling; else (updated or discarded) it starts again
            for total, new, flag, grad in zip(accumulated, sums, had, micro_step_grads):
                total.assign(K.where(keep, new, K.zeros_like(new)))
                flag.assign(keep if grad is not None else K.logical_and(keep, flag.value))
            self._micro_steps.assign(K.where(keep, count, K.zeros_like(count)))
            self._window_finite.assign(K.logical_or(closes, window_finite))

    def _with_window_rule(self, flags, apply):
        """Run ``apply`` (Keras's update over a window's sums) with ``flags`` ({variable index: boolean scalar, it
        had a gradient in the window}) in force for ``update_step``: a parameter flagged False keeps its value and
        slots, as ``torch.optim`` skips a parameter whose ``.grad`` is None."""
        object.__setattr__(self, "_gradient_flags", flags)
        try:
            return apply()
        finally:
            object.__setattr__(self, "_gradient_flags", None)

    def _clip_and_apply(self, grads, trainable_variables):
        if all(g is None for g in grads):  # its own parameters all frozen (or unused) while others train: no update,
            # but the step counts, as torch.optim's ``step()`` with every ``.grad`` None (Keras's ``apply`` would
            # raise, or return without counting); the guard, the window and the loss scaler ran around it as usual
            self.iterations.assign_add(1)
            return K.convert_to_tensor(True)
        grads = self._spec.clip_gradients(grads, self._unidl_ops)
        keras.optimizers.Optimizer.apply(self, grads, trainable_variables)
        return K.convert_to_tensor(True)

    def option_variables(self, group: int, key: str) -> tuple:
        """The variables of option ``key`` of param group ``group``: one, or two for ``betas``."""
        start, count = self._option_layout[group][key]
        return tuple(self.group_option_variables[start:start + count])

    def _read_option(self, group: int, key: str):
        """Option ``key`` of param group ``group`` as the step reads it from its variables (``bound_rule``)."""
        return read_group_option(self._spec, group, key, K.convert_to_tensor)

    def update_step(self, gradient, variable, learning_rate):
        # a Python number of the rule (momentum, betas, weight decay) meets the variable and its slots in the
        # variable's precision, as PyTorch's kernels round a Python scalar to the tensor's dtype: Keras-on-torch
        # would round it to float32 first (Keras's default float type), 1e-9 off at every float64 step
        with floatx(variable.dtype):
            self._update_step(gradient, variable, learning_rate)

    def _update_step(self, gradient, variable, learning_rate):
        ops, index = self._unidl_ops, self._get_variable_index(variable)
        group = self._spec.group_of(index)  # its param group's rule, options and rate
        spec = bound_rule(self._spec, index, self._read_option)
        if group:
            learning_rate = K.cast(self.group_learning_rates[group - 1], variable.dtype)
        slots = self.slots_of(variable)
        gradient = spec.regularized_gradient(variable, dense_gradient(gradient), ops)
        has_gradient = (self._gradient_flags or {}).get(index)  # (None: it has one)
        step = None
        if spec.uses_step:  # this parameter's own count, as torch.optim's (a window's parameter: if it had a gradient;
            # counted where a kernel steps it too: a dampened SGD's other groups)
            counter = self.param_steps[index]
            count = counter + 1
            self.assign(counter, count if has_gradient is None else K.where(has_gradient, count, _value(counter)))
            step = K.cast(count, variable.dtype)
        if has_gradient is None and spec.apply_fused(variable, gradient, slots, learning_rate, ops):
            return  # where Keras's framework has a kernel
        delta, new_slots = spec.update(variable, gradient, slots, learning_rate, step, ops)
        for name, value in new_slots.items():  # (a flagged parameter: only if it had a gradient)
            if value is not slots[name]:
                self.assign(slots[name], value if has_gradient is None else
                            K.where(has_gradient, K.cast(value, slots[name].dtype), _value(slots[name])))
        factor = spec.shrink(variable, learning_rate, ops)
        if has_gradient is None and factor is None and not isinstance(delta, tuple):
            self.assign_sub(variable, delta)
        elif has_gradient is None:
            self.assign(variable, stepped(_value(variable), factor, delta))
        else:
            updated = stepped(_value(variable), factor, delta, lambda d: K.cast(d, variable.dtype))
            self.assign(variable, K.where(has_gradient, updated, _value(variable)))


def set_group_options(optimizer, group: int, keys) -> None:
    """Write options ``keys`` of param group ``group`` into their variables (read by the next step)."""
    write_group_options(optimizer, group, keys, lambda variable, value: variable.assign(value))


def keep_train_function_current(native_model) -> None:
    """Build Keras's own compiled train function of ``native_model`` (a ``jax.jit`` on Keras-on-JAX, what
    ``train_on_batch`` and ``Model.fit`` run) again when the optimizer it was compiled with has bound an option
    since (``ConstantOptions``, set by ``compile``): it holds that option as a constant; another optimizer's
    options change nothing here. Called where a step may next run: at compile, before a train step, after each
    batch of ``fit``. unidl's own graphs (Keras-on-TensorFlow) retrace by themselves."""
    options = getattr(native_model, "_unidl_options", None)
    if options is not None and options.stale() and getattr(native_model, "train_function", None) is not None:
        native_model.make_train_function(force=True)


def dense_gradient(gradient):
    """A gather's gradient as rows (TensorFlow's IndexedSlices, for an Embedding) made dense, as PyTorch's gradient
    of an Embedding, for unidl's update rules and clipping; any other gradient as it is."""
    if hasattr(gradient, "indices") and hasattr(gradient, "dense_shape"):
        return K.scatter(K.expand_dims(K.cast(gradient.indices, "int32"), -1), gradient.values,
                         K.cast(gradient.dense_shape, "int32"))
    return gradient


def _value(variable):
    """A Keras variable's value (inside a stateless scope: the scope's), as ``keras.ops.where`` takes it on every
    host (JAX refuses a variable inside a trace); any other tensor as it is."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _false():
    return K.convert_to_tensor(False)


def trainer_values_in_optimizer_order(inner, stateless_apply, optimizer_variables, grads, trainable_variables):
    """``stateless_apply(optimizer_variables, grads, trainable_variables)`` (Keras's, of ``inner``, the unidl
    optimizer, or of the loss scaler around it) where Keras-on-JAX's trainer hands it the values and gradients of
    the model's trainable variables, in the model's order (``inner.trainer_variables``, told by the train step:
    keras/module.py ``_trainer_variables_told``), and Keras's ``stateless_apply`` takes them by position in the
    optimizer's own order (every variable it was built with). Matched by identity, one mapping for an optimizer
    over some of the model's parameters (a head only), over them in another order, or over a frozen one
    (``requires_grad_(False)``, which the trainer leaves out): a parameter of the optimizer the trainer does not
    hand in goes in without a gradient (no update, its slots and step count unchanged: torch.optim's rule for a
    ``.grad`` of None) and with a placeholder value that nothing kept reads; a trainable variable the optimizer
    does not hold keeps its value (torch: an optimizer updates its own parameters only). The trainer's values come
    back in its order, and the optimizer's whole new state."""
    built = inner._trainable_variables
    trainer = told = inner.trainer_variables
    if trainer is None:  # (a step not unidl's: the trainable variables of the optimizer, in its order)
        trainer = [v for v in built if is_trainable(v)]
    if len(trainer) != len(trainable_variables) or [id(v) for v in trainer] == [id(v) for v in built]:
        return stateless_apply(optimizer_variables, grads, trainable_variables)  # (or Keras's own error)
    position = {id(v): j for j, v in enumerate(trainer)}
    places = [position.get(id(v)) for v in built]  # per variable of the optimizer: its place in the trainer's
    every_value = [K.zeros(v.shape, v.dtype) if j is None else trainable_variables[j] for v, j in zip(built, places)]
    every_gradient = [None if j is None else grads[j] for j in places]
    used = inner.used_gradients  # (per trainable variable, in the trainer's order: ``_gradients_of_used_variables``)
    step_loss = inner._step_loss
    carrier = (loss_carrier(inner, trainer, trainable_variables, used)
               if used is not None and len(used) == len(trainable_variables) else None)
    if carrier is not None and carrier not in places:  # none of its parameters used (all frozen, or unused):
        # the loss's mark (keras/module.py ``_loss_marked_in_a_gradient``) is in a gradient it does not hold, read
        # as the loss (its own gradients are None or zeros, which would carry no NaN of the loss to its guard)
        object.__setattr__(inner, "_step_loss", K.reshape(grads[carrier], (-1,))[0])
    if used is not None and len(used) == len(trainable_variables):
        object.__setattr__(inner, "used_gradients", [False if j is None else used[j] for j in places])
    # the values are in the optimizer's order from here: a nested ``stateless_apply`` (float16: Keras's loss scaler
    # calls the inner optimizer's) must not match them again
    object.__setattr__(inner, "trainer_variables", None)
    try:
        new_values, new_state = stateless_apply(optimizer_variables, every_gradient, every_value)
    finally:
        object.__setattr__(inner, "used_gradients", used)
        object.__setattr__(inner, "trainer_variables", told)
        object.__setattr__(inner, "_step_loss", step_loss)  # (a skipped overflow step never reached apply)
    values = list(trainable_variables)
    for j, value in zip(places, new_values):
        if j is not None:
            values[j] = value
    return values, new_state


def loss_carrier(inner, variables, values, used) -> int | None:
    """Where Keras-on-JAX's trainer hands the optimizer gradients only, the index (in the trainer's order of the
    model's trainable ``variables``, of ``values`` that shape) of the one whose gradient's first element carries
    the step's loss (keras/module.py ``_loss_marked_in_a_gradient``): the smallest the loss uses (``used``) of
    those ``inner`` holds, so that its guard sees the mark in its own gradients (one it does not hold would carry
    the mark past the guard), or where it holds none the loss uses (its parameters all frozen while others train)
    the smallest the loss uses, whose gradient it reads as the loss (``trainer_values_in_optimizer_order``), as
    ``torch.optim``'s guard reads the loss of a step without gradients of its own. None where the loss uses none."""
    sizes = {i: math.prod(values[i].shape) for i, u in enumerate(used) if u}
    sizes = {i: size for i, size in sizes.items() if size}
    held = holds(inner, variables)
    candidates = {i: size for i, size in sizes.items() if held[i]} or sizes
    return min(candidates, key=candidates.__getitem__, default=None)


def holds(optimizer, variables) -> list[bool]:
    """Per variable, whether the (built) Keras ``optimizer`` updates it, matched by identity (Keras's own key)."""
    known = optimizer._trainable_variables_indices
    return [optimizer._var_key(v) in known for v in variables]


def gradients_used(grads, used):
    """``grads`` (per variable) by PyTorch's rule, dense: None for a variable the step's loss did not use
    (``used``: None, or a flag per variable, where Keras's trainer gives such a variable zeros:
    ``NativeOptimizer.used_gradients``), an Embedding's rows summed into a dense gradient."""
    if used is not None and len(used) == len(grads):
        grads = [g if u else None for g, u in zip(grads, used)]
    return [None if g is None else dense_gradient(g) for g in grads]


def own_gradients(optimizer, grads, variables, marks=None):
    """The gradients and variables a trainer hands ``apply`` where Keras's state is in place (Keras-on-TensorFlow,
    -torch: every trainable variable of the model, with its gradient), and ``marks`` (None, or one per variable),
    narrowed to the variables ``optimizer`` holds, matched by identity: the others keep their values, as those of
    a model outside a ``torch.optim`` optimizer do. Those it holds are found by identity in ``apply`` already, in
    any order."""
    if not optimizer.built:  # (Keras's ``apply`` builds it over these)
        return grads, variables, marks
    keep = holds(optimizer, variables)
    if all(keep):
        return grads, variables, marks

    def held(values):
        return [value for value, k in zip(values, keep) if k]

    return held(grads), held(variables), None if marks is None else held(marks)


def read_numpy(variable):
    """A Keras variable's value as NumPy, from any host framework's device (how ``unidl.training``'s
    ``variable_window`` and ``variable_scaler`` read one)."""
    return K.convert_to_numpy(variable.value)


def assign_numpy(variable, value) -> None:
    """Write a NumPy value of a variable's dtype into it (for ``variable_window`` and ``variable_scaler``)."""
    variable.assign(value)
