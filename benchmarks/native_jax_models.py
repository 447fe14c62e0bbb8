"""unidl's train step on jax for the workload models (ResNet-18 with the CIFAR stem, the transformer classifier)
against the same models hand-written in pure JAX, as a JAX user writes them: functions of a dict of arrays
(``jax.lax.conv_general_dilated`` channels-last, ``jax.numpy`` attention and norms), one ``jax.jit`` step with
``jax.value_and_grad`` and ``optax.sgd`` (PyTorch's heavy-ball momentum), parameters, BatchNorm statistics and
optimizer state donated. The native model starts from the unidl model's ``state_dict()``, so the first step's
losses agree (``loss_diff``).
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.harness import LR, MOMENTUM
from benchmarks.native_models import TRANSFORMER, unidl_workload, workload_batch

#: XLA's CPU convolutions are channels-last (NCHW activations are transposed for them: the same step written NCHW
#: measured 1.03-1.09x slower), so the native ResNet takes NHWC images and HWIO kernels, as Flax's do
LAYOUT = ("NHWC", "HWIO", "NHWC")
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
BN_MOMENTUM, EPS = 0.1, 1e-5


def _native_layout(value: np.ndarray) -> np.ndarray:
    """PyTorch's array -> the native model's: OIHW kernels as HWIO. Linear weights stay ``(out, in)``, multiplied
    as ``x @ weight.T``: XLA's CPU backend ran the transformer's step 1.1-1.2x faster so than with ``(in, out)``
    weights and ``x @ weight``."""
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def split_state(state: dict):
    """``(params, buffers)``: a ``state_dict()``'s trainable arrays in the native layout (``_native_layout``) and
    its BatchNorm statistics and counters, as JAX arrays."""
    import jax.numpy as jnp

    params = {k: jnp.asarray(np.ascontiguousarray(_native_layout(v))) for k, v in state.items()
              if not k.endswith(BUFFERS)}
    buffers = {k: jnp.asarray(v) for k, v in state.items() if k.endswith(BUFFERS)}
    return params, buffers


# ---- the models: (params, buffers, x) -> (logits, new buffers) -------------------------------------------------

def _resnet_forward(params: dict, buffers: dict, x):
    """torchvision's ResNet of basic blocks (the stages and blocks read from the parameter names) on NHWC images,
    BatchNorm in training mode: the batch's mean and biased variance, running statistics updated with PyTorch's
    momentum and unbiased variance, ``num_batches_tracked`` counted."""
    import jax
    import jax.numpy as jnp

    new_buffers = {}

    def conv(h, name, stride):
        kernel = params[f"{name}.weight"]
        pad = kernel.shape[0] // 2
        return jax.lax.conv_general_dilated(h, kernel, (stride, stride), [(pad, pad), (pad, pad)],
                                            dimension_numbers=LAYOUT)

    def batch_norm(h, name):
        mean = jnp.mean(h, (0, 1, 2))
        variance = jnp.mean(jnp.square(h - mean), (0, 1, 2))
        count = h.shape[0] * h.shape[1] * h.shape[2]
        new_buffers[f"{name}.running_mean"] = ((1 - BN_MOMENTUM) * buffers[f"{name}.running_mean"]
                                               + BN_MOMENTUM * jax.lax.stop_gradient(mean))
        new_buffers[f"{name}.running_var"] = ((1 - BN_MOMENTUM) * buffers[f"{name}.running_var"]
                                              + BN_MOMENTUM * jax.lax.stop_gradient(variance) * (count / (count - 1)))
        new_buffers[f"{name}.num_batches_tracked"] = buffers[f"{name}.num_batches_tracked"] + 1
        scale = jax.lax.rsqrt(variance + EPS) * params[f"{name}.weight"]
        return (h - mean) * scale + params[f"{name}.bias"]

    stem = params["conv1.weight"].shape[0]
    x = jax.nn.relu(batch_norm(conv(x, "conv1", 1 if stem == 3 else 2), "bn1"))
    if stem != 3:  # the ImageNet stem's 3x3 stride-2 max-pool
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                  [(0, 0), (1, 1), (1, 1), (0, 0)])
    stage = 1
    while f"layer{stage}.0.conv1.weight" in params:
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in params:
            name = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = jax.nn.relu(batch_norm(conv(x, f"{name}.conv1", stride), f"{name}.bn1"))
            out = batch_norm(conv(out, f"{name}.conv2", 1), f"{name}.bn2")
            if f"{name}.downsample.0.weight" in params:
                x = batch_norm(conv(x, f"{name}.downsample.0", stride), f"{name}.downsample.1")
            x = jax.nn.relu(out + x)
            block += 1
        stage += 1
    return jnp.mean(x, (1, 2)) @ params["fc.weight"].T + params["fc.bias"], new_buffers


def _transformer_forward(params: dict, buffers: dict, tokens, nhead: int = TRANSFORMER["nhead"]):
    """Token + position embeddings, pre-norm encoder layers (self-attention with the padding (token 0) masked out
    of the keys, ReLU feed-forward), the final LayerNorm, the mean over real tokens, the head."""
    import jax
    import jax.numpy as jnp

    def layer_norm(h, name):
        centred = h - jnp.mean(h, -1, keepdims=True)
        normed = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), -1, keepdims=True) + EPS)
        return normed * params[f"{name}.weight"] + params[f"{name}.bias"]

    def dense(h, name):
        return h @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    batch, length = tokens.shape
    keep = tokens != 0
    x = jnp.take(params["token_embedding.weight"], tokens, axis=0) + params["position_embedding.weight"][:length]
    d_model = x.shape[-1]
    head_size = d_model // nhead
    attend = keep[:, None, None, :]  # (batch, head, query, key)
    index = 0
    while f"encoder.layers.{index}.norm1.weight" in params:
        name = f"encoder.layers.{index}"
        h = layer_norm(x, f"{name}.norm1")
        weight, bias = params[f"{name}.self_attn.in_proj_weight"], params[f"{name}.self_attn.in_proj_bias"]
        # the query, key and value projections (in_proj's thirds) as three products, as Flax's attention has them,
        # each as (batch, head, length, head size) for batched matmuls: on XLA's CPU backend 1.07x faster a step
        # than one packed product, and 1.1x faster than the same attention as einsums over (batch, length, head,
        # head size) or jax.nn.dot_product_attention
        q, k, v = ((h @ weight[part * d_model:(part + 1) * d_model].T + bias[part * d_model:(part + 1) * d_model])
                   .reshape(batch, length, nhead, head_size).transpose(0, 2, 1, 3) for part in range(3))
        scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(head_size)
        weights = jax.nn.softmax(jnp.where(attend, scores, -jnp.inf), axis=-1)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, d_model)
        x = x + dense(attended, f"{name}.self_attn.out_proj")
        x = x + dense(jax.nn.relu(dense(layer_norm(x, f"{name}.norm2"), f"{name}.linear1")), f"{name}.linear2")
        index += 1
    x = layer_norm(x, "encoder.norm")
    mask = keep[:, :, None].astype(x.dtype)
    return dense(jnp.sum(x * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0), "head"), buffers


def jax_workload_forward(workload: str, nhead: int = TRANSFORMER["nhead"]):
    """``forward(params, buffers, x) -> (logits, new buffers)`` of ``workload`` (in training mode)."""
    if workload == "resnet18":
        return _resnet_forward
    return lambda params, buffers, tokens: _transformer_forward(params, buffers, tokens, nhead)


def jax_workload_step(workload: str, state: dict, nhead: int = TRANSFORMER["nhead"]):
    """``(step, params, buffers, opt_state)``: ``step(params, buffers, opt_state, x, y) -> (params, buffers,
    opt_state, loss)``, one jitted SGD-with-momentum step (cross-entropy) that donates the first three. The
    padding row of the token embedding gets no gradient (``torch.nn.Embedding(padding_idx=0)``)."""
    import jax
    import jax.numpy as jnp
    import optax

    forward = jax_workload_forward(workload, nhead)
    params, buffers = split_state(state)
    transform = optax.sgd(LR, momentum=MOMENTUM)

    def loss_of(p, b, x, y):
        logits, new_buffers = forward(p, b, x)
        loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
        return loss, new_buffers

    def step(p, b, opt_state, x, y):
        (loss, new_buffers), grads = jax.value_and_grad(loss_of, has_aux=True)(p, b, x, y)
        if "token_embedding.weight" in grads:
            grads["token_embedding.weight"] = grads["token_embedding.weight"].at[0].set(0.0)
        updates, opt_state = transform.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), new_buffers, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2)), params, buffers, transform.init(params)


def native_input(workload: str, x: np.ndarray) -> np.ndarray:
    """The batch as the native model takes it: NHWC images, token ids as they are."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if workload == "resnet18" else x


