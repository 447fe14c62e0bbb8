"""``ud.function`` and gradients in it: the lecture's graph, a hand-written step, control flow, tracing."""

import collections
import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference


def _numpy(t):
    return ud.to_numpy(t)


def test_lecture_graph_gradients(backend, rng):
    x, y, z = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3))

    def c(x, y, z):
        a = x * y
        b = a + z
        return ud.ops.sum(b)

    grad_x, grad_y, grad_z = ud.grad(c, argnums=(0, 1, 2))(ud.tensor(x), ud.tensor(y), ud.tensor(z))
    np.testing.assert_allclose(_numpy(grad_x), y)
    np.testing.assert_allclose(_numpy(grad_y), x)
    np.testing.assert_allclose(_numpy(grad_z), np.ones_like(z))


def test_lecture_graph_gradients_inside_function(backend, rng):
    x, y, z = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3))

    @ud.function
    def gradients(x, y, z):
        return ud.grad(lambda x, y, z: ud.ops.sum(x * y + z), argnums=(0, 1, 2))(x, y, z)

    grad_x, grad_y, grad_z = gradients(x, y, z)
    np.testing.assert_allclose(_numpy(grad_x), y)
    np.testing.assert_allclose(_numpy(grad_y), x)
    np.testing.assert_allclose(_numpy(grad_z), np.ones_like(z))


def test_function_returns_a_parameter_or_unchanged_statistics_as_their_values(backend, rng):
    """A ``ud.function`` that returns a variable as it is (a parameter; eval-mode ``batch_norm``'s running statistics,
    which it returns unchanged) returns its value, as torch's returns the parameter, a tensor (``jax.jit`` takes no
    variable: Keras's on JAX, or unidl's own), and the value at each call, not one baked in at the trace."""
    x = rng.standard_normal((4, 3)).astype(np.float32)
    layer, norm = ud.nn.Linear(3, 2), ud.nn.BatchNorm1d(2)
    norm(layer(ud.tensor(x)))  # training: the running statistics move off their initial zeros and ones

    @ud.function
    def returned(a):
        _, mean, var = ud.ops.batch_norm(layer(a), norm.running_mean, norm.running_var)
        return layer.weight, {"bias": layer.bias}, (mean, var)

    for scale in (1.0, 1.0, 2.0):  # the second call runs the compiled function; the third sees new values
        for module in (layer, norm):
            module.load_state_dict({k: (v * scale).astype(v.dtype) for k, v in module.state_dict().items()})
        weight, named, (mean, var) = returned(x)
        parameters, statistics = layer.state_dict(), norm.state_dict()
        for value, expected in ((weight, parameters["weight"]), (named["bias"], parameters["bias"]),
                                (mean, statistics["running_mean"]), (var, statistics["running_var"])):
            assert np.array_equal(_numpy(value), expected)


def test_grad_of_non_scalar_function_says_so(backend):
    x = ud.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="scalar.*shape \\(2, 3\\)"):
        ud.grad(lambda v: v * 2.0)(x)


def test_grad_with_respect_to_integer_tensor_says_so(backend):
    x = ud.tensor(np.arange(3))
    with pytest.raises(TypeError, match="floating-point.*int"):
        ud.grad(lambda v: ud.ops.sum(v))(x)


def test_a_module_given_to_function_compiles_its_forward(backend, rng):
    """``ud.function(model)``, as ``torch.compile(model)`` and ``tf.function(layer)`` take a module (it raised
    ``AttributeError``: a module has no ``__name__``): the model's outputs, named after its class, in train and eval
    mode."""
    model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.BatchNorm1d(4))
    compiled, x = ud.function(model), ud.tensor(rng.standard_normal((5, 3)).astype(np.float32))
    assert compiled.__name__ == "Sequential"
    for mode in (model.train, model.eval):
        mode()
        expected = ud.to_numpy(model(x))  # (train mode: the batch's statistics, whatever the running ones)
        np.testing.assert_allclose(ud.to_numpy(compiled(x)), expected, rtol=1e-5, atol=1e-6)


