"""Conv1d, Conv2d's dilation/groups/padding modes, ConvTranspose2d, pooling's ceil_mode/count_include_pad,
AdaptiveAvgPool2d, AdaptiveMaxPool2d, GroupNorm and Upsample/interpolate against plain ``torch.nn`` and
``torch.nn.functional``: output and input/weight gradients, float32 (2e-6 / 1e-5) inside ``ud.function`` (every
size unknown to TensorFlow's graph) and, for the layers of ``FLOAT64_CASES``, float64 (1e-12) eagerly and inside
``ud.function`` (``RUNS``), on every backend (see ``torch_oracle``)."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

import unidl as ud
from tests.parity.torch_oracle import RUNS, Case, compare_table, difference, probed_sum

pytestmark = pytest.mark.heavy  # minutes of tests: run first (tests/conftest.py)

R = np.random.default_rng(15)
IMAGES = R.standard_normal((2, 4, 5, 6))
SEQUENCE = R.standard_normal((2, 4, 7))
KERNELS = R.standard_normal((6, 2, 3, 3))          # (out, in / groups, kh, kw) for groups=2
# a NaN, an infinity of each sign (one on an edge), and -inf beside +inf (in one of (3, 4) adaptive bins):
# interpolation and adaptive average pooling reach the outputs whose taps or bins read them alone
NONFINITE_IMAGES, NONFINITE_SEQUENCE = IMAGES.copy(), SEQUENCE.copy()
NONFINITE_IMAGES[0, 1, 1, 2], NONFINITE_IMAGES[1, 2, 3, 4], NONFINITE_IMAGES[1, 0, 4, 0] = np.nan, np.inf, -np.inf
NONFINITE_IMAGES[1, 2, 4, 5] = -np.inf
NONFINITE_SEQUENCE[0, 1, 2], NONFINITE_SEQUENCE[1, 3, 6], NONFINITE_SEQUENCE[1, 3, 4] = np.nan, np.inf, -np.inf


def layer(build, oracle, *inputs):
    return Case(build, oracle, list(inputs) or [IMAGES])


LAYERS = {
    "Conv2d-dilation-groups-stride": layer(lambda: ud.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
                                           lambda: tnn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)),
    "Conv2d-depthwise-same-dilation": layer(
        lambda: ud.nn.Conv2d(4, 8, (3, 2), padding="same", dilation=(2, 1), groups=4, bias=False),
        lambda: tnn.Conv2d(4, 8, (3, 2), padding="same", dilation=(2, 1), groups=4, bias=False)),
    "Conv2d-circular": layer(lambda: ud.nn.Conv2d(4, 3, 3, padding=(1, 2), padding_mode="circular"),
                             lambda: tnn.Conv2d(4, 3, 3, padding=(1, 2), padding_mode="circular")),
    "Conv1d-reflect-groups-dilation": layer(
        lambda: ud.nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect"),
        lambda: tnn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect"), SEQUENCE),
    "ConvTranspose2d": layer(lambda: ud.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
                             lambda: tnn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)),
    # a kernel of one along an axis: its flipped taps were an array of negative stride that torch.from_numpy refused
    "ConvTranspose2d-kernel-1x3": layer(lambda: ud.nn.ConvTranspose2d(4, 2, (1, 3), stride=2),
                                        lambda: tnn.ConvTranspose2d(4, 2, (1, 3), stride=2)),
    "ConvTranspose2d-groups-dilation": layer(
        lambda: ud.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(3, 0), output_padding=(1, 2), groups=2,
                                      bias=False, dilation=(2, 1)),
        lambda: tnn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(3, 0), output_padding=(1, 2), groups=2,
                                    bias=False, dilation=(2, 1))),
    "MaxPool2d-ceil": layer(lambda: ud.nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda: tnn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    "MaxPool2d-dilation-ceil": layer(lambda: ud.nn.MaxPool2d(3, 2, 1, dilation=(2, 1), ceil_mode=True),
                                     lambda: tnn.MaxPool2d(3, 2, 1, dilation=(2, 1), ceil_mode=True)),
    "AvgPool2d-ceil": layer(lambda: ud.nn.AvgPool2d(3, 2, 1, ceil_mode=True), lambda: tnn.AvgPool2d(3, 2, 1, ceil_mode=True)),
    "AvgPool2d-ceil-exclude-pad": layer(lambda: ud.nn.AvgPool2d(2, 2, 1, ceil_mode=True, count_include_pad=False),
                                        lambda: tnn.AvgPool2d(2, 2, 1, ceil_mode=True, count_include_pad=False)),
    "AdaptiveAvgPool2d": layer(lambda: ud.nn.AdaptiveAvgPool2d((3, 4)), lambda: tnn.AdaptiveAvgPool2d((3, 4))),
    "AdaptiveAvgPool2d-nan-inf": layer(lambda: ud.nn.AdaptiveAvgPool2d((3, 4)), lambda: tnn.AdaptiveAvgPool2d((3, 4)),
                                       NONFINITE_IMAGES),
    "AdaptiveMaxPool2d": layer(lambda: ud.nn.AdaptiveMaxPool2d((3, 4)), lambda: tnn.AdaptiveMaxPool2d((3, 4))),
    "AdaptiveMaxPool2d-keep-width": layer(lambda: ud.nn.AdaptiveMaxPool2d((2, None)),
                                          lambda: tnn.AdaptiveMaxPool2d((2, None))),
    "GroupNorm": layer(lambda: ud.nn.GroupNorm(2, 4), lambda: tnn.GroupNorm(2, 4)),
    "GroupNorm-ncl-no-affine": layer(lambda: ud.nn.GroupNorm(4, 4, eps=1e-3, affine=False),
                                     lambda: tnn.GroupNorm(4, 4, eps=1e-3, affine=False), SEQUENCE),
    "Upsample-nearest": layer(lambda: ud.nn.Upsample(scale_factor=2), lambda: tnn.Upsample(scale_factor=2)),
    "Upsample-bilinear": layer(lambda: ud.nn.Upsample(scale_factor=2, mode="bilinear"),
                               lambda: tnn.Upsample(scale_factor=2, mode="bilinear")),
    "Upsample-bilinear-align-corners": layer(lambda: ud.nn.Upsample((8, 3), mode="bilinear", align_corners=True),
                                             lambda: tnn.Upsample((8, 3), mode="bilinear", align_corners=True)),
    "Upsample-linear": layer(lambda: ud.nn.Upsample(scale_factor=1.5, mode="linear"),
                             lambda: tnn.Upsample(scale_factor=1.5, mode="linear"), SEQUENCE),
    "Upsample-bilinear-nan-inf": layer(lambda: ud.nn.Upsample(scale_factor=2, mode="bilinear"),
                                       lambda: tnn.Upsample(scale_factor=2, mode="bilinear"), NONFINITE_IMAGES),
    "Upsample-linear-align-corners-nan-inf": layer(lambda: ud.nn.Upsample(11, mode="linear", align_corners=True),
                                                   lambda: tnn.Upsample(11, mode="linear", align_corners=True),
                                                   NONFINITE_SEQUENCE),
}


def op(build, oracle, *inputs):
    return Case(lambda: build, lambda: oracle, list(inputs) or [IMAGES])


# the functional spellings, weights as inputs (of unknown shape inside TensorFlow's graph)
OPS = {
    "conv2d-dilation-groups": op(lambda x, w: ud.ops.conv2d(x, w, None, (2, 1), (2, 0), (2, 1), 2),
                                 lambda x, w: F.conv2d(x, w, None, (2, 1), (2, 0), (2, 1), 2), IMAGES, KERNELS),
    "avg_pool2d-exclude-pad-divisor": op(
        lambda x: ud.ops.avg_pool2d(x, 3, 2, 1, count_include_pad=False) + ud.ops.avg_pool2d(x, 3, 2, 1, divisor_override=4),
        lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False) + F.avg_pool2d(x, 3, 2, 1, divisor_override=4)),
    "max_pool2d-dilation": op(lambda x: ud.ops.max_pool2d(x, 2, (1, 2), 1, dilation=(2, 3), ceil_mode=True),
                              lambda x: F.max_pool2d(x, 2, (1, 2), 1, (2, 3), ceil_mode=True)),
    "interpolate-nearest-exact-size": op(lambda x: ud.ops.interpolate(x, size=(7, 4), mode="nearest-exact"),
                                         lambda x: F.interpolate(x, size=(7, 4), mode="nearest-exact")),
    "interpolate-area": op(lambda x: ud.ops.interpolate(x, size=(3, 4), mode="area"),
                           lambda x: F.interpolate(x, size=(3, 4), mode="area")),
    # a scale factor: a graph's output sizes are int64 tensors, which TensorFlow divided float32 positions by
    "interpolate-area-scale": op(lambda x: ud.ops.interpolate(x, scale_factor=0.5, mode="area"),
                                 lambda x: F.interpolate(x, scale_factor=0.5, mode="area")),
    "interpolate-area-scale-nan-inf": op(lambda x: ud.ops.interpolate(x, scale_factor=0.5, mode="area"),
                                         lambda x: F.interpolate(x, scale_factor=0.5, mode="area"), NONFINITE_IMAGES),
    # the width kept (the height pooled as the last axis); 1-d bins, one of them holding -inf and +inf
    "adaptive_avg_pool2d-keep-width-nan-inf": op(lambda x: ud.ops.adaptive_avg_pool2d(x, (2, None)),
                                                 lambda x: F.adaptive_avg_pool2d(x, (2, None)), NONFINITE_IMAGES),
    "adaptive_avg_pool1d-nan-inf": op(lambda x: ud.ops.adaptive_avg_pool1d(x, 3), lambda x: F.adaptive_avg_pool1d(x, 3),
                                      NONFINITE_SEQUENCE),
    "interpolate-bilinear-recompute": op(
        lambda x: ud.ops.interpolate(x, scale_factor=0.7, mode="bilinear", recompute_scale_factor=True),
        lambda x: F.interpolate(x, scale_factor=0.7, mode="bilinear", recompute_scale_factor=True)),
    # the height copied (a graph's sizes, equal when it runs), the width resampled down: NaN and inf copied alone
    "interpolate-bilinear-copied-axis-nan-inf": op(
        lambda x: ud.ops.interpolate(x, scale_factor=(1.0, 0.6), mode="bilinear"),
        lambda x: F.interpolate(x, scale_factor=(1.0, 0.6), mode="bilinear"), NONFINITE_IMAGES),
}


# float64 (eagerly and inside ud.function: ``RUNS``) on the cases whose arithmetic depends on the dtype
# (normalisation, resampling weights, divisors, the transposed and grouped kernels) and on one case of each layer or
# option issue 15 names (Conv1d, circular padding's wrap, ceil_mode's partial window, nearest Upsample), inside the
# table's one run (one graph per mode): eager JAX dispatches every op on its own, and the suite's time is tight
FLOAT64_CASES = ("Conv2d-depthwise-same-dilation", "ConvTranspose2d-groups-dilation",
                 "AvgPool2d-ceil-exclude-pad", "AdaptiveAvgPool2d", "GroupNorm", "Upsample-bilinear-align-corners",
                 "Upsample-linear", "Upsample-bilinear-nan-inf", "AdaptiveAvgPool2d-nan-inf",
                 "Conv1d-reflect-groups-dilation", "Conv2d-circular", "MaxPool2d-ceil", "Upsample-nearest")


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_conv_pool_norm_layers_match_torch(backend, dtype, modes):
    cases = LAYERS if dtype == "float32" else {name: LAYERS[name] for name in FLOAT64_CASES}
    failures = compare_table(cases, backend, dtype, modes)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_conv_pool_norm_ops_match_torch(backend, dtype, modes):
    failures = compare_table(OPS, backend, dtype, modes)
    assert not failures, "\n".join(failures)


# infinities behind taps of weight 0 (whole source positions: 3 * (4 - 1) / (6 - 1) is 1.8, 5 * 3 / 5 is 3): NaN
# there, as PyTorch's 0 * inf, from scales divided once (a TensorFlow graph of unknown sizes multiplied by the
# reciprocal of the known output size, one unit high in float64, and gave inf)
INF_ROWS = R.standard_normal((1, 2, 4, 7))
INF_ROWS[0, 0, 3, 1], INF_ROWS[0, 1, 2, 6] = np.inf, -np.inf
INF_SEQUENCE = R.standard_normal((1, 2, 3))
INF_SEQUENCE[0, 1, 2] = np.inf
INF_BEHIND_ZERO_WEIGHTS = [  # (options, input)
    (dict(size=(6, 11), mode="bilinear", align_corners=True), INF_ROWS),
    (dict(size=5, mode="linear"), INF_SEQUENCE),
]


def test_an_infinity_behind_a_tap_of_weight_0_gives_torchs_nan_in_float64_graphs(backend):
    """Float64 interpolation whose sizes a graph knows only when it runs divides the input size by the known
    output size once, as PyTorch's kernel in double: an infinity read with weight 0 gives NaN, eagerly and inside
    ``ud.function`` (TensorFlow's and Keras-on-TensorFlow's graphs gave inf: Grappler's reciprocal product)."""
    for options, x in INF_BEHIND_ZERO_WEIGHTS:
        expected = F.interpolate(torch.tensor(x), **options).numpy()
        def resized(x, options=options):
            return ud.ops.interpolate(x, **options)

        for traced, run in enumerate((resized, ud.function(resized))):
            found = ud.to_numpy(run(ud.tensor(x, dtype="float64")))
            assert difference(found, expected) <= 1e-12, (options, traced)


# PyTorch's CPU kernels compute half-precision resampling in float32 and round once ('linear' and 'bicubic' with
# each tap's weight rounded to the input's dtype), where unidl rounded after each axis: the taps' branch beside a NaN
# (which summed each axis in the input's dtype: bins of 30000s overflowed float16, three summed to inf) and the
# products of finite input alike; and the positions of the taps in float32 (in float64 a long float16 'linear'
# resampling gave other weights), 'bilinear' weights rounded where its kernel rounds them (outputs of height + width
# above 128)
LARGE_BINS = np.full((1, 2, 5, 8), 30000.0, np.float32)
LARGE_BINS[0, 0, 4, 7] = LARGE_BINS[0, 1, 0, 0] = np.nan
HALF_IMAGES = np.random.default_rng(3).standard_normal((1, 2, 5, 6)).astype(np.float32) * 3
HALF_SEQUENCE = np.random.default_rng(4).standard_normal((1, 2, 7)).astype(np.float32) * 3
NAN_HALF_IMAGES, NAN_HALF_SEQUENCE = HALF_IMAGES.copy(), HALF_SEQUENCE.copy()
NAN_HALF_IMAGES[0, 0, 1, 2] = NAN_HALF_SEQUENCE[0, 0, 2] = np.nan
LONG_SEQUENCE = np.random.default_rng(5).standard_normal((1, 1, 300)).astype(np.float32) * 3
WIDE_IMAGES = np.random.default_rng(6).standard_normal((1, 1, 30, 210)).astype(np.float32) * 3
HALF_RESAMPLINGS = [  # (dtype, input, function of ud.ops and of torch.nn.functional, its options)
    ("float16", LARGE_BINS, "adaptive_avg_pool2d", dict(output_size=(3, 3))),
    ("bfloat16", LARGE_BINS, "adaptive_avg_pool2d", dict(output_size=(3, 3))),
    ("bfloat16", NAN_HALF_IMAGES, "interpolate", dict(scale_factor=2, mode="bilinear")),
    ("float16", NAN_HALF_SEQUENCE, "interpolate", dict(size=11, mode="linear")),
    ("float16", HALF_IMAGES, "interpolate", dict(size=(7, 9), mode="bicubic", align_corners=True)),
    ("float16", LONG_SEQUENCE, "interpolate", dict(size=501, mode="linear")),
    ("float16", WIDE_IMAGES, "interpolate", dict(size=(31, 250), mode="bilinear")),
]


def test_half_precision_resampling_is_rounded_once_as_torchs(backend):
    """Adaptive average pooling of unequal bins and 'bilinear', 'linear' and 'bicubic' interpolation in float16 and
    bfloat16, of input holding a NaN (the outputs without it) and of finite input, are PyTorch's bit for bit,
    eagerly and inside ``ud.function``."""
    cases = HALF_RESAMPLINGS
    expected = [getattr(F, name)(torch.tensor(x).to(getattr(torch, dtype)), **options).float().numpy()
                for dtype, x, name, options in cases]

    def resampled(*inputs):
        return tuple(ud.ops.cast(getattr(ud.ops, name)(ud.ops.cast(x, dtype), **options), "float32")
                     for x, (dtype, _, name, options) in zip(inputs, cases))

    inputs = [ud.tensor(x) for _, x, _, _ in cases]
    for mode, run in [("eager", resampled), ("ud.function", ud.function(resampled))]:
        for found, wanted, (dtype, _, name, options) in zip(run(*inputs), expected, cases):
            np.testing.assert_array_equal(ud.to_numpy(found), wanted, err_msg=f"{mode} {dtype} {name} {options}")


def test_float32_resampling_positions_are_torchs(backend):
    """A long 'linear' resampling of float32 input is PyTorch's to a unit or two of the last place, eagerly and
    inside ``ud.function``: its taps' positions are computed in float32, as PyTorch's (in float64 the weights, and
    outputs, were up to 1e-4 off)."""
    expected = F.interpolate(torch.tensor(LONG_SEQUENCE), size=501, mode="linear").numpy()

    def resampled(x):
        return ud.ops.interpolate(x, size=501, mode="linear")

    for mode, run in [("eager", resampled), ("ud.function", ud.function(resampled))]:
        np.testing.assert_allclose(ud.to_numpy(run(ud.tensor(LONG_SEQUENCE))), expected, rtol=0, atol=4e-6,
                                   err_msg=mode)


# ---- max pooling of windows of -inf ---------------------------------------------------------------------------
LOWEST = 7.0  # stands for the dtype's lowest finite value (its float32 -3.4e38 is float16's -inf)
MINUS_INF_WINDOWS = np.array([  # 2x2 windows: all -inf, -inf and the lowest, the lowest alone, one finite value
    [[-np.inf, -np.inf, -np.inf, -np.inf, LOWEST, LOWEST],
     [-np.inf, -np.inf, -np.inf, LOWEST, -np.inf, LOWEST],
     [-np.inf, 1.5, 0.5, -0.25, -np.inf, -np.inf],
     [-np.inf, -np.inf, 2.0, 0.5, -np.inf, -3.0]],
    [[0.25, -1.0, 3.0, 3.0, -np.inf, -np.inf],
     [1.0, 0.75, -2.0, 1.25, -np.inf, -np.inf],
     [-np.inf, -np.inf, -np.inf, -np.inf, -0.5, 4.0],
     [-np.inf, -np.inf, -np.inf, -np.inf, 2.5, -1.5]]])[None]
# name: (unidl's, torch's, whether the gradient is compared); a pair of outputs is (what is compared, what is
# differentiated): the indices, and the values of ``return_indices=True``. The ceil-mode pooling is padded and
# reaches past the padding on both axes (4x6 -> 3x4)
MAX_POOLS = {
    "max_pool2d": (lambda x: ud.ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), True),
    "max_pool2d-padding": (lambda x: ud.ops.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), True),
    "max_pool2d-ceil-padding": (lambda x: ud.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                                lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), True),
    "max_pool2d-indices": (lambda x: ud.ops.max_pool2d(x, 3, 2, 1, return_indices=True)[::-1],
                           lambda x: tuple(F.max_pool2d(x, 3, 2, 1, return_indices=True))[::-1], True),
    "max_pool2d-dilation-indices": (lambda x: ud.ops.max_pool2d(x, 2, 1, 1, dilation=2, return_indices=True)[::-1],
                                    lambda x: tuple(F.max_pool2d(x, 2, 1, 1, 2, return_indices=True))[::-1], True),
    "adaptive_max_pool2d-equal-bins": (lambda x: ud.ops.adaptive_max_pool2d(x, (2, 3)),
                                       lambda x: F.adaptive_max_pool2d(x, (2, 3)), True),
    "adaptive_max_pool2d": (lambda x: ud.ops.adaptive_max_pool2d(x, (3, 4)),
                            lambda x: F.adaptive_max_pool2d(x, (3, 4)), True),
}


