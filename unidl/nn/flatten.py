"""``Flatten`` and ``Unflatten``: collapse axes into one, or split one into several, in NCHW order on every backend."""

from __future__ import annotations

from unidl import arguments, input_checks
from unidl.errors import ShapeMismatchError
from unidl.nn.module import Module


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W) with the features in NCHW (channel-major) order; the axes ``start_dim`` to
    ``end_dim`` (both included, -1 the last) into one, as ``torch.nn.Flatten``."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = arguments.axis("Flatten", "start_dim", start_dim)
        self.end_dim = arguments.axis("Flatten", "end_dim", end_dim)

    def forward(self, x):
        start = input_checks.start_axis(self.describe, x, self.start_dim)
        rank = max(len(x.shape), 1)
        if not -rank <= self.end_dim < rank:
            raise ShapeMismatchError(f"{self.describe()} end_dim {self.end_dim} is out of range for input of "
                                     f"{len(x.shape)} axes; use one in [{-rank}, {rank - 1}]")
        end = self.end_dim % rank
        if end == rank - 1:
            return self._ops.flatten(x, start)
        if end < start:
            raise ValueError(f"{self.describe()}: start_dim {self.start_dim} comes after end_dim {self.end_dim} for "
                             f"input of {len(x.shape)} axes")
        sizes = input_checks.sizes_of(x)  # (a graph's unknown sizes as scalar tensors)
        merged = sizes[start]
        for size in sizes[start + 1:end + 1]:
            merged = merged * size
        return self._ops.reshape(x, [*sizes[:start], merged, *sizes[end + 1:]])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split axis ``dim`` into ``unflattened_size`` (one entry may be -1), e.g. (N, 12) -> (N, 3, 2, 2)
    with ``Unflatten(1, (3, 2, 2))``: the inverse of ``Flatten``."""

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        sizes = tuple(arguments.integer(s) for s in arguments.sequence(unflattened_size) or ())
        if (not sizes or not all(s is not None and (s > 0 or s == -1) for s in sizes)
                or sizes.count(-1) > 1):
            raise ValueError(f"Unflatten unflattened_size must be positive ints (at most one -1), got {unflattened_size!r}")
        self.dim, self.unflattened_size = arguments.axis("Unflatten", "dim", dim, optional=False), sizes

    def forward(self, x):
        static = tuple(x.shape)
        dim = self.dim % len(static) if -len(static) <= self.dim < len(static) else None
        if dim is None:
            raise ShapeMismatchError(f"{self.describe()}: dim {self.dim} is out of range for input of shape {static}")
        known, size = 1, static[dim]
        for s in self.unflattened_size:
            known *= s if s > 0 else 1
        if size is not None and (size % known if -1 in self.unflattened_size else size != known):
            raise ShapeMismatchError(f"{self.describe()}: axis {self.dim} of size {size} cannot be split into "
                                     f"{self.unflattened_size} (input shape {static})")
        if size is None:  # inside a graph traced for any size there: the same error when the graph runs
            x = self._check_unknown_size(x, dim, known)
        shape = list(static[:dim]) + list(self.unflattened_size) + list(static[dim + 1:])
        if sum(s is None or s == -1 for s in shape) > 1:  # inside a graph: read the unknown sizes at run time
            dynamic = self._ops.shape(x)
            before = [dynamic[i] if s is None else s for i, s in enumerate(static[:dim])]
            after = [dynamic[i] if s is None else s for i, s in enumerate(static[dim + 1:], dim + 1)]
            shape = before + list(self.unflattened_size) + after
        else:
            shape = [-1 if s is None else s for s in shape]
        return self._ops.reshape(x, shape)

    def _check_unknown_size(self, x, dim, known):
        """``ShapeMismatchError`` with the eager message when the graph runs, where axis ``dim``'s size was
        unknown while tracing (the framework's own reshape error otherwise)."""
        sizes = input_checks.sizes_of(x)
        size = sizes[dim]
        fits = size % known == 0 if -1 in self.unflattened_size else size == known

        def template():
            return (f"{input_checks.literal(self.describe)}: axis {self.dim} of size {{}} cannot be split into "
                    f"{self.unflattened_size} (input shape {input_checks.shape_template(len(sizes))})")

        return input_checks.require(x, input_checks.holds(fits), template, (size,) + tuple(sizes))

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
