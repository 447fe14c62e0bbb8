"""What a traced step or ``ud.function`` bakes in: the ops of TensorFlow's step graph for sequence models
(a Linear on (batch, length, features) input), and the modules' train/eval mode on every backend."""

import contextvars

import numpy as np
import pytest

import unidl as ud
from tests.helpers import run_python
from unidl.testing.pytest_plugin import backends_under_test


def _step_ops(step):
    """Every op of ``step``'s traced graphs, the bodies of its conditionals included."""
    ops = []
    for concrete in step._run.concrete_functions:
        ops += concrete.graph.get_operations()
        for function in concrete.graph.as_graph_def().library.function:
            ops += [node.op for node in function.node_def]  # (types only: branch bodies are not tf.Operations)
    return ops


def test_a_0d_string_or_complex_tensor_as_a_hyperparameter_is_named_without_float_advice():
    """A 0-d TensorFlow tensor of strings given as ``lr`` is the ``ValueError`` naming it that any other tensor is
    (it was a ``TypeError``, ``byte indices must be integers``, from reading its bytes as an array); neither it nor
    a complex one is given the advice ``float(t)``, which gives no number that is taken."""
    import tensorflow as tf

    with ud.use_backend("tensorflow"):
        params = ud.nn.Linear(2, 2).parameters()
        for value, held in [(tf.constant("0.1"), "string holding b'0.1'"),
                            (tf.constant(3 + 1j), "complex128 holding (3+1j)")]:
            with pytest.raises(ValueError) as caught:
                ud.optim.SGD(params, lr=value)
            assert str(caught.value) == f"SGD lr must be a number, got a 0-d tensor of dtype {held}"


def test_tensorflow_manual_seed_gives_the_generator_tf_random_generator_from_seed_gives():
    """``ud.manual_seed`` builds the TensorFlow generator's state in NumPy (``tf.random.Generator.from_seed`` built
    it with seven eager ops, 20 ms of a fresh process's first step): the same state and algorithm, and the same
    draws, as ``from_seed``'s, when the generator is made and when a later seed resets it (a ThreeFry generator
    keeps its algorithm and two-word state)."""
    import tensorflow as tf

    with ud.use_backend("tensorflow"):
        backend = ud.backends.load("tensorflow")
        for seed in (0, 7, 2**32 - 1):
            ud.manual_seed(seed)
            expected = tf.random.Generator.from_seed(seed)
            assert backend._generator.algorithm == expected.algorithm
            np.testing.assert_array_equal(backend._generator.state.numpy(), expected.state.numpy())
            np.testing.assert_array_equal(backend._generator.normal((5,)).numpy(), expected.normal((5,)).numpy())
        kept = backend._generator
        try:
            backend._generator = tf.random.Generator.from_seed(3, alg=tf.random.Algorithm.THREEFRY)
            ud.manual_seed(11)
            expected = tf.random.Generator.from_seed(11, alg=tf.random.Algorithm.THREEFRY)
            assert backend._generator.algorithm == expected.algorithm  # (no ThreeFry kernel on a CPU to draw)
            np.testing.assert_array_equal(backend._generator.state.numpy(), expected.state.numpy())
        finally:
            backend._generator = kept


def test_tensorflow_step_multiplies_a_sequence_linear_as_one_matmul(rng):
    """A Linear on 3-D input once ran as ``tf.einsum``; with the leading sizes unknown in the graph, its weight
    gradient was an outer product per row (rank 4) summed afterwards, and the transformer step was 100x slower
    than a hand-written one (benchmarks/RESULTS.md, 2026-12-01)."""
    import tensorflow as tf

    with ud.use_backend("tensorflow"):
        model = ud.nn.Sequential(ud.nn.Linear(8, 6), ud.nn.ReLU(), ud.nn.Linear(6, 5))
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
        x, y = rng.standard_normal((2, 7, 8)).astype(np.float32), rng.standard_normal((2, 7, 5)).astype(np.float32)
        eager_loss = float(ud.nn.MSELoss()(model(ud.tensor(x)), ud.tensor(y)))
        assert float(step(x, y)) == pytest.approx(eager_loss, rel=1e-6)
    ops = _step_ops(step)
    types = [op if isinstance(op, str) else op.type for op in ops]
    assert "Einsum" not in types
    assert types.count("MatMul") == 5  # two forward, two weight gradients, the second layer's input gradient
    wide = [(op.type, out.shape) for op in ops if isinstance(op, tf.Operation) for out in op.outputs
            if out.shape.rank is not None and out.shape.rank > 3]
    assert not wide, wide


def _live_ops(step):
    """The ops of ``step``'s traced graphs that run: what the outputs and the stateful ops (variable reads and
    writes, the guarded update's ``If``) depend on. TensorFlow prunes the rest, as the NCHW op a layout-aware
    op looked through (``unidl/backends/tensorflow/layout.py``)."""
    live = []
    for concrete in step._run.concrete_functions:
        pending = [t.op for t in concrete.outputs] + [op for op in concrete.graph.get_operations()
                                                      if op.op_def.is_stateful]
        seen = set()
        while pending:
            op = pending.pop()
            if op.name not in seen:
                seen.add(op.name)
                live.append(op)
                pending += [t.op for t in op.inputs] + list(op.control_inputs)
    return live


class _ResidualNet(ud.nn.Module):
    """A stem and one ResNet basic block (``out + identity`` of two batch-normed convolutions), average pooling
    and a head."""

    def __init__(self):
        super().__init__()
        self.stem = ud.nn.Sequential(ud.nn.Conv2d(3, 4, 3, padding=1, bias=False), ud.nn.BatchNorm2d(4), ud.nn.ReLU())
        self.conv1, self.bn1 = ud.nn.Conv2d(4, 4, 3, padding=1, bias=False), ud.nn.BatchNorm2d(4)
        self.conv2, self.bn2 = ud.nn.Conv2d(4, 4, 3, padding=1, bias=False), ud.nn.BatchNorm2d(4)
        self.head = ud.nn.Linear(4, 3)

    def forward(self, x):
        identity = self.stem(x)
        out = self.bn2(self.conv2(ud.ops.relu(self.bn1(self.conv1(identity)))))
        return self.head(ud.ops.mean(ud.ops.relu(out + identity), (2, 3)))


@pytest.mark.parametrize("xla", [False, True])
@pytest.mark.parametrize("shapes", [((3,), (3,)), ((3,), (5, 3, 4)), ((5, 2, 3), (3,)), ((2, 3), (3, 4)),
                                    ((2, 1, 3, 4), (5, 4, 2))])
def test_tensorflow_matmul_traced_for_operands_of_unknown_rank_is_torch_matmul(shapes, xla):
    """In a ``tf.function`` traced for ``TensorSpec(None)`` operands (ranks unknown until run time) ``matmul``
    decides in the graph whether an operand is a vector (``tf.linalg.matmul`` refused 1-d operands at run time
    there), under XLA too; values and gradients are ``torch.matmul``'s."""
    import tensorflow as tf
    import torch

    a, b = (np.random.default_rng(i).standard_normal(s).astype(np.float32) for i, s in enumerate(shapes))
    with ud.use_backend("tensorflow"):
        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)] * 2, jit_compile=xla)
        def product_and_gradients(a, b):
            product = ud.ops.matmul(a, b)
            return (product, *tf.gradients(tf.reduce_sum(product * product), [a, b]))

        got = [ud.to_numpy(t) for t in product_and_gradients(tf.constant(a), tf.constant(b))]
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    product = torch.matmul(ta, tb)
    (product * product).sum().backward()
    for value, expected in zip(got, (product.detach().numpy(), ta.grad.numpy(), tb.grad.numpy())):
        assert value.shape == expected.shape
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


def test_tensorflow_losses_check_what_a_graph_knows_under_xla_and_take_operands_of_unknown_rank():
    """Under XLA, which runs no assertions, a loss of operands whose ranks differ (known while tracing) is unidl's
    error, the eager one naming the operands' real shapes (the trace for the call's exact shapes raises it; it
    showed the sizes known only later as "?"; the binary cross-entropy and MSE broadcast them); in a graph traced
    for operands of unknown rank the losses compute (their shape check needs the ranks)."""
    import tensorflow as tf

    logits, targets = np.zeros((3, 1), np.float32), np.ones(3, np.float32)
    with ud.use_backend("tensorflow"):
        for name, loss in (("bce_with_logits", ud.ops.bce_with_logits), ("MSELoss", ud.nn.MSELoss())):
            step = ud.function(lambda x, y: loss(x, y), jit_compile=True)
            with pytest.raises(ud.ShapeMismatchError) as caught:
                step(logits, targets)
            with pytest.raises(ud.ShapeMismatchError) as eagerly:
                loss(ud.tensor(logits), ud.tensor(targets))
            assert str(caught.value).startswith(f"{name} needs ") and "shape (3, 1)" in str(caught.value)
            assert str(caught.value) == str(eagerly.value)
        unknown = tf.function(lambda x, y: ud.ops.bce_with_logits(x, y),
                              input_signature=[tf.TensorSpec(None, tf.float32)] * 2)
        np.testing.assert_allclose(unknown(tf.zeros((3, 2)), tf.ones((3, 2))).numpy(), np.log(2.0), rtol=1e-6)


#: the backends whose ``jit_compile=True`` compiles in about a second (torch.compile takes several a function)
_JIT_BACKENDS = [name for name in backends_under_test() if name != "torch"]

#: ``_checked_ops``'s arguments that pass every check, and per case the argument that fails one and the error
_GOOD = (np.array([[0, 1, 2, 3, 4], [1, 0, 0, 0, 0], [0, 0, 3, 0, 0]], np.float32), np.array([0, 1, 2]),
         np.array([0, 2]), np.array([[4], [0], [1]]), np.array([0, 3]), np.full(3, 0.5, np.float32),
         np.ones((3, 2), np.float32), np.ones((3, 1), np.float32))
