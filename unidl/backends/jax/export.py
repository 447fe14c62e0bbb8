"""Export on jax: ``stablehlo`` through ``jax.export`` (always), ONNX through ``jax2onnx``, and a SavedModel
through ``jax2tf`` where TensorFlow is installed; all with the batch size left symbolic and the module's weights
inside."""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib

#: where a ``stablehlo`` program runs: the platforms unidl's jax backend computes on (lowered for each, no device
#: of either needed to export; ``Exported.call`` picks the one it runs on)
STABLEHLO_PLATFORMS = ("cpu", "cuda")
#: the name of the ONNX program's symbolic batch dimension (torch's exporter names it the same)
ONNX_BATCH = "batch"


def export_formats() -> tuple[str, ...]:
    # onnx always, as on torch: a missing jax2onnx is an ImportError naming the extra that brings it
    return ("stablehlo", "onnx") + (("saved_model",) if importlib.util.find_spec("tensorflow") is not None else ())


def export_module(module, path: str, format: str, input_shape, input_dtype=None) -> None:
    """Write ``module``'s eval-mode forward in ``format`` (one of ``export_formats()``) to ``path``, its input of
    ``input_dtype`` (None: the module's dtype)."""
    dtype = input_dtype or _dtype(module)
    if format == "stablehlo":
        _export_stablehlo(module, path, input_shape, dtype)
    elif format == "onnx":
        _export_onnx(module, path, input_shape, dtype)
    else:
        _export_saved_model(module, path, input_shape, dtype)


def _dtype(module) -> str:
    params = module.native.params
    return str(next(iter(params.values())).dtype) if params else "float32"


def _export_stablehlo(module, path: str, input_shape, dtype: str) -> None:
    """A serialized ``jax.export.Exported`` of ``x -> module(x)`` (the weights are constants of the program):
    ``jax.export.deserialize(bytearray(open(path, "rb").read())).call(x)`` runs it with jax alone."""
    import jax
    from jax import export

    native = module.native
    params = native.params
    forward = jax.jit(lambda x: native.apply(params, x))
    shape = export.symbolic_shape(f"b, {', '.join(str(d) for d in input_shape)}")
    exported = export.export(forward, platforms=STABLEHLO_PLATFORMS)(jax.ShapeDtypeStruct(shape, dtype))
    with open(path, "wb") as file:
        file.write(exported.serialize())


