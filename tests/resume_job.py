"""A training job for the kill-and-resume tests: run as ``python tests/resume_job.py BACKEND DIR OUT [KILL_AT]``, or
``python tests/resume_job.py --resume BACKEND DIR OUT DIR2 OUT2 [BACKEND DIR OUT DIR2 OUT2 ...]``: for each backend
in turn, the resume from DIR, then the same job from scratch in DIR2, all in one interpreter (a start of one with
TensorFlow costs seconds).

Trains the CNN (with dropout on its logits) on digits with ``ud.fit``, a StepLR schedule and a step-wise
``Checkpoint``; with KILL_AT (a step the Checkpoint saves at) it kills itself with SIGKILL half-way through
writing that step's checkpoint, without any chance to clean up. Run again without KILL_AT it resumes from the
checkpoint directory and writes the final weights and History to OUT (.npz).
"""

import contextlib
import os
import signal
import sys

import numpy as np

import unidl as ud
from unidl.io import safetensors


class _DiesAfterFirstTensor:
    """A file handle that writes the header and the first tensor, puts them on disk, then dies by SIGKILL."""

    def __init__(self, handle):
        self.handle, self.writes = handle, 0

    def write(self, data):
        self.handle.write(data)
        self.writes += 1
        if self.writes == 2:
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class KillAt(ud.callbacks.Callback):
    """Makes the next file write (the ``Checkpoint`` callback's at global step ``step``: fit runs Checkpoint
    after every other callback) die half-way through its tensors: ``ud.save_checkpoint``'s own code runs
    unchanged up to the kill, only the file handle it writes to is wrapped."""

    def __init__(self, step):
        self.step = step

    def on_batch_end(self, batch, logs=None):
        if self.trainer.global_step == self.step:
            atomic_open = safetensors.atomic_open

            @contextlib.contextmanager
            def dies_mid_write(path):
                with atomic_open(path) as handle:
                    yield _DiesAfterFirstTensor(handle)

            safetensors.atomic_open = dies_mid_write


def main(backend, directory, out, kill_at=None):
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
    if kill_at is not None:
        callbacks.append(KillAt(kill_at))
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
        main(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else None)
