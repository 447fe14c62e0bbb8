"""Complete resume: schedules, callbacks and History continue as if the run had never stopped; changed
settings are applied with a warning or refused before anything changes."""

import functools
import json
import os
import warnings

import numpy as np
import pytest

import unidl as ud
from unidl.errors import CheckpointStateError, ResumeMismatchError


class Crash(Exception):
    pass


class CrashAt(ud.callbacks.Callback):
    """Stops the run (as a crash would) right after global step ``step``, before that step is checkpointed."""

    def __init__(self, step):
        self.step = step

    def on_batch_end(self, batch, logs=None):
        if self.trainer.global_step == self.step:
            raise Crash


class CrashAtEpochEnd(ud.callbacks.Callback):
    """Stops the run at the end of epoch ``epoch`` (0-based) after its last batch was checkpointed and before the
    epoch-end checkpoint (``Checkpoint`` runs last): its History entry and schedule step are not saved."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash


def _loader():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x.sum(axis=1, keepdims=True) * 0.1).astype(np.float32)
    return ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=8, shuffle=True, seed=1)


def _run(directory, epochs, *, lr=0.8, crash_at=None, resume_from=None, loss=None, every_steps=None,
         optimizer="SGD", betas=(0.9, 0.999), eager=False, metrics=None, built=None, crash_at_end=None, model=None,
         step_size=1, loader=None):
    """``model``: a function building the model (default: ``TwoLayerNet(3, 8, 1)``). ``built`` gets the model
    and the optimizer before ``fit`` runs. ``loader``: the run's ``_loader()`` (default: a new one)."""
    ud.manual_seed(0)
    model = model() if model is not None else ud.models.TwoLayerNet(3, 8, 1)
    optimizer = (ud.optim.SGD(model.parameters(), lr=lr, momentum=0.5) if optimizer == "SGD"
                 else ud.optim.Adam(model.parameters(), lr=lr, betas=betas))
    if built is not None:
        built.extend((model, optimizer))
    loader = loader or _loader()
    schedule = ud.callbacks.LearningRateScheduler(ud.optim.lr_scheduler.StepLR(optimizer, step_size=step_size,
                                                                                 gamma=0.5))
    stopping = ud.callbacks.EarlyStopping(monitor="loss", patience=10)
    callbacks = [ud.callbacks.Checkpoint(directory, every_steps=every_steps, keep=2), schedule, stopping]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    if crash_at_end is not None:
        callbacks.append(CrashAtEpochEnd(crash_at_end))
    history = None
    try:
        history = ud.fit(model, loader, loss=loss or ud.nn.MSELoss(), optimizer=optimizer, epochs=epochs,
                         callbacks=callbacks, verbose=0, resume_from=resume_from, eager=eager, metrics=metrics)
    except Crash:
        pass
    return model, optimizer, history, stopping


def _same_run(resumed, straight, loss_rtol):
    model, _, history, stopping = resumed
    straight_model, _, straight_history, straight_stopping = straight
    assert history.history["lr"] == straight_history.history["lr"]
    np.testing.assert_allclose(history.history["loss"], straight_history.history["loss"], rtol=loss_rtol)
    for key, value in straight_model.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    assert stopping.best_epoch == straight_stopping.best_epoch and stopping._wait == straight_stopping._wait
    assert stopping.best == pytest.approx(straight_stopping.best, rel=loss_rtol)


def test_schedule_and_history_continue_after_an_epoch_boundary(tmp_path, backend):
    straight = _run(tmp_path / "straight", 4)
    assert straight[2].history["lr"] == [0.8, 0.4, 0.2, 0.1]
    _run(tmp_path / "run", 2)
    resumed = _run(tmp_path / "run", 4, resume_from=tmp_path / "run")
    _same_run(resumed, straight, loss_rtol=1e-6)


def _interrupted_mid_way_and_resumed(tmp_path, eager=False):
    """Bit-identical: the interrupted epoch's running sums (unidl's loop, or Keras's own loss and metric trackers)
    go on from the checkpoint's, in the same order."""
    straight = _run(tmp_path / "straight", 3, every_steps=2, eager=eager)
    # crash in epoch 2 of 5-batch epochs: the last checkpoint is after step 6
    _run(tmp_path / "run", 3, every_steps=2, crash_at=8, eager=eager)
    assert sorted(os.listdir(tmp_path / "run"))[-1] == "checkpoint-0001-0000006.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # every callback finds its state (CrashAt is gone)
        resumed = _run(tmp_path / "run", 3, every_steps=2, resume_from="auto", eager=eager)
    _same_run(resumed, straight, loss_rtol=0)


def test_history_of_an_epoch_interrupted_mid_way_averages_all_its_batches(tmp_path, backend):
    _interrupted_mid_way_and_resumed(tmp_path)


