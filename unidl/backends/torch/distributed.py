"""torch's data-parallel engine for unidl: ``torch.distributed`` (gloo on CPU, NCCL on CUDA) joins the group,
and ``DistributedDataParallel`` averages the gradients of the torch backend's training step.

``data_parallel(model)`` is what ``Backend.train_step`` calls forward through: the model itself in one
process, a ``DistributedDataParallel`` over the model's ``NativeModule`` (the very same parameters) in a
group, so that ``loss.backward()`` ends with gradients averaged over every rank by torch's reducer.
``gradient_sync(forward, sync)`` wraps a micro-step of gradient accumulation: only the update micro-step's
backward all-reduces (the others run under ``no_sync()`` and accumulate locally in ``.grad``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from unidl.backends.torch.module import NativeModule
from unidl.errors import DistributedError

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}


class Engine:
    """The ``torch.distributed`` process group (see ``unidl.distributed.process_group``)."""

    def start(self, rank, world_size, address, port, timeout):
        from unidl.distributed.environment import LOOPBACK, loopback_interface

        if not dist.is_available():
            raise DistributedError("this torch build has no torch.distributed; install a build with it")
        if address in (LOOPBACK, "localhost") and "GLOO_SOCKET_IFNAME" not in os.environ:
            interface = loopback_interface()  # gloo resolves the hostname otherwise, which may not resolve
            if interface:
                os.environ["GLOO_SOCKET_IFNAME"] = interface
        engine = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        # under torchrun the workers join the store its agent already serves on MASTER_PORT ("env://")
        torchrun = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        dist.init_process_group(engine, init_method="env://" if torchrun else f"tcp://{address}:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout))

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
        gradients (``mark_losses``). For a trainer that runs its own step (Keras's), and for
        unidl's (``data_parallel``)."""
        # a kernel whose size-1 dimensions have other strides than the parameter's (a 1-channel conv) makes torch's
        # reducer warn at every run, though the copy it warns about is of those dimensions only
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        # find_unused_parameters: a step whose forward skips a layer (a dynamic net) gives it no gradient, as in one
        # process, where DDP would otherwise leave that layer's bucket unreduced and fail at the next step (one
        # walk of the autograd graph per step; torch then warns once per process if a step used every parameter)
        forward = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index or 0] if device.type == "cuda" else None, find_unused_parameters=True)
        forward._unidl_marks = _LossMarks()  # (its all-reduce carries the losses' marker: ``mark_losses``)
        forward.register_comm_hook(forward._unidl_marks, _marked_allreduce)
        return forward

    @staticmethod
    def mark_losses(forward, losses) -> None:
        """``mark_losses`` for a trainer that runs its own step through ``wrap_forward`` (Keras's)."""
        mark_losses(forward, losses)


def data_parallel(model):
    """``model``, or in a group of several processes a ``DistributedDataParallel`` over it: rank 0's
    parameters and buffers are broadcast now, and every backward averages the gradients over the ranks, carrying a
    non-finite loss of any rank to every rank's gradients (``mark_losses``)."""
    from unidl.distributed import process_group

    if process_group.sharding() is None or not dist.is_initialized():
        return model
    return Engine.wrap_forward(NativeModule(model))


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


def update_losses(forward, window, loss):
    """The losses an update's non-finite guard checks: ``window`` (the earlier micro-steps' detached losses) and this
    micro-step's ``loss``; under DDP also marked into the update's all-reduce (``mark_losses``), before its
    backward."""
    losses = torch.stack([*window, loss.detach()]) if window else loss.detach()
    if isinstance(forward, torch.nn.parallel.DistributedDataParallel):
        mark_losses(forward, losses)
    return losses


def gradient_sync(forward, sync: bool):
    """The context for one micro-step's forward and backward: ``DistributedDataParallel.no_sync()`` when ``sync``
    is False and ``forward`` is one (its gradients accumulate in ``.grad`` on this rank; the next synced backward
    all-reduces the sum, torch's accumulation idiom, one all-reduce per update), else nothing."""
    if sync or not isinstance(forward, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return forward.no_sync()
