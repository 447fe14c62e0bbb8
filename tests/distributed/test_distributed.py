"""Data-parallel training with 2 real local processes on each engine (torch's gloo; TensorFlow's
MultiWorkerMirroredStrategy, on the tensorflow backend and on Keras-on-TensorFlow; jax.distributed with XLA's gloo
CPU collectives), against the same training
in one process; gradient accumulation and the non-finite guard under torch's DistributedDataParallel; and the
clear errors of ``unidl.distributed`` on every backend.

Each launch starts interpreters that import a framework (TensorFlow: ~5 s each), so per engine the 2-rank
properties (on torch's, the accumulation and guard checks too), and then a rank that raises, are checked by one
launched job (``jobs.data_parallel_job_then_failure``).
"""

import json
import multiprocessing
import os
import pickle
import socket
import sys

import numpy as np
import pytest

import unidl as ud
from unidl.errors import DistributedError, DistributedNotInitializedError
from unidl.testing import max_relative_difference

from tests.distributed import jobs

pytestmark = [pytest.mark.skipif("torch" not in ud.available_backends(), reason="the torch backend is not installed"),
              pytest.mark.heavy]  # tens of seconds: run first (tests/conftest.py)

ENGINES = ["torch"] + [pytest.param(name, marks=pytest.mark.skipif(
    name not in ud.available_backends(), reason=f"the {name} backend is not installed"))
    for name in ("tensorflow", "keras", "jax")]  # keras: Keras-on-TensorFlow (KERAS_BACKEND unset), on tf.distribute


def _agree(weights, expected, bound):
    assert weights.keys() == expected.keys()
    worst = max(max_relative_difference(weights[name], expected[name]) for name in expected)
    assert worst <= bound, worst


# float16 (11 bits) rounds the products of half batches unlike the whole batch's: 1e-4 to 7e-4 measured over 4 to
# 10 updates; a skipped step applied, or a sum over the ranks where their mean belongs, is 0.38 away or more
FLOAT16_BOUND = 5e-3

# One launch serves the backends of one engine: its ranks join TensorFlow's strategy once and train on the
# tensorflow backend, then on Keras-on-TensorFlow, which carries Keras's step on the same strategy.
FAILURE_BOUND = 300  # seconds: the launcher's timeout, and the ranks' collective timeout (see _launch)
LAUNCHES = {"torch": ("torch",), "tensorflow": ("tensorflow", "keras"), "keras": ("tensorflow", "keras"),
            "jax": ("jax",)}
# and the torch launch also runs the accumulation and guard checks of DDP (below): a launch of their own would start
# 2 more interpreters that import torch; the jax launch trains Keras-on-JAX too, its ranks' Keras on JAX
EXTRA_JOBS = {"torch": jobs.accumulation_and_guard_job, "jax": jobs.keras_on_jax_job}
# the jax launch's failing rank is stuck (alive, calling no collective) rather than raising: the jax engine's watchdog
# must end the rank waiting for it after this collective timeout (seconds), where gloo inside XLA would wait for ever
STUCK_TIMEOUT = {"jax": 3.0}
# and with 2 CPU devices each: a rank trains on its own first one (this runs none of the GPU choice, which is
# unit-tested only: test_the_jax_engine_gives_each_local_rank_its_own_gpu_of_several)
RANK_ENVIRONMENT = {"jax": {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}}


def _keras_on_tensorflow() -> bool:
    return "keras" in ud.available_backends() and ud.backends.load("keras").host.name == "tensorflow"


def _launch(backends, directory):
    """The same training in this process on each of ``backends``, then one 2-rank job
    (``jobs.data_parallel_job_then_failure``) training on each of them in turn, on the first one's engine (and
    running that engine's ``EXTRA_JOBS``)."""
    references, job_args = {}, {}
    for backend in backends:
        place = directory / backend
        with ud.use_backend(backend):
            reference, history = jobs.train_cnn(place / "one")
            two_layer = {dtype: jobs.train_two_layer(dtype) for dtype in ("float32", "float64")}
            two_layer["bf16-mixed"] = jobs.train_two_layer("float32", "bf16-mixed")
            two_layer["accumulate"] = jobs.train_two_layer("float64", accumulate=2)
            two_layer["bf16_accumulate"] = jobs.train_two_layer("float32", "bf16-mixed", accumulate=2)
            two_layer["dynamic"] = jobs.train_dynamic_accumulating()
            two_layer["fp16_accumulate"] = jobs.train_two_layer("float32", jobs.HALF_BATCH_FLOAT16, accumulate=2)
            eager = jobs.eager_training()
            float16 = jobs.train_float16(place / "float16" / "one")
            cnn64 = jobs.train_cnn_float64()
        files = sorted(os.listdir(place / "one"))
        references[backend] = {"engine": backend, "reference": reference, "history": history, "directory": place,
                               "two_layer": two_layer, "cnn64": cnn64, "files": files, "float16": float16,
                               "eager": eager,
                               "float16_files": sorted(os.listdir(place / "float16" / "one"))}
        job_args[backend] = (str(place / "two"), str(place / "one_to_two"), str(place / "one" / files[0]),
                             str(place / "float16"))
    results = directory / "results"
    results.mkdir()
    failure = None
    environment = {name: os.environ.get(name) for name in RANK_ENVIRONMENT.get(backends[0], {})}
    # (the ranks' own: this process's Keras is imported); XLA_FLAGS beside those the ranks would inherit
    os.environ.update({name: " ".join(filter(None, (value, environment[name]))) if name == "XLA_FLAGS" else value
                       for name, value in RANK_ENVIRONMENT.get(backends[0], {}).items()})
    try:
        # a collective waits as long as the whole job may take: rank 0, left in a barrier by the failing rank, can
        # then only end before the launcher's own timeout if the launcher stops it
        ud.distributed.launch(jobs.data_parallel_job_then_failure, nprocs=2, backend=backends[0], timeout=FAILURE_BOUND,
                              collective_timeout=FAILURE_BOUND,
                              args=(str(results), 1, job_args, EXTRA_JOBS.get(backends[0]),
                                    STUCK_TIMEOUT.get(backends[0])))
    except DistributedError as error:
        failure = str(error)
    finally:
        for name, value in environment.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    children = multiprocessing.active_children()
    written = sorted(os.listdir(results))
    assert written == ["rank0.pickle", "rank1.pickle"], f"the job failed before its planted failure: {failure}"
    ranks = []
    for name in written:
        with open(results / name, "rb") as file:
            ranks.append(pickle.load(file))
    return {backend: dict(references[backend], ranks=[rank[backend] for rank in ranks], failure=failure,
                          children=children, extra=[rank.get("extra") for rank in ranks]) for backend in backends}


@pytest.fixture(scope="module")
def launches():
    """The jobs launched so far, by the backends they trained on."""
    return {}


def _job(backend, launches, tmp_path_factory):
    if backend == "keras" and not _keras_on_tensorflow():
        pytest.skip("Keras runs on another framework here (KERAS_BACKEND); data-parallel keras is Keras-on-"
                    "TensorFlow (the error elsewhere: test_a_backend_without_an_engine_says_so_...)")
    backends = tuple(name for name in LAUNCHES[backend] if name != "keras" or _keras_on_tensorflow())
    if backends not in launches:
        try:
            launches[backends] = _launch(backends, tmp_path_factory.mktemp(f"distributed-{backends[0]}"))
        except Exception as error:
            # kept: every other test of this launch fails with it at once, where each launched the job again and
            # waited up to FAILURE_BOUND for it (a job past its timeout cost minutes per test)
            launches[backends] = error
            raise
    launched = launches[backends]
    if isinstance(launched, Exception):
        raise AssertionError(f"the 2-rank job on {backends[0]}'s engine failed in an earlier test (launched once): "
                             f"{launched}") from launched
    return launched[backend]


@pytest.fixture(scope="module", params=ENGINES)
def job(request, launches, tmp_path_factory):
    """The 2-rank job's results on a backend, and the same training in this process."""
    return _job(request.param, launches, tmp_path_factory)


def test_eager_training_in_a_job_trains_the_weights_of_one_process(job):
    """``eager=True`` (``jobs.eager_training``) on every engine, against the same eager training in one process:
    the two-layer net in float64 (1e-12), with ``accumulate=2`` (each rank's window reduced once per update) and
    float16's with it, and the CNN through ``fit`` (float32, 1e-6; its logs the job's means); both ranks alike.
    On Keras-on-TensorFlow Keras's step runs by Python in the strategy's replica context (Keras's own eager
    ``train_on_batch`` and ``Model.fit`` run outside it, where the gradients were averaged over no rank: refused)."""
    rank0, rank1 = job["ranks"]
    for name, reference, bound in (("eager_two_layer64", "eager_two_layer64", 1e-12),
                                   ("eager_two_layer_accumulate", "eager_two_layer_accumulate", 1e-12),
                                   ("eager_two_layer_fp16_accumulate", "eager_two_layer_fp16_accumulate",
                                    FLOAT16_BOUND)):
        assert all(np.array_equal(v, rank1[name][k]) for k, v in rank0[name].items()), name
        _agree(rank0[name], job["eager"][reference], bound)
    (weights0, logs0), (weights1, logs1) = rank0["eager_cnn"], rank1["eager_cnn"]
    for name, value in weights0.items():
        np.testing.assert_array_equal(value, weights1[name], err_msg=name)
    _agree(weights0, job["eager"]["eager_cnn"][0], 1e-6)
    for key, values in job["eager"]["eager_cnn"][1].items():
        np.testing.assert_allclose(logs0[key], values, rtol=1e-6, err_msg=key)
    # the eager float16 window against the compiled one in one process: the same rule
    _agree(rank0["eager_two_layer_fp16_accumulate"], job["two_layer"]["fp16_accumulate"], FLOAT16_BOUND)


