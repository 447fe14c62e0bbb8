"""``RMSNorm``, ``InstanceNorm1d`` and ``InstanceNorm2d`` against plain ``torch.nn`` (the oracle): PyTorch's
``state_dict``, outputs and gradients with respect to the input and every parameter on every backend (float32 in
``ud.function``, float64 eagerly), running statistics as torch moves them; clear errors."""

import numpy as np
import pytest
import torch
from torch import nn as tnn

import unidl as ud
from tests.nn.test_attention import layer_case
from tests.parity.torch_oracle import RUNS, compare_table
from unidl.testing import max_relative_difference

R = np.random.default_rng(6)
SEQUENCES, IMAGES = R.standard_normal((2, 3, 5)) * 3 + 1, R.standard_normal((2, 3, 4, 4))


def forward(layer, x):
    return layer(x)


NORMS = {
    "RMSNorm-two-axes-default-eps": layer_case(lambda nn: nn.RMSNorm((3, 5)), forward, SEQUENCES),
    "RMSNorm-eps-no-affine": layer_case(lambda nn: nn.RMSNorm(5, eps=1e-3, elementwise_affine=False), forward,
                                        SEQUENCES),
    "InstanceNorm1d": layer_case(lambda nn: nn.InstanceNorm1d(3), forward, SEQUENCES),
    "InstanceNorm1d-affine-unbatched": layer_case(lambda nn: nn.InstanceNorm1d(3, affine=True), forward, SEQUENCES[0]),
    "InstanceNorm2d-affine-no-bias": layer_case(lambda nn: nn.InstanceNorm2d(3, affine=True, bias=False), forward,
                                                IMAGES),
}


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_norms_match_torch(backend, dtype, modes):
    """float32 inside ud.function for every case; float64 eagerly for RMSNorm's float64 epsilon and InstanceNorm2d."""
    cases = NORMS if dtype == "float32" else {name: NORMS[name] for name in ("RMSNorm-two-axes-default-eps",
                                                                              "InstanceNorm2d-affine-no-bias")}
    assert compare_table(cases, backend, dtype, modes) == []


def test_instance_norm_running_statistics_as_torch(backend):
    """Training moves them by the batch's mean of each sample's statistics (unbiased variance), never counting
    ``num_batches_tracked``; evaluation normalises by them: eagerly, then in ``ud.function``, with the gradients."""
    ours = ud.nn.InstanceNorm1d(3, momentum=0.3, affine=True, track_running_stats=True)
    theirs = tnn.InstanceNorm1d(3, momentum=0.3, affine=True, track_running_stats=True)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()}, strict=True)
    batches = SEQUENCES.astype(np.float32), (SEQUENCES[::-1] * 2).astype(np.float32)
    for x, run in zip(batches, (ours, ud.function(lambda x: ours(x)))):
        assert max_relative_difference(ud.to_numpy(run(ud.tensor(x))), theirs(torch.tensor(x)).detach().numpy()) < 2e-6
    for name, value in theirs.state_dict().items():
        assert max_relative_difference(ours.state_dict()[name], value.numpy()) < 2e-6, name
    ours.eval(), theirs.eval()
    x = torch.tensor(batches[0], requires_grad=True)
    theirs(x).square().sum().backward()
    output, gradient = ud.function(lambda x: (ours(x), ud.grad(lambda x: ud.ops.sum(ud.ops.square(ours(x))))(x)))(
        ud.tensor(batches[0]))
    assert max_relative_difference(ud.to_numpy(output), theirs(x).detach().numpy()) < 2e-6
    assert max_relative_difference(ud.to_numpy(gradient), x.grad.numpy()) < 1e-5


def test_norms_refuse_what_torch_refuses(backend):
    x = SEQUENCES.astype(np.float32)
    with pytest.raises(ud.errors.ShapeMismatchError, match=r"expected input whose last axes are \(4,\)"):
        ud.nn.RMSNorm(4)(x)
    with pytest.raises(ud.errors.ShapeMismatchError,
                       match=r"expected input of shape \(N, 4, L\) or unbatched \(4, L\), received \("):
        ud.nn.InstanceNorm1d(4, affine=True)(x)
    with pytest.warns(UserWarning, match="does not match num_features"):
        ud.nn.InstanceNorm1d(4)(x)
    with pytest.raises(ValueError, match="expected more than 1 spatial element when training"):
        ud.nn.InstanceNorm1d(3)(x[:, :, :1])


def test_true_or_false_options_of_the_layers_are_bools():
    """A norm's or transformer layer's True/False option given a string or a float is a ``ValueError`` naming it
    (``bool()`` took ``affine='False'`` as True); 0 and 1 are taken, as torch takes them."""
    for build in (lambda: ud.nn.InstanceNorm2d(3, affine="False"), lambda: ud.nn.RMSNorm(4, elementwise_affine="no"),
                  lambda: ud.nn.LayerNorm(4, elementwise_affine=0.5), lambda: ud.nn.GroupNorm(2, 4, affine="yes"),
                  lambda: ud.nn.TransformerEncoderLayer(4, 2, norm_first="False"),
                  lambda: ud.nn.MultiheadAttention(4, 2, batch_first="True"),
                  lambda: ud.nn.Transformer(4, 2, 1, 1, 8, norm_first="x")):
        with pytest.raises(ValueError, match=r"(affine|norm_first|batch_first) must be True or False, got ('|0.5)"):
            build()
    assert ud.nn.InstanceNorm2d(3, affine=1).affine is True and ud.nn.LayerNorm(4, elementwise_affine=0).weight is None
