"""Which parameters a TensorFlow graph read only inside control flow, and whether it did at run time.

PyTorch gives no gradient (``.grad`` None) to a parameter that the step's forward never used, and
``torch.optim`` then leaves it and its slots (momentum, Adam's moments and step count) alone. A TensorFlow
graph cannot say None at run time: a layer read inside a loop over a graph input (``for _ in range(depth)``,
``tf.while_loop``) or inside one branch of a ``tf.cond`` gets a gradient of zeros when the loop runs no
iteration or the other branch is taken, and a zero gradient still moves momentum. ``gradient_conditions``
finds, in the graph being traced, the parameters read only through such ops and gives for each a boolean
tensor saying whether the op read it in this run: the loop ran at least once (a ``While`` op's first output
counts its iterations), or the branch that reads it was taken. The optimizers treat a False flag as no
gradient, so that the graph updates as PyTorch's eager loop does.

Nested control flow is judged at the outermost op: a parameter read in a branch inside a loop counts as read
when the loop ran. A parameter read anywhere outside control flow counts as read (None: unconditional).
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.framework.func_graph import FuncGraph
from tensorflow.python.ops.control_flow_v2_func_graphs import CondBranchFuncGraph

_LOOPS = ("While", "StatelessWhile")
_BRANCHES = ("If", "StatelessIf")


def gradient_conditions(params, grads, agree: bool = True) -> list:
    """One entry per parameter: None where it has no gradient (``grads``), where the graph being traced reads it
    unconditionally, or where nothing is being traced; else a boolean scalar, True when the control flow that
    reads it did at run time. Called inside a branch of a conditional (Keras's loss-scale optimizer updates in
    one), it reads the function's graph around it, where the forward ran. In a data-parallel job whose
    gradients are the ranks' mean, ``agree``: a flag holds where it holds on any rank (one all-reduce, only where
    there are flags), as torch's DDP gives every rank the gradient of a layer that one rank used."""
    if tf.executing_eagerly():
        return [None] * len(params)
    graph = tf.compat.v1.get_default_graph()
    while isinstance(graph, CondBranchFuncGraph):  # (a branch's graph: the forward ran in the graph around it)
        graph = graph.outer_graph
    tables = {}
    conditions = [None if grad is None else _condition(_placeholder(graph, _handle(p), tables))
                  for p, grad in zip(params, grads)]
    return _on_any_rank(conditions) if agree else conditions


def _on_any_rank(conditions) -> list:
    """``conditions`` held where they hold on any rank of the job (the sum of their 0/1 over the ranks > 0), in
    the step's replica context; as they are outside a job, or where the update runs once for the replicas of
    one process (their forwards are all in this graph already)."""
    from unidl.backends.tensorflow import distributed

    present = [c for c in conditions if c is not None]
    if not present or distributed.strategy() is None or tf.distribute.in_cross_replica_context():
        return conditions
    counts = iter(tf.unstack(distributed.reduce_in_step([tf.cast(tf.stack(present), tf.float32)], "sum")[0]))
    return [None if c is None else next(counts) > 0 for c in conditions]


def _placeholder(graph, tensor, tables):
    """The tensor through which ``graph`` reads ``tensor`` (a variable's handle), following captures from the
    graphs around it (a loop body reads the placeholder of the function around the loop); None if it does not.
    ``tables``: each graph's captures by id, built once per call of ``gradient_conditions``."""
    if tensor is None or not isinstance(graph, FuncGraph):
        return None
    if id(graph) not in tables:
        tables[id(graph)] = {id(external): internal for external, internal in graph.captures}
    internal = tables[id(graph)].get(id(tensor))
    if internal is not None:
        return internal
    outer = _placeholder(graph.outer_graph, tensor, tables)
    return None if outer is None else tables[id(graph)].get(id(outer))


def _handle(param):
    """The resource handle a graph captures when it reads ``param`` (a tf.Variable, or a Keras variable's)."""
    variable = getattr(param, "_value", param)  # (a Keras variable keeps its tf.Variable there)
    return getattr(variable, "handle", None)


def _condition(placeholder):
    """None, or a boolean scalar: whether the control-flow ops that read ``placeholder`` read it in this run."""
    if placeholder is None:
        return None
    consumers = placeholder.consumers()
    if not consumers or any(op.type not in _LOOPS + _BRANCHES for op in consumers):
        return None  # read outside control flow (or not at all: nothing to say)
    flags = [_read_by(op, placeholder) for op in consumers]
    if any(flag is True for flag in flags):
        return None
    flags = [flag for flag in flags if flag is not False]
    if not flags:
        return tf.constant(False)
    return flags[0] if len(flags) == 1 else tf.reduce_any(tf.stack(flags))


def _read_by(op, placeholder):
    """Whether ``op`` (a loop or a conditional) read ``placeholder``: a boolean scalar, or True / False where
    that is known while tracing."""
    if op.type in _LOOPS:
        return op.outputs[0] > 0  # while_v2's loop counter: the iterations run
    then_graph, else_graph = getattr(op, "_true_graph", None), getattr(op, "_false_graph", None)
    if then_graph is None or else_graph is None:
        return True  # a conditional whose branches we cannot see: as before, read
    positions = [i - 1 for i, tensor in enumerate(op.inputs) if tensor is placeholder and i > 0]
    in_then = any(then_graph.inputs[i].consumers() for i in positions)
    in_else = any(else_graph.inputs[i].consumers() for i in positions)
    if in_then and in_else:
        return True
    if not (in_then or in_else):
        return False
    predicate = tf.cast(op.inputs[0], tf.bool) if op.inputs[0].dtype != tf.bool else op.inputs[0]
    return predicate if in_then else tf.logical_not(predicate)
