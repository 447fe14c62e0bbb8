"""Keras's ``fit``/``evaluate`` options on every backend: positional forms, names, validation split and
frequency, sample and class weights, initial epoch, metrics exact over the epoch, ``return_dict``."""

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

import unidl as ud


@pytest.fixture
def data(rng):
    x = rng.standard_normal((30, 4)).astype(np.float32)
    return x, rng.integers(0, 3, 30)


def sp_softmax(logits):
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def _frozen(model):
    return ud.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every epoch's logs are the model's true values


def test_keras_positional_form_and_names_train_as_the_objects_do(backend, data):
    x, y = data
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(4, 8, 3)
    by_name = ud.fit(model, x, y, 10, 2, 0, loss="sparse_categorical_crossentropy", optimizer="sgd", shuffle=False)
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(4, 8, 3)
    by_object = ud.fit(model, (x, y), batch_size=10, epochs=2, verbose=0, shuffle=False,
                       loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.01))
    np.testing.assert_allclose(by_name["loss"], by_object["loss"], rtol=1e-6)
    assert by_name["lr"] == [0.01, 0.01]  # Keras's default rate for "sgd"
    one_hot = ud.fit(model, x, np.eye(3, dtype=np.float32)[y], 30, 1, 0, loss="categorical_crossentropy",
                     optimizer=_frozen(model), metrics=["accuracy"])
    assert one_hot["loss"][0] == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.from_numpy(ud.predict(model, x)), torch.from_numpy(y))), rel=1e-5)


def test_keras_optimizer_names_build_unidls_optimizers_at_keras_rates(backend):
    from unidl.fit_options import resolve_optimizer

    model = ud.models.TwoLayerNet(4, 8, 3)
    for name, (kind, lr) in {"nadam": (ud.optim.NAdam, 1e-3), "adamax": (ud.optim.Adamax, 1e-3),
                             "adadelta": (ud.optim.Adadelta, 1e-3), "RMSprop": (ud.optim.RMSprop, 1e-3)}.items():
        optimizer = resolve_optimizer(name, model)
        assert type(optimizer) is kind and optimizer.param_groups[0]["lr"] == lr  # Keras's default rate


def test_metrics_are_exact_over_the_epoch_not_means_of_batches(backend, data):
    x, y = data
    model = ud.models.TwoLayerNet(4, 8, 3)
    history = ud.fit(model, x, y, 7, 1, 0, loss="cross_entropy", optimizer=_frozen(model),
                     metrics=["accuracy", "top2", "f1", "precision_micro"], validation_data=(x[:11], y[:11]))
    scores = ud.predict(model, x)
    predicted = scores.argmax(1)
    assert history["accuracy"][0] == pytest.approx(sk.accuracy_score(y, predicted))
    assert history["top2"][0] == pytest.approx(sk.top_k_accuracy_score(y, scores, k=2, labels=[0, 1, 2]))
    assert history["f1"][0] == pytest.approx(sk.f1_score(y, predicted, average="macro", labels=[0, 1, 2]))
    assert history["precision_micro"][0] == pytest.approx(sk.precision_score(y, predicted, average="micro"))
    assert history["val_f1"][0] == pytest.approx(sk.f1_score(y[:11], predicted[:11], average="macro", labels=[0, 1, 2]))
    regression = ud.models.TwoLayerNet(4, 5, 2)
    target = x[:, :2] * 2
    history = ud.fit(regression, x, target, 10, 1, 0, loss="mse", optimizer=_frozen(regression), metrics=["mae", "mse"])
    outputs = ud.predict(regression, x)
    assert history["mae"][0] == pytest.approx(sk.mean_absolute_error(target, outputs), rel=1e-5)
    assert history["mse"][0] == pytest.approx(history["loss"][0], rel=1e-5)
    assert set(history.history) == {"loss", "mae", "mse", "lr"}  # no implicit accuracy for a regression loss


def test_validation_split_takes_the_last_fraction_before_shuffling(backend, data):
    x, y = data
    model = ud.models.TwoLayerNet(4, 8, 3)
    history = ud.fit(model, x, y, 8, 3, 0, validation_split=0.2, validation_freq=[1, 3], loss="cross_entropy",
                     optimizer=_frozen(model))
    held_out = ud.evaluate(model, x[24:], y[24:], loss="cross_entropy")
    assert history["val_loss"] == [pytest.approx(held_out["loss"], rel=1e-5)] * 2  # after epochs 1 and 3 only
    assert history["val_accuracy"] == [pytest.approx(held_out["accuracy"])] * 2
    trained = ud.evaluate(model, x[:24], y[:24], loss="cross_entropy")
    assert history["loss"] == pytest.approx([trained["loss"]] * 3, rel=1e-5)


