"""Which metrics a ``fit``/``evaluate`` call computes, and the ``Layout`` they are bound to before its first batch.

The layout (the model's output shape and the target's shape and kind, per sample) comes from one sample of
the data and one eval-mode forward of it (``Backend.probe_forward``: abstract where that gives the same, on jax),
so that a metric that does not fit the task fails with a clear error before training, and so that graph code never
needs a shape it cannot know (the number of classes).
A loader with workers makes that sample in one of them: the dataset's code never runs in the main process.
"""

from __future__ import annotations

import copy
import sys
import weakref

import numpy as np

from unidl.metrics.classification import classification_kind
from unidl.metrics.metric import Layout
from unidl.tracing import forward_binding_error, python_randomness_preserved

_OUTPUT_SHAPES = weakref.WeakKeyDictionary()  # model -> (what the answer depends on, per-sample output shape)


def output_shape(model, x: np.ndarray) -> tuple | None:
    """The model's per-sample output shape for samples like ``x``'s (a batch of one), remembered while the
    parameters and the sample shape stay the same; None for a forward that returns several tensors (a tuple, a
    dict), which a loss of the user's may take but no metric can. The forward draws nothing from Python's or
    NumPy's global generators (a probe, not a step: a dynamic net's draws stay the training's)."""
    key = (x.shape[1:], x.dtype.str, tuple((id(p), tuple(p.shape)) for p in model.parameters()))
    known = _OUTPUT_SHAPES.get(model)
    if known is not None and known[0] == key:
        return known[1]
    mismatch = forward_binding_error(model, (x[:1],))
    if mismatch is not None:  # a forward of extra inputs without defaults (a step input, fit's step_inputs)
        raise TypeError(f"{mismatch[0]} cannot be called on x alone: {mismatch[1]}. fit and evaluate read the "
                        f"model's output shape from model(x) of one sample before the first batch (for a "
                        f"classification loss's label check and for the metrics), as validation and ud.evaluate "
                        f"call model(x): give the forward's extra inputs defaults, their values for evaluation"
                        ) from None
    from unidl.nn.module import state_writes_skipped

    was_training = model.training
    model.eval()
    try:
        with python_randomness_preserved(), state_writes_skipped():  # (a probe, not a forward torch would run)
            outputs = model._backend.probe_forward(model, x[:1])
    finally:
        model.train(was_training)
    shape = tuple(int(d) for d in tuple(outputs.shape)[1:]) if hasattr(outputs, "shape") else None
    _OUTPUT_SHAPES[model] = (key, shape)
    return shape


def first_sample(data) -> tuple:
    """``(x, y)`` of one sample with its batch axis, as NumPy arrays, from any data form ``fit`` accepts."""
    from unidl.data import DataLoader
    from unidl.tensors import to_numpy

    if isinstance(data, (tuple, list)):
        return tuple(np.asarray(to_numpy(v))[:1] for v in data[:2])
    if isinstance(data, DataLoader):
        arrays = data.sliced_arrays()
        if arrays is not None:  # slices of arrays: no code of the user's runs
            return tuple(a[:1] for a in arrays[:2])
        # as the loader makes its batches, collate_fn included, whatever num_workers: in its workers where it has
        # some (their timeout, their errors), never in this process then
        return data.first_sample()[:2]
    if type(data).__module__.startswith("tensorflow"):
        batch = next(iter(data.take(1)))
        return tuple(np.asarray(to_numpy(v))[:1] for v in batch[:2])
    if hasattr(data, "dataset") and not _iterable_dataset(data.dataset):  # a torch map-style loader (an
        return _torch_first_sample(data)  # IterableDataset's has no sample 0 to read apart: its first batch)
    batch = next(iter(data))
    return tuple(np.asarray(to_numpy(v))[:1] for v in batch[:2])


def _iterable_dataset(dataset) -> bool:
    """Whether ``dataset`` is a ``torch.utils.data.IterableDataset`` (torch imported already: its loader is here)."""
    torch_data = sys.modules.get("torch.utils.data")
    return torch_data is not None and isinstance(dataset, torch_data.IterableDataset)


