"""Adam and AdamW with PyTorch's update rule, epsilon placement and bias correction."""

from __future__ import annotations

from unidl import arguments
from unidl.optim.optimizer import Optimizer, as_float64, clipping_options, check_range, is_off, lerp, scalar_like


def check_betas(owner, betas):
    """``betas`` as a pair of Python floats in [0, 1) (a tuple, a list, a 1-d array), ``ValueError`` otherwise: the
    check of every Adam-like rule (Adam, NAdam, RAdam, Adamax)."""
    pair = arguments.sequence(betas)  # a tuple, a list, a 1-d array: as a param group's betas
    if pair is None or len(pair) != 2:
        raise ValueError(f"{owner} betas must be a pair (beta1, beta2), got {betas!r}")
    return (check_range(owner, "betas[0]", pair[0], 0.0, 1.0), check_range(owner, "betas[1]", pair[1], 0.0, 1.0))


def adam_options(owner, betas, eps, weight_decay, maximize, **flags) -> dict:
    """The options every Adam-like rule (Adam, NAdam, RAdam, Adamax) has, checked as the constructors check them,
    and its own bool ``flags`` (``amsgrad``, ``decoupled_weight_decay``), each checked as a bool."""
    return dict(betas=check_betas(owner, betas), eps=check_range(owner, "eps", eps),
                weight_decay=check_range(owner, "weight_decay", weight_decay),
                maximize=arguments.flag(owner, "maximize", maximize),
                **{name: arguments.flag(owner, name, value) for name, value in flags.items()})


def moments(slots, grad, betas, ops):
    """Adam's moments ``(exp_avg, exp_avg_sq)`` as torch.optim updates them, so that trajectories agree to the last
    bits: ``exp_avg.lerp_(grad, 1 - beta1)`` (``lerp``), ``exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)``;
    ``betas`` Python floats, or tensors where a graph backend reads a group's bound option.

    torch's CPU kernels round each of the two once, as fused multiply-adds: ``fma(1 - beta1, grad - exp_avg,
    exp_avg)`` and ``fma((1 - beta2) * grad, grad, beta2 * exp_avg_sq)``. The sum is written with the product torch
    fuses first, because XLA (jax, Keras-on-JAX) fuses a sum's first operand where it is a product: written the other
    way round, jax's ``exp_avg_sq`` was ``fma(beta2, exp_avg_sq, ...)``, one rounding off torch's in 16-22% of the
    elements from the second step on; now bit for bit. TensorFlow's graphs fuse nothing: two roundings each, one unit
    in the last place off torch's in 29% (``exp_avg``) and 16% (``exp_avg_sq``) of the elements; its XLA graphs
    (``ud.function(jit_compile=True)``) fuse as jax's do."""
    beta1, beta2 = betas
    exp_avg = lerp(slots["exp_avg"], grad, 1 - beta1, ops)
    exp_avg_sq = scalar_like(1 - beta2, grad, ops) * grad * grad + scalar_like(beta2, grad, ops) * slots["exp_avg_sq"]
    return exp_avg, exp_avg_sq


class DecoupledWeightDecay:
    """``decoupled_weight_decay`` of Adam, NAdam and RAdam: their ``weight_decay`` is AdamW's decoupled decay
    (``shrink``) where a group sets it, else the L2 term added to the gradient (``regularized_gradient``)."""

    @property
    def decoupled(self) -> bool:
        """Whether this rule's (a param group's) ``weight_decay`` is AdamW's decoupled decay (``shrink``) rather than
        the L2 term added to the gradient: ``decoupled_weight_decay``, a Python bool (fixed once built)."""
        return self.hyper["decoupled_weight_decay"]

    def shrink(self, param, lr, ops):
        """AdamW's decoupled decay: ``1 - lr * weight_decay`` in double precision, rounded to the parameter's dtype,
        the factor ``torch.optim.AdamW`` multiplies the parameter by before its step (``p - (lr wd p + step)``, the
        same in exact arithmetic, drifted from it in float32: 1e-5 after 1000 steps); coupled L2 is in the
        gradient (``regularized_gradient``)."""
        decay = self.hyper["weight_decay"]
        if not self.decoupled or is_off(decay):
            return None
        if isinstance(lr, float) and isinstance(decay, float):
            return 1 - lr * decay
        lr, decay = as_float64(lr, ops), as_float64(decay, ops)
        return ops.cast_like(1 - lr * decay, param)


