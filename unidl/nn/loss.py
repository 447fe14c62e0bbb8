"""Loss functions as modules: ``MSELoss``, ``L1Loss``, ``CrossEntropyLoss``, ``NLLLoss``, ``BCEWithLogitsLoss``,
``BCELoss``, ``SmoothL1Loss``, ``HuberLoss``, ``KLDivLoss``; the margin and embedding losses ``MarginRankingLoss``,
``HingeEmbeddingLoss``, ``SoftMarginLoss``, ``CosineEmbeddingLoss``, ``TripletMarginLoss``,
``TripletMarginWithDistanceLoss``; the multi-class and multi-label ones ``MultiLabelSoftMarginLoss``,
``MultiMarginLoss``, ``MultiLabelMarginLoss``; the likelihoods ``PoissonNLLLoss``, ``GaussianNLLLoss``; the sequence
loss ``CTCLoss``; and ``LinearCrossEntropyLoss``, a classifier's last ``Linear`` and its cross-entropy in one module.

Each takes ``reduction`` in {'mean', 'sum', 'none'} (``KLDivLoss`` also 'batchmean') and follows PyTorch's
definition, which every backend implements with the same arithmetic. Element-wise losses need prediction and
target of the same shape (PyTorch broadcasts them with a warning; unidl raises ``ShapeMismatchError``, inside
graphs too), and class labels must be integers (float labels are a ``DtypeMismatchError``, never truncated).
A class ``weight`` is a buffer named ``weight``, as in PyTorch's ``state_dict()``.
"""

from __future__ import annotations

import math

import numpy as np

from unidl import arguments, config, ctc, input_checks, loss_ops, ops as functional
from unidl.errors import DtypeMismatchError, LossShapeError
from unidl.dtype_kinds import dtype_name, holds_floats, is_floating
from unidl.nn.distance import PairwiseDistance
from unidl.nn.linear import Linear
from unidl.nn.module import Module
from unidl.tensors import to_numpy


class _Loss(Module):
    reductions = arguments.REDUCTIONS
    _tensor_arguments = 2  # (prediction, target: a list or a number converted as ud.tensor makes it)

    def __init__(self, reduction: str = "mean", *, size_average=None, reduce=None):
        super().__init__()
        loss_ops.refuse_legacy_reduction(type(self).__name__, size_average, reduce)
        self.reduction = input_checks.check_reduction(type(self).__name__, reduction, self.reductions)

    def _check_same_shape(self, prediction, target):
        """``prediction``, after checking that ``target`` has its shape (inside graphs too, where the sizes are
        known only when it runs; see ``unidl.input_checks``)."""
        return input_checks.check_same_shape(type(self).__name__, prediction, target)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error: reduce((prediction - target)^2)."""

    def forward(self, prediction, target):
        prediction = self._check_same_shape(prediction, target)
        return self._ops.mse_loss(*input_checks.loss_operands(self.describe, prediction, target), self.reduction)


class L1Loss(_Loss):
    """Mean absolute error: reduce(|prediction - target|)."""

    def forward(self, prediction, target):
        prediction = self._check_same_shape(prediction, target)
        return self._ops.l1_loss(*input_checks.loss_operands(self.describe, prediction, target), self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits: reduce(max(x, 0) - x*t + log(1 + exp(-|x|))), numerically stable, as
    ``torch.nn.BCEWithLogitsLoss``: ``weight`` rescales each element's loss (it broadcasts against the input),
    ``pos_weight`` the positive term (one per class, along the last axis: above 1 favours recall), both buffers
    of the module as in PyTorch (``ud.ops.binary_cross_entropy_with_logits``)."""

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        if isinstance(weight, str):  # BCEWithLogitsLoss('sum'): the reduction, positionally
            weight, reduction = None, weight
        super().__init__(reduction)
        _weight_buffer(self, "weight", weight)
        _weight_buffer(self, "pos_weight", pos_weight)

    def forward(self, logits, targets):
        logits = self._check_same_shape(logits, targets)
        _check_float_targets(self, targets)
        if self.weight is None and self.pos_weight is None and logits.dtype == targets.dtype:
            return self._ops.bce_with_logits(logits, targets, self.reduction)  # (two dtypes: PyTorch's, below)
        return functional.binary_cross_entropy_with_logits(logits, targets, self.weight, self.reduction,
                                                           self.pos_weight)


