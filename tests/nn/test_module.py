"""``Module``: registration, traversal, modes, state dicts, native objects and backend binding."""

import numpy as np
import pytest

import unidl as ud


class Net(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = ud.nn.Sequential(ud.nn.Linear(4, 3), ud.nn.ReLU())
        self.head = ud.nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.head(self.body(x))


def test_parameters_and_names(backend):
    net = Net()
    names = [name for name, _ in net.named_parameters()]
    assert names == ["body.0.weight", "body.0.bias", "head.weight"]
    assert len(net.parameters()) == 3
    assert [tuple(v.shape) for v in net.state_dict().values()] == [(3, 4), (3,), (2, 3)]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in net.state_dict().values())


def test_forward_matches_numpy(backend, rng):
    net = Net()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    state = net.state_dict()
    hidden = np.maximum(x @ state["body.0.weight"].T + state["body.0.bias"], 0)
    expected = hidden @ state["head.weight"].T
    np.testing.assert_allclose(ud.to_numpy(net(ud.tensor(x))), expected, rtol=1e-5, atol=1e-6)


def test_train_eval_propagates(backend):
    net = Net()
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


class FrozenNormBackbone(ud.nn.Module):
    """The frozen-BatchNorm pattern: a ``train`` that keeps the backbone's BatchNorm in eval mode."""

    def __init__(self):
        super().__init__()
        self.bn = ud.nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(x)

    def train(self, mode=True):
        super().train(mode)
        self.bn.eval()
        return self


def test_train_calls_each_childs_own_train_and_takes_a_bool(backend):
    """As torch.nn's: ``train()`` calls each child's ``train`` (it set every module's flag directly, so a
    backbone's override below the top was skipped and its frozen BatchNorm updated its statistics in ``fit``), and
    a mode other than a bool is a ``ValueError`` (``"False"`` trained)."""
    net = ud.nn.Sequential(FrozenNormBackbone(), ud.nn.Linear(3, 2))
    net.train()
    assert net.training and net[0].training and net[1].training and not net[0].bn.training
    x = ud.tensor(np.arange(12.0).reshape(4, 3))
    ud.fit(net, (x, ud.tensor(np.zeros((4, 2)))), loss="mse", optimizer=ud.optim.SGD(net.parameters(), lr=0.1),
           epochs=1, batch_size=4, verbose=0)
    np.testing.assert_array_equal(net.state_dict()["0.bn.running_mean"], np.zeros(3))  # no statistics gathered
    with pytest.raises(ValueError, match="Sequential.train: mode must be True or False, got 'False'"):
        net.train("False")


@pytest.mark.parametrize("name", ["torch", "tensorflow", "jax"])  # (Keras's own Variable: TensorFlow's slice error)
def test_iterating_a_parameter_gives_its_rows(name):
    """``list(parameter)`` gives its rows and ends, as torch's (JAX's clamped indexing repeated the last row for
    ever: ``ud.nn.init.normal(layer.weight, ...)`` of the parameter rather than its layer grew for ever)."""
    with ud.use_backend(name):
        layer = ud.nn.Linear(3, 2)
    rows = list(layer.weight)
    assert len(rows) == 2
    np.testing.assert_array_equal(np.stack([ud.to_numpy(r) for r in rows]), layer.state_dict()["weight"])


class Counting(ud.nn.Module):
    """A buffer updated by assignment in the forward, torch's idiom for counters and moving averages."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", np.zeros(2, np.float32))
        self.fc = ud.nn.Linear(2, 2)

    def forward(self, x):
        self.count = self.count + 1
        return self.fc(x)


def test_assigning_to_a_buffer_parameter_or_child_name_keeps_it_or_is_an_error(backend):
    """As torch.nn's ``__setattr__``: a tensor assigned to a buffer's name is the buffer's new value, eagerly and
    inside ``ud.function`` (it was dropped from the buffers, and from ``state_dict``: a checkpoint lost it), an array
    of another shape a new buffer in its place; anything but a parameter (or None) for a parameter's name, and
    anything but a module for a child's, is a ``TypeError`` (the parameter or child left the model silently)."""
    model, x = Counting(), ud.tensor(np.ones((1, 2)))
    model(x)
    ud.function(lambda v: model(v))(x)
    assert list(model.state_dict()) == ["count", "fc.weight", "fc.bias"]
    np.testing.assert_array_equal(model.state_dict()["count"], [2.0, 2.0])
    model.count = np.arange(3.0)
    assert list(model.state_dict()) == ["count", "fc.weight", "fc.bias"]
    np.testing.assert_array_equal(model.state_dict()["count"], [0.0, 1.0, 2.0])
    with pytest.raises(TypeError, match="cannot assign a value of type str as buffer 'count' of Counting"):
        model.count = "reset"
    with pytest.raises(TypeError, match="cannot assign a value of type str as child module 'fc' of Counting"):
        model.fc = "off"
    with pytest.raises(TypeError, match="as parameter 'weight' of Linear: a parameter .* or None, as torch.nn"):
        model.fc.weight = model.fc.weight * 2
    assert [name for name, _ in model.named_parameters()] == ["fc.weight", "fc.bias"]
    model.fc.bias = None  # None stays allowed for each
    assert [name for name, _ in model.named_parameters()] == ["fc.weight"]
    # a buffer registered as None (or set to None) becomes one again when a value is assigned, and two buffers
    # swapped by assignment swap (the first written into the second made them equal)
    model.register_buffer("mask", None)
    assert model.mask is None and "mask" not in model.state_dict()
    for bad in ("abc", 0):  # (torch's TypeError: a tensor or None)
        with pytest.raises(TypeError, match=f"cannot assign a value of type {type(bad).__name__} as buffer 'mask'"):
            model.mask = bad
    model.mask = np.ones(2, np.float32)
    model.count = None
    model.count = np.full(2, 5.0)
    assert list(model.state_dict()) == ["count", "mask", "fc.weight"]  # (count keeps its place, as torch's)
    model.count, model.mask = model.mask, model.count
    np.testing.assert_array_equal(model.state_dict()["count"], [1.0, 1.0])
    np.testing.assert_array_equal(model.state_dict()["mask"], [5.0, 5.0])