def jax_workload_steps(workload: str, batch_size: int, device: str):
    """``(unidl_step, native_step, loss_diff)`` of ``workload`` on jax: ``ud.train_step`` on the NCHW batch, the
    hand-written step (``jax_workload_step``) on the same batch channels-last (prepared outside the timing, as the
    TensorFlow rows' is), on the device unidl placed its batch on."""
    import jax
    import unidl as ud

    module, loss_fn, optimizer = unidl_workload(workload)
    step = ud.train_step(module, loss_fn, optimizer)
    x_np, y_np = workload_batch(workload, batch_size)
    x, y = ud.tensor(x_np), ud.tensor(y_np)
    native, params, buffers, opt_state = jax_workload_step(workload, module.state_dict())
    placed = next(iter(x.devices()))
    box = jax.device_put({"params": params, "buffers": buffers, "state": opt_state}, placed)
    x_native, y_native = jax.device_put((native_input(workload, x_np), y_np), placed)

    def unidl_step():
        return jax.block_until_ready(step(x, y))

    def native_step():
        box["params"], box["buffers"], box["state"], loss = native(box["params"], box["buffers"], box["state"],
                                                                   x_native, y_native)
        return jax.block_until_ready(loss)

    return unidl_step, native_step, abs(float(unidl_step()) - float(native_step()))
