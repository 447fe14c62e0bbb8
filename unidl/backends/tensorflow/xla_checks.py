"""Value checks of a graph XLA compiles (``ud.function(jit_compile=True)``), made as extra outputs.

XLA runs no assertions, so inside such a graph each value check of ``ops.py`` (an index or label in range, a size
known only when the graph runs) records its condition and the values its eager message needs here
(``record``) instead of an ``Assert``; ``GraphFunction`` returns them packed (``packed``: one int64 vector) beside
the user's outputs and, after the call, raises the first failed check as the eager call's error (``raise_failed``),
as the JAX backend's ``checkified`` functions do with checkify's error. Since the graph runs whole before its
checks are read, an optimizer's writes in it are selected by the checks recorded before them
(``unless_a_check_failed``), as the JAX backend's are.
"""

from __future__ import annotations

import contextlib
import threading
import numpy as np
import tensorflow as tf

_collecting = threading.local()


class Check:
    """One recorded check: its error class and its message, a template whose ``{}`` take ``count`` values."""

    def __init__(self, error_class, message: str, count: int):
        self.error_class, self.message, self.count = error_class, message, count

    def error(self, values):
        """The error an eager check gives for ``values`` (``input_checks.check_known_values``'s message)."""
        return self.error_class(self.message.format(*(int(value) for value in values)))


@contextlib.contextmanager
def collecting():
    """The checks of the graph traced in this block (a ``GraphFunction``'s under XLA): yields the list that
    ``record`` fills with ``(condition, Check, values)``. A check made in another graph (a ``tf.cond`` branch, a
    loop's body: their tensors cannot be outputs of this one) is not recorded (``recording``)."""
    previous = getattr(_collecting, "state", None)
    checks: list = []
    _collecting.state = (tf.compat.v1.get_default_graph(), checks)
    try:
        yield checks
    finally:
        _collecting.state = previous


def recording() -> bool:
    """Whether a value check made now is recorded (``collecting``, in the collecting graph itself)."""
    state = getattr(_collecting, "state", None)
    return state is not None and not tf.executing_eagerly() and tf.compat.v1.get_default_graph() is state[0]


def record(condition, error_class, message: str, values=()) -> None:
    """Record a check that passes where ``condition`` holds, whose error is ``error_class`` of
    ``message.format(*values)`` (Python ints and scalar tensors, read when the graph has run), as eagerly."""
    values = [tf.cast(value, tf.int64) for value in values]
    _collecting.state[1].append((tf.cast(condition, tf.bool), Check(error_class, message, len(values)), values))


def passed():
    """A boolean scalar: every check recorded so far in the graph being collected holds; None where none is (or no
    graph is collected: a plain graph's checks are ``Assert``s that its writes wait for)."""
    if not recording() or not _collecting.state[1]:
        return None
    return tf.reduce_all(tf.stack([condition for condition, _, _ in _collecting.state[1]]))


@contextlib.contextmanager
def unless_a_check_failed(variables):
    """The block's writes to ``variables`` (``tf.Variable``s) stand only where every check recorded before it
    holds (``passed``): a call that raises a check's error leaves them as they were, as an eager call stops before
    its update; a block with no check recorded before it (every graph without checks) runs as it is."""
    holds = passed()
    if holds is None:
        yield
        return
    before = [variable.read_value() for variable in variables]  # (ordered before the block's writes: one resource)
    yield
    for variable, old in zip(variables, before):
        variable.assign(tf.where(holds, variable.read_value(), old))


def packed(checks) -> tuple:
    """``(report, descriptions)``: one int64 vector, 1 where every check holds (else 0), each check's condition
    (1 where it holds) and then every value, and the checks (``Check``) in their order, for ``raise_failed``: one
    output and one host read a call, whose first element alone says that all passed."""
    conditions = [condition for condition, _, _ in checks]
    report = [tf.cast(tf.reduce_all(tf.stack(conditions)), tf.int64)] + [tf.cast(c, tf.int64) for c in conditions]
    report += [value for _, _, check_values in checks for value in check_values]
    return tf.stack(report), [check for _, check, _ in checks]


def _values_of(report, descriptions, index) -> list:
    """The values of check ``index`` in ``report`` (``packed``'s)."""
    start = 1 + len(descriptions) + sum(check.count for check in descriptions[:index])
    return [report[start + offset] for offset in range(descriptions[index].count)]


def raise_failed(report, descriptions) -> None:
    """Raise the error of the first check that failed in an eager ``report`` (``packed``'s); nothing if all
    passed."""
    report = report.numpy()
    if report[0]:
        return
    first = int(np.argmin(report[1:1 + len(descriptions)]))
    raise descriptions[first].error(_values_of(report, descriptions, first)) from None


def handed_on(report, descriptions) -> list:
    """The checks of a compiled function called while another graph is traced (``report`` is that graph's
    tensor), as ``(condition, Check, values)`` for that graph to check."""
    return [(tf.cast(report[1 + index], tf.bool), check, _values_of(report, descriptions, index))
            for index, check in enumerate(descriptions)]


def record_all(checks) -> None:
    """Record ``checks`` (``handed_on``'s) in the graph being collected."""
    _collecting.state[1].extend(checks)