def _export_saved_model(module, path: str, input_shape, dtype: str) -> None:
    """A SavedModel (endpoint ``serve``, signature ``serving_default``) whose weights are the module's current
    values; a nested output (which a signature cannot hold) as ``unidl.export.flat_outputs`` flattens it."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    from unidl.export import flat_outputs

    native = module.native
    params = native.params
    converted = jax2tf.convert(lambda p, x: flat_outputs(native.apply(p, x)),
                               polymorphic_shapes=[None, f"(b, {', '.join(str(d) for d in input_shape)})"])
    holder = tf.Module()
    holder.params = {name.replace(".", "/"): tf.Variable(value, trainable=False) for name, value in params.items()}
    names = list(params)

    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.as_dtype(dtype), name="x")],
                 autograph=False)
    def serve(x):
        return converted({name: holder.params[name.replace(".", "/")] for name in names}, x)

    holder.serve = serve
    tf.saved_model.save(holder, path, signatures={"serving_default": serve})


def _export_onnx(module, path: str, input_shape, dtype: str) -> None:
    """An ONNX model of ``x -> module(x)`` written by ``jax2onnx`` from the forward's jaxpr: input ``'x'`` with a
    symbolic batch dimension, the weights as initializers inside the file (no external data); the outputs as
    ``unidl.export.flat_outputs`` gives them, named by ``unidl.export`` (jax2onnx may use their names inside)."""
    try:
        import onnx
        from jax2onnx import to_onnx
    except ImportError as error:
        raise ImportError(f"exporting to ONNX on jax needs the jax2onnx package ({error}); "
                          f"pip install 'unidl[onnx]'") from None
    import jax
    import numpy as np

    from unidl.errors import UnidlError
    from unidl.export import flat_outputs

    native = module.native
    params = native.params
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"{ONNX_BATCH}, {', '.join(map(str, input_shape))}"),
                                np.dtype(dtype))
    # the forward traced with the input as asked first: jax2onnx narrows a float64 input to float32 outside double
    # precision, so that a float32 model took one (and a Cast) where every other format raises the forward's error
    jax.eval_shape(lambda x: native.apply(params, x), jax.ShapeDtypeStruct((1, *input_shape), np.dtype(dtype)))
    # and over the symbolic batch size the program takes: a forward that cannot take one (a batch size read as an
    # int) raises its own error here, as the stablehlo export does, rather than jax2onnx's reported below
    jax.eval_shape(lambda x: native.apply(params, x), spec)
    try:
        with _jax_plugins_only():
            model = to_onnx(lambda x: flat_outputs(native.apply(params, x)), [spec], model_name=type(module).__name__,
                            input_names=["x"], enable_double_precision=_dtype(module) == "float64")
    except Exception as error:
        # the forward traced above: what fails now is jax2onnx's conversion (a primitive it has no ONNX for, a
        # symbolic batch size where its rule needs a number: max pooling with indices), which unidl.export reports
        # as an ExportFormatError naming the model and the formats that write it
        if isinstance(error, (NotImplementedError, UnidlError, MemoryError, RecursionError)):
            raise
        reason = (str(error).strip().splitlines() or [""])[0]  # (the first line: jax's go on with a manual's page)
        raise NotImplementedError(f"jax2onnx: {type(error).__name__}: {reason}") from error
    _pool_batch_and_channel_axes(model.graph)
    _give_input_dtype(model.graph, dtype)
    onnx.checker.check_model(model)
    onnx.save_model(model, path)


def _give_input_dtype(graph, dtype: str) -> None:
    """Make the program's input ``x`` of ``dtype`` where jax2onnx gave it another, in place: outside double
    precision (which a float32 model cannot take: jax2onnx then mixes float32 and float64 values) it narrows 64-bit
    inputs to 32 bits, so that token ids asked as int64 came as int32. The input takes ``dtype`` and a ``Cast``
    gives the graph the values it was written for (ids past 2**31 do not fit there, as they did not in jax2onnx's
    program)."""
    from onnx import TensorProto, helper

    from unidl.export import ONNX_INPUT, rename_onnx_values

    wanted = getattr(TensorProto, {"float32": "FLOAT", "float64": "DOUBLE"}.get(dtype, dtype.upper()))
    (value,) = [value for value in graph.input if value.name == ONNX_INPUT]
    given = value.type.tensor_type.elem_type
    if given == wanted:
        return
    narrowed = f"{ONNX_INPUT}_as_{TensorProto.DataType.Name(given).lower()}"
    rename_onnx_values(graph, {ONNX_INPUT: narrowed}, skip=[value])
    value.type.tensor_type.elem_type = wanted
    graph.node.insert(0, helper.make_node("Cast", [ONNX_INPUT], [narrowed], to=given))


@contextlib.contextmanager
def _jax_plugins_only():
    """Load only jax2onnx's plugins for ``jax.lax`` / ``jax.numpy`` for one conversion.

    Before its first conversion jax2onnx imports every plugin it ships, Flax's, Equinox's and its examples'
    too, and those build example models eagerly: about ten seconds on a CPU, where its jax plugins take one or two.
    A unidl forward is made of jax primitives only. Discovery is marked done for this conversion alone, so a later
    jax2onnx call in the same process (a Flax model of the user's) still loads the rest. Where jax2onnx's private
    discovery hooks differ from those of the version this was written for, nothing is skipped (slower, same
    result)."""
    from jax2onnx.plugins import plugin_system

    import_tree = getattr(plugin_system, "_import_tree", None)
    if import_tree is None or getattr(plugin_system, "_already_imported_plugins", None) is not False:
        yield
        return
    import_tree(pathlib.Path(plugin_system.__file__).parent / "jax", "jax2onnx.plugins.jax")
    plugin_system._already_imported_plugins = True
    try:
        yield
    finally:
        plugin_system._already_imported_plugins = False


def _pool_batch_and_channel_axes(graph) -> None:
    """Rewrite jax2onnx's lowering of a pool over NCHW into one onnxruntime runs, in place.

    jax2onnx lowers ``lax.reduce_window`` max with window ``(1, 1, kh, kw)`` (unidl's ``max_pool2d``) as
    ``Unsqueeze(0) -> Unsqueeze(1) -> MaxPool(kernel (1, 1, kh, kw)) -> Squeeze(0, 1)``: a pool over four spatial
    axes, which onnxruntime refuses ("Unsupported pooling size", it pools over three at most). Where the window
    leaves the first two axes alone (size and stride 1, no padding, no dilation) they are ONNX's batch and channel
    axes already: the pool is applied to the input itself, over the remaining axes."""
    from onnx import NodeProto, helper, numpy_helper

    nodes = list(graph.node)  # one wrapper per node, so that ``is`` compares nodes below
    constants = {tensor.name: numpy_helper.to_array(tensor).tolist() for tensor in graph.initializer}
    producers = {name: node for node in nodes for name in node.output}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}

    def only_consumer(node):
        users = consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and node.output[0] not in outputs else None

    def is_axes(node, op_type, axes):
        return (node is not None and node.op_type == op_type and len(node.input) == 2
                and constants.get(node.input[1]) == axes)

    removed = []  # the Unsqueeze and Squeeze nodes around each rewritten pool
    for pool in nodes:
        if pool.op_type != "MaxPool" or len(pool.output) != 1:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        kernel = list(attributes["kernel_shape"])
        rank = len(kernel)
        strides = list(attributes.get("strides", [1] * rank))
        dilations = list(attributes.get("dilations", [1] * rank))
        pads = list(attributes.get("pads", [0] * 2 * rank))
        if (rank <= 3 or attributes.get("auto_pad", b"NOTSET") != b"NOTSET" or kernel[:2] != [1, 1]
                or strides[:2] != [1, 1] or dilations[:2] != [1, 1] or pads[:2] != [0, 0]
                or pads[rank:rank + 2] != [0, 0]):
            continue
        inner = producers.get(pool.input[0])
        outer = producers.get(inner.input[0]) if is_axes(inner, "Unsqueeze", [1]) else None
        squeeze = only_consumer(pool)
        if not (is_axes(outer, "Unsqueeze", [0]) and only_consumer(outer) is inner and only_consumer(inner) is pool
                and is_axes(squeeze, "Squeeze", [0, 1])):
            continue
        attributes.update(kernel_shape=kernel[2:], strides=strides[2:], dilations=dilations[2:],
                          pads=pads[2:rank] + pads[rank + 2:])
        del pool.attribute[:]
        pool.attribute.extend(helper.make_attribute(name, value) for name, value in sorted(attributes.items()))
        pool.input[0] = outer.input[0]
        pool.output[0] = squeeze.output[0]
        removed += [outer, inner, squeeze]
    if not removed:
        return
    kept = []
    for node in nodes:
        if not any(node is other for other in removed):
            kept.append(NodeProto())
            kept[-1].CopyFrom(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    axes = {node.input[1] for node in removed}
    for tensor in [tensor for tensor in graph.initializer if tensor.name in axes and tensor.name not in used]:
        graph.initializer.remove(tensor)
