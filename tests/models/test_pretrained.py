"""The pretrained digits models load on every backend and classify the test split as trained."""

import os

import numpy as np
import pytest

import unidl as ud
from unidl.models.pretrained import WEIGHTS_DIR
from unidl.testing import max_relative_difference


def accuracy(model, x, y) -> float:
    model.eval()
    predictions = np.argmax(ud.to_numpy(model(ud.tensor(x))), axis=1)
    return float(np.mean(predictions == y))


@pytest.fixture(scope="module")
def digits_test():
    return ud.datasets.digits("test")


def test_two_layer_net_pretrained(backend, digits_test):
    x, y = digits_test
    model = ud.models.TwoLayerNet(64, 100, 10, pretrained=True)
    assert model.config == {"D_in": 64, "H": 100, "D_out": 10}
    assert accuracy(model, x.reshape(len(x), -1), y) >= 0.95


def test_cnn_pretrained(backend, digits_test):
    x, y = digits_test
    model = ud.models.CNN(in_channels=1, num_classes=10, image_size=8, pretrained=True)
    assert accuracy(model, x, y) >= 0.95


def test_pretrained_weights_agree_across_backends(digits_test):
    x, _ = digits_test
    outputs = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            model = ud.models.CNN(1, 10, 8, pretrained=True).eval()
            outputs[name] = ud.to_numpy(model(ud.tensor(x)))
    reference = outputs.pop("torch", None)
    for name, output in outputs.items():
        assert max_relative_difference(output, reference) < 1e-5, name


@pytest.mark.parametrize("build, expected", [
    (lambda: ud.models.TwoLayerNet(64, 50, 10, pretrained=True), "TwoLayerNet(D_in=64, H=100, D_out=10)"),
    (lambda: ud.models.CNN(3, 10, 32, pretrained=True), "CNN(in_channels=1, num_classes=10, image_size=8)"),
])
def test_pretrained_other_sizes_are_refused(backend, build, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_pretrained_false_keeps_random_weights():
    a = ud.models.TwoLayerNet(64, 100, 10)
    b = ud.models.TwoLayerNet(64, 100, 10, pretrained=True)
    assert not np.allclose(a.state_dict()["linear1.weight"], b.state_dict()["linear1.weight"])
    assert "pretrained" not in b.config  # ud.load rebuilds from config, then loads the file's own weights


def test_weights_are_small():
    for name in ("two_layer_net_digits.safetensors", "cnn_digits.safetensors"):
        assert os.path.getsize(os.path.join(WEIGHTS_DIR, name)) < 300 * 1024
