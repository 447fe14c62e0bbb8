"""The model graph TensorBoard shows, from a TorchScript trace of the forward (``Backend.model_graph``).

``torch.utils.tensorboard`` has such a converter, but importing it imports TensorFlow wherever it is
installed (seconds, and its log lines, in a torch run); this one writes the ``GraphDef`` with the
tensorboard package's protos alone. Nodes: the input, each parameter and buffer under its
``state_dict()`` name with '/' between modules ('linear1/weight'), each traced ATen op, and the output;
an ``aten::to`` that changes neither dtype nor device (Keras converts every operand so) is no node. The keras
backend draws Keras's model on torch through ``graph_of_values`` (the Keras variables' values go in through a
StatelessScope).
"""

from __future__ import annotations

import warnings

import torch

from unidl.backends.torch.module import NativeModule


def model_graph(module, x) -> bytes | None:
    """The serialized ``GraphDef`` of ``module``'s forward on ``x`` (a tensor, or a tuple of them: the forward's
    positional inputs, one 'Input' node each), traced once without gradients; None for a module whose state is
    not torch tensors (Keras's variables, which the keras backend passes in as values: ``graph_of_values``)."""
    state = [*module.named_parameters(), *module.named_buffers()]
    if not all(isinstance(value, torch.Tensor) for _, value in state):
        return None
    native = NativeModule(module)
    kinds = {**{name: "Buffer" for name, _ in native.named_buffers(remove_duplicate=False)},
             **{name: "Parameter" for name, _ in native.named_parameters(remove_duplicate=False)}}
    return _graph_def(native, tuple(x) if isinstance(x, (tuple, list)) else (x,), kinds)


def each(convert, x):
    """``x`` converted by ``convert``: one batch, or each of a tuple of them (the forward's positional inputs)."""
    return tuple(convert(value) for value in x) if isinstance(x, (tuple, list)) else convert(x)


class _StateValues(torch.nn.Module):
    """The state's tensors as buffers under their ``state_dict()`` names, for the trace to read them as module
    attributes (named graph nodes, not constants), and a forward that passes them to ``forward``."""

    def __init__(self, forward, state):
        super().__init__()
        self._forward, self._names = forward, [name for name, _, _ in state]
        for name, _, value in state:
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, torch.nn.Module())
                owner = owner._modules[part]
            owner.register_buffer(leaf, value)

    def forward(self, *inputs):
        return self._forward([self.get_buffer(name) for name in self._names], *inputs)


def graph_of_values(forward, state, x) -> bytes:
    """The serialized ``GraphDef`` of ``forward(values, *inputs)``, a function of the ``values`` of ``state``
    ((``state_dict()`` name, is a parameter, tensor) each) and of inputs shaped as ``x`` (a tensor or a tuple
    of them), traced once without gradients."""
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    kinds = {name: "Parameter" if parameter else "Buffer" for name, parameter, _ in state}
    return _graph_def(_StateValues(forward, state), inputs, kinds)


def _graph_def(native: torch.nn.Module, inputs: tuple, kinds: dict) -> bytes:
    """The ``GraphDef`` of ``native``'s forward on ``inputs``: its state (``kinds``: dotted name -> 'Parameter'
    or 'Buffer') as named nodes."""
    from tensorboard.compat.proto import attr_value_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2, versions_pb2

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning: shape checks in Python become constants of the trace
        graph = torch.jit.trace(native, inputs, check_trace=False, strict=False).inlined_graph
    nodes, names, counts = [], {}, {}  # names: a traced value -> its node's name (absent: a constant, not drawn)
    # the state's dtype and device (the trace types an attribute it reads as a bare Tensor)
    types = {name: torch._C.TensorType.create_from_tensor(tensor)
             for name, tensor in [*native.named_parameters(remove_duplicate=False),
                                  *native.named_buffers(remove_duplicate=False)]}
    traced_types = {}  # a traced state value -> its TensorType

    def add(name, op, inputs, value=None):
        node = node_def_pb2.NodeDef(name=name, op=op, input=[names[v] for v in inputs if v in names])
        sizes = value.type().sizes() if value is not None and isinstance(value.type(), torch._C.TensorType) else None
        if sizes is not None:
            dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in sizes]
            shape = tensor_shape_pb2.TensorShapeProto(dim=dims)
            node.attr["_output_shapes"].CopyFrom(attr_value_pb2.AttrValue(
                list=attr_value_pb2.AttrValue.ListValue(shape=[shape])))
        nodes.append(node)
        return name

    paths = {}  # a traced module value -> its dotted path from the root ('' for the root itself)
    graph_inputs = list(graph.inputs())
    paths[graph_inputs[0].debugName()] = ""
    for index, value in enumerate(graph_inputs[1:]):
        names[value.debugName()] = add("input" if index == 0 else f"input_{index}", "Input", [], value)
    for node in graph.nodes():
        kind, outputs = node.kind(), list(node.outputs())
        inputs = [v.debugName() for v in node.inputs()]
        if kind == "prim::GetAttr":
            parent = paths.get(inputs[0], "")
            path = f"{parent}.{node.s('name')}" if parent else node.s("name")
            if path in kinds:
                names[outputs[0].debugName()] = add(path.replace(".", "/"), kinds[path], [], outputs[0])
                traced_types[outputs[0].debugName()] = types[path]
            else:
                paths[outputs[0].debugName()] = path
        elif kind == "prim::Constant" or (kind.startswith("prim::") and not any(v in names for v in inputs)):
            continue  # constants and lists of constants (a conv's stride) are attributes, not graph nodes
        elif kind == "aten::to" and inputs[0] in names and _same_tensor_type(
                traced_types.get(inputs[0], next(node.inputs()).type()), outputs[0].type()):
            names[outputs[0].debugName()] = names[inputs[0]]  # a conversion to what it already is: no node
        else:
            short = kind.split("::")[-1]
            counts[short] = counts.get(short, 0) + 1
            name = add(f"{short}_{counts[short]}", kind, inputs, outputs[0] if outputs else None)
            for value in outputs:
                names[value.debugName()] = name
    add("output", "Output", [v.debugName() for v in graph.outputs()])
    definition = graph_pb2.GraphDef(node=nodes, versions=versions_pb2.VersionDef(producer=22))
    return definition.SerializeToString()


def _same_tensor_type(before, after) -> bool:
    """Whether two traced tensor types have one known dtype and one device."""
    return (isinstance(before, torch._C.TensorType) and isinstance(after, torch._C.TensorType)
            and before.scalarType() is not None and before.scalarType() == after.scalarType()
            and before.device() == after.device())
