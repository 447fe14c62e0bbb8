"""``export``: a model's forward as a standalone inference program that runs without unidl.

The front end checks the request (format, input shape and dtype, the forward's inputs, target path) and places
the result atomically; the model's backend writes the program (see ``Backend.export``). Programs take and return
the canonical layout (NCHW images), with any batch size.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import secrets
import shutil

from unidl import arguments, backends
from unidl.dtype_kinds import dtype_name
from unidl.errors import ExportFormatError, ExportInputError
from unidl.io.atomic import fsync_directory, fsync_tree, remove_stale_temporaries, temporary_path
from unidl.nn.module import exporting, restore_modes

#: every export format unidl knows -> what it writes and how to load it without unidl: each described by the backend
#: whose framework defines it (its ``SPEC.export_formats``)
FORMATS = backends.export_formats()
#: formats that write a directory rather than a single file
DIRECTORY_FORMATS = ("saved_model",)
#: the dtypes an exported program's input may have (``input_dtype``)
INPUT_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
#: the name of the ONNX program's input, and of its first output (the others are y_1, y_2, ...)
ONNX_INPUT, ONNX_OUTPUT = "x", "y"


def flat_outputs(output):
    """A forward's output as the flat formats (SavedModel, ONNX) return it: a tensor as it is; a tuple, list or dict
    (an LSTM's ``(output, (h_n, c_n))``) as the tuple of its tensors, depth first, a dict's entries in the order
    of their sorted keys (as ``jax.tree_util`` and ``tf.nest`` order them; torch keeps insertion order), so that
    every backend gives the same tensor the same place. ``None`` entries are left out."""
    if not isinstance(output, (tuple, list, dict)):
        return output
    flat = []

    def visit(value):
        if isinstance(value, dict):
            for key in sorted(value):
                visit(value[key])
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif value is not None:
            flat.append(value)

    visit(output)
    return tuple(flat)


def default_input_shape(model) -> tuple[int, ...]:
    """One sample's shape, from ``model.config``: CNN-style (in_channels, image_size) or TwoLayerNet-style D_in."""
    config = getattr(model, "config", None) or {}
    if "in_channels" in config and "image_size" in config:
        size = config["image_size"]
        return (config["in_channels"], size, size)
    if "D_in" in config:
        return (config["D_in"],)
    raise ValueError(f"cannot tell the input shape of {type(model).__name__} from its config ({config!r}); "
                     f"pass input_shape= (one sample's shape without the batch dimension, e.g. (1, 8, 8))")


def _check_input_shape(input_shape) -> tuple[int, ...]:
    """``input_shape`` as a tuple of Python ints, read by unidl's argument rule as the layers read sizes (a tuple or
    list, a 1-d NumPy array, a tensor's shape; NumPy integers taken, a bool or a float refused)."""
    shape = arguments.sequence(input_shape)
    shape = None if shape is None else tuple(arguments.integer(d) for d in shape)
    if not shape or not all(d is not None and d > 0 for d in shape):
        raise ValueError(f"input_shape must be a non-empty sequence of positive ints without the batch "
                         f"dimension (e.g. (1, 8, 8)), got {input_shape!r}")
    return shape


def _check_input_dtype(input_dtype) -> str | None:
    """``input_dtype`` as its NumPy name, or None for the model's own float dtype."""
    if input_dtype is None:
        return None
    name = input_dtype
    if not isinstance(name, str):
        import numpy as np

        try:
            name = np.dtype(input_dtype).name  # (a NumPy type: np.int64)
        except TypeError:
            name = dtype_name(input_dtype)  # a framework's: tf.int64, torch.int64
    if name not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {', '.join(INPUT_DTYPES)} (or None for the model's float "
                         f"dtype), got {input_dtype!r}")
    return name


def _check_one_input(model) -> None:
    """Refuse, before any tracing, a forward that needs more than the one input an exported program takes."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward Python cannot describe: let the trace tell
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty
                and p.kind in positional + (inspect.Parameter.KEYWORD_ONLY,)]
    keyword_only = [p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in required]
    takes_x = any(p.kind in positional + (inspect.Parameter.VAR_POSITIONAL,) for p in parameters)
    if len(required) > 1 or keyword_only or not takes_x:
        needs = (f"its required arguments are {', '.join(map(repr, required))}" if required
                 else "it takes no positional argument")
        raise ExportInputError(
            f"ud.export traces {type(model).__name__}.forward with one input, x, but {needs}: export a module "
            f"whose forward(x) needs one input (give the others defaults, or wrap the model in one that makes them)")


def _check_format(format, backend) -> None:
    supported = tuple(backend.export_formats())
    if format in supported:
        return
    valid = ", ".join(repr(f) for f in supported) or "none"
    if format in FORMATS:
        raise ExportFormatError(f"the {backend.name} backend cannot export format {format!r}; valid formats on "
                                f"{backend.name}: {valid} (unidl knows {', '.join(map(repr, FORMATS))})")
    raise ExportFormatError(f"unknown export format {format!r}; valid formats on {backend.name}: {valid}")


def _check_target(path: str, format: str, overwrite: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot export to {path!r}: directory {directory!r} does not exist")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True to replace it")
    writes_directory = format in DIRECTORY_FORMATS
    if writes_directory and not os.path.isdir(path):
        raise NotADirectoryError(f"cannot export {format} to {path!r}: it exists and is not a directory")
    if not writes_directory and os.path.isdir(path):
        raise IsADirectoryError(f"cannot export {format} to {path!r}: it is a directory, expected a file path")
    if writes_directory and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        # never delete a whole directory that is not an earlier export
        raise FileExistsError(f"{path!r} is a directory that holds no SavedModel; refusing to replace it "
                              f"even with overwrite=True")


def _moved_aside_path(path: str) -> str:
    """Where an earlier SavedModel directory waits while the new one is renamed into place. Not named as a
    temporary: should the process die between the two renames, it is the previous export, kept for the user."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{secrets.token_hex(6)}.old")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def _eval_mode(model):
    """Every module in eval mode for the trace, then each back in its own earlier mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        restore_modes(modes)


def export(model, path, format: str, input_shape=None, overwrite: bool = False, input_dtype=None) -> None:
    """Write ``model``'s forward, in eval mode, as an inference program that runs without unidl.

    Formats (each backend writes some; an unsupported one raises ``ExportFormatError`` listing them):

    - ``'saved_model'`` (tensorflow, keras; jax where TensorFlow is installed): a SavedModel directory;
      ``loaded = tf.saved_model.load(path)`` gives ``loaded.serve(x)`` and ``loaded.signatures['serving_default']``
      (keep ``loaded`` while they run: it owns the variables, and a call after it is gone fails, "Called a
      function referencing variables which have been deleted").
    - ``'torch_export'`` (torch): a ``.pt2`` file of ``torch.export``; ``torch.export.load(path).module()(x)``.
    - ``'onnx'`` (torch, jax): an ONNX file with input ``'x'`` and output ``'y'`` (several outputs: ``'y'``,
      ``'y_1'``, ``'y_2'``, ... in ``flat_outputs`` order, on every backend), the weights inside; needs
      ``pip install 'unidl[onnx]'`` (torch: onnx and onnxscript; jax: jax2onnx). A float64 model gives a
      ``tensor(double)`` program; onnxruntime's CPU provider has no float64 ``Conv`` kernel, so it runs such a
      program only where it holds no convolution.
    - ``'stablehlo'`` (jax): a serialized ``jax.export.Exported``, StableHLO with the weights inside, lowered for
      CPU and CUDA; ``jax.export.deserialize(bytearray(open(path, 'rb').read())).call(x)``. A program of int64 or
      float64 input (token ids, a float64 model) runs where the caller's JAX has 64-bit types on
      (``jax.config.update("jax_enable_x64", True)`` first, as unidl's jax backend does): JAX narrows 64-bit
      arrays to 32 bits otherwise, and the program refuses them ("Dtype mismatch for args[0]").

    Args:
        model: a ``unidl.nn.Module``; exported on its own backend, with its current weights.
        path: the file (or, for saved_model, directory) to create; its parent directory must exist.
        format: one of the formats above.
        input_shape: one sample's shape without the batch dimension, e.g. ``(1, 8, 8)`` (a list, a 1-d NumPy
            array or NumPy integers too); by default taken from ``model.config`` (CNN: in_channels and image_size;
            TwoLayerNet: D_in).
        overwrite: replace an existing ``path`` (otherwise ``FileExistsError``).
        input_dtype: the dtype of the program's input, one of ``INPUT_DTYPES`` (a name, or a NumPy or framework
            dtype); by default the model's float dtype. Models that take integers need theirs: token ids of
            ``LSTMClassifier`` or ``TransformerClassifier`` are ``input_dtype="int64"``.

    The program takes one input, ``x`` of shape ``(batch, *input_shape)`` in the canonical layout (NCHW) and
    ``input_dtype``, for any batch size (a forward that needs more inputs is refused with ``ExportInputError``),
    and returns the model's output. SavedModel and ONNX programs return a flat list of tensors: a nested output (an
    LSTM's ``(output, (h_n, c_n))``) comes flattened as ``flat_outputs`` does it, depth first, a dict's entries by
    sorted key; ``serve(x)`` returns that tuple, its signature names the tensors ``output_0``, ``output_1``, ...
    (TensorFlow's names), and ONNX ``y``, ``y_1``, .... The program is written under a temporary name, flushed to
    disk and renamed into place, so a failed or interrupted export leaves nothing behind under ``path`` (a
    temporary left by a killed process is removed by the next export or ``ud.save`` into that directory).

    Example::

        ud.export(model, "cnn.pt2", format="torch_export")      # under the torch backend
        program = torch.export.load("cnn.pt2").module()
        logits = program(torch.from_numpy(x))
    """
    from unidl.nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"ud.export expects a unidl.nn.Module, got {type(model).__name__}")
    backend = model._backend
    _check_format(format, backend)
    shape = _check_input_shape(default_input_shape(model) if input_shape is None else input_shape)
    dtype = _check_input_dtype(input_dtype)
    _check_one_input(model)
    path = os.fspath(path)
    if os.path.islink(path):  # the link's target gets the program and the link stays, as ud.save writes through one
        # (a SavedModel raised NotADirectoryError naming a temporary; a file replaced the link, its target kept the old)
        path = os.path.realpath(path)
    _check_target(path, format, overwrite)

    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(directory)
    # keep the extension: some writers (ONNX, .pt2) look at it
    with temporary_path(path, "" if format in DIRECTORY_FORMATS else os.path.splitext(path)[1]) as temporary:
        try:
            with _eval_mode(model), exporting():  # (a forward that writes a buffer: refused, see exporting)
                _run_exporter(backend, model, temporary, format, shape, dtype)
            if format == "onnx":
                _name_onnx_outputs(temporary)
            fsync_tree(temporary)
            _place(temporary, path)
        except BaseException:
            _remove(temporary)
            raise
    fsync_directory(directory)


def _run_exporter(backend, model, temporary, format, shape, dtype) -> None:
    """``backend.export``, an exporter's own "not implemented" (jax2onnx's conversion of max pooling with indices on
    jax) made an ``ExportFormatError`` naming the model, the format and the formats left."""
    from unidl.errors import UnidlError

    try:
        backend.export(model, temporary, format, shape, dtype)
    except NotImplementedError as error:
        if isinstance(error, UnidlError):
            raise
        others = ", ".join(repr(f) for f in backend.export_formats() if f != format) or "none"
        raise ExportFormatError(
            f"the {backend.name} backend's {format!r} exporter cannot convert {type(model).__name__}'s forward: "
            f"{type(error).__name__}: {error} (docs/guarantees.md lists such limits); other formats on "
            f"{backend.name}: {others}") from error


def _place(temporary: str, path: str) -> None:
    """Rename ``temporary`` to ``path``; an existing directory is moved aside first and removed after
    (a rename cannot replace a non-empty directory)."""
    if not os.path.isdir(path) or os.path.islink(path):
        os.replace(temporary, path)
        return
    old = _moved_aside_path(path)
    os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def _name_onnx_outputs(path: str) -> None:
    """Name the ONNX program's outputs ``y``, ``y_1``, ``y_2``, ... in place, whichever exporter wrote it.

    Exporters name outputs after their own nodes (torch: ``stack_1``) and may already use ``y_1`` for an inner
    value (jax2onnx names transposes ``y_0``, ``y_1``, ...), so inner values holding one of the names are renamed
    first, throughout the graph and its subgraphs (ONNX names are unique across them). An output that is also
    the input, or is given twice, gets its own ``Identity``."""
    import onnx

    model = onnx.load_model(path)
    graph = model.graph
    wanted = [ONNX_OUTPUT] + [f"{ONNX_OUTPUT}_{index}" for index in range(1, len(graph.output))]
    if [value.name for value in graph.output] == wanted:
        return
    # torch's exporter writes Identity(x -> x) for a forward that returns its input: no ONNX runtime loads it
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if node.op_type == "Identity" and list(node.input) == list(node.output):
            del graph.node[index]
    names = _value_names(graph)
    fresh = (f"unidl_{index}" for index in range(len(names) + len(wanted) + 1))
    free = [name for name in fresh if name not in names]
    rename_onnx_values(graph, {name: free.pop() for name in set(wanted) & names})
    pinned = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    renames = {}
    for value, name in zip(graph.output, wanted):
        if value.name in pinned or value.name in renames:
            graph.node.append(onnx.helper.make_node("Identity", [value.name], [name]))
        else:
            renames[value.name] = name
        value.name = name
    rename_onnx_values(graph, renames, skip=graph.output)
    onnx.checker.check_model(model)
    onnx.save_model(model, path)


def _value_names(graph) -> set[str]:
    names = {value.name for value in [*graph.input, *graph.output, *graph.value_info]}
    names |= {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names |= set(node.input) | set(node.output)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                names |= _value_names(subgraph)
    return names - {""}


def rename_onnx_values(graph, renames: dict, skip=()) -> None:
    """Rename values (old name -> new name) wherever ``graph`` and its subgraphs name them, in place; the graph
    inputs and outputs in ``skip`` keep their names."""
    if not renames:
        return
    skipped = {id(value) for value in skip}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if id(value) not in skipped and value.name in renames:
            value.name = renames[value.name]
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in graph.node:
        for names in (node.input, node.output):
            renamed = [renames.get(name, name) for name in names]
            del names[:]
            names.extend(renamed)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                rename_onnx_values(subgraph, renames)
