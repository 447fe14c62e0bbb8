"""``fit``/``evaluate``/``predict``: the same call on every backend, real digits, callbacks and bad input."""

import io

import numpy as np
import pytest

import unidl as ud


@pytest.fixture(scope="module")
def digits():
    return ud.datasets.digits("train"), ud.datasets.digits("test")


def _cnn_fit(digits, epochs=15, **kwargs):
    (x, y), (xt, yt) = digits
    model = ud.models.CNN(in_channels=1, num_classes=10, image_size=8)
    optimizer = ud.optim.Adam(model.parameters(), lr=3e-3)
    history = ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
                     batch_size=64, seed=0, verbose=0, **kwargs)
    return model, optimizer, history


_DIGITS_RUNS = {}  # backend -> (model, history) of the run below, which the loader's run is checked against too


def _digits_run(backend, digits):
    """The CNN trained for 15 epochs from seed 0 (validated on the test digits), once per backend in this process."""
    if backend not in _DIGITS_RUNS:
        ud.manual_seed(0)
        model, _, history = _cnn_fit(digits, validation_data=digits[1])
        _DIGITS_RUNS[backend] = model, history
    return _DIGITS_RUNS[backend]


def test_digits_cnn_reaches_95_percent(backend, digits):
    model, history = _digits_run(backend, digits)
    assert history["loss"][-1] < history["loss"][0]
    assert set(history.history) == {"loss", "accuracy", "lr", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 15
    result = ud.evaluate(model, digits[1], loss=ud.nn.CrossEntropyLoss())
    assert result["accuracy"] >= 0.95, result
    assert result["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    predictions = ud.predict(model, digits[1][0])
    assert predictions.shape == (360, 10)
    assert (predictions.argmax(1) == digits[1][1]).mean() == pytest.approx(result["accuracy"])


def test_loader_and_arrays_give_the_same_run(backend, digits):
    """The first 2 epochs from a loader give the losses of the first 2 epochs of the run from arrays (the digits
    run above: validating after each epoch changes no training)."""
    (x, y), _ = digits
    from_arrays = _digits_run(backend, digits)[1]
    ud.manual_seed(0)
    model = ud.models.CNN(in_channels=1, num_classes=10, image_size=8)
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=64, shuffle=True, seed=0)
    from_loader = ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(),
                         optimizer=ud.optim.Adam(model.parameters(), lr=3e-3), epochs=2, verbose=0)
    np.testing.assert_allclose(from_loader["loss"], from_arrays["loss"][:2], rtol=1e-6)


def test_fit_trajectories_agree_across_backends(digits):
    (x, y), _ = digits
    x, y = x[:1400], y[:1400]  # whole batches: one compiled step shape per backend
    losses = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            ud.manual_seed(0)
            model = ud.models.TwoLayerNet(64, 32, 10)
            history = ud.fit(model, (x.reshape(len(x), -1), y), loss=ud.nn.CrossEntropyLoss(),
                             optimizer=ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=3,
                             batch_size=100, seed=1, verbose=0)
            losses[name] = history["loss"]
    for name in losses:
        np.testing.assert_allclose(losses[name], losses["torch"], rtol=1e-5)


def test_native_pipelines_are_accepted(digits):
    (x, y), _ = digits
    x, y = x[:128], y[:128]  # two batches: the pipelines are taken, no training to speak of is checked
    import torch

    with ud.use_backend("torch"):
        model = ud.models.CNN(1, 10, 8)
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                           batch_size=64)
        history = ud.fit(model, data, loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.Adam(model.parameters()),
                         epochs=1, verbose=0)
        assert np.isfinite(history["loss"][0])
    import tensorflow as tf

    for name in ("tensorflow", "keras"):
        with ud.use_backend(name):
            model = ud.models.CNN(1, 10, 8)
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
            history = ud.fit(model, data, loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.Adam(model.parameters()),
                             epochs=1, verbose=0, validation_data=data)
            assert np.isfinite(history["loss"][0]) and 0 <= history["val_accuracy"][0] <= 1


