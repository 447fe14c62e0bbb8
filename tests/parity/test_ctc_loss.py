"""``ud.nn.CTCLoss`` and ``ud.ops.ctc_loss`` against plain ``torch.nn.CTCLoss``: losses and the gradients of the
log-probabilities (float32 and float64, eagerly and inside ``ud.function``: ``torch_oracle.RUNS``), infinite losses
and -inf log-probabilities with torch's NaN gradient, a compiled ``train_step``, and torch's refusals (and targets
holding the blank, which torch documents as not allowed) as unidl's errors, on every backend."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

import unidl as ud
from unidl.errors import (DtypeMismatchError, IndexOutOfRangeError, NonFiniteLossError, ShapeMismatchError,
                          ValueOutOfRangeError)
from tests.parity.torch_oracle import RUNS, Case, compare_table

R = np.random.default_rng(5)
T, N, C = 6, 4, 5
SCORES = R.standard_normal((T, N, C)) * 2
LOG_PROBS = SCORES - np.log(np.exp(SCORES).sum(2, keepdims=True))
# repeated labels (1, 1: a blank must come between them), padding that is never read (-1), a target as long as its
# frames allow with its repeats (3, 3, 3 in 5 frames), and one of length 0
TARGETS = np.array([[1, 1, 2, 0], [1, 2, 3, 4], [2, -1, -1, -1], [3, 3, 3, -1]])
INPUT_LENGTHS = np.array([6, 5, 4, 5])
TARGET_LENGTHS = np.array([3, 4, 1, 3])
EMPTY_TARGET = np.array([3, 4, 0, 3])
IMPOSSIBLE = np.array([6, 3, 4, 4])  # sample 1: 4 labels in 3 frames; sample 3: 3, 3, 3 needs 5 frames


def _concatenated(lengths):
    return np.concatenate([row[:n] for row, n in zip(TARGETS, lengths)])


def ctc_case(options, *inputs):
    return Case(lambda: ud.nn.CTCLoss(**options), lambda: tnn.CTCLoss(**options), list(inputs))


LOSSES = {  # few cases, each covering several things: a graph of the recursion and its gradient takes seconds to trace
    "padded-none": ctc_case({"reduction": "none"}, LOG_PROBS, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS),
    "concatenated-sum-with-an-empty-target": ctc_case({"reduction": "sum"}, LOG_PROBS, _concatenated(EMPTY_TARGET),
                                                      INPUT_LENGTHS, EMPTY_TARGET),
    # impossible alignments (samples 1 and 3) made 0, an empty target (its loss divided by 1), blank 4
    "blank-4-zero-infinity-mean": ctc_case({"blank": 4, "zero_infinity": True}, LOG_PROBS, TARGETS % 4, IMPOSSIBLE,
                                           EMPTY_TARGET),
    # an empty target with no labels at all (S = 0: every target empty, as pad_sequence of empty label lists gives)
    "functional-unbatched-empty": Case(lambda: lambda *a: ud.ops.ctc_loss(*a, reduction="none"),
                                       lambda: lambda *a: F.ctc_loss(*a, reduction="none"),
                                       [LOG_PROBS[:, 0], np.zeros(0, np.int64), np.array(6), np.array(0)]),
}


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_ctc_loss_matches_torch(backend, dtype, modes):
    """Padded and concatenated targets, variable input and target lengths (0 too), repeated labels, another blank,
    each reduction, unbatched input with no labels at all (S = 0), and ``zero_infinity`` (an impossible alignment's
    loss and gradient 0)."""
    failures = compare_table(LOSSES, backend, dtype, modes)
    assert not failures, "\n".join(failures)


def _torch_losses_and_gradient(log_probs, targets, input_lengths, target_lengths, reduction):
    log_probs = torch.tensor(log_probs, requires_grad=True)
    losses = F.ctc_loss(log_probs, torch.tensor(targets), torch.tensor(input_lengths), torch.tensor(target_lengths),
                        reduction=reduction)
    losses.sum().backward()
    return losses.detach().numpy(), log_probs.grad.numpy()


def _masked(log_probs):
    """``log_probs`` with -inf entries (masked logits) in samples 1 and 2 that leave their losses finite (with
    ``INPUT_LENGTHS``): where torch's kernel gives a NaN gradient (exp(-inf - -inf)) within the frames read, 0 after."""
    log_probs = log_probs.copy()
    log_probs[:, 1, 0] = -np.inf  # sample 1's blank: its target (1, 2, 3, 4) fits its 5 frames without any
    log_probs[:, 2, 4] = -np.inf  # a class sample 2's target (2) never reads
    log_probs[0, 2, 2] = -np.inf  # its label, in one of its 4 frames only
    log_probs[5, 2, 1] = -np.inf  # past its frames: gradient 0
    return log_probs


