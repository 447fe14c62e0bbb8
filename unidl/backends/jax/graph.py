"""The model graph TensorBoard shows, from the jaxpr of the forward (``Backend.model_graph``).

``jax.make_jaxpr`` traces the forward as a pure function of the module's parameters and buffers and its
input; this turns that jaxpr into the ``GraphDef`` TensorBoard's Graphs tab reads, with the tensorboard
package's protos alone (no TensorFlow). Nodes: the input, each parameter and buffer under its ``state_dict()``
name with '/' between modules ('linear1/weight'), each JAX primitive ('dot_general', 'add', ...), and the
output. Calls of named functions (``jax.jit``, ``jax.custom_jvp``: ``relu``) are inlined, their primitives
grouped under the function's name ('relu/max_1'), as TensorBoard groups a name scope. The keras backend draws
Keras's model on JAX through ``graph_of_values`` (the Keras variables' values go in through a StatelessScope).
"""

from __future__ import annotations

import jax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
from tensorboard.compat.proto import attr_value_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2, versions_pb2

from unidl.backends.jax import variable as jax_variable
from unidl.backends.jax.variable import JaxVariable


def model_graph(module, x) -> bytes | None:
    """The serialized ``GraphDef`` of ``module``'s forward on ``x`` (an array, or a tuple of them: the forward's
    positional inputs, one 'Input' node each), traced abstractly (nothing computed); None
    for a module whose state is not ``JaxVariable``s (Keras's variables, which the keras backend passes in as
    values: ``graph_of_values``)."""
    state = [*module.named_parameters(), *module.named_buffers()]
    if not all(isinstance(value, JaxVariable) for _, value in state):
        return None
    variables = [value for _, value in state]
    live = jax_variable.live()
    before = [v.value for v in live]

    def forward(values, *inputs):
        for variable, value in zip(variables, values):
            variable.value = value
        return module(*inputs)

    try:
        return graph_of_values(forward, [(name, value.trainable, value.value) for name, value in state], x)
    finally:  # tracing leaves every variable as it was (a forward that writes state writes tracers)
        for variable, value in zip(live, before):
            variable.value = value


def each(convert, x):
    """``x`` converted by ``convert``: one batch, or each of a tuple of them (the forward's positional inputs)."""
    return tuple(convert(value) for value in x) if isinstance(x, (tuple, list)) else convert(x)


def graph_of_values(forward, state, x) -> bytes:
    """The serialized ``GraphDef`` of ``forward(values, *inputs)``, a pure function of the ``values`` of
    ``state`` ((``state_dict()`` name, is a parameter, array) each) and of inputs shaped as ``x`` (an array or
    a tuple of them), traced abstractly by ``jax.make_jaxpr``."""
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    closed = jax.make_jaxpr(forward)([value for _, _, value in state], *inputs)
    return graph_def([name for name, _, _ in state],
                     ["Parameter" if parameter else "Buffer" for _, parameter, _ in state], closed)


def graph_def(names, kinds, closed: ClosedJaxpr) -> bytes:
    """The serialized ``GraphDef`` of a traced forward whose jaxpr takes the state's values first (one node
    each, named after ``names`` with '/' for '.', of op ``kinds``: 'Parameter' or 'Buffer') and then its
    inputs."""
    graph = _Graph()
    jaxpr = closed.jaxpr
    for name, kind, var in zip(names, kinds, jaxpr.invars):
        graph.name_of[var] = graph.add(name.replace(".", "/"), kind, [], [var])
    for index, var in enumerate(jaxpr.invars[len(names):]):
        graph.name_of[var] = graph.add("input" if index == 0 else f"input_{index}", "Input", [], [var])
    graph.add_equations(jaxpr, "")
    graph.add("output", "Output", jaxpr.outvars, [])
    definition = graph_pb2.GraphDef(node=graph.nodes, versions=versions_pb2.VersionDef(producer=22))
    return definition.SerializeToString()


def _sub_jaxpr(equation):
    """The jaxpr an equation calls with its own inputs and outputs (a ``jit``, ``custom_jvp_call``, ...), to be
    inlined; None for a primitive, or a loop or branch (``scan``, ``cond``: several jaxprs or other arities)."""
    called = [p for p in equation.params.values() if isinstance(p, (ClosedJaxpr, Jaxpr))]
    if len(called) != 1:
        return None
    jaxpr = called[0].jaxpr if isinstance(called[0], ClosedJaxpr) else called[0]
    if len(jaxpr.invars) != len(equation.invars) or len(jaxpr.outvars) != len(equation.outvars):
        return None
    return jaxpr


class _Graph:
    """The ``NodeDef``s built so far and the node that computes each jaxpr variable (absent: a constant)."""

    def __init__(self):
        self.nodes, self.name_of, self._counts = [], {}, {}

    def add(self, name, op, inputs, outputs) -> str:
        node = node_def_pb2.NodeDef(name=name, op=op, input=[self.name_of[v] for v in inputs
                                                             if not isinstance(v, Literal)
                                                             and v in self.name_of])
        shapes = [tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s))
                                                         for s in v.aval.shape])
                  for v in outputs if hasattr(v.aval, "shape")]
        if shapes:
            node.attr["_output_shapes"].CopyFrom(attr_value_pb2.AttrValue(
                list=attr_value_pb2.AttrValue.ListValue(shape=shapes)))
        self.nodes.append(node)
        return name

    def add_equations(self, jaxpr, scope: str) -> None:
        for equation in jaxpr.eqns:
            inner = _sub_jaxpr(equation)
            if inner is not None:
                for inner_var, var in zip(inner.invars, equation.invars):
                    if not isinstance(var, Literal) and var in self.name_of:
                        self.name_of[inner_var] = self.name_of[var]
                called = equation.params.get("name")  # a jit's function name; a custom_jvp_call has none
                same = called is None or scope.rstrip("/").rsplit("/", 1)[-1] == str(called)
                self.add_equations(inner, scope if same else f"{scope}{called}/")
                for inner_var, var in zip(inner.outvars, equation.outvars):
                    if not isinstance(inner_var, Literal) and inner_var in self.name_of:
                        self.name_of[var] = self.name_of[inner_var]
                continue
            op = equation.primitive.name
            key = f"{scope}{op}"
            self._counts[key] = self._counts.get(key, 0) + 1
            name = self.add(f"{key}_{self._counts[key]}", op, equation.invars, equation.outvars)
            for var in equation.outvars:
                self.name_of[var] = name
