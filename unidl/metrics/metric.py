"""The ``Metric`` contract: per-batch sufficient statistics computed with ``ud.ops``, summed across batches.

A metric never averages batch values: each batch yields statistics (counts, a confusion matrix, sums of
errors, histograms over thresholds) that add up exactly, and the epoch's value is computed once from
their totals. The statistics are written with ``ud.ops``, so they run inside the training graph where
the step is a graph (Keras's trainer on keras) or as one compiled ``ud.function`` per batch elsewhere.
"""

from __future__ import annotations

import numpy as np

from unidl import ops


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
    * ``statistics(outputs, target)``: a tuple of float32 tensors for one batch, written with ``ud.ops``
      (graph-safe: no Python on tensor values), whose sums over batches determine the metric.
    * ``from_statistics(totals)``: the metric's value from the summed statistics (NumPy arrays).

    Standalone use, as torchmetrics: ``m.update(outputs, target)`` per batch, then ``m.compute()``;
    ``m.reset()`` starts over. ``ud.fit`` and ``ud.evaluate`` drive the same three methods.
    """

    name = "metric"
    scalar = True  # False for a value that is not one number (a confusion matrix): not a training log

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name
        self.layout = None
        self._totals = None

    def bind(self, layout: Layout) -> None:
        self.layout = layout

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

    def update(self, outputs, target) -> None:
        """Add one batch: ``outputs`` of the model and ``target`` (arrays or tensors of the backend in force)."""
        from unidl.tensors import to_numpy

        outputs, target = np.asarray(to_numpy(outputs)), np.asarray(to_numpy(target))
        if self.layout is None:
            self.bind(layout_of(outputs, target))
        from unidl import config

        backend = config.backend()  # the statistics run on the backend in force
        values = self.statistics(backend.tensor(outputs), backend.tensor(target))
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


def as_float(x):
    return ops.cast(x, "float32")


def greater(a, b):
    """1.0 where ``a > b``, else 0.0, from ops every backend has (no comparison op is needed in the graph)."""
    return ops.relu(ops.sign(a - b))


def count(vector):
    """The length of a float32 vector (N,) as a scalar tensor (in a graph the batch size is unknown)."""
    return ops.sum(ops.zeros_like(vector) + 1.0)
