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
        dampening: tau >= 0 (default 0): the buffer takes ``(1 - tau)`` of each gradient after the parameter's first
            update, whose gradient it starts as (torch.optim's rule); fixed once built (it decides whether the rule
            counts each parameter's updates, ``uses_step``), per group too; not with ``nesterov``.
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

    @property
    def uses_step(self) -> bool:
        """Whether a param group has ``dampening``: then each parameter's updates are counted (``update``'s
        ``step``), as the buffer starts as the gradient at a parameter's first update (torch.optim's ``None``
        buffer) and is dampened from the second on; without dampening both are ``b = mu * 0 + g``."""
        return any(not is_off(group["dampening"]) for group in getattr(self, "param_groups", ()))

    def heavy_ball(self):
        # a fused kernel for constant options only: a bound momentum (a tensor, see bound_rule) may be 0 at a
        # step, which must leave the buffer as it is (``update``); dampening is not the kernel's rule
        h = self.hyper
        if (not isinstance(h["momentum"], float) or is_off(h["momentum"]) or not isinstance(h["nesterov"], bool)
                or not is_off(h["dampening"]) or type(self).update is not SGD.update):  # (a subclass's own rule)
            return None
        return ("momentum_buffer", h["momentum"], h["nesterov"])

    def check_group_change(self, index: int, key: str, value) -> None:
        """A dampened group's momentum may not rise from 0 once its parameters were updated: torch.optim would start
        the buffer anew there (its first step with momentum), this rule only at a parameter's first update."""
        group = self.param_groups[index]
        if key != "momentum" or not value or not is_off(group["momentum"]) or is_off(group["dampening"]):
            return
        counts = self._backend.optimizer_state(self)[2]
        members = [i for i in range(len(self.params)) if self.group_of(i) == index]
        if any(counts[i] for i in members):
            raise ValueError(f"param_groups[{index}]['momentum'] of SGD cannot rise from 0 to {value} after updates "
                             f"while the group has dampening={group['dampening']} (torch.optim would restart its "
                             f"momentum buffer there); build the SGD with momentum > 0")

    def update(self, param, grad, slots, lr, step, ops):
        # momentum and nesterov are Python values, or tensors where a graph backend reads a group's bound option
        h = self.hyper
        if is_off(h["momentum"]):
            return lr * grad, slots
        momentum, nesterov = scalar_like(h["momentum"], grad, ops), h["nesterov"]
        if is_off(h["dampening"]):
            buffer = momentum * slots["momentum_buffer"] + grad
        else:  # torch.optim: the buffer starts as the gradient, then buf * momentum + grad * (1 - dampening)
            dampened = momentum * slots["momentum_buffer"] + (1 - h["dampening"]) * grad
            buffer = ops.where(ops.cast(step, "float64") == 1.0, grad, dampened)
        if isinstance(nesterov, bool):
            direction = grad + momentum * buffer if nesterov else buffer
        else:
            direction = ops.where(nesterov, grad + momentum * buffer, buffer)
        if not isinstance(h["momentum"], float):  # a momentum set to 0 gives buffer = grad, direction = grad (plain
            # SGD's step, exactly) and, as torch.optim, leaves the buffer as it is for when momentum returns
            buffer = ops.where(h["momentum"] != 0, buffer, slots["momentum_buffer"] * 1.0)  # (a variable as a tensor)
        return lr * direction, {"momentum_buffer": buffer}
