"""What the ranks of the data-parallel tests run (module level, so that ``launch`` can pickle it), and the same
training in one process, which the tests compare against. No framework is imported at module level."""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

import unidl as ud

CNN_SAMPLES, CNN_BATCH = 20, 8  # batches of 8, 8, 4: an uneven last batch, each split evenly over 2 ranks
# a loss scale that overflows neither a rank's half batch nor the whole batch of ``train_two_layer`` (a rank's mean
# over its share has gradients per sample twice one process's: at 65536 the job skips a first step one process takes)
HALF_BATCH_FLOAT16 = ud.Precision("16-mixed", init_scale=256.0)


def cnn_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((CNN_SAMPLES, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, CNN_SAMPLES)


def train_cnn(directory, resume_from=None, epochs=2):
    """The CNN trained with ``fit`` and a ``Checkpoint`` after every epoch: ``(weights, history)``."""
    ud.manual_seed(0)
    x, y = cnn_data()
    model = ud.models.CNN(in_channels=1, num_classes=3, image_size=8)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=CNN_BATCH, shuffle=True, seed=3)
    # ratio metrics: the ranks' logs come from their statistics summed over the ranks, not a mean of their ratios
    history = ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
                     callbacks=[ud.callbacks.Checkpoint(directory, keep=None)], verbose=0, resume_from=resume_from,
                     metrics=["accuracy", "f1", "precision_micro", ud.metrics.AUC(from_logits=True)])
    return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, history.as_dict()


def train_cnn_float64():
    """The CNN (of 8x8 images: the digits' net) in float64 after 2 ``train_step`` calls of global batch 8, SGD with
    momentum, whose step grows with the gradient (a sum over the ranks where their mean belongs shows)."""
    with ud.use_dtype("float64"):
        ud.manual_seed(0)
        x, y = cnn_data()
        model = ud.models.CNN(in_channels=1, num_classes=3, image_size=8)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer)
        for xb, yb in ud.data.DataLoader(ud.data.TensorDataset(x[:16].astype(np.float64), y[:16]), batch_size=8):
            step(xb, yb)
        return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}


def evaluate_cnn(weights):
    """``evaluate`` (batches of 6: the last of 2 samples) and ``predict`` of the CNN holding ``weights``."""
    x, y = cnn_data()
    model = ud.models.CNN(in_channels=1, num_classes=3, image_size=8)
    model.load_state_dict(weights)
    return ud.evaluate(model, (x, y), loss=ud.nn.CrossEntropyLoss(), batch_size=6), ud.predict(model, x, batch_size=6)


def poisoned_window(precision):
    """Two windows of ``accumulate=2`` under ``precision``; rank 1's first micro-step has an infinite target (a
    non-finite loss and gradients, from the data: the same graph on every rank) that only its own window holds
    until the update. Each call's flag, the updates, and whether the weights after the first window are the
    starting ones."""
    rank = ud.distributed.rank()
    ud.manual_seed(1)
    rng = np.random.default_rng(10 + rank)
    x, y = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    model = ud.models.TwoLayerNet(5, 7, 3)
    start = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    try:
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, check_finite=False,
                             accumulate=2)
    except ud.errors.DistributedError as error:  # (Keras-on-TensorFlow's loss scaler: a clear error)
        return {"refused": str(error)}
    finite, unchanged = [], None
    for index in range(4):
        target = y.copy()
        if index == 0 and rank == 1:
            target[0, 0] = np.inf
        step(x, target)
        finite.append(optimizer.last_step_finite)
        if index == 1:
            unchanged = all(np.array_equal(ud.to_numpy(v), start[k]) for k, v in model.state_dict().items())
    return {"finite": finite, "updates": optimizer.state_dict()["step"], "unchanged": unchanged,
            "weights": {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}}


def train_two_layer(dtype, precision=None, lr_scale=1.0, accumulate=1, collectives=None, all_reduces=None,
                    eager=False):
    """The two-layer net after two epochs of ``train_step`` calls over a shuffled loader with global batch 4:
    Adam, or with a mixed ``precision`` SGD with momentum (whose step, unlike Adam's, grows with the gradient,
    so that a sum over the ranks where their mean belongs shows; ``lr_scale`` scales its learning rate).
    ``accumulate``: micro-steps per update (on tensorflow's engine a window kept on each rank, averaged once
    per update); ``collectives``: a list that gets the number of collective ops in each graph the step traced;
    ``all_reduces`` (torch's engine): a list that gets the number of all-reduces each call ran
    (``counting_all_reduces``); ``eager``: the step's ``eager``."""
    with ud.use_dtype(dtype):
        ud.manual_seed(1)
        rng = np.random.default_rng(1)
        x, y = rng.standard_normal((20, 5)), rng.standard_normal((20, 3))
        model = ud.models.TwoLayerNet(5, 7, 3)
        optimizer = (ud.optim.Adam(model.parameters(), lr=0.01) if precision is None
                     else ud.optim.SGD(model.parameters(), lr=0.05 * lr_scale, momentum=0.9))
        with keras_step_graphs() as made:
            step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, accumulate=accumulate,
                                 eager=eager)
            loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4, shuffle=True, seed=5)
            for _ in range(2):
                for xb, yb in loader:
                    if all_reduces is None:
                        step(xb, yb)
                        continue
                    with counting_all_reduces() as calls:
                        step(xb, yb)
                    all_reduces.append(len(calls))
        graphs = getattr(step._run, "concrete_functions", None)  # (the tensorflow backend's step)
        if graphs is None:
            graphs = [f for graph in made for f in getattr(graph, "concrete_functions", [])]
        for graph in graphs if collectives is not None else []:
            collectives.append(sum(op.type.startswith("Collective") for op in graph.graph.get_operations()))
        return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}


@contextlib.contextmanager
def counting_all_reduces():
    """A list that gets one entry per ``torch.distributed.all_reduce`` call made in the block: DDP's all-reduce of
    a bucket comes through it (unidl's comm hook calls torch's ``allreduce_hook``), and so does any collective
    of unidl's own (the non-finite guard's agreement, a window's average). The framework's own collective stays
    in place: this only counts its calls."""
    import torch.distributed as dist

    all_reduce, calls = dist.all_reduce, []

    def counted(*args, **kwargs):
        calls.append(1)
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counted
    try:
        yield calls
    finally:
        dist.all_reduce = all_reduce


@contextlib.contextmanager
def keras_step_graphs():
    """On keras, a list that gets each train step graph the keras backend makes in the block (its
    ``function.train_step_graph``, called as before: this only keeps what it returns, whose
    ``concrete_functions`` are the graphs it traced); an empty list elsewhere."""
    made = []
    if ud.get_backend() != "keras":
        yield made
        return
    from unidl.backends.keras import function

    make = function.train_step_graph

    def kept(*args, **kwargs):
        graph = make(*args, **kwargs)
        made.append(graph)
        return graph

    function.train_step_graph = kept
    try:
        yield made
    finally:
        function.train_step_graph = make