def _compared_and_differentiated(output):
    """A pooling's output as (what is compared, what is differentiated): see ``MAX_POOLS``."""
    return tuple(output) if isinstance(output, tuple) else (output, output)


def test_max_pooling_of_windows_of_minus_inf_matches_torch(backend):
    """A window that holds nothing but -inf (padding counts as -inf) pools to -inf, as in PyTorch, where
    TensorFlow's kernel gave the dtype's lowest finite value (-3.4e38 in float32); a window that holds that lowest
    value too keeps it. Values bit for bit in float16 and float64 eagerly, and in float32 inside ``ud.function``,
    for plain, padded, ceil-mode and adaptive max pooling, and the indices of ``return_indices=True``; and the
    input gradient of sum(output * r) (for ``return_indices=True``, of its values): an all -inf window's to its first element inside the input (TensorFlow, Keras and
    JAX gave a padded one's to a pad, and ``return_indices=True`` named a pad on every backend), an adaptive bin's
    to its first maximum (ties of 3.0 and of -inf; the reduction split it), the window of -inf and the lowest
    value's to the lowest (TensorFlow's graph kernel in float32 sent it to a -inf, and its argmax picked the
    -inf)."""
    upstream = {}
    expected = {}
    for dtype in ("float16", "float32", "float64"):
        x = np.where(MINUS_INF_WINDOWS == LOWEST, np.finfo(dtype).min, MINUS_INF_WINDOWS)
        expected[dtype] = []
        for name, (_, theirs, compare_gradient) in MAX_POOLS.items():
            tensor = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
            compared, output = _compared_and_differentiated(theirs(tensor))
            expected[dtype].append(compared.detach().double().numpy())
            if compare_gradient:
                if name not in upstream:
                    upstream[name] = np.random.default_rng(len(name)).integers(-8, 9, output.shape) / 8
                (output * torch.tensor(upstream[name], dtype=tensor.dtype)).sum().backward()
                expected[dtype].append(tensor.grad.double().numpy())

    def run(dtype):
        def run_all(windows, lowest, *rs):
            x = ud.ops.where(windows == LOWEST, lowest, windows)
            results, rs_left = [], iter(rs)
            for ours, _, compare_gradient in MAX_POOLS.values():
                results.append(ud.ops.cast(_compared_and_differentiated(ours(ud.ops.cast(x, dtype)))[0], "float64"))
                if compare_gradient:
                    def objective(x, ours=ours, r=next(rs_left)):
                        output = _compared_and_differentiated(ours(ud.ops.cast(x, dtype)))[1]
                        return probed_sum(ud.ops.cast(output, "float64"), r)

                    results.append(ud.value_and_grad(objective)(x)[1])
            return tuple(results)
        return run_all

    names = [f"{name}: {what}" for name, case in MAX_POOLS.items() for what in ("values", "gradient")[:1 + case[2]]]
    with ud.use_dtype("float64"):
        inputs = [ud.tensor(MINUS_INF_WINDOWS)] + [ud.tensor(r) for r in upstream.values()]
        runs = [("eager", "float16", run("float16")), ("eager", "float64", run("float64")),
                ("ud.function", "float32", ud.function(run("float32")))]
        for mode, dtype, function in runs:
            lowest = ud.tensor(np.float64(np.finfo(dtype).min))
            for name, got, want in zip(names, function(inputs[0], lowest, *inputs[1:]), expected[dtype], strict=True):
                np.testing.assert_array_equal(ud.to_numpy(got), want, err_msg=f"{backend} {mode} {dtype} {name}")


