"""Every example runs unchanged under every backend, in a fresh interpreter, as a user runs it: one interpreter runs
the three examples one after another as ``__main__`` (an interpreter that imports a framework takes seconds to start;
each example seeds and builds everything it uses). torch's interpreter then goes on to the Keras-on-torch checks below
(``KERAS_RUN``), so that torch is imported once for both; tensorflow's goes on to the examples under the keras backend
(Keras on its default framework, TensorFlow), so that TensorFlow is imported once for both."""

import functools

import pytest

from tests.helpers import last_json_line, run_python
from unidl.testing import max_relative_difference

pytestmark = pytest.mark.heavy  # tens of seconds: run first (tests/conftest.py)

BACKENDS = ["torch", "tensorflow", "keras"]
EXAMPLES = ("two_layer_net.py", "cnn_digits.py", "custom_module.py")
#: the interpreter whose output holds each backend's examples: keras's go on in tensorflow's (see below)
INTERPRETER = {"torch": "torch", "tensorflow": "tensorflow", "keras": "tensorflow"}
# each example's output after a line "=== <backend>/<name>"; an example that raises prints its traceback there and
# the next one still runs, so that each test fails for its own example
RUN_EXAMPLES = """
import runpy, sys, traceback
for name in {examples!r}:
    print("=== {backend}/" + name, flush=True)
    try:
        runpy.run_path("examples/" + name, run_name="__main__")
    except BaseException:
        traceback.print_exc(file=sys.stdout)
"""
#: where tensorflow's interpreter goes on to the keras backend's examples: UNIDL_BACKEND names keras and unidl's
#: default backend is unset, so that the examples' first use of unidl reads it as in a fresh interpreter
THEN_KERAS = ("import os\nfrom unidl import config\nos.environ['UNIDL_BACKEND'] = 'keras'\n"
              "config._default_backend = None\n" + RUN_EXAMPLES.format(examples=EXAMPLES, backend="keras"))


#: what follows the examples where that interpreter goes on to the Keras checks (a section of its own)
KERAS_SECTION = "keras checks"
EXAMPLES_ENV = {"STEPS": "60"}


@functools.cache
def _interpreter_output(interpreter: str) -> dict:
    """``{"<backend>/<example>": its output}`` of ``RUN_EXAMPLES`` in a fresh interpreter with
    ``UNIDL_BACKEND=interpreter``; tensorflow's then runs the keras backend's examples (``THEN_KERAS``); for torch,
    that interpreter then runs ``KERAS_RUN`` with Keras on torch (its output under ``KERAS_SECTION``, with the exit
    status): its first import of Keras, after the examples, with KERAS_BACKEND=torch set and UNIDL_BACKEND and STEPS
    unset there (the examples see the environment a user's run has)."""
    code = RUN_EXAMPLES.format(examples=EXAMPLES, backend=interpreter)
    env = {"UNIDL_BACKEND": interpreter, **EXAMPLES_ENV}
    if interpreter == "tensorflow":
        code += THEN_KERAS
    if interpreter == "torch":
        code += (f"print('=== {KERAS_SECTION}', flush=True)\nimport os\nos.environ['KERAS_BACKEND'] = 'torch'\n"
                 f"for name in {['UNIDL_BACKEND', *EXAMPLES_ENV]!r}:\n    del os.environ[name]\n" + KERAS_RUN)
    result = run_python(code, env=env, check=False)
    parts = result.stdout.split("=== ")[1:]
    output = {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}
    if interpreter == "torch":
        output[KERAS_SECTION] = (result.returncode, output.get(KERAS_SECTION, ""), result.stderr)
    elif result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return output


def _run_example(name, backend):
    output = _interpreter_output(INTERPRETER[backend])
    assert f"{backend}/{name}" in output, f"examples/{name} never ran on {backend}:\n{output}"
    out = output[f"{backend}/{name}"]
    assert "Traceback" not in out, f"examples/{name} failed on {backend}:\n{out}"
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_layer_net_example(backend):
    out = _run_example("two_layer_net.py", backend)
    assert f"backend={backend}" in out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cnn_digits_example(backend):
    out = _run_example("cnn_digits.py", backend)
    assert f"backend={backend}" in out
    accuracy = float(out.split("test accuracy")[-1])
    assert accuracy >= 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_module_example(backend):
    out = _run_example("custom_module.py", backend)
    assert f"backend={backend}" in out
    assert float(out.split("test accuracy")[-1]) >= 0.9


