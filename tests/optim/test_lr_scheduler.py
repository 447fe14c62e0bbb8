"""Learning-rate schedules: the lr sequence of ``torch.optim.lr_scheduler``'s namesake on every backend,
state round trips, and per-batch stepping in ``fit``."""

import numpy as np
import pytest

import unidl as ud
from unidl.optim import lr_scheduler

torch = pytest.importorskip("torch")

# (unidl schedule, torch schedule, steps): the same arguments on both sides
CASES = {
    "ExponentialLR": (lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
                      lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), 12),
    "MultiStepLR": (lambda o: lr_scheduler.MultiStepLR(o, milestones=[6, 2, 6, 9], gamma=0.5),
                    lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[6, 2, 6, 9], gamma=0.5), 12),
    "LinearLR": (lambda o: lr_scheduler.LinearLR(o), lambda o: torch.optim.lr_scheduler.LinearLR(o), 9),
    "LinearLR-decay": (lambda o: lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=4),
                       lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1,
                                                                   total_iters=4), 7),
    "CyclicLR-triangular": (lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, 3, cycle_momentum=False),
                            lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 3, cycle_momentum=False), 14),
    "CyclicLR-triangular2": (
        lambda o: lr_scheduler.CyclicLR(o, [0.02], 0.2, 2, 4, "triangular2", cycle_momentum=False),
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, [0.02], 0.2, 2, 4, "triangular2", cycle_momentum=False), 20),
    "CyclicLR-exp-range": (
        lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, mode="exp_range", gamma=0.9, cycle_momentum=False),
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, mode="exp_range", gamma=0.9,
                                                    cycle_momentum=False), 12),
    "CyclicLR-scale-fn-iterations": (
        lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, scale_fn=lambda x: 1 / (1 + x), scale_mode="iterations",
                                        cycle_momentum=False),
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 2, scale_fn=lambda x: 1 / (1 + x),
                                                    scale_mode="iterations", cycle_momentum=False), 10),
    "ConstantLR": (lambda o: lr_scheduler.ConstantLR(o, 0.25, 3), lambda o: torch.optim.lr_scheduler.ConstantLR(
        o, 0.25, 3), 7),
    "PolynomialLR": (lambda o: lr_scheduler.PolynomialLR(o, 6, 2.0),
                     lambda o: torch.optim.lr_scheduler.PolynomialLR(o, 6, 2.0), 9),
    "CosineAnnealingWarmRestarts": (
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 3, 2, 0.01),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 3, 2, 0.01), 25),
    "MultiplicativeLR": (lambda o: lr_scheduler.MultiplicativeLR(o, lambda epoch: 0.9 ** (epoch % 3)),
                         lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda epoch: 0.9 ** (epoch % 3)), 8),
    "ChainedScheduler-constant-polynomial": (
        lambda o: lr_scheduler.ChainedScheduler([lr_scheduler.ConstantLR(o, 0.5, 2),
                                                 lr_scheduler.PolynomialLR(o, 5, 1.5)]),
        lambda o: torch.optim.lr_scheduler.ChainedScheduler([torch.optim.lr_scheduler.ConstantLR(o, 0.5, 2),
                                                             torch.optim.lr_scheduler.PolynomialLR(o, 5, 1.5)]), 8),
    "SequentialLR-constant-then-restarts": (
        lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.ConstantLR(o, 0.1, 2),
                                                lr_scheduler.CosineAnnealingWarmRestarts(o, 2)], [2]),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.ConstantLR(o, 0.1, 2),
                torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 2)], [2]), 9),
    "LambdaLR": (lambda o: lr_scheduler.LambdaLR(o, lambda epoch: 0.5 + 1 / (epoch + 2)),
                 lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: 0.5 + 1 / (epoch + 2)), 8),
    "OneCycleLR": (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.4, total_steps=20),
                   lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.4, total_steps=20, cycle_momentum=False),
                   20),
    "OneCycleLR-epochs": (lambda o: lr_scheduler.OneCycleLR(o, max_lr=1.0, epochs=3, steps_per_epoch=7, pct_start=0.25),
                          lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, epochs=3, steps_per_epoch=7,
                                                                        pct_start=0.25, cycle_momentum=False), 21),
    "OneCycleLR-linear-three-phase": (
        lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.3, total_steps=30, anneal_strategy="linear", three_phase=True,
                                          div_factor=10.0, final_div_factor=100.0),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.3, total_steps=30, anneal_strategy="linear",
                                                      three_phase=True, div_factor=10.0, final_div_factor=100.0,
                                                      cycle_momentum=False), 30),
    "SequentialLR-warm-up-then-cosine": (
        lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.1, 1.0, 3),
                                                lr_scheduler.CosineAnnealingLR(o, 5)], [3]),
        lambda o: torch.optim.lr_scheduler.SequentialLR(o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 3),
                                                            torch.optim.lr_scheduler.CosineAnnealingLR(o, 5)], [3]),
        12),
    "SequentialLR-three": (
        lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.ExponentialLR(o, 0.8), lr_scheduler.StepLR(o, 2, 0.5),
                                                lr_scheduler.LambdaLR(o, lambda e: 1 / (e + 1))], [2, 6]),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.ExponentialLR(o, 0.8), torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
                torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (e + 1))], [2, 6]), 11),
    "SequentialLR-one-cycle-milestone-at-0": (
        lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.MultiStepLR(o, [0, 1], 0.5),
                                                lr_scheduler.OneCycleLR(o, 0.5, 6)], [0]),
        lambda o: torch.optim.lr_scheduler.SequentialLR(o, [torch.optim.lr_scheduler.MultiStepLR(o, [0, 1], 0.5),
                                                            torch.optim.lr_scheduler.OneCycleLR(
                                                                o, 0.5, 6, cycle_momentum=False)], [0]), 6),
    "SequentialLR-one-cycle-second": (  # (its max_lr / div_factor is every group's initial rate, as torch's)
        lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.1, 1.0, 2),
                                                lr_scheduler.OneCycleLR(o, 1.0, 10)], [2]),
        lambda o: torch.optim.lr_scheduler.SequentialLR(o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 2),
                                                            torch.optim.lr_scheduler.OneCycleLR(
                                                                o, 1.0, 10, cycle_momentum=False)], [2]), 10),
    "ChainedScheduler": (
        lambda o: lr_scheduler.ChainedScheduler([lr_scheduler.LinearLR(o, 0.5, 1.0, 3),
                                                 lr_scheduler.ExponentialLR(o, 0.9)]),
        lambda o: torch.optim.lr_scheduler.ChainedScheduler([torch.optim.lr_scheduler.LinearLR(o, 0.5, 1.0, 3),
                                                             torch.optim.lr_scheduler.ExponentialLR(o, 0.9)]), 8),
}


