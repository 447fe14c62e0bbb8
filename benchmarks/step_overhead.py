"""Where unidl's train step spends more than the hand-written one on a device: the step as ``ud.train_step``
runs it (the non-finite guard reads one flag on the host each step), the same step with ``check_finite=False``
(the guard still skips a non-finite update in the step, nothing is read back), the native step, and one host
read of a device scalar, each timed to completion (``python -m benchmarks.step_overhead --device cuda``);
and ten steps dispatched back to back, waited for once, as a loop that reads nothing runs on an asynchronous
device. Information for benchmarks/RESULTS.md; no target."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

from benchmarks.harness import MODELS, batch_arrays, unidl_model  # noqa: E402


def _median_ms(f, repeats: int = 200, warmup: int = 20) -> float:
    for _ in range(warmup):
        f()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _sides(backend: str, model: str, device: str):
    """``{name: zero-argument callable that waits for its work}`` and ``wait(value)``."""
    import unidl as ud

    x_np, y_np = batch_arrays(model)
    sides = {}
    for check in (True, False):
        module, loss_fn, optimizer = unidl_model(model)
        step = ud.train_step(module, loss_fn, optimizer, check_finite=check)
        sides[f"ud.train_step check_finite={check}"] = (step, module)
    if backend == "torch":
        import torch

        from benchmarks.native_torch import native_sgd_step, torch_native_model

        native = torch_native_model(model, module.state_dict()).to(device)
        loss = torch.nn.CrossEntropyLoss() if model == "cnn" else torch.nn.MSELoss()
        x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
        native_step = native_sgd_step(native, loss, x, y)

        def wait(value):
            torch.cuda.synchronize() if device.startswith("cuda") else None
            return value

        flag = torch.ones((), device=device) > 0

        def host_read():
            return bool((flag & flag).item())
    else:
        import jax

        from benchmarks.native_jax import jax_native_step

        native, params, opt_state = jax_native_step(model, module.state_dict())
        box = {"params": params, "state": opt_state}
        x, y = ud.tensor(x_np), ud.tensor(y_np)

        def native_step():
            box["params"], box["state"], value = native(box["params"], box["state"], x, y)
            return value

        def wait(value):
            return jax.block_until_ready(value)

        flag = jax.numpy.ones(()) > 0
        negate = jax.jit(lambda f: ~f)

        def host_read():
            return bool(np.asarray(negate(flag)))
    calls = {name: (lambda s=s: s(x, y)) for name, (s, _) in sides.items()}
    calls["native"] = native_step
    return calls, wait, host_read


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", nargs="+", default=["torch", "jax"])
    args = parser.parse_args(argv)
    import unidl as ud

    device = "cuda:0" if args.device == "cuda" else args.device
    print(f"{'backend':8} {'model':10} {'side':36} {'waited ms':>10} {'10 dispatched ms/step':>22}")
    for backend in args.backends:
        with ud.use_backend(backend), ud.use_device(device):
            for model in MODELS:
                calls, wait, host_read = _sides(backend, model, device)
                for name, call in calls.items():
                    waited = _median_ms(lambda: wait(call()))
                    burst = _median_ms(lambda: wait([call() for _ in range(10)][-1]), repeats=20, warmup=2) / 10
                    print(f"{backend:8} {model:10} {name:36} {waited:10.3f} {burst:22.3f}")
                print(f"{backend:8} {model:10} {'one host read of a device flag':36} {_median_ms(host_read):10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
