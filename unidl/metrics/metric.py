"""The ``Metric`` contract: per-batch sufficient statistics computed with ``ud.ops``, summed across batches.

A metric never averages batch values: each batch yields statistics (counts, a confusion matrix, sums of
errors, histograms over thresholds) that add up exactly, and the epoch's value is computed once from
their totals. The statistics are written with ``ud.ops``, so they run inside the training graph where
the step is a graph (Keras's trainer on keras) or as one compiled ``ud.function`` per batch elsewhere.
"""

from __future__ import annotations

import inspect

import numpy as np

from unidl import config, ops


class Layout:
    """What a metric needs to know about one sample before the first batch: the model's output shape
    and the target's shape and kind, without the batch axis (Python ints, so a graph never needs them)."""

    def __init__(self, output_shape: tuple, target_shape: tuple, target_is_integer: bool):
        self.output_shape, self.target_shape = tuple(output_shape), tuple(target_shape)
        self.target_is_integer = bool(target_is_integer)

    @property
    def num_outputs(self) -> int:
        return int(self.output_shape[-1]) if self.output_shape else 1

    def __repr__(self):
        kind = "integer" if self.target_is_integer else "float"
        return f"outputs {self.output_shape} and {kind} targets {self.target_shape} per sample"


class Metric:
    """A metric computed from summed per-batch statistics; subclasses define three methods:

    * ``bind(layout)``: check that the metric fits outputs and targets shaped as ``layout`` (a clear
      ``ValueError`` naming both otherwise) and fix what depends on it (the number of classes).
    * ``statistics(outputs, target, sample_weight=None)``: a tuple of float tensors (``statistics_dtype()``) for
      one batch, written with ``ud.ops`` (graph-safe: no Python on tensor values), whose sums over batches
      determine the metric.
      ``sample_weight`` (N,), given only to a metric with ``weighted`` set (Keras's ``weighted_metrics``),
      weights each sample's contribution to every statistic (a count becomes a sum of weights), so the
      value is Keras's weighted one; a subclass that takes no ``sample_weight`` cannot be weighted.
    * ``from_statistics(totals)``: the metric's value from the summed statistics (NumPy arrays).

    Standalone use, as torchmetrics: ``m.update(outputs, target)`` (or with ``sample_weight=``) per batch,
    then ``m.compute()``; ``m.reset()`` starts over. ``ud.fit`` and ``ud.evaluate`` drive the same three methods.
    """

    name = "metric"
    #: "up" where a larger value is better, "down" where a smaller one is, None where neither (a confusion matrix,
    #: a metric of the user's): what a callback's ``mode="auto"`` goes by, as Keras's ``_direction``
    direction = None
    scalar = True  # False for a value that is not one number (a confusion matrix): not a training log
    weighted = False  # True: statistics() is given the samples' weights (a Keras weighted metric)
    weights_given = False  # True once a standalone update() had a sample_weight (counts are then sums of weights)
    #: True for a metric made from its name (``ud.metrics.get("auc")``): ``fit``/``evaluate`` read it as the loss
    #: reads the outputs (logits beside a logit loss: ``probe.for_loss``); an object given keeps its options
    by_name = False

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name
        self.layout = None
        self._totals = None

    def bind(self, layout: Layout) -> None:
        self.layout = layout

    def check_target(self, target: np.ndarray, ignore_label: int | None = None) -> None:
        """Raise a clear error for target values the metric cannot count (a class label outside the outputs' classes,
        a binary target other than 0 or 1), where the values are known: arrays before training, each batch outside
        a compiled graph (``MetricAccumulator.add``, ``update``). ``ignore_label``: a label the loss ignores, which
        counts for no metric and is not checked. Nothing by default; inside a graph a metric counts such a value as
        a miss (no check can run there on every backend)."""

    @property
    def takes_weights(self) -> bool:
        """Whether ``statistics`` takes a ``sample_weight`` (required of a weighted metric; fit also weights the
        samples of an ignored label 0 through it)."""
        return "sample_weight" in inspect.signature(self.statistics).parameters

    def statistic_shapes(self) -> tuple:
        """The shape of each statistic (after ``bind``)."""
        raise NotImplementedError

    def statistics(self, outputs, target) -> tuple:
        raise NotImplementedError

    def from_statistics(self, totals: list):
        raise NotImplementedError

    # ---- standalone use ------------------------------------------------------
    def reset(self) -> None:
        self._totals = None
        self.weights_given = False

    def update(self, outputs, target, sample_weight=None) -> None:
        """Add one batch: ``outputs`` of the model and ``target`` (arrays or tensors of the backend in force),
        and optionally one weight per sample (weighting every statistic, as Keras's ``sample_weight``)."""
        from unidl.tensors import to_numpy

        outputs, target = np.asarray(to_numpy(outputs)), np.asarray(to_numpy(target))
        if self.layout is None:
            self.bind(layout_of(outputs, target))
        self.check_target(target)
        from unidl import config

        backend = config.backend()  # the statistics run on the backend in force
        if sample_weight is None:
            values = self.statistics(backend.tensor(outputs), backend.tensor(target))
        else:
            from unidl.fit_options import check_sample_weight

            if not self.takes_weights:
                raise TypeError(f"{type(self).__name__}.update(sample_weight=...): its statistics() takes no "
                                f"sample_weight, so it cannot weight samples; update without it")
            self.weights_given = True
            weight = check_sample_weight(np.asarray(to_numpy(sample_weight)), len(outputs))
            values = self.statistics(backend.tensor(outputs), backend.tensor(target),
                                     backend.tensor(weight.astype(statistics_dtype())))
        batch = [np.asarray(to_numpy(v), dtype=np.float64) for v in values]
        self._totals = batch if self._totals is None else [a + b for a, b in zip(self._totals, batch)]

    def compute(self):
        if self._totals is None:
            raise ValueError(f"{type(self).__name__}.compute() before any update(): no samples seen")
        return self.from_statistics(self._totals)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def layout_of(outputs: np.ndarray, target: np.ndarray) -> Layout:
    """The ``Layout`` of a batch of outputs and targets (NumPy arrays with a batch axis)."""
    return Layout(outputs.shape[1:], target.shape[1:], target.dtype.kind in "iub")


