"""``ud.ops.scan`` with nested (tuple, dict) carries, several sliced inputs, outputs of another structure, shape and
dtype than the carry, and ``reverse``: the same numbers as a NumPy loop on every backend, eagerly and in a graph."""

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
