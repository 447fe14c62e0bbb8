"""Regression metrics: mean absolute error and mean squared error over every element of every sample.

Statistics are the summed error and the number of elements, so the epoch's value is the exact mean over
all samples (Keras's ``MeanAbsoluteError`` / ``MeanSquaredError`` with equal-sized samples). Weighted
(``weighted_metrics``), each sample's errors and elements count its weight times, as Keras's weighted mean
of per-sample errors.
"""

from __future__ import annotations

from unidl import ops
import numpy as np

from unidl.metrics.metric import Metric, as_float, count, weigh


class _ElementwiseError(Metric):
    direction = "down"

    def bind(self, layout) -> None:
        super().bind(layout)
        out, target = layout.output_shape, layout.target_shape
        if out != target and not (out in ((), (1,)) and target in ((), (1,))):
            raise ValueError(f"{type(self).__name__} needs outputs and targets of the same shape; got {layout}")

    def statistic_shapes(self):
        return ((), ())

    def statistics(self, outputs, target, sample_weight=None):
        if sample_weight is None:
            difference = ops.reshape(as_float(outputs), (-1,)) - ops.reshape(as_float(target), (-1,))
            return ops.sum(self._error(difference)), count(difference)
        size = int(np.prod(self.layout.target_shape)) if self.layout.target_shape else 1  # elements per sample
        difference = ops.reshape(as_float(outputs), (-1, size)) - ops.reshape(as_float(target), (-1, size))
        return ops.sum(weigh(self._error(difference), sample_weight)), count(None, sample_weight) * float(size)

    def from_statistics(self, totals):
        total, elements = totals
        return float(total / elements) if elements else 0.0


class MeanAbsoluteError(_ElementwiseError):
    """mean |output - target| over all elements (named ``"mae"``)."""

    name = "mae"

    @staticmethod
    def _error(difference):
        return ops.abs(difference)


class MeanSquaredError(_ElementwiseError):
    """mean (output - target)^2 over all elements (named ``"mse"``)."""

    name = "mse"

    @staticmethod
    def _error(difference):
        return ops.square(difference)
