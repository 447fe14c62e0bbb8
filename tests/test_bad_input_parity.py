"""One error for one bad input: every case below raises the same unidl error type with the same message on
torch, tensorflow, keras and jax, eagerly and inside ``ud.function`` (where tensorflow leaves every size
unknown while it traces, so the check runs inside the graph), before the framework's own error; and the
inputs that are valid off the usual path (conv with 'same' or int padding in a graph, ``Linear`` on one
sample) give PyTorch's values. See docs/guarantees.md, "Behaviour that is the same everywhere"."""

import itertools
import os
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unidl as ud
from unidl import backends
from unidl.precision import autocast_modules
from unidl.testing import max_relative_difference
from unidl.testing.pytest_plugin import backends_under_test

pytestmark = pytest.mark.heavy  # minutes of tests: run first (tests/conftest.py)

MODES = ("eager", "graph")


@pytest.fixture(params=[(b, m) for b in backends_under_test() for m in MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def mode(request):
    """Runs the test under each backend, once eagerly and once inside ``ud.function``; yields the mode."""
    name, which = request.param
    with ud.use_backend(name):
        ud.manual_seed(0)
        yield which


def run(mode, fn, *arrays):
    """``fn`` over ``arrays`` as tensors, eagerly or compiled by ``ud.function``; the result as NumPy."""
    tensors = [ud.tensor(a) for a in arrays]
    result = ud.function(lambda *inputs: fn(*inputs))(*tensors) if mode == "graph" else fn(*tensors)
    return ud.to_numpy(result)


def run_each(mode, fns, *arrays):
    """Each of ``fns`` over ``arrays`` as ``run`` gives it, in one ``ud.function`` in a graph: one compiled program
    (one JAX compile, one TensorFlow trace) for a table of cases instead of one each."""
    def every(*inputs):
        return [fn(*inputs) for fn in fns]

    tensors = [ud.tensor(a) for a in arrays]
    return [ud.to_numpy(r) for r in (ud.function(every)(*tensors) if mode == "graph" else every(*tensors))]


def check_rows(rows, check):
    """``check(row)`` for each row of a table folded into one test (its cases sharing one compiled program): one
    ``AssertionError`` that names every row that failed, each with its own message, not only the first."""
    failures = []
    for row in rows:
        try:
            check(row)
        except AssertionError as error:
            failures.append(f"{row!r}: {error}")
    assert not failures, "\n".join(failures)


def run_tensors(mode, fn, *tensors):
    """``fn`` over ``tensors`` (their dtypes kept), eagerly or compiled by ``ud.function``; the result as NumPy."""
    return ud.to_numpy(ud.function(lambda *inputs: fn(*inputs))(*tensors) if mode == "graph" else fn(*tensors))


def raises_exactly(error, message, fn, *args):
    """``fn(*args)`` raises exactly ``error`` (not a framework's subclass or wrapper) with exactly ``message``.
    (One lambda a line: AutoGraph may take another lambda of the same line for the one it converts.)"""
    with pytest.raises(error) as caught:
        fn(*args)
    assert type(caught.value) is error
    assert str(caught.value) == message


RNG = np.random.default_rng(0)
X = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
SMALL = X[:, :, :2, :2]


# ---- a. conv2d with 'same' or int padding inside a graph (the kernel's shape unknown there) ---------------------

@pytest.mark.parametrize("kernel, padding, dilation", [((3, 3), "same", 1), ((2, 3), "same", 2), ((3, 2), (1, 2), 1)])
def test_conv2d_padding_inside_graphs_matches_torch(mode, kernel, padding, dilation):
    weight = RNG.standard_normal((3, 2) + kernel).astype(np.float32)
    bias = RNG.standard_normal(3).astype(np.float32)
    got = run(mode, lambda x, w, b: ud.ops.conv2d(x, w, b, 1, padding, dilation), X, weight, bias)
    expected = F.conv2d(torch.tensor(X), torch.tensor(weight), torch.tensor(bias), 1, padding, dilation).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---- b. a window larger than the padded input ----------------------------------------------------------------

def test_conv_kernel_larger_than_the_padded_input(mode):
    weight = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    raises_exactly(ud.ShapeMismatchError, "conv2d: kernel height 5 is larger than the padded input height 4 (input "
                   "shape (1, 2, 2, 2)); use a smaller kernel or dilation, more padding or a larger input",
                   run, mode, lambda x, w: ud.ops.conv2d(x, w, None, 1, 1), SMALL, weight)
    raises_exactly(ud.ShapeMismatchError, "conv1d: kernel length 5 is larger than the padded input length 2 (input "
                   "shape (1, 2, 2)); use a smaller kernel or dilation, more padding or a larger input",
                   run, mode, lambda x, w: ud.ops.conv1d(x, w), SMALL[:, :, 0], weight[:, :, 0])


def test_conv2d_layer_kernel_larger_than_the_padded_input(mode):
    conv = ud.nn.Conv2d(2, 1, (2, 5), padding=1)
    raises_exactly(ud.ShapeMismatchError, "Conv2d(2, 1, kernel_size=(2, 5), stride=(1, 1), padding=(1, 1)): kernel "
                   "width 5 is larger than the padded input width 4 (input shape (1, 2, 2, 2)); use a smaller kernel "
                   "or dilation, more padding or a larger input", lambda: run(mode, conv, SMALL))


def test_pool_window_larger_than_the_padded_input(mode):
    raises_exactly(ud.ShapeMismatchError, "MaxPool2d(kernel_size=3, stride=3, padding=0, dilation=1, ceil_mode=False): "
                   "kernel height 3 is larger than the padded input height 2 (input shape (1, 2, 2, 2)); use a smaller "
                   "kernel, more padding or a larger input", lambda: run(mode, ud.nn.MaxPool2d(3), SMALL))
    raises_exactly(ud.ShapeMismatchError, "avg_pool2d: kernel height 3 is larger than the padded input height 2 "
                   "(input shape (1, 2, 2, 2)); use a smaller kernel, more padding or a larger input",
                   run, mode, lambda x: ud.ops.avg_pool2d(x, 3), SMALL)


def test_an_input_of_another_rank_names_its_shape_in_a_graph_too(mode):
    """A layer's input of a rank it does not take names the input's shape in a graph as eagerly: a TensorFlow graph
    (tensorflow, Keras-on-TensorFlow), traced for any sizes of a rank, refuses the rank while tracing, and named
    ``(None, None)``; the function is then traced once more for the call's exact shapes, in a graph that never
    runs, whose error names them (a ``ud.function`` called in it, traced for any sizes too, likewise)."""
    conv1d, conv2d, pool = ud.nn.Conv1d(2, 4, 3), ud.nn.Conv2d(2, 4, 3), ud.nn.MaxPool2d(2)
    for call in (conv2d, ud.function(lambda t: conv2d(t))):  # (a compiled function's, called inside one's too)
        raises_exactly(ud.ShapeMismatchError, "Conv2d(2, 4, kernel_size=(3, 3), stride=(1, 1)) expected input of "
                       "shape (N, 2, H, W) or (2, H, W), received (3, 5)", lambda: run(mode, call, X[0, 0, :3]))
    raises_exactly(ud.ShapeMismatchError, "Conv1d(2, 4, kernel_size=(3,), stride=(1,)) expected input of shape "
                   "(N, 2, L) or (2, L), received (1, 2, 4, 5)", lambda: run(mode, conv1d, X[:1, :, :4]))
    raises_exactly(ud.ShapeMismatchError, "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False) "
                   "expected NCHW input of rank 4 (or one sample (C, H, W)), received shape (1, 1, 2, 4, 5)",
                   lambda: run(mode, pool, X[None, :, :, :4]))


# ---- c. pool padding larger than half the kernel -----------------------------------------------------------------

@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_pool_padding_over_half_the_kernel(mode, pool):
    """unidl's ``PoolPaddingError`` (a ``ValueError`` and PyTorch's ``RuntimeError``), not a built-in error, from the
    2-d and 1-d ops and layers alike."""
    raises_exactly(ud.PoolPaddingError, f"{pool} padding 2 must be non-negative and at most half the kernel size "
                   "(2, 2)", run, mode, lambda x: getattr(ud.ops, pool)(x, 2, 2, 2), X)
    pool1d = pool.replace("2d", "1d")
    raises_exactly(ud.PoolPaddingError, f"{pool1d} padding 2 must be non-negative and at most half the kernel size "
                   "(3,)", run, mode, lambda x: getattr(ud.ops, pool1d)(x[0], 3, 1, 2), X)
    raises_exactly(ud.PoolPaddingError, "MaxPool2d padding 2 must be non-negative and at most half the kernel size "
                   "(2, 2)", lambda: ud.nn.MaxPool2d(2, 2, 2))
    raises_exactly(ud.PoolPaddingError, "AvgPool1d padding 2 must be non-negative and at most half the kernel size "
                   "(3,)", lambda: ud.nn.AvgPool1d(3, 1, 2))
    with pytest.raises(RuntimeError):  # PyTorch's class, which unidl's error is as well
        getattr(F, pool)(torch.tensor(X), 2, 2, 2)


# ---- d. batch norm in training with one value per channel ---------------------------------------------------

@pytest.mark.parametrize("layer, shape", [("BatchNorm1d", (1, 2)), ("BatchNorm2d", (1, 2, 1, 1))])
def test_batch_norm_needs_more_than_one_value_per_channel_when_training(mode, layer, shape):
    norm = getattr(ud.nn, layer)(2)
    message = ("{}: expected more than 1 value per channel when training, got input of shape {}; train with more "
               "values per channel (a larger batch) or call eval()")
    raises_exactly(ud.ShapeMismatchError, message.format(norm.describe(), shape),
                   lambda: run(mode, norm, X.reshape(-1)[:2].reshape(shape)))
    state = norm.state_dict()
    assert np.array_equal(state["running_mean"], np.zeros(2)) and np.array_equal(state["running_var"], np.ones(2))
    stats = (ud.tensor(np.zeros(2, np.float32)), ud.tensor(np.ones(2, np.float32)))
    raises_exactly(ud.ShapeMismatchError, message.format("batch_norm", shape),
                   run, mode, lambda x: ud.ops.batch_norm(x, *stats, training=True)[0],
                   X.reshape(-1)[:2].reshape(shape))
    norm.eval()  # one value per channel is fine with the running statistics
    assert run(mode, norm, X.reshape(-1)[:2].reshape(shape)).shape == shape


# ---- e. Linear on one sample (in_features,) -> (out_features,), as torch ---------------------------------------

def test_linear_on_a_1d_input_matches_torch(mode):
    linear = ud.nn.Linear(5, 3)
    state = linear.state_dict()
    got = run(mode, linear, X[0, 0, 0])
    expected = F.linear(torch.tensor(X[0, 0, 0]), torch.tensor(state["weight"]), torch.tensor(state["bias"])).numpy()
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


# ---- f. a loss of two different shapes (torch broadcasts with a warning; unidl refuses) -----------------------

def test_mse_of_different_shapes_names_both(mode):
    raises_exactly(ud.ShapeMismatchError, "MSELoss needs prediction and target of the same shape; prediction has "
                   "shape (5, 1), target has shape (5, 5)",
                   lambda: run(mode, ud.nn.MSELoss(), X[0, 0, :, :1], X[0, 0]))
    raises_exactly(ud.ShapeMismatchError, "L1Loss needs prediction and target of the same shape; prediction has "
                   "shape (5, 1), target has shape (5,)", lambda: run(mode, ud.nn.L1Loss(), X[0, 0, :, :1], X[0, 0, 0]))



def test_the_elementwise_loss_ops_of_different_shapes_name_both(mode):
    """The ops refuse what their modules refuse (they broadcast (5, 1) against (5, 5) silently; PyTorch's functional
    losses warn), as the binary cross-entropy ops do."""
    for loss in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div"):
        first = "log_probabilities" if loss == "kl_div" else "prediction"
        raises_exactly(ud.ShapeMismatchError, f"{loss} needs {first} and target of the same shape; {first} has shape "
                       "(5, 1), target has shape (5, 5)", run, mode, getattr(ud.ops, loss), X[0, 0, :, :1], X[0, 0])

# ---- g. labels outside [0, C) ----------------------------------------------------------------------------------

def test_out_of_range_labels_name_the_range(mode):
    labels = np.array([0, 1, -2, 3, 7])
    for name, loss in (("CrossEntropyLoss", ud.nn.CrossEntropyLoss()), ("NLLLoss", ud.nn.NLLLoss())):
        raises_exactly(ud.IndexOutOfRangeError, f"{name} labels must lie in [0, 5); found values from -2 to 7",
                       lambda: run(mode, loss, X[0, 0], labels))
    raises_exactly(ud.IndexOutOfRangeError, "CrossEntropyLoss labels must lie in [0, 5); found values from 0 to 5",
                   run, mode, lambda x, y: ud.ops.cross_entropy(x, y), X[0, 0], np.array([0, 5, 1, 2, 3]))


def test_cross_entropy_takes_the_classes_on_axis_1_as_torch(mode):
    """``ud.ops.cross_entropy`` of (N, C, d1) logits against (N, d1) labels takes the classes on axis 1, and one
    sample's (C,) logits a label (), as ``torch.nn.functional.cross_entropy`` (TensorFlow and Keras took the last
    axis for the classes and raised their own errors, JAX gave another number); labels of another shape are one
    ``ShapeMismatchError`` (JAX and TensorFlow raised their own errors)."""
    logits, labels = RNG.standard_normal((2, 3, 4)).astype(np.float32), np.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    for reduction in ("mean", "none"):
        expected = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction=reduction).numpy()
        got = run(mode, lambda x, y: ud.ops.cross_entropy(x, y, reduction=reduction), logits, labels)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    expected = F.cross_entropy(torch.tensor(logits[0, :, 0]), torch.tensor(1)).numpy()
    np.testing.assert_allclose(run(mode, lambda x, y: ud.ops.cross_entropy(x, y), logits[0, :, 0], np.array(1)),
                               expected, rtol=1e-5)
    raises_exactly(ud.ShapeMismatchError, "cross_entropy needs logits of shape (N, C) and integer labels of shape "
                   "(N,) (or (N, C, d1, ...) and (N, d1, ...)); got logits (3, 4) and labels (2,)",
                   run, mode, lambda x, y: ud.ops.cross_entropy(x, y), logits[0], np.array([0, 1]))
    raises_exactly(ud.ShapeMismatchError, "cross_entropy needs logits of shape (N, C) and integer labels of shape "
                   "(N,) (or (N, C, d1, ...) and (N, d1, ...)); got logits (2, 3, 4) and labels (2, 3)",
                   run, mode, lambda x, y: ud.ops.cross_entropy(x, y), logits, labels[:, :3])


# ---- h, i. float labels and integer inputs: refused, never truncated or left to the framework ------------------

def test_float_labels_and_integer_inputs_are_refused_by_train_step_and_fit(mode):
    message = ("CrossEntropyLoss needs integer class labels of shape (N,) or class probabilities of the logits' shape "
               "(N, C), got float32 labels of shape (N,); convert them with labels.astype('int64')")
    raises_exactly(ud.errors.DtypeMismatchError, message,
                   lambda: run(mode, ud.nn.CrossEntropyLoss(), X[0, 0, :, :3], np.array([0.0, 1, 2, 1, 0], np.float32)))
    if mode == "graph":
        return
    model = ud.nn.Linear(5, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer)
    before = model.state_dict()
    for labels in (np.array([0.0, 1.0, 2.0, 1.0, 0.0], np.float32), np.array([0.5, 1, 2, 1, 0], np.float32)):
        raises_exactly(ud.errors.DtypeMismatchError, message, lambda: step(X[0, 0], labels))
        raises_exactly(ud.errors.DtypeMismatchError, message, lambda: ud.fit(
            model, (X[0, 0], labels), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, batch_size=5, verbose=0))
    raises_exactly(ud.errors.DtypeMismatchError, "Linear(in_features=5, out_features=3, bias=True) needs floating-"
                   "point input, got int64 input; convert it with x.astype('float32') or ud.ops.cast(x, 'float32')",
                   lambda: step(np.arange(25).reshape(5, 5), np.array([0, 1, 2, 1, 0])))
    after = model.state_dict()
    assert all(np.array_equal(before[key], after[key]) for key in before)


def test_integer_input_to_a_float_layer_is_refused(mode):
    linear = ud.nn.Linear(5, 3)
    raises_exactly(ud.errors.DtypeMismatchError, "Linear(in_features=5, out_features=3, bias=True) needs floating-"
                   "point input, got int64 input; convert it with x.astype('float32') or "
                   "ud.ops.cast(x, 'float32')", lambda: run(mode, linear, np.arange(10).reshape(2, 5)))
    conv = ud.nn.Conv2d(2, 1, 2)
    raises_exactly(ud.errors.DtypeMismatchError, "Conv2d(2, 1, kernel_size=(2, 2), stride=(1, 1)) needs floating-"
                   "point input, got int64 input; convert it with x.astype('float32') or "
                   "ud.ops.cast(x, 'float32')", lambda: run(mode, conv, np.ones((1, 2, 2, 2), np.int64)))


# ---- j, k. NumPy arrays, strings and objects as model inputs; ud.tensor of a string ---------------------------

class _Net(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(5, 3)

    def forward(self, x, scale):
        return self.fc(x) * scale


class _SubLinear(ud.nn.Linear):
    """A user's subclass of a unidl layer, its forward unidl's."""


class _TypeOf(ud.nn.Module):
    def forward(self, values):
        return type(values).__name__


def test_models_take_numpy_arrays_and_refuse_strings_and_objects():
    for name in backends_under_test():
        with ud.use_backend(name):
            net = _Net()
            expected = ud.to_numpy(net(ud.tensor(X[0, 0]), ud.tensor(np.float32(2.0))))
            np.testing.assert_array_equal(ud.to_numpy(net(X[0, 0], np.float32(2.0))), expected)
            np.testing.assert_array_equal(ud.to_numpy(net.fc(X[0, 0].astype(np.float64))), expected / 2)
            # nested lists or tuples of numbers into unidl's layers (a user's subclass of one too), as into their
            # ops (an AttributeError); a Sequential hands them on as they are, to a user's module as given
            np.testing.assert_array_equal(ud.to_numpy(net.fc(X[0, 0].astype(np.float64).tolist())), expected / 2)
            layers = ud.nn.Sequential(ud.nn.Linear(5, 3))
            np.testing.assert_array_equal(ud.to_numpy(layers(X[0, 0].tolist())), ud.to_numpy(layers(X[0, 0])))
            rows = tuple(map(tuple, X[0, 0].tolist()))
            np.testing.assert_array_equal(ud.to_numpy(_SubLinear(5, 3)(rows)).shape, (5, 3))
            assert ud.nn.Sequential(_TypeOf())([1, 2]) == "list"
            # a Python number too, as ud.tensor makes it (torch's TypeError; float32 on TensorFlow and Keras, float64
            # on JAX)
            for value in (-3.0, 2):
                got = ud.to_numpy(ud.nn.ReLU()(value))
                assert got.dtype == ud.to_numpy(ud.tensor(value)).dtype and got == max(value, 0), (value, got)
            # a loss's target and an attention's key and value too: their tensor arguments
            target = F.cross_entropy(torch.tensor([[1.0, 2.0]]), torch.tensor([1])).item()
            assert abs(float(ud.nn.CrossEntropyLoss()([[1.0, 2.0]], [1])) - target) < 1e-6
            assert float(ud.nn.MSELoss()(ud.tensor([1.0, 2.0]), [1.0, 3.0])) == 0.5
            attention = ud.nn.MultiheadAttention(2, 1, batch_first=True)
            query = [[[1.0, 2.0], [0.5, -1.0]]]  # (two keys: Keras warns of a softmax over one)
            np.testing.assert_array_equal(ud.to_numpy(attention(query, query, query)[0]),
                                          ud.to_numpy(attention(*[ud.tensor(query)] * 3)[0]))
            for value, kind in (("abc", "str"), (object(), "object")):
                raises_exactly(TypeError, f"Linear(in_features=5, out_features=3, bias=True) at 'fc' takes a tensor or "
                               f"a NumPy array, got {kind}", lambda: net(value, 2.0))
                raises_exactly(TypeError, f"Sequential() takes a tensor or a NumPy array, got {kind}",
                               lambda: ud.nn.Sequential(ud.nn.Linear(5, 3))(value))


def test_tensor_of_a_string_is_a_type_error():
    for name in backends_under_test():
        with ud.use_backend(name):
            raises_exactly(ud.errors.DtypeMismatchError, "ud.tensor takes numbers (floats, ints or bools: a NumPy "
                           "array, nested lists or a scalar), got str 'abc'", lambda: ud.tensor("abc"))
            raises_exactly(ud.errors.DtypeMismatchError, "ud.tensor takes numbers (floats, ints or bools: a NumPy "
                           "array, nested lists or a scalar), got an array of dtype object",
                           lambda: ud.tensor([object()]))


def test_grad_of_a_value_that_uses_no_target_and_of_an_integer_value(backend):
    """``value_and_grad`` of a value that depends on none of the parameters: None for each (zeros for arguments),
    on torch too, which raised its own ``RuntimeError``; a value of integer dtype is one ``TypeError`` everywhere
    (tensorflow and keras returned it with zero gradients, torch and jax raised their own errors)."""
    model, x = ud.nn.Linear(3, 2), ud.tensor(np.ones((1, 3), np.float32))
    _, grads = ud.value_and_grad(lambda: ud.ops.sum(x), model.parameters())()
    assert grads == [None, None]
    _, grad = ud.value_and_grad(lambda t: ud.ops.sum(x), argnums=0)(ud.tensor(np.ones(2, np.float32)))
    assert np.array_equal(ud.to_numpy(grad[0] if isinstance(grad, (list, tuple)) else grad), [0.0, 0.0])
    value, _ = ud.value_and_grad(lambda t: ud.ops.sum(t * t, 0, True), argnums=0)(ud.tensor(np.ones(2, np.float32)))
    assert tuple(value.shape) == (1,)  # a (1,) value keeps its shape (torch's too)
    with pytest.raises(TypeError, match="returns a floating-point scalar, but it returned dtype int"):
        ud.value_and_grad(lambda t: ud.ops.sum(ud.ops.cast(t, "int64")), argnums=0)(ud.tensor(np.ones(2, np.float32)))


def test_a_per_sample_loss_is_refused_by_train_step_and_fit(backend):
    """``reduction="none"`` (one loss per sample) in ``train_step`` and ``fit``: one ``ValueError`` on every backend
    before any step (Keras's trainer averaged it silently and trained; the others raised three different errors of
    their frameworks)."""
    model = ud.nn.Linear(3, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"train_step needs a loss that returns one number.*reduction='none'"):
        ud.train_step(model, ud.nn.CrossEntropyLoss(reduction="none"), optimizer)
    with pytest.raises(ValueError, match=r"fit needs a loss that returns one number.*reduction='none'"):
        ud.fit(model, (np.ones((4, 3), np.float32), np.zeros(4, np.int64)), loss=ud.nn.CrossEntropyLoss(
            reduction="none"), optimizer=optimizer, epochs=1, batch_size=2, verbose=0)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())



def test_an_empty_batch_is_refused_by_train_step(backend):
    """A batch of 0 samples: one ``ShapeMismatchError`` before the step on every backend. The frameworks differ
    there (torch returns a loss, TensorFlow's convolution gives a wrong shape in a graph, and the gradient of its
    pooling on an empty batch aborts the whole process)."""
    model = ud.nn.Sequential(ud.nn.Linear(8, 8), ud.nn.MaxPool2d(2))
    step = ud.train_step(model, ud.nn.MSELoss(reduction="sum"), ud.optim.SGD(model.parameters(), lr=0.1))
    x, y = np.ones((4, 1, 8, 8), np.float32), np.ones((4, 1, 4, 4), np.float32)
    step(x, y)
    with pytest.raises(ud.errors.ShapeMismatchError, match=r"train_step got an empty batch \(x of shape \(0, 1, 8, 8"):
        step(x[:0], y[:0])
    assert np.isfinite(float(ud.to_numpy(step(x, y))))


AXES = [  # (an op given an axis past its input's, what it says)
    (lambda x: ud.ops.transpose(x, 0, 3), "transpose dim1=3 is out of range for a tensor of 3 axes: it must lie in "
                                          r"\[-3, 2\]"),
    (lambda x: ud.ops.gather(x, 3, ud.ops.cast(x, "int64")), "gather dim=3 is out of range for a tensor of 3"),
    (lambda x: ud.ops.take(x, ud.tensor(np.array([0])), 3), "take axis=3 is out of range for a tensor of 3 axes"),
    (lambda x: ud.ops.squeeze(x, 4), "squeeze dim=4 is out of range"),
    (lambda x: ud.ops.unsqueeze(x, 5), "unsqueeze dim=5 is out of range for a tensor of 3 axes: it must lie in "
                                       r"\[-4, 3\]"),
    (lambda x: ud.ops.stack([x, x], -5), "stack axis=-5 is out of range"),
    (lambda x: ud.ops.concat([x, x], 3), "concat axis=3 is out of range"),
    (lambda x: ud.ops.mean(x, (0, 3)), "mean axis=3 is out of range"),
    (lambda x: ud.ops.argmax(x, -4), "argmax dim=-4 is out of range"),
    (lambda x: ud.ops.amax(x, 3), "amax dim=3 is out of range"),
    (lambda x: ud.ops.softmax(x, 3), "softmax dim=3 is out of range"),
    (lambda x: ud.nn.LogSoftmax(-4)(x), r"LogSoftmax\(dim=-4\) dim=-4 is out of range"),
]


@pytest.mark.parametrize("index", range(len(AXES)))
def test_an_axis_past_the_inputs_is_one_error_as_torchs(mode, index):
    """An axis outside [-rank, rank - 1] is one ``AxisOutOfRangeError`` (an ``IndexError``, as PyTorch's "Dimension
    out of range"), eagerly and in graphs: the frameworks wrapped some silently (``transpose(x, 0, 3)`` returned
    ``x``, ``gather`` along axis 0) and raised their own errors for the rest."""
    build, message = AXES[index]
    with pytest.raises(ud.AxisOutOfRangeError, match=message):
        run(mode, build, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ud.ShapeMismatchError, match=r"permute dims=\(0, 1, 1\) must name each of the 3 axes"):
        run(mode, lambda x: ud.ops.permute(x, (0, 1, 1)), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ud.AxisOutOfRangeError, match="sum axis=0: a 0-d tensor has no axes; give axis=None"):
        run(mode, lambda x: ud.ops.sum(x, 0), np.float32(2.0))
    assert run(mode, lambda x: ud.ops.unsqueeze(x, -1), np.float32(2.0)).shape == (1,)


def test_class_losses_and_attention_of_mismatched_sizes_are_one_error_in_a_graph_too(mode):
    """Logits for 2 samples and 3 labels, 2 class weights for 3 classes, and attention over features of another size:
    the eager ``ShapeMismatchError``, word for word, also inside a graph traced for any sizes (TensorFlow's
    slicing and matrix-size errors, and for the class weights no error: a loss)."""
    logits, labels = np.zeros((2, 3), np.float32), np.array([0, 1, 2])
    cases = [(ud.nn.CrossEntropyLoss(), (logits, labels), "CrossEntropyLoss needs logits of shape (N, C) and integer "
              "labels of shape (N,) (or (N, C, d1, ...) and (N, d1, ...)); got logits (2, 3) and labels (3,)"),
             (ud.nn.NLLLoss(), (logits, labels), "NLLLoss needs log-probabilities of shape (N, C) and integer labels "
              "of shape (N,) (or (N, C, d1, ...) and (N, d1, ...)); got (2, 3) and labels (3,)"),
             (ud.nn.CrossEntropyLoss(weight=[1.0, 2.0]), (logits, labels[:2]), "CrossEntropyLoss has 2 class weights "
              "but the input has 3 classes (shape (2, 3))"),
             (ud.nn.MultiheadAttention(4, 2), (np.zeros((3, 2, 5), np.float32),) * 3, "MultiheadAttention(embed_dim=4, "
              "num_heads=2, batch_first=False) expected query of shape (L, N, E) (or unbatched (L, E)) with E = 4, "
              "received (3, 2, 5)")]
    for layer, inputs, message in cases:
        raises_exactly(ud.ShapeMismatchError, message, lambda: run(mode, layer, *inputs))


def test_class_loss_ops_check_the_labels_and_weights_shapes_as_the_modules(mode):
    """``ud.ops.cross_entropy_loss`` and ``ud.ops.nll_loss`` check their labels, class probabilities and class weights
    as ``nn.CrossEntropyLoss`` and ``nn.NLLLoss`` do (``input_checks.class_loss_shapes``), word for word eagerly and
    in a graph: 3 labels for 5 rows were used as far as they went, (5, 1) labels and probabilities broadcast, 5 class
    weights for 4 classes were taken; one sample's (C,) against a label () is torch's unbatched loss."""
    rows = RNG.standard_normal((5, 4)).astype(np.float32)
    labels = "integer labels of shape (N,) (or (N, C, d1, ...) and (N, d1, ...)); got"
    cases = [(lambda x, y: ud.ops.cross_entropy_loss(x, y), (rows, np.array([0, 1, 2])), "cross_entropy_loss needs "
              f"logits of shape (N, C) and {labels} logits (5, 4) and labels (3,)"),
             (lambda x, y: ud.ops.cross_entropy_loss(x, y), (rows, np.zeros((5, 1), np.int64)), "cross_entropy_loss "
              f"needs logits of shape (N, C) and {labels} logits (5, 4) and labels (5, 1)"),
             (lambda x, y: ud.ops.cross_entropy_loss(x, y), (rows, np.full((5, 1), 0.25, np.float32)),
              "cross_entropy_loss needs logits of shape (N, C) and integer labels of shape (N,) or class probabilities "
              "of the logits' shape; got logits (5, 4) and class probabilities (5, 1)"),
             (lambda x, y: ud.ops.cross_entropy_loss(x, y, [2.0]), (rows, np.array([0, 1, 2, 3, 0])),
              "cross_entropy_loss has 1 class weights but the input has 4 classes (shape (5, 4))"),
             (lambda x, y: ud.ops.nll_loss(x, y), (rows, np.array([0, 1, 2])), "nll_loss needs log-probabilities of "
              f"shape (N, C) and {labels} (5, 4) and labels (3,)"),
             (lambda x, y: ud.ops.nll_loss(x, y, [1.0] * 5), (rows, np.array([0, 1, 2, 3, 0])),
              "nll_loss has 5 class weights but the input has 4 classes (shape (5, 4))")]
    for fn, inputs, message in cases:
        raises_exactly(ud.ShapeMismatchError, message, run, mode, fn, *inputs)
    for reduction in ("mean", "none"):
        expected = F.nll_loss(torch.tensor(rows[0]), torch.tensor(2), reduction=reduction).numpy()
        got = run(mode, lambda x, y: ud.ops.nll_loss(x, y, reduction=reduction), rows[0], np.array(2))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        expected = F.cross_entropy(torch.tensor(rows[0]), torch.tensor(2), reduction=reduction).numpy()
        got = run(mode, lambda x, y: ud.ops.cross_entropy_loss(x, y, reduction=reduction), rows[0], np.array(2))
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_labels_of_another_rank_are_one_error_in_a_graph_too(mode):
    """(N, 1) labels to the fused cross-entropy (``ud.ops.cross_entropy``, ``CrossEntropyLoss`` without options) are
    the ``ShapeMismatchError`` naming both shapes inside a TensorFlow graph too (TensorFlow's kernel raised its own
    ``ValueError`` while it traced), and float (N, C) labels to ``NLLLoss`` the ``DtypeMismatchError`` of
    ``ud.ops.nll_loss``, eagerly too (eagerly a ``ShapeMismatchError``, in a graph this one). Labels or logits of a
    rank the graph does not know (``squeeze()`` without dim) are no error there: both give PyTorch's loss (the module
    raised TensorFlow's ``ValueError`` while it traced, the op did not)."""
    rows = RNG.standard_normal((5, 4)).astype(np.float32)
    column = np.array([[0], [3], [1], [2], [0]])
    expected = F.cross_entropy(torch.tensor(rows), torch.tensor(column[:, 0])).numpy()
    for loss in (ud.ops.cross_entropy, ud.nn.CrossEntropyLoss()):
        np.testing.assert_allclose(run(mode, lambda z, y: loss(z, ud.ops.squeeze(y)), rows, column), expected, 1e-6)
        np.testing.assert_allclose(run(mode, lambda z, y: loss(ud.ops.squeeze(z), y), rows, column[:, 0]), expected,
                                   1e-6)
    shapes = "integer labels of shape (N,) (or (N, C, d1, ...) and (N, d1, ...)); got logits (5, 4) and labels (5, 1)"
    raises_exactly(ud.ShapeMismatchError, f"cross_entropy needs logits of shape (N, C) and {shapes}",
                   run, mode, ud.ops.cross_entropy, rows, column)
    raises_exactly(ud.ShapeMismatchError, f"CrossEntropyLoss needs logits of shape (N, C) and {shapes}",
                   run, mode, ud.nn.CrossEntropyLoss(), rows, column)
    raises_exactly(ud.DtypeMismatchError, "NLLLoss: labels must be integers, got float32 labels; convert them with "
                   "ud.ops.cast(labels, 'int64')", run, mode, ud.nn.NLLLoss(), rows, np.zeros((5, 4), np.float32))


@pytest.mark.parametrize("loss", ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "bce_with_logits",
                                  "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
                                  "cross_entropy_loss", "nll_loss"])
