"""TensorFlow's fused matmul or convolution + bias + ReLU kernels, which give 0 for NaN on some CPUs.

Grappler's remapper fuses ``MatMul``/``Conv2D`` + ``BiasAdd`` + ``Relu`` (and ``Relu6``) into one kernel. On a Xeon
with AVX-512 FP16 and AMX (TensorFlow 2.21, oneDNN's fused kernels) that kernel's ReLU maps NaN to 0, where ReLU
(TensorFlow's own unfused op, and torch's) keeps it: a NaN batch then gave a finite loss in a graph, and the
non-finite guard let the step through. Other CPUs keep NaN, and the fusion is worth about 15% of a small CNN's
step, so it is checked there, once, and turned off only where it drops NaN.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf


@functools.cache
def check_fused_relu() -> bool:
    """Run a fused matmul + bias + ReLU and a fused convolution + bias + ReLU on a NaN once (before unidl's first
    graph is made, on the CPU and on the first GPU if there is one); where any gives anything but NaN, turn
    grappler's remapper off for the process (``tf.config.optimizer.set_experimental_options``), so that graphs made
    afterwards keep NaN as ReLU does. Returns whether the fused kernels kept NaN. Run outside any graph being
    traced (``tf.init_scope``): the first caller may be inside one (a ``ud.function`` in a traced forward)."""
    with tf.init_scope():
        devices = ["/CPU:0"] + (["/GPU:0"] if tf.config.list_logical_devices("GPU") else [])
        kept = all(_kept_nan(device) for device in devices)
        if not kept:
            tf.config.optimizer.set_experimental_options({"remapping": False})
    return kept


def _kept_nan(device: str) -> bool:
    with tf.device(device):
        weight, bias = tf.ones((2, 2)), tf.zeros((2,))
        kernel = tf.ones((1, 1, 2, 2))

        @tf.function(autograph=False)
        def fused(x, image):
            return (tf.nn.relu(tf.nn.bias_add(tf.matmul(x, weight), bias)),
                    tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(image, kernel, 1, "VALID"), bias)))

        x = np.array([[np.nan, 1.0]], np.float32)
        outputs = fused(tf.constant(x), tf.constant(x.reshape(1, 1, 1, 2)))
    return all(bool(np.isnan(output.numpy()).all()) for output in outputs)
