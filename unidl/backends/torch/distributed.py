"""torch's data-parallel engine for unidl: ``torch.distributed`` (gloo on CPU, NCCL on CUDA) joins the group,
and ``DistributedDataParallel`` averages the gradients of the torch backend's training step.

``data_parallel(model, loss_fn, optimizer)`` is what ``Backend.train_step`` calls forward through: the model in one
process, a ``DataParallel`` in a group, whose ``DistributedDataParallel`` over the model's ``NativeModule`` (the
very same parameters), the loss's own trained parameters if it has any, and one small parameter of its own
(``ModelWithFlags.flags``) makes ``backward`` end with gradients averaged over every rank by torch's reducer: its
own all-reduce of each bucket, no Python inside, and no other collective for the gradients (DDP itself also
broadcasts rank 0's buffers, such as BatchNorm's running statistics, at each forward of a model that has any; a
layer frozen in the middle of an accumulation window costs one all-reduce more, ``DataParallel.sync``).
``gradient_sync(forward, sync)`` wraps a micro-step of gradient accumulation: only the update micro-step's
backward all-reduces (the others run under ``no_sync()`` and accumulate locally in ``.grad``).
``Engine.wrap_forward`` is the same engine for a trainer that runs its own step (Keras's).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import warnings

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from unidl.backends.torch.module import NativeModule
from unidl.errors import DistributedError

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}


class Engine:
    """The ``torch.distributed`` process group (see ``unidl.distributed.process_group``) of ``backend`` (the torch
    backend, or the keras backend's torch host), whose devices it resolves."""

    def __init__(self, backend):
        self._backend = backend

    def start(self, rank, world_size, address, port, timeout):
        from unidl.distributed.environment import LOOPBACK, local_rank_of, loopback_interface

        if not dist.is_available():
            raise DistributedError("this torch build has no torch.distributed; install a build with it")
        if address in (LOOPBACK, "localhost") and "GLOO_SOCKET_IFNAME" not in os.environ:
            interface = loopback_interface()  # gloo resolves the hostname otherwise, which may not resolve
            if interface:
                os.environ["GLOO_SOCKET_IFNAME"] = interface
        # under torchrun the workers join the store its agent already serves on MASTER_PORT ("env://")
        torchrun = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        try:
            engine = engine_for(self._rank_device(local_rank_of(rank)))
            dist.init_process_group(engine, init_method="env://" if torchrun else f"tcp://{address}:{port}",
                                    rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
        except BaseException:  # (no group: 'cuda' is cuda:0 again)
            from unidl import config

            config._set_local_gpu(0)
            raise

    def _rank_device(self, local_rank: int) -> str:
        """The device this rank trains on: unidl's device in force, where 'auto', 'cuda' and 'gpu' now name the
        GPU of its local rank (``config._set_local_gpu``: one GPU per process, as torchrun's LOCAL_RANK means; every
        rank took cuda:0 before, which NCCL refuses), made torch's current CUDA device (NCCL's communicator and
        Keras-on-torch's "cuda" use it); a ``DeviceUnavailableError`` for a 'cuda:N' it does not see."""
        from unidl import config

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        config._set_local_gpu(local_rank if gpus else 0)  # (``start`` puts it back where this raises)
        device = config.resolve_device(config._requested_device(), self._backend)
        _check_own_gpu(device, local_rank, gpus)
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        return device

    def start_devices(self, devices, timeout):
        raise DistributedError(
            f"the torch backend trains one device per process (torch DistributedDataParallel), not "
            f"devices={list(devices)} in one process: start one process per device with "
            f"unidl.distributed.launch(fn, nprocs={len(devices)}) or torchrun, and leave devices out")

    def barrier(self):
        dist.barrier()

    def all_reduce(self, tensor, op):
        result = tensor.detach().clone()
        dist.all_reduce(result, op=_OPS[op])
        if op == "mean":
            result = result / dist.get_world_size() if result.is_floating_point() else result // dist.get_world_size()
        return result

    def stop(self):
        if dist.is_initialized():
            dist.destroy_process_group()

    @staticmethod
    def wrap_forward(module):
        """A ``DistributedDataParallel`` over ``module`` (any ``torch.nn.Module``, such as a Keras-on-torch model,
        whose parameters are its variables): rank 0's state is broadcast now, and a backward through its
        forward averages the gradients over the ranks, carrying a non-finite loss of any rank to every rank's
        gradients (``mark_losses``, through a Python comm hook; with ``find_unused_parameters``). For a trainer
        that runs its own step (Keras's); unidl's own step uses ``DataParallel``, which does the same in one
        all-reduce without either."""
        # find_unused_parameters: a step whose forward skips a layer (a dynamic net) gives it no gradient, as in one
        # process, where DDP would otherwise leave that layer's bucket unreduced and fail at the next step (one
        # walk of the autograd graph per step; torch then warns once per process if a step used every parameter)
        forward = distributed_data_parallel(module, find_unused_parameters=True)
        forward._unidl_marks = _LossMarks()  # (its all-reduce carries the losses' marker: ``mark_losses``)
        forward.register_comm_hook(forward._unidl_marks, _marked_allreduce)
        return forward

    @staticmethod
    def mark_losses(forward, losses) -> None:
        """``mark_losses`` for a trainer that runs its own step through ``wrap_forward`` (Keras's)."""
        mark_losses(forward, losses)


def _check_own_gpu(device: str, local_rank: int, gpus: int) -> None:
    """A ``DeviceUnavailableError`` where local rank ``local_rank`` would share a GPU with another rank of its
    machine (more local ranks than its ``gpus`` GPUs, NCCL's "duplicate GPU" at the first collective); one GPU
    seen is each process's own (``CUDA_VISIBLE_DEVICES`` per rank), taken by every local rank."""
    if device.startswith("cuda") and gpus > 1 and local_rank >= gpus:
        from unidl.distributed.environment import no_own_gpu

        raise no_own_gpu(local_rank, gpus)


def engine_for(device: str) -> str:
    """The ``torch.distributed`` backend of a rank training on unidl device ``device``: gloo on the CPU; on a GPU
    NCCL for CUDA tensors (DDP's gradients) and gloo for CPU ones (a metric reduced on the host), where this torch
    build has NCCL. Chosen by the rank's device, not by whether CUDA exists: a CPU run on a GPU machine
    (``UNIDL_DEVICE=cpu``) all-reduces CPU tensors, which NCCL cannot."""
    if device.startswith("cuda") and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


@functools.cache
def _ignore_bucket_view_strides_warning() -> None:
    """Once per process: a kernel whose size-1 dimensions have other strides than the parameter's (a 1-channel conv)
    makes torch's reducer warn at every run, though the copy it warns about is of those dimensions only."""
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def distributed_data_parallel(module, **options):
    """``torch.nn.parallel.DistributedDataParallel(module, **options)`` (rank 0's parameters and buffers broadcast
    now) on the device of ``module``'s parameters: ``device_ids`` names this process's CUDA device, none on the
    CPU. The one place unidl builds a DDP (``Engine.wrap_forward``, ``DataParallel``)."""
    _ignore_bucket_view_strides_warning()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index or 0] if device.type == "cuda" else None, **options)


