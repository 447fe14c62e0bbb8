"""Data-parallel step time: unidl's 2-process step against 1 process, and against a hand-written step on the
same engine (torch DDP; TensorFlow's MultiWorkerMirroredStrategy).

Run from the checkout: ``python -m benchmarks.distributed [--steps N] [--engines torch tensorflow]``. Each side
trains the LeNet CNN (3x32x32, SGD with momentum) on a global batch of 64; with 2 processes each rank steps on
its 32 samples and the engine averages the gradients (one thread per process, as ``unidl.distributed.launch``
sets), on the CPU also where a GPU exists. The two
2-process sides alternate in blocks inside the same ranks (``harness.alternate``), so machine load hits
both alike. On torch unidl's step is timed against the hand-written DDP step, then against the same with
unidl's non-finite guard (``guarded_sgd_step``: the fairer peer, since unidl's step checks every update). Prints
median milliseconds per step, the ratios and their block quartiles.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.harness import BATCH, LR, MOMENTUM, alternate, batch_arrays, ms, unidl_model
from benchmarks.native_torch import native_sgd_step, torch_native_model


def _one_process(backend: str, steps: int, warmup: int):
    """Median seconds of unidl's step on ``backend`` on the whole batch in this process (twice, alternated)."""
    import unidl as ud

    ud.set_num_threads(1)
    with ud.use_backend(backend):
        module, loss_fn, optimizer = unidl_model("cnn")
        step = ud.train_step(module, loss_fn, optimizer)
        x, y = (ud.tensor(a) for a in batch_arrays("cnn", BATCH))
        timing = alternate(lambda: np.asarray(step(x, y)), lambda: np.asarray(step(x, y)), steps, warmup,
                           max(2, steps // 10))
    return min(timing)


def guarded_sgd_step(native, loss_fn, x, y):
    """``native_sgd_step`` with the non-finite guard a user adds to do unidl's work: the averaged gradients and this
    rank's loss checked in one fused call (the kernel ``torch.amp``'s scaler uses), one host read, the update skipped
    where one is not finite. (Still a little less than unidl's step does: a loss infinite on one rank only, with
    finite gradients, is not carried to the other ranks, which unidl's flags do inside the same all-reduce.)"""
    import torch

    optimizer = torch.optim.SGD(native.parameters(), lr=LR, momentum=MOMENTUM)
    params = list(native.parameters())
    found_inf, one = torch.zeros(1), torch.ones(1)

    def guarded_step():
        optimizer.zero_grad()
        loss = loss_fn(native(x), y)
        loss.backward()
        found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_([p.grad for p in params] + [loss.detach().reshape(-1)],
                                                         found_inf, one)
        if not found_inf.item():
            optimizer.step()
        return loss.detach()

    return guarded_step


def _rank(steps: int, warmup: int):
    """One rank: its half of the batch, unidl's DDP step against the hand-written DDP step, then against the
    hand-written step with unidl's non-finite guard, each pair alternated: ``(unidl, plain, spread), (unidl,
    guarded, spread)`` (spread: the block quartiles of the ratio)."""
    import torch
    import torch.distributed as dist

    import unidl as ud

    rank, world = ud.distributed.rank(), ud.distributed.world_size()
    module, loss_fn, optimizer = unidl_model("cnn")
    step = ud.train_step(module, loss_fn, optimizer)
    native = torch.nn.parallel.DistributedDataParallel(torch_native_model("cnn", module.state_dict()))
    guarded = torch.nn.parallel.DistributedDataParallel(torch_native_model("cnn", module.state_dict()))
    share = BATCH // world
    x, y = (torch.from_numpy(a[rank * share:(rank + 1) * share]) for a in batch_arrays("cnn", BATCH))
    native_step = native_sgd_step(native, torch.nn.CrossEntropyLoss(), x, y)
    guarded_step = guarded_sgd_step(guarded, torch.nn.CrossEntropyLoss(), x, y)
    dist.barrier()
    blocks = max(2, steps // 10)
    plain = alternate(lambda: step(x, y), native_step, steps, warmup, blocks)
    with_guard = alternate(lambda: step(x, y), guarded_step, steps, warmup, blocks)
    return (*plain, plain.spread), (*with_guard, with_guard.spread)


def _tf_rank(steps: int, warmup: int):
    """One tensorflow rank: its half of the batch, unidl's step and the same step hand-written with the
    strategy's replica context (``strategy.run``, ``all_reduce(MEAN)``) on the same NCHW batch, alternated."""
    import unidl as ud
    from benchmarks.native_tf import tf_native_step
    from unidl.backends.tensorflow.distributed import strategy

    rank, world = ud.distributed.rank(), ud.distributed.world_size()
    module, loss_fn, optimizer = unidl_model("cnn")
    step = ud.train_step(module, loss_fn, optimizer)
    native = tf_native_step("cnn", module.state_dict(), jit_compile=False, nchw_input=True, strategy=strategy())
    share = BATCH // world
    x, y = (ud.tensor(a[rank * share:(rank + 1) * share]) for a in batch_arrays("cnn", BATCH))
    ud.distributed.barrier()
    timing = alternate(lambda: step(x, y).numpy(), lambda: native(x, y).numpy(), steps, warmup, max(2, steps // 10))
    return tuple(timing)


def _spread(spread) -> str:
    return f"{spread[0]:.2f}-{spread[1]:.2f}" if spread else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--engines", nargs="+", choices=("torch", "tensorflow"), default=["torch", "tensorflow"])
    args = parser.parse_args(argv)
    # on the CPU, where gloo and the ring run (and the hand-written steps are): on a machine with a GPU the ranks
    # and the one-process run would otherwise take it, NCCL too, both ranks the same GPU
    os.environ.update(UNIDL_DEVICE="cpu", CUDA_VISIBLE_DEVICES="")
    import unidl as ud

    warmup = max(5, args.steps // 10)
    if "torch" in args.engines:
        two = ud.distributed.launch(_rank, nprocs=2, backend="torch", args=(args.steps, warmup))
        # a step ends with the slower rank; the spread is rank 0's
        unidl_two, native_two = max(p[0] for p, _ in two), max(p[1] for p, _ in two)
        unidl_again, guarded_two = max(g[0] for _, g in two), max(g[1] for _, g in two)
        plain_spread, guarded_spread = two[0][0][2], two[0][1][2]
        one = _one_process("torch", args.steps, warmup)
        print(f"CNN, global batch {BATCH}, SGD momentum, torch (gloo), 1 thread per process, median ms per step")
        print(f"  unidl, 1 process:                   {ms(one):8.3f}")
        print(f"  unidl, 2 processes (DDP):           {ms(unidl_two):8.3f}   2-process / 1-process: "
              f"{unidl_two / one:.2f}")
        print(f"  hand-written torch DDP, 2 processes: {ms(native_two):8.3f}   unidl / hand-written: "
              f"{unidl_two / native_two:.2f} (target <= 1.05), block quartiles {_spread(plain_spread)}")
        print(f"  the same with unidl's guard:         {ms(guarded_two):8.3f}   unidl ({ms(unidl_again):.3f}) / "
              f"hand-written with guard: {unidl_again / guarded_two:.2f}, block quartiles {_spread(guarded_spread)}")
    if "tensorflow" in args.engines:
        two = ud.distributed.launch(_tf_rank, nprocs=2, backend="tensorflow", args=(args.steps, warmup))
        unidl_two, native_two = max(a for a, _ in two), max(b for _, b in two)
        one = _one_process("tensorflow", args.steps, warmup)
        print(f"CNN, global batch {BATCH}, SGD momentum, tensorflow (MultiWorkerMirroredStrategy, ring), 1 thread "
              f"per process, median ms per step")
        print(f"  unidl, 1 process:                             {ms(one):8.3f}")
        print(f"  unidl, 2 processes (MWMS):                    {ms(unidl_two):8.3f}   2-process / 1-process: "
              f"{unidl_two / one:.2f}")
        print(f"  hand-written MWMS step (same NCHW batch), 2 processes: {ms(native_two):8.3f}   unidl / "
              f"hand-written: {unidl_two / native_two:.2f}")


if __name__ == "__main__":
    main()
