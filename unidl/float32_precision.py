"""``set_float32_precision``: how float32 matrix products and convolutions are computed on a GPU, one rule for
every backend.

NVIDIA GPUs since Ampere can compute float32 products in TensorFloat-32 (10 mantissa bits instead of 23), much
faster and about 1e-3 less precise, and the frameworks' defaults differ: PyTorch computes float32 matrix products
in float32 but convolutions in TF32 (``torch.backends.cudnn.allow_tf32``), JAX both in TF32 (its DEFAULT
precision), TensorFlow both in TF32 (``tf.config.experimental.enable_tensor_float_32_execution``). The same CNN
then gave outputs 2e-4 apart between unidl's torch and jax backends on one H200, where the CPU gives 1e-7
(benchmarks/RESULTS.md, "GPU"). unidl therefore sets one mode on every framework it loads:

- ``"highest"`` (the default): float32 in matrix products and convolutions on every backend, as on the CPU;
- ``"high"``: TensorFloat-32 in both where the GPU has it, on every backend (faster, ~1e-3 relative).

The mode is each framework's own process-wide setting (PyTorch's ``set_float32_matmul_precision`` and cuDNN's
``allow_tf32``/``fp32_precision``, JAX's ``jax_default_matmul_precision``, TensorFlow's TF32 switch), so plain
framework code in the same process computes the same way, and a GPU setting of the user's own made before
unidl loads the framework is replaced (oneDNN's CPU convolution and RNN switches, ``torch.backends.mkldnn``, are
left as they are). CPUs compute float32 in either mode (except oneDNN's matmul under torch's ``"high"`` on the
rare CPUs with TF32 units). Mixed precision (``precision="bf16-mixed"``) computes in
bfloat16/float16 by request in either mode (on jax its products carry the mode's precision flag too, whose
speed on a GPU has not been measured).
"""

from __future__ import annotations

MODES = ("highest", "high")
_mode = "highest"


def _check(mode) -> str:
    if not isinstance(mode, str) or mode.strip().lower() not in MODES:
        raise ValueError(f"set_float32_precision(mode): mode must be one of {', '.join(map(repr, MODES))} "
                         f"('highest': float32 products and convolutions; 'high': TensorFloat-32 where the GPU "
                         f"has it), got {mode!r}")
    return mode.strip().lower()


def get_float32_precision() -> str:
    """The mode in force: ``"highest"`` (the default) or ``"high"``."""
    return _mode


def set_float32_precision(mode: str) -> None:
    """Compute float32 matrix products and convolutions in ``mode`` on every backend: ``"highest"`` (float32,
    the default) or ``"high"`` (TensorFloat-32 on GPUs that have it). Applies to the backends already loaded and
    to those loaded later. A step XLA compiled before the change (``jit_compile=True`` on tensorflow, Keras's
    XLA-compiled train function on TensorFlow) keeps the mode it was compiled with: build it again; jax traces
    again by itself (the mode is part of ``jax.jit``'s key)."""
    global _mode
    checked = _check(mode)
    from unidl import backends

    with backends._load_lock:  # a backend loading in another thread applies the mode it finds in force
        _mode = checked
        for backend in backends.loaded_backends().values():
            backend.set_float32_precision(_mode)


def apply(backend) -> None:
    """Put a newly loaded backend's framework in the mode in force (called by ``unidl.backends.load``)."""
    backend.set_float32_precision(_mode)
