"""DataLoader workers, threads and real processes: the same batches as without workers, failures reported
with the worker, sample and traceback, timeouts, dead workers, Ctrl-C, and no worker left behind."""

import _thread
import contextlib
import errno
import gc
import inspect
import json
import multiprocessing
import operator
import os
import pickle
import pathlib
import random
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref

import numpy as np
import pytest

import unidl as ud
from unidl import config
from unidl import random as unidl_random
from unidl.data import DataLoader, TensorDataset, shared_batches, thread_stop, worker
from unidl.data.dataloader import _check_pin_memory
from unidl.data.pool import WorkerPool, in_finalizer
from unidl.data.thread_stop import StopSwitch, WorkerStopped
from unidl.errors import DataLoaderError, ShapeMismatchError
from tests.data.worker_datasets import (INIT_IDS, ComputedRows, Draws, ExitingOnArrival, ExitingRows, FailingRows,
                                        InitDraws, KeyedArrays, LabelledRows, LocalNamedRows, NamedBatches,
                                        NoisyBatches, NoisyRows, Rows, SingleArrays, SleepingRows, StuckInPython,
                                        CollectedThenStuck, StuckWithCleanup,
                                        BusyRows, BUSY_INIT_FINISHED, busy_worker_init_fn, UnrestorableRows,
                                        SlowFirstDyingLater, ForkingWideRows,
                                        WideExitingRows, WideRows, WorkerProbe, failing_worker_init_fn, named_sample,
                                        record_init_draws, record_worker_id)

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER_TYPES = ["thread", "process"]


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C raises ``KeyboardInterrupt`` here, as at a terminal, even where the suite was started in the
    background of a shell without job control, whose children inherit SIGINT ignored (Python then installs no
    handler of its own). A child started meanwhile gets SIGINT's default action, as a handler is reset on exec
    and an ignored signal is not."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def child_pids() -> set[int]:
    """Live child processes of this process, from /proc; the resource tracker that ``multiprocessing``
    starts once per process for its semaphores is not a worker and does not count."""
    from multiprocessing import resource_tracker
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == os.getpid() and state != "Z" and int(entry) != tracker:
            children.add(int(entry))
    return children


@pytest.fixture(autouse=True)
def children_before():
    """Child processes that existed before the test (none of its workers may remain after it).

    The objects alive before the test are frozen for it (``gc.freeze``): the garbage collections after it, and
    those the test runs, go through the objects the test made (its loaders, pools, epochs, tracebacks), not the
    half million that the frameworks loaded in this process hold (about half a second a collection). A frozen
    object is never freed, so these collections free at most what a full one would: a worker they leave alive
    fails the test as before."""
    before = child_pids(), set(multiprocessing.active_children())
    gc.freeze()
    try:
        yield before
        gc.collect()
        assert_no_workers_left(before)
    finally:
        gc.unfreeze()


def assert_no_workers_left(before):
    assert set(multiprocessing.active_children()) <= before[1]
    assert child_pids() <= before[0]


def batches(loader):
    return [tuple(ud.to_numpy(field).tolist() for field in batch) for batch in loader]


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_same_batches_as_without_workers(worker_type):
    def epochs(**workers):
        loader = DataLoader(Rows(23), batch_size=4, shuffle=True, seed=5, **workers)
        return [batches(loader) for _ in range(2)]

    reference = epochs()
    assert epochs(num_workers=2, worker_type=worker_type, persistent_workers=True) == reference
    tensor_loader = DataLoader(TensorDataset(np.arange(10.0), np.arange(10)), batch_size=3, num_workers=2,
                               worker_type=worker_type)
    assert [batch[1] for batch in batches(tensor_loader)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.parametrize("dataset", [NoisyRows(10), NoisyBatches(np.zeros((10, 3), np.float32), np.arange(10))],
                         ids=["getitem", "own-batch"])
def test_random_dataset_gives_the_same_batches_with_0_or_2_process_workers_and_in_every_run(dataset):
    """A random ``__getitem__``, or a ``TensorDataset`` subclass's own random ``batch`` (user code too: it was run
    unseeded without workers), gives the same batches in every run, with or without worker processes."""
    def epochs(**workers):
        loader = DataLoader(dataset, batch_size=3, shuffle=True, seed=1, **workers)
        return [batches(loader) for _ in range(2)]

    np.random.seed(123)
    random.seed(123)
    reference = epochs()
    # the main process's own global RNGs carry on as if the loader had not drawn from them
    assert (np.random.random(), random.random()) == (np.random.RandomState(123).random_sample(),
                                                     random.Random(123).random())
    assert reference == epochs()
    assert reference[0] != reference[1]  # a new epoch, new noise
    assert epochs(num_workers=2, worker_type="process", persistent_workers=True) == reference


def test_an_unshuffled_loaders_random_samples_follow_manual_seed_and_numpy_and_random_differ():
    """A loader without a seed that runs the user's code draws its batch seeds from unidl's generator, shuffled
    or not: ``manual_seed`` reproduces its augmentations and another seed changes them (every unseeded loader drew
    the same numbers in every run, whatever the seed); with or without worker processes alike. NumPy's global RNG
    and Python's ``random`` draw different numbers (one key made them equal)."""
    def draws(seed, **workers):
        ud.manual_seed(seed)
        return np.concatenate([ud.to_numpy(batch) for batch in DataLoader(Draws(8), batch_size=4, **workers)])

    first = draws(0)
    assert np.array_equal(first, draws(0)) and not np.array_equal(first, draws(1))
    assert np.array_equal(first, draws(0, num_workers=2, worker_type="process"))
    assert not np.isin(first[:, 0], first[:, 1]).any()
    # a loader over plain arrays runs none of the user's code: nothing drawn, unidl's generator left as it was
    ud.manual_seed(0)
    untouched = unidl_random.generator().integers(1 << 30)
    ud.manual_seed(0)
    DataLoader(TensorDataset(np.zeros(4)), batch_size=2)
    assert unidl_random.generator().integers(1 << 30) == untouched


@pytest.mark.parametrize("workers", [{}, {"num_workers": 2}, {"num_workers": 2, "worker_type": "process"}],
                         ids=["none", "threads", "processes"])
def test_samples_that_are_single_arrays_batch_to_one_tensor_as_torchs(workers):
    """A loader over samples that are single arrays yields each batch as one tensor, as torch's loader does (a
    1-tuple: ``len(batch)`` was 1, and iterating a batch gave the one tensor), with or without workers, through
    shared memory too (batches of 1.1 MB); a TensorDataset of one array still yields 1-tuples, as torch's."""
    batches = list(DataLoader(SingleArrays(10), batch_size=4, **workers))
    assert [tuple(batch.shape) for batch in batches] == [(4, 70_000), (4, 70_000), (2, 70_000)]
    np.testing.assert_array_equal(np.concatenate([ud.to_numpy(b)[:, 0] for b in batches]), np.arange(10))
    assert [len(batch) for batch in DataLoader(TensorDataset(np.zeros((10, 2))), batch_size=4)] == [1, 1, 1]
    named = DataLoader(NamedBatches(np.zeros((8, 3), np.float32), np.arange(8)), batch_size=4, **workers)
    # a namedtuple batch of a subclass's own, or of namedtuple samples, is that namedtuple, as PyTorch's
    # default_collate keeps it (a plain tuple of fields before)
    assert [type(batch).__name__ for batch in named] == ["_Fields", "_Fields"]
    samples = DataLoader([named_sample(np.float32(i), i) for i in range(6)], batch_size=4, **workers)
    assert [ud.to_numpy(batch.y).tolist() for batch in samples] == [[0, 1, 2, 3], [4, 5]]
    # dict samples: a dict of tensors by key, as PyTorch's default_collate makes it
    keyed = list(DataLoader(KeyedArrays(6), batch_size=4, **workers))
    assert [sorted(batch) for batch in keyed] == [["x", "y"]] * 2
    assert [ud.to_numpy(batch["y"]).tolist() for batch in keyed] == [[0, 1, 2, 3], [4, 5]]
    assert tuple(keyed[0]["x"].shape) == (4, 70_000) and ud.to_numpy(keyed[1]["x"])[1, 0] == 5
    # a namedtuple class that cannot be pickled: a process worker's error naming it (its lost message hung the loop)
    local = DataLoader(LocalNamedRows(4), batch_size=2, **workers)
    if workers.get("worker_type") != "process":
        assert [ud.to_numpy(batch.y).tolist() for batch in local] == [[0, 1], [2, 3]]
    else:
        with pytest.raises(DataLoaderError, match=r"cannot be pickled to reach the main process .* define the "
                                                  r"namedtuple at a module's top level, or use worker_type='thread'"):
            list(local)


def test_a_dataset_drawing_from_torchs_generator_gives_the_same_batches_with_or_without_workers():
    """torch's default generator is seeded per batch as NumPy's and Python's are, where the process has imported
    torch: the same batches in every run, whatever the caller's torch state, with or without a worker process, and
    the caller's torch state as it was (worker processes drew from an unseeded generator: other batches each run)."""
    import torch

    from tests.data.torch_rows import TorchNoisyRows

    def epoch(**workers):
        return batches(DataLoader(TorchNoisyRows(), batch_size=2, seed=3, **workers))

    torch.manual_seed(1)
    reference = epoch()
    after = torch.rand(1)
    torch.manual_seed(2)
    assert epoch() == reference
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after)  # (the loader's draws left the caller's generator alone)
    assert epoch(num_workers=1, worker_type="process") == reference


