"""``TerminateOnNaN``: end training quietly after the batch whose loss (or a gradient) is NaN or infinite, as
Keras's does; that batch's update was skipped by the non-finite guard, so the weights are the last finite ones."""

from __future__ import annotations

import math

from unidl.callbacks.callback import Callback


class TerminateOnNaN(Callback):
    """Stop ``fit`` after the first batch whose loss is NaN or infinite, returning the ``History`` so far
    (that epoch's entry holds the non-finite loss) instead of raising ``NonFiniteLossError``, which is what
    ``fit`` does without this callback. The epoch's end still runs (other callbacks' ``on_epoch_end``).

    ``raise_error=True`` (Keras's): raise instead, as ``fit`` without this callback does: ``NonFiniteLossError`` (a
    ``FloatingPointError``) naming the epoch and step, before that step's update, no callback's end running.
    ``verbose`` (by keyword): print a line when it stops training."""

    def __init__(self, raise_error: bool = False, *, verbose: bool = True):
        if not isinstance(raise_error, bool):
            raise ValueError(f"TerminateOnNaN raise_error must be True or False, got {raise_error!r}")
        self.raise_error = raise_error
        self.verbose = verbose
        self.stopped_at = None  # (epoch, batch) of the non-finite loss

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if (loss is not None and not math.isfinite(loss)) or not self.trainer.optimizer.last_step_finite:
            if self.raise_error:  # (within fit, its own check raised before this hook and the step's update)
                from unidl.errors import NonFiniteLossError

                raise NonFiniteLossError(f"loss is {loss} at epoch {self.trainer.epoch + 1}, batch {batch + 1} "
                                         f"(TerminateOnNaN(raise_error=True))")
            self.stopped_at = (self.trainer.epoch, batch)
            if self.verbose:
                print(f"Epoch {self.trainer.epoch + 1}, batch {batch + 1}: loss is {loss}, terminating training")
            self.trainer.stop(after_batch=True)
