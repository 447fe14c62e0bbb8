"""Peak memory of ``ud.load``, measured in a fresh process: ``python tests/load_memory_job.py PATH BACKEND...``.

Writes a model of 16 equal linear layers (4 MiB each; ``--width 2048``: 16 MiB each) to PATH, then on
each backend in turn loads it and prints ``RATIO <backend> <x>``: the growth of the peak resident set
size during ``ud.load`` divided by the file size. The peak is Linux's ``VmHWM``, reset before each load
(``/proc/self/clear_refs``), after the previous model is freed and free heap memory returned
(``malloc_trim``), so that one process measures every backend as a fresh one would.
"""

import argparse
import ctypes
import gc
import os
import tempfile

import unidl as ud


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


if __name__ == "__main__":
    main()
