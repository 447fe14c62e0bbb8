"""Classification metrics: accuracy, top-k accuracy, and those of the confusion matrix (precision, recall, F1).

Outputs and targets may be class scores (N, C) against integer labels (N,) (or (N, 1)), scores (N, C)
against one-hot or probability targets (N, C), or one score per sample (N,) / (N, 1) against 0/1 targets
(binary: a sample is predicted positive when its score exceeds ``threshold``, 0.5 as in Keras, which
suits probabilities; pass ``threshold=0.0`` for logits). Statistics are counts, summed over batches, so
an epoch's value is exact, never a mean of batch values.

A label outside [0, C) is an ``IndexOutOfRangeError``, and a binary or multi-hot target other than 0 or 1 (a
soft target such as 0.7 too) a ``ValueError``, wherever the values are known (arrays before training, each batch
of ``evaluate``, validation and unidl's own epoch loop); inside a framework's graph (Keras's trainer) such a
sample is a miss for every metric.
"""

from __future__ import annotations

import numpy as np

from unidl import ops
from unidl.metrics.metric import Metric, as_float, check_binary_targets, check_class_labels, count, greater, weigh

AVERAGES = ("macro", "micro", "weighted", "binary")


def classification_kind(layout, what: str) -> str:
    """'sparse', 'categorical' or 'binary' for outputs and targets shaped as ``layout``, or a ValueError."""
    out, target = layout.output_shape, layout.target_shape
    if len(out) == 1 and out[0] > 1:
        if layout.target_is_integer and target in ((), (1,)):
            return "sparse"
        if not layout.target_is_integer and target == out:
            return "categorical"
    if out in ((), (1,)) and target in ((), (1,)):
        return "binary"
    raise ValueError(f"{what} needs class scores (N, C) against integer labels (N,) or one-hot targets (N, C), "
                     f"or one score per sample (N,) or (N, 1) against 0/1 targets; got {layout}")


class _Classification(Metric):
    """Shared by the classification metrics: the kind of outputs and targets, and predicted/true labels."""

    #: True: multi-label scores (N, C) against multi-hot targets (N, C), each class on its own (``fit`` sets it
    #: beside a binary cross-entropy loss: ``probe.for_loss``)
    multi_label = False

    def __init__(self, threshold: float = 0.5, name: str | None = None):
        super().__init__(name)
        self.threshold = float(threshold)

    def bind(self, layout) -> None:
        super().bind(layout)
        self.kind = "multi_label" if self.multi_label else classification_kind(layout, type(self).__name__)
        self.num_classes = 2 if self.kind == "binary" else layout.num_outputs

    def check_target(self, target, ignore_label=None) -> None:
        if self.kind == "sparse":
            check_class_labels(type(self).__name__, target, self.num_classes, ignore_label)
        elif self.kind in ("binary", "multi_label"):
            check_binary_targets(type(self).__name__, target)

    def _labels(self, outputs, target) -> tuple:
        """(predicted, true) class indices, (N,) int64 tensors; a true class outside [0, C) (a binary target other
        than 0 or 1: class 2) is no class, whose one-hot row is zeros: a miss in every count."""
        if self.kind == "binary":
            predicted = greater(ops.reshape(as_float(outputs), (-1,)), self.threshold)
            truth = ops.reshape(as_float(target), (-1,))  # (a cast to int64 read 0.7 as class 0)
            true = ops.where(truth == 0.0, truth, ops.where(truth == 1.0, truth, ops.zeros_like(truth) + 2.0))
            return ops.cast(predicted, "int64"), ops.cast(true, "int64")
        predicted = ops.argmax(outputs, -1)
        true = ops.reshape(target, (-1,)) if self.kind == "sparse" else ops.argmax(target, -1)
        return predicted, true

    def _one_hot(self, labels):
        return as_float(ops.one_hot(labels, self.num_classes))


class _Fraction:
    """A metric whose statistics are (a count of hits, a count of samples), weighted or not, and whose value is
    their ratio (0 before any sample): the accuracies, which improve upwards."""

    direction = "up"

    def statistic_shapes(self):
        return ((), ())

    def from_statistics(self, totals):
        hits, seen = totals
        return float(hits / seen) if seen else 0.0


