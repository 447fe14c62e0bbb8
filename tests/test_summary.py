"""``ud.summary`` and ``Module.num_parameters``: totals as PyTorch counts them, the same text on every backend,
and no state changed by the forward that measures output shapes."""

import re

import numpy as np
import pytest

import unidl as ud
from unidl import config
from unidl.random import get_rng_state
from unidl.summary import readable_size
from unidl.testing.pytest_plugin import backends_under_test


class Net(ud.nn.Module):
    """Conv, batch norm (buffers), dropout, pooling, nested containers and a linear head."""

    def __init__(self):
        super().__init__()
        self.features = ud.nn.Sequential(ud.nn.Conv2d(1, 4, 3), ud.nn.BatchNorm2d(4), ud.nn.ReLU(),
                                         ud.nn.MaxPool2d(2))
        self.head = ud.nn.Sequential(ud.nn.Flatten(), ud.nn.Dropout(0.5), ud.nn.Linear(4 * 3 * 3, 8),
                                     ud.nn.BatchNorm1d(8), ud.nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.features(x))


def torch_net():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
                         nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 3 * 3, 8), nn.BatchNorm1d(8),
                                       nn.Linear(8, 3)))


def totals(text: str) -> dict:
    """'Total params: 1,234 (4.82 KB)' lines -> {'Total params': (1234, '4.82 KB')}."""
    found = re.findall(r"^([A-Za-z -]+): ([\d,]+) \(([\d.]+ [KMG]?B)\)$", text, flags=re.MULTILINE)
    return {name: (int(count.replace(",", "")), size) for name, count, size in found}


def cells(line: str) -> list:
    """A table row's columns (separated by at least two spaces)."""
    return re.split(r"\s{2,}", line.strip())


def test_totals_are_pytorchs_counts(backend):
    model = Net()
    reference = torch_net()
    parameters = sum(p.numel() for p in reference.parameters())
    buffers = sum(b.numel() for b in reference.buffers())
    buffer_bytes = sum(b.numel() * b.element_size() for b in reference.buffers())  # num_batches_tracked: int64
    assert model.num_parameters() == model.num_parameters(trainable_only=True) == parameters
    found = totals(ud.summary(model, input_shape=(1, 8, 8)))
    assert found["Total params"] == (parameters, readable_size(4 * parameters))
    assert found["Trainable params"][0] == parameters
    assert found["Non-trainable params"] == (0, "0.00 B")
    assert found["Buffers"] == (buffers, f"{buffer_bytes:.2f} B")
    assert found["Params and buffers"][0] == parameters + buffers


def test_same_text_on_every_backend(backend):
    def text():
        ud.manual_seed(0)
        model = Net()
        return (ud.summary(model, input_shape=(1, 8, 8)) + "\n" + ud.summary(model, depth=1)
                + "\n" + ud.summary(ud.models.CNN(1, 10, 8), input_shape=(1, 8, 8), depth=0))

    mine = text()
    with config.use_backend(backends_under_test()[0]):
        assert mine == text()
    lines = ud.summary(Net(), input_shape=(1, 8, 8)).splitlines()
    assert cells(lines[3]) == ["Net", "[1, 3]", "--", "True"]
    assert cells(lines[4]) == ["├─features (Sequential): 1-1", "[1, 4, 3, 3]", "--", "True"]
    assert cells(lines[5]) == ["│", "├─0 (Conv2d): 2-1", "[1, 4, 6, 6]", "40", "True"]
    assert cells(lines[7]) == ["│", "├─2 (ReLU): 2-3", "[1, 4, 6, 6]", "--", "--"]
    assert cells(lines[8]) == ["│", "└─3 (MaxPool2d): 2-4", "[1, 4, 3, 3]", "--", "--"]
    assert cells(lines[9]) == ["└─head (Sequential): 1-2", "[1, 3]", "--", "True"]
    assert cells(lines[10]) == ["├─0 (Flatten): 2-5", "[1, 36]", "--", "--"]
    assert cells(lines[14]) == ["└─4 (Linear): 2-9", "[1, 3]", "27", "True"]


def test_output_shapes_change_no_state(backend, rng):
    model = Net()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    model(ud.tensor(x))  # a training-mode forward: running statistics away from their initial values
    model.head.eval()  # a mixed mode must come back as it was
    modes = {name: module.training for name, module in model.named_modules()}
    holders = [*model.parameters(), *(b for _, b in model.named_buffers())]
    values = [getattr(v, "value", None) for v in holders] if backend == "jax" else None
    state, rng_state = model.state_dict(), get_rng_state()
    callers = [m.__dict__["_forward_caller"] for m in model.modules()]
    text = ud.summary(model, input_shape=(1, 8, 8))
    assert "[1, 8]" in text
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert all(a is b for a, b in zip(holders, [*model.parameters(), *(b for _, b in model.named_buffers())]))
    if values is not None:  # jax arrays are immutable: the same array objects mean nothing was written
        assert all(a is getattr(v, "value") for a, v in zip(values, holders))
    after = model.state_dict()
    assert all(np.array_equal(state[key], after[key]) for key in state)
    assert repr(get_rng_state()) == repr(rng_state)
    assert [m.__dict__["_forward_caller"] for m in model.modules()] == callers  # the recording hooks are gone