def _weighted_run(directory, resume_from=None):
    """Two epochs of 3 batches of arrays with ``sample_weight`` and ``class_weight``, checkpointed every 2 steps."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(3, 8, 2)
    history = ud.fit(model, x, y, batch_size=8, epochs=2, sample_weight=np.linspace(0.5, 2.0, 24),
                     class_weight={0: 1.0, 1: 3.0}, loss=ud.nn.CrossEntropyLoss(),
                     optimizer=ud.optim.SGD(model.parameters(), lr=0.5, momentum=0.5),
                     callbacks=[ud.callbacks.Checkpoint(directory, every_steps=2, keep=None)], verbose=0, seed=1,
                     resume_from=resume_from)
    return model, history


def test_a_weighted_fit_resumed_mid_epoch_ends_as_uninterrupted(tmp_path, backend):
    """``sample_weight`` and ``class_weight`` rebuild fit's loader (the weights travel with the targets) before the
    resume positions it: resumed from the checkpoint after the first batch of epoch 2 (step 4), the run goes on at
    the next batch of the shuffled order, bit for bit as the run that wrote it."""
    straight_model, straight = _weighted_run(tmp_path / "straight")
    model, resumed = _weighted_run(tmp_path / "resumed",
                                   resume_from=tmp_path / "straight" / "checkpoint-0001-0000004.safetensors")
    assert resumed.history["loss"] == straight.history["loss"]
    for key, value in straight_model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_history_of_an_interrupted_epoch_through_keras_model_fit(tmp_path):
    """Eager on keras: Keras's own ``Model.fit`` runs the epoch, and its trackers resume from the checkpoint's."""
    pytest.importorskip("keras")
    with ud.use_backend("keras"):
        _interrupted_mid_way_and_resumed(tmp_path, eager=True)


# the two kinds of epoch loop: unidl's (as on tensorflow and jax) and Keras's own trainer
LOOPS = ["torch", "keras"]


@pytest.mark.parametrize("loop", LOOPS)
def test_an_epoch_killed_after_its_last_batch_was_checkpointed_ends_as_uninterrupted(tmp_path, loop):
    """Killed between the checkpoint of an epoch's last batch and that epoch's end, itself resumed mid-way: the
    resumed run ends that epoch first (History entry bit for bit from the loop's own logs, the schedule's step,
    EarlyStopping), then goes on exactly as the uninterrupted run."""
    pytest.importorskip(loop)
    with ud.use_backend(loop):
        _killed_at_an_epoch_end_and_resumed(tmp_path)


def _killed_at_an_epoch_end_and_resumed(tmp_path):
    straight = _run(tmp_path / "straight", 3, every_steps=2, metrics=["mae"])
    _run(tmp_path / "run", 3, every_steps=2, crash_at=9, metrics=["mae"])  # newest checkpoint: step 8, mid-epoch 2
    _run(tmp_path / "run", 3, every_steps=2, resume_from="auto", metrics=["mae"], crash_at_end=1)
    assert sorted(os.listdir(tmp_path / "run"))[-1] == "checkpoint-0001-0000010.safetensors"  # epoch 2's last batch
    resumed = _run(tmp_path / "run", 3, every_steps=2, resume_from="auto", metrics=["mae"])
    _same_run(resumed, straight, loss_rtol=0)
    assert resumed[2].history == straight[2].history


def _classify(directory, epochs, *, crash_at=None, resume_from=None, loss=None):
    """Three classes at lr 0 (every backend's predictions agree) with ratio metrics, checkpointed every 2 steps
    of 5-batch epochs. ``loss``: default ``CrossEntropyLoss()``."""
    ud.manual_seed(0)
    model = ud.models.TwoLayerNet(3, 8, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, rng.integers(0, 3, 40)), batch_size=8, shuffle=True, seed=1)
    callbacks = [ud.callbacks.Checkpoint(directory, every_steps=2, keep=2)]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    try:
        return ud.fit(model, loader, loss=loss or ud.nn.CrossEntropyLoss(),
                      optimizer=ud.optim.SGD(model.parameters(), lr=0.0),
                      epochs=epochs, callbacks=callbacks, verbose=0, resume_from=resume_from,
                      metrics=["accuracy", "f1", "precision_micro", ud.metrics.AUC(from_logits=True)]).history
    except Crash:
        return None


@pytest.mark.parametrize("loop", LOOPS)
def test_a_mid_epoch_checkpoint_of_another_backend_goes_on_from_its_statistics(tmp_path, loop):
    """A checkpoint written mid-epoch by the other kind of loop (Keras's trainer and its float32 trackers, or
    unidl's loop on torch), resumed by ``loop``'s: the epoch goes on from the checkpoint's summed statistics,
    so ratio metrics (F1, AUC) equal the uninterrupted run's exactly (not a mean of the two parts' ratios) and
    the loss to float32 rounding (each loop's per-batch losses differ by that)."""
    pytest.importorskip("keras")
    with ud.use_backend("keras" if loop == "torch" else "torch"):
        straight = _classify(tmp_path / "straight", 2)
        _classify(tmp_path / "run", 2, crash_at=8)  # newest checkpoint: step 6, a batch into epoch 2
    with ud.use_backend(loop):
        resumed = _classify(tmp_path / "run", 2, resume_from="auto")
    assert resumed.keys() == straight.keys()
    for key, values in straight.items():
        if key == "loss":
            np.testing.assert_allclose(resumed[key], values, rtol=1e-6)
        else:
            assert resumed[key] == values, key


def test_a_new_lr_wins_with_a_warning_and_new_betas_too(tmp_path, backend):
    _run(tmp_path / "run", 1, optimizer="Adam", lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the same settings: nothing to warn about
        _run(tmp_path / "same", 1, optimizer="Adam", lr=0.01)
        _run(tmp_path / "same", 2, optimizer="Adam", lr=0.01, resume_from="auto")
    with pytest.warns(UserWarning, match=r"lr=0.02 where the run started with lr=0.01: the new lr wins"):
        _, optimizer, history, _ = _run(tmp_path / "run", 2, optimizer="Adam", lr=0.02, resume_from="auto")
    assert history.history["lr"] == [0.01, 0.02 * 0.5]  # the schedule continues with the new base rate
    with pytest.warns(UserWarning, match=r"betas: \[0.9, 0.999\] -> \(0.8, 0.9\): the new values win"):
        _, optimizer, _, _ = _run(tmp_path / "run", 3, optimizer="Adam", lr=0.02, betas=(0.8, 0.9),
                                  resume_from="auto")
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)  # (the load restored the saved ones first)


def test_a_schedule_built_with_new_settings_wins_with_a_warning(tmp_path, backend):
    """``fit``'s resume rule for a schedule's settings, as for the optimizer's: a ``StepLR`` of ``step_size=2`` given
    to a run saved with ``step_size=1`` keeps its own from the resumed epoch on, with a warning naming both (the
    settings were not saved: the new ones were taken silently), where a plain ``load_state_dict`` refuses them."""
    _run(tmp_path / "run", 2)
    with pytest.warns(UserWarning, match=r"StepLR built with changed settings step_size: 1 -> 2: the new values win"):
        _, _, history, _ = _run(tmp_path / "run", 4, resume_from="auto", step_size=2)
    assert history.history["lr"] == [0.8, 0.4, 0.2, 0.2]  # (0.1 in the last epoch with step_size=1)


def test_a_new_lr_scales_every_groups_rate_and_chained_schedules_as_a_run_started_with_it(tmp_path, backend):
    """A new lr at a resume scales every param group's rate and every schedule's base rates by new / old: the rates
    of a run started with the new lr, for two groups of their own rates under two chained schedules (the first
    schedule's closed form of the first group's base rate was written into every group and kept by the recursive
    schedules); the options the run changed since its start, and those given anew to a rule of the user's own
    (which cannot take the saved ones), resume as the rule says."""
    def run(directory, epochs, lr, resume_from=None, momentum=0.5):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(3, 8, 1)
        groups = [{"params": model.linear1.parameters()}, {"params": model.linear2.parameters(), "lr": lr / 100}]
        optimizer = OwnSGD(groups, lr=lr, momentum=momentum)
        schedules = [ud.optim.lr_scheduler.StepLR(optimizer, 1, 0.5),
                     ud.optim.lr_scheduler.ExponentialLR(optimizer, 0.9)]
        x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
        rates = []
        callbacks = [ud.callbacks.Checkpoint(directory), *map(ud.callbacks.LearningRateScheduler, schedules),
                     lambda epoch, logs: rates.append([group["lr"] for group in optimizer.param_groups])]
        ud.fit(model, (x, x[:, :1]), batch_size=8, loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=epochs,
               verbose=0, callbacks=callbacks, resume_from=resume_from, shuffle=False)
        return rates, optimizer

    straight, _ = run(tmp_path / "straight", 4, lr=0.2)
    run(tmp_path / "run", 2, lr=0.1)
    with pytest.warns(UserWarning, match="the new lr wins"):
        with pytest.warns(UserWarning, match=r"momentum: 0.5 -> 0.9: the new values win"):
            resumed, optimizer = run(tmp_path / "run", 4, lr=0.2, resume_from="auto", momentum=0.9)
    np.testing.assert_allclose(resumed, straight[2:], rtol=1e-12)
    assert optimizer.param_groups[0]["momentum"] == 0.9


class OwnSGD(ud.optim.SGD):
    """SGD of a rule of its own (its options cannot change once built)."""

    def update(self, param, grad, slots, lr, step, ops):
        return super().update(param, grad, slots, lr, step, ops)


def _wider():
    return ud.models.TwoLayerNet(3, 5, 1)


def _sequential():
    return ud.nn.Sequential(ud.nn.Linear(3, 8), ud.nn.ReLU(), ud.nn.Linear(8, 1))


def test_a_changed_loss_model_or_optimizer_class_is_refused_before_anything_changes(tmp_path, backend):
    _run(tmp_path / "run", 1)
    files = {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()}
    with pytest.raises(ResumeMismatchError, match="loss MSELoss; this run passes L1Loss"):
        _run(tmp_path / "run", 2, loss=ud.nn.L1Loss(), resume_from="auto")
    with pytest.raises(ValueError, match="SGD state, which cannot load into Adam"):
        _run(tmp_path / "run", 2, optimizer="Adam", resume_from="auto")
    # a model of another architecture, through an explicit resume_from: every mismatch named, nothing loaded
    for build, message in ((_sequential, r"into Sequential: missing keys: 0.weight .* unexpected keys: linear1.weight"),
                           (_wider, r"into TwoLayerNet: shape mismatches: linear1.weight: expected shape \(5, 3\), "
                                    r"found \(8, 3\)")):
        built = []
        with pytest.raises(ud.StateDictError, match=message):
            _run(tmp_path / "run", 2, resume_from=tmp_path / "run", model=build, built=built)
        model, optimizer = built
        ud.manual_seed(0)
        initial = build().state_dict()  # the weights _run builds, before any load
        for key, value in model.state_dict().items():
            assert np.array_equal(value, initial[key]), f"{key} changed although the resume was refused"
        state = optimizer.state_dict()
        assert state["step"] == 0 and state["lr"] == 0.8
        assert all(not value.any() for entry in state["slots"] for value in entry.values())
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()} == files


class FunctionLoss(ud.nn.Module):
    """A loss of the user's that computes the function it holds (``fit`` takes loss modules, not functions)."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, prediction, target):
        return self.function(prediction, target)


def squared_error(prediction, target):
    return ud.ops.mean((prediction - target) ** 2)


def absolute_error(prediction, target):
    return ud.ops.mean(ud.ops.abs(prediction - target))


def scaled_error(prediction, target, scale):
    return scale * ud.ops.mean((prediction - target) ** 2)


def _unchanged_by_a_refused_resume(model, optimizer):
    """The weights ``_run`` builds and a fresh optimizer: a refused resume loaded nothing."""
    ud.manual_seed(0)
    initial = ud.models.TwoLayerNet(3, 8, 1).state_dict()
    for key, value in model.state_dict().items():
        assert np.array_equal(value, initial[key]), f"{key} changed although the resume was refused"
    assert optimizer.state_dict()["step"] == 0


def test_a_loss_of_other_settings_or_another_function_is_refused_before_anything_changes(tmp_path, backend):
    """Only the loss's class name was compared: MSELoss(reduction='sum') resumed a 'mean' run, and a loss module
    holding another function (or a partial of other arguments) resumed silently; the message names both settings."""
    for case, (saved, given, message) in enumerate((
            (ud.nn.MSELoss, lambda: ud.nn.MSELoss(reduction="sum"),
             r"loss unidl.nn.loss.MSELoss\(reduction='mean'\); this run passes "
             r"unidl.nn.loss.MSELoss\(reduction='sum'\)"),
            (lambda: FunctionLoss(squared_error), lambda: FunctionLoss(absolute_error),
             r"FunctionLoss\(function='function [\w.]*squared_error'\); this run passes "
             r"[\w.]*FunctionLoss\(function='function [\w.]*absolute_error'\): a changed loss"),
            (lambda: FunctionLoss(functools.partial(scaled_error, scale=1.0)),
             lambda: FunctionLoss(functools.partial(scaled_error, scale=2.0)),
             r"'keywords': \{'scale': 1.0\}\}\); this run passes .*'keywords': \{'scale': 2.0\}\}\)"))):
        directory = tmp_path / f"case{case}"
        _run(directory, 1, loss=saved())
        files = {path.name: path.read_bytes() for path in directory.iterdir()}
        built = []
        with pytest.raises(ResumeMismatchError, match=message):
            _run(directory, 2, loss=given(), resume_from="auto", built=built)
        _unchanged_by_a_refused_resume(*built)
        assert {path.name: path.read_bytes() for path in directory.iterdir()} == files
        _, _, history, _ = _run(directory, 2, loss=saved(), resume_from="auto")
        assert history.epochs == 2  # the same loss built again resumes


def test_a_label_smoothing_change_is_refused_and_the_same_weighted_loss_rebuilt_resumes(tmp_path, backend):
    _classify(tmp_path / "run", 1)
    with pytest.raises(ResumeMismatchError, match=r"CrossEntropyLoss\(label_smoothing=0.0\); this run passes "
                                                  r"unidl.nn.loss.CrossEntropyLoss\(label_smoothing=0.1\)"):
        _classify(tmp_path / "run", 2, resume_from="auto", loss=ud.nn.CrossEntropyLoss(label_smoothing=0.1))
    assert len(_classify(tmp_path / "run", 2, resume_from="auto", loss=ud.nn.CrossEntropyLoss())["loss"]) == 2

    def weighted(weight):
        return ud.nn.CrossEntropyLoss(weight=np.array(weight), label_smoothing=0.1)

    _classify(tmp_path / "weighted", 1, loss=weighted([1.0, 2.0, 0.5]))
    with pytest.raises(ResumeMismatchError,
                       match=r"CrossEntropyLoss\(weight=\{'shape': \[3\], 'sha256': '\w+'\}\)"):
        _classify(tmp_path / "weighted", 2, resume_from="auto", loss=weighted([1.0, 2.0, 0.25]))
    assert len(_classify(tmp_path / "weighted", 2, resume_from="auto", loss=weighted([1.0, 2.0, 0.5]))["loss"]) == 2


@pytest.mark.parametrize("loop", LOOPS)
def test_a_weighted_loss_checkpointed_on_another_backend_resumes_with_the_same_loss(tmp_path, loop):
    """A loss's settings compare equal across backends (a class weight stored in float64 by one, float32 by
    another): a run of torch's loop resumes Keras's checkpoint and the other way round."""
    pytest.importorskip("keras")
    loss = dict(weight=np.array([1.0, 2.0, 0.1]), label_smoothing=0.2, ignore_index=-1)
    with ud.use_backend("keras" if loop == "torch" else "torch"):
        _classify(tmp_path / "run", 1, loss=ud.nn.CrossEntropyLoss(**loss))
    with ud.use_backend(loop):
        assert len(_classify(tmp_path / "run", 2, resume_from="auto", loss=ud.nn.CrossEntropyLoss(**loss))["loss"]) == 2
        with pytest.raises(ResumeMismatchError, match=r"ignore_index=-1\); this run passes .*ignore_index=-100\)"):
            _classify(tmp_path / "run", 3, resume_from="auto",
                      loss=ud.nn.CrossEntropyLoss(**dict(loss, ignore_index=-100)))


def test_a_checkpoint_holding_only_the_loss_class_name_resumes_as_before(tmp_path, backend, monkeypatch):
    """Checkpoints written before the loss's settings were saved hold its class's name only: that is compared (a
    changed class is still refused), the settings are unknown and not held against the run."""
    import unidl.checkpoint

    save = unidl.checkpoint.save_checkpoint

    def save_as_before(*args, extra, **options):
        fit = {key: value for key, value in extra["fit"].items() if key != "loss_settings"}
        return save(*args, extra=dict(extra, fit=fit), **options)

    with monkeypatch.context() as patch:
        patch.setattr(unidl.checkpoint, "save_checkpoint", save_as_before)
        _run(tmp_path / "run", 1)
    with pytest.raises(ResumeMismatchError, match="loss MSELoss; this run passes L1Loss"):
        _run(tmp_path / "run", 2, loss=ud.nn.L1Loss(), resume_from="auto")
    _, _, history, _ = _run(tmp_path / "run", 2, loss=ud.nn.MSELoss(reduction="sum"), resume_from="auto")
    assert history.epochs == 2


def _linear_cross_entropy_run(directory, epochs, *, resume_from=None, loss=None, crash_at=None):
    """A linear body trained with ``LinearCrossEntropyLoss``, whose ``linear`` the optimizer trains too (SGD with
    momentum: its slots of the loss's weight are restored at a resume), checkpointed every 3 steps of 4-batch
    epochs. ``loss``: the loss to pass (default: one built anew). Returns the body, the loss and the History."""
    ud.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)).astype(np.float32), rng.integers(0, 4, size=32)
    body = ud.nn.Linear(5, 3)
    loss = loss or ud.nn.LinearCrossEntropyLoss(3, 4)
    optimizer = ud.optim.SGD(list(body.parameters()) + list(loss.parameters()), lr=0.5, momentum=0.9)
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=8, shuffle=True, seed=1)
    callbacks = [ud.callbacks.Checkpoint(directory, every_steps=3, keep=2)]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    history = None
    try:
        history = ud.fit(body, loader, loss=loss, optimizer=optimizer, epochs=epochs, callbacks=callbacks,
                         verbose=0, resume_from=resume_from)
    except Crash:
        pass
    return body, loss, history


@pytest.mark.parametrize("loop", ["torch", "tensorflow", "jax", "keras"])
def test_a_loss_whose_parameters_are_trained_resumes_as_the_uninterrupted_run(tmp_path, loop):
    """The checkpoints held the optimizer's momentum of ``LinearCrossEntropyLoss``'s ``linear`` but not its weight:
    a resumed run restarted the loss's weight from its initial values (its second epoch's loss 1.4504 where the
    uninterrupted run has 1.4147), and the loss's settings hashed that weight, so the trained loss object itself
    was refused at resume. Now the loss's parameters are checkpointed and restored, and are no settings: a run
    stopped mid-epoch and resumed, with the loss built anew or with the trained loss object, ends bit for bit as the
    uninterrupted run (losses, the body's and the loss's weights), on keras too (whose trainer refused a loss's
    parameters in the optimizer: tests/parity/test_activations_losses.py)."""
    pytest.importorskip(loop)
    with ud.use_backend(loop):
        body, loss, history = _linear_cross_entropy_run(tmp_path / "straight", 3)
        for case, given in (("rebuilt", lambda trained: None), ("trained", lambda trained: trained)):
            directory = tmp_path / case
            _, trained, _ = _linear_cross_entropy_run(directory, 3, crash_at=6)  # (mid-way through epoch 2)
            resumed_body, resumed_loss, resumed = _linear_cross_entropy_run(directory, 3, resume_from="auto",
                                                                            loss=given(trained))
            assert resumed.history["loss"] == history.history["loss"], case
            for mine, theirs in ((resumed_body, body), (resumed_loss, loss)):
                for key, value in theirs.state_dict().items():
                    assert np.array_equal(mine.state_dict()[key], value), (case, key)


def _script_class(module):
    """A loss class defined in a script, as seen from ``module``: ``__main__`` where the script runs directly, the
    script's name where it is imported (``import train``)."""
    class ScaledMSE(ud.nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.scale = scale

        def forward(self, prediction, target):
            return self.scale * ud.ops.mean((prediction - target) ** 2)

    ScaledMSE.__module__ = module
    return ScaledMSE


def _script_function(module):
    """``squared_error`` as a script defines it, its module ``module`` (as ``_script_class``)."""
    import types

    function = types.FunctionType(squared_error.__code__, globals(), "squared_error")
    function.__module__ = module
    return function


def test_a_loss_of_a_script_resumes_whether_the_script_ran_or_was_imported(tmp_path, backend):
    """The loss's class (and a function it holds) was compared as ``module.qualname``: a loss defined in a script is
    ``__main__.ScaledMSE`` run directly (``python train.py``) and ``train.ScaledMSE`` imported (``import train;
    train.main()``), so the same loss was refused. The qualified name is compared without the module, as the
    model's class is; the module is named in the message, and another setting is still refused."""
    _run(tmp_path / "class", 1, loss=_script_class("__main__")())
    with pytest.raises(ResumeMismatchError, match=r"loss __main__\.[\w.<>]*ScaledMSE\(scale=1.0\); this run passes "
                                                  r"train\.[\w.<>]*ScaledMSE\(scale=2.0\)"):
        _run(tmp_path / "class", 2, loss=_script_class("train")(2.0), resume_from="auto")
    _, _, history, _ = _run(tmp_path / "class", 2, loss=_script_class("train")(), resume_from="auto")
    assert history.epochs == 2
    _run(tmp_path / "function", 1, loss=FunctionLoss(_script_function("__main__")))
    with pytest.raises(ResumeMismatchError, match=r"function='function __main__.squared_error'\); this run passes "
                                                  r".*function='function [\w.]*absolute_error'"):
        _run(tmp_path / "function", 2, loss=FunctionLoss(absolute_error), resume_from="auto")
    _, _, history, _ = _run(tmp_path / "function", 2, loss=FunctionLoss(_script_function("train")),
                            resume_from="auto")
    assert history.epochs == 2


def test_a_setting_one_side_lacks_is_not_held_against_the_resume(tmp_path, backend):
    """A setting only one side held was a mismatch: a later unidl that gives a loss class another public attribute
    would strand every checkpoint written before it (here a loss given an attribute by hand, on either side). A
    setting both hold that differs is still refused."""
    def with_note(loss):
        loss.note = "added by a later version"
        return loss

    _run(tmp_path / "saved", 1, loss=with_note(ud.nn.MSELoss()))
    _, _, history, _ = _run(tmp_path / "saved", 2, loss=ud.nn.MSELoss(), resume_from="auto")
    assert history.epochs == 2
    _run(tmp_path / "given", 1, loss=ud.nn.MSELoss())
    _, _, history, _ = _run(tmp_path / "given", 2, loss=with_note(ud.nn.MSELoss()), resume_from="auto")
    assert history.epochs == 2
    with pytest.raises(ResumeMismatchError, match=r"MSELoss\(reduction='mean'\); this run passes "
                                                  r"unidl.nn.loss.MSELoss\(reduction='sum'\)"):
        _run(tmp_path / "given", 3, loss=with_note(ud.nn.MSELoss(reduction="sum")), resume_from="auto")


def test_a_float32_setting_resumes_with_the_same_number_written_as_a_python_float(tmp_path, backend):
    """``label_smoothing=np.float32(0.2)`` was stored as 0.20000000298023224, refusing a resume given 0.2: floats
    one float32 apart by rounding are one setting; another number is still refused."""
    _classify(tmp_path / "float32", 1, loss=ud.nn.CrossEntropyLoss(label_smoothing=np.float32(0.2)))
    assert len(_classify(tmp_path / "float32", 2, resume_from="auto",
                         loss=ud.nn.CrossEntropyLoss(label_smoothing=0.2))["loss"]) == 2
    with pytest.raises(ResumeMismatchError, match=r"label_smoothing=0.2\); this run passes .*label_smoothing=0.3\)"):
        _classify(tmp_path / "float32", 3, resume_from="auto", loss=ud.nn.CrossEntropyLoss(label_smoothing=0.3))


class _WeightedMSE(ud.nn.Module):
    """A user's loss that registers its ``weight`` buffer only when given one."""

    def __init__(self, weight=None):
        super().__init__()
        self.reduction = "mean"
        if weight is not None:
            self.register_buffer("weight", np.asarray(weight, dtype=np.float32))

    def forward(self, prediction, target):
        squared = (prediction - target) ** 2
        return ud.ops.mean(squared * self.weight) if "weight" in self._buffers else ud.ops.mean(squared)


def test_a_buffer_or_number_one_side_lacks_or_changed_slightly_is_refused(tmp_path, backend):
    """Settings one side alone holds are let through only where they are plain attributes: a buffer registered
    only when given (a weight of 100 added at the resume) let a changed loss resume silently; and numbers that are
    one float32 but not one number (1e-50 and 0) compared as the same setting."""
    _run(tmp_path / "buffer", 1, loss=_WeightedMSE())
    with pytest.raises(ResumeMismatchError, match=r"_WeightedMSE\(weight='absent'\); this run passes "
                                                  r".*_WeightedMSE\(weight=\{'shape': \[1\]"):
        _run(tmp_path / "buffer", 2, loss=_WeightedMSE([100.0]), resume_from="auto")
    _run(tmp_path / "tiny", 1, loss=ud.nn.HuberLoss(delta=1e-46))  # (both 0 in float32)
    with pytest.raises(ResumeMismatchError, match=r"delta=1e-46\); this run passes .*delta=1e-47\)"):
        _run(tmp_path / "tiny", 2, loss=ud.nn.HuberLoss(delta=1e-47), resume_from="auto")


def test_load_checkpoint_of_a_trained_loss_without_the_loss_is_refused_before_anything_changes(tmp_path, backend):
    """A checkpoint holding a loss's state, loaded with an optimizer over the loss's parameters but without
    ``loss=``, restored the optimizer's slots for them while their values stayed as built: a
    ``CheckpointStateError`` naming the tensors and ``loss=``, nothing changed; with ``loss=`` it loads."""
    def built():
        ud.manual_seed(0)
        body, loss = ud.nn.Linear(3, 4), ud.nn.LinearCrossEntropyLoss(4, 3)
        return body, loss, ud.optim.SGD(body.parameters() + loss.parameters(), lr=0.5, momentum=0.9)

    body, loss, optimizer = built()  # (the loss moved by hand, as training would move it)
    loss.load_state_dict({key: ud.to_numpy(value) + 1.0 for key, value in loss.state_dict().items()})
    ud.save_checkpoint(tmp_path, body, optimizer, loss=loss)
    body2, loss2, optimizer2 = built()
    before = {k: ud.to_numpy(v).copy() for k, v in body2.state_dict().items()}
    optimizer_before = repr(optimizer2.state_dict())
    with pytest.raises(CheckpointStateError, match=r"loss its run trained \(loss/linear.weight\).*pass loss="):
        ud.load_checkpoint(tmp_path, body2, optimizer2)
    assert all(np.array_equal(ud.to_numpy(v), before[k]) for k, v in body2.state_dict().items())
    assert repr(optimizer2.state_dict()) == optimizer_before
    ud.load_checkpoint(tmp_path, body2, optimizer2, loss=loss2)
    np.testing.assert_array_equal(ud.to_numpy(loss2.linear.weight), ud.to_numpy(loss.linear.weight))


def test_a_refused_resume_leaves_the_data_loader_where_it_was(tmp_path, backend):
    """fit positioned its loader at its first epoch before the resume was checked: a refused resume (a changed
    loss, another optimizer class) left a loader that was mid-way through epoch 4 at epoch 1's first batch."""
    _run(tmp_path / "run", 1)
    loader = _loader()
    loader.load_state_dict(dict(loader.state_dict(), epoch=3, position=2))
    before = (loader.state_dict(), loader.next_iteration())
    with pytest.raises(ResumeMismatchError, match="a changed loss cannot resume"):
        _run(tmp_path / "run", 2, loss=ud.nn.L1Loss(), resume_from="auto", loader=loader)
    assert (loader.state_dict(), loader.next_iteration()) == before
    with pytest.raises(CheckpointStateError, match="SGD state, which cannot load into Adam"):
        _run(tmp_path / "run", 2, optimizer="Adam", resume_from="auto", loader=loader)
    assert (loader.state_dict(), loader.next_iteration()) == before


class LoaderAtTrainBegin(ud.callbacks.Callback):
    """Records where the loader stands when training begins (the batch its next iteration starts with), then ends
    the run there."""

    def on_train_begin(self, logs=None):
        self.next_iteration = self.trainer.loader.next_iteration()
        self.trainer.stopped = True


def test_auto_finding_no_checkpoint_positions_the_loader_as_a_fresh_fit(tmp_path, backend):
    """``resume_from='auto'`` with no checkpoint yet starts afresh: a loader broken out of mid-epoch is at epoch 0's
    first batch when training begins, as without ``resume_from`` (it was left at epoch 1, its next epoch)."""
    seen = {}
    for resume_from in (None, "auto"):
        loader, spy = _loader(), LoaderAtTrainBegin()
        for index, _ in enumerate(loader):
            if index == 1:
                break
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(3, 8, 1)
        ud.fit(model, loader, loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1,
               callbacks=[ud.callbacks.Checkpoint(tmp_path / str(resume_from)), spy], verbose=0,
               resume_from=resume_from)
        seen[resume_from] = spy.next_iteration
    assert seen == {None: (0, 0), "auto": (0, 0)}


def test_resuming_mid_epoch_with_other_metrics_is_refused_before_anything_changes(tmp_path, backend):
    """The interrupted epoch's running sums (unidl's loop, or Keras's trackers) hold the metrics of the run that
    saved them: other metrics cannot continue them, and the check comes before any weight is loaded."""
    _run(tmp_path / "run", 3, every_steps=2, crash_at=8)  # the newest checkpoint is mid-way through epoch 2
    built = []
    with pytest.raises(CheckpointStateError, match="running totals of epoch 2 do not fit this run's metrics"):
        _run(tmp_path / "run", 3, every_steps=2, resume_from="auto", metrics=["mae"], built=built)
    ud.manual_seed(0)
    initial = ud.models.TwoLayerNet(3, 8, 1).state_dict()  # the weights _run builds, before any load
    for key, value in built[0].state_dict().items():
        assert np.array_equal(value, initial[key]), f"{key} changed although the resume was refused"


def test_resume_from_must_exist_unless_auto(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="misspelled.*resume_from='auto'"):
        _run(tmp_path / "run", 1, resume_from=tmp_path / "misspelled")
    assert not (tmp_path / "run").exists()
    _, _, history, _ = _run(tmp_path / "run", 1, resume_from="auto")  # nothing to resume: starts afresh
    assert history.epochs == 1
    model = ud.models.TwoLayerNet(3, 8, 1)
    with pytest.raises(ValueError, match="Checkpoint"):
        ud.fit(model, (np.zeros((4, 3), np.float32), np.zeros((4, 1), np.float32)), loss=ud.nn.MSELoss(),
               optimizer=ud.optim.SGD(model.parameters(), lr=0.1), batch_size=2, verbose=0, resume_from="auto")


def test_fit_resumes_from_the_newest_intact_checkpoint_with_a_warning(tmp_path, backend):
    straight = _run(tmp_path / "straight", 3)
    _run(tmp_path / "run", 2)  # checkpoints after epochs 1 and 2 (keep=2)
    newest = sorted(os.listdir(tmp_path / "run"))[-1]
    path = tmp_path / "run" / newest
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # a flipped byte in the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=f"skipping corrupt checkpoint .*{newest}.*do not match their checksum"):
        resumed = _run(tmp_path / "run", 3, resume_from=tmp_path / "run")
    _same_run(resumed, straight, loss_rtol=1e-6)  # epoch 2 trained again from the epoch-1 checkpoint


class Score(ud.callbacks.Callback):
    """Reports a made-up score per epoch, best (lowest) at epoch 1."""

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = [3.0, 1.0, 2.0, 4.0][epoch]


def test_best_weights_of_early_stopping_survive_a_resume(tmp_path, backend):
    def run(directory, epochs, resume_from=None):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(3, 8, 1)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05)
        x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
        stopping = ud.callbacks.EarlyStopping(monitor="score", mode="min", patience=10,
                                              restore_best_weights=True)
        ud.fit(model, (x, x[:, :1] * 3), batch_size=8, loss=ud.nn.MSELoss(), optimizer=optimizer, epochs=epochs,
               callbacks=[ud.callbacks.Checkpoint(directory), Score(), stopping], verbose=0,
               resume_from=resume_from, shuffle=False)
        return model, stopping

    straight, straight_stopping = run(tmp_path / "straight", 4)
    run(tmp_path / "run", 2)
    resumed, stopping = run(tmp_path / "run", 4, resume_from="auto")  # the best epoch (1) was before the resume
    assert stopping.best_epoch == straight_stopping.best_epoch == 1
    for key, value in straight.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[key], value, rtol=1e-6, atol=1e-7)


