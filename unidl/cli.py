"""The ``unidl`` command (also ``python -m unidl``): train, info, parity, compare, plot, bench.

``unidl train`` with no arguments trains the CNN on the embedded digits with the
default backend and prints the test accuracy: the README's main job. Arguments are
checked before any framework is imported; a bad value, and any error unidl raises
itself, ends the command with one ``unidl: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad",
              "nadam": "NAdam", "radam": "RAdam", "adamax": "Adamax", "adadelta": "Adadelta", "rprop": "Rprop"}
# (Adadelta's rate scales a step already of the parameters' size: torch.optim's 1.0; Rprop's is its first step size)
DEFAULT_LR = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3, "adagrad": 0.05, "nadam": 3e-3,
              "radam": 3e-3, "adamax": 3e-3, "adadelta": 1.0, "rprop": 1e-3}
DATASETS = "digits, synthetic, mnist:DIR or cifar10:DIR"
# threads per process of `unidl train`: the tutorial CNN's ops are too small for a pool to pay (docs/distributed.md)
DEFAULT_TRAIN_THREADS = 1
# benchmarks/ of the source checkout this unidl runs from; an installed wheel has none
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


class CommandLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``unidl train: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---- argument values, checked before any framework is imported ---------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def backend_name(text: str) -> str:
    """The canonical name of a backend name or alias (read from the registry; no framework import)."""
    from unidl import backends
    from unidl.errors import UnknownBackendError

    try:
        return backends.canonical_name(text)
    except UnknownBackendError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parity_backend(text: str) -> str:
    """A backend for ``unidl parity``: a backend name, or ``keras:<framework>`` (Keras on that framework, run in a
    subprocess of that KERAS_BACKEND); which backends take a host, and which hosts, the registry tells."""
    from unidl import backends

    name, colon, host = text.partition(":")
    name = backend_name(name)
    hosted = backends.hosted_backends()
    if colon and host not in hosted.get(name, ()):
        raise argparse.ArgumentTypeError(
            f"{text!r}: only {' and '.join(hosted)} takes a framework to run on, one of "
            f"{'; '.join(', '.join(hosts) for hosts in hosted.values())} "
            f"({', '.join(f'{hosted_name}:{h}' for hosted_name, hosts in hosted.items() for h in hosts)})")
    return f"{name}:{host}" if colon else name


def device_name(text: str) -> str:
    """A well-formed device name; whether the backend sees that device is checked when it loads."""
    from unidl.config import parse_device
    from unidl.errors import DeviceUnavailableError

    try:
        parse_device(text)
    except DeviceUnavailableError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def dataset_spec(text: str) -> str:
    name, _, directory = text.partition(":")
    if name in ("digits", "synthetic") and not directory:
        return text
    if name in ("mnist", "cifar10") and directory:
        if not os.path.isdir(directory):
            raise argparse.ArgumentTypeError(f"{name}'s directory {directory!r} does not exist (or is not a directory)")
        return text
    raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; use {DATASETS}")


def nearest_existing_ancestor(path: str) -> str:
    """The closest folder above absolute ``path`` that exists (where ``os.makedirs`` would start making it), or
    a file there, which no folder can be made below."""
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    return ancestor


def directory_path(text: str) -> str:
    """A directory, or a path where one can be made: not an existing file, nor below one (found before the data
    loads, where the log's ``os.makedirs`` said only "File exists")."""
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    ancestor = nearest_existing_ancestor(path)
    if not os.path.isdir(ancestor):
        raise argparse.ArgumentTypeError(f"cannot make directory {text!r}: {ancestor!r} is a file")
    return text


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("unidl")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return __import__("unidl").__version__


def build_parser() -> argparse.ArgumentParser:
    from unidl import backends

    parser = CommandLineParser(prog="unidl",
                               description="unidl: one training loop for PyTorch, TensorFlow, Keras and JAX")
    parser.add_argument("--version", action="version", version=f"unidl {version()}")
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="train a model on a dataset and print its test accuracy")
    train.add_argument("--model", choices=["two_layer", "cnn"], default="cnn")
    train.add_argument("--dataset", type=dataset_spec, default="digits", help=f"{DATASETS} (default: digits)")
    train.add_argument("--backend", type=backend_name, default=None,
                       help=f"{', '.join(backends.specs())} (default: UNIDL_BACKEND or first installed)")
    train.add_argument("--device", type=device_name, default=None,
                       help="auto, cpu, cuda, cuda:N (default: UNIDL_DEVICE or auto)")
    train.add_argument("--epochs", type=positive_int, default=15)
    train.add_argument("--batch-size", type=positive_int, default=64)
    train.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    train.add_argument("--lr", type=positive_float, default=None, help="learning rate (default depends on the optimizer)")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                       help="0 silent, 1 progress bar, 2 a line per epoch and the frameworks' own log messages")
    train.add_argument("--nproc", type=positive_int, default=1,
                       help="processes training data-parallel on this machine, --batch-size being the global "
                            "batch (default: 1)")
    train.add_argument("--drop-last", action="store_true",
                       help="drop each epoch's last batch where it is smaller than --batch-size (with --nproc N, one "
                            "that splits unevenly over the ranks trains other weights than one process does, which "
                            "fit warns of)")
    train.add_argument("--logdir", type=directory_path, default=None, metavar="DIR",
                       help="write the run's CSV log (history.csv), TensorBoard events and plot (history.png) to DIR, "
                            "validating on the test set every epoch")
    train.add_argument("--threads", type=positive_int, default=None,
                       help=f"framework threads per process (default: UNIDL_NUM_THREADS, else "
                            f"{DEFAULT_TRAIN_THREADS}; see docs/distributed.md)")
    commands.add_parser("info", help="installed backends, versions and visible devices")
    parity = commands.add_parser("parity", help="compare a model across backends; exit 1 if any difference exceeds its tolerance")
    parity.add_argument("--model", choices=["two_layer", "cnn"], default="two_layer")
    parity.add_argument("--backends", nargs="+", default=None, type=parity_backend,
                        help="backends to compare (default: all installed); " + "; ".join(
                            f"{name}:<framework> runs {name} on that framework in a subprocess ({', '.join(hosts)})"
                            for name, hosts in backends.hosted_backends().items()))
    parity.add_argument("--steps", type=positive_int, default=20)
    parity.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    compare = commands.add_parser("compare", help="train the two-layer net on every installed backend, losses side by side")
    compare.add_argument("--steps", type=positive_int, default=200)
    compare.add_argument("--plot", default=None, metavar="PNG", help="also draw every backend's loss curve on one figure")
    plot = commands.add_parser("plot", help="draw a run's loss and metric curves as a PNG file")
    plot.add_argument("run", metavar="RUN", help="a CSVLogger file, a History saved as JSON, or a `unidl train --logdir` "
                                                 "directory (its history.csv)")
    plot.add_argument("--output", "-o", default=None, metavar="PNG",
                      help="the PNG to write (default: RUN/history.png for a directory, else RUN with .png)")
    # listed here; `unidl bench ...` hands its arguments to the harness in benchmarks/ (see bench)
    commands.add_parser("bench", add_help=False,
                        help="time unidl's training step against hand-written native code and Keras 3 (source checkout)")
    return parser


