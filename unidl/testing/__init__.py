"""Tools for testing models on every backend: a pytest fixture and helpers to compare tensors."""

from unidl.testing.compare import max_relative_difference

__all__ = ["max_relative_difference"]
