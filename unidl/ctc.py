"""The connectionist temporal classification (CTC) loss, ``torch.nn.functional.ctc_loss``, written once over the
registry's ops: the alpha (forward) recursion of Graves et al. (2006) in log space, a ``ud.ops.scan`` over time
that each framework's autodiff differentiates, compiled as one program when called eagerly where a framework would
run the scan step by step (``Backend.looping_composite``: TensorFlow's ``tf.function``, traced for the first
call's shapes and once more for every size). ``ud.ops.ctc_loss`` and ``ud.nn.CTCLoss`` are this function. A backend
with the framework's own kernel (the optional op ``fused_ctc_loss``: torch's) runs that instead, behind the same
checks.
"""

from __future__ import annotations

import numpy as np

from unidl import input_checks, ops
from unidl.backends.op_registry import optional_op
from unidl.errors import ShapeMismatchError
from unidl.composites import composite

_NEG_INF = float("-inf")


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False):
    """The CTC loss of ``torch.nn.functional.ctc_loss``: -log of the probability of ``targets`` summed over every
    alignment of them (blanks between, labels repeated) to the first ``input_lengths[n]`` frames.

    For sample n with extended labels l' (its ``target_lengths[n]`` = L labels with ``blank`` before, between and
    after them, 2L + 1 in all), alpha_t(s) = (alpha_{t-1}(s) + alpha_{t-1}(s-1) + [l'_s != l'_{s-2}]
    alpha_{t-1}(s-2)) y_t(l'_s), in log space, and loss_n = -log(alpha_{T_n - 1}(2L) + alpha_{T_n - 1}(2L - 1)):
    infinite where no alignment exists (a target longer than its frames allow, or a label of log-probability -inf
    where it must be read). Every target may be empty (S = 0): the loss is then the blanks' path. 'mean' divides
    each loss by its target length (at least 1), then averages over the batch; 'sum' adds them; 'none' keeps one a
    sample. ``zero_infinity`` makes an infinite loss 0, with gradient 0. The gradient of ``log_probs`` is
    PyTorch's: its kernel's exp(log_probs) - (the alignments' posterior) over the first ``input_lengths[n]`` frames
    (the gradient of the logits of a ``log_softmax`` gives the same either way), NaN there for an infinite loss (0
    with ``zero_infinity``), and NaN at each -inf entry of ``log_probs`` within the frames read of a finite loss
    (PyTorch's kernel's exp(-inf - -inf)), on every backend: torch's kernel itself on the torch backend.

    Args:
        log_probs: (T, N, C) log-probabilities (``log_softmax`` over C), or one sample's (T, C).
        targets: integer labels in [0, C) other than ``blank``, (N, S) padded (the entries past a target's length
            are not read, and may hold anything), or the N targets concatenated, (sum(target_lengths),); one
            sample's (S,) or (1, S).
        input_lengths: (N,) integers in [0, T], the frames of each sample (one sample: () or (1,), or an int,
            which PyTorch refuses); a tensor, an array or a list.
        target_lengths: (N,) integers, the labels of each target (at most S when padded).
        blank: the blank's class, an int in [0, C) (a float or a bool is a ``TypeError``, as in PyTorch).
        reduction: 'mean', 'sum' or 'none'.
        zero_infinity: make infinite losses (and their gradients) 0.

    Shapes that do not fit (N = 0 too: PyTorch refuses empty log_probs) are a ``ShapeMismatchError`` naming them,
    lengths out of range and labels outside [0, C) an ``IndexOutOfRangeError``, a label that is the blank a
    ``ValueOutOfRangeError`` naming where it lies (PyTorch documents it as not allowed but does not check, and its
    kernel's gradient then disagrees with its own loss), float labels or lengths a ``DtypeMismatchError``, eagerly
    and in graphs.
    """
    reduction = input_checks.check_reduction("ctc_loss", reduction)
    blank = checked_blank("ctc_loss", blank)
    return connectionist_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                              bool(zero_infinity), "ctc_loss")


def checked_blank(owner, blank):
    """``blank`` as an int, after PyTorch's check: a ``TypeError`` for anything else (a bool or a float too)."""
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)):
        raise TypeError(f"{owner} blank must be an int (a class index), got {type(blank).__name__}")
    return int(blank)


def connectionist_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, owner):
    """``ctc_loss`` with its ``reduction`` and ``blank`` (an int: ``checked_blank``) checked; errors name ``owner``."""
    log_probs, labels, input_lengths, target_lengths, checked, unbatched = _checked(
        owner, log_probs, targets, input_lengths, target_lengths, blank)
    kernel = optional_op(ops._ops(), "fused_ctc_loss")  # (torch's own: 10-20x the scan's speed there)
    if kernel is None:
        return _checked_loss(log_probs, labels, input_lengths, target_lengths, checked, reduction, zero_infinity,
                             unbatched)
    return _reduced(kernel(log_probs, labels, input_lengths, target_lengths, blank, zero_infinity), target_lengths,
                    reduction, unbatched)


