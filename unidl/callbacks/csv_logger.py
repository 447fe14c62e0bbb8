"""``CSVLogger``: one CSV row per epoch with Keras's columns: 'epoch' (from 0), then the sorted log names."""

from __future__ import annotations

import csv
import os

from unidl.distributed import process_group
from unidl.callbacks.callback import Callback


class CSVLogger(Callback):
    """Write every epoch's logs to ``filename`` as ``keras.callbacks.CSVLogger`` does: a header of 'epoch'
    and the first epoch's log names sorted ('accuracy', 'loss', 'lr', 'val_accuracy', 'val_loss'), with a 'val_'
    column for each where that epoch has none (``validation_freq`` > 1, or no validation: Keras's rule), then one
    row per epoch ('NA' for a name an epoch lacks). Each row is written and closed at the end of its epoch.

    Args:
        filename: the CSV file (its directory is created).
        separator: the field delimiter.
        append: continue an existing file (no second header) instead of overwriting it.

    A resumed ``fit`` (``resume_from``) continues the file after the rows of the epochs the checkpoint holds.
    """

    def __init__(self, filename, separator: str = ",", append: bool = False):
        self.filename, self.separator, self.append = os.fspath(filename), separator, bool(append)
        self.keys = None
        self.lines = 0  # lines the file holds after the last row written (earlier content included)
        self._resumed = False

    def state_dict(self) -> dict:
        """The columns and the file's length in lines after the last row written (for checkpoints)."""
        return {"keys": self.keys, "lines": self.lines}

    def check_state_dict(self, state) -> None:
        """Raise ``CheckpointStateError`` unless ``load_state_dict(state)`` would succeed; changes nothing."""
        from unidl.errors import CheckpointStateError

        if (not isinstance(state, dict) or set(state) != {"keys", "lines"}
                or not (state["keys"] is None or (isinstance(state["keys"], list)
                                                  and all(isinstance(k, str) for k in state["keys"])))
                or not isinstance(state["lines"], int) or isinstance(state["lines"], bool) or state["lines"] < 0):
            raise CheckpointStateError(f"CSVLogger state must be {{'keys': [names] or None, 'lines': n >= 0}}, "
                                       f"got {state!r}")

    def load_state_dict(self, state) -> None:
        self.check_state_dict(state)
        self.keys = list(state["keys"]) if state["keys"] is not None else None
        self.lines, self._resumed = state["lines"], True

    def _read_lines(self) -> list:
        if not os.path.exists(self.filename):
            return []
        with open(self.filename, newline="") as handle:
            return handle.readlines()

    def on_train_begin(self, logs=None):
        directory = os.path.dirname(self.filename)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self._resumed:  # drop the rows written after the checkpoint (a run killed between the two)
            kept = self._read_lines()[:self.lines]
            self.lines = len(kept)
        else:
            kept = self._read_lines() if self.append else []
            self.keys, self.lines = None, len(kept)
        if process_group.is_writer():  # in a data-parallel job rank 0 keeps the log; the others keep its state
            with open(self.filename, "w", newline="") as handle:
                handle.writelines(kept)
        self._resumed = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        rows = []
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(key.startswith("val_") for key in self.keys):
                # Keras's rule: a 'val_' column for each name, 'NA' until validation runs (validation_freq > 1
                # lost the validation values, the first epoch having none)
                self.keys += [f"val_{key}" for key in self.keys]
            if self.lines == 0:
                rows.append(["epoch", *self.keys])
        rows.append([epoch, *(_cell(logs.get(key, "NA")) for key in self.keys)])
        if process_group.is_writer():  # in a data-parallel job rank 0 writes the job's log
            with open(self.filename, "a", newline="") as handle:
                csv.writer(handle, delimiter=self.separator).writerows(rows)
        self.lines += len(rows)


def _cell(value):
    """A log value as Keras writes it: strings and numbers as they are, a sequence as '"[a, b]"'."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return value
    return f'"[{", ".join(map(str, value))}]"'
