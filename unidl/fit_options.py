"""Keras's ``fit`` options, turned into what unidl's one epoch loop already runs.

Losses and optimizers by name, ``fit(model, x, y)`` alongside ``fit(model, (x, y))``, ``validation_split``
(the last fraction of the arrays, before shuffling, as Keras), ``validation_freq``, ``initial_epoch``,
and per-sample weights (``sample_weight``, ``class_weight``): these travel with the targets, packed as
one extra column, so that every backend's compiled step (and Keras's own trainer) gets them through the
unchanged ``step(x, y)``; ``SampleWeightedLoss`` unpacks them inside the step. Validation weights
(``validation_data=(x, y, sample_weight)``) weight the validation loss, computed outside any step.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np

from unidl import arguments, config, ops
from unidl.nn.module import Module

# PyTorch's logit-taking losses under their PyTorch and Keras names: a unidl model outputs logits (no final
# softmax), so Keras's 'categorical_crossentropy' is here the cross-entropy of logits against one-hot targets
LOSS_NAMES = {
    "cross_entropy": "CrossEntropyLoss", "crossentropy": "CrossEntropyLoss",
    "sparse_categorical_crossentropy": "CrossEntropyLoss", "categorical_crossentropy": "CrossEntropyLoss",
    "nll": "NLLLoss", "nll_loss": "NLLLoss",
    "mse": "MSELoss", "mean_squared_error": "MSELoss", "mae": "L1Loss", "l1": "L1Loss",
    "mean_absolute_error": "L1Loss", "binary_crossentropy": "BCEWithLogitsLoss", "bce_with_logits": "BCEWithLogitsLoss",
    "bce": "BCELoss", "huber": "HuberLoss", "smooth_l1": "SmoothL1Loss", "kl_div": "KLDivLoss",
}
# Keras's default learning rates, which a user naming an optimizer as in Keras expects
# (the optimizer is unidl's, with torch.optim's rule: Keras's name and rate, not Keras's arithmetic)
OPTIMIZER_NAMES = {"sgd": ("SGD", 0.01), "adam": ("Adam", 1e-3), "adamw": ("AdamW", 1e-3),
                   "rmsprop": ("RMSprop", 1e-3), "adagrad": ("Adagrad", 1e-3), "nadam": ("NAdam", 1e-3),
                   "adamax": ("Adamax", 1e-3), "adadelta": ("Adadelta", 1e-3)}


def resolve_loss(loss):
    """A unidl loss module from ``loss``: a module, or a name in ``LOSS_NAMES`` (built with its defaults)."""
    import unidl.nn as nn

    if isinstance(loss, str):
        key = loss.lower()
        if key not in LOSS_NAMES:
            raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(sorted(LOSS_NAMES))}, "
                             f"or a ud.nn loss module")
        return getattr(nn, LOSS_NAMES[key])()
    if not isinstance(loss, Module):
        raise TypeError(f"loss must be a ud.nn loss module or a name ({', '.join(sorted(LOSS_NAMES))}); "
                        f"got {type(loss).__name__}")
    return loss


def loss_settings(loss) -> dict:
    """What makes ``loss`` compute what it computes, as plain JSON values that are the same in every process and on
    every backend: ``{'class': 'module.QualName', 'name': 'QualName', 'settings': {...}, 'state': [...]}``. The
    settings are the module's public attributes (its constructor's arguments as PyTorch's losses keep them:
    ``reduction``, ``label_smoothing``, a function it holds, ...), its buffers (a class ``weight``) and its child
    modules, so that a resume can tell a loss built with other settings from the same loss built again (``fit``'s
    ``ResumeMismatchError``); ``state`` names its buffers and children, which a resume compares even where one side
    lacks them (a buffer registered only when a weight is given). Its parameters are not settings (a
    ``LinearCrossEntropyLoss``'s ``linear``, which the optimizer may train: the trained loss and one built again are
    the same loss); the checkpoint holds their values as state, and a resume restores them. ``name`` is what a
    resume compares: the module a class is defined in is ``__main__`` in a script run directly and the script's name
    where it is imported."""
    parameters = set(getattr(loss, "_parameters", {}))
    settings = {name: _setting(value) for name, value in sorted(vars(loss).items())
                if not name.startswith("_") and not isinstance(value, Module) and name not in parameters}
    buffers, children = getattr(loss, "_buffers", {}), getattr(loss, "_modules", {})
    settings.update({name: _setting(value) for name, value in buffers.items()})
    settings.update({name: loss_settings(child) if child is not None else None for name, child in children.items()})
    return {"class": _qualified_name(type(loss)), "name": type(loss).__qualname__, "settings": settings,
            "state": sorted({*buffers, *children})}


def _qualified_name(thing) -> str:
    """``module.qualname`` of a class or function: its identity in every process (no address, unlike its repr)."""
    return f"{getattr(thing, '__module__', None)}.{getattr(thing, '__qualname__', type(thing).__qualname__)}"


def _setting(value):
    """``value`` as JSON that compares equal across processes and backends: numbers, strings, None and lists as
    they are (a float that is not finite as its name: JSON has none), a function or class by its qualified name, an
    array or tensor as its shape and the SHA-256 of its values in float32 (a class weight may be stored in float64 on
    one backend and float32 on another), anything else by its class's qualified name (its repr may hold an
    address: two instances of a callable class of the user's compare equal). A function's or class's module is kept
    beside its name, for the message only (``fit``'s ``_same_setting``: ``__main__`` run directly, the script's name
    imported)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_setting(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _setting(item) for key, item in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, functools.partial):  # (a function with settings of its own: they count too)
        return {"partial": _setting(value.func), "args": _setting(value.args), "keywords": _setting(value.keywords)}
    # a function, a class, a bound method (a lambda's name is '<lambda>': two lambdas of one module compare equal)
    if callable(value) and hasattr(value, "__qualname__"):  # (its module for the message: a resume compares the name)
        return {"function": value.__qualname__, "module": getattr(value, "__module__", None)}
    if isinstance(value, np.floating) and np.isfinite(value):  # (before arrays: a NumPy scalar has a shape too)
        # its shortest decimal in its own precision: np.float32(0.2) is 0.2, the number a user writes for it
        return float(str(value))
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return _setting(value.item())
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        import hashlib

        from unidl.tensors import to_numpy

        array = np.asarray(to_numpy(value))
        if array.dtype.kind in "fc":
            array = array.astype(np.float32)
        return {"shape": list(array.shape), "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
    return {"object": type(value).__qualname__, "module": type(value).__module__}


def check_reduced_loss(loss_fn, where: str) -> None:
    """``ValueError`` for a loss module that returns one loss per sample (``reduction="none"``): training
    differentiates one number, and each framework would refuse it in its own words (Keras's trainer silently
    averages it). Raised before any step, on every backend."""
    if getattr(loss_fn, "reduction", None) == "none":
        raise ValueError(f"{where} needs a loss that returns one number, but {type(loss_fn).__name__}(reduction="
                         f"'none') returns one per sample; use reduction='mean' or 'sum' (or reduce it yourself in "
                         f"a ud.function training loop)")


def resolve_optimizer(optimizer, model):
    """A unidl optimizer from ``optimizer``: an optimizer, or a name in ``OPTIMIZER_NAMES``, built over
    ``model.parameters()`` with Keras's default learning rate for it."""
    import unidl.optim as optim

    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid names: {', '.join(sorted(OPTIMIZER_NAMES))}, "
                             f"or a ud.optim optimizer")
        name, lr = OPTIMIZER_NAMES[key]
        return getattr(optim, name)(model.parameters(), lr=lr)
    if not isinstance(optimizer, optim.Optimizer):
        raise TypeError(f"optimizer must be a ud.optim optimizer or a name ({', '.join(sorted(OPTIMIZER_NAMES))}); "
                        f"got {type(optimizer).__name__}")
    return optimizer


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def data_of(data, y, what: str = "x"):
    """``(x, y)`` from Keras's ``x, y`` or unidl's ``(x, y)``; a loader or pipeline is returned as it is."""
    if y is not None:
        if not _is_array(data):
            raise TypeError(f"{what} and y: with y given, {what} must be an array (Keras's fit(model, x, y)); "
                            f"got {type(data).__name__}")
        return data, y
    if _is_array(data):
        raise ValueError(f"{what} is an array but y is missing: pass fit(model, x, y, ...) or fit(model, (x, y), ...)")
    if data is None:
        raise TypeError(f"no training data: pass fit(model, x, y, ...) or fit(model, (x, y), ...) or a loader")
    return data


