"""``TensorBoard``: event files read back through the tensorboard package's own reader, on every backend."""

import glob
import os

import numpy as np
import pytest

import unidl as ud
from tests.callbacks.conftest import train
from tests.helpers import last_json_line, run_python
from unidl.errors import GraphConstructError

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read(directory):
    """The run in ``directory`` as TensorBoard loads it (scalars and histograms of every tag)."""
    accumulator = event_accumulator.EventAccumulator(os.fspath(directory), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    return accumulator.Reload()


def scalars(run, tag):
    return [(event.step, event.value) for event in run.Scalars(tag)]


def test_epoch_scalars_in_keras_layout(backend, problem, tmp_path):
    _, _, history = train(problem, 3, [ud.callbacks.TensorBoard(tmp_path / "run")], lr=0.3)
    assert sorted(os.listdir(tmp_path / "run")) == ["train", "validation"]
    assert len(glob.glob(str(tmp_path / "run" / "train" / "events.out.tfevents.*"))) == 1
    train_run, validation_run = read(tmp_path / "run" / "train"), read(tmp_path / "run" / "validation")
    assert sorted(train_run.Tags()["scalars"]) == ["epoch_accuracy", "epoch_learning_rate", "epoch_loss"]
    for tag, key in (("epoch_loss", "loss"), ("epoch_accuracy", "accuracy"), ("epoch_learning_rate", "lr")):
        steps, values = zip(*scalars(train_run, tag))
        assert steps == (0, 1, 2)
        np.testing.assert_allclose(values, history[key], rtol=1e-6)  # stored as float32
    np.testing.assert_allclose([v for _, v in scalars(validation_run, "epoch_loss")], history["val_loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars(validation_run, "epoch_accuracy")], history["val_accuracy"],
                               rtol=1e-6)
    # validation against the global step: 3 batches an epoch
    assert [s for s, _ in scalars(validation_run, "evaluation_loss_vs_iterations")] == [3, 6, 9]


def test_batch_scalars_and_weight_histograms(backend, problem, tmp_path):
    batches = []
    model, _, _ = train(problem, 2, [ud.callbacks.TensorBoard(tmp_path, update_freq=2, histogram_freq=1),
                                     ud.callbacks.LambdaCallback(on_batch_end=lambda b, logs: batches.append(logs["loss"]))],
                        validation_data=None)
    run = read(tmp_path / "train")
    steps, values = zip(*scalars(run, "batch_loss"))
    assert steps == (2, 4, 6)  # every 2nd of the 6 batches, at the global step
    np.testing.assert_allclose(values, [batches[1], batches[3], batches[5]], rtol=1e-6)
    assert sorted(run.Tags()["histograms"]) == ["linear1/bias", "linear1/weight", "linear2/bias", "linear2/weight"]
    weights = model.state_dict()["linear1.weight"]
    last = run.Histograms("linear1/weight")[-1]
    assert [h.step for h in run.Histograms("linear1/weight")] == [0, 1]
    assert last.histogram_value.num == weights.size and sum(last.histogram_value.bucket) == weights.size
    np.testing.assert_allclose([last.histogram_value.min, last.histogram_value.max, last.histogram_value.sum],
                               [weights.min(), weights.max(), weights.sum()], rtol=1e-5, atol=1e-6)
    assert not os.path.exists(tmp_path / "validation")


def documented_graph(backend):
    """(an op, a node name) that TwoLayerNet's graph holds on ``backend`` (torch's trace, TensorFlow's graph,
    jax's jaxpr; keras by the framework it runs on, over the Keras variables' values on torch and JAX)."""
    if backend == "keras":
        import keras

        backend = keras.backend.backend()  # on torch, unidl's linear op is torch's F.linear there too
    return {"torch": ("aten::linear", "linear1/weight"), "tensorflow": ("MatMul", "MatMul/ReadVariableOp"),
            "jax": ("dot_general", "linear1/weight")}[backend]


def test_model_graph_where_the_backend_gives_one(backend, problem, tmp_path):
    expected = documented_graph(backend)
    callback = ud.callbacks.TensorBoard(tmp_path, write_graph=True)
    model, _, _ = train(problem, 1, [callback])
    run = read(tmp_path / "train")
    graph = run.Graph()  # as TensorBoard's Graphs tab loads it
    op, name = expected
    nodes = {node.name: node for node in graph.node}
    assert [node.op for node in graph.node].count(op) == 2  # the two linear layers, fed by the input
    assert name in nodes and any("input" in node.input for node in graph.node if node.op == op)
    assert "epoch_loss" in run.Tags()["scalars"] and model.training


def test_a_model_graph_draws_nothing_from_pythons_random(backend, tmp_path):
    """``write_graph=True`` traces ``model(x)`` before training, which a net drawing its depth from Python's
    ``random`` ran as one more draw: ``fit`` with the callback leaves ``random`` where ``fit`` without it does, so
    each step draws the same depth (eager steps: Python runs every one)."""
    import random

    from tests.test_dynamic_forward import X, Y, DynamicNet

    def after(callbacks):
        ud.manual_seed(0)
        random.seed(1)
        model = DynamicNet()
        history = ud.fit(model, (X, Y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.05),
                         epochs=1, batch_size=8, shuffle=False, verbose=0, eager=True, callbacks=callbacks)
        return history["loss"], random.random()

    assert after([ud.callbacks.TensorBoard(tmp_path, write_graph=True)]) == after([])


def test_model_graph_of_a_forward_with_two_inputs(backend, problem, tmp_path):
    """``model(x, extra)``: ``write_model_graph(model, x, extra)`` draws both inputs, each into its own layer, on
    every backend; ``fit`` (which traces ``model(x)``) stops before its first step with one clear error naming
    the forward, instead of each framework's own failure deep in its tracer."""
    op, _ = documented_graph(backend)
    ud.manual_seed(0)
    model = TwoInputs()
    callback = ud.callbacks.TensorBoard(tmp_path / "run")
    callback.write_model_graph(model, *two_input_batch())
    callback.on_train_end()
    graph = read(tmp_path / "run" / "train").Graph()
    input_op = "Placeholder" if op == "MatMul" else "Input"  # TensorFlow's graph feeds it placeholders
    assert_two_inputs({node.name: [node.op, list(node.input)] for node in graph.node}, input_op, op)
    before = model.state_dict()
    (x, _), _, _ = problem
    with pytest.raises(GraphConstructError, match=r"TwoInputs\.forward\(x, extra\) cannot be called on 1 input "
                                                  r"\(fit traces model\(x\).*'extra'.*write_model_graph"):
        ud.fit(model, (x, x[:, :3]), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
               batch_size=20, verbose=0, callbacks=[ud.callbacks.TensorBoard(tmp_path / "fit", write_graph=True)])
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())


def cnn_graph(backend_name="keras"):
    """The graph ``model_graph`` gives of a small CNN in eval mode (as ``write_graph=True`` writes it) on
    ``backend_name``, as {node name: [op, inputs]}, whether a trace in train mode left the state as it was
    (batch norm's statistics unassigned; a traced value left in a variable would fail to convert to NumPy), and
    the graph of ``TwoInputs`` on its two inputs (``two_inputs``, as {node name: [op, inputs]}).
    Also run in a fresh interpreter for Keras on JAX (tests/backends/test_keras_jax.py) and on torch
    (tests/test_examples.py, with the other Keras-on-torch checks)."""
    from tensorboard.compat.proto import graph_pb2

    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Conv2d(1, 2, 3), ud.nn.BatchNorm2d(2), ud.nn.ReLU(), ud.nn.Flatten(),
                                 ud.nn.Linear(2 * 4 * 4, 3))
        images = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
        backend = ud.backends.load(backend_name)
        graph = graph_pb2.GraphDef.FromString(backend.model_graph(model.eval(), images))
        before = {k: np.array(v) for k, v in model.train().state_dict().items()}
        backend.model_graph(model, images)
        after = model.state_dict()
        two_inputs = graph_pb2.GraphDef.FromString(backend.model_graph(TwoInputs(), two_input_batch()))
        return dict(nodes={node.name: [node.op, list(node.input)] for node in graph.node},
                    unchanged=all(np.array_equal(v, np.asarray(after[k])) for k, v in before.items()),
                    two_inputs={node.name: [node.op, list(node.input)] for node in two_inputs.node})


