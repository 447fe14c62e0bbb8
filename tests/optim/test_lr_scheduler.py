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
    factory, _, steps = CASES[case]
    expected, _, _ = unidl_rates(factory, steps)
    _, schedule, _ = unidl_rates(factory, steps // 2)
    state = schedule.state_dict()
    assert set(state) == {"last_epoch", "base_lr"}
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.2)
    resumed = factory(optimizer)
    resumed.load_state_dict(state)
    rates = [optimizer.lr] + [resumed.step() for _ in range(steps - steps // 2)]
    np.testing.assert_allclose(rates, expected[steps // 2 - 1:], rtol=1e-12)


def test_bad_arguments():
    optimizer = ud.optim.SGD(Holder().parameters(), lr=0.2)
    for build, message in [
        (lambda: lr_scheduler.MultiStepLR(optimizer, [2, -1]), "milestones must be non-negative integers"),
        (lambda: lr_scheduler.LinearLR(optimizer, start_factor=0), "start_factor must lie in"),
        (lambda: lr_scheduler.LinearLR(optimizer, total_iters=0), "total_iters must be a positive integer"),
        (lambda: lr_scheduler.OneCycleLR(optimizer, 0.1), "needs total_steps, or epochs and steps_per_epoch"),
        (lambda: lr_scheduler.OneCycleLR(optimizer, 0.1, 10, anneal_strategy="step"), "'cos' or 'linear'"),
        (lambda: lr_scheduler.OneCycleLR(ud.optim.RMSprop(Holder().parameters()), 0.1, 10, cycle_momentum=True),
         "cycle_momentum=True needs an optimizer with momentum or betas; RMSprop has neither"),
    ]:
        with pytest.raises(ValueError, match=message):
            build()
    with pytest.raises(TypeError, match="lr_lambda must be a function"):
        lr_scheduler.LambdaLR(optimizer, 0.5)
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