def arrays_of(data):
    """``(x, y)`` as NumPy arrays when ``data`` is a pair of arrays (or tensors), else None."""
    from unidl.tensors import to_numpy

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_array(v) for v in data):
        return tuple(np.asarray(to_numpy(v)) for v in data)
    return None


def split_validation(data, validation_split: float, sample_weight=None):
    """Keras's ``validation_split``: the last ``validation_split`` of the arrays, taken before shuffling,
    validate; the rest (and its sample weights) train. Returns (train data, weights, validation data)."""
    fraction = arguments.real(validation_split)  # (a NumPy float too: it was refused as not a fraction)
    if fraction is None or not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_split must be a fraction in [0, 1), got {validation_split!r}")
    validation_split = fraction
    if not validation_split:
        return data, sample_weight, None
    arrays = arrays_of(data)
    if arrays is None:
        raise ValueError("validation_split needs the training data as arrays (x, y); with a loader or a "
                         "dataset pass validation_data instead")
    x, y = arrays
    # Keras's rule: the split point is int(n * (1 - validation_split))
    cut = int(math.floor(len(x) * (1.0 - validation_split)))
    if cut <= 0 or cut >= len(x):
        raise ValueError(f"validation_split={validation_split} of {len(x)} samples leaves "
                         f"{cut} to train and {len(x) - cut} to validate; both need at least one")
    if sample_weight is None:
        return (x[:cut], y[:cut]), None, (x[cut:], y[cut:])
    # as Keras, the held-out samples keep their sample weights (class_weight stays the training data's)
    weights = check_sample_weight(sample_weight, len(y))
    return (x[:cut], y[:cut]), weights[:cut], (x[cut:], y[cut:], weights[cut:])


