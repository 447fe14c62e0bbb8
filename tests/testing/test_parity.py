"""The parity harness itself: agreement in float32 and float64, a planted error caught by name, subprocess
backends, and the ``unidl parity`` command's exit code."""

import numpy as np
import pytest

import unidl as ud
from unidl.cli import main
from unidl.testing import cases, parity

pytestmark = pytest.mark.heavy  # minutes of tests: run first (tests/conftest.py)


def test_two_layer_float32_passes_with_every_kind_of_row():
    model, kwargs, x, y, loss = cases.case("two_layer")
    report = ud.testing.assert_parity(model, x, y, model_kwargs=kwargs, loss=loss, optimizer=cases.sgd_momentum,
                                      steps=20)
    kinds = {row.kind for row in report.rows}
    assert kinds == {"weights", "output", "gradient", "loss", "trained"}
    assert {row.other for row in report.rows} == set(ud.available_backends()) - {"torch"}
    assert "linear2.weight" in str(report) and "0 failed" in str(report)


@pytest.mark.parametrize("model_name", ["two_layer", "cnn"])
def test_float64_agrees_to_1e_12(model_name):
    model, kwargs, x, y, loss = cases.case(model_name)
    report = ud.testing.compare_backends(model, x, y, model_kwargs=kwargs, loss=loss, optimizer=cases.sgd_momentum,
                                         steps=20, dtype="float64")
    assert report.passed, str(report)
    assert all(row.tolerance <= 1e-12 for row in report.rows)
    assert ud.get_dtype() == "float32"  # the harness restores the caller's dtype


class Planted(ud.nn.Module):
    """A model whose tensorflow copy gets one weight slightly wrong, as a buggy backend would."""

    def __init__(self):
        super().__init__()
        self.hidden = ud.nn.Linear(6, 5)
        self.head = ud.nn.Linear(5, 2)

    def forward(self, x):
        return self.head(ud.ops.tanh(self.hidden(x)))

    def load_state_dict(self, state, strict=True):
        state = dict(state)
        if self.backend == "tensorflow":
            state["head.weight"] = state["head.weight"] + 1e-3
        return super().load_state_dict(state, strict)


def test_perturbed_weight_is_caught_and_named():
    x = np.random.default_rng(0).standard_normal((8, 6))
    report = ud.testing.compare_backends(Planted, x, backends=["torch", "tensorflow", "keras"])
    failed = {(row.other, row.kind, row.name) for row in report.failures}
    assert ("tensorflow", "weights", "head.weight") in failed
    assert ("tensorflow", "output", "output") in failed
    assert not any(row.other == "keras" for row in report.failures)
    with pytest.raises(AssertionError, match=r"tensorflow weights head.weight"):
        ud.testing.assert_parity(Planted, x, backends=["torch", "tensorflow"])


class FineTunedNet(ud.nn.Module):
    """Linear, ReLU, a BatchNorm1d that trains, a pretrained one kept in eval mode (variances small enough for its
    eps to count), Linear, a gain written with a Python float: on Keras the parameters and running statistics are
    Keras variables that meet Python floats (momentum, eps, 0.3)."""

    def __init__(self):
        super().__init__()
        self.hidden, self.norm, self.head = ud.nn.Linear(12, 8), ud.nn.BatchNorm1d(8), ud.nn.Linear(8, 3)
        self.pretrained = ud.nn.BatchNorm1d(8)
        self.pretrained.register_buffer("running_var", np.linspace(0.01, 0.1, 8))
        self.pretrained.eval()
        self.gain = self.parameter(np.linspace(0.5, 1.5, 3))

    def forward(self, x):
        return self.head(self.pretrained(self.norm(ud.ops.relu(self.hidden(x))))) * (0.3 * self.gain)


def test_keras_on_torch_runs_in_a_subprocess_and_agrees_in_float64():
    # float64 all through on Keras-on-torch (1e-12): Keras's type promotion would narrow the matmuls to float32,
    # and its torch ops round a Python float (momentum, eps) to float32 before it meets a variable
    x, y = np.random.default_rng(0).standard_normal((16, 12)), np.random.default_rng(1).standard_normal((16, 3))
    report = ud.testing.assert_parity(FineTunedNet, x, y, loss=ud.nn.MSELoss, optimizer=cases.sgd_momentum, steps=3,
                                      backends=["torch", "keras:torch"], dtype="float64")
    assert {row.other for row in report.rows} == {"keras:torch"}
    assert {row.kind for row in report.rows} == {"weights", "output", "gradient", "loss", "trained"}
    assert "pretrained.running_var" in {row.name for row in report.rows}