# ---- Keras on torch and on JAX: one interpreter each (KERAS_BACKEND is fixed at import): on torch the one that ran
# the examples (``KERAS_RUN``), on JAX tests/backends/test_keras_jax.py's, which runs the tests below too ----

TWO_LAYER = dict(steps=30, sizes=(32, 50, 20, 5))


def keras_checks() -> list:
    """In an interpreter whose Keras runs on another framework than TensorFlow: what ``_keras_on_torch`` describes."""
    import keras

    import unidl as ud
    from tests.callbacks.test_tensorboard import cnn_graph
    from tests.data.test_epoch import keras_fit_positions
    from tests.nn.test_attention import keras_host_attention
    from tests.test_bad_input_parity import off_path_results
    from tests.test_dynamic_forward import keras_host_accumulation
    from tests.test_export import keras_host_exports
    from tests.test_precision import alternated_loss_steps
    from unidl.compare import two_layer_losses

    losses = two_layer_losses("keras", **TWO_LAYER)
    ud.set_backend("keras")
    ud.manual_seed(0)
    (x, y), t = ud.datasets.digits("train"), ud.datasets.digits("test")
    m = ud.models.CNN(1, 10, 8)
    ud.fit(m, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.Adam(m.parameters(), lr=3e-3), epochs=12,
           batch_size=64, verbose=0)
    return [losses, keras.backend.backend(), ud.evaluate(m, t)["accuracy"], cnn_graph(), alternated_loss_steps(),
            keras_host_attention(), keras_host_accumulation(), off_path_results(),
            ctrl_c_as_keras_switches_gradients_off(), keras_host_exports(),
            keras_fit_positions() if keras.backend.backend() == "torch" else None]


KERAS_RUN = "import json\nfrom tests.test_examples import keras_checks\nprint(json.dumps(keras_checks()))"


def ctrl_c_as_keras_switches_gradients_off():
    """Where Keras runs on torch: a real SIGINT (Python's default handler) raised just as ``torch.no_grad()`` has
    switched gradients off, before its ``with`` is in force (where one lands in a stress loop of Ctrl-Cs), the first
    time Keras's trainer does so in a train step (its optimizer's update), in ``evaluate`` (its predict step) and in
    ``fit``; after each, ``[where it landed, KeyboardInterrupt raised, grad mode on, a train step's and fit's losses
    finite]`` (an error's text instead of the last where they fail). None on Keras's other frameworks."""
    import signal
    import sys

    import keras
    import numpy as np
    import torch

    import unidl as ud

    if keras.backend.backend() != "torch":
        return None
    real, armed = torch.set_grad_enabled, []

    class ctrl_c_as_switched_off(real):  # what torch.no_grad().__enter__ calls: torch.set_grad_enabled(False)
        def __init__(self, mode):
            super().__init__(mode)
            if not mode and armed:
                armed.append(sys._getframe(2).f_code.co_name)  # (the function whose ``with`` it is)
                signal.raise_signal(signal.SIGINT)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    outcomes = []
    with ud.use_backend("keras"):
        ud.manual_seed(0)
        model, loss = ud.models.TwoLayerNet(4, 8, 3), ud.nn.CrossEntropyLoss()
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        step = ud.train_step(model, loss, optimizer)
        step(x, y)
        runs = [lambda: step(x, y), lambda: ud.evaluate(model, (x, y), loss=loss),
                lambda: ud.fit(model, (x, y), loss=loss, optimizer=optimizer, epochs=1, batch_size=4, verbose=0)]
        for run in runs:
            armed[:], interrupted = [True], False
            torch.set_grad_enabled = ctrl_c_as_switched_off
            try:
                run()
            except KeyboardInterrupt:
                interrupted = True
            finally:
                torch.set_grad_enabled = real
            grad_on = torch.is_grad_enabled()
            try:
                history = ud.fit(model, (x, y), loss=loss, optimizer=optimizer, epochs=1, batch_size=4, verbose=0)
                finite = bool(np.isfinite(float(step(x, y))) and np.isfinite(history["loss"][-1]))
            except Exception as error:
                finite = f"{type(error).__name__}: {str(error)[:100]}"
            torch.set_grad_enabled(True)  # (the next run as the first: gradients on)
            outcomes.append([armed[1:], interrupted, grad_on, finite])
    return outcomes


