"""RAdam: Adam with the variance of its adaptive rate rectified, with PyTorch's rule and defaults."""

from __future__ import annotations

from unidl.optim.adam import DecoupledWeightDecay, adam_options, moments
from unidl.optim.optimizer import Optimizer, as_float64, clipping_options, scalar_like


class RAdam(DecoupledWeightDecay, Optimizer):
    r"""RAdam (Liu et al.), as ``torch.optim.RAdam``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \quad (p_{t-1}(1 - \text{lr}\,\lambda) \text{ instead, if decoupled}) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \quad
               \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        p_t &= p_{t-1} - \text{lr} \frac{m_t}{1 - \beta_1^t}
               \cdot \begin{cases} r_t \sqrt{1 - \beta_2^t} / (\sqrt{v_t} + \epsilon) & \rho_t > 5 \\
               1 & \text{otherwise} \end{cases}

    Args (``torch.optim.RAdam``'s positional order): ``lr`` (1e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8),
    ``weight_decay`` (0), ``decoupled_weight_decay`` (False: L2 added to the gradient; True: AdamW's decay of the
    parameter; fixed once built), keywords ``maximize`` (False) and ``l1`` (0); ``clip_grad_norm``,
    ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, see ``Optimizer``). ``foreach``, ``capturable``
    and ``differentiable`` are taken at PyTorch's defaults only.

    Slots: ``exp_avg`` and ``exp_avg_sq``. Steps as every optimizer's (``Optimizer``).
    """

    slots = ("exp_avg", "exp_avg_sq")
    uses_step = True  # bias corrections and rho_t
    torch_options = ("foreach", "capturable", "differentiable")
    torch_group_keys = ("betas", "eps", "weight_decay", "decoupled_weight_decay")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False, l1: float = 0.0, **clipping):
        owner = type(self).__name__
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping),
                         **adam_options(owner, betas, eps, weight_decay, maximize,
                                        decoupled_weight_decay=decoupled_weight_decay))

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        beta1, beta2 = (as_float64(beta, ops) for beta in h["betas"])
        step = ops.cast(step, "float64")
        exp_avg, exp_avg_sq = moments(slots, grad, h["betas"], ops)
        bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * beta2 ** step / bias_correction2
        # (the root of a negative number where rho_t <= 4: NaN, in the branch the switch leaves out)
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        step_size = exp_avg / ops.cast_like(bias_correction1, param) * scalar_like(lr, param, ops)
        adaptive = ops.cast_like(bias_correction2 ** 0.5, param) / (ops.sqrt(exp_avg_sq)
                                                                    + scalar_like(h["eps"], param, ops))
        delta = ops.where(rho_t > 5, step_size * adaptive * ops.cast_like(rect, param), step_size)
        return delta, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
