"""``DataLoader``: batches of a dataset as the current backend's tensors, in a resumable, seeded order.

Batches are cut in NumPy and converted with the backend's ``tensor()`` at the last moment, on the
caller's backend, device and dtype (``contextvars`` scope). Worker threads or processes can prepare
them ahead of time (``pool.py`` runs them, ``worker.py`` is what runs inside them).
"""

from __future__ import annotations

import contextvars
import multiprocessing
import numbers
import weakref

import numpy as np

from unidl import arguments, config, dtype_kinds
from unidl.data import worker
from unidl.data.dataset import Fields, default_collate, is_map_style, sliced_arrays
from unidl.data.epoch import Epoch, xy
from unidl.data.pool import GRACE, GRACE_ON_FAILURE, WorkerPool, in_finalizer
from unidl.data.sampler import OWN_SAMPLERS, BatchSampler, Sampler, described, draw_seed, rank_share
from unidl.distributed import process_group
from unidl.errors import DataLoaderError, DtypeMismatchError, StateDictError
from unidl.scoped_flags import ScopedFlag
from unidl.tensors import NUMBERS, as_numpy_values, number_array, to_numpy

_STATE_KEYS = ("epoch", "position", "seed", "shuffle", "length", "batch_size", "drop_last")
#: the settings of the loader's own order (``Sampler.settings()``), which a state without a 'sampler' was taken with
_OWN_ORDER = {"class": "Sampler"}


def _same_order_as(settings: dict, length) -> dict:
    """``settings`` (a sampler's) as the plain ``Sampler``'s where that sampler's orders are the plain ``Sampler``'s of
    the same ``length``, ``shuffle`` and seed (a state's other entries): ``SequentialSampler``'s, and
    ``RandomSampler``'s without replacement over its whole dataset (one permutation drawn from ``(seed, epoch)``)."""
    kind = settings.get("class")
    if kind == "SequentialSampler" or (kind == "RandomSampler" and settings.get("replacement") is False
                                       and settings.get("data_length") == length):
        return _OWN_ORDER
    return settings


def sampler_mismatch(state: dict, mine: dict) -> str | None:
    """What differs where the loader state ``state`` was taken with another sampler than the one of ``mine`` (this
    loader's ``state_dict()``): both samplers' settings; None where they agree or their orders are the same (a
    ``SequentialSampler``'s and an unshuffled loader's own, say). A state without a 'sampler' (a loader's own order,
    or written before samplers) was taken with the plain ``Sampler``."""
    theirs, ours = state.get("sampler", _OWN_ORDER), mine.get("sampler", _OWN_ORDER)
    if not isinstance(theirs, dict):
        return f"the state's 'sampler' is {theirs!r:.100}, not a sampler's settings (a dict such as {ours!r:.100})"
    if _same_order_as(theirs, state.get("length")) == _same_order_as(ours, mine.get("length")):
        return None
    return (f"the state was taken with a {described(theirs)} but this loader has a {described(ours)}; resuming needs "
            f"the same sampler (its order is another's)")


