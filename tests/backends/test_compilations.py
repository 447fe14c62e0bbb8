"""How many XLA programs unidl's own bookkeeping compiles on JAX (the jax backend and Keras-on-JAX): each costs 0.1 to
0.5 s on a CPU, in a user's time to the first step and a ``fit``'s start-up. Counted in a fresh interpreter
(``jax_log_compiles``'s records), where no program of an earlier test is cached: an optimizer's state is made without
any (NumPy's values put on the device), a batch of arrays becomes a tensor without a copy program per shape, and a
``fit`` of 2 epochs with a validation compiles no more than its steps and metrics need: an evaluation (``fit``'s
validation, ``evaluate``) is one program per batch shape, its forward, loss and metrics together."""

import numpy as np
import pytest

import unidl as ud
from tests.helpers import last_json_line, run_python

pytestmark = pytest.mark.skipif("jax" not in ud.available_backends(), reason="jax is not installed")

_SCRIPT = r"""
import json
import logging
import sys

import jax
import numpy as np

jax.config.update("jax_log_compiles", True)
compiled = []


class Recorder(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            compiled.append(message.split(" ")[1])


for name in ("jax._src.interpreters.pxla", "jax._src.dispatch"):
    logging.getLogger(name).addHandler(Recorder())
    logging.getLogger(name).propagate = False

import unidl as ud

ud.set_backend(sys.argv[1])
rng = np.random.default_rng(0)
x, y = rng.standard_normal((40, 8)).astype(np.float32), rng.integers(0, 3, 40)
x_val, y_val = rng.standard_normal((12, 8)).astype(np.float32), rng.integers(0, 3, 12)
ud.manual_seed(0)
model = ud.models.TwoLayerNet(8, 16, 3)
start = len(compiled)
optimizer = ud.optim.Adam(model.parameters(), lr=1e-2)
made = len(compiled)
history = ud.fit(model, (x, y), batch_size=16, epochs=2, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer,
                 validation_data=(x_val, y_val), verbose=0)
print(json.dumps({"optimizer": compiled[start:made], "fit": compiled[made:], "loss": history.history["loss"]}))
"""


def _compiled(backend: str, env: dict | None = None) -> dict:
    script = _SCRIPT.replace("sys.argv[1]", repr(backend))
    return last_json_line(run_python(script, env=dict(env or {}, JAX_PLATFORMS="cpu"), timeout=600).stdout)


def test_the_jax_backend_compiles_no_bookkeeping_in_a_fit():
    """Adam's state (a learning rate, options, step counts, a finite flag and two slots per parameter) was 16
    programs (``jnp.asarray`` of a number, ``jnp.full`` of each slot's shape); the fit of 40 samples in batches of 16
    (16 and 8) with 12 validation samples compiles its steps (2: the training metric's statistics inside them, where
    they were a program of their own per batch size, 2 more) and validation's one program (1: its forward, loss and
    metric together, where they were a forward, 3 eager programs of the loss and the metric's own: 5) and no more:
    the label check's probe of one sample is abstract (it was an eager op each, 3)."""
    counts = _compiled("jax")
    assert counts["optimizer"] == []
    assert len(counts["fit"]) <= 3, counts["fit"]
    assert np.all(np.isfinite(counts["loss"]))


@pytest.mark.skipif("keras" not in ud.available_backends(), reason="keras is not installed")
def test_keras_on_jax_compiles_no_copy_per_batch_nor_for_the_optimizer_state():
    """Keras-on-JAX: the optimizer's state compiles only Keras's own iteration count and learning rate (it made them
    from Python numbers; unidl's slots, options and step counts were 13 more: a copy per slot shape), and a batch of
    arrays becomes a tensor without a ``stage`` copy program per shape and dtype. The fit compiles Keras's steps (2)
    and its own bookkeeping (6), validation one program (its forward, loss and metric: they were Keras's predict
    step, ~17 eager programs of the loss and the metric's own) and the probe of one sample none (it is abstract: an
    eager program per op of the forward, 8, before): 9, where it was 37."""
    counts = _compiled("keras", {"KERAS_BACKEND": "jax"})
    assert counts["optimizer"] == ["jit(convert_element_type)"] * 2, counts["optimizer"]
    assert len(counts["fit"]) <= 9, counts["fit"]
    assert np.all(np.isfinite(counts["loss"]))


