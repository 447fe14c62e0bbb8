"""The keras backend's compiles (Keras 3 on the framework this process runs it on: TensorFlow in CI;
tests/backends/test_keras_jax.py runs the same check on Keras-on-JAX): train steps and ``ud.fit`` of one model
with other losses and metrics, called in turn, each switch back to their own compile, traced once."""

import gc
import weakref

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference


def alternated_steps_and_fit(rounds: int, bind_momentum: bool) -> dict:
    """An MSE train step, an L1 train step and ``ud.fit`` (MSE, two batches, ``mae``) of one model and one SGD
    optimizer, called in turn ``rounds`` times on the keras backend (with ``bind_momentum``, momentum set for the
    first time before the last round: every compiled step held it as a constant, so each traces again, once), and
    the same by hand in plain torch (each step its own loss, fit's epoch mean loss and mae). After each round:
    ``traces``, each step's ``trace_count``, and ``runs``, the Python runs of Keras's train step (where Keras's
    step is compiled, one per trace of any graph or jitted function holding it: each step's and fit's);
    ``weights`` and ``history``, the largest relative difference from torch's."""
    import torch

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Linear(6, 5), ud.nn.ReLU(), ud.nn.Linear(5, 3))
        start = {k: np.array(v) for k, v in model.state_dict().items()}
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        mse, l1 = ud.nn.MSELoss(), ud.nn.L1Loss()
        steps = [ud.train_step(model, mse, optimizer), ud.train_step(model, l1, optimizer)]
        history, traces, runs = [], [], []
        for index in range(rounds):
            if bind_momentum and index == rounds - 1:
                optimizer.param_groups[0]["momentum"] = 0.9
            for step in steps:
                step(x, y)
            logs = ud.fit(model, (x, y), loss=mse, optimizer=optimizer, epochs=1, batch_size=4, shuffle=False,
                          verbose=0, metrics=["mae"]).history
            history.append([logs["loss"][0], logs["mae"][0]])
            traces.append([step.trace_count for step in steps])
            runs.append(model.native.train_step_runs)
        trained = {k: np.array(v) for k, v in model.state_dict().items()}

    plain = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    plain.load_state_dict({k: torch.tensor(v) for k, v in start.items()})
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    functions = (torch.nn.functional.mse_loss, torch.nn.functional.l1_loss)

    def update(loss_fn, inputs, targets):
        plain_optimizer.zero_grad()
        outputs = plain(torch.tensor(inputs))
        loss = loss_fn(outputs, torch.tensor(targets))
        loss.backward()
        plain_optimizer.step()
        return loss.item(), (outputs - torch.tensor(targets)).abs().mean().item()

    expected = []
    for index in range(rounds):
        if bind_momentum and index == rounds - 1:
            plain_optimizer.param_groups[0]["momentum"] = 0.9
        for loss_fn in functions:
            update(loss_fn, x, y)
        batches = [update(functions[0], x[i:i + 4], y[i:i + 4]) for i in (0, 4)]
        expected.append(np.mean(batches, axis=0).tolist())
    weights = max(max_relative_difference(trained[k], v.detach().numpy()) for k, v in plain.state_dict().items())
    return dict(traces=traces, runs=runs, weights=weights,
                history=max_relative_difference(np.array(history), np.array(expected)))


def test_steps_and_fit_called_in_turn_keep_their_compiles():
    """Keras's trainer runs a model as last compiled, so each step and ``fit`` switches the model back to its own
    compile before it trains: each trains with its own loss (the plain torch loop alternating them, 1e-5), and the
    switch restores the compile with its traced graph: each traced once (Keras-TensorFlow's ``fit`` graph was
    traced again after every step's compile: [3, 4]). tests/backends/test_keras_jax.py: a third round after an
    option's first change, on Keras-on-JAX."""
    result = alternated_steps_and_fit(rounds=2, bind_momentum=False)
    assert result["weights"] < 1e-5 and result["history"] < 1e-5, result
    if result["traces"][0] != [None, None]:  # (None: Keras's step not compiled, as on Keras-on-torch: no traces)
        assert result["traces"] == [[1, 1], [1, 1]] and result["runs"] == [3, 3], result


