"""Keras-on-JAX's own jitted train step and unidl's value checks: run where Keras runs on JAX (the
``keras_framework("jax")`` marker; scripts/run-tests.sh's ``KERAS_BACKEND=jax`` run of the keras tests, which holds
this file), collected nowhere else."""

import numpy as np
import pytest

import unidl as ud
from tests.backends.test_traced_functions import _flat_state


@pytest.mark.every_keras_framework
@pytest.mark.keras_framework("jax")
def test_a_keras_on_jax_train_step_selects_no_write_that_its_failed_check_puts_back(monkeypatch):
    """Keras-on-JAX's train step gives back the weights, the optimizer's and the metrics' variables it was given
    where a check failed (keras/module.py ``_value_checked``; the forward's non-trainable writes stand where the
    checks before them held: test_traced_functions.py
    ``test_a_train_step_whose_label_is_out_of_range_keeps_the_forwards_writes_as_eagerly``), so the optimizer's
    writes in it are not selected one by one by the checks before them (``Backend.unless_a_check_failed``, which
    kept a ``jnp.where`` per optimizer variable: a two-layer Adam step's jaxpr 329 equations and 57 selections
    before, 377 and 81 with them): the step's jaxpr has fewer selections than with that per-write selection made
    (no variable given back, as in a ``ud.function``, whose state is not put back), and a step whose label is out
    of range still raises and changes no weight nor optimizer state."""
    import jax
    from keras.src.backend.jax import trainer as keras_trainer

    from unidl.backends.jax import ops as jax_ops

    real_jit = keras_trainer.jit
    found: list = []

    class Recorded:
        """A ``jax.jit`` of ``f`` whose first call also counts the primitives of ``f``'s jaxpr (the step's)."""

        def __init__(self, f, options):
            self.f, self.compiled = f, real_jit(f, **options)

        def __call__(self, *args, **kwargs):
            if not found:
                try:
                    found.append(_primitive_counts(jax.make_jaxpr(self.f)(*args, **kwargs).jaxpr))
                except Exception:  # (a function jitted with static arguments: not the step)
                    pass
            return self.compiled(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.compiled, name)

    def recording_jit(f=None, **options):
        if f is None:
            return lambda g: recording_jit(g, **options)
        return Recorded(f, options)

    def traced_step(selecting: bool):
        found.clear()
        with monkeypatch.context() as patches:
            patches.setattr(keras_trainer, "jit", recording_jit)  # (Keras's trainer's ``jax.jit``, bound at import)
            if selecting:
                patches.setattr(jax_ops, "variables_given_back", frozenset)  # (no variable put back: all selected)
            with ud.use_backend("keras"):
                ud.manual_seed(0)
                model = ud.nn.Sequential(ud.nn.Linear(6, 8), ud.nn.ReLU(), ud.nn.Linear(8, 3))
                optimizer = ud.optim.Adam(model.parameters(), lr=1e-2)
                step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer)
                x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
                step(x, np.array([0, 1, 2, 0]))
                weights, state = [ud.to_numpy(p).copy() for p in model.parameters()], _flat_state(optimizer)
                with pytest.raises(ud.IndexOutOfRangeError, match="found values from 0 to 7"):
                    step(x, np.array([0, 7, 2, 0]))
                after = [ud.to_numpy(p) for p in model.parameters()] + _flat_state(optimizer)
                for before, now in zip(weights + state, after):
                    np.testing.assert_array_equal(now, before)
        assert found, "no jitted step was traced"
        return found[0]

    plain, selecting = traced_step(False), traced_step(True)
    assert plain["select_n"] < selecting["select_n"], (plain, selecting)
    assert sum(plain.values()) < sum(selecting.values()), (plain, selecting)


def _primitive_counts(jaxpr) -> dict:
    """How many equations of each primitive ``jaxpr`` holds, those of its inner jaxprs (a ``cond``'s branches, a
    ``pjit``'s body) included."""
    counts: dict = {}
    for equation in jaxpr.eqns:
        counts[equation.primitive.name] = counts.get(equation.primitive.name, 0) + 1
        for parameter in equation.params.values():
            for inner in parameter if isinstance(parameter, (list, tuple)) else [parameter]:
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    for name, count in _primitive_counts(inner).items():
                        counts[name] = counts.get(name, 0) + count
    return counts


