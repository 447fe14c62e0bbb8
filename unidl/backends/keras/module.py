"""The ``keras.Model`` that wraps a unidl module tree, so that Keras's own trainer can run it."""

from __future__ import annotations

import contextlib
import contextvars
import re

import keras
import numpy as np
from keras.src.backend.common.stateless_scope import in_stateless_scope  # (not re-exported by Keras)
from keras.src.losses.loss import scale_loss_for_distribution  # Keras's rule, not re-exported

from unidl import config
from unidl.backends.keras import distributed as keras_distributed
from unidl.backends.keras.host import HOST
from unidl.backends.keras.optimizer import keep_train_function_current, loss_carrier
from unidl.data.pool import ctrl_c_noted
from unidl.dtype_kinds import dtype_name, holds_floats
from unidl.errors import GraphConstructError
from unidl.nn.module import graph_flags, is_trainable, restore_modes, step_modes, trainable_mask
from unidl.precision import active_ops
from unidl.tracing import (python_randomness_guard, python_randomness_preserved, python_randomness_state,
                           recording_module_calls)


class NativeModel(keras.Model):
    """A ``keras.Model`` over a unidl module's ``keras.Variable``s whose ``call`` is the module's forward.

    Keras's ``training=False`` (its predict and evaluate) runs every unidl module in eval mode for the call
    (and thus for the trace); ``training=True`` (its train step) runs each module in its own mode, as torch
    does: ``model.bn.eval()`` while the model trains keeps that BatchNorm's running statistics.
    """

    def __init__(self, module):
        variables = [v for _, v in module.named_parameters()] + [b for _, b in module.named_buffers()]
        # Keras casts inputs to the model's dtype policy: make it the dtype the weights were built in
        dtype = keras.backend.standardize_dtype(variables[0].dtype) if variables else config.get_dtype()
        # a TensorFlow name scope must start with a letter, digit or dot: a class named _Net is a valid module
        name = re.sub(r"^[^A-Za-z0-9.]+", "", type(module).__name__.lower()) or "model"
        super().__init__(name=name, dtype=dtype)
        object.__setattr__(self, "_unidl_module", module)
        self.unidl_parameters = [p for _, p in module.named_parameters()]
        self.unidl_buffers = [b for _, b in module.named_buffers()]
        self.built = True

    @property
    def trainable_weights(self):
        """The parameters Keras's trainer updates: those not frozen (``requires_grad`` or ``trainable``), the
        module's, then those of the compiled loss module that its optimizer trains (``loss_parameters``)."""
        return [p for p in (*self.unidl_parameters, *loss_parameters(self)) if is_trainable(p)]

    @property
    def non_trainable_weights(self):
        """The frozen parameters and the buffers, then the variables outside the module's tree that its train step
        writes (``outside_state``): Keras's trainer on JAX threads exactly these through its step."""
        return ([p for p in self.unidl_parameters if not is_trainable(p)] + list(self.unidl_buffers)
                + list(outside_state(self)))

    trainable_variables = trainable_weights
    non_trainable_variables = non_trainable_weights

    #: Python runs of ``train_step``: where Keras compiles its step (``jit_compile``, as on JAX), it runs only while
    #: the framework traces it, once per trace (the keras backend's ``trace_count``)
    train_step_runs = 0

    def train_step(self, *args, **kwargs):
        object.__setattr__(self, "train_step_runs", self.train_step_runs + 1)
        # in a data-parallel job whose engine wraps the forward (Keras-on-torch: DistributedDataParallel), Keras's
        # own step with its forward through that wrapper, so that its loss.backward() averages the gradients
        written, raised_in_the_pass = [], []
        try:
            with recording_module_calls() as reached, keras_distributed.forward_through_engine(self), \
                    _trainer_variables_told(self), _gradients_of_used_variables(self, args) as raised_in_the_pass, \
                    _writes_outside_the_state_found(self), _draws_frozen_warned(self):
                result = super().train_step(*args, **kwargs)
        except StateOutsideTheModel as found:
            written = found.variables
        if raised_in_the_pass:  # the forward raised in the abstract pass, and not in the step: its error (before
            raise raised_in_the_pass[0]  # a trace over a new outside state, whose step would train without it)
        _note_modules_reached(self, reached)
        new = [*written, *_reads_outside_the_state(self)]  # (one more trace over them all)
        if new:
            raise StateOutsideTheModel(new)
        return result

    def zero_grad(self, set_to_none=True):
        """``torch.nn.Module.zero_grad``, which Keras-on-torch's train step calls before its backward (no other host
        has it): the gradients of the torch parameters the model registered (its module's), then those of the loss
        module's parameters it trains (``loss_parameters``), which torch would add up step after step."""
        super().zero_grad(set_to_none)
        HOST.clear_gradients([parameter.value for parameter in loss_parameters(self)], set_to_none)

    def _symbolic_build(self, *args, **kwargs):
        """Keras's abstract pass over the forward before its first step (``train_on_batch``'s, to build the
        metrics): not a step, so it draws nothing from Python's ``random`` that the step would (a forward that
        draws its depth trained on another on Keras-on-torch and Keras-on-JAX than on every other backend). Where it
        builds the compiled loss over the outputs, a forward of several outputs is ``_one_output``'s ``TypeError``
        there, before Keras's ``KeyError`` about loss paths (Keras-on-torch's ``train_on_batch`` builds so)."""
        token = _LOSS_BUILT_OVER_OUTPUTS.set(getattr(self, "_compile_loss", None) is not None)
        try:
            with python_randomness_preserved():
                return super()._symbolic_build(*args, **kwargs)
        except RuntimeError as error:  # (Keras's "Unable to automatically build the model" around any but a ValueError)
            if isinstance(error.__context__, _SeveralOutputs):
                raise error.__context__ from None
            raise
        finally:
            _LOSS_BUILT_OVER_OUTPUTS.reset(token)

    def compute_loss_and_updates(self, trainable_variables, *args, **kwargs):
        """Keras's loss for ``jax.grad`` where its trainer threads the state as values (Keras-on-JAX), with the
        step's loss marked in one gradient element (``_loss_marked_in_a_gradient``); Keras's own elsewhere."""
        loss, aux = super().compute_loss_and_updates(trainable_variables, *args, **kwargs)
        if kwargs.get("training") and not HOST.keras_state_in_place:
            loss = _loss_marked_in_a_gradient(self, loss, aux[0], trainable_variables)
        return loss, aux

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # (Keras's signature: its trainer passes ``training`` only to a compute_loss that names it)
        try:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        except BaseException as error:  # (a label out of range, a Ctrl-C: the forward's writes stand, as in torch)
            _writes_before_the_error_noted(self, error)
            raise

    def make_train_function(self, force=False):
        with _step_function_of_its_own(self, "train_step"):
            return super().make_train_function(force)

    def make_test_function(self, force=False):
        with _step_function_of_its_own(self, "test_step"):
            return super().make_test_function(force)

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function
        # Keras's predict step reads ``predict_step`` from the model when jax traces it, at its first call: the
        # checked one is this predict function's own, handed to ``predict_step`` while its calls trace it
        # (``_make_function``), never stored on the model (a predict function made earlier and kept by a compile
        # has its own)
        checking = None
        if _checks_values(self):
            checking = _value_checked(lambda *args, **kwargs: super(NativeModel, self).predict_step(*args, **kwargs))
        token = _CHECKING_MADE.set(checking)
        try:
            return super().make_predict_function(force)
        finally:
            _CHECKING_MADE.reset(token)

    def predict_step(self, *args, **kwargs):
        traced = _PREDICT_STEP_TRACED.get()  # (this predict function's checked step, while its call traces it)
        with trainable_writes_refused():
            return super().predict_step(*args, **kwargs) if traced is None else traced(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        with trainable_writes_refused():
            return super().test_step(*args, **kwargs)

    def _make_function(self, step_function, *args, **kwargs):
        """Keras's per-call step over ``step_function`` (its jitted ``train_step``, ``test_step`` or predict step);
        where Keras's trainer threads the state through the step as values (Keras-on-JAX, which donates them to
        it), one that hands the state it passes and the one that comes back to ``KeptStepState``."""
        made = super()._make_function(step_function, *args, **kwargs)
        if HOST.keras_state_in_place or self.steps_per_execution != 1:  # (several steps a call: Keras's loop)
            return made
        checking = _CHECKING_MADE.get()  # (the value checks of a train, evaluation or predict step)
        raise_failed, traced = (None, None) if checking is None else (checking[1], checking[2])

        def iterator_step(state, iterator):
            data = next(iterator)
            call = _KEPT_STATE.get()
            kept, checks = (call[1], call[2]) if call is not None and call[0] is self else ([], None)  # (Keras's own)
            if checks:  # an earlier step of the call failed a check? (those that have run, without waiting)
                _raise_failed_checks(checks, waited=len(checks) - _CHECKS_PENDING + 1)
            kept[:] = [(None, state)]
            noted = []  # (the step's forward's writes before an error: ``_writes_before_the_error_noted``)
            # the step's settings (its traced predict step, its note of the writes) in a copy of this thread's
            # context that the step runs in and that ends with it: nothing to reset after it, where a Ctrl-C's
            # KeyboardInterrupt, raised at the first call after the step returns, skipped the resets that
            # followed, and the step's settings outlived it (a later predict step, of another model too, ran the
            # interrupted one's traced step)
            context = contextvars.copy_context()
            context.run(_WRITES_BEFORE_THE_ERROR.set, noted)
            context.run(_PREDICT_STEP_TRACED.set, traced)  # (None: Keras's own predict step, not a caller's)
            # the step's outputs stored from C (``map``, ``Context.run``, slice assignment): no point between its
            # return and the store where Python raises a Ctrl-C's KeyboardInterrupt, which would drop them
            try:
                kept[:] = map(context.run, [step_function], [state], [data])
            except StateOutsideTheModel as found:  # (raised while traced, before it ran: nothing donated yet)
                state = _with_values_of(state, found.variables)  # traced again, over the longer state
                kept[:] = [(None, state)]
                try:
                    kept[:] = map(context.run, [step_function], [state], [data])
                except StateOutsideTheModel as again:  # (the jax backend's StatefulJit says the same)
                    raise GraphConstructError(
                        f"the train step of {type(self).__name__} writes new variables each time it is traced "
                        f"({again.variables}): create modules and variables outside the forward and call them "
                        f"inside it") from None
            except BaseException as error:  # (a step run eagerly: what its forward wrote before the error stands)
                _write_state_back_with_the_writes_before(self, state, error, noted)
                raise
            finally:
                noted.clear()  # (the arrays it holds go with the step, not with an error the caller keeps)
                _context_of_the_step_kept(context)
            if raise_failed is None:
                return kept[0]
            (outputs, failed), state = kept[0]
            if failed and checks is not None:
                checks.append((raise_failed, failed))  # (read at a next step, or as the call ends: KeptStepState)
            elif failed:  # (a call of Keras's own: read now, the state the step gave back put back first)
                try:
                    raise_failed(failed)
                except Exception:
                    _write_state_back(self, state)
                    raise
            return outputs, state

        return iterator_step

    def call(self, x, training=None):
        module = self._unidl_module
        inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)  # (x, *extra step inputs)
        try:
            if training:  # (Keras's train step differentiates it: a ud.grad inside is differentiable on every host)
                with HOST.differentiated():
                    return _as_the_loss_takes_it(_one_output(module, module(*inputs)))
            if training is None:
                return _as_the_loss_takes_it(module(*inputs))
            modes = [(m, m.training) for m in module.modules()]
            module.eval()
            try:
                outputs = module(*inputs)
                if _LOSS_BUILT_OVER_OUTPUTS.get():
                    outputs = _one_output(module, outputs)
                return _as_the_loss_takes_it(outputs)
            finally:
                restore_modes(modes)
        except BaseException as error:  # (a KeyboardInterrupt too: the writes before it stand, as in torch)
            _writes_before_the_error_noted(self, error)
            # Keras's call wrapper (traceback filtering: its predict, its fit on torch) would raise a copy whose
            # text is "Exception encountered when calling NativeModel.call()" around this one's and the
            # arguments: the error (unidl's, or the user's own in a forward) keeps the text it has on every other
            # backend and path (the attribute is Keras's own mark of an error given its context already)
            with contextlib.suppress(AttributeError):  # (an exception type without a __dict__)
                error._keras_call_info_injected = True
            raise


