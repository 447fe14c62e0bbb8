"""Datasets for the DataLoader worker tests, at module level so that worker processes can unpickle them.

Worker processes import this module: it imports NumPy and unidl.data only, never pytest or a framework.
"""

import collections
import gc
import os
import random
import signal
import sys
import threading
import time

import numpy as np

from unidl.data import Dataset, TensorDataset

#: ids that worker_init_fn saw in this process (a worker process has its own copy; threads share it)
INIT_IDS = []


def busy(seconds: float) -> None:
    """A busy Python loop of ``seconds``: a sample stuck in Python code, which an exception raised in its thread
    (``unidl.data.thread_stop``) ends at its next bytecode."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def record_worker_id(worker_id):
    INIT_IDS.append(worker_id)


#: what worker_init_fn drew in this process, [worker id, NumPy's global RNG, Python's random] (see InitDraws)
INIT_DRAWS = []


def record_init_draws(worker_id):
    INIT_DRAWS[:] = [worker_id, np.random.randint(2**31), random.getrandbits(31)]


class Rows(Dataset):
    """Sample i: (features [3i, 3i+1, 3i+2], label i)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return np.arange(3 * index, 3 * index + 3, dtype=np.float32), np.int64(index)


class NoisyRows(Rows):
    """Rows plus noise from NumPy's global RNG and Python's ``random``, as a random augmentation would."""

    def __getitem__(self, index):
        features, label = super().__getitem__(index)
        return features + np.random.normal(size=3).astype(np.float32) + np.float32(random.random()), label


class Draws(Rows):
    """Per sample, one draw of NumPy's global RNG and one of Python's ``random`` (an augmentation's coin flips)."""

    def __getitem__(self, index):
        return np.array([np.random.random(), random.random()])


class SingleArrays(Rows):
    """Samples that are single arrays of 70,000 floats (a batch of 4: above 1 MiB, through shared memory)."""

    def __getitem__(self, index):
        return np.full(70_000, index, np.float32)


class KeyedArrays(Rows):
    """Dict samples: {"x": 70,000 floats, "y": the index} (a batch of 4: above 1 MiB, through shared memory)."""

    def __getitem__(self, index):
        return {"x": np.full(70_000, index, np.float32), "y": index}


class NamedBatches(TensorDataset):
    """A TensorDataset whose own ``batch`` is a namedtuple of its fields."""

    def batch(self, indices):
        return _Fields(*super().batch(indices))


_Fields = named_sample = collections.namedtuple("_Fields", "x y")


class LocalNamedRows(Rows):
    """Samples of a namedtuple class made inside ``__getitem__``, which cannot be pickled."""

    def __getitem__(self, index):
        return collections.namedtuple("Local", "x y")(np.float32(index), index)


class NoisyBatches(TensorDataset):
    """A TensorDataset whose own ``batch`` adds noise from NumPy's global RNG: user code, seeded per batch."""

    def batch(self, indices):
        features, labels = super().batch(indices)
        return features + np.random.normal(size=features.shape).astype(np.float32), labels


class FailingRows(Rows):
    def __init__(self, n, bad_index):
        super().__init__(n)
        self.bad_index = bad_index

    def __getitem__(self, index):
        if index == self.bad_index:
            raise ValueError(f"sample {index} is broken")
        return super().__getitem__(index)


class SleepingRows(Rows):
    """Sleeps ``seconds`` in each sample, or only in sample ``index`` where given (a worker stuck mid-epoch)."""

    def __init__(self, n, seconds, index=None):
        super().__init__(n)
        self.seconds, self.index = seconds, index

    def __getitem__(self, index):
        if self.index in (None, index):
            time.sleep(self.seconds)
        return super().__getitem__(index)


