"""``unidl bench``: one training step of unidl against the same step hand-written in each framework.

Every comparison runs its pair in one process, alternating blocks of steps (A, B, B, A, ...),
and reports medians and the ratio unidl/native; the peers a user would otherwise pick (Keras 3
on torch and on TensorFlow) and the data loaders are compared the same way. The result is a
Markdown report (``benchmarks/RESULTS.md`` of this checkout by default). ``python benchmarks/bench.py [--quick]``
is the same command as ``unidl bench [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import benchmarks/ (and unidl/) from this checkout
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.first_step import bench_first_step
from benchmarks.harness import MODELS, Row, Settings
from benchmarks.keras_peer import keras_peer, keras_workload_peer
from benchmarks.loaders import bench_loaders
from benchmarks.native_jax import bench_jax
from benchmarks.native_keras import bench_keras
from benchmarks.native_models import bench_workloads
from benchmarks.native_tf import bench_tensorflow
from benchmarks.native_torch import bench_torch
from benchmarks.report import ANALYSIS_HEADING, format_row, load_average, previous_analysis, report
from unidl.cli import nearest_existing_ancestor, positive_int
from unidl.errors import ConfigurationError, DeviceUnavailableError

#: every group ``run`` may hold, in its order (which of them a run holds depends on the frameworks installed,
#: the device and ``--quick``)
GROUPS = ("torch", "tensorflow", "keras", "jax", "peer keras torch", "peer keras tensorflow", "peer keras jax",
          "models", "models peer keras torch", "models peer keras tensorflow", "loader", "first step")
#: the report's default path: the committed results beside this harness, wherever the command runs from
DEFAULT_REPORT = str(Path(__file__).resolve().parent / "RESULTS.md")


def _installed(backend: str) -> bool:
    import unidl as ud

    return backend in ud.available_backends()


def tensorflow_sees_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def run(settings: Settings, device: str = "cpu", only: str | None = None, log=print, quick: bool = False,
        keep_going: bool = False) -> list[Row]:
    """Every comparison, in order; ``only`` keeps the groups whose name contains it. ``quick`` leaves out the
    workload models (ResNet-18, the transformer: seconds a step on a CPU) unless ``only`` asks for them.
    ``keep_going``: a group that raises is one row saying so (its traceback logged) and the next group runs, for
    a run on a machine held for minutes (a GPU lent for one call) that should not lose every group to one."""
    with_tf = _installed("tensorflow") and (device == "cpu" or tensorflow_sees_gpu())
    built = {}  # steps and models traced by one group and timed again by a later one (see keras_peer_rows)
    groups = [("torch", lambda: bench_torch(settings, device))]
    skipped = "skipped: TensorFlow sees no GPU" if _installed("tensorflow") else "skipped: TensorFlow is not installed"
    if with_tf:
        groups += [("tensorflow", lambda: bench_tensorflow(settings, device, built)),
                   ("keras", lambda: bench_keras(settings, device, built))]
    else:
        groups += [("tensorflow", lambda: [Row("train step, tensorflow", m, "ud.train_step", "tf.function",
                                               note=skipped) for m in MODELS]),
                   ("keras", lambda: [Row("train step, keras", m, "ud.train_step", "keras", note=skipped)
                                      for m in MODELS])]
    if _installed("jax"):
        groups += [("jax", lambda: bench_jax(settings, device))]
    groups += [("peer keras torch", lambda: keras_peer(settings, device, "torch", "torch"))]
    if with_tf:
        groups += [("peer keras tensorflow", lambda: keras_peer(settings, device, "tensorflow", "tensorflow", built))]
    if _installed("jax"):
        groups += [("peer keras jax", lambda: keras_peer(settings, device, "jax", "jax"))]
    if not quick or (only and only in "models"):
        groups += [("models", lambda: bench_workloads(settings, device, with_tf, _installed("jax"))),
                   ("models peer keras torch", lambda: keras_workload_peer(settings, device, "torch"))]
        if with_tf:
            groups += [("models peer keras tensorflow", lambda: keras_workload_peer(settings, device, "tensorflow"))]
    groups += [("loader", lambda: bench_loaders(settings, device, with_tf))]
    if device == "cpu":
        groups += [("first step", lambda: bench_first_step(settings, device))]
    if only and not any(only in name for name, _ in groups):
        raise ConfigurationError(f"--only {only!r}: no group of this run matches it (its groups here: "
                                 f"{', '.join(name for name, _ in groups)}); nothing was run")
    rows = []
    for name, group in groups:
        if only and only not in name:
            continue
        started = time.perf_counter()
        try:
            for row in group():
                rows.append(row)
                log(format_row(row))
        except Exception as error:
            if not keep_going:
                raise
            log(traceback.format_exc())
            rows.append(Row(name, "-", "-", "-", note=f"failed: {type(error).__name__}: {error}"[:300]))
            log(format_row(rows[-1]))
        log(f"  ({name}: {time.perf_counter() - started:.1f} s)")
    return rows


def group_filter(text: str) -> str:
    """``--only``: a part of some group's name (a typo would run nothing and write an empty report)."""
    if not any(text in name for name in GROUPS):
        raise argparse.ArgumentTypeError(f"{text!r} matches no group; groups: {', '.join(GROUPS)}")
    return text