def _draws_frozen_warned(native):
    """Where Keras jits its train step on JAX (it runs only while traced), the ``RetraceWarning`` of a forward that
    draws from Python's ``random``, frozen into the trace, as the jax backend's and Keras-on-TensorFlow's graphs
    give it; nothing where the step runs every call (Keras-on-torch, ``eager=True``)."""
    if HOST.keras_state_in_place or not native.jit_compile or native.run_eagerly:
        return contextlib.nullcontext()
    return python_randomness_guard(train_step_name(native))


def train_step_name(native) -> str:
    """``train_step of <Model>``, the model's own class name, as every backend names its compiled step."""
    return f"train_step of {type(native._unidl_module).__name__}"


#: True in Keras's abstract pass before a first step (``_symbolic_build``) where that pass builds a compiled loss
_LOSS_BUILT_OVER_OUTPUTS: contextvars.ContextVar[bool] = contextvars.ContextVar("unidl_loss_built", default=False)


class _SeveralOutputs(TypeError):
    """``_one_output``'s error: a forward of several outputs where Keras's trainer takes one."""


def _one_output(module, outputs):
    """``outputs`` of ``module``'s forward in Keras's train step, where its loss takes them, if one tensor: Keras's
    trainer matches a loss to each of several outputs, and one loss over a tuple, list or dict of outputs (which
    the other backends' steps take) is a ``TypeError`` here, where Keras raised a ``KeyError`` about paths."""
    if isinstance(outputs, (tuple, list, dict)):
        raise _SeveralOutputs(
            f"the keras backend trains a forward that returns one tensor (Keras's trainer matches a loss to each "
            f"output): {type(module).__name__}'s returns a {type(outputs).__name__} of {len(outputs)}; return one "
            f"tensor (concatenate them, and split them in the loss), or train this model on the torch, tensorflow or "
            f"jax backend, whose steps hand the loss any outputs")
    return outputs


