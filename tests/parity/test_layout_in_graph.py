"""Inside a compiled function the tensorflow backend keeps conv -> norm -> activation -> pool chains in
TensorFlow's NHWC (see unidl/backends/tensorflow/layout.py); results must not change, on any backend."""

import functools

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference

IMAGES = np.random.default_rng(3).standard_normal((4, 3, 12, 12)).astype(np.float32)


class TwoUses(ud.nn.Module):
    """A feature map read twice: once through a layout-aware op (ReLU), once by plain arithmetic."""

    def __init__(self):
        super().__init__()
        self.conv = ud.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        return self._ops.relu(h) + h * 0.5


def _chain():
    nn = ud.nn
    return nn.Sequential(
        TwoUses(), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.BatchNorm2d(4),
        nn.Conv2d(4, 5, 3, padding="same"), nn.Sigmoid(), nn.AvgPool2d(3, stride=2, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(5 * 3 * 3, 6),
    )


def _run(backend, compiled, jit_compile=False):
    """Output and parameter gradients of sum(chain(x) * r), eagerly or inside ud.function (with XLA)."""
    with ud.use_backend(backend):
        ud.manual_seed(0)
        model = _chain()
        r = ud.tensor(np.random.default_rng(9).standard_normal((4, 6)).astype(np.float32))

        def step(x):
            return ud.value_and_grad(lambda: ud.ops.sum(model(x) * r), model.parameters())()

        loss, grads = (ud.function(step, jit_compile=jit_compile) if compiled else step)(ud.tensor(IMAGES))
        names = [n for n, _ in model.named_parameters()]
        state = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
        return ud.to_numpy(loss), dict(zip(names, map(ud.to_numpy, grads))), state


@functools.lru_cache(maxsize=None)
def _torch_reference():
    """The torch backend's eager run, which every test below compares with: computed once per session."""
    return _run("torch", compiled=False)


@pytest.mark.parametrize("backend_name", ud.available_backends())
def test_compiled_chain_matches_eager_and_torch(backend_name):
    reference = _torch_reference()
    for compiled in (False, True):
        loss, grads, state = _run(backend_name, compiled)
        where = f"{backend_name} {'compiled' if compiled else 'eager'}"
        assert max_relative_difference(loss, reference[0]) < 2e-6, f"{where}: loss"
        for name, grad in grads.items():
            # 2e-5: the first conv's bias gradient is a float32 sum of 576 terms that cancel down to 0.036 at most,
            # whose summation order XLA and torch choose apart: 1.09e-5 (3.9e-7 absolute) on a Xeon with
            # AVX-512 FP16/AMX, where the other CPUs gave under 1e-5
            assert max_relative_difference(grad, reference[1][name]) < 2e-5, f"{where}: gradient of {name}"
        for name in ("0.conv.weight", "3.running_mean", "3.running_var"):  # batch statistics updated alike
            assert max_relative_difference(state[name], reference[2][name]) < 1e-5, f"{where}: {name}"


def test_xla_chain_matches_torch():
    """Under XLA the tensorflow backend flattens NHWC and permutes the next Linear's weight instead."""
    reference = _torch_reference()
    loss, grads, _ = _run("tensorflow", compiled=True, jit_compile=True)
    assert max_relative_difference(loss, reference[0]) < 2e-6
    for name, grad in grads.items():
        assert max_relative_difference(grad, reference[1][name]) < 1e-5, f"gradient of {name}"


def test_tensorflow_graph_has_no_transpose_between_layers():
    tf = pytest.importorskip("tensorflow")
    with ud.use_backend("tensorflow"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Conv2d(3, 4, 3), ud.nn.BatchNorm2d(4), ud.nn.ReLU(), ud.nn.MaxPool2d(2),
                                 ud.nn.Conv2d(4, 5, 3), ud.nn.Tanh(), ud.nn.AvgPool2d(2), ud.nn.Flatten())
        graph = tf.function(model).get_concrete_function(tf.TensorSpec([None, 3, 12, 12], tf.float32)).graph
    layer_ops = [op for op in graph.get_operations()
                 if op.type in ("Conv2D", "MaxPool", "AvgPool", "Relu", "Tanh", "Mul")]
    fed_by_transpose = [op.type for op in layer_ops if op.inputs[0].op.type == "Transpose"]
    # the first convolution reads the NCHW input through one transpose; nothing else does
    assert fed_by_transpose == ["Conv2D"], fed_by_transpose
    assert sum(op.type == "Conv2D" for op in layer_ops) == 2
    # and the output (flattened in PyTorch's C, H, W order) matches eager execution
    with ud.use_backend("tensorflow"):
        np.testing.assert_allclose(ud.to_numpy(tf.function(model)(tf.constant(IMAGES))),
                                   ud.to_numpy(model(ud.tensor(IMAGES))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("xla", [False, True])
def test_tensorflow_linear_after_flatten_reads_nhwc_only_under_xla(xla):
    tf = pytest.importorskip("tensorflow")
    from unidl.backends.tensorflow.layout import tracing_for_xla

    with ud.use_backend("tensorflow"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Conv2d(3, 4, 3), ud.nn.ReLU(), ud.nn.MaxPool2d(2), ud.nn.Flatten(),
                                 ud.nn.Linear(4 * 5 * 7, 6))  # a 5x7 map: rows and columns cannot be confused
        with tracing_for_xla(xla):
            concrete = tf.function(model, jit_compile=xla).get_concrete_function(
                tf.TensorSpec([None, 3, 12, 16], tf.float32))
        graph = concrete.graph
        (matmul,) = [op for op in graph.get_operations() if op.type == "MatMul"]
        flattened = matmul.inputs[0].op
        assert flattened.type == "Reshape"
        # without XLA the Linear reads PyTorch's C, H, W flatten (a transpose of the NHWC pool output); under
        # XLA it reads the NHWC pool output (batch, 5, 7, 4) flattened as it is, and its weight's columns are
        # permuted instead
        source = flattened.inputs[0]
        assert (source.op.type == "Transpose") != xla
        assert source.shape.as_list()[1:] == ([5, 7, 4] if xla else [4, 5, 7])
        images = np.random.default_rng(4).standard_normal((4, 3, 12, 16)).astype(np.float32)
        np.testing.assert_allclose(ud.to_numpy(concrete(tf.constant(images))), ud.to_numpy(model(ud.tensor(images))),
                                   rtol=1e-5, atol=1e-6)
