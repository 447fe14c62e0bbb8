"""The margin, embedding, multi-label and likelihood losses as functions, composed once over the registry's ops:
``margin_ranking_loss``, ``hinge_embedding_loss``, ``soft_margin_loss``, ``cosine_embedding_loss``,
``triplet_margin_loss``, ``triplet_margin_with_distance_loss``, ``linear_cross_entropy``,
``multilabel_soft_margin_loss``, ``multi_margin_loss``, ``multilabel_margin_loss``, ``poisson_nll_loss`` and
``gaussian_nll_loss``, exported as ``ud.ops.<name>`` with ``torch.nn.functional``'s arguments.

Each public function checks its options and calls the loss's one body (``_<name>(owner, ...)``), which the module of
``unidl/nn/loss.py`` calls too, naming itself in the errors: shapes that do not fit are a ``ShapeMismatchError``
naming them, class indices out of range an ``IndexOutOfRangeError``, eagerly and in graphs. Its checks done, the
body hands the checked operands to the loss's math, ``_<name>_core``, a ``composite``: on JAX, called eagerly, one
compiled program for every margin or eps, rather than one per primitive. PyTorch's deprecated ``size_average`` and
``reduce`` keep their positional slots where ``torch.nn.functional``'s have them, and anything but None there is a
``ValueError`` naming the ``reduction=`` to give (read as PyTorch reads them, a ported call would silently reduce
another way), as in the modules.
"""

from __future__ import annotations

import math

from unidl import arguments, input_checks, ops
from unidl.backends import op_registry
from unidl.composites import composite
from unidl.dtype_kinds import holds_floats
from unidl.errors import InvalidOptionError, LossShapeError, UnsupportedOptionError


def _loss(*tensors: str):
    """A public loss of ``ud.ops`` taking tensors for the parameters ``tensors``: another framework's tensor there is
    a ``BackendMismatchError`` naming it, as every op's (``ops._composed``)."""
    return lambda function: op_registry.composed(ops._ops, function, tensors)


def refuse_legacy_reduction(owner: str, size_average, reduce) -> None:
    """A ``ValueError`` for PyTorch's deprecated ``size_average`` and ``reduce`` (given by keyword, or positionally
    where PyTorch's signature has them), naming the ``reduction=`` to give instead."""
    if size_average is not None or reduce is not None:
        raise ValueError(f"{owner} does not take PyTorch's deprecated size_average and reduce (got size_average="
                         f"{size_average!r}, reduce={reduce!r}); give reduction= instead: reduction='mean' "
                         f"(size_average=True), 'sum' (size_average=False) or 'none' (reduce=False)")


def _reduction(owner: str, size_average, reduce, reduction) -> str:
    """A function's ``reduction``, checked, after refusing ``size_average`` and ``reduce``."""
    refuse_legacy_reduction(owner, size_average, reduce)
    return input_checks.check_reduction(owner, reduction)


# ---- shape checks shared by the losses --------------------------------------------------------------------------

def _same_shape_operands(owner: str, names: tuple, *tensors):
    """``tensors`` in the one dtype ``torch.result_type`` gives them (integers: floats of the dtype in force), after
    checking that each has the first's shape: a ``ShapeMismatchError`` naming both, eagerly and in graphs."""
    first, others = tensors[0], []
    for other in tensors[1:]:
        first, other = input_checks.loss_operands(owner, first, other)
        others.append(other)
    others = [ops.cast_like(other, first) for other in others]
    for name, other in zip(names[1:], others):
        first = input_checks.check_same_shape(owner, first, other, names=(names[0], name))
    return (first, *others)


def _operands_in_input_dtype(owner: str, x, target):
    """``x`` (integers: floats of the dtype in force) and ``target`` cast to its dtype, after checking that they
    have one shape: PyTorch's hinge and soft-margin kernels compute in the input's dtype, whatever the target's."""
    x = input_checks.as_floating(owner, "input", input_checks.as_tensor(owner, "input", x))
    target = input_checks.as_tensor(owner, "target", target)
    x = input_checks.check_same_shape(owner, x, target, names=("input", "target"))
    return x, ops.cast_like(target, x)


def _require_shapes(owner: str, wanted: str, tensors: dict, condition, x):
    """``input_checks.require_shapes``: ``x`` after ``condition``, else a ``ShapeMismatchError`` naming ``owner``."""
    return input_checks.require_shapes(owner, wanted, tensors, condition, x)


def _equal_sizes(a: tuple, b: tuple):
    """Whether sizes ``a`` and ``b`` (ints, or scalar tensors a graph knows when it runs) are the same shape."""
    return len(a) == len(b) and input_checks.all_of([input_checks.holds(m == n) for m, n in zip(a, b)])