def _as_the_loss_takes_it(output):
    """The model's ``output`` as Keras's trainer hands it to the loss and the metrics: under mixed precision's casts
    (a train step's forward scope) a floating output in float32, as every other backend's train step hands it on
    (a class-weighted ``CrossEntropyLoss`` on Keras-on-TensorFlow had multiplied a float32 weight by bfloat16
    log-probabilities: a ``TypeError``; on Keras's other hosts the loss was computed in bfloat16); unchanged
    elsewhere."""
    if active_ops() is None or not holds_floats(output) or dtype_name(output.dtype) == "float32":
        return output
    return keras.ops.cast(output, "float32")


#: the Keras variables unidl's modules write (``Backend.write_state``) while a train step is traced in this context
_STATE_WRITTEN: contextvars.ContextVar[dict | None] = contextvars.ContextVar("unidl_state_written", default=None)


def note_state_written(variable) -> None:
    """``Backend.write_state``'s note of ``variable`` to the train step traced here, if any
    (``_writes_outside_the_state_found``). A trainable variable written there (``ud.nn.Embedding``'s ``max_norm``
    renormalization of its weight) is a ``GraphConstructError``: Keras-on-JAX's trainer threads the non-trainable
    variables alone, and would drop the write where torch keeps it."""
    written = _STATE_WRITTEN.get()
    if written is not None:
        # (Keras's ``trainable`` stays True for a frozen parameter, which the step threads: ``is_trainable``)
        if variable.trainable and is_trainable(variable):
            raise GraphConstructError(
                f"the forward writes a trainable parameter (of shape {tuple(variable.shape)}: ud.nn.Embedding's "
                f"max_norm renormalization), which Keras-on-JAX's own steps (ud.train_step, ud.fit, ud.predict) drop, "
                f"where torch keeps it; run this model on the 'jax' backend, on Keras over TensorFlow or torch, or "
                f"without max_norm (ud.evaluate keeps it)")
        written.setdefault(id(variable), variable)


@contextlib.contextmanager
def trainable_writes_refused():
    """Where Keras's trainer threads the state through its evaluation and predict steps as values (Keras-on-JAX:
    the non-trainable variables alone), a trainable variable the forward writes is a ``GraphConstructError``
    (``note_state_written``), as in its train step: the write would be dropped where torch keeps it. ``ud.evaluate``'s
    compiled evaluation there (``Backend.evaluation_function``, a ``ud.function`` over every variable's value) keeps
    it instead, as torch does."""
    if HOST.keras_state_in_place:
        yield
        return
    token = _STATE_WRITTEN.set({})
    try:
        yield
    finally:
        _STATE_WRITTEN.reset(token)


def loss_parameters(native) -> tuple:
    """The parameters of the loss module ``native`` is compiled with that the compile's optimizer trains and the
    model does not own (``LinearCrossEntropyLoss``'s ``linear``, a learned weighting), which Keras's trainer
    trains as the model's own (``NativeModel.trainable_weights``), as ``torch.optim`` over them does; ``()`` for
    most compiles (the keras backend's ``compile`` sets them, and restores them with a compile it switches back to)."""
    return native.__dict__.get("_unidl_loss_parameters") or ()


def threaded_state(native) -> tuple:
    """The variables Keras's train step of ``native`` threads (Keras-on-JAX): the module's parameters and buffers,
    the loss's parameters it trains (``trainable_weights``) and the outside state found so far. (fit's sample
    weights hold the loss outside the step's loss module, so its modules are reached outside the trees: its trained
    parameters, threaded as trainable already, were added to the non-trainable state too, and Keras failed.)"""
    trained = (p for p in loss_parameters(native) if is_trainable(p))
    return (*native.unidl_parameters, *native.unidl_buffers, *trained, *outside_state(native))


def outside_state(native) -> tuple:
    """The variables outside the module's tree that Keras's train step of ``native`` wrote (a loss module's too), in the
    order found: a BatchNorm the forward holds in a plain list, a closure or another object, whose running
    statistics torch updates as it calls it. ``()`` for most models."""
    return native.__dict__.get("_unidl_outside_state", ())


class StateOutsideTheModel(Exception):
    """Raised out of a trace of Keras's train step (Keras-on-JAX) that wrote ``variables`` outside the state the
    step threads (``NativeModel.non_trainable_weights``, which now holds them): Keras's stateless step would drop
    those writes, so the step is traced again over the longer state (``NativeModel._make_function``)."""

    def __init__(self, variables):
        super().__init__(f"{len(variables)} variables written outside the model's state")
        self.variables = variables