def test_child_and_buffer_names_are_checked_and_a_child_set_to_none_keeps_its_place(backend):
    """As torch.nn's: ``add_module``/``register_buffer`` refuse a name the module already has as another
    attribute (``add_module("weight", ...)`` removed the parameter silently, ``"training"`` replaced the mode flag,
    ``ModuleDict({"keys": ...})`` shadowed its method, a buffer named "weight" hid the parameter from the forward),
    a '.' and a name that is no string; ``register_buffer(name, None)`` is a None attribute and nothing in
    ``state_dict`` (NaN or a conversion error before); a child set to None and back keeps its place in the order
    (of ``state_dict``, of the optimizer's parameters)."""
    layer = ud.nn.Linear(2, 2)
    for call in (lambda: layer.add_module("weight", ud.nn.ReLU()), lambda: layer.add_module("training", ud.nn.ReLU()),
                 lambda: layer.register_buffer("weight", np.zeros((2, 2))),
                 lambda: ud.nn.ModuleDict({"keys": ud.nn.ReLU()})):
        with pytest.raises(KeyError, match="already exists"):
            call()
    with pytest.raises(KeyError, match="without '.', got 'a.b'"):
        layer.register_buffer("a.b", np.zeros(1))
    with pytest.raises(TypeError, match="the name must be a string, got int 3"):
        layer.add_module(3, ud.nn.ReLU())
    layer.register_buffer("mask", None)
    assert layer.mask is None and list(layer.state_dict()) == ["weight", "bias"]
    net = Net()
    order = list(net.state_dict())
    body, net.body = net.body, None
    assert net.native is not None  # (torch's native module of a None child)
    net.body = body
    assert list(net.state_dict()) == order


def _with_options(base, fc):
    """A module class named ``Head`` over ``base`` (``ud.nn.Module`` or ``torch.nn.Module``) with a child and a
    two-line ``extra_repr``."""
    def __init__(self):
        base.__init__(self)
        self.fc = fc()

    return type("Head", (base,), {"__init__": __init__, "extra_repr": lambda self: "k=1\nj=2"})


def test_reprs_are_torchs(backend):
    """A two-line ``extra_repr`` beside children is indented on lines of its own (it went on the header line, its
    second line unindented), and a ModuleList collapses runs of equal modules (``(0-2): 3 x Linear(...)``), as
    torch.nn's."""
    import torch

    ours = _with_options(ud.nn.Module, lambda: ud.nn.Linear(2, 2))()
    theirs = _with_options(torch.nn.Module, lambda: torch.nn.Linear(2, 2))()
    assert repr(ours) == repr(theirs)
    layers = ud.nn.ModuleList([ud.nn.Linear(2, 2) for _ in range(3)] + [ud.nn.ReLU(), ud.nn.ReLU()])
    reference = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)] + [torch.nn.ReLU(), torch.nn.ReLU()])
    assert repr(layers) == repr(reference) and "(0-2): 3 x Linear" in repr(layers)
    assert repr(ud.nn.ModuleList()) == repr(torch.nn.ModuleList())
    assert repr(type("Blocks", (ud.nn.ModuleList,), {})([ud.nn.ReLU()])).startswith("Blocks(")


def test_same_seed_gives_bit_identical_weights_on_every_backend():
    states = {}
    for name in ud.available_backends():
        with ud.use_backend(name):
            ud.manual_seed(7)
            states[name] = ud.models.TwoLayerNet(20, 8, 3).state_dict()
    reference = states["torch"]
    for name, state in states.items():
        for key in reference:
            assert np.array_equal(state[key], reference[key]), (name, key)


