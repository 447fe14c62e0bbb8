"""Conv/pool/norm layers beyond parity: PyTorch's weight shapes, names and initial ranges, channel dropout's
statistics on every backend, and clear errors for options and input that cannot work."""

import math

import numpy as np
import pytest
import torch
from torch import nn as tnn

import unidl as ud

# (unidl layer, the same torch.nn layer, fan_in of PyTorch's default init or None for ones/zeros)
SAME_AS_TORCH = [
    (lambda: ud.nn.Conv1d(4, 6, 3, groups=2), lambda: tnn.Conv1d(4, 6, 3, groups=2), 2 * 3),
    (lambda: ud.nn.Conv2d(4, 6, (3, 2), dilation=2, groups=2), lambda: tnn.Conv2d(4, 6, (3, 2), dilation=2, groups=2),
     2 * 3 * 2),
    (lambda: ud.nn.ConvTranspose2d(4, 6, 3, groups=2), lambda: tnn.ConvTranspose2d(4, 6, 3, groups=2), 3 * 3 * 3),
    (lambda: ud.nn.GroupNorm(2, 4), lambda: tnn.GroupNorm(2, 4), None),
]


@pytest.mark.parametrize("index", range(len(SAME_AS_TORCH)))
def test_weights_have_pytorch_names_shapes_and_initial_range(index):
    build, oracle, fan_in = SAME_AS_TORCH[index]
    ud.manual_seed(0)
    state = build().state_dict()
    expected = oracle().state_dict()
    assert list(state) == list(expected)
    assert all(state[key].shape == tuple(expected[key].shape) for key in state)
    if fan_in is None:
        assert all(np.array_equal(state[key], expected[key].numpy()) for key in state)  # ones and zeros
    else:
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias: both U(-1/sqrt(fan_in), ...)
        for key in state:
            assert np.abs(state[key]).max() <= bound
            assert np.abs(state[key]).max() > 0.5 * bound


def test_dropout2d_zeros_whole_channels_and_is_the_identity_in_eval(backend):
    drop = ud.nn.Dropout2d(0.4)
    x = np.ones((40, 50, 2, 3), np.float32)
    out = ud.to_numpy(drop(ud.tensor(x)))
    per_channel = out.reshape(40, 50, -1)
    assert np.all(per_channel.min(-1) == per_channel.max(-1))  # a channel is kept or dropped whole
    kept = per_channel[:, :, 0] != 0
    assert abs(kept.mean() - 0.6) < 0.05
    np.testing.assert_allclose(per_channel[kept], 1 / 0.6, rtol=1e-6)
    drop.eval()
    assert np.array_equal(ud.to_numpy(drop(ud.tensor(x))), x)



def test_dropout2d_inside_a_function_masks_whole_channels_and_its_gradient_is_the_scaled_mask(backend):
    """``Dropout2d`` inside ``ud.function``, as ``torch.nn.Dropout2d``: in training each channel of each sample is
    kept whole (scaled by 1/(1-p)) or zeroed, about 1-p of them kept, a fresh mask each call; the gradient of
    sum(drop(x) * r) is its forward's mask times 1/(1-p) times r (x of ones: the loss is the gradient's sum, which
    ties the two); in eval the identity, with a gradient of r."""
    p = 0.4
    drop = ud.nn.Dropout2d(p)
    x = np.ones((40, 50, 2, 3), np.float32)
    r = np.random.default_rng(6).uniform(0.5, 1.5, x.shape).astype(np.float32)
    step = ud.function(lambda v, w: (drop(v), *ud.value_and_grad(lambda t: ud.ops.sum(drop(t) * w))(v)))
    outputs, scaled = [], 1 / (1 - p)
    for _ in range(2):
        out, loss, grad = (ud.to_numpy(t) for t in step(x, r))
        for result, upstream in ((out, 1.0), (grad, r)):  # (each call of drop draws its own mask)
            kept = result[:, :, 0, 0] != 0
            assert abs(kept.mean() - (1 - p)) < 0.05
            mask = np.where(kept, scaled, 0.0)[:, :, None, None] * np.ones((1, 1, 2, 3))  # whole channels
            np.testing.assert_allclose(result, mask * upstream, rtol=1e-6)
        np.testing.assert_allclose(float(loss), grad.sum(dtype=np.float64), rtol=1e-5)  # the loss's own mask
        outputs.append(out)
    assert not np.array_equal(*outputs)  # a fresh mask each call
    drop.eval()
    out, loss, grad = (ud.to_numpy(t) for t in step(x, r))
    assert np.array_equal(out, x) and np.array_equal(grad, r)

