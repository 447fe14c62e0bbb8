"""The ``unidl`` command (also ``python -m unidl``): train, info, compare, bench.

``unidl train`` with no arguments trains the CNN on the embedded digits with the
default backend and prints the test accuracy: the README's main job.
"""

from __future__ import annotations

import argparse
import sys
import time

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
DEFAULT_LR = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3, "adagrad": 0.05}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unidl", description="unidl: one training loop for PyTorch, TensorFlow and Keras")
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="train a model on a dataset and print its test accuracy")
    train.add_argument("--model", choices=["two_layer", "cnn"], default="cnn")
    train.add_argument("--dataset", default="digits", help="digits (default), synthetic, mnist:DIR or cifar10:DIR")
    train.add_argument("--backend", default=None, help="torch, tensorflow or keras (default: UNIDL_BACKEND or first installed)")
    train.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: UNIDL_DEVICE or auto)")
    train.add_argument("--epochs", type=int, default=15)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default depends on the optimizer)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verbose", type=int, default=1)
    commands.add_parser("info", help="installed backends, versions and visible devices")
    parity = commands.add_parser("parity", help="compare a model across backends; exit 1 if any difference exceeds its tolerance")
    parity.add_argument("--model", choices=["two_layer", "cnn"], default="two_layer")
    parity.add_argument("--backends", nargs="+", default=None,
                        help="backends to compare (default: all installed); keras:torch runs Keras on torch in a subprocess")
    parity.add_argument("--steps", type=int, default=20)
    parity.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    compare = commands.add_parser("compare", help="train the two-layer net on every installed backend, losses side by side")
    compare.add_argument("--steps", type=int, default=200)
    from unidl.bench import build_parser as bench_arguments

    bench_arguments(commands.add_parser("bench", help="time unidl's training step against hand-written native code and Keras 3"))
    return parser


def load_dataset(spec: str):
    """``(train, test, in_channels, image_size, num_classes)`` for a --dataset value."""
    from unidl import datasets

    name, _, directory = spec.partition(":")
    if name == "digits":
        train, test = datasets.digits("train"), datasets.digits("test")
    elif name == "synthetic":
        x, y = datasets.synthetic(n=2000, num_classes=10, image_size=8, channels=1, seed=0)
        train, test = (x[:1600], y[:1600]), (x[1600:], y[1600:])
    elif name in ("mnist", "cifar10") and directory:
        reader = getattr(datasets, name)
        train, test = reader(directory, "train"), reader(directory, "test")
    else:
        raise SystemExit(f"unidl train: unknown --dataset {spec!r}; use digits, synthetic, mnist:DIR or cifar10:DIR")
    x = train[0]
    return train, test, x.shape[1], x.shape[2], int(max(train[1].max(), test[1].max())) + 1


def train(args) -> float:
    import unidl as ud

    if args.backend:
        ud.set_backend(args.backend)
    if args.device:
        ud.set_device(args.device)
    ud.manual_seed(args.seed)
    (x, y), (xt, yt), channels, size, classes = load_dataset(args.dataset)
    if args.model == "cnn":
        model = ud.models.CNN(in_channels=channels, num_classes=classes, image_size=size)
    else:
        x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
        model = ud.models.TwoLayerNet(x.shape[1], 100, classes)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    optimizer = getattr(ud.optim, OPTIMIZERS[args.optimizer])(model.parameters(), lr=lr)
    print(f"unidl train: model={args.model} dataset={args.dataset} backend={ud.get_backend()} "
          f"device={ud.get_device()} train={len(x)} test={len(xt)} optimizer={args.optimizer} lr={lr}")
    start = time.perf_counter()
    ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=args.epochs,
           batch_size=args.batch_size, seed=args.seed, verbose=args.verbose)
    accuracy = ud.evaluate(model, (xt, yt))["accuracy"]
    print(f"test accuracy: {accuracy:.4f}  ({time.perf_counter() - start:.1f}s)")
    return accuracy


def info() -> None:
    from unidl import backends, config

    print(f"unidl {__import__('unidl').__version__}")
    for name, spec in backends.specs().items():
        missing = backends.missing_modules(name)
        if missing:
            print(f"  {name:<11} not installed (pip install 'unidl[{spec.extra}]')")
            continue
        backend = backends.load(name)
        versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
        print(f"  {name:<11} {versions}; devices: {', '.join(backend.devices())}")
    print(capability_table())
    try:
        print(f"default backend: {config.get_backend()}, device: {config.get_device()}, dtype: {config.get_dtype()}")
    except Exception as error:  # report a bad UNIDL_BACKEND/UNIDL_DEVICE instead of failing the listing
        print(f"default backend/device: {error}")


def capability_table() -> str:
    """What each installed backend supports, read off the backend objects themselves."""
    from unidl import backends
    from unidl.backends.interface import Backend

    rows = [("backend", "devices", "export formats", "ud.fit trains with")]
    for name in backends.available_backends():
        backend = backends.load(name)
        trainer = "framework's own trainer" if type(backend).fit_epoch is not Backend.fit_epoch else "unidl loop + train_step"
        rows.append((name, ", ".join(backend.devices()), ", ".join(backend.export_formats()) or "-", trainer))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["capabilities:"] + ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "train"
    if command == "train":
        if args.command is None:
            args = build_parser().parse_args(["train"])
        train(args)
    elif command == "info":
        info()
    elif command == "parity":
        from unidl.testing.cases import run_parity_command

        report = run_parity_command(args.model, args.backends, args.steps, args.dtype)
        print(report)
        return 0 if report.passed else 1
    elif command == "compare":
        from unidl.compare import print_side_by_side

        print_side_by_side(args.steps)
    elif command == "bench":
        from unidl.bench import main as bench

        return bench(args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