def test_validation_freq_counts_epochs_as_keras():
    from unidl.fit_options import check_validation_freq, validates_after

    every_second = check_validation_freq(2)
    assert [validates_after(epoch, every_second) for epoch in range(4)] == [False, True, False, True]
    listed = check_validation_freq([1, 4])
    assert [validates_after(epoch, listed) for epoch in range(4)] == [True, False, False, True]


def test_sample_and_class_weights_weight_each_samples_loss_as_keras(backend, data):
    x, y = data
    weights = np.linspace(0.5, 2.0, 30)
    class_weight = {0: 1.0, 1: 3.0, 2: 0.25}
    model = ud.models.TwoLayerNet(4, 8, 3)
    validation_weights = weights[::-1] ** 2
    history = ud.fit(model, x, y, 10, 1, 0, loss="cross_entropy", optimizer=_frozen(model), sample_weight=weights,
                     class_weight=class_weight, shuffle=True, validation_data=(x, y, validation_weights),
                     metrics=["accuracy"], weighted_metrics=["accuracy", "f1", ud.metrics.AUC(4001, from_logits=True)])
    per_sample = torch.nn.functional.cross_entropy(torch.from_numpy(ud.predict(model, x)), torch.from_numpy(y),
                                                   reduction="none").numpy()
    combined = weights * np.array([class_weight[c] for c in y])
    accuracy = float((ud.predict(model, x).argmax(1) == y).mean())
    assert history["loss"][0] == pytest.approx(float((per_sample * combined).sum() / 30), rel=1e-5)
    assert history["accuracy"][0] == pytest.approx(accuracy)  # unweighted
    # Keras's validation_data=(x, y, sample_weight): the validation loss weighted as the training loss, metrics not
    assert history["val_loss"][0] == pytest.approx(float((per_sample * validation_weights).sum() / 30), rel=1e-5)
    assert history["val_accuracy"][0] == pytest.approx(accuracy)
    # Keras's weighted_metrics: weighted by sample_weight times class_weight (training) and by the validation
    # weights (validation), as scikit-learn's sample_weight; one named as a plain metric is "weighted_<name>"
    predicted, probabilities = ud.predict(model, x).argmax(1), sp_softmax(ud.predict(model, x))
    for prefix, w in (("", combined), ("val_", validation_weights)):
        weighted_accuracy = sk.accuracy_score(y, predicted, sample_weight=w)
        assert history[f"{prefix}weighted_accuracy"][0] == pytest.approx(weighted_accuracy)
        assert history[f"{prefix}f1"][0] == pytest.approx(sk.f1_score(y, predicted, average="macro", sample_weight=w,
                                                                      labels=[0, 1, 2], zero_division=0))
        assert history[f"{prefix}auc"][0] == pytest.approx(  # thresholded: within 1e-3 of the exact area here
            sk.roc_auc_score(y, probabilities, multi_class="ovr", sample_weight=w), abs=1e-3)
    evaluated = ud.evaluate(model, x, y, 7, loss="cross_entropy", sample_weight=validation_weights,  # 7s, one short
                            metrics=["accuracy"], weighted_metrics=["accuracy"])
    assert evaluated["loss"] == pytest.approx(history["val_loss"][0], rel=1e-5)
    assert evaluated["accuracy"] == pytest.approx(accuracy)
    assert evaluated["weighted_accuracy"] == pytest.approx(history["val_weighted_accuracy"][0])
    target = x[:, :2]
    regression = ud.models.TwoLayerNet(4, 5, 2)
    # validation_split: the held-out samples keep their sample weights, as Keras; each sample's loss is its mean
    history = ud.fit(regression, x, target, 30, 1, 0, loss=ud.nn.MSELoss(), optimizer=_frozen(regression),
                     sample_weight=weights, validation_split=0.2, metrics=["mae"], weighted_metrics=["mae", "mse"])
    outputs = ud.predict(regression, x)
    squared = ((outputs - target) ** 2).mean(1)
    assert history["loss"][0] == pytest.approx(float((squared[:24] * weights[:24]).mean()), rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(float((squared[24:] * weights[24:]).mean()), rel=1e-5)
    for prefix, part in (("", slice(0, 24)), ("val_", slice(24, 30))):
        assert history[f"{prefix}mae"][0] == pytest.approx(sk.mean_absolute_error(target[part], outputs[part]))
        for name, function in (("weighted_mae", sk.mean_absolute_error), ("mse", sk.mean_squared_error)):
            assert history[f"{prefix}{name}"][0] == pytest.approx(
                function(target[part], outputs[part], sample_weight=weights[part]), rel=1e-5)


def test_class_weight_reads_float_binary_targets_as_keras(backend, rng):
    """A binary cross-entropy's float 0/1 targets (N, 1) take ``class_weight`` as Keras's ``fit``, the class of a
    sample being round(y) (a ValueError asked for integer labels, which the loss refuses): the run is the one with
    the same weights given as ``sample_weight``, loss and trained weights."""
    from unidl.fit_options import class_labels

    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = (x[:, :1] > 0.3).astype(np.float32)
    runs = []
    for weights in (dict(class_weight={0: 1.0, 1: 4.0}), dict(sample_weight=np.where(y[:, 0] == 1, 4.0, 1.0)), {}):
        ud.manual_seed(0)
        model = ud.nn.Linear(4, 1)
        history = ud.fit(model, x, y, 5, 2, 0, loss="binary_crossentropy", optimizer="sgd", shuffle=False, **weights)
        runs.append((history["loss"], model.state_dict()))
    (by_class, trained), (by_sample, expected), (unweighted, _) = runs
    assert by_class == pytest.approx(by_sample, rel=1e-6) and by_class != pytest.approx(unweighted, rel=1e-3)
    for key, value in trained.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-6)
    # Keras's np.round: halves to even
    np.testing.assert_array_equal(class_labels(np.array([0.2, 0.9, 1.0, 0.5, 1.5], np.float32)), [0, 1, 1, 0, 2])
    with pytest.raises(ValueError, match=r"class_weight needs labels \(N,\) or \(N, 1\) .* got targets of shape "
                                         r"\(3, 2, 2\)"):
        class_labels(np.zeros((3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="targets hold NaN or infinite values"):
        class_labels(np.array([0.0, np.nan], np.float32))


LOSS_OPTIONS = {"sum": dict(reduction="sum"), "class weights": dict(weight=[0.5, 2.0, 1.0]),
                "ignored labels": dict(ignore_index=1), "smoothed, class weights": dict(weight=[0.5, 2.0, 1.0],
                                                                                       label_smoothing=0.1)}


@pytest.mark.parametrize("options", LOSS_OPTIONS.values(), ids=LOSS_OPTIONS)
def test_sample_weights_keep_the_losss_own_reduction(backend, data, options):
    """``sample_weight`` weights each sample's losses and keeps the loss's own reduction, so that weights of one
    train as no weights do: 'sum' stays a sum, and a class-weighted or ignoring ``CrossEntropyLoss`` still divides
    by the summed class weights of the labels counted (PyTorch's mean), where every sample was divided by the
    batch size. Training with weights of one equals training without (PyTorch's loop: tests/test_fit.py); other
    weights give ``sum_i w_i * loss_i`` over that divisor (``evaluate``, as training's step computes it)."""
    x, y = data

    def trained(sample_weight):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(4, 8, 3)
        ud.fit(model, x, y, 10, 2, 0, shuffle=False, sample_weight=sample_weight, metrics=[],
               loss=ud.nn.CrossEntropyLoss(**options), optimizer=ud.optim.SGD(model.parameters(), lr=0.1))
        return model

    model = trained(np.ones(30))
    unweighted = trained(None)
    for name, value in unweighted.state_dict().items():
        np.testing.assert_allclose(ud.to_numpy(model.state_dict()[name]), ud.to_numpy(value), rtol=1e-5, atol=1e-7)
    weights = np.linspace(0.5, 2.0, 30)
    torch_options = {k: torch.tensor(v) if k == "weight" else v for k, v in options.items()}
    outputs, labels = torch.from_numpy(ud.predict(model, x)), torch.from_numpy(y)
    per_sample = torch.nn.functional.cross_entropy(outputs, labels, **{**torch_options, "reduction": "none"})
    divisor = (float(per_sample.sum() / torch.nn.functional.cross_entropy(outputs, labels, **torch_options))
               if options.get("reduction") != "sum" else 1.0)
    expected = float((per_sample.numpy() * weights).sum() / divisor)
    loss = ud.nn.CrossEntropyLoss(**options)
    assert ud.evaluate(model, x, y, 30, loss=loss, sample_weight=weights)["loss"] == pytest.approx(expected, rel=1e-5)



def test_weighted_metrics_of_an_ignoring_loss_in_float64(backend, rng):
    """Under ``ud.use_dtype("float64")`` the weights travel float64 beside float64 targets; with a loss that ignores a
    label the weighted metrics multiply them by the float32 mask of the samples kept. Every backend then gives the
    same weighted accuracy, the samples of the ignored label left out (tensorflow multiplied the float64 weights by
    the float32 mask and raised its own TypeError, in ``fit`` and ``evaluate``)."""
    x, y, weights = rng.standard_normal((9, 4)), rng.integers(0, 3, 9), rng.uniform(0.5, 1.5, 9)
    loss = ud.nn.CrossEntropyLoss(ignore_index=1)
    with ud.use_dtype("float64"):
        model = ud.models.TwoLayerNet(4, 6, 3)
        history = ud.fit(model, x, y, 4, 1, 0, shuffle=False, loss=loss, weighted_metrics=["accuracy"],
                         sample_weight=weights, validation_data=(x, y, weights),
                         optimizer=ud.optim.SGD(model.parameters(), lr=0.0))
        results = ud.evaluate(model, x, y, 4, loss=loss, weighted_metrics=["accuracy"], sample_weight=weights)
        kept = y != 1
        correct = (ud.predict(model, x).argmax(1) == y)[kept]
    expected = (weights[kept] * correct).sum() / weights[kept].sum()
    for value in (history["accuracy"][0], history["val_accuracy"][0], results["accuracy"]):
        assert value == pytest.approx(expected, rel=1e-6)


def test_float64_training_weights_each_loss_by_its_float64_weight(backend, rng):
    """Under ``ud.use_dtype("float64")`` the training loss weights each sample by its float64 weight: the logged
    'loss' of a step that changes nothing (lr 0) is ``evaluate``'s and a float64 PyTorch loop's to 1e-12. (The
    weights travelled packed with integer labels as float32, so that training's loss, and its gradients, were
    off by their rounding, ~1e-8, on every backend.)"""
    x, y, weights = rng.standard_normal((10, 4)), rng.integers(0, 3, 10), rng.uniform(0.5, 1.5, 10)
    with ud.use_dtype("float64"):
        model = ud.models.TwoLayerNet(4, 6, 3)
        history = ud.fit(model, x, y, 10, 1, 0, shuffle=False, loss="cross_entropy", sample_weight=weights,
                         metrics=[], optimizer=ud.optim.SGD(model.parameters(), lr=0.0))
        evaluated = ud.evaluate(model, x, y, loss="cross_entropy", sample_weight=weights)["loss"]
        outputs = torch.from_numpy(ud.predict(model, x))
    per_sample = torch.nn.functional.cross_entropy(outputs, torch.from_numpy(y), reduction="none").numpy()
    expected = float((per_sample * weights).mean())
    assert history["loss"][0] == pytest.approx(expected, rel=1e-12)
    assert evaluated == pytest.approx(expected, rel=1e-12)


def test_float64_metrics_are_float64_on_every_backend(backend, rng):
    """Under ``ud.use_dtype("float64")`` metrics' statistics are float64: weighted accuracy (training, through Keras's
    own trainer on keras, and validation) and ``evaluate``'s MAE equal NumPy's float64 values to 1e-12 on every
    backend. (They were float32 sums: each backend's float32 rounding, ~1e-7 apart, beside float64 losses.)"""
    x, y, weights = rng.standard_normal((13, 4)), rng.integers(0, 3, 13), rng.uniform(0.5, 1.5, 13)
    with ud.use_dtype("float64"):
        model = ud.models.TwoLayerNet(4, 6, 3)
        history = ud.fit(model, x, y, 5, 1, 0, shuffle=False, loss="cross_entropy", sample_weight=weights,
                         weighted_metrics=["accuracy"], validation_data=(x, y, weights),
                         optimizer=ud.optim.SGD(model.parameters(), lr=0.0))
        outputs = ud.predict(model, x)
        target = x[:, :3] * 0.7
        mae = ud.evaluate(model, x, target, 5, loss="mse", metrics=["mae"])["mae"]
    correct = outputs.argmax(1) == y
    expected = (weights * correct).sum() / weights.sum()
    assert history["accuracy"][0] == pytest.approx(expected, rel=1e-12)
    assert history["val_accuracy"][0] == pytest.approx(expected, rel=1e-12)
    assert mae == pytest.approx(np.abs(outputs - target).mean(), rel=1e-12)

def test_initial_epoch_and_evaluate_lists(backend, data):
    x, y = data
    model = ud.models.TwoLayerNet(4, 8, 3)
    seen = []
    history = ud.fit(model, (x, y), batch_size=10, epochs=3, initial_epoch=2, verbose=0, loss="cross_entropy",
                     optimizer="adam", callbacks=[lambda epoch, logs: seen.append(epoch)])
    assert seen == [2] and len(history["loss"]) == 1
    results = ud.evaluate(model, x, y, 32, loss="cross_entropy", metrics=["accuracy", "f1"])
    as_list = ud.evaluate(model, (x, y), loss="cross_entropy", metrics=["accuracy", "f1"], return_dict=False)
    assert list(results) == ["loss", "accuracy", "f1"]
    assert as_list == pytest.approx([results["loss"], results["accuracy"], results["f1"]], rel=1e-6)
    assert ud.evaluate(model, x, y, loss="cross_entropy", metrics=[], return_dict=False) == pytest.approx(results["loss"])
    matrix = ud.evaluate(model, x, y, metrics=["confusion_matrix"])["confusion_matrix"]
    np.testing.assert_array_equal(matrix, sk.confusion_matrix(y, ud.predict(model, x).argmax(1), labels=[0, 1, 2]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="hinge"), r"unknown loss 'hinge'; valid names: .*cross_entropy"),
    (dict(optimizer="lbfgs"), r"unknown optimizer 'lbfgs'; valid names: adadelta, adagrad, adam, adamax, adamw, nadam, rmsprop, sgd"),
    (dict(validation_split=1.5), r"validation_split must be a fraction in \[0, 1\)"),
    (dict(validation_split=0.2, validation_data="given"), "validation_split or validation_data, not both"),
    (dict(validation_freq=0), "validation_freq must be a positive integer"),
    (dict(sample_weight=np.ones(3)), r"one weight per sample, shape \(20,\); got \(3,\)"),
    (dict(validation_data="weighted"), r"validation_data's sample_weight must hold one weight per sample, "
                                       r"shape \(20,\); got \(3,\)"),
    (dict(class_weight={0: 1.0}), r"class_weight has no weight for classes \[1\]"),
    (dict(initial_epoch=5), "initial_epoch=5 is past epochs=1"),
    (dict(metrics=["confusion_matrix"]), r"\['confusion_matrix'\] are not single numbers"),
    (dict(metrics=["mae"]), "MeanAbsoluteError needs outputs and targets of the same shape"),
    (dict(verbose=7), r"fit verbose must be 0 \(silent\), 1 .*, 2 .* or 'auto' .*; got 7"),
    (dict(verbose="x"), r"fit verbose must be .*; got 'x'"),
])
def test_bad_options_are_clear_errors(backend, rng, kwargs, message):
    model = ud.models.TwoLayerNet(4, 3, 2)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), np.arange(20) % 2
    options = dict(batch_size=5, verbose=0, loss="cross_entropy", optimizer="sgd")
    options.update(kwargs)
    if options.get("validation_data") == "given":
        options["validation_data"] = (x, y)
    if options.get("validation_data") == "weighted":
        options["validation_data"] = (x, y, np.ones(3))
    before = model.state_dict()
    with pytest.raises(ValueError, match=message):
        ud.fit(model, x, y, **options)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("eager", ["no", 1, None])
