"""``ud.value_and_grad``/``ud.grad`` with respect to arguments and parameters together: one forward and one
backward pass, torch.autograd's gradients (``torch.autograd.grad(value, inputs + params)``) on every backend,
eagerly and inside ``ud.function``, and one error for each kind of bad input."""

import numpy as np
import pytest
import torch

import unidl as ud

R = np.random.default_rng(7)
X = R.standard_normal((6, 5)).astype(np.float32)
TARGET = R.standard_normal((6, 3)).astype(np.float32)
UNUSED = R.standard_normal((2,)).astype(np.float32)


def _model():
    """Two layers, the first's bias frozen, and a third layer the loss never reads (its gradients None, as
    PyTorch's autograd gives, where the frozen bias gets None too)."""
    ud.manual_seed(3)
    model = ud.nn.ModuleList([ud.nn.Linear(5, 4), ud.nn.Linear(4, 3), ud.nn.Linear(3, 2)])
    model[0].bias.requires_grad_(False)
    return model


def _loss(model):
    def loss(x, target, unused):
        hidden = ud.ops.tanh(model[0](x))
        return ud.ops.sum((model[1](hidden) - target) ** 2 * target)

    return loss


def _oracle(model):
    """The value and torch.autograd's gradients of ``_loss`` w.r.t. x, the target and every trainable parameter
    in one pass, the model's weights copied into plain torch tensors."""
    weights = [torch.tensor(ud.to_numpy(p), requires_grad=p.requires_grad) for p in model.parameters()]
    x, target = torch.tensor(X, requires_grad=True), torch.tensor(TARGET, requires_grad=True)
    hidden = torch.tanh(torch.nn.functional.linear(x, weights[0], weights[1]))
    value = (((torch.nn.functional.linear(hidden, weights[2], weights[3]) - target) ** 2) * target).sum()
    wanted = [x, target] + [w for w in weights if w.requires_grad]
    found = iter(torch.autograd.grad(value, wanted, allow_unused=True))
    arguments = [next(found).numpy(), next(found).numpy()]
    params = [next(found) if w.requires_grad else None for w in weights]
    return value.item(), arguments, [None if g is None else g.numpy() for g in params]


def _assert_params_agree(got, expected):
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert (g is None) == (e is None), (index, g, e)
        if e is not None:
            np.testing.assert_allclose(ud.to_numpy(g), e, rtol=1e-5, atol=1e-5, err_msg=f"parameter {index}")


@pytest.mark.parametrize("mode", ["eager", "ud.function"])
def test_gradients_of_arguments_and_parameters_together_are_torch_autograds(backend, mode):
    """``value_and_grad(f, argnums, params=...)`` gives ``(value, (argument gradients, parameter gradients))``:
    the arguments' as ``argnums`` alone gives them (a tuple; one tensor for an int; zeros for an argument the
    value does not use), the parameters' as the list form gives them (None for a frozen one and for one the
    value does not use), torch.autograd's values; ``grad`` the same without the value."""
    model = _model()
    loss = _loss(model)
    value_expected, arguments_expected, params_expected = _oracle(model)

    def both(x, target, unused):
        value, (arguments, params) = ud.value_and_grad(loss, argnums=(0, 1, 2), params=model.parameters())(
            x, target, unused)
        single = ud.grad(loss, argnums=0, params=model.parameters())(x, target, unused)
        return value, arguments, params, single

    run = both if mode == "eager" else ud.function(both)
    value, arguments, params, (single_argument, single_params) = run(ud.tensor(X), ud.tensor(TARGET),
                                                                     ud.tensor(UNUSED))
    np.testing.assert_allclose(float(ud.to_numpy(value)), value_expected, rtol=1e-5)
    assert isinstance(arguments, tuple) and len(arguments) == 3
    for got, expected in zip(arguments, arguments_expected + [np.zeros_like(UNUSED)]):
        np.testing.assert_allclose(ud.to_numpy(got), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ud.to_numpy(single_argument), arguments_expected[0], rtol=1e-5, atol=1e-5)
    assert params_expected[-2:] == [None, None]  # (the layer the loss never reads)
    for found in (params, single_params):
        assert isinstance(found, list)
        _assert_params_agree(found, params_expected)


