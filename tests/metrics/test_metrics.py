"""``ud.metrics`` against scikit-learn on random predictions, on every backend, summed over uneven batches."""

import numpy as np
import pytest
from sklearn import metrics as sk

import unidl as ud
from unidl.metrics import MetricAccumulator, get_all
from unidl.metrics.metric import layout_of


_KERAS_RESULTS = {}


def _keras_result(name, y_true, y_pred, sample_weight=None, **options):
    """Keras's metric ``keras.metrics.<name>(**options)`` of these arrays: the oracle of every backend's run, computed
    once per module for each input (the backend-parametrized tests draw the same arrays)."""
    arrays = [None if a is None else np.asarray(a) for a in (y_true, y_pred, sample_weight)]
    key = (name, tuple(sorted(options.items())),
           *((None,) if a is None else (a.dtype.str, a.shape, a.tobytes()) for a in arrays))
    if key not in _KERAS_RESULTS:
        import keras

        metric = getattr(keras.metrics, name)(**options)
        metric.update_state(y_true, y_pred, sample_weight=sample_weight)
        _KERAS_RESULTS[key] = float(metric.result())
    return _KERAS_RESULTS[key]


def _accumulated(names, outputs, target, batch=7):
    """Metrics over batches of ``batch`` (the last one short): totals, not means of batch values."""
    accumulator = MetricAccumulator(get_all(names), layout_of(outputs, target))
    for start in range(0, len(outputs), batch):
        accumulator.add(outputs[start:start + batch], target[start:start + batch])
    return accumulator.results()


def test_classification_metrics_match_sklearn(backend, rng):
    scores = rng.standard_normal((45, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 45)
    predicted = scores.argmax(1)
    every = list(range(4))
    got = _accumulated(["accuracy", "top2", "top_k", "precision", "recall", "f1", "f1_micro", "precision_micro",
                        "recall_micro", ud.metrics.F1Score("weighted", name="f1_weighted"), "confusion_matrix"],
                       scores, labels)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert got["top2"] == pytest.approx(sk.top_k_accuracy_score(labels, scores, k=2, labels=every))
    assert got["top_k"] == 1.0  # k=5 of 4 classes
    for name, function in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert got[name] == pytest.approx(function(labels, predicted, average="macro", labels=every, zero_division=0))
        assert got[f"{name}_micro"] == pytest.approx(function(labels, predicted, average="micro", labels=every))
    assert got["f1_weighted"] == pytest.approx(sk.f1_score(labels, predicted, average="weighted", labels=every))
    np.testing.assert_array_equal(got["confusion_matrix"], sk.confusion_matrix(labels, predicted, labels=every))


def test_one_hot_targets_and_binary_scores(backend, rng):
    scores = rng.standard_normal((30, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    one_hot = np.eye(3, dtype=np.float32)[labels]
    got = _accumulated(["accuracy", "top2", "f1"], scores, one_hot)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, scores.argmax(1)))
    assert got["top2"] == pytest.approx(sk.top_k_accuracy_score(labels, scores, k=2))
    probabilities = rng.random((40, 1)).astype(np.float32)
    positive = rng.integers(0, 2, (40, 1))
    got = _accumulated(["accuracy", "precision", "recall", "f1", ud.metrics.AUC(num_thresholds=2001)],
                       probabilities, positive)
    decided = (probabilities[:, 0] > 0.5).astype(int)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(positive[:, 0], decided))
    assert got["precision"] == pytest.approx(sk.precision_score(positive[:, 0], decided))
    assert got["recall"] == pytest.approx(sk.recall_score(positive[:, 0], decided))
    assert got["f1"] == pytest.approx(sk.f1_score(positive[:, 0], decided))
    # thresholded (Keras's AUC): scores closer than 1/2000 tie, which moves the area by < 1e-3 here
    assert got["auc"] == pytest.approx(sk.roc_auc_score(positive[:, 0], probabilities[:, 0]), abs=1e-3)