def _check_float_targets(loss, targets) -> None:
    """``DtypeMismatchError`` for integer or boolean targets of a binary cross-entropy: PyTorch refuses them, and the
    other frameworks cast them silently; unidl refuses them on every backend, naming the cast."""
    if hasattr(targets, "dtype") and not is_floating(targets.dtype):
        raise DtypeMismatchError(f"{type(loss).__name__} needs floating-point targets (0/1 or probabilities), got "
                                 f"{dtype_name(targets.dtype)}; convert them, e.g. y.astype('float32') or "
                                 f"ud.ops.cast(y, 'float32')")


def _weight_buffer(loss, name: str, value, check_shape=None) -> None:
    """``loss.<name>``: a weight the loss multiplies by (a class ``weight``, ``pos_weight``) in the float dtype in
    force, a buffer as in PyTorch's ``state_dict()``, or None. ``check_shape``: called with the weight's shape (a
    tuple; None for a size a graph leaves unknown, which the op checks when it runs) to raise for a wrong one.

    A symbolic tensor, one made in or passed to a function that a graph is traced from (a loss built inside
    ``ud.function``, as a torch step may build it), has no value to copy into a buffer until the graph runs: the
    loss holds it as it is, a tensor of that graph, in the float dtype in force, and has no buffer of it (as the
    op ``ud.ops.cross_entropy_loss`` takes it)."""
    if value is None:
        setattr(loss, name, None)
        return
    backend = loss._backend
    symbolic = backend.is_tensor(value) and not backend.is_concrete(value)
    weight = value if symbolic else np.asarray(to_numpy(value), dtype=np.float64)
    if check_shape is not None:
        check_shape(tuple(weight.shape))
    if symbolic:
        setattr(loss, name, functional.cast(weight, config.get_dtype()))
    else:
        loss.register_buffer(name, weight)


def _class_weight_buffer(loss, weight) -> None:
    """``loss.weight``: one value per class (a ``ValueError`` for another rank), as ``_weight_buffer`` holds it."""
    def check_shape(shape):
        if len(shape) != 1:
            raise ValueError(f"{type(loss).__name__} weight must be one value per class (C,), got shape {shape}")

    _weight_buffer(loss, "weight", weight, check_shape)


class BCELoss(_Loss):
    """Binary cross-entropy of probabilities: reduce(-weight * (t * log(p) + (1 - t) * log(1 - p))), each log
    clamped at -100 as in PyTorch. ``weight`` (optional) broadcasts against the input."""

    def __init__(self, weight=None, reduction: str = "mean"):
        if isinstance(weight, str):  # BCELoss('sum'): the reduction, positionally
            weight, reduction = None, weight
        super().__init__(reduction)
        _weight_buffer(self, "weight", weight)

    def forward(self, probabilities, targets):
        probabilities = self._check_same_shape(probabilities, targets)
        _check_float_targets(self, targets)
        return functional.binary_cross_entropy(probabilities, targets, self.weight, self.reduction)


class SmoothL1Loss(_Loss):
    """reduce(0.5 * d^2 / beta if |d| < beta else |d| - 0.5 * beta), d = prediction - target (L1 for beta = 0)."""

    def __init__(self, reduction: str = "mean", beta: float = 1.0):
        super().__init__(reduction)
        self.beta = arguments.smooth_l1_beta("SmoothL1Loss", beta)

    def forward(self, prediction, target):
        prediction = self._check_same_shape(prediction, target)
        return functional.smooth_l1_loss(prediction, target, self.reduction, self.beta)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, beta={self.beta}"