def _is_count(value) -> bool:
    """Whether ``value`` is an integer (Python's or NumPy's), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def seed_problem(seed, shuffle: bool) -> str | None:
    """What is wrong with ``seed`` as the seed of a loader state, for a loader that shuffles or not; None where
    nothing is: a non-negative integer (not a bool), or None where the loader does not shuffle. The one rule of
    ``load_state_dict`` and of the check ``load_checkpoint`` makes before anything changes (which accepted a bool
    and a shuffled loader's None: the model, optimizer and RNG were restored, then the loader refused)."""
    if (seed is None and not shuffle) or (_is_count(seed) and seed >= 0):
        return None
    return f"seed {seed!r} is not a non-negative integer" + (" (a shuffled loader needs one)" if seed is None else "")


def _check_count(name: str, value, minimum: int) -> int:
    if not _is_count(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


_WORKER_TYPES = ("thread", "process")


def _check_timeout(timeout) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0 (0 or None: no timeout), "
                         f"got {timeout!r}")
    return float(timeout) or None


def _multiprocessing_context(context, worker_type: str):
    """The ``multiprocessing`` context for process workers: 'spawn' unless the caller names another."""
    if worker_type != "process":
        if context is not None:
            raise ValueError(f"multiprocessing_context={context!r} needs worker_type='process' "
                             f"(worker_type is {worker_type!r})")
        return None
    if context is None:
        return multiprocessing.get_context("spawn")
    if isinstance(context, str):
        methods = multiprocessing.get_all_start_methods()
        if context not in methods:
            raise ValueError(f"multiprocessing_context={context!r} is not a start method of this platform; "
                             f"valid: {methods}")
        return multiprocessing.get_context(context)
    if not hasattr(context, "Process") or not hasattr(context, "Queue"):
        raise ValueError(f"multiprocessing_context must be a start method name or a multiprocessing context, "
                         f"got {context!r}")
    return context


def _check_pin_memory(backend) -> None:
    """Refuse ``pin_memory=True`` where the backend has no page-locked staging buffer for the device in force
    (``Backend.pins_memory``)."""
    device = config.resolve_device(config._requested_device(), backend)
    if not backend.pins_memory(device):
        raise ValueError(f"pin_memory=True: the {backend.name} backend on device {device!r} has no pinned "
                         f"(page-locked) host memory to copy batches through; leave pin_memory=False here")


def _to_tensors(backend, arrays: tuple, owned: bool):
    """Arrays -> the backend's tensors; ``owned``: fresh arrays nobody else holds, adopted without a copy. A
    ``Fields`` batch is its tensors in its layout (samples that are single arrays: the one tensor, bare, as torch's
    loader yields it; namedtuples: that namedtuple; dicts: a dict).
    Each field passes ``ud.tensor``'s check of its numbers (``number_array``), so that every backend makes the same
    tensor of it or raises the same error."""
    tensors = tuple(_to_tensor(backend, array, owned, field) for field, array in enumerate(arrays))
    return arrays.rebuilt(tensors) if isinstance(arrays, Fields) else tensors


def _to_tensor(backend, value, owned: bool, field: int):
    if backend.is_tensor(value):  # (a collate_fn's own tensors: the dtypes a NumPy field becomes, no copy to host)
        tensor = backend.tensor(value)
        if dtype_kinds.is_floating(tensor.dtype) or dtype_kinds.dtype_name(tensor.dtype) in ("int64", "bool"):
            return tensor
        if dtype_kinds.is_integer(tensor.dtype):  # (uint8, int32: int64, as a NumPy field's)
            from unidl import ops

            return ops.cast(tensor, "int64")
        raise DtypeMismatchError(f"DataLoader {NUMBERS}, got a tensor of dtype "
                                 f"{dtype_kinds.dtype_name(tensor.dtype)} in field {field} of a batch")
    array = (value if isinstance(value, np.ndarray) else np.asarray(to_numpy(value)) if hasattr(value, "dtype")
             else as_numpy_values(value))  # (a collate_fn's lists and scalars, ragged lists refused as ud.tensor does)
    checked = number_array(array, owner="DataLoader", where=f" in field {field} of a batch")
    if owned and checked is value or checked is not array:  # (a fresh array: the check's conversion)
        return backend.adopt(checked)
    return backend.tensor(checked)


def _batch_sampler(length: int, batch_size, shuffle: bool, seed, drop_last, sampler,
                   batch_sampler) -> tuple[BatchSampler, int | None]:
    """The loader's batches: its own over the ``length`` samples of the dataset (``shuffle``, ``seed``), those of a
    ``sampler``'s order, or a ``batch_sampler``, refused together as torch's loader refuses them: a sampler with
    ``shuffle``, a batch sampler with ``batch_size`` (other than 1, the default), ``shuffle``, ``sampler`` or
    ``drop_last``. A sampler's order must be a function of (seed, epoch) (a unidl ``Sampler``), for the same batches
    on every backend, worker and rank and a resume mid-epoch: torch's samplers and plain iterables are a
    ``TypeError`` naming what to use. With the loader's seed for an unshuffled sampler's batches (``seed``, else
    None): the loader keeps it, as torch's loader never changes its sampler (``seeded_order``)."""
    if batch_sampler is not None:
        given = {"batch_size": batch_size != 1, "shuffle": shuffle, "sampler": sampler is not None,
                 "drop_last": drop_last}
        if any(given.values()):
            raise ValueError(f"DataLoader: batch_sampler option is mutually exclusive with batch_size, shuffle, "
                             f"sampler, and drop_last (as in torch's loader; the batch sampler sets them), got "
                             f"{', '.join(name for name, value in given.items() if value)}")
        if not isinstance(batch_sampler, BatchSampler):
            raise TypeError(f"DataLoader batch_sampler={type(batch_sampler).__name__}(...): unidl's loader takes a "
                            f"ud.data.BatchSampler, whose batches are a function of (seed, epoch) (the same on every "
                            f"backend, worker and rank, resumable mid-epoch); wrap a ud.data sampler: "
                            f"BatchSampler(RandomSampler(dataset, seed=N), batch_size, drop_last)")
        sampler = batch_sampler.sampler
    elif sampler is not None:
        if shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle (as in torch's loader; "
                             "the sampler sets the order: ud.data.RandomSampler(dataset, seed=N) shuffles)")
        _check_sampler(sampler)
    if sampler is not None:
        if seed is not None and sampler.shuffle:
            raise ValueError(f"DataLoader: seed={seed!r} with a {type(sampler).__name__}, which draws its order from "
                             f"a seed of its own ({sampler.seed}); give the seed to the sampler")
        if seed is not None:  # (an unshuffled order: the seed of the batches' global RNGs, see the class)
            seed = arguments.non_negative_int("DataLoader", "seed", seed)
        return (batch_sampler if batch_sampler is not None else BatchSampler(sampler, batch_size, drop_last)), seed
    return BatchSampler(Sampler(length, shuffle, seed), batch_size, drop_last), None


def _check_sampler(sampler) -> None:
    """``TypeError`` for a ``sampler`` that is no unidl ``Sampler`` (torch's, a list of indices)."""
    if not isinstance(sampler, Sampler):
        raise TypeError(f"DataLoader sampler={type(sampler).__name__}(...): unidl's loader takes a ud.data sampler "
                        f"(SequentialSampler, RandomSampler, SubsetRandomSampler, WeightedRandomSampler, or a Sampler "
                        f"overriding order(epoch)), whose order is a function of (seed, epoch): the same on every "
                        f"backend, worker and rank, and resumable mid-epoch; or a ud.data.Subset for a selection of "
                        f"your own")


def _refuse_generator(generator) -> None:
    """``TypeError`` for torch.utils.data's ``generator`` given (not None): unidl seeds the order with ``seed``."""
    if generator is not None:
        raise TypeError(f"DataLoader generator={type(generator).__name__}(...): unidl seeds the loader's order with "
                        f"seed=N (one framework's generator cannot drive every backend); pass seed=..., or a "
                        f"sampler's seed=...")


_EMPTY_SHARES = ScopedFlag("unidl_empty_shares")


def empty_shares_allowed():
    """Let the iterations of sharded loaders begun in the block hand a rank an empty share of a short batch:
    ``evaluate`` skips such a share and sums every rank's counts. Elsewhere a rank's empty batch is refused
    (``process_group.check_shares``): the mean loss of a loop of the user's own would be NaN on every rank."""
    return _EMPTY_SHARES.raised()


class DataLoader:
    """Iterates over ``dataset`` in batches of ``batch_size``: tuples of backend tensors, one per field (one tensor
    alone where the samples are single arrays, see below).

    A batch of tuple samples is a tuple of tensors, one per field; a batch of samples that are single arrays (or a
    ``collate_fn`` that returns one array) is that tensor alone, of namedtuple samples that namedtuple, of dict
    samples a dict of tensors by key, as torch's loader yields them (``fit`` and ``evaluate`` take (x, y) tuples).
    One difference from ``torch.utils.data.DataLoader``, the same on every backend: arrays become tensors as
    ``ud.tensor`` makes them, floating point in the dtype in force (``ud.use_dtype``; float32 unless set), integers as
    int64 and booleans as bool, where torch's keeps each array's dtype (a uint8 image is int64 here: convert it to
    floats in the dataset or ``collate_fn``).

    Every ``iter(loader)`` is one epoch; epoch ``e`` visits the samples in the order fixed by
    ``(seed, e)`` (see ``unidl.data.sampler``), so ``state_dict()`` (epoch, batches already yielded,
    seed) is enough to resume mid-epoch in a new process with ``load_state_dict``.

    Batches come in the same order and with the same content whatever ``num_workers`` and
    ``worker_type``. A dataset that draws from NumPy's global RNG, Python's ``random`` or (where its process has
    imported torch) torch's default generator in ``__getitem__`` or its own ``batch`` gets, for batch ``b`` of
    epoch ``e``, the global RNGs seeded from ``(seed, e, b)``: in the main process (``num_workers=0``, which
    restores the RNGs' previous state after each batch) and in worker processes alike, so that such batches are
    the same with 0 or N process workers, in every run, and after a resume. Worker threads share one global RNG
    and are not seeded: random draws there depend on thread timing (draw from a generator of your own, or use
    process workers).

    Workers:

    - ``worker_type="thread"`` (the default): threads of this process. No start-up cost, no pickling,
      the caller's backend scope applies inside them, and batches are converted to tensors there too.
      Right for NumPy slicing, I/O and anything else that releases the GIL. When the iteration ends early
      (a ``break``, ``Epoch.close()``, the iterator or a persistent loader dropped) a thread finishes the
      sample in hand and ends (a daemon thread, it never keeps the interpreter from exiting); without
      ``timeout`` one stuck there runs on until that sample returns. A thread whose batch overran ``timeout``,
      one whose sample has run longer than ``timeout`` when the workers stop (after the timeout's error, a
      ``break``, a close, a drop) or later (a watcher thread, which ends with the last such worker, stops it
      then: the caller does not wait), and every thread in a sample on Ctrl-C while iterating, is stopped by
      an exception raised in that sample (``WorkerStopped``, a ``BaseException``), which Python raises at the
      thread's next bytecode: a sample in a Python loop, or sleeping in short steps, stops; one inside a single
      call that does not return to Python (a long ``time.sleep``, a blocking read) stops only when that call
      returns, and the timeout's error (on Ctrl-C, and from the watcher, a ``RuntimeWarning``) names it and
      where it is. ``os._exit`` in a worker thread ends the whole process (in a worker process it is the
      loader's ``DataLoaderError``).
    - ``worker_type="process"``: processes started with ``multiprocessing`` (start method ``"spawn"``
      unless ``multiprocessing_context`` says otherwise: the parent may already run torch's or
      TensorFlow's threads, which ``"fork"`` does not survive). Right for Python-heavy ``__getitem__``
      code. The dataset, ``collate_fn`` and ``worker_init_fn`` are pickled to each worker once per start,
      so they must be defined at module level of an importable module, and a script that starts process
      workers needs the usual ``if __name__ == "__main__":`` guard. A worker imports NumPy, unidl and the
      dataset's module, never a framework; it sends batches back as NumPy arrays (those of 1 MiB or more
      through shared memory, smaller ones pickled: ``unidl.data.shared_batches``), which become tensors in
      the main process. A worker that is stuck, dies (``os._exit``, a signal) or outlives the iterator is
      terminated, and no shared-memory segment outlives the workers.

    With workers, a failure raises ``DataLoaderError`` naming the worker, the batch and sample, with the
    worker's traceback in the message (and the original exception as ``__cause__``), an instance of the
    original's class too where the two combine (``except KeyError`` catches it, as without workers); so does a worker
    process that dies (with its exit code) or a batch that takes longer than ``timeout``. Ctrl-C stops
    the iteration within a fraction of a second: the main process waits for batches in short polls. No
    worker outlives the iterator: workers stop when the epoch ends, on any error, on Ctrl-C, when the
    iterator is closed (``Epoch.close()``) and when it is garbage-collected (persistent workers: when the
    loader is).

    Args:
        dataset: a ``TensorDataset`` (batches cut with one slice per array) or any ``Dataset``
            (samples fetched one by one and joined by ``collate_fn``).
        batch_size: samples per batch, a positive integer (1 by default, as torch's).
        shuffle: visit the samples in a new random order each epoch.
        seed: seed of the shuffled orders and of the batches' global RNGs; ``None`` draws one from unidl's
            generator (see ``manual_seed``) where the loader shuffles or its batches run code of the user's. With a
            ``sampler`` that draws its order, the sampler's seed is the loader's (``seed`` here is an error).
        drop_last: drop the last batch of an epoch if it is smaller than ``batch_size``.
        sampler: the order of each epoch, in place of ``shuffle``: a ``ud.data`` sampler (``SequentialSampler``,
            ``RandomSampler``, ``SubsetRandomSampler``, ``WeightedRandomSampler``, or a ``Sampler`` overriding
            ``order(epoch)``), whose order is a function of (seed, epoch), so that workers, ranks and a resume
            mid-epoch see the same batches; torch's samplers and lists of indices are a ``TypeError``. In a
            data-parallel job only ``ud.data``'s own samplers can be sharded (a subclass is a ``ValueError``). The
            loader holds it as ``loader.sampler`` (``batch_sampler`` alike), as torch's: a change to it between
            epochs (``sampler.weights = w``) holds from the next epoch on. The seed the loader sets (``seed``, one
            drawn, a job's, ``load_state_dict``'s) is the loader's own and never changes the object given, which
            another loader may share, as torch's loader never changes its sampler.
        batch_sampler: a ``ud.data.BatchSampler``, in place of ``batch_size``, ``shuffle``, ``sampler`` and
            ``drop_last`` (given with any of them: a ``ValueError``, as torch's).
        generator: torch's; only None (a generator is a ``TypeError`` naming ``seed``).
        in_order: torch's; only True, what the loader does (``False`` is a ``ValueError``).
        num_workers: workers preparing batches ahead of the training loop (0: prepare on demand, here).
        prefetch: batches in flight per worker when ``num_workers > 0`` (default 2); ``prefetch_factor``, PyTorch's
            name, is taken for it.
        collate_fn: joins a list of samples into a tuple of arrays (default: ``default_collate``).
        worker_type: ``"thread"`` (the default) or ``"process"``, see above.
        timeout: seconds to wait for one batch from a worker before raising ``DataLoaderError``
            (``None`` or 0: wait for ever). A worker process's own start (interpreter, imports,
            unpickling) is not counted; ``worker_init_fn`` is.
        persistent_workers: keep the workers from one epoch to the next instead of starting new ones
            (they stop when the loader is garbage-collected, or after a failure).
        worker_init_fn: called as ``worker_init_fn(worker_id)`` in each worker when it starts. In a worker
            process, NumPy's global RNG and Python's ``random`` are seeded from ``(seed, epoch, worker_id)``
            before it, and again at each new epoch of persistent workers (then re-seeded per batch, above).
        pin_memory: copy batches to the GPU through pinned host memory. Only the torch backend on a CUDA
            device can (and always does); anywhere else ``True`` is a ``ValueError``, never ignored.
        multiprocessing_context: start method (``"spawn"``, ``"forkserver"``, ``"fork"``) or
            ``multiprocessing`` context for ``worker_type="process"``; default ``"spawn"``.
        shard: in a data-parallel job (``unidl.distributed``), ``batch_size`` is the global batch and each
            rank iterates its share of every batch (the default); ``False``: every rank gets every batch
            whole. Outside a job it changes nothing. See docs/distributed.md.

    ``persistent_workers``, ``worker_init_fn``, ``timeout``, ``multiprocessing_context``, ``prefetch`` and
    ``worker_type`` need ``num_workers > 0``: given without workers they are a ``ValueError``, since nothing would
    honour them (as PyTorch refuses ``prefetch_factor`` without workers).

    Example::

        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, seed=0)
        for epoch in range(10):
            for xb, yb in loader:
                loss = train_step(xb, yb)

        # Python-heavy samples: two worker processes, kept across epochs, 30 s per batch at most
        loader = DataLoader(ImageFolder(root), batch_size=64, num_workers=2, worker_type="process",
                            persistent_workers=True, timeout=30)
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, seed: int | None = None,
                 drop_last: bool = False, num_workers: int = 0, prefetch: int | None = None, collate_fn=None,
                 worker_type: str | None = None, timeout: float | None = None, persistent_workers: bool = False,
                 worker_init_fn=None, pin_memory: bool = False, multiprocessing_context=None, shard: bool = True,
                 prefetch_factor: int | None = None, *, sampler=None, batch_sampler=None, generator=None,
                 in_order: bool = True):
        _refuse_generator(generator)
        if not arguments.flag("DataLoader", "in_order", in_order):
            raise ValueError("DataLoader: in_order=False is not honoured: unidl's loader hands batches out in order "
                             "(its resume position counts the batches delivered, and batches are the same with 0 or N "
                             "workers); leave in_order=True")
        if not is_map_style(dataset):
            raise TypeError(f"DataLoader takes a map-style dataset (__len__ and __getitem__: a Dataset, a "
                            f"TensorDataset, a list of samples), got {type(dataset).__name__}; an iterable dataset or "
                            f"generator has no order to seed and resume: collect its samples into a list first")
        length = len(dataset)
        if length == 0:
            raise ValueError("DataLoader: the dataset is empty (length 0); there is nothing to load")
        self.dataset = dataset
        shuffle = arguments.flag("DataLoader", "shuffle", shuffle)  # ("False" shuffled)
        self.batch_sampler, self._seed = _batch_sampler(length, batch_size, shuffle, seed, drop_last, sampler,
                                                        batch_sampler)
        self._sized_by_dataset = sampler is None and batch_sampler is None  # (else the sampler's length is its own)
        if len(self.batch_sampler.sampler) == 0:  # (a SubsetRandomSampler([]), say: torch's loader yields nothing)
            raise ValueError(f"DataLoader: the {type(self.batch_sampler.sampler).__name__} visits no sample (0 "
                             f"indices an epoch); there is nothing to load: give it at least one index")
        if len(self.batch_sampler) == 0:
            raise ValueError(f"DataLoader: drop_last=True with batch_size={self.batch_size} larger than the "
                             f"{len(self.batch_sampler.sampler)} samples of an epoch yields no batch at all")
        self.num_workers = _check_count("num_workers", num_workers, 0)
        if prefetch_factor is not None:  # (PyTorch's name)
            if prefetch is not None:
                raise ValueError(f"DataLoader: prefetch={prefetch!r} and prefetch_factor={prefetch_factor!r} are "
                                 f"one option (prefetch_factor is PyTorch's name for prefetch); give one")
            prefetch = prefetch_factor
        self.prefetch = 2 if prefetch is None else _check_count("prefetch", prefetch, 1)
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable, got {collate_fn!r}")
        self.collate_fn = collate_fn or default_collate
        if seed is None and not self.shuffle and self.sliced_arrays() is None:
            # batches run the user's code, seeded per batch (see the class): from unidl's generator, so that
            # ``manual_seed`` governs an augmentation's draws (one fixed stream for every run and seed, else)
            self._seed = draw_seed()
        if worker_type is not None and worker_type not in _WORKER_TYPES:
            raise ValueError(f"worker_type must be one of {list(_WORKER_TYPES)}, got {worker_type!r}")
        self.worker_type = worker_type or "thread"
        self.timeout = _check_timeout(timeout)
        self.persistent_workers = arguments.flag("DataLoader", "persistent_workers", persistent_workers)
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise ValueError(f"worker_init_fn must be callable, got {worker_init_fn!r}")
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = _multiprocessing_context(multiprocessing_context, self.worker_type)
        if self.num_workers == 0:
            given = {"persistent_workers": self.persistent_workers, "worker_init_fn": worker_init_fn,
                     "timeout": self.timeout, "multiprocessing_context": multiprocessing_context,
                     "prefetch": prefetch is not None, "worker_type": worker_type is not None}
            given = [name for name, value in given.items() if value]
            if given:
                raise ValueError(f"DataLoader: {', '.join(given)} need(s) num_workers > 0; with "
                                 f"num_workers=0 nothing would honour them")
        self.pin_memory = arguments.flag("DataLoader", "pin_memory", pin_memory)
        if self.pin_memory:
            _check_pin_memory(config.backend())
        self._epoch = 0          # epoch of the iteration in progress, or of the next one
        self._position = 0       # batches of that epoch already yielded
        self._started = False    # whether an iteration of self._epoch has begun
        self._active = None      # token of the newest iterator; older ones stop updating the position
        self._pool = None        # persistent workers, once started
        self._pool_finalizer = None  # what stops them when the loader goes (_keep)
        self._seed_shared = False  # in a data-parallel job: whether the ranks agreed on rank 0's seed
        self._first_sample = None  # the last first_sample(): (makers, how, arrays), see there
        self.shard = arguments.flag("DataLoader", "shard", shard)

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
    def sampler(self) -> Sampler:
        """The order of each epoch: the ``sampler`` given (the one of ``batch_sampler``), else the loader's own."""
        return self.batch_sampler.sampler

    @property
    def seed(self) -> int | None:
        """The seed of the orders and of the batches' global RNGs: the loader's (given, drawn, a job's, a resumed
        state's), else its sampler's."""
        return self._seed if self._seed is not None else self.sampler.seed

    @property
    def samples_per_epoch(self) -> int:
        """The indices an epoch visits: the dataset's length (as it is now), or the ``sampler``'s."""
        self._refresh_length()
        return len(self.batch_sampler.sampler)

    @property
    def epoch(self) -> int:
        """The epoch of the iteration under way or last begun (before any, or after ``set_epoch`` or
        ``load_state_dict``: the one the next ``iter(loader)`` starts; ``next_iteration()`` says where in every
        case)."""
        return self._epoch

    def __len__(self) -> int:
        """Batches per epoch, of the dataset as long as it is now."""
        self._refresh_length()
        return len(self.batch_sampler)

    def _refresh_length(self) -> None:
        """The sampler's length from the dataset's as it is now, as PyTorch's loader reads ``len(dataset)`` at each
        epoch (a dataset that grew between epochs had its new samples never visited, one that shrank an
        ``IndexError``). An epoch already under way keeps the batches it began with."""
        length, sampler = len(self.dataset), self.batch_sampler.sampler
        if length == sampler.length or not self._sized_by_dataset:
            return
        if length == 0:
            raise ValueError("DataLoader: the dataset is empty now (length 0); there is nothing to load")
        if self.drop_last and length < self.batch_size:
            raise ValueError(f"DataLoader: drop_last=True with batch_size={self.batch_size} larger than the "
                             f"dataset now ({length} samples) yields no batch at all")
        sampler.length = length

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` start epoch ``epoch`` from its first batch."""
        self._epoch = _check_count("epoch", epoch, 0)
        self._position = 0
        self._started = False
        self._active = None  # an iterator still alive no longer moves the position set here

    def next_iteration(self) -> tuple[int, int]:
        """``(epoch, position)`` where the next ``iter(loader)`` starts: the position last set (a fresh loader,
        ``set_epoch``, ``load_state_dict``) while no iteration has begun since; once one has, the first batch of the
        epoch after it, however far it got, since a new ``iter()`` never continues an iteration broken off mid-epoch
        (a ``break``, Ctrl-C). ``fit`` positions its epochs by this, not by ``state_dict()``, which names the batch
        that iteration would yield next."""
        if self._started:
            return self._epoch + 1, 0
        return self._epoch, self._position

    # ---- resuming --------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the next batch comes from, as plain JSON-serialisable data.

        While an iteration is under way that is the batch it yields next, so that a checkpoint taken during it
        resumes right after the batches delivered so far (``load_state_dict`` then ``iter`` continue from there).
        After that iteration ends mid-epoch (a ``break``, Ctrl-C) the state still names that batch, but a new
        ``iter(loader)`` on this same loader starts the next epoch at its first batch: ``next_iteration()`` says
        where. The two agree whenever no iteration is alive or broken off (a fresh loader, after ``set_epoch``,
        ``load_state_dict`` or a finished epoch). A loader with a ``sampler`` adds its ``settings()`` (its class and
        options), so that the state loads only into a loader of the same sampler."""
        epoch, position = self._epoch, self._position
        if self._started and position >= len(self):
            epoch, position = epoch + 1, 0
        state = {"epoch": epoch, "position": position, "seed": self.seed, "shuffle": self.shuffle,
                 "length": self.samples_per_epoch, "batch_size": self.batch_size, "drop_last": self.drop_last}
        settings = self.batch_sampler.sampler.settings()
        return state if settings == _OWN_ORDER else dict(state, sampler=settings)  # (a state without it: as before)

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` was taken: the rest of its epoch, then the following epochs."""
        missing = [key for key in _STATE_KEYS if key not in state]
        unexpected = [key for key in state if key not in _STATE_KEYS + ("sampler",)]
        if missing or unexpected:
            raise StateDictError(f"DataLoader.load_state_dict: missing keys {missing}, unexpected keys "
                                 f"{unexpected}; expected exactly {list(_STATE_KEYS)} and, for a sampler, 'sampler'")
        mine = self.state_dict()
        for key in ("shuffle", "length", "batch_size", "drop_last"):
            if state[key] != mine[key]:
                raise StateDictError(f"DataLoader.load_state_dict: the state has {key}={state[key]!r} but "
                                     f"this loader has {key}={mine[key]!r}; resuming needs the same dataset "
                                     f"length, batch_size, shuffle and drop_last")
        mismatch = sampler_mismatch(state, mine)
        if mismatch is not None:
            raise StateDictError(f"DataLoader.load_state_dict: {mismatch}")
        # every value checked before any is set: a refused state leaves the loader as it was
        position, epoch, seed = state["position"], state["epoch"], state["seed"]
        if not _is_count(position) or not 0 <= position <= len(self):
            raise StateDictError(f"DataLoader.load_state_dict: position {position!r} is not an integer in "
                                 f"0..{len(self)} (batches per epoch)")
        if not _is_count(epoch) or epoch < 0:
            raise StateDictError(f"DataLoader.load_state_dict: epoch {epoch!r} is not an integer >= 0")
        problem = seed_problem(seed, self.shuffle)
        if problem is not None:
            raise StateDictError(f"DataLoader.load_state_dict: {problem}")
        self._seed = None if seed is None else int(seed)
        self._epoch, self._position = int(epoch), int(position)
        self._started = False
        self._active = None  # an iterator still alive no longer moves the position set here

    # ---- iterating -------------------------------------------------------
    def __iter__(self) -> Epoch:
        if self._started:
            self._epoch, self._position = self._epoch + 1, 0
        self._started = True
        token = self._active = object()
        # The caller's backend, device and dtype are context variables: capture them now and
        # re-enter them wherever a batch is fetched or converted, worker threads included.
        backend = config.backend()
        if self.pin_memory:
            _check_pin_memory(backend)
        context = contextvars.copy_context()
        sharding = process_group.sharding() if self.shard else None
        if sharding is not None and type(self.batch_sampler.sampler) not in OWN_SAMPLERS:
            raise ValueError(f"DataLoader: a sampler of your own ({type(self.batch_sampler.sampler).__name__}) in a "
                             f"data-parallel job: every rank cuts its share of the same global batches, which only "
                             f"ud.data's samplers guarantee (their order is a function of a seed shared from rank 0 "
                             f"and the epoch); use one of them, or shard=False for every rank to get every batch")
        if sharding is not None and self.seed is not None and not self._seed_shared:
            # every rank must cut the same order and seed its batches' augmentations alike: rank 0's seed (drawn or
            # given; an unshuffled loader's too, whose batches run the user's code) is the job's
            self._seed = process_group.broadcast_value(self.seed)
            self._seed_shared = True
        self._refresh_length()
        if sharding is not None and not _EMPTY_SHARES:  # (an empty share: a NaN loss all-reduced everywhere)
            process_group.check_shares(self, sharding[1])
        epoch, start, seed = self._epoch, self._position, self.seed
        owned = self.sliced_arrays() is not None  # fresh arrays (fancy indexing): adopted, not copied

        def convert(arrays, owned=owned):
            return _to_tensors(backend, arrays, owned)

        def source(batches, workers):
            if self.num_workers:
                return self._from_workers(batches, start, seed, epoch, context, convert, workers)
            return self._in_process(batches, start, seed, epoch, context, convert)

        batches = self.batch_sampler.batches(epoch, start, self.seed)
        if sharding is not None:  # this rank's share of each global batch; positions count global batches
            batches = [rank_share(indices, *sharding) for indices in batches]
        return Epoch(self, token, batches, source, sharded=sharding is not None)

    def sliced_arrays(self) -> tuple[np.ndarray, ...] | None:
        """The arrays whose slices are this loader's batches (a ``TensorDataset`` joined by ``default_collate``,
        its samples its rows), or None where samples are read one by one and joined by ``collate_fn``."""
        return sliced_arrays(self.dataset, self.collate_fn)

    def uneven_batch(self, world_size: int) -> int | None:
        """The size of a batch that ``world_size`` ranks cannot share equally (a full batch's, else the last's), or
        None where every batch splits evenly."""
        length = self.samples_per_epoch
        full = self.batch_size if length >= self.batch_size else 0
        last = 0 if self.drop_last else length % self.batch_size
        return next((size for size in (full, last) if size % world_size), None)

    def smallest_share(self, world_size: int) -> int:
        """The fewest samples a rank gets from one batch when ``world_size`` ranks share each batch."""
        length = self.samples_per_epoch
        last = length % self.batch_size if not self.drop_last and length % self.batch_size else self.batch_size
        return min(last, self.batch_size) // world_size

    def _in_process(self, batches, start, seed, epoch, context, convert):
        seeded = self.sliced_arrays() is None  # slices of arrays run no code of the user's

        def produce(indices, batch):
            with worker.batch_rngs((seed, epoch, batch) if seeded else None):
                arrays = _fetched(self.dataset, self.collate_fn, indices, batch, epoch)
            return convert(arrays)

        for offset, indices in enumerate(batches):
            yield context.copy().run(produce, indices, start + offset)

    def _from_workers(self, batches, start, seed, epoch, context, convert, workers: list):
        """Batches from the workers, in order; the workers stop when this generator ends, however it ends
        (persistent workers only after a failure or Ctrl-C), worker threads interrupted in their samples on
        Ctrl-C, and where a sample runs past ``timeout`` (``WorkerPool.shutdown``). The pool goes into ``workers``
        (the epoch's) before it starts, so that the epoch can stop it on a Ctrl-C that this generator cannot
        handle: one between batches, or one on the first lines of the stop in ``finally``."""
        in_processes = self.worker_type == "process"
        outcome = "failed"
        pool = None
        try:  # from before the first worker starts: Ctrl-C at any point stops the workers already started
            if self._pool is None or self._pool.closed:
                # made in the caller's context: its worker processes take its backend, device and dtype
                pool = context.copy().run(WorkerPool, self.worker_type, self.num_workers, self.dataset,
                                          self.collate_fn, self.worker_init_fn, self.multiprocessing_context, seed,
                                          epoch)
                workers.append(pool)
                pool.start()
                if self.persistent_workers:
                    self._keep(pool)
            else:
                pool = self._pool
                workers.append(pool)
                context.copy().run(pool.new_epoch, seed, epoch)
            for payload in pool.deliver(batches, start, seed, epoch, self.timeout, self.prefetch,
                                        None if in_processes else context, None if in_processes else convert):
                yield context.copy().run(convert, payload, True) if in_processes else payload
            outcome = "finished"
        except GeneratorExit:  # the iterator was closed or dropped before the end of the epoch
            outcome = "abandoned"
            raise
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        except DataLoaderError as error:
            if getattr(error, "superseded", False):
                outcome = "superseded"  # a newer iteration owns the persistent workers now: leave them be
            raise
        finally:
            if pool is not None and outcome == "interrupted":
                pool.shutdown_now()
            elif pool is not None and (outcome == "failed" or outcome != "superseded" and not self.persistent_workers):
                pool.shutdown(GRACE if outcome == "finished" else GRACE_ON_FAILURE)

    def _keep(self, pool) -> None:
        """Keep ``pool`` as the loader's persistent workers, stopped when the loader goes; the finalizer of the pool
        it replaces (closed: after a failure or Ctrl-C) goes, so that a loader restarted many times does not keep
        every closed pool, and its processes' file descriptors, alive."""
        if self._pool_finalizer is not None:
            self._pool_finalizer.detach()
        self._pool = pool
        self._pool_finalizer = weakref.finalize(self, in_finalizer, pool.shutdown, GRACE_ON_FAILURE)

    def first_sample(self) -> tuple[np.ndarray, ...]:
        """The first sample of the batch the next ``iter(loader)`` starts with (``next_iteration()``: a fresh loader's
        first batch of epoch 0, the batch a resume set, never one that an iteration broken off mid-epoch left
        behind) as a batch of one, NumPy arrays with ``collate_fn`` applied, made where the loader makes that
        batch: in one of its workers when ``num_workers > 0``, with the batch's RNG seeding, under the loader's
        ``timeout`` and with its ``DataLoaderError`` for a sample that raises, hangs or ends its worker process.
        ``fit`` and ``evaluate`` learn the batch layout (shapes, dtypes) from it before training, so that the
        dataset's code never runs in the main process of a loader with workers. The loader's position does not
        move.

        Persistent workers make it (started here if they are not running yet, then kept for the epochs that
        follow), unless an iteration is in progress on them; otherwise one worker of the loader's kind starts
        for this sample alone and stops after it.

        It is read once per position: the loader keeps the last sample it read and hands out copies of it while a
        new read would make it the same way, with the same sampler settings (``shuffle``, ``seed``, length,
        ``batch_size``: the sample's index), epoch and batch (its index and seeding), the same ``batch_sampler``,
        ``dataset``, ``collate_fn`` and ``worker_init_fn`` objects and worker type, so that ``fit``'s probes (its
        metrics' layout, the validation input check, ``TensorBoard``'s graph) start at most one extra worker per
        loader; the sample's index is worked out on a new read only (a shuffled epoch's order: a second at ten
        million samples). Another position (iterating, ``set_epoch``, ``load_state_dict``) or another of those
        objects assigned reads it anew. A dataset changed in place is not noticed here: ``fit`` and ``evaluate``
        drop what the loader keeps as they start.
        """
        epoch, position = self.next_iteration()
        batch = min(position, len(self) - 1)
        seed, sampler = self.seed, self.batch_sampler.sampler
        makers = (self.dataset, self.collate_fn, self.worker_init_fn, self.batch_sampler, sampler)  # by identity
        how = (self.worker_type if self.num_workers else None, sampler.shuffle, seed, len(sampler), self.batch_size,
               epoch, batch, sampler.settings())
        kept = self._first_sample
        if kept is not None and kept[1] == how and all(a is b for a, b in zip(kept[0], makers)):
            return tuple(array.copy() for array in kept[2])
        indices = self.batch_sampler.batches(epoch, batch, seed)[0][:1]
        arrays = self._read_first_sample(indices, seed, epoch, batch)
        self._first_sample = (makers, how, arrays)
        return tuple(array.copy() for array in arrays)

    def _forget_first_sample(self) -> None:
        """Drop the sample ``first_sample`` keeps: ``fit`` and ``evaluate`` start with a fresh read, so that a
        dataset fixed in place after a failed call is read again."""
        self._first_sample = None

    def _read_first_sample(self, indices, seed, epoch: int, batch: int) -> tuple[np.ndarray, ...]:
        """``first_sample``'s read of the sample at ``indices`` (batch ``batch`` of ``epoch``), without its cache."""
        if not self.num_workers:
            with worker.batch_rngs(None if self.sliced_arrays() is not None else (seed, epoch, batch)):
                arrays = _checked_pairs(_fetched(self.dataset, self.collate_fn, indices, batch, epoch))
            return tuple(np.asarray(to_numpy(array)) for array in arrays)
        running = self._pool is not None and not self._pool.closed
        in_progress = running and self._started and self._position < len(self)  # that iteration owns them
        persistent = self.persistent_workers and not in_progress
        if persistent and running:
            pool = self._pool
        else:
            pool = WorkerPool(self.worker_type, self.num_workers if persistent else 1, self.dataset,
                              self.collate_fn, self.worker_init_fn, self.multiprocessing_context, seed, epoch)
        context = contextvars.copy_context() if self.worker_type == "thread" else None
        try:
            if pool is not self._pool:
                pool.start()
                if persistent:
                    self._keep(pool)
            # (threads hand back what the dataset made: NumPy arrays of it here, as without workers)
            convert = _numpy_arrays if self.worker_type == "thread" else None
            [arrays] = list(pool.deliver([indices], batch, seed, epoch, self.timeout, 1, context, convert))
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                pool.shutdown_now()
            else:
                pool.shutdown(GRACE_ON_FAILURE)
            raise
        if not persistent:
            pool.shutdown(GRACE)
        return tuple(np.asarray(array) for array in _checked_pairs(arrays))


def _fetched(dataset, collate_fn, indices, batch: int, epoch: int) -> tuple:
    """``worker.fetch`` in this process (``num_workers=0``), a ``StopIteration`` that a sample or the collate raises
    a ``DataLoaderError`` naming it, as a worker's failure is named: let through, it would end the loader's
    generators, which Python turns into ``RuntimeError: generator raised StopIteration`` (PEP 479)."""
    progress = {}
    try:
        return worker.fetch(dataset, collate_fn, indices, progress)
    except StopIteration as error:
        step = f"sample {progress['index']}" if progress.get("step") == "sample" else "the collate of samples"
        raise DataLoaderError(f"DataLoader: {step} of batch {batch} of epoch {epoch} (samples {indices.tolist()}) "
                              f"raised {error!r}; a dataset signals a missing sample with IndexError or an error of "
                              f"its own, since StopIteration would end the loader's iteration") from error


def _numpy_arrays(arrays) -> tuple:
    """``arrays`` (a collated batch: NumPy arrays or a framework's tensors) as NumPy arrays, in its layout."""
    values = tuple(np.asarray(to_numpy(array)) for array in arrays)
    return arrays.like(values) if isinstance(arrays, Fields) else values


def _checked_pairs(arrays):
    """``first_sample``'s batch, which ``fit`` and ``evaluate`` read as (x, y): a batch of dict samples is their
    error (``xy``'s), not its first two values taken as x and y."""
    if isinstance(arrays, Fields) and isinstance(arrays.layout, tuple):
        xy(arrays.rebuilt(arrays))
    return arrays
