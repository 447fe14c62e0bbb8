"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay (PyTorch's rule)."""

from __future__ import annotations

from unidl import arguments
from unidl.optim.optimizer import Optimizer, clipping_options, check_range, is_off, scalar_like


class SGD(Optimizer):
    r"""Stochastic gradient descent.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \quad (\lambda = \text{weight\_decay}) \\
        b_t &= \mu b_{t-1} + (1 - \tau) g_t \quad (b_1 = g_1;\ \tau = \text{dampening}) \\
        d_t &= g_t + \mu b_t \text{ if nesterov else } b_t \text{ (or } g_t \text{ if } \mu = 0) \\
        p_t &= p_{t-1} - \text{lr}\, d_t

    Args:
        params: the parameters to update (``model.parameters()``).
        lr: learning rate, >= 0.
        momentum: mu in [0, 1) (default 0).
        dampening: tau >= 0 (default 0): the buffer takes ``(1 - tau)`` of each gradient, after the parameter's
            first update with momentum, whose gradient it starts as (torch.optim's rule: the slot
            ``momentum_started`` marks it); fixed once built, per group too; not with ``nesterov``.
        weight_decay: L2 penalty lambda >= 0 (added to the gradient).
        nesterov: Nesterov momentum (needs momentum > 0).
        maximize: ascend the objective (the gradient negated first, as torch.optim's; keyword only).
        l1: L1 penalty, adds ``l1 * sign(p)`` to the gradient (keyword only).
        **clipping: ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor``: gradient clipping (see
            ``Optimizer``).

    The positional order is ``torch.optim.SGD``'s; ``foreach``, ``differentiable`` and ``fused`` are taken at
    PyTorch's defaults only.

    Steps: ``optimizer.apply(grads)`` performs one update on every backend (grads in ``params`` order,
    e.g. from ``ud.value_and_grad``); ``ud.train_step``/``ud.fit`` call it for you. PyTorch-style
    ``zero_grad()`` then ``loss.backward()`` then ``step()`` works on the torch backend, where gradients
    live on the parameters; elsewhere ``zero_grad()`` is a no-op and ``step()`` explains the alternative.

    Example::

        opt = ud.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    """

    slots = ("momentum_buffer",)
    torch_options = ("foreach", "differentiable", "fused")
    torch_group_keys = ("momentum", "dampening", "nesterov", "weight_decay")

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False, l1: float = 0.0,
                 **clipping):
        momentum = check_range("SGD", "momentum", momentum, 0.0, 1.0)
        nesterov = arguments.flag("SGD", "nesterov", nesterov)
        if nesterov and momentum <= 0:
            raise ValueError("SGD nesterov=True needs momentum > 0, got momentum=0")
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping), momentum=momentum,
                         dampening=check_range("SGD", "dampening", dampening),
                         nesterov=nesterov, weight_decay=check_range("SGD", "weight_decay", weight_decay),
                         maximize=arguments.flag("SGD", "maximize", maximize))
        for index, group in enumerate(self.param_groups):
            if group["nesterov"] and not is_off(group["dampening"]):  # (torch.optim.SGD's check)
                raise ValueError(f"SGD param group {index}: nesterov=True needs zero dampening, got dampening="
                                 f"{group['dampening']}")

    def slots_for(self, groups) -> tuple[str, ...]:
        """``momentum_buffer``, and ``momentum_started`` where a group has ``dampening``: 1 once the parameter was
        updated with momentum (torch.optim's buffer is None before that: it starts as the gradient, undampened)."""
        return ("momentum_buffer", *(("momentum_started",) if any(not is_off(g["dampening"]) for g in groups) else ()))

    def heavy_ball(self):
        # a fused kernel for constant options only: a bound momentum (a tensor, see bound_rule) may be 0 at a
        # step, which must leave the buffer as it is (``update``); dampening is not the kernel's rule
        h = self.hyper
        if (not isinstance(h["momentum"], float) or is_off(h["momentum"]) or not isinstance(h["nesterov"], bool)
                or not is_off(h["dampening"]) or type(self).update is not SGD.update):  # (a subclass's own rule)
            return None
        return ("momentum_buffer", h["momentum"], h["nesterov"])

    def update(self, param, grad, slots, lr, step, ops):
        # momentum and nesterov are Python values, or tensors where a graph backend reads a group's bound option
        h = self.hyper
        if is_off(h["momentum"]):
            return lr * grad, slots
        momentum, nesterov = scalar_like(h["momentum"], grad, ops), h["nesterov"]
        new_slots = {**slots}
        if is_off(h["dampening"]):
            buffer = momentum * slots["momentum_buffer"] + grad
        else:  # torch.optim: the buffer starts as the gradient, then buf * momentum + grad * (1 - dampening)
            dampened = momentum * slots["momentum_buffer"] + (1 - h["dampening"]) * grad
            buffer = ops.where(slots["momentum_started"] > 0, dampened, grad)
            started = ops.zeros_like(grad) + 1
            new_slots["momentum_started"] = started if isinstance(h["momentum"], float) else \
                ops.where(h["momentum"] != 0, started, slots["momentum_started"] * 1.0)
        if isinstance(nesterov, bool):
            direction = grad + momentum * buffer if nesterov else buffer
        else:
            direction = ops.where(nesterov, grad + momentum * buffer, buffer)
        if not isinstance(h["momentum"], float):  # a momentum set to 0 gives buffer = grad, direction = grad (plain
            # SGD's step, exactly) and, as torch.optim, leaves the buffer as it is for when momentum returns
            if not is_off(h["dampening"]):  # (a started dampened buffer would give (1 - dampening) * grad)
                direction = ops.where(h["momentum"] != 0, direction, grad)
            buffer = ops.where(h["momentum"] != 0, buffer, slots["momentum_buffer"] * 1.0)  # (a variable as a tensor)
        new_slots["momentum_buffer"] = buffer
        return lr * direction, new_slots