def test_multi_class_auc_is_sklearns_one_vs_rest_macro(backend, rng):
    logits = rng.standard_normal((60, 4)).astype(np.float32) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 60)

    def auc(scores, target, **options):  # thresholded: scores closer than 1/4000 tie, moving each area by < 1e-3
        return _accumulated([ud.metrics.AUC(num_thresholds=4001, **options)], scores, target, batch=25)["auc"]

    exact = sk.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert auc(probabilities, labels) == pytest.approx(exact, abs=1e-3)
    assert auc(logits, labels, from_logits=True) == pytest.approx(exact, abs=1e-3)
    assert auc(probabilities, np.eye(4, dtype=np.float32)[labels]) == pytest.approx(exact, abs=1e-3)  # one-hot
    # a class absent from the targets has no area: the mean is over the classes present
    three = probabilities[:, :3] / probabilities[:, :3].sum(1, keepdims=True)
    kept = sk.roc_auc_score(labels % 3, three, multi_class="ovr", average="macro")
    padded = np.concatenate([three, np.zeros((60, 1), np.float32)], axis=1)  # a fourth class, never a label
    assert auc(padded, labels % 3) == pytest.approx(kept, abs=1e-3)


def test_auc_of_logits_and_of_two_class_scores(backend, rng):
    logits = rng.standard_normal((36, 2)).astype(np.float32)
    labels = rng.integers(0, 2, 36)
    exact = sk.roc_auc_score(labels, logits[:, 1] - logits[:, 0])  # softmax's class-1 probability is monotone in it
    got = _accumulated([ud.metrics.AUC(num_thresholds=4001, from_logits=True)], logits, labels)
    assert got["auc"] == pytest.approx(exact, abs=1e-3)
    default = _accumulated(["auc"], 1 / (1 + np.exp(-logits[:, :1])), labels)  # 200 thresholds, as Keras
    assert default["auc"] == pytest.approx(sk.roc_auc_score(labels, logits[:, 0]), abs=2e-2)


def test_regression_metrics_match_sklearn(backend, rng):
    outputs = rng.standard_normal((25, 3)).astype(np.float32)
    target = rng.standard_normal((25, 3)).astype(np.float32)
    got = _accumulated(["mae", "mse"], outputs, target, batch=4)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(target, outputs), rel=1e-5)
    assert got["mse"] == pytest.approx(sk.mean_squared_error(target, outputs), rel=1e-5)


