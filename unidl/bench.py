"""``unidl bench``: one training step of unidl against the same step hand-written in each framework.

Every comparison runs its pair in one process, alternating blocks of steps (A, B, B, A, ...),
and reports medians and the ratio unidl/native; the peers a user would otherwise pick (Keras 3
on torch and on TensorFlow) and the data loaders are compared the same way. The result is a
Markdown report (``benchmarks/RESULTS.md`` by default). ``benchmarks/bench.py`` calls ``main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

LR, MOMENTUM, BATCH = 1e-2, 0.9, 64
TWO_LAYER = dict(D_in=1000, H=100, D_out=10)
CNN_INPUT = (3, 32, 32)
MODELS = ("two_layer", "cnn")
PARITY_TARGET = 1.05       # unidl/native, every backend and model
SAME_INPUT_NOTE = "information: native transposes the same NCHW batch in its step"
# (model, whether the native model gets unidl's NCHW batch): every model, then the CNN on the same input
LAYOUT_VARIANTS = [(m, False) for m in MODELS] + [("cnn", True)]
KERAS_TORCH_SPEEDUP = 3.0  # unidl on torch at least this much faster than Keras on torch (two-layer net)
LOADER_TARGET = 1.0        # unidl's DataLoader at least as fast as the native loaders


@dataclasses.dataclass
class Settings:
    steps: int          # timed steps per side of a per-step comparison
    warmup: int         # untimed steps per side before timing
    blocks: int         # alternations: each side runs steps/blocks steps per block
    fit_steps: int      # batches per epoch in the fit comparisons
    fit_rounds: int     # timed epochs per side in the fit comparisons
    loader_samples: int  # rows of the in-memory arrays for the loader comparisons
    loader_rounds: int  # timed epochs per side in the loader comparisons
    subprocess: bool = True  # run the Keras-on-torch peer (a subprocess)

    @classmethod
    def full(cls, steps=None):
        steps = steps or 300
        return cls(steps=steps, warmup=max(5, steps // 10), blocks=max(2, steps // 10), fit_steps=50, fit_rounds=8,
                   loader_samples=10_000, loader_rounds=8)

    @classmethod
    def quick(cls, steps=None):
        steps = steps or 4
        return cls(steps=steps, warmup=1, blocks=2, fit_steps=2, fit_rounds=2, loader_samples=256, loader_rounds=2)


@dataclasses.dataclass
class Row:
    comparison: str
    model: str
    unidl: str
    native: str
    unidl_ms: float | None = None
    native_ms: float | None = None
    target: str = ""        # "<= 1.05" style bound on unidl/native, or "" for information only
    note: str = ""
    loss_diff: float | None = None  # |loss of the first step, unidl - native| from the same weights and batch
    spread: tuple | None = None     # quartiles of the per-block ratios (see Timing)

    @property
    def ratio(self) -> float | None:
        if self.unidl_ms is None or self.native_ms is None:
            return None
        return self.unidl_ms / self.native_ms

    @property
    def spread_text(self) -> str | None:
        """The block quartiles as 'low-high', or None when not measured."""
        return f"{self.spread[0]:.2f}-{self.spread[1]:.2f}" if self.spread else None

    @property
    def met(self) -> bool | None:
        if not self.target or self.ratio is None:
            return None
        return self.ratio <= float(self.target.split()[-1]) + 1e-12


# ---- timing -----------------------------------------------------------------
class Timing(tuple):
    """``(median seconds of a, median seconds of b)``; ``spread``: the lower and upper quartile of the
    per-block ratios (a's block median / b's), how far the ratio moves within one run."""

    spread: tuple[float, float] | None

    def __new__(cls, a_median: float, b_median: float, spread):
        timing = super().__new__(cls, (a_median, b_median))
        timing.spread = spread
        return timing


def _block_spread(times_a: list, times_b: list, per_block: int) -> tuple[float, float] | None:
    ratios = [statistics.median(times_a[i:i + per_block]) / statistics.median(times_b[i:i + per_block])
              for i in range(0, len(times_a), per_block)]
    if len(ratios) < 2:
        return None
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def alternate(a, b, steps: int, warmup: int, blocks: int) -> Timing:
    """Median seconds of ``a()`` and of ``b()``, timed in alternating blocks (A B, B A, A B, ...)."""
    for _ in range(warmup):
        a()
    for _ in range(warmup):
        b()
    per_block = max(1, steps // max(1, blocks))
    times = {a: [], b: []}
    gc.collect()
    gc.disable()  # a collection triggered by one side would land in the other's timings
    try:
        for block in range(max(1, blocks)):
            for fn in ((a, b) if block % 2 == 0 else (b, a)):
                record = times[fn]
                for _ in range(per_block):
                    start = time.perf_counter()
                    fn()
                    record.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return Timing(statistics.median(times[a]), statistics.median(times[b]),
                  _block_spread(times[a], times[b], per_block))


def _ms(seconds):
    return seconds * 1e3


# ---- data and models ---------------------------------------------------------
def batch_arrays(model: str, n: int = BATCH, seed: int = 0):
    """NumPy ``(x, y)``: NCHW images and int64 labels for the CNN, D_in features and D_out targets otherwise."""
    rng = np.random.default_rng(seed)
    if model == "cnn":
        return rng.standard_normal((n,) + CNN_INPUT, dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)
    return (rng.standard_normal((n, TWO_LAYER["D_in"]), dtype=np.float32),
            rng.standard_normal((n, TWO_LAYER["D_out"]), dtype=np.float32))


def unidl_model(model: str):
    """``(module, loss, optimizer)`` under the backend in force, seeded so every backend starts alike."""
    import unidl as ud

    ud.manual_seed(0)
    if model == "cnn":
        module, loss = ud.models.CNN(in_channels=3, num_classes=10, image_size=32), ud.nn.CrossEntropyLoss()
    else:
        module, loss = ud.models.TwoLayerNet(**TWO_LAYER), ud.nn.MSELoss()
    return module, loss, ud.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)


def nhwc_fc_weight(weight: np.ndarray, channels: int = 16) -> np.ndarray:
    """The first fully connected weight (out, C*H*W) reordered for an NHWC flatten (out, H*W*C)."""
    out, features = weight.shape
    side = int(round((features // channels) ** 0.5))
    return weight.reshape(out, channels, side, side).transpose(0, 2, 3, 1).reshape(out, features)


def channels_last_weights(state: dict) -> list[np.ndarray]:
    """The CNN's canonical (OIHW, (out, in)) weights as a channels-last framework stores them: HWIO
    kernels, (in, out) dense weights, the first dense layer reordered for an NHWC flatten."""
    arrays = list(state.values())
    converted = []
    for index, array in enumerate(arrays):
        if array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)
        elif array.ndim == 2:
            array = (nhwc_fc_weight(array) if arrays[index - 2].ndim == 4 else array).T
        converted.append(np.ascontiguousarray(array))
    return converted


# ---- torch -------------------------------------------------------------------
def torch_native_model(model: str, state: dict):
    """The same network written with ``torch.nn``, holding the unidl model's weights."""
    import torch
    from torch import nn

    if model == "cnn":
        native = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
                               nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    else:
        native = nn.Sequential(nn.Linear(TWO_LAYER["D_in"], TWO_LAYER["H"]), nn.ReLU(),
                               nn.Linear(TWO_LAYER["H"], TWO_LAYER["D_out"]))
    with torch.no_grad():
        for parameter, value in zip(native.parameters(), state.values(), strict=True):
            parameter.copy_(torch.from_numpy(value))
    return native