@pytest.mark.every_keras_framework
@pytest.mark.keras_framework("jax")
def test_failed_eager_train_steps_on_keras_on_jax_leave_no_arrays_alive():
    """Keras-on-JAX's eager train step whose forward raises the user's exception (a new one at each step, none
    kept) after a BatchNorm: six failed steps leave no more live arrays than one did (the abstract pass over the
    forward before the step, ``_gradients_of_used_variables``, was a ``jax.make_jaxpr`` the error aborted, whose
    trace stayed alive with its arrays: four more live arrays per failed step), as the jax backend's step."""
    import gc

    import jax

    from tests.backends.test_traced_functions import _RaisingAfterANorm

    def live() -> int:
        gc.collect()
        return len(jax.live_arrays())

    def failed_steps(count):
        for _ in range(count):
            model.error = ValueError("a new error at each step")
            with pytest.raises(ValueError):
                step(x * 2, labels)
        model.error = None
        step(x, labels)

    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model = _RaisingAfterANorm()
        step, x, labels = _eager_step_that_trained_once(model)
        failed_steps(1)  # (whatever a first failure builds once)
        after_one = live()
        failed_steps(6)
        assert live() <= after_one, (after_one, live())


def _eager_step_that_trained_once(model):
    """``(step, x, labels)``: an eager SGD cross-entropy train step of ``model`` (3 features, 2 classes) on a batch of
    4, run once on that batch: where the tests of failed eager steps here start."""
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 1])
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=True)
    step(x, labels)
    return step, x, labels


class _ReadingItsActivations(ud.nn.Module):
    """A BatchNorm1d and a Linear, then (where ``read``) the sum of the activations read in Python, the error of
    that read wrapped in the user's own (``raise ... from``)."""

    def __init__(self):
        super().__init__()
        self.bn, self.head, self.read = ud.nn.BatchNorm1d(3), ud.nn.Linear(3, 2), False

    def forward(self, x):
        h = self.head(self.bn(x))
        if self.read:
            try:
                float(ud.ops.sum(h))
            except Exception as error:
                raise RuntimeError("could not read the activations") from error
        return h


@pytest.mark.every_keras_framework
@pytest.mark.keras_framework("jax")
def test_a_wrapped_traced_value_error_in_keras_on_jax_eager_step_changes_nothing():
    """Keras-on-JAX's eager train step whose forward reads a differentiated value in Python, the tracer's error
    wrapped in the user's own (``raise RuntimeError(...) from error``): the abstract pass before the step raises
    it at once, the step's own rule for Python control flow on a value (``GraphConstructError``), and the step
    changes nothing (the pass matched the tracer's error as the outer exception only: a wrapped one was taken for
    the user's own, the step ran and kept what its BatchNorm wrote)."""
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model = _ReadingItsActivations()
        step, x, labels = _eager_step_that_trained_once(model)
        before = {key: ud.to_numpy(value).copy() for key, value in model.state_dict().items()}
        model.read = True
        with pytest.raises(ud.GraphConstructError, match="uses the value of a tensor in Python control flow"):
            step(x * 2, labels)
        after = {key: ud.to_numpy(value) for key, value in model.state_dict().items()}
        assert [key for key in after if not np.array_equal(after[key], before[key])] == []


class _RaisingWithANormOutside(ud.nn.Module):
    """A Linear over a BatchNorm1d held in a plain list (outside the model's tree, its statistics written outside
    the model's state), the forward raising ``error`` at its run number ``raise_at`` (counted in ``runs``)."""

    def __init__(self):
        super().__init__()
        self.head, self.outside = ud.nn.Linear(3, 2), [ud.nn.BatchNorm1d(3)]
        self.runs, self.raise_at, self.error = 0, None, None

    def forward(self, x):
        self.runs += 1
        if self.runs == self.raise_at:
            raise self.error
        return self.head(self.outside[0](x))


