"""Every example runs unchanged under every backend (each in a fresh interpreter, as a user runs it)."""

import pytest

from tests.helpers import ROOT, run_python


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "keras"])
def test_two_layer_net_example(backend):
    result = run_python(open(ROOT / "examples" / "two_layer_net.py").read(),
                        env={"UNIDL_BACKEND": backend, "STEPS": "60"})
    assert f"backend={backend}" in result.stdout
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert losses[-1] < 0.2 * losses[0]


def test_keras_on_torch_agrees_with_torch_backend():
    code = ("import json\nfrom unidl.compare import two_layer_losses\n"
            "print(json.dumps(two_layer_losses('{name}', steps=30, sizes=(32, 50, 20, 5))))")
    from tests.helpers import last_json_line

    keras_torch = last_json_line(run_python(code.format(name="keras"), env={"KERAS_BACKEND": "torch"}).stdout)
    torch_run = last_json_line(run_python(code.format(name="torch")).stdout)
    from unidl.testing import max_relative_difference

    assert max_relative_difference(keras_torch, torch_run) < 1e-5
    assert keras_torch[-1] < keras_torch[0]
