"""CNN parity: 20 training steps with SGD and with Adam on fixed real data agree across backends to 1e-5."""

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference


def _digits(n=64):
    x, y = ud.datasets.digits("train")
    return x[:n], y[:n]


def _trajectory(backend, make_optimizer, x, y, steps=20):
    with ud.use_backend(backend):
        ud.manual_seed(0)
        model = ud.models.CNN(in_channels=x.shape[1], num_classes=10, image_size=x.shape[2])
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), make_optimizer(model.parameters()))
        return np.array([float(step(x, y)) for _ in range(steps)])


def _assert_trajectories_agree(make_optimizer, x, y):
    runs = {b: _trajectory(b, make_optimizer, x, y) for b in ud.available_backends()}
    assert runs["torch"][-1] < runs["torch"][0]
    for name, losses in runs.items():
        assert max_relative_difference(losses, runs["torch"]) < 1e-5, name


OPTIMIZERS = {
    "sgd": lambda p: ud.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: ud.optim.Adam(p, lr=1e-3),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_cnn_digits_trajectories_agree(optimizer):
    _assert_trajectories_agree(OPTIMIZERS[optimizer], *_digits())


# On 3x32x32 the larger steps of OPTIMIZERS reach a steep region within 20 steps where 1e-7 differences in
# the gradients (oneDNN vs ATen summation order) grow past 1e-5, and Adam's scale-free step turns
# near-zero gradient components into full-size steps; these rates keep the run in the stable regime.
GENTLE = {
    "sgd": lambda p: ud.optim.SGD(p, lr=0.02, momentum=0.9),
    "adam": lambda p: ud.optim.Adam(p, lr=1e-4),
}


@pytest.mark.parametrize("optimizer", list(GENTLE))
def test_cnn_lenet_32x32_trajectories_agree(optimizer):
    x, y = _digits()
    noise = np.random.default_rng(0).standard_normal((len(x), 3, 32, 32)).astype(np.float32)
    images = np.kron(x, np.ones((1, 3, 4, 4), np.float32)) + 0.1 * noise  # digits upscaled to 3x32x32
    _assert_trajectories_agree(GENTLE[optimizer], images, y)


def test_adam_trajectory_follows_torch_operation_for_operation():
    """The issue's work: LeNet from the same weights, one 16x3x32x32 batch, Adam lr 1e-3, 20 steps. Adam's
    update is torch.optim.Adam's sequence of operations on every backend (lerp for the first moment, bias
    corrections and step size in double precision), so the loss trajectories agree to 1e-6 (they agreed to
    2e-5 with the textbook formula); what remains is the convolution kernels' own rounding, about 2e-7
    for SGD on the same work."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 16)
    ud.manual_seed(0)
    with ud.use_backend("torch"):
        state = ud.models.CNN(3, 10, 32).state_dict()
    runs = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            model = ud.models.CNN(3, 10, 32)
            model.load_state_dict(state)
            step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.Adam(model.parameters(), lr=1e-3))
            runs[name] = np.array([float(ud.to_numpy(step(x, y))) for _ in range(20)])
    for name, losses in runs.items():
        assert max_relative_difference(losses, runs["torch"]) < 1e-6, name