def _torch_first_sample(data) -> tuple:
    """``first_sample`` of a ``torch.utils.data.DataLoader``: sample 0 collated as the loader collates (its
    ``collate_fn``; a batch of one where it batches, by ``batch_size`` or its own ``batch_sampler``), made where the
    loader makes its batches: with workers, in one worker of the loader's settings (its ``worker_init_fn``, start
    method and ``timeout``, so torch's own error for a sample that fails, hangs or ends its worker), never in the
    main process; torch's global RNG, from which a worker's seed is drawn, is left as it was."""
    import torch
    from torch.utils.data import DataLoader as TorchLoader, Subset

    from unidl.tensors import to_numpy

    batched = data.batch_sampler is not None  # (torch's own test: batch_size is None under a batch_sampler)
    workers = min(data.num_workers, 1)
    one = TorchLoader(Subset(data.dataset, [0]), batch_size=1 if batched else None, num_workers=workers,
                      collate_fn=data.collate_fn, worker_init_fn=data.worker_init_fn if workers else None,
                      multiprocessing_context=data.multiprocessing_context if workers else None,
                      timeout=data.timeout if workers else 0)
    with torch.random.fork_rng(devices=[]):
        batches = iter(one)
    try:
        batch = next(batches)
    finally:  # now, not when an error's traceback, which holds the iterator, is freed
        getattr(batches, "_shutdown_workers", lambda: None)()
    if not batched:  # no automatic batching: the sample as the dataset gives it
        return tuple(np.asarray(to_numpy(v))[None] for v in batch[:2])
    return tuple(np.asarray(to_numpy(v))[:1] for v in batch[:2])


def layout_for(model, data) -> Layout | None:
    """The metrics' layout of ``model``'s outputs beside ``data``'s labels (one sample of each); None for a forward
    that returns several tensors (``output_shape``)."""
    x, y = first_sample(data)
    shape = output_shape(model, x)
    return None if shape is None else Layout(shape, y.shape[1:], y.dtype.kind in "iub")


def _is_classification_loss(loss) -> bool:
    from unidl.nn.loss import CrossEntropyLoss, NLLLoss

    return isinstance(loss, (CrossEntropyLoss, NLLLoss))


def weighted_copies(metrics, unweighted) -> list:
    """Keras's ``weighted_metrics``: a copy of each metric marked ``weighted`` (given the samples' weights),
    named ``weighted_<name>`` where an unweighted metric already has its name (Keras's rule)."""
    from unidl.metrics import get_all

    taken = {metric.name for metric in unweighted}
    copies = []
    for metric in get_all(metrics):
        metric = copy.copy(metric)
        metric.weighted = True
        if metric.name in taken:
            metric.name = f"weighted_{metric.name}"
        taken.add(metric.name)
        copies.append(metric)
    return copies


def accumulator_for(metrics, model, data, loss=None, *, for_training: bool = False, weighted_metrics=None):
    """A ``MetricAccumulator`` of ``metrics`` and ``weighted_metrics`` bound to ``data``'s layout, or None when
    there are none.

    ``metrics=None`` and no ``weighted_metrics`` (the default of ``fit`` and ``evaluate``): accuracy when the
    loss is a classification loss (``CrossEntropyLoss``, ``NLLLoss``; or no loss, for ``evaluate``) and the
    outputs are class scores. ``weighted_metrics`` are given the samples' weights (``weighted_copies``).
    ``for_training``: metrics whose value is not one number (a confusion matrix) are refused, as training logs.
    """
    from unidl.metrics import MetricAccumulator, get_all

    implicit = metrics is None and not weighted_metrics
    chosen = get_all(["accuracy"] if implicit else metrics)
    chosen = chosen + weighted_copies(weighted_metrics or (), chosen)
    if implicit and not (loss is None or _is_classification_loss(loss)):
        return None
    if for_training:
        arrays = [m.name for m in chosen if not m.scalar]
        if arrays:
            raise ValueError(f"metrics {arrays} are not single numbers, so they cannot be training logs; "
                             f"compute them with ud.evaluate(model, data, metrics=...) after fit")
    if not chosen:
        return None
    layout = layout_for(model, data)
    if layout is None:  # several outputs: no implicit accuracy, and metrics asked for are an error
        if implicit:
            return None
        raise TypeError(f"metrics compare a model's scores with the labels, so they need a forward that returns one "
                        f"tensor; {type(model).__name__}'s returns several: leave metrics out (the loss takes any "
                        f"outputs), or compute them from the output they concern after training")
    if implicit:
        try:
            classification_kind(layout, "accuracy")
        except ValueError:
            return None
        if layout.output_shape in ((), (1,)):  # one score per sample: no implicit accuracy (threshold unknown)
            return None
        if loss is None and not layout.target_is_integer and not _probabilities(first_sample(data)[1]):
            return None  # (float targets that are no class probabilities: a regression's, whose "accuracy" was
            # the argmax agreement of two real vectors)
    chosen = [for_loss(metric, loss, layout) for metric in chosen]
    accumulator = MetricAccumulator(chosen, layout, ignore_label=_ignored_label(loss, layout, data))
    sliced = getattr(data, "sliced_arrays", None)  # arrays: their targets checked whole, before any batch (a
    arrays = sliced() if callable(sliced) else None  # framework's graph computes training's metrics: no check there)
    if arrays is not None and len(arrays) >= 2:
        accumulator.check_targets(arrays[1], whole=True)
    return accumulator