class Holder(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = self.parameter(np.ones((3,), np.float32))


def torch_rates(factory, steps):
    """The lr torch's schedule sets at construction and after each of ``steps - 1`` steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.2)
    schedule = factory(optimizer)
    rates = [schedule.get_last_lr()[0]]
    for _ in range(steps - 1):
        optimizer.step()
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    return rates


def unidl_rates(factory, steps):
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.2)
    schedule = factory(optimizer)
    rates = [optimizer.lr]
    for _ in range(steps - 1):
        rates.append(schedule.step())
    return rates, schedule, optimizer


@pytest.mark.parametrize("case", sorted(CASES))
def test_rates_are_torchs(backend, case):
    factory, torch_factory, steps = CASES[case]
    rates, _, _ = unidl_rates(factory, steps)
    np.testing.assert_allclose(rates, torch_rates(torch_factory, steps), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_round_trip_continues_the_sequence(backend, case):
    """A schedule's state (its position and each group's base rate) with its optimizer's (the rates), loaded in
    PyTorch's order (the schedule built, then both states loaded), continues the sequence."""
    factory, _, steps = CASES[case]
    expected, _, _ = unidl_rates(factory, steps)
    _, schedule, saved = unidl_rates(factory, steps // 2)
    state = schedule.state_dict()
    assert set(state) == ({"last_epoch", "schedulers", "settings"} if "Sequential" in case or "Chained" in case
                          else {"last_epoch", "base_lrs", "last_lr", "settings"})
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.2)
    resumed = factory(optimizer)
    optimizer.load_state_dict(saved.state_dict())
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == schedule.get_last_lr()  # (torch's: the saved ``_last_lr``; it was the new one's)
    rates = [optimizer.lr] + [resumed.step() for _ in range(steps - steps // 2)]
    np.testing.assert_allclose(rates, expected[steps // 2 - 1:], rtol=1e-12)


def test_one_cycle_linear_takes_its_last_step_as_a_loop_does(backend):
    """A per-batch loop steps ``OneCycleLR`` ``total_steps`` times; the last step, after the last update, is PyTorch's
    extrapolated rate, which ``'linear'`` takes below 0 (it was a ``ValueError`` naming the optimizer, after
    ``last_epoch`` had moved): 0 there, every earlier rate PyTorch's."""
    for strategy in ("linear", "cos"):
        factory = lambda o, s=strategy: lr_scheduler.OneCycleLR(o, 0.5, total_steps=12, anneal_strategy=s)
        reference = lambda o, s=strategy: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=12,
                                                                              anneal_strategy=s, cycle_momentum=False)
        rates, schedule, _ = unidl_rates(factory, 13)
        expected = torch_rates(reference, 13)
        assert expected[-1] < 0 if strategy == "linear" else expected[-1] > 0
        np.testing.assert_allclose(rates, [max(rate, 0.0) for rate in expected], rtol=1e-12, atol=1e-15)
        with pytest.raises(ValueError, match="OneCycleLR stepped 13 times, past its total_steps=12"):
            schedule.step()


def test_a_schedule_built_after_a_load_starts_from_the_saved_initial_rates(backend, tmp_path):
    """The optimizer's state holds each group's rate when its first schedule was built (PyTorch's ``initial_lr`` in
    its param groups): a schedule built after loading it starts from those, as PyTorch's (it started from the
    loaded, already decayed rate: every later rate a tenth of torch's)."""
    def run(library, params):
        optimizer = library.optim.SGD(params(), lr=0.1)
        library.optim.lr_scheduler.StepLR(optimizer, 1, 0.1).step()
        saved = optimizer.state_dict()
        fresh = library.optim.SGD(params(), lr=0.5)
        fresh.load_state_dict(saved)
        schedule = library.optim.lr_scheduler.LambdaLR(fresh, lambda epoch: 1.0 / (epoch + 1))
        rates = [schedule.get_last_lr()[0]]
        for _ in range(2):
            schedule.step()
            rates.append(schedule.get_last_lr()[0])
        return rates, saved

    expected, _ = run(torch, lambda: [torch.nn.Parameter(torch.zeros(2))])
    rates, saved = run(ud, lambda: Holder().parameters())
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    assert saved["initial_lrs"] == [0.1]
    # through a checkpoint file too
    holder = Holder()
    optimizer = ud.optim.SGD(holder.parameters(), lr=0.1)
    lr_scheduler.StepLR(optimizer, 1, 0.1).step()
    ud.save_checkpoint(tmp_path, holder, optimizer, epoch=1)
    fresh = ud.optim.SGD(Holder().parameters(), lr=0.5)
    ud.load_checkpoint(tmp_path, Holder(), fresh)
    assert lr_scheduler.LambdaLR(fresh, lambda epoch: 1.0).get_last_lr() == [0.1]
    with pytest.raises(ud.errors.CheckpointStateError, match="initial_lrs must be a list of one rate per param group"):
        ud.optim.SGD(Holder().parameters(), lr=0.1).load_state_dict({**saved, "initial_lrs": [0.1, 0.2]})


def test_get_last_lr_is_what_each_schedule_set_and_last_epoch_is_refused_but_minus_one(backend):
    """``get_last_lr()`` is the rates a schedule set at its last step, as PyTorch's: a warm-up chained with a decay on
    one optimizer reports its own, and a rate set by hand since does not change it; ``last_epoch=-1`` (PyTorch's
    default) builds, any other is a ``ValueError`` naming ``load_state_dict``."""
    def run(library, params):
        optimizer = library.optim.SGD(params(), lr=0.1)
        warm = library.optim.lr_scheduler.LinearLR(optimizer, 0.5, 1.0, 4, last_epoch=-1)
        decay = library.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
        reports = []
        for _ in range(3):
            warm.step()
            decay.step()
            reports.append((warm.get_last_lr()[0], decay.get_last_lr()[0]))
        optimizer.param_groups[0]["lr"] = 0.7
        reports.append((warm.get_last_lr()[0], decay.get_last_lr()[0]))
        return reports

    expected = run(torch, lambda: [torch.nn.Parameter(torch.zeros(2))])
    np.testing.assert_allclose(run(ud, lambda: Holder().parameters()), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"StepLR last_epoch=4: .* load its state_dict\(\)"):
        lr_scheduler.StepLR(ud.optim.SGD(Holder().parameters(), lr=0.1), 2, last_epoch=4)


def test_step_with_an_epoch_is_refused_by_every_schedule_before_it_moves(backend):
    """``step(epoch)``, PyTorch's deprecated jump, is a ``TypeError`` naming the schedule and what to do instead
    (it was Python's own "takes 1 positional argument"), the schedule where it was; ``step(None)`` steps."""
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.1)
    step = lr_scheduler.StepLR(optimizer, 1, 0.5)
    schedules = [step, lr_scheduler.ChainedScheduler([step]),
                 lr_scheduler.SequentialLR(optimizer, [step, lr_scheduler.ConstantLR(optimizer)], milestones=[2])]
    for schedule in schedules:
        before = schedule.last_epoch, optimizer.lr
        with pytest.raises(TypeError, match=rf"{type(schedule).__name__}.step\(\) takes no epoch \(got 3\).*"
                                            rf"load_state_dict"):
            schedule.step(3)
        assert (schedule.last_epoch, optimizer.lr) == before
    with pytest.raises(TypeError, match=r"fractional step\(epoch \+ i / iters\): step per batch, with T_0 in batches"):
        lr_scheduler.CosineAnnealingWarmRestarts(optimizer, 10).step(0.5)
    plateau = lr_scheduler.ReduceLROnPlateau(optimizer)
    with pytest.raises(TypeError, match=r"ReduceLROnPlateau.step\(\) takes no epoch"):
        plateau.step(1.0, 3)
    assert plateau.last_epoch == 0 and plateau.num_bad_epochs == 0
    before = step.last_epoch
    step.step(None)
    assert step.last_epoch == before + 1


def test_bad_arguments():
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.2)
    for build, message in [
        (lambda: lr_scheduler.MultiStepLR(optimizer, [2, -1]), "milestones must be non-negative integers"),
        (lambda: lr_scheduler.LinearLR(optimizer, start_factor=0), "start_factor must lie in"),
        (lambda: lr_scheduler.LinearLR(optimizer, total_iters=0), "total_iters must be a positive integer"),
        (lambda: lr_scheduler.OneCycleLR(optimizer, 0.1), "needs total_steps, or epochs and steps_per_epoch"),
        (lambda: lr_scheduler.OneCycleLR(optimizer, 0.1, 10, anneal_strategy="step"), "'cos' or 'linear'"),
        (lambda: lr_scheduler.OneCycleLR(ud.optim.Adagrad(Holder().parameters()), 0.1, 10),
         r"cycle_momentum=True \(the default, PyTorch's\) needs an optimizer with momentum or betas; Adagrad has"),
    ]:
        with pytest.raises(ValueError, match=message):
            build()
    with pytest.raises(TypeError, match="lr_lambda must be a function"):
        lr_scheduler.LambdaLR(optimizer, 0.5)
    with pytest.raises(ValueError, match="LambdaLR takes one lr_lambda, or one per param group: 1 groups, 2 functions"):
        lr_scheduler.LambdaLR(optimizer, [abs, abs])
    with pytest.raises(ValueError, match="OneCycleLR max_lr takes one number, or one per param group: 1 groups, 2"):
        lr_scheduler.OneCycleLR(optimizer, [0.1, 0.2], 10)
    step, other = lr_scheduler.StepLR(optimizer, 2), lr_scheduler.StepLR(ud.optim.SGD(Holder().parameters(), 0.1), 2)
    for build, error, message in [
        (lambda: lr_scheduler.SequentialLR(optimizer, [step, step], []), ValueError, "one milestone fewer than "
                                                                                     "schedules: 2 schedules and 0"),
        (lambda: lr_scheduler.SequentialLR(optimizer, [step, step, step], [4, 2]), ValueError,
         r"milestones must be increasing non-negative integers, got \[4, 2\]"),
        (lambda: lr_scheduler.SequentialLR(optimizer, [step, other], [2]), ValueError,
         "every schedule to belong to the same optimizer; schedule 1 \\(StepLR\\) belongs to another"),
        (lambda: lr_scheduler.ChainedScheduler([]), ValueError, "takes a non-empty list of schedules"),
        (lambda: lr_scheduler.ChainedScheduler([step, lr_scheduler.ChainedScheduler([step])]), TypeError,
         "schedule 1 must be a unidl.optim.lr_scheduler schedule .*not a ChainedScheduler or SequentialLR"),
        (lambda: lr_scheduler.ChainedScheduler([step, torch.optim.lr_scheduler.StepLR(
            torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], 0.1), 2)]), TypeError, "got StepLR"),
    ]:
        with pytest.raises(error, match=message):
            build()
    schedule = lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=2)
    schedule.step(), schedule.step()
    with pytest.raises(ValueError, match="past its total_steps=2"):
        schedule.step()
    with pytest.raises(ValueError, match="interval must be 'epoch' or 'batch'"):
        ud.callbacks.LearningRateScheduler(schedule, interval="step")


