"""The size checks a TensorFlow graph of unknown sizes holds: none where the graph knows the shapes agree.

A ``where`` of three tensors of unknown sizes holds a check that they broadcast (tens of ops for rank 2) unless the
backend's ``size_keys`` knows their sizes to agree, read from the element-wise ops that made them. The losses
write ``where(condition, x, zeros_like(x))`` and ``where(c, x - y, ...)`` of ``x`` and ``y`` of one shape; their
checks were a sixth of the parity tables' graphs.
"""

import os

import numpy as np
import pytest

import unidl as ud
from unidl.testing.pytest_plugin import backends_under_test

#: the backends whose ``ud.function`` is a TensorFlow graph (Keras's on TensorFlow)
TENSORFLOW_GRAPHS = [name for name in backends_under_test() if name == "tensorflow"
                     or (name == "keras" and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow")]


def _asserts(name, fn, *ranks):
    """The ``Assert`` ops of ``fn``'s graph for inputs of ``ranks`` unknown sizes."""
    import tensorflow as tf

    specs = [tf.TensorSpec([None] * rank) for rank in ranks]
    with ud.use_backend(name):
        graph = tf.function(fn).get_concrete_function(*specs).graph
    return sum(operation.type == "Assert" for operation in graph.get_operations())


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
