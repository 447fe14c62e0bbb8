"""Checks of bad input that give one error, with one message, on every backend, eagerly and inside graphs.

A check compares sizes: ints where a shape is known (it then raises at once, before any framework sees the
input), scalar tensors where a traced graph leaves a size unknown (the backend's ``check_shape`` op then
raises the same ``ShapeMismatchError``, with the same message, when the graph runs). A message is a template
whose ``{}`` take those sizes, so that both paths print the same text. Layers and ``ud.ops`` call these
before the framework's kernels, whose own errors (or silent garbage) differ from backend to backend.
"""

from __future__ import annotations

import contextlib
import copy
import math
from numbers import Integral, Number

import numpy as np

from unidl import arguments, nested, ops
from unidl.backends.op_registry import CONVERTED, optional_op
from unidl.dtype_kinds import dtype_name, holds_floats, is_floating, is_half, is_integer
from unidl.errors import AxisOutOfRangeError, DtypeMismatchError, ShapeMismatchError, ValueOutOfRangeError
from unidl.precision import active_ops


def literal(owner) -> str:
    """The name of the layer or op a message starts with (``owner``: a string, or a callable that gives it only
    when a message is needed, e.g. ``layer.describe``), safe inside a template (its braces would be taken for
    the sizes' places)."""
    text = owner() if callable(owner) else owner
    return text.replace("{", "(").replace("}", ")")


def shape_template(rank: int) -> str:
    """A template printing a shape of ``rank`` sizes as Python prints a tuple: ``({}, {})``, ``({},)``."""
    return "(" + ", ".join(["{}"] * rank) + ("," if rank == 1 else "") + ")"


def shape_text(sizes: tuple, names: tuple) -> str:
    """A shape as a message shows it: each size, or its name where a traced graph leaves it unknown (None):
    ``shape_text((2, None), ("N", "S"))`` is ``(2, S)``."""
    shown = [name if size is None else str(size) for size, name in zip(sizes, names)]
    return "(" + ", ".join(shown) + ("," if len(shown) == 1 else "") + ")"


def sizes_of(x) -> tuple:
    """``x``'s sizes: ints where known, scalar tensors where a graph leaves them unknown (``ud.ops.shape``)."""
    shape = tuple(x.shape)
    return shape if None not in shape else tuple(ops.shape(x))


def require(x, holds, template, sizes: tuple):
    """``x``, after checking ``holds`` (a bool, or a boolean scalar tensor inside a graph):
    ``ShapeMismatchError(template().format(*sizes))`` if it does not hold, now or when the graph runs (the
    template is built only then). Use the returned ``x`` where the check must run before the framework's own
    kernel does."""
    if holds is True:
        return x
    if holds is False and all(isinstance(size, Integral) for size in sizes):
        raise ShapeMismatchError(template().format(*(int(size) for size in sizes)))
    return ops.check_shape(x, holds, template(), tuple(sizes))  # (False too: the sizes are known only later)


def require_shapes(owner, wanted: str, tensors: dict, condition, x):
    """``x``, after checking ``condition`` (a bool, or a boolean scalar tensor where a graph knows the sizes only when
    it runs): otherwise a ``ShapeMismatchError`` '``<owner> needs <wanted>; got <name> <shape>, ...``' naming each
    of ``tensors`` (``{name: tensor}``) and its shape, now or then."""
    sizes = {name: sizes_of(tensor) for name, tensor in tensors.items()}

    def template():
        got = ", ".join(f"{name} {shape_template(len(s))}" for name, s in sizes.items())
        return f"{literal(owner)} needs {wanted}; got {got}"

    return require(x, condition, template, tuple(size for s in sizes.values() for size in s))


def require_sizes(owner, x, wanted: dict, message):
    """``x``, after checking its sizes along the axes of ``wanted`` (``{axis: size}``) that a traced graph leaves
    unknown (a TensorFlow ``ud.function`` is traced for any sizes of a rank): ``ShapeMismatchError`` when the graph
    runs, with the text an eager check gives, ``message(owner's name, the shape as Python prints a tuple)``.
    Sizes known now are the caller's to compare (it raises at once); where every size is known this adds nothing."""
    shape = tuple(x.shape)
    unknown = [axis for axis in wanted if shape[axis] is None]
    if not unknown:
        return x
    sizes = sizes_of(x)
    condition = sizes_hold("equal", tuple(sizes[axis] for axis in unknown), tuple(wanted[axis] for axis in unknown))
    return require(x, condition, lambda: message(literal(owner), shape_template(len(sizes))), sizes)


def check_squeezed_axes(owner, x, dim):
    """``x``, after checking that the axes ``dim`` (an int or a sequence, in range) whose size a traced graph leaves
    unknown have size 1 when it runs: a graph cannot leave an axis of another size in place, as PyTorch does, without
    its rank depending on a size. Known sizes are the backend's to keep or drop: this adds nothing for them."""
    static = tuple(x.shape) if getattr(x.shape, "rank", 0) is not None else ()
    axes = [axis % len(static) for axis in (dim if isinstance(dim, (list, tuple)) else (dim,))] if static else []
    unknown = {axis: 1 for axis in axes if static[axis] is None}
    if not unknown:
        return x

    which = f"axis {next(iter(unknown))}: it" if len(unknown) == 1 else f"axes {tuple(sorted(unknown))}: each"

    def message(name, shape):
        return (f"{name} dim={dim!r} inside a graph traced for any size of {which} must have size 1 there (PyTorch "
                f"leaves an axis of another size in place, which would make the graph's rank depend on a size); got "
                f"input of shape {shape}")

    return require_sizes(owner, x, unknown, message)


def require_shape(x, expected: tuple, template, shown: tuple | None = None):
    """``x``, after checking that its sizes are ``expected``'s (ints, or scalar tensors where a graph leaves a size
    unknown) where a traced graph leaves either unknown (a mask's or a state's, whose right sizes are the input's):
    ``ShapeMismatchError`` when the graph runs, with the text an eager check gives, ``template()`` holding ``{}``
    for each of ``shown`` (``expected`` by default) and then each of ``x``'s sizes. The rank and the sizes known on
    both sides are the caller's to compare (it raises at once); where every size is known this adds nothing."""
    sizes = sizes_of(x)
    if all(isinstance(a, Integral) and isinstance(b, Integral) for a, b in zip(sizes, expected)):
        return x
    rank = min(len(sizes), len(expected))  # (sizes the backend knows to be the expected ones' are not compared)
    condition = sizes_hold("equal", tuple(sizes[:rank]), tuple(expected[:rank]))
    return require(x, condition, template, tuple(expected if shown is None else shown) + tuple(sizes))


def check_reshape(owner, x, shape) -> tuple:
    """``(x, shape)``, after checking that ``shape`` (an int or ints; -1, once at most, for the size inferred) holds
    ``x``'s elements as ``torch.reshape`` requires: otherwise one ``ShapeMismatchError`` naming the shape and the
    input's, now or when a graph that leaves a size unknown runs (each framework raised its own error, of its own
    type). ``shape`` comes back as a tuple of Python ints; one holding a tensor (a size read with ``ud.ops.shape``
    inside a graph) as it is, for the framework to check."""
    given = arguments.sequence(shape)
    wanted = tuple(arguments.integer(size) for size in (given if given is not None else (shape,)))
    if None in wanted or getattr(x.shape, "rank", 0) is None:
        return x, shape
    if wanted.count(-1) > 1 or any(size < -1 for size in wanted):
        raise ShapeMismatchError(f"{literal(owner)} shape {wanted} is invalid: its sizes must be non-negative ints, "
                                 f"and one of them -1 at most (the size inferred)")
    known = math.prod(size for size in wanted if size != -1)
    infers = -1 in wanted
    if infers and known == 0:  # (torch's rule: any size fits the -1 beside a 0, even of an empty input)
        raise ShapeMismatchError(f"{literal(owner)} shape {wanted} is ambiguous: the size -1 beside a size 0 could be "
                                 f"any size")
    static = tuple(x.shape)
    if infers and math.prod(size for size in static if size is not None) % known == 0:
        return x, wanted  # (the sizes known divide already: no check in a graph that leaves the others unknown)
    sizes = sizes_of(x)
    count = math.prod(sizes)
    fits = count % known == 0 if infers else count == known

    def template():
        return (f"{literal(owner)} shape {wanted} is invalid for an input of shape {shape_template(len(sizes))} "
                f"({{}} elements)")

    return require(x, holds(fits), template, tuple(sizes) + (count,)), wanted


def check_known_shape(x, condition, message: str, sizes=()):
    """The ``check_shape`` op where every size is known when it runs (eagerly; torch; while jax.jit traces):
    ``ShapeMismatchError(message.format(*sizes))`` now if ``condition`` fails, else ``x`` as it is."""
    if not bool(condition):
        raise ShapeMismatchError(message.format(*(int(s) for s in sizes)))
    return x


def check_known_values(x, condition, message: str, values=()):
    """The ``check_values`` op where every value is known when it runs (eagerly; torch):
    ``ValueOutOfRangeError(message.format(*values))`` now if ``condition`` fails, else ``x`` as it is."""
    if not bool(condition):
        raise ValueOutOfRangeError(message.format(*(int(v) for v in values)))
    return x


def all_of(conditions):
    """The conjunction of bools and boolean scalar tensors: a bool when every one is a bool."""
    pending = []
    for condition in conditions:
        if condition is False:
            return False
        if condition is not True:
            pending.append(condition)
    if not pending:
        return True
    combined = pending[0]
    for condition in pending[1:]:
        combined = combined & condition
    return combined


def holds(condition):
    """A comparison of ints (a NumPy or Python bool) as a Python bool; of tensors, as it is."""
    return bool(condition) if isinstance(condition, bool) or type(condition).__module__ == "numpy" else condition