_BAD = {
    "labels": (1, np.array([0, 7, 2]), ud.IndexOutOfRangeError,
               "CrossEntropyLoss labels must lie in [0, 5); found values from 0 to 7"),
    "take": (2, np.array([-1, 2]), ud.IndexOutOfRangeError,
             "take indices must lie in [0, 3); found values from -1 to 2"),
    "gather": (3, np.array([[5], [0], [1]]), ud.IndexOutOfRangeError,
               "gather index must lie in [0, 5); found values from 0 to 5"),
    "embedding": (4, np.array([4, 0]), ud.IndexOutOfRangeError,
                  "Embedding indices must lie in [0, 4); found values from 0 to 4"),
    "probabilities": (5, np.array([0.5, 1.5, 2], np.float32), ud.ValueOutOfRangeError,
                      "binary_cross_entropy probabilities must lie in [0, 1]; found 2 value(s) outside"),
    "check_values": (1, np.array([2, 1, 2]), ud.ValueOutOfRangeError, "labels must not sum to 5"),
    "broadcast": (7, np.ones((3, 2), np.float32), ud.ShapeMismatchError,
                  "mse_loss needs prediction and target of the same shape; prediction has shape (3, 1), target has "
                  "shape (3, 2)"),
    "sizes": (6, np.ones((4, 2), np.float32), ud.ShapeMismatchError,
              "mse_loss needs prediction and target of the same shape; prediction has shape (4, 1), target has "
              "shape (3, 1)"),
}


#: the cases whose inputs have other sizes (a compile each) on tensorflow, where XLA compiles for them or refuses
#: them (a plain graph of the function then finds the check); keras and jax run the others, with one compile
_RESIZED = ("broadcast", "sizes")


@pytest.mark.parametrize("backend_name", _JIT_BACKENDS)
def test_value_checks_of_a_jit_compiled_function_raise_the_eager_error(backend_name):
    """XLA runs no assertions: under ``ud.function(jit_compile=True)`` TensorFlow and Keras-on-TensorFlow clamped
    an index out of range and gave a NaN loss for a label out of range. Each value check is now an output of the
    compiled function, and a call whose check fails raises the error an eager call gives, the values found in its
    message, as JAX's checkified functions do: one compiled function, each case a call of it."""
    import unidl.ops as unidl_ops

    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        embedding = ud.nn.Embedding(4, 2)

        def checked_ops(logits, labels, take_indices, gather_index, embedding_indices, probabilities, a, b):
            return {"cross_entropy": ud.ops.cross_entropy(logits, labels),
                    "nll": ud.ops.nll_loss(ud.ops.log_softmax(logits, 1), labels),
                    "take": ud.ops.take(a, take_indices, 0), "gather": ud.ops.gather(logits, 1, gather_index),
                    "embedding": embedding(embedding_indices),
                    "bce": ud.ops.binary_cross_entropy(probabilities, probabilities * 0),
                    "mse": ud.ops.mse_loss(a[:, :1], b),
                    "labels": unidl_ops.check_values(labels, ud.ops.sum(labels) != 5, "labels must not sum to {}",
                                                     (5,))}

        compiled = ud.function(checked_ops, jit_compile=True)
        expected = checked_ops(*_GOOD)
        result = compiled(*_GOOD)
        assert sorted(result) == sorted(expected)
        for name in expected:
            np.testing.assert_allclose(ud.to_numpy(result[name]), ud.to_numpy(expected[name]), rtol=1e-6)
        for case, (position, bad, error_class, message) in _BAD.items():
            if case in _RESIZED and backend_name != "tensorflow":
                continue
            args = list(_GOOD)
            args[position] = bad
            with pytest.raises(error_class) as eagerly:
                checked_ops(*args)
            with pytest.raises(error_class) as caught:
                compiled(*args)
            assert str(eagerly.value) == str(caught.value) == message, case


_TORCH_COMPILED = [pytest.param(name, marks=pytest.mark.keras_framework("torch")) if name == "keras" else name
                   for name in backends_under_test() if name in ("torch", "keras")]


@pytest.mark.parametrize("backend_name", _TORCH_COMPILED)
def test_a_torch_compiled_function_calling_ud_ops_compiles_nothing_again_when_called_again(backend_name, monkeypatch):
    """``torch.compile`` breaks its graph where an op reads which backend is in force (a ``ContextVar``, which
    Dynamo does not trace) and compiles the rest of the op's Python on its own: that rest was compiled again at every
    call (its guards held a bound method made anew each call), for each op, until Dynamo gave up on it after eight.
    Later calls with the same inputs now run what the first ones compiled; the values are the eager ones."""
    import functools

    import torch
    from torch._dynamo.utils import counters

    # Dynamo's guards and recompiles alone, without Inductor's code generation (seconds a graph on a CPU)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))

    def masked(x, labels):
        return ud.ops.where(labels > 1, x, ud.ops.zeros_like(x))

    x, labels = np.array([1.0, -2.0, 3.0], np.float32), np.array([1, 2, 3])
    with ud.use_backend(backend_name):
        compiled = ud.function(masked, jit_compile=True)
        # (the second call may compile once more: unidl's caches of the backend's tensor types and of dtype names,
        # filled at the first call, are in the guards)
        first = [ud.to_numpy(compiled(x, labels)) for _ in range(2)]
        traced = counters["frames"]["total"]
        again = [ud.to_numpy(compiled(x, labels)) for _ in range(2)]
        assert counters["frames"]["total"] == traced
        np.testing.assert_allclose([*first, *again], [ud.to_numpy(masked(x, labels))] * 4)


@pytest.mark.parametrize("backend_name", _TORCH_COMPILED)
def test_a_torch_compiled_function_runs_its_index_checks_untraced(backend_name, monkeypatch):
    """Under ``torch.compile`` (``ud.function(jit_compile=True)``) an index check reads its values outside the
    traced graphs (``torch.compiler.disable``, applied when the function is compiled: ``untraced_checks``): traced,
    each rank, dtype and size of indices compiled the check's own graph again. No graph holds the check's aminmax;
    the values and the error are the eager ones."""
    import functools

    import torch

    from unidl.backends.torch import ops as torch_ops

    graphs = []

    def recording(graph_module, example_inputs):
        graphs.append([str(node.target) for node in graph_module.graph.nodes])
        return graph_module.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=recording))
    monkeypatch.setattr(torch_ops, "_untraced_check_index_values", None)  # (as in a fresh process)
    x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    with ud.use_backend(backend_name):
        compiled = ud.function(lambda x, indices: ud.ops.take(x, indices, axis=0) * 2, jit_compile=True)
        for indices in (np.array([3]), np.array([0, 2]), np.array([[1, 3]])):
            np.testing.assert_array_equal(ud.to_numpy(compiled(x, indices)), x[indices] * 2)
        with pytest.raises(ud.IndexOutOfRangeError, match=r"found values from 0 to 9"):
            compiled(x, np.array([0, 9]))
    assert graphs and not [graph for graph in graphs if any("aminmax" in target for target in graph)], graphs