def test_an_impossible_alignment_is_infinite_with_torchs_nan_gradient(backend):
    """A target longer than its frames allow (with its repeats' blanks), or one of whose labels has log-probability
    -inf (a masked logit), has loss inf, and PyTorch's gradient: NaN at that sample's frames read, 0 after them; a
    finite loss has PyTorch's gradient too, NaN at its -inf log-probabilities within its frames read (on every
    backend, not only torch's kernel); eagerly and inside ``ud.function``; lengths given as Python lists."""
    log_probs = _masked(LOG_PROBS.astype(np.float32))
    log_probs[:, 0, 2] = -np.inf  # sample 0's last label (1, 1, 2) masked everywhere
    lengths = IMPOSSIBLE.tolist(), TARGET_LENGTHS.tolist()
    expected, expected_gradient = _torch_losses_and_gradient(log_probs, TARGETS, *lengths, "none")
    loss = ud.nn.CTCLoss(reduction="none")

    def losses_and_gradient(x):
        return loss(x, TARGETS, *lengths), ud.grad(lambda a: ud.ops.sum(loss(a, TARGETS, *lengths)))(x)

    for run in (losses_and_gradient, ud.function(losses_and_gradient)):
        losses, gradient = (ud.to_numpy(t) for t in run(ud.tensor(log_probs)))
        np.testing.assert_allclose(losses, expected, rtol=1e-5)
        assert np.isnan(expected_gradient).any()
        np.testing.assert_array_equal(np.isnan(gradient), np.isnan(expected_gradient))
        np.testing.assert_allclose(np.nan_to_num(gradient), np.nan_to_num(expected_gradient), atol=1e-5)


class PackedCTCLoss(ud.nn.CTCLoss):
    """CTCLoss of log-probabilities (N, T, C), with targets (N, 4) and both lengths packed in one array y (N, 6): a
    train step's batches hold their samples along axis 0."""

    def forward(self, log_probs, y):
        return super().forward(ud.ops.permute(log_probs, (1, 0, 2)), y[:, :4], y[:, 4], y[:, 5])


class MaskedFrames(ud.nn.Module):
    """Linear + LogSoftmax over frames (N, T, F) of x's first 3 features, plus its last C (a mask of 0 and -inf, as
    masked logits give)."""

    def __init__(self):
        super().__init__()
        self.net = ud.nn.Sequential(ud.nn.Linear(3, C), ud.nn.LogSoftmax(dim=2))

    def forward(self, x):
        return self.net(x[:, :, :3]) + x[:, :, 3:]


