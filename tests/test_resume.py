"""A run killed with SIGKILL mid-epoch and resumed from its last checkpoint ends exactly where an
uninterrupted run ends: bit-identical weights (CPU, float32) on torch, tensorflow and keras, dropout and a
StepLR schedule included, and a bit-identical History (the interrupted epoch's loss and accuracy summed
over all its batches in the same order as without the interruption)."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT
from unidl.testing import max_relative_difference

JOB = str(ROOT / "tests" / "resume_job.py")


def _job(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, JOB, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "keras"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, backend):
    # 600 samples / 50 per batch = 12 steps per epoch; step 17 is mid-epoch 2, checkpoints every 4 steps
    killed = _job(backend, tmp_path / "run", tmp_path / "unused.npz", 17)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = sorted(os.listdir(tmp_path / "run"))
    assert names and all(n.endswith(".safetensors") for n in names), names  # no temp file left behind
    # the resume, then the uninterrupted run from scratch in the same fresh interpreter (a start costs seconds)
    resumed = _job(backend, tmp_path / "run", tmp_path / "resumed.npz", "--then", tmp_path / "straight",
                   tmp_path / "straight.npz")
    assert resumed.returncode == 0, resumed.stderr
    a, b = np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "straight.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:  # History too: the interrupted epoch's running sums go on from the checkpoint's
        assert np.array_equal(a[key], b[key]), (key, a[key], b[key], max_relative_difference(a[key], b[key]))
    np.testing.assert_array_equal(a["history/lr"], [2e-3, 1e-3, 5e-4])