def test_functional_losses_refuse_an_unknown_reduction(mode, loss):
    """An unknown ``reduction`` ('meen'; 'batchmean' but for ``kl_div``) is a ``ValueError`` naming the valid values, as
    torch.nn.functional's losses and unidl's loss modules raise (the ops took it for 'none', or some backends for
    'sum')."""
    rows, labels = np.full((2, 3), 0.25, np.float32), np.array([0, 2])
    target = labels if loss in ("cross_entropy", "cross_entropy_loss", "nll_loss") else rows
    valid = ("mean", "sum", "none") + (("batchmean",) if loss == "kl_div" else ())
    for reduction in ("meen",) + (() if loss == "kl_div" else ("batchmean",)):
        raises_exactly(ValueError, f"{loss} reduction must be one of {valid}, got {reduction!r}",
                       run, mode, lambda x, y: getattr(ud.ops, loss)(x, y, reduction=reduction), rows, target)


def test_gelu_refuses_an_unknown_approximation(mode):
    """``ud.ops.gelu(x, approximate='tan')`` is a ``ValueError`` naming the valid values, as torch's (TensorFlow, JAX
    and Keras gave the exact GELU)."""
    raises_exactly(ValueError, "gelu approximate must be 'none' or 'tanh', got 'tan'",
                   run, mode, lambda x: ud.ops.gelu(x, approximate="tan"), X)
    np.testing.assert_allclose(run(mode, lambda x: ud.ops.gelu(x, approximate="tanh"), X),
                               F.gelu(torch.tensor(X), approximate="tanh").numpy(), rtol=1e-5, atol=1e-6)


def test_same_padding_of_a_strided_convolution_is_refused(mode):
    """``conv1d``/``conv2d(padding='same', stride=2)`` is a ``ValueError``, as torch's ("padding='same' is not supported
    for strided convolutions") and the layers' (TensorFlow, JAX and Keras padded as TensorFlow's SAME)."""
    weight = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    raises_exactly(ValueError, "conv2d padding='same' needs stride=1, got stride=(2, 1)",
                   run, mode, lambda x, w: ud.ops.conv2d(x, w, None, (2, 1), "same"), X, weight)
    raises_exactly(ValueError, "conv1d padding='same' needs stride=1, got stride=2",
                   run, mode, lambda x, w: ud.ops.conv1d(x, w, None, 2, "same"), X[:, :, 0], weight[:, :, 0])
    got = run(mode, lambda x, w: ud.ops.conv2d(x, w, None, 1, "same", 2), X, weight)
    np.testing.assert_allclose(got, F.conv2d(torch.tensor(X), torch.tensor(weight), None, 1, "same", 2).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_conv_transpose2d_refuses_an_output_padding_not_smaller_than_stride_or_dilation(mode):
    """``ud.ops.conv_transpose2d`` with ``output_padding`` >= max(stride, dilation) on an axis is a ``ValueError``, as
    torch's and ``nn.ConvTranspose2d``'s (the ops gave an output of that size)."""
    weight = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    raises_exactly(ValueError, "conv_transpose2d output_padding (2, 0) must be smaller than stride (2, 2) or dilation "
                   "(1, 1) on each axis", run, mode, lambda x, w: ud.ops.conv_transpose2d(x, w, None, 2, 0, (2, 0)),
                   SMALL, weight)
    kernel = ud.tensor(weight)  # (a weight of known shape: a parameter's, in a graph too)
    got = run(mode, lambda x: ud.ops.conv_transpose2d(x, kernel, None, 1, 0, 1, 1, 2), SMALL)
    expected = F.conv_transpose2d(torch.tensor(SMALL), torch.tensor(weight), None, 1, 0, 1, 1, 2).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_functional_losses_refuse_arguments_out_of_their_domain(mode):
    """``cross_entropy_loss`` ``label_smoothing`` outside [0, 1], ``huber_loss`` ``delta`` <= 0 and ``smooth_l1_loss``
    ``beta`` < 0 are ``ValueError``s, as torch's (above 1, <= 0, < 0) and the loss modules' (the ops computed them)."""
    rows, labels = np.full((2, 3), 0.25, np.float32), np.array([0, 2])
    cases = [(lambda x, y: ud.ops.cross_entropy_loss(x, y, label_smoothing=1.5), labels,
              "cross_entropy_loss label_smoothing must lie in [0, 1], got 1.5"),
             (lambda x, y: ud.ops.cross_entropy_loss(x, y, label_smoothing=-0.1), labels,
              "cross_entropy_loss label_smoothing must lie in [0, 1], got -0.1"),
             (lambda x, y: ud.ops.huber_loss(x, y, delta=0.0), rows, "huber_loss delta must be positive, got 0.0"),
             (lambda x, y: ud.ops.smooth_l1_loss(x, y, beta=-1.0), rows,
              "smooth_l1_loss beta must be non-negative, got -1.0")]
    for fn, target, message in cases:
        raises_exactly(ValueError, message, run, mode, fn, rows, target)


def test_loss_arguments_given_as_0d_tensors_are_taken_as_torch(mode):
    """A ``delta``, ``beta`` or ``label_smoothing`` given as a 0-d tensor (a scheduled value, a graph's input), of
    float32 or float64, is taken as its number eagerly and in a graph, 0 included (``beta`` and ``label_smoothing``
    were branched on in Python: a graph's were a ``GraphConstructError``); ``beta`` 0 is L1, with L1's gradient."""
    import torch

    rows, targets, labels = np.array([[0.1, 2.0, -1.0]], np.float32), np.zeros((1, 3), np.float32), np.array([1])
    probabilities = np.array([[0.2, 0.5, 0.3]], np.float32)
    F = torch.nn.functional
    for value in (0.5, 0.0):
        cases = [(lambda x, y, v: ud.ops.smooth_l1_loss(x, y, beta=v), targets,
                  F.smooth_l1_loss(torch.tensor(rows), torch.tensor(targets), beta=value)),
                 (lambda x, y, v: ud.ops.cross_entropy_loss(x, y, label_smoothing=v), labels,
                  F.cross_entropy(torch.tensor(rows), torch.tensor(labels), label_smoothing=value)),
                 (lambda x, y, v: ud.ops.cross_entropy_loss(x, y, label_smoothing=v), probabilities,
                  F.cross_entropy(torch.tensor(rows), torch.tensor(probabilities), label_smoothing=value))]
        if value:
            cases.append((lambda x, y, v: ud.ops.huber_loss(x, y, delta=v), targets,
                          F.huber_loss(torch.tensor(rows), torch.tensor(targets), delta=value)))
        table = [(fn, target, dtype, expected) for fn, target, expected in cases for dtype in (np.float32, np.float64)]
        inputs = [array for _, target, dtype, _ in table for array in (target, dtype(value))]
        # (the table in one ud.function: one trace or compile for each value, not one a row)
        results = run_each(mode, [lambda x, *given, at=at, fn=fn: fn(x, given[2 * at], given[2 * at + 1])
                                  for at, (fn, *_) in enumerate(table)], rows, *inputs)

        def check(row):
            at, _ = row
            np.testing.assert_allclose(results[at], table[at][3].item(), rtol=1e-6)

        check_rows([(at, f"{value} as {np.dtype(dtype).name}") for at, (_, _, dtype, _) in enumerate(table)], check)
    smoothed = ud.function(lambda x, p, v: ud.ops.cross_entropy_loss(x, p, label_smoothing=v)) if mode == "graph" \
        else (lambda x, p, v: ud.ops.cross_entropy_loss(x, p, label_smoothing=v))
    double = smoothed(ud.tensor(rows), ud.tensor(probabilities, dtype="float64"), ud.tensor(np.float32(0.5)))
    assert ud.to_numpy(double).dtype == np.float64  # (float64 probabilities beside a float32 smoothing: promoted)
    np.testing.assert_allclose(ud.to_numpy(double), F.cross_entropy(
        torch.tensor(rows), torch.tensor(probabilities, dtype=torch.float64), label_smoothing=0.5).item(), rtol=1e-6)
    beta = ud.tensor(np.float32(0.0))
    gradient = ud.grad(lambda x: ud.ops.smooth_l1_loss(x, ud.tensor(targets), beta=beta))
    gradient = ud.function(gradient) if mode == "graph" else gradient
    np.testing.assert_array_equal(ud.to_numpy(gradient(ud.tensor(rows))), np.sign(rows) / 3)


def test_interpolate_to_an_output_of_size_0_is_refused(mode):
    """``interpolate`` whose ``scale_factor`` gives an output size of 0 is a ``ShapeMismatchError`` (a ``ValueError``)
    eagerly and in a graph, as torch refuses it (the frameworks gave an empty tensor)."""
    raises_exactly(ud.ShapeMismatchError, "interpolate scale_factor=0.1 gives an output of size (0, 0) from the "
                   "input's spatial size (5, 5): every size must be at least 1; give a larger scale_factor, or size",
                   run, mode, lambda x: ud.ops.interpolate(x, scale_factor=0.1), X)


@pytest.mark.parametrize("name", [n for n in ("tensorflow", "keras") if n in backends_under_test()])
def test_dropout_after_a_checked_layer_in_the_first_graph_of_a_process(name):
    """The backends that make their dropout generator at its first draw (as in a fresh process), that draw inside a
    graph after a layer whose shape check is an op of it (TensorFlow: an Assert, which the generator's seed
    followed): it traces and draws (TensorFlow could not lift the generator out of the graph: UnliftableError)."""
    from unidl import config

    with ud.use_backend(name):
        native = config.backend()
        kept, native._generator = native._generator, None
        try:
            model = ud.nn.Sequential(ud.nn.Linear(4, 4), ud.nn.Dropout(0.5))
            out = ud.to_numpy(ud.function(lambda a: model(a))(ud.tensor(np.ones((64, 4), np.float32))))
            assert out.shape == (64, 4) and 0 < (out == 0).mean() < 1
        finally:
            if kept is not None:
                native._generator = kept


def test_integer_mean_and_clip_with_float_bounds_give_floats(mode):
    """The mean of integers, and integers clipped to float bounds, in the float dtype in force on every backend
    (PyTorch's promotion for ``clamp``; tensorflow truncated both to integers, torch refused the mean)."""
    values = np.array([1, 2, 4, -3])
    assert np.allclose(run(mode, lambda v: ud.ops.mean(v), values), 1.0)
    clipped = run(mode, lambda v: ud.ops.clip(v, 0.5, 1.5), values)
    assert clipped.dtype == np.float32 and np.array_equal(clipped, [1.0, 1.5, 1.5, 0.5])
    clipped = run(mode, lambda v: ud.ops.clip(v, np.float32(0.5)), values)  # a NumPy float bound too
    assert clipped.dtype == np.float32 and np.array_equal(clipped, [1.0, 2.0, 4.0, 0.5])
    with ud.use_dtype("float64"):  # the float dtype in force (torch's clamp promoted to float32)
        assert run(mode, lambda v: ud.ops.clip(v, 0.5), values).dtype == np.float64


def test_integer_targets_of_a_binary_cross_entropy_are_refused(mode):
    """``BCEWithLogitsLoss`` / ``BCELoss`` with integer or boolean targets: one ``DtypeMismatchError`` everywhere
    (torch raised its own error; tensorflow, keras and jax cast them and trained)."""
    logits, labels = X[0, 0], (X[0, 0] > 0).astype(np.int64)
    for loss in (ud.nn.BCEWithLogitsLoss(), ud.nn.BCELoss()):
        raises_exactly(ud.errors.DtypeMismatchError, f"{type(loss).__name__} needs floating-point targets (0/1 or "
                       f"probabilities), got int64; convert them, e.g. y.astype('float32') or ud.ops.cast(y, "
                       f"'float32')", run, mode, lambda x, y: loss(ud.ops.sigmoid(x), y), logits, labels)


@pytest.mark.parametrize("stride, padding, groups", [(1, 0, 1), (2, 1, 1), (1, "same", 2)])
def test_a_convolution_of_an_empty_batch_has_torchs_shape(mode, stride, padding, groups):
    """``Conv2d`` over 0 samples gives (0, C_out, H_out, W_out) and zero weight gradients as torch does, eagerly and in
    ``ud.function`` (TensorFlow's CPU convolution handed back the input's shape: eagerly to its bias add's error, in a
    graph silently; ``ud.function`` traces an empty input's graph for its exact shapes)."""
    layer = ud.nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups)
    empty = np.zeros((0, 4, 7, 7), np.float32)
    expected = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups)(torch.tensor(empty)).shape
    assert run(mode, lambda x: layer(x), empty).shape == tuple(expected)
    value_and_grads = ud.value_and_grad(lambda x: ud.ops.sum(layer(x)), layer.parameters())
    _, grads = (ud.function(value_and_grads) if mode == "graph" else value_and_grads)(ud.tensor(empty))
    for grad, parameter in zip(grads, layer.parameters()):
        np.testing.assert_array_equal(ud.to_numpy(grad), np.zeros(tuple(parameter.shape), np.float32))


def test_flatten_of_an_empty_batch_has_torchs_shape(mode):
    """``Flatten`` over 0 samples gives (0, C*H*W) as torch does (jax raised ``ZeroDivisionError``)."""
    assert run(mode, lambda x: ud.nn.Flatten()(x), np.zeros((0, 3, 4, 5), np.float32)).shape == (0, 60)


def test_a_transposed_convolution_of_an_empty_batch_has_torchs_shape(mode):
    """``ConvTranspose2d`` over 0 samples (a convolution of the spread input: the same TensorFlow kernel)."""
    layer = ud.nn.ConvTranspose2d(3, 2, 3, stride=2)
    empty = np.zeros((0, 3, 7, 7), np.float32)
    assert run(mode, lambda x: layer(x), empty).shape == tuple(torch.nn.ConvTranspose2d(3, 2, 3, stride=2)(
        torch.tensor(empty)).shape)


def test_group_norm_of_an_empty_batch_has_torchs_shape(mode):
    """``GroupNorm`` over 0 samples gives an empty output as plain ``torch.nn.GroupNorm`` does (unidl's torch and jax
    raised, inferring a -1 size from no elements; tensorflow and keras computed)."""
    layer = ud.nn.GroupNorm(2, 4)
    assert run(mode, lambda x: layer(x), np.zeros((0, 4, 3, 3), np.float32)).shape == (0, 4, 3, 3)
    nonempty = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    expected = torch.nn.GroupNorm(2, 4)(torch.tensor(nonempty)).detach().numpy()
    np.testing.assert_allclose(run(mode, lambda x: layer(x), nonempty), expected, rtol=1e-5, atol=1e-5)


def test_the_gradient_of_pooling_over_an_empty_batch(mode):
    """The gradient through max and average pooling over 0 samples is empty on every backend, eagerly and in
    ``ud.function`` (TensorFlow's CPU pooling gradient aborted the whole process, in a graph traced for any batch
    size; ``ud.function`` now traces an empty input's graph for its exact shapes)."""
    empty = np.zeros((0, 2, 6, 6), np.float32)
    for pool, oracle in ((ud.nn.MaxPool2d(2), torch.nn.MaxPool2d(2)), (ud.nn.AvgPool2d(2, padding=1),
                                                                       torch.nn.AvgPool2d(2, padding=1))):
        gradient = ud.grad(lambda x: ud.ops.sum(pool(x)))
        assert run(mode, gradient, empty).shape == (0, 2, 6, 6)
        assert run(mode, lambda x: pool(x), empty).shape == tuple(oracle(torch.tensor(empty)).shape)


def test_the_bce_ops_take_integer_targets_as_floats(mode):
    """``ud.ops.bce_with_logits`` and ``ud.ops.binary_cross_entropy`` (the ops, not the loss modules, which refuse
    them) take 0/1 integer targets in the input's dtype on every backend (torch's raised its own error)."""
    logits, labels = X[0, 0], (X[0, 0] > 0).astype(np.int64)
    expected = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels, dtype=torch.float32))
    assert np.allclose(run(mode, lambda x, y: ud.ops.bce_with_logits(x, y), logits, labels), expected.numpy(),
                       rtol=1e-5)
    expected = F.binary_cross_entropy(torch.sigmoid(torch.tensor(logits)), torch.tensor(labels, dtype=torch.float32))
    assert np.allclose(run(mode, lambda x, y: ud.ops.binary_cross_entropy(ud.ops.sigmoid(x), y), logits, labels),
                       expected.numpy(), rtol=1e-5)


def test_the_bce_ops_of_targets_of_another_shape_are_one_error(mode):
    """``ud.ops.bce_with_logits`` and ``ud.ops.binary_cross_entropy`` of targets of another shape than their input
    are a ``ShapeMismatchError`` (a ``ValueError``), as PyTorch's refuse them (JAX and Keras broadcast them, and the
    torch backend's ``binary_cross_entropy`` did too); a class ``weight`` still broadcasts."""
    logits, targets = X[0, 0, :3, :2], np.ones(2, np.float32)
    for oracle in (F.binary_cross_entropy_with_logits, lambda x, t: F.binary_cross_entropy(torch.sigmoid(x), t)):
        with pytest.raises(ValueError):
            oracle(torch.tensor(logits), torch.tensor(targets))
    raises_exactly(ud.ShapeMismatchError, "bce_with_logits needs logits and targets of the same shape; logits has "
                   "shape (3, 2), targets has shape (2,)", run, mode, lambda x, y: ud.ops.bce_with_logits(x, y),
                   logits, targets)
    raises_exactly(ud.ShapeMismatchError, "binary_cross_entropy needs probabilities and target of the same shape; "
                   "probabilities has shape (3, 2), target has shape (2,)",
                   run, mode, lambda x, y: ud.ops.binary_cross_entropy(ud.ops.sigmoid(x), y), logits, targets)
    weighted = run(mode, lambda x, w: ud.ops.binary_cross_entropy(ud.ops.sigmoid(x), x * 0 + 1, w), logits, targets)
    expected = F.binary_cross_entropy(torch.sigmoid(torch.tensor(logits)), torch.ones(3, 2), torch.tensor(targets))
    np.testing.assert_allclose(weighted, expected.numpy(), rtol=1e-6)


def test_a_bce_weight_or_pos_weight_that_does_not_broadcast_to_the_input_is_one_error(mode):
    """A class ``weight`` of ``binary_cross_entropy`` or ``BCEWithLogitsLoss``, or its ``pos_weight``, that does not
    broadcast to the input's shape is a ``ShapeMismatchError`` naming both shapes, as PyTorch refuses it (the
    frameworks raised each their own error, or broadcast the loss to a larger shape); one that does is used as
    PyTorch uses it, through ``ud.ops.binary_cross_entropy_with_logits`` too."""
    logits, targets = X[0, 0, :3, :2], np.ones((3, 2), np.float32)
    with pytest.raises(RuntimeError):
        F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(targets), pos_weight=torch.ones(3))
    losses = ud.nn.BCEWithLogitsLoss(pos_weight=[1.0, 2.0, 3.0]), ud.nn.BCEWithLogitsLoss(weight=np.ones((4, 3, 2)))
    raises_exactly(ud.ShapeMismatchError, "binary_cross_entropy_with_logits: pos_weight of shape (3,) does not "
                   "broadcast to the input's shape (3, 2)", run, mode, lambda x, y: losses[0](x, y), logits, targets)
    raises_exactly(ud.ShapeMismatchError, "binary_cross_entropy_with_logits: weight of shape (4, 3, 2) does not "
                   "broadcast to the input's shape (3, 2)", run, mode, lambda x, y: losses[1](x, y), logits, targets)
    raises_exactly(ud.ShapeMismatchError, "binary_cross_entropy: weight of shape (3,) does not broadcast to the "
                   "input's shape (3, 2)", run, mode,
                   lambda x, y: ud.ops.binary_cross_entropy(ud.ops.sigmoid(x), y, [1.0, 2.0, 3.0]), logits, targets)
    got = run(mode, lambda x, y: ud.ops.binary_cross_entropy_with_logits(x, y, [[2.0], [1.0], [0.5]],
                                                                           pos_weight=[3.0, 0.5]), logits, targets)
    expected = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(targets),
                                                  torch.tensor([[2.0], [1.0], [0.5]]),
                                                  pos_weight=torch.tensor([3.0, 0.5]))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)
    weighted = ud.nn.BCEWithLogitsLoss(weight=[2.0, 0.5], pos_weight=[3.0, 0.5])  # (float32 buffers)
    wide = run(mode, lambda x, y: weighted(ud.ops.cast(x, "float64"), ud.ops.cast(y, "float64")), logits, targets)
    expected = torch.nn.BCEWithLogitsLoss(weight=torch.tensor([2.0, 0.5]), pos_weight=torch.tensor([3.0, 0.5]))(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64))
    assert wide.dtype == np.float64  # (float64 logits: the loss in float64, as PyTorch promotes the buffers)
    np.testing.assert_allclose(wide, expected.numpy(), rtol=1e-6)


def test_a_class_weight_of_another_dtype_than_the_logits_is_one_error_beside_labels(mode):
    """Beside class labels, a class ``weight`` tensor of another dtype than the logits (a loss built while float32
    was in force, called on float64 logits) is a ``DtypeMismatchError``, as PyTorch refuses it (torch's backend
    and JAX promoted the loss to float64, TensorFlow and Keras raised their own errors), but a bfloat16 weight
    beside float32 logits under autocast, which casts it as torch.autocast does. Beside class probabilities the
    three dtypes promote, as in PyTorch (a float64 target gave a float32 loss)."""
    logits, labels, weight = X[0, 0, :4, :3], np.array([0, 1, 2, 1]), [1.0, 2.0, 0.5]
    wide = torch.tensor(logits, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="expected scalar type Double but found Float"):
        F.cross_entropy(wide, torch.tensor(labels), torch.tensor(weight))
    message = ("{}: a class weight must have the {} dtype float64, got float32; cast it with ud.ops.cast(weight, "
               "'float64'), or build the loss under ud.use_dtype('float64'), which makes its weight float64")
    losses = (ud.nn.CrossEntropyLoss(weight=weight), ud.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1),
              ud.nn.NLLLoss(weight=weight))
    for loss, owner, what in zip(losses, ("CrossEntropyLoss", "CrossEntropyLoss", "NLLLoss"),
                                 ("logits'", "logits'", "log-probabilities'")):
        raises_exactly(ud.DtypeMismatchError, message.format(owner, what), run, mode,
                       lambda x, y: loss(ud.ops.cast(x, "float64"), y), logits, labels)
    half = np.asarray(weight, np.float32)  # (exact in bfloat16)
    with autocast_modules([], ud.config.backend().ops, "bfloat16"):
        got = run(mode, lambda x, y, w: ud.ops.cross_entropy_loss(x, y, ud.ops.cast(w, "bfloat16")), logits, labels,
                  half)
    np.testing.assert_allclose(got, F.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                                    torch.tensor(weight)).numpy(), rtol=1e-6)
    probabilities = np.asarray(torch.softmax(torch.tensor(logits) * 2, 1))
    for smoothing in (0.0, 0.1):
        wide_loss = run(mode, lambda x, p: losses[0 if not smoothing else 1](x, ud.ops.cast(p, "float64")), logits,
                        probabilities)
        expected = F.cross_entropy(torch.tensor(logits), torch.tensor(probabilities, dtype=torch.float64),
                                   torch.tensor(weight), label_smoothing=smoothing)
        assert wide_loss.dtype == np.float64 and expected.dtype == torch.float64
        np.testing.assert_allclose(wide_loss, expected.numpy(), rtol=1e-6)


#: (a loss module holding weights w (3,), torch.nn's, what it takes: logits and labels or 0/1 targets)
WEIGHTED_LOSSES = {
    "CrossEntropyLoss": (lambda w: ud.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1),
                         lambda w: torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1), "labels"),
    "NLLLoss": (lambda w: ud.nn.NLLLoss(weight=w), lambda w: torch.nn.NLLLoss(weight=w), "labels"),
    "MultiMarginLoss": (lambda w: ud.nn.MultiMarginLoss(weight=w), lambda w: torch.nn.MultiMarginLoss(weight=w),
                        "labels"),
    "BCEWithLogitsLoss": (lambda w: ud.nn.BCEWithLogitsLoss(weight=w, pos_weight=w),
                          lambda w: torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=w), "targets"),
    "BCELoss": (lambda w: lambda x, t: ud.nn.BCELoss(weight=w)(ud.ops.sigmoid(x), t),
                lambda w: lambda x, t: torch.nn.BCELoss(weight=w)(torch.sigmoid(x), t), "targets"),
    "MultiLabelSoftMarginLoss": (lambda w: ud.nn.MultiLabelSoftMarginLoss(weight=w),
                                 lambda w: torch.nn.MultiLabelSoftMarginLoss(weight=w), "targets"),
}


def test_a_weighted_loss_built_inside_a_function_gives_torchs_value(mode):
    """A loss module holding weights (a class ``weight``, ``pos_weight``) built inside ``ud.function``, as a torch
    step may build it, with the weight a tensor passed to the function or made in it, gives torch.nn's value on
    every backend, as ``ud.ops.cross_entropy_loss`` with the weight does: tensorflow and keras raised a
    ``GraphConstructError`` whose advice (read values outside the function, write the ``if`` on the tensor) did
    not fit, and jax ran the function eagerly with a warning. The loss holds such a weight as the tensor of the
    graph it is. (A NumPy weight becomes a buffer there too, a variable that a TensorFlow graph cannot create:
    tests/test_function.py.)"""
    x, labels = X[0, 0, :4, :3], np.array([0, 2, 1, 2])
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], np.float32)
    weight = np.array([1.0, 2.0, 0.5], np.float32)
    sources = {"passed": lambda w: w, "made inside": lambda w: ud.tensor(weight)}
    rows = [(name, source) for name in WEIGHTED_LOSSES for source in sources]

    def loss_of(name, source):
        make, _, target = WEIGHTED_LOSSES[name]
        return lambda x, y, t, w: make(sources[source](w))(x, y if target == "labels" else t)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ud.RetraceWarning)  # (not run eagerly instead of compiled)
        got = run_each(mode, [loss_of(*row) for row in rows], x, labels, targets, weight)

    def check(row):
        name, source = row
        _, make, target = WEIGHTED_LOSSES[name]
        expected = make(torch.tensor(weight))(torch.tensor(x), torch.tensor(labels if target == "labels" else targets))
        np.testing.assert_allclose(got[rows.index(row)], expected.numpy(), rtol=1e-5)

    check_rows(rows, check)