@functools.cache
def _keras_on_torch():
    """``[two-layer losses, the framework Keras ran on, the digits CNN's test accuracy after ud.fit, a small CNN's
    model graph (tests/callbacks/test_tensorboard.py's cnn_graph), two float16 steps with other losses called in
    turn (tests/test_precision.py's alternated_loss_steps), on torch the attention cases' failures against torch
    and the aten ops of a transformer layer (tests/nn/test_attention.py's keras_host_attention; None on JAX), on torch
    accumulate=2 and Adam with a layer unused in some steps, and float16 loss scaling, against torch
    (tests/test_dynamic_forward.py's keras_host_accumulation; None on JAX), the off-path op results
    (tests/test_bad_input_parity.py's off_path_results), on torch the outcomes of a Ctrl-C as Keras switches
    gradients off (``ctrl_c_as_keras_switches_gradients_off``; None on JAX), the keras backend's exports there
    (tests/test_export.py's keras_host_exports), on torch the loader's positions through ``fit``
    (tests/data/test_epoch.py's keras_fit_positions; None on JAX)]`` (``keras_checks``) from the interpreter whose
    Keras runs on torch, the one that ran the examples first."""
    returncode, stdout, stderr = _interpreter_output("torch")[KERAS_SECTION]
    if returncode != 0:
        raise AssertionError(f"subprocess failed ({returncode}):\n{stdout}\n{stderr}")
    return last_json_line(stdout)


@pytest.fixture
def framework():
    """The framework under Keras for the tests that take it: torch here; tests/backends/test_keras_jax.py runs the
    same tests on JAX, from its Keras-on-JAX interpreter (one interpreter start fewer)."""
    return "torch"


@pytest.fixture
def checks():
    """``keras_checks()`` of the interpreter whose Keras runs on ``framework``."""
    return _keras_on_torch()


def test_keras_on_another_framework_agrees_with_that_backend(framework, checks):
    from unidl.compare import two_layer_losses

    keras_run, used, *_ = checks
    assert used == framework
    host_run = two_layer_losses(framework, **TWO_LAYER)  # here: another process than Keras's
    assert max_relative_difference(keras_run, host_run) < 1e-5
    assert keras_run[-1] < keras_run[0]


def test_keras_on_another_framework_fit_reaches_accuracy(framework, checks):
    _, used, accuracy, *_ = checks
    assert used == framework and accuracy >= 0.95


def test_keras_on_another_framework_gives_the_model_graph(framework, checks):
    """TensorBoard's model graph on Keras-on-torch (the torch writer traces the forward over the Keras variables'
    values) and Keras-on-JAX (their jaxpr), with the state under its ``state_dict()`` names."""
    from tests.callbacks.test_tensorboard import assert_cnn_graph

    _, used, _, graph, *_ = checks
    assert used == framework
    convolution, dot = {"torch": ("aten::_convolution", "aten::linear"),
                        "jax": ("conv_general_dilated", "dot_general")}[framework]
    assert_cnn_graph(graph, convolution, dot)


def test_keras_on_another_framework_trains_each_step_with_its_own_loss(framework, checks):
    """Two float16 train steps of one model with other losses, called in turn: Keras's torch and JAX trainers
    run the model as last compiled (``train_on_batch``), so each step compiles it back to its own loss and casts
    first; both train as the torch loop alternating the two losses, with no step skipped."""
    from tests.test_precision import check_alternated_loss_steps

    _, used, _, _, alternated, *_ = checks
    assert used == framework
    check_alternated_loss_steps(alternated)


