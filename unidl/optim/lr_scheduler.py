"""Learning-rate schedules, computed in Python once per epoch (or step) and written into the optimizer.

Setting ``optimizer.lr`` updates a variable inside the backend (a ``tf.Variable``
on tensorflow, the Keras optimizer's learning-rate variable on keras, the
param groups on torch), so a new rate never retraces a compiled step.
"""

from __future__ import annotations

import bisect
import functools
import inspect
import math
import warnings

import numpy as np

from unidl import arguments
from unidl.optim.optimizer import check_range
from unidl.scoped_flags import ScopedFlag

# not a schedule's settings: what it is built on, and its position (its state's own entries)
_NOT_SETTINGS = ("self", "optimizer", "schedulers", "last_epoch")
_UNSAVED = object()
# set while fit resumes a run: settings given anew win over the checkpoint's, with a warning (fit's rule)
_given_settings_win = ScopedFlag("unidl_given_settings_win")


def given_settings_win():
    """Within it, loading a schedule's state whose settings differ from the schedule's own keeps the schedule's,
    with a warning naming them (``fit``'s resume rule: what is given anew wins), where it is an error elsewhere."""
    return _given_settings_win.raised()


def _setting(value):
    """A constructor argument as a schedule's state saves it (plain JSON data), or ``_UNSAVED`` for what JSON cannot
    hold (an ``lr_lambda``, a ``scale_fn``): those are the caller's to give again."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(value, (list, tuple)):
        items = [_setting(item) for item in value]
        return _UNSAVED if any(item is _UNSAVED for item in items) else items
    return _UNSAVED


def _same_setting(a, b) -> bool:
    """Whether two settings are the same, numbers to float32's precision (a ``gamma`` given as ``np.float32(0.1)``
    is the schedule of ``0.1``); lists item by item."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    return a == b


def _recorded(init):
    """``init`` that first records the arguments it was called with as the schedule's ``_settings`` (those of the
    most derived class's constructor: a ``super().__init__`` records nothing more)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording(self, *args, **kwargs):
        if "_settings" not in self.__dict__:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                return init(self, *args, **kwargs)  # (the constructor's own error for arguments that do not fit)
            bound.apply_defaults()
            arguments_given = dict(bound.arguments)
            for name, parameter in signature.parameters.items():  # (a subclass's **kwargs: each by its own name)
                if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments_given.update(arguments_given.pop(name, {}))
            settings = {name: _setting(value) for name, value in arguments_given.items() if name not in _NOT_SETTINGS}
            self.__dict__["_settings"] = {name: value for name, value in settings.items() if value is not _UNSAVED}
        return init(self, *args, **kwargs)

    return recording


def _check_fresh(owner: str, last_epoch) -> None:
    """``ValueError`` unless ``last_epoch`` is -1, PyTorch's default (a schedule from its start): PyTorch's resume by
    ``last_epoch=N`` reads the optimizer's ``initial_lr``; a unidl schedule resumes from its own ``state_dict()``."""
    if last_epoch != -1:
        raise ValueError(f"{owner} last_epoch={last_epoch!r}: unidl's schedules start at epoch 0 (last_epoch=-1, "
                         f"PyTorch's default); to resume one, build it and load its state_dict() "
                         f"(scheduler.load_state_dict(state), or ud.fit's checkpoints)")


def refuse_epoch(owner: str, epoch) -> None:
    """``TypeError`` for ``step(epoch)`` (PyTorch's deprecated form, which jumps to ``epoch`` and takes the closed
    form where a schedule has one, else its recursive rule from the wrong rate), given anything but None."""
    if epoch is not None:
        fractional = (" (CosineAnnealingWarmRestarts' fractional step(epoch + i / iters): step per batch, with T_0 "
                      "in batches, e.g. LearningRateScheduler(schedule, interval='batch'))"
                      if owner == "CosineAnnealingWarmRestarts" else "")
        raise TypeError(f"{owner}.step() takes no epoch (got {epoch!r}): unidl's schedules count their own steps "
                        f"(PyTorch deprecated step(epoch) but for a warm restart's fraction); call step() once per "
                        f"epoch (or per batch{fractional}), and resume a schedule with load_state_dict(state)")