def data_parallel(model, loss_fn=None, optimizer=None):
    """``model``, or in a group of several processes a ``DataParallel`` over it and the parameters of ``loss_fn``
    that ``optimizer`` trains (``trained_loss_parameters``: a learned temperature; none for most losses): rank 0's
    parameters and buffers are broadcast now, and every update's backward (``backward``) averages the gradients over
    the ranks, the loss's in the same all-reduce."""
    from unidl.distributed import process_group

    if process_group.sharding() is None or not dist.is_initialized():
        return model
    from unidl.fit_options import trained_loss_parameters

    return DataParallel(model, trained_loss_parameters(model, loss_fn, optimizer) if loss_fn is not None else ())


class ModelWithFlags(torch.nn.Module):
    """What DDP wraps: the model's ``NativeModule``, the loss's own trained parameters (``loss_parameters``, which the
    forward does not use: the backward of the loss computed from its outputs reaches them) and ``flags``, a
    parameter of ``1 + len(params)`` zeros (the dtype and device of the first trainable parameter, so that it shares
    their bucket; with every parameter frozen, those of any parameter of the model: one device per process) whose
    gradient, set by ``DataParallel.backward``, rides in the gradients' own all-reduce: the losses' marker, then
    whether each parameter had a gradient on this rank."""

    def __init__(self, native, params, loss_parameters=()):
        super().__init__()
        self.native = native
        self.loss_parameters = torch.nn.ParameterList(loss_parameters)
        like = params[0] if params else next(native.parameters(), torch.zeros(()))
        self.flags = torch.nn.Parameter(torch.zeros(1 + len(params), dtype=like.dtype, device=like.device))

    def forward(self, *args, **kwargs):
        return self.native(*args, **kwargs)


