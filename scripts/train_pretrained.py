"""Train the pretrained digits models shipped in ``unidl/models/weights/`` (rerun to reproduce them).

    .venv/bin/python scripts/train_pretrained.py [--out DIR]

Deterministic: seed 0, the torch backend, ``ud.datasets.digits('train')``, Adam and ``ud.train_step``.
Prints each model's test accuracy and writes each file atomically (``ud.save``), so that
``TwoLayerNet(64, 100, 10, pretrained=True)`` and ``CNN(1, 10, 8, pretrained=True)`` load them.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import unidl as ud  # noqa: E402
from unidl.models.pretrained import WEIGHTS_DIR  # noqa: E402

SEED = 0
EPOCHS = 40
BATCH_SIZE = 32
LR = 1e-3


def flatten(x):
    return x.reshape(len(x), -1)


#: file name -> (model builder, input transform): the two-layer net sees flattened images
MODELS = {
    "two_layer_net_digits.safetensors": (lambda: ud.models.TwoLayerNet(64, 100, 10), flatten),
    "cnn_digits.safetensors": (lambda: ud.models.CNN(in_channels=1, num_classes=10, image_size=8), lambda x: x),
}


def accuracy(model, x, y) -> float:
    model.eval()
    predictions = np.argmax(ud.to_numpy(model(ud.tensor(x))), axis=1)
    model.train()
    return float(np.mean(predictions == y))


def train(build, transform):
    ud.manual_seed(SEED)
    model = build()
    x_train, y_train = ud.datasets.digits("train")
    loader = ud.data.DataLoader(ud.data.TensorDataset(transform(x_train), y_train), batch_size=BATCH_SIZE,
                                shuffle=True, seed=SEED)
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.Adam(model.parameters(), lr=LR))
    for _ in range(EPOCHS):
        for x, y in loader:
            step(x, y)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=WEIGHTS_DIR, help="directory to write the weights to")
    args = parser.parse_args(argv)
    ud.set_backend("torch")
    x_test, y_test = ud.datasets.digits("test")
    for name, (build, transform) in MODELS.items():
        model = train(build, transform)
        path = os.path.join(args.out, name)
        ud.save(model, path)
        print(f"{name}: test accuracy {accuracy(model, transform(x_test), y_test):.4f}, "
              f"{os.path.getsize(path) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
