"""``Embedding`` and the index checks of ``take``/``gather``/class labels: an index out of range is unidl's
``IndexOutOfRangeError`` on every backend, eagerly, inside ``ud.function`` and inside a training step (where
TensorFlow's CPU gather would silently return zeros)."""

import warnings

import numpy as np
import pytest

import unidl as ud

GOOD = np.array([[0, 4, 2], [1, 1, 3]])
TOO_LARGE = np.array([[0, 5, 2], [1, 1, 3]])
NEGATIVE = np.array([[0, -1, 2], [1, 1, 3]])


def test_embedding_index_out_of_range_eagerly_and_in_ud_function(backend):
    embed = ud.nn.Embedding(5, 2)
    assert ud.to_numpy(embed(ud.tensor(GOOD))).shape == (2, 3, 2)
    compiled = ud.function(lambda tokens: embed(tokens))
    assert ud.to_numpy(compiled(ud.tensor(GOOD))).shape == (2, 3, 2)
    for bad in (TOO_LARGE, NEGATIVE):
        with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 5\)"):
            embed(ud.tensor(bad))
        with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 5\)"):
            compiled(ud.tensor(bad))


@pytest.mark.parametrize("precision, accumulate", [(None, 1), (None, 2), ("bf16-mixed", 2), ("16-mixed", 2)])
def test_embedding_index_out_of_range_in_train_step(backend, rng, precision, accumulate):
    """The step that raises changes nothing (weights, optimizer state: Keras-on-JAX's applied its update, and the
    jax backend's compiled step for a negative index or label, which JAX's gather wraps to a finite value, not
    caught by the non-finite guard), under mixed precision and within an accumulation window too."""
    model = ud.nn.Sequential(ud.nn.Embedding(5, 2), ud.nn.Flatten(), ud.nn.Linear(6, 2))
    optimizer = ud.optim.Adam(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, precision=precision, accumulate=accumulate)
    labels = np.array([0, 1])
    step(GOOD, labels)
    before, slots = model.state_dict(), optimizer.state_dict()
    for bad in (TOO_LARGE, NEGATIVE):
        with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 5\)"):
            step(bad, labels)
    for bad in ([0, 2], [-1, 0]):
        with pytest.raises(ud.IndexOutOfRangeError, match=r"CrossEntropyLoss labels must lie in \[0, 2\)"):
            step(GOOD, np.array(bad))
    after = model.state_dict()
    assert all(np.array_equal(after[key], before[key]) for key in before)
    assert str(optimizer.state_dict()) == str(slots)
    assert optimizer.last_step_finite
    for _ in range(accumulate):
        step(GOOD, labels)  # the step still works afterwards
    assert not np.array_equal(model.state_dict()["0.weight"], before["0.weight"])


def test_index_checks_in_compiled_functions_nested_or_of_several_shapes(backend):
    """A ``ud.function`` that checks indices, called inside another (or a model's forward in a train step), stays
    compiled and its check raises from the outer one (Keras-on-JAX and JAX demoted it to eager with a warning); one
    traced for two shapes names the range of the call's (Keras-on-JAX named the last trace's); a check that fails
    after a BatchNorm in training leaves the running statistics that BatchNorm wrote, as torch's eager call."""
    embed = ud.nn.Embedding(5, 2)
    inner = ud.function(lambda tokens: embed(tokens))
    outer = ud.function(lambda tokens: ud.ops.sum(inner(tokens)) * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ud.RetraceWarning)  # (running eagerly, as a retrace, is a RetraceWarning)
        assert np.isfinite(float(outer(ud.tensor(GOOD))))
        with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 5\)"):
            outer(ud.tensor(TOO_LARGE))
        labelled = ud.function(lambda tokens, y: ud.ops.cross_entropy(ud.ops.sum(inner(tokens), 1), y))
        with pytest.raises(ud.IndexOutOfRangeError, match=r"CrossEntropyLoss labels must lie in \[0, 2\)"):
            labelled(ud.tensor(GOOD), ud.tensor(np.array([0, 7])))  # (the outer's check: not the inner's message)
        table = ud.tensor(np.arange(10.0).reshape(5, 2))
        looked_up = ud.function(lambda i: ud.ops.take(table, i, axis=0))
        carry, _ = ud.ops.scan(lambda c, i: (c + ud.ops.sum(looked_up(i)), c), ud.tensor(np.float32(0)),
                               ud.tensor(np.array([[1], [2], [4]])))  # (inside scan's trace: no checkify there)
        assert float(carry) == 31.0
    take = ud.function(lambda x, i: ud.ops.take(x, i))
    for size in (5, 3, 5):
        take(ud.tensor(np.arange(float(size))), ud.tensor(np.array([1])))
    with pytest.raises(ud.IndexOutOfRangeError, match=r"take indices must lie in \[0, 5\)"):
        take(ud.tensor(np.arange(5.0)), ud.tensor(np.array([7])))
    norm = ud.nn.BatchNorm1d(2)
    normalized = ud.function(lambda x, i: ud.ops.take(norm(x), i, axis=0))
    x = ud.tensor(np.arange(8.0).reshape(4, 2))
    normalized(x, ud.tensor(np.array([0, 1])))
    with pytest.raises(ud.IndexOutOfRangeError):
        normalized(x, ud.tensor(np.array([0, 9])))
    assert int(norm.state_dict()["num_batches_tracked"]) == 2
    np.testing.assert_allclose(norm.state_dict()["running_mean"], [0.57, 0.76], rtol=1e-6)


