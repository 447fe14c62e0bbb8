"""The Markdown report (``benchmarks/RESULTS.md``) and the one-line console form of a row."""

from __future__ import annotations

import os
import platform

import numpy as np

from benchmarks.harness import Row, Settings


def format_row(row: Row) -> str:
    if row.ratio is None:
        return f"{row.comparison:<32} {row.model:<9} {row.note}"
    verdict = {True: "met", False: "MISSED", None: ""}[row.met]
    return (f"{row.comparison:<32} {row.model:<9} unidl {row.unidl_ms:8.3f} ms  native {row.native_ms:8.3f} ms  "
            f"ratio {row.ratio:5.2f}{f' ({row.spread_text})' if row.spread else ''}  {row.target} {verdict}")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict:
    found = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "tensorflow", "keras", "jax"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    import unidl

    found["unidl"] = unidl.__version__
    return found


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _gpu_name(device: str) -> str:
    """`` (<the GPU's name as torch reports it>)`` for a CUDA device, else nothing."""
    if not device.startswith("cuda"):
        return ""
    import torch

    return f" ({torch.cuda.get_device_name(torch.device(device))}, torch CUDA {torch.version.cuda})"


def report(rows: list[Row], settings: Settings, device: str, started: str, load_before: str, quick: bool,
           findings: str = "") -> str:
    info, found = machine(), versions()
    lines = [
        "# unidl benchmarks", "",
        "One training step (median over alternating blocks of steps after warm-up) of unidl against the same",
        "model and loop hand-written natively, and against Keras 3; data loader epochs likewise. Ratio = unidl / native",
        "(below 1: unidl is faster). Produced by `unidl bench" + (" --quick" if quick else "") +
        f" --device {device}` (`benchmarks/bench.py`).", "",
        f"- date: {started}",
        f"- machine: {info['cpu']}, {info['cores']} cores ({info['platform']})",
        f"- load average (1, 5, 15 min) before / after: {load_before} / {load_average()}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in found.items()),
        f"- device: {device}{_gpu_name(device)}",
        f"- settings: {settings.steps} timed steps per side in {settings.blocks} alternating blocks after "
        f"{settings.warmup} warm-up steps; fit: {settings.fit_rounds} epochs of {settings.fit_steps} batches per side; "
        f"loaders: {settings.loader_rounds} epochs of {settings.loader_samples} samples per side",
        "- models: two-layer net (N=64, D_in=1000, H=100, D_out=10, MSE) and LeNet CNN (batch 64, 3x32x32, "
        "cross-entropy), SGD lr=1e-2 momentum=0.9, float32; native models hold the same weights "
        "(loss diff: first-step loss of unidl minus native on the same batch); workload models (group `models`, "
        f"left out of --quick): ResNet-18 with the CIFAR stem (batch {settings.model_batch}, 3x32x32) and the "
        f"transformer classifier (batch {settings.model_batch}, sequence 64, d_model 128, 2 pre-norm layers, 4 heads), "
        f"{settings.model_steps} timed steps per side",
        "- block quartiles: the lower and upper quartile of the ratio measured block by block (unidl's median over "
        "a block / native's over the adjacent block): how far the ratio moves within this run", "",
        "| comparison | model | unidl | native | unidl ms | native ms | unidl/native | block quartiles | target | met "
        "| loss diff | note |",
        "|---|---|---|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for row in rows:
        cells = [row.comparison, row.model, f"`{row.unidl}`", f"`{row.native}`",
                 "-" if row.unidl_ms is None else f"{row.unidl_ms:.3f}",
                 "-" if row.native_ms is None else f"{row.native_ms:.3f}",
                 "-" if row.ratio is None else f"{row.ratio:.2f}",
                 row.spread_text or "-",
                 row.target.replace("<=", "≤") or "-",
                 {True: "yes", False: "**no**", None: "-"}[row.met],
                 "-" if row.loss_diff is None else f"{row.loss_diff:.1e}", row.note or ""]
        lines.append("| " + " | ".join(cells) + " |")
    missed = [r for r in rows if r.met is False]
    lines += ["", f"Targets met: {sum(r.met is True for r in rows)} of {sum(r.met is not None for r in rows)}"
              + (f"; missed: {', '.join(f'{r.comparison} / {r.model}' for r in missed)}" if missed else "") + "."]
    if findings:
        lines += ["", findings.rstrip()]
    return "\n".join(lines) + "\n"


ANALYSIS_HEADING = "## Analysis"


def previous_analysis(path: str) -> str:
    """The hand-written ``## Analysis`` section of an earlier report at ``path``, kept across re-runs."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return ""
    start = text.find("\n" + ANALYSIS_HEADING)
    return text[start + 1:] if start >= 0 else ""
