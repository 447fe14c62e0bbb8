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
import numbers
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
    #: per pair ``(reference, other)`` whose training parted: the first step whose update of a tensor is over the
    #: "trained" tolerance, as ``(step, tensor, max_rel, tolerance, tensors over)``, the tensor the one that differs
    #: most at that step (from each step's weights, which a run keeps up to ``STEP_RECORD_BYTES``)
    updates: dict = field(default_factory=dict)

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
            pair = (row.reference, row.other)
            if row.kind in ("loss", "trained") and pair in self.updates:
                found[pair] = self._first_update(row)
                continue
            where = {"weights": f"the initial weights ({row.name})", "output": "the forward output",
                     "gradient": f"the gradient of {row.name}, before any training step",
                     "loss": f"training step {row.first_step}" if row.first_step else "the loss trajectory",
                     "trained": f"the trained weights ({row.name}), with every loss within tolerance"}[row.kind]
            found[pair] = (f"{row.other} first diverged from {row.reference} at {where} "
                           f"(max rel {row.max_rel:.2e} > {row.tolerance:.0e})")
        return list(found.values())

    def _first_update(self, row) -> str:
        """The first divergence of a training run: the step whose update first parted and the tensor that
        differs most after it; then where the loss first differed (a step's loss is taken before its update)."""
        step, name, max_rel, tolerance, count = self.updates[(row.reference, row.other)]
        others = f", and {count - 1} more tensor{'s' if count > 2 else ''}" if count > 1 else ""
        loss = next((r for r in self.rows if (r.reference, r.other, r.kind) == (row.reference, row.other, "loss")
                     and not r.passed), None)
        after = (f"; the loss first differed at training step {loss.first_step}" if loss is not None
                 and loss.first_step else "; every loss within tolerance")
        return (f"{row.other} first diverged from {row.reference} at training step {step}, in its update of {name} "
                f"(max rel {max_rel:.2e} > {tolerance:.0e}{others}){after}")

    def __str__(self):
        header = f"{'pair':<26} {'what':<9} {'tensor':<28} {'max abs':>11} {'max rel':>11} {'tol':>9}  ok"
        lines = [f"parity ({self.dtype}) over {', '.join(self.backends)}", header, "-" * len(header)]
        for r in self.rows:
            lines.append(f"{r.reference + ' vs ' + r.other:<26} {r.kind:<9} {r.name:<28} {r.max_abs:11.3e} "
                         f"{r.max_rel:11.3e} {r.tolerance:9.1e}  {'yes' if r.passed else 'NO'}")
        lines.append(f"{len(self.rows) - len(self.failures)} passed, {len(self.failures)} failed")
        lines.extend(self.first_divergences())
        return "\n".join(lines)


def _named_outputs(output, name: str = "output") -> dict:
    """A forward's output as ``{name: tensor}``: one entry for a tensor, ``output[0]``, ``output['key']``, ... for
    the tensors of a tuple, list or dict (nested too), so that each is compared on its own."""
    if isinstance(output, dict):
        items = [(f"{name}[{key!r}]", value) for key, value in output.items()]
    elif isinstance(output, (tuple, list)):
        items = [(f"{name}[{index}]", value) for index, value in enumerate(output)]
    else:
        return {name: output}
    flat = {}
    for item_name, value in items:
        flat.update(_named_outputs(value, item_name))
    return flat