def test_an_index_out_of_range_in_fit_evaluate_or_predict_is_the_error(backend):
    """In ``fit``'s, ``evaluate``'s and ``predict``'s steps too (Keras-on-JAX's jitted steps computed with it, a
    NaN row; its checks are read a few steps later in ``fit``, see ``keras/module.py``); they go on with good data
    afterwards."""
    model = ud.nn.Sequential(ud.nn.Embedding(5, 2), ud.nn.Flatten(), ud.nn.Linear(6, 2))
    loss, labels = ud.nn.CrossEntropyLoss(), np.array([0, 1])
    fit = lambda tokens: ud.fit(model, (np.concatenate([GOOD, tokens, GOOD]), np.tile(labels, 3)), loss=loss,
                                optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=2,
                                shuffle=False, verbose=0)  # (the second of three steps)
    for call in (fit, lambda tokens: ud.evaluate(model, (tokens, labels), loss=loss),
                 lambda tokens: ud.predict(model, tokens)):
        with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 5\)"):
            call(TOO_LARGE)
        call(GOOD)
    with pytest.raises(ud.IndexOutOfRangeError, match=r"(Accuracy|CrossEntropyLoss) labels must lie in \[0, 2\)"):
        ud.evaluate(model, (GOOD, np.array([0, 7])), loss=loss)  # (the metrics' check of the arrays comes first)
    assert np.isfinite(ud.evaluate(model, (GOOD, labels), loss=loss)["loss"])


def test_take_gather_and_labels_out_of_range(backend):
    x = ud.tensor(np.zeros((3, 4)))
    checks = [
        (lambda: ud.ops.take(x, ud.tensor(np.array([0, 3])), axis=0), r"take indices must lie in \[0, 3\)"),
        (lambda: ud.ops.gather(x, 1, ud.tensor(np.array([[0], [4], [1]]))), r"gather index must lie in \[0, 4\)"),
        (lambda: ud.nn.NLLLoss()(x, ud.tensor(np.array([0, 4, -100]))), r"NLLLoss labels must lie in \[0, 4\)"),
        (lambda: ud.nn.CrossEntropyLoss(label_smoothing=0.1)(x, ud.tensor(np.array([0, -1, 1]))),
         r"CrossEntropyLoss labels must lie in \[0, 4\)"),
        (lambda: ud.nn.CrossEntropyLoss()(x, ud.tensor(np.array([0, 7, 1]))), r"CrossEntropyLoss labels must lie in \[0, 4\)"),
    ]
    for call, message in checks:
        with pytest.raises(ud.IndexOutOfRangeError, match=message):
            call()
        with pytest.raises(ud.IndexOutOfRangeError, match=message):
            ud.function(lambda: call())()
    # the ignored label is not out of range
    assert np.isfinite(ud.to_numpy(ud.nn.CrossEntropyLoss()(x, ud.tensor(np.array([0, -100, 1])))))