def test_collapsed_depth_counts_the_subtree(backend):
    lines = ud.summary(Net(), depth=1).splitlines()
    assert [cells(line) for line in lines[3:6]] == [
        ["Net", "--", "--", "True"],
        ["├─features (Sequential): 1-1", "--", "48", "True"],  # conv 4*9+4, batch norm 2*4
        ["└─head (Sequential): 1-2", "--", "339", "True"],  # 36*8+8, 2*8, 8*3+3
    ]
    assert cells(ud.summary(Net(), depth=0).splitlines()[3]) == ["Net", "--", "387", "True"]
    with pytest.raises(ValueError, match="depth must be a non-negative integer, got -1"):
        ud.summary(Net(), depth=-1)


def test_frozen_parameters_are_non_trainable(backend):
    model = Net()
    model.head[2].requires_grad_(False)
    assert model.num_parameters() == 387 and model.num_parameters(trainable_only=True) == 387 - 296
    text = ud.summary(model)
    found = totals(text)
    assert found["Trainable params"][0] == 91 and found["Non-trainable params"] == (296, "1.16 KB")
    rows = [cells(line) for line in text.splitlines()]
    assert ["└─head (Sequential): 1-2", "--", "--", "Partial"] in rows
    assert ["├─2 (Linear): 2-7", "--", "296", "False"] in rows


class Probe(ud.nn.Module):
    """Records the dtype kind of its input and passes it on."""

    def forward(self, x):
        self.kind = ud.to_numpy(x).dtype.kind
        return x


def test_input_dtype(backend):
    probe = Probe()
    assert ud.summary(probe, input_shape=(5,), dtype="int64").splitlines()[3].split("    ")[0] == "Probe"
    assert probe.kind == "i"
    ud.summary(probe, input_shape=(5,))
    assert probe.kind == "f"


class SharedLayer(ud.nn.Module):
    """One Linear called twice under two names, as torch's ``self.b = self.a``."""

    def __init__(self):
        super().__init__()
        self.a = ud.nn.Linear(6, 6)
        self.b = self.a
        self.head = ud.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.b(self.a(x)))


def test_a_module_listed_twice_is_counted_once(backend):
    torch = pytest.importorskip("torch")
    shared = torch.nn.Linear(6, 6)
    reference = torch.nn.ModuleDict({"a": shared, "b": shared, "head": torch.nn.Linear(6, 2)})
    text = ud.summary(SharedLayer(), input_shape=(6,))
    rows = [cells(line) for line in text.splitlines()[4:7]]
    assert [row[2] for row in rows] == ["42", "(recursive)", "14"]  # the rows add up to the total (42 twice before)
    assert totals(text)["Total params"][0] == sum(p.numel() for p in reference.parameters()) == 56


@pytest.mark.parametrize("input_shape", [4, (-4,), (4.0,), "4"])
def test_an_input_shape_that_is_not_sizes_is_a_clear_error(input_shape):
    with pytest.raises(ValueError, match=r"input_shape must be one sample's shape .* such as \(1, 28, 28\)"):
        ud.summary(ud.nn.Linear(4, 3), input_shape=input_shape)


class TwoInputs(ud.nn.Module):
    """Token ids through an embedding beside float features: a forward of two inputs of two dtypes."""

    def __init__(self):
        super().__init__()
        self.embed = ud.nn.Embedding(20, 4)
        self.dense = ud.nn.Linear(3, 4)

    def forward(self, ids, features):
        return ud.ops.sum(self.embed(ids), axis=1) + self.dense(features)


def test_several_inputs_each_with_its_shape_and_dtype(backend):
    torch = pytest.importorskip("torch")
    text = ud.summary(TwoInputs(), input_shape=[(5,), (3,)], dtype=["int64", None])
    rows = {cells(line)[0].split("─")[-1]: cells(line)[1:] for line in text.splitlines()[3:6]}
    assert rows["embed (Embedding): 1-1"][0] == "[1, 5, 4]" and rows["dense (Linear): 1-2"][0] == "[1, 4]"
    assert rows["TwoInputs"][0] == "[1, 4]"
    reference = torch.nn.ModuleDict({"embed": torch.nn.Embedding(20, 4), "dense": torch.nn.Linear(3, 4)})
    assert totals(text)["Total params"][0] == sum(p.numel() for p in reference.parameters())
    assert ud.summary(TwoInputs(), input_shape=([5], [3]), dtype=("int64", "float32")).count("[1, 4]") == 2


@pytest.mark.parametrize("input_shape, dtype, message", [
    ([(5,), 3], None, r"or one such shape per input .* such as \[\(10, 8\), \(7, 8\)\]; got \[\(5,\), 3\]"),
    ([(5,), (-3,)], None, r"one such shape per input"),
    ([(5,), (3,)], ["int64"], r"one per input: 2 input shape\(s\) were given and 1 dtypes \['int64'\]"),
])
def test_bad_shapes_or_dtypes_of_several_inputs_are_clear_errors(input_shape, dtype, message):
    model = TwoInputs()
    with pytest.raises(ValueError, match=message):
        ud.summary(model, input_shape=input_shape, dtype=dtype)
