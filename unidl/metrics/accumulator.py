"""``MetricAccumulator``: several metrics' statistics from one compiled function per batch, summed exactly.

``ud.fit`` and ``ud.evaluate`` use one per epoch: ``add(outputs, target)`` per batch (one dispatch for
all metrics, not one per op), ``results()`` for the running or final values. Where the framework's
own trainer runs the epoch (Keras), the backend computes the same statistics inside its graph and
hands their running totals to ``results_from``.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np

from unidl import ops
from unidl.errors import RetraceWarning
from unidl.function import Function
from unidl.metrics.metric import Metric, as_float, statistics_dtype
from unidl.tensors import to_numpy


class MetricAccumulator:
    """Running totals of the statistics of ``metrics`` (bound to ``layout``). ``ignore_label``: the class label
    that the loss ignores (``CrossEntropyLoss``'s ``ignore_index``); samples with it count for no metric, as
    Keras's metrics skip the samples that its loss's ``ignore_class`` masks (they are given weight 0; a metric
    whose ``statistics`` takes no ``sample_weight`` still sees them). Each metric is copied before it is bound, so
    that the objects given stay unbound and one object may serve several accumulators (training's, validation's)."""

    def __init__(self, metrics, layout, ignore_label: int | None = None):
        # a copy of each, bound here: one metric object serves fit's training and validation accumulators, whose
        # layouts differ (integer labels, one-hot validation targets), and the later bind set the counts of both
        self.metrics = [copy.copy(metric) for metric in metrics]
        self.layout = layout
        self.ignore_label = ignore_label
        for metric in self.metrics:
            metric.bind(layout)
            if metric.weighted and not metric.takes_weights:
                raise ValueError(f"metric {metric.name!r} ({type(metric).__name__}) cannot be a weighted metric: "
                                 f"its statistics() takes no sample_weight; pass it in metrics= instead")
        self._takes_weights = [metric.takes_weights for metric in self.metrics]
        self.shapes = [shape for metric in self.metrics for shape in metric.statistic_shapes()]
        self.unpack = None  # set by fit when targets travel packed with sample weights: packed -> (target, weight)
        # whether ``add`` checks each batch's targets: not where no metric checks any (regression's), nor once every
        # target was checked whole (``check_targets`` of the arrays the batches are sliced from)
        self.check_batches = any(type(m).check_target is not Metric.check_target for m in self.metrics)
        self._function = Function(self.statistics)
        self._function.__name__ = "metric statistics"
        self.reset()

    @property
    def key(self) -> tuple:
        """Equal for accumulators that compute the same statistics (a framework may reuse its compiled step)."""
        standalone = ("layout", "_totals", "weights_given")  # (a standalone update's, not the statistics')
        return (tuple((type(m).__name__, m.name, m.weighted,
                       tuple(sorted((k, repr(v)) for k, v in vars(m).items() if k not in standalone)))
                      for m in self.metrics),
                self.layout.output_shape, self.layout.target_shape, self.layout.target_is_integer, self.unpack is None,
                self.ignore_label)

    def statistics(self, outputs, target, sample_weight=None) -> tuple:
        """Every metric's statistics of one batch, flattened into one tuple (``ud.ops`` only: graph-safe).
        The weighted metrics (``metric.weighted``) are given the samples' weights: ``sample_weight``, or
        those packed with the targets (``unpack``); without weights they equal the unweighted ones."""
        if self.unpack is not None:
            target, packed = self.unpack(target)
            sample_weight = packed if sample_weight is None else sample_weight
        kept = None
        if self.ignore_label is not None:
            kept = as_float(ops.reshape(target, (-1,)) != self.ignore_label)
        values = []
        for metric, takes_weights in zip(self.metrics, self._takes_weights):
            weight = sample_weight if metric.weighted else None
            if kept is not None and takes_weights:
                # (as_float: weights packed with the targets have their dtype; tensorflow multiplies no mixed dtypes)
                weight = kept if weight is None else as_float(weight) * kept
            values.extend(metric.statistics(outputs, target) if weight is None else
                          metric.statistics(outputs, target, weight))
        return tuple(values)

    def reset(self) -> None:
        self.totals = [np.zeros(shape) for shape in self.shapes]

    def check_targets(self, target, whole: bool = False) -> None:
        """Each metric's ``check_target`` of ``target`` (an array or tensor of targets, not packed with weights);
        ``whole``: every target the batches will hold (then ``add`` checks none again: no host copy per batch)."""
        if not self.check_batches:
            return
        target = np.asarray(to_numpy(target))
        for metric in self.metrics:
            metric.check_target(target, self.ignore_label)
        self.check_batches = not whole

    def add(self, outputs, target, sample_weight=None) -> None:
        """Add one batch: its statistics as one compiled call, then one small transfer each. ``sample_weight``
        (one per sample) weights the weighted metrics. (``ud.function`` makes arrays the backend's tensors.) The
        targets are checked first (``check_targets``) where some metric checks them and they were not checked whole
        (``probe.accumulator_for`` checks arrays so, packed ones too)."""
        if self.unpack is None and self.check_batches:
            self.check_targets(target)
        inputs = (outputs, target) if sample_weight is None else (
            outputs, target, np.asarray(to_numpy(sample_weight), dtype=statistics_dtype()))
        with warnings.catch_warnings():  # a short last batch is one bounded retrace where graphs are per shape
            warnings.simplefilter("ignore", RetraceWarning)
            values = self._function(*inputs)
        self.add_statistics(values)

    def add_statistics(self, values, target=None) -> None:
        """Add one batch's statistics (``statistics``' tuple, computed where the caller computed them: inside a
        backend's compiled evaluation of the batch, ``Backend.evaluation_function``, or its train step,
        ``Backend.summary_in_step``), summed in float64. ``target``: the batch's targets, checked first as ``add``
        checks them (after the compiled program, whose loss made its own checks first, as an eager loss raises
        before the metrics)."""
        if target is not None and self.unpack is None and self.check_batches:
            self.check_targets(target)
        self.totals = [total + np.asarray(to_numpy(v), dtype=np.float64) for total, v in zip(self.totals, values)]

    def results_from(self, totals) -> dict:
        """Each metric's value from statistics totals (flattened in ``statistics``' order)."""
        results, position = {}, 0
        for metric in self.metrics:
            size = len(metric.statistic_shapes())
            results[metric.name] = metric.from_statistics(
                [np.asarray(t, dtype=np.float64) for t in totals[position:position + size]])
            position += size
        return results

    def results_from_flat(self, flat) -> dict:
        """``results_from`` of all statistics concatenated into one vector (as a framework's metric returns them)."""
        flat, totals, position = np.asarray(flat, dtype=np.float64).reshape(-1), [], 0
        for shape in self.shapes:
            size = int(np.prod(shape)) if shape else 1
            totals.append(flat[position:position + size].reshape(shape))
            position += size
        return self.results_from(totals)

    def results(self) -> dict:
        return self.results_from(self.totals)
