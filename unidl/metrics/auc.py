"""Area under the ROC curve, thresholded as Keras's ``AUC`` (not exact: see ``AUC``), binary or one-vs-rest.

Exact AUC needs every score of the epoch at once; a thresholded AUC needs only counts per threshold,
which add up across batches and stay in the graph, which is why Keras computes it this way too.
"""

from __future__ import annotations

import numpy as np

from unidl import ops
from unidl.metrics.classification import classification_kind
from unidl.metrics.metric import Metric, as_float, check_binary_targets, check_class_labels, greater


class AUC(Metric):
    """ROC AUC: binary, or one-vs-rest macro-averaged over classes, as scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro")``.

    Binary: one score per sample (N,) / (N, 1) against 0/1 targets, or scores (N, 2) against integer
    labels (the area of class 1's score). Multi-class: scores (N, C) against integer labels (N,) with
    C > 2, or against one-hot targets (N, C); each class's score against "this class or not" gives one
    area, and the metric is their mean (a class absent from the targets, or present in all of them, has
    no area and is left out of the mean; with none left the value is 0).

    Each area is Keras's ``AUC(curve='ROC', summation_method='interpolation')``: true and false positives
    are counted at Keras's ``num_thresholds`` thresholds, i / (num_thresholds - 1) inside [0, 1] and -eps, 1 + eps
    at its ends, and the area is the trapezoidal sum over the resulting ROC points. It approaches scikit-learn's exact
    ``roc_auc_score`` as ``num_thresholds`` grows (scores closer than 1 / (num_thresholds - 1) count as
    ties). Scores are probabilities, clipped into [0, 1] as Keras clips them; ``from_logits=True`` applies a
    sigmoid first (a softmax for (N, C), but a sigmoid each for multi-label scores). ``metrics=["auc"]``
    beside a logit loss (``CrossEntropyLoss``, ``BCEWithLogitsLoss``, ``NLLLoss``) in ``fit``/``evaluate`` takes
    ``from_logits=True`` (``probe.for_loss``).
    The counts come from a histogram of each area's scores over the thresholds' buckets (a weighted
    bincount: O(N * areas) memory per batch, not O(N * areas * num_thresholds)), summed over batches; a
    weighted metric (``weighted_metrics``) counts each sample's weight, as Keras's ``sample_weight``.
    """

    direction = "up"
    name = "auc"
    #: True: (N, C) scores of classes each on its own against multi-hot targets (beside a binary cross-entropy:
    #: ``probe.for_loss``), whose logits take a sigmoid each, not a softmax across them
    multi_label = False

    def __init__(self, num_thresholds: int = 200, from_logits: bool = False, name: str | None = None):
        if not isinstance(num_thresholds, int) or num_thresholds < 3:
            raise ValueError(f"AUC num_thresholds must be an integer > 2, got {num_thresholds!r}")
        super().__init__(name)
        self.num_thresholds, self.from_logits = num_thresholds, bool(from_logits)

    def bind(self, layout) -> None:
        super().bind(layout)
        self.kind = classification_kind(layout, "AUC")
        # the areas computed: one (binary, and class 1 of two scores against labels) or one per class
        self.num_areas = 1 if self.kind == "binary" or (self.kind == "sparse" and layout.num_outputs == 2) \
            else layout.num_outputs

    def statistic_shapes(self):
        # per area, the (weighted) positives and negatives in each of the num_thresholds + 1 buckets that the
        # thresholds cut [0, 1] into: a histogram, whose reverse cumulative sums are the counts per threshold
        return ((self.num_areas, self.num_thresholds + 1), (self.num_areas, self.num_thresholds + 1))

    def check_target(self, target, ignore_label=None) -> None:
        if self.kind == "sparse":
            check_class_labels("AUC", target, self.layout.num_outputs, ignore_label)
        else:  # (a target of 2 counted as two positives and -1 negatives: an area of 1.2)
            check_binary_targets("AUC", target)

    def _scores_and_positives(self, outputs, target) -> tuple:
        """Scores (N, areas) and the weights (N, areas) of each sample as a positive and as a negative of each
        area: 0/1, and 0 for both where the target is no class (inside a graph, where no check runs: a label
        outside [0, C) counts for no area; a binary target outside [0, 1] is clipped into it)."""
        scores = as_float(outputs)
        if self.kind == "binary":
            scores = ops.reshape(scores, (-1, 1))
            positive = ops.clip(ops.reshape(as_float(target), (-1, 1)), 0.0, 1.0)
            return (ops.sigmoid(scores) if self.from_logits else scores), positive, 1.0 - positive
        if self.from_logits:  # (multi-label logits, each class on its own: a sigmoid each)
            scores = ops.sigmoid(scores) if self.multi_label else ops.softmax(scores, -1)
        if self.kind == "categorical":
            positive = ops.clip(as_float(target), 0.0, 1.0)
            return scores, positive, 1.0 - positive
        positive = as_float(ops.one_hot(ops.reshape(target, (-1,)), self.layout.num_outputs))
        negative = ops.sum(positive, -1, keepdim=True) - positive  # (a row of zeros for a label of no class)
        if self.num_areas == 1:  # two scores against labels: class 1 is the positive class
            return scores[:, 1:], positive[:, 1:], negative[:, 1:]
        return scores, positive, negative

    def statistics(self, outputs, target, sample_weight=None):
        """Histograms of the positives' and the negatives' scores over the thresholds' buckets, in O(N * areas)
        memory (a weighted bincount): a score's bucket is the number of thresholds strictly below it, so the
        true positives at threshold j are the positives in buckets above j."""
        scores, positive, negative = self._scores_and_positives(outputs, target)
        buckets = self._buckets(scores)  # (N, areas) int64 in [0, num_thresholds]
        width = self.num_thresholds + 1
        ids = ops.reshape(buckets + ops.reshape(ops.arange(self.num_areas, dtype="int64") * width, (1, -1)), (-1,))
        if sample_weight is not None:
            weight = ops.reshape(as_float(sample_weight), (-1, 1))
            positive, negative = positive * weight, negative * weight
        size = self.num_areas * width
        return tuple(ops.reshape(ops.segment_sum(ops.reshape(values, (-1,)), ids, size), (self.num_areas, width))
                     for values in (positive, negative))

    def _buckets(self, scores):
        """The number of thresholds strictly below each score, (N, areas) int64 in [0, T], for Keras's thresholds:
        -eps, i / (T - 1) for i = 1 .. T - 2, 1 + eps. A score is clipped into [0, 1] as Keras's ``AUC`` clips it
        (above the first threshold, below the last), and lies above the interior threshold i when ``score * (T - 1)
        > i`` in the statistics' dtype (float32 unless float64 is the default), Keras's own test (``ceil(score *
        (T - 1)) - 1``, its bucket); NaN lies below every threshold. (The thresholds were j (1 + 2 eps) / (T - 1) -
        eps, which moved every interior one: a score on the grid, 0.25 of T = 5, counted above it, and the area
        differed from Keras's and scikit-learn's.)"""
        steps = self.num_thresholds - 1
        clipped = ops.where(scores == scores, ops.clip(scores, 0.0, 1.0), ops.zeros_like(scores))
        scaled = clipped * float(steps)
        whole = ops.cast(scaled, "int64")  # (floor: scaled >= 0)
        above = whole - 1 + ops.cast(greater(scaled, ops.cast_like(whole, scaled)), "int64")  # interior ones: ceil - 1
        buckets = ops.clip(above, 0, steps - 1) + 1
        return ops.where(scores == scores, buckets, ops.zeros_like(buckets))

    def from_statistics(self, totals):
        positives, negatives = (np.asarray(t, dtype=np.float64) for t in totals)
        # at threshold j: the samples in buckets j + 1 .. T (scores above it)
        true_positives = np.cumsum(positives[:, ::-1], axis=1)[:, ::-1][:, 1:]
        false_positives = np.cumsum(negatives[:, ::-1], axis=1)[:, ::-1][:, 1:]
        areas = []
        for tp, fp, p, n in zip(true_positives, false_positives, positives.sum(1), negatives.sum(1)):
            if p and n:
                tpr, fpr = tp / p, fp / n
                areas.append(float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2)))
        return float(np.mean(areas)) if areas else 0.0
