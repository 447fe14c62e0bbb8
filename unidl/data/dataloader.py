"""``DataLoader``: batches of a dataset as the current backend's tensors, in a resumable, seeded order.

Batches are cut in NumPy and converted with the backend's ``tensor()`` at the last moment, on the
caller's backend, device and dtype (``contextvars`` scope), optionally ahead of time on worker threads.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from unidl import config
from unidl.data.dataset import TensorDataset
from unidl.data.epoch import Epoch
from unidl.data.sampler import BatchSampler, Sampler
from unidl.errors import StateDictError
from unidl.tensors import to_numpy

_STATE_KEYS = ("epoch", "position", "seed", "shuffle", "length", "batch_size", "drop_last")


def default_collate(samples: list) -> tuple[np.ndarray, ...]:
    """Stack a list of samples field by field: ``[(x0, y0), (x1, y1)] -> (stack([x0, x1]), stack([y0, y1]))``."""
    if isinstance(samples[0], (tuple, list)):
        return tuple(np.stack([to_numpy(sample[field]) for sample in samples])
                     for field in range(len(samples[0])))
    return (np.stack([to_numpy(sample) for sample in samples]),)


def _check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DataLoader:
    """Iterates over ``dataset`` in batches of ``batch_size``, each a tuple of backend tensors.

    Every ``iter(loader)`` is one epoch; epoch ``e`` visits the samples in the order fixed by
    ``(seed, e)`` (see ``unidl.data.sampler``), so ``state_dict()`` (epoch, batches already yielded,
    seed) is enough to resume mid-epoch in a new process with ``load_state_dict``.

    Args:
        dataset: a ``TensorDataset`` (batches cut with one slice per array) or any ``Dataset``
            (samples fetched one by one and joined by ``collate_fn``).
        batch_size: samples per batch, a positive integer.
        shuffle: visit the samples in a new random order each epoch.
        seed: seed of the shuffled orders; ``None`` draws one from unidl's generator (see ``manual_seed``).
        drop_last: drop the last batch of an epoch if it is smaller than ``batch_size``.
        num_workers: threads preparing batches ahead of the training loop (0: prepare on demand).
        prefetch: batches in flight per worker when ``num_workers > 0``.
        collate_fn: joins a list of samples into a tuple of arrays (default: ``default_collate``).

    Example::

        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, seed=0)
        for epoch in range(10):
            for xb, yb in loader:
                loss = train_step(xb, yb)
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, seed: int | None = None,
                 drop_last: bool = False, num_workers: int = 0, prefetch: int = 2, collate_fn=None):
        length = len(dataset)
        if length == 0:
            raise ValueError("DataLoader: the dataset is empty (length 0); there is nothing to load")
        self.dataset = dataset
        self.batch_sampler = BatchSampler(Sampler(length, shuffle, seed), batch_size, drop_last)
        if len(self.batch_sampler) == 0:
            raise ValueError(f"DataLoader: drop_last=True with batch_size={batch_size} larger than the "
                             f"dataset ({length} samples) yields no batch at all")
        self.num_workers = _check_count("num_workers", num_workers, 0)
        self.prefetch = _check_count("prefetch", prefetch, 1)
        self.collate_fn = collate_fn or default_collate
        self._epoch = 0          # epoch of the iteration in progress, or of the next one
        self._position = 0       # batches of that epoch already yielded
        self._started = False    # whether an iteration of self._epoch has begun
        self._active = None      # token of the newest iterator; older ones stop updating the position

    # ---- sizes and settings ----------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.batch_sampler.batch_size

    @property
    def drop_last(self) -> bool:
        return self.batch_sampler.drop_last

    @property
    def shuffle(self) -> bool:
        return self.batch_sampler.sampler.shuffle

    @property
    def seed(self) -> int | None:
        return self.batch_sampler.sampler.seed

    @property
    def epoch(self) -> int:
        """The epoch being iterated, or the one the next ``iter(loader)`` starts."""
        return self._epoch

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` start epoch ``epoch`` from its first batch."""
        self._epoch = _check_count("epoch", epoch, 0)
        self._position = 0
        self._started = False

    # ---- resuming --------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the next batch comes from, as plain JSON-serialisable data."""
        epoch, position = self._epoch, self._position
        if self._started and position >= len(self):
            epoch, position = epoch + 1, 0
        return {"epoch": epoch, "position": position, "seed": self.seed, "shuffle": self.shuffle,
                "length": len(self.dataset), "batch_size": self.batch_size, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` was taken: the rest of its epoch, then the following epochs."""
        missing = [key for key in _STATE_KEYS if key not in state]
        unexpected = [key for key in state if key not in _STATE_KEYS]
        if missing or unexpected:
            raise StateDictError(f"DataLoader.load_state_dict: missing keys {missing}, unexpected keys "
                                 f"{unexpected}; expected exactly {list(_STATE_KEYS)}")
        mine = self.state_dict()
        for key in ("shuffle", "length", "batch_size", "drop_last"):
            if state[key] != mine[key]:
                raise StateDictError(f"DataLoader.load_state_dict: the state has {key}={state[key]!r} but "
                                     f"this loader has {key}={mine[key]!r}; resuming needs the same dataset "
                                     f"length, batch_size, shuffle and drop_last")
        if not 0 <= state["position"] <= len(self):
            raise StateDictError(f"DataLoader.load_state_dict: position {state['position']} is outside "
                                 f"0..{len(self)} (batches per epoch)")
        self.batch_sampler.sampler.seed = state["seed"]
        self._epoch = _check_count("epoch", state["epoch"], 0)
        self._position = int(state["position"])
        self._started = False

    # ---- iterating -------------------------------------------------------
    def __iter__(self) -> Epoch:
        if self._started:
            self._epoch, self._position = self._epoch + 1, 0
        self._started = True
        token = self._active = object()
        # The caller's backend, device and dtype are context variables: capture them now and
        # re-enter them wherever a batch is converted, worker threads included.
        backend = config.backend()
        context = contextvars.copy_context()

        def convert(indices):
            return context.copy().run(self._to_tensors, backend, indices)

        def source(batches):
            if self.num_workers:
                return self._prefetched(batches, convert)
            return (convert(indices) for indices in batches)

        return Epoch(self, token, self.batch_sampler.batches(self._epoch, self._position), source)

    def _prefetched(self, batches, convert):
        """Yield ``convert(indices)`` for each batch in order, with up to ``prefetch`` per worker in flight."""
        executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="unidl-data")
        remaining = iter(batches)
        in_flight = self.num_workers * self.prefetch
        pending = collections.deque(executor.submit(convert, indices)
                                    for indices in itertools.islice(remaining, in_flight))
        try:
            while pending:
                batch = pending.popleft().result()
                pending.extend(executor.submit(convert, indices) for indices in itertools.islice(remaining, 1))
                yield batch
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    def _to_tensors(self, backend, indices: np.ndarray) -> tuple:
        if isinstance(self.dataset, TensorDataset):  # fresh arrays (fancy indexing copies): no second copy
            return tuple(backend.adopt(array) for array in self.dataset.batch(indices))
        arrays = self.collate_fn([self.dataset[int(i)] for i in indices])
        if not isinstance(arrays, (tuple, list)):
            arrays = (arrays,)
        return tuple(backend.tensor(array) for array in arrays)
