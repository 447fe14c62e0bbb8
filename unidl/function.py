"""``ud.function``: a Python function compiled the way its backend compiles, with one spelling everywhere.

On tensorflow it becomes a static graph (``tf.function`` with AutoGraph, one trace per
input rank and dtype); on torch it runs eagerly, or through ``torch.compile`` with
``jit_compile=True``; on keras it follows the framework Keras runs on.
"""

from __future__ import annotations

import functools

from unidl import config, devices


class Function:
    """A function compiled per backend on its first call there; see ``function``."""

    def __init__(self, fn, jit_compile: bool = False):
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.jit_compile = bool(jit_compile)
        self._compiled: dict = {}

    def _compiled_for(self, backend):
        compiled = self._compiled.get(backend.name)
        if compiled is None:
            compiled = backend.function(self._fn, self.jit_compile, self.__name__)
            self._compiled[backend.name] = compiled
            devices.compiled_placed(f"ud.function {self.__name__!r}", "first call",
                                    config.resolve_device(config._requested_device(), backend),
                                    f"{backend.name}, jit_compile={self.jit_compile}")
        return compiled

    def __call__(self, *args):
        return self._compiled_for(config.backend())(*args)

    @property
    def trace_count(self) -> int | None:
        """Traces on the current backend: an int where the backend traces graphs (tensorflow,
        keras on TensorFlow), None where it runs eagerly or before the first call."""
        compiled = self._compiled.get(config.backend().name)
        return None if compiled is None else compiled.trace_count


def function(fn=None, *, jit_compile: bool = False):
    """Compile ``fn`` for the backend in force: ``@ud.function`` or ``@ud.function(jit_compile=True)``.

    Inside, ``ud.value_and_grad``, ``optimizer.apply`` and Python control flow on tensors
    (``if ud.ops.sum(x) > 0:``, ``for i in range(ud.ops.shape(x)[0])``, ``while``) work on
    every backend: tensorflow converts them to graph control flow (AutoGraph), torch runs
    them as they are. Every input dimension stays unknown in a tensorflow graph, so a new
    batch size or sequence length never retraces; a new input rank or dtype traces again
    with a ``RetraceWarning``. Python code a graph cannot express (``float(t)``, an explicit
    ``bool(t)``) raises ``GraphConstructError`` naming the construct. ``trace_count`` tells how
    many graphs were traced (None on eager backends).

    Example::

        @ud.function
        def step(x, y):
            loss, grads = ud.value_and_grad(lambda: loss_fn(model(x), y), model.parameters())()
            optimizer.apply(grads)
            return loss
    """
    if fn is None:
        return lambda f: Function(f, jit_compile)
    return Function(fn, jit_compile)