@contextlib.contextmanager
def _writes_outside_the_state_found(native):
    """Where Keras's trainer threads the state through its step as values (Keras-on-JAX), a variable the step writes
    must be among the model's (``non_trainable_weights``): one outside them (the running statistics of a BatchNorm
    held outside the model's tree) is written inside the trainer's ``StatelessScope`` and dropped with it. The
    variables written in the block (``note_state_written``) that the model's state lacks are added to it
    (``outside_state``) and ``StateOutsideTheModel`` is raised for them, so that the step is traced again."""
    if HOST.keras_state_in_place:  # (written in place: nothing to thread)
        yield
        return
    written = {}
    token = _STATE_WRITTEN.set(written)
    try:
        yield
    finally:
        _STATE_WRITTEN.reset(token)
    known = {id(v) for v in threaded_state(native)}
    new = [variable for key, variable in written.items() if key not in known]
    if new:
        object.__setattr__(native, "_unidl_outside_state", (*outside_state(native), *new))
        raise StateOutsideTheModel(new)


def _reads_outside_the_state(native) -> list:
    """Where Keras's trainer threads the state through its step as values (Keras-on-JAX): the variables of the
    modules the step reached outside the model's and the loss's trees (a layer held in a plain list or a closure:
    ``reached_modes``) that the state lacks, now added to it (``outside_state``), for the step to be traced again
    with their values as inputs (``StateOutsideTheModel``): read in the trace, they were baked into the compiled
    step as constants, and a change of them (loaded, trained by another optimizer) went unseen, where torch reads
    them as they are at each call. (A parameter of such a module is threaded as state, not trained by this step's
    optimizer, as in torch where it is not the optimizer's.)"""
    if HOST.keras_state_in_place or not native.__dict__.get("_unidl_reached"):
        return []
    known = {id(v) for v in threaded_state(native)}
    new = {}
    for module in native.__dict__["_unidl_reached"]:
        for variable in (*module.parameters(), *(buffer for _, buffer in module.named_buffers())):
            if id(variable) not in known and isinstance(variable, keras.Variable):
                new[id(variable)] = variable
    if new:
        object.__setattr__(native, "_unidl_outside_state", (*outside_state(native), *new.values()))
    return list(new.values())


def _with_values_of(state, variables) -> tuple:
    """A state tuple of Keras-on-JAX's trainer (``_STATE_GROUPS``) with the values of ``variables`` appended to its
    non-trainable group (the second), as ``NativeModel.non_trainable_weights`` now lists them."""
    state = list(state)
    state[1] = [*state[1], *[variable.value for variable in variables]]
    return tuple(state)


def step_key(model, loss_fn, optimizer) -> tuple:
    """What Keras's compiled train step of ``model`` bakes in beyond its settings, so that a change builds the step
    again: which parameters it trains, the modes of the model's and the loss's modules, and last those of the
    modules its traces reached outside them (``reached_modes``, which ``_note_modules_reached`` re-files)."""
    return trainable_mask(optimizer.params), step_modes(model, loss_fn), reached_modes(model.native)


def reached_modes(native) -> tuple:
    """The ``training`` flags of the modules outside the model's and its loss's trees that Keras's train step of
    ``native`` has reached (called, or read the flag of: a module the forward holds in a plain attribute, a second
    model called in the forward), in the order first met: a compiled step bakes in their modes too, so the keras
    backend's compile key ends with them (``Backend.compile``) and a train step is built again when one changes, as
    ``ud.function``'s graphs are (``unidl.tracing.ModesReached``). ``()`` for most models."""
    reached = native.__dict__.get("_unidl_reached")
    return tuple(graph_flags(module) for module in reached) if reached else ()


def _note_modules_reached(native, reached) -> None:
    """After a run of Keras's train step (while it is traced, where Keras compiles it): note the modules it reached
    outside the model's and the loss's trees (``reached_modes``), and file the compile in force under its key with
    their modes, so that the next call finds the step it just traced (not a compile of another key). The modules
    seen so far are the compile's (kept and restored with it, keras/backend.py): whether one is inside depends on
    its loss (a loss module of one compile is outside the tree of another's loss that calls it)."""
    seen = native.__dict__.get("_unidl_seen_modules")
    if seen is None:
        seen = set()
        object.__setattr__(native, "_unidl_seen_modules", seen)
    new = [module for key, module in reached.items() if key not in seen]
    if not new:
        return
    inside = {id(m) for m in native._unidl_module.modules()}
    loss = getattr(getattr(native, "loss", None), "_unidl_loss", None)
    if hasattr(loss, "modules"):
        inside.update(id(m) for m in loss.modules())
    outside = [module for module in new if id(module) not in inside]
    seen.update(id(module) for module in new if id(module) in inside)
    if not outside:
        return
    seen.update(id(module) for module in outside)
    known = native.__dict__.get("_unidl_reached", ())  # (the model's, over its compiles)
    outside = [module for module in outside if all(module is not other for other in known)]
    if not outside:
        return
    object.__setattr__(native, "_unidl_reached", (*known, *outside))
    compiled = native.__dict__.get("_unidl_compiled")
    if compiled is not None:
        object.__setattr__(native, "_unidl_compiled", (*compiled[:-1], reached_modes(native)))


@contextlib.contextmanager
def _step_function_of_its_own(native, name):
    """``native.<name>`` (``train_step``, ``test_step``) a new function for the block, in which Keras makes its
    compiled step over it: ``jax.jit`` keeps its traces by function, and the bound method is equal for every
    compile of the model, so a new jitted step (a new compile, or one made again for an option bound since) would
    run the trace of an earlier one still alive (the keras backend keeps a model's last compiles), with its loss,
    optimizer and constants. Where the step is jitted on Keras-on-JAX, one whose value checks are staged
    (``_value_checked``)."""
    method = getattr(type(native), name)
    step, checking = lambda *args, **kwargs: method(native, *args, **kwargs), None
    if _checks_values(native):
        checking = _value_checked(step, given_back=lambda: _variables_given_back(native))
        step = checking[0]
    object.__setattr__(native, name, step)
    token = _CHECKING_MADE.set(checking)
    try:
        yield
    finally:
        _CHECKING_MADE.reset(token)
        object.__delattr__(native, name)


