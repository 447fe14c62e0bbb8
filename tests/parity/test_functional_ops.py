"""The functional ops for users' own forwards (``ud.ops``) against ``torch`` / ``torch.nn.functional``: output and
input gradients, float32 (2e-6 / 1e-5) inside ``ud.function`` and float64 (1e-12) eagerly, on every backend.
The activations, ``layer_norm``, ``embedding`` and ``prelu`` are compared through their layers
(``test_activations_losses.py``), which call exactly these ops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unidl as ud
from tests.parity.torch_oracle import RUNS, Case, compare_table

R = np.random.default_rng(21)
ROWS = R.standard_normal((4, 6))
OTHER = R.standard_normal((4, 6))
IMAGES = R.standard_normal((2, 3, 4, 5))
SEQUENCE = R.standard_normal((2, 3, 4))
INDICES = np.array([[3, 0], [1, 3]])
GATHER_ROWS = np.array([[0, 5], [2, 2], [4, 1]])          # smaller than ROWS on both axes
GATHER_COLUMNS = R.integers(0, 4, (2, 6))
LABELS = np.array([0, -100, 5, 2])
POSITIVE = R.random((4, 6))


def case(build, oracle, *inputs):
    return Case(lambda: build, lambda: oracle, list(inputs))


OPS = {
    "take-axis0": case(lambda x, i: ud.ops.take(x, i), lambda x, i: x[i], ROWS, INDICES),
    "take-axis1": case(lambda x, i: ud.ops.take(x, i, 1), lambda x, i: x[:, i], ROWS, INDICES),
    "gather-dim1": case(lambda x, i: ud.ops.gather(x, 1, i), lambda x, i: torch.gather(x, 1, i), ROWS, GATHER_ROWS),
    "gather-dim0": case(lambda x, i: ud.ops.gather(x, 0, i), lambda x, i: torch.gather(x, 0, i), ROWS, GATHER_COLUMNS),
    "cast-int64": case(lambda x: ud.ops.cast(x * 3, "int64"), lambda x: (x * 3).to(torch.int64), ROWS),
    "zeros": case(lambda: ud.ops.zeros((2, 3)), lambda: torch.zeros(2, 3)),
    "ones": case(lambda: ud.ops.ones([3]), lambda: torch.ones(3)),
    "arange-int": case(lambda: ud.ops.arange(2, 9, 3), lambda: torch.arange(2, 9, 3)),
    "arange-float": case(lambda: ud.ops.arange(0.5, 3.0, 0.5), lambda: torch.arange(0.5, 3.0, 0.5)),
    "argmax-dim": case(lambda x: ud.ops.argmax(x, 1), lambda x: torch.argmax(x, 1), ROWS),
    "argmax-all-keepdim": case(lambda x: ud.ops.argmax(x, None, True), lambda x: torch.argmax(x, None, True), ROWS),
    "transpose": case(lambda x: ud.ops.transpose(x, 0, -1), lambda x: torch.transpose(x, 0, -1), SEQUENCE),
    "permute": case(lambda x: ud.ops.permute(x, (2, 0, 1)), lambda x: x.permute(2, 0, 1), SEQUENCE),
    "cat": case(lambda a, b: ud.ops.cat([a, b], 1), lambda a, b: torch.cat([a, b], 1), ROWS, OTHER),
    "unsqueeze": case(lambda x: ud.ops.unsqueeze(x, -1), lambda x: torch.unsqueeze(x, -1), ROWS),
    "squeeze": case(lambda x: ud.ops.squeeze(x, (1, 3)), lambda x: x.squeeze((1, 3)), IMAGES[:, :1, :, :1]),
    "pad-constant": case(lambda x: ud.ops.pad(x, (1, 2), value=0.5), lambda x: F.pad(x, (1, 2), value=0.5), ROWS),
    **{f"pad-{mode}": case(lambda x, mode=mode: ud.ops.pad(x, (1, 2, 2, 1), mode),
                           lambda x, mode=mode: F.pad(x, (1, 2, 2, 1), mode), IMAGES)
       for mode in ("constant", "reflect", "replicate", "circular")},
    **{f"pad-{mode}-{amounts}": case(lambda x, mode=mode, amounts=amounts: ud.ops.pad(x, amounts, mode),
                                     lambda x, mode=mode, amounts=amounts: F.pad(x, amounts, mode), inputs)
       for mode, amounts, inputs in [("constant", (-1, 2, 1, -2), IMAGES), ("constant", (1, 1, -1, 2), ROWS),
                                     ("reflect", (-2, 3, 2, -1), IMAGES), ("replicate", (3, -4, -1, 5), IMAGES),
                                     ("reflect", (5, 2), ROWS), ("circular", (1, 2, 3, 0, 2, 1), IMAGES)]},
    "log1p": case(ud.ops.log1p, torch.log1p, POSITIVE),
    "minimum": case(ud.ops.minimum, torch.minimum, ROWS, OTHER),
    "cross_entropy-ignore-none": case(lambda x, y: ud.ops.cross_entropy(x, y, "none"),
                                      lambda x, y: F.cross_entropy(x, y, reduction="none"), ROWS, LABELS),
    "cross_entropy_loss-smoothing-sum": case(
        lambda x, y: ud.ops.cross_entropy_loss(x, y, None, -100, "sum", 0.25),
        lambda x, y: F.cross_entropy(x, y, reduction="sum", label_smoothing=0.25), ROWS, LABELS),
    "nll_loss": case(lambda x, y: ud.ops.nll_loss(x, y), lambda x, y: F.nll_loss(x, y), ROWS, LABELS),
}


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_functional_ops_match_torch(backend, dtype, modes):
    failures = compare_table(OPS, backend, dtype, modes)
    assert not failures, "\n".join(failures)