class HuberLoss(_Loss):
    """reduce(0.5 * d^2 if |d| < delta else delta * (|d| - 0.5 * delta)), d = prediction - target."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction)
        self.delta = arguments.huber_delta("HuberLoss", delta)

    def forward(self, prediction, target):
        prediction = self._check_same_shape(prediction, target)
        return functional.huber_loss(prediction, target, self.reduction, self.delta)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, delta={self.delta}"


class KLDivLoss(_Loss):
    """Kullback-Leibler divergence of ``target`` from the distribution whose log-probabilities are the input:
    pointwise target * (log(target) - input) (exp(t) * (t - input) with ``log_target``).

    ``reduction='batchmean'`` (sum over the batch size) is the mathematical KL divergence; 'mean', the
    default as in PyTorch, averages over every element. The gradient with respect to a target of 0 is NaN, as
    PyTorch's: hold a target computed from parameters (a teacher's softmax, which may underflow to 0) with
    ``ud.ops.stop_gradient``, or give ``log_target=True`` and log-probabilities."""

    reductions = arguments.REDUCTIONS + ("batchmean",)

    def __init__(self, reduction: str = "mean", log_target: bool = False):
        super().__init__(reduction)
        self.log_target = bool(log_target)

    def forward(self, log_probabilities, target):
        log_probabilities = self._check_same_shape(log_probabilities, target)
        return functional.kl_div(log_probabilities, target, self.reduction, self.log_target)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, log_target={self.log_target}"


class _WeightedClassLoss(_Loss):
    """A loss over classes with PyTorch's optional per-class ``weight`` (a buffer) and ``ignore_index``."""

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        if isinstance(weight, str):  # CrossEntropyLoss('sum'): the reduction, positionally
            weight, reduction = None, weight
        super().__init__(reduction)
        _class_weight_buffer(self, weight)
        self.ignore_index = int(ignore_index)

    def _check_shapes(self, scores, target, probabilities_allowed: bool):
        """``(probabilities, scores, target)`` after PyTorch's shape rules (``input_checks.class_loss_shapes``)."""
        return input_checks.class_loss_shapes(type(self).__name__, scores, target, probabilities_allowed, self.weight)

    def mean_divisor(self, target, losses):
        """What 'mean' divides the sum of the losses (``losses``: reduction='none', of ``target``) by, PyTorch's:
        the summed class weights of the labels counted (their number without ``weight``), or the number of
        losses for class probabilities. ``fit``'s sample weights keep it (``fit_options.weighted_loss``)."""
        if holds_floats(target):
            return functional.sum(functional.zeros_like(losses) + 1.0)
        target = input_checks.labels_beside(type(self).__name__, target, self.ignore_index)
        counted = target != self.ignore_index
        kept = functional.cast_like(counted, losses)
        if self.weight is None:
            return functional.sum(kept)
        labels = functional.where(counted, target, functional.zeros_like(target))
        return functional.sum(functional.cast_like(functional.take(self.weight, labels), losses) * kept)

    def _unbatched(self, scores, target):
        """PyTorch's unbatched input: the loss of a batch of one, without its batch axis under 'none'."""
        target = functional.reshape(target, (1, -1) if holds_floats(target) else (1,))
        loss = self.forward(functional.unsqueeze(scores, 0), target)
        return functional.squeeze(loss, 0) if self.reduction == "none" else loss

    def extra_repr(self):
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, weight={self.weight is not None}"


