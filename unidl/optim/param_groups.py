"""Parameter groups, as ``torch.optim`` takes them: ``[{"params": ..., "lr": ..., "weight_decay": ...}, ...]``.

An optimizer keeps one flat ``params`` list (what backends index their state by) and ``param_groups``: one
``ParamGroup`` dict per group holding its parameters, its learning rate and its hyperparameters (the
constructor's values unless the group names its own). Setting a group's ``"lr"`` or any hyperparameter that
``torch.optim`` lets a group change (``momentum``, ``nesterov``, ``weight_decay``, ``betas``, ``eps``,
``alpha``, ``momentum_decay``, ``rho``, ``etas``, ``step_sizes`` ...) takes effect at the next step, on every
backend, so ``for g in opt.param_groups: g["momentum"] = ...`` works as in PyTorch. Until an option is first
changed, compiled steps hold it as a constant (a zero term left out: default SGD computes no momentum buffer);
its first change binds it (``Optimizer.bound_options``): every compiled step and ``ud.function`` whose traces ran
that optimizer's rule retraces once (``ConstantOptions``) and reads it from a variable from then on, so later
changes never retrace; those that never ran it do not retrace.
"""

from __future__ import annotations

import contextvars
import math

from unidl import arguments

#: hyperparameters with bounds other than [0, inf): name -> (low, high, high_open)
_BOUNDS = {"momentum": (0.0, 1.0, True), "alpha": (0.0, 1.0, False), "rho": (0.0, 1.0, False)}
#: hyperparameters fixed once the optimizer is built: unidl's L1 term (torch.optim has none), what only
#: the slots' first values read, what decides which slots there are (RMSprop's ``centered``, Adam's ``amsgrad``) and
#: which term a rule computes (Adam's ``decoupled_weight_decay``: the gradient's L2 term or AdamW's shrink; SGD's
#: ``dampening``: whether it counts each parameter's updates)
FIXED_OPTIONS = ("l1", "initial_accumulator_value", "centered", "amsgrad", "decoupled_weight_decay", "dampening")
#: options one value of which holds for every group (a group of its own is refused)
_ONE_FOR_ALL = ("initial_accumulator_value",)

#: how many times any optimizer's set of bound options has grown (see ``options_generation``)
_generation = 0

#: the ``ConstantOptions`` of the compiled functions being traced here, innermost last (a train step traced
#: inside a ``ud.function``'s trace notes what it reads to both)
_recordings: contextvars.ContextVar = contextvars.ContextVar("unidl_options_recordings", default=())


def options_generation() -> int:
    """A counter that grows whenever some optimizer's param-group option is changed for the first time (bound):
    ``ConstantOptions.stale`` compares it first, so that a compiled function's call pays one integer comparison
    while no optimizer binds anything."""
    return _generation


def grow_generation() -> None:
    """Record that an optimizer bound an option (``Optimizer.bind_group_option``): the compiled functions whose
    traces ran its rule retrace (``ConstantOptions``)."""
    global _generation
    _generation += 1


def bound_count(optimizer) -> int:
    """How many options of ``optimizer`` are bound, over all its param groups: its own generation (binding only
    adds), which grows exactly when a compiled step that holds one of its options as a constant must retrace."""
    return sum(len(optimizer.bound_options(group)) for group in range(len(optimizer.param_groups)))


def options_read(optimizer) -> None:
    """Note, in every compiled function being traced here, that the trace holds ``optimizer``'s options as they
    are bound now (``bound_rule`` calls this while a graph backend traces a rule): a later first change of one of
    its options retraces those functions, and no others. Eagerly (no trace) it does nothing."""
    recordings = _recordings.get()
    if recordings:
        count = bound_count(optimizer)
        for recording in recordings:
            recording.read[id(optimizer)] = (optimizer, count)


class ConstantOptions:
    """The optimizers whose options one compiled function (a ``ud.function``, a train step, an optimizer's
    compiled ``apply``, Keras's own train function) holds as constants, each with its ``bound_count`` then.

    An option never changed is a constant of a graph; its first change binds it (a variable from then on) and
    must retrace the graphs that baked it in, once, and only those: the optimizers are ``known`` up front (a
    train step knows its optimizer) or noted while the function is traced (``recording()``: ``options_read``),
    so a first change of another optimizer's option (a second model's, one an eval function never touches)
    retraces nothing here. Every backend's compiled functions ask ``stale()`` at each call."""

    __slots__ = ("read", "_seen")

    def __init__(self, *known):
        self.read: dict = {id(optimizer): (optimizer, bound_count(optimizer)) for optimizer in known}
        self._seen = _generation

    def recording(self) -> "_Recording":
        """A context for one trace of the function: the optimizers whose rule it runs are noted here (and in the
        functions whose traces enclose it)."""
        return _Recording(self)

    def stale(self) -> bool:
        """True, once, when an optimizer this function holds options of has bound one since (the caller drops its
        graphs: the next call traces again). Called inside another function's trace (a compiled step run inside
        a ``ud.function``), it also notes its optimizers there: the enclosing graph inlines this one's constants."""
        stale = False
        if self._seen != _generation:  # (else no optimizer bound anything since the last call: the common case)
            self._seen = _generation
            counts = {key: (optimizer, bound_count(optimizer)) for key, (optimizer, _) in self.read.items()}
            stale, self.read = counts != self.read, counts
        recordings = _recordings.get()
        if recordings:
            for recording in recordings:
                recording.read.update(self.read)
        return stale


