"""The peer a user would otherwise pick: unidl on torch or tensorflow against plain Keras 3 on the
same framework. Keras's framework is fixed per process, so the peer on the other framework runs in
a process of its own (this file run as a script)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # the peer's own process: import benchmarks/ (and unidl/) from this checkout
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np

from benchmarks.harness import BATCH, MODELS, Row, Settings, alternate, batch_arrays, ms, unidl_model
from benchmarks.native_keras import keras_framework, keras_native_model, native_layout
from benchmarks.native_models import WORKLOADS, keras_workload_rows
from benchmarks.native_torch import torch_sync

KERAS_TORCH_SPEEDUP = 3.0  # unidl on torch at least this much faster than Keras on torch (two-layer net)


def keras_peer_rows(settings: Settings, device: str, unidl_backend: str, built: dict | None = None) -> list[Row]:
    """unidl on ``unidl_backend`` against plain Keras 3 on the framework this process's Keras runs on. ``built``:
    the steps and Keras models this run has already built and traced for other comparisons (``bench_tensorflow``'s
    ``("ud.train_step", backend, model)``, ``bench_keras``'s ``("keras Model", model)``), timed again here as they
    are, trained weights and all, instead of being traced a second time; the others are built here."""
    import unidl as ud

    with ud.use_backend(unidl_backend), ud.use_device(device):
        return _keras_peer_rows(settings, device, unidl_backend, {} if built is None else built)


def _keras_peer_rows(settings: Settings, device: str, unidl_backend: str, built: dict) -> list[Row]:
    framework = keras_framework()
    target_of = (lambda model: f"<= {1 / KERAS_TORCH_SPEEDUP:.3f}"
                 if framework == "torch" and model == "two_layer" else "")
    rows = []
    for model in MODELS:
        module, train_step = built.get(("ud.train_step", unidl_backend, model)) or _unidl_step(model)
        step = _waiting(train_step, unidl_backend, device)
        native = built.get(("keras Model", model)) or keras_native_model(model, module.state_dict())
        x, y = batch_arrays(model)
        xb, yb = ud_tensor(x), ud_tensor(y)
        xn = native_layout(model, x)
        a, b = timing = alternate(lambda: step(xb, yb), lambda: native.train_on_batch(xn, y), settings.steps,
                         settings.warmup, settings.blocks)
        rows.append(Row(f"peer: keras on {framework}", model, f"ud.train_step ({unidl_backend})",
                        "keras Model.train_on_batch", ms(a), ms(b), target_of(model), spread=timing.spread))

        xe, ye = batch_arrays(model, BATCH * settings.fit_steps, seed=1)
        xen = native_layout(model, xe)
        batches = [(ud_tensor(xe[i:i + BATCH]), ud_tensor(ye[i:i + BATCH])) for i in range(0, len(xe), BATCH)]

        def unidl_epoch():
            for bx, by in batches:
                step(bx, by)

        def native_epoch():
            native.fit(xen, ye, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

        a, b = timing = alternate(unidl_epoch, native_epoch, settings.fit_rounds, 1, settings.fit_rounds)
        rows.append(Row(f"peer: keras on {framework}", model, f"ud.train_step loop ({unidl_backend})",
                        "keras Model.fit, per step", ms(a) / settings.fit_steps, ms(b) / settings.fit_steps,
                        target_of(model), note=f"epoch of {settings.fit_steps} batches of {BATCH}", spread=timing.spread))
    return rows


def ud_tensor(value):
    from unidl.tensors import tensor

    return tensor(value)


def _unidl_step(model: str):
    """``(module, ud.train_step)`` of ``model`` under the backend in force."""
    import unidl as ud

    module, loss_fn, optimizer = unidl_model(model)
    return module, ud.train_step(module, loss_fn, optimizer)


def _waiting(step, backend: str, device: str):
    """``step(x, y)`` that waits for its result on ``backend``."""
    sync = torch_sync(device) if backend == "torch" else (lambda: None)

    def run(x, y):
        loss = step(x, y)
        sync()
        return loss if backend == "torch" else np.asarray(loss)  # waits for the result

    return run


def keras_peer(settings: Settings, device: str, framework: str, unidl_backend: str,
               built: dict | None = None) -> list[Row]:
    """``keras_peer_rows`` in this process when its Keras runs on ``framework`` (``built``: see there), else in a
    subprocess."""
    if keras_framework() == framework:
        return keras_peer_rows(settings, device, unidl_backend, built)
    skipped = [Row(f"peer: keras on {framework}", model, f"ud.train_step ({unidl_backend})",
                   "keras Model.train_on_batch", note="skipped (no subprocess)") for model in MODELS]
    return _rows_in_own_process(framework, {"settings": dataclasses.asdict(settings), "device": device,
                                            "unidl_backend": unidl_backend}, skipped, settings)


def keras_workload_peer(settings: Settings, device: str, framework: str, unidl_backends=("keras",)) -> list[Row]:
    """``native_models.keras_workload_rows`` (ResNet-18, the transformer) in this process when its Keras runs on
    ``framework``, else in a subprocess."""
    if keras_framework() == framework:
        return keras_workload_rows(settings, device, unidl_backends)
    skipped = [Row(f"peer: keras on {framework}", workload, f"ud.train_step ({backend})",
                   "keras Model.train_on_batch", note="skipped (no subprocess)")
               for workload in WORKLOADS for backend in unidl_backends]
    return _rows_in_own_process(framework, {"settings": dataclasses.asdict(settings), "device": device,
                                            "workload_backends": list(unidl_backends)}, skipped, settings)


def _rows_in_own_process(framework: str, spec: dict, skipped: list[Row], settings: Settings) -> list[Row]:
    """The rows of ``spec`` from this file run as a script with Keras on ``framework`` (``skipped`` without
    subprocesses)."""
    if not settings.subprocess:
        return skipped
    env = dict(os.environ, KERAS_BACKEND=framework)
    command = [sys.executable, os.path.abspath(__file__), json.dumps(spec)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the Keras-on-{framework} peer failed:\n{done.stderr[-4000:]}")
    return [Row(**fields) for fields in json.loads(done.stdout.strip().splitlines()[-1])]


if __name__ == "__main__":  # the peer's own process (see keras_peer): its rows as JSON on the last line
    spec = json.loads(sys.argv[1])
    run_settings = Settings(**spec["settings"])
    if "workload_backends" in spec:
        rows = keras_workload_rows(run_settings, spec["device"], tuple(spec["workload_backends"]))
    else:
        rows = keras_peer_rows(run_settings, spec["device"], spec["unidl_backend"])
    print(json.dumps([dataclasses.asdict(r) for r in rows]))
