"""Distances between two inputs as layers, with PyTorch's constructor arguments and defaults: ``CosineSimilarity``
and ``PairwiseDistance`` (``ud.ops.cosine_similarity`` and ``ud.ops.pairwise_distance``)."""

from __future__ import annotations

from unidl import arguments, ops  # noqa: F401  (ops first: it imports activation_ops, which imports it)
from unidl import activation_ops
from unidl.nn.module import Module


class CosineSimilarity(Module):
    """sum(x1 / max(||x1||, eps) * x2 / max(||x2||, eps)) along ``dim`` of the two inputs broadcast together,
    each norm clamped on its own, as PyTorch computes it. A negative ``eps``, which PyTorch refuses when it runs (a
    RuntimeError), is a ``ValueError`` when the layer is built."""

    def __init__(self, dim: int = 1, eps: float = 1e-8):
        super().__init__()
        self.dim = arguments.axis("CosineSimilarity", "dim", dim, optional=False)
        self.eps = activation_ops.cosine_eps("CosineSimilarity", eps)

    def forward(self, x1, x2):
        return activation_ops.cosine_similarity(x1, x2, self.dim, self.eps)


class PairwiseDistance(Module):
    """The p-norm of x1 - x2 + eps along the last axis of the two inputs broadcast together (``eps`` added to each
    difference; ``p`` 0 counts the non-zero ones, +-inf takes the largest or smallest). PyTorch names the attribute
    holding ``p`` ``norm``."""

    def __init__(self, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False):
        super().__init__()
        self.norm = activation_ops.number("PairwiseDistance", "p", p)
        self.eps = activation_ops.number("PairwiseDistance", "eps", eps)
        self.keepdim = arguments.boolean("PairwiseDistance", "keepdim", keepdim)

    def forward(self, x1, x2):
        return activation_ops.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)
