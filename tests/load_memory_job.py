"""Peak memory of ``ud.load``, measured in a fresh process: ``python tests/load_memory_job.py PATH BACKEND...``.

Writes a model of 16 equal linear layers (4 MiB each; ``--width 2048``: 16 MiB each) to PATH, then on
each backend in turn loads it and prints ``RATIO <backend> <x>``: the growth of the peak resident set
size during ``ud.load`` divided by the file size. The peak is Linux's ``VmHWM``, reset before each load
(``/proc/self/clear_refs``), after the previous model is freed and free heap memory returned
(``malloc_trim``), so that one process measures every backend as a fresh one would.

Then, on the same backend, for every row of ``CRAFTED_CONFIGS`` (every built-in model, each dimension that scales
its weights), it loads a file of a few KiB holding a small model's tensors under a config that asks for gigabytes
and prints ``CRAFTED <backend> <class> <case> <peak growth in MiB> <seconds> <outcome>``: ``refused`` for the
StateDictError that says nothing was built, else the error's class (or ``loaded``).

Last, on each backend in turn, it loads a checkpoint of ``Stack(width, CHECKPOINT_DEPTH)`` and its Adam (three times
the model's size) into a new model and Adam and prints ``CHECKPOINT <backend> <x>``: the growth of the peak during
``ud.load_checkpoint`` divided by the file size. Resident memory counts what the framework allocates natively (torch,
TensorFlow, XLA buffers), which ``tracemalloc`` in the test process cannot see.
"""

import argparse
import ctypes
import gc
import os
import shutil
import tempfile
import time

import numpy as np

import unidl as ud
from unidl.io.safetensors import save_file
from unidl.serialization import encode_metadata, model_metadata


