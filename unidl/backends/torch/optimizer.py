"""unidl optimizers on PyTorch: ``torch.optim``'s implementation of a built-in rule as the fast path,
and ``RuleOptimizer`` (a ``torch.optim.Optimizer`` running the unidl optimizer's own ``update()``) for
every other rule, such as a user's subclass."""

from __future__ import annotations

import inspect

import torch

from unidl.backends.torch import ops as torch_ops
from unidl.optim.optimizer import deltas

def _decoupling(torch_class):
    """A fast path's options for ``torch_class`` (Adam, NAdam, RAdam): ``options(h)`` those of a param group's
    hyperparameters ``h`` named by ``keys``, with ``decoupled_weight_decay`` where this torch's class takes it (Adam
    from torch 2.7, NAdam and RAdam from 2.1); None where it cannot run the rule (decoupled decay before that)."""
    decouples = "decoupled_weight_decay" in inspect.signature(torch_class.__init__).parameters

    def fast_path(keys):
        def options(h):
            if h["decoupled_weight_decay"] and not decouples:
                return None
            # (given to each group as it is: a group without it would take the constructor's)
            decoupled = {"decoupled_weight_decay": h["decoupled_weight_decay"]} if decouples else {}
            return torch_class, {**{key: h[key] for key in keys}, **decoupled}

        return options

    return fast_path


def _options(torch_class, *keys):
    """A fast path running ``torch_class`` with a param group's options ``keys``, named as unidl's (torch's names)."""
    return lambda h: (torch_class, {key: h[key] for key in keys})


#: torch.optim classes implementing unidl's built-in rules exactly, keyed by ``Optimizer.builtin_rule()``; None for
#: a group that needs unidl's rule (a dampened SGD: its slot ``momentum_started`` is unidl's, torch.optim.SGD's
#: buffer is None before)
_FAST_PATHS = {
    "SGD": lambda h: None if h["dampening"] else (torch.optim.SGD, dict(
        momentum=h["momentum"], nesterov=h["nesterov"], weight_decay=h["weight_decay"], maximize=h["maximize"])),
    "Adam": _decoupling(torch.optim.Adam)(("betas", "eps", "weight_decay", "amsgrad", "maximize")),
    "AdamW": lambda h: (torch.optim.AdamW, dict(betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"],
                                                amsgrad=h["amsgrad"], maximize=h["maximize"])),
    "RMSprop": lambda h: (torch.optim.RMSprop, dict(alpha=h["alpha"], eps=h["eps"], weight_decay=h["weight_decay"],
                                                     momentum=h["momentum"], centered=h["centered"],
                                                     maximize=h["maximize"])),
    "Adagrad": lambda h: (torch.optim.Adagrad, dict(eps=h["eps"], weight_decay=h["weight_decay"],
                                                     initial_accumulator_value=h["initial_accumulator_value"],
                                                     lr_decay=h["lr_decay"], maximize=h["maximize"])),
    # (their slots, mu_product a float32 number included, and per-parameter steps are torch.optim's)
    "NAdam": _decoupling(torch.optim.NAdam)(("betas", "eps", "weight_decay", "momentum_decay", "maximize")),
    "RAdam": _decoupling(torch.optim.RAdam)(("betas", "eps", "weight_decay", "maximize")),
    "Adamax": _options(torch.optim.Adamax, "betas", "eps", "weight_decay", "maximize"),
    "Adadelta": _options(torch.optim.Adadelta, "rho", "eps", "weight_decay", "maximize"),
    "Rprop": _options(torch.optim.Rprop, "etas", "step_sizes", "maximize"),
}


class RuleOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose ``step()`` runs a unidl optimizer's own rule: the regularized
    gradient (L1, coupled L2), then ``update()`` over slot tensors kept in ``self.state`` (so
    ``zero_grad``, ``param_groups`` and ``torch.optim.lr_scheduler`` work as with any torch optimizer)."""

    def __init__(self, spec):
        super().__init__([{"params": g["params"], "lr": g["lr"]} for g in spec.param_groups], dict(lr=spec.lr))
        self._spec = spec
        self._index = {id(p): i for i, p in enumerate(spec.params)}  # (spec.rule_for: its group's hyperparameters)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        spec = self._spec
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:  # PyTorch's rule: a parameter without a gradient is not updated
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    for name in spec.slots:
                        state[name] = (torch.full_like(p, spec.initial_slot_value, memory_format=torch.preserve_format)
                                       if name not in spec.scalar_slots else
                                       torch.tensor(spec.initial_slot_value, dtype=torch.float32, device=p.device))
                state["step"] += 1
                step = state["step"].to(p.dtype) if spec.uses_step else None
                rule = spec.rule_for(self._index[id(p)])  # (read at each step: a group's options may change)
                grad = rule.regularized_gradient(p, p.grad, torch_ops)
                delta, new_slots = rule.update(p, grad, {name: state[name] for name in spec.slots}, lr, step, torch_ops)
                for name, value in new_slots.items():
                    if value is not state[name]:
                        state[name].copy_(value)
                factor = rule.shrink(p, lr, torch_ops)
                if factor is not None:
                    p.mul_(factor)
                for part in deltas(delta):
                    p.sub_(part)
        return loss


def native_optimizer(optimizer) -> torch.optim.Optimizer:
    """``torch.optim``'s optimizer for a built-in rule, else a ``RuleOptimizer`` running ``optimizer.update``."""
    fast_path = _FAST_PATHS.get(optimizer.builtin_rule())
    if (fast_path is None or any(fast_path(group) is None for group in optimizer.param_groups)
            or len({group["l1"] for group in optimizer.param_groups}) > 1):  # torch.optim knows no L1
        return RuleOptimizer(optimizer)
    torch_class, defaults = fast_path(optimizer.hyper)  # (Adagrad reads initial_accumulator_value from these)
    return torch_class([{"params": group["params"], "lr": group["lr"], **fast_path(group)[1]}
                        for group in optimizer.param_groups], lr=optimizer.lr, **defaults)


def set_group_options(optimizer, group: int, keys) -> None:
    """Make the next step use options ``keys`` of param group ``group``: torch.optim reads them from its
    ``param_groups`` at every step; a ``RuleOptimizer`` reads the group's rule (``Optimizer.rule_for``)."""
    native = optimizer.native
    if not isinstance(native, RuleOptimizer):
        options = _FAST_PATHS[optimizer.builtin_rule()](optimizer.param_groups[group])[1]
        native.param_groups[group].update({key: options[key] for key in keys if key in options})


def guard_and_clip(optimizer, loss=None, clip: bool = True) -> bool:
    """The non-finite guard and gradient clipping on the gradients ``backward()`` stored: False (and nothing
    clipped) when ``loss`` or a stored gradient is NaN or infinite, so that the caller skips the update; else
    clip in place (``torch.nn.utils``' own functions for PyTorch's rules) and return True. Records the result
    for ``last_step_finite``. One fused check over all gradients (the kernel ``torch.amp``'s scaler uses) and
    one host read per step. Under DDP ``loss`` holds the job's marker (``distributed.DataParallel.backward``; Keras's
    step: the averaged gradients carry it, ``distributed.mark_losses``), so the decision is the same on every rank
    and the weights stay identical."""
    grads = [grad for p in optimizer.params if (grad := p.grad) is not None]  # (.grad read once)
    checked = grads
    if loss is not None:  # (or a window's losses; a train step's come detached: not detached again; a 0-d loss
        # is checked as it is, as the kernel checks a scalar parameter's gradient)
        checked = grads + [loss.detach() if loss.requires_grad else loss]
    finite = True
    if checked:
        device = checked[0].device
        found_inf, one = getattr(optimizer, "_finite_check", (None, None))
        if found_inf is None or found_inf.device != device:
            found_inf, one = torch.zeros(1, device=device), torch.ones(1, device=device)
            optimizer._finite_check = (found_inf, one)
        # found_inf is zero between checks: set back to zero only where a check set it (or failed), not before
        # every check (one op less a step)
        try:
            # sets found_inf where a value is not finite (and multiplies every value by one: unchanged)
            torch._amp_foreach_non_finite_check_and_unscale_(checked, found_inf, one)
            finite = not found_inf.item()
        except BaseException:
            found_inf.zero_()
            raise
        if not finite:
            found_inf.zero_()
    optimizer._finite = finite
    if finite and grads and clip:
        clipping = optimizer.clipping
        if clipping["clip_grad_norm"] is not None or clipping["clip_grad_value"] is not None:
            _clip(optimizer)  # (asked here: a step without clipping calls nothing)
    return finite


