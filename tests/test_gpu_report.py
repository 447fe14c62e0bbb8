"""``unidl info`` says which installed framework builds can use a GPU: the answer is the framework's own."""

import os

from unidl import cli, config
from unidl.compare import display_name


def _framework_answer(name):
    """(built with CUDA/ROCm, number of GPUs seen), asked of the framework directly."""
    if name == "keras":
        name = os.environ.get("KERAS_BACKEND", "tensorflow")
    if name == "torch":
        import torch

        return bool(torch.version.cuda or getattr(torch.version, "hip", None)), torch.cuda.device_count()
    if name == "tensorflow":
        import tensorflow as tf

        info = tf.sysconfig.get_build_info()
        return bool(tf.test.is_built_with_cuda() or info.get("is_rocm_build")), len(tf.config.list_physical_devices("GPU"))
    import jax

    return any(d.platform != "cpu" for d in jax.devices()), sum(d.platform != "cpu" for d in jax.devices())


def test_gpu_support_is_the_frameworks_own_answer(backend):
    support = config.backend().gpu_support()
    built, gpus = _framework_answer(backend)
    assert (support["build"] is not None) == built
    assert len(support["gpus"]) == gpus
    if support["build"] is not None:
        assert support["build"].split()[0] in ("CUDA", "ROCm", "jax-cuda12-plugin", "jax-cuda13-plugin",
                                               "jax-rocm7-plugin", "jax-rocm60-plugin")


def test_unidl_info_prints_a_gpu_line_per_backend(backend, capsys):
    cli.main(["info"])
    out = capsys.readouterr().out
    assert "GPU support (installed builds):" in out
    label = display_name(config.backend())
    line = next(line for line in out.splitlines() if line.strip().startswith(f"{label}: "))
    built, gpus = _framework_answer(backend)
    assert ("CPU-only build" in line) == (not built)
    assert ("GPUs seen: none" in line) == (gpus == 0)
    assert ("can use a GPU" in line and "cannot" not in line) == (gpus > 0)