@pytest.mark.skipif(not {"keras", "jax"} <= set(ud.available_backends()), reason="keras or jax is not installed")
def test_keras_on_jax_trains_data_parallel_on_the_jax_engine(launches, tmp_path_factory):
    """``jobs.keras_on_jax_job``: Keras's jitted train step on JAX, its loss and gradients averaged inside it, gives
    the weights of one process (the jax backend's: Keras-on-JAX's one-process training of this net gives them bit
    for bit), on both ranks alike; a sum over the ranks where their mean belongs would be a step twice as long."""
    job = _job("jax", launches, tmp_path_factory)
    rank0, rank1 = job["extra"]
    assert rank0["framework"] == rank1["framework"] == "jax"
    assert rank0["local_cpus"] == rank1["local_cpus"] == 2  # (RANK_ENVIRONMENT: each rank's own first one trains)
    assert rank0["threads"] == rank1["threads"] == 1  # XLA's thread flags, set before the ranks imported jax
    _check_all_reduced((rank0, rank1))
    # launch(collective_timeout=) reached init(timeout=) and the job's watchdog (the failing job then lowers it)
    assert rank0["watchdog_timeout"] == rank1["watchdog_timeout"] == FAILURE_BOUND
    # float16 with accumulate=2 against the same training in bf16-mixed in one process (no second run of its own:
    # 8e-3 apart measured, 6e-4 of it the job's; a sum over the ranks where their mean belongs is 0.45 away)
    for name, reference, bound in (("two_layer64", "float64", 1e-12), ("two_layer32", "float32", 1e-6),
                                   ("two_layer_accumulate", "accumulate", 1e-12), ("two_layer_bf16", "bf16-mixed", 2e-2),
                                   ("two_layer_fp16_accumulate", "bf16_accumulate", 2e-2)):
        assert all(np.array_equal(v, rank1[name][k]) for k, v in rank0[name].items()), name
        _agree(rank0[name], job["two_layer"][reference], bound)
    # eager=True (Keras's train step run eagerly, its jax engine's average inside it) against the jax backend's
    # eager training in one process
    for name, bound in (("eager_two_layer64", 1e-12), ("eager_two_layer_accumulate", 1e-12),
                        ("eager_two_layer_fp16_accumulate", FLOAT16_BOUND)):
        assert all(np.array_equal(v, rank1[name][k]) for k, v in rank0[name].items()), name
        _agree(rank0[name], job["eager"][name], bound)
    # one collective per step (10), rank 0's weights broadcast at the compile and the loader's seed; with
    # accumulate=2 one per window (5: each rank's window reduced where it closes, 10 when every micro-step was);
    # float16 alike, Keras's loss scaler checking the job's window, or step, for overflow (its check of each rank's
    # own, agreed, and then their average were two per update): 2 windows and the broadcast of a guarded run, 3
    # steps and the broadcast of one whose first step overflows on rank 1 only
    assert rank0["all_reduces"] == rank1["all_reduces"] == {"two_layer64": 12, "two_layer_accumulate": 7,
                                                            "two_layer_fp16_accumulate": 7, "guarded_fp16_window": 3,
                                                            "fp16_overflow": 4}
    # that overflow of rank 1's share skips the step on every rank and halves every rank's scale, as in one process
    # (test_keras_float16_overflow_on_one_rank_skips_the_step_on_every_rank)
    (weights0, scale0, flags0), (weights1, scale1, flags1) = rank0["fp16_overflow"], rank1["fp16_overflow"]
    assert (scale0, flags0) == (scale1, flags1) == (128.0, [False, True, True])
    for name in weights0:
        np.testing.assert_array_equal(weights0[name], weights1[name])
    (start0, end0), (start1, end1) = rank0["batch_norm"], rank1["batch_norm"]  # from rank 0's weights, alike
    assert not np.array_equal(start0["0.weight"], start1["0.weight"])
    for name, value in end0.items():
        np.testing.assert_array_equal(value, end1[name], err_msg=name)
    # a layer only rank 1's forward runs: zeros for it on rank 0 (one collective of the same values on every rank,
    # where its gradient missing from rank 0's was a gloo "collective mismatch" abort), as the jax backend's step
    ((start, keras0), (_, jax0)), ((_, keras1), _) = rank0["one_rank_layer"], rank1["one_rank_layer"]
    for name, value in keras0.items():
        np.testing.assert_array_equal(value, keras1[name], err_msg=name)
    _agree(keras0, jax0, 1e-12)
    assert not np.array_equal(keras0["middle.weight"], start["middle.weight"])
    # the guard over a window, as torch's engine: rank 1's loss infinite (its gradients finite) at the first
    # window's first micro-step skips that window only, and at the second window's last micro-step that window
    # and a float16 window so skipped (rank 1's loss infinite at its first micro-step) halves every rank's scale
    # once (256 to 128), the next window's update counting one finite step
    for name, finite, skipped in (("guarded_windows", [True, False, True, False, True, True], 4),
                                  ("guarded_fp16_window", [True, False, True, True], 2)):
        guarded0, guarded1 = rank0[name], rank1[name]
        assert guarded0["finite"] == guarded1["finite"] == finite, name
        assert guarded0["updates"] == guarded1["updates"] == 1, name
        for index, weights in enumerate(guarded0["weights"]):
            for key, value in weights.items():
                np.testing.assert_array_equal(value, guarded1["weights"][index][key], err_msg=f"{name} {index}: {key}")
                if index < skipped:  # (the skipped windows changed nothing)
                    np.testing.assert_array_equal(value, guarded0["start"][key], err_msg=f"{name} {index}: {key}")
    assert rank0["guarded_fp16_window"]["loss_scaler"] == rank1["guarded_fp16_window"]["loss_scaler"] == {
        "scale": 128.0, "growth_tracker": 1}


@pytest.mark.skipif("keras" not in ud.available_backends(), reason="the keras backend is not installed")
def test_keras_float16_overflow_on_one_rank_skips_the_step_on_every_rank(launches, tmp_path_factory):
    # Keras's loss scaler checks a rank's own gradients: only rank 1's share overflows, and the decision must be
    # the job's (a rank applying the step alone would wait for ever in the update's all-reduce, or diverge)
    ranks = _job("keras", launches, tmp_path_factory)["ranks"]
    with ud.use_backend("keras"):
        weights, scale, flags = jobs.float16_overflow_on_one_rank()
    assert (scale, flags) == (128.0, [False, True, True])  # one process: the overflowing step skipped, scale halved
    (weights0, scale0, flags0), (weights1, scale1, flags1) = (rank["fp16_overflow"] for rank in ranks)
    assert (scale0, flags0) == (scale1, flags1) == (scale, flags)
    for name in weights0:
        np.testing.assert_array_equal(weights0[name], weights1[name])
    _agree(weights0, weights, 1e-2)  # float16 products of half batches round unlike the whole batch's


@pytest.mark.parametrize("backend", [pytest.param(name, marks=pytest.mark.skipif(
    name not in ud.available_backends(), reason=f"the {name} backend is not installed"))
    for name in ("tensorflow", "keras", "torch", "jax")])
def test_a_losss_own_parameters_train_as_in_one_process_with_rank_0s_weights_broadcast_once(backend, launches,
                                                                                            tmp_path_factory):
    """A loss whose own parameters the optimizer trains beside the model's (``jobs.TemperedLoss``: a learned
    temperature and column weights) through ``fit`` over 2 epochs, compiled and eager, on each engine
    (``jobs.loss_parameters_trained``): the model's and the loss's parameters those of one process with the same
    global batch, both ranks bit for bit (torch's DDP wrapped the model only: each rank trained the loss's on its own
    gradient, 5e-2 apart). On the torch, tensorflow and jax backends rank 1 builds its loss apart: rank 0's loss
    parameters are broadcast with its model's (they were not). On TensorFlow's engine rank 0's weights are broadcast
    once per fit, when the model joins the job's step: an eager fit on Keras-on-TensorFlow broadcast them again at
    every epoch, overwriting each rank's own state since (BatchNorm's running statistics) with rank 0's."""
    ranks = _job(backend, launches, tmp_path_factory)["ranks"]
    with ud.use_backend(backend):
        expected = {eager: jobs.fit_with_loss_parameters(eager) for eager in (False, True)}
    for eager, reference in expected.items():
        assert abs(float(reference["loss.temperature"]) - 1.5) > 1e-3  # (the loss's parameters moved)
        (weights0, broadcasts0), (weights1, broadcasts1) = (rank["loss_parameters"][eager] for rank in ranks)
        for name in reference:
            np.testing.assert_array_equal(weights0[name], weights1[name], err_msg=f"eager={eager}: {name}")
        _agree(weights0, reference, 1e-6)
        if broadcasts0 is not None:  # (counted on TensorFlow's engine): the model's 4 parameters, and on the
            # tensorflow backend the loss's 2, once
            assert broadcasts0 == broadcasts1 == [4 if backend == "keras" else 6], (eager, broadcasts0)