def test_worker_processes_compute_under_the_callers_backend_and_dtype():
    """A spawned worker process took UNIDL_BACKEND's backend (else the first installed) and float32, whatever the
    caller had chosen: a sample computed with unidl was not the one ``num_workers=0`` gives (float32's 0.1 under
    float64, a torch tensor under jax)."""
    if "jax" not in ud.available_backends():
        pytest.skip("needs the jax backend, whose framework a worker imports in about a second")
    persistent = DataLoader(ComputedRows(2), batch_size=2, num_workers=1, worker_type="process",
                            persistent_workers=True)
    with ud.use_backend("jax"), ud.use_dtype("float64"):
        reference = batches(DataLoader(ComputedRows(2), batch_size=2))
        assert reference == [([[0.1], [0.2]], [3, 3])]
        assert batches(DataLoader(ComputedRows(2), batch_size=2, num_workers=1, worker_type="process")) == reference
        assert batches(persistent) == reference
    with ud.use_backend("torch"):  # persistent workers take each epoch's
        assert batches(persistent) == batches(DataLoader(ComputedRows(2), batch_size=2)) != reference
    del persistent  # (its workers stop)


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_a_raising_sample_names_the_worker_the_sample_and_keeps_the_traceback(worker_type):
    loader = DataLoader(FailingRows(12, bad_index=7), batch_size=2, num_workers=2, worker_type=worker_type)
    with pytest.raises(DataLoaderError) as caught:
        batches(loader)
    message = str(caught.value)
    # sample 7 is in batch 3, which worker 1 of 2 prepares
    assert "DataLoader worker 1" in message and "sample 7 of batch 3 of epoch 0" in message
    assert "ValueError: sample 7 is broken" in message
    assert "Traceback in the worker" in message and "worker_datasets.py" in message and "__getitem__" in message
    assert (caught.value.worker_id, caught.value.batch, caught.value.index) == (1, 3, 7)
    assert isinstance(caught.value.__cause__, ValueError)
    # an instance of the sample's error class too: ``except ValueError`` catches it, as without workers (and as
    # PyTorch's loader raises it again); its text is the message, not a KeyError's quoted repr
    assert isinstance(caught.value, ValueError) and str(caught.value) == message
    again = pickle.loads(pickle.dumps(caught.value))  # (a class of its own: pickled by the original's)
    assert isinstance(again, DataLoaderError) and isinstance(again, ValueError) and str(again) == message


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_a_sleeping_sample_times_out_naming_the_worker(worker_type):
    # threads cannot be stopped from outside: keep the abandoned one's sleep short
    loader = DataLoader(SleepingRows(4, seconds=30 if worker_type == "process" else 3), batch_size=1,
                        num_workers=1, worker_type=worker_type, timeout=1)
    began = time.monotonic()
    with pytest.raises(DataLoaderError, match=r"DataLoader worker 0 \(.*\) did not deliver batch 0 .*timeout=1 s") \
            as caught:
        next(iter(loader))
    elapsed = time.monotonic() - began
    assert 1 <= elapsed < 8  # one second after the worker started (a process takes a while to start)
    # a thread inside one long C call (time.sleep) outlives the loader (Python raises the exception that stops it
    # only when the call returns): said, naming the thread and where it is, with the way out
    said = re.compile(r"; worker thread unidl-data-worker-0 \(at worker_datasets\.py:\d+ in __getitem__\) could "
                      r"not be stopped within 0\.2 s: .* a thread inside one call that does not return to Python "
                      r"until it ends \(a long time\.sleep, a blocking read, C code\) keeps running in this process "
                      r"until that call returns, one whose sample catches BaseException until that sample returns; "
                      r"worker_type='process' runs samples in worker processes, which a timeout or Ctrl-C ends$")
    assert bool(said.search(str(caught.value))) == (worker_type == "thread")


def worker_threads_left(threads_before, by: float) -> list[str]:
    """The names of the loader's worker threads (new since ``threads_before``) still alive at ``by``
    (``time.monotonic()``), each joined until then."""
    threads = [thread for thread in set(threading.enumerate()) - threads_before
               if thread.name.startswith("unidl-data-worker")]
    for thread in threads:
        thread.join(max(0.0, by - time.monotonic()))
    return sorted(thread.name for thread in threads if thread.is_alive())


@pytest.mark.parametrize("how", ["busy", "naps"])
def test_a_worker_thread_stuck_in_python_code_is_stopped_by_its_timeout(how):
    """A thread in a Python loop, or sleeping in 0.05 s steps, is stopped by an exception raised in its sample
    (CPython cannot end a thread otherwise): none outlives the timeout's error by more than a second (they had
    run on for the sample's 5 s, and a real stuck sample's for ever), and the error says it was stopped."""
    dataset, threads_before = StuckInPython(4, how), set(threading.enumerate())
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_type="thread", timeout=0.3)
    with pytest.raises(DataLoaderError, match=r"^DataLoader worker 0 \(thread unidl-data-worker-0\) did not deliver "
                                              r"batch 0 of epoch 0 \(samples \[0\]\) within timeout=0\.3 s; its "
                                              r"thread was stopped$"):
        next(iter(loader))
    assert worker_threads_left(threads_before, time.monotonic() + 1.0) == []
    assert dataset.entered.is_set() and dataset.finished == []  # stopped inside the sample, not by its end


def test_a_worker_thread_stuck_in_worker_init_fn_is_stopped_by_its_timeout():
    """``worker_init_fn`` is the user's code in the worker too (its time counts towards a thread's timeout): a
    thread stuck there in a Python loop is stopped as one stuck in a sample is."""
    threads_before = set(threading.enumerate())
    loader = DataLoader(Rows(4), batch_size=1, num_workers=1, worker_type="thread", timeout=0.3,
                        worker_init_fn=busy_worker_init_fn)
    with pytest.raises(DataLoaderError, match=r"did not deliver batch 0 .*timeout=0\.3 s; its thread was stopped$"):
        next(iter(loader))
    assert worker_threads_left(threads_before, time.monotonic() + 1.0) == []
    assert BUSY_INIT_FINISHED == []


@pytest.mark.parametrize("how", ["busy", "naps"])
def test_a_timeout_stops_the_stuck_thread_and_lets_the_others_finish_a_sample_within_it(how):
    """A timeout declares stuck the batch it waited for, and any sample that has run longer than the timeout: its
    thread is interrupted in that sample, and the other worker's healthy slow sample (1.2 s, begun 0.9 s in, after
    its first; 0.6 s into it as the stop comes, within ``timeout=1.5``), runs to its end (no ``WorkerStopped`` in
    it); that thread then ends without taking its next batch (sample 5, queued before the stop)."""
    dataset = StuckInPython(8, how, index=0, slow={1: 0.9, 3: 1.2, 5: 0.1})
    threads_before = set(threading.enumerate())
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_type="thread", timeout=1.5, prefetch=3)
    with pytest.raises(DataLoaderError, match=r"^DataLoader worker 0 \(thread unidl-data-worker-0\) did not deliver "
                                              r"batch 0 of epoch 0 \(samples \[0\]\) within timeout=1\.5 s; its "
                                              r"thread was stopped$"):
        next(iter(loader))
    assert dataset.interrupted == [(0, "WorkerStopped")]  # the stuck sample, and only it, at once
    assert dataset.finished == [1]  # (sample 3 was in hand as the stop came)
    assert worker_threads_left(threads_before, time.monotonic() + 1.2 + 1.0) == []
    assert dataset.finished == [1, 3] and dataset.interrupted == [(0, "WorkerStopped")]


@pytest.mark.parametrize("how", ["busy", "naps"])
def test_a_timeout_stops_every_worker_thread_whose_sample_ran_past_it(how):
    """Both workers' samples spin in Python (5 s each, as stuck samples would for ever): the timeout's error names
    the batch it waited for, and the other thread, whose sample has run past the timeout too, is stuck by the same
    definition and is stopped with it; no worker thread outlives the error by a second (the other one ran on)."""
    dataset = StuckInPython(4, how, index=0, slow={1: 5.0})
    threads_before = set(threading.enumerate())
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_type="thread", timeout=0.3)
    with pytest.raises(DataLoaderError, match=r"^DataLoader worker 0 \(thread unidl-data-worker-0\) did not deliver "
                                              r"batch 0 of epoch 0 \(samples \[0\]\) within timeout=0\.3 s; its "
                                              r"thread was stopped$"):
        next(iter(loader))
    assert worker_threads_left(threads_before, time.monotonic() + 1.0) == []
    assert sorted(dataset.interrupted) == [(0, "WorkerStopped"), (1, "WorkerStopped")] and dataset.finished == []


