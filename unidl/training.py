"""``train_step``: the one training loop's unit of work, compiled or eager as the backend prefers.

The front end only checks what it can check cheaply in Python (matching batch
sizes, and the shapes of each new input signature once); the backend then
runs forward, gradients and update as one dispatch.
"""

from __future__ import annotations

from unidl import config, devices
from unidl.errors import BackendMismatchError, ShapeMismatchError
from unidl.tracing import python_randomness_preserved


def _shape(value):
    shape = getattr(value, "shape", None)
    if shape is None:
        raise TypeError(f"train_step inputs must be arrays or tensors, got {type(value).__name__}")
    return tuple(shape)


def check_same_backend(model, *others) -> object:
    """The backend shared by a model and its loss/optimizer, or a ``BackendMismatchError`` naming both."""
    backend = model._backend
    for other in others:
        if other is not None and other._backend is not backend:
            raise BackendMismatchError(
                f"{type(other).__name__} was created under backend {other._backend.name!r} but the model "
                f"{type(model).__name__} under {backend.name!r}; create them under the same backend")
    return backend


class TrainStep:
    """``step(x, y) -> loss`` for a model, loss and optimizer; see ``train_step``."""

    def __init__(self, model, loss_fn, optimizer, with_outputs: bool = False, eager: bool = False):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.eager = bool(eager)
        self._backend = check_same_backend(model, loss_fn, optimizer)
        self._run = self._backend.train_step(model, loss_fn, optimizer, with_outputs, self.eager)
        self._checked = set()

    def __call__(self, x, y, *inputs):
        x_shape, y_shape = _shape(x), _shape(y)
        if not x_shape or not y_shape or x_shape[0] != y_shape[0]:
            raise ShapeMismatchError(
                f"x and y must hold the same number of samples along axis 0; x has shape {x_shape}, "
                f"y has shape {y_shape}")
        key = (x_shape, y_shape, getattr(x, "dtype", None), getattr(y, "dtype", None))
        if not inputs and key not in self._checked:  # (a forward with extra inputs is checked by running it)
            if not self._checked:
                devices.compiled_placed(f"train_step of {type(self.model).__name__}", "first call",
                                        config.resolve_device(config._requested_device(), self._backend),
                                        self._backend.name)
            with python_randomness_preserved():  # a shape check is not a step: it draws nothing
                self._backend.check_shapes(self.model, self.loss_fn, x, y)
            self._checked.add(key)
        return self._run(x, y, *inputs)

    @property
    def trace_count(self) -> int | None:
        """How many times the backend traced the step into a graph (None for eager backends)."""
        return getattr(self._run, "trace_count", None)


def train_step(model, loss_fn, optimizer, *, eager: bool = False) -> TrainStep:
    """Build ``step(x, y, *inputs) -> loss`` that runs one training step of ``model``.

    ``inputs``: extra per-step values the forward takes, ``model(x, *inputs)`` (a dynamic net's depth
    for this step): graph inputs where the step is a graph, so a new value never freezes the old one.
    ``eager=True``: no graph on any backend; Python runs the forward at every step, for forwards
    that need Python per step (Keras's ``run_eagerly``). See docs/dynamic-forward.md.

    ``x`` and ``y`` may be NumPy arrays or the backend's own tensors; ``float(loss)`` works.
    On torch the step is eager; on tensorflow it is one ``tf.function`` graph (forward,
    gradients, in-graph variable updates), traced once per input rank and dtype; on keras it
    runs Keras's own ``Model.train_step`` (one graph likewise on Keras-TensorFlow).

    Example::

        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2))
        for t in range(500):
            loss = step(x, y)
    """
    return TrainStep(model, loss_fn, optimizer, eager=eager)