#: the relations ``sizes_hold`` checks, of two sizes (ints, or scalar tensors where a graph leaves a size unknown)
_RELATIONS = {
    "equal": lambda a, b: holds(a == b),
    "broadcast": lambda a, b: _either(holds(a == b), _either(holds(a == 1), holds(b == 1))),
    "broadcasts_to": lambda a, b: _either(holds(a == 1), holds(a == b)),  # (a broadcasts to b)
    "at_most": lambda a, b: holds(a <= b),
}


def sizes_hold(relation: str, a: tuple, b: tuple, axes=None, agreeing=()):
    """Whether ``relation`` holds between ``a``'s and ``b``'s sizes (tuples of one length: ints, or scalar tensors
    where a traced graph leaves a size unknown) on each of ``axes`` (every axis by default): 'equal'; 'broadcast'
    (equal, or either of them 1); 'broadcasts_to' (``a``'s 1 or ``b``'s); 'at_most'. ``agreeing``: axes where the
    caller knows it holds (``size_keys``), which the backend may compare with the others for free. A bool where
    the sizes decide it now (False at once where two known sizes fail), else a boolean scalar tensor: the
    backend's optional op ``sizes_hold``, which compares the sizes as two shape vectors where that makes fewer
    graph ops (one comparison of a graph's shape vectors, where one per size built tens of ops per check), or
    one comparison per size."""
    axes = range(len(a)) if axes is None else axes
    pending, agreeing = [], list(agreeing)
    for axis in axes:
        decided = _decided(relation, a[axis], b[axis])
        if decided is False:
            return False
        (pending if decided is None else agreeing).append(axis)
    if not pending:
        return True
    vectorised = optional_op(ops._ops(), "sizes_hold")
    if vectorised is not None:
        return vectorised(relation, tuple(a), tuple(b), tuple(pending), tuple(agreeing))
    return all_of(_RELATIONS[relation](a[axis], b[axis]) for axis in pending)


def _decided(relation: str, a, b):
    """Whether ``relation`` holds between two sizes, as far as the known ones decide it now: a bool, or None."""
    known_a, known_b = isinstance(a, Integral), isinstance(b, Integral)
    if known_a and known_b:
        return _RELATIONS[relation](int(a), int(b))
    if relation == "broadcast" and (known_a and a == 1 or known_b and b == 1) or \
            relation == "broadcasts_to" and known_a and a == 1:
        return True
    return None


def check_window_fits(owner, x, spans, paddings, advice: str):
    """``ShapeMismatchError`` when a window (a kernel of ``spans``: its dilated size per spatial axis, ints or
    scalar tensors) is larger than the input padded by ``paddings`` (per axis: an int, 'same' or 'valid');
    ``owner`` names the layer or op. Returns ``x`` (see ``require``)."""
    sizes = tuple(x.shape)
    if None not in sizes and all(type(span) is int for span in spans):  # every size known: ints compared at once
        for axis, (span, padding) in enumerate(zip(spans, paddings)):
            if padding != "same" and sizes[axis + 2] + (0 if padding == "valid" else 2 * padding) < span:
                break
        else:
            return x
    else:
        sizes = None  # (read where a check needs them)
    labels = ("length",) if len(spans) == 1 else ("height", "width")
    for axis, (span, padding, label) in enumerate(zip(spans, paddings, labels)):
        if padding == "same":
            continue  # the padding grows with the kernel
        added = 0 if padding == "valid" else 2 * padding
        if type(span) is int and added >= span:
            continue  # the padding alone holds the kernel, whatever the input's size
        sizes = sizes_of(x) if sizes is None else sizes
        padded = sizes[axis + 2] + added if added else sizes[axis + 2]  # (a graph's unknown size: no op adding 0)

        def template(label=label):
            return (f"{literal(owner)}: kernel {label} {{}} is larger than the padded input {label} {{}} (input "
                    f"shape {shape_template(len(sizes))}); {advice}")

        x = require(x, holds(padded >= span), template, (span, padded) + sizes)
    return x


def check_conv_channels(owner, x, weight, groups: int, transposed: bool = False):
    """``(x, weight)``, after checking a convolution's channels against its ``weight`` ((out, in / groups, ...), or
    for a ``transposed`` one (in, out / groups, ...)) and ``groups``: ``groups`` must divide the weight's first axis
    and the input must have ``in`` channels, as PyTorch's; else a ``ShapeMismatchError`` naming the sizes, now or
    when a graph that leaves them unknown runs (the frameworks raised errors of their own, TensorFlow's a split's or
    a reshape's).
    Input of another rank than the weight's is left to the caller. (The groups' check is the weight's, which a
    graph splits by groups before it reads ``x``.)"""
    if getattr(x.shape, "rank", 0) is None or getattr(weight.shape, "rank", 0) is None:
        return x, weight
    if len(tuple(x.shape)) != len(tuple(weight.shape)):
        return x, weight
    sizes, kernel = sizes_of(x), sizes_of(weight)
    what = "input" if transposed else "output"
    divides = True if groups == 1 else holds(kernel[0] % groups == 0)  # (1 divides any size: no op in a graph)
    weight = require(weight, divides, lambda: (
        f"{literal(owner)}: groups={groups} must divide the weight's {what} channels, {{}} (weight shape "
        f"{shape_template(len(kernel))})"), (kernel[0],) + tuple(kernel))
    expected = kernel[0] if transposed else kernel[1] * groups
    x = require(x, holds(sizes[1] == expected), lambda: (
        f"{literal(owner)} expected input with {{}} channels (weight shape {shape_template(len(kernel))}, "
        f"groups={groups}), got input of shape {shape_template(len(sizes))}"), (expected, *kernel, *sizes))
    return x, weight


def check_batch_statistics(owner, x):
    """``ShapeMismatchError`` for batch statistics of one value per channel (PyTorch's rule for batch norm in
    training: a variance of one value is 0, the output all zeros). Returns ``x`` (see ``require``)."""
    sizes = tuple(x.shape)
    if None not in sizes and (sizes[0] != 1 or any(size != 1 for size in sizes[2:])):  # the common case, at once
        return x
    sizes = sizes_of(x)
    count = _values_per_channel(sizes)

    def template():
        return (f"{literal(owner)}: expected more than 1 value per channel when training, got input of shape "
                f"{shape_template(len(sizes))}; train with more values per channel (a larger batch) or call eval()")

    return require(x, holds(count != 1), template, sizes)  # (PyTorch's test: an empty batch is no error here)