class PoisonedLoss(ud.nn.Module):
    """The mean squared error against the targets' columns but the last, plus the mean of that last column: 0, or
    infinity on a poisoned call (a non-finite loss whose gradients are finite). The poison comes in the data, so
    that a compiled step (one trace for every call and rank) sees it where it is, as an eager one does."""

    def __init__(self):
        super().__init__()
        self.mse = ud.nn.MSELoss()

    def forward(self, outputs, targets):
        return self.mse(outputs, targets[:, :-1]) + ud.ops.mean(targets[:, -1])


def poisoned_run(dtype, calls, poisoned_calls, precision=None, accumulate=1):
    """``calls`` steps (micro-steps with ``accumulate``) of the two-layer net on this rank's own batch, rank 1's
    loss made infinite at the calls ``poisoned_calls`` (``PoisonedLoss``: the gradients stay finite). The starting
    weights, the weights after each call, each call's flag, the optimizer's update count and its loss scale (None
    without float16)."""
    rank = ud.distributed.rank()
    with ud.use_dtype(dtype):
        ud.manual_seed(1)
        rng = np.random.default_rng(10 + rank)  # a batch of this rank's own
        x, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
        model = ud.models.TwoLayerNet(5, 7, 3)
        start = {k: ud.to_numpy(v) for k, v in model.state_dict().items()}
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = ud.train_step(model, PoisonedLoss(), optimizer, precision=precision, check_finite=False,
                             accumulate=accumulate)
        weights, finite = [], []
        for index in range(calls):
            poison = np.inf if index in poisoned_calls and rank == 1 else 0.0
            step(x, np.concatenate([y, np.full((4, 1), poison)], axis=1))
            finite.append(optimizer.last_step_finite)
            weights.append({k: ud.to_numpy(v) for k, v in model.state_dict().items()})
        state = optimizer.state_dict()
        return {"start": start, "weights": weights, "finite": finite, "updates": state["step"],
                "loss_scaler": state.get("loss_scaler")}


#: accumulate=2 windows: the middle layer has a gradient in the last micro-step only, the first only, none, both
DYNAMIC_DEPTHS = [0, 2, 2, 0, 0, 0, 1, 1]


class DynamicNet(ud.nn.Module):
    """tests/test_dynamic_forward.py's net: the middle layer runs ``depth`` times (a graph loop on tensorflow)."""

    def __init__(self):
        super().__init__()
        self.entry, self.middle, self.exit = ud.nn.Linear(4, 8), ud.nn.Linear(8, 8), ud.nn.Linear(8, 1)

    def forward(self, x, depth):
        h = ud.ops.relu(self.entry(x))
        for _ in range(depth):
            h = ud.ops.relu(self.middle(h))
        return self.exit(h)


def train_dynamic_accumulating(accumulate=2, depth_of_rank=False):
    """DynamicNet in float64, SGD with momentum, ``accumulate`` micro-steps per update over ``DYNAMIC_DEPTHS``
    (global batches of 4, no shuffle): PyTorch's rule over a window for a layer without a gradient in some
    micro-steps, which on tensorflow's engine (a window kept on each rank) needs the ranks' has-gradient flags
    averaged with the sums, and on torch's DDP ``find_unused_parameters`` (else a step without the layer leaves its
    bucket unreduced). ``depth_of_rank``: rank 1 runs the depths shifted by one step (its loop runs where rank 0's
    does not), so that the ranks must agree on which layers had a gradient anywhere, as DDP does."""
    shift = 1 if depth_of_rank and ud.distributed.rank() == 1 else 0
    with ud.use_dtype("float64"):
        ud.manual_seed(2)
        rng = np.random.default_rng(2)
        x, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 1))
        model = DynamicNet()
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                             accumulate=accumulate)
        depths = iter(DYNAMIC_DEPTHS[shift:] + DYNAMIC_DEPTHS[:shift])
        for _ in range(2):
            for xb, yb in ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4):
                step(xb, yb, next(depths))
        return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}


def float16_data():
    """12 samples whose second batch of 4 (no shuffle) has 2 targets 1e4 away: its float32 loss is finite, its
    scaled float16 gradients overflow (with 2 ranks: on rank 1, whose share they are, only)."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((12, 5)).astype(np.float32), rng.standard_normal((12, 3)).astype(np.float32)
    y[6:8] += 1e4
    return x, y


def train_float16(directory, resume_from=None):
    """The two-layer net trained by ``fit`` with "16-mixed" (SGD with momentum; loss scale 256, growth_interval 2)
    for 2 epochs of 3 batches of 4, a ``Checkpoint`` after each: ``(weights, the optimizer's (scale, growth
    tracker) after each step)``. Each epoch's second step overflows and is skipped: (256, 1), (128, 0), (128, 1)
    in the first epoch, then (256, 0), (128, 0), (128, 1), the first step doubling the scale only because the
    tracker was kept (a resume that lost it goes on (128, 1), (64, 0); one that lost the scale, (256, 1))."""
    ud.manual_seed(1)
    x, y = float16_data()
    model = ud.models.TwoLayerNet(5, 7, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scales = []

    def record(batch, logs):
        state = optimizer.state_dict()["loss_scaler"]
        scales.append((state["scale"], state["growth_tracker"]))

    ud.fit(model, ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4), loss=ud.nn.MSELoss(),
           optimizer=optimizer, epochs=2, precision=ud.Precision("16-mixed", init_scale=256.0, growth_interval=2),
           callbacks=[ud.callbacks.Checkpoint(directory, keep=None), ud.callbacks.LambdaCallback(on_batch_end=record)],
           verbose=0, resume_from=resume_from)
    return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, scales


def checkpointed_loss_scaler(path):
    """The ``"loss_scaler"`` the checkpoint at ``path`` holds (loaded into a new two-layer net's optimizer)."""
    model = ud.models.TwoLayerNet(5, 7, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ud.load_checkpoint(path, model, optimizer)
    return optimizer.state_dict()["loss_scaler"]


def sample_coverage(length=11, batch_size=4, epochs=2):
    """The indices each epoch of a shuffled loader without a given seed yields here, batch by batch."""
    loader = ud.data.DataLoader(ud.data.TensorDataset(np.arange(length)), batch_size=batch_size, shuffle=True)
    return [[ud.to_numpy(batch[0]).tolist() for batch in loader] for _ in range(epochs)]


class _Augmented(ud.data.Dataset):
    """Samples read through code of the user's (an augmentation), so an unshuffled loader draws its seed."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return np.float32(index + np.random.rand())


def unshuffled_drawn_seed():
    """The seed an unshuffled loader over an augmented dataset drew, after this rank drew a different number of
    values from unidl's generator than the other (rank-dependent set-up code): rank 0's is the job's."""
    ud.random.generator().integers(0, 10, size=ud.distributed.rank() + 1)
    loader = ud.data.DataLoader(_Augmented(), batch_size=2)
    next(iter(loader))
    return loader.seed


def batch_norm_from_rank_0():
    """A net with a ``BatchNorm1d`` trained by ``fit`` (2 steps of global batch 4) from weights and buffers that
    differ per rank (seeded by the rank; rank 1's running mean moved and its ``num_batches_tracked`` 5), each rank's
    share of every batch holding the same samples: each rank's ``(start, end)`` state. Rank 0's parameters and
    buffers are broadcast as training starts (the int64 ``num_batches_tracked`` beside float32 tensors: TensorFlow's
    single collective of them raised a ``TypeError``), the averaged gradients then move both ranks alike, and the
    running statistics, each rank's own as in DDP, stay alike too, since the shares are."""
    rank = ud.distributed.rank()
    ud.manual_seed(rank)
    rng = np.random.default_rng(3)
    pairs_x, pairs_y = rng.standard_normal((2, 2, 5)), rng.standard_normal((2, 2, 3))
    # batches [a, b, a, b]: both ranks' halves are [a, b]
    x, y = (np.concatenate([pairs, pairs], axis=1).reshape(8, -1).astype(np.float32) for pairs in (pairs_x, pairs_y))
    model = ud.nn.Sequential(ud.nn.Linear(5, 4), ud.nn.BatchNorm1d(4), ud.nn.ReLU(), ud.nn.Linear(4, 3))
    start = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}
    if rank == 1:
        start["1.running_mean"] += 1.0
        start["1.num_batches_tracked"] += 5
        model.load_state_dict(start)
    ud.fit(model, ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4), loss=ud.nn.MSELoss(),
           optimizer=ud.optim.SGD(model.parameters(), lr=0.1), verbose=0)
    return start, {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}


