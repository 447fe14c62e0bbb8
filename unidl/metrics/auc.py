"""Area under the ROC curve, thresholded as Keras's ``AUC`` (not exact: see ``AUC``).

Exact AUC needs every score of the epoch at once; a thresholded AUC needs only counts per threshold,
which add up across batches and stay in the graph, which is why Keras computes it this way too.
"""

from __future__ import annotations

import numpy as np

from unidl import ops
from unidl.metrics.classification import classification_kind
from unidl.metrics.metric import Metric, as_float, greater


class AUC(Metric):
    """ROC AUC of one score per sample (N,) / (N, 1) against 0/1 targets, or of class 1 of scores (N, 2)
    against integer labels.

    As Keras's ``AUC(curve='ROC', summation_method='interpolation')``: true and false positives are counted
    at ``num_thresholds`` evenly spaced thresholds over [0, 1] (the end ones just outside it), and the
    area is the trapezoidal sum over the resulting ROC points. It approaches scikit-learn's exact
    ``roc_auc_score`` as ``num_thresholds`` grows (scores closer than 1 / (num_thresholds - 1) count as
    ties). Scores are probabilities; ``from_logits=True`` applies a sigmoid (softmax for (N, 2)) first.
    """

    name = "auc"

    def __init__(self, num_thresholds: int = 200, from_logits: bool = False, name: str | None = None):
        if not isinstance(num_thresholds, int) or num_thresholds < 3:
            raise ValueError(f"AUC num_thresholds must be an integer > 2, got {num_thresholds!r}")
        super().__init__(name)
        self.num_thresholds, self.from_logits = num_thresholds, bool(from_logits)

    def bind(self, layout) -> None:
        super().bind(layout)
        kind = classification_kind(layout, "AUC")
        if kind != "binary" and not (kind == "sparse" and layout.num_outputs == 2):
            raise ValueError(f"AUC is binary: it needs one score per sample (N,) or (N, 1) against 0/1 targets, "
                             f"or scores (N, 2) against integer labels; got {layout}")
        self.kind = kind

    def statistic_shapes(self):
        return ((self.num_thresholds,), (self.num_thresholds,), (), ())

    def statistics(self, outputs, target):
        scores = as_float(outputs)
        if self.kind == "binary":
            scores = ops.reshape(scores, (-1,))
            scores = ops.sigmoid(scores) if self.from_logits else scores
        else:
            scores = (ops.softmax(scores, -1) if self.from_logits else scores)[:, 1]
        positive = ops.reshape(as_float(target), (-1,))
        epsilon = 1e-7
        thresholds = ops.arange(self.num_thresholds, dtype="float32") * ((1 + 2 * epsilon) / (self.num_thresholds - 1))
        above = greater(ops.unsqueeze(scores, 1), ops.unsqueeze(thresholds - epsilon, 0))  # (N, thresholds)
        true_positives = ops.reshape(ops.matmul(ops.unsqueeze(positive, 0), above), (-1,))
        false_positives = ops.reshape(ops.matmul(ops.unsqueeze(1.0 - positive, 0), above), (-1,))
        return true_positives, false_positives, ops.sum(positive), ops.sum(1.0 - positive)

    def from_statistics(self, totals):
        true_positives, false_positives, positives, negatives = (np.asarray(t, dtype=np.float64) for t in totals)
        tpr = true_positives / positives if positives else np.zeros_like(true_positives)
        fpr = false_positives / negatives if negatives else np.zeros_like(false_positives)
        return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))