def torch_sync(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def torch_steps(model: str, device: str):
    """``(unidl_step, native_step, loss_diff)``: zero-argument callables, one training step each.
    Call under ``ud.use_backend("torch")``: the steps run in the caller's backend context, as a user's
    loop would, with no per-step context switch."""
    import torch
    import unidl as ud

    module, loss_fn, optimizer = unidl_model(model)
    step = ud.train_step(module, loss_fn, optimizer)
    torch_device = torch.device(device)
    native = torch_native_model(model, module.state_dict()).to(torch_device)
    native_optimizer = torch.optim.SGD(native.parameters(), lr=LR, momentum=MOMENTUM)
    native_loss = torch.nn.CrossEntropyLoss() if model == "cnn" else torch.nn.MSELoss()
    x, y = (torch.from_numpy(a).to(torch_device) for a in batch_arrays(model))
    sync = torch_sync(device)

    def unidl_step():
        loss = step(x, y)
        sync()
        return loss

    def native_step():
        native_optimizer.zero_grad()
        loss = native_loss(native(x), y)
        loss.backward()
        native_optimizer.step()
        sync()
        return loss.detach()

    return unidl_step, native_step, abs(float(unidl_step()) - float(native_step()))


def bench_torch(settings: Settings, device: str) -> list[Row]:
    import unidl as ud

    rows = []
    for model in MODELS:
        with ud.use_backend("torch"), ud.use_device(device):
            unidl_step, native_step, diff = torch_steps(model, device)
            a, b = timing = alternate(unidl_step, native_step, settings.steps, settings.warmup, settings.blocks)
        rows.append(Row("train step, torch", model, "ud.train_step", "torch.nn + torch.optim.SGD",
                        _ms(a), _ms(b), f"<= {PARITY_TARGET}", loss_diff=diff, spread=timing.spread))
    return rows


# ---- tensorflow ----------------------------------------------------------------
def tf_native_step(model: str, state: dict, jit_compile: bool, nchw_input: bool = False):
    """The same network and SGD-with-momentum step hand-written in TensorFlow (channels-last, as TF
    users write it): ``tf.function`` with a GradientTape and in-graph ``tf.Variable`` updates.
    ``nchw_input``: the CNN takes unidl's NCHW batch and transposes it to NHWC in the step."""
    import tensorflow as tf

    if model == "cnn":
        weights = channels_last_weights(state)
    else:
        weights = [w.T.copy() if w.ndim == 2 else w for w in state.values()]
    params = [tf.Variable(w) for w in weights]
    velocities = [tf.Variable(tf.zeros_like(w)) for w in weights]

    def forward(x):
        if model == "cnn":
            k1, c1, k2, c2, w1, b1, w2, b2, w3, b3 = params
            if nchw_input:
                x = tf.transpose(x, (0, 2, 3, 1))
            h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, k1, 1, "VALID") + c1), 2, 2, "VALID")
            h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, k2, 1, "VALID") + c2), 2, 2, "VALID")
            h = tf.reshape(h, (tf.shape(h)[0], -1))
            h = tf.nn.relu(tf.matmul(h, w1) + b1)
            h = tf.nn.relu(tf.matmul(h, w2) + b2)
            return tf.matmul(h, w3) + b3
        w1, b1, w2, b2 = params
        return tf.matmul(tf.nn.relu(tf.matmul(x, w1) + b1), w2) + b2

    def loss_of(outputs, y):
        if model == "cnn":
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=outputs))
        return tf.reduce_mean(tf.square(outputs - y))

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(forward(x), y)
        for param, grad, velocity in zip(params, tape.gradient(loss, params), velocities):
            velocity.assign(MOMENTUM * velocity + grad)
            param.assign_sub(LR * velocity)
        return loss

    return step