def test_two_ranks_with_global_batch_b_train_the_weights_of_one_process_with_batch_b(job):
    rank0, rank1 = job["ranks"]
    assert [(r["rank"], r["world_size"], r["is_main"]) for r in job["ranks"]] == [(0, 2, True), (1, 2, False)]
    for name in job["reference"]:  # the engine gives both ranks the same averaged gradients
        np.testing.assert_array_equal(rank0["cnn"][name], rank1["cnn"][name])
    _agree(rank0["cnn"], job["reference"], 1e-6)
    _agree(rank0["two_layer32"], job["two_layer"]["float32"], 1e-6)
    _agree(rank0["two_layer64"], job["two_layer"]["float64"], 1e-12)
    # accumulate=2 (each rank's window averaged once per update, as DDP's no_sync): the same weights
    _agree(rank0["two_layer_accumulate"], job["two_layer"]["accumulate"], 1e-12)
    assert all(np.array_equal(v, rank1["two_layer_accumulate"][k]) for k, v in rank0["two_layer_accumulate"].items())
    # a layer skipped in some micro-steps (by a graph loop on tensorflow): torch's rule, as in one process
    _agree(rank0["dynamic_accumulate"], job["two_layer"]["dynamic"], 1e-12)
    assert all(np.array_equal(v, rank1["dynamic_accumulate"][k]) for k, v in rank0["dynamic_accumulate"].items())
    # the ranks' loops run different numbers of times: every rank updates a layer that any rank used (DDP's rule)
    assert all(np.array_equal(v, rank1["dynamic_per_rank"][k]) for k, v in rank0["dynamic_per_rank"].items())
    # and in bf16-mixed (its own window): to bfloat16's rounding of half batches
    _agree(rank0["two_layer_bf16_accumulate"], job["two_layer"]["bf16_accumulate"], 2e-2)
    assert all(np.array_equal(v, rank1["two_layer_bf16_accumulate"][k])
               for k, v in rank0["two_layer_bf16_accumulate"].items())
    # float16 with accumulate=2 (each rank's window reduced once per update, before the loss scaler's check; on
    # Keras-on-TensorFlow too, whose scaler's check and update then reduce nothing again): one process's weights
    _agree(rank0["two_layer_fp16_accumulate"], job["two_layer"]["fp16_accumulate"], FLOAT16_BOUND)
    assert all(np.array_equal(v, rank1["two_layer_fp16_accumulate"][k])
               for k, v in rank0["two_layer_fp16_accumulate"].items())
    # a float16 window that one rank's micro-step made non-finite: skipped at its update on both ranks (the ranks'
    # windows agree in the update's collective), the next window updates (Keras-on-TensorFlow refused float16's
    # window in a job: its loss scaler's update reduced inside a cond)
    poisoned = [rank["poisoned_window"] for rank in job["ranks"]]
    assert [p.get("finite") for p in poisoned] == [[True, False, True, True]] * 2, poisoned
    assert [(p["updates"], p["unchanged"]) for p in poisoned] == [(1, True)] * 2
    assert all(np.array_equal(v, poisoned[1]["weights"][k]) for k, v in poisoned[0]["weights"].items())
    # a checkpoint one micro-step into a window holds the job's window (each rank's sums are its own until the
    # update): resumed on both ranks, the uninterrupted weights (rank 0's sums alone were 1e-2 away)
    for rank in (rank0, rank1):
        _agree(rank["window_checkpointed"]["resumed"], rank["window_checkpointed"]["uninterrupted"], 1e-12)
    # two graphs: the micro-step's without a collective, the update's with them (Keras-on-TensorFlow too: Keras's
    # train step traced once for each place in the window)
    if job["engine"] in ("tensorflow", "keras"):
        for name in ("accumulate_collectives", "bf16_accumulate_collectives", "fp16_accumulate_collectives"):
            counts = sorted(rank0[name])
            assert len(counts) == 2 and counts[0] == 0 and counts[1] > 0, (name, counts)
    # on the jax engine, which counts its collectives: one per call of the step (10), plus rank 0's weights
    # broadcast when the step is built and the loader's seed; with accumulate=2 one all-reduce per update (5), with
    # the window's finite flag, none at the micro-steps between (as DDP's no_sync())
    if job["engine"] == "jax":
        for rank in job["ranks"]:
            assert rank["all_reduces"] == {"two_layer64": 12, "two_layer_bf16": 12, "two_layer_accumulate": 7,
                                           "two_layer_bf16_accumulate": 7}, rank["all_reduces"]
    with ud.use_backend(job["engine"]):
        metrics, predictions = jobs.evaluate_cnn(job["reference"])
    for rank in job["ranks"]:  # evaluate sums over the ranks' shares; predict gives every rank every output
        rank_metrics, rank_predictions = rank["evaluated"]
        assert rank_metrics.keys() == metrics.keys()
        for key, value in metrics.items():
            assert rank_metrics[key] == pytest.approx(value, rel=1e-5)
        assert rank_predictions.shape == predictions.shape == (jobs.CNN_SAMPLES, 3)
        assert max_relative_difference(rank_predictions, predictions) <= 1e-5
    for rank in job["ranks"]:  # fit's logs are the job's means, the same on every rank
        for key, values in job["history"].items():
            np.testing.assert_allclose(rank["history"][key], values, rtol=1e-6)


def test_mixed_precision_steps_average_over_the_ranks_too(job):
    rank0, rank1 = (rank["two_layer_bf16"] for rank in job["ranks"])
    for name in rank0:  # each rank trains on its own share: equal weights mean averaged gradients
        np.testing.assert_array_equal(rank0[name], rank1[name])
    # bfloat16 products of half batches round unlike the whole batch's; a sum over the ranks where their mean
    # belongs (twice the step) would be 0.47 away
    _agree(rank0, job["two_layer"]["bf16-mixed"], 2e-2)


def test_every_sample_once_per_epoch_in_equal_step_counts_reshuffled_per_epoch(job):
    rank0, rank1 = (r["coverage"] for r in job["ranks"])  # 11 samples in batches of 4, seed drawn per process
    for epoch in range(2):
        assert len(rank0[epoch]) == len(rank1[epoch]) == 3
        seen = [i for batch in rank0[epoch] + rank1[epoch] for i in batch]
        assert sorted(seen) == list(range(11))
        for mine, theirs in zip(rank0[epoch], rank1[epoch]):
            assert abs(len(mine) - len(theirs)) <= 1
    assert rank0[0] + rank1[0] != rank0[1] + rank1[1]


def test_an_unshuffled_loaders_drawn_seed_is_rank_0s_on_every_rank(job):
    """The seed of a loader whose batches run the user's code (an augmentation), drawn where it is not given, is
    the job's: each rank drew its own (a rank drawing more in its set-up got another), so a checkpoint, which
    keeps rank 0's, resumed the other ranks' augmentations on another stream."""
    rank0, rank1 = (rank["unshuffled_seed"] for rank in job["ranks"])
    assert rank0 == rank1 is not None


def test_a_batch_norm_model_trains_from_rank_0s_weights_and_buffers(job):
    """``jobs.batch_norm_from_rank_0``: the ranks start from different weights and buffers, and end with the same
    ones, bit for bit (the int64 ``num_batches_tracked`` broadcast exactly: 2 steps after rank 0's 0). TensorFlow
    and Keras-on-TensorFlow raised a ``TypeError`` at the start: one collective of int64 and float32 tensors."""
    (start0, end0), (start1, end1) = (rank["batch_norm"] for rank in job["ranks"])
    assert not np.array_equal(start0["0.weight"], start1["0.weight"])
    assert (start0["1.num_batches_tracked"], start1["1.num_batches_tracked"]) == (0, 5)
    assert end0.keys() == start0.keys()
    for name, value in end0.items():
        np.testing.assert_array_equal(value, end1[name], err_msg=name)
    assert end0["1.num_batches_tracked"] == 2 and end0["1.num_batches_tracked"].dtype == np.int64
    for name in ("0.weight", "1.weight", "1.running_mean", "3.bias"):  # trained from rank 0's start
        assert not np.array_equal(end0[name], start0[name]), name


def test_a_last_batch_smaller_than_the_ranks_is_refused_on_every_rank(job):
    for rank in job["ranks"]:
        assert "fewer samples than ranks" in rank["too_small"] and "drop_last=True" in rank["too_small"]
    # one split unevenly is warned of (test_a_loader_whose_batches_split_unevenly_...), by rank 0 alone
    rank0, rank1 = (rank["uneven"] for rank in job["ranks"])
    assert len(rank0) == 1 and rank0[0].startswith("with 2 ranks, a batch of 3 samples of the loader (11 samples, "
                                                   "batch_size=4) splits unevenly"), rank0
    assert rank1 == []


def test_only_rank_0_writes_checkpoints_and_every_rank_sees_them_afterwards(job):
    rank0, rank1 = job["ranks"]
    assert rank1["written"] == []
    assert rank0["written"][:2] == job["files"] == rank0["files_seen"] == rank1["files_seen"]
    assert sorted(os.listdir(job["directory"] / "two")) == job["files"]
    assert rank0["threads"] == rank1["threads"] == 1  # launch gives each rank one thread
    # and one inter-op thread (torch's and TensorFlow's pool; XLA has none to query)
    inter_op = None if job["engine"] == "jax" else 1
    assert rank0["inter_op_threads"] == rank1["inter_op_threads"] == inter_op


