"""unidl's train step for the workload models, ResNet-18 (CIFAR stem, 32x32 images) and the transformer
classifier (sequence 64, d_model 128, 2 pre-norm layers, 4 heads), against the same models and SGD step
hand-written in plain PyTorch (``torch.nn``) and in a TensorFlow ``tf.function`` (channels-last, GradientTape).

The native models start from the unidl model's weights (PyTorch's through ``load_state_dict(strict=True)``,
BatchNorm's ``num_batches_tracked`` included), so the first step's losses agree (``loss_diff``).
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.harness import LR, MOMENTUM, PARITY_TARGET, Row, Settings, alternate, ms

WORKLOADS = ("resnet18", "transformer")
IMAGE = (3, 32, 32)
TRANSFORMER = dict(vocab_size=1000, num_classes=4, d_model=128, nhead=4, num_layers=2, dim_feedforward=256,
                   max_len=64, dropout=0.0)
SEQUENCE = 64


def workload_batch(workload: str, batch: int, seed: int = 0):
    """NumPy ``(x, y)``: NCHW images and labels, or right-padded token ids (0 = padding, lengths 16..64)."""
    rng = np.random.default_rng(seed)
    if workload == "resnet18":
        return rng.standard_normal((batch,) + IMAGE, dtype=np.float32), rng.integers(0, 10, batch).astype(np.int64)
    tokens = rng.integers(1, TRANSFORMER["vocab_size"], (batch, SEQUENCE)).astype(np.int64)
    lengths = rng.integers(16, SEQUENCE + 1, batch)
    tokens[np.arange(SEQUENCE)[None, :] >= lengths[:, None]] = 0
    return tokens, rng.integers(0, TRANSFORMER["num_classes"], batch).astype(np.int64)


def _blocks(settings: Settings) -> int:
    return max(2, settings.model_steps // 4)  # alternations of a few steps each: these steps are long


def unidl_workload(workload: str):
    """``(module, loss, optimizer)`` under the backend in force, seeded."""
    import unidl as ud

    ud.manual_seed(0)
    if workload == "resnet18":
        module = ud.models.resnet18(num_classes=10, cifar_stem=True)
    else:
        module = ud.models.TransformerClassifier(**TRANSFORMER)
    return module, ud.nn.CrossEntropyLoss(), ud.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)


# ---- plain PyTorch -------------------------------------------------------------------------------------

def torch_resnet(layers=(2, 2, 2, 2), num_classes: int = 1000, cifar_stem: bool = False):
    """A ResNet of basic blocks written with ``torch.nn`` under torchvision's module names (torchvision itself is
    not installed beside this torch): ``layers`` blocks a stage; ``cifar_stem``, a 3x3 stride-1 ``conv1`` and no
    max-pool. The oracle of unidl's ResNet in the tests, and the native side of the ResNet-18 benchmark."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (self.downsample(x) if self.downsample is not None else x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False) if cifar_stem else nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
                stage = [BasicBlock(inplanes, planes, 1 if index == 0 else 2)]
                stage += [BasicBlock(planes, planes, 1) for _ in range(1, blocks)]
                setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
                inplanes = planes
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def torch_workload(workload: str, state: dict):
    """The same model written with ``torch.nn`` (torchvision's ResNet names), holding ``state``."""
    import torch
    from torch import nn

    class TransformerClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            d_model = TRANSFORMER["d_model"]
            self.token_embedding = nn.Embedding(TRANSFORMER["vocab_size"], d_model, padding_idx=0)
            self.position_embedding = nn.Embedding(TRANSFORMER["max_len"], d_model)
            layer = nn.TransformerEncoderLayer(d_model, TRANSFORMER["nhead"], TRANSFORMER["dim_feedforward"], 0.0,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, TRANSFORMER["num_layers"], norm=nn.LayerNorm(d_model),
                                                 enable_nested_tensor=False)
            self.head = nn.Linear(d_model, TRANSFORMER["num_classes"])

        def forward(self, tokens):
            padding = tokens == 0
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            x = self.token_embedding(tokens) + self.position_embedding(positions)
            x = self.encoder(x, src_key_padding_mask=padding)
            keep = (~padding).unsqueeze(2).to(x.dtype)
            return self.head((x * keep).sum(1) / keep.sum(1).clamp(min=1.0))

    native = torch_resnet((2, 2, 2, 2), 10, cifar_stem=True) if workload == "resnet18" else TransformerClassifier()
    native.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()})
    return native


