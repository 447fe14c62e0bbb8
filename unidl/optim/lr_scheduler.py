"""Learning-rate schedules, computed in Python once per epoch (or step) and written into the optimizer.

Setting ``optimizer.lr`` updates a variable inside the backend (a ``tf.Variable``
on tensorflow, the Keras optimizer's learning-rate variable on keras, the
param groups on torch), so a new rate never retraces a compiled step.
"""

from __future__ import annotations

import bisect
import math

from unidl import arguments
from unidl.optim.optimizer import check_range


class LRScheduler:
    """Base class: ``step()`` advances the schedule by one and sets ``optimizer.lr``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]  # PyTorch's: one schedule per group
        self.last_epoch = 0

    def _set_lr(self, epoch: int) -> None:
        """Write the schedule's rate at ``epoch`` into the optimizer: each param group's from its own base
        rate (the first group's is ``base_lr``), as ``torch.optim.lr_scheduler`` does."""
        if len(self.base_lrs) == 1:
            self.optimizer.lr = self.lr_at(epoch)
            return
        first = self.base_lr
        try:
            for index, base in enumerate([first, *self.base_lrs[1:]]):
                self.base_lr = base
                self.optimizer.set_group_lr(index, self.lr_at(epoch))
        finally:
            self.base_lr = first

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        self.last_epoch += 1
        self._set_lr(self.last_epoch)
        return self.optimizer.lr

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict:
        """Where the schedule stands (epochs stepped, base rate), as plain JSON-serialisable data."""
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing."""
        from unidl.errors import CheckpointStateError

        owner = type(self).__name__
        if not isinstance(state, dict) or set(state) != {"last_epoch", "base_lr"}:
            raise CheckpointStateError(f"{owner} state must have exactly the keys 'last_epoch' and 'base_lr', got "
                                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        epoch = state["last_epoch"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise CheckpointStateError(f"{owner} state last_epoch must be a non-negative integer, got {epoch!r}")
        try:
            check_range(owner, "base_lr", state["base_lr"])
        except ValueError as error:
            raise CheckpointStateError(str(error)) from None

    def load_state_dict(self, state: dict) -> None:
        """Continue the schedule from ``state`` (checked first) and set the optimizer's lr accordingly."""
        self.check_state_dict(state)
        self.last_epoch, self.base_lr = int(state["last_epoch"]), float(state["base_lr"])
        self._set_lr(self.last_epoch)


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size), as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = arguments.positive_int("StepLR", "step_size", step_size)
        self.gamma = check_range("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (closed form of PyTorch's)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        self.T_max = arguments.positive_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = check_range("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch, as ``torch.optim.lr_scheduler.ExponentialLR``."""

    def __init__(self, optimizer, gamma: float):
        self.gamma = check_range("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= epoch), as ``torch.optim.lr_scheduler.MultiStepLR``
    (a milestone listed twice counts twice)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1):
        given = list(milestones)
        milestones = [arguments.integer(m) for m in given]
        if not all(m is not None and m >= 0 for m in milestones):
            raise ValueError(f"MultiStepLR milestones must be non-negative integers, got {given!r}")
        self.milestones = sorted(milestones)
        self.gamma = check_range("MultiStepLR", "gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class LinearLR(LRScheduler):
    """Linear warm-up (or decay): lr = base_lr * f, f going linearly from ``start_factor`` at epoch 0 to
    ``end_factor`` at ``total_iters`` and staying there, as ``torch.optim.lr_scheduler.LinearLR`` (whose
    defaults these are). The optimizer's lr is set to ``base_lr * start_factor`` at once."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR start_factor must lie in (0, 1] and end_factor in [0, 1], got "
                             f"start_factor={start_factor!r}, end_factor={end_factor!r}")
        total_iters = arguments.positive_int("LinearLR", "total_iters", total_iters)
        self.start_factor, self.end_factor, self.total_iters = float(start_factor), float(end_factor), total_iters
        super().__init__(optimizer)
        self._set_lr(0)

    def lr_at(self, epoch):
        done = min(epoch, self.total_iters) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done)


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(epoch), as ``torch.optim.lr_scheduler.LambdaLR`` (set at once for epoch 0).
    The function itself is not part of ``state_dict()``: build the schedule with the same one to resume."""

    def __init__(self, optimizer, lr_lambda):
        if not callable(lr_lambda):
            raise TypeError(f"LambdaLR lr_lambda must be a function epoch -> factor, got {type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)
        self._set_lr(0)

    def lr_at(self, epoch):
        return self.base_lr * float(self.lr_lambda(epoch))


class OneCycleLR(LRScheduler):
    """The 1cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR`` with its defaults: from
    ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of ``total_steps``, then down to
    ``max_lr / div_factor / final_div_factor`` (``three_phase``: back to the initial rate first), along a
    cosine (``anneal_strategy='cos'``) or a line (``'linear'``). Step it once per batch
    (``LearningRateScheduler(schedule, interval="batch")``); stepping past ``total_steps`` is an error.

    The optimizer's own lr is not used (``max_lr`` sets the scale). ``cycle_momentum=True`` cycles every param
    group's ``momentum`` (or Adam's beta1) the other way, between ``max_momentum`` and ``base_momentum``, as
    PyTorch does (a param group's option, bound here: compiled steps read it from a variable, so they never
    retrace for it; each step writes that one variable); unidl's default is False (PyTorch's is True).
    """

    def __init__(self, optimizer, max_lr: float, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = False, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False):
        if total_steps is None:
            counts = (arguments.integer(epochs), arguments.integer(steps_per_epoch))
            if not all(n is not None and n > 0 for n in counts):
                raise ValueError(f"OneCycleLR needs total_steps, or epochs and steps_per_epoch, as positive integers; "
                                 f"got total_steps=None, epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r}")
            total_steps = counts[0] * counts[1]
        total_steps = arguments.positive_int("OneCycleLR", "total_steps", total_steps)
        if not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR pct_start must lie in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.momentum_key = None
        if cycle_momentum:
            group = optimizer.param_groups[0]
            self.momentum_key = "momentum" if "momentum" in group else "betas" if "betas" in group else None
            if self.momentum_key is None:
                raise ValueError(f"OneCycleLR cycle_momentum=True needs an optimizer with momentum or betas; "
                                 f"{type(optimizer).__name__} has neither: pass cycle_momentum=False")
            for index in range(len(optimizer.param_groups)):  # before a step is compiled: no retrace for it later
                optimizer.bind_group_option(index, self.momentum_key)
        self.max_lr = check_range("OneCycleLR", "max_lr", max_lr)
        self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
        initial = self.max_lr / div_factor
        final = initial / final_div_factor
        rise = float(pct_start * total_steps) - 1
        high, low = max_momentum, base_momentum
        if three_phase:  # (last step of the phase, rate at its start, rate at its end); momentum's alike
            self.phases = [(rise, initial, self.max_lr), (2 * rise, self.max_lr, initial), (total_steps - 1, initial, final)]
            self.momentum_phases = [(rise, high, low), (2 * rise, low, high), (total_steps - 1, high, high)]
        else:
            self.phases = [(rise, initial, self.max_lr), (total_steps - 1, self.max_lr, final)]
            self.momentum_phases = [(rise, high, low), (total_steps - 1, low, high)]
        super().__init__(optimizer)
        self._set_lr(0)

    def _set_lr(self, epoch: int) -> None:
        super()._set_lr(epoch)
        if self.momentum_key is None:
            return
        momentum = self._along(self.momentum_phases, epoch)
        for group in self.optimizer.param_groups:
            group[self.momentum_key] = momentum if self.momentum_key == "momentum" else (momentum, group["betas"][1])

    def _anneal(self, start, end, fraction):
        if self.anneal_strategy == "linear":
            return (end - start) * fraction + start
        return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)

    def lr_at(self, epoch):
        if epoch > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {epoch} times, past its total_steps={self.total_steps}")
        return self._along(self.phases, epoch)

    def _along(self, phases, epoch):
        start_step = 0.0
        for index, (end_step, start, end) in enumerate(phases):
            if epoch <= end_step or index == len(phases) - 1:
                return self._anneal(start, end, (epoch - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")
