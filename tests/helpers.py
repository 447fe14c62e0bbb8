"""Shared test helpers: running Python in a fresh interpreter; what a trained model leaves alive."""

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, env: dict | None = None, timeout: int = 300, check: bool = True):
    """Run ``code`` in a fresh interpreter from the repo root; returns the CompletedProcess."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def last_json_line(stdout: str):
    return json.loads([line for line in stdout.splitlines() if line.startswith("{") or line.startswith("[")][-1])


def alive_after_training(model_factory, x, y) -> list[str]:
    """Which of a model, its optimizer and its loss are still alive once dropped and garbage collected, after one
    ``train_step`` call on ``x, y`` and one ``fit`` epoch whose two batch shapes run once each (on jax, a program's
    first calls are held against Ctrl-C, the path that kept every such model alive); [] where all are freed."""
    import unidl as ud

    def train():
        model = model_factory()
        loss, optimizer = ud.nn.MSELoss(), ud.optim.Adam(model.parameters(), lr=1e-3)
        ud.train_step(model, loss, optimizer)(x, y)
        ud.fit(model, (x, y), loss=loss, optimizer=optimizer, batch_size=len(x) - 2, epochs=1, verbose=0)
        return {"model": weakref.ref(model), "optimizer": weakref.ref(optimizer), "loss": weakref.ref(loss)}

    kept = train()
    gc.collect()
    return [name for name, ref in kept.items() if ref() is not None]
