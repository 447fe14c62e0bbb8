"""``Checkpoint``: save model, optimizer, RNG and loader position during ``fit``, atomically, keeping the last N."""

from __future__ import annotations

from unidl.callbacks.callback import Callback


class _LoaderPosition:
    """What ``save_checkpoint`` asks of a loader: its state, here the position of the last trained batch."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


class Checkpoint(Callback):
    """Write a checkpoint every ``every_steps`` training steps (if given) and at the end of every epoch.

    Resume by calling ``ud.fit(..., resume_from=directory)``: training continues from the exact
    batch after the last checkpoint, with the same weights, optimizer state, RNG and data order.
    """

    def __init__(self, directory, every_steps: int | None = None, keep: int = 3):
        if every_steps is not None and (not isinstance(every_steps, int) or every_steps <= 0):
            raise ValueError(f"Checkpoint every_steps must be a positive integer or None, got {every_steps!r}")
        self.directory, self.every_steps, self.keep = directory, every_steps, keep
        self.saved = []

    def _save(self):
        from unidl.checkpoint import save_checkpoint

        trainer = self.trainer
        state = trainer.loader_state()
        position = _LoaderPosition(state) if state is not None else None
        path = save_checkpoint(self.directory, trainer.model, trainer.optimizer, epoch=trainer.epoch,
                               step=trainer.global_step, loader=position, keep=self.keep,
                               extra={"history": trainer.history.as_dict()})
        self.saved.append(path)

    def on_batch_end(self, batch, logs=None):
        if self.every_steps and self.trainer.global_step % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()
