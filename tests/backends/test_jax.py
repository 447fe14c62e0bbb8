"""The jax backend's own rules: state written back after compiled steps, a bounded set of traces, unidl's
errors for Python control flow on traced values, and the install hint."""

import functools
import json
import warnings

import numpy as np
import pytest

import unidl as ud
from unidl import backends
from unidl.errors import BackendNotInstalledError, GraphConstructError, RetraceWarning
from unidl.testing import max_relative_difference

from tests.helpers import alive_after_training


class _ValueBranch(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(3, 1)

    def forward(self, x):
        y = self.fc(x)
        return y * 2.0 if ud.ops.sum(x) > 0 else -y


def test_train_step_writes_state_back_and_traces_once_per_shape(rng):
    with ud.use_backend("jax"):
        model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.BatchNorm1d(4), ud.nn.Dropout(0.2), ud.nn.Linear(4, 1))
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.Adam(model.parameters(), lr=1e-2))
        x, y = rng.standard_normal((10, 3)).astype(np.float32), rng.standard_normal((10, 1)).astype(np.float32)
        before = model.state_dict()
        for n in (8, 2, 8, 2, 8):  # a full and a smaller last batch, as fit gives
            step(x[:n], y[:n])
        after = model.state_dict()
        assert step.trace_count == 2
        assert all(not np.array_equal(before[k], after[k]) for k in before if "num_batches" not in k)
        key = np.array(ud.config.backend().generator().state.value)  # a copy: the step donates the array itself
        step(x[:8], y[:8])  # the dropout key moved on: new masks every step
        assert not np.array_equal(key, np.asarray(ud.config.backend().generator().state.value))


def test_a_step_compiles_once_not_again_for_the_values_it_wrote_back(rng, caplog):
    """jit keys its cache on whether arrays are committed to a device: variables start committed, as the
    step's outputs are, so the second call reuses the first compilation (it once compiled twice). A step that
    donates its variables' buffers is compiled ahead of its first call, which reuses that compilation."""
    import logging

    import jax

    with ud.use_backend("jax"):
        model = ud.nn.Sequential(ud.nn.Linear(3, 32), ud.nn.ReLU(), ud.nn.Linear(32, 1))  # (donated: 16+ elements)
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.Adam(model.parameters(), lr=1e-2))
        x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)
        with jax.log_compiles(), caplog.at_level(logging.DEBUG, logger="jax"):
            step(x, y)
            first = [r.getMessage() for r in caplog.records if "Compiling jit(flat)" in r.getMessage()]
            caplog.clear()
            step(x, y)
            step(x, y)
        assert len(first) == 1 and step.trace_count == 1, first  # (traced ahead too: once)
        assert not [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]


def test_python_branch_on_a_value_in_a_train_step_is_unidls_error(rng):
    with ud.use_backend("jax"):
        model = _ValueBranch()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
        before = model.state_dict()
        with pytest.raises(GraphConstructError, match=r"forward of _ValueBranch.*ud\.ops\.where.*ud\.ops\.scan"):
            step(np.ones((2, 3), np.float32), np.zeros((2, 1), np.float32))
        assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_function_with_a_python_branch_runs_eagerly_with_one_warning(rng):
    with ud.use_backend("jax"):
        model = _ValueBranch()
        compiled = ud.function(lambda x: model(x))
        x = np.abs(rng.standard_normal((2, 3))).astype(np.float32)
        with pytest.warns(RetraceWarning, match="runs eagerly"):
            first = ud.to_numpy(compiled(x))
        assert max_relative_difference(first, 2 * ud.to_numpy(model.fc(ud.tensor(x)))) < 1e-6
        assert max_relative_difference(ud.to_numpy(compiled(-x)), -ud.to_numpy(model.fc(ud.tensor(-x)))) < 1e-6
        assert compiled.trace_count is None


def test_function_threads_variables_it_updates(rng):
    with ud.use_backend("jax"):
        layer = ud.nn.Linear(3, 2)
        optimizer = ud.optim.SGD(layer.parameters(), lr=0.5)

        @ud.function
        def step(x):
            loss, grads = ud.value_and_grad(lambda: ud.ops.sum(layer(x)), layer.parameters())()
            optimizer.apply(grads)
            return loss

        x = rng.standard_normal((4, 3)).astype(np.float32)
        bias = layer.state_dict()["bias"]
        step(x)
        step(x)
        assert step.trace_count == 1
        np.testing.assert_allclose(layer.state_dict()["bias"], bias - 2 * 0.5 * 4, rtol=1e-6)
        assert optimizer.state_dict()["step"] == 2


def test_native_module_is_a_pure_function_of_its_params(rng):
    import jax

    with ud.use_backend("jax"):
        model = ud.models.TwoLayerNet(3, 5, 2)
        native = model.native
        x = ud.tensor(rng.standard_normal((4, 3)))
        grads = jax.grad(lambda p: native.apply(p, x).sum())(native.params)
        assert set(grads) == set(model.state_dict())
        np.testing.assert_allclose(np.asarray(native.apply(native.params, x)), ud.to_numpy(model(x)), rtol=1e-6)


def test_native_apply_with_dropout_under_jit_leaks_nothing_and_draws_from_its_rng():
    """``jax.jit(model.native.apply)`` of a model holding a Dropout in train mode leaves the backend's dropout key
    as it was (a tracer left there made every later eager forward raise JAX's UnexpectedTracerError), a BatchNorm's
    statistics too, and draws its masks from ``rng`` where given: a new key, new masks; the same, the same."""
    import jax

    with ud.use_backend("jax"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Linear(4, 64), ud.nn.BatchNorm1d(64), ud.nn.Dropout(0.5), ud.nn.Linear(64, 1))
        before = model.state_dict()
        x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
        apply, params = jax.jit(model.native.apply), model.native.params
        first, again = (np.asarray(apply(params, x, jax.random.PRNGKey(seed))) for seed in (1, 1))
        other = np.asarray(apply(params, x, jax.random.PRNGKey(2)))
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)
        assert all(np.array_equal(value, before[key]) for key, value in model.state_dict().items())
        assert ud.to_numpy(model(x)).shape == (2, 1)  # an eager forward afterwards


