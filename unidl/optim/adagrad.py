"""Adagrad with PyTorch's rule and defaults."""

from __future__ import annotations

from unidl import arguments
from unidl.optim.optimizer import Optimizer, as_float64, clipping_options, check_range, is_off, scalar_like


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al.), as ``torch.optim.Adagrad``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \\
        s_t &= s_{t-1} + g_t^2 \quad (s_0 = \text{initial\_accumulator\_value}) \\
        p_t &= p_{t-1} - \frac{\text{lr}}{1 + (t - 1)\,\text{lr\_decay}}\, g_t / (\sqrt{s_t} + \epsilon)

    Args (``torch.optim.Adagrad``'s positional order): ``lr`` (1e-2), ``lr_decay`` (0; t counts the parameter's own
    updates), ``weight_decay`` (L2, 0), ``initial_accumulator_value`` (0), ``eps`` (1e-10), keywords ``maximize``
    (False: the gradient negated first, as torch.optim's) and ``l1`` (0);
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, off by default; see ``Optimizer``).

    Steps: ``optimizer.apply(grads)`` performs one update on every backend (grads in ``params`` order,
    e.g. from ``ud.value_and_grad``); ``ud.train_step``/``ud.fit`` call it for you. PyTorch-style
    ``zero_grad()`` then ``loss.backward()`` then ``step()`` works on the torch backend, where gradients
    live on the parameters; elsewhere ``zero_grad()`` is a no-op and ``step()`` explains the alternative.
    """

    slots = ("sum",)
    uses_step = True  # lr_decay (torch.optim.Adagrad counts each parameter's steps)
    torch_options = ("foreach", "differentiable", "fused")
    torch_group_keys = ("lr_decay", "eps", "weight_decay", "initial_accumulator_value")

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, maximize: bool = False,
                 l1: float = 0.0, **clipping):
        self.initial_slot_value = check_range("Adagrad", "initial_accumulator_value", initial_accumulator_value)
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping), eps=check_range("Adagrad", "eps", eps),
                         weight_decay=check_range("Adagrad", "weight_decay", weight_decay),
                         initial_accumulator_value=self.initial_slot_value,
                         lr_decay=check_range("Adagrad", "lr_decay", lr_decay),
                         maximize=arguments.flag("Adagrad", "maximize", maximize))

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        total = slots["sum"] + grad * grad
        if not is_off(h["lr_decay"]):  # torch's clr = lr / (1 + (step - 1) * lr_decay), in double precision
            decay, lr = as_float64(h["lr_decay"], ops), as_float64(lr, ops)
            lr = ops.cast_like(lr / (1 + (ops.cast(step, "float64") - 1) * decay), param)
        return lr * (grad / (ops.sqrt(total) + scalar_like(h["eps"], grad, ops))), {"sum": total}
