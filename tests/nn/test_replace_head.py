"""Replacing a layer after the model has run (transfer learning's new head): ``predict``, ``fit`` and the native
model use the new layer on every backend, not the compiled forward or the native model built before."""

import numpy as np

import unidl as ud


def test_a_head_replaced_after_predict_and_fit_is_used_and_trained(backend):
    ud.manual_seed(0)
    model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.ReLU(), ud.nn.Linear(4, 2))
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    y = np.arange(8) % 5
    assert ud.predict(model, x).shape == (8, 2)
    model.native  # noqa: B018  (built now, with the old head's variables)
    model.requires_grad_(False)
    model[2] = ud.nn.Linear(4, 5)
    body = model.state_dict()
    assert ud.predict(model, x).shape == (8, 5)
    ud.fit(model, (x, y), batch_size=4, epochs=1, loss=ud.nn.CrossEntropyLoss(),
           optimizer=ud.optim.SGD(model.parameters(), lr=0.5), verbose=0)
    after = model.state_dict()
    assert all(np.array_equal(after[key], body[key]) for key in ("0.weight", "0.bias"))
    assert not np.array_equal(after["2.weight"], body["2.weight"])  # the new head trained
