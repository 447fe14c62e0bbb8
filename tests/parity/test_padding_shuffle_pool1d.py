"""The padding layers, ``PixelShuffle``/``PixelUnshuffle`` and the 1-d poolings against plain ``torch.nn``: output and
input gradients eagerly and inside ``ud.function`` (float32 and float64: ``torch_oracle.RUNS``), an SGD step of a
model of them through ``ud.train_step``, their reprs, and their errors for bad arguments and too-small inputs (the
same ``ShapeMismatchError`` eagerly and in a graph, naming the layer and the shape), on every backend."""

import numpy as np
import pytest
import torch
from torch import nn as tnn
from torch.nn import functional as F

import unidl as ud
from tests.parity.torch_oracle import RUNS, Case, compare_table

R = np.random.default_rng(21)
IMAGES = R.standard_normal((2, 4, 5, 6))
SEQUENCE = R.standard_normal((2, 4, 7))


def both(spelling, *inputs):
    """The case of ``ud.nn.<spelling>`` against ``torch.nn.<spelling>`` (e.g. ``"ZeroPad1d((2, -1))"``)."""
    return Case(lambda: eval(f"ud.nn.{spelling}"), lambda: eval(f"tnn.{spelling}"), list(inputs))


SPELLINGS = [
    ("ZeroPad1d((2, -1))", SEQUENCE), ("ZeroPad2d((1, 2, -1, 0))", IMAGES), ("ConstantPad1d(2, 3.5)", SEQUENCE[0]),
    ("ConstantPad2d((1, 0, 2, -2), -1.0)", IMAGES), ("ReflectionPad1d((3, 1))", SEQUENCE),
    ("ReflectionPad2d((2, 1, 0, 4))", IMAGES),
    ("ReplicationPad1d((2, -1))", SEQUENCE),
    ("ReplicationPad2d((1, 2, 3, 0))", IMAGES), ("CircularPad1d((3, 2))", SEQUENCE[0]),
    ("CircularPad2d((1, 2, 5, 0))", IMAGES), ("PixelShuffle(2)", IMAGES.reshape(2, 1, 4, 5, 6)[:, :, :, :2]),
    ("PixelUnshuffle(2)", IMAGES[:, :, :4]),
    ("MaxPool1d(3, 2, 1, ceil_mode=True)", SEQUENCE), ("MaxPool1d(2)", SEQUENCE[0]),
    ("MaxPool1d(2, 1, 1, dilation=3, ceil_mode=True)", SEQUENCE),
    ("AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False)", SEQUENCE),
    ("AdaptiveAvgPool1d(3)", SEQUENCE), ("AdaptiveMaxPool1d(3)", SEQUENCE),
    ("ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2)", SEQUENCE),
    # torch's other lengths of padding: a 2-d layer's pair pads the last axis alone, a 1-d one's 4 the last two (the
    # arithmetic of the cases above: on JAX, no new shapes to compile)
    ("ZeroPad2d((2, -1))", SEQUENCE), ("ReflectionPad1d([2, 1, 0, 4])", IMAGES),
    ("Softmax2d()", IMAGES), ("RReLU(0.1, 0.3).eval()", SEQUENCE),
]
LAYERS = {f"{spelling} of {x.shape}": both(spelling, x) for spelling, x in SPELLINGS}


def functional(spelling, *inputs):
    """The case of ``ud.ops.<spelling>`` against ``torch.nn.functional.<spelling>``, the inputs ``t[0]``, ..."""
    return Case(lambda: eval(f"lambda *t: ud.ops.{spelling}"), lambda: eval(f"lambda *t: F.{spelling}"), list(inputs))


