"""unidl optimizers on PyTorch: ``torch.optim``'s implementation of a built-in rule as the fast path,
and ``RuleOptimizer`` (a ``torch.optim.Optimizer`` running the unidl optimizer's own ``update()``) for
every other rule, such as a user's subclass."""

from __future__ import annotations

import torch

from unidl.backends.torch import ops as torch_ops

#: torch.optim classes implementing unidl's built-in rules exactly, keyed by ``Optimizer.builtin_rule()``
_FAST_PATHS = {
    "SGD": lambda h: (torch.optim.SGD, dict(momentum=h["momentum"], nesterov=h["nesterov"], weight_decay=h["weight_decay"])),
    "Adam": lambda h: (torch.optim.Adam, dict(betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"])),
    "AdamW": lambda h: (torch.optim.AdamW, dict(betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"])),
    "RMSprop": lambda h: (torch.optim.RMSprop, dict(alpha=h["alpha"], eps=h["eps"], weight_decay=h["weight_decay"])),
    "Adagrad": lambda h: (torch.optim.Adagrad, dict(eps=h["eps"], weight_decay=h["weight_decay"],
                                                     initial_accumulator_value=h["initial_accumulator_value"])),
}


class RuleOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose ``step()`` runs a unidl optimizer's own rule: the regularized
    gradient (L1, coupled L2), then ``update()`` over slot tensors kept in ``self.state`` (so
    ``zero_grad``, ``param_groups`` and ``torch.optim.lr_scheduler`` work as with any torch optimizer)."""

    def __init__(self, spec):
        super().__init__(spec.params, dict(lr=spec.lr))
        self._spec = spec

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        spec = self._spec
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:  # PyTorch's rule: a parameter without a gradient is not updated
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    for name in spec.slots:
                        state[name] = torch.full_like(p, spec.initial_slot_value, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].to(p.dtype) if spec.uses_step else None
                grad = spec.regularized_gradient(p, p.grad, torch_ops)
                delta, new_slots = spec.update(p, grad, {name: state[name] for name in spec.slots}, lr, step, torch_ops)
                for name, value in new_slots.items():
                    if value is not state[name]:
                        state[name].copy_(value)
                p.sub_(delta)
        return loss


def native_optimizer(optimizer) -> torch.optim.Optimizer:
    """``torch.optim``'s optimizer for a built-in rule, else a ``RuleOptimizer`` running ``optimizer.update``."""
    fast_path = _FAST_PATHS.get(optimizer.builtin_rule())
    if fast_path is None:
        return RuleOptimizer(optimizer)
    torch_class, kwargs = fast_path(optimizer.hyper)
    return torch_class(optimizer.params, lr=optimizer.lr, **kwargs)


def l1_outside_rule(optimizer) -> float:
    """The L1 coefficient the backend must add to the gradients itself: torch.optim knows no L1 penalty,
    while a ``RuleOptimizer`` adds it in ``regularized_gradient``."""
    return 0.0 if isinstance(optimizer.native, RuleOptimizer) else optimizer.hyper["l1"]


def add_l1(optimizer) -> None:
    """Add ``l1 * sign(p)`` to every stored gradient (the L1 penalty's gradient) where torch.optim runs the rule."""
    l1 = l1_outside_rule(optimizer)
    if l1:
        with torch.no_grad():
            for p in optimizer.params:
                if p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=l1)
