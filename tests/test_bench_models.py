"""The plain Keras 3 ResNet-18 and transformer classifier of the "peer: keras on ..." workload rows
(``benchmarks.native_models.keras_workload_model``) compute unidl's model from unidl's weights, so those rows
compare like with like: on Keras-on-TensorFlow in this process, against unidl's keras backend.

No timing is asserted (the rows themselves run in ``unidl bench --only models``)."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import unidl as ud  # noqa: E402
from benchmarks.native_models import keras_workload_model, unidl_workload, workload_batch  # noqa: E402
from unidl.testing import max_relative_difference  # noqa: E402

if keras.backend.backend() != "tensorflow":
    pytest.skip("the in-process rows are Keras-on-TensorFlow's (CI runs Keras on TensorFlow)", allow_module_level=True)


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


@pytest.mark.parametrize("workload", ["resnet18", "transformer"])
def test_plain_keras_workload_model_gives_unidls_outputs(workload):
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
