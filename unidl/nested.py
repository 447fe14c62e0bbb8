"""Nested structures of tuples, lists and dicts (a forward's outputs, ``scan``'s carries), walked in plain Python
so that any backend, and the front end, maps a function over their leaves the same way."""

from __future__ import annotations


def tree_map(fn, *trees):
    """``fn`` over the leaves of equally nested tuples, lists and dicts (a NamedTuple rebuilt field by field)."""
    first = trees[0]
    if isinstance(first, dict):
        return {key: tree_map(fn, *(t[key] for t in trees)) for key in first}
    if isinstance(first, (tuple, list)):
        parts = [tree_map(fn, *parts) for parts in zip(*trees)]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)  # (a NamedTuple by field)
    return fn(*trees)


def tree_leaves(tree) -> list:
    """The leaves of a nested structure, depth first, in order."""
    if isinstance(tree, dict):
        return [leaf for key in tree for leaf in tree_leaves(tree[key])]
    if isinstance(tree, (tuple, list)):
        return [leaf for part in tree for leaf in tree_leaves(part)]
    return [tree]
