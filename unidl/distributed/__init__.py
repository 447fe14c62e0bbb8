"""Data-parallel training on the frameworks' own engines: every rank runs the same ``fit``/``train_step``.

In a job of N processes (``unidl.distributed.launch``, ``unidl train --nproc N``, ``torchrun`` on torch), after
``init()``: a ``DataLoader``'s batch size is the *global* batch, and each rank gets its share of every batch
(every sample once per epoch, the same number of steps on every rank, reshuffled per epoch from the
loader's seed, which rank 0's value fixes); the backend's engine averages the gradients (torch:
``DistributedDataParallel``, gloo on CPU, also around Keras-on-torch's model; tensorflow and
Keras-on-TensorFlow: ``MultiWorkerMirroredStrategy``'s all-reduce inside the compiled step; jax:
``jax.distributed`` and XLA's gloo CPU collectives, inside the compiled step too, Keras-on-JAX's as well);
``fit``'s logs are reduced over the ranks; only rank 0 writes checkpoints and prints progress. So 2 ranks with global
batch B train the weights 1 process with batch B trains, where every batch splits equally over the ranks (B and
the last batch divisible by their number, or ``drop_last=True``): a batch split unevenly averages the shares' mean
gradients with equal weight, as PyTorch DDP does, and ``fit`` warns of such a loader once.
``init(devices=["cpu:0", "cpu:1"])``: one process trains one replica per device, each batch split over them
inside the step (tensorflow backend: ``tf.distribute.MirroredStrategy``). See docs/distributed.md.
"""

from unidl.distributed.launch import launch
from unidl.distributed.process_group import (REDUCE_OPS, all_reduce, barrier, init, is_initialized, is_main,
                                             local_rank, num_replicas, rank, shutdown, world_size)

__all__ = ["init", "shutdown", "is_initialized", "rank", "local_rank", "world_size", "num_replicas", "is_main",
           "barrier", "all_reduce", "launch", "REDUCE_OPS"]