class SlowSamplesSeen(StuckInPython):
    """``StuckInPython`` that tells as each slow sample begins (``began[index]``, an event)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.began = {index: threading.Event() for index in self.slow}

    def __getitem__(self, index):
        if index in self.began:
            self.began[index].set()
        return super().__getitem__(index)


@pytest.mark.parametrize("ending", ["break", "persistent loader dropped"])
@pytest.mark.parametrize("how", ["busy", "naps"])
def test_after_a_break_with_a_timeout_a_sample_is_stopped_once_it_runs_past_it(how, ending):
    """A ``break`` (or a dropped loader with persistent workers) interrupts no sample within ``timeout=``, and the
    caller goes on at once; a sample in hand that then runs past the timeout is stuck by the user's definition and
    is stopped as it does (sample 1, 5 s: it ran on for those 5 s, and a stuck one's for ever), while the other
    worker's healthy sample (2, 0.3 s within ``timeout=0.6``) runs to its end; no worker thread is left a second
    after the timeout, nor the watcher that stopped the stuck one."""
    dataset = SlowSamplesSeen(6, how, index=1, seconds=5.0, slow={2: 0.3})
    threads_before, escaped = set(threading.enumerate()), []
    previous_hook, threading.excepthook = threading.excepthook, lambda args: escaped.append(args.exc_type)
    try:
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_type="thread", timeout=0.6,
                            persistent_workers=ending != "break")
        if ending == "break":
            for batch in loader:
                assert batches([batch]) == [([[0.0, 1.0, 2.0]], [0])]  # worker 0's; worker 1 is in sample 1
                assert dataset.entered.wait(10) and dataset.began[2].wait(10)  # and worker 0 in sample 2
                break
        else:
            epoch = iter(loader)
            assert batches([next(epoch)]) == [([[0.0, 1.0, 2.0]], [0])]
            assert dataset.entered.wait(10) and dataset.began[2].wait(10)
            del epoch, loader
            gc.collect()
        assert dataset.interrupted == []  # the stop did not wait for the timeout, nor interrupt within it
        assert worker_threads_left(threads_before, time.monotonic() + 0.6 + 1.0) == []
    finally:
        threading.excepthook = previous_hook
    assert dataset.interrupted == [(1, "WorkerStopped")] and dataset.finished == [2] and escaped == []


class SleepingSeen(SleepingRows):
    """``SleepingRows`` that tells as its sleeping sample begins (``entered``, an event)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()

    def __getitem__(self, index):
        if index == self.index:
            self.entered.set()
        return super().__getitem__(index)


def test_a_sample_that_runs_past_the_timeout_after_a_break_inside_one_c_call_is_named_in_a_warning():
    """A sample that runs past ``timeout=`` after a ``break`` inside one long C call (``time.sleep(1.5)``) cannot be
    stopped by the exception the watcher raises in it: the watcher names its thread, where it is and why, in a
    ``RuntimeWarning``, as the timeout's error names such a thread, and ends; the thread ends with its call."""
    dataset, threads_before = SleepingSeen(4, seconds=1.5, index=1), set(threading.enumerate())
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_type="thread", timeout=0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in loader:
            assert dataset.entered.wait(10)  # worker 1 is in sample 1
            break
        watchers = [thread for thread in set(threading.enumerate()) - threads_before
                    if thread.name == "unidl-data-worker-watch"]
        assert len(watchers) == 1
        watchers[0].join(5.0)
    said = [str(warning.message) for warning in caught if issubclass(warning.category, RuntimeWarning)]
    assert len(said) == 1 and re.match(r"DataLoader: worker thread unidl-data-worker-1 \(at worker_datasets\.py:\d+ "
                                       r"in __getitem__\) could not be stopped within 0\.2 s: .*\(a long time\.sleep",
                                       said[0])
    assert worker_threads_left(threads_before, time.monotonic() + 1.5 + 1.0) == []


def test_a_stop_that_a_finalizer_in_the_sample_takes_is_raised_once_more(monkeypatch):
    """The exception that stops a thread can land in a garbage collection's finalizer that runs in its sample:
    it ends that finalizer, and Python drops it there ("Exception ignored in ...", ``sys.unraisablehook``), so that
    the sample goes on. A thread still in its sample after a moment and not on its way out gets it once more:
    the stuck sample stops, and the timeout's error says so (it named the thread as one that could not be stopped,
    inside one C call or catching BaseException, neither of which was the case)."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    dataset, threads_before = CollectedThenStuck(4, cleanup=3.0), set(threading.enumerate())
    loader = DataLoader(dataset, batch_size=1, num_workers=1, worker_type="thread", timeout=0.3)
    with pytest.raises(DataLoaderError, match=r"did not deliver batch 0 .*timeout=0\.3 s; its thread was stopped$"):
        next(iter(loader))
    assert worker_threads_left(threads_before, time.monotonic() + 1.0) == []
    assert dataset.log == ["cleanup cut short by WorkerStopped", "sample ended by WorkerStopped"]
    assert dropped == [WorkerStopped]


def test_the_second_stop_never_cuts_short_a_sample_on_its_way_out():
    """The stop raised once more (for one a finalizer took) is not raised in a thread that is handling the first
    in its sample (an ``except BaseException`` or ``finally`` cleaning up before it lets it out): that cleanup runs
    to its end, and the thread ends after it."""
    dataset, threads_before = StuckWithCleanup(4, cleanup=0.15), set(threading.enumerate())
    loader = DataLoader(dataset, batch_size=1, num_workers=1, worker_type="thread", timeout=0.3)
    with pytest.raises(DataLoaderError, match=r"did not deliver batch 0 .*timeout=0\.3 s"):
        next(iter(loader))
    assert worker_threads_left(threads_before, time.monotonic() + 1.0) == []
    assert dataset.log == ["sample ended by WorkerStopped", "cleanup finished"]


@pytest.mark.parametrize("how", ["busy", "naps"])
def test_worker_threads_stuck_in_python_code_stop_on_ctrl_c(how):
    """Ctrl-C (a real SIGINT while the main thread waits for the stuck batch) asks to stop now: the thread stuck in
    a sample is stopped within a second, with no exception anywhere but in that sample: Ctrl-C's
    ``KeyboardInterrupt`` comes out, nothing reaches ``threading.excepthook`` (a ``WorkerStopped`` escaping the
    worker's own code) and the main thread goes on."""
    dataset, threads_before, escaped = StuckInPython(4, how, index=1), set(threading.enumerate()), []
    previous_hook, threading.excepthook = threading.excepthook, lambda args: escaped.append(args.exc_type)
    try:
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_type="thread")
        epoch = iter(loader)
        assert batches([next(epoch)]) == [([[0.0, 1.0, 2.0]], [0])]  # worker 0's; worker 1 is stuck in sample 1
        assert dataset.entered.wait(10)
        sent = []
        ctrl_c_after(0.2, sent)
        with pytest.raises(KeyboardInterrupt):
            next(epoch)  # batch 1, which never comes
        stopped_by = sent[0] + 1.0
        assert worker_threads_left(threads_before, stopped_by) == []
        assert sum(range(100_000)) == 4_999_950_000  # Python code of the main thread runs on after the stop
    finally:
        threading.excepthook = previous_hook
    assert dataset.finished == [] and escaped == []
    assert dataset.interrupted == [(1, "WorkerStopped")]


@pytest.mark.parametrize("ending", ["close", "break", "persistent loader dropped"])
@pytest.mark.parametrize("how", ["busy", "naps"])
def test_a_break_a_close_or_a_dropped_loader_lets_worker_threads_finish_the_sample_in_hand(how, ending):
    """Ending the iteration (``Epoch.close()``, a ``break``) or dropping a loader whose persistent workers are busy
    asks no sample to stop now: a worker thread in a healthy slow sample (1.2 s of Python code) is not interrupted
    (an exception raised anywhere in the dataset's, a library's or a framework's code could leave a shared state
    half-changed or a lock held); it finishes that sample and ends, without taking its next batch (sample 3, queued
    before the stop). Nothing reaches ``threading.excepthook`` and the main thread goes on meanwhile."""
    dataset = StuckInPython(6, how, index=1, seconds=1.2, slow={3: 1.2})
    threads_before, escaped = set(threading.enumerate()), []
    previous_hook, threading.excepthook = threading.excepthook, lambda args: escaped.append(args.exc_type)
    try:
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_type="thread",
                            persistent_workers=ending == "persistent loader dropped")
        if ending == "break":
            for batch in loader:
                assert batches([batch]) == [([[0.0, 1.0, 2.0]], [0])]  # worker 0's; worker 1 is in sample 1
                assert dataset.entered.wait(10)
                break
        else:
            epoch = iter(loader)
            assert batches([next(epoch)]) == [([[0.0, 1.0, 2.0]], [0])]
            assert dataset.entered.wait(10)
            if ending == "close":
                epoch.close()
            else:
                del epoch, loader
                gc.collect()
        assert sum(range(100_000)) == 4_999_950_000  # Python code of the main thread runs on after the stop
        assert worker_threads_left(threads_before, time.monotonic() + 1.2 + 1.0) == []
    finally:
        threading.excepthook = previous_hook
    assert dataset.finished == [1] and dataset.interrupted == [] and escaped == []


@pytest.mark.parametrize("interrupt", ["no", None, 1])
def test_close_with_an_interrupt_that_is_no_bool_is_a_type_error_and_the_epoch_goes_on(interrupt):
    """``Epoch.close(interrupt=...)`` takes True or False: a string (taken as True: the workers' samples were
    interrupted) or None (taken as False) is a ``TypeError`` naming it, raised before the epoch ends, which then
    goes on to its last batch."""
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    epoch = iter(DataLoader(TensorDataset(x, np.arange(6)), batch_size=2, num_workers=1, worker_type="thread"))
    first = next(epoch)
    with pytest.raises(TypeError, match=re.escape(f"Epoch.close: interrupt must be True or False, got {interrupt!r}")):
        epoch.close(interrupt=interrupt)
    assert [int(labels[0]) for _, labels in [first, *epoch]] == [0, 2, 4]

def test_stopping_worker_threads_at_any_moment_raises_nothing_outside_their_samples():
    """Pools of worker threads stopped at once (no grace, every thread interrupted, as Ctrl-C does) while their
    samples (busy loops of 0 to 2 ms) start and end: the exception that stops a thread lands in a sample, never in
    the worker's own loop (``worker.STOPS_OUTSIDE_BLOCKS``), the main thread, another thread or ``threading``'s
    code as a worker ends (``threading.excepthook``), and every thread ends."""
    escaped, previous_hook = [], threading.excepthook
    threading.excepthook = lambda args: escaped.append(args.exc_type)
    threads_before, raised_in_samples = set(threading.enumerate()), 0
    outside_before = worker.STOPS_OUTSIDE_BLOCKS
    try:
        for trial in range(60):
            pool = WorkerPool("thread", 3, BusyRows(64, most=0.002), ud.data.default_collate, None, None, 0, 0)
            pool.start()
            delivered = pool.deliver([np.array([i]) for i in range(64)], 0, 0, 0, None, 2)
            for _ in range(trial % 6):
                next(delivered)
            time.sleep(random.Random(trial).uniform(0, 0.003))  # stopped mid-sample, between samples, at their ends
            assert pool.shutdown(0.0, interrupt=range(3)) is None, f"trial {trial}"
            raised_in_samples += sum(switch.raised for switch in pool._switches)
            delivered.close()
            assert sum(range(10_000)) == 49_995_000
    finally:
        threading.excepthook = previous_hook
    assert escaped == []
    assert worker_threads_left(threads_before, time.monotonic() + 1.0) == []
    # none landed in the worker's own loop either, where it caught it and ended quietly
    assert worker.STOPS_OUTSIDE_BLOCKS == outside_before
    assert raised_in_samples > 0  # (about a quarter of the stops land mid-sample, the rest between samples)


def test_a_stop_switch_raises_only_inside_its_block():
    """``StopSwitch.stop()`` raises ``WorkerStopped`` in the thread inside the switch's block, which the block lets
    out, and nothing in a thread that has left it (whose id a new thread may have taken); a stopped switch's block
    does not begin; the thread's own code after the block runs with nothing pending."""
    def in_a_thread(inside):
        switch, seen, entered, stopped = StopSwitch(), [], threading.Event(), threading.Event()
        left = threading.Event()  # set once the thread is out of the block

        def body():
            try:
                with switch:
                    entered.set()
                    if inside:
                        while not stopped.wait(0.001):  # Python code: the exception lands at once
                            pass
                seen.append("block ran out")
            except WorkerStopped:
                seen.append("WorkerStopped")
            entered.set()
            left.set()
            stopped.wait(5)
            try:
                total = 0
                for value in range(200_000):  # backward jumps, where a pending exception would land
                    total += value
                seen.append("after the block: clean")
                with switch:
                    seen.append("a block after the stop ran")
            except BaseException as error:
                seen.append(type(error).__name__)

        thread = threading.Thread(target=body)
        thread.start()
        assert entered.wait(5)
        if not inside:
            assert left.wait(5)
        raised = switch.stop()
        stopped.set()
        thread.join(5)
        assert not thread.is_alive()
        return raised, seen

    assert in_a_thread(inside=True) == (True, ["WorkerStopped", "after the block: clean", "WorkerStopped"])
    assert in_a_thread(inside=False) == (False, ["block ran out", "after the block: clean", "WorkerStopped"])


