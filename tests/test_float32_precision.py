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
    asked of the framework directly (on torch every getter of its two APIs, which must agree and be readable)."""
    if name == "keras":
        import keras

        name = keras.backend.backend()
    if name == "torch":
        import torch

        answers = {"get_float32_matmul_precision": torch.get_float32_matmul_precision() == "high",
                   "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                   "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}
        if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):  # (torch >= 2.9)
            for name, flags in (("cuda.matmul", torch.backends.cuda.matmul), ("cudnn.conv", torch.backends.cudnn.conv),
                                ("cudnn.rnn", torch.backends.cudnn.rnn)):
                answers[f"{name}.fp32_precision"] = flags.fp32_precision == "tf32"
        assert len(set(answers.values())) == 1, answers
        return answers["cudnn.allow_tf32"]
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


def _in_a_fresh_interpreter(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return out.stdout.splitlines()[-1]


def test_a_backend_loaded_after_the_call_takes_the_mode():
    """A fresh interpreter: the mode is set before any framework is imported, then the default backend loads."""
    assert _in_a_fresh_interpreter(
        "import unidl as ud; ud.set_float32_precision('high'); ud.tensor([1.0]); "
        "from tests.test_float32_precision import _framework_allows_tf32; "
        "print(_framework_allows_tf32(ud.get_backend()))") == "True"


def test_torchs_own_tf32_settings_made_before_unidl_are_replaced_and_stay_readable():
    """PyTorch's newer API set first (``torch.backends.fp32_precision = "tf32"``, which cuDNN's convolutions
    inherit, and ``set_float32_matmul_precision("high")``): once the torch backend loads, convolutions, RNNs and
    matrix products are float32, and every getter of both of torch's APIs reads back (some mixes of the two
    raised in ``torch.get_float32_matmul_precision()``, which Inductor calls)."""
    pytest.importorskip("torch")
    for preset in ("torch.backends.fp32_precision = 'tf32'", "torch.set_float32_matmul_precision('high')"):
        assert _in_a_fresh_interpreter(
            f"import torch; {preset}; import unidl as ud; "
            "from tests.test_float32_precision import _framework_allows_tf32; "
            "ud.set_backend('torch'); ud.tensor([1.0]); before = _framework_allows_tf32('torch'); "
            "ud.set_float32_precision('high'); print(before, _framework_allows_tf32('torch'))") == "False True"
