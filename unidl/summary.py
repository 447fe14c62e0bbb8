"""``ud.summary``: a model's layers, output shapes and parameter counts as one table, the same text on every backend.

The layout follows torchinfo (a tree of layers with a ``depth-index``, collapsed below ``depth``) with Keras's
totals (trainable and non-trainable parameters, buffers, each with its size in bytes).
"""

from __future__ import annotations

import numpy as np

from unidl import config
from unidl.nn.module import is_trainable, restore_modes

_HEADERS = ("Layer (type:depth-idx)", "Output Shape", "Param #", "Trainable")


def _count(variables) -> int:
    return sum(int(np.prod(tuple(v.shape), dtype=np.int64)) for v in variables)


def _bytes(backend, variables) -> int:
    return sum(int(np.prod(tuple(v.shape), dtype=np.int64)) * backend.to_numpy(v).dtype.itemsize for v in variables)


def readable_size(size: int) -> str:
    """``size`` bytes as Keras writes it: '0.00 B', '3.91 KB', '1.25 MB' (powers of 1024)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _shape_text(output) -> str:
    """'[1, 6, 24, 24]' for a tensor, a list of those for a tuple or list of outputs."""
    if isinstance(output, (tuple, list)):
        return "[" + ", ".join(_shape_text(item) for item in output) + "]"
    shape = getattr(output, "shape", None)
    return "--" if shape is None else "[" + ", ".join(str(int(d)) for d in tuple(shape)) + "]"


def _is_size(size) -> bool:
    return isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0


def input_shapes(input_shape) -> list[tuple]:
    """``input_shape`` as a list of one sample's shapes, one per positional input of the forward: one shape
    (``(1, 28, 28)``) is one input, a list or tuple of shapes (``[(10, 8), (7, 8)]``) several; anything else is a
    ``ValueError`` showing both forms."""
    if isinstance(input_shape, (tuple, list)):
        if all(_is_size(size) for size in input_shape):
            return [tuple(int(size) for size in input_shape)]
        if all(isinstance(shape, (tuple, list)) and all(_is_size(size) for size in shape) for shape in input_shape):
            return [tuple(int(size) for size in shape) for shape in input_shape]
    raise ValueError(f"summary input_shape must be one sample's shape without the batch dimension, a tuple of "
                     f"sizes >= 0 such as (1, 28, 28) or (784,), or one such shape per input of a forward that "
                     f"takes several, such as [(10, 8), (7, 8)]; got {input_shape!r}")


def input_dtypes(dtype, count: int) -> list:
    """``dtype`` as one dtype per input: None (unidl's float dtype) or one dtype for all, or a list or tuple of
    ``count`` dtypes; another length is a ``ValueError`` naming both counts."""
    if not isinstance(dtype, (tuple, list)):
        return [dtype or config.get_dtype()] * count
    if len(dtype) != count:
        raise ValueError(f"summary dtype must be one dtype, or one per input: {count} input shape(s) were given "
                         f"and {len(dtype)} dtypes {list(dtype)!r}")
    return [item or config.get_dtype() for item in dtype]


def output_shapes(model, input_shape, dtype=None) -> dict:
    """Output shape text of every module the forward of zeros of shape ``(1, *shape)`` (one per shape of
    ``input_shape``, in ``dtype``: see ``input_shapes`` and ``input_dtypes``) calls, keyed by ``id(module)``.
    Runs in eval mode and puts back the training mode, the random generators and every variable holder, so that
    nothing a training run depends on changes (the jax backend included)."""
    from unidl.random import get_rng_state, set_rng_state

    shapes_in = input_shapes(input_shape)
    dtypes = input_dtypes(dtype, len(shapes_in))
    backend = model._backend
    modules = model.modules()
    shapes = {}

    def recording(module, caller):
        def call(module_, args, kwargs):
            output = caller(module_, args, kwargs) if caller is not None else module_.forward(*args, **kwargs)
            shapes[id(module_)] = _shape_text(output)
            return output
        return call

    saved_callers = [(m, m.__dict__["_forward_caller"]) for m in modules]
    saved_holders = [(m, dict(m._parameters), dict(m._buffers)) for m in modules]
    training = [(m, m.training) for m in modules]
    rng = get_rng_state()
    try:
        for module, caller in saved_callers:
            object.__setattr__(module, "_forward_caller", recording(module, caller))
        model.eval()
        with config.use_backend(backend.name):
            model(*(backend.tensor(np.zeros((1, *shape), dtype=kind)) for shape, kind in zip(shapes_in, dtypes)))
    finally:
        for module, caller in saved_callers:
            object.__setattr__(module, "_forward_caller", caller)
        for module, parameters, buffers in saved_holders:
            for table, saved in ((module._parameters, parameters), (module._buffers, buffers)):
                for name, holder in saved.items():
                    if table.get(name) is not holder:
                        table[name] = holder
                        object.__setattr__(module, name, holder)
        restore_modes(training)
        set_rng_state(rng)
    return shapes


def _rows(model, depth: int, shapes: dict) -> list[tuple[str, str, str, str]]:
    """One row per module down to ``depth``: tree-drawn name with torchinfo's depth-index, output shape,
    parameter count (its own where its children are listed, its whole subtree where they are not, "(recursive)"
    where the same module was listed before: the rows add up to the total), trainable."""
    rows = []
    index_at_depth: dict[int, int] = {}
    listed: set[int] = set()  # a module listed again (one instance under two names) is torchinfo's "(recursive)"

    def trainable_text(parameters) -> str:
        if not parameters:
            return "--"
        flags = {is_trainable(p) for p in parameters}
        return "Partial" if len(flags) > 1 else str(flags.pop())

    def visit(module, name, level, prefix, last):
        children = [(name, child) for name, child in module._modules.items() if child is not None]
        again = id(module) in listed
        listed.add(id(module))
        expanded = level < depth and bool(children) and not again
        subtree = module.parameters()
        counted = [p for p in module._parameters.values() if p is not None] if expanded else subtree
        count = _count(counted)
        if level == 0:
            label = type(module).__name__
        else:
            index_at_depth[level] = index_at_depth.get(level, 0) + 1
            label = f"{prefix}{'└─' if last else '├─'}{name} ({type(module).__name__}): {level}-{index_at_depth[level]}"
        count_text = "(recursive)" if again and count else f"{count:,}" if count else "--"
        rows.append((label, shapes.get(id(module), "--"), count_text, trainable_text(subtree)))
        if expanded:
            below = "" if level == 0 else prefix + ("     " if last else "│    ")
            for position, (child_name, child) in enumerate(children):
                visit(child, child_name, level + 1, below, position == len(children) - 1)

    visit(model, "", 0, "", True)
    return rows


def summary(model, input_shape=None, depth: int = 3, dtype=None) -> str:
    """A table of ``model``'s layers and its parameter totals, as text (also what ``print`` should show).

    Args:
        model: a ``ud.nn.Module``.
        input_shape: one sample's shape without the batch dimension (``(1, 28, 28)``), or a list of such shapes,
            one per positional input of a forward that takes several (``[(10, 8), (7, 8)]`` for a
            ``Transformer``'s source and target, as torchinfo's ``input_size``); when given, the "Output Shape"
            column is filled from one eval-mode forward of zeros of shape ``(1, *shape)`` per input that changes
            no state (training mode, random generators and variables are as they were); anything else is a
            ``ValueError``.
        depth: how many levels of sub-modules to list (torchinfo's ``depth``); a module at the last level
            shows the parameters of its whole subtree.
        dtype: the dtype of the zeros (unidl's float dtype by default; ``"int64"`` for token ids), one for every
            input or a list of one per input shape.

    The totals: parameters (all, trainable, non-trainable: frozen by the framework), buffers (BatchNorm's
    running statistics) and parameters plus buffers, each with its size in bytes. The text is identical on
    every backend for the same model.

    Example::

        print(ud.summary(ud.models.CNN(1, 10, 8), input_shape=(1, 8, 8)))
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"summary depth must be a non-negative integer, got {depth!r}")
    if input_shape is not None:
        input_dtypes(dtype, len(input_shapes(input_shape)))  # bad input is refused before any forward
    shapes = output_shapes(model, input_shape, dtype) if input_shape is not None else {}
    rows = [_HEADERS] + _rows(model, depth, shapes)
    widths = [max(len(row[column]) for row in rows) + 4 for column in range(len(_HEADERS) - 1)]
    width = sum(widths) + max(len(row[-1]) for row in rows)

    def line(row):
        return ("".join(text.ljust(w) for text, w in zip(row, widths)) + row[-1]).rstrip()

    backend = model._backend
    parameters = model.parameters()
    trainable = [p for p in parameters if is_trainable(p)]
    frozen = [p for p in parameters if not is_trainable(p)]
    buffers = [b for _, b in model.named_buffers()]
    totals = [
        ("Total params", parameters),
        ("Trainable params", trainable),
        ("Non-trainable params", frozen),
        ("Buffers", buffers),
        ("Params and buffers", parameters + buffers),
    ]
    rule = "=" * width
    text = [rule, line(rows[0]), rule, *(line(row) for row in rows[1:]), rule]
    text += [f"{name}: {_count(items):,} ({readable_size(_bytes(backend, items))})" for name, items in totals]
    text.append(rule)
    return "\n".join(text)
