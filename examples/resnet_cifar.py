"""ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) on CIFAR-10 through ``ud.fit``, on any backend.

    python examples/resnet_cifar.py --backend tensorflow --data ~/data/cifar-10-batches-bin --epochs 15
    python examples/resnet_cifar.py --backend keras --epochs 1 --steps 20          # synthetic images, no files

``--data DIR``: CIFAR-10's binary version (``cifar-10-batches-bin``: ``data_batch_1.bin`` ... ``data_batch_5.bin``,
``test_batch.bin``; each record one label byte and 3072 pixel bytes), read here with NumPy alone. The Python
version (``cifar-10-batches-py``) holds pickles, and unpickling can run code: it is read (by
``ud.datasets.cifar10``'s restricted unpickler) only with ``--allow-pickle``. Nothing is downloaded.
Without ``--data``: synthetic 10-class 32x32 images (``ud.datasets.synthetic``), the same on every backend.

BatchNorm keeps PyTorch's ``num_batches_tracked``, so the saved weights load into torchvision-style PyTorch code too.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np

import unidl as ud

BINARY_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
RECORD = 1 + 3 * 32 * 32


def read_cifar10_binary(directory, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, 3, 32, 32) in [0, 1], y int64) from the binary batches in ``directory`` (or in its
    ``cifar-10-batches-bin``)."""
    directory = Path(directory).expanduser()
    folder = next((d for d in (directory, directory / "cifar-10-batches-bin")
                   if all((d / name).is_file() for name in BINARY_FILES[split])), None)
    if folder is None:
        raise FileNotFoundError(f"no CIFAR-10 binary batches {BINARY_FILES[split]} in {directory} or "
                                f"{directory / 'cifar-10-batches-bin'} (for the Python pickles, pass --allow-pickle)")
    records = []
    for name in BINARY_FILES[split]:
        raw = np.fromfile(folder / name, dtype=np.uint8)
        if raw.size % RECORD:
            raise ValueError(f"{folder / name}: {raw.size} bytes is not a whole number of {RECORD}-byte records")
        records.append(raw.reshape(-1, RECORD))
    records = np.concatenate(records)
    x = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, records[:, 0].astype(np.int64)


def load_data(data: str | None, allow_pickle: bool, samples: int, image_size: int):
    """((x, y) train, (x, y) test), standardised per channel with the training set's statistics."""
    if data is None:
        train = ud.datasets.synthetic(samples, 10, image_size, channels=3, seed=0)
        test = ud.datasets.synthetic(max(samples // 4, 10), 10, image_size, channels=3, seed=1)
    elif allow_pickle and not (Path(data) / "cifar-10-batches-bin").is_dir() and not list(Path(data).glob("*.bin")):
        train, test = ud.datasets.cifar10(data, "train"), ud.datasets.cifar10(data, "test")
    else:
        train, test = read_cifar10_binary(data, "train"), read_cifar10_binary(data, "test")
    mean = train[0].mean((0, 2, 3), keepdims=True)
    std = train[0].std((0, 2, 3), keepdims=True)
    return [(((x - mean) / std).astype(np.float32), y) for x, y in (train, test)]


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend",
                        help="torch, tensorflow, keras or jax (default: UNIDL_BACKEND or the first installed)")
    parser.add_argument("--data", help="directory of the CIFAR-10 binary batches (synthetic images if omitted)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read the Python-pickle batches (cifar-10-batches-py) if the binary ones are absent")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=None, help="training batches per epoch (default: all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=5000, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=32, help="synthetic image size (CIFAR's is 32)")
    parser.add_argument("--layers", type=int, nargs=4, default=(2, 2, 2, 2),
                        help="blocks per stage: 2 2 2 2 is ResNet-18, 3 4 6 3 ResNet-34, 1 1 1 1 a quick one")
    parser.add_argument("--lr", type=float, default=1e-3)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    with ud.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        ud.manual_seed(0)
        (x, y), (x_test, y_test) = load_data(args.data, args.allow_pickle, args.samples, args.image_size)
        if args.steps is not None:
            x, y = x[:args.steps * args.batch_size], y[:args.steps * args.batch_size]
        model = ud.models.ResNet(tuple(args.layers), num_classes=10, cifar_stem=True)
        optimizer = ud.optim.Adam(model.parameters(), lr=args.lr)
        print(f"backend={ud.get_backend()} device={ud.get_device()} train={len(x)} test={len(x_test)} "
              f"parameters={model.num_parameters():,}")
        loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, seed=0)
        history = ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=args.epochs,
                         verbose=2)
        result = ud.evaluate(model, (x_test, y_test), loss=ud.nn.CrossEntropyLoss())
        print(f"test loss {result['loss']:.4f} test accuracy {result['accuracy']:.4f}")
        return {"history": history.history, "test": result,
                "batches_tracked": int(model.state_dict()["bn1.num_batches_tracked"])}


if __name__ == "__main__":
    main()
