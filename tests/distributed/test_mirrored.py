"""One process training on several devices (``unidl.distributed.init(devices=[...])``): on the tensorflow
backend, ``tf.distribute.MirroredStrategy`` over two logical CPU devices trains the weights one device trains
with the same global batch; every other backend refuses the request with an error naming what it supports.

Two logical CPUs exist only if TensorFlow is configured so before its first op: that test runs in one fresh
interpreter, which checks everything that needs them.
"""

import pytest

import unidl as ud
from unidl.errors import DeviceUnavailableError, DistributedError
from unidl.testing import max_relative_difference

from tests.helpers import last_json_line, run_python

TWO_DEVICES = """
import json, sys, tempfile
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import unidl as ud
from tests.distributed import jobs
ud.set_backend("tensorflow")
directory = tempfile.mkdtemp()
# mixed precision with accumulate=2: the window the replicas share, the job's gradients added once per micro-step
MIXED = {"bf16_accumulated": {"precision": "bf16-mixed", "accumulate": 2},
         "float16_accumulated": {"precision": "16-mixed", "accumulate": 2},
         "float16_accumulated_poisoned": {"precision": "16-mixed", "accumulate": 2, "poisoned": True},
         "eager_float16_accumulated": {"precision": "16-mixed", "accumulate": 2, "eager": True}}
one = {"two_layer64": jobs.train_two_layer("float64"), "cnn": jobs.train_cnn(directory + "/one")}
mixed = [{name: jobs.two_layer_with_options(**options) for name, options in MIXED.items()}]
split = {"step_inputs": [jobs.train_with_step_inputs()]}
early = ud.nn.Linear(5, 3)
early_step = ud.train_step(early, ud.nn.MSELoss(), ud.optim.SGD(early.parameters(), lr=0.1))
ud.distributed.init(devices=["cpu:0", "cpu:1"])
def refusal(step):
    try:
        step(np.ones((2, 5), np.float32), np.ones((2, 3), np.float32))
    except ud.errors.DistributedError as error:
        return str(error)
refused = {"built_before": refusal(early_step)}
place = [ud.distributed.rank(), ud.distributed.world_size(), ud.distributed.num_replicas()]
two = {"two_layer64": jobs.train_two_layer("float64"), "cnn": jobs.train_cnn(directory + "/two")}
mixed.append({name: jobs.two_layer_with_options(**options) for name, options in MIXED.items()})
split["step_inputs"].append(jobs.train_with_step_inputs())
split.update(too_small=jobs.too_small_step_batches(), uneven=jobs.uneven_step_loss())
rng = np.random.default_rng(2)
x, y = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
model = ud.models.TwoLayerNet(5, 7, 3)
before = ud.to_numpy(model(x))
step = ud.training.TrainStep(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), with_outputs=True)
loss, outputs = step(x, y)
names = [op.name for f in step._run.concrete_functions for op in f.graph.get_operations()]
too_small = jobs.too_small_last_batch()
# batch norm: one step's running statistics, its starting weights and its batch (the test compares them with torch's
# from the first replica's share: torch DDP keeps rank 0's buffers; torch is imported there, not in this interpreter)
normed = ud.nn.Sequential(ud.nn.Linear(5, 4), ud.nn.BatchNorm1d(4), ud.nn.Linear(4, 3))
initial = {k: np.asarray(v) for k, v in normed.state_dict().items()}
ud.train_step(normed, ud.nn.MSELoss(), ud.optim.SGD(normed.parameters(), lr=0.0))(x * 2 + 1, y)
batch_norm = {"initial": {k: v.tolist() for k, v in initial.items()}, "batch": (x * 2 + 1).tolist(),
              **{name: np.asarray(normed.state_dict()["1." + name]).tolist()
                 for name in ("running_mean", "running_var", "num_batches_tracked")}}
# a module outside the model's tree, whose mode the forward reads in the replica threads: eval() builds the step
# again (its mode is read there as in one thread), so that the loss after it has no dropout
class WithOutside(ud.nn.Module):
    def __init__(self, outside):
        super().__init__()
        self.fc = ud.nn.Linear(5, 3)
        self.__dict__["outside"] = outside  # not a submodule
    def forward(self, x):
        return self.outside(self.fc(x))
outside = ud.nn.Dropout(0.5)
moded = WithOutside(outside)
moded_step = ud.train_step(moded, ud.nn.MSELoss(), ud.optim.SGD(moded.parameters(), lr=0.0))
moded_step(x, y)
traces = [moded_step.trace_count]
outside.eval()
modes = {"loss": [float(ud.to_numpy(moded_step(x, y))), float(np.mean((ud.to_numpy(moded(x)) - y) ** 2))],
         "traces": traces + [moded_step.trace_count]}
ud.distributed.shutdown()
refused["after_shutdown"] = refusal(step)
def listed(weights):
    return {k: np.asarray(v).tolist() for k, v in weights.items()}
print(json.dumps({"place": place, "outputs": [ud.to_numpy(outputs).tolist(), before.tolist()],
                  "loss": [float(ud.to_numpy(loss)), float(np.mean((before - y) ** 2))], "too_small": too_small,
                  "batch_norm": batch_norm, "modes": modes, "refused": refused, "split": split, "mixed": mixed,
                  "replica_1_ops": sum(n.startswith("replica_1/") for n in names),
                  "one": {k: listed(v) for k, v in one.items() if k != "cnn"}, "one_cnn": listed(one["cnn"][0]),
                  "two": {k: listed(v) for k, v in two.items() if k != "cnn"}, "two_cnn": listed(two["cnn"][0]),
                  "one_loss": one["cnn"][1]["loss"], "two_loss": two["cnn"][1]["loss"],
                  "one_history": one["cnn"][1], "two_history": two["cnn"][1]}))
"""