def test_argmax_counts_nan_as_the_largest_value(mode):
    """``ud.ops.argmax`` over rows with NaN gives the first NaN's index, as torch (tensorflow and keras skipped NaN)."""
    values = np.array([[1.0, np.nan, 3.0, np.nan], [1.0, 5.0, 3.0, 2.0], [np.inf, 0.0, np.nan, 1.0]], np.float32)
    assert np.array_equal(run(mode, lambda v: ud.ops.argmax(v, 1), values), torch.argmax(torch.tensor(values), 1))
    assert int(run(mode, lambda v: ud.ops.argmax(v), values)) == int(torch.argmax(torch.tensor(values)))
    assert np.array_equal(run(mode, lambda v: ud.ops.argmax(v, 1, keepdim=True), values),
                          torch.argmax(torch.tensor(values), 1, keepdim=True))


# ---- pad: PyTorch's limits on every backend (TensorFlow and JAX padded more; a negative amount crops) --------

PAD_ERRORS = [  # (input shape, pad, mode, value, error, message); torch refuses each, in its own words
    ((1, 1, 2, 5), (1, 1), "reflect", 0, ValueError,
     "pad mode 'reflect' pads the last 1, 2 or 3 axes of an input with one or two more axes (a pad of length 2 takes "
     "a 2-D or 3-D input, 4 a 3-D or 4-D one, 6 a 4-D or 5-D one), as in PyTorch; got a pad of length 2 for a 4-D "
     "input"),
    ((1, 2, 5), (5, 0), "reflect", 0, ud.ShapeMismatchError,
     "pad mode 'reflect': the pad (5, 0) of axis 2 is not shorter than the axis (axis size 5, input shape (1, 2, 5))"),
    ((1, 2, 5), (0, 6), "circular", 0, ud.ShapeMismatchError,
     "pad mode 'circular': the pad (0, 6) of axis 2 is longer than the axis (axis size 5, input shape (1, 2, 5))"),
    ((1, 2, 5), (-3, -3), "constant", 0, ud.ShapeMismatchError,
     "pad mode 'constant': the pad (-3, -3) of axis 2 crops more than the axis holds (axis size 5, input shape "
     "(1, 2, 5))"),
    ((1, 2, 5), (-5, 0), "reflect", 0, ud.ShapeMismatchError,
     "pad mode 'reflect': the pad (-5, 0) of axis 2 leaves no entry (axis size 5, input shape (1, 2, 5))"),
    ((1, 2, 0), (1, 1), "replicate", 0, ud.ShapeMismatchError,
     "pad mode 'replicate': the pad (1, 1) of axis 2 pads an empty axis (axis size 0, input shape (1, 2, 0))"),
    ((1, 2, 5), (1, 1) * 4, "constant", 0, ValueError,
     "pad (1, 1, 1, 1, 1, 1, 1, 1) pads 4 axes, but the input has 3"),
    ((1, 2, 5), (1,), "constant", 0, ud.PaddingLengthError,
     "pad (1,) has an odd length: it lists (before, after) pairs, last axis first"),
    ((1, 1, 1, 1, 2, 5), (1, 1) * 4, "replicate", 0, ud.PaddingLengthError,
     "pad mode 'replicate' pads the last 1, 2 or 3 axes (a pad of length 2, 4 or 6), as in PyTorch; got a pad of "
     "length 8"),
    ((1, 2, 5), (1, 1), "mirror", 0, ValueError,
     "pad mode 'mirror' is not one of 'constant', 'reflect', 'replicate', 'circular'"),
    ((1, 2, 5), (1, 1), "reflect", 1.0, ValueError,
     "pad mode 'reflect' takes no value (got value=1.0); the value is for mode 'constant'"),
]


@pytest.mark.parametrize("shape, amounts, pad_mode, value, error, message", PAD_ERRORS,
                         ids=[f"{m}-{a}" for _, a, m, *_ in PAD_ERRORS])
def test_a_pad_that_torch_refuses_is_one_error(mode, shape, amounts, pad_mode, value, error, message):
    x = np.ones(shape, np.float32)
    with pytest.raises(Exception):
        F.pad(torch.tensor(x), amounts, pad_mode, value)
    raises_exactly(error, message, run, mode, lambda t: ud.ops.pad(t, amounts, pad_mode, value), x)


def test_a_negative_circular_pad_is_refused_where_torch_gives_garbage(mode):
    """PyTorch's circular pad with a negative amount returns values from memory it does not own."""
    raises_exactly(ValueError, "pad mode 'circular' takes no negative amounts, got (-1, 2) (PyTorch's circular pad "
                   "gives wrong values for them); crop the input by slicing first",
                   run, mode, lambda t: ud.ops.pad(t, (-1, 2), "circular"), np.ones((1, 2, 5), np.float32))


# ---- dtypes off the usual path: float indices, integers into float math, integers times floats ----------------

ROWS = RNG.standard_normal((4, 3)).astype(np.float32)
FLOAT_INDICES = np.array([0.0, 2.0], np.float32)


FLOAT_INDEX_CASES = [
    ("take", lambda x, i: ud.ops.take(x, i), "indices"),
    ("embedding", lambda x, i: ud.ops.embedding(i, x), "indices"),
    ("gather", lambda x, i: ud.ops.gather(x, 0, ud.ops.reshape(i, (2, 1))), "index"),
    ("one_hot", lambda x, i: ud.ops.one_hot(i, 3), "labels"),
    ("cross_entropy", lambda x, i: ud.ops.cross_entropy(x[:2], i), "labels"),
    ("NLLLoss", lambda x, i: ud.ops.nll_loss(x[:2], i), "labels"),
]


@pytest.mark.parametrize("name, fn, what", FLOAT_INDEX_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_float_indices_are_one_error(mode, name, fn, what):
    """Float indices or labels: one ``DtypeMismatchError`` (PyTorch and TensorFlow raised their own errors,
    TensorFlow's cross-entropy truncated float labels to classes, JAX's one_hot compared them as floats)."""
    raises_exactly(ud.DtypeMismatchError, f"{name}: {what} must be integers, got float32 {what}; convert them with "
                   f"ud.ops.cast({what}, 'int64')", run, mode, fn, ROWS, FLOAT_INDICES)


FLOAT_MATH = [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("exp", torch.exp), ("log", torch.log),
              ("sqrt", torch.sqrt), ("log1p", torch.log1p), ("softmax", lambda t: torch.softmax(t, -1)),
              ("log_softmax", lambda t: torch.log_softmax(t, -1)), ("gelu", F.gelu), ("silu", F.silu),
              ("elu", F.elu), ("softplus", F.softplus)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_integers_into_float_math_give_floats_of_the_dtype_in_force(mode, dtype):
    """``exp``, ``sqrt``, ``softmax``... of integers: floats in the dtype in force on every backend, as PyTorch's
    ``torch.exp`` of integers (TensorFlow refused them, JAX gave float64, Keras float32 under float64, PyTorch's
    softmax and gelu refused them)."""
    values = np.array([[1, 2, 4], [0, 3, 9]], np.int64)
    with ud.use_dtype(dtype):
        results = run_each(mode, [lambda x, name=name: getattr(ud.ops, name)(x) for name, _ in FLOAT_MATH], values)
        for (name, oracle), got in zip(FLOAT_MATH, results):
            expected = oracle(torch.tensor(values, dtype=getattr(torch, dtype))).numpy()
            assert got.dtype == np.dtype(dtype), name
            np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)


FLOAT_MATH_LAYERS = [(ud.nn.Sigmoid, torch.sigmoid), (ud.nn.Tanh, torch.tanh),
                     (lambda: ud.nn.Softmax(-1), lambda t: torch.softmax(t, -1)),
                     (lambda: ud.nn.LogSoftmax(-1), lambda t: torch.log_softmax(t, -1)), (ud.nn.GELU, F.gelu),
                     (ud.nn.SiLU, F.silu), (ud.nn.ELU, F.elu), (ud.nn.Softplus, F.softplus),
                     (lambda: ud.nn.LeakyReLU(0.1), lambda t: F.leaky_relu(t, 0.1)), (ud.nn.Mish, F.mish),
                     (ud.nn.Hardswish, F.hardswish), (ud.nn.SELU, F.selu), (ud.nn.LogSigmoid, F.logsigmoid),
                     (ud.nn.Softshrink, F.softshrink)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_layers_take_integers_and_booleans_as_their_functional_op(mode, dtype):
    """``nn.Sigmoid``, ``nn.GELU``, ``nn.LeakyReLU``... of integers or booleans: floats in the dtype in force, as
    their functional ops give (the layers handed them to the framework: TensorFlow, Keras and JAX refused them or
    JAX gave float64, and torch's backend gave float32 under float64 or refused them)."""
    values = np.array([[1, -2, 4], [0, 3, -9]], np.int64)
    with ud.use_dtype(dtype):
        layers = [build() for build, _ in FLOAT_MATH_LAYERS]
        for inputs in (values, values > 0):  # (one graph for the layers)
            results = run_each(mode, [lambda x, layer=layer: layer(x) for layer in layers], inputs)
            for layer, (_, oracle), got in zip(layers, FLOAT_MATH_LAYERS, results):
                expected = oracle(torch.tensor(inputs, dtype=getattr(torch, dtype))).numpy()
                assert got.dtype == np.dtype(dtype), (layer, inputs.dtype)
                # (float32: the parity tables' output bound; torch's AVX2 GELU is 2.4e-7 from erf's value at -2)
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=2e-6 if dtype == "float32" else 1e-12,
                                           err_msg=repr(layer))


def test_threshold_of_integers_keeps_them_as_torch(mode):
    """``Threshold`` and ``ud.ops.threshold`` of integers give integers, the threshold and the value truncated toward
    zero, as ``torch.nn.functional.threshold`` casts them (-1.5 is -1, not floor's -2; the other activations give
    floats); either outside the dtype's range or not finite is a ``ValueError`` naming it (torch's RuntimeError;
    they wrapped around); booleans are a ``DtypeMismatchError``, as every op torch has no boolean kernel for."""
    values = np.array([[1, -2, 4], [0, 3, -9], [-1, 2, -3]], np.int64)
    for threshold, value in ((1.5, -7.7), (-1.5, 9), (-0.5, 5)):
        expected = F.threshold(torch.tensor(values), threshold, value).numpy()
        for function in (ud.nn.Threshold(threshold, value), lambda x: ud.ops.threshold(x, threshold, value)):
            got = run(mode, function, values)
            assert got.dtype == np.int64 and np.array_equal(got, expected), (threshold, value, got)
    for threshold, value, message in ((1e10, 0, "threshold threshold 10000000000.0 lies outside the range of its int8"),
                                      (float("inf"), 0, "threshold threshold inf cannot be converted"),
                                      (0, float("nan"), "threshold value nan cannot be converted")):
        with pytest.raises(ValueError, match=message):
            run_tensors(mode, lambda x: ud.ops.threshold(x, threshold, value), ud.tensor(values, "int8"))
    with pytest.raises(ud.DtypeMismatchError, match="threshold needs numbers, got bool input"):
        run(mode, lambda x: ud.ops.threshold(x, 0.5, 1.0), values > 0)


def _shuffled(x):
    """The 32 values of ``x`` in another order (a tensor bound for a clip)."""
    return ud.ops.reshape(ud.ops.transpose(ud.ops.reshape(x, (4, 8)), 0, 1), (-1,))


def _shuffled_torch(t):
    return t.reshape(4, 8).T.reshape(-1)


BOOLEANS_REFUSED = [  # (name in the message, the op of x), each refused by torch for booleans (one lambda a line)
    ("relu", lambda x: ud.ops.relu(x)),
    ("abs", lambda x: ud.ops.abs(x)),
    ("argmax", lambda x: ud.ops.argmax(x)),
    ("argmax", lambda x: ud.ops.argmax(ud.ops.reshape(x, (4, 8)), 1, keepdim=True)),
    ("hardtanh", lambda x: ud.ops.hardtanh(x)),
    ("hardtanh", lambda x: ud.ops.relu6(x)),
    ("clip", lambda x: ud.ops.clip(x, True, None)),
    ("clip", lambda x: ud.ops.clip(x, None, True)),
    ("ReLU()", lambda x: ud.nn.ReLU()(x)),
    ("ReLU6()", lambda x: ud.nn.ReLU6()(x)),
    ("Hardtanh(min_val=-1.0, max_val=1.0)", lambda x: ud.nn.Hardtanh()(x)),
]
BOOLEANS_TAKEN = [  # (the op of x, torch's op), the booleans' results in torch's dtype (one lambda a line)
    (lambda x: ud.ops.sign(x), torch.sign),
    (lambda x: ud.ops.square(x), torch.square),
    (lambda x: ud.ops.clip(x, 0, 1), lambda t: torch.clip(t, 0, 1)),
    (lambda x: ud.ops.clip(x, None, 0), lambda t: torch.clip(t, None, 0)),
    (lambda x: ud.ops.clip(x, np.int8(1), True), lambda t: torch.clip(t, 1, True)),
    (lambda x: ud.ops.clip(x, 0.5, None), lambda t: torch.clip(t, 0.5, None)),
    (lambda x: ud.ops.clip(x, _shuffled(x), None), lambda t: torch.clip(t, _shuffled_torch(t))),
    (lambda x: ud.ops.clip(x, None, _shuffled(x)), lambda t: torch.clip(t, None, _shuffled_torch(t))),
    (lambda x: ud.ops.clip(x, ud.ops.cast(_shuffled(x), "int8"), None),
     lambda t: torch.clip(t, _shuffled_torch(t).to(torch.int8))),
]


@pytest.mark.parametrize("index", range(len(BOOLEANS_REFUSED)))
def test_booleans_into_an_op_torch_refuses_them_for_are_one_error(mode, index):
    """Booleans into ``relu``, ``abs``, ``argmax``, ``hardtanh`` (so ``relu6``) and their layers, or clipped to
    boolean bounds alone: one ``DtypeMismatchError``, as PyTorch has no boolean kernel for them (TensorFlow and Keras
    raised errors of their own, JAX gave int64 from relu, booleans from hardtanh and a clip, argmax 0)."""
    name, fn = BOOLEANS_REFUSED[index]
    raises_exactly(ud.DtypeMismatchError, f"{name} needs numbers, got bool input; convert it with ud.ops.cast(x, "
                   f"'uint8') or ud.ops.cast(x, 'float32')", run, mode, fn, BOOLS.ravel())


@pytest.mark.parametrize("index", range(len(BOOLEANS_TAKEN)))
def test_booleans_into_sign_square_and_clip_give_torchs_values(mode, index):
    """``sign`` of booleans is themselves, ``square`` int64, a clip to a number int64 (float32 for a float
    bound) and one to a tensor bound the dtype ``torch.clamp`` promotes the two to (booleans, int8), as in PyTorch
    (TensorFlow refused them all, Keras and JAX squared them in int32, JAX clipped them to booleans and refused
    their sign; the first fix of this made a tensor bound's clip int64). The same of NumPy booleans, which
    torch's backend failed on."""
    fn, oracle = BOOLEANS_TAKEN[index]
    expected = oracle(torch.tensor(BOOLS.ravel())).numpy()
    got = run(mode, fn, BOOLS.ravel())
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    if index < 6 and mode == "eager":
        np.testing.assert_array_equal(ud.to_numpy(fn(BOOLS.ravel())), expected)


def test_abs_sign_and_square_of_small_integers_keep_their_dtype_as_torch(mode):
    """``abs``, ``sign`` and ``square`` of uint8 and int8: torch's values in their own dtype, wrapping around as
    torch's (TensorFlow had no ``abs`` or ``sign`` kernel for uint8); a clip without a bound is a ``ValueError``,
    as in PyTorch (the other frameworks gave the input back)."""
    values = np.array([3, 200, 0, 12, 255])
    for dtype in ("uint8", "int8"):
        native = torch.tensor(values).to(getattr(torch, dtype))
        for name in ("abs", "sign", "square"):
            got = run(mode, lambda x: getattr(ud.ops, name)(ud.ops.cast(x, dtype)), values)
            expected = getattr(torch, name)(native).numpy()
            assert got.dtype == expected.dtype, (name, dtype)
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} {dtype}")
    raises_exactly(ValueError, "clip: give minimum or maximum (or both), as torch.clip needs one; both were None",
                   run, mode, lambda x: ud.ops.clip(x, None, None), values.astype(np.float32))
    raises_exactly(TypeError, "clip takes two numbers or two tensors as bounds (or one and None), as torch.clip, got "
                   "a tensor minimum and a number maximum", run, mode, lambda x: ud.ops.clip(x, x, 2), values)


def test_a_numpy_bool_bound_is_taken_as_pythons(mode):
    """A clip bound of ``np.True_`` is ``True`` (1), as torch takes either (it was a ``ValueError`` "must be a
    number" where Python's ``True`` was taken)."""
    values = np.array([-2.0, 0.5, 3.0], np.float32)
    for bounds in ((np.True_, None), (0, np.bool_(True)), (np.False_, np.True_)):
        expected = torch.clip(torch.tensor(values), *[None if b is None else bool(b) for b in bounds]).numpy()
        got = run(mode, lambda x, bounds=bounds: ud.ops.clip(x, *bounds), values)
        assert got.dtype == expected.dtype, bounds
        np.testing.assert_array_equal(got, expected)


def test_a_clip_to_tensor_bounds_of_another_dtype_is_one_error(mode):
    """``clip`` to a tensor bound of another dtype than the input's is one ``DtypeMismatchError`` (``torch.clamp``
    promotes the three by rules of their ranks and kinds; TensorFlow and JAX kept the input's dtype, Keras refused
    it, and a first promotion pair by pair wrapped 300 to 44); NumPy or list bounds are values in the input's dtype,
    rounded once (torch's backend raised, the others gave float64 or float32); a 0-d tensor beside a number is
    taken, as torch takes it."""
    values, low = np.array([-3, 0, 5, 100]), np.array([-1, 1, 1, 2])
    raises_exactly(ud.DtypeMismatchError, "clip of int8 input to a int64 minimum: give the bounds the input's dtype, "
                   "ud.ops.cast(minimum, 'int8')", run, mode,
                   lambda x, b: ud.ops.clip(ud.ops.cast(x, "int8"), b, None), values, low)
    raises_exactly(ud.DtypeMismatchError, "clip of float32 input to a float64 maximum: give the bounds the input's "
                   "dtype, ud.ops.cast(maximum, 'float32')", run, mode,
                   lambda x, b: ud.ops.clip(ud.ops.cast(x, "float32"), None, ud.ops.cast(b, "float64")), values, low)
    floats = np.array([-3.0, 0.0, 5.0, 100.0])
    for bound in (np.array([-1.0, 0.1, 1.0, 2.0]), [-1.0, 0.1, 1.0, 2.0]):
        expected = torch.clamp(torch.tensor(floats, dtype=torch.float64),
                               torch.tensor(np.asarray(bound), dtype=torch.float64)).numpy()
        got = run(mode, lambda x: ud.ops.clip(ud.ops.cast(x, "float64"), bound), floats)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)
    expected = torch.clamp(torch.tensor(floats, dtype=torch.float32), 0.0, torch.tensor(1.0)).numpy()
    got = run(mode, lambda x: ud.ops.clip(x, 0.0, ud.ops.sum(x) * 0 + 1), floats)
    np.testing.assert_array_equal(got, expected)


NUMPY_LOSSES = [  # (the loss op of a tensor t and NumPy arrays a (floats) and i (labels), torch's of the same)
    (lambda t, a, i: ud.ops.mse_loss(t, a), lambda t, a, i: F.mse_loss(t, a)),
    (lambda t, a, i: ud.ops.mse_loss(a, t), lambda t, a, i: F.mse_loss(a, t)),
    (lambda t, a, i: ud.ops.l1_loss(t, a), lambda t, a, i: F.l1_loss(t, a)),
    (lambda t, a, i: ud.ops.smooth_l1_loss(a, t), lambda t, a, i: F.smooth_l1_loss(a, t)),
    (lambda t, a, i: ud.ops.huber_loss(a, t), lambda t, a, i: F.huber_loss(a, t)),
    (lambda t, a, i: ud.ops.binary_cross_entropy(ud.ops.sigmoid(t), a),
     lambda t, a, i: F.binary_cross_entropy(torch.sigmoid(t), a)),
    (lambda t, a, i: ud.ops.binary_cross_entropy(a * 0.5, ud.ops.sigmoid(t)),
     lambda t, a, i: F.binary_cross_entropy(a * 0.5, torch.sigmoid(t))),
    (lambda t, a, i: ud.ops.bce_with_logits(t, a), lambda t, a, i: F.binary_cross_entropy_with_logits(t, a)),
    (lambda t, a, i: ud.ops.kl_div(t, a, "batchmean"), lambda t, a, i: F.kl_div(t, a, reduction="batchmean")),
    (lambda t, a, i: ud.ops.cross_entropy(ud.ops.reshape(t, (2, 3)), i),
     lambda t, a, i: F.cross_entropy(t.reshape(2, 3), i)),
    (lambda t, a, i: ud.ops.cross_entropy_loss(a.reshape(2, 3), i),
     lambda t, a, i: F.cross_entropy(a.reshape(2, 3), i)),
    (lambda t, a, i: ud.ops.nll_loss(a.reshape(2, 3), i), lambda t, a, i: F.nll_loss(a.reshape(2, 3), i)),
]


def test_loss_ops_take_numpy_arrays_as_the_loss_modules_do(mode):
    """A loss op's NumPy operand (a float64 target or prediction, int64 labels) is converted as ``ud.tensor``
    converts it, as the loss modules' calls convert theirs: float32 values on every backend, as torch's of float32
    tensors (TensorFlow, Keras and JAX gave float64, torch's backend raised ``TypeError`` or ``AttributeError``)."""
    values = np.array([0.25, 0.5, 0.75, 0.5, 0.125, 1.0])
    labels = np.array([2, 0])
    floats = torch.tensor(values, dtype=torch.float32)
    results = run_each(mode, [lambda t, fn=fn: fn(t, values, labels) for fn, _ in NUMPY_LOSSES], values[::-1].copy())
    for index, ((_, oracle), got) in enumerate(zip(NUMPY_LOSSES, results)):
        expected = oracle(torch.tensor(values[::-1].copy(), dtype=torch.float32), floats, torch.tensor(labels))
        assert got.dtype == np.float32, f"NUMPY_LOSSES[{index}]"
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, err_msg=f"NUMPY_LOSSES[{index}]")


NUMPY_OPS = [  # (the op of NumPy arrays a (2, 2) floats, q (1, 1, 2, 2) floats, i int64 indices; torch's of tensors)
    (lambda a, q, i: ud.ops.relu(a), lambda a, q, i: F.relu(a)),
    (lambda a, q, i: ud.ops.sigmoid(a), lambda a, q, i: torch.sigmoid(a)),
    (lambda a, q, i: ud.ops.softmax(a), lambda a, q, i: F.softmax(a, -1)),
    (lambda a, q, i: ud.ops.exp(a), lambda a, q, i: torch.exp(a)),
    (lambda a, q, i: ud.ops.abs(a), lambda a, q, i: torch.abs(a)),
    (lambda a, q, i: ud.ops.mean(a), lambda a, q, i: torch.mean(a)),
    (lambda a, q, i: ud.ops.sum(a, 1), lambda a, q, i: torch.sum(a, 1)),
    (lambda a, q, i: ud.ops.reshape(a, (4,)), lambda a, q, i: a.reshape(4)),
    (lambda a, q, i: ud.ops.matmul(a, a), lambda a, q, i: a @ a),
    (lambda a, q, i: ud.ops.linear(a, a, a[0]), lambda a, q, i: F.linear(a, a, a[0])),
    (lambda a, q, i: ud.ops.gelu(a), lambda a, q, i: F.gelu(a)),
    (lambda a, q, i: ud.ops.argmax(a, 1), lambda a, q, i: torch.argmax(a, 1)),
    (lambda a, q, i: ud.ops.square(a), lambda a, q, i: torch.square(a)),
    (lambda a, q, i: ud.ops.take(a, i, 0), lambda a, q, i: a[i]),
    (lambda a, q, i: ud.ops.concat([a, a], 1), lambda a, q, i: torch.cat([a, a], 1)),
    (lambda a, q, i: ud.ops.clip(a, 0.0, 0.5), lambda a, q, i: torch.clamp(a, 0.0, 0.5)),
    (lambda a, q, i: ud.ops.layer_norm(a, (2,)), lambda a, q, i: F.layer_norm(a, (2,))),
    (lambda a, q, i: ud.ops.zeros_like(a), lambda a, q, i: torch.zeros_like(a)),
    (lambda a, q, i: ud.ops.embedding(i, a), lambda a, q, i: F.embedding(i, a)),
    (lambda a, q, i: ud.ops.sign(a), lambda a, q, i: torch.sign(a)),
    (lambda a, q, i: ud.ops.maximum(a, a[::-1]), lambda a, q, i: torch.maximum(a, a.flip(0))),
    (lambda a, q, i: ud.ops.where(a > 0, a, a[::-1]), lambda a, q, i: torch.where(a > 0, a, a.flip(0))),
    (lambda a, q, i: ud.ops.permute(a, (1, 0)), lambda a, q, i: a.permute(1, 0)),
    (lambda a, q, i: ud.ops.amax(a, 1), lambda a, q, i: torch.amax(a, 1)),
    (lambda a, q, i: ud.ops.conv2d(q, q), lambda a, q, i: F.conv2d(q, q)),
    (lambda a, q, i: ud.ops.max_pool2d(q, 2), lambda a, q, i: F.max_pool2d(q, 2)),
    (lambda a, q, i: ud.ops.interpolate(q, scale_factor=2), lambda a, q, i: F.interpolate(q, scale_factor=2)),
    (lambda a, q, i: ud.ops.adaptive_avg_pool2d(q, 1), lambda a, q, i: F.adaptive_avg_pool2d(q, 1)),
    (lambda a, q, i: ud.ops.group_norm(q, 1), lambda a, q, i: F.group_norm(q, 1)),
    (lambda a, q, i: ud.ops.pad(a, (1, 1)), lambda a, q, i: F.pad(a, (1, 1))),
    (lambda a, q, i: ud.ops.gather(a, 1, i[:, None]), lambda a, q, i: torch.gather(a, 1, i[:, None])),
    (lambda a, q, i: ud.ops.dropout(a, 0.5, training=False), lambda a, q, i: F.dropout(a, 0.5, training=False)),
    (lambda a, q, i: ud.ops.relu(a[0, 0]), lambda a, q, i: F.relu(a[0, 0])),
    (lambda a, q, i: ud.ops.prelu(q, np.array([0.25])), lambda a, q, i: F.prelu(q, torch.tensor([0.25]))),
    (lambda a, q, i: ud.ops.scaled_dot_product_attention(a[None], a[None], a[None]),
     lambda a, q, i: F.scaled_dot_product_attention(a[None], a[None], a[None])),
    (lambda a, q, i: ud.ops.dropout2d(q, 0.5, training=False), lambda a, q, i: F.dropout2d(q, 0.5, training=False)),
]


def test_every_op_takes_numpy_arrays_as_ud_tensor_makes_them(mode):
    """Ops given NumPy arrays (float64) or NumPy scalars convert them as ``ud.tensor`` converts them, as a module's
    call converts its arguments: float32 values on every backend, as torch's of float32 tensors (torch's backend
    raised ``TypeError`` or ``AttributeError``; TensorFlow, Keras and JAX gave float64, JAX's reshape a NumPy
    array). ``cast`` converts a NumPy array in its own dtype first, rounding it once."""
    a = np.array([[-1.5, 2.0], [0.5, -0.25]]) + 1e-9  # (float64 values that float32 rounds)
    q, i = a.reshape(1, 1, 2, 2), np.array([1, 0])
    ta, ti = torch.tensor(a, dtype=torch.float32), torch.tensor(i)
    expected = [oracle(ta, ta.reshape(1, 1, 2, 2), ti).numpy() for _, oracle in NUMPY_OPS]
    fns = [fn for fn, _ in NUMPY_OPS]
    compute = lambda t: [fn(a, q, i) for fn in fns] + [ud.ops.cast(a, "float64") + ud.ops.cast(t, "float64") * 0]
    got = [ud.to_numpy(r) for r in (ud.function(compute)(ud.tensor(a)) if mode == "graph" else compute(ud.tensor(a)))]
    for index, (value, wanted) in enumerate(zip(got, expected)):
        assert value.dtype == wanted.dtype, index
        np.testing.assert_allclose(value, wanted, rtol=1e-6, atol=1e-7, err_msg=f"NUMPY_OPS[{index}]")
    np.testing.assert_array_equal(got[-1], a)  # (float64, not rounded through float32)
    assert type(ud.ops.reshape(a, (4,))) is not np.ndarray