def test_two_stops_at_once_raise_in_the_thread_once(monkeypatch):
    """Two threads stopping one switch at the same moment (the main thread's stop and a garbage collection's
    finalizer, say) raise ``WorkerStopped`` in its thread once: whether it was raised is read and set under the
    switch's lock (read before it, both stops could pass the check and raise)."""
    switch, stopped, entered = StopSwitch(), threading.Event(), threading.Event()
    raised_by, real_raise = [], thread_stop._raise_in

    def counted(thread_id, exception):
        if threading.current_thread().name.startswith("stopper"):
            raised_by.append(threading.current_thread().name)
        return real_raise(thread_id, exception)

    monkeypatch.setattr(thread_stop, "_raise_in", counted)

    def body():
        try:
            with switch:
                entered.set()
                while not stopped.is_set():  # Python code: the exception lands at once
                    pass
        except WorkerStopped:
            pass

    class Watched:
        """The switch's lock, counting the threads that wait for it."""

        def __init__(self, lock):
            self.lock, self.waiting = lock, 0

        def __enter__(self):
            self.waiting += 1
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    thread = threading.Thread(target=body)
    thread.start()
    assert entered.wait(5)
    switch._lock = watched = Watched(switch._lock)
    with watched.lock:  # both stops reach the lock while it is held, then go one after the other
        stoppers = [threading.Thread(target=switch.stop, name=f"stopper-{n}") for n in range(2)]
        for stopper in stoppers:
            stopper.start()
        deadline = time.monotonic() + 5
        while watched.waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
    for stopper in stoppers:
        stopper.join(5)
    stopped.set()
    thread.join(5)
    assert not thread.is_alive() and switch.raised
    assert len(raised_by) == 1


@pytest.mark.parametrize("code, expected", [(3, "exited unexpectedly with exit code 3"),
                                            (None, "was killed by signal SIGKILL")])
def test_a_dying_worker_process_is_named_with_its_exit_code(code, expected):
    loader = DataLoader(ExitingRows(6, index=2, code=code), batch_size=1, num_workers=2, worker_type="process")
    with pytest.raises(DataLoaderError, match=r"DataLoader worker 0 \(process \d+\) " + expected) as caught:
        batches(loader)
    assert "batch 2 of epoch 0" in str(caught.value)
    assert caught.value.exitcode == (code if code is not None else -signal.SIGKILL)


@pytest.mark.parametrize("width", [3, 100_000], ids=["small", "800KB"])
def test_a_worker_process_that_dies_right_after_a_batch_delivers_that_batch_first(width):
    """A worker process that ends abruptly (SIGKILL here; ``os._exit`` or a crash alike) just after it finished a
    batch: that batch comes, every time, and the error is the next one's. (Through a ``multiprocessing.Queue``,
    whose feeder thread dies with the process, the finished batch was lost at random, the error one batch early,
    and one larger than the pipe's buffer, 800 KB here (under shared memory's 1 MiB), was cut halfway, leaving
    the main process waiting for its rest forever.)"""
    loader = DataLoader(WideExitingRows(8, width, index=4), batch_size=2, num_workers=1, worker_type="process")
    labels = []
    with hang_guard(30), pytest.raises(DataLoaderError, match=r"DataLoader worker 0 \(process \d+\) was killed by "
                                                              r"signal SIGKILL .*while preparing batch 2 of epoch 0"):
        for x, y in loader:
            labels.append(ud.to_numpy(y).tolist())
    assert labels == [[0, 1], [2, 3]] and loader.state_dict()["position"] == 2


def test_a_dead_workers_error_waits_for_the_batches_before_its_own_from_live_workers():
    """Two workers: worker 1 finishes batch 1 and dies on batch 3 while worker 0 still makes batch 0. Batches 0, 1
    and 2 come (worker 0's made after the death was seen), then the error of batch 3, the first one missing: the
    death of another worker than the one whose batch is in turn was raised at once (nothing delivered)."""
    loader = DataLoader(SlowFirstDyingLater(8, seconds=1, index=3), batch_size=1, num_workers=2,
                        worker_type="process")
    labels = []
    with hang_guard(30), pytest.raises(DataLoaderError, match=r"DataLoader worker 1 \(process \d+\) was killed by "
                                                              r"signal SIGKILL .*while preparing batch 3 of epoch 0"):
        for x, y in loader:
            labels.append(int(ud.to_numpy(y)[0]))
    assert labels == [0, 1, 2] and loader.state_dict()["position"] == 3


def test_a_worker_killed_mid_message_is_an_error_even_where_its_child_holds_the_pipe(tmp_path):
    """A worker process killed while it writes a batch into a full pipe (the main process was busy: training), whose
    dataset had forked a helper process that inherited the pipe's write end: the main process reads only whole
    messages without blocking, so the cut batch is never waited for (a blocking read waited for its rest as long as
    the helper lived) and the loader raises the worker's death."""
    child_file, worker_file = tmp_path / "child", tmp_path / "worker"
    dataset = ForkingWideRows(16, 112_000, seconds=60, pid_file=str(child_file), worker_pid_file=str(worker_file))
    loader = DataLoader(dataset, batch_size=1, num_workers=1, worker_type="process", prefetch=8)
    epoch = iter(loader)
    try:
        with hang_guard(30):
            next(epoch)
            time.sleep(2)  # the worker fills its pipe (448 KB batches) and waits, mid-message, for it to be read
            os.kill(int(worker_file.read_text()), signal.SIGKILL)
            with pytest.raises(DataLoaderError, match=r"DataLoader worker 0 \(process \d+\) was killed by signal "
                                                      r"SIGKILL"):
                for _ in epoch:
                    pass
    finally:
        os.kill(int(child_file.read_text()), signal.SIGKILL)


def test_a_persistent_loader_restarted_after_failures_keeps_no_closed_pools(children_before):
    """A persistent loader whose epochs fail (a sample raises: its workers stop, the next epoch starts new ones)
    keeps its newest pool only: each closed one, with its processes' file descriptors, went when the next replaced
    it (they stayed alive, with the loader, two descriptors a process each)."""
    loader = DataLoader(FailingRows(4, bad_index=3), batch_size=2, num_workers=2, worker_type="process",
                        persistent_workers=True)
    pools = []
    for _ in range(6):
        with pytest.raises(DataLoaderError, match="sample 3 is broken"):
            batches(loader)
        pools.append(weakref.ref(loader._pool))
    gc.collect()
    assert [pool() is None for pool in pools] == [True] * 5 + [False]
    assert_no_workers_left(children_before)


@pytest.mark.parametrize("dataset, worker_init_fn, expected", [
    (UnrestorableRows(4), None, "failed while starting .*RuntimeError: this dataset cannot be restored"),
    (Rows(4), failing_worker_init_fn, r"failed in worker_init_fn\(0\): RuntimeError: worker 0 cannot initialise"),
    (ExitingOnArrival(4), None, r"exited unexpectedly with exit code 1 while starting, before it could report ready; "
                                r"its stderr above holds the cause; .*if __name__ == \"__main__\":"),
], ids=["unpickling", "worker_init_fn", "dying"])
def test_a_worker_process_that_cannot_start_says_why(dataset, worker_init_fn, expected):
    loader = DataLoader(dataset, batch_size=2, num_workers=1, worker_type="process", worker_init_fn=worker_init_fn)
    with pytest.raises(DataLoaderError, match=r"DataLoader worker 0 \(process \d+\) " + expected):
        batches(loader)


_INTERRUPTED = """
import atexit, multiprocessing, sys, time
# registered first, run last: after threading has joined non-daemon threads and multiprocessing its children
atexit.register(lambda: print("exit handlers done:", time.time(), flush=True))
from unidl.data import DataLoader
from tests.data.worker_datasets import StuckRows
loader = DataLoader(StuckRows(8, sys.argv[1]), batch_size=1, num_workers=2, worker_type=sys.argv[2])
try:
    for batch in loader:
        pass
except KeyboardInterrupt:
    # the loader has stopped its worker processes by now, before any exit handler could
    print("stopped:", time.time(), len(multiprocessing.active_children()), flush=True)
    raise
"""


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_ctrl_c_stops_a_stuck_iteration_within_a_second_and_leaves_no_worker(worker_type, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, str(tmp_path), worker_type], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(tmp_path)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        markers = os.listdir(tmp_path)
        assert len(markers) == 2, process.communicate(timeout=5)
        interrupted = time.time()
        os.kill(process.pid, signal.SIGINT)
        # a hang guard, not a bound: after the exit handlers comes the framework's own teardown (about 1 s
        # of CPU for torch, many times that on a loaded machine), which is not the loader's
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            # a worker process the loader failed to stop keeps the pipes open: end it too, so that a failure
            # of this test is a failure, never a suite that waits for ever
            for marker in os.listdir(tmp_path):
                pid = int(marker.split("-")[0])
                if pid != process.pid and os.path.exists(f"/proc/{pid}"):
                    os.kill(pid, signal.SIGKILL)
            process.communicate(timeout=30)
    assert "KeyboardInterrupt" in stderr, stderr
    assert process.returncode in (-signal.SIGINT, 130, 1)
    lines = {line.split(":")[0]: line.split(":")[1].split() for line in stdout.splitlines()}
    stopped = float(lines["stopped"][0]) - interrupted
    assert stopped < 1.0, f"iteration took {stopped:.2f} s to stop after SIGINT"
    assert lines["stopped"][1] == "0"  # no worker process alive when KeyboardInterrupt left the loop
    # nothing the loader left (a thread or process to join) holds up the interpreter's exit
    handlers_done = float(lines["exit handlers done"][0]) - interrupted
    assert handlers_done < 5.0, f"the exit handlers ended {handlers_done:.2f} s after SIGINT"
    worker_pids = {int(marker.split("-")[0]) for marker in markers} - {process.pid}
    assert len(worker_pids) == (2 if worker_type == "process" else 0)
    assert [pid for pid in worker_pids if os.path.exists(f"/proc/{pid}")] == []


