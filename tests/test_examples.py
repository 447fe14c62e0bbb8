"""Every example runs unchanged under every backend (each in a fresh interpreter, as a user runs it)."""

import json

import pytest

from tests.helpers import ROOT, last_json_line, run_python
from unidl.testing import max_relative_difference

BACKENDS = ["torch", "tensorflow", "keras"]


def _run_example(name, backend, **env):
    return run_python(open(ROOT / "examples" / name).read(), env={"UNIDL_BACKEND": backend, **env})


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_layer_net_example(backend):
    result = _run_example("two_layer_net.py", backend, STEPS="60")
    assert f"backend={backend}" in result.stdout
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cnn_digits_example(backend):
    result = _run_example("cnn_digits.py", backend)
    assert f"backend={backend}" in result.stdout
    accuracy = float(result.stdout.split("test accuracy")[-1])
    assert accuracy >= 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_module_example(backend):
    result = _run_example("custom_module.py", backend)
    assert f"backend={backend}" in result.stdout
    assert float(result.stdout.split("test accuracy")[-1]) >= 0.9


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_keras_on_another_framework_agrees_with_that_backend(framework):
    code = ("import json\nfrom unidl.compare import two_layer_losses\n"
            "print(json.dumps(two_layer_losses('{name}', steps=30, sizes=(32, 50, 20, 5))))")
    keras_run = last_json_line(run_python(code.format(name="keras"), env={"KERAS_BACKEND": framework}).stdout)
    host_run = last_json_line(run_python(code.format(name=framework)).stdout)
    assert max_relative_difference(keras_run, host_run) < 1e-5
    assert keras_run[-1] < keras_run[0]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_keras_on_another_framework_fit_reaches_accuracy(framework):
    code = ("import json, unidl as ud\nud.set_backend('keras')\nud.manual_seed(0)\n"
            "(x, y), t = ud.datasets.digits('train'), ud.datasets.digits('test')\n"
            "m = ud.models.CNN(1, 10, 8)\n"
            "ud.fit(m, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.Adam(m.parameters(), lr=3e-3),"
            " epochs=12, batch_size=64, verbose=0)\n"
            "import keras\nprint(json.dumps([keras.backend.backend(), ud.evaluate(m, t)['accuracy']]))")
    used, accuracy = last_json_line(run_python(code, env={"KERAS_BACKEND": framework}).stdout)
    assert used == framework and accuracy >= 0.95