def assert_cnn_graph(graph, conv, dot):
    """``cnn_graph``'s graph holds the state under its ``state_dict()`` names, the input feeding the one
    convolution (op ``conv``), one ``dot`` for the linear layer and the output, and tracing changed nothing; its
    ``TwoInputs`` graph has both inputs, each feeding its own layer's ``dot``."""
    nodes = graph["nodes"]
    for name in ("0/weight", "0/bias", "1/weight", "1/bias", "4/weight", "4/bias"):
        assert nodes.get(name) == ["Parameter", []], (name, nodes)
    for name in ("1/running_mean", "1/running_var"):
        assert nodes.get(name) == ["Buffer", []], (name, nodes)
    convolutions = [inputs for op, inputs in nodes.values() if op == conv]
    assert len(convolutions) == 1 and "input" in convolutions[0], nodes
    assert [op for op, _ in nodes.values()].count(dot) == 1, nodes
    assert nodes["input"] == ["Input", []] and nodes["output"][0] == "Output" and len(nodes["output"][1]) == 1
    assert graph["unchanged"]
    assert_two_inputs(graph["two_inputs"], "Input", dot)


class TwoInputs(ud.nn.Module):
    """``model(x, extra)``: each input through its own linear layer, then their sum."""

    def __init__(self):
        super().__init__()
        self.first = ud.nn.Linear(4, 3)
        self.second = ud.nn.Linear(2, 3)

    def forward(self, x, extra):
        return self.first(x) + self.second(extra)


