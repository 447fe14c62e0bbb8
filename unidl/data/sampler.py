"""The order in which a loader visits a dataset: fixed by (seed, epoch) alone, so that an epoch can be
replayed or resumed mid-way in a new process.

Shuffled order of epoch ``e`` with seed ``s`` is ``np.random.default_rng([s, e]).permutation(n)``. torch's samplers
(``SequentialSampler``, ``RandomSampler``, ``SubsetRandomSampler``, ``WeightedRandomSampler``) are here under their
names and arguments, with ``seed`` for torch's ``generator``, their orders drawn from ``(seed, epoch)`` alike.
"""

from __future__ import annotations

import copy
import hashlib

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

    def settings(self) -> dict:
        """What fixes this sampler's orders besides its seed, length and ``shuffle``, as JSON data: its class and
        options (a loader's ``state_dict()`` holds it, so that a resume into another kind of sampler is refused)."""
        return {"class": type(self).__name__}


def _digest(array: np.ndarray) -> str:
    """A short fingerprint of ``array``'s values (a sampler's weights or indices in its settings)."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def described(settings: dict) -> str:
    """A sampler's ``settings()`` as a call: ``RandomSampler(replacement=True, data_length=10)``."""
    options = ", ".join(f"{key}={value!r}" for key, value in settings.items() if key != "class")
    return f"{settings.get('class')}({options})"


def _data_length(owner: str, data_source) -> int:
    """``len(data_source)``: a sampler over a dataset takes the dataset (or anything with a length), as torch's."""
    if not hasattr(data_source, "__len__"):
        raise TypeError(f"{owner} takes the dataset it samples (anything with a length), got "
                        f"{type(data_source).__name__}")
    return len(data_source)


def _num_samples(owner: str, value) -> int:
    """A sampler's ``num_samples``, a positive integer, with torch's ``ValueError`` otherwise."""
    count = arguments.integer(value)
    if count is None or count <= 0:
        raise ValueError(f"{owner} num_samples should be a positive integer value, but got num_samples={value!r}")
    return count


class SequentialSampler(Sampler):
    """``0 .. len(data_source) - 1`` in order, every epoch, as ``torch.utils.data.SequentialSampler``.

    Args:
        data_source: the dataset sampled (anything with a length).
    """

    def __init__(self, data_source):
        super().__init__(_data_length("SequentialSampler", data_source))


class RandomSampler(Sampler):
    """A random order of ``data_source``'s indices each epoch, as ``torch.utils.data.RandomSampler``: without
    ``replacement`` a permutation (``num_samples`` beyond the dataset's length: whole permutations one after another,
    then part of one, as torch's), with it ``num_samples`` independent draws. The order of epoch ``e`` is drawn from
    ``(seed, e)`` (torch's ``generator`` is a torch object: pass ``seed``).

    Args:
        data_source: the dataset sampled (anything with a length).
        replacement: draw with replacement.
        num_samples: indices per epoch; default the dataset's length.
        seed: seed of the orders; ``None`` draws one from unidl's generator (see ``manual_seed``).
    """

    def __init__(self, data_source, replacement: bool = False, num_samples: int | None = None,
                 seed: int | None = None):
        self.data_length = _data_length("RandomSampler", data_source)
        self.replacement = arguments.boolean("RandomSampler", "replacement", replacement)
        count = self.data_length if num_samples is None else _num_samples("RandomSampler", num_samples)
        super().__init__(count, shuffle=True, seed=seed)

    def order(self, epoch: int) -> np.ndarray:
        generator = np.random.default_rng([self.seed, int(epoch)])
        if self.replacement:
            return generator.integers(0, self.data_length, self.length)
        whole, rest = divmod(self.length, self.data_length)
        return np.concatenate([generator.permutation(self.data_length) for _ in range(whole)]
                              + [generator.permutation(self.data_length)[:rest]]).astype(np.int64)

    def settings(self) -> dict:
        return dict(super().settings(), replacement=self.replacement, data_length=self.data_length)


