"""Gradient clipping, written once with a backend's ``ops``: what every optimizer does to its gradients
before its update rule (``Optimizer(clip_grad_norm=..., clip_grad_value=..., clip_per_tensor=...)``).

Backends call ``clip_gradients`` inside their compiled steps (TensorFlow and Keras graphs, JAX's jit), so
clipping costs no extra dispatch. The torch backend runs ``torch.nn.utils``' own functions for the same
rules on the gradients ``backward()`` stored (its fast path); the parity tests check both against
``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``.
"""

from __future__ import annotations

import math

from unidl import arguments
from unidl.backends.op_registry import optional_op

#: PyTorch's ``clip_grad_norm_`` adds this to the total norm before dividing (``max_norm / (norm + 1e-6)``)
NORM_EPSILON = 1e-6


def check_clipping(owner: str, clip_grad_norm, clip_grad_value, clip_per_tensor) -> dict:
    """The clipping options as a dict, or ``ValueError`` naming the bad one and what is valid."""
    for name, value in (("clip_grad_norm", clip_grad_norm), ("clip_grad_value", clip_grad_value)):
        if value is None:
            continue
        number = arguments.real(value)  # a NumPy scalar or 0-d array too, as every other hyperparameter
        if number is None or math.isnan(number) or not number > 0:
            raise ValueError(f"{owner} {name} must be a positive number (or None for no clipping), got {value!r}")
    if not isinstance(clip_per_tensor, bool):
        raise ValueError(f"{owner} clip_per_tensor must be True or False, got {clip_per_tensor!r}")
    if clip_per_tensor and clip_grad_norm is None:
        raise ValueError(f"{owner} clip_per_tensor=True needs clip_grad_norm (the norm each tensor is clipped to)")
    # an infinite bound clips nothing (PyTorch's max_norm=inf: measure, do not clip): no clipping at all, where
    # the per-tensor rule g * inf / max(|g|, inf) made every weight NaN after the non-finite guard had run
    return {"clip_grad_norm": _bound(clip_grad_norm), "clip_grad_value": _bound(clip_grad_value),
            "clip_per_tensor": clip_per_tensor}


def _bound(value) -> float | None:
    number = None if value is None else arguments.real(value)
    return None if number is None or math.isinf(number) else number


def _norm(g, ops):
    return ops.sqrt(ops.sum(ops.square(g)))


def clip_gradients(grads: list, options: dict, ops) -> list:
    r"""``grads`` (None for a parameter without a gradient) clipped as ``options`` say, in this order:

    * ``clip_grad_value`` v: every element clamped to [-v, v] (``torch.nn.utils.clip_grad_value_``);
    * ``clip_grad_norm`` c, global (PyTorch's ``clip_grad_norm_``): with :math:`n = \|(\|g_1\|, ..., \|g_k\|)\|_2`,
      every gradient times :math:`\min(1, c / (n + 10^{-6}))`;
    * ``clip_grad_norm`` c with ``clip_per_tensor`` (Keras's ``clipnorm``): each gradient on its own,
      :math:`g \cdot c / \max(\|g\|, c)`.
    """
    max_norm, max_value = options["clip_grad_norm"], options["clip_grad_value"]
    if max_value is not None:
        grads = [None if g is None else ops.clip(g, -max_value, max_value) for g in grads]
    if max_norm is None:
        return grads
    if options["clip_per_tensor"]:
        maximum = optional_op(ops, "framework_maximum") or ops.maximum  # no gradient through clipping
        return [None if g is None else g * (max_norm / maximum(_norm(g, ops), ops.cast_like(max_norm, g)))
                for g in grads]
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    total = ops.sqrt(ops.sum(ops.stack([ops.cast_like(ops.sum(ops.square(g)), present[0]) for g in present])))
    coefficient = ops.clip(max_norm / (total + NORM_EPSILON), maximum=1.0)
    return [None if g is None else g * ops.cast_like(coefficient, g) for g in grads]