def test_one_cycle_stepped_per_batch_in_fit(backend, rng):
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = ud.models.TwoLayerNet(4, 8, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.01)
    schedule = lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=3, steps_per_epoch=4)
    history = ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=3, batch_size=10,
                     verbose=0, callbacks=[ud.callbacks.LearningRateScheduler(schedule, interval="batch")])
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, epochs=3, steps_per_epoch=4,
                                                                          cycle_momentum=False), 13)
    np.testing.assert_allclose(history["lr"], expected[0:12:4], rtol=1e-12)  # the rate each epoch began with
    assert schedule.last_epoch == 12 and optimizer.lr == pytest.approx(expected[12], rel=1e-12)


def _two_groups(lrs, torch_side):
    """An SGD of two param groups of rates ``lrs``: torch.optim's, or unidl's."""
    if torch_side:
        return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(3))], "lr": lr} for lr in lrs])
    holders = [Holder() for _ in lrs]
    return ud.optim.SGD([{"params": h.parameters(), "lr": lr} for h, lr in zip(holders, lrs)], lr=lrs[0])


CHAINS = {  # (unidl schedules, torch's, steps, step at which every group's rate is set to 0.7 by hand or None)
    "warm-up then decay": (lambda o: [lr_scheduler.LinearLR(o, 0.5, 1.0, 2), lr_scheduler.ExponentialLR(o, 0.9)],
                           lambda o: [torch.optim.lr_scheduler.LinearLR(o, 0.5, 1.0, 2),
                                      torch.optim.lr_scheduler.ExponentialLR(o, 0.9)], 6, None),
    "cosine over a step decay": (lambda o: [lr_scheduler.CosineAnnealingLR(o, 4), lr_scheduler.StepLR(o, 3, 0.5)],
                                 lambda o: [torch.optim.lr_scheduler.CosineAnnealingLR(o, 4),
                                            torch.optim.lr_scheduler.StepLR(o, 3, 0.5)], 9, None),
    "set by hand": (lambda o: [lr_scheduler.StepLR(o, 2, 0.5)], lambda o: [torch.optim.lr_scheduler.StepLR(o, 2, 0.5)],
                    6, 3),
    "cosine set by hand": (lambda o: [lr_scheduler.CosineAnnealingLR(o, 5)],
                           lambda o: [torch.optim.lr_scheduler.CosineAnnealingLR(o, 5)], 7, 2),
    "milestone at 0": (lambda o: [lr_scheduler.MultiStepLR(o, [0, 2], 0.5)],
                       lambda o: [torch.optim.lr_scheduler.MultiStepLR(o, [0, 2], 0.5)], 4, None),
    "sequential, set by hand": (
        lambda o: [lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.5, 1.0, 2),
                                                 lr_scheduler.CosineAnnealingLR(o, 4)], [2])],
        lambda o: [torch.optim.lr_scheduler.SequentialLR(o, [torch.optim.lr_scheduler.LinearLR(o, 0.5, 1.0, 2),
                                                             torch.optim.lr_scheduler.CosineAnnealingLR(o, 4)], [2])],
        8, 4),
    "a lambda per group": (lambda o: [lr_scheduler.LambdaLR(o, [lambda e: 0.9 ** e, lambda e: 1 / (e + 1)])],
                           lambda o: [torch.optim.lr_scheduler.LambdaLR(o, [lambda e: 0.9 ** e,
                                                                            lambda e: 1 / (e + 1)])], 5, None),
    "one cycle, max_lr per group": (
        lambda o: [lr_scheduler.OneCycleLR(o, [0.5, 0.1], 8, three_phase=True)],
        lambda o: [torch.optim.lr_scheduler.OneCycleLR(o, [0.5, 0.1], 8, three_phase=True, cycle_momentum=False)],
        8, None),
    "chained, set by hand": (
        lambda o: [lr_scheduler.ChainedScheduler([lr_scheduler.StepLR(o, 2, 0.5), lr_scheduler.ExponentialLR(o, 0.9)])],
        lambda o: [torch.optim.lr_scheduler.ChainedScheduler([torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
                                                              torch.optim.lr_scheduler.ExponentialLR(o, 0.9)])],
        6, 3),
}