def uneven_batches_warning():
    """The warnings of ``fit`` on this rank over 11 samples in batches of 4 (the last batch of 3 splits 1 and 2 over
    2 ranks), for 0 epochs: the loader is checked as ``fit`` starts, and nothing trains (a rank that stopped at its
    warning while the other trained would leave that one's collectives waiting)."""
    import warnings

    from unidl.distributed import process_group

    process_group._warned_uneven.clear()  # (once per loader's settings in a process: this job's other backends)
    x = np.zeros((11, 5), np.float32)
    model = ud.models.TwoLayerNet(5, 7, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ud.fit(model, ud.data.DataLoader(ud.data.TensorDataset(x, x[:, :3]), batch_size=4), loss=ud.nn.MSELoss(),
               optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=0, verbose=0)
    return [str(warning.message) for warning in caught if "splits unevenly" in str(warning.message)]


def two_layer_with_options(precision=None, accumulate=1, clip_grad_norm=None, poisoned=False, eager=False):
    """The two-layer net (float32, SGD with momentum, whose step grows with the gradient) after 3 updates of global
    batch 6 (``accumulate`` micro-steps of 6 each), with ``precision``, ``clip_grad_norm``, ``eager``, and where
    ``poisoned`` an infinite target in the second half of the first batch (another device's share than the first
    half's): the weights, each call's ``last_step_finite`` and loss, and the loss scale after them (float16)."""
    ud.manual_seed(1)
    rng = np.random.default_rng(1)
    samples = 18 * accumulate
    x, y = (rng.standard_normal((samples, width)).astype(np.float32) for width in (5, 3))
    if poisoned:
        y[4] = np.inf
    model = ud.models.TwoLayerNet(5, 7, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, clip_grad_norm=clip_grad_norm)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, accumulate=accumulate,
                         check_finite=False, eager=eager)
    flags, losses = [], []
    for start in range(0, samples, 6):
        losses.append(float(ud.to_numpy(step(x[start:start + 6], y[start:start + 6]))))
        flags.append(optimizer.last_step_finite)
    scale = (ud.training.scaler_state(optimizer) or {}).get("scale")
    return {"weights": {k: ud.to_numpy(v).tolist() for k, v in model.state_dict().items()}, "finite": flags,
            "losses": losses, "scale": scale}


def too_small_last_batch():
    """``fit`` over 9 samples in batches of 4: the last batch of 1 cannot be shared by 2 ranks."""
    x, y = cnn_data()
    model = ud.models.CNN(in_channels=1, num_classes=3, image_size=8)
    try:
        ud.fit(model, ud.data.DataLoader(ud.data.TensorDataset(x[:9], y[:9]), batch_size=4),
               loss=ud.nn.CrossEntropyLoss(), optimizer=ud.optim.SGD(model.parameters(), lr=0.1), verbose=0)
    except ValueError as error:
        return str(error)
    return None


class _Scaled(ud.nn.Module):
    """A linear layer whose outputs a per-step input of shape (2,) scales: ``model(x, scale)``, a value of the step,
    not a batch (each replica of a job needs it whole)."""

    def __init__(self):
        super().__init__()
        self.linear = ud.nn.Linear(3, 2)

    def forward(self, x, scale):
        return self.linear(x) * scale