def _checks_values(native) -> bool:
    """Whether Keras's steps of ``native`` made now get their value checks staged: where Keras's trainer threads the
    state as values (Keras-on-JAX) and jits one step a call (``NativeModel._make_function``'s steps); not eagerly
    (``run_eagerly``: the ops check concrete values as they run)."""
    return (not HOST.keras_state_in_place and native.steps_per_execution == 1 and native.jit_compile
            and not native.run_eagerly)


#: while Keras makes a step over a ``_value_checked`` function: ``(checked step, raise_failed, the step to trace
#: for a predict step or None)``, which ``NativeModel._make_function`` keeps for the step's calls
_CHECKING_MADE: contextvars.ContextVar = contextvars.ContextVar("unidl_checking_made", default=None)
#: while a predict function's call may trace its step: that function's checked ``predict_step``
_PREDICT_STEP_TRACED: contextvars.ContextVar = contextvars.ContextVar("unidl_predict_step_traced", default=None)


def _value_checked(step, given_back=None):
    """``(checked step, raise_failed, traced)``: Keras-on-JAX's ``train_step``/``test_step`` (``(outputs, state)``
    of ``(state, data)``) or ``predict_step`` (``traced``: the one ``NativeModel.predict_step`` gives its trace),
    which Keras's trainer compiles by a ``jax.jit`` of its own, with the value checks of unidl's ops inside it (an
    index or a label out of range) staged by the host (``value_checked``: checkify), the failed ones as a second
    output beside Keras's: ``((outputs, failed), state)``, so that the state stays the second element where
    ``KeptStepState`` reads it. Without them the step computed with a label out of range (a finite, wrong loss, a
    NaN row) where every other backend raises ``IndexOutOfRangeError``. ``given_back`` (a train or evaluation
    step's: ``_variables_given_back``): a step whose checks failed gives back the values it was given of every
    state group but the non-trainable variables (the weights, the optimizer's and the metrics' variables: a train
    step's update, made after every check of its forward and loss, is not applied, as on every backend), so the
    writes to those are not selected one by one by the checks before them (the host's ``value_checked``); the
    forward's writes to the non-trainable variables (a BatchNorm's statistics and ``num_batches_tracked``, a frozen
    Embedding's ``max_norm`` rows) are, and stand where every check before them held, as torch's eager step, which
    wrote them before its loss's label check raised, keeps them."""
    checked, raise_failed = HOST.value_checked(step, given_back=given_back)

    def checked_step(state, *args, **kwargs):
        failed, (outputs, new_state) = checked(state, *args, **kwargs)
        if failed and given_back is not None:
            new_state = tuple(
                group if name == "non_trainable_variables" else
                keras.tree.map_structure(lambda old, new: keras.ops.where(failed[0], old, new), given, group)
                for name, given, group in zip(_STATE_GROUPS[len(state)], state, new_state))
        return (outputs, failed), new_state

    return checked_step, raise_failed, None if given_back is not None else checked_step


def _variables_given_back(native) -> list:
    """The variables of ``native`` whose values its train or evaluation step gives back as it was given them where
    a check failed (``_value_checked``): every group of the state Keras-on-JAX's trainer threads
    (``_STATE_GROUPS``) but the non-trainable variables."""
    optimizer = getattr(native, "optimizer", None)
    return [*native.trainable_variables, *(optimizer.variables if optimizer is not None else ()),
            *native.metrics_variables]


@contextlib.contextmanager
def _trainer_variables_told(native):
    """For the train step traced in the block, the optimizer learns the model's trainable variables in the order
    Keras's trainer hands their values and gradients to ``stateless_apply`` (Keras-on-JAX), to match them to its
    own by identity (keras/optimizer.py ``trainer_values_in_optimizer_order``): an optimizer over some of the
    model's parameters, or over them in another order, updates its own, each with its own slots and rate."""
    optimizer = getattr(native, "optimizer", None)
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # (float16: the optimizer in Keras's loss scaler)
    if HOST.keras_state_in_place or not hasattr(inner, "trainer_variables"):  # (in place: apply matches them itself)
        yield
        return
    object.__setattr__(inner, "trainer_variables", list(native.trainable_variables))
    try:
        yield
    finally:
        object.__setattr__(inner, "trainer_variables", None)


@contextlib.contextmanager
def _gradients_of_used_variables(native, args):
    """Where Keras's trainer threads the state as values (Keras-on-JAX: ``train_step(state, data)``), its
    ``jax.grad`` gives a trainable variable the loss does not use zeros, which momentum, weight decay and Adam's
    step count would act on; PyTorch gives it no gradient and leaves it alone. For the step traced in the block,
    the optimizer learns which variables the loss uses (the host's ``inputs_used``: a walk over the loss's
    jaxpr, at trace time) and treats the others as without a gradient (``NativeOptimizer.apply``).

    Gives the list of what the forward raised in that pass (empty where it raised nothing). An error caught there
    ends the pass's trace normally (the loss zero): an abstract trace aborted by it stayed alive, with its arrays,
    after each failed step. Python control flow on a value (the host's ``tracer_value_errors``, or an error raised
    from one) is raised at once, the step's own rule for it. So is a ``KeyboardInterrupt`` (a Ctrl-C, which lands
    anywhere: the step's forward would not meet it again, and ran in full before it was raised, a step late; the
    pass wrote no value, as torch's step interrupted before its forward). Any other (the user's own, after a
    BatchNorm wrote; a ``SystemExit`` or another ``BaseException`` too) keeps every gradient: the step itself then
    raises the same error, on values where it runs eagerly, with what the forward wrote before it, as torch's step;
    where the step raises nothing (a forward that raises once), ``NativeModel.train_step`` raises the pass's error
    once the step is made, before its update is applied, a step traced again over new state outside the model too
    (``StateOutsideTheModel``, which trained without it): no weight changes, as torch's step whose forward raised."""
    optimizer = getattr(native, "optimizer", None)
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # (float16: the optimizer in Keras's loss scaler)
    raised = []
    if HOST.keras_state_in_place or len(args) != 2 or not hasattr(inner, "used_gradients"):
        yield raised
        return
    (trainable, non_trainable, optimizer_variables, metrics_variables), data = args
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

    def loss_of(values):
        try:
            return native.compute_loss_and_updates(values, non_trainable, metrics_variables, x, y, sample_weight,
                                                   training=True, optimizer_variables=optimizer_variables)[0]
        except BaseException as error:  # (kept for after the trace, which ends normally)
            raised.append(error)
            return keras.ops.zeros(())

    with python_randomness_preserved(replay=python_randomness_state()):  # (the step's own draws, replayed)
        used = HOST.inputs_used(loss_of, list(trainable))
    if raised and isinstance(raised[0], KeyboardInterrupt):  # (at once: its trace has ended, keeping no arrays)
        raise raised[0]
    if raised:
        if traced_value_error(raised[0]) is not None:
            raise raised[0]  # (Python control flow on a value: the step's own rule for it, as before this pass)
        used = None
    object.__setattr__(inner, "used_gradients", used)
    try:
        yield raised
    finally:
        object.__setattr__(inner, "used_gradients", None)