def _hinge(x, strict: bool = False):
    """max(x, 0). PyTorch's ``clamp_min`` passes the gradient at 0 (``strict`` False); its multi-class margin kernels
    count a term only where it is positive (``strict``: no gradient at 0)."""
    if strict:
        return ops.where(x > 0, x, ops.zeros_like(x))
    return ops.clip(x, 0.0)


def _positions(size):
    """0, 1, ..., size - 1 as int64 (``size``: an int, or a graph's scalar tensor)."""
    return ops.arange(0, size if isinstance(size, int) else ops.cast(size, "int64"), 1, "int64")


# ---- margin and embedding losses --------------------------------------------------------------------------------

def _margin_ranking_loss(owner, input1, input2, target, margin: float, reduction: str):
    input1, input2, target = _same_shape_operands(owner, ("input1", "input2", "target"), input1, input2, target)
    return _margin_ranking_core(input1, input2, target, margin, reduction)


@composite("input1", "input2", "target", numbers=("margin",))
def _margin_ranking_core(input1, input2, target, margin: float, reduction: str):
    """The margin ranking loss of checked operands, one compiled program (``composite``)."""
    return ops._reduced(_hinge(margin - target * (input1 - input2)), reduction)


@_loss("input1", "input2", "target")
def margin_ranking_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None, reduction="mean"):
    """reduce(max(0, -y * (x1 - x2) + margin)), y = ``target`` (1 where ``input1`` should rank higher, -1 where
    ``input2`` should), as ``torch.nn.functional.margin_ranking_loss``; the three have one shape."""
    reduction = _reduction("margin_ranking_loss", size_average, reduce, reduction)
    return _margin_ranking_loss("margin_ranking_loss", input1, input2, target, float(margin), reduction)


def _hinge_embedding_loss(owner, x, target, margin: float, reduction: str):
    x, target = _operands_in_input_dtype(owner, x, target)
    return _hinge_embedding_core(x, target, margin, reduction)


@composite("x", "target", numbers=("margin",))
def _hinge_embedding_core(x, target, margin: float, reduction: str):
    """The hinge embedding loss of checked operands, one compiled program (``composite``)."""
    zeros = ops.zeros_like(x)
    losses = ops.where(target != 1, _hinge(margin - x), zeros) + ops.where(target != -1, x, zeros)
    return ops._reduced(losses, reduction)


@_loss("input", "target")
def hinge_embedding_loss(input, target, margin=1.0, size_average=None, reduce=None,  # noqa: A002
                         reduction="mean"):
    """reduce(l), l = x where y = 1, max(0, margin - x) where y = -1 (x a distance), as
    ``torch.nn.functional.hinge_embedding_loss``, in the input's dtype (any other y adds both terms, as PyTorch's)."""
    reduction = _reduction("hinge_embedding_loss", size_average, reduce, reduction)
    return _hinge_embedding_loss("hinge_embedding_loss", input, target, float(margin), reduction)


def _soft_margin_loss(owner, x, target, reduction: str):
    x, target = _operands_in_input_dtype(owner, x, target)
    return _soft_margin_core(x, target, reduction)


@composite("x", "target")
def _soft_margin_core(x, target, reduction: str):
    """The soft margin loss of checked operands, one compiled program (``composite``)."""
    z = -target * x
    positive = z > 0
    below = ops.where(positive, -z, z)  # -|z|, whose gradient at z = 0 is +1: sigmoid(0) in all
    return ops._reduced(ops.where(positive, z, ops.zeros_like(z)) + ops.log1p(ops.exp(below)), reduction)


@_loss("input", "target")
def soft_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):  # noqa: A002
    """reduce(log(1 + exp(-y * x))) for targets y in {1, -1}, as ``torch.nn.functional.soft_margin_loss``, in the
    input's dtype, computed as max(z, 0) + log1p(exp(-|z|)), z = -y * x: PyTorch's value and gradient wherever its
    log1p(exp(z)) is finite, and finite where that overflows."""
    reduction = _reduction("soft_margin_loss", size_average, reduce, reduction)
    return _soft_margin_loss("soft_margin_loss", input, target, reduction)


def _cosine_embedding_loss(owner, input1, input2, target, margin: float, reduction: str):
    input1, input2 = input_checks.loss_operands(owner, input1, input2)
    target = input_checks.as_tensor(owner, "target", target)
    a, b, t = (input_checks.sizes_of(x) for x in (input1, input2, target))
    fits = len(t) in (0, 1) and len(a) == len(t) + 1 and input_checks.all_of(
        [_equal_sizes(a, b)] + ([input_checks.holds(a[0] == t[0])] if t else []))
    input1 = _require_shapes(owner, "input1 and input2 of shape (N, D) and a target of shape (N,), or (D,), (D,) "
                             "and ()", {"input1": input1, "input2": input2, "target": target}, fits, input1)
    return _cosine_embedding_core(input1, input2, target, margin, reduction)


