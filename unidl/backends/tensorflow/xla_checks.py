"""Value checks of a graph XLA compiles (``ud.function(jit_compile=True)``), made as extra outputs.

XLA runs no assertions, so inside such a graph each value check of ``ops.py`` (an index or label in range, a size
known only when the graph runs) records its condition and the values its eager message needs here
(``record``) instead of an ``Assert``; ``GraphFunction`` returns them packed (``packed``: one int64 vector) beside
the user's outputs and, after the call, raises the first failed check as the eager call's error (``raise_failed``),
as the JAX backend's ``checkified`` functions do with checkify's error. A ``tf.cond``, ``tf.case`` or
``tf.switch_case`` branch, a ``tf.while_loop``'s body and its condition (AutoGraph's ``if``/``while`` on tensors)
hand their checks out through the op (``_cond``, ``_case``, ``_while_loop``). Since the graph runs whole before
its checks are read, a write through unidl (an optimizer's update, batch norm's statistics, ``Backend.assign``)
made after a check that failed is set back at the end of its graph (``note_written``): a call that raises leaves
each variable as an eager call, which raised at that check, left it (the writes before it made). A plain graph,
whose checks are ``Assert`` ops, gets the same from control edges (``in_program_order``).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import tensorflow as tf

_collecting = threading.local()


class Check:
    """One recorded check: its error class and its message, a template whose ``{}`` take ``count`` values."""

    def __init__(self, error_class, message: str, count: int, unknown: int = 0):
        self.error_class, self.message, self.count, self.unknown = error_class, message, count, unknown

    def error(self, values):
        """The error an eager check gives for ``values`` (``input_checks.check_known_values``'s message; the last
        ``unknown`` values, which a branch or loop body could not hand out, shown as "?")."""
        return self.error_class(self.message.format(*(int(value) for value in values), *("?",) * self.unknown))

    def shown(self, most: int) -> "Check":
        """This check with at most ``most`` of its values handed out (the others shown as "?")."""
        return self if self.count <= most else Check(self.error_class, self.message, most, self.count - most)


class _Level:
    """The graph being collected or a branch, loop body or loop condition traced in it: its ``checks`` (``record``'s,
    in program order) and its ``writes``, ``(variable, ordinal, value before)`` in program order, a write's ordinal
    the number of its level's checks recorded before it (a write in a nested op: the op's, the value before it read
    in this level's graph); ``earlier_held``: in a loop body, whether every earlier iteration's checks held."""

    def __init__(self, graph, earlier_held=None):
        self.graph, self.checks, self.writes, self.earlier_held = graph, [], [], earlier_held
        self.last: dict = {}  # a variable's id: the ordinal of its last write noted here


def _undo_after_a_failed_check(level) -> None:
    """At the end of ``level``: each write noted in it stands only where every check of the level before it held
    (and every check of a loop's earlier iterations): a failed check undoes the writes after it, in program order,
    as an eager call, which raised there, never made them; the writes before it stand, as eagerly."""
    if not level.checks:  # (nothing of it can fail: a loop body's earlier iterations neither)
        return
    held_before: dict = {}

    def held(ordinal):
        if ordinal not in held_before:
            found = tf.reduce_all(tf.stack([c for c, _, _ in level.checks[:ordinal]])) if ordinal else None
            if level.earlier_held is not None:
                found = level.earlier_held if found is None else tf.logical_and(level.earlier_held, found)
            held_before[ordinal] = found
        return held_before[ordinal]

    by_variable: dict = {}
    for variable, ordinal, old in level.writes:
        if held(ordinal) is not None:
            by_variable.setdefault(id(variable), (variable, []))[1].append((ordinal, old))
    for variable, writes in by_variable.values():
        value = variable.value()
        for ordinal, old in reversed(writes):  # (the first undone write's value before it is the one that stands)
            value = tf.where(held(ordinal), value, old)
        variable.assign(value)


@contextlib.contextmanager
def collecting(written=None):
    """The checks of the graph traced in this block (a ``GraphFunction``'s under XLA): yields the list that
    ``record`` fills with ``(condition, Check, values)``. A check made in a ``tf.cond``, ``tf.switch_case`` branch
    or a ``tf.while_loop`` body or condition traced in it reaches this list through the op's outputs (``_cond``,
    ``_case``, ``_while_loop``); one made in a graph of its own is not recorded (``recording``). A variable
    written in it (``note_written``) after a check that fails is written back to its value before that write
    (``_undo_after_a_failed_check``): the call keeps the writes an eager call made before raising. ``written``, a
    list, receives the variables written, for a graph that calls the traced one to note its call as a write
    (``note_written``) that a check failed before it undoes."""
    previous = getattr(_collecting, "state", None)
    level = _Level(tf.compat.v1.get_default_graph())
    _collecting.state = [level]
    try:
        yield level.checks
        _undo_after_a_failed_check(level)
        if written is not None:
            written[:] = list({id(variable): variable for variable, _, _ in level.writes}.values())
    finally:
        _collecting.state = previous


@contextlib.contextmanager
def _nested(earlier_held=None):
    """The checks of a branch, loop body or loop condition traced in this block, in a graph being collected:
    yields their list; the writes noted in it after a check of it that fails (or, in a loop body, after one of an
    earlier iteration: ``earlier_held`` false) are undone at its end (``_undo_after_a_failed_check``)."""
    level = _Level(tf.compat.v1.get_default_graph(), earlier_held)
    _collecting.state.append(level)
    try:
        yield level.checks
        _undo_after_a_failed_check(level)
    finally:
        _collecting.state.pop()


def recording() -> bool:
    """Whether a value check made now is recorded (``collecting``, in the collecting graph itself or a branch or
    loop body traced in it)."""
    state = getattr(_collecting, "state", None)
    return bool(state) and not tf.executing_eagerly() and tf.compat.v1.get_default_graph() is state[-1].graph


def record(condition, error_class, message: str, values=()) -> None:
    """Record a check that passes where ``condition`` holds, whose error is ``error_class`` of
    ``message.format(*values)`` (Python ints and scalar tensors, read when the graph has run), as eagerly."""
    values = [tf.cast(value, tf.int64) for value in values]
    _collecting.state[-1].checks.append((tf.cast(condition, tf.bool), Check(error_class, message, len(values)),
                                         values))


def note_written(variables) -> None:
    """Before a write to ``variables`` (``tf.Variable``s) in a graph being collected: the write stands only where
    every check recorded before it holds (``_undo_after_a_failed_check``), as an eager call raises at the first
    that fails and writes nothing after it. The write is noted in its own graph (its value read there, before it)
    and, where it is in a branch or a loop body, in each graph around it as a write of the op that holds it (the
    value read before that op): a check that fails before the op undoes it there. Nothing outside a graph being
    collected (eagerly, a plain graph, whose checks are ``Assert``s that its writes wait for: ``in_program_order``)."""
    if not recording():
        return
    state = _collecting.state
    for depth, level in enumerate(state):
        ordinal = len(level.checks)
        new = [variable for variable in variables if level.last.get(id(variable)) != ordinal]
        if not new:  # (written here already since its last check: the earlier value before stands for both)
            continue
        with contextlib.ExitStack() as stack:
            if depth < len(state) - 1:  # (a graph around a branch or loop body: read before the op)
                stack.enter_context(level.graph.as_default())
                stack.enter_context(tf.control_dependencies(None))
            for variable in new:
                level.last[id(variable)] = ordinal
                level.writes.append((variable, ordinal, variable.value()))


@contextlib.contextmanager
def unless_a_check_failed(variables):
    """The block's writes to ``variables`` stand only where every check of the call before them holds
    (``note_written``; in a plain graph, ``in_program_order``: they wait for its assertions made before them)."""
    note_written(variables)
    yield
    in_program_order()


# ---- a plain graph: its assertions and its writes in program order ------------------------------------------
# A plain graph's checks are ``Assert`` ops, and TensorFlow orders stateful ops only per resource: an assignment
# to a variable that no check's value reaches (``num_batches_tracked``'s increment, a guard's flag) ran before an
# ``Assert`` made before it had failed, and a label's check could fail before the forward's statistics, made
# before it, were written. ``in_program_order`` adds control edges (no ops): each write waits for the
# assertions made before it in its graph, each assertion for the writes made before it, so that a call that
# fails leaves the writes an eager call, which raised at that check, made.

#: a write to a variable; a stateful ``If``, ``Case``, ``While`` or call holds writes or checks in its own graph
_WRITES = frozenset({"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
                     "ResourceStridedSliceAssign", "If", "Case", "While", "StatefulPartitionedCall"})
_HOLDS_CHECKS = frozenset({"If", "Case", "While", "StatefulPartitionedCall"})


class _Order:
    """A plain graph's last run of assertions and of writes (``in_program_order``), the id of the last op looked at
    and the count of its ops then."""

    def __init__(self):
        self.checks: list = []
        self.writes: list = []
        self.seen = self.count = 0
        self.last_was_check = False


def _is_write(op) -> bool:
    """Whether ``op`` writes a variable (an assignment, an optimizer's fused apply, a scatter) or may hold one."""
    return op.type in _WRITES or op.type.startswith(("ResourceApply", "ResourceScatter", "ResourceSparseApply"))


def in_program_order() -> None:
    """In a plain graph being traced (not eagerly, not one whose checks are ``record``ed): the ops made since
    the last call, in the order they were made, each write (``_is_write``) after every ``Assert`` made before
    it, each ``Assert`` after every write made before it; a control-flow op or call, which holds both in its
    own graph (ordered there), as both. Called after each check (``ops.py``), each write through unidl and at
    the end of a graph and of a branch or loop body (``_cond``, ``_case``, ``_while_loop``, ``GraphFunction``)."""
    if tf.executing_eagerly() or recording():
        return
    graph = tf.compat.v1.get_default_graph()
    # (kept on the graph, which it dies with: a table keyed weakly on the graph would hold it through the ops)
    order = getattr(graph, "_unidl_program_order", None)
    if order is None:
        order = graph._unidl_program_order = _Order()
    nodes = graph._nodes_by_id  # (ops by the id TensorFlow numbers them with as they are made, rising)
    new, ident = len(nodes) - order.count, order.seen
    order.count = len(nodes)
    while new:
        ident += 1
        if ident not in nodes:  # (a number no op of this graph took)
            continue
        new -= 1
        op = nodes[ident]
        write, check = _is_write(op), op.type == "Assert" or op.type in _HOLDS_CHECKS
        waits = (order.checks if write else []) + (order.writes if check else [])
        if waits:
            op._add_control_inputs(waits)
        # (the last run of checks, each after the writes before it, and the last run of writes, each after the
        # checks before it: waiting for a run waits for everything made before it, one edge an op per run)
        if write and (order.last_was_check or check):
            order.writes = []
        if check and (not order.last_was_check or write):
            order.checks = []
        if write:
            order.writes.append(op)
        if check:
            order.checks.append(op)
        order.last_was_check = check and not write
    order.seen = ident


def packed(checks) -> tuple:
    """``(report, descriptions)``: ``checks`` (``record``'s) as one int64 vector (``_report``, every value of the
    first that failed held) and their ``Check``s in order, for ``raise_failed``: one output and one host read a
    call, whose first element alone says that all passed."""
    descriptions: list = []
    return _report(checks, descriptions, max(check.count for _, check, _ in checks)), descriptions


def raise_failed(report, descriptions) -> None:
    """Raise the error of the first check that failed in an eager ``report`` (``_report``'s); nothing if all
    passed."""
    report = report.numpy()
    if report[0]:
        return
    check = descriptions[int(report[1])]
    raise check.error(report[2:2 + check.count]) from None


def handed_on(report, descriptions) -> list:
    """The checks that ``report`` (``_report``'s tensor, in the graph being traced: of a compiled function called
    in it, a ``tf.cond`` or a ``tf.while_loop``) stands for, as ``(condition, Check, values)`` for that graph to
    check: each holds unless the report names it as the first that failed."""
    return [(tf.logical_or(tf.equal(report[0], 1), tf.not_equal(report[1], place)), check,
             [report[2 + offset] for offset in range(check.count)]) for place, check in enumerate(descriptions)]


def record_all(checks) -> None:
    """Record ``checks`` (``handed_on``'s) in the graph being collected."""
    _collecting.state[-1].checks.extend(checks)


#: the values a check in a branch or loop body hands out at most (an index check's three, a size check's every
#: size of its tensors: a join of five 4-D tensors twenty); the rest are shown as "?" in its message
_MOST_VALUES = 32


def _report(checks, descriptions, most: int = _MOST_VALUES):
    """One int64 vector of ``checks`` (``record``'s), of one shape for any ``checks`` (the branches of one op, the
    iterations of a loop): 1 where all hold (else 0), the place in ``descriptions`` of the first that failed (-1:
    none) and its values, ``most`` of them, padded; each check's ``Check`` (``most`` of its values shown) appended to
    ``descriptions``, the checks of every branch of one op, in order."""
    base = len(descriptions)
    descriptions.extend(check.shown(most) for _, check, _ in checks)
    if not checks:
        return tf.constant([1, -1] + [0] * most, tf.int64)
    conditions = tf.stack([condition for condition, _, _ in checks])
    first = tf.argmin(tf.cast(conditions, tf.int64), output_type=tf.int64)  # (the first False)
    rows = tf.stack([tf.stack(values[:most] + [tf.constant(0, tf.int64)] * (most - len(values[:most])))
                     for _, _, values in checks]) if most else tf.zeros((len(checks), 0), tf.int64)
    held = tf.cast(tf.reduce_all(conditions), tf.int64)
    return tf.concat([tf.stack([held, base + first]), tf.gather(rows, first)], 0)


_tracing = threading.local()


@contextlib.contextmanager
def tracing_unidl_graph():
    """While unidl traces a graph of its own (``GraphFunction``): the ``tf.cond``/``tf.switch_case``/``while``
    branches made in it are put in program order (``_ordered``); a user's own TensorFlow graph is left as
    TensorFlow makes it."""
    _tracing.depth = getattr(_tracing, "depth", 0) + 1
    try:
        yield
    finally:
        _tracing.depth -= 1


def _ordered(branch):
    """``branch`` (a ``tf.cond`` branch, a loop's body or condition), its graph's writes and assertions put in
    program order at its end (``in_program_order``); the op that holds it is ordered in the graph around it. Only
    in a graph unidl traces or has ordered (``tracing_unidl_graph``): a user's own ``tf.function`` is TensorFlow's."""
    if not getattr(_tracing, "depth", 0) and \
            getattr(tf.compat.v1.get_default_graph(), "_unidl_program_order", None) is None:
        return branch

    def run(*args, **kwargs):
        outputs = branch(*args, **kwargs)
        in_program_order()
        return outputs

    return run


def _reporting(branch, leaves):
    """``branch`` (of a ``tf.cond`` or ``tf.switch_case`` in a graph being collected) returning its outputs and its
    checks' ``_report``, the values it names added to ``leaves``."""

    def run():
        with _nested() as checks:
            outputs = branch()
        return outputs, _report(checks, leaves)

    return run


def _cond(original):
    """``cond_v2.cond_v2`` whose branches, traced in a graph being collected, hand their checks out as one more
    output (``_report``), recorded around it: XLA drops the ``Assert`` a branch's check would be."""

    def cond_v2(pred, true_fn, false_fn, name="cond"):
        if not recording():
            return original(pred, _ordered(true_fn), _ordered(false_fn), name)
        leaves: list = []
        reporting = functools.partial(_reporting, leaves=leaves)

        outputs, report = original(pred, reporting(true_fn), reporting(false_fn), name)
        record_all(handed_on(report, leaves))
        return outputs

    return cond_v2


def _case(original):
    """``cond_v2.indexed_case`` (``tf.switch_case``) whose branches, traced in a graph being collected, hand their
    checks out as one more output (``_report``), recorded around it, as ``_cond``'s."""

    def indexed_case(branch_index, branch_fns, name="indexed_case", lower_using_switch_merge=None):
        if not recording():
            return original(branch_index, [_ordered(branch) for branch in branch_fns], name, lower_using_switch_merge)
        leaves: list = []
        reporting = functools.partial(_reporting, leaves=leaves)

        outputs, report = original(branch_index, [reporting(branch) for branch in branch_fns], name,
                                   lower_using_switch_merge)
        record_all(handed_on(report, leaves))
        return outputs

    return indexed_case


def _while_loop(original):
    """``while_v2.while_loop`` whose body, traced in a graph being collected, carries the first check that failed
    in any iteration as one more loop variable (``_report``), recorded around the loop. A check in the loop's
    condition, whose graph has one output, stops the loop where it fails (an eager loop raises there), and the
    condition is run once more after the loop, on its last state, for its checks to be recorded: the one that
    stopped it, if any (a loop of unknown length under XLA ran on with an index clamped, for ever where the value
    read kept the condition true)."""

    def while_loop(cond, body, loop_vars, shape_invariants=None, *args, return_same_structure=True, **kwargs):
        if not recording() or not isinstance(loop_vars, (list, tuple)):
            return original(_ordered(cond), _ordered(body), loop_vars, shape_invariants, *args,
                            return_same_structure=return_same_structure, **kwargs)
        leaves: list = []
        condition_checked: list = []
        initial = tf.constant([1, -1] + [0] * _MOST_VALUES, tf.int64)

        def checked_cond(*state):
            with _nested() as checks:
                holds = cond(*state[:-1])
            condition_checked[:] = [bool(checks)]
            # (no iteration after one whose check failed, as an eager loop raised there: under XLA the body ran on
            # with an index clamped, for ever where the value read kept the condition true; the body is traced
            # after the condition, so the report is read whether or not it has checks: a constant where it has none)
            holds = tf.logical_and(tf.equal(state[-1][0], 1), holds)
            if not checks:
                return holds
            return tf.logical_and(tf.reduce_all(tf.stack([condition for condition, _, _ in checks])), holds)

        def reporting_body(*state):
            with _nested(earlier_held=tf.equal(state[-1][0], 1)) as checks:  # (an iteration after a failed one:
                # its writes undone, as an eager loop never ran it)
                outputs = body(*state[:-1])
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            del leaves[:]  # (each trace of the body names its own checks)
            if not checks:  # (carried as it is: XLA drops a loop variable that the body passes through)
                return outputs + [state[-1]]
            report = _report(checks, leaves)
            return outputs + [tf.where(tf.equal(state[-1][0], 1), report, state[-1])]  # (the first failure kept)

        if shape_invariants is not None:
            shape_invariants = list(shape_invariants) + [initial.shape]
        results = original(checked_cond, reporting_body, list(loop_vars) + [initial],
                           shape_invariants, *args, return_same_structure=True, **kwargs)
        record_all(handed_on(results[-1], leaves))
        results = results[:-1]
        if any(condition_checked):
            cond(*results)  # (its checks recorded here, after the body's: an eager loop's order)
        if hasattr(loop_vars, "_fields"):
            return type(loop_vars)(*results)
        if len(results) == 1 and not return_same_structure:
            return results[0]
        return tuple(results) if isinstance(loop_vars, tuple) else results

    return while_loop


def _install() -> None:
    """Make TensorFlow's ``tf.cond``, ``tf.case``, ``tf.switch_case`` and ``tf.while_loop`` graphs (AutoGraph's
    ``if`` and ``while`` on tensors too) hand their checks out while a graph is collected (``_cond``, ``_case``,
    ``_while_loop``); as they are otherwise."""
    from tensorflow.python.ops import cond_v2, while_v2

    if not getattr(cond_v2.cond_v2, "_unidl_checks", False):
        cond_v2.cond_v2 = _cond(cond_v2.cond_v2)
        cond_v2.cond_v2._unidl_checks = True
    if not getattr(cond_v2.indexed_case, "_unidl_checks", False):
        cond_v2.indexed_case = _case(cond_v2.indexed_case)
        cond_v2.indexed_case._unidl_checks = True
    if not getattr(while_v2.while_loop, "_unidl_checks", False):
        while_v2.while_loop = _while_loop(while_v2.while_loop)
        while_v2.while_loop._unidl_checks = True


_install()
