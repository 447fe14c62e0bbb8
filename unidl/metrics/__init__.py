"""``ud.metrics``: metrics for ``ud.fit`` and ``ud.evaluate``, by name (``metrics=["accuracy", "top5"]``) or object.

Every metric sums per-batch sufficient statistics (counts, a confusion matrix, error sums, counts per
threshold), so epoch values are exact, never a mean of batch means; the statistics are written with
``ud.ops`` and run in the training graph where the backend's step is one (see ``metric.py``).
"""

from __future__ import annotations

import re

from unidl.metrics.accumulator import MetricAccumulator
from unidl.metrics.auc import AUC
from unidl.metrics.classification import (Accuracy, BinaryAccuracy, ConfusionMatrix, F1Score, Precision, Recall,
                                          TopKAccuracy)
from unidl.metrics.metric import Layout, Metric
from unidl.metrics.regression import MeanAbsoluteError, MeanSquaredError

_NAMED = {
    "accuracy": Accuracy, "acc": Accuracy, "sparse_categorical_accuracy": Accuracy,
    "categorical_accuracy": Accuracy, "binary_accuracy": BinaryAccuracy,
    "top_k": lambda: TopKAccuracy(5), "top_k_accuracy": lambda: TopKAccuracy(5),
    "sparse_top_k_categorical_accuracy": lambda: TopKAccuracy(5),
    "top_k_categorical_accuracy": lambda: TopKAccuracy(5),
    "precision": Precision, "recall": Recall, "f1": F1Score,
    "precision_macro": lambda: Precision("macro"), "precision_micro": lambda: Precision("micro"),
    "recall_macro": lambda: Recall("macro"), "recall_micro": lambda: Recall("micro"),
    "f1_macro": lambda: F1Score("macro"), "f1_micro": lambda: F1Score("micro"),
    "confusion_matrix": ConfusionMatrix,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "auc": AUC,
}
NAMES = tuple(_NAMED) + ("top<k>",)
"""Every metric name ``get`` knows (``top<k>``: any k, as ``top5``)."""


def get(identifier) -> Metric:
    """A metric from its name (logged under that name) or a ``Metric`` object (returned as it is).
    Names: 'accuracy', 'top5' (any ``top<k>``), 'top_k' (k=5), 'precision', 'recall', 'f1' (each also
    '_macro'/'_micro'), 'confusion_matrix', 'mae', 'mse', 'auc', and Keras's spellings of these."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        top = re.fullmatch(r"top_?(\d+)(_accuracy)?", key)
        if top and int(top.group(1)) >= 1:
            metric = TopKAccuracy(int(top.group(1)))
        elif key in _NAMED:
            metric = _NAMED[key]()
        else:
            raise ValueError(f"unknown metric {identifier!r}; valid names: {', '.join(NAMES)}, "
                             f"or a ud.metrics.Metric object")
        metric.name, metric.by_name = identifier, True
        return metric
    raise TypeError(f"a metric must be a name ({', '.join(NAMES)}) or a ud.metrics.Metric object, "
                    f"got {type(identifier).__name__}")


def get_all(identifiers) -> list:
    """``get`` of each, with a clear error for two metrics logged under one name."""
    if isinstance(identifiers, (str, Metric)):
        identifiers = [identifiers]
    metrics = [get(identifier) for identifier in identifiers or ()]
    names = [metric.name for metric in metrics]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two metrics are named {duplicates}: give one of them another name (name=...)")
    reserved = [name for name in names if name in ("loss", "lr") or name.startswith("val_")]
    if reserved:  # (a metric named 'loss' replaced the loss in the logs, which callbacks and the NaN check read)
        raise ValueError(f"metric names {reserved} are fit's own log entries ('loss', 'lr', and 'val_' before a "
                         f"validation value): give the metric another name (name=...)")
    return metrics


__all__ = ["Metric", "Layout", "MetricAccumulator", "Accuracy", "BinaryAccuracy", "TopKAccuracy", "ConfusionMatrix",
           "Precision", "Recall", "F1Score", "MeanAbsoluteError", "MeanSquaredError", "AUC", "get", "get_all", "NAMES"]