def test_numpy_beside_a_float64_tensor_keeps_its_digits_and_other_dtypes_convert(mode):
    """A NumPy float array or list (or a 0-d array, a number) beside a float64 tensor in ``maximum``, ``minimum``,
    ``where``, ``concat``, ``stack`` and ``matmul`` takes that tensor's dtype, rounded once (not through float32);
    ``cast`` takes NumPy integers of any width and the bfloat16 arrays ``ud.to_numpy`` gives back, as ``ud.tensor``
    takes bfloat16 arrays."""
    tenth = np.array([0.1])
    bf16 = ud.to_numpy(ud.ops.cast(ud.tensor([1.5, -2.25]), "bfloat16"))
    compute = lambda t: [ud.ops.maximum(t, tenth), ud.ops.minimum(np.array(0.1), t + 1), ud.ops.where(t > 0, t, tenth),
                         ud.ops.concat([t, tenth]), ud.ops.stack([t, tenth])[-1],
                         ud.ops.matmul(ud.ops.reshape(t + 1, (1, 1)), [[0.1]])[0],
                         ud.ops.cast(np.array([7], np.uint32), "float32"),
                         ud.ops.cast(bf16, "float32"), ud.ops.relu(bf16), ud.tensor(bf16)]
    t = ud.ops.cast(ud.tensor([0.0]), "float64")
    got = [ud.to_numpy(r) for r in (ud.function(compute)(t) if mode == "graph" else compute(t))]
    for value in got[:6]:
        assert value.dtype == np.float64 and value[-1] == 0.1
    np.testing.assert_array_equal(got[6], np.array([7.0], np.float32))
    for value, wanted in zip(got[7:], ([1.5, -2.25], [1.5, 0.0], [1.5, -2.25])):
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, wanted)


def test_a_list_holding_tensors_or_a_cast_of_complex_numbers_is_one_error(mode):
    """A list holding tensors given for an op's tensor argument is a ``TypeError`` on every backend, as PyTorch's
    (converted through NumPy it would lose its gradients: TensorFlow and Keras had stacked it); a NumPy array of
    complex numbers to ``cast`` is ``ud.tensor``'s ``DtypeMismatchError`` (TensorFlow, Keras and JAX dropped the
    imaginary part)."""
    raises_exactly(TypeError, "sum x: got a list holding tensors; join them into one tensor first with ud.ops.stack "
                   "or ud.ops.concat", run, mode, lambda t: ud.ops.sum([t, t * 2]), [1.0, 2.0])
    raises_exactly(TypeError, "maximum a: got a list holding tensors; join them into one tensor first with "
                   "ud.ops.stack or ud.ops.concat", run, mode, lambda t: ud.ops.maximum([t[0], 0.0], t), [1.0, 2.0])
    raises_exactly(TypeError, "cast x: got a list holding tensors; join them into one tensor first with "
                   "ud.ops.stack or ud.ops.concat",
                   run, mode, lambda t: ud.ops.cast([t[0], t[1]], "float64"), [1.0, 2.0])
    raises_exactly(TypeError, "conv1d weight: got a list holding tensors; join them into one tensor first with "
                   "ud.ops.stack or ud.ops.concat",  # a composite op's positional argument, named
                   run, mode, lambda t: ud.ops.conv1d(t[None, None], [t[None, None]]), [1.0, 2.0])
    raises_exactly(ud.DtypeMismatchError, "cast x: ud.tensor takes numbers (floats, ints or bools: a NumPy array, "
                   "nested lists or a scalar), got an array of dtype complex128",
                   run, mode, lambda t: ud.ops.cast(np.array([1 + 2j]), "float32") + t, [1.0])


def test_a_list_of_strings_ragged_rows_or_ints_past_int64_is_an_error_naming_the_op(mode):
    """A list an op cannot convert is ``ud.tensor``'s error with the op and its argument named first: strings a
    ``DtypeMismatchError``, rows of several lengths a ``ValueError`` (as ``torch.tensor``'s; NumPy's own spoke of
    "setting an array element with a sequence"), Python ints beyond int64 a ``ValueError`` (``ud.tensor`` called
    them "an array of dtype object")."""
    raises_exactly(ud.DtypeMismatchError, "relu x: ud.tensor takes numbers (floats, ints or bools: a NumPy array, "
                   "nested lists or a scalar), got an array of dtype <U21",
                   run, mode, lambda t: ud.ops.relu([1, "a"]) + t, [1.0])
    fits = "do not fit int64, whose range is [-9223372036854775808, 9223372036854775807]; pass values within it, or a "
    raises_exactly(ValueError, f"sum x: ud.tensor: values from {2 ** 64} to {2 ** 64} {fits}wider dtype",
                   run, mode, lambda t: ud.ops.sum([2 ** 64]) + t, [1.0])
    raises_exactly(ValueError, f"ud.tensor: values from 1 to {2 ** 64} {fits}wider dtype", ud.tensor, [1, 2 ** 64])
    raises_exactly(ValueError, f"ud.tensor: values from {2 ** 70} to {2 ** 70} {fits}wider dtype",
                   ud.tensor, [2 ** 70], "int64")
    for values, dtype in (([2 ** 70, 1.5], None), ([2 ** 70], "float64")):  # floats, as torch.tensor takes them
        expected = torch.tensor(values, dtype=None if dtype is None else torch.float64).numpy()
        got = ud.to_numpy(ud.tensor(values, dtype))
        assert got.dtype == expected.dtype and np.array_equal(got, expected), (values, got)
    ragged = "ud.tensor takes nested lists whose rows along each axis have one length (a rectangular array), got rows "
    for owner, fn in (("maximum b: ", lambda t: ud.ops.maximum(t, [[1.0], [2.0, 3.0]])),
                      ("conv1d weight: ", lambda t: ud.ops.conv1d(t[None, None], [[[1.0], [2.0, 3.0]]])),
                      ("", lambda t: ud.tensor([[1.0], [2.0, 3.0]]) + t)):
        with pytest.raises(ValueError) as caught:
            run(mode, fn, [1.0])
        assert type(caught.value) is ValueError and str(caught.value).startswith(owner + ragged), caught.value


LIST_OPS = [  # (the op of a tensor t = [1, 2] and lists or Python numbers; torch's of tensors made from them)
    (lambda t: ud.ops.relu(-2.0), lambda t: F.relu(torch.tensor(-2.0))),
    (lambda t: ud.ops.exp(1), lambda t: torch.exp(torch.tensor(1.0))),
    (lambda t: ud.ops.relu([1.0, -2.0]), lambda t: F.relu(torch.tensor([1.0, -2.0]))),
    (lambda t: ud.ops.mse_loss(t, [0.5, 3.0]), lambda t: F.mse_loss(t, torch.tensor([0.5, 3.0]))),
    (lambda t: ud.ops.matmul([[1.0, 2.0]], t), lambda t: torch.tensor([[1.0, 2.0]]) @ t),
    (lambda t: ud.ops.sum([1, 2]), lambda t: torch.sum(torch.tensor([1, 2]))),
    (lambda t: ud.ops.linear(t, [[1.0, 2.0]], [0.5]),
     lambda t: F.linear(t, torch.tensor([[1.0, 2.0]]), torch.tensor([0.5]))),
    (lambda t: ud.ops.clip(3.0, 0.0, 1.0), lambda t: torch.clamp(torch.tensor(3.0), 0.0, 1.0)),
    (lambda t: ud.ops.concat([t, [5.0, 6.0]]), lambda t: torch.cat([t, torch.tensor([5.0, 6.0])])),
    (lambda t: ud.ops.maximum([1.0, 5.0], 2.0), lambda t: torch.clamp(torch.tensor([1.0, 5.0]), min=2.0)),
    (lambda t: ud.ops.cast([0.1, 2.0], "float64"), lambda t: torch.tensor([0.1, 2.0], dtype=torch.float64)),
    (lambda t: ud.ops.interpolate([[[1.0, 2.0]]], scale_factor=2),
     lambda t: F.interpolate(t[None, None], scale_factor=2)),
]


def test_every_op_takes_lists_and_python_numbers_as_ud_tensor_makes_them(mode):
    """A list, a tuple or a Python number given for an op's tensor argument is converted as ``ud.tensor`` converts
    it: PyTorch's values of such tensors on every backend (torch's backend raised ``TypeError`` or
    ``AttributeError``, JAX refused lists, TensorFlow summed a list of ints in int32 and its ``matmul`` refused a
    1-d operand); ``cast`` of a list of floats is exact in float64. Booleans into an op of numbers are the same
    error as a boolean tensor."""
    expected = [oracle(torch.tensor([1.0, 2.0])).numpy() for _, oracle in LIST_OPS]
    compute = lambda t: [fn(t) for fn, _ in LIST_OPS]
    got = ud.function(compute)(ud.tensor([1.0, 2.0])) if mode == "graph" else compute(ud.tensor([1.0, 2.0]))
    for index, (value, wanted) in enumerate(zip(got, expected)):
        value = ud.to_numpy(value)
        assert value.dtype == wanted.dtype and value.shape == wanted.shape, index
        np.testing.assert_array_equal(value, wanted, err_msg=f"LIST_OPS[{index}]")
    raises_exactly(ud.DtypeMismatchError, "abs needs numbers, got bool input; convert it with ud.ops.cast(x, 'uint8') "
                   "or ud.ops.cast(x, 'float32')", run, mode, lambda t: ud.ops.abs([True, False]) + t, [1.0, 2.0])


def test_numpy_weights_and_scalars_into_loss_ops_and_cast_like(mode):
    """A NumPy class ``weight`` to ``nll_loss``/``cross_entropy_loss``/``binary_cross_entropy`` and a NumPy scalar
    target are converted as ``ud.tensor`` converts them (torch's backend raised, TensorFlow and Keras refused a
    float64 weight, JAX gave float64); ``cast_like`` rounds a NumPy float64 array once, to the dtype of its
    ``like``."""
    values, labels, weight = np.array([0.25, 0.5, 0.75, 0.5, 0.125, 1.0]), np.array([2, 0]), np.array([1.0, 2.0, 3.0])
    t = [torch.tensor(a, dtype=torch.float32) for a in (values, weight)]
    cases = [
        (lambda x: ud.ops.nll_loss(ud.ops.reshape(x, (2, 3)), labels, weight),
         F.nll_loss(t[0].reshape(2, 3), torch.tensor(labels), t[1])),
        (lambda x: ud.ops.cross_entropy_loss(ud.ops.reshape(x, (2, 3)), labels, weight),
         F.cross_entropy(t[0].reshape(2, 3), torch.tensor(labels), t[1])),
        (lambda x: ud.ops.binary_cross_entropy(x[:3], x[3:] * 0, weight),
         F.binary_cross_entropy(t[0][:3], t[0][3:] * 0, t[1])),
        (lambda x: ud.ops.mse_loss(ud.ops.sum(x), np.float64(0.1)), F.mse_loss(t[0].sum(), torch.tensor(0.1))),
    ]
    for fn, expected in cases:
        got = run(mode, fn, values)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)
    got = run(mode, lambda x: ud.ops.cast_like(np.array([0.1]), ud.ops.cast(x, "float64")), values)
    assert got.dtype == np.float64 and got[0] == 0.1
    wide = torch.tensor(values, dtype=torch.float64).reshape(2, 3)  # float64 logits: the weight in their dtype
    expected = F.cross_entropy(wide, torch.tensor(labels), torch.tensor(weight, dtype=torch.float64)).numpy()
    got = run(mode, lambda x: ud.ops.cross_entropy_loss(ud.ops.reshape(ud.ops.cast(x, "float64"), (2, 3)), labels,
                                                        weight), values)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-7)


INDEX_LISTS = [  # (ud op over the values tensor, with a list or number for its indices, mask or weight; torch's)
    (lambda x: ud.ops.take(x, [2, 0]), lambda t: torch.index_select(t, 0, torch.tensor([2, 0]))),
    (lambda x: ud.ops.take(x, 1), lambda t: t[1]),
    (lambda x: ud.ops.embedding([[1, 0]], ud.ops.reshape(x, (3, 2))),
     lambda t: F.embedding(torch.tensor([[1, 0]]), t.reshape(3, 2))),
    (lambda x: ud.ops.gather(ud.ops.reshape(x, (2, 3)), 1, [[2], [0]]),
     lambda t: torch.gather(t.reshape(2, 3), 1, torch.tensor([[2], [0]]))),
    (lambda x: ud.ops.cast(ud.ops.one_hot([0, 2], 3), "float32") * x[0],
     lambda t: F.one_hot(torch.tensor([0, 2]), 3) * t[0]),
    (lambda x: ud.ops.cross_entropy(ud.ops.reshape(x, (2, 3)), [2, 0]),
     lambda t: F.cross_entropy(t.reshape(2, 3), torch.tensor([2, 0]))),
    (lambda x: ud.ops.cross_entropy_loss(ud.ops.reshape(x, (2, 3)), [2, 0], [1.0, 2.0, 3.0]),
     lambda t: F.cross_entropy(t.reshape(2, 3), torch.tensor([2, 0]), torch.tensor([1.0, 2.0, 3.0]))),
    (lambda x: ud.ops.nll_loss(ud.ops.reshape(x, (2, 3)), [2, 0], (1.0, 2.0, 3.0)),
     lambda t: F.nll_loss(t.reshape(2, 3), torch.tensor([2, 0]), torch.tensor([1.0, 2.0, 3.0]))),
    (lambda x: ud.ops.binary_cross_entropy(x[:3], [0.0, 1.0, 0.5], [1.0, 2.0, 3.0]),
     lambda t: F.binary_cross_entropy(t[:3], torch.tensor([0.0, 1.0, 0.5]), torch.tensor([1.0, 2.0, 3.0]))),
    (lambda x: ud.ops.max_unpool2d(ud.ops.reshape(x[:4], (1, 1, 2, 2)), [[[[0, 3], [9, 15]]]], 2),
     lambda t: F.max_unpool2d(t[:4].reshape(1, 1, 2, 2), torch.tensor([[[[0, 3], [9, 15]]]]), 2)),
]


def test_lists_for_indices_and_class_weights_convert_as_ud_tensor_makes_them(mode):
    """A list, a tuple or a Python int given for an op's integer indices (``take``, ``embedding``, ``gather``,
    ``one_hot``, the labels of the losses, ``max_unpool2d``'s indices) or for a loss's class ``weight`` is converted
    as ``ud.tensor`` converts it (ints int64): PyTorch's values on every backend (torch's backend raised
    ``AttributeError`` where TensorFlow's took them; a list of class weights was an ``AttributeError`` everywhere).
    A list of floats for indices is the same error as float indices."""
    values = np.array([0.25, 0.5, 0.75, 0.5, 0.125, 1.0], np.float32)
    for index, (fn, oracle) in enumerate(INDEX_LISTS):
        expected = oracle(torch.tensor(values)).numpy()
        got = run(mode, fn, values)
        assert got.dtype == expected.dtype and got.shape == expected.shape, index
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"INDEX_LISTS[{index}]")
    raises_exactly(ud.DtypeMismatchError, "take: indices must be integers, got float32 indices; convert them with "
                   "ud.ops.cast(indices, 'int64')", run, mode, lambda x: ud.ops.take(x, [1.0, 0.0]), values)


def test_a_recurrent_layers_initial_state_takes_numpy_arrays_and_lists_as_ud_tensor_makes_them(mode):
    """An RNN's ``hx``, an LSTM's ``(h_0, c_0)`` given as NumPy arrays (float64 too) or nested lists give the outputs
    of the same state given as ``ud.tensor``'s tensors, as the layer's input converts (an LSTM's pair of NumPy
    arrays was torch's ``TypeError`` and an ``AttributeError`` on TensorFlow and Keras, a list of floats for any
    ``hx`` an ``AttributeError``)."""
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    h = RNG.standard_normal((1, 2, 5))
    for layer in (ud.nn.GRU(3, 5, batch_first=True), ud.nn.LSTM(3, 5, batch_first=True)):
        pair = isinstance(layer, ud.nn.LSTM)
        state = lambda convert: (convert(h), convert(-h)) if pair else convert(h)
        call = lambda inputs, hx: layer(inputs, hx)[0]
        expected = run(mode, lambda inputs: call(inputs, state(ud.tensor)), x)
        for convert in (np.asarray, lambda a: a.tolist()):
            np.testing.assert_array_equal(run(mode, lambda inputs: call(inputs, state(convert)), x), expected)


def test_integers_times_floats_is_one_error(mode):
    raises_exactly(ud.DtypeMismatchError, "matmul of int64 and float32: one is integer, the other floating-point; "
                   "convert the integers with ud.ops.cast(x, 'float32')",
                   run, mode, lambda a, b: ud.ops.matmul(a, b), np.ones((2, 4), np.int64), ROWS)


def test_amax_over_an_empty_axis_is_one_error(mode):
    """TensorFlow gave -inf, Keras raised in eager mode only, torch and JAX raised their own errors."""
    raises_exactly(ud.ShapeMismatchError, "amax over axis 1, which is empty (input shape (2, 0))",
                   run, mode, lambda x: ud.ops.amax(x, 1), np.ones((2, 0), np.float32))
    np.testing.assert_array_equal(run(mode, lambda x: ud.ops.amax(x, (0, 1)), ROWS), ROWS.max())


def test_one_hot_of_a_label_out_of_range_is_a_row_of_zeros(mode):
    """TensorFlow's and JAX's rule on every backend (PyTorch's F.one_hot raised, after a read back to the host)."""
    labels = np.array([0, 3, -1, 2, -100], np.int64)
    expected = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    got = run(mode, lambda t: ud.ops.one_hot(t, 3), labels)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("layer", ["RNN", "GRU", "LSTM"])
def test_a_recurrent_layer_over_an_empty_sequence_is_one_error(mode, layer):
    """PyTorch refuses a zero-length sequence; the frameworks failed on different ops with errors of different types."""
    rnn = getattr(ud.nn, layer)(3, 4, batch_first=True)
    raises_exactly(ud.ShapeMismatchError, f"{layer}(3, 4, batch_first=True) expected a sequence length larger than "
                   "0, received input of shape (2, 0, 3)", run, mode, lambda x: rnn(x)[0], np.ones((2, 0, 3), np.float32))
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        getattr(torch.nn, layer)(3, 4, batch_first=True)(torch.zeros(2, 0, 3))


def off_path_results() -> dict:
    """A few of the rules above on the backend in force, eagerly and in ``ud.function``, as JSON-ready values: for the
    Keras-on-torch and Keras-on-JAX interpreters of tests/test_examples.py (Keras's ops differ by framework)."""
    cases = {
        "one_hot": (lambda t: ud.ops.one_hot(t, 3), np.array([0, 3, -1, 2, -100], np.int64)),
        "pad": (lambda t: ud.ops.pad(t, (-1, 2), "reflect"), np.arange(5.0, dtype=np.float32).reshape(1, 1, 5)),
        "sqrt": (lambda t: ud.ops.sqrt(t), np.array([4, 9], np.int64)),
        # (Keras-on-torch summed over every axis into a 0-d sum; Keras-on-JAX and -torch typed an int beside int64
        # or booleans int32)
        "sum-keepdims": (lambda t: ud.ops.sum(t, None, keepdims=True), np.array([[1, 2], [3, 4]], np.int64)),
        "maximum-int": (lambda t: ud.ops.maximum(ud.ops.cast(t, "bool"), 0), np.array([0, 3], np.int64)),
        # (Keras-on-TensorFlow refused True beside int8)
        "clip-true": (lambda t: ud.ops.clip(ud.ops.cast(t, "int8"), True), np.array([0, 1, 3], np.int64)),
    }
    results = {}
    for name, (fn, value) in cases.items():
        for which in MODES:
            got = run(which, fn, value)
            results[f"{name}-{which}"] = [str(got.dtype), got.tolist()]
    for which in MODES:
        try:
            run(which, lambda t: ud.ops.pad(t, (1, 1), "reflect"), np.ones((1, 1, 2, 5), np.float32))
            results[f"pad-error-{which}"] = None
        except ValueError as error:
            results[f"pad-error-{which}"] = type(error).__name__
        # (Keras-on-torch refused the max of any empty tensor)
        empty = run(which, lambda t: ud.ops.adaptive_max_pool2d(t, (2, 2)), np.ones((0, 2, 5, 5), np.float32))
        results[f"adaptive-max-empty-{which}"] = [str(empty.dtype), list(empty.shape)]
        results[f"foreign-{which}"] = foreign_tensor_outcomes(which)
    state = ud.random.get_rng_state()
    try:  # (Keras-on-torch's dropout generator, an int32 state, overflowed from 2**31)
        ud.manual_seed(2**32 - 1)
        results["largest-seed"] = None
    except Exception as error:
        results["largest-seed"] = f"{type(error).__name__}: {error}"
    finally:
        ud.random.set_rng_state(state)
    return results


OFF_PATH_EXPECTED = {
    **{f"one_hot-{m}": ["int64", [[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]]] for m in MODES},
    **{f"pad-{m}": ["float32", [[[1.0, 2.0, 3.0, 4.0, 3.0, 2.0]]]] for m in MODES},
    **{f"sqrt-{m}": ["float32", [2.0, 3.0]] for m in MODES},
    **{f"sum-keepdims-{m}": ["int64", [[10]]] for m in MODES},
    **{f"maximum-int-{m}": ["int64", [0, 1]] for m in MODES},
    **{f"clip-true-{m}": ["int8", [1, 1, 3]] for m in MODES},
    **{f"pad-error-{m}": "ValueError" for m in MODES},
    **{f"adaptive-max-empty-{m}": ["float32", [0, 2, 2, 2]] for m in MODES},
    **{f"foreign-{m}": ["as expected", "as expected"] for m in MODES},
    "largest-seed": None,
}


def test_the_off_path_results(backend):
    """``off_path_results`` here on each backend (the Keras-on-torch and Keras-on-JAX runs compare to the same)."""
    assert off_path_results() == OFF_PATH_EXPECTED


def test_attention_over_no_keys_gives_torchs_zeros(mode):
    """``scaled_dot_product_attention`` with a sequence of 0 keys: PyTorch's (..., L, Ev) zeros, with and without a
    mask (jax raised its own error; the masked path's row maximum has no value over no keys)."""
    query = RNG.standard_normal((1, 2, 4)).astype(np.float32)
    key, value, mask = np.zeros((1, 0, 4), np.float32), np.zeros((1, 0, 3), np.float32), np.zeros((1, 2, 0), bool)
    expected = F.scaled_dot_product_attention(torch.tensor(query), torch.tensor(key), torch.tensor(value),
                                              attn_mask=torch.tensor(mask)).numpy()
    masked = run(mode, lambda q, k, v, m: ud.ops.scaled_dot_product_attention(q, k, v, attn_mask=m),
                 query, key, value, mask)
    plain = run(mode, lambda q, k, v: ud.ops.scaled_dot_product_attention(q, k, v), query, key, value)
    for got in (masked, plain):
        np.testing.assert_array_equal(got, expected)


def test_pad_takes_torchs_value_none_and_empty_batches(mode):
    """``value=None`` is PyTorch's default (0); reflect and replicate pads of an empty batch give PyTorch's empty
    result (TensorFlow's mirror pad refused it)."""
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(mode, lambda t: ud.ops.pad(t, (1, 1), value=None), x),
                                  F.pad(torch.tensor(x), (1, 1), value=None).numpy())
    for pad_mode in ("reflect", "replicate", "circular"):
        empty = np.zeros((0, 2, 3), np.float32)
        assert run(mode, lambda t: ud.ops.pad(t, (1, 2), pad_mode), empty).shape == tuple(
            F.pad(torch.tensor(empty), (1, 2), pad_mode).shape)


def test_a_constant_pad_of_integers_or_booleans_takes_its_value_as_torch(mode):
    """A constant pad's value beside integers is truncated toward zero and beside booleans non-zero is True, as
    PyTorch's (TensorFlow refused a float beside integers or booleans, Keras one with a fraction); one outside the
    integers' range is a ``ValueError`` (TensorFlow, Keras and JAX wrapped -1 around to 255 in uint8)."""
    values = np.array([[1, 2, 3]])
    for dtype, value in (("int64", 0.0), ("int64", 2.7), ("int32", -2.7), ("int8", np.float64(5.5)), ("bool", 0.0),
                         ("bool", 0.5), ("bool", True), ("uint8", 255), ("uint8", True), ("bfloat16", True)):
        expected = F.pad(torch.tensor(values).to(getattr(torch, dtype)), (1, 2), value=float(value))
        got = run(mode, lambda t: ud.ops.pad(ud.ops.cast(t, dtype), (1, 2), value=value), values)
        assert str(got.dtype) == str(expected.dtype).removeprefix("torch."), (dtype, value)
        if dtype == "bfloat16":  # (compared as float32, which holds bfloat16 values exactly)
            expected, got = expected.float(), got.astype(np.float32)
        expected = expected.numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"{dtype} {value}")
    # a 0-d tensor too, made in the function or given to it (TensorFlow and Keras refused a float one beside integers)
    for dtype, value in (("int64", 2.7), ("int32", -2.7), ("bool", 0.5), ("uint8", 3.0)):
        expected = F.pad(torch.tensor(values).to(getattr(torch, dtype)), (1, 2), value=value).numpy()
        made = run(mode, lambda t: ud.ops.pad(ud.ops.cast(t, dtype), (1, 2), value=ud.tensor(value)), values)
        given = run(mode, lambda t, v: ud.ops.pad(ud.ops.cast(t, dtype), (1, 2), value=v), values, np.float32(value))
        half = run(mode, lambda t: ud.ops.pad(ud.ops.cast(t, dtype), (1, 2), value=ud.tensor(value, "bfloat16")),
                   values)
        for got in (made, given, half):
            assert got.dtype == expected.dtype, (dtype, value)
            np.testing.assert_array_equal(got, expected, err_msg=f"{dtype} {value}")
    raises_exactly(ValueError, "pad value must be a number or a 0-d tensor, got a tensor of rank 1",
                   run, mode, lambda t, v: ud.ops.pad(t, (1, 1), value=v), values, np.array([1.0, 2.0]))
    for dtype, value in (("uint8", -1), ("int8", 128.5), ("int64", 2 ** 70), ("int32", float("nan"))):
        info = np.iinfo(dtype)
        raises_exactly(ValueError, f"pad value {value!r} lies outside the range of its {dtype} input, [{info.min}, "
                       f"{info.max}]; use a value within it, or convert the input to a wider dtype (ud.ops.cast(x, "
                       f"'int64') or 'float64')", run, mode,
                       lambda t: ud.ops.pad(ud.ops.cast(t, dtype), (1, 1), value=value), values)


EMPTY_BATCH_LAYERS = {  # (unidl layer, torch layer, input shape, dtype): a forward as both call it
    "AdaptiveMaxPool2d": (lambda: ud.nn.AdaptiveMaxPool2d(2), lambda: torch.nn.AdaptiveMaxPool2d(2), (0, 2, 5, 5),
                          np.float32),
    "LayerNorm": (lambda: ud.nn.LayerNorm(4), lambda: torch.nn.LayerNorm(4), (0, 3, 4), np.float32),
    "Embedding": (lambda: ud.nn.Embedding(10, 4), lambda: torch.nn.Embedding(10, 4), (0, 3), np.int64),
    "LSTM": (lambda: ud.nn.LSTM(4, 5, batch_first=True), lambda: torch.nn.LSTM(4, 5, batch_first=True), (0, 3, 4),
             np.float32),
    "MultiheadAttention": (lambda: ud.nn.MultiheadAttention(4, 2, batch_first=True),
                           lambda: torch.nn.MultiheadAttention(4, 2, batch_first=True), (0, 3, 4), np.float32),
}


def test_more_layers_over_an_empty_batch_have_torchs_shapes(mode):
    """A batch of 0 samples through layers off the convolution path: torch's output shapes on every backend, eagerly
    and in ``ud.function`` (Keras-on-TensorFlow's own max refused an empty tensor, an empty batch reduced over another
    axis too, in adaptive max pooling)."""
    def forward(module, attention):
        def call(t):
            output = module(t, t, t) if attention else module(t)
            return output[0] if isinstance(output, (tuple, list)) else output

        return call

    for name, (build, oracle, shape, dtype) in EMPTY_BATCH_LAYERS.items():
        x, attention = np.zeros(shape, dtype), name == "MultiheadAttention"
        expected = tuple(forward(oracle(), attention)(torch.tensor(x)).shape)
        assert run(mode, forward(build(), attention), x).shape == expected, name


# ---- NumPy scalars as layer, op and optimizer arguments: torch's values, or one error -----------------------------

def _numpy_argument_cases():
    """(unidl forward, torch forward) pairs over one (1, 2, 5, 5) input, every size, rate and axis given as a NumPy
    scalar or a 0-d array, as a config array gives them; the layers share torch's weights. (One lambda a line: see
    ``raises_exactly``.)"""
    i64, i32 = np.int64, np.int32
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(i64(2), i32(3), i64(3), stride=i64(2), padding=i32(1), dilation=i64(1), groups=i64(1))
    linear = torch.nn.Linear(i64(5), i32(3))
    ours = [ud.nn.Conv2d(i64(2), i32(3), i64(3), stride=i64(2), padding=i32(1), dilation=np.array(1), groups=i64(1)),
            ud.nn.Linear(i64(5), i32(3))]
    for layer, oracle in zip(ours, (conv, linear)):
        layer.load_state_dict({k: v.detach().numpy() for k, v in oracle.state_dict().items()})
    weight = ud.tensor(conv.weight.detach().numpy())
    unidl_forwards = ours + [
        lambda t: ud.ops.conv2d(t, weight, None, i64(2), i32(1), i64(1)),
        lambda t: ud.ops.max_pool2d(t, i64(3), i32(2), i64(1)),
        lambda t: ud.ops.avg_pool2d(t, i64(2), None, np.array(1)),
        ud.nn.MaxPool2d(i32(2), stride=i64(1)),
        ud.nn.AdaptiveAvgPool2d((i64(1), None)),
        ud.nn.Upsample(scale_factor=np.float32(2.0)),
        lambda t: ud.ops.pad(t, (i64(1), np.array(2))),
        lambda t: ud.ops.flatten(t, np.array(2)),
        lambda t: ud.ops.leaky_relu(t, np.array(0.2)),
        lambda t: ud.ops.dropout(t, np.array(0.0), training=True),
        lambda t: ud.ops.dropout(t, np.array(1.0), training=True),
        lambda t: ud.ops.clip(t, np.array(-0.1), np.float32(0.5)),
    ]
    torch_forwards = [conv, linear,
                      lambda t: F.conv2d(t, conv.weight, None, 2, 1, 1),
                      lambda t: F.max_pool2d(t, 3, 2, 1),
                      lambda t: F.avg_pool2d(t, 2, None, 1),
                      torch.nn.MaxPool2d(2, stride=1),
                      torch.nn.AdaptiveAvgPool2d((1, None)),
                      torch.nn.Upsample(scale_factor=2.0),
                      lambda t: F.pad(t, (1, 2)),
                      lambda t: torch.flatten(t, 2),
                      lambda t: F.leaky_relu(t, 0.2),
                      lambda t: t,
                      torch.zeros_like,
                      lambda t: torch.clamp(t, -0.1, 0.5)]
    return unidl_forwards, torch_forwards