# the keras backend on Keras-on-TensorFlow: Keras's own train step in each replica, the update once (the same checks
# as TWO_DEVICES' where they apply, and the optimizer's options that the tensorflow backend's step runs there too)
KERAS_TWO_DEVICES = """
import json, tempfile
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import unidl as ud
from tests.distributed import jobs
ud.set_backend("keras")
directory = tempfile.mkdtemp()
OPTIONS = {"plain": {}, "clipped": {"clip_grad_norm": 0.05}, "accumulated": {"accumulate": 2},
           "poisoned": {"poisoned": True}, "bf16": {"precision": "bf16-mixed"}, "float16": {"precision": "16-mixed"},
           "float16_poisoned": {"precision": "16-mixed", "poisoned": True},
           "bf16_accumulated": {"precision": "bf16-mixed", "accumulate": 2},
           "float16_accumulated": {"precision": "16-mixed", "accumulate": 2},
           "float16_accumulated_poisoned": {"precision": "16-mixed", "accumulate": 2, "poisoned": True},
           "eager": {"eager": True}, "eager_accumulated": {"eager": True, "accumulate": 2},
           "eager_float16_accumulated": {"precision": "16-mixed", "accumulate": 2, "eager": True}}
def trained():
    return {"two_layer64": jobs.train_two_layer("float64"), "cnn": jobs.train_cnn(directory + "/" + str(len(runs))),
            **{name: jobs.two_layer_with_options(**options) for name, options in OPTIONS.items()}}
runs = []
runs.append(trained())
split = {"step_inputs": [jobs.train_with_step_inputs()]}
early = ud.nn.Linear(5, 3)
early_step = ud.train_step(early, ud.nn.MSELoss(), ud.optim.SGD(early.parameters(), lr=0.1))
ud.distributed.init(devices=["cpu:0", "cpu:1"])
def refusal(make):
    try:
        make()(np.ones((2, 5), np.float32), np.ones((2, 3), np.float32))
    except ud.errors.DistributedError as error:
        return str(error)
def built(**options):
    layer = ud.nn.Linear(5, 3)
    return lambda: ud.train_step(layer, ud.nn.MSELoss(), ud.optim.SGD(layer.parameters(), lr=0.1), **options)
refused = {"built_before": refusal(lambda: early_step)}
place = [ud.distributed.rank(), ud.distributed.world_size(), ud.distributed.num_replicas()]
with jobs.keras_step_graphs() as made:
    runs.append(trained())
split["step_inputs"].append(jobs.train_with_step_inputs())
split.update(too_small=jobs.too_small_step_batches(), uneven=jobs.uneven_step_loss())
names = [op.name for graph in made for f in getattr(graph, "concrete_functions", []) for op in f.graph.get_operations()]
rng = np.random.default_rng(2)
x, y = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
model = ud.models.TwoLayerNet(5, 7, 3)
before = ud.to_numpy(model(x))
step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
loss = [float(ud.to_numpy(step(x, y))), float(np.mean((before - y) ** 2))]
too_small = jobs.too_small_last_batch()
# batch norm: one step's running statistics, its starting weights and its batch (compared with torch's from the
# first replica's share, as in TWO_DEVICES)
normed = ud.nn.Sequential(ud.nn.Linear(5, 4), ud.nn.BatchNorm1d(4), ud.nn.Linear(4, 3))
initial = {k: np.asarray(ud.to_numpy(v)) for k, v in normed.state_dict().items()}
ud.train_step(normed, ud.nn.MSELoss(), ud.optim.SGD(normed.parameters(), lr=0.0))(x * 2 + 1, y)
batch_norm = {"initial": {k: v.tolist() for k, v in initial.items()}, "batch": (x * 2 + 1).tolist(),
              **{name: np.asarray(ud.to_numpy(normed.state_dict()["1." + name])).tolist()
                 for name in ("running_mean", "running_var", "num_batches_tracked")}}
ud.distributed.shutdown()
refused["after_shutdown"] = refusal(lambda: step)
def listed(weights):
    return {k: np.asarray(v).tolist() for k, v in weights.items()}
one, two = ({"two_layer64": listed(run["two_layer64"]), "cnn": listed(run["cnn"][0]), "cnn_logs": run["cnn"][1],
             **{name: run[name] for name in OPTIONS}} for run in runs)
print(json.dumps({"place": place, "loss": loss, "too_small": too_small, "batch_norm": batch_norm,
                  "refused": refused, "replica_1_ops": sum(n.startswith("replica_1/") for n in names),
                  "one": one, "two": two, "split": split}))
"""


