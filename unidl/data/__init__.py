"""Feeding data to a model: datasets of NumPy arrays, a deterministic sampler and a loader that yields
batches as the current backend's tensors (``unidl.data.DataLoader``), the same under every backend.
"""

from unidl.data.dataloader import DataLoader
from unidl.data.dataset import ConcatDataset, Dataset, Subset, TensorDataset, default_collate, random_split
from unidl.data.epoch import Epoch
from unidl.data.sampler import (BatchSampler, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler,
                                WeightedRandomSampler)

__all__ = ["Dataset", "TensorDataset", "Subset", "ConcatDataset", "random_split", "Sampler", "SequentialSampler",
           "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler",
           "DataLoader", "Epoch", "default_collate"]