FUNCTIONAL = [  # (the layers call them: these, the cases of the layers above, with torch.nn.functional's arguments)
    ("pixel_shuffle(t[0], 2)", IMAGES.reshape(2, 1, 4, 5, 6)[:, :, :, :2]),
    ("pixel_unshuffle(t[0], downscale_factor=2)", IMAGES[:, :, :4]),
    ("max_pool1d(t[0], 3, 2, 1, 1, True)", SEQUENCE), ("max_pool1d(t[0], 2)", SEQUENCE[0]),
    ("max_pool1d(t[0], 3, 2, 1, 2, True, True)[0]", SEQUENCE),
    ("avg_pool1d(t[0], 3, 2, 1, True, False)", SEQUENCE), ("adaptive_avg_pool1d(t[0], (3,))", SEQUENCE),
    ("adaptive_max_pool1d(t[0], 3)", SEQUENCE),
    ("conv_transpose1d(t[0], t[1], t[2], 2, 1, 1, 2, 2)", SEQUENCE, R.standard_normal((4, 3, 3)), R.standard_normal(6)),
    ("rrelu(t[0], 0.1, 0.3)", SEQUENCE),
]
LAYERS.update({f"F.{spelling} of {inputs[0].shape}": functional(spelling, *inputs) for spelling, *inputs in FUNCTIONAL})


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_padding_shuffle_and_1d_pooling_layers_match_torch(backend, dtype, modes):
    failures = compare_table(LAYERS, backend, dtype, modes)
    assert not failures, "\n".join(failures)


def _model(nn):
    """(N, 3, 8) -> (N, 2) through every new layer, 1-d then 2-d."""
    return nn.Sequential(
        nn.ReflectionPad1d(2), nn.Conv1d(3, 8, 3), nn.ConvTranspose1d(8, 8, 3, stride=2, padding=1, output_padding=1),
        nn.MaxPool1d(2, ceil_mode=True),
        nn.AvgPool1d(2, 1, 1, count_include_pad=False), nn.CircularPad1d(1), nn.ReplicationPad1d((2, 0)),
        nn.ZeroPad1d((1, -1)), nn.ConstantPad1d((0, 2), 0.25), nn.AdaptiveMaxPool1d(6), nn.AdaptiveAvgPool1d(4),
        nn.Unflatten(2, (2, 2)), nn.PixelShuffle(2), nn.ZeroPad2d((1, 0, -1, 1)), nn.ReflectionPad2d(1),
        nn.ReplicationPad2d((0, 1, 1, 0)), nn.CircularPad2d(1), nn.ConstantPad2d((1, 1, 1, 0), 0.5),
        nn.PixelUnshuffle(2), nn.Flatten(), nn.Linear(240, 2))


def test_the_layers_train_in_a_compiled_step_as_in_torch(backend):
    """An SGD step (lr 0.1, MSE) through ``ud.train_step`` (the backend's compiled step) gives the weights plain
    PyTorch gives (1e-5): the gradients through every layer after the convolution."""
    data = np.random.default_rng(1)
    x = data.standard_normal((4, 3, 8)).astype(np.float32)
    y = data.standard_normal((4, 2)).astype(np.float32)
    model, reference = _model(ud.nn), _model(tnn)
    reference.load_state_dict({key: torch.tensor(value) for key, value in model.state_dict().items()})
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    step(x, y)
    tnn.functional.mse_loss(reference(torch.tensor(x)), torch.tensor(y)).backward()
    optimizer.step()
    state = model.state_dict()
    for key, value in reference.state_dict().items():
        assert ud.testing.max_relative_difference(state[key], value.numpy()) < 1e-5, key


