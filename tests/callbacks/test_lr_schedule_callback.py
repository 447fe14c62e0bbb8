"""``LearningRateScheduler``: what it cannot apply is an error, never a run at the unscheduled rate."""

import numpy as np
import pytest

import unidl as ud


def test_a_schedule_it_cannot_apply_is_an_error(backend, problem):
    (x, y), _, build = problem
    model, optimizer, loss = build()
    for schedule in (0.01, "cosine"):  # (accepted, and no rate changed)
        with pytest.raises(TypeError, match="takes a unidl.optim.lr_scheduler object or a function"):
            ud.callbacks.LearningRateScheduler(schedule)
    other = ud.optim.SGD(model.parameters(), lr=0.5)  # (a StepLR of another optimizer left fit's rate at 0.5)
    callback = ud.callbacks.LearningRateScheduler(ud.optim.lr_scheduler.StepLR(other, 1, gamma=0.5))
    with pytest.raises(ValueError, match="schedules another optimizer than the one fit trains with"):
        ud.fit(model, x, y, batch_size=20, epochs=2, loss=loss, optimizer=optimizer, callbacks=[callback], verbose=0)
    for bad in ("0.05", float("nan"), None):  # (Keras: "should be a float"; the string was taken)
        callback = ud.callbacks.LearningRateScheduler(lambda epoch, lr, bad=bad: bad)
        with pytest.raises(ValueError, match="the schedule's return value should be a float"):
            ud.fit(model, x, y, batch_size=20, epochs=1, loss=loss, optimizer=optimizer, callbacks=[callback],
                   verbose=0)
    assert optimizer.lr == 0.5
    for zero_d in (np.array(0.25), ud.tensor(0.25)):  # (a 0-d array or tensor: its value, as before)
        history = ud.fit(model, x, y, batch_size=20, epochs=1, loss=loss, optimizer=optimizer, verbose=0,
                         callbacks=[ud.callbacks.LearningRateScheduler(lambda epoch, lr, v=zero_d: v)])
        assert history.history["lr"] == [0.25]
    optimizer.lr = 0.5
    history = ud.fit(model, x, y, batch_size=20, epochs=2, loss=loss, optimizer=optimizer, verbose=0, callbacks=[
        ud.callbacks.LearningRateScheduler(ud.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5))])
    np.testing.assert_allclose(history.history["lr"], [0.5, 0.25])


def test_a_one_argument_schedule_is_kerass_older_form(backend, problem):
    """``lambda epoch: ...`` is called with the epoch alone, as Keras 3 falls back to it (a raw ``TypeError`` at the
    first epoch before); a function of another arity is a ``TypeError`` naming its signature."""
    (x, y), _, build = problem
    model, optimizer, loss = build()
    history = ud.fit(model, x, y, batch_size=20, epochs=2, loss=loss, optimizer=optimizer, verbose=0,
                     callbacks=[ud.callbacks.LearningRateScheduler(lambda epoch: 0.1 * 0.5 ** epoch)])
    np.testing.assert_allclose(history.history["lr"], [0.1, 0.05])
    for bad in (lambda: 0.1, lambda epoch, lr, step: 0.1):
        with pytest.raises(TypeError, match=r"schedule function must take \(epoch, lr\) or \(epoch\).*takes \("):
            ud.callbacks.LearningRateScheduler(bad)