def test_missing_jax_names_the_extra(monkeypatch):
    monkeypatch.setattr(backends, "missing_modules", lambda name: ["jax"] if name == "jax" else [])
    monkeypatch.setattr(backends, "_loaded", {k: v for k, v in backends._loaded.items() if k != "jax"})
    with pytest.raises(BackendNotInstalledError, match=r"backend 'jax' needs jax.*pip install 'unidl\[jax\]'"):
        backends.load("jax")


def test_arrays_given_to_the_backend_are_copied_not_shared():
    """On the CPU jax.device_put shares a 64-byte aligned NumPy array; a caller's later edit of an array it
    gave unidl (a kept state dict, a refilled batch buffer) must never reach the model or the tensor. The copy is
    NumPy's, no XLA program: a jax ``copy`` compiled per new shape at whichever call first met an aligned input, so
    that a test counting a step's compiles failed at random."""
    import jax

    with ud.use_backend("jax"):  # (the model and the tensors too, not only the parameter)
        raw = np.empty(512 * 512 * 4 + 64, np.uint8)
        start = -raw.ctypes.data % 64
        given = raw[start:start + 512 * 512 * 4].view(np.float32).reshape(512, 512)  # 64-byte aligned: shared
        given[:] = 0.5
        assert given.ctypes.data % 64 == 0
        model = ud.nn.Linear(512, 512)
        model.load_state_dict({"weight": given, "bias": np.zeros(512, np.float32)})
        lowered = []

        def listen(event, duration, **kwargs):
            if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
                lowered.append(event)

        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            tensor = ud.tensor(given)
            flags = ud.tensor(given[:300].view(np.bool_))  # (booleans: kept as they are, a new shape)
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
        assert lowered == []
        expected = given[:300].view(np.bool_).copy()
        given[1, 0] = 7.0
        np.testing.assert_array_equal(np.asarray(flags), expected)
        variable = backends.load("jax").parameter(given)
        given[0, 0] = 123.0
        assert float(model.state_dict()["weight"][0, 0]) == 0.5
        assert float(tensor[0, 0]) == 0.5
        assert float(np.asarray(variable.value)[0, 0]) == 0.5


def test_manual_seed_seeds_jax_under_a_device_jax_does_not_see(monkeypatch):
    """``ud.manual_seed`` seeds every loaded backend: once XLA started it places JAX's key on unidl's device, and one
    JAX does not see (UNIDL_DEVICE=cuda for torch, JAX's CPU-only) leaves the key NumPy's, for the first draw there
    to name the device, rather than refusing the seed."""
    with ud.use_backend("jax"):
        ud.tensor(np.ones(2))  # (XLA started)
        monkeypatch.setenv("UNIDL_DEVICE", "cuda:63")
        ud.manual_seed(3)
        assert isinstance(backends.load("jax").generator().state.value, np.ndarray)


def test_the_guards_finite_check_finds_one_non_finite_element_anywhere():
    """The step's finite flag reads large gradients through a matrix-vector product with zeros (faster on XLA's CPU
    than one reduction): one inf, -inf or NaN at any place of a matrix or a conv kernel must still turn it False,
    and finite values too large to sum (3e38) must not. Oracle: NumPy's ``isfinite``."""
    import jax

    from unidl.backends.jax.optimizer import all_finite

    rng = np.random.default_rng(0)
    check = jax.jit(all_finite)
    for shape in ((100, 1000), (64, 8, 3, 3), (5000, 1), (7, 3)):  # matrix-vector (the first three), reduction
        base = rng.standard_normal(shape).astype(np.float32)
        huge = np.full(shape, 3e38, np.float32)
        assert bool(check([base, huge, None])) and np.isfinite(huge).all()
        for bad in (np.inf, -np.inf, np.nan):
            for index in (0, base.size - 1, int(rng.integers(base.size))):
                values = base.copy()
                values.flat[index] = bad
                assert bool(check([np.float32(1.0), values])) == bool(np.isfinite(values).all()) is False, (
                    shape, bad, index)
    assert not bool(check([np.float32(np.nan), np.ones((100, 1000), np.float32)]))


def test_a_step_built_again_is_the_same_program_to_the_compilation_cache(rng):
    """The same model and optimizer built twice (a second run, a second process) compile to the same XLA program,
    so that JAX's persistent compilation cache (enabled for the tests in tests/conftest.py) serves the second: the
    in-graph checks' error codes are numbered per trace, not from checkify's process-wide counter."""
    import jax
    import jax.monitoring

    assert jax.config.jax_compilation_cache_dir, "tests/conftest.py enables JAX's persistent compilation cache"
    hits = []
    x, labels = rng.standard_normal((6, 5)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])

    def listener(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    with ud.use_backend("jax"):
        jax.monitoring.register_event_listener(listener)
        try:
            for round_ in range(3):  # (round 0 may find an entry another test wrote; round 2 must find round 1's)
                hits.clear()
                model = ud.nn.Sequential(ud.nn.Linear(5, 7), ud.nn.ReLU(), ud.nn.Linear(7, 3))
                step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.Adam(model.parameters(), lr=1e-3))
                step(x, labels)  # CrossEntropyLoss checks its labels inside the step (a checkify check)
        finally:
            jax.monitoring.unregister_event_listener(listener)
    assert hits, "the train step built again was compiled again instead of served by the cache"


