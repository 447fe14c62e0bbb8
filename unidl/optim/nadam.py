"""NAdam: Adam with Nesterov momentum and Dozat's momentum schedule, with PyTorch's rule and defaults."""

from __future__ import annotations

from unidl.optim.adam import DecoupledWeightDecay, adam_options, moments
from unidl.optim.optimizer import Optimizer, as_float64, check_range, clipping_options, scalar_like


class NAdam(DecoupledWeightDecay, Optimizer):
    r"""NAdam (Dozat), as ``torch.optim.NAdam``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \quad (p_{t-1}(1 - \text{lr}\,\lambda) \text{ instead, if decoupled}) \\
        \mu_t &= \beta_1 (1 - \tfrac12\, 0.96^{t \psi}), \quad \Pi_t = \prod_{i \le t} \mu_i
               \quad (\psi = \text{momentum\_decay}) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        d_t &= \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        p_t &= p_{t-1} - \text{lr} \Big(\frac{1 - \mu_t}{1 - \Pi_t} \frac{g_t}{d_t}
               + \frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}} \frac{m_t}{d_t}\Big)

    Args (``torch.optim.NAdam``'s positional order): ``lr`` (2e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8),
    ``weight_decay`` (0), ``momentum_decay`` (psi >= 0, 4e-3), ``decoupled_weight_decay`` (False: L2 added to the
    gradient; True: AdamW's decay of the parameter; fixed once built), keywords ``maximize`` (False) and ``l1`` (0);
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, see ``Optimizer``).
    ``foreach``, ``capturable`` and ``differentiable`` are taken at PyTorch's defaults only.

    Slots: ``exp_avg``, ``exp_avg_sq`` and ``mu_product`` (the product of the mu_t: one float32 number per
    parameter, 0-d, as torch.optim's, in a float64 run too; it starts at 1 with the parameter's first update). The
    step is subtracted in its two terms in turn, as torch.optim's two ``addcdiv_``, so that float32 trajectories
    agree with torch.optim's as the other rules' do. Steps as every optimizer's (``Optimizer``).
    """

    slots = ("exp_avg", "exp_avg_sq", "mu_product")
    scalar_slots = ("mu_product",)
    uses_step = True  # bias correction and the momentum schedule
    torch_options = ("foreach", "capturable", "differentiable")
    torch_group_keys = ("betas", "eps", "weight_decay", "momentum_decay")

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 l1: float = 0.0, **clipping):
        owner = type(self).__name__
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping),
                         **adam_options(owner, betas, eps, weight_decay, maximize,
                                        decoupled_weight_decay=decoupled_weight_decay),
                         momentum_decay=check_range(owner, "momentum_decay", momentum_decay))

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        beta1, beta2 = (as_float64(beta, ops) for beta in h["betas"])
        step, decay = ops.cast(step, "float64"), as_float64(h["momentum_decay"], ops)
        # torch.optim's order: the moments, then the scalars in double precision
        exp_avg, exp_avg_sq = moments(slots, grad, h["betas"], ops)
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
        # the product so far, a float32 number (1 before the parameter's first update, whose slot holds its initial 0)
        before = ops.where(step > 1, slots["mu_product"], ops.zeros_like(slots["mu_product"]) + 1)
        mu_product = before * ops.cast_like(mu, before)
        denom = ops.sqrt(exp_avg_sq / ops.cast_like(1 - beta2 ** step, param)) + scalar_like(h["eps"], param, ops)
        # torch.optim's two addcdiv_, their factors in double precision from the float32 product
        lr, product = as_float64(lr, ops), ops.cast(mu_product, "float64")
        first = ops.cast_like(lr * (1 - mu) / (1 - product), param)
        second = ops.cast_like(lr * mu_next / (1 - product * mu_next), param)
        return ((first * (grad / denom), second * (exp_avg / denom)),
                {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "mu_product": mu_product})
