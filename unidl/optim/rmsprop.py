"""RMSprop with PyTorch's rule: epsilon outside the square root, optional centering and momentum."""

from __future__ import annotations

from unidl import arguments
from unidl.optim.optimizer import Optimizer, clipping_options, check_range, is_off, lerp, scalar_like


class RMSprop(Optimizer):
    r"""RMSprop (Hinton), as ``torch.optim.RMSprop``.

    .. math::
        g_t &= \nabla_p L + \lambda p_{t-1} \\
        v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &= \alpha \bar g_{t-1} + (1 - \alpha) g_t \quad \text{(centered only)} \\
        s_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \text{ if centered else } \sqrt{v_t} + \epsilon \\
        b_t &= \mu b_{t-1} + g_t / s_t \quad (\mu > 0) \\
        p_t &= p_{t-1} - \text{lr}\, b_t \text{ if } \mu > 0 \text{ else } p_{t-1} - \text{lr}\, g_t / s_t

    Args (``torch.optim.RMSprop``'s positional order): ``lr`` (1e-2), ``alpha`` (0.99), ``eps`` (1e-8),
    ``weight_decay`` (L2, 0), ``momentum`` (mu in [0, 1), 0), ``centered`` (False), keywords ``maximize`` (False:
    the gradient negated first, as torch.optim's) and ``l1`` (0);
    ``clip_grad_norm``, ``clip_grad_value``, ``clip_per_tensor`` (gradient clipping, off by default; see
    ``Optimizer``).

    Slots: ``square_avg``; ``momentum_buffer`` when a param group has ``momentum > 0``; ``grad_avg`` when one is
    ``centered``. They are fixed when the optimizer is built (the compiled steps of tensorflow, keras and jax hold
    them), so ``centered`` cannot change afterwards, and a group built with ``momentum=0`` keeps it at 0 (as in
    PyTorch, where such a group has no momentum buffer after its first step): build it with ``momentum > 0`` to
    change or cycle its momentum (``OneCycleLR``). A group built with momentum may set it to 0 and back: at 0 its
    buffer is left as it is.

    Steps: ``optimizer.apply(grads)`` performs one update on every backend (grads in ``params`` order,
    e.g. from ``ud.value_and_grad``); ``ud.train_step``/``ud.fit`` call it for you. PyTorch-style
    ``zero_grad()`` then ``loss.backward()`` then ``step()`` works on the torch backend, where gradients
    live on the parameters; elsewhere ``zero_grad()`` is a no-op and ``step()`` explains the alternative.
    """

    slots = ("square_avg", "momentum_buffer", "grad_avg")  # (an instance keeps those its groups use)
    torch_options = ("capturable", "foreach", "differentiable")
    torch_group_keys = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False, l1: float = 0.0, **clipping):
        super().__init__(params, lr, l1=l1, **clipping_options(type(self), clipping),
                         alpha=check_range("RMSprop", "alpha", alpha, 0.0, 1.0, high_open=False),
                         eps=check_range("RMSprop", "eps", eps),
                         weight_decay=check_range("RMSprop", "weight_decay", weight_decay),
                         momentum=check_range("RMSprop", "momentum", momentum, 0.0, 1.0),
                         centered=arguments.flag("RMSprop", "centered", centered),
                         maximize=arguments.flag("RMSprop", "maximize", maximize))

    def slots_for(self, groups) -> tuple[str, ...]:
        """``square_avg``, and the buffers of momentum and centering where a group uses them."""
        return ("square_avg", *(("momentum_buffer",) if any(g["momentum"] for g in groups) else ()),
                *(("grad_avg",) if any(g["centered"] for g in groups) else ()))

    def check_group_change(self, index: int, key: str, value) -> None:
        if key == "momentum" and value and not self._built_options[index]["momentum"]:
            raise ValueError(f"param_groups[{index}]['momentum'] of RMSprop cannot become {value}: the group was "
                             f"built with momentum=0, so it keeps no momentum buffer (as in PyTorch after its first "
                             f"step); build the RMSprop with momentum > 0 for that group, e.g. "
                             f"RMSprop(params, momentum=0.9), to change or cycle it")

    def update(self, param, grad, slots, lr, step, ops):
        # alpha and momentum are Python numbers, or tensors where a graph backend reads a group's bound option; the
        # same sequence of operations as torch.optim.RMSprop's (lerp for grad_avg, addcmul/addcdiv as written)
        h = self.hyper
        square_avg = (scalar_like(h["alpha"], grad, ops) * slots["square_avg"]
                      + scalar_like(1 - h["alpha"], grad, ops) * grad * grad)
        new_slots = {**slots, "square_avg": square_avg}
        if h["centered"]:
            grad_avg = new_slots["grad_avg"] = lerp(slots["grad_avg"], grad, 1 - h["alpha"], ops)
            avg = ops.sqrt(square_avg - grad_avg * grad_avg) + scalar_like(h["eps"], grad, ops)
        else:
            avg = ops.sqrt(square_avg) + scalar_like(h["eps"], grad, ops)
        if is_off(h["momentum"]):  # (a buffer of this optimizer's other groups stays as it is)
            return lr * (grad / avg), new_slots
        momentum = scalar_like(h["momentum"], grad, ops)
        buffer = momentum * slots["momentum_buffer"] + grad / avg
        if not isinstance(h["momentum"], float):  # a bound momentum set to 0: torch.optim's step without momentum,
            # which leaves the buffer as it is for when momentum returns
            on = h["momentum"] != 0
            new_slots["momentum_buffer"] = ops.where(on, buffer, slots["momentum_buffer"] * 1.0)
            return lr * ops.where(on, buffer, grad / avg), new_slots
        new_slots["momentum_buffer"] = buffer
        return lr * buffer, new_slots