@pytest.mark.parametrize("case", CHAINS)
def test_schedules_compose_and_carry_a_rate_set_by_hand_as_torchs(case):
    """Each schedule changes a group's current rate as PyTorch's recursive forms do: two on one optimizer compose
    (a warm-up, then a decay: the second's closed form replaced the first's rate), a rate set by hand carries on,
    and a milestone at 0 applies as the schedule is built; each param group from its own rate. Pure Python: the
    same on every backend."""
    build, torch_build, steps, by_hand = CHAINS[case]
    sides = []
    for torch_side, make in ((True, torch_build), (False, build)):
        optimizer = _two_groups([0.2, 0.04], torch_side)
        schedules, rates = make(optimizer), []
        for index in range(steps):
            if index == by_hand:
                for group in optimizer.param_groups:
                    group["lr"] = 0.7
            rates.append([group["lr"] for group in optimizer.param_groups])
            if torch_side:
                optimizer.step()
            for schedule in schedules:
                schedule.step()
        sides.append(rates)
    np.testing.assert_allclose(sides[1], sides[0], rtol=1e-12)


def test_a_resumed_schedule_keeps_each_groups_base_rate(backend):
    """A schedule's state holds every group's base rate (only the first group's was saved: a resumed
    two-group StepLR decayed the second from the first's rate), as torch's ``base_lrs``."""
    rates = []
    for torch_side in (True, False):
        optimizer = _two_groups([0.2, 0.04], torch_side)
        make = torch.optim.lr_scheduler.StepLR if torch_side else lr_scheduler.StepLR
        schedule = make(optimizer, 2, 0.5)
        for _ in range(3):
            if torch_side:
                optimizer.step()
            schedule.step()
        states = optimizer.state_dict(), schedule.state_dict()
        optimizer = _two_groups([0.2, 0.04], torch_side)
        resumed = make(optimizer, 2, 0.5)
        optimizer.load_state_dict(states[0])
        resumed.load_state_dict(states[1])
        for _ in range(3):
            if torch_side:
                optimizer.step()
            resumed.step()
        rates.append([group["lr"] for group in optimizer.param_groups])
    assert rates[1] == pytest.approx(rates[0], rel=1e-12) and rates[0] == pytest.approx([0.025, 0.005])