# ---- the frameworks' own log lines ------------------------------------------------------
# absl's INFO and WARNING lines ("I0000 00:00:1700000000.123 42 port.cc:153] oneDNN custom operations are on...")
# and its notice, which TensorFlow writes while it is imported, before TF_CPP_MIN_LOG_LEVEL takes effect
FRAMEWORK_LOG_LINE = re.compile(rb"^([IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |WARNING: All log messages before "
                                rb"absl::InitializeLog\(\) is called are written to STDERR)")


def silence_framework_logs() -> None:
    """Ask the frameworks, before they are imported, to log errors only."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.getLogger("absl").setLevel(logging.ERROR)


@contextlib.contextmanager
def framework_import_logs_dropped():
    """Hold what is written to file descriptor 2 in the block and write it back without the frameworks'
    INFO/WARNING log lines (written by C++ while a framework is imported, out of Python's reach)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if not FRAMEWORK_LOG_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def load_backends(names) -> None:
    """Import the backends a command will use now, so that their frameworks' import-time lines can be dropped."""
    from unidl import backends

    for name in names:
        backends.load(name)


def backends_of(args) -> list[str]:
    """The backends the command in ``args`` will run in this process (parity's ``keras:torch`` runs in
    a subprocess of its own)."""
    from unidl import backends, config

    if args.command == "train":
        return [args.backend or config.backend().name]
    if args.command == "parity" and args.backends:
        return [name for name in args.backends if ":" not in name]
    return backends.available_backends()


# ---- the commands --------------------------------------------------------------------------
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
        raise SystemExit(f"unidl train: unknown --dataset {spec!r}; use {DATASETS}")
    x = train[0]
    return train, test, x.shape[1], x.shape[2], int(max(train[1].max(), test[1].max())) + 1


def train_threads(args) -> int:
    """Framework threads per process for ``unidl train``: ``--threads``, else ``UNIDL_NUM_THREADS``, else the default."""
    from unidl import threads

    return args.threads or threads.requested() or DEFAULT_TRAIN_THREADS


def train_data_parallel(args) -> float | None:
    """``unidl train --nproc N``: the same job in N local processes (``unidl.distributed.launch``)."""
    from unidl import distributed

    # backend None: each rank takes UNIDL_BACKEND or the first installed, as this process would
    accuracies = distributed.launch(train_rank, nprocs=args.nproc, backend=args.backend, args=(vars(args),),
                                    threads=train_threads(args))
    return accuracies[0]


def train_rank(settings: dict) -> float:
    """One rank of ``unidl train --nproc N`` (``unidl.distributed.launch`` has joined the group)."""
    return train(argparse.Namespace(**dict(settings, nproc=1)))


def train(args) -> float:
    import unidl as ud
    from unidl.distributed import environment

    if args.nproc > 1:
        return train_data_parallel(args)
    if args.backend:
        ud.set_backend(args.backend)
    joined = not ud.distributed.is_initialized() and environment.rendezvous().world_size > 1
    if joined:
        ud.distributed.init()  # started by torchrun (`torchrun --nproc-per-node N -m unidl train`)
    try:
        accuracy = _train(args, ud)
        if joined:  # every rank done (rank 0 also wrote its logs and plot) before any leaves the group
            ud.distributed.barrier()
        return accuracy
    finally:
        if joined:  # leave the group before the interpreter's teardown, where gloo's threads could abort a rank
            ud.distributed.shutdown()


def _train(args, ud) -> float:
    """``train`` in one process, or as this rank of a group already joined."""
    from unidl import threads

    main = not ud.distributed.is_initialized() or ud.distributed.is_main()
    say = print if main else (lambda *_, **__: None)
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
    ranks = f" processes={ud.distributed.world_size()}" if ud.distributed.is_initialized() else ""
    say(f"unidl train: model={args.model} dataset={args.dataset} backend={ud.get_backend()} "
        f"device={ud.get_device()} train={len(x)} test={len(xt)} optimizer={args.optimizer} lr={lr}{ranks} "
        f"threads={threads.requested() or 'default'}")
    start = time.perf_counter()
    # every rank validates (evaluate's sums are collectives); rank 0 alone writes the logs
    logging_options = run_logging(args.logdir, (xt, yt), main) if getattr(args, "logdir", None) else {}
    # the loader fit makes of (x, y) arrays, with --drop-last
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, seed=args.seed,
                                drop_last=args.drop_last)
    ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=args.epochs,
           batch_size=args.batch_size, verbose=args.verbose, **logging_options)
    accuracy = ud.evaluate(model, (xt, yt))["accuracy"]
    say(f"test accuracy: {accuracy:.4f}  ({time.perf_counter() - start:.1f}s)")
    if logging_options and main:
        try:
            say(f"run logged in {args.logdir}: {RUN_CSV}, TensorBoard events, {plot_run(args.logdir, None)}")
        except ImportError as error:  # matplotlib is an optional extra
            say(f"run logged in {args.logdir}: {RUN_CSV}, TensorBoard events; no plot: {error}")
    return accuracy


