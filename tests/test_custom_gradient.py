"""Custom gradients: ``ud.custom_gradient`` and ``ud.autograd.Function`` replace the framework's backward."""

import numpy as np
import pytest
import torch

import unidl as ud


@ud.custom_gradient
def relu_times_three_gradient(x):
    def backward(dy):
        return 3.0 * ud.ops.where(x > 0, dy, ud.ops.zeros_like(dy))

    return ud.ops.relu(x), backward


class MyReLU(ud.autograd.Function):
    """The lecture's hand-written ReLU."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ud.ops.relu(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return ud.ops.where(x > 0, grad_output, ud.ops.zeros_like(grad_output))


class ScaledReLU(MyReLU):
    @staticmethod
    def backward(ctx, grad_output):
        return 3.0 * MyReLU.backward(ctx, grad_output)


X = np.array([[-1.5, 0.5, 2.0], [3.0, -0.25, 1.0]], np.float32)


def _expected_gradient(scale):
    return scale * (X > 0).astype(np.float32)


def _sum_of(fn):
    return lambda x: ud.ops.sum(fn(x))


@pytest.mark.parametrize("fn, scale", [(relu_times_three_gradient, 3.0), (MyReLU.apply, 1.0),
                                       (ScaledReLU.apply, 3.0)], ids=["decorator", "function", "function-scaled"])
def test_custom_backward_is_used_eagerly(backend, fn, scale):
    x = ud.tensor(X)
    np.testing.assert_allclose(ud.to_numpy(fn(x)), np.maximum(X, 0))
    np.testing.assert_allclose(ud.to_numpy(ud.grad(_sum_of(fn))(x)), _expected_gradient(scale))


@pytest.mark.parametrize("fn, scale", [(relu_times_three_gradient, 3.0), (ScaledReLU.apply, 3.0)],
                         ids=["decorator", "function-scaled"])
def test_custom_backward_is_used_inside_function(backend, fn, scale):
    @ud.function
    def value_and_gradient(x):
        return ud.value_and_grad(_sum_of(fn))(x)

    value, gradient = value_and_gradient(X)
    assert float(ud.to_numpy(value)) == pytest.approx(np.maximum(X, 0).sum())
    np.testing.assert_allclose(ud.to_numpy(gradient), _expected_gradient(scale))


def test_custom_gradient_reaches_parameters_through_a_layer(backend, rng):
    layer = ud.nn.Linear(3, 4)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    plain = ud.grad(lambda: ud.ops.sum(ud.ops.relu(layer(ud.tensor(x)))), layer.parameters())()
    custom = ud.grad(lambda: ud.ops.sum(relu_times_three_gradient(layer(ud.tensor(x)))), layer.parameters())()
    for p, c in zip(plain, custom):
        np.testing.assert_allclose(ud.to_numpy(c), 3 * ud.to_numpy(p), rtol=1e-6, atol=1e-6)


def test_custom_gradient_with_two_inputs(backend):
    @ud.custom_gradient
    def product(a, b):
        def backward(dy):
            return dy * b * 10.0, dy * a  # a deliberately wrong gradient for a, to see it used

        return a * b, backward

    a, b = ud.tensor(np.array([1.0, 2.0], np.float32)), ud.tensor(np.array([3.0, 4.0], np.float32))
    grad_a, grad_b = ud.grad(lambda a, b: ud.ops.sum(product(a, b)), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(ud.to_numpy(grad_a), [30.0, 40.0])
    np.testing.assert_allclose(ud.to_numpy(grad_b), [1.0, 2.0])


def test_a_backward_of_another_float_dtype_gives_the_gradient_in_the_inputs_dtype_as_torch(backend):
    """A backward that returns float64 for a float32 input gives a float32 gradient, as ``torch.autograd.Function``
    casts it (TensorFlow, Keras and JAX gave float64), eagerly and inside ``ud.function``; a float64 input keeps
    float64."""
    @ud.custom_gradient
    def doubled(a):
        return a * 2, lambda dy: ud.ops.cast(dy * 2, "float64")

    for dtype in ("float32", "float64"):
        x = ud.tensor(np.array([1.0, 2.0]), dtype)
        for gradient in (ud.grad(_sum_of(doubled)), ud.function(ud.grad(_sum_of(doubled)))):
            result = ud.to_numpy(gradient(x))
            assert result.dtype == np.dtype(dtype), (dtype, result.dtype)
            np.testing.assert_array_equal(result, [2.0, 2.0])


def _graphs_alive() -> int:
    """TensorFlow's traced graphs alive in this process (0 on the other frameworks), among the objects the garbage
    collector has not been told to leave alone (``gc.freeze``)."""
    import gc

    gc.collect()
    return sum(type(o).__name__ == "FuncGraph" for o in gc.get_objects())


def test_dropped_functions_with_custom_gradients_leave_no_graph_behind(backend):
    """TensorFlow registers the backward of a custom gradient traced into a graph (``ud.custom_gradient``, the
    tie-splitting ``ud.ops.maximum``) in a global registry that nothing emptied, and the registered function holds
    the graph: every such graph stayed alive with its nested graphs for the rest of the process, so a program
    tracing new functions (a new loss per ``fit``) grew without bound. Functions traced and dropped leave none."""
    def trace_and_drop():
        @ud.function
        def gradient(x):
            return ud.grad(lambda v: ud.ops.sum(ud.ops.maximum(relu_times_three_gradient(v), ud.ops.zeros_like(v))))(x)

        np.testing.assert_allclose(ud.to_numpy(gradient(X)), _expected_gradient(3.0))

    import gc

    trace_and_drop()
    # what is alive now is frozen: the collections and counts below go through the objects made after it (a full
    # collection and count took about half a second each), and a registry from before that holds a new graph
    # keeps it alive as before
    gc.freeze()
    try:
        before = _graphs_alive()
        for _ in range(3):
            trace_and_drop()
        assert _graphs_alive() == before
    finally:
        gc.unfreeze()


def test_an_inner_function_freed_while_an_outer_graph_calls_it_keeps_its_custom_gradient(backend):
    """A ``ud.function`` called by another one's graph and freed afterwards (the outer function's Python now calls
    the same computation without it), then the outer function differentiated: on TensorFlow freeing the inner
    function removed the gradient its graph registered for the tie-splitting ``ud.ops.maximum``
    (``gradients_registered_for_life``), which the outer graph still calls, and the gradient failed with
    TensorFlow's ``LookupError: No gradient defined for operation 'IdentityN'``. The inner graph now lives as long
    as the graph calling it; every backend gives torch's gradient."""
    import gc

    x = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    inner = [ud.function(lambda u: ud.ops.maximum(u, u * 0.5))]
    outer = ud.function(lambda t: inner[0](t) * 2.0)
    outer(ud.tensor(x))
    inner[0] = lambda u: ud.ops.maximum(u, u * 0.5)  # (where the function's Python runs again: the same result)
    gc.collect()
    gradient = ud.to_numpy(ud.grad(lambda t: ud.ops.sum(outer(t)))(ud.tensor(x)))
    np.testing.assert_allclose(gradient, np.where(x > 0, 2.0, 1.0))