@composite("input1", "input2", "target", numbers=("margin",))
def _cosine_embedding_core(input1, input2, target, margin: float, reduction: str):
    """The cosine embedding loss of checked operands, one compiled program (``composite``)."""
    products = ops.sum(input1 * input2, -1)
    squares = [ops.sum(x * x, -1) + 1e-12 for x in (input1, input2)]
    cosine = products / ops.sqrt(squares[0] * squares[1])
    zeros = ops.zeros_like(cosine)
    losses = ops.where(target == 1, 1 - cosine, zeros) + ops.where(target == -1, _hinge(cosine - margin), zeros)
    return ops._reduced(losses, reduction)


@_loss("input1", "input2", "target")
def cosine_embedding_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None, reduction="mean"):
    """reduce(l), l = 1 - cos(x1, x2) where y = 1, max(0, cos(x1, x2) - margin) where y = -1 (0 for any other y), as
    ``torch.nn.functional.cosine_embedding_loss``: inputs (N, D) with a target (N,), or (D,) with a target ()."""
    reduction = _reduction("cosine_embedding_loss", size_average, reduce, reduction)
    return _cosine_embedding_loss("cosine_embedding_loss", input1, input2, target, float(margin), reduction)


def triplet_margin_options(owner: str, margin, p) -> tuple:
    """``(margin, p)`` as floats, after PyTorch's check of a margin above 0 (``p``: any number ``pairwise_distance``
    takes, inf too)."""
    if not margin > 0:
        raise ValueError(f"{owner}: expected margin to be greater than 0, got {margin} instead")
    return float(margin), float(p)


def _triplet_margin_loss(owner, anchor, positive, negative, margin: float, p: float, eps: float, swap: bool,
                         reduction: str):
    anchor, positive, negative = _same_shape_operands(owner, ("anchor", "positive", "negative"), anchor, positive,
                                                      negative)
    return _triplet_margin_core(anchor, positive, negative, margin, p, eps, swap, reduction)


@composite("anchor", "positive", "negative", numbers=("margin",))
def _triplet_margin_core(anchor, positive, negative, margin: float, p: float, eps: float, swap: bool,
                         reduction: str):
    """The triplet margin loss of checked operands, one compiled program (``composite``) for every ``margin``;
    ``p`` and ``eps`` stay static options, as ``pairwise_distance`` checks that they are numbers and branches on
    ``p``."""
    closest = ops.pairwise_distance(anchor, negative, p, eps)  # (torch's, with its gradients at 0)
    if swap:
        closest = ops.minimum(closest, ops.pairwise_distance(positive, negative, p, eps))
    return ops._reduced(_hinge(margin + ops.pairwise_distance(anchor, positive, p, eps) - closest), reduction)


@_loss("anchor", "positive", "negative")
def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2, eps=1e-6, swap=False, size_average=None,
                        reduce=None, reduction="mean"):
    """reduce(max(0, margin + d(a, p) - d(a, n))), d(x, y) = ||x - y + eps||_p along the last axis, as
    ``torch.nn.functional.triplet_margin_loss``; with ``swap``, d(a, n) is min(d(a, n), d(p, n)). Anchor, positive
    and negative have one shape, of any rank (a distance along the last axis); ``margin`` must be positive (a
    ``ValueError``), ``p`` any number ``pairwise_distance`` takes (inf: the largest |difference|)."""
    reduction = _reduction("triplet_margin_loss", size_average, reduce, reduction)
    margin, p = triplet_margin_options("triplet_margin_loss", margin, p)
    return _triplet_margin_loss("triplet_margin_loss", anchor, positive, negative, margin, p, float(eps), bool(swap),
                                reduction)


def _triplet_margin_with_distance_loss(owner, anchor, positive, negative, distance_function, margin: float,
                                       swap: bool, reduction: str):
    """The triplet loss under any distance, as PyTorch composes it: its ranks checked (a ``LossShapeError``, PyTorch's
    ``RuntimeError``), then ``distance_function``'s distances (``pairwise_distance`` by default) hinged at 0."""
    anchor, positive, negative = (input_checks.as_tensor(owner, name, x) for name, x in
                                  (("anchor", anchor), ("positive", positive), ("negative", negative)))
    ranks = [len(x.shape) for x in (anchor, positive, negative)]
    if len(set(ranks)) != 1:
        raise LossShapeError(f"{owner} needs anchor, positive and negative of one rank, got anchor {ranks[0]}-d, "
                             f"positive {ranks[1]}-d and negative {ranks[2]}-d")
    distance = distance_function if distance_function is not None else ops.pairwise_distance
    closest = distance(anchor, negative)
    if swap:
        closest = ops.minimum(closest, distance(positive, negative))
    return ops._reduced(_hinge(margin + distance(anchor, positive) - closest), reduction)