def test_a_train_step_on_ctc_loss_follows_torch(backend):
    """A compiled ``train_step`` (SGD) of Linear + LogSoftmax over frames (N, T, F) on CTCLoss gives torch's losses
    over three steps, the second with -inf log-probabilities past the frames read (gradient 0 there); the targets and
    both lengths come in one integer array. A fourth, with -inf log-probabilities within finite losses' frames, meets
    torch's NaN gradient there on every backend: the step is refused (``NonFiniteLossError``)."""
    features = R.standard_normal((N, T, 3)).astype(np.float32)
    past = np.zeros((T, N, C), np.float32)
    past[5, 2, 1] = -np.inf
    masks = [np.zeros_like(past), past, np.zeros_like(past), _masked(np.zeros_like(past))]
    xs = [np.concatenate([features, np.transpose(mask, (1, 0, 2))], 2) for mask in masks]
    y = np.concatenate([TARGETS, INPUT_LENGTHS[:, None], TARGET_LENGTHS[:, None]], 1)
    ud.manual_seed(0)
    model = MaskedFrames()
    reference = tnn.Sequential(tnn.Linear(3, C), tnn.LogSoftmax(dim=2))
    reference.load_state_dict({k: torch.tensor(v) for k, v in model.net.state_dict().items()})
    reference_ctc = tnn.CTCLoss()
    step = ud.train_step(model, PackedCTCLoss(), ud.optim.SGD(model.parameters(), lr=0.5))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for x in xs:
        optimizer.zero_grad()
        log_probs = reference(torch.tensor(x[:, :, :3])) + torch.tensor(x[:, :, 3:])
        expected = reference_ctc(log_probs.permute(1, 0, 2), torch.tensor(TARGETS), torch.tensor(INPUT_LENGTHS),
                                 torch.tensor(TARGET_LENGTHS))
        expected.backward()
        if x is not xs[-1]:
            optimizer.step()
            assert abs(float(step(x, y)) - expected.item()) < 1e-5
    assert np.isfinite(expected.item()) and np.isnan(reference[0].weight.grad.numpy()).all()
    with pytest.raises(NonFiniteLossError):
        step(xs[-1], y)


def _bad(log_probs=LOG_PROBS, targets=TARGETS, input_lengths=INPUT_LENGTHS, target_lengths=TARGET_LENGTHS, blank=0):
    return (log_probs, targets, input_lengths, target_lengths, blank)


BAD_INPUTS = [  # (inputs, error, message): torch refuses each (labels out of range: it reads past its classes)
    (_bad(log_probs=LOG_PROBS[:, 0, 0]), ShapeMismatchError,
     r"^CTCLoss needs log_probs \(T, N, C\).*; got log_probs \((6|\?),\), targets \((4|\?), (4|\?)\)"),
    (_bad(input_lengths=INPUT_LENGTHS[:3]), ShapeMismatchError,
     r"^CTCLoss needs log_probs \(T, N, C\).* with the same N.*; got log_probs \(6, 4, 5\), targets \(4, 4\), "
     r"input_lengths \(3,\), target_lengths \(4,\)"),
    (_bad(targets=TARGETS[:3]), ShapeMismatchError, r"got log_probs \(6, 4, 5\), targets \(3, 4\)"),
    (_bad(input_lengths=np.array([7, 5, 4, 5])), IndexOutOfRangeError,
     r"^CTCLoss input_lengths \(at most T, log_probs' length\) must lie in \[0, 7\); found values from 4 to 7"),
    (_bad(target_lengths=np.array([3, 5, 1, 3])), IndexOutOfRangeError,
     r"^CTCLoss target_lengths \(at most S, targets' length\) must lie in \[0, 5\)"),
    (_bad(target_lengths=np.array([3, -1, 1, 3])), IndexOutOfRangeError, r"found values from -1 to 3"),
    (_bad(targets=_concatenated(TARGET_LENGTHS)[:-1]), ValueOutOfRangeError,
     r"^CTCLoss sum\(target_lengths\) - len\(targets\) \(one concatenated label each\) must lie in \[0, 0\]"),
    (_bad(targets=np.where(TARGETS == 4, 5, TARGETS)), IndexOutOfRangeError,
     r"^CTCLoss targets \(class indices of log_probs\) must lie in \[0, 5\); found values from 0 to 5"),
    (_bad(blank=5), IndexOutOfRangeError, r"^CTCLoss blank \(a class of log_probs\) must lie in \[0, 5\)"),
    (_bad(log_probs=LOG_PROBS[:, :0], targets=TARGETS[:0], input_lengths=INPUT_LENGTHS[:0],
          target_lengths=TARGET_LENGTHS[:0]), ShapeMismatchError, r"T, N and C at least 1; got log_probs \((6|\?), "
                                                                  r"(0|\?), (5|\?)\)"),
    # the blank read as a label (padding past a target's length may hold it: TARGETS[0, 3]), in either format
    (_bad(targets=np.where(TARGETS == 3, 0, TARGETS)), ValueOutOfRangeError,
     r"^CTCLoss targets hold the blank \(class 0\) at targets\[1, 2\] \(sample 1's label 2\); a target's labels "
     r"must be classes in \[0, 5\) other than the blank \(the entries of a row past its target length are not read"),
    (_bad(targets=np.where(np.arange(10) == 9, 0, _concatenated([3, 4, 1, 2])), target_lengths=np.array([3, 4, 1, 2])),
     ValueOutOfRangeError,
     r"^CTCLoss targets hold the blank \(class 0\) at targets\[9\] \(sample 3's label 1\); a target's labels "
     r"must be classes in \[0, 5\) other than the blank$"),
    (_bad(blank=3), ValueOutOfRangeError, r"^CTCLoss targets hold the blank \(class 3\) at targets\[1, 2\]"),
    (_bad(targets=TARGETS.astype(np.float32)), DtypeMismatchError, r"^CTCLoss: targets must be integers"),
    (_bad(input_lengths=INPUT_LENGTHS.astype(np.float32)), DtypeMismatchError,
     r"^CTCLoss: input_lengths must be integers"),
]