def test_subprocess_backend_needs_importable_pieces():
    x = np.zeros((2, 6))
    with pytest.raises(ValueError, match="pass the model as a class"):
        ud.testing.compare_backends(lambda: Planted(), x, backends=["torch", "keras:torch"])


def test_parity_command_exit_codes(capsys, monkeypatch):
    assert main(["parity", "--model", "two_layer", "--steps", "3"]) == 0
    assert "0 failed" in capsys.readouterr().out
    monkeypatch.setitem(parity.TOLERANCES, "float32", dict(parity.TOLERANCES["float32"], output=0.0, gradient=0.0))
    assert main(["parity", "--model", "two_layer", "--steps", "3", "--backends", "torch", "tensorflow"]) == 1
    assert "NO" in capsys.readouterr().out


def test_parity_command_cnn_and_float64():
    # (the CNN's 20 float64 steps to 1e-12 through the same harness: test_float64_agrees_to_1e_12[cnn])
    assert main(["parity", "--model", "cnn", "--steps", "20"]) == 0
    assert main(["parity", "--model", "two_layer", "--steps", "5", "--dtype", "float64"]) == 0


class LateDivergence(ud.nn.Module):
    """A model trained with a different learning rate on tensorflow: the first loss agrees, later ones do not."""

    def __init__(self):
        super().__init__()
        self.fc = ud.nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(x)


def test_report_says_where_runs_first_diverged(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 1))
    report = ud.testing.compare_backends(Planted, rng.standard_normal((8, 6)), backends=["torch", "tensorflow"])
    assert len(report.first_divergences()) == 1  # one line per pair of runs
    assert "tensorflow first diverged from torch at the initial weights (head.weight)" in str(report)

    def optimizer(params):
        lr = 0.05 if ud.get_backend() == "tensorflow" else 0.1  # the same first loss, then apart
        return ud.optim.SGD(params, lr=lr)

    def bias_optimizer(params):  # fc.bias's momentum differs on tensorflow: its first step (-lr * g) agrees
        momentum = 0.5 if ud.get_backend() == "tensorflow" else 0.9
        return ud.optim.SGD([{"params": params[:1]}, {"params": params[1:], "momentum": momentum}], lr=0.1,
                            momentum=0.9)

    report = ud.testing.compare_backends(LateDivergence, x, y, loss=ud.nn.MSELoss, optimizer=optimizer, steps=5,
                                         backends=["torch", "tensorflow"])
    # the weights parted at the first step's update (both of them: the largest named), the loss one step later
    assert len(report.first_divergences()) == 1, report.first_divergences()
    assert "tensorflow first diverged from torch at training step 1, in its update of fc." in str(report)
    assert ", and 1 more tensor)" in str(report) and "the loss first differed at training step 2" in str(report)
    with pytest.raises(AssertionError, match="first diverged from torch at training step 1, in its update of fc"):
        ud.testing.assert_parity(LateDivergence, x, y, loss=ud.nn.MSELoss, optimizer=optimizer, steps=5,
                                 backends=["torch", "tensorflow"])
    report = ud.testing.compare_backends(LateDivergence, x, y, loss=ud.nn.MSELoss, optimizer=bias_optimizer,
                                         steps=5, backends=["torch", "tensorflow"])
    assert "at training step 2, in its update of fc.bias (max rel" in str(report), str(report)
    assert "more tensor" not in str(report) and "the loss first differed at training step 3" in str(report)
    # a run too large to keep each step's weights: the first step whose loss differs
    monkeypatch.setattr(ud.testing.parity, "STEP_RECORD_BYTES", 0)
    report = ud.testing.compare_backends(LateDivergence, x, y, loss=ud.nn.MSELoss, optimizer=optimizer, steps=5,
                                         backends=["torch", "tensorflow"])
    assert "tensorflow first diverged from torch at training step 2 (max rel" in str(report), str(report)


class TwoHeads(ud.nn.Module):
    """A forward of two inputs giving a tuple and a dict of outputs, and a layer it never uses (no gradient)."""

    def __init__(self):
        super().__init__()
        self.left, self.right, self.unused = ud.nn.Linear(6, 3), ud.nn.Linear(4, 3), ud.nn.Linear(3, 3)

    def forward(self, x, extra):
        left, right = self.left(x), self.right(extra)
        return left + right, {"left": ud.ops.tanh(left), "right": right}


