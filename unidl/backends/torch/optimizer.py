"""unidl optimizers on PyTorch: ``torch.optim``'s own implementations of the same update rules."""

from __future__ import annotations

import torch

_CONSTRUCTORS = {
    "SGD": lambda h: (torch.optim.SGD, dict(momentum=h["momentum"], nesterov=h["nesterov"], weight_decay=h["weight_decay"])),
    "Adam": lambda h: (torch.optim.Adam, dict(betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"])),
    "AdamW": lambda h: (torch.optim.AdamW, dict(betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"])),
    "RMSprop": lambda h: (torch.optim.RMSprop, dict(alpha=h["alpha"], eps=h["eps"], weight_decay=h["weight_decay"])),
    "Adagrad": lambda h: (torch.optim.Adagrad, dict(eps=h["eps"], weight_decay=h["weight_decay"],
                                                     initial_accumulator_value=h["initial_accumulator_value"])),
}


def native_optimizer(optimizer) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer implementing ``optimizer``'s rule over its parameters."""
    for cls in type(optimizer).__mro__:
        if cls.__name__ in _CONSTRUCTORS:
            torch_class, kwargs = _CONSTRUCTORS[cls.__name__](optimizer.hyper)
            return torch_class(optimizer.params, lr=optimizer.lr, **kwargs)
    raise NotImplementedError(
        f"the torch backend has no implementation of {type(optimizer).__name__}; "
        f"supported: {', '.join(_CONSTRUCTORS)}")


def add_l1(optimizer) -> None:
    """Add ``l1 * sign(p)`` to every stored gradient (the L1 penalty's gradient)."""
    l1 = optimizer.hyper["l1"]
    if l1:
        with torch.no_grad():
            for p in optimizer.params:
                if p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=l1)