def test_the_jax_engine_reduces_every_small_length_with_one_program():
    """The jax engine's collective is one compiled program per length and dtype: a job's reductions (the broadcast
    of each model's weights, a loader's seed, a guard's flags, its steps' gradients) run padded to few lengths (one
    up to 64 values, one up to 128), with at most 64K values of padding above them."""
    from unidl.backends.jax.distributed import _padded_size

    assert {_padded_size(n) for n in (1, 2, 3, 53, 55, 64)} == {64}
    assert {_padded_size(n) for n in (66, 70, 71, 121, 127, 128)} == {128}
    for size in (1, 100, 5000, 65536, 65537, 10**6):
        padded = _padded_size(size)
        assert padded >= size and padded - size < max(size, 1 << 16)


def test_the_jax_probe_is_abstract_only_where_it_gives_what_the_eager_forward_does():
    """fit's probe of one sample (``Backend.probe_forward``) traces a forward abstractly on jax, and runs it eagerly
    where a value check meets a traced value (its error raised by the probe, as before) or the pass writes state."""
    from unidl.metrics.probe import output_shape

    with ud.use_backend("jax"):
        model = ud.models.TwoLayerNet(4, 3, 6)
        x = np.zeros((2, 4), np.float32)
        assert output_shape(model, x) == (6,)
        model.linear2 = ud.nn.Linear(3, 2)  # (a trace of the old layers is no answer)
        assert output_shape(model, x) == (2,)
        embedding = ud.nn.Sequential(ud.nn.Embedding(5, 2), ud.nn.Flatten())
        with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 5\)"):
            embedding._backend.probe_forward(embedding, np.array([[1, 7]]))
        assert embedding._backend.probe_forward(embedding, np.array([[1, 4]])).shape == (1, 4)


def test_the_jax_engines_reductions_of_several_lengths_and_ops_share_one_program():
    """A job's reductions of 3 and 50 values, summed (the weights' broadcast) and averaged (the gradients), from the
    main thread and under a device scope: one compiled psum (its length padded, one function for "sum" and "mean",
    under one default device), where each length, op and scope was a program of its own; the values are exact."""
    import jax

    from unidl.backends.jax.distributed import _Job

    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    job = _Job(0, 1, 60.0)  # (one rank, this process's first CPU device: no job to join)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        values = np.arange(50, dtype=np.float64)
        np.testing.assert_array_equal(job.reduce(values[:3], "sum"), values[:3])
        np.testing.assert_array_equal(job.reduce(values, "sum"), values)
        with jax.default_device(jax.devices("cpu")[0]):
            np.testing.assert_array_equal(job.reduce(values[:3], "mean"), values[:3])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        job.watchdog.stopped.set()
    assert len(compiled) == 1


_EVALUATION_SCRIPT = _SCRIPT.split("import unidl as ud")[0] + r"""
import unidl as ud
from unidl.metrics.probe import output_shape

ud.set_backend(BACKEND)
rng = np.random.default_rng(0)
x, y = rng.standard_normal((40, 8)).astype(np.float32), rng.integers(0, 3, 40)
x_val, y_val = rng.standard_normal((20, 8)).astype(np.float32), rng.integers(0, 3, 20)
weights = rng.uniform(0.5, 2.0, 20).astype(np.float32)
ud.manual_seed(0)
model = ud.models.TwoLayerNet(8, 16, 3)
start = len(compiled)
output_shape(model, x_val[:1])  # (fit's and evaluate's probe of one sample)
probe = compiled[start:]


class Validation(ud.callbacks.Callback):
    # the programs each validation compiles, and the weights it validated (the reference's)
    def __init__(self):
        self.compiled, self.weights = [], []

    def on_test_begin(self, logs=None):
        self.start = len(compiled)

    def on_test_end(self, logs=None):
        self.compiled.append(compiled[self.start:])
        self.weights.append({k: v.tolist() for k, v in self.model_state().items()})

    def model_state(self):
        return {k: np.asarray(ud.to_numpy(v)) for k, v in model.state_dict().items()}


validation = Validation()
history = ud.fit(model, (x, y), batch_size=16, epochs=3, loss="cross_entropy", metrics=["accuracy"],
                 optimizer=ud.optim.Adam(model.parameters(), lr=1e-2), validation_data=(x_val, y_val),
                 validation_batch_size=8, callbacks=[validation], verbose=0)
start = len(compiled)
evaluated = ud.evaluate(model, (x_val, y_val), batch_size=8, loss="cross_entropy", metrics=["accuracy"])
weighted = ud.evaluate(model, (x_val, y_val), batch_size=8, loss="cross_entropy", sample_weight=weights,
                       weighted_metrics=["accuracy"])
print(json.dumps({"probe": probe, "validations": validation.compiled, "evaluate": compiled[start:],
                  "weights": validation.weights,
                  "final": {k: v.tolist() for k, v in validation.model_state().items()},
                  "val_loss": history.history["val_loss"], "val_accuracy": history.history["val_accuracy"],
                  "evaluated": evaluated, "weighted": weighted}))
"""