@ud.register_model
class Stack(ud.nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.config = {"width": width, "depth": depth}
        self.layers = ud.nn.Sequential(*[ud.nn.Linear(width, width, bias=False) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _settle() -> None:
    """Free what earlier steps left and start a new peak at the current resident size."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed heap memory may stay resident (a lower growth)
        pass
    _reset_peak()


def _reset_peak() -> None:
    """Start a new peak at the current resident size (without ``_settle``'s collection: 0.8 s on TensorFlow)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to VmRSS


def peak_growth_of_load(path: str) -> float:
    with tempfile.TemporaryDirectory() as scratch:  # the framework's first load and its kernels, paid before measuring
        ud.save(Stack(8, 1), os.path.join(scratch, "warm.safetensors"))
        ud.load(os.path.join(scratch, "warm.safetensors"))
    _settle()
    before = _status_mib("VmRSS")
    model = ud.load(path)
    growth = _status_mib("VmHWM") - before
    del model
    return growth * 2**20 / os.path.getsize(path)


#: layers of the model whose checkpoint is loaded (4 MiB each: a file of 96 MiB, the model's 32 and Adam's 64)
CHECKPOINT_DEPTH = 8


def write_checkpoint(directory: str, width: int, depth: int = CHECKPOINT_DEPTH) -> str:
    """A checkpoint of ``Stack(width, depth)`` and its Adam in the state of one step (slots of the weights' size: a
    file of three times the model's weights; set rather than trained, which took a second)."""
    model = Stack(width, depth)
    optimizer = ud.optim.Adam(model.parameters(), lr=1e-3)
    slots = [{name: np.full(optimizer.slot_shape(name, param.shape), 0.5, np.float32) for name in optimizer.slots}
             for param in optimizer.params]
    optimizer.load_state_dict({"class": "Adam", "lr": 1e-3, "step": 1, "param_steps": [1] * depth, "slots": slots})
    return ud.save_checkpoint(directory, model, optimizer)


def peak_growth_of_load_checkpoint(path: str, warm: str, width: int) -> float:
    """The growth of the peak resident size during ``ud.load_checkpoint`` of ``write_checkpoint``'s file into a new
    ``Stack`` and its Adam, over the file's size: the slots a load creates (torch.optim's state is made by the first
    step or a load; the other backends' exist once the optimizer is built) and what the load holds beyond them.
    ``warm``: a checkpoint of ``Stack(8, 1)``, loaded first (the framework's first load of an optimizer's state)."""
    small = Stack(8, 1)
    ud.load_checkpoint(warm, small, ud.optim.Adam(small.parameters()))
    model = Stack(width, CHECKPOINT_DEPTH)
    optimizer = ud.optim.Adam(model.parameters(), lr=1e-3)
    _settle()
    before = _status_mib("VmRSS")
    ud.load_checkpoint(path, model, optimizer)
    growth = _status_mib("VmHWM") - before
    del model, optimizer
    return growth * 2**20 / os.path.getsize(path)


# (case, class in unidl.models, the small model's config, what the crafted file's config changes): each config
# asks for gigabytes of weights where the file stores a few KiB
CRAFTED_CONFIGS = [
    ("TwoLayerNet", "TwoLayerNet", {"D_in": 3, "H": 4, "D_out": 2}, {"D_in": 20000, "H": 20000, "D_out": 10}),
    ("CNN-image", "CNN", {"in_channels": 1, "image_size": 8}, {"image_size": 60000}),
    ("CNN-channels", "CNN", {"in_channels": 1, "image_size": 8}, {"in_channels": 20_000_000}),
    ("LSTM-vocab", "LSTMClassifier", {"vocab_size": 20, "num_classes": 3}, {"vocab_size": 30_000_000}),
    ("LSTM-vocab-nopad", "LSTMClassifier", {"vocab_size": 20, "num_classes": 3},
     {"vocab_size": 30_000_000, "padding_idx": None}),
    ("LSTM-hidden", "LSTMClassifier", {"vocab_size": 20, "num_classes": 3}, {"hidden_size": 50000}),
    ("Transformer-vocab", "TransformerClassifier", {"vocab_size": 20, "num_classes": 3}, {"vocab_size": 30_000_000}),
    ("Transformer-max_len", "TransformerClassifier", {"vocab_size": 20, "num_classes": 3}, {"max_len": 20_000_000}),
    ("Transformer-d_model", "TransformerClassifier", {"vocab_size": 20, "num_classes": 3}, {"d_model": 2 ** 18}),
    ("Transformer-feedforward", "TransformerClassifier", {"vocab_size": 20, "num_classes": 3},
     {"dim_feedforward": 20_000_000}),
    ("ResNet-channels", "ResNet", {"layers": [1, 1, 1, 1], "num_classes": 10, "cifar_stem": True},
     {"in_channels": 300000}),
    ("ResNet-classes", "ResNet", {"layers": [1, 1, 1, 1], "num_classes": 10, "cifar_stem": True},
     {"num_classes": 5_000_000}),
    ("ResNet-layers", "ResNet", {"layers": [1, 1, 1, 1], "num_classes": 10, "cifar_stem": True},
     {"layers": [1500, 0, 0, 0]}),
]


def write_crafted_files(directory: str) -> list[tuple[str, str, str]]:
    """(case, class, path) of a file in ``directory`` for each row of ``CRAFTED_CONFIGS``: the tensors of the small
    model under its config updated with the row's (written once: files load on every backend)."""
    files, small = [], {}  # (one small model of each config: ResNet's takes 0.8 s on TensorFlow)
    for case, name, small_config, crafted in CRAFTED_CONFIGS:
        key = (name, repr(small_config))
        small[key] = small.get(key) or getattr(ud.models, name)(**small_config)
        metadata = model_metadata(small[key])
        metadata["config"] = {**metadata["config"], **crafted}
        files.append((case, name, os.path.join(directory, case + ".safetensors")))
        save_file(small[key].state_dict(), files[-1][2], encode_metadata(metadata))
    return files


def peak_growth_of_crafted_load(path: str) -> tuple[float, float, str]:
    """(peak resident growth in MiB, seconds, outcome) of ``ud.load`` of the crafted file at ``path``."""
    _reset_peak()
    before = _status_mib("VmRSS")
    started = time.perf_counter()
    try:
        ud.load(path)
        outcome = "loaded"
    except ud.StateDictError as error:
        outcome = "refused" if "nothing was built" in str(error) else type(error).__name__
    except Exception as error:  # reported, for the test to name, rather than a traceback
        outcome = type(error).__name__
    elapsed = time.perf_counter() - started
    return _status_mib("VmHWM") - before, elapsed, outcome


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    ud.manual_seed(0)
    crafted_files = tempfile.mkdtemp()
    with ud.use_backend(args.backends[0]):
        ud.save(Stack(args.width, 16), args.path)
        crafted = write_crafted_files(crafted_files)
    for backend in args.backends:
        ud.set_backend(backend)
        print(f"RATIO {backend} {peak_growth_of_load(args.path):.3f}", flush=True)
        for case, name, path in crafted:
            growth, elapsed, outcome = peak_growth_of_crafted_load(path)
            print(f"CRAFTED {backend} {name} {case} {growth:.1f} {elapsed:.3f} {outcome}", flush=True)
    shutil.rmtree(crafted_files)
    # (after every ud.load, whose growths the memory of this step would lower; on tmpfs where there is one: the
    # save's fsync of the file took 1-2 s on disk)
    checkpoints = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    gc.collect()
    gc.freeze()  # (the frameworks' objects: each _settle's collection from here on sees only the new ones, 0.3 s less)
    try:
        with ud.use_backend(args.backends[0]):
            checkpoint = write_checkpoint(checkpoints, args.width)
            warm = write_checkpoint(os.path.join(checkpoints, "warm"), 8, depth=1)
        for backend in args.backends:
            ud.set_backend(backend)
            growth = peak_growth_of_load_checkpoint(checkpoint, warm, args.width)
            print(f"CHECKPOINT {backend} {growth:.3f}", flush=True)
    finally:
        shutil.rmtree(checkpoints)


if __name__ == "__main__":
    main()
