"""The tutorial's dynamic net on every backend: per-step inputs become graph inputs, eager=True runs Python
every step, and Python randomness frozen by a trace is reported (docs/dynamic-forward.md)."""

import random
import warnings

import numpy as np
import pytest

import unidl as ud
from unidl.errors import RetraceWarning
from unidl.testing import max_relative_difference

R = np.random.default_rng(8)
X, Y = R.standard_normal((16, 4)).astype(np.float32), R.standard_normal((16, 1)).astype(np.float32)
DEPTHS = [0, 2, 1, 3, 2, 0, 1, 3]


class DynamicNet(ud.nn.Module):
    """Redraws its depth every step (PyTorch's "dynamic graph" example): the middle layer is reused 0-3 times."""

    def __init__(self):
        super().__init__()
        self.entry = ud.nn.Linear(4, 8)
        self.middle = ud.nn.Linear(8, 8)
        self.exit = ud.nn.Linear(8, 1)

    def forward(self, x, depth=None):
        h = ud.ops.relu(self.entry(x))
        for _ in range(random.randint(0, 3) if depth is None else depth):
            h = ud.ops.relu(self.middle(h))
        return self.exit(h)


def _trajectory(backend, mode):
    with ud.use_backend(backend):
        ud.manual_seed(0)
        model = DynamicNet()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05),
                             eager=(mode == "eager"))
        losses = []
        random.seed(1)
        for depth in DEPTHS:
            if mode == "input":
                losses.append(float(ud.to_numpy(step(X, Y, depth))))
            else:
                losses.append(float(ud.to_numpy(step(X, Y))))
        return np.array(losses), model.state_dict(), step.trace_count


@pytest.mark.parametrize("mode", ["input", "eager"])
def test_dynamic_net_trains_the_same_on_every_backend(mode):
    runs = {b: _trajectory(b, mode) for b in ud.available_backends()}
    reference, weights, _ = runs["torch"]
    for backend, (losses, trained, traces) in runs.items():
        assert max_relative_difference(losses, reference) < 1e-5, backend
        assert all(max_relative_difference(trained[k], weights[k]) < 1e-5 for k in weights), backend
        if mode == "eager":
            assert traces in (None, 0), backend  # nothing compiled
    if mode == "input" and "tensorflow" in runs:
        assert runs["tensorflow"][2] == 1  # the depth is a graph input: one graph for every depth


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
def test_python_randomness_in_a_traced_forward_warns(name):
    with ud.use_backend(name):
        model = DynamicNet()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05))
        with pytest.warns(RetraceWarning, match=r"drew from Python's random while being traced.*eager=True"):
            step(X, Y)


def test_no_warning_where_python_runs_every_step():
    for name, eager in (("torch", False), ("tensorflow", True)):
        with ud.use_backend(name), warnings.catch_warnings():
            warnings.simplefilter("error", RetraceWarning)
            model = DynamicNet()
            ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05), eager=eager)(X, Y)


def test_fit_eager_runs_python_every_step(backend):
    model = DynamicNet()
    calls = []
    original = model.forward

    def counted(x, depth=None):
        calls.append(1)
        return original(x, 1)

    object.__setattr__(model, "forward", counted)
    ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.05), epochs=2,
           batch_size=4, verbose=0, eager=True)
    assert len(calls) >= 8  # every one of the 2 x 4 steps ran the Python forward