class _WithCallback(ud.nn.Module):
    """A forward with an effect (``jax.debug.callback``): jax runs every call of its step through its Python."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(3, 32)

    def forward(self, x):
        import jax

        jax.debug.callback(lambda: None)
        return self.fc(x)


@pytest.mark.parametrize("model_class, calls_before", [(lambda: ud.nn.Linear(3, 32), 0), (_WithCallback, 2)],
                         ids=["first call", "third call of a program with effects"])
def test_a_ctrl_c_in_jaxs_python_after_a_donating_step_ran_keeps_the_steps_outputs(rng, monkeypatch, model_class,
                                                                                    calls_before):
    """A call that misses jaxlib's C++ cache (a compiled step's first) or of a program with effects (every call) runs
    jax's Python after XLA has consumed the donated parameter buffers (``_get_fastpath_data`` runs there). A real
    SIGINT sent from there, at that call, comes out as ``KeyboardInterrupt`` once the step's outputs are written back:
    the parameters are those of one SGD step written out in NumPy (not deleted arrays), and train on."""
    import signal

    from jax._src import pjit

    runs, fastpath_data = [], pjit._get_fastpath_data

    def ctrl_c_there(executable, *args, **kwargs):
        if getattr(getattr(executable, "unsafe_call", None), "name", None) == "jit(flat)":  # the step's program ran
            runs.append(executable)
            if len(runs) == 1:
                signal.raise_signal(signal.SIGINT)
        return fastpath_data(executable, *args, **kwargs)

    x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 32)).astype(np.float32)
    with ud.use_backend("jax"):
        model = model_class()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
        for _ in range(calls_before):
            step(x, y)
        weight, bias = (np.array(ud.to_numpy(value)) for value in model.state_dict().values())
        monkeypatch.setattr(pjit, "_get_fastpath_data", ctrl_c_there)
        with pytest.raises(KeyboardInterrupt):
            step(x, y)
        assert len(runs) == 1  # the SIGINT was sent at that call, from jax's Python
        monkeypatch.undo()
        after = [np.array(ud.to_numpy(value)) for value in model.state_dict().values()]
        grad_out = 2 * (x @ weight.T + bias - y) / y.size  # MSE's gradient with respect to the outputs
        np.testing.assert_allclose(after[0], weight - 0.1 * grad_out.T @ x, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(after[1], bias - 0.1 * grad_out.sum(axis=0), rtol=1e-5, atol=1e-7)
        assert np.isfinite(float(step(x, y)))


def test_a_model_trained_by_a_program_with_effects_is_freed(rng):
    """A compiled step whose calls are held against Ctrl-C (``StatefulJit._held_call``: every call of a program
    with effects, a program's first calls otherwise, which tests/test_training.py checks on every backend) kept a
    bound method of jaxlib's jitted function in its cache entry, which Python's garbage collector does not see
    into: the model, its optimizer and its loss were never freed."""
    x, y = rng.standard_normal((10, 3)).astype(np.float32), rng.standard_normal((10, 32)).astype(np.float32)
    with ud.use_backend("jax"):
        assert alive_after_training(_WithCallback, x, y) == []


def test_an_eager_composite_op_is_one_compiled_program_and_inline_under_jit(caplog):
    """Called eagerly, batch norm (a dozen primitives) compiles one program, named after the op, and runs the
    same values as its body traced inline; under ``jax.jit`` it is traced inline (no nested program), so compiled
    steps are unchanged. Each primitive compiled on its own before."""
    import logging

    import jax

    from unidl.backends.jax import backend  # noqa: F401  (JAX with float64, as the backend runs it)
    from unidl.backends.jax import ops

    x = np.random.default_rng(0).normal(size=(3, 5, 7, 2))  # a shape no other test uses: nothing cached
    statistics = np.zeros(5), np.ones(5)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            eager = ops.batch_norm(x, *statistics, training=True)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]
    assert compiled == ["jit(batch_norm)"], compiled
    body = jax.make_jaxpr(lambda x: ops.batch_norm(x, *statistics, training=True))(x).jaxpr  # (a staging trace)
    assert body.eqns and not [e for e in body.eqns if e.primitive.name in ("jit", "pjit")], body
    inline = jax.jit(lambda x: ops.batch_norm(x, *statistics, training=True))
    for got, want in zip(eager, inline(x), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)


def _compiled_programs(caplog, run) -> list[str]:
    """The names of the XLA programs compiled while ``run()`` ran (``jax_log_compiles``)."""
    import logging

    import jax

    caplog.clear()
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            run()
    finally:
        jax.config.update("jax_log_compiles", False)
    return [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]


EAGER_UPDATES = {  # (optimizer, its train step's accumulate): the rules and options whose updates differ
    "adam": (lambda p: ud.optim.Adam(p, lr=1e-3), 1),
    "sgd": (lambda p: ud.optim.SGD(p, lr=1e-2), 1),
    "momentum, accumulate=2": (lambda p: ud.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True), 2),
    "adamw, clip_grad_norm": (lambda p: ud.optim.AdamW(p, lr=1e-3, clip_grad_norm=0.5), 1),
    "rmsprop, accumulate=2": (lambda p: ud.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True), 2),
}


def test_an_eager_steps_optimizer_update_is_one_compiled_program(caplog):
    """``train_step(eager=True)`` runs its optimizer's update (the rule's ``update()``, the guard, clipping, an
    accumulation window) as one compiled program: its first step compiles one program besides the forward's and
    the gradient's, its later steps none, a new learning rate none (a variable the program reads), an option's
    first change one (bound from then on, as in a compiled step) and its later changes none. Each element-wise op
    of the rule compiled on its own for each parameter shape before (35 programs for Adam's first step here; 59
    of the 74 of a two-layer Adam step in a fresh process). The weights follow those of the compiled step (one
    program for the whole step) to float32's rounding (XLA fuses a multiply and a subtract into one FMA in either
    program)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 37)).astype(np.float32), rng.standard_normal((8, 11)).astype(np.float32)
    with ud.use_backend("jax"):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(37, 23, 11)  # shapes no other test uses: no eager op of them cached
        start = {k: ud.to_numpy(v).copy() for k, v in model.state_dict().items()}
        # the forward and its gradient compiled once, by a step that updates nothing (its update one program too)
        warm = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.0), eager=True)
        assert len(_compiled_programs(caplog, lambda: warm(x, y))) > 1
        for name, (make, accumulate) in EAGER_UPDATES.items():
            runs = {}
            for eager in (True, False):
                model.load_state_dict(start)
                optimizer = make(model.parameters())
                step = ud.train_step(model, ud.nn.MSELoss(), optimizer, eager=eager, accumulate=accumulate)
                if eager:
                    assert len(_compiled_programs(caplog, lambda: step(x, y))) == 1, name
                    assert _compiled_programs(caplog, lambda: step(x, y)) == [], name
                    optimizer.lr = optimizer.lr / 2
                    assert _compiled_programs(caplog, lambda: [step(x, y) for _ in range(2)]) == [], name
                else:
                    for _ in range(2):
                        step(x, y)
                    optimizer.lr = optimizer.lr / 2
                    for _ in range(2):
                        step(x, y)
                runs[eager] = ({k: ud.to_numpy(v) for k, v in model.state_dict().items()}, optimizer.state_dict())
            (weights, state), (compiled_weights, compiled_state) = runs[True], runs[False]
            assert state["step"] == compiled_state["step"] == 4 // accumulate, name
            for key, value in weights.items():
                assert not np.array_equal(value, start[key]), (name, key)
                assert max_relative_difference(value, compiled_weights[key]) < 1e-6, (name, key)
        adam = ud.optim.Adam(model.parameters(), lr=1e-3)
        step = ud.train_step(model, ud.nn.MSELoss(), adam, eager=True)
        step(x, y)
        adam.param_groups[0]["betas"] = (0.8, 0.99)  # the first change: read from a variable from now on
        assert len(_compiled_programs(caplog, lambda: step(x, y))) == 1
        adam.param_groups[0]["betas"] = (0.7, 0.9)
        assert _compiled_programs(caplog, lambda: step(x, y)) == []
        assert adam.state_dict()["step"] == 3


