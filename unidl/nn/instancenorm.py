"""``InstanceNorm1d`` and ``InstanceNorm2d``: each sample's channels normalised over their own positions, with
PyTorch's arguments, defaults, running statistics and ``state_dict``."""

from __future__ import annotations

import warnings

import numpy as np

from unidl import input_checks
from unidl.errors import ShapeMismatchError
from unidl.nn.batchnorm import build_norm_state
from unidl.nn.module import Module


class _InstanceNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, the mean and biased variance taken over the positions of
    each sample's channel, as ``torch.nn.InstanceNorm*d`` (``F.instance_norm``).

    Args:
        num_features: C of the (N, C, *) input, or of the unbatched (C, *) input.
        eps: added to the variance. momentum: of the running statistics (None: they never move, as PyTorch's 0.0).
        affine: learn a per-channel ``weight`` (starting at 1) and ``bias`` (starting at 0); off by default.
        track_running_stats: keep ``running_mean`` and ``running_var`` (and ``num_batches_tracked``, which, as
            PyTorch's, instance normalisation never counts), moved in training by ``running = (1 - m) * running +
            m * s``, ``s`` the mean over the batch of each sample's statistics (unbiased variance), and used in
            evaluation instead of each sample's; off by default (each sample's statistics in evaluation too).
        bias: with ``affine``, whether there is a ``bias``.

    Input with another number of channels is a ``ShapeMismatchError`` with ``affine`` or running statistics (the
    parameters would not fit it), and PyTorch's warning without (``num_features`` is then unused).
    """

    _version = 2  # torch's _NormBase's: its state dicts' metadata, which hooks read

    spatial = 1  # positions' axes of a batched input: (N, C, L) or (N, C, H, W)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, *, bias: bool = True):
        super().__init__()
        build_norm_state(self, num_features, eps, momentum, affine, track_running_stats, bias)

    def _mismatch(self, owner, received) -> str:
        positions = ("L",) if self.spatial == 1 else ("H", "W")
        layout = ", ".join(map(str, (self.num_features,) + positions))
        return f"{owner} expected input of shape (N, {layout}) or unbatched ({layout}), received {received}"

    def forward(self, input):
        ops, shape = self._ops, tuple(input.shape)
        if len(shape) not in (self.spatial + 1, self.spatial + 2):
            raise ShapeMismatchError(self._mismatch(self.describe(), shape))
        channel_axis = len(shape) - self.spatial - 1
        strict = self.affine or self.track_running_stats
        if shape[channel_axis] is not None and shape[channel_axis] != self.num_features:
            if strict:
                raise ShapeMismatchError(self._mismatch(self.describe(), shape))
            warnings.warn(f"input's size at dim={channel_axis} does not match num_features. You can silence this "
                          f"warning by not passing in num_features, which is not used because affine=False",
                          UserWarning, stacklevel=3)
        if shape[channel_axis] is None and strict:  # (a graph traced for any sizes: checked when it runs)
            input = input_checks.require_sizes(self.describe, input, {channel_axis: self.num_features},
                                               self._mismatch)
        batched = len(shape) == self.spatial + 2
        x = input if batched else ops.unsqueeze(input, 0)
        own_statistics = self.training or not self.track_running_stats
        positions = int(np.prod([s if s is not None else 2 for s in x.shape[2:]]))
        if own_statistics and positions == 1:  # (PyTorch's error: one value has no variance)
            raise ValueError(f"{self.describe()} expected more than 1 spatial element when training, got input size "
                             f"{tuple(x.shape)}")
        given, state = x, self.weight if self.weight is not None else self.running_mean
        if state is None:  # (no weight, no running statistics: computed in x's dtype, which must be a float one)
            input_checks.check_floating(self.describe, x)
        elif input_checks.check_parameters_dtype(self.describe, x, state, halves=True, autocast=False):
            x = ops.cast(x, "float32")  # PyTorch's mixed-type kernel: computed in float32, y in the input's dtype
        axes = tuple(range(2, 2 + self.spatial))
        per_channel = (1,) * self.spatial
        if own_statistics:
            mean = ops.mean(x, axes, True)
            centered = x - mean
            variance = ops.mean(ops.square(centered), axes, True)
            if self.training and self.track_running_stats and self.momentum:
                self._move_running_statistics(x, mean, variance)
        else:
            mean = ops.reshape(self.running_mean, (-1,) + per_channel)
            centered = x - mean
            variance = ops.reshape(self.running_var, (-1,) + per_channel)
        y = centered / ops.sqrt(variance + self.eps)
        if self.weight is not None:
            y = y * ops.reshape(self.weight, (-1,) + per_channel)
        if self.bias is not None:
            y = y + ops.reshape(self.bias, (-1,) + per_channel)
        if x is not given:
            y = ops.cast_like(y, given)
        return y if batched else ops.squeeze(y, 0)

    def _move_running_statistics(self, x, mean, variance):
        """The running statistics moved toward the batch's mean of each sample's mean and unbiased variance, out of
        the gradient's way (PyTorch updates them in place, recording nothing)."""
        ops = self._ops
        count = 1
        for size in input_checks.sizes_of(x)[2:]:
            count = count * size
        count = ops.cast_like(count, variance) if self._backend.is_tensor(count) else float(count)
        unbiased = variance * (count / (count - 1))
        axes = (0,) + tuple(range(2, 2 + self.spatial))
        batch_mean, batch_variance = (ops.stop_gradient(ops.mean(s, axes)) for s in (mean, unbiased))
        momentum = self.momentum
        self.write_buffer("running_mean", (1 - momentum) * self.running_mean + momentum * batch_mean)
        self.write_buffer("running_var", (1 - momentum) * self.running_var + momentum * batch_variance)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation over (N, C, L) or unbatched (C, L) input (see ``_InstanceNorm``).

    Example::

        norm = ud.nn.InstanceNorm1d(16, affine=True)      # x: (batch, 16, length)
    """

    spatial = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation over (N, C, H, W) or unbatched (C, H, W) input (see ``_InstanceNorm``), as in style
    transfer networks."""

    spatial = 2