def test_max_pool1d_indices_transposed_output_size_and_reprs_match_torch(backend):
    """``MaxPool1d(return_indices=True)`` (and ``ud.ops.max_pool1d``) gives torch's indices along L (and its values),
    ``ConvTranspose1d``'s
    ``output_size`` (batched and unbatched) torch's output, and every new layer's repr is torch.nn's."""
    x = SEQUENCE.astype(np.float32)
    theirs = tnn.MaxPool1d(3, 2, 1, return_indices=True)(torch.tensor(x))
    for ours in (ud.nn.MaxPool1d(3, 2, 1, return_indices=True)(ud.tensor(x)),
                 ud.ops.max_pool1d(ud.tensor(x), 3, 2, 1, return_indices=True)):
        for got, want in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(ud.to_numpy(got), want.numpy())
    layer, reference = ud.nn.ConvTranspose1d(4, 2, 3, stride=3), tnn.ConvTranspose1d(4, 2, 3, stride=3)
    reference.load_state_dict({key: torch.tensor(value) for key, value in layer.state_dict().items()})
    for sample, size in ((x, (2, 2, 22)), (x, (23,)), (x[0], (2, 21))):
        want = reference(torch.tensor(sample), output_size=size).detach().numpy()
        got = ud.function(lambda t, size=size: layer(t, output_size=size))(ud.tensor(sample))
        assert ud.testing.max_relative_difference(ud.to_numpy(got), want) < 2e-6, size
    more = ["RReLU()", "RReLU(0.1, 0.3, True)", "Softmax2d()",
            "AvgPool1d((3,))", "MaxPool1d(2, return_indices=True)", "ConstantPad2d(2, 1)", "ConvTranspose1d(2, 3, 3)",
            "AdaptiveMaxPool1d((2,))"]
    for spelling in [spelling for spelling, _ in SPELLINGS] + more:
        assert repr(eval(f"ud.nn.{spelling}")) == repr(eval(f"tnn.{spelling}")), spelling


@pytest.mark.parametrize("spelling, message", [
    ("ZeroPad2d((1, 2, 3))", "ZeroPad2d padding must be an int or (left, right), (left, right, top, bottom), or an "
                             "even number of ints (before, after) per axis, last axis first; got (1, 2, 3)"),
    ("ReflectionPad1d((1,) * 8)", "ReflectionPad1d padding must be an int or (left, right), or 2, 4 or 6 ints "
                                  "(before, after) per axis, last axis first; got (1, 1, 1, 1, 1, 1, 1, 1)"),
    ("CircularPad1d((1,) * 6)", "CircularPad1d padding must be an int or (left, right), or 2 or 4 ints"),
    ("ReplicationPad2d(())", "ReplicationPad2d padding must be an int or (left, right), (left, right, top, bottom), "
                             "or 2, 4 or 6 ints"),
    ("ConstantPad2d((1.0, 2.0), 0)", "ConstantPad2d padding must be an int or (left, right), (left, right, top, "
                                     "bottom), or an even number of ints"),
    ("CircularPad1d(-1)", "CircularPad1d: pad mode 'circular' takes no negative amounts, got (-1, -1)"),
    ("PixelShuffle(0)", "PixelShuffle upscale_factor must be a positive integer, got 0"),
    ("AdaptiveAvgPool1d(None)", "AdaptiveAvgPool1d output_size must be a positive int or 1 of them, got None"),
    ("MaxPool1d(2, dilation=0)", "MaxPool1d dilation must be a positive int or 1 of them, got 0"),
    ("MaxPool1d(3, padding=2)", "MaxPool1d padding 2 must be non-negative and at most half the kernel size (3,)"),
])
def test_bad_arguments_are_one_error(spelling, message):
    """Each a ``ValueError``; a padding torch refuses (when called) is its error: a ``PaddingLengthError`` for a
    length (torch's ``RuntimeError`` too), a ``TypeError`` for amounts that are not ints."""
    padding = "padding must" in message
    error = (TypeError if "1.0" in spelling else ud.PaddingLengthError) if padding else ValueError
    error = ud.PoolPaddingError if "half the kernel" in message else error  # (torch's RuntimeError too)
    with pytest.raises(error) as caught:
        eval(f"ud.nn.{spelling}")
    assert str(caught.value).startswith(message), str(caught.value)
    if padding:
        with pytest.raises(TypeError if error is TypeError else RuntimeError):
            eval(f"tnn.{spelling}")(torch.ones(2, 3, 4, 5) if "2d" in spelling else torch.ones(2, 3, 4))


