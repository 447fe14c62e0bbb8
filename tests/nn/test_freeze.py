"""Freezing with PyTorch's names (``module.requires_grad_(False)``, ``param.requires_grad = False``) is honoured
by every loop on every backend: frozen weights and their optimizer state stay bit-identical."""

import warnings

import numpy as np
import pytest

import unidl as ud

R = np.random.default_rng(4)
X, Y = R.standard_normal((8, 3)).astype(np.float32), R.standard_normal((8, 2)).astype(np.float32)


class Net(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = ud.nn.Linear(3, 4)
        self.head = ud.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(ud.ops.relu(self.body(x)))


def _loops(model, optimizer):
    loss_fn = ud.nn.MSELoss()
    step = ud.train_step(model, loss_fn, optimizer)
    return {
        "train_step": lambda: step(X, Y),
        "fit": lambda: ud.fit(model, (X, Y), loss=loss_fn, optimizer=optimizer, epochs=1, batch_size=4, verbose=0),
        "value_and_grad": lambda: optimizer.apply(
            ud.value_and_grad(lambda: loss_fn(model(ud.tensor(X)), ud.tensor(Y)), model.parameters())()[1]),
        "apply": lambda: optimizer.apply([ud.tensor(np.ones(p.shape, np.float32)) for p in model.parameters()]),
    }


@pytest.mark.parametrize("how", ["module", "attribute"])
@pytest.mark.parametrize("loop", ["train_step", "fit", "value_and_grad", "apply"])
def test_frozen_parameters_stay_bit_identical(backend, how, loop):
    model = Net()
    optimizer = ud.optim.Adam(model.parameters(), lr=0.05)
    run = _loops(model, optimizer)[loop]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras notes the variables it has no gradient for
        run()  # a first step while everything trains (optimizer state everywhere, graphs traced)
        if how == "module":
            model.body.requires_grad_(False)
        else:
            for p in model.body.parameters():
                p.requires_grad = False
        weights, slots = model.state_dict(), optimizer.state_dict()["slots"]
        run()
        run()
    after, slots_after = model.state_dict(), optimizer.state_dict()["slots"]
    for name in ("body.weight", "body.bias"):
        assert np.array_equal(weights[name], after[name]), name
    for index in (0, 1):
        for slot in slots[index]:
            assert np.array_equal(slots[index][slot], slots_after[index][slot])
    assert not np.array_equal(weights["head.weight"], after["head.weight"])
    model.body.requires_grad_(True)  # unfrozen: trains again (compiled steps are rebuilt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run()
    assert not np.array_equal(after["body.weight"], model.state_dict()["body.weight"])


def test_gradients_of_frozen_parameters_are_none(backend):
    model = Net().requires_grad_(False)
    model.head.requires_grad_(True)
    _, grads = ud.value_and_grad(lambda: ud.ops.sum(model(ud.tensor(X))), model.parameters())()
    assert [g is None for g in grads] == [True, True, False, False]
    assert model.num_parameters(trainable_only=True) == 4 * 2 + 2
