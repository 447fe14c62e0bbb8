"""unidl's seed: one NumPy generator that draws every initial weight, so a seed means the same weights everywhere.

``manual_seed`` also seeds the frameworks of the backends loaded now or later,
for the randomness that happens inside them (dropout masks). The weight generator is per
thread, as ``ud.use_backend`` is: a thread's first draw after ``manual_seed(s)`` starts from
``s``, so models built in several threads get the weights one thread would get.
"""

from __future__ import annotations

import threading

import numpy as np

from unidl.errors import StateDictError
from unidl.scoped_flags import ScopedFlag

#: seeds every framework accepts (Keras and ``np.random.seed`` stop at 2**32 - 1)
MAX_SEED = 2**32 - 1

_seed: int | None = None
_seed_count = 0  # manual_seed calls so far: a thread whose generator is older starts again from _seed
_threads = threading.local()
_shape_only = ScopedFlag("unidl_shape_only_generator")


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an int, or ValueError unless it is an integer with 0 <= seed <= ``MAX_SEED``."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} must be an integer from 0 to 2**32 - 1 (the range every framework accepts), "
                         f"got {seed!r}")
    return int(seed)


def manual_seed(seed: int) -> None:
    """Seed unidl's NumPy generator and every loaded backend's own generator (0 <= seed < 2**32).

    The keras backend seeds through ``keras.utils.set_random_seed`` (Python's ``random``, NumPy's global generator,
    Keras's), which also seeds TensorFlow's global generator where TensorFlow is imported; on Keras over JAX or
    torch, where TensorFlow is not imported yet, it is left unimported (importing it costs seconds and hundreds of
    MB, for a generator no unidl op draws from): seed a ``tf.data`` pipeline there with its own ``seed=``."""
    global _seed, _seed_count
    seed = check_seed(seed)  # before any generator changes
    _seed, _seed_count = seed, _seed_count + 1
    _thread_generator()  # this thread's generator starts from the seed now
    from unidl import backends

    for backend_object in backends.loaded_backends().values():
        backend_object.seed(_seed)


def initial_seed() -> int | None:
    """The seed last given to ``manual_seed`` (None if never called); backends seed themselves with it on load."""
    return _seed


class _ShapeOnlyGenerator:
    """Stands in for the generator while a model is built only to learn its tensors' shapes: every draw
    is a read-only zero-stride array of the asked shape, which takes no memory whatever its size."""

    def _draw(self, size=None):
        return np.broadcast_to(np.float64(0.0), () if size is None else size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._draw(size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._draw(size)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._draw(size)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return np.broadcast_to(np.int64(0), () if size is None else size)


def shape_only():
    """Inside the block (this context only), ``generator()`` draws zero-stride arrays and leaves the real
    generator untouched: how ``unidl.load`` learns a model's shapes without allocating its weights."""
    return _shape_only.raised()


def _thread_generator() -> np.random.Generator:
    """This thread's weight generator, started again from the last ``manual_seed`` if it predates it."""
    if getattr(_threads, "seed_count", None) != _seed_count:
        _threads.generator = np.random.default_rng(_seed)
        _threads.seed_count = _seed_count
    return _threads.generator


def generator() -> np.random.Generator:
    """The generator that draws initial weights (this thread's)."""
    if _shape_only:
        return _ShapeOnlyGenerator()
    return _thread_generator()


def get_rng_state() -> dict:
    """unidl's generator state and that of every loaded backend's generators, as plain data (for checkpoints)."""
    from unidl import backends

    return {"seed": _seed, "bit_generator": _thread_generator().bit_generator.state,
            "backends": {name: backend.get_rng_state() for name, backend in backends.loaded_backends().items()}}


def _same_structure(saved, current, where: str) -> None:
    """Raise StateDictError unless ``saved`` has the shape of ``current`` (keys, list lengths, leaf types)."""
    if isinstance(current, dict):
        if not isinstance(saved, dict) or set(saved) != set(current):
            raise StateDictError(f"{where}: expected keys {sorted(current)}, found "
                                 f"{sorted(saved) if isinstance(saved, dict) else type(saved).__name__}")
        for key in current:
            _same_structure(saved[key], current[key], f"{where}.{key}")
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, list):
            raise StateDictError(f"{where}: expected a list, found {type(saved).__name__}")
        if current and len(saved) != len(current) and not isinstance(current[0], (list, tuple)):
            raise StateDictError(f"{where}: expected {len(current)} entries, found {len(saved)}")
        if current:
            for index, item in enumerate(saved):
                _same_structure(item, current[min(index, len(current) - 1)], f"{where}[{index}]")
        elif not all(isinstance(item, list) for item in saved):  # e.g. per-GPU states where this machine has none
            raise StateDictError(f"{where}: expected a list of lists")
    elif isinstance(current, bool) or isinstance(saved, bool):
        if type(saved) is not type(current):
            raise StateDictError(f"{where}: expected {type(current).__name__}, found {saved!r}")
    elif isinstance(current, int):
        if not isinstance(saved, int):
            raise StateDictError(f"{where}: expected an integer, found {saved!r}")
    elif isinstance(current, str):
        if saved != current:
            raise StateDictError(f"{where}: expected {current!r}, found {saved!r}")


def check_rng_state(state) -> None:
    """Raise ``StateDictError`` unless ``state`` (from ``get_rng_state``) can be restored; changes nothing."""
    if not isinstance(state, dict) or set(state) - {"seed", "bit_generator", "backends"} or "bit_generator" not in state:
        raise StateDictError(f"RNG state must be a dict with keys 'seed', 'bit_generator' and 'backends', got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
    if state.get("seed") is not None:
        try:
            check_seed(state["seed"], "RNG state seed")
        except ValueError as error:
            raise StateDictError(str(error)) from None
    _same_structure(state["bit_generator"], _thread_generator().bit_generator.state, "RNG state bit_generator")
    try:  # a scratch generator of the same kind takes the state first: the real one is not touched
        type(_thread_generator().bit_generator)().state = state["bit_generator"]
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise StateDictError(f"RNG state bit_generator cannot be restored: {error}") from None
    saved_backends = state.get("backends") or {}
    if not isinstance(saved_backends, dict):
        raise StateDictError(f"RNG state backends must be a dict, got {type(saved_backends).__name__}")
    from unidl import backends

    for name, backend in backends.loaded_backends().items():
        if name in saved_backends:
            _same_structure(saved_backends[name], backend.get_rng_state(), f"RNG state of backend {name!r}")


def set_rng_state(state: dict) -> None:
    """Restore a state returned by ``get_rng_state`` (backend generators: those loaded now and saved then).

    The state is checked first (``check_rng_state``); if a framework still refuses it, every generator
    is put back as it was and ``StateDictError`` is raised, so a failed restore changes nothing.
    """
    global _seed
    from unidl import backends

    check_rng_state(state)
    previous = get_rng_state()
    try:
        _seed = state.get("seed")
        _thread_generator().bit_generator.state = state["bit_generator"]
        for name, backend_state in (state.get("backends") or {}).items():
            backend = backends.loaded_backends().get(name)
            if backend is not None:
                backend.set_rng_state(backend_state)
    except Exception as error:
        _seed = previous["seed"]
        _thread_generator().bit_generator.state = previous["bit_generator"]
        for name, backend_state in previous["backends"].items():
            backends.loaded_backends()[name].set_rng_state(backend_state)
        raise StateDictError(f"RNG state could not be restored ({type(error).__name__}: {error}); "
                             f"every generator was left as it was") from None
