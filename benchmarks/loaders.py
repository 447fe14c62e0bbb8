"""unidl's ``DataLoader`` against ``torch.utils.data.DataLoader`` and ``tf.data``: one epoch over
in-memory arrays."""

from __future__ import annotations

import numpy as np

from benchmarks.harness import BATCH, TWO_LAYER, Row, Settings, alternate, ms

LOADER_TARGET = 1.0        # unidl's DataLoader at least as fast as the native loaders


def bench_loaders(settings: Settings, device: str, with_tensorflow: bool) -> list[Row]:
    """One epoch over in-memory arrays, batches touched but not trained on."""
    import torch
    import unidl as ud

    rng = np.random.default_rng(2)
    x = rng.standard_normal((settings.loader_samples, TWO_LAYER["D_in"]), dtype=np.float32)
    y = rng.standard_normal((settings.loader_samples, TWO_LAYER["D_out"]), dtype=np.float32)
    rows = []

    def epoch_of(loader):
        def run():
            seen = 0
            for xb, yb in loader:
                seen += xb.shape[0]
            assert seen == len(x)
        return run

    with ud.use_backend("torch"), ud.use_device(device):
        unidl_loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=BATCH)
        tensors = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        native_loader = torch.utils.data.DataLoader(tensors, batch_size=BATCH, pin_memory=device.startswith("cuda"))
        a, b = timing = alternate(epoch_of(unidl_loader), epoch_of(native_loader), settings.loader_rounds, 1,
                         settings.loader_rounds)
    note = f"{len(x)} x {x.shape[1]} float32, batch {BATCH}"
    rows.append(Row("data loader epoch, torch", "-", "ud.data.DataLoader", "torch.utils.data.DataLoader",
                    ms(a), ms(b), f"<= {LOADER_TARGET}", note=note + ("; torch batches stay on the CPU"
                                                                         if device != "cpu" else ""), spread=timing.spread))
    if with_tensorflow:
        import tensorflow as tf
        with ud.use_backend("tensorflow"), ud.use_device(device):
            tf_loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=BATCH)
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
            a, b = timing = alternate(epoch_of(tf_loader), epoch_of(dataset), settings.loader_rounds, 1,
                             settings.loader_rounds)
        rows.append(Row("data loader epoch, tensorflow", "-", "ud.data.DataLoader",
                        "tf.data.Dataset.from_tensor_slices().batch()", ms(a), ms(b), f"<= {LOADER_TARGET}",
                        note=note, spread=timing.spread))
    return rows
