"""Peak memory of ``ud.load``, measured in a fresh process: ``python tests/load_memory_job.py PATH BACKEND...``.

Writes a model of 16 equal linear layers (4 MiB each; ``--width 2048``: 16 MiB each) to PATH, then on
each backend in turn loads it and prints ``RATIO <backend> <x>``: the growth of the peak resident set
size during ``ud.load`` divided by the file size. The peak is Linux's ``VmHWM``, reset before each load
(``/proc/self/clear_refs``), after the previous model is freed and free heap memory returned
(``malloc_trim``), so that one process measures every backend as a fresh one would.

Then, on the same backend, it loads a file of a few KiB whose config asks for 1.6 GB of weights and prints
``CRAFTED <backend> <peak growth in MiB> <seconds> <outcome>``: ``refused`` for the StateDictError that says
nothing was built, else the error's class (or ``loaded``). Resident memory counts what the framework allocates
natively (torch, TensorFlow, XLA buffers), which ``tracemalloc`` in the test process cannot see.
"""

import argparse
import ctypes
import gc
import os
import tempfile
import time

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


def peak_growth_of_crafted_load(path: str) -> tuple[float, float, str]:
    """(peak resident growth in MiB, seconds, outcome) of ``ud.load`` of a small file whose TwoLayerNet config
    claims 20000 x 20000 weights (1.6 GB of float32), written to ``path``."""
    small = ud.models.TwoLayerNet(3, 4, 2)
    metadata = model_metadata(small)
    metadata["config"] = {"D_in": 20000, "H": 20000, "D_out": 10}
    save_file(small.state_dict(), path, encode_metadata(metadata))
    del small
    _settle()
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
    with ud.use_backend(args.backends[0]):
        ud.save(Stack(args.width, 16), args.path)
    for backend in args.backends:
        ud.set_backend(backend)
        print(f"RATIO {backend} {peak_growth_of_load(args.path):.3f}", flush=True)
        growth, elapsed, outcome = peak_growth_of_crafted_load(args.path + ".crafted")
        print(f"CRAFTED {backend} {growth:.1f} {elapsed:.3f} {outcome}", flush=True)


if __name__ == "__main__":
    main()
