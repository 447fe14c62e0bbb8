"""The PyTorch backend: eager execution, ``torch.nn.Parameter`` variables, ``torch.optim`` updates."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from unidl import config
from unidl.autograd import check_float, check_scalar
from unidl.backends.interface import Backend as BackendInterface
from unidl.backends.torch import convert as torch_convert
from unidl.backends.torch import ops as torch_ops
from unidl.backends.torch import function as torch_function
from unidl.backends.torch import precision as torch_precision
from unidl.backends.torch import distributed as torch_distributed
from unidl.backends.torch import graph as torch_graph
from unidl.backends.torch import nesting
from unidl.backends.torch.module import NativeModule
from unidl.backends.torch.optimizer import (RuleOptimizer, add_l1, clear_gradients, guard_and_clip, guarded_update,
                                           l1_outside_rule, native_optimizer, torch_window)
from unidl.backends.torch.export import EXPORT_FORMATS, export_module
from unidl.training import accumulation_window

_DEVICES: dict[str, torch.device] = {}  # current_device's torch.device of each device name
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _has_accelerator() -> bool:
    """Whether torch was built for an accelerator (CUDA, MPS, XPU, MTIA or a custom device). Where it was not,
    ``torch.manual_seed`` seeds only the CPU generator, yet queues the seed for each accelerator runtime not started
    (CUDA, XPU, MTIA) with the caller's stack formatted, three stacks a call: about a millisecond at a test's depth,
    in every ``ud.manual_seed`` (the test fixture's seeding of each test), for runtimes that never start."""
    accelerator = getattr(torch, "accelerator", None)  # (torch 2.6 on; before it, the full torch.manual_seed)
    # (the build's accelerator, read without a driver call: is_available() would start CUDA's runtime, which
    # torch.manual_seed never did, so that a later fork could not use CUDA and CUDA_VISIBLE_DEVICES set after a seed
    # would be ignored; a CUDA build with no GPU takes the full torch.manual_seed)
    return accelerator is None or accelerator.current_accelerator() is not None


#: the device types ``torch.autocast`` runs on, whichever the model's parameters are on
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


class Backend(BackendInterface):
    name = "torch"
    exports_keras_models = True  # a Keras layer on torch is a torch.nn.Module: torch.export and ONNX trace it
    rounds_half_activations_once = True  # (silu and softplus: ATen's half kernels compute in float32)
    ops = torch_ops
    # Keras's torch variables unwrap themselves in torch's functions (``__torch_function__``): F.linear's addmm,
    # F.layer_norm's, F.batch_norm's and F.scaled_dot_product_attention's kernels, where keras.ops composes them;
    # F.conv2d's padding, where keras.ops pads a copy of the input first (its "same" is not PyTorch's at stride 2);
    # the guard's fused non-finite check over all gradients (ResNet-18's step: 1.05x plain Keras's before these
    # three, 0.8x after, benchmarks/RESULTS.md, stop 63); F.max_pool2d's
    # padding, which no window's gradient or value is taken from (Keras pads with -inf, which a window of -inf
    # alone gave its gradient to, and cannot pad integers with it)
    # (gather: keras.ops.take_along_axis is torch.take_along_dim, whose torch.export trace fixes the batch size;
    # take: keras.ops.take squeezes an axis of any size, which torch's ONNX export writes as an invalid Squeeze;
    # fused_interpolate: F.interpolate's kernels, where unidl composes products for finite inputs and taps for others;
    # segment_sum: keras.ops.segment_sum on torch sums into float32 zeros and casts back, so float64 data (AUC's
    # weighted histograms under ud.use_dtype("float64")) lost all but float32's precision)
    keras_native_ops = ("all_finite", "batch_norm", "conv2d", "fused_attention", "fused_interpolate", "gather",
                        "layer_norm", "linear", "max_pool2d", "segment_sum", "take")

    def __init__(self):
        self.check_ops()

    # ---- framework and devices -------------------------------------------
    def versions(self):
        return {"torch": torch.__version__}

    def thread_modes(self):
        return torch.is_grad_enabled()

    def set_thread_modes(self, modes):
        torch.set_grad_enabled(modes)

    def devices(self):
        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    def device_scope(self, device):
        return contextlib.nullcontext()

    def gpu_support(self):
        build = (f"CUDA {torch.version.cuda}" if torch.version.cuda
                 else f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else None)
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        return {"build": build, "gpus": gpus, "how": "torch.version.cuda, torch.cuda.is_available()"}

    def device_of(self, tensor):
        device = tensor.device
        return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"

    def seed(self, seed):
        if _has_accelerator():
            torch.manual_seed(seed)
        else:  # (what torch.manual_seed seeds where no accelerator exists, without the stacks it formats)
            torch.default_generator.manual_seed(seed)

    def get_rng_state(self):
        return {"cpu": torch.get_rng_state().tolist(),
                "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []}

    def set_rng_state(self, state):
        torch.set_rng_state(torch.tensor(state["cpu"], dtype=torch.uint8))
        if state.get("cuda") and torch.cuda.is_available():
            # one state per GPU saved; a run resumed where fewer GPUs are visible restores those it has (setting
            # the others raised an IndexError: a checkpoint of 8 GPUs could not resume on one)
            states = state["cuda"][:torch.cuda.device_count()]
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states])

    def generator(self):
        device = self.current_device()
        return torch.default_generator if device.type == "cpu" else torch.cuda.default_generators[device.index or 0]

    def distributed_engine(self):
        return torch_distributed.Engine(self)

    def set_num_threads(self, intra_op, inter_op):
        torch.set_num_threads(intra_op)
        try:
            torch.set_num_interop_threads(inter_op)
        except RuntimeError:  # torch allows it once, before any inter-op work; the intra-op pool is what counts
            pass

    def set_float32_precision(self, mode):
        # matrix products through torch's own switch (its "highest"/"high": CUDA's and oneDNN's matmuls); cuDNN's
        # convolutions and RNNs through the legacy switch, then (torch >= 2.9) their own fp32_precision flags,
        # which a user's torch.backends.fp32_precision = "tf32" would otherwise keep at TF32 by inheritance. In
        # this order every getter of both of torch's APIs reads back after it (torch 2.13; Inductor reads the
        # legacy cudnn.allow_tf32 and get_float32_matmul_precision, which raise on some mixes of the two APIs)
        torch.set_float32_matmul_precision(mode)
        torch.backends.cudnn.allow_tf32 = mode == "high"
        if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
            precision = "tf32" if mode == "high" else "ieee"
            torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = precision

    def pins_memory(self, device):
        return device.startswith("cuda")  # tensor() stages CUDA copies through pinned memory

    def current_device(self) -> torch.device:
        name = config.resolve_device(config._requested_device(), self)
        device = _DEVICES.get(name)
        if device is None:  # (one torch.device per name: made once, a step's inputs compare against it)
            device = _DEVICES[name] = torch.device(name)
        return device

    # ---- tensors ---------------------------------------------------------
    def tensor(self, value, dtype=None, _owned=False):
        device = self.current_device()
        if isinstance(value, torch.Tensor):
            floating = value.is_floating_point()
            target = _DTYPES[dtype or config.get_dtype()] if floating else value.dtype
            # a pinned CPU batch (a DataLoader's with pin_memory=True) is copied to a GPU without waiting
            # (the caller must not refill that buffer until the copy is done: a DataLoader's batches are fresh)
            pinned = device.type != "cpu" and value.device.type == "cpu" and value.is_pinned()
            return value.to(device=device, dtype=target, non_blocking=pinned)
        array = np.asarray(value)
        if array.dtype.kind == "f" or dtype is not None:
            target = _DTYPES[dtype or config.get_dtype()]
        elif array.dtype.kind in "iu":
            target = torch.int64
        elif array.dtype.kind == "b":
            target = torch.bool
        else:
            raise TypeError(f"cannot make a tensor from an array of dtype {array.dtype}")
        if any(stride < 0 for stride in array.strides):  # (a reversed axis of one element counts as contiguous
            array = array.copy()  # for NumPy, and torch.from_numpy refuses its negative stride)
        tensor = torch.from_numpy(np.require(array, requirements="C"))  # (ascontiguousarray makes 0-d 1-d)
        if device.type == "cuda":
            tensor = tensor.pin_memory()
            return tensor.to(device=device, dtype=target, non_blocking=True)
        # from_numpy shares the caller's memory: copy (once, with any cast), as torch.tensor and the other backends
        # do, so that a later change to the array never shows in the tensor. (Comparing data pointers to skip the
        # copy raised under torch.export, where the tensor is a FakeTensor without one.)
        return tensor.to(dtype=target, copy=not _owned and isinstance(value, np.ndarray))

    def adopt(self, array):
        return self.tensor(array, _owned=True)

    def to_numpy(self, tensor):
        if isinstance(tensor, np.ndarray):
            return tensor
        return torch_convert.to_numpy(tensor)

    def is_tensor(self, value):
        return isinstance(value, torch.Tensor)

    def is_symbolic_size(self, size):
        return isinstance(size, torch.SymInt)

    # ---- parameters ------------------------------------------------------
    def parameter(self, value, trainable=True, dtype=None):
        native_dtype = _DTYPES[config.get_dtype()] if dtype is None else getattr(torch, np.dtype(dtype).name)
        data = torch.tensor(np.asarray(value), dtype=native_dtype, device=self.current_device())
        return torch.nn.Parameter(data) if trainable else data

    def is_parameter(self, value):
        return isinstance(value, torch.nn.Parameter)

    def assign(self, variable, value):
        with torch.no_grad():
            variable.copy_(torch.as_tensor(np.asarray(value)).to(variable.dtype))

    def set_requires_grad(self, parameter, requires_grad):
        parameter.requires_grad_(requires_grad)

    def write_state(self, variable, value):
        if value is not variable:
            with torch.no_grad():
                variable.copy_(value)
        return variable

    # ---- modules and training ---------------------------------------------
    def native_module(self, module):
        return NativeModule(module)

    def optimizer(self, optimizer):
        optimizer._steps = 0  # torch.optim.SGD keeps no step count of its own
        optimizer._finite = True
        return native_optimizer(optimizer)

    def set_learning_rate(self, optimizer, lr, group=0):
        optimizer.native.param_groups[group]["lr"] = lr

    def set_group_options(self, optimizer, group, keys):
        from unidl.backends.torch.optimizer import set_group_options

        set_group_options(optimizer, group, keys)

    def optimizer_state(self, optimizer):
        native = optimizer.native
        initial = optimizer.initial_slots()
        slots, counts = [], []
        for p, default in zip(optimizer.params, initial):
            state = native.state.get(p, {})
            counts.append(int(state["step"]) if "step" in state else 0)  # torch.optim counts per parameter
            slots.append({name: self.to_numpy(state[name]) if state.get(name) is not None else default[name]
                          for name in optimizer.slots})
        return optimizer._steps, slots, counts if optimizer.uses_step else None

    def load_optimizer_state(self, optimizer, step, slots, param_steps):
        native = optimizer.native
        optimizer._steps = step
        for index, (p, entry) in enumerate(zip(optimizer.params, slots)):
            count = param_steps[index] if param_steps is not None else step
            if not count and not isinstance(native, (RuleOptimizer, torch.optim.SGD, torch.optim.Adagrad)):
                # not updated yet: no state, which torch.optim fills at its first update (Rprop's step sizes from the
                # lr then, NAdam's mu_product 1: initial slots would be taken as saved); SGD's state marks its
                # buffer, Adagrad's is filled when built, unidl's rules read the step count
                native.state.pop(p, None)
                continue
            state = native.state[p]
            for name, value in entry.items():  # (a slot of one number, ``scalar_slots``: float32, as torch.optim's)
                dtype = torch.float32 if name in optimizer.scalar_slots else p.dtype
                given = self.given_slot(value)  # (its memory kept where dtype and device match)
                state[name] = (torch.as_tensor(given, dtype=dtype, device=p.device) if given is not None
                               else torch.tensor(np.asarray(value), dtype=dtype, device=p.device))
            if not isinstance(native, torch.optim.SGD):  # the others count steps per parameter
                state["step"] = torch.tensor(float(count), dtype=torch.float32)

    def apply_gradients(self, optimizer, grads):
        l1 = l1_outside_rule(optimizer)
        clips = any(value is not None for value in optimizer.clipping.values() if not isinstance(value, bool))
        with torch.no_grad():
            for p, g in zip(optimizer.params, grads):
                if g is None:  # PyTorch's rule: no gradient, no update (torch.optim skips a None .grad)
                    p.grad = None
                    continue
                # in the parameter's dtype and on its device (a model may live on another device than the one in
                # force: built under ud.use_device)
                # (an array is copied, in the parameter's dtype: the guard's finite check writes into every gradient)
                g = g.to(dtype=p.dtype, device=p.device) if isinstance(g, torch.Tensor) \
                    else torch.tensor(np.asarray(g), dtype=p.dtype, device=p.device)
                p.grad = g.clone() if clips or l1 or g.requires_grad else g  # the caller's gradient is never modified
        if not guard_and_clip(optimizer):
            return
        add_l1(optimizer)
        optimizer.native.step()
        optimizer._steps += 1

    def last_step_finite(self, optimizer):
        return optimizer._finite

    def clear_gradients(self, params, set_to_none=True):
        for parameter in params:  # (torch.nn.Module.zero_grad's rule)
            if parameter.grad is None:
                continue
            if set_to_none:
                parameter.grad = None
            else:
                if parameter.grad.grad_fn is not None:
                    parameter.grad.detach_()
                else:
                    parameter.grad.requires_grad_(False)
                parameter.grad.zero_()

    def zero_grad(self, optimizer, set_to_none=True):
        optimizer.native.zero_grad(set_to_none=set_to_none)

    def step(self, optimizer, closure=None):
        loss = None
        if closure is not None:  # (torch.optim's: the closure's forward and backward with gradients enabled)
            with torch.enable_grad():
                loss = closure()
        if not guard_and_clip(optimizer):
            return loss
        add_l1(optimizer)
        optimizer.native.step()
        optimizer._steps += 1
        return loss

    def train_step(self, model, loss_fn, optimizer, with_outputs=False, eager=False, accumulate=1):
        # torch is always eager
        native = optimizer.native
        to_input, extra_inputs = self.to_input, self.extra_step_inputs
        l1 = l1_outside_rule(optimizer)
        # in a process group: DDP averages the gradients, the loss's own parameters' too
        forward = torch_distributed.data_parallel(model, loss_fn, optimizer)
        # the losses of the micro-steps accumulated in .grad so far (accumulate > 1): the optimizer's one window,
        # shared with every other step of it
        window = (accumulation_window(optimizer, accumulate, None, lambda: torch_window(optimizer, accumulate, []))
                  .storage if accumulate > 1 else [])
        if accumulate == 1 and forward is model:  # (no window, no DDP: decided once, for every call)
            return self._plain_train_step(model, loss_fn, optimizer, with_outputs)

        def step(x, y, *inputs):
            x, y = to_input(x), to_input(y)
            if inputs:
                inputs = extra_inputs(inputs)
            if not window:
                clear_gradients(native)
            updates = len(window) + 1 >= accumulate
            # under DDP only the update micro-step all-reduces; the others add to this rank's .grad (no_sync)
            with torch_distributed.gradient_sync(forward, updates), nesting.differentiated():
                outputs = forward(x, *inputs)
                loss = loss_fn(outputs, y)
                detached_loss = loss.detach()  # (what the step returns, the window keeps and the guard checks)
                # the window's losses, which the guard checks (under DDP: with the job's marker, from the gradients'
                # all-reduce); loss / N, PyTorch's accumulation idiom
                losses = torch_distributed.backward(
                    forward, loss / accumulate if accumulate > 1 else loss,
                    torch_distributed.update_losses(window, detached_loss) if updates else None)
            result = detached_loss
            if with_outputs:  # (a tensor, or tuples, lists and dicts of them)
                result = (result, torch_precision.detached(outputs))
            if not updates:  # inside the window nothing is skipped yet: its check comes with its update
                window.append(detached_loss)
                optimizer._finite = True
                return result
            window.clear()
            # the guard over every micro-step's loss and the summed gradients (a non-finite micro-step makes the
            # whole window skip, here, at its update; under DDP the averaged gradients carry every rank's), then
            # clipping
            guarded_update(optimizer, native, losses, l1)
            return result

        return step

    def _plain_train_step(self, model, loss_fn, optimizer, with_outputs):
        """``train_step``'s step where every call updates (``accumulate`` 1) outside DDP: the same forward, guard
        and update with none of the window's and DDP's per-call branches, which cannot apply to it (its Python is
        a tenth of the two-layer net's step)."""
        native, step_inputs, extra_inputs = optimizer.native, self.step_inputs, self.extra_step_inputs
        l1 = l1_outside_rule(optimizer)
        differentiated = nesting.differentiated

        def step(x, y, *inputs):
            x, y = step_inputs(x, y)
            if inputs:
                inputs = extra_inputs(inputs)
            clear_gradients(native)
            with differentiated():
                outputs = model(x, *inputs)
                loss = loss_fn(outputs, y)
                detached_loss = loss.detach()  # (what the step returns and the guard checks)
                loss.backward()
            result = (detached_loss, torch_precision.detached(outputs)) if with_outputs else detached_loss
            guarded_update(optimizer, native, detached_loss, l1)
            return result

        return step

    def mixed_precision_train_step(self, model, loss_fn, optimizer, precision, with_outputs=False, eager=False,
                                   accumulate=1):
        return torch_precision.train_step(self, model, loss_fn, optimizer, precision, with_outputs, accumulate)

    def predict_function(self, model):
        to_input = self.to_input

        def forward(x):
            with torch.no_grad():
                return model(to_input(x))

        return forward

    def to_input(self, value):
        """Fast path for step inputs: native tensors already in place pass through untouched; one on another
        device (a ``torch.utils.data.DataLoader``'s CPU batch for a model on a GPU) is copied to the device in
        force, as an array is."""
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() and value.dtype != _DTYPES[config.get_dtype()]) \
                    or value.device != self.current_device():
                return self.tensor(value)
            return value
        return self.tensor(value)

    def step_inputs(self, x, y) -> tuple:
        """``(to_input(x), to_input(y))``, the device and dtype in force looked up once for both (every step converts
        both: on a small net a step's Python is its cost)."""
        device, dtype = self.current_device(), _DTYPES[config.get_dtype()]
        if not (isinstance(x, torch.Tensor) and x.device == device and (x.dtype == dtype or not x.is_floating_point())):
            x = self.tensor(x)
        if not (isinstance(y, torch.Tensor) and y.device == device and (y.dtype == dtype or not y.is_floating_point())):
            y = self.tensor(y)
        return x, y

    def extra_step_inputs(self, inputs) -> tuple:
        """A step's extra inputs (``step(x, y, *inputs)``) as its forward gets them: NumPy arrays and tensors as
        ``to_input`` makes x (floats in unidl's dtype, on its device, as the graph backends take them: a float64
        array made the forward float64 here alone); numbers and anything else as they are."""
        return tuple(self.to_input(v) if isinstance(v, (np.ndarray, torch.Tensor)) else v for v in inputs)

    def differentiated(self):
        return nesting.differentiated()

    def value_and_grad(self, f, args, argnums, params):
        # inside another value_and_grad's function (a gradient of a gradient: a Hessian-vector product, MAML) the
        # gradient is itself differentiable, as JAX's and TensorFlow's are: torch.autograd.grad's create_graph, the
        # arguments not cut from the outer graph, nothing detached (the inner gradients were constants: 0)
        nested = nesting.nested()
        args, argnums, params = list(args), argnums or (), params or []
        check_float([args[i] for i in argnums], "argument")
        check_float(params, "parameter")
        for i in argnums:  # a tensor in its own dtype (torch.autograd's), an array in unidl's
            arg = args[i]
            arg = arg.to(device=self.current_device()) if isinstance(arg, torch.Tensor) else self.tensor(arg)
            args[i] = arg if nested and arg.requires_grad else arg.detach().requires_grad_(True)
        targets = [args[i] for i in argnums] + list(params)  # one backward pass for both
        with torch.enable_grad():
            with nesting.differentiated():
                value = f(*args)
            check_scalar(value, self.name)
            # a value that depends on none of the targets has no graph: each gradient is then None (or zeros)
            grads = (torch.autograd.grad(value, targets, allow_unused=True, create_graph=nested) if value.requires_grad
                     else [None] * len(targets))
        value = value if nested else value.detach()
        # zeros for an argument the value does not use; None for such a parameter: step() and apply() skip it
        return value, ([torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets[:len(argnums)])]
                       + list(grads[len(argnums):]))

    def probe_forward(self, forward, x):
        return forward(self.tensor(x))

    def check_shapes(self, model, loss_fn, x, y):
        pass  # eager: the layers' own checks run on every real call

    # ---- compiled functions and custom gradients ---------------------------
    def framework_autocast(self):
        return any(torch.is_autocast_enabled(device) for device in _AUTOCAST_DEVICES)

    def function(self, fn, jit_compile, name):
        return torch_function.EagerFunction(fn, jit_compile, name)

    def custom_gradient(self, forward_fn):
        return torch_function.custom_gradient(forward_fn)

    def model_graph(self, model, x):
        return torch_graph.model_graph(model, torch_graph.each(self.tensor, x))

    def model_graph_of_values(self, forward, state, x):
        return torch_graph.graph_of_values(forward, state, torch_graph.each(self.tensor, x))

    # ---- export ------------------------------------------------------------
    def export_formats(self):
        return EXPORT_FORMATS

    def export(self, module, path, format, input_shape, input_dtype):
        export_module(module, path, format, input_shape, input_dtype)