def train_with_step_inputs():
    """``_Scaled`` trained by ``train_step(x, y, scale)`` on a batch of 4 (its loss and weights) and by ``fit`` with
    ``step_inputs`` over 8 samples in batches of 4 (its weights and losses); ``scale`` (1, 10) is no batch: cut into
    shares like x, each replica's single entry broadcast silently (0.18 away from one device's weights)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)
    scale = np.array([1.0, 10.0], np.float32)
    ud.manual_seed(0)
    model = _Scaled()
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.01))
    loss = float(ud.to_numpy(step(x[:4], y[:4], scale)))
    stepped = {k: np.asarray(ud.to_numpy(v)).tolist() for k, v in model.state_dict().items()}
    ud.manual_seed(0)
    model = _Scaled()
    history = ud.fit(model, x, y, batch_size=4, shuffle=False, verbose=0, loss=ud.nn.MSELoss(),
                     optimizer=ud.optim.SGD(model.parameters(), lr=0.01), step_inputs=lambda epoch, step: (scale,))
    return {"loss": loss, "weights": stepped, "fit_loss": history.as_dict()["loss"],
            "fit_weights": {k: np.asarray(ud.to_numpy(v)).tolist() for k, v in model.state_dict().items()}}


def too_small_step_batches():
    """``train_step`` (checked, ``check_finite=False``, and ``eager=True``: its batch size known as it is traced;
    Keras-on-TensorFlow refuses an eager step here) on 1 sample over 2 devices: what it raised (a replica's empty
    share averaged nothing: a NaN loss, ``NonFiniteLossError`` naming the learning rate, or a silently skipped step)
    and whether the weights changed; then on a batch of 2."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)

    def outcome(step, size):
        try:
            return float(ud.to_numpy(step(x[:size], y[:size])))
        except Exception as error:  # noqa: BLE001 - what it raised is what the test checks
            return f"{type(error).__name__}: {error}"

    found = {}
    for check_finite, eager in ((True, False), (False, False), (True, True)):
        model = ud.models.TwoLayerNet(5, 7, 3)
        before = {k: np.asarray(ud.to_numpy(v)).copy() for k, v in model.state_dict().items()}
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1),
                             check_finite=check_finite, eager=eager)
        result = outcome(step, 1)
        changed = any(not np.array_equal(before[k], ud.to_numpy(v)) for k, v in model.state_dict().items())
        found[f"check_finite={check_finite}, eager={eager}"] = {"result": result, "changed": changed,
                                                                "then": outcome(step, 2)}
    return found


def uneven_step_loss():
    """``train_step``'s loss on a batch of 5 over 2 devices (shares 2 + 3), and ``fit``'s over the same one batch,
    compiled and with ``eager=True``, beside the shares' average (the objective whose gradient the step applies:
    each share's mean counting equally, as DDP's) and the whole batch's mean of the starting outputs."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    found = {}
    for eager in (False, True):
        ud.manual_seed(1)
        model = ud.models.TwoLayerNet(5, 7, 3)
        errors = (np.asarray(ud.to_numpy(model(x)), np.float64) - y) ** 2
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=eager)
        loss = float(ud.to_numpy(step(x, y)))
        ud.manual_seed(1)
        model = ud.models.TwoLayerNet(5, 7, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (fit's warning of the uneven split: jobs.uneven_batches_warning's)
            history = ud.fit(model, x, y, batch_size=5, shuffle=False, verbose=0, loss=ud.nn.MSELoss(),
                             optimizer=ud.optim.SGD(model.parameters(), lr=0.1), eager=eager)
        prefix = "eager_" if eager else ""
        found.update({f"{prefix}loss": loss, f"{prefix}fit_loss": history.as_dict()["loss"][0]})
    return dict(found, whole=float(errors.mean()), shares=float((errors[:2].mean() + errors[2:].mean()) / 2))


def data_parallel_job(directory, resumed_directory, resume_file, float16_directory):
    """Everything the 2-rank test checks on the current backend, in one launch (each launch starts interpreters
    that import a framework)."""
    import unidl.checkpoint as checkpoint

    written, save_file = [], checkpoint.save_file

    def counting_save_file(tensors, path, *args, **kwargs):
        written.append(os.path.basename(path))
        return save_file(tensors, path, *args, **kwargs)

    collectives, mixed_collectives, float16_collectives, all_reduces = [], [], [], {}
    checkpoint.save_file = counting_save_file  # the writer itself still runs: this only counts its calls
    try:
        weights, history = train_cnn(directory)
        files_seen = sorted(os.listdir(directory))
        resumed, _ = train_cnn(resumed_directory, resume_from=resume_file)
        written_before = len(written)
        float16 = float16_checkpoint_job(float16_directory)
        float16["written"] = written[written_before:]
    finally:
        checkpoint.save_file = save_file
    return {"rank": ud.distributed.rank(), "world_size": ud.distributed.world_size(),
            "is_main": ud.distributed.is_main(), "threads": _threads(), "inter_op_threads": _inter_op_threads(),
            "sigterm_ends_rank": _sigterm_ends_rank(),
            "all_reduce": all_reduced(),
            "cnn": weights, "history": history, "files_seen": files_seen, "written": written,
            "resumed": resumed, "evaluated": evaluate_cnn(weights), "two_layer32": train_two_layer("float32"),
            "cnn64": train_cnn_float64(),
            "two_layer64": engine_all_reduces(all_reduces, "two_layer64", lambda: train_two_layer("float64")),
            "two_layer_bf16": engine_all_reduces(all_reduces, "two_layer_bf16",
                                                 lambda: train_two_layer("float32", "bf16-mixed")),
            "two_layer_accumulate": engine_all_reduces(all_reduces, "two_layer_accumulate", lambda: train_two_layer(
                "float64", accumulate=2, collectives=collectives)),
            "accumulate_collectives": collectives, "dynamic_accumulate": train_dynamic_accumulating(),
            "two_layer_bf16_accumulate": engine_all_reduces(all_reduces, "two_layer_bf16_accumulate", lambda: (
                train_two_layer("float32", "bf16-mixed", accumulate=2, collectives=mixed_collectives))),
            "all_reduces": all_reduces,
            "bf16_accumulate_collectives": mixed_collectives, "poisoned_window": poisoned_window("16-mixed"),
            "two_layer_fp16_accumulate": train_two_layer("float32", HALF_BATCH_FLOAT16, accumulate=2,
                                                         collectives=float16_collectives),
            "fp16_accumulate_collectives": float16_collectives, **eager_training(),
            "dynamic_per_rank": train_dynamic_accumulating(1, depth_of_rank=True),
            "coverage": sample_coverage(), "unshuffled_seed": unshuffled_drawn_seed(),
            "too_small": too_small_last_batch(), "uneven": uneven_batches_warning(),
            "batch_norm": batch_norm_from_rank_0(), "float16": float16,
            "window_checkpointed": window_checkpointed_in_the_job(os.path.join(float16_directory, "window"))}


def engine_all_reduces(counts, name, train):
    """``train()``; on the jax engine, which counts the collectives it runs, ``counts[name]`` gets how many ``train``
    ran (a compiled step's among them once it has run: ``train`` reads the weights its last step left)."""
    before = _jax_all_reduces()
    result = train()
    if before is not None:
        counts[name] = _jax_all_reduces() - before
    return result


def _jax_all_reduces():
    """The jax engine's count of its collectives so far (the jax backend's, Keras-on-JAX's); None on another."""
    if _framework() != "jax":
        return None
    from unidl.backends.jax.distributed import all_reduces_run

    return all_reduces_run()


def window_checkpointed_in_the_job(directory):
    """``train_step(accumulate=2)`` (float64, SGD with momentum) over 4 micro-steps, each rank on its own 2 samples
    of each global batch of 4, checkpointed after the third (one micro-step into the second window, whose sums
    differ per rank), then resumed by a fresh model and optimizer on the same ranks for the fourth: the weights of
    the uninterrupted run and of the resumed one (the checkpoint must hold the job's window, not rank 0's). The
    resumed run trains one whole window before it loads the checkpoint: a step that keeps the window's count in
    Python (whether a micro-step closes the window, decided without a read from the device) must take the loaded
    count (one micro-step in), not keep its own (none), or the fourth micro-step would not update."""
    rank = ud.distributed.rank()

    def run(resume_from=None):
        with ud.use_dtype("float64"):
            ud.manual_seed(1)
            rng = np.random.default_rng(4)
            x, y = rng.standard_normal((16, 5)), rng.standard_normal((16, 3))
            model = ud.models.TwoLayerNet(5, 7, 3)
            optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2)

            def micro_step(index):
                share = slice(4 * index + 2 * rank, 4 * index + 2 * rank + 2)
                step(x[share], y[share])

            if resume_from is not None:
                micro_step(0)
                micro_step(1)
                ud.load_checkpoint(resume_from, model, optimizer)
            for index in range(3 if resume_from is not None else 0, 4):
                micro_step(index)
                if index == 2 and resume_from is None:
                    resume_from = ud.save_checkpoint(directory, model, optimizer, step=3)
            return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, resume_from

    uninterrupted, path = run()
    return {"uninterrupted": uninterrupted, "resumed": run(path)[0]}


