"""Mixed precision on torch: the forward under ``torch.autocast``, float32 master weights, and dynamic loss
scaling for float16 by ``torch.amp.GradScaler``'s rule (see ``unidl.precision``)."""

from __future__ import annotations

import numpy as np
import torch

from unidl.backends.torch.distributed import backward, data_parallel, gradient_sync, update_losses
from unidl.backends.torch.nesting import differentiated
from unidl.nested import tree_map
from unidl.backends.torch.optimizer import add_l1, clear_gradients, guard_and_clip, l1_outside_rule, torch_window
from unidl.precision import BACKOFF_FACTOR, FLOAT32_MAX, GROWTH_FACTOR
from unidl.training import loss_scale_storage

_COMPUTE = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class LossScale:
    """The dynamic loss scale (GradScaler's state): ``scale`` and the count of finite steps in a row."""

    def __init__(self, precision):
        self.precision = precision
        self.scale = float(np.float32(precision.init_scale))  # (a float32, as GradScaler's)
        self.good_steps = 0

    def unscale(self, params) -> None:
        """Divide the stored gradients by the scale (before the non-finite guard and clipping read them)."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, finite: bool) -> None:
        p = self.precision
        if not finite:
            self.scale *= BACKOFF_FACTOR
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == p.growth_interval:
            if self.scale * GROWTH_FACTOR <= FLOAT32_MAX:  # (GradScaler keeps a scale whose growth would overflow)
                self.scale *= GROWTH_FACTOR
            self.good_steps = 0

    def checkpointed(self):
        """This scale as a ``unidl.training.LossScaler`` (the optimizer's checkpointed state): its attributes
        ``scale`` and ``good_steps``, kept as Python numbers."""
        import numpy as np

        from unidl.training import variable_scaler

        return variable_scaler(self.precision, "scale", "good_steps", lambda name: np.asarray(getattr(self, name)),
                               lambda name, value: setattr(self, name, value.item()))


def _float32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def detached(outputs):
    """A step's outputs (a tensor, or tuples, lists, NamedTuples and dicts of them; other leaves as they are)
    detached from the autograd graph."""
    return tree_map(lambda value: value.detach() if isinstance(value, torch.Tensor) else value, outputs)


def train_step(backend, model, loss_fn, optimizer, precision, with_outputs, accumulate=1):
    """``Backend.mixed_precision_train_step`` of the torch backend (always eager). With ``accumulate`` N > 1,
    GradScaler's accumulation: the N micro-steps' scaled gradients ``(loss / N * scale).backward()`` add up in
    ``.grad`` (under DDP only the last one all-reduces), then one unscale, one overflow check (skipping the
    whole update) and one scale update per optimizer update."""
    native = optimizer.native
    to_input = backend.to_input
    l1 = l1_outside_rule(optimizer)
    dtype = _COMPUTE[precision.compute_dtype]
    # the optimizer's one loss scale (every float16 step of it moves the same; its checkpointed state)
    scaler = loss_scale_storage(optimizer, precision, lambda: LossScale(precision)) if precision.scales_loss else None
    # in a process group: DDP averages the gradients, the loss's own parameters' too (overflow seen by every rank)
    forward = data_parallel(model, loss_fn, optimizer)
    window = []  # the losses of the micro-steps accumulated in .grad so far: the optimizer's one window
    if accumulate > 1:
        from unidl.training import accumulation_window

        window = accumulation_window(optimizer, accumulate, precision, lambda: torch_window(
            optimizer, accumulate, [], lambda: scaler.scale if scaler is not None else 1.0)).storage

    def step(x, y, *inputs):
        x, y = to_input(x), to_input(y)
        if inputs:
            inputs = backend.extra_step_inputs(inputs)
        if not window:
            clear_gradients(native)
        updates = len(window) + 1 == accumulate
        with gradient_sync(forward, updates), differentiated():
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                outputs = forward(x, *inputs)
            outputs = tree_map(_float32, outputs)  # (a tensor, or tuples, lists and dicts of them)
            loss = loss_fn(outputs, y)  # the loss in float32, as autocast computes losses
            detached_loss = loss.detach()  # (what the step returns, the window keeps and the guard checks)
            scaled = loss / accumulate if accumulate > 1 else loss
            # the window's losses, which the guard checks (under DDP: with the job's marker, from the gradients'
            # all-reduce)
            losses = backward(forward, scaled if scaler is None else scaled * scaler.scale,
                              update_losses(window, detached_loss) if updates else None)
        result = (detached_loss, detached(outputs)) if with_outputs else detached_loss
        if not updates:
            window.append(detached_loss)
            optimizer._finite = True  # nothing skipped yet: the window's check comes with its update
            return result
        window.clear()
        if scaler is not None:
            scaler.unscale(optimizer.params)
        # the non-finite guard (under DDP the averaged gradients carry every rank's losses), then clipping, on
        # unscaled gradients
        finite = guard_and_clip(optimizer, losses)
        if scaler is not None:
            scaler.update(finite)
        if finite:
            if l1:
                add_l1(optimizer)
            native.step()
            optimizer._steps += 1
        else:  # a skipped step leaves no overflowed gradient behind for a later optimizer.step()
            native.zero_grad(set_to_none=True)
        return result

    step.loss_scale = lambda: scaler.scale if scaler is not None else 1.0
    return step