def test_state_dict_round_trip_across_backends(rng):
    with ud.use_backend("torch"):
        ud.manual_seed(1)
        source = Net()
        state = source.state_dict()
    for name in ("tensorflow", "keras"):
        with ud.use_backend(name):
            ud.manual_seed(2)
            target = Net()
            target.load_state_dict(state)
            for key, value in target.state_dict().items():
                assert np.array_equal(value, state[key])


def test_load_state_dict_reports_every_problem_and_changes_nothing(backend):
    net = Net()
    before = net.state_dict()
    state = {key: value + 1 for key, value in before.items()}  # the entries that fit would change the weights
    del state["head.weight"]
    state["body.0.bias"] = np.zeros(5, np.float32)
    state["extra.weight"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ud.StateDictError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    assert "body.0.bias: expected shape (3,), found (5,)" in message
    assert "missing keys: head.weight (expected shape (2, 3))" in message
    assert "unexpected keys: extra.weight (shape (1, 1))" in message
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"{key} changed although the load was refused")


def test_values_that_are_no_real_numbers_change_nothing_and_bfloat16_loads(backend):
    """A value of strings, objects or complex numbers is one ``StateDictError`` before anything is written (the
    entries before it were written, then the framework raised its own error); bfloat16 arrays of ``ml_dtypes``
    (what ``ud.to_numpy`` gives for a bfloat16 tensor) load on every backend (torch's raised a ``TypeError``)."""
    import ml_dtypes

    net = Net()
    before = net.state_dict()
    for bad, dtype in ((np.array(["a", "b", "c"]), "<U1"), (np.array([1j, 2j, 3j]), "complex128"),
                       (np.array([object()] * 3, dtype=object), "object")):
        state = {key: value + 1 for key, value in before.items()}
        state["body.0.bias"] = bad
        with pytest.raises(ud.StateDictError, match=rf"values that are not real numbers: body.0.bias: found dtype "
                                                    rf"{dtype}"):
            net.load_state_dict(state)
        for key, value in net.state_dict().items():
            np.testing.assert_array_equal(value, before[key], err_msg=f"{key} changed although the load was refused")
    halves = {key: value.astype(ml_dtypes.bfloat16) for key, value in before.items()}
    net.load_state_dict(halves)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, halves[key].astype(np.float32))


def test_non_strict_load_returns_missing_and_unexpected(backend):
    net = Net()
    state = net.state_dict()
    del state["head.weight"]
    state["extra"] = np.zeros(1)
    result = net.load_state_dict(state, strict=False)
    # as torch's: a (missing_keys, unexpected_keys) pair that unpacks (the dict of before unpacked into its key
    # names), read by name too
    missing, unexpected = result
    assert (missing, unexpected) == (result.missing_keys, result.unexpected_keys) == (["head.weight"], ["extra"])
    assert (result["missing"], result["unexpected"]) == (["head.weight"], ["extra"])
    assert repr(net.load_state_dict(net.state_dict())) == "<All keys matched successfully>"
    assert repr(result) == "_IncompatibleKeys(missing_keys=['head.weight'], unexpected_keys=['extra'])"  # torch's
    with pytest.raises(RuntimeError, match="missing keys: head.weight"):  # torch's class of error, and KeyError
        net.load_state_dict(state)


def test_native_objects(backend):
    net = Net()
    native = net.native
    expected_type = {"torch": "torch.nn.modules.module.Module", "tensorflow": "tensorflow.python.module.module.Module",
                     "keras": "keras.src.models.model.Model", "jax": "unidl.backends.jax.module.NativeModule"}[backend]
    assert expected_type in {f"{c.__module__}.{c.__name__}" for c in type(native).__mro__}
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(ud.to_numpy(native(ud.tensor(x))), ud.to_numpy(net(ud.tensor(x))), rtol=1e-6)


def test_torch_native_state_dict_keys_match():
    with ud.use_backend("torch"):
        net = Net()
        assert list(net.native.state_dict()) == list(net.state_dict())
        import torch

        assert all(isinstance(p, torch.nn.Parameter) for p in net.parameters())


def test_module_used_under_other_backend_is_an_error():
    with ud.use_backend("torch"):
        net = Net()
    with ud.use_backend("tensorflow"):
        with pytest.raises(ud.BackendMismatchError, match="created under backend 'torch'.*under 'tensorflow'.*state_dict"):
            net(ud.tensor(np.ones((1, 4))))


def test_optimizer_with_parameters_of_other_backend_is_an_error():
    with ud.use_backend("torch"):
        net = Net()
    with ud.use_backend("keras"):
        with pytest.raises(ud.BackendMismatchError, match="not a parameter of backend 'keras'"):
            ud.optim.SGD(net.parameters(), lr=0.1)


def test_mixing_submodules_of_two_backends_is_an_error():
    with ud.use_backend("torch"):
        layer = ud.nn.Linear(2, 2)
    with ud.use_backend("tensorflow"):
        with pytest.raises(ud.BackendMismatchError, match="sub-module"):
            ud.nn.Sequential(layer)