def _native_pipeline_of(arrays, backend_name, batched=True):
    """The backend's own pipeline of batches of 4 of ``arrays`` (of single samples where not ``batched``): torch's
    DataLoader, or tf.data; None for jax, which has none."""
    if backend_name == "torch":
        import torch

        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*map(torch.from_numpy, arrays)),
                                           batch_size=4 if batched else None)
    if backend_name in ("tensorflow", "keras"):
        import tensorflow as tf

        samples = tf.data.Dataset.from_tensor_slices(arrays)
        return samples.batch(4) if batched else samples
    return None


@pytest.mark.parametrize("name", ["torch", "tensorflow", "keras"])
def test_predict_of_a_pipeline_of_bare_tensors_feeds_each_batch_whole(name, rng):
    """A native pipeline over x alone yields bare tensors, not tuples (``torch.utils.data.DataLoader`` over a
    tensor, ``tf.data`` of one array): ``predict`` feeds each batch whole, as of arrays (it took each batch's first
    sample: (6,) of unbatched outputs for 10 samples)."""
    x = rng.standard_normal((10, 3)).astype(np.float32)
    if name == "torch":
        import torch

        bare = torch.utils.data.DataLoader(torch.from_numpy(x), batch_size=4)
    else:
        import tensorflow as tf

        bare = tf.data.Dataset.from_tensor_slices(x).batch(4)
    with ud.use_backend(name):
        model = ud.nn.Linear(3, 2)
        np.testing.assert_allclose(ud.predict(model, bare), ud.predict(model, x), rtol=1e-6)


def test_batches_of_other_than_two_fields_are_one_error(backend, rng):
    """``fit`` and ``evaluate`` take batches (x, y): a third field (Keras's (x, y, sample_weight) from a pipeline)
    was dropped unread, training unweighted, and one field was an ``IndexError``; each is one ``ValueError`` naming
    what the batch holds, on every backend, from a unidl loader (its arrays sliced, or a collate_fn's) and from
    the backend's own pipeline. Weights as ``sample_weight=`` beside arrays still train. An unbatched pipeline is
    ``train_step``'s ``ShapeMismatchError`` on Keras too, where Keras's trainer took it one sample a step."""
    from unidl.data import DataLoader, TensorDataset

    x, y = rng.standard_normal((10, 3)).astype(np.float32), rng.integers(0, 2, 10)
    w = np.zeros(10, np.float32)
    model = ud.nn.Linear(3, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    datas = [DataLoader(TensorDataset(x, y, w), batch_size=4), DataLoader(TensorDataset(x), batch_size=4),
             DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=lambda s: (*ud.data.default_collate(s), w[:4]))]
    native = _native_pipeline_of((x, y, w), ud.get_backend())
    datas += [native] if native is not None else []
    for data in datas:
        with pytest.raises(ValueError, match=r"fit and evaluate take batches of two fields \(x, y\); the data gave "
                                             r"(3 fields|1 field|one )"):
            ud.fit(model, data, loss="cross_entropy", optimizer=optimizer, verbose=0, metrics=[])
        with pytest.raises(ValueError, match=r"take batches of two fields"):
            ud.evaluate(model, data, loss="cross_entropy", metrics=[])
    history = ud.fit(model, x, y, 4, 1, 0, sample_weight=w, loss="cross_entropy", optimizer=optimizer, metrics=[])
    assert history["loss"] == [0.0]
    dict_x = DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=lambda s: ({"x": ud.data.default_collate(s)[0]},
                                                                                ud.data.default_collate(s)[1]))
    with pytest.raises(TypeError, match=r"a DataLoader batch is a flat tuple of arrays; the collate of "
                                        r"samples \(<lambda>\) gave a dict of arrays as field 0"):
        ud.fit(model, dict_x, loss="cross_entropy", optimizer=optimizer, verbose=0, metrics=[])
    if ud.get_backend() == "torch":  # a pipeline of the framework's own giving a dict of inputs: train_step's rule
        import torch

        native = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=4,
                                             collate_fn=lambda s: ({"x": torch.tensor(np.stack([a for a, _ in s]))},
                                                                   torch.tensor([b for _, b in s])))
        with pytest.raises(TypeError, match="fit and evaluate take x and y as arrays or tensors, got dict"):
            ud.fit(model, native, loss="cross_entropy", optimizer=optimizer, verbose=0, metrics=[])
    unbatched = _native_pipeline_of((x, y), ud.get_backend(), batched=False)
    if unbatched is not None:  # (Keras's trainer took one sample a step)
        with pytest.raises(ud.ShapeMismatchError, match=r"x has shape \(3,\), y has shape \(\)"):
            ud.fit(model, unbatched, loss="cross_entropy", optimizer=optimizer, verbose=0, metrics=[])