def _agree(weights, expected, bound):
    assert weights.keys() == expected.keys()
    worst = max(max_relative_difference(weights[name], expected[name]) for name in expected)
    assert worst <= bound, worst


@pytest.mark.skipif("tensorflow" not in ud.available_backends(), reason="the tensorflow backend is not installed")
def test_two_devices_of_one_process_train_the_weights_of_one_device_with_the_same_global_batch():
    import numpy as np

    found = last_json_line(run_python(TWO_DEVICES, env={"UNIDL_NUM_THREADS": "1"}).stdout)
    assert found["place"] == [0, 1, 2]  # one process, two replicas
    assert found["replica_1_ops"] > 0  # the step's graph runs a second replica (not one device silently)
    # each replica ran on its own share of the 6 samples: the outputs are the 3 + 3 rows (not 6 + 6), the loss
    # the whole batch's mean
    outputs, expected = (np.asarray(rows) for rows in found["outputs"])
    assert outputs.shape == expected.shape == (6, 3)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    assert found["loss"][0] == pytest.approx(found["loss"][1], rel=1e-5)
    as_arrays = {key: {name: np.asarray(value) for name, value in weights.items()}
                 for key, weights in (*found["one"].items(), ("cnn", found["one_cnn"]))}
    trained = {key: {name: np.asarray(value) for name, value in weights.items()}
               for key, weights in (*found["two"].items(), ("cnn", found["two_cnn"]))}
    _agree(trained["two_layer64"], as_arrays["two_layer64"], 1e-12)  # Adam, global batch 4 split 2 + 2
    _agree(trained["cnn"], as_arrays["cnn"], 1e-6)  # float32, fit with SGD + momentum, batches 8, 8, 4
    np.testing.assert_allclose(found["two_loss"], found["one_loss"], rtol=1e-6)  # the logs: whole-batch means
    # fit's training metrics, computed in the step's graph (Backend.summary_in_step) from the whole batch's outputs
    # once the replicas' are combined: one device's (a replica's own statistics averaged or concatenated were not)
    one_history, two_history = found["one_history"], found["two_history"]
    assert set(two_history) == set(one_history) == {"loss", "accuracy", "f1", "precision_micro", "auc", "lr"}
    for name in ("accuracy", "f1", "precision_micro"):
        assert two_history[name] == one_history[name], (name, two_history[name], one_history[name])
    np.testing.assert_allclose(two_history["auc"], one_history["auc"], rtol=1e-6)
    assert "fewer samples than replicas" in found["too_small"] and "drop_last=True" in found["too_small"]
    # batch norm's running statistics: the first replica's share's, counted once (each replica wrote them in turn,
    # chaining two updates and counting the batch twice), as torch DDP keeps rank 0's buffers
    norm = found["batch_norm"]
    reference_mean, reference_var = _batch_norm_of_the_first_share(norm)
    mean = np.abs(np.asarray(norm["running_mean"]) - reference_mean).max()
    var = np.abs(np.asarray(norm["running_var"]) - reference_var).max()
    assert norm["num_batches_tracked"] == 1 and mean < 1e-6 and var < 1e-6, (norm, mean, var)
    # a mode read in the replica threads keys the step as in one thread: built again after eval(), no dropout
    assert found["modes"]["traces"] == [1, 2]
    assert found["modes"]["loss"][0] == pytest.approx(found["modes"]["loss"][1], rel=1e-6)
    # a step of this group is refused after shutdown(), and one built before init(devices=...), as a job's
    refused = found["refused"]
    assert "built before this process joined its data-parallel job (rank 0 of 1 on tensorflow, devices ['cpu:0', " \
           "'cpu:1'])" in refused["built_before"], refused
    assert "that this process has left" in refused["after_shutdown"], refused
    _check_the_batch_split(found["split"])
    _check_mixed_precision_windows(*found["mixed"])