def _in_process_run(backend, build, state, inputs, targets, loss, optimizer, steps, seed):
    """Everything the harness compares, as NumPy, for one backend of this process; ``inputs`` is the tuple of
    the forward's positional inputs."""
    import unidl as ud

    with ud.use_backend(backend):
        ud.manual_seed(seed)
        model = build()
        if state is not None:
            model.load_state_dict(state)
        results = {"weights": model.state_dict()}
        xs = tuple(ud.tensor(value) for value in inputs)
        outputs = {name: ud.to_numpy(value) for name, value in _named_outputs(model(*xs)).items()}
        results["output"] = outputs
        if loss is not None:
            loss_fn = loss()
            y = ud.tensor(targets)
            objective = lambda: loss_fn(model(*xs), y)  # noqa: E731
        else:  # sum(output * r) over every float output, a fixed random r each
            data = np.random.default_rng(seed)
            probes = {name: ud.tensor(data.standard_normal(value.shape)) for name, value in outputs.items()
                      if np.issubdtype(value.dtype, np.floating)}
            if not probes:
                raise TypeError("the model's forward gives no floating-point output to take gradients of "
                                f"(outputs: {', '.join(f'{n} {v.dtype}' for n, v in outputs.items())})")

            def objective():
                found = _named_outputs(model(*xs))
                return sum(ud.ops.sum(found[name] * probe) for name, probe in probes.items())
        names = [n for n, _ in model.named_parameters()]
        _, grads = ud.value_and_grad(objective, model.parameters())()
        # a parameter the objective does not reach has no gradient (None, as torch's .grad), and no row
        results["gradient"] = {n: ud.to_numpy(g) for n, g in zip(names, grads) if g is not None}
        if steps:
            step = ud.train_step(model, loss(), optimizer(model.parameters()))
            recorded = _records_steps(results["weights"], steps)
            trajectory, updates = [], {}
            for number in range(1, steps + 1):
                trajectory.append(float(step(inputs[0], targets, *xs[1:])))
                if recorded and number < steps:  # (the last step's are the trained weights)
                    updates.update({f"{number}/{name}": value for name, value in model.state_dict().items()})
            results["loss"] = {"trajectory": np.array(trajectory)}
            results["trained"] = model.state_dict()
            if recorded:
                results["steps"] = updates
        return results


STEP_RECORD_BYTES = 256 * 2**20
"""The most bytes of weights a run keeps for naming the step and tensor where training first diverged: each
step's weights are kept while ``steps`` copies of them fit in this, else only the trained weights (the report then
names the first step whose loss differs, and the trained tensors that differ)."""


