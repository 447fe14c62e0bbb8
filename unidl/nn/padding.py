"""The padding layers of ``torch.nn`` (``ZeroPad1d``/``2d``, ``ConstantPad1d``/``2d``, ``ReflectionPad1d``/``2d``,
``ReplicationPad1d``/``2d``, ``CircularPad1d``/``2d``): ``ud.ops.pad`` with one amount per side of the last one or
two axes, PyTorch's limits kept on every backend (``unidl.padding``), the errors naming the layer."""

from __future__ import annotations

from unidl import arguments, ops as functional, padding as rules
from unidl.errors import PaddingLengthError, ShapeMismatchError
from unidl.nn.module import Module


class _PadNd(Module):
    """What the padding layers share: ``padding`` checked when built, as PyTorch's layers take it (one int for
    every side of the layer's ``rank`` last axes, or the amounts of ``ud.ops.pad``, last axis first: (left, right),
    (left, right, top, bottom), ...; ``ZeroPad2d((1, 2))`` pads the last axis alone), and the input's rank and sizes
    checked, naming the layer, before ``ud.ops.pad`` runs (inside graphs too, where the sizes are checked when the
    graph runs)."""

    mode = "constant"
    rank = 1  # padded (last) axes of one int

    def __init__(self, padding, value=0.0):
        super().__init__()
        self.padding, self.value = self._amounts(padding), value
        try:  # the mode's limits on the amounts (circular: none negative)
            rules.checked_amounts(_Shape(len(self.padding) // 2 + 1), self.padding, self.mode, value)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None

    def _amounts(self, padding) -> tuple:
        """``padding`` as a tuple of ints: PyTorch's ``_ntuple`` (an int repeated ``2 * rank`` times, any other
        iterable as it is), then ``F.pad``'s rules, refused here rather than at the first call: ints only
        (``TypeError``), an even length (``PaddingLengthError``, PyTorch's ``RuntimeError``), 2, 4 or 6 of them for
        the modes other than 'constant' (PyTorch's ``NotImplementedError``)."""
        owner, single = type(self).__name__, arguments.integer(padding)
        amounts = (single,) * (2 * self.rank) if single is not None else arguments.sequence(padding)
        # (a circular layer pads input of its own rank alone: (N, C, L) or (C, L) are padded on 2 axes at most)
        lengths = (2, 4, 6)[:self.rank + 1] if self.mode == "circular" else (2, 4, 6)
        forms = (f"an int or (left, right){', (left, right, top, bottom)' if self.rank == 2 else ''}, or "
                 + ("an even number of ints (before, after) per axis, last axis first" if self.mode == "constant"
                    else f"{', '.join(map(str, lengths[:-1]))} or {lengths[-1]} ints (before, after) per axis, last "
                         f"axis first"))
        if amounts is None or None in map(arguments.integer, amounts):
            raise TypeError(f"{owner} padding must be {forms}; got {padding!r}")
        if len(amounts) % 2 or (self.mode != "constant" and len(amounts) not in lengths):
            raise PaddingLengthError(f"{owner} padding must be {forms}; got {padding!r}")
        return tuple(map(arguments.integer, amounts))

    def forward(self, x):
        shape, axes = tuple(x.shape), len(self.padding) // 2
        ranks = {axes + 1, axes + 2}
        if self.mode == "circular":  # (PyTorch's circular layers check their own rank too)
            ranks &= {self.rank + 1, self.rank + 2}
        if (len(shape) not in ranks) if self.mode != "constant" else len(shape) < axes:
            spatial = ("L",) if axes == 1 else ("D", "H", "W")[3 - axes:]
            layouts = {axes + 2: ("N", "C") + spatial, axes + 1: ("C",) + spatial}
            wanted = (" or ".join(f"({', '.join(layouts[rank])})" for rank in sorted(ranks, reverse=True))
                      if self.mode != "constant" else f"at least {axes} axes")
            raise ShapeMismatchError(f"{self.describe()} expected input of shape {wanted}, received {shape}")
        if self.mode != "constant" or min(self.padding, default=0) < 0:
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
        padding: int (both sides), (left, right), or any even number of amounts of ``ud.ops.pad`` (pairs for
            the axes before), as PyTorch takes them.
        value: the fill value.
    """


class ConstantPad2d(_ConstantPadNd):
    """Pad the last two axes with ``value``, as ``torch.nn.ConstantPad2d``; a negative amount crops.

    Args:
        padding: int (every side), (left, right, top, bottom), or any even number of amounts of ``ud.ops.pad``
            ((left, right): the last axis alone), as PyTorch takes them.
        value: the fill value.
    """

    rank = 2


class ZeroPad1d(_SidesPadNd):
    """Pad the last axis with zeros, as ``torch.nn.ZeroPad1d``; a negative amount crops.

    Args:
        padding: int (both sides), (left, right), or any even number of amounts of ``ud.ops.pad`` (pairs for
            the axes before), as PyTorch takes them.
    """


class ZeroPad2d(_SidesPadNd):
    """Pad the last two axes with zeros, as ``torch.nn.ZeroPad2d``; a negative amount crops.

    Args:
        padding: int (every side), (left, right, top, bottom), or any even number of amounts of ``ud.ops.pad``
            ((left, right): the last axis alone), as PyTorch takes them.
    """

    rank = 2


class ReflectionPad1d(_SidesPadNd):
    """Pad (N, C, L) or (C, L) input with its reflection about its edges (the edge not repeated), as
    ``torch.nn.ReflectionPad1d``: each amount shorter than the axis.

    Args:
        padding: int (both sides), (left, right), or any even number of amounts of ``ud.ops.pad`` (pairs for
            the axes before), as PyTorch takes them.
    """

    mode = "reflect"


class ReflectionPad2d(_SidesPadNd):
    """Pad (N, C, H, W) or (C, H, W) input with its reflection about its edges, as ``torch.nn.ReflectionPad2d``:
    each amount shorter than its axis.

    Args:
        padding: int (every side), (left, right, top, bottom), or any even number of amounts of ``ud.ops.pad``
            ((left, right): the last axis alone), as PyTorch takes them.
    """

    mode, rank = "reflect", 2


class ReplicationPad1d(_SidesPadNd):
    """Pad (N, C, L) or (C, L) input with copies of its edge values, as ``torch.nn.ReplicationPad1d``.

    Args:
        padding: int (both sides), (left, right), or any even number of amounts of ``ud.ops.pad`` (pairs for
            the axes before), as PyTorch takes them.
    """

    mode = "replicate"


class ReplicationPad2d(_SidesPadNd):
    """Pad (N, C, H, W) or (C, H, W) input with copies of its edge values, as ``torch.nn.ReplicationPad2d``.

    Args:
        padding: int (every side), (left, right, top, bottom), or any even number of amounts of ``ud.ops.pad``
            ((left, right): the last axis alone), as PyTorch takes them.
    """

    mode, rank = "replicate", 2


class CircularPad1d(_SidesPadNd):
    """Pad (N, C, L) or (C, L) input with its values wrapped around (the end before the start), as
    ``torch.nn.CircularPad1d``: no amount longer than the axis, none negative.

    Args:
        padding: int (both sides), (left, right), or any even number of amounts of ``ud.ops.pad`` (pairs for
            the axes before), as PyTorch takes them.
    """

    mode = "circular"


class CircularPad2d(_SidesPadNd):
    """Pad (N, C, H, W) or (C, H, W) input with its values wrapped around, as ``torch.nn.CircularPad2d``: no
    amount longer than its axis, none negative.

    Args:
        padding: int (every side), (left, right, top, bottom), or any even number of amounts of ``ud.ops.pad``
            ((left, right): the last axis alone), as PyTorch takes them.
    """

    mode, rank = "circular", 2