def _clip(optimizer) -> None:
    clipping = optimizer.clipping
    max_norm, max_value = clipping["clip_grad_norm"], clipping["clip_grad_value"]
    if max_norm is None and max_value is None:  # (every step without clipping: no list of gradients built)
        return
    params = [p for p in optimizer.params if p.grad is not None]
    if max_value is not None:
        torch.nn.utils.clip_grad_value_(params, max_value)
    if max_norm is None:
        return
    if not clipping["clip_per_tensor"]:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    with torch.no_grad():
        for p in params:  # Keras's clipnorm: g * c / max(|g|, c)
            norm = torch.linalg.vector_norm(p.grad)
            p.grad.mul_(max_norm / torch.clamp(norm, min=max_norm))


def clear_gradients(native) -> None:
    """``native.zero_grad(set_to_none=True)``: every parameter of ``native``'s param groups left without a
    gradient (PyTorch's None-gradient rule: the next backward stores fresh ones, a parameter it does not reach keeps
    None), by torch.optim's own loop without the profiler annotation it wraps that loop in, unless a profiler runs
    (its trace then shows ``Optimizer.zero_grad`` as torch's own step does). The annotation's ``record_function`` is
    two profiler ops: 6 us a call in a loop of its own, 27 us inside a two-layer step on a CPU, where the loop is
    0.3 us (the non-finite guard's check costs about as much: a step's Python is its cost on a small net)."""
    if torch.autograd._profiler_enabled():
        native.zero_grad(set_to_none=True)
        return
    for group in native.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad = None


def guarded_update(optimizer, native, loss, l1: bool) -> None:
    """A train step's update after its backward: the guard and clipping (``guard_and_clip`` over ``loss``), then
    ``native``'s (torch.optim's) step with the L1 penalty where ``l1`` says it lies outside the rule; a skipped
    step's gradients emptied, so that a later ``optimizer.step()`` finds nothing to apply."""
    if not guard_and_clip(optimizer, loss):
        clear_gradients(native)
        return
    if l1:
        add_l1(optimizer)
    native.step()
    optimizer._steps += 1


def l1_outside_rule(optimizer) -> float:
    """The L1 coefficient the backend must add to the gradients itself: torch.optim knows no L1 penalty,
    while a ``RuleOptimizer`` adds it in ``regularized_gradient``. torch.optim runs the rule only where every param
    group has the same ``l1`` (a fixed option), which is then that one: the groups', not the constructor's (a group's
    own ``l1`` was ignored, or the constructor's added to groups of ``l1=0``)."""
    return 0.0 if isinstance(optimizer.native, RuleOptimizer) else optimizer.param_groups[0]["l1"]


def add_l1(optimizer) -> None:
    """Add ``l1 * sign(p)`` to every stored gradient (the L1 penalty's gradient) where torch.optim runs the rule."""
    l1 = l1_outside_rule(optimizer)
    if l1:
        with torch.no_grad():
            for p in optimizer.params:
                if p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=l1)


def torch_window(optimizer, accumulate: int, losses: list, scale=lambda: 1.0):
    """The ``unidl.training.AccumulationWindow`` of a torch train step: its micro-steps are ``losses`` (the loss
    of each micro-step run since the last update, which the update's guard checks; its ``storage``), its summed
    gradients of ``loss / N`` are the parameters' ``.grad``, times the loss scale ``scale()`` in mixed precision
    (a power of two: dividing and multiplying by it are exact)."""
    import numpy as np

    from unidl.nn.module import is_trainable
    from unidl.training import AccumulationWindow

    params = optimizer.params

    def read():
        finite = bool(torch.isfinite(torch.stack(losses)).all()) if losses else True
        factor = 1.0 / scale()
        gradients = [(torch.zeros_like(p) if p.grad is None else p.grad.detach() * factor).cpu().numpy()
                     for p in params]
        return len(losses), finite, gradients, [p.grad is not None for p in params]

    def write(micro_steps, finite, gradients, has_gradient=None):
        losses.clear()
        optimizer.native.zero_grad(set_to_none=True)
        if not micro_steps:
            return
        device = params[0].device
        losses.extend(torch.tensor(0.0 if finite else float("nan"), device=device) for _ in range(micro_steps))
        factor = scale()
        with torch.no_grad():
            for p, value, had in zip(params, gradients, has_gradient or [True] * len(params)):
                if is_trainable(p) and had:
                    p.grad = torch.as_tensor(np.asarray(value), dtype=p.dtype, device=p.device) * factor

    return AccumulationWindow(accumulate, read, write, storage=losses, count=lambda: len(losses))
