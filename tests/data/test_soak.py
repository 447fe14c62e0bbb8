"""A long run with process workers does not grow the main process: 30 epochs of ``fit`` whose batches come
from two persistent worker processes through shared memory."""

import numpy as np

import unidl as ud
from unidl.data import DataLoader, TensorDataset, shared_batches


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


def test_thirty_epochs_with_process_workers_grow_the_main_process_by_less_than_5_percent(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2**14), dtype=np.float32)  # 4 MiB an epoch, in batches of 1 MiB:
    y = rng.standard_normal((64, 1), dtype=np.float32)      # every one through shared memory
    assert 16 * x.shape[1] * 4 + 16 * 4 >= shared_batches.MIN_BYTES
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=0, num_workers=2,
                        worker_type="process", persistent_workers=True)
    resident = []
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(x.shape[1], 4, 1)
    history = ud.fit(model, loader, epochs=30, verbose=0, loss="mse", optimizer="sgd",
                     callbacks=[lambda epoch, logs: resident.append(resident_mib())])
    assert len(history.history["loss"]) == len(resident) == 30
    growth = resident[-1] / resident[0] - 1  # after the first epoch (warm-up) to the end
    # keeping each batch's arrays (or their mappings) would add 4 MiB an epoch: 116 MiB, 35% of a ~330 MiB torch
    # process and 10% or more of one that imported TensorFlow too
    assert growth < 0.05, [round(r, 1) for r in resident]
