"""Adamax: Adam with the infinity norm in place of the second moment, with PyTorch's rule and defaults."""

from __future__ import annotations

from unidl.optim.adam import adam_options
from unidl.optim.optimizer import Optimizer, as_float64, clipping_options, lerp, scalar_like, torch_option


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba), as ``torch.optim.Adamax``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        u_t &= \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
        p_t &= p_{t-1} - \frac{\text{lr}}{1 - \beta_1^t} \frac{m_t}{u_t}

    Args (``torch.optim.Adamax``'s positional order): ``lr`` (2e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8),
    ``weight_decay`` (L2, 0), ``foreach`` (None; at PyTorch's defaults only, as ``capturable`` and
    ``differentiable``), keywords ``maximize`` (False) and ``l1`` (0); ``clip_grad_norm``, ``clip_grad_value``,
    ``clip_per_tensor`` (gradient clipping, see ``Optimizer``).

    Slots: ``exp_avg`` and ``exp_inf``. Steps as every optimizer's (``Optimizer``).
    """

    slots = ("exp_avg", "exp_inf")
    uses_step = True  # bias correction
    torch_options = ("foreach", "capturable", "differentiable")
    torch_group_keys = ("betas", "eps", "weight_decay")

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 foreach: bool | None = None, *, maximize: bool = False, l1: float = 0.0, **clipping):
        torch_option(type(self), "foreach", foreach)
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping),
                         **adam_options(type(self).__name__, betas, eps, weight_decay, maximize))

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        beta1, beta2 = h["betas"]
        exp_avg = lerp(slots["exp_avg"], grad, 1 - beta1, ops)
        exp_inf = ops.maximum(scalar_like(beta2, grad, ops) * slots["exp_inf"],
                              ops.abs(grad) + scalar_like(h["eps"], grad, ops))
        # torch.optim's clr = lr / (1 - beta1 ** t), in double precision
        clr = as_float64(lr, ops) / (1 - as_float64(beta1, ops) ** ops.cast(step, "float64"))
        return ops.cast_like(clr, param) * (exp_avg / exp_inf), {"exp_avg": exp_avg, "exp_inf": exp_inf}