def test_plateau_and_function_schedules_scale_each_groups_rate(backend):
    """``ReduceLROnPlateau`` and a function schedule ``(epoch, lr) -> lr`` change each param group from its own rate
    (torch's ReduceLROnPlateau), where both set every group to the first group's."""
    callbacks = {"plateau": ud.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1),
                 "function": ud.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr)}
    for name, callback in callbacks.items():
        optimizer = _two_groups([0.2, 0.02], torch_side=False)
        callback.trainer = type("Trainer", (), {"optimizer": optimizer})()  # (what a callback reads of fit's)
        callback.on_train_begin()
        for epoch in range(3):  # a loss that never improves: the plateau reduces after the second and third epochs
            callback.on_epoch_begin(epoch, {})
            callback.on_epoch_end(epoch, {"loss": 1.0})
        expected = [0.2 * 0.5 ** 2, 0.02 * 0.5 ** 2]
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(expected, rel=1e-12), name


def test_a_schedule_stepped_per_batch_counts_updates_under_accumulation(backend, rng):
    """With ``fit(accumulate=N)`` a schedule stepped per batch steps after every N-th batch, when the weights are
    updated (a PyTorch loop steps it after ``optimizer.step()``): it stepped every micro-step, N times too often."""
    x = rng.standard_normal((32, 4)).astype(np.float32)
    model = ud.nn.Linear(4, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    schedule = lr_scheduler.StepLR(optimizer, 1, 0.5)
    ud.fit(model, (x, x[:, :2]), batch_size=8, epochs=2, shuffle=False, loss="mse", optimizer=optimizer, accumulate=2,
           verbose=0, callbacks=[ud.callbacks.LearningRateScheduler(schedule, interval="batch")])
    assert schedule.last_epoch == optimizer.state_dict()["step"] == 4 and optimizer.lr == pytest.approx(0.1 / 16)


def test_a_sequential_schedule_in_fit_resumes_as_torchs(backend, rng, tmp_path):
    """A warm-up then a cosine decay (``SequentialLR``) in ``fit``, stopped after 3 epochs and resumed from its
    checkpoint to 7: the rate each epoch began with is torch's, and the schedule's state (its schedules' too)
    is in the checkpoint."""
    x = rng.standard_normal((16, 4)).astype(np.float32)

    def run(epochs, resume_from=None):
        model = ud.nn.Linear(4, 2)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.2)
        schedule = lr_scheduler.SequentialLR(optimizer, [lr_scheduler.LinearLR(optimizer, 0.1, 1.0, 3),
                                                         lr_scheduler.CosineAnnealingLR(optimizer, 5)], [3])
        callbacks = [ud.callbacks.LearningRateScheduler(schedule), ud.callbacks.Checkpoint(tmp_path)]
        return ud.fit(model, (x, x[:, :2]), batch_size=8, epochs=epochs, loss="mse", optimizer=optimizer, verbose=0,
                      callbacks=callbacks, resume_from=resume_from)

    run(3)
    history = run(7, resume_from="auto")
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 3), torch.optim.lr_scheduler.CosineAnnealingLR(o, 5)],
        [3]), 7)
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-12)


