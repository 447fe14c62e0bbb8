"""``ud.set_float32_precision``: one rule for float32 products on a GPU, read back from each framework's own
switch (TF32 is a GPU mode, so on this CPU-only machine the switches are what can be checked; the parity it buys
was measured on an H200, benchmarks/RESULTS.md)."""

import os
import subprocess
import sys

import pytest

import unidl as ud
from unidl import config


def _framework_allows_tf32(name):
    """Whether the framework under backend ``name`` computes float32 products in TensorFloat-32 where it can,
    asked of the framework directly."""
    if name == "keras":
        name = os.environ.get("KERAS_BACKEND", "tensorflow")
    if name == "torch":
        import torch

        matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        assert matmul == conv, "torch: matrix products and convolutions in different modes"
        return matmul
    if name == "tensorflow":
        import tensorflow as tf

        return tf.config.experimental.tensor_float_32_execution_enabled()
    import jax

    return {"highest": False, "tensorfloat32": True}[jax.config.jax_default_matmul_precision]


@pytest.fixture
def restored():
    yield
    ud.set_float32_precision("highest")


def test_a_loaded_backend_computes_float32_products_in_float32(backend):
    config.backend()  # loaded
    assert ud.get_float32_precision() == "highest"
    assert _framework_allows_tf32(backend) is False


def test_high_allows_tensorfloat32_on_every_loaded_framework_and_highest_takes_it_back(backend, restored):
    config.backend()
    ud.set_float32_precision("high")
    assert ud.get_float32_precision() == "high"
    assert _framework_allows_tf32(backend) is True
    ud.set_float32_precision(" Highest ")
    assert _framework_allows_tf32(backend) is False


@pytest.mark.parametrize("mode", ["medium", "tf32", "", None, 32])
def test_an_unknown_mode_names_the_valid_ones(mode):
    with pytest.raises(ValueError, match=r"mode must be one of 'highest', 'high'.*got"):
        ud.set_float32_precision(mode)
    assert ud.get_float32_precision() == "highest"


def test_a_backend_loaded_after_the_call_takes_the_mode():
    """A fresh interpreter: the mode is set before any framework is imported, then the default backend loads."""
    code = ("import unidl as ud; ud.set_float32_precision('high'); ud.tensor([1.0]); "
            "from tests.test_float32_precision import _framework_allows_tf32; "
            "print(ud.get_backend(), _framework_allows_tf32(ud.get_backend()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split()[-1] == "True", out.stdout + out.stderr