def two_input_batch():
    return np.ones((1, 4), np.float32), np.ones((1, 2), np.float32)


def assert_two_inputs(nodes, input_op, dot):
    """A graph of ``TwoInputs`` ({node name: [op, inputs]}): both inputs are input nodes, in the forward's order,
    each feeding its own layer's ``dot`` (the first layer's weight and input in one, the second's in the other)."""
    assert nodes["input"][0] == input_op and nodes["input_1"][0] == input_op, nodes
    assert not any(name.startswith("input_2") for name in nodes), nodes
    fed = {}
    for name, (op, inputs) in nodes.items():
        for source in ("input", "input_1"):
            if source in inputs:
                fed.setdefault(source, []).append(op)
    assert fed.get("input") == [dot] and fed.get("input_1") == [dot], (fed, nodes)


@pytest.mark.parametrize("kwargs, message", [
    (dict(update_freq=0), "update_freq must be 'epoch', 'batch' or an integer >= 1, got 0"),
    (dict(update_freq="step"), "update_freq must be 'epoch', 'batch' or an integer >= 1, got 'step'"),
    (dict(histogram_freq=-1), "histogram_freq must be an integer >= 0"),
])
def test_bad_options_are_explained(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ud.callbacks.TensorBoard(tmp_path, **kwargs)


def test_writing_events_imports_no_framework(tmp_path):
    # tensorboard's own EventFileWriter imports TensorFlow wherever it is installed: a torch or JAX run must not
    result = run_python(
        "import json, sys, unidl as ud\n"
        f"callback = ud.callbacks.TensorBoard({str(tmp_path)!r}, update_freq=1)\n"
        "callback.on_train_begin()\n"
        "callback.on_batch_end(0, {'loss': 1.0})\n"
        "callback.on_epoch_end(0, {'loss': 1.0, 'lr': 0.1, 'val_loss': 2.0})\n"
        "callback.on_train_end()\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)))")
    assert last_json_line(result.stdout) == []
    assert [(e.step, e.value) for e in read(tmp_path / "validation").Scalars("epoch_loss")] == [(0, 2.0)]


def test_only_rank_0_of_a_data_parallel_job_writes(monkeypatch, tmp_path):
    """The logged values are already reduced across ranks; every rank writing would leave one event file per
    rank in the run's directory, which TensorBoard overlays as duplicates. (The 2-process `unidl train
    --nproc 2` test in tests/test_cli.py covers the real job; this checks the callback's own rule.)"""
    from unidl.distributed import process_group

    monkeypatch.setattr(process_group, "is_writer", lambda: False)  # as on rank 1 of a job
    callback = ud.callbacks.TensorBoard(tmp_path / "run", update_freq=1)
    callback.on_train_begin()
    callback.on_batch_end(0, {"loss": 1.0})
    callback.on_epoch_end(0, {"loss": 1.0, "val_loss": 2.0})
    callback.on_train_end()
    assert not (tmp_path / "run").exists()