def float16_checkpoint_job(directory):
    """``train_float16`` on this job's ranks (checkpoints in ``directory/two``), then resumed by the same ranks
    from its first checkpoint (written by rank 0 alone, after its first overflow: loss scale 128, tracker 1),
    in ``directory/two_to_two``: the run, the resumed run (each ``train_float16``'s) and the files."""
    trained = train_float16(os.path.join(directory, "two"))
    files = sorted(os.listdir(os.path.join(directory, "two")))
    resumed = train_float16(os.path.join(directory, "two_to_two"),
                            resume_from=os.path.join(directory, "two", files[0]))
    return {"trained": trained, "resumed": resumed, "files_seen": files}


def _sigterm_ends_rank() -> bool:
    """Whether SIGTERM (what ``launch`` sends a rank it stops, and a scheduler or ``kill`` a process) takes its
    default action here: Python holds no handler of its own for it and none is installed below Python (Linux:
    the caught-signal mask of /proc/self/status), where TensorFlow's coordination service installed one that only
    recorded the signal, so a rank left waiting in a collective ran on until SIGKILL."""
    import signal

    with open("/proc/self/status") as status:
        caught = int(next(line for line in status if line.startswith("SigCgt:")).split()[1], 16)
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and not caught & (1 << (signal.SIGTERM - 1))


def _threads():
    """The intra-op thread count of this rank's framework (Keras's: its host's); on JAX, which has no query, 1
    where ``XLA_FLAGS`` holds unidl's one-thread flag, which XLA read when it started (None without it)."""
    framework = _framework()
    if framework == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads()
    if framework == "jax":
        from unidl.backends.jax.backend import xla_thread_flags

        return 1 if xla_thread_flags(1) in os.environ.get("XLA_FLAGS", "").split() else None
    import torch

    return torch.get_num_threads()


def _inter_op_threads():
    """The inter-op thread count of this rank's framework (Keras's: its host's), which ``UNIDL_NUM_THREADS``
    sizes with the intra-op pool; None on JAX, whose XLA has no inter-op pool to query."""
    framework = _framework()
    if framework == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_inter_op_parallelism_threads()
    if framework == "jax":
        return None
    import torch

    return torch.get_num_interop_threads()


def all_reduced():
    """This rank's ``[1, rank, 3 - 4 * rank]`` reduced over the ranks with each of ``all_reduce``'s ops."""
    rank = ud.distributed.rank()
    values = np.array([1.0, rank, 3.0 - 4.0 * rank])
    return {op: ud.to_numpy(ud.distributed.all_reduce(values, op)) for op in ud.distributed.REDUCE_OPS}


# ---- gradient accumulation and the non-finite guard under torch's DistributedDataParallel ----------------------

ACCUMULATION_EPOCHS, MICRO_STEPS_PER_EPOCH = 2, 5  # 20 samples in global batches of 4
ACCUMULATION_CONFIGS = {
    "float64": ("float64", None, 2), "float32": ("float32", None, 2), "bf16-mixed": ("float32", "bf16-mixed", 2),
    "no accumulation": ("float64", None, 1), "frozen between steps": ("float64", None, 1, range(3, 7)),
    # windows (0, 1) ... (8, 9): frozen at an update after a trainable micro-step (3), a whole window (4, 5),
    # unfrozen for a micro-step only (6: the DDP, built without the layer, does not average its gradient), and
    # unfrozen at an update after a frozen micro-step (8, 9)
    "frozen mid-window": ("float64", None, 2, (3, 4, 5, 7, 8))}


def train_accumulating(dtype, precision, accumulate, frozen_calls=(), around_step=None):
    """The two-layer net after two epochs of ``train_step(accumulate=...)`` calls over a shuffled loader with
    global batch 4 (windows run across the epoch boundary): SGD with momentum, whose step grows with the
    gradient, so that a sum over the ranks or the micro-steps where a mean belongs shows. ``frozen_calls``: the
    calls before which the first layer is frozen (``requires_grad_(False)``; unfrozen before the next call), the
    same step object going on, whose DDP must follow the trainable parameters."""
    with ud.use_dtype(dtype):
        ud.manual_seed(1)
        rng = np.random.default_rng(1)
        x, y = rng.standard_normal((20, 5)), rng.standard_normal((20, 3))
        model = ud.models.TwoLayerNet(5, 7, 3)
        optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=precision, accumulate=accumulate)
        step = around_step(step) if around_step is not None else step
        loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4, shuffle=True, seed=5)
        calls = 0
        for _ in range(ACCUMULATION_EPOCHS):
            for xb, yb in loader:
                model.linear1.requires_grad_(calls not in frozen_calls)
                step(xb, yb)
                calls += 1
        return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, optimizer.state_dict()["step"]


def accumulation_job():
    """Each configuration on this rank, with every all-reduce inside a step's call counted: the profiler's
    ``c10d::allreduce_`` events, which every all-reduce of the process group records (DDP's own, from C++, as
    ``find_unused_parameters``'s of its used-parameter map would be, and any of unidl's, such as a guard's agreement
    through ``torch.distributed.all_reduce``): the numbers are the engine's."""
    from torch.profiler import ProfilerActivity, profile

    all_reduces = []

    def around_step(step):
        def call(*args):
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                result = step(*args)
            all_reduces.extend(1 for event in profiled.events() if event.name == "c10d::allreduce_")
            return result

        return call

    results = {}
    for name, config in ACCUMULATION_CONFIGS.items():
        all_reduces.clear()
        weights, updates = train_accumulating(*config, around_step=around_step)
        results[name] = {"weights": weights, "updates": updates, "all_reduces": len(all_reduces)}
    return results


