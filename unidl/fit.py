"""``fit``, ``evaluate`` and ``predict``: whole training jobs, the same call on every backend.

The epoch loop, callbacks, progress and metrics live here; each training step
is the backend's own: eager on torch, the static ``tf.function`` train step on
tensorflow, and Keras's own trainer on keras (the backend's ``fit_epoch`` hook:
Keras's ``Model.train_step`` as one graph on Keras-TensorFlow, ``Model.fit``
on Keras's other frameworks).
"""

from __future__ import annotations

import math

import numpy as np

from unidl import arguments, config, fit_options, input_checks
from unidl.callbacks.callback import as_callbacks, hook, overrides
from unidl.callbacks.checkpoint import Checkpoint
from unidl.callbacks.terminate_on_nan import TerminateOnNaN
from unidl.data import DataLoader, Epoch, TensorDataset
from unidl.data.dataloader import empty_shares_allowed
from unidl.data.epoch import xy
from unidl.data.pool import ctrl_c_noted
from unidl.distributed import process_group
from unidl.errors import CheckpointStateError, DtypeMismatchError, NonFiniteLossError, ShapeMismatchError
from unidl.nn.loss import CrossEntropyLoss
from unidl.nn.module import require_trainable
from unidl.metrics.metric import check_class_labels
from unidl.metrics.probe import accumulator_for, first_sample, output_shape
from unidl.nested import tree_map
from unidl.progress import Progress
from unidl.tensors import to_numpy
from unidl.training import (TrainStep, check_accumulate, check_loss_scale_settings, check_optimizer_trains,
                            check_same_backend, claim_window, expect_accumulate, expect_precision, resuming_with,
                            window_micro_steps)
from unidl.precision import precision_policy

#: the keys of ``History.state_dict()``
_HISTORY_STATE_KEYS = ("history", "epoch", "logged_epochs")
KERAS_BATCH_SIZE = 32  # Model.fit's batch size for arrays given without one


class History:
    """Per-epoch logs of a ``fit`` run: ``history.history['loss']`` is the list of epoch losses. As Keras's History,
    ``epoch`` lists the 0-based index of each epoch logged, ``params`` holds fit's ``{"verbose", "epochs",
    "steps"}`` (steps: batches per epoch, None where the data does not know them) and ``model`` the model trained.
    ``logged_epochs[key]`` lists the epochs whose logs held ``key`` (the validated ones for 'val_loss' under
    ``validation_freq``), so that a plot puts each value at its epoch. ``state_dict()`` is all three as JSON data,
    which ``History.from_state_dict``, ``ud.plot_history`` and ``unidl plot`` read back; a checkpoint holds them too.

    Args:
        history: the logs, ``{name: [value per epoch it was logged at]}``.
        epoch: the epochs logged; default ``0 .. len(history['loss']) - 1``.
        logged_epochs: ``{name: [epoch of each value]}``; default: every epoch for a name with a value per epoch,
            nothing for the others (a plain dict of logs does not say where a shorter list's values belong).

    A name without ``logged_epochs`` (its epochs unknown: a checkpoint written before they were saved, a plain dict
    of logs) stays without them as values are appended, so that the History stays one that ``from_state_dict`` and a
    resume read back; ``plot_history`` then draws its values at the first epochs.
    """

    def __init__(self, history: dict | None = None, epoch: list | None = None, logged_epochs: dict | None = None):
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.epoch = list(epoch) if epoch is not None else list(range(self.epochs))
        self.params, self.model = {}, None
        if logged_epochs is not None and not isinstance(logged_epochs, dict):
            raise TypeError(f"History: logged_epochs must map names to lists of epochs, got {logged_epochs!r}")
        if logged_epochs is None:
            logged_epochs = {key: self.epoch for key, values in self.history.items() if len(values) == len(self.epoch)}
        self.logged_epochs = {key: list(epochs) for key, epochs in logged_epochs.items()}
        for key, epochs in self.logged_epochs.items():
            if len(epochs) != len(self.history.get(key, ())) or not set(epochs) <= set(self.epoch):
                raise ValueError(f"History: logged_epochs[{key!r}] must list one epoch of History.epoch per value "
                                 f"of history[{key!r}]; got {epochs!r} for {len(self.history.get(key, ()))} values "
                                 f"and epochs {self.epoch!r}")

    @classmethod
    def from_state_dict(cls, state: dict) -> History:
        """The History that ``state_dict()`` gave (read back from JSON, say).

        Args:
            state: ``History.state_dict()``'s dict of 'history', 'epoch' and 'logged_epochs'.
        """
        if not isinstance(state, dict) or set(state) != set(_HISTORY_STATE_KEYS):
            raise ValueError(f"History.from_state_dict takes History.state_dict()'s dict of "
                             f"{list(_HISTORY_STATE_KEYS)}, got {state!r:.200}")
        return cls(state["history"], state["epoch"], state["logged_epochs"])

    def state_dict(self) -> dict:
        """The logs, the epochs logged and each log's epochs, as plain JSON-serialisable data:
        ``json.dump(history.state_dict(), file)`` keeps where each value belongs, which ``.history`` alone does not
        (a 'val_loss' under ``validation_freq`` has fewer values than epochs)."""
        return {"history": self.as_dict(), "epoch": list(self.epoch),
                "logged_epochs": {key: list(epochs) for key, epochs in self.logged_epochs.items()}}

    last_logs = None  # the logs of the last epoch appended (fit's on_train_end hands them to the callbacks)

    def append(self, logs: dict, epoch: int | None = None) -> None:
        epoch = len(self.epoch) if epoch is None else epoch
        for key, value in logs.items():
            values = self.history.setdefault(key, [])
            if key in self.logged_epochs or not values:  # (a log whose earlier epochs are unknown keeps them unknown)
                self.logged_epochs.setdefault(key, []).append(epoch)
            values.append(value)
        self.epoch.append(epoch)
        self.last_logs = dict(logs)

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))

    def __getitem__(self, key):
        return self.history[key]

    def as_dict(self) -> dict:
        return {k: list(v) for k, v in self.history.items()}

    def __repr__(self):
        return f"History({self.history})"


class _EndEpoch(Exception):
    """Raised through the backend's epoch loop once a callback called ``trainer.stop(after_batch=True)``."""

    def __init__(self, logs: dict):
        super().__init__("a callback ended the epoch")
        self.logs = dict(logs)


class Trainer:
    """What callbacks see during ``fit``: the model, optimizer, loader, position, and ``stop()``."""

    def __init__(self, model, optimizer, loader, history):
        self.model, self.optimizer, self.loader, self.history = model, optimizer, loader, history
        self.epoch = 0
        self.global_step = 0
        self.stopped = False
        self.end_epoch = False  # stop(after_batch=True) was called during the current epoch
        self._epoch_start = (0, 0)  # loader (epoch, position) when the current epoch began
        # micro-steps in the optimizer's accumulation window after the last batch (fit's accumulate): 0 after a batch
        # that updated the weights (``updated``), which a schedule stepped per update waits for
        self.accumulate, self.micro_steps = 1, 0
        self.metrics = []  # the run's ud.metrics objects, training's and validation's
        self._trained_in_epoch = 0
        self.epoch_totals = None  # () -> the running sums of the epoch loop, for a checkpoint (set by fit)
        # the part of the epoch in progress that the loop's own sums do not hold (a checkpoint's totals, in a
        # data-parallel job: the job's), as float64 arrays [loss sum, samples, *statistics]; None otherwise
        self.carried_totals = None
        self.validation_freq = None  # fit's validation_freq where it has validation data, else None

    def logged_names_for(self, callback) -> set | None:
        """The names an epoch's logs will hold when they reach ``callback``'s ``on_epoch_end`` (``log_names``, set by
        ``fit``: the loss, 'lr', the metrics, and 'val_' ones with validation data); None where they are not known
        before the first epoch: a callback before it that is not one of unidl's (a function, a ``LambdaCallback``,
        a user's class) may add its own."""
        from unidl.callbacks.lambda_callback import LambdaCallback

        names = getattr(self, "log_names", None)
        for other in getattr(self, "callbacks", ()):
            if other is callback:
                return names
            if isinstance(other, LambdaCallback) or not type(other).__module__.startswith("unidl.callbacks."):
                return None
        return names

    def validates(self, epoch: int) -> bool:
        """Whether ``fit`` validates after 0-based ``epoch``: that epoch's logs hold the 'val_*' values (an epoch
        that ``validation_freq`` skips has none)."""
        return self.validation_freq is not None and fit_options.validates_after(epoch, self.validation_freq)

    @property
    def updated(self) -> bool:
        """Whether the last batch updated the weights: every batch, and every N-th of ``fit(accumulate=N)``."""
        return self.micro_steps == 0

    def job_totals(self) -> dict | None:
        """The running totals of the epoch in progress over the whole job, ``{'trainer': loop, 'values': [loss
        sum, samples, *each metric's statistics]}`` (float64 nested lists): the loop's own sums, summed over the
        ranks of a data-parallel job, plus ``carried_totals``. Portable: any epoch loop can go on from them. In a
        data-parallel job every rank must call it (one all-reduce). None where the loop keeps no sums."""
        own = self.epoch_totals() if self.epoch_totals is not None else None
        if own is None or own["values"] is None:
            return None
        values = job_totals(own["values"], self.carried_totals)
        return {"trainer": own["trainer"], "values": [value.tolist() for value in values]}

    def loader_state(self) -> dict | None:
        """The loader position after the batches trained so far. A framework's trainer may read batches
        ahead of training on them (Keras prefetches), so the loader's own position can run ahead."""
        if not isinstance(self.loader, DataLoader):
            return None
        state = self.loader.state_dict()
        epoch, position = self._epoch_start
        position += self._trained_in_epoch
        if position >= len(self.loader):
            epoch, position = epoch + 1, 0
        return dict(state, epoch=epoch, position=position)

    def stop(self, after_batch: bool = False) -> None:
        """End training after the current epoch, or (``after_batch``, from ``on_batch_end``) right after the
        current batch, once every callback has seen it: the epoch's running logs become the epoch's logs and
        its end runs as usual (validation, ``on_epoch_end``), as Keras's ``stop_training`` does."""
        self.stopped = True
        self.end_epoch = self.end_epoch or after_batch