class StuckInPython(Rows):
    """Sample ``index`` runs Python code for ``seconds`` (``how``: "busy", a busy loop; "naps", ``time.sleep`` in
    0.05 s steps), as a sample stuck in a loop would: a worker thread there stops only where an exception is
    raised in it; ``slow`` ({index: seconds}): other samples that run such code for a while, as a healthy slow
    sample does (decoding, augmenting). ``entered`` is set as sample ``index`` begins; ``finished`` records the
    samples whose loop ran out (never stopped), ``interrupted`` (index, exception name) those an exception ended.
    Bounded, so that a thread that nothing stops ends after the test all the same."""

    def __init__(self, n, how, index=0, seconds=5.0, slow=None):
        super().__init__(n)
        self.how, self.index, self.seconds, self.slow = how, index, seconds, dict(slow or {})
        self.entered, self.finished, self.interrupted = threading.Event(), [], []

    def __getitem__(self, index):
        seconds = self.seconds if index == self.index else self.slow.get(index)
        if seconds is not None:
            if index == self.index:
                self.entered.set()
            try:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    if self.how == "naps":
                        time.sleep(0.05)
            except BaseException as error:
                self.interrupted.append((index, type(error).__name__))
                raise
            self.finished.append(index)
        return super().__getitem__(index)


class CollectedThenStuck(Rows):
    """Sample 0 collects garbage whose finalizer runs Python code for ``cleanup`` seconds (someone's temporary
    directory removed, a pool stopped: run by the garbage collector in whichever thread collects, here a worker
    thread in its sample), then is stuck in a busy loop for 5 s. ``log`` records how the finalizer and the sample
    ended."""

    def __init__(self, n, cleanup):
        super().__init__(n)
        self.cleanup, self.log = cleanup, []

    def __getitem__(self, index):
        if index == 0:
            _Finalized(self)  # (a reference cycle: the collection below, in this thread, finalizes it)
            gc.collect()
            try:
                busy(5.0)
                self.log.append("sample ran out")
            except BaseException as error:
                self.log.append(f"sample ended by {type(error).__name__}")
                raise
        return super().__getitem__(index)


class StuckWithCleanup(Rows):
    """Sample 0 is stuck in a busy loop for 5 s; an exception that ends it runs ``cleanup`` seconds of Python code
    on its way out (``except BaseException``: files closed, a lock released), then goes on. ``log`` records it."""

    def __init__(self, n, cleanup):
        super().__init__(n)
        self.cleanup, self.log = cleanup, []

    def __getitem__(self, index):
        if index == 0:
            try:
                busy(5.0)
            except BaseException as error:
                self.log.append(f"sample ended by {type(error).__name__}")
                try:
                    busy(self.cleanup)
                    self.log.append("cleanup finished")
                except BaseException as again:
                    self.log.append(f"cleanup cut short by {type(again).__name__}")
                raise
        return super().__getitem__(index)


class _Finalized:
    """Garbage in a reference cycle whose ``__del__`` runs Python code for its dataset's ``cleanup`` seconds."""

    def __init__(self, dataset):
        self.dataset, self.me = dataset, self

    def __del__(self):
        try:
            busy(self.dataset.cleanup)
            self.dataset.log.append("cleanup finished")
        except BaseException as error:
            self.dataset.log.append(f"cleanup cut short by {type(error).__name__}")
            raise


#: worker ids whose busy_worker_init_fn ran to its end (a thread that nothing stopped)
BUSY_INIT_FINISHED = []


def busy_worker_init_fn(worker_id):
    """A ``worker_init_fn`` stuck in a busy Python loop for 5 s."""
    busy(5.0)
    BUSY_INIT_FINISHED.append(worker_id)


class BusyRows(Rows):
    """Each sample runs a busy Python loop of 0 to ``most`` seconds, a random length per sample."""

    def __init__(self, n, most):
        super().__init__(n)
        self.most = most

    def __getitem__(self, index):
        busy(random.Random(index).uniform(0, self.most))
        return super().__getitem__(index)


class ExitingRows(Rows):
    """Ends its worker process at sample ``index``: ``os._exit(code)``, or SIGKILL when ``code`` is None."""

    def __init__(self, n, index, code):
        super().__init__(n)
        self.index, self.code = index, code

    def __getitem__(self, index):
        if index == self.index:
            if self.code is None:
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(self.code)
        return super().__getitem__(index)


class StuckRows(Rows):
    """Writes ``<pid>-<thread id>`` into ``marker_dir``, then sleeps for ten minutes."""

    def __init__(self, n, marker_dir):
        super().__init__(n)
        self.marker_dir = marker_dir

    def __getitem__(self, index):
        with open(os.path.join(self.marker_dir, f"{os.getpid()}-{threading.get_ident()}"), "w"):
            pass
        time.sleep(600)