def torch_workload_steps(workload: str, batch_size: int, device: str):
    """``(unidl_step, native_step, loss_diff)`` of ``workload`` on torch (see ``native_torch.torch_step_pair``)."""
    import torch
    import unidl as ud

    from benchmarks.native_torch import torch_step_pair

    module, loss_fn, optimizer = unidl_workload(workload)
    step = ud.train_step(module, loss_fn, optimizer)
    native = torch_workload(workload, module.state_dict()).to(torch.device(device))
    x, y = (torch.from_numpy(a).to(torch.device(device)) for a in workload_batch(workload, batch_size))
    return torch_step_pair(step, native, torch.nn.CrossEntropyLoss(), x, y, device)


# ---- TensorFlow tf.function ------------------------------------------------------------------------------

def tf_workload_step(workload: str, state: dict):
    """One SGD-with-momentum training step of the model, hand-written as TensorFlow users write it: channels-last
    tensors, ``tf.Variable`` weights, a ``tf.function`` with a GradientTape and in-graph updates."""
    import tensorflow as tf

    trainable, buffers = {}, {}
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            buffers[key] = tf.Variable(value.astype(np.float32) if value.dtype.kind == "f" else value, trainable=False)
        elif value.ndim == 4:
            trainable[key] = tf.Variable(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        elif value.ndim == 2 and not key.endswith("embedding.weight") and "in_proj" not in key:
            trainable[key] = tf.Variable(value.T)  # (out, in) -> (in, out)
        else:
            trainable[key] = tf.Variable(value)
    params = list(trainable.values())
    velocities = [tf.Variable(tf.zeros_like(p)) for p in params]

    def batch_norm(x, name):
        mean, variance = tf.nn.moments(x, [0, 1, 2])
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
        for buffer, value in ((buffers[f"{name}.running_mean"], mean),
                              (buffers[f"{name}.running_var"], variance * count / (count - 1))):
            buffer.assign(0.9 * buffer + 0.1 * value)
        return tf.nn.batch_normalization(x, mean, variance, trainable[f"{name}.bias"], trainable[f"{name}.weight"],
                                         1e-5)

    def conv(x, name, stride):
        # PyTorch's padding=1 on both sides of a 3x3 kernel: "SAME" at stride 1; at stride 2 "SAME" would pad 0 and
        # 1, so the input is padded first, as a TensorFlow user writes it (conv2d's explicit-padding CPU kernel is
        # several times slower than "VALID"/"SAME")
        if trainable[name].shape[0] == 3 and stride == 1:
            return tf.nn.conv2d(x, trainable[name], 1, "SAME")
        if trainable[name].shape[0] == 3:
            x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return tf.nn.conv2d(x, trainable[name], stride, "VALID")

    def resnet(x):
        x = tf.nn.relu(batch_norm(conv(x, "conv1.weight", 1), "bn1"))
        for stage in range(1, 5):
            for block in range(2):
                name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
                out = tf.nn.relu(batch_norm(conv(x, f"{name}.conv1.weight", stride), f"{name}.bn1"))
                out = batch_norm(conv(out, f"{name}.conv2.weight", 1), f"{name}.bn2")
                if f"{name}.downsample.0.weight" in trainable:
                    x = batch_norm(conv(x, f"{name}.downsample.0.weight", stride), f"{name}.downsample.1")
                x = tf.nn.relu(out + x)
        return tf.matmul(tf.reduce_mean(x, [1, 2]), trainable["fc.weight"]) + trainable["fc.bias"]

    def layer_norm(x, name):
        mean, variance = tf.nn.moments(x, [-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + 1e-5) * trainable[f"{name}.weight"] + trainable[f"{name}.bias"]

    def dense(x, name):
        return tf.matmul(x, trainable[f"{name}.weight"]) + trainable[f"{name}.bias"]

    def transformer(tokens):
        d_model, heads = TRANSFORMER["d_model"], TRANSFORMER["nhead"]
        batch, length = tf.shape(tokens)[0], tf.shape(tokens)[1]
        padding = tf.equal(tokens, 0)
        x = tf.gather(trainable["token_embedding.weight"], tokens) + trainable["position_embedding.weight"][:length]
        blocked = tf.where(padding, -np.inf, 0.0)[:, None, None, :]

        def split(t):
            return tf.transpose(tf.reshape(t, (batch, length, heads, d_model // heads)), (0, 2, 1, 3))

        for index in range(TRANSFORMER["num_layers"]):
            name = f"encoder.layers.{index}"
            h = layer_norm(x, f"{name}.norm1")
            qkv = tf.matmul(h, trainable[f"{name}.self_attn.in_proj_weight"], transpose_b=True)
            q, k, v = (split(t) for t in tf.split(qkv + trainable[f"{name}.self_attn.in_proj_bias"], 3, -1))
            scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(d_model // heads) + blocked
            attended = tf.reshape(tf.transpose(tf.matmul(tf.nn.softmax(scores), v), (0, 2, 1, 3)),
                                  (batch, length, d_model))
            x = x + dense(attended, f"{name}.self_attn.out_proj")
            h = layer_norm(x, f"{name}.norm2")
            x = x + dense(tf.nn.relu(dense(h, f"{name}.linear1")), f"{name}.linear2")
        x = layer_norm(x, "encoder.norm")
        keep = tf.cast(~padding, x.dtype)[:, :, None]
        return dense(tf.reduce_sum(x * keep, 1) / tf.maximum(tf.reduce_sum(keep, 1), 1.0), "head")

    forward = resnet if workload == "resnet18" else transformer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=forward(x)))
        for param, grad, velocity in zip(params, tape.gradient(loss, params), velocities):
            if isinstance(grad, tf.IndexedSlices):
                grad = tf.convert_to_tensor(grad)
            velocity.assign(MOMENTUM * velocity + grad)
            param.assign_sub(LR * velocity)
        return loss

    return step


def tf_workload_steps(workload: str, batch_size: int, device: str):
    """``(unidl_step, native_step, loss_diff)`` of ``workload`` on tensorflow: unidl's step on the NCHW batch, the
    hand-written one (``tf_workload_step``) on the same batch channels-last."""
    import tensorflow as tf
    import unidl as ud
    from unidl.backends.tensorflow.backend import tf_device_name

    module, loss_fn, optimizer = unidl_workload(workload)
    step = ud.train_step(module, loss_fn, optimizer)
    x_np, y_np = workload_batch(workload, batch_size)
    with tf.device(tf_device_name(device)):
        native = tf_workload_step(workload, module.state_dict())
        x, y = tf.constant(x_np), tf.constant(y_np)
        x_native = tf.constant(x_np.transpose(0, 2, 3, 1)) if workload == "resnet18" else x

    def unidl_step():
        return step(x, y).numpy()

    def native_step():
        return native(x_native, y).numpy()

    return unidl_step, native_step, abs(float(unidl_step()) - float(native_step()))


def _workload_rows(backend: str, native: str, steps_of, settings: Settings, device: str) -> list[Row]:
    """A "train step, <backend>" row for each workload, timed from ``steps_of(workload, batch size, device)``."""
    import unidl as ud

    rows = []
    for workload in WORKLOADS:
        with ud.use_backend(backend), ud.use_device(device):
            unidl_step, native_step, diff = steps_of(workload, settings.model_batch, device)
            a, b = timing = alternate(unidl_step, native_step, settings.model_steps, settings.warmup,
                                      _blocks(settings))
        rows.append(Row(f"train step, {backend}", workload, "ud.train_step", native, ms(a), ms(b),
                        f"<= {PARITY_TARGET}", note=f"batch {settings.model_batch}", loss_diff=diff,
                        spread=timing.spread))
    return rows


def bench_workloads(settings: Settings, device: str, with_tf: bool = True, with_jax: bool = False) -> list[Row]:
    """The workload rows: torch, then tensorflow where it runs on ``device``, then jax where it is installed
    (``benchmarks.native_jax_models``)."""
    rows = _workload_rows("torch", "torch.nn + torch.optim.SGD", torch_workload_steps, settings, device)
    if with_tf:
        rows += _workload_rows("tensorflow", "tf.function + GradientTape", tf_workload_steps, settings, device)
    if with_jax:
        from benchmarks.native_jax_models import jax_workload_steps  # (it imports this module)

        rows += _workload_rows("jax", "jax.jit + optax.sgd", jax_workload_steps, settings, device)
    return rows


# ---- Keras 3 -------------------------------------------------------------------------------------------------

def keras_workload_model(workload: str, state: dict):
    """The same model written as a plain Keras 3 user writes it (``keras.layers``, channels-last), holding
    ``state`` and compiled with Keras's SGD and sparse cross-entropy, as the two-layer and CNN peers are.

    ResNet-18 is a functional model over NHWC images; its stride-2 3x3 convolutions pad one pixel on each side
    (``ZeroPadding2D`` then "valid", PyTorch's ``padding=1``; Keras's "same" would pad 0 and 1). The transformer is
    a ``keras.Model`` subclass of ``Embedding``, ``MultiHeadAttention`` (the padding as ``attention_mask``),
    ``LayerNormalization`` and ``Dense`` layers, pre-norm as unidl's."""
    import keras

    native = _keras_resnet18(state) if workload == "resnet18" else _keras_transformer(state)
    # like with like: unidl's keras train step compiles without XLA (see native_keras.keras_native_model)
    native.compile(optimizer=keras.optimizers.SGD(learning_rate=LR, momentum=MOMENTUM),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    return native


def _keras_resnet18(state: dict):
    import keras
    from keras import layers

    weights = []  # (layer, its arrays in Keras's order), set once the model is built

    def conv(x, name, stride):
        kernel = state[f"{name}.weight"]
        size = kernel.shape[2]
        if size == 3 and stride != 1:
            x = layers.ZeroPadding2D(1)(x)
        layer = layers.Conv2D(kernel.shape[0], size, stride, "same" if size == 3 and stride == 1 else "valid",
                              use_bias=False)
        weights.append((layer, [kernel.transpose(2, 3, 1, 0)]))  # OIHW -> HWIO
        return layer(x)

    def batch_norm(x, name):
        layer = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
        weights.append((layer, [state[f"{name}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]))
        return layer(x)

    images = keras.Input((IMAGE[1], IMAGE[2], IMAGE[0]))
    x = layers.ReLU()(batch_norm(conv(images, "conv1", 1), "bn1"))
    for stage in range(1, 5):
        for block in range(2):
            name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            out = layers.ReLU()(batch_norm(conv(x, f"{name}.conv1", stride), f"{name}.bn1"))
            out = batch_norm(conv(out, f"{name}.conv2", 1), f"{name}.bn2")
            if f"{name}.downsample.0.weight" in state:
                x = batch_norm(conv(x, f"{name}.downsample.0", stride), f"{name}.downsample.1")
            x = layers.ReLU()(layers.Add()([out, x]))
    fc = layers.Dense(state["fc.weight"].shape[0])
    weights.append((fc, [state["fc.weight"].T, state["fc.bias"]]))
    native = keras.Model(images, fc(layers.GlobalAveragePooling2D()(x)))
    for layer, arrays in weights:
        layer.set_weights([np.ascontiguousarray(a, dtype=np.float32) for a in arrays])
    return native


def _keras_transformer(state: dict):
    import keras
    from keras import layers, ops

    d_model, heads, depth = TRANSFORMER["d_model"], TRANSFORMER["nhead"], TRANSFORMER["num_layers"]

    class TransformerClassifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.token_embedding = layers.Embedding(TRANSFORMER["vocab_size"], d_model)
            self.position_embedding = layers.Embedding(TRANSFORMER["max_len"], d_model)
            self.blocks = [dict(norm1=layers.LayerNormalization(epsilon=1e-5),
                                attention=layers.MultiHeadAttention(heads, d_model // heads),
                                norm2=layers.LayerNormalization(epsilon=1e-5),
                                linear1=layers.Dense(TRANSFORMER["dim_feedforward"], activation="relu"),
                                linear2=layers.Dense(d_model)) for _ in range(depth)]
            self.norm = layers.LayerNormalization(epsilon=1e-5)
            self.head = layers.Dense(TRANSFORMER["num_classes"])

        def call(self, tokens):
            length = ops.shape(tokens)[1]
            keep = ops.not_equal(tokens, 0)
            x = self.token_embedding(tokens) + self.position_embedding(ops.arange(length))
            attend = ops.repeat(keep[:, None, :], length, axis=1)  # (batch, query, key): True where a key is real
            for block in self.blocks:
                h = block["norm1"](x)
                x = x + block["attention"](h, h, attention_mask=attend)
                x = x + block["linear2"](block["linear1"](block["norm2"](x)))
            keep = ops.cast(keep, x.dtype)[:, :, None]
            return self.head(ops.sum(self.norm(x) * keep, 1) / ops.maximum(ops.sum(keep, 1), 1.0))

    native = TransformerClassifier()
    native(np.ones((1, SEQUENCE), np.int64))  # builds every layer

    def dense(name):
        return [state[f"{name}.weight"].T, state[f"{name}.bias"]]

    def norm(name):
        return [state[f"{name}.weight"], state[f"{name}.bias"]]

    native.token_embedding.set_weights([state["token_embedding.weight"]])
    native.position_embedding.set_weights([state["position_embedding.weight"]])
    for index, block in enumerate(native.blocks):
        name = f"encoder.layers.{index}"
        in_weight, in_bias = state[f"{name}.self_attn.in_proj_weight"], state[f"{name}.self_attn.in_proj_bias"]
        attention = []
        for part in range(3):  # query, key, value: (out, in) rows of in_proj -> (in, heads, head size) kernels
            rows = slice(part * d_model, (part + 1) * d_model)
            attention += [in_weight[rows].T.reshape(d_model, heads, -1), in_bias[rows].reshape(heads, -1)]
        out_weight = state[f"{name}.self_attn.out_proj.weight"]
        attention += [out_weight.T.reshape(heads, -1, d_model), state[f"{name}.self_attn.out_proj.bias"]]
        block["attention"].set_weights(attention)
        for key in ("norm1", "norm2"):
            block[key].set_weights(norm(f"{name}.{key}"))
        for key in ("linear1", "linear2"):
            block[key].set_weights(dense(f"{name}.{key}"))
    native.norm.set_weights(norm("encoder.norm"))
    native.head.set_weights(dense("head"))
    return native


def keras_workload_rows(settings: Settings, device: str, unidl_backends=("keras",)) -> list[Row]:
    """"peer: keras on <framework>" rows of each workload: the plain Keras model (``keras_workload_model``,
    ``train_on_batch`` on the channels-last batch) against ``ud.train_step`` on each of ``unidl_backends``, both
    in this process, on the framework Keras runs on here. unidl's keras backend (the same framework under both)
    is held to the parity target; another backend is information (the peer a user of that framework would pick)."""
    import unidl as ud

    from benchmarks.native_keras import keras_framework

    framework = keras_framework()
    rows = []
    for workload in WORKLOADS:
        x, y = workload_batch(workload, settings.model_batch)
        x_native = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if workload == "resnet18" else x
        for backend in unidl_backends:
            with ud.use_backend(backend), ud.use_device(device):
                module, loss_fn, optimizer = unidl_workload(workload)
                native = keras_workload_model(workload, module.state_dict())
                step = ud.train_step(module, loss_fn, optimizer)
                xb, yb = ud.tensor(x), ud.tensor(y)

                def unidl_step():
                    return ud.to_numpy(step(xb, yb))  # waits for the result

                def native_step():
                    return native.train_on_batch(x_native, y)

                diff = abs(float(unidl_step()) - float(native_step()))
                a, b = timing = alternate(unidl_step, native_step, settings.model_steps, settings.warmup,
                                          _blocks(settings))
            rows.append(Row(f"peer: keras on {framework}", workload, f"ud.train_step ({backend})",
                            "keras Model.train_on_batch", ms(a), ms(b),
                            f"<= {PARITY_TARGET}" if backend == "keras" else "",
                            note=f"batch {settings.model_batch}", loss_diff=diff, spread=timing.spread))
    return rows