def check_sample_weight(sample_weight, count: int, what: str = "sample_weight") -> np.ndarray:
    """``sample_weight`` as a float64 array of shape (count,), or a ValueError naming the shapes."""
    from unidl.tensors import to_numpy

    given = np.asarray(to_numpy(sample_weight), dtype=np.float64)
    if given.shape != (count,):
        raise ValueError(f"{what} must hold one weight per sample, shape ({count},); got {given.shape}")
    return given


def weighted_validation(validation_data):
    """Keras's ``validation_data=(x, y, sample_weight)``: ``((x, y), weights)``; other forms (``(x, y)``, a
    loader, ``(x, y, None)``) come back as ``(data, None)``."""
    if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 3):
        return validation_data, None
    x, y, sample_weight = validation_data
    if not (_is_array(x) and _is_array(y)):
        raise TypeError(f"validation_data=(x, y, sample_weight) needs x and y as arrays; got "
                        f"{type(x).__name__} and {type(y).__name__}")
    if sample_weight is None:
        return (x, y), None
    return (x, y), check_sample_weight(sample_weight, int(tuple(y.shape)[0]), "validation_data's sample_weight")


def sample_weights(data, sample_weight, class_weight):
    """Per-sample weights (N,) from ``sample_weight`` and/or ``class_weight`` ({class: weight}, applied to the
    classes ``class_labels`` reads, as Keras does; multiplied when both are given), or None."""
    if sample_weight is None and class_weight is None:
        return None
    arrays = arrays_of(data)
    if arrays is None:
        raise ValueError("sample_weight and class_weight need the training data as arrays (x, y) "
                         "(Keras's rule); got a loader or dataset")
    x, y = arrays
    weights = np.ones(len(y), dtype=np.float64)
    if sample_weight is not None:
        weights = weights * check_sample_weight(sample_weight, len(y))
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise TypeError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
        labels = class_labels(y)
        missing = sorted(set(np.unique(labels).tolist()) - set(class_weight))
        if missing:
            raise ValueError(f"class_weight has no weight for classes {missing}; give one for every class "
                             f"in the labels")
        weights = weights * np.array([float(class_weight[int(c)]) for c in labels])
    return weights


