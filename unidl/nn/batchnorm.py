"""``BatchNorm1d`` and ``BatchNorm2d``: batch statistics in training, running statistics in eval."""

from __future__ import annotations

import numpy as np

from unidl import input_checks, ops as functional
from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.arguments import check_range, flag, positive_int
from unidl.nn.module import Module


def build_norm_state(module, num_features, eps, momentum, affine, track_running_stats, bias) -> None:
    """A batch or instance norm's settings, checked, and its state as torch's: ``weight`` (ones) and ``bias``
    (zeros, unless ``bias`` is False) where ``affine``, and the buffers ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` where it tracks running statistics (each None otherwise)."""
    owner = type(module).__name__
    module.num_features = num_features = positive_int(owner, "num_features", num_features)
    module.eps = check_range(owner, "eps", eps, low_open=True)
    module.momentum = None if momentum is None else check_range(owner, "momentum", momentum, 0.0, 1.0,
                                                                 high_open=False)
    module.affine = affine = flag(owner, "affine", affine)
    module.track_running_stats = flag(owner, "track_running_stats", track_running_stats)
    module.weight = module.parameter(init.ones((num_features,))) if affine else None
    module.bias = module.parameter(init.zeros((num_features,))) if affine and flag(owner, "bias", bias) else None
    if not module.track_running_stats:
        module.running_mean = module.running_var = module.num_batches_tracked = None
        return
    module.register_buffer("running_mean", init.zeros((num_features,)))
    module.register_buffer("running_var", init.ones((num_features,)))
    module.register_buffer("num_batches_tracked", np.zeros((), np.int64))


# The positions' names of an input of 0, 1 or 2 spatial axes, as torch.nn's docs name them: "(N, C, H, W)"
_POSITIONS = {0: (), 1: ("L",), 2: ("H", "W")}


def _layout(names) -> str:
    """``("N", 4, "H", "W")`` as ``(N, 4, H, W)``, as every layer's shape error writes it."""
    return f"({', '.join(map(str, names))})"


class _BatchNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (axis 1).

    Training: mean and biased var of the batch; ``num_batches_tracked`` (n) counts the batch and the running
    estimates move by ``running = (1 - m) * running + m * batch`` (unbiased var), as in PyTorch, with
    ``m = momentum``, or ``m = 1 / n`` when ``momentum=None`` (the cumulative average of every batch so far).
    Eval: the running estimates. ``running_mean``, ``running_var`` and ``num_batches_tracked`` (int64, as
    PyTorch's) are in ``state_dict()``, so a ``torch.nn.BatchNorm*d`` state dict loads with ``strict=True``.
    ``track_running_stats=False``: no running estimates (None, and none in ``state_dict()``); the batch's
    statistics normalise in eval too, as PyTorch's. ``bias=False`` (with ``affine``): a weight and no bias.
    """

    ranks: tuple[int, ...] = ()
    _optional_buffers = ("num_batches_tracked",)  # files saved before unidl kept the counter load as they did
    _version = 2  # torch's _NormBase's (with num_batches_tracked): its state dicts' metadata, which hooks read

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        build_norm_state(self, num_features, eps, momentum, affine, track_running_stats, bias)

    def _mismatch(self, owner, received) -> str:
        expected = " or ".join(_layout(("N", self.num_features) + _POSITIONS[r - 2]) for r in self.ranks)
        return f"{owner} expected input of shape {expected}, received {received}"

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) not in self.ranks or (shape[1] is not None and shape[1] != self.num_features):
            raise ShapeMismatchError(self._mismatch(self.describe(), shape))
        if None in shape:  # (a graph traced for any sizes: checked when it runs)
            x = input_checks.require_sizes(self.describe, x, {1: self.num_features}, self._mismatch)
        tracking = self.track_running_stats
        batch_statistics = self.training or not tracking
        if batch_statistics:  # one value per channel: PyTorch's error, eagerly and inside graphs
            x = input_checks.check_batch_statistics(self.describe, x)
        momentum = self.momentum if self.momentum is not None else 0.0  # eval: unused
        if self.training and tracking:
            count = self.num_batches_tracked + 1
            self.write_buffer("num_batches_tracked", count)
            if self.momentum is None:  # a tensor inside a compiled step: the count is part of the state
                momentum = 1.0 / self._ops.cast_like(count, self.running_mean)
        given, state = x, self._float_state()
        if state is None:  # (no weight, no running statistics: computed in x's dtype, which must be a float one)
            input_checks.check_floating(self.describe, x)
        elif input_checks.check_parameters_dtype(self.describe, x, state, halves=True, autocast=False):
            x = self._ops.cast(x, "float32")  # PyTorch's mixed-type kernel: computed in float32, y in x's dtype
        running_mean, running_var = self.running_mean, self.running_var
        if not tracking:  # the op's running statistics, which it moves for nothing (from the weight: on its device)
            if self.weight is not None:
                running_mean = self._ops.zeros_like(self.weight)
                running_var = running_mean + 1
            else:
                running_mean = functional.cast_like(np.zeros(self.num_features), x)
                running_var = functional.cast_like(np.ones(self.num_features), x)
        y, running_mean, running_var = self._ops.batch_norm(x, running_mean, running_var, self.weight, self.bias,
                                                            batch_statistics, momentum, self.eps)
        if x is not given:
            y = self._ops.cast_like(y, given)
        if self.training and tracking:  # the op is pure: the module writes the new statistics (a state transition)
            nonempty = input_checks.has_values_per_channel(x)
            if nonempty is False:  # an empty batch (NaN statistics) leaves them as they are, as PyTorch's
                return y
            if nonempty is not True:  # known only when the graph runs
                running_mean = self._ops.where(nonempty, running_mean, self.running_mean)
                running_var = self._ops.where(nonempty, running_var, self.running_var)
            self.write_buffer("running_mean", running_mean)
            self.write_buffer("running_var", running_var)
        return y

    def _float_state(self):
        """The weight, or the running mean where there is none: what fixes the dtype of the input it takes."""
        return self.weight if self.weight is not None else self.running_mean

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) input."""

    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W) input."""

    ranks = (4,)
