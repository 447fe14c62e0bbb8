"""The JAX backend: parameters are ``JaxVariable``s holding JAX arrays; a training step is one ``jax.jit``
function over (parameters, buffers, optimizer state, random key, batch), whose results are written
back into the variables after each step (so ``state_dict``, checkpoints and export see them).

Loading it turns on ``jax_enable_x64`` for the whole process (unidl's float64 mode and int64 labels need it):
unidl's tensors keep their dtypes, but the user's own ``jnp.arange``/``jnp.linspace``/``jnp.array(0.5)`` give
int64 and float64 from then on (docs/guide.md, "Backends and devices"; docs/guarantees.md, "Known differences")."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

from unidl import threads as unidl_threads
from unidl.fit_options import rank_0_state


def xla_thread_flags(count: int) -> str:
    """The XLA_FLAGS that size XLA's CPU thread pool, read once, when JAX creates its CPU client: one thread, or
    XLA's own pool (XLA takes no count: the folklore's bare ``intra_op_parallelism_threads=N`` is no flag, and XLA
    stopped reading XLA_FLAGS at it, ignoring every flag after it)."""
    return f"--xla_cpu_multi_thread_eigen={'false' if count == 1 else 'true'}"


if unidl_threads.requested() is not None and xla_thread_flags(unidl_threads.requested()) not in os.environ.get(
        "XLA_FLAGS", ""):  # UNIDL_NUM_THREADS / set_num_threads before JAX's client starts: it takes effect
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_thread_flags(unidl_threads.requested())).strip()

import jax  # noqa: E402

# unidl's float64 mode and int64 labels need it; float32 stays float32. Process-wide (the module doc): JAX reads the
# flag when it traces and creates arrays, which unidl's compiled steps and their results outlive any one call
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax.extend.core import Literal  # noqa: E402
import random  # noqa: E402
import numpy as np  # noqa: E402

from unidl import config  # noqa: E402
from unidl import random as unidl_random  # noqa: E402
from unidl.autograd import check_float, check_scalar  # noqa: E402
from unidl.backends.interface import Backend as BackendInterface  # noqa: E402
from unidl.errors import DeviceUnavailableError  # noqa: E402
from unidl.io.buffers import aligned_zeros, is_undrawn_zeros  # noqa: E402
from unidl.backends.jax import distributed as jax_distributed  # noqa: E402
from unidl.backends.jax import ops as jax_ops  # noqa: E402
from unidl.backends.jax import precision as jax_precision  # noqa: E402
from unidl.backends.jax import variable as jax_variable  # noqa: E402
from unidl.backends.jax.eager import compiled_when_eager  # noqa: E402
from unidl.backends.jax.export import export_formats, export_module  # noqa: E402
from unidl.backends.jax.function import (JaxFunction, StatefulJit, _CONCRETIZATION, _is_array, _moved_to,  # noqa: E402
                                         _signature, checkified, custom_gradient, inside_a_trace,
                                         raise_failed_check, step_result, traced_forward_error)
from unidl.backends.jax.module import NativeModule  # noqa: E402
from unidl.backends.jax.optimizer import JaxOptimizer  # noqa: E402
from unidl.backends.jax.variable import JaxVariable  # noqa: E402
from unidl.nn.module import trainable_mask, training_modes  # noqa: E402
from unidl.tracing import (python_randomness_guard, python_randomness_preserved, python_randomness_state,  # noqa: E402
                           warn_running_eagerly)

_DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
#: the same as NumPy's dtypes: an array's dtype compares with them in C (with ``jnp.float32``, a Python ``__eq__``)
_NUMPY_DTYPES = {name: np.dtype(dtype) for name, dtype in _DTYPES.items()}
_JAX_DEVICES: dict = {}  # unidl's device name ('cpu', 'cuda:N') -> the jax device

# donated buffers that XLA cannot reuse on some platforms are only a missed optimisation
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


class KeyStream:
    """The backend's random state for dropout: a key in a ``JaxVariable`` that each use splits, so
    compiled steps thread it as state and every step draws new masks."""

    def __init__(self, seed, device):
        # made when the backend loads, so that a first draw inside a trace (``ud.function``) finds a variable to
        # thread (a variable made in the trace held a tracer: the same mask at every call, and the next eager
        # draw raised); a NumPy key, which does not start XLA: ``jax.distributed.initialize`` (the jax engine's
        # ``start``) cannot join a job after XLA started, also after ``ud.manual_seed``
        self.state = JaxVariable(self._key(seed), trainable=False)
        self._device = device  # () -> the jax device unidl trains on now

    @staticmethod
    def _key(seed) -> np.ndarray:
        """``jax.random.PRNGKey(seed)`` (threefry's two uint32 words) made by NumPy, without starting XLA."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        return np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)

    def reset(self, seed) -> None:
        """Start the stream again from ``seed`` (``ud.manual_seed``)."""
        self.restore(self._key(seed))

    def restore(self, key: np.ndarray) -> None:
        """Make ``key`` (NumPy's) the stream's key (``set_rng_state``): once XLA has started, on the device unidl
        trains on, as a compiled step hands it back, so that a step or ``ud.function`` compiled before takes it as
        the same kind of argument (a NumPy key made each compile again: jax.jit keys its programs by placement);
        before, as NumPy's, which does not start XLA (see ``__init__``)."""
        from jax._src import xla_bridge  # whether XLA started (no public query)

        if xla_bridge.backends_are_initialized():
            # (a device JAX does not see, torch's GPU that ``ud.manual_seed`` seeds too: the first draw says so)
            with contextlib.suppress(DeviceUnavailableError):
                key = jax.device_put(key, self._device())
        self.state.value = key

    def next_key(self):
        """A fresh key. Outside a trace the stream first moves to the device unidl trains on: the key is made where
        JAX's default device is (at the backend's load, at ``manual_seed``, ``set_rng_state``), which is not unidl's
        when the two differ (``UNIDL_DEVICE=cpu`` on a GPU machine), and an eager draw there makes a mask on the
        wrong device. (A compiled step threads the key as state and moves it with the rest: ``StatefulJit``.)"""
        key, subkey = jax.random.split(_moved_to(self.state.value, self._device()))
        self.state.value = key
        return subkey


def _owned(array: np.ndarray, device):
    """``array`` on ``device`` in a buffer of its own. On the CPU ``jax.device_put`` shares a suitably
    aligned NumPy array instead of copying it, so a caller's later edit of that array (a state dict it
    keeps, a batch buffer it refills) would silently change the model; copy exactly when that happens, in NumPy
    (a copy that JAX alone holds may share its buffer): ``placed.copy()`` was an XLA program of its own, compiled
    for each new shape the first time an input happened to be aligned (a compile at a random call)."""
    placed = jax.device_put(array, device)
    if isinstance(placed, jax.core.Tracer):  # inside a trace: a constant of the compiled program, not a buffer
        return placed
    if array.size and placed.unsafe_buffer_pointer() == array.ctypes.data:
        return jax.device_put(np.array(array, copy=True), device)
    return placed


def _device_name(device) -> str:
    return "cpu" if device.platform == "cpu" else f"cuda:{device.id}"


def _extra_step_input(value, to_input):
    """An extra step input as ``jax.jit`` gets it: a Python or NumPy number as a Python value (a static argument,
    one trace per value), anything else as an array (a graph input)."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    return to_input(value)


@functools.cache  # one jit per composite, backend, device and dtype, its compilations shared by every backend object
def _compiled_composite(function, arrays, backend, device, dtype):
    """``Backend.composite``: ``function`` run as one ``jax.jit`` of its body when called eagerly, its
    ``arrays`` the jit's arrays and its options static (``compiled_when_eager``). Keyed on the backend in force
    (JAX or Keras on JAX), whose ops the trace runs, and on the device and dtype in force, which a composite's
    constants (``ud.tensor``) and integer means read: a trace bakes them in."""
    del backend, device, dtype  # (keys only)
    compiled = compiled_when_eager(*arrays)(function)

    @functools.wraps(function)
    def call(*args, **kwargs):
        # a trace that checkify transforms stages value checks (a gather's index range) into the body: they
        # must not enter the jit cache that eager calls share, where no checkify would take them out
        if jax_ops.in_checkified_trace():
            return function(*args, **kwargs)
        return compiled(*args, **kwargs)

    return call


class Backend(BackendInterface):
    name = "jax"
    ops = jax_ops
    keras_state_in_place = False  # Keras on JAX swaps variable values through its StatelessScope
    keras_writes_saved_model = True
    shares_numpy_memory = True  # an aligned NumPy array becomes a CPU array without a copy (see _owned)
    # max_pool2d: PyTorch's NaN rule (keras.ops' max pooling gives a NaN's gradient at random); scan: the checks of
    # its body raised as the eager loop raises them (keras.ops' lax.scan left them to checkify, which missed them in
    # a differentiated step)
    keras_native_ops = ("max_pool2d", "scan")
    summary_in_step = True  # (fit's training metrics inside the step: each function compiled is a program per shape)
    reuses_train_steps = True  # (a second fit's step is the first's: its programs are not compiled again)

    def __init__(self):
        self._generator = KeyStream(unidl_random.initial_seed(), self.current_device)
        self.check_ops()

    # ---- framework and devices -------------------------------------------
    def is_concrete(self, tensor):
        return not isinstance(jax_variable.unwrap(tensor), jax.core.Tracer)

    def versions(self):
        return {"jax": jax.__version__}

    def distributed_engine(self):
        return jax_distributed.Engine(self)

    def _gpus(self):
        try:  # (this process's: in a job of several, jax.devices lists every process's, the others' out of reach)
            return jax.local_devices(backend="gpu")
        except RuntimeError:
            return []

    def devices(self):
        return ["cpu"] + [f"cuda:{i}" for i in range(len(self._gpus()))]

    def gpu_support(self):
        import importlib.metadata

        # jaxlib itself is CPU-only; CUDA comes as a PJRT plugin package (jax[cuda12] installs jax-cuda12-plugin)
        plugins = [f"{name} {importlib.metadata.version(name)}" for name in ("jax-cuda13-plugin", "jax-cuda12-plugin",
                                                                              "jax-rocm7-plugin", "jax-rocm60-plugin")
                   if _installed(name)]
        return {"build": plugins[0] if plugins else None, "gpus": [str(d) for d in self._gpus()],
                "how": "the jax CUDA/ROCm plugin packages, jax.devices('gpu')"}

    def _jax_device(self, device: str):
        found = _JAX_DEVICES.get(device)
        if found is None:  # (one lookup per name: a step's inputs compare against it)
            found = _JAX_DEVICES[device] = (jax.local_devices(backend="cpu")[0] if device == "cpu"
                                            else self._gpus()[int(device.split(":")[1])])
        return found

    def device_scope(self, device):
        return jax.default_device(self._jax_device(device))

    def keras_device(self, device):
        return self._jax_device(device)  # (this process's own: in a job Keras's "cpu" is rank 0's device)

    def current_device(self):
        return self._jax_device(config.resolve_device(config._requested_device(), self))

    def device_of(self, tensor):
        array = jax_variable.unwrap(tensor)
        return _device_name(next(iter(array.devices())))

    def set_num_threads(self, intra_op, inter_op):
        # XLA reads its CPU thread flags once, when the backend client starts (before unidl's first array)
        flags = xla_thread_flags(intra_op)
        if flags not in os.environ.get("XLA_FLAGS", ""):
            warnings.warn(f"set_num_threads({intra_op}): XLA's CPU threads are fixed when JAX starts; for this "
                          f"process set XLA_FLAGS='{flags}' before importing jax (processes started from here "
                          f"inherit it now)", RuntimeWarning, stacklevel=3)
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()

    def set_float32_precision(self, mode):
        # jax's DEFAULT is TF32 on GPUs; the config is part of jax.jit's cache key, so steps trace again
        jax.config.update("jax_default_matmul_precision", "highest" if mode == "highest" else "tensorfloat32")

    def seed(self, seed):
        self._generator.reset(seed)

    def get_rng_state(self):
        return {"dropout": np.asarray(self._generator.state.value).tolist()}

    def set_rng_state(self, state):
        self._generator.restore(np.asarray(state["dropout"], dtype=np.uint32))

    def generator(self):
        return self._generator

    # ---- tensors ---------------------------------------------------------
    def tensor(self, value, dtype=None):
        value = jax_variable.unwrap(value)
        if isinstance(value, jax.Array):
            floating = jnp.issubdtype(value.dtype, jnp.floating)
            target = _DTYPES[dtype or config.get_dtype()] if floating or dtype else value.dtype
            return jax.device_put(value.astype(target), self.current_device())
        array = np.asarray(value)
        if array.dtype.kind == "f" or dtype is not None:
            converted = array.astype(dtype or config.get_dtype())
        elif array.dtype.kind in "iu":
            converted = array.astype(np.int64)
        elif array.dtype.kind != "b":
            raise TypeError(f"cannot make a tensor from an array of dtype {array.dtype}")
        else:
            return _owned(array, self.current_device())  # later changes to the array never show
        return jax.device_put(converted, self.current_device())  # (astype's new array: JAX alone holds it)

    def to_numpy(self, tensor):
        if isinstance(tensor, np.ndarray):
            return tensor
        return np.array(jax_variable.unwrap(tensor))

    def is_tensor(self, value):
        return isinstance(value, (jax.Array, JaxVariable))

    def is_symbolic_size(self, size):
        from jax import export  # (a shape-polymorphic export's batch size)

        return export.is_symbolic_dim(size)

    def to_input(self, value):
        """Step inputs: JAX arrays of unidl's float dtype pass through; everything else is converted. (One on
        another device than the parameters' moves to theirs when ``jax.jit`` refuses it, ``StatefulJit``: no test
        on every step; an eager step moves its inputs to unidl's device, ``compile_step``.)"""
        if isinstance(value, jax.Array) and (value.dtype == _NUMPY_DTYPES[config.get_dtype()]
                                             or not jnp.issubdtype(value.dtype, jnp.floating)):
            return value
        return self.tensor(value)

    def step_inputs(self, x, y) -> tuple:
        """``(to_input(x), to_input(y))``, the dtype in force looked up once for both (every step converts both: on
        a small net a step's Python is its cost)."""
        dtype = _NUMPY_DTYPES[config.get_dtype()]
        if not (isinstance(x, jax.Array) and (x.dtype == dtype or not jnp.issubdtype(x.dtype, jnp.floating))):
            x = self.tensor(x)
        if not (isinstance(y, jax.Array) and (y.dtype == dtype or not jnp.issubdtype(y.dtype, jnp.floating))):
            y = self.tensor(y)
        return x, y

    # ---- parameters ------------------------------------------------------
    def parameter(self, value, trainable=True, dtype=None):
        if is_undrawn_zeros(value):  # ud.load's build: fresh zero pages, which jax shares on the CPU
            array = aligned_zeros(value.shape, dtype or config.get_dtype())  # nobody else holds them
            return JaxVariable(jax.device_put(array, self.current_device()), trainable=trainable)
        array = np.asarray(value, dtype=dtype or config.get_dtype())
        return JaxVariable(_owned(array, self.current_device()), trainable=trainable)

    def is_parameter(self, value):
        return isinstance(value, JaxVariable) and value.trainable  # trainable: a parameter, not a buffer

    def assign(self, variable, value):
        # (a variable of an ended trace holds its tracer, which has no device: the device in force)
        current = variable.value
        device = self.current_device() if isinstance(current, jax.core.Tracer) else next(iter(current.devices()))
        with jax_ops.unless_a_check_failed([variable]):  # (in a checkified trace: as eagerly, not after a failure)
            if isinstance(value, jax.Array) and value.dtype == variable.dtype:  # immutable: sharing it is safe
                variable.value = jax.device_put(value, device)
            else:
                variable.value = _owned(np.asarray(value, dtype=variable.dtype), device)

    def donated_tensor(self, array):
        # the file reader never touches ``array`` again, so the variable may keep its (aligned) memory
        if isinstance(array, np.ndarray) and array.size:
            return jax.device_put(array, self.current_device())
        return array

    def keras_donated_tensor(self, array):
        """``donated_tensor`` for a Keras variable (the keras backend's, on Keras-on-JAX): placed as Keras places its
        variables' values, on JAX's default device in unidl's device scope (``keras_device``) but not committed
        there. A committed value (``donated_tensor``'s, as this backend's own variables hold) beside Keras's
        uncommitted ones made Keras's jitted train step lower and compile its program twice after every
        ``load_checkpoint`` or ``ud.load`` (the mixed placement, then the committed one of its outputs): seconds of
        XLA's CPU compiler per resume."""
        if isinstance(array, np.ndarray) and array.size:
            with jax.default_device(self.current_device()):
                return jax.device_put(array)
        return array

    @contextlib.contextmanager
    def unless_a_check_failed(self, variables):
        """Keras-on-JAX's writes (``variables``: Keras's, read and written through their own API, which a traced
        step's ``StatelessScope`` holds) inside the block stand only where every check staged before it in this
        checkified trace passed, as ``jax_ops.unless_a_check_failed`` selects unidl's own: a compiled call runs whole
        before its checks are read, and an eager call that raised made no write after the check. None for a
        variable whose value the trace's caller gives back where a check failed (``variables_given_back``: in
        Keras-on-JAX's train step the weights and the optimizer's variables, whose update follows every check of
        the step): a ``jnp.where`` per optimizer variable, 24 of a two-layer Adam step's 81 selections, would select
        what that step discards. The forward's writes (a BatchNorm's statistics) are selected there too, as they
        stand where the checks before them held, as torch's eager step keeps them."""
        given_back = jax_ops.variables_given_back()
        selected = [variable for variable in variables if id(variable) not in given_back]
        passed = jax_ops.checks_passed() if selected else None
        if passed is None:
            yield
            return
        before = [variable.value for variable in selected]
        yield
        for variable, old in zip(selected, before):
            new = variable.value
            if new is not old:
                variable.assign(jnp.where(passed, new, old))

    def write_state(self, variable, value):
        # a compiled call runs whole before its checks are read: a write after a check that failed (batch norm's
        # statistics after an index out of range) stands not, as an eager call raised before it; one before, as eagerly
        with jax_ops.unless_a_check_failed([variable]):
            variable.assign(value)
        return variable

    # ---- modules and training ---------------------------------------------
    def native_module(self, module):
        return NativeModule(module, self._generator)

    def optimizer(self, optimizer):
        with self.device_scope(config.resolve_device(config._requested_device(), self)):
            return JaxOptimizer(optimizer, jax_ops)

    def set_learning_rate(self, optimizer, lr, group=0):
        jax_variable.written_in_place(optimizer.native.learning_rates[group], lr)

    def set_group_options(self, optimizer, group, keys):
        from unidl.backends.jax.optimizer import set_group_options

        set_group_options(optimizer, group, keys)

    def optimizer_state(self, optimizer):
        native = optimizer.native
        counts = None if native.param_steps is None else [int(v.value) for v in native.param_steps]
        return int(native.iterations.value), [{n: self.to_numpy(v) for n, v in entry.items()}
                                              for entry in native.slot_variables], counts

    def load_optimizer_state(self, optimizer, step, slots, param_steps):
        native = optimizer.native
        jax_variable.written_in_place(native.iterations, step)  # (on the state's device, not JAX's default one)
        for variable, count in zip(native.param_steps or [], param_steps or []):
            jax_variable.written_in_place(variable, count)
        for variables, entry in zip(native.slot_variables, slots):
            for name, value in entry.items():
                given = self.given_slot(value, variables[name].dtype)  # (the variable may keep its memory)
                self.assign(variables[name], self.donated_tensor(given) if given is not None else value)

    def apply_gradients(self, optimizer, grads):
        # eagerly one compiled program (``JaxOptimizer.guarded_apply``); inside a trace part of the caller's
        optimizer.native.apply([None if g is None else self.to_input(g) for g in grads])

    def last_step_finite(self, optimizer):
        # np.asarray waits for the step and reads the flag in one go; bool() on the JAX array takes a slower path
        # (about 10-30 us a step on the CPU, a tenth of the two-layer net's step); ``_value``: read as bookkeeping,
        # as the compiled step reads its variables (``value`` would record it inside a trace)
        return bool(np.asarray(optimizer._native.finite._value))

    def _model_state(self, model, optimizer=None, loss_fn=None) -> list:
        """The variables a compiled step of ``model`` threads: the model's, the optimizer's and the loss module's
        (a class ``weight`` buffer: read by the step, which would otherwise find it outside its state and be traced
        again, ``StatefulJit``), and the generator's."""
        variables = [v for _, v in model.named_parameters()] + [b for _, b in model.named_buffers()]
        known = {v.serial for v in variables}
        if optimizer is not None:
            variables += [p for p in optimizer.params if p.serial not in known] + optimizer.native.variables()
            known = {v.serial for v in variables}
        if hasattr(loss_fn, "named_buffers"):
            variables += [v for _, v in (*loss_fn.named_parameters(), *loss_fn.named_buffers())
                          if isinstance(v, jax_variable.JaxVariable) and v.serial not in known]
        return variables + [self._generator.state]


    def train_step(self, model, loss_fn, optimizer, with_outputs=False, eager=False, accumulate=1):
        params = optimizer.params
        if accumulate > 1:
            optimizer.native.prepare_accumulation(accumulate)  # before the state list below is taken
        name = f"train_step of {type(model).__name__}"
        forward_name = f"the forward of {type(model).__name__} in ud.train_step"

        def step(x, y, *inputs):
            def loss_of():
                outputs = model(x, *inputs)
                return loss_fn(outputs, y), outputs

            mask = trainable_mask(params)  # at trace time (the static key): frozen parameters are constants
            active = [p for p, m in zip(params, mask) if m]
            (loss, outputs), found = self._value_and_grad(loss_of, (), None, active, with_aux=True, name=forward_name)
            found = iter(found)
            # in a data-parallel job: the job's gradients, and its loss for the guard (``average_in_step``; a
            # window's micro-step: this rank's, the window averaged when it closes)
            checked, grads, present = jax_distributed.average_in_step(
                loss, [next(found) if m else None for m in mask], params, accumulate)
            # skipped if not finite; one micro-step of ``accumulate``
            optimizer.native.apply(grads, checked, accumulate, present)
            return step_result(loss, outputs, y, with_outputs)

        variables = self._model_state(model, optimizer, loss_fn)
        # (in a job: rank 0's start on every rank, the loss's own parameters' too)
        jax_distributed.broadcast_from_rank_0(rank_0_state(model, loss_fn, optimizer))
        run, _ = self.compile_step(step, variables, model, params, name, eager)
        return run  # (compiled: a ``_CompiledStep``, which counts its traces)

    def compile_step(self, step, variables, model, params, name, eager):
        """``(run, compiled)``: ``step(x, y, *inputs)`` as one ``StatefulJit`` over ``variables`` (state in, state
        out, donated), re-traced per train/eval mode and frozen set, or run eagerly with ``eager=True``
        (``compiled`` is then unused). Shared by the plain and the mixed-precision train steps."""
        # a smaller last batch is one more trace (XLA compiles per shape): bounded, so no RetraceWarning; keyed on
        # the modes of the model's tree as it is at each call (``training_modes``: cached on the mode version), as
        # tensorflow's ``PerModeGraphs``
        mask = jax_variable.trainable_mask_cached(params)  # (recomputed only after a requires_grad change)
        compiled = StatefulJit(step, lambda: variables, name, donate=True, warn_retrace=False,
                               static_key=lambda: (training_modes(model), mask()),
                               keyed_modules=model.modules)
        to_input = self.to_input
        if eager:
            # (on unidl's device: an eager step's ops would refuse arrays on two)
            return (lambda *args: step(*_moved_to(tuple(to_input(a) for a in args), self.current_device()))), compiled
        return _CompiledStep(compiled, to_input, self.step_inputs, model), compiled

    def mixed_precision_train_step(self, model, loss_fn, optimizer, precision, with_outputs=False, eager=False,
                                   accumulate=1):
        return jax_precision.train_step(self, model, loss_fn, optimizer, precision, with_outputs, eager, accumulate)

    def predict_function(self, model):
        cache = model.structure_cache()  # emptied when the model's structure changes (a replaced head)
        if "predict" not in cache:
            variables = self._model_state(model)
            compiled = StatefulJit(lambda x: model(x), lambda: variables, f"forward of {type(model).__name__}",
                                   static_key=lambda: training_modes(model), warn_retrace=False,
                                   keyed_modules=model.modules)
            cache["predict"] = _EagerFallback(compiled, model, self.to_input, f"the forward of {type(model).__name__}")
        return cache["predict"]

    def evaluation_function(self, model, evaluate, name, loss_fn=None):
        # over the model's state (and the loss's buffers), as ``predict_function``'s forward: not every live
        # variable (``ud.function``'s), which a process of many models would pass to every call
        variables = self._model_state(model, None, loss_fn)
        compiled = StatefulJit(evaluate, lambda: variables, name, static_key=lambda: training_modes(model),
                               warn_retrace=False, keyed_modules=model.modules)
        return _EagerFallback(compiled, evaluate, self.to_input, name)

    def value_and_grad(self, f, args, argnums, params):
        return self._value_and_grad(f, args, argnums, params,
                                    name=f"the function {getattr(f, '__name__', type(f).__name__)!r} given to ud.grad")

    def value_and_grad_of_values(self, f, values):
        """``((value, aux), grads)`` of ``f(*values) -> (value, aux)`` with respect to every one of ``values``
        (arrays), None for a value the result does not depend on (PyTorch's rule). The keras backend
        differentiates Keras's variables on Keras-on-JAX through it: their values go in as ``values``
        and ``f`` reads them through a ``keras.StatelessScope``."""
        return self._value_and_grad(f, values, tuple(range(len(values))), None, with_aux=True, none_for_unused=True)

    def inputs_used(self, f, values):
        """For each of ``values`` (a list of arrays), whether ``f(values)`` (a scalar) depends on it: PyTorch's rule
        for which of them get a gradient (``jax.grad`` gives zeros instead of None). ``f`` is traced once more,
        abstractly; it must be pure (the keras backend's Keras-on-JAX train step asks for its loss's trainable
        variables)."""
        return _needed_inputs(jax.make_jaxpr(f)(values).jaxpr)

    #: what tracing raises for Python control flow on a traced value (``ud.function`` then runs eagerly)
    tracer_value_errors = _CONCRETIZATION

    def eval_shape(self, f, *args):
        """``f(*args)`` traced abstractly (``jax.eval_shape``): shapes and dtypes only, nothing computed; the
        arguments that are not arrays (Python numbers, strings, None, functions) go in as they are."""
        _, dynamic, rebuild = _with_static_arguments(args)
        return jax.eval_shape(lambda values: f(*rebuild(values)), dynamic)

    @staticmethod
    def concrete_values(values: list):
        """``values`` (arrays, or the tracers of a transformation running eagerly) as the arrays they hold, or None
        where one is abstract (a ``jax.jit`` being traced). The keras backend writes so the state Keras-on-JAX's
        eager step computed before an error (keras/module.py ``_writes_before_the_error_noted``), which Keras's
        ``jax.value_and_grad`` would discard with the error."""
        return concrete_values(values)

    def value_checked(self, f, given_back=None):
        """``(checked, raise_failed)``: ``checked(*args)`` is ``(failed checks, f(*args))``, with the value checks
        of unidl's ops inside ``f`` (an index or a label out of range, a size known only at run time) staged into
        its trace by checkify, as in this backend's compiled steps, for a ``jax.jit`` of ``checked``;
        ``raise_failed(failed checks)`` raises unidl's error for one that failed (nothing otherwise). The keras
        backend checks Keras-on-JAX's own jitted train and evaluation steps so (its ``jax.jit`` was not
        checkified: they computed with a label out of range). ``given_back``: a function of no arguments giving the
        variables whose values the caller gives back as ``f`` was given them where a check failed, read as ``f`` is
        traced; Keras's writes to them inside ``f`` are not selected one by one (``unless_a_check_failed``)."""
        return value_checked(f, given_back)

    def jit_of_values(self, f, name: str, reads=None):
        """``f(values, *args)`` (a pure function of arrays) compiled by ``jax.jit``, traced once per input
        signature: what ``ud.function`` compiles on Keras-on-JAX, with Keras's variables' values as ``values``.
        ``reads``: the user's function ``f`` runs, whose globals and closure the trace's randomness guard watches
        (``python_randomness_guard``)."""
        return _NamedJit(f, name, reads)

    def _value_and_grad(self, f, args, argnums, params, with_aux=False, none_for_unused=False, name=None):
        """``value_and_grad``; with ``with_aux``, ``f`` returns ``(value, aux)`` and the result is
        ``((value, aux), grads)``. Variables ``f`` writes (batch norm statistics, the dropout key)
        come out as auxiliary results and are written after the transformation, so no tracer leaks. Called eagerly,
        an ``f`` that raises (a label out of range in the loss, after the forward) leaves the variables it wrote
        before the error written, as torch's forward writes them in place before its loss raises
        (``_concrete_writes``); inside a trace the compiled function's checks select them.

        JAX differentiates by tracing, even outside ``jax.jit``: a value read in Python (``if``, ``float``) that
        depends on what is differentiated cannot be had there. Called eagerly (``ud.grad``, ``eager=True``), that is
        unidl's ``GraphConstructError`` naming ``f`` (``name``) and the fix (JAX's ConcretizationTypeError before);
        inside another trace JAX's error goes on to the compiled function's own handling."""
        args, argnums, params = list(args), argnums or (), params or []
        check_float([args[i] for i in argnums], "argument")
        check_float(params, "parameter")
        # a tensor in its own dtype (torch.autograd's), an array in unidl's; then the parameters' values: one
        # transformation, one backward pass for both
        targets = [jax_variable.unwrap(args[i]) if isinstance(args[i], (jax.Array, JaxVariable))
                   else self.to_input(args[i]) for i in argnums] + [p.value for p in params]
        count = len(argnums)
        live = jax_variable.live()
        before = [v._value for v in live]  # (bookkeeping: ``_value``, which a trace does not record as a read)
        randomness = python_randomness_state()  # the usage analysis below replays the same draws
        target_serials = [p.serial for p in params]

        kept = {}  # (the writes of an eager ``f`` that raised, by index in ``live``: concrete values)

        def value_of(target_values):
            call_args = list(args)
            for i, t in zip(argnums, target_values[:count]):
                call_args[i] = t
            for p, t in zip(params, target_values[count:]):
                p.value = t
            given = dict(zip(target_serials, target_values[count:]))

            def writes():
                # a differentiated parameter the forward wrote (Embedding's max_norm renormalization) keeps what it
                # wrote, as torch's in-place write, not the value it was given
                return {i: v._value for i, v in enumerate(live)
                        if v._value is not (given[v.serial] if v.serial in given else before[i])}

            try:
                value = f(*call_args)
                value, aux = value if with_aux else (value, None)
                check_scalar(value, self.name)
                written = writes()
            except _CONCRETIZATION:
                raise
            except BaseException:  # (a KeyboardInterrupt too: the writes before it stand, as in torch)
                kept.update(_concrete_writes(writes()))
                raise
            finally:
                for v, b in zip(live, before):
                    v.value = b
            return jnp.reshape(value, ()), (value, aux, written)

        try:
            (_, (value, aux, written)), grads = jax.value_and_grad(value_of, has_aux=True)(targets)
        except _CONCRETIZATION as error:
            if inside_a_trace((targets, args)) or jax_variable.recording():
                raise
            raise _differentiated_value_error(error, name or "the differentiated function") from None
        except BaseException:
            if not (inside_a_trace((targets, args)) or jax_variable.recording()):  # (a trace's checks select them)
                for index, new in kept.items():  # (the transformation has ended: concrete values, no tracer leaks)
                    live[index].value = new
            raise
        grads = list(grads)
        if params or none_for_unused:  # PyTorch's rule: None for what the value does not depend on
            with python_randomness_preserved(replay=randomness):
                used = _used_inputs(lambda t: value_of(t)[0], targets, live, before, randomness)
            # (an argument the value does not use keeps its zeros: ud.grad's rule for arguments, as jax.grad's)
            grads = [g if u or (i < count and not none_for_unused) else None
                     for i, (g, u) in enumerate(zip(grads, used))]
        for index, new in written.items():  # after the analysis, which puts every variable back as it was
            live[index].value = new
        return ((value, aux) if with_aux else value), grads

    def probe_forward(self, forward, x):
        """``jax.eval_shape`` of ``forward``: each eager op of a forward compiles a program per shape (a CNN's
        probe of one sample was 11, 1 to 2 s on a CPU, none of them reused by the batches after it). Run eagerly
        instead, as before, where the abstract pass cannot give what the eager one does: where tracing raises (a
        value that must be concrete, any error: the eager forward raises its own) and where a value check met a
        traced value (an index out of range raises in the eager probe; ``jax_ops.unknown_values_checked``), where
        the pass wrote a variable (a draw from the generator: the eager probe's moves its state) and where a module
        has hooks (a hook of the user's would see tracers). The variables' values are put back after the pass;
        variables the forward made during it, holding tracers, leave ``live()`` (``forget_traced``)."""
        if any(module._hooked for module in getattr(forward, "modules", lambda: ())()):
            return forward(self.tensor(x))
        variables = jax_variable.live()
        saved = [v._value for v in variables]
        floor = jax_variable.serial_floor()
        outputs, wrote = None, False
        try:
            with jax_ops.unknown_values_checked() as checked:
                # (a function of its own each time: jax caches a trace per function and shapes, and the model's
                # layers may have been replaced since)
                outputs = jax.eval_shape(lambda tensor: forward(tensor), self.tensor(x))
        except Exception:  # (run again eagerly, which raises the forward's own error where it fails)
            outputs = None
        finally:
            for v, value in zip(variables, saved):
                wrote = wrote or v._value is not value
                v._value = value
            jax_variable.forget_traced(floor)
        if outputs is None or checked or wrote:
            return forward(self.tensor(x))
        return outputs

    def check_shapes(self, model, loss_fn, x, y):
        x, y = self.to_input(x), self.to_input(y)
        variables = jax_variable.live()
        saved = [v.value for v in variables]
        try:
            jax.eval_shape(lambda a, b: loss_fn(model(a), b), x, y)
        except _CONCRETIZATION:
            pass  # the compiled step reports it with unidl's GraphConstructError
        finally:
            for v, value in zip(variables, saved):
                v.value = value

    # ---- compiled functions and custom gradients ---------------------------
    def function(self, fn, jit_compile, name):
        return JaxFunction(fn, name)

    def composite(self, function, arrays):
        return _compiled_composite(function, tuple(arrays), config.get_backend(), self.current_device(),
                                   config.get_dtype())

    def custom_gradient(self, forward_fn):
        return custom_gradient(forward_fn)

    def model_graph(self, model, x):
        from unidl.backends.jax import graph as jax_graph

        return jax_graph.model_graph(model, jax_graph.each(self.tensor, x))

    def model_graph_of_values(self, forward, state, x):
        from unidl.backends.jax import graph as jax_graph

        return jax_graph.graph_of_values(forward, state, jax_graph.each(self.tensor, x))

    # ---- export ------------------------------------------------------------
    def export_formats(self):
        return export_formats()

    def export(self, module, path, format, input_shape, input_dtype):
        export_module(module, path, format, input_shape, input_dtype)


def _differentiated_value_error(error, name: str):
    """unidl's error for an eager gradient whose function reads a differentiated value in Python (see
    ``_value_and_grad``)."""
    from unidl.errors import GraphConstructError

    return GraphConstructError(
        f"{name} converts a tensor that depends on what is differentiated (a parameter, a differentiated input, or "
        f"an activation computed from them) to a Python number (float/int/.item()/np.asarray). On JAX (the jax "
        f"backend, Keras-on-JAX) gradients are taken by tracing, eager=True and ud.grad included, so such a number "
        f"cannot be had there (torch and TensorFlow give it): compare the tensor itself (if ud.ops.mean(h) > 0:, a "
        f"comparison has no gradient and JAX gives its value), write the branch with ud.ops.where, or convert values "
        f"that are not differentiated (the input x of a train step). ({type(error).__name__}: "
        f"{str(error).splitlines()[0]})")


def _concrete_writes(written: dict) -> dict:
    """``written`` (variables' new values by index, made by a differentiated function that then raised) as concrete
    arrays (``concrete_values``), or empty where one is abstract (a ``jax.jit`` being traced: the compiled
    function selects its writes by its checks, ``jax_ops.unless_a_check_failed``)."""
    values = concrete_values(list(written.values()))
    return {} if values is None else dict(zip(written, values))


def concrete_values(values: list):
    """``Backend.concrete_values``: each of ``values`` as the array it holds, or None where one is abstract. JAX's
    eager ``jax.value_and_grad`` computes each value as it traces it, and its tracer carries that value (its
    primal), which an error raised inside the transformation would discard with it."""
    from jax._src import core  # (an eager tracer's value: no public API gives it)

    concrete = [core.to_concrete_value(value) for value in values]
    return None if any(value is None for value in concrete) else concrete


def _used_inputs(fn, inputs, live, before, randomness) -> list[bool]:
    """For each of ``inputs``, whether ``fn``'s output depends on it: a backward walk over ``fn``'s jaxpr
    from the output (an equation that feeds a needed value needs all of its inputs). ``fn`` is traced
    once more, abstractly; the variables it writes are put back. A forward with Python control flow on a value
    (an eager step's: ``eager=True``, ``ud.value_and_grad``) cannot be traced abstractly: there the walk is over
    the graph of its tangents (``jax.linearize``, which runs it on the values, its flow settled by them), from the
    Python and NumPy random states ``randomness`` the step's forward ran from, as the abstract trace's."""
    try:
        try:
            closed = jax.make_jaxpr(fn)(inputs)
        except _CONCRETIZATION:
            for v, b in zip(live, before):
                v.value = b
            random.setstate(randomness[0])
            np.random.set_state(randomness[1])
            _, linear = jax.linearize(fn, inputs)
            closed = jax.make_jaxpr(linear)(inputs)
    finally:
        for v, b in zip(live, before):
            v.value = b
    return _needed_inputs(closed.jaxpr)


def _needed_inputs(jaxpr) -> list[bool]:
    """For each input of ``jaxpr``, whether its outputs need it: a backward walk from the outputs (an equation
    that feeds a needed value needs all of its inputs)."""
    needed = {id(v) for v in jaxpr.outvars if not isinstance(v, Literal)}
    for equation in reversed(jaxpr.eqns):
        if any(id(v) in needed for v in equation.outvars):
            needed.update(id(v) for v in equation.invars if not isinstance(v, Literal))
    return [id(v) in needed for v in jaxpr.invars]


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


class _NamedJit:
    """``jax.jit`` of ``f(values, *args)`` with a name and the ``trace_count`` that ``ud.function`` reports. The
    arguments that are not arrays (Python numbers, bools, None, strings, functions) are baked in, as the jax
    backend's ``ud.function`` bakes them (``function._split_static``): each new value traces again. Checkified
    as the jax backend's compiled functions are: a label or index out of range inside it is unidl's
    ``IndexOutOfRangeError`` after the call (Keras-on-JAX computed with it: a NaN row, a wrong loss)."""

    def __init__(self, f, name: str, reads=None):
        self.trace_count, self.__name__ = 0, name
        self._f, self._jitted, self._reads = f, {}, reads

    def __call__(self, values, *args):
        result, check = self.call_unchecked(values, *args)
        check()
        return result

    def call_unchecked(self, values, *args):
        """``(result, check)``: the call, and ``check()`` raising unidl's error for a value check that failed in
        it, for a caller that writes the state the call computed first (``keras/stateless.py``), as the jax
        backend's compiled functions write theirs before they raise. One ``jax.jit`` for each shape of the
        arrays; a call inside another trace is traced into it (``inside_a_trace``)."""
        if inside_a_trace((values, args)):  # (inside another trace: traced into it, as jax's ud.function is)
            self.trace_count += 1
            return self._f(values, *args), _NO_CHECK
        key, dynamic, rebuild = _with_static_arguments(args)
        key = (key, tuple((array.shape, array.dtype) for array in dynamic if hasattr(array, "shape")))
        entry = self._jitted.get(key)
        if entry is None:
            def counted(values, dynamic):
                self.trace_count += 1
                with python_randomness_guard(self.__name__, self._reads):  # (a draw frozen into the trace: warned)
                    return self._f(values, *rebuild(dynamic))

            checked, raise_failed = value_checked(counted)
            entry = self._jitted[key] = (jax.jit(checked), raise_failed)
        jitted, raise_failed = entry
        error_leaves, result = jitted(values, dynamic)
        return result, functools.partial(raise_failed, error_leaves)


def _NO_CHECK():
    """The check of a call traced into another (``_NamedJit.call_unchecked``): that trace's own checks hold it."""


def value_checked(f, given_back=None):
    """``Backend.value_checked``."""
    def traced(*args, **kwargs):
        with jax_ops.checkified_trace(given_back):
            return f(*args, **kwargs)

    flat, error_structure = checkified(traced)

    def raise_failed(error_leaves):
        if error_leaves:
            raise_failed_check(error_structure, error_leaves)

    return flat, raise_failed


def _with_static_arguments(args):
    """``(key, arrays, rebuild)``: the array leaves of ``args`` (a Keras variable's as its array), a key of
    everything else (the structure, where the arrays are, the other leaves by type and value: ``_signature``),
    and the function putting arrays back among those leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    positions = [i for i, leaf in enumerate(leaves) if _is_array(leaf) or hasattr(leaf, "__jax_array__")]
    arrays = [jnp.asarray(leaves[i]) if hasattr(leaves[i], "__jax_array__") else leaves[i] for i in positions]
    held = set(positions)
    key = (treedef, tuple(positions), tuple(_signature(leaf) for i, leaf in enumerate(leaves) if i not in held))

    def rebuild(values):
        merged = list(leaves)
        for i, value in zip(positions, values):
            merged[i] = value
        return jax.tree_util.tree_unflatten(treedef, merged)

    return key, arrays, rebuild


class _EagerFallback:
    """``predict_function``'s forward (``ud.predict``, ``ud.evaluate``, ``fit``'s validation) and
    ``evaluation_function``'s batch: ``compiled``, or, once a trace needed a tensor's value (Python control flow on
    it, a boolean-mask index), ``function`` (the model, the evaluation) run eagerly from then on, with
    ``ud.function``'s one warning, as torch and TensorFlow (AutoGraph) run such a forward (JAX's raw
    ConcretizationTypeError before, ``fit(eager=True)``'s validation too). Arguments that are not arrays (None)
    go in as they are."""

    def __init__(self, compiled, function, to_input, name: str):
        self._compiled, self._function, self._to_input, self._name = compiled, function, to_input, name
        self._eager = False

    def __call__(self, *args):
        to_input = self._to_input
        args = [to_input(a) if a is not None else a for a in args]
        if not self._eager:
            try:
                return self._compiled(*args)
            except _CONCRETIZATION as error:
                self._eager = True
                warn_running_eagerly(self._name, "jax", "jax.jit", error, what="ud.predict/ud.evaluate")
        return self._function(*args)


class _CompiledStep:
    """A compiled train step (``compile_step``): its inputs made arrays, then the ``StatefulJit`` call; with the
    ``trace_count`` of that ``StatefulJit``. One object, called directly by ``TrainStep`` (a wrapper around a
    closure was one more Python frame a step)."""

    def __init__(self, compiled, to_input, step_inputs, model):
        self._compiled, self._to_input, self._step_inputs, self._model = compiled, to_input, step_inputs, model

    def __call__(self, *args):
        # Python and NumPy numbers among the extra step inputs stay Python values (one trace per value: a dynamic
        # net's depth, np.int64 from a NumPy generator too, as torch and TensorFlow loop over either), since jax.jit
        # cannot loop a traced number of times; arrays are graph inputs
        if len(args) == 2:  # (x, y), the common case, without the per-argument test (a step's Python is its cost)
            args = self._step_inputs(*args)
        else:
            to_input = self._to_input
            args = [to_input(a) if i < 2 else _extra_step_input(a, to_input) for i, a in enumerate(args)]
        try:
            return self._compiled(*args)
        except _CONCRETIZATION as error:
            raise traced_forward_error(error, f"the forward of {type(self._model).__name__} in ud.train_step") from None

    @property
    def trace_count(self):
        return self._compiled.trace_count