def test_params_alone_as_a_keyword_is_the_list_form(backend):
    """``params=`` without ``argnums`` is the list form (``value_and_grad(f, model.parameters())``): a list of the
    parameters' gradients, no argument differentiated."""
    model = _model()
    loss = _loss(model)
    tensors = [ud.tensor(X), ud.tensor(TARGET), ud.tensor(UNUSED)]
    value, found = ud.value_and_grad(loss, params=model.parameters())(*tensors)
    _, listed = ud.value_and_grad(loss, model.parameters())(*tensors)
    _, _, params_expected = _oracle(model)
    for grads in (found, listed, ud.grad(loss, params=model.parameters())(*tensors)):
        assert isinstance(grads, list)
        _assert_params_agree(grads, params_expected)


def test_arguments_and_parameters_take_one_forward_and_one_backward_pass(backend):
    """Both kinds of gradient from one pass: the forward runs as often as for the parameters alone (once; on jax
    more, traced again for which parameters the value uses, as the list form always was) and the backward once,
    where asking for the arguments' and the parameters' separately ran both twice."""
    model = _model()
    counts = {"forward": 0, "backward": 0}

    @ud.custom_gradient
    def counted(h):
        counts["forward"] += 1

        def backward(dy):
            counts["backward"] += 1
            return dy

        return h, backward

    def loss(x, target):
        return ud.ops.sum((model[1](ud.ops.tanh(counted(model[0](x)))) - target) ** 2)

    tensors = ud.tensor(X), ud.tensor(TARGET)
    ud.value_and_grad(loss, params=model.parameters())(*tensors)
    params_alone = dict(counts)
    counts.update(forward=0, backward=0)
    _, (arguments, params) = ud.value_and_grad(loss, argnums=(0, 1), params=model.parameters())(*tensors)
    assert counts == params_alone, (counts, params_alone)
    assert counts["backward"] == 1, counts
    if backend in ("torch", "tensorflow"):  # (jax's and Keras's analyses trace the forward again: as params alone)
        assert counts["forward"] == 1, counts
    assert len(arguments) == 2 and len(params) == 6


def test_every_parameter_frozen_gives_none_beside_the_arguments_gradients(backend):
    """No trainable parameter: the arguments' gradients as ever, None for each parameter (torch.autograd with no
    parameter among its inputs)."""
    model = _model()
    model.requires_grad_(False)
    loss = _loss(model)
    _, arguments_expected, _ = _oracle(model)
    _, (argument, params) = ud.value_and_grad(loss, argnums=1, params=model.parameters())(
        ud.tensor(X), ud.tensor(TARGET), ud.tensor(UNUSED))
    np.testing.assert_allclose(ud.to_numpy(argument), arguments_expected[1], rtol=1e-5, atol=1e-5)
    assert params == [None] * 6


@pytest.mark.parametrize("mode", ["eager", "ud.function"])
def test_bad_arguments_with_parameters_are_one_error_on_every_backend(backend, mode):
    """An integer argument, a parameter list that is not a list, the parameters given twice (as ``argnums`` and
    ``params``), an index out of range and a value that is not a scalar: each the same error on every backend,
    eagerly and inside ``ud.function``."""
    model = _model()
    params = model.parameters()
    run = (lambda fn, *args: fn(*args)) if mode == "eager" else (lambda fn, *args: ud.function(fn)(*args))
    x, labels = ud.tensor(X), ud.tensor(np.arange(6))

    def integer_argument(x, labels):
        return ud.grad(lambda a, b: ud.ops.sum(model[0](a)) + ud.ops.sum(ud.ops.cast(b, "float32")), argnums=(0, 1),
                       params=params)(x, labels)

    with pytest.raises(TypeError, match=r"argument 1 has dtype int64\b"):
        run(integer_argument, x, labels)

    def not_a_scalar(x):
        return ud.grad(lambda a: model[0](a), argnums=0, params=params)(x)

    # (a TensorFlow graph is traced for any batch size: None there)
    with pytest.raises(ValueError, match=r"returned a tensor of shape \((6|None), 4\)"):
        run(not_a_scalar, x)

    def out_of_range(x):
        return ud.grad(lambda a: ud.ops.sum(model[0](a)), argnums=(0, 1), params=params)(x)

    with pytest.raises(ValueError, match="argnums 1 is out of range for 1 arguments"):
        run(out_of_range, x)
    with pytest.raises(TypeError, match="params must be a list or tuple of parameters .* got a generator"):
        ud.grad(lambda a: ud.ops.sum(model[0](a)), argnums=0, params=(p for p in params))
    with pytest.raises(TypeError, match="params must be a list or tuple of parameters .* got a Linear"):
        ud.grad(lambda a: ud.ops.sum(model[0](a)), argnums=0, params=model[0])
    with pytest.raises(TypeError, match="give the parameters once, as params"):
        ud.grad(lambda a: ud.ops.sum(model[0](a)), argnums=params, params=params)