def _records_steps(weights, steps) -> bool:
    """Whether a run keeps each training step's weights (``STEP_RECORD_BYTES``)."""
    return steps * sum(np.asarray(value).nbytes for value in weights.values()) <= STEP_RECORD_BYTES


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
        np.savez(os.path.join(folder, "in.npz"), **{f"inputs/{index}": value for index, value in enumerate(inputs)},
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
    inputs = tuple(data[f"inputs/{index}"] for index in range(sum(k.startswith("inputs/") for k in data.files)))
    results = _in_process_run(spec["backend"], lambda: model_class(**spec["kwargs"]), state, inputs,
                              data["targets"] if "targets" in data.files else None, loss, optimizer,
                              spec["steps"], spec["seed"])
    flat = {f"{kind}/{name}": value for kind, tensors in results.items() for name, value in tensors.items()}
    np.savez(os.path.join(folder, "out.npz"), **flat)


KINDS = ("weights", "output", "gradient", "loss", "trained")
"""What the harness compares, in the order it runs them: the keys of ``TOLERANCES[dtype]`` and of ``tolerances``."""


def _limits(dtype, tolerances) -> dict:
    """``TOLERANCES[dtype]`` with the caller's overrides, each checked: a typo or a negative or NaN bound would
    otherwise leave the default in force, or fail every row, without saying why."""
    if dtype not in TOLERANCES:
        raise ValueError(f"compare_backends dtype must be one of {', '.join(map(repr, TOLERANCES))}, got {dtype!r}")
    tolerances = dict(tolerances or {})
    for kind, value in tolerances.items():
        if kind not in KINDS:
            raise ValueError(f"compare_backends tolerances has no kind {kind!r}; the kinds are "
                             f"{', '.join(map(repr, KINDS))}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:  # (NaN is not >= 0)
            raise ValueError(f"compare_backends tolerances[{kind!r}] must be a number >= 0 (the largest relative "
                             f"difference accepted), got {value!r}")
    return dict(TOLERANCES[dtype], **{kind: float(value) for kind, value in tolerances.items()})


def _checked_backends(backends) -> list:
    """The names to compare, each known and none twice (an alias of another counts as the same backend)."""
    from unidl.backends import canonical_name

    backends = list(backends or config.available_backends())
    if len(backends) < 2:
        raise ValueError(f"parity needs at least two backends, got {backends}")
    seen = {}
    for name in backends:
        backend, _, framework = str(name).partition(":")
        key = (canonical_name(backend), framework.strip().lower())  # UnknownBackendError before any run
        if key in seen:
            raise ValueError(f"compare_backends got {seen[key]!r} and {name!r}, the same backend twice; "
                             f"name each backend once")
        seen[key] = name
    return backends


def _checked_inputs(inputs) -> tuple:
    """The forward's positional inputs as a tuple of arrays: a tuple of arrays is ``model(*inputs)``."""
    if isinstance(inputs, list) and inputs and all(isinstance(value, np.ndarray) for value in inputs):
        raise ValueError("compare_backends got a list of arrays as inputs: pass a tuple of arrays for a forward of "
                         "several inputs (model(*inputs)), or one array (np.stack the list) for one input")
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not inputs:
        raise ValueError("compare_backends needs the model's input: an array, or a tuple of arrays for a "
                         "forward of several inputs")
    return tuple(np.asarray(value) for value in inputs)


def _check_training(steps, targets, loss, optimizer) -> None:
    """``steps`` trains with ``targets``, ``loss`` and ``optimizer``; a missing one would skip the training (or the
    loss) that the caller asked for, and the report would pass without it."""
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"compare_backends steps must be an integer >= 0 (0: no training), got {steps!r}")
    if loss is not None and targets is None:
        raise ValueError("compare_backends got a loss but no targets: pass targets to compare the loss's "
                         "gradients, or no loss for those of sum(output * r)")
    missing = [name for name, value in (("targets", targets), ("loss", loss), ("optimizer", optimizer))
               if value is None]
    if steps and missing:
        raise ValueError(f"compare_backends steps={steps} trains the model, which needs targets, loss and "
                         f"optimizer; missing: {', '.join(missing)}")


def compare_backends(model, inputs, targets=None, *, model_kwargs=None, loss=None, optimizer=None, steps: int = 0,
                     backends=None, dtype: str | None = None, seed: int = 0, tolerances: dict | None = None
                     ) -> ParityReport:
    """Run ``model`` on every backend and compare it with the first one.

    Args:
        model: a zero-argument builder returning a ``ud.nn.Module``, or a Module class (then
            ``model_kwargs`` are its constructor arguments; required for subprocess backends).
        inputs: NumPy array of the model's input, or a tuple of arrays for a forward of several inputs
            (``model(*inputs)``; training calls ``train_step``'s ``step(inputs[0], targets, *inputs[1:])``).
        targets: NumPy array of targets (needed for a loss and for training).
        model_kwargs: the constructor arguments of ``model`` when it is a class.
        loss: a loss class or zero-argument builder (e.g. ``ud.nn.MSELoss``); without it the gradient
            is that of ``sum(output * r)`` for a fixed random ``r``.
        optimizer: ``params -> optimizer`` (e.g. ``lambda p: ud.optim.SGD(p, lr=0.1)``); with ``steps``
            > 0 the harness trains N steps and compares the loss trajectory and the final weights.
        backends: names to compare (default: every installed backend); ``'keras:torch'`` runs Keras
            on torch in a subprocess.
        dtype: 'float32' or 'float64' (default: unidl's current dtype).
        seed: the seed of the first backend's initial weights (the others load them) and of ``r``.
        tolerances: overrides of ``TOLERANCES[dtype]`` by kind (one of ``KINDS``), each a number >= 0.

    The model runs in the mode it is built in (training by default: BatchNorm's batch statistics); a Dropout's
    masks come from each framework's own generator, so build a model with Dropout in eval mode to compare it.
    A gradient that is zero to its tolerance at the scale of the largest gradient (that of a bias before a
    BatchNorm: 0 but for rounding) is measured against that scale rather than its own; outputs, losses and
    weights at their own (a small output of the wrong sign is a failure).
    A forward's tuple, list or dict of outputs is compared output by output (``output[0]``, ``output['key']``).
    A parameter the objective does not reach has no gradient (None, as torch's ``.grad``) and no row; one
    backend giving a gradient where the other gives none is a failed row. An unknown kind, dtype or backend, a
    negative or NaN tolerance, a backend named twice, and ``steps`` without targets, loss or optimizer are a
    ``ValueError`` (``UnknownBackendError`` for a backend) before any run. An error in one backend's run says
    which backend it was.
    """
    dtype = dtype or config.get_dtype()
    limits = _limits(dtype, tolerances)
    backends = _checked_backends(backends)
    inputs = _checked_inputs(inputs)
    _check_training(steps, targets, loss, optimizer)
    model_class = model if isinstance(model, type) else None
    build = (lambda: model_class(**(model_kwargs or {}))) if model_class is not None else model
    targets = None if targets is None else np.asarray(targets)
    report = ParityReport(dtype, backends)
    with config.use_dtype(dtype):  # (scoped: a caller's use_dtype block would win over set_dtype)
        runs, state = {}, None
        for backend in backends:
            if ":" in backend and model_class is None:
                raise ValueError(f"backend {backend!r} runs in a subprocess: pass the model as a class "
                                 f"with model_kwargs, not a builder function")
            try:
                if ":" in backend:
                    runs[backend] = _run_in_subprocess(backend, model_class, model_kwargs or {}, state, inputs,
                                                       targets, loss, optimizer, steps, seed, dtype)
                else:
                    runs[backend] = _in_process_run(backend, build, state, inputs, targets, loss, optimizer, steps,
                                                    seed)
            except Exception as error:
                if hasattr(error, "add_note"):  # (Python 3.11+)
                    error.add_note(f"(in the parity run of backend {backend!r}, compared with {backends[0]!r})")
                raise
            if state is None:
                state = runs[backend]["weights"]
    reference = backends[0]
    for other in backends[1:]:
        for kind in KINDS:
            expected_tensors, found_tensors = runs[reference].get(kind, {}), runs[other].get(kind, {})
            kind_scale = max((_magnitude(value) for value in expected_tensors.values()), default=0.0) \
                if kind == "gradient" else 0.0  # (outputs and losses on their own scale: a small one is no noise)
            for name in [*expected_tensors, *(n for n in found_tensors if n not in expected_tensors)]:
                expected, found = expected_tensors.get(name), found_tensors.get(name)
                if expected is None or found is None or np.shape(found) != np.shape(expected):
                    report.rows.append(Row(reference, other, kind, name, float("inf"), float("inf"), limits[kind]))
                    continue
                max_abs = float(np.max(np.abs(np.asarray(found, np.float64) - expected))) if np.size(expected) else 0.0
                report.rows.append(Row(reference, other, kind, name, max_abs,
                                       _relative_difference(found, expected, max_abs, kind_scale, limits[kind]),
                                       limits[kind],
                                       _first_step(found, expected, limits[kind]) if kind == "loss" else None))
        first = _first_update(runs[reference].get("steps", {}), runs[other].get("steps", {}),
                              runs[reference].get("trained", {}), runs[other].get("trained", {}), steps,
                              limits["trained"])
        if first is not None:
            report.updates[(reference, other)] = first
    return report


def _first_update(expected_steps, found_steps, expected_trained, found_trained, steps, tolerance):
    """``(step, tensor, max_rel, tolerance, tensors over)`` of the first training step after which a weight of the
    two runs differs by more than ``tolerance`` (the tensor that differs most then), from each step's weights and the
    trained ones (the last step's); None if both runs did not keep each step's weights, or none differs."""
    if not steps or (steps > 1 and not (expected_steps and found_steps)):
        return None
    for step in range(1, steps + 1):
        if step < steps:
            prefix = f"{step}/"
            expected = {k[len(prefix):]: v for k, v in expected_steps.items() if k.startswith(prefix)}
            found = {k[len(prefix):]: v for k, v in found_steps.items() if k.startswith(prefix)}
        else:
            expected, found = expected_trained, found_trained
        over = []
        for name, value in expected.items():
            other = found.get(name)
            if other is None or np.shape(other) != np.shape(value):
                over.append((float("inf"), name))
                continue
            difference = max_relative_difference(other, value)
            if not difference <= tolerance:  # (NaN too)
                over.append((difference, name))
        if over:
            max_rel, name = max(over, key=lambda item: np.nan_to_num(item[0], nan=np.inf))  # (the first of equals)
            return step, name, max_rel, tolerance, len(over)
    return None


def _magnitude(values) -> float:
    """The largest finite |value| of ``values`` (0 for none)."""
    values = np.asarray(values, np.float64)
    return float(np.max(np.abs(values), initial=0.0, where=np.isfinite(values)))


def _relative_difference(found, expected, max_abs, kind_scale, tolerance) -> float:
    """``max_relative_difference``, but a gradient that is zero to ``tolerance`` at the scale of the largest
    gradient (``kind_scale``; 0 for the other kinds) is measured against that scale: the gradient of a bias that a
    BatchNorm follows is 0 but for rounding, which comes from terms of the other gradients' size (against its own
    max it gave ~1, a failure)."""
    own_scale = _magnitude(expected) if np.all(np.isfinite(np.asarray(expected, np.float64))) else float("nan")
    if 0 < kind_scale and own_scale <= tolerance * kind_scale:
        return max_abs / kind_scale
    return max_relative_difference(found, expected)


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
