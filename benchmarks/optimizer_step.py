"""What the torch backend's fast paths save: one ``optimizer.step()`` of each optimizer over 100 parameters of
100x100 on the torch backend, run by ``torch.optim``'s own class (the fast path) and by unidl's rule (``RuleOptimizer``,
what a subclass with its own ``update()`` runs, and what these rules ran before their fast paths), against plain
``torch.optim`` (``python -m benchmarks.optimizer_step [--device cuda]``). Information only: ratios, no target."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

NAMES = ("Adam", "NAdam", "RAdam", "Adamax", "Adadelta", "Rprop")


def _median_ms(step, sync, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--params", type=int, default=100)
    args = parser.parse_args(argv)

    import torch

    import unidl as ud

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    shapes = [(100, 100)] * args.params
    grads = [torch.randn(shape, device=args.device) for shape in shapes]
    print(f"optimizer.step(), {args.params} parameters of 100x100, device {args.device}, median of {args.repeats}")
    print(f"{'optimizer':10} {'torch.optim':>12} {'fast path':>10} {'rule':>10} {'fast/torch':>11} {'rule/fast':>10}")
    with ud.use_backend("torch"), ud.use_device(args.device):
        for name in NAMES:
            plain = [torch.nn.Parameter(torch.zeros(shape, device=args.device)) for shape in shapes]
            reference = getattr(torch.optim, name)(plain)
            for p, g in zip(plain, grads):
                p.grad = g
            timings = [_median_ms(reference.step, sync, args.repeats)]
            # (a subclass with its own update(): no fast path, unidl's rule per tensor)
            rule = type(f"Rule{name}", (getattr(ud.optim, name),), {"update": getattr(ud.optim, name).update})
            for cls in (getattr(ud.optim, name), rule):
                params = [ud.nn.Parameter(np.zeros(shape, np.float32)) for shape in shapes]
                optimizer = cls(params)
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                timings.append(_median_ms(optimizer.step, sync, args.repeats))
            torch_ms, fast_ms, rule_ms = timings
            print(f"{name:10} {torch_ms:10.2f}ms {fast_ms:8.2f}ms {rule_ms:8.2f}ms {fast_ms / torch_ms:10.2f}x "
                  f"{rule_ms / fast_ms:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