class _ValueBranchingSGD(ud.optim.SGD):
    """A user's rule that reads a gradient's value in Python (``jax.jit`` cannot trace it)."""

    def update(self, param, grad, slots, lr, step, ops):
        if float(ud.to_numpy(ops.sum(grad))) > 0:
            return lr * grad, {}
        return 2 * lr * grad, {}


def test_a_users_rule_runs_op_by_op_in_an_eager_step():
    """A user's ``update()`` (``builtin_rule()`` None) runs op by op, its Python at every step, through ``apply`` and
    an eager step, as on torch and TensorFlow: an ``if`` on a tensor's value works, without a warning (compiled, as
    built-in rules are, ``apply`` raised JAX's ``ConcretizationTypeError``); its branches give their own steps, NumPy
    the oracle."""
    grads = [np.full((2, 3), 1.0, np.float32), np.full((2,), -1.0, np.float32)]
    with ud.use_backend("jax"), warnings.catch_warnings():
        warnings.simplefilter("error", RetraceWarning)
        model = ud.nn.Linear(3, 2)
        start = [ud.to_numpy(p).copy() for p in model.parameters()]
        optimizer = _ValueBranchingSGD(model.parameters(), lr=0.1)
        optimizer.apply([ud.tensor(g) for g in grads])
        optimizer.apply([ud.tensor(g) for g in grads])
        for before, after, g, rate in zip(start, model.parameters(), grads, (0.1, 0.2)):
            np.testing.assert_allclose(ud.to_numpy(after), before - 2 * rate * g, rtol=1e-6)
        x = np.ones((4, 3), np.float32)
        step = ud.train_step(model, GradientTimes(), _ValueBranchingSGD(model.parameters(), lr=0.1), eager=True)
        before = [ud.to_numpy(p).copy() for p in model.parameters()]
        step(x, np.ones((4, 2), np.float32))
        # the loss sum(output * y): the weight's gradient y^T x (4 > 0, lr), the bias's the column sums of y (4 > 0)
        np.testing.assert_allclose(ud.to_numpy(model.weight), before[0] - 0.1 * 4.0, rtol=1e-6)
        np.testing.assert_allclose(ud.to_numpy(model.bias), before[1] - 0.1 * 4.0, rtol=1e-6)


class GradientTimes(ud.nn.Module):
    """The loss ``sum(output * y)``."""

    def forward(self, output, y):
        return ud.ops.sum(output * y)


def test_an_eager_value_check_is_one_program(caplog):
    """Called eagerly, ``check_in_range`` (BCE's probabilities, a Gaussian NLL's variances) and ``check_index``
    (labels, embedding and gather indices) compile one program each for a new shape, where their primitives compiled
    one each (four and two, for every eager loss call of a new shape), and raise the errors they raised."""
    import logging

    import jax

    from unidl.backends.jax import backend  # noqa: F401  (JAX with float64, as the backend runs it)
    from unidl.backends.jax import ops
    from unidl.errors import IndexOutOfRangeError, ValueOutOfRangeError

    values = jax.device_put(np.linspace(-0.5, 1.5, 3 * 7 * 11).reshape(3, 7, 11))  # shapes no other test uses
    indices = jax.device_put(np.arange(3 * 7 * 11).reshape(3, 7, 11))
    outside = int(np.sum((np.asarray(values) < 0) | (np.asarray(values) > 1)))
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            with pytest.raises(ValueOutOfRangeError, match=rf"^p must lie in \[0, 1\]; found {outside} value\(s\) "
                                                           r"outside$"):
                ops.check_in_range(values, 0, 1, "p")
            with pytest.raises(IndexOutOfRangeError, match=r"^labels must lie in \[0, 200\); found values from 0 to "
                                                           r"230$"):
                ops.check_index(indices, 200, "labels")
            assert ops.check_in_range(values, -0.5, 1.5) is values and ops.check_index(indices, 231) is indices
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]
    assert compiled == ["jit(_count_outside_compiled)", "jit(_extremes)", "jit(_count_outside_compiled)"], compiled


def test_an_eager_composite_ops_options_keep_their_meaning():
    """Options of an op compiled when eager (``unidl/backends/jax/eager.py``) that a cached trace could confuse:
    -0.0 after 0.0 (equal, so one cached trace would serve both: ``clip``'s bound is the value it gives), and a
    call with too many arguments is Python's ``TypeError`` (not cut to the parameters the op has)."""
    from unidl.backends.jax import backend  # noqa: F401
    from unidl.backends.jax import ops

    x = np.array([-1.0, 1.0])
    assert np.signbit(np.asarray(ops.clip(x, 0.0))[0]) == np.signbit(0.0)
    assert np.signbit(np.asarray(ops.clip(x, -0.0))[0]) == np.signbit(-0.0)
    assert np.signbit(np.asarray(ops.clip(x, 0.0))[0]) == np.signbit(0.0)
    with pytest.raises(TypeError):
        ops.softmax(x, 0, 2)