@pytest.mark.parametrize("build, message", [
    (lambda: ud.nn.Conv2d(4, 6, 3, groups=4), r"in_channels \(4\) and out_channels \(6\) must both be divisible by groups"),
    (lambda: ud.nn.Conv2d(4, 6, 3, padding_mode="mirror"), "padding_mode must be one of 'zeros', 'reflect'"),
    (lambda: ud.nn.Conv1d(4, 6, 3, dilation=0), "dilation must be a positive int"),
    (lambda: ud.nn.Conv1d(4, 6, 3, stride=2, padding="same"), "padding='same' needs stride=1"),
    (lambda: ud.nn.ConvTranspose2d(4, 6, 3, padding_mode="reflect"), "padding_mode='zeros' only"),
    (lambda: ud.nn.ConvTranspose2d(4, 6, 3, padding="same"), "padding must be an int or a pair"),
    (lambda: ud.nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=2), "output_padding .* must be smaller than stride"),
    (lambda: ud.nn.MaxPool2d(2, dilation=0), "dilation must be a positive int"),
    (lambda: ud.nn.AvgPool2d(2, divisor_override=0), "divisor_override must be a positive int"),
    (lambda: ud.nn.AdaptiveAvgPool2d(0), "output_size must be a positive int"),
    (lambda: ud.nn.AdaptiveMaxPool2d(2, return_indices=True), "return_indices=True is not supported"),
    (lambda: ud.nn.GroupNorm(3, 4), r"num_channels \(4\) must be divisible by num_groups \(3\)"),
    (lambda: ud.nn.Dropout2d(2), r"Dropout2d p=2 is invalid"),
    (lambda: ud.nn.Upsample(scale_factor=2, mode="trilinear"), "Upsample mode must be one of"),
    (lambda: ud.nn.Upsample(size=4, scale_factor=2), "exactly one of size and scale_factor"),
    (lambda: ud.nn.Upsample(scale_factor=2, align_corners=True), "align_corners applies to the 'linear', 'bilinear' and 'bicubic'"),
])
def test_bad_arguments_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_input_is_a_clear_error_before_the_framework_sees_it(backend):
    with pytest.raises(ud.ShapeMismatchError, match=r"Conv1d\(4, 6.*expected input of shape \(N, 4, L\) or \(4, L\), "
                                                   r"received \(2, 4, 5, 5\)"):
        ud.nn.Conv1d(4, 6, 3)(ud.tensor(np.zeros((2, 4, 5, 5))))
    with pytest.raises(ud.ShapeMismatchError, match="kernel height 7 is larger than the padded input height 5"):
        ud.nn.Conv2d(1, 1, 3, dilation=3)(ud.tensor(np.zeros((1, 1, 5, 5))))
    with pytest.raises(ud.ShapeMismatchError, match=r"GroupNorm.*expected input of shape \(N, 4, \*\), received \(2, 3, 5\)"):
        ud.nn.GroupNorm(2, 4)(ud.tensor(np.zeros((2, 3, 5))))
    with pytest.raises(ValueError, match="interpolate mode 'linear' is not available for 4-D input"):
        ud.ops.interpolate(ud.tensor(np.zeros((1, 1, 2, 2))), scale_factor=2, mode="linear")