@pytest.mark.every_keras_framework
@pytest.mark.keras_framework("jax")
@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, ValueError])
def test_an_error_in_keras_on_jax_steps_analysis_pass_is_raised_and_changes_nothing(eager, error):
    """Keras-on-JAX's train step whose forward raises once, in its first run of the step (the abstract pass of
    ``_gradients_of_used_variables``), after a new BatchNorm was put outside the model's tree (its writes: the step
    traced again, ``StateOutsideTheModel``): the step raises the error and changes no weight, as torch's (the
    error was lost there: the step traced again over the new state trained without it). A ``KeyboardInterrupt`` is
    raised at once, with that one run of the forward, as torch's, where the forward's own run in the step came
    first (a Ctrl-C a step late). A next step trains, with the new BatchNorm's statistics threaded."""
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    y = np.random.default_rng(2).standard_normal((4, 2)).astype(np.float32)
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model = _RaisingWithANormOutside()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=eager)
        step(x, y)
        if error is KeyboardInterrupt:  # (no new state: raised at once all the same)
            model.raise_at, model.error, start = model.runs + 1, error(), model.runs
            with pytest.raises(KeyboardInterrupt):
                step(np.resize(x, (5, 3)), np.resize(y, (5, 2)))  # (a new batch size: a jitted step traced again)
            assert model.runs - start == 1
        model.outside[0] = ud.nn.BatchNorm1d(3)
        weight = ud.to_numpy(model.head.weight).copy()
        model.raise_at, model.error, start = model.runs + 1, error(), model.runs
        with pytest.raises(error):
            step(np.resize(x, (6, 3)), np.resize(y, (6, 2)))
        if error is KeyboardInterrupt:
            assert model.runs - start == 1
        assert np.array_equal(ud.to_numpy(model.head.weight), weight)
        assert np.array_equal(ud.to_numpy(model.outside[0].running_mean), np.zeros(3, np.float32))
        model.raise_at = None
        step(np.resize(x, (6, 3)), np.resize(y, (6, 2)))
        assert not np.array_equal(ud.to_numpy(model.head.weight), weight)
        assert not np.array_equal(ud.to_numpy(model.outside[0].running_mean), np.zeros(3, np.float32))


@pytest.mark.every_keras_framework
@pytest.mark.keras_framework("jax")
def test_a_keras_on_jax_fit_after_load_checkpoint_compiles_its_train_step_once(tmp_path, caplog):
    """The weights and optimizer slots ``load_checkpoint`` hands the variables (the file's arrays, adopted) are placed
    as Keras places its own variables' values, uncommitted (jax backend ``keras_donated_tensor``): committed ones
    made the resumed fit's jitted train step lower and compile twice (the mixed placement, then its outputs' all
    committed one), seconds of XLA's CPU compiler per resume; the resumed run's weights are those of the same fit on
    a model that trained on without the round trip."""
    import logging

    import jax

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32)

    def trained(model=None):
        ud.manual_seed(0)
        model = model or ud.nn.Sequential(ud.nn.Linear(4, 8), ud.nn.ReLU(), ud.nn.Linear(8, 3))
        return model, ud.optim.Adam(model.parameters(), lr=1e-2)

    def fit(model, optimizer):
        loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=8)
        ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=1, verbose=0)

    with ud.use_backend("keras"):
        model, optimizer = trained()
        fit(model, optimizer)
        ud.save_checkpoint(tmp_path, model, optimizer)
        resumed, resumed_optimizer = trained()
        ud.load_checkpoint(tmp_path, resumed, resumed_optimizer)
        jax.config.update("jax_log_compiles", True)
        try:
            with caplog.at_level(logging.WARNING):
                fit(resumed, resumed_optimizer)
        finally:
            jax.config.update("jax_log_compiles", False)
        fit(model, optimizer)
        compiled = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]
        assert compiled.count("jit(checked_step)") == 1, compiled
        for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items(), strict=True):
            np.testing.assert_array_equal(ud.to_numpy(a), ud.to_numpy(b), err_msg=name)
