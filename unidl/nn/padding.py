"""The padding layers of ``torch.nn`` (``ZeroPad1d``/``2d``, ``ConstantPad1d``/``2d``, ``ReflectionPad1d``/``2d``,
``ReplicationPad1d``/``2d``, ``CircularPad1d``/``2d``): ``ud.ops.pad`` with one amount per side of the last one or
two axes, PyTorch's limits kept on every backend (``unidl.padding``), the errors naming the layer."""

from __future__ import annotations

from unidl import arguments, ops as functional, padding as rules
from unidl.errors import ShapeMismatchError
from unidl.nn.module import Module


class _PadNd(Module):
    """What the padding layers share: ``padding`` (one int for every side, or ``2 * rank`` ints, last axis first:
    (left, right) or (left, right, top, bottom)) checked when built, and the input's rank and sizes checked, naming
    the layer, before ``ud.ops.pad`` runs (inside graphs too, where the sizes are checked when the graph runs)."""

    mode = "constant"
    rank = 1  # padded (last) axes

    def __init__(self, padding, value=0.0):
        super().__init__()
        amounts = arguments.integers(padding, 2 * self.rank)
        if amounts is None:
            sides = "(left, right)" if self.rank == 1 else "(left, right, top, bottom)"
            raise ValueError(f"{type(self).__name__} padding must be an int or {2 * self.rank} ints {sides}, got "
                             f"{padding!r}")
        self.padding, self.value = amounts, value
        try:  # the mode's limits on the amounts (circular: none negative)
            rules.checked_amounts(_Shape(self.rank + 1), amounts, self.mode, value)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None

    def forward(self, x):
        shape = tuple(x.shape)
        ranks = (self.rank + 1, self.rank + 2)
        if (len(shape) not in ranks) if self.mode != "constant" else len(shape) < self.rank:
            spatial = ("L",) if self.rank == 1 else ("H", "W")
            wanted = (f"(N, C, {', '.join(spatial)}) or (C, {', '.join(spatial)})" if self.mode != "constant" else
                      f"at least {self.rank} axes")
            raise ShapeMismatchError(f"{self.describe()} expected input of shape {wanted}, received {shape}")
        if self.mode != "constant" or min(self.padding) < 0:
            x = rules.check_sizes(x, self.padding, self.mode, self.describe)
        return functional.pad(x, self.padding, self.mode, self.value)

    def extra_repr(self):
        return f"{self.padding}"


class _Shape:
    """A stand-in with only a rank, for ``unidl.padding.checked_amounts``' checks of the amounts when built."""

    def __init__(self, rank):
        self.shape = (1,) * rank


class _SidesPadNd(_PadNd):
    """A padding layer built from its amounts alone (no value)."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)


class _ConstantPadNd(_PadNd):
    def __init__(self, padding, value):
        super().__init__(padding, value)

    def extra_repr(self):
        return f"padding={self.padding}, value={self.value}"


class ConstantPad1d(_ConstantPadNd):
    """Pad the last axis with ``value``, as ``torch.nn.ConstantPad1d``; a negative amount crops.

    Args:
        padding: int (both sides) or (left, right).
        value: the fill value.
    """


class ConstantPad2d(_ConstantPadNd):
    """Pad the last two axes with ``value``, as ``torch.nn.ConstantPad2d``; a negative amount crops.

    Args:
        padding: int (every side) or (left, right, top, bottom).
        value: the fill value.
    """

    rank = 2


class ZeroPad1d(_SidesPadNd):
    """Pad the last axis with zeros, as ``torch.nn.ZeroPad1d``; a negative amount crops.

    Args:
        padding: int (both sides) or (left, right).
    """


class ZeroPad2d(_SidesPadNd):
    """Pad the last two axes with zeros, as ``torch.nn.ZeroPad2d``; a negative amount crops.

    Args:
        padding: int (every side) or (left, right, top, bottom).
    """

    rank = 2


class ReflectionPad1d(_SidesPadNd):
    """Pad (N, C, L) or (C, L) input with its reflection about its edges (the edge not repeated), as
    ``torch.nn.ReflectionPad1d``: each amount shorter than the axis.

    Args:
        padding: int (both sides) or (left, right).
    """

    mode = "reflect"


class ReflectionPad2d(_SidesPadNd):
    """Pad (N, C, H, W) or (C, H, W) input with its reflection about its edges, as ``torch.nn.ReflectionPad2d``:
    each amount shorter than its axis.

    Args:
        padding: int (every side) or (left, right, top, bottom).
    """

    mode, rank = "reflect", 2


class ReplicationPad1d(_SidesPadNd):
    """Pad (N, C, L) or (C, L) input with copies of its edge values, as ``torch.nn.ReplicationPad1d``.

    Args:
        padding: int (both sides) or (left, right).
    """

    mode = "replicate"


class ReplicationPad2d(_SidesPadNd):
    """Pad (N, C, H, W) or (C, H, W) input with copies of its edge values, as ``torch.nn.ReplicationPad2d``.

    Args:
        padding: int (every side) or (left, right, top, bottom).
    """

    mode, rank = "replicate", 2


class CircularPad1d(_SidesPadNd):
    """Pad (N, C, L) or (C, L) input with its values wrapped around (the end before the start), as
    ``torch.nn.CircularPad1d``: no amount longer than the axis, none negative.

    Args:
        padding: int (both sides) or (left, right).
    """

    mode = "circular"


class CircularPad2d(_SidesPadNd):
    """Pad (N, C, H, W) or (C, H, W) input with its values wrapped around, as ``torch.nn.CircularPad2d``: no
    amount longer than its axis, none negative.

    Args:
        padding: int (every side) or (left, right, top, bottom).
    """

    mode, rank = "circular", 2