@composite("log_probs", "labels", "input_lengths", "target_lengths", "blank", loops=True)
def _checked_loss(log_probs, labels, input_lengths, target_lengths, blank, reduction, zero_infinity, unbatched):
    """The loss of inputs ``_checked`` gives (one compiled program where a backend compiles composites: the value
    checks stay outside it, where a backend stages them)."""
    likelihood = _log_likelihood(log_probs, _extended(labels, blank), input_lengths, target_lengths)
    infinite = likelihood == _NEG_INF
    frames = _frames_read(log_probs, input_lengths)
    probabilities = ops.exp(log_probs)  # PyTorch's kernel adds exp(log_probs) to the gradient of each frame read
    losses = -likelihood + ops.sum(ops.sum((probabilities - ops.stop_gradient(probabilities)) * frames, 2), 0)
    if zero_infinity:
        losses = ops.where(infinite, ops.zeros_like(losses), losses)
    # PyTorch's NaN gradients: over the frames read of an infinite loss (unless made 0), and at each -inf entry of
    # the frames read of a finite one (its kernel's exp(-inf - -inf))
    nan_samples = ops.zeros_like(infinite) if zero_infinity else infinite
    masked = (log_probs == _NEG_INF) & ~ops.unsqueeze(ops.unsqueeze(infinite, 0), 2)
    losses = losses + _nan_gradient(log_probs, frames, masked | ops.unsqueeze(ops.unsqueeze(nan_samples, 0), 2))
    return _reduced(losses, target_lengths, reduction, unbatched)


def _reduced(losses, target_lengths, reduction, unbatched):
    """The (N,) ``losses`` reduced as ``reduction`` says ('mean': each divided by its target length, at least 1)."""
    if reduction == "mean":
        return ops.mean(losses / ops.cast_like(ops.maximum(target_lengths, 1), losses))
    if reduction == "sum":
        return ops.sum(losses)
    return ops.squeeze(losses, 0) if unbatched else losses


def _checked(owner, log_probs, targets, input_lengths, target_lengths, blank):
    """``(log_probs (T, N, C), labels (N, S), input_lengths, target_lengths, blank (1,), unbatched)`` after PyTorch's
    checks (in unidl's errors, before any kernel's): ranks and sizes, lengths in range, the blank and the labels read
    in [0, C); and one PyTorch documents but does not make: no label read is the blank. Each check runs inside
    graphs too: what it returns is what the loss reads."""
    blank_class = blank
    log_probs = input_checks.as_floating(owner, "log_probs", input_checks.as_tensor(owner, "log_probs", log_probs))
    targets = input_checks.check_integer(owner, "targets", targets)
    input_lengths = input_checks.check_integer(owner, "input_lengths", input_lengths)
    target_lengths = input_checks.check_integer(owner, "target_lengths", target_lengths)
    tensors = {"log_probs": log_probs, "targets": targets, "input_lengths": input_lengths,
               "target_lengths": target_lengths}
    sizes = {name: input_checks.sizes_of(x) for name, x in tensors.items()}
    ranks = {name: len(s) for name, s in sizes.items()}
    unbatched = ranks["log_probs"] == 2
    wanted = ("log_probs (T, N, C), targets (N, S) or (sum(target_lengths),), input_lengths and target_lengths (N,)"
              if not unbatched else "unbatched log_probs (T, C), targets (S,) or (1, S), input_lengths and "
                                    "target_lengths () or (1,)")
    fits = (ranks["log_probs"] in (2, 3) and ranks["targets"] in (1, 2)
            and all(ranks[name] == 1 or (unbatched and ranks[name] == 0) for name in ("input_lengths",
                                                                                        "target_lengths")))
    if not fits:  # (ranks are known, in graphs too)
        got = ", ".join(f"{name} {input_checks.shape_text(tuple(x.shape), ('?',) * len(x.shape))}"
                        for name, x in tensors.items())
        raise ShapeMismatchError(f"{owner} needs {wanted}; got {got}")
    if unbatched:
        log_probs = ops.unsqueeze(log_probs, 1)
        input_lengths, target_lengths = ops.reshape(input_lengths, (-1,)), ops.reshape(target_lengths, (-1,))
    time, batch, classes = (_int64(size) for size in input_checks.sizes_of(log_probs))
    padded = ranks["targets"] == 2
    conditions = [input_checks.holds(batch == _int64(n)) for n in (sizes["input_lengths"][:1] or (1,))
                  + (sizes["target_lengths"][:1] or (1,)) + (sizes["targets"][:1] if padded else ())]
    conditions += [input_checks.holds(size > 0) for size in (time, batch, classes)]
    log_probs = input_checks.require_shapes(owner, wanted + " with the same N, and T, N and C at least 1", tensors,
                                            input_checks.all_of(conditions), log_probs)
    blank = ops.check_index(ops.zeros((1,), dtype="int64") + blank, classes, f"{owner} blank (a class of log_probs)")
    input_lengths = ops.check_index(input_lengths, time + 1, f"{owner} input_lengths (at most T, log_probs' length)")
    if padded:
        target_lengths = ops.check_index(target_lengths, _int64(sizes["targets"][1]) + 1,
                                         f"{owner} target_lengths (at most S, targets' length)")
        labels = targets
    else:
        count = _int64(sizes["targets"][0])
        target_lengths = ops.check_index(target_lengths, count + 1, f"{owner} target_lengths")
        surplus = ops.check_in_range(ops.sum(target_lengths) - count, 0, 0,
                                     f"{owner} sum(target_lengths) - len(targets) (one concatenated label each)")
        target_lengths = target_lengths + 0 * surplus  # (the check runs first in a graph)
        labels = _padded(targets, target_lengths, count)
    read = _positions(ops.shape(labels)[1]) < ops.unsqueeze(target_lengths, 1)
    labels = ops.where(read, labels, ops.zeros_like(labels))
    labels = ops.check_index(labels, classes, f"{owner} targets (class indices of log_probs)")
    labels = _without_blank(owner, labels, read, target_lengths, int(blank_class), classes, padded)
    return log_probs, labels, input_lengths, target_lengths, blank, unbatched


