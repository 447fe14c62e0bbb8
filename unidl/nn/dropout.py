"""``Dropout``: zero each element with probability p in training, scale the rest by 1/(1-p); identity in eval."""

from unidl.nn.module import Module


class Dropout(Module):
    """Inverted dropout. The mask comes from the backend's generator (``Backend.generator``, seeded by
    ``ud.manual_seed``), passed to the pure ``ops.dropout`` explicitly,
    so masks differ across backends while the expectation and the eval-mode identity do not."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"Dropout p={p!r} is invalid: it must lie in [0, 1]")
        self.p = float(p)

    def forward(self, x):
        if not self.training or not self.p:
            return x
        return self._ops.dropout(x, self.p, True, self._backend.generator())

    def extra_repr(self):
        return f"p={self.p}"
