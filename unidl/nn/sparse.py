"""``Embedding``: a lookup table of vectors indexed by integer ids, with PyTorch's arguments, parameter and initialisation."""

from __future__ import annotations

import numpy as np

from unidl import arguments, embedding_ops, input_checks, ops as functional
from unidl.autograd import custom_gradient
from unidl.nn import init
from unidl.arguments import positive_int
from unidl.tensors import to_numpy
from unidl.nn.module import Module


class Embedding(Module):
    """``output[..., :] = weight[indices[...]]``: integer ``indices`` of any shape -> (*indices.shape, embedding_dim).

    Args:
        num_embeddings: the number of rows (ids 0 .. num_embeddings - 1).
        embedding_dim: the size of each vector.
        padding_idx: a row that starts at zero and gets no gradient (negative counts from the end).
        max_norm: None, or a number: each forward first scales the rows it looks up whose ``norm_type``-norm
            exceeds it by max_norm / (norm + 1e-7), writing them into ``weight`` (outside autograd, in eval mode
            too), then looks them up, as PyTorch's in-place ``embedding_renorm_``: the weight after the forward, the
            rows and the gradients are torch's, eagerly, inside ``ud.function``, ``train_step`` and ``fit`` (whose
            look at one sample's output shape writes nothing); on Keras-on-JAX, whose own steps drop a trainable
            parameter's writes, ``train_step``, ``fit``, ``evaluate`` and ``predict`` raise a
            ``GraphConstructError`` (a frozen weight, which its steps thread, is written).
        norm_type: the p of ``max_norm``'s norm (2: Euclidean; any p, 0 and +-inf too, as ``torch.norm``).
        scale_grad_by_freq: each looked-up row's gradient divided by the number of times its id occurs in the
            mini-batch, as PyTorch's (the counts compare every pair of ids: memory grows as the ids squared).
        sparse: must be False (sparse gradients are not supported; a ``ValueError``).

    Parameter ``weight`` (num_embeddings, embedding_dim), drawn from N(0, 1) as in PyTorch. An id outside
    [0, num_embeddings) is an ``IndexOutOfRangeError`` on every backend, inside compiled graphs too.

    Example::

        embed = ud.nn.Embedding(10000, 128, padding_idx=0)
        vectors = embed(tokens)          # tokens: (batch, time) int64 -> (batch, time, 128)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False):
        super().__init__()
        # sparse gradients no backend but torch has: asking for them is an error everywhere, never a silent
        # difference
        if sparse is not False and sparse != False:  # noqa: E712  (a NumPy bool too)
            raise ValueError(f"Embedding sparse={sparse!r} is not supported: unidl's Embedding keeps PyTorch's "
                             f"default (sparse=False) on every backend")
        if max_norm is not None:  # (checked; kept as given, as torch's repr shows them)
            embedding_ops.renorm_options("Embedding", max_norm, norm_type)
        self.max_norm, self.norm_type = max_norm, norm_type
        num_embeddings = positive_int("Embedding", "num_embeddings", num_embeddings)
        embedding_dim = positive_int("Embedding", "embedding_dim", embedding_dim)
        if padding_idx is not None:
            index = arguments.integer(padding_idx)
            if index is None or not -num_embeddings <= index < num_embeddings:
                raise ValueError(f"Embedding padding_idx must lie in [-{num_embeddings}, {num_embeddings}), "
                                 f"got {padding_idx!r}")
            padding_idx = index % num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.scale_grad_by_freq = arguments.flag("Embedding", "scale_grad_by_freq", scale_grad_by_freq)
        weight = init.normal((num_embeddings, embedding_dim))
        self.weight = self.parameter(weight if padding_idx is None else init.zero_row(weight, padding_idx))

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx: int | None = None,
                        max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        sparse: bool = False) -> "Embedding":
        """An Embedding holding ``embeddings`` (num_embeddings, embedding_dim), frozen unless ``freeze=False``
        (``requires_grad_``), as ``torch.nn.Embedding.from_pretrained``: its signature, the options the
        constructor refuses refused alike (a ``TypeError`` for PyTorch's own arguments before)."""
        embeddings = np.asarray(to_numpy(embeddings))
        if embeddings.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained needs a 2-D array (num_embeddings, embedding_dim), "
                             f"got shape {embeddings.shape}")
        layer = cls(embeddings.shape[0], embeddings.shape[1], padding_idx, max_norm, norm_type, scale_grad_by_freq,
                    sparse)
        layer.load_state_dict({"weight": embeddings})  # the padding row as given, as in PyTorch
        return layer.requires_grad_(not freeze)

    def forward(self, indices):
        indices = input_checks.check_integer(self.describe, "indices", indices)  # uint8, int8, int16 as int64
        if self.max_norm is not None:  # the state transition of PyTorch's in-place renormalization
            self.write_parameter("weight", embedding_ops.renormalized(
                indices, self.weight, *embedding_ops.renorm_options("Embedding", self.max_norm, self.norm_type)))
        rows = self._ops.embedding_rows(indices, self.weight, self.padding_idx)
        if not self.scale_grad_by_freq:
            return rows
        same = functional.unsqueeze(indices, -1) == functional.reshape(indices, (-1,))  # (*indices.shape, ids)
        counts = functional.sum(functional.cast_like(same, rows), -1, keepdim=True)
        return _gradient_scaled(rows, 1 / counts)

    def extra_repr(self):
        padding = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        frequency = ", scale_grad_by_freq=True" if self.scale_grad_by_freq else ""
        norm = f", max_norm={self.max_norm}" if self.max_norm is not None else ""
        norm += f", norm_type={self.norm_type}" if self.max_norm is not None and self.norm_type != 2 else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}{norm}{frequency}"


@custom_gradient
def _gradient_scaled(rows, scale):
    """``rows`` as they are, their gradient multiplied by ``scale`` (``scale_grad_by_freq``'s 1 / count of each
    id: the weight's gradient, summed over the ids, is PyTorch's); ``scale`` gets none."""
    return rows, lambda gradient: (gradient * scale, None)