def test_torch_ops_checking_indices_eagerly_leave_torch_dynamo_unimported():
    """``check_index`` runs its read untraced under torch.compile through ``torch.compiler.disable``, which imports
    torch._dynamo (0.8 s of CPU): applied at import, every fresh process that ran a torch op (a test's subprocess,
    a launched rank, the CLI) paid it. An eager take and Embedding forward, in a fresh interpreter, import none of
    it and still raise unidl's error."""
    out = run_python("""
import sys
import numpy as np
import unidl as ud
ud.set_backend("torch")
taken = ud.ops.take(ud.tensor([1.0, 2.0]), ud.tensor([1]))
looked = ud.nn.Embedding(4, 2)(ud.tensor(np.array([0, 3])))
try:
    ud.ops.take(ud.tensor([1.0, 2.0]), ud.tensor([2]))
except ud.IndexOutOfRangeError:
    print("raised")
print(ud.to_numpy(taken).tolist(), tuple(looked.shape), "torch._dynamo" in sys.modules)
""", env={"UNIDL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == ["raised", "[2.0]", "(2,", "2)", "False"], out.stdout


def test_a_jit_compiled_function_keeps_its_checks_after_an_export_traced_it():
    """An export (``ud.export``: ``tracing_for_export``) traces the functions a forward calls into graphs of its
    own, with no extra outputs; the jit-compiled function's kept graph, which returns its checks' report beside the
    result, keeps them: a later call gives the result alone and still raises (the export's trace dropped them, so
    the call gave a tuple and checked nothing)."""
    import tensorflow as tf

    from unidl.backends.tensorflow.layout import tracing_for_export

    with ud.use_backend("tensorflow"):
        ud.manual_seed(0)
        embedding = ud.nn.Embedding(4, 2)
        look = ud.function(lambda indices: embedding(indices) * 2, jit_compile=True)
        expected = ud.to_numpy(look(np.array([1, 2])))
        with tracing_for_export():  # (as ud.export traces a forward that calls it)
            tf.function(lambda indices: look(indices)).get_concrete_function(tf.TensorSpec([None], tf.int64))
        np.testing.assert_array_equal(ud.to_numpy(look(np.array([1, 2]))), expected)
        with pytest.raises(ud.IndexOutOfRangeError, match=r"found values from 1 to 9"):
            look(np.array([1, 9]))


def test_an_xla_failure_other_than_sizes_does_not_run_the_function_again():
    """Where XLA refuses sizes that do not fit, the call is made again through a plain graph to raise the size
    check's error; another failure of XLA's (an op it cannot compile) is raised as it is, without running the
    function through that plain graph (which wrote its state a second time: here, a Python call counted)."""
    import tensorflow as tf

    runs = []

    def counted(a, b):
        ran = tf.numpy_function(lambda: np.float32(len(runs.append(1) or runs)), [], tf.float32)
        return ud.ops.maximum(a, b) + ran

    with ud.use_backend("tensorflow"):
        compiled = ud.function(counted, jit_compile=True)
        with pytest.raises(tf.errors.InvalidArgumentError):
            compiled(np.ones(3, np.float32), np.ones(3, np.float32))
    assert runs == []


@pytest.mark.parametrize("backend_name", [name for name in _JIT_BACKENDS if name != "keras"])
def test_a_jit_compiled_functions_checks_reach_the_graph_that_calls_it_and_its_gradient(backend_name):
    """A jit-compiled function called while another graph is traced (a plain ``ud.function``, a jit-compiled one)
    hands its checks to that graph, whose call raises the eager error, as does a plain one called in a jit-compiled
    one (its Asserts failed XLA's compile), a check inside a gradient taken in a jit-compiled function and a train
    step whose loss calls a jit-compiled function (its weights unchanged); passing calls give torch's values and
    gradients. (Keras-on-TensorFlow's functions are the same ``GraphFunction``.)"""
    import torch

    logits, labels, (_, bad, _, message) = _GOOD[0], _GOOD[1], _BAD["labels"]
    with ud.use_backend(backend_name):
        inner = ud.function(lambda x, y: ud.ops.cross_entropy(x, y), jit_compile=True)
        plain_inner = ud.function(lambda x, y: ud.ops.cross_entropy(x, y))
        plain = ud.function(lambda x, y: inner(x, y) * 2)
        compiled = ud.function(lambda x, y: (inner(x, y) * 2, ud.grad(lambda z: ud.ops.cross_entropy(z, y))(x)),
                               jit_compile=True)
        around_plain = ud.function(lambda x, y: plain_inner(x, y) * 2, jit_compile=True)
        for outer in (plain, compiled, around_plain):
            with pytest.raises(ud.IndexOutOfRangeError) as caught:
                outer(logits, bad)
            assert str(caught.value) == message
        value, found = compiled(logits, labels)
        values = [float(ud.to_numpy(outer(logits, labels))) for outer in (plain, around_plain)]
        values.append(float(ud.to_numpy(value)))
        found = ud.to_numpy(found)

        class Loss(ud.nn.Module):
            def forward(self, prediction, target):
                return inner(prediction, target)

        model = ud.nn.Linear(5, 5)
        weight = ud.to_numpy(model.weight).copy()
        step = ud.train_step(model, Loss(), ud.optim.SGD(model.parameters(), lr=0.1))
        with pytest.raises(ud.IndexOutOfRangeError) as caught:
            step(logits, bad)
        assert str(caught.value) == message
        np.testing.assert_array_equal(ud.to_numpy(model.weight), weight)
    x = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(x, torch.tensor(labels))
    loss.backward()
    np.testing.assert_allclose(values, [2 * loss.item()] * 3, rtol=1e-6)
    np.testing.assert_allclose(found, x.grad.numpy(), rtol=1e-5, atol=1e-7)


def _flat_state(optimizer) -> list:
    """The step count and every slot of ``optimizer``'s state dict, as arrays in one list."""
    state = optimizer.state_dict()
    return [np.asarray(state["step"])] + [np.asarray(slots[name]) for slots in state["slots"] for name in sorted(slots)]


@pytest.mark.parametrize("backend_name", _JIT_BACKENDS)
def test_a_jit_compiled_step_whose_check_fails_updates_no_weight(backend_name):
    """A step written in ``ud.function(jit_compile=True)`` (gradients, ``opt.apply``) whose index is out of range
    raises its error and leaves every weight and the optimizer's state bit for bit as they were, as an eager step
    and JAX's checkified one (TensorFlow's XLA ran the graph whole before its checks were read: SGD updated with
    the clamped index). The BatchNorm's running statistics, which its forward writes after the failed check, were
    kept on JAX, whose checkified step held back the optimizer's update alone; now they stay as they were on every
    backend, as eagerly (a write after a failed check stands not)."""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        embedding, norm = ud.nn.Embedding(4, 5), ud.nn.BatchNorm1d(5)
        params = [*embedding.parameters(), *norm.parameters()]
        optimizer = ud.optim.SGD(params, lr=0.1, momentum=0.9)

        def step(tokens, labels):
            loss, grads = ud.value_and_grad(lambda: ud.ops.cross_entropy(norm(embedding(tokens)), labels), params)()
            optimizer.apply(grads)
            return loss

        compiled = ud.function(step, jit_compile=True)
        compiled(np.array([0, 1, 2]), np.array([0, 1, 2]))
        weights, state = [ud.to_numpy(p).copy() for p in params], _flat_state(optimizer)
        statistics = ud.to_numpy(norm.running_mean).copy()
        with pytest.raises(ud.IndexOutOfRangeError, match="Embedding indices must lie in"):
            compiled(np.array([0, 9, 2]), np.array([0, 1, 2]))
        for before, after in zip(weights + state, [ud.to_numpy(p) for p in params] + _flat_state(optimizer)):
            np.testing.assert_array_equal(after, before)
        # (written after the failed check: undone on every backend, as eagerly; test_..._made_before_it)
        np.testing.assert_array_equal(ud.to_numpy(norm.running_mean), statistics)


@pytest.mark.keras_framework("tensorflow")  # (XLA's while loops on TensorFlow; a JAX host runs them eagerly)
@pytest.mark.parametrize("backend_name", [name for name in _JIT_BACKENDS if name != "jax"])
def test_a_loop_of_steps_under_xla_updates_nothing_after_a_check_failed_in_an_earlier_iteration(backend_name):
    """A ``while`` over optimizer steps in a jit-compiled function whose first iteration has a label out of range:
    the call raises, and the later iterations' updates wait for the earlier iterations' checks too, so the weights
    stay as they were, as eagerly (the second iteration's update was applied). (JAX runs such a function
    eagerly.)"""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        linear = ud.nn.Linear(3, 4)
        params = list(linear.parameters())
        optimizer = ud.optim.SGD(params, lr=0.1, momentum=0.9)
        x = np.ones((2, 3), np.float32)

        def steps(x, labels):
            i = ud.ops.sum(labels) * 0
            while i < 2:
                y = labels[i]
                _, grads = ud.value_and_grad(lambda: ud.ops.cross_entropy(linear(x), y), params)()
                optimizer.apply(grads)
                i = i + 1
            return i

        compiled = ud.function(steps, jit_compile=True)
        compiled(x, np.array([[0, 1], [1, 2]]))
        weights = [ud.to_numpy(p).copy() for p in params]
        with pytest.raises(ud.IndexOutOfRangeError, match=r"found values from 0 to 9"):
            compiled(x, np.array([[0, 9], [1, 2]]))
        for before, param in zip(weights, params):
            np.testing.assert_array_equal(ud.to_numpy(param), before)


def test_sizes_xla_refuses_in_its_own_words_and_long_size_checks_in_branches_raise_the_eager_error():
    """XLA refuses sizes that do not fit while it compiles, in words of its own per op (a convolution's channels,
    a cross-entropy's rows, a stack): the call raises the eager ``ShapeMismatchError`` (the function traced again
    for the call's sizes, in a graph that never runs). A size check inside an ``if`` on a tensor under XLA hands
    its sizes out of the branch, twenty for a join of five 4-D tensors (a program refused before; past 32 a
    branch hands out 32 and shows the rest as "?")."""
    with ud.use_backend("tensorflow"):
        ud.manual_seed(0)
        conv = ud.nn.Conv2d(3, 4, 3)
        cases = {"conv": (lambda x: conv(x), (np.ones((1, 2, 5, 5), np.float32),)),
                 "cross_entropy": (lambda logits, labels: ud.ops.cross_entropy(logits, labels),
                                   (np.ones((2, 3), np.float32), np.array([0, 1, 2]))),
                 "stack": (lambda a, b: ud.ops.stack([a, b]), (np.ones((2, 3), np.float32),
                                                             np.ones((2, 4), np.float32)))}
        for name, (fn, args) in cases.items():
            with pytest.raises(ud.ShapeMismatchError) as eagerly:
                fn(*args)
            with pytest.raises(ud.ShapeMismatchError) as caught:
                ud.function(fn, jit_compile=True)(*args)
            assert str(caught.value) == str(eagerly.value), name

        def joined(count, *parts):
            out = parts[0]
            if ud.ops.sum(count) > 0:
                out = ud.ops.concat(parts, 1)
            return out

        compiled = ud.function(joined, jit_compile=True)
        parts = [np.ones((1, 2, 3, 4), np.float32) * k for k in range(5)]
        np.testing.assert_array_equal(ud.to_numpy(compiled(np.ones(1), *parts)), np.concatenate(parts, 1))
        bad = parts[:4] + [np.ones((1, 2, 3, 5), np.float32)]
        with pytest.raises(ud.ShapeMismatchError) as eagerly:
            joined(np.ones(1), *bad)
        with pytest.raises(ud.ShapeMismatchError) as caught:
            compiled(np.ones(1), *bad)
        assert str(caught.value) == str(eagerly.value)
        many = [np.ones((1, 2, 3, 4), np.float32)] * 8 + [np.ones((1, 2, 3, 5), np.float32)]
        with pytest.raises(ud.ShapeMismatchError) as eagerly:
            joined(np.ones(1), *many)
        with pytest.raises(ud.ShapeMismatchError) as caught:  # (36 sizes: XLA's refusal, then the trace's check)
            ud.function(joined, jit_compile=True)(np.ones(1), *many)
        assert str(caught.value) == str(eagerly.value)


class _ChecksInControlFlow(ud.nn.Module):
    """Cross-entropies inside an ``if`` on a tensor and inside a ``while`` over one (AutoGraph's ``tf.cond`` and
    ``tf.while_loop`` on tensorflow), the loop's inside a branch of its own; without the loop where ``loop`` is
    False (XLA differentiates no loop of unknown length: TensorFlow's "requires a fixed tensor list size")."""

    def __init__(self, loop: bool = True):
        super().__init__()
        self.loop = loop

    def forward(self, logits, labels, count):
        total = ud.ops.sum(logits) * 0
        if ud.ops.sum(logits) > 0:
            total = total + ud.ops.cross_entropy(logits, labels)
        else:
            total = total - 1.0
        step = count * 0
        while self.loop and step < count:
            if step > 0:
                total = total + ud.ops.cross_entropy(logits * 2, labels)
            step = step + 1
        return total


@pytest.mark.parametrize("backend_name", _JIT_BACKENDS)
def test_value_checks_inside_control_flow_of_a_jit_compiled_function_raise_the_eager_error(backend_name):
    """A check inside a ``tf.cond`` branch or a loop's body of an XLA graph fell back to an ``Assert``, which XLA
    dropped: a label out of range gave a NaN loss. Each branch and body now hands its checks out through the op
    (a branch as one more output, a body as one more loop variable keeping the first failure), and the call
    raises the eager error where the branch or iteration that holds the check ran, and only there; the gradient
    through them is torch's."""
    import torch

    logits, labels, (_, bad, _, message) = _GOOD[0], _GOOD[1], _BAD["labels"]
    with ud.use_backend(backend_name):
        checked = _ChecksInControlFlow()
        compiled = ud.function(checked, jit_compile=True)
        branch_only = _ChecksInControlFlow(loop=False)
        gradient = ud.function(lambda x, y, n: ud.grad(lambda z: branch_only(z, y, n))(x), jit_compile=True)
        value, found = compiled(logits, labels, np.array(2)), gradient(logits, labels, np.array(2))
        for args in ((logits, bad, np.array(0)), (-logits, bad, np.array(2))):
            with pytest.raises(ud.IndexOutOfRangeError) as eagerly:
                checked(*args)
            with pytest.raises(ud.IndexOutOfRangeError) as caught:
                compiled(*args)
            assert str(eagerly.value) == str(caught.value) == message
        for args in ((-logits, bad, np.array(1)), (-logits, bad, np.array(0))):  # the checks' code never ran
            assert float(ud.to_numpy(compiled(*args))) == float(ud.to_numpy(checked(*args)))
        found, value = ud.to_numpy(found), float(ud.to_numpy(value))
    x = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(x, torch.tensor(labels))
    expected.backward()
    looped = expected.item() + torch.nn.functional.cross_entropy(x * 2, torch.tensor(labels)).item()
    assert value == pytest.approx(looped, rel=1e-6)
    np.testing.assert_allclose(found, x.grad.numpy(), rtol=1e-5, atol=1e-7)


def _walk(x, count):
    """Steps along ``x`` while its value plus the step is below ``count``: the loop's condition reads ``x`` at an
    index that leaves its range after a few iterations where ``x`` holds ones."""
    i = count * 0
    while ud.ops.take(x, i) + ud.ops.cast(i, "float32") < ud.ops.cast(count, "float32"):
        i = i + 1
    return i


def _shifted_labels(logits, labels, count):
    """Counts while a cross-entropy of ``labels + i`` (its label check in the loop's condition) is finite."""
    i = count * 0
    while ud.ops.cross_entropy(logits, labels + i) * 0 + ud.ops.cast(i, "float32") < ud.ops.cast(count, "float32"):
        i = i + 1
    return i


def _bounded_walk(x, count):
    """``_walk`` with the index check behind ``and`` (AutoGraph's ``tf.cond`` inside the loop's condition)."""
    i = count * 0
    while i < count and ud.ops.take(x, i) > 0:
        i = i + 1
    return i


@pytest.mark.keras_framework("tensorflow")  # (XLA's while loops on TensorFlow; a JAX host runs them eagerly)
@pytest.mark.parametrize("backend_name", [name for name in _JIT_BACKENDS if name != "jax"])
def test_value_checks_in_a_while_loops_condition_under_xla_raise_the_eager_error(backend_name):
    """A check in a ``while`` loop's condition (an index that leaves its range after some iterations, labels
    shifted out of range, a check behind ``and``) under XLA was dropped: the loop ran on with the index clamped
    (or the loss NaN) and the call returned. The condition now stops the loop where its check fails and is run
    once more after the loop for the call to raise the eager error; passing calls return the eager count. (JAX
    runs such a function eagerly.)"""
    logits, labels = _GOOD[0], _GOOD[1]
    with ud.use_backend(backend_name):
        cases = [(_walk, (np.array([1, 3, 0], np.float32), np.array(3)), (np.ones(3, np.float32), np.array(5))),
                 (_shifted_labels, (logits, labels, np.array(2)), (logits, labels, np.array(4))),
                 (_bounded_walk, (np.array([1, 1, 0], np.float32), np.array(5)),
                  (np.ones(3, np.float32), np.array(5)))]
        for fn, good, bad in cases:
            compiled = ud.function(fn, jit_compile=True)
            assert int(ud.to_numpy(compiled(*good))) == int(ud.to_numpy(fn(*good))), fn.__name__
            with pytest.raises(ud.IndexOutOfRangeError) as eagerly:
                fn(*bad)
            with pytest.raises(ud.IndexOutOfRangeError) as caught:
                compiled(*bad)
            assert str(caught.value) == str(eagerly.value), fn.__name__


def _summed_until(x, limit):
    """Sums ``x`` along its index while the sum is below ``limit``: where ``x`` ends in zeros the index leaves its
    range in the loop's body (its condition reads only the sum)."""
    i, total = ud.ops.sum(x) * 0, ud.ops.sum(x) * 0
    while total < limit:
        total = total + ud.ops.take(x, ud.ops.cast(i, "int32"))
        i = i + 1
    return total


@pytest.mark.keras_framework("tensorflow")  # (XLA's while loops on TensorFlow; a JAX host runs them eagerly)
@pytest.mark.parametrize("backend_name", [name for name in _JIT_BACKENDS if name != "jax"])
def test_a_check_failed_in_a_while_loops_body_under_xla_ends_the_loop(backend_name):
    """A check that fails in a ``while`` loop's body (an index out of range) ends the loop under XLA, as the eager
    loop raised there: XLA ran the body on with the index clamped, the read zero kept the sum below its limit, and
    the call never returned. It now raises the eager error (run in a thread, so that a loop that never ends fails
    the test instead of hanging it); a passing call returns the eager sum. (JAX runs such a function eagerly.)"""
    import contextvars
    import threading

    x, passing, failing = np.array([1, 0], np.float32), np.array(1, np.float32), np.array(3, np.float32)
    with ud.use_backend(backend_name):
        compiled = ud.function(_summed_until, jit_compile=True)
        assert float(ud.to_numpy(compiled(x, passing))) == float(ud.to_numpy(_summed_until(x, passing)))
        with pytest.raises(ud.IndexOutOfRangeError) as eagerly:
            _summed_until(x, failing)
        outcome: list = []

        def call():
            try:
                outcome.append(compiled(x, failing))
            except Exception as error:  # (the error the call raised, read below)
                outcome.append(error)

        context = contextvars.copy_context()  # (the thread runs with this one's backend)
        worker = threading.Thread(target=context.run, args=(call,), daemon=True)
        worker.start()
        worker.join(120)
        assert not worker.is_alive(), "the jit-compiled loop did not end"
        assert isinstance(outcome[0], ud.IndexOutOfRangeError), outcome
        assert str(outcome[0]) == str(eagerly.value)


def test_value_checks_in_switch_case_and_case_branches_under_xla_raise_the_eager_error():
    """A check inside a ``tf.switch_case`` branch (TensorFlow's ``Case`` op) under XLA was dropped: a label out of
    range gave a NaN loss. Its branches now hand their checks out, as a ``tf.cond``'s do (``tf.case``, nested
    ``tf.cond``s, did already): the call raises the eager error where the branch that holds the check ran, and
    only there."""
    import tensorflow as tf

    logits, labels, (_, bad, _, message) = _GOOD[0], _GOOD[1], _BAD["labels"]

    def switched(logits, labels, k):
        return tf.switch_case(tf.cast(ud.ops.sum(k), tf.int32),
                              [lambda: ud.ops.sum(logits), lambda: ud.ops.cross_entropy(logits, labels)])

    def cased(logits, labels, k):
        return tf.case([(ud.ops.sum(k) > 0, lambda: ud.ops.cross_entropy(logits, labels))],
                       default=lambda: ud.ops.sum(logits))

    with ud.use_backend("tensorflow"):
        for fn in (switched, cased):
            compiled = ud.function(fn, jit_compile=True)
            expected = float(ud.to_numpy(ud.ops.cross_entropy(logits, labels)))
            assert float(ud.to_numpy(compiled(logits, labels, np.array(1)))) == pytest.approx(expected, rel=1e-6)
            assert float(ud.to_numpy(compiled(logits, bad, np.array(0)))) == float(logits.sum())  # (not run)
            with pytest.raises(ud.IndexOutOfRangeError) as caught:
                compiled(logits, bad, np.array(1))
            assert str(caught.value) == message, fn.__name__


class _WritesAroundACheck:
    """The fixture of the tests of a failed check's writes, made on the backend in force: a BatchNorm1d(3) in
    training and an Embedding(4, 3, max_norm=0.5), an input ``x``, and two functions of ``(x, rows, index)`` whose
    ``index`` is checked after the BatchNorm and the Embedding wrote (``write_before_the_check``) or before the
    BatchNorm (``check_before_the_write``); ``state()`` the two modules' state dicts as NumPy copies, ``load`` one
    back. Plain functions, not methods: a test tells the two apart by identity and names them by ``__name__``."""

    def __init__(self):
        ud.manual_seed(0)
        norm, embedding = ud.nn.BatchNorm1d(3), ud.nn.Embedding(4, 3, max_norm=0.5)
        self.x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)

        def write_before_the_check(x, rows, index):
            return ud.ops.take(norm(x) + embedding(rows), index, 0)

        def check_before_the_write(x, rows, index):
            return norm(ud.ops.take(x, index, 0)) + ud.ops.sum(embedding(rows), 0)

        def state():
            return [{key: ud.to_numpy(value).copy() for key, value in module.state_dict().items()}
                    for module in (norm, embedding)]

        def load(saved):
            for module, values in zip((norm, embedding), saved):
                module.load_state_dict(values)

        self.write_before_the_check, self.check_before_the_write = write_before_the_check, check_before_the_write
        self.state, self.load = state, load


@pytest.mark.parametrize("backend_name", _JIT_BACKENDS)
def test_a_jit_compiled_call_whose_check_fails_keeps_the_writes_an_eager_call_made_before_it(backend_name):
    """Under XLA the graph runs whole before its checks are read: a call whose index was out of range kept the
    running statistics (and ``num_batches_tracked``) its BatchNorm wrote, before the failed check or after it, and
    the rows an Embedding's ``max_norm`` wrote into its weight; then every write was undone, those before the
    check too, which an eager call (and a plain graph) keeps; JAX's checkified call (and Keras-on-JAX's) kept
    the statistics written after it. A write now stands where every check before it, in
    program order, held: the call raises and leaves each variable as the same function run eagerly leaves it, the
    writes before the failed check made and those after it not; a passing call writes what an eager call does."""
    with ud.use_backend(backend_name):
        writes = _WritesAroundACheck()
        x, state, load = writes.x, writes.state, writes.load
        before_the_check, after_the_check = writes.write_before_the_check, writes.check_before_the_write

        def failed(function, before):
            load(before)
            with pytest.raises(ud.IndexOutOfRangeError, match="found values from 0 to 9"):
                function(x, np.array([0, 1, 2, 3]), np.array([0, 1, 9]))
            return state()

        for fn in (before_the_check, after_the_check):
            compiled = ud.function(fn, jit_compile=True)
            start = state()
            fn(x, np.array([0, 1, 2, 3]), np.array([0, 1, 2]))
            eager = state()
            load(start)
            compiled(x, np.array([0, 1, 2, 3]), np.array([0, 1, 2]))
            for found, expected in zip(state(), eager):
                for key in expected:
                    np.testing.assert_allclose(found[key], expected[key], rtol=1e-6, err_msg=key)
            assert int(eager[0]["num_batches_tracked"]) == int(start[0]["num_batches_tracked"]) + 1
            grown = state()
            grown[1]["weight"] = grown[1]["weight"] * 4  # (rows that max_norm renormalizes again)
            load(grown)
            before = state()
            eager, jit = failed(fn, before), failed(compiled, before)
            for found, expected, was in zip(jit, eager, before):
                for key in expected:
                    if np.array_equal(expected[key], was):  # (eager wrote it after the check, or never)
                        np.testing.assert_array_equal(found[key], was, err_msg=f"{fn.__name__}: {key}")
                    else:  # (written before the check: XLA's own arithmetic, to rounding)
                        assert not np.array_equal(found[key], was), f"{fn.__name__}: {key} undone"
                        np.testing.assert_allclose(found[key], expected[key], rtol=1e-6,
                                                   err_msg=f"{fn.__name__}: {key}")
            changed = [key for key in eager[0] if not np.array_equal(eager[0][key], before[0][key])]
            assert changed == (["running_mean", "running_var", "num_batches_tracked"]
                               if fn is before_the_check else []), changed
            if fn is before_the_check:  # (a plain graph's Asserts order it so: the same writes)
                for found, expected in zip(failed(ud.function(fn), before), eager):
                    for key in expected:
                        np.testing.assert_allclose(found[key], expected[key], rtol=1e-6, err_msg=key)
                assert not np.array_equal(eager[1]["weight"], before[1]["weight"])  # (max_norm's rows, kept)


def test_a_users_own_tensorflow_graph_gets_no_ordering_of_unidls():
    """unidl puts the writes and assertions of its own graphs' ``tf.cond`` branches in program order (control
    edges, ``xla_checks.in_program_order``), through its wrapper of TensorFlow's ``cond_v2``; a user's own
    ``tf.function`` in the same process, traced after a graph of unidl's, is left as TensorFlow makes it: its
    branch's assignment waits for no assertion of unidl's making."""
    import tensorflow as tf

    with ud.use_backend("tensorflow"):
        ud.function(lambda a: ud.ops.take(a, ud.tensor(np.array([0]))))(np.ones(3, np.float32))
    variable, graphs = tf.Variable(0.0), []

    @tf.function
    def users(x):
        def branch():
            graphs.append(tf.compat.v1.get_default_graph())
            tf.debugging.assert_positive(x)
            variable.assign_add(1.0)
            return x

        return tf.cond(x > -5.0, branch, lambda: x)

    users.get_concrete_function(tf.TensorSpec([], tf.float32))
    assignments = [op for graph in graphs for op in graph.get_operations() if op.type == "AssignAddVariableOp"]
    assert len(assignments) == 1 and not assignments[0].control_inputs, \
        [op.type for op in assignments[0].control_inputs]


@pytest.mark.keras_framework("tensorflow")  # (a plain TensorFlow graph's Assert ops; a JAX host jits)
@pytest.mark.parametrize("backend_name", [name for name in _JIT_BACKENDS if name != "jax"])
def test_a_plain_graph_whose_check_fails_keeps_exactly_the_writes_an_eager_call_made_before_it(backend_name):
    """A plain ``ud.function`` (no XLA) on TensorFlow and Keras-on-TensorFlow: its checks are ``Assert`` ops, and
    TensorFlow orders stateful ops only per resource, so an index out of range before a BatchNorm in training
    still counted ``num_batches_tracked`` (its increment waited for no assertion), which the eager call, raising
    at the index, leaves. Each write now waits for the assertions made before it and each assertion for the
    writes before it: a failed call leaves every variable bit for bit as the same function run eagerly leaves
    it, with the check after the BatchNorm (its statistics and count written) or before it (nothing written);
    each order over several calls, as the graph's scheduling could differ from one run to the next."""
    with ud.use_backend(backend_name):
        writes = _WritesAroundACheck()
        x, state, load, rows = writes.x, writes.state, writes.load, np.array([0, 1, 2, 3])
        write_before_the_check, check_before_the_write = writes.write_before_the_check, writes.check_before_the_write

        for fn in (write_before_the_check, check_before_the_write):
            graph = ud.function(fn)
            graph(x, rows, np.array([0, 1, 2]))  # (traced)
            grown = state()
            grown[1]["weight"] = grown[1]["weight"] * 4  # (rows that max_norm renormalizes again)
            for _ in range(5):
                load(grown)
                with pytest.raises(ud.IndexOutOfRangeError, match="found values from 0 to 9"):
                    fn(x, rows, np.array([0, 1, 9]))
                eager = state()
                load(grown)
                with pytest.raises(ud.IndexOutOfRangeError, match="found values from 0 to 9"):
                    graph(x, rows, np.array([0, 1, 9]))
                for found, expected in zip(state(), eager):
                    for key in expected:
                        np.testing.assert_array_equal(found[key], expected[key], err_msg=f"{fn.__name__}: {key}")
            counted = int(eager[0]["num_batches_tracked"]) - int(grown[0]["num_batches_tracked"])
            assert counted == (1 if fn is write_before_the_check else 0), fn.__name__


def _label_step_model():
    """``(model, x, good labels, bad labels)`` of the tests of a train step whose label is out of range: a
    BatchNorm1d between two Linears (its statistics and ``num_batches_tracked`` written by the forward, before the
    loss reads the labels), made on the backend in force; ``bad`` holds a 7 of 3 classes."""
    ud.manual_seed(0)
    model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.BatchNorm1d(4), ud.nn.ReLU(), ud.nn.Linear(4, 3))
    x = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    return model, x, np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 7, 0, 1, 2])