def class_labels(y: np.ndarray) -> np.ndarray:
    """The class of each sample, as Keras's ``class_weight`` reads it: the argmax of one-hot targets (N, C), else
    the label (N,) or (N, 1), a float one rounded (0/1 targets of a binary cross-entropy: Keras's ``round(y)``)."""
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(1)
    if y.dtype.kind not in "biuf" or not (y.ndim == 1 or y.shape[1:] == (1,)):
        raise ValueError(f"class_weight needs labels (N,) or (N, 1) (integers, or floats such as the 0/1 targets of "
                         f"a binary cross-entropy, read as round(y)) or one-hot targets (N, C); got targets of "
                         f"shape {y.shape} and dtype {y.dtype}")
    labels = y.reshape(len(y))
    if y.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise ValueError("class_weight reads each sample's class from its target, but the targets hold NaN or "
                             "infinite values")
        labels = np.round(labels)
    return labels.astype(np.int64)


def pack_targets(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``y`` flattened per sample with the sample's weight appended: (N, size + 1), float: float64 for float64
    targets and wherever the weights are float64 (``ud.use_dtype("float64")``, whose training must weight each loss
    by the float64 weight that ``evaluate`` and a float64 PyTorch loop use, not by its float32 rounding), float32
    otherwise."""
    dtype = np.float64 if y.dtype == np.float64 or config.get_dtype() == "float64" else np.float32
    exact = 2 ** 53 if dtype == np.float64 else 2 ** 24
    if y.dtype.kind in "iub" and y.size and np.abs(y).max() >= exact:
        raise ValueError(f"sample weights travel with integer labels as {np.dtype(dtype).name}, exact below "
                         f"2**{int(math.log2(exact))}; labels up to {np.abs(y).max()} would not be")
    return np.concatenate([y.reshape(len(y), -1).astype(dtype), weights.reshape(-1, 1).astype(dtype)], axis=1)


class PackedTargets:
    """How targets were packed with their weights: ``unpack(packed) -> (target, weight)`` in ``ud.ops``."""

    def __init__(self, target_shape: tuple, target_dtype: str):
        self.target_shape, self.target_dtype = tuple(target_shape), str(target_dtype)
        self.size = int(np.prod(self.target_shape)) if self.target_shape else 1

    def unpack(self, packed):
        target = ops.reshape(packed[:, :self.size], (-1, *self.target_shape))
        return ops.cast(target, self.target_dtype), packed[:, self.size]


def per_sample_loss(loss):
    """A copy of ``loss`` with ``reduction='none'``: one loss per sample (per element for element-wise losses)."""
    if not hasattr(loss, "reduction"):
        raise ValueError(f"sample weights need a loss with reduction='none' (per-sample losses); "
                         f"{type(loss).__name__} has no reduction")
    per_sample = copy.copy(loss)
    object.__setattr__(per_sample, "reduction", "none")
    return per_sample


def weighted_loss(loss, per_sample, outputs, target, weight):
    """``loss`` of a batch whose samples carry weights (N,): each sample's losses (``per_sample``, its copy with
    reduction='none') times the sample's weight, then ``loss``'s own reduction: 'sum' their sum, 'batchmean' that
    over the batch size, 'mean' that over what the loss's mean divides its losses' sum by (their number; for
    ``CrossEntropyLoss`` and ``NLLLoss`` of labels the summed class weights of the labels counted, PyTorch's:
    ``_WeightedClassLoss.mean_divisor``). Weights of one give the loss as it is, whatever its options; for a
    'mean' loss of one value a sample it is Keras's weighted loss, ``sum_i w_i * loss_i / n``."""
    losses = per_sample(outputs, target)
    rank = len(tuple(losses.shape))
    weight = ops.reshape(ops.cast_like(weight, losses), (-1,) + (1,) * (rank - 1))
    total = ops.sum(losses * weight)
    reduction = loss.reduction
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / ops.sum(ops.zeros_like(weight) + 1.0)
    divisor = getattr(loss, "mean_divisor", None)
    return total / (divisor(target, losses) if divisor is not None else ops.sum(ops.zeros_like(losses) + 1.0))