class _Recording:
    """``ConstantOptions.recording()``: pushes its options onto the traces being recorded here."""

    __slots__ = ("_options", "_token")

    def __init__(self, options):
        self._options = options

    def __enter__(self):
        self._token = _recordings.set((*_recordings.get(), self._options))

    def __exit__(self, *exc_info):
        _recordings.reset(self._token)


def write_group_options(optimizer, group: int, keys, assign) -> None:
    """Write options ``keys`` of param group ``group`` into the variables a graph backend's native optimizer keeps
    for them (``option_variables(group, key)``: one, or a pair for ``betas``), with the backend's
    ``assign(variable, value)``; the next step reads them."""
    for key in keys:
        value = optimizer.param_groups[group][key]
        values = value if isinstance(value, tuple) else (value,)
        for variable, v in zip(optimizer.native.option_variables(group, key), values):
            assign(variable, v)


def read_group_option(optimizer, group: int, key: str, read):
    """Option ``key`` of param group ``group`` as a compiled step reads it (``bound_rule``): ``read(variable)`` of
    each of the variables the native optimizer keeps for it (``option_variables``), a pair for ``betas``."""
    values = tuple(read(variable) for variable in optimizer.native.option_variables(group, key))
    return values if isinstance(optimizer.param_groups[group][key], tuple) else values[0]


class FixedList(list):
    """``optimizer.param_groups`` and each group's ``"params"``: a list that cannot change once the optimizer is built
    (a parameter appended to a group, or a group appended, was accepted and never trained: the backends hold the
    slots and compiled steps of the parameters as built), read as any list."""

    def __init__(self, items, what: str, owner: str):
        super().__init__(items)
        self._what, self._owner = what, owner

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{self._owner}.{self._what} cannot change once the optimizer is built (the backends hold the "
                        f"slots and compiled steps of its parameters as built, and would never train another); build "
                        f"a new {self._owner} over every group instead, e.g. {self._owner}([{{'params': old}}, "
                        f"{{'params': new, 'lr': 1e-4}}], lr=...)")

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __delitem__ = __iadd__ = __imul__ = _refuse

    def __setitem__(self, index, value):
        if not isinstance(index, slice) and self[index] is value:  # (``param_groups[0] |= {...}`` stores it back)
            return
        self._refuse()

    def __reduce__(self):
        return list, (list(self),)


class ParamGroup(dict):
    """One group of ``optimizer.param_groups``: a dict whose ``"lr"`` and hyperparameters (those of
    ``torch.optim``: not ``l1``, ``initial_accumulator_value`` or ``params``) may be set; the backend uses the
    new value from the next step on. The first change of a hyperparameter (not ``"lr"``, always a variable)
    retraces compiled steps once (see the module doc); setting the value it already has changes nothing."""

    def __init__(self, optimizer, index: int, values: dict):
        super().__init__(values)
        self._optimizer, self._index = optimizer, index

    def __setitem__(self, key, value):
        if key == "lr":
            self._optimizer.set_group_lr(self._index, value)
            return
        if key in FIXED_OPTIONS or key == "params" or key not in self:
            changeable = ", ".join(["lr", *sorted(k for k in self if k not in (*FIXED_OPTIONS, "params", "lr"))])
            raise ValueError(f"param_groups[{self._index}][{key!r}] cannot change after the optimizer is built; "
                             f"a group may change: {changeable}")
        self._optimizer.set_group_option(self._index, key, value)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)  # (dict's own |= wrote the entries past the optimizer: shown, saved, never trained)
        return self

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default  # (an unknown option: the ValueError naming those a group may change)
        return self[key]

    def _removal(self, *args, **kwargs):
        raise ValueError(f"param_groups[{self._index}] entries cannot be removed: a group keeps 'params', 'lr' and "
                         f"its options; set a value instead (param_groups[{self._index}][key] = value)")

    __delitem__ = pop = popitem = clear = _removal

    def __reduce__(self):
        # A copy (``copy.deepcopy(optimizer.param_groups)``, pickle) is a plain dict, as torch.optim's groups are:
        # dict's own copy wrote each entry through ``__setitem__`` (a ValueError on "params") or carried the
        # optimizer along (its backend's modules cannot be copied).
        return dict, (dict(self),)


def _unnamed(members: list) -> list:
    """Parameters as given, or as ``named_parameters()`` gives them ((name, parameter) pairs, which
    ``torch.optim`` takes too): the parameters."""
    return [m[1] if isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) else m for m in members]


