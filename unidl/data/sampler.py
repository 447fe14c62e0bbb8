"""The order in which a loader visits a dataset: fixed by (seed, epoch) alone, so that an epoch can be
replayed or resumed mid-way in a new process.

Shuffled order of epoch ``e`` with seed ``s`` is ``np.random.default_rng([s, e]).permutation(n)``.
"""

from __future__ import annotations

import numpy as np

from unidl import arguments
from unidl import random as unidl_random


def draw_seed() -> int:
    """A seed drawn from unidl's generator: reproducible after ``unidl.manual_seed``."""
    return int(unidl_random.generator().integers(0, 2**31 - 1))


class Sampler:
    """The order of indices ``0 .. length-1`` in each epoch: ``range(length)``, or shuffled by (seed, epoch).

    ``seed=None`` with ``shuffle=True`` draws a seed once, here, from unidl's generator.
    """

    def __init__(self, length: int, shuffle: bool = False, seed: int | None = None):
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 0:
            raise ValueError(f"Sampler length must be a non-negative integer (the dataset's length), got {length!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
        self.length = int(length)
        self.shuffle = arguments.flag("Sampler", "shuffle", shuffle)
        self.seed = int(seed) if seed is not None else (draw_seed() if self.shuffle else None)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        """The next epoch's indices, in visiting order: epoch 0 at the first iteration, 1 at the second, ... (a
        shuffled sampler reshuffles each time, as torch's RandomSampler; the same order each time before).
        ``order(epoch)`` gives any epoch's."""
        epoch = self.__dict__.get("_iterations", 0)
        self._iterations = epoch + 1
        return iter(self.order(epoch).tolist())

    def order(self, epoch: int) -> np.ndarray:
        """The indices of epoch ``epoch``, in visiting order."""
        if not self.shuffle:
            return np.arange(self.length)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.length)


class BatchSampler:
    """Cuts a sampler's order into batches of ``batch_size`` indices; ``drop_last`` drops a short last batch."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False):
        if not isinstance(sampler, Sampler):
            raise TypeError(f"BatchSampler cuts a unidl Sampler's order per epoch, got {type(sampler).__name__}; "
                            f"wrap it: BatchSampler(Sampler(length, shuffle, seed), batch_size)")
        kind = type(sampler)
        if kind.__iter__ is not Sampler.__iter__ and kind.order is Sampler.order:  # (it was never called)
            raise TypeError(f"BatchSampler cuts a sampler's order(epoch), which {kind.__name__} leaves as Sampler's "
                            f"while overriding __iter__: override order(epoch) instead, the indices of one epoch")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r} "
                             f"of type {type(batch_size).__name__}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}: a batch needs at "
                             f"least one sample")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        if not isinstance(drop_last, (bool, np.bool_)):  # ("False" was true)
            raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
        self.drop_last = bool(drop_last)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        """The next epoch's batches, each a list of indices: epoch 0 at the first iteration, 1 at the second, ...
        (``batches(epoch)`` for any epoch's)."""
        epoch = self.__dict__.get("_iterations", 0)
        self._iterations = epoch + 1
        return iter([batch.tolist() for batch in self.batches(epoch)])

    def batches(self, epoch: int, start: int = 0) -> list[np.ndarray]:
        """The index arrays of epoch ``epoch``, skipping the first ``start`` batches."""
        order = self.sampler.order(epoch)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(start, len(self))]


def rank_share(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of one global batch of a data-parallel job: a contiguous slice, the shares of
    the ``world_size`` ranks differing in size by one sample at most and together the whole batch."""
    count = len(indices)
    return indices[count * rank // world_size:count * (rank + 1) // world_size]