def test_one_cycle_momentum_per_group_as_torchs():
    """``OneCycleLR`` of one ``max_lr``, ``max_momentum`` and ``base_momentum`` per param group (they were refused):
    each group's rate and momentum follow torch's."""
    sides = []
    for torch_side in (True, False):
        lrs = [0.2, 0.04]
        if torch_side:
            optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(3))], "lr": lr} for lr in lrs],
                                        momentum=0.9)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, [0.5, 0.1], 10, max_momentum=[0.95, 0.9],
                                                           base_momentum=0.8)
        else:
            optimizer = ud.optim.SGD([{"params": Holder().parameters(), "lr": lr} for lr in lrs], lr=0.2, momentum=0.9)
            schedule = lr_scheduler.OneCycleLR(optimizer, [0.5, 0.1], 10, cycle_momentum=True, max_momentum=[0.95, 0.9],
                                               base_momentum=0.8)
        rows = []
        for _ in range(10):
            rows.append([group[key] for key in ("lr", "momentum") for group in optimizer.param_groups])
            if torch_side:
                optimizer.step()
            schedule.step()
        sides.append(rows)
    np.testing.assert_allclose(sides[1], sides[0], rtol=1e-12)


def test_a_one_cycle_state_past_its_total_steps_is_refused_on_load(backend):
    """A ``OneCycleLR`` state at step 12 loaded into a schedule of ``total_steps=10`` is a ``CheckpointStateError``
    (it loaded, and the next ``step()`` raised), and nothing changes."""
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.2)
    long = lr_scheduler.OneCycleLR(optimizer, 0.5, total_steps=20)
    for _ in range(12):
        long.step()
    short = lr_scheduler.OneCycleLR(ud.optim.SGD(Holder().parameters(), lr=0.2), 0.5, total_steps=10)
    with pytest.raises(ud.errors.CheckpointStateError, match="last_epoch 12 is past this schedule's total_steps=10"):
        short.load_state_dict(long.state_dict())
    assert short.last_epoch == 0


