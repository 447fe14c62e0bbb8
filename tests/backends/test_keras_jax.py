"""Keras on JAX: ``ud.grad`` with respect to a model's Keras variables and ``ud.function`` compiled over them,
against torch on the same weights and batch (one fresh interpreter: ``KERAS_BACKEND`` is read at import)."""

from tests.helpers import last_json_line, run_python

_SCRIPT = r"""
import json
import numpy as np
import unidl as ud
from unidl.testing import max_relative_difference

rng = np.random.default_rng(0)
x = rng.standard_normal((8, 6)).astype(np.float32)
y = rng.standard_normal((8, 3)).astype(np.float32)


def net():
    ud.manual_seed(0)
    return ud.nn.Sequential(ud.nn.Linear(6, 5), ud.nn.ReLU(), ud.nn.BatchNorm1d(5), ud.nn.Linear(5, 3))


def run(backend):
    with ud.use_backend(backend):
        model, loss = net(), ud.nn.MSELoss()
        model.load_state_dict(reference)
        params = model.parameters()
        value, grads = ud.value_and_grad(lambda: loss(model(ud.tensor(x)), ud.tensor(y)), argnums=params)()
        after_grad = {k: np.asarray(v) for k, v in model.state_dict().items()}  # batch norm's statistics moved
        optimizer = ud.optim.SGD(params, lr=0.1, momentum=0.9)

        @ud.function
        def step(a, b):
            v, g = ud.value_and_grad(lambda: loss(model(a), b), argnums=params)()
            optimizer.apply(g)
            return v

        losses = [float(step(x, y)) for _ in range(4)]
        return dict(value=float(value), grads=[np.asarray(ud.to_numpy(g)) for g in grads], after_grad=after_grad,
                    losses=losses, state={k: np.asarray(v) for k, v in model.state_dict().items()},
                    traces=step.trace_count)


def retrace_reaching_new_variables():
    # a function whose variables depend on the traced shape: the retrace for a small batch reads `second`,
    # which the first trace never read; after `second` changes, the compiled call must see its new weights
    with ud.use_backend("keras"):
        first, second = ud.nn.Linear(6, 3), ud.nn.Linear(6, 3)

        @ud.function
        def branch(a):
            return first(a) if a.shape[0] > 4 else second(a)

        small = x[:2]
        branch(x), branch(small)
        second.load_state_dict({k: np.asarray(v) * 2 for k, v in second.state_dict().items()})
        return float(np.max(np.abs(ud.to_numpy(branch(small)) - ud.to_numpy(second(ud.tensor(small))))))


with ud.use_backend("torch"):
    reference = {k: np.asarray(v) for k, v in net().state_dict().items()}
ours, torch = run("keras"), run("torch")
import keras
print(json.dumps({
    "framework": keras.backend.backend(),
    "value": abs(ours["value"] - torch["value"]) / abs(torch["value"]),
    "grads": max(max_relative_difference(a, b) for a, b in zip(ours["grads"], torch["grads"])),
    "after_grad": max(max_relative_difference(ours["after_grad"][k], v) for k, v in torch["after_grad"].items()),
    "moved": any(not np.array_equal(torch["after_grad"][k], reference[k]) for k in reference if "running" in k),
    "losses": max_relative_difference(np.array(ours["losses"]), np.array(torch["losses"])),
    "falling": ours["losses"][-1] < ours["losses"][0],
    "state": max(max_relative_difference(ours["state"][k], v) for k, v in torch["state"].items()),
    "traces": ours["traces"],
    "stale": retrace_reaching_new_variables(),
}))
"""


def test_grad_and_function_over_keras_variables_on_jax_match_torch():
    result = last_json_line(run_python(_SCRIPT, env={"KERAS_BACKEND": "jax"}).stdout)
    assert result["framework"] == "jax"
    assert result["value"] < 1e-5 and result["grads"] < 1e-5
    # the forward's batch norm statistics, assigned inside the stateless trace, are written back
    assert result["moved"] and result["after_grad"] < 1e-5
    # ud.function: one trace, the optimizer's and batch norm's updates written back after every call
    assert result["traces"] == 1
    assert result["falling"] and result["losses"] < 1e-5 and result["state"] < 1e-5
    # a retrace reaching variables the first trace did not takes them as values, never as stale constants
    assert result["stale"] < 1e-6
