"""``Callback``: hooks that ``ud.fit`` calls around epochs and batches, the same on every backend."""

from __future__ import annotations


class Callback:
    """Override any hook. ``logs`` holds the epoch's metrics ('loss', 'accuracy', 'val_loss', ...);
    ``self.trainer`` (set by ``fit``) gives access to ``model``, ``optimizer``, ``loader`` and ``stop()``."""

    trainer = None

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass
