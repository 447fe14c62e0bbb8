"""Time to the first training step of the CNN: the model built and the first ``step(x, y)`` returned,
framework imports excluded, each in a fresh process (so no trace or compilation cache is warm);
unidl on every backend against a hand-written ``tf.function`` step (the 1.5x target) and the others'
native steps as information."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script in a fresh process
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.harness import Row, Settings, batch_arrays, ms  # noqa: E402

FIRST_STEP_TARGET = 1.5
#: (label, the unidl backend, what the native side is): one fresh process each
CASES = [("tensorflow", "tensorflow", "tf.function + GradientTape"), ("torch", "torch", "torch.nn + torch.optim.SGD"),
         ("keras", "keras", "tf.function + GradientTape"), ("jax", "jax", "jax.jit + optax.sgd")]


def _import(backend: str) -> None:
    import unidl as ud

    ud.set_backend(backend)
    # imports the framework and what it imports lazily on first use (torch.optim imports torch._dynamo),
    # excluded from the timing; nothing is traced or compiled here
    ud.optim.SGD(ud.nn.Linear(2, 1).parameters(), lr=0.1)
    if backend in ("tensorflow", "keras"):
        import tensorflow  # noqa: F401
    if backend == "jax":
        import optax  # noqa: F401


def unidl_first_step(backend: str) -> float:
    import unidl as ud
    from benchmarks.harness import unidl_model

    _import(backend)
    x, y = batch_arrays("cnn")
    started = time.perf_counter()
    module, loss_fn, optimizer = unidl_model("cnn")
    float(ud.to_numpy(ud.train_step(module, loss_fn, optimizer)(x, y)))
    return time.perf_counter() - started


def native_first_step(backend: str) -> float:
    from benchmarks.harness import unidl_model

    _import(backend)
    import unidl as ud

    module, _, _ = unidl_model("cnn")
    state = module.state_dict()  # the weights come from unidl; building the native model is timed
    x, y = batch_arrays("cnn")
    started = time.perf_counter()
    if backend == "torch":
        import torch
        from benchmarks.native_torch import torch_native_model

        native = torch_native_model("cnn", state)
        optimizer = torch.optim.SGD(native.parameters(), lr=1e-2, momentum=0.9)
        loss = torch.nn.CrossEntropyLoss()(native(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        float(loss)
    elif backend == "jax":
        from benchmarks.native_jax import jax_native_step

        step, params, opt_state = jax_native_step("cnn", state)
        float(step(params, opt_state, x, y)[2])
    else:
        from benchmarks.native_tf import tf_native_step

        float(tf_native_step("cnn", state, jit_compile=False)(x.transpose(0, 2, 3, 1), y))
    del ud
    return time.perf_counter() - started


def _fresh(kind: str, backend: str) -> float:
    # on the CPU for both sides and every framework (``bench_first_step`` runs for --device cpu): on a machine with
    # a GPU unidl's "auto", JAX and TensorFlow would take it where the hand-written torch step stays on the CPU
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", UNIDL_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, __file__, kind, backend], capture_output=True, text=True, env=env,
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"first-step measurement {kind} {backend} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def bench_first_step(settings: Settings, device: str) -> list[Row]:
    import unidl as ud

    rows = []
    repeats = 1 if settings.steps < 50 else 3
    for label, backend, native in CASES:
        if backend not in ud.available_backends():
            continue
        if not settings.subprocess:
            rows.append(Row("time to first step", "cnn", f"ud.train_step on {label}", native,
                            note="skipped (no subprocess)"))
            continue
        a = min(_fresh("unidl", backend) for _ in range(repeats))
        b = min(_fresh("native", backend) for _ in range(repeats))
        target = f"<= {FIRST_STEP_TARGET}" if backend == "tensorflow" else ""
        rows.append(Row("time to first step", "cnn", f"ud.train_step on {label}", native, ms(a), ms(b), target,
                        note="fresh process, imports excluded, best of {}".format(repeats)))
    return rows


if __name__ == "__main__":
    kind, backend = sys.argv[1], sys.argv[2]
    seconds = unidl_first_step(backend) if kind == "unidl" else native_first_step(backend)
    print(json.dumps({"seconds": seconds}))
