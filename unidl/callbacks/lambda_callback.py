"""``LambdaCallback``: a callback made of plain functions, as ``keras.callbacks.LambdaCallback``."""

from __future__ import annotations

from unidl.callbacks.callback import Callback


class LambdaCallback(Callback):
    """Call the given functions at the matching hooks of ``fit``:

    - ``on_train_begin(logs)``, ``on_train_end(logs)``
    - ``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)`` (``logs``: the epoch's metrics)
    - ``on_train_batch_begin(batch, logs)`` (``logs``: ``{}``), also named ``on_batch_begin`` (by keyword)
    - ``on_train_batch_end(batch, logs)`` (``logs``: the running means of the epoch so far), also named
      ``on_batch_end`` (by keyword)

    Arguments in ``keras.callbacks.LambdaCallback``'s order. A plain function given to ``fit(callbacks=[fn])``
    becomes ``LambdaCallback(on_epoch_end=fn)``.

    Example::

        ud.fit(..., callbacks=[ud.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(logs["loss"]))])
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, *, on_batch_begin=None, on_batch_end=None):
        for when, train_name, name in (("begin", on_train_batch_begin, on_batch_begin),
                                       ("end", on_train_batch_end, on_batch_end)):
            if train_name is not None and name is not None:
                raise ValueError(f"LambdaCallback: on_train_batch_{when} and on_batch_{when} name the same hook; "
                                 f"pass one")
        on_batch_begin = on_batch_begin if on_batch_begin is not None else on_train_batch_begin
        on_batch_end = on_batch_end if on_batch_end is not None else on_train_batch_end
        functions = {"on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end, "on_batch_begin": on_batch_begin,
                     "on_batch_end": on_batch_end, "on_train_begin": on_train_begin, "on_train_end": on_train_end}
        for name, function in functions.items():
            if function is not None and not callable(function):
                raise TypeError(f"LambdaCallback {name} must be a function, got {type(function).__name__}")
        self.functions = functions

    def on_train_begin(self, logs=None):
        if self.functions["on_train_begin"] is not None:
            self.functions["on_train_begin"](logs)

    def on_epoch_begin(self, epoch, logs=None):
        if self.functions["on_epoch_begin"] is not None:
            self.functions["on_epoch_begin"](epoch, logs)

    def on_batch_begin(self, batch, logs=None):
        if self.functions["on_batch_begin"] is not None:
            self.functions["on_batch_begin"](batch, logs)

    def on_batch_end(self, batch, logs=None):
        if self.functions["on_batch_end"] is not None:
            self.functions["on_batch_end"](batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.functions["on_epoch_end"] is not None:
            self.functions["on_epoch_end"](epoch, logs)

    def on_train_end(self, logs=None):
        if self.functions["on_train_end"] is not None:
            self.functions["on_train_end"](logs)
