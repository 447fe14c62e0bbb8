"""``LSTMClassifier``: token ids -> embedding -> LSTM over each sequence's own length -> linear head, written once."""

from __future__ import annotations

from unidl import nn
from unidl import ops


class LSTMClassifier(nn.Module):
    """A text classifier: ``Embedding`` (``embedding``), ``LSTM`` (``lstm``, batch first) and ``Linear`` (``head``)
    on the final hidden state of the last layer (both directions' when ``bidirectional``).

    ``model(tokens)``: (N, T) integer ids, right-padded with ``padding_idx``; each sequence's length is its
    count of other ids (at least one), so padding never reaches the final state.

    Example::

        model = ud.models.LSTMClassifier(vocab_size=5000, num_classes=4)
        logits = model(tokens)        # (batch, time) -> (batch, 4)
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 64, hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, num_classes=num_classes, embedding_dim=embedding_dim,
                           hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                           dropout=dropout, padding_idx=padding_idx)
        self.padding_idx = padding_idx
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True, dropout=dropout,
                            bidirectional=bidirectional)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, tokens):
        lengths = ops.sum(ops.cast(tokens != self.padding_idx, "int64"), 1)
        lengths = ops.where(lengths > 0, lengths, lengths * 0 + 1)
        _, (h_n, _) = self.lstm(self.embedding(tokens), lengths=lengths)
        last = ops.concat([h_n[-2], h_n[-1]], 1) if self.lstm.bidirectional else h_n[-1]
        return self.head(last)