# ---- logs and plots of a run ------------------------------------------------------------
RUN_CSV = "history.csv"


def run_logging(logdir: str, validation, writes: bool = True) -> dict:
    """``fit`` options of ``unidl train --logdir``: CSV log and TensorBoard events in ``logdir``, validation data.
    ``writes`` False (a data-parallel rank other than 0): no TensorBoard writer (``CSVLogger`` itself writes on
    rank 0 only), but the same validation, whose metrics every rank computes together."""
    import unidl as ud

    callbacks = [ud.callbacks.CSVLogger(os.path.join(logdir, RUN_CSV))]
    if writes:
        callbacks.append(ud.callbacks.TensorBoard(logdir))
    return {"validation_data": validation, "callbacks": callbacks}


def plot_run(run: str, output: str | None) -> str:
    """Draw ``run`` (a CSVLogger file, a History as JSON, or a ``--logdir`` directory) to ``output``; its path."""
    import json

    from unidl.plot import plot_history

    source = os.path.join(run, RUN_CSV) if os.path.isdir(run) else run
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source!r} does not exist: pass a CSVLogger file, a History saved as JSON, or a "
                                f"`unidl train --logdir` directory holding {RUN_CSV}")
    if output is None:
        output = os.path.join(os.path.dirname(source), "history.png") if os.path.isdir(run) \
            else os.path.splitext(source)[0] + ".png"
    if source.endswith(".json"):
        with open(source) as handle:
            history = json.load(handle)
        return plot_history(history, output, title=os.path.basename(os.path.normpath(run)))
    return plot_history(source, output, title=os.path.basename(os.path.normpath(run)))


