"""Rprop: steps of a per-element size grown or shrunk by the sign of the gradient's change, with PyTorch's rule."""

from __future__ import annotations

from unidl import arguments
from unidl.optim.optimizer import Optimizer, clipping_options, scalar_like
from unidl.optim.param_groups import check_etas, check_step_sizes


class Rprop(Optimizer):
    r"""Rprop (Riedmiller & Braun), as ``torch.optim.Rprop``.

    .. math::
        s_t &= \text{sign}(g_t\, g'_{t-1}), \quad
               \eta_t = \eta_+ \text{ if } s_t > 0,\ \eta_- \text{ if } s_t < 0,\ 1 \text{ otherwise} \\
        \Delta_t &= \text{clamp}(\eta_t \Delta_{t-1},\ \Delta_{\min},\ \Delta_{\max}) \quad (\Delta_0 = \text{lr}) \\
        g'_t &= 0 \text{ if } s_t < 0 \text{ else } g_t \\
        p_t &= p_{t-1} - \text{sign}(g'_t)\, \Delta_t

    Args (``torch.optim.Rprop``'s positional order): ``lr`` (1e-2: each element's first step size, read at the
    parameter's first update only, as torch.optim's), ``etas`` ((0.5, 1.2): (etaminus, etaplus) with
    0 < etaminus < 1 < etaplus), ``step_sizes`` ((1e-6, 50): the least and largest step size; any pair of numbers
    but NaN, as torch.optim takes them, each step size clamped as torch's ``clamp_(min, max)``: max_step where
    min_step is above it, a negative min_step as 0), keywords ``maximize`` (False) and ``l1`` (0);
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, see ``Optimizer``). ``foreach``,
    ``capturable`` and ``differentiable`` are taken at PyTorch's defaults only. There is no weight decay, as in
    torch.optim.

    Slots: ``prev`` (g', the last gradient, 0 where its sign flipped) and ``step_size`` (Delta; the group's lr from
    the parameter's first update on). Steps as every optimizer's (``Optimizer``).
    """

    slots = ("prev", "step_size")
    uses_step = True  # the first update starts the step sizes at lr
    torch_options = ("capturable", "foreach", "differentiable")
    torch_group_keys = ("etas", "step_sizes")

    def __init__(self, params, lr: float = 1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), *,
                 maximize: bool = False, l1: float = 0.0, **clipping):
        owner = type(self).__name__
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping),
                         etas=check_etas(owner, "etas", etas),
                         step_sizes=check_step_sizes(owner, "step_sizes", step_sizes),
                         maximize=arguments.flag(owner, "maximize", maximize))

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        ones = ops.zeros_like(grad) + 1
        minus, plus = (scalar_like(eta, grad, ops) * ones for eta in h["etas"])
        low, high = (scalar_like(size, grad, ops) * ones for size in h["step_sizes"])
        sign = ops.sign(grad * slots["prev"])
        factor = ops.where(sign > 0, plus, ops.where(sign < 0, minus, ones))
        before = ops.where(ops.cast(step, "float64") > 1, slots["step_size"], lr * ones)
        step_size = ops.minimum(ops.maximum(before * factor, low), high)  # (torch's clamp_(min, max))
        grad = ops.where(sign < 0, ops.zeros_like(grad), grad)
        return ops.sign(grad) * step_size, {"prev": grad, "step_size": step_size}