def tf_steps(model: str, device: str, jit_compile: bool, same_input: bool = False):
    import tensorflow as tf
    import unidl as ud
    from unidl.backends.tensorflow.backend import tf_device_name

    module, loss_fn, optimizer = unidl_model(model)
    if jit_compile:
        @ud.function(jit_compile=True)
        def step(x, y):
            loss, grads = ud.value_and_grad(lambda: loss_fn(module(x), y), module.parameters())()
            optimizer.apply(grads)
            return loss
    else:
        step = ud.train_step(module, loss_fn, optimizer)
    x_np, y_np = batch_arrays(model)
    with tf.device(tf_device_name(device)):
        x, y = tf.constant(x_np), tf.constant(y_np)
        x_native = tf.constant(x_np.transpose(0, 2, 3, 1)) if model == "cnn" and not same_input else x
        native = tf_native_step(model, module.state_dict(), jit_compile, nchw_input=same_input)

    def unidl_step():
        return step(x, y).numpy()

    def native_step():
        return native(x_native, y).numpy()

    return unidl_step, native_step, abs(float(unidl_step()) - float(native_step()))


def _layout_variant(same_input: bool, note: str = "") -> tuple[str, str, str]:
    """``(target, note, suffix of the native label)`` of a row: the parity target, or information only
    when the native CNN gets the same NCHW batch as unidl."""
    if same_input:
        return "", SAME_INPUT_NOTE, ", same NCHW batch"
    return f"<= {PARITY_TARGET}", note, ""