@_loss("anchor", "positive", "negative")
def triplet_margin_with_distance_loss(anchor, positive, negative, *, distance_function=None, margin=1.0, swap=False,
                                      reduction="mean"):
    """reduce(max(0, margin + d(a, p) - d(a, n))) under the distance ``distance_function`` (a function of two tensors
    giving one distance each, ``pairwise_distance`` if None), as ``torch.nn.functional.triplet_margin_with_distance_
    loss``; with ``swap``, d(a, n) is min(d(a, n), d(p, n)). ``margin`` must be positive (a ``ValueError``); anchor,
    positive and negative of different ranks are a ``LossShapeError`` (PyTorch's ``RuntimeError``)."""
    owner = "triplet_margin_with_distance_loss"
    reduction = input_checks.check_reduction(owner, reduction)
    margin, _ = triplet_margin_options(owner, margin, 2.0)
    return _triplet_margin_with_distance_loss(owner, anchor, positive, negative, distance_function, margin,
                                              bool(swap), reduction)


def refuse_chunking(owner: str, options) -> None:
    """An ``UnsupportedOptionError`` for ``linear_cross_entropy``'s chunking ``options`` (PyTorch's
    ``LinearCrossEntropyOptions``): its chunked kernel is PyTorch's own, and unidl computes the logits whole on every
    backend rather than take the option and ignore it."""
    if options is not None:
        raise UnsupportedOptionError(f"{owner}: options={options!r} (PyTorch's chunked kernel) is not supported on any "
                                     f"backend of unidl, which computes the whole logits; give options=None")


def linear_label_smoothing(owner: str, label_smoothing) -> float:
    """``label_smoothing`` in [0, 1]; outside it an ``InvalidOptionError`` (PyTorch's ``RuntimeError``)."""
    try:
        return arguments.label_smoothing(owner, label_smoothing)
    except ValueError as error:
        raise InvalidOptionError(str(error)) from None


def _linear_cross_entropy(owner, x, weight, bias, target, classes: int, out_features: tuple, class_weight,
                          reduction: str, ignore_index, label_smoothing):
    """The cross-entropy of ``x`` (N, in) or (in,) through the linear map of ``weight`` (C * prod(out_features), in)
    and ``bias`` (its rows, or None), its logits (N, C, *out_features) (or (C,)), as PyTorch's reference path: its
    shapes checked (a ``LossShapeError``, PyTorch's ``RuntimeError``), then ``cross_entropy_loss``."""
    x, target = input_checks.as_tensor(owner, "input", x), input_checks.as_tensor(owner, "target", target)
    rank, features = len(x.shape), input_checks.sizes_of(weight)[-1]
    if rank not in (1, 2):
        raise LossShapeError(f"{owner} needs an input (N, in_features) or (in_features,), got {rank}-d")
    if out_features and rank == 1:
        raise LossShapeError(f"{owner}: out_features {tuple(out_features)} (a K-dimensional loss) needs a batched "
                             f"input (N, {features}), got an unbatched ({x.shape[0]},)")
    size = input_checks.sizes_of(x)[-1]
    if isinstance(size, int) and isinstance(features, int) and size != features:
        raise LossShapeError(f"{owner} needs an input of {features} features (the linear weight's last axis), got "
                             f"{size}")
    x = _require_shapes(owner, f"an input of {features} features", {"input": x}, input_checks.holds(size == features),
                        x)
    if holds_floats(target) and ignore_index is not None:
        raise InvalidOptionError(f"{owner}: ignore_index={ignore_index} cannot be given beside class probabilities "
                                 f"(a float target; PyTorch refuses it too); leave it None")
    logits = ops.linear(x, weight, bias)
    logits = ops.reshape(logits, (-1, classes, *out_features) if rank == 2 else (classes,))
    return ops.cross_entropy_loss(logits, target, class_weight, -100 if ignore_index is None else ignore_index,
                                  reduction, label_smoothing)


