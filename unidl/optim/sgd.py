"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay (PyTorch's rule)."""

from __future__ import annotations

from unidl import arguments
from unidl.optim.optimizer import Optimizer, clipping_options, check_range, is_off, scalar_like, torch_option


class SGD(Optimizer):
    r"""Stochastic gradient descent.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \quad (\lambda = \text{weight\_decay}) \\
        b_t &= \mu b_{t-1} + g_t \quad (b_0 = 0) \\
        d_t &= g_t + \mu b_t \text{ if nesterov else } b_t \text{ (or } g_t \text{ if } \mu = 0) \\
        p_t &= p_{t-1} - \text{lr}\, d_t

    Args:
        params: the parameters to update (``model.parameters()``).
        lr: learning rate, >= 0.
        momentum: mu in [0, 1) (default 0).
        dampening: 0 only (PyTorch's default; unidl's rule has no dampening).
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
    torch_options = ("dampening", "foreach", "differentiable", "fused")

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False, l1: float = 0.0,
                 **clipping):
        torch_option(type(self), "dampening", dampening)
        momentum = check_range("SGD", "momentum", momentum, 0.0, 1.0)
        nesterov = arguments.flag("SGD", "nesterov", nesterov)
        if nesterov and momentum <= 0:
            raise ValueError("SGD nesterov=True needs momentum > 0, got momentum=0")
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping), momentum=momentum,
                         nesterov=nesterov, weight_decay=check_range("SGD", "weight_decay", weight_decay),
                         maximize=arguments.flag("SGD", "maximize", maximize))

    def heavy_ball(self):
        # a fused kernel for constant options only: a bound momentum (a tensor, see bound_rule) may be 0 at a
        # step, which must leave the buffer as it is (``update``)
        h = self.hyper
        if (not isinstance(h["momentum"], float) or is_off(h["momentum"]) or not isinstance(h["nesterov"], bool)
                or type(self).update is not SGD.update):  # a subclass's own rule is not the kernel's
            return None
        return ("momentum_buffer", h["momentum"], h["nesterov"])

    def update(self, param, grad, slots, lr, step, ops):
        # momentum and nesterov are Python values, or tensors where a graph backend reads a group's bound option
        h = self.hyper
        if is_off(h["momentum"]):
            return lr * grad, slots
        momentum, nesterov = scalar_like(h["momentum"], grad, ops), h["nesterov"]
        buffer = momentum * slots["momentum_buffer"] + grad
        if isinstance(nesterov, bool):
            direction = grad + momentum * buffer if nesterov else buffer
        else:
            direction = ops.where(nesterov, grad + momentum * buffer, buffer)
        if not isinstance(h["momentum"], float):  # a momentum set to 0 gives buffer = grad, direction = grad (plain
            # SGD's step, exactly) and, as torch.optim, leaves the buffer as it is for when momentum returns
            buffer = ops.where(h["momentum"] != 0, buffer, slots["momentum_buffer"] * 1.0)  # (a variable as a tensor)
        return lr * direction, {"momentum_buffer": buffer}