def _check_mixed_precision_windows(one, two):
    """Mixed precision with ``accumulate=2`` on two devices of one process (``jobs.two_layer_with_options``, one
    device's run ``one`` and two devices' ``two``): the replicas share one window, the job's gradients added to it
    once per micro-step, and its update runs once; the weights of one device within one unit in the last place of
    the compute dtype (bfloat16 2 ** -7, float16 2 ** -10: the forward rounds a share of 3 rows, not 6), each call's
    flag and the loss scale one device's, the losses to the same bound (the poisoned window skipped, its scale halved),
    eagerly too."""
    import numpy as np

    for name, bound in (("bf16_accumulated", 2 ** -7), ("float16_accumulated", 2 ** -10),
                        ("float16_accumulated_poisoned", 2 ** -10), ("eager_float16_accumulated", 2 ** -10)):
        _agree({k: np.asarray(v) for k, v in two[name]["weights"].items()},
               {k: np.asarray(v) for k, v in one[name]["weights"].items()}, bound)
        assert (two[name]["finite"], two[name]["scale"]) == (one[name]["finite"], one[name]["scale"]), name
        np.testing.assert_allclose(two[name]["losses"], one[name]["losses"], rtol=bound, err_msg=name)
    # each window of 2 micro-steps updates once (a window added to by each replica would be twice as long)
    assert one["float16_accumulated"]["finite"] == [True] * 6
    assert one["float16_accumulated_poisoned"]["finite"] == [True, False, True, True, True, True]
    assert one["float16_accumulated_poisoned"]["scale"] == one["float16_accumulated"]["scale"] / 2


