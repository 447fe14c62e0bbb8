"""Mixed precision for ``ud.train_step`` and ``ud.fit`` (``precision="32" | "bf16-mixed" | "16-mixed"``).

The names are Lightning's. Mixed precision keeps the parameters and optimizer state in float32 (the
master weights) and runs the forward's matrix products in bfloat16 or float16, by the rule of
``torch.autocast``: the ops in ``LOWER_PRECISION_OPS`` take their floating inputs in the compute dtype,
losses and the normalizations compute in float32 (``FLOAT32_OPS``, ``NORMALIZATION_OPS``), every other op
runs in the dtype it is given. The model's outputs reach the loss in float32. torch applies the rule with ``torch.autocast``; the other backends with
``autocast_ops``, a cast-inserting view of their ops namespace active while the forward is traced.
``"16-mixed"`` adds dynamic loss scaling (``torch.amp.GradScaler``'s rule, on every backend): the loss is
multiplied by the scale before the gradients, they are divided by it after; a step whose gradients are not
all finite is skipped (weights and optimizer state unchanged) and halves the scale, ``growth_interval``
finite steps in a row double it. With ``accumulate=N`` (GradScaler's accumulation) the N micro-steps' scaled
gradients are summed and the update micro-step checks, skips or updates, and moves the scale once: "steps"
here are updates.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

from unidl import arguments, config
from unidl.dtype_kinds import dtype_name, holds_floats

#: accepted spellings of each precision: Lightning's names first, then its aliases (its
#: ``_PRECISION_INPUT_STR_ALIAS_CONVERSION``: "16" and "bf16" for the mixed ones; the integers 32 and 16), which it
#: matches as written (no case folding, so neither does unidl: "BF16" is refused by both)
_NAMES = {"32": "32", "32-true": "32", 32: "32", "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
          "16-mixed": "16-mixed", "16": "16-mixed", 16: "16-mixed"}
VALID = ("32", "bf16-mixed", "16-mixed")
GROWTH_FACTOR, BACKOFF_FACTOR = 2.0, 0.5
#: the largest float32: a loss scale never grows past it (GradScaler keeps a scale that would overflow)
FLOAT32_MAX = 3.4028234663852886e38

#: ops whose floating inputs are cast to the compute dtype (torch.autocast's lower-precision list)
LOWER_PRECISION_OPS = ("linear", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "prelu",
                       "scaled_dot_product_attention")
#: ops computed in float32, result in float32 (the losses, as torch.autocast on CPU does; the train steps also
#: hand the loss float32 outputs)
FLOAT32_OPS = ("mse_loss", "l1_loss", "cross_entropy", "bce_with_logits")
#: ops computed in float32 whose (first) result comes back in the input's dtype (torch's mixed-type
#: normalization kernels: bfloat16 in, float32 statistics and parameters, bfloat16 out)
NORMALIZATION_OPS = ("batch_norm", "layer_norm", "group_norm")


@dataclass(frozen=True)
class Precision:
    """A precision policy. ``name``: "32", "bf16-mixed" or "16-mixed" (or Lightning's aliases of them: "32-true",
    32; "bf16"; "16", 16); the loss-scaling settings (used by "16-mixed" only) default to ``torch.amp.GradScaler``'s:
    the first scale ``init_scale``, doubled after ``growth_interval`` finite steps in a row (``GROWTH_FACTOR``)
    unless that would overflow float32 (as GradScaler's), halved by a step whose gradients overflow
    (``BACKOFF_FACTOR``; both fixed, as Keras's ``LossScaleOptimizer`` fixes them). NumPy numbers are taken as
    numbers.

    Example::

        ud.fit(model, (x, y), loss=..., optimizer=..., precision="bf16-mixed")
        step = ud.train_step(model, loss, opt, precision=ud.Precision("16-mixed", growth_interval=100))
    """

    name: str = "32"
    init_scale: float = 2.0 ** 16
    growth_interval: int = 2000

    def __post_init__(self):
        name = _NAMES.get(self.name) if isinstance(self.name, (str, int)) and not isinstance(self.name, bool) else None
        if name is None:
            raise ValueError(f"precision must be one of {', '.join(repr(v) for v in VALID)} (float32; bfloat16 or "
                             f"float16 compute over float32 weights; Lightning's aliases '32-true', 'bf16', '16', "
                             f"32 and 16 too), got {self.name!r}")
        object.__setattr__(self, "name", name)
        scale, interval = arguments.real(self.init_scale), arguments.integer(self.growth_interval)
        if scale is None or not 0 < scale <= FLOAT32_MAX:  # (the scale is a float32 on every backend, as torch's)
            raise ValueError(f"init_scale must be a positive number no larger than float32's maximum "
                             f"({FLOAT32_MAX:.8g}), got {self.init_scale!r}")
        if interval is None or interval < 1:
            raise ValueError(f"growth_interval must be a positive integer, got {self.growth_interval!r}")
        object.__setattr__(self, "init_scale", scale)
        object.__setattr__(self, "growth_interval", interval)
        if name != "16-mixed" and (scale, interval) != (Precision.init_scale, Precision.growth_interval):
            raise ValueError(f"init_scale and growth_interval set the loss scaling of precision='16-mixed'; "
                             f"precision={name!r} scales no loss: leave them out, or use '16-mixed'")

    @property
    def mixed(self) -> bool:
        """True for "bf16-mixed" and "16-mixed"."""
        return self.name != "32"

    @property
    def compute_dtype(self) -> str | None:
        """The dtype name of the lower-precision ops ("bfloat16", "float16"), None for "32"."""
        return {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(self.name)

    @property
    def scales_loss(self) -> bool:
        """True where gradients need dynamic loss scaling (float16's narrow range)."""
        return self.name == "16-mixed"


def precision_policy(value) -> Precision:
    """``value`` (None, a name, or a ``Precision``) as a ``Precision``, checked against the current dtype:
    mixed precision keeps float32 master weights, so it needs ``ud.set_dtype("float32")``."""
    policy = value if isinstance(value, Precision) else Precision("32" if value is None else value)
    if policy.mixed and config.get_dtype() != "float32":
        raise ValueError(f"precision={policy.name!r} keeps float32 master weights, but the dtype in force is "
                         f"{config.get_dtype()!r}; use ud.set_dtype('float32') or precision='32'")
    return policy


# ---- explicit casts (the backends without a framework autocast) --------------------------------------

_active_ops: contextvars.ContextVar = contextvars.ContextVar("unidl_autocast_ops", default=None)


def active_ops():
    """The cast-inserting ops namespace of the autocast scope in force (for ``ud.ops``), or None."""
    return _active_ops.get()


class AutocastOps:
    """A backend's ops namespace with ``torch.autocast``'s cast rules inserted (see the module docstring);
    every other op is the backend's own function, unchanged."""

    def __init__(self, ops, compute_dtype: str):
        self._ops, self._compute = ops, compute_dtype

    def _cast_all(self, values, dtype):
        cast = self._ops.cast
        return [cast(v, dtype) if holds_floats(v) and dtype_name(v.dtype) != dtype else v for v in values]

    def __getattr__(self, name):
        function = getattr(self._ops, name)
        if name in LOWER_PRECISION_OPS or name in FLOAT32_OPS:
            dtype = self._compute if name in LOWER_PRECISION_OPS else "float32"

            def cast_op(*args, **kwargs):
                return function(*self._cast_all(args, dtype), **kwargs)
        elif name in NORMALIZATION_OPS:
            def cast_op(x, *args, **kwargs):
                result = function(*self._cast_all((x, *args), "float32"), **kwargs)
                like = dtype_name(x.dtype)
                if isinstance(result, tuple):
                    return (self._ops.cast(result[0], like), *result[1:])
                return self._ops.cast(result, like)
        else:
            object.__setattr__(self, name, function)
            return function
        cast_op.__name__ = name
        object.__setattr__(self, name, cast_op)  # built once per name and scope
        return cast_op


@contextlib.contextmanager
def autocast_modules(modules, ops, compute_dtype: str):
    """Run ``modules`` (every module of a model and its loss) and ``ud.ops`` with ``AutocastOps`` in force:
    enter it around the forward, or around the call that traces it into a graph."""
    wrapped = AutocastOps(ops, compute_dtype)
    saved = [(module, module.__dict__.get("_ops")) for module in modules]
    token = _active_ops.set(wrapped)
    try:
        for module, _ in saved:
            object.__setattr__(module, "_ops", wrapped)
        yield wrapped
    finally:
        for module, previous in saved:
            object.__setattr__(module, "_ops", previous)
        _active_ops.reset(token)


def modules_of(*objects) -> list:
    """Every unidl module under ``objects`` (a model, a loss module; anything else is skipped)."""
    from unidl.nn.module import Module

    found = []
    for obj in objects:
        if isinstance(obj, Module):
            found.extend(m for m in obj.modules() if not any(m is f for f in found))
    return found
