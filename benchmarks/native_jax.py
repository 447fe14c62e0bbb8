"""unidl's train step on jax against the same step hand-written with ``jax.jit``, ``jax.value_and_grad``
and ``optax.sgd`` (PyTorch's heavy-ball momentum), both donating their state buffers."""

from __future__ import annotations

from benchmarks.harness import LR, MODELS, MOMENTUM, PARITY_TARGET, Row, Settings, alternate, batch_arrays, ms, unidl_model


def jax_native_step(model: str, state: dict):
    """``(step, params, opt_state)``: the network as plain functions of a list of arrays (NCHW, OIHW, as
    XLA takes them), one jitted SGD-with-momentum step with ``optax``."""
    import jax
    import jax.numpy as jnp
    import optax

    params = [jnp.asarray(v) for v in state.values()]
    transform = optax.sgd(LR, momentum=MOMENTUM)

    def forward(p, x):
        if model == "cnn":
            h = x
            for i in (0, 2):
                h = jax.lax.conv_general_dilated(h, p[i], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
                h = jax.nn.relu(h + p[i + 1].reshape(1, -1, 1, 1))
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            h = h.reshape(h.shape[0], -1)
            for i in (4, 6):
                h = jax.nn.relu(h @ p[i].T + p[i + 1])
            return h @ p[8].T + p[9]
        return jax.nn.relu(x @ p[0].T + p[1]) @ p[2].T + p[3]

    def loss_of(p, x, y):
        outputs = forward(p, x)
        if model == "cnn":
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(outputs), y[:, None], axis=1))
        return jnp.mean(jnp.square(outputs - y))

    def step(p, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_of)(p, x, y)
        updates, opt_state = transform.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), params, transform.init(params)


def jax_steps(model: str, device: str):
    import jax
    import unidl as ud

    module, loss_fn, optimizer = unidl_model(model)
    step = ud.train_step(module, loss_fn, optimizer)
    x, y = (ud.tensor(a) for a in batch_arrays(model))
    native, params, opt_state = jax_native_step(model, module.state_dict())
    box = {"params": params, "state": opt_state}

    def unidl_step():
        return jax.block_until_ready(step(x, y))

    def native_step():
        box["params"], box["state"], loss = native(box["params"], box["state"], x, y)
        return jax.block_until_ready(loss)

    return unidl_step, native_step, abs(float(unidl_step()) - float(native_step()))


def bench_jax(settings: Settings, device: str) -> list[Row]:
    import unidl as ud

    rows = []
    for model in MODELS:
        with ud.use_backend("jax"), ud.use_device(device):
            unidl_step, native_step, diff = jax_steps(model, device)
            a, b = timing = alternate(unidl_step, native_step, settings.steps, settings.warmup, settings.blocks)
        rows.append(Row("train step, jax", model, "ud.train_step", "jax.jit + optax.sgd",
                        ms(a), ms(b), f"<= {PARITY_TARGET}", loss_diff=diff, spread=timing.spread))
    return rows