def test_labels_a_collate_fn_ignores_count_for_no_metric(backend, rng):
    """Labels set to the loss's ``ignore_index`` by a ``collate_fn`` (a masked-language-model's collate) count for
    no metric, as those of the arrays do: the metrics looked for ignored labels in the dataset's arrays alone,
    found none and counted the masked samples as wrong."""
    from unidl.data import DataLoader, TensorDataset

    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    masked = y.copy()
    masked[::2] = -100

    def masking(samples):
        xs, ys = ud.data.default_collate(samples)
        ys = ys.copy()
        ys[::2] = -100
        return xs, ys

    model = ud.nn.Linear(4, 3)
    loss = ud.nn.CrossEntropyLoss()
    from_collate = ud.evaluate(model, DataLoader(TensorDataset(x, y), batch_size=8, collate_fn=masking), loss=loss,
                               metrics=["accuracy"])
    from_arrays = ud.evaluate(model, (x, masked), batch_size=8, loss=loss, metrics=["accuracy"])
    kept = masked != -100
    assert from_collate["accuracy"] == from_arrays["accuracy"] == pytest.approx(
        float((ud.predict(model, x).argmax(1)[kept] == y[kept]).mean()))


def test_predict_and_evaluate_take_the_backends_own_tensors(backend, rng):
    """``predict`` and ``evaluate`` of the backend's tensors give what they give of NumPy arrays (a TensorFlow
    tensor was taken for a ``tf.data`` pipeline on TensorFlow and Keras, its rows for batches: a 0-d input error)."""
    x, y = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 1)).astype(np.float32)
    model = ud.nn.Linear(3, 1)
    np.testing.assert_array_equal(ud.predict(model, ud.tensor(x), batch_size=2), ud.predict(model, x, batch_size=2))
    assert ud.evaluate(model, (ud.tensor(x), ud.tensor(y)), loss="mse", batch_size=2) == \
        ud.evaluate(model, (x, y), loss="mse", batch_size=2)


def _flat_digits(digits, n):
    """The first ``n`` training digits and the first 128 test digits as rows of 64 pixels: the three tests below
    train the same net on whole batches of 128, one compiled step shape for all of them."""
    (x, y), (xt, yt) = digits
    return x[:n].reshape(n, -1), y[:n], xt[:128].reshape(128, -1), yt[:128]


def test_early_stopping_stops_and_restores(backend, digits):
    x, y, xt, yt = _flat_digits(digits, 256)
    model = ud.models.TwoLayerNet(64, 16, 10)
    stopper = ud.callbacks.EarlyStopping(monitor="val_loss", patience=0, restore_best_weights=True)
    # lr 0 -> validation loss never improves after the first epoch
    history = ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(),
                     optimizer=ud.optim.SGD(model.parameters(), lr=0.0), epochs=10, batch_size=128,
                     validation_data=(xt, yt), callbacks=[stopper], verbose=0)
    assert len(history["loss"]) == 2 and stopper.stopped_epoch == 1