def test_checkpoints_resume_from_two_processes_in_one_and_from_one_in_two(job):
    _agree(job["ranks"][0]["resumed"], job["reference"], 1e-6)  # 1 -> 2
    first = job["directory"] / "two" / job["files"][0]
    with ud.use_backend(job["engine"]):
        resumed, history = jobs.train_cnn(job["directory"] / "two_to_one", resume_from=str(first))  # 2 -> 1
    _agree(resumed, job["reference"], 1e-6)
    np.testing.assert_allclose(history["loss"], job["history"]["loss"], rtol=1e-6)


FLOAT16_SCALES = [(256.0, 1), (128.0, 0), (128.0, 1), (256.0, 0), (128.0, 0), (128.0, 1)]  # see jobs.train_float16


def test_a_float16_checkpoint_of_two_ranks_keeps_its_loss_scale_resumed_in_one_process_and_in_two(job):
    """``fit`` with "16-mixed" whose second step overflows on rank 1 only (``jobs.train_float16``): the loss scale
    and its growth tracker (the optimizer's ``"loss_scaler"``) move alike on both ranks and as in one process;
    rank 0 alone writes each checkpoint, holding that scale; resumed by 2 ranks it trains bit for bit as the
    uninterrupted job, resumed here in one process it goes on with the scale of the uninterrupted runs."""
    one_weights, one_scales = job["float16"]
    assert one_scales == FLOAT16_SCALES
    rank0, rank1 = (rank["float16"] for rank in job["ranks"])
    files = job["float16_files"]  # one process's names: a checkpoint after each of the 2 epochs
    assert rank0["files_seen"] == rank1["files_seen"] == files
    assert rank0["written"] == [*files, files[1]] and rank1["written"] == []  # the job's 2, the resumed job's 1
    for run, scales in (("trained", FLOAT16_SCALES), ("resumed", FLOAT16_SCALES[3:])):
        (weights0, scales0), (weights1, scales1) = rank0[run], rank1[run]
        assert scales0 == scales1 == scales, run
        for name, value in weights0.items():
            np.testing.assert_array_equal(value, weights1[name], err_msg=f"{run}: {name}")
    for name, value in rank0["trained"][0].items():  # 2 -> 2: the uninterrupted job's weights, bit for bit
        np.testing.assert_array_equal(rank0["resumed"][0][name], value, err_msg=name)
    _agree(rank0["trained"][0], one_weights, FLOAT16_BOUND)
    first = job["directory"] / "float16" / "two" / files[0]
    with ud.use_backend(job["engine"]):
        assert jobs.checkpointed_loss_scaler(first) == {"scale": 128.0, "growth_tracker": 1}
        weights, scales = jobs.train_float16(job["directory"] / "float16" / "two_to_one", resume_from=str(first))
    assert scales == FLOAT16_SCALES[3:]  # 2 -> 1
    _agree(weights, rank0["trained"][0], FLOAT16_BOUND)
    _agree(weights, one_weights, FLOAT16_BOUND)


# jobs.all_reduced: rank 0's [1, 0, 3] and rank 1's [1, 1, -1] reduced with each op
ALL_REDUCED = {"sum": [2.0, 1.0, 2.0], "mean": [1.0, 0.5, 1.0], "max": [1.0, 1.0, 3.0], "min": [1.0, 0.0, -1.0]}


def _check_all_reduced(ranks):
    for rank in ranks:
        assert rank["all_reduce"].keys() == ALL_REDUCED.keys()
        for op, expected in ALL_REDUCED.items():
            np.testing.assert_array_equal(rank["all_reduce"][op], expected, err_msg=op)


def test_all_reduce_sums_averages_and_takes_the_extremes_over_the_ranks(job):
    _check_all_reduced(job["ranks"])


def test_a_rank_that_raises_or_is_stuck_ends_every_rank_with_an_error_naming_it(job):
    failure = job["failure"]
    assert failure is not None, "launch returned although rank 1 failed"
    assert "the other ranks were stopped" in failure and "still running after timeout" not in failure, failure
    timeout = STUCK_TIMEOUT.get(job["engine"])
    if timeout is None:  # rank 1 raised
        assert failure.startswith("rank 1 of 2 raised ValueError: planted failure on rank 1"), failure
        assert "Traceback of rank 1" in failure
        # rank 0, waiting in a barrier whose collective timeout is the launcher's timeout, was stopped by the
        # launcher: it reported no error of its own (a collective timeout), and the job did not run into the timeout
        assert "Traceback of rank 0" not in failure
    else:  # rank 1 stuck (alive, calling no collective): the jax engine's watchdog ended rank 0 in its barrier
        assert failure.startswith(f"rank 0 of 2 raised DistributedError: rank 0 of 2 waited "), failure
        assert (f"past the job's collective timeout of {timeout:g} s, for the other ranks in the jax engine's "
                f"all-reduce #") in failure and "(sum of 1 int32 values)" in failure
        assert "in barrier" in failure  # where rank 0's main thread waited
        # within the timeout and the watchdog's look (1 s at most), long before rank 1 would have raised
        waited = float(failure.split(" waited ")[1].split(" s,")[0])
        assert timeout <= waited <= timeout + 10 < jobs.STUCK_SECONDS, failure
    assert job["children"] == []  # no rank process left behind
    # launch stops a rank with SIGTERM: its default action, on every engine (TensorFlow's coordination service had
    # taken SIGTERM and only recorded it, so the rank in the barrier ran on until SIGKILL, 5 s later)
    assert all(rank["sigterm_ends_rank"] for rank in job["ranks"])