GUARD_PRECISIONS = {"32": "float64", "bf16-mixed": "float32"}


class OneRankLayerNet(ud.nn.Module):
    """A net whose middle layer only rank 1's forward runs (a Python branch on the rank: each rank's step is traced
    with its own)."""

    def __init__(self):
        super().__init__()
        self.entry, self.middle, self.exit = ud.nn.Linear(4, 8), ud.nn.Linear(8, 8), ud.nn.Linear(8, 1)

    def forward(self, x):
        h = ud.ops.relu(self.entry(x))
        if ud.distributed.rank() == 1:
            h = ud.ops.relu(self.middle(h))
        return self.exit(h)


def train_a_layer_of_one_rank():
    """OneRankLayerNet in float64, SGD with momentum, 4 steps on this rank's own batches: the middle layer's
    gradient is rank 1's over 2 (zeros on rank 0, as DDP counts them). The starting and trained weights."""
    with ud.use_dtype("float64"):
        ud.manual_seed(2)
        rng = np.random.default_rng(2 + ud.distributed.rank())
        x, y = rng.standard_normal((4, 4, 4)), rng.standard_normal((4, 4, 1))
        model = OneRankLayerNet()
        start = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}
        step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        for xb, yb in zip(x, y):
            step(xb, yb)
        return start, {k: ud.to_numpy(v) for k, v in model.state_dict().items()}


def guarded_steps(precision, dtype):
    """Three steps; at the second, rank 1's loss is infinite."""
    return poisoned_run(dtype, 3, (1,), precision=precision)


def guarded_window():
    """Two windows of ``accumulate=2`` (4 micro-steps, the first of each under DDP's ``no_sync``); rank 1's loss is
    infinite at the first micro-step only, with finite gradients: a micro-step that does not all-reduce."""
    return poisoned_run("float64", 4, (0,), accumulate=2)


def guarded_windows():
    """Three windows of ``accumulate=2`` (float64); rank 1's loss is infinite, with finite gradients, at the first
    window's first micro-step and at the second window's last: both windows are skipped on every rank, the third
    updates."""
    return poisoned_run("float64", 6, (0, 3), accumulate=2)


def guard_job():
    return {**{name: guarded_steps(name, dtype) for name, dtype in GUARD_PRECISIONS.items()},
            "window": guarded_window()}


def accumulation_and_guard_job():
    """What test_distributed.py's accumulation and guard tests read of torch's engine (DDP), run by the torch launch
    before its planted failure: the guard's runs, then ``accumulation_job``, whose all-reduce counts are taken per
    configuration."""
    return {"guard": guard_job(), "accumulation": accumulation_job()}


def data_parallel_job_then_failure(results_directory, failing_rank, job_args_by_backend, extra=None,
                                   stuck_timeout=None):
    """``data_parallel_job`` on each backend of ``job_args_by_backend`` (its arguments there) in turn, then
    ``extra()`` if given (another file's worth of checks on the same engine: ``results["extra"]``), the results
    written to ``results_directory`` (the job does not return them: it then fails), then ``failing_job`` (with
    ``stuck_timeout``): one launch checks them all, for ranks that are slow to start."""
    import pickle

    results = {}
    for backend, job_args in job_args_by_backend.items():
        with ud.use_backend(backend):
            results[backend] = data_parallel_job(*job_args)
            if backend == "keras":
                results[backend]["fp16_overflow"] = float16_overflow_on_one_rank()
            # (on TensorFlow's engine its broadcasts counted; Keras-on-torch's job trains it too, keras_on_torch_job)
            results[backend]["loss_parameters"] = loss_parameters_trained()
    if extra is not None:
        results["extra"] = extra()
    with open(os.path.join(results_directory, f"rank{ud.distributed.rank()}.pickle"), "wb") as file:
        pickle.dump(results, file)
    return failing_job(failing_rank, stuck_timeout)


class TemperedLoss(ud.nn.Module):
    """The mean squared error of the outputs scaled per column by a learned ``weight`` and divided by a learned
    ``temperature`` (0-d), plus a pull of the temperature towards 1: a loss whose own parameters the optimizer
    trains beside the model's."""

    def __init__(self):
        super().__init__()
        self.temperature = ud.nn.Parameter(np.full((), 1.5, np.float32))
        self.weight = ud.nn.Parameter(np.ones((3,), np.float32))

    def forward(self, outputs, targets):
        difference = outputs * self.weight / self.temperature - targets
        return ud.ops.mean(difference * difference) + 0.1 * (self.temperature - 1.0) ** 2


def fit_with_loss_parameters(eager, apart_on_rank_1=False):
    """The two-layer net and ``TemperedLoss`` trained together by ``fit`` for 2 epochs of 2 batches of 8 (not
    shuffled; Adam over the model's and the loss's parameters), ``eager`` or not: the model's and the loss's state
    (the loss's keys prefixed ``loss.``). ``apart_on_rank_1``: rank 1 of a job builds its loss with other values,
    which only rank 0's broadcast makes the job's."""
    ud.manual_seed(1)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 5)).astype(np.float32), rng.standard_normal((16, 3)).astype(np.float32)
    model, loss = ud.models.TwoLayerNet(5, 7, 3), TemperedLoss()
    if apart_on_rank_1 and ud.distributed.is_initialized() and ud.distributed.rank() == 1:
        loss.load_state_dict({"temperature": np.full((), 2.5, np.float32), "weight": np.full((3,), 0.5, np.float32)})
    optimizer = ud.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.01)
    ud.fit(model, ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=8), loss=loss, optimizer=optimizer,
           epochs=2, eager=eager, verbose=0)
    return {**{k: ud.to_numpy(v) for k, v in model.state_dict().items()},
            **{f"loss.{k}": ud.to_numpy(v) for k, v in loss.state_dict().items()}}


class BranchingLoss(ud.nn.Module):
    """The mean squared error plus a pull of ``a`` towards 1 where the batch's targets are all positive, else of ``b``
    towards -1 (a Python branch on the data, as in an eager step), and ``c`` that no batch reaches: in a job whose
    ranks' shares take different branches, each loss parameter has a gradient on one rank or none."""

    def __init__(self):
        super().__init__()
        self.a = ud.nn.Parameter(np.zeros((), np.float32))
        self.b = ud.nn.Parameter(np.zeros((), np.float32))
        self.c = ud.nn.Parameter(np.ones((), np.float32))

    def forward(self, outputs, targets):
        difference = outputs - targets
        loss = ud.ops.mean(difference * difference)
        if float(np.min(ud.to_numpy(targets))) > 0:
            return loss + (self.a - 1.0) ** 2
        return loss + (self.b + 1.0) ** 2