def test_a_train_step_through_an_inline_function_with_a_custom_gradient_trains_as_without_it(backend):
    """A forward that makes a ``ud.function`` inline and drops it after its call (its custom gradient: the
    tie-splitting ``ud.ops.maximum``'s), trained by a ``train_step``: on TensorFlow the step's first trace failed
    (``LookupError: No gradient defined for operation 'IdentityN'``), the inline function's gradient registrations
    freed with it before the step's graph differentiated through it. Its losses are those of the same forward
    written without the function; and so are ``fit``'s (which on Keras-on-TensorFlow failed in Keras's own train
    step's graph)."""
    x = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    y = np.ones((4, 3), np.float32)

    def leaky(u):
        return ud.ops.maximum(u, u * 0.5) * 2.0

    class Net(ud.nn.Module):
        def __init__(self, inline):
            super().__init__()
            self.linear, self.inline = ud.nn.Linear(3, 3), inline

        def forward(self, t):
            h = self.linear(t)
            return ud.function(lambda u: leaky(u))(h) if self.inline else leaky(h)

    losses, fitted = {}, {}
    for inline in (True, False):
        ud.manual_seed(0)
        net = Net(inline)
        step = ud.train_step(net, ud.nn.MSELoss(), ud.optim.SGD(net.parameters(), lr=0.1))
        losses[inline] = [float(ud.to_numpy(step(x, y))) for _ in range(3)]
        # fit's step loop too (Keras's own train step's graph on keras)
        ud.manual_seed(0)
        net = Net(inline)
        fitted[inline] = ud.fit(net, (x, y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(net.parameters(), lr=0.1),
                                epochs=2, batch_size=2, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True][2] < losses[True][0]
    np.testing.assert_allclose(fitted[True], fitted[False], rtol=1e-5)
    assert fitted[True][1] < fitted[True][0]


def test_a_gradient_of_a_gradient_is_torchs_on_every_backend(backend):
    """``ud.grad`` inside a differentiated function gives a differentiable gradient on every backend, as
    ``torch.autograd.grad(create_graph=True)``: a Hessian-vector product (eagerly and inside ``ud.function``) and a
    gradient penalty in a train step's loss (WGAN-GP's) against plain PyTorch. On torch's backend the inner gradient
    was cut from the graph (its second derivative 0, the penalty trained nothing)."""
    x0, v0 = np.array([0.3, -1.2, 2.0]), np.array([1.0, 0.5, -2.0])
    xt = torch.tensor(x0, requires_grad=True)
    (g,) = torch.autograd.grad((xt ** 3).sum() * (xt ** 2).sum(), xt, create_graph=True)
    (hvp,) = torch.autograd.grad((g * torch.tensor(v0)).sum(), xt)

    def hessian_vector(x, v):
        return ud.grad(lambda a: ud.ops.sum(ud.grad(lambda b: ud.ops.sum(b ** 3) * ud.ops.sum(b * b))(a) * v))(x)

    with ud.use_dtype("float64"):
        for function in (hessian_vector, ud.function(hessian_vector)):
            got = ud.to_numpy(function(ud.tensor(x0), ud.tensor(v0)))
            np.testing.assert_allclose(got, hvp.numpy(), rtol=1e-12)
    # a gradient penalty on the inputs, in a train step's loss: the weights' gradient runs through the gradient
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 1))
    weight, bias = rng.standard_normal((1, 3)), rng.standard_normal(1)
    tw, tb = torch.tensor(weight, requires_grad=True), torch.tensor(bias, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    out = torch.tanh(tx @ tw.T + tb)
    (slope,) = torch.autograd.grad(out.sum(), tx, create_graph=True)
    loss = ((out - torch.tensor(y)) ** 2).mean() + (slope ** 2).sum()
    loss.backward()
    expected = weight - 0.1 * tw.grad.numpy()

    class Penalized(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = ud.nn.Linear(3, 1)

        def forward(self, x):
            out = ud.ops.tanh(self.linear(x))
            slope = ud.grad(lambda a: ud.ops.sum(ud.ops.tanh(self.linear(a))))(x)
            return ud.ops.concat([out, ud.ops.reshape(ud.ops.sum(slope * slope), (1, 1)) + out * 0], 1)

    class PenalizedLoss(ud.nn.Module):
        def forward(self, outputs, target):
            return ud.ops.mean((outputs[:, :1] - target) ** 2) + outputs[0, 1]

    with ud.use_dtype("float64"):
        model = Penalized()
        model.linear.load_state_dict({"weight": weight, "bias": bias})
        ud.train_step(model, PenalizedLoss(), ud.optim.SGD(model.parameters(), lr=0.1))(x, y)
        np.testing.assert_allclose(ud.to_numpy(model.linear.weight), expected, rtol=1e-10)


def test_a_backward_of_the_wrong_count_or_shape_is_one_error_naming_the_input(backend):
    """A custom backward returning too few gradients or one of another shape than its input is one unidl error on
    every backend (torch's and JAX's own errors differed); a gradient the input broadcasts to is summed to the
    input's shape, as torch.autograd sums it."""
    x = ud.tensor(np.ones((4, 3), np.float32))

    @ud.custom_gradient
    def sliced(a):
        return a * 2, (lambda dy: dy[:1])

    @ud.custom_gradient
    def product(a, b):
        return a * b, (lambda dy: dy)

    @ud.custom_gradient
    def stacked(a):
        return a * 2, (lambda dy: ud.ops.stack([dy, dy]))

    with pytest.raises(ud.errors.ShapeMismatchError, match=r"'sliced' .*\(1, 3\) for input 0, of shape \(4, 3\)"):
        ud.grad(lambda a: ud.ops.sum(sliced(a)))(x)
    with pytest.raises(TypeError, match="'product' returned 1 gradient for 2 inputs"):
        ud.grad(lambda a: ud.ops.sum(product(a, a)))(x)
    np.testing.assert_allclose(ud.to_numpy(ud.grad(lambda a: ud.ops.sum(stacked(a)))(x)), np.full((4, 3), 2.0))


def test_a_function_returning_a_tuple_is_the_documented_type_error(backend):
    """``value_and_grad`` of a function returning ``(value, extra)`` (jax's ``has_aux`` habit) is the TypeError its
    docstring promises on every backend (an AttributeError about ``shape`` before)."""
    with pytest.raises(TypeError, match="returns one scalar tensor, but it returned a tuple"):
        ud.value_and_grad(lambda a: (ud.ops.sum(a ** 2), a))(ud.tensor(np.ones(3, np.float32)))
    with pytest.raises(TypeError, match="returned the Python float 2.0 .* no gradient reaches a number computed"):
        ud.grad(lambda a: 2.0)(ud.tensor(np.ones(3, np.float32)))