class CtrlCAtLine:
    """A trace function that sends this process a real SIGINT when the main thread reaches the ``at``-th
    line run in ``unidl/data/`` or in ``multiprocessing``'s spawn launcher (counting from when it is
    installed): Ctrl-C landing exactly there.
    It records the function of each line; ``at=0``: at the first line of function ``until``, if given."""

    def __init__(self, at: int, until: str | None = None):
        self.at, self.until, self.functions, self.lines, self.where = at, until, [], [], None

    def __call__(self, frame, event, arg):
        traced = "/unidl/data/" in frame.f_code.co_filename or frame.f_code.co_name == "_launch"
        return self.line if traced else None

    def line(self, frame, event, arg):
        if event == "line":
            self.functions.append(frame.f_code.co_name)
            self.lines.append(frame.f_lineno)
            if len(self.functions) == self.at or not self.at and frame.f_code.co_name == self.until:
                self.where = f"line {frame.f_lineno} of {os.path.basename(frame.f_code.co_filename)}"
                signal.raise_signal(signal.SIGINT)
        return self.line


def ctrl_c_inside_keras_logs_conversion(landed: list):
    """A trace function (``sys.settrace``) that sends this process a real SIGINT once, at the line inside the
    ``try`` of Keras's log conversion (``keras.src.utils.python_utils.pythonify_logs``, whose bare ``except``
    swallows it), the first time the line runs while ``landed`` is empty; it then appends "Ctrl-C" to ``landed``."""
    from keras.src.utils import python_utils

    source, first = inspect.getsourcelines(python_utils.pythonify_logs)
    inside_try = first + next(n for n, text in enumerate(source) if "value = float(value)" in text)

    def ctrl_c_in_the_try(frame, event, arg):
        if frame.f_code is not python_utils.pythonify_logs.__code__:
            return None

        def line(frame, event, arg):
            if event == "line" and frame.f_lineno == inside_try and not landed:
                landed.append("Ctrl-C")
                signal.raise_signal(signal.SIGINT)
            return line
        return line

    return ctrl_c_in_the_try


def assert_workers_stopped(worker_type, threads_before, children_before, where):
    if worker_type == "process":
        assert child_pids() <= children_before[0], f"a worker process outlived Ctrl-C at {where}"
        return
    for thread in set(threading.enumerate()) - threads_before:
        if thread.name.startswith("unidl-data-worker"):
            thread.join(1.0)  # told to stop, a thread ends as soon as its queue hands it the message
            assert not thread.is_alive(), f"a worker thread outlived Ctrl-C at {where}"


def entry(function) -> tuple[str, int]:
    """(name, line) of the first line ``function`` runs. In the functions given here it is a ``try`` line, which
    the ``try``'s own handlers do not cover: Ctrl-C there is Ctrl-C at the function's entry, which no code of
    the function can catch."""
    code = function.__code__
    return code.co_name, min(line for *_, line in code.co_lines() if line is not None and line > code.co_firstlineno)


def interrupted_epoch(worker_type, at: int, children_before, until: str | None = None) -> CtrlCAtLine:
    """An epoch of a loader with two workers and Ctrl-C at line ``at``. KeyboardInterrupt must come out with
    every worker stopped already, while its traceback is alive (the REPL keeps it in ``sys.last_traceback``,
    and with it every frame it went through): wherever Ctrl-C landed, while the workers start or stop, while
    the loader waits for or hands out batches, between batches in the epoch's own code, on the first lines of
    the loader's ``finally``."""
    loader = DataLoader(Rows(2), batch_size=1, num_workers=2, worker_type=worker_type)
    threads_before, tracer, previous = set(threading.enumerate()), CtrlCAtLine(at, until), sys.gettrace()
    sys.settrace(tracer)
    try:
        for _ in loader:
            pass
        assert tracer.where is None, f"Ctrl-C at {tracer.where} did not stop the loop"
    except KeyboardInterrupt:
        sys.settrace(previous)
        assert_workers_stopped(worker_type, threads_before, children_before, tracer.where)
    finally:
        sys.settrace(previous)
    assert_workers_stopped(worker_type, threads_before, children_before, tracer.where)  # the iteration is gone
    return tracer


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_ctrl_c_landing_anywhere_leaves_no_worker(worker_type, children_before):
    """Ctrl-C at each line the loader runs in turn, from the start of its workers to their stop (process
    workers: each line of the spawn launcher where the first process runs but is not yet recorded):
    KeyboardInterrupt comes out and no worker is left."""
    # the lines of an epoch without Ctrl-C (with process workers: up to their first batch)
    life = interrupted_epoch(worker_type, 0, children_before, until=None if worker_type == "thread" else "deliver")
    functions = life.functions
    first = functions.index("start") + 1  # before it, there is no worker to leave
    if worker_type == "thread":
        points = range(first, len(functions) + 1)
    else:
        # the first worker's launch from the moment its process runs, before Process.start() records it
        from multiprocessing import popen_spawn_posix
        source, begins = inspect.getsourcelines(popen_spawn_posix.Popen._launch)
        running = begins + next(n for n, text in enumerate(source) if "spawnv_passfds" in text)
        launch = functions.index("_launch")
        launched = {}  # each line once (loops run some several times): line -> when it first ran
        for at in range(launch + 1, functions.index("start", launch) + 1):
            if functions[at - 1] == "_launch" and life.lines[at - 1] > running:
                launched.setdefault(life.lines[at - 1], at)
        points = list(launched.values())  # the rest of starting is the same code as for threads
    assert len(points) >= 3
    for at in points:
        interrupted_epoch(worker_type, at, children_before)


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_ctrl_c_as_next_enters_the_epoch_between_batches_stops_its_workers_and_loses_no_batch(worker_type,
                                                                                             children_before):
    """A SIGINT that arrives just before ``next(epoch)`` (``_thread.interrupt_main``: Python's handling of a real
    one, with no Python bytecode run between it and the call) is handled at the first bytecode the epoch runs,
    the first check for signals: ``KeyboardInterrupt`` comes out with the workers stopped while the epoch is still
    referenced (as a traceback keeps it), and no batch was taken (the loader's position is the batches delivered).
    The old ``Epoch.__next__`` was a Python function, whose first bytecode lies before its ``try``: the workers lived
    on as long as the epoch did."""
    threads_before = set(threading.enumerate())
    loader = DataLoader(Rows(6), batch_size=1, num_workers=2, worker_type=worker_type)
    epoch = iter(loader)
    assert ud.to_numpy(next(epoch)[1]).tolist() == [0]
    with pytest.raises(KeyboardInterrupt):  # (map calls the two from C: interrupt_main(SIGINT), then next(epoch))
        list(map(operator.call, [_thread.interrupt_main, next], [signal.SIGINT, epoch]))
    assert_workers_stopped(worker_type, threads_before, children_before, "the start of next(epoch)")
    assert loader.state_dict()["position"] == 1
    assert list(epoch) == []  # (an epoch that Ctrl-C ended yields nothing more)