def test_standalone_update_and_compute(backend, rng):
    scores = rng.standard_normal((20, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 20)
    metric = ud.metrics.F1Score()
    metric.update(ud.tensor(scores[:13]), labels[:13])
    metric.update(scores[13:], labels[13:])
    assert metric.compute() == pytest.approx(sk.f1_score(labels, scores.argmax(1), average="macro", labels=[0, 1, 2]))
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


def test_names_and_bad_metrics():
    assert isinstance(ud.metrics.get("top3"), ud.metrics.TopKAccuracy) and ud.metrics.get("top3").k == 3
    assert ud.metrics.get("top5").name == "top5"
    with pytest.raises(ValueError, match=r"unknown metric 'f2'; valid names: accuracy.*top<k>"):
        ud.metrics.get("f2")
    with pytest.raises(ValueError, match=r"two metrics are named \['accuracy'\]"):
        get_all(["accuracy", ud.metrics.Accuracy()])
    with pytest.raises(ValueError, match="average must be one of"):
        ud.metrics.Precision("samples")
    with pytest.raises(ValueError, match=r"MeanAbsoluteError needs outputs and targets of the same shape; got "
                                         r"outputs \(3,\) and integer targets \(\) per sample"):
        MetricAccumulator(get_all(["mae"]), layout_of(np.zeros((2, 3)), np.zeros(2, np.int64)))
    with pytest.raises(ValueError, match=r"AUC needs class scores \(N, C\) against integer labels .*got outputs "
                                         r"\(3,\) and float targets \(2,\)"):
        MetricAccumulator(get_all(["auc"]), layout_of(np.zeros((2, 3)), np.zeros((2, 2))))


def _weighted(names, outputs, target, weight, batch=7):
    """``_accumulated`` of Keras's ``weighted_metrics``: each batch's statistics weighted by its samples' weights."""
    from unidl.metrics.probe import weighted_copies

    accumulator = MetricAccumulator(weighted_copies(names, []), layout_of(outputs, target))
    for start in range(0, len(outputs), batch):
        part = slice(start, start + batch)
        accumulator.add(outputs[part], target[part], weight[part])
    return accumulator.results()


def test_standalone_weighted_update_is_sklearns_sample_weight(backend, rng):
    """``update(..., sample_weight=w)`` weights every statistic as scikit-learn's ``sample_weight``: a confusion
    matrix holds the weighted counts as floats (they were rounded to integers: only ``weighted_metrics`` kept
    them), the ratios are the weighted ones; a metric whose statistics take no weights says so."""
    scores = rng.standard_normal((20, 3)).astype(np.float32)
    labels, weight = rng.integers(0, 3, 20), rng.random(20).astype(np.float32) * 2
    predicted = scores.argmax(1)
    matrix, accuracy, f1 = ud.metrics.ConfusionMatrix(), ud.metrics.Accuracy(), ud.metrics.F1Score()
    for metric in (matrix, accuracy, f1):
        metric.update(scores[:13], labels[:13], sample_weight=weight[:13])
        metric.update(scores[13:], labels[13:], sample_weight=weight[13:])
    expected = sk.confusion_matrix(labels, predicted, labels=[0, 1, 2], sample_weight=weight)
    assert matrix.compute().dtype == np.float64
    np.testing.assert_allclose(matrix.compute(), expected, rtol=1e-5)
    assert accuracy.compute() == pytest.approx(sk.accuracy_score(labels, predicted, sample_weight=weight), rel=1e-5)
    assert f1.compute() == pytest.approx(sk.f1_score(labels, predicted, average="macro", sample_weight=weight),
                                         rel=1e-5)
    matrix.reset()
    matrix.update(scores, labels)  # without weights: integer counts again
    np.testing.assert_array_equal(matrix.compute(), sk.confusion_matrix(labels, predicted, labels=[0, 1, 2]))
    assert matrix.compute().dtype == np.int64

    class Unweighted(ud.metrics.Accuracy):
        def statistics(self, outputs, target):
            return super().statistics(outputs, target)

    with pytest.raises(TypeError, match=r"Unweighted.update\(sample_weight=...\): its statistics\(\) takes no "
                                        r"sample_weight"):
        Unweighted().update(scores, labels, sample_weight=weight)


def test_weighted_metrics_match_keras_and_sklearn_sample_weight(backend, rng):
    scores = rng.standard_normal((45, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 45)
    weight = rng.random(45) * 3
    predicted, every = scores.argmax(1), list(range(4))
    got = _weighted(["accuracy", "top2", "precision", "recall", "f1_micro", "confusion_matrix",
                     ud.metrics.AUC(4001, from_logits=True)], scores, labels, weight)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted, sample_weight=weight))
    assert got["top2"] == pytest.approx(sk.top_k_accuracy_score(labels, scores, k=2, sample_weight=weight))
    for name, function in (("precision", sk.precision_score), ("recall", sk.recall_score)):
        assert got[name] == pytest.approx(function(labels, predicted, average="macro", labels=every,
                                                   sample_weight=weight, zero_division=0))
    assert got["f1_micro"] == pytest.approx(sk.f1_score(labels, predicted, average="micro", sample_weight=weight))
    np.testing.assert_allclose(got["confusion_matrix"],
                               sk.confusion_matrix(labels, predicted, labels=every, sample_weight=weight), rtol=1e-5)
    probabilities = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert got["auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr",
                                                        sample_weight=weight), abs=1e-3)
    # Keras's own weighted metrics: the mean of each sample's error over its elements, weighted per sample
    outputs, target = rng.standard_normal((25, 3)).astype(np.float32), rng.standard_normal((25, 3)).astype(np.float32)
    regression = _weighted(["mae", "mse"], outputs, target, weight[:25], batch=4)
    binary = rng.random((40, 1)).astype(np.float32)
    positive = (rng.random((40, 1)) > 0.5).astype(np.float32)
    two_class = _weighted(["accuracy", "precision", "recall"], binary, positive, weight[:40])
    for value, metric, (y_true, y_pred, w) in (
            (regression["mae"], "MeanAbsoluteError", (target, outputs, weight[:25])),
            (regression["mse"], "MeanSquaredError", (target, outputs, weight[:25])),
            (got["accuracy"], "SparseCategoricalAccuracy", (labels, scores, weight)),
            (two_class["accuracy"], "BinaryAccuracy", (positive, binary, weight[:40])),
            (two_class["precision"], "Precision", (positive, binary, weight[:40])),
            (two_class["recall"], "Recall", (positive, binary, weight[:40]))):
        assert value == pytest.approx(_keras_result(metric, y_true, y_pred, w), rel=1e-5)


