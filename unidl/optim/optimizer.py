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

import copy

import numpy as np

from unidl import config
from unidl.arguments import INT64_END, check_range  # noqa: F401  (the optimizers import check_range from here)
from unidl.backends.op_registry import CONVERTED, optional_op
from unidl.errors import BackendMismatchError
from unidl.optim.gradients import check_clipping, clip_gradients
from unidl.optim.param_groups import (FixedList, ParamGroup, check_group_options, grow_generation, options_read,
                                      split_param_groups)


#: the class attributes that make up an optimizer's update rule (see ``Optimizer.builtin_rule``)
_RULE_ATTRIBUTES = ("update", "shrink", "regularized_gradient", "heavy_ball", "slots", "slots_for",
                    "initial_slot_value", "uses_step", "decoupled")


def _is_unidl_class(cls) -> bool:
    return cls.__module__.startswith("unidl.optim.")


#: the gradient-clipping keywords every optimizer takes (see ``Optimizer``)
CLIPPING_OPTIONS = ("clip_grad_norm", "clip_grad_value", "clip_per_tensor")


#: ``torch.optim``'s options of rules unidl does not implement, at the values that leave the rule as unidl's is
#: (their defaults; ``foreach``/``fused``/``capturable``/``differentiable`` choose kernels, not the arithmetic);
#: each class names those its namesake in ``torch.optim`` has (``Optimizer.torch_options``)
TORCH_NEUTRAL_OPTIONS = {"foreach": (None, False), "fused": (None, False), "capturable": (False,),
                         "differentiable": (False,)}


def torch_option(optimizer_class, key: str, value) -> None:
    """``TypeError`` unless ``torch.optim``'s option ``key`` (one of ``optimizer_class.torch_options``, a rule unidl
    does not implement) is at a value that leaves unidl's rule as it is (``TORCH_NEUTRAL_OPTIONS``): a
    ``torch.optim`` call copied with ``foreach=None`` or ``fused=False`` builds, ``amsgrad=True`` would be ignored."""
    neutral = TORCH_NEUTRAL_OPTIONS[key]
    if _neutral(value, neutral):
        return
    owner = optimizer_class.__name__
    raise TypeError(f"{owner} {key}={value!r}: unidl's {owner} does not implement it (it would be ignored, training "
                    f"unlike torch.optim.{owner}); it takes {key} at PyTorch's default only, "
                    f"{' or '.join(map(repr, neutral))}")


def clipping_options(optimizer_class, options: dict) -> dict:
    """``options`` (what a built-in optimizer's ``**clipping`` caught) when they are gradient-clipping keywords;
    ``torch.optim``'s keyword options of the class's namesake (``torch_options``) at the values that leave unidl's
    rule as it is are dropped (``torch_option``: a ``TypeError`` at any other value, never an option kept and
    silently ignored). Any other keyword is a ``TypeError`` naming it and what the class takes."""
    kept, unknown = {}, []
    for key, value in options.items():
        if key in CLIPPING_OPTIONS:
            kept[key] = value
        elif key in optimizer_class.torch_options:
            torch_option(optimizer_class, key, value)
        else:
            unknown.append(key)
    if unknown:
        import inspect

        owner = optimizer_class.__name__
        named = [name for name, parameter in inspect.signature(optimizer_class.__init__).parameters.items()
                 if name not in ("self", "params") and parameter.kind is not parameter.VAR_KEYWORD]
        raise TypeError(f"{owner} has no option {', '.join(map(repr, unknown))}: unidl's {owner} does not implement "
                        f"it (it would be ignored); {owner} takes {', '.join([*named, *CLIPPING_OPTIONS])}")
    return kept


def _neutral(value, neutral: tuple) -> bool:
    """Whether ``value`` is one of ``neutral`` (None only where None is one; False is 0, as torch.optim takes it)."""
    return any(value is n or (n is not None and value is not None and value == n) for n in neutral)


def scalar_like(value, like, ops):
    """A hyperparameter for elementwise use with ``like``: a Python number as it is, a scalar tensor (what a graph
    backend reads from a bound option's variable, see ``bound_rule``) cast to ``like``'s dtype, as PyTorch's
    kernels round a Python scalar to the tensor's dtype."""
    return value if isinstance(value, (int, float)) else ops.cast_like(value, like)


def as_float64(value, ops):
    """A rule's scalar (the learning rate, an option, the step count) in double precision, where ``torch.optim``
    computes its bias corrections and step sizes: a Python number as it is, a tensor (a graph's learning rate, a
    bound option, the step count) cast to float64."""
    return value if isinstance(value, (int, float)) else ops.cast(value, "float64")


def lerp(start, end, weight, ops):
    """``start + weight * (end - start)`` as ``torch.lerp`` computes it (``end - (end - start) * (1 - weight)`` for
    a weight of 0.5 or more), so that a rule's moving average (Adam's ``exp_avg``, RMSprop's ``grad_avg``) agrees
    with torch.optim's to the last bit; ``weight`` a Python float, or a tensor (a bound option, see ``bound_rule``)."""
    if isinstance(weight, float):
        return start + weight * (end - start) if weight < 0.5 else end - (end - start) * (1 - weight)
    weight = ops.cast_like(weight, end)
    return ops.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight))


def shrunk(param, factor):
    """``param`` multiplied by a rule's ``shrink`` factor, or as it is where there is none (None)."""
    return param if factor is None else param * factor


