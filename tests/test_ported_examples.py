"""The two ported programs of issue 17, run in-process for a quick epoch or two on the backends of
``tests/test_examples.py``: Keras's simple MNIST convnet (``examples/keras_style.py``: Keras's call shapes and
callbacks) and PyTorch's CIFAR-10 tutorial loop (``examples/torch_style.py``)."""

import csv
import glob
import importlib.util
import os

import pytest

import unidl as ud
from tests.helpers import ROOT
from tests.test_examples import BACKENDS


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_style_example(backend, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    with ud.use_backend(backend):
        loss, accuracy = load_example("keras_style").main(epochs=2, output_dir=str(tmp_path), samples=280)
    out = capsys.readouterr().out
    assert f"backend={backend}" in out and "Total params" in out and f"Test accuracy: {accuracy}" in out
    assert 0 < loss < 2.5 and 0 <= accuracy <= 1  # two tiny epochs: a quick run, not a trained model
    with open(tmp_path / "training.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1"] and "val_accuracy" in rows[0]
    assert os.path.exists(tmp_path / "best.weights")
    assert glob.glob(str(tmp_path / "logs" / "validation" / "events.out.tfevents.*"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_style_example(backend, capsys):
    with ud.use_backend(backend):
        accuracy = load_example("torch_style").main(epochs=1, samples=480)  # 30 batches of 16
    out = capsys.readouterr().out
    assert f"backend={backend}" in out and "Finished Training" in out and "[1,    30] loss: 2." in out
    assert "Accuracy for class: 9" in out and f"on the 360 test images: {100 * accuracy:.1f} %" in out