def test_interpolating_an_empty_tensor_gives_its_empty_output(backend):
    """A batch or channel axis of 0 in the linear modes gives the empty output of the sizes asked for, on every
    backend, eagerly and in ``ud.function`` (torch's kernel, unidl's fast path there, refuses zero channels with a
    RuntimeError of its own, so the torch backend computes those as the others do)."""
    cases = [((2, 0, 4, 5), "bilinear", (2, 0, 8, 10)), ((0, 3, 4, 5), "bicubic", (0, 3, 8, 10)),
             ((2, 0, 7), "linear", (2, 0, 14))]
    for shape, mode, expected in cases:
        for run in (ud.ops.interpolate, ud.function(ud.ops.interpolate)):
            out = run(ud.tensor(np.zeros(shape, np.float32)), scale_factor=2, mode=mode)
            assert tuple(out.shape) == expected, (shape, mode, tuple(out.shape))

def test_torch_reference_weights_load_and_give_torch_outputs(backend):
    """A state dict saved by plain PyTorch loads into the same unidl layers by name and gives torch's outputs."""
    torch.manual_seed(0)
    reference = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate"), tnn.GroupNorm(2, 4),
                               tnn.ConvTranspose2d(4, 2, 2, stride=2), tnn.AdaptiveAvgPool2d((3, 3)))
    model = ud.nn.Sequential(ud.nn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate"), ud.nn.GroupNorm(2, 4),
                             ud.nn.ConvTranspose2d(4, 2, 2, stride=2), ud.nn.AdaptiveAvgPool2d((3, 3)))
    model.load_state_dict({key: value.numpy() for key, value in reference.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = reference(torch.tensor(x)).detach().numpy()
    assert ud.testing.max_relative_difference(ud.to_numpy(model(ud.tensor(x))), expected) < 2e-6


UNBATCHED = [lambda nn: nn.Conv2d(3, 4, 3, padding=1), lambda nn: nn.Conv1d(3, 4, 2),
             lambda nn: nn.ConvTranspose2d(3, 2, 2, stride=2), lambda nn: nn.MaxPool2d(2, return_indices=True),
             lambda nn: nn.AvgPool2d(2, ceil_mode=True), lambda nn: nn.AdaptiveAvgPool2d((2, 3)),
             lambda nn: nn.AdaptiveMaxPool2d(2)]


def test_convolutions_and_poolings_take_one_sample_without_its_batch_axis(backend):
    """(C, H, W) (Conv1d: (C, L)) input, one sample as ``torch.nn``'s convolutions and poolings take it: their
    outputs (and indices) without the batch axis, eagerly and in a graph (a ``ShapeMismatchError`` before)."""
    sample = np.random.default_rng(5).standard_normal((3, 5, 6)).astype(np.float32)
    for build in UNBATCHED:
        layer, reference = build(ud.nn), build(tnn)
        reference.load_state_dict({key: torch.tensor(value) for key, value in layer.state_dict().items()})
        x = sample[:, 0] if isinstance(reference, tnn.Conv1d) else sample
        expected = reference(torch.tensor(x))
        expected = expected if isinstance(expected, tuple) else (expected,)
        for run in (layer, ud.function(lambda t, f=layer: f(t))):
            got = run(ud.tensor(x))
            got = got if isinstance(got, tuple) else (got,)
            for ours, theirs in zip(got, expected):
                assert tuple(ours.shape) == tuple(theirs.shape), layer
                np.testing.assert_allclose(ud.to_numpy(ours), theirs.detach().numpy(), rtol=2e-5, atol=2e-6)


def _up_model(nn, shape):
    """A stride-2 conv and its transposed conv back to the input's size: odd sizes need ``output_size``."""

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(2, 3, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)

        def forward(self, x):
            return self.up(self.down(x), output_size=shape(x))

    return Up()


def test_conv_transpose_output_size_as_torch(backend):
    """``ConvTranspose2d.forward(x, output_size=)`` picks the output padding as PyTorch's (a (H, W) pair or a full
    shape), eagerly and inside a compiled train step (``ud.ops.shape(x)``: tensors where a TensorFlow graph leaves
    the sizes unknown); a size the input cannot give is one ``ValueError`` naming the range, as PyTorch's, eagerly
    and in a graph."""
    data = np.random.default_rng(2)
    x = data.standard_normal((2, 2, 7, 6)).astype(np.float32)
    y = data.standard_normal((2, 2, 7, 6)).astype(np.float32)
    model, reference = _up_model(ud.nn, ud.ops.shape), _up_model(tnn, lambda x: x.shape)
    reference.load_state_dict({key: torch.tensor(value) for key, value in model.state_dict().items()})
    out = ud.to_numpy(model(ud.tensor(x)))
    assert out.shape == (2, 2, 7, 6)
    assert ud.testing.max_relative_difference(out, reference(torch.tensor(x)).detach().numpy()) < 2e-6
    layer, small = model.up, ud.tensor(data.standard_normal((1, 3, 4, 3)).astype(np.float32))
    for size in [(8, 6), [1, 2, 7, 5]]:
        expected = reference.up(torch.tensor(ud.to_numpy(small)), output_size=size).detach().numpy()
        assert ud.testing.max_relative_difference(ud.to_numpy(layer(small, output_size=size)), expected) < 2e-6
    # one unbatched sample: its (C, H, W) as torch's
    expected = reference.up(torch.tensor(ud.to_numpy(small))[0], output_size=(2, 8, 5)).detach().numpy()
    got = ud.to_numpy(layer(small[0], output_size=(2, 8, 5)))
    assert got.shape == expected.shape == (2, 8, 5) and ud.testing.max_relative_difference(got, expected) < 2e-6
    with pytest.raises(ValueError, match=r"for one unbatched sample of shape \(3, 4, 3\), output_size must be 2 "
                                         r"sizes \(H, W\) or 3 \(C, H, W\), got \(1, 2, 8, 5\)"):
        layer(small[0], output_size=(1, 2, 8, 5))  # (torch's ValueError too)
    message = (r"ConvTranspose2d\(3, 2, .*\) at 'up': output_size \(9, 6\) is not a size the input can give: its "
               r"height must lie in \[7, 8\] \(input shape \(1, 3, 4, 3\)\)")
    with pytest.raises(ValueError, match=message):
        layer(small, output_size=(9, 6))
    with pytest.raises(ValueError, match=message):
        ud.function(lambda z: layer(z, output_size=(9, 6)))(small)
    with pytest.raises(ValueError, match=r"output_size must be 2 ints \(H, W\) or 4 \(N, C, H, W\), got 7"):
        layer(small, output_size=7)
    _two_sgd_steps_as_torch(model, reference, x, y)
    for name, value in reference.state_dict().items():
        assert ud.testing.max_relative_difference(model.state_dict()[name], value.numpy()) < 1e-5, name


def _two_sgd_steps_as_torch(model, reference, x, y):
    """Two SGD steps (lr 0.1, MSE) of ``model`` through ``ud.train_step`` and of its torch twin ``reference``."""
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(2):
        step(x, y)
        optimizer.zero_grad()
        tnn.functional.mse_loss(reference(torch.tensor(x)), torch.tensor(y)).backward()
        optimizer.step()


def _model(nn):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", dilation=1), nn.GroupNorm(2, 4),
                         nn.MaxPool2d(2, ceil_mode=True), nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
                         nn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.AdaptiveAvgPool2d((2, 3)),
                         nn.Upsample(scale_factor=2, mode="bilinear"), nn.Flatten(), nn.Linear(96, 2))


def test_the_layers_train_in_a_compiled_step_as_in_torch(backend):
    """Two SGD steps of a model of the new layers through ``ud.train_step`` (the backend's compiled step, Keras's
    own trainer on keras) give the weights plain PyTorch gives (1e-5)."""
    data = np.random.default_rng(1)
    x = data.standard_normal((4, 3, 5, 7)).astype(np.float32)
    y = data.standard_normal((4, 2)).astype(np.float32)
    ud.manual_seed(0)
    model = _model(ud.nn)
    reference = _model(tnn)
    reference.load_state_dict({key: torch.tensor(value) for key, value in model.state_dict().items()})
    _two_sgd_steps_as_torch(model, reference, x, y)
    state = model.state_dict()
    for key, value in reference.state_dict().items():
        assert ud.testing.max_relative_difference(state[key], value.numpy()) < 1e-5, key