def deltas(delta) -> tuple:
    """``update``'s step as the parts a backend subtracts in turn: ``delta`` itself, or each of a tuple (NAdam's
    two terms, which torch.optim subtracts with two ``addcdiv_``: ``(p - a) - b`` rounds unlike ``p - (a + b)``)."""
    return delta if isinstance(delta, tuple) else (delta,)


def stepped(param, factor, delta, cast=lambda part: part):
    """The new parameter: ``param`` shrunk by ``factor`` (``shrunk``), minus each part of ``delta`` (``deltas``) in
    turn, each first through ``cast`` (a backend's cast to the parameter's dtype)."""
    value = shrunk(param, factor)
    for part in deltas(delta):
        value = value - cast(part)
    return value


def is_off(value) -> bool:
    """Whether a hyperparameter is a Python 0 / False (a term a rule may leave out); a tensor (a bound option,
    see ``bound_rule``) never is: its value may change between steps without a retrace, so the rule computes
    the term (exact when it is 0)."""
    return isinstance(value, (bool, int, float)) and not value


def _plain(value):
    """An option as the optimizer holds it: a saved state's list (JSON's) as a tuple (``betas``)."""
    return tuple(value) if isinstance(value, list) else value


def changeable_options(optimizer, group: int) -> dict:
    """Param group ``group``'s hyperparameters that may change after construction (``param_groups[i][key] =``),
    as {name: value}: what a graph backend keeps in variables."""
    from unidl.optim.param_groups import FIXED_OPTIONS

    return {k: v for k, v in optimizer.param_groups[group].items() if k not in ("params", "lr", *FIXED_OPTIONS)}


def bound_rule(optimizer, index: int, read):
    """Parameter ``index``'s rule (``Optimizer.rule_for``) as a graph backend traces it: the options of its param
    group that were changed since construction (``Optimizer.bound_options``) replaced by ``read(group, key)``,
    the backend's tensor (a pair of them for ``betas``) read from the option's variable while tracing, so that a
    later change reaches the compiled step without a retrace. Every other option stays a Python number, a
    constant of the graph, so that a rule leaves out a zero term (weight decay 0, momentum 0) as it does eagerly.
    A user's rule (``builtin_rule()`` None) binds nothing (its options cannot change): it keeps its numbers.
    Called in a trace, it notes there that the graph holds this optimizer's options (``options_read``): a first
    change of one of them retraces that graph, and only the graphs that ran this optimizer's rule."""
    options_read(optimizer)
    rule, group = optimizer.rule_for(index), optimizer.group_of(index)
    keys = optimizer.bound_options(group)
    if not keys:
        return rule
    bound = copy.copy(rule)
    bound.hyper = {**rule.hyper, **{key: read(group, key) for key in keys}}
    return bound


class Hyperparameters(dict):
    """An optimizer's or param group rule's options (``optimizer.hyper``), read-only: a write changed training on
    some backends only (torch's ``torch.optim`` never read it, a compiled step baked in the value of its trace, a rule
    run eagerly read it at every step). Options change through ``param_groups[i][key] = value``, checked and followed
    by every backend's compiled steps. A dict otherwise (reads, ``{**hyper}``, JSON, copies)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("optimizer.hyper is read-only (a write reached the update on some backends only); change an "
                        "option through optimizer.param_groups[i][key] = value, which is checked and followed by "
                        "compiled steps on every backend, or build the optimizer with it")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = __ior__ = _refuse

    def __reduce__(self):
        return Hyperparameters, (dict(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


#: the dtype of a slot of one number per parameter (``Optimizer.scalar_slots``): torch.optim's, float32 in a
#: float64 run too
SCALAR_SLOT_DTYPE = "float32"


def _known_shape(value) -> tuple | None:
    """``value``'s shape as a tuple (None for an axis a graph does not know), or None where its rank is unknown."""
    try:
        return tuple(value.shape)
    except (TypeError, ValueError):
        return None