def test_rrelu_in_training_draws_a_slope_per_negative_element_from_the_seeded_generator(backend):
    """In training each element below 0 gets its own slope in [lower, upper] (its gradient, as torch's noise), drawn
    again at every call, eagerly and in ``ud.function``; the same seed gives the same slopes. (Eval mode: the table
    above, against ``torch.nn.RReLU``.) A compiled ``train_step`` through it trains."""
    x = np.concatenate([SEQUENCE[0].ravel(), [0.0]]).astype(np.float32)
    negative, positive = x < 0, x > 0
    layer = ud.nn.RReLU(0.1, 0.3)
    ud.manual_seed(5)
    y = ud.to_numpy(layer(ud.tensor(x)))
    ud.manual_seed(5)
    gradient = ud.to_numpy(ud.grad(lambda t: ud.ops.sum(layer(t)))(ud.tensor(x)))
    slopes = y[negative] / x[negative]
    assert 0.1 <= slopes.min() and slopes.max() <= 0.3 and len(np.unique(slopes)) > len(slopes) // 2
    np.testing.assert_allclose(gradient[negative], slopes, rtol=1e-6)
    assert np.array_equal(y[positive], x[positive]) and np.all(gradient[positive] == 1) and y[-1] == 0
    assert 0.1 <= gradient[-1] <= 0.3  # (at 0: a drawn slope, as torch's)
    compiled = ud.function(lambda t: layer(t))
    first, second = (ud.to_numpy(compiled(ud.tensor(x))) for _ in range(2))
    for drawn in (first, second):
        assert np.array_equal(drawn[positive], x[positive])
        slopes = drawn[negative] / x[negative]
        assert 0.1 - 1e-7 <= slopes.min() and slopes.max() <= 0.3 + 1e-7
    assert not np.array_equal(first, second) and not np.array_equal(first, y)
    model = ud.nn.Sequential(ud.nn.Linear(7, 7), ud.nn.RReLU())
    before = ud.to_numpy(model[0].weight)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    losses = [float(step(SEQUENCE[0].astype(np.float32), SEQUENCE[1].astype(np.float32))) for _ in range(2)]
    assert np.all(np.isfinite(losses)) and not np.array_equal(ud.to_numpy(model[0].weight), before)
    with pytest.raises(ValueError, match=r"RReLU lower \(0.5\) must be at most upper \(0.1\)"):
        ud.nn.RReLU(0.5, 0.1)
    with pytest.raises(ud.ShapeMismatchError, match="Softmax2d\\(\\): expected input to be 3D or 4D"):
        ud.nn.Softmax2d()(ud.tensor(SEQUENCE[0]))


def test_the_functional_forms_name_themselves_in_their_errors():
    """The errors of ``ud.ops``' forms name the op (the layers' name the layer: ``test_too_small_inputs_...``)."""
    x = ud.tensor(np.ones((1, 3, 4, 3), np.float32))
    for call, error, message in [
        (lambda: ud.ops.pixel_shuffle(x, 2), ud.ShapeMismatchError, "pixel_shuffle: the channels (axis -3) 3 of the "
                                                                    "input is not divisible by 4 (input shape (1, 3, "
                                                                    "4, 3))"),
        (lambda: ud.ops.pixel_unshuffle(x, 2), ud.ShapeMismatchError, "pixel_unshuffle: the width (axis -1) 3 of the "
                                                                      "input is not divisible by 2"),
        (lambda: ud.ops.max_pool1d(x, 2), ud.ShapeMismatchError, "max_pool1d expected input of shape (N, C, L) or "
                                                                 "(C, L), received input of 4 axes"),
        (lambda: ud.ops.avg_pool1d(x[0], 5), ud.ShapeMismatchError, "avg_pool1d: kernel length 5 is larger than the "
                                                                    "padded input length 3"),
        (lambda: ud.ops.max_pool1d(x[0], 2, dilation=3), ud.ShapeMismatchError,
         "max_pool1d: kernel length 4 is larger than the padded input length 3"),
        (lambda: ud.ops.adaptive_max_pool1d(x[0], 2, True), ValueError, "adaptive_max_pool1d return_indices=True is "
                                                                        "not supported"),
        (lambda: ud.ops.conv_transpose1d(x[0], x[0], output_padding=1), ValueError, "conv_transpose1d output_padding "
                                                                                    "(1,) must be smaller than"),
    ]:
        with pytest.raises(error) as caught:
            call()
        assert str(caught.value).startswith(message), str(caught.value)


