"""``ud.fit``'s metrics as one ``keras.metrics.Metric``, so that Keras's own trainer computes them in its graph.

The statistics are the ``MetricAccumulator``'s (written with ``ud.ops``), summed in Keras variables from
the epoch's start; ``result()`` hands them over as one vector, which ``epoch_logs`` turns into values.
"""

from __future__ import annotations

import keras
import numpy as np

from unidl.metrics.metric import statistics_dtype

STATISTICS = "unidl_metric_statistics"  # the log under which Keras reports the statistics vector


class NativeMetrics(keras.metrics.Metric):
    """The statistics of a ``MetricAccumulator``, summed over Keras's batches in the statistics' dtype (float32 unless
    float64 is the default: float32 counts are exact below 2**24)."""

    def __init__(self, accumulator):
        self.statistics_dtype = statistics_dtype()
        super().__init__(name=STATISTICS, dtype=self.statistics_dtype)
        self._accumulator = accumulator
        self.totals = [self.add_variable(shape=shape, initializer="zeros", dtype=self.statistics_dtype,
                                         name=f"statistic_{i}")
                       for i, shape in enumerate(accumulator.shapes)]

    def update_state(self, y_true, y_pred, sample_weight=None):
        for total, value in zip(self.totals, self._accumulator.statistics(y_pred, y_true)):
            total.assign(total + keras.ops.cast(value, self.statistics_dtype))

    def result(self):
        return keras.ops.concatenate([keras.ops.reshape(total, (-1,)) for total in self.totals])

    def reset_state(self):
        for total in self.totals:
            total.assign(keras.ops.zeros(total.shape, self.statistics_dtype))


def epoch_logs(logs: dict, accumulator) -> dict:
    """``ud.fit``'s logs from Keras's: the loss and, from the statistics vector, each metric's value."""
    result = {"loss": float(np.asarray(logs["loss"]))}
    if accumulator is not None:
        result.update(accumulator.results_from_flat(np.asarray(logs[STATISTICS])))
    return result
