"""Bicubic interpolation (``Upsample``/``interpolate``, align_corners True and False, size and scale_factor), max
pooling's ``return_indices`` and ``MaxUnpool2d``/``max_unpool2d`` against plain ``torch.nn``/``torch.nn.functional``
(output, and input gradients through ``torch_oracle``: float32 inside ``ud.function`` with every size unknown to
TensorFlow's graph, float64 eagerly for the bicubic weights), and their bad input as one unidl error on every
backend."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

import unidl as ud
from tests.parity.torch_oracle import RUNS, Case, compare_table

R = np.random.default_rng(16)
IMAGES = R.standard_normal((2, 3, 5, 6))
TIES = np.round(R.standard_normal((1, 2, 6, 5)))  # ties in a window: the first one's index, as torch
TIES[0, 0, :2, :3] = [[-0.0, 0.0, -1.0], [-2.0, 0.0, -1.0]]  # -0.0 and +0.0 are equal maxima (torch: the first)
NONFINITE = IMAGES.copy()
NONFINITE[0, 1, 2, 3], NONFINITE[1, 0, 4, 0] = np.nan, np.inf
POOLED = R.standard_normal((2, 3, 2, 3))
POOLED_AT = F.max_pool2d(torch.tensor(IMAGES), 2, return_indices=True)[1].numpy()  # (2, 3, 2, 3) int64


def case(build, oracle, *inputs):
    return Case(lambda: build, lambda: oracle, list(inputs) or [IMAGES])


def _unpooled(pool, unpool, size):
    return lambda x: unpool(*pool(x), output_size=size)


CASES = {
    "Upsample-bicubic-scale": Case(lambda: ud.nn.Upsample(scale_factor=2, mode="bicubic"),
                                   lambda: tnn.Upsample(scale_factor=2, mode="bicubic"), [IMAGES]),
    "Upsample-bicubic-align-corners-size": Case(lambda: ud.nn.Upsample((8, 3), mode="bicubic", align_corners=True),
                                                lambda: tnn.Upsample((8, 3), mode="bicubic", align_corners=True),
                                                [IMAGES]),
    "interpolate-bicubic-size": case(lambda x: ud.ops.interpolate(x, size=(7, 4), mode="bicubic"),
                                     lambda x: F.interpolate(x, size=(7, 4), mode="bicubic")),
    "interpolate-bicubic-align-corners-scale": case(
        lambda x: ud.ops.interpolate(x, scale_factor=(0.6, 1.7), mode="bicubic", align_corners=True),
        lambda x: F.interpolate(x, scale_factor=(0.6, 1.7), mode="bicubic", align_corners=True)),
    # a NaN and an infinity reach the outputs whose 4x4 taps read them, as in PyTorch (and not the others)
    "Upsample-bicubic-nan-inf": Case(lambda: ud.nn.Upsample(scale_factor=1.5, mode="bicubic"),
                                     lambda: tnn.Upsample(scale_factor=1.5, mode="bicubic"), [NONFINITE]),
    "max_pool2d-indices": case(lambda x: ud.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)[1],
                               lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)[1]),
    "MaxPool2d-indices-ties": case(lambda x: ud.nn.MaxPool2d((2, 3), 1, return_indices=True)(x)[1],
                                   lambda x: tnn.MaxPool2d((2, 3), 1, return_indices=True)(x)[1], TIES),
    # the pooled values and their gradient, through unpooling: overlapping windows share maxima, which unpooling
    # writes once and gives every window's gradient
    "MaxPool2d-ceil-then-MaxUnpool2d-overlapping": Case(
        lambda: _unpooled(ud.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True), ud.nn.MaxUnpool2d(3, 2, 1),
                          (5, 6)),
        lambda: _unpooled(tnn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True), tnn.MaxUnpool2d(3, 2, 1),
                          (5, 6)), [IMAGES]),
    "max_unpool2d-default-size": case(lambda v, i: ud.ops.max_unpool2d(v, i, 2),
                                      lambda v, i: F.max_unpool2d(v, i, 2), POOLED, POOLED_AT),
    # MaxUnpool2d's own example: the input's sizes through ud.ops.shape (tensors where a graph leaves them unknown)
    "MaxPool2d-then-MaxUnpool2d-to-the-input-shape": case(
        lambda x: ud.nn.MaxUnpool2d(2)(*ud.nn.MaxPool2d(2, return_indices=True)(x), output_size=ud.ops.shape(x)),
        lambda x: tnn.MaxUnpool2d(2)(*tnn.MaxPool2d(2, return_indices=True)(x), output_size=x.shape), IMAGES[..., :5]),
    "MaxUnpool2d-output-size": Case(lambda: lambda v, i: ud.nn.MaxUnpool2d(2)(v, i, output_size=(2, 3, 5, 7)),
                                    lambda: lambda v, i: tnn.MaxUnpool2d(2)(v, i, output_size=(2, 3, 5, 7)),
                                    [POOLED, POOLED_AT]),
}


# float64 (eagerly) where the arithmetic depends on the dtype: the cubic weights; pooling and unpooling select and
# copy values (eager JAX dispatches every op on its own, and the suite's time is tight)
FLOAT64_CASES = ("Upsample-bicubic-scale", "Upsample-bicubic-align-corners-size", "interpolate-bicubic-size")


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_bicubic_and_unpooling_match_torch(backend, dtype, modes):
    cases = CASES if dtype == "float32" else {name: CASES[name] for name in FLOAT64_CASES}
    failures = compare_table(cases, backend, dtype, modes)
    assert not failures, "\n".join(failures)


def _in_modes(function, *arrays):
    """``function`` on ``arrays`` eagerly, then inside ``ud.function`` (where a graph learns sizes only as it runs)."""
    for run in (function, ud.function(function)):
        yield lambda run=run: ud.to_numpy(run(*[ud.tensor(a) for a in arrays]))


def test_bad_input_is_the_same_unidl_error_everywhere(backend):
    sequence = np.zeros((1, 2, 5))
    for run in _in_modes(lambda x: ud.ops.interpolate(x, scale_factor=2, mode="bicubic"), sequence):
        with pytest.raises(ValueError, match="interpolate mode 'bicubic' is not available for 3-D input"):
            run()
    with pytest.raises(ValueError, match="interpolate mode 'bicubic' is not available for 3-D input"):
        ud.nn.Upsample(scale_factor=2, mode="bicubic")(ud.tensor(sequence))
    with pytest.raises(ValueError, match="align_corners applies to the 'linear', 'bilinear' and 'bicubic'"):
        ud.nn.Upsample(scale_factor=2, mode="nearest", align_corners=True)
    inconsistent = (r"max_unpool2d: output_size \(5, 9\) is inconsistent with the input: its width must lie strictly "
                    r"between 4 and 8 \(input shape \(2, 3, 2, 3\)\)")
    for run in _in_modes(lambda v, i: ud.nn.MaxUnpool2d(2)(v, i, output_size=(5, 9)), POOLED, POOLED_AT):
        with pytest.raises(ud.ShapeMismatchError, match=inconsistent):
            run()
    for run in _in_modes(lambda v, i: ud.ops.max_unpool2d(v, i, 2), POOLED, POOLED_AT + 30):
        with pytest.raises(ud.errors.IndexOutOfRangeError, match=r"max_unpool2d index must lie in \[0, 24\)"):
            run()
    with pytest.raises(ValueError, match=r"output_size must be 2 ints \(H, W\) or 4"):
        ud.ops.max_unpool2d(ud.tensor(POOLED), ud.tensor(POOLED_AT), 2, output_size=(5,))
    mismatched = (r"max_unpool2d needs input and indices of the same shape; input has shape \(2, 3, 2, 3\), indices "
                  r"has shape \(2, 3, 1, 3\)")  # (the framework's own scatter error on every backend)
    for run in _in_modes(lambda v, i: ud.ops.max_unpool2d(v, i, 2), POOLED, POOLED_AT[:, :, :1]):
        with pytest.raises(ud.ShapeMismatchError, match=mismatched):
            run()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resampling_picks_torchs_positions_in_graphs_and_copies_an_axis_torch_copies(backend, dtype):
    """Adaptive pooling's bins and the nearest modes' picks inside graphs of unknown sizes are PyTorch's, as
    eagerly (TensorFlow's graphs computed them in floats: 5 * 7 / 7 floored to 4, a float32 5 / 25 one unit low
    under XLA), and a scale factor that leaves an axis' size unchanged copies it where PyTorch's kernel does (2-d
    'nearest' and 'bilinear', 1-d 'linear') and resamples it where PyTorch's does."""
    with ud.use_dtype(dtype):
        cases = [
            (np.arange(42.0).reshape(1, 1, 6, 7), lambda v: ud.ops.adaptive_max_pool2d(v, (3, 7)),
             lambda t: F.adaptive_max_pool2d(t, (3, 7))),
            (np.arange(42.0).reshape(1, 1, 6, 7), lambda v: ud.ops.interpolate(v, size=(3, 7), mode="area"),
             lambda t: F.interpolate(t, size=(3, 7), mode="area")),
            (np.arange(98.0).reshape(1, 1, 7, 14), lambda v: ud.ops.adaptive_avg_pool2d(v, (7, 7)),
             lambda t: F.adaptive_avg_pool2d(t, (7, 7))),
            (np.arange(7.0).reshape(1, 1, 1, 7), lambda v: ud.ops.interpolate(v, size=(1, 7)),
             lambda t: F.interpolate(t, size=(1, 7))),
            (np.arange(5.0).reshape(1, 1, 1, 5), lambda v: ud.ops.interpolate(v, size=(1, 25)),
             lambda t: F.interpolate(t, size=(1, 25))),
            (np.arange(18.0).reshape(1, 1, 1, 18), lambda v: ud.ops.interpolate(v, size=(1, 3), mode="nearest-exact"),
             lambda t: F.interpolate(t, size=(1, 3), mode="nearest-exact"))]
        cases += [(np.arange(12.0).reshape(1, 1, 3, 4),
                   lambda v, m=mode: ud.ops.interpolate(v, scale_factor=(2.0, 1.2), mode=m),
                   lambda t, m=mode: F.interpolate(t, scale_factor=(2.0, 1.2), mode=m))
                  for mode in ("nearest", "nearest-exact", "bilinear", "bicubic")]
        cases += [(np.arange(6.0).reshape(1, 1, 2, 3), lambda v, m=mode: ud.ops.interpolate(
                       v, size=(2, 1), mode=m, align_corners=True),
                   lambda t, m=mode: F.interpolate(t, size=(2, 1), mode=m, align_corners=True))
                  for mode in ("bilinear", "bicubic")]  # (an output of 1: NaN in graphs of unknown sizes)
        cases += [(np.arange(4.0).reshape(1, 1, 4), lambda v, m=mode: ud.ops.interpolate(v, scale_factor=1.2, mode=m),
                   lambda t, m=mode: F.interpolate(t, scale_factor=1.2, mode=m)) for mode in ("nearest", "linear")]
        for index, (x, ours, theirs) in enumerate(cases):
            expected = theirs(torch.tensor(x, dtype=getattr(torch, dtype))).numpy()
            for run in (ours, ud.function(ours)):
                np.testing.assert_allclose(ud.to_numpy(run(ud.tensor(x))), expected, rtol=1e-6, atol=1e-6,
                                           err_msg=f"case {index}")
        # one function called with two heights: TensorFlow traces it again for any size, where an axis aligned to
        # one output divided 0 by 0 (NaN)
        for mode in ("bilinear", "bicubic"):
            compiled = ud.function(lambda v, m=mode: ud.ops.interpolate(v, scale_factor=(1.0, 0.5), mode=m,
                                                                        align_corners=True))
            for height in (1, 2, 3):
                x = np.arange(2 * height * 3.0).reshape(1, 2, height, 3)
                expected = F.interpolate(torch.tensor(x, dtype=getattr(torch, dtype)), scale_factor=(1.0, 0.5),
                                         mode=mode, align_corners=True).numpy()
                np.testing.assert_allclose(ud.to_numpy(compiled(ud.tensor(x))), expected, rtol=1e-6, atol=1e-6)


