"""Value checks inside ``ud.ops.scan``'s body (an index out of range) raise the eager error on every backend, eagerly,
in ``ud.function``, in a function that differentiates the scan, in ``ud.train_step`` and in ``fit``, and leave the
state the plain torch loop leaves when it raises there (the oracle: ``torch.nn`` modules, a Python loop)."""

import numpy as np
import pytest

import unidl as ud

T, N, D, C = 4, 6, 5, 3  # steps, batch, width, classes

#: token ids (as floats: the model's input, which a BatchNorm reads before the scan), in range
GOOD = np.array([[0, 1, 2, 3], [1, 2, 3, 4], [4, 3, 2, 1], [0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 0, 0]], np.float32)
#: out of range at step 2 (0 to 9) and again at step 3 (-1 to 4): the first, as torch's loop meets it, is named
BAD = GOOD.copy()
BAD[:, 2] = [0, 1, 9, 2, 3, 4]
BAD[:, 3] = [-1, 0, 1, 2, 3, 4]
LABELS = np.array([0, 1, 2, 0, 1, 2])
FIRST_FAILURE = r"Embedding indices must lie in \[0, 5\); found values from 0 to 9"


class _ScanNet(ud.nn.Module):
    """A BatchNorm written before the scan, an Embedding looked up in its body, a BatchNorm written after it."""

    def __init__(self):
        super().__init__()
        self.before, self.start = ud.nn.BatchNorm1d(T), ud.nn.Linear(T, D)
        self.embedding = ud.nn.Embedding(5, D)
        self.after, self.head = ud.nn.BatchNorm1d(D), ud.nn.Linear(D, C)

    def forward(self, x):
        def step(h, token):
            h = ud.ops.tanh(h + self.embedding(token))
            return h, h

        h, _ = ud.ops.scan(step, self.start(self.before(x)), ud.ops.cast(x, "int64"), axis=1)
        return self.head(self.after(h))


def _torch_model(state):
    """``_ScanNet`` in plain ``torch.nn`` with a Python loop over the steps, holding ``state``."""
    import torch

    class TorchScanNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.before, self.start = torch.nn.BatchNorm1d(T), torch.nn.Linear(T, D)
            self.embedding = torch.nn.Embedding(5, D)
            self.after, self.head = torch.nn.BatchNorm1d(D), torch.nn.Linear(D, C)

        def forward(self, x):
            h, tokens = self.start(self.before(x)), x.long()
            for t in range(x.shape[1]):
                h = torch.tanh(h + self.embedding(tokens[:, t]))
            return self.head(self.after(h))

    model = TorchScanNet()
    model.load_state_dict({key: torch.tensor(np.array(value)) for key, value in state.items()})
    return model


def _state(model) -> dict:
    return {key: np.array(ud.to_numpy(value)) for key, value in model.state_dict().items()}


def _oracle(state, batches, train: bool, keeps_writes: bool = True) -> dict:
    """The state torch's modules hold after running ``batches`` (a forward, or an SGD step with momentum, each) from
    ``state``, where ``BAD`` raises torch's own ``IndexError`` in the loop's lookup (and ``GOOD`` nothing). Not
    ``keeps_writes``: the statistics the forward wrote before it raised are put back (a step that gives back the
    whole state it was given where a check failed, ``_keeps_a_failed_steps_writes``)."""
    import torch

    model = _torch_model(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x in batches:
        buffers = {key: value.clone() for key, value in model.state_dict().items()}
        try:
            if train:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(LABELS)).backward()
                optimizer.step()
            else:
                model(torch.tensor(x))
        except IndexError:
            assert x is BAD
            if not keeps_writes:
                model.load_state_dict(buffers)
        else:
            assert x is GOOD, "torch's loop took the index out of range"
    return {key: value.detach().numpy() for key, value in model.state_dict().items()}


def _keeps_a_failed_steps_writes(eager: bool) -> bool:
    """Whether a train step of the backend in force keeps the BatchNorm statistics its forward wrote before a check
    outside any scan (a label out of range) failed, as torch's eager step: Keras-on-JAX's train step gives back the
    whole state it was given where a check failed (docs/guarantees.md), and a check in a scan's body is held to
    the same there."""
    model = ud.nn.Sequential(ud.nn.BatchNorm1d(4), ud.nn.Linear(4, 3))
    step = ud.train_step(model, ud.nn.CrossEntropyLoss(), ud.optim.SGD(model.parameters(), lr=0.1), eager=eager)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    step(x, LABELS)
    counted = int(ud.to_numpy(model.state_dict()["0.num_batches_tracked"]))
    with pytest.raises(ud.IndexOutOfRangeError):
        step(x, np.array([0, 1, 7, 0, 1, 2]))
    return int(ud.to_numpy(model.state_dict()["0.num_batches_tracked"])) == counted + 1


def _assert_state_is(found: dict, expected: dict, case: str):
    assert sorted(found) == sorted(expected)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            assert int(found[key]) == int(value), f"{case}: {key}"
        else:
            np.testing.assert_allclose(found[key], value, rtol=1e-5, atol=1e-6, err_msg=f"{case}: {key}")


def _differentiating_step(model, optimizer):
    """One SGD step written with ``ud.value_and_grad`` and ``optimizer.apply``, the scan inside the gradient."""
    params = model.parameters()

    def step(x, y):
        loss, grads = ud.value_and_grad(lambda: ud.ops.cross_entropy(model(x), y), params)()
        optimizer.apply(grads)
        return loss

    return step


CASES = ["eager forward", "function", "function differentiating the scan", "train_step", "eager train_step", "fit"]