def _eager_arithmetic_is_not_the_compiled(backend_name) -> bool:
    """Whether ``ud.train_step(eager=True)`` on ``backend_name`` in this process computes a BatchNorm's statistics
    with other roundings than the compiled step: on Keras-on-JAX the eager forward runs Keras's ops one by one and
    the compiled step has XLA fuse them (a running mean one unit in the last place apart, in passing calls too),
    where the jax backend runs its batch norm as one compiled op eagerly too."""
    if backend_name != "keras":
        return False
    import keras

    return keras.backend.backend() == "jax"


def _torchs_writes_before_a_failed_label_check(state, x, labels) -> dict:
    """The state dict of ``_label_step_model``'s model in torch, loaded from ``state`` (a state dict as NumPy
    arrays), after its forward in training and a cross-entropy whose label is out of range, which raises."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    model.load_state_dict({key: torch.tensor(value) for key, value in state.items()})
    with pytest.raises(IndexError):
        torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(labels))
    return {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("backend_name", _JIT_BACKENDS)
def test_a_train_step_whose_label_is_out_of_range_keeps_the_forwards_writes_as_eagerly(backend_name):
    """``ud.train_step`` whose label check, in the loss, fails: eagerly, as in torch, the forward's BatchNorm wrote
    its statistics and ``num_batches_tracked`` before the loss read the labels and raised, and no weight changed.
    The compiled step now leaves the same state: TensorFlow's and Keras-on-TensorFlow's graphs bit for bit as their
    eager step (the label's ``Assert`` waits for the forward's writes, the update for the ``Assert``:
    ``test_a_train_steps_graph_orders_its_writes_and_checks``), and Keras-on-JAX's jitted step, which gave back the
    whole state it was given, the statistics too, keeps them; so do the jax backend's and Keras-on-JAX's eager
    steps, whose check raised inside ``jax.value_and_grad`` and dropped the forward's new state with it. On every
    framework each step's failed call writes exactly the statistics its passing call writes (bit for bit: the
    forward reads no label) and nothing else, the eager step's those of the compiled step (bit for bit; on
    Keras-on-JAX to one unit in the last place, as their passing calls: ``_eager_arithmetic_is_not_the_compiled``),
    and they are torch's (1e-6 relative: another framework's arithmetic; ``num_batches_tracked`` exactly). Run
    under every Keras framework by scripts/run-tests.sh."""
    with ud.use_backend(backend_name):
        model, x, good, bad = _label_step_model()

        def state():
            return {key: ud.to_numpy(value).copy() for key, value in model.state_dict().items()}

        steps = [ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1),
                               eager=eager) for eager in (True, False)]
        for step in steps:
            step(x, good)  # (the graph traced)
        before = state()
        found, passed = [], []
        for step in steps:
            for _ in range(3):  # (each call from the same state: the graph's scheduling may differ between runs)
                model.load_state_dict(before)
                with pytest.raises(ud.IndexOutOfRangeError):
                    step(x, bad)
                found.append(state())
            model.load_state_dict(before)
            step(x, good)
            passed.append(state())
        first = found[0]  # (the eager step's first call)
        for index, other in enumerate(found[1:], 1):
            for key in first:
                if index >= 3 and first[key].dtype.kind == "f" and _eager_arithmetic_is_not_the_compiled(backend_name):
                    np.testing.assert_array_max_ulp(other[key], first[key], maxulp=1)
                else:
                    np.testing.assert_array_equal(other[key], first[key], err_msg=key)
        changed = changed_by(before, first)
        assert sorted(changed) == ["1.num_batches_tracked", "1.running_mean", "1.running_var"], changed
        assert int(first["1.num_batches_tracked"]) == int(before["1.num_batches_tracked"]) + 1
        for index, failed in enumerate(found):  # (the forward's writes, exactly; nothing else)
            for key in failed:
                expected = passed[index // 3][key] if key in changed else before[key]
                np.testing.assert_array_equal(failed[key], expected, err_msg=f"step {index // 3}: {key}")
        torchs = _torchs_writes_before_a_failed_label_check(before, x, bad)
        for key in changed:
            np.testing.assert_allclose(first[key], torchs[key], rtol=1e-6, atol=0, err_msg=key)


class _IndexedAfterANorm(ud.nn.Module):
    """A BatchNorm1d, then an Embedding looking up the step's extra input: a token out of range fails the
    forward's own index check after the BatchNorm wrote its statistics."""

    def __init__(self):
        super().__init__()
        self.bn, self.embed, self.head = ud.nn.BatchNorm1d(3), ud.nn.Embedding(5, 3), ud.nn.Linear(3, 2)

    def forward(self, x, tokens):
        return self.head(self.bn(x) + ud.ops.sum(self.embed(tokens), axis=1))


