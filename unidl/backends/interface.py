"""The whole contract between unidl's front end and a backend.

The front end (``unidl.nn``, ``unidl.optim``, training, data) speaks to a
framework only through a ``Backend`` object and its ``ops`` namespace. Every
method below is abstract: a backend that lacks one fails when it is loaded,
naming itself and the missing method. Tensors cross this boundary as the
framework's own objects; only parameters' values travel as NumPy arrays, in
the canonical layout (NCHW activations, OIHW kernels, ``(out, in)`` linear weights).
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Callable

import numpy as np

from unidl.backends import op_registry
from unidl.errors import BackendInterfaceError
from unidl.io.safetensors import StoredTensor

#: Functional ops every backend's ``ops`` namespace provides: derived from the declarations in
#: ``unidl/ops.py`` (see ``unidl.backends.op_registry``), where each op's signature and docs live.
OPS = op_registry.required_ops()

class Backend(abc.ABC):
    """One framework as unidl sees it. Subclasses live in ``unidl/backends/<name>/backend.py``."""

    #: canonical name, as in ``unidl.get_backend()``
    name: str = ""
    #: namespace (module) with every function listed in ``OPS``
    ops: Any = None
    #: the activation layout the framework's convolution and pooling kernels run natively ("NCHW" or "NHWC")
    native_layout: str = "NCHW"
    #: True where Keras's own ``Model.train_step`` on this framework is a function of ``(x, y)`` that updates
    #: variables in place and this backend's ``keras_train_step_function`` compiles into one graph (the keras
    #: backend then runs it so, without ``train_on_batch``'s per-call Python); Keras's stateless JAX step is not
    compiles_keras_train_step: bool = False
    #: True where Keras's variables on this framework change in place, so that this backend's gradients and
    #: ``function`` act on them directly (TensorFlow, torch); False where Keras keeps its state functional
    #: (JAX): the keras backend then passes the variables' values in through a ``keras.StatelessScope``
    #: (``keras/stateless.py``), which needs ``value_and_grad_of_values``, ``jit_of_values``, ``eval_shape``
    #: and ``tracer_value_errors`` of this backend, and trains through Keras's own ``train_on_batch`` / ``fit``,
    #: whose jitted steps it checks with this backend's ``value_checked`` (see the jax backend's; what
    #: ``jit_of_values`` compiles has ``call_unchecked`` too)
    keras_state_in_place: bool = True
    #: names of this backend's ops that take Keras's tensors and variables as they are, so that the keras
    #: backend uses them as its own ops when Keras runs on this framework (faster than ``keras.ops``)
    keras_native_ops: tuple[str, ...] = ()
    #: True where Keras's own ``keras.export.ExportArchive`` writes a SavedModel of a Keras model on this framework
    #: (TensorFlow, JAX), so that the keras backend exports ``'saved_model'`` there
    keras_writes_saved_model: bool = False
    #: True where this backend's ``export`` takes a Keras model's ``NativeModule`` as one of the framework's own
    #: modules (on torch a Keras layer is a ``torch.nn.Module``), so that the keras backend offers this backend's
    #: ``export_formats`` too, written by it
    exports_keras_models: bool = False
    #: True where this backend's ``silu`` and ``softplus`` of float16 and bfloat16 input compute in float32 and
    #: round once (torch's kernels), so that ``ud.ops`` hands them half input as it is; elsewhere (each step rounded
    #: to the half dtype) ``ud.ops`` computes them in float32 and rounds the result once
    rounds_half_activations_once: bool = False
    #: True where ``train_step`` and ``mixed_precision_train_step`` take ``with_outputs`` as a function
    #: ``summary(outputs, y) -> tuple of tensors`` too, computed inside the compiled step and returned in place of
    #: the outputs: ``fit``'s training metrics (``MetricAccumulator.statistics``) where each function a backend
    #: compiles is one program per batch shape (JAX), so that they are no program of their own beside the step, or
    #: where each graph call costs a dispatch of its own (TensorFlow: one graph call a batch, not two); elsewhere
    #: ``fit`` computes them after the step from its outputs (torch's eager step: the same ops either way)
    summary_in_step: bool = False
    #: True where ``fit`` may keep the step that ``train_step``/``mixed_precision_train_step`` built (in the model's
    #: ``structure_cache``) and call it again in a later ``fit`` of the same model, loss, optimizer, metrics and
    #: options, as a user calls one ``ud.train_step`` in several loops: where building it again means compiling it
    #: again (JAX: an XLA program per batch shape, 0.1-1 s each); the step must key its traces on what changes
    #: between fits (train/eval modes, the frozen set, input shapes and dtypes, options its traces hold)
    reuses_train_steps: bool = False

    def __new__(cls, *args, **kwargs):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise BackendInterfaceError(
                f"backend {cls.name or cls.__name__!r} does not implement: {', '.join(missing)}")
        return super().__new__(cls)

    def check_ops(self) -> None:
        """Fail loudly if the ops namespace lacks a function of ``OPS`` or implements a declared op
        (required or optional) with fewer parameters than its declaration passes."""
        op_registry.check_backend_ops(self.name, self.ops)

    def prepare_graphs(self) -> None:
        """Called before the first graph of this framework that unidl makes (its own, or Keras's on this host):
        the framework's process-wide graph settings that unidl's results need (TensorFlow: its fused ReLU kernels'
        NaN). Nothing by default."""

    # ---- framework and devices -------------------------------------------
    def forward_caller(self, module_class) -> Callable | None:
        """How ``Module.__call__`` runs ``forward`` of instances of ``module_class``: None (the default:
        ``module.forward(*args, **kwargs)`` directly), or ``call(module, args, kwargs)``, e.g. to
        convert a user's own forward for a graph (AutoGraph) while unidl's layers run as they are.
        Asked once per class."""
        return None

    def distributed_engine(self):
        """The framework's own data-parallel engine (``unidl/backends/<name>/distributed.py``), an object with
        ``start(rank, world_size, address, port, timeout)``, ``barrier()``, ``all_reduce(tensor, op)`` (a new
        tensor; op 'sum', 'mean', 'max' or 'min') and ``stop()``, whose ``train_step`` then averages gradients
        over the ranks; None (the default) where unidl has none for this framework, which
        ``unidl.distributed.init`` reports as an error."""
        return None

    def thread_modes(self) -> Any:
        """The framework's modes of the calling thread that its own code (and Keras's on it) switches for a block
        and back, for ``set_thread_modes``: torch's grad mode, which ``torch.no_grad()`` switches off before the
        ``with`` that switches it back is in force, so that a Ctrl-C landing between the two leaves it off (the
        keras backend puts back what its calls into Keras's trainer found). None where there are none."""
        return None

    def set_thread_modes(self, modes: Any) -> None:
        """Put back the calling thread's ``modes`` as ``thread_modes`` gave them."""

    def set_num_threads(self, intra_op: int, inter_op: int) -> None:
        """Size the framework's intra-op and inter-op thread pools (``unidl.set_num_threads``); the default,
        for a framework unidl cannot size, does nothing."""

    @abc.abstractmethod
    def set_float32_precision(self, mode: str) -> None:
        """Compute float32 matrix products and convolutions in ``mode`` (``unidl.set_float32_precision``):
        ``"highest"``, float32; ``"high"``, TensorFloat-32 where the GPU has it. Through the framework's own
        process-wide switch."""

    def gpu_support(self) -> dict:
        """What the installed framework build can do with a GPU (``unidl info``): ``{"build": "CUDA 12.6"`` (or
        ``"ROCm ..."``, or None for a CPU-only build), ``"gpus": [the GPUs it sees now]``, ``"how"``: the
        framework calls asked}``. The default, for a framework unidl cannot ask, says it does not know."""
        return {"build": None, "gpus": [], "how": "unknown: this backend does not report it"}

    def pins_memory(self, device: str) -> bool:
        """True where ``tensor()`` copies host batches to ``device`` through pinned (page-locked) memory, so
        that a loader's ``pin_memory=True`` is honoured; the default says no."""
        return False

    def differentiated(self):
        """A context manager marking its block as a computation a framework's trainer differentiates (Keras's own
        train step on this framework), for a backend whose gradients inside one must be made differentiable
        (torch: ``create_graph``); nothing to do by default (JAX and TensorFlow differentiate through them)."""
        return contextlib.nullcontext()

    def is_concrete(self, tensor) -> bool:
        """True when ``tensor``'s values can be read now; False for a symbolic tensor of a graph being
        traced (so value checks must run inside the graph, or not at all)."""
        return True

    def is_symbolic_size(self, size) -> bool:
        """True for a size a tracing exporter leaves symbolic (``torch.export``'s ``SymInt``, a shape-polymorphic
        JAX export's dimension): passed through as it is where a size is taken
        (``ud.ops.zeros((ud.ops.shape(x)[0], n))``), never compared or hashed by a check. None by default
        (TensorFlow's graphs give unknown sizes as tensors)."""
        return False

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        """Framework name -> version string for everything this backend runs on."""

    @abc.abstractmethod
    def devices(self) -> list[str]:
        """Devices this framework sees, canonical names: 'cpu' then 'cuda:0', 'cuda:1', ..."""

    @abc.abstractmethod
    def device_scope(self, device: str):
        """Context manager placing new tensors and computation on ``device`` ('cpu' or 'cuda:N')."""

    @abc.abstractmethod
    def device_of(self, tensor) -> str:
        """The canonical device ('cpu', 'cuda:N') holding a native tensor or variable."""

    @abc.abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the framework's own random generators (dropout masks)."""

    @abc.abstractmethod
    def get_rng_state(self) -> dict:
        """The state of the generators ``seed`` seeds, as JSON-serialisable lists (for checkpoints)."""

    @abc.abstractmethod
    def set_rng_state(self, state: dict) -> None:
        """Restore a ``get_rng_state()``, in place (compiled graphs keep their captured generators)."""

    @abc.abstractmethod
    def generator(self):
        """The random state that stochastic ops take explicitly (``ops.dropout``'s ``generator``): the
        framework's own generator object (``torch.Generator``, ``tf.random.Generator``, Keras's
        ``SeedGenerator``), held by the backend (never by its ``ops`` module) and seeded by ``seed``.
        A functional backend returns the key its compiled step threads through its state."""

    # ---- tensors ---------------------------------------------------------
    @abc.abstractmethod
    def tensor(self, value, dtype: str | None = None):
        """NumPy array (or native tensor) -> native tensor on the current device.

        Floating values take ``dtype`` or unidl's current dtype; integers stay integers (int64). The
        tensor never shares memory with a NumPy array passed in (later changes to it do not show).
        """

    def adopt(self, array):
        """``tensor(array)`` for a NumPy array nobody else holds (a batch just cut by the loader): a
        backend may reuse its memory instead of copying it defensively."""
        return self.tensor(array)

    @abc.abstractmethod
    def to_numpy(self, tensor) -> np.ndarray:
        """Native tensor (or variable) -> NumPy array, copied to host memory."""

    @abc.abstractmethod
    def is_tensor(self, value) -> bool:
        """True for this framework's tensors and variables."""

    def framework_autocast(self) -> bool:
        """Whether the framework's own autocast is in force (``torch.autocast``: torch's mixed-precision train
        step, or a user's own), under which a layer takes input of another float dtype than its parameters;
        the backends whose mixed precision casts through ``unidl.precision.AutocastOps`` have none."""
        return False

    def function_argument(self, value):
        """An array argument of ``ud.function`` (NumPy's, another framework's) as this backend's compiled functions
        take it: ``tensor(value)``, or a cheaper conversion where the compiled function places its inputs itself
        (TensorFlow's graph inputs). Called once per array argument per call."""
        return self.tensor(value)

    # ---- parameters and buffers ------------------------------------------
    @abc.abstractmethod
    def parameter(self, value: np.ndarray, trainable: bool = True, dtype: str | None = None):
        """A new native variable holding ``value`` (trainable: a parameter; else: a buffer), of unidl's
        float dtype, or of ``dtype`` (a NumPy dtype name: 'int64' for a counter such as BatchNorm's
        ``num_batches_tracked``) where given."""

    @abc.abstractmethod
    def is_parameter(self, value) -> bool:
        """True if ``value`` is a trainable variable of this framework."""

    def set_requires_grad(self, parameter, requires_grad: bool) -> None:
        """Freeze or unfreeze ``parameter`` (``Module.requires_grad_``). The default sets the attribute
        ``requires_grad`` that ``unidl.nn.module.is_trainable`` reads; a framework with a flag of its own
        sets that too (torch's ``requires_grad``, Keras's ``trainable``)."""
        parameter.requires_grad = requires_grad

    @abc.abstractmethod
    def assign(self, variable, value: np.ndarray) -> None:
        """Overwrite a variable's value in place (shapes already checked by the caller)."""

    def donated_tensor(self, array: np.ndarray):
        """``array``, handed over for ``assign`` by a caller that never touches it again (``ud.load``'s
        file reader), as what this framework's ``assign`` takes without copying it first: the variable
        may keep ``array``'s memory as its own, so that loading a file costs about its own size. The
        default is ``array`` itself; a framework that copies NumPy input on conversion (TensorFlow,
        twice) returns a tensor sharing ``array``'s memory where it can."""
        return array

    @abc.abstractmethod
    def write_state(self, variable, value):
        """The state transition of a forward pass: store ``value`` (a native tensor the step computed,
        possibly inside a graph being traced, e.g. batch norm's new running statistics returned by the
        pure ``ops.batch_norm``) as the new value of the buffer ``variable``. Return what now holds
        the buffer: ``variable`` itself where the framework updates in place (torch, TensorFlow,
        Keras); a functional backend returns ``value``, the module keeps it, and the compiled step
        collects it as state out."""

    # ---- modules and training ---------------------------------------------
    @abc.abstractmethod
    def native_module(self, module) -> Any:
        """The framework's own model object wrapping ``module`` (same variables, same forward)."""

    @abc.abstractmethod
    def optimizer(self, optimizer) -> Any:
        """Build the native optimizer state for a ``unidl.optim.Optimizer`` (called once)."""

    @abc.abstractmethod
    def set_learning_rate(self, optimizer, lr: float, group: int = 0) -> None:
        """Change the learning rate of param group ``group`` of an optimizer without rebuilding or retracing
        anything (``optimizer.param_groups``; parameter ``i`` is in group ``optimizer.group_of(i)``)."""

    @abc.abstractmethod
    def set_group_options(self, optimizer, group: int, keys) -> None:
        """Make the next step use the current values of hyperparameters ``keys`` of param group ``group``
        (``optimizer.param_groups[group]``: momentum, betas, ... as ``Optimizer.set_group_option`` left them), by
        writing their variables: a compiled step reads the options bound to them (``bound_rule``) without
        retracing (it retraces once when an option is first bound: ``param_groups.ConstantOptions``)."""

    @abc.abstractmethod
    def optimizer_state(self, optimizer) -> tuple:
        """``(step, slots, param_steps)``: the count of updates applied, one {slot name: NumPy array} per
        parameter (params order) and, where the rule reads a step (``optimizer.uses_step``), each parameter's own
        count of updates (the steps it had a gradient in), else None."""

    @abc.abstractmethod
    def load_optimizer_state(self, optimizer, step: int, slots: list, param_steps) -> None:
        """Overwrite the step count, slots and per-parameter step counts (``param_steps``: a list where
        ``optimizer.uses_step``, else None), all already checked by the caller. A slot is an array, or a checkpoint's
        ``unidl.io.safetensors.StoredTensor``, whose first ``np.asarray`` gives away the array ``load_checkpoint``
        staged: convert each slot once, in turn (``given_slot``), so that each staged array is adopted or freed as it
        is written."""

    def given_slot(self, value, dtype=None) -> np.ndarray | None:
        """The array of a slot given to ``load_optimizer_state`` where the slot is the caller's to give away, else
        None: who owns its memory decides whether the backend copies it. A checkpoint's ``StoredTensor`` gives its
        staged array (or one read anew) by ``np.asarray``, a new array nobody else holds: it (in ``dtype`` where
        given) may become the slot's memory, or be written into the slot's variable, without a defensive copy. Any
        other value (None) is the user's (``optimizer.load_state_dict(state)``), who may keep using and changing it:
        the backend copies it."""
        return np.asarray(value, dtype=dtype) if isinstance(value, StoredTensor) else None

    @abc.abstractmethod
    def apply_gradients(self, optimizer, grads) -> None:
        """One update of ``optimizer.params`` with ``grads`` (same order), by the optimizer's rule: the
        gradients clipped first (``optimizer.clip_gradients``), and the whole update skipped (parameters,
        slots, step count unchanged) when a gradient is NaN or infinite, which ``last_step_finite`` then
        reports. ``train_step`` applies the same guard to its loss and gradients, inside its graph."""

    @abc.abstractmethod
    def last_step_finite(self, optimizer) -> bool:
        """False when the optimizer's last update (``apply_gradients``, ``step``, a ``train_step``) was skipped
        because its loss or a gradient was not finite; True before the first update."""

    def clear_gradients(self, params, set_to_none: bool = True) -> None:
        """Clear the gradients stored on ``params`` by a backward pass (``Module.zero_grad``); the default: a
        no-op, for frameworks that store none."""

    def zero_grad(self, optimizer, set_to_none: bool = True) -> None:
        """Clear gradients stored on parameters (the default: a no-op, for frameworks that store none)."""

    def step(self, optimizer, closure=None):
        """Apply gradients stored on parameters by a backward pass, after calling ``closure`` (if given: it
        computes the loss and the gradients; its loss is returned); the default, for frameworks that return
        gradients instead of storing them, explains the alternative (before any closure runs)."""
        raise RuntimeError(
            f"optimizer.step() applies gradients stored on the parameters by backward(), which the {self.name} "
            f"backend does not keep (only the torch backend has them); on {self.name} use grads = ud.grad(...) "
            f"and optimizer.apply(grads), or ud.train_step")

    @abc.abstractmethod
    def train_step(self, model, loss_fn, optimizer, with_outputs: bool | Callable = False, eager: bool = False,
                   accumulate: int = 1) -> Callable:
        """Return ``step(x, y, *inputs) -> loss`` (or ``(loss, outputs)`` with ``with_outputs``; ``(loss,
        with_outputs(outputs, y))`` for a function where ``summary_in_step`` says the backend computes one): forward
        ``model(x, *inputs)``, gradients and update as one unit of dispatch. Extra ``inputs`` (per-step
        values a dynamic forward reads) are graph inputs where the step is a graph. ``eager``: no graph
        and no compilation; Python runs the forward at every step (Keras's ``run_eagerly``).
        The update is guarded (skipped when the loss or a gradient is not finite, see ``apply_gradients``).
        ``accumulate`` N > 1: each call is a micro-step adding ``grads / N`` to accumulated gradients kept
        in the optimizer's state; every N-th call clips them and updates, unless a call of the window had a
        non-finite loss or gradient: then the N-th skips the update and empties the window (``train_step``'s
        rule). The window is the optimizer's one, shared by all its steps with this ``accumulate``: the step gets
        it from ``unidl.training.accumulation_window`` (the backend says only how to create its storage; its
        ``AccumulationWindow`` is checkpointed optimizer state); the optimizer's step count counts updates."""

    def mixed_precision_train_step(self, model, loss_fn, optimizer, precision, with_outputs: bool | Callable = False,
                                   eager: bool = False, accumulate: int = 1) -> Callable:
        """``train_step`` under a mixed ``unidl.precision.Precision`` (``precision.mixed``): float32 master
        weights, the forward's matrix products in ``precision.compute_dtype`` by torch.autocast's rule, and
        for ``precision.scales_loss`` dynamic loss scaling that skips a step whose gradients are not finite.
        ``accumulate`` N > 1, as ``torch.amp.GradScaler`` with accumulation: the N micro-steps' (scaled)
        gradients of ``loss / N`` are summed, and the N-th call makes the one non-finite check of the window
        (its loss values and the summed gradients; an overflow skips the whole update and empties the window),
        clips, updates and moves the loss scale once; its window is the optimizer's one for this ``accumulate`` and
        precision, from ``unidl.training.accumulation_window`` (checkpointed with its sums divided by the scale in
        force). The loss scale is the optimizer's, one for all its float16 steps:
        the step gets it from ``unidl.training.loss_scale_storage`` (the backend says only how to create it; its
        ``checkpointed()`` is the ``LossScaler`` of the optimizer's checkpointed state). The step also has ``loss_scale() ->
        float`` (1.0 without scaling). Each backend implements it in its ``precision.py``; the default refuses, naming the backend."""
        raise NotImplementedError(f"precision={precision.name!r} is not available on the {self.name} backend; "
                                  f"use precision='32'")

    @abc.abstractmethod
    def predict_function(self, model) -> Callable:
        """Return ``forward(x) -> outputs`` without gradients (compiled where the backend compiles)."""

    def evaluation_function(self, model, evaluate: Callable, name: str, loss_fn=None) -> Callable | None:
        """``evaluate(x, y, *weights) -> (loss or None, statistics)`` (``ud.evaluate``'s and ``fit``'s validation
        of one batch: ``model``'s eval-mode forward, the loss, the metrics' statistics, all ``ud.ops``) compiled as
        one program per input shapes over the state of ``model`` (and of ``loss_fn``: a class ``weight`` buffer),
        for a backend whose eager ops each compile a program per shape (JAX): there a forward compiled alone, then
        the loss and the metrics apart, was a dozen programs per batch size. Called with arrays or the backend's
        tensors; returns the backend's tensors. A forward that needs a tensor's value in Python runs ``evaluate``
        eagerly from then on, with ``ud.function``'s one warning. None (the default) where ``ud.evaluate`` runs
        ``predict_function``'s forward, then the loss and the metrics apart (eager ops that compile nothing, or a
        graph per rank)."""
        return None

    def fit_epoch(self, model, loss_fn, optimizer, batches, steps, on_batch, metrics, eager: bool = False,
                  precision=None, accumulate: int = 1, totals=None, step_inputs=None, before_batch=None):
        """Run one epoch with the framework's own trainer and return the epoch logs, or None to let
        ``ud.fit`` drive ``train_step`` itself (the default). ``on_batch(index, running_logs)``
        must be called after every step; ``eager``: Python runs every step (no compiled step).
        ``precision``: the ``unidl.precision.Precision`` of the run (see ``mixed_precision_train_step``).
        ``metrics``: a ``unidl.metrics.MetricAccumulator`` (or None) whose ``statistics(outputs, y)`` the
        trainer sums from the epoch's start and reports through ``results_from`` in the logs.
        ``accumulate``: micro-steps per optimizer update (see ``train_step``).
        ``totals``: the running totals of a checkpoint during this epoch, ``[loss sum, samples, *each metric's
        statistics]`` (what ``epoch_totals`` returned, or the same layout from unidl's own loop or another
        backend's trainer): a resumed epoch continues the trainer's running sums from them instead of zero,
        so that its logs are bit-identical to an uninterrupted epoch's (exact to the trainer's float
        rounding for another loop's).
        ``step_inputs``: None, or ``step_inputs(index) -> tuple``, the extra forward inputs of the ``index``-th
        batch of ``batches`` (``ud.fit``'s ``step_inputs``): the step runs ``model(x, *inputs)`` with them as
        graph inputs, as ``train_step``'s ``step(x, y, *inputs)`` does; asked for once per batch, in order.
        ``before_batch``: None, or ``before_batch(index)``, to be called before the ``index``-th step (it raises
        ``NothingToTrainError`` naming the epoch and step where a callback froze every parameter)."""
        return None

    def epoch_totals(self, model) -> list | None:
        """The running sums of the framework's own trainer in the epoch in progress (``fit_epoch``: Keras's
        loss and metric trackers), as JSON-ready nested lists of floats, for a checkpoint; None where
        ``ud.fit`` keeps them itself (the default)."""
        return None

    def epoch_totals_shapes(self, metrics) -> list | None:
        """The shape of each array ``epoch_totals`` returns for an epoch of ``fit_epoch`` with ``metrics`` (a
        ``MetricAccumulator`` or None): what a checkpoint's totals must have for a resumed epoch to go on from
        them, checked before a resume changes anything; None where ``ud.fit`` keeps them itself (the default)."""
        return None

    def inputs_used(self, f, values) -> list[bool] | None:
        """For each of ``values``, whether the scalar ``f(values)`` depends on it (PyTorch's rule for which get a
        gradient), where the backend's gradients are zeros for the others and it can tell; None (the default)
        where it cannot or need not (its gradients are None already)."""
        return None

    def after(self, values):
        """A context manager: the state written inside it, in a graph being traced, is written only once ``values``
        (a step's loss and gradients) have been computed, so that a value check that fails while computing them
        (a label out of range, staged in the forward) stops those writes too, as an eager framework's error stops
        its step before them. Nothing to do (the default) where a step's ops run in program order (eager
        frameworks, JAX's functional steps, which select their writes by the checks: ``jax/ops.py``)."""
        return contextlib.nullcontext()

    def unless_a_check_failed(self, variables):
        """A context manager: the writes to ``variables`` (an optimizer's parameters and state, a module's buffers,
        ``assign``'s variable) inside it stand only where every value check of the graph being traced made before
        them passed, for a graph that runs whole before its checks are read (XLA's: ``jit_compile=True`` on
        TensorFlow, JAX's checkified calls, whose host serves Keras-on-JAX), so that the call that raises a check's
        error leaves them as an eager framework's error, which stops its step there, leaves them (those written
        before the check made). Nothing to do (the default) where the checks stop the writes already (eager
        frameworks, a graph's assertions, which ``after`` orders first)."""
        return contextlib.nullcontext()

    def gradient_conditions(self, params, grads, agree: bool = True) -> list:
        """Per parameter, inside a graph being traced: None where it has no gradient (``grads``) or the graph reads
        it unconditionally, else a boolean scalar, whether the control flow that alone reads it (a loop over a
        graph input, one branch of a conditional) read it in this run (on any rank of a data-parallel job; on this
        rank with ``agree`` False, for a window kept on each rank whose flags are agreed at its end). Where
        it did not, the graph's gradient is zeros but PyTorch's is None, and the optimizers leave the parameter
        and its slots alone as ``torch.optim`` does. All None (the default) where a backend's gradient is None
        already (eager frameworks, JAX's retrace per value)."""
        return [None] * len(params)

    @abc.abstractmethod
    def value_and_grad(self, f, args, argnums, params) -> tuple:
        """``(f(*args), grads)``: gradients of the scalar ``f`` w.r.t. ``args[i]`` for i in ``argnums``
        (zeros where ``f`` does not depend on an argument), then w.r.t. the variables ``params``: None for a
        variable ``f`` does not use, PyTorch's rule, so that ``optimizer.apply`` leaves it (and its momentum)
        alone as ``backward()`` + ``step()`` does. One list, the arguments' first; either of ``argnums`` and
        ``params`` may be None (nothing of that kind), and where both are given one forward and one backward pass
        give them all, as ``torch.autograd.grad(value, inputs + params)``. Raise via
        ``unidl.autograd.check_scalar``/``check_float`` on bad input."""

    @abc.abstractmethod
    def check_shapes(self, model, loss_fn, x, y) -> None:
        """Run model and loss abstractly on the shapes of ``x`` and ``y`` (no compute, no state change),
        so that a shape error names the layer before a compiled graph fails cryptically."""

    @abc.abstractmethod
    def probe_forward(self, forward: Callable, x):
        """``forward`` (an eval-mode forward, its state writes skipped) of a batch ``x`` (a NumPy array), of
        whose outputs the caller reads only the shapes (``unidl.metrics.probe.output_shape``: fit's and evaluate's
        probe of one sample); its errors are those of ``forward`` run on this backend's tensor of ``x``. A backend
        whose eager ops each compile a program per shape may trace it abstractly where that gives the same."""

    # ---- compiled functions and custom gradients ---------------------------
    @abc.abstractmethod
    def function(self, fn: Callable, jit_compile: bool, name: str) -> Callable:
        """``fn`` as this backend runs user code in ``ud.function``: a static graph where the backend
        has one (Python control flow on tensors converted, e.g. by AutoGraph), else eager, and compiled
        by the framework's compiler (XLA, ``torch.compile``) when ``jit_compile``. ``ud.function`` has
        made array arguments (NumPy's, another framework's) this backend's tensors (``function_argument``);
        any other argument (a Python number, bool, None, a string) reaches ``fn`` as itself, baked into a trace
        (one trace per new value) where the backend traces. The result has ``trace_count``: the number of
        traces, or None where nothing is traced. Python code a graph cannot express raises
        ``GraphConstructError`` naming it."""

    def keras_device(self, device: str) -> Any:
        """What ``keras.device`` takes for unidl device ``device`` ('cpu', 'cuda:N') on this host: Keras's name
        ('cpu', 'gpu:N'). A host whose framework lists every process's devices in a data-parallel job gives its
        own device of this process instead (JAX, where Keras's "cpu" is the job's first device: rank 0's)."""
        return "cpu" if device == "cpu" else f"gpu:{device.split(':')[1]}"

    def keras_train_step_function(self, step: Callable, name: str) -> Callable:
        """Keras's ``Model.train_step`` wrapped as ``step(x, y, *inputs)``, compiled as ``function`` compiles,
        on a backend with ``compiles_keras_train_step``; its step inputs (Python numbers too) are graph inputs
        where the backend's train steps take them so (docs/dynamic-forward.md: one graph for every value)."""
        return self.function(step, False, name)

    def composite(self, function: Callable, arrays: tuple[str, ...]) -> Callable:
        """``function``, an op composed over the registry's ops (``unidl.spatial_ops``), as this backend runs it:
        the function itself by default. A backend whose eager ops each dispatch (and compile) on their own can
        run the whole composite as one compiled program when it is called eagerly (JAX: one ``jax.jit``,
        where its dozens of ops cost as many small compilations and dispatches per call). ``arrays`` names the
        parameters that take tensors (or sequences of them, or None), or Python numbers the composite only computes
        with (``unidl.composites.composite``'s ``numbers``), which a compiled version takes as traced values; the
        others are Python options, which a compiled version may take as static. ``function`` reads no state but
        its arguments, and raises its own errors for bad options, which a compiled version must raise the same.
        Called at each call of the composite, eagerly or while traced: a backend keeps what it builds (a dict
        lookup a call)."""
        return function

    def looping_composite(self, function: Callable, arrays: tuple[str, ...]) -> Callable:
        """``composite`` for a composite that loops (a ``scan`` over time: the CTC recursion): the backend's
        ``composite`` by default. A backend whose eager ``scan`` runs its steps op by op in Python compiles the whole
        composite when it is called eagerly (TensorFlow: one ``tf.function``)."""
        return self.composite(function, arrays)

    @abc.abstractmethod
    def custom_gradient(self, forward_fn: Callable) -> Callable:
        """``f(*xs) -> y`` whose gradient is the user's: ``forward_fn(*xs)`` returns ``(y, backward)``
        and ``backward(dy)`` returns the gradient of each input (one tensor, or a tuple with one per
        input). Works eagerly, under ``value_and_grad`` and inside ``function``."""

    def model_graph(self, model, x: np.ndarray) -> bytes | None:
        """``model``'s forward (in its current mode) on inputs shaped as the NumPy batch ``x`` (or a tuple of them:
        the forward's positional inputs, one input node each, 'input', 'input_1', ...), as the bytes of
        a serialized TensorFlow ``GraphDef``, the form TensorBoard's Graphs tab reads
        (``ud.callbacks.TensorBoard(write_graph=True)``); None (the default) where this framework gives none.
        Tracing must leave the model's state as it was."""
        return None

    def model_graph_of_values(self, forward: Callable, state: list, x: np.ndarray) -> bytes | None:
        """``model_graph`` of a forward written over its state's values: ``forward(values, *inputs)``, where
        ``state`` lists each parameter and buffer as (``state_dict()`` name, is a parameter, this framework's
        tensor of its value) and ``values`` come in that order, on inputs shaped as the NumPy batch ``x``. The
        keras backend draws Keras's model so on a framework whose ``model_graph`` does not take Keras's
        variables (their values go in through a ``keras.StatelessScope``); None (the default) where this
        framework gives no such graph."""
        return None

    # ---- export ------------------------------------------------------------
    @abc.abstractmethod
    def export_formats(self) -> tuple[str, ...]:
        """The formats ``export`` writes on this backend (names from ``unidl.export.FORMATS``, gathered from the
        backends' ``SPEC.export_formats``)."""

    @abc.abstractmethod
    def export(self, module, path: str, format: str, input_shape: tuple[int, ...], input_dtype: str | None) -> None:
        """Write ``module``'s forward (already in eval mode) as an inference program at ``path``.

        ``format`` is one of ``export_formats()``; the program takes one input of shape
        ``(batch, *input_shape)`` in the canonical layout with any batch size, of dtype ``input_dtype`` (a NumPy
        name from ``unidl.export.INPUT_DTYPES``; None: the module's float dtype), and returns the module's output
        in the canonical layout; SavedModel and ONNX programs return it as ``unidl.export.flat_outputs`` gives it
        (their outputs hold no nesting). ``path`` does not exist yet: the caller chose it as a temporary name
        and renames it once this returns, and removes it if this raises.
        """