def test_learning_rate_schedule_callback(backend, digits):
    x, y, _, _ = _flat_digits(digits, 256)
    model = ud.models.TwoLayerNet(64, 16, 10)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    schedule = ud.callbacks.LearningRateScheduler(ud.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5))
    history = ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer,
                     epochs=3, batch_size=128, callbacks=[schedule], verbose=0)
    assert history["lr"] == [0.1, 0.05, 0.025]  # the rate each epoch trained with
    function_schedule = ud.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * (epoch + 1))
    ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=2,
           batch_size=128, callbacks=[function_schedule], verbose=0)
    assert optimizer.lr == pytest.approx(0.02)


def test_nan_loss_stops_with_epoch_and_step(backend, rng):
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.standard_normal((64, 1)).astype(np.float32)
    y[40] = np.nan
    model = ud.models.TwoLayerNet(4, 3, 1)
    with pytest.raises(ud.NonFiniteLossError, match="at epoch 1, step 3"):
        ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.01), epochs=2,
               batch_size=16, shuffle=False, verbose=0)


def test_plain_log_lines_when_not_a_terminal(backend, digits, capsys):
    x, y, _, _ = _flat_digits(digits, 384)
    model = ud.models.TwoLayerNet(64, 16, 10)
    ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(),
           optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=128, verbose=1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 2 and "Epoch 2/2" in lines[1] and "3 steps" in lines[1] and "loss" in lines[1]
    ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(),
           optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=128, verbose=0)
    assert capsys.readouterr().out == ""


def test_progress_bar_on_a_terminal():
    from unidl.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(1, 3, stream)  # verbose=1 on a terminal: ud.callbacks.ProgressBar, live
    progress.begin_epoch(0, 10)
    progress.batch(4, {"loss": 0.5, "accuracy": 0.9})
    progress.end_epoch({"loss": 0.4}, 10)
    text = stream.getvalue()
    assert text.startswith("\rEpoch 1/3 ") and "5/10" in text.split("\r")[1] and text.endswith("\n")
    assert "10/10" in text.split("\r")[-1] and "loss 0.4000" in text.split("\r")[-1]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
    (dict(batch_size=8, epochs=-1), ValueError, "epochs must be a non-negative integer"),
    (dict(batch_size=8, metrics=("f2",)), ValueError, r"unknown metric 'f2'; valid names: accuracy"),
])
def test_bad_fit_arguments(backend, rng, kwargs, error, message):
    model = ud.models.TwoLayerNet(4, 3, 2)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 2, 20)
    with pytest.raises(error, match=message):
        ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
               verbose=0, **kwargs)


def test_label_check_follows_a_replaced_output_layer(backend, rng):
    # the number of outputs is remembered between fit calls, but not past a change of the model's layers
    model = ud.models.TwoLayerNet(4, 3, 6)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), np.arange(20) % 6
    ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
           batch_size=5, verbose=0)
    model.linear2 = ud.nn.Linear(3, 2)
    with pytest.raises(ud.IndexOutOfRangeError, match=r"labels must lie in \[0, 2\) for a model with 2 outputs"):
        ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
               batch_size=5, verbose=0)


