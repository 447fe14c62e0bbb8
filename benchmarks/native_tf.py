"""unidl's train step on tensorflow (graph, and XLA through ``ud.function``) against the same
step hand-written with ``tf.function`` and a GradientTape."""

from __future__ import annotations

from benchmarks.harness import (LAYOUT_VARIANTS, LR, MOMENTUM, Row, Settings, alternate, batch_arrays,
                                channels_last_weights, layout_variant, ms, unidl_model)


def tf_native_step(model: str, state: dict, jit_compile: bool, nchw_input: bool = False, strategy=None):
    """The same network and SGD-with-momentum step hand-written in TensorFlow (channels-last, as TF
    users write it): ``tf.function`` with a GradientTape and in-graph ``tf.Variable`` updates.
    ``nchw_input``: the CNN takes unidl's NCHW batch and transposes it to NHWC in the step.
    ``strategy``: a ``tf.distribute`` strategy whose replica context averages the gradients (``strategy.run``)."""
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

    def update(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(forward(x), y)
        grads = tape.gradient(loss, params)
        if strategy is not None:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, grads)
        for param, grad, velocity in zip(params, grads, velocities):
            velocity.assign(MOMENTUM * velocity + grad)
            param.assign_sub(LR * velocity)
        return loss

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        return update(x, y) if strategy is None else strategy.run(update, args=(x, y))

    return step


def tf_unidl_step(model: str, jit_compile: bool):
    """``(module, step)``: unidl's train step of ``model`` under the backend in force, as ``ud.train_step`` or,
    with ``jit_compile``, written with ``ud.function(jit_compile=True)``."""
    import unidl as ud

    module, loss_fn, optimizer = unidl_model(model)
    if not jit_compile:
        return module, ud.train_step(module, loss_fn, optimizer)

    @ud.function(jit_compile=True)
    def step(x, y):
        loss, grads = ud.value_and_grad(lambda: loss_fn(module(x), y), module.parameters())()
        optimizer.apply(grads)
        return loss

    return module, step


def tf_steps(model: str, device: str, jit_compile: bool, same_input: bool = False, unidl=None):
    """``(unidl_step, native_step, loss_diff)``; ``unidl``: a ``tf_unidl_step`` to reuse (both CNN variants time
    the same unidl step: only the native side differs), the native model starting from its current weights."""
    import tensorflow as tf
    from unidl.backends.tensorflow.backend import tf_device_name

    module, step = unidl or tf_unidl_step(model, jit_compile)
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


def bench_tensorflow(settings: Settings, device: str, built: dict | None = None) -> list[Row]:
    """The "train step, tensorflow" rows, then the XLA ones. ``built``: where unidl's ``(module, ud.train_step)``
    of each model is left (``("ud.train_step", "tensorflow", model)``) for a later comparison that times it again
    (``keras_peer``)."""
    import unidl as ud

    rows = []
    for jit_compile in (False, True):
        unidl_steps = {}
        for model, same_input in LAYOUT_VARIANTS:
            with ud.use_backend("tensorflow"), ud.use_device(device):
                if model not in unidl_steps:
                    unidl_steps[model] = tf_unidl_step(model, jit_compile)
                    if built is not None and not jit_compile:
                        built[("ud.train_step", "tensorflow", model)] = unidl_steps[model]
                unidl_step, native_step, diff = tf_steps(model, device, jit_compile, same_input, unidl_steps[model])
                a, b = timing = alternate(unidl_step, native_step, settings.steps, settings.warmup, settings.blocks)
            if jit_compile:
                labels = ("ud.function(jit_compile=True)", "tf.function(jit_compile=True)")
            else:
                labels = ("ud.train_step", "tf.function + GradientTape")
            target, note, suffix = layout_variant(same_input, "native layout NHWC" if model == "cnn" else "")
            rows.append(Row(f"train step, tensorflow{' XLA' if jit_compile else ''}", model, labels[0],
                            labels[1] + suffix, ms(a), ms(b), target, note=note, loss_diff=diff,
                            spread=timing.spread))
    return rows
