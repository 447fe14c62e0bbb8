"""``embedding``: ``torch.nn.functional.embedding`` with its ``max_norm`` and ``norm_type``, composed over the
registry's lookup (``embedding_rows``), exported as ``ud.ops.embedding``; and ``renormalized``, the weight whose rows
a lookup reads are scaled down to ``max_norm`` where their norm exceeds it (``torch.embedding_renorm_``), which
``ud.nn.Embedding`` writes back into its weight as PyTorch renormalizes it in place.
"""

from __future__ import annotations

from unidl import arguments, input_checks, ops
from unidl.activation_ops import _p_norm
from unidl.errors import ShapeMismatchError

#: what PyTorch's renormalization adds to a row's norm before dividing ``max_norm`` by it
RENORM_EPSILON = 1e-7


@ops._composed(arrays=("weight",))
def embedding(indices, weight, padding_idx=None, max_norm=None, norm_type=2.0):
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``indices`` of any shape: (*indices.shape, dim).

    The row ``padding_idx`` gets no gradient; it lies in [-num_embeddings, num_embeddings), a negative one
    counting from the end, as PyTorch's (the other backends compared the indices with -1 itself: the last row
    trained); one out of range is a ``ShapeMismatchError``, eagerly and when a graph that leaves the weight's rows
    unknown runs (it was ignored there). An index outside [0, num_embeddings) raises
    ``IndexOutOfRangeError`` on every backend, inside compiled graphs too (where TensorFlow's CPU gather
    would return zeros). A ``weight`` of another rank than 2 is a ``ShapeMismatchError``, as PyTorch's (TensorFlow
    and JAX gathered rows of any rank).

    ``max_norm``: each row the lookup reads whose ``norm_type``-norm exceeds it is scaled by
    max_norm / (norm + 1e-7) first (``renormalized``): the rows and their gradients are PyTorch's. PyTorch's
    functional form also writes those rows into ``weight`` in place; this one is pure on every backend (a
    TensorFlow or JAX tensor cannot be written) and leaves ``weight`` as it is: ``ud.nn.Embedding(max_norm=...)``
    writes them back into its parameter, as ``torch.nn.Embedding``."""
    indices = input_checks.check_integer("embedding", "indices", indices)
    rank = ops._rank(weight)
    if rank not in (2, None):
        raise ShapeMismatchError(f"embedding weight must be 2-D (num_embeddings, dim), got a weight of rank {rank}")
    if padding_idx is not None:
        index = arguments.integer(padding_idx)
        rows = ops._rows(weight)  # an int, a graph's scalar tensor, or None (a graph of unknown rank)
        if index is None:
            bounds = f"in [-{rows}, {rows}) (the weight's rows)" if isinstance(rows, int) else "(a row of the weight)"
            raise ValueError(f"embedding padding_idx must be an int {bounds}, got {padding_idx!r}")
        if rows is not None:  # out of range: now, or when a graph that leaves the rows unknown runs (it was ignored)
            inside = input_checks.all_of([input_checks.holds(-rows <= index), input_checks.holds(index < rows)])
            weight = input_checks.require(weight, inside, lambda: (
                f"embedding padding_idx must be an int in [-{{}}, {{}}) (the weight's rows), got {index}"),
                (rows, rows))
        if index < 0 and rows is None:
            raise ValueError(f"embedding padding_idx {index} counts from the end of a weight whose rank this graph "
                             f"leaves unknown; give the row's index from the start")
        # a graph's unknown count of rows: the row from the end, a scalar the backends compare the indices with
        padding_idx = index % rows if isinstance(rows, int) else index + rows if index < 0 else index
    if max_norm is not None:
        max_norm, norm_type = renorm_options("embedding", max_norm, norm_type)
        weight = renormalized(indices, weight, max_norm, norm_type)
    return ops.embedding_rows(indices, weight, padding_idx)


def renorm_options(owner: str, max_norm, norm_type) -> tuple[float, float]:
    """``max_norm`` and ``norm_type`` as floats; anything but a real number (a bool, a string, None for
    ``norm_type``) is a ``TypeError`` naming ``owner`` and the argument."""
    values = []
    for name, value in (("max_norm", max_norm), ("norm_type", norm_type)):
        number = arguments.real(value)
        if number is None:
            raise TypeError(f"{owner} {name} must be a real number, got {value!r}")
        values.append(float(number))
    return values[0], values[1]


def renormalized(indices, weight, max_norm: float, norm_type: float):
    """``weight`` whose rows that ``indices`` looks up and whose ``norm_type``-norm exceeds ``max_norm`` are
    scaled by max_norm / (norm + 1e-7), the scale computed in float64 as PyTorch's double, as
    ``torch.embedding_renorm_``; the other rows as they are. Its gradient is passed to ``weight`` as it is:
    PyTorch's renormalization is no part of autograd, and the lookup's gradient reaches the weight as if it held
    these values. An index outside the weight's rows is an ``IndexOutOfRangeError`` (before the rows are counted)."""
    values = ops.stop_gradient(weight)
    rows = ops._rows(weight)
    flat = ops.check_index(ops.reshape(indices, (-1,)), rows, "Embedding indices")
    read = ops.segment_sum(ops.cast_like(ops.zeros_like(flat) + 1, values), flat, rows) > 0
    norms = _p_norm(values, norm_type, True)  # (num_embeddings, 1)
    over = ops.where(ops.unsqueeze(read, 1), norms > max_norm, ops.zeros_like(norms) > 1)
    scale = ops.cast_like(max_norm / (ops.cast(norms, "float64") + RENORM_EPSILON), values)
    # the scaled rows plus weight - weight (0, holding the gradient's path): exactly the scaled values, where
    # weight + (scaled - weight) was rounded
    return ops.where(over, values * scale + (weight - values), weight)