def test_bad_data_is_rejected_before_training(backend, rng):
    model = ud.models.TwoLayerNet(4, 3, 2)
    before = model.state_dict()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(ud.IndexOutOfRangeError, match=r"labels must lie in \[0, 2\) for a model with 2 outputs, or "
                                                     r"equal the loss's ignore_index -100; found labels from 0 to 5"):
        ud.fit(model, (x, np.arange(20) % 6), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, batch_size=5, verbose=0)
    with pytest.raises(ValueError, match="same length"):
        ud.fit(model, (x, np.zeros(19, np.int64)), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, batch_size=5,
               verbose=0)
    with pytest.raises(ValueError, match="empty|length 0|no samples"):
        ud.fit(model, (x[:0], np.zeros(0, np.int64)), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer,
               batch_size=5, verbose=0)
    # validation samples the model cannot take: refused before any batch trains, not after the first epoch, with
    # metrics (whose layout comes from a validation sample) and without (one eval-mode forward of one)
    wide = rng.standard_normal((10, 5)).astype(np.float32)
    for loss, y in ((ud.nn.CrossEntropyLoss(), np.arange(20) % 2), (ud.nn.MSELoss(), np.zeros((20, 2), np.float32))):
        with pytest.raises(ud.errors.ShapeMismatchError,
                           match=r"expected input of shape \(N, 4\), received \(1, 5\)"):
            ud.fit(model, (x, y), loss=loss, optimizer=optimizer, batch_size=5, verbose=0,
                   validation_data=(wide, y[:10]))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_fit_logs_stay_true_after_train_step_on_the_same_model(backend, rng):
    """fit, then train_step, then fit again: each epoch's logs are that epoch's (at lr=0, the true loss),
    not running means carried over from trackers of an earlier compile (Keras recompiles in between)."""
    x, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    x2, y2 = 5 * rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    model = ud.models.TwoLayerNet(4, 8, 3)
    loss, optimizer = ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.0)
    ud.fit(model, (x, y), loss=loss, optimizer=optimizer, batch_size=10, epochs=1, verbose=0, shuffle=False)
    ud.train_step(model, loss, optimizer)(x[:10], y[:10])
    history = ud.fit(model, (x2, y2), loss=loss, optimizer=optimizer, batch_size=10, epochs=2, verbose=0,
                     shuffle=False)
    true_loss = float(ud.to_numpy(loss(model(ud.tensor(x2)), ud.tensor(y2))))
    predicted = np.argmax(ud.to_numpy(model(ud.tensor(x2))), axis=1)
    assert history.history["loss"] == pytest.approx([true_loss] * 2, rel=1e-5)
    assert history.history["accuracy"] == pytest.approx([float(np.mean(predicted == y2))] * 2)


def test_fit_takes_the_labels_its_loss_ignores_and_its_metrics_skip_them(backend, rng):
    """``CrossEntropyLoss``'s ``ignore_index`` among fit's labels: accepted, as ``train_step`` accepts them (fit
    refused them on every backend); the loss ignores those samples and so do the metrics (weight 0, as Keras's
    metrics skip what its loss's ``ignore_class`` masks)."""
    x = rng.standard_normal((12, 4)).astype(np.float32)
    y = np.arange(12) % 3
    y[[1, 4, 5, 10]] = -100
    ud.manual_seed(0)
    model, reference = ud.models.TwoLayerNet(4, 5, 3), ud.models.TwoLayerNet(4, 5, 3)
    reference.load_state_dict(model.state_dict())
    loss = ud.nn.CrossEntropyLoss()
    history = ud.fit(model, (x, y), loss=loss, optimizer=ud.optim.SGD(model.parameters(), lr=0.5), batch_size=4,
                     epochs=2, shuffle=False, verbose=0, metrics=["accuracy"])
    step = ud.train_step(reference, loss, ud.optim.SGD(reference.parameters(), lr=0.5))
    for _ in range(2):
        for start in range(0, 12, 4):
            step(x[start:start + 4], y[start:start + 4])
    for name, value in reference.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.isfinite(history.history["loss"]).all()
    kept = y != -100
    predicted = ud.to_numpy(model(ud.tensor(x))).argmax(1)
    results = ud.evaluate(model, (x, y), loss=loss, metrics=["accuracy"], return_dict=True)
    assert results["accuracy"] == pytest.approx(float((predicted[kept] == y[kept]).mean()))