@pytest.mark.parametrize("backend_name", _JIT_BACKENDS)
def test_a_train_step_whose_forward_check_fails_keeps_the_writes_made_before_it(backend_name):
    """``ud.train_step`` whose forward fails its own index check (an Embedding's token out of range) after a
    BatchNorm: as torch's eager step, the eager and the compiled step keep the statistics and
    ``num_batches_tracked`` the BatchNorm wrote and change nothing else, each as its passing call writes them (the
    jax backend's and Keras-on-JAX's eager steps dropped them: the check raised inside ``jax.value_and_grad``)."""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        model = _IndexedAfterANorm()
        x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
        labels, good, bad = np.array([0, 1, 0, 1]), np.array([[0, 4]] * 4), np.array([[0, 9]] * 4)

        def state():
            return {key: ud.to_numpy(value).copy() for key, value in model.state_dict().items()}

        before = state()
        for eager in (True, False):
            model.load_state_dict(before)
            step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1),
                                 eager=eager)
            with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 5\)"):
                step(x, labels, bad)
            failed = state()
            model.load_state_dict(before)
            step(x, labels, good)
            passed = state()
            changed = changed_by(before, failed)
            assert sorted(changed) == ["bn.num_batches_tracked", "bn.running_mean", "bn.running_var"], (eager, changed)
            assert int(failed["bn.num_batches_tracked"]) == int(before["bn.num_batches_tracked"]) + 1
            for key in changed:
                np.testing.assert_array_equal(failed[key], passed[key], err_msg=f"eager={eager}: {key}")