def test_ctrl_c_in_a_step_of_fit_stops_the_workers_before_keyboard_interrupt_leaves_fit(children_before):
    """Ctrl-C during a training step (raised here where a step's would come out, after the second batch):
    ``fit``'s frame, which the traceback keeps, holds the epoch, yet its workers have stopped by then."""
    class CtrlC(ud.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    threads_before = set(threading.enumerate())
    model = ud.models.TwoLayerNet(3, 4, 8)
    with pytest.raises(KeyboardInterrupt) as caught:
        ud.fit(model, DataLoader(Rows(8), batch_size=2, num_workers=2), loss=ud.nn.CrossEntropyLoss(),
               optimizer=ud.optim.SGD(model.parameters(), lr=0.1), verbose=0, callbacks=[CtrlC()], eager=True)
    assert "fit" in [item.name for item in caught.traceback]  # its frame, with the epoch, is still alive
    assert_workers_stopped("thread", threads_before, children_before, "a step of fit")


def test_ctrl_c_in_a_step_of_fit_interrupts_a_worker_thread_stuck_in_a_sample():
    """Ctrl-C in a step of ``fit`` (raised where a step's would come out, after the first batch) asks to stop now, as
    one in the loader's wait does: the worker thread stuck in sample 1 meanwhile is interrupted there (``fit``
    closes the epoch with ``interrupt``), not left to run until its sample returns, as a ``break`` leaves it."""
    dataset = StuckInPython(8, "busy", index=1)

    class CtrlC(ud.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            assert dataset.entered.wait(10)
            raise KeyboardInterrupt

    threads_before = set(threading.enumerate())
    model = ud.models.TwoLayerNet(3, 4, 8)
    with pytest.raises(KeyboardInterrupt):
        ud.fit(model, DataLoader(dataset, batch_size=1, num_workers=2), loss=ud.nn.CrossEntropyLoss(),
               optimizer=ud.optim.SGD(model.parameters(), lr=0.1), verbose=0, callbacks=[CtrlC()], eager=True)
    assert worker_threads_left(threads_before, time.monotonic() + 1.0) == []
    assert dataset.interrupted == [(1, "WorkerStopped")] and dataset.finished == []


def ctrl_c_after(seconds: float, sent: list) -> None:
    """From a thread of its own: wait ``seconds``, note the time and send this process a real SIGINT (Ctrl-C)."""
    def send():
        time.sleep(seconds)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=send, name="ctrl-c", daemon=True).start()


def test_a_real_ctrl_c_during_fit_stops_it_within_a_second_with_no_worker_left_and_the_model_usable(
        backend, children_before, tmp_path):
    """A real SIGINT, sent from a thread while ``fit`` trains on batches from a worker process (then from threads),
    lands wherever the main thread is: in a framework's compiled step or op, in the loader's wait for a batch, in a
    callback. ``KeyboardInterrupt`` leaves ``fit`` within a second with every worker stopped (``fit``'s frame, which
    the traceback keeps, still holds the epoch), and the model and optimizer train and evaluate afterwards (on jax
    a Ctrl-C as the compiled step returned once left parameters that were deleted arrays: their buffers had gone
    to the step). The loader read its first sample in one process for both fit's metrics and TensorBoard's graph."""
    x, y = np.stack([LabelledRows(64)[i][0] for i in range(64)]), np.arange(64) % 4
    threads_before = set(threading.enumerate())
    model = ud.models.TwoLayerNet(3, 16, 4)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    for worker_type, workers in (("process", 1), ("thread", 2)):
        readers = tmp_path / worker_type  # a file per process that read samples
        readers.mkdir()
        loader = DataLoader(LabelledRows(16384, str(readers)), batch_size=8, num_workers=workers,
                            worker_type=worker_type)
        steps, sent = [], []

        class CtrlC(ud.callbacks.Callback):
            def on_batch_end(self, batch, logs=None):
                steps.append(batch)
                if batch == 0:  # training runs: Ctrl-C lands steps later, wherever fit is then
                    ctrl_c_after(0.1, sent)

        graph = ud.callbacks.TensorBoard(str(tmp_path / "logs" / worker_type), write_graph=True)
        with hang_guard(60), pytest.raises(KeyboardInterrupt) as caught:
            ud.fit(model, loader, loss="cross_entropy", optimizer=optimizer, verbose=0, callbacks=[CtrlC(), graph])
        stopped = time.monotonic()
        assert sent and len(steps) > 1, "Ctrl-C did not land while fit trained"
        assert stopped - sent[0] < 1.0, f"fit took {stopped - sent[0]:.2f} s to stop after Ctrl-C ({worker_type}s)"
        assert "fit" in [item.name for item in caught.traceback]  # its frame, with the epoch, is still alive
        assert_workers_stopped(worker_type, threads_before, children_before, f"a Ctrl-C in fit ({worker_type}s)")
        if worker_type == "process":  # one process read the first sample, one served the epoch
            assert len(os.listdir(readers)) == 2, sorted(os.listdir(readers))
    before = {name: np.array(ud.to_numpy(value)) for name, value in model.state_dict().items()}
    history = ud.fit(model, (x, y), batch_size=8, loss="cross_entropy", optimizer=optimizer, verbose=0)
    weights = {name: np.array(ud.to_numpy(value)) for name, value in model.state_dict().items()}
    assert np.isfinite(history.history["loss"][0]) and all(not np.array_equal(weights[k], before[k]) for k in before)
    # evaluate's loss, against the cross-entropy of the two-layer net written out in NumPy from those weights
    hidden = np.maximum(x @ weights["linear1.weight"].T + weights["linear1.bias"], 0)
    logits = hidden @ weights["linear2.weight"].T + weights["linear2.bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y])
    np.testing.assert_allclose(ud.evaluate(model, (x, y), loss="cross_entropy")["loss"], expected, rtol=1e-5)


def test_a_ctrl_c_that_keras_s_own_trainer_swallows_still_stops_fit(children_before):
    """Keras's own trainer (the keras backend's with ``eager=True``, and on Keras's other frameworks) converts its logs
    at each batch's end under a bare ``except``: a real SIGINT landing there, inside that ``try``, raises a
    ``KeyboardInterrupt`` that Keras drops. ``fit`` raises it again at that batch's end, workers stopped."""
    threads_before, trained = set(threading.enumerate()), []
    ctrl_c_in_the_try = ctrl_c_inside_keras_logs_conversion(trained)

    with ud.use_backend("keras"):
        model = ud.models.TwoLayerNet(3, 16, 4)
        loader = DataLoader(LabelledRows(64), batch_size=8, num_workers=2)
        previous = sys.gettrace()
        sys.settrace(ctrl_c_in_the_try)
        try:
            with pytest.raises(KeyboardInterrupt):
                ud.fit(model, loader, loss="cross_entropy", optimizer="sgd", verbose=0, eager=True,
                       callbacks=[lambda epoch, logs: trained.append(epoch)])
        finally:
            sys.settrace(previous)
    assert trained == ["Ctrl-C"]  # it landed, and the epoch did not end
    assert_workers_stopped("thread", threads_before, children_before, "Keras's logs conversion")


def test_a_ctrl_c_that_keras_s_own_trainer_swallows_still_stops_a_train_step():
    """A keras ``train_step`` runs Keras's ``train_on_batch`` where Keras's trainer runs it (``eager=True``, and on
    Keras's other frameworks), which converts its logs under the same bare ``except``: a real SIGINT landing
    there ends the step with ``KeyboardInterrupt`` (the step ran: its update is in the weights), so that a user's
    own loop of steps stops; the step trains on after it."""
    landed = []
    ctrl_c_in_the_try = ctrl_c_inside_keras_logs_conversion(landed)

    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model, loss = ud.models.TwoLayerNet(3, 16, 4), ud.nn.CrossEntropyLoss()
        step = ud.train_step(model, loss, ud.optim.SGD(model.parameters(), lr=0.1), eager=True)
        x, y = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32), np.arange(8) % 4
        first_loss = float(step(x, y))
        before = [np.array(p) for p in model.state_dict().values()]
        previous = sys.gettrace()
        sys.settrace(ctrl_c_in_the_try)
        try:
            with pytest.raises(KeyboardInterrupt):
                step(x, y)
        finally:
            sys.settrace(previous)
        assert landed == ["Ctrl-C"]
        assert any(not np.array_equal(a, np.array(b)) for a, b in zip(before, model.state_dict().values()))
        assert float(step(x, y)) < first_loss


def test_ctrl_c_in_the_finalizer_of_a_dropped_pool_leaves_no_worker(monkeypatch):
    """A pool dropped without ``shutdown()`` is stopped by its finalizer, where the garbage goes. Ctrl-C at each
    line it runs must not cut that stop short (the KeyboardInterrupt itself Python drops: it reports what a
    finalizer raises as unraisable). Excepted: the finalizer's entry, before its ``try``."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: dropped.append(report.exc_type))

    def drop_pool(at):
        pool = WorkerPool("thread", 2, Rows(2), None, None, None, 0, 0)
        pool.start()
        threads, tasks, tracer, previous = list(pool._workers), list(pool._tasks), CtrlCAtLine(at), sys.gettrace()
        sys.settrace(tracer)
        try:
            del pool
        finally:
            sys.settrace(previous)
        return tracer, threads, tasks

    lines = len(drop_pool(0)[0].functions)
    assert dropped == []
    assert lines >= 20
    for at in range(1, lines + 1):
        tracer, threads, tasks = drop_pool(at)
        assert dropped.pop() is KeyboardInterrupt
        if (tracer.functions[-1], tracer.lines[-1]) == entry(in_finalizer):
            for channel in tasks:  # the workers it left running: stop them here
                channel.put(None)
        for thread in threads:
            thread.join(1.0)
            assert not thread.is_alive(), f"a worker thread outlived Ctrl-C at {tracer.where}"


def test_persistent_process_workers_keep_their_pids_and_ran_worker_init_fn_with_their_ids(children_before):
    loader = DataLoader(WorkerProbe(8), batch_size=2, num_workers=2, worker_type="process",
                        persistent_workers=True, worker_init_fn=record_worker_id)
    epochs = [np.concatenate([ud.to_numpy(batch) for batch in loader]) for _ in range(2)]
    for rows in epochs:
        assert rows[:, 0].tolist() == list(range(8))
        by_worker = {init_id: set(rows[rows[:, 1] == init_id, 2].tolist()) for init_id in (0, 1)}
        assert sorted(rows[:, 1].tolist()) == [0] * 4 + [1] * 4  # batches go round-robin to workers 0, 1
        assert all(len(pids) == 1 for pids in by_worker.values())
    assert set(epochs[0][:, 2].tolist()) == set(epochs[1][:, 2].tolist())  # same processes
    assert len(set(epochs[0][:, 2].tolist()) - {os.getpid()}) == 2
    assert len(child_pids() - children_before[0]) == 2  # kept between epochs...
    del loader
    gc.collect()
    assert_no_workers_left(children_before)             # ...until the loader goes


def test_worker_init_fn_in_worker_processes_draws_from_generators_seeded_by_the_loader_seed(children_before):
    """NumPy's global RNG and Python's ``random`` are seeded from (loader seed, epoch, worker id) before
    ``worker_init_fn`` runs in a worker process: its draws repeat from run to run under the same loader seed,
    differ between the workers (and between the two generators), and change with the loader seed."""
    def init_draws(seed):
        loader = DataLoader(InitDraws(4), batch_size=1, num_workers=2, worker_type="process", seed=seed,
                            worker_init_fn=record_init_draws)
        rows = np.concatenate([ud.to_numpy(batch) for batch in loader])
        assert rows[:, 0].tolist() == [0, 1, 2, 3]
        by_worker = {int(row[1]): tuple(row[2:].tolist()) for row in rows}
        assert sorted(by_worker) == [0, 1] and len({tuple(row[1:].tolist()) for row in rows}) == 2  # one init each
        return by_worker

    first = init_draws(seed=5)
    assert init_draws(seed=5) == first  # new worker processes, the same draws
    assert first[0] != first[1] and len(set(first[0] + first[1])) == 4
    other = init_draws(seed=6)
    assert all(set(other[worker]).isdisjoint(first[worker]) for worker in (0, 1))
    assert_no_workers_left(children_before)


def test_worker_threads_run_worker_init_fn_with_their_ids():
    INIT_IDS.clear()
    batches(DataLoader(Rows(6), batch_size=2, num_workers=3, worker_init_fn=record_worker_id))
    assert sorted(INIT_IDS) == [0, 1, 2]


def test_worker_processes_import_no_framework():
    pytest.importorskip("torch")
    import torch  # noqa: F401  (the parent has a framework loaded; its workers must not)
    rows = np.concatenate([ud.to_numpy(batch) for batch in DataLoader(
        WorkerProbe(4), batch_size=2, num_workers=1, worker_type="process")])
    assert rows[:, 2].tolist() != [os.getpid()] * 4
    assert rows[:, 3:].tolist() == [[0, 0]] * 4


@pytest.mark.parametrize("dataset", [NoisyRows(20), TensorDataset(np.arange(20.0), np.arange(20))],
                         ids=["generic", "tensor"])
def test_break_and_resume_with_process_workers(dataset, children_before):
    def make():
        return DataLoader(dataset, batch_size=3, shuffle=True, seed=2, num_workers=2, worker_type="process")

    full = batches(DataLoader(dataset, batch_size=3, shuffle=True, seed=2))
    loader = make()
    taken = []
    for batch in loader:
        taken.append(tuple(ud.to_numpy(field).tolist() for field in batch))
        if len(taken) == 3:
            break
    gc.collect()
    assert_no_workers_left(children_before)  # the abandoned iterator took its workers with it
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    assert taken + batches(resumed) == full


def test_unpicklable_objects_are_named():
    unpicklable = Rows(4)
    unpicklable.transform = lambda x: x
    with pytest.raises(DataLoaderError, match=r"the dataset .* cannot be pickled.*worker_type='thread'"):
        next(iter(DataLoader(unpicklable, batch_size=2, num_workers=1, worker_type="process")))
    with pytest.raises(DataLoaderError, match=r"the collate_fn .*<lambda>.* cannot be pickled"):
        next(iter(DataLoader(Rows(4), batch_size=2, num_workers=1, worker_type="process",
                             collate_fn=lambda samples: samples)))


def test_an_older_iterator_cannot_steal_batches_from_a_newer_one_on_persistent_workers():
    loader = DataLoader(Rows(8), batch_size=2, num_workers=2, persistent_workers=True)
    older = iter(loader)
    next(older)
    newer = iter(loader)
    assert batches(newer)[0] == ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [0, 1])
    with pytest.raises(DataLoaderError, match="a newer iteration"):
        next(older)
    assert len(batches(loader)) == 4  # the workers still serve the loader


def test_pin_memory_is_accepted_where_the_backend_pins(monkeypatch):
    """The loader asks the backend (``Backend.pins_memory``): torch on a CUDA device pins, nothing else does."""
    from unidl.backends import load

    monkeypatch.setattr(config, "resolve_device", lambda requested, backend: "cuda:0")
    _check_pin_memory(load("torch"))
    with pytest.raises(ValueError, match="the tensorflow backend on device 'cuda:0'"):
        _check_pin_memory(load("tensorflow"))


def test_pin_memory_is_refused_where_nothing_can_pin(backend):
    with ud.use_device("cpu"), pytest.raises(ValueError, match=f"pin_memory=True: the {backend} backend on "
                                                                 f"device 'cpu'"):
        DataLoader(Rows(4), batch_size=2, pin_memory=True)


@pytest.mark.parametrize("settings, message", [
    ({"persistent_workers": True}, "persistent_workers need"),
    ({"worker_init_fn": record_worker_id}, "worker_init_fn need"),
    ({"timeout": 5}, "timeout need"),
    ({"multiprocessing_context": "spawn"}, "multiprocessing_context"),
    ({"prefetch": 3}, r"prefetch need\(s\) num_workers > 0"),  # (they were ignored)
    ({"worker_type": "process"}, r"worker_type need\(s\) num_workers > 0"),
    ({"num_workers": 1, "worker_type": "fork"}, "worker_type must be one of"),
    ({"num_workers": 1, "timeout": -1}, "timeout must be"),
    ({"num_workers": 1, "multiprocessing_context": "spawn"}, "needs worker_type='process'"),
    ({"num_workers": 1, "worker_type": "process", "multiprocessing_context": "nope"}, "not a start method"),
])
def test_bad_worker_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(Rows(4), batch_size=2, **settings)


# ---- batches through shared memory ------------------------------------------------------------

def our_segments() -> list[str]:
    """Shared-memory segments that this process's loaders named (``shared_batches.segment_name``)."""
    mine = shared_batches.segment_name().rsplit("-", 1)[0] + "-"
    return [name for name in os.listdir(shared_batches.DIRECTORY) if name.startswith(mine)]


def test_large_batches_come_through_shared_memory_and_leave_no_segment(monkeypatch):
    reads = []
    read = shared_batches.read
    monkeypatch.setattr(shared_batches, "read", lambda batch: reads.append(batch.name) or read(batch))
    dataset = WideRows(12, 2**16)  # batches of 4 x 256 KiB: shared_batches.MIN_BYTES
    reference = batches(DataLoader(dataset, batch_size=4, shuffle=True, seed=3))
    assert batches(DataLoader(dataset, batch_size=4, shuffle=True, seed=3, num_workers=1,
                              worker_type="process")) == reference
    assert len(reads) == 3 and our_segments() == []


def test_no_segment_outlives_a_stopped_epoch_a_failure_a_killed_worker_or_persistent_workers(monkeypatch):
    monkeypatch.setattr(shared_batches, "MIN_BYTES", 0)  # every batch through shared memory
    loader = DataLoader(WideRows(16, 8), batch_size=1, num_workers=1, worker_type="process", prefetch=4)
    for _ in loader:
        break  # 3 more batches in flight, being written or already waiting in the result queue
    gc.collect()
    assert our_segments() == []
    with pytest.raises(DataLoaderError, match="sample 3 is broken"):
        batches(DataLoader(FailingRows(16, bad_index=3), batch_size=1, num_workers=1, worker_type="process",
                           prefetch=4))
    assert our_segments() == []
    with pytest.raises(DataLoaderError, match="was killed by signal SIGKILL"):
        batches(DataLoader(WideExitingRows(16, 8, index=4), batch_size=1, num_workers=1, worker_type="process",
                           prefetch=4))
    assert our_segments() == []
    persistent = DataLoader(WideRows(8, 8), batch_size=1, num_workers=1, worker_type="process",
                            persistent_workers=True, prefetch=4)
    next(iter(persistent))  # an abandoned iteration leaves batches of its generation in flight...
    assert len(batches(persistent)) == 8  # ...which the next one drops, removing their segments
    del persistent
    gc.collect()
    assert our_segments() == []


def test_a_shared_batch_keeps_every_dtype_and_shape_and_a_full_or_closed_dev_shm_means_pickling(monkeypatch):
    arrays = (np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]), np.arange(5.0), np.zeros((0, 3)), np.array(7),
              np.array(["ab", "c"]), np.arange(6, dtype=">i2").reshape(2, 3))
    copies = shared_batches.read(shared_batches.write(shared_batches.segment_name(), arrays))
    assert [(c.dtype, c.shape) for c in copies] == [(a.dtype, a.shape) for a in arrays]
    assert all(np.array_equal(c, a) for c, a in zip(copies, arrays)) and our_segments() == []

    def no_room(descriptor, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)  # what a full tmpfs answers, before any page is touched
    assert shared_batches.write(shared_batches.segment_name(), arrays) is None and our_segments() == []

    def refused(path, flags, mode=0o777):
        raise OSError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "open", refused)  # a read-only /dev/shm, no inodes left, no descriptors left
    assert shared_batches.write(shared_batches.segment_name(), arrays) is None and our_segments() == []


