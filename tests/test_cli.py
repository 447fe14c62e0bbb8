"""The ``unidl`` command: train (the README's main job), info, compare; ``python -m unidl`` is the same."""

import os
import re
import subprocess
import sys
import types

import pytest

import unidl as ud
from unidl import cli, config
from unidl.compare import display_name
from tests.helpers import ROOT, last_json_line


@pytest.fixture(autouse=True)
def keep_default_backend(monkeypatch):
    monkeypatch.setattr(config, "_default_backend", config._default_backend)
    monkeypatch.setattr(config, "_default_device", config._default_device)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))  # the command sets it


@pytest.mark.parametrize("backend", ["tensorflow", "keras"])
def test_train_defaults_reach_95_percent_on_digits(backend, capsys):
    """The defaults reach 95% on digits on tensorflow and keras (on torch: test_no_arguments_means_train_on_digits,
    whose default backend is torch)."""
    accuracy = cli.train(cli.build_parser().parse_args(["train", "--backend", backend, "--verbose", "0"]))
    out = capsys.readouterr().out
    assert "model=cnn dataset=digits" in out and f"backend={backend}" in out
    assert accuracy >= 0.95
    assert re.search(r"test accuracy: 0\.9[5-9]\d*|test accuracy: 1\.0", out)


def test_train_two_layer_with_options(capsys):
    cli.main(["train", "--model", "two_layer", "--dataset", "synthetic", "--backend", "tf", "--epochs", "3",
              "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "32", "--seed", "1", "--verbose", "0"])
    out = capsys.readouterr().out
    assert "model=two_layer dataset=synthetic backend=tensorflow" in out and "optimizer=sgd lr=0.05" in out
    assert float(out.split("test accuracy:")[1].split()[0]) > 0.5


@pytest.mark.parametrize("name", ["nadam", "radam", "adamax", "adadelta", "rprop"])
def test_train_offers_every_optimizer_with_a_default_rate(name, capsys):
    """``--optimizer`` offers unidl's optimizers (NAdam, RAdam, Adamax, Adadelta and Rprop too), each with a default
    rate that trains the two-layer net on the synthetic data."""
    cli.main(["train", "--model", "two_layer", "--dataset", "synthetic", "--backend", "torch", "--epochs", "2",
              "--optimizer", name, "--batch-size", "64", "--verbose", "0"])
    out = capsys.readouterr().out
    assert f"optimizer={name} lr={cli.DEFAULT_LR[name]}" in out
    assert float(out.split("test accuracy:")[1].split()[0]) > 0.5


def test_bad_dataset_is_explained(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--dataset", "imagenet", "--verbose", "0"])
    assert exited.value.code == 2
    assert "argument --dataset: unknown dataset 'imagenet'; use digits, synthetic" in capsys.readouterr().err


def test_missing_mnist_files_or_an_unwritable_logdir_are_one_line_errors_with_status_2(tmp_path, capsys):
    """A file the command cannot read is ``unidl: error: ...`` naming it, exit status 2 (a traceback); a ``--logdir``
    it cannot make is an argument error, before any data loads."""
    assert cli.main(["train", "--dataset", f"mnist:{tmp_path}", "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unidl: error: ") and "train-images-idx3-ubyte" in err and len(err.splitlines()) == 1
    # a --logdir that is a file, or below one: refused with the other arguments, before the data loads
    blocker = tmp_path / "file"
    blocker.write_text("")
    for logdir, message in [(blocker, f"'{blocker}' exists and is not a directory"),
                            (blocker / "logs", f"cannot make directory '{blocker / 'logs'}': '{blocker}' is a file")]:
        with pytest.raises(SystemExit) as exited:
            cli.main(["train", "--model", "two_layer", "--dataset", "synthetic", "--epochs", "1", "--verbose", "0",
                      "--backend", "torch", "--logdir", str(logdir)])
        assert exited.value.code == 2
        captured = capsys.readouterr()
        assert captured.err == f"unidl train: error: argument --logdir: {message}\n" and "model=" not in captured.out


def test_info_lists_backends_versions_devices(capsys):
    cli.main(["info"])
    out = capsys.readouterr().out
    for text in ("torch 2.13", "tensorflow 2.21", "keras 3.15", "devices: cpu", "capabilities:", "torch_export, onnx",
                 "framework's own trainer"):
        assert text in out


def test_a_bad_thread_count_in_the_environment_is_one_line_and_info_reports_it(monkeypatch, capsys):
    """``UNIDL_NUM_THREADS=abc``: a command ends with ``unidl: error:`` naming it, status 2, as a bad
    ``UNIDL_DEVICE`` does (it was a traceback, status 1); ``unidl info`` lists the rest and reports it."""
    from unidl import threads

    monkeypatch.setattr(threads, "_requested", None)
    monkeypatch.setenv("UNIDL_NUM_THREADS", "abc")
    assert cli.main(["train", "--model", "two_layer", "--dataset", "synthetic", "--verbose", "0"]) == 2
    assert capsys.readouterr().err == "unidl: error: UNIDL_NUM_THREADS must be a positive integer, got 'abc'\n"
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch 2.13" in out
    assert "threads: UNIDL_NUM_THREADS must be a positive integer, got 'abc' (ignored for this listing)" in out


def unidl_command(*arguments, env=None):
    """``python -m unidl ARGUMENTS`` from the repo root, as a user runs it (no TF_CPP_MIN_LOG_LEVEL of ours)."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env or {}, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "unidl", *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_python_dash_m_unidl_is_the_same_command_and_quiet():
    result = unidl_command("info")
    assert result.returncode == 0, result.stderr
    assert "torch 2.13" in result.stdout
    # the keras backend is shown with the framework it runs on, read from its versions()
    assert re.search(r"^  keras\[(tensorflow|torch|jax)\] +keras 3", result.stdout, re.MULTILINE), result.stdout
    # TensorFlow's import-time absl lines ("I0000 00:00:... port.cc:153] oneDNN custom operations are on") are dropped
    assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr, result.stderr
    assert not re.search(r"^[IW]\d{4} ", result.stderr, re.MULTILINE), result.stderr


def test_version():
    result = unidl_command("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"unidl {ud.__version__}")


BAD_VALUES = [
    (["train", "--epochs", "-1"], "argument --epochs: must be a positive integer, got -1"),
    (["train", "--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["train", "--lr", "-1"], "argument --lr: must be a positive finite number, got -1"),
    (["train", "--verbose", "3"], "argument --verbose: invalid choice: 3"),
    (["train", "--backend", "caffe"], "argument --backend: unknown backend 'caffe'; valid backends are 'torch'"),
    (["train", "--device", "tpu"], "argument --device: invalid device 'tpu'"),
    (["train", "--nproc", "0"], "argument --nproc: must be a positive integer, got 0"),
    (["train", "--threads", "0"], "argument --threads: must be a positive integer, got 0"),
    (["compare", "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["parity", "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["parity", "--backends", "torch"], "argument --backends: parity compares two backends or more, got ['torch']"),
    (["parity", "--backends", "torch", "keras:bogus"], "argument --backends: 'keras:bogus': only keras takes a "
                                                        "framework to run on, one of torch, tensorflow, jax"),
    (["parity", "--backends", "torch:jax", "tensorflow"], "argument --backends: 'torch:jax': only keras takes"),
    (["bench", "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["train", "--dataset", "cifar10:/nonexistent"], "argument --dataset: cifar10's directory '/nonexistent' does "
                                                      "not exist"),
]


# ``python -m unidl ARGUMENTS`` for each bad value in turn (one interpreter each cost ~0.35 s): one fresh interpreter
# imports unidl, then each value runs in a fork of it, as ``-m`` runs unidl's ``__main__``, so that nothing one run
# imports or caches reaches the next; its exit status is the child's, its stderr all the child wrote to fd 2 (below
# Python too), and it reports the frameworks imported by then; the parent's own stderr must stay empty
BAD_VALUES_RUN = """
import json, os, runpy, sys, traceback
import unidl.cli  # noqa: F401 (each case runs in a fork of this state)
outcomes = []
for arguments, _ in BAD_VALUES:
    errors, report = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(errors[0])
        os.close(report[0])
        os.dup2(errors[1], 2)
        sys.argv = ["unidl", *arguments]
        try:
            runpy.run_module("unidl", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os.write(report[1], json.dumps([m for m in ("torch", "tensorflow", "keras", "jax") if m in sys.modules])
                 .encode())
        os._exit(code)
    os.close(errors[1])
    os.close(report[1])
    with os.fdopen(errors[0]) as pipe:
        stderr = pipe.read()
    with os.fdopen(report[0]) as pipe:
        imported = json.loads(pipe.read() or "null")
    outcomes.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), stderr, imported])
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def bad_value_runs():
    """Each bad value's (exit status, stderr, frameworks imported), and the parent interpreter's own stderr."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", f"BAD_VALUES = {BAD_VALUES!r}\n" + BAD_VALUES_RUN], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outcomes = last_json_line(result.stdout)
    return dict(zip((" ".join(arguments) for arguments, _ in BAD_VALUES), outcomes)), result.stderr


@pytest.mark.parametrize("arguments, message", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_value_is_one_line_error_with_status_2(arguments, message, bad_value_runs):
    (returncode, stderr, _), parent_stderr = bad_value_runs[0][" ".join(arguments)], bad_value_runs[1]
    assert returncode == 2, stderr
    assert stderr.startswith(f"unidl {arguments[0]}: error: {message}"), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert parent_stderr == "", parent_stderr


def test_bad_values_are_refused_before_any_framework_is_imported(bad_value_runs):
    outcomes = bad_value_runs[0].values()
    assert [code for code, _, _ in outcomes] == [2] * len(BAD_VALUES)
    assert [imported for _, _, imported in outcomes] == [[]] * len(BAD_VALUES)


def test_unseen_gpu_is_one_line_error_with_status_2(capsys):
    from unidl import backends

    if backends.load("torch").devices() != ["cpu"]:
        pytest.skip("torch sees a GPU here")
    assert cli.main(["train", "--backend", "torch", "--device", "cuda", "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unidl: error: device 'cuda' is not visible to backend 'torch'; it sees: cpu"), err
    assert len(err.strip().splitlines()) == 1


def test_display_name_appends_the_host_framework_from_versions():
    def backend(name, versions):
        return types.SimpleNamespace(name=name, versions=lambda: versions)

    assert display_name(backend("keras", {"keras": "3.15", "keras backend torch": "2.13"})) == "keras[torch]"
    assert display_name(backend("keras", {"keras": "3.15", "keras backend tensorflow": "2.21"})) == "keras[tensorflow]"
    assert display_name(backend("tensorflow", {"tensorflow": "2.21"})) == "tensorflow"


def test_bench_runs_the_harness_of_the_source_checkout(monkeypatch, tmp_path, capsys):
    harness = cli.bench_harness()
    assert os.path.samefile(harness.__file__, ROOT / "benchmarks" / "bench.py")
    monkeypatch.setattr(cli, "BENCHMARKS", tmp_path / "benchmarks")  # as in an installed wheel
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "benchmarks ship with unidl's source repository" in err and "python benchmarks/bench.py" in err


def test_no_arguments_means_train_on_digits(monkeypatch, capsys):
    """No arguments at all: the CNN on digits for 15 epochs on the first installed backend, torch, to 95%."""
    monkeypatch.delenv("UNIDL_BACKEND", raising=False)
    monkeypatch.setattr(config, "_default_backend", None)  # (keep_default_backend restores the default)
    monkeypatch.setattr(config, "_default_backend_name", None)
    assert ud.available_backends()[0] == "torch"
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "model=cnn dataset=digits backend=torch" in out and "Epoch 15/15" in out
    assert float(out.split("test accuracy:")[1].split()[0]) >= 0.95
    assert re.search(r"test accuracy: 0\.9[5-9]\d*|test accuracy: 1\.0", out)


# digits' 1,437 training samples leave a last batch of 29, which 2 ranks split unevenly (fit warns) unless dropped
TRAIN_TWO_LAYER = ["--backend", "torch", "--model", "two_layer", "--dataset", "digits", "--epochs", "2",
                   "--verbose", "0", "--drop-last"]


def test_train_nproc_2_runs_two_ranks_and_writes_its_outputs_once(tmp_path, capfd, monkeypatch):
    """``unidl train --nproc 2`` (unidl's launcher) and ``torchrun --nproc-per-node 2 -m unidl train`` (torchrun's
    agent and variables) run the same job: one report and one set of logs, rank 0's, and the same numbers; each
    rank runs one framework thread unless told otherwise (``DEFAULT_TRAIN_THREADS``); ``--drop-last`` drops the
    last batch that the ranks would split unevenly (no warning: the CLI had no way to follow its advice)."""
    from unidl import threads

    monkeypatch.delenv("UNIDL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_requested", None)
    args = cli.build_parser().parse_args(["train", "--nproc", "2", *TRAIN_TWO_LAYER, "--logdir", str(tmp_path)])
    accuracy = cli.train(args)  # launches the 2 ranks from here (they print; rank 1 stays quiet)
    out, err = capfd.readouterr()
    assert "splits unevenly" not in err, err
    torchrun_dir = tmp_path / "torchrun"
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "unidl", "train", *TRAIN_TWO_LAYER, "--logdir", str(torchrun_dir)],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                              timeout=300)
    assert torchrun.returncode == 0, torchrun.stdout + torchrun.stderr
    assert "splits unevenly" not in torchrun.stderr, torchrun.stderr
    assert torchrun.stdout.count("unidl train:") == 1 and "processes=2 threads=1" in torchrun.stdout, torchrun.stdout
    assert torchrun.stdout.count("test accuracy:") == 1 and f"test accuracy: {accuracy:.4f}" in torchrun.stdout
    assert (torchrun_dir / cli.RUN_CSV).read_text() == (tmp_path / cli.RUN_CSV).read_text()  # the same epochs
    assert out.count("unidl train:") == 1 and "processes=2 threads=1" in out, out
    assert out.count("test accuracy:") == 1 and f"test accuracy: {accuracy:.4f}" in out, out
    assert out.count("run logged in") == 1, out
    rows = (tmp_path / cli.RUN_CSV).read_text().splitlines()
    assert len(rows) == 1 + 2 and rows[0].startswith("epoch"), rows  # a header and one row per epoch: rank 0's
    events = sorted(str(path.relative_to(tmp_path).parent) for path in tmp_path.rglob("events.out.tfevents*"))
    assert events == sorted(set(events)) and events, events  # one event file per run directory, not one per rank


@pytest.mark.parametrize("steps, rows", [(21, [0, 20]), (1, [0]), (45, [0, 20, 40, 44])])
def test_compare_prints_each_step_once(steps, rows, monkeypatch, capsys):
    from unidl import compare

    monkeypatch.setattr(compare, "two_layer_losses", lambda name, steps: [float(t) for t in range(steps)])
    compare.print_side_by_side(steps)
    printed = [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()[2:]]
    assert printed == rows  # (the last step was printed twice when every 20th step was it)