@_loss("input", "linear_weight", "target", "linear_bias", "weight")
def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,  # noqa: A002
                         reduction="mean", ignore_index=None, label_smoothing=0.0, options=None):
    """The cross-entropy of ``input`` transformed linearly, as ``torch.nn.functional.linear_cross_entropy``:
    ``cross_entropy_loss(linear(input, linear_weight, linear_bias), target, ...)``, ``linear_weight`` (C, in) or
    (C, d1, ..., dK, in) for a K-dimensional loss (logits (N, C, d1, ..., dK), which needs a batched input (N, in)),
    ``linear_bias`` (C, d1, ..., dK) or None. ``ignore_index`` None means -100 for class labels, and anything else
    beside class probabilities is an ``InvalidOptionError``; so is a ``label_smoothing`` outside [0, 1]. Shapes that
    do not fit are a ``LossShapeError`` (both PyTorch's ``RuntimeError``). ``options`` (PyTorch's chunked kernel)
    is an ``UnsupportedOptionError`` unless None, on every backend."""
    owner = "linear_cross_entropy"
    refuse_chunking(owner, options)
    reduction = input_checks.check_reduction(owner, reduction)
    label_smoothing = linear_label_smoothing(owner, label_smoothing)
    linear_weight = input_checks.as_tensor(owner, "linear_weight", linear_weight)
    sizes = input_checks.sizes_of(linear_weight)  # (ints; scalar tensors where a graph knows them only when it runs)
    if len(sizes) < 2:
        raise LossShapeError(f"{owner} needs a linear_weight (C, in_features) or (C, d1, ..., dK, in_features), got "
                             f"{len(sizes)}-d")
    classes, out_features = sizes[0], tuple(sizes[1:-1])
    if linear_bias is not None:
        linear_bias = input_checks.as_tensor(owner, "linear_bias", linear_bias)
        bias_sizes = input_checks.sizes_of(linear_bias)
        fits = len(bias_sizes) == len(sizes) - 1 and _equal_sizes(tuple(bias_sizes), tuple(sizes[:-1]))
        if fits is False and all(isinstance(n, int) for n in (*sizes, *bias_sizes)):
            raise LossShapeError(f"{owner} needs a linear_bias of shape {tuple(sizes[:-1])} (the linear weight's "
                                 f"without its last axis), got {tuple(bias_sizes)}")
        linear_bias = _require_shapes(owner, "a linear_bias of the linear weight's shape without its last axis",
                                      {"linear_weight": linear_weight, "linear_bias": linear_bias}, fits, linear_bias)
        linear_bias = ops.reshape(linear_bias, (-1,))
    linear_weight = ops.reshape(linear_weight, (-1, sizes[-1]))
    return _linear_cross_entropy(owner, input, linear_weight, linear_bias, target, classes, out_features, weight,
                                 reduction, ignore_index, label_smoothing)


# ---- multi-class and multi-label losses -------------------------------------------------------------------------

def _multilabel_soft_margin_loss(owner, x, target, weight, reduction: str):
    x, target = _same_shape_operands(owner, ("input", "target"), x, target)
    if weight is not None:
        weight = input_checks.weight_like(owner, "weight", weight, x)
        x = input_checks.check_broadcasts_to(owner, "weight", weight, x)
    return _multilabel_soft_margin_core(x, target, weight, reduction)


@composite("x", "target", "weight")
def _multilabel_soft_margin_core(x, target, weight, reduction: str):
    """The multi-label soft margin loss of checked operands, one compiled program (``composite``)."""
    losses = target * ops.softplus(-x) + (1 - target) * ops.softplus(x)
    if weight is not None:
        losses = losses * weight
    losses = ops.sum(losses, -1) / ops._count(ops.shape(x)[-1:], losses)
    return ops._reduced(losses, reduction)


@_loss("input", "target", "weight")
def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None,  # noqa: A002
                                reduction="mean"):
    """Multi-label one-versus-all logistic loss, as ``torch.nn.functional.multilabel_soft_margin_loss``: for scores
    x (N, C) (or (C,)) and 0/1 targets y of their shape, l_n = -mean_c(w_c (y log sigmoid(x) + (1 - y)
    log sigmoid(-x))), reduced over the samples; ``weight`` broadcasts against the input."""
    reduction = _reduction("multilabel_soft_margin_loss", size_average, reduce, reduction)
    return _multilabel_soft_margin_loss("multilabel_soft_margin_loss", input, target, weight, reduction)


