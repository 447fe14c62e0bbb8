"""``ud.ops.scan``'s argument checks, the same on every backend: ``xs`` of one length along the axis (at least 1),
and a body whose carry keeps its structure, shapes and dtypes and whose outputs hold no None (torch's loop, JAX's
``lax.scan`` and TensorFlow's ``while_loop`` each failed, or not, in their own way)."""

from __future__ import annotations

from unidl import nested
from unidl.dtype_kinds import dtype_name
from unidl.errors import DtypeMismatchError, ShapeMismatchError
from unidl.input_checks import all_of, holds, known_shape, literal, require, shape_template, sizes_of


def _paths_and_leaves(tree, path: str = ""):
    """``(path, leaf)`` for each leaf of a nested structure, depth first (``[0]['a']``: where a message points)."""
    if isinstance(tree, dict):
        return [pair for key in tree for pair in _paths_and_leaves(tree[key], f"{path}[{key!r}]")]
    if isinstance(tree, (tuple, list)):
        return [pair for index, part in enumerate(tree) for pair in _paths_and_leaves(part, f"{path}[{index}]")]
    return [(path, tree)]


def _structure(tree):
    """The containers of a nested structure (types, keys, lengths) without its leaves, to compare two by."""
    if isinstance(tree, dict):
        return (type(tree).__name__, tuple((key, _structure(tree[key])) for key in tree))
    if isinstance(tree, (tuple, list)):
        return (type(tree).__name__, tuple(_structure(part) for part in tree))
    return None


def check_scan_lengths(xs, axis: int):
    """``ud.ops.scan``'s ``xs``, after checking that every tensor leaf has the same size along ``axis``, at least 1:
    ``ShapeMismatchError`` naming the leaves otherwise, on every backend, at once where the sizes are known, else
    when a graph that leaves them unknown runs (a TensorFlow ``ud.function``; its ``while_loop`` ran the first
    leaf's length, torch indexed past the end, JAX returned ``init`` for length 0 and raised its own ``ValueError``
    for unequal sizes)."""
    paths, leaves = [], []
    for path, leaf in _paths_and_leaves(xs):
        if hasattr(leaf, "shape"):
            shape = known_shape(leaf.shape)
            if not -len(shape) <= axis < len(shape):
                raise AxisOutOfRangeError(f"scan axis {axis} is out of range for xs{path} of shape {shape}")
            paths.append(path)
            leaves.append(leaf)
    if not leaves:
        return xs
    known = [known_shape(leaf.shape)[axis] for leaf in leaves]
    if None not in known:
        if 0 in known:
            raise ShapeMismatchError(f"scan needs at least one slice of xs along axis {axis}, but "
                                     f"xs{paths[known.index(0)]} has none: skip the scan for empty input (its carry "
                                     f"is init, its ys empty)")
        if len(set(known)) > 1:
            listed = ", ".join(f"xs{path}: {length}" for path, length in zip(paths, known))
            raise ShapeMismatchError(f"scan slices every leaf of xs along axis {axis} together, so they need one "
                                     f"length there, at least 1; got {listed}")
        return xs
    sizes = [sizes_of(leaf)[axis] for leaf in leaves]
    condition = all_of([holds(sizes[0] > 0)] + [holds(size == sizes[0]) for size in sizes[1:]])
    listed = ", ".join(f"xs{literal(path)}: {{}}" for path in paths)
    checked = require(leaves[0], condition, lambda: f"scan slices every leaf of xs along axis {axis} together, so "
                      f"they need one length there, at least 1; got {listed}", tuple(sizes))
    return nested.tree_map(lambda leaf: checked if leaf is leaves[0] else leaf, xs)


def checked_scan_body(fn, init):
    """``ud.ops.scan``'s ``fn``, whose first call is checked (the body is traced once on tensorflow, jax and keras,
    and later calls of torch's loop take what the first gave): it returns ``(carry, y)``, the carry with ``init``'s
    structure and each tensor leaf's shape and dtype (sizes a graph leaves unknown are not compared), and no None
    among ``y``'s leaves. ``ShapeMismatchError``, ``DtypeMismatchError`` or ``TypeError`` naming the leaf, the
    expected and the found, on every backend (torch's loop took a growing carry, JAX raised its own TypeError)."""
    expected = [(path, known_shape(leaf.shape), dtype_name(leaf.dtype))
                for path, leaf in _paths_and_leaves(init) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")]
    checked = []

    def body(carry, x):
        result = fn(carry, x)
        if checked:
            return result
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(f"scan's fn must return a pair (new carry, y), got a {type(result).__name__}")
        new_carry, y = result
        if _structure(new_carry) != _structure(init):
            raise TypeError(f"scan's fn must return a carry of init's structure {_structure(init)}, got "
                            f"{_structure(new_carry)}")
        found, given = dict(_paths_and_leaves(new_carry)), dict(_paths_and_leaves(carry))
        replaced = {}
        for path, shape, dtype in expected:
            leaf = found[path]
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                raise TypeError(f"scan's fn returned a {type(leaf).__name__} for the carry{path}, a tensor of shape "
                                f"{shape} and dtype {dtype} in init")
            new_shape = known_shape(leaf.shape)
            if len(new_shape) != len(shape) or any(a is not None and b is not None and a != b
                                                    for a, b in zip(shape, new_shape)):
                raise ShapeMismatchError(f"scan's fn changed the shape of the carry{path}: {shape} in init, "
                                         f"{new_shape} returned; a carry keeps its shape at every step (stack "
                                         f"growing results in y instead)")
            if None in shape + new_shape:  # (a graph of unknown sizes: compared when it runs, at every step)
                before, after = sizes_of(given[path]), sizes_of(leaf)
                template = shape_template(len(shape))
                replaced[id(leaf)] = require(
                    leaf, all_of([holds(a == b) for a, b in zip(before, after)]),
                    lambda: f"scan's fn changed the shape of the carry{literal(path)}: {template} before a step, "
                            f"{template} after; a carry keeps its shape at every step (stack growing results in y "
                            f"instead)", before + after)
            if dtype_name(leaf.dtype) != dtype:
                raise DtypeMismatchError(f"scan's fn changed the dtype of the carry{path}: {dtype} in init, "
                                         f"{dtype_name(leaf.dtype)} returned; give init the carry's dtype or cast "
                                         f"it back (ud.ops.cast)")
        for path, leaf in _paths_and_leaves(y):
            if leaf is None:
                raise TypeError(f"scan's fn returned None for y{path}: every output is stacked over the steps, so "
                                f"return a tensor there (or leave that output out)")
        checked.append(True)
        if replaced:
            return nested.tree_map(lambda leaf: replaced.get(id(leaf), leaf), new_carry), y
        return result

    return body