# ---- max pooling of windows holding NaN ------------------------------------------------------------------------
NAN_WINDOWS = np.array([  # 2x2 windows: one NaN, two (the last wins), NaN with inf, NaN with -inf, none
    [[1.0, np.nan, 2.0, 3.0, np.nan, np.inf],
     [0.5, -1.0, np.nan, np.nan, 4.0, -np.inf],
     [np.nan, 4.0, 5.0, -2.0, -np.inf, np.nan],
     [1.0, 2.0, 3.0, 0.0, 2.0, 1.0]],
    [[0.25, -1.0, 3.0, 3.0, -0.5, 1.0],  # a channel without NaN: TensorFlow's kernel beside the NaN windows
     [1.0, 0.75, -2.0, 1.25, 2.0, 1.5],
     [-1.5, 0.5, 2.5, -0.25, -0.5, 4.0],
     [3.5, -3.0, 1.75, 2.25, 2.5, -1.5]]])[None]
# the backend's pooling with and without padding (ceil mode and equal adaptive bins call it too) and the adaptive
# bins' own maximum (unequal bins)
NAN_POOLS = {name: MAX_POOLS[name][:2] for name in ("max_pool2d", "max_pool2d-padding", "adaptive_max_pool2d")}


def test_max_pooling_of_windows_holding_nan_matches_torch(backend):
    """A window (or adaptive bin) that holds NaN pools to NaN and sends its gradient to its last NaN in row-major
    order, as PyTorch's kernels do, where TensorFlow's (Keras-on-TensorFlow's) skipped the NaN and JAX's gave the
    gradient elsewhere; ``return_indices=True`` names that NaN. Plain, padded and adaptive max pooling, values,
    input gradients of sum(output * r) and indices bit for bit, float32 eagerly and inside ``ud.function``."""
    expected = []
    upstream = [np.random.default_rng(len(name)).integers(-8, 9, theirs(torch.tensor(NAN_WINDOWS)).shape) / 8
                for name, (_, theirs) in NAN_POOLS.items()]
    for (_, theirs), r in zip(NAN_POOLS.values(), upstream):
        tensor = torch.tensor(NAN_WINDOWS, dtype=torch.float32, requires_grad=True)
        output = theirs(tensor)
        (output * torch.tensor(r, dtype=tensor.dtype)).sum().backward()
        expected += [output.detach().numpy(), tensor.grad.numpy()]
    expected += [F.max_pool2d(torch.tensor(NAN_WINDOWS), 2, return_indices=True)[1].numpy(),
                 F.max_pool2d(torch.tensor(NAN_WINDOWS), 3, 2, 1, return_indices=True)[1].numpy()]

    def run_all(x, *rs):
        results = []
        for (ours, _), r in zip(NAN_POOLS.values(), rs):
            results += [ours(x), ud.grad(lambda x, ours=ours, r=r: probed_sum(ours(x), r))(x)]
        return tuple(results) + (ud.ops.max_pool2d(x, 2, return_indices=True)[1],
                                 ud.ops.max_pool2d(x, 3, 2, 1, return_indices=True)[1])

    names = [f"{name}: {what}" for name in NAN_POOLS for what in ("values", "gradient")]
    names += ["indices", "indices-padding"]
    inputs = [ud.tensor(array.astype(np.float32)) for array in (NAN_WINDOWS, *upstream)]
    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        for name, got, want in zip(names, function(*inputs), expected, strict=True):
            np.testing.assert_array_equal(ud.to_numpy(got), want, err_msg=f"{backend} {mode} {name}")