def test_ctc_loss_refuses_what_torch_refuses(backend):
    """Each bad input is one unidl error naming the tensors (and their shapes), eagerly and inside ``ud.function``
    (a TensorFlow graph, traced for any sizes, knows them only when it runs); bad options when built."""
    loss, graphs = ud.nn.CTCLoss(), {}  # (one graph a set of ranks and dtypes: TensorFlow's is for any sizes)
    for (log_probs, targets, input_lengths, target_lengths, blank), error, message in BAD_INPUTS:
        key = tuple((np.ndim(a), np.asarray(a).dtype.kind) for a in (log_probs, targets, input_lengths, target_lengths))
        graph = graphs.setdefault(key, ud.function(lambda *a: loss(*a)))
        for run in (ud.nn.CTCLoss(blank=blank), graph if blank == loss.blank else None):
            if run is not None:
                with pytest.raises(error, match=message):
                    ud.to_numpy(run(ud.tensor(log_probs.astype(np.float32)), ud.tensor(targets),
                                    ud.tensor(input_lengths), ud.tensor(target_lengths)))
    with pytest.raises(ValueError, match="reduction"):
        ud.nn.CTCLoss(reduction="batchmean")
    with pytest.raises(TypeError, match="CTCLoss blank must be an int"):
        ud.nn.CTCLoss(blank=1.0)
    for blank in (1.5, True):  # (torch's TypeError, the function's too)
        with pytest.raises(TypeError, match=r"^ctc_loss blank must be an int \(a class index\), got (float|bool)"):
            ud.ops.ctc_loss(LOG_PROBS, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS, blank=blank)


@pytest.mark.every_keras_framework  # (run again on Keras-on-JAX and -torch: scripts/run-tests.sh)
def test_a_backend_with_a_ctc_kernel_gives_torchs_exact_values_and_gradient():
    """Where a backend has the framework's CTC kernel (torch's ``F.ctc_loss``: ~20x its scan's speed) it runs it
    behind the same checks: torch's losses and gradient bit for bit, its NaN gradient at -inf log-probabilities of
    a finite loss included (the scan gives it too), for each reduction."""
    from unidl import backends
    from unidl.backends.op_registry import optional_op

    kernel_on = [name for name in ud.available_backends() if optional_op(backends.load(name).ops, "fused_ctc_loss")]
    assert kernel_on == ["torch"]
    log_probs = LOG_PROBS.copy()
    log_probs[:, 1, 0] = -np.inf  # sample 1's blank masked: its target (1, 2, 3, 4) fits its 5 frames without any
    for reduction in ("none", "mean"):
        expected = _torch_losses_and_gradient(log_probs, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS, reduction)
        with ud.use_backend("torch"), ud.use_dtype("float64"):
            def loss(x):
                return ud.ops.ctc_loss(x, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS, reduction=reduction)

            got = ud.to_numpy(loss(ud.tensor(log_probs))), ud.to_numpy(ud.grad(lambda x: ud.ops.sum(loss(x)))(
                ud.tensor(log_probs)))
        assert np.isnan(expected[1]).any()
        for value, torch_value in zip(got, expected):
            np.testing.assert_array_equal(value, torch_value)