def _class_scores(owner, scores, labels, labels_wanted: str):
    """``(scores, labels, one)``: scores (C,) or (N, C) as floats and integer ``labels`` of the shape
    ``labels_wanted`` describes ('(N,)': one label a sample, () or (1,) for scores (C,), else the scores' shape), as
    (N, C) and their labels (``one``: the sample was unbatched with a label (), whose loss has no batch axis); a
    ``ShapeMismatchError`` naming both shapes otherwise."""
    labels = input_checks.check_integer(owner, "target", labels)
    scores = input_checks.as_floating(owner, "input", input_checks.as_tensor(owner, "input", scores))
    a, t = input_checks.sizes_of(scores), input_checks.sizes_of(labels)
    per_sample = labels_wanted == "(N,)"
    if per_sample:
        if len(a) == 2:
            fits = len(t) == 1 and input_checks.holds(a[0] == t[0])
        else:
            fits = len(a) == 1 and (len(t) == 0 or (len(t) == 1 and input_checks.holds(t[0] == 1)))
        wanted = "input of shape (N, C) and integer target of shape (N,), or (C,) and () or (1,)"
    else:
        fits = len(a) in (1, 2) and _equal_sizes(a, t)
        wanted = "input of shape (N, C) or (C,) and an integer target of its shape"
    scores = _require_shapes(owner, wanted, {"input": scores, "target": labels}, fits, scores)
    if len(a) == 1:
        scores = ops.unsqueeze(scores, 0)
        labels = ops.reshape(labels, (1,) if per_sample else (1, -1))
    return scores, labels, len(a) == 1 and not (per_sample and len(t) == 1)


def _class_loss_reduced(losses, reduction: str, one: bool):
    """Per-sample ``losses`` reduced; one unbatched sample's loss without its batch axis under 'none', as PyTorch."""
    reduced = ops._reduced(losses, reduction)
    return ops.squeeze(reduced, 0) if one and reduction == "none" else reduced


def multi_margin_p(owner: str, p) -> int:
    """``p``, 1 or 2: any other is a ``ValueError``, as PyTorch's."""
    if p not in (1, 2) or isinstance(p, bool):
        raise ValueError(f"{owner}: only p == 1 and p == 2 supported (PyTorch's), got p={p!r}")
    return int(p)


def _multi_margin_loss(owner, x, target, p: int, margin: float, weight, reduction: str):
    scores, labels, one = _class_scores(owner, x, target, "(N,)")
    weight = input_checks.class_weight(owner, weight, scores, "input")
    scores = input_checks.class_weight_count(owner, weight, scores)
    classes = ops.shape(scores)[1]
    labels = ops.check_index(labels, classes, f"{owner} target")
    return _multi_margin_core(scores, labels, weight, p, margin, reduction, one)


@composite("scores", "labels", "weight", numbers=("margin",))
def _multi_margin_core(scores, labels, weight, p: int, margin: float, reduction: str, one: bool):
    """The multi-class hinge loss of checked scores (N, C) and labels (N,), one compiled program (``composite``)
    for every ``margin`` (``p``, which picks the power, is static)."""
    classes = ops.shape(scores)[1]
    labels = ops.unsqueeze(labels, 1)
    picked = ops.gather(scores, 1, labels)
    others = ops.unsqueeze(_positions(classes), 0) != labels
    terms = _hinge(margin - picked + scores, strict=True)
    terms = ops.where(others, terms if p == 1 else terms * terms, ops.zeros_like(terms))
    if weight is not None:
        terms = terms * ops.take(weight, labels)
    losses = ops.sum(terms, 1) / ops._count(ops.shape(scores)[1:2], terms)
    return _class_loss_reduced(losses, reduction, one)


@_loss("input", "target", "weight")
def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, size_average=None, reduce=None,  # noqa: A002
                      reduction="mean"):
    """Multi-class hinge loss, as ``torch.nn.functional.multi_margin_loss``: for scores x (N, C) (or (C,)) and
    integer labels y (N,) (or ()), l_n = sum over classes i != y of w_y max(0, margin - x[y] + x[i])^p / C, ``p`` 1
    or 2, ``weight`` one value per class (C,) or None; a label outside [0, C) is an ``IndexOutOfRangeError``."""
    reduction = _reduction("multi_margin_loss", size_average, reduce, reduction)
    p = multi_margin_p("multi_margin_loss", p)
    return _multi_margin_loss("multi_margin_loss", input, target, p, float(margin), weight, reduction)


def _multilabel_margin_loss(owner, x, target, reduction: str):
    scores, labels, one = _class_scores(owner, x, target, "the input's shape")
    classes = ops.shape(scores)[1]
    ends = labels == -1
    labels = ops.check_index(ops.where(ends, ops.zeros_like(labels), labels), classes,
                             f"{owner} target (class indices, -1 after the last)")
    return _multilabel_margin_core(scores, labels, ends, reduction, one)