def _check_the_batch_split(split):
    """What ``_split_over_replicas`` cuts and what it refuses, on either backend's job (``split``: from the jobs'
    ``train_with_step_inputs`` on one device then two, ``too_small_step_batches`` and ``uneven_step_loss``)."""
    import numpy as np

    # an extra step input (a (2,) scale) reaches every replica whole, as every process of a job gets it: the
    # weights and losses of one device (cut into shares like x, each replica's entry broadcast: 0.18 away)
    one, two = split["step_inputs"]
    for weights in ("weights", "fit_weights"):
        _agree({k: np.asarray(v) for k, v in two[weights].items()},
               {k: np.asarray(v) for k, v in one[weights].items()}, 1e-5)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    np.testing.assert_allclose(two["fit_loss"], one["fit_loss"], rtol=1e-5)
    # a batch smaller than the devices: the DistributedError fit's loader check gives, before any weight changes
    # (a replica's empty share made a NaN loss: NonFiniteLossError naming the learning rate, or with
    # check_finite=False a NaN loss and a silently skipped step), whether or not the step checks finiteness
    # (checked inside the graph, traced for any batch size; an eager step's when traced, its size known then)
    for case, found in split["too_small"].items():
        assert found["result"].startswith("DistributedError: with 2 devices in this process, a batch (size 1) has "
                                          "fewer samples than replicas, so a device would train on none"), found
        assert "drop_last=True" in found["result"] and not found["changed"], (case, found)
        assert isinstance(found["then"], float) and np.isfinite(found["then"]), found  # (a batch of 2 trains)
    # an uneven split (5 samples: 2 + 3): the loss is the shares' average, the objective whose gradient the step
    # applies (DDP's rank losses'), on the tensorflow backend and on Keras-on-TensorFlow alike
    uneven = split["uneven"]
    assert abs(uneven["shares"] - uneven["whole"]) > 1e-2  # (the case tells them apart)
    assert uneven["loss"] == pytest.approx(uneven["shares"], rel=1e-6)
    assert uneven["fit_loss"] == pytest.approx(uneven["shares"], rel=1e-6)  # (fit's logs: Keras's loss tracker)
    # eager=True too: each replica on its own share (the whole batch on each replica gave the whole batch's mean)
    assert uneven["eager_loss"] == pytest.approx(uneven["shares"], rel=1e-6)
    assert uneven["eager_fit_loss"] == pytest.approx(uneven["shares"], rel=1e-6)


def _batch_norm_of_the_first_share(norm):
    """The running mean and variance that torch's BatchNorm keeps after the first replica's share (the first 3
    rows) of ``norm``'s batch, from its starting weights: torch's DistributedDataParallel keeps rank 0's buffers."""
    import numpy as np
    import torch

    reference = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    reference.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in norm["initial"].items()})
    reference(torch.tensor(np.asarray(norm["batch"], np.float32)[:3]))
    return reference[1].running_mean.numpy(), reference[1].running_var.numpy()