class Adam(DecoupledWeightDecay, Optimizer):
    r"""Adam (Kingma & Ba), as ``torch.optim.Adam``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t \\
        p_t &= p_{t-1} - \frac{\text{lr}}{1 - \beta_1^t}\,
               \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Args (``torch.optim.Adam``'s positional order): ``lr`` (1e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8),
    ``weight_decay`` (L2, 0), ``amsgrad`` (False; the slot ``max_exp_avg_sq`` where a group sets it, fixed once the
    optimizer is built, as RMSprop's ``centered``), keywords ``maximize`` (False: the gradient negated first, as
    torch.optim's) and ``l1`` (0);
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, off by default; see ``Optimizer``).

    Steps: ``optimizer.apply(grads)`` performs one update on every backend (grads in ``params`` order,
    e.g. from ``ud.value_and_grad``); ``ud.train_step``/``ud.fit`` call it for you. PyTorch-style
    ``zero_grad()`` then ``loss.backward()`` then ``step()`` works on the torch backend, where gradients
    live on the parameters; elsewhere ``zero_grad()`` is a no-op and ``step()`` explains the alternative.
    """

    slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # (an instance keeps the last where a group is amsgrad)
    uses_step = True  # bias correction
    torch_options = ("foreach", "capturable", "differentiable", "fused")
    torch_group_keys = ("betas", "eps", "weight_decay", "amsgrad")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False, l1: float = 0.0, **clipping):
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping),
                         **adam_options(type(self).__name__, betas, eps, weight_decay, maximize, amsgrad=amsgrad,
                                        decoupled_weight_decay=decoupled_weight_decay))

    def slots_for(self, groups) -> tuple[str, ...]:
        """``exp_avg`` and ``exp_avg_sq``, and ``max_exp_avg_sq`` where a group is ``amsgrad``."""
        return ("exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if any(g["amsgrad"] for g in groups) else ()))

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        beta1, beta2 = h["betas"]  # Python floats, or float64 tensors where a graph backend lets a group change them
        # the same sequence of operations as torch.optim.Adam's, so that trajectories agree to the last bits: the
        # moments (``moments``), the bias corrections and the step size in double precision, then rounded to the
        # parameter's dtype
        exp_avg, exp_avg_sq = moments(slots, grad, h["betas"], ops)
        step = ops.cast(step, "float64")
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = ops.sqrt(1 - beta2 ** step)
        lr_double = as_float64(lr, ops)
        step_size = ops.cast_like(lr_double / bias_correction1, param)
        new_slots = {**slots, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if h["amsgrad"]:  # (a fixed option: a Python bool; torch.maximum into max_exp_avg_sq, then its root)
            exp_avg_sq = new_slots["max_exp_avg_sq"] = ops.maximum(slots["max_exp_avg_sq"], exp_avg_sq)
        denom = ops.sqrt(exp_avg_sq) / ops.cast_like(bias_correction2_sqrt, param) + scalar_like(h["eps"], param, ops)
        # (torch's ``addcdiv_`` computes ``(step_size * exp_avg) / denom``, one rounding apart in 0.1% of the elements;
        # that order moved the LeNet trajectories' bound by chance, 1 to 2.5 roundings: docs/guarantees.md, Adam row)
        delta = step_size * (exp_avg / denom)
        return delta, new_slots


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    .. math::
        p' = p_{t-1}(1 - \text{lr}\,\lambda), \text{ then the Adam step of } p' \text{ with } g_t = \nabla_p L

    Args (``torch.optim.AdamW``'s positional order): ``lr`` (1e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8),
    ``weight_decay`` (0.01), ``amsgrad`` (False), keywords ``maximize`` (False) and ``l1`` (0), as ``Adam``'s;
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, off by default; see ``Optimizer``).

    Steps: ``optimizer.apply(grads)`` performs one update on every backend (grads in ``params`` order,
    e.g. from ``ud.value_and_grad``); ``ud.train_step``/``ud.fit`` call it for you. PyTorch-style
    ``zero_grad()`` then ``loss.backward()`` then ``step()`` works on the torch backend, where gradients
    live on the parameters; elsewhere ``zero_grad()`` is a no-op and ``step()`` explains the alternative.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False, l1: float = 0.0,
                 **clipping):
        if "decoupled_weight_decay" in clipping:  # (torch.optim.AdamW has no such option either: it is AdamW's rule)
            raise TypeError(f"AdamW has no option 'decoupled_weight_decay': AdamW's weight decay is decoupled; "
                            f"ud.optim.Adam(..., decoupled_weight_decay=...) chooses")
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         l1=l1, **clipping)