def test_a_loop_making_new_losses_keeps_a_bounded_number_of_compiles():
    """Each new loss is a new compile of the model; the model keeps its last few besides the one in force
    (``_Compilations.KEPT``, each holding its loss) and lets the older ones go: a loop that makes a loss per
    step holds no more than these."""
    from unidl.backends.keras.backend import _Compilations

    x, y = np.ones((4, 6), np.float32), np.ones((4, 3), np.float32)
    with ud.use_backend("keras"):
        model = ud.nn.Linear(6, 3)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(_Compilations.KEPT + 2):
            loss = ud.nn.MSELoss()
            losses.append(weakref.ref(loss))
            ud.train_step(model, loss, optimizer, eager=True)(x, y)  # (eager: Keras's compile, nothing traced)
        del loss
        gc.collect()
        assert [ref() is not None for ref in losses] == [False] + [True] * (_Compilations.KEPT + 1)


def test_the_graphs_of_compiles_let_go_die():
    """A loop of ``ud.fit`` calls, each with a new loss (a new compile, its train step traced anew), holds the
    traced graphs of the compiles the model keeps only: those of the compiles it let go die with them. Keras's
    TensorFlow optimizer summed the gradients over the one replica through a ``tf.custom_gradient``, which left
    each traced graph in TensorFlow's global gradient registry for good (1.4 MB a call for a two-layer net)."""
    from unidl.backends.keras.backend import _Compilations

    x, y = np.ones((4, 6), np.float32), np.ones((4, 3), np.float32)
    with ud.use_backend("keras"):
        model = ud.nn.Linear(6, 3)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        traced = []  # per call, its compile's traced graphs (``tf.Graph``s), weakly
        for _ in range(_Compilations.KEPT + 3):
            ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=optimizer, batch_size=4, epochs=1, verbose=0)
            step = model.native._unidl_fit_graph[1]  # (Keras-on-TensorFlow: unidl's graph of Keras's train step)
            traced.append([weakref.ref(concrete.graph) for concrete in step.concrete_functions])
        gc.collect()
        assert all(len(graphs) == 1 for graphs in traced)
        alive = [graphs[0]() is not None for graphs in traced]
        assert alive == [False, False] + [True] * (_Compilations.KEPT + 1)


def test_predict_after_inputs_of_another_rank_and_the_native_call_keep_unidls_answers():
    """Keras's predict graph, traced again for an unknown rank after inputs of another rank (a sample (in,)
    after batches (N, in)), could not run a layer's forward (Keras's ``ValueError`` "Cannot iterate over a shape
    with unknown rank"): each rank has its own predict function, which gives ``torch.nn``'s outputs for a right
    input and unidl's ``ShapeMismatchError`` and its text for a wrong one. Keras's own call of the native model
    (its predict, its fit on torch) keeps unidl's error text, and a user's, as every other path gives it, not
    wrapped in "Exception encountered when calling NativeModel.call()" and the arguments."""
    import torch

    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Linear(4, 3))
        plain = torch.nn.Linear(4, 3)
        plain.load_state_dict({k.split(".", 1)[1]: torch.tensor(np.array(v)) for k, v in model.state_dict().items()})
        for n in (5, 7):
            ud.predict(model, np.ones((n, 4), np.float32))
        batches = model.native.predict_function
        sample = np.arange(4, dtype=np.float32)
        np.testing.assert_allclose(ud.predict(model, sample), plain(torch.tensor(sample)).detach().numpy(),
                                   rtol=2e-6, atol=1e-7)
        text = "Linear(in_features=4, out_features=3, bias=True) at '0' expected input of shape (N, 4), received "
        for bad in ((3,), (6, 5)):
            with pytest.raises(ud.ShapeMismatchError) as raised:
                ud.predict(model, np.ones(bad, np.float32))
            assert str(raised.value) == text + str(bad)
            with pytest.raises(ud.ShapeMismatchError) as raised:
                model.native(np.ones(bad, np.float32))
            assert str(raised.value) == text + str(bad)
        # batches after samples go back to Keras's predict graph of their rank (one for each rank)
        np.testing.assert_allclose(ud.predict(model, np.ones((9, 4), np.float32)),
                                   plain(torch.ones((9, 4))).detach().numpy(), rtol=2e-6, atol=1e-7)
        assert model.native.predict_function is batches

        class Failing(ud.nn.Module):
            def forward(self, x):
                raise RuntimeError("a bug of the user's")

        with pytest.raises(RuntimeError) as raised:  # a user's own error keeps its text too
            ud.predict(ud.nn.Sequential(Failing()), np.ones((2, 4), np.float32))
        assert str(raised.value) == "a bug of the user's"
