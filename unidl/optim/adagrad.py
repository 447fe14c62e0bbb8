"""Adagrad with PyTorch's rule and defaults."""

from __future__ import annotations

from unidl.optim.optimizer import Optimizer, clipping_options, check_range, scalar_like, torch_option


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al.), as ``torch.optim.Adagrad`` with ``lr_decay=0``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \\
        s_t &= s_{t-1} + g_t^2 \quad (s_0 = \text{initial\_accumulator\_value}) \\
        p_t &= p_{t-1} - \text{lr}\, g_t / (\sqrt{s_t} + \epsilon)

    Args (``torch.optim.Adagrad``'s positional order): ``lr`` (1e-2), ``lr_decay`` (0 only), ``weight_decay`` (L2, 0),
    ``initial_accumulator_value`` (0), ``eps`` (1e-10), keyword ``l1`` (0);
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, off by default; see ``Optimizer``).

    Steps: ``optimizer.apply(grads)`` performs one update on every backend (grads in ``params`` order,
    e.g. from ``ud.value_and_grad``); ``ud.train_step``/``ud.fit`` call it for you. PyTorch-style
    ``zero_grad()`` then ``loss.backward()`` then ``step()`` works on the torch backend, where gradients
    live on the parameters; elsewhere ``zero_grad()`` is a no-op and ``step()`` explains the alternative.
    """

    slots = ("sum",)
    torch_options = ("lr_decay", "foreach", "maximize", "differentiable", "fused")

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, l1: float = 0.0, **clipping):
        torch_option(type(self), "lr_decay", lr_decay)
        self.initial_slot_value = check_range("Adagrad", "initial_accumulator_value", initial_accumulator_value)
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping), eps=check_range("Adagrad", "eps", eps),
                         weight_decay=check_range("Adagrad", "weight_decay", weight_decay),
                         initial_accumulator_value=self.initial_slot_value)

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        total = slots["sum"] + grad * grad
        return lr * (grad / (ops.sqrt(total) + scalar_like(h["eps"], grad, ops))), {"sum": total}
