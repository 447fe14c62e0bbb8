"""A user-defined module with its own ``forward`` written with ``ud.ops``: runs unchanged on every backend.

    UNIDL_BACKEND=tensorflow python examples/custom_module.py
"""

import os

import numpy as np

import unidl as ud


class ResidualMLP(ud.nn.Module):
    """x -> relu(W1 x) -> + skip -> softmax classifier, with a hand-written residual connection."""

    def __init__(self, features: int, hidden: int, classes: int):
        super().__init__()
        self.inp = ud.nn.Linear(features, hidden)
        self.block = ud.nn.Linear(hidden, hidden)
        self.out = ud.nn.Linear(hidden, classes)

    def forward(self, x):
        h = ud.ops.relu(self.inp(x))
        h = h + ud.ops.tanh(self.block(h))          # native tensors: + works as usual
        h = ud.ops.clip(h, -5.0, 5.0)
        return self.out(h)


def main(epochs: int = 20) -> float:
    ud.manual_seed(0)
    (x, y), (x_test, y_test) = ud.datasets.digits("train", flatten=True), ud.datasets.digits("test", flatten=True)
    model = ResidualMLP(64, 64, 10)
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.Adam(model.parameters(), lr=3e-3))
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=64, shuffle=True, seed=0)
    print(f"backend={ud.get_backend()}")
    for epoch in range(epochs):
        losses = [float(step(xb, yb)) for xb, yb in loader]
        if epoch % 5 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}")
    probabilities = ud.ops.softmax(model(ud.tensor(x_test)))
    accuracy = float((ud.to_numpy(probabilities).argmax(1) == y_test).mean())
    print(f"test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main(int(os.environ.get("EPOCHS", 20)))
