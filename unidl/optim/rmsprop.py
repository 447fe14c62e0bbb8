"""RMSprop with PyTorch's rule (epsilon outside the square root, no centering, no momentum)."""

from __future__ import annotations

from unidl.optim.optimizer import Optimizer, clipping_options, check_range, scalar_like


class RMSprop(Optimizer):
    r"""RMSprop (Hinton), as ``torch.optim.RMSprop`` with ``centered=False, momentum=0``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \\
        v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        p_t &= p_{t-1} - \text{lr}\, g_t / (\sqrt{v_t} + \epsilon)

    Args: ``lr`` (1e-2), ``alpha`` (0.99), ``eps`` (1e-8), ``weight_decay`` (L2, 0), ``l1`` (0);
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, off by default; see ``Optimizer``).

    Steps: ``optimizer.apply(grads)`` performs one update on every backend (grads in ``params`` order,
    e.g. from ``ud.value_and_grad``); ``ud.train_step``/``ud.fit`` call it for you. PyTorch-style
    ``zero_grad()`` then ``loss.backward()`` then ``step()`` works on the torch backend, where gradients
    live on the parameters; elsewhere ``zero_grad()`` is a no-op and ``step()`` explains the alternative.
    """

    slots = ("square_avg",)

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, l1: float = 0.0, **clipping):
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping), alpha=check_range("RMSprop", "alpha", alpha, 0.0, 1.0, high_open=False),
                         eps=check_range("RMSprop", "eps", eps),
                         weight_decay=check_range("RMSprop", "weight_decay", weight_decay))

    def update(self, param, grad, slots, lr, step, ops):
        h = self.hyper
        square_avg = (scalar_like(h["alpha"], grad, ops) * slots["square_avg"]
                      + scalar_like(1 - h["alpha"], grad, ops) * grad * grad)
        return lr * (grad / (ops.sqrt(square_avg) + scalar_like(h["eps"], grad, ops))), {"square_avg": square_avg}