def statistics_dtype() -> str:
    """The dtype that metrics' statistics are computed in: the default floating dtype, float32, or float64 under
    ``ud.use_dtype("float64")``, where float32 statistics (weights, errors, scores) gave each backend's float32
    rounding (weighted accuracy, MAE, MSE ~1e-7 apart across backends, beside float64 losses)."""
    return config.get_dtype()


def as_float(x):
    return ops.cast(x, statistics_dtype())


def check_class_labels(owner: str, labels: np.ndarray, classes: int, ignore_label: int | None = None,
                       context: str | None = None) -> None:
    """``IndexOutOfRangeError`` (the losses' error for such labels) for integer labels outside [0, ``classes``),
    ``ignore_label`` aside: such a label is no class, and the metrics counted it as a hit (top-k), dropped it (the
    confusion matrix) or gave 0.0 silently (precision, recall, AUC). ``context`` says what the classes are (fit's
    check before training: the model's outputs and the loss's ``ignore_index``)."""
    from unidl.errors import IndexOutOfRangeError

    labels = np.asarray(labels).reshape(-1)
    if ignore_label is not None:
        labels = labels[labels != ignore_label]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise IndexOutOfRangeError(f"{owner} labels must lie in [0, {classes}) "
                                   f"{context or f'for outputs of {classes} classes'}; "
                                   f"found labels from {labels.min()} to {labels.max()}")


def check_binary_targets(owner: str, target: np.ndarray) -> None:
    """A ``ValueError`` naming the target values that are neither 0 nor 1, for a metric that reads each target as
    positive or negative. (Keras's ``BinaryAccuracy`` counts a soft target such as 0.7 as a miss, its ``AUC`` and
    ``Precision`` count it as a positive; unidl gave -0.25 accuracy and 1.2 AUC for targets of 2: none is taken.)"""
    values = np.asarray(target)
    wrong = np.unique(values[(values != 0) & (values != 1)])
    if wrong.size:
        shown = ", ".join(f"{v:g}" for v in wrong[:5].tolist()) + (", ..." if wrong.size > 5 else "")
        raise ValueError(f"{owner} needs targets of 0 or 1 (each sample or class positive or not); found {shown}. "
                         f"Soft targets (probabilities such as 0.7) are not taken: threshold them (y > 0.5) first")


def greater(a, b):
    """1.0 where ``a > b``, else 0.0 (NaN too: ``sign`` of NaN was 0 on torch and NaN elsewhere, so a NaN score
    counted differently per backend)."""
    difference = a - b
    zeros = ops.zeros_like(difference)
    return ops.where(difference > 0, zeros + 1.0, zeros)


def count(vector, sample_weight=None):
    """The length of a float32 vector (N,) as a scalar tensor (in a graph the batch size is unknown), or with
    ``sample_weight`` (N,) the sum of the weights."""
    if sample_weight is not None:
        return ops.sum(as_float(sample_weight))
    return ops.sum(ops.zeros_like(vector) + 1.0)


def weigh(values, sample_weight):
    """``values`` (N, ...) with each sample's entries times its weight (unchanged without weights)."""
    if sample_weight is None:
        return values
    weight = as_float(sample_weight)
    rank = len(tuple(values.shape))
    return values * (ops.reshape(weight, (-1,) + (1,) * (rank - 1)) if rank > 1 else weight)