class CrossEntropyLoss(_WeightedClassLoss):
    """Softmax cross-entropy, as ``torch.nn.CrossEntropyLoss``.

    Logits (N, C) (or (N, C, d1, ...)) against integer class labels (N,) in [0, C) (or (N, d1, ...)), or
    against class probabilities of the logits' shape. For labels,
    ``loss_n = -weight[y_n] * log(softmax(logits_n)[y_n])``, and 'mean' divides the sum by the summed
    weights of the labels (N without ``weight``); labels equal to ``ignore_index`` count for nothing; any
    other label outside [0, C) is an ``IndexOutOfRangeError``, never a NaN. ``label_smoothing`` mixes the
    target with the uniform distribution over the C classes.

    Args:
        weight: one weight per class (a buffer ``weight``), or None.
        ignore_index: the label that adds nothing (-100 by default, as in PyTorch).
        reduction: 'mean', 'sum' or 'none' (one loss per sample).
        label_smoothing: in [0, 1].
    """

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(weight, ignore_index, reduction)
        self.label_smoothing = arguments.label_smoothing("CrossEntropyLoss", label_smoothing)

    def forward(self, logits, target):
        if functional._rank(logits) == 1:  # one sample, (C,) against a label () or probabilities (C,)
            return self._unbatched(logits, target)
        probabilities, logits, target = self._check_shapes(logits, target, probabilities_allowed=True)
        logits = input_checks.as_floating(self.describe, "logits", logits)  # (integers: floats in force, as NLLLoss)
        if probabilities and self.ignore_index >= 0:  # (PyTorch's rule: a class index ignored means nothing there)
            raise ValueError(f"{self.describe()}: ignore_index={self.ignore_index} applies to integer labels, not to "
                             f"class probabilities (PyTorch refuses it); leave it at its default, -100")
        if (not probabilities and self.weight is None and not self.label_smoothing
                and functional._fused_cross_entropy_ranks(logits, target)):  # the fused kernel, as ud.ops.cross_entropy
            target = input_checks.labels_beside(self.describe, target, self.ignore_index)
            return self._ops.cross_entropy(logits, target, self.reduction, self.ignore_index)
        return functional.cross_entropy_loss(logits, target, self.weight, self.ignore_index, self.reduction,
                                             self.label_smoothing)

    def extra_repr(self):
        return super().extra_repr() + f", label_smoothing={self.label_smoothing}"


class NLLLoss(_WeightedClassLoss):
    """Negative log-likelihood of log-probabilities (N, C) (or (N, C, d1, ...)) against integer labels:
    ``loss_n = -weight[y_n] * input[n, y_n]``; ``CrossEntropyLoss`` is ``NLLLoss`` after ``LogSoftmax(1)``.
    ``weight``, ``ignore_index`` and the reductions as in ``CrossEntropyLoss``."""

    def forward(self, log_probabilities, labels):
        if functional._rank(log_probabilities) == 1:  # one sample, (C,) against a label ()
            return self._unbatched(log_probabilities, labels)
        labels = input_checks.check_integer(type(self).__name__, "labels", labels)  # (first, as ud.ops.nll_loss: a
        # graph checks the sizes only when it runs, so float (N, C) labels were a ShapeMismatchError eagerly only)
        _, log_probabilities, labels = self._check_shapes(log_probabilities, labels, probabilities_allowed=False)
        return functional.nll_loss(log_probabilities, labels, self.weight, ignore_index=self.ignore_index,
                                   reduction=self.reduction)


# ---- margin, embedding, multi-label and likelihood losses: each calls its function of ``ud.ops`` (loss_ops.py) ------

class MarginRankingLoss(_Loss):
    """reduce(max(0, -y * (x1 - x2) + margin)): ``target`` y is 1 where ``input1`` should rank higher, -1 where
    ``input2`` should, as ``torch.nn.MarginRankingLoss``. The three have one shape (a ``ShapeMismatchError``
    otherwise; PyTorch checks their ranks and broadcasts); y's values are not checked, as in PyTorch
    (``ud.ops.margin_ranking_loss``)."""

    _tensor_arguments = 3

    def __init__(self, margin: float = 0.0, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average=size_average, reduce=reduce)
        self.margin = float(margin)

    def forward(self, input1, input2, target):
        return loss_ops._margin_ranking_loss(type(self).__name__, input1, input2, target, self.margin, self.reduction)

    def extra_repr(self):
        return f"margin={self.margin}, reduction={self.reduction!r}"


class HingeEmbeddingLoss(_Loss):
    """reduce(l), l = x where y = 1, max(0, margin - x) where y = -1, as ``torch.nn.HingeEmbeddingLoss`` (x: a
    distance). PyTorch does not check y's values: any other value adds both terms, here too
    (``ud.ops.hinge_embedding_loss``)."""

    def __init__(self, margin: float = 1.0, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average=size_average, reduce=reduce)
        self.margin = float(margin)

    def forward(self, x, target):
        return loss_ops._hinge_embedding_loss(type(self).__name__, x, target, self.margin, self.reduction)

    def extra_repr(self):
        return f"margin={self.margin}, reduction={self.reduction!r}"


