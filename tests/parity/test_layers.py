"""Every layer and functional op agrees across backends: outputs to 2e-6, input/weight gradients to 1e-5,
and against a NumPy reference where one is simple to write."""

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference
from tests.parity.layer_runner import run

BACKENDS = ud.available_backends()
R = np.random.default_rng(5)
IMAGES = R.standard_normal((4, 3, 9, 9)).astype(np.float32)
ROWS = R.standard_normal((6, 7)).astype(np.float32)
LABELS = R.integers(0, 7, 6)
TARGETS = R.standard_normal((6, 7)).astype(np.float32)
BINARY = (R.random((6, 7)) > 0.5).astype(np.float32)


def _np_conv(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return out + b.reshape(1, -1, 1, 1)


def _np_pool(x, k, reduce):
    n, c, h, w = x.shape
    x = x[:, :, :h // k * k, :w // k * k].reshape(n, c, h // k, k, w // k, k)
    return reduce(x, axis=(3, 5))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# name -> (builder, inputs, numpy reference of the output given the state dict, or None)
LAYERS = {
    "Linear": (lambda: ud.nn.Linear(7, 5), [ROWS], lambda s, x: x @ s["weight"].T + s["bias"]),
    "Linear-nobias": (lambda: ud.nn.Linear(7, 5, bias=False), [ROWS], lambda s, x: x @ s["weight"].T),
    "Linear-one-sample": (lambda: ud.nn.Linear(7, 5), [ROWS[0]], lambda s, x: x @ s["weight"].T + s["bias"]),
    "Conv2d": (lambda: ud.nn.Conv2d(3, 4, 3), [IMAGES], lambda s, x: _np_conv(x, s["weight"], s["bias"], 1, 0)),
    "Conv2d-stride2-pad1": (lambda: ud.nn.Conv2d(3, 4, 3, stride=2, padding=1), [IMAGES],
                            lambda s, x: _np_conv(x, s["weight"], s["bias"], 2, 1)),
    "Conv2d-same": (lambda: ud.nn.Conv2d(3, 2, 5, padding="same"), [IMAGES],
                    lambda s, x: _np_conv(x, s["weight"], s["bias"], 1, 2)),
    "Conv2d-same-even": (lambda: ud.nn.Conv2d(3, 2, 4, padding="same"), [IMAGES], None),
    "Conv2d-valid-rect": (lambda: ud.nn.Conv2d(3, 2, (3, 2), stride=(1, 2), padding="valid"), [IMAGES], None),
    "MaxPool2d": (lambda: ud.nn.MaxPool2d(2), [IMAGES], lambda s, x: _np_pool(x, 2, np.max)),
    "MaxPool2d-3-2-1": (lambda: ud.nn.MaxPool2d(3, stride=2, padding=1), [IMAGES], None),
    "AvgPool2d": (lambda: ud.nn.AvgPool2d(2), [IMAGES], lambda s, x: _np_pool(x, 2, np.mean)),
    "AvgPool2d-3-2-1": (lambda: ud.nn.AvgPool2d(3, stride=2, padding=1), [IMAGES], None),
    "Flatten": (lambda: ud.nn.Flatten(), [IMAGES], lambda s, x: x.reshape(len(x), -1)),
    "ReLU": (lambda: ud.nn.ReLU(), [ROWS], lambda s, x: np.maximum(x, 0)),
    "LeakyReLU": (lambda: ud.nn.LeakyReLU(0.2), [ROWS], lambda s, x: np.where(x > 0, x, 0.2 * x)),
    "Sigmoid": (lambda: ud.nn.Sigmoid(), [ROWS], lambda s, x: 1 / (1 + np.exp(-x))),
    "Tanh": (lambda: ud.nn.Tanh(), [ROWS], lambda s, x: np.tanh(x)),
    "Softmax": (lambda: ud.nn.Softmax(), [ROWS], lambda s, x: _softmax(x)),
    "BatchNorm1d": (lambda: ud.nn.BatchNorm1d(7), [ROWS], lambda s, x: (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)),
    "BatchNorm2d": (lambda: ud.nn.BatchNorm2d(3), [IMAGES],
                    lambda s, x: (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(x.var((0, 2, 3), keepdims=True) + 1e-5)),
    "Dropout-eval": (lambda: ud.nn.Dropout(0.5), [ROWS], lambda s, x: x),
    "Sequential": (lambda: ud.nn.Sequential(ud.nn.Conv2d(3, 2, 3), ud.nn.ReLU(), ud.nn.MaxPool2d(2), ud.nn.Flatten(),
                                            ud.nn.Linear(18, 3)), [IMAGES], None),
    "MSELoss": (lambda: ud.nn.MSELoss(), [ROWS, TARGETS], lambda s, x, t: np.mean((x - t) ** 2)),
    "MSELoss-sum": (lambda: ud.nn.MSELoss("sum"), [ROWS, TARGETS], lambda s, x, t: np.sum((x - t) ** 2)),
    "L1Loss": (lambda: ud.nn.L1Loss(), [ROWS, TARGETS], lambda s, x, t: np.mean(np.abs(x - t))),
    "CrossEntropyLoss": (lambda: ud.nn.CrossEntropyLoss(), [ROWS, LABELS],
                         lambda s, x, y: -np.mean(np.log(_softmax(x)[np.arange(len(y)), y]))),
    "CrossEntropyLoss-sum": (lambda: ud.nn.CrossEntropyLoss("sum"), [ROWS, LABELS],
                             lambda s, x, y: -np.sum(np.log(_softmax(x)[np.arange(len(y)), y]))),
    "BCEWithLogitsLoss": (lambda: ud.nn.BCEWithLogitsLoss(), [ROWS, BINARY],
                          lambda s, x, t: np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))),
}

OPS = {
    "matmul": (lambda: ud.ops.matmul, [ROWS, TARGETS.T.copy()], lambda x, y: x @ y),
    # a 1-d operand, after or before (TensorFlow's matmul refused them), and two (a dot product)
    "matmul-vector": (lambda: ud.ops.matmul, [ROWS, TARGETS[0].copy()], lambda x, v: x @ v),
    "matmul-vector-first": (lambda: ud.ops.matmul, [ROWS[:, 0].copy(), TARGETS], lambda v, x: v @ x),
    "matmul-dot": (lambda: ud.ops.matmul, [ROWS[0].copy(), TARGETS[1].copy()], lambda v, w: v @ w),
    "linear": (lambda: ud.ops.linear, [ROWS, TARGETS[:3], ROWS[0, :3].copy()], lambda x, w, b: x @ w.T + b),
    "relu": (lambda: ud.ops.relu, [ROWS], lambda x: np.maximum(x, 0)),
    "leaky_relu": (lambda: lambda x: ud.ops.leaky_relu(x, 0.1), [ROWS], lambda x: np.where(x > 0, x, 0.1 * x)),
    "sigmoid": (lambda: ud.ops.sigmoid, [ROWS], lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (lambda: ud.ops.tanh, [ROWS], np.tanh),
    "softmax": (lambda: ud.ops.softmax, [ROWS], _softmax),
    "log_softmax": (lambda: ud.ops.log_softmax, [ROWS], lambda x: np.log(_softmax(x))),
    "conv2d": (lambda: lambda x, w: ud.ops.conv2d(x, w, None, 1, 1), [IMAGES, IMAGES[:2, :, :3, :3].copy()],
               lambda x, w: _np_conv(x, w, np.zeros(2), 1, 1)),
    "max_pool2d": (lambda: lambda x: ud.ops.max_pool2d(x, 3), [IMAGES], lambda x: _np_pool(x, 3, np.max)),
    "avg_pool2d": (lambda: lambda x: ud.ops.avg_pool2d(x, 3), [IMAGES], lambda x: _np_pool(x, 3, np.mean)),
    "reshape": (lambda: lambda x: ud.ops.reshape(x, (-1, 27)), [IMAGES], lambda x: x.reshape(-1, 27)),
    "flatten": (lambda: ud.ops.flatten, [IMAGES], lambda x: x.reshape(4, -1)),
    "concat": (lambda: lambda a, b: ud.ops.concat([a, b], 1), [ROWS, TARGETS], lambda a, b: np.concatenate([a, b], 1)),
    "mean": (lambda: lambda x: ud.ops.mean(x, 1), [ROWS], lambda x: x.mean(1)),
    "sum": (lambda: lambda x: ud.ops.sum(x, 0, True), [ROWS], lambda x: x.sum(0, keepdims=True)),
    "clip": (lambda: lambda x: ud.ops.clip(x, -0.5, 0.5), [ROWS], lambda x: np.clip(x, -0.5, 0.5)),
    "operators": (lambda: lambda a, b: (a * b + a - b / 3) @ ud.ops.reshape(b, (7, 6)), [ROWS, TARGETS],
                  lambda a, b: (a * b + a - b / 3) @ b.reshape(7, 6)),
}


def _compare(results, expected=None):
    ref_out, ref_grads, _ = results["torch"]
    for name, (out, grads, _) in results.items():
        assert out.shape == ref_out.shape, name
        assert max_relative_difference(out, ref_out) < 2e-6, f"{name} output"
        assert set(grads) == set(ref_grads)
        for key in grads:
            assert max_relative_difference(grads[key], ref_grads[key]) < 1e-5, f"{name} gradient {key}"
    if expected is not None:
        assert max_relative_difference(ref_out, expected) < 2e-6, "torch vs NumPy reference"


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_parity(name):
    build, inputs, reference = LAYERS[name]
    results = {b: run(b, build, inputs, train=not name.endswith("-eval")) for b in BACKENDS}
    _compare(results, reference(results["torch"][2], *inputs) if reference else None)


@pytest.mark.parametrize("name", list(OPS))
def test_op_parity(name):
    build, inputs, reference = OPS[name]
    results = {b: run(b, build, inputs) for b in BACKENDS}
    _compare(results, reference(*inputs))