def test_half_precision_resampling_in_a_graph_computes_positions_in_float32(backend):
    """Inside ``ud.function`` (TensorFlow's graph leaves the sizes unknown) float16 and bfloat16 resampling computes
    positions and weights in float32 and output sizes in double, as PyTorch's kernels: whole numbers above 256
    (bfloat16) do not exist in the input's dtype (bilinear was off by 124%), and 30 * 2.1 in float32 floors to 62
    where PyTorch's double gives 63."""
    x = R.standard_normal((1, 1, 2, 300)).astype(np.float32)
    for mode in ("bilinear", "bicubic"):
        expected = F.interpolate(torch.tensor(x).bfloat16(), scale_factor=2, mode=mode).float().numpy()
        resample = ud.function(lambda t, m=mode: ud.ops.interpolate(t, scale_factor=2, mode=m))
        got = np.asarray(ud.to_numpy(resample(ud.tensor(x, "bfloat16"))), np.float64)
        assert np.abs(got - expected).max() / np.abs(expected).max() < 2e-2, mode
    line = ud.function(lambda t: ud.ops.interpolate(t, scale_factor=2.1))(ud.tensor(np.ones((1, 1, 30), np.float32)))
    assert tuple(line.shape) == tuple(F.interpolate(torch.ones(1, 1, 30), scale_factor=2.1).shape) == (1, 1, 63)


def test_nearest_resampling_copies_infinite_values_alone(backend):
    """Nearest resampling copies inputs, as PyTorch's: an infinite or NaN input is copied where it is picked and
    nowhere else, eagerly and in a graph (a product with one-hot rows made NaN rows around it: 0 * inf)."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 2], x[0, 0, 3, 0] = np.inf, np.nan
    for mode in ("nearest", "nearest-exact"):
        expected = F.interpolate(torch.tensor(x), scale_factor=(2, 1.5), mode=mode).numpy()
        resample = lambda t, m=mode: ud.ops.interpolate(t, scale_factor=(2, 1.5), mode=m)
        for run in (resample, ud.function(resample)):
            np.testing.assert_array_equal(ud.to_numpy(run(ud.tensor(x))), expected)