@pytest.mark.parametrize("extremes", [[0.0, 1.0, 0.5, -2.0, 3.0], [np.inf, -np.inf, np.nan, 1e20, -1e20, 3e38]],
                         ids=["finite", "non-finite"])
def test_auc_histogram_counts_are_the_dense_threshold_comparisons(backend, rng, extremes):
    """The bucketed AUC counts each threshold's positives exactly as comparing every score, clipped into [0, 1] as
    Keras's ``AUC`` clips it, with each of Keras's thresholds would (-eps, i / (T - 1) by Keras's float32 test
    ``score * (T - 1) > i``, 1 + eps), scores on and beside the thresholds and outside [0, 1] included, infinite,
    huge and NaN ones too (NaN above no threshold; they were an index error, and +inf fell into the third bucket)."""
    thresholds = 11
    metric = ud.metrics.AUC(num_thresholds=thresholds)
    grid = np.arange(thresholds, dtype=np.float32) / np.float32(thresholds - 1)
    scores = np.concatenate([grid, np.nextafter(grid, np.float32(2)), np.nextafter(grid, np.float32(-1)),
                             np.float32(extremes), rng.random(40).astype(np.float32)]).reshape(-1, 1)
    positive = (rng.random(len(scores)) > 0.4).astype(np.float32).reshape(-1, 1)
    metric.update(scores, positive)
    scaled = np.clip(scores, 0, 1) * np.float32(thresholds - 1)  # (N, 1) float32, NaN kept
    above = scaled > np.arange(thresholds, dtype=np.float32)[None, :]  # (N, T): interior thresholds i
    above[:, 0], above[:, -1] = ~np.isnan(scores[:, 0]), False  # -eps: every score but NaN; 1 + eps: none
    tp, fp = (above * positive).sum(0, dtype=np.float64), (above * (1 - positive)).sum(0, dtype=np.float64)
    tpr, fpr = tp / positive.sum(), fp / (1 - positive).sum()
    dense = float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))
    buckets_positive, buckets_negative = metric._totals
    np.testing.assert_array_equal(np.cumsum(buckets_positive[0, ::-1])[::-1][1:], tp)
    np.testing.assert_array_equal(np.cumsum(buckets_negative[0, ::-1])[::-1][1:], fp)
    assert metric.compute() == dense


@pytest.mark.parametrize("thresholds", [5, 11, 200])
def test_auc_is_keras_on_its_threshold_grid(backend, rng, thresholds):
    """Scores on Keras's thresholds i / (T - 1) and random ones give Keras's ``AUC`` (and scikit-learn's where the
    scores are the grid): unidl's thresholds j (1 + 2 eps) / (T - 1) - eps moved every interior one below the grid,
    so 0.25, 0.25, 0.5, 0.75 against 0, 1, 0, 1 gave 0.75 for Keras's and scikit-learn's 0.625 at T = 5."""
    grid = np.arange(thresholds, dtype=np.float32) / np.float32(thresholds - 1)
    for scores in (np.float32([0.25, 0.25, 0.5, 0.75]), np.concatenate([grid, grid[::-1]]),
                   rng.random(300).astype(np.float32)):
        target = (rng.random(len(scores)) > 0.5).astype(np.float32) if len(scores) > 4 else np.float32([0, 1, 0, 1])
        metric = ud.metrics.AUC(num_thresholds=thresholds)
        metric.update(scores.reshape(-1, 1), target.reshape(-1, 1))
        assert metric.compute() == pytest.approx(_keras_result("AUC", target, scores, num_thresholds=thresholds),
                                                 abs=1e-6)
        if len(scores) == 4 and thresholds in (5, 11):  # (scores on the grid: no two thresholds between ties)
            assert metric.compute() == pytest.approx(sk.roc_auc_score(target, scores))


