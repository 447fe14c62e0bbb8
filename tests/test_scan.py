"""``ud.ops.scan`` with nested (tuple, dict) carries, several sliced inputs, outputs of another structure, shape and
dtype than the carry, and ``reverse``: the same numbers as a NumPy loop on every backend, eagerly and in a graph."""

import collections

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference

R = np.random.default_rng(7)
XS = R.standard_normal((2, 5, 3)).astype(np.float32)        # scanned along axis 1
MASK = (R.random((2, 5)) > 0.3)


def _numpy(reverse):
    h, total = np.zeros((2, 3), np.float32), np.zeros((2, 1), np.float32)
    hs, counts = [None] * 5, [None] * 5
    for t in (reversed(range(5)) if reverse else range(5)):
        new = np.tanh(XS[:, t] + 0.5 * h)
        h = np.where(MASK[:, t, None], new, h)
        total = total + XS[:, t].sum(1, keepdims=True)
        hs[t], counts[t] = h, MASK[:, t].sum(keepdims=True)
    return h, total, np.stack(hs, 1), np.stack(counts, 1)


def _scan(xs, mask, reverse):
    def step(carry, inputs):
        x, valid = inputs
        h = ud.ops.where(ud.ops.unsqueeze(valid, 1), ud.ops.tanh(x + 0.5 * carry["h"]), carry["h"])
        total = carry["sum"][0] + ud.ops.sum(x, 1, True)
        return {"h": h, "sum": (total,)}, (h, ud.ops.sum(ud.ops.cast(valid, "int64"), 0, True))

    init = {"h": ud.ops.zeros_like(xs[:, 0]), "sum": (ud.ops.zeros_like(xs[:, 0, :1]),)}
    carry, (hs, counts) = ud.ops.scan(step, init, (xs, mask), axis=1, reverse=reverse)
    return carry["h"], carry["sum"][0], hs, counts


@pytest.mark.parametrize("reverse", [False, True])
def test_nested_scan_matches_a_numpy_loop(backend, reverse):
    expected = _numpy(reverse)
    eager = _scan(ud.tensor(XS), ud.tensor(MASK), reverse)
    compiled = ud.function(lambda xs, mask: _scan(xs, mask, reverse))(XS, MASK)
    for results in (eager, compiled):
        got = [ud.to_numpy(r) for r in results]
        assert got[3].dtype == np.int64 and np.array_equal(got[3], expected[3])
        for value, want in zip(got[:3], expected[:3]):
            assert value.shape == want.shape and max_relative_difference(value, want) < 2e-6


def test_scan_takes_numpy_arrays_as_ud_tensor_makes_them(backend):
    """NumPy arrays and scalars among the leaves of ``init`` and ``xs`` are converted as ``ud.tensor`` converts them
    (floats to the dtype in force, ints to int64), eagerly and in a graph: torch's and TensorFlow's backends refused
    them, JAX and Keras computed NumPy floats in float64. The containers keep their types (a defaultdict too), and a
    Python number stays a number, typed by what it meets (a float64 sum from 0.0)."""
    xs = XS[0].astype(np.float64)  # (5, 3), scanned along axis 0
    before = np.cumsum(xs, 0) - xs

    def run():
        def step(carry, x):
            total, count = carry["total"], carry["count"]
            return collections.defaultdict(list, total=total + x, count=count + 1), total * x

        return ud.ops.scan(step, collections.defaultdict(list, total=np.zeros(3), count=np.int64(0)), xs)

    for carry, ys in (run(), ud.function(run)()):
        total, count, ys = ud.to_numpy(carry["total"]), ud.to_numpy(carry["count"]), ud.to_numpy(ys)
        assert total.dtype == ys.dtype == np.float32 and count.dtype == np.int64 and count == 5
        assert max_relative_difference(total, xs.sum(0)) < 1e-6 and max_relative_difference(ys, before * xs) < 1e-6

    def sum_from_zero(values):
        def step(carry, x):
            return carry + x, x

        return ud.ops.scan(step, 0.0, values)[0]

    for function in (sum_from_zero, ud.function(sum_from_zero)):
        final = ud.to_numpy(function(ud.tensor(xs[:, 0], "float64")))
        assert final.dtype == np.float64 and final == xs[:, 0].sum()


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "function"])
def test_bad_scan_arguments_are_one_error_naming_the_leaf(backend, graph):
    """A length of 0, ``xs`` leaves of unequal lengths, a carry that changes shape or dtype and a None output are one
    unidl error naming the leaf on every backend, eagerly and in ``ud.function`` (torch indexed past the end or took
    the growing carry, JAX returned ``init`` for length 0 and raised its own TypeError and ValueError)."""
    zeros, xs = ud.tensor(np.zeros(3, np.float32)), ud.tensor(np.ones((4, 3), np.float32))

    def run(fn, init, sequence):
        scan = lambda init, sequence: ud.ops.scan(fn, init, sequence)[0]  # noqa: E731
        return (ud.function(scan) if graph else scan)(init, sequence)

    with pytest.raises(ud.errors.ShapeMismatchError, match=r"at least one slice of xs along axis 0, but xs has"):
        run(lambda c, x: (c + x, c), zeros, ud.tensor(np.zeros((0, 3), np.float32)))
    with pytest.raises(ud.errors.ShapeMismatchError, match=r"length there, at least 1; got xs\['a'\]: 4, xs\['b'\]: 3"):
        run(lambda c, x: (c + x["a"], c), zeros, {"a": xs, "b": xs[:3]})
    with pytest.raises(ud.errors.ShapeMismatchError, match=r"carry\[1\]: \(3,\) (in init|before a step), \(6,\)"):
        run(lambda c, x: ((c[0], ud.ops.concat([c[1], x], 0)), x), (zeros, zeros), xs)
    with pytest.raises(ud.errors.DtypeMismatchError, match=r"dtype of the carry: float32 in init, int64 returned"):
        run(lambda c, x: (ud.ops.cast(c + x, "int64"), x), zeros, xs)
    with pytest.raises(TypeError, match=r"returned None for y\[1\]"):
        run(lambda c, x: (c + x, (c, None)), zeros, xs)
    np.testing.assert_allclose(ud.to_numpy(run(lambda c, x: (c + x, c), zeros, xs)), np.full(3, 4.0))