def test_an_eager_spatial_composite_is_one_compiled_program_with_the_values_of_its_ops(caplog):
    """Called eagerly, a composite of ``unidl.spatial_ops`` (``Backend.composite``) compiles one program, named after
    it, where each of its dozens of registry ops compiled and ran on its own before: max pooling with indices in
    ceil mode. Its values, indices and input gradient are those of its body run op by op, bit for bit (a max
    pooling selects; the upstream gradient's eighths sum exactly). Its options stay checked as given: a float
    stride after an int one is still refused (``(2.0, 2) == (2, 2)`` in Python, where a cached trace keyed on it
    would serve both), and a list is named as the list it was."""
    import logging

    import jax

    from unidl import spatial_ops

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 11))  # a shape no other test uses: nothing cached
    x[0, 0, :3, :3], x[1, 2, 4, 5:7] = -np.inf, 1.5  # a window of -inf, a tie
    r = rng.integers(-8, 9, (2, 3, 5, 6)) / 8
    with ud.use_backend("jax"):
        x = ud.tensor(x, "float64")
        jax.config.update("jax_log_compiles", True)
        try:
            with caplog.at_level(logging.WARNING):
                values, indices = ud.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
        finally:
            jax.config.update("jax_log_compiles", False)
        compiled = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]
        assert compiled == ["jit(max_pool2d_with_indices)"], compiled
        op_by_op = spatial_ops.max_pool2d_with_indices.__wrapped__  # the body, each op dispatched on its own
        for got, want in zip((values, indices), op_by_op(x, (3, 3), (2, 2), (1, 1), True), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        gradients = [jax.grad(lambda x, pool=pool: jax.numpy.sum(pool(x, (3, 3), (2, 2), (1, 1), True)[0] * r))(x)
                     for pool in (spatial_ops.max_pool2d_with_indices, op_by_op)]
        np.testing.assert_array_equal(np.asarray(gradients[0]), np.asarray(gradients[1]))
        weight = ud.tensor(rng.normal(size=(3, 2, 2, 2)), "float64")
        assert ud.ops.conv_transpose2d(x, weight, stride=(2, 2)).shape == (2, 2, 18, 22)
        with pytest.raises(ValueError, match=r"stride .* got \(2\.0, 2\)"):
            ud.ops.conv_transpose2d(x, weight, stride=(2.0, 2))
        with pytest.raises(ValueError, match=r"got \[1, 2, 3\]"):
            ud.ops.adaptive_max_pool2d(x, [1, 2, 3])


_FIRST_DRAW = r"""
import json, numpy as np, unidl as ud
ud.set_backend("jax")
ud.manual_seed(5)
from jax._src import xla_bridge
started = xla_bridge.backends_are_initialized()
import jax
from unidl.backends.jax.backend import KeyStream
same = all(np.array_equal(KeyStream._key(s), np.asarray(jax.random.PRNGKey(s))) for s in (0, 5, 2**40 + 7, -3))
m = ud.nn.Dropout(0.5)
f = ud.function(lambda x: m(x) * 2)
x = ud.tensor(np.ones((4, 8), np.float32))
masks = [ud.to_numpy(f(x)).tolist() for _ in range(2)] + [ud.to_numpy(m(x)).tolist()]
print(json.dumps({"started": started, "same": same, "masks": masks}))
"""

_STATE_ON_ANOTHER_DEVICE = r"""
import json, os
import jax
import numpy as np
import unidl as ud

cpus = jax.devices("cpu")
x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
y = np.array([0, 1, 2, 0, 1, 2])


class Outside(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 3)
        self.held = [ud.nn.BatchNorm1d(3)]  # a plain list: outside the module's tree

    def forward(self, x):
        return self.held[0](self.fc(x))


def run(default):
    jax.config.update("jax_default_device", cpus[default])  # where jnp.asarray and PRNGKey put what they make
    ud.manual_seed(0)
    model = ud.nn.Sequential(ud.nn.Linear(4, 8), ud.nn.Dropout(0.3), ud.nn.Linear(8, 3))
    losses = []
    for name, options in (("SGD", {}), ("Adam", {}), ("SGD", {"precision": "16-mixed"}), ("SGD", {"accumulate": 2})):
        optimizer = getattr(ud.optim, name)(model.parameters(), lr=0.1)
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, **options)
        losses += [float(step(x, y)), float(step(x, y))]
        optimizer.load_state_dict(optimizer.state_dict())  # slots made anew, where JAX's default device is
        losses.append(float(step(x, y)))
        ud.manual_seed(1)  # the generator's key made anew
        losses.append(float(step(x, y)))
    outside = Outside()  # a new step over a layer held outside the model: traced again over the longer state,
    optimizer = ud.optim.SGD(outside.parameters(), lr=0.1, momentum=0.9)  # then its slots moved
    losses.append(float(ud.train_step(outside, ud.nn.CrossEntropyLoss(), optimizer)(x, y)))
    optimizer.load_state_dict(optimizer.state_dict())
    losses.append(float(ud.train_step(outside, ud.nn.CrossEntropyLoss(), optimizer)(x, y)))
    # eager steps (each op on its own): the same state, made where JAX's default device is, and the key's draws
    for name, options in (("Adam", {}), ("SGD", {"precision": "16-mixed", "accumulate": 2})):
        optimizer = getattr(ud.optim, name)(model.parameters(), lr=0.1)
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, eager=True, **options)
        losses += [float(step(x, y)), float(step(x, y))]
        optimizer.load_state_dict(optimizer.state_dict())
        losses.append(float(step(x, y)))
    ud.manual_seed(2)
    model.train()
    losses.append(float(np.asarray(model(x)).sum()))  # an eager forward's dropout
    # a batch placed on the other device by the caller: moved to the parameters', compiled and eager, as torch does
    elsewhere = jax.device_put(x, cpus[1 - default])
    for eager in (False, True):
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        losses.append(float(ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, eager=eager)(elsewhere, y)))
    losses.append(float(ud.predict(model, elsewhere).sum()))
    ud.manual_seed(3)  # an LSTM's lengths on the other device (PyTorch's packed sequences take them on the CPU)
    lstm = ud.nn.LSTM(4, 5, batch_first=True)
    lengths = jax.device_put(np.array([3, 1]), cpus[1 - default])
    losses.append(float(np.asarray(lstm(x.reshape(2, 3, 4), lengths=lengths)[0]).sum()))
    devices = sorted({str(d) for p in model.parameters() for d in p.value.devices()})
    return losses, devices


print(json.dumps([run(1), run(0)]))
"""


@functools.cache
def _fresh_interpreter():
    """The JSON lines of ``_FIRST_DRAW`` and then ``_STATE_ON_ANOTHER_DEVICE``, run one after the other in one fresh
    interpreter (one JAX import for both) with two CPU devices: the first draw's check comes first, before anything
    has started XLA or drawn."""
    from tests.helpers import run_python

    out = run_python(_FIRST_DRAW + _STATE_ON_ANOTHER_DEVICE, env={
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "UNIDL_BACKEND": "jax", "UNIDL_DEVICE": "cpu"})
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith(("{", "["))][-2:]