def test_segments_of_a_dead_main_process_on_this_host_are_removed_by_the_next_pool():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    ours = shared_batches.segment_name()
    host, pid = ours[len(shared_batches.PREFIX):].split("-")[:2]
    names = {"dead": f"{shared_batches.PREFIX}{host}-{dead.stdout.strip()}-0", "alive": ours,
             "other host": f"{shared_batches.PREFIX}{int(host, 16) ^ 1:08x}-{dead.stdout.strip()}-0"}
    paths = {what: os.path.join(shared_batches.DIRECTORY, name) for what, name in names.items()}
    try:
        for path in paths.values():
            pathlib.Path(path).write_bytes(b"x")
        batches(DataLoader(Rows(2), batch_size=1, num_workers=1, worker_type="process"))
        assert {what: os.path.exists(path) for what, path in paths.items()} == {
            "dead": False, "alive": True, "other host": True}
    finally:
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)


# ---- fit and evaluate run the dataset's code in the loader's workers only ------------------------------------

class Hung(Exception):
    """What ``hang_guard`` raises in the main thread."""


@contextlib.contextmanager
def hang_guard(seconds: int):
    """Raise ``Hung`` in the main thread after ``seconds`` (SIGALRM, which also ends a ``time.sleep`` there): code
    that would block for minutes fails the test instead of holding up the suite. Generous, not a bound on how
    long the code may take."""
    def hung(signum, frame):
        raise Hung(f"still running after {seconds} s: the main process waited on the dataset's code")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def test_fit_reads_the_first_sample_in_a_worker_process_with_its_timeout_and_errors(backend, children_before):
    """``fit`` learns the batch layout (for its metrics) from a sample made by the loader's own workers, never by
    running the dataset's ``__getitem__`` in the main process: a sample 0 that hangs is the loader's timeout
    error (not ten minutes in the main process), one that calls ``os._exit`` is the loader's error naming the
    worker and its exit code (not the end of the training process), before any training, no worker left. A
    later sample that hangs or ends its worker, mid-epoch, is the same error after the batches before it
    trained, within the timeout, no worker left (persistent workers there: the one that made the first sample
    serves the epoch, one process start instead of two). The error comes within the timeout (0 for a worker that
    dies) and 5 s of the last batch trained, or of ``fit``'s start plus 20 s for a worker process to start and read
    the first sample (the hang guard's 60 s only ends a hang)."""
    failures = [(SleepingRows(4, seconds=600), {"timeout": 0.5},
                 r"did not deliver batch 0 of epoch 0 \(samples \[0\]\) within timeout=0.5 s", None, 0),
                (ExitingRows(4, index=0, code=3), {},
                 r"exited unexpectedly with exit code 3 while preparing batch 0 of epoch 0", 3, 0),
                (SleepingRows(8, seconds=600, index=5), {"timeout": 1, "persistent_workers": True},
                 r"did not deliver batch 2 of epoch 0 \(samples \[4, 5\]\) within timeout=1 s", None, 2),
                (ExitingRows(8, index=5, code=3), {"persistent_workers": True},
                 r"exited unexpectedly with exit code 3 while preparing batch 2 of epoch 0", 3, 2)]
    for dataset, settings, expected, exitcode, trained in failures:
        model = ud.nn.Linear(3, 4)
        before = [ud.to_numpy(p).copy() for p in model.parameters()]
        loader = DataLoader(dataset, batch_size=2, num_workers=1, worker_type="process", **settings)
        since = [time.monotonic()]  # fit's start, then the end of each batch trained
        noted = ud.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: since.append(time.monotonic()))
        with hang_guard(60), pytest.raises(DataLoaderError, match=r"DataLoader worker 0 \(process \d+\) "
                                                                  + expected) as caught:
            ud.fit(model, loader, loss="cross_entropy", optimizer="sgd", verbose=0, callbacks=[noted])
        waited = time.monotonic() - since[-1]
        assert len(since) == trained + 1 and waited < settings.get("timeout", 0) + (5 if trained else 20), waited
        assert (caught.value.worker_id, getattr(caught.value, "exitcode", None)) == (0, exitcode)
        assert loader.state_dict()["position"] == trained  # the batches before it were taken (and trained)
        assert_no_workers_left(children_before)
        unchanged = all(np.array_equal(ud.to_numpy(p), b) for p, b in zip(model.parameters(), before))
        assert unchanged == (trained == 0)


