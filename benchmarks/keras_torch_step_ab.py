"""Where unidl's keras backend on torch spends its ResNet-18 step against plain Keras's ``train_on_batch``, in CPU
time (``KERAS_BACKEND=torch UNIDL_NUM_THREADS=1 OMP_NUM_THREADS=1 python -m benchmarks.keras_torch_step_ab``):
blocks of steps alternated in one process between plain Keras (the ``models`` group's native side,
``native_models.keras_workload_model``), unidl's step, and unidl's step with some of the host's kernels that the
keras backend runs on Keras's tensors (``Backend.keras_native_ops``) put back to their portable ``keras.ops``
spellings (``unidl.backends.keras.ops.PORTABLE``): all of them, or one at a time, so that each kernel's share of
the step is told apart. Keras-on-torch runs the step's Python at every call (no graph), so a side's spellings are
swapped in just for its own steps. ``--profile`` adds torch's profiler op table of two steps a side.
Information for benchmarks/RESULTS.md; no target."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

from benchmarks.native_models import keras_workload_model, unidl_workload, workload_batch  # noqa: E402

SWAPPED = ("conv2d", "batch_norm", "all_finite")  # the kernels whose share is measured one at a time


@contextlib.contextmanager
def portable(names):
    """The keras backend's ops ``names`` in their portable spellings inside the block, the host's after it."""
    from unidl.backends.keras import ops as keras_ops

    host = {name: getattr(keras_ops, name) for name in names}
    for name in names:
        setattr(keras_ops, name, keras_ops.PORTABLE[name])
    try:
        yield
    finally:
        for name, op in host.items():
            setattr(keras_ops, name, op)


def sides(batch: int, one_at_a_time: bool) -> dict:
    """``{name: run one step}``: plain Keras, unidl's step, unidl's with the portable spellings (each its own model
    and optimizer, from the same seed and weights)."""
    import unidl as ud

    x, y = workload_batch("resnet18", batch)
    x_native = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    variants = {"unidl": ()} | {"unidl, portable " + "+".join(SWAPPED): SWAPPED}
    if one_at_a_time:
        variants |= {f"unidl, portable {name}": (name,) for name in SWAPPED}
    runs = {}
    for label, names in variants.items():
        module, loss_fn, optimizer = unidl_workload("resnet18")
        if not runs:
            native = keras_workload_model("resnet18", module.state_dict())
            runs["keras train_on_batch"] = lambda: native.train_on_batch(x_native, y)
        step = ud.train_step(module, loss_fn, optimizer)
        xb, yb = ud.tensor(x), ud.tensor(y)

        def run(step=step, names=names, xb=xb, yb=yb):
            with portable(names):
                return ud.to_numpy(step(xb, yb))

        runs[label] = run
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps a block")
    parser.add_argument("--blocks", type=int, default=6, help="blocks a side (order reversed every other round)")
    parser.add_argument("--one-at-a-time", action="store_true", help="also each kernel put back alone")
    parser.add_argument("--profile", action="store_true", help="torch's profiler op table, two steps a side")
    args = parser.parse_args(argv)
    import keras

    import unidl as ud

    if keras.backend.backend() != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch")
    with ud.use_backend("keras"), ud.use_device("cpu"):
        runs = sides(args.batch, args.one_at_a_time)
        print("first-step losses:", {name: float(run()) for name, run in runs.items()})
        for run in runs.values():  # warm-up
            run()
        times = {name: [] for name in runs}
        order = list(runs)
        for block in range(args.blocks):
            for name in order if block % 2 == 0 else order[::-1]:
                start = time.process_time()
                for _ in range(args.steps):
                    runs[name]()
                times[name].append((time.process_time() - start) / args.steps)
        native = times["keras train_on_batch"]
        print(f"CPU ms a step, median of {args.blocks} blocks of {args.steps} steps; ratio to plain Keras: of the "
              "medians, and the quartiles of the block-by-block ratios")
        for name, values in times.items():
            ratios = [a / b for a, b in zip(values, native)]
            low, _, high = statistics.quantiles(ratios, n=4)
            print(f"{name:45s} {statistics.median(values) * 1e3:8.1f}  "
                  f"{statistics.median(values) / statistics.median(native):5.3f}  {low:.3f}-{high:.3f}")
        if args.profile:
            from torch.profiler import profile

            for name, run in runs.items():
                with profile() as trace:
                    for _ in range(2):
                        run()
                print(f"===== {name}\n" + trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
