"""Gradient accumulation under torch's DistributedDataParallel: the micro-steps that do not update run under
``no_sync()``, so 2 ranks all-reduce once per update and still train the weights of one process (float64 to
1e-12, float32 to 1e-6, bf16-mixed to bfloat16's rounding of half batches), also with a layer frozen and unfrozen
between calls of one step. One 2-rank launch checks it all."""

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference

pytestmark = pytest.mark.skipif("torch" not in ud.available_backends(), reason="the torch backend is not installed")

EPOCHS, MICRO_STEPS_PER_EPOCH = 2, 5  # 20 samples in global batches of 4
CONFIGS = {"float64": ("float64", None, 2), "float32": ("float32", None, 2), "bf16-mixed": ("float32", "bf16-mixed", 2),
           "no accumulation": ("float64", None, 1), "frozen between steps": ("float64", None, 1, range(3, 7)),
           # windows (0, 1) ... (8, 9): frozen at an update after a trainable micro-step (3), a whole window (4, 5),
           # unfrozen for a micro-step only (6: the DDP, built without the layer, does not average its gradient), and
           # unfrozen at an update after a frozen micro-step (8, 9)
           "frozen mid-window": ("float64", None, 2, (3, 4, 5, 7, 8))}


def train_accumulating(dtype, precision, accumulate, frozen_calls=(), around_step=None):
    """The two-layer net after two epochs of ``train_step(accumulate=...)`` calls over a shuffled loader with
    global batch 4 (windows run across the epoch boundary): SGD with momentum, whose step grows with the
    gradient, so that a sum over the ranks or the micro-steps where a mean belongs shows. ``frozen_calls``: the
    calls before which the first layer is frozen (``requires_grad_(False)``; unfrozen before the next call), the
    same step object going on, whose DDP must follow the trainable parameters."""
    with ud.use_dtype(dtype):
        ud.manual_seed(1)
        rng = np.random.default_rng(1)
        x, y = rng.standard_normal((20, 5)), rng.standard_normal((20, 3))
        model = ud.models.TwoLayerNet(5, 7, 3)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, accumulate=accumulate)
        step = around_step(step) if around_step is not None else step
        loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4, shuffle=True, seed=5)
        calls = 0
        for _ in range(EPOCHS):
            for xb, yb in loader:
                model.linear1.requires_grad_(calls not in frozen_calls)
                step(xb, yb)
                calls += 1
        return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, optimizer.state_dict()["step"]


def accumulation_job():
    """Each configuration on this rank, with every all-reduce inside a step's call counted: the profiler's
    ``c10d::allreduce_`` events, which every all-reduce of the process group records (DDP's own, from C++, as
    ``find_unused_parameters``'s of its used-parameter map would be, and any of unidl's, such as a guard's agreement
    through ``torch.distributed.all_reduce``): the numbers are the engine's."""
    from torch.profiler import ProfilerActivity, profile

    all_reduces = []

    def around_step(step):
        def call(*args):
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                result = step(*args)
            all_reduces.extend(1 for event in profiled.events() if event.name == "c10d::allreduce_")
            return result

        return call

    results = {}
    for name, config in CONFIGS.items():
        all_reduces.clear()
        weights, updates = train_accumulating(*config, around_step=around_step)
        results[name] = {"weights": weights, "updates": updates, "all_reduces": len(all_reduces)}
    return results


@pytest.fixture(scope="module")
def job():
    ranks = ud.distributed.launch(accumulation_job, nprocs=2, backend="torch", timeout=300, collective_timeout=60)
    with ud.use_backend("torch"):
        references = {name: train_accumulating(*config)[0] for name, config in CONFIGS.items()}
    return ranks, references


@pytest.mark.parametrize("name, bound", [("float64", 1e-12), ("float32", 1e-6), ("bf16-mixed", 2e-2),
                                         ("no accumulation", 1e-12), ("frozen between steps", 1e-12),
                                         ("frozen mid-window", 1e-12)])
def test_two_ranks_accumulating_train_the_weights_of_one_process(job, name, bound):
    (rank0, rank1), references = job
    for key, value in rank0[name]["weights"].items():  # the ranks apply the same averaged sum
        np.testing.assert_array_equal(value, rank1[name]["weights"][key])
        assert max_relative_difference(value, references[name][key]) <= bound, key
    assert rank0[name]["updates"] == EPOCHS * MICRO_STEPS_PER_EPOCH // CONFIGS[name][2]
    if name != "no accumulation":  # accumulation (freezing) changes the training by far more than the bound
        worst = max(max_relative_difference(rank0["no accumulation"]["weights"][key], value)
                    for key, value in references[name].items())
        assert worst > 1e-3


def test_micro_steps_run_without_all_reduce(job):
    """The micro-steps inside a window run no collective (the two-layer net has no buffers, which DDP would broadcast
    at each forward), and an update only DDP's bucket all-reduces: the non-finite guard's agreement travels in them
    (a marker in the gradient of unidl's flags parameter), with no all-reduce of its own, and no second one for
    parameters without a gradient (``find_unused_parameters`` would add it)."""
    (rank0, rank1), _ = job
    every_step = rank0["no accumulation"]["all_reduces"]
    assert every_step == EPOCHS * MICRO_STEPS_PER_EPOCH  # one bucket (the two-layer net's 4 tensors), one a step
    for rank in (rank0, rank1):
        for name in ("float64", "float32", "bf16-mixed"):  # once per update: half as often with accumulate=2
            assert rank[name]["all_reduces"] == every_step // 2, name