def test_forgetting_super_init_is_explained(backend):
    class Broken(ud.nn.Module):
        def __init__(self):
            self.fc = ud.nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="must call super"):
        Broken()


def test_wrong_feature_size_names_layer_and_shapes(backend):
    net = Net()
    with pytest.raises(ud.ShapeMismatchError, match=r"Linear\(in_features=4.*at 'body.0' expected input of shape \(N, 4\), received \(2, 5\)"):
        net(ud.tensor(np.ones((2, 5))))


def test_tensor_round_trip(backend):
    values = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = ud.tensor(values)
    back = ud.to_numpy(t)
    assert back.dtype == np.float32 and np.array_equal(back, values.astype(np.float32))
    labels = ud.to_numpy(ud.tensor(np.array([1, 2, 3])))
    assert labels.dtype == np.int64


def test_models_built_in_threads_get_the_weights_one_thread_gets(backend):
    """The weight generator is per thread: after one manual_seed, each thread starts from that seed."""
    import threading

    ud.manual_seed(7)
    alone = ud.models.TwoLayerNet(5, 4, 3).state_dict()
    ud.manual_seed(7)
    built = {}

    def build(index):
        with ud.use_backend(backend):
            built[index] = ud.models.TwoLayerNet(5, 4, 3).state_dict()

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        assert all(np.array_equal(alone[k], built[index][k]) for k in alone), index


def test_deepcopy_makes_new_variables_of_the_same_values(backend, rng):
    """``copy.deepcopy(model)`` (a target network, an EMA copy: PyTorch's idiom) copies every parameter and buffer
    into new variables of the same values, dtypes, ``requires_grad`` and mode, keeps a sub-module shared in the
    original shared in the copy, and training the copy leaves the original as it was (it raised: a Python module
    in the layers' attributes could not be copied)."""
    import copy

    shared = ud.nn.Linear(3, 3)
    model = ud.nn.Sequential(ud.nn.Linear(3, 3), ud.nn.BatchNorm1d(3), shared, ud.nn.PReLU(), shared)
    model[0].requires_grad_(False)
    model[1].eval()
    x = rng.standard_normal((6, 3)).astype(np.float32)
    copied = copy.deepcopy(model)
    assert list(copied.state_dict()) == list(model.state_dict()) and copied[2] is copied[4] is not shared
    for key, value in model.state_dict().items():
        assert copied.state_dict()[key].dtype == value.dtype
        np.testing.assert_array_equal(copied.state_dict()[key], value)
    from unidl.nn.module import is_trainable

    assert [is_trainable(p) for p in copied.parameters()] == [is_trainable(p) for p in model.parameters()]
    assert copied[1].training is False and copied[0].training is True and "at '1'" in copied[1].describe()
    np.testing.assert_array_equal(ud.to_numpy(copied(ud.tensor(x))), ud.to_numpy(model(ud.tensor(x))))
    before = model.state_dict()
    ud.fit(copied, (x, x), loss="mse", optimizer=ud.optim.SGD(copied.parameters(), lr=0.1), epochs=2, batch_size=3,
           verbose=0)
    assert not np.array_equal(copied.state_dict()["2.weight"], before["2.weight"])
    np.testing.assert_array_equal(copied.state_dict()["0.weight"], before["0.weight"])  # (frozen in the copy too)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


class Tied(ud.nn.Module):
    """An encoder and a decoder sharing one weight (weight tying), and a layer listed twice."""

    def __init__(self):
        super().__init__()
        self.encode, self.decode = ud.nn.Linear(4, 3, bias=False), ud.nn.Linear(3, 4)
        self.decode.weight = self.encode.weight  # (a (3, 4) weight read transposed by the decoder)
        self.mix = ud.nn.Linear(4, 4)
        self.layers = ud.nn.ModuleList([self.mix, ud.nn.Tanh(), self.mix])

    def forward(self, x):
        h = self.encode(x)
        y = ud.ops.linear(h, ud.ops.transpose(self.decode.weight, 0, 1), self.decode.bias)
        for layer in self.layers:
            y = layer(y)
        return y