class SubsetRandomSampler(Sampler):
    """The given ``indices`` in a random order each epoch, as ``torch.utils.data.SubsetRandomSampler``, drawn from
    ``(seed, epoch)``.

    Args:
        indices: the dataset indices to visit, each once per epoch.
        seed: seed of the orders; ``None`` draws one from unidl's generator (see ``manual_seed``).
    """

    def __init__(self, indices, seed: int | None = None):
        self.indices = np.asarray(indices)
        if self.indices.ndim != 1 or self.indices.size and self.indices.dtype.kind not in "iu":
            raise TypeError(f"SubsetRandomSampler takes a sequence of integer indices, got {indices!r:.100}")
        self.indices = self.indices.astype(np.int64)
        super().__init__(len(self.indices), shuffle=True, seed=seed)

    def order(self, epoch: int) -> np.ndarray:
        return self.indices[super().order(epoch)]

    def settings(self) -> dict:
        return dict(super().settings(), indices=_digest(self.indices))


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices of ``weights`` drawn with probabilities proportional to them each epoch, as
    ``torch.utils.data.WeightedRandomSampler``, from ``(seed, epoch)``; without ``replacement`` no index twice.

    Args:
        weights: one non-negative weight per dataset index, not all zero (they need not sum to 1).
        num_samples: indices per epoch.
        replacement: draw with replacement (the default, as torch's).
        seed: seed of the draws; ``None`` draws one from unidl's generator (see ``manual_seed``).
    """

    def __init__(self, weights, num_samples: int, replacement: bool = True, seed: int | None = None):
        count = _num_samples("WeightedRandomSampler", num_samples)
        try:
            self.replacement = arguments.boolean("WeightedRandomSampler", "replacement", replacement)
        except TypeError as error:  # torch's WeightedRandomSampler raises ValueError here (RandomSampler TypeError)
            raise ValueError(str(error)) from None
        self.weights = np.asarray(weights, dtype=np.float64)
        if (self.weights.ndim != 1 or not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0)
                or not self.weights.sum() > 0):
            raise ValueError(f"WeightedRandomSampler weights must be a sequence of finite, non-negative numbers, not "
                             f"all zero; got {weights!r:.100}")
        if not self.replacement and count > np.count_nonzero(self.weights):
            raise ValueError(f"WeightedRandomSampler: num_samples={count} without replacement exceeds the "
                             f"{np.count_nonzero(self.weights)} indices of non-zero weight")
        super().__init__(count, shuffle=True, seed=seed)

    def order(self, epoch: int) -> np.ndarray:
        generator = np.random.default_rng([self.seed, int(epoch)])
        return generator.choice(len(self.weights), size=self.length, replace=self.replacement,
                                p=self.weights / self.weights.sum())

    def settings(self) -> dict:
        return dict(super().settings(), replacement=self.replacement, weights=_digest(self.weights))


#: unidl's samplers, whose orders are functions of (seed, epoch) alone, the same on every rank of a job
OWN_SAMPLERS = (Sampler, SequentialSampler, RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


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

    def batches(self, epoch: int, start: int = 0, seed: int | None = None) -> list[np.ndarray]:
        """The index arrays of epoch ``epoch``, skipping the first ``start`` batches; ``seed``: see ``seeded_order``."""
        order = seeded_order(self.sampler, epoch, seed)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(start, len(self))]


def seeded_order(sampler: Sampler, epoch: int, seed: int | None) -> np.ndarray:
    """``sampler.order(epoch)`` drawn with ``seed`` in place of the sampler's own (None: its own), from a copy made
    for this call: a loader's seed (given, drawn, a job's, a resumed state's) never changes the sampler it was given,
    which the user holds and another loader may share, while the sampler's other attributes, changed between epochs
    (new weights, say), are read as they are now, as torch's loader reads its sampler."""
    if seed is None or seed == sampler.seed:
        return sampler.order(epoch)
    twin = copy.copy(sampler)
    twin.seed = seed
    return twin.order(epoch)


def rank_share(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of one global batch of a data-parallel job: a contiguous slice, the shares of
    the ``world_size`` ranks differing in size by one sample at most and together the whole batch."""
    count = len(indices)
    return indices[count * rank // world_size:count * (rank + 1) // world_size]