def test_a_state_saved_with_other_settings_is_refused_before_anything_changes(backend):
    """A schedule's state holds its settings (the constructor's arguments but functions): loading a ``StepLR`` state
    of ``step_size=2`` into one of ``step_size=3`` is a ``CheckpointStateError`` naming both (it loaded, and the
    resumed run followed another schedule than the saved one, where PyTorch's load takes the saved settings), also
    for a schedule inside a ``SequentialLR`` and for the sequence's own milestones; the same settings load."""
    def stepped(step_size, milestone=2):
        optimizer = ud.optim.SGD(Holder().parameters(), lr=0.8)
        schedule = lr_scheduler.SequentialLR(optimizer, [lr_scheduler.ConstantLR(optimizer, 0.5, 2),
                                                         lr_scheduler.StepLR(optimizer, step_size, 0.5)], [milestone])
        for _ in range(3):
            schedule.step()
        return schedule

    state = stepped(2).state_dict()
    assert state["schedulers"][1]["settings"] == {"step_size": 2, "gamma": 0.5}
    assert state["settings"] == {"milestones": [2]}
    for other, message in ((stepped(3), "StepLR state was saved by a schedule built with other settings: "
                                        "step_size=2 there, 3 here"),
                           (stepped(2, milestone=1), r"SequentialLR state .* milestones=\[2\] there, \[1\] here")):
        before = other.state_dict()
        with pytest.raises(ud.errors.CheckpointStateError, match=message):
            other.load_state_dict(state)
        assert other.state_dict() == before
    same = stepped(2)
    same.load_state_dict(state)
    assert same.state_dict() == state
    lambdas = lr_scheduler.LambdaLR(ud.optim.SGD(Holder().parameters(), lr=0.8), lambda epoch: 0.5)
    assert lambdas.state_dict()["settings"] == {}  # (functions are the caller's to give again)


def test_settings_compare_to_float32_precision_and_a_subclasss_keyword_arguments_count(backend):
    """A ``gamma`` of ``np.float32(0.1)`` is the schedule of ``0.1`` (refused, 1e-9 apart), a ``OneCycleLR`` of
    ``epochs=2, steps_per_epoch=5`` that of ``total_steps=10``; a subclass taking ``**kwargs`` records each by its
    name, so that another ``gamma`` is refused (it recorded none: loaded)."""
    def optimizer():
        return ud.optim.SGD(Holder().parameters(), lr=0.2)

    lr_scheduler.StepLR(optimizer(), 2, gamma=0.1).load_state_dict(
        lr_scheduler.StepLR(optimizer(), 2, gamma=np.float32(0.1)).state_dict())

    class Stepped(lr_scheduler.StepLR):
        def __init__(self, optimizer, **kwargs):
            super().__init__(optimizer, **kwargs)

    # OneCycleLR's length is its total_steps however it was given (the two forms refused each other's state)
    by_epochs = lr_scheduler.OneCycleLR(optimizer(), 0.5, epochs=2, steps_per_epoch=5, cycle_momentum=False)
    by_epochs.step()
    by_steps = lr_scheduler.OneCycleLR(optimizer(), 0.5, total_steps=10, cycle_momentum=False)
    by_steps.load_state_dict(by_epochs.state_dict())
    assert by_steps.last_epoch == 1

    state = Stepped(optimizer(), step_size=2, gamma=0.5).state_dict()
    assert state["settings"] == {"step_size": 2, "gamma": 0.5}
    with pytest.raises(ud.errors.CheckpointStateError, match="gamma=0.5 there, 0.3 here"):
        Stepped(optimizer(), step_size=2, gamma=0.3).load_state_dict(state)


def test_a_state_saved_before_settings_were_saved_loads(backend):
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.8)
    schedule = lr_scheduler.StepLR(optimizer, 3, 0.5)
    schedule.load_state_dict({"last_epoch": 4, "base_lrs": [0.7], "last_lr": [0.4]})
    assert (schedule.last_epoch, schedule.base_lrs, schedule.get_last_lr()) == (4, [0.7], [0.4])


def test_a_schedule_written_as_torchs_with_get_lr_gives_torchs_rates(backend):
    """A subclass defining torch's ``get_lr()`` (one rate per group from ``last_epoch`` and ``base_lrs``) runs as its
    torch namesake (it raised a bare ``NotImplementedError`` from ``lr_at``); one defining no rule says what to
    define."""
    class Warm(torch.optim.lr_scheduler.LRScheduler):
        def get_lr(self):
            return [base * min(1.0, (self.last_epoch + 1) / 4) for base in self.base_lrs]

    class OwnWarm(lr_scheduler.LRScheduler):
        def get_lr(self):
            return [base * min(1.0, (self.last_epoch + 1) / 4) for base in self.base_lrs]

    rates, _, _ = unidl_rates(OwnWarm, 7)
    np.testing.assert_allclose(rates, torch_rates(Warm, 7), rtol=1e-12)
    # restarted by a SequentialLR at its milestone, from its get_lr (it asked for a closed form it has not)
    rates, _, _ = unidl_rates(lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.ConstantLR(o, 0.5, 2), OwnWarm(o)],
                                                                  [2]), 7)
    expected = torch_rates(lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.ConstantLR(o, 0.5, 2), Warm(o)], [2]), 7)
    np.testing.assert_allclose(rates, expected, rtol=1e-12)

    class NoRule(lr_scheduler.LRScheduler):
        pass

    with pytest.raises(NotImplementedError, match=r"NoRule defines none of lr_at\(epoch, base_lr\) .* or get_lr\(\)"):
        NoRule(ud.optim.SGD(Holder().parameters(), lr=0.2))


PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.97, 0.96, 0.99, 0.89, 0.9, 0.91, 0.92, 0.93, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@pytest.mark.parametrize("options", [dict(patience=1), dict(patience=2, cooldown=1, factor=0.5, min_lr=[0.02, 0.0]),
                                     dict(mode="max", threshold_mode="abs", threshold=0.01, patience=0, eps=1e-3)])
def test_reduce_lr_on_plateau_gives_torchs_rates_and_resumes_from_its_state(backend, options):
    """``lr_scheduler.ReduceLROnPlateau`` (it did not exist: only the Keras-rule callback) steps on the metric it is
    given as torch's namesake, per param group; its state resumes the plateau, and ``fit``'s
    ``LearningRateScheduler``, which cannot give it the metric, refuses it."""
    def rates(schedule, optimizer, metrics):
        return [[schedule.step(metric), [group["lr"] for group in optimizer.param_groups]][1] for metric in metrics]

    reference = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(2))]},
                                 {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.05}], lr=0.1)
    expected = rates(torch.optim.lr_scheduler.ReduceLROnPlateau(reference, **options), reference, PLATEAU_METRICS)

    def build():
        optimizer = ud.optim.SGD([{"params": [Holder().w]}, {"params": [Holder().w], "lr": 0.05}], lr=0.1)
        return optimizer, lr_scheduler.ReduceLROnPlateau(optimizer, **options)

    optimizer, schedule = build()
    np.testing.assert_allclose(rates(schedule, optimizer, [ud.tensor(np.float32(m)) if i % 2 else m
                                                           for i, m in enumerate(PLATEAU_METRICS)]), expected,
                               rtol=1e-6)
    optimizer, schedule = build()
    half = len(PLATEAU_METRICS) // 2
    rates(schedule, optimizer, PLATEAU_METRICS[:half])
    state, optimizer_state = schedule.state_dict(), optimizer.state_dict()
    optimizer, schedule = build()
    optimizer.load_state_dict(optimizer_state)
    schedule.load_state_dict(state)
    np.testing.assert_allclose(rates(schedule, optimizer, PLATEAU_METRICS[half:]), expected[half:], rtol=1e-12)
    with pytest.raises(TypeError, match="its step\\(metrics\\) needs the epoch's metric; in fit use "
                                        "ud.callbacks.ReduceLROnPlateau"):
        ud.callbacks.LearningRateScheduler(schedule)


def test_reduce_lr_on_plateau_refuses_bad_settings_and_states(backend):
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.1)
    for options, message in ((dict(factor=1.0), "factor"), (dict(mode="lowest"), "mode must be 'min' or 'max'"),
                             (dict(threshold_mode="pct"), "threshold_mode"), (dict(patience=-1), "patience"),
                             (dict(min_lr=[0.1, 0.2]), "expected 1 min_lrs")):
        with pytest.raises(ValueError, match=message):
            lr_scheduler.ReduceLROnPlateau(optimizer, **options)
    schedule = lr_scheduler.ReduceLROnPlateau(optimizer, patience=3)
    with pytest.raises(TypeError, match=r"step\(metrics\) takes one number"):
        schedule.step(np.ones(3))
    state = lr_scheduler.ReduceLROnPlateau(optimizer, patience=4).state_dict()
    with pytest.raises(ud.errors.CheckpointStateError, match="patience=4 there, 3 here"):
        schedule.load_state_dict(state)


def test_a_schedule_giving_a_negative_rate_names_itself_and_stays_where_it_was(backend):
    """A ``LambdaLR`` whose function gives -0.1 at epoch 2: a ``ValueError`` naming the schedule, the group and the
    epoch (it named the optimizer's lr), raised before any group's rate is written and with the schedule's position
    unmoved (its epoch had advanced)."""
    optimizer = ud.optim.SGD([{"params": [Holder().w]}, {"params": [Holder().w]}], lr=0.1)
    schedule = lr_scheduler.LambdaLR(optimizer, [lambda epoch: 1.0, lambda epoch: 1 - epoch])
    schedule.step()
    with pytest.raises(ValueError, match=r"LambdaLR gave param group 1 the rate -0\.1\d* at epoch 2; a rate must be"):
        schedule.step()
    assert schedule.last_epoch == 1 and [group["lr"] for group in optimizer.param_groups] == [0.1, 0.0]
