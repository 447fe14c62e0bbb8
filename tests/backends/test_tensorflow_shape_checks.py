"""The size checks a TensorFlow graph of unknown sizes holds: none where the graph knows the shapes agree.

A ``where`` of three tensors of unknown sizes holds a check that they broadcast (tens of ops for rank 2) unless the
backend's ``size_keys`` knows their sizes to agree, read from the element-wise ops that made them. The losses
write ``where(condition, x, zeros_like(x))`` and ``where(c, x - y, ...)`` of ``x`` and ``y`` of one shape; their
checks were a sixth of the parity tables' graphs. A check that remains compares the two shape vectors at once
(``sizes_hold``), not each size, and an index check builds no test of its size.
"""

import collections
import os

import numpy as np
import pytest

import unidl as ud
from unidl.testing.pytest_plugin import backends_under_test

#: the backends whose ``ud.function`` is a TensorFlow graph (Keras's on TensorFlow)
TENSORFLOW_GRAPHS = [name for name in backends_under_test() if name == "tensorflow"
                     or (name == "keras" and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow")]


def _op_types(name, fn, *ranks) -> collections.Counter:
    """The types of the ops of ``fn``'s graph for float inputs of ``ranks`` unknown sizes, counted."""
    import tensorflow as tf

    specs = [tf.TensorSpec([None] * rank) for rank in ranks]
    with ud.use_backend(name):
        graph = tf.function(fn).get_concrete_function(*specs).graph
    return collections.Counter(operation.type for operation in graph.get_operations())


def _asserts(name, fn, *ranks):
    """The ``Assert`` ops of ``fn``'s graph for inputs of ``ranks`` unknown sizes."""
    return _op_types(name, fn, *ranks)["Assert"]


#: the ops that compare sizes one by one (a vectorised check has one ``All`` instead of a chain of these)
_COMPARISONS = ("Equal", "LogicalOr", "LogicalAnd")


def _comparisons(name, fn, *ranks) -> int:
    """The size comparisons (``_COMPARISONS``) of ``fn``'s graph for inputs of ``ranks`` unknown sizes."""
    types = _op_types(name, fn, *ranks)
    return sum(types[kind] for kind in _COMPARISONS)


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_shapes_the_graph_knows_to_agree_hold_no_check(name):
    """``zeros_like(x)`` has ``x``'s shape, and so has an element-wise op of tensors of ``x``'s shape (``x - 2 * x``,
    ``where(x > 0, x, -x)``): no check. Tensors of two inputs keep theirs."""
    assert _asserts(name, lambda x: ud.ops.where(x > 0, x, ud.ops.zeros_like(x)), 2) == 0
    assert _asserts(name, lambda x: ud.ops.where(x > 0, x - 2 * x, x), 2) == 0
    assert _asserts(name, lambda x: ud.ops.where(x > 0, ud.ops.where(x < 1, x, -x) * x, ud.ops.zeros_like(x) + 1), 2) == 0
    assert _asserts(name, lambda x, y: ud.ops.where(y > 0, x, ud.ops.zeros_like(x)), 2, 2) == 1
    assert _asserts(name, lambda x, y: ud.ops.where(x > 0, x - y, x), 2, 2) == 1


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_shapes_of_two_inputs_are_still_checked_when_the_graph_runs(name):
    """A condition of another input's shape beside ``x`` and ``zeros_like(x)`` is still the ``ShapeMismatchError``
    naming the three shapes, when the graph runs; shapes that fit give torch's values."""
    function = ud.function(lambda c, x: ud.ops.where(c > 0, x, ud.ops.zeros_like(x)))
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    with ud.use_backend(name):
        np.testing.assert_array_equal(ud.to_numpy(function(ud.tensor(x), ud.tensor(x))), np.where(x > 0, x, 0))
        with pytest.raises(ud.ShapeMismatchError, match=r"where needs shapes that broadcast.*\(2, 4\).*\(2, 3\)"):
            function(ud.tensor(np.ones((2, 4), np.float32)), ud.tensor(x))


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_a_check_of_sizes_really_unknown_compares_the_shape_vectors_once(name):
    """A check of two tensors' sizes that a graph traced for any size knows only when it runs compares their shape
    vectors in one comparison and one reduction, whatever their rank: ``where(x > 0, x, y)`` of rank 4 built 12
    ``Equal``, 8 ``LogicalOr`` and 3 ``LogicalAnd`` ops (one chain per size), now 3 ``Equal`` and 2 ``LogicalOr`` (x
    equal to y, or either 1) and an ``All``; ``mse_loss`` of rank 4 built 4 ``Equal`` and 3 ``LogicalAnd``, now one
    ``Equal``. ``x > 0`` beside ``x``: their sizes read once (one ``Shape`` per input)."""
    where = lambda x, y: ud.ops.where(x > 0, x, y)  # noqa: E731
    for rank in (2, 3, 4):
        assert _comparisons(name, where, rank, rank) == 5, (rank, _op_types(name, where, rank, rank))
        assert _op_types(name, where, rank, rank)["All"] == 1
        assert _comparisons(name, lambda x, y: ud.ops.mse_loss(x, y), rank, rank) == 1, rank
        assert _comparisons(name, lambda x, y: ud.ops.maximum(x, y), rank, rank) == 5, rank
    assert _op_types(name, where, 4, 4)["Shape"] == 2
    assert _asserts(name, where, 4, 4) == 1 and _asserts(name, lambda x, y: ud.ops.mse_loss(x, y), 4, 4) == 1


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_a_weight_or_state_the_graph_made_of_the_inputs_shape_holds_no_check(name):
    """``check_broadcasts_to`` and ``require_shape`` skip the sizes ``size_keys`` knows to be the input's, as
    ``check_same_shape`` does: a weight of ``zeros_like(x) + 1`` adds no comparison to a weighted binary cross-entropy
    (its check of the target's shape stays), and a state made of the input's shape no check at all."""
    from unidl import input_checks

    def weighted(x, t):
        return ud.ops.binary_cross_entropy_with_logits(x, t, weight=ud.ops.zeros_like(x) + 1)

    assert _comparisons(name, weighted, 3, 3) == _comparisons(name, lambda x, t: (
        ud.ops.binary_cross_entropy_with_logits(x, t)), 3, 3)
    assert _asserts(name, weighted, 3, 3) == 1  # (the target's shape against the logits')

    def state_of(x):
        return input_checks.require_shape(ud.ops.zeros_like(x) * 2, ud.ops.shape(x), lambda: "{} {} {} {}")

    assert _asserts(name, state_of, 2) == 0 and _comparisons(name, state_of, 2) == 0


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_vectorised_checks_raise_the_eager_error_when_the_graph_runs(name):
    """The checks that compare shape vectors (two tensors' broadcasting, one shape, a join's sizes, a weight that
    broadcasts to the input, a gather's index) raise, when a graph traced for any size runs, the error an eager
    call raises, with its message; shapes that fit give the eager values."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    calls = {  # what: (the call, a second input's shape that fits, one that does not)
        "where": (lambda a, b: ud.ops.where(a > 0, a, b), (2, 3, 4), (2, 5, 4)),
        "maximum": (lambda a, b: ud.ops.maximum(a, b), (2, 1, 4), (2, 1, 3)),
        "mse_loss": (lambda a, b: ud.ops.mse_loss(a, b), (2, 3, 4), (2, 4, 3)),
        "concat": (lambda a, b: ud.ops.concat([a, b], 1), (2, 5, 4), (3, 2, 4)),
        "stack": (lambda a, b: ud.ops.stack([a, b], 0), (2, 3, 4), (2, 3, 5)),
        "weight": (lambda a, b: ud.ops.binary_cross_entropy_with_logits(a, a, weight=b), (1, 3, 4), (3, 3, 4)),
        "gather": (lambda a, b: ud.ops.gather(a, 1, ud.ops.cast(b, "int64") * 0), (2, 2, 4), (2, 2, 5)),
    }
    with ud.use_backend(name):
        for what, (fn, fits, bad) in calls.items():
            traced = ud.function(fn)  # (traced for any size of each rank on TensorFlow)
            given = ud.tensor(rng.standard_normal(fits).astype(np.float32))
            np.testing.assert_allclose(ud.to_numpy(traced(ud.tensor(x), given)), ud.to_numpy(fn(ud.tensor(x), given)),
                                       rtol=1e-6, err_msg=what)
            with pytest.raises(ud.ShapeMismatchError) as eagerly:
                fn(ud.tensor(x), ud.tensor(np.ones(bad, np.float32)))
            with pytest.raises(ud.ShapeMismatchError) as in_graph:
                traced(ud.tensor(x), ud.tensor(np.ones(bad, np.float32)))
            assert str(in_graph.value) == str(eagerly.value), what


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_an_index_check_in_a_graph_tests_no_size_and_passes_an_empty_index(name):
    """An index check in a graph tests the smallest and largest index only: an empty tensor of signed integers
    reduces to its dtype's largest and smallest values, which pass (it tested the index's size too: ``Size``,
    ``Equal`` and ``LogicalOr``, three of its ~20 ops). An empty index still takes nothing, into an empty axis too,
    and one out of range is still the eager ``IndexOutOfRangeError``."""
    def take(x, i):
        return ud.ops.take(x, ud.ops.cast(i, "int64"), 0)

    types = _op_types(name, take, 2, 1)
    assert types["Size"] == 0 and types["LogicalOr"] == 0, types
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    with ud.use_backend(name):
        traced = ud.function(take)
        for rows, index in [(x, np.zeros(0, np.float32)), (x[:0], np.zeros(0, np.float32)), (x, np.array([2.0, 0.0]))]:
            taken = traced(ud.tensor(rows), ud.tensor(index))
            np.testing.assert_array_equal(ud.to_numpy(taken), rows[index.astype(int)])
        for index in ([3.0], [-1.0, 1.0]):
            with pytest.raises(ud.IndexOutOfRangeError) as eagerly:
                take(ud.tensor(x), ud.tensor(np.array(index, np.float32)))
            with pytest.raises(ud.IndexOutOfRangeError) as in_graph:
                traced(ud.tensor(x), ud.tensor(np.array(index, np.float32)))
            assert str(in_graph.value) == str(eagerly.value)


def test_sizes_hold_in_a_graph_agrees_with_each_size_compared_alone():
    """``input_checks.sizes_hold`` inside a graph traced for any size (TensorFlow's vectorised comparison of two
    shape vectors, of packed sizes, or of each size alone; int64 sizes one by one) gives, for each pair of shapes it
    runs with, what comparing each size alone gives: every relation, every axis or some, known sizes among them."""
    import tensorflow as tf
    from unidl import input_checks

    single = {"equal": lambda a, b: a == b, "broadcast": lambda a, b: a == b or a == 1 or b == 1,
              "broadcasts_to": lambda a, b: a == 1 or a == b, "at_most": lambda a, b: a <= b}
    rng = np.random.default_rng(1)
    with ud.use_backend("tensorflow"):
        for relation, holds in single.items():
            for axes in (None, (0, 2), (1,)):
                graphs = {
                    "read": lambda x, y: (ud.ops.shape(x), ud.ops.shape(y)),
                    "known": lambda x, y: (ud.ops.shape(x)[:2] + (3,), (1,) + ud.ops.shape(y)[1:]),
                    "int64": lambda x, y: (tuple(tf.unstack(tf.shape(x, tf.int64), 3)),
                                           tuple(tf.unstack(tf.shape(y, tf.int64), 3))),
                }
                for how, sizes in graphs.items():
                    def condition(x, y, sizes=sizes):
                        a, b = sizes(x, y)
                        return tf.convert_to_tensor(input_checks.sizes_hold(relation, a, b, axes))

                    traced = tf.function(condition, input_signature=[tf.TensorSpec([None] * 3)] * 2)
                    for _ in range(12):
                        x, y = rng.integers(0, 4, 3), rng.integers(0, 4, 3)
                        a, b = {"read": (x, y), "int64": (x, y), "known": ((x[0], x[1], 3), (1, y[1], y[2]))}[how]
                        expected = all(holds(a[i], b[i]) for i in (range(3) if axes is None else axes))
                        got = bool(traced(tf.zeros(x), tf.zeros(y)))
                        assert got == expected, (relation, axes, how, x, y)
