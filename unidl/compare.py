"""The side-by-side run: the two-layer net trained from one seed on every installed backend."""

from __future__ import annotations

import numpy as np

from unidl import backends, config
from unidl.models import TwoLayerNet
from unidl.nn import MSELoss
from unidl.optim import SGD
from unidl.random import manual_seed
from unidl.training import train_step


def display_name(backend) -> str:
    """A backend's name for people: with the framework it runs on when ``versions()`` names one as
    ``"<name> backend <framework>"`` (``keras[tensorflow]``, ``keras[torch]``), else its name."""
    prefix = f"{backend.name} backend "
    hosts = [key[len(prefix):] for key in backend.versions() if key.startswith(prefix)]
    return f"{backend.name}[{hosts[0]}]" if hosts else backend.name


def two_layer_losses(backend: str, steps: int = 200, seed: int = 0, sizes=(64, 1000, 100, 10)) -> list[float]:
    """Loss after each of ``steps`` SGD-with-momentum steps of the lecture's net on ``backend``."""
    n, d_in, hidden, d_out = sizes
    data = np.random.default_rng(seed)
    x = data.standard_normal((n, d_in)).astype(np.float32)
    y = data.standard_normal((n, d_out)).astype(np.float32)
    with config.use_backend(backend):
        manual_seed(seed)
        model = TwoLayerNet(d_in, hidden, d_out)
        step = train_step(model, MSELoss(), SGD(model.parameters(), lr=1e-2, momentum=0.9))
        return [float(step(x, y)) for _ in range(steps)]


def print_side_by_side(steps: int = 200, every: int = 20) -> dict[str, list[float]]:
    """Train on each installed backend and print the loss trajectories in columns."""
    names = config.available_backends()
    losses = {name: two_layer_losses(name, steps) for name in names}
    headings = [display_name(backends.load(name)) for name in names]
    width = max([14] + [len(heading) + 2 for heading in headings])
    print("two-layer net, N=64 D_in=1000 H=100 D_out=10, SGD lr=1e-2 momentum=0.9, seed 0")
    print("step  " + "".join(f"{heading:>{width}}" for heading in headings))
    for t in sorted(set(range(0, steps, every)) | {steps - 1}):  # the last step once, whatever ``every``
        print(f"{t:4d}  " + "".join(f"{losses[name][t]:{width}.6f}" for name in names))
    return losses
