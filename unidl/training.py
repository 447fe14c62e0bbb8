"""``train_step``: the one training loop's unit of work, compiled or eager as the backend prefers.

The front end only checks what it can check cheaply in Python (matching batch
sizes, and the shapes of each new input signature once); the backend then
runs forward, gradients and update as one dispatch.
"""

from __future__ import annotations

from unidl import config, devices
from unidl.errors import BackendMismatchError, NonFiniteLossError, ShapeMismatchError
from unidl.precision import precision_policy
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


def check_accumulate(accumulate) -> int:
    """``accumulate`` (micro-steps per optimizer update) as an int, or ``ValueError`` saying what is valid."""
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer (micro-steps per optimizer update, 1 for none), "
                         f"got {accumulate!r}")
    return accumulate


class TrainStep:
    """``step(x, y) -> loss`` for a model, loss and optimizer; see ``train_step``."""

    def __init__(self, model, loss_fn, optimizer, with_outputs: bool = False, eager: bool = False, precision=None,
                 check_finite: bool = True, accumulate: int = 1):
        if not isinstance(check_finite, bool):
            raise TypeError(f"train_step check_finite must be True or False, got {check_finite!r}")
        self.accumulate = check_accumulate(accumulate)
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.eager, self.check_finite, self.calls = bool(eager), check_finite, 0
        self.precision = precision_policy(precision)
        self._backend = check_same_backend(model, loss_fn, optimizer)
        if self.precision.mixed:
            self._run = self._backend.mixed_precision_train_step(model, loss_fn, optimizer, self.precision,
                                                                 with_outputs, self.eager, accumulate=self.accumulate)
        elif self.accumulate > 1:
            self._run = self._backend.train_step(model, loss_fn, optimizer, with_outputs, self.eager,
                                                 accumulate=self.accumulate)
        else:
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
        result = self._run(x, y, *inputs)
        self.calls += 1
        # (a loss scaler's skipped overflow step is its own business, not an error)
        if self.check_finite and not self.precision.scales_loss and not self.optimizer.last_step_finite:
            raise NonFiniteLossError(
                f"train_step call {self.calls}: the loss or a gradient was NaN or infinite, so this step's update "
                f"was skipped (weights and optimizer state are those before it); lower the learning rate or "
                f"check the data for NaN/inf, or pass check_finite=False to skip such steps without an error")
        return result

    @property
    def loss_scale(self) -> float:
        """The dynamic loss scale in force (``precision="16-mixed"``); 1.0 for the other precisions."""
        return float(self._run.loss_scale()) if self.precision.scales_loss else 1.0

    @property
    def trace_count(self) -> int | None:
        """How many times the backend traced the step into a graph (None for eager backends)."""
        return getattr(self._run, "trace_count", None)


def train_step(model, loss_fn, optimizer, *, eager: bool = False, precision=None,
               check_finite: bool = True, accumulate: int = 1) -> TrainStep:
    """Build ``step(x, y, *inputs) -> loss`` that runs one training step of ``model``.

    ``inputs``: extra per-step values the forward takes, ``model(x, *inputs)`` (a dynamic net's depth
    for this step): graph inputs where the step is a graph, so a new value never freezes the old one.
    ``eager=True``: no graph on any backend; Python runs the forward at every step, for forwards
    that need Python per step (Keras's ``run_eagerly``). See docs/dynamic-forward.md.
    Non-finite guard, the same on every backend: a step whose loss or any gradient is NaN or infinite
    updates nothing (parameters, optimizer slots and step count stay bit-identical; the check runs inside
    the graph where the step is one). With ``check_finite=True`` (the default) that step then raises
    ``NonFiniteLossError``; with ``check_finite=False`` it is skipped silently (``optimizer.last_step_finite``
    says so), as a loss scaler skips an overflowing step. Gradient clipping is the optimizer's
    (``clip_grad_norm=``, ``clip_grad_value=``).
    ``accumulate=N``: each call is a micro-step; every N-th call updates with the mean of the N micro-steps'
    gradients (PyTorch's ``(loss / N).backward()`` idiom), clipped after accumulation. The optimizer's step
    count (Adam's bias correction, schedules) counts updates, not micro-steps. A non-finite micro-step
    discards the window's gradients. The accumulation stays inside the graph on tensorflow, keras and jax. In a
    data-parallel torch job the micro-steps that do not update run under DDP's ``no_sync()`` (one all-reduce per
    update), and the non-finite check waits for the update's averaged sum.
    ``precision``: "32" (the default), "bf16-mixed" or "16-mixed" (a ``ud.Precision`` for loss-scaling
    settings): float32 weights, bfloat16/float16 compute, loss scaling for float16 (``unidl.precision``);
    ``step.loss_scale`` is the scale in force. With ``accumulate`` too, as ``torch.amp.GradScaler`` with
    accumulation: the scaled gradients add up over the window, and its N-th call makes the window's one
    non-finite check (an overflow skips the whole update), clips, updates and moves the scale once.

    ``x`` and ``y`` may be NumPy arrays or the backend's own tensors; ``float(loss)`` works.
    On torch the step is eager; on tensorflow it is one ``tf.function`` graph (forward,
    gradients, in-graph variable updates), traced once per input rank and dtype; on keras it
    runs Keras's own ``Model.train_step`` (one graph likewise on Keras-TensorFlow).

    Example::

        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2))
        for t in range(500):
            loss = step(x, y)
    """
    return TrainStep(model, loss_fn, optimizer, eager=eager, precision=precision, check_finite=check_finite,
                     accumulate=accumulate)