@pytest.mark.skipif("keras" not in ud.available_backends(), reason="the keras backend is not installed")
def test_keras_on_torch_trains_data_parallel_through_distributed_data_parallel(tmp_path, monkeypatch):
    # the ranks' Keras runs on torch (spawned interpreters read KERAS_BACKEND when they import Keras); rank 0 then
    # leaves the group and trains the same in one process, on the same framework: the reference
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    rank0, rank1 = ud.distributed.launch(jobs.keras_on_torch_job, nprocs=2, backend="keras", timeout=FAILURE_BOUND,
                                         args=(str(tmp_path),))
    assert [(r["framework"], r["world_size"]) for r in (rank0, rank1)] == [("torch", 2), ("torch", 2)]
    assert rank0["threads"] == rank1["threads"] == 1  # launch gives each rank one thread
    _check_all_reduced((rank0, rank1))
    one = rank0["one_process"]
    for key in ("two_layer64", "two_layer32"):
        for name in one[key]:  # DDP gives both ranks the same averaged gradients
            np.testing.assert_array_equal(rank0[key][name], rank1[key][name])
    # a sum over the ranks where their mean belongs, or one rank's half batch alone, is 1e-2 away or more
    _agree(rank0["two_layer64"], one["two_layer64"], 1e-12)
    _agree(rank0["two_layer32"], one["two_layer32"], 1e-6)
    (weights0, history0), (weights1, _) = rank0["cnn"], rank1["cnn"]
    for name in weights0:
        np.testing.assert_array_equal(weights0[name], weights1[name])
    _agree(weights0, one["cnn"][0], 1e-6)  # fit (Keras's Model.fit), batches 8, 8, 4 split over the ranks
    np.testing.assert_allclose(history0["loss"], one["cnn"][1]["loss"], rtol=1e-6)
    assert multiprocessing.active_children() == []
    # eager=True (Keras's train_on_batch run eagerly, its forward through DDP as the compiled step's): one process's
    for key, bound in (("eager_two_layer64", 1e-12), ("eager_two_layer_accumulate", 1e-12),
                       ("eager_two_layer_fp16_accumulate", FLOAT16_BOUND)):
        for name in one[key]:
            np.testing.assert_array_equal(rank0[key][name], rank1[key][name], err_msg=f"{key}: {name}")
        _agree(rank0[key], one[key], bound)
    for name in one["eager_cnn"][0]:
        np.testing.assert_array_equal(rank0["eager_cnn"][0][name], rank1["eager_cnn"][0][name], err_msg=name)
    _agree(rank0["eager_cnn"][0], one["eager_cnn"][0], 1e-6)
    np.testing.assert_allclose(rank0["eager_cnn"][1]["loss"], one["eager_cnn"][1]["loss"], rtol=1e-6)
    # a loss whose own parameters the optimizer trains (jobs.TemperedLoss), outside the model that DDP wraps: their
    # gradients averaged by an all-reduce of unidl's (each rank trained them on its own: ranks apart, weights 3e-2
    # from one process's)
    for eager, reference in one["loss_parameters"].items():
        for name in reference:
            np.testing.assert_array_equal(rank0["loss_parameters"][eager][name], rank1["loss_parameters"][eager][name],
                                          err_msg=f"eager={eager}: {name}")
        _agree(rank0["loss_parameters"][eager], reference, 1e-6)
    # each loss parameter reached on one rank or none (a Python branch on the data): every rank joins the same
    # all-reduce, zeros for its missing gradients (joining with the gradients in hand hung the job where the counts
    # differed, or summed a's gradient into b's), and c, reached by no rank, keeps its value (not decayed)
    for eager in (False, True):
        for rank in (rank0, rank1):
            assert rank["branching_loss"][eager] == pytest.approx({"a": 0.1, "b": -0.1, "c": 1.0}, abs=1e-7), eager
    # mixed precision (torch.autocast under Keras's step) and accumulate=2 in the job (each rank's window under
    # DDP's no_sync(), averaged once per update by the optimizer: the same weights)
    for key, bound in (("two_layer_accumulate", 1e-12), ("two_layer_bf16", 2e-2), ("two_layer_fp16", FLOAT16_BOUND),
                       ("two_layer_bf16_accumulate", 2e-2), ("two_layer_fp16_accumulate", FLOAT16_BOUND)):
        for name in one[key]:
            np.testing.assert_array_equal(rank0[key][name], rank1[key][name], err_msg=f"{key}: {name}")
        # half batches round unlike the whole batch in bfloat16 (8 bits) and float16 (11 bits); a sum over the
        # ranks where their mean belongs (twice the step) is about 0.45 away
        _agree(rank0[key], one[key], bound)
    # the all-reduces of each call (DDP's bucket, through unidl's comm hook, and unidl's own): a step one, the loss's
    # agreement for the guard riding in it; with accumulate=2 none in a window's first micro-step and one (the
    # window's sums with its finite flag) in its last, windows running across the epoch boundary: float16's window
    # (Keras's loss scaler's) too
    for rank in (rank0, rank1):
        assert rank["all_reduces"] == {"two_layer64": [1] * 10, "two_layer_accumulate": [0, 1] * 5,
                                       "two_layer_fp16_accumulate": [0, 1] * 5}
    # rank 1's loss infinite with finite gradients, at a step and at a window's first micro-step (no all-reduce
    # there): both ranks skip that step, or that window at its update, and keep bit-identical weights; a float16
    # window so skipped halves the scale once (256 to 128), the next window's update counting one finite step
    assert rank0["guarded_fp16_window"]["loss_scaler"] == rank1["guarded_fp16_window"]["loss_scaler"] == {
        "scale": 128.0, "growth_tracker": 1}
    for key, finite, updates, unchanged in (("guarded", [True, False, True], 2, 1),
                                            ("guarded_window", [True, False, True, True], 1, 1),
                                            ("guarded_fp16_window", [True, False, True, True], 1, 1)):
        first, second = rank0[key], rank1[key]
        assert first["finite"] == second["finite"] == finite, key
        assert first["updates"] == second["updates"] == updates, key
        for index, weights in enumerate(first["weights"]):
            for name, value in weights.items():
                np.testing.assert_array_equal(value, second["weights"][index][name], err_msg=f"{key} {index}: {name}")
        before = first["weights"][unchanged - 1] if key == "guarded" else first["start"]
        assert all(np.array_equal(v, before[k]) for k, v in first["weights"][unchanged].items()), key
        assert any(not np.array_equal(v, before[k]) for k, v in first["weights"][-1].items()), key
    for rank in (rank0, rank1):  # a checkpoint mid-window holds the job's window (see the test above)
        _agree(rank["window_checkpointed"]["resumed"], rank["window_checkpointed"]["uninterrupted"], 1e-12)
    # a float16 checkpoint of the job (an overflow on rank 1 only): written by rank 0, resumed by both ranks bit
    # for bit, and by one process with the loss scale and growth tracker of the uninterrupted runs
    first, second = (rank["float16"] for rank in (rank0, rank1))
    assert first["files_seen"] == second["files_seen"] and len(first["files_seen"]) == 2
    assert one["float16"][1] == FLOAT16_SCALES and one["float16_checkpointed"] == {"scale": 128.0, "growth_tracker": 1}
    for run, scales in (("trained", FLOAT16_SCALES), ("resumed", FLOAT16_SCALES[3:])):
        assert first[run][1] == second[run][1] == scales, run
        for name, value in first[run][0].items():
            np.testing.assert_array_equal(value, second[run][0][name], err_msg=f"{run}: {name}")
            np.testing.assert_array_equal(value, first["trained"][0][name], err_msg=f"{run}: {name}")
    assert one["float16_two_to_one"][1] == FLOAT16_SCALES[3:]
    _agree(first["trained"][0], one["float16"][0], FLOAT16_BOUND)
    _agree(one["float16_two_to_one"][0], one["float16"][0], FLOAT16_BOUND)
    # a step built in the job and called after shutdown(): a clear error before it runs (it would average its
    # gradients over ranks that left), the same front-end check on every engine
    for rank in (rank0, rank1):
        refused = rank["after_shutdown"]
        assert refused is not None and refused["unchanged"] and refused["steps"] == 0
        assert "built in a data-parallel job (rank" in refused["error"] and "build a new step" in refused["error"]


# ---- gradient accumulation and the non-finite guard under torch's DDP (the torch launch's EXTRA_JOBS) ----------
# Accumulation: the micro-steps that do not update run under ``no_sync()``, so 2 ranks all-reduce once per update and
# still train the weights of one process (float64 to 1e-12, float32 to 1e-6, bf16-mixed to bfloat16's rounding of
# half batches), also with a layer frozen and unfrozen between calls of one step (``jobs.train_accumulating``).
# The guard decides alike on every rank: a loss that is infinite on one rank only (its gradients finite, so DDP's
# averaged gradients are finite everywhere) makes every rank skip the update, and the ranks' weights stay
# bit-identical; for the plain and the mixed-precision steps and a window of ``accumulate=2``. (The tensorflow steps
# guard on the loss averaged over the ranks by construction; Keras-on-torch's guard runs the same
# ``jobs.poisoned_run`` in its own job, above.)

@pytest.fixture(scope="module")
def accumulation(launches, tmp_path_factory):
    """Each rank's ``jobs.accumulation_job``, and each configuration trained in this process."""
    ranks = [extra["accumulation"] for extra in _job("torch", launches, tmp_path_factory)["extra"]]
    with ud.use_backend("torch"):
        references = {name: jobs.train_accumulating(*config)[0] for name, config in jobs.ACCUMULATION_CONFIGS.items()}
    return ranks, references


@pytest.fixture(scope="module")
def guarded(launches, tmp_path_factory):
    """Each rank's ``jobs.guard_job``."""
    return [extra["guard"] for extra in _job("torch", launches, tmp_path_factory)["extra"]]


@pytest.mark.parametrize("name, bound", [("float64", 1e-12), ("float32", 1e-6), ("bf16-mixed", 2e-2),
                                         ("no accumulation", 1e-12), ("frozen between steps", 1e-12),
                                         ("frozen mid-window", 1e-12)])
def test_two_ranks_accumulating_train_the_weights_of_one_process(accumulation, name, bound):
    (rank0, rank1), references = accumulation
    for key, value in rank0[name]["weights"].items():  # the ranks apply the same averaged sum
        np.testing.assert_array_equal(value, rank1[name]["weights"][key])
        assert max_relative_difference(value, references[name][key]) <= bound, key
    calls = jobs.ACCUMULATION_EPOCHS * jobs.MICRO_STEPS_PER_EPOCH
    assert rank0[name]["updates"] == calls // jobs.ACCUMULATION_CONFIGS[name][2]
    if name != "no accumulation":  # accumulation (freezing) changes the training by far more than the bound
        worst = max(max_relative_difference(rank0["no accumulation"]["weights"][key], value)
                    for key, value in references[name].items())
        assert worst > 1e-3


def test_micro_steps_run_without_all_reduce(accumulation):
    """The micro-steps inside a window run no collective (the two-layer net has no buffers, which DDP would broadcast
    at each forward), and an update only DDP's bucket all-reduces: the non-finite guard's agreement travels in them
    (a marker in the gradient of unidl's flags parameter), with no all-reduce of its own, and no second one for
    parameters without a gradient (``find_unused_parameters`` would add it)."""
    (rank0, rank1), _ = accumulation
    every_step = rank0["no accumulation"]["all_reduces"]
    # one bucket (the two-layer net's 4 tensors), one a step
    assert every_step == jobs.ACCUMULATION_EPOCHS * jobs.MICRO_STEPS_PER_EPOCH
    for rank in (rank0, rank1):
        for name in ("float64", "float32", "bf16-mixed"):  # once per update: half as often with accumulate=2
            assert rank[name]["all_reduces"] == every_step // 2, name


def test_two_ranks_train_the_cnn_in_float64_as_one_process(job):
    """The CNN in float64 on every engine (torch's DDP, TensorFlow's strategy for tensorflow and Keras-on-TensorFlow,
    the jax engine; ``jobs.train_cnn_float64``): the weights of one process with the global batch to 1e-12
    (float32's CNN is checked to 1e-6 in the test above; a sum over the ranks where their mean belongs would be a
    step twice as long)."""
    rank0, rank1 = (rank["cnn64"] for rank in job["ranks"])
    for key, value in rank0.items():
        np.testing.assert_array_equal(value, rank1[key], err_msg=key)
    _agree(rank0, job["cnn64"], 1e-12)


@pytest.mark.parametrize("precision", list(jobs.GUARD_PRECISIONS))
def test_a_loss_non_finite_on_one_rank_skips_the_update_on_every_rank(guarded, precision):
    rank0, rank1 = (result[precision] for result in guarded)
    assert rank0["finite"] == rank1["finite"] == [True, False, True]
    assert rank0["updates"] == rank1["updates"] == 2
    for index in range(3):  # the same weights on both ranks, bit for bit, after every step
        for key, value in rank0["weights"][index].items():
            np.testing.assert_array_equal(value, rank1["weights"][index][key], err_msg=f"step {index}: {key}")
    for key, value in rank0["weights"][1].items():  # the skipped step moved nothing, the others moved weights
        np.testing.assert_array_equal(value, rank0["weights"][0][key], err_msg=key)
    assert any(not np.array_equal(v, rank0["weights"][1][k]) for k, v in rank0["weights"][2].items())