def test_several_inputs_and_outputs_are_compared_one_by_one():
    rng = np.random.default_rng(0)
    x, extra = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
    report = ud.testing.assert_parity(TwoHeads, (x, extra))  # every installed backend against torch
    outputs = {row.name for row in report.rows if row.kind == "output"}
    assert outputs == {"output[0]", "output[1]['left']", "output[1]['right']"}
    gradients = {row.name for row in report.rows if row.kind == "gradient"}
    assert gradients == {"left.weight", "left.bias", "right.weight", "right.bias"}  # none for the unused layer
    with pytest.raises(TypeError, match="positional argument") as caught:  # one input: the forward's own error
        ud.testing.compare_backends(TwoHeads, x)
    assert "in the parity run of backend 'torch'" in str(caught.value.__notes__)


def test_the_gradient_of_a_bias_before_a_batch_norm_is_zero_at_the_gradients_scale():
    # analytically 0, so its own max is rounding: compared against it, the run failed with a max rel of ~1
    class NormedNet(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.norm = ud.nn.Linear(6, 3), ud.nn.BatchNorm1d(3)

        def forward(self, x):
            return self.norm(self.hidden(x))

    x = np.random.default_rng(0).standard_normal((8, 6))
    report = ud.testing.assert_parity(lambda: NormedNet(), x, backends=["torch", "tensorflow", "jax"])
    assert max(row.max_rel for row in report.rows if row.name == "hidden.bias" and row.kind == "gradient") < 1e-5


class SmallFlippedOnJax(ud.nn.Module):
    """Two outputs, the second a million times smaller than the first and of the other sign on jax: a wrong result
    at its own scale, which the gradients' rule (a near-zero tensor measured at its kind's largest) let pass."""

    def __init__(self):
        super().__init__()
        self.layer = ud.nn.Linear(6, 3)

    def forward(self, x):
        small = ud.ops.tanh(self.layer(x)) * 1e-6
        return self.layer(x), -small if self.backend == "jax" else small


def test_a_small_output_is_compared_at_its_own_scale():
    x = np.random.default_rng(0).standard_normal((8, 6))
    report = ud.testing.compare_backends(SmallFlippedOnJax, x, backends=["torch", "jax"])
    assert ("jax", "output", "output[1]") in {(row.other, row.kind, row.name) for row in report.failures}


def test_the_dtype_asked_for_is_the_one_run_inside_a_use_dtype_block():
    # the harness switched with set_dtype, which a caller's use_dtype block overrides: float64 ran, float32 reported
    x = np.random.default_rng(0).standard_normal((8, 6))
    with ud.use_dtype("float64"):
        report = ud.testing.compare_backends(Planted, x, backends=["torch", "jax"], dtype="float32")
        assert ud.get_dtype() == "float64"
    assert report.dtype == "float32"
    assert max(row.max_rel for row in report.rows if row.kind == "output") > 1e-12  # float32 rounding, not float64's


@pytest.mark.parametrize("arguments, message", [
    ({"inputs": [np.zeros((2, 6)), np.zeros((2, 6))]}, "a list of arrays as inputs: pass a tuple of arrays"),
    ({"tolerances": {"outputs": 1.0}}, "no kind 'outputs'; the kinds are 'weights', 'output'"),
    ({"tolerances": {"output": -1.0}}, r"tolerances\['output'\] must be a number >= 0"),
    ({"tolerances": {"gradient": float("nan")}}, r"tolerances\['gradient'\] must be a number >= 0"),
    ({"dtype": "float16"}, "dtype must be one of 'float32', 'float64', got 'float16'"),
    ({"steps": 3}, "steps=3 trains the model, which needs targets, loss and optimizer; missing: targets, loss, "
                   "optimizer"),
    ({"steps": -1}, "steps must be an integer >= 0"),
    ({"loss": ud.nn.MSELoss}, "a loss but no targets"),
    ({"backends": ["torch", "pytorch"]}, "'torch' and 'pytorch', the same backend twice"),
])
def test_arguments_that_would_be_ignored_or_misread_are_refused_before_any_run(arguments, message):
    with pytest.raises(ValueError, match=message):
        arguments = {"inputs": np.zeros((2, 6)), "backends": ["torch", "tensorflow"], **arguments}
        ud.testing.compare_backends(Planted, arguments.pop("inputs"), **arguments)


def test_an_unknown_backend_is_refused_before_any_run(monkeypatch):
    monkeypatch.setattr(parity, "_in_process_run", None)  # never reached
    with pytest.raises(ud.errors.UnknownBackendError, match="unknown backend 'mxnet'"):
        ud.testing.compare_backends(Planted, np.zeros((2, 6)), backends=["torch", "mxnet"])
