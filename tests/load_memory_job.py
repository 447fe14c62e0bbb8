"""Peak memory of ``ud.load``, measured in fresh processes: ``python tests/load_memory_job.py save|load BACKEND PATH``.

``save`` writes a model of 16 equal linear layers (4 MiB each) to PATH; ``load`` loads it after a
baseline and prints the growth of the peak resident set size divided by the file size.
"""

import os
import resource
import sys

import unidl as ud


@ud.register_model
class Stack(ud.nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.config = {"width": width, "depth": depth}
        self.layers = ud.nn.Sequential(*[ud.nn.Linear(width, width, bias=False) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(action, backend, path):
    ud.set_backend(backend)
    ud.manual_seed(0)
    if action == "save":
        ud.save(Stack(1024, 16), path)
        return
    Stack(8, 1)  # warm the framework's allocator and ops
    before = peak_rss()
    ud.load(path)
    print(f"RATIO {(peak_rss() - before) / os.path.getsize(path):.3f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
