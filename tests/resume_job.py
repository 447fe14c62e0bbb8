"""A training job for the kill-and-resume tests: run as ``python tests/resume_job.py --kill-at STEP BACKEND DIR OUT
[BACKEND DIR OUT ...]``, or ``python tests/resume_job.py --resume BACKEND DIR OUT DIR2 OUT2 [BACKEND DIR OUT DIR2 OUT2
...]``: for each backend in turn, the resume from DIR, then the same job from scratch in DIR2, all in one interpreter
(a start of one with TensorFlow costs seconds).

Trains the CNN (with dropout on its logits) on digits with ``ud.fit``, a StepLR schedule and a step-wise
``Checkpoint``. With ``--kill-at`` (a step the Checkpoint saves at) each backend's job runs in a thread of its own, in
turn, and stops half-way through writing that step's checkpoint (its header and first tensor on disk): each but the
last stays stopped there for good, and the last kills the process with SIGKILL, so that every job dies mid-write
without any chance to clean up, in one interpreter (a framework imported once for several jobs: a fresh interpreter
each cost seconds). Run again without it, the job resumes from the checkpoint directory and writes the final weights
and History to OUT (.npz).
"""

import contextlib
import os
import signal
import sys
import threading

import numpy as np

import unidl as ud
from unidl.io import safetensors


class _StopsAfterFirstTensor:
    """A file handle that writes the header and the first tensor, puts them on disk, then calls ``stop``."""

    def __init__(self, handle, stop):
        self.handle, self.stop, self.writes = handle, stop, 0

    def write(self, data):
        self.handle.write(data)
        self.writes += 1
        if self.writes == 2:
            self.handle.flush()
            self.stop()


#: per thread, what its next checkpoint write does once its header and first tensor are on disk (``KillAt``)
_STOPPING = {}
_atomic_open = safetensors.atomic_open


@contextlib.contextmanager
def _atomic_open_that_may_stop(path):
    """``atomic_open``, its handle wrapped where ``KillAt`` marked the calling thread: ``ud.save_checkpoint``'s own
    code runs unchanged up to the stop, and the other threads' writes are left alone."""
    with _atomic_open(path) as handle:
        stop = _STOPPING.pop(threading.get_ident(), None)
        yield handle if stop is None else _StopsAfterFirstTensor(handle, stop)


safetensors.atomic_open = _atomic_open_that_may_stop


class KillAt(ud.callbacks.Callback):
    """Makes the next file write (the ``Checkpoint`` callback's at global step ``step``: fit runs Checkpoint
    after every other callback) call ``stop`` half-way through its tensors."""

    def __init__(self, step, stop):
        self.step, self.stop = step, stop

    def on_batch_end(self, batch, logs=None):
        if self.trainer.global_step == self.step:
            _STOPPING[threading.get_ident()] = self.stop


def _kill_the_process():
    os.kill(os.getpid(), signal.SIGKILL)


def stop_each_then_kill(kill_at, jobs):
    """Each of ``jobs`` (``(backend, directory, out)``) in a thread of its own, in turn, stopped mid-write at step
    ``kill_at``: every thread but the last's waits there for ever, and the last's write kills the process. A job
    that ends or raises before its stop ends the process with status 1 (its traceback on stderr)."""
    for index, (backend, directory, out) in enumerate(jobs):
        stopped, ended = threading.Event(), threading.Event()

        def park(stopped=stopped):
            stopped.set()
            threading.Event().wait()  # (never set: the write never goes on)

        stop = _kill_the_process if index == len(jobs) - 1 else park

        def job(backend=backend, directory=directory, out=out, stop=stop, ended=ended):
            try:
                main(backend, directory, out, KillAt(kill_at, stop))
            finally:
                ended.set()

        threading.Thread(target=job, daemon=True).start()
        while not stopped.wait(0.05):
            if ended.is_set():
                sys.exit(f"{backend}'s job ended before its stop at step {kill_at}")


def main(backend, directory, out, kill=None):
    ud.set_backend(backend)
    ud.manual_seed(0)
    x, y = ud.datasets.digits("train")
    x, y = x[:600], y[:600]
    # dropout makes the framework's own generator part of what must resume exactly
    model = ud.nn.Sequential(ud.models.CNN(in_channels=1, num_classes=10, image_size=8), ud.nn.Dropout(0.2))
    optimizer = ud.optim.Adam(model.parameters(), lr=2e-3)
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=50, shuffle=True, seed=3)
    schedule = ud.callbacks.LearningRateScheduler(ud.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))
    callbacks = [ud.callbacks.Checkpoint(directory, every_steps=4, keep=2), schedule]
    if kill is not None:
        callbacks.append(kill)
    history = ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=3,
                     callbacks=callbacks, verbose=0, resume_from="auto")
    # the framework that trained: Keras's own under the keras backend (KERAS_BACKEND), else the backend
    framework = __import__("keras").backend.backend() if backend == "keras" else backend
    np.savez(out, **model.state_dict(), **{f"history/{k}": np.asarray(v) for k, v in history.history.items()},
             framework=framework)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--resume":  # per backend: the resume, then an uninterrupted run from scratch (one interpreter)
        for backend, directory, out, directory2, out2 in zip(*[iter(args[1:])] * 5, strict=True):
            main(backend, directory, out)
            main(backend, directory2, out2)
    else:
        assert args[0] == "--kill-at", args
        stop_each_then_kill(int(args[1]), list(zip(*[iter(args[2:])] * 3, strict=True)))
