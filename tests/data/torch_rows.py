"""A dataset drawing from torch's generator, as torchvision-style augmentations do, for the worker tests: a module of
its own, since ``worker_datasets`` imports no framework (worker processes must not import one for it)."""

import numpy as np
import torch

from unidl.data import Dataset


class TorchNoisyRows(Dataset):
    """Sample i: (i plus two draws of ``torch.rand``, label i)."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return np.float32(index) + torch.rand(2).numpy(), np.int64(index)