def test_padding_row_starts_at_zero_and_gets_no_gradient(backend):
    embed = ud.nn.Embedding(4, 3, padding_idx=-1)
    assert embed.padding_idx == 3 and not embed.state_dict()["weight"][3].any()
    tokens = ud.tensor(np.array([3, 1, 3]))
    grad = ud.to_numpy(ud.grad(lambda: ud.ops.sum(embed(tokens)), embed.parameters())()[0])
    assert not grad[3].any() and grad[1].all()


@pytest.mark.parametrize("build, error, message", [
    (lambda: ud.nn.Embedding(0, 3), ValueError, "num_embeddings must be a positive integer"),
    (lambda: ud.nn.Embedding(4, 3, padding_idx=4), ValueError, r"padding_idx must lie in \[-4, 4\)"),
    (lambda: ud.nn.LayerNorm((4, 0)), ValueError, "normalized_shape must be a positive int"),
    (lambda: ud.nn.GELU("fast"), ValueError, "approximate must be 'none' or 'tanh'"),
    (lambda: ud.nn.Hardtanh(1.0, -1.0), ValueError, "max_val must be greater than min_val"),
    (lambda: ud.nn.PReLU(0), ValueError, "num_parameters must be a positive integer"),
    (lambda: ud.nn.CrossEntropyLoss(label_smoothing=1.5), ValueError, r"label_smoothing must lie in \[0, 1\]"),
    (lambda: ud.nn.MSELoss("batchmean"), ValueError, "reduction must be one of"),
    (lambda: ud.nn.HuberLoss(delta=0), ValueError, "delta must be positive"),
    (lambda: ud.nn.NLLLoss(weight=np.ones((2, 2))), ValueError, r"one value per class \(C,\)"),
])
def test_invalid_arguments(build, error, message):
    with ud.use_backend("torch"):
        with pytest.raises(error, match=message):
            build()


def test_shape_errors_name_the_layer(backend):
    with pytest.raises(ud.ShapeMismatchError, match=r"LayerNorm\(\(6,\).*last axes are \(6,\), received shape \(2, 5\)"):
        ud.nn.LayerNorm(6)(ud.tensor(np.zeros((2, 5))))
    with pytest.raises(ud.ShapeMismatchError, match=r"PReLU.*\(N, 3, \.\.\.\), received \(2, 4, 5\)"):
        ud.nn.PReLU(3)(ud.tensor(np.zeros((2, 4, 5))))
    with pytest.raises(ud.ShapeMismatchError, match="has 3 class weights but the input has 4 classes"):
        ud.nn.CrossEntropyLoss(weight=[1.0, 2.0, 3.0])(ud.tensor(np.zeros((2, 4))), ud.tensor(np.array([0, 1])))
    with pytest.raises(ud.ShapeMismatchError, match=r"class probabilities of the logits' shape"):
        ud.nn.CrossEntropyLoss()(ud.tensor(np.zeros((2, 4))), ud.tensor(np.zeros((2, 3))))


class _TokenClassifier(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = ud.nn.Embedding(10, 4, padding_idx=0)
        self.blocks = ud.nn.ModuleList([ud.nn.Sequential(ud.nn.Linear(4, 4), ud.nn.GELU()), ud.nn.LayerNorm(4)])
        self.heads = ud.nn.ModuleDict({"cls": ud.nn.Linear(4, 2)})

    def forward(self, tokens):
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        return self.heads["cls"](ud.ops.mean(h, 1))


def test_embedding_model_trains_alike_on_every_backend():
    """Adam on an Embedding's gradient (IndexedSlices inside TensorFlow's and Keras's compiled steps, dense as in
    PyTorch) with ModuleList/ModuleDict, LayerNorm, GELU and label smoothing: the same losses and weights."""
    tokens = np.random.default_rng(0).integers(0, 10, (8, 5))
    labels = np.arange(8) % 2
    results = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            ud.manual_seed(0)
            model = _TokenClassifier()
            step = ud.train_step(model, ud.nn.CrossEntropyLoss(label_smoothing=0.1),
                                 ud.optim.Adam(model.parameters(), lr=1e-2))
            results[name] = [float(step(tokens, labels)) for _ in range(5)], model.state_dict()
    reference_losses, reference_state = results["torch"]
    for name, (losses, state) in results.items():
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-5, err_msg=name)
        for key, value in state.items():
            np.testing.assert_allclose(value, reference_state[key], rtol=1e-4, atol=1e-6, err_msg=f"{name} {key}")
        assert not state["embed.weight"][0].any(), name  # the padding row stays zero


