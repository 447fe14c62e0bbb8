"""``Optimizer``: the base class of unidl's optimizers, bound to one backend and one list of parameters.

Each subclass states its update rule once, as math in the docstring and as
``update()`` written with the backend's ``ops`` and ordinary operators. Every
backend runs that ``update()`` (inside its compiled graphs where it has them).
A framework's own kernel for the same rule (``torch.optim``'s foreach
implementations, TensorFlow's fused momentum) is only a fast path, taken for
unidl's built-in classes whose rule no subclass changed (``builtin_rule``); a
user's subclass with its own ``update()`` runs that rule on every backend. The
parity tests check that the fast paths and the rule agree.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from unidl import config
from unidl.backends.op_registry import optional_op
from unidl.errors import BackendMismatchError


#: the class attributes that make up an optimizer's update rule (see ``Optimizer.builtin_rule``)
_RULE_ATTRIBUTES = ("update", "regularized_gradient", "heavy_ball", "slots", "initial_slot_value", "uses_step",
                    "decoupled")


def _is_unidl_class(cls) -> bool:
    return cls.__module__.startswith("unidl.optim.")


def check_range(owner: str, name: str, value, low=0.0, high=math.inf, low_open=False, high_open=True):
    """Raise ``ValueError`` naming the hyperparameter unless low <= value < high (bounds as asked)."""
    if not isinstance(value, Real) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"{owner} {name} must be a number, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{owner} {name}={value!r} is invalid: it must lie in {left}{low}, {high}{right}")
    return float(value)


class Optimizer:
    """Common machinery: parameter binding, learning rate, L1 penalty, ``apply`` and state.

    Semantics on every backend: ``apply(grads)`` performs one update with the given gradients
    (one per parameter, in ``params`` order). With PyTorch-style loops on the torch backend,
    ``zero_grad()`` clears ``.grad`` and ``step()`` applies the gradients that ``backward()``
    left there. ``l1`` adds ``l1 * sign(p)`` to each gradient first (the gradient of
    ``l1 * sum|p|``), on every optimizer.
    """

    #: names of per-parameter state tensors, each starting as ``initial_slot_value``
    slots: tuple[str, ...] = ()
    initial_slot_value = 0.0
    #: whether ``update`` reads ``step`` (backends may pass None otherwise and skip computing it)
    uses_step = False
    #: True when ``weight_decay`` shrinks the parameter inside ``update`` (AdamW); otherwise it is
    #: PyTorch's L2 term, added to the gradient by ``regularized_gradient``
    decoupled = False

    def __init__(self, params, lr: float, l1: float = 0.0, **hyper):
        self._backend = config.backend()
        params = list(params)
        owner = type(self).__name__
        if not params:
            raise ValueError(f"{owner} got an empty parameter list")
        for index, p in enumerate(params):
            if not self._backend.is_parameter(p):
                raise BackendMismatchError(
                    f"{owner} parameter {index} ({type(p).__module__}.{type(p).__name__}) is not a "
                    f"parameter of backend {self._backend.name!r}; pass model.parameters() of a model "
                    f"built under {self._backend.name!r}")
        self.params = params
        self.hyper = dict(hyper)
        self.hyper["l1"] = check_range(owner, "l1", l1)
        self._lr = check_range(owner, "lr", lr)
        self._native = self._backend.optimizer(self)

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def native(self):
        """The backend's own optimizer object (``torch.optim.*``, unidl's TF state, a ``keras.optimizers.Optimizer``)."""
        return self._native

    @property
    def lr(self) -> float:
        """Current learning rate. Setting it takes effect at the next step, with no retracing."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = check_range(type(self).__name__, "lr", value)
        self._backend.set_learning_rate(self, self._lr)

    @classmethod
    def builtin_rule(cls) -> str | None:
        """The name of unidl's built-in optimizer class (``"SGD"``, ``"Adam"``, ...) whose update rule this
        class runs unchanged, so that a backend may run a framework kernel for it as a fast path; None
        when a class outside unidl changes any part of the rule (``update``, ``regularized_gradient``,
        the slots ...): then every backend runs the class's own ``update()``."""
        for attribute in _RULE_ATTRIBUTES:
            owner = next(k for k in cls.__mro__ if attribute in k.__dict__)
            if not _is_unidl_class(owner):
                return None
        return next(k.__name__ for k in cls.__mro__ if _is_unidl_class(k))

    def update(self, param, grad, slots: dict, lr, step, ops):
        """Return ``(delta, new_slots)`` for one step: the new parameter is ``param - delta`` (backends
        subtract in place, one fused op). ``step`` counts from 1 (None unless ``uses_step``)."""
        raise NotImplementedError

    def regularized_gradient(self, param, grad, ops):
        """The gradient with the L1 term (``l1 * sign(p)``) and then the L2 term (``weight_decay * p``,
        unless ``decoupled``) added, where they are set; backends call this before ``update``."""
        l1, decay = self.hyper["l1"], self.hyper.get("weight_decay", 0.0)
        if l1:
            grad = grad + l1 * ops.sign(param)
        if decay and not self.decoupled:
            grad = grad + decay * param
        return grad

    def heavy_ball(self) -> tuple[str, float, bool] | None:
        """``(buffer_slot, momentum, nesterov)`` when ``update`` is exactly heavy-ball momentum on the
        regularized gradient (``b = momentum * b + g``; ``p -= lr * (g + momentum * b if nesterov else b)``),
        so that a backend with a fused in-place kernel for that rule may run it instead; None otherwise."""
        return None

    def apply_fused(self, param, grad, slots: dict, lr, ops) -> bool:
        """Update ``param`` and ``slots`` in place with the backend's fused kernel for this rule, if its
        ``ops`` have one (``apply_momentum``, computing the same arithmetic as ``update``): True when done,
        False when the caller must run ``update``. ``grad`` is already regularized."""
        rule, kernel = self.heavy_ball(), optional_op(ops, "apply_momentum")
        if rule is None or kernel is None:
            return False
        buffer, momentum, nesterov = rule
        kernel(param, slots[buffer], lr, grad, momentum, nesterov)
        return True

    def apply(self, grads) -> None:
        """Update every parameter with its gradient (list in ``params`` order). A None gradient, or a frozen
        parameter (``requires_grad`` False), leaves that parameter and its state exactly as they are."""
        from unidl.nn.module import is_trainable

        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"{type(self).__name__}.apply got {len(grads)} gradients for {len(self.params)} parameters")
        self._backend.apply_gradients(self, [g if is_trainable(p) else None for p, g in zip(self.params, grads)])

    def zero_grad(self) -> None:
        """Clear gradients left by ``backward()`` (torch backend); a no-op elsewhere, where gradients are returned, not stored."""
        self._backend.zero_grad(self)

    def step(self) -> None:
        """Apply the gradients that ``backward()`` stored on the parameters (torch backend)."""
        self._backend.step(self)

    def state_dict(self) -> dict:
        """The optimizer's state in canonical form, the same on every backend::

            {"class": "Adam", "lr": float, "step": int, "hyper": {...},
             "slots": [{slot_name: np.ndarray, ...}, ...]}   # one dict per parameter, params order

        Slots not yet created (before the first step) are reported at their initial value.
        """
        step, slots = self._backend.optimizer_state(self)
        return {"class": type(self).__name__, "lr": self._lr, "step": int(step), "hyper": dict(self.hyper),
                "slots": [{name: np.asarray(value) for name, value in entry.items()} for entry in slots]}

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` (a ``ValueError``) unless ``load_state_dict(state)`` would succeed;
        changes nothing. Checks the class, step, lr and every slot's name, shape and dtype."""
        from unidl.errors import CheckpointStateError

        owner = type(self).__name__
        if not isinstance(state, dict) or not {"step", "lr", "slots"} <= set(state):
            raise CheckpointStateError(f"{owner} state must be a dict with 'step', 'lr' and 'slots', got "
                                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if state.get("class", owner) != owner:
            raise CheckpointStateError(f"cannot load {state['class']} state into {owner}")
        step = state["step"]
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            raise CheckpointStateError(f"{owner} state step must be a non-negative integer, got {step!r}")
        try:
            check_range(owner, "lr", state["lr"])
        except ValueError as error:
            raise CheckpointStateError(f"{owner} state: {error}") from None
        slots = state["slots"]
        if not isinstance(slots, (list, tuple)) or len(slots) != len(self.params):
            count = len(slots) if isinstance(slots, (list, tuple)) else type(slots).__name__
            raise CheckpointStateError(f"{owner} state has {count} parameter entries, expected {len(self.params)}")
        for index, (param, entry) in enumerate(zip(self.params, slots)):
            if not isinstance(entry, dict) or set(entry) != set(self.slots):
                found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise CheckpointStateError(f"{owner} state entry {index} has slots {found}, expected {sorted(self.slots)}")
            for name, value in entry.items():
                if tuple(np.shape(value)) != tuple(param.shape):
                    raise CheckpointStateError(f"{owner} slot {name!r} of parameter {index}: expected shape "
                                               f"{tuple(param.shape)}, found {tuple(np.shape(value))}")
                if np.asarray(value).dtype.kind not in "fiu":
                    raise CheckpointStateError(f"{owner} slot {name!r} of parameter {index}: expected numbers, "
                                               f"found dtype {np.asarray(value).dtype}")

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` written by this optimizer class on any backend (checked first:
        ``check_state_dict``; nothing changes if it does not fit)."""
        self.check_state_dict(state)
        slots = state["slots"]
        self._backend.load_optimizer_state(self, int(state["step"]), slots)
        self.lr = float(state["lr"])

    def initial_slots(self) -> list[dict]:
        """Slot values before the first step (what ``state_dict`` reports for unbuilt slots)."""
        return [{name: np.full(tuple(p.shape), self.initial_slot_value, dtype=config.get_dtype())
                 for name in self.slots} for p in self.params]

    def __repr__(self):
        fields = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}(lr={self._lr}, {fields})"