def test_eager_that_is_no_bool_is_the_same_error_from_fit_and_train_step(backend, rng, eager):
    """``eager`` is one flag on both entries (fit hands it to the train step): anything but True or False is the same
    ``TypeError`` from ``fit`` as from ``train_step`` (fit raised a ``ValueError`` and took 1 as True; a string was
    taken as True before either), and nothing trains."""
    model = ud.models.TwoLayerNet(4, 3, 2)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), np.arange(20) % 2
    before = model.state_dict()
    with pytest.raises(TypeError, match=f"fit: eager must be True or False, got {eager!r}"):
        ud.fit(model, x, y, batch_size=5, verbose=0, loss="cross_entropy", optimizer="sgd", eager=eager)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=f"train_step: eager must be True or False, got {eager!r}"):
        ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, eager=eager)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_verbose_auto_is_keras_default(backend, rng, capsys):
    """Keras's ``verbose='auto'`` (its default) is 1: a line per epoch off a terminal (it was passed on as a truthy
    string); True and False are 1 and 0."""
    x, y = rng.standard_normal((8, 4)).astype(np.float32), np.arange(8) % 2
    printed = []
    for verbose in ("auto", 1, True, False):
        ud.fit(ud.models.TwoLayerNet(4, 3, 2), x, y, 4, 1, verbose, loss="cross_entropy", optimizer="sgd")
        printed.append(capsys.readouterr().out)
    assert "loss" in printed[0] and printed[0].count("\n") == printed[1].count("\n") == printed[2].count("\n")
    assert printed[3] == ""