def test_from_pretrained_holds_the_table_and_is_frozen(backend):
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    embed = ud.nn.Embedding.from_pretrained(table, padding_idx=1)
    np.testing.assert_array_equal(ud.to_numpy(embed(ud.tensor(np.array([1, 3])))), table[[1, 3]])
    model = ud.nn.Sequential(embed, ud.nn.Flatten(), ud.nn.Linear(6, 2))
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.5))
    step(np.array([[0, 2], [3, 1]]), np.array([0, 1]))
    np.testing.assert_array_equal(model.state_dict()["0.weight"], table)  # frozen
    trainable = ud.nn.Embedding.from_pretrained(table, freeze=False)
    assert trainable.state_dict()["weight"].shape == (4, 3)
    with pytest.raises(ValueError, match=r"2-D array \(num_embeddings, embedding_dim\), got shape \(12,\)"):
        ud.nn.Embedding.from_pretrained(table.reshape(-1))
    # PyTorch's signature: its defaults taken, the options the constructor refuses refused alike (a TypeError)
    ud.nn.Embedding.from_pretrained(table, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False)
    with pytest.raises(ValueError, match="Embedding sparse=True is not supported"):
        ud.nn.Embedding.from_pretrained(table, sparse=True)
    assert ud.nn.Embedding.from_pretrained(table, max_norm=1.0, norm_type=1).max_norm == 1.0


# rows of norm 5, 0.5, 10 and 1 (2-norm; 1-norm 7, 0.7, 14, 1.4; inf-norm 4, 0.4, 8, 0.8), and a label per sample
MAX_NORM_TABLE = np.array([[3.0, -4.0, 0.0], [0.3, 0.4, 0.0], [-6.0, 0.0, 8.0], [0.6, 0.0, -0.8]])
MAX_NORM_TOKENS, MAX_NORM_LABELS = np.array([[0, 1], [2, 0]]), np.array([1, 0])


