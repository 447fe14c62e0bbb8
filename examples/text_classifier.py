"""The transformer and the LSTM text classifiers on a generated data set of padded token sequences, through ``ud.fit``.

A sequence (3 to 12 tokens out of a vocabulary of 50, right-padded with 0) is positive when it holds token 7 before
token 9. Both models mask the padding: the LSTM runs each sequence to its own length, the transformer masks padded
keys and leaves them out of its mean.

    UNIDL_BACKEND=tensorflow python examples/text_classifier.py
"""

import os

import numpy as np

import unidl as ud

VOCABULARY, LENGTH = 50, 12


def generated(count: int, seed: int):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((count, LENGTH), np.int64)
    labels = rng.integers(0, 2, count)
    for row, label in enumerate(labels):
        size = rng.integers(3, LENGTH + 1)
        tokens[row, :size] = rng.integers(10, VOCABULARY, size)
        first, second = sorted(rng.choice(size, 2, replace=False))
        tokens[row, first], tokens[row, second] = (7, 9) if label else (9, 7)
    return tokens, labels


def main(epochs: int = 8) -> dict:
    ud.manual_seed(0)
    (x, y), (x_test, y_test) = generated(2000, 0), generated(500, 1)
    print(f"backend={ud.get_backend()} device={ud.get_device()}")
    accuracies = {}
    for name, model in (
            ("transformer", ud.models.TransformerClassifier(VOCABULARY, 2, d_model=32, nhead=4, num_layers=2,
                                                            dim_feedforward=64, max_len=LENGTH, dropout=0.0)),
            ("lstm", ud.models.LSTMClassifier(VOCABULARY, 2, embedding_dim=32, hidden_size=32))):
        loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=64, shuffle=True, seed=0)
        ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.Adam(model.parameters(), lr=3e-3),
               epochs=epochs, verbose=0)
        accuracies[name] = ud.evaluate(model, (x_test, y_test))["accuracy"]
        print(f"{name} test accuracy {accuracies[name]:.4f}")
    return accuracies


if __name__ == "__main__":
    main(int(os.environ.get("EPOCHS", 8)))