class DataParallel:
    """unidl's torch step under DDP, with ``find_unused_parameters=False`` and torch's own all-reduce (no comm
    hook): per update only DDP's all-reduce of each bucket (one for a small model), with no Python inside it (and, as
    with any DDP, the broadcast of rank 0's buffers at each forward of a model that has buffers).

    What ``find_unused_parameters`` and a comm hook would do, ``backward`` does around the update's backward, in the
    same all-reduce. A parameter this rank's loss does not reach (a dynamic net's skipped layer; found by a walk of
    the loss's graph from Python, some microseconds) gets a zero gradient, so that the reducer's buckets complete
    (DDP's own ``find_unused_parameters`` walks the graph too, and all-reduces a map of the used parameters in a
    second collective, which cost 5-10% of a LeNet step on 2 CPU processes). ``flags``'s gradient carries the
    losses' marker (``0 * sum(losses)``: 0, or NaN where one is not finite) and whether each parameter had a
    gradient on this rank (in this micro-step or earlier in the window). After the all-reduce, a parameter no rank
    gave a gradient gets none (PyTorch's rule: no update), as with ``find_unused_parameters``, and the guard checks
    the averaged flags, non-finite where any rank's losses are: every rank decides alike. A parameter frozen or
    unfrozen between steps (``requires_grad_``) makes the next update build the DDP again over the trainable
    parameters (DDP fixes its parameters when built); one frozen at an update after a micro-step of its window in
    which it was trainable has this rank's gradient of that micro-step, outside the DDP: ``sync`` averages those
    in one all-reduce of their own, so that the step applies the job's gradient, as one process does (its
    optimizer updates a frozen parameter that has a ``.grad``, as ``torch.optim`` does)."""

    def __init__(self, model, loss_parameters=()):
        self.native = NativeModule(model)
        self.loss_parameters = loss_parameters  # (the loss's own, held by the DDP too: ``ModelWithFlags``)
        self.every = [*self.native.parameters(), *loss_parameters]
        self.window_trainable = None  # whether each parameter was trainable in a micro-step of the window so far
        self._build()

    def _build(self):
        self.trainable = [p.requires_grad for p in self.every]
        self.params = [p for p in self.every if p.requires_grad]
        self.wrapped = ModelWithFlags(self.native, self.params, self.loss_parameters)
        self.flags = self.wrapped.flags
        self.ddp = distributed_data_parallel(self.wrapped)
        # each parameter's AccumulateGrad node, by which autograd reaches it (what get_gradient_edge, torch >= 2.2,
        # returns; held here, the node stays the one of every later graph)
        with torch.enable_grad():
            self.nodes = [p.view_as(p).grad_fn.next_functions[0][0] for p in self.params]
        self.gradient = torch.ones_like(self.flags)  # flags's gradient: [marker, 1 for each parameter with one]
        self.marker = self.gradient[:1]

    def __call__(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def sync(self, updates: bool):
        """The context of a micro-step: ``no_sync()`` unless it ``updates``; an update first rebuilds the DDP when a
        parameter was frozen or unfrozen since it was built, and averages the gradients of the parameters frozen now
        that were trainable in an earlier micro-step of the window (``average_gradients``; every rank alike, as
        their ``requires_grad_`` calls are)."""
        trainable = [p.requires_grad for p in self.every]
        window = trainable if self.window_trainable is None else [
            before or now for before, now in zip(self.window_trainable, trainable)]
        if not updates:
            self.window_trainable = window
            return self.ddp.no_sync()
        self.window_trainable = None
        if trainable != self.trainable:
            self._build()
        if window is not trainable:
            frozen = [p for p, before, now in zip(self.every, window, trainable) if before and not now]
            if frozen:
                average_gradients(frozen)
        return contextlib.nullcontext()

    def backward(self, root, losses):
        """``root.backward()`` of an update whose guard checks ``losses`` (this rank's, see ``update_losses``):
        returns what the guard checks instead, the averaged flags (NaN where any rank's losses are not finite)."""
        seen, stack = set(), [root.grad_fn] if root.grad_fn is not None else []
        while stack:  # the graph's nodes, to find the parameters' AccumulateGrad nodes the loss reaches
            for node, _ in stack.pop().next_functions:
                if node is not None and node not in seen:
                    seen.add(node)
                    stack.append(node)
        unreached = [index for index, node in enumerate(self.nodes) if node not in seen]
        self.marker.copy_(losses.sum() * 0)  # (0 * inf is NaN in the losses' dtype, whatever the flags' range)
        roots, gradients = [root, self.flags], [None, self.gradient]
        if unreached:
            gradients[1] = self.gradient.clone()
            for index in unreached:
                parameter = self.params[index]
                if parameter.grad is None:  # (a gradient from an earlier micro-step of the window counts)
                    gradients[1][1 + index] = 0
                roots.append(parameter)  # a zero gradient: its bucket completes
                gradients.append(torch.zeros_like(parameter))
        torch.autograd.backward(roots, gradients)
        averaged, self.flags.grad = self.flags.grad, None
        if unreached:
            had = averaged[1:].tolist()
            for index in unreached:
                if had[index] == 0:  # no rank's loss reached it in the window: no gradient, as in one process
                    self.params[index].grad = None
        return averaged


def average_gradients(params) -> None:
    """Each of ``params``'s ``.grad`` averaged over the ranks in one all-reduce (a rank without one counts zeros),
    or None where no rank had one: for parameters whose gradients DDP does not average (frozen since)."""
    dtype = functools.reduce(torch.promote_types, [p.dtype for p in params])
    sizes = [p.numel() for p in params]
    with torch.no_grad():
        flat = torch.zeros(len(params) + sum(sizes), dtype=dtype, device=params[0].device)
        had, values = flat[:len(params)], flat[len(params):].split(sizes)
        for index, p in enumerate(params):
            if p.grad is not None:
                had[index] = 1
                values[index].copy_(p.grad.reshape(-1))
        dist.all_reduce(flat)
        flat[len(params):].div_(dist.get_world_size())
        for p, count, value in zip(params, had.tolist(), values):
            if count == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = value.to(p.dtype).reshape(p.shape)
            else:
                p.grad.copy_(value.reshape(p.shape))


class _LossMarks:
    """The state of ``_marked_allreduce``: ``marker``, a scalar tensor (0, or NaN) set by ``mark_losses``."""

    def __init__(self):
        self.marker = None


def _marked_allreduce(marks, bucket):
    """DDP's all-reduce of a bucket (torch's own ``allreduce_hook``: the mean over the ranks), with the step's
    marker added to the first gradient of the first bucket before it: 0 changes nothing, NaN makes the averaged
    gradients non-finite on every rank."""
    if marks.marker is not None and bucket.index() == 0:
        buffer = bucket.buffer()
        buffer[:1].add_(marks.marker.to(buffer.dtype))
    return default_hooks.allreduce_hook(None, bucket)


def mark_losses(forward, losses) -> None:
    """Before the backward that all-reduces (an update's), under DDP: this rank's ``losses`` (the micro-steps' of the
    update) reach every rank through the gradients' own all-reduce, as ``0 * sum(losses)`` added to one gradient
    element (an exact no-op where they are finite, NaN where one is not). The non-finite guard, which checks this
    rank's losses and the averaged gradients, then decides alike on every rank without a collective of its own (a
    loss made infinite by a constant has finite gradients: only the marker tells the other ranks). Nothing outside
    DDP."""
    marks = getattr(forward, "_unidl_marks", None)
    if marks is not None:
        marks.marker = losses.detach().sum() * 0


def update_losses(window, loss):
    """The losses an update's non-finite guard checks: ``window`` (the earlier micro-steps' detached losses) and this
    micro-step's ``loss``, detached already (the step returns the same tensor: one detach a step)."""
    return torch.stack([*window, loss]) if window else loss


def backward(forward, root, losses=None):
    """``root.backward()``. In an update (``losses``: its guard's, see ``update_losses``) under DDP, the
    ``DataParallel.backward`` that all-reduces the gradients with the losses' marker: returns the losses the guard
    checks, the job's marker with them; else ``losses``."""
    if losses is not None and isinstance(forward, DataParallel):
        return forward.backward(root, losses)
    root.backward()
    return losses


def gradient_sync(forward, sync: bool):
    """The context for one micro-step's forward and backward: under DDP, ``DataParallel.sync`` (``no_sync()``
    when ``sync`` is False: its gradients accumulate in ``.grad`` on this rank; the next synced backward
    all-reduces the sum, torch's accumulation idiom, one all-reduce per update), else nothing."""
    if isinstance(forward, DataParallel):
        return forward.sync(sync)
    return _NO_SYNC


#: ``gradient_sync``'s context outside DDP (reusable: one object for every step)
_NO_SYNC = contextlib.nullcontext()