def _without_blank(owner, labels, read, target_lengths, blank, classes, padded):
    """``labels`` (N, S), after checking that none ``read`` is ``blank``: a ``ValueOutOfRangeError`` naming the first
    found (its place in the targets given, its sample and label), eagerly and when a graph runs. PyTorch documents
    such targets as not allowed without checking them, and its kernel's gradient for them disagrees with its loss."""
    batch, width = (_int64(size) for size in input_checks.sizes_of(labels))
    places = ops.unsqueeze(_positions(batch), 1) * width + ops.unsqueeze(_positions(width), 0)  # row-major
    none = batch * width  # (past every place: what ``first`` is when no label read is the blank)
    negated = ops.reshape(ops.where(read & (labels == blank), -places, ops.zeros_like(places) - none), (-1,))
    first = -ops.amax(ops.concat([negated, ops.reshape(ops.sum(negated) * 0 - none, (1,))], 0), 0)
    sample = first // ops.maximum(first * 0 + width, 1)
    label = first - sample * width
    if padded:
        where, places = "targets[{}, {}]", (sample, label)
        unread = " (the entries of a row past its target length are not read and may hold anything)"
    else:
        before = ops.where(_positions(batch) < sample, target_lengths, ops.zeros_like(target_lengths))
        where, places, unread = "targets[{}]", (ops.sum(before) + label,), ""
    message = (f"{input_checks.literal(owner)} targets hold the blank (class {blank}) at {where} (sample {{}}'s label "
               f"{{}}); a target's labels must be classes in [0, {{}}) other than the blank{unread}")
    return ops.check_values(labels, first == none, message, places + (sample, label, classes))


def _int64(size):
    """A size: an int, or a graph's scalar tensor as int64 (TensorFlow's shapes are int32), as the lengths are."""
    return size if isinstance(size, int) else ops.cast(size, "int64")


def _positions(size):
    """0, 1, ..., size - 1 as int64 (``size``: an int, or a graph's scalar tensor)."""
    return ops.arange(0, _int64(size), 1, "int64")


def _padded(targets, target_lengths, count):
    """The concatenated ``targets`` (``count`` labels) as (N, count), each row's labels first, zeros after."""
    batch = ops.shape(target_lengths)[0]
    samples = _positions(batch)
    before = ops.unsqueeze(samples, 0) < ops.unsqueeze(samples, 1)  # [n, m]: m < n
    lengths = ops.unsqueeze(target_lengths, 0)
    offsets = ops.sum(ops.where(before, lengths, ops.zeros_like(lengths)), 1)
    columns = ops.unsqueeze(_positions(count), 0)
    read = columns < ops.unsqueeze(target_lengths, 1)
    flat = ops.concat([targets, ops.cast_like(ops.zeros((1,), dtype="int64"), targets)], 0)  # (a label 0 to read
    # where none is: ``read`` drops it, and ``take`` needs a value even when no target has any)
    index = ops.where(read, ops.unsqueeze(offsets, 1) + columns, ops.zeros_like(columns) + count)
    return ops.take(flat, index)


