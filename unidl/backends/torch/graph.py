"""The model graph TensorBoard shows, from a TorchScript trace of the forward (``Backend.model_graph``).

``torch.utils.tensorboard`` has such a converter, but importing it imports TensorFlow wherever it is
installed (seconds, and its log lines, in a torch run); this one writes the ``GraphDef`` with the
tensorboard package's protos alone. Nodes: the input, each parameter and buffer under its
``state_dict()`` name with '/' between modules ('linear1/weight'), each traced ATen op, and the output.
"""

from __future__ import annotations

import warnings

import torch

from unidl.backends.torch.module import NativeModule


def model_graph(module, x: torch.Tensor) -> bytes | None:
    """The serialized ``GraphDef`` of ``module``'s forward on ``x`` (traced once, without gradients); None for
    a module whose state is not torch tensors (Keras's variables, where the keras backend runs on torch)."""
    from tensorboard.compat.proto import attr_value_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2, versions_pb2

    state = [*module.named_parameters(), *module.named_buffers()]
    if not all(isinstance(value, torch.Tensor) for _, value in state):
        return None
    native = NativeModule(module)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning: shape checks in Python become constants of the trace
        graph = torch.jit.trace(native, x, check_trace=False, strict=False).inlined_graph
    states = {**dict(native.named_parameters()), **dict(native.named_buffers())}
    nodes, names, counts = [], {}, {}  # names: a traced value -> its node's name (absent: a constant, not drawn)

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
            if path in states:
                op = "Parameter" if isinstance(states[path], torch.nn.Parameter) else "Buffer"
                names[outputs[0].debugName()] = add(path.replace(".", "/"), op, [], outputs[0])
            else:
                paths[outputs[0].debugName()] = path
        elif kind == "prim::Constant" or (kind.startswith("prim::") and not any(v in names for v in inputs)):
            continue  # constants and lists of constants (a conv's stride) are attributes, not graph nodes
        else:
            short = kind.split("::")[-1]
            counts[short] = counts.get(short, 0) + 1
            name = add(f"{short}_{counts[short]}", kind, inputs, outputs[0] if outputs else None)
            for value in outputs:
                names[value.debugName()] = name
    add("output", "Output", [v.debugName() for v in graph.outputs()])
    definition = graph_pb2.GraphDef(node=nodes, versions=versions_pb2.VersionDef(producer=22))
    return definition.SerializeToString()
