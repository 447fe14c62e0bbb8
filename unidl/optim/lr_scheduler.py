"""Learning-rate schedules, computed in Python once per epoch (or step) and written into the optimizer.

Setting ``optimizer.lr`` updates a variable inside the backend (a ``tf.Variable``
on tensorflow, the Keras optimizer's learning-rate variable on keras, the
param groups on torch), so a new rate never retraces a compiled step.
"""

from __future__ import annotations

import math

from unidl.optim.optimizer import check_range


class LRScheduler:
    """Base class: ``step()`` advances the schedule by one and sets ``optimizer.lr``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)
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
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size), as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        if not isinstance(step_size, int) or step_size <= 0:
            raise ValueError(f"StepLR step_size must be a positive integer, got {step_size!r}")
        self.step_size = step_size
        self.gamma = check_range("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (closed form of PyTorch's)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        if not isinstance(T_max, int) or T_max <= 0:
            raise ValueError(f"CosineAnnealingLR T_max must be a positive integer, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = check_range("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
