import numpy as np
import pytest

import unidl as ud


@pytest.fixture
def problem(rng):
    """A small classification problem: (x, y) to train on, (x, y) to validate on, and a function making a
    fresh model (TwoLayerNet 4-8-3, seeded) with its SGD optimizer and loss."""
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    xv = rng.standard_normal((20, 4)).astype(np.float32)
    yv = (xv[:, 0] > 0).astype(np.int64) + (xv[:, 1] > 0.5)

    def build(lr=0.5):
        ud.manual_seed(0)
        model = ud.models.TwoLayerNet(4, 8, 3)
        return model, ud.optim.SGD(model.parameters(), lr=lr), ud.nn.CrossEntropyLoss()

    return (x, y), (xv, yv), build


def keras_compares_in_float32() -> bool:
    """Whether Keras's own callbacks compare in float32 in this process, as plain Keras does on every host: not
    Keras on JAX once unidl's jax backend has turned on ``jax_enable_x64`` (Keras's ops then take Python floats
    as float64), where the reference is plain Keras's result, written out."""
    keras = pytest.importorskip("keras")
    return keras.backend.standardize_dtype(keras.ops.convert_to_tensor(0.8).dtype) == "float32"


def train(problem, epochs, callbacks, lr=0.5, **kwargs):
    """``ud.fit`` on ``problem`` (batches of 20, no shuffling); returns (model, optimizer, history)."""
    train_data, validation, build = problem
    model, optimizer, loss = build(lr)
    kwargs.setdefault("validation_data", validation)
    history = ud.fit(model, train_data, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=20, shuffle=False,
                     verbose=0, callbacks=callbacks, **kwargs)
    return model, optimizer, history