def test_multi_label_binary_accuracy_is_keras_and_sklearns(backend, rng):
    """Multi-hot targets (N, C): ``binary_accuracy`` compares element by element, as Keras's ``BinaryAccuracy`` and
    scikit-learn (it took each row's argmax as one class: 0.5 where they give 0.917); in ``fit``, 'accuracy' beside
    a binary cross-entropy loss is that binary accuracy (Keras's rule), at threshold 0 for ``BCEWithLogitsLoss``,
    and precision, recall and F1 are scikit-learn's multi-label scores."""
    probabilities = rng.uniform(size=(30, 4)).astype(np.float32)
    multi_hot = (rng.uniform(size=(30, 4)) > 0.6).astype(np.float32)
    expected = ((probabilities > 0.5) == multi_hot).mean()
    assert _accumulated(["binary_accuracy"], probabilities, multi_hot)["binary_accuracy"] == pytest.approx(expected)
    one = probabilities[:, :1]
    assert _accumulated(["binary_accuracy"], one, multi_hot[:, 0])["binary_accuracy"] == pytest.approx(
        sk.accuracy_score(multi_hot[:, 0], one[:, 0] > 0.5))
    x = rng.standard_normal((30, 5)).astype(np.float32)
    model = ud.nn.Linear(5, 4)
    history = ud.fit(model, (x, multi_hot), loss=ud.nn.BCEWithLogitsLoss(), optimizer=ud.optim.SGD(
        model.parameters(), lr=0.0), epochs=1, batch_size=7, verbose=0,
        metrics=["accuracy", "precision", "recall_micro", "f1"])
    predicted = (ud.predict(model, x) > 0).astype(int)
    assert history["accuracy"][0] == pytest.approx((predicted == multi_hot).mean(), rel=1e-6)
    # precision, recall and F1 take each class on its own, as scikit-learn's multi-label scores (argmax before)
    assert history["precision"][0] == pytest.approx(sk.precision_score(multi_hot, predicted, average="macro",
                                                                       zero_division=0), rel=1e-6)
    assert history["recall_micro"][0] == pytest.approx(sk.recall_score(multi_hot, predicted, average="micro"))
    assert history["f1"][0] == pytest.approx(sk.f1_score(multi_hot, predicted, average="macro", zero_division=0))
    with pytest.raises(ValueError, match=r"BinaryAccuracy compares each score with its 0/1 target"):
        MetricAccumulator(get_all(["binary_accuracy"]), layout_of(np.zeros((2, 3)), np.zeros(2, np.int64)))