class Optimizer:
    """Common machinery: parameter binding, learning rate, L1 penalty, ``apply`` and state.

    Semantics on every backend: ``apply(grads)`` performs one update with the given gradients
    (one per parameter, in ``params`` order). If any gradient (or, in ``train_step``/``fit``, the loss)
    is NaN or infinite, the update is skipped: parameters, slots and step count stay bit-identical and
    ``last_step_finite`` is False (``train_step`` and ``fit`` then raise ``NonFiniteLossError``). With PyTorch-style loops on the torch backend,
    ``zero_grad()`` clears ``.grad`` and ``step()`` applies the gradients that ``backward()``
    left there. ``l1`` adds ``l1 * sign(p)`` to each gradient first (the gradient of
    ``l1 * sum|p|``), on every optimizer.

    Gradient clipping, on every optimizer and backend (inside the compiled step where there is one), applied
    to the raw gradients before L1/L2 terms and the update rule:

    * ``clip_grad_value=v``: each element clamped to [-v, v] (``torch.nn.utils.clip_grad_value_``);
    * ``clip_grad_norm=c``: all gradients scaled by ``min(1, c / (total_norm + 1e-6))``, the total norm
      over every gradient together (``torch.nn.utils.clip_grad_norm_``);
    * ``clip_grad_norm=c, clip_per_tensor=True``: each gradient on its own scaled to norm at most ``c``
      (Keras's ``clipnorm``).

    Example: ``ud.optim.SGD(model.parameters(), lr=0.1, clip_grad_norm=1.0)``.
    """

    #: names of per-parameter state tensors, each starting as ``initial_slot_value``
    slots: tuple[str, ...] = ()
    #: ``torch.optim``'s options of this class's namesake whose rules unidl does not implement: taken at the values
    #: that leave the rule as unidl's (``torch_option``), so that a ``torch.optim`` call copied as it is builds
    torch_options: tuple[str, ...] = ()
    #: the param-group keys ``torch.optim``'s namesake writes in every ``state_dict()`` (those of every torch 2
    #: release; a key a later release added, such as Adam's ``decoupled_weight_decay``, is not required): a
    #: ``torch.optim`` state whose group lacks one is another class's (``torch_state``)
    torch_group_keys: tuple[str, ...] = ()
    initial_slot_value = 0.0
    #: whether ``update`` reads ``step``: then every backend counts steps per parameter, as ``torch.optim`` does
    #: (``state_dict()["param_steps"]``); otherwise backends pass None and keep no such count
    uses_step = False
    #: slots ``torch.optim`` keeps as one float32 number per parameter (NAdam's ``mu_product``), and so does unidl
    #: on every backend: 0-d, of dtype ``SCALAR_SLOT_DTYPE`` (``slot_shape``, ``slot_dtype``)
    scalar_slots: tuple[str, ...] = ()
    #: True when ``weight_decay`` shrinks the parameter inside ``update`` (AdamW); otherwise it is
    #: PyTorch's L2 term, added to the gradient by ``regularized_gradient``
    decoupled = False

    def __copy__(self):
        """``copy.copy``: the same rule over the same parameters and state (a param group's rule is one); only
        deep copies and pickles are refused (``__reduce_ex__``)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __reduce_ex__(self, protocol):
        """``copy.deepcopy`` and pickling are one ``TypeError`` on every backend, naming the portable way: the
        state lives in the backend's variables (the deep copy ran on torch only; TensorFlow, JAX and Keras raised
        each their own error)."""
        raise TypeError(f"cannot copy.deepcopy or pickle {type(self).__name__}: its state lives in its backend's "
                        f"variables; build a new optimizer over the (copied) model's parameters and give it this "
                        f"one's state with new.load_state_dict(optimizer.state_dict()) (ud.save_checkpoint saves it)")

    def __deepcopy__(self, memo):
        return self.__reduce_ex__(4)

    def __init__(self, params, lr: float, l1: float = 0.0, *, clip_grad_norm: float | None = None,
                 clip_grad_value: float | None = None, clip_per_tensor: bool = False, **hyper):
        self._backend = config.backend()
        owner = type(self).__name__
        groups = split_param_groups(owner, params)
        params = [p for members, _ in groups for p in members]
        if not params:
            raise ValueError(f"{owner} got an empty parameter list")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{owner} got a parameter twice (in two param groups, or twice in one)")
        for index, p in enumerate(params):
            if not self._backend.is_parameter(p):
                raise BackendMismatchError(
                    f"{owner} parameter {index} ({type(p).__module__}.{type(p).__name__}) is not a "
                    f"parameter of backend {self._backend.name!r}; pass model.parameters() of a model "
                    f"built under {self._backend.name!r}")
        self.params = params
        self.hyper = Hyperparameters(hyper, l1=check_range(owner, "l1", l1))
        self._lr = check_range(owner, "lr", lr)
        self._default_lr = self._lr
        self.clipping = check_clipping(owner, clip_grad_norm, clip_grad_value, clip_per_tensor)
        self.param_groups, self._rules, self._group_rules = [], [], []
        for index, (members, options) in enumerate(groups):
            hyper = check_group_options(owner, index, options, self.hyper, constructing=True)
            lr_of_group = check_range(owner, f"param group {index} lr", options.get("lr", self._lr))
            self.param_groups.append(ParamGroup(self, index, {"params": FixedList(members, f"param_groups[{index}]"
                                                                                  f"['params']", owner),
                                                              "lr": lr_of_group, **hyper}))
            rule = self
            if hyper != self.hyper:  # the same rule with the group's hyperparameters
                rule = copy.copy(self)
                rule.hyper = Hyperparameters(hyper)
            self._group_rules.append(rule)
            self._rules += [rule] * len(members)
        self.param_groups = FixedList(self.param_groups, "param_groups", owner)
        self.slots = self.slots_for(self.param_groups)  # (the same on every group's rule)
        for rule in self._group_rules:
            rule.slots = self.slots
        self._group_of = [index for index, (members, _) in enumerate(groups) for _ in members]
        # per group, the options changed since construction, in the order of their first change: compiled steps
        # read these from variables, every other option is a constant of the graph (see ``bound_rule``)
        self._bound: list[tuple[str, ...]] = [() for _ in groups]
        # each group's options as built: a state_dict records the ones changed since (param_groups[i][key] = ...)
        self._built_options = [changeable_options(self, index) for index in range(len(self.param_groups))]
        self._lr = self.param_groups[0]["lr"]
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
        """Current learning rate (of the first param group). Setting it sets every group's and takes effect
        at the next step, with no retracing."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        value = check_range(type(self).__name__, "lr", value)
        for index in range(len(self.param_groups)):
            self.set_group_lr(index, value)

    def set_group_lr(self, index: int, value: float) -> None:
        """Set param group ``index``'s learning rate (what ``param_groups[index]["lr"] = value`` does)."""
        value = check_range(type(self).__name__, f"param group {index} lr", value)
        dict.__setitem__(self.param_groups[index], "lr", value)
        if index == 0:
            self._lr = value
        self._backend.set_learning_rate(self, value, index)

    def set_group_option(self, index: int, key: str, value) -> None:
        """Set hyperparameter ``key`` of param group ``index`` (what ``param_groups[index][key] = value`` does),
        checked as the constructor checks it; the next step uses it on every backend. Parameters of other groups
        keep their values, and a value equal to the current one changes nothing.

        Compiled steps hold an option that never changed as a constant (a zero term left out), so its first change
        binds it (``bind_group_option``): every compiled step that runs this optimizer retraces once and reads it
        from a variable from then on; a later change writes that variable only, with no retrace."""
        owner = type(self).__name__
        self._check_changeable(index, key)
        group = self.param_groups[index]
        current = {k: v for k, v in group.items() if k not in ("params", "lr")}
        hyper = check_group_options(owner, index, {key: value}, current)
        if hyper[key] == group[key]:  # (a scheduler writing every step the value it wrote before)
            return
        self.check_group_change(index, key, hyper[key])
        dict.__setitem__(group, key, hyper[key])
        rule = self._group_rules[index]
        if rule is self:  # the group's own rule object from now on (groups may have shared this one)
            rule = self._group_rules[index] = copy.copy(self)
            self._rules = [rule if self._group_of[i] == index else r for i, r in enumerate(self._rules)]
        rule.hyper = Hyperparameters(hyper)
        if key in self._bound[index]:
            self._backend.set_group_options(self, index, (key,))
        else:
            self.bind_group_option(index, key)  # (writes its variable too)

    def bind_group_option(self, index: int, key: str) -> None:
        """Let compiled steps read option ``key`` of param group ``index`` from a variable from now on, instead of
        holding it as a constant (what its first change does): every compiled function whose traces ran this
        optimizer's rule retraces once at its next call (``unidl.optim.param_groups.ConstantOptions``; the others
        keep their graphs), and never again for this option. A scheduler that will change an option every step
        (``OneCycleLR(cycle_momentum=True)``) binds it before the first step."""
        if key in self._bound[index]:
            return
        self._check_changeable(index, key)
        self._bound[index] += (key,)
        grow_generation()
        self._backend.set_group_options(self, index, (key,))  # (its variable may hold the value it was built with)

    def _check_changeable(self, index: int, key: str) -> None:
        """``ValueError`` unless option ``key`` of param group ``index`` may change after construction."""
        owner = type(self).__name__
        if self.builtin_rule() is None:  # compiled steps bake its Python numbers in (see bound_rule)
            raise ValueError(f"param_groups[{index}][{key!r}] of {owner} cannot change after the optimizer is built: "
                             f"{owner} has its own update rule, which may branch on the Python value; build a new "
                             f"{owner} with the new value ('lr' can change)")
        if key not in changeable_options(self, index):
            changeable = ", ".join(["lr", *sorted(changeable_options(self, index))])
            raise ValueError(f"param_groups[{index}][{key!r}] of {owner} cannot change after the optimizer is built; "
                             f"a group may change: {changeable}")

    def slots_for(self, groups) -> tuple[str, ...]:
        """The slots this optimizer keeps for its param groups as built (``param_groups``): the class's ``slots``
        unless a rule keeps some only where an option asks for them (RMSprop's momentum buffer)."""
        return self.slots

    def check_group_change(self, index: int, key: str, value) -> None:
        """``ValueError`` unless option ``key`` of param group ``index`` may take ``value`` after construction (a
        checked value; ``set_group_option`` and ``load_state_dict`` ask first): every value, unless a rule's slots
        depend on it (``slots_for``)."""

    def bound_options(self, index: int) -> tuple[str, ...]:
        """The options of param group ``index`` that compiled steps read from variables (those changed, or bound,
        since construction; see ``bound_rule``); every other option is a constant of the compiled graph."""
        return self._bound[index]

    def rule_for(self, index: int) -> "Optimizer":
        """The optimizer whose ``hyper`` holds parameter ``index``'s group's hyperparameters (``self`` when the
        group sets none of its own); backends call ``regularized_gradient``/``apply_fused``/``update`` on it."""
        return self._rules[index]

    def group_of(self, index: int) -> int:
        """The index of the param group that parameter ``index`` (of ``params``) belongs to."""
        return self._group_of[index]

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

    def slot_shape(self, name: str, shape) -> tuple:
        """Slot ``name``'s shape for a parameter of ``shape``: the parameter's, or ``()`` for one number
        (``scalar_slots``)."""
        return () if name in self.scalar_slots else tuple(shape)

    def slot_dtype(self, name: str, dtype):
        """Slot ``name``'s dtype for a parameter of ``dtype``: the parameter's, or ``SCALAR_SLOT_DTYPE`` for one
        number (``scalar_slots``)."""
        return SCALAR_SLOT_DTYPE if name in self.scalar_slots else dtype

    def torch_slots(self, group: int) -> tuple[str, ...]:
        """The slots ``torch.optim``'s namesake keeps for every parameter of param group ``group`` once the parameter
        has been updated: the slots that group alone needs (``slots_for``: Adam's ``max_exp_avg_sq`` where it is
        amsgrad) but a momentum buffer (torch's SGD and RMSprop create one only with momentum). A ``torch.optim``
        state of a parameter updated at least once that lacks one is another class's."""
        return tuple(name for name in self.slots_for([self.param_groups[group]])
                     if name not in ("momentum_buffer", "momentum_started"))

    def update(self, param, grad, slots: dict, lr, step, ops):
        """Return ``(delta, new_slots)`` for one step: the new parameter is ``param - delta`` (backends
        subtract in place, one fused op), or ``param - delta[0] - delta[1] ...`` in that order for a tuple
        (``deltas``). ``step`` (None unless ``uses_step``) is this parameter's own count of
        updates, this one included (from 1): as ``torch.optim``'s per-parameter ``state["step"]``, a step in which
        the parameter had no gradient does not count for it (Adam's bias correction of a layer a forward skipped
        at times follows its own updates, not the optimizer's)."""
        raise NotImplementedError

    def shrink(self, param, lr, ops):
        """The factor the parameter is multiplied by before ``update``'s step is subtracted (AdamW's decoupled weight
        decay, as ``torch.optim.AdamW``'s ``param.mul_(1 - lr * weight_decay)``): a Python float or a scalar of the
        parameter's dtype; None (the default) for none. Backends compute ``shrunk(param, factor) - delta``."""
        return None

    def regularized_gradient(self, param, grad, ops):
        """The gradient, negated where ``maximize`` is set (torch.optim's first operation), with the L1 term
        (``l1 * sign(p)``) and then the L2 term (``weight_decay * p``, unless ``decoupled``) added, where they are
        set; backends call this before ``update``."""
        l1, decay, maximize = self.hyper["l1"], self.hyper.get("weight_decay", 0.0), self.hyper.get("maximize", False)
        if isinstance(maximize, bool):
            grad = -grad if maximize else grad
        else:  # (a bound option: a boolean tensor a graph reads at each step)
            grad = ops.where(maximize, -grad, grad)
        if l1:
            grad = grad + l1 * ops.sign(param)
        if not is_off(decay) and not self.decoupled:
            grad = grad + scalar_like(decay, param, ops) * param
        return grad

    def heavy_ball(self) -> tuple[str, float, bool] | None:
        """``(buffer_slot, momentum, nesterov)`` when ``update`` is exactly heavy-ball momentum on the
        regularized gradient (``b = momentum * b + g``; ``p -= lr * (g + momentum * b if nesterov else b)``),
        so that a backend with a fused in-place kernel for that rule may run it instead, with Python ``momentum``
        and ``nesterov``; None otherwise, also when either is a tensor (a bound option, see ``bound_rule``)."""
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

    def clip_gradients(self, grads, ops) -> list:
        """``grads`` clipped as this optimizer's ``clip_grad_value`` / ``clip_grad_norm`` / ``clip_per_tensor``
        say (``unidl.optim.gradients.clip_gradients``); backends call it on the raw gradients, before
        ``regularized_gradient``, as ``torch.nn.utils.clip_grad_norm_`` runs before ``optimizer.step()``."""
        if self.clipping["clip_grad_norm"] is None and self.clipping["clip_grad_value"] is None:
            return grads
        return clip_gradients(grads, self.clipping, ops)

    @property
    def last_step_finite(self) -> bool:
        """False when the last update was skipped because its loss or a gradient was NaN or infinite: that
        step left every parameter, slot and the step count exactly as they were (the non-finite guard;
        ``train_step`` and ``fit`` raise ``NonFiniteLossError`` on such a step)."""
        return self._backend.last_step_finite(self)

    def apply(self, grads) -> None:
        """Update every parameter with its gradient (list in ``params`` order). A None gradient, or a frozen
        parameter (``requires_grad`` False), leaves that parameter and its state exactly as they are."""
        from unidl.nn.module import is_trainable

        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"{type(self).__name__}.apply got {len(grads)} gradients for {len(self.params)} parameters")
        grads = [self._checked_gradient(index, p, g) for index, (p, g) in enumerate(zip(self.params, grads))]
        self._backend.apply_gradients(self, [g if is_trainable(p) else None for p, g in zip(self.params, grads)])

    def _checked_gradient(self, index: int, param, grad):
        """``grad`` as ``apply`` hands it to the backend: a NumPy array or list as a tensor of the parameter's dtype
        (on some backends an option's arithmetic met the array itself: AttributeError, Keras's TypeError), a tensor of
        another float width cast to it (TensorFlow's kernels raised, torch and jax cast); a gradient of another shape
        than its parameter's, or not of floats, a clear error before any parameter changes (jax broadcast it into the
        parameter, reshaping the model; tensorflow and keras raised after updating the parameters before it). In a
        TensorFlow graph whose sizes are known only when it runs, a gradient of another size may meet TensorFlow's
        own error first (its variable update does not wait for the check there)."""
        if grad is None:
            return None
        if not isinstance(grad, CONVERTED) and grad.dtype == param.dtype and grad.shape == param.shape:
            return grad  # (the common case, decided at once: apply runs at every step of a hand-written loop)
        from unidl import input_checks
        from unidl.dtype_kinds import dtype_name, is_floating
        from unidl.errors import DtypeMismatchError, ShapeMismatchError

        wanted = dtype_name(param.dtype)
        if isinstance(grad, CONVERTED):
            from unidl.tensors import tensor

            grad = tensor(np.asarray(grad), wanted)
        shape, expected = _known_shape(grad), _known_shape(param)
        if shape is not None and expected is not None:
            def template(rank=len(shape)):
                return (f"{type(self).__name__}.apply: parameter {index} of {len(self.params)} (in params order) has "
                        f"shape {input_checks.shape_template(len(expected))}, its gradient "
                        f"{input_checks.shape_template(rank)}; each gradient must have its parameter's shape")

            if input_checks.shapes_conflict(shape, expected):
                raise ShapeMismatchError(template().format(*expected, *shape))
            if None in shape:  # (a graph's gradient of sizes it knows only when it runs: checked then)
                grad = input_checks.require_shape(grad, expected, template)
        given = dtype_name(grad.dtype)
        if given != wanted:
            if not is_floating(grad.dtype):
                raise DtypeMismatchError(f"{type(self).__name__}.apply: gradient {index} holds {given} values; its "
                                         f"parameter is {wanted}, and a gradient must hold floats")
            from unidl import ops

            grad = ops.cast_like(grad, param)
        return grad

    @property
    def defaults(self) -> dict:
        """The options given to the constructor, ``lr`` first (``torch.optim.Optimizer.defaults``): a copy, which
        changes nothing; a group's own options are in ``param_groups``."""
        return {"lr": self._default_lr, **self.hyper}

    def add_param_group(self, param_group: dict) -> None:
        """Refused on every backend: a unidl optimizer's groups are fixed when it is built, because the compiled
        training steps of tensorflow, keras and jax hold its slots and options as built."""
        raise NotImplementedError(
            f"{type(self).__name__}.add_param_group: a unidl optimizer keeps the parameter groups it was built with; "
            f"build a new optimizer over every group instead, e.g. {type(self).__name__}([{{'params': old}}, "
            f"{{'params': new, 'lr': 1e-4}}], lr={self._default_lr})")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients left by ``backward()`` (torch backend: to None, or to zeros with ``set_to_none=False``, as
        ``torch.optim``'s); a no-op elsewhere, where gradients are returned, not stored."""
        self._backend.zero_grad(self, set_to_none=bool(set_to_none))

    def step(self, closure=None):
        """Apply the gradients that ``backward()`` stored on the parameters (torch backend). ``closure``: as
        ``torch.optim``'s, a function that clears the gradients, computes the loss, calls ``backward()`` and returns
        the loss; called first, with gradients enabled, and its loss returned."""
        if closure is not None and not callable(closure):
            raise TypeError(f"{type(self).__name__}.step(closure): closure must be a function that computes the "
                            f"loss and calls backward(), got {type(closure).__name__}")
        return self._backend.step(self, closure)

    def state_dict(self) -> dict:
        """The optimizer's state in canonical form, the same on every backend::

            {"class": "Adam", "lr": float, "step": int, "hyper": {...},
             "slots": [{slot_name: np.ndarray, ...}, ...]}   # one dict per parameter, params order

        ``"step"`` counts the updates applied (skipped non-finite steps not included). Slots not yet created
        (before the first step) are reported at their initial value. An optimizer whose rule reads the step
        (``uses_step``: Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, Rprop) has ``"param_steps": [int, ...]`` too,
        each parameter's own count of updates (torch.optim's per-parameter ``state["step"]``: a step without a
        gradient for it does not count). With more than one param group, or options changed through
        ``param_groups[i][key] = ...``, ``"param_groups": [{"lr": float, "size": int, **changed}, ...]`` too ("lr"
        is the first group's; ``changed``: the group's options that differ from those it was built with).
        Taken in the middle of a ``train_step(accumulate=N)`` window, ``"accumulation"`` too: the micro-steps'
        summed gradients and count (``unidl.training.AccumulationWindow``), so that a resumed run goes on with it.
        Once a schedule was built on the optimizer, ``"initial_lrs"`` too: each group's rate when its first schedule
        was built (PyTorch's ``initial_lr``), the base rates of a schedule built after a load.
        With a float16 train step (``precision="16-mixed"``), ``"loss_scaler": {"scale": float, "growth_tracker":
        int}`` too: its dynamic loss scale (``unidl.training.LossScaler``), so that a resumed run does not restart
        at ``init_scale``.
        """
        from unidl.training import scaler_state, window_state

        step, slots, param_steps = self._backend.optimizer_state(self)
        state = {"class": type(self).__name__, "lr": self._lr, "step": int(step), "hyper": dict(self.hyper),
                 "slots": [{name: np.asarray(value) for name, value in entry.items()} for entry in slots]}
        if self.uses_step:
            state["param_steps"] = [int(count) for count in param_steps]
        groups = self._group_entries()
        if len(groups) > 1 or any(groups[0][k] != v for k, v in self.hyper.items() if k in groups[0]):
            state["param_groups"] = groups
        if "_initial_lrs" in self.__dict__:  # (PyTorch's initial_lr, saved with its param groups)
            state["initial_lrs"] = list(self.__dict__["_initial_lrs"])
        window = window_state(self)
        if window is not None:
            state["accumulation"] = window
        scaler = scaler_state(self)
        if scaler is not None:
            state["loss_scaler"] = scaler
        return state

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` (a ``ValueError``) unless ``load_state_dict(state)`` would succeed;
        changes nothing. Checks the class, step, per-parameter steps, lr and every slot's name, shape and dtype
        (of a ``torch.optim`` state too, once converted: see ``load_state_dict``)."""
        from unidl.errors import CheckpointStateError

        from unidl.optim.torch_state import is_torch_state, unidl_state

        owner = type(self).__name__
        if is_torch_state(state):
            state = unidl_state(self, state)
        if not isinstance(state, dict) or not {"step", "lr", "slots"} <= set(state):
            raise CheckpointStateError(f"{owner} state must be a dict with 'step', 'lr' and 'slots', got "
                                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if state.get("class", owner) != owner:
            raise CheckpointStateError(f"cannot load {state['class']} state into {owner}")
        step = state["step"]
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or not 0 <= step < INT64_END:
            # (an int64 counter on every backend: 2 ** 63 and above failed on TensorFlow and JAX after the
            # checkpoint's other state had been restored)
            raise CheckpointStateError(f"{owner} state step must be an integer in 0..2**63 - 1, got {step!r}")
        self._check_param_steps(state.get("param_steps"), step)
        try:
            check_range(owner, "lr", state["lr"])
        except ValueError as error:
            raise CheckpointStateError(f"{owner} state: {error}") from None
        groups = state.get("param_groups")
        if groups is not None or len(self.param_groups) > 1:
            expected = [len(group["params"]) for group in self.param_groups]
            if (not isinstance(groups, list) or not all(isinstance(g, dict) and {"lr", "size"} <= set(g) for g in groups)
                    or [g["size"] for g in groups] != expected):
                raise CheckpointStateError(f"{owner} state holds param groups {groups!r}; this optimizer has "
                                           f"{len(expected)} groups of sizes {expected}")
            for index, group in enumerate(groups):
                try:
                    check_range(owner, f"param group {index} lr", group["lr"])
                    self._check_group_entry(index, group)
                except ValueError as error:
                    raise CheckpointStateError(f"{owner} state: {error}") from None
        initial = state.get("initial_lrs")
        if initial is not None:
            if not isinstance(initial, list) or len(initial) != len(self.param_groups):
                raise CheckpointStateError(f"{owner} state initial_lrs must be a list of one rate per param group "
                                           f"({len(self.param_groups)}), got {initial!r}")
            for rate in initial:
                try:
                    check_range(owner, "initial lr", rate)
                except ValueError as error:
                    raise CheckpointStateError(f"{owner} state: {error}") from None
        hyper = state.get("hyper")
        if hyper is not None and not isinstance(hyper, dict):
            raise CheckpointStateError(f"{owner} state hyper must be a dict of options, got {type(hyper).__name__}")
        try:
            self._check_saved_group_options(hyper, groups)
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
                if tuple(np.shape(value)) != self.slot_shape(name, param.shape):
                    raise CheckpointStateError(f"{owner} slot {name!r} of parameter {index}: expected shape "
                                               f"{self.slot_shape(name, param.shape)}, found {tuple(np.shape(value))}")
                dtype = value.dtype if isinstance(getattr(value, "dtype", None), np.dtype) else np.asarray(value).dtype
                if dtype.kind not in "fiu":  # (a NumPy dtype is read as it is: a file's tensor is not read here)
                    raise CheckpointStateError(f"{owner} slot {name!r} of parameter {index}: expected numbers, "
                                               f"found dtype {dtype}")
        from unidl.training import check_scaler_state, check_window_state

        check_window_state(self, state.get("accumulation"))  # a part-full window: the same accumulate
        check_scaler_state(self, state.get("loss_scaler"))  # a float16 step's scale: below its growth_interval

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` written by this optimizer class on any backend, or the ``state_dict()`` of its
        namesake in ``torch.optim`` (checked first: ``check_state_dict``; nothing changes if it does not fit).

        A ``torch.optim`` state (``{'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}``,
        tensors as torch tensors or NumPy arrays) resumes a PyTorch run on any backend: its group ``i`` is this
        optimizer's group ``i`` (the same number of parameters, of the same shapes, in order), whose ``lr`` and
        options it sets; each parameter's ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``,
        ``square_avg``, ``grad_avg``, ``sum``, ``exp_inf``, ``acc_delta``, ``prev``, ``step_size`` or ``mu_product``
        (NAdam's one float32 number, a 0-d slot) becomes the slot of that name (one not yet there, a
        ``momentum_buffer`` None, its initial value), its ``step`` its own count (``param_steps``), the largest
        this optimizer's ``step`` (0 for SGD, which torch counts nowhere); a group's ``initial_lr`` (a schedule's)
        the base rates of schedules built after. A ``CheckpointStateError`` names what does not fit: another
        number of groups or of parameters in one, another shape (group, index, both shapes), state or an option of
        another optimizer class, an option unidl does not implement (``foreach`` and the like other than at their
        defaults) or one fixed when built at another value (``amsgrad``, ``centered``, ``dampening``,
        ``initial_accumulator_value``): build the optimizer with it.

        Args:
            state: unidl's ``state_dict()``, or ``torch.optim``'s.
        """
        from unidl.optim.torch_state import is_torch_state, unidl_state

        if is_torch_state(state):
            state = unidl_state(self, state)
        self.check_state_dict(state)
        slots, step = state["slots"], int(state["step"])
        param_steps = state.get("param_steps")
        if self.uses_step:  # a state saved before steps were counted per parameter: each had every update
            param_steps = [int(count) for count in param_steps] if param_steps is not None else [step] * len(slots)
        self._backend.load_optimizer_state(self, step, slots, param_steps)
        from unidl.training import load_scaler_state, load_window_state

        load_window_state(self, state.get("accumulation"))  # none: a window in progress is emptied
        load_scaler_state(self, state.get("loss_scaler"))  # none: a float16 step's scale back to init_scale
        if "param_groups" in state:
            for index, group in enumerate(state["param_groups"]):
                self.set_group_lr(index, float(group["lr"]))
        else:
            self.lr = float(state["lr"])
        self._load_group_options(state.get("hyper"), state.get("param_groups"))
        if state.get("initial_lrs") is not None:  # the base rates a schedule built from now on starts from (PyTorch's
            # initial_lr, which its load restores); one built before keeps those it took
            self.__dict__.setdefault("_initial_lrs", [float(rate) for rate in state["initial_lrs"]])

    def _check_param_steps(self, counts, step) -> None:
        """``CheckpointStateError`` unless ``counts`` (a state's ``"param_steps"``) is None or, for an optimizer
        that counts steps per parameter, one count per parameter between 0 and the optimizer's ``step``."""
        from unidl.errors import CheckpointStateError

        if counts is None:
            return
        owner = type(self).__name__
        if not self.uses_step:
            raise CheckpointStateError(f"{owner} state holds 'param_steps', but {owner}'s rule reads no step count "
                                       f"(uses_step False): a state of another rule?")
        if not isinstance(counts, (list, tuple)) or len(counts) != len(self.params):
            found = f"{len(counts)} entries" if isinstance(counts, (list, tuple)) else repr(counts)
            raise CheckpointStateError(f"{owner} state param_steps must be a list of one step count per parameter "
                                       f"({len(self.params)}), got {found}")
        for index, count in enumerate(counts):
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or not 0 <= count <= step:
                raise CheckpointStateError(f"{owner} state param_steps[{index}] must be an integer in 0..{step} "
                                           f"(the optimizer's step), got {count!r}")

    def _group_entries(self) -> list[dict]:
        """Each group's ``state_dict`` entry: its lr, its size and every option a group may change (as
        ``torch.optim``'s ``state_dict`` holds each group's options: a load restores them all)."""
        return [{"lr": group["lr"], "size": len(group["params"]), **changeable_options(self, index)}
                for index, group in enumerate(self.param_groups)]

    def _check_group_entry(self, index: int, entry: dict) -> None:
        """``ValueError`` unless a saved group entry's options are ones this group can take."""
        options, built = {k: v for k, v in entry.items() if k not in ("lr", "size")}, self._built_options[index]
        if set(options) - set(built):
            raise ValueError(f"param group {index} holds options {sorted(set(options) - set(built))}; this "
                             f"optimizer's group {index} has {', '.join(['lr', *sorted(built)])}")
        check_group_options(type(self).__name__, index, options, built)

    def _saved_group_options(self, hyper, entries) -> list[dict]:
        """Each group's options as a state saved them, as ``torch.optim``'s ``load_state_dict`` restores every
        option of every group (the saved betas, momentum, weight decay, not the ones this optimizer was built
        with): a group's entry where the state has them (every option; an older state's, those changed since it
        was built, the rest as built), else the saved optimizer's ``hyper`` (one group with its options). ``l1``
        and ``initial_accumulator_value`` cannot change once built (``FIXED_OPTIONS``): they stay."""
        given = set()  # fit's resume: the options given anew (other than the saved run's) win, as its rule says
        if self.__dict__.get("_given_options_win") and isinstance(hyper, dict):
            given = {k for k, v in self.hyper.items() if k in hyper and _plain(hyper[k]) != _plain(v)}
        targets = []
        for index, built in enumerate(self._built_options):
            if entries is not None:
                saved = {k: v for k, v in entries[index].items() if k not in ("lr", "size")}
            else:
                saved = {k: v for k, v in hyper.items() if k in built} if isinstance(hyper, dict) else {}
            targets.append({key: self.param_groups[index][key] if key in given else _plain(value)
                            for key, value in {**built, **saved}.items()})
        return targets

    def _check_saved_group_options(self, hyper, entries) -> None:
        """``ValueError`` unless every group can take its saved options (``_saved_group_options``): valid values,
        and none to change on an optimizer whose options cannot change (a rule of its own)."""
        for index, options in enumerate(self._saved_group_options(hyper, entries)):
            check_group_options(type(self).__name__, index, options, self._built_options[index])
            for key, value in options.items():
                if self.param_groups[index][key] != value:
                    self._check_changeable(index, key)
                    self.check_group_change(index, key, value)

    def _load_group_options(self, hyper, entries) -> None:
        """Set each group's options as saved (``_saved_group_options``)."""
        for index, options in enumerate(self._saved_group_options(hyper, entries)):
            for key, value in options.items():
                if self.param_groups[index][key] != value:
                    self.set_group_option(index, key, value)

    def initial_slots(self) -> list[dict]:
        """Slot values before the first step (what ``state_dict`` reports for unbuilt slots)."""
        return [{name: np.full(self.slot_shape(name, p.shape), self.initial_slot_value,
                               dtype=self.slot_dtype(name, config.get_dtype())) for name in self.slots}
                for p in self.params]

    def __repr__(self):
        fields = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}(lr={self._lr}, {fields})"