def test_a_shared_weight_or_layer_is_one_parameter_and_trains_as_torchs(backend, rng):
    """``parameters()`` lists a tied weight and a layer used twice once each, as PyTorch's (every name was listed:
    ``SGD(model.parameters())`` refused the model); ``state_dict()`` keeps every name. Three SGD steps with
    momentum give torch's weights: each shared parameter's gradient is the sum over its uses."""
    import torch

    ud.manual_seed(0)
    model = Tied()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["encode.weight", "decode.bias", "mix.weight", "mix.bias"]
    assert len(list(model.named_parameters(remove_duplicate=False))) == 9
    assert list(model.state_dict()) == ["encode.weight", "decode.weight", "decode.bias", "mix.weight", "mix.bias",
                                        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"][:3] + [
        "mix.weight", "mix.bias", "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    state = model.state_dict()
    if backend == "jax":  # (its native view takes every state_dict name, a tied weight's too: apply(state, x))
        assert list(model.native.params) == list(state)
        model.native.apply(dict(state), rng.standard_normal((2, 4)).astype(np.float32))
    reference = torch.nn.ModuleDict({"encode": torch.nn.Linear(4, 3, bias=False), "decode": torch.nn.Linear(3, 4),
                                     "mix": torch.nn.Linear(4, 4)})
    reference.decode.weight = reference.encode.weight
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            parameter.copy_(torch.tensor(state[name]))
    x, y = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        step(x, y)
        h = reference.encode(torch.tensor(x))
        out = torch.nn.functional.linear(h, reference.decode.weight.T, reference.decode.bias)
        out = reference.mix(torch.tanh(reference.mix(out)))
        loss = torch.nn.functional.mse_loss(out, torch.tensor(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, parameter in reference.named_parameters():
        np.testing.assert_allclose(model.state_dict()[name], parameter.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_state_dict_order_is_pytorchs_with_buffers(backend):
    """Each module's own parameters, then its own buffers, then its children's, as PyTorch's ``state_dict`` (every
    parameter came before every buffer)."""
    import torch

    model = ud.nn.Sequential(ud.nn.Linear(3, 2), ud.nn.BatchNorm1d(2), ud.nn.Linear(2, 2))
    reference = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 2))
    assert list(model.state_dict()) == list(reference.state_dict())


def _registered(nn, parameter, buffer):
    """A module with a parameter, a None parameter, a persistent and a non-persistent buffer and a child,
    registered through the methods alone (``nn``: ``ud.nn`` or ``torch.nn``)."""
    module = nn.Module()
    module.register_parameter("scale", parameter(np.ones(3, np.float32)))
    module.register_parameter("unused", None)
    module.register_buffer("mask", buffer(np.zeros(3, np.float32)), persistent=False)
    module.register_buffer("count", buffer(np.zeros((), np.float32)))
    module.add_module("child", nn.Linear(3, 2))
    return module


def test_register_parameter_non_persistent_buffers_and_state_dict_arguments_as_torch(backend):
    import torch

    model = _registered(ud.nn, lambda v: ud.nn.Module().parameter(v), lambda v: v)
    reference = _registered(torch.nn, lambda v: torch.nn.Parameter(torch.from_numpy(v)), torch.from_numpy)
    assert model.unused is None and reference.unused is None
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in reference.named_buffers()] == ["mask", "count"]
    assert len(list(model.buffers())) == len(list(reference.buffers())) == 2
    assert list(model.state_dict()) == list(reference.state_dict()) == ["scale", "count", "child.weight",
                                                                        "child.bias"]
    assert list(model.state_dict(prefix="enc.")) == list(reference.state_dict(prefix="enc."))
    kept = model.state_dict(keep_vars=True)
    assert kept["scale"] is model.scale and kept["child.weight"] is model.child.weight
    destination = {"other": 1}
    assert model.state_dict(destination=destination, prefix="m.") is destination
    assert list(destination) == ["other", "m.scale", "m.count", "m.child.weight", "m.child.bias"]
    # a non-persistent buffer set to None and filled in again stays out of the state dict, as torch's
    for module, value in ((model, np.ones(3, np.float32)), (reference, torch.ones(3))):
        module.mask = None
        module.mask = value
    assert list(model.state_dict()) == list(reference.state_dict())
    np.testing.assert_array_equal(ud.to_numpy(model.mask), np.ones(3))
    # its key in a state dict is unexpected, as torch's
    state = dict(model.state_dict(), mask=np.zeros(3, np.float32))
    with pytest.raises(ud.StateDictError, match="unexpected keys: mask"):
        model.load_state_dict(state)
    assert model.load_state_dict(state, strict=False).unexpected_keys == reference.load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=False).unexpected_keys == ["mask"]
    np.testing.assert_array_equal(ud.to_numpy(model.mask), np.ones(3))
    # registered again as persistent, it is saved
    model.register_buffer("mask", np.ones(3, np.float32))
    assert "mask" in model.state_dict()


def test_register_parameter_and_buffer_refuse_what_torch_refuses(backend):
    model = ud.nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"register_parameter\('w', \.\.\.\) needs a parameter of the .* got ndarray"):
        model.register_parameter("w", np.ones(2))
    with pytest.raises(KeyError, match="without '.'"):
        model.register_parameter("a.b", model.parameter(np.ones(2)))
    with pytest.raises(KeyError, match="attribute 'training' already exists"):
        model.register_parameter("training", model.parameter(np.ones(2)))
    with pytest.raises(TypeError, match="persistent must be True or False"):
        model.register_buffer("b", np.ones(2), persistent="no")
    with pytest.raises(TypeError, match="keep_vars must be True or False"):
        model.state_dict(keep_vars="yes")