def loss_parameters_reached_on_one_rank(eager):
    """One ``train_step`` (``eager`` or not) of the two-layer net and ``BranchingLoss`` (SGD, lr 0.1, weight decay
    0.1) in a job of 2, rank 0's share with positive targets, rank 1's negative: the loss's state. PyTorch's rule
    with DDP (zeros for a rank without a gradient, averaged; no update for a parameter no rank's loss reached):
    a = 0.1, b = -0.1, c = 1 on both ranks."""
    ud.manual_seed(1)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 5)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    y[:4], y[4:] = np.abs(y[:4]) + 0.1, -np.abs(y[4:]) - 0.1
    model, loss = ud.models.TwoLayerNet(5, 7, 3), BranchingLoss()
    optimizer = ud.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.1, weight_decay=0.1)
    share = slice(0, 4) if ud.distributed.rank() == 0 else slice(4, 8)
    ud.train_step(model, loss, optimizer, eager=eager)(x[share], y[share])
    return {k: float(ud.to_numpy(v)) for k, v in loss.state_dict().items()}


@contextlib.contextmanager
def counting_broadcasts():
    """A list that gets, for each broadcast of rank 0's weights that the tensorflow engine runs in the block (when a
    step joins the job: ``data_parallel``), the number of variables it broadcast. The broadcast itself still runs:
    this only counts its calls."""
    from unidl.backends.tensorflow import distributed

    broadcast, calls = distributed._broadcast, []

    def counted(variables):
        calls.append(len(variables))
        return broadcast(variables)

    distributed._broadcast = counted
    try:
        yield calls
    finally:
        distributed._broadcast = broadcast


def loss_parameters_trained():
    """``fit_with_loss_parameters`` compiled and eager, by ``eager``: each with the broadcasts of rank 0's weights
    that it ran on the tensorflow engine (``counting_broadcasts``; None on the other engines). Rank 1's loss starts
    apart from rank 0's except on the keras backend, which broadcasts no loss's own parameters."""
    results, apart = {}, ud.get_backend() != "keras"
    for eager in (False, True):
        if _framework() != "tensorflow":
            results[eager] = fit_with_loss_parameters(eager, apart), None
            continue
        with counting_broadcasts() as broadcasts:
            results[eager] = fit_with_loss_parameters(eager, apart), broadcasts
    return results


def float16_overflow_on_one_rank():
    """The two-layer net trained with "16-mixed" for 3 steps of global batch 4 (no shuffle), whose first batch's
    second half, rank 1's share in a 2-rank job, overflows float16: ``(weights, loss scale, each step's
    last_step_finite)``. Every rank must skip that step and halve its scale, as one process does."""
    ud.manual_seed(1)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 5)).astype(np.float32), rng.standard_normal((12, 3)).astype(np.float32)
    x[2:4] *= 1e6  # beyond float16's largest value (65504)
    model = ud.models.TwoLayerNet(5, 7, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, precision=ud.Precision("16-mixed", init_scale=256.0))
    flags = []
    for xb, yb in ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=4):
        step(xb, yb)
        flags.append(optimizer.last_step_finite)
    return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, step.loss_scale, flags


def keras_on_torch_job(directory):
    """On ranks whose Keras runs on torch (``KERAS_BACKEND=torch``): the two-layer net through ``train_step``
    (Keras's ``train_on_batch``) in float64 and float32, with bf16-mixed and 16-mixed, with ``accumulate=2``
    (and bf16-mixed, 16-mixed), the all-reduces of each call of the float64 and float16 accumulating steps counted,
    the CNN through ``fit`` (Keras's ``Model.fit``), ``eager_training``, ``fit_with_loss_parameters`` (compiled and
    eager), ``loss_parameters_reached_on_one_rank`` (in the job only), ``float16_checkpoint_job`` and the non-finite
    guard (``poisoned_run``, also of a float16 window); then, the
    group left, rank 0 trains the same in one process (the reference, on the same framework) and resumes the
    job's first float16 checkpoint there."""
    def training(name, all_reduces=None):
        counts = all_reduces if all_reduces is not None else {"two_layer64": None, "two_layer_accumulate": None,
                                                              "two_layer_fp16_accumulate": None}
        return {"two_layer64": train_two_layer("float64", all_reduces=counts["two_layer64"]),
                "two_layer32": train_two_layer("float32"),
                "two_layer_bf16": train_two_layer("float32", "bf16-mixed"),
                "two_layer_fp16": train_two_layer("float32", HALF_BATCH_FLOAT16),
                "two_layer_accumulate": train_two_layer("float64", accumulate=2,
                                                        all_reduces=counts["two_layer_accumulate"]),
                "two_layer_bf16_accumulate": train_two_layer("float32", "bf16-mixed", accumulate=2),
                # float16's window is Keras's loss scaler's: one all-reduce per update too
                "two_layer_fp16_accumulate": train_two_layer("float32", HALF_BATCH_FLOAT16, accumulate=2,
                                                             all_reduces=counts["two_layer_fp16_accumulate"]),
                "cnn": train_cnn(os.path.join(directory, name)), **eager_training(),
                "loss_parameters": {eager: fit_with_loss_parameters(eager) for eager in (False, True)}}

    rank = ud.distributed.rank()
    float16 = os.path.join(directory, "float16")
    all_reduces = {"two_layer64": [], "two_layer_accumulate": [], "two_layer_fp16_accumulate": []}  # per call
    result = {"framework": _framework(), "world_size": ud.distributed.world_size(), "threads": _threads(),
              "all_reduce": all_reduced(), **training(f"rank{rank}", all_reduces), "all_reduces": all_reduces,
              "branching_loss": {eager: loss_parameters_reached_on_one_rank(eager) for eager in (False, True)},
              "float16": float16_checkpoint_job(float16),
              # rank 1's loss infinite (its gradients finite) at a step, and at a window's first micro-step
              "guarded": poisoned_run("float64", 3, (1,)),
              "guarded_window": poisoned_run("float64", 4, (0,), accumulate=2),
              "guarded_fp16_window": poisoned_run("float32", 4, (0,), HALF_BATCH_FLOAT16, 2),
              "window_checkpointed": window_checkpointed_in_the_job(os.path.join(directory, "window"))}
    built_in_the_job = step_in_the_job()
    ud.distributed.shutdown()
    result["after_shutdown"] = built_in_the_job()
    if rank == 0:
        first = os.path.join(float16, "two", result["float16"]["files_seen"][0])
        result["one_process"] = dict(training("one_process"), float16=train_float16(os.path.join(float16, "one")),
                                     float16_checkpointed=checkpointed_loss_scaler(first),
                                     float16_two_to_one=train_float16(os.path.join(float16, "two_to_one"), first))
    return result


