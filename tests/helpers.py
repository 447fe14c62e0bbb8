"""Shared test helpers: running Python in a fresh interpreter."""

import json
import os
import subprocess
import sys
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