@pytest.mark.parametrize("case", CASES)
def test_an_index_out_of_range_in_a_scan_body_raises_and_leaves_torchs_state(backend, case):
    """An Embedding index out of range at one step of a scan raises ``IndexOutOfRangeError`` naming the first
    failing step's values on every backend, and the state after it (the BatchNorm written before the scan kept,
    the one after it and the update not written) is the plain torch loop's, which raised there. On jax and
    Keras-on-JAX a check in a scan body of a differentiated step was not reported (checkify): the step updated with
    the wrapped index; eagerly there was no check at all."""
    ud.manual_seed(0)
    model = _ScanNet()
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train = case not in ("eager forward", "function")
    if case == "eager forward":
        run = model
    elif case == "function":
        run = ud.function(lambda x: model(x))
    elif case == "function differentiating the scan":
        run = ud.function(_differentiating_step(model, optimizer))
    elif case in ("train_step", "eager train_step"):
        run = ud.train_step(model, ud.nn.CrossEntropyLoss(), optimizer, eager=case == "eager train_step")
    else:
        def run(x, y):
            ud.fit(model, (x, y), batch_size=N, epochs=1, shuffle=False, verbose=0, loss=ud.nn.CrossEntropyLoss(),
                   optimizer=optimizer)

    initial = _state(model)
    keeps_writes = case == "function differentiating the scan" or not train or _keeps_a_failed_steps_writes(
        case == "eager train_step")
    call = (lambda x: run(x, LABELS)) if train else run
    call(GOOD)  # (a graph traced; an update made)
    with pytest.raises(ud.IndexOutOfRangeError, match=FIRST_FAILURE):
        call(BAD)
    _assert_state_is(_state(model), _oracle(initial, [GOOD, BAD], train, keeps_writes), case)
    call(GOOD)  # (still usable: the state was not left half written)
    expected = _oracle(initial, [GOOD, BAD, GOOD], train, keeps_writes)
    _assert_state_is(_state(model), expected, f"{case}, then a good batch")


TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)
#: (outer step, inner step, 2): in range at outer step 0; at outer step 1 its inner step 1 holds 1 to 5, step 2 -2 to 0
INDICES = np.array([[[0, 1], [2, 3], [3, 0]], [[0, 2], [5, 1], [-2, 0]]])
#: (step, batch) labels of 3 classes: out of range at step 1 (0 to 5) and step 2 (-3 to 1)
STEP_LABELS = np.array([[0, 2], [0, 5], [-3, 1]])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "function"])
def test_take_and_label_checks_in_nested_reversed_and_differentiated_scans_name_the_first_failure(backend, graph,
                                                                                                   reverse):
    """A ``take`` index out of range in the body of a scan inside another scan's body, and a cross-entropy label out
    of range in the body of a differentiated scan, raise the eager error naming the values of the first step where
    a check failed, in the order the steps run (``reverse``: from the last), eagerly and in ``ud.function``, as the
    plain loop raises there (torch's own ``IndexError`` in ``index_select`` and ``cross_entropy``)."""
    import torch

    def nested(table, indices):
        def outer(total, rows):
            def inner(subtotal, row):
                return subtotal + ud.ops.sum(ud.ops.take(table, row, axis=0)), subtotal

            subtotal, _ = ud.ops.scan(inner, total, rows, reverse=reverse)
            return subtotal, subtotal

        return ud.ops.scan(outer, ud.ops.sum(table) * 0, indices)[0]

    def losses(logits, labels):
        def step(total, inputs):
            z, y = inputs
            return total + ud.ops.cross_entropy(z, y), total

        return ud.ops.scan(step, ud.ops.sum(logits) * 0, (logits, labels), reverse=reverse)[0]

    def gradient(logits, labels):
        return ud.value_and_grad(losses)(logits, labels)

    logits = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    run_nested, run_gradient = (ud.function(nested), ud.function(gradient)) if graph else (nested, gradient)
    good = INDICES.clip(0, 3)  # (the same shape: no second trace)
    total = float(ud.to_numpy(run_nested(TABLE, good)))
    assert total == sum(float(torch.index_select(torch.tensor(TABLE), 0, torch.tensor(row)).sum())
                        for rows in good for row in rows)
    with pytest.raises(IndexError):  # (the oracle: torch's loop raises in the order the steps run)
        for rows in INDICES:
            for row in (reversed(rows) if reverse else rows):
                torch.index_select(torch.tensor(TABLE), 0, torch.tensor(row))
    expected = r"-2 to 0" if reverse else r"1 to 5"
    with pytest.raises(ud.IndexOutOfRangeError, match=rf"indices must lie in \[0, 4\); found values from {expected}"):
        run_nested(TABLE, INDICES)
    value, grad = run_gradient(logits, STEP_LABELS[:1].repeat(3, 0))
    reference = torch.tensor(logits, requires_grad=True)
    torch_value = sum(torch.nn.functional.cross_entropy(reference[t], torch.tensor(STEP_LABELS[0])) for t in range(3))
    torch_value.backward()
    np.testing.assert_allclose(ud.to_numpy(value), torch_value.item(), rtol=2e-6)
    np.testing.assert_allclose(ud.to_numpy(grad), reference.grad.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(IndexError):
        for t in (reversed(range(3)) if reverse else range(3)):
            torch.nn.functional.cross_entropy(torch.tensor(logits[t]), torch.tensor(STEP_LABELS[t]))
    expected = r"-3 to 1" if reverse else r"0 to 5"
    with pytest.raises(ud.IndexOutOfRangeError, match=rf"labels must lie in \[0, 3\).*found values from {expected}"):
        run_gradient(logits, STEP_LABELS)
