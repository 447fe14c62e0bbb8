"""The workload examples (ResNet on CIFAR-10, transfer learning, text classification) on every backend, jax too,
run in this process with tiny sizes so that one framework import serves them all. (A file of their own so that the
test runner's workers can take them apart from the subprocess-run examples in test_examples.py.)"""

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.heavy  # tens of seconds: run first (tests/conftest.py)

BACKENDS = ["torch", "tensorflow", "keras", "jax"]


# ---- examples run in this process (one framework import shared by all), with tiny sizes ----

def _example_module(name):
    """The example ``name`` imported as a module (its ``main`` not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet_cifar_example(backend, tmp_path, capsys):
    """Synthetic images, and CIFAR-10's binary format (two tiny fake batch files) read with no pickle."""
    import numpy as np

    example = _example_module("resnet_cifar.py")
    quick = ["--backend", backend, "--epochs", "1", "--batch-size", "4", "--layers", "1", "1", "1", "1"]
    result = example.main(quick + ["--steps", "2", "--samples", "24", "--image-size", "8"])
    assert f"backend={backend}" in capsys.readouterr().out
    assert result["batches_tracked"] == 2 and 0 <= result["test"]["accuracy"] <= 1
    assert np.isfinite(result["test"]["loss"]) and np.isfinite(result["history"]["loss"][0])
    rng = np.random.default_rng(0)
    for name, count in [*((f"data_batch_{i}.bin", 2) for i in range(1, 6)), ("test_batch.bin", 3)]:
        records = rng.integers(0, 256, (count, 1 + 3072), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(tmp_path / name)
    x, y = example.read_cifar10_binary(tmp_path, "test")
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32 and np.array_equal(y, records[:, 0])
    assert np.array_equal(x[2, 1, 0, :4] * 255, records[2, 1 + 1024:1 + 1028])  # channel-major, as the format
    if backend == "torch":  # the files are read by NumPy alone: one backend is enough for the rest of the run
        result = example.main(quick + ["--data", str(tmp_path)])
        assert result["batches_tracked"] == 3  # 10 images in batches of 4
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 binary batches"):
        example.read_cifar10_binary(tmp_path / "absent", "train")


@pytest.mark.parametrize("backend", BACKENDS)
def test_transfer_learning_example(backend, capsys):
    example = _example_module("transfer_learning.py")
    result = example.main(["--backend", backend, "--epochs", "3", "--samples", "200"]
                          + (["--from-pth"] if backend == "tensorflow" else []))
    out = capsys.readouterr().out
    assert "trainable parameters 170 of 20706" in out  # the new Linear(84, 2) head only
    assert result["body_unchanged"] and result["accuracy"] >= 0.75  # odd/even from the frozen digit features
    assert result["after"]["classifier.4.weight"].shape == (2, 84)


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_classifier_example(backend, capsys):
    from unidl import config

    example = _example_module("text_classifier.py")
    generated = example.generated
    # tiny: 192 training sequences (3 whole batches of 64) and 50 test ones (one batch of evaluate's 256). A last
    # batch of another size (8 of 200) is a step compiled again for each model on JAX: 17.9 against 11.3 s of
    # CPU there (a smaller last batch: tests/backends/test_jax.py, tests/data/test_epoch.py)
    example.generated = lambda count, seed: generated(192 if count == 2000 else count // 10, seed)
    with config.use_backend(backend):
        accuracies = example.main(epochs=1)
    assert f"backend={backend}" in capsys.readouterr().out
    assert set(accuracies) == {"transformer", "lstm"} and all(0 <= a <= 1 for a in accuracies.values())