def test_numpy_scalars_as_arguments_give_torchs_values(mode):
    """A NumPy integer, float or 0-d array as a layer's or an op's size, rate or axis is the Python number it holds,
    as ``torch.nn`` takes it, on every backend, eagerly and in ``ud.function``: the layers checked them out (a
    ``ValueError`` for ``np.int64(3)``) and the ops passed them on to the backends (the jax backend's ``_pair``
    iterated ``np.int64(2)``, others their own ``TypeError``s)."""
    unidl_forwards, torch_forwards = _numpy_argument_cases()

    def forwards(t):
        return [forward(t) for forward in unidl_forwards]

    outputs = (ud.function(forwards) if mode == "graph" else forwards)(ud.tensor(X))
    for oracle, value in zip(torch_forwards, [ud.to_numpy(y) for y in outputs], strict=True):
        expected = oracle(torch.tensor(X)).detach().numpy()
        assert value.shape == expected.shape
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


def test_sizes_as_any_sequence_give_torchs_values(backend):
    """Several sizes as any sequence PyTorch takes (a 1-d array, a range, a tensor's own shape: ``torch.Size``,
    TensorFlow's ``TensorShape``; an empty pooling stride, which PyTorch reads as the kernel size) give PyTorch's
    values on every backend. (These were taken before NumPy scalars were, and then refused on some backends only.
    The sequences are read in Python before any op runs, by the same code inside ``ud.function``: eagerly only.)"""
    x = ud.tensor(X)
    large, small = ud.tensor(np.zeros((1, 1, 10, 10), np.float32)).shape, ud.tensor(np.zeros((1, 1, 1, 5))).shape
    cases = [(ud.ops.interpolate(x, size=large[2:]), F.interpolate(torch.tensor(X), size=(10, 10))),
             (ud.ops.interpolate(x, scale_factor=np.array([2.0, 2.0])),
              F.interpolate(torch.tensor(X), scale_factor=2.0)),
             (ud.ops.adaptive_avg_pool2d(x, small[2:]), F.adaptive_avg_pool2d(torch.tensor(X), (1, 5))),
             (ud.ops.adaptive_avg_pool2d(x, np.array([5, 1])), F.adaptive_avg_pool2d(torch.tensor(X), (5, 1))),
             (ud.nn.LayerNorm(x.shape[-1:])(x), torch.nn.LayerNorm(5)(torch.tensor(X))),
             (ud.nn.LayerNorm(range(5, 6))(x), torch.nn.LayerNorm(5)(torch.tensor(X))),
             (ud.nn.Unflatten(3, np.array([5, 1]))(x), torch.tensor(X)[..., None]),
             (ud.ops.max_pool2d(x, 2, []), F.max_pool2d(torch.tensor(X), 2, [])),
             (ud.nn.AvgPool2d(2, stride=[])(x), torch.nn.AvgPool2d(2, stride=[])(torch.tensor(X)))]
    for ours, expected in cases:
        expected = expected.detach().numpy()
        assert ud.to_numpy(ours).shape == expected.shape
        np.testing.assert_allclose(ud.to_numpy(ours), expected, rtol=1e-5, atol=1e-5)


BOOL_OR_FLOAT_CASES = [
    (lambda x: ud.ops.conv2d(x, ud.tensor(np.ones((1, 2, 1, 1), np.float32)), None, True),
     "conv2d stride must be a positive int or 2 of them, got True"),
    (lambda x: ud.ops.max_pool2d(x, 2.0), "max_pool2d kernel_size must be a positive int or 2 of them, got 2.0"),
    (lambda x: ud.ops.flatten(x, 1.0), "flatten start_dim must be an int (an axis), got 1.0"),
    (lambda x: ud.nn.Conv2d(2, 1, np.float32(2.0))(x),  # (NumPy's own repr of the float: 2.0 before NumPy 2)
     f"Conv2d kernel_size must be a positive int or 2 of them, got {np.float32(2.0)!r}"),
]


@pytest.mark.parametrize("build, message", BOOL_OR_FLOAT_CASES)
def test_a_bool_or_a_float_where_an_int_belongs_is_one_error(mode, build, message):
    """A bool or a float (even a whole one) as a size or an axis: one ``ValueError`` naming the argument, on every
    backend, eagerly and in ``ud.function`` (torch refuses a float kernel, and the frameworks took ``True`` as 1)."""
    raises_exactly(ValueError, message, run, mode, build, X)


def test_numpy_scalars_as_optimizer_hyperparameters(backend):
    """Adam's hyperparameters (a param group's betas and the clipping bound too) and a schedule's step size as NumPy
    scalars and 0-d arrays give ``torch.optim``'s trajectory (a 0-d lr, a 0-d beta in a group, a 0-d
    ``clip_grad_value`` and ``StepLR(step_size=np.int64(1))`` were ``ValueError``s)."""
    weight = np.array([[1.0], [-2.0]], np.float32)
    model = ud.nn.Linear(1, 2, bias=False)
    model.load_state_dict({"weight": weight})
    optimizer = ud.optim.Adam([{"params": model.parameters(), "betas": (np.array(0.8), np.float64(0.9))}],
                              lr=np.array(0.1), betas=(np.float32(0.5), 0.5), eps=np.float32(1e-6),
                              weight_decay=np.int64(0), clip_grad_value=np.array(0.5))
    schedule = ud.optim.lr_scheduler.StepLR(optimizer, step_size=np.int64(1), gamma=np.float32(0.5))
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    parameter = torch.nn.Parameter(torch.tensor(weight))
    oracle = torch.optim.Adam([parameter], lr=0.1, betas=(0.8, 0.9), eps=1e-6)
    oracle_schedule = torch.optim.lr_scheduler.StepLR(oracle, step_size=1, gamma=0.5)
    for _ in range(2):
        step(np.ones((1, 1), np.float32), np.zeros((1, 2), np.float32))
        schedule.step()
        oracle.zero_grad()
        F.mse_loss(parameter @ torch.ones(1, 1), torch.zeros(2, 1)).backward()
        torch.nn.utils.clip_grad_value_([parameter], 0.5)
        oracle.step()
        oracle_schedule.step()
    np.testing.assert_allclose(model.state_dict()["weight"], parameter.detach().numpy(), rtol=1e-6, atol=1e-7)


BOOLS = RNG.standard_normal((1, 2, 4, 4)) > 0
POOLING = [  # (name in the message, the pooling over x, whether it takes floats alone)
    ("max_pool2d", lambda x: ud.ops.max_pool2d(x, 2), False),
    ("max_pool2d", lambda x: ud.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True), False),
    ("max_pool2d", lambda x: ud.ops.max_pool2d(x, 2, return_indices=True)[0], False),
    ("MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)", lambda x: ud.nn.MaxPool2d(2)(x),
     False),
    ("avg_pool2d", lambda x: ud.ops.avg_pool2d(x, 2), True),
    ("avg_pool2d", lambda x: ud.ops.avg_pool2d(x, 2, count_include_pad=False, padding=1), True),
    ("AvgPool2d(kernel_size=2, stride=2, padding=0)", lambda x: ud.nn.AvgPool2d(2)(x), True),
    ("adaptive_avg_pool2d", lambda x: ud.ops.adaptive_avg_pool2d(x, 3), True),
    ("AdaptiveAvgPool2d(output_size=2)", lambda x: ud.nn.AdaptiveAvgPool2d(2)(x), True),
    ("AdaptiveMaxPool2d(output_size=(2, None))", lambda x: ud.nn.AdaptiveMaxPool2d((2, None))(x), True),
]


@pytest.mark.parametrize("index", range(len(POOLING)))
def test_pooling_of_booleans_or_an_average_of_integers_is_one_error(mode, index):
    """Boolean input to any pooling, and integers to an average: one ``DtypeMismatchError`` (PyTorch has no boolean
    pooling and averages int64 only, truncating; TensorFlow and Keras raised their own errors, JAX averaged integers
    into float64 means); a maximum of integers stays PyTorch's."""
    name, pool, average = POOLING[index]
    raises_exactly(ud.DtypeMismatchError, f"{name} needs {'floating-point input' if average else 'numbers'}, got bool "
                   f"input; convert it with " + ("x.astype('float32') or ud.ops.cast(x, 'float32')" if average else
                                                 "ud.ops.cast(x, 'uint8') or ud.ops.cast(x, 'float32')"),
                   run, mode, pool, BOOLS)
    integers = BOOLS.astype(np.int64) * 3
    if average:
        raises_exactly(ud.DtypeMismatchError, f"{name} needs floating-point input, got int64 input; convert it with "
                       f"x.astype('float32') or ud.ops.cast(x, 'float32')", run, mode, pool, integers)
    else:
        expected = F.max_pool2d(torch.tensor(integers), 2).numpy()
        got = run(mode, pool, integers)
        assert got.dtype == np.int64
        if got.shape == expected.shape:
            np.testing.assert_array_equal(got, expected)


INTERPOLATIONS = [  # (mode, input shape, size, scale_factor)
    ("nearest", (2, 2, 5, 4), (7, 3), None), ("nearest", (2, 2, 5, 4), None, (1.5, 0.75)),
    ("nearest", (1, 2, 2), 82, None), ("nearest-exact", (2, 2, 5, 4), (7, 3), None),
    ("nearest-exact", (2, 2, 5, 4), None, 2.5), ("nearest-exact", (0, 2, 2), 82, None),
    ("bilinear", (2, 2, 5, 4), (7, 3), None), ("bicubic", (2, 2, 5, 4), None, 1.5),
    ("area", (2, 2, 5, 4), (2, 3), None), ("linear", (2, 2, 5), 7, None),
]
WIDEST = {"uint8": (0, 256), "int32": (-2 ** 31, 2 ** 31), "int64": (-2 ** 63, 2 ** 63)}


def _nearest_of_integers(values, size, scale_factor, how):
    """torch's nearest resize of integer ``values``: its uint8 kernel, or for other widths (which torch refuses)
    the inputs its float32 kernel picks (a resize of the positions), taken exactly."""
    if values.dtype == np.uint8:
        return F.interpolate(torch.tensor(values), size, scale_factor, how).numpy()
    plane = int(np.prod(values.shape[2:]))
    positions = torch.arange(plane, dtype=torch.float32).reshape((1, 1) + values.shape[2:])
    picked = F.interpolate(positions, size, scale_factor, how).long().numpy()[0, 0]
    return values.reshape(values.shape[:2] + (plane,))[..., picked.ravel()].reshape(values.shape[:2] + picked.shape)


@pytest.mark.parametrize("index", range(len(INTERPOLATIONS)))
def test_interpolation_of_booleans_or_a_weighted_mean_of_integers_is_one_error(mode, index):
    """``interpolate`` (and so ``Upsample``) of booleans in any mode, and of integers in the modes that weigh
    several inputs ('linear', 'bilinear', 'bicubic', 'area'): one ``DtypeMismatchError`` (the weights were cast
    to the integers' dtype, so every backend gave zeros; TensorFlow raised its own errors for uint8 and booleans,
    torch's backend for booleans, and JAX and Keras gave booleans). Integers in the nearest modes, of the whole
    range of uint8, int32 and int64 (beyond float64's 2 ** 53), are torch's values in their own dtype, at sizes
    known or unknown to the graph and over an empty batch (TensorFlow refused a scale factor's sizes inside a
    graph, and uint8 everywhere)."""
    how, shape, size, scale_factor = INTERPOLATIONS[index]
    images = RNG.integers(-100, 100, shape)

    def resize(x, dtype):
        return ud.ops.interpolate(ud.ops.cast(x, dtype), size, scale_factor, how)

    message = "interpolate needs numbers, got bool input; convert it with ud.ops.cast(x, 'uint8') or ud.ops.cast(x, " \
        "'float32')" if how.startswith("nearest") else (f"interpolate mode {how!r} needs floating-point input, got "
                                                         f"bool input; convert it with x.astype('float32') or "
                                                         f"ud.ops.cast(x, 'float32')")
    raises_exactly(ud.DtypeMismatchError, message, run, mode, lambda x: resize(x, "bool"), images)
    upsample = ud.nn.Upsample(size, scale_factor, how)
    raises_exactly(ud.DtypeMismatchError, message, run, mode, lambda x: upsample(ud.ops.cast(x, "bool")), images)
    widest = {dtype: RNG.integers(low, high, shape, dtype=np.int64 if dtype != "uint8" else np.uint8).astype(dtype)
              for dtype, (low, high) in WIDEST.items()}
    if how.startswith("nearest"):  # (one graph for the three dtypes)
        results = run_each(mode, [lambda *x, at=at, dtype=dtype: resize(x[at], dtype) for at, dtype in
                                  enumerate(widest)], *(values.astype(np.int64) for values in widest.values()))
        for (dtype, values), got in zip(widest.items(), results):
            expected = _nearest_of_integers(values, size, scale_factor, how)
            assert (got.dtype, got.shape) == (np.dtype(dtype), expected.shape)
            np.testing.assert_array_equal(got, expected)
        return
    for dtype, values in widest.items():
        raises_exactly(ud.DtypeMismatchError, f"interpolate mode {how!r} needs floating-point input, got {dtype} "
                       f"input; convert it with x.astype('float32') or ud.ops.cast(x, 'float32')", run, mode,
                       lambda x: resize(x, dtype), values.astype(np.int64))


REDUCTIONS_OVER_NO_AXES = [("sum", "axis", (), lambda x: ud.ops.sum(x, ())),
                           ("mean", "axis", [], lambda x: ud.ops.mean(x, [], keepdims=True)),
                           ("amax", "dim", (), lambda x: ud.ops.amax(x, ()))]


@pytest.mark.parametrize("index", range(len(REDUCTIONS_OVER_NO_AXES)))
def test_a_reduction_over_no_axes_is_one_error(mode, index):
    """``axis=()`` (or ``[]``): PyTorch reduces every axis, NumPy, TensorFlow, Keras and JAX none, and so the
    torch backend gave a scalar where the others gave the input back; a ``ValueError`` on every backend."""
    name, argument, given, reduce = REDUCTIONS_OVER_NO_AXES[index]
    raises_exactly(ValueError, f"{name} {argument}={given!r} is ambiguous (PyTorch reduces every axis, NumPy none); "
                   f"pass {argument}=None to reduce every axis", run, mode, reduce, X)


@pytest.mark.parametrize("start_dim", [0, -3, -1, 1, 2])
def test_flatten_from_any_axis_matches_torch(mode, start_dim):
    """``ud.ops.flatten`` and ``Flatten`` from each axis of a (2, 3, 4) input: ``torch.flatten``'s shape and order
    (from axis 0, TensorFlow and Keras gave (1, 24)); an axis the input lacks is one ``ShapeMismatchError`` (PyTorch
    raised an ``IndexError``, the other backends added an axis of size 1)."""
    values = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    expected = torch.flatten(torch.tensor(values), start_dim).numpy()
    layer = ud.nn.Flatten(start_dim)
    for flatten in (lambda x: ud.ops.flatten(x, start_dim), layer):
        got = run(mode, flatten, values)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    outside = 3 if start_dim >= 0 else -4
    raises_exactly(ud.errors.ShapeMismatchError, f"flatten start_dim {outside} is out of range for input of 3 axes; "
                   f"use one in [-3, 2]", run, mode, lambda x: ud.ops.flatten(x, outside), values)


@pytest.mark.parametrize("start_dim, end_dim", [(0, 1), (1, -2), (-2, -2), (0, -1)])
def test_flatten_between_two_axes_matches_torch(mode, start_dim, end_dim):
    """``Flatten(start_dim, end_dim)`` collapses the axes between the two, both included, as ``torch.nn.Flatten``
    (inside graphs traced for any sizes too); an ``end_dim`` the input lacks is a ``ShapeMismatchError``, one before
    ``start_dim`` a ``ValueError`` (PyTorch's ``RuntimeError``), the same on every backend."""
    values = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer, reference = ud.nn.Flatten(start_dim, end_dim), torch.nn.Flatten(start_dim, end_dim)
    expected = reference(torch.tensor(values)).numpy()
    got = run(mode, layer, values)
    assert got.shape == expected.shape and repr(layer) == repr(reference)
    np.testing.assert_array_equal(got, expected)
    raises_exactly(ud.errors.ShapeMismatchError, "Flatten(start_dim=1, end_dim=4) end_dim 4 is out of range for "
                   "input of 4 axes; use one in [-4, 3]", run, mode, ud.nn.Flatten(1, 4), values)
    raises_exactly(ValueError, "Flatten(start_dim=2, end_dim=1): start_dim 2 comes after end_dim 1 for input of 4 "
                   "axes", run, mode, ud.nn.Flatten(2, 1), values)


BOUNDS_OUTSIDE = [("clip", "int8", -1000, lambda x: ud.ops.clip(ud.ops.cast(x, "int8"), -1000, 1000)),
                  ("clip", "uint8", -1, lambda x: ud.ops.clip(ud.ops.cast(x, "uint8"), -1, 3)),
                  ("clip", "int32", 2 ** 31, lambda x: ud.ops.clip(ud.ops.cast(x, "int32"), None, 2 ** 31)),
                  ("hardtanh", "uint8", -1.0, lambda x: ud.ops.hardtanh(ud.ops.cast(x, "uint8"))),
                  ("hardtanh", "int8", 200, lambda x: ud.ops.hardtanh(ud.ops.cast(x, "int8"), -1, 200))]


@pytest.mark.parametrize("index", range(len(BOUNDS_OUTSIDE)))
def test_a_bound_outside_an_integer_dtype_is_one_error(mode, index):
    """``clip`` and ``hardtanh`` of integers to a bound their dtype cannot hold: one ``ValueError`` (PyTorch raises;
    TensorFlow and Keras cast the bound, wrapping around: int8 clipped to [-1000, 1000] gave [-24, -24, -24],
    uint8 through hardtanh [255, 255, 255]; JAX raised an ``OverflowError``); bounds within it keep torch's
    values and dtype."""
    name, dtype, bound, bounded = BOUNDS_OUTSIDE[index]
    low, high = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-2 ** 31, 2 ** 31 - 1)}[dtype]
    raises_exactly(ValueError, f"{name} bound {bound!r} lies outside the range of its {dtype} input, [{low}, {high}]; "
                   f"use a bound within it, or convert the input to a wider dtype (ud.ops.cast(x, 'int64') or "
                   f"'float64')", run, mode, bounded, np.array([3, 0, 5]))
    values = np.array([3, 0, 5, 120])
    expected = torch.clamp(torch.tensor(values, dtype=getattr(torch, dtype)), 1, 100).numpy()
    got = run(mode, lambda x: ud.ops.clip(ud.ops.cast(x, dtype), 1, 100), values)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    expected = F.hardtanh(torch.tensor(values, dtype=getattr(torch, dtype)), 0, 4).numpy()
    got = run(mode, lambda x: ud.ops.hardtanh(ud.ops.cast(x, dtype), 0, 4), values)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    # float bounds within the range truncate toward zero, as torch's (TensorFlow refused them), the modules too
    for function, oracle in [(lambda x: ud.ops.hardtanh(ud.ops.cast(x, dtype), 0.5, 4.7),
                              lambda t: F.hardtanh(t, 0.5, 4.7)),
                             (lambda x: ud.ops.relu6(ud.ops.cast(x, dtype)), F.relu6),
                             (lambda x: ud.nn.ReLU6()(ud.ops.cast(x, dtype)), F.relu6)]:
        expected = oracle(torch.tensor(values, dtype=getattr(torch, dtype))).numpy()
        got = run(mode, function, values)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    layer = ud.nn.Hardtanh(-1000, 1000)
    raises_exactly(ValueError, f"{layer.describe()} bound -1000.0 lies outside the range of its int8 input, "
                   f"[-128, 127]; use a bound within it, or convert the input to a wider dtype (ud.ops.cast(x, "
                   f"'int64') or 'float64')", run, mode, lambda x: layer(ud.ops.cast(x, "int8")), values)


def test_leaky_relu_and_regression_losses_of_integers_are_floats(mode):
    """``leaky_relu``, ``prelu``, ``mse_loss`` and ``l1_loss`` of integers compute in the float dtype in force, as
    the other float math does (PyTorch has no integer kernel for them; JAX truncated the slope, giving [0, 0, 2],
    and TensorFlow truncated the losses' means)."""
    values, target = np.array([-3, -1, 2], np.int32), np.array([1, 2, 1], np.int32)
    narrow = [lambda x, t: ud.ops.leaky_relu(ud.ops.cast(x, "int32"), 0.1),
              lambda x, t: ud.ops.mse_loss(ud.ops.cast(x, "int32"), ud.ops.cast(t, "int32")),
              lambda x, t: ud.ops.l1_loss(ud.ops.cast(x, "int32"), ud.ops.cast(t, "uint8")),
              lambda x, t: ud.ops.prelu(ud.ops.cast(x, "int32"), ud.ops.cast(t[:1], "float32") * 0.25)]
    floats = torch.tensor(values, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    expected_all = [F.leaky_relu(floats[0], 0.1), F.mse_loss(*floats), F.l1_loss(*floats),
                    F.prelu(floats[0], torch.tensor([0.25]))]
    for function, expected in zip(narrow, expected_all, strict=True):
        got = run(mode, function, values, target)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)