def test_a_resume_mid_epoch_on_a_frameworks_pipeline_says_the_rest_of_the_epoch_is_skipped(tmp_path):
    """A framework's own pipeline cannot be moved to a checkpoint's position: resumed from a checkpoint written
    part-way through an epoch, training goes on from the next epoch, now with a warning saying so (it skipped the
    rest of the epoch silently); one written at an epoch's end resumes without one."""
    import torch

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    pipeline = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                           batch_size=8)

    with ud.use_backend("torch"):
        for directory, every_steps, expect_warning in (("mid", 1, True), ("end", None, False)):
            for resume in (False, True):
                ud.manual_seed(0)
                model = ud.models.TwoLayerNet(3, 8, 2)
                callbacks = [ud.callbacks.Checkpoint(tmp_path / directory, every_steps=every_steps)]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        ud.fit(model, pipeline, loss="cross_entropy", optimizer="sgd", epochs=3, verbose=0,
                               callbacks=callbacks + ([] if resume else [CrashAt(7)]),
                               resume_from=tmp_path / directory if resume else None)
                    except Crash:
                        continue
                said = [w for w in caught if "cannot be moved to that position" in str(w.message)]
                assert bool(said) == expect_warning, [str(w.message) for w in caught]


def test_the_lr_history_logs_for_an_epoch_resumed_part_way_is_the_rate_it_began_with(tmp_path, backend):
    """A schedule stepped per batch moves the rate within an epoch: History's lr of an epoch resumed part-way is
    the rate that epoch began with, as in the uninterrupted run (it was the rate at the resume)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)

    histories = []
    for directory, stops in (("straight", False), ("resumed", True), ("resumed", False)):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(3, 8, 2)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        schedule = ud.optim.lr_scheduler.OneCycleLR(optimizer, 0.5, total_steps=15)
        callbacks = [ud.callbacks.LearningRateScheduler(schedule, interval="batch"),
                     ud.callbacks.Checkpoint(tmp_path / directory, every_steps=1)] + ([CrashAt(7)] if stops else [])
        try:
            histories.append(ud.fit(model, ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=8), epochs=3,
                                    loss="cross_entropy", optimizer=optimizer, callbacks=callbacks, verbose=0,
                                    resume_from=tmp_path / directory if directory == "resumed" and not stops
                                    else None).history)
        except Crash:
            continue
    straight, resumed = histories
    assert resumed["lr"] == straight["lr"] and len(set(straight["lr"])) == 3


def _fit_validating_every_second_epoch(directory, epochs, resume_from=None):
    """A linear model on 20 samples, validated after every second epoch (``validation_freq=2``), checkpointed into
    ``directory`` at each epoch's end."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)).astype(np.float32), rng.standard_normal((20, 1)).astype(np.float32)
    ud.manual_seed(0)
    model = ud.nn.Linear(3, 1)
    return ud.fit(model, (x, y), loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
                  epochs=epochs, batch_size=10, validation_data=(x, y), validation_freq=2, verbose=0,
                  callbacks=[ud.callbacks.Checkpoint(directory)], resume_from=resume_from)


