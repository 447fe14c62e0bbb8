"""``ModelCheckpoint``: save the model (or its weights) during ``fit``, every epoch or when a metric improves,
as ``keras.callbacks.ModelCheckpoint``. (``Checkpoint`` saves everything needed to resume a run instead.)"""

from __future__ import annotations

import math
import os

from unidl import arguments
from unidl.distributed import process_group
from unidl.callbacks.callback import (Callback, check_monitor, check_verbose, improved, monitored, resolve_mode,
                                     settle_mode, unsupported)


class ModelCheckpoint(Callback):
    """Save ``trainer.model`` to ``filepath`` at the end of every epoch, or only when ``monitor`` improves.

    Args:
        filepath: a path, formatted with ``epoch`` (counting from 1, as Keras) and the epoch's logs:
            ``"run/model-{epoch:02d}-{val_loss:.3f}.safetensors"``. Written atomically.
        monitor: the log to compare ('val_loss', 'accuracy', ...) when ``save_best_only``.
        mode: 'min', 'max' or 'auto' (the loss's and ``ud.metrics``' directions, as Keras 3: ``resolve_mode``).
        save_best_only: save only an epoch whose ``monitor`` beats every earlier one (a fixed ``filepath``
            then always holds the best model).
        save_weights_only: write the weights alone (``model.load_weights(path)`` reads them); otherwise
            ``ud.save``'s file, which ``ud.load(path)`` rebuilds the model from.

    Arguments in ``keras.callbacks.ModelCheckpoint``'s order. ``verbose=1`` prints a line per save;
    ``initial_value_threshold``: the value an epoch must beat to be saved first (Keras's); ``save_freq`` other than
    'epoch' (Keras's every N batches) is a ``ValueError``.

    ``state_dict()`` holds the best value so far, so that a resumed ``fit`` keeps comparing against it.
    """

    def __init__(self, filepath, monitor: str = "val_loss", verbose: int = 0, save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto", save_freq="epoch",
                 initial_value_threshold: float | None = None):
        unsupported("ModelCheckpoint", {"save_freq": save_freq}, {"save_freq": "epoch"},
                    "it saves at the end of epochs; ud.callbacks.Checkpoint(every_steps=N) saves every N steps")
        if initial_value_threshold is not None and arguments.real(initial_value_threshold) is None:
            raise ValueError(f"ModelCheckpoint initial_value_threshold must be a number or None, "
                             f"got {initial_value_threshold!r}")
        self.filepath = os.fspath(filepath)
        self.monitor, self.mode = monitor, resolve_mode("ModelCheckpoint", monitor, mode)
        self.save_best_only, self.save_weights_only = bool(save_best_only), bool(save_weights_only)
        self.verbose = check_verbose("ModelCheckpoint", verbose)
        self.save_freq = save_freq
        self.best = (-math.inf if self.mode == "max" else math.inf) if initial_value_threshold is None else \
            arguments.real(initial_value_threshold)
        self.last_saved = None  # the path of the last file written

    def state_dict(self) -> dict:
        """The best value of ``monitor`` so far (for checkpoints)."""
        return {"best": float(self.best)}

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing."""
        from unidl.errors import CheckpointStateError

        if (not isinstance(state, dict) or set(state) != {"best"} or not isinstance(state["best"], (int, float))
                or isinstance(state["best"], bool)):
            raise CheckpointStateError(f"ModelCheckpoint state must be {{'best': number}}, got {state!r}")

    def load_state_dict(self, state) -> None:
        self.check_state_dict(state)
        self.best = float(state["best"])

    def _improved(self, value: float) -> bool:
        settle_mode(self, "ModelCheckpoint")
        return improved(self.mode, value, self.best)  # (Keras's float32 comparison)

    def path_for(self, epoch: int, logs) -> str:
        """``filepath`` formatted for ``epoch`` (0-based, written from 1) and ``logs``."""
        try:
            return self.filepath.format(epoch=epoch + 1, **(logs or {}))
        except KeyError as error:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} names {error.args[0]!r}, which is not "
                           f"among the epoch's logs {sorted(logs or {})}") from None

    def on_train_begin(self, logs=None):
        if self.save_best_only:
            check_monitor(self, "ModelCheckpoint")

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            value = monitored(self, "ModelCheckpoint", epoch, logs)
            if value is None or not self._improved(value):  # (None: an epoch that validation_freq skips)
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {value:.5f}")
            self.best = value
        path = self.path_for(epoch, logs)
        self.last_saved = path
        if not process_group.is_writer():  # in a data-parallel job rank 0 saves the job's model
            return
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        model = self.trainer.model
        if self.save_weights_only:
            from unidl.io.safetensors import save_file

            save_file(model.state_dict(), path)
        else:
            from unidl.serialization import save

            save(model, path)
        self.last_saved = path
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}")
