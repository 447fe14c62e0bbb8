"""Layer behaviour beyond parity: train/eval modes, running statistics, dropout statistics, bad input."""

import numpy as np
import pytest
import torch

import unidl as ud
from tests.helpers import run_python


def test_batchnorm_running_stats_update_and_eval_uses_them(backend, rng):
    bn = ud.nn.BatchNorm2d(3, momentum=0.1)
    x = (rng.standard_normal((8, 3, 4, 4)) * 2 + 5).astype(np.float32)
    bn(ud.tensor(x))
    state = bn.state_dict()
    np.testing.assert_allclose(state["running_mean"], 0.1 * x.mean((0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(state["running_var"], 0.9 + 0.1 * x.var((0, 2, 3), ddof=1), rtol=1e-5)
    bn.eval()
    out = ud.to_numpy(bn(ud.tensor(x)))
    expected = (x - state["running_mean"].reshape(1, 3, 1, 1)) / np.sqrt(state["running_var"].reshape(1, 3, 1, 1) + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    after = bn.state_dict()
    assert np.array_equal(after["running_mean"], state["running_mean"])  # eval leaves the statistics alone


def test_batchnorm_running_stats_agree_across_backends(rng):
    x = rng.standard_normal((16, 5)).astype(np.float32)
    stats = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            bn = ud.nn.BatchNorm1d(5)
            for _ in range(3):
                bn(ud.tensor(x))
            stats[name] = bn.state_dict()
    for name in stats:
        for key in ("running_mean", "running_var"):
            np.testing.assert_allclose(stats[name][key], stats["torch"][key], rtol=2e-6, atol=1e-7)


def test_dropout_expectation_and_eval_identity(backend):
    drop = ud.nn.Dropout(0.3)
    x = np.ones((200, 500), np.float32)
    out = ud.to_numpy(drop(ud.tensor(x)))
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.02
    drop.eval()
    assert np.array_equal(ud.to_numpy(drop(ud.tensor(x))), x)


def test_dropout_without_a_generator_in_a_function_draws_a_fresh_mask_per_call(backend):
    """``ud.ops.dropout`` without a generator draws from the backend's own (torch's global generator) inside a
    ``ud.function`` too: a new mask at each call, about 1 - p of the values kept, each scaled by 1 / (1 - p).
    (The generator made at its first draw inside the trace: tests/backends/test_keras_jax.py, a fresh process.)"""
    drop = ud.function(lambda a: ud.ops.dropout(a, 0.25))
    x = np.ones((200, 500), np.float32)
    first, second = (ud.to_numpy(drop(x)) for _ in range(2))
    for out in (first, second):
        kept = out != 0
        assert abs(kept.mean() - 0.75) < 0.01
        np.testing.assert_allclose(out[kept], 1 / 0.75, rtol=1e-6)
    # independent masks agree on about 0.75 ** 2 + 0.25 ** 2 of the elements (a repeated mask: on all of them)
    assert abs(((first != 0) == (second != 0)).mean() - 0.625) < 0.01


def test_dropout_in_train_step_changes_between_steps(backend, rng):
    model = ud.nn.Sequential(ud.nn.Linear(10, 10), ud.nn.Dropout(0.5), ud.nn.Linear(10, 1))
    x = rng.standard_normal((32, 10)).astype(np.float32)
    y = rng.standard_normal((32, 1)).astype(np.float32)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.0))
    losses = {round(float(step(x, y)), 6) for _ in range(5)}
    assert len(losses) > 1  # a fresh mask each step, also inside the compiled graph


def test_a_compiled_step_or_function_that_draws_dropout_masks_compiles_once_on_jax(rng):
    """The jax backend's generator key starts as a NumPy array (made without starting XLA) and comes back from a
    compiled call committed to the device: jax.jit keys its programs by that, so each compiled step and function
    with dropout lowered and compiled its program a second time at its second call (1.4 s each on a CPU), and once
    more after each ``ud.manual_seed``, which set the key back to NumPy's (``KeyStream.restore`` now places it on the
    device once XLA has started); ``set_rng_state`` (a checkpoint's resume) sets the key the same way."""
    import jax

    lowered = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    with ud.use_backend("jax"):
        generator = ud.backends.load("jax").generator()
        generator.state.value = np.asarray(generator.state.value)  # (NumPy's, as at the backend's load)
        model = ud.nn.Sequential(ud.nn.Linear(10, 10), ud.nn.Dropout(0.5), ud.nn.Linear(10, 1))
        x = rng.standard_normal((32, 10)).astype(np.float32)
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
        drop = ud.function(lambda a: ud.ops.dropout(a, 0.25))
        state = ud.random.get_rng_state()
        for call in (lambda: step(x, x[:, :1]), lambda: drop(x)):
            call()
            jax.monitoring.register_event_duration_secs_listener(listen)
            try:
                for reset in (lambda: None, lambda: ud.manual_seed(0), lambda: ud.random.set_rng_state(state)):
                    reset()
                    call()
            finally:
                jax.monitoring.unregister_event_duration_listener(listen)
        assert lowered == []


def test_channel_mismatch_names_layer_and_shapes(backend):
    conv = ud.nn.Conv2d(3, 4, 3)
    with pytest.raises(ud.ShapeMismatchError, match=r"Conv2d\(3, 4.*expected input of shape \(N, 3, H, W\) or "
                                                   r"\(3, H, W\), received \(2, 5, 8, 8\)"):
        conv(ud.tensor(np.zeros((2, 5, 8, 8))))
    bn = ud.nn.BatchNorm2d(4)
    with pytest.raises(ud.ShapeMismatchError, match=r"BatchNorm2d.*\(2, 3, 8, 8\)"):
        bn(ud.tensor(np.zeros((2, 3, 8, 8))))


def test_linear_and_unflatten_raise_the_same_error_in_a_graph_of_unknown_sizes(backend):
    """A ``Linear`` given the wrong number of features or a 0-d input, and an ``Unflatten`` of an axis that does not
    split, raise where ``torch.nn`` raises, with one ``ShapeMismatchError`` message eagerly and inside
    ``ud.function`` (which TensorFlow traces for any sizes of a rank: there the check runs with the graph; it
    raised TensorFlow's ``InvalidArgumentError`` at its BiasAdd, Reshape or MatMul, and an ``IndexError`` for
    0-d)."""
    import torch

    cases = [(ud.nn.Linear(4, 3), torch.nn.Linear(4, 3), (2, 5),
              "Linear(in_features=4, out_features=3, bias=True) expected input of shape (N, 4), received (2, 5)"),
             (ud.nn.Linear(4, 3), torch.nn.Linear(4, 3), (),
              "expected input of shape (N, 4) or (4,), received a 0-d input (shape ())"),
             # one sample of the wrong size: TensorFlow's constant folding had run the graph's product first
             (ud.nn.Linear(4, 3), torch.nn.Linear(4, 3), (5,),
              "Linear(in_features=4, out_features=3, bias=True) expected input of shape (N, 4), received (5,)"),
             (ud.nn.Unflatten(1, (2, 3)), torch.nn.Unflatten(1, (2, 3)), (2, 7),
              "axis 1 of size 7 cannot be split into (2, 3) (input shape (2, 7))"),
             (ud.nn.Unflatten(1, (2, -1)), torch.nn.Unflatten(1, (2, -1)), (2, 7),
              "axis 1 of size 7 cannot be split into (2, -1) (input shape (2, 7))")]
    for layer, oracle, shape, message in cases:
        x = np.ones(shape, np.float32)
        with pytest.raises(RuntimeError):
            oracle(torch.from_numpy(x))
        for mode, run in (("eager", layer), ("ud.function", ud.function(lambda x, layer=layer: layer(x)))):
            with pytest.raises(ud.ShapeMismatchError) as raised:
                ud.to_numpy(run(x))
            assert message in str(raised.value), (mode, str(raised.value))
        fitting = np.ones((3, 4) if isinstance(layer, ud.nn.Linear) else (3, 6), np.float32)
        for right in (fitting, fitting[0]) if isinstance(layer, ud.nn.Linear) else (fitting,):  # (one sample too)
            np.testing.assert_allclose(ud.to_numpy(ud.function(lambda x, layer=layer: layer(x))(right)),
                                       ud.to_numpy(layer(right)), rtol=1e-6)


def test_a_channel_mismatch_raises_the_eager_error_inside_a_graph_of_unknown_sizes(backend):
    """A layer given the wrong number of channels or features (``torch.nn`` raises) raises the same
    ``ShapeMismatchError`` message inside ``ud.function`` as eagerly, also where TensorFlow traces it for any sizes
    (there it raised TensorFlow's ``InvalidArgumentError`` at its BiasAdd, FusedBatchNorm or Mul)."""
    import torch

    cases = [(lambda: ud.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3), (2, 5, 8, 8)),
             (lambda: ud.nn.Conv1d(3, 4, 3), torch.nn.Conv1d(3, 4, 3), (2, 5, 8)),
             (lambda: ud.nn.ConvTranspose2d(3, 4, 3), torch.nn.ConvTranspose2d(3, 4, 3), (2, 5, 8, 8)),
             (lambda: ud.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4), (2, 3, 8, 8)),
             (lambda: ud.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4), (2, 3)),
             (lambda: ud.nn.LayerNorm(4), torch.nn.LayerNorm(4), (2, 5)),
             (lambda: ud.nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4), (2, 6, 3)),
             (lambda: ud.nn.PReLU(4), torch.nn.PReLU(4), (2, 5, 3)),
             (lambda: ud.nn.LSTM(4, 3, batch_first=True), torch.nn.LSTM(4, 3, batch_first=True), (2, 5, 6))]
    for build, oracle, shape in cases:
        x = np.ones(shape, np.float32)
        with pytest.raises(RuntimeError):
            oracle(torch.from_numpy(x))
        layer = build()
        with pytest.raises(ud.ShapeMismatchError) as eager:
            layer(x)
        with pytest.raises(ud.ShapeMismatchError) as traced:
            ud.to_numpy(ud.function(lambda x, layer=layer: layer(x))(x))
        assert str(traced.value) == str(eager.value) and str(shape) in str(eager.value), str(traced.value)