def test_a_resumed_history_keeps_each_logs_epochs_and_so_does_its_json(tmp_path, backend):
    """A resumed History's ``logged_epochs`` are the uninterrupted run's: 'val_loss' under ``validation_freq=2`` at
    epochs 1 and 3 (it listed only the epochs trained after the resume, 'loss' at 2 and 3), so that a plot puts each
    value at its epoch; ``state_dict()`` carries them through JSON, which ``plot_history`` reads back."""
    from unidl.plot import read_history

    _fit_validating_every_second_epoch(tmp_path, 2)
    resumed = _fit_validating_every_second_epoch(tmp_path, 4, resume_from=tmp_path)
    assert resumed.epoch == [0, 1, 2, 3] and len(resumed["val_loss"]) == 2
    assert resumed.logged_epochs == {"loss": [0, 1, 2, 3], "lr": [0, 1, 2, 3], "val_loss": [1, 3]}
    epochs, logs = read_history(resumed)
    np.testing.assert_equal(logs["val_loss"], [np.nan, resumed["val_loss"][0], np.nan, resumed["val_loss"][1]])
    saved = json.loads(json.dumps(resumed.state_dict()))
    assert ud.History.from_state_dict(saved).logged_epochs == resumed.logged_epochs
    np.testing.assert_equal(read_history(saved), (epochs, logs))
    with pytest.raises(ValueError, match=r"logged_epochs\['val_loss'\] must list one epoch"):
        ud.History.from_state_dict(dict(saved, logged_epochs={"val_loss": [1]}))