class Accuracy(_Fraction, _Classification):
    """The fraction of samples whose predicted class (argmax of the scores; score > ``threshold`` for one
    score per sample) is the true class. Statistics: (correct, seen)."""

    name = "accuracy"

    def statistics(self, outputs, target, sample_weight=None):
        predicted, true = self._labels(outputs, target)
        hits = ops.sum(self._one_hot(predicted) * self._one_hot(true), -1)
        return ops.sum(weigh(hits, sample_weight)), count(hits, sample_weight)


class BinaryAccuracy(_Fraction, Metric):
    """Keras's ``BinaryAccuracy``: element by element, whether the score exceeds ``threshold`` (0.5 for
    probabilities; 0.0 for logits) as the 0/1 target says, averaged over each sample's elements and then over the
    samples. For one score per sample (N,) or (N, 1), and for multi-label scores (N, C) against multi-hot targets
    (N, C), which ``Accuracy`` reads as one class per sample (the argmax). Statistics: (the samples' fractions
    right, summed; samples)."""

    name = "binary_accuracy"

    def __init__(self, threshold: float = 0.5, name: str | None = None):
        super().__init__(name)
        self.threshold = float(threshold)

    def bind(self, layout) -> None:
        super().bind(layout)
        out, target = layout.output_shape, layout.target_shape
        if not (out == target or (out in ((), (1,)) and target in ((), (1,)))):
            raise ValueError(f"BinaryAccuracy compares each score with its 0/1 target, so outputs and targets need "
                             f"one shape per sample ((N,), (N, 1) or (N, C) both); got {layout}")
        self._width = int(np.prod(out)) if out else 1

    def check_target(self, target, ignore_label=None) -> None:
        check_binary_targets(type(self).__name__, target)

    def statistics(self, outputs, target, sample_weight=None):
        scores = ops.reshape(as_float(outputs), (-1, self._width))
        truth = ops.reshape(ops.cast_like(target, scores), (-1, self._width))
        # Keras's equal(y_true, score > threshold): a target other than 0 or 1 is a miss (1 - |p - t| gave -1 for 2)
        right = ops.mean(as_float(greater(scores, self.threshold) == truth), -1)
        return ops.sum(weigh(right, sample_weight)), count(right, sample_weight)


class TopKAccuracy(_Fraction, _Classification):
    """The fraction of samples whose true class is among the ``k`` highest scores, as Keras's
    ``TopKCategoricalAccuracy`` and TensorFlow's ``in_top_k``: the true class counts when fewer than ``k``
    classes score strictly higher (a tie at the boundary counts as a hit). Named ``"top5"``, ``"top_k"`` (k=5)
    or ``"top<k>"``. Needs class scores (N, C)."""


    def __init__(self, k: int = 5, name: str | None = None):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"TopKAccuracy k must be a positive integer, got {k!r}")
        super().__init__(name=name or f"top{k}_accuracy")
        self.k = k

    def bind(self, layout) -> None:
        super().bind(layout)
        if self.kind == "binary":
            raise ValueError(f"TopKAccuracy needs class scores (N, C) with C > 1; got {layout}")

    def statistics(self, outputs, target, sample_weight=None):
        scores = as_float(outputs)
        _, true = self._labels(outputs, target)
        true_score = ops.sum(scores * self._one_hot(true), -1, keepdim=True)
        higher = ops.sum(greater(scores, true_score), -1)  # classes scoring strictly above the true one
        finite = ops.sum(scores - scores, -1) == 0  # (a NaN or infinite score in a row: a miss, as TF's in_top_k)
        known = ops.sum(self._one_hot(true), -1)  # (0 for a label outside [0, C): a miss, not a true score of 0)
        hits = greater(self.k - higher, 0.5) * ops.cast_like(finite, higher) * known
        return ops.sum(weigh(hits, sample_weight)), count(hits, sample_weight)