def test_a_micro_step_non_finite_on_one_rank_skips_the_window_on_every_rank(guarded):
    """float32's accumulation rule under DDP, as on one process: a micro-step under ``no_sync`` checks its own loss
    (kept for the window's update, whose guard agrees over the ranks: one MAX all-reduce per update), so the
    whole window is skipped at its update on both ranks and the next window updates."""
    rank0, rank1 = (result["window"] for result in guarded)
    assert rank0["finite"] == rank1["finite"] == [True, False, True, True]
    assert rank0["updates"] == rank1["updates"] == 1
    for key, value in rank0["start"].items():
        np.testing.assert_array_equal(rank0["weights"][1][key], value, err_msg=key)  # the window changed nothing
    for index in range(4):
        for key, value in rank0["weights"][index].items():
            np.testing.assert_array_equal(value, rank1["weights"][index][key], err_msg=f"micro-step {index}: {key}")
    assert any(not np.array_equal(v, rank0["start"][k]) for k, v in rank0["weights"][3].items())


# ---- bad input: clear errors, before anything starts ---------------------------------------------------------

def test_a_failed_launch_fails_the_tests_that_read_it_without_launching_again(monkeypatch, tmp_path_factory):
    """A job that failed (past its timeout, a rank that died early) fails every test that reads its results, naming
    the first failure, from one launch: each test launched it again, and waited up to ``FAILURE_BOUND`` for it."""
    calls = []

    def failing_launch(backends, directory):
        calls.append(backends)
        raise AssertionError("the job failed before its planted failure: (planted by this test)")

    monkeypatch.setattr(sys.modules[__name__], "_launch", failing_launch)
    launches = {}
    with pytest.raises(AssertionError, match=r"^the job failed before its planted failure"):
        _job("torch", launches, tmp_path_factory)
    for _ in range(2):
        with pytest.raises(AssertionError, match=r"^the 2-rank job on torch's engine failed in an earlier test "
                                                 r"\(launched once\): the job failed before its planted failure"):
            _job("torch", launches, tmp_path_factory)
    assert calls == [("torch",)]