def job_totals(values, carried=None) -> list:
    """An epoch loop's running totals ``values`` (nested lists or arrays) as float64 arrays, summed over the ranks
    of a data-parallel job (one all-reduce, exact for counts), plus ``carried`` (arrays of the same shapes)."""
    arrays = [np.asarray(value, dtype=np.float64) for value in values]
    if process_group.sharding() is not None:  # a data-parallel job
        flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
        flat = np.asarray(process_group.sum_over_ranks(*flat.tolist()), dtype=np.float64)
        arrays, position = [], 0
        for value in values:
            shape = np.shape(value)
            size = int(np.prod(shape)) if shape else 1
            arrays.append(flat[position:position + size].reshape(shape))
            position += size
    if carried is not None:
        arrays = [a + c for a, c in zip(arrays, carried)]
    return arrays


def logs_from_totals(values, metrics) -> dict:
    """An epoch's logs from its totals ``[loss sum, samples, *statistics]``: the loss sum over the samples and
    each metric of ``metrics`` (a ``MetricAccumulator`` or None) from its summed statistics, in float64."""
    arrays = [np.asarray(value, dtype=np.float64) for value in values]
    loss_sum, seen = float(arrays[0]), float(arrays[1])
    logs = {"loss": loss_sum / seen if seen else float("nan")}
    if metrics is not None:
        logs.update(metrics.results_from(arrays[2:]))
    return logs


def _is_native_pipeline(data) -> bool:
    """A ``torch.utils.data.DataLoader`` or a ``tf.data.Dataset`` (not a TensorFlow tensor: a batch of samples)."""
    module = type(data).__module__
    return module.startswith("torch.utils.data") or module.startswith("tensorflow.python.data")


def as_loader(data, batch_size=None, shuffle=False, seed=None, what="train_data"):
    """A loader for ``data``: a unidl ``DataLoader``, a native pipeline (``torch.utils.data.DataLoader``,
    ``tf.data.Dataset``), or an ``(x, y)`` pair of arrays batched by ``batch_size`` (None: Keras's 32)."""
    if isinstance(data, DataLoader) or _is_native_pipeline(data):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        batch_size = KERAS_BATCH_SIZE if batch_size is None else batch_size
        return DataLoader(TensorDataset(*data), batch_size=batch_size, shuffle=shuffle, seed=seed)
    raise TypeError(f"{what} must be a unidl DataLoader, a torch DataLoader, a tf.data.Dataset or a pair "
                    f"(x, y) of arrays; got {type(data).__name__}")


def _validation_loader(validation_data, validation_batch_size: int | None, batch_size: int | None) -> tuple:
    """The loader of ``validation_data`` and whether its batches carry sample weights as a third field
    (Keras's ``(x, y, sample_weight)``). Arrays come in batches of ``validation_batch_size``, default ``batch_size``,
    default Keras's 32, as Keras's ``Model.fit``; a loader or pipeline batches itself (``validation_batch_size``
    beside one: a ``ValueError``)."""
    data, weights = fit_options.weighted_validation(validation_data)
    if validation_batch_size is not None and (isinstance(data, DataLoader) or _is_native_pipeline(data)):
        raise ValueError(f"fit: validation_batch_size={validation_batch_size!r} batches validation arrays, but "
                         f"validation_data is a {type(data).__name__}, which batches itself: leave "
                         f"validation_batch_size out")
    batch_size = next(size for size in (validation_batch_size, batch_size, KERAS_BATCH_SIZE) if size is not None)
    if weights is None:
        return as_loader(data, batch_size, False, None, "validation_data"), False
    return DataLoader(TensorDataset(*fit_options.arrays_of(data), weights), batch_size=batch_size), True


def _arrays_of(loader):
    return loader.sliced_arrays() if isinstance(loader, DataLoader) else None


def check_labels(model, loss_fn, loader) -> None:
    """Before training: integer labels for ``CrossEntropyLoss`` must lie in [0, number of model outputs), or equal
    its ``ignore_index`` (those samples count for neither the loss nor the metrics, as in ``train_step``): else the
    ``IndexOutOfRangeError`` (an ``IndexError`` and a ``ValueError``) that ``train_step`` raises for them."""
    arrays = _arrays_of(loader)
    if not isinstance(loss_fn, CrossEntropyLoss) or arrays is None or len(arrays) < 2:
        return
    x, y = arrays[0], arrays[1]
    if y.dtype.kind not in "iu":
        if y.ndim >= 2:  # class probabilities or one-hot targets, which CrossEntropyLoss checks itself
            return
        raise DtypeMismatchError(input_checks.float_labels_message("CrossEntropyLoss", y.dtype))  # the loss's own words
    shape = output_shape(model, x)  # one remembered eval-mode forward of one sample, shared with the metrics
    if shape is None:  # several outputs (a tuple, a dict): a loss of the user's, which checks its own labels
        return
    classes = shape[-1] if shape else 1  # a model with (N,) outputs: one output per sample
    check_class_labels(type(loss_fn).__name__, y, classes, loss_fn.ignore_index,
                       f"for a model with {classes} outputs, or equal the loss's ignore_index {loss_fn.ignore_index}")


def _fresh_first_samples(*data) -> None:
    """Each ``DataLoader`` of ``data`` reads its first sample anew at its first probe of this ``fit`` or
    ``evaluate`` (and keeps it for the others): a dataset fixed in place after a call failed is read again."""
    for loader in data:
        if isinstance(loader, DataLoader):
            loader._forget_first_sample()


def _check_validation_input(model, validation) -> None:
    """Before training: one eval-mode forward of one validation sample (remembered, as the metrics' layout
    does it), so that ``validation_data`` the model cannot take (samples of the wrong width) is refused before
    any update rather than after the first epoch, with the model's own error on every backend. The sample comes
    from the loader's workers where it has some (``first_sample``)."""
    output_shape(model, first_sample(validation)[0])


def _length(loader) -> int | None:
    """The batches of an epoch of ``loader``, or None where it does not know them (a ``tf.data`` pipeline from a
    generator or filtered, a torch loader over an ``IterableDataset``: their ``len`` raises ``TypeError``), as
    Keras's ``fit`` takes such a pipeline: each epoch runs until it ends."""
    try:
        return len(loader) if hasattr(loader, "__len__") else None
    except TypeError:
        cardinality = getattr(loader, "cardinality", None)  # (tf.data: -1 is infinite, -2 unknown)
        if callable(cardinality) and int(cardinality()) == -1:
            raise ValueError(f"fit: the {type(loader).__name__} is infinite (a .repeat() with no count), so an epoch "
                             f"would never end; fit takes finite pipelines: .take(n) the batches of an epoch, or "
                             f"leave out .repeat() (each epoch iterates the pipeline anew)") from None
        return None


def _check_finite(value: float, epoch: int, step: int, step_finite: bool = True) -> None:
    """``NonFiniteLossError`` naming the epoch and step when the step's loss or a gradient was not finite (the
    backend then skipped its update: the weights are those before the step)."""
    if not math.isfinite(value) or not step_finite:
        what = f"training loss became {value}" if not math.isfinite(value) else "a gradient became NaN or infinite"
        raise NonFiniteLossError(f"{what} at epoch {epoch + 1}, step {step + 1}; the step's update was skipped "
                                 f"(weights are those before it); lower the learning rate or check the data "
                                 f"for NaN/inf")


#: names the running totals of unidl's own epoch loop in a checkpoint (a backend's ``fit_epoch`` uses its name)
UNIDL_LOOP = "unidl"


def _run_epoch_with_steps(step: TrainStep, batches, epoch, on_batch, metrics, trainer=None, totals=None,
                          step_inputs=None, before_batch=None, step_statistics: bool = False) -> dict:
    """One epoch of ``step`` calls, reporting running means (and ``metrics``' running values, from statistics
    summed since the epoch began) to ``on_batch`` as ``fit_epoch`` does; ``step_inputs(index)``, where given, are
    the extra forward inputs of the epoch's ``index``-th batch here, ``step(x, y, *inputs)``; ``before_batch(index)``,
    where given, runs before the ``index``-th step, as ``fit_epoch``'s. ``step_statistics``: the step returns the
    metrics' statistics of its batch in place of its outputs (``Backend.summary_in_step``).

    The running sums (each batch's loss times its size, in float64 and batch order; the samples; the metrics'
    statistics) are what ``trainer.epoch_totals()`` hands a checkpoint, and ``totals``, those of a checkpoint
    taken during this epoch (by this loop, or in the same layout by a framework's trainer), are where a resumed
    epoch continues them: the same additions in the same order, so the resumed run's History is bit-identical
    to the uninterrupted run's (exact counts and ratio metrics after another loop's checkpoint)."""
    total_loss, seen = 0.0, 0
    if metrics is not None:
        metrics.reset()
    if totals is not None:
        shapes = metrics.shapes if metrics is not None else []
        values = [np.asarray(value, dtype=np.float64) for value in totals[2:]]
        if len(totals) != 2 + len(shapes) or [v.shape for v in values] != [tuple(shape) for shape in shapes]:
            raise CheckpointStateError(f"the checkpoint's running totals of epoch {epoch + 1} do not fit this run's "
                                       f"metrics; resume with the metrics of the interrupted run")
        total_loss, seen = float(totals[0]), int(totals[1])
        if metrics is not None:
            metrics.totals = values
    if trainer is not None:
        trainer.epoch_totals = lambda: {"trainer": UNIDL_LOOP, "values": [total_loss, seen] + (
            [t.tolist() for t in metrics.totals] if metrics is not None else [])}
    index = -1
    for index, batch in enumerate(batches):
        x, y = xy(batch)
        if before_batch is not None:
            before_batch(index)
        loss, outputs = step(x, y, *step_inputs(index)) if step_inputs is not None else step(x, y)
        count = int(tuple(x.shape)[0])
        total_loss += float(loss) * count  # a NaN or inf step loss makes the running mean non-finite too
        seen += count
        logs = {"loss": total_loss / seen}
        if metrics is not None:
            if step_statistics:  # (``outputs``: the metrics' statistics, computed in the step's program)
                metrics.add_statistics(outputs, y)
            else:
                metrics.add(outputs, y)
            logs.update(metrics.results())
        on_batch(index, logs)
    if index < 0:
        raise ValueError(f"epoch {epoch + 1} had no batches: the training data is empty")
    return logs