def test_metrics_named_beside_a_logit_loss_read_logits(backend, rng):
    """``loss='binary_crossentropy'`` is ``BCEWithLogitsLoss`` (the model gives logits): the thresholded metrics
    named beside it cut at 0 and 'auc' applies the sigmoid, as scikit-learn on the probabilities (they cut logits at
    0.5 and clipped them into [0, 1]: an AUC of 0.06 for 0.97); 'auc' beside a cross-entropy loss applies the
    softmax. A metric object keeps its options: ``AUC()`` clips scores into [0, 1] as Keras's ``AUC`` does."""
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.standard_normal(60) > 0.4).astype(np.float32).reshape(-1, 1)
    model = ud.nn.Linear(4, 1)
    model.load_state_dict({"weight": np.array([[2.0, 0.5, 0.0, -0.3]], np.float32),
                           "bias": np.array([-0.5], np.float32)})
    logits = ud.predict(model, x)[:, 0]
    predicted, probabilities = (logits > 0).astype(int), 1 / (1 + np.exp(-logits.astype(np.float64)))
    got = ud.evaluate(model, (x, y), loss="binary_crossentropy", batch_size=16,
                      metrics=["accuracy", "binary_accuracy", "precision", "recall", "f1", "auc"])
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y[:, 0], predicted))
    assert got["binary_accuracy"] == pytest.approx(sk.accuracy_score(y[:, 0], predicted))
    assert got["precision"] == pytest.approx(sk.precision_score(y[:, 0], predicted))
    assert got["recall"] == pytest.approx(sk.recall_score(y[:, 0], predicted))
    assert got["f1"] == pytest.approx(sk.f1_score(y[:, 0], predicted))
    assert got["auc"] == pytest.approx(sk.roc_auc_score(y[:, 0], probabilities), abs=2e-3)
    explicit = ud.evaluate(model, (x, y), loss="binary_crossentropy", metrics=[ud.metrics.AUC()])
    assert explicit["auc"] == pytest.approx(_keras_result("AUC", y, logits[:, None]), abs=1e-6)
    labels = np.digitize(x[:, 0], [-0.5, 0.5])
    three = ud.nn.Linear(4, 3)
    scores = ud.predict(three, x).astype(np.float64)
    softmax = np.exp(scores - scores.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    got = ud.evaluate(three, (x, labels), loss="sparse_categorical_crossentropy", metrics=["auc"])
    assert got["auc"] == pytest.approx(sk.roc_auc_score(labels, softmax, multi_class="ovr"), abs=3e-3)
    multi_hot = (rng.random((60, 3)) < 1 / (1 + np.exp(-2 * scores))).astype(np.float32)  # multi-label: a sigmoid each
    got = ud.evaluate(three, (x, multi_hot), loss=ud.nn.BCEWithLogitsLoss(), metrics=["auc"])
    assert got["auc"] == pytest.approx(sk.roc_auc_score(multi_hot, 1 / (1 + np.exp(-scores)), average="macro"),
                                       abs=3e-3)


def test_nan_scores_count_alike_on_every_backend(backend):
    """A row holding a NaN score is a miss for top-k accuracy on every backend, as Keras's ``in_top_k`` (torch
    counted the row as a hit, TensorFlow and JAX gave NaN: ``sign`` of NaN differed)."""
    scores = np.array([[np.nan, 0.1, 0.2], [0.3, 0.1, 0.2], [0.1, np.nan, 0.5]], np.float32)
    labels = np.array([0, 0, 2])
    assert _accumulated(["top1"], scores, labels)["top1"] == pytest.approx(1 / 3)


def test_a_binary_average_of_several_classes_is_refused():
    """``average='binary'`` reads class 1 of two: over more classes it is scikit-learn's ``ValueError`` (it gave
    class 1's value alone)."""
    with pytest.raises(ValueError, match=r"Precision average='binary' reads class 1 of two classes, but the outputs "
                                         r"hold 4 classes"):
        MetricAccumulator([ud.metrics.Precision("binary")], layout_of(np.zeros((2, 4)), np.zeros(2, np.int64)))
    two = _accumulated([ud.metrics.Recall("binary")], np.array([[0.2, 0.8], [0.9, 0.1]], np.float32), np.array([1, 1]))
    assert two["recall"] == 0.5


def test_a_metric_named_as_fits_own_log_entries_is_an_error(backend, rng):
    """A metric named 'loss' replaced the training loss in History (and in what callbacks and the NaN check read);
    one named 'lr' was dropped."""
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)
    for name in ("loss", "lr", "val_mae"):
        model = ud.nn.Linear(4, 1)
        with pytest.raises(ValueError, match=rf"metric names \['{name}'\] are fit's own log entries"):
            ud.fit(model, x, y, batch_size=4, loss="mse", optimizer="sgd", verbose=0,
                   metrics=[ud.metrics.MeanAbsoluteError(name=name)])


def test_metric_objects_serve_training_and_validation_apart(backend, rng):
    """Metric objects given to ``fit`` with one-hot validation targets beside integer training labels: validation
    bound the one object anew, so training's accuracy read its labels as one-hot rows (0.425 for 0.2)."""
    x, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    xv, yv = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20)
    ud.manual_seed(0)
    model = ud.nn.Linear(4, 3)
    given = [ud.metrics.Accuracy(), ud.metrics.F1Score()]
    history = ud.fit(model, x, y, batch_size=10, verbose=0, shuffle=False, loss="cross_entropy",
                     optimizer=ud.optim.SGD(model.parameters(), lr=0.0), metrics=given,
                     validation_data=(xv, np.eye(3, dtype=np.float32)[yv]))
    predicted, predicted_validation = ud.predict(model, x).argmax(1), ud.predict(model, xv).argmax(1)
    assert history["accuracy"][0] == pytest.approx(sk.accuracy_score(y, predicted))
    assert history["f1"][0] == pytest.approx(sk.f1_score(y, predicted, average="macro", labels=[0, 1, 2]))
    assert history["val_accuracy"][0] == pytest.approx(sk.accuracy_score(yv, predicted_validation))
    assert all(metric.layout is None for metric in given)  # (the objects given stay unbound)


