"""``LSTMClassifier`` and ``TransformerClassifier`` train a few steps on every backend, padding ignored."""

import numpy as np
import pytest

import unidl as ud


def _tokens(rng):
    """Right-padded id sequences whose class is whether token 1 occurs (padding 0 never decides it)."""
    tokens = rng.integers(2, 12, (16, 6))
    tokens[::3, 4:] = 0
    tokens[::2, rng.integers(0, 3)] = 1
    return tokens, (tokens == 1).any(1).astype(np.int64)


@pytest.mark.parametrize("build", [
    lambda: ud.models.LSTMClassifier(12, 2, embedding_dim=8, hidden_size=8, bidirectional=True),
    lambda: ud.models.TransformerClassifier(12, 2, d_model=8, nhead=2, num_layers=1, dim_feedforward=16, max_len=6,
                                            dropout=0.0),
], ids=["LSTMClassifier", "TransformerClassifier"])
def test_sequence_classifiers_train(backend, rng, build):
    model = build()
    tokens, labels = _tokens(rng)
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.Adam(model.parameters(), lr=3e-2))
    first = float(step(tokens, labels))
    for _ in range(8):
        loss = float(step(tokens, labels))
    assert loss < 0.7 * first
    model.eval()
    padded = ud.to_numpy(model(ud.tensor(np.array([[3, 4, 0, 0]]))))
    shorter = ud.to_numpy(model(ud.tensor(np.array([[3, 4, 0]]))))
    assert np.allclose(padded, shorter, atol=1e-5)  # padding changes nothing