class SampleWeightedLoss(Module):
    """``loss`` weighted per sample (``weighted_loss``: each sample's losses times its weight, then the loss's own
    reduction). Targets arrive packed with their weights (``pack_targets``), so the weights reach the step's
    graph on every backend."""

    def __init__(self, loss, packing: PackedTargets):
        super().__init__()
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "per_sample", per_sample_loss(loss))
        object.__setattr__(self, "packing", packing)

    def forward(self, outputs, packed):
        target, weight = self.packing.unpack(packed)
        return weighted_loss(self.loss, self.per_sample, outputs, target, weight)


def trained_loss_parameters(model, loss_fn, optimizer) -> tuple:
    """The parameters of the loss module that ``optimizer`` trains and ``model`` does not own (a learned temperature,
    ``LinearCrossEntropyLoss``'s ``linear``): a trainer or data-parallel wrapper that holds the model's alone (Keras's
    trainer, torch's DDP) must be handed them too. ``fit``'s sample or class weights wrap the user's loss
    (``SampleWeightedLoss``), holding it outside its modules: its parameters are the user's loss's."""
    owned = {id(p) for p in model.parameters()}
    trained = {id(p) for p in getattr(optimizer, "params", ())}
    loss_fn = loss_fn.loss if isinstance(loss_fn, SampleWeightedLoss) else loss_fn
    parameters = loss_fn.parameters() if hasattr(loss_fn, "parameters") else ()
    return tuple(p for p in parameters if id(p) in trained and id(p) not in owned)


def rank_0_state(model, loss_fn, optimizer) -> list:
    """What a data-parallel step broadcasts from rank 0 when it is built, so that every rank starts alike: the
    parameters and buffers of ``model`` (a unidl module: ``train_step`` refuses anything else) and the loss's own
    parameters that ``optimizer`` trains (``trained_loss_parameters``), in one broadcast, as torch's DDP over both
    does."""
    return [*model.parameters(), *model.buffers(), *trained_loss_parameters(model, loss_fn, optimizer)]


def check_verbose(verbose) -> int:
    """``fit``'s ``verbose``: 0, 1, 2 (True and False as 1 and 0), or Keras's default 'auto', which is 1; else a
    ``ValueError`` naming the values."""
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or (isinstance(verbose, (int, np.integer)) and verbose in (0, 1, 2)):
        return int(verbose)
    raise ValueError(f"fit verbose must be 0 (silent), 1 (a progress bar on a terminal, a line per epoch otherwise), "
                     f"2 (a line per epoch) or 'auto' (Keras's default: 1); got {verbose!r}")