@pytest.mark.keras_framework("tensorflow")
@pytest.mark.skipif("keras" not in ud.available_backends(), reason="the keras backend is not installed")
def test_two_devices_of_one_process_train_keras_on_tensorflow_as_one_device_with_the_same_global_batch():
    """Keras-on-TensorFlow over ``MirroredStrategy``: Keras's forward and backward in each replica on its share of
    the batch, the gradients summed over the replicas (Keras scales each replica's loss by 1 / replicas: their
    mean), then ONE update per step (not one per replica) with the non-finite guard, clipping, accumulation and
    the loss scaler deciding on the job's gradients, as the tensorflow backend's step under the same strategy."""
    import numpy as np

    found = last_json_line(run_python(KERAS_TWO_DEVICES, env={"UNIDL_NUM_THREADS": "1",
                                                              "KERAS_BACKEND": "tensorflow"}).stdout)
    assert found["place"] == [0, 1, 2]  # one process, two replicas
    assert found["replica_1_ops"] > 0  # Keras's step graph runs a second replica (not one device silently)
    one, two = found["one"], found["two"]

    def arrays(weights):
        return {name: np.asarray(value) for name, value in weights.items()}

    _agree(arrays(two["two_layer64"]), arrays(one["two_layer64"]), 1e-12)  # Adam, global batch 4 split 2 + 2
    _agree(arrays(two["cnn"]), arrays(one["cnn"]), 1e-6)  # float32, fit with SGD + momentum, batches 8, 8, 4
    for key in ("loss", "accuracy", "f1", "precision_micro", "auc"):  # the logs: the whole batches' (each replica
        # adds its share to the same trackers, read after both: not one replica's, nor a mean of the two)
        np.testing.assert_allclose(two["cnn_logs"][key], one["cnn_logs"][key], rtol=1e-6, err_msg=key)
    # the options, float32: the weights, each step's flag and loss of one device with the whole batch. Poisoned:
    # the second replica's share is not finite, and the step is skipped as one device skips it
    for name in ("plain", "clipped", "accumulated", "poisoned"):
        _agree(arrays(two[name]["weights"]), arrays(one[name]["weights"]), 1e-6)
        assert two[name]["finite"] == one[name]["finite"], name
        np.testing.assert_allclose(two[name]["losses"], one[name]["losses"], rtol=1e-6, err_msg=name)
    assert one["poisoned"]["finite"][0] is False and one["accumulated"]["finite"] == [True] * 6
    # mixed precision: the forward's rounding differs with the share (a weight's gradient sums 3 rows, not 6, in
    # the compute dtype): within one unit in the last place of bfloat16 (2 ** -7) and float16 (2 ** -10); the
    # loss scaler's decisions and its scale those of one device (the poisoned step skipped, the scale halved)
    for name, bound in (("bf16", 2 ** -7), ("float16", 2 ** -10), ("float16_poisoned", 2 ** -10)):
        _agree(arrays(two[name]["weights"]), arrays(one[name]["weights"]), bound)
        assert (two[name]["finite"], two[name]["scale"]) == (one[name]["finite"], one[name]["scale"]), name
    assert one["float16_poisoned"]["finite"][0] is False
    assert one["float16_poisoned"]["scale"] == one["float16"]["scale"] / 2
    # and with accumulate=2 (the tensorflow backend's rule: test_two_devices_of_one_process_train_the_weights_...)
    _check_mixed_precision_windows(one, two)
    # eager=True: Keras's train step run by Python in the strategy's replicas (Keras's own eager train_on_batch
    # runs outside them, and was refused), the weights, flags and losses of one device
    for name in ("eager", "eager_accumulated"):
        _agree(arrays(two[name]["weights"]), arrays(one[name]["weights"]), 1e-6)
        assert two[name]["finite"] == one[name]["finite"], name
        np.testing.assert_allclose(two[name]["losses"], one[name]["losses"], rtol=1e-6, err_msg=name)
    # a step's loss is the whole batch's mean (each replica returns its share's)
    assert found["loss"][0] == pytest.approx(found["loss"][1], rel=1e-5)
    assert "fewer samples than replicas" in found["too_small"] and "drop_last=True" in found["too_small"]
    # batch norm's running statistics: the first replica's share's, counted once
    norm = found["batch_norm"]
    mean, var = _batch_norm_of_the_first_share(norm)
    assert norm["num_batches_tracked"] == 1, norm
    np.testing.assert_allclose(norm["running_mean"], mean, atol=1e-6)
    np.testing.assert_allclose(norm["running_var"], var, atol=1e-6)
    refused = found["refused"]
    assert "built before this process joined its data-parallel job (rank 0 of 1 on keras, devices ['cpu:0', " \
           "'cpu:1'])" in refused["built_before"], refused
    assert "that this process has left" in refused["after_shutdown"], refused
    _check_the_batch_split(found["split"])


def test_several_devices_in_one_process_elsewhere_is_a_clear_error(backend):
    expected = {"tensorflow": (DeviceUnavailableError, r"devices \['cpu:7'\] are not among TensorFlow's "
                                                       r"logical devices here \(cpu:0"),
                "torch": (DistributedError, r"torch backend trains one device per process .*launch\(fn, nprocs=2\)"),
                "jax": (DistributedError, "the jax backend cannot train on several devices of one process")}
    on_tensorflow = backend == "tensorflow"
    if backend == "keras":
        from tests.distributed.jobs import _framework

        # Keras-on-TensorFlow trains on TensorFlow's logical devices (test_two_devices_of_one_process_train_keras_on_
        # tensorflow_...); Keras-on-torch and Keras-on-JAX have no engine of replicas in one process
        on_tensorflow = _framework() == "tensorflow"
        expected["keras"] = (expected["tensorflow"] if on_tensorflow else
                             (DistributedError, rf"the keras backend trains one device per process on "
                                                rf"Keras-on-{_framework()} \(devices=\['cpu:0', 'cpu:1'\] in one "
                                                rf"process is not available: its engine runs no replicas of Keras's "
                                                rf"step in one process\); use KERAS_BACKEND=tensorflow"))
    error, message = expected[backend]
    with pytest.raises(error, match=message):
        ud.distributed.init(devices=["cpu:0", "cpu:7" if on_tensorflow else "cpu:1"])
    assert not ud.distributed.is_initialized()


def test_bad_devices_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="devices must be a list of device names"):
        ud.distributed.init(devices="cpu:0")
    with pytest.raises(ValueError, match="two or more devices"):
        ud.distributed.init(devices=["cpu:0"])
    assert not ud.distributed.is_initialized()