def test_state_made_on_jaxs_default_device_follows_the_parameters():
    """A fresh interpreter with two CPU devices, JAX's default device the second and unidl's the first (as on a GPU
    machine with ``UNIDL_DEVICE=cpu``): the generator's key, optimizer slots loaded anew, the float16 loss scale and
    the accumulation window are made on JAX's default device, and every train step was jax.jit's "incompatible
    devices" error; they move to the parameters' device, which stays put, and the losses are those of a run with
    one device for everything (plain SGD, Adam, 16-mixed, accumulate=2; after load_state_dict and manual_seed; a
    new step over a layer outside the model, traced again and then its state moved in one call). Eager steps
    (and an eager forward's dropout) make their state on the parameters' device; a batch the caller put on the
    other device moves to the parameters' (compiled and eager steps, ``ud.predict``), and so do an LSTM's
    ``lengths`` there."""
    (split_losses, split_devices), (losses, devices) = _fresh_interpreter()[1]
    assert split_devices == devices == ["cpu:0"], (split_devices, devices)
    assert split_losses == losses and all(np.isfinite(losses)), (split_losses, losses)


def test_a_first_draw_inside_ud_function_gets_new_masks_and_seeding_starts_no_xla():
    """The dropout key exists from the backend's load (as a NumPy key: XLA not started, so ``ud.manual_seed``
    before ``ud.distributed.init`` still lets the jax engine join): a first draw inside ``ud.function`` threads it
    (a key made in the trace gave one mask for ever and the next eager draw raised). A fresh interpreter (in this
    one an earlier test drew already): the two-device one, before its own runs."""
    found = _fresh_interpreter()[0]
    assert found["started"] is False and found["same"] is True
    first, second, eager = (np.array(mask) for mask in found["masks"])
    assert not np.array_equal(first, second) and set(np.unique(eager)) <= {0.0, 2.0}


def test_max_poolings_two_gradient_rules_route_each_window_as_torch():
    """The max pooling's gradient rule of a JAX on the CPU (one variadic ``reduce_window`` choosing each window's
    element) and the one kept for other platforms, whose XLA compiler has no variadic ``reduce_window`` (XLA's own
    rule with a fix-up for NaN and all -inf windows): both give plain torch's gradient, on windows that hold NaN,
    -inf alone, ties and ordinary values, padded and strided (the other platforms' rule is run here on the CPU)."""
    import jax
    import torch

    from unidl.backends.jax import ops as jax_ops

    x = np.random.default_rng(4).standard_normal((2, 3, 7, 6)).astype(np.float32)
    x[0, 0, :3, :3], x[0, 1, 2, 2], x[1, 2, 4:, 3:], x[1, 0, :2, :2] = -np.inf, np.nan, 1.5, 0.25
    r = np.random.default_rng(5).integers(-8, 9, (2, 3, 4, 3)).astype(np.float32) / 8  # (eighths sum exactly)
    wanted = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.max_pool2d(wanted, 3, 2, 1) * torch.tensor(r)).sum().backward()
    rules = (jax_ops._max_pool_jvp, lambda k, s, p, primals, tangents: jax_ops._fixed_up_jvp(k, s, p, *primals,
                                                                                              *tangents))
    for rule in rules:
        pool = jax.custom_jvp(lambda a: jax_ops._pool(a, (3, 3), (2, 2), (1, 1), -np.inf, jax.lax.max))
        pool.defjvp(functools.partial(rule, (3, 3), (2, 2), (1, 1)))
        got = jax.grad(lambda a: (pool(a) * r).sum())(jax.numpy.asarray(x))
        np.testing.assert_array_equal(np.asarray(got), wanted.grad.numpy())


def test_a_steps_frozen_set_is_read_again_after_every_requires_grad_change(rng):
    """The step's trainable mask (part of its trace key) is cached between ``requires_grad`` changes: each way of
    freezing invalidates it, a mask changed back reuses its program, and a parameter frozen by any of them stays
    bit-identical while the others train."""
    with ud.use_backend("jax"):
        model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.Linear(4, 1))
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)
        step(x, y)
        first = model[0].weight
        for freeze, traces in ((lambda: setattr(first, "requires_grad", False), 2),
                               (lambda: first.requires_grad_(True), 2),  # back to the first mask: its program
                               (lambda: model[0].requires_grad_(False), 3),
                               (lambda: model[0].bias.requires_grad_(True), 3)):  # the first mask again
            freeze()
            frozen = {k: v for k, v in model.state_dict().items()
                      if not dict(model.named_parameters())[k].requires_grad}
            before = model.state_dict()
            step(x, y)
            after = model.state_dict()
            assert step.trace_count == traces
            assert all(np.array_equal(value, after[k]) for k, value in frozen.items()), list(frozen)
            assert all(not np.array_equal(before[k], after[k]) for k in before if k not in frozen)