@pytest.mark.parametrize("windows", ["nan", "minus-inf"])
def test_max_pooling_holding_nan_differentiated_around_a_compiled_function_matches_torch(backend, windows):
    """The gradient taken around a compiled function (``ud.grad`` of a ``ud.function``, plain and with
    ``jit_compile=True``: XLA, ``torch.compile``) whose padded max pooling holds NaN windows, or windows of -inf (alone,
    padded, and beside the lowest float32): torch's, bit for bit. On TensorFlow that is the gradient of the whole
    graph (the pool's registered gradient, which reads the padding from the graph), which under XLA failed while
    the NaN cond was on the gradient's path (XLA cannot output a cond's intermediates)."""
    ours, theirs = NAN_POOLS["max_pool2d-padding"]
    x = NAN_WINDOWS if windows == "nan" else np.where(MINUS_INF_WINDOWS == LOWEST, np.finfo("float32").min,
                                                      MINUS_INF_WINDOWS)
    r = np.random.default_rng(0).integers(-8, 9, theirs(torch.tensor(x)).shape) / 8
    tensor = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    (theirs(tensor) * torch.tensor(r, dtype=tensor.dtype)).sum().backward()
    inputs = [ud.tensor(array.astype(np.float32)) for array in (x, r)]
    # with jit_compile on torch (torch.compile) too: Inductor's own lowering of max pooling gave another gradient
    # (the window's first NaN) and failed on windows of -inf ("index out of bounds"); unidl calls torch's kernel
    for jit_compile in (False, True):
        got = ud.grad(ud.function(lambda x, r: ud.ops.sum(ours(x) * r), jit_compile=jit_compile))(*inputs)
        np.testing.assert_array_equal(ud.to_numpy(got), tensor.grad.numpy(), err_msg=f"{backend} jit {jit_compile}")