class _UnparameterizedLoss(_Loss):
    """A loss whose only option is its reduction, with PyTorch's positional slots before it (refused if given)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average=size_average, reduce=reduce)


class SoftMarginLoss(_UnparameterizedLoss):
    """reduce(log(1 + exp(-y * x))), the logistic loss of targets y in {1, -1}, as ``torch.nn.SoftMarginLoss``
    (y's values are not checked, as in PyTorch), in the input's dtype. Computed as max(z, 0) + log1p(exp(-|z|)),
    z = -y * x: PyTorch's value and gradient wherever its log1p(exp(z)) is finite, and finite where that overflows
    (past 88 in float32: inf, and a NaN gradient) (``ud.ops.soft_margin_loss``)."""

    def forward(self, x, target):
        return loss_ops._soft_margin_loss(type(self).__name__, x, target, self.reduction)


class CosineEmbeddingLoss(_Loss):
    """reduce(l), l = 1 - cos(x1, x2) where y = 1, max(0, cos(x1, x2) - margin) where y = -1 (0 for any other y),
    as ``torch.nn.CosineEmbeddingLoss``; cos = x1 . x2 / sqrt((|x1|^2 + 1e-12) (|x2|^2 + 1e-12)), PyTorch's.
    Inputs (N, D) with a target (N,), or one pair (D,) with a target (); anything else is a ``ShapeMismatchError``
    (``ud.ops.cosine_embedding_loss``)."""

    _tensor_arguments = 3

    def __init__(self, margin: float = 0.0, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average=size_average, reduce=reduce)
        self.margin = float(margin)

    def forward(self, input1, input2, target):
        return loss_ops._cosine_embedding_loss(type(self).__name__, input1, input2, target, self.margin,
                                               self.reduction)

    def extra_repr(self):
        return f"margin={self.margin}, reduction={self.reduction!r}"


class TripletMarginLoss(_Loss):
    """reduce(max(0, margin + d(a, p) - d(a, n))), d(x, y) = ||x - y + eps||_p along the last axis, as
    ``torch.nn.TripletMarginLoss``; with ``swap``, d(a, n) is min(d(a, n), d(p, n)) (the distance swap;
    ``ud.ops.triplet_margin_loss``).

    Args:
        margin: positive (PyTorch refuses 0 and below, a ``ValueError`` here too).
        p: the norm's degree, any number PyTorch's ``pairwise_distance`` takes (inf: the largest |difference|).
        eps: added to the differences, as PyTorch's ``pairwise_distance``.
        swap: take the positive's distance to the negative where it is smaller.
        reduction: 'mean', 'sum' or 'none' (one loss per triplet).

    Anchor, positive and negative have one shape, (N, D), one triplet's (D,), or any other (a distance along the
    last axis, as PyTorch's); shapes that differ are a ``ShapeMismatchError`` (PyTorch checks their ranks and
    broadcasts)."""

    _tensor_arguments = 3

    def __init__(self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
                 size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average=size_average, reduce=reduce)
        self.margin, self.p = loss_ops.triplet_margin_options("TripletMarginLoss", margin, p)
        self.eps, self.swap = float(eps), bool(swap)

    def forward(self, anchor, positive, negative):
        return loss_ops._triplet_margin_loss(type(self).__name__, anchor, positive, negative, self.margin, self.p,
                                             self.eps, self.swap, self.reduction)

    def extra_repr(self):
        return f"margin={self.margin}, p={self.p}, eps={self.eps}, swap={self.swap}, reduction={self.reduction!r}"


class TripletMarginWithDistanceLoss(_Loss):
    """reduce(max(0, margin + d(a, p) - d(a, n))) under any distance d, as ``torch.nn.TripletMarginWithDistanceLoss``;
    with ``swap``, d(a, n) is min(d(a, n), d(p, n)) (``ud.ops.triplet_margin_with_distance_loss``).

    Args (keyword-only, as PyTorch's):
        distance_function: a function of two tensors giving one non-negative distance each (a ``Module`` is held as
            a submodule, its parameters in ``state_dict()``); None: ``PairwiseDistance()``, as PyTorch's default.
        margin: positive (0 and below a ``ValueError``, as PyTorch's).
        swap: take the positive's distance to the negative where it is smaller.
        reduction: 'mean', 'sum' or 'none' (one loss per triplet).

    Anchor, positive and negative of different ranks are a ``LossShapeError`` (PyTorch's ``RuntimeError``)."""

    _tensor_arguments = 3

    def __init__(self, *, distance_function=None, margin: float = 1.0, swap: bool = False, reduction: str = "mean"):
        super().__init__(reduction)
        self.margin, _ = loss_ops.triplet_margin_options("TripletMarginWithDistanceLoss", margin, 2.0)
        self.swap = bool(swap)
        self.distance_function = distance_function if distance_function is not None else PairwiseDistance()

    def forward(self, anchor, positive, negative):
        return loss_ops._triplet_margin_with_distance_loss(type(self).__name__, anchor, positive, negative,
                                                           self.distance_function, self.margin, self.swap,
                                                           self.reduction)

    def extra_repr(self):
        return f"margin={self.margin}, swap={self.swap}, reduction={self.reduction!r}"


class LinearCrossEntropyLoss(_Loss):
    """A ``Linear`` map to class logits and their cross-entropy in one module, as ``torch.nn.LinearCrossEntropyLoss``
    (PyTorch's reference path: ``CrossEntropyLoss`` of ``linear(input)``; ``ud.ops.linear_cross_entropy``).

    ``forward(input, target)``: input (N, in_features) (or one sample's (in_features,)), target class labels (N,)
    (or (N, *out_features), or ()) or class probabilities (N, C, *out_features) (or (C,)). The logits are
    (N, C, *out_features): with ``out_features`` a K-dimensional loss, one class distribution per position.

    Args:
        in_features: each input sample's size.
        num_classes: C.
        out_features: (d1, ..., dK), () by default; the ``Linear`` (submodule ``linear``) holds C * d1 * ... * dK
            rows, its weight and bias stored flat as PyTorch's (``linear.weight`` (C * prod, in), ``linear.bias``).
        bias: whether ``linear`` has a bias (False by default, as PyTorch's).
        reduction: 'mean', 'sum' or 'none'.
        weight: one weight per class (C,) (a buffer ``weight``), or None; another shape is a ``LossShapeError``.
        ignore_index: the label that adds nothing; None means -100 for labels, and anything else beside class
            probabilities is an ``InvalidOptionError``.
        label_smoothing: in [0, 1] (outside it an ``InvalidOptionError``; both PyTorch's ``RuntimeError``).
        options: PyTorch's chunking ``LinearCrossEntropyOptions``: anything but None is an
            ``UnsupportedOptionError`` on every backend (unidl computes the logits whole; ignored, it would silently
            use the memory the option was given to save).
    """

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple = (), bias: bool = False,
                 reduction: str = "mean", weight=None, ignore_index=None, label_smoothing: float = 0.0, options=None):
        owner = "LinearCrossEntropyLoss"
        loss_ops.refuse_chunking(owner, options)
        label_smoothing = loss_ops.linear_label_smoothing(owner, label_smoothing)
        super().__init__(reduction)

        def check_shape(shape):  # (a size a graph leaves unknown: the cross-entropy op's to check)
            if len(shape) != 1 or shape[0] not in (num_classes, None):
                raise LossShapeError(f"{owner} needs a weight of shape {(num_classes,)} (one per class), got {shape}")

        _weight_buffer(self, "weight", weight, check_shape)
        self.num_classes, self.out_features = int(num_classes), tuple(int(d) for d in out_features)
        self.ignore_index, self.label_smoothing, self.options = ignore_index, label_smoothing, None
        self.linear = Linear(in_features, math.prod(self.out_features, start=self.num_classes), bias=bias)

    def forward(self, x, target):
        return loss_ops._linear_cross_entropy(type(self).__name__, x, self.linear.weight, self.linear.bias, target,
                                              self.num_classes, self.out_features, self.weight, self.reduction,
                                              self.ignore_index, self.label_smoothing)

    def extra_repr(self):
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, options=None")


class MultiLabelSoftMarginLoss(_Loss):
    """Multi-label one-versus-all logistic loss, as ``torch.nn.MultiLabelSoftMarginLoss``: for scores x (N, C) (or
    one sample's (C,)) and 0/1 targets y of their shape, l_n = -mean_c(w_c (y log sigmoid(x) + (1 - y)
    log sigmoid(-x))), then reduced over the samples. ``weight``: one value per class (a buffer), or None
    (``ud.ops.multilabel_soft_margin_loss``)."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean"):
        if isinstance(weight, str):  # MultiLabelSoftMarginLoss('sum'): the reduction, positionally
            weight, reduction = None, weight
        super().__init__(reduction, size_average=size_average, reduce=reduce)
        _class_weight_buffer(self, weight)

    def forward(self, x, target):
        return loss_ops._multilabel_soft_margin_loss(type(self).__name__, x, target, self.weight, self.reduction)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, weight={self.weight is not None}"


class MultiMarginLoss(_Loss):
    """Multi-class hinge loss, as ``torch.nn.MultiMarginLoss``: for scores x (N, C) (or one sample's (C,)) and
    integer labels y (N,) (or ()), l_n = sum over classes i != y of w_y max(0, margin - x[y] + x[i])^p / C
    (``ud.ops.multi_margin_loss``).

    Args:
        p: 1 or 2 (any other is a ``ValueError``, as PyTorch's).
        margin: the margin the label's score must win by.
        weight: one value per class (a buffer), or None.
        reduction: 'mean', 'sum' or 'none'.

    A label outside [0, C) is an ``IndexOutOfRangeError`` (PyTorch: 'target out of range'), eagerly and in graphs;
    a term counts only where it is positive (no gradient at 0), as PyTorch's kernel."""

    def __init__(self, p: int = 1, margin: float = 1.0, weight=None, size_average=None, reduce=None,
                 reduction: str = "mean"):
        super().__init__(reduction, size_average=size_average, reduce=reduce)
        self.p, self.margin = loss_ops.multi_margin_p("MultiMarginLoss", p), float(margin)
        _class_weight_buffer(self, weight)

    def forward(self, x, target):
        return loss_ops._multi_margin_loss(type(self).__name__, x, target, self.p, self.margin, self.weight,
                                           self.reduction)

    def extra_repr(self):
        return f"p={self.p}, margin={self.margin}, reduction={self.reduction!r}, weight={self.weight is not None}"


class MultiLabelMarginLoss(_UnparameterizedLoss):
    """Multi-label hinge loss, as ``torch.nn.MultiLabelMarginLoss``: for scores x (N, C) (or (C,)) and an integer
    target of their shape holding each sample's class indices, then -1 after the last (the entries after the first
    -1 are not read), l_n = sum over its classes j and the classes i not among them of max(0, 1 - (x[j] - x[i])) / C.
    A target value outside [-1, C) is an ``IndexOutOfRangeError``, as PyTorch refuses it, eagerly and in graphs; a
    term counts only where it is positive (no gradient at 0), as PyTorch's kernel
    (``ud.ops.multilabel_margin_loss``)."""

    def forward(self, x, target):
        return loss_ops._multilabel_margin_loss(type(self).__name__, x, target, self.reduction)


class PoissonNLLLoss(_Loss):
    """Negative log-likelihood of a Poisson distribution, as ``torch.nn.PoissonNLLLoss``: reduce(exp(x) - y x) for
    log-rates x (``log_input``), else reduce(x - y log(x + eps)); ``full`` adds Stirling's approximation of log(y!),
    y log(y) - y + log(2 pi y) / 2, where y > 1. Input and target have one shape (a ``ShapeMismatchError``
    otherwise). The Stirling term adds 0 to the target's gradient at y <= 1 (PyTorch's is NaN at y = 0: 0 times
    log(0)); the rest of it is the ordinary -x (-log(x + eps)) (``ud.ops.poisson_nll_loss``).

    Args:
        log_input: the input holds log-rates (else rates).
        full: add Stirling's term.
        size_average: PyTorch's deprecated slot, kept for its position; anything but None is a ``ValueError``.
        eps: added to the rates under the log, without ``log_input``.
        reduce: as ``size_average``.
        reduction: 'mean', 'sum' or 'none'.
    """

    def __init__(self, log_input: bool = True, full: bool = False, size_average=None, eps: float = 1e-8,
                 reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average=size_average, reduce=reduce)
        self.log_input, self.full, self.eps = bool(log_input), bool(full), float(eps)

    def forward(self, x, target):
        return loss_ops._poisson_nll_loss(type(self).__name__, x, target, self.log_input, self.full, self.eps,
                                          self.reduction)

    def extra_repr(self):
        return f"log_input={self.log_input}, full={self.full}, eps={self.eps}, reduction={self.reduction!r}"


class GaussianNLLLoss(_Loss):
    """Negative log-likelihood of a Gaussian, as ``torch.nn.GaussianNLLLoss``: reduce((log(max(var, eps)) +
    (x - y)^2 / max(var, eps)) / 2), plus log(2 pi) / 2 with ``full``; the clamp passes var's gradient whole, as
    PyTorch's (which clamps without recording it; ``ud.ops.gaussian_nll_loss``).

    ``var``: the input's shape (one variance each), the input's shape without its last axis or with one axis of
    size 1 (one variance shared along it), or a number; anything else is a ``ShapeMismatchError`` (PyTorch's
    ``ValueError``), and a negative variance a ``ValueOutOfRangeError`` (PyTorch's ``ValueError``), eagerly and in
    graphs. The target has the input's shape, or it with one axis of size 1 (shared along it, as PyTorch documents);
    any other is a ``ShapeMismatchError`` (PyTorch broadcasts it)."""

    _tensor_arguments = 2  # (a number for var stays one: a 0-d tensor is not a variance of every element, in PyTorch)

    def __init__(self, *, full: bool = False, eps: float = 1e-6, reduction: str = "mean"):
        super().__init__(reduction)
        self.full, self.eps = bool(full), float(eps)

    def forward(self, x, target, var):
        return loss_ops._gaussian_nll_loss(type(self).__name__, x, target, var, self.full, self.eps, self.reduction)

    def extra_repr(self):
        return f"full={self.full}, eps={self.eps}, reduction={self.reduction!r}"


class CTCLoss(_Loss):
    """The connectionist temporal classification loss, as ``torch.nn.CTCLoss``: -log of the probability of each
    target summed over its alignments to the input's frames (``ud.ops.ctc_loss``, the alpha recursion in log space).

    ``forward(log_probs, targets, input_lengths, target_lengths)``: log-probabilities (T, N, C) (one sample's
    (T, C)), integer targets (N, S) padded or concatenated (sum(target_lengths),), and the lengths (N,). 'mean'
    divides each sample's loss by its target length, then averages over the batch. A target that no alignment fits
    (longer than its frames allow, or a label of log-probability -inf) has an infinite loss (gradient NaN, as
    PyTorch's), 0 with ``zero_infinity``; a -inf log-probability read by a finite loss has PyTorch's gradient NaN, on
    every backend. A target's label that is the blank is a ``ValueOutOfRangeError`` naming where it lies (PyTorch
    documents it as not allowed but does not check); see ``ud.ops.ctc_loss``.

    Args:
        blank: the blank's class, an int in [0, C) (checked against the input's C; a float or bool a ``TypeError``).
        reduction: 'mean', 'sum' or 'none'.
        zero_infinity: make infinite losses and their gradients 0.
    """

    _tensor_arguments = 4

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False):
        super().__init__(reduction)
        self.blank, self.zero_infinity = ctc.checked_blank(type(self).__name__, blank), bool(zero_infinity)

    def forward(self, log_probs, targets, input_lengths, target_lengths):
        return ctc.connectionist_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction,
                                      self.zero_infinity, type(self).__name__)

    def extra_repr(self):
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}"