def float_bound(value) -> bool:
    """Whether a bound of ``clip`` is a floating-point number (Python's or NumPy's, or a float array or tensor): with
    integer input it makes the result floating, as PyTorch's type promotion does (never a truncated bound)."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, float):
        return True
    dtype = getattr(value, "dtype", None)
    return is_floating(dtype if dtype is not None else np.asarray(value).dtype)


def has_values_per_channel(x):
    """Whether ``x`` (N, C, ...) holds any value per channel: True or False where its sizes are known, else (a
    graph's unknown batch size) a boolean scalar tensor. An empty batch's statistics are NaN: batch norm keeps its
    running statistics then, as PyTorch's does."""
    sizes = tuple(x.shape)
    if None not in sizes:
        return all(size != 0 for size in sizes[:1] + sizes[2:])
    return _values_per_channel(sizes_of(x)) > 0


def _values_per_channel(sizes):
    """The values per channel of an (N, C, ...) input of ``sizes`` (ints, or scalar tensors where a graph leaves a
    size unknown): N times every size after C."""
    return math.prod(sizes[2:], start=sizes[0])


def check_same_shape(owner, prediction, target, names=("prediction", "target")):
    """``ShapeMismatchError`` naming both shapes unless ``prediction`` and ``target`` have the same shape (no
    broadcasting: PyTorch's losses broadcast with a warning, which hides a (N, 1) against (N,) mistake). In a graph
    traced for a tensor of unknown rank (TensorFlow's ``TensorSpec(None)``) nothing is checked."""
    if getattr(prediction.shape, "rank", 0) is None or getattr(target.shape, "rank", 0) is None:
        return prediction
    a, b = tuple(prediction.shape), tuple(target.shape)
    if a == b and None not in a:  # the common case, decided at once
        return prediction
    keys = (size_keys(prediction), size_keys(target)) if len(a) == len(b) else ((), ())
    if len(a) == len(b) and keys[0] == keys[1]:  # sizes a traced graph knows to agree (one made from the other)
        return prediction
    a, b = sizes_of(prediction), sizes_of(target)

    def template():
        return (f"{literal(owner)} needs {names[0]} and {names[1]} of the same shape; {names[0]} has shape "
                f"{shape_template(len(a))}, {names[1]} has shape {shape_template(len(b))}")

    same = len(a) == len(b) and sizes_hold("equal", a, b, [axis for axis, (p, q) in enumerate(zip(*keys)) if p != q],
                                           [axis for axis, (p, q) in enumerate(zip(*keys)) if p == q])
    return require(prediction, same, template, a + b)


def check_reduction(owner, reduction, reductions: tuple = arguments.REDUCTIONS) -> str:
    """``reduction``, after checking that it is one of ``reductions``: any other value is a ``ValueError`` naming the
    valid ones, as PyTorch's (the functional losses took an unknown one for 'none', or some backends for 'sum')."""
    if not isinstance(reduction, str) or reduction not in reductions:
        raise ValueError(f"{literal(owner)} reduction must be one of {reductions}, got {reduction!r}")
    return reduction


def float_labels_message(name: str, dtype, probabilities_allowed: bool = True) -> str:
    """What ``name`` says of float labels of shape (N,): refused, never truncated to classes (PyTorch refuses them
    too), even when every value is a whole number; ``fit`` says the same of a data set's labels. (No sizes in
    the message: a graph may not know them while it is traced, and the message is the same everywhere.)"""
    alternative = " or class probabilities of the logits' shape (N, C)" if probabilities_allowed else ""
    return (f"{name} needs integer class labels of shape (N,){alternative}, got {dtype_name(dtype)} labels of "
            f"shape (N,); convert them with labels.astype('int64')")


def class_loss_shapes(name, scores, target, probabilities_allowed: bool, weight=None, what: str | None = None):
    """``(probabilities, scores, target)`` of a loss over classes (``CrossEntropyLoss``, ``NLLLoss`` and their ops),
    after PyTorch's shape rules: scores (N, C) or (N, C, d1, ...) against integer labels (N,) or (N, d1, ...), or,
    with ``probabilities_allowed``, class probabilities of the scores' shape (``probabilities``: True then), and a
    class ``weight`` (or None) of one value per class, C. Anything else is a ``ShapeMismatchError`` naming both
    shapes, now or, for sizes a graph knows only when it runs, then (use the returned tensors after it): labels of
    another length were used as far as they went, or broadcast, or the framework raised its own error. ``what``:
    what the scores are, for the message ('logits' with ``probabilities_allowed``, else 'log-probabilities')."""
    what = what or ("logits" if probabilities_allowed else "log-probabilities")
    if getattr(scores.shape, "rank", 0) is None or getattr(target.shape, "rank", 0) is None:
        # a graph's tensor of unknown rank (squeeze() without dim): nothing to check it by, as ``check_same_shape``
        return probabilities_allowed and holds_floats(target), scores, target
    a, b = tuple(scores.shape), tuple(target.shape)
    if holds_floats(target) and len(a) >= 2 and len(b) == len(a) - 1:
        raise DtypeMismatchError(float_labels_message(name, target.dtype, probabilities_allowed))
    probabilities = probabilities_allowed and holds_floats(target) and len(a) >= 2
    if probabilities:
        message = (f"{name} needs logits of shape (N, C) and integer labels of shape (N,) or class probabilities "
                   f"of the logits' shape; got logits {{}} and class probabilities {{}}")
        expected = lambda sizes: sizes  # noqa: E731
    else:
        message = (f"{name} needs {what} of shape (N, C) and integer labels of shape (N,) (or (N, C, d1, ...) and "
                   f"(N, d1, ...)); got {'logits ' if what == 'logits' else ''}{{}} and labels {{}}")
        expected = lambda sizes: sizes[:1] + sizes[2:]  # noqa: E731
    if len(a) < 2 or len(b) != len(expected(a)) or shapes_conflict(expected(a), b):
        sizes, labels = sizes_of(scores), sizes_of(target)  # (the message as the graph prints it when it runs)
        shapes = (shape_template(len(sizes)), shape_template(len(labels)))
        target = require(target, False, lambda: message.format(*shapes), sizes + labels)
    else:
        target = _checked_when_run(scores, target, message, expected)
    return probabilities, class_weight_count(name, weight, scores), target


def class_weight_count(name, weight, scores):
    """``scores`` (N, C, ...), after checking that a class ``weight`` (or None) holds one value per class, C: a
    ``ShapeMismatchError`` naming both, now or when a graph runs (PyTorch refuses it; the frameworks broadcast one
    value, or raised their own errors)."""
    if weight is None:
        return scores
    counts, sizes = sizes_of(weight), sizes_of(scores)
    if len(counts) != 1:
        raise ShapeMismatchError(f"{literal(name)} needs a class weight of shape (C,), one value per class, got "
                                 f"shape {tuple(weight.shape)}")
    template = lambda: (f"{literal(name)} has {{}} class weights but the input has {{}} classes (shape "  # noqa: E731
                        f"{shape_template(len(sizes))})")
    return require(scores, holds(counts[0] == sizes[1]), template, (counts[0], sizes[1]) + tuple(sizes))


def shapes_conflict(a, b) -> bool:
    """Whether shapes ``a`` and ``b`` (None for a size a graph does not know) differ in rank or in a known size."""
    if len(a) != len(b):
        return True
    return any(x is not None and y is not None and x != y for x, y in zip(a, b))


def _checked_when_run(scores, target, message: str, expected):
    """``target``, carrying the check that its sizes are ``expected(scores' sizes)``, where a graph traced for any
    sizes leaves some unknown (``require_shape``): the eager ``message`` (two ``{}``: the shapes) when it runs
    (TensorFlow's own slicing error before, or none: a loss of mismatched sizes)."""
    sizes = sizes_of(scores)
    shapes = (shape_template(len(sizes)), shape_template(len(tuple(target.shape))))
    return require_shape(target, expected(sizes), lambda: message.format(*shapes), shown=tuple(sizes))


def check_broadcasts_to(owner, what, weight, x):
    """``x``, after checking that ``weight`` (a class weight, a loss's ``pos_weight``) broadcasts to ``x``'s shape
    (NumPy's rule from the last axis, the result keeping ``x``'s shape), as PyTorch refuses it otherwise (the
    frameworks raised each their own error, or broadcast both ways): a ``ShapeMismatchError`` naming both shapes,
    now or, for sizes a graph knows only when it runs, then (use the returned ``x`` after it)."""
    if weight is None or getattr(x.shape, "rank", 0) is None or getattr(weight.shape, "rank", 0) is None:
        return x  # (a graph traced for any rank: as check_same_shape)
    sizes, inputs = sizes_of(weight), sizes_of(x)

    def template():
        return (f"{literal(owner)}: {what} of shape {shape_template(len(sizes))} does not broadcast to the input's "
                f"shape {shape_template(len(inputs))}")

    return _require_broadcast(x, sizes, inputs, template)


def _require_broadcast(x, sizes: tuple, target: tuple, template):
    """``x``, after checking that ``sizes`` broadcast to ``target`` (ints, or scalar tensors a graph knows when it
    runs): each trailing size 1 or the target's, and no more axes than it has; ``template()`` the error otherwise."""
    if len(sizes) > len(target):
        return require(x, False, template, sizes + target)
    fits = sizes_hold("broadcasts_to", tuple(sizes), tuple(target[len(target) - len(sizes):]))
    return require(x, fits, template, sizes + target)


def _either(a, b):
    """The disjunction of two bools or boolean scalar tensors: a bool when it is decided."""
    if a is True or b is True:
        return True
    if a is False or b is False:
        return b if a is False else a
    return a | b


def known_shape(shape) -> tuple:
    """A shape as a tuple of ints, None where a size is not a known integer: a TensorFlow graph's unknown size, or
    a symbolic one (``torch.export``'s ``SymInt``: never compared or hashed here, which would specialise it or
    fail). Raises ``ValueError`` for a TensorFlow shape of unknown rank."""
    sizes = tuple(shape)
    for size in sizes:
        if type(size) is not int:  # (the common case, all Python ints, without an ABC check per size)
            return tuple(size if isinstance(size, Integral) else None for size in sizes)
    return sizes


def broadcast_conflict(sizes) -> bool:
    """Whether known ``sizes`` (of one axis, aligned) fail to broadcast: two of them other than 1 differ."""
    first = None
    for size in sizes:
        if size is not None and size != 1:
            if first is None:
                first = size
            elif size != first:
                return True
    return False


def check_matmul_shapes(a, b):
    """``a``, after checking ``matmul``'s operands as PyTorch does: a 0-d one, a contraction of two sizes (a's last
    axis against b's second to last, or its only one), or batch axes that do not broadcast are a
    ``ShapeMismatchError`` naming both shapes (the frameworks raised errors of their own), at once where the sizes
    are known, else (a TensorFlow graph's) when the graph runs, with the same message. Use the returned ``a``."""
    try:
        shape_a, shape_b = known_shape(a.shape), known_shape(b.shape)
    except (AttributeError, ValueError):  # no shape, or a TensorFlow graph's tensor of unknown rank
        return a
    if len(shape_b) >= 2 and len(shape_a) >= 1 and shape_a[-1] == shape_b[-2] is not None and \
            (len(shape_b) == 2 or shape_a[:-2] == shape_b[:-2] and None not in shape_a[:-2]):
        return a  # the common cases (an input times a weight, batches of one shape), decided at once
    if not shape_a or not shape_b:
        raise ShapeMismatchError(f"matmul needs operands of at least 1 axis, got operands of {len(shape_a)} and "
                                 f"{len(shape_b)} axes")
    inner, where = (shape_b[0], "only") if len(shape_b) == 1 else (shape_b[-2], "second to last")
    problem = None
    if shape_a[-1] != inner and shape_a[-1] is not None and inner is not None:
        problem = f"a's last axis ({shape_a[-1]}) must equal b's {where} axis ({inner})"
    elif any(broadcast_conflict(pair) for pair in aligned(shape_a[:-2], shape_b[:-2])):
        problem = "their batch axes (all but the last two) must broadcast"
    if problem:
        raise ShapeMismatchError(f"matmul of shapes {shape_a} and {shape_b}: {problem}")
    batch_unknown = _unknown_beside_another(aligned(shape_a[:-2], shape_b[:-2]))
    if symbolic(a, b) or not (shape_a[-1] is None or inner is None or batch_unknown):
        return a
    sizes_a, sizes_b = sizes_of(a), sizes_of(b)
    inner = sizes_b[0] if len(sizes_b) == 1 else sizes_b[-2]
    shapes = f"matmul of shapes {shape_template(len(sizes_a))} and {shape_template(len(sizes_b))}: "
    fits = holds(sizes_a[-1] == inner)
    a = require(a, fits, lambda: shapes + f"a's last axis ({{}}) must equal b's {where} axis ({{}})",
                sizes_a + sizes_b + (sizes_a[-1], inner))
    if batch_unknown:  # (its message only where the contraction fits, as above)
        batch = broadcasts([sizes_a[:-2], sizes_b[:-2]])
        a = require(a, _either(batch, (not fits) if isinstance(fits, bool) else ~fits), lambda: (
            shapes + "their batch axes (all but the last two) must broadcast"), sizes_a + sizes_b)
    return a


def symbolic(*tensors) -> bool:
    """Whether a shape of ``tensors`` holds a symbolic size (``torch.export``'s ``SymInt``): never compared here,
    which would specialise it; left to the exported program."""
    return any(size is not None and not isinstance(size, Integral)
               for t in tensors for size in tuple(getattr(t, "shape", ())))


def _unknown_beside_another(axes) -> bool:
    """Whether sizes aligned axis by axis (``aligned``) hold, on some axis, a size a traced graph leaves unknown
    (None) beside another that is not 1: whether they broadcast is known only when the graph runs."""
    return any(None in sizes and sum(size != 1 for size in sizes) > 1 for sizes in axes)


def broadcasts(shapes):
    """Whether ``shapes`` (tuples of sizes: ints, or scalar tensors where a graph leaves them unknown) broadcast
    together, aligned from the last axis: each pair of sizes equal or one of them 1. A bool where that is decided
    now, else a boolean scalar tensor."""
    conditions = []
    for first, a in enumerate(shapes):
        for b in shapes[first + 1:]:
            rank = min(len(a), len(b))  # (the axes before these meet the shorter shape's 1s)
            conditions.append(sizes_hold("broadcast", tuple(a[len(a) - rank:]), tuple(b[len(b) - rank:])))
    return all_of(conditions)


def broadcast_message(owner, shapes: dict) -> str:
    """The ``ShapeMismatchError`` of ``shapes`` (``{name: shape}``: tuples, or their templates) that do not
    broadcast: '``<owner> needs shapes that broadcast (...); a has shape (2, 3), b has shape (2, 4)``'."""
    shown = ", ".join(f"{what} has shape {shape}" for what, shape in shapes.items())
    return (f"{literal(owner)} needs shapes that broadcast (aligned from the last axis, each pair of sizes equal or "
            f"one of them 1); {shown}")


def check_broadcast(owner, tensors: dict) -> list:
    """The values of ``tensors`` (``{name: tensor or number}``), after checking that they broadcast together where a
    traced graph leaves a size unknown beside another that is not 1: ``broadcast_message``'s ``ShapeMismatchError``
    when the graph runs, as eagerly (the check rides on the first tensor of unknown sizes: use the returned values).
    Sizes the graph knows to be equal (``size_keys``: ``x > 0`` beside ``x``, so that ``where(x > 0, x, 0)`` gains
    no op) are compared once, and an axis whose sizes all agree so, not at all. Sizes known while tracing are the
    caller's to compare; where every size is known this adds nothing."""
    values = list(tensors.values())
    shapes = [known_shape(getattr(t, "shape", ())) for t in values]
    if not any(None in shape for shape in shapes) or symbolic(*values):
        return values
    keys = [size_keys(t) for t in values]
    pairs: dict = {}  # (i, j): the axes (counted from the last) where tensor i's size is compared with tensor j's
    for back, axis in enumerate(reversed(list(aligned(*keys))), 1):
        first: dict = {}  # the first tensor of each size other than 1 (sizes the graph knows to agree: one size)
        for position, key in enumerate(axis):
            if key != 1:
                first.setdefault(key, position)
        positions = list(first.values())
        for n, i in enumerate(positions):
            for j in positions[n + 1:]:
                pairs.setdefault((i, j), []).append(back)
    if not pairs:
        return values
    sizes: list = []  # (a tensor whose sizes the graph knows to be an earlier one's: that one's, read once)
    for position, t in enumerate(values):
        same = next((sizes[k] for k in range(position) if keys[k] == keys[position]), None)
        sizes.append(same if same is not None else sizes_of(t) if hasattr(t, "shape") else ())
    template = broadcast_message(owner, {name: shape_template(len(s)) for name, s in zip(tensors, sizes)})
    carrier = next(position for position, shape in enumerate(shapes) if None in shape)
    fits = _broadcast_together(sizes, pairs)
    values[carrier] = require(values[carrier], fits, lambda: template, tuple(size for s in sizes for size in s))
    return values


def _broadcast_together(sizes: list, pairs: dict):
    """Whether the tensors of ``sizes`` (each one's sizes: ints, and scalar tensors a graph leaves unknown) broadcast
    together, ``pairs`` the pairs and axes ``check_broadcast`` found to compare: three pairs or more (a ``where`` of
    three tensors of unknown sizes) as the backend's optional op ``sizes_broadcast`` compares them, every size at
    once, where it has that op and can (one stack of the shape vectors: 7 ops, where a comparison per pair built 20
    for a ``where``, a twentieth of the parity tables' graphs); else pair by pair."""
    if len(pairs) >= 3:
        together = optional_op(ops._ops(), "sizes_broadcast")
        held = together(tuple(tuple(s) for s in sizes if s)) if together is not None else None
        if held is not None:
            return held
    return all_of(_broadcast_pair(sizes[i], sizes[j], backs) for (i, j), backs in pairs.items())


def _broadcast_pair(a: tuple, b: tuple, backs: list):
    """Whether sizes ``a`` and ``b`` broadcast on the axes ``backs`` (counted from the last: 1 is the last); on their
    other common axes ``check_broadcast``'s other pairs decide it (or their sizes agree): comparing them too changes
    nothing (``sizes_hold``'s ``agreeing``)."""
    rank = min(len(a), len(b))
    axes = [rank - back for back in backs]
    return sizes_hold("broadcast", tuple(a[len(a) - rank:]), tuple(b[len(b) - rank:]), axes,
                      [axis for axis in range(rank) if axis not in axes])


def size_keys(x) -> tuple:
    """``x``'s sizes as keys that say which sizes a traced graph knows to be equal without reading them: an int
    where a size is known, else the backend's key (its optional op ``size_keys``; one key, one size when the graph
    runs), or without that op a key of ``x``'s own axis. ``()`` for a Python number."""
    if not hasattr(x, "shape"):
        return ()
    keys = optional_op(ops._ops(), "size_keys")
    if keys is not None:
        return tuple(keys(x))
    return tuple(("size", id(x), axis) if size is None else size for axis, size in enumerate(known_shape(x.shape)))


def aligned(*shapes) -> zip:
    """The sizes of ``shapes`` axis by axis, aligned from the last axis as broadcasting aligns them: a shorter shape
    reads as 1 on the leading axes it lacks."""
    rank = max(len(shape) for shape in shapes)
    return zip(*((1,) * (rank - len(shape)) + tuple(shape) for shape in shapes))


def joined(owner, tensors, axis) -> list:
    """``tensors``, after checking that ``concat`` (along ``axis``) or ``stack`` (``axis`` None) can join them, as
    PyTorch refuses them: two ranks, or two sizes off ``axis`` (every axis for ``stack``), a ``ShapeMismatchError``
    naming every shape (the frameworks raised errors of their own), at once where the sizes are known, else (a
    TensorFlow graph's) when the graph runs, with the same message. ``concat`` leaves out a 1-D empty tensor
    beside others, as ``torch.cat`` takes it (TensorFlow and JAX refused its rank)."""
    try:
        shapes = [known_shape(t.shape) for t in tensors]
    except (AttributeError, ValueError):  # no shape, or a TensorFlow graph's tensor of unknown rank
        return tensors
    if len(shapes) < 2 or all(shape == shapes[0] for shape in shapes) and None not in shapes[0]:
        return tensors  # the common case, decided at once
    if axis is not None and any(shape == (0,) for shape in shapes) and any(shape != (0,) for shape in shapes):
        kept = [(t, shape) for t, shape in zip(tensors, shapes) if shape != (0,)]
        tensors, shapes = [t for t, _ in kept], [shape for _, shape in kept]
    ranks = {len(shape) for shape in shapes}
    shown = ", ".join(map(str, shapes))
    if len(ranks) > 1:
        raise ShapeMismatchError(f"{literal(owner)} needs tensors of one rank, got tensors of "
                                 f"{', '.join(str(len(shape)) for shape in shapes)} axes")
    rank = ranks.pop()
    skipped = None if axis is None or not rank else arguments.integer(axis) % rank
    wanted = "one shape" if axis is None else f"equal sizes on every axis but {axis}"
    for position, sizes in enumerate(zip(*shapes)):
        if position != skipped and len({size for size in sizes if size is not None}) > 1:
            raise ShapeMismatchError(f"{literal(owner)} needs tensors of {wanted}, got shapes {shown}")
    return _joined_when_run(owner, wanted, list(tensors), shapes, skipped)


def _joined_when_run(owner, wanted: str, tensors: list, shapes: list, skipped):
    """``tensors``, the first carrying the check that they have one size on each axis but ``skipped`` where a
    traced graph leaves sizes unknown (sizes it knows to be the first's, ``size_keys``, not compared):
    ``joined``'s ``ShapeMismatchError`` when the graph runs."""
    if len(tensors) < 2 or symbolic(*tensors):
        return tensors
    keys = [size_keys(t) for t in tensors]
    compared: dict = {}  # tensor: the axes where its size is one the graph does not know to be the first tensor's
    for position in range(len(shapes[0])):
        if position != skipped:
            differing: dict = {}  # (once a key)
            for i in range(1, len(tensors)):
                if keys[i][position] != keys[0][position]:
                    differing.setdefault(keys[i][position], i)
            for i in differing.values():
                compared.setdefault(i, []).append(position)
    if not compared:
        return tensors
    sizes = [sizes_of(t) for t in tensors]
    same = all_of(sizes_hold("equal", sizes[i], sizes[0], axes, [position for position in range(len(sizes[0]))
                                                                if position not in axes and position != skipped])
                  for i, axes in compared.items())
    template = (f"{literal(owner)} needs tensors of {wanted}, got shapes "
                f"{', '.join(shape_template(len(s)) for s in sizes)}")
    tensors[0] = require(tensors[0], same, lambda: template, tuple(size for s in sizes for size in s))
    return tensors


def check_gather_index(x, dim, index):
    """``index``, after checking it against ``gather``'s input ``x``: the same rank, and no larger than ``x`` on
    any axis but ``dim``, as PyTorch's; else a ``ShapeMismatchError`` naming both shapes, now or when a graph that
    leaves the sizes unknown runs (TensorFlow's own error named a slice)."""
    if getattr(x.shape, "rank", 0) is None or getattr(index.shape, "rank", 0) is None:
        return index
    rank, ranks = len(x.shape), len(index.shape)
    if rank != ranks:
        raise ShapeMismatchError(f"gather needs an index of the input's rank, {rank} axes, got an index of {ranks}")
    inputs, indices = sizes_of(x), sizes_of(index)
    axis = dim % rank if rank else 0
    fits = sizes_hold("at_most", indices, inputs, [position for position in range(rank) if position != axis])
    return require(index, fits, lambda: (
        f"gather needs an index no larger than the input on every axis but dim={dim}, got an index of shape "
        f"{shape_template(rank)} for an input of shape {shape_template(rank)}"), tuple(indices) + tuple(inputs))


def check_attention_shapes(owner, query, key, value):
    """``query``, after checking attention's shapes as PyTorch's: query (..., L, E), key (..., S, E) and value
    (..., S, Ev) of at least 2 axes each, the query's and key's E equal, the key's and value's S equal, their batch
    axes broadcasting; a ``ShapeMismatchError`` naming the three shapes otherwise, now or when a graph that leaves
    the sizes unknown runs (the frameworks raised errors of their own, TensorFlow's naming a transpose)."""
    if any(getattr(t.shape, "rank", 0) is None for t in (query, key, value)):
        return query
    ranks = [len(t.shape) for t in (query, key, value)]
    if min(ranks) < 2:
        raise ShapeMismatchError(f"{literal(owner)} needs query, key and value of at least 2 axes ((..., L, E), (..., "
                                 f"S, E), (..., S, Ev)), got {ranks[0]}, {ranks[1]} and {ranks[2]} axes")
    raw = [tuple(t.shape) for t in (query, key, value)]
    known = [known_shape(shape) for shape in raw]
    queries, keys, values = known
    if queries[-1] == keys[-1] is not None and keys[-2] == values[-2] is not None and \
            queries[:-2] == keys[:-2] == values[:-2] and None not in queries[:-2]:
        return query  # the common case (one batch shape, every size known), decided at once
    if any(None in shape and None not in sizes for shape, sizes in zip(known, raw)):
        return query  # symbolic sizes (torch.export's): left to the exported program, never specialised here
    shapes = [sizes_of(t) for t in (query, key, value)]
    queries, keys, values = shapes
    conditions = [holds(queries[-1] == keys[-1]), holds(keys[-2] == values[-2]),
                  broadcasts([queries[:-2], keys[:-2], values[:-2]])]
    return require(query, all_of(conditions), lambda: (
        f"{literal(owner)}: query {shape_template(ranks[0])}, key {shape_template(ranks[1])} and value "
        f"{shape_template(ranks[2])} do not fit (..., L, E), (..., S, E) and (..., S, Ev) with batch axes that "
        f"broadcast"), tuple(queries) + tuple(keys) + tuple(values))


def check_floating(owner, x) -> None:
    """``DtypeMismatchError`` for integer (or boolean) input to a layer whose weights are floats: every
    framework refuses it in its own words (or, on jax, silently promotes it); unidl converts NumPy floats to
    the model's dtype but never guesses that integers are meant as values."""
    dtype = x.dtype
    if not is_floating(dtype):
        from unidl import config

        wanted = config.get_dtype()
        raise DtypeMismatchError(f"{literal(owner)} needs floating-point input, got {dtype_name(dtype)} input; "
                                 f"convert it with x.astype('{wanted}') or ud.ops.cast(x, '{wanted}')")


def check_conv_bias(owner, bias, weight, groups: int = 1, transposed: bool = False):
    """``bias``, after checking that it holds one value per output channel of a convolution's ``weight`` ((out, in
    / groups, *kernel); ``transposed``: (in, out / groups, *kernel)), as PyTorch's convolutions require: otherwise
    a ``ShapeMismatchError`` naming both shapes, now or when a graph that leaves a size unknown runs (torch's
    backend raised torch's ``RuntimeError``, TensorFlow an ``InvalidArgumentError`` eagerly and oneDNN's
    ``AbortedError`` in a graph, JAX a ``TypeError`` of broadcasting)."""
    weights, biases = sizes_of(weight), sizes_of(bias)
    out = weights[1] * groups if transposed else weights[0]
    if len(biases) != 1:
        raise ShapeMismatchError(f"{literal(owner)} expected a bias of one value per output channel, received a bias "
                                 f"of {len(biases)} axes")

    def template():
        return (f"{literal(owner)} expected a bias of shape ({{}},), one value per output channel of a weight of shape "
                f"{shape_template(len(weights))}, received a bias of shape ({{}},)")

    return require(bias, holds(biases[0] == out), template, (out, *weights, biases[0]))


def check_parameters_dtype(owner, x, parameter, halves: bool = False, what: str = "input",
                           autocast: bool = True) -> bool:
    """``DtypeMismatchError`` for input of another dtype than a layer's floating-point ``parameter`` (integers,
    float64 or float16 input to a float32 ``Linear``), as PyTorch refuses it (TensorFlow refused it
    in its own words, JAX promoted the two: float64 or float32 out). Under autocast (``ud.Precision``'s casts,
    or torch's own) the casts are autocast's, and nothing is raised. With ``halves`` (the normalization layers,
    which PyTorch's mixed-type kernels let take float16 or bfloat16 input beside float32 parameters, under
    autocast too) such input returns True: the caller computes in float32 and gives the result back in the
    input's dtype, as PyTorch does. False otherwise. ``what``: what ``x`` is, for the message (an RNN's initial
    state, ``linear``'s bias). ``autocast=False``: autocast exempts nothing (an op PyTorch's autocast leaves to
    its mixed-type kernels)."""
    if parameter is None:
        return False
    given, held = x.dtype, parameter.dtype
    if given is held or (dtype_name(given) == held if type(held) is str else given == held):
        return False  # the common case, decided at once (Keras's variables name their dtype: no DType to compare)
    given, held = dtype_name(given), dtype_name(held)
    if not is_floating(given) and is_floating(held):  # (integers or booleans to float weights: jax promoted them)
        raise DtypeMismatchError(f"{literal(owner)} needs floating-point {what}, got {given} {what}; convert "
                                 f"it with x.astype('{held}') or ud.ops.cast(x, '{held}')")
    if given == held or not is_floating(given) or not is_floating(held):
        return False
    if halves and is_half(given) and held == "float32":
        return True  # (under autocast too: PyTorch's mixed-type kernel gives autocast's half output back)
    if autocast and _autocast_in_force():
        return False
    remedy = ("train in mixed precision with ud.Precision" if is_half(given) else
              f"create the model under ud.use_dtype('{given}')" if held == "float32" else
              f"call it under ud.use_dtype('{held}'), which converts arrays to it")
    raise DtypeMismatchError(f"{literal(owner)} has {held} parameters and got {given} {what}; cast the {what} with "
                             f"ud.ops.cast(x, '{held}'), or {remedy}")


def _autocast_in_force() -> bool:
    """Whether a mixed-precision forward is running: ``ud.Precision``'s casts (``AutocastOps``) or the
    framework's own autocast (torch's)."""
    from unidl import config

    return active_ops() is not None or config.backend().framework_autocast()


def check_numbers(owner, x) -> None:
    """``DtypeMismatchError`` for boolean input to an op of numbers named ``owner`` (a maximum pooling, a nearest
    interpolation): PyTorch has no boolean kernel for them, and the other frameworks raised errors of their own or
    gave booleans."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not is_floating(dtype) and not is_integer(dtype):
        from unidl import config

        raise DtypeMismatchError(f"{literal(owner)} needs numbers, got {dtype_name(dtype)} input; convert it with "
                                 f"ud.ops.cast(x, 'uint8') or ud.ops.cast(x, '{config.get_dtype()}')")


def as_numbers(owner, what, x):
    """``x``, after ``check_numbers``: an op of numbers (``relu``, ``abs``, ``argmax``) named ``owner`` refuses
    booleans, as PyTorch has no boolean kernel for them (TensorFlow and Keras raised errors of their own, JAX gave
    int64 or 0)."""
    check_numbers(owner, x)
    return x


def booleans_as_int64(owner, what, x):
    """``x``, with booleans converted to int64, as PyTorch's ``square`` and ``clip`` to an integer bound make them
    (TensorFlow refused booleans, JAX and Keras gave int32); other dtypes are left as they are."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or dtype_name(dtype) != "bool":
        return x
    return ops.cast(as_tensor(owner, what, x), "int64")


def check_condition(owner, condition) -> None:
    """``DtypeMismatchError`` for a condition that is not booleans (PyTorch and TensorFlow refuse one in their own
    words; JAX and Keras took non-zero as true)."""
    dtype = getattr(condition, "dtype", None)
    if dtype is not None and dtype_name(dtype) != "bool":
        raise DtypeMismatchError(f"{literal(owner)}: condition must be booleans, got {dtype_name(dtype)}; compare it "
                                 f"(condition != 0) or convert it with ud.ops.cast(condition, 'bool')")


def check_mask(owner, what, mask, query=None, float32: bool = False) -> None:
    """``DtypeMismatchError`` for an attention mask that is neither booleans (which keys take part) nor floats
    (added to the scores), as PyTorch refuses one; an integer 0/1 mask (a tokenizer's) was added to the scores
    as a bias on every backend, masking nothing. Given the ``query``, a float mask of another dtype than its own
    is one too outside autocast (``float32``: but float32, which ``F.scaled_dot_product_attention`` takes beside
    any query), as PyTorch refuses it (the other frameworks refused it in their own words or promoted the
    scores)."""
    dtype = getattr(mask, "dtype", None)
    if dtype is None:
        return
    if not is_floating(dtype):
        if dtype_name(dtype) != "bool":
            raise DtypeMismatchError(f"{literal(owner)}: {what} must be booleans or floats (added to the scores), "
                                     f"got {dtype_name(dtype)}; convert a 0/1 mask with ud.ops.cast({what}, 'bool')")
        return
    held = getattr(query, "dtype", None)
    if held is None or held == dtype or (float32 and dtype_name(dtype) == "float32"):
        return
    given, wanted = dtype_name(dtype), dtype_name(held)
    if given != wanted and is_floating(wanted) and not _autocast_in_force():
        allowed = f"the query's {wanted}" + (" or float32" if float32 and wanted != "float32" else "")
        raise DtypeMismatchError(f"{literal(owner)}: a float {what} must be {allowed}, got {given}; cast it with "
                                 f"ud.ops.cast({what}, '{wanted}')")


def check_attention_dtypes(owner, query, key, value) -> None:
    """``DtypeMismatchError`` for query, key and value of more than one dtype outside autocast, as PyTorch's
    attention refuses them (JAX promoted them, TensorFlow refused them in a matmul's words)."""
    if query.dtype == key.dtype == value.dtype:
        return
    names = [dtype_name(t.dtype) for t in (query, key, value)]
    if len(set(names)) > 1 and not _autocast_in_force():
        raise DtypeMismatchError(f"{literal(owner)} needs query, key and value of one dtype, got {names[0]}, "
                                 f"{names[1]} and {names[2]}; cast them with ud.ops.cast(t, '{names[0]}')")


def check_mask_broadcasts(owner, what, mask, query, key):
    """``mask``, after checking that it broadcasts to the attention scores' shape (..., L, S): the query's and the
    key's batch axes broadcast together, the query's length L, the key's S. Anything else is a
    ``ShapeMismatchError`` naming both shapes, now or, for sizes a graph knows only when it runs, then, as PyTorch
    refuses it (the frameworks broadcast the scores to the mask's batch: a (3, 5, 2) mask gave a (1, 5, 3) query
    three outputs)."""
    if mask is None or any(getattr(t.shape, "rank", 0) is None for t in (mask, query, key)):
        return mask  # (a graph traced for any rank: as check_same_shape)
    known = [tuple(t.shape) for t in (mask, query, key)]
    sizes, queries, keys = (shape if None not in shape else sizes_of(t) for shape, t in zip(known, (mask, query, key)))
    rank = max(len(queries), len(keys))
    padded_queries, padded_keys = (1,) * (rank - len(queries)) + queries, (1,) * (rank - len(keys)) + keys
    scores = tuple(_broadcast_size(a, b) for a, b in zip(padded_queries[:-2], padded_keys[:-2]))
    scores += (queries[-2], keys[-2])

    def template():
        return (f"{literal(owner)}: {what} of shape {shape_template(len(sizes))} does not broadcast to the attention "
                f"scores' shape (..., L, S) = {shape_template(len(scores))} of the query and the key")

    return _require_broadcast(mask, sizes, scores, template)


def _broadcast_size(a, b):
    """The size that sizes ``a`` and ``b`` (ints, or scalar tensors where a graph leaves them unknown) broadcast to,
    where they do (each 1 or the other's)."""
    if isinstance(a, Integral):
        return b if a == 1 else a
    if isinstance(b, Integral):
        return a if b == 1 else b
    return ops.where(a == 1, b, a)


def check_normalized_input(owner, x, normalized_shape: tuple):
    """``x``, after checking that its last axes are ``normalized_shape`` (a layer norm's: ``nn.LayerNorm``'s and
    ``ud.ops.layer_norm``'s): a ``ShapeMismatchError`` naming both, now or, for sizes a graph knows only when it runs,
    then, as PyTorch refuses other input (the frameworks normalized the last ``len(normalized_shape)`` axes)."""
    def mismatch(name, received):
        return f"{name} expected input whose last axes are {normalized_shape}, received shape {received}"

    shape = tuple(x.shape)
    tail = shape[-len(normalized_shape):]
    if len(tail) != len(normalized_shape) or any(a is not None and a != b for a, b in zip(tail, normalized_shape)):
        raise ShapeMismatchError(mismatch(literal(owner), shape))
    if None not in tail:
        return x
    axes = {axis - len(normalized_shape): size for axis, size in enumerate(normalized_shape)}
    return require_sizes(owner, x, axes, mismatch)  # (a graph traced for any sizes: checked when it runs)


def check_channels_input(owner, x, ranks: str = "(N, C, *)"):
    """``x``, after checking that it has a channel axis (rank 2 or more: (N, C, *)), as ``group_norm`` and
    ``batch_norm`` need one (PyTorch's error; the frameworks raised an ``IndexError`` of their own)."""
    if len(tuple(x.shape)) < 2:
        raise ShapeMismatchError(f"{literal(owner)} expected input of shape {ranks}, received {tuple(x.shape)}")
    return x


def check_parameter_shapes(owner, x, parameters: dict, expected: tuple, what: str):
    """``x``, after checking that each of ``parameters`` (name: tensor or None) has the shape ``expected`` (ints, or
    scalar tensors where a graph leaves the input's sizes unknown), ``what`` saying what that shape is (for the
    message): a ``ShapeMismatchError`` naming the parameter, its shape and the one expected, now or when the graph
    runs, as PyTorch refuses one (the frameworks broadcast a weight of shape (1,), or raised in their own words)."""
    known = all(isinstance(size, Integral) for size in expected)
    for name, parameter in parameters.items():
        if parameter is None or getattr(parameter.shape, "rank", 0) is None:
            continue
        if known and tuple(parameter.shape) == expected:  # the common case, decided at once
            continue
        sizes = sizes_of(parameter)

        def template(name=name, sizes=sizes):
            return (f"{literal(owner)}: {name} has shape {shape_template(len(sizes))}, expected "
                    f"{shape_template(len(expected))} ({what})")

        fits = len(sizes) == len(expected) and all_of([holds(a == b) for a, b in zip(sizes, expected)])
        x = require(x, fits, template, tuple(sizes) + tuple(expected))
    return x


def normalization_parameters(owner, x, parameters: dict) -> bool:
    """The dtype check of a functional normalization (``layer_norm``, ``batch_norm``, ``group_norm``) of ``x`` with
    ``parameters`` (name: tensor or None), under autocast too, whose CPU kernels PyTorch leaves these to: two
    parameters of two float dtypes, or float ``x`` of another than theirs, are one ``DtypeMismatchError`` as
    PyTorch's (TensorFlow and Keras refused them in their own words, JAX promoted them to float64). True for
    float16 or bfloat16 ``x`` beside float32 parameters, which PyTorch's mixed-type kernels take: the caller
    computes in float32 and gives the result back in ``x``'s dtype, as the normalization layers do."""
    given = [(name, parameter) for name, parameter in parameters.items() if parameter is not None]
    if not given:
        return False
    (first_name, first), held = given[0], dtype_name(given[0][1].dtype)
    for name, parameter in given[1:]:
        other = dtype_name(parameter.dtype)
        if other != held and is_floating(other) and is_floating(held):
            raise DtypeMismatchError(f"{literal(owner)} takes parameters of one dtype, got {held} {first_name} and "
                                     f"{other} {name}; cast them to one, e.g. ud.ops.cast({name}, '{held}')")
    return check_parameters_dtype(owner, x, first, halves=True, autocast=False)


def check_bounds(owner, x, bounds, floats: bool, what: str = "bound") -> None:
    """``ValueError`` for a bound (a Python number; ``floats``: float ones too) outside the range of integer
    ``x``'s dtype, the same on every backend (PyTorch refuses it; TensorFlow and Keras cast it, wrapping around:
    int8 clipped to [-1000, 1000] gave -24 everywhere, uint8 through hardtanh 255)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not is_integer(dtype):
        return
    kinds, info = (Integral, float) if floats else Integral, np.iinfo(dtype_name(dtype))
    for bound in bounds:
        if bound is None or isinstance(bound, bool) or not isinstance(bound, kinds):
            continue
        if not info.min <= bound <= info.max:
            raise ValueError(f"{literal(owner)} {what} {bound!r} lies outside the range of its {dtype_name(dtype)} "
                             f"input, [{info.min}, {info.max}]; use a {what} within it, or convert the input to a "
                             f"wider dtype (ud.ops.cast(x, 'int64') or 'float64')")


def start_axis(owner, x, start_dim) -> int:
    """``start_dim`` (a flatten's first axis) as a non-negative axis of ``x`` (-1 the last), the same on every
    backend; a ``ValueError`` for a float or a bool, a ``ShapeMismatchError`` naming ``owner`` for an axis that
    ``x`` lacks (PyTorch's ``IndexError``; the other frameworks added an axis of size 1). A 0-d input has axis 0."""
    if type(start_dim) is not int:
        from unidl import arguments

        start_dim = arguments.axis(literal(owner), "start_dim", start_dim, optional=False)
    rank = max(len(x.shape), 1)
    if not -rank <= start_dim < rank:
        raise ShapeMismatchError(f"{literal(owner)} start_dim {start_dim} is out of range for input of {len(x.shape)} "
                                 f"axes; use one in [{-rank}, {rank - 1}]")
    return start_dim % rank


def check_poolable(owner, x, average: bool) -> None:
    """``DtypeMismatchError`` for input a pooling layer or op named ``owner`` cannot take, the same on every backend:
    booleans (PyTorch has no boolean pooling; TensorFlow, Keras and JAX raised errors of their own) and, for an
    ``average``, integers (PyTorch averages int64 only, truncating, and refuses other integers; TensorFlow and Keras
    refused them, JAX gave float64 means). A maximum of integers is PyTorch's, on every backend."""
    if getattr(x, "dtype", None) is None:
        return
    if average:
        check_floating(owner, x)
    else:
        check_numbers(owner, x)


def check_integer(owner, what, x):
    """``x``, after checking that its dtype is an integer one: float or boolean indices are a
    ``DtypeMismatchError`` naming ``owner`` and ``what`` they are, on every backend (PyTorch and TensorFlow refuse
    them in their own words, TensorFlow's cross-entropy truncated float labels, JAX may round them). Integers of
    another dtype than int32 and int64 (uint8, int8, int16) become int64, which every framework indexes with
    (torch and TensorFlow refused them, JAX and Keras took them). Lists, tuples, Python numbers and strings are
    ``ud.tensor``'s first (ints int64, so ``take(x, [2, 0])`` is the same on every backend: torch's backend raised
    ``AttributeError`` where TensorFlow's took them; floats, booleans and strings are the errors above)."""
    if isinstance(x, (list, tuple, int, float, str)):
        x = value_as_tensor(owner, what, x)
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        if x is None or isinstance(x, bytes):  # (the frameworks raised each their own error)
            raise TypeError(f"{literal(owner)}: {what} must be integers (a tensor, a NumPy array or a list), got "
                            f"{type(x).__name__}")
        return x
    if not is_integer(dtype):
        raise DtypeMismatchError(f"{literal(owner)}: {what} must be integers, got {dtype_name(dtype)} {what}; convert "
                                 f"them with ud.ops.cast({what}, 'int64')")
    if isinstance(x, (np.ndarray, np.generic)):  # as ud.tensor converts it (torch's backend took no NumPy labels)
        x = as_tensor(owner, what, x)
    return x if dtype_name(dtype) in _INDEX_DTYPES else ops.cast(x, "int64")


_INDEX_DTYPES = ("int64", "int32")  # the integers every framework's gathers take


def labels_beside(owner, labels, ignore_index):
    """Integer ``labels`` (``check_integer``'s) in a dtype that holds ``ignore_index``: int32 labels become int64
    where it lies outside int32's range, as PyTorch compares them in int64 (an ignore_index no label can equal
    ignores nothing; compared in int32, 2**32 + 1 wrapped to 1 and label 1 was ignored). An ``ignore_index``
    outside int64's range is a ``ValueError`` naming ``owner``, as PyTorch's overflow."""
    if not -arguments.INT64_END <= ignore_index < arguments.INT64_END:
        raise ValueError(f"{literal(owner)}: ignore_index={ignore_index} lies outside int64's range, in which labels "
                         f"are compared with it (PyTorch raises an overflow); give an int64, -100 by default")
    dtype = getattr(labels, "dtype", None)
    if dtype is not None and dtype_name(dtype) == "int32" and not -2 ** 31 <= ignore_index < 2 ** 31:
        return ops.cast(labels, "int64")
    return labels


def check_labels(owner, loss, labels, ignore_index):
    """Class ``labels`` as the losses take them: integers (``check_integer``, its error naming ``loss``, the
    loss's class, 'NLLLoss') in a dtype that holds ``ignore_index`` (``labels_beside``, its error naming ``owner``,
    the op called)."""
    return labels_beside(owner, check_integer(loss, "labels", labels), ignore_index)


def check_same_kind(owner, a, b) -> None:
    """``DtypeMismatchError`` when one of ``a`` and ``b`` holds floats and the other integers or booleans: the
    frameworks differ there (PyTorch and TensorFlow refuse, JAX and Keras promote). Floats of two widths pass, for a
    mixed-precision scope to cast."""
    dtype_a, dtype_b = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if dtype_a is None or dtype_b is None or dtype_a == dtype_b or is_floating(dtype_a) == is_floating(dtype_b):
        return
    floating = dtype_name(dtype_a if is_floating(dtype_a) else dtype_b)
    raise DtypeMismatchError(f"{literal(owner)} of {dtype_name(dtype_a)} and {dtype_name(dtype_b)}: one is integer, "
                             f"the other floating-point; convert the integers with ud.ops.cast(x, '{floating}')")


def check_matmul_dtypes(a, b) -> None:
    """``DtypeMismatchError`` for a matrix product of two dtypes (float32 with float64, int32 with int64) or of
    booleans, as PyTorch's: JAX and Keras promoted them (a float64 product of a float32 model), TensorFlow refused
    in its own words."""
    dtype_a, dtype_b = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if dtype_a is None or dtype_b is None:
        return
    names = dtype_name(dtype_a), dtype_name(dtype_b)
    if "bool" in names:
        raise DtypeMismatchError(f"matmul of {names[0]} and {names[1]}: booleans have no matrix product (as "
                                 f"PyTorch's); cast them with ud.ops.cast(x, 'int64') or to floats")
    if names[0] != names[1]:
        raise DtypeMismatchError(f"matmul of {names[0]} and {names[1]}: the operands must have one dtype, as "
                                 f"PyTorch's; cast one with ud.ops.cast(x, '{names[0]}')")


def as_summable(owner, what, x):
    """``x``, with booleans and integers of other dtypes converted to int64, the dtype PyTorch sums them in
    (TensorFlow summed int32 in int32 and uint8 in uint8, wrapping around, and refused booleans; JAX summed
    uint8 in uint64; uint64 wraps around as in PyTorch)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not (is_integer(dtype) or dtype_name(dtype) == "bool") or dtype_name(dtype) == "int64":
        return x  # floats, complex numbers and int64 are summed in their own dtype
    return ops.cast(x, "int64")


def as_tensor(owner, what, x, like=None):
    """``x``, with a NumPy array, a list, a tuple or a Python number converted as ``ud.tensor`` converts it (floats
    to the dtype in force; given ``like``, to its dtype, rounded once), as a module's call converts its arguments:
    a loss op's NumPy target gave float64 on TensorFlow, Keras and JAX and an error on torch's backend, while the
    loss module gave float32 everywhere; a list of class weights was an ``AttributeError`` on every backend."""
    if isinstance(x, CONVERTED):
        if like is not None:
            _check_no_tensors(owner, what, x)  # (named as the caller's argument, not cast_like's)
            return ops.cast_like(x, like)
        return value_as_tensor(owner, what, x)
    return x


def weight_like(owner, what, weight, like):
    """A loss's class ``weight`` (a NumPy array, a list, a tensor, a module's buffer; or None) as a tensor of
    ``like``'s dtype, as PyTorch's promotion gives it beside ``like`` (a float32 buffer beside float64 logits)."""
    if weight is None:
        return None
    if isinstance(weight, CONVERTED):
        _check_no_tensors(owner, what, weight)  # (named as the caller's argument, not cast_like's)
    return ops.cast_like(weight, like)


def float32_under_autocast(x):
    """``x``, a float16 or bfloat16 tensor, in float32 where autocast is in force (``ud.Precision``'s casts or
    torch's own), as torch.autocast computes the cross-entropy and NLL losses (its float32 policy casts their
    half-precision inputs); else as it is. (A loss computed inside the forward, on bfloat16 logits beside a
    float32 class weight.)"""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not is_half(dtype) or not _autocast_in_force():
        return x
    return ops.cast(x, "float32")


def check_same_float_dtype(owner, probabilities, target) -> None:
    """``DtypeMismatchError`` for a float tensor ``target`` of another float dtype than ``probabilities``, as
    PyTorch's kernel refuses it ("Found dtype Double but expected Float"): a backend promoted or cast it silently.
    Under autocast float32 beside float16 or bfloat16 passes, as torch.autocast casts a loss's inputs to float32."""
    from unidl import config

    if not (config.backend().is_tensor(target) and is_floating(target.dtype)):
        return
    given, wanted = dtype_name(target.dtype), dtype_name(probabilities.dtype)
    if given == wanted or ({given, wanted} <= {"float32", "float16", "bfloat16"} and _autocast_in_force()):
        return
    raise DtypeMismatchError(f"{owner} needs a target of the probabilities' dtype {wanted}, got a {given} target "
                             f"(PyTorch refuses two float dtypes); cast it with ud.ops.cast(target, {wanted!r})")


def class_weight(owner, weight, like, what: str = "log-probabilities"):
    """A loss's class ``weight`` beside class labels (``nll_loss``, ``cross_entropy_loss``; or None): a NumPy array
    or list in ``like``'s dtype (``as_tensor``); a tensor of another dtype than ``like``'s is a
    ``DtypeMismatchError``, as PyTorch refuses it (a float32 weight beside float64 logits: torch's backend and JAX
    promoted to float64, TensorFlow raised in its own words), but a float16 or bfloat16 weight beside float32
    under autocast, which casts it (torch.autocast's rule for the losses). ``what``: what ``like`` is."""
    weight = as_tensor(owner, "weight", weight, like=like)
    held, wanted = getattr(weight, "dtype", None), getattr(like, "dtype", None)
    if held is None or wanted is None or held == wanted:
        return weight
    given, expected = dtype_name(held), dtype_name(wanted)
    if given == expected:  # (a Keras variable's dtype is the name: no DType to compare above)
        return weight
    if is_half(given) and expected == "float32" and _autocast_in_force():
        return ops.cast(weight, expected)
    raise DtypeMismatchError(f"{literal(owner)}: a class weight must have the {what}' dtype {expected}, got "
                             f"{given}; cast it with ud.ops.cast(weight, '{expected}'), or build the loss under "
                             f"ud.use_dtype('{expected}'), which makes its weight {expected}")


def value_as_tensor(owner, what, x):
    """``x``, a NumPy array or scalar, a list, a tuple or a Python number given for an op's tensor argument (what
    the op's dispatcher hands on, ``op_registry.CONVERTED``), converted as ``ud.tensor`` converts it (floats to the
    dtype in force), as a module's call converts its arguments: torch's backend refused them all, TensorFlow and
    Keras took them in dtypes of their own (float64 arrays, int32 lists), JAX took arrays and numbers, not lists.
    A list or tuple holding tensors is a ``TypeError``, as in PyTorch: through NumPy it would lose their gradients
    (TensorFlow and Keras had stacked it)."""
    from unidl.tensors import tensor

    _check_no_tensors(owner, what, x)
    with naming(owner, what):
        return tensor(x)


@contextlib.contextmanager
def naming(owner, what):
    """``ud.tensor``'s errors for values it cannot convert (``DtypeMismatchError`` for strings or objects,
    ``ValueError`` for ragged lists or integers beyond int64) raised while converting ``owner``'s argument ``what``,
    with the op and argument named first (``relu x: ud.tensor takes numbers ...``)."""
    try:
        yield
    except (DtypeMismatchError, ValueError) as error:
        if type(error) not in (DtypeMismatchError, ValueError):
            raise
        raise type(error)(f"{literal(owner)} {what}: {error}") from None


def leaves_as_tensors(owner, what, tree):
    """``tree``, a tensor or nested tuples (named ones too), lists and dicts of them (``ud.ops.scan``'s carry), with
    the NumPy arrays and scalars among its leaves converted as ``ud.tensor`` converts them; the structure and its
    containers' types are kept, and Python numbers stay numbers (typed by what they meet, as in ``0.0 + x``)."""
    if isinstance(tree, dict):
        converted = {k: leaves_as_tensors(owner, what, v) for k, v in tree.items()}
        if all(converted[k] is v for k, v in tree.items()):
            return tree
        copied = copy.copy(tree)  # (a defaultdict keeps its factory, an OrderedDict its order)
        copied.update(converted)
        return copied
    if isinstance(tree, (list, tuple)):
        leaves = [leaves_as_tensors(owner, what, v) for v in tree]
        if all(new is old for new, old in zip(leaves, tree)):
            return tree
        return type(tree)._make(leaves) if hasattr(tree, "_make") else type(tree)(leaves)
    if isinstance(tree, (np.ndarray, np.generic)):
        return value_as_tensor(owner, what, tree)
    return tree


def _check_no_tensors(owner, what, x) -> None:
    """``TypeError`` for a list or tuple holding tensors given for a tensor argument: NumPy would take them as
    values, losing their gradients (PyTorch refuses such a list too)."""
    if isinstance(x, (list, tuple)) and holds_tensors(x):
        raise TypeError(f"{literal(owner)} {what}: got a {type(x).__name__} holding tensors; join them into one "
                        f"tensor first with ud.ops.stack or ud.ops.concat")


def holds_tensors(values) -> bool:
    """Whether a (nested) list or tuple holds anything but numbers, NumPy values and strings: a tensor."""
    return any(holds_tensors(v) if isinstance(v, (list, tuple)) else
               not isinstance(v, (Number, np.generic, np.ndarray, str, bytes)) for v in values)


def as_array(owner, what, x) -> np.ndarray:
    """``np.asarray(x)`` of a NumPy value, a list or a number, after ``value_as_tensor``'s ``TypeError`` for a list
    holding tensors (which NumPy would take as values, losing their gradients)."""
    _check_no_tensors(owner, what, x)
    from unidl.tensors import as_numpy_values

    with naming(owner, what):
        return as_numpy_values(x)


def operand(owner, what, x, beside=None):
    """``x`` given beside the tensor ``beside`` (or None): a float NumPy array (or list of floats) beside a float
    tensor in that tensor's dtype, rounded once (float64 values beside a float64 tensor stay exact, as a number
    beside it does), anything else as ``value_as_tensor`` converts it."""
    array = as_array(owner, what, x)
    held = getattr(beside, "dtype", None)
    if array.dtype.kind == "f" and held is not None and is_floating(held):
        return as_tensor(owner, what, array, like=beside)
    return value_as_tensor(owner, what, array)  # (``x``'s list checked and converted by ``as_array``)


def operands(owner, a, b, numbers: bool = True):
    """``a`` and ``b`` of a binary op (``maximum``, ``minimum``, ``where``; ``matmul``'s and ``prelu``'s), the NumPy
    arrays, lists and 0-d arrays among them converted by ``operand`` beside the other (torch's backend refused them;
    the others took them in dtypes of their own). With ``numbers``, a Python or NumPy number, or a 0-d array, stays
    a number (typed as in ``x + 0.5``: unidl takes a 0-d array wherever it takes a number)."""
    def converted(x, other):
        if not isinstance(x, CONVERTED):
            return x
        if numbers and (isinstance(x, (Number, np.bool_)) or (isinstance(x, np.ndarray) and x.ndim == 0)):
            return x.item() if isinstance(x, np.ndarray) else x
        return operand(owner, "a" if x is a else "b", x, None if isinstance(other, CONVERTED) else other)

    return converted(a, b), converted(b, a)


def loss_operands(owner, prediction, target):
    """``prediction`` and ``target`` of a regression loss in the one dtype ``torch.result_type`` gives them once
    broadcast (float16 with float32: float32; float32 with float64: float64; integers beside float16: float16),
    in which PyTorch's ``mse_loss``, ``l1_loss`` and ``smooth_l1_loss`` compute (the other frameworks computed in
    the prediction's dtype); two integer or boolean operands are floats of the dtype in force. NumPy arrays are
    converted as ``ud.tensor`` converts them first (``as_tensor``)."""
    prediction, target = as_tensor(owner, "prediction", prediction), as_tensor(owner, "target", target)
    prediction, target = ops._promoted_as_torch(prediction, target, broadcast=True)
    return as_floating(owner, "prediction", prediction), as_floating(owner, "target", target)


def as_floating(owner, what, x):
    """``x``, with integer or boolean values converted to the float dtype in force (PyTorch's ``exp``, ``sqrt`` or
    ``sigmoid`` of integers are floats; TensorFlow refused them, JAX gave float64, Keras float32 under float64)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or is_floating(dtype):
        return x
    from unidl import config

    return ops.cast(x, config.get_dtype())


def _axes_out_of_range(owner, name, value, x, added: int = 0):
    """``AxisOutOfRangeError`` unless ``value`` (an axis, a sequence of them, or None) names axes from -rank to
    rank - 1 of ``x`` (a tensor, or a list of them: the first's), rank counting the ``added`` axes an op inserts
    (``unsqueeze``, ``stack``: 1); any axis of a 0-d tensor (PyTorch takes 0 and -1 as the scalar itself, TensorFlow
    and JAX refused them in their own words)."""
    if value is None:
        return
    if isinstance(x, (list, tuple)):
        x = x[0] if x else None
    shape = getattr(x, "shape", None)
    if shape is None or getattr(shape, "rank", 0) is None:  # (a graph's tensor of unknown rank, the result of a
        return  # squeeze() of sizes it does not know: the op's own axis rule, checked when the graph runs)
    dims = len(tuple(shape))
    rank = max(dims + added, 1)
    for axis in (value if isinstance(value, (list, tuple)) else (value,)):
        index = arguments.integer(axis)
        if index is not None and dims + added == 0:  # (PyTorch reads axis 0 or -1 of a scalar as the scalar itself;
            # the frameworks raised their own errors: one clear error here)
            raise AxisOutOfRangeError(f"{literal(owner)} {name}={index}: a 0-d tensor has no axes; give {name}=None, "
                                      f"or a tensor of one axis (unsqueeze it)")
        if index is not None and not -rank <= index < rank:
            raise AxisOutOfRangeError(f"{literal(owner)} {name}={index} is out of range for a tensor of {dims} axes: "
                                      f"it must lie in [{-rank}, {rank - 1}]")


def check_axes(owner, name, value, x) -> None:
    """An op's axes (``dim``, ``axis``) of ``x``: ``_axes_out_of_range``; a sequence naming one axis twice (1 and
    -2 of a 3-D tensor) is a ``ShapeMismatchError``, as PyTorch's reductions refuse it (the frameworks raised their
    own errors)."""
    _axes_out_of_range(owner, name, value, x)
    if isinstance(value, (list, tuple)) and len(value) > 1:
        shape = getattr(x, "shape", None)  # (None for concat's list of tensors, whose axis is one int)
        rank = None if shape is None or getattr(shape, "rank", 0) is None else len(tuple(shape))
        axes = [arguments.integer(a) for a in value]
        if rank and None not in axes and len({a % rank for a in axes}) < len(axes):
            raise ShapeMismatchError(f"{literal(owner)} {name}={tuple(value)!r} names an axis more than once (a tensor "
                                     f"of {rank} axes); give each axis once")


def check_new_axis(owner, name, value, x) -> None:
    """The axis an op inserts (``unsqueeze``, ``stack``): from -(rank + 1) to rank."""
    _axes_out_of_range(owner, name, value, x, added=1)


def check_permutation(owner, name, value, x) -> None:
    """``permute``'s ``dims``: each axis of ``x`` once (PyTorch's rule; the frameworks raised their own errors)."""
    _axes_out_of_range(owner, name, value, x)
    shape = getattr(x, "shape", None)
    given = arguments.sequence(value)
    if shape is None or given is None:
        return
    rank = len(tuple(shape))
    axes = [arguments.integer(a) for a in given]
    if len(axes) != rank or None in axes or len({a % max(rank, 1) for a in axes}) != rank:
        raise ShapeMismatchError(f"{literal(owner)} {name}={tuple(given)!r} must name each of the {rank} axes of the "
                                 f"tensor once")