def test_kernel_larger_than_padded_input(backend):
    with pytest.raises(ValueError, match="kernel height 5 is larger than the padded input height 4"):
        ud.nn.Conv2d(1, 1, 5)(ud.tensor(np.zeros((1, 1, 4, 4))))
    with pytest.raises(ValueError, match="kernel height 3 is larger than the padded input height 2"):
        ud.nn.MaxPool2d(3)(ud.tensor(np.zeros((1, 1, 2, 2))))


@pytest.mark.parametrize("build, message", [
    (lambda: ud.nn.Conv2d(3, 4, 0), "kernel_size must be a positive int"),
    (lambda: ud.nn.Conv2d(3, 4, 3, stride=2, padding="same"), "padding='same' needs stride=1"),
    (lambda: ud.nn.Conv2d(3, 4, 3, padding=-1), "padding must be a non-negative int"),
    (lambda: ud.nn.Linear(0, 3), "in_features must be a positive integer"),
    (lambda: ud.nn.Dropout(1.5), r"Dropout p=1.5 is invalid: it must lie in \[0, 1\]"),
    (lambda: ud.nn.BatchNorm1d(4, momentum=2), r"momentum=2 is invalid"),
    (lambda: ud.nn.MaxPool2d(2, padding=2), "at most half the kernel size"),
    (lambda: ud.nn.MSELoss("avg"), r"reduction must be one of \('mean', 'sum', 'none'\)"),
])
def test_invalid_hyperparameters(backend, build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_cross_entropy_rejects_labels_out_of_range(backend):
    loss = ud.nn.CrossEntropyLoss()
    logits = ud.tensor(np.zeros((3, 4)))
    for labels in ([0, 1, 4], [0, -1, 2]):
        with pytest.raises(Exception, match=r"labels must lie in \[0, 4\)|labels must lie in \[0, number of classes\)"):
            loss(logits, ud.tensor(np.array(labels)))


def test_cross_entropy_rejects_labels_out_of_range_in_train_step(backend, rng):
    model = ud.nn.Linear(5, 3)
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    step(x, np.array([0, 1, 2, 1]))
    # unidl's own message, also from inside a compiled graph (the tensorflow backend's, Keras's train step)
    with pytest.raises(Exception, match=r"labels must lie in \[0"):
        step(x, np.array([0, 1, 3, 1]))


def test_cross_entropy_shape_errors(backend):
    with pytest.raises(ud.ShapeMismatchError, match=r"logits of shape \(N, C\) and integer labels of shape \(N,\)"):
        ud.nn.CrossEntropyLoss()(ud.tensor(np.zeros((3, 4))), ud.tensor(np.zeros((3, 5))))


@pytest.mark.parametrize("image_size, channels", [(32, 3), (8, 1), (28, 1), (4, 1)])
def test_cnn_shapes(backend, image_size, channels):
    model = ud.models.CNN(in_channels=channels, num_classes=10, image_size=image_size)
    out = model(ud.tensor(np.zeros((2, channels, image_size, image_size))))
    assert tuple(out.shape) == (2, 10)


def test_cnn_too_small_image_is_explained(backend):
    with pytest.raises(ValueError, match="image_size=2 is too small"):
        ud.models.CNN(1, 10, 2)


def test_cnn_is_lenet_on_cifar_sizes(backend):
    shapes = {k: v.shape for k, v in ud.models.CNN().state_dict().items()}
    assert shapes["features.0.weight"] == (6, 3, 5, 5)
    assert shapes["features.3.weight"] == (16, 6, 5, 5)
    assert shapes["classifier.0.weight"] == (120, 400)
    assert shapes["classifier.2.weight"] == (84, 120)
    assert shapes["classifier.4.weight"] == (10, 84)


def test_custom_forward_with_ops_runs(backend, rng):
    class Custom(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ud.nn.Conv2d(1, 2, 3, padding=1)
            self.fc = ud.nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            h = ud.ops.max_pool2d(ud.ops.relu(self.conv(x)), 2)
            h = ud.ops.concat([h[:, :1], h[:, 1:]], axis=1)
            return ud.ops.log_softmax(self.fc(ud.ops.flatten(h)))

    model = Custom()
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.Adam(model.parameters(), lr=1e-2))
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    assert np.isfinite(float(step(x, np.array([0, 1, 2, 0, 1, 2]))))


def test_relu_after_a_linear_or_a_convolution_keeps_nan_in_a_compiled_function_as_torch(backend):
    """``relu(linear(x))`` and ``relu(conv2d(x))`` on an input holding NaN give torch's NaN, eagerly and in
    ``ud.function``: TensorFlow's grappler fuses the matmul or convolution, its bias and the ReLU into one kernel,
    which on some CPUs (oneDNN on a Xeon with AVX-512 FP16/AMX) gave 0, so the non-finite guard missed a NaN batch
    (unidl turns that fusion off where it drops NaN: ``unidl/backends/tensorflow/fusion.py``)."""
    linear, conv = ud.nn.Linear(3, 4), ud.nn.Conv2d(2, 3, 3, padding=1)
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    image = np.random.default_rng(4).standard_normal((1, 2, 5, 5)).astype(np.float32)
    x[0, 0], image[0, 0, 2, 2] = np.nan, np.nan
    expected = (torch.relu(torch.nn.functional.linear(torch.tensor(x), *(torch.tensor(np.asarray(v)) for v in
                                                                          linear.state_dict().values()))),
                torch.relu(torch.nn.functional.conv2d(torch.tensor(image), *(torch.tensor(np.asarray(v)) for v in
                                                                              conv.state_dict().values()), padding=1)))

    def run(x, image):
        return ud.ops.relu(linear(x)), ud.ops.relu(conv(image))

    for mode, function in (("eager", run), ("ud.function", ud.function(run))):
        for got, want in zip(function(ud.tensor(x), ud.tensor(image)), expected):
            got, want = ud.to_numpy(got), want.numpy()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{backend} {mode}")
            assert np.isnan(want).any()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{backend} {mode}")


def test_tensorflows_fused_relu_probe_runs_first_inside_a_traced_forward():
    """In a fresh interpreter whose first TensorFlow graph is traced with another inside it (a ``ud.function`` in
    the forward of a ``train_step``), the fused-ReLU probe (``unidl/backends/tensorflow/fusion.py``) runs outside
    that trace: it raised ``AttributeError`` (a symbolic tensor's ``numpy``) there, failing the step. The step's
    NaN batch then gives a NaN loss, as torch's."""
    code = """
import numpy as np, unidl as ud
ud.set_backend("tensorflow")
block = ud.function(lambda a: ud.ops.relu(a))
class M(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(3, 2)
    def forward(self, x):
        return block(self.fc(x))
m = M()
step = ud.train_step(m, ud.nn.MSELoss(), ud.optim.SGD(m.parameters(), lr=0.1), check_finite=False)
x = np.ones((4, 3), np.float32)
finite = float(step(x, np.ones((4, 2), np.float32)))
x[0, 0] = np.nan
print(np.isfinite(finite), np.isnan(float(step(x, np.ones((4, 2), np.float32)))))
"""
    assert run_python(code).stdout.split()[-2:] == ["True", "True"]


#: PyTorch constructor parameters that unidl's layers leave out: the factory arguments (a module's device and dtype
#: are unidl's scope's), deprecated aliases and private ones
_NOT_TAKEN = {"device", "dtype", "size_average", "reduce", "_weight", "_freeze", "min_value", "max_value"}


def test_every_layer_named_as_torchs_takes_torchs_constructor_arguments():
    """Each ``ud.nn`` class that ``torch.nn`` also has takes every constructor parameter of PyTorch's, by name and
    in PyTorch's order for the positional ones, so that code written for ``torch.nn`` builds unchanged
    (``BatchNorm2d(c, track_running_stats=False)``, ``ReLU(inplace=True)``, ``Flatten(0, 1)`` raised
    ``TypeError``); options no backend but torch can honour are an error at their non-default values
    (``Embedding(sparse=True)``)."""
    import inspect

    missing, order = {}, {}
    for name in dir(ud.nn):
        ours, theirs = getattr(ud.nn, name), getattr(torch.nn, name, None)
        if not (isinstance(ours, type) and isinstance(theirs, type)) or not issubclass(ours, ud.nn.Module):
            continue
        wanted = [p for p in inspect.signature(theirs.__init__).parameters.values()
                  if p.name not in _NOT_TAKEN | {"self"} and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        taken = inspect.signature(ours.__init__).parameters
        if [p.name for p in wanted if p.name not in taken]:
            missing[name] = [p.name for p in wanted if p.name not in taken]
        positional = [p.name for p in wanted if p.kind is p.POSITIONAL_OR_KEYWORD]
        if [n for n in taken if n in positional] != positional:
            order[name] = (positional, list(taken))
    assert not missing, missing
    assert not order, order
    for build in (lambda nn: nn.ReLU(inplace=True), lambda nn: nn.Dropout(0.2, True),
                  lambda nn: nn.LeakyReLU(0.1, True), lambda nn: nn.Flatten(0, 2),
                  lambda nn: nn.BatchNorm1d(3, affine=False, track_running_stats=False),
                  # (inplace=True dropped, LayerNorm without bias=, numbers given as ints printed as floats)
                  lambda nn: nn.SiLU(inplace=True), lambda nn: nn.ELU(0.5, True), lambda nn: nn.ReLU6(True),
                  lambda nn: nn.Hardtanh(-2, 3, True), lambda nn: nn.Softplus(2, 5), lambda nn: nn.LayerNorm(4),
                  lambda nn: nn.LayerNorm(4, elementwise_affine=False),
                  # (padding and padding_mode strings unquoted, pooling arguments as given, no RNN nonlinearity,
                  # Upsample's factor as floats)
                  lambda nn: nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"),
                  lambda nn: nn.Conv1d(3, 4, 3, padding="valid", dilation=2, bias=False),
                  lambda nn: nn.MaxPool2d(2), lambda nn: nn.MaxPool2d((3, 2), 2, 1, ceil_mode=True),
                  lambda nn: nn.AvgPool2d(3, 2, 1, True, False, 2), lambda nn: nn.AdaptiveMaxPool2d(2),
                  lambda nn: nn.AdaptiveAvgPool2d((None, 3)), lambda nn: nn.RNN(3, 4, 2, nonlinearity="relu"),
                  lambda nn: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                  lambda nn: nn.Upsample(scale_factor=(2, 3)), lambda nn: nn.Upsample(size=4),
                  # (Hardswish's and Hardsigmoid's inplace not shown; Softshrink's lambd and Threshold's as given)
                  lambda nn: nn.Mish(True), lambda nn: nn.Hardswish(True), lambda nn: nn.Hardsigmoid(True),
                  lambda nn: nn.SELU(True), lambda nn: nn.CELU(2, True), lambda nn: nn.Softmin(), lambda nn: nn.GLU(1),
                  lambda nn: nn.Softshrink(1), lambda nn: nn.Hardshrink(), lambda nn: nn.Threshold(0.1, 20, True),
                  lambda nn: nn.Softsign(), lambda nn: nn.LogSigmoid(), lambda nn: nn.Tanhshrink(),
                  lambda nn: nn.CosineSimilarity(0, 1e-3), lambda nn: nn.PairwiseDistance(1, keepdim=True),
                  lambda nn: nn.Embedding(4, 2, 1, scale_grad_by_freq=True), lambda nn: nn.MaxPool2d(3, 1, 1, (2, 1)),
                  lambda nn: nn.Embedding(4, 2, max_norm=1.5), lambda nn: nn.Embedding(4, 2, max_norm=1, norm_type=1)):
        assert repr(build(ud.nn)) == repr(build(torch.nn))
    shrinks = [nn.Softshrink(1) for nn in (ud.nn, torch.nn)]
    for shrink in shrinks:
        shrink.lambd = 2  # (the repr shows the attribute, as torch's, not the value first given)
    assert repr(shrinks[0]) == repr(shrinks[1])
    with pytest.raises(ValueError, match="Embedding sparse=True is not supported"):
        ud.nn.Embedding(4, 2, sparse=True)


def test_a_layer_takes_its_input_by_torchs_keyword(backend):
    """``layer(input=x)``, torch.nn's keyword for a layer's input (unidl's forwards name it ``x``, a loss's
    ``prediction``): the same output as ``layer(x)`` (it was a ``TypeError``); a module of the user's keeps its own
    parameter names."""
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32)
    ud.manual_seed(0)
    for layer, args, kwargs in [(ud.nn.Conv2d(3, 4, 3), (x,), {}), (ud.nn.ReLU(), (x,), {}),
                                (ud.nn.MSELoss(), (x,), {"target": x * 2}), (ud.nn.Flatten(), (x,), {})]:
        expected = ud.to_numpy(layer(*args, **kwargs))
        np.testing.assert_array_equal(ud.to_numpy(layer(input=args[0], **kwargs)), expected)

    class Own(ud.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="input"):
        Own()(input=x)