@pytest.mark.parametrize("precision", [None, "bf16-mixed"])
def test_a_checked_momentum_step_selects_each_parameter_and_buffer_once(precision):
    """A compiled SGD-with-momentum step whose loss stages a value check (cross-entropy's labels) selects each
    parameter and each momentum buffer once, by the non-finite flag and the checks' together
    (``JaxOptimizer.apply``): selected again by the checks after the update, the parameter's new value read the
    buffer before that selection, which XLA then computed twice, reading every gradient twice a step (ResNet-18's
    transposed kernel gradients: benchmarks/RESULTS.md, stop 64). A label out of range still leaves the weights
    and the buffers as they were; a good step still moves them. Under mixed precision too (``precision.train_step``)."""
    with ud.use_backend("jax"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Linear(6, 8), ud.nn.ReLU(), ud.nn.Linear(8, 3))
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, precision=precision)
        x = ud.tensor(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32))
        step(x, ud.tensor(np.array([0, 1, 2, 0])))
        (entry,) = step._run._compiled._compiled.values()  # (the ``StatefulJit``'s one trace: [caller, jit, ...])
        traced = entry[1].trace([v._value for v in entry[3]], [v._value for v in entry[4]],
                                (x, ud.tensor(np.array([0, 1, 2, 0]))))
        selections = _selections_of_shape(traced.jaxpr.jaxpr, (8, 6))
        weights = [ud.to_numpy(p).copy() for p in model.parameters()]
        buffers = [np.asarray(v._value).copy() for slots in optimizer._native.slot_variables for v in slots.values()]
        with pytest.raises(ud.IndexOutOfRangeError):
            step(x, ud.tensor(np.array([0, 7, 2, 0])))
        for before, now in zip(weights + buffers, [ud.to_numpy(p) for p in model.parameters()]
                               + [np.asarray(v._value) for slots in optimizer._native.slot_variables
                                  for v in slots.values()]):
            np.testing.assert_array_equal(now, before)
        step(x, ud.tensor(np.array([0, 1, 2, 0])))
        assert not np.array_equal(ud.to_numpy(model[0].weight), weights[0])
    # the first layer's weight and its buffer, each one selection (2 of shape (8, 6); there were 4)
    assert selections == 2, selections


def _selections_of_shape(jaxpr, shape) -> int:
    """How many ``select_n`` equations of ``jaxpr`` (its inner jaxprs included) give an array of ``shape``."""
    count = 0
    for equation in jaxpr.eqns:
        if equation.primitive.name == "select_n" and tuple(equation.outvars[0].aval.shape) == shape:
            count += 1
        for parameter in equation.params.values():
            for inner in parameter if isinstance(parameter, (list, tuple)) else [parameter]:
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    count += _selections_of_shape(inner, shape)
    return count


def _fit_compiling(caplog, **options) -> tuple:
    """``(history, names of the programs compiled)`` of a 2-epoch jax ``fit`` of a fresh two-layer net on 40
    samples in batches of 16 (16, 16 and a last of 8) with 2 training metrics."""
    import logging

    import jax

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 8)).astype(np.float32), rng.integers(0, 3, 40)
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.Adam(model.parameters(), lr=1e-2)
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.DEBUG, logger="jax"):
        history = ud.fit(model, (x, y), batch_size=16, epochs=2, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer,
                         metrics=["accuracy", "f1"], verbose=0, **options)
    return history.history, [r.getMessage().split()[1] for r in caplog.records
                             if r.getMessage().startswith("Compiling ")]


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_fit_computes_its_training_metrics_inside_the_compiled_step(caplog, monkeypatch, precision):
    """``fit``'s training metrics on jax are traced into the train step's program (``Backend.summary_in_step``):
    a fit with 2 metrics and a smaller last batch compiles the step's 2 programs (one per batch size) and no more,
    where the metrics' statistics compiled a program of their own per batch size beside it (4); the values are
    those of the statistics computed apart (the same counts)."""
    with ud.use_backend("jax"):
        in_step, programs = _fit_compiling(caplog, precision=precision)
        monkeypatch.setattr(type(ud.config.backend()), "summary_in_step", False, raising=False)
        apart, programs_apart = _fit_compiling(caplog, precision=precision)
    assert programs == ["jit(flat)"] * 2, programs
    assert programs_apart == ["jit(flat)"] * 4, programs_apart
    assert in_step["accuracy"] == apart["accuracy"] and in_step["f1"] == apart["f1"], (in_step, apart)
    np.testing.assert_allclose(in_step["loss"], apart["loss"], rtol=1e-6)
    assert 0.0 < in_step["accuracy"][-1] and 0.0 < in_step["f1"][-1]


def test_fit_checks_a_batchs_targets_for_its_metrics_after_a_step_that_computed_them():
    """Where the batches' targets cannot be checked whole before training (a ``collate_fn`` makes them), each
    batch's are checked for the metrics after the step that computed their statistics in its program, as ``add``
    checked them before computing them apart: a soft binary target, which the loss takes, is the metrics'
    ``ValueError`` naming it."""
    from unidl.data import DataLoader, TensorDataset

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = np.array([[0.0], [1.0], [1.0], [0.7], [0.0], [1.0], [0.0], [1.0]], np.float32)
    with ud.use_backend("jax"):
        model = ud.nn.Linear(3, 1)
        loader = DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=ud.data.default_collate)
        with pytest.raises(ValueError, match=r"needs targets of 0 or 1 .*; found 0\.7\. Soft targets"):
            ud.fit(model, loader, epochs=1, loss=ud.nn.BCEWithLogitsLoss(), verbose=0,
                   optimizer=ud.optim.SGD(model.parameters(), lr=0.1), metrics=["accuracy"])
        history = ud.fit(model, DataLoader(TensorDataset(x, np.round(y)), batch_size=4,
                                           collate_fn=ud.data.default_collate),
                         epochs=1, loss=ud.nn.BCEWithLogitsLoss(), verbose=0,
                         optimizer=ud.optim.SGD(model.parameters(), lr=0.1), metrics=["accuracy"])
    assert 0.0 <= history.history["accuracy"][0] <= 1.0