def _in_graph(names, outputs, target):
    """The metrics' values from their statistics alone, as a framework's graph computes them (no target check)."""
    accumulator = MetricAccumulator(get_all(names), layout_of(outputs, target))
    return accumulator.results_from([np.asarray(ud.tensors.to_numpy(v), dtype=np.float64)
                                     for v in accumulator._function(outputs, target)])


def test_labels_outside_the_classes_are_an_error_or_a_miss(backend, rng):
    """A label outside [0, C) is the losses' ``IndexOutOfRangeError`` where the values are known (top-k counted it as
    a hit, the confusion matrix dropped it, precision, recall and AUC gave 0.0); in a graph a miss for every
    metric, as Keras's ``SparseTopKCategoricalAccuracy``."""
    scores = np.array([[-1, -2, -3, -4, -5], [1, 2, 3, 4, 5], [0.1, 0.2, -3, -4, -5], [5, 4, 3, 2, 1]], np.float32)
    labels = np.array([7, 7, -1, 0])
    for name in ("accuracy", "top2", "confusion_matrix", "precision", "recall", "auc"):
        with pytest.raises(ud.errors.IndexOutOfRangeError, match=r"labels must lie in \[0, 5\) .* from -1 to 7"):
            _accumulated([name], scores, labels)
    model = ud.nn.Linear(3, 5)
    with pytest.raises(ud.errors.IndexOutOfRangeError, match=r"Accuracy labels must lie in \[0, 5\)"):
        ud.evaluate(model, np.zeros((4, 3), np.float32), labels, metrics=["accuracy", "top2"])
    graph = _in_graph(["accuracy", "top2", "recall"], scores, labels)
    assert graph["top2"] == pytest.approx(_keras_result("SparseTopKCategoricalAccuracy", labels, scores, k=2)) == 0.25
    assert graph["accuracy"] == 0.25 and graph["recall"] == pytest.approx(0.2)  # (class 0's 1 of 1, the others 0)


@pytest.mark.parametrize("targets", [[2.0, 2.0, 0.0, 1.0], [0.7, 0.7, 0.0, 1.0], [-1.0, -1.0, 0.0, 1.0]],
                         ids=["two", "soft", "negative"])
def test_binary_targets_other_than_0_or_1_are_an_error_or_a_miss(backend, targets):
    """Binary metrics read each target as positive or not: another value is a ``ValueError`` naming it where the
    values are known (binary accuracy was -0.25 and AUC 1.2 for targets of 2; 0.7 was cast to class 0); in a graph
    binary accuracy is Keras's ``equal(y_true, score > threshold)``, a miss, and AUC's targets stay in [0, 1]."""
    scores = np.array([[0.1], [0.2], [0.9], [0.8]], np.float32)
    target = np.array(targets, np.float32).reshape(-1, 1)
    for name in ("binary_accuracy", "accuracy", "precision", "recall", "f1", "auc"):
        with pytest.raises(ValueError, match=rf"needs targets of 0 or 1 .*; found {targets[0]:g}\. Soft targets"):
            _accumulated([name], scores, target)
    with pytest.raises(ValueError, match=r"AUC needs targets of 0 or 1"):
        ud.metrics.AUC().update(scores, target)
    graph = _in_graph(["binary_accuracy", "accuracy", "auc"], scores, target)
    assert graph["binary_accuracy"] == pytest.approx(_keras_result("BinaryAccuracy", target, scores)) == \
        graph["accuracy"] == 0.25
    assert 0.0 <= graph["auc"] <= 1.0