class _RaisingAfterANorm(ud.nn.Module):
    """A BatchNorm1d, then the user's own exception (``error``, where set) raised by the forward after the
    BatchNorm wrote its statistics."""

    def __init__(self):
        super().__init__()
        self.bn, self.head, self.error = ud.nn.BatchNorm1d(3), ud.nn.Linear(3, 2), None

    def forward(self, x):
        normed = self.bn(x)
        if self.error is not None:
            raise self.error
        return self.head(normed)


@pytest.mark.parametrize("backend_name", backends_under_test())
def test_a_train_step_whose_forward_raises_the_users_error_keeps_the_writes_made_before_it(backend_name):
    """The case of ``test_a_train_step_whose_forward_check_fails_keeps_the_writes_made_before_it`` where the forward
    raises the user's own exception after the BatchNorm: ``ud.train_step(eager=True)`` raises that very exception
    and keeps the statistics and ``num_batches_tracked`` the BatchNorm wrote, each as its passing call writes them,
    and nothing else, as torch's step. One exception instance raised at two steps of different inputs: each keeps
    its own step's writes. (Keras-on-JAX's abstract pass over the forward, before its eager step, raised the error
    there, without values, and dropped the writes; and the note of the writes, kept on the exception, wrote the
    first step's values back at the second.)"""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        model = _RaisingAfterANorm()
        x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
        labels, error = np.array([0, 1, 0, 1]), ValueError("the user's own error")

        def state():
            return {key: ud.to_numpy(value).copy() for key, value in model.state_dict().items()}

        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=True)
        step(x, labels)  # (a passing step first: the step traced, the optimizer built)
        for scale in (2.0, 3.0):  # (the same instance raised again, over other statistics)
            before = state()
            model.error = error
            with pytest.raises(ValueError) as raised:
                step(x * scale, labels)
            assert raised.value is error and str(raised.value) == "the user's own error", repr(raised.value)
            failed = state()
            model.error = None
            model.load_state_dict(before)
            step(x * scale, labels)
            passed = state()
            changed = changed_by(before, failed)
            assert sorted(changed) == ["bn.num_batches_tracked", "bn.running_mean", "bn.running_var"], (scale, changed)
            assert int(failed["bn.num_batches_tracked"]) == int(before["bn.num_batches_tracked"]) + 1
            for key in changed:
                np.testing.assert_array_equal(failed[key], passed[key], err_msg=f"x * {scale}: {key}")
            model.load_state_dict(failed)


class _RaisingOnceAfterANorm(ud.nn.Module):
    """A BatchNorm1d, then the user's own exception (``error``, where set) raised once by the forward, which clears
    it as it raises; and a Linear the forward never uses."""

    def __init__(self):
        super().__init__()
        self.bn, self.head, self.unused, self.error = ud.nn.BatchNorm1d(3), ud.nn.Linear(3, 2), ud.nn.Linear(3, 3), None
        self.tag = 0

    def forward(self, x):
        normed = self.bn(x)
        _TAG_SEEN.set(self.tag)  # (the user's own context variable, set by the forward)
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.head(normed)


_TAG_SEEN: contextvars.ContextVar = contextvars.ContextVar("test_tag_seen", default=None)


@pytest.mark.parametrize("backend_name", backends_under_test())
def test_a_train_step_whose_forward_raises_once_raises_it_and_moves_no_weight(backend_name):
    """``ud.train_step(eager=True)`` whose forward raises the user's exception once (a one-shot flag, cleared as it
    raises), under SGD with momentum and weight decay, beside a Linear the forward never uses: the step raises that
    very exception and changes no weight, and the unused Linear never moves (no gradient: PyTorch's rule), as
    torch's step. (Keras-on-JAX's abstract pass over the forward, before its eager step, met the error and kept
    every gradient; the step's forward then passed, and the step trained silently, the unused Linear moved by
    momentum and weight decay on zero gradients.)"""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        model = _RaisingOnceAfterANorm()
        x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
        labels, error = np.array([0, 1, 0, 1]), ValueError("the user's own error, once")

        def weights():
            return {name: ud.to_numpy(value).copy() for name, value in model.named_parameters()}

        unused = ud.to_numpy(model.unused.weight).copy()
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(),
                             ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1), eager=True)
        step(x, labels)  # (a passing step first: the step traced, the optimizer built)
        before = weights()
        model.error = error
        with pytest.raises(ValueError) as raised:
            step(x * 2, labels)
        assert raised.value is error, repr(raised.value)
        assert model.error is None  # (the forward ran, and raised)
        after = weights()
        assert changed_by(before, after) == [], changed_by(before, after)
        for _ in range(2):
            step(x, labels)
        trained = sorted(changed_by(before, weights()))
        assert trained == ["bn.bias", "bn.weight", "head.bias", "head.weight"], trained  # (the unused Linear: not)
        np.testing.assert_array_equal(ud.to_numpy(model.unused.weight), unused)


class _Stop(BaseException):
    """An exception outside ``Exception`` (as ``KeyboardInterrupt``), raised by a forward."""


@pytest.mark.parametrize("backend_name", backends_under_test())
def test_a_train_step_whose_forward_raises_a_base_exception_keeps_the_writes_made_before_it(backend_name):
    """``test_a_train_step_whose_forward_raises_the_users_error_keeps_the_writes_made_before_it`` for an exception
    outside ``Exception`` (a ``BaseException`` such as ``KeyboardInterrupt``): the step raises it and keeps the
    statistics and ``num_batches_tracked`` the BatchNorm wrote, as its passing call writes them, and nothing else,
    as torch's step (the jax backend's and Keras-on-JAX's eager steps noted the writes for an ``Exception`` only,
    and dropped them)."""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        model = _RaisingAfterANorm()
        x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
        labels, error = np.array([0, 1, 0, 1]), _Stop("stop")

        def state():
            return {key: ud.to_numpy(value).copy() for key, value in model.state_dict().items()}

        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=True)
        step(x, labels)
        before = state()
        model.error = error
        with pytest.raises(_Stop) as raised:
            step(x * 2, labels)
        assert raised.value is error, repr(raised.value)
        failed = state()
        model.error = None
        model.load_state_dict(before)
        step(x * 2, labels)
        passed = state()
        changed = changed_by(before, failed)
        assert sorted(changed) == ["bn.num_batches_tracked", "bn.running_mean", "bn.running_var"], changed
        for key in changed:
            np.testing.assert_array_equal(failed[key], passed[key], err_msg=key)


@pytest.mark.parametrize("backend_name", backends_under_test())
def test_a_context_variable_the_forward_sets_outlives_the_eager_train_step(backend_name):
    """A ``ContextVar`` the user's forward sets holds its value after ``ud.train_step(eager=True)``, a passing step
    and one whose forward raised, as after torch's step (Keras-on-JAX's step runs in a context of its own, for its
    own settings, and dropped the forward's with it)."""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        model = _RaisingOnceAfterANorm()
        x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
        labels = np.array([0, 1, 0, 1])
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=True)
        token = _TAG_SEEN.set(None)
        try:
            for tag in (1, 2):
                model.tag = tag
                step(x, labels)
                assert _TAG_SEEN.get() == tag, (tag, _TAG_SEEN.get())
            model.tag, model.error = 3, ValueError("raised")
            with pytest.raises(ValueError, match="raised"):
                step(x, labels)
            assert _TAG_SEEN.get() == 3, _TAG_SEEN.get()
        finally:
            _TAG_SEEN.reset(token)


@pytest.mark.keras_framework("tensorflow")
@pytest.mark.parametrize("backend_name", [name for name in _JIT_BACKENDS if name != "jax"])
def test_a_train_steps_graph_orders_its_writes_and_checks(backend_name):
    """The state ``test_a_train_step_whose_label_is_out_of_range_keeps_the_forwards_writes_as_eagerly`` finds
    after TensorFlow's and Keras-on-TensorFlow's step graph held by chance before: now by the graph, each
    assertion after the writes made before it, each write after the assertions made before it. (A TensorFlow
    graph's: collected where Keras runs on TensorFlow.)"""
    with ud.use_backend(backend_name):
        model, x, good, _ = _label_step_model()
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1))
        step(x, good)  # (the graph traced)
        graphs = step._run
        while not hasattr(graphs, "concrete_functions"):  # (Keras's: the compiled step in its wrappers)
            graphs = graphs._run
        for concrete in graphs.concrete_functions:
            _assert_writes_and_checks_in_program_order(concrete.graph)


@pytest.mark.parametrize("backend_name", [name for name in backends_under_test() if name != "keras"])
def test_an_eager_train_step_whose_label_is_out_of_range_keeps_the_forwards_writes(backend_name):
    """``ud.train_step(eager=True)``: the forward's BatchNorm wrote its statistics and ``num_batches_tracked``
    before the loss read the labels and raised, and they stand, as in torch's eager step; no weight changed. On jax
    the forward runs inside ``jax.value_and_grad`` even eagerly, and every write was put back when it raised (its
    values are had at once there, as its primal values). (Keras: Keras-on-JAX's step gives back the whole state
    it was given where a check failed, docs/guarantees.md; Keras-on-TensorFlow's eager step is the test above's.)"""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.Linear(3, 4), ud.nn.BatchNorm1d(4), ud.nn.ReLU(), ud.nn.Linear(4, 3))
        x = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=True)
        step(x, np.array([0, 1, 2, 0, 1, 2]))
        before = {key: ud.to_numpy(value).copy() for key, value in model.state_dict().items()}
        with pytest.raises(ud.IndexOutOfRangeError, match=r"must lie in \[0, 3\)"):
            step(x, np.array([0, 1, 7, 0, 1, 2]))
        after = {key: ud.to_numpy(value) for key, value in model.state_dict().items()}
        assert sorted(changed_by(before, after)) == ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
        assert int(after["1.num_batches_tracked"]) == int(before["1.num_batches_tracked"]) + 1