def test_validation_data_and_evaluate_read_the_first_sample_in_a_worker_process(children_before):
    """The same for ``validation_data`` (refused before training, with or without metrics) and ``evaluate``; and
    a loader whose first sample is fine gives the layout it gives without workers."""
    x, y = np.arange(12, dtype=np.float32).reshape(4, 3), np.arange(4)
    exiting = DataLoader(ExitingRows(4, index=0, code=3), batch_size=2, num_workers=1, worker_type="process")
    for loss in ("cross_entropy", "mse"):  # metrics probe the layout / no metrics: the model's input is checked
        model = ud.nn.Linear(3, 4)
        before = [ud.to_numpy(p).copy() for p in model.parameters()]
        with hang_guard(60), pytest.raises(DataLoaderError, match=r"exited unexpectedly with exit code 3"):
            ud.fit(model, (x, y if loss == "cross_entropy" else np.ones((4, 4), np.float32)), batch_size=2,
                   loss=loss, optimizer="sgd", verbose=0, validation_data=exiting)
        assert all(np.array_equal(ud.to_numpy(p), b) for p, b in zip(model.parameters(), before))
    sleeping = DataLoader(SleepingRows(4, seconds=600), batch_size=2, num_workers=1, worker_type="process",
                          timeout=0.5)
    with hang_guard(60), pytest.raises(DataLoaderError, match=r"did not deliver batch 0 .*timeout=0.5 s"):
        ud.evaluate(model, sleeping)
    assert_no_workers_left(children_before)
    # a first sample that is fine: the one the first batch starts with, the same with workers as without; persistent
    # workers make it and stay for the epoch (threads: no start-up cost here)
    for workers in ({}, {"num_workers": 2, "persistent_workers": True}):
        loader = DataLoader(Rows(4), batch_size=2, shuffle=True, seed=3, **workers)
        first = int(loader.batch_sampler.batches(0)[0][0])
        x0, y0 = loader.first_sample()
        assert (x0.tolist(), x0.dtype, y0.tolist(), y0.dtype) == (
            [[3.0 * first, 3.0 * first + 1, 3.0 * first + 2]], np.float32, [first], np.int64)
        assert loader.state_dict()["position"] == 0  # the loader's position did not move
        pool = loader._pool
        assert batches(loader)[0][1][0] == first and loader._pool is pool


class CountedRows(Rows):
    """Rows that count the samples read (in this process: without workers, or with worker threads)."""

    def __init__(self, n):
        super().__init__(n)
        self.reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return super().__getitem__(index)


def test_the_first_sample_is_read_once_per_position_and_again_when_what_makes_it_changes():
    loader = DataLoader(CountedRows(8), batch_size=2, shuffle=True, seed=1)
    first = loader.first_sample()
    first[0][:] = -1  # a copy: what the loader keeps stays as read
    orders, batches = [], loader.batch_sampler.batches
    loader.batch_sampler.batches = lambda *args: orders.append(args) or batches(*args)
    x = loader.first_sample()[0]
    assert loader.dataset.reads == 1 and x.min() >= 0
    assert not orders  # kept: the epoch's (shuffled) order is not worked out again to find the sample's index
    del loader.batch_sampler.batches
    next(iter(loader))  # a new position: an iteration broken off after batch 0, the next one starts epoch 1
    assert int(loader.first_sample()[1][0]) == int(loader.batch_sampler.batches(1)[0][0])
    assert loader.dataset.reads == 4  # (2 for the batch, 1 for the sample)
    loader.load_state_dict(dict(loader.state_dict(), epoch=0, position=1))  # a position set: batch 1 of epoch 0
    assert int(loader.first_sample()[1][0]) == int(loader.batch_sampler.batches(0)[1][0])
    assert loader.dataset.reads == 5
    loader.collate_fn = _one_hot_labels  # another collate_fn, as another dataset or worker_init_fn
    assert loader.first_sample()[1].shape == (1, 8) and loader.dataset.reads == 6
    loader.dataset = CountedRows(8)
    loader.first_sample()
    assert loader.dataset.reads == 1


class WidthRows(CountedRows):
    """CountedRows whose features have ``width`` columns (the first ``width`` of [3i, 3i+1, ...])."""

    def __init__(self, n, width):
        super().__init__(n)
        self.width = width

    def __getitem__(self, index):
        features, label = super().__getitem__(index)
        return np.resize(features, self.width), np.int64(label % 2)


def test_fit_and_evaluate_read_the_first_sample_anew_so_a_dataset_fixed_in_place_trains():
    """``fit`` fails on its probe of the first sample (features too wide for the model) before training; the dataset
    fixed in place, the next ``fit`` reads that sample anew (not the one the loader kept) and trains, reading it
    once for its probes; ``evaluate`` too reads it anew."""
    dataset = WidthRows(8, width=4)
    loader = DataLoader(dataset, batch_size=4)
    model = ud.nn.Linear(3, 2)
    with pytest.raises(ShapeMismatchError):
        ud.fit(model, loader, loss="cross_entropy", optimizer="sgd", verbose=0)
    assert dataset.reads == 1
    dataset.width = 3
    history = ud.fit(model, loader, loss="cross_entropy", optimizer="sgd", verbose=0, metrics=["accuracy"])
    assert np.isfinite(history.history["loss"][0]) and dataset.reads == 1 + 1 + 8
    loader.first_sample()
    loader.first_sample()  # (kept)
    ud.evaluate(model, loader, loss="cross_entropy")
    assert dataset.reads == 10 + 1 + 1 + 8


def test_a_ctrl_c_that_a_callback_catches_is_raised_again_by_fit_at_that_batchs_end():
    """A real SIGINT that a callback's ``except`` swallows at batch 1's end: ``fit`` raises ``KeyboardInterrupt`` there,
    before another step changes the weights."""
    x, y = np.stack([LabelledRows(32)[i][0] for i in range(32)]), np.arange(32) % 4
    ended, weights = [], []

    class Catching(ud.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            ended.append(batch)
            if batch == 1:
                try:
                    signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, which the callback swallows
                except KeyboardInterrupt:
                    ended.append("caught")
                weights.append({k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()})

    model = ud.models.TwoLayerNet(3, 8, 4)
    with pytest.raises(KeyboardInterrupt):
        ud.fit(model, (x, y), batch_size=4, loss="cross_entropy", optimizer="sgd", verbose=0, callbacks=[Catching()])
    assert ended == [0, 1, "caught"]
    assert all(np.array_equal(np.asarray(ud.to_numpy(v)), weights[-1][k]) for k, v in model.state_dict().items())


def _one_hot_labels(samples):
    """A collate_fn that gives the labels as one-hot rows (the batch layout differs from a sample's)."""
    features = np.stack([np.asarray(x) for x, _ in samples])
    return features, np.eye(8, dtype=np.float32)[[int(y) for _, y in samples]]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_layout_fit_learns_is_that_of_the_batches_with_or_without_workers(workers, children_before):
    """``fit``'s probe of the batch layout takes the first sample as the loader collates it, whatever
    ``num_workers`` (a collate_fn one-hot encoding the labels gave integer targets without workers and one-hot
    ones with them); thread workers hand back a torch tensor that needs a gradient as NumPy; a torch
    ``DataLoader`` with its own ``batch_sampler`` (batch_size None) and a worker gives a batch of one."""
    import torch

    from unidl.metrics.probe import first_sample

    for worker_type in WORKER_TYPES:
        loader = DataLoader(Rows(8), batch_size=4, collate_fn=_one_hot_labels,
                            **({"num_workers": workers, "worker_type": worker_type} if workers else {}))
        x, y = first_sample(loader)
        assert x.shape == (1, 3) and y.shape == (1, 8) and y.dtype == np.float32, (worker_type, y)
    if workers:
        ud.backends.load("torch")  # (as fit loads its backend before the probe: its tensors are known then)
        loader = DataLoader(Rows(8), batch_size=4, num_workers=workers, worker_type="thread",
                            collate_fn=lambda samples: (torch.ones(len(samples), 3, requires_grad=True),
                                                        torch.zeros(len(samples), dtype=torch.int64)))
        x, y = first_sample(loader)
        assert x.shape == (1, 3) and y.shape == (1,)
    torch_loader = torch.utils.data.DataLoader(Rows(8), batch_sampler=[[0, 1], [2, 3]], num_workers=min(workers, 1))
    x, y = first_sample(torch_loader)
    np.testing.assert_array_equal(x, [[0.0, 1.0, 2.0]])
    assert y.shape == (1,)


class _StoppingRows(Rows):
    """Raises StopIteration at sample 3."""

    def __getitem__(self, index):
        if index == 3:
            raise StopIteration("no more rows")
        return super().__getitem__(index)


@pytest.mark.parametrize("workers", [{}, {"num_workers": 2}], ids=["none", "threads"])
def test_a_sample_raising_stop_iteration_is_the_loaders_error_naming_it_not_a_runtime_error(workers):
    """StopIteration from a sample is a ``DataLoaderError`` naming the sample, without workers as with them (Python
    turned it into ``RuntimeError: generator raised StopIteration`` in every mode: the error raised from a worker
    was a StopIteration too, and the loader's generators raise it, PEP 479); process workers' errors are made by
    the same ``_raised_as``."""
    from unidl.data.pool import _raised_as

    expected = r"sample 3 of batch 1 of epoch 0 \(samples \[2, 3\]\).*no more rows"
    with pytest.raises(DataLoaderError, match=expected) as caught:
        batches(DataLoader(_StoppingRows(6), batch_size=2, **workers))
    assert not isinstance(caught.value, StopIteration) and isinstance(caught.value.__cause__, StopIteration)
    assert _raised_as(StopAsyncIteration()) is DataLoaderError and _raised_as(KeyError()) is not DataLoaderError
