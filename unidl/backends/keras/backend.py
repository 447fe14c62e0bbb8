"""The Keras 3 backend: variables are ``keras.Variable``s, training runs through Keras's own trainer.

It honours ``KERAS_BACKEND`` (TensorFlow when unset): ops are ``keras.ops`` calls (or the host
backend's own kernels where they take Keras's tensors), and gradients, ``ud.function``,
``ud.custom_gradient`` and devices are delegated to the unidl backend of the framework Keras runs on
(``host.py``), so this folder never branches on Keras's framework.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras.src.backend.common.stateless_scope import in_stateless_scope  # noqa: E402  (not re-exported by Keras)
import numpy as np  # noqa: E402
from keras.src.backend import compute_output_spec  # noqa: E402  (Keras's abstract evaluation, not re-exported)
from keras.src.utils import tracking  # noqa: E402  (Keras's DotNotTrackScope, as its compile sets attributes)
from keras.src.utils import module_utils  # noqa: E402  (Keras's lazy import of TensorFlow, not re-exported)

from unidl import config  # noqa: E402
from unidl.autograd import check_float
from unidl.backends.interface import Backend as BackendInterface
from unidl.io.buffers import aligned_zeros, is_undrawn_zeros
from unidl.backends.keras import distributed as keras_distributed
from unidl.backends.keras import dtypes as keras_dtypes
from unidl.backends.keras.dtypes import floatx
from unidl.backends.keras import function as keras_function
from unidl.backends.keras import graph as keras_graph
from unidl.backends.keras import ops as keras_ops
from unidl.backends.keras import precision as keras_precision
from unidl.backends.keras import stateless as keras_stateless
from unidl.backends.keras.host import HOST
from unidl.backends.keras.module import (BatchRelay, KeptStepState, NativeLoss, NativeModel,
                                         metric_tracker_variables, note_state_written, reached_modes,
                                         restore_metric_totals, step_key, swallowed_ctrl_c_raised,
                                         traced_value_error)
from unidl.backends.keras.metrics import NativeMetrics, epoch_logs
from unidl.backends.keras.optimizer import NativeOptimizer, keep_train_function_current
from unidl.optim.param_groups import ConstantOptions
from unidl.data.epoch import xy
from unidl.fit_options import trained_loss_parameters
from unidl.errors import marked_error_from
from unidl.nn.freezing import requires_grad_method
from unidl.nn.module import step_modes, training_modes
from unidl.function import Function
from unidl.tracing import warn_running_eagerly
from unidl.backends.keras.export import export_formats, export_module

keras_dtypes.keep_float64_in_type_promotion()  # float64 stays float64 in Keras's ops on torch and JAX too
# PyTorch's ``param.requires_grad_(False)`` on a Keras variable as on torch's Parameter; Keras's own ``trainable``
# on a parameter is refused where the loops read it (``unidl.nn.freezing.is_trainable``): Keras's layers set it
keras.Variable.requires_grad_ = requires_grad_method()


def _jit_compile(requested: bool, eager: bool) -> bool:
    """Keras's ``jit_compile`` for a model compiled with ``run_eagerly=eager``: Keras's JAX trainer runs its train
    step op by op, each op dispatched (and compiled once) on its own, unless it is jit-compiled, several times
    slower on a small model: a host whose Keras state is functional (values threaded through the step, as JAX's)
    compiles the step whole unless ``eager``; elsewhere as requested (TensorFlow traces a graph either way)."""
    return requested or (not eager and not HOST.keras_state_in_place)


def _owned(value, dtype) -> np.ndarray:
    """``value`` as a NumPy array (of ``dtype`` where given) that the framework may keep as it is: a copy of the
    caller's own array where the host shares NumPy memory (JAX on the CPU takes an aligned array without a copy,
    so editing a state dict's ``tensor.numpy()`` after ``load_state_dict`` changed the model), else no copy."""
    array = np.asarray(value, dtype=dtype)
    if getattr(HOST, "shares_numpy_memory", False) and np.shares_memory(array, np.asarray(value)):
        return array.copy()
    return array


@contextlib.contextmanager
def _tensorflow_left_unimported():
    """Keras's ``set_random_seed`` seeds TensorFlow wherever it is installed, importing it (5 s and 700 MB) on
    Keras-on-JAX and Keras-on-torch, where nothing of unidl's draws from TensorFlow's seed: in the block, Keras sees
    TensorFlow as unavailable unless it is imported already (as where it hosts Keras; unidl's tensorflow backend,
    loaded later, seeds itself with ``ud.initial_seed()``)."""
    tensorflow = getattr(module_utils, "tensorflow", None)
    # (a Keras whose lazy module is shaped otherwise seeds as Keras does, importing TensorFlow)
    if "tensorflow" in sys.modules or getattr(tensorflow, "_available", True) is not None:
        yield
        return
    tensorflow._available = False
    try:
        yield
    finally:
        tensorflow._available = None


class Backend(BackendInterface):
    name = "keras"
    ops = keras_ops

    def __init__(self):
        self._generator = None
        self.check_ops()

    # ---- framework and devices -------------------------------------------
    @property
    def host(self):
        """The unidl backend of the framework Keras runs on, to which this backend delegates."""
        return HOST

    def forward_caller(self, module_class):
        return keras_dtypes.forward_caller(HOST.forward_caller(module_class))

    def distributed_engine(self):
        return keras_distributed.engine()  # the host framework's, where it carries Keras's step

    def set_float32_precision(self, mode):
        HOST.set_float32_precision(mode)  # Keras computes with its host framework's kernels

    def set_num_threads(self, intra_op, inter_op):
        HOST.set_num_threads(intra_op, inter_op)

    def versions(self):
        return {"keras": keras.__version__, **{f"keras backend {k}": v for k, v in HOST.versions().items()}}

    def devices(self):
        return HOST.devices()

    def gpu_support(self):
        return dict(HOST.gpu_support(), host=HOST.name)  # Keras computes with its host framework's build

    def device_scope(self, device):
        return keras.device(HOST.keras_device(device))

    def device_of(self, tensor):
        return HOST.device_of(tensor.value if isinstance(tensor, keras.Variable) else tensor)

    def get_rng_state(self):
        return {"dropout": np.asarray(keras.ops.convert_to_numpy(self.generator().state.value)).tolist()}

    def set_rng_state(self, state):
        variable = self.generator().state
        variable.assign(keras.ops.cast(keras.ops.convert_to_tensor(state["dropout"]), variable.dtype))

    def seed(self, seed):
        with _tensorflow_left_unimported():
            keras.utils.set_random_seed(seed)
        if self._generator is None:
            self._generator = keras.random.SeedGenerator(0)
        # the state Keras's SeedGenerator(seed) starts from, [seed, 0], set in place (compiled graphs captured its
        # variable), the seed's bits in the state's dtype: int32 on Keras-on-torch, which a seed from 2**31 overflowed
        state = self._generator.state
        dtype = keras.backend.standardize_dtype(state.dtype)
        state.assign(keras.ops.convert_to_tensor(np.array([seed, 0], np.uint64).astype(dtype), dtype))

    def generator(self):
        """Unseeded dropout's generator, made at its first use (making it when the backend loads would start
        TensorFlow's runtime, before a data-parallel job or ``set_num_threads`` could configure it), seeded from
        the OS: made inside ``ud.function``'s trace, Keras's own default seed would be drawn from Python's random
        there, frozen into that graph (a ``RetraceWarning`` from unidl's guard). On Keras-on-JAX its state is part of
        the state of each train step that draws from it (``ops.dropout``), which donates it: two threads training
        models with dropout at once would each find the other's step holding it."""
        if self._generator is None:
            self._generator = keras.random.SeedGenerator(1 + int.from_bytes(os.urandom(4), "little") % 10**9)
        return self._generator

    def _device(self) -> str:
        """The unidl device in force for this backend ('cpu', 'cuda:N')."""
        return config.resolve_device(config._requested_device(), self)

    def _scope(self):
        """Keras's device scope of unidl's device: variables and tensors are made there, and Keras's trainer runs
        in it (``train_on_batch``, ``fit``, ``predict_on_batch``), whose batches otherwise go to Keras's default
        device (Keras-on-torch: "cuda" wherever a GPU exists, also with ``UNIDL_DEVICE=cpu``)."""
        return keras.device(HOST.keras_device(self._device()))

    # ---- tensors ---------------------------------------------------------
    def to_input(self, value):
        """NumPy or tensor -> what Keras's trainer takes: floats in unidl's dtype, integers as int64."""
        if not isinstance(value, np.ndarray) and self.is_tensor(value):
            if "float" in str(value.dtype) and keras.backend.standardize_dtype(value.dtype) != config.get_dtype():
                return keras.ops.cast(value, config.get_dtype())
            return value
        array = np.asarray(value)
        if array.dtype.kind == "f":
            return array.astype(config.get_dtype(), copy=False)
        if array.dtype.kind in "iu":
            return array.astype(np.int64, copy=False)
        return array

    def tensor(self, value, dtype=None):
        with self._scope():
            if dtype is not None:
                return keras.ops.convert_to_tensor(_owned(value, None), dtype)
            converted = self.to_input(value)
            if isinstance(converted, np.ndarray) and converted.dtype.kind in "bif":
                # with its own dtype: Keras-on-JAX's conversion of an array without one (jax 0.10's ``jnp.asarray``)
                # compiles an XLA copy per shape and dtype (0.1 to 0.5 s each on a CPU: every batch size of a fit's,
                # evaluate's and predict's), where one with its dtype is only put on the device
                return keras.ops.convert_to_tensor(_owned(converted, None), converted.dtype)
            return keras.ops.convert_to_tensor(_owned(converted, None) if isinstance(converted, np.ndarray)
                                               else converted)

    def to_numpy(self, tensor):
        if isinstance(tensor, np.ndarray):
            return tensor
        return np.asarray(keras.ops.convert_to_numpy(tensor))

    def is_tensor(self, value):
        return isinstance(value, keras.Variable) or keras.ops.is_tensor(value)

    def is_concrete(self, tensor):
        # (the host's own tensors underneath: symbolic while the host traces ud.function, as its own backend's;
        # the default, True, took them for values inside a graph on Keras-on-TensorFlow and Keras-on-JAX)
        return HOST.is_concrete(tensor)

    def is_symbolic_size(self, size):
        return HOST.is_symbolic_size(size)

    def function_argument(self, value):
        # the host's compiled function where it runs ud.function, else the host's tensor (through Keras, on JAX)
        return HOST.function_argument(value) if HOST.keras_state_in_place else self.tensor(value)

    # ---- parameters ------------------------------------------------------
    def parameter(self, value, trainable=True, dtype=None):
        dtype = dtype or config.get_dtype()
        value = np.asarray(value)
        if is_undrawn_zeros(value):  # ud.load's build: fresh zero pages, shared with the framework where it can
            value = self.donated_tensor(aligned_zeros(value.shape, dtype))
        initial = value if keras.ops.is_tensor(value) else _owned(value, dtype)
        with self._scope():
            if in_stateless_scope():
                # a module built inside ud.grad or ud.function on Keras-on-JAX (a class-weighted loss in the loss
                # function, torch's idiom): Keras refuses a value there, so it is its initializer, run once the
                # host's trace is over (``stateless._initialize_created``); read inside, it is that constant
                variable = keras.Variable(lambda shape, dtype=None: initial, shape=tuple(initial.shape), dtype=dtype,
                                          trainable=trainable)
            else:
                variable = keras.Variable(initial, dtype=dtype, trainable=trainable)
        variable.unidl_buffer = not trainable  # a frozen parameter (trainable=False) is still a parameter
        variable.requires_grad = bool(trainable)  # (torch's flag, readable from the start: a buffer's is False)
        return variable

    def is_parameter(self, value):
        return isinstance(value, keras.Variable) and not getattr(value, "unidl_buffer", not value.trainable)

    def assign(self, variable, value):
        with HOST.unless_a_check_failed([variable]):  # (XLA on TensorFlow: written back where a check fails)
            if keras.ops.is_tensor(value):  # from donated_tensor: the variable may adopt its buffer
                variable.assign(value)
            else:
                variable.assign(_owned(value, variable.dtype))

    def donated_tensor(self, array):
        # (a host whose arrays carry a placement of their own gives them Keras's: jax's ``keras_donated_tensor``)
        return getattr(HOST, "keras_donated_tensor", HOST.donated_tensor)(array)

    def write_state(self, variable, value):
        # (replicas of one process that share the variables: the first writes, keras_distributed.writes_state_here)
        if value is not variable and keras_distributed.writes_state_here():
            with HOST.unless_a_check_failed([variable]):  # (XLA on TensorFlow: written back where a check fails)
                variable.assign(value)
            if not HOST.keras_state_in_place:
                note_state_written(variable)  # (a train step traced on Keras-on-JAX threads it: module.py)
        return variable

    # ---- modules and training ---------------------------------------------
    def prepare_graphs(self):
        HOST.prepare_graphs()

    def native_module(self, module):
        self.prepare_graphs()  # (before Keras's own graphs of it: TensorFlow's fused ReLU kernels' NaN)
        with floatx(config.get_dtype()):
            return NativeModel(module)

    def optimizer(self, optimizer):
        with floatx(keras.backend.standardize_dtype(optimizer.params[0].dtype)):  # a float64 learning rate too
            native = NativeOptimizer(optimizer, keras_ops)
            native.build(optimizer.params)  # slots now, eagerly: never created inside a graph being traced
        return native

    def set_learning_rate(self, optimizer, lr, group=0):
        if group:
            optimizer.native.group_learning_rates[group - 1].assign(lr)
        else:
            optimizer.native.learning_rate = lr

    def set_group_options(self, optimizer, group, keys):
        from unidl.backends.keras.optimizer import set_group_options

        set_group_options(optimizer, group, keys)

    def optimizer_state(self, optimizer):
        native = optimizer.native
        if not native.built:
            counts = [0] * len(optimizer.params) if optimizer.uses_step else None
            return int(native.iterations.numpy()), optimizer.initial_slots(), counts
        counts = None if native.param_steps is None else [int(self.to_numpy(v)) for v in native.param_steps]
        return int(native.iterations.numpy()), [{n: self.to_numpy(v) for n, v in native.slots_of(p).items()}
                                                for p in optimizer.params], counts

    def load_optimizer_state(self, optimizer, step, slots, param_steps):
        native = optimizer.native
        native.build(optimizer.params)
        native.iterations.assign(step)
        for variable, count in zip(native.param_steps or [], param_steps or []):
            variable.assign(count)
        for p, entry in zip(optimizer.params, slots):
            variables = native.slots_of(p)
            for name, value in entry.items():
                given = self.given_slot(value, variables[name].dtype)
                if given is not None:  # (no ``_owned`` copy: that is for the user's arrays; adopted where the host can,
                    # as a file's weights are: load_checkpoint staged every slot, and copies peaked at 1.58x the file)
                    variables[name].assign(self.donated_tensor(given))
                else:
                    self.assign(variables[name], value)

    def apply_gradients(self, optimizer, grads):
        # no gradient, no update; none at all: no update, but the step counts (torch.optim's ``step()``)
        pairs = [(g, p) for g, p in zip(grads, optimizer.params) if g is not None] or list(zip(grads, optimizer.params))
        object.__setattr__(optimizer.native, "_step_loss", None)  # no loss in this loop: the gradients only
        optimizer.native.apply([g for g, _ in pairs], [p for _, p in pairs])

    def last_step_finite(self, optimizer):
        # inside fit the flag is read after ``BatchRelay`` handed back the state Keras's trainer may hold outside
        # its variables (Keras-on-JAX): this batch's, so fit stops at the step that was skipped
        # (the host's read of the variable's own value: Keras's ``convert_to_numpy`` of a TensorFlow or torch
        # variable goes through its ``__array__``, which NumPy 2 warns about once per call site)
        return bool(HOST.to_numpy(optimizer.native.finite.value))

    def compile(self, model, loss_fn, optimizer, jit_compile=False, metrics=None, eager=False, precision=None,
                accumulate=1):
        """Compile the module's ``keras.Model`` with the unidl loss and optimizer (Keras's own trainer), once per
        (loss, optimizer, metrics, eager, precision, accumulation, frozen set, modes) combination: a combination
        compiled before is restored with Keras's compiled step (``_Compilations``), not compiled again."""
        native = model.native
        # Keras's compiled steps bake in which variables they train and each module's train/eval mode: freezing
        # one, or ``model.bn.eval()``, is another compile
        # and the job it was compiled in (``job_key``): a job's step holds its collectives, one made outside has none
        key = (id(loss_fn), id(optimizer), jit_compile, None if metrics is None else metrics.key, eager, precision,
               accumulate, keras_distributed.job_key(),
               *step_key(model, loss_fn, optimizer))  # (its last entry re-filed: module.py)
        if getattr(native, "_unidl_compiled", None) != key:
            optimizer.native.prepare_accumulation(accumulate)  # micro-steps per update, for the steps traced next
            with floatx(native.dtype_policy.variable_dtype):  # Keras's loss and metric trackers too
                # (also the optimizer's accumulation window or loss scale, checked against one in progress)
                keras_optimizer = keras_precision.keras_optimizer(optimizer, precision, accumulate)
                compilations = _Compilations.of(native)
                if not compilations.switch_to(key, keras_optimizer):
                    # (before Keras's compile, rank 0's broadcast and the first trace read the trained variables)
                    object.__setattr__(native, "_unidl_loss_parameters",
                                       trained_loss_parameters(model, loss_fn, optimizer))
                    statistics = NativeMetrics(metrics) if metrics is not None else None
                    native.compile(optimizer=keras_optimizer, loss=NativeLoss(loss_fn),
                                   metrics=[statistics] if statistics is not None else [],
                                   jit_compile=_jit_compile(jit_compile, eager), run_eagerly=eager)
                    keras_distributed.from_rank_0(native)  # (in a job on JAX's engine: rank 0's weights)
                    object.__setattr__(native, "_unidl_compiled", key)
                    object.__setattr__(native, "_unidl_statistics", statistics)  # its totals, for epoch_totals
                    object.__setattr__(native, "_unidl_fit_graph", None)  # graphs over this compile's trackers
                    object.__setattr__(native, "_unidl_step_graph", None)
                    object.__setattr__(native, "_unidl_eager_step", None)  # (and the eager steps over them)
                    object.__setattr__(native, "_unidl_eager_fit_step", None)
                    object.__setattr__(native, "_unidl_options", ConstantOptions(optimizer))  # (options: constants)
                    # the modules its traces reach: inside the model's and this loss's trees, or not (module.py)
                    object.__setattr__(native, "_unidl_seen_modules", None)
        keep_train_function_current(native)  # (an option bound since: Keras's own step holds it as a constant)
        return native

    def train_step(self, model, loss_fn, optimizer, with_outputs=False, eager=False, accumulate=1):
        if with_outputs:
            raise NotImplementedError("the keras backend trains through Keras's trainer, which returns no outputs; "
                                      "ud.fit uses fit_epoch instead")
        return _FreezeAwareStep(lambda: self._train_step(model, loss_fn, optimizer, eager, accumulate=accumulate),
                                lambda: step_key(model, loss_fn, optimizer))

    def _train_step(self, model, loss_fn, optimizer, eager, precision=None, accumulate=1):
        def compile_for_this_step():
            return self.compile(model, loss_fn, optimizer, eager=eager, precision=precision, accumulate=accumulate)

        native = compile_for_this_step()
        graph = None if eager else self._step_graph(native)
        if graph is not None:
            return _CompiledForStep(native, compile_for_this_step, graph)
        to_input, scope = self.to_input, self._scope  # (Keras's trainer in unidl's device: its batches go there)
        # in a job whose engine runs Keras's step in its replica context (TensorFlow's strategy): Keras's step run
        # eagerly in it, where Keras's own eager train_on_batch would run outside it, its gradients summed over no
        # rank; Keras's train_on_batch elsewhere (torch's DDP, JAX's engine carry it, and one process)
        in_job = self._eager_step(native, per_batch=True) if keras_distributed.in_group() else None

        def step(x, y, *inputs):  # extra step inputs reach the forward as model(x, *inputs)
            runs = native.train_step_runs
            try:
                # (Ctrl-C in Keras-on-JAX's step: the model keeps a step's state; one that Keras swallowed: raised)
                with KeptStepState(native), swallowed_ctrl_c_raised(), scope():
                    if in_job is not None:  # (tensors: the engine splits tensors over the replicas of a process)
                        result = in_job(*[keras.ops.convert_to_tensor(to_input(v)) for v in (x, y, *inputs)])
                    else:
                        result = native.train_on_batch((to_input(x), *[to_input(v) for v in inputs]) if inputs
                                                       else to_input(x), to_input(y))
            except Exception as error:
                if not HOST.keras_state_in_place:
                    _raise_if_traced_value(error, model, bool(inputs))
                raise
            if step.trace_count is not None:
                step.trace_count += native.train_step_runs - runs
            # Keras hands the loss back on the host, a Python float: in the weights' dtype, as every other step's
            # loss (a 0-d NumPy array: a device tensor made again from it cost 40-90 us a step on Keras-on-JAX)
            return np.asarray(result, native.dtype)

        # Keras's jitted train step (Keras-on-JAX) runs its Python only while jax.jit traces it: a trace is one
        # run of ``NativeModel.train_step`` during this step's call (a new input shape; a switch back from another
        # step's compile restores this one's jitted step, traced already). Not compiled (Keras-on-torch, or
        # eager), it runs every call and nothing is traced.
        step.trace_count = 0 if native.jit_compile and not native.run_eagerly else None
        return _CompiledForStep(native, compile_for_this_step, step)

    def fit_epoch(self, model, loss_fn, optimizer, batches, steps, on_batch, metrics, eager=False, precision=None,
                  accumulate=1, totals=None, step_inputs=None, before_batch=None):
        if precision is not None and precision.mixed:  # the forward traced with mixed precision's casts
            with keras_precision.forward_scope(model, loss_fn, precision):
                return self._fit_epoch(model, loss_fn, optimizer, batches, steps, on_batch, metrics, eager, precision,
                                       accumulate, totals, step_inputs, before_batch)
        return self._fit_epoch(model, loss_fn, optimizer, batches, steps, on_batch, metrics, eager, None, accumulate,
                               totals, step_inputs, before_batch)

    def epoch_totals(self, model):
        # the trackers' values after the last batch (``metric_tracker_variables`` hands back the state Keras's
        # trainer may hold outside the variables during an epoch, as on JAX)
        return [np.asarray(variable.numpy(), dtype=np.float64).tolist()
                for variable in metric_tracker_variables(model.native)]

    def epoch_totals_shapes(self, metrics):
        # Keras's loss tracker (a Mean: total and count), then NativeMetrics' totals (see metric_tracker_variables)
        return [(), ()] + ([tuple(shape) for shape in metrics.shapes] if metrics is not None else [])

    def _fit_epoch(self, model, loss_fn, optimizer, batches, steps, on_batch, metrics, eager, precision, accumulate=1,
                   totals=None, step_inputs=None, before_batch=None):
        native = self.compile(model, loss_fn, optimizer, metrics=metrics, eager=eager, precision=precision,
                              accumulate=accumulate)
        to_input = self.to_input
        before_batch = before_batch or (lambda index: None)  # (ud.fit's: a callback may freeze the model mid-epoch)

        def graph_of(native):
            graph = None if eager else self._fit_graph(native)
            # Model.fit takes no per-batch extra inputs; and in a job whose engine runs Keras's step in its replica
            # context (TensorFlow's strategy) it runs the step outside it (as _train_step's)
            if graph is None and eager and (step_inputs is not None or keras_distributed.in_group()):
                step = self._eager_step(native, per_batch=False)
                # (tensors: the engine splits tensors over the replicas of a process, and leaves arrays whole)
                graph = None if step is None else lambda *values: step(
                    *[keras.ops.convert_to_tensor(to_input(v)) for v in values])
            return graph

        graph = graph_of(native)
        if graph is not None:  # Keras's train step, batch by batch, with Keras's running logs
            native.reset_metrics()
            restore_metric_totals(native, totals)
            logs, index = None, -1
            compiled_for = step_key(model, loss_fn, optimizer)
            with KeptStepState(native):  # (an eager step on Keras-on-torch: its grad mode put back after a Ctrl-C)
                for index, batch in enumerate(batches):
                    inputs = step_inputs(index) if step_inputs is not None else ()
                    before_batch(index)
                    if index and step_key(model, loss_fn, optimizer) != compiled_for:
                        # a callback froze or unfroze parameters, or switched a module's mode, since the step was
                        # compiled: the epoch goes on with the compile for the new set (its trackers given the
                        # epoch's running totals so far), as a torch step would train from the next batch on
                        so_far = self.epoch_totals(model)
                        native = self.compile(model, loss_fn, optimizer, metrics=metrics, eager=eager,
                                              precision=precision, accumulate=accumulate)
                        native.reset_metrics()
                        restore_metric_totals(native, so_far)
                        graph, compiled_for = graph_of(native), step_key(model, loss_fn, optimizer)
                    logs = epoch_logs(graph(*xy(batch), *inputs), metrics)
                    on_batch(index, dict(logs))
            if index < 0:
                raise ValueError("the epoch had no batches: the training data is empty")
            return logs
        # Keras's own fit loop (Keras-on-JAX, Keras-on-torch, eager): a module's mode switched by a callback
        # mid-epoch holds from the next batch, as in a torch loop; a jitted train step (Keras-on-JAX) traced in the
        # modes of the epoch's start is made again. (It is this compile's no more: the next compile starts anew.)
        # The modes a step was traced in are the end of its compile's key (``step_key``: those of the model's and
        # the loss's modules, then of the modules its trace reached outside them, re-filed after the trace)
        ud_before_batch, modes_traced = before_batch, [None]

        def before_batch(index):
            ud_before_batch(index)
            if not index or not native.jit_compile or native.run_eagerly:
                return
            compiled = getattr(native, "_unidl_compiled", None)
            traced = modes_traced[0] or (tuple(compiled[-2:]) if compiled is not None else None)
            modes = (step_modes(model, loss_fn), reached_modes(native))
            if traced is not None and modes != traced:
                modes_traced[0] = modes
                object.__setattr__(native, "_unidl_compiled", None)
                native.make_train_function(force=True)

        # a DataLoader epoch over in-memory arrays (Keras slices no per-step inputs: those go batch by batch)
        take_arrays = getattr(batches, "take_arrays", None) if step_inputs is None else None
        arrays = take_arrays() if take_arrays is not None else None
        # Keras's fit casts the float arrays it slices to its default float type: the model's (a float64
        # batch rounded to float32 would be 1e-8 off)
        with floatx(native.dtype_policy.variable_dtype):
            if arrays is not None:
                xy(arrays)
                # Keras slices arrays inside its own input pipeline: far cheaper than a Python generator,
                # which it would wrap in tf.data.Dataset.from_generator (a py_function per batch)
                relay = BatchRelay(on_batch, lambda logs: epoch_logs(logs, metrics), delivered=batches.advance,
                                   totals=totals, before_batch=before_batch)
                try:
                    with KeptStepState(native), self._scope():
                        native.fit(to_input(arrays[0]), to_input(arrays[1]), batch_size=batches.batch_size,
                                   epochs=1, shuffle=False, verbose=0, callbacks=[relay])
                except Exception as error:
                    if not HOST.keras_state_in_place:
                        _raise_if_traced_value(error, model, False)
                    raise
            else:
                relay = BatchRelay(on_batch, lambda logs: epoch_logs(logs, metrics), totals=totals,
                                   before_batch=before_batch)
                try:
                    with KeptStepState(native), self._scope():
                        native.fit(_keras_batches(batches, to_input, step_inputs), epochs=1,
                                   steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[relay])
                except Exception as error:
                    if not HOST.keras_state_in_place:
                        _raise_if_traced_value(error, model, step_inputs is not None)
                    raise
        return relay.logs

    def _fit_graph(self, native):
        """The running-logs train step graph of ``native`` as compiled now (one per compile: a compile has its own
        loss and metric trackers), for the current device; None where the host compiles no graphs."""
        return _graph_of_compile(native, "_unidl_fit_graph", self._device(), per_batch=False)

    def _step_graph(self, native):
        """The per-batch train step graph of ``native`` as compiled now (``ud.train_step``'s), kept with the
        compile as ``_fit_graph``'s, so that a step switched back to traces nothing again; None where the host
        compiles no graphs."""
        return _graph_of_compile(native, "_unidl_step_graph", self._device(), per_batch=True)

    def _eager_step(self, native, per_batch):
        """Keras's train step of ``native`` as compiled now, run by Python at every call
        (``keras_function.eager_train_step``: ``fit(eager=True)`` with per-step inputs, and ``eager=True`` in a job
        whose engine runs Keras's step in its replica context), kept with the compile as its graphs are: in a job,
        making the step broadcasts rank 0's weights (``data_parallel``), so they are broadcast once, when the model
        joins the job's step, as the compiled step's and DDP's are, not at every epoch of an eager ``fit`` (which
        overwrote each rank's own state since, BatchNorm's running statistics, with rank 0's)."""
        attribute = "_unidl_eager_step" if per_batch else "_unidl_eager_fit_step"
        return _graph_of_compile(native, attribute, self._device(), per_batch, eager=True)

    def mixed_precision_train_step(self, model, loss_fn, optimizer, precision, with_outputs=False, eager=False,
                                   accumulate=1):
        return keras_precision.train_step(self, model, loss_fn, optimizer, precision, with_outputs, eager, accumulate)

    def predict_function(self, model):
        native = model.native
        to_input, scope = self.to_input, self._scope
        eager = []  # set once Keras's jitted predict met Python control flow on a value (Keras-on-JAX)

        def forward(x):
            if eager:  # (model(x), op by op, as torch and TensorFlow's AutoGraph run such a forward)
                with scope():
                    return model(to_input(x))
            with KeptStepState(native):
                inputs = to_input(x)
                _predict_function_for_rank(native, len(tuple(inputs.shape)))
                try:
                    with scope():
                        return native.predict_on_batch(inputs)
                except Exception as error:  # an in-graph check of unidl's (Keras's graph left the sizes unknown)
                    marked = marked_error_from(error, escaped=True)
                    if marked is not None:
                        raise marked from None
                    traced = traced_value_error(error)
                    if traced is None:
                        raise
            eager.append(True)
            warn_running_eagerly(f"the forward of {type(model).__name__}", f"Keras-on-{HOST.name}",
                                 "Keras's jitted predict", traced, what="ud.predict/ud.evaluate")
            return forward(x)

        return forward

    def evaluation_function(self, model, evaluate, name, loss_fn=None):
        # on a functional host (JAX) Keras's jitted predict, then the loss and the metrics op by op, compiled a
        # program per eager op and shape (~20 per batch size): there one program over the Keras variables' values,
        # a ``ud.function`` (``keras_stateless.StatelessFunction``); elsewhere Keras's eager ops compile nothing and
        # its predict is the graph
        if HOST.keras_state_in_place:
            return None
        compiled, scope = Function(evaluate), self._scope  # (keyed on the modes of the modules it calls)
        compiled.__name__ = name
        to_input = self.to_input

        def evaluation(*args):
            # (a write to a trainable parameter, an Embedding's max_norm rows, stands as torch's in-place write: the
            # function threads every variable's value, where Keras's own predict and test steps, which thread the
            # non-trainable ones alone and would drop it, refuse it)
            with scope():
                return compiled(*[to_input(a) for a in args])

        return evaluation

    def value_and_grad(self, f, args, argnums, params):
        if argnums is not None:
            check_float([args[i] for i in argnums], "argument")  # (as given: a Python number is not a tensor)
            # a tensor in its own dtype (torch.autograd's), an array (or a variable's value) in unidl's
            args = [a if i not in argnums else a.value if isinstance(a, keras.Variable) else
                    a if keras.ops.is_tensor(a) else self.tensor(a) for i, a in enumerate(args)]
        if not HOST.keras_state_in_place:  # variables' values in, and those f assigns written after: a StatelessScope
            return keras_stateless.value_and_grad(HOST, f, args, argnums or (), list(params or []))
        return HOST.value_and_grad(f, args, argnums, None if params is None else [p.value for p in params])

    def probe_forward(self, forward, x):
        if HOST.keras_state_in_place:  # (Keras's eager ops there compile nothing per shape)
            return forward(self.tensor(x))
        # a functional host (JAX) compiled a program per eager op of the probe (a CNN's: 26, ~1 s on a CPU): its
        # abstract pass instead, where it gives what the eager forward does (``probe_forward`` of the host), the
        # Keras variables read through a scope that notes a write (then, as there, the eager forward)
        try:
            with keras_stateless.recording_scope() as scope:
                outputs = HOST.probe_forward(forward, x)
        except Exception:  # (the eager forward raises its own error, outside the scope)
            outputs = None
        if outputs is None or scope.assigned:
            return forward(self.tensor(x))
        return outputs

    def check_shapes(self, model, loss_fn, x, y):
        x, y = self.to_input(x), self.to_input(y)
        specs = [keras.KerasTensor(tuple(v.shape), dtype=keras.backend.standardize_dtype(v.dtype)) for v in (x, y)]
        try:
            compute_output_spec(lambda a, b: loss_fn(model(a), b), *specs)
        except getattr(HOST, "tracer_value_errors", ()):
            pass  # Python control flow on a value: the step reports it (GraphConstructError), or runs it eagerly

    # ---- compiled functions and custom gradients ---------------------------
    def function(self, fn, jit_compile, name):
        if not HOST.keras_state_in_place:  # compiled over the variables' values, through a StatelessScope
            return keras_stateless.StatelessFunction(HOST, fn, name)
        return HOST.function(fn, jit_compile, name)

    def composite(self, function, arrays):
        compiled = HOST.composite(function, arrays)  # (Keras's ops run in its host's compiled program: JAX's jit)
        # a host that runs the composite as it is (TensorFlow, torch) gives the function itself, which takes Keras's
        # variables as they are
        return function if compiled is function else _taking_tensors(compiled)

    def looping_composite(self, function, arrays):
        # (Keras's ops run in its host's graphs and loops)
        return _taking_tensors(HOST.looping_composite(function, arrays))

    def custom_gradient(self, forward_fn):
        return HOST.custom_gradient(forward_fn)

    def model_graph(self, model, x):
        return keras_graph.model_graph(HOST, model, x)  # Keras computes with its host framework, which traces it

    # ---- export ------------------------------------------------------------
    def export_formats(self):
        return export_formats()

    def export(self, module, path, format, input_shape, input_dtype):
        export_module(module, path, format, input_shape, input_dtype)


def _taking_tensors(compiled):
    """``compiled``, the host's version of a composite, called with each Keras variable in its arguments read as a
    tensor: the host's compiled program takes tensors, never a Keras variable (a parameter)."""

    def call(*args, **kwargs):
        return compiled(*map(_read_variables, args), **{k: _read_variables(v) for k, v in kwargs.items()})

    return call


def _read_variables(value):
    """``value`` with each Keras variable in it (at the top or in a tuple or list) read as a tensor: JAX's ``jit``
    refuses a Keras variable as an argument ("Triggering __jax_array__() during abstractification"), and
    TensorFlow's ``tf.function`` traces a variable apart from a tensor of the same shape."""
    if isinstance(value, keras.Variable):
        return keras.ops.convert_to_tensor(value)
    if type(value) is tuple or type(value) is list:
        return type(value)(_read_variables(v) for v in value)
    return value


def _raise_if_traced_value(error, model, step_inputs: bool) -> None:
    """``GraphConstructError`` in place of Keras's own error (its model build's, or its train step's) when the
    forward used a traced value in Python control flow (``if`` on a tensor's value; ``range(depth)`` of a step input:
    ``train_step``'s extra inputs, ``fit``'s ``step_inputs``) on a host whose Keras trainer traces every step (JAX:
    even with ``run_eagerly``, Keras builds the model by tracing it; its raw TracerBoolConversionError or "Unable to
    automatically build the model" named neither the forward nor the fix)."""
    cause = traced_value_error(error)
    if cause is not None:
        from unidl.errors import GraphConstructError

        among = (", a step input among them (train_step's extra inputs, fit's step_inputs)" if step_inputs else "")
        raise GraphConstructError(
            f"the forward of {type(model).__name__} uses the value of a tensor in Python control flow (if/while/"
            f"range/int on a traced value) or as a boolean mask (x[mask]){among}: Keras's own trainer on "
            f"Keras-on-{HOST.name} traces every step, "
            f"eager=True included, and cannot. Write loops with ud.ops.scan and branches with ud.ops.where, or "
            f"train on the {HOST.name} backend (eager=True runs Python per step there) or Keras on tensorflow or "
            f"torch. ({type(cause).__name__}: {str(cause).splitlines()[0]})") from None


def _keras_batches(batches, to_input, step_inputs):
    """``(x, y)`` of each batch for Keras's ``Model.fit``, ``x`` the tuple ``(x, *inputs)`` of the forward's inputs
    (``NativeModel.call``) where ``step_inputs(index)`` gives the batch's extra inputs."""
    for index, batch in enumerate(batches):
        x, y = xy(batch)
        x = to_input(x)
        if step_inputs is not None:
            x = (x, *[to_input(value) for value in step_inputs(index)])
        yield x, to_input(y)


def _graph_of_compile(native, attribute, device, per_batch, eager=False):
    """The train step graph ``keras_function.train_step_graph(native, per_batch)`` (``eager``: its step run by
    Python, ``eager_train_step``) of the model's compile in force, kept in its ``attribute`` (which ``_Compilations``
    keeps and restores with the compile), for ``device``."""
    cached = getattr(native, attribute, None)
    if cached is None or cached[0] != device:
        make = keras_function.eager_train_step if eager else keras_function.train_step_graph
        cached = (device, make(native, per_batch=per_batch))
        object.__setattr__(native, attribute, cached)
    return cached[1]


def _predict_function_for_rank(native, rank: int) -> None:
    """Give ``native`` (its compile in force) Keras's predict function for inputs of ``rank``, one per rank: Keras's
    predict graph (a ``tf.function`` that relaxes its shapes) traced again after inputs of another rank is traced
    for an unknown rank, which no layer can check or reshape (a sample (in,) after batches (N, in): Keras's
    ``ValueError``, where the forward runs eagerly and on the other backends). The functions belong to the compile
    (``_Compilations`` keeps its ``predict_function``); a dict lookup a call."""
    # the compile in force, and the modes and hooks of the model's modules, which the predict graph bakes in (a hook
    # added or removed since: the graph is made again)
    compiled = (getattr(native, "_unidl_compiled", None), training_modes(native._unidl_module))
    kept = native.__dict__.get("_unidl_predict_by_rank")
    if kept is None or kept[0] != compiled or (kept[1] and native.predict_function not in kept[1].values()):
        kept = (compiled, {})  # (another compile, or Keras made its predict function again)
        object.__setattr__(native, "_unidl_predict_by_rank", kept)
    functions = kept[1]
    if rank not in functions:  # (made anew: Keras's own may be one traced before a hook came or went)
        native.make_predict_function(force=True)
        functions[rank] = native.predict_function
    native.predict_function = functions[rank]


class _Compilations:
    """The last few compiles of one ``keras.Model`` other than the one in force, each as Keras's compile and
    ``make_*_function`` left the model (its optimizer, compiled loss and metrics, trackers, flags, and its jitted
    train function, traced already) with unidl's own state of the compile, so that switching back to one (two
    steps, or a step and ``ud.fit``, called in turn) restores it, and Keras's jitted step is traced once per input
    shape instead of at every switch (on Keras-on-JAX an XLA compile: seconds for a real model).

    The attributes are those Keras 3's ``Trainer.compile`` sets (keras/src/trainers/trainer.py) and its
    ``make_train_function`` / ``make_test_function`` / ``make_predict_function`` (keras/src/backend/*/trainer.py).
    Each jitted step Keras makes is over a step function of its own (``NativeModel.make_train_function``): a new
    one never runs the trace of a kept one. An entry holds its loss and optimizer (hence their ``id`` in its key
    stays theirs); at most ``KEPT`` entries, the least recently used dropped first, so that a loop that makes new
    losses holds no more than these."""

    KEPT = 4
    KERAS_STATE = ("optimizer", "loss", "_compile_loss", "_compile_metrics", "_loss_tracker", "_jit_compile",
                   "_run_eagerly", "_compiled_trainable_state", "compiled", "steps_per_execution", "_compile_config",
                   "train_function", "test_function", "predict_function")
    UNIDL_STATE = ("_unidl_compiled", "_unidl_statistics", "_unidl_fit_graph", "_unidl_step_graph",
                   "_unidl_eager_step", "_unidl_eager_fit_step",
                   "_unidl_seen_modules", "_unidl_options", "_unidl_predict_by_rank", "_unidl_loss_parameters")

    def __init__(self, native):
        self._native = native
        self._entries: collections.OrderedDict = collections.OrderedDict()

    @classmethod
    def of(cls, native) -> "_Compilations":
        compilations = native.__dict__.get("_unidl_compilations")
        if compilations is None:
            compilations = cls(native)
            object.__setattr__(native, "_unidl_compilations", compilations)
        return compilations

    def switch_to(self, key, keras_optimizer) -> bool:
        """Keep the compile in force and restore the one of ``key`` (compiled with ``keras_optimizer``, the Keras
        optimizer this compile would get now): True, or False where there is none to restore (the caller
        compiles; a compile of ``key`` whose Keras optimizer has changed since, a loss scaler made since, is
        compiled again)."""
        native = self._native
        # Keras-on-JAX's trainer may hold the state outside the variables (``fit``, ``train_on_batch``): handed
        # back to the variables of the compile in force (its optimizer's, its trackers') before it is put aside
        sync = getattr(native, "jax_state_sync", None)
        if sync is not None:
            sync()
        current = getattr(native, "_unidl_compiled", None)
        if current is not None:
            self._entries[current] = {name: getattr(native, name, None) for name in self.KERAS_STATE + self.UNIDL_STATE}
            self._entries.move_to_end(current)
        entry = self._entries.pop(key, None)
        while len(self._entries) > self.KEPT:
            self._entries.popitem(last=False)
        if entry is None or entry["optimizer"] is not keras_optimizer:
            return False
        with tracking.DotNotTrackScope():  # set as Keras's compile sets them (it tracks none of them)
            for name in self.KERAS_STATE:
                setattr(native, name, entry[name])
            native.stop_training = False
        for name in self.UNIDL_STATE:
            object.__setattr__(native, name, entry[name])
        return True


class _CompiledForStep:
    """A train step that runs its model's one ``keras.Model`` compiled with this step's loss, optimizer, precision
    and accumulation: another step or ``ud.fit`` over the same model compiles it with theirs, and Keras's trainer
    runs whatever was compiled last (``train_on_batch`` on Keras-on-torch and Keras-on-JAX, its graph on
    Keras-TensorFlow), so a call after theirs switches it back first (``Backend.compile``; one identity check when
    nothing compiled in between). Else a step would train with another's loss, optimizer or accumulation, and
    compute that loss outside its own mixed-precision casts (in float16: a scaled loss that overflows and skips the
    step). The switch back restores this step's compile with its traced step (``_Compilations``): no new trace.
    ``trace_count``: the traces during this step's calls (a graph may be shared by the steps of one compile)."""

    def __init__(self, native, compile_for_this_step, run):
        self._native, self._compile, self._run = native, compile_for_this_step, run
        self._compiled = native._unidl_compiled
        self.trace_count = None if getattr(run, "trace_count", None) is None else 0

    def __call__(self, *args):
        if getattr(self._native, "_unidl_compiled", None) is not self._compiled:
            self._compile()
            self._compiled = self._native._unidl_compiled
        if self.trace_count is None:
            return self._run(*args)
        before = self._run.trace_count
        try:
            return self._run(*args)
        finally:
            self.trace_count += self._run.trace_count - before


class _FreezeAwareStep:
    """A train step built again when the set of frozen parameters or any module's train/eval mode changes
    (Keras's compiled step trains the variables it was compiled with, in the modes it was traced in), or its
    optimizer first changes an option (the step holds it as a constant; a build compiles the model, which notes
    the optimizer in ``ConstantOptions``); ``trace_count`` adds up every build's traces."""

    def __init__(self, build, mask):
        self._build, self._mask = build, mask
        self._key, self._run, self._earlier_traces = None, None, 0
        self._options = ConstantOptions()

    def __call__(self, *args):
        key = self._mask()
        if self._options.stale() or key != self._key:
            self._earlier_traces += getattr(self._run, "trace_count", None) or 0
            with self._options.recording():  # (``compile`` notes the model's optimizer here)
                self._key, self._run = key, self._build()
        return self._run(*args)

    @property
    def trace_count(self):
        count = getattr(self._run, "trace_count", None)
        return None if count is None else count + self._earlier_traces
