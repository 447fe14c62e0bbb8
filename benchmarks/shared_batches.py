"""Process workers' batches through shared memory against pickled through the result queue: two persistent
worker processes, two epochs of image-like batches, wall time and the main process's CPU time.

Run in a checkout: ``python -m benchmarks.shared_batches``. Prints one line per batch size with the ratios
pickled / shared (above 1: shared memory is faster). Batches below ``shared_batches.MIN_BYTES`` are pickled
either way, so the smallest size shows the noise of the measurement.
"""

from __future__ import annotations

import time

import numpy as np

from unidl.data import Dataset


class Images(Dataset):
    """Sample i: a 3x64x64 float32 image (48 KiB) and its label."""

    def __init__(self, n):
        self.n = n
        self.base = np.random.default_rng(0).standard_normal((3, 64, 64)).astype(np.float32)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return self.base + np.float32(index), np.int64(index)


def _epochs(batch_size: int, min_bytes: int, rounds: int = 2) -> tuple[float, float]:
    """(wall seconds, main-process CPU seconds) of ``rounds`` epochs of 20 batches, workers already started."""
    from unidl.data import DataLoader, shared_batches

    shared_batches.MIN_BYTES = min_bytes
    loader = DataLoader(Images(20 * batch_size), batch_size=batch_size, num_workers=2, worker_type="process",
                        persistent_workers=True)
    for _ in loader:  # start the workers
        pass
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        for _ in loader:
            pass
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    import unidl as ud
    from unidl.data import shared_batches

    ud.set_backend("torch" if "torch" in ud.available_backends() else ud.available_backends()[0])
    default = shared_batches.MIN_BYTES
    for batch_size in (16, 64, 256):
        pickled = min(_epochs(batch_size, 1 << 62) for _ in range(2))
        shared = min(_epochs(batch_size, default) for _ in range(2))
        size = batch_size * 3 * 64 * 64 * 4 / 2**20
        print(f"batch {batch_size} ({size:.1f} MiB): pickled {pickled[0]:.2f} s (main CPU {pickled[1]:.2f} s), "
              f"shared memory {shared[0]:.2f} s (main CPU {shared[1]:.2f} s): "
              f"{pickled[0] / shared[0]:.2f}x wall, {pickled[1] / max(shared[1], 1e-9):.2f}x main CPU")
    shared_batches.MIN_BYTES = default


if __name__ == "__main__":
    main()
