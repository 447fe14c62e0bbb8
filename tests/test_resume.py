"""A run killed with SIGKILL mid-epoch, in the middle of writing a checkpoint, and resumed from its last
intact checkpoint ends exactly where an uninterrupted run ends: bit-identical weights (CPU, float32) on torch,
tensorflow, keras, jax and Keras on JAX (``KERAS_BACKEND=jax``: the keras backend's fit through Keras's JAX trainer,
which holds the state outside the variables during an epoch), dropout and a StepLR schedule included, and a
bit-identical History (the interrupted epoch's loss and accuracy summed over all its batches in the same order as
without the interruption)."""

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

pytestmark = pytest.mark.heavy  # minutes of tests: run first (tests/conftest.py)

JOB = str(ROOT / "tests" / "resume_job.py")
# (in any order: a seed set before a backend loaded once made TensorFlow's runtime start before its threads were
# set, so its float32 results depended on what the process had run before; unidl/backends/__init__.py ``load``)
BACKENDS = ["torch", "tensorflow", "keras", "jax"]
# Keras on JAX: the keras backend in interpreters of its own (Keras reads KERAS_BACKEND when it is imported)
KERAS_JAX = "keras-on-jax"


def _job(*args, keras_backend=None):
    """Runs the job; ``keras_backend`` sets KERAS_BACKEND (else the suite's own)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    if keras_backend is not None:
        env["KERAS_BACKEND"] = keras_backend
    return subprocess.run([sys.executable, JOB, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The jobs killed mid-checkpoint: one interpreter for torch, tensorflow and keras and one for jax and Keras on
    JAX (a start costs seconds), each job in a thread of its own stopped mid-write, until the last one's write
    kills the process (tests/resume_job.py), and per backend what its job left on disk; then, in two more fresh
    interpreters, grouped alike, per backend the resume, then the uninterrupted run from scratch.
    ``(killing job, files it left with their sizes, RuntimeWarnings of latest_checkpoint, its answer)`` per backend,
    the resume job, and the folder."""
    root = tmp_path_factory.mktemp("resume")
    # 600 samples / 50 per batch = 12 steps per epoch, checkpoints every 4 steps (keep=2): killed while writing
    # the checkpoint of step 20, mid-epoch 2, after its header and first tensor reached the disk
    # (jax's beside Keras-on-JAX's: the other interpreters then import no JAX)
    on_jax = ["jax", KERAS_JAX]
    others = [backend for backend in BACKENDS if backend not in on_jax]
    killing = {}
    for group, keras_backend in ((others, None), (on_jax, "jax")):
        job = _job("--kill-at", 20, *[str(part) for backend in group
                                      for part in (backend.split("-")[0], root / backend / "run",
                                                   root / backend / "unused.npz")], keras_backend=keras_backend)
        killing |= dict.fromkeys(group, job)
    killed = {}
    for backend in [*BACKENDS, KERAS_JAX]:
        run = root / backend / "run"
        sizes = {name: os.path.getsize(run / name) for name in sorted(os.listdir(run))} if run.exists() else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)  # no corrupt checkpoint to skip: the newest is intact
            latest = ud.latest_checkpoint(run) if sizes else None
        killed[backend] = killing[backend], sizes, [w for w in caught if issubclass(w.category, RuntimeWarning)], latest

    def resume(*backends, keras_backend=None):
        return _job("--resume", *[str(part) for backend in backends
                                  for part in (backend.split("-")[0], root / backend / "run",
                                               root / backend / "resumed.npz", root / backend / "straight",
                                               root / backend / "straight.npz")], keras_backend=keras_backend)

    resumed = dict.fromkeys(others, resume(*others)) | dict.fromkeys(on_jax, resume(*on_jax, keras_backend="jax"))
    return killed, resumed, root


@pytest.mark.parametrize("backend", [*BACKENDS, KERAS_JAX])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(runs, backend):
    (killed, sizes, warned, latest), resumed, root = runs[0][backend], runs[1][backend], runs[2] / backend
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = list(sizes)
    assert names[1:] == ["checkpoint-0000-0000012.safetensors", "checkpoint-0001-0000016.safetensors"], names
    assert names[0].startswith(".checkpoint-0001-0000020.safetensors.unidl-"), names  # the final name never appeared
    assert 0 < sizes[names[0]] < sizes[names[2]] / 2
    assert warned == [] and latest == str(root / "run" / names[2])
    assert resumed.returncode == 0, resumed.stderr
    # its first checkpoint removed the dead writer's temporary (the final two of 36 steps remain)
    assert sorted(os.listdir(root / "run")) == ["checkpoint-0002-0000032.safetensors",
                                                "checkpoint-0002-0000036.safetensors"]
    a, b = np.load(root / "resumed.npz"), np.load(root / "straight.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:  # History too: the interrupted epoch's running sums go on from the checkpoint's
        assert np.array_equal(a[key], b[key]), (key, a[key], b[key], max_relative_difference(a[key], b[key]))
    np.testing.assert_array_equal(a["history/lr"], [2e-3, 1e-3, 5e-4])
    keras_framework = os.environ.get("KERAS_BACKEND", "tensorflow")
    assert str(a["framework"]) == {"keras": keras_framework, KERAS_JAX: "jax"}.get(backend, backend)
