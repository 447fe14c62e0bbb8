"""A run killed with SIGKILL mid-epoch, in the middle of writing a checkpoint, and resumed from its last
intact checkpoint ends exactly where an uninterrupted run ends: bit-identical weights (CPU, float32) on torch,
tensorflow and keras, dropout and a StepLR schedule included, and a bit-identical History (the interrupted
epoch's loss and accuracy summed over all its batches in the same order as without the interruption)."""

import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

import unidl as ud
from tests.helpers import ROOT
from unidl.testing import max_relative_difference

JOB = str(ROOT / "tests" / "resume_job.py")


def _job(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, JOB, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "keras"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, backend):
    # 600 samples / 50 per batch = 12 steps per epoch, checkpoints every 4 steps (keep=2): killed while writing
    # the checkpoint of step 20, mid-epoch 2, after its header and first tensor reached the disk
    killed = _job(backend, tmp_path / "run", tmp_path / "unused.npz", 20)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = sorted(os.listdir(tmp_path / "run"))
    assert names[1:] == ["checkpoint-0000-0000012.safetensors", "checkpoint-0001-0000016.safetensors"], names
    assert names[0].startswith(".checkpoint-0001-0000020.safetensors.unidl-"), names  # the final name never appeared
    assert 0 < os.path.getsize(tmp_path / "run" / names[0]) < os.path.getsize(tmp_path / "run" / names[2]) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no corrupt checkpoint to skip: the newest is intact
        assert ud.latest_checkpoint(tmp_path / "run") == str(tmp_path / "run" / names[2])
    # the resume, then the uninterrupted run from scratch in the same fresh interpreter (a start costs seconds)
    resumed = _job(backend, tmp_path / "run", tmp_path / "resumed.npz", "--then", tmp_path / "straight",
                   tmp_path / "straight.npz")
    assert resumed.returncode == 0, resumed.stderr
    # its first checkpoint removed the dead writer's temporary (the final two of 36 steps remain)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-0002-0000032.safetensors",
                                                    "checkpoint-0002-0000036.safetensors"]
    a, b = np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "straight.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:  # History too: the interrupted epoch's running sums go on from the checkpoint's
        assert np.array_equal(a[key], b[key]), (key, a[key], b[key], max_relative_difference(a[key], b[key]))
    np.testing.assert_array_equal(a["history/lr"], [2e-3, 1e-3, 5e-4])
