"""``Dropout`` (each element) and ``Dropout2d`` (whole channels): zero with probability p in training, scale the rest
by 1/(1-p); identity in eval."""

from unidl import arguments, input_checks, ops as functional
from unidl.errors import ShapeMismatchError
from unidl.nn.module import Module


class Dropout(Module):
    """Inverted dropout. The mask comes from the backend's generator (``Backend.generator``, seeded by
    ``ud.manual_seed``), passed to the pure ``ops.dropout`` explicitly,
    so masks differ across backends while the expectation and the eval-mode identity do not."""

    def __init__(self, p: float = 0.5, inplace: bool = False):  # (inplace: PyTorch's signature; never in place)
        super().__init__()
        self.p, self.inplace = arguments.probability("Dropout", "p", p), bool(inplace)

    def forward(self, x):
        if not self.training or not self.p:
            return x
        x = input_checks.as_floating(self.describe, "x", x)  # (integers: floats of the dtype in force, every backend)
        return self._ops.dropout(x, self.p, True, self._backend.generator())

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Dropout2d(Module):
    """Channel dropout, as ``torch.nn.Dropout2d``: in training each channel of each sample of (N, C, H, W) input
    (or (N, C, L)) is zeroed whole with probability p, the others scaled by 1/(1-p); identity in eval. The mask
    comes from the backend's generator, as ``Dropout``'s."""

    def __init__(self, p: float = 0.5, inplace: bool = False):  # (inplace: PyTorch's signature; never in place)
        super().__init__()
        self.p, self.inplace = arguments.probability("Dropout2d", "p", p), bool(inplace)

    def forward(self, x):
        if len(x.shape) not in (3, 4):
            raise ShapeMismatchError(f"{self.describe()} expected input of shape (N, C, H, W) or (N, C, L), "
                                     f"received {tuple(x.shape)}")
        if not self.training or not self.p:
            return x
        return functional.dropout2d(x, self.p, True, self._backend.generator())

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