def test_a_non_persistent_buffer_is_state_but_not_saved(backend, tmp_path, rng):
    """A non-persistent buffer the forward reads: a compiled step and ``ud.function`` read its value, a deepcopy
    keeps it and its kind, a saved file leaves it out (and loads into a model that has it)."""
    import copy

    class Shifted(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = ud.nn.Linear(3, 1)
            self.register_buffer("shift", np.full(3, 2.0, np.float32), persistent=False)

        def forward(self, x):
            return self.linear(x + self.shift)

    model = Shifted()
    x = rng.standard_normal((4, 3)).astype(np.float32)
    state = model.state_dict()
    expected = (x + 2.0) @ state["linear.weight"].T + state["linear.bias"]
    np.testing.assert_allclose(ud.to_numpy(ud.function(lambda a: model(a))(x)), expected, rtol=1e-5, atol=1e-6)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.0))
    assert float(ud.to_numpy(step(x, np.zeros((4, 1), np.float32)))) == pytest.approx(np.mean(expected ** 2),
                                                                                      rel=1e-5)
    copied = copy.deepcopy(model)
    assert list(copied.state_dict()) == ["linear.weight", "linear.bias"]
    np.testing.assert_array_equal(ud.to_numpy(copied.shift), np.full(3, 2.0))
    ud.save(model, tmp_path / "shifted.ud")
    other = Shifted()
    other.shift = np.zeros(3, np.float32)
    other.load_weights(tmp_path / "shifted.ud")
    np.testing.assert_array_equal(ud.to_numpy(other.shift), np.zeros(3))
    np.testing.assert_array_equal(other.state_dict()["linear.weight"], state["linear.weight"])


def test_the_native_model_keeps_each_modules_own_mode(backend):
    net = Net()
    net.body.eval()
    net.native
    assert net.training and not net.body.training and not net.body[0].training and net.head.training


def test_a_parameter_or_buffer_set_to_none_keeps_its_place_as_torchs(backend):
    """Set to None, a parameter or buffer leaves ``parameters()`` and ``state_dict``; assigned again, it comes
    back in its place, as torch.nn's (it went to the end: the state dict's order changed)."""
    import copy

    import torch

    model = _registered(ud.nn, lambda v: ud.nn.Module().parameter(v), lambda v: v)
    reference = _registered(torch.nn, lambda v: torch.nn.Parameter(torch.from_numpy(v)), torch.from_numpy)
    model.register_buffer("mask", np.zeros(3, np.float32))
    reference.register_buffer("mask", torch.zeros(3))
    for module in (model, reference):
        module.scale, module.mask = None, None
    assert list(model.state_dict()) == list(reference.state_dict()) == ["count", "child.weight", "child.bias"]
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert copy.deepcopy(model).scale is None and list(copy.deepcopy(model).state_dict()) == list(model.state_dict())
    model.scale, model.mask = model.parameter(np.full(3, 2.0)), np.ones(3, np.float32)
    reference.scale, reference.mask = torch.nn.Parameter(torch.full((3,), 2.0)), torch.ones(3)
    assert list(model.state_dict()) == list(reference.state_dict()) == ["scale", "mask", "count", "child.weight",
                                                                        "child.bias"]
    for name in ("scale", "mask", "count"):
        np.testing.assert_array_equal(model.state_dict()[name], reference.state_dict()[name].numpy(), err_msg=name)


def test_a_module_over_a_parameter_or_a_non_bool_requires_grad_is_torchs_type_error(backend):
    """As torch.nn's: a module assigned over a parameter is a ``TypeError`` (the weight left ``parameters()`` and
    ``state_dict`` silently), a module over a buffer replaces it; ``requires_grad_`` takes True or False only
    (``None`` froze every parameter, ``"False"`` unfroze them). Nothing changes where it raises."""
    import torch

    from unidl.nn.module import is_trainable

    for nn in (ud.nn, torch.nn):
        layer = nn.Linear(2, 2)
        with pytest.raises(TypeError, match="as parameter 'weight'"):
            layer.weight = nn.ReLU()
        assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
        assert list(layer.children()) == []
        layer.register_buffer("mask", np.ones(2, np.float32) if nn is ud.nn else torch.ones(2))
        layer.mask = nn.ReLU()
        assert [name for name, _ in layer.named_children()] == ["mask"] and list(layer.named_buffers()) == []
        layer.requires_grad_(False)
        for value in (None, "False", 1):
            with pytest.raises(TypeError, match="requires_grad"):
                layer.requires_grad_(value)
        assert not any(is_trainable(p) if nn is ud.nn else p.requires_grad for p in layer.parameters())
    ud.nn.Linear(2, 2).requires_grad_(np.bool_(True))