def keras_on_jax_job():
    """On ranks whose Keras runs on JAX (the jax launch starts its ranks with ``KERAS_BACKEND=jax``): Keras's own
    jitted train step, whose loss and gradients the jax engine averages inside it, through ``train_step`` (the
    two-layer net in float64 and with ``accumulate=2``, and float16's with it, their collectives counted, and
    float32 and bf16-mixed; and ``eager_two_layers``) and ``fit`` (``batch_norm_from_rank_0``: rank 0's weights
    broadcast); the guard over windows (``guarded_windows``, and a float16 window's) and float16's overflow of one
    rank's share, their collectives counted too; a layer one rank's forward skips, beside the jax backend's step
    (``train_a_layer_of_one_rank``); the watchdog's timeout (launch's ``collective_timeout``)."""
    import jax

    from unidl.backends.jax import distributed

    counts = {}
    with ud.use_backend("jax"):
        one_rank_layer = train_a_layer_of_one_rank()
    with ud.use_backend("keras"):
        return {"one_rank_layer": [train_a_layer_of_one_rank(), one_rank_layer], "framework": _framework(),
                "threads": _threads(), "all_reduce": all_reduced(), "all_reduces": counts,
                "local_cpus": len(jax.local_devices(backend="cpu")),
                "watchdog_timeout": distributed._job.watchdog.timeout,  # (launch's collective_timeout)
                "two_layer64": engine_all_reduces(counts, "two_layer64", lambda: train_two_layer("float64")),
                "two_layer32": train_two_layer("float32"), "two_layer_bf16": train_two_layer("float32", "bf16-mixed"),
                "two_layer_accumulate": engine_all_reduces(counts, "two_layer_accumulate",
                                                           lambda: train_two_layer("float64", accumulate=2)),
                "two_layer_fp16_accumulate": engine_all_reduces(counts, "two_layer_fp16_accumulate", lambda: (
                    train_two_layer("float32", HALF_BATCH_FLOAT16, accumulate=2))),
                "batch_norm": batch_norm_from_rank_0(), "guarded_windows": guarded_windows(),
                "guarded_fp16_window": engine_all_reduces(counts, "guarded_fp16_window", lambda: poisoned_run(
                    "float32", 4, (0,), HALF_BATCH_FLOAT16, 2)),
                "fp16_overflow": engine_all_reduces(counts, "fp16_overflow", float16_overflow_on_one_rank),
                **eager_two_layers()}


def step_in_the_job():
    """A train step of the two-layer net built in the job; returns a function that calls it once (after the process
    left the job) and gives its error, whether the weights and the optimizer's state are unchanged, or None if it
    trained."""
    from unidl.errors import DistributedError

    model = ud.models.TwoLayerNet(5, 7, 3)
    optimizer = ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer)

    def call():
        start = {k: np.array(ud.to_numpy(v)) for k, v in model.state_dict().items()}
        try:
            step(np.ones((2, 5), np.float32), np.ones((2, 3), np.float32))
        except DistributedError as error:
            return {"error": str(error), "steps": optimizer.state_dict()["step"], "unchanged": all(
                np.array_equal(ud.to_numpy(v), start[k]) for k, v in model.state_dict().items())}
        return None

    return call


EAGER_CNN_SAMPLES = 16  # batches of 8, 8: one batch shape (JAX's eager ops compile once per op and shape)


def fit_cnn_eagerly():
    """The CNN's weights after one epoch of ``fit(..., eager=True)`` over the first ``EAGER_CNN_SAMPLES`` of
    ``cnn_data`` (batches of 8, 8, not shuffled; SGD with momentum, whose step grows with the gradient) and its
    epoch's logs. One batch shape: on JAX each eager op compiles per shape, and the uneven last batch (8, 8, 4)
    cost a third more compiles (155 against 114, 8.4 against 5.5 s of CPU per process) in the parent and in each
    rank; the compiled CNN of the same jobs keeps the uneven last batch (``train_cnn``)."""
    ud.manual_seed(0)
    x, y = (part[:EAGER_CNN_SAMPLES] for part in cnn_data())
    model = ud.models.CNN(in_channels=1, num_classes=3, image_size=8)
    history = ud.fit(model, (x, y), loss=ud.nn.CrossEntropyLoss(), batch_size=CNN_BATCH, shuffle=False, eager=True,
                     optimizer=ud.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), verbose=0)
    return {k: ud.to_numpy(v) for k, v in model.state_dict().items()}, history.as_dict()


def eager_two_layers():
    """``eager=True`` training of the two-layer net through ``train_step`` (the step run by Python at every call,
    in the engine's replica context where it has one): in float64, with ``accumulate=2`` and float16's with it."""
    return {"eager_two_layer64": train_two_layer("float64", eager=True),
            "eager_two_layer_accumulate": train_two_layer("float64", accumulate=2, eager=True),
            "eager_two_layer_fp16_accumulate": train_two_layer("float32", HALF_BATCH_FLOAT16, accumulate=2,
                                                               eager=True)}


def eager_training():
    """``eager_two_layers`` and the CNN through ``fit(..., eager=True)`` (``fit_cnn_eagerly``); the same runs in
    one process are the references."""
    return {**eager_two_layers(), "eager_cnn": fit_cnn_eagerly()}


def _framework():
    from unidl import backends

    backend = backends.load(ud.get_backend())
    return getattr(backend, "host", backend).name


STUCK_SECONDS = 60  # how long the stuck rank of ``failing_job`` sleeps before it raises


def failing_job(failing_rank, stuck_timeout=None):
    """``failing_rank`` raises while the others wait for it in a barrier. ``stuck_timeout`` (the jax engine, whose
    collectives inside XLA take no deadline of their own): ``failing_rank`` first stays alive without calling
    collectives for ``STUCK_SECONDS``, while the others wait in the barrier under a collective timeout of
    ``stuck_timeout`` seconds, past which the engine's watchdog ends them with an error naming the wait."""
    if ud.distributed.rank() == failing_rank:
        if stuck_timeout is not None:
            import time

            time.sleep(STUCK_SECONDS)
        raise ValueError(f"planted failure on rank {failing_rank}")
    if stuck_timeout is not None:
        from unidl.backends.jax import distributed

        distributed._job.watchdog.timeout = stuck_timeout  # (the job's own, 300 s, would take the suite's time)
    ud.distributed.barrier()
    return "unreachable"
