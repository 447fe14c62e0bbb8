"""The non-finite guard under torch's DistributedDataParallel decides alike on every rank: a loss that is
infinite on one rank only (its gradients finite, so DDP's averaged gradients are finite everywhere) makes
every rank skip the update, and the ranks' weights stay bit-identical. One 2-rank launch checks the plain
and the mixed-precision steps. (The tensorflow steps guard on the loss averaged over the ranks by
construction; a tensorflow launch costs ~40 s, so it is not repeated here.)"""

import numpy as np
import pytest

import unidl as ud

pytestmark = pytest.mark.skipif("torch" not in ud.available_backends(), reason="the torch backend is not installed")

PRECISIONS = {"32": "float64", "bf16-mixed": "float32"}


class PoisonedLoss(ud.nn.Module):
    """The mean squared error, plus infinity while ``poisoned``: a non-finite loss whose gradients are finite."""

    def __init__(self):
        super().__init__()
        self.mse = ud.nn.MSELoss()
        self.poisoned = False

    def forward(self, outputs, targets):
        loss = self.mse(outputs, targets)
        return loss + ud.tensor(float("inf")) if self.poisoned else loss


def _poisoned_run(dtype, calls, poisoned_call, precision=None, accumulate=1):
    """``calls`` steps (micro-steps with ``accumulate``) of the two-layer net on this rank's own batch, rank 1's
    loss made infinite at call ``poisoned_call`` (a constant added to it: the gradients stay finite). The starting
    weights, the weights after each call, each call's flag and the optimizer's update count."""
    rank = ud.distributed.rank()
    with ud.use_dtype(dtype):
        ud.manual_seed(1)
        rng = np.random.default_rng(10 + rank)  # a batch of this rank's own
        x, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
        model = ud.models.TwoLayerNet(5, 7, 3)
        start = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = PoisonedLoss()
        step = ud.train_step(model, loss_fn, optimizer, precision=precision, check_finite=False,
                             accumulate=accumulate)
        weights, finite = [], []
        for index in range(calls):
            loss_fn.poisoned = index == poisoned_call and rank == 1
            step(x, y)
            finite.append(optimizer.last_step_finite)
            weights.append({k: ud.to_numpy(v) for k, v in model.state_dict().items()})
        return {"start": start, "weights": weights, "finite": finite, "updates": optimizer.state_dict()["step"]}


def guarded_steps(precision, dtype):
    """Three steps; at the second, rank 1's loss is infinite."""
    return _poisoned_run(dtype, 3, 1, precision=precision)


def guarded_window():
    """Two windows of ``accumulate=2`` (4 micro-steps, the first of each under DDP's ``no_sync``); rank 1's loss is
    infinite at the first micro-step only, with finite gradients: a micro-step that does not all-reduce."""
    return _poisoned_run("float64", 4, 0, accumulate=2)


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