def traced_value_error(error):
    """The host's error for a traced value used in Python (``tracer_value_errors``) that ``error`` is or was raised
    from (Keras, or the user's forward, wraps it), or None."""
    cause = error
    while cause is not None and not isinstance(cause, getattr(HOST, "tracer_value_errors", ())):
        cause = cause.__cause__ or cause.__context__
    return cause


def _loss_marked_in_a_gradient(native, loss, unscaled, trainable_values):
    """``loss + stop_gradient(0 * unscaled) * w[0]`` for the first element of the smallest trainable variable the
    step's loss uses, of the optimizer's where it holds one (``loss_carrier``; a bias, where the model has one: the
    mark costs an add over that variable's gradient only): the same value (``+ 0``), and that element's gradient
    NaN where the step's (unscaled) loss is not finite.
    Keras-on-JAX's optimizer sees only the gradients: its trainer hands ``stateless_apply`` the gradients and the
    optimizer's state, and the loss (a value inside ``jax.grad``, then Keras's metrics input) no other way in; so
    a non-finite loss whose gradients are finite (a term without a gradient) would otherwise go unnoticed by the
    non-finite guard, a window's finite flag and the float16 loss scaler. The gradient carries it, as DDP's
    all-reduce carries a rank's loss (keras/distributed.py). Only in the step traced after the loss's used
    variables are known (``_gradients_of_used_variables``: the mark must not make an unused variable used)."""
    optimizer = getattr(native, "optimizer", None)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    used = getattr(inner, "used_gradients", None)
    if used is None or len(used) != len(trainable_values):
        return loss
    index = loss_carrier(inner, native.trainable_variables, trainable_values, used)
    if index is None:
        return loss
    element = keras.ops.reshape(trainable_values[index], (-1,))[0]
    marker = keras.ops.stop_gradient(keras.ops.cast(unscaled, loss.dtype) * 0)
    return loss + marker * keras.ops.cast(element, loss.dtype)


#: Keras-on-JAX's state tuples as its trainer's steps take and return them (keras/src/backend/jax/trainer.py:
#: ``train_step``, ``test_step``, the predict step), by length, named as its ``jax_state_sync`` reads them
_STATE_GROUPS = {4: ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables"),
                 3: ("trainable_variables", "non_trainable_variables", "metrics_variables"),
                 2: ("trainable_variables", "non_trainable_variables")}


#: (native model, its kept list) of the innermost ``KeptStepState`` call in this thread (a context variable: each
#: thread, and each call, has its own, so that two threads predicting with one model never share or leave a list)
_KEPT_STATE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("unidl_kept_step_state", default=None)


class KeptStepState:
    """A call into Keras's trainer (``fit``, ``train_on_batch``, ``predict_on_batch`` of ``native``) after which the
    model holds the state of its last completed step even when Ctrl-C ends it.

    Keras-on-JAX's trainer threads the state through its jitted steps and donates it to them: once a step has run,
    its outputs are the only values the model has, and Keras writes them back to the variables in Python after the
    step returns (``train_on_batch``), or keeps them outside the variables, which ``fit`` empties, during an epoch.
    A Ctrl-C that lands while XLA runs the step comes out as ``KeyboardInterrupt`` when the step returns, before
    that write-back, and Keras's cleanup then put deleted arrays (or ``fit``'s emptied variables: a Ctrl-C in its
    first step, while it compiles) into the model. So the steps (``NativeModel._make_function``) store the state
    they pass and, from C, the state that comes back here, and an error that ends the call (a ``KeyboardInterrupt``,
    or any other: one raised while ``fit``'s first step compiles left every variable emptied) writes the last of
    them back (the state of the last completed step, or the one the interrupted step was given) where a variable
    has no live value, then goes on; where Keras put live values back itself, they are the newest (a callback
    may have changed them after the last step) and stay. Nothing where Keras changes its variables in place
    (TensorFlow, torch: no state to drop). The kept state belongs to the call and its thread (``_KEPT_STATE``, a
    context variable naming the model), not to the model: two threads predicting with one model each keep their
    own, and a step of another model, or of Keras's own call, keeps none.
    (Not covered: Ctrl-C in the microseconds after XLA ran a step that compiled, the first for its input shapes,
    while JAX's own Python returns it: the step's outputs are lost there, and the model keeps what Keras wrote; and
    an error raised inside a step after its state was donated, such as one from a ``jax.pure_callback`` of the
    forward: the state it was given is deleted, with nothing to write back.)

    On every host, a call that an error ends puts back the host framework's thread modes as the call found them
    (``HOST.thread_modes``): Keras-on-torch's trainer runs its optimizer, evaluation and prediction under
    ``torch.no_grad()``, whose ``__enter__`` switches the grad mode off before its ``with`` is in force, and whose
    ``__exit__`` switches it back in Python, so that a Ctrl-C landing there left gradients off for good, and the
    next train step or ``fit`` failed ("element 0 of tensors does not require grad")."""

    __slots__ = ("_native", "_token", "_kept", "_checks", "_modes")

    def __init__(self, native):
        self._native = native

    def __enter__(self):
        native = self._native
        self._modes = HOST.thread_modes()
        if HOST.keras_state_in_place:
            self._kept = None
            return self
        self._kept, self._checks = [], []
        self._token = _KEPT_STATE.set((native, self._kept, self._checks))
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is not None:
            HOST.set_thread_modes(self._modes)
        if self._kept is None:
            return False
        _KEPT_STATE.reset(self._token)
        if error_type is not None and self._kept and _some_variable_emptied(self._native, len(self._kept[0][1])):
            _write_state_back(self._native, self._kept[0][1])
        if error_type is None:  # the last steps' value checks, once Keras has written back
            _raise_failed_checks(self._checks, waited=len(self._checks))
        return False


