"""Transfer learning, the PyTorch way, on any backend: load trained weights, freeze the body, replace the head,
train the head only.

    python examples/transfer_learning.py --backend keras
    python examples/transfer_learning.py --backend tensorflow --from-pth     # the weights through a PyTorch .pth

The trained model is the lecture's CNN with the weights that ship with unidl (the 8x8 digits, 0-9). The new task
is another one on the same images: is the digit odd? Only a few hundred labelled images are used, so the body's
features do the work. ``--from-pth`` first writes those weights as a plain-PyTorch checkpoint (``torch.save`` of a
state dict; needs torch) in a temporary directory and loads it with ``ud.load_weights``, as a checkpoint trained in
PyTorch would be (tensors only, never arbitrary pickle: ``torch.load(weights_only=True)`` where torch is installed,
unidl's restricted reader of the archive where it is not).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

import numpy as np

import unidl as ud


def pretrained_cnn(from_pth: bool):
    """The digits CNN with its shipped weights, loaded directly or through a PyTorch ``.pth`` file."""
    if not from_pth:
        return ud.models.CNN(in_channels=1, num_classes=10, image_size=8, pretrained=True)
    import torch  # only to write the file as PyTorch would

    shipped = ud.models.CNN(in_channels=1, num_classes=10, image_size=8, pretrained=True).state_dict()
    model = ud.models.CNN(in_channels=1, num_classes=10, image_size=8)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "cnn_digits.pth")
        torch.save({key: torch.tensor(value) for key, value in shipped.items()}, path)
        ud.load_weights(model, path)
    return model


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend",
                        help="torch, tensorflow, keras or jax (default: UNIDL_BACKEND or the first installed)")
    parser.add_argument("--from-pth", action="store_true", help="load the weights through a PyTorch .pth file")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None, help="training batches per epoch (default: all)")
    parser.add_argument("--samples", type=int, default=300, help="labelled images for the new task")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    with ud.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        ud.manual_seed(0)
        (x, digits), (x_test, test_digits) = ud.datasets.digits("train"), ud.datasets.digits("test")
        samples = args.samples if args.steps is None else min(args.samples, args.steps * args.batch_size)
        x, y, y_test = x[:samples], digits[:samples] % 2, test_digits % 2  # the new labels: odd (1) or even (0)

        model = pretrained_cnn(args.from_pth)
        print(f"backend={ud.get_backend()} device={ud.get_device()}")
        print(f"pretrained digit accuracy {ud.evaluate(model, (x_test, test_digits))['accuracy']:.4f}")

        model.requires_grad_(False)                    # freeze everything trained so far ...
        model.classifier[4] = ud.nn.Linear(84, 2)      # ... and replace the head (a new layer: trainable)
        body = {key: value for key, value in model.state_dict().items() if not key.startswith("classifier.4.")}
        print(f"trainable parameters {model.num_parameters(trainable_only=True)} of {model.num_parameters()}")

        optimizer = ud.optim.Adam(model.parameters(), lr=1e-2)  # frozen parameters are left as they are
        ud.fit(model, (x, y), batch_size=args.batch_size, epochs=args.epochs, loss=ud.nn.CrossEntropyLoss(),
               optimizer=optimizer, verbose=0)
        accuracy = ud.evaluate(model, (x_test, y_test))["accuracy"]

        after = model.state_dict()
        unchanged = all(np.array_equal(value, after[key]) for key, value in body.items())
        print(f"odd/even test accuracy {accuracy:.4f}; frozen body unchanged: {unchanged}")
        return {"accuracy": accuracy, "body_unchanged": unchanged, "body": body, "after": after}


if __name__ == "__main__":
    main()