def _probabilities(target) -> bool:
    """Whether a sample's float target reads as class probabilities (one-hot rows): values in [0, 1] summing to 1
    over the classes."""
    target = np.asarray(target, dtype=np.float64)
    return bool(np.all((target >= 0) & (target <= 1)) and np.allclose(target.sum(axis=-1), 1.0, atol=1e-3))


def for_loss(metric, loss, layout):
    """A metric asked for by name (``Metric.by_name``), read as ``loss`` reads the outputs, where it would read
    them otherwise, silently:

    * beside a logit loss (``BCEWithLogitsLoss``, ``CrossEntropyLoss``; ``NLLLoss``'s log-probabilities, whose
      softmax is the probabilities), ``'auc'`` takes ``from_logits=True`` (it clipped logits into [0, 1]);
    * beside a binary cross-entropy loss, the thresholded metrics (``'accuracy'``, ``'binary_accuracy'``,
      ``'precision'``, ``'recall'``, ``'f1'`` ...) cut at 0.0 for ``BCEWithLogitsLoss``'s logits (0.5 for
      ``BCELoss``'s probabilities); for several scores per sample against targets of their shape (multi-label,
      multi-hot targets) ``'accuracy'`` is binary accuracy, element by element (Keras's rule), and precision,
      recall and F1 take each class on its own (scikit-learn's multi-label counts), where each took the argmax
      of a row as its one class.

    A metric object given keeps its options (``AUC(from_logits=False)``, ``Precision(threshold=0.5)``)."""
    from unidl.metrics import AUC, Accuracy, BinaryAccuracy, ConfusionMatrix, F1Score, Precision, Recall
    from unidl.nn.loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss

    if not metric.by_name:
        return metric
    multi_label = layout.output_shape == layout.target_shape and layout.num_outputs > 1
    if type(metric) is AUC:
        if not isinstance(loss, (BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss)):
            return metric
        metric = copy.copy(metric)
        metric.from_logits = True
        metric.multi_label = multi_label and isinstance(loss, BCEWithLogitsLoss)  # (a sigmoid each)
        return metric
    if not isinstance(loss, (BCELoss, BCEWithLogitsLoss)):
        return metric
    threshold = 0.0 if isinstance(loss, BCEWithLogitsLoss) else 0.5
    if multi_label and type(metric) is Accuracy:  # ('categorical_accuracy' stays the argmax's, as Keras's)
        if metric.name.lower().removeprefix("weighted_") not in ("accuracy", "acc"):
            return metric
        binary = BinaryAccuracy(threshold, name=metric.name)
        binary.weighted, binary.by_name = metric.weighted, True
        return binary
    if type(metric) in (Accuracy, BinaryAccuracy, Precision, Recall, F1Score, ConfusionMatrix):
        metric = copy.copy(metric)
        metric.threshold = threshold
        if multi_label and type(metric) in (Precision, Recall, F1Score):
            metric.multi_label = True
    return metric


def _ignored_label(loss, layout, data):
    """The label ``loss`` ignores (``CrossEntropyLoss``'s ``ignore_index``) where ``data``'s labels may hold it, for
    the metrics to skip those samples too; None where the labels are integers known to hold none (no mask to
    compute at every step) or the loss ignores none."""
    ignored = getattr(loss, "ignore_index", None) if loss is not None and layout.target_is_integer else None
    sliced = getattr(data, "sliced_arrays", None)  # a loader's batches as slices of arrays (x, y, ...): not where a
    arrays = sliced() if callable(sliced) else None  # collate_fn or a dataset's __getitem__ may set labels ignored
    if ignored is not None and arrays is not None and len(arrays) >= 2 and not np.any(np.asarray(arrays[1]) == ignored):
        return None
    return ignored