def checks_read(native) -> None:
    """Raise unidl's error for a failed value check of the steps the ``KeptStepState`` call of ``native`` running
    in this thread has made (``BatchRelay``: after each of ``ud.fit``'s batches, where Keras's state is read anyway,
    so that a label out of range is that error rather than the non-finite guard's a step later)."""
    call = _KEPT_STATE.get()
    if call is not None and call[0] is native:
        _raise_failed_checks(call[2], waited=len(call[2]))


#: how many steps of a ``KeptStepState`` call may run before the value checks of the first are read, waiting
_CHECKS_PENDING = 3


def _raise_failed_checks(checks: list, waited: int) -> None:
    """Raise unidl's error for the value checks (an index or a label out of range) that the steps of a
    ``KeptStepState`` call reported, kept in ``checks`` as ``(raise_failed, failed)`` (``_value_checked``), oldest
    first: the first ``waited`` once their steps have run, then those whose step has run. They are read after
    their step, at a later step or as the call ends, so that reading them does not make Keras's Python wait for the
    device after every step (150 µs a ``train_on_batch`` of a small MLP; ``fit`` dispatches steps ahead). The step that
    failed gave back the state it was given; in Keras's own loops (``ud.fit`` reads them after each batch:
    ``checks_read``) up to ``_CHECKS_PENDING`` steps after it may have run (the jax backend's steps stop at it)."""
    while checks and (waited > 0 or checks[0][1][0].is_ready()):
        raise_failed, failed = checks.pop(0)
        raise_failed(failed)
        waited -= 1


@contextlib.contextmanager
def swallowed_ctrl_c_raised():
    """Run the block (a call of Keras's ``train_on_batch``) with each ``KeyboardInterrupt`` that the SIGINT handler
    raises (Ctrl-C) noted, and raise one again as the block ends where code inside swallowed it: Keras converts its
    logs under a bare ``except`` (``keras.src.utils.python_utils.pythonify_logs``), where a Ctrl-C that lands is
    lost, and a user's loop of train steps went on (``ud.fit`` does the same for Keras's ``fit``). A handler that
    does not raise (a user's own) is left to its business; outside the main thread, where no handler can be
    swapped, the block runs as it is (``unidl.data.pool.ctrl_c_noted``)."""
    raised = []
    with ctrl_c_noted(raised):
        yield
    if raised:
        raise KeyboardInterrupt


def keep_state_of_the_epoch(native) -> None:
    """At an epoch's start inside a ``KeptStepState`` call of Keras's ``fit`` (``BatchRelay``): its state now, as
    its first step will take it, so that a Ctrl-C before that step returns (while it compiles) leaves the model
    with it: Keras's ``fit`` takes it out of the variables, and its cleanup has only the last step's to write."""
    kept = _KEPT_STATE.get()
    if kept is not None and kept[0] is native:
        kept[1][:] = [(None, native._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                                   optimizer_variables=True, metrics_variables=True))]


def _some_variable_emptied(native, groups: int) -> bool:
    """Whether a variable of ``native`` in the ``groups`` state groups a step of Keras-on-JAX's trainer threads
    (``_STATE_GROUPS``) has no live value: emptied (``fit`` during an epoch) or holding an array a step took. Only
    then does ``KeptStepState`` write its kept state back: where Keras put live values back itself, they are the
    newest (a callback may have changed them after the last step), and the kept state would overwrite them."""
    for name in _STATE_GROUPS.get(groups, ()):
        if name == "optimizer_variables":
            variables = getattr(getattr(native, "optimizer", None), "variables", None) or []
        else:
            variables = getattr(native, name, None) or []
        for variable in variables:
            value = getattr(variable, "_value", None)
            if value is None or getattr(value, "is_deleted", lambda: False)():
                return True
    return False


#: the notes of ``_writes_before_the_error_noted`` for the step running (``_make_function``'s ``iterator_step``),
#: ``(error, model, values)``: kept with the step (set in the context the step runs in, which ends with it), not on
#: the error, which a forward may raise again (one instance kept and raised at each failure) and a caller may keep
#: (with the model's arrays)
_WRITES_BEFORE_THE_ERROR: contextvars.ContextVar[list | None] = contextvars.ContextVar("unidl_writes_before_the_error",
                                                                                       default=None)


#: a value no context variable holds (``_context_of_the_step_kept``)
_UNSET = object()


def _context_of_the_step_kept(context) -> None:
    """The context variables that a step run in ``context`` (a copy of this thread's: ``_make_function``'s
    ``iterator_step``) set, the user's forward's among them, set in this thread's context too, as a step that runs
    in the caller's context (torch's, the jax backend's) leaves them; not the step's own settings
    (``_WRITES_BEFORE_THE_ERROR``, ``_PREDICT_STEP_TRACED``), which end with it."""
    for variable, value in context.items():
        if (variable is not _WRITES_BEFORE_THE_ERROR and variable is not _PREDICT_STEP_TRACED
                and variable.get(_UNSET) is not value):
            variable.set(value)


def _writes_before_the_error_noted(native, error) -> None:
    """Notes for ``error``, raised inside a step of ``native`` that Keras-on-JAX's trainer runs eagerly (``eager=True``:
    its ``jax.value_and_grad`` traces the forward on values), the values of the non-trainable variables as the
    forward left them before it (a BatchNorm's statistics and ``num_batches_tracked``, written before the loss's
    label check raised), read in Keras's ``StatelessScope`` that holds them, as concrete arrays: the error discards
    the transformation's state, where torch's eager step keeps what its forward wrote in place
    (``_write_state_back_with_the_writes_before`` writes them). Nothing where Keras writes its variables in place
    (TensorFlow, torch), where a write is abstract (a step being traced by ``jax.jit``: its checks, staged, select
    the writes), outside a ``StatelessScope`` (not a step of Keras's trainer: a forward called by itself, whose
    variables ``fit`` may have emptied), outside a step that writes them back (``_WRITES_BEFORE_THE_ERROR``), or
    where an inner call noted them already for this error."""
    noted = _WRITES_BEFORE_THE_ERROR.get()
    if HOST.keras_state_in_place or noted is None or not in_stateless_scope() or any(
            earlier is error for earlier, _, _ in noted):
        return
    values = HOST.concrete_values([variable.value for variable in native.non_trainable_variables])
    if values is not None:
        noted.append((error, native, values))


