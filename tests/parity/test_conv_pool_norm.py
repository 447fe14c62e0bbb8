"""Conv1d, Conv2d's dilation/groups/padding modes, ConvTranspose2d, pooling's ceil_mode/count_include_pad,
AdaptiveAvgPool2d, AdaptiveMaxPool2d, GroupNorm and Upsample/interpolate against plain ``torch.nn`` and
``torch.nn.functional``: output and input/weight gradients, float32 (2e-6 / 1e-5) inside ``ud.function`` (every
size unknown to TensorFlow's graph) and, for the layers of ``FLOAT64_CASES``, float64 (1e-12) eagerly, on every
backend (see ``torch_oracle``)."""

import numpy as np
import pytest
import torch.nn.functional as F
from torch import nn as tnn

import unidl as ud
from tests.parity.torch_oracle import RUNS, Case, compare_table

R = np.random.default_rng(15)
IMAGES = R.standard_normal((2, 4, 5, 6))
SEQUENCE = R.standard_normal((2, 4, 7))
KERNELS = R.standard_normal((6, 2, 3, 3))          # (out, in / groups, kh, kw) for groups=2


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
    "ConvTranspose2d-groups-dilation": layer(
        lambda: ud.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(3, 0), output_padding=(1, 2), groups=2,
                                      bias=False, dilation=(2, 1)),
        lambda: tnn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(3, 0), output_padding=(1, 2), groups=2,
                                    bias=False, dilation=(2, 1))),
    "MaxPool2d-ceil": layer(lambda: ud.nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda: tnn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    "AvgPool2d-ceil": layer(lambda: ud.nn.AvgPool2d(3, 2, 1, ceil_mode=True), lambda: tnn.AvgPool2d(3, 2, 1, ceil_mode=True)),
    "AvgPool2d-ceil-exclude-pad": layer(lambda: ud.nn.AvgPool2d(2, 2, 1, ceil_mode=True, count_include_pad=False),
                                        lambda: tnn.AvgPool2d(2, 2, 1, ceil_mode=True, count_include_pad=False)),
    "AdaptiveAvgPool2d": layer(lambda: ud.nn.AdaptiveAvgPool2d((3, 4)), lambda: tnn.AdaptiveAvgPool2d((3, 4))),
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
    "interpolate-nearest-exact-size": op(lambda x: ud.ops.interpolate(x, size=(7, 4), mode="nearest-exact"),
                                         lambda x: F.interpolate(x, size=(7, 4), mode="nearest-exact")),
    "interpolate-area": op(lambda x: ud.ops.interpolate(x, size=(3, 4), mode="area"),
                           lambda x: F.interpolate(x, size=(3, 4), mode="area")),
    "interpolate-bilinear-recompute": op(
        lambda x: ud.ops.interpolate(x, scale_factor=0.7, mode="bilinear", recompute_scale_factor=True),
        lambda x: F.interpolate(x, scale_factor=0.7, mode="bilinear", recompute_scale_factor=True)),
}


# float64 eagerly on the cases whose arithmetic depends on the dtype (normalisation, resampling weights, divisors,
# the transposed and grouped kernels): eager JAX dispatches every op on its own, and the suite's time is tight
FLOAT64_CASES = ("Conv2d-depthwise-same-dilation", "ConvTranspose2d-groups-dilation",
                 "AvgPool2d-ceil-exclude-pad", "AdaptiveAvgPool2d", "GroupNorm", "Upsample-bilinear-align-corners",
                 "Upsample-linear")


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_conv_pool_norm_layers_match_torch(backend, dtype, modes):
    cases = LAYERS if dtype == "float32" else {name: LAYERS[name] for name in FLOAT64_CASES}
    failures = compare_table(cases, backend, dtype, modes)
    assert not failures, "\n".join(failures)


def test_conv_pool_norm_ops_match_torch(backend):
    failures = compare_table(OPS, backend, "float32", ("ud.function",))
    assert not failures, "\n".join(failures)
