"""The hand-written models of the workload rows (``unidl bench --only models``) compute unidl's model from unidl's
weights, so those rows compare like with like:
- the plain Keras 3 ResNet-18 and transformer classifier of the "peer: keras on ..." rows
  (``benchmarks.native_models.keras_workload_model``), on Keras-on-TensorFlow in this process, against unidl's keras
  backend;
- the pure-JAX models and step of the "train step, jax" rows (``benchmarks.native_jax_models``) against unidl's
  jax backend: outputs, first-step loss, gradients through the SGD update, BatchNorm's running statistics.

No timing is asserted (the rows themselves run in ``unidl bench --only models``)."""

import importlib.util

import numpy as np
import pytest

import unidl as ud
from benchmarks.native_models import keras_workload_model, unidl_workload, workload_batch
from unidl.testing import max_relative_difference


def _keras_on_tensorflow() -> bool:
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        return False
    import keras

    return keras.backend.backend() == "tensorflow"


# the in-process Keras rows are Keras-on-TensorFlow's (CI runs Keras on TensorFlow)
keras_on_tensorflow = pytest.mark.skipif(not _keras_on_tensorflow(), reason="Keras runs on another framework here")


def with_trained_statistics(state: dict) -> dict:
    """``state`` with BatchNorm's running statistics, scales and shifts away from their 0/1 start, so that the
    evaluation forward checks where each lands in the Keras model."""
    rng = np.random.default_rng(5)
    changed = dict(state)
    for key, value in state.items():
        if key.endswith(("running_mean", "bn1.bias", "bn2.bias", "downsample.1.bias")):
            changed[key] = rng.uniform(-0.5, 0.5, value.shape).astype(value.dtype)
        elif key.endswith(("running_var", "bn1.weight", "bn2.weight", "downsample.1.weight")):
            changed[key] = rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
    return changed


@keras_on_tensorflow
@pytest.mark.parametrize("workload", ["resnet18", "transformer"])
def test_plain_keras_workload_model_gives_unidls_outputs(workload):
    import keras

    with ud.use_backend("keras"):
        module, _, _ = unidl_workload(workload)
        module.load_state_dict(with_trained_statistics(module.state_dict()))
        x, _ = workload_batch(workload, 2)
        native = keras_workload_model(workload, module.state_dict())
        x_native = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if workload == "resnet18" else x
        expected = keras.ops.convert_to_numpy(native(x_native, training=False))
        assert max_relative_difference(ud.to_numpy(module.eval()(ud.tensor(x))), expected) < 2e-5
        if workload == "resnet18":  # the batch's own statistics in training
            expected = keras.ops.convert_to_numpy(native(x_native, training=True))
            assert max_relative_difference(ud.to_numpy(module.train()(ud.tensor(x))), expected) < 2e-5


def _small_workload(workload: str):
    """A small model of the workload's architecture (one block a stage on 8x8 images; one narrow layer of two
    heads) and a batch of its input, in the dtype in force: compiled in about a second."""
    ud.manual_seed(0)
    dtype = ud.get_dtype()
    if workload == "resnet18":
        module = ud.models.ResNet((1, 1, 1, 1), num_classes=10, cifar_stem=True)
        x = workload_batch(workload, 4)[0][:, :, :8, :8].astype(dtype)
    else:
        module = ud.models.TransformerClassifier(vocab_size=50, num_classes=3, d_model=16, nhead=2, num_layers=2,
                                                 dim_feedforward=24, max_len=16, dropout=0.0)
        x = np.random.default_rng(3).integers(1, 50, (3, 16)).astype(np.int64)
        x[np.arange(16)[None, :] >= np.array([16, 9, 4])[:, None]] = 0  # right-padded
    module.load_state_dict(with_trained_statistics(module.state_dict()))
    return module.train(), x


@pytest.mark.parametrize("workload", ["resnet18", "transformer"])
def test_pure_jax_workload_model_gives_unidls_outputs_and_statistics(workload):
    """The jax rows' native model in float64 (where the two are the same math to rounding): the training-mode
    forward's outputs and BatchNorm's updated running statistics and counters, both sides compiled. Its
    gradients are JAX's of this forward; the rows' ``loss_diff`` checks the float32 first step every run."""
    import jax

    from benchmarks.native_jax_models import jax_workload_forward, native_input, split_state

    with ud.use_backend("jax"), ud.use_dtype("float64"):
        module, x = _small_workload(workload)
        params, buffers = split_state(module.state_dict())
        logits, new_buffers = jax.jit(jax_workload_forward(workload, nhead=2))(params, buffers,
                                                                                native_input(workload, x))
        expected = ud.to_numpy(ud.function(lambda tokens_or_images: module(tokens_or_images))(ud.tensor(x)))
        assert max_relative_difference(np.asarray(logits), expected) < 1e-12
        state = module.state_dict()
        assert new_buffers.keys() == {key for key in state if key.endswith(("running_mean", "running_var",
                                                                             "num_batches_tracked"))}
        for key, value in new_buffers.items():
            assert max_relative_difference(np.asarray(value), state[key]) < 1e-12, key
