"""The README's test command (scripts/run-tests.sh) runs the keras backend's tests on every framework Keras runs on:
the whole suite once (Keras-on-TensorFlow), then the keras tests of the parity suite and of the files that
docs/guarantees.md names for every Keras framework again under ``KERAS_BACKEND=jax`` and ``torch``, each a process
of its own (Keras reads ``KERAS_BACKEND`` once, at import). The script runs here against a stand-in for the venv's
Python that records each call, so these tests take no framework's time."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# records each call (KERAS_BACKEND, UNIDL_TEST_KERAS_ONLY, the arguments) and fails where FAIL_ON names its framework
FAKE_PYTHON = """#!/usr/bin/env bash
echo "${KERAS_BACKEND:-unset}|${UNIDL_TEST_KERAS_ONLY:-unset}|$*${PYTEST_ADDOPTS:+ ADDOPTS=$PYTEST_ADDOPTS}" >> "$CALLS"
echo "output of ${KERAS_BACKEND:-the main run}"
if [ "${KERAS_BACKEND:-main}" = "${FAIL_ON:-}" ]; then exit 1; fi
"""


def _run_tests_script(tmp_path, *args, **env):
    """Runs a copy of scripts/run-tests.sh in ``tmp_path`` (its own tests/ folder, a set-up that does nothing and
    the stand-in Python); returns the process and the calls it made, one (KERAS_BACKEND, keras only, args) each."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "run-tests.sh", tmp_path / "scripts" / "run-tests.sh")
    (tmp_path / "scripts" / "setup-venv.sh").write_text("exit 0\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / "tests" / "nn").mkdir(parents=True)
    (tmp_path / "tests" / "test_x.py").write_text("")
    calls = tmp_path / "calls"
    # (the caller's own PYTEST_ADDOPTS, e.g. a `--durations=N` of a timed run of the suite, is not this test's)
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("UNIDL_TEST", "KERAS_BACKEND")) and k != "PYTEST_ADDOPTS"}
    result = subprocess.run(["bash", str(tmp_path / "scripts" / "run-tests.sh"), *args], capture_output=True,
                            text=True, env={**environment, "CALLS": str(calls), **env}, timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return result, sorted(tuple(line.split("|")) for line in lines)


# (tests/backends/test_keras_jax.py leaves the keras tests of tests/parity and tests/nn/test_sparse.py to the
# Keras-on-JAX runs of these files)
PARITY = ("tests/parity tests/nn/test_rnn.py tests/nn/test_attention.py tests/nn/test_transformer.py "
          "tests/nn/test_transformer_padding.py tests/nn/test_pytorch_state_dicts.py")
OTHERS = ("tests/nn/test_freeze.py tests/test_dynamic_forward.py tests/test_precision.py "
          "tests/test_export_inputs_outputs.py tests/backends/test_keras_jax_step_checks.py "
          "tests/backends/test_traced_functions.py tests/test_scan_value_checks.py tests/nn/test_sparse.py "
          "tests/test_autograd.py tests/nn/test_containers.py tests/nn/test_replace_head.py tests/test_scan.py "
          "tests/models tests/test_workload_examples.py")
MAIN = "-m pytest -n 2 --dist loadfile --no-loadscope-reorder"
NO_CACHE = "-p no:cacheprovider"  # (the Keras runs' results must not overwrite the main run's last-failed list)


@pytest.mark.parametrize("workers", ["2", "0"])
def test_the_whole_suite_runs_the_keras_tests_again_on_jax_and_torch(tmp_path, workers):
    """With no file named, the main run and two runs per other Keras framework (the parity suite with the layers'
    tables against torch, the other files), which take the caller's arguments and keep only the keras tests
    (UNIDL_TEST_KERAS_ONLY); each run's output is printed."""
    result, calls = _run_tests_script(tmp_path, "-q", "-k", "lstm", UNIDL_TEST_WORKERS=workers)
    assert result.returncode == 0, result.stderr
    main = MAIN if workers == "2" else "-m pytest"
    keras = f"-m pytest {NO_CACHE} -q -k lstm"
    assert calls == [("jax", "1", f"{keras} {OTHERS}"), ("jax", "1", f"{keras} {PARITY}"),
                     ("torch", "1", f"{keras} {OTHERS}"), ("torch", "1", f"{keras} {PARITY}"),
                     ("unset", "unset", f"{main} -q -k lstm")]
    for name in ("the main run", "jax", "torch"):
        assert f"output of {name}" in result.stdout
    assert "=== the keras backend on jax" in result.stdout and "=== the keras backend on torch" in result.stdout


def test_the_keras_runs_leave_the_main_runs_files_to_it(tmp_path):
    """Arguments that write or read a run-wide file (a JUnit report, the last run's failures, a temporary folder that
    each session empties), and PYTEST_ADDOPTS, are the main run's alone: the Keras runs, finishing after it,
    overwrote its JUnit report and last-failed list with their own. A JUnit report is written for each Keras run
    beside the main one. An option's value that names an existing path is not a selection of files."""
    result, calls = _run_tests_script(tmp_path, "-q", "--junitxml=report.xml", "--lf", "--basetemp", "tests",
                                      "-k", "lstm or gru", "--maxfail", "3", "-ra", PYTEST_ADDOPTS="--junitxml=ci.xml")
    assert result.returncode == 0, result.stderr
    keras = f"-m pytest {NO_CACHE} -q -k lstm or gru --maxfail 3 -ra"
    assert calls == [
        ("jax", "1", f"{keras} --junitxml=report.xml.keras-jax-others.xml {OTHERS}"),
        ("jax", "1", f"{keras} --junitxml=report.xml.keras-jax-parity.xml {PARITY}"),
        ("torch", "1", f"{keras} --junitxml=report.xml.keras-torch-others.xml {OTHERS}"),
        ("torch", "1", f"{keras} --junitxml=report.xml.keras-torch-parity.xml {PARITY}"),
        ("unset", "unset", f"{MAIN} -q --junitxml=report.xml --lf --basetemp tests -k lstm or gru --maxfail 3 -ra"
                           " ADDOPTS=--junitxml=ci.xml")]  # (PYTEST_ADDOPTS: pytest reads it in every run)


@pytest.mark.parametrize("selection", ["tests/nn", "tests/test_x.py::test_y"])
def test_a_selection_of_files_runs_alone(tmp_path, selection):
    result, calls = _run_tests_script(tmp_path, "-q", selection)
    assert result.returncode == 0, result.stderr
    assert calls == [("unset", "unset", f"{MAIN} -q {selection}")]


@pytest.mark.parametrize("hosts, frameworks", [("torch", ["torch", "torch", "unset"]), ("", ["unset"])])
def test_the_frameworks_can_be_chosen_or_left_out(tmp_path, hosts, frameworks):
    result, calls = _run_tests_script(tmp_path, "-q", UNIDL_TEST_KERAS_HOSTS=hosts)
    assert result.returncode == 0, result.stderr
    assert [call[0] for call in calls] == frameworks


@pytest.mark.parametrize("workers", ["2", "0"])
def test_a_failure_on_another_keras_framework_fails_the_suite(tmp_path, workers):
    result, calls = _run_tests_script(tmp_path, "-q", FAIL_ON="torch", UNIDL_TEST_WORKERS=workers)
    assert len(calls) == 5
    assert result.returncode == 1
    assert "=== the keras backend on torch: KERAS_BACKEND=torch UNIDL_TEST_KERAS_ONLY=1" in result.stdout
    assert "(exit 1)" in result.stdout


def test_keras_only_keeps_exactly_the_tests_run_on_the_keras_backend():
    """``UNIDL_TEST_KERAS_ONLY=1`` (tests/conftest.py) collects the tests whose backend parameter is keras, and no
    other: the tests the runs on Keras-on-JAX and Keras-on-torch repeat."""
    def collect(files=("tests/test_export_inputs_outputs.py",), **env):
        environment = {k: v for k, v in os.environ.items() if k != "UNIDL_TEST_KERAS_ONLY"}
        result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                 *files], cwd=ROOT, capture_output=True, text=True, env={**environment, **env},
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return [line for line in result.stdout.splitlines() if "::" in line]

    every, keras = collect(), collect(UNIDL_TEST_KERAS_ONLY="1")
    assert keras == [test for test in every if "[keras" in test or "-keras-" in test or "-keras]" in test]
    assert keras and len(keras) < len(every)
    # a test that loops over the backends, keras among them, with no parameter naming it: kept where marked
    marked = "tests/parity/test_two_layer.py::test_two_layer_net_agrees_across_backends"
    assert collect(["tests/parity/test_two_layer.py"], UNIDL_TEST_KERAS_ONLY="1") == [marked]
