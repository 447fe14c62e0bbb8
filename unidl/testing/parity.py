"""The parity harness: run one model on several backends from the same weights and compare everything.

``compare_backends`` builds the model on each backend from one seed and one ``state_dict()``,
then compares forward outputs, parameter gradients and an N-step training trajectory (losses
and final weights), pair by pair and tensor by tensor. ``assert_parity`` fails a test with the
report. A backend spelled ``keras:torch`` (Keras on another framework than this process's Keras)
runs in a subprocess, since Keras fixes its framework per process; its model must then be given as
an importable class plus constructor arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from unidl import config
from unidl.testing.compare import max_relative_difference

TOLERANCES = {
    "float32": {"weights": 0.0, "output": 2e-6, "gradient": 1e-5, "loss": 1e-5, "trained": 1e-5},
    "float64": {"weights": 0.0, "output": 1e-12, "gradient": 1e-12, "loss": 1e-12, "trained": 1e-12},
}
"""The largest relative difference ``compare_backends`` accepts, by dtype and by what is compared."""


@dataclass
class Row:
    """One comparison: a tensor of backend ``other`` against the same tensor of ``reference``."""

    reference: str
    other: str
    kind: str
    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    #: for the loss trajectory: the first training step (from 1) whose loss is over tolerance, else None
    first_step: int | None = None

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance


@dataclass
class ParityReport:
    """All rows of a parity run; ``str(report)`` is a table, ``report.failures`` the rows over tolerance."""

    dtype: str
    backends: list
    rows: list = field(default_factory=list)

    @property
    def failures(self) -> list:
        return [row for row in self.rows if not row.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def first_divergences(self) -> list[str]:
        """Where each pair of runs first parted, in the order the harness runs things: the initial weights,
        the forward output, the gradients (tensor by tensor, in parameter order), then the training
        steps (the first step whose loss differs), then the trained weights."""
        found = {}
        for row in self.rows:  # rows are in run order within each pair
            if row.passed or (row.reference, row.other) in found:
                continue
            where = {"weights": f"the initial weights ({row.name})", "output": "the forward output",
                     "gradient": f"the gradient of {row.name}, before any training step",
                     "loss": f"training step {row.first_step}" if row.first_step else "the loss trajectory",
                     "trained": f"the trained weights ({row.name}), with every loss within tolerance"}[row.kind]
            found[(row.reference, row.other)] = (f"{row.other} first diverged from {row.reference} at {where} "
                                                 f"(max rel {row.max_rel:.2e} > {row.tolerance:.0e})")
        return list(found.values())

    def __str__(self):
        header = f"{'pair':<26} {'what':<9} {'tensor':<28} {'max abs':>11} {'max rel':>11} {'tol':>9}  ok"
        lines = [f"parity ({self.dtype}) over {', '.join(self.backends)}", header, "-" * len(header)]
        for r in self.rows:
            lines.append(f"{r.reference + ' vs ' + r.other:<26} {r.kind:<9} {r.name:<28} {r.max_abs:11.3e} "
                         f"{r.max_rel:11.3e} {r.tolerance:9.1e}  {'yes' if r.passed else 'NO'}")
        lines.append(f"{len(self.rows) - len(self.failures)} passed, {len(self.failures)} failed")
        lines.extend(self.first_divergences())
        return "\n".join(lines)


def _in_process_run(backend, build, state, inputs, targets, loss, optimizer, steps, seed):
    """Everything the harness compares, as NumPy, for one backend of this process."""
    import unidl as ud

    with ud.use_backend(backend):
        ud.manual_seed(seed)
        model = build()
        if state is not None:
            model.load_state_dict(state)
        results = {"weights": model.state_dict()}
        x = ud.tensor(inputs)
        results["output"] = {"output": ud.to_numpy(model(x))}
        if loss is not None and targets is not None:
            loss_fn = loss()
            y = ud.tensor(targets)
            objective = lambda: loss_fn(model(x), y)  # noqa: E731
        else:
            probe = ud.tensor(np.random.default_rng(seed).standard_normal(results["output"]["output"].shape))
            objective = lambda: ud.ops.sum(model(x) * probe)  # noqa: E731
        names = [n for n, _ in model.named_parameters()]
        _, grads = ud.value_and_grad(objective, model.parameters())()
        results["gradient"] = {n: ud.to_numpy(g) for n, g in zip(names, grads)}
        if steps and loss is not None and optimizer is not None:
            step = ud.train_step(model, loss(), optimizer(model.parameters()))
            results["loss"] = {"trajectory": np.array([float(step(inputs, targets)) for _ in range(steps)])}
            results["trained"] = model.state_dict()
        return results


def _run_in_subprocess(backend, model_class, model_kwargs, state, inputs, targets, loss, optimizer, steps, seed, dtype):
    name, _, framework = backend.partition(":")
    for label, value in (("loss", loss), ("optimizer", optimizer)):
        if value is not None and "<" in value.__qualname__:
            raise ValueError(f"backend {backend!r} runs in a subprocess: pass the {label} as a module-level "
                             f"function or class it can import, not {value.__qualname__}")
    spec = {"class": f"{model_class.__module__}:{model_class.__qualname__}", "kwargs": model_kwargs,
            "loss": f"{loss.__module__}:{loss.__qualname__}" if loss is not None else None,
            "optimizer": (f"{optimizer.__module__}:{optimizer.__qualname__}" if optimizer is not None else None),
            "steps": steps, "seed": seed, "dtype": dtype, "backend": name}
    with tempfile.TemporaryDirectory() as folder:
        np.savez(os.path.join(folder, "in.npz"), inputs=inputs,
                 **({"targets": targets} if targets is not None else {}),
                 **{f"state/{k}": v for k, v in (state or {}).items()})
        with open(os.path.join(folder, "spec.json"), "w") as handle:
            json.dump(spec, handle)
        env = dict(os.environ, KERAS_BACKEND=framework, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run([sys.executable, "-m", "unidl.testing.parity", folder], env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"parity run of {backend!r} in a subprocess failed:\n{done.stderr[-4000:]}")
        data = np.load(os.path.join(folder, "out.npz"))
        results: dict = {}
        for key in data.files:
            kind, _, tensor = key.partition("/")
            results.setdefault(kind, {})[tensor] = data[key]
        return results


def _resolve(reference: str):
    import importlib

    module, _, qualname = reference.partition(":")
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _subprocess_main(folder):
    """Entry point of the subprocess: the spec names only code the calling test itself passed in."""
    import unidl as ud

    with open(os.path.join(folder, "spec.json")) as handle:
        spec = json.load(handle)
    data = np.load(os.path.join(folder, "in.npz"))
    state = {k[len("state/"):]: data[k] for k in data.files if k.startswith("state/")} or None
    ud.set_dtype(spec["dtype"])
    model_class = _resolve(spec["class"])
    loss = _resolve(spec["loss"]) if spec["loss"] else None
    optimizer = _resolve(spec["optimizer"]) if spec["optimizer"] else None
    results = _in_process_run(spec["backend"], lambda: model_class(**spec["kwargs"]), state, data["inputs"],
                              data["targets"] if "targets" in data.files else None, loss, optimizer,
                              spec["steps"], spec["seed"])
    flat = {f"{kind}/{name}": value for kind, tensors in results.items() for name, value in tensors.items()}
    np.savez(os.path.join(folder, "out.npz"), **flat)


def compare_backends(model, inputs, targets=None, *, model_kwargs=None, loss=None, optimizer=None, steps: int = 0,
                     backends=None, dtype: str | None = None, seed: int = 0, tolerances: dict | None = None
                     ) -> ParityReport:
    """Run ``model`` on every backend and compare it with the first one.

    Args:
        model: a zero-argument builder returning a ``ud.nn.Module``, or a Module class (then
            ``model_kwargs`` are its constructor arguments; required for subprocess backends).
        inputs: NumPy array of the model's input.
        targets: NumPy array of targets (needed for a loss and for training).
        loss: a loss class or zero-argument builder (e.g. ``ud.nn.MSELoss``); without it the gradient
            is that of ``sum(output * r)`` for a fixed random ``r``.
        optimizer: ``params -> optimizer`` (e.g. ``lambda p: ud.optim.SGD(p, lr=0.1)``); with ``steps``
            > 0 the harness trains N steps and compares the loss trajectory and the final weights.
        backends: names to compare (default: every installed backend); ``'keras:torch'`` runs Keras
            on torch in a subprocess.
        dtype: 'float32' or 'float64' (default: unidl's current dtype).
        tolerances: overrides of ``TOLERANCES[dtype]`` by kind ('output', 'gradient', 'loss', 'trained').
    """
    dtype = dtype or config.get_dtype()
    limits = dict(TOLERANCES[dtype], **(tolerances or {}))
    backends = list(backends or config.available_backends())
    if len(backends) < 2:
        raise ValueError(f"parity needs at least two backends, got {backends}")
    model_class = model if isinstance(model, type) else None
    build = (lambda: model_class(**(model_kwargs or {}))) if model_class is not None else model
    inputs = np.asarray(inputs)
    targets = None if targets is None else np.asarray(targets)
    report = ParityReport(dtype, backends)
    previous = config.get_dtype()
    config.set_dtype(dtype)
    try:
        runs, state = {}, None
        for backend in backends:
            if ":" in backend:
                if model_class is None:
                    raise ValueError(f"backend {backend!r} runs in a subprocess: pass the model as a class "
                                     f"with model_kwargs, not a builder function")
                runs[backend] = _run_in_subprocess(backend, model_class, model_kwargs or {}, state, inputs, targets,
                                                   loss, optimizer, steps, seed, dtype)
            else:
                runs[backend] = _in_process_run(backend, build, state, inputs, targets, loss, optimizer, steps, seed)
            if state is None:
                state = runs[backend]["weights"]
    finally:
        config.set_dtype(previous)
    reference = backends[0]
    for other in backends[1:]:
        for kind in ("weights", "output", "gradient", "loss", "trained"):
            for name, expected in runs[reference].get(kind, {}).items():
                found = runs[other].get(kind, {}).get(name)
                if found is None or np.shape(found) != np.shape(expected):
                    report.rows.append(Row(reference, other, kind, name, float("inf"), float("inf"), limits[kind]))
                    continue
                max_abs = float(np.max(np.abs(np.asarray(found, np.float64) - expected))) if np.size(expected) else 0.0
                report.rows.append(Row(reference, other, kind, name, max_abs,
                                       max_relative_difference(found, expected), limits[kind],
                                       _first_step(found, expected, limits[kind]) if kind == "loss" else None))
    return report


def _first_step(found, expected, tolerance) -> int | None:
    """The first step (from 1) of a loss trajectory whose difference, relative to the trajectory's scale
    (as ``max_relative_difference`` measures it), is over ``tolerance``."""
    found, expected = np.asarray(found, np.float64), np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected))) or 1.0
    over = np.nonzero(np.abs(found - expected) / scale > tolerance)[0]
    return int(over[0]) + 1 if over.size else None


def assert_parity(*args, **kwargs) -> ParityReport:
    """``compare_backends`` that raises ``AssertionError`` with the full report when any row fails."""
    report = compare_backends(*args, **kwargs)
    if not report.passed:
        failed = ", ".join(f"{r.other} {r.kind} {r.name} ({r.max_rel:.2e} > {r.tolerance:.0e})" for r in report.failures)
        raise AssertionError(f"backends disagree: {failed}; {'; '.join(report.first_divergences())}\n{report}")
    return report


if __name__ == "__main__":
    _subprocess_main(sys.argv[1])
