"""Loss functions as modules: ``MSELoss``, ``L1Loss``, ``CrossEntropyLoss``, ``BCEWithLogitsLoss``.

Each takes ``reduction`` in {'mean', 'sum'} and follows PyTorch's definition,
which every backend implements with the same arithmetic.
"""

from __future__ import annotations

from unidl.errors import ShapeMismatchError
from unidl.nn.module import Module

REDUCTIONS = ("mean", "sum")


def _static_shape(tensor):
    return tuple(tensor.shape)


def _shapes_conflict(a, b) -> bool:
    if len(a) != len(b):
        return True
    return any(x is not None and y is not None and x != y for x, y in zip(a, b))


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__} reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def _check_same_shape(self, prediction, target):
        a, b = _static_shape(prediction), _static_shape(target)
        if _shapes_conflict(a, b):
            raise ShapeMismatchError(
                f"{type(self).__name__} needs prediction and target of the same shape; "
                f"prediction has shape {a}, target has shape {b}")

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error: reduce((prediction - target)^2)."""

    def forward(self, prediction, target):
        self._check_same_shape(prediction, target)
        return self._ops.mse_loss(prediction, target, self.reduction)


class L1Loss(_Loss):
    """Mean absolute error: reduce(|prediction - target|)."""

    def forward(self, prediction, target):
        self._check_same_shape(prediction, target)
        return self._ops.l1_loss(prediction, target, self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits ``(N, C)`` against integer class labels ``(N,)`` in [0, C).

    loss_i = -log(softmax(logits_i)[label_i]), reduced over the batch. Labels outside
    [0, C) are an error, never a NaN.
    """

    def forward(self, logits, labels):
        a, b = _static_shape(logits), _static_shape(labels)
        if len(a) != 2 or len(b) != 1 or (a[0] is not None and b[0] is not None and a[0] != b[0]):
            raise ShapeMismatchError(
                f"CrossEntropyLoss needs logits of shape (N, C) and integer labels of shape (N,); "
                f"got logits {a} and labels {b}")
        return self._ops.cross_entropy(logits, labels, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits: reduce(max(x, 0) - x*t + log(1 + exp(-|x|))), numerically stable."""

    def forward(self, logits, targets):
        self._check_same_shape(logits, targets)
        return self._ops.bce_with_logits(logits, targets, self.reduction)