def set_aside_unusable_threads() -> str | None:
    """For ``unidl info``, which reports a bad environment instead of failing: an unusable ``UNIDL_NUM_THREADS``'s
    error, the variable removed from this process so that the backends still load (None where it is usable)."""
    from unidl import threads
    from unidl.errors import ConfigurationError

    try:
        threads.requested()
    except ConfigurationError as error:
        del os.environ["UNIDL_NUM_THREADS"]
        return f"{error} (ignored for this listing)"
    return None


def info(unusable_threads: str | None = None) -> None:
    """Print the installed backends, their capabilities and GPUs, and the defaults in force.

    Args:
        unusable_threads: the error of an unusable ``UNIDL_NUM_THREADS``, reported after the defaults.
    """
    from unidl import backends, config
    from unidl.compare import display_name

    print(f"unidl {__import__('unidl').__version__}")
    lines = []
    for name, spec in backends.specs().items():
        missing = backends.missing_modules(name)
        if missing:
            lines.append((name, f"not installed (pip install 'unidl[{spec.extra}]')"))
            continue
        backend = backends.load(name)
        versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
        lines.append((display_name(backend), f"{versions}; devices: {', '.join(backend.devices())}"))
    width = max([11] + [len(label) + 1 for label, _ in lines])
    for label, text in lines:
        print(f"  {label:<{width}} {text}")
    print(capability_table())
    print(gpu_report())
    try:
        print(f"default backend: {config.get_backend()}, device: {config.get_device()}, dtype: {config.get_dtype()}")
    except Exception as error:  # report a bad UNIDL_BACKEND/UNIDL_DEVICE instead of failing the listing
        print(f"default backend/device: {error}")
    if unusable_threads:
        print(f"threads: {unusable_threads}")


def gpu_report() -> str:
    """Which installed framework builds can use a GPU (built with CUDA or ROCm) and which GPUs each sees now,
    asked of the frameworks themselves (``Backend.gpu_support``)."""
    from unidl import backends
    from unidl.compare import display_name

    lines = ["GPU support (installed builds):"]
    for name in backends.available_backends():
        backend = backends.load(name)
        support = backend.gpu_support()
        build = support["build"] or "CPU-only build"
        gpus = ", ".join(support["gpus"]) or "none"
        usable = "can use a GPU" if support["gpus"] else ("no GPU visible" if support["build"] else "cannot use a GPU")
        host = f" (through {support['host']})" if support.get("host") else ""
        lines.append(f"  {display_name(backend)}: {build}{host}; GPUs seen: {gpus}; {usable}  [{support['how']}]")
    return "\n".join(lines)