def test_grad_with_respect_to_a_python_number_or_list_says_so(backend):
    """A Python number or list is no tensor to differentiate with respect to, as torch.autograd's (Keras gave the
    gradient of the tensor it made of it)."""
    for value, kind in ((3.0, "float"), ([1.0, 2.0], "list")):
        with pytest.raises(TypeError, match=f"argument 0 is a {kind}, not a tensor: make one with ud.tensor"):
            ud.grad(lambda v: ud.ops.sum(v * v))(value)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_gradients_keep_a_tensors_own_dtype_as_torch_autograd(backend, rng, dtype):
    """``ud.grad`` and ``value_and_grad`` of a float16, bfloat16 or float64 tensor: the gradient in that dtype,
    with torch.autograd's values, eagerly and inside ``ud.function`` (every backend cast the tensor to the float32
    in force first: a float64 gradient lost its digits); a NumPy array is converted as ``ud.tensor`` converts it,
    to the float32 in force."""
    import torch

    values = rng.standard_normal(5)
    native = torch.tensor(values, dtype=getattr(torch, dtype), requires_grad=True)
    (torch.tanh(native) * native).sum().backward()
    expected = native.grad.double().numpy()

    def loss(x):
        return ud.ops.sum(ud.ops.tanh(x) * x)

    x = ud.ops.cast(ud.tensor(values, "float64"), dtype)
    compiled = ud.function(lambda x: ud.value_and_grad(loss)(x)[1])
    for gradient in (ud.grad(loss)(x), ud.value_and_grad(loss)(x)[1], compiled(x)):
        got = ud.to_numpy(gradient)
        assert got.dtype.name == dtype
        tolerance = 1e-12 if dtype == "float64" else 1e-2
        np.testing.assert_allclose(got.astype(np.float64), expected, rtol=tolerance, atol=tolerance)
    assert ud.to_numpy(ud.grad(loss)(values)).dtype == np.float32
    with ud.use_dtype(dtype if dtype == "float64" else "float32"):  # a parameter keeps its dtype too
        parameter = ud.nn.Linear(5, 1).weight
    for gradient in (ud.grad(loss)(parameter), ud.function(lambda: ud.grad(loss)(parameter))()):
        assert ud.to_numpy(gradient).dtype == ud.to_numpy(parameter).dtype


def _regression(rng):
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x @ rng.standard_normal((5, 1))).astype(np.float32)
    return x, y