def bench_tensorflow(settings: Settings, device: str) -> list[Row]:
    import unidl as ud

    rows = []
    for jit_compile in (False, True):
        for model, same_input in LAYOUT_VARIANTS:
            with ud.use_backend("tensorflow"), ud.use_device(device):
                unidl_step, native_step, diff = tf_steps(model, device, jit_compile, same_input)
                a, b = timing = alternate(unidl_step, native_step, settings.steps, settings.warmup, settings.blocks)
            if jit_compile:
                labels = ("ud.function(jit_compile=True)", "tf.function(jit_compile=True)")
            else:
                labels = ("ud.train_step", "tf.function + GradientTape")
            target, note, suffix = _layout_variant(same_input, "native layout NHWC" if model == "cnn" else "")
            rows.append(Row(f"train step, tensorflow{' XLA' if jit_compile else ''}", model, labels[0],
                            labels[1] + suffix, _ms(a), _ms(b), target, note=note, loss_diff=diff,
                            spread=timing.spread))
    return rows


# ---- keras ---------------------------------------------------------------------
def keras_native_model(model: str, state: dict, nchw_input: bool = False):
    """The same network as a plain ``keras.Sequential`` (channels-last), compiled with Keras's SGD;
    with ``nchw_input`` the CNN takes unidl's NCHW batch and permutes it to NHWC first."""
    import keras
    from keras import layers

    if model == "cnn":
        entry = [keras.Input((3, 32, 32)), layers.Permute((2, 3, 1))] if nchw_input else [keras.Input((32, 32, 3))]
        native = keras.Sequential(entry + [
            layers.Conv2D(6, 5, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(16, 5, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"), layers.Dense(10)])
        native.set_weights(channels_last_weights(state))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        native = keras.Sequential([keras.Input((TWO_LAYER["D_in"],)), layers.Dense(TWO_LAYER["H"], activation="relu"),
                                   layers.Dense(TWO_LAYER["D_out"])])
        native.set_weights([w.T.copy() if w.ndim == 2 else w for w in state.values()])
        loss = "mse"
    # like with like: unidl's keras train step compiles without XLA, and Keras's default ("auto") would turn
    # XLA on for TensorFlow with a GPU
    native.compile(optimizer=keras.optimizers.SGD(learning_rate=LR, momentum=MOMENTUM), loss=loss, jit_compile=False)
    return native


GRAPH_NOTE = "information: both sides one graph per step, as unidl runs Keras's train step on Keras-TensorFlow"


def keras_train_step_graph(native):
    """``step(x, y) -> loss`` of a compiled plain Keras model: its ``Model.train_step`` (metrics reset
    first, as ``train_on_batch`` does) in one ``tf.function``, fed tensors."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def graph(x, y):
        native.reset_metrics()
        return native.train_step((x, y, None))["loss"]

    def step(x, y):
        return graph(tf.constant(x), tf.constant(y))

    return step


def native_layout(model: str, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if model == "cnn" else x


def keras_framework() -> str:
    import keras

    return keras.backend.backend()


def bench_keras(settings: Settings, device: str) -> list[Row]:
    """unidl's keras backend (train_step, and fit per step) against plain Keras 3 in this process."""
    import unidl as ud

    with ud.use_backend("keras"), ud.use_device(device):
        return [row for model, same_input in LAYOUT_VARIANTS for row in _keras_rows(settings, model, same_input)]


def _keras_rows(settings: Settings, model: str, same_input: bool = False) -> list[Row]:
    import unidl as ud

    framework = keras_framework()
    rows = []
    module, loss_fn, optimizer = unidl_model(model)
    step = ud.train_step(module, loss_fn, optimizer)
    native = keras_native_model(model, module.state_dict(), nchw_input=same_input)
    x, y = batch_arrays(model)
    xn = x if same_input else native_layout(model, x)
    target, note, suffix = _layout_variant(same_input)

    def unidl_step():
        return step(x, y)

    diff = abs(float(unidl_step()) - float(native.train_on_batch(xn, y)))
    a, b = timing = alternate(unidl_step, lambda: native.train_on_batch(xn, y), settings.steps, settings.warmup,
                     settings.blocks)
    rows.append(Row(f"train step, keras ({framework})", model, "ud.train_step", "keras Model.train_on_batch" + suffix,
                    _ms(a), _ms(b), target, note=note, loss_diff=diff, spread=timing.spread))
    if framework == "tensorflow":  # graph for graph: plain Keras's train step without train_on_batch's Python too
        native_graph = keras_train_step_graph(native)
        a, b = timing = alternate(unidl_step, lambda: native_graph(xn, y), settings.steps, settings.warmup,
                                  settings.blocks)
        rows.append(Row(f"train step, keras ({framework})", model, "ud.train_step",
                        "keras Model.train_step in tf.function" + suffix, _ms(a), _ms(b), "",
                        note="; ".join(filter(None, [GRAPH_NOTE, note if same_input else ""])), spread=timing.spread))

    xe, ye = batch_arrays(model, BATCH * settings.fit_steps, seed=1)
    xen = xe if same_input else native_layout(model, xe)

    def unidl_epoch():
        ud.fit(module, (xe, ye), loss=loss_fn, optimizer=optimizer, epochs=1, batch_size=BATCH,
               metrics=(), verbose=0, shuffle=False)

    def native_epoch():
        native.fit(xen, ye, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

    a, b = timing = alternate(unidl_epoch, native_epoch, settings.fit_rounds, 1, settings.fit_rounds)
    rows.append(Row(f"fit per step, keras ({framework})", model, "ud.fit", "keras Model.fit" + suffix,
                    _ms(a) / settings.fit_steps, _ms(b) / settings.fit_steps, target,
                    note="; ".join(filter(None, [f"epoch of {settings.fit_steps} batches of {BATCH}", note])), spread=timing.spread))
    return rows


def keras_peer_rows(settings: Settings, device: str, unidl_backend: str) -> list[Row]:
    """unidl on ``unidl_backend`` against plain Keras 3 on the framework this process's Keras runs on."""
    import unidl as ud

    with ud.use_backend(unidl_backend), ud.use_device(device):
        return _keras_peer_rows(settings, device, unidl_backend)


def _keras_peer_rows(settings: Settings, device: str, unidl_backend: str) -> list[Row]:
    framework = keras_framework()
    target_of = (lambda model: f"<= {1 / KERAS_TORCH_SPEEDUP:.3f}"
                 if framework == "torch" and model == "two_layer" else "")
    rows = []
    for model in MODELS:
        step, state = _plain_step(unidl_backend, model, device)
        native = keras_native_model(model, state)
        x, y = batch_arrays(model)
        xb, yb = ud_tensor(x), ud_tensor(y)
        xn = native_layout(model, x)
        a, b = timing = alternate(lambda: step(xb, yb), lambda: native.train_on_batch(xn, y), settings.steps,
                         settings.warmup, settings.blocks)
        rows.append(Row(f"peer: keras on {framework}", model, f"ud.train_step ({unidl_backend})",
                        "keras Model.train_on_batch", _ms(a), _ms(b), target_of(model), spread=timing.spread))

        xe, ye = batch_arrays(model, BATCH * settings.fit_steps, seed=1)
        xen = native_layout(model, xe)
        batches = [(ud_tensor(xe[i:i + BATCH]), ud_tensor(ye[i:i + BATCH])) for i in range(0, len(xe), BATCH)]

        def unidl_epoch():
            for bx, by in batches:
                step(bx, by)

        def native_epoch():
            native.fit(xen, ye, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

        a, b = timing = alternate(unidl_epoch, native_epoch, settings.fit_rounds, 1, settings.fit_rounds)
        rows.append(Row(f"peer: keras on {framework}", model, f"ud.train_step loop ({unidl_backend})",
                        "keras Model.fit, per step", _ms(a) / settings.fit_steps, _ms(b) / settings.fit_steps,
                        target_of(model), note=f"epoch of {settings.fit_steps} batches of {BATCH}", spread=timing.spread))
    return rows


def ud_tensor(value):
    from unidl.tensors import tensor

    return tensor(value)


def _plain_step(backend: str, model: str, device: str):
    """``(step(x, y), initial state_dict)``: unidl's train step on ``backend``, waiting for its result."""
    import unidl as ud

    module, loss_fn, optimizer = unidl_model(model)
    state = module.state_dict()
    step = ud.train_step(module, loss_fn, optimizer)
    sync = torch_sync(device) if backend == "torch" else (lambda: None)

    def run(x, y):
        loss = step(x, y)
        sync()
        return loss if backend == "torch" else loss.numpy()

    return run, state


def keras_peer(settings: Settings, device: str, framework: str, unidl_backend: str) -> list[Row]:
    """``keras_peer_rows`` in this process when its Keras runs on ``framework``, else in a subprocess."""
    if keras_framework() == framework:
        return keras_peer_rows(settings, device, unidl_backend)
    if not settings.subprocess:
        return [Row(f"peer: keras on {framework}", model, f"ud.train_step ({unidl_backend})",
                    "keras Model.train_on_batch", note="skipped (no subprocess)") for model in MODELS]
    env = dict(os.environ, KERAS_BACKEND=framework)
    command = [sys.executable, "-m", "unidl.bench", "--peer", json.dumps(
        {"settings": dataclasses.asdict(settings), "device": device, "unidl_backend": unidl_backend})]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the Keras-on-{framework} peer failed:\n{done.stderr[-4000:]}")
    return [Row(**fields) for fields in json.loads(done.stdout.strip().splitlines()[-1])]


# ---- data loaders ----------------------------------------------------------------
def bench_loaders(settings: Settings, device: str, with_tensorflow: bool) -> list[Row]:
    """One epoch over in-memory arrays, batches touched but not trained on."""
    import torch
    import unidl as ud

    rng = np.random.default_rng(2)
    x = rng.standard_normal((settings.loader_samples, TWO_LAYER["D_in"]), dtype=np.float32)
    y = rng.standard_normal((settings.loader_samples, TWO_LAYER["D_out"]), dtype=np.float32)
    rows = []

    def epoch_of(loader):
        def run():
            seen = 0
            for xb, yb in loader:
                seen += xb.shape[0]
            assert seen == len(x)
        return run

    with ud.use_backend("torch"), ud.use_device(device):
        unidl_loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=BATCH)
        tensors = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        native_loader = torch.utils.data.DataLoader(tensors, batch_size=BATCH, pin_memory=device.startswith("cuda"))
        a, b = timing = alternate(epoch_of(unidl_loader), epoch_of(native_loader), settings.loader_rounds, 1,
                         settings.loader_rounds)
    note = f"{len(x)} x {x.shape[1]} float32, batch {BATCH}"
    rows.append(Row("data loader epoch, torch", "-", "ud.data.DataLoader", "torch.utils.data.DataLoader",
                    _ms(a), _ms(b), f"<= {LOADER_TARGET}", note=note + ("; torch batches stay on the CPU"
                                                                         if device != "cpu" else ""), spread=timing.spread))
    if with_tensorflow:
        import tensorflow as tf
        with ud.use_backend("tensorflow"), ud.use_device(device):
            tf_loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=BATCH)
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
            a, b = timing = alternate(epoch_of(tf_loader), epoch_of(dataset), settings.loader_rounds, 1,
                             settings.loader_rounds)
        rows.append(Row("data loader epoch, tensorflow", "-", "ud.data.DataLoader",
                        "tf.data.Dataset.from_tensor_slices().batch()", _ms(a), _ms(b), f"<= {LOADER_TARGET}",
                        note=note, spread=timing.spread))
    return rows


# ---- the whole run and its report ----------------------------------------------------
def tensorflow_sees_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def run(settings: Settings, device: str = "cpu", only: str | None = None, log=print) -> list[Row]:
    """Every comparison, in order; ``only`` keeps the groups whose name contains it."""
    with_tf = device == "cpu" or tensorflow_sees_gpu()
    groups = [("torch", lambda: bench_torch(settings, device))]
    skipped = "skipped: TensorFlow sees no GPU"
    if with_tf:
        groups += [("tensorflow", lambda: bench_tensorflow(settings, device)),
                   ("keras", lambda: bench_keras(settings, device))]
    else:
        groups += [("tensorflow", lambda: [Row("train step, tensorflow", m, "ud.train_step", "tf.function",
                                               note=skipped) for m in MODELS]),
                   ("keras", lambda: [Row("train step, keras", m, "ud.train_step", "keras", note=skipped)
                                      for m in MODELS])]
    groups += [("peer keras torch", lambda: keras_peer(settings, device, "torch", "torch"))]
    if with_tf:
        groups += [("peer keras tensorflow", lambda: keras_peer(settings, device, "tensorflow", "tensorflow"))]
    groups += [("loader", lambda: bench_loaders(settings, device, with_tf))]
    rows = []
    for name, group in groups:
        if only and only not in name:
            continue
        started = time.perf_counter()
        for row in group():
            rows.append(row)
            log(format_row(row))
        log(f"  ({name}: {time.perf_counter() - started:.1f} s)")
    return rows


def format_row(row: Row) -> str:
    if row.ratio is None:
        return f"{row.comparison:<32} {row.model:<9} {row.note}"
    verdict = {True: "met", False: "MISSED", None: ""}[row.met]
    return (f"{row.comparison:<32} {row.model:<9} unidl {row.unidl_ms:8.3f} ms  native {row.native_ms:8.3f} ms  "
            f"ratio {row.ratio:5.2f}{f' ({row.spread_text})' if row.spread else ''}  {row.target} {verdict}")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict:
    found = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "tensorflow", "keras"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    import unidl

    found["unidl"] = unidl.__version__
    return found


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def report(rows: list[Row], settings: Settings, device: str, started: str, load_before: str, quick: bool,
           findings: str = "") -> str:
    info, found = machine(), versions()
    lines = [
        "# unidl benchmarks", "",
        "One training step (median over alternating blocks of steps after warm-up) of unidl against the same",
        "model and loop hand-written natively, and against Keras 3; data loader epochs likewise. Ratio = unidl / native",
        "(below 1: unidl is faster). Produced by `unidl bench" + (" --quick" if quick else "") +
        f" --device {device}` (`benchmarks/bench.py`).", "",
        f"- date: {started}",
        f"- machine: {info['cpu']}, {info['cores']} cores ({info['platform']})",
        f"- load average (1, 5, 15 min) before / after: {load_before} / {load_average()}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in found.items()),
        f"- device: {device}",
        f"- settings: {settings.steps} timed steps per side in {settings.blocks} alternating blocks after "
        f"{settings.warmup} warm-up steps; fit: {settings.fit_rounds} epochs of {settings.fit_steps} batches per side; "
        f"loaders: {settings.loader_rounds} epochs of {settings.loader_samples} samples per side",
        "- models: two-layer net (N=64, D_in=1000, H=100, D_out=10, MSE) and LeNet CNN (batch 64, 3x32x32, "
        "cross-entropy), SGD lr=1e-2 momentum=0.9, float32; native models hold the same weights "
        "(loss diff: first-step loss of unidl minus native on the same batch)",
        "- block quartiles: the lower and upper quartile of the ratio measured block by block (unidl's median over "
        "a block / native's over the adjacent block): how far the ratio moves within this run", "",
        "| comparison | model | unidl | native | unidl ms | native ms | unidl/native | block quartiles | target | met "
        "| loss diff | note |",
        "|---|---|---|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for row in rows:
        cells = [row.comparison, row.model, f"`{row.unidl}`", f"`{row.native}`",
                 "-" if row.unidl_ms is None else f"{row.unidl_ms:.3f}",
                 "-" if row.native_ms is None else f"{row.native_ms:.3f}",
                 "-" if row.ratio is None else f"{row.ratio:.2f}",
                 row.spread_text or "-",
                 row.target.replace("<=", "≤") or "-",
                 {True: "yes", False: "**no**", None: "-"}[row.met],
                 "-" if row.loss_diff is None else f"{row.loss_diff:.1e}", row.note or ""]
        lines.append("| " + " | ".join(cells) + " |")
    missed = [r for r in rows if r.met is False]
    lines += ["", f"Targets met: {sum(r.met is True for r in rows)} of {sum(r.met is not None for r in rows)}"
              + (f"; missed: {', '.join(f'{r.comparison} / {r.model}' for r in missed)}" if missed else "") + "."]
    if findings:
        lines += ["", findings.rstrip()]
    return "\n".join(lines) + "\n"


ANALYSIS_HEADING = "## Analysis"


def previous_analysis(path: str) -> str:
    """The hand-written ``## Analysis`` section of an earlier report at ``path``, kept across re-runs."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return ""
    start = text.find("\n" + ANALYSIS_HEADING)
    return text[start + 1:] if start >= 0 else ""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="unidl bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (a few steps), for tests")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu (default) or cuda (the first GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side (default 300; quick 4)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "RESULTS.md"), help="the Markdown report")
    parser.add_argument("--only", default=None, help="run only the groups whose name contains this "
                        "(torch, tensorflow, keras, peer, loader)")
    parser.add_argument("--no-subprocess", action="store_true",
                        help="skip the Keras-on-torch peer, which needs a process of its own")
    parser.add_argument("--findings", default=None, help=f"a Markdown file appended to the report (its analysis); "
                        f"by default the '{ANALYSIS_HEADING}' section of the existing report is kept")
    parser.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None, args=None) -> int:
    args = args or build_parser().parse_args(argv)
    if args.peer:  # the Keras peer's own process: print its rows as JSON on the last line
        spec = json.loads(args.peer)
        rows = keras_peer_rows(Settings(**spec["settings"]), spec["device"], spec["unidl_backend"])
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return 0
    device = "cpu" if args.device == "cpu" else "cuda:0"
    if device != "cpu":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("unidl bench --device cuda: torch sees no GPU on this machine")
    settings = Settings.quick(args.steps) if args.quick else Settings.full(args.steps)
    settings.subprocess = not args.no_subprocess
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_before = load_average()
    print(f"unidl bench: device={device} steps={settings.steps} load average {load_before}")
    rows = run(settings, device, args.only)
    findings = previous_analysis(args.out)
    if args.findings:
        with open(args.findings) as handle:
            findings = handle.read()
    text = report(rows, settings, device, started, load_before, args.quick, findings)
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write(text)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