def test_data_forms_that_cannot_take_an_option(backend, rng):
    model = ud.models.TwoLayerNet(4, 3, 2)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), np.arange(20) % 2
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=5)
    with pytest.raises(ValueError, match="validation_split needs the training data as arrays"):
        ud.fit(model, loader, validation_split=0.1, loss="cross_entropy", optimizer="sgd", verbose=0)
    with pytest.raises(ValueError, match="sample_weight and class_weight need the training data as arrays"):
        ud.fit(model, loader, class_weight={0: 1, 1: 2}, loss="cross_entropy", optimizer="sgd", verbose=0)
    with pytest.raises(ValueError, match=r"x is an array but y is missing"):
        ud.fit(model, x, loss="cross_entropy", optimizer="sgd", verbose=0)
    with pytest.raises(TypeError, match="loss must be a ud.nn loss module or a name"):
        ud.fit(model, x, y, 5, loss=3, optimizer="sgd", verbose=0)



def test_arrays_without_a_batch_size_train_in_batches_of_32_as_keras(backend, rng):
    # the Precision docstring's ud.fit(model, (x, y), loss=..., optimizer=...) was a ValueError asking for one
    x, y = rng.standard_normal((70, 4)).astype(np.float32), rng.standard_normal((70, 2)).astype(np.float32)
    model = ud.models.TwoLayerNet(4, 8, 2)
    history = ud.fit(model, (x, y), epochs=1, verbose=0, loss="mse", optimizer="sgd")
    assert history.params["steps"] == 3  # 32 + 32 + 6


