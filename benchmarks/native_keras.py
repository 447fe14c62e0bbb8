"""unidl's keras backend (``ud.train_step`` and ``ud.fit``) against the same network as a plain
Keras 3 model (``train_on_batch``, ``Model.fit``), both on the framework Keras runs on here."""

from __future__ import annotations

import numpy as np

from benchmarks.harness import (BATCH, LAYOUT_VARIANTS, LR, MOMENTUM, TWO_LAYER, Row, Settings, alternate,
                                batch_arrays, channels_last_weights, layout_variant, ms, unidl_model)


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


def bench_keras(settings: Settings, device: str, built: dict | None = None) -> list[Row]:
    """unidl's keras backend (train_step, and fit per step) against plain Keras 3 in this process. ``built``: where
    the plain Keras models of unidl's layout are left (``("keras Model", model)``) for a later comparison that
    times them again (``keras_peer``)."""
    import unidl as ud

    unidl_sides = {}  # both CNN variants time the same unidl step and fit: only the native side differs
    built = {} if built is None else built
    with ud.use_backend("keras"), ud.use_device(device):
        return [row for model, same_input in LAYOUT_VARIANTS
                for row in _keras_rows(settings, model, same_input, unidl_sides, built)]


def _keras_rows(settings: Settings, model: str, same_input: bool, unidl_sides: dict, built: dict) -> list[Row]:
    """The rows of ``model``; ``unidl_sides``: the unidl ``(module, loss, optimizer, step)`` of each model already
    built, the native model starting from the module's current weights."""
    import unidl as ud

    framework = keras_framework()
    rows = []
    if model not in unidl_sides:
        module, loss_fn, optimizer = unidl_model(model)
        unidl_sides[model] = module, loss_fn, optimizer, ud.train_step(module, loss_fn, optimizer)
    module, loss_fn, optimizer, step = unidl_sides[model]
    native = keras_native_model(model, module.state_dict(), nchw_input=same_input)
    if not same_input:
        built[("keras Model", model)] = native
    x, y = batch_arrays(model)
    xn = x if same_input else native_layout(model, x)
    target, note, suffix = layout_variant(same_input)

    def unidl_step():
        return step(x, y)

    diff = abs(float(unidl_step()) - float(native.train_on_batch(xn, y)))
    a, b = timing = alternate(unidl_step, lambda: native.train_on_batch(xn, y), settings.steps, settings.warmup,
                     settings.blocks)
    rows.append(Row(f"train step, keras ({framework})", model, "ud.train_step", "keras Model.train_on_batch" + suffix,
                    ms(a), ms(b), target, note=note, loss_diff=diff, spread=timing.spread))
    if framework == "tensorflow":  # graph for graph: plain Keras's train step without train_on_batch's Python too
        native_graph = keras_train_step_graph(native)
        a, b = timing = alternate(unidl_step, lambda: native_graph(xn, y), settings.steps, settings.warmup,
                                  settings.blocks)
        rows.append(Row(f"train step, keras ({framework})", model, "ud.train_step",
                        "keras Model.train_step in tf.function" + suffix, ms(a), ms(b), "",
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
                    ms(a) / settings.fit_steps, ms(b) / settings.fit_steps, target,
                    note="; ".join(filter(None, [f"epoch of {settings.fit_steps} batches of {BATCH}", note])), spread=timing.spread))
    return rows