def _fits_in_turn(caplog) -> tuple:
    """``(programs each fit compiled, histories, final weights)`` of a sequence of 1-epoch jax fits of one two-layer
    net (40 samples in batches of 16: 16, 16 and 8) with one SGD: the same fit again, then after a freeze, after a
    momentum changed, with a new optimizer, with a loss setting changed, and the first one's settings once more."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 8)).astype(np.float32), rng.integers(0, 3, 40)
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(8, 16, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    loss = ud.nn.CrossEntropyLoss()
    programs, histories = [], []

    def fit(optimizer=optimizer, loss_given=None):
        run = lambda: histories.append(ud.fit(model, (x, y), batch_size=16, epochs=1, loss=loss_given or loss,
                                              optimizer=optimizer, metrics=["accuracy"], shuffle=False,
                                              verbose=0).history)
        programs.append(len(_compiled_programs(caplog, run)))

    fit()
    fit()  # the same model, loss, optimizer, metrics and options: the same programs
    fit(loss_given="cross_entropy")  # a loss made again from its name computes alike
    model.linear1.requires_grad_(False)
    fit()  # a frozen layer: a program without its update
    model.linear1.requires_grad_(True)
    optimizer.param_groups[0]["momentum"] = 0.5
    fit()  # an option the program held as a constant: traced again once
    fit(optimizer=ud.optim.SGD(model.parameters(), lr=1e-2))  # a new optimizer: a step of its own
    loss.label_smoothing = 0.1
    fit()  # a setting the loss's trace read
    loss.label_smoothing = 0.0
    fit()
    return programs, histories, {k: np.asarray(v) for k, v in model.state_dict().items()}


class _Tempered(ud.nn.Module):
    """A net whose forward reads a child's ``Dropout.p``, a plain attribute and an array attribute."""

    def __init__(self):
        super().__init__()
        self.body = ud.nn.Sequential(ud.nn.Linear(8, 16), ud.nn.Dropout(0.0), ud.nn.Linear(16, 3))
        self.temperature = 1.0
        self.scale = np.float32(1.0)

    def forward(self, x):
        return self.body(x) * self.scale / self.temperature


class _WeightedLoss(ud.nn.Module):
    """A loss whose forward reads a child loss's ``label_smoothing`` and a private weight."""

    def __init__(self):
        super().__init__()
        self.ce = ud.nn.CrossEntropyLoss()
        self._weight = 1.0

    def forward(self, outputs, y):
        return self.ce(outputs, y) * self._weight


def _fits_after_changes_read_when_traced(caplog) -> tuple:
    """``(programs each fit compiled, histories)`` of 1-epoch jax fits of one ``_Tempered`` net with one SGD and one
    ``_WeightedLoss``, each after a change of a value the step's trace read: the net's temperature 1.0 made the int
    1 (equal, of another type), a child's dropout rate, the net's
    temperature, the loss's child's label smoothing, the loss's private weight, and an array attribute replaced
    twice through None (the old array freed at once, its id free for the new one, unless the kept step holds it)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 3, 32)
    ud.manual_seed(0)
    model, loss = _Tempered(), _WeightedLoss()
    optimizer = ud.optim.SGD(model.parameters(), lr=1e-2)
    programs, histories = [], []

    def fit():
        run = lambda: histories.append(ud.fit(model, (x, y), batch_size=16, epochs=1, loss=loss, optimizer=optimizer,
                                              shuffle=False, verbose=0).history)
        programs.append(len(_compiled_programs(caplog, run)))

    fit()
    fit()
    model.temperature = 1  # (1.0 before: equal, but another type, which a forward may branch on)
    fit()
    model.body[1].p = 0.5
    fit()
    model.temperature = 0.5
    fit()
    loss.ce.label_smoothing = 0.2
    fit()
    loss._weight = 3.0
    fit()
    for value in (2.0, 4.0):
        model.scale = None
        model.scale = np.float32(value) * np.ones((), np.float32)
        fit()
    return programs, histories


def test_a_kept_fit_step_is_not_reused_after_a_change_of_a_value_its_trace_read(caplog, monkeypatch):
    """A jax fit's kept step is keyed on every attribute of every module of the model and the loss, private ones
    and children's included, another object than a plain value by identity and held: a changed child ``Dropout.p``,
    model attribute, child loss setting or private loss weight, or an array attribute replaced by another (at the
    freed one's id), builds the step again, so every fit's history is that of a fit whose step is built afresh, as
    torch's and TensorFlow's fits are (the kept step ran with the values of its first trace)."""
    with ud.use_backend("jax"):
        programs, histories = _fits_after_changes_read_when_traced(caplog)
        monkeypatch.setattr(type(ud.config.backend()), "reuses_train_steps", False, raising=False)
        _, histories_afresh = _fits_after_changes_read_when_traced(caplog)
    assert histories == histories_afresh
    assert programs[1] == 0 and all(count > 0 for count in programs[2:]), programs


def test_a_second_fit_reuses_the_compiled_step_and_a_change_compiles_again(caplog, monkeypatch):
    """A jax ``fit`` keeps its train step in the model (``Backend.reuses_train_steps``): a second fit of the same
    model, loss, optimizer, metrics and options compiles no program (each compiled its 2 batch shapes again), while a
    freeze, a changed optimizer option, a new optimizer or a changed loss setting still compiles what it needs; the
    losses, metrics and weights are bit for bit those of fits that each build their step afresh."""
    with ud.use_backend("jax"):
        programs, histories, weights = _fits_in_turn(caplog)
        monkeypatch.setattr(type(ud.config.backend()), "reuses_train_steps", False, raising=False)
        programs_afresh, histories_afresh, weights_afresh = _fits_in_turn(caplog)
    assert programs_afresh == [2] * 8, programs_afresh
    # the same fit twice, and with its loss made again: nothing compiled; a freeze, a momentum changed, a new
    # optimizer, a loss setting changed: the 2 batch shapes compiled again; the first settings once more: nothing
    assert programs == [2, 0, 0, 2, 2, 2, 2, 0], programs
    assert histories == histories_afresh
    for name, value in weights.items():
        np.testing.assert_array_equal(value, weights_afresh[name], err_msg=name)