def test_losses_normalizations_and_dropout_of_integers_are_floats_of_the_dtype_in_force(mode):
    """Integer logits or log-probabilities to the cross-entropy and NLL losses (modules and ops), integers to
    ``layer_norm``, ``group_norm``, ``batch_norm`` and to dropout (and ``dropout2d``) in training compute in the
    float dtype in force, as the other float math does (JAX computed them in float64, TensorFlow and torch refused
    them in their own words, unless a path cast them already); ``batch_norm`` in training takes no running statistics, as PyTorch's
    ``F.batch_norm``, giving None for them. Values: torch's of the same numbers as float32."""
    values, labels = np.array([[3, -1, 2], [0, 4, -2]], np.int64), np.array([2, 0])
    floats = torch.tensor(values, dtype=torch.float32)
    cases = [(lambda x, t: ud.nn.CrossEntropyLoss()(x, t), F.cross_entropy(floats, torch.tensor(labels))),
             (lambda x, t: ud.ops.cross_entropy(x, t), F.cross_entropy(floats, torch.tensor(labels))),
             (lambda x, t: ud.nn.NLLLoss()(x, t), F.nll_loss(floats, torch.tensor(labels))),
             (lambda x, t: ud.ops.nll_loss(x, t), F.nll_loss(floats, torch.tensor(labels))),
             (lambda x, t: ud.ops.layer_norm(x, (3,)), F.layer_norm(floats, (3,))),
             (lambda x, t: ud.ops.group_norm(ud.ops.reshape(x, (1, 2, 3)), 2), F.group_norm(floats[None], 2)),
             (lambda x, t: ud.ops.batch_norm(x, None, None, training=True)[0], F.batch_norm(floats, None, None,
                                                                                              training=True)),
             (lambda x, t: ud.ops.dropout(x, 0.5) * 0, torch.zeros(2, 3)),
             (lambda x, t: ud.nn.Dropout(0.5)(x) * 0, torch.zeros(2, 3)),
             (lambda x, t: ud.ops.dropout2d(ud.ops.reshape(x, (1, 2, 3)), 0.5) * 0, torch.zeros(1, 2, 3)),
             (lambda x, t: ud.nn.Dropout2d(0.5)(ud.ops.reshape(x, (1, 2, 3))) * 0, torch.zeros(1, 2, 3))]
    for (_, expected), got in zip(cases, run_each(mode, [function for function, _ in cases], values, labels)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    _, mean, variance = ud.ops.batch_norm(ud.tensor(values), None, None, training=True)
    assert mean is None and variance is None
    with pytest.raises(ValueError, match="running_mean and running_var are needed outside training"):
        ud.ops.batch_norm(ud.tensor(values), None, None, training=False)


def test_the_sign_of_nan_and_of_minus_zero_is_torchs_plus_zero(mode):
    """``sign`` of NaN and of -0.0 is +0.0, as ``torch.sign`` (TensorFlow, Keras and JAX gave NaN, and -0.0)."""
    values = np.array([np.nan, -0.0, 0.0, -2.0, 3.0], np.float32)
    got, expected = run(mode, ud.ops.sign, values), torch.sign(torch.tensor(values)).numpy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


def test_a_float16_mean_is_summed_past_float16s_range(mode):
    """The mean of float16 values whose sum overflows float16 (8 x 30000) is torch's 30000 (TensorFlow summed in
    float16: inf), and a bfloat16 mean torch's too."""
    values = np.full((2, 4), 30000.0)
    for dtype in ("float16", "bfloat16"):
        expected = torch.tensor(values).to(getattr(torch, dtype)).mean(1, keepdim=True).float().numpy()
        got = run(mode, lambda x: ud.ops.cast(ud.ops.mean(ud.ops.cast(x, dtype), 1, True), "float32"), values)
        np.testing.assert_array_equal(got, expected)


def test_an_integer_attention_mask_is_one_error(mode):
    """An integer 0/1 mask (a tokenizer's attention mask) to ``scaled_dot_product_attention`` and to
    ``MultiheadAttention`` (``attn_mask``, ``key_padding_mask``): one ``DtypeMismatchError`` (PyTorch refuses it;
    every backend added it to the scores as a bias, masking nothing)."""
    tokens = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    zero_one = np.array([[1, 1, 0], [1, 0, 0]])
    layer = ud.nn.MultiheadAttention(4, 2, batch_first=True)
    raises_exactly(ud.DtypeMismatchError, "scaled_dot_product_attention: attn_mask must be booleans or floats (added "
                   "to the scores), got int64; convert a 0/1 mask with ud.ops.cast(attn_mask, 'bool')", run, mode,
                   lambda x, m: ud.ops.scaled_dot_product_attention(x, x, x, ud.ops.unsqueeze(m, 1)), tokens,
                   zero_one)
    for what, call, mask in [("key_padding_mask", lambda x, m: layer(x, x, x, key_padding_mask=m)[0], zero_one),
                             ("attn_mask", lambda x, m: layer(x, x, x, attn_mask=m)[0], np.triu(zero_one[[0, 0, 0]]))]:
        raises_exactly(ud.DtypeMismatchError, f"{layer.describe()}: {what} must be booleans or floats (added to the "
                       f"scores), got int64; convert a 0/1 mask with ud.ops.cast({what}, 'bool')", run, mode, call,
                       tokens, mask)


def test_integer_matmul_is_exact_as_torch(mode):
    """``matmul`` of int32 and of int64 values past float32's and float64's exact range: torch's exact products
    in the inputs' dtype (Keras-on-TensorFlow multiplied integers in float32: 4097 * 4097 gave 16785408)."""
    a, b = np.array([[4097, 2 ** 40 + 1], [-3, 2 ** 31 - 1]]), np.array([[4097, 2 ** 20], [3, -5]])
    for dtype in ("int32", "int64"):
        expected = (torch.tensor(a).to(getattr(torch, dtype)) @ torch.tensor(b).to(getattr(torch, dtype))).numpy()
        got = run(mode, lambda x, y: ud.ops.matmul(ud.ops.cast(x, dtype), ud.ops.cast(y, dtype)), a, b)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


NARROW_INDEXING = [  # (name, the op over (table, indices) with the indices cast to a dtype)
    ("take", lambda x, i, dtype: ud.ops.take(x, ud.ops.cast(i, dtype), 1)),
    ("gather", lambda x, i, dtype: ud.ops.gather(x, 1, ud.ops.cast(i, dtype))),
    ("embedding", lambda x, i, dtype: ud.ops.embedding(ud.ops.cast(i, dtype), x)),
    ("one_hot", lambda x, i, dtype: ud.ops.one_hot(ud.ops.cast(i, dtype), 4)),
    ("cross_entropy", lambda x, i, dtype: ud.ops.cross_entropy(x[:, :4], ud.ops.cast(i[:, 0], dtype))),
]


@pytest.mark.parametrize("index", range(len(NARROW_INDEXING)))
def test_indices_of_any_integer_dtype_index_as_int64(mode, index):
    """uint8, int8 and int16 indices and labels give what int64 ones give (torch and TensorFlow refused them in
    their own words, JAX and Keras took them); float indices to ``max_unpool2d`` are a ``DtypeMismatchError``
    as to the other indexing ops (TensorFlow and Keras truncated them)."""
    name, indexing = NARROW_INDEXING[index]
    table, indices = RNG.standard_normal((4, 6)).astype(np.float32), np.array([[3, 0], [1, 3], [2, 2], [0, 1]])
    dtypes = ("int64", "uint8", "int8", "int16", "int32")
    expected, *got = run_each(mode, [lambda x, i, dtype=dtype: indexing(x, i, dtype) for dtype in dtypes], table,
                              indices)
    for dtype, value in zip(dtypes[1:], got):
        assert value.dtype == expected.dtype and value.shape == expected.shape, (name, dtype)
        np.testing.assert_array_equal(value, expected)
    layer = ud.nn.Embedding(4, 3)
    expected, got = run_each(mode, [lambda i: layer(i),
                                    lambda i: layer(ud.ops.cast(i, "uint8"))], indices)
    np.testing.assert_array_equal(got, expected)
    raises_exactly(ud.DtypeMismatchError, "max_unpool2d: indices must be integers, got float32 indices; convert them "
                   "with ud.ops.cast(indices, 'int64')", run, mode,
                   lambda x: ud.ops.max_unpool2d(x, ud.ops.zeros_like(x), 2), X[:, :, :2, :2])


def _layers_with_parameters():
    """(layer, input shape, whether PyTorch's kernel takes float16/bfloat16 input beside its float32 parameters)."""
    return [(ud.nn.Linear(3, 2), (2, 3), False), (ud.nn.Conv1d(2, 1, 2), (1, 2, 3), False),
            (ud.nn.Conv2d(2, 1, 2), (1, 2, 3, 3), False), (ud.nn.ConvTranspose2d(2, 1, 2), (1, 2, 3, 3), False),
            (ud.nn.LSTM(3, 2, batch_first=True), (2, 4, 3), False), (ud.nn.GRU(3, 2), (4, 2, 3), False),
            (ud.nn.MultiheadAttention(4, 2, batch_first=True), (2, 3, 4), False), (ud.nn.PReLU(2), (2, 2), False),
            (ud.nn.BatchNorm2d(2), (2, 2, 3, 3), True), (ud.nn.LayerNorm(4), (2, 4), True),
            (ud.nn.GroupNorm(1, 2), (2, 2, 3), True)]


def _first_output(layer, x):
    result = layer(x, x, x) if isinstance(layer, ud.nn.MultiheadAttention) else layer(x)
    return result[0] if isinstance(result, tuple) else result


def test_floats_of_another_dtype_than_a_layers_parameters_are_one_error(mode):
    """float64 input to a float32 layer, and float16 input to one whose PyTorch kernel refuses it (all but the
    normalizations), and the same to ``linear``, ``conv1d``, ``conv2d``, ``conv_transpose2d`` and ``prelu``: one
    ``DtypeMismatchError`` naming the layer and both dtypes, as PyTorch refuses them (TensorFlow refused them in its
    own words; JAX promoted the two, giving float64 or float32); a float64 bias to ``linear`` and a float64 initial
    state to a float32 ``GRU`` too."""
    values = RNG.standard_normal((2, 2, 3, 3))
    for layer, shape, takes_halves in _layers_with_parameters():
        data = values.ravel()[:np.prod(shape)].reshape(shape)
        for dtype in ("float64",) if takes_halves else ("float64", "float16"):
            remedy = "create the model under ud.use_dtype('float64')" if dtype == "float64" else \
                "train in mixed precision with ud.Precision"
            raises_exactly(ud.DtypeMismatchError, f"{layer.describe()} has float32 parameters and got {dtype} input; "
                           f"cast the input with ud.ops.cast(x, 'float32'), or {remedy}", run, mode,
                           lambda x: _first_output(layer, ud.ops.cast(x, dtype)), data)
    weights = {"linear": (3, 3), "conv1d": (1, 3, 2), "conv2d": (1, 3, 2, 2), "conv_transpose2d": (3, 1, 2, 2),
               "prelu": (1,)}
    for name, weight_shape in weights.items():
        data, weight = values[:1, :, :3].reshape((1, 3, 3, 2))[..., 0], np.ones(weight_shape, np.float32)
        data = data[:, :, :, None] if name.endswith("2d") else data
        function = getattr(ud.ops, name)
        raises_exactly(ud.DtypeMismatchError, f"{name} has float32 parameters and got float64 input; cast the input "
                       "with ud.ops.cast(x, 'float32'), or create the model under ud.use_dtype('float64')", run, mode,
                       lambda x, w: function(ud.ops.cast(x, "float64"), w), data, weight)
    raises_exactly(ud.DtypeMismatchError, "linear has float32 parameters and got float64 bias; cast the bias with "
                   "ud.ops.cast(x, 'float32'), or create the model under ud.use_dtype('float64')", run, mode,
                   lambda x, w: ud.ops.linear(x, w, ud.ops.cast(w[0], "float64")), values[0, 0], np.ones((3, 3)))
    gru = ud.nn.GRU(3, 2)
    raises_exactly(ud.DtypeMismatchError, f"{gru.describe()} has float32 parameters and got float64 initial state; "
                   "cast the initial state with ud.ops.cast(x, 'float32'), or create the model under "
                   "ud.use_dtype('float64')", run, mode,
                   lambda x, h: gru(x, ud.ops.cast(h, "float64"))[0], values.reshape(-1)[:24].reshape(4, 2, 3),
                   np.zeros((1, 2, 2)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_normalization_layers_take_half_input_as_torch(mode, dtype):
    """float16 and bfloat16 input to float32 ``BatchNorm2d`` (training and evaluation), ``LayerNorm`` and
    ``GroupNorm``: PyTorch's mixed-type kernels' result, computed in float32 and given back in the input's dtype
    (TensorFlow refused it, JAX and Keras-on-JAX gave float32, torch's backend GroupNorm float32)."""
    values = RNG.standard_normal((2, 2, 3, 4)).astype(np.float32)
    native = torch.tensor(values).to(getattr(torch, dtype))
    for layer, shape, takes_halves in _layers_with_parameters():
        if not takes_halves:
            continue
        for training in (True, False) if isinstance(layer, ud.nn.BatchNorm2d) else (True,):
            layer.train(training)
            data = values.reshape(-1)[:np.prod(shape)].reshape(shape)
            x = native.reshape(-1)[:np.prod(shape)].reshape(shape)
            if isinstance(layer, ud.nn.BatchNorm2d):
                statistics = [torch.tensor(ud.to_numpy(s)) for s in (layer.running_mean, layer.running_var)]
                expected = F.batch_norm(x, *statistics, torch.ones(2), torch.zeros(2), training)
            elif isinstance(layer, ud.nn.LayerNorm):
                expected = F.layer_norm(x, (4,), torch.ones(4), torch.zeros(4))
            else:
                expected = F.group_norm(x, 1, torch.ones(2), torch.zeros(2))
            got = run(mode, lambda x: ud.ops.cast(layer(ud.ops.cast(x, dtype)), "float32"), data)
            np.testing.assert_allclose(got, expected.float().numpy(), rtol=1e-2, atol=1e-2, err_msg=f"{layer}")
            assert ud.to_numpy(layer(ud.ops.cast(ud.tensor(data), dtype))).dtype.name == dtype


FUNCTIONAL_NORMS = [  # (name, the op of x and its two parameters, torch's op of the same), over (2, 2, 3, 4)
    ("layer_norm", lambda x, w, b: ud.ops.layer_norm(x, (4,), w, b), lambda x, w, b: F.layer_norm(x, (4,), w, b)),
    ("group_norm", lambda x, w, b: ud.ops.group_norm(x, 1, w, b), lambda x, w, b: F.group_norm(x, 1, w, b)),
    ("batch_norm", lambda x, w, b: ud.ops.batch_norm(x, w, b * b + 0.5, w, b)[0],
     lambda x, w, b: F.batch_norm(x, w, b * b + 0.5, w, b)),
    ("batch_norm", lambda x, w, b: ud.ops.batch_norm(x, w, b * b + 0.5, w, b, training=True)[0],
     lambda x, w, b: F.batch_norm(x, w.clone(), b * b + 0.5, w, b, training=True)),
]


@pytest.mark.parametrize("index", range(len(FUNCTIONAL_NORMS)))
def test_functional_normalizations_take_the_dtypes_torch_takes(mode, index):
    """``layer_norm``, ``group_norm`` and ``batch_norm`` of float32 input with float64 parameters, float64 input
    with float32 parameters, or parameters of two float dtypes: one ``DtypeMismatchError`` naming both dtypes, as
    PyTorch refuses them (TensorFlow and Keras refused them in their own words, JAX and torch's backend
    ``group_norm`` promoted them to float64); float16 and bfloat16 input beside float32 parameters: PyTorch's
    mixed-type result, computed in float32 and given back in the input's dtype."""
    name, fn, oracle = FUNCTIONAL_NORMS[index]
    values, parameters = RNG.standard_normal((2, 2, 3, 4)), RNG.standard_normal((2, 4))
    width = 4 if name == "layer_norm" else 2
    weight, bias = parameters[0, :width], parameters[1, :width]
    for given, held in (("float32", "float64"), ("float64", "float32")):
        raises_exactly(ud.DtypeMismatchError, f"{name} has {held} parameters and got {given} input; cast the input "
                       f"with ud.ops.cast(x, '{held}'), or " + ("create the model under ud.use_dtype('float64')" if
                                                                 held == "float32" else "call it under "
                                                                 "ud.use_dtype('float64'), which converts arrays to "
                                                                 "it"), run, mode,
                       lambda x, w, b: fn(ud.ops.cast(x, given), ud.ops.cast(w, held), ud.ops.cast(b, held)),
                       values, weight, bias)
        with autocast_modules([], ud.config.backend().ops, "bfloat16"):  # which leaves them to the mixed kernels
            with pytest.raises(ud.DtypeMismatchError, match=f"^{name} has {held} parameters and got {given} input"):
                run(mode, lambda x, w, b: fn(ud.ops.cast(x, given), ud.ops.cast(w, held), ud.ops.cast(b, held)),
                    values, weight, bias)
    layer = {"layer_norm": ud.nn.LayerNorm(4), "group_norm": ud.nn.GroupNorm(1, 2), "batch_norm": ud.nn.BatchNorm2d(2)}
    with autocast_modules([], ud.config.backend().ops, "bfloat16"):  # the layers too, naming themselves
        with pytest.raises(ud.DtypeMismatchError, match=r"^\w+\(.*\) has float32 parameters and got float64 input"):
            run(mode, lambda x: layer[name](ud.ops.cast(x, "float64")), values)
    first, second = ("weight", "bias") if name != "batch_norm" else ("running_mean", "running_var")

    def mixed(x, w, b):  # the second parameter float64
        if name != "batch_norm":
            return fn(x, w, ud.ops.cast(b, "float64"))
        return ud.ops.batch_norm(x, w, ud.ops.cast(b * b + 0.5, "float64"), w, b)[0]

    raises_exactly(ud.DtypeMismatchError, f"{name} takes parameters of one dtype, got float32 {first} and float64 "
                   f"{second}; cast them to one, e.g. ud.ops.cast({second}, 'float32')", run, mode, mixed, values,
                   weight, bias)
    for half in ("float16", "bfloat16"):
        native = [torch.tensor(a, dtype=torch.float32) for a in (values, weight, bias)]
        expected = oracle(native[0].to(getattr(torch, half)), *native[1:])
        got = run(mode, lambda x, w, b: ud.ops.cast(fn(ud.ops.cast(x, half), w, b), "float32"), values, weight, bias)
        np.testing.assert_allclose(got, expected.float().numpy(), rtol=1e-2, atol=1e-2, err_msg=half)
        assert run(mode, lambda x, w, b: fn(ud.ops.cast(x, half), w, b), values, weight, bias).dtype.name == half


def test_a_float_attention_mask_of_another_dtype_than_the_query_is_one_error(mode):
    """A float ``attn_mask`` to ``scaled_dot_product_attention`` of another dtype than the query's but float32,
    and a float ``attn_mask`` or ``key_padding_mask`` to ``MultiheadAttention`` of another dtype than its input:
    one ``DtypeMismatchError``, as PyTorch refuses them (TensorFlow and Keras refused them in their own words, JAX
    promoted the scores to float64); a float32 mask beside a float64 query gives torch's values."""
    query, mask = RNG.standard_normal((1, 2, 3, 4)), RNG.standard_normal((3, 3))
    for dtype in ("float64", "float16"):
        raises_exactly(ud.DtypeMismatchError, f"scaled_dot_product_attention: a float attn_mask must be the query's "
                       f"float32, got {dtype}; cast it with ud.ops.cast(attn_mask, 'float32')", run, mode,
                       lambda q, m: ud.ops.scaled_dot_product_attention(q, q, q, ud.ops.cast(m, dtype)), query, mask)
    raises_exactly(ud.DtypeMismatchError, "scaled_dot_product_attention: a float attn_mask must be the query's "
                   "float64 or float32, got float16; cast it with ud.ops.cast(attn_mask, 'float64')", run, mode,
                   lambda q, m: ud.ops.scaled_dot_product_attention(*[ud.ops.cast(q, "float64")] * 3,
                                                                    ud.ops.cast(m, "float16")), query, mask)
    wide = torch.tensor(query.astype(np.float32), dtype=torch.float64)  # (run makes the query float32 first)
    expected = F.scaled_dot_product_attention(wide, wide, wide, torch.tensor(mask, dtype=torch.float32)).numpy()
    got = run(mode, lambda q, m: ud.ops.scaled_dot_product_attention(*[ud.ops.cast(q, "float64")] * 3, m), query,
              mask)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    attention = ud.nn.MultiheadAttention(4, 2, batch_first=True)
    for what, shape in (("attn_mask", (3, 3)), ("key_padding_mask", (2, 3))):
        raises_exactly(ud.DtypeMismatchError, f"{attention.describe()}: a float {what} must be the query's float32, "
                       f"got float64; cast it with ud.ops.cast({what}, 'float32')", run, mode,
                       lambda q, m: attention(q, q, q, **{what: ud.ops.cast(m, "float64")})[0], query[0],
                       mask.ravel()[:np.prod(shape)].reshape(shape))
    half = torch.tensor(query, dtype=torch.float16)  # a half query beside a float32 mask: taken, as PyTorch's
    expected = F.scaled_dot_product_attention(half, half, half, torch.tensor(mask, dtype=torch.float32))
    got = run(mode, lambda q, m: ud.ops.scaled_dot_product_attention(*[ud.ops.cast(q, "float16")] * 3, m), query,
              mask)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected.float().numpy(), rtol=2e-3, atol=2e-3)
    got = run(mode, lambda q: ud.ops.scaled_dot_product_attention(q, q, q, mask), query)  # a NumPy mask: ud.tensor's
    expected = F.scaled_dot_product_attention(*[torch.tensor(query, dtype=torch.float32)] * 3,
                                              torch.tensor(mask, dtype=torch.float32))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


REGRESSION_LOSSES = [("mse_loss", ud.nn.MSELoss, F.mse_loss), ("l1_loss", ud.nn.L1Loss, F.l1_loss),
                     ("smooth_l1_loss", ud.nn.SmoothL1Loss, F.smooth_l1_loss),
                     ("huber_loss", ud.nn.HuberLoss, F.huber_loss)]


def test_regression_losses_of_two_float_dtypes_take_torchs_dtype(mode):
    """``mse_loss``, ``l1_loss`` and ``smooth_l1_loss`` (ops and modules) of float16 with float32 and float32 with
    float64, either way round, and an integer target beside float16 (not float32: the float dtype in force is
    for two integer operands), compute in the dtype ``torch.result_type`` gives them, and ``huber_loss`` in the
    prediction's, as ``torch.nn.functional``'s (the other frameworks computed them all in the prediction's
    dtype)."""
    prediction, target = np.array([[0.5, 1.5, -2.0]]), np.array([[1.0, 0.75, -0.25]])
    pairs = [("float16", "float32"), ("float32", "float16"), ("float64", "float32"), ("float32", "float64"),
             ("float16", "int64")]
    cases = list(itertools.product(REGRESSION_LOSSES, pairs, ("mean", "none")))
    losses = [(lambda p, t, name=name, reduction=reduction: getattr(ud.ops, name)(p, t, reduction),
               module(reduction=reduction)) for (name, module, _), _, reduction in cases]

    def all_losses(p, t):  # (one graph for every case: a graph a case took seconds in all)
        return tuple(loss(ud.ops.cast(p, first), ud.ops.cast(t, second))
                     for (_, (first, second), _), pair in zip(cases, losses) for loss in pair)

    inputs = ud.tensor(prediction), ud.tensor(target)
    got = [ud.to_numpy(value) for value in (ud.function(all_losses) if mode == "graph" else all_losses)(*inputs)]
    for index, ((name, _, oracle), (first, second), reduction) in enumerate(cases):
        want = oracle(torch.tensor(prediction).to(getattr(torch, first)),
                      torch.tensor(target).to(getattr(torch, second)), reduction=reduction).numpy()
        for value in got[2 * index:2 * index + 2]:
            assert value.dtype == want.dtype, (name, first, second, value.dtype, want.dtype)
            np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=f"{name} {first} {second}")



def test_kl_div_of_two_float_dtypes_takes_torchs_dtype(mode):
    """``kl_div`` and ``KLDivLoss`` of float32 beside a float64 target (either way round, and float16 beside float32)
    compute in the dtype ``torch.result_type`` gives them, as ``torch.nn.functional.kl_div`` (a float32 input gave a
    float32 loss, the target rounded to it)."""
    log_probabilities, target = np.log([[0.2, 0.3, 0.5]]), np.array([[0.1, 0.6, 0.3]])
    cases = list(itertools.product([("float32", "float64"), ("float64", "float32"), ("float16", "float32")],
                                   (False, True)))
    losses = [lambda p, t, log_target: ud.ops.kl_div(p, t, "sum", log_target),
              lambda p, t, log_target: ud.nn.KLDivLoss("sum", log_target)(p, t)]

    def all_losses(p, t):
        return tuple(loss(ud.ops.cast(p, first), ud.ops.cast(ud.ops.log(t) if log_target else t, second), log_target)
                     for (first, second), log_target in cases for loss in losses)

    got = all_losses(ud.tensor(log_probabilities), ud.tensor(target)) if mode == "eager" else ud.function(
        all_losses)(ud.tensor(log_probabilities), ud.tensor(target))
    for index, ((first, second), log_target) in enumerate(cases):
        want = F.kl_div(torch.tensor(log_probabilities).to(getattr(torch, first)),
                        torch.tensor(np.log(target) if log_target else target).to(getattr(torch, second)),
                        reduction="sum", log_target=log_target).numpy()
        for value in got[index * len(losses):(index + 1) * len(losses)]:
            value = ud.to_numpy(value)
            assert value.dtype == want.dtype, (first, second, log_target, value.dtype, want.dtype)
            np.testing.assert_allclose(value, want, rtol=1e-3 if "float16" in (first, second) else 1e-5)


def test_bce_with_logits_of_two_float_dtypes_gives_torchs_dtype(mode):
    """``BCEWithLogitsLoss`` and its ops of logits and a float target of two dtypes: the loss in the target's dtype,
    as PyTorch's kernel gives it (it multiplies into 1 - target in place), computed in the wider (float16 logits beside
    a float32 target gave float16, float64 logits beside float32 float64)."""
    logits, target = np.array([[0.5, -1.5, 2.0]]), np.array([[1.0, 0.25, 0.0]])
    pairs = [("float16", "float32"), ("float64", "float32")]
    losses = (ud.ops.bce_with_logits, ud.ops.binary_cross_entropy_with_logits, ud.nn.BCEWithLogitsLoss())

    def all_losses(p, t):
        return tuple(loss(ud.ops.cast(p, first), ud.ops.cast(t, second)) for first, second in pairs for loss in losses)

    got = all_losses(ud.tensor(logits), ud.tensor(target)) if mode == "eager" else ud.function(all_losses)(
        ud.tensor(logits), ud.tensor(target))
    for index, (first, second) in enumerate(pairs):
        want = F.binary_cross_entropy_with_logits(torch.tensor(logits).to(getattr(torch, first)),
                                                  torch.tensor(target).to(getattr(torch, second))).numpy()
        for value in got[index * len(losses):(index + 1) * len(losses)]:
            value = ud.to_numpy(value)
            assert value.dtype == want.dtype, (first, second, value.dtype, want.dtype)
            np.testing.assert_allclose(value, want, rtol=1e-3 if "float16" in (first, second) else 1e-6)

# ---- masks, initial states and lengths of the wrong shape inside a graph ------------------------------------------
SEQ = RNG.standard_normal((3, 2, 4)).astype(np.float32)  # (L, N, E)
WRONG_SHAPES = {  # name: (layer, its call, inputs (arrays), the one message eagerly and in a graph)
    "key_padding_mask": (lambda: ud.nn.MultiheadAttention(4, 2), lambda m, a, k: m(a, a, a, key_padding_mask=k),
                         (SEQ, np.zeros((2, 4), bool)), "MultiheadAttention(embed_dim=4, num_heads=2, "
                         "batch_first=False) expected key_padding_mask of shape (2, 3) (batch, source length), "
                         "received (2, 4)"),
    "unbatched key_padding_mask": (lambda: ud.nn.MultiheadAttention(4, 2),
                                   lambda m, a, k: m(a, a, a, key_padding_mask=k), (SEQ[:, 0], np.zeros(4, bool)),
                                   "MultiheadAttention(embed_dim=4, num_heads=2, batch_first=False) expected "
                                   "key_padding_mask of shape (3,) (batch, source length), received (4,)"),
    "unpooling to an inconsistent output_size": (
        lambda: ud.nn.MaxUnpool2d(2), lambda m, v, i, big: m(v, i, output_size=ud.ops.shape(big)),
        (np.ones((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.int64), np.ones((1, 1, 9, 9), np.float32)),
        "max_unpool2d: output_size (9, 9) is inconsistent with the input: its height must lie strictly between 2 and "
        "6 (input shape (1, 1, 2, 2))"),
    "attn_mask": (lambda: ud.nn.MultiheadAttention(4, 2), lambda m, a, k: m(a, a, a, attn_mask=k),
                  (SEQ, np.zeros((4, 3, 2), bool)), "MultiheadAttention(embed_dim=4, num_heads=2, batch_first=False) "
                  "expected attn_mask of shape (L, S) = (3, 3) or (N * num_heads, L, S) = (4, 3, 3), "
                  "received (4, 3, 2)"),
    "GRU h0": (lambda: ud.nn.GRU(4, 3, 2), lambda m, a, h: m(a, h), (SEQ, np.zeros((1, 2, 3), np.float32)),
               "GRU(4, 3, num_layers=2) expected an initial state of shape (2, 2, 3) (num_layers * num_directions, "
               "batch, hidden_size), received (1, 2, 3)"),
    "LSTM c0": (lambda: ud.nn.LSTM(4, 3), lambda m, a, h, c: m(a, (h, c)),
                (SEQ, np.zeros((1, 2, 3), np.float32), np.zeros((1, 3, 3), np.float32)),
                "LSTM(4, 3) expected an initial state of shape (1, 2, 3) (num_layers * num_directions, batch, "
                "hidden_size), received (1, 3, 3)"),
    "LSTM lengths": (lambda: ud.nn.LSTM(4, 3), lambda m, a, n: m(a, lengths=n), (SEQ, np.array([3, 2, 1])),
                     "LSTM(4, 3) expected lengths of shape (2,) (one per sequence), received (3,)"),
}


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_a_mask_state_or_lengths_of_the_wrong_shape_is_one_error_in_a_graph_too(backend, case):
    """A key padding mask, an attention mask, an initial state or the lengths of a shape that does not fit the
    input's: the same ``ShapeMismatchError`` eagerly and inside ``ud.function``, where a TensorFlow graph leaves
    every size unknown while tracing (TensorFlow's own broadcast and slice errors when the graph ran: the eager
    check compared the sizes known while tracing alone)."""
    build, call, arrays, message = WRONG_SHAPES[case]
    layer = build()
    for fn in (lambda *t: call(layer, *t), ud.function(lambda *t: call(layer, *t))):
        raises_exactly(ud.ShapeMismatchError, message, fn, *[ud.tensor(a) for a in arrays])


def test_ignore_index_with_class_probabilities_is_an_error_as_in_torch(backend):
    """A class index to ignore means nothing for class probabilities: ``ignore_index`` of 0 or more beside them is a
    ``ValueError`` naming the loss, as PyTorch's ``RuntimeError`` (it was ignored); a negative one (the default
    -100) is PyTorch's no-op."""
    logits, probabilities = X[0, 0, :, :3], np.full((5, 3), 1 / 3, np.float32)
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(probabilities), ignore_index=0)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*ignore_index=0 applies to integer labels"):
        ud.nn.CrossEntropyLoss(ignore_index=0)(ud.tensor(logits), ud.tensor(probabilities))
    with pytest.raises(ValueError, match=r"cross_entropy_loss: ignore_index=2 applies to integer labels"):
        ud.ops.cross_entropy_loss(ud.tensor(logits), ud.tensor(probabilities), ignore_index=2)
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(probabilities), ignore_index=-1)
    got = ud.nn.CrossEntropyLoss(ignore_index=-1)(ud.tensor(logits), ud.tensor(probabilities))
    assert float(ud.to_numpy(got)) == pytest.approx(float(expected), rel=1e-6)


INTEGER_INPUT = [  # (the layer's name in the message, a layer over (2, 3, 4) integers)
    ("GRU(4, 3)", lambda: ud.nn.GRU(4, 3)),
    ("LSTM(4, 3)", lambda: ud.nn.LSTM(4, 3)),
    ("RNN(4, 3)", lambda: ud.nn.RNN(4, 3)),
    ("MultiheadAttention(embed_dim=4, num_heads=2, batch_first=False)", lambda: ud.nn.MultiheadAttention(4, 2)),
    ("LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True)", lambda: ud.nn.LayerNorm(4)),
    ("LayerNorm((4,), eps=1e-05, elementwise_affine=False, bias=False)",
     lambda: ud.nn.LayerNorm(4, elementwise_affine=False)),
    ("GroupNorm(1, 3, eps=1e-05, affine=False, bias=False)", lambda: ud.nn.GroupNorm(1, 3, affine=False)),
    ("BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)",
     lambda: ud.nn.BatchNorm1d(3)),
]


@pytest.mark.parametrize("index", range(len(INTEGER_INPUT)))
def test_integers_to_a_sequence_or_normalization_layer_are_one_error(mode, index):
    """Integer input (token ids by mistake) to a recurrent, attention or normalization layer: one
    ``DtypeMismatchError``, as ``Linear``'s (jax ran them, LayerNorm and BatchNorm1d giving float64; torch's GroupNorm
    too; the others raised the framework's errors), as PyTorch's layers refuse integers."""
    name, build = INTEGER_INPUT[index]
    layer = build()
    integers = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    call = (lambda x: layer(x, x, x)[0]) if "Attention" in name else (lambda x: layer(x)[0]) if "(4, 3)" in name \
        else (lambda x: layer(x))
    raises_exactly(ud.DtypeMismatchError, f"{name} needs floating-point input, got int64 input; convert it with "
                   f"x.astype('float32') or ud.ops.cast(x, 'float32')", run, mode, call, integers)


def test_probabilities_outside_0_and_1_are_one_error(mode):
    """``BCELoss`` of a value outside [0, 1] is one ``ValueOutOfRangeError`` counting them, eagerly and inside
    graphs, as PyTorch refuses it ("all elements of input should be between 0 and 1"; it was NaN); NaN passes, to
    the non-finite guard (a float16 step that overflowed is skipped, not an error)."""
    probabilities = np.array([[0.2, 1.5], [0.3, -0.1]], np.float32)
    targets = np.ones((2, 2), np.float32)
    with pytest.raises(RuntimeError, match="between 0 and 1"):  # (PyTorch's own)
        F.binary_cross_entropy(torch.tensor(probabilities), torch.tensor(targets))
    raises_exactly(ud.ValueOutOfRangeError, "binary_cross_entropy probabilities must lie in [0, 1]; found 2 value(s) "
                   "outside", run, mode, lambda p, t: ud.nn.BCELoss()(p, t), probabilities, targets)
    edges = np.array([[0.0, 1.0], [0.5, np.nan]], np.float32)
    assert np.isnan(run(mode, lambda p, t: ud.nn.BCELoss()(p, t), edges, targets))


@pytest.mark.parametrize("dim, shown", [(-1, "axis 2: it"), ((0, 2), "axes (0, 2): each")])
def test_squeeze_of_an_axis_of_another_size_is_torchs_or_one_error_in_a_graph_of_unknown_sizes(mode, dim, shown):
    """``ud.ops.squeeze(x, dim)`` of an axis of another size than 1 leaves it in place, as ``torch.squeeze``, eagerly
    on every backend and in every graph that knows the size (torch's, JAX's); a graph traced for any size (TensorFlow's
    and Keras's ``ud.function``), whose rank cannot depend on a size, raises one ``ShapeMismatchError`` saying so when
    it runs, where TensorFlow raised its squeeze's ``InvalidArgumentError`` and Keras one of a reshape. Found by
    differential fuzzing."""
    values = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    expected = torch.squeeze(torch.tensor(values), dim).numpy()
    try:
        got = run(mode, lambda x: ud.ops.squeeze(x, dim), values)
    except ud.ShapeMismatchError as error:
        assert mode == "graph" and type(error) is ud.ShapeMismatchError
        assert str(error) == (f"squeeze dim={dim!r} inside a graph traced for any size of {shown} must have size 1 "
                              f"there (PyTorch leaves an axis of another size in place, which would make the graph's "
                              f"rank depend on a size); got input of shape (1, 3, 4)")
    else:
        assert got.shape == expected.shape and np.array_equal(got, expected)
    assert np.array_equal(run(mode, lambda x: ud.ops.squeeze(x, 0), values), values[0])  # (a size 1: dropped)