def test_integer_max_pooling_matches_torch(backend):
    """Max pooling of int64 input (plain, padded, ceil mode, ``return_indices=True``) gives torch's int64 values
    and indices, eagerly and inside ``ud.function`` (TensorFlow and Keras-on-TensorFlow padded integers with -inf,
    an error, and a graph's pooling compared them with -inf); ``adaptive_max_pool2d`` of integers, which torch
    refuses, is a ``DtypeMismatchError`` on every backend, in both modes."""
    x = np.random.default_rng(3).integers(-50, 50, (1, 2, 5, 5))
    expected = [F.max_pool2d(torch.tensor(x), 2), F.max_pool2d(torch.tensor(x), 3, 2, 1),
                F.max_pool2d(torch.tensor(x), 2, 2, 1, ceil_mode=True),
                *F.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)]
    with pytest.raises(NotImplementedError):
        F.adaptive_max_pool2d(torch.tensor(x), 3)

    def run_all(x):
        return (ud.ops.max_pool2d(x, 2), ud.ops.max_pool2d(x, 3, 2, 1), ud.ops.max_pool2d(x, 2, 2, 1, ceil_mode=True),
                *ud.ops.max_pool2d(x, 3, 2, 1, return_indices=True))

    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        for got, want in zip(function(ud.tensor(x)), expected, strict=True):
            assert ud.to_numpy(got).dtype == np.int64, f"{backend} {mode}"
            np.testing.assert_array_equal(ud.to_numpy(got), want.numpy(), err_msg=f"{backend} {mode}")
        adaptive = lambda x: ud.ops.adaptive_max_pool2d(x, 3)  # noqa: E731
        with pytest.raises(ud.errors.DtypeMismatchError, match="adaptive_max_pool2d needs floating-point input"):
            (ud.function(adaptive) if mode == "ud.function" else adaptive)(ud.tensor(x))