def test_bad_launch_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="nprocs must be a positive integer"):
        ud.distributed.launch(jobs.failing_job, nprocs=0)
    with pytest.raises(DistributedError, match="picklable"):
        ud.distributed.launch(lambda: None, nprocs=2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(DistributedError, match=f"port {port} on 127.0.0.1 is in use"):
            ud.distributed.launch(jobs.failing_job, nprocs=2, port=port)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("call", ["rank", "world_size", "is_main", "barrier", "local_rank"])
def test_a_call_before_init_is_a_clear_error(call):
    assert not ud.distributed.is_initialized()
    with pytest.raises(DistributedNotInitializedError, match=rf"distributed.{call}\(\) needs .*init\(\) first"):
        getattr(ud.distributed, call)()
    with pytest.raises(DistributedNotInitializedError, match="init"):
        ud.distributed.all_reduce(np.ones(2))


def test_a_loader_leaving_a_replica_without_a_sample_is_refused_per_rank_or_per_device(monkeypatch):
    """``fit``'s loader check, the replicas being the ranks of a job or the devices of one process: a last batch
    of 1 sample over 2 replicas is refused naming which; drop_last, or no job, passes. (The group's place only,
    no engine: the launched jobs of this file and tests/distributed/test_mirrored.py check it end to end.)"""
    from unidl.distributed import process_group

    x = np.zeros((9, 2), np.float32)
    loader, dropping = (ud.data.DataLoader(ud.data.TensorDataset(x, x), batch_size=4, drop_last=drop)
                        for drop in (False, True))
    process_group.check_training_loader(loader)  # no job
    ranks = process_group.ProcessGroup(rank=1, world_size=2, local_rank=1, backend=None, engine=None)
    devices = process_group.ProcessGroup(rank=0, world_size=1, local_rank=0, backend=None, engine=None,
                                         devices=("cpu:0", "cpu:1"))
    for group, expected in [
            (ranks, "with 2 ranks, a batch of the loader (9 samples, batch_size=4, last batch 1) has fewer samples "
                    "than ranks, so a rank would train on none; use drop_last=True, or a batch_size that is at "
                    "least the number of ranks and leaves a last batch of at least that many"),
            (devices, "with 2 devices in this process, a batch of the loader (9 samples, batch_size=4, last batch 1) "
                      "has fewer samples than replicas, so a device would train on none; use drop_last=True, or a "
                      "batch_size that leaves every batch at least one sample per replica")]:
        monkeypatch.setattr(process_group, "_group", group)
        with pytest.raises(ValueError) as refused:
            process_group.check_training_loader(loader)
        assert str(refused.value) == expected
        process_group.check_training_loader(dropping)


def test_a_loader_whose_batches_split_unevenly_is_warned_of_once_per_loader(monkeypatch):
    """The engines average each replica's mean gradient with equal weight (DDP's rule), so a batch split unevenly
    trains other weights than one process (11 samples in batches of 4 on 2 ranks: 0.035 away after an epoch), which
    the docstring promised silently: ``fit``'s loader check warns, once per loader's settings, naming the batch
    and the remedies; batches that split evenly, or no job, are not warned of. (The group's place only, no
    engine: the launched jobs warn through ``fit``, ``jobs.uneven_batches_warning``.)"""
    import warnings

    from unidl.distributed import process_group

    def loader(length, batch_size, drop_last=False):
        x = np.zeros((length, 2), np.float32)
        return ud.data.DataLoader(ud.data.TensorDataset(x, x), batch_size=batch_size, drop_last=drop_last)

    monkeypatch.setattr(process_group, "_warned_uneven", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        process_group.check_training_loader(loader(11, 4))  # no job
        monkeypatch.setattr(process_group, "_group", process_group.ProcessGroup(
            rank=0, world_size=2, local_rank=0, backend=None, engine=None))
        for even in (loader(12, 4), loader(11, 4, drop_last=True), loader(6, 8), loader(10, 4)):
            process_group.check_training_loader(even)
    last_only = "use drop_last=True, or a dataset length divisible by 2"  # (drop_last helps: the last batch's split)
    every = "use a batch_size divisible by 2 (and drop_last=True, or a dataset length divisible by it)"
    for uneven, size, fix in ((loader(11, 4), 3, last_only), (loader(12, 3), 3, every), (loader(5, 8), 5, last_only)):
        with pytest.warns(UserWarning) as warned:
            process_group.check_training_loader(uneven)
            process_group.check_training_loader(uneven)  # once
        assert len(warned) == 1
        assert str(warned[0].message) == (
            f"with 2 ranks, a batch of {size} samples of the loader ({len(uneven.dataset)} samples, "
            f"batch_size={uneven.batch_size}) splits unevenly, and each share's mean gradient counts equally in the "
            f"average (as in PyTorch DDP), so that step trains other weights than one process with the same batch; "
            f"{fix}, for the weights of one process")
    monkeypatch.setattr(process_group, "_warned_uneven", set())
    monkeypatch.setattr(process_group, "_group", process_group.ProcessGroup(
        rank=1, world_size=2, local_rank=1, backend=None, engine=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rank 0 alone warns (every rank printed the same warning)
        process_group.check_training_loader(loader(11, 4))


def test_one_process_without_a_launcher_is_a_group_of_one(backend, monkeypatch):
    for name in ("UNIDL_RANK", "RANK", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    ud.distributed.init()
    try:
        assert (ud.distributed.rank(), ud.distributed.world_size(), ud.distributed.is_main()) == (0, 1, True)
        ud.distributed.barrier()
        np.testing.assert_array_equal(ud.to_numpy(ud.distributed.all_reduce(np.array([3.0]), "mean")), [3.0])
        with pytest.raises(ValueError, match="op must be one of"):
            ud.distributed.all_reduce(np.array([3.0]), "average")
    finally:
        ud.distributed.shutdown()


def test_the_torch_engine_is_chosen_by_the_ranks_device(monkeypatch):
    """gloo for a rank on the CPU even where NCCL exists (a CPU run on a GPU machine all-reduced CPU tensors
    through NCCL, which cannot); NCCL for CUDA tensors and gloo for CPU ones on a GPU; gloo on a GPU without NCCL.
    A rank resolves its device with its local rank's GPU only where CUDA exists (here: the CPU, local GPU 0), and a
    local rank past a machine's GPUs is refused."""
    import torch.distributed as dist

    from unidl import backends, config
    from unidl.backends.torch import distributed as torch_distributed

    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert [torch_distributed.engine_for(d) for d in ("cpu", "cuda:1")] == ["gloo", "cpu:gloo,cuda:nccl"]
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert torch_distributed.engine_for("cuda:0") == "gloo"
    with ud.use_device("cpu"):
        assert torch_distributed.Engine(backends.load("torch"))._rank_device(1) == "cpu"
    assert config._local_gpu == 0
    # more local ranks than a machine's GPUs would share one (NCCL's "duplicate GPU" at the first collective); one
    # GPU seen is each process's own (CUDA_VISIBLE_DEVICES per rank), and the CPU is anyone's
    with pytest.raises(ud.DeviceUnavailableError, match="local rank 2 of a data-parallel job has no GPU of its own: "
                                                        "this machine shows it 2 GPUs"):
        torch_distributed._check_own_gpu("cuda:0", 2, 2)
    torch_distributed._check_own_gpu("cuda:0", 3, 1)
    torch_distributed._check_own_gpu("cpu", 5, 2)


def test_a_backend_without_an_engine_says_so_and_a_port_in_use_is_named(backend, monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setenv("UNIDL_RANK", "0")
        monkeypatch.setenv("UNIDL_WORLD_SIZE", "2")
        monkeypatch.setenv("UNIDL_MASTER_PORT", str(port))
        if backend in ("torch", "tensorflow", "jax", "keras"):  # (keras: on each host's engine)
            expected = f"port {port} on 127.0.0.1 is in use"
        else:
            expected = f"the {backend} backend has no distributed engine"
        with pytest.raises(DistributedError, match=expected):
            ud.distributed.init()
    assert not ud.distributed.is_initialized()


def test_launcher_variables_are_read_and_checked():
    from unidl.distributed.environment import rendezvous

    def place(environ):
        found = rendezvous(environ)
        return found.rank, found.world_size, found.local_rank, found.address, found.port

    assert place({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
                  "LOCAL_RANK": "1"}) == (1, 2, 1, "10.0.0.1", 29500)
    tf_config = '{"cluster": {"worker": ["127.0.0.1:2000", "127.0.0.1:2001"]}, "task": {"type": "worker", "index": 1}}'
    assert place({"TF_CONFIG": tf_config}) == (1, 2, 1, "127.0.0.1", 2000)
    assert place({}) == (0, 1, 0, "127.0.0.1", None)
    with pytest.raises(DistributedError, match="RANK=2 must be below WORLD_SIZE=2"):
        rendezvous({"RANK": "2", "WORLD_SIZE": "2", "MASTER_PORT": "1"})
    with pytest.raises(DistributedError, match="needs UNIDL_MASTER_PORT"):
        rendezvous({"UNIDL_RANK": "0", "UNIDL_WORLD_SIZE": "2"})


def test_launcher_variables_that_would_split_or_misplace_a_job_are_clear_errors():
    """A world size without a rank (each process trained alone), torchrun's variables without MASTER_ADDR (torch's
    env:// refuses them; unidl took 127.0.0.1, where the ranks of several machines would each wait alone), a port
    past 65535: a ``DistributedError`` naming the variable, before anything starts. unidl's own variables (what
    ``launch`` sets, always with the address) keep 127.0.0.1 for a missing address."""
    from unidl.distributed.environment import rendezvous

    for prefix in ("", "UNIDL_"):
        with pytest.raises(DistributedError, match=rf"^{prefix}WORLD_SIZE=2 is set but {prefix}RANK is not .*set "
                                                   rf"{prefix}RANK \(0 \.\. 1\) in each"):
            rendezvous({f"{prefix}WORLD_SIZE": "2", f"{prefix}MASTER_ADDR": "127.0.0.1",
                        f"{prefix}MASTER_PORT": "2000"})
        with pytest.raises(DistributedError, match=rf"^{prefix}MASTER_PORT=70000 must be in 1\.\.65535"):
            rendezvous({f"{prefix}RANK": "0", f"{prefix}WORLD_SIZE": "2", f"{prefix}MASTER_ADDR": "127.0.0.1",
                        f"{prefix}MASTER_PORT": "70000"})
        assert rendezvous({f"{prefix}WORLD_SIZE": "1"}).world_size == 1  # a world of one needs no rank
        for value in ("0", "all"):  # (no job, as before: only a world of several needs the rank)
            assert rendezvous({f"{prefix}WORLD_SIZE": value}).world_size == 1
    with pytest.raises(DistributedError, match=r"WORLD_SIZE=2 needs MASTER_ADDR, the address rank 0 listens on "
                                               r"\(torchrun's variables, as torch's env:// requires it\)"):
        rendezvous({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "2000"})
    assert rendezvous({"RANK": "0", "WORLD_SIZE": "1"}).address == "127.0.0.1"  # one process: no address needed
    place = rendezvous({"UNIDL_RANK": "1", "UNIDL_WORLD_SIZE": "2", "UNIDL_MASTER_PORT": "65535"})
    assert (place.address, place.port) == ("127.0.0.1", 65535)


def test_tf_config_of_workers_only_each_with_a_port_or_a_clear_error():
    """A TF_CONFIG with a 'chief' task (TensorFlow's replica beside the workers) gave the chief and worker 0 both
    rank 0 in a world that left the chief out: refused, saying to list every process as a worker; a worker address
    without a port raised int()'s bare ValueError: a ``DistributedError`` naming the entry and the form expected."""
    from unidl.distributed.environment import rendezvous

    def tf_config(cluster, task_type="worker", index=0):
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}

    workers = ["127.0.0.1:2000", "127.0.0.1:2001"]
    for task_type in ("chief", "worker"):
        with pytest.raises(DistributedError, match=r"^TF_CONFIG's cluster names task types \['chief'\] besides "
                                                   r"'worker'; .*list every process under cluster.worker"):
            rendezvous(tf_config({"chief": ["127.0.0.1:1999"], "worker": workers}, task_type))
    with pytest.raises(DistributedError, match=r"^TF_CONFIG's task is of type 'chief'; unidl's data-parallel jobs "
                                               r"run workers only"):
        rendezvous(tf_config({"worker": workers}, "chief"))
    for entry in ("127.0.0.1", "127.0.0.1:", ":2000", "127.0.0.1:port", "127.0.0.1:70000"):
        with pytest.raises(DistributedError, match=rf"^TF_CONFIG cluster.worker\[1\] is '{entry}', not an address "
                                                   rf"with a port: expected 'host:port' \(such as '127.0.0.1:2000'"):
            rendezvous(tf_config({"worker": [workers[0], entry]}))
    place = rendezvous(tf_config({"worker": ["[::1]:2000", "[::1]:2001"]}, index=1))
    assert (place.rank, place.world_size, place.address, place.port) == (1, 2, "[::1]", 2000)


@pytest.mark.skipif("tensorflow" not in ud.available_backends(), reason="the tensorflow backend is not installed")
def test_the_tensorflow_engine_needs_tf_config_and_must_start_before_any_tensorflow_op(monkeypatch):
    from unidl.distributed.environment import free_port, tf_config

    with ud.use_backend("tensorflow"):
        ud.tensor(np.ones(1))  # this process's TensorFlow runtime has started
    port = free_port()
    for name, value in (("UNIDL_RANK", "0"), ("UNIDL_WORLD_SIZE", "2"), ("UNIDL_MASTER_PORT", str(port))):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributedError, match="joins the workers named in TF_CONFIG, which is not set"):
        ud.distributed.init(backend="tensorflow")
    workers = [f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"]
    monkeypatch.setenv("TF_CONFIG", tf_config(workers, 1))
    with pytest.raises(DistributedError, match="worker 1 of 2, but the launcher's variables say rank 0 of 2"):
        ud.distributed.init(backend="tensorflow")
    monkeypatch.setenv("TF_CONFIG", tf_config(workers, 0))
    with pytest.raises(DistributedError, match=r"must start before any TensorFlow op .* call unidl.distributed.init"):
        ud.distributed.init(backend="tensorflow")
    assert not ud.distributed.is_initialized()


@pytest.mark.skipif("jax" not in ud.available_backends(), reason="the jax backend is not installed")
def test_the_jax_engine_must_start_before_xla(monkeypatch):
    """``jax.distributed.initialize`` joins a job only before XLA starts: in this process, which made a jax array
    already, ``init`` says to call it first (a backend without an engine was the error before)."""
    from unidl.distributed.environment import free_port

    for name, value in (("UNIDL_RANK", "0"), ("UNIDL_WORLD_SIZE", "2"), ("UNIDL_MASTER_PORT", str(free_port()))):
        monkeypatch.setenv(name, value)
    with ud.use_backend("jax"):
        ud.tensor([1.0])
    with pytest.raises(DistributedError, match=r"the jax engine must start before JAX's first array .* call "
                                               r"unidl.distributed.init\(\) at the top of the script"):
        ud.distributed.init(backend="jax")
    assert not ud.distributed.is_initialized()


@pytest.mark.skipif("jax" not in ud.available_backends(), reason="the jax backend is not installed")
def test_the_jax_engine_gives_each_local_rank_its_own_gpu_of_several(tmp_path):
    """``jax.distributed.initialize``'s ``local_device_ids``, chosen before XLA starts from the GPUs CUDA would show
    the process: with several, the rank's own (every rank saw them all, and trained on the first); none to choose
    with one or none, or where the user chose (``JAX_LOCAL_DEVICE_IDS``); more local ranks than GPUs refused on a GPU
    (as torch's engine does), spread over them on the CPU. (No GPU here: the choice, not the devices.)"""
    from unidl.backends.jax.distributed import gpus_listed, local_device_ids
    from unidl.errors import DeviceUnavailableError

    assert [local_device_ids(rank, 4, "auto", {}) for rank in range(4)] == [[0], [1], [2], [3]]
    assert local_device_ids(1, 2, "cuda", {}) == [1]
    assert local_device_ids(1, 1, "auto", {}) is None and local_device_ids(1, 0, "cuda", {}) is None
    assert local_device_ids(1, 4, "auto", {"JAX_LOCAL_DEVICE_IDS": "3"}) is None
    assert local_device_ids(3, 2, "cpu", {}) == [1]
    with pytest.raises(DeviceUnavailableError, match=r"local rank 2 of a data-parallel job has no GPU of its own: "
                                                     r"this machine shows it 2 GPUs.* start at most 2 processes"):
        local_device_ids(2, 2, "cuda:0", {})
    for listed, count in (("2,3", 2), ("0, 1,-1,2", 2), ("", 0), ("-1", 0), ("GPU-8f3a,MIG-77aa", 2)):
        assert gpus_listed({"CUDA_VISIBLE_DEVICES": listed}, str(tmp_path)) == count, listed
    for index in range(3):
        (tmp_path / f"0000:0{index}:00.0").mkdir()
    assert gpus_listed({}, str(tmp_path)) == 3 and gpus_listed({}, str(tmp_path / "none")) == 0


@pytest.mark.skipif("jax" not in ud.available_backends(), reason="the jax backend is not installed")
def test_a_jax_job_whose_setup_fails_leaves_no_watchdog_running(monkeypatch):
    """The jax engine's job builds its mesh before it starts its collectives' watchdog: where the devices or the
    mesh cannot be had, no thread is left watching a job that never started (``Engine.start`` then leaves
    ``jax.distributed`` too)."""
    import threading

    import jax

    from unidl.backends.jax import distributed

    def no_devices(*args, **kwargs):
        raise RuntimeError("no CPU device of process 1")

    monkeypatch.setattr(jax, "local_devices", no_devices)
    with pytest.raises(RuntimeError, match="no CPU device"):
        distributed._Job(0, 2, 30.0)
    assert not [t for t in threading.enumerate() if t.name == "unidl-jax-collective-watchdog" and t.is_alive()]


@pytest.mark.skipif("jax" not in ud.available_backends(), reason="the jax backend is not installed")
def test_a_jax_job_kept_off_its_gpus_by_jax_platforms_counts_none(monkeypatch):
    """JAX_PLATFORMS (or ``jax_platforms``) naming neither 'cuda' nor 'gpu' keeps JAX off the GPUs: a CPU-only job
    on a machine of several GPUs counts none, so that its local ranks are not refused for want of a GPU each."""
    from unidl.backends.jax import backend, distributed

    monkeypatch.setattr(backend, "_installed", lambda name: True)  # (a jax CUDA plugin, as on a GPU machine)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert [distributed.visible_gpus(platforms) for platforms in ("cpu", "cuda", "cpu,cuda", "GPU", "")] == [
        0, 2, 2, 2, 2]
    assert distributed.local_device_ids(2, distributed.visible_gpus("cpu"), "auto", {}) is None  # (not refused)


def test_a_step_built_before_this_process_joined_its_job_is_refused_before_it_runs(monkeypatch):
    """A step built outside any job holds none of the job's collectives: called once this process is a rank of a
    job, it would train that rank alone, unaveraged (torch's plain step would, silently). ``TrainStep`` refuses it,
    naming the rank and what to do, before the weights or the optimizer change. (The group's place only, no engine:
    the launched jobs check a step built in the job and called after ``shutdown()``.)"""
    from unidl.config import backend
    from unidl.distributed import process_group

    ud.manual_seed(0)
    model = ud.nn.Linear(3, 2)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    step(x, y)  # outside any job: it trains
    before = {name: ud.to_numpy(value) for name, value in model.state_dict().items()}
    monkeypatch.setattr(process_group, "_group", process_group.ProcessGroup(
        rank=1, world_size=2, local_rank=1, backend=backend(), engine=object()))
    with pytest.raises(DistributedError) as refused:
        step(x, y)
    assert str(refused.value) == (
        f"train_step of Linear was built before this process joined its data-parallel job (rank 1 of 2 on "
        f"{ud.get_backend()}): it holds none of the job's collectives, so this rank would train alone on its own "
        f"gradients, unaveraged; build the step (and model and optimizer: ud.train_step or fit) after "
        f"unidl.distributed.init()")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(ud.to_numpy(value), before[name], err_msg=name)
    # a group of one process on several devices (init(devices=...)) runs its steps in the engine's replicas too
    monkeypatch.setattr(process_group, "_group", process_group.ProcessGroup(
        rank=0, world_size=1, local_rank=0, backend=backend(), engine=None, devices=("cpu:0", "cpu:1"),
        device_engine=object()))
    with pytest.raises(DistributedError, match=r"built before this process joined its data-parallel job \(rank 0 of "
                                               r"1 on \w+, devices \['cpu:0', 'cpu:1'\]\)"):
        step(x, y)


@pytest.mark.skipif(not {"keras", "torch"} <= set(ud.available_backends())
                    or ud.backends.load("keras").host.name == "torch",
                    reason="keras or torch is not installed, or Keras runs on torch (whose job trains it: adopted)")
def test_keras_in_a_job_started_on_the_torch_backend_is_a_clear_error_naming_backend_keras(monkeypatch):
    """A job joined on the torch backend's engine (``launch(backend="torch")``), then the keras backend used in it:
    torch's DDP cannot carry Keras-on-TensorFlow's step, and an eager ``fit`` failed with ``AttributeError: 'Engine'
    object has no attribute 'data_parallel'``; a ``DistributedError`` names what to do, before any step runs. (The
    group's place and the torch engine, unstarted: nothing reaches a collective.)"""
    from unidl.distributed import process_group

    torch_backend = ud.backends.load("torch")
    monkeypatch.setattr(process_group, "_group", process_group.ProcessGroup(
        rank=0, world_size=2, local_rank=0, backend=torch_backend, engine=torch_backend.distributed_engine()))
    with ud.use_backend("keras"):
        model = ud.models.TwoLayerNet(5, 7, 3)
        loader = ud.data.DataLoader(ud.data.TensorDataset(np.ones((8, 5), np.float32), np.zeros((8, 3), np.float32)),
                                    batch_size=4)
        with pytest.raises(DistributedError, match=r"joined its data-parallel job on the torch backend's engine "
                                                   r"\(init or launch with backend='torch'\), which cannot carry the "
                                                   r"keras backend's step on Keras-on-\w+: start the job with "
                                                   r"backend='keras'"):
            ud.fit(model, loader, loss=ud.nn.MSELoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1),
                   epochs=1, eager=True, verbose=0)


def test_a_job_torchrun_started_is_refused_by_the_jax_engine_naming_unidls_launcher(monkeypatch):
    """torchrun's agent serves its store on MASTER_PORT, where ``jax.distributed``'s coordination service would
    listen: rank 0 failed to start its server ('Failed to start RPC server', or SIGSEGV) with no word of unidl's.
    A process torchrun started (its ``TORCHELASTIC_RUN_ID``) is refused before anything starts, on the jax backend
    and on Keras-on-JAX (whose engine is the jax one), saying to launch with ``unidl train --nproc N``."""
    from unidl.backends.keras.distributed import _HostEngine
    from unidl.distributed.environment import free_port

    port = free_port()
    monkeypatch.delenv("UNIDL_RANK", raising=False)
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(port)), ("TORCHELASTIC_RUN_ID", "none")):
        monkeypatch.setenv(name, value)
    expected = (r"^rank 0 of 2 was started by torchrun, whose jobs the jax engine cannot join .* start the job with "
                r"`unidl train --nproc 2` or unidl.distributed.launch\(fn, nprocs=2\)")
    with pytest.raises(DistributedError, match=expected):
        ud.distributed.init(backend="jax")
    assert not ud.distributed.is_initialized()
    keras_on_jax = _HostEngine(ud.backends.load("jax").distributed_engine())  # (Keras-on-JAX's engine)
    with pytest.raises(DistributedError, match=expected):
        keras_on_jax.start(0, 2, "127.0.0.1", port, 1.0)


@pytest.mark.skipif("keras" not in ud.available_backends(), reason="the keras backend is not installed")
def test_a_keras_compile_is_never_restored_outside_the_job_it_was_made_in(monkeypatch):
    """Keras's compiled step of a job holds the engine's collectives (Keras-on-JAX's callback), one compiled outside
    holds none: the compile's key names the job (``job_of_step()``), so that a new step on the same model, loss and
    optimizer compiles anew in a job, and after it, rather than restoring the other's. (A stand-in group: its
    engine runs nothing; the jax launch checks a new step after ``shutdown()``.)"""
    from unidl.config import backend
    from unidl.distributed import process_group

    with ud.use_backend("keras"):
        model, loss = ud.nn.Linear(3, 2), ud.nn.MSELoss()
        optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
        keras_backend = backend()
        outside = keras_backend.compile(model, loss, optimizer)._unidl_compiled
        job = process_group.ProcessGroup(rank=1, world_size=2, local_rank=1, backend=keras_backend, engine=object())
        monkeypatch.setattr(process_group, "_group", job)
        inside = keras_backend.compile(model, loss, optimizer)._unidl_compiled
        assert inside != outside and job in inside
        monkeypatch.setattr(process_group, "_group", None)
        assert keras_backend.compile(model, loss, optimizer)._unidl_compiled == outside