class LRScheduler:
    """Base class: ``step()`` advances the schedule by one and sets each param group's lr, as
    ``torch.optim.lr_scheduler`` does. The chainable schedules (``StepLR``, ``MultiStepLR``, ``ExponentialLR``,
    ``CosineAnnealingLR``, ``LinearLR``, ``ConstantLR``, ``PolynomialLR``, ``MultiplicativeLR``) change each group's
    *current* rate, PyTorch's recursive forms: two on one
    optimizer compose (a warm-up, then a decay) and a rate set by hand carries on; ``LambdaLR`` and ``OneCycleLR``
    set it from the group's base rate. Building one takes its first step (epoch 0: ``LinearLR``'s start factor, a
    milestone at 0). The base rates (``base_lrs``) are the groups' rates when the optimizer's first schedule was
    built (PyTorch's ``initial_lr``), so that a second schedule builds on the same ones, unless a schedule gives its
    own (``base_lrs``: ``CyclicLR``'s ``base_lr``).

    ``state_dict()`` holds the schedule's settings too (its constructor's arguments but functions: ``step_size``,
    ``T_max``, ``milestones`` ...). Loading a state saved with other settings is a ``CheckpointStateError`` naming
    them, raised before anything changes (PyTorch's ``load_state_dict`` silently takes the saved ones, so that a
    resumed run follows another schedule than the one its code builds); ``fit``'s resume keeps the ones given anew,
    with a warning, its rule for every hyperparameter."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recorded(cls.__dict__["__init__"])

    def __init__(self, optimizer, last_epoch: int = -1, base_lrs=None):
        _check_fresh(type(self).__name__, last_epoch)
        self.optimizer = optimizer
        initial = optimizer.__dict__.setdefault("_initial_lrs", [group["lr"] for group in optimizer.param_groups])
        self.base_lrs = list(initial if base_lrs is None else base_lrs)
        self.last_epoch = 0
        self._update(initial=True)

    @property
    def base_lr(self) -> float:
        """The first group's base rate; setting it sets every group's (as ``optimizer.lr`` sets every group's)."""
        return self.base_lrs[0]

    @base_lr.setter
    def base_lr(self, value: float) -> None:
        self.base_lrs = [float(value)] * len(self.base_lrs)

    def _update(self, initial: bool = False, closed: bool = False) -> None:
        """Write each group's rate at ``last_epoch`` (``next_lr`` of its current rate and its base rate; ``closed``:
        ``lr_at``, the closed form, as ``SequentialLR`` restarts a schedule at its milestone)."""
        recursive = (type(self).next_lr is not LRScheduler.next_lr
                     or type(self).group_next_lr is not LRScheduler.group_next_lr)
        groups = self.optimizer.param_groups
        if callable(getattr(self, "get_lr", None)):  # a schedule written as torch's: its own rates (also where a
            # SequentialLR restarts it at last_epoch 0, as torch's calls its get_lr there)
            rates = list(self.get_lr())
            if len(rates) != len(groups):
                raise ValueError(f"{type(self).__name__}.get_lr() gave {len(rates)} rates for {len(groups)} param "
                                 f"groups; it must give one per group")
        else:
            rates = [self.group_lr_at(self.last_epoch, base, index) if closed or not recursive else
                     self.group_next_lr(group["lr"], base, self.last_epoch, initial, index)
                     for index, (group, base) in enumerate(zip(groups, self.base_lrs))]
        for index, rate in enumerate(rates):  # every rate checked before any is written, naming the schedule
            number = arguments.real(rate if getattr(rate, "shape", ()) == () else None)
            if number is None or not number >= 0 or math.isinf(number):
                raise ValueError(f"{type(self).__name__} gave param group {index} the rate {rate!r} at epoch "
                                 f"{self.last_epoch}; a rate must be a finite number >= 0 (check the schedule's "
                                 f"function or settings)")
        for index, rate in enumerate(rates):
            self.optimizer.set_group_lr(index, rate)
        self._last_lr = [group["lr"] for group in groups]

    def next_lr(self, lr: float, base_lr: float, epoch: int, initial: bool) -> float:
        """A group's rate at ``epoch`` from its current ``lr`` (PyTorch's ``get_lr``); ``initial``: the step
        its building takes."""
        return self.lr_at(epoch, base_lr)

    def group_next_lr(self, lr: float, base_lr: float, epoch: int, initial: bool, group: int) -> float:
        """``next_lr`` for param group ``group``: the same for every group but where a schedule takes one function
        per group (``MultiplicativeLR``)."""
        return self.next_lr(lr, base_lr, epoch, initial)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The rate at ``epoch`` of a group of base rate ``base_lr`` had nothing else changed it: PyTorch's closed
        form (``fit``'s resume from a run at lr 0 takes each schedule's factor from it)."""
        if callable(getattr(self, "get_lr", None)):
            raise NotImplementedError(f"{type(self).__name__} is written as torch's (get_lr()), with no closed form "
                                      f"lr_at(epoch, base_lr) of its rate at any epoch, which this needs; define "
                                      f"lr_at too")
        raise NotImplementedError(f"{type(self).__name__} defines none of lr_at(epoch, base_lr) (a closed form), "
                                  f"next_lr(lr, base_lr, epoch, initial) (a recursive one) or get_lr() (torch's: one "
                                  f"rate per param group, read from self.last_epoch, self.base_lrs and "
                                  f"self.optimizer.param_groups); a schedule must define one")

    def group_lr_at(self, epoch: int, base_lr: float, group: int) -> float:
        """``lr_at`` for param group ``group``: the same for every group but where a schedule takes one value per
        group (``LambdaLR``'s functions, ``OneCycleLR``'s ``max_lr``)."""
        return self.lr_at(epoch, base_lr)

    def step(self, epoch=None) -> float:
        refuse_epoch(type(self).__name__, epoch)
        self.last_epoch += 1
        try:
            self._update()
        except ValueError:  # (a rate refused: the schedule stays where it was, as every rate does)
            self.last_epoch -= 1
            raise
        return self.optimizer.lr

    def get_last_lr(self) -> list[float]:
        """Each param group's rate as this schedule last set it, as ``torch.optim.lr_scheduler``'s ``get_last_lr``
        (a schedule chained after it, or a rate set by hand since, changes the groups' rates, not this); a composite
        schedule's: the groups' rates after its step."""
        last = self.__dict__.get("_last_lr")
        return list(last) if last is not None else [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Where the schedule stands (epochs stepped, each group's base rate), as plain JSON-serialisable data.
        The rates themselves are the optimizer's state (PyTorch's split): load both to resume."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs), "last_lr": self.get_last_lr(),
                "settings": self.settings()}

    def settings(self) -> dict:
        """The arguments this schedule was built with, as its ``state_dict()`` saves them (functions left out)."""
        return dict(self.__dict__.get("_settings", {}))

    def _check_settings(self, state) -> None:
        """``CheckpointStateError`` where ``state`` was saved with other settings than this schedule's (unless
        ``given_settings_win``, fit's resume); a state saved before settings were saved has none to compare."""
        from unidl.errors import CheckpointStateError

        changed = self._changed_settings(state)
        if changed and not _given_settings_win:
            raise CheckpointStateError(
                f"{type(self).__name__} state was saved by a schedule built with other settings: "
                + ", ".join(f"{name}={old!r} there, {new!r} here" for name, (old, new) in changed.items())
                + "; build the schedule with the saved settings to resume it (or resume through ud.fit, where "
                  "the settings given anew win, with a warning)")

    def _changed_settings(self, state) -> dict:
        """{name: (saved, this schedule's)} for each setting that differs; {} where ``state`` holds none."""
        saved, mine = state.get("settings"), self.settings()
        if saved is None:
            return {}
        return {name: (saved.get(name), mine.get(name)) for name in sorted(set(saved) | set(mine))
                if not _same_setting(saved.get(name), mine.get(name))}

    def _warn_given_settings(self, state) -> None:
        changed = self._changed_settings(state)
        if changed:
            warnings.warn(f"resuming a {type(self).__name__} built with changed settings "
                          + ", ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in changed.items())
                          + ": the new values win", UserWarning, stacklevel=2)

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing. An older
        state's single ``base_lr`` (the first group's) loads too."""
        from unidl.errors import CheckpointStateError

        owner = type(self).__name__
        if isinstance(state, dict) and "_last_lr" in state:  # (torch.optim.lr_scheduler's own private attributes)
            raise CheckpointStateError(f"{owner} state is a torch.optim.lr_scheduler state_dict, not unidl's: load "
                                       f"unidl's own scheduler.state_dict() ('last_epoch' and 'base_lrs')")
        if not isinstance(state, dict) or set(state) - {"last_lr", "settings"} not in (
                {"last_epoch", "base_lrs"}, {"last_epoch", "base_lr"}) or not isinstance(state.get("settings", {}),
                                                                                      dict):
            raise CheckpointStateError(f"{owner} state must have the keys 'last_epoch' and 'base_lrs' (and, where "
                                       f"saved, 'last_lr' and 'settings', a dict), got "
                                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        epoch = state["last_epoch"]
        lowest = -1 if getattr(self, "_in_sequence", False) else 0  # (-1: a SequentialLR's not started yet)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < lowest:
            raise CheckpointStateError(f"{owner} state last_epoch must be an integer >= {lowest}, got {epoch!r}")
        rates = state.get("base_lrs", [state.get("base_lr")])
        if not isinstance(rates, list) or len(rates) != len(self.base_lrs) and "base_lrs" in state:
            raise CheckpointStateError(f"{owner} state holds base rates {rates!r}; its optimizer has "
                                       f"{len(self.base_lrs)} param groups")
        last = state.get("last_lr", [])  # (states written before it have none)
        if not isinstance(last, list) or last and len(last) != len(self.base_lrs):
            raise CheckpointStateError(f"{owner} state holds last rates {last!r}; its optimizer has "
                                       f"{len(self.base_lrs)} param groups")
        try:
            for rate in (*rates, *last):
                check_range(owner, "base_lr", rate)
        except ValueError as error:
            raise CheckpointStateError(str(error)) from None
        total = getattr(self, "total_steps", None)
        if total is not None and epoch > total:  # (OneCycleLR: its next step() would raise)
            raise CheckpointStateError(f"{owner} state last_epoch {epoch} is past this schedule's "
                                       f"total_steps={total}")
        self._check_settings(state)

    def load_state_dict(self, state: dict) -> None:
        """Continue the schedule from ``state`` (checked first): its position and base rates. The optimizer's
        rates are its own state, as in PyTorch (``load_checkpoint`` restores both)."""
        self.check_state_dict(state)
        self._warn_given_settings(state)
        self.last_epoch = int(state["last_epoch"])
        rates = state.get("base_lrs", [state.get("base_lr")])
        self.base_lrs = [float(rate) for rate in rates] + self.base_lrs[len(rates):]
        # get_last_lr() as the saved schedule last set them, as torch's load restores ``_last_lr`` (it gave the
        # rates of this object's building)
        self._last_lr = [float(rate) for rate in state["last_lr"]] if state.get("last_lr") else [
            group["lr"] for group in self.optimizer.param_groups]


class StepLR(LRScheduler):
    """lr *= gamma every ``step_size`` epochs (``base_lr * gamma ** (epoch // step_size)`` alone), as
    ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = arguments.positive_int("StepLR", "step_size", step_size)
        self.gamma = check_range("StepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def next_lr(self, lr, base_lr, epoch, initial):
        return lr if epoch == 0 or epoch % self.step_size else lr * self.gamma

    def lr_at(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base rate to ``eta_min`` over ``T_max`` epochs, PyTorch's recursive form (closed
    form ``eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2`` alone)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max = arguments.positive_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = check_range("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def next_lr(self, lr, base_lr, epoch, initial):
        if epoch == 0:
            return lr
        if (epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return lr + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
        return ((1 + math.cos(math.pi * epoch / self.T_max)) / (1 + math.cos(math.pi * (epoch - 1) / self.T_max))
                * (lr - self.eta_min) + self.eta_min)

    def lr_at(self, epoch, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class ExponentialLR(LRScheduler):
    """lr *= gamma every epoch (``base_lr * gamma ** epoch`` alone), as ``torch.optim.lr_scheduler.ExponentialLR``."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = check_range("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def next_lr(self, lr, base_lr, epoch, initial):
        return lr if initial else lr * self.gamma

    def lr_at(self, epoch, base_lr):
        return base_lr * self.gamma ** epoch


class MultiStepLR(LRScheduler):
    """lr *= gamma at each milestone (``base_lr * gamma ** (number of milestones <= epoch)`` alone), as
    ``torch.optim.lr_scheduler.MultiStepLR`` (a milestone listed twice counts twice; one at 0 applies as the
    schedule is built)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        given = list(milestones)
        milestones = [arguments.integer(m) for m in given]
        if not all(m is not None and m >= 0 for m in milestones):
            raise ValueError(f"MultiStepLR milestones must be non-negative integers, got {given!r}")
        self.milestones = sorted(milestones)
        self.gamma = check_range("MultiStepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def next_lr(self, lr, base_lr, epoch, initial):
        count = self.milestones.count(epoch)
        return lr * self.gamma ** count if count else lr

    def lr_at(self, epoch, base_lr):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class LinearLR(LRScheduler):
    """Linear warm-up (or decay): lr = base_lr * f, f going linearly from ``start_factor`` at epoch 0 to
    ``end_factor`` at ``total_iters`` and staying there, as ``torch.optim.lr_scheduler.LinearLR`` (whose
    defaults these are), in its recursive form. The optimizer's lr is multiplied by ``start_factor`` at once."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR start_factor must lie in (0, 1] and end_factor in [0, 1], got "
                             f"start_factor={start_factor!r}, end_factor={end_factor!r}")
        total_iters = arguments.positive_int("LinearLR", "total_iters", total_iters)
        self.start_factor, self.end_factor, self.total_iters = float(start_factor), float(end_factor), total_iters
        super().__init__(optimizer, last_epoch)

    def next_lr(self, lr, base_lr, epoch, initial):
        if epoch == 0:
            return lr * self.start_factor
        if initial or epoch > self.total_iters:
            return lr
        change = self.end_factor - self.start_factor
        return lr * (1.0 + change / (self.total_iters * self.start_factor + (epoch - 1) * change))

    def lr_at(self, epoch, base_lr):
        done = min(epoch, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done)


class ConstantLR(LRScheduler):
    """lr = base_lr * ``factor`` until ``total_iters`` epochs, then base_lr, as
    ``torch.optim.lr_scheduler.ConstantLR`` (whose defaults these are), in its recursive form. ``factor`` in
    (0, 1] (PyTorch takes 0, then divides by it at ``total_iters``)."""

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1):
        if arguments.real(factor) is None or not 0 < factor <= 1:
            raise ValueError(f"ConstantLR factor must lie in (0, 1], got {factor!r}")
        self.factor = float(factor)
        self.total_iters = arguments.positive_int("ConstantLR", "total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def next_lr(self, lr, base_lr, epoch, initial):
        if epoch == 0:
            return lr * self.factor
        return lr * (1.0 / self.factor) if epoch == self.total_iters and not initial else lr

    def lr_at(self, epoch, base_lr):
        return base_lr * (self.factor + (epoch >= self.total_iters) * (1 - self.factor))


class PolynomialLR(LRScheduler):
    """lr = base_lr * (1 - epoch / total_iters) ** power until ``total_iters`` (then 0), as
    ``torch.optim.lr_scheduler.PolynomialLR`` (whose defaults these are), in its recursive form."""

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1):
        self.total_iters = arguments.positive_int("PolynomialLR", "total_iters", total_iters)
        self.power = check_range("PolynomialLR", "power", power)
        super().__init__(optimizer, last_epoch)

    def next_lr(self, lr, base_lr, epoch, initial):
        if epoch == 0 or initial or epoch > self.total_iters:
            return lr
        return lr * ((1.0 - epoch / self.total_iters) / (1.0 - (epoch - 1) / self.total_iters)) ** self.power

    def lr_at(self, epoch, base_lr):
        return base_lr * (1.0 - min(self.total_iters, epoch) / self.total_iters) ** self.power


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing from the base rate to ``eta_min`` over ``T_0`` epochs, then restarting at the base rate,
    each period ``T_mult`` times the one before (SGDR), as ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``:
    eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2. ``step()`` counts epochs (PyTorch's
    ``step(epoch)`` of a fractional epoch is not taken: step per epoch, or use ``interval="batch"`` with ``T_0`` in
    batches)."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_0 = arguments.positive_int("CosineAnnealingWarmRestarts", "T_0", T_0)
        self.T_mult = arguments.positive_int("CosineAnnealingWarmRestarts", "T_mult", T_mult)
        self.eta_min = check_range("CosineAnnealingWarmRestarts", "eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def _position(self, epoch: int) -> tuple[int, int]:
        """(T_cur, T_i) at ``epoch``: the epochs into the current period, and its length (integers, exactly)."""
        period = self.T_0
        while epoch >= period:
            epoch -= period
            period *= self.T_mult
        return epoch, period

    def lr_at(self, epoch, base_lr):
        current, period = self._position(epoch)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * current / period)) / 2


class MultiplicativeLR(LRScheduler):
    """lr *= lr_lambda(epoch) at each step after the first, as ``torch.optim.lr_scheduler.MultiplicativeLR``
    (``lr_lambda`` a function of the epoch, or a list of one per param group); closed form: the base rate times
    every factor so far. The functions are not part of ``state_dict()``: build the schedule with the same ones."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        self.lr_lambda, self.lr_lambdas = lr_lambda, _group_functions("MultiplicativeLR", optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def group_next_lr(self, lr, base_lr, epoch, initial, group):
        return lr * float(self.lr_lambdas[group](epoch)) if epoch > 0 and not initial else lr

    def group_lr_at(self, epoch, base_lr, group):
        rate = base_lr
        for step in range(1, epoch + 1):
            rate *= float(self.lr_lambdas[group](step))
        return rate

    def lr_at(self, epoch, base_lr):
        return self.group_lr_at(epoch, base_lr, 0)


class _PerGroup(LRScheduler):
    """A schedule whose rates are given per param group (``group_lr_at``): ``lr_at`` is the first group's."""

    def lr_at(self, epoch, base_lr):
        return self.group_lr_at(epoch, base_lr, 0)


class LambdaLR(_PerGroup):
    """lr = base_lr * lr_lambda(epoch), as ``torch.optim.lr_scheduler.LambdaLR`` (set at once for epoch 0);
    ``lr_lambda`` a list of one function per param group as PyTorch's. The functions are not part of
    ``state_dict()``: build the schedule with the same ones to resume."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        self.lr_lambda, self.lr_lambdas = lr_lambda, _group_functions("LambdaLR", optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def group_lr_at(self, epoch, base_lr, group):
        return base_lr * float(self.lr_lambdas[group](epoch))


class OneCycleLR(_PerGroup):
    """The 1cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR`` with its defaults: from
    ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of ``total_steps``, then down to
    ``max_lr / div_factor / final_div_factor`` (``three_phase``: back to the initial rate first), along a
    cosine (``anneal_strategy='cos'``) or a line (``'linear'``). Step it once per batch
    (``LearningRateScheduler(schedule, interval="batch")``); stepping past ``total_steps`` is an error. The
    ``total_steps``-th step (after the last update) sets the rate PyTorch extrapolates, but at least 0 (PyTorch's
    ``'linear'`` gives a negative one there).

    The optimizer's own lr is not used (``max_lr`` sets the scale). ``cycle_momentum=True`` cycles every param
    group's ``momentum`` (or Adam's beta1) the other way, between ``max_momentum`` and ``base_momentum``, as
    PyTorch does (a param group's option, bound here: compiled steps read it from a variable, so they never
    retrace for it; each step writes that one variable). That is the default, PyTorch's: ``Adagrad``, which has
    neither, needs ``cycle_momentum=False`` (an error otherwise), as in PyTorch; an ``RMSprop`` needs momentum > 0
    in every group when built (a ``ValueError`` otherwise: a group built with momentum=0 keeps no momentum buffer).
    """

    def __init__(self, optimizer, max_lr: float, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1):
        if total_steps is None:
            counts = (arguments.integer(epochs), arguments.integer(steps_per_epoch))
            if not all(n is not None and n > 0 for n in counts):
                raise ValueError(f"OneCycleLR needs total_steps, or epochs and steps_per_epoch, as positive integers; "
                                 f"got total_steps=None, epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r}")
            total_steps = counts[0] * counts[1]
        total_steps = arguments.positive_int("OneCycleLR", "total_steps", total_steps)
        settings = self.__dict__.get("_settings")
        if settings is not None and type(self) is OneCycleLR:  # its length as total_steps, however it was given: the
            # same schedule's state loads whether built from epochs and steps_per_epoch or from total_steps
            settings.update(total_steps=total_steps, epochs=None, steps_per_epoch=None)
        if not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR pct_start must lie in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        count = len(optimizer.param_groups)
        max_lrs = _per_group("OneCycleLR", "max_lr", max_lr, count)
        highs = _per_group("OneCycleLR", "max_momentum", max_momentum, count)
        lows = _per_group("OneCycleLR", "base_momentum", base_momentum, count)
        self.momentum_key = _cycled_momentum("OneCycleLR", optimizer, cycle_momentum, highs, lows)
        self.max_lr = max_lr if isinstance(max_lr, (list, tuple)) else max_lrs[0]
        self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
        rise = float(pct_start * total_steps) - 1
        # per group: (last step of the phase, rate at its start, rate at its end); momentum's alike
        self.group_phases, self.group_momentum_phases = [], []
        for top, high, low in zip(max_lrs, highs, lows):
            initial = top / div_factor
            final = initial / final_div_factor
            if three_phase:
                phases = [(rise, initial, top), (2 * rise, top, initial), (total_steps - 1, initial, final)]
                momentum = [(rise, high, low), (2 * rise, low, high), (total_steps - 1, high, high)]
            else:
                phases = [(rise, initial, top), (total_steps - 1, top, final)]
                momentum = [(rise, high, low), (total_steps - 1, low, high)]
            self.group_phases.append(phases)
            self.group_momentum_phases.append(momentum)
        # its initial rates are the groups' base rates, for a schedule built after it too (PyTorch's initial_lr)
        optimizer.__dict__["_initial_lrs"] = [top / div_factor for top in max_lrs]
        super().__init__(optimizer, last_epoch)

    def _update(self, initial: bool = False, closed: bool = False) -> None:
        super()._update(initial, closed)
        if self.momentum_key is not None:
            _write_momentum(self.optimizer, self.momentum_key, [self._along(phases, self.last_epoch)
                                                                for phases in self.group_momentum_phases])

    def _anneal(self, start, end, fraction):
        if self.anneal_strategy == "linear":
            return (end - start) * fraction + start
        return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)

    def group_lr_at(self, epoch, base_lr, group):
        if epoch > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {epoch} times, past its total_steps={self.total_steps}")
        # the step after the last update (epoch total_steps, a loop's final scheduler.step()) extrapolates the last
        # phase as PyTorch's; 'linear' may go below 0 there (PyTorch sets that negative rate, no update reads it):
        # 0 here, a rate an optimizer takes
        return max(self._along(self.group_phases[group], epoch), 0.0)

    def _along(self, phases, epoch):
        start_step = 0.0
        for index, (end_step, start, end) in enumerate(phases):
            if epoch <= end_step or index == len(phases) - 1:
                return self._anneal(start, end, (epoch - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")


class CyclicLR(_PerGroup):
    """The cyclical learning rate policy (Smith), as ``torch.optim.lr_scheduler.CyclicLR`` with its defaults: each
    group's rate goes from ``base_lr`` up to ``max_lr`` over ``step_size_up`` steps and back over
    ``step_size_down`` (``step_size_up`` if None); the cycle's height scaled by ``mode`` ('triangular': 1,
    'triangular2': halved each cycle, 'exp_range': ``gamma ** step``) or by a function ``scale_fn`` of the cycle
    (``scale_mode='cycle'``) or the step (``'iterations'``). Step it once per batch. Building it sets each group's
    rate to ``base_lr``. ``cycle_momentum=True`` (the default, PyTorch's) cycles momentum (or Adam's beta1) the other
    way between ``max_momentum`` and ``base_momentum``, as ``OneCycleLR``. ``scale_fn`` is not part of
    ``state_dict()``: build the schedule with the same one to resume."""

    def __init__(self, optimizer, base_lr, max_lr, step_size_up: int = 2000, step_size_down: int | None = None,
                 mode: str = "triangular", gamma: float = 1.0, scale_fn=None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: float = 0.8, max_momentum: float = 0.9,
                 last_epoch: int = -1):
        _check_fresh("CyclicLR", last_epoch)
        count = len(optimizer.param_groups)
        bases, tops = _per_group("CyclicLR", "base_lr", base_lr, count), _per_group("CyclicLR", "max_lr", max_lr, count)
        up = arguments.positive_int("CyclicLR", "step_size_up", step_size_up)
        down = up if step_size_down is None else arguments.positive_int("CyclicLR", "step_size_down", step_size_down)
        self.total_size, self.step_ratio = up + down, up / (up + down)
        if scale_fn is None:
            if mode not in ("triangular", "triangular2", "exp_range"):
                raise ValueError(f"CyclicLR mode must be 'triangular', 'triangular2' or 'exp_range', got {mode!r}")
            self.gamma = check_range("CyclicLR", "gamma", gamma)
            scale_fn = {"triangular": lambda x: 1.0, "triangular2": lambda x: 1 / (2.0 ** (x - 1)),
                        "exp_range": lambda x: self.gamma ** x}[mode]
            scale_mode = "iterations" if mode == "exp_range" else "cycle"
        elif not callable(scale_fn):
            raise TypeError(f"CyclicLR scale_fn must be a function of the cycle or step, got {type(scale_fn).__name__}")
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"CyclicLR scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        self.mode, self.scale_fn, self.scale_mode, self.max_lrs = mode, scale_fn, scale_mode, tops
        self.max_momentums = _per_group("CyclicLR", "max_momentum", max_momentum, count)
        self.base_momentums = _per_group("CyclicLR", "base_momentum", base_momentum, count)
        self.momentum_key = _cycled_momentum("CyclicLR", optimizer, cycle_momentum, self.max_momentums,
                                             self.base_momentums)
        for index, rate in enumerate(bases):  # (PyTorch's: the groups start at base_lr, their initial_lr)
            optimizer.set_group_lr(index, rate)
        super().__init__(optimizer, base_lrs=bases)  # (its own base rates, whatever a schedule built before took)

    def _update(self, initial: bool = False, closed: bool = False) -> None:
        super()._update(initial, closed)
        if self.momentum_key is not None:
            scale = self._scale(self.last_epoch)
            _write_momentum(self.optimizer, self.momentum_key, [top - (top - low) * scale for low, top in
                                                                zip(self.base_momentums, self.max_momentums)])

    def _scale(self, epoch: int) -> float:
        """The height factor at ``epoch``: the triangle's (0 at the cycle's ends, 1 at its top) times ``scale_fn``."""
        cycle = math.floor(1 + epoch / self.total_size)
        x = 1.0 + epoch / self.total_size - cycle
        factor = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)
        return factor * self.scale_fn(cycle if self.scale_mode == "cycle" else epoch)

    def group_lr_at(self, epoch, base_lr, group):
        return base_lr + (self.max_lrs[group] - base_lr) * self._scale(epoch)


def _group_functions(owner: str, optimizer, lr_lambda) -> list:
    """``lr_lambda`` for each param group (one function for all, or a list of one per group, PyTorch's); a clear
    ``ValueError``/``TypeError`` naming ``owner`` otherwise."""
    count = len(optimizer.param_groups)
    functions = _one_per_group(lr_lambda, count, lambda given: (
        f"{owner} takes one lr_lambda, or one per param group: {count} groups, {given} functions"))
    for function in functions:
        if not callable(function):
            raise TypeError(f"{owner} lr_lambda must be a function epoch -> factor (or a list of one per param "
                            f"group), got {type(function).__name__}")
    return functions


def _one_per_group(value, count: int, refusal) -> list:
    """``value`` for each of ``count`` param groups: one for all, or a list of one per group (PyTorch's), else a
    ``ValueError`` of ``refusal(how many were given)``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(refusal(len(values)))
    return values


def _per_group(owner: str, name: str, value, count: int) -> list[float]:
    """``owner``'s ``name``: one number for every param group, or a list of one per group (PyTorch's)."""
    values = _one_per_group(value, count, lambda given: (
        f"{owner} {name} takes one number, or one per param group: {count} groups, {given} values {value!r}"))
    return [check_range(owner, name, v) for v in values]


def _cycled_momentum(owner: str, optimizer, cycle_momentum: bool, highs, lows) -> str | None:
    """The option a schedule's ``cycle_momentum=True`` cycles between each group's ``lows`` and ``highs``
    (``"momentum"``, or Adam's ``"betas"``: beta1), bound in every group before a step is compiled (no retrace for
    it later); None with ``cycle_momentum=False``. An optimizer with neither is a ``ValueError``, as PyTorch's, and
    so is an RMSprop group built without momentum (it keeps no momentum buffer)."""
    if not cycle_momentum:
        return None
    group = optimizer.param_groups[0]
    key = "momentum" if "momentum" in group else "betas" if "betas" in group else None
    if key is None:
        raise ValueError(f"{owner} cycle_momentum=True (the default, PyTorch's) needs an optimizer with momentum or "
                         f"betas; {type(optimizer).__name__} has neither: pass cycle_momentum=False")
    for index in range(len(optimizer.param_groups)):
        if key == "momentum":
            try:
                optimizer.check_group_change(index, "momentum", max(highs[index], lows[index]))
            except ValueError as error:
                raise ValueError(f"{owner} cycle_momentum=True: {error}; or pass cycle_momentum=False") from None
        optimizer.bind_group_option(index, key)
    return key


def _write_momentum(optimizer, key: str, values) -> None:
    """Each param group's momentum (``key`` "momentum") or beta1 (``key`` "betas") set to its value."""
    for group, momentum in zip(optimizer.param_groups, values):
        group[key] = momentum if key == "momentum" else (momentum, group["betas"][1])


class _Composite(_PerGroup):
    """Common machinery of ``ChainedScheduler`` and ``SequentialLR``: schedules of one optimizer, checked as
    PyTorch checks them, with their base rates shared and their states saved and loaded together."""

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def _take(self, schedulers, optimizer) -> None:
        owner = type(self).__name__
        schedulers = list(schedulers) if isinstance(schedulers, (list, tuple)) else schedulers
        if not isinstance(schedulers, list) or not schedulers:
            raise ValueError(f"{owner} takes a non-empty list of schedules, got {schedulers!r}")
        optimizer = schedulers[0].optimizer if optimizer is None and isinstance(schedulers[0], LRScheduler) \
            else optimizer
        for index, schedule in enumerate(schedulers):
            if not isinstance(schedule, LRScheduler) or isinstance(schedule, _Composite):
                raise TypeError(f"{owner} schedule {index} must be a unidl.optim.lr_scheduler schedule (StepLR, "
                                f"LinearLR, CosineAnnealingLR, ...; not a ChainedScheduler or SequentialLR: list "
                                f"their schedules in one), got {type(schedule).__name__}")
            if schedule.optimizer is not optimizer:
                raise ValueError(f"{owner} expects every schedule to belong to the same optimizer; schedule {index} "
                                 f"({type(schedule).__name__}) belongs to another")
        self.schedulers, self.optimizer, self.last_epoch = schedulers, optimizer, 0

    @property
    def base_lrs(self) -> list[float]:
        """The groups' base rates, which every schedule shares; setting them sets every schedule's."""
        return list(self.schedulers[0].base_lrs)

    @base_lrs.setter
    def base_lrs(self, rates) -> None:
        for schedule in self.schedulers:
            schedule.base_lrs = list(rates)

    def state_dict(self) -> dict:
        """Where the composite stands and each schedule's own state, as plain JSON-serialisable data."""
        return {"last_epoch": self.last_epoch, "schedulers": [s.state_dict() for s in self.schedulers],
                "settings": self.settings()}

    def check_state_dict(self, state) -> None:
        from unidl.errors import CheckpointStateError

        owner = type(self).__name__
        if not isinstance(state, dict) or set(state) - {"settings"} != {"last_epoch", "schedulers"} \
                or not isinstance(state.get("settings", {}), dict):
            raise CheckpointStateError(f"{owner} state must have the keys 'last_epoch' and 'schedulers' (and, where "
                                       f"saved, 'settings', a dict), got "
                                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        epoch, states = state["last_epoch"], state["schedulers"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise CheckpointStateError(f"{owner} state last_epoch must be a non-negative integer, got {epoch!r}")
        if not isinstance(states, list) or len(states) != len(self.schedulers):
            raise CheckpointStateError(f"{owner} state holds {len(states) if isinstance(states, list) else states!r}"
                                       f" schedule states; this {owner} has {len(self.schedulers)} schedules")
        for schedule, saved in zip(self.schedulers, states):
            schedule.check_state_dict(saved)
        self._check_settings(state)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (checked first): the composite's position and every schedule's."""
        self.check_state_dict(state)
        self._warn_given_settings(state)
        self.last_epoch = int(state["last_epoch"])
        for schedule, saved in zip(self.schedulers, state["schedulers"]):
            schedule.load_state_dict(saved)


class ChainedScheduler(_Composite):
    """Several schedules stepped together, as ``torch.optim.lr_scheduler.ChainedScheduler``: each ``step()`` steps
    every one in the order given, each changing the rate the one before it left (their factors multiply). Each
    schedule was built on ``optimizer`` (default: the first one's) and took its first step then."""

    def __init__(self, schedulers, optimizer=None):
        self._take(schedulers, optimizer)

    def step(self, epoch=None) -> float:
        refuse_epoch(type(self).__name__, epoch)
        self.last_epoch += 1
        for schedule in self.schedulers:
            schedule.step()
        return self.optimizer.lr

    def group_lr_at(self, epoch, base_lr, group):
        rate = base_lr
        for schedule in self.schedulers:
            rate *= schedule.group_lr_at(epoch, 1.0, group)
        return rate


class SequentialLR(_Composite):
    """One schedule after another, as ``torch.optim.lr_scheduler.SequentialLR``: ``schedulers[i]`` runs from
    ``milestones[i - 1]`` (0 for the first) and is restarted there from the base rates, at its closed form's rate
    of epoch 0 (a warm-up, then a cosine decay from the full rate). Building it puts every group back at its base
    rate and gives only the schedule of epoch 0 its first step (the others' first steps undone, as PyTorch's)."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        _check_fresh("SequentialLR", last_epoch)
        self._take(schedulers, optimizer)
        given = list(milestones) if isinstance(milestones, (list, tuple)) else milestones
        counts = [arguments.integer(m) for m in given] if isinstance(given, list) else None
        if counts is None or not all(m is not None and m >= 0 for m in counts) or counts != sorted(set(counts)):
            raise ValueError(f"SequentialLR milestones must be increasing non-negative integers, got {milestones!r}")
        if len(counts) != len(self.schedulers) - 1:
            raise ValueError(f"SequentialLR takes one milestone fewer than schedules: {len(self.schedulers)} "
                             f"schedules and {len(counts)} milestones")
        self.milestones = counts
        # the groups' initial rates (PyTorch's initial_lr: as the optimizer's first schedule found them, or a
        # OneCycleLR's max_lr / div_factor, which it writes there)
        for index, rate in enumerate(optimizer.__dict__.get("_initial_lrs", self.base_lrs)):
            optimizer.set_group_lr(index, rate)
        first = self.schedulers[bisect.bisect_right(self.milestones, 0)]
        for schedule in self.schedulers:
            schedule.last_epoch = -1 if schedule is not first else 0
            schedule._in_sequence = True  # (its state may then hold last_epoch -1)
        first._update(initial=True)

    def step(self, epoch=None) -> float:
        refuse_epoch(type(self).__name__, epoch)
        self.last_epoch += 1
        index = bisect.bisect_right(self.milestones, self.last_epoch)
        schedule = self.schedulers[index]
        if index > 0 and self.milestones[index - 1] == self.last_epoch:
            schedule.last_epoch = 0
            schedule._update(closed=True)
        else:
            schedule.step()
        return self.optimizer.lr

    def group_lr_at(self, epoch, base_lr, group):
        index = bisect.bisect_right(self.milestones, epoch)
        return self.schedulers[index].group_lr_at(epoch - (self.milestones[index - 1] if index else 0), base_lr, group)


from unidl.optim.plateau import ReduceLROnPlateau  # noqa: E402  (torch's namesake here; it builds on LRScheduler)