@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"])
def test_a_convolution_bias_of_another_size_is_one_error(mode, name):
    """``ud.ops.conv1d``/``conv2d``/``conv_transpose1d``/``conv_transpose2d`` with a bias that is not one value per
    output channel (out; a transposed weight's out / groups times groups) is one ``ShapeMismatchError`` naming both
    shapes on every backend, eagerly and inside ``ud.function`` (where TensorFlow's graph knows no size), as PyTorch
    refuses it: torch's backend raised torch's ``RuntimeError``, TensorFlow an ``InvalidArgumentError`` (oneDNN's
    ``AbortedError`` in a graph), JAX a broadcasting ``TypeError``. The right bias gives torch's values. Found by
    differential fuzzing."""
    rng = np.random.default_rng(0)
    spatial = 2 if name.endswith("2d") else 1
    x = rng.standard_normal((2, 4) + (5,) * spatial).astype(np.float32)
    weight = rng.standard_normal(((4, 3) if "transpose" in name else (6, 2)) + (3,) * spatial).astype(np.float32)
    shown = ", ".join(map(str, weight.shape))
    ours, theirs = getattr(ud.ops, name), getattr(F, name)
    for bias in (np.zeros(5, np.float32), np.zeros(3, np.float32)):
        with pytest.raises(RuntimeError):  # (PyTorch's own)
            theirs(torch.tensor(x), torch.tensor(weight), torch.tensor(bias), groups=2)
        raises_exactly(ud.ShapeMismatchError, f"{name} expected a bias of shape (6,), one value per output channel of "
                       f"a weight of shape ({shown}), received a bias of shape ({len(bias)},)",
                       run, mode, lambda t, w, b: ours(t, w, b, groups=2), x, weight, bias)
    raises_exactly(ud.ShapeMismatchError, f"{name} expected a bias of one value per output channel, received a bias "
                   f"of 2 axes", run, mode, lambda t, w, b: ours(t, w, b, groups=2), x, weight,
                   np.zeros((1, 6), np.float32))
    bias = rng.standard_normal(6).astype(np.float32)
    expected = theirs(torch.tensor(x), torch.tensor(weight), torch.tensor(bias), groups=2).numpy()
    got = run(mode, lambda t, w, b: ours(t, w, b, groups=2), x, weight, bias)
    assert max_relative_difference(got, expected) <= 2e-6


@pytest.mark.parametrize("shape, message", [
    ((5, -1), "reshape shape (5, -1) is invalid for an input of shape (3, 4) (12 elements)"),
    ([5, 3], "reshape shape (5, 3) is invalid for an input of shape (3, 4) (12 elements)"),
    (13, "reshape shape (13,) is invalid for an input of shape (3, 4) (12 elements)"),
    ((-1, -1), "reshape shape (-1, -1) is invalid: its sizes must be non-negative ints, and one of them -1 at most "
               "(the size inferred)"),
    ((3, -2), "reshape shape (3, -2) is invalid: its sizes must be non-negative ints, and one of them -1 at most "
              "(the size inferred)"),
    ((0, -1), "reshape shape (0, -1) is ambiguous: the size -1 beside a size 0 could be any size")])
def test_a_reshape_torch_refuses_is_one_error(mode, shape, message):
    """``ud.ops.reshape`` to a shape ``torch.reshape`` refuses is one ``ShapeMismatchError`` on every backend, eagerly
    and inside ``ud.function`` (where TensorFlow's graph knows no size: the check runs with it); torch's backend
    raised torch's ``RuntimeError``, TensorFlow and Keras an ``InvalidArgumentError``, JAX a ``TypeError``. Shapes
    that fit (an int, a list, one -1) give torch's. Found by differential fuzzing."""
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(RuntimeError):  # (PyTorch's own)
        torch.reshape(torch.tensor(values), shape if isinstance(shape, (tuple, list)) else (shape,))
    raises_exactly(ud.ShapeMismatchError, message, run, mode, lambda x: ud.ops.reshape(x, shape), values)
    for fits in (12, [2, -1, 3], (4, 3), (1, -1, 1)):
        expected = torch.reshape(torch.tensor(values), fits if isinstance(fits, (tuple, list)) else (fits,))
        assert np.array_equal(run(mode, lambda x: ud.ops.reshape(x, fits), values), expected.numpy())


def test_targets_outside_0_and_1_are_one_error(mode):
    """``BCELoss`` and ``ud.ops.binary_cross_entropy`` of a target outside [0, 1] are one ``ValueOutOfRangeError``
    counting them, eagerly and inside graphs, as PyTorch refuses it ("all elements of target should be between 0
    and 1"): every backend returned a finite loss of no meaning, silently. Found by differential fuzzing."""
    probabilities = np.full((2, 2), 0.5, np.float32)
    targets = np.array([[0.0, 2.0], [1.0, -0.5]], np.float32)
    with pytest.raises(RuntimeError, match="target should be between 0 and 1"):  # (PyTorch's own)
        F.binary_cross_entropy(torch.tensor(probabilities), torch.tensor(targets))
    message = "binary_cross_entropy target must lie in [0, 1]; found 2 value(s) outside"
    raises_exactly(ud.ValueOutOfRangeError, message, run, mode, lambda p, t: ud.nn.BCELoss()(p, t),
                   probabilities, targets)
    raises_exactly(ud.ValueOutOfRangeError, message, run, mode,
                   lambda p, t: ud.ops.binary_cross_entropy(p, t, reduction="none"), probabilities, targets)
    edges = np.array([[0.0, 1.0], [0.25, 1.0]], np.float32)  # the bounds themselves are targets: torch's values
    expected = F.binary_cross_entropy(torch.tensor(probabilities), torch.tensor(edges), reduction="sum").item()
    assert run(mode, lambda p, t: ud.nn.BCELoss(reduction="sum")(p, t), probabilities, edges) == pytest.approx(
        expected, rel=1e-6)


# ---- the margin, embedding and likelihood losses: torch's refusals, one error each, eagerly and in graphs ---------

def test_margin_and_likelihood_losses_refuse_what_torch_refuses(mode):
    """Shapes that do not fit (named, both of them; a Gaussian target that is not the input's shape with at most one
    axis of size 1 too), class indices out of range, float labels and negative
    variances are each one unidl error on every backend, eagerly and inside ``ud.function``, where PyTorch raises
    its own (its broadcasting of element-wise operands aside: refused as the other element-wise losses' are);
    options PyTorch refuses are refused when the loss is built."""
    rows, labels = np.ones((2, 3), np.float32), np.array([0, 3])
    raises_exactly(ud.ShapeMismatchError, "MarginRankingLoss needs input1 and target of the same shape; input1 has "
                   "shape (2, 3), target has shape (2, 1)", run, mode, ud.nn.MarginRankingLoss(), rows, rows,
                   rows[:, :1])
    raises_exactly(ud.ShapeMismatchError, "CosineEmbeddingLoss needs input1 and input2 of shape (N, D) and a target of "
                   "shape (N,), or (D,), (D,) and (); got input1 (2, 3), input2 (2, 3), target (3,)",
                   run, mode, ud.nn.CosineEmbeddingLoss(), rows, rows, rows[0])
    raises_exactly(ud.ShapeMismatchError, "MultiMarginLoss needs input of shape (N, C) and integer target of shape "
                   "(N,), or (C,) and () or (1,); got input (2, 3), target (1,)", run, mode, ud.nn.MultiMarginLoss(),
                   rows, labels[:1])
    raises_exactly(ud.IndexOutOfRangeError, "MultiMarginLoss target must lie in [0, 3); found values from 0 to 3",
                   run, mode, ud.nn.MultiMarginLoss(), rows, labels)
    raises_exactly(ud.DtypeMismatchError, "MultiMarginLoss: target must be integers, got float32 target; convert them "
                   "with ud.ops.cast(target, 'int64')", run, mode, ud.nn.MultiMarginLoss(), rows, labels * rows[0, :2])
    raises_exactly(ud.IndexOutOfRangeError, "MultiLabelMarginLoss target (class indices, -1 after the last) must lie "
                   "in [0, 3); found values from 0 to 7", run, mode, ud.nn.MultiLabelMarginLoss(), rows,
                   np.array([[0, -1, 7], [1, 2, -1]]))
    raises_exactly(ud.ShapeMismatchError, "GaussianNLLLoss needs var of the input's shape, or of it without its last "
                   "axis or with one axis of size 1; got input (2, 3), var (3,)", run, mode, ud.nn.GaussianNLLLoss(),
                   rows, rows, rows[0])
    raises_exactly(ud.ShapeMismatchError, "GaussianNLLLoss needs target of the input's shape, or of it with one axis "
                   "of size 1; got input (2, 3), target (3,)", run, mode, ud.nn.GaussianNLLLoss(), rows, rows[0], rows)
    raises_exactly(ud.ValueOutOfRangeError, "GaussianNLLLoss var must lie in [0, inf]; found 1 value(s) outside",
                   run, mode, ud.nn.GaussianNLLLoss(), rows, rows, -rows[:, :1] * np.array([[1.0], [0.0]], np.float32))
    # their ``ud.ops`` forms, the same body, name themselves
    raises_exactly(ud.ShapeMismatchError, "margin_ranking_loss needs input1 and target of the same shape; input1 has "
                   "shape (2, 3), target has shape (2, 1)", run, mode,
                   lambda a, b, y: ud.ops.margin_ranking_loss(a, b, y), rows, rows, rows[:, :1])
    raises_exactly(ud.IndexOutOfRangeError, "multi_margin_loss target must lie in [0, 3); found values from 0 to 3",
                   run, mode, lambda x, y: ud.ops.multi_margin_loss(x, y), rows, labels)
    raises_exactly(ud.ValueOutOfRangeError, "gaussian_nll_loss var must lie in [0, inf]; found 1 value(s) outside",
                   run, mode, lambda x, y, v: ud.ops.gaussian_nll_loss(x, y, v), rows, rows,
                   -rows[:, :1] * np.array([[1.0], [0.0]], np.float32))
    for build, message in ((lambda: ud.nn.TripletMarginLoss(margin=0.0), "expected margin to be greater than 0"),
                           (lambda: ud.ops.triplet_margin_loss(rows, rows, rows, 0.0), "expected margin to be greater"),
                           (lambda: ud.nn.MultiMarginLoss(p=3), "only p == 1 and p == 2 supported"),
                           (lambda: ud.ops.multi_margin_loss(rows, labels, p=3), "only p == 1 and p == 2 supported"),
                           (lambda: ud.ops.soft_margin_loss(rows, rows, reduction="batchmean"),
                            "reduction must be one of"),
                           (lambda: ud.nn.MultiMarginLoss(weight=np.ones((2, 3))), "one value per class"),
                           (lambda: ud.nn.HingeEmbeddingLoss(reduction="batchmean"), "reduction must be one of")):
        with pytest.raises(ValueError, match=message):
            build()


# ---- embedding's padding_idx and hardtanh's bounds, as torch.nn.functional's ------------------------------------
def test_a_negative_padding_idx_counts_from_the_end_and_one_out_of_range_or_bounds_the_wrong_way_are_errors(backend):
    """``ud.ops.embedding(..., padding_idx=-1)`` keeps the last row from training, as PyTorch's (the other
    frameworks compared the indices with -1 itself: the last row trained), and a ``padding_idx`` outside the
    weight's rows is a ``ValueError`` (ignored before); ``hardtanh`` with ``min_val > max_val`` is PyTorch's
    ``ValueError`` (the others gave max_val everywhere)."""
    weight, indices = np.arange(6.0, dtype=np.float32).reshape(3, 2), np.array([0, 2, 2])
    reference = torch.tensor(weight, requires_grad=True)
    F.embedding(torch.tensor(indices), reference, padding_idx=-1).sum().backward()
    gradient = ud.grad(lambda w: ud.ops.sum(ud.ops.embedding(ud.tensor(indices), w, padding_idx=-1)))
    for run in (gradient, ud.function(gradient)):  # (TensorFlow's graph: the rows' count unknown until it runs)
        np.testing.assert_array_equal(ud.to_numpy(run(ud.tensor(weight))), reference.grad.numpy())
    for bad in (3, -4):
        with pytest.raises(ValueError, match=rf"embedding padding_idx must be an int in \[-3, 3\) .*got {bad}"):
            ud.ops.embedding(ud.tensor(indices), ud.tensor(weight), padding_idx=bad)
    with pytest.raises(ValueError, match="hardtanh min_val 2.0 cannot be greater than max_val -1.0"):
        ud.ops.hardtanh(ud.tensor(weight), 2.0, -1.0)


# ---- NaN bounds, half-precision sums and layer norms, matrix products of two dtypes --------------------------------
def test_nan_bounds_half_sums_and_layer_norms_and_two_dtype_products_as_torch(mode):
    """``clip`` with a NaN bound is NaN everywhere, as ``torch.clamp`` (JAX's and Keras's selects skipped it);
    a float16 ``sum`` is summed in float32 (Keras's overflowed to inf); ``layer_norm`` of float16 computes in
    float32 without parameters too (the variance of [1, 2, 1000] overflowed on TensorFlow, JAX and Keras: zeros);
    ``matmul`` of two dtypes or of booleans is one ``DtypeMismatchError`` (JAX and Keras promoted)."""
    x = np.array([0.0, -5.0, 5.0], np.float32)
    low, high = np.array([np.nan, 0.0, 0.0], np.float32), np.array([1.0, np.nan, 1.0], np.float32)
    for ours, theirs in ((lambda t: ud.ops.clip(t, float("nan"), 1.0), lambda t: torch.clamp(t, float("nan"), 1.0)),
                         (lambda t: ud.ops.clip(t, None, float("nan")), lambda t: torch.clamp(t, max=float("nan"))),
                         (lambda t: ud.ops.clip(t, ud.tensor(low), ud.tensor(high)),
                          lambda t: torch.clamp(t, torch.tensor(low), torch.tensor(high)))):
        np.testing.assert_array_equal(run(mode, ours, x), theirs(torch.tensor(x)).numpy())
    half = np.array([60000, 60000, -60000], np.float16)
    assert run(mode, lambda t: ud.ops.sum(ud.ops.cast(t, "float16")), half) == np.float16(60000)
    rows = np.array([[1, 2, 1000], [0.1, 0.2, 0.35]], np.float16)
    np.testing.assert_array_equal(run(mode, lambda t: ud.ops.layer_norm(ud.ops.cast(t, "float16"), (3,)), rows),
                                  F.layer_norm(torch.tensor(rows), (3,)).numpy())
    norm = ud.nn.LayerNorm(3, elementwise_affine=False)  # (the module, which calls the backend's op itself)
    np.testing.assert_array_equal(run(mode, lambda t: norm(ud.ops.cast(t, "float16")), rows),
                                  F.layer_norm(torch.tensor(rows), (3,)).numpy())
    for first, second in (("float32", "float64"), ("int32", "int64"), ("bool", "bool")):
        with pytest.raises(ud.errors.DtypeMismatchError, match=f"matmul of {first} and {second}"):
            run(mode, lambda a, b: ud.ops.matmul(ud.ops.cast(a, first), ud.ops.cast(b, second)), np.ones((1, 2)),
                np.ones((2, 1)))


def test_integer_aranges_of_fractional_bounds_and_amax_of_booleans_as_torch(mode):
    """``arange`` in an integer dtype of fractional bounds truncates start and step as PyTorch's kernel (JAX
    counted the fractional step's values and truncated each: [0, 1, 2, 3] for 0..5 by 1.5; TensorFlow refused the
    floats), a step that truncates to 0 is PyTorch's ``ValueError``; ``amax`` of booleans is their ``any``
    (TensorFlow and Keras had no kernel for it)."""
    for start, end, step, dtype in ((0, 5, 1.5, "int64"), (-1.5, 1.5, 1, "int32"), (-1.5, 1.5, 1, "int64"),
                                    (5.5, 0, -1.5, "int32"), (0, 5.9, 2.7, "int64")):
        expected = torch.arange(start, end, step, dtype=getattr(torch, dtype)).numpy()
        got = run(mode, lambda t: ud.ops.arange(start, end, step, dtype) + ud.ops.cast(t, dtype), np.zeros(()))
        np.testing.assert_array_equal(got, expected, err_msg=f"{(start, end, step, dtype)}")
    with pytest.raises(ValueError, match="arange step must be nonzero, as PyTorch's: step 0.3 truncates to 0"):
        run(mode, lambda t: ud.ops.arange(1, 2.2, 0.3, "int64"), np.zeros(()))
    with pytest.raises(ValueError, match="arange in int64 needs finite bounds and step, as PyTorch's"):
        run(mode, lambda t: ud.ops.arange(0, float("inf"), 1, "int64"), np.zeros(()))
    flags = np.array([[True, False], [False, False]])
    np.testing.assert_array_equal(run(mode, lambda t: ud.ops.amax(t, 1), flags), [True, False])


@pytest.mark.parametrize("count", [-1, 0, 2.5, True])
def test_one_hot_of_a_class_count_other_than_a_positive_int_is_one_error(backend, count):
    """torch's -1 (read the count from the labels, which a compiled graph cannot), 0, a float or a bool: one
    ``ValueError`` on every backend, where each framework raised its own (or JAX took 2.5)."""
    with pytest.raises(ValueError, match=f"one_hot num_classes must be a positive int, got {count!r}"):
        ud.ops.one_hot(ud.tensor(np.array([0, 2])), count)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_softmax_computes_in_float32_as_torch(mode, dtype):
    """float16 and bfloat16 ``softmax`` computes in float32 and rounds once, as PyTorch's kernel: the other
    frameworks' half-precision arithmetic was a unit off in half the values (float16 on TensorFlow, JAX and Keras,
    bfloat16 on JAX); float32's exp itself differs by a unit in a few per ten thousand."""
    x = (np.random.default_rng(0).standard_normal((200, 37)) * 4).astype(np.float32)
    expected = torch.softmax(torch.tensor(x).to(getattr(torch, dtype)), -1).float().numpy()
    softmax = ud.function(lambda t: ud.ops.softmax(t, -1)) if mode == "graph" else lambda t: ud.ops.softmax(t, -1)
    # (the input made in its dtype outside the graph: XLA's excess precision skips a rounding inside one)
    got = np.asarray(ud.to_numpy(softmax(ud.tensor(x, dtype))), np.float32)
    assert (got != expected).mean() < 1e-3, int((got != expected).sum())