def _assert_writes_and_checks_in_program_order(graph):
    """Each ``Assert`` of ``graph`` runs after every variable write made before it, each write (a guarded
    update's ``If`` too) after every ``Assert`` made before it (data or control edges, directly or not)."""
    writes = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "If", "While")
    ordered = sorted((op for op in graph.get_operations() if op.type in writes or op.type == "Assert"),
                     key=lambda op: op._id)
    assert any(op.type == "Assert" for op in ordered) and any(op.type != "Assert" for op in ordered)
    for place, op in enumerate(ordered):
        ancestors, pending = set(), list(op.inputs) + list(op.control_inputs)
        while pending:
            found = pending.pop()
            found = getattr(found, "op", found)
            if found.name not in ancestors:
                ancestors.add(found.name)
                pending += [t.op for t in found.inputs] + list(found.control_inputs)
        for earlier in ordered[:place]:
            if (earlier.type == "Assert") != (op.type == "Assert") or op.type in ("If", "While"):
                assert earlier.name in ancestors, f"{op.name} ({op.type}) runs apart from {earlier.name}"


def changed_by(before, after) -> list:
    """The keys of a state dict whose values differ between ``before`` and ``after``."""
    return [key for key in after if not np.array_equal(after[key], before[key])]


@pytest.mark.keras_framework("tensorflow")  # (XLA's while loops on TensorFlow; a JAX host runs them eagerly)
@pytest.mark.parametrize("backend_name", [name for name in _JIT_BACKENDS if name != "jax"])
def test_a_jit_compiled_loop_whose_check_fails_keeps_the_earlier_iterations_writes(backend_name):
    """A ``while`` whose iterations run a BatchNorm in training and then an index, out of range in the third
    iteration: eagerly the first two iterations' statistics and the third's (made before its index) are written,
    then the call raises. Under XLA, which runs the loop to its end, the writes of the iteration after the failed
    one are undone, those before it kept: the statistics equal the eager call's, to XLA's rounding, and
    ``num_batches_tracked`` counts the eager call's three. (JAX runs such a function eagerly.)"""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        norm = ud.nn.BatchNorm1d(3)
        x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)

        def loop(x, indices):
            i = ud.ops.sum(indices) * 0
            total = ud.ops.sum(x) * 0
            while i < 4:
                total = total + ud.ops.sum(ud.ops.take(norm(x * ud.ops.cast(i + 1, "float32")), indices[i], 0))
                i = i + 1
            return total

        def state():
            return {key: ud.to_numpy(value).copy() for key, value in norm.state_dict().items()}

        compiled = ud.function(loop, jit_compile=True)
        start = state()
        compiled(x, np.array([0, 1, 2, 3]))
        results = {}
        for name, function in (("eager", loop), ("jit", compiled)):
            norm.load_state_dict(start)
            with pytest.raises(ud.IndexOutOfRangeError, match="found values from 9 to 9"):
                function(x, np.array([0, 1, 9, 3]))
            results[name] = state()
        assert int(results["eager"]["num_batches_tracked"]) == int(start["num_batches_tracked"]) + 3
        np.testing.assert_array_equal(results["jit"]["num_batches_tracked"], results["eager"]["num_batches_tracked"])
        for key in ("running_mean", "running_var"):
            np.testing.assert_allclose(results["jit"][key], results["eager"][key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("backend_name", _JIT_BACKENDS)
def test_a_jit_compiled_function_called_after_a_failed_check_of_its_caller_writes_nothing(backend_name):
    """A jit-compiled function (a BatchNorm in training) called inside another, after that one's index out of
    range: eagerly the caller raises at its index and the inner call never runs. Under XLA on TensorFlow the inner
    graph, traced and compiled once, ran whole, its own checks held, and its statistics stood; its call is now a
    write of the caller's graph, undone where a check before it failed: the state equals the eager call's."""
    with ud.use_backend(backend_name):
        ud.manual_seed(0)
        norm = ud.nn.BatchNorm1d(3)
        x = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
        inner = ud.function(lambda x: norm(x), jit_compile=True)

        def outer(x, index):
            return inner(ud.ops.take(x, index, 0))

        def state():
            return {key: ud.to_numpy(value).copy() for key, value in norm.state_dict().items()}

        start = state()
        results = {}
        for name, function in (("eager", outer), ("jit", ud.function(outer, jit_compile=True))):
            norm.load_state_dict(start)
            function(x, np.array([0, 1, 2]))
            assert int(state()["num_batches_tracked"]) == int(start["num_batches_tracked"]) + 1
            norm.load_state_dict(start)
            with pytest.raises(ud.IndexOutOfRangeError, match="found values from 0 to 9"):
                function(x, np.array([0, 1, 9]))
            results[name] = state()
        for key in start:
            np.testing.assert_array_equal(results["eager"][key], start[key], err_msg=key)
            np.testing.assert_array_equal(results["jit"][key], start[key], err_msg=key)


def test_tensorflow_residual_step_keeps_activations_nhwc(rng):
    """ResNet-18's step on tensorflow was 1.12x the hand-written one's (benchmarks/RESULTS.md, 2026-12-01, P):
    the residual ``out + identity`` of two NCHW views and ``tf.shape`` of the views (batch norm's input check)
    made each view a real transpose, the non-finite guard's ``IsFinite`` on the kernel gradients (OIHW, a
    transpose of TensorFlow's HWIO) was moved by Grappler above that transpose into a slow transpose of booleans,
    and batch norm ran as a dozen element-wise ops. In the traced step only the input's transpose into NHWC
    and the pooled view's (forward and gradient) run; every batch norm is one fused kernel each way."""
    with ud.use_backend("tensorflow"):
        ud.manual_seed(0)
        model = _ResidualNet()
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        x, y = rng.standard_normal((4, 3, 6, 6)).astype(np.float32), np.array([0, 1, 2, 1])
        eager_loss = float(ud.nn.CrossEntropyLoss()(model(ud.tensor(x)), ud.tensor(y)))
        assert float(step(x, y)) == pytest.approx(eager_loss, rel=1e-5)
    live = _live_ops(step)
    activations = [op for op in live if op.type == "Transpose" and not op.inputs[0].shape.is_fully_defined()]
    assert len(activations) == 3, [op.name for op in activations]
    assert not [op.name for op in live if op.type == "IsFinite" and op.inputs[0].op.type == "Transpose"]
    types = [op.type for op in live]
    assert types.count("FusedBatchNormV3") == types.count("FusedBatchNormGradV3") == 3


@pytest.mark.every_keras_framework
@pytest.mark.keras_framework("torch")
def test_keras_on_torch_residual_step_runs_torchs_convolution_and_batch_norm_kernels(rng):
    """ResNet-18's step on the keras backend over torch was 1.05-1.08x plain Keras's (benchmarks/RESULTS.md,
    2026-12-06, stop 63): each padded convolution was an explicit pad (``constant_pad_nd``, and its gradient) then
    a "valid" ``keras.ops.conv``, each training-mode batch norm a dozen element-wise ops (shifted moments). Both now
    run torch's own kernels on Keras's tensors (``keras_native_ops``): no pad, one ``native_batch_norm`` and one
    backward per batch norm; two steps' losses, weights and running statistics are the torch backend's."""
    import torch

    x, y = rng.standard_normal((4, 3, 6, 6)).astype(np.float32), np.array([0, 1, 2, 1])
    results = {}
    for name in ("keras", "torch"):
        with ud.use_backend(name):
            ud.manual_seed(0)
            model = _ResidualNet()
            step = ud.train_step(model, ud.nn.CrossEntropyLoss(),
                                 ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
            step(x, y)
            with torch.profiler.profile() as profile:
                loss = float(step(x, y))
            results[name] = (loss, {k: ud.to_numpy(v) for k, v in model.state_dict().items()},
                             [event.name for event in profile.events()])
    (loss, state, ops), (torch_loss, torch_state, _) = results["keras"], results["torch"]
    assert loss == pytest.approx(torch_loss, rel=1e-5)
    for key, value in torch_state.items():
        np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert "aten::constant_pad_nd" not in ops
    assert ops.count("aten::native_batch_norm") == ops.count("aten::native_batch_norm_backward") == 3, ops
    # the guard: one fused check over the loss and every gradient, as the torch backend's (isfinite read each
    # gradient four times: 5% of ResNet-18's step)
    assert "aten::isfinite" not in ops and ops.count("aten::_amp_foreach_non_finite_check_and_unscale_") == 1, ops


@pytest.mark.every_keras_framework
@pytest.mark.keras_framework("torch")
def test_keras_on_torch_guard_check_is_every_value_finite():
    """The keras backend's non-finite check on torch (the host's fused kernel, ``keras_native_ops``) is NumPy's
    ``isfinite(...).all()`` over every value, whatever tensor and dtype holds a NaN or an infinity, leaves the values
    as they were, and takes None entries and no values at all (True)."""
    import torch

    from unidl.backends.keras import ops as keras_ops

    values = [torch.ones(()), torch.arange(12.0).reshape(3, 4), torch.ones(5, dtype=torch.float64),
              torch.ones(4, dtype=torch.float16), torch.ones(2, dtype=torch.bfloat16)]
    assert bool(keras_ops.all_finite(values)) and bool(keras_ops.all_finite([None, *values, None]))
    assert bool(keras_ops.all_finite([])) and bool(keras_ops.all_finite([torch.tensor([1, 2])]))  # (integers)
    for index in range(len(values)):
        for bad in (float("nan"), float("inf"), -float("inf")):
            changed = [v.clone() for v in values]
            changed[index].view(-1)[-1] = bad
            kept = [v.clone() for v in changed]
            assert not bool(keras_ops.all_finite(changed)), (index, bad)
            assert not bool(keras_ops.PORTABLE["all_finite"](changed)), (index, bad)
            for value, before in zip(changed, kept):
                torch.testing.assert_close(value, before, equal_nan=True, rtol=0, atol=0)


def test_function_follows_the_mode_it_is_called_in(backend, rng):
    """A ``ud.function`` first traced in training mode runs the eval graph after ``model.eval()`` (dropout the
    identity, batch norm on its running statistics), as the eager forward and torch do, and back again."""
    ud.manual_seed(0)
    dropout = ud.nn.Dropout(0.5)
    model = ud.nn.Sequential(ud.nn.Linear(4, 6), ud.nn.BatchNorm1d(6), dropout)
    forward = ud.function(lambda x: model(x))
    x = rng.standard_normal((16, 4)).astype(np.float32)
    model.train()
    trained = ud.to_numpy(forward(x))
    assert 0.2 < (trained == 0).mean() < 0.8  # dropout on
    model.eval()
    np.testing.assert_allclose(ud.to_numpy(forward(x)), ud.to_numpy(model(ud.tensor(x))), rtol=1e-5, atol=1e-6)
    model.train()
    assert 0.2 < (ud.to_numpy(forward(x)) == 0).mean() < 0.8
    dropout.eval()  # a submodule's mode is part of the key too: batch statistics, no dropout
    np.testing.assert_allclose(ud.to_numpy(forward(x)), ud.to_numpy(model(ud.tensor(x))), rtol=1e-5, atol=1e-6)


class _ReadsHeadMode(ud.nn.Module):
    """A forward that branches on a sub-module's flag without calling the sub-module (a head used in training)."""

    def __init__(self):
        super().__init__()
        self.body = ud.nn.Linear(4, 3)
        self.head = ud.nn.Linear(3, 3)

    def forward(self, x):
        hidden = self.body(x)
        return hidden * 2.0 if self.head.training else hidden - 1.0


def test_function_follows_a_mode_it_reads_without_calling_the_module(backend, rng):
    """A ``training`` flag only read inside a ``ud.function`` (a branch on ``self.head.training``, never called;
    ``ops.dropout(..., training=switch.training)`` of a module never called) keys its graphs as a call does: each
    new combination of modes traces once, a known one reuses its graph, and every result is the eager one."""
    model, switch = _ReadsHeadMode(), ud.nn.Identity()
    forward = ud.function(lambda x: (model(x), ud.ops.dropout(x, 0.5, training=switch.training)))
    x = rng.uniform(1.0, 2.0, (16, 4)).astype(np.float32)  # no zeros: a zero in the output is dropout's
    traces = []

    def check(dropout_on):
        branch, dropped = (ud.to_numpy(t) for t in forward(x))
        np.testing.assert_allclose(branch, ud.to_numpy(model(ud.tensor(x))), rtol=1e-5, atol=1e-6)
        if dropout_on:
            assert 0.2 < (dropped == 0).mean() < 0.8
            np.testing.assert_allclose(dropped[dropped != 0], 2 * x[dropped != 0], rtol=1e-6)
        else:
            np.testing.assert_array_equal(dropped, x)
        traces.append(forward.trace_count)

    check(dropout_on=True)
    model.head.eval()  # read, never called: the branch's other side
    check(dropout_on=True)
    switch.eval()
    check(dropout_on=False)
    model.train(), switch.train()  # back to the first modes: the first graph again
    check(dropout_on=True)
    model.head.eval()
    check(dropout_on=True)
    assert traces in ([1, 2, 3, 3, 3], [None] * 5), traces  # (None where it runs eagerly: torch)


_AFTER_SQUEEZE = {  # ops of a squeeze() without dim: those that read no rank, then those that need one
    "sum": lambda a: ud.ops.sum(a, axis=-1), "mean": lambda a: ud.ops.mean(a, axis=1),
    "softmax": lambda a: ud.ops.softmax(a, dim=-1), "log_softmax": lambda a: ud.ops.log_softmax(a, dim=-1),
    "argmax": lambda a: ud.ops.argmax(a, dim=-1), "concat": lambda a: ud.ops.concat([a, a], axis=-1),
    "cross_entropy": lambda a: ud.ops.cross_entropy(a, np.array([0, 2])),
    "amax": lambda a: ud.ops.amax(a, dim=-1), "flatten": ud.ops.flatten,
    "transpose": lambda a: ud.ops.transpose(a, 0, 1), "linear": lambda a: ud.ops.linear(a, np.ones((2, 3),
                                                                                                   np.float32)),
}
_NEEDS_RANK = ("amax", "flatten", "transpose", "linear")


@pytest.mark.parametrize("name", list(_AFTER_SQUEEZE))
def test_an_op_after_a_squeeze_without_dim_in_a_graph_is_eagers_or_a_clear_error(backend, name):
    """A graph traced for any size of its inputs' axes (TensorFlow's) cannot know the rank of squeeze() without
    dim: the ops that read no rank give the eager result; one that needs it is a ``ShapeMismatchError`` telling to
    give squeeze its dim (TensorFlow's own "Cannot iterate over a shape with unknown rank" before, and the
    reductions' axis check failed the same way). Where the graph knows the sizes (torch, jax) every op runs."""
    x = np.arange(6, dtype=np.float32).reshape(2, 1, 3)

    def fn(a):
        return _AFTER_SQUEEZE[name](ud.ops.squeeze(a))

    eager = ud.to_numpy(fn(x))
    try:
        traced = ud.to_numpy(ud.function(fn)(x))
    except ud.ShapeMismatchError as error:
        assert name in _NEEDS_RANK and backend in ("tensorflow", "keras"), error
        assert "unknown rank" in str(error) and "ud.ops.squeeze(x, dim=-1)" in str(error)
        return
    assert traced.shape == eager.shape
    np.testing.assert_allclose(traced, eager, rtol=1e-6)


def _graph_op_types(function) -> list:
    """The types of every op of ``function``'s (a ``ud.function`` called once on tensorflow) traced graph, the bodies
    of its conditionals included."""
    (compiled,) = [graph for per_backend in function._compiled.values() for graph in per_backend.values()]
    types = []
    for concrete in compiled.concrete_functions:
        types += [op.type for op in concrete.graph.get_operations()]
        for body in concrete.graph.as_graph_def().library.function:
            types += [node.op for node in body.node_def]
    return types


_SIZE_CHECK_OPS = ("Equal", "LogicalOr", "LogicalAnd", "Assert")


def test_tensorflow_checks_of_sizes_a_graph_derives_from_one_tensor_add_no_op(rng):
    """A graph traced for any size (``ud.function`` on tensorflow) built each ``where``'s, ``maximum``'s and
    ``concat``'s check of sizes that the graph made from one tensor (``zeros_like(x) + 1`` beside ``x``, two
    ``arange(n)``), which agree by construction: Shape, Equal, LogicalOr and Assert ops for each, 23 Asserts and 771
    ops in a bilinear ``interpolate`` by a scale factor (most of the test suite's time went into tracing such
    checks). Such checks are decided while tracing now; a size that is really unknown keeps its check, which raises
    the eager error when the graph runs."""
    x, tall = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    with ud.use_backend("tensorflow"):
        def derived(x):
            bounded = ud.ops.minimum(ud.ops.maximum(x * 2, ud.ops.zeros_like(x) - 1), ud.ops.zeros_like(x) + 1)
            steps = ud.ops.arange(0, ud.ops.shape(x)[1], 1, "int64")
            picked = ud.ops.where(steps > 0, ud.ops.zeros_like(steps) + 1, steps)
            return ud.ops.concat([ud.ops.where(x > 0, bounded, x), -x], 0), picked

        function = ud.function(derived)
        joined, picked = function(x)
        np.testing.assert_allclose(ud.to_numpy(joined)[:2], np.where(x > 0, np.clip(2 * x, -1, 1), x), rtol=1e-6)
        np.testing.assert_array_equal(ud.to_numpy(picked), [0, 1, 1])
        types = _graph_op_types(function)
        assert not [t for t in types if t in _SIZE_CHECK_OPS], types
        assert types.count("Shape") == 1, types  # (the function's own ud.ops.shape)

        resized = ud.function(lambda x: ud.ops.interpolate(x, scale_factor=2, mode="bilinear"))
        image = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
        eager = ud.to_numpy(ud.ops.interpolate(ud.tensor(image), scale_factor=2, mode="bilinear"))
        np.testing.assert_allclose(ud.to_numpy(resized(image)), eager, rtol=1e-5, atol=1e-6)
        types = _graph_op_types(resized)
        assert types.count("Assert") == 1, types  # its output's size of at least 1: unknown while tracing
        assert len(types) < 400, len(types)

        # sizes the graph does not know to agree keep their check, with the eager error when it runs
        for make in (lambda x, y: ud.ops.where(x > 0, x, y), lambda x, y: ud.ops.concat([x, y], 0)):
            with pytest.raises(ud.ShapeMismatchError) as traced:
                ud.function(make)(x, tall)
            with pytest.raises(ud.ShapeMismatchError) as eagerly:
                make(ud.tensor(x), ud.tensor(tall))
            assert str(traced.value) == str(eagerly.value)


def test_tensorflow_convolution_checks_that_hold_for_any_size_add_no_op(rng):
    """A convolution's checks that hold whatever sizes a graph traced for any size runs with: ``groups=1`` divides
    any weight's channels, and a padding of at least the kernel's size holds the window on an empty input too. Both
    were compared when the graph ran (a FloorMod, an Equal and an Assert; a GreaterEqual and an Assert per axis);
    the input's channels, unknown while tracing, are still checked, their sizes read once (a Shape op per check).
    """
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    with ud.use_backend("tensorflow"):
        layer = ud.nn.Conv2d(3, 4, 3, padding=2)
        convolved = ud.function(lambda x: layer(x))
        np.testing.assert_allclose(ud.to_numpy(convolved(x)), ud.to_numpy(layer(ud.tensor(x))), rtol=1e-5, atol=1e-5)
        types = _graph_op_types(convolved)
        assert types.count("Assert") == 1 and "GreaterEqual" not in types, types  # (the input's channels)
        assert types.count("Shape") == 1, types  # the input's sizes read once for its checks

        given = ud.function(lambda x, weight: ud.ops.conv2d(x, weight, padding=1))
        expected = ud.to_numpy(ud.ops.conv2d(ud.tensor(x), ud.tensor(weight), padding=1))
        np.testing.assert_allclose(ud.to_numpy(given(x, weight)), expected, rtol=1e-5, atol=1e-5)
        types = _graph_op_types(given)
        assert "FloorMod" not in types, types
        assert types.count("Shape") == 2, types  # the input's sizes and the weight's, each read once
        with pytest.raises(ud.ShapeMismatchError, match="expected input"):
            convolved(x[:, :2])
