"""unidl's seed: one NumPy generator that draws every initial weight, so a seed means the same weights everywhere.

``manual_seed`` also seeds the frameworks of the backends loaded now or later,
for the randomness that happens inside them (dropout masks).
"""

from __future__ import annotations

import numpy as np

_seed: int | None = None
_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed unidl's NumPy generator and every loaded backend's own generator."""
    global _seed, _generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _seed = int(seed)
    _generator = np.random.default_rng(_seed)
    from unidl import backends

    for backend_object in backends.loaded_backends().values():
        backend_object.seed(_seed)


def initial_seed() -> int | None:
    """The seed last given to ``manual_seed`` (None if never called); backends seed themselves with it on load."""
    return _seed


def generator() -> np.random.Generator:
    """The generator that draws initial weights."""
    return _generator


def get_rng_state() -> dict:
    """unidl's generator state and that of every loaded backend's generators, as plain data (for checkpoints)."""
    from unidl import backends

    return {"seed": _seed, "bit_generator": _generator.bit_generator.state,
            "backends": {name: backend.get_rng_state() for name, backend in backends.loaded_backends().items()}}


def set_rng_state(state: dict) -> None:
    """Restore a state returned by ``get_rng_state`` (backend generators: those loaded now and saved then)."""
    global _seed
    from unidl import backends

    _seed = state["seed"]
    _generator.bit_generator.state = state["bit_generator"]
    for name, backend_state in (state.get("backends") or {}).items():
        backend = backends.loaded_backends().get(name)
        if backend is not None:
            backend.set_rng_state(backend_state)