def capability_table() -> str:
    """What each installed backend supports, read off the backend objects themselves."""
    from unidl import backends
    from unidl.backends.interface import Backend
    from unidl.compare import display_name

    rows = [("backend", "devices", "export formats", "ud.fit trains with")]
    for name in backends.available_backends():
        backend = backends.load(name)
        trainer = "framework's own trainer" if type(backend).fit_epoch is not Backend.fit_epoch else "unidl loop + train_step"
        rows.append((display_name(backend), ", ".join(backend.devices()), ", ".join(backend.export_formats()) or "-",
                     trainer))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["capabilities:"] + ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def bench_harness():
    """``benchmarks/bench.py`` of the source checkout, imported from its file; None when unidl is
    installed without the repository (the harness is not part of the package)."""
    if not ((BENCHMARKS / "bench.py").is_file() and (BENCHMARKS.parent / "pyproject.toml").is_file()):
        return None
    package = sys.modules.get("benchmarks")
    if package is None or Path(getattr(package, "__file__", "") or "").resolve().parent != BENCHMARKS:
        spec = importlib.util.spec_from_file_location("benchmarks", BENCHMARKS / "__init__.py",
                                                      submodule_search_locations=[str(BENCHMARKS)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = package
        spec.loader.exec_module(package)
    return importlib.import_module("benchmarks.bench")


def bench(argv: list[str]) -> int:
    """``unidl bench ...``: the harness's own arguments and run (``benchmarks/bench.py``)."""
    harness = bench_harness()
    if harness is None:
        print("unidl bench: error: the benchmarks ship with unidl's source repository, not with the installed "
              "package; run `unidl bench` (or `python benchmarks/bench.py`) in a checkout, installed with "
              "`pip install -e '.[all]'`", file=sys.stderr)
        return 2
    parser = CommandLineParser(prog="unidl bench", description=harness.__doc__.splitlines()[0])
    args = harness.build_parser(parser).parse_args(argv)
    from unidl import backends

    silence_framework_logs()
    with framework_import_logs_dropped():
        load_backends(backends.available_backends())
    return harness.main(args=args)


def run_command(args) -> int:
    if args.command == "train":
        from unidl import threads

        threads.set_num_threads(train_threads(args))  # before any framework starts its pools
        if args.nproc > 1:  # the ranks import the framework; this process only launches them
            train(args)
            return 0
    if args.command == "parity":  # a bad argument is status 2 (1 says a difference exceeded its tolerance)
        from unidl import backends

        compared = args.backends or backends.available_backends()
        if len(compared) < 2:
            extras = [spec.extra for name, spec in backends.specs().items() if name not in compared]
            example = " ".join([*backends.specs()][:2] + [f"{n}:{hosts[-1]}" for n, hosts in
                                                          backends.hosted_backends().items()][:1])
            given = (f"got {compared}; name them, e.g. --backends {example}" if args.backends else
                     f"only {compared} is installed; install another (pip install 'unidl[{extras[0]}]', ...)")
            build_parser().exit(2, f"unidl parity: error: argument --backends: parity compares two backends or "
                                   f"more, {given}\n")
    if args.command == "plot":  # reads a file; no framework needed
        try:
            print(plot_run(args.run, args.output))
        except (OSError, ValueError, TypeError, ImportError) as error:
            build_parser().exit(2, f"unidl plot: error: {error}\n")
        return 0
    unusable = set_aside_unusable_threads() if args.command == "info" else None
    if getattr(args, "verbose", 1) != 2:
        silence_framework_logs()
        with framework_import_logs_dropped():
            load_backends(backends_of(args))
    if args.command == "train":
        train(args)
    elif args.command == "info":
        info(unusable)
    elif args.command == "parity":
        from unidl.testing.cases import run_parity_command

        report = run_parity_command(args.model, args.backends, args.steps, args.dtype)
        print(report)
        return 0 if report.passed else 1
    elif args.command == "compare":
        from unidl.compare import print_side_by_side

        losses = print_side_by_side(args.steps)
        if args.plot:
            from unidl import backends
            from unidl.compare import display_name
            from unidl.plot import plot_curves

            curves = {display_name(backends.load(name)): values for name, values in losses.items()}
            print(f"loss curves: {plot_curves(curves, args.plot, title='two-layer net, the same run on every backend')}")
    return 0


#: the OSErrors about a file or directory, named in their message even without ``filename`` (a reader's own)
_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def main(argv=None) -> int:
    from unidl.errors import UnidlError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            return bench(argv[1:])
        args = build_parser().parse_args(argv or ["train"])
        return run_command(args)
    except (UnidlError, OSError) as error:
        if isinstance(error, OSError) and error.filename is None and not isinstance(error, _FILE_ERRORS):
            raise  # (a connection, a broken pipe: its traceback; a file or directory it names: one line)
        message = " ".join(str(error).split())
        print(f"unidl: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