def readable_file(text: str) -> str:
    """``--findings``: a file that can be read, checked before the benchmark runs (not after, losing it)."""
    try:
        with open(text):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {error.strerror}") from None
    return text


def report_path(text: str) -> str:
    """``--out``: a file path whose directory exists or can be made, checked before the benchmark runs."""
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected the report's file path")
    ancestor = nearest_existing_ancestor(path)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {ancestor!r} is not a writable directory")
    return text


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="unidl bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (a few steps), for tests")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu (default) or cuda (the first GPU)")
    parser.add_argument("--steps", type=positive_int, default=None, help="timed steps per side (default 300; quick 4)")
    parser.add_argument("--out", type=report_path, default=DEFAULT_REPORT,
                        help="the Markdown report (default: RESULTS.md beside this harness)")
    parser.add_argument("--only", type=group_filter, default=None, help="run only the groups whose name contains "
                        "this (torch, tensorflow, keras, jax, peer, models, loader, first step)")
    parser.add_argument("--no-subprocess", action="store_true",
                        help="skip the Keras-on-torch peer, which needs a process of its own")
    parser.add_argument("--keep-going", action="store_true",
                        help="a group that fails is a row saying so, and the other groups still run")
    parser.add_argument("--findings", type=readable_file, default=None,
                        help=f"a Markdown file appended to the report (its analysis); by default the "
                        f"'{ANALYSIS_HEADING}' section of the existing report is kept")
    return parser


def main(argv=None, args=None) -> int:
    args = args or build_parser().parse_args(argv)
    device = "cpu" if args.device == "cpu" else "cuda:0"
    if device != "cpu":
        import torch
        if not torch.cuda.is_available():
            raise DeviceUnavailableError("--device cuda: torch sees no GPU on this machine")
    settings = Settings.quick(args.steps) if args.quick else Settings.full(args.steps)
    settings.subprocess = not args.no_subprocess
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_before = load_average()
    print(f"unidl bench: device={device} steps={settings.steps} load average {load_before}")
    rows = run(settings, device, args.only, quick=args.quick, keep_going=args.keep_going)
    findings = previous_analysis(args.out)
    if args.findings:
        with open(args.findings) as handle:
            findings = handle.read()
    text = report(rows, settings, device, started, load_before, args.quick, findings)
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write(text)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":  # the same command as `unidl bench`: its quiet framework import and one-line errors
    from unidl.cli import main as unidl_main

    sys.exit(unidl_main(["bench", *sys.argv[1:]]))
