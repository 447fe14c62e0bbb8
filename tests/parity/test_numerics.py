"""Numerics that must not depend on the backend: batch statistics far from zero, and float64 slopes."""

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference


@pytest.mark.parametrize("ratio", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("compiled", [False, True])
def test_batch_norm_stays_accurate_when_the_mean_dwarfs_the_spread(backend, ratio, compiled):
    """|mean|/std up to 30 in float32: within 2e-6 of PyTorch's float64 result, as PyTorch's own float32 is."""
    x = (np.random.default_rng(0).standard_normal((16, 4, 5, 5)) + ratio).astype(np.float32)
    reference = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    expected = reference(torch.tensor(x, dtype=torch.float64)).detach().numpy()
    layer = ud.nn.BatchNorm2d(4)
    forward = ud.function(lambda v: layer(v)) if compiled else layer
    y = ud.to_numpy(forward(ud.tensor(x)))
    assert max_relative_difference(y, expected) < 2e-6
    assert max_relative_difference(layer.state_dict()["running_var"], reference.running_var.numpy()) < 2e-6
    assert max_relative_difference(layer.state_dict()["running_mean"], reference.running_mean.numpy()) < 2e-6


def test_batch_norm_gradients_match_torch_far_from_zero(backend):
    x = (np.random.default_rng(1).standard_normal((8, 3, 4, 4)) + 30.0).astype(np.float32)
    weights = np.random.default_rng(2).standard_normal((8, 3, 4, 4)).astype(np.float32)
    reference = torch.nn.BatchNorm2d(3)
    xt = torch.tensor(x, requires_grad=True)
    (reference(xt) * torch.tensor(weights)).sum().backward()
    layer = ud.nn.BatchNorm2d(3)
    grad = ud.grad(lambda v: ud.ops.sum(layer(v) * ud.tensor(weights)))(ud.tensor(x))
    assert max_relative_difference(ud.to_numpy(grad), xt.grad.numpy()) < 1e-4


def test_leaky_relu_keeps_a_float64_slope(backend):
    slope = 0.123456789
    x = np.linspace(-3, 3, 13)
    with ud.use_dtype("float64"):
        y = ud.to_numpy(ud.nn.LeakyReLU(slope)(ud.tensor(x)))
        compiled = ud.to_numpy(ud.function(lambda v: ud.ops.leaky_relu(v, slope))(x))
    expected = torch.nn.functional.leaky_relu(torch.tensor(x), slope).numpy()
    assert max_relative_difference(y, expected) < 1e-12
    assert max_relative_difference(compiled, expected) < 1e-12


@pytest.mark.parametrize("compiled", [False, True])
def test_segment_sum_keeps_float64(backend, compiled):
    """``ud.ops.segment_sum`` of float64 data sums in float64 (AUC's weighted histograms under
    ``ud.use_dtype("float64")``): Keras-on-torch's ``keras.ops.segment_sum`` summed into float32 zeros, 1e-12 lost."""
    with ud.use_dtype("float64"):
        data, ids = ud.tensor(np.array([1.0, 1e-12, 1e-12, 3.0])), ud.tensor(np.array([0, 0, 0, 1]))
        op = ud.function(lambda d, i: ud.ops.segment_sum(d, i, 2)) if compiled else ud.ops.segment_sum
        sums = ud.to_numpy(op(data, ids) if compiled else op(data, ids, 2))
    assert sums.dtype == np.float64
    np.testing.assert_allclose(sums, [1.0 + 2e-12, 3.0], rtol=1e-15, atol=0)  # (float32 sums gave 1.0)