class _ValidationBatches(ud.callbacks.Callback):
    """How many validation batches ``fit`` ran (``on_test_batch_end`` calls)."""

    def __init__(self):
        self.batches = 0

    def on_test_batch_end(self, batch, logs=None):
        self.batches += 1


def test_validation_arrays_come_in_batches_of_validation_batch_size_else_batch_size_as_keras(rng):
    # validation arrays came in batches of 256 whatever batch_size, where Keras's validation_batch_size defaults to it
    x, y = rng.standard_normal((70, 4)).astype(np.float32), rng.standard_normal((70, 2)).astype(np.float32)
    weights = np.ones(70, np.float32)
    model = ud.nn.Linear(4, 2)
    for options, validation_data, batches in (({}, (x, y), 3), ({"batch_size": 10}, (x, y), 7),
                                              ({"batch_size": 10}, (x, y, weights), 7),
                                              ({"batch_size": 10, "validation_batch_size": 35}, (x, y), 2),
                                              ({"validation_batch_size": 35}, (x, y, weights), 2)):
        counter = _ValidationBatches()
        ud.fit(model, (x, y), epochs=1, verbose=0, loss="mse", optimizer="sgd", validation_data=validation_data,
               callbacks=[counter], **options)
        assert counter.batches == batches, options
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=10)
    with pytest.raises(ValueError, match="validation_batch_size=35 batches validation arrays, but validation_data "
                                         "is a DataLoader, which batches itself"):
        ud.fit(model, (x, y), loss="mse", optimizer="sgd", verbose=0, validation_data=loader, validation_batch_size=35)
    with pytest.raises(ValueError, match="validation_batch_size=35 without validation_data or validation_split"):
        ud.fit(model, (x, y), loss="mse", optimizer="sgd", verbose=0, validation_batch_size=35)
    for wrong in (0, -1, 16.0, True):  # (they reached the loader, whose error named batch_size)
        with pytest.raises(ValueError, match=rf"fit: validation_batch_size must be None or a positive integer "
                                             rf"\(samples per validation batch\), got {wrong!r}"):
            ud.fit(model, (x, y), loss="mse", optimizer="sgd", verbose=0, validation_data=(x, y),
                   validation_batch_size=wrong)
