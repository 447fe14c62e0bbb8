"""The foundation's parity bar: 50 SGD-with-momentum steps of the two-layer net agree to 1e-5 across backends."""

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference


def _run(backend, x, y, steps=50):
    with ud.use_backend(backend):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(1000, 100, 10)
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
        losses = [float(step(x, y)) for _ in range(steps)]
        return np.array(losses), model.state_dict()


@pytest.mark.every_keras_framework  # (run again on Keras-on-JAX and -torch: scripts/run-tests.sh)
def test_two_layer_net_agrees_across_backends():
    data = np.random.default_rng(0)
    x = data.standard_normal((64, 1000)).astype(np.float32)
    y = data.standard_normal((64, 10)).astype(np.float32)
    runs = {name: _run(name, x, y) for name in ud.available_backends()}
    ref_losses, ref_state = runs["torch"]
    assert ref_losses[-1] < 0.2 * ref_losses[0]
    for name, (losses, state) in runs.items():
        assert max_relative_difference(losses, ref_losses) < 1e-5, name
        for key in ref_state:
            assert max_relative_difference(state[key], ref_state[key]) < 1e-5, (name, key)
