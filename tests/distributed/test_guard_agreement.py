"""The non-finite guard under torch's DistributedDataParallel decides alike on every rank: a loss that is
infinite on one rank only (its gradients finite, so DDP's averaged gradients are finite everywhere) makes
every rank skip the update, and the ranks' weights stay bit-identical. One 2-rank launch checks the plain
and the mixed-precision steps. (The tensorflow steps guard on the loss averaged over the ranks by
construction; a tensorflow launch costs ~40 s, so it is not repeated here. Keras-on-torch's guard runs the same
``jobs.poisoned_run`` in its own job: tests/distributed/test_distributed.py.)"""

import numpy as np
import pytest

import unidl as ud

from tests.distributed.jobs import poisoned_run

pytestmark = pytest.mark.skipif("torch" not in ud.available_backends(), reason="the torch backend is not installed")

PRECISIONS = {"32": "float64", "bf16-mixed": "float32"}


def guarded_steps(precision, dtype):
    """Three steps; at the second, rank 1's loss is infinite."""
    return poisoned_run(dtype, 3, 1, precision=precision)


def guarded_window():
    """Two windows of ``accumulate=2`` (4 micro-steps, the first of each under DDP's ``no_sync``); rank 1's loss is
    infinite at the first micro-step only, with finite gradients: a micro-step that does not all-reduce."""
    return poisoned_run("float64", 4, 0, accumulate=2)


def guard_job():
    return {**{name: guarded_steps(name, dtype) for name, dtype in PRECISIONS.items()}, "window": guarded_window()}


@pytest.fixture(scope="module")
def ranks():
    return ud.distributed.launch(guard_job, nprocs=2, backend="torch", timeout=300, collective_timeout=60)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_a_loss_non_finite_on_one_rank_skips_the_update_on_every_rank(ranks, precision):
    rank0, rank1 = (result[precision] for result in ranks)
    assert rank0["finite"] == rank1["finite"] == [True, False, True]
    assert rank0["updates"] == rank1["updates"] == 2
    for index in range(3):  # the same weights on both ranks, bit for bit, after every step
        for key, value in rank0["weights"][index].items():
            np.testing.assert_array_equal(value, rank1["weights"][index][key], err_msg=f"step {index}: {key}")
    for key, value in rank0["weights"][1].items():  # the skipped step moved nothing, the others moved weights
        np.testing.assert_array_equal(value, rank0["weights"][0][key], err_msg=key)
    assert any(not np.array_equal(v, rank0["weights"][1][k]) for k, v in rank0["weights"][2].items())


def test_a_micro_step_non_finite_on_one_rank_skips_the_window_on_every_rank(ranks):
    """float32's accumulation rule under DDP, as on one process: a micro-step under ``no_sync`` checks its own loss
    (kept for the window's update, whose guard agrees over the ranks: one MAX all-reduce per update), so the
    whole window is skipped at its update on both ranks and the next window updates."""
    rank0, rank1 = (result["window"] for result in ranks)
    assert rank0["finite"] == rank1["finite"] == [True, False, True, True]
    assert rank0["updates"] == rank1["updates"] == 1
    for key, value in rank0["start"].items():
        np.testing.assert_array_equal(rank0["weights"][1][key], value, err_msg=key)  # the window changed nothing
    for index in range(4):
        for key, value in rank0["weights"][index].items():
            np.testing.assert_array_equal(value, rank1["weights"][index][key], err_msg=f"micro-step {index}: {key}")
    assert any(not np.array_equal(v, rank0["start"][k]) for k, v in rank0["weights"][3].items())
