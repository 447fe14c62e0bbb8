"""What a DataLoader worker runs, in a thread or in a process of its own: fetch the samples of one batch,
join them with ``collate_fn`` and send the arrays back, or a report of what failed and where.

A worker process imports only this module, NumPy and the dataset's own module, never a framework:
batches cross to the main process as NumPy arrays, large ones through shared memory
(``shared_batches.py``), others pickled, and become tensors there (see ``pool.py``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import queue
import random
import signal
import sys
import traceback
from dataclasses import dataclass

import numpy as np

from unidl.data import shared_batches
from unidl.data.dataset import Fields, TensorDataset, batched_by_dataset, check_flat_field, flat_fields
from unidl.data.result_pipes import PipeSender
from unidl.data.thread_stop import StopSwitch, WorkerStopped

#: seconds an idle worker process waits for a task before checking that the main process still lives
IDLE_POLL = 0.5
#: how many times a worker thread's loop caught a ``WorkerStopped`` that did not come out of its ``StopSwitch``
#: block (one raised in the worker's own code: ``thread_stop.py`` never raises it there; the tests check it stays 0)
STOPS_OUTSIDE_BLOCKS = 0
#: the two seed streams: a worker's start (and epoch) and each batch
WORKER_STREAM, BATCH_STREAM = 0, 1


def seed_global_rngs(stream: int, seed: int | None, epoch: int, key: int) -> None:
    """Seed NumPy's global RNG, Python's ``random`` and, where the process has imported torch (a dataset drawing
    torchvision-style augmentations from ``torch.rand``), torch's default CPU generator from (stream, loader seed,
    epoch, key); PyTorch's loader seeds torch's in each worker too (never NumPy's).

    Each generator takes words of its own from the seed sequence: NumPy's legacy ``seed`` and Python's
    ``random.seed`` key the same Mersenne Twister alike, so one key made them draw the same numbers (a flip decided
    by ``random.random()`` tied to ``np.random.rand()``'s noise). A loader without a seed (``seed=None`` with
    nothing drawn: slices of arrays, or a state of before draws) seeds from the epoch and key alone, so that its
    batches do not depend on how many workers there are either.
    """
    entropy = [stream, int(epoch), int(key)] + ([1, int(seed)] if seed is not None else [0])
    state = np.random.SeedSequence(entropy).generate_state(10)
    np.random.seed(state[:4])
    random.seed(int.from_bytes(state[4:8].tobytes(), "little"))
    generator = _torch_generator()
    if generator is not None:
        generator.manual_seed(int.from_bytes(state[8:].tobytes(), "little"))


def _torch_generator():
    """torch's default CPU generator where this process has imported torch, else None (never imported here)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "default_generator", None)


@contextlib.contextmanager
def batch_rngs(batch_seed: tuple | None):
    """Run the block with the global RNGs seeded for one batch, ``batch_seed = (seed, epoch, batch)``, and
    give them back their previous state afterwards (the main process's own draws are not disturbed)."""
    if batch_seed is None:
        yield
        return
    numpy_state, python_state = np.random.get_state(), random.getstate()
    generator = _torch_generator()
    torch_state = generator.get_state() if generator is not None else None
    seed_global_rngs(BATCH_STREAM, *batch_seed)
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if torch_state is not None:
            generator.set_state(torch_state)


def fetch(dataset, collate_fn, indices: np.ndarray, progress: dict | None = None,
          stop_switch: StopSwitch | None = None) -> tuple:
    """The batch at ``indices`` as a tuple of arrays: a ``TensorDataset``'s ``batch`` where the loader joins by
    ``default_collate`` (``batched_by_dataset``), else ``collate_fn`` of the samples. ``progress`` records the step
    ("sample" with its "index", or "collate"), so that a failure can name it. ``stop_switch``: a worker thread's,
    whose stop asked (a ``break``, a close) ends the batch before its next sample or the collate (``WorkerStopped``:
    the pool reads nothing more from the thread, which finishes the sample in hand only); each sample and the
    collate is a step of its own there, timed against ``timeout=`` (``StopSwitch.overdue``)."""
    progress = {} if progress is None else progress
    if batched_by_dataset(dataset, collate_fn):
        progress["step"] = "collate"
        arrays = dataset.batch(indices)
        if type(dataset).batch is not TensorDataset.batch:  # (a subclass's own: nested fields as the collate's)
            arrays = flat_fields(arrays)
            for position, field in enumerate(arrays):
                check_flat_field(field, position, f"{type(dataset).__name__}.batch")
        return arrays
    samples = []
    progress["step"] = "sample"
    for index in indices.tolist():
        if stop_switch is not None:
            stop_switch.check()
        progress["index"] = index
        samples.append(dataset[index])
    if stop_switch is not None:  # (the collate is a step of its own: its time is not the last sample's)
        stop_switch.check()
    progress["step"], progress["index"] = "collate", None
    arrays = flat_fields(collate_fn(samples))
    names = arrays.layout if isinstance(arrays, Fields) and isinstance(arrays.layout, tuple) else None
    for position, field in enumerate(arrays):  # (their numbers are checked as they become tensors: number_array)
        check_flat_field(field, position if names is None else repr(names[position]),
                         f"the collate of samples ({getattr(collate_fn, '__name__', 'collate_fn')})")
    return arrays


@dataclass
class Failure:
    """What went wrong in a worker, in plain data that crosses a process boundary."""

    worker_id: int
    batch: int | None        # None: the worker failed while starting
    index: int | None        # the sample being read (stage "sample")
    stage: str               # "start", "worker_init_fn"; or, for a batch, "sample", "collate", "convert"
    summary: str             # "ValueError: the message"
    traceback: str           # the worker's traceback, as text
    exception: object        # the exception itself (threads), pickled bytes (processes), or None

    @classmethod
    def capture(cls, error: BaseException, worker_id: int, batch, index, stage: str, portable: bool):
        exception = error
        if portable:
            try:
                exception = pickle.dumps(error)
            except Exception:  # an exception that does not pickle still gets reported, as text
                exception = None
        return cls(worker_id, batch, index, stage, f"{type(error).__name__}: {error}",
                   "".join(traceback.format_exception(error)), exception)

    def original(self) -> BaseException | None:
        """The exception raised in the worker, when it could be carried over."""
        if isinstance(self.exception, bytes):
            try:
                return pickle.loads(self.exception)
            except Exception:
                return None
        return self.exception


#: the batch layouts (namedtuple classes, dicts' keys) this worker found to pickle
_pickled_layouts: set = set()


def _portable(arrays) -> tuple:
    """The arrays as NumPy arrays that will pickle, and their layout too (a namedtuple class made inside a function
    does not): a message that fails to pickle in the result queue's background thread would be lost, and the main
    process would wait for it."""
    portable = tuple(np.asarray(array) for array in arrays)
    if isinstance(arrays, Fields):
        layout = arrays.layout
        if layout not in _pickled_layouts:
            try:
                pickle.dumps(layout)
            except Exception as error:  # (pickle's errors vary: PicklingError, AttributeError, TypeError)
                raise TypeError(f"the batch's layout {layout!r} (a namedtuple class, or a dict's keys) cannot be "
                                f"pickled to reach the main process from a process worker ({error}); define the "
                                f"namedtuple at a module's top level, or use worker_type='thread'") from None
            _pickled_layouts.add(layout)
        arrays = arrays.like(portable)
    else:
        arrays = portable
    for array in arrays:
        if array.dtype.hasobject:
            pickle.dumps(array)  # raises here, reported as a failure of this batch
    return arrays


def _in_block(stop_switch: StopSwitch | None, call, *args):
    """``call(*args)``, inside ``stop_switch``'s block where the worker has one (a thread's: where the pool may stop
    it, ``thread_stop.py``); a ``WorkerStopped`` that comes out of the block is marked as stopped there
    (``in_block``), so that ``serve`` can tell one that landed in the worker's own code."""
    if stop_switch is None:
        return call(*args)
    try:
        with stop_switch:
            return call(*args)
    except WorkerStopped as stopped:
        stopped.in_block = True
        raise


def _run_batch(worker_id, dataset, collate_fn, task, portable: bool, current, stop_switch):
    _, generation, batch, indices, batch_seed, context, convert, shared = task
    progress = {"step": "sample", "index": None}
    current[0], current[1] = generation, batch

    def job():
        with batch_rngs(batch_seed):
            arrays = fetch(dataset, collate_fn, indices, progress, stop_switch)
        progress["step"] = "convert"
        if convert is not None:
            return convert(arrays)
        arrays = _portable(arrays)
        if shared is not None:  # (segment name, smallest batch worth it), from the main process
            name, min_bytes = shared
            if shared_batches.worth_sharing(arrays, min_bytes):
                return shared_batches.write(name, arrays) or arrays
        return arrays

    try:
        # (a worker thread's block: where the pool may stop it, thread_stop.py)
        payload = (_in_block(stop_switch, context.copy().run, job) if context is not None else
                   _in_block(stop_switch, job))
    except WorkerStopped:
        raise
    except BaseException as error:  # SystemExit in a sample is a failure of that sample, too
        return ("failed", worker_id, generation,
                Failure.capture(error, worker_id, batch, progress["index"], progress["step"], portable))
    finally:
        current[1] = -1
    return ("batch", worker_id, generation, batch, payload)


def serve(worker_id: int, dataset, collate_fn, worker_init_fn, tasks, results, current, seed, epoch,
          seeding: bool, portable: bool, parent=None, stop_switch=None) -> None:
    """A worker's life: seed, ``worker_init_fn(worker_id)``, then batches until a ``None`` task, or until its
    ``stop_switch`` (a worker thread's, ``thread_stop.py``) raises ``WorkerStopped`` in the user's code.

    ``current``: two integers, (generation, batch) of the batch in hand, batch -1 when idle; in shared
    memory for a process, so that the main process can name the batch a worker died on.
    ``seeding``: seed the global RNGs from (seed, epoch, worker_id) now and at each new epoch, and from
    (seed, epoch, batch) for each batch (processes only: threads share one global RNG).
    """
    global STOPS_OUTSIDE_BLOCKS
    try:
        _serve(worker_id, dataset, collate_fn, worker_init_fn, tasks, results, current, seed, epoch, seeding,
               portable, parent, stop_switch)
    except WorkerStopped as stopped:  # the pool stopped this thread, and reads nothing more from it
        if not getattr(stopped, "in_block", False):
            STOPS_OUTSIDE_BLOCKS += 1


def _serve(worker_id, dataset, collate_fn, worker_init_fn, tasks, results, current, seed, epoch, seeding,
           portable, parent, stop_switch) -> None:
    if seeding:
        seed_global_rngs(WORKER_STREAM, seed, epoch, worker_id)
    if worker_init_fn is not None:
        try:
            _in_block(stop_switch, worker_init_fn, worker_id)
        except WorkerStopped:
            raise
        except BaseException as error:
            results.put(("failed", worker_id, None,
                         Failure.capture(error, worker_id, None, None, "worker_init_fn", portable)))
            return
    while True:
        try:
            task = tasks.get(timeout=IDLE_POLL)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # the main process is gone: nobody will read or stop us
            continue
        if task is None:
            return
        if task[0] == "epoch":
            _, seed, epoch, settings = task
            if settings is not None:  # (a process's: the caller's backend, device and dtype for this epoch)
                from unidl import config

                config.adopt_settings(settings)
            if seeding:
                seed_global_rngs(WORKER_STREAM, seed, epoch, worker_id)
            continue
        results.put(_run_batch(worker_id, dataset, collate_fn, task, portable, current, stop_switch))


def process_main(worker_id: int, payload: bytes, tasks, results, current, seed, epoch, settings=None) -> None:
    """Entry point of a worker process: take the caller's backend, device and dtype (``settings``:
    ``config.settings()``), unpickle (dataset, collate_fn, worker_init_fn), report ready, serve; ``results``: the
    write end of its result pipe (``result_pipes.py``)."""
    # Ctrl-C reaches the whole process group; the main process handles it and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results = PipeSender(results)  # (each message in the pipe before the worker goes on: result_pipes.py)
    if settings is not None:
        from unidl import config

        config.adopt_settings(settings)
    try:
        dataset, collate_fn, worker_init_fn = pickle.loads(payload)
    except BaseException as error:
        results.put(("failed", worker_id, None, Failure.capture(error, worker_id, None, None, "start", True)))
        return
    results.put(("ready", worker_id))
    serve(worker_id, dataset, collate_fn, worker_init_fn, tasks, results, current, seed, epoch,
          seeding=True, portable=True, parent=multiprocessing.parent_process())