def test_hand_written_step(backend, rng):
    model = ud.nn.Sequential(ud.nn.Linear(5, 16), ud.nn.ReLU(), ud.nn.Linear(16, 1))
    loss_fn = ud.nn.MSELoss()
    optimizer = ud.optim.Adam(model.parameters(), lr=1e-2)
    before = model.state_dict()

    @ud.function
    def step(x, y):
        loss, grads = ud.value_and_grad(lambda: loss_fn(model(x), y), model.parameters())()
        optimizer.apply(grads)
        return loss

    x, y = _regression(rng)
    losses = [float(_numpy(step(x, y))) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    after = model.state_dict()
    assert all(not np.allclose(before[k], after[k]) for k in before)
    assert optimizer.state_dict()["step"] == 60
    if backend in ("torch",):
        assert step.trace_count is None
    elif backend == "tensorflow":
        assert step.trace_count == 1


def test_decorator_with_arguments_compiles_with_xla_on_tensorflow(rng):
    with ud.use_backend("tensorflow"):
        @ud.function(jit_compile=True)
        def affine(x):
            return x * 2.0 + 1.0

        x = rng.standard_normal((4, 3)).astype(np.float32)
        np.testing.assert_allclose(_numpy(affine(x)), x * 2 + 1, rtol=1e-6)
        assert affine.jit_compile and affine.trace_count == 1


def _control_flow(x):
    if ud.ops.sum(x) > 0:
        y = x * 2.0
    else:
        y = -x
    total = ud.ops.zeros_like(y[0])
    for i in range(ud.ops.shape(x)[0]):  # a tensor inside a tensorflow graph: AutoGraph makes a while loop
        total = total + y[i]
    while ud.ops.sum(total) > 10.0:
        total = total / 2.0
    return total


def _control_flow_reference(x):
    y = x * 2 if x.sum() > 0 else -x
    total = y.sum(axis=0)
    while total.sum() > 10:
        total = total / 2
    return total


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_python_control_flow_on_tensors(backend, rng, sign):
    compiled = ud.function(_control_flow)
    for rows in (3, 7):  # a new length: no retrace on tensorflow
        x = (sign * np.abs(rng.standard_normal((rows, 4))) + 0.1 * sign).astype(np.float32)
        np.testing.assert_allclose(_numpy(compiled(x)), _control_flow_reference(x), rtol=1e-5)
        np.testing.assert_allclose(_numpy(_control_flow(ud.tensor(x))), _control_flow_reference(x), rtol=1e-5)
    if backend == "tensorflow":
        assert compiled.trace_count == 1


def test_value_of_symbolic_tensor_raises_graph_construct_error():
    with ud.use_backend("tensorflow"):
        @ud.function
        def reads_value(x):
            return x * ud.ops.sum(x).numpy()

        with pytest.raises(ud.GraphConstructError, match="numpy\\(\\) of a symbolic tensor.*reads_value"):
            reads_value(np.ones(3, np.float32))

        @ud.function
        def explicit_bool(x):
            return x if bool(ud.ops.sum(x) > 0) else -x

        with pytest.raises(ud.GraphConstructError, match="bool\\(\\) of a symbolic tensor.*AutoGraph.*where"):
            explicit_bool(np.ones(3, np.float32))


def test_the_same_code_runs_eagerly_on_torch():
    with ud.use_backend("torch"):
        @ud.function
        def reads_value(x):
            return x * float(ud.ops.sum(x)) if bool(ud.ops.sum(x) > 0) else -x

        np.testing.assert_allclose(_numpy(reads_value(np.ones(3, np.float32))), 3 * np.ones(3))


def test_tensorflow_traces_once_per_rank_and_dtype(rng):
    with ud.use_backend("tensorflow"):
        @ud.function
        def f(x):
            return ud.ops.sum(x * x, axis=-1)

        with warnings.catch_warnings():
            warnings.simplefilter("error", ud.RetraceWarning)
            f(rng.standard_normal((4, 3)).astype(np.float32))
            f(rng.standard_normal((4, 3)).astype(np.float32))
            assert f.trace_count == 1
            f(rng.standard_normal((9, 3)).astype(np.float32))   # new batch size
            f(rng.standard_normal((9, 11)).astype(np.float32))  # new length
            assert f.trace_count == 1
        with pytest.warns(ud.RetraceWarning, match="new rank or dtype"):
            f(rng.standard_normal((2, 4, 3)).astype(np.float32))
        assert f.trace_count == 2
        with pytest.warns(ud.RetraceWarning):
            f(np.ones((2, 3), np.int64))
        assert f.trace_count == 3
        f(np.ones((5, 5), np.int64))
        assert f.trace_count == 3


def test_function_binds_to_the_backend_of_each_call(rng):
    @ud.function
    def double(x):
        return x * 2.0

    x = rng.standard_normal((2, 2)).astype(np.float32)
    for name in ud.available_backends():
        with ud.use_backend(name):
            out = double(x)
            assert ud.get_backend() == name
            assert max_relative_difference(_numpy(out), 2 * x) == 0


def test_arrays_of_any_framework_reach_the_function_as_the_backends_tensors(backend):
    """``ud.function`` hands ``fn`` a NumPy array, or another framework's array (a ``DataLoader``'s torch batch on
    tensorflow, a ``tf.data`` batch on torch), as the backend's own tensor, and returns one, on every backend
    (torch once passed a TF tensor through and returned a TF tensor)."""
    import jax.numpy as jnp
    import tensorflow as tf
    import torch

    from unidl import config

    seen = []

    @ud.function
    def double(x):
        seen.append(config.backend().is_tensor(x))
        return x * 2.0

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    for array in (values, torch.from_numpy(values), tf.constant(values), jnp.asarray(values)):
        seen.clear()
        out = double(array)
        assert config.backend().is_tensor(out), (type(array), type(out))
        assert np.array_equal(_numpy(out), 2 * values)
        assert all(seen), (type(array), seen)  # where fn ran (traced once, or eagerly)


def test_a_tensor_reaches_the_function_in_its_own_dtype(backend):
    """A float64 or float16 tensor (``ud.tensor(a, dtype)``) reaches ``fn`` and comes back in its own dtype on every
    backend, as torch and JAX take it (TensorFlow's and Keras's graphs cast it to the float32 in force: 1e300
    became inf); a NumPy array is converted as ``ud.tensor`` converts it, and a train step's batch too."""
    values = np.array([0.1, 1e300, -2.5])
    identity = ud.function(lambda x: x * 1)
    for dtype, array in [("float64", values), ("float16", values[[0, 2]])]:
        got = ud.to_numpy(identity(ud.tensor(array, dtype)))
        assert got.dtype == dtype, (backend, dtype, got.dtype)
        np.testing.assert_array_equal(got, array.astype(dtype))
    assert ud.to_numpy(identity(values)).dtype == np.float32
    model = ud.nn.Linear(3, 1)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    assert ud.to_numpy(step(ud.tensor(np.ones((2, 3)), "float64"), ud.tensor(np.ones((2, 1)), "float64"))).dtype == \
        np.float32


def test_python_values_reach_the_function_as_they_are(backend):
    """A Python number, bool, None or string argument reaches ``fn`` as itself on every backend, as torch and JAX
    take it: ``x * n`` of a float tensor and ``reshape(x, (n, -1))`` work, ``if s is None`` sees None, 0.1 meets a
    float64 tensor as 0.1 (TensorFlow's and Keras's graphs made them tensors: an int64 that a float tensor could not
    multiply, a None that could not be converted, a float32 0.1); each new value traces again (1 and True apart),
    and a NumPy scalar is a tensor that does not."""
    @ud.function
    def f(x, n, s, flag):
        y = x * n
        if s is None:
            y = y + 1
        if flag:
            y = y * 2
        return ud.ops.reshape(y, (n, -1)) if isinstance(n, int) and not isinstance(n, bool) else y

    x = np.arange(6.0)
    for n, s, flag in [(2, None, True), (3, "a", False), (1, None, True), (True, None, True), (0.1, None, False)]:
        want = (x * n + (s is None)) * (2 if flag else 1)
        want = want.reshape(n, -1) if type(n) is int else want
        got = ud.to_numpy(f(ud.tensor(x, "float64"), n, s, flag))
        assert got.dtype == np.float64 and got.shape == want.shape, (backend, n, got.dtype, got.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"{backend} n={n!r}")
    traces = f.trace_count
    divide = ud.function(lambda x, s: x / s)  # -0.0 is no 0.0, and every NaN one value
    signs = [np.sign(ud.to_numpy(divide(ud.tensor(x[1:]), zero))) for zero in (0.0, -0.0)]
    np.testing.assert_array_equal(signs, [np.ones(5), -np.ones(5)])
    for _ in range(2):
        divide(ud.tensor(x), float("nan"))
    assert divide.trace_count in (None, 3), (backend, divide.trace_count)
    got = [ud.to_numpy(f(ud.tensor(x), np.float32(scale), None, False)) for scale in (2.0, 3.0)]
    np.testing.assert_array_equal(got, [x * 2 + 1, x * 3 + 1])
    if traces is not None:  # a backend that traces: one graph for both NumPy scalars
        assert f.trace_count == traces + 1, (backend, f.trace_count, traces)


def test_a_parameter_reaches_the_function_as_a_tensor(backend):
    """A parameter given to ``ud.function`` is a tensor on every backend: one trace per shape, and the gradient of
    the function through it (Keras's variables were baked into one graph each, or went in as NumPy snapshots,
    their gradient None; JAX's jit keyed a variable by identity, tracing once per parameter)."""
    model = ud.nn.Sequential(ud.nn.Linear(4, 4), ud.nn.Linear(4, 4))
    square = ud.function(lambda p: ud.ops.sum(p * p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ud.RetraceWarning)
        for parameter in model.parameters():
            square(parameter)
        assert square.trace_count in (None, 2), (backend, square.trace_count)
        weight = model.parameters()[0]
        _, (gradient,) = ud.value_and_grad(lambda: square(weight), [weight])()
    np.testing.assert_allclose(ud.to_numpy(gradient), 2 * ud.to_numpy(weight), rtol=1e-6)


def test_unseeded_dropout_traced_first_draws_no_python_random_on_keras():
    """The keras backend's dropout generator exists before any trace: a fresh backend whose first dropout is
    inside ``ud.function`` traces without drawing Keras's seed from Python's random (a ``RetraceWarning`` on
    Keras-on-TF, its seed frozen into the graph) and draws a new mask at each call."""
    from unidl import config

    with ud.use_backend("keras"):
        token = config._backend_override.set(type(config.backend())())  # as in a process that never seeded
        try:
            drop = ud.function(lambda a: ud.ops.dropout(a, 0.5))
            with warnings.catch_warnings():
                warnings.simplefilter("error", ud.RetraceWarning)
                first, second = (_numpy(drop(np.ones((50, 50), np.float32))) for _ in range(2))
        finally:
            config._backend_override.reset(token)
    assert sorted(np.unique(np.concatenate([first, second]))) == [0.0, 2.0]
    assert not np.array_equal(first, second)


def test_jit_compile_uses_torch_compile_on_torch(monkeypatch):
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)  # the real one takes ~20 s on CPU
    with ud.use_backend("torch"):
        @ud.function(jit_compile=True)
        def double(x):
            return x * 2.0

        np.testing.assert_allclose(_numpy(double(np.ones(2, np.float32))), [2.0, 2.0])
        assert compiled == [double.__wrapped__]


class _SignedNet(ud.nn.Module):
    """A user's forward with Python control flow on a tensor's value (AutoGraph converts it on tensorflow)."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 1)

    def forward(self, x):
        y = self.fc(x)
        if ud.ops.sum(x) > 0:
            y = y * 2.0
        else:
            y = -y
        return y


def test_user_forward_control_flow_is_converted_in_train_steps(rng):
    with ud.use_backend("tensorflow"):
        model = _SignedNet()
        predict = ud.function(lambda x: model(x))
        x = np.abs(rng.standard_normal((3, 4))).astype(np.float32)
        base = _numpy(model.fc(ud.tensor(x)))
        # (atol: a graph's and an eager linear layer's float32 rounding; an output near 0 made rtol alone fail on an
        # AVX2 machine, 8.4937e-05 against 8.4922e-05; a wrong branch is off by the output's size or its sign)
        np.testing.assert_allclose(_numpy(predict(x)), 2 * base, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(_numpy(predict(-x)), -_numpy(model.fc(ud.tensor(-x))), rtol=1e-6, atol=1e-6)
        assert predict.trace_count == 1  # one graph holds both branches
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.01))
        step(x, np.zeros((3, 1), np.float32))
        step(-x, np.zeros((3, 1), np.float32))
        assert step.trace_count == 1


def test_autograph_converts_user_code_only():
    """unidl's own layers run unconverted in graphs (their first trace stays fast); users' forwards do not."""
    from unidl.backends.tensorflow.function import forward_caller, user_code

    with ud.use_backend("tensorflow"):
        for layer in (ud.nn.Linear, ud.nn.Conv2d, ud.nn.Sequential, ud.models.CNN):
            assert forward_caller(layer) is None, layer
        assert callable(forward_caller(_SignedNet))
        assert user_code(ud.ops.relu) is ud.ops.relu
        assert user_code(_control_flow) is not _control_flow


def test_a_trace_converts_the_users_code_alone(monkeypatch):
    """A train step of unidl's own layers and loss is traced with no AutoGraph conversion (tensorflow converted the
    function it gives ``tf.function`` at every trace, though it only calls unidl's code: 25 ms of a first step); a
    user's function is converted, and an error raised in it still carries AutoGraph's account of where."""
    from tensorflow.python.autograph.impl import api

    converted, convert = [], api._convert_actual
    monkeypatch.setattr(api, "_convert_actual", lambda entity, context: (converted.append(entity),
                                                                         convert(entity, context))[1])
    with ud.use_backend("tensorflow"):
        model = ud.nn.Sequential(ud.nn.Linear(3, 2))
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
        step(np.ones((2, 3), np.float32), np.ones((2, 2), np.float32))
        assert converted == []
        x = np.ones((2, 3), np.float32)
        np.testing.assert_allclose(_numpy(ud.function(_control_flow)(x)), _control_flow_reference(x), rtol=1e-6)
        assert [getattr(entity, "__name__", None) for entity in converted] == ["_control_flow"]

        def compares_an_unknown_size(x):
            return x if x.shape[0] > 1 else -x

        with pytest.raises(TypeError, match=r"(?s)in user code:.*compares_an_unknown_size.*'>' not supported"):
            ud.function(compares_an_unknown_size)(x)


class Pair(collections.namedtuple("Pair", "first second")):
    """Two tensors as a NamedTuple argument."""


@pytest.mark.filterwarnings("ignore::unidl.errors.RetraceWarning")  # (each structure is a graph of its own)
def test_tuples_lists_namedtuples_and_dicts_of_tensors_reach_the_function_as_they_are(backend):
    """A structure of tensors as an argument (a tuple, a list, a NamedTuple, a dict, nested, of several shapes, a
    Python number inside baked in as at the top level) reaches the function as that structure, and its result is
    the eager one, on every backend. TensorFlow's graphs (and Keras's on TensorFlow) converted it to one tensor: a
    tuple of same-shaped tensors came in stacked (a NamedTuple's fields lost), the others and dicts failed. New
    values in the same structure trace nothing again; another structure is another graph."""
    a, b = ud.tensor(np.ones(3)), ud.tensor(np.arange(3.0))
    c = ud.tensor(np.full((2, 2), 2.0))

    def combined(p):
        if isinstance(p, dict):
            return p["x"] * p["scale"][0] + ud.ops.sum(p["scale"][1])
        if hasattr(p, "first"):
            return p.first - p.second
        return p[0] * p[1] + ud.ops.sum(p[2]) if len(p) == 3 else p[0] * p[1]

    cases = [(a, b), [a, b], Pair(a, b), {"x": a, "scale": (3, c)}, (a, b, c)]
    function = ud.function(combined)
    for case in cases:
        np.testing.assert_allclose(ud.to_numpy(function(case)), ud.to_numpy(combined(case)))
    traces = function.trace_count if hasattr(function, "trace_count") else None
    np.testing.assert_allclose(ud.to_numpy(function((b, a))), ud.to_numpy(combined((b, a))))
    if traces is not None:
        assert function.trace_count == traces


def test_a_replaced_sub_module_is_traced_anew(backend):
    """A head replaced after the first call (transfer learning), or a parameter replaced, is what the next call
    runs: on tensorflow and Keras-on-TensorFlow/JAX the graph ran the old head's variables (0.45 off the eager
    forward, and its old width), as torch and jax ran the new one."""
    ud.manual_seed(0)
    model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.ReLU(), ud.nn.Linear(4, 2))

    @ud.function
    def infer(x):
        return model(x)

    x = ud.tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    np.testing.assert_allclose(ud.to_numpy(infer(x)), ud.to_numpy(model(x)), rtol=1e-6)
    model[2] = ud.nn.Linear(4, 5)  # a new head of another width
    assert ud.to_numpy(infer(x)).shape == (2, 5)
    np.testing.assert_allclose(ud.to_numpy(infer(x)), ud.to_numpy(model(x)), rtol=1e-6)
    model[0].weight = model[0].parameter(np.ones((4, 3), np.float32))  # a parameter replaced
    np.testing.assert_allclose(ud.to_numpy(infer(x)), ud.to_numpy(model(x)), rtol=1e-6)
    @ud.function
    def by_parts(x):  # (the head called directly: it, not the model, holds this function's mark)
        return model[2](model[1](model[0](x)))

    assert ud.to_numpy(by_parts(x)).shape == (2, 5)
    model[2] = ud.nn.Linear(4, 6)
    assert ud.to_numpy(by_parts(x)).shape == (2, 6)
    model.eval(), infer(x), model.train(), infer(x)  # (modes alone trace no more than before)
    counts = infer.trace_count
    infer(x)
    assert infer.trace_count == counts


@pytest.mark.filterwarnings("ignore::unidl.errors.RetraceWarning")  # (a new Python value traces again)
def test_methods_and_keyword_arguments(backend):
    """``@ud.function`` on a method binds to each instance (it was a missing-argument ``TypeError``), and keyword
    arguments bind to the function's parameters (``__call__`` took none), as ``tf.function`` and ``jax.jit``."""
    class Net(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = ud.nn.Linear(3, 2)

        @ud.function
        def predict(self, x, scale=1.0):
            return self.fc(x) * scale

    x = ud.tensor(np.ones((2, 3), np.float32))
    first, second = Net(), Net()
    for net in (first, second):
        np.testing.assert_allclose(ud.to_numpy(net.predict(x)), ud.to_numpy(net.fc(x)), rtol=1e-6)
        np.testing.assert_allclose(ud.to_numpy(net.predict(x, scale=2.0)), 2 * ud.to_numpy(net.fc(x)), rtol=1e-6)
        np.testing.assert_allclose(ud.to_numpy(net.predict(x=x)), ud.to_numpy(net.fc(x)), rtol=1e-6)
    assert first.predict is first.predict and first.predict is not second.predict
    with pytest.raises(TypeError, match="ud.function 'predict': got an unexpected keyword argument 'shift'"):
        first.predict(x, shift=1.0)
    import gc
    import weakref

    gone = weakref.ref(second)
    del second, net
    gc.collect()
    assert gone() is None  # (the bound function lives in the instance: it kept every instance alive before)

    @dataclasses.dataclass(frozen=True)
    class Scaled:  # (unhashable or equal instances: each binds its own function, never one by equality)
        factor: float

        @ud.function
        def apply(self, x):
            return x * self.factor

    np.testing.assert_allclose(ud.to_numpy(Scaled(2.0).apply(x)), 2 * ud.to_numpy(x))
    one, other = Scaled(3.0), Scaled(3.0)
    assert one == other and one.apply is not other.apply

    @ud.function
    def partly(x, y=None, z=2.0):
        return x * z

    np.testing.assert_allclose(ud.to_numpy(partly(x, z=3.0)), 3 * ud.to_numpy(x))  # (y skipped: its default)

    @ud.function
    def keyword_only(x, *, scale):
        return x * scale

    with pytest.raises(TypeError, match=r"passes its arguments by position: keyword-only arguments \['scale'\]"):
        keyword_only(x, scale=2.0)


def test_a_module_built_inside_grad_computes_as_torch(backend):
    """A loss with a class ``weight`` built inside the differentiated function (torch's idiom) and a layer built
    inside ``ud.grad`` give torch's values on every backend (Keras-on-JAX refused to create their variables in its
    stateless scope, in Keras's words)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    labels, weight = np.array([0, 3, 1, 2, 2, 1]), np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    grad = ud.grad(lambda z: ud.nn.CrossEntropyLoss(weight=ud.tensor(weight))(z, ud.tensor(labels)))(ud.tensor(x))
    reference = torch.tensor(x, requires_grad=True)
    torch.nn.CrossEntropyLoss(weight=torch.tensor(weight))(reference, torch.tensor(labels)).backward()
    np.testing.assert_allclose(ud.to_numpy(grad), reference.grad.numpy(), rtol=1e-5, atol=1e-6)
    scale = ud.tensor(np.full((1, 4), 2.0, np.float32))
    grad = ud.grad(lambda s: ud.ops.sum(ud.nn.LayerNorm(4)(ud.tensor(x) * s) ** 3))(scale)
    reference = torch.full((1, 4), 2.0, requires_grad=True)
    (torch.nn.functional.layer_norm(torch.tensor(x) * reference, (4,)) ** 3).sum().backward()
    np.testing.assert_allclose(ud.to_numpy(grad), reference.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_a_module_built_inside_a_function_computes_as_torch(backend):
    """A layer built inside ``ud.function`` gives torch's values where the function is compiled by JAX (the jax
    backend, Keras-on-JAX: Keras refused to create its variables in its stateless scope) or runs eagerly; a
    TensorFlow graph (the tensorflow backend, Keras-on-TensorFlow), which cannot create variables at each call, is
    a GraphConstructError saying to build the module outside (it was tf.function's ValueError)."""
    x = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    normalize = ud.function(lambda z: ud.nn.LayerNorm(4)(z))
    if "tensorflow" in (backend, backend == "keras" and os.environ.get("KERAS_BACKEND", "tensorflow")):
        with pytest.raises(ud.GraphConstructError, match=r"a module built \(its variables created\) inside "
                                                         r"ud.function .* Build the module once outside"):
            normalize(ud.tensor(x))
        return
    expected = torch.nn.functional.layer_norm(torch.tensor(x), (4,))
    np.testing.assert_allclose(ud.to_numpy(normalize(ud.tensor(x))), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_a_call_that_raised_after_building_a_module_leaves_later_functions_working(backend):
    """A compiled call whose function built a module (a loss with a class ``weight``) and then raised (a label out
    of range, found as it ran) leaves the functions called after it working: on jax the error's traceback kept
    the module, whose buffer held the ended trace's value, and every later ``ud.function``, which threads every
    live variable, failed with JAX's UnexpectedTracerError. (On TensorFlow graphs the first call is the
    GraphConstructError of a module built inside; torch runs eagerly.)"""
    logits = np.zeros((2, 3), np.float32)
    weighted = ud.function(lambda x, y: ud.nn.CrossEntropyLoss(weight=np.ones(3, np.float32))(x, y))
    with pytest.raises((ud.IndexOutOfRangeError, ud.GraphConstructError)):
        weighted(ud.tensor(logits), ud.tensor(np.array([0, 5]), dtype="int64"))
    doubled = ud.function(lambda x: x * 2.0)
    np.testing.assert_array_equal(ud.to_numpy(doubled(ud.tensor(logits + 1.0))), np.full((2, 3), 2.0, np.float32))


def test_a_module_kept_from_a_call_that_raised_is_threaded_once_given_values(backend):
    """A module built inside a compiled call that raised, kept by the user and loaded with values afterwards, is
    read by later functions at each call (its new values seen), as any module: on jax the variables of an ended
    trace leave the live list (previous test) and come back to it when given a value."""
    logits, labels = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), np.array([0, 1, 2, 1])
    kept = []

    def weighted(x, y):
        kept.append(ud.nn.CrossEntropyLoss(weight=np.ones(3, np.float32)))
        return kept[-1](x, y)

    with pytest.raises((ud.IndexOutOfRangeError, ud.GraphConstructError)):
        ud.function(weighted)(ud.tensor(logits), ud.tensor(np.array([0, 5, 1, 1]), dtype="int64"))
    if not kept:  # (a TensorFlow graph refuses the module as it is built: nothing to keep)
        return
    loss = kept[-1]
    compiled = ud.function(lambda x, y: loss(x, y))
    for weight in ([1.0, 2.0, 3.0], [3.0, 0.5, 1.0]):
        loss.load_state_dict({"weight": np.array(weight, np.float32)})
        expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                                     weight=torch.tensor(weight))
        got = compiled(ud.tensor(logits), ud.tensor(labels, dtype="int64"))
        np.testing.assert_allclose(ud.to_numpy(got), expected.numpy(), rtol=1e-5)


def test_a_function_traced_under_one_dtype_is_traced_again_under_another(backend):
    """The dtype in force is read when the function is traced (``ud.ops.zeros``, ``ud.tensor``): a graph traced
    in float32 and called again under ``ud.use_dtype('float64')`` gave float32 on tensorflow, keras and jax, where
    torch, which runs the Python each call, gives float64."""
    make = ud.function(lambda x: ud.ops.zeros((2,)) + ud.ops.cast(ud.ops.sum(x), ud.get_dtype()))
    labels = ud.tensor(np.array([1, 2]), dtype="int64")
    assert ud.to_numpy(make(labels)).dtype == np.float32
    with ud.use_dtype("float64"):
        assert ud.to_numpy(make(labels)).dtype == np.float64
    assert ud.to_numpy(make(labels)).dtype == np.float32