class ConfusionMatrix(_Classification):
    """The (C, C) matrix of counts: row = true class, column = predicted class (scikit-learn's layout).
    Its value is an array, so it is not a training log: use it with ``ud.evaluate`` or standalone. Counts are
    integers; weighted (``weighted_metrics``, or a standalone ``update(..., sample_weight=w)``), each entry is the
    sum of its samples' weights (floats, scikit-learn's ``confusion_matrix(..., sample_weight=w)``)."""

    name = "confusion_matrix"
    scalar = False

    def statistic_shapes(self):
        return ((self.num_classes, self.num_classes),)

    def statistics(self, outputs, target, sample_weight=None):
        predicted, true = self._labels(outputs, target)
        return (ops.matmul(ops.transpose(weigh(self._one_hot(true), sample_weight), 0, 1), self._one_hot(predicted)),)

    def from_statistics(self, totals):
        if self.weighted or self.weights_given:  # (rounding them to integers lost the weights)
            return np.asarray(totals[0], dtype=np.float64)
        return np.rint(totals[0]).astype(np.int64)


class _FromConfusion(_Classification):
    """A per-class ratio of the confusion matrix's counts, averaged as ``average`` says:

    * 'macro': the unweighted mean over all C classes (a class with no predictions has precision 0);
    * 'micro': from the counts summed over classes;
    * 'weighted': the mean weighted by each class's number of true samples;
    * 'binary': class 1 only (the default for one score per sample; 'macro' otherwise).

    Statistics: per class, true positives, predictions and true samples (3 vectors of C, not the C x C matrix).
    """

    direction = "up"

    def __init__(self, average: str | None = None, threshold: float = 0.5, name: str | None = None):
        if average is not None and average not in AVERAGES:
            raise ValueError(f"{type(self).__name__} average must be one of {list(AVERAGES)}, got {average!r}")
        super().__init__(threshold, name)
        self.average = average

    def bind(self, layout) -> None:
        super().bind(layout)
        if self.average == "binary" and self.num_classes > 2:  # (it gave class 1's value alone, as scikit-learn
            # refuses: "Target is multiclass but average='binary'")
            raise ValueError(f"{type(self).__name__} average='binary' reads class 1 of two classes, but the outputs "
                             f"hold {self.num_classes} classes; choose one of 'macro', 'micro', 'weighted'")
        self._average = self.average or ("binary" if self.kind == "binary" else "macro")

    def statistic_shapes(self):
        return ((self.num_classes,),) * 3

    def statistics(self, outputs, target, sample_weight=None):
        if self.kind == "multi_label":  # each class on its own: score > threshold against its 0/1 target
            predicted = greater(as_float(outputs), self.threshold)
            predicted, true = weigh(predicted, sample_weight), as_float(as_float(target) == 1)  # (bools too)
        else:
            predicted, true = self._labels(outputs, target)
            predicted, true = weigh(self._one_hot(predicted), sample_weight), self._one_hot(true)
        weighted_true = weigh(true, sample_weight)
        return ops.sum(predicted * true, 0), ops.sum(predicted, 0), ops.sum(weighted_true, 0)

    def from_statistics(self, totals):
        tp, predicted, actual = (np.asarray(t, dtype=np.float64) for t in totals)
        if self._average == "micro":
            return float(self._ratio(tp.sum(keepdims=True), predicted.sum(keepdims=True), actual.sum(keepdims=True))[0])
        values = self._ratio(tp, predicted, actual)
        if self._average == "binary":
            return float(values[1])
        if self._average == "weighted":
            return float((values * actual).sum() / actual.sum()) if actual.sum() else 0.0
        return float(values.mean())

    @staticmethod
    def _ratio(tp, predicted, actual):
        raise NotImplementedError


def _divide(a, b):
    """a / b per class, 0 where b is 0 (scikit-learn's zero_division=0)."""
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


class Precision(_FromConfusion):
    """Of the samples predicted as a class, the fraction that belong to it: tp / (tp + fp)."""

    name = "precision"

    @staticmethod
    def _ratio(tp, predicted, actual):
        return _divide(tp, predicted)


class Recall(_FromConfusion):
    """Of the samples of a class, the fraction predicted as it: tp / (tp + fn)."""

    name = "recall"

    @staticmethod
    def _ratio(tp, predicted, actual):
        return _divide(tp, actual)


class F1Score(_FromConfusion):
    """The harmonic mean of precision and recall: 2 tp / (2 tp + fp + fn) (per class, then averaged; 'micro'
    from the summed counts), as scikit-learn's ``f1_score``."""

    name = "f1"

    @staticmethod
    def _ratio(tp, predicted, actual):
        return _divide(2 * tp, predicted + actual)