def test_keras_on_torch_computes_attention_as_torch_with_its_fused_kernels():
    """MultiheadAttention, the encoder layers, LayerNorm and scaled_dot_product_attention on the keras backend over
    torch against torch (outputs and gradients, float32 compiled and float64 eager, every kind of mask), each
    through one fused kernel as plain Keras's layers reach them: attention through F.scaled_dot_product_attention
    (no softmax of unidl's own), LayerNorm through native_layer_norm, Linear through addmm (with its bias)."""
    _, used, _, _, _, (failures, aten), *_ = _keras_on_torch()
    assert used == "torch" and failures == []
    assert {"aten::scaled_dot_product_attention", "aten::native_layer_norm", "aten::addmm"} <= set(aten), aten
    assert not {"aten::softmax", "aten::_softmax", "aten::bmm"} & set(aten), aten


def test_keras_on_torch_accumulates_as_torch_with_a_layer_unused_in_some_micro_steps():
    """accumulate=2 on the keras backend over torch, a layer that gets a gradient in the first, the last, none and
    both micro-steps of its windows: PyTorch's ``.grad`` rule (tests/test_dynamic_forward.py's test of it), 1e-6;
    Adam's per-parameter step counts with that layer skipped in some steps; float16 loss scaling with torch's
    decisions (weights to 1e-3)."""
    _, used, _, _, _, _, checks, *_ = _keras_on_torch()
    assert used == "torch" and checks, checks
    for name in ("sgd", "adam"):
        assert all(value < 1e-6 for value in checks[name].values()), (name, checks[name])
    same_decisions, difference = checks["float16"]
    assert same_decisions and difference < 1e-3, checks["float16"]


def test_keras_on_torch_trains_on_after_a_ctrl_c_as_keras_switches_gradients_off():
    """Issue 14 on Keras-on-torch: a real SIGINT that lands as Keras's ``torch.no_grad()`` has switched gradients
    off, before its ``with`` is in force (in a train step, ``evaluate`` and ``fit``), ends the call with
    ``KeyboardInterrupt`` and leaves torch's grad mode as the call found it (``KeptStepState`` puts back the host's
    thread modes): a train step and ``fit`` train on with finite losses, where the next one had failed."""
    *_, outcomes, _, _ = _keras_on_torch()
    assert outcomes is not None and len(outcomes) == 3, outcomes
    for landed, interrupted, grad_on, finite in outcomes:
        assert landed and interrupted and grad_on and finite is True, outcomes


def test_keras_on_another_framework_follows_the_off_path_rules(framework, checks):
    """Keras's own ops differ by framework off the usual path (its torch one_hot raised for a label out of range):
    the rules of tests/test_bad_input_parity.py hold on Keras-on-torch and Keras-on-JAX too."""
    from tests.test_bad_input_parity import OFF_PATH_EXPECTED

    *_, results, _, _, _ = checks
    assert results == OFF_PATH_EXPECTED


def test_keras_on_another_framework_exports_programs_that_run_without_unidl(framework, checks, tmp_path):
    """The keras backend's export formats on Keras's other frameworks: on torch the host's (a Keras layer is a
    ``torch.nn.Module``: ``torch.export`` programs and ONNX files through torch's exporter, where it wrote none),
    on JAX Keras's own SavedModel; each program loaded and run in a fresh process without unidl, its outputs the
    model's at batch sizes other than the traced one (tests/test_export.py's check)."""
    from tests.test_export import check_exports_run_without_unidl

    *_, exports, _ = checks
    assert sorted(exports) == {"torch": ["onnx", "torch_export"], "jax": ["saved_model"]}[framework]
    for format in exports:
        check_exports_run_without_unidl(exports, format, tmp_path)


def test_keras_on_torch_keeps_exact_loader_positions():
    """tests/data/test_epoch.py's check of the loader's position after each batch that Keras's own ``Model.fit``
    consumed (given each epoch's arrays), run in the interpreter whose Keras runs on torch (None on JAX, where it
    would add an XLA compile of the same path of Keras's trainer: 1.7 s)."""
    from tests.data.test_epoch import check_keras_fit_positions

    *_, positions = _keras_on_torch()
    check_keras_fit_positions(positions, "torch")
