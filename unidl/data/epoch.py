"""``Epoch``: one pass over a ``DataLoader`` (what ``iter(loader)`` returns).

Besides yielding batches, an epoch over a ``TensorDataset`` can hand its remaining samples over
whole, as NumPy arrays in visiting order (``take_arrays``), to a framework trainer that slices
arrays itself (Keras's ``Model.fit``, which the keras backend uses where Keras does not run on
TensorFlow), which is much faster than feeding it batch by batch from
Python. The trainer then reports each batch it consumed with ``advance()``, so that the loader's
position, and with it mid-epoch resume, stays exact.
"""

from __future__ import annotations

import operator

import numpy as np

from unidl import arguments
from unidl.tensors import number_array


def xy(batch) -> tuple:
    """``(x, y)`` of a batch that ``fit`` and ``evaluate`` train or evaluate on, from any loader or pipeline. A
    batch of another number of fields is a ``ValueError`` naming what it holds: a third field (Keras's ``(x, y,
    sample_weight)`` from a pipeline) was dropped unread, training unweighted, and one field was an
    ``IndexError``. Sample weights go to ``fit``/``evaluate`` as ``sample_weight=`` beside arrays, a forward's
    extra inputs as ``fit``'s ``step_inputs``. x and y of another number of samples along axis 0 (an unbatched
    pipeline: Keras's trainer took it one sample a step) are ``train_step``'s ``ShapeMismatchError``."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        for value in (x, y):  # (train_step's rule: a dict or tuple of inputs is a TypeError there, at each step)
            if getattr(value, "shape", None) is None:
                raise TypeError(f"fit and evaluate take x and y as arrays or tensors, got {type(value).__name__}")
        x_shape, y_shape = tuple(x.shape), tuple(y.shape)
        if not x_shape or not y_shape or x_shape[0] != y_shape[0]:  # (train_step's check, before Keras's trainer)
            from unidl.errors import ShapeMismatchError

            raise ShapeMismatchError(f"x and y must hold the same number of samples along axis 0; x has shape "
                                     f"{x_shape}, y has shape {y_shape} (an unbatched pipeline: batch it)")
        return x, y
    held = (f"{len(batch)} field{'' if len(batch) == 1 else 's'}" if isinstance(batch, (tuple, list)) else
            f"a dict of {sorted(batch)}" if isinstance(batch, dict) else f"one {type(batch).__name__}")
    raise ValueError(f"fit and evaluate take batches of two fields (x, y); the data gave {held}. Give sample "
                     f"weights as sample_weight= with (x, y) arrays (a third field is not read as weights), and a "
                     f"forward's extra inputs as fit's step_inputs")


class _EpochState:
    """What an epoch and its generator of batches share; the generator holds this, never the epoch, so that there
    is no reference cycle and a dropped epoch stops its workers at once."""

    __slots__ = ("loader", "token", "batches", "make_source", "source", "workers", "ended")

    def __init__(self, loader, token, batches: list, make_source):
        self.loader, self.token = loader, token
        self.batches = batches           # index arrays of the batches still to come
        # (batches, workers) -> generator of converted batches, started lazily; it puts the WorkerPool that
        # prepares them in the list ``workers`` before starting it
        self.make_source = make_source
        self.source = None
        self.workers = []
        self.ended = False               # handed over (take_arrays) or closed: nothing more to yield

    def advance(self, count: int) -> None:
        loader = self.loader
        if loader._active is self.token:
            loader._position += count


def _delivered(state: _EpochState):
    """The epoch's batches, each counted as delivered (the loader's position) as it is handed out.

    A generator, reached from ``next(epoch)`` through C only (``Epoch.__next__``), so that every bytecode it runs
    between two batches is inside its ``try``: Python raises the ``KeyboardInterrupt`` of a Ctrl-C where it checks
    for signals, and one of those checks comes first as a frame starts or resumes (a function's first bytecode,
    where a ``try`` has no hold yet; here the resumption after the ``yield``, inside it). Ctrl-C anywhere in here,
    also where the source cannot stop its workers itself (between batches, on the first lines of its own stop),
    stops them (persistent ones too) before ``KeyboardInterrupt`` leaves: its traceback keeps the caller's frame,
    and through it the epoch and its workers, alive (at the REPL until the next error). Ctrl-C as the first
    ``next`` starts it, before its ``try``, comes before any worker starts."""
    try:
        if state.ended:  # (take_arrays handed the epoch over before any batch)
            return
        state.source = state.make_source(state.batches, state.workers)
        for batch in state.source:
            state.advance(1)
            yield batch
            if state.ended:  # (closed)
                return
    except KeyboardInterrupt:
        for workers in state.workers:
            workers.shutdown_now()
        raise


class Epoch:
    """Iterator over one epoch's batches; see the module docstring for ``take_arrays``/``advance``.

    After a Ctrl-C or an error the epoch yields nothing more. ``__next__`` is a property (see below):
    ``next(epoch)`` and ``epoch.__next__()`` work, ``Epoch.__next__(epoch)`` (unbound) raises ``TypeError``."""

    def __init__(self, loader, token, batches: list, make_source, sharded: bool = False):
        self._state = _EpochState(loader, token, batches, make_source)
        self._sharded = sharded  # a rank's shares of global batches: not slices of batch_size
        self._length = len(batches)
        self._batches = _delivered(self._state)

    @property
    def batch_size(self) -> int:
        return self._state.loader.batch_size

    def __iter__(self):
        return self

    def __len__(self) -> int:
        """The batches this iteration yields from where it began: ``len(loader)`` for a whole epoch, as PyTorch's
        ``len(iter(loader))``, fewer for one resumed mid-epoch."""
        return self._length

    # ``next(epoch)`` resumes the generator ``_delivered`` with no Python frame of its own (a property whose getter
    # is C code returns the generator's own ``__next__``): a Python ``__next__`` would start with a bytecode at which
    # a Ctrl-C can land outside any ``try`` (see ``_delivered``)
    __next__ = property(operator.attrgetter("_batches.__next__"))

    def close(self, interrupt: bool = False) -> None:
        """End the epoch where it is: it yields nothing more, and its workers stop now (persistent workers stay
        with their loader), as when the iterator is dropped: worker threads finish the sample in hand. For code
        that keeps the iterator when an error or Ctrl-C leaves its loop: the traceback keeps that code's frame, and
        with it the iterator and its workers, alive (at the REPL until the next error). ``interrupt``: for a
        Ctrl-C, which asks to stop now: worker threads that are not persistent are interrupted in their samples
        (``WorkerPool.shutdown_now``); anything but True or False is a ``TypeError`` before the epoch ends (a string
        was taken as True, None as False)."""
        interrupt = arguments.boolean("Epoch.close", "interrupt", interrupt)
        state = self._state
        state.ended = True
        if interrupt and not state.loader.persistent_workers:
            for workers in state.workers:
                workers.shutdown_now()
        if state.source is not None:
            state.source.close()

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more batches as delivered (moves the loader's resume position)."""
        self._state.advance(count)

    def take_arrays(self) -> tuple[np.ndarray, ...] | None:
        """The remaining samples of the epoch as NumPy arrays in visiting order, or None when the loader's
        batches are not slices of arrays (``DataLoader.sliced_arrays``) or iteration has already begun. After this
        the iterator yields nothing: the caller consumes the arrays in ``batch_size`` slices and calls ``advance``."""
        state = self._state
        arrays = state.loader.sliced_arrays()
        if state.source is not None or state.ended or arrays is None or not state.batches or self._sharded:
            return None
        state.ended = True
        order = np.concatenate(state.batches)
        if np.array_equal(order, np.arange(order[0], order[0] + len(order))):  # unshuffled: views, no copy
            taken = tuple(array[order[0]:order[0] + len(order)] for array in arrays)
        else:
            taken = tuple(array[order] for array in arrays)
        # (the numbers of the batches' fields, as the loader checks them: number_array)
        return tuple(number_array(array, owner="DataLoader", where=f" in field {field} of a batch")
                     for field, array in enumerate(taken))