def test_register_buffer_refuses_what_torch_refuses_and_complex_numbers_on_every_backend(backend):
    """``register_buffer`` of a Python number, a list or a string is torch.nn's ``TypeError`` (it was a 0-d or 1-d
    buffer; a string raised a ``TypeError`` on torch and a ``ValueError`` elsewhere), as assigning one over a
    buffer is; complex numbers, strings or objects in an array are one ``DtypeMismatchError`` (a complex buffer
    lost its imaginary part, with a framework's warning only; ``load_state_dict`` refuses them), as
    ``module.parameter`` of them. Nothing is registered where it raises."""
    import torch

    layer, reference = ud.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    for value in (3, 1.5, [1.0, 2.0], "abc", object()):
        with pytest.raises(TypeError, match=f"cannot assign a value of type {type(value).__name__} as buffer 'z'"):
            layer.register_buffer("z", value)
        with pytest.raises(TypeError, match="cannot assign"):
            reference.register_buffer("z", value)
    for value in (np.array([1 + 2j], np.complex64), np.array(["a"]), np.array([object()])):
        with pytest.raises(ud.DtypeMismatchError, match=f"buffer 'z' of Linear must hold real numbers .* dtype "
                                                        f"{value.dtype}"):
            layer.register_buffer("z", value)
        with pytest.raises(ud.DtypeMismatchError, match="must hold real numbers"):
            layer.parameter(value)
    assert list(layer.state_dict()) == ["weight", "bias"] and not hasattr(layer, "z")
    layer.register_buffer("z", np.zeros(1, np.float32))
    with pytest.raises(ud.DtypeMismatchError, match="buffer 'z' of Linear must hold real numbers"):
        layer.z = np.array([1 + 2j], np.complex64)
    np.testing.assert_array_equal(layer.state_dict()["z"], [0.0])


def test_load_state_dict_of_a_non_mapping_or_with_assign_is_one_type_error(backend):
    """As torch.nn's, a state dict that is not a mapping is a ``TypeError`` naming its type (it was a raw
    ``unhashable type`` or ``not iterable``); ``assign=False`` (torch's default) loads as without it, and
    ``assign=True`` is a ``TypeError`` naming it on every backend. The weights are unchanged where it raises."""
    import torch

    layer, reference = ud.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    before = layer.state_dict()
    for value in ([("weight", np.zeros((1, 1), np.float32))], None):
        with pytest.raises(TypeError, match=f"Expected state_dict to be dict-like, got {type(value)}"):
            layer.load_state_dict(value)
        with pytest.raises(TypeError, match=f"Expected state_dict to be dict-like, got {type(value)}"):
            reference.load_state_dict(value)
    with pytest.raises(TypeError, match="assign=True is not supported, only assign=False"):
        layer.load_state_dict({key: value + 1 for key, value in before.items()}, assign=True)
    np.testing.assert_array_equal(layer.state_dict()["weight"], before["weight"])
    assert layer.load_state_dict({key: value + 1 for key, value in before.items()}, False, 0).missing_keys == []
    np.testing.assert_array_equal(layer.state_dict()["weight"], before["weight"] + 1)


def test_parameters_recurse_and_get_parameter_and_get_buffer_are_torchs(backend):
    """``parameters(recurse=False)`` lists a module's own parameters, and ``get_parameter``/``get_buffer`` find one
    by dotted path, with an ``AttributeError`` where there is none, as torch.nn's."""
    import torch

    def build(nn):
        class Outer(nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = nn.Linear(1, 1).weight if nn is torch.nn else self.parameter(np.ones(1, np.float32))
                self.body = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))

        return Outer()

    ours, theirs = build(ud.nn), build(torch.nn)
    assert len(ours.parameters(recurse=False)) == len(list(theirs.parameters(recurse=False))) == 1
    assert ours.parameters(recurse=False)[0] is ours.scale
    assert len(ours.parameters()) == len(list(theirs.parameters())) == 5
    assert ours.get_parameter("body.0.weight") is ours.body[0].weight and ours.get_parameter("scale") is ours.scale
    assert ours.get_buffer("body.1.running_mean") is ours.body[1].running_mean
    assert tuple(theirs.get_buffer("body.1.running_mean").shape) == (3,)
    for target in ("body.0.bias2", "body.1.running_mean", "body.9.weight", "training"):
        with pytest.raises(AttributeError):
            ours.get_parameter(target)
        with pytest.raises(AttributeError):
            theirs.get_parameter(target)
    with pytest.raises(AttributeError, match="Linear has no buffer 'weight'"):
        ours.get_buffer("body.0.weight")
    with pytest.raises(AttributeError):
        theirs.get_buffer("body.0.weight")