TOO_SMALL = [  # (layer, input shape, the error's message)
    ("ReflectionPad1d(3)", (1, 2, 3), "ReflectionPad1d((3, 3)): the pad (3, 3) of axis 2 is not shorter than the "
                                      "axis (axis size 3, input shape (1, 2, 3))"),
    ("CircularPad2d((0, 0, 3, 0))", (2, 2, 3), "CircularPad2d((0, 0, 3, 0)): the pad (3, 0) of axis 1 is longer than "
                                               "the axis (axis size 2, input shape (2, 2, 3))"),
    ("ConstantPad1d(-2, 1.0)", (1, 1, 3), "ConstantPad1d(padding=(-2, -2), value=1.0): the pad (-2, -2) of axis 2 "
                                          "crops more than the axis holds (axis size 3, input shape (1, 1, 3))"),
    ("ReplicationPad2d(1)", (3, 3), "ReplicationPad2d((1, 1, 1, 1)) expected input of shape (N, C, H, W) or "
                                    "(C, H, W), received (3, 3)"),
    ("PixelShuffle(2)", (1, 3, 4, 4), "PixelShuffle(upscale_factor=2): the channels (axis -3) 3 of the input is not "
                                      "divisible by 4 (input shape (1, 3, 4, 4))"),
    ("PixelUnshuffle(2)", (1, 3, 4, 3), "PixelUnshuffle(downscale_factor=2): the width (axis -1) 3 of the input is "
                                        "not divisible by 2 (input shape (1, 3, 4, 3))"),
    ("PixelShuffle(2)", (4, 4), "PixelShuffle(upscale_factor=2) expected input of at least 3 axes (*, C, H, W), "
                                "received shape (4, 4)"),
    ("MaxPool1d(3)", (1, 2, 2), "MaxPool1d(kernel_size=3, stride=3, padding=0, dilation=1, ceil_mode=False): kernel "
                                "length 3 is larger than the padded input length 2 (input shape (1, 2, 2)); use a "
                                "smaller kernel, more padding or a larger input"),
    ("AvgPool1d(2)", (1, 2, 2, 2), "AvgPool1d(kernel_size=(2,), stride=(2,), padding=(0,)) expected NCL input of rank "
                                   "3 (or one sample (C, L)), received shape (1, 2, 2, 2)"),
    ("ConvTranspose1d(2, 2, 3, stride=2)", (1, 2, 4), "ConvTranspose1d(2, 2, kernel_size=(3,), stride=(2,)): "
                                                      "output_size (12,) is not a size the input can give: its length "
                                                      "must lie in [9, 10] (input shape (1, 2, 4))", (12,)),
]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "ud.function"])
def test_too_small_inputs_are_one_error_naming_the_layer(backend, graph):
    for spelling, shape, message, *output_size in TOO_SMALL:
        layer = eval(f"ud.nn.{spelling}")
        call = (lambda t, layer=layer, size=output_size[0]: layer(t, output_size=size)) if output_size else layer
        run = ud.function(lambda t, call=call: call(t)) if graph else call
        with pytest.raises(ud.ShapeMismatchError) as caught:
            run(ud.tensor(np.ones(shape, np.float32)))
        # (a wrong rank is found while a graph is traced, where TensorFlow's graph leaves every size unknown)
        unknown = message[:message.rfind("(")] + f"({', '.join(['None'] * len(shape))})"
        assert str(caught.value) in (message, unknown if graph else message), (backend, graph, spelling)