def _torch_max_norm_reference(max_norm, norm_type):
    """torch.nn.Embedding(max_norm=...)'s rows, weight after the forward and weight gradient of sum(rows * r), and
    its weight after two SGD steps of Linear(cross-entropy) on the rows."""
    import torch

    embed = torch.nn.Embedding(4, 3, max_norm=max_norm, norm_type=norm_type).double()
    head = torch.nn.Linear(6, 2).double()
    with torch.no_grad():
        embed.weight.copy_(torch.tensor(MAX_NORM_TABLE))
        head.weight.copy_(torch.tensor(np.linspace(-1.0, 1.0, 12).reshape(2, 6)))
        head.bias.zero_()
    rows = embed(torch.tensor(MAX_NORM_TOKENS))
    (rows * torch.tensor(np.arange(12.0).reshape(2, 2, 3))).sum().backward()
    reference = [rows.detach().numpy(), embed.weight.detach().numpy().copy(), embed.weight.grad.numpy().copy()]
    with torch.no_grad():
        embed.weight.copy_(torch.tensor(MAX_NORM_TABLE))
    optimizer = torch.optim.SGD([*embed.parameters(), *head.parameters()], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        logits = head(embed(torch.tensor(MAX_NORM_TOKENS)).flatten(1))
        torch.nn.functional.cross_entropy(logits, torch.tensor(MAX_NORM_LABELS)).backward()
        optimizer.step()
    return reference + [embed.weight.detach().numpy()]


def _steps_refuse_a_forward_writing_a_parameter(backend) -> bool:
    """Whether ``backend`` in this process refuses a train step whose forward writes a trainable parameter
    (``max_norm``'s renormalization) with a ``GraphConstructError``: Keras-on-JAX's own steps thread the
    non-trainable variables alone and would drop the write, where torch keeps it
    (``tests/backends/test_keras_jax.py::test_a_forward_writing_a_parameter_is_one_error_in_keras_own_step_on_jax``);
    every other backend and Keras framework trains as torch."""
    if backend != "keras":
        return False
    import keras

    return keras.backend.backend() == "jax"


def test_embedding_max_norm_renormalizes_the_rows_it_reads_as_torch(backend):
    """``Embedding(max_norm=...)`` scales each row a forward looks up whose ``norm_type``-norm exceeds ``max_norm``
    by max_norm / (norm + 1e-7), in its weight (PyTorch's in-place ``embedding_renorm_``, outside autograd), then
    looks the rows up: the rows, the weight after the forward and the weight's gradient are torch's for the 2-, 1-
    and inf-norm, eagerly and inside ``ud.function`` (one unread row over max_norm left as it is); and two SGD
    steps of ``train_step`` leave torch's weight (the gradient taken with the renormalized rows, the update applied
    to them; the jax backend's gradient dropped what a differentiated forward wrote, and the refusal before)."""
    with ud.use_dtype("float64"):
        upstream = ud.tensor(np.arange(12.0).reshape(2, 2, 3))
        # the gradient (the lookup's, whatever the norm) with the 2-norm; the 1- and inf-norms' rows and weight
        for norm_type, max_norm, modes in ((2.0, 1.0, ("eager", "ud.function")), (1.0, 1.0, ("forward",)),
                                           (float("inf"), 0.5, ("forward",))):
            expected = _torch_max_norm_reference(max_norm, norm_type)[:3]
            for mode in modes:
                embed = ud.nn.Embedding(4, 3, max_norm=max_norm, norm_type=norm_type)
                embed.load_state_dict({"weight": MAX_NORM_TABLE})

                def rows_and_gradient(tokens, embed=embed):
                    rows, (gradient,) = ud.value_and_grad(
                        lambda: ud.ops.sum(embed(tokens) * upstream), embed.parameters())()
                    return embed(tokens), gradient  # (the weight renormalized already: the same rows again)

                run = {"eager": rows_and_gradient, "ud.function": ud.function(rows_and_gradient),
                       "forward": lambda tokens, embed=embed: (embed(tokens),)}[mode]
                results = run(ud.tensor(MAX_NORM_TOKENS))
                results = (results[0], embed.weight, *results[1:])
                for what, got, want in zip(("rows", "weight", "gradient"), results, expected):
                    np.testing.assert_allclose(ud.to_numpy(got), want, rtol=1e-12, atol=1e-15,
                                               err_msg=f"{backend} {mode} {norm_type} {what}")
        embed = ud.nn.Embedding(4, 3, max_norm=1.0)
        embed.load_state_dict({"weight": MAX_NORM_TABLE})
        head = ud.nn.Linear(6, 2)
        head.load_state_dict({"weight": np.linspace(-1.0, 1.0, 12).reshape(2, 6), "bias": np.zeros(2)})
        model = ud.nn.Sequential(embed, ud.nn.Flatten(), head)
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.5))
        if _steps_refuse_a_forward_writing_a_parameter(backend):
            with pytest.raises(ud.GraphConstructError, match="the forward writes a trainable parameter"):
                step(MAX_NORM_TOKENS, MAX_NORM_LABELS)
            np.testing.assert_array_equal(ud.to_numpy(embed.weight), MAX_NORM_TABLE, err_msg=backend)
        else:
            for _ in range(2):
                step(MAX_NORM_TOKENS, MAX_NORM_LABELS)
            np.testing.assert_allclose(ud.to_numpy(embed.weight), _torch_max_norm_reference(1.0, 2.0)[-1],
                                       rtol=1e-12, atol=1e-15, err_msg=backend)
        # fit's look at one sample's output before its first batch is no forward of torch's: it writes nothing
        # (it renormalized the rows of that sample: a weight that no training step had read yet)
        fresh = ud.nn.Sequential(ud.nn.Embedding(4, 3, max_norm=1.0), ud.nn.Flatten(), ud.nn.Linear(6, 2))
        fresh[0].load_state_dict({"weight": MAX_NORM_TABLE})
        ud.fit(fresh, MAX_NORM_TOKENS, MAX_NORM_LABELS, loss=ud.nn.CrossEntropyLoss(),
               optimizer=ud.optim.SGD(fresh.parameters(), lr=0.5), epochs=0, verbose=0)
        np.testing.assert_array_equal(ud.to_numpy(fresh[0].weight), MAX_NORM_TABLE, err_msg=backend)