def test_pickling_a_model_or_deep_copying_an_optimizer_is_one_type_error_naming_the_way(backend):
    """A model does not pickle, nor does an optimizer deep-copy or pickle, on any backend: one ``TypeError`` naming
    ``ud.save``/``state_dict`` (the errors were each backend's own: pickling failed on a Python module or a local
    function, and an optimizer deep-copied on torch only). ``copy.copy`` still makes shallow copies, and
    ``copy.deepcopy(model)`` a model of its own."""
    import copy
    import pickle

    model = ud.nn.Sequential(ud.nn.Linear(2, 3))
    optimizer = ud.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"cannot pickle Sequential\(\).*ud.save\(model, path\) or model.state_dict"):
        pickle.dumps(model)
    for copied in (copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot copy.deepcopy or pickle SGD.*load_state_dict"):
            copied(optimizer)
    shallow = copy.copy(model)
    assert type(shallow) is ud.nn.Sequential and shallow[0] is model[0]
    assert copy.copy(optimizer).params[0] is optimizer.params[0]
    assert copy.deepcopy(model)[0].weight is not model[0].weight


def _counted(nn):
    """A module (of ``nn``: ``ud.nn`` or ``torch.nn``) with a parameter of its own, a child and extra state: how
    many times it ran, kept in Python and saved as an array."""
    import torch

    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2) if nn is torch.nn else np.ones(2, np.float32))
            self.fc = nn.Linear(2, 2)
            self.calls = 0

        def get_extra_state(self):
            return np.array([self.calls])

        def set_extra_state(self, state):
            self.calls = int(np.asarray(state)[0])

    return nn.Sequential(nn.Linear(2, 2), Counted())


def test_extra_state_is_saved_and_loaded_as_torchs(backend, tmp_path):
    """A module defining ``get_extra_state``/``set_extra_state`` has ``<path>._extra_state`` in ``state_dict()`` at
    torch's place (after its own parameters, before its children's), set back by ``load_state_dict`` both ways with
    torch, by ``ud.load_weights`` and by ``load_checkpoint`` (an array from a file); a missing one is a missing key,
    one for a module without ``set_extra_state`` an unexpected key, as torch's; a value no file can hold is a
    ``TypeError`` naming its key when the file is written."""
    import torch

    ours, theirs = _counted(ud.nn), _counted(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "0.weight", "0.bias", "1.scale", "1._extra_state", "1.fc.weight", "1.fc.bias"]
    theirs[1].calls = 3
    ours.load_state_dict(theirs.state_dict())
    assert ours[1].calls == 3
    ours[1].calls = 5
    theirs.load_state_dict({key: value if key.endswith("_extra_state") else torch.tensor(value)
                            for key, value in ours.state_dict().items()})
    assert theirs[1].calls == 5
    for model in (ours, theirs):
        partial = {key: value for key, value in model.state_dict().items() if key != "1._extra_state"}
        assert model.load_state_dict(partial, strict=False).missing_keys == ["1._extra_state"]
        with pytest.raises(RuntimeError, match="1._extra_state"):
            model.load_state_dict(partial)
    plain = {"weight": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32), "_extra_state": np.ones(1)}
    assert ud.nn.Linear(2, 2).load_state_dict(plain, strict=False).unexpected_keys == ["_extra_state"]
    assert torch.nn.Linear(2, 2).load_state_dict({k: torch.tensor(v) for k, v in plain.items()},
                                                 strict=False).unexpected_keys == ["_extra_state"]
    ud.save(ours, tmp_path / "counted.safetensors")
    ud.save_checkpoint(tmp_path, ours)
    for load in (lambda model: model.load_weights(tmp_path / "counted.safetensors"),
                 lambda model: ud.load_checkpoint(tmp_path, model)):
        loaded = _counted(ud.nn)
        load(loaded)
        assert loaded[1].calls == 5
        for key, value in ours.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[key], value)
    ours[1].get_extra_state = lambda: {"calls": 5}
    with pytest.raises(TypeError, match="'1._extra_state' has dtype object.*get_extra_state"):
        ud.save(ours, tmp_path / "object.safetensors")


def test_extra_state_of_tensors_is_written_to_files_as_arrays(backend, tmp_path):
    """A ``get_extra_state`` that returns a tensor (the backend's own parameter; a torch tensor that requires a
    gradient, under any backend) is written by ``ud.save`` and ``save_checkpoint`` as its array (``np.asarray``
    refused the torch tensor: torch's RuntimeError, naming no key); a value that is no array is the ``TypeError``
    naming its key."""
    import torch

    class Tensors(ud.nn.Linear):
        own_weight = True

        def get_extra_state(self):
            return self.weight if self.own_weight else torch.tensor([[1.5, 2.5]], requires_grad=True) * 2

        def set_extra_state(self, state):
            self.got = state

    for own_weight in (True, False):
        model = Tensors(2, 1)
        model.own_weight = own_weight
        expected = model.state_dict()["weight"] if own_weight else np.array([[3.0, 5.0]], np.float32)
        ud.save(model, tmp_path / "tensors.safetensors")
        ud.save_checkpoint(tmp_path / str(own_weight), model)
        for load in (lambda m: m.load_weights(tmp_path / "tensors.safetensors"),
                     lambda m: ud.load_checkpoint(tmp_path / str(own_weight), m)):
            loaded = Tensors(2, 1)
            load(loaded)
            np.testing.assert_array_equal(loaded.got, expected)
    model.get_extra_state = lambda: [[1.0], [2.0, 3.0]]
    with pytest.raises(TypeError, match=r"tensor '_extra_state' is a list, which is no array .*get_extra_state"):
        ud.save(model, tmp_path / "ragged.safetensors")