def check_validation_freq(validation_freq):
    """Keras's ``validation_freq``: an int N (every N-th epoch) or a collection of 1-based epochs."""
    if isinstance(validation_freq, int) and not isinstance(validation_freq, bool):
        if validation_freq < 1:
            raise ValueError(f"validation_freq must be a positive integer or a list of epochs, got {validation_freq!r}")
        return validation_freq
    if isinstance(validation_freq, (list, tuple, set, range)) and all(
            isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in validation_freq):
        return frozenset(validation_freq)
    raise ValueError(f"validation_freq must be a positive integer or a list of 1-based epochs, got {validation_freq!r}")


def validates_after(epoch: int, validation_freq) -> bool:
    """Whether validation runs after 0-based ``epoch`` (Keras: epoch + 1 divisible by N, or listed)."""
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq


def check_initial_epoch(initial_epoch, epochs: int, resume_from) -> int:
    """Keras's ``initial_epoch``: the epoch to start at (History and schedules count from it)."""
    if not isinstance(initial_epoch, int) or isinstance(initial_epoch, bool) or initial_epoch < 0:
        raise ValueError(f"initial_epoch must be a non-negative integer, got {initial_epoch!r}")
    if initial_epoch and resume_from is not None:
        raise ValueError("pass initial_epoch or resume_from, not both: a resumed run continues from its "
                         "checkpoint's epoch")
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch={initial_epoch} is past epochs={epochs}: epochs is the index of the "
                         f"last epoch (Keras's meaning), not a count from initial_epoch")
    return initial_epoch


class StepInputs:
    """``fit``'s ``step_inputs``: the extra forward inputs of each training step, ``model(x, *inputs)``, from the
    user's ``step_inputs(epoch, step)`` (``step``: the batch's 0-based index in its epoch, counting the batches a
    resumed run trained before its checkpoint, so a resumed fit asks for the same ``(epoch, step)`` pairs as the
    uninterrupted one). Its value is checked as it comes, before the step that uses it; the first step's is asked
    for before training (``prepare``) and kept for that step, so every step calls the user's function once, in
    step order (a function that draws from a random generator draws the same sequence as a hand-written loop)."""

    def __init__(self, step_inputs, backend):
        if not callable(step_inputs):
            raise TypeError(f"fit's step_inputs must be a function (epoch, step) -> the extra inputs of that "
                            f"training step (a number, an array or tensor, or a tuple of them: model(x, *inputs)); "
                            f"got {type(step_inputs).__name__}")
        self._function, self._backend = step_inputs, backend
        self._ahead = None  # (epoch, step, inputs) asked for before training

    def prepare(self, epoch: int, step: int) -> None:
        """Ask for the inputs of the first step to train, ``(epoch, step)``, now: a bad value is a ``TypeError``
        before any training; that step then uses them without asking again."""
        self._ahead = (epoch, step, self._ask(epoch, step))

    def __call__(self, epoch: int, step: int) -> tuple:
        """The extra inputs of step ``step`` of ``epoch``, as a tuple."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[:2] == (epoch, step):
            return ahead[2]
        return self._ask(epoch, step)

    def _ask(self, epoch: int, step: int) -> tuple:
        value = self._function(epoch, step)
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if not self._valid(item):
                raise TypeError(f"fit's step_inputs({epoch}, {step}) returned {_describe(value)}: it must return "
                                f"the extra forward inputs of that step, a number, a NumPy array or "
                                f"{self._backend.name} tensor, or a tuple of them (model(x, *inputs)); a list is "
                                f"ambiguous: np.asarray(it) for one array, tuple(it) for several inputs")
        return values

    def _valid(self, item) -> bool:
        if isinstance(item, (bool, int, float, np.bool_, np.integer, np.floating)):
            return True
        if isinstance(item, np.ndarray):
            return item.dtype.kind in "biuf"
        return self._backend.is_tensor(item)


def _describe(value) -> str:
    """A short description of a value for an error message: its type, and its repr where that is short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 60 else f"a {type(value).__name__}"