def test_attention_mask_that_does_not_broadcast_to_the_scores_is_refused(mode):
    """``scaled_dot_product_attention`` with an ``attn_mask`` that does not broadcast to the scores' (..., L, S) (the
    query's and key's batch broadcast together) is a ``ShapeMismatchError`` naming both shapes, as torch refuses it
    (the frameworks broadcast the output to the mask's batch); masks that broadcast give torch's values."""
    query, key = RNG.standard_normal((1, 5, 3)).astype(np.float32), RNG.standard_normal((1, 2, 3)).astype(np.float32)
    attend = lambda q, k, m: ud.ops.scaled_dot_product_attention(q, k, k, attn_mask=m)  # noqa: E731
    raises_exactly(ud.ShapeMismatchError, "scaled_dot_product_attention: attn_mask of shape (3, 5, 2) does not "
                   "broadcast to the attention scores' shape (..., L, S) = (1, 5, 2) of the query and the key",
                   run, mode, attend, query, key, RNG.standard_normal((3, 5, 2)).astype(np.float32))
    heads, keys = RNG.standard_normal((2, 1, 5, 3)).astype(np.float32), RNG.standard_normal((1, 4, 2, 3))
    raises_exactly(ud.ShapeMismatchError, "scaled_dot_product_attention: attn_mask of shape (3, 4, 5, 2) does not "
                   "broadcast to the attention scores' shape (..., L, S) = (2, 4, 5, 2) of the query and the key",
                   run, mode, attend, heads, keys.astype(np.float32), np.zeros((3, 4, 5, 2), bool))
    for q, k, mask in [(query, key, RNG.standard_normal((5, 1))), (query, key, RNG.standard_normal((2,))),
                       (heads, keys, RNG.standard_normal((2, 4, 5, 2)))]:
        q, k, mask = (a.astype(np.float32) for a in (q, k, mask))
        expected = F.scaled_dot_product_attention(*(torch.tensor(a) for a in (q, k, k)), attn_mask=torch.tensor(mask))
        np.testing.assert_allclose(run(mode, attend, q, k, mask), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_conv_bias_of_another_float_dtype_is_refused(mode):
    """``conv1d``, ``conv2d`` and ``conv_transpose2d`` with a bias of another float dtype than the input's and weight's
    are the ``DtypeMismatchError`` ``linear`` raises, as torch refuses them (jax promoted the three, tensorflow and
    keras raised in their own words)."""
    weights = {"conv1d": (3, 2, 2), "conv2d": (3, 2, 2, 2), "conv_transpose2d": (2, 3, 2, 2)}
    for name, weight_shape in weights.items():
        data = X[:, :, 0] if name == "conv1d" else X
        function = getattr(ud.ops, name)
        wide = lambda t: ud.ops.cast(t, "float64")  # noqa: E731
        raises_exactly(ud.DtypeMismatchError, f"{name} has float64 parameters and got float32 bias; cast the bias "
                       "with ud.ops.cast(x, 'float64'), or call it under ud.use_dtype('float64'), which converts "
                       "arrays to it", run, mode, lambda x, w, b: function(wide(x), wide(w), b), data,
                       np.ones(weight_shape), np.ones(3))


def test_normalization_parameters_of_another_shape_are_refused(mode):
    """``layer_norm``'s input whose last axes are not ``normalized_shape``, and a ``weight``, ``bias`` or running
    statistic of another shape than ``normalized_shape`` (layer_norm) or (C,) (group_norm, batch_norm): one
    ``ShapeMismatchError`` naming it, as torch refuses them (the frameworks normalized the last axes, or broadcast
    a (1,) parameter). An int ``normalized_shape`` is a shape of one axis, as ``nn.LayerNorm`` takes it."""
    data, one, four = RNG.standard_normal((2, 3, 4)).astype(np.float32), np.ones(1), np.ones(4)
    per_channel = "expected (3,) (one value per channel of the input)"
    cases = [(lambda x, w: ud.ops.layer_norm(x, (2,)), one,
              "layer_norm expected input whose last axes are (2,), received shape (2, 3, 4)"),
             (lambda x, w: ud.ops.layer_norm(x, (3, 4), w), one,
              "layer_norm: weight has shape (1,), expected (3, 4) (normalized_shape)"),
             (lambda x, w: ud.ops.layer_norm(x, (3, 4), None, w), four,
              "layer_norm: bias has shape (4,), expected (3, 4) (normalized_shape)"),
             (lambda x, w: ud.ops.group_norm(x, 3, w), one, f"group_norm: weight has shape (1,), {per_channel}"),
             (lambda x, w: ud.ops.batch_norm(x, w, w)[0], one,
              f"batch_norm: running_mean has shape (1,), {per_channel}"),
             (lambda x, w: ud.ops.batch_norm(x, None, None, None, w, True)[0], one,
              f"batch_norm: bias has shape (1,), {per_channel}")]
    for fn, parameter, message in cases:
        raises_exactly(ud.ShapeMismatchError, message, run, mode, fn, data, parameter)
    expected = F.layer_norm(torch.tensor(data), (4,), torch.tensor(four, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(run(mode, lambda x, w: ud.ops.layer_norm(x, 4, w), data, four), expected, atol=1e-5)


def test_clip_of_integers_to_a_tensor_bound_inside_graphs(mode):
    """``clip`` of integers to an integer tensor bound (one side None) gives torch's values inside ``ud.function`` as
    eagerly (keras on tensorflow asked its NaN test of integers for a shape the graph did not know)."""
    values, bound = np.array([1, 5, -3]), np.array([0, 0, 0])
    for fn, expected in [(lambda a, b: ud.ops.clip(a, b, None), torch.clamp(torch.tensor(values), torch.tensor(bound))),
                         (lambda a, b: ud.ops.clip(a, None, b), torch.clamp(torch.tensor(values), None,
                                                                            torch.tensor(bound)))]:
        got = run(mode, fn, values, bound)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected.numpy())


def test_leaky_relu_takes_a_0d_tensor_slope_as_torch(mode):
    """``leaky_relu`` with a 0-d tensor ``negative_slope`` gives torch's values eagerly and inside ``ud.function``
    (TensorFlow's and Keras's kernel refused a tensor); a slope of more axes is a ``TypeError``, as torch's."""
    values = np.array([1.0, -2.0, 0.0, -0.5], np.float32)
    expected = F.leaky_relu(torch.tensor(values), torch.tensor(0.2)).numpy()
    got = run(mode, lambda x, s: ud.ops.leaky_relu(x, s), values, np.array(0.2, np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    raises_exactly(TypeError, "leaky_relu negative_slope must be a number or a 0-d tensor, got a tensor of rank 1; "
                   "use prelu for a slope per channel", run, mode, lambda x, s: ud.ops.leaky_relu(x, s), values,
                   np.array([0.2], np.float32))


def test_embedding_padding_idx_out_of_range_inside_graphs(mode):
    """``embedding`` with a ``padding_idx`` outside the weight's rows is one ``ShapeMismatchError`` (a ``ValueError``)
    eagerly and inside ``ud.function``, where tensorflow and keras leave the weight's rows unknown while they trace
    (it was ignored there); one in range gives torch's rows and gradient."""
    indices, weight = np.array([0, 4, 2]), RNG.standard_normal((5, 2)).astype(np.float32)
    for bad in (7, -6):
        raises_exactly(ud.ShapeMismatchError, f"embedding padding_idx must be an int in [-5, 5) (the weight's rows), "
                       f"got {bad}", run, mode, lambda i, w: ud.ops.embedding(i, w, padding_idx=bad), indices, weight)
    reference = torch.tensor(weight, requires_grad=True)
    F.embedding(torch.tensor(indices), reference, padding_idx=-1).sum().backward()
    got = run(mode, lambda i, w: ud.grad(lambda v: ud.ops.sum(ud.ops.embedding(i, v, padding_idx=-1)))(w), indices,
              weight)
    np.testing.assert_array_equal(got, reference.grad.numpy())


def test_group_norm_of_channels_that_num_groups_does_not_divide_is_refused(mode):
    """``group_norm`` of input whose channels ``num_groups`` does not divide is one ``ShapeMismatchError``, as torch
    refuses it (each framework's reshape raised its own error)."""
    raises_exactly(ud.ShapeMismatchError, "group_norm expected the input's channels to be divisible by num_groups=2, "
                   "got 3 channels (input shape (2, 3, 4))", run, mode, lambda x: ud.ops.group_norm(x, 2),
                   RNG.standard_normal((2, 3, 4)).astype(np.float32))


def test_argmax_of_a_tuple_of_axes_is_refused(mode):
    """``argmax`` with a tuple ``dim`` is one ``ValueError`` naming it, as torch takes one axis only (each framework
    raised its own ``TypeError``); an int ``dim`` (a NumPy one too) gives torch's indices."""
    values = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    raises_exactly(ValueError, "argmax dim must be an int (an axis), got (0, 1)", run, mode,
                   lambda x: ud.ops.argmax(x, dim=(0, 1)), values)
    np.testing.assert_array_equal(run(mode, lambda x: ud.ops.argmax(x, dim=np.int64(1)), values),
                                  torch.argmax(torch.tensor(values), dim=1).numpy())


def test_prelu_of_a_weight_count_other_than_one_or_the_channels_is_refused(mode):
    """``prelu`` with neither one weight nor one per channel is one ``ShapeMismatchError`` naming both counts, as
    torch refuses it (each framework raised its own broadcasting error); one or one per channel give torch's."""
    raises_exactly(ud.ShapeMismatchError, "prelu has 3 weights but the input has 2 channels (shape (1, 2, 5, 5)); give "
                   "one weight, or one per channel (axis 1)", run, mode, ud.ops.prelu, X, np.ones(3, np.float32))
    raises_exactly(ud.ShapeMismatchError, "prelu has 2 weights but the input has 1 channels (shape (4,)); give one "
                   "weight, or one per channel (axis 1)", run, mode, ud.ops.prelu, X[0, 0, 0, :4], np.ones(2))
    for weight in (np.full(1, 0.25, np.float32), np.array([0.25, -0.5], np.float32)):
        expected = F.prelu(torch.tensor(X), torch.tensor(weight)).numpy()
        np.testing.assert_allclose(run(mode, ud.ops.prelu, X, weight), expected, rtol=1e-6)


def test_conv_channels_that_do_not_fit_the_weight_and_groups_are_refused(mode):
    """``conv2d``, ``conv1d`` and ``conv_transpose2d`` with ``groups`` that do not divide the weight's first axis, or
    input channels other than the weight and ``groups`` need: one ``ShapeMismatchError`` naming the sizes, eagerly
    and in graphs, as torch refuses them (each framework raised its own error, tensorflow's a split's)."""
    raises_exactly(ud.ShapeMismatchError, "conv2d expected input with 2 channels (weight shape (2, 1, 3, 3), "
                   "groups=2), got input of shape (1, 3, 5, 5)", run, mode, lambda x, w: ud.ops.conv2d(x, w, groups=2),
                   np.ones((1, 3, 5, 5)), np.ones((2, 1, 3, 3)))
    raises_exactly(ud.ShapeMismatchError, "conv2d expected input with 3 channels (weight shape (3, 3, 3, 3), "
                   "groups=1), got input of shape (1, 2, 5, 5)", run, mode, ud.ops.conv2d, X, np.ones((3, 3, 3, 3)))
    raises_exactly(ud.ShapeMismatchError, "conv1d: groups=2 must divide the weight's output channels, 3 (weight shape "
                   "(3, 1, 3))", run, mode, lambda x, w: ud.ops.conv1d(x, w, groups=2), X[:, :, 0], np.ones((3, 1, 3)))
    weight = ud.tensor(np.ones((3, 1, 2, 2)))
    raises_exactly(ud.ShapeMismatchError, "conv_transpose2d: groups=2 must divide the weight's input channels, 3 "
                   "(weight shape (3, 1, 2, 2))", run, mode, lambda x: ud.ops.conv_transpose2d(x, weight, groups=2),
                   np.ones((1, 3, 4, 4)))
    raises_exactly(ud.ShapeMismatchError, "conv_transpose2d expected input with 3 channels (weight shape (3, 1, 2, 2), "
                   "groups=1), got input of shape (1, 2, 5, 5)", run, mode,
                   lambda x: ud.ops.conv_transpose2d(x, weight), X)


def test_pooling_of_one_sample_without_its_batch_axis_as_torch(mode):
    """``max_pool2d`` (with its indices too) and ``avg_pool2d`` of one sample (C, H, W) give torch's values, as
    torch.nn.functional takes it (every backend raised an ``IndexError``); another rank is one
    ``ShapeMismatchError``."""
    sample = torch.tensor(X[0])
    cases = [(lambda x: ud.ops.max_pool2d(x, 2), F.max_pool2d(sample, 2)),
             (lambda x: ud.ops.max_pool2d(x, 2, return_indices=True)[1],
              F.max_pool2d(sample, 2, return_indices=True)[1]),
             (lambda x: ud.ops.avg_pool2d(x, 3, 1, 1, ceil_mode=True), F.avg_pool2d(sample, 3, 1, 1, ceil_mode=True))]
    for fn, expected in cases:
        got = run(mode, fn, X[0])
        assert got.shape == tuple(expected.shape)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-6)
    for name in ("max_pool2d", "avg_pool2d"):
        raises_exactly(ud.ShapeMismatchError, f"{name} expected input of shape (N, C, H, W) or (C, H, W), received "
                       "input of 2 axes", run, mode, lambda x: getattr(ud.ops, name)(x, 2), X[0, 0])


@pytest.mark.parametrize("interpolation", ["linear", "bilinear", "bicubic"])
def test_interpolate_by_a_scale_factor_inside_graphs_matches_torch(mode, interpolation):
    """``interpolate`` by a ``scale_factor`` in the weighted modes gives torch's values inside ``ud.function`` as
    eagerly: the check of the output's size made the input another tensor in a tensorflow graph, which then took the
    nearest modes' picks (values off by more than 1)."""
    data = X[:, :, 0] if interpolation == "linear" else X
    recomputes = (None, True)  # (both in one ud.function: one trace or compile, not two)
    results = run_each(mode, [lambda x, recompute=recompute: ud.ops.interpolate(
        x, scale_factor=1.7, mode=interpolation, recompute_scale_factor=recompute) for recompute in recomputes], data)

    def check(row):
        at, recompute = row
        expected = F.interpolate(torch.tensor(data), scale_factor=1.7, mode=interpolation,
                                 recompute_scale_factor=recompute).numpy()
        np.testing.assert_allclose(results[at], expected, rtol=1e-5, atol=1e-5)

    check_rows(enumerate(recomputes), check)


# ---- functional ops' weights, dtypes, sizes and axes off the usual path (audit of ud.ops) ---------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_convolutions_as_torch(mode, dtype):
    """``conv2d``, ``conv1d`` and ``conv_transpose2d`` of integers give torch's CPU values in the input's dtype on
    every backend (TensorFlow has no integer kernel: it raised its own error), wrapping as torch's uint8 does."""
    data = RNG.integers(0, 9, (1, 2, 5, 5)).astype(dtype)
    weight = RNG.integers(0, 9, (3, 2, 3, 3)).astype(dtype)
    x, w = torch.tensor(data), torch.tensor(weight)
    cases = [(lambda a, b: ud.ops.conv2d(a, b, padding=1), data, weight, F.conv2d(x, w, padding=1)),
             (lambda a, b: ud.ops.conv1d(a, b), data[:, :, 0], weight[:, :, 0], F.conv1d(x[:, :, 0], w[:, :, 0]))]
    if dtype is np.int64:  # (torch's transposed kernel has no other integer dtype)
        transposed = weight.transpose(1, 0, 2, 3)
        cases.append((lambda a, b: ud.ops.conv_transpose2d(a, b, stride=2), data[:, :, :3, :3], transposed,
                      F.conv_transpose2d(x[:, :, :3, :3], torch.tensor(transposed), stride=2)))
    for fn, a, b, expected in cases:
        got = run_tensors(mode, fn, ud.tensor(a, np.dtype(dtype).name), ud.tensor(b, np.dtype(dtype).name))
        assert got.dtype == expected.numpy().dtype
        np.testing.assert_array_equal(got, expected.numpy())


CONV_TRANSPOSE2D_OPTIONS = [  # (stride, padding, output_padding, groups, dilation)
    (2, 0, 0, 1, 1), (2, 1, 1, 1, 1), (1, 2, 0, 1, 1), (3, 1, 2, 2, 1), (2, 3, 1, 1, 2)]


def test_conv_transpose2d_of_a_weight_given_to_the_graph_matches_torch(mode):
    """``conv_transpose2d`` of a weight given to ``ud.function`` (whose sizes a TensorFlow graph leaves unknown: it
    refused them) gives torch's values and weight gradients, as eagerly, for each of ``CONV_TRANSPOSE2D_OPTIONS``
    (the values of every case in one ``ud.function``, their gradients in another: two programs, not ten)."""
    data = RNG.standard_normal((2, 4, 5, 4)).astype(np.float32)
    weight = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
    biases = [RNG.standard_normal(3 * options[3]).astype(np.float32) for options in CONV_TRANSPOSE2D_OPTIONS]
    got = run_each(mode, [lambda x, w, *given, at=at, options=options: ud.ops.conv_transpose2d(
        x, w, given[at], *options) for at, options in enumerate(CONV_TRANSPOSE2D_OPTIONS)], data, weight, *biases)
    x, b = ud.tensor(data), [ud.tensor(bias) for bias in biases]
    gradients = run_each(mode, [ud.grad(lambda w, at=at, options=options: ud.ops.sum(ud.ops.conv_transpose2d(
        x, w, b[at], *options))) for at, options in enumerate(CONV_TRANSPOSE2D_OPTIONS)], weight)

    def check(row):
        at, options = row
        tensor = torch.tensor(weight, requires_grad=True)
        expected = F.conv_transpose2d(torch.tensor(data), tensor, torch.tensor(biases[at]), *options)
        expected.sum().backward()
        np.testing.assert_allclose(got[at], expected.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gradients[at], tensor.grad.numpy(), rtol=1e-5, atol=1e-4)

    check_rows(enumerate(CONV_TRANSPOSE2D_OPTIONS), check)


def test_convolutions_of_one_sample_without_its_batch_axis_as_torch(mode):
    """``conv1d`` of (C, L), ``conv2d`` and ``conv_transpose2d`` of (C, H, W) give torch's unbatched results (each
    backend raised its own error, torch's backend a wrong one); input or weights of another rank are one
    ``ShapeMismatchError``."""
    sample, weight = X[0], RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    x, w = torch.tensor(sample), torch.tensor(weight)
    cases = [(lambda a, b: ud.ops.conv1d(a, b, padding=1), sample[:, 0], weight[:, :, 0],
              F.conv1d(x[:, 0], w[:, :, 0], padding=1)),
             (lambda a, b: ud.ops.conv2d(a, b, stride=2), sample, weight, F.conv2d(x, w, stride=2)),
             (lambda a, b: ud.ops.conv_transpose2d(a, b, stride=2, padding=1), sample, weight.transpose(1, 0, 2, 3),
              F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=1))]
    for fn, a, b, expected in cases:
        got = run(mode, fn, a, b)
        assert got.shape == tuple(expected.shape)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    raises_exactly(ud.ShapeMismatchError, "conv1d expected input of shape (N, C, L) or (C, L), received input of 4 "
                   "axes", run, mode, lambda a, b: ud.ops.conv1d(a, b), X, weight[:, :, 0])
    raises_exactly(ud.ShapeMismatchError, "conv2d expected input of shape (N, C, H, W) or (C, H, W), received input "
                   "of 2 axes", run, mode, lambda a, b: ud.ops.conv2d(a, b), X[0, 0], weight)
    raises_exactly(ud.ShapeMismatchError, "conv2d expected a weight of shape (out, in / groups, kh, kw), received a "
                   "weight of 3 axes", run, mode, lambda a, b: ud.ops.conv2d(a, b), X, weight[:, :, 0])
    raises_exactly(ud.ShapeMismatchError, "conv_transpose2d expected a weight of shape (in, out / groups, kh, kw), "
                   "received a weight of 5 axes", run, mode, lambda a, b: ud.ops.conv_transpose2d(a, b), X,
                   weight[None])


def test_embedding_weight_of_another_rank_than_2(mode):
    """``embedding`` of a weight that is not (num_embeddings, dim) is one ``ShapeMismatchError``, as torch refuses it
    (TensorFlow and JAX gathered rows of a 1-D or 3-D weight)."""
    indices = np.array([0, 2])
    for weight in (np.arange(5.0, dtype=np.float32), np.ones((5, 2, 3), np.float32)):
        with pytest.raises(RuntimeError, match="must be 2-D"):
            F.embedding(torch.tensor(indices), torch.tensor(weight))
        raises_exactly(ud.ShapeMismatchError, f"embedding weight must be 2-D (num_embeddings, dim), got a weight of "
                       f"rank {weight.ndim}", run, mode, lambda i, w: ud.ops.embedding(i, w), indices, weight)


def test_permute_by_negative_axes_has_torch_gradient(mode):
    """The gradient through ``permute`` by negative axes is torch's (TensorFlow's gradient refused them)."""
    data = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    weights = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    tensor = torch.tensor(data, requires_grad=True)
    (torch.permute(tensor, (0, -1, -2)) * torch.tensor(weights)).sum().backward()
    r = ud.tensor(weights)
    got = run(mode, ud.grad(lambda t: ud.ops.sum(ud.ops.permute(t, (0, -1, -2)) * r)), data)
    np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-6)


def test_zeros_and_ones_of_negative_or_float_sizes(mode):
    """``zeros``/``ones`` of a negative size are a ``ValueError``, of a float size a ``TypeError``, as torch refuses
    them (a TensorFlow graph took 2.0 as 2); NumPy integers are sizes."""
    with pytest.raises(TypeError):
        torch.ones((2.0, 3))
    raises_exactly(ValueError, "zeros sizes must be non-negative, got -3", run, mode, lambda: ud.ops.zeros((2, -3)))
    raises_exactly(TypeError, "ones sizes must be ints, got 2.0 (float)", run, mode, lambda: ud.ops.ones((2.0, 3)))
    raises_exactly(TypeError, "ones sizes must be ints, got True (bool)", run, mode, lambda: ud.ops.ones((True, 3)))
    assert run(mode, lambda: ud.ops.ones((np.int64(2), 3))).shape == (2, 3)


def test_arange_whose_step_points_away_from_the_end(mode):
    """``arange(0, 5, -1)`` is one ``ValueError``, as torch refuses it (JAX gave an empty range)."""
    with pytest.raises(RuntimeError, match="inconsistent with step sign"):
        torch.arange(0, 5, -1)
    raises_exactly(ValueError, "arange from 0 to 5 cannot step by -1: the step's sign must be the sign of end - start,"
                   " as PyTorch's", run, mode, lambda: ud.ops.arange(0, 5, -1))
    np.testing.assert_array_equal(run(mode, lambda: ud.ops.arange(5, 0, -2)), torch.arange(5, 0, -2).numpy())
    assert run(mode, lambda: ud.ops.arange(3, 3, -1)).shape == (0,)


def test_argmax_over_an_empty_axis(mode):
    """``argmax`` over an empty axis (or of an empty tensor, ``dim=None``) is one ``ShapeMismatchError``, as
    ``amax``'s (torch raised an ``IndexError``, the frameworks errors of their own)."""
    empty = np.ones((3, 0), np.float32)
    with pytest.raises(IndexError):
        torch.argmax(torch.tensor(empty), 1)
    raises_exactly(ud.ShapeMismatchError, "argmax over axis 1, which is empty (input shape (3, 0))", run, mode,
                   lambda x: ud.ops.argmax(x, 1), empty)
    raises_exactly(ud.ShapeMismatchError, "argmax of an empty tensor (input shape (3, 0))", run, mode,
                   lambda x: ud.ops.argmax(x), empty)
    np.testing.assert_array_equal(run(mode, lambda x: ud.ops.argmax(x, 0), empty), np.zeros((0,), np.int64))


@pytest.mark.parametrize("options", [{}, {"is_causal": True}, {"dropout_p": 0.1}])
def test_attention_of_query_key_and_value_of_two_dtypes(mode, options):
    """``scaled_dot_product_attention`` of a float32 query and a float64 key is one ``DtypeMismatchError`` on every
    path (JAX promoted them, torch raised its own error, TensorFlow a matmul's)."""
    q, v = np.ones((1, 2, 4), np.float32), np.ones((1, 3, 4), np.float32)
    with pytest.raises(RuntimeError, match="same dtype"):
        F.scaled_dot_product_attention(torch.tensor(q), torch.tensor(v, dtype=torch.float64), torch.tensor(v))
    raises_exactly(ud.DtypeMismatchError, "scaled_dot_product_attention needs query, key and value of one dtype, got "
                   "float32, float64 and float32; cast them with ud.ops.cast(t, 'float32')", run_tensors, mode,
                   lambda q, k, v: ud.ops.scaled_dot_product_attention(q, k, v, **options), ud.tensor(q),
                   ud.tensor(v, "float64"), ud.tensor(v))


def sizes_unknown_in_graphs(mode) -> bool:
    """Whether ``ud.function`` here leaves every size unknown while it traces (a TensorFlow graph: tensorflow, and
    keras on it), where a 1-D tensor cannot be told empty while tracing."""
    if mode != "graph":
        return False
    import keras

    return ud.get_backend() == "tensorflow" or (ud.get_backend() == "keras" and keras.backend.backend() == "tensorflow")


MISFITTING_JOINS = [
    ("maximum", lambda a, b: ud.ops.maximum(a, b), ((2, 3), (2, 4)), torch.maximum, "maximum needs shapes that "
     "broadcast (aligned from the last axis, each pair of sizes equal or one of them 1); a has shape (2, 3), b has "
     "shape (2, 4)"),
    ("minimum", lambda a, b: ud.ops.minimum(a, b), ((4, 1, 3), (2, 2)), torch.minimum, "minimum needs shapes that "
     "broadcast (aligned from the last axis, each pair of sizes equal or one of them 1); a has shape (4, 1, 3), b has "
     "shape (2, 2)"),
    ("matmul", lambda a, b: ud.ops.matmul(a, b), ((2, 3), (4, 2)), torch.matmul,
     "matmul of shapes (2, 3) and (4, 2): a's last axis (3) must equal b's second to last axis (4)"),
    ("matmul", lambda a, b: ud.ops.matmul(a, b), ((2, 3, 4), (3, 4, 2)), torch.matmul,
     "matmul of shapes (2, 3, 4) and (3, 4, 2): their batch axes (all but the last two) must broadcast"),
    ("matmul", lambda a, b: ud.ops.matmul(a, b), ((), (2,)), torch.matmul,
     "matmul needs operands of at least 1 axis, got operands of 0 and 1 axes"),
    ("where", lambda a, b: ud.ops.where(a > 0, a, b), ((2, 3), (2, 4)), lambda a, b: torch.where(a > 0, a, b),
     "where needs shapes that broadcast (aligned from the last axis, each pair of sizes equal or one of them 1); "
     "condition has shape (2, 3), a has shape (2, 3), b has shape (2, 4)"),
    ("where-of-a-number", lambda a, b: ud.ops.where(a > 0, b, 0.0), ((2, 3), (4, 3)),
     lambda a, b: torch.where(a > 0, b, 0.0), "where needs shapes that broadcast (aligned from the last axis, each "
     "pair of sizes equal or one of them 1); condition has shape (2, 3), a has shape (4, 3), b has shape ()"),
    ("cat", lambda a, b: ud.ops.cat([a, b], 1), ((2, 3), (3, 3)), lambda a, b: torch.cat([a, b], 1),
     "concat needs tensors of equal sizes on every axis but 1, got shapes (2, 3), (3, 3)"),
    ("cat", lambda a, b: ud.ops.cat([a, b], 0), ((2, 3), (3,)), lambda a, b: torch.cat([a, b], 0),
     "concat needs tensors of one rank, got tensors of 2, 1 axes"),
    ("stack", lambda a, b: ud.ops.stack([a, b]), ((2, 3), (2, 4)), lambda a, b: torch.stack([a, b]),
     "stack needs tensors of one shape, got shapes (2, 3), (2, 4)"),
]


@pytest.mark.parametrize("case", MISFITTING_JOINS, ids=lambda case: case[0] if isinstance(case, tuple) else None)
def test_joins_and_products_of_shapes_that_do_not_fit(mode, case):
    """``maximum``, ``minimum``, ``matmul``, ``where``, ``cat`` and ``stack`` of shapes torch refuses are one
    ``ShapeMismatchError`` naming every shape (each framework raised its own error), eagerly and in every graph: in
    a TensorFlow graph, which leaves the sizes unknown while it traces, from a check that runs with the graph, with
    the same message (it was TensorFlow's own ``InvalidArgumentError``)."""
    _, fn, shapes, oracle, message = case
    arrays = [np.ones(shape, np.float32) for shape in shapes]
    with pytest.raises(RuntimeError):
        oracle(*(torch.tensor(a) for a in arrays))
    raises_exactly(ud.ShapeMismatchError, message, run, mode, fn, *arrays)


def test_joins_and_products_of_shapes_that_fit_as_torch(mode):
    """The checks leave what torch takes as it was: broadcast batch axes, 1-D operands; a 1-D empty tensor in
    ``cat`` is left out, as PyTorch skips it (TensorFlow and JAX refused its rank)."""
    a, b = RNG.standard_normal((2, 1, 3, 4)).astype(np.float32), RNG.standard_normal((5, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(run(mode, lambda a, b: ud.ops.matmul(a, b), a, b),
                               torch.matmul(torch.tensor(a), torch.tensor(b)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(mode, lambda a, v: ud.ops.matmul(a, v), a, b[0, :, 0]),
                               torch.matmul(torch.tensor(a), torch.tensor(b[0, :, 0])).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(mode, lambda c, a, b: ud.ops.where(c > 0, a, b), a[:, :, :1], a, b[0, :, 0]),
                               np.where(a[:, :, :1] > 0, a, b[0, :, 0]))
    assert run(mode, lambda a: ud.ops.stack([a, a], 1), a).shape == (2, 2, 1, 3, 4)
    empty = np.zeros(0, np.float32)
    if not sizes_unknown_in_graphs(mode):  # (a graph of unknown sizes cannot tell it is empty: TensorFlow's error)
        np.testing.assert_array_equal(run(mode, lambda e, a, f: ud.ops.cat([e, a, f], 0), empty, a[0, 0], empty),
                                      torch.cat([torch.tensor(empty), torch.tensor(a[0, 0]), torch.tensor(empty)]))


#: the backends whose ``ud.function`` is a TensorFlow graph (Keras's on TensorFlow)
TENSORFLOW_GRAPHS = [name for name in backends_under_test() if name == "tensorflow"
                     or (name == "keras" and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow")]


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_a_graph_of_unknown_sizes_checks_only_sizes_that_may_not_fit(name):
    """The checks above add ops to a TensorFlow graph of unknown sizes only where the sizes may not fit: none for
    ``where(x > 0, x, 0)``, ``maximum(x, 0)``, ``stack([x, -x])`` or a product whose contraction size the graph
    knows (the ops layers and activations are written with) or a reshape that fits whatever the unknown sizes are,
    one ``Assert`` for two inputs of unknown sizes or a reshape that may not fit."""
    import tensorflow as tf

    def asserts(fn, *shapes):  # (a rank: that many unknown sizes)
        specs = [tf.TensorSpec([None] * shape if isinstance(shape, int) else shape) for shape in shapes]
        with ud.use_backend(name):
            graph = tf.function(fn).get_concrete_function(*specs).graph
        return sum(operation.type == "Assert" for operation in graph.get_operations())

    weight = np.ones((3, 5), np.float32)
    assert asserts(lambda x: ud.ops.where(x > 0, x, 0.0), 2) == 0
    assert asserts(lambda x: ud.ops.where(x > 0, 2 * x, x), 2) == 0
    assert asserts(lambda x: ud.ops.maximum(x, 0.0), 2) == 0
    assert asserts(lambda x: ud.ops.stack([x, -x]), 2) == 0
    assert asserts(lambda x: ud.ops.matmul(x, weight), [None, 3]) == 0
    # a reshape that fits whatever the unknown size is, and one that may not (a graph of unknown sizes could not
    # tell before, and the one above took it as a way to make the contraction size known)
    assert asserts(lambda x: ud.ops.matmul(ud.ops.reshape(x, (-1, 3)), weight), [None, 6]) == 0
    assert asserts(lambda x: ud.ops.reshape(x, (-1, 3)), 2) == 1
    assert asserts(lambda x, y: ud.ops.maximum(x, y), 2, 2) == 1
    assert asserts(lambda x, y: ud.ops.matmul(x, y), 2, 2) == 1


def test_gather_of_an_index_that_does_not_fit(mode):
    """``gather`` of an index of another rank, or larger than the input off ``dim``, is one ``ShapeMismatchError``
    naming both shapes, in graphs of unknown sizes too (TensorFlow's error named a slice); smaller is torch's."""
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    for index in (np.zeros(3, np.int64), np.zeros((4, 2), np.int64)):
        with pytest.raises(RuntimeError):
            torch.gather(torch.tensor(x), 1, torch.tensor(index))
    raises_exactly(ud.ShapeMismatchError, "gather needs an index of the input's rank, 2 axes, got an index of 1", run,
                   mode, lambda x, i: ud.ops.gather(x, 1, i), x, np.zeros(3, np.int64))
    raises_exactly(ud.ShapeMismatchError, "gather needs an index no larger than the input on every axis but dim=1, got "
                   "an index of shape (4, 2) for an input of shape (3, 4)", run, mode,
                   lambda x, i: ud.ops.gather(x, 1, i), x, np.zeros((4, 2), np.int64))
    index = np.array([[3, 0, 1, 2, 2, 1], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(run(mode, lambda x, i: ud.ops.gather(x, 1, i), x, index),
                                  torch.gather(torch.tensor(x), 1, torch.tensor(index)).numpy())


@pytest.mark.parametrize("shapes, message", [
    (((1, 2, 4), (1, 3, 4), (1, 5, 4)), "query (1, 2, 4), key (1, 3, 4) and value (1, 5, 4)"),
    (((1, 2, 4), (1, 3, 5), (1, 3, 4)), "query (1, 2, 4), key (1, 3, 5) and value (1, 3, 4)"),
    (((2, 2, 4), (3, 3, 4), (3, 3, 4)), "query (2, 2, 4), key (3, 3, 4) and value (3, 3, 4)"),
])
def test_attention_of_shapes_that_do_not_fit(mode, shapes, message):
    """``scaled_dot_product_attention`` of two S, two E or batch axes that do not broadcast is one
    ``ShapeMismatchError`` naming the three shapes, in graphs of unknown sizes too; 1-D operands one naming their
    ranks."""
    arrays = [np.ones(shape, np.float32) for shape in shapes]
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(*(torch.tensor(a) for a in arrays))
    raises_exactly(ud.ShapeMismatchError, f"scaled_dot_product_attention: {message} do not fit (..., L, E), (..., S, "
                   f"E) and (..., S, Ev) with batch axes that broadcast", run, mode,
                   lambda q, k, v: ud.ops.scaled_dot_product_attention(q, k, v), *arrays)
    raises_exactly(ud.ShapeMismatchError, "scaled_dot_product_attention needs query, key and value of at least 2 axes "
                   "((..., L, E), (..., S, E), (..., S, Ev)), got 1, 1 and 1 axes", run, mode,
                   lambda q, k, v: ud.ops.scaled_dot_product_attention(q, k, v), *(np.ones(4, np.float32),) * 3)


@pytest.mark.parametrize("reduction", ["sum", "mean", "amax"])
def test_reductions_over_an_axis_named_twice(mode, reduction):
    """A reduction over (1, -2) of a 3-D tensor names axis 1 twice: one ``ShapeMismatchError``, as torch refuses it
    (each framework raised its own error)."""
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(RuntimeError):
        getattr(torch, reduction)(torch.tensor(x), (1, -2))
    name = "dim" if reduction == "amax" else "axis"
    raises_exactly(ud.ShapeMismatchError, f"{reduction} {name}=(1, -2) names an axis more than once (a tensor of 3 "
                   f"axes); give each axis once", run, mode, lambda x: getattr(ud.ops, reduction)(x, (1, -2)), x)


def foreign_tensor(shape) -> tuple:
    """``(framework, tensor)``: ones of ``shape`` made by a framework the backend in force does not compute with, by
    that framework itself (no NumPy array, no unidl backend): torch's, or JAX's where torch is native (torch,
    Keras-on-torch)."""
    if "torch" not in backends.specs()[ud.get_backend()].required_modules():
        return "torch", torch.ones(shape)
    import jax.numpy as jnp

    return "jax", jnp.ones(shape)


def foreign_tensor_outcomes(which) -> list:
    """For a torch tensor and a JAX array given to ``ud.ops.relu`` in ``which`` mode: "as expected" where it is refused
    (a ``BackendMismatchError``) and the backend in force does not compute with its framework, or computed and the
    backend does (Keras's host framework's: Keras-on-torch takes torch's, Keras-on-JAX JAX's); else what happened."""
    import jax.numpy as jnp

    own, outcomes = backends.specs()[ud.get_backend()].required_modules(), []
    for framework, value in (("torch", torch.ones(2)), ("jax", jnp.ones(2))):
        try:
            got = run_tensors(which, lambda x: ud.ops.relu(value) + x, ud.tensor(np.zeros(2, np.float32))).tolist()
        except ud.BackendMismatchError as error:
            got = "refused" if framework not in own else f"{framework}'s refused: {error}"
        outcomes.append("as expected" if got == ("refused" if framework not in own else [1.0, 1.0]) else got)
    return outcomes


def test_another_frameworks_tensor_given_to_an_op_is_one_clear_error(mode):
    """A torch tensor given to an op of TensorFlow, Keras or JAX, a JAX array to torch's: one ``BackendMismatchError``
    naming the op, the argument, the framework, the backend and the fixes, eagerly and in ``ud.function``
    (TensorFlow and Keras converted it through ``__array__``, its gradient lost; torch and JAX raised TypeErrors of
    their own). A unary op, a binary one, a loss, an optional argument (a bias), a list's item (``concat``) and a
    loss composed of ops; the backend's own parameters, and its tracers in a graph, pass."""
    backend = ud.get_backend()
    framework, foreign = foreign_tensor((2, 3))
    bias = foreign_tensor((2,))[1]
    cases = {
        ("relu", "x"): lambda x, labels, weight: ud.ops.relu(foreign),
        ("maximum", "b"): lambda x, labels, weight: ud.ops.maximum(x, foreign),
        ("matmul", "a"): lambda x, labels, weight: ud.ops.matmul(foreign, ud.ops.permute(x, (1, 0))),
        ("cross_entropy", "logits"): lambda x, labels, weight: ud.ops.cross_entropy(foreign, labels),
        ("linear", "bias"): lambda x, labels, weight: ud.ops.linear(x, weight, bias),
        ("concat", "tensors[1]"): lambda x, labels, weight: ud.ops.concat([x, foreign]),
        ("smooth_l1_loss", "target"): lambda x, labels, weight: ud.ops.smooth_l1_loss(x, foreign),
    }
    inputs = ud.tensor(np.ones((2, 3), np.float32)), ud.tensor(np.array([0, 2])), ud.tensor(np.ones((2, 3), np.float32))
    for (op, argument), fn in cases.items():
        with pytest.raises(ud.BackendMismatchError, match=(
                rf"^ud\.ops\.{op} runs on backend '{backend}' but argument {re.escape(argument)} is a {framework} \w+; "
                rf"convert it with ud\.tensor\(ud\.to_numpy\({re.escape(argument)}\)\) \(a copy, outside the gradient "
                rf"of what made it\), or switch backends with .*ud\.use_backend\('{framework}'\)")):
            run_tensors(mode, fn, *inputs)
    layer = ud.nn.Linear(3, 2)
    np.testing.assert_allclose(run_tensors(mode, lambda x: ud.ops.linear(x, layer.weight, layer.bias), inputs[0]),
                               ud.to_numpy(layer(inputs[0])), rtol=1e-6)


def test_a_jax_layers_parameter_given_to_another_backends_op_is_the_same_error():
    """A jax layer's parameter (unidl's own ``JaxVariable`` wrapping a JAX array) is a jax tensor to the other
    backends' ops: the same ``BackendMismatchError`` as a JAX array (its class, defined in unidl, passed as no
    framework's, and TensorFlow converted it through NumPy, without its gradient)."""
    with ud.use_backend("jax"):
        weight = ud.nn.Linear(2, 2).weight
        assert ud.to_numpy(ud.ops.relu(weight)).shape == (2, 2)
    for name in ("torch", "tensorflow"):
        with ud.use_backend(name), pytest.raises(ud.BackendMismatchError, match=r"argument x is a jax JaxVariable"):
            ud.ops.relu(weight)