class _TwoHeads(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = ud.nn.Linear(4, 3), ud.nn.Linear(4, 2)

    def forward(self, x):
        return self.a(x), {"q": self.b(x) * 2}


def test_predict_joins_structured_outputs_and_takes_a_list_of_rows(backend, rng):
    """A forward returning a tuple (or dict) of tensors gives that structure of arrays joined over the batches, as
    Keras's ``predict`` (two outputs of one shape were stacked batch by batch into a (4, 5, 3) array, others a NumPy
    error); nested lists of numbers are the input's rows (``predict(model, x.tolist())`` predicted the first row
    alone), a list of arrays fields, as ``evaluate`` takes it."""
    model = _TwoHeads()
    x = rng.standard_normal((10, 4)).astype(np.float32)
    first, second = ud.predict(model, x, batch_size=4)
    direct_first, direct_second = model(x)
    np.testing.assert_allclose(first, ud.to_numpy(direct_first), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second["q"], ud.to_numpy(direct_second["q"]), rtol=1e-5, atol=1e-6)
    assert first.shape == (10, 3) and second["q"].shape == (10, 2)
    layer = ud.nn.Linear(4, 3)
    expected = ud.predict(layer, x)
    assert expected.shape == (10, 3)
    np.testing.assert_allclose(ud.predict(layer, x.tolist(), batch_size=4), expected, rtol=1e-6)
    np.testing.assert_allclose(ud.predict(layer, list(x)), expected, rtol=1e-6)  # (rows of one shape)
    np.testing.assert_allclose(ud.predict(layer, [x, np.zeros(10)]), expected, rtol=1e-6)  # (fields, as evaluate)
    with pytest.raises(TypeError, match="predict: x given as a list is taken as rows of the input"):
        ud.predict(layer, [[1.0, 2.0], [3.0]])


def test_fit_takes_pipelines_of_unknown_length_as_keras(backend, rng):
    """A ``tf.data`` pipeline from a generator and a torch loader over an ``IterableDataset`` know no length: fit
    runs each epoch to the pipeline's end, as Keras's (``TypeError: The dataset length is unknown`` / ``no len()``),
    and takes them as validation data (torch's: ``NotImplementedError`` reading its sample 0), with the losses of
    the same data given as arrays."""
    import tensorflow as tf
    import torch

    x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.standard_normal((20, 3)).astype(np.float32)

    class Rows(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(torch.tensor(x[i]), torch.tensor(y[i])) for i in range(20)])

    pipelines = {
        "tf.data": lambda: tf.data.Dataset.from_generator(
            lambda: ((x[i:i + 8], y[i:i + 8]) for i in range(0, 20, 8)),
            output_signature=(tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None, 3), tf.float32))),
        "torch": lambda: torch.utils.data.DataLoader(Rows(), batch_size=8)}
    ud.manual_seed(0)
    reference = ud.models.TwoLayerNet(4, 5, 3)
    initial = reference.state_dict()
    expected = ud.fit(reference, (x, y), batch_size=8, epochs=2, shuffle=False, loss="mse", verbose=0,
                      optimizer=ud.optim.SGD(reference.parameters(), lr=0.1), validation_data=(x, y)).history
    for name, make in pipelines.items():
        model = ud.models.TwoLayerNet(4, 5, 3)
        model.load_state_dict(initial)
        history = ud.fit(model, make(), epochs=2, loss="mse", optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
                         validation_data=make(), verbose=0).history
        for key in ("loss", "val_loss"):
            np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="is infinite .a .repeat.. with no count., so an epoch would never end"):
        ud.fit(model, pipelines["tf.data"]().repeat(), epochs=1, loss="mse", optimizer="sgd", verbose=0)


def test_evaluate_without_a_loss_gives_no_accuracy_for_regression_targets(backend, rng):
    """Float targets that are no class probabilities (a regression's) get no implicit accuracy from ``evaluate``
    without a loss (it gave {'accuracy': 0.5}: the argmax agreement of two real vectors); one-hot rows still do."""
    model = ud.nn.Linear(4, 3)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    assert ud.evaluate(model, x, rng.standard_normal((10, 3)).astype(np.float32)) == {}
    one_hot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)]
    expected = float(np.mean(np.argmax(ud.predict(model, x), -1) == np.argmax(one_hot, -1)))
    assert ud.evaluate(model, x, one_hot) == {"accuracy": pytest.approx(expected)}