@composite("scores", "labels", "ends", loops=True)
def _multilabel_margin_core(scores, labels, ends, reduction: str, one: bool):
    """The multi-label hinge loss of checked scores (N, C) and labels (N, C) (``ends``: where they held -1), one
    compiled program (``composite``; ``loops``: its scan over the target slots, op by op in eager TensorFlow, runs
    as one ``tf.function`` there too)."""
    classes = ops.shape(scores)[1]
    positions = ops.unsqueeze(_positions(classes), 0)
    width = classes if isinstance(classes, int) else ops.cast(classes, "int64")
    first_end = -ops.amax(ops.where(ends, -positions, ops.zeros_like(labels) - width), 1)
    read = positions < ops.unsqueeze(first_end, 1)  # [n, j]: no -1 at or before j
    rows = ops.shape(scores)[0]
    slots = ops.reshape(ops.unsqueeze(_positions(rows), 1) * width + labels, (-1,))
    chosen = ops.segment_sum(ops.reshape(ops.cast_like(read, scores), (-1,)), slots, ops.shape(slots)[0])
    others = ops.reshape(chosen, ops.shape(scores)) == 0  # [n, i]: class i not a target
    losses = _multilabel_hinge_sums(scores, labels, read, others)
    losses = losses / ops._count(ops.shape(scores)[1:2], losses)
    return _class_loss_reduced(losses, reduction, one)


def _multilabel_hinge_sums(scores, labels, read, others):
    """Per sample, the sum over its targets j (``labels`` [n, j], where ``read``) and the classes i that are not
    (``others`` [n, i]) of max(0, 1 - x[j] + x[i]), a term counted only where positive, in O(N C) memory: one
    target slot at a time, in a scan whose carry holds every result (no [n, j, i] tensor: N C^2, 500 MB for a batch
    of 32 over 1000 classes; no small result a step, which pins the allocator's heap). The gradient is each term's,
    +1 for x[i] and -1 for x[j], attached as g * (x - stop_gradient(x)), which adds exactly 0 to the value."""
    fixed = ops.stop_gradient(scores)
    positions = ops.unsqueeze(_positions(ops.shape(scores)[1]), 0)

    def one_slot(carry, slot):
        counts, drawn, total = carry
        label, counted = slot
        target = ops.gather(fixed, 1, ops.unsqueeze(label, 1))
        z = 1 - target + fixed
        kept = (z > 0) & others & ops.unsqueeze(counted, 1)
        terms = ops.cast_like(kept, z)
        passes = ops.sum(terms, 1, keepdim=True)
        drawn = drawn + passes * ops.cast_like(positions == ops.unsqueeze(label, 1), z)
        total = total + ops.sum(ops.where(kept, z, ops.zeros_like(z)), 1)
        return (counts + terms, drawn, total), ()

    zeros = ops.zeros_like(fixed)
    (counts, drawn, total), _ = ops.scan(one_slot, (zeros, zeros, ops.sum(zeros, 1)), (labels, read), axis=1)
    return total + ops.sum((counts - drawn) * (scores - fixed), 1)


@_loss("input", "target")
def multilabel_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):  # noqa: A002
    """Multi-label hinge loss, as ``torch.nn.functional.multilabel_margin_loss``: for scores x (N, C) (or (C,)) and
    an integer target of their shape holding each sample's class indices, then -1 after the last, l_n = sum over
    its classes j and the classes i not among them of max(0, 1 - (x[j] - x[i])) / C; a target value outside
    [-1, C) is an ``IndexOutOfRangeError``. It holds no tensor larger than the (N, C) scores (a scan over the target
    slots)."""
    reduction = _reduction("multilabel_margin_loss", size_average, reduce, reduction)
    return _multilabel_margin_loss("multilabel_margin_loss", input, target, reduction)


# ---- likelihoods ------------------------------------------------------------------------------------------------

def _poisson_nll_loss(owner, x, target, log_input: bool, full: bool, eps: float, reduction: str):
    x, target = _same_shape_operands(owner, ("input", "target"), x, target)
    return _poisson_nll_core(x, target, log_input, full, eps, reduction)


@composite("x", "target", numbers=("eps",))
def _poisson_nll_core(x, target, log_input: bool, full: bool, eps: float, reduction: str):
    """The Poisson negative log-likelihood of checked operands, one compiled program (``composite``)."""
    losses = ops.exp(x) - target * x if log_input else x - target * ops.log(x + eps)
    if full:
        counted = target > 1
        safe = ops.where(counted, target, ops.zeros_like(target) + 1)
        stirling = safe * ops.log(safe) - safe + 0.5 * ops.log(2 * math.pi * safe)
        losses = losses + ops.where(counted, stirling, ops.zeros_like(stirling))
    return ops._reduced(losses, reduction)