def test_float16_max_pooling_past_its_range_keeps_the_fast_gradient():
    """Whether a max pooling needs PyTorch's gradient rule (a NaN or -inf window) is decided by a sum, taken in
    float32 at least: a float16 pool of values summing past 65504 (TensorFlow's sum over the input was NaN where
    large values of both signs met) keeps the backend's own gradient, and a NaN or an all -inf window still takes
    PyTorch's rule. Checks the deciding predicate of the TensorFlow kernel; JAX's kernel has one rule, PyTorch's,
    whose float16 gradients of these pools are torch's (its sum over the output was inf, deciding as TensorFlow's)."""
    x = np.tile(np.array([[60000.0, -60000.0], [-60000.0, 60000.0]], np.float16), (8, 8))[None, None]
    flagged = x.copy()
    flagged[0, 0, 0, 0] = np.nan
    minus_inf = x.copy()
    minus_inf[0, 0, :2, :2] = -np.inf
    cases = [(x, False), (flagged, True), (minus_inf, True)]
    checked = 0
    if importlib.util.find_spec("jax") is not None:
        r = (np.random.default_rng(0).integers(-8, 9, (1, 1, 8, 8)) / 8).astype(np.float32)
        with ud.use_backend("jax"):
            gradient = ud.grad(lambda x: ud.ops.sum(ud.ops.cast(ud.ops.max_pool2d(x, 2), "float32") * r))
            for array, needs in cases:
                tensor = torch.tensor(array, requires_grad=True)
                (F.max_pool2d(tensor, 2).float() * torch.tensor(r, dtype=torch.float32)).sum().backward()
                got = ud.to_numpy(gradient(ud.tensor(array)))
                np.testing.assert_array_equal(got, tensor.grad.numpy(), err_msg=f"jax needs={needs}")
        checked += 1
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        from unidl.backends.tensorflow import ops as tf_ops
        for array, needs in cases:
            xh = tf.constant(array.transpose(0, 2, 3, 1))
            y = tf.nn.max_pool2d(xh, 2, 2, "VALID")
            assert bool(tf_ops._needs_torch_rule(xh, y)) is needs, f"tensorflow needs={needs}"
        checked += 1
    if not checked:
        pytest.skip("neither JAX nor TensorFlow is installed")


