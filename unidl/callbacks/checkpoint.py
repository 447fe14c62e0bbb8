"""``Checkpoint``: save model, optimizer, RNG, loader position, every callback's state and the epoch's running
sums during ``fit``, atomically, keeping the last N."""

from __future__ import annotations

import numbers

from unidl.callbacks.callback import Callback
from unidl.distributed import process_group


class _LoaderPosition:
    """What ``save_checkpoint`` asks of a loader: its state, here the position of the last trained batch."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def samples_up_to(loader, position: int) -> int:
    """Samples in the first ``position`` batches of an epoch of ``loader`` (a unidl ``DataLoader``)."""
    if position >= len(loader):
        return len(loader) * loader.batch_size if loader.drop_last else loader.samples_per_epoch
    return position * loader.batch_size


def epoch_progress(trainer, logs) -> dict | None:
    """The epoch in progress as ``{'epoch', 'samples', 'sums', 'lr', 'totals', 'logs'}``: samples trained in it so
    far and the sum over them of each running-mean log ('loss', 'accuracy'), counting the part trained before a
    resume (what an older unidl resumed from); 'totals', the epoch's running totals over the whole job
    (``trainer.job_totals()``: loss sum, samples, each metric's statistics, in float64, the same layout in
    every loop), from which a resumed epoch goes on, so that its History is the uninterrupted run's (bit for
    bit by the same loop, exact for counts and ratio metrics by any); 'logs', the loop's running logs when they
    are the job's (one process, no totals joined at the epoch's end), which at an epoch's last batch are that
    epoch's logs. Every rank of a data-parallel job calls it (an all-reduce). None without a unidl
    ``DataLoader``."""
    from unidl.data import DataLoader

    loader = trainer.loader
    if not isinstance(loader, DataLoader) or not logs:
        return None
    start = trainer._epoch_start[1]
    carried = getattr(trainer, "carried_epoch", None)
    resumed = bool(carried and carried["epoch"] == trainer.epoch)
    if not resumed:
        carried = {"samples": samples_up_to(loader, start), "sums": {}}
    trained = samples_up_to(loader, start + trainer._trained_in_epoch) - samples_up_to(loader, start)
    numeric = {key: float(value) for key, value in logs.items()
               if isinstance(value, numbers.Real) and not isinstance(value, bool)}
    # joined: the loop's logs are not the job's whole epoch (part of it is added at the epoch's end)
    joined = (getattr(trainer, "carried_totals", None) is not None or process_group.sharding() is not None
              or (resumed and carried.get("totals") is None))
    continued = resumed and not joined  # the loop went on from the checkpoint's totals: its logs cover the epoch
    sums = {} if continued else dict(carried["sums"])
    for key, value in numeric.items():
        sums[key] = sums.get(key, 0.0) + value * (carried["samples"] + trained if continued else trained)
    progress = {"epoch": trainer.epoch, "samples": carried["samples"] + trained, "sums": sums,
                "lr": float(getattr(trainer, "epoch_lr", trainer.optimizer.lr))}  # (the rate the epoch began with)
    totals = trainer.job_totals() if hasattr(trainer, "job_totals") else None
    if totals is not None:
        progress["totals"] = totals
        if not joined:
            progress["logs"] = numeric
    return progress


def _weights_finite(model) -> bool:
    import numpy as np

    to_numpy = model._backend.to_numpy
    return all(np.isfinite(to_numpy(p)).all() for p in model.parameters())


def _count_or_none(name: str, value) -> int | None:
    """``value`` as a positive Python int (a NumPy integer too, unidl's argument rule), or None; else a ``ValueError``
    naming ``Checkpoint``'s argument ``name``."""
    from unidl import arguments

    checked = None if value is None else arguments.integer(value)
    if value is not None and (checked is None or checked < 1):
        raise ValueError(f"Checkpoint {name} must be a positive integer or None, got {value!r}")
    return checked


class Checkpoint(Callback):
    """Write a checkpoint every ``every_steps`` training steps (if given) and at the end of every epoch.

    A checkpoint holds the weights, optimizer state, RNG, loader position, the state of every callback
    that has one (learning-rate schedules, early stopping, this rotation), the History so far and the
    running sums of the epoch in progress. Resume with ``ud.fit(..., resume_from=directory)`` (or
    ``resume_from="auto"``: this callback's directory, starting afresh while it holds no checkpoint):
    training continues from the exact batch after the last checkpoint, with the same weights,
    optimizer state, RNG, data order, schedule and History. ``fit`` runs this callback after the
    others at the end of an epoch, so the schedules it saves have already stepped. Weights that are NaN or
    infinite are not saved (a ``RuntimeWarning`` says so), so rotation never deletes the newest finite
    checkpoint in favour of a non-finite one.
    """

    def __init__(self, directory, every_steps: int | None = None, keep: int | None = 3):
        # checked here, not at the first save after an epoch of training; NumPy integers are taken, a bool refused
        self.directory = directory
        self.every_steps, self.keep = _count_or_none("every_steps", every_steps), _count_or_none("keep", keep)
        self.saved = []

    def state_dict(self) -> dict:
        recent = self.saved[-self.keep:] if self.keep else self.saved  # the files rotation still keeps
        return {"saved": [str(path) for path in recent]}

    def check_state_dict(self, state) -> None:
        from unidl.errors import CheckpointStateError

        if (not isinstance(state, dict) or set(state) != {"saved"} or not isinstance(state["saved"], list)
                or not all(isinstance(path, str) for path in state["saved"])):
            raise CheckpointStateError(f"Checkpoint state must be {{'saved': [paths]}}, got {state!r}")

    def load_state_dict(self, state) -> None:
        self.check_state_dict(state)
        self.saved = list(state["saved"])

    def _save(self, progress=None, epoch_ended: bool = False):
        from unidl.checkpoint import save_checkpoint

        trainer = self.trainer
        if not _weights_finite(trainer.model):  # never rotate the newest finite checkpoint away for this one
            import warnings

            warnings.warn(f"Checkpoint: not saving at epoch {trainer.epoch + 1}, step {trainer.global_step}: the "
                          f"model's weights are NaN or infinite; the newest finite checkpoint in "
                          f"{self.directory} is kept", RuntimeWarning, stacklevel=3)
            return
        state = trainer.loader_state()
        position = _LoaderPosition(state) if state is not None else None
        history = trainer.history.state_dict()  # (its logs under "history", as before they had their epochs)
        extra = {"history": history["history"], "history_epoch": history["epoch"],
                 "logged_epochs": history["logged_epochs"], "epoch_progress": progress,
                 "fit": getattr(trainer, "fit_settings", None), "epoch_ended": epoch_ended}
        path = save_checkpoint(self.directory, trainer.model, trainer.optimizer, epoch=trainer.epoch,
                               step=trainer.global_step, loader=position, keep=self.keep,
                               callbacks=getattr(trainer, "callbacks", None), extra=extra,
                               loss=_loss_module(getattr(trainer, "loss", None)))
        self.saved.append(path)

    def on_batch_end(self, batch, logs=None):
        if self.every_steps and self.trainer.global_step % self.every_steps == 0:
            self._save(epoch_progress(self.trainer, logs))

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch_ended=True)


def _loss_module(loss):
    """The trainer's loss where it is a unidl module, whose state a checkpoint holds; None for anything else a
    trainer of the user's may keep there (a function, a number), which ``save_checkpoint`` would refuse."""
    from unidl.nn.module import Module

    return loss if isinstance(loss, Module) else None