@_loss("input", "target")
def poisson_nll_loss(input, target, log_input=True, full=False, size_average=None, eps=1e-8,  # noqa: A002
                     reduce=None, reduction="mean"):
    """Negative log-likelihood of a Poisson distribution, as ``torch.nn.functional.poisson_nll_loss``:
    reduce(exp(x) - y x) for log-rates x (``log_input``), else reduce(x - y log(x + eps)); ``full`` adds Stirling's
    approximation of log(y!) where y > 1 (which adds 0 to the target's gradient at y <= 1: PyTorch's is NaN at 0)."""
    reduction = _reduction("poisson_nll_loss", size_average, reduce, reduction)
    return _poisson_nll_loss("poisson_nll_loss", input, target, bool(log_input), bool(full), float(eps), reduction)


def _at_most_one_false(conditions):
    """Whether at most one of ``conditions`` (bools, or boolean scalar tensors a graph decides when it runs) fails."""
    failed = sum(1 for c in conditions if c is False)
    pending = [c for c in conditions if c is not True and c is not False]
    for condition in pending:
        failed = failed + (1 - ops.cast(condition, "int64"))
    return failed <= 1


def _same_or_one_axis_of_one(a: tuple, b: tuple):
    """Whether sizes ``b`` are ``a`` but for at most one axis, of size 1 in ``b`` (PyTorch's rule for a variance or a
    target shared along one axis); ints, or scalar tensors a graph knows when it runs."""
    if len(a) != len(b):
        return False
    same = [input_checks.holds(m == n) for m, n in zip(a, b)]
    ones = [input_checks.holds(n == 1) for n in b]
    return input_checks.all_of([_at_most_one_false(same)] + [input_checks._either(s, o) for s, o in zip(same, ones)])


_VAR_SHAPES = "var of the input's shape, or of it without its last axis or with one axis of size 1"


def _gaussian_nll_loss(owner, x, target, var, full: bool, eps: float, reduction: str):
    x, target = input_checks.loss_operands(owner, x, target)
    x = _require_shapes(owner, "target of the input's shape, or of it with one axis of size 1",
                        {"input": x, "target": target},
                        _same_or_one_axis_of_one(input_checks.sizes_of(x), input_checks.sizes_of(target)), x)
    if isinstance(var, (int, float)) and not isinstance(var, bool):  # (a number: a 0-d tensor is not one, in PyTorch)
        var = ops.zeros_like(x) + float(var)
    x, var = input_checks.loss_operands(owner, x, var)
    target = ops.cast_like(target, x)
    a, v = input_checks.sizes_of(x), input_checks.sizes_of(var)
    if len(v) == len(a) - 1 and len(a):
        x = _require_shapes(owner, _VAR_SHAPES, {"input": x, "var": var}, _equal_sizes(a[:-1], v), x)
        var = ops.unsqueeze(var, -1)
    elif len(v) == len(a):
        x = _require_shapes(owner, _VAR_SHAPES, {"input": x, "var": var}, _same_or_one_axis_of_one(a, v), x)
    else:
        x = _require_shapes(owner, _VAR_SHAPES, {"input": x, "var": var}, False, x)
    var = ops.check_in_range(var, 0, float("inf"), f"{owner} var")
    return _gaussian_nll_core(x, target, var, full, eps, reduction)


@composite("x", "target", "var", numbers=("eps",))
def _gaussian_nll_core(x, target, var, full: bool, eps: float, reduction: str):
    """The Gaussian negative log-likelihood of checked operands, one compiled program (``composite``)."""
    var = ops.stop_gradient(ops.maximum(var, eps)) + (var - ops.stop_gradient(var))
    # (the clamp passes var's gradient whole, as PyTorch's; exact: var - var is 0, where var + (max(var, eps) - var)
    # rounds)
    losses = 0.5 * (ops.log(var) + ops.square(x - target) / var)
    if full:
        losses = losses + 0.5 * math.log(2 * math.pi)
    return ops._reduced(losses, reduction)


@_loss("input", "target", "var")
def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):  # noqa: A002
    """Negative log-likelihood of a Gaussian, as ``torch.nn.functional.gaussian_nll_loss``: reduce((log(max(var,
    eps)) + (x - y)^2 / max(var, eps)) / 2), plus log(2 pi) / 2 with ``full``. ``var``: the input's shape, it without
    its last axis or with one axis of size 1, or a number; the target the input's shape or it with one axis of size 1
    (a ``ShapeMismatchError`` otherwise); a negative variance is a ``ValueOutOfRangeError``, eagerly and in graphs."""
    reduction = input_checks.check_reduction("gaussian_nll_loss", reduction)
    return _gaussian_nll_loss("gaussian_nll_loss", input, target, var, bool(full), float(eps), reduction)