def split_param_groups(owner: str, params) -> list[tuple[list, dict]]:
    """``params`` (parameters, or dicts with "params" and options; parameters also as ``named_parameters()``'s
    pairs) as ``[(parameters, options), ...]``. A single parameter is a ``TypeError`` as torch.optim's (the torch
    backend said it was no parameter of torch's, keras raised a raw StridedSlice error)."""
    if hasattr(params, "shape") and hasattr(params, "dtype"):
        raise TypeError(f"{owner} params should be an iterable of parameters or dicts (param groups), as torch.optim "
                        f"takes them, but got a single {type(params).__name__}: pass [param] or model.parameters()")
    params = list(params)
    if not params or not isinstance(params[0], dict):
        if any(isinstance(p, dict) for p in params):
            raise ValueError(f"{owner} params must be all parameters or all groups (dicts), not a mixture")
        return [(_unnamed(params), {})]
    groups = []
    for index, group in enumerate(params):
        if not isinstance(group, dict) or "params" not in group:
            raise ValueError(f"{owner} param group {index} must be a dict with a 'params' entry, got {group!r}")
        members = group["params"]
        members = [members] if not isinstance(members, (list, tuple)) and not hasattr(members, "__next__") else list(members)
        members = _unnamed(members)
        if not members:
            raise ValueError(f"{owner} param group {index} has no parameters")
        groups.append((members, {k: v for k, v in group.items() if k != "params"}))
    return groups


def _pair(owner: str, name: str, value, wanted: str, valid) -> tuple[float, float]:
    """``value`` as a pair of Python floats for which ``valid(low, high)`` holds; ``ValueError`` naming ``wanted``."""
    given = arguments.sequence(value)  # (a tuple, a list, a 1-d array; NumPy scalars as floats)
    numbers = () if given is None or len(given) != 2 else tuple(arguments.real(v) for v in given)
    if not numbers or any(v is None or math.isnan(v) for v in numbers) or not valid(*numbers):
        raise ValueError(f"{owner} {name} must be {wanted}, got {value!r}")
    return numbers


def check_etas(owner: str, name: str, value) -> tuple[float, float]:
    """Rprop's ``etas``: ``(etaminus, etaplus)`` with 0 < etaminus < 1 < etaplus (``torch.optim.Rprop``'s check)."""
    return _pair(owner, name, value, "a pair (etaminus, etaplus) with 0 < etaminus < 1 < etaplus",
                 lambda minus, plus: 0.0 < minus < 1.0 < plus)


def check_step_sizes(owner: str, name: str, value) -> tuple[float, float]:
    """Rprop's ``step_sizes``: a pair of numbers ``(min_step, max_step)``, any that ``torch.optim.Rprop`` takes (it
    checks none; only NaN is refused here): each step size is clamped as torch's ``clamp_(min_step, max_step)``, which
    gives max_step where min_step is above it; a negative min_step acts as 0 (step sizes start at lr and change by
    positive factors), a negative max_step steps uphill as torch's does."""
    return _pair(owner, name, value, "a pair of numbers (min_step, max_step)", lambda low, high: True)


def check_betas_pair(owner: str, name: str, value) -> tuple[float, float]:
    """A group's ``betas``: a pair of numbers in [0, 1)."""
    return _pair(owner, name, value, "a pair of numbers in [0, 1)",
                 lambda beta1, beta2: 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0)


#: the pair options of param groups, each with its check
PAIR_CHECKS = {"betas": check_betas_pair, "etas": check_etas, "step_sizes": check_step_sizes}


def check_group_options(owner: str, index: int, options: dict, defaults: dict, constructing: bool = False) -> dict:
    """A group's own options checked against the optimizer's hyperparameters: ``ValueError`` naming an unknown
    or invalid one. Returns the group's full hyperparameters (``defaults`` with the group's values). ``nesterov``
    without momentum is refused only while ``constructing``, as torch.optim checks it only then: a schedule cycling
    a Nesterov SGD's momentum down to 0 runs on (it raised mid-step, half the schedule's step taken), and a state
    saved there loads."""
    from unidl.optim.optimizer import check_range

    merged = dict(defaults)
    for key, value in options.items():
        where = f"param group {index}"
        if key == "lr":
            check_range(owner, f"{where} lr", value)
            continue
        known = ", ".join(["lr", *sorted(k for k in defaults if k not in _ONE_FOR_ALL)])
        if key in _ONE_FOR_ALL:
            raise ValueError(f"{owner} {where} sets {key!r}, which unidl's {owner} takes once for every group (its "
                             f"slots start alike); pass it to {owner}(...) itself; a group may set: {known}")
        if key not in defaults:
            raise ValueError(f"{owner} {where} has an unknown option {key!r}; a group may set: {known}")
        if isinstance(defaults[key], bool):
            value = arguments.flag(owner, f"{where} {key}", value)
        elif key in PAIR_CHECKS:
            value = PAIR_CHECKS[key](owner, f"{where} {key}", value)
        else:
            low, high, high_open = _BOUNDS.get(key, (0.0, math.inf, True))
            value = check_range(owner, f"{where} {key}", value, low, high, high_open=high_open)
        merged[key] = value
    if constructing and merged.get("nesterov") and not merged.get("momentum"):
        raise ValueError(f"{owner} param group {index}: nesterov=True needs momentum > 0")
    return merged
