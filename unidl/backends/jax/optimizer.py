"""unidl optimizers on JAX: the optimizer's own ``update()`` over slot variables, written as JAX arrays.

The state (learning rate, step count, one ``JaxVariable`` per slot and parameter) lives in
``JaxVariable``s, so a compiled training step threads it like the parameters (state in, state
out) and a new learning rate is a new argument value, never a retrace. Called eagerly (``optimizer.apply``,
``train_step(eager=True)``), the whole update is one compiled program of that rule as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unidl.backends.jax.distributed import window_in_step
from unidl.backends.jax.function import _CONCRETIZATION, StatefulJit
from unidl.backends.jax.ops import checks_passed, unless_a_check_failed
from unidl.backends.jax.variable import (JaxVariable, host_constant, made_beside, recording, trainable_mask_cached,
                                         written_in_place)
from unidl.optim.optimizer import bound_rule, changeable_options, stepped
from unidl.optim.param_groups import read_group_option, write_group_options


class JaxOptimizer:
    """The state of one unidl optimizer; ``apply(grads)`` runs its rule (eagerly or inside a trace)."""

    def __init__(self, optimizer, ops):
        self._spec, self._ops = optimizer, ops
        self._compiles_eagerly = optimizer.builtin_rule() is not None  # (``guarded_apply``)
        dtype = optimizer.params[0].dtype
        # one learning rate per param group (the first is ``learning_rate``)
        self.learning_rates = [JaxVariable(host_constant(group["lr"], dtype), trainable=False)
                               for group in optimizer.param_groups]
        self.learning_rate = self.learning_rates[0]
        # each group's changeable hyperparameters (momentum, betas, ...) as variables (float64; nesterov a bool):
        # a compiled step reads those bound since construction (``bound_rule``), so that a later
        # ``param_groups[i][key] = value`` reaches it without a retrace; the others are constants of its trace
        self.group_options = [{key: _option_variables(value) for key, value in changeable_options(optimizer, g).items()}
                              for g in range(len(optimizer.param_groups))]
        self.iterations = JaxVariable(host_constant(0, jnp.int64), trainable=False)
        # a rule that reads the step reads each parameter's own count (torch.optim's per-parameter state["step"])
        self.param_steps = ([JaxVariable(host_constant(0, jnp.int64), trainable=False) for _ in optimizer.params]
                            if optimizer.uses_step else None)
        self.finite = JaxVariable(host_constant(True, jnp.bool_), trainable=False)
        self.slot_variables = [
            {name: JaxVariable(host_constant(optimizer.initial_slot_value, optimizer.slot_dtype(name, p.dtype),
                                             optimizer.slot_shape(name, p.shape)), trainable=False)
             for name in optimizer.slots}
            for p in optimizer.params]

    def variables(self) -> list[JaxVariable]:
        """Everything a step of this optimizer reads and writes, besides the parameters."""
        return ([*self.learning_rates, self.iterations, self.finite, *(self.param_steps or [])]
                + [v for options in self.group_options for entry in options.values()
                   for v in (entry if isinstance(entry, tuple) else (entry,))]
                + [v for slots in self.slot_variables for v in slots.values()]
                + ([self.micro_steps, self.window_finite, *self.accumulated, *self.window_has_gradient]
                   if getattr(self, "accumulated", None) else []))

    def prepare_accumulation(self, accumulate: int) -> None:
        """Create what ``apply(..., accumulate=N)`` keeps between micro-steps (before a step is compiled), the
        optimizer's one window (``unidl.training.accumulation_window``: every step of it with this ``accumulate``
        adds to the same variables), registered as its checkpointed window."""
        from unidl.training import accumulation_window, variable_window

        def create():
            if getattr(self, "accumulated", None) is None:
                with made_beside(self._spec.params):  # (on the parameters' device, as the other slots)
                    self.accumulated = [JaxVariable(host_constant(0, p.dtype, p.shape), trainable=False)
                                        for p in self._spec.params]
                    self.micro_steps = JaxVariable(host_constant(0, jnp.int64), trainable=False)
                    self.window_finite = JaxVariable(host_constant(True, jnp.bool_), trainable=False)
                    self.window_has_gradient = gradient_flags(self._spec.params)
                self._threaded = None  # (the eager update's state grew: ``_eager_update``)
            return variable_window(accumulate, self.accumulated, self.micro_steps, self.window_finite, read_numpy,
                                   assign_numpy, storage=self, has_gradient=(self.window_has_gradient, self._spec.params))

        accumulation_window(self._spec, accumulate, None, create)  # (float32 steps: mixed precision keeps its own)

    def apply(self, grads, loss=None, accumulate: int = 1, present=None) -> None:
        """``guarded_apply`` whose writes stand only where every value check staged before it in this trace passed
        (a label out of range: its error, raised after the compiled step, leaves the weights and this state as they
        were, as torch's eager step that raises before its update). The parameters and slots take the checks'
        flag into their update's own selection (``passed``): selected once more after the update, a parameter's new
        value read an unselected slot, so XLA computed the slot twice, once in each (every gradient and slot read
        twice a step, and a convolution kernel's gradient read transposed each time: benchmarks/RESULTS.md, stop
        64)."""
        passed = checks_passed()
        with unless_a_check_failed(self.not_selected_by_update([*self._spec.params, *self.variables()])):
            self.guarded_apply(grads, loss, accumulate, present, passed)

    def not_selected_by_update(self, variables) -> list:
        """``variables`` less the parameters and slots, which ``_update`` selects by its flag (one that holds the
        value checks' too, ``apply``): the ones that ``unless_a_check_failed`` must select after the update."""
        selected = {id(v) for v in self._spec.params} | {id(v) for slots in self.slot_variables for v in slots.values()}
        return [v for v in variables if id(v) not in selected]

    def guarded_apply(self, grads, loss=None, accumulate: int = 1, present=None, passed=None) -> None:
        """``guarded_update`` inside a trace (a compiled step's, a ``ud.function``'s); called eagerly, the same as one
        compiled program (``_eager_update``) for unidl's built-in rules, whose options the program reads as variables;
        a user's own rule runs op by op, as torch's and TensorFlow's eager steps run it, so that its Python (an
        attribute it reads, a print) runs at every step."""
        if passed is None and self._compiles_eagerly and not recording() and not _traced((loss, grads, present)):
            self._eager_update(grads, loss, accumulate, present)
        else:
            self.guarded_update(grads, loss, accumulate, present, passed)

    def _eager_update(self, grads, loss, accumulate, present) -> None:
        """``guarded_update`` of concrete gradients as one ``StatefulJit`` over the parameters and this state: one
        XLA program per structure of the arguments (the shapes and dtypes, which gradients are None,
        ``accumulate``) and frozen set, where each element-wise op of the rule compiled, and ran, on its own for
        each parameter shape (59 of the 74 programs a two-layer net's first eager Adam step compiled in a fresh
        process, each a real cost where JAX's compilation cache is empty). The learning rates, bound options and
        counts are variables, read by the program: a schedule's new rate runs it again, untraced; an option's first
        change retraces once, as in a compiled step. Built-in rules only (``guarded_apply``); should one need a
        traced value in Python it runs op by op from then on, with ``ud.function``'s one warning."""
        compiled = self.__dict__.get("_compiled_update")
        if compiled is None:
            mask = trainable_mask_cached(self._spec.params)  # (``window_micro_step`` reads it while traced)
            compiled = self._compiled_update = StatefulJit(self.guarded_update, self._threaded_state,
                                                           f"{type(self._spec).__name__}.apply", warn_retrace=False,
                                                           static_key=mask)
        if compiled is not _OP_BY_OP:
            try:
                compiled(grads, loss, accumulate, present)
                return
            except _CONCRETIZATION as error:  # (raised while traced, before the call: nothing written)
                from unidl.tracing import warn_running_eagerly

                self._compiled_update = _OP_BY_OP
                warn_running_eagerly(f"{type(self._spec).__name__}.apply", "jax", "jax.jit", error,
                                     what="the optimizer update")
        self.guarded_update(grads, loss, accumulate, present)

    def _threaded_state(self) -> list:
        """The parameters and ``variables()``, the state ``_eager_update`` threads: one list until the
        accumulation window's variables are made (``prepare_accumulation``)."""
        state = self.__dict__.get("_threaded")
        if state is None:
            state = self._threaded = [*self._spec.params, *self.variables()]
        return state

    def guarded_update(self, grads, loss=None, accumulate: int = 1, present=None, passed=None) -> None:
        """One guarded update: when ``loss`` or a gradient is not finite every parameter, slot and the step count
        keep their values (``jnp.where`` on one boolean scalar inside the trace, fused by XLA into each update).
        With ``accumulate`` N > 1, one micro-step: ``grads / N`` joins the accumulated gradients and every N-th
        updates with their sum, unless a micro-step of the window was not finite: then the whole window is
        skipped and discarded at its N-th micro-step (``finite`` False there; inside the window it is True). In a
        data-parallel job the window is this rank's until its N-th micro-step, which averages it over the ranks
        (``window_in_step``), the window skipped on every rank where any rank's was not finite.
        PyTorch's rule over a window (``.grad`` summed over the micro-steps, ``step()``, ``zero_grad()``): a
        parameter updates with its sum if it had a gradient in any micro-step of the window, not at all if in
        none (``window_micro_step``). ``present``: per parameter, None or a boolean scalar, whether its gradient
        (zeros otherwise) is one (a data-parallel job's, ``average_in_step``). ``passed``: None or a boolean scalar
        that must hold too for any parameter or slot to change (``apply``'s value checks)."""
        finite = all_finite([loss, *grads])
        self.finite.value = finite
        update, has_gradient = finite, present
        if accumulate > 1:
            sums, has_gradient = window_micro_step(self.accumulated, self.window_has_gradient, grads, accumulate,
                                                   self._spec.params, present)
            count = self.micro_steps.value + 1
            window_finite = self.window_finite.value & finite
            closes = count >= accumulate
            # in a data-parallel job: the job's window at its last micro-step (one all-reduce per update)
            sums, has_gradient, window_finite = window_in_step(sums, has_gradient, window_finite, closes)
            update = closes & window_finite
            self.finite.value = jnp.where(closes, window_finite, True)
            grads = sums
        grads = self._spec.clip_gradients(grads, self._ops)
        self._update(grads, update if passed is None else update & passed, has_gradient)
        if accumulate > 1:
            keep = ~closes  # a window still filling; else (updated or discarded) it starts again
            keep_window(self.accumulated, self.window_has_gradient, sums, has_gradient, keep)
            self.micro_steps.value = jnp.where(keep, count, 0)
            self.window_finite.value = jnp.where(keep, window_finite, True)

    def option_variables(self, group: int, key: str) -> tuple:
        """The variables of option ``key`` of param group ``group``: one, or two for ``betas``."""
        entry = self.group_options[group][key]
        return entry if isinstance(entry, tuple) else (entry,)

    def _read_option(self, group: int, key: str):
        """Option ``key`` of param group ``group`` as the trace reads it from its variables (``bound_rule``)."""
        return read_group_option(self._spec, group, key, lambda variable: variable.value)

    def _update(self, grads, update, has_gradient=None) -> None:
        """Every parameter and slot: its new value where ``update`` (a boolean scalar) holds, else its old one;
        ``has_gradient`` (an accumulation window's, ``window_micro_step``): per parameter, None or a boolean
        scalar that must hold too (the parameter had a gradient in the window)."""
        spec, ops = self._spec, self._ops
        step_count = self.iterations.value + 1
        self.iterations.value = jnp.where(update, step_count, self.iterations.value)
        step_dtype = self.learning_rate.value.dtype
        for index, (param, grad, slots) in enumerate(zip(spec.params, grads, self.slot_variables)):
            if grad is None:  # PyTorch's rule: no gradient, no update (nor a step counted for it)
                continue
            applies = update if has_gradient is None or has_gradient[index] is None else update & has_gradient[index]
            step = None
            if self.param_steps is not None:
                count = self.param_steps[index].value + 1
                self.param_steps[index].value = jnp.where(applies, count, self.param_steps[index].value)
                step = count.astype(step_dtype)
            rule, lr = bound_rule(spec, index, self._read_option), self.learning_rates[spec.group_of(index)].value
            grad = rule.regularized_gradient(param, grad, ops)
            heavy_ball, factor = rule.heavy_ball(), None
            if heavy_ball is not None:
                delta = _heavy_ball(slots, grad, lr, applies, *heavy_ball)
            else:
                delta, new_slots = rule.update(param, grad, slots, lr, step, ops)
                for name, value in new_slots.items():
                    if value is not slots[name]:
                        _guarded_assign(slots[name], value, applies)
                factor = rule.shrink(param.value, lr, ops)
            _guarded_assign(param, stepped(param.value, factor, delta), applies)


#: ``JaxOptimizer._compiled_update`` of a rule that runs op by op (it needed a traced value in Python)
_OP_BY_OP = object()


def _traced(values) -> bool:
    """Whether any array among ``values`` (nested tuples and lists, None entries) is a tracer."""
    if isinstance(values, (tuple, list)):
        return any(_traced(v) for v in values)
    return isinstance(values, jax.core.Tracer)


def gradient_flags(params) -> list[JaxVariable]:
    """One boolean variable per parameter: it had a gradient in a micro-step of the accumulation window so far
    (torch's ``.grad is not None`` between ``zero_grad()`` and ``step()``), False in an empty window."""
    return [JaxVariable(host_constant(False, jnp.bool_), trainable=False) for _ in params]


def window_micro_step(totals, flags, grads, accumulate, params, present=None):
    """``(sums, has_gradient)`` of an accumulation window with this micro-step's ``grads`` added (``grads / N``
    joins ``totals``). A parameter without a gradient now keeps its sum, and ``has_gradient`` is its flag (whether
    an earlier micro-step of the window gave it one: a boolean scalar known only when the step runs); None where
    it has one now (then it has one in the window) or is frozen (sum None: not updated, as before accumulation).
    The window's update then follows PyTorch's rule: a parameter with a gradient in any of its micro-steps moves
    with the window's sum, one with none in all of them keeps its value and its slots. ``present``: per parameter,
    None or a boolean scalar, whether its gradient (zeros otherwise) is one (``guarded_update``)."""
    from unidl.nn.module import is_trainable

    sums, has_gradient = [], []
    for index, (total, flag, grad, param) in enumerate(zip(totals, flags, grads, params)):
        if grad is not None:
            sums.append(total.value + grad / jnp.asarray(accumulate, grad.dtype))
            has_gradient.append(None if present is None or present[index] is None else flag.value | present[index])
        elif is_trainable(param):  # (the trace's frozen set is static: trainable_mask is part of its key)
            sums.append(total.value)
            has_gradient.append(flag.value)
        else:
            sums.append(None)
            has_gradient.append(None)
    return sums, has_gradient


def keep_window(totals, flags, sums, has_gradient, keep) -> None:
    """Store a window's ``sums`` and gradient flags where ``keep`` (a boolean scalar: the window goes on), else
    empty it (zero sums, no gradients) for every parameter, as ``zero_grad(set_to_none=True)`` does."""
    for total, flag, value, had in zip(totals, flags, sums, has_gradient):
        if value is None:  # frozen now: as without a gradient
            continue
        total.value = jnp.where(keep, value, jnp.zeros_like(value))
        flag.value = keep if had is None else keep & had


def _heavy_ball(slots, grad, lr, update, buffer_name, momentum, nesterov):
    """SGD's momentum rule (``Optimizer.heavy_ball``: Python ``momentum`` and ``nesterov``) with the guard on the
    buffer before the step is taken from it, so XLA computes the new buffer once and the parameter's update reads
    it, as a hand-written step does (selecting both results at the end makes XLA recompute the buffer from the old
    one in the parameter's update: one more read of every gradient and buffer); returns the parameter's decrement."""
    buffer = slots[buffer_name]
    _guarded_assign(buffer, momentum * buffer.value + grad, update)
    return lr * (grad + momentum * buffer.value if nesterov else buffer.value)


def _option_variables(value):
    """A param group's option as ``JaxVariable``s: a bool as a bool, a number as float64, a pair as a pair."""
    if isinstance(value, tuple):
        return tuple(_option_variables(v) for v in value)
    return JaxVariable(host_constant(value, jnp.bool_ if isinstance(value, bool) else jnp.float64), trainable=False)


def set_group_options(optimizer, group: int, keys) -> None:
    """Write options ``keys`` of param group ``group`` into their variables (read by the next step)."""
    write_group_options(optimizer, group, keys, written_in_place)  # (through NumPy: half jnp.asarray's cost)


def _guarded_assign(variable, value, update) -> None:
    """``variable`` takes ``value`` (cast to its dtype) where the boolean scalar ``update`` holds, else keeps its own."""
    variable.value = jnp.where(update, jnp.asarray(value, variable.dtype), variable.value)


def all_finite(values):
    """A boolean scalar: every element of every array in ``values`` (None entries ignored) is finite."""
    sums = [_zero_if_finite(v) for v in values if v is not None]
    return jnp.all(jnp.isfinite(jnp.stack(sums))) if sums else jnp.asarray(True)


#: from this many elements a matrix is checked by a matrix-vector product (below it, one reduction is as fast)
_MATVEC_CHECK_SIZE = 4096


def _zero_if_finite(value):
    """A float32 scalar: 0 when every element of ``value`` is finite, NaN (or inf) otherwise, reading it once.

    Multiplying by zero keeps exactly the non-finite elements (``inf * 0`` and ``NaN * 0`` are NaN, anything
    finite gives 0), and a sum of zeros cannot overflow. XLA's CPU reduction of a whole array to one scalar
    keeps the additions in order and runs at a fraction of memory speed (60 us for 100x1000 floats, a sixth
    of the two-layer net's step, which waits for the flag before any update); a matrix times a zero vector
    (``Σ_j m_ij * 0``) is the same sum as the vectorised, threaded matrix-vector kernel, 3-4x faster."""
    if value.ndim >= 2 and value.size >= _MATVEC_CHECK_SIZE:
        rows = value.reshape(value.shape[0], -1)
        return jnp.sum(rows @ jnp.zeros((rows.shape[1],), rows.dtype)).astype(jnp.float32)
    return jnp.sum(value - value).astype(jnp.float32)


def read_numpy(variable):
    """A ``JaxVariable``'s value as NumPy (how ``unidl.training.variable_window`` and ``variable_scaler`` read one)."""
    return np.asarray(variable.value)


def assign_numpy(variable, value) -> None:
    """Write a NumPy value of a variable's dtype into it, as a JAX array on its device (for ``variable_window``
    and ``variable_scaler``)."""
    written_in_place(variable, value)
