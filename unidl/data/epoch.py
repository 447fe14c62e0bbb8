"""``Epoch``: one pass over a ``DataLoader`` (what ``iter(loader)`` returns).

Besides yielding batches, an epoch over a ``TensorDataset`` can hand its remaining samples over
whole, as NumPy arrays in visiting order (``take_arrays``), to a framework trainer that slices
arrays itself (Keras's ``Model.fit``, which the keras backend uses where Keras does not run on
TensorFlow), which is much faster than feeding it batch by batch from
Python. The trainer then reports each batch it consumed with ``advance()``, so that the loader's
position, and with it mid-epoch resume, stays exact.
"""

from __future__ import annotations

import numpy as np

from unidl.data.pool import GRACE_ON_FAILURE


class Epoch:
    """Iterator over one epoch's batches; see the module docstring for ``take_arrays``/``advance``."""

    def __init__(self, loader, token, batches: list, make_source, sharded: bool = False):
        self._loader, self._token = loader, token
        self._sharded = sharded  # a rank's shares of global batches: not slices of batch_size
        self._batches = batches          # index arrays of the batches still to come
        # (batches, workers) -> generator of converted batches, started lazily; it puts the WorkerPool that
        # prepares them in the list ``workers`` before starting it (a list, not this epoch: no reference cycle)
        self._make_source = make_source
        self._source = None
        self._workers = []
        self._ended = False              # handed over (take_arrays) or closed: nothing more to yield

    @property
    def batch_size(self) -> int:
        return self._loader.batch_size

    def __iter__(self):
        return self

    def __next__(self):
        try:
            if self._ended:
                raise StopIteration
            if self._source is None:
                self._source = self._make_source(self._batches, self._workers)
            batch = next(self._source)
            self.advance()
            return batch
        except KeyboardInterrupt:
            # Ctrl-C anywhere in here, also where the source cannot stop its workers itself (between batches,
            # on the first lines of its own stop), stops them (persistent ones too) before KeyboardInterrupt
            # leaves: its traceback keeps this frame, and through it the workers, alive (at the REPL until the
            # next error)
            for workers in self._workers:
                workers.shutdown(GRACE_ON_FAILURE)
            raise

    def close(self) -> None:
        """End the epoch where it is: it yields nothing more, and its workers stop now (persistent workers stay
        with their loader), as when the iterator is dropped. For code that keeps the iterator when an error
        or Ctrl-C leaves its loop: the traceback keeps that code's frame, and with it the iterator and its
        workers, alive (at the REPL until the next error)."""
        self._ended = True
        if self._source is not None:
            self._source.close()

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more batches as delivered (moves the loader's resume position)."""
        loader = self._loader
        if loader._active is self._token:
            loader._position += count

    def take_arrays(self) -> tuple[np.ndarray, ...] | None:
        """The remaining samples of the epoch as NumPy arrays in visiting order, or None when the
        dataset is not a ``TensorDataset`` or iteration has already begun. After this the iterator
        yields nothing: the caller consumes the arrays in ``batch_size`` slices and calls ``advance``."""
        dataset = self._loader.dataset
        if (self._source is not None or self._ended or not hasattr(dataset, "arrays") or not self._batches
                or self._sharded):
            return None
        self._ended = True
        order = np.concatenate(self._batches)
        if np.array_equal(order, np.arange(order[0], order[0] + len(order))):  # unshuffled: views, no copy
            return tuple(array[order[0]:order[0] + len(order)] for array in dataset.arrays)
        return tuple(array[order] for array in dataset.arrays)