def _reference(state: dict, x, y, weights=None) -> tuple:
    """The two-layer net's cross-entropy and accuracy in NumPy (float64) from its weights: eager and exact."""
    hidden = np.maximum(x @ np.asarray(state["linear1.weight"]).T + state["linear1.bias"], 0)
    logits = hidden @ np.asarray(state["linear2.weight"]).T + state["linear2.bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y]
    correct = (logits.argmax(axis=1) == y).astype(np.float64)
    weights = np.ones(len(y)) if weights is None else weights.astype(np.float64)
    return float((losses * weights).mean()), float((correct * weights).sum() / weights.sum())


def _evaluations(backend: str, env: dict | None = None) -> dict:
    script = _EVALUATION_SCRIPT.replace("BACKEND", repr(backend))
    return last_json_line(run_python(script, env=dict(env or {}, JAX_PLATFORMS="cpu"), timeout=600).stdout)


def _check_evaluations(counts: dict) -> None:
    """3 epochs' validations of 20 samples in batches of 8 (8, 8 and a last of 4): the first compiles one program
    per batch shape (the forward, the loss and the metric together: 2), the others none; ``evaluate`` then reuses
    them (a loss made again from its name computes alike), and its weighted form (a third input) compiles its own
    2. The values are the NumPy reference's of each epoch's weights, to float32's rounding."""
    assert [len(programs) for programs in counts["validations"]] == [2, 0, 0], counts["validations"]
    assert len(counts["evaluate"]) == 2, counts["evaluate"]
    rng = np.random.default_rng(0)
    rng.standard_normal((40, 8)), rng.integers(0, 3, 40)
    x_val, y_val = rng.standard_normal((20, 8)).astype(np.float32), rng.integers(0, 3, 20)
    weights = rng.uniform(0.5, 2.0, 20).astype(np.float32)
    for epoch, state in enumerate(counts["weights"]):
        loss, accuracy = _reference(state, x_val, y_val)
        np.testing.assert_allclose(counts["val_loss"][epoch], loss, rtol=1e-5)
        np.testing.assert_allclose(counts["val_accuracy"][epoch], accuracy, rtol=1e-6)
    loss, accuracy = _reference(counts["final"], x_val, y_val)
    np.testing.assert_allclose([counts["evaluated"]["loss"], counts["evaluated"]["accuracy"]], [loss, accuracy],
                               rtol=1e-5)
    loss, accuracy = _reference(counts["final"], x_val, y_val, weights)
    np.testing.assert_allclose([counts["weighted"]["loss"], counts["weighted"]["accuracy"]],
                               [loss, accuracy], rtol=1e-5)


def test_the_jax_backend_evaluates_a_batch_shape_with_one_program():
    """fit's validation and ``evaluate`` on jax: one compiled program per batch shape holding the forward, the loss
    and the metrics' statistics (they were a compiled forward, 3 eager programs of the loss and the metric's own
    program per shape: 10 for the two shapes), reused over the epochs, with the eager values. The probe of one
    sample compiles nothing (it is abstract)."""
    counts = _evaluations("jax")
    assert counts["probe"] == [], counts["probe"]
    _check_evaluations(counts)


@pytest.mark.skipif("keras" not in ud.available_backends(), reason="keras is not installed")
def test_keras_on_jax_evaluates_a_batch_shape_with_one_program():
    """As on the jax backend, on Keras-on-JAX: a program per batch shape (Keras's jitted predict, then ~17 eager
    programs of the loss and the metric's own: ~38 for the two shapes), and the probe of one sample abstract (an
    eager program per op of the forward and shape before: 8 for the two-layer net)."""
    counts = _evaluations("keras", {"KERAS_BACKEND": "jax"})
    assert counts["probe"] == [], counts["probe"]
    _check_evaluations(counts)