def test_a_shape_check_traces_none_of_pytorchs_value_rules(monkeypatch):
    """tensorflow's ``check_shapes`` (a trace of the forward and loss at a new input's shapes, before a step's
    graph, which never runs) builds none of the conds of PyTorch's value rules, max pooling's NaN and -inf
    windows and softmax's NaN rows: they cost a fifth of the CNN's first step there. The step's own graph holds
    them, and its shape errors are unchanged."""
    import tensorflow as tf

    conds, cond = [], tf.cond
    monkeypatch.setattr(tf, "cond", lambda *args, **kwargs: (conds.append(1), cond(*args, **kwargs))[1])
    with ud.use_backend("tensorflow"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Conv2d(1, 2, 3), ud.nn.MaxPool2d(2), ud.nn.Flatten(), ud.nn.Linear(8, 3),
                                 ud.nn.Softmax(dim=1))
        x, y = np.ones((4, 1, 6, 6), np.float32), np.ones((4, 3), np.float32)
        backend = ud.backends.load("tensorflow")
        backend.check_shapes(model, ud.nn.MSELoss(), x, y)
        assert conds == []
        with pytest.raises(ud.ShapeMismatchError, match=r"expected input of shape \(N, 8\), received \(4, 18\)"):
            backend.check_shapes(model, ud.nn.MSELoss(), np.ones((4, 1, 8, 8), np.float32), y)
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
        step(x, y)
        assert len(conds) >= 2  # the pool's forward and gradient, and softmax's
        # a compiled function the forward calls, traced first inside a shape check, keeps its value rules
        pool = ud.function(lambda t: ud.ops.max_pool2d(t, 2))
        pooled = ud.nn.Sequential(ud.nn.Flatten(), ud.nn.Linear(4, 3))
        pooled.forward = lambda t: ud.nn.Sequential.forward(pooled, pool(t))
        ud.train_step(pooled, ud.nn.MSELoss(), ud.optim.SGD(pooled.parameters(), lr=0.1))(np.ones((4, 1, 4, 4),
                                                                                             np.float32), y)
        windows = np.zeros((1, 1, 4, 4), np.float32)
        windows[0, 0, 0, 0], windows[0, 0, 2:, 2:] = np.nan, -np.inf
        assert np.array_equal(ud.to_numpy(pool(ud.tensor(windows)))[0, 0], [[np.nan, 0], [0, -np.inf]], equal_nan=True)