def _extended(labels, blank):
    """(N, 2S + 1): blank, label 1, blank, label 2, ..., blank (the labels past a target's length read as well)."""
    width = ops.shape(labels)[1]
    column = ops.unsqueeze(ops.zeros_like(ops.sum(labels, 1)), 1) + blank  # (N, 1), S = 0 too
    labels = ops.concat([labels, column], 1)  # (N, S + 1): s // 2 <= S
    positions = _positions(2 * width + 1)
    label_index = ops.unsqueeze(positions // 2, 0) + ops.zeros_like(labels[:, :1])
    odd = ops.unsqueeze(positions % 2 == 1, 0)
    return ops.where(odd, ops.gather(labels, 1, label_index), ops.zeros_like(label_index) + blank)


def _shifted(x, steps, fill):
    """``x`` (N, W) moved ``steps`` places along its last axis, ``fill`` coming in from the left."""
    start = ops.zeros_like(x[:, :1]) + fill
    return ops.concat([start] * steps + [x], 1)[:, :-steps]


def _log_sum_exp(*terms):
    """log(sum(exp(terms))) element-wise, -inf where every term is, with a finite gradient everywhere (0 to the
    terms of -inf): the largest term, held constant, is taken out first."""
    largest = terms[0]
    for term in terms[1:]:
        largest = ops.maximum(largest, term)
    finite = largest > _NEG_INF
    largest = ops.stop_gradient(ops.where(finite, largest, ops.zeros_like(largest)))
    total = ops.zeros_like(terms[0])
    for term in terms:
        total = total + ops.exp(term - largest)
    some = total > 0
    logs = ops.log(ops.where(some, total, ops.zeros_like(total) + 1)) + largest
    return ops.where(some, logs, ops.zeros_like(logs) + _NEG_INF)


def _log_likelihood(log_probs, extended, input_lengths, target_lengths):
    """(N,): log of the summed probability of every alignment (the alpha recursion, one ``scan`` step a frame; a
    sample's alphas stay as they are past its length). It starts from a frame before the first with all its
    probability on position 0, so that frame 0's step is the recursion's initial alphas."""
    time = ops.shape(log_probs)[0]
    index = ops.unsqueeze(extended, 0) + ops.cast_like(ops.zeros_like(log_probs[:, :, :1]), extended)
    emissions = ops.gather(log_probs, 2, index)  # (T, N, 2S + 1): y_t(l'_s)
    # log of whether a path may skip the blank before position s: l'_s != l'_{s-2} (s < 2: no such position)
    skippable = ops.log(ops.cast_like(extended != _shifted(extended, 2, -1), emissions))  # 0 or -inf
    first = ops.unsqueeze(_positions(ops.shape(extended)[1]), 0) == 0
    start = ops.zeros_like(emissions[0]) + ops.log(ops.cast_like(first, emissions))  # 0 at position 0, else -inf
    within = ops.unsqueeze(ops.unsqueeze(_positions(time), 1) < ops.unsqueeze(input_lengths, 0), 2)  # (T, N, 1)

    def step(alphas, frame):
        emission, read = frame
        moved = _shifted(alphas, 1, _NEG_INF)
        advanced = _log_sum_exp(alphas, moved, _shifted(moved, 1, _NEG_INF) + skippable) + emission
        return ops.where(read, advanced, alphas), read

    alphas, _ = ops.scan(step, start, (emissions, within))
    last = ops.gather(alphas, 1, ops.unsqueeze(2 * target_lengths, 1))
    before_last = ops.gather(alphas, 1, ops.unsqueeze(ops.maximum(2 * target_lengths - 1, 0), 1))
    before_last = ops.where(ops.unsqueeze(target_lengths > 0, 1), before_last, ops.zeros_like(last) + _NEG_INF)
    return ops.squeeze(_log_sum_exp(last, before_last), 1)


def _frames_read(log_probs, input_lengths):
    """(T, N, 1): 1 at the frames within each sample's length, else 0, in ``log_probs``' dtype."""
    read = ops.unsqueeze(_positions(ops.shape(log_probs)[0]), 1) < ops.unsqueeze(input_lengths, 0)
    return ops.cast_like(ops.unsqueeze(read, 2), log_probs)


def _nan_gradient(log_probs, frames, chosen):
    """(N,) zeros whose gradient is NaN at the entries of ``log_probs`` ``chosen`` (a (T, N, C) or (T, N, 1) mask)
    within the frames read, and 0 elsewhere: ``ops._steep_zero``'s infinite slopes, one minus the other."""
    chosen = (frames * ops.cast_like(chosen, frames) + ops.zeros_like(log_probs)) > 0
    probabilities = ops.exp(log_probs)  # (finite where log_probs are -inf: log_probs - log_probs would be NaN there)
    held = ops.where(chosen, probabilities - ops.stop_gradient(probabilities), ops.zeros_like(log_probs) + 1)
    return ops.sum(ops.sum(ops._steep_zero(held) - ops._steep_zero(held), 2), 0)