def test_a_run_resumed_from_a_checkpoint_without_logged_epochs_resumes_again(tmp_path, monkeypatch):
    """A checkpoint written before History's epochs were saved (no 'history_epoch', no 'logged_epochs'): 'val_loss'
    under ``validation_freq=2`` keeps unknown epochs as the resumed run appends to it (it got the new epoch alone, one
    epoch for two values: the checkpoints this run wrote were refused as corrupt by the next resume, and its
    ``state_dict()`` by ``from_state_dict``)."""
    import unidl.checkpoint

    save = unidl.checkpoint.save_checkpoint

    def save_as_before(*args, extra, **options):  # (the Checkpoint callback's extra before the epochs were in it)
        old = {key: value for key, value in extra.items() if key not in ("history_epoch", "logged_epochs")}
        return save(*args, extra=old, **options)

    with monkeypatch.context() as patch:
        patch.setattr(unidl.checkpoint, "save_checkpoint", save_as_before)
        _fit_validating_every_second_epoch(tmp_path, 2)
    resumed = _fit_validating_every_second_epoch(tmp_path, 4, resume_from=tmp_path)
    assert len(resumed["val_loss"]) == 2 and resumed.logged_epochs == {"loss": [0, 1, 2, 3], "lr": [0, 1, 2, 3]}
    assert ud.History.from_state_dict(resumed.state_dict()).logged_epochs == resumed.logged_epochs
    again = _fit_validating_every_second_epoch(tmp_path, 6, resume_from=tmp_path)
    assert again.epoch == list(range(6)) and len(again["val_loss"]) == 3 and "val_loss" not in again.logged_epochs
