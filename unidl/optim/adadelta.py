"""Adadelta: a step scaled by the ratio of running RMS of updates and of gradients, with PyTorch's rule and
defaults."""

from __future__ import annotations

from unidl import arguments
from unidl.optim.optimizer import Optimizer, check_range, clipping_options, scalar_like, torch_option


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler), as ``torch.optim.Adadelta``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \\
        v_t &= \rho v_{t-1} + (1 - \rho) g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
        u_t &= \rho u_{t-1} + (1 - \rho) \Delta_t^2 \\
        p_t &= p_{t-1} - \text{lr}\, \Delta_t

    Args (``torch.optim.Adadelta``'s positional order): ``lr`` (1.0), ``rho`` (in [0, 1], 0.9), ``eps`` (1e-6),
    ``weight_decay`` (L2, 0), ``foreach`` (None; at PyTorch's defaults only, as ``capturable`` and
    ``differentiable``), keywords ``maximize`` (False) and ``l1`` (0); ``clip_grad_norm``, ``clip_grad_value``,
    ``clip_per_tensor`` (gradient clipping, see ``Optimizer``).

    Slots: ``square_avg`` (v) and ``acc_delta`` (u). Steps as every optimizer's (``Optimizer``).
    """

    slots = ("square_avg", "acc_delta")
    torch_options = ("foreach", "capturable", "differentiable")
    torch_group_keys = ("rho", "eps", "weight_decay")

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
                 foreach: bool | None = None, *, maximize: bool = False, l1: float = 0.0, **clipping):
        owner = type(self).__name__
        torch_option(type(self), "foreach", foreach)
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping),
                         rho=check_range(owner, "rho", rho, 0.0, 1.0, high_open=False),
                         eps=check_range(owner, "eps", eps),
                         weight_decay=check_range(owner, "weight_decay", weight_decay),
                         maximize=arguments.flag(owner, "maximize", maximize))

    def update(self, param, grad, slots, lr, step, ops):
        # torch.optim's order: square_avg.mul_(rho).addcmul_(grad, grad, 1 - rho), the roots with eps inside
        h = self.hyper
        rho, eps = scalar_like(h["rho"], grad, ops), scalar_like(h["eps"], grad, ops)
        square_avg = rho * slots["square_avg"] + scalar_like(1 - h["rho"], grad, ops) * grad * grad
        delta = ops.sqrt(slots["acc_delta"] + eps) / ops.sqrt(square_avg + eps) * grad
        acc_delta = rho * slots["acc_delta"] + scalar_like(1 - h["rho"], grad, ops) * delta * delta
        return lr * delta, {"square_avg": square_avg, "acc_delta": acc_delta}