def test_evaluate_computes_each_loss_it_is_given(backend, rng):
    """``evaluate`` keeps its compiled evaluation (jax, Keras-on-JAX: one program of the forward, the loss and the
    metrics) for a loss of unidl's built again with the same settings; a loss of other settings (``label_smoothing``,
    ``reduction``) or another class weight gives its own value, the eager loss's of the same outputs, never that of
    the program traced for the loss before it."""
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(4, 5, 3)
    x, y = rng.standard_normal((10, 4)).astype(np.float32), rng.integers(0, 3, 10)
    outputs, target = ud.tensor(ud.predict(model, x)), ud.tensor(y)
    losses = [ud.nn.CrossEntropyLoss(), ud.nn.CrossEntropyLoss(label_smoothing=0.2), ud.nn.CrossEntropyLoss(),
              ud.nn.CrossEntropyLoss(reduction="sum"),
              ud.nn.CrossEntropyLoss(weight=ud.tensor(np.array([1.0, 2.0, 3.0], np.float32))),
              ud.nn.CrossEntropyLoss(weight=ud.tensor(np.array([3.0, 1.0, 0.5], np.float32)))]
    values = []
    for loss in losses:
        values.append(ud.evaluate(model, (x, y), batch_size=10, loss=loss)["loss"])
        assert values[-1] == pytest.approx(float(loss(outputs, target)), rel=1e-5), type(loss).__name__
    assert len({round(value, 6) for value in values}) == 5, values  # (the first and third alike, the others apart)


def _tensorflow_fit_graph_calls(monkeypatch, precision) -> tuple:
    """``(history, graph calls, metric graph traces)`` of a 2-epoch tensorflow ``fit`` of a fresh two-layer net on 40
    samples in batches of 16 (16, 16 and a last of 8) with 2 training metrics: every ``GraphFunction`` call counted."""
    from unidl.backends.tensorflow.function import GraphFunction
    from unidl.metrics.accumulator import MetricAccumulator

    calls, accumulators = [], []
    run, make = GraphFunction.__call__, MetricAccumulator.__init__

    def counted(self, *args):
        calls.append(self.__name__)
        return run(self, *args)

    def kept(self, *args, **kwargs):
        make(self, *args, **kwargs)
        accumulators.append(self)

    monkeypatch.setattr(GraphFunction, "__call__", counted)
    monkeypatch.setattr(MetricAccumulator, "__init__", kept)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 8)).astype(np.float32), rng.integers(0, 3, 40)
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(8, 16, 3)
    history = ud.fit(model, (x, y), batch_size=16, epochs=2, loss=ud.nn.CrossEntropyLoss(), precision=precision,
                     optimizer=ud.optim.Adam(model.parameters(), lr=1e-2), metrics=["accuracy", "f1"], verbose=0)
    monkeypatch.undo()
    return history.history, calls, sum(accumulator._function.trace_count or 0 for accumulator in accumulators)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_tensorflow_fit_computes_its_training_metrics_inside_the_step_graph(monkeypatch, precision):
    """``fit``'s training metrics on tensorflow are computed in the train step's graph (``Backend.summary_in_step``):
    one graph call a batch (6 for 2 epochs of 3 batches), where the metrics' statistics were a graph of their own
    called after each step (12 calls, the metrics' graph traced); the values are those of the statistics computed
    apart from the step's outputs."""
    with ud.use_backend("tensorflow"):
        in_step, calls, metric_traces = _tensorflow_fit_graph_calls(monkeypatch, precision)
        monkeypatch.setattr(type(ud.config.backend()), "summary_in_step", False)
        apart, calls_apart, metric_traces_apart = _tensorflow_fit_graph_calls(monkeypatch, precision)
    assert calls == ["train_step of TwoLayerNet"] * 6, calls
    assert metric_traces == 0
    assert sorted(set(calls_apart)) == ["metric statistics", "train_step of TwoLayerNet"], calls_apart
    assert len(calls_apart) == 12 and metric_traces_apart >= 1, (calls_apart, metric_traces_apart)
    assert in_step["accuracy"] == apart["accuracy"] and in_step["f1"] == apart["f1"], (in_step, apart)
    np.testing.assert_allclose(in_step["loss"], apart["loss"], rtol=1e-6)
    assert 0.0 < in_step["accuracy"][-1] and 0.0 < in_step["f1"][-1]
