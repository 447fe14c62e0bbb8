"""``TransformerClassifier``: token and position embeddings -> N encoder layers -> mean over real tokens -> head."""

from __future__ import annotations

from unidl import nn
from unidl import ops


class TransformerClassifier(nn.Module):
    """A small text classifier: ``token_embedding`` + ``position_embedding`` (learned, ``max_len`` positions),
    ``encoder`` (a ``TransformerEncoder`` of ``num_layers`` batch-first ``TransformerEncoderLayer``\\s, pre-norm
    with a final ``LayerNorm`` when ``norm_first``), the mean over the positions that are not ``padding_idx``,
    and ``head`` (``Linear``).

    ``model(tokens)``: (N, T) integer ids, T <= ``max_len``; padding positions are masked out of attention and of
    the mean (every sequence needs at least one real token).

    Example::

        model = ud.models.TransformerClassifier(vocab_size=5000, num_classes=4, d_model=128, num_layers=2)
        logits = model(tokens)        # (batch, time) -> (batch, 4)
    """

    def __init__(self, vocab_size: int, num_classes: int, d_model: int = 128, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 256, max_len: int = 512, dropout: float = 0.1, padding_idx: int = 0,
                 norm_first: bool = True):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, num_classes=num_classes, d_model=d_model, nhead=nhead,
                           num_layers=num_layers, dim_feedforward=dim_feedforward, max_len=max_len, dropout=dropout,
                           padding_idx=padding_idx, norm_first=norm_first)
        self.padding_idx = padding_idx
        self.token_embedding = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.position_embedding = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model) if norm_first else None)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens):
        padding = tokens == self.padding_idx
        positions = ops.arange(0, ops.shape(tokens)[1], dtype="int64")
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        x = self.encoder(x, src_key_padding_mask=padding)
        keep = ops.cast_like(ops.unsqueeze(tokens != self.padding_idx, 2), x)
        pooled = ops.sum(x * keep, 1) / ops.clip(ops.sum(keep, 1), 1.0)
        return self.head(pooled)