def fit(model, train_data=None, y=None, batch_size: int | None = None, epochs: int = 1, verbose: int = 1,
        callbacks=(), validation_split: float = 0.0, validation_data=None, shuffle: bool = True, class_weight=None,
        sample_weight=None, initial_epoch: int = 0, *, loss, optimizer, metrics=None, weighted_metrics=None,
        validation_freq=1, seed: int | None = None, resume_from=None, eager: bool = False, precision=None,
        accumulate: int = 1, step_inputs=None, validation_batch_size: int | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch ``History``.

    ``fit(model, (x, y), ...)`` or, in Keras's order, ``fit(model, x, y, batch_size, epochs, verbose, callbacks,
    validation_split, validation_data, shuffle, class_weight, sample_weight, initial_epoch)``; the rest by keyword.

    Args:
        train_data: a ``ud.data.DataLoader``, a native pipeline (``torch.utils.data.DataLoader`` on
            torch, ``tf.data.Dataset`` on tensorflow/keras), ``(x, y)`` arrays with ``batch_size``, or
            the array ``x`` with ``y`` given next. A ``DataLoader`` is positioned as ``fit`` starts, before its
            checks: each epoch from its first batch, unless ``load_state_dict`` (a resume) set a position in
            that epoch; an iteration broken off mid-epoch (a ``break``, Ctrl-C) is not continued.
        batch_size: samples per batch of arrays (``(x, y)``, ``x`` and ``y``); Keras's 32 when not given, as
            ``Model.fit``'s. A loader or pipeline batches itself.
        loss: a unidl loss module, or its name: ``"cross_entropy"``, ``"sparse_categorical_crossentropy"``,
            ``"categorical_crossentropy"`` (all ``CrossEntropyLoss`` of logits: unidl models end without a
            softmax), ``"mse"``, ``"mae"``, ``"binary_crossentropy"`` (of logits), ...
            (``unidl.fit_options.LOSS_NAMES``).
        optimizer: a unidl optimizer built for ``model``, or its Keras name: ``"adam"``, ``"sgd"``, ``"rmsprop"``,
            ``"adagrad"``, ``"adamw"``, ``"nadam"``, ``"adamax"``, ``"adadelta"``, with Keras's default learning
            rates (and torch.optim's update rules, as every unidl optimizer).
        validation_data: same forms as ``train_data``, or Keras's ``(x, y, sample_weight)`` arrays; adds
            'val_loss' and ``val_<metric>`` each epoch. With weights, 'val_loss' weights the loss as
            ``sample_weight`` does in training (Keras's ``sum_i w_i * loss_i / n`` over the ``n`` validation
            samples for a 'mean' loss of one value a sample), and ``weighted_metrics`` are weighted by them;
            ``metrics`` are not (as Keras).
        validation_split: Keras's: the last fraction of the ``(x, y)`` arrays (taken before shuffling)
            validates instead of training, with its ``sample_weight`` (not ``class_weight``) as Keras;
            not with ``validation_data`` or a loader.
        validation_freq: validate after every N-th epoch (an int), or after the listed 1-based epochs.
        validation_batch_size: samples per validation batch of arrays (``validation_data`` or
            ``validation_split``), a positive integer; ``batch_size`` when not given (so Keras's 32 when neither is),
            as Keras's. A validation loader or pipeline batches itself (given beside one, or without validation, a
            ``ValueError``). 'val_loss' depends on it only where the loss is no per-sample mean (a 'sum' reduction,
            class weights, ``ignore_index``: see ``evaluate``), as in Keras.
        class_weight: Keras's ``{class: weight}``, weighting each training sample's loss by its class: its
            integer label, the argmax of a one-hot target, or round(y) of a float label (N,) or (N, 1), such as a
            binary cross-entropy's 0/1 targets, as Keras (arrays only; multiplied by ``sample_weight`` where both
            are given).
        sample_weight: one weight per training sample (arrays only): each sample's losses
            (``reduction='none'``) times its weight, then the loss's own reduction: 'sum' sums them, 'mean'
            divides by what the loss's mean divides by (the number of losses; the summed class weights of the
            labels counted for ``CrossEntropyLoss``/``NLLLoss``), so weights of one train as none do. For a
            'mean' loss of one value a sample, Keras's ``sum_i w_i * loss_i / n``.
        initial_epoch: the epoch to start at (``epochs`` stays the index of the last, as in Keras).
        metrics: names or ``ud.metrics`` objects (``["accuracy", "top5", "f1"]``), each exact over the
            epoch (summed statistics, never a mean of batch means); default: accuracy for classification
            losses (``CrossEntropyLoss``, ``NLLLoss``) with class-score outputs, none otherwise (nor when
            ``weighted_metrics`` are given). Never weighted, as Keras's ``metrics``.
        weighted_metrics: Keras's: metrics (same forms) weighted by ``sample_weight`` times ``class_weight``
            in training and by the validation weights in validation, as Keras's weighted metrics (a count
            becomes a sum of weights: accuracy is ``sum w * correct / sum w``, MAE ``sum w * |e| / sum w``,
            precision and AUC from weighted counts); unweighted where no weights are given. One named as an
            unweighted metric is logged as ``weighted_<name>``.
        callbacks: ``ud.callbacks`` objects (EarlyStopping, LearningRateScheduler, Checkpoint, ModelCheckpoint,
            CSVLogger, ReduceLROnPlateau, TerminateOnNaN, ...) and plain functions, each called as
            ``fn(epoch, logs)`` at the end of every epoch (``logs``: that epoch's 'loss', 'lr', metrics); a list,
            or one of them alone (Keras's).
        verbose: 0 silent, 1 progress bar on a terminal (a line per epoch otherwise), 2 a line per epoch;
            Keras's 'auto' is 1.
        shuffle: reshuffle ``(x, y)`` arrays every epoch (a given loader keeps its own settings).
        seed: the seed of that shuffling.
        resume_from: a checkpoint directory written by ``ud.callbacks.Checkpoint`` (or one checkpoint file):
            continue exactly where it stopped (weights, optimizer, RNG, position in the epoch, schedules and
            other callback state, History). It must exist; ``"auto"`` resumes from the ``Checkpoint``
            callback's directory if it holds a checkpoint and starts afresh otherwise. A corrupt newest
            checkpoint is skipped with a warning. A new lr, optimizer hyperparameter or schedule setting wins
            over the checkpoint's, with a warning; a different model, loss or optimizer class, or a loss of
            other settings (``reduction``, ``label_smoothing``, ...), is an error.

    ``eager=True``: no compiled step on any backend; Python runs the forward at every step (Keras's
    ``run_eagerly``), for models whose forward needs Python per step (docs/dynamic-forward.md).
    ``precision``: "32" (the default), "bf16-mixed" or "16-mixed" (or a ``ud.Precision``): float32 weights,
    bfloat16/float16 compute, dynamic loss scaling for float16 (see ``ud.train_step``, ``unidl.precision``), for the
    training steps; validation (and ``ud.evaluate``, ``ud.predict``) computes in float32, the weights' own dtype, on
    every backend (Lightning validates under autocast: its 'val_loss' differs by the lower precision's rounding).

    A NaN or infinite training loss or gradient stops training with ``NonFiniteLossError`` naming the epoch
    and step, before that step updates the weights (with a ``TerminateOnNaN`` callback: after that batch,
    with no error, the weights again those before it). Clipping is the optimizer's (``clip_grad_norm=``).
    ``accumulate=N``: every batch is a micro-step and every N-th updates the weights with the mean gradient
    of the last N (``ud.train_step(accumulate=N)``); the optimizer's step count and schedules count updates.

    ``step_inputs``: a function ``(epoch, step) -> inputs`` giving the extra forward inputs of each training
    step (a dynamic net's depth for that step): a number, a NumPy array or backend tensor, or a tuple of them;
    training then calls ``model(x, *inputs)``, as ``ud.train_step``'s ``step(x, y, *inputs)`` does: graph
    inputs where the step is a graph (on tensorflow one graph for every value; on jax a Python or NumPy number stays a
    Python value, one trace per distinct value, as ``jax.jit`` cannot loop a traced number of times), through
    Keras's own trainer on keras. ``epoch`` is 0-based, ``step`` the batch's 0-based index in its epoch (every
    micro-step with ``accumulate``); it is called once per step in step order (the first step's before
    training, so a bad value is a ``TypeError`` before any update), and a resumed fit asks for the same
    ``(epoch, step)`` pairs as the uninterrupted run. Validation, ``evaluate`` and ``TensorBoard``'s model graph
    call ``model(x)``: the forward's defaults (an evaluation-time depth) apply there. See docs/dynamic-forward.md.

    Ctrl-C stops ``fit`` with ``KeyboardInterrupt``, the loader's workers stopped and the model usable (see
    docs/guarantees.md); a Ctrl-C that a callback catches during training (or Keras's own trainer, under a bare
    ``except``) is raised again by ``fit`` at that batch's end.
    """
    loss = fit_options.resolve_loss(loss)
    fit_options.check_reduced_loss(loss, "fit")
    optimizer = fit_options.resolve_optimizer(optimizer, model)
    backend = check_same_backend(model, loss, optimizer)
    check_optimizer_trains(model, loss, optimizer, "fit")
    precision = precision_policy(precision)
    check_loss_scale_settings(optimizer, precision)  # the optimizer's one float16 loss scale, before any change
    accumulate = check_accumulate(accumulate)
    step_inputs = fit_options.StepInputs(step_inputs, backend) if step_inputs is not None else None
    claim_window(optimizer, accumulate, precision)  # the optimizer's one window, not in progress for another
    if arguments.integer(epochs) is None or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    epochs = int(epochs)
    if validation_batch_size is not None and not (arguments.integer(validation_batch_size) or 0) > 0:
        raise ValueError(f"fit: validation_batch_size must be None or a positive integer (samples per validation "
                         f"batch), got {validation_batch_size!r}")
    shuffle = arguments.flag("fit", "shuffle", shuffle)  # (Keras's 'batch' and None were taken as True and False)
    # (a string, even 'no' or 'False', was taken as True; train_step's rule, so that the same flag is the same error)
    eager = arguments.boolean("fit", "eager", eager)
    validation_freq = fit_options.check_validation_freq(validation_freq)
    verbose = fit_options.check_verbose(verbose)
    start_epoch = fit_options.check_initial_epoch(initial_epoch, epochs, resume_from)
    train_data = fit_options.data_of(train_data, y)
    _fresh_first_samples(train_data, validation_data)
    train_data, sample_weight, held_out = fit_options.split_validation(train_data, validation_split, sample_weight)
    if held_out is not None:
        if validation_data is not None:
            raise ValueError("pass validation_split or validation_data, not both")
        validation_data = held_out
    weights = fit_options.sample_weights(train_data, sample_weight, class_weight)
    loader = as_loader(train_data, batch_size, shuffle if weights is None else False, seed)
    callbacks = _checkpoints_last(as_callbacks(callbacks))
    resume_target = _resume_target(resume_from, callbacks) if resume_from is not None else None
    if isinstance(loader, DataLoader) and start_epoch < epochs and resume_target is None:
        _position_loader(loader, start_epoch)  # as the epoch loop will: the probes read the first batch trained
    # (a resume moves the loader only once the checkpoint was found to fit: a refused one leaves it where it was,
    # as the model, optimizer and generators; its probes read the batch the loader would start with now; "auto"
    # finding no checkpoint starts afresh, positioned as without it)
    if validation_batch_size is not None and validation_data is None:
        raise ValueError(f"fit: validation_batch_size={validation_batch_size!r} without validation_data or "
                         f"validation_split: there is nothing to validate")
    validation, validation_weighted = (_validation_loader(validation_data, validation_batch_size, batch_size)
                                       if validation_data is not None else (None, False))
    check_labels(model, loss, loader)
    train_metrics = accumulator_for(metrics, model, loader, loss, for_training=True, weighted_metrics=weighted_metrics)
    validation_metrics = (accumulator_for(metrics, model, validation, loss, weighted_metrics=weighted_metrics)
                          if validation is not None else None)
    if validation is not None and validation_metrics is None:  # (the metrics' layout has checked it already)
        _check_validation_input(model, validation)
    plain_loss = loss
    if weights is not None:  # the weights travel with the targets, into every backend's compiled step
        x_array, y_array = fit_options.arrays_of(train_data)
        packing = fit_options.PackedTargets(y_array.shape[1:], y_array.dtype.name)
        loss = fit_options.SampleWeightedLoss(plain_loss, packing)
        loader = as_loader((x_array, fit_options.pack_targets(y_array, weights)), batch_size, shuffle, seed)
        if train_metrics is not None:
            train_metrics.unpack = packing.unpack
    process_group.check_training_loader(loader)
    history = History()
    history.params, history.model = {"verbose": verbose, "epochs": epochs, "steps": _length(loader)}, model
    trainer = Trainer(model, optimizer, loader, history)
    # a TerminateOnNaN that stops quietly (raise_error=True: fit's own NonFiniteLossError, before the step's update)
    terminate_on_nan = any(isinstance(c, TerminateOnNaN) and not c.raise_error for c in callbacks)
    trainer.callbacks, trainer.carried_epoch = callbacks, None
    trainer.epochs = epochs  # for callbacks that show "epoch e/epochs" (ProgressBar)
    trainer.validation_freq = validation_freq if validation is not None else None
    trainer.metrics = [metric for accumulator in (train_metrics, validation_metrics) if accumulator is not None
                       for metric in accumulator.metrics]  # (a callback's mode='auto' goes by their directions)
    trainer.log_names = {"loss", "lr"} | {m.name for m in (train_metrics.metrics if train_metrics else ())}
    if validation is not None:  # (a monitored name none of these is refused before training: check_monitor)
        trainer.log_names |= {"val_loss"} | {f"val_{m.name}" for m in (validation_metrics.metrics
                                                                       if validation_metrics else ())}
    trainer.loss = plain_loss  # (its parameters and buffers go into every checkpoint, and a resume restores them)
    trainer.fit_settings = {"loss": type(plain_loss).__name__, "optimizer": type(optimizer).__name__,
                            "loss_settings": fit_options.loss_settings(plain_loss),  # (a resume compares them)
                            "lr": float(optimizer.lr), "hyper": dict(optimizer.hyper)}
    if resume_target is not None:
        expect_accumulate(optimizer, accumulate)  # a checkpoint's part-full window must fit it, before any change
        expect_precision(optimizer, precision)  # and its float16 loss scale this growth_interval
        with resuming_with(optimizer, accumulate):
            start_epoch = _resume(resume_target, trainer, callbacks, backend, train_metrics)
    trainer.accumulate, trainer.micro_steps = accumulate, window_micro_steps(optimizer)  # (a part-full window: a
    # resumed one, another fit's: updates come sooner)
    if step_inputs is not None and start_epoch < epochs:  # the first step's inputs, checked before training
        step_inputs.prepare(start_epoch, _first_step(loader, start_epoch))
    for callback in callbacks:
        callback.trainer = trainer
        hook(callback, "on_train_begin")({})  # (Keras's logs: {} at a begin hook)
    if trainer.stopped:  # (a callback ended the run before its first epoch: a resumed run that had been stopped)
        start_epoch = epochs
    progress = Progress(verbose if process_group.rank_from_environment() == 0 else 0, epochs)  # rank 0 prints

    def end_epoch(epoch, logs):
        """What follows an epoch's last batch: validation, the callbacks' epoch end, its History entry. History
        records the logs after the other callbacks, as Keras's History runs last (a key one of them adds to the logs
        is kept: it was dropped), and before the ``Checkpoint`` callbacks (last of all), whose checkpoint holds it."""
        if trainer.validates(epoch):
            results = _evaluate_with(model, validation, plain_loss, validation_metrics, validation_weighted, callbacks)
            logs.update({f"val_{k}": v for k, v in results.items()})
        checkpoints = [c for c in callbacks if isinstance(c, Checkpoint)]
        for callback in callbacks:
            if callback not in checkpoints:
                callback.on_epoch_end(epoch, logs)
        history.append(logs, epoch)
        for callback in checkpoints:
            callback.on_epoch_end(epoch, logs)

    finished = getattr(trainer, "finished_epoch", None)
    if finished is not None:  # resumed from a checkpoint of an epoch's last batch: that epoch's end runs now
        trainer.epoch, trainer.finished_epoch = finished[0], None
        end_epoch(*finished)
        if trainer.stopped:
            start_epoch = epochs
    step = None
    # the training metrics' statistics traced into the compiled step where every compiled function is a program per
    # batch shape (JAX: computed apart, one more program per batch size) or a graph call a dispatch (TensorFlow: a
    # second call a batch); not in an eager step, whose ops would each compile apart where the accumulator's own
    # compiled function is one program
    summary = (train_metrics.statistics if train_metrics is not None and backend.summary_in_step and not eager
               else None)
    for epoch in range(start_epoch, epochs):
        trainer.epoch = epoch
        model.train()
        if isinstance(loader, DataLoader):
            first = _position_loader(loader, epoch)
            steps = len(loader) - first
            trainer._epoch_start = (epoch, first)
        else:
            steps = _length(loader)
        for callback in callbacks:
            hook(callback, "on_epoch_begin")(epoch, {})
        progress.begin_epoch(epoch, steps)
        # the rate the epoch began with, which its History logs (an epoch resumed part-way: the checkpoint's, as a
        # schedule stepped per batch has moved the rate since)
        resumed_part = getattr(trainer, "carried_epoch", None)
        epoch_lr = trainer.epoch_lr = (resumed_part["lr"] if resumed_part and resumed_part["epoch"] == epoch
                                       and isinstance(resumed_part.get("lr"), float) else optimizer.lr)
        trainer._trained_in_epoch = 0
        ctrl_c = []  # the KeyboardInterrupts Ctrl-C raised during the epoch's training (pool.ctrl_c_noted)

        def on_batch(index, logs, epoch=epoch):
            if ctrl_c:  # one that code between the signal and fit swallowed (Keras's own trainer can): raised again
                raise KeyboardInterrupt
            # a step the float16 loss scaler skipped is its business (GradScaler's rule); with accumulate=N a
            # micro-step marks its window and the window's update raises, as train_step's (on every rank of a job
            # at once: a rank that raised at its own micro-step left the others waiting in the next all-reduce)
            if not terminate_on_nan and (trainer.micro_steps + 1) % trainer.accumulate == 0:
                _check_finite(logs["loss"], epoch, index, precision.scales_loss or optimizer.last_step_finite)
            trainer.global_step += 1
            trainer._trained_in_epoch += 1
            trainer.micro_steps = (trainer.micro_steps + 1) % trainer.accumulate
            progress.batch(index, logs)
            for callback in callbacks:
                hook(callback, "on_train_batch_end")(index, logs)
            if ctrl_c:  # one that a callback caught
                raise KeyboardInterrupt
            if trainer.end_epoch:
                raise _EndEpoch(logs)

        def before_batch(index, epoch=epoch):  # (a callback may have frozen the model after the last batch)
            for callback in callbacks:
                hook(callback, "on_train_batch_begin")(index, {})
            require_trainable(optimizer.params, lambda: f"fit at epoch {epoch + 1}, step {index + 1}", model, loss)

        batches = iter(loader)  # one iterator per epoch: a second iter() would start the next epoch
        carried = trainer.carried_epoch if trainer.carried_epoch and trainer.carried_epoch["epoch"] == epoch else {}
        # a resumed epoch: the checkpoint's running totals [loss sum, samples, *statistics], the same layout in
        # every loop (unidl's, a framework's trainer, any backend's), so the loop goes on from them, or in a
        # data-parallel job (the job's totals) each rank starts from zero and they are added once at the end
        values = (carried.get("totals") or {}).get("values")
        group = process_group.sharding() is not None  # a data-parallel job
        loop_totals = values if values is not None and not group else None
        trainer.carried_totals = ([np.asarray(v, dtype=np.float64) for v in values]
                                  if values is not None and group else None)
        trainer.epoch_totals = lambda: {"trainer": backend.name, "values": backend.epoch_totals(model)}
        # the extra forward inputs of the epoch's index-th batch from here (after a resumed epoch's first part)
        inputs_of = (None if step_inputs is None else
                     lambda index, epoch=epoch, first=trainer._epoch_start[1]: step_inputs(epoch, first + index))
        try:
            with ctrl_c_noted(ctrl_c):
                logs = backend.fit_epoch(model, loss, optimizer, batches, steps, on_batch, train_metrics, eager,
                                         precision=precision, accumulate=accumulate, totals=loop_totals,
                                         step_inputs=inputs_of, before_batch=before_batch)
                if logs is None:
                    step = step or _fit_step(model, loss, optimizer, summary, train_metrics, eager, precision,
                                             accumulate)
                    logs = _run_epoch_with_steps(step, batches, epoch, on_batch, train_metrics, trainer, loop_totals,
                                                 inputs_of, before_batch, step_statistics=summary is not None)
            if ctrl_c:  # swallowed after the epoch's last batch
                raise KeyboardInterrupt
        except _EndEpoch as end:  # a callback ended the epoch after a batch: its running logs are the epoch's
            logs = end.logs
        except BaseException as error:
            _stop_workers(batches, interrupt=isinstance(error, KeyboardInterrupt))
            raise
        if carried and values is None:  # a checkpoint without running totals: the two parts' means, joined
            logs = _whole_epoch_means(trainer, epoch, logs)
        trainer.carried_epoch = None
        logs = dict(logs, lr=epoch_lr)
        if group:  # every rank logs the job's values: from the statistics summed over the ranks, not their means
            totals = trainer.job_totals()
            logs = (dict(logs, **logs_from_totals(totals["values"], train_metrics)) if totals is not None
                    else process_group.mean_over_ranks(logs, 1))
        trainer.carried_totals = None
        end_epoch(epoch, logs)
        progress.end_epoch(logs, steps if steps is not None else 0)
        if trainer.stopped:
            break
    if accumulate > 1 and not terminate_on_nan and window_micro_steps(optimizer):
        _check_open_window(optimizer, trainer)
    for callback in callbacks:  # (Keras's logs: the last epoch's)
        hook(callback, "on_train_end")(dict(history.last_logs) if history.last_logs is not None else {})
    return history


def _check_open_window(optimizer, trainer) -> None:
    """At the end of a ``fit(accumulate=N)`` whose last window is still open: a ``NonFiniteLossError`` where one of
    its micro-steps was not finite, the window emptied (its update skipped), as the window's update would have
    raised (the run ended silently, and the next ``fit`` raised at its own first step). In a data-parallel job the
    flag is the job's, so every rank raises alike."""
    from unidl.training import job_window_state, load_window_state, window_state

    group = process_group.current()
    state = job_window_state(optimizer) if group is not None and group.world_size > 1 else window_state(optimizer)
    if state is None or state["finite"]:
        return
    load_window_state(optimizer, None)
    raise NonFiniteLossError(f"the training loss or a gradient became NaN or infinite in the run's last "
                             f"accumulation window ({state['micro_steps']} of {state['accumulate']} micro-steps, "
                             f"ending at epoch {trainer.epoch + 1}, step {trainer.global_step}); its update was "
                             f"skipped and the window emptied (weights are those before it); lower the learning "
                             f"rate or check the data for NaN/inf")


def _stop_workers(batches, interrupt: bool) -> None:
    """Stop the workers of a ``DataLoader`` epoch that an error or Ctrl-C ends: its traceback keeps ``fit``'s
    frame, and with it the epoch and its workers, alive (at the REPL until the next error); ``interrupt`` (Ctrl-C):
    worker threads still in a sample too (``Epoch.close``)."""
    if isinstance(batches, Epoch):
        batches.close(interrupt)


def _position_loader(loader: DataLoader, epoch: int) -> int:
    """Make the next ``iter(loader)`` train ``fit``'s ``epoch`` and return the index of its first batch there. Only a
    position that was set in that epoch (``load_state_dict``: a resume) is continued from; anything else starts the
    epoch at its first batch, an iteration broken off mid-epoch included: Keras may have read past the batches it
    trained, and Keras and Lightning start a new ``fit`` with a fresh epoch."""
    next_epoch, position = loader.next_iteration()
    if next_epoch != epoch or position == 0:
        loader.set_epoch(epoch)
        return 0
    return position


def _first_step(loader, epoch: int) -> int:
    """The index in ``epoch`` of the first batch ``fit``'s loop will train, without moving the loader: a resumed
    ``DataLoader``'s position in that epoch, else 0 (as ``_position_loader`` positions it)."""
    if not isinstance(loader, DataLoader):
        return 0
    next_epoch, position = loader.next_iteration()
    return position if next_epoch == epoch else 0


# ---- resuming ----------------------------------------------------------------

def _checkpoints_last(callbacks) -> list:
    """``callbacks`` with the ``Checkpoint`` callbacks moved last (order otherwise kept), so that a checkpoint
    taken at the end of an epoch holds the state the other callbacks reach in that epoch (a stepped schedule)."""
    callbacks = list(callbacks)
    return [c for c in callbacks if not isinstance(c, Checkpoint)] + [c for c in callbacks if isinstance(c, Checkpoint)]


def _resume_target(resume_from, callbacks) -> str | None:
    """The checkpoint file or directory to resume from, or None to start afresh (``"auto"`` with no checkpoint yet)."""
    import os

    from unidl.checkpoint import list_checkpoints

    if isinstance(resume_from, str) and resume_from == "auto":
        directories = [c.directory for c in callbacks if isinstance(c, Checkpoint)]
        if not directories:
            raise ValueError("resume_from='auto' resumes from the directory of a ud.callbacks.Checkpoint, but "
                             "callbacks hold none; add one or pass the checkpoint directory itself")
        return os.fspath(directories[0]) if list_checkpoints(directories[0]) else None
    target = os.fspath(resume_from)
    if not os.path.exists(target):
        raise FileNotFoundError(f"resume_from={target!r} does not exist; pass the directory a Checkpoint callback "
                                f"wrote, or resume_from='auto' to resume from the Checkpoint callback's directory "
                                f"and start afresh while it holds no checkpoint")
    return target


def _check_resumable(metadata: dict, path: str, trainer, backend=None, metrics=None) -> None:
    """Before anything is restored: the checkpoint's model, loss and optimizer classes are the run's, its
    History and epoch progress are well formed, and the running totals of an epoch it resumes fit this run's
    ``metrics``. Raises ResumeMismatchError / CorruptFileError / CheckpointStateError."""
    from unidl.errors import CorruptFileError, ResumeMismatchError
    from unidl.serialization import _registered_name

    path = repr(path)
    model_class = _registered_name(type(trainer.model))
    if metadata.get("class") not in (None, model_class):
        raise ResumeMismatchError(f"{path} was written for a {metadata['class']} model; this run trains a "
                                  f"{model_class}: a changed model cannot resume")
    extra = metadata.get("extra") or {}
    if not isinstance(extra, dict):
        raise CorruptFileError(f"{path}: checkpoint extra must be an object, got {type(extra).__name__}")
    history = extra.get("history") or {}
    if not (isinstance(history, dict) and all(isinstance(v, list) for v in history.values())):
        raise CorruptFileError(f"{path}: checkpoint history must map names to lists, got {history!r}")
    try:
        _restored_history(extra)
    except (TypeError, ValueError) as error:
        raise CorruptFileError(f"{path}: checkpoint history's epochs do not fit its logs: {error}") from None
    settings = extra.get("fit") or {}
    mine = trainer.fit_settings
    for key in ("loss", "optimizer"):
        if settings.get(key) not in (None, mine[key]):
            raise ResumeMismatchError(f"the run in {path} trained with {key} {settings[key]}; this run passes "
                                      f"{mine[key]}: a changed {key} cannot resume (start a new run instead)")
    _check_same_loss_settings(settings.get("loss_settings"), mine["loss_settings"], path)
    progress = extra.get("epoch_progress")
    if progress is not None and not (
            isinstance(progress, dict) and isinstance(progress.get("epoch"), int)
            and isinstance(progress.get("samples"), int) and progress["samples"] >= 0
            and isinstance(progress.get("sums"), dict)
            and all(isinstance(v, (int, float)) for v in progress["sums"].values())
            and _well_formed_totals(progress.get("totals"))
            and (progress.get("logs") is None or (isinstance(progress["logs"], dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in progress["logs"].values())))):
        raise CorruptFileError(f"{path}: malformed epoch progress {progress!r}")
    # the epoch it resumes, or the epoch whose last batch it saved (as _resume finds them; the loader's state is
    # checked already): its totals go on, or make its History entry
    if (progress and progress["samples"] and progress.get("totals") and backend is not None
            and isinstance(trainer.loader, DataLoader)
            and progress["epoch"] in (metadata["loader"]["epoch"], metadata["loader"]["epoch"] - 1)):
        _check_epoch_totals(progress["totals"], progress["epoch"], backend, metrics)


def _check_same_loss_settings(saved, mine: dict, path: str) -> None:
    """``ResumeMismatchError`` naming both when the checkpointed run's loss (``fit_options.loss_settings``: its
    class, its settings such as ``reduction`` and ``label_smoothing``, a function it holds, its child modules')
    differs from this run's: the same class with other settings computes another loss. A checkpoint written before
    the settings were saved holds only the class's name, which ``_check_resumable`` compares: its settings are
    unknown, and refusing it would strand every run checkpointed by the earlier code, so it resumes as it did then.
    Classes and functions compare by their qualified names without their modules, as the model's class is compared
    (a loss defined in a script is ``__main__.X`` run directly and ``train.X`` imported: the same loss); a plain
    attribute only one side holds is not compared (a later unidl that gives a loss class another public attribute
    must not strand the checkpoints written before it), a buffer or child only one side holds is
    (``_loss_differences``); floats as ``_same_setting`` compares them."""
    import json

    from unidl.errors import CorruptFileError, ResumeMismatchError

    if saved is None:
        return
    if not _well_formed_loss_settings(saved):
        raise CorruptFileError(f"{path}: malformed loss settings {saved!r}")
    mine = json.loads(json.dumps(mine))  # (as the file holds it: tuples as lists)
    if not _same_loss_class(saved, mine):
        old, new = saved["class"], mine["class"]
    else:
        differ = _loss_differences(saved, mine)
        if not differ:
            return
        old = ", ".join(f"{name}={_shown_setting(value)!r}" for name, value, _ in differ)
        new = ", ".join(f"{name}={_shown_setting(value)!r}" for name, _, value in differ)
        old, new = f"{saved['class']}({old})", f"{mine['class']}({new})"
    raise ResumeMismatchError(f"the run in {path} trained with loss {old}; this run passes {new}: a changed loss "
                              f"cannot resume (start a new run instead)")


def _well_formed_loss_settings(settings) -> bool:
    """Whether ``settings`` is ``fit_options.loss_settings``'s layout: a class's name and a dict of settings."""
    return (isinstance(settings, dict) and isinstance(settings.get("class"), str)
            and isinstance(settings.get("name", ""), str) and isinstance(settings.get("settings"), dict))


def _same_loss_class(saved: dict, mine: dict) -> bool:
    """Whether two ``loss_settings`` name the same class by its qualified name, its module aside (a checkpoint of
    the earlier layout, without ``name``: its ``module.qualname`` ends with this run's qualified name)."""
    if "name" in saved:
        return saved["name"] == mine["name"]
    return saved["class"] == mine["class"] or saved["class"].endswith("." + mine["name"])


def _loss_differences(saved: dict, mine: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(name, saved value, this run's value)`` of each setting both losses hold that differs, a child module's
    as ``child.setting`` (a child of another class: ``child`` and both classes), and of each buffer or child one side
    alone holds (``state``; shown as ``'absent'`` on the other). A plain attribute one side alone holds is not held
    against the resume: a later unidl may give a loss class an attribute with its default."""
    differ = []
    state = set(saved.get("state", ())) | set(mine.get("state", ()))
    for name in sorted((set(saved["settings"]) ^ set(mine["settings"])) & state):
        differ.append((prefix + name, saved["settings"].get(name, "absent"), mine["settings"].get(name, "absent")))
    for name in sorted(set(saved["settings"]) & set(mine["settings"])):
        old, new = saved["settings"][name], mine["settings"][name]
        if _well_formed_loss_settings(old) and _well_formed_loss_settings(new):
            differ += (_loss_differences(old, new, f"{prefix}{name}.") if _same_loss_class(old, new)
                       else [(prefix + name, old["class"], new["class"])])
        elif not _same_setting(old, new):
            differ.append((prefix + name, old, new))
    return differ


def _named_kind(value) -> str | None:
    """``'function'`` or ``'object'`` where ``value`` is ``fit_options._setting``'s record of a function or an
    object (``{'function': qualname, 'module': module}``), else None."""
    if isinstance(value, dict) and len(value) == 2 and "module" in value:
        return next((kind for kind in ("function", "object") if kind in value), None)
    return None


def _shown_setting(value):
    """A setting as the message shows it: a function or class as ``'function module.qualname'`` (its module named,
    though not compared), the rest as stored."""
    kind = _named_kind(value)
    if kind is not None:
        return f"{kind} {value['module']}.{value[kind]}"
    if isinstance(value, dict):
        return {key: _shown_setting(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown_setting(item) for item in value]
    return value


def _same_setting(old, new) -> bool:
    """Whether two settings (``fit_options._setting``'s JSON) are the same. Integers exactly; floats equal or one
    float32 apart from each other's rounding (the same float32 and within 2**-24 of each other relatively): a loss
    that stores ``float(label_smoothing)`` of a NumPy float32 holds 0.20000000298..., which the same setting given
    as 0.2 must resume, while 1e-50 and 0, one float32 but not one number, are two settings. A function or class
    by its qualified name without its module (as ``_same_loss_class``); one of the earlier layout, a string
    ``'function module.qualname'``, by the name it ends with."""
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and not isinstance(old, bool) \
            and not isinstance(new, bool):
        if old == new:
            return True
        if isinstance(old, int) and isinstance(new, int):  # (integers exactly: 2**24 + 1 is no float32)
            return False
        finite = all(abs(value) < float(np.finfo(np.float32).max) for value in (old, new))
        return (finite and np.float32(old) == np.float32(new)
                and abs(old - new) <= 2.0 ** -24 * max(abs(old), abs(new)))
    kind = _named_kind(new)
    if kind is not None:
        if _named_kind(old) == kind:
            return old[kind] == new[kind]
        if isinstance(old, str) and old.startswith(kind + " "):
            name = old[len(kind) + 1:]
            return name == new[kind] or name.endswith("." + str(new[kind]))
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same_setting(a, b) for a, b in zip(old, new))
    if isinstance(old, dict) and isinstance(new, dict):
        return set(old) == set(new) and all(_same_setting(old[key], new[key]) for key in old)
    return old == new


def _check_epoch_totals(totals: dict, epoch: int, backend, metrics) -> None:
    """Raise ``CheckpointStateError`` unless a checkpoint's running totals of ``epoch`` (``{'trainer': loop,
    'values': [...]}``) have the shapes every loop keeps with this run's ``metrics``: loss sum, sample count,
    each metric's statistics (a backend's own ``fit_epoch``: its ``epoch_totals_shapes``, the same layout)."""
    metric_shapes = [tuple(shape) for shape in metrics.shapes] if metrics is not None else []
    expected = backend.epoch_totals_shapes(metrics) or [(), ()] + metric_shapes
    try:
        shapes = [np.asarray(value, dtype=np.float64).shape for value in totals["values"]]
    except ValueError:  # ragged nested lists
        shapes = None
    if shapes != expected:
        raise CheckpointStateError(f"the checkpoint's running totals of epoch {epoch + 1} do not fit this run's "
                                   f"metrics; resume with the metrics of the interrupted run")


def _well_formed_totals(totals) -> bool:
    """Whether a checkpoint's running totals of the epoch in progress are absent or {'trainer': name, 'values':
    [numbers or nested lists of numbers]}."""
    def numeric(value):
        if isinstance(value, list):
            return all(numeric(item) for item in value)
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return totals is None or (isinstance(totals, dict) and set(totals) == {"trainer", "values"}
                              and isinstance(totals["trainer"], str) and isinstance(totals["values"], list)
                              and numeric(totals["values"]))


def _resume(target: str, trainer, callbacks, backend=None, metrics=None) -> int:
    """Restore the run from checkpoint file or directory ``target`` (``_resume_target``) into ``trainer``'s objects;
    returns the epoch to continue with.

    Rule for hyperparameters given anew: a learning rate or optimizer hyperparameter (betas, momentum,
    weight decay) that differs from the one the checkpointed run was started with wins, with a warning
    naming both (the options the run changed since, a schedule's cycled momentum, are restored). A new learning
    rate scales every param group's rate and every schedule's base rates by new / old: the rates a run started
    with the new rate would have there, for the schedules proportional to their base rate (all but
    ``OneCycleLR``, whose rates are its ``max_lr``'s), chained ones and groups of their own rates too. A schedule
    built with other settings than the saved run's (``step_size``, ``T_max``, ...) keeps them from here on, with a
    warning naming them. A different model, loss or optimizer class, or a loss of other settings (``reduction``,
    ``label_smoothing``, a function it holds: ``fit_options.loss_settings``), is an error, raised before anything
    changes.
    """
    import json
    import warnings

    from unidl.checkpoint import load_checkpoint
    from unidl.optim.lr_scheduler import given_settings_win
    from unidl.serialization import to_json

    model, optimizer, loader, history = trainer.model, trainer.optimizer, trainer.loader, trainer.history
    given = trainer.fit_settings

    optimizer.__dict__["_given_options_win"] = True  # (its load keeps the options that differ from the saved run's)
    try:
        with given_settings_win():  # (and each schedule's load keeps its settings given anew)
            info = load_checkpoint(target, model, optimizer,
                                   loader=loader if isinstance(loader, DataLoader) else None, callbacks=callbacks,
                                   loss=getattr(trainer, "loss", None),
                                   check=lambda metadata, path: _check_resumable(metadata, path, trainer, backend,
                                                                                 metrics))
    finally:
        optimizer.__dict__.pop("_given_options_win", None)
    extra = info.get("extra") or {}
    saved = extra.get("fit") or {}
    if "lr" in saved and saved["lr"] != given["lr"]:
        warnings.warn(f"resuming {info['path']!r} with lr={given['lr']!r} where the run started with "
                      f"lr={saved['lr']!r}: the new lr wins", UserWarning, stacklevel=3)
        _scale_rates(optimizer, callbacks, given["lr"], saved["lr"])
    given_hyper = json.loads(to_json(given["hyper"], "optimizer hyperparameters"))  # tuples as the file has lists
    changed = {k: (saved["hyper"].get(k), given["hyper"][k]) for k, v in given_hyper.items()
               if isinstance(saved.get("hyper"), dict) and saved["hyper"].get(k) != v}
    if changed:
        warnings.warn(f"resuming {info['path']!r} with changed optimizer hyperparameters "
                      + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
                      + ": the new values win", UserWarning, stacklevel=3)
    trainer.global_step = int(info["step"])
    restored = _restored_history(extra)
    history.history, history.epoch, history.logged_epochs = restored.history, restored.epoch, restored.logged_epochs
    start_epoch = loader.next_iteration()[0] if isinstance(loader, DataLoader) else int(info["epoch"]) + 1
    progress = extra.get("epoch_progress")
    ended = extra.get("epoch_ended")  # (checkpoints written before it: whether History holds the epoch yet)
    if not isinstance(loader, DataLoader) and (ended is False or ended is None and history.epochs == int(
            info["epoch"])):  # (written before its epoch ended, in a pipeline's position it does not hold: said)
        warnings.warn(f"resuming {info['path']!r}, written during epoch {int(info['epoch']) + 1} (at step "
                      f"{int(info['step'])}), on a {type(loader).__name__}, which cannot be moved to that position: "
                      f"training goes on from epoch {start_epoch + 1}, and the rest of epoch {int(info['epoch']) + 1} "
                      f"is not trained (nor logged in History). For a resume that continues at the next batch, feed "
                      f"fit a ud.data.DataLoader (its position is in the checkpoint), or resume from a checkpoint "
                      f"written at an epoch's end", RuntimeWarning, stacklevel=3)
    if progress and progress["samples"]:
        if progress["epoch"] == start_epoch:
            trainer.carried_epoch = progress
        elif progress["epoch"] == start_epoch - 1 and history.epochs == progress["epoch"]:
            # saved after the epoch's last batch, before its end: fit runs that end (validation, History entry,
            # callbacks) before the next epoch, with the epoch's logs as the uninterrupted run has them
            trainer.finished_epoch = (progress["epoch"], dict(_finished_epoch_logs(progress, metrics),
                                                              lr=progress.get("lr", optimizer.lr)))
    return start_epoch


def _restored_history(extra: dict) -> History:
    """The History a checkpoint's ``extra`` holds: its logs, the epochs logged and each log's epochs (a checkpoint
    written before these were saved: its logs, those of a value per epoch at every epoch, the others' epochs
    unknown)."""
    return History(extra.get("history"), extra.get("history_epoch"), extra.get("logged_epochs"))


def _scale_rates(optimizer, callbacks, new: float, old: float) -> None:
    """A new learning rate at a resume: every param group's rate, and every schedule's base rates, times new / old
    (each group set to ``new`` where the run started at 0)."""
    schedules = [s for s in (getattr(c, "schedule", None) for c in callbacks) if hasattr(s, "base_lrs")]
    if not old:  # (nothing to scale: each group at the rate its schedules give a run started at the new one)
        for schedule in schedules:
            schedule.base_lr = new
        if "_initial_lrs" in optimizer.__dict__:
            optimizer.__dict__["_initial_lrs"] = [new] * len(optimizer.param_groups)
        for index in range(len(optimizer.param_groups)):
            rate = new
            for schedule in schedules:  # (the factor of each: a chain multiplies them)
                rate *= schedule.group_lr_at(schedule.last_epoch, 1.0, index)
            optimizer.set_group_lr(index, rate)
        return
    ratio = new / old
    for index, group in enumerate(optimizer.param_groups):
        optimizer.set_group_lr(index, group["lr"] * ratio)
    for schedule in schedules:
        schedule.base_lrs = [rate * ratio for rate in schedule.base_lrs]
    if "_initial_lrs" in optimizer.__dict__:  # (the base rates a schedule built later starts from)
        optimizer.__dict__["_initial_lrs"] = [rate * ratio for rate in optimizer.__dict__["_initial_lrs"]]


def _finished_epoch_logs(progress: dict, metrics) -> dict:
    """The logs of an epoch from a checkpoint of its last batch: the loop's own logs there where it saved them
    (the epoch's logs, bit for bit), else from its totals (exact), else from its sums (an older checkpoint)."""
    if progress.get("logs") is not None:
        return dict(progress["logs"])
    totals = progress.get("totals")
    if totals is not None:
        return logs_from_totals(totals["values"], metrics)
    return {k: v / progress["samples"] for k, v in progress["sums"].items()}


def _whole_epoch_means(trainer, epoch: int, logs: dict) -> dict:
    """``logs`` of an epoch resumed part-way, as means over the whole epoch: the part trained before the
    checkpoint (its sums, saved in the checkpoint) and the part trained since (``logs``, means over it)."""
    from unidl.callbacks.checkpoint import samples_up_to

    carried, trainer.carried_epoch = trainer.carried_epoch, None
    if not carried or carried["epoch"] != epoch or not isinstance(trainer.loader, DataLoader):
        return logs
    total = samples_up_to(trainer.loader, len(trainer.loader))
    since = total - carried["samples"]
    return {key: ((carried["sums"][key] + value * since) / total if key in carried["sums"] else value)
            for key, value in logs.items()}


def _batches(data, batch_size, shard: bool = True):
    if isinstance(data, DataLoader) or _is_native_pipeline(data):
        return data
    if isinstance(data, (tuple, list)):
        return DataLoader(TensorDataset(*data), batch_size=batch_size, shard=shard)
    return DataLoader(TensorDataset(data), batch_size=batch_size, shard=shard)


def _inputs(batch):
    """What ``predict`` feeds the model from a batch: its first field, or the batch itself where a loader or
    pipeline yields bare tensors (a ``torch.utils.data.DataLoader`` over a tensor: its first sample was taken)."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if getattr(batch, "shape", None) is None:
        raise TypeError(f"predict takes batches of x, or tuples whose first field is x, got a {type(batch).__name__}")
    return batch


def predict(model, x, batch_size: int = 256):
    """Model outputs for ``x`` (an array, a tensor, nested lists of numbers, or a loader) in eval mode, as one NumPy
    array; a model whose forward returns a tuple, list or dict of tensors gives that structure of arrays, each joined
    over the batches, as Keras's ``predict``. A list of rows (nested lists of numbers, or arrays of one shape:
    ``list(x)``) is the input's rows, converted as ``ud.tensor`` converts them (they were taken as fields, and the
    first row alone predicted); a tuple, or a list of arrays of several shapes, is fields, the first of them the
    input (``predict(model, (x, y))``), as ``evaluate`` takes it."""
    shapes = {tuple(item.shape) for item in x if hasattr(item, "shape")} if isinstance(x, list) else set()
    if isinstance(x, list) and len(shapes) <= 1:
        from unidl.tensors import as_numpy_values

        try:
            x = as_numpy_values(x)
        except (TypeError, ValueError) as error:
            raise TypeError(f"predict: x given as a list is taken as rows of the input, but {error}") from None
    backend = model._backend
    forward = backend.predict_function(model)
    was_training = model.training
    model.eval()
    try:
        # every output on every rank of a data-parallel job: arrays are not sharded here
        outputs = [tree_map(to_numpy, forward(_inputs(batch))) for batch in _batches(x, batch_size, shard=False)]
    finally:
        model.train(was_training)
    return tree_map(_joined, *outputs) if outputs else np.zeros((0,))


def _joined(*parts) -> np.ndarray:
    """One output's arrays of the batches (``predict``), joined along the batch axis."""
    if np.ndim(parts[0]) == 0:
        raise TypeError("predict: the model's forward returned a scalar for a batch; predict joins per-sample "
                        "outputs along the batch axis")
    return np.concatenate(parts)


def evaluate(model, data=None, y=None, batch_size: int = 256, *, loss=None, metrics=None, return_dict: bool = True,
             sample_weight=None, weighted_metrics=None):
    """Mean loss (if ``loss`` is given: a module or a name, as in ``fit``) and ``metrics`` of ``model`` over
    ``data`` (``(x, y)``, ``x, y`` as in Keras, or a loader), in eval mode, each exact over all samples.

    ``sample_weight``: one weight per sample (arrays only): each sample's losses times its weight under the loss's
    own reduction, as in ``fit`` (Keras's ``sum_i w_i * loss_i / n`` for a 'mean' loss of one value a sample), and
    ``weighted_metrics`` (as in ``fit``) are weighted by them; ``metrics`` are not.

    ``batch_size``: samples per batch of arrays, 256 by default (Keras's ``evaluate`` takes 32); a loader batches
    itself. The metrics are exact over all samples whatever the batches. The loss is each batch's loss weighted by
    its sample count, so that it is the same for every ``batch_size`` (but for the rounding of the sums) only for a
    per-sample mean loss: a 'mean' reduction in which every sample counts alike. It changes with ``batch_size`` (as
    Keras's does) for a ``reduction='sum'`` loss (a batch's sum, not a sample's loss), a class-weighted loss
    (``CrossEntropyLoss(weight=...)``) and one with ``ignore_index``, whose batch means divide by the batch's class
    weights or kept targets, not by its sample count.

    ``metrics``: names or ``ud.metrics`` objects, as in ``fit`` (default: accuracy where the outputs are class
    scores and the loss, if any, is a classification loss). Returns a dict, or with ``return_dict=False``
    Keras's list: the loss first, then the metrics in the order given (a single value when there is one).
    """
    data = fit_options.data_of(data, y, "data")
    _fresh_first_samples(data)
    loss = None if loss is None else fit_options.resolve_loss(loss)
    arrays = fit_options.arrays_of(data)
    if arrays is not None and not len(arrays[0]):
        raise ValueError("evaluate got no samples")
    if sample_weight is not None:
        if arrays is None:
            raise ValueError("evaluate's sample_weight needs the data as arrays (x, y) (Keras's rule); got a "
                             "loader or dataset")
        batches = DataLoader(TensorDataset(*arrays, fit_options.check_sample_weight(sample_weight, len(arrays[1]))),
                             batch_size=batch_size)
    else:
        batches = _batches(data, batch_size)
    results = _evaluate_with(model, batches, loss,
                             accumulator_for(metrics, model, batches, loss, weighted_metrics=weighted_metrics),
                             weighted=sample_weight is not None)
    if return_dict:
        return results
    values = list(results.values())
    return values[0] if len(values) == 1 else values


def _check_batch_count(count: int, y) -> None:
    """``ShapeMismatchError`` unless a batch's targets ``y`` hold its ``count`` samples."""
    if int(tuple(y.shape)[0]) != count:
        raise ShapeMismatchError(f"evaluate: x has {count} samples but y has {tuple(y.shape)[0]}")


def _report_test_batch(listeners, index: int, loss, total: float, seen: int, metrics) -> None:
    """The running values of this rank's batches so far to each callback's ``on_test_batch_end`` (metrics'
    results cost, AUC's most: only for callbacks that listen)."""
    running = dict({"loss": total / seen} if loss is not None else {},
                   **(metrics.results() if metrics is not None else {}))
    for callback in listeners:
        callback.on_test_batch_end(index, running)


#: train steps a model keeps for later fits (``_fit_step``): a few optimizers, losses and option sets, oldest dropped
_TRAIN_STEPS_KEPT = 4


def _fit_step(model, loss, optimizer, summary, metrics, eager: bool, precision, accumulate: int) -> TrainStep:
    """``fit``'s ``TrainStep`` (its metrics' statistics inside it where ``summary`` is their function). Where the
    backend allows it (``Backend.reuses_train_steps``), the backend's step is kept in the model's structure cache
    and a later fit of the same model and optimizer, with every attribute of the model's modules as it was
    (``_settings_now``: a value a trace read, ``Dropout.p``, ``temperature``), the same loss with every attribute as
    it was or one that computes alike (``_computes_alike``), the same metrics (``MetricAccumulator.key``),
    ``eager``, precision, ``accumulate``, dtype and device in force, builds its ``TrainStep`` over it: a second fit
    on jax compiled every batch shape's program again. What the step keys its traces on itself (train/eval modes,
    the frozen set, input shapes and dtypes, an optimizer option its traces hold as a constant) retraces it as
    within one fit, and a changed structure (a layer replaced, a hook) empties the cache. Not in a data-parallel
    job, whose step broadcasts rank 0's weights when it is built."""
    options = dict(with_outputs=summary or True, eager=eager, check_finite=False, precision=precision,
                   accumulate=accumulate, check_trainable=False)  # (before_batch checks it)
    backend = model._backend
    if not backend.reuses_train_steps or process_group.job_of_step() is not None:
        return TrainStep(model, loss, optimizer, **options)
    kept = model.structure_cache().setdefault("train_steps", [])
    key = (None if summary is None else metrics.key, eager, precision, accumulate, config.get_dtype(),
           config.resolve_device(config._requested_device(), backend), _settings_now(model))
    loss_settings = _settings_now(loss)
    for index, entry in enumerate(kept):
        if entry[0] is optimizer and entry[2] == key and (
                entry[4] == loss_settings if entry[1] is loss else _computes_alike(entry[1], loss)):
            kept.append(kept.pop(index))  # (the most recently used last: the oldest unused is dropped first)
            return TrainStep(model, loss, optimizer, run=entry[3], **options)
    step = TrainStep(model, loss, optimizer, **options)
    kept[:] = [*kept[1 - _TRAIN_STEPS_KEPT:], (optimizer, loss, key, step._run, loss_settings)]
    return step


def _settings_now(*roots) -> tuple:
    """Every attribute of every module of ``roots`` (the model, the loss and their children), public and private,
    as it is now: a plain value (a number, a string, None, a tuple of them) as its type and value, another object
    by identity, held (``_Same``), so that its id cannot pass to a new object while the kept step lives. A step
    traced with a value its forward read (a child's ``Dropout.p``, a loss's ``label_smoothing`` or ``_weight``, a
    model's ``temperature``) is kept for that value only: a later fit with another builds its step again, as
    torch's and TensorFlow's fits, which build theirs every time, see it. Limits: a change inside an object (an
    array attribute written in place, a field of a plain object) is not seen, as within one fit; a forward that
    stores an attribute (``self.last = out``, a counter) changes the key at every trace, so such a model builds its
    step at every fit, as every model did before steps were kept."""
    return tuple((id(module), name, _setting(value))
                 for root in roots if root is not None
                 for module in (root.modules() if hasattr(root, "modules") else (root,))
                 for name, value in getattr(module, "__dict__", {}).items() if name not in _DERIVED_ATTRIBUTES)


#: a module's caches of what it derives from its structure and modes, written by the steps (the step keys its traces
#: on the modes itself)
_DERIVED_ATTRIBUTES = frozenset({"_structure_cache", "_training_modes"})
_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def _setting(value):
    """``value`` as a part of a kept step's key: a plain value (and a tuple of them) by its type and value (1, 1.0
    and True apart; a float by its bits: -0.0 apart from 0.0, a NaN equal to itself), any other object by
    identity."""
    kind = type(value)
    if kind is float:
        return kind, value.hex()
    if kind in _PLAIN:
        return kind, value
    if kind is tuple and all(type(item) in _PLAIN for item in value):
        return kind, tuple(_setting(item) for item in value)
    return _Same(value)


class _Same:
    """An object in a kept step's key, equal to a key part holding the very same object (and holding it: an id
    alone could be reused by a new object once the old one is freed)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return type(other) is _Same and other.value is self.value

    def __hash__(self):
        return id(self.value)


#: compiled evaluations a model keeps (``_evaluation_function``): a few losses and metric sets, the oldest dropped
_EVALUATIONS_KEPT = 4


def _evaluation_function(model, loss, per_sample, metrics, weighted: bool):
    """The backend's one compiled program per batch shape (``Backend.evaluation_function``) of a batch's eval-mode
    forward, ``loss`` (``per_sample``: its copy with reduction='none', weighted by a third field) and ``metrics``'
    statistics, ``(x, y[, weight]) -> (loss or None, statistics)``; None where the backend evaluates them apart.
    Kept in the model's structure cache for this loss object and these statistics (``MetricAccumulator.key``), so
    that ``fit``'s validation after every epoch and repeated ``evaluate`` calls reuse its programs."""
    cache = model.structure_cache() if hasattr(model, "structure_cache") else {}
    kept = cache.setdefault("evaluations", [])
    key = (None if metrics is None else metrics.key, weighted)
    for entry in kept:
        if entry[1] == key and _computes_alike(entry[0], loss):
            return entry[2]

    def evaluate(x, y, *weight):
        outputs = model(x)
        if per_sample is not None:
            value = fit_options.weighted_loss(loss, per_sample, outputs, y, weight[0])
        else:
            value = None if loss is None else loss(outputs, y)
        statistics = () if metrics is None else metrics.statistics(outputs, y, weight[0] if weight else None)
        return value, statistics

    compiled = model._backend.evaluation_function(model, evaluate, f"the evaluation of {type(model).__name__}", loss)
    if compiled is not None:
        kept[:] = [*kept[1 - _EVALUATIONS_KEPT:], (loss, key, compiled)]
    return compiled


def _computes_alike(kept, loss) -> bool:
    """Whether a compiled evaluation traced with loss ``kept`` computes ``loss`` too: the same object, or one of
    unidl's own loss classes built again with the same plain settings and no state (``evaluate(loss="mse")`` makes
    a new module each call, whose programs would compile again). A loss with buffers, parameters or children (a
    class weight) is matched only as itself: the program reads the state of the loss it was traced with."""
    if kept is loss:
        return True
    if type(kept) is not type(loss) or not type(loss).__module__.startswith("unidl."):
        return False
    if any(getattr(module, name, None) for module in (kept, loss) for name in ("_buffers", "_parameters", "_modules")):
        return False
    # (the attributes themselves, not ``loss_settings``'s JSON of them: two functions of one qualified name, two
    # lambdas, are one setting there but compute apart)
    settings = {name: value for name, value in vars(loss).items() if not name.startswith("_")}
    plain = all(value is None or type(value) in (bool, int, float, str) for value in settings.values())
    return plain and settings == {name: value for name, value in vars(kept).items() if not name.startswith("_")}


def _evaluate_with(model, batches, loss, metrics, weighted: bool = False, callbacks=()) -> dict:
    """``evaluate``'s loop over ``batches`` with a ``MetricAccumulator`` (or None) already bound to them;
    ``weighted``: each batch's third field is its samples' weights, which weight the loss and the weighted
    metrics (Keras's rule). ``callbacks`` (``fit``'s validation): their ``on_test_begin``, ``on_test_batch_begin``
    and ``on_test_batch_end`` (with the running values) and ``on_test_end`` (with the results), as Keras's."""
    for callback in callbacks:
        hook(callback, "on_test_begin")({})
    listeners = [callback for callback in callbacks if overrides(callback, "on_test_batch_end")]
    backend = model._backend
    per_sample = fit_options.per_sample_loss(loss) if weighted and loss is not None else None
    compiled = _evaluation_function(model, loss, per_sample, metrics, weighted)
    forward = backend.predict_function(model) if compiled is None else None
    was_training = model.training
    model.eval()
    total, seen = 0.0, 0
    if metrics is not None:
        metrics.reset()
    try:
        with empty_shares_allowed():  # (a rank's empty share is skipped below, the counts summed over ranks)
            iterator = iter(batches)
        for index, batch in enumerate(iterator):
            x, y = (batch[0], batch[1]) if weighted else xy(batch)  # (weights: a third field of unidl's own)
            if not int(tuple(x.shape)[0]):  # a data-parallel rank's empty share of a short last batch
                continue
            for callback in callbacks:
                hook(callback, "on_test_batch_begin")(index, {})
            count = int(tuple(x.shape)[0])
            if compiled is not None:  # the forward, the loss and the statistics as one program
                _check_batch_count(count, y)
                value, statistics = compiled(x, y, batch[2]) if weighted else compiled(x, y)
                if value is not None:
                    total += float(value) * count
                if metrics is not None:
                    metrics.add_statistics(statistics, y)
            else:
                outputs = forward(x)
                _check_batch_count(count, y)
                if per_sample is not None:
                    total += float(fit_options.weighted_loss(loss, per_sample, outputs, backend.tensor(to_numpy(y)),
                                                             backend.tensor(to_numpy(batch[2])))) * count
                elif loss is not None:
                    total += float(loss(outputs, backend.tensor(to_numpy(y)))) * count
                if metrics is not None:
                    metrics.add(outputs, y, batch[2] if weighted else None)
            seen += count
            if listeners:
                _report_test_batch(listeners, index, loss, total, seen, metrics)
    finally:
        model.train(was_training)
    total, seen = process_group.sum_over_ranks(total, seen)  # every rank's shard
    if not seen:
        raise ValueError("evaluate got no samples")
    results = {}
    if loss is not None:
        results["loss"] = total / seen
    if metrics is not None:
        flat = np.concatenate([t.reshape(-1) for t in metrics.totals])
        results.update(metrics.results_from_flat(process_group.sum_over_ranks(*flat.tolist())))  # every rank's
    for callback in callbacks:
        hook(callback, "on_test_end")(dict(results))
    return results
