"""The TensorFlow backend: graph mode. A train step is one ``tf.function`` graph with in-graph variable updates."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import func_graph  # noqa: E402

from unidl import config
from unidl.autograd import check_float, check_scalar
from unidl.backends.interface import Backend as BackendInterface
from unidl.fit_options import rank_0_state
from unidl.io.buffers import aligned_zeros, is_undrawn_zeros
from unidl.nn.freezing import requires_grad_method, trainable_refused
from unidl.nn.module import trainable_mask
from tensorflow.python.ops.resource_variable_ops import BaseResourceVariable  # noqa: E402  (not re-exported)
from unidl.backends.tensorflow import ops as tf_ops
from unidl.backends.tensorflow import distributed as tf_distributed
from unidl.backends.tensorflow import eager as tf_eager
from unidl.backends.tensorflow import fusion
from unidl.backends.tensorflow import function as tf_function
from unidl.backends.tensorflow import graph as tf_graph
from unidl.backends.tensorflow import xla_checks
from unidl.backends.tensorflow import precision as tf_precision
from unidl.backends.tensorflow.function import GraphFunction, PerModeGraphs, to_graph_input
from unidl.backends.tensorflow.module import NativeModule
from unidl.backends.tensorflow.optimizer import GraphOptimizer
from unidl.backends.tensorflow.export import EXPORT_FORMATS, export_module
from unidl.backends.tensorflow.layout import tracing_for_shapes

_DTYPES = {"float32": tf.float32, "float64": tf.float64}


def _refuse_trainable(variable, value):
    raise trainable_refused(f"tf.Variable {variable.name!r}: .trainable = {value!r}")


# PyTorch's ``param.requires_grad_(False)`` on a TensorFlow variable as on torch's Parameter; TensorFlow's own
# ``trainable``, read-only, is refused with unidl's error (an AttributeError as TensorFlow's was) naming that call
tf.Variable.requires_grad_ = requires_grad_method()
BaseResourceVariable.trainable = property(BaseResourceVariable.trainable.fget, _refuse_trainable,
                                          doc=BaseResourceVariable.trainable.__doc__)


def tf_device_name(device: str) -> str:
    """unidl device ('cpu', 'cuda:N') -> TensorFlow device string ('/CPU:0', '/GPU:N')."""
    return "/CPU:0" if device == "cpu" else f"/GPU:{device.split(':')[1]}"


def canonical_device(tf_device: str) -> str:
    """TensorFlow device string ('/job:localhost/replica:0/task:0/device:GPU:1') -> 'cuda:1' (or 'cpu')."""
    spec = tf.DeviceSpec.from_string(tf_device or "/CPU:0")
    return f"cuda:{spec.device_index or 0}" if (spec.device_type or "CPU").upper() == "GPU" else "cpu"


class Backend(BackendInterface):
    name = "tensorflow"
    ops = tf_ops
    native_layout = "NHWC"
    compiles_keras_train_step = True
    keras_writes_saved_model = True
    # fit's training metrics inside the step's graph: computed apart they were a second graph call a batch
    summary_in_step = True
    # Keras on TensorFlow: keras.ops' portable spellings cost time on TensorFlow's kernels (a transposed copy of
    # every Linear weight each step, for ``matmul(x, transpose(w))``; transposes around every conv and pool).
    # These ops take Keras's tensors and variables as they are, multiply by the transposed weight inside the
    # kernel and keep conv chains NHWC in graphs (layout.py); SGD with momentum runs as TensorFlow's fused kernel
    # (apply_momentum), and labels out of range stop a compiled step with unidl's message (cross_entropy's
    # in-graph check) rather than the kernel's; one_hot is tf.one_hot's one op, where keras.ops' portable
    # comparison (right on every host: Keras's own one_hot raises on torch for a label out of range) is three;
    # amax is tf.reduce_max, where Keras's max refuses any empty tensor eagerly (an empty batch reduced over
    # another axis too; ud.ops.amax checks the reduced axes itself); softmax, linear and max_pool2d give
    # PyTorch's NaN rows, single rounding in half precision and -inf windows (tf.nn's own do not); take_in_range
    # gathers the last axis as rows (keras.ops.take, one element at a time there, was 4 times slower); exact_divide
    # keeps Grappler from dividing by a reciprocal in Keras's graphs too; size_keys spares where(x > 0, x, 0) a
    # check of its sizes there, and sizes_hold compares the shape vectors shape read, one comparison a check
    # (sizes_broadcast: the three of a where at once).
    keras_native_ops = ("amax", "apply_momentum", "avg_pool2d", "batch_norm", "conv2d", "cross_entropy",
                        "exact_divide", "leaky_relu", "linear", "max_pool2d", "one_hot", "relu", "scan", "shape",
                        "sigmoid", "size_keys", "sizes_broadcast", "sizes_hold", "softmax", "take_in_range",
                        "tanh")

    def __init__(self):
        self._generator = None
        self.check_ops()

    def forward_caller(self, module_class):
        return tf_function.forward_caller(module_class)

    def prepare_graphs(self):
        fusion.check_fused_relu()

    # ---- framework and devices -------------------------------------------
    def is_concrete(self, tensor):
        return tf.executing_eagerly()

    def versions(self):
        return {"tensorflow": tf.__version__}

    def devices(self):
        return ["cpu"] + [f"cuda:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]

    def device_scope(self, device):
        return tf.device(tf_device_name(device))

    def gpu_support(self):
        info = tf.sysconfig.get_build_info()
        build = (f"CUDA {info.get('cuda_version', '')}".strip() if tf.test.is_built_with_cuda()
                 else "ROCm" if info.get("is_rocm_build") else None)
        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        return {"build": build, "gpus": gpus, "how": "tf.test.is_built_with_cuda(), tf.config.list_physical_devices('GPU')"}

    def device_of(self, tensor):
        return canonical_device(tensor.device)

    def get_rng_state(self):
        return {"dropout": self.generator().state.numpy().tolist()}

    def set_rng_state(self, state):
        self.generator().state.assign(np.asarray(state["dropout"], dtype=np.int64))

    def distributed_engine(self):
        return tf_distributed.Engine()

    def set_float32_precision(self, mode):
        tf.config.experimental.enable_tensor_float_32_execution(mode == "high")

    def set_num_threads(self, intra_op, inter_op):
        threading = tf.config.threading
        if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (
                intra_op, inter_op):
            return
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        except RuntimeError:  # TensorFlow fixes its pools when its runtime starts; UNIDL_NUM_THREADS is read before
            import warnings

            warnings.warn(f"set_num_threads({intra_op}): TensorFlow's thread pools are already running and keep "
                          f"their size; set UNIDL_NUM_THREADS or call unidl.set_num_threads before the first "
                          f"computation", RuntimeWarning, stacklevel=3)

    def seed(self, seed):
        tf.random.set_seed(seed)
        # the state ``tf.random.Generator.from_seed(seed)`` makes for a seed below 2**63 (the seed, then zeros: Philox's
        # three words, ThreeFry's two), built in NumPy: from_seed builds it with seven eager ops, 20 ms of a fresh
        # process's first step (each op's kernel made at its first run)
        if self._generator is None:
            with tf.init_scope():  # (see generator)
                self._generator = tf.random.Generator(state=_seed_state(seed, tf.random.Algorithm.PHILOX),
                                                      alg=tf.random.Algorithm.PHILOX)
        else:  # in place: compiled graphs captured its variable
            self._generator.reset(_seed_state(seed, self._generator.algorithm))

    def generator(self):
        if self._generator is None:
            # made eagerly (``tf.init_scope``) also when the first draw is in a trace: made there, its state's
            # random seed followed the trace's stateful ops (automatic control dependencies), a shape check's
            # Assert on the inputs among them, and TensorFlow could not lift it out of the graph (UnliftableError:
            # Linear then Dropout in a ud.function of a fresh process)
            with tf.init_scope():
                self._generator = tf.random.Generator.from_non_deterministic_state()
        return self._generator

    def current_device_name(self) -> str:
        return tf_device_name(config.resolve_device(config._requested_device(), self))

    # ---- tensors ---------------------------------------------------------
    def tensor(self, value, dtype=None):
        device = self.current_device_name()
        with tf.device(device):
            if dtype is not None:
                return tf.convert_to_tensor(np.asarray(value), _DTYPES[dtype])
            converted = to_graph_input(value)
            if device == "/CPU:0" and not self.is_tensor(value):
                return converted  # already a fresh host tensor (a copy): an identity would only cost ~9 us
            return tf.identity(converted)  # places it on the device (a copy from another device)

    def to_numpy(self, tensor):
        if isinstance(tensor, np.ndarray):
            return tensor
        return tensor.numpy()

    def is_tensor(self, value):
        return isinstance(value, (tf.Tensor, tf.Variable))

    def function_argument(self, value):
        return to_graph_input(value)  # a graph function places its inputs on its device itself

    # ---- parameters ------------------------------------------------------
    def parameter(self, value, trainable=True, dtype=None):
        native_dtype = _DTYPES[config.get_dtype()] if dtype is None else tf.as_dtype(np.dtype(dtype))
        value = np.asarray(value)
        if is_undrawn_zeros(value):  # ud.load's build: fresh zero pages shared with TensorFlow, so that its
            # allocator's cache keeps no first buffer per variable once the file's tensors replace them
            value = self.donated_tensor(aligned_zeros(value.shape, native_dtype.as_numpy_dtype))
        with tf.device(self.current_device_name()):
            variable = tf.Variable(value, dtype=native_dtype, trainable=trainable)
        variable.requires_grad = bool(trainable)  # (torch's flag, readable from the start: a buffer's is False)
        return variable

    def is_parameter(self, value):
        return isinstance(value, tf.Variable) and value.trainable

    def assign(self, variable, value):
        xla_checks.note_written([variable])  # (under XLA: written back where a check of the call fails)
        if isinstance(value, tf.Tensor):  # from donated_tensor: the variable may adopt its buffer
            variable.assign(tf.cast(value, variable.dtype))
        else:
            variable.assign(np.asarray(value, dtype=variable.dtype.as_numpy_dtype))  # no copy when the dtype matches
        xla_checks.in_program_order()  # (a plain graph: after its assertions made before it)

    def donated_tensor(self, array):
        # converting NumPy input copies it twice; DLPack shares it, but only 64-byte aligned memory
        # (TensorFlow's Eigen kernels abort the process on less), which unidl's file reader allocates
        if (isinstance(array, np.ndarray) and array.size and array.flags.c_contiguous and array.flags.writeable
                and array.ctypes.data % 64 == 0 and array.dtype.kind in "fiu" and array.dtype.isnative):
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        return array

    def write_state(self, variable, value):
        if value is not variable and tf_distributed.writes_state_here():
            xla_checks.note_written([variable])  # (under XLA: written back where a check of the call fails)
            variable.assign(value)
            xla_checks.in_program_order()  # (a plain graph: after its assertions made before it)
        return variable

    # ---- modules and training ---------------------------------------------
    def native_module(self, module):
        fusion.check_fused_relu()  # (before a user's own graph of it: the fused ReLU kernels' NaN)
        return NativeModule(module)

    def optimizer(self, optimizer):
        with tf.device(self.current_device_name()):
            return GraphOptimizer(optimizer, tf_ops)

    def set_learning_rate(self, optimizer, lr, group=0):
        optimizer.native.learning_rates[group].assign(lr)

    def set_group_options(self, optimizer, group, keys):
        from unidl.backends.tensorflow.optimizer import set_group_options

        set_group_options(optimizer, group, keys)

    def after(self, values):
        if tf.executing_eagerly():
            return contextlib.nullcontext()
        return tf.control_dependencies([value for value in values if value is not None])

    def unless_a_check_failed(self, variables):
        # (Keras's variables hold TensorFlow's)
        return xla_checks.unless_a_check_failed([getattr(v, "_value", v) for v in variables])

    def gradient_conditions(self, params, grads, agree=True):
        from unidl.backends.tensorflow.control_flow import gradient_conditions

        return gradient_conditions(params, grads, agree)

    def optimizer_state(self, optimizer):
        native = optimizer.native
        counts = None if native.param_steps is None else [int(v.numpy()) for v in native.param_steps]
        return (int(native.iterations.numpy()), [{n: v.numpy() for n, v in entry.items()}
                                                 for entry in native.slot_variables], counts)

    def load_optimizer_state(self, optimizer, step, slots, param_steps):
        native = optimizer.native
        native.iterations.assign(step)
        for variable, count in zip(native.param_steps or [], param_steps or []):
            variable.assign(count)
        for variables, entry in zip(native.slot_variables, slots):
            for name, value in entry.items():
                # ``assign``'s NumPy conversion copies any array, so a user's stays theirs with no copy made before;
                # a slot given away (``given_slot``: staged by load_checkpoint, every slot read before the first is
                # written) is adopted as it is (``donated_tensor``), so that writing them allocates nothing beyond the
                # staged bytes (copied, tests/load_memory_job.py's checkpoint peaked at up to 1.50x its size)
                given = self.given_slot(value, variables[name].dtype.as_numpy_dtype)
                self.assign(variables[name], self.donated_tensor(given) if given is not None else value)

    def apply_gradients(self, optimizer, grads):
        optimizer.native.last_flag = None
        optimizer.native.apply(grads)

    def last_step_finite(self, optimizer):
        # the flag the last train step returned (already on the host), read once; else the flag variable
        flag, optimizer.native.last_flag = getattr(optimizer.native, "last_flag", None), None
        return bool(flag if flag is not None else optimizer.native.finite.numpy())

    def train_step(self, model, loss_fn, optimizer, with_outputs=False, eager=False, accumulate=1):
        params = optimizer.params
        native = optimizer.native
        if accumulate > 1:
            with tf.device(self.current_device_name()):
                native.prepare_accumulation(accumulate)
        local_window = accumulate > 1 and tf_distributed.accumulates_locally()  # one all-reduce per update

        def closes_window():  # a local window: whether this call is its last micro-step (a graph of its own)
            return local_window and native.window_position + 1 >= accumulate

        def advance():
            native.window_position = (native.window_position + 1) % accumulate

        def train_step(x, y, *inputs):
            mask = trainable_mask(params)  # at trace time: a frozen parameter gets no gradient and no update
            with tf.GradientTape() as tape:
                outputs = model(x, *inputs)
                loss = loss_fn(outputs, y)
            found = tape.gradient(loss, [p for p, m in zip(params, mask) if m])
            if local_window:  # this rank's own micro-steps: the window is averaged over the ranks at its update
                checked, reduce, closes = loss, tf_distributed.reduce_in_step, closes_window()
            else:  # in a process group: over every rank
                (found, checked), reduce, closes = tf_distributed.average_gradients(found, loss), None, False
            found = iter(found)
            # skipped when the loss or a gradient is not finite; one micro-step of ``accumulate``; once per step
            # with several devices in this process (tf_distributed.update_once)
            grads = [next(found) if m else None for m in mask]
            finite = tf_distributed.update_once(lambda: native.apply(grads, checked, accumulate, reduce, closes))
            return ((loss, outputs) if with_outputs else loss), finite

        # in a process group: run in the strategy's replica context, rank 0's weights on every rank
        train_step = tf_distributed.data_parallel(train_step, rank_0_state(model, loss_fn, optimizer))
        train_step = tf_function.with_summary(train_step, with_outputs, flagged=True)  # (fit's metrics in the graph)

        if eager:
            device = self.current_device_name()

            def eager_step(*args):
                with tf.device(device):
                    return train_step(*[to_graph_input(a) for a in args])

            return _FlaggedStep(eager_step, native, advance if local_window else None)
        return _FlaggedStep(PerModeGraphs(model, train_step, self.current_device_name(),
                                          extra_key=lambda: (trainable_mask(params), closes_window()),
                                          name=f"train_step of {type(model).__name__}"), native,
                            advance if local_window else None)

    def mixed_precision_train_step(self, model, loss_fn, optimizer, precision, with_outputs=False, eager=False,
                                   accumulate=1):
        return tf_precision.train_step(self, model, loss_fn, optimizer, precision, with_outputs, eager, accumulate)

    def predict_function(self, model):
        cache = model.structure_cache()  # emptied when the model's structure changes (a replaced head)
        if "predict" not in cache:
            cache["predict"] = PerModeGraphs(model, lambda x: model(x), self.current_device_name())
        return cache["predict"]

    def value_and_grad(self, f, args, argnums, params):
        args, given, argnums = list(args), params, argnums or ()
        params = params or []
        check_float([args[i] for i in argnums], "argument")
        check_float(params, "parameter")
        for i in argnums:  # a tensor in its own dtype (torch.autograd's), an array in unidl's
            args[i] = args[i] if self.is_tensor(args[i]) else to_graph_input(args[i])
        arguments = [args[i] for i in argnums]
        with tf.GradientTape(watch_accessed_variables=given is not None) as tape:
            for t in arguments:
                tape.watch(t)
            value = f(*args)
        check_scalar(value, self.name)
        # one backward pass for both: None for what the value does not use, then zeros for such an argument
        grads = tape.gradient(value, arguments + list(params), unconnected_gradients=tf.UnconnectedGradients.NONE)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return value, [tf.zeros_like(t) if g is None else g for g, t in zip(grads, arguments)] + grads[len(arguments):]

    def probe_forward(self, forward, x):
        return forward(self.tensor(x))

    def check_shapes(self, model, loss_fn, x, y):
        x, y = to_graph_input(x), to_graph_input(y)
        specs = (tf.TensorSpec(x.shape, x.dtype), tf.TensorSpec(y.shape, y.dtype))
        # the forward and loss traced into a graph that is never run nor made a function: a tf.function's concrete
        # function (its graph converted to a function definition, and control dependencies added for a run) cost a
        # third of this check
        with tracing_for_shapes():
            func_graph.func_graph_from_py_func("shape_check", lambda a, b: loss_fn(model(a), b), specs, {},
                                               add_control_dependencies=False)

    # ---- compiled functions and custom gradients ---------------------------
    def function(self, fn, jit_compile, name):
        return GraphFunction(fn, jit_compile=jit_compile, device=self.current_device_name(), name=name,
                             static_python_values=True)

    def keras_train_step_function(self, step, name):
        # numbers as graph inputs, as this backend's own train steps take them (PerModeGraphs)
        return GraphFunction(step, device=self.current_device_name(), name=name)

    def looping_composite(self, function, arrays):
        # (keyed on the backend in force, this one or Keras on TensorFlow, whose ops the trace runs)
        return tf_eager.compiled_when_eager(function, config.get_backend(), self.current_device_name(),
                                            config.get_dtype())

    def custom_gradient(self, forward_fn):
        return tf_function.custom_gradient(forward_fn)

    def model_graph(self, model, x):
        return tf_graph.model_graph(model, tf_graph.each(to_graph_input, x), self.current_device_name())

    # ---- export ------------------------------------------------------------
    def export_formats(self):
        return EXPORT_FORMATS

    def export(self, module, path, format, input_shape, input_dtype):
        export_module(module, path, format, input_shape, input_dtype)


def _seed_state(seed: int, algorithm) -> np.ndarray:
    """The state ``tf.random.create_rng_state(seed, algorithm)`` gives for ``0 <= seed < 2**63``: the seed in the
    first word of the algorithm's state, zeros after it."""
    size = 2 if int(getattr(algorithm, "value", algorithm)) == tf.random.Algorithm.THREEFRY.value else 3
    return np.array([seed] + [0] * (size - 1), np.int64)


class _FlaggedStep:
    """A train step returning ``(result, finite)``: keeps the flag on the optimizer (``last_step_finite``
    reads it without another eager op, the guard's whole per-step cost) and returns the result."""

    def __init__(self, run, native, after=None):
        self._run, self._native, self._after = run, native, after  # ``after()``: called after each step

    def __call__(self, *args):
        result, self._native.last_flag = self._run(*args)
        if self._after is not None:
            self._after()
        return result

    @property
    def trace_count(self):
        return getattr(self._run, "trace_count", None)

    @property
    def concrete_functions(self):
        """The step's traced graphs (``PerModeGraphs.concrete_functions``); empty for an eager step."""
        return getattr(self._run, "concrete_functions", [])
