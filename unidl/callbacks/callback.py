"""``Callback``: hooks that ``ud.fit`` calls around epochs and batches, the same on every backend."""

from __future__ import annotations

import math

import numpy as np

from unidl import arguments

class Callback:
    """Override any hook; ``fit`` calls them with Keras's arguments. ``logs`` holds the epoch's metrics ('loss',
    'accuracy', 'val_loss', ...) at an epoch's end, the running means of the epoch so far after a batch, the last
    epoch's logs at ``on_train_end``, and ``{}`` at a begin hook. ``on_train_batch_begin``/``on_train_batch_end``
    (Keras's names, which call ``on_batch_begin``/``on_batch_end``) run around every training batch, and
    ``on_test_begin``/``on_test_end``/``on_test_batch_begin``/``on_test_batch_end`` around ``fit``'s validation
    (``on_test_end`` gets its logs without the 'val_' prefix, as Keras's). Keras's ``on_predict_*`` hooks are never
    called (``fit`` does not predict): a callback defining one is a ``TypeError`` as ``fit`` starts.
    ``self.trainer`` (set by ``fit``) gives access to ``model``, ``optimizer``, ``loader`` and ``stop()``
    (``stop(after_batch=True)`` in ``on_batch_end`` ends the epoch after that batch)."""

    trainer = None

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_test_begin(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


#: Keras's hooks that ``fit`` never calls (it does not predict): a callback defining one is refused, not ignored
NEVER_CALLED = ("on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end")
#: the older name of a hook, which a callback not derived from ``Callback`` may define instead (Keras's aliases)
_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def hook(callback, name: str):
    """``callback``'s hook ``name``: its method, else (an object not derived from ``Callback``, which ``fit`` takes
    with ``on_epoch_end`` alone) the method of Keras's older name for it, else one that does nothing."""
    method = getattr(callback, name, None) or getattr(callback, _ALIASES.get(name, ""), None)
    return method if method is not None else (lambda *args, **kwargs: None)


def resolve_mode(owner: str, monitor: str, mode: str) -> str:
    """'min' or 'max' for ``mode``; 'auto' as Keras 3's callbacks decide: 'min' for the loss, else the direction of
    the metric the name is logged for (``Metric.direction``: up for accuracy, top-k, precision, recall, F1 and
    AUC, down for MAE and MSE; 'val_' and 'weighted_' prefixes aside). A name ``ud.metrics`` does not know stays
    'auto' until the first comparison (``settle_mode``: the run's metric of that name decides, or it is an error;
    any name but one holding 'acc' was taken as 'min': F1 and AUC were minimized)."""
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"{owner} monitor must be the name of a logged value ('val_loss', 'accuracy', ...), got "
                        f"{type(monitor).__name__} {monitor!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner} mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    from unidl import metrics

    name = _metric_name(monitor)
    if name == "loss":
        return "min"
    try:
        direction = metrics.get(name).direction
    except ValueError:
        return "auto"
    return "auto" if direction is None else _mode_of(direction)


def _mode_of(direction: str) -> str:
    """The mode of a metric's direction: 'max' for "up", 'min' for "down"."""
    return "max" if direction == "up" else "min"


def _metric_name(monitor: str) -> str:
    return monitor.removeprefix("val_").removeprefix("weighted_")


def settle_mode(callback, owner: str) -> None:
    """Resolve ``callback.mode`` left 'auto' by ``resolve_mode`` at its first comparison, as Keras 3: by the
    direction of the metric of the run (``trainer.metrics``) logged under the monitored name (a renamed one, a
    user's ``Metric`` with ``direction``), else a ``ValueError`` asking for 'min' or 'max'; ``callback.best``, still
    an infinity, becomes the one of that mode."""
    if callback.mode != "auto":
        return
    name = _metric_name(callback.monitor)
    directions = [m.direction for m in getattr(getattr(callback, "trainer", None), "metrics", ()) if m.name == name]
    if not directions or directions[0] is None:
        raise ValueError(f"{owner} cannot tell whether {callback.monitor!r} improves upwards or downwards (mode='auto' "
                         f"knows the loss and the direction of the run's metrics); pass mode='max' or mode='min'")
    callback.mode = _mode_of(directions[0])
    if math.isinf(callback.best):
        callback.best = -math.inf if callback.mode == "max" else math.inf


def improved(mode: str, value: float, reference: float, min_delta: float = 0.0) -> bool:
    """Keras 3's test of an improvement (``MonitorCallback._is_improvement``): ``value + min_delta < reference``
    in mode 'min', ``value - min_delta > reference`` in 'max', the shift in float64 and the comparison in float32,
    as Keras's ``keras.ops.less``/``greater`` compare Python floats in its float32 floatx. So an improvement of
    exactly ``min_delta`` (0.8 to 0.7 by 0.1) is none, nor is one below float32's resolution (a float64
    ``value < reference - min_delta`` counted both)."""
    if mode == "max":
        return bool(np.float32(value - min_delta) > np.float32(reference))
    return bool(np.float32(value + min_delta) < np.float32(reference))


def check_verbose(owner: str, verbose) -> int:
    """Keras's ``verbose`` of a callback: 0 silent, 1 (or more; True) a line when it acts; else a ``ValueError``."""
    if isinstance(verbose, bool):
        return int(verbose)
    checked = arguments.integer(verbose)
    if checked is None or checked < 0:
        raise ValueError(f"{owner} verbose must be 0 (silent) or 1 (a line when it acts), got {verbose!r}")
    return checked


def unsupported(owner: str, given: dict, defaults: dict, why: str) -> None:
    """A ``ValueError`` for a Keras argument given a value unidl cannot honour (its Keras default is accepted, so
    that Keras's calls run as they are): it names the argument, its value and what is supported."""
    for name, value in given.items():
        if value != defaults[name]:
            raise ValueError(f"{owner} {name}={value!r} is Keras's, which unidl does not implement ({why}); "
                             f"leave it at {defaults[name]!r}")


def monitored(callback, owner: str, epoch: int, logs) -> float | None:
    """``logs[callback.monitor]`` at the end of ``epoch``; None for a 'val_*' name in an epoch that ``fit`` does
    not validate (``validation_freq`` skips it, validating others: the callback skips the epoch, as Keras's do);
    else a ``KeyError`` naming the logs ``fit`` reports (no validation data, or a name no log has)."""
    monitor, logs = callback.monitor, logs or {}
    if monitor in logs:
        return float(logs[monitor])
    trainer = getattr(callback, "trainer", None)
    if (monitor.startswith("val_") and getattr(trainer, "validation_freq", None) is not None
            and not trainer.validates(epoch)):
        return None
    hint = "" if any(key.startswith("val_") for key in logs) else "; pass validation_data for 'val_*' metrics"
    raise KeyError(f"{owner} monitors {monitor!r}, but fit reports only {sorted(logs)}{hint}")


def check_monitor(callback, owner: str) -> None:
    """At ``on_train_begin``: a ``KeyError`` naming the logs ``fit`` will report where ``callback.monitor`` is none of
    them ('val_acc', or 'val_loss' without validation data), before any training (it was raised after the first
    epoch trained). No check where the names are not known before the first epoch: the trainer does not say them
    (``trainer.logged_names_for``), or a callback before this one, not one of unidl's, may add its own."""
    names = getattr(getattr(callback, "trainer", None), "logged_names_for", lambda callback: None)(callback)
    if names is None or callback.monitor in names:
        return
    hint = "" if any(name.startswith("val_") for name in names) else "; pass validation_data for 'val_*' metrics"
    raise KeyError(f"{owner} monitors {callback.monitor!r}, but fit reports only {sorted(names)}{hint}")


def overrides(callback, name: str) -> bool:
    """Whether ``callback`` has a hook ``name`` of its own (set on its object, or a class's method): not a base
    class's no-op placeholder, unidl's ``Callback``'s or Keras's ``keras.callbacks.Callback``'s (a Keras callback
    object was refused for predict hooks its user never wrote)."""
    if name in getattr(callback, "__dict__", {}):
        return True
    owner = next((k for k in type(callback).__mro__ if name in vars(k)), None)
    return owner is not None and owner is not Callback and not (
        owner.__name__ == "Callback" and owner.__module__.split(".")[0] == "keras")


def as_callbacks(callbacks) -> list:
    """``fit``'s ``callbacks`` as objects with every hook: callbacks as they are, and a plain function
    ``fn(epoch, logs)`` as a ``LambdaCallback`` calling it at the end of every epoch. One callback (or function)
    not in a list is a list of one, as Keras's ``fit`` takes it; a callback class is a ``TypeError`` asking for an
    object of it."""
    from unidl.callbacks.lambda_callback import LambdaCallback

    if isinstance(callbacks, type) or hasattr(callbacks, "on_epoch_end") or callable(callbacks):
        callbacks = [callbacks]
    result = []
    for callback in callbacks or ():
        if isinstance(callback, type):
            raise TypeError(f"callbacks hold the class {callback.__name__}, not a callback: pass an object of it, "
                            f"{callback.__name__}(...)")
        if isinstance(callback, Callback) or hasattr(callback, "on_epoch_end"):
            defined = [name for name in NEVER_CALLED if overrides(callback, name)]
            if defined:
                raise TypeError(f"callback {type(callback).__name__} defines {', '.join(defined)}: Keras's hooks of "
                                f"predict, which ud.fit never calls (it does not predict); fit calls on_train_*, "
                                f"on_epoch_*, on_train_batch_* (on_batch_*) and on_test_* (around validation)")
            result.append(callback)
        elif callable(callback):
            result.append(LambdaCallback(on_epoch_end=callback))
        else:
            raise TypeError(f"callbacks must be ud.callbacks.Callback objects or functions fn(epoch, logs); "
                            f"got {type(callback).__name__}")
    return result