def _write_state_back_with_the_writes_before(native, state, error, noted: list) -> None:
    """``state`` (the one the step that raised ``error`` was given), its non-trainable variables as the step's
    forward left them before the error (``_writes_before_the_error_noted``, in the step's ``noted``), written into
    ``native``'s variables, as torch's eager step leaves them; nothing where the step noted none for this error."""
    values = next((values for earlier, model, values in noted if earlier is error and model is native), None)
    if values is None:
        return
    groups = _STATE_GROUPS[len(state)]
    _write_state_back(native, tuple(list(values) if name == "non_trainable_variables" else group
                                    for name, group in zip(groups, state)))


def _write_state_back(native, state) -> None:
    """``state`` (a step's, as Keras-on-JAX's trainer threads it) into the variables of ``native``, unless a step
    it was given has taken its buffers (an interrupted step whose outputs were lost: not covered)."""
    values = [value for group in state for value in group]
    if any(value is None or getattr(value, "is_deleted", lambda: False)() for value in values):
        return
    native._jax_state = dict(zip(_STATE_GROUPS[len(state)], state))
    native._jax_state_synced = False
    native.jax_state_sync()  # (Keras's own write-back, as its trainer's)
    native._jax_state = None


def metric_tracker_variables(native) -> list:
    """The running sums of a compiled ``native`` model in an epoch: the variables of Keras's loss tracker (its
    ``Mean``: total and count, the first of the model's metrics), then the totals of ud.fit's metric
    statistics (``NativeMetrics``, kept at compile: Keras builds its own wrapper of them only at the first
    batch). Where Keras's trainer holds them outside the variables during an epoch (Keras-on-JAX's ``fit``
    keeps its state in ``_jax_state`` and empties the variables), they are handed back first (``jax_state_sync``,
    as Keras's own callbacks do), so that the variables hold the live totals."""
    sync = getattr(native, "jax_state_sync", None)
    if sync is not None:
        sync()
    statistics = getattr(native, "_unidl_statistics", None)
    return list(native.metrics[0].variables) + (list(statistics.totals) if statistics is not None else [])


def restore_metric_totals(native, totals) -> None:
    """Set Keras's loss and metric trackers of ``native`` (just reset) to ``totals`` (``Backend.epoch_totals`` at
    a checkpoint), so that a resumed epoch sums on from where the interrupted one stopped, in the same float32
    order; nothing to do without totals."""
    if totals is None:
        return
    variables = metric_tracker_variables(native)
    shapes = [tuple(variable.shape) for variable in variables]
    values = [np.asarray(value, dtype=np.float64) for value in totals] if isinstance(totals, list) else None
    if values is None or [value.shape for value in values] != shapes:
        from unidl.errors import CheckpointStateError

        raise CheckpointStateError(f"the checkpoint's running totals of the epoch in progress do not fit this "
                                   f"run's Keras loss and metric trackers (shapes {shapes}); were the metrics "
                                   f"changed? Resume with the metrics of the interrupted run")
    for variable, value in zip(variables, values):
        variable.assign(value.astype(variable.dtype))


class BatchRelay(keras.callbacks.Callback):
    """Passes Keras's running epoch logs to ``ud.fit`` after every batch (progress, NaN checks, callbacks), with
    the model's, optimizer's and trackers' variables holding their values after that batch;
    ``delivered()``, when given, is told of each batch Keras consumed (the loader's resume position);
    ``totals``: Keras's trackers resume from them (``restore_metric_totals``) once ``fit`` has reset them;
    ``before_batch(index)``, when given, runs before each batch (``ud.fit``'s check of what a callback changed)."""

    def __init__(self, on_batch, logs_of, delivered=None, totals=None, before_batch=None):
        super().__init__()
        self._on_batch, self._logs_of, self._delivered = on_batch, logs_of, delivered
        self._totals = totals
        self.logs = None
        self._before_batch = before_batch

    def on_train_batch_begin(self, batch, logs=None):
        if self._before_batch is not None:
            self._before_batch(batch)

    def on_epoch_begin(self, epoch, logs=None):
        restore_metric_totals(self.model, self._totals)
        keep_state_of_the_epoch(self.model)

    def on_train_batch_end(self, batch, logs=None):
        # ``self.model`` hands the state back to the variables where Keras's trainer holds it outside them
        # during an epoch (Keras-on-JAX's ``jax_state_sync``; a no-op elsewhere): ud.fit's callbacks (a
        # checkpoint, the optimizer's ``last_step_finite``) read the weights, slots and trackers after this batch
        model = self.model  # (the property's sync is the point)
        checks_read(model)  # (a label out of range in this batch: its error, not the guard's NaN loss after it)
        if self._delivered is not None:
            self._delivered()
        self.logs = self._logs_of(logs or {})  # Keras's logs as ud.fit's: the loss and each metric's value
        self._on_batch(batch, dict(self.logs))
        keep_train_function_current(model)  # a callback changed an optimizer option for the first time


class NativeLoss(keras.losses.Loss):
    """A unidl loss module as a ``keras.losses.Loss`` (already reduced, so Keras's reduction is a no-op)."""

    def __init__(self, loss_fn):
        super().__init__(name=type(loss_fn).__name__.lower(), reduction="sum")
        self._unidl_loss = loss_fn

    def __call__(self, y_true, y_pred, sample_weight=None):
        # in a tf.distribute replica context Keras's losses scale themselves by 1 / replicas (the trainer's
        # trackers scale back, its optimizer sums the gradients): so does this one; elsewhere a no-op
        return scale_loss_for_distribution(self._unidl_loss(y_pred, y_true))

    def call(self, y_true, y_pred):
        with HOST.differentiated():
            return self._unidl_loss(y_pred, y_true)