class WorkerProbe(Rows):
    """Sample i: [i, worker ids worker_init_fn saw here (-1: none), pid, torch imported, tensorflow imported]."""

    def __getitem__(self, index):
        init_id = INIT_IDS[-1] if INIT_IDS else -1
        return np.array([index, init_id, os.getpid(), "torch" in sys.modules, "tensorflow" in sys.modules],
                        dtype=np.int64)


class InitDraws(Rows):
    """Sample i: [i, *INIT_DRAWS]: the worker that made it and what its ``worker_init_fn`` drew
    (``record_init_draws``)."""

    def __getitem__(self, index):
        return np.array([index, *INIT_DRAWS], dtype=np.int64)


class UnrestorableRows(Rows):
    """Pickles in the main process, but cannot be unpickled in a worker."""

    def __setstate__(self, state):
        raise RuntimeError("this dataset cannot be restored in a worker")


class ExitingOnArrival(Rows):
    """Ends its worker process as it is unpickled there (as a script without the main guard can), before the worker
    reports ready."""

    def __setstate__(self, state):
        os._exit(1)


def failing_worker_init_fn(worker_id):
    raise RuntimeError(f"worker {worker_id} cannot initialise")


class WideRows(Rows):
    """Sample i: ``width`` float32 values ``i, i + 1, ...`` (wide batches travel through shared memory)."""

    def __init__(self, n, width):
        super().__init__(n)
        self.width = width

    def __getitem__(self, index):
        return np.arange(index, index + self.width, dtype=np.float32), np.int64(index)


class WideExitingRows(WideRows):
    """WideRows whose worker process kills itself (SIGKILL) at sample ``index``."""

    def __init__(self, n, width, index):
        super().__init__(n, width)
        self.index = index

    def __getitem__(self, index):
        if index == self.index:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


#: processes that have read a sample of a ``LabelledRows`` with a ``pid_dir`` (one file each, written once)
_READERS = set()


class LabelledRows(Rows):
    """Sample i: (features [sin i, cos i, (i % 4) / 4], label i % 4), four classes a small net learns.

    With ``pid_dir``, each process that reads a sample leaves an empty file named after its pid there, once:
    the number of worker processes that ever read from the dataset."""

    def __init__(self, n, pid_dir=None):
        super().__init__(n)
        self.pid_dir = pid_dir

    def __getitem__(self, index):
        if self.pid_dir is not None and os.getpid() not in _READERS:
            _READERS.add(os.getpid())
            open(os.path.join(self.pid_dir, str(os.getpid())), "w").close()
        features = np.array([np.sin(index), np.cos(index), (index % 4) / 4], dtype=np.float32)
        return features, np.int64(index % 4)


class ComputedRows(Rows):
    """Sample i computed with unidl under the backend and dtype in force: (0.1 * (i + 1) as ``ud.tensor`` holds it,
    the length of the backend's name). unidl is imported when a sample is read, not by this module."""

    def __getitem__(self, index):
        import unidl as ud

        return ud.to_numpy(ud.tensor([0.1 * (index + 1)])).astype(np.float64), np.int64(len(ud.get_backend()))


class SlowFirstDyingLater(Rows):
    """Sample 0 takes ``seconds``; sample ``index`` kills its worker process (SIGKILL): with two workers and one sample
    a batch, worker 1 finishes batch 1 and dies on batch 3 while worker 0 still makes batch 0."""

    def __init__(self, n, seconds, index):
        super().__init__(n)
        self.seconds, self.index = seconds, index

    def __getitem__(self, index):
        if index == 0:
            time.sleep(self.seconds)
        if index == self.index:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


class ForkingWideRows(WideRows):
    """WideRows whose sample 0 starts a child process of the worker (a helper a dataset forks, which inherits the
    worker's open files, its result pipe's write end included) that lives ``seconds``, its pid written to
    ``pid_file``; the worker writes its own pid to ``worker_pid_file``."""

    def __init__(self, n, width, seconds, pid_file, worker_pid_file):
        super().__init__(n, width)
        self.seconds, self.pid_file, self.worker_pid_file = seconds, pid_file, worker_pid_file

    def __getitem__(self, index):
        if index == 0:
            with open(self.worker_pid_file, "w") as file:
                file.write(str(os.getpid()))
            child = os.fork()
            if child == 0:
                time.sleep(self.seconds)
                os._exit(0)
            with open(self.pid_file, "w") as file:
                file.write(str(child))
        return super().__getitem__(index)
