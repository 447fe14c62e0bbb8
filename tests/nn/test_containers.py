"""Containers (``Sequential``, ``ModuleList``, ``ModuleDict``), ``Identity``, ``Unflatten`` and the module tree
(``children``, ``named_children``, ``named_modules``, ``apply``), against plain ``torch.nn`` as the oracle."""

import operator
from collections import OrderedDict

import numpy as np
import pytest
import torch

import unidl as ud
from unidl.testing import max_relative_difference

X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def _torch_net(nn):
    """The same tree in ``torch.nn`` or ``ud.nn``: a Sequential body, a ModuleList and a ModuleDict."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Tanh())
            self.layers = nn.ModuleList([nn.Linear(6, 6), nn.Identity(), nn.Linear(6, 5)])
            self.heads = nn.ModuleDict({"cls": nn.Linear(5, 2), "reg": nn.Linear(5, 1)})

        def forward(self, x):
            x = self.body(x)
            for layer in self.layers:
                x = layer(x)
            return self.heads["cls"](x) + self.heads["reg"](x)

    return Net()


def _edit(net, nn):
    """The edits a user makes to a pretrained model: replace, append to, delete from and insert into containers."""
    net.body[2] = nn.Linear(6, 7)
    net.body[-1] = nn.Sigmoid()
    net.body.append(nn.Linear(7, 6))
    net.layers[0] = nn.Linear(6, 6, bias=False)
    net.layers.insert(1, nn.ReLU())
    del net.layers[2]  # the Identity
    net.layers.append(nn.Identity())
    net.heads["reg"] = nn.Linear(5, 2)
    net.heads.update({"extra": nn.Linear(5, 2)})
    del net.heads["extra"]
    return net


def _torch_reference():
    torch.manual_seed(0)
    net = _edit(_torch_net(torch.nn), torch.nn).double()
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return net, state


def test_state_dict_keys_and_outputs_match_torch_after_edits(backend):
    torch_net, state = _torch_reference()
    expected = torch_net(torch.tensor(X, dtype=torch.float64)).detach().numpy()
    net = _edit(_torch_net(ud.nn), ud.nn)
    assert list(net.state_dict()) == list(state)  # same keys in the same order: body.4.weight, layers.2.bias, ...
    assert [n for n, _ in net.named_modules()] == [n for n, _ in torch_net.named_modules()]
    with ud.use_dtype("float64"):
        net = _edit(_torch_net(ud.nn), ud.nn)
        net.load_state_dict(state)
        out = ud.to_numpy(net(ud.tensor(X)))
        compiled = ud.to_numpy(ud.function(lambda x: net(x))(ud.tensor(X)))
    assert max_relative_difference(out, expected) < 1e-12
    assert max_relative_difference(compiled, expected) < 1e-12


def test_sequential_indexing_slicing_and_iteration():
    with ud.use_backend("torch"):
        layers = [ud.nn.Linear(4, 4), ud.nn.ReLU(), ud.nn.Linear(4, 2), ud.nn.Tanh()]
        seq = ud.nn.Sequential(*layers)
        assert len(seq) == 4 and list(seq) == layers
        assert seq[0] is layers[0] and seq[-1] is layers[3] and seq[-4] is layers[0]
        head = seq[1:3]
        assert isinstance(head, ud.nn.Sequential) and list(head) == layers[1:3]
        assert list(head.state_dict()) == ["2.weight", "2.bias"]  # a slice keeps the names, as in torch
        assert list(seq[::-1]) == layers[::-1]
        assert layers[2].describe().endswith("at '2'")  # the slice does not take over the error path
        with pytest.raises(IndexError, match="index 4 is out of range for 4 modules"):
            seq[4]
        with pytest.raises(IndexError, match="index -5 is out of range"):
            seq[-5] = ud.nn.ReLU()
        with pytest.raises(TypeError, match="Sequential item 1 must be a unidl.nn.Module, got int"):
            seq[1] = 3
        with pytest.raises(TypeError, match="must be a unidl.nn.Module, got function"):
            seq.append(lambda x: x)
        assert seq.pop(1) is layers[1]
        assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]  # renumbered
        del seq[0:1]
        assert len(seq) == 2 and seq[0] is layers[2] and seq[1] is layers[3]
        named = ud.nn.Sequential(OrderedDict([("conv", ud.nn.Linear(2, 2)), ("act", ud.nn.ReLU())]))
        assert list(named.state_dict()) == ["conv.weight", "conv.bias"]
        assert list(named[:1]._modules) == ["conv"] and named[1] is named.act


def test_sequential_assignment_registers_the_new_layer_in_place():
    with ud.use_backend("torch"):
        classifier = ud.nn.Sequential(ud.nn.Dropout(), ud.nn.Linear(8, 6), ud.nn.ReLU(), ud.nn.Dropout(),
                                      ud.nn.Linear(6, 5))
        new_head = ud.nn.Linear(6, 2)
        classifier[4] = new_head
        assert classifier[4] is new_head and getattr(classifier, "4") is new_head
        assert any(p is new_head.weight for p in classifier.parameters())
        assert list(classifier.state_dict()) == ["1.weight", "1.bias", "4.weight", "4.bias"]
        assert classifier.state_dict()["4.weight"].shape == (2, 6)
        assert ud.to_numpy(classifier.eval()(ud.tensor(np.ones((3, 8))))).shape == (3, 2)
        assert new_head.describe() == "Linear(in_features=6, out_features=2, bias=True) at '4'"


def test_module_list_and_dict_behave_as_list_and_dict():
    with ud.use_backend("torch"):
        blocks = ud.nn.ModuleList(ud.nn.Linear(3, 3) for _ in range(2))
        blocks += [ud.nn.ReLU()]
        blocks.extend([ud.nn.Linear(3, 1)])
        assert len(blocks) == 4 and isinstance(blocks[1:], ud.nn.ModuleList) and len(blocks[1:]) == 3
        assert list(blocks.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
        with pytest.raises(NotImplementedError, match="ModuleList has no forward"):
            blocks(ud.tensor(np.ones((1, 3))))
        heads = ud.nn.ModuleDict([("a", ud.nn.Linear(3, 1)), ("b", ud.nn.ReLU())])
        assert "a" in heads and list(heads) == ["a", "b"] and len(heads) == 2
        assert heads.keys() == ["a", "b"] and heads.items()[1] == ("b", heads["b"])
        assert heads.pop("b") is not None and list(heads) == ["a"]
        with pytest.raises(KeyError, match="ModuleDict has no module 'c'; it holds \\['a'\\]"):
            heads["c"]
        with pytest.raises(TypeError, match="ModuleDict item 'x' must be a unidl.nn.Module"):
            heads["x"] = np.ones(3)
        heads.clear()
        assert len(heads) == 0 and heads.state_dict() == OrderedDict()


def test_children_named_children_apply_get_submodule_match_torch():
    torch_net = _torch_net(torch.nn)
    with ud.use_backend("torch"):
        net = _torch_net(ud.nn)
        assert [n for n, _ in net.named_children()] == [n for n, _ in torch_net.named_children()]
        assert [type(m).__name__ for m in net.children()] == [type(m).__name__ for m in torch_net.children()]
        shared = ud.nn.Linear(2, 2)
        twice = ud.nn.Sequential(shared, shared)
        assert len(list(twice.children())) == 1 and len(twice.modules()) == 2  # each module once, as in torch
        assert len(list(twice.named_modules(remove_duplicate=False))) == 3
        visited = []
        assert net.apply(lambda m: visited.append(type(m).__name__)) is net
        torch_visited = []
        torch_net.apply(lambda m: torch_visited.append(type(m).__name__))
        assert visited == torch_visited  # children first, the module itself last
        assert net.get_submodule("layers.2") is net.layers[2]
        with pytest.raises(AttributeError, match="has no child module 'x'"):
            net.get_submodule("body.x")


def test_set_submodule_is_torchs(backend):
    """``set_submodule`` replaces a child in its place or adds one under an existing parent, as torch.nn's (same
    ``state_dict`` keys and order, same outputs, also from a ``ud.function`` traced before the edit); its errors
    are torch's types: an empty target or a non-module ``ValueError``, a missing parent, a missing child under
    ``strict=True`` or an attribute that is no module ``AttributeError``."""
    torch.manual_seed(0)
    torch_net, net = _torch_net(torch.nn), _torch_net(ud.nn)
    compiled = ud.function(lambda x: net(x))
    compiled(ud.tensor(X))
    for model, nn in ((torch_net, torch.nn), (net, ud.nn)):
        model.set_submodule("body.2", nn.Linear(6, 6, bias=False))
        model.set_submodule("layers.1", nn.Tanh(), strict=True)
        model.set_submodule("heads.extra", nn.Linear(5, 3))
        model.heads.set_submodule("cls", nn.Linear(5, 1))
    assert list(net.state_dict()) == list(torch_net.state_dict())
    assert [n for n, _ in net.named_modules()] == [n for n, _ in torch_net.named_modules()]
    net.load_state_dict(torch_net.state_dict())
    expected = torch_net(torch.tensor(X)).detach().numpy()
    for out in (net(ud.tensor(X)), compiled(ud.tensor(X))):
        np.testing.assert_allclose(ud.to_numpy(out), expected, rtol=1e-5, atol=1e-6)
    for arguments, error in ((("", "Linear"), ValueError), (("body.0", None), ValueError),
                             (("body.9", "Linear", True), AttributeError), (("body.0.weight", "Linear"), AttributeError),
                             (("nothing.here", "Linear"), AttributeError)):
        for model, nn in ((net, ud.nn), (torch_net, torch.nn)):
            target, module, *strict = arguments
            with pytest.raises(error):
                model.set_submodule(target, nn.Linear(2, 2) if module else "x", *strict)


def test_apply_initialises_weights_on_every_backend(backend):
    net = _torch_net(ud.nn)

    def zero_linear(module):
        if isinstance(module, ud.nn.Linear):
            module.load_state_dict({k: np.zeros_like(v) for k, v in module.state_dict().items()})

    net.apply(zero_linear)
    assert all(not v.any() for v in net.state_dict().values())


@pytest.mark.parametrize("dtype, tolerance", [("float32", 2e-6), ("float64", 1e-12)])
def test_identity_and_unflatten_match_torch(backend, dtype, tolerance):
    x = np.random.default_rng(1).standard_normal((2, 12, 5)).astype(dtype)
    cases = [(ud.nn.Unflatten(1, (3, 2, 2)), torch.nn.Unflatten(1, (3, 2, 2))),
             (ud.nn.Unflatten(-1, (-1, 1)), torch.nn.Unflatten(-1, (-1, 1))),
             (ud.nn.Unflatten(0, (1, 2)), torch.nn.Unflatten(0, (1, 2))),
             (ud.nn.Identity(54, unused=True), torch.nn.Identity(54, unused=True))]
    r = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    with ud.use_dtype(dtype):
        for layer, oracle in cases:
            xt = torch.tensor(x, requires_grad=True)
            expected = oracle(xt)
            (expected.reshape(x.shape) * torch.tensor(r)).sum().backward()

            def value_and_input_grad(v, layer=layer):
                return ud.value_and_grad(lambda v: ud.ops.sum(ud.ops.reshape(layer(v), x.shape) * ud.tensor(r)))(v)

            for run in (lambda v: (layer(v), value_and_input_grad(v)[1]),
                        ud.function(lambda v: (layer(v), value_and_input_grad(v)[1]))):
                out, grad = run(ud.tensor(x))
                out, grad = ud.to_numpy(out), ud.to_numpy(grad)
                assert out.shape == tuple(expected.shape), layer
                assert max_relative_difference(out, expected.detach().numpy()) < tolerance
                assert max_relative_difference(grad, xt.grad.numpy()) < tolerance


def test_unflatten_bad_sizes():
    with ud.use_backend("torch"):
        with pytest.raises(ud.ShapeMismatchError, match=r"axis 1 of size 12 cannot be split into \(5, 2\)"):
            ud.nn.Unflatten(1, (5, 2))(ud.tensor(np.zeros((2, 12))))
        with pytest.raises(ValueError, match="at most one -1"):
            ud.nn.Unflatten(1, (-1, -1))


@pytest.mark.parametrize("container", ["Sequential", "ModuleList"])
def test_a_slice_assignment_or_a_bad_extend_is_torchs_type_error_and_changes_nothing(backend, container):
    """torch.nn's containers have no slice assignment (a ``TypeError``, the container unchanged); unidl's replaced
    the slice one module at a time after emptying the container, so that a bad item left a ModuleList empty and a
    Sequential cut short, its trained layers gone. ``extend`` with a bad item adds none of them."""
    def build(nn):
        layers = [nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)]
        return getattr(nn, container)(*layers) if container == "Sequential" else nn.ModuleList(layers)

    ours, theirs = build(ud.nn), build(torch.nn)
    before = {key: value.copy() for key, value in ours.state_dict().items()}
    for items in ([ud.nn.Tanh(), "x"], [ud.nn.Tanh()]):
        with pytest.raises(TypeError, match="not slice"):
            ours[1:2] = items
        with pytest.raises(TypeError):
            theirs[1:2] = [torch.nn.Tanh()]
    with pytest.raises(TypeError, match=f"{container} item 4 must be a unidl.nn.Module, got str"):
        ours.extend([ud.nn.Tanh(), "x"])
    assert len(ours) == len(theirs) == 3 and list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_sequential_and_module_list_operators_and_insert_are_torchs(backend):
    """``+``, ``+=``, ``*`` (and ``2 * seq``, ``*=``) of Sequentials and ``+`` of ModuleLists give torch.nn's
    containers: the same modules, numbered from 0; ``Sequential.insert`` returns the Sequential (``ModuleList``'s
    None), and the errors are torch's types."""
    def build(nn):
        return nn.Sequential(nn.Linear(2, 3), nn.ReLU()), nn.Sequential(nn.Linear(3, 1))

    (a, b), (ta, tb) = build(ud.nn), build(torch.nn)

    def same(ours, theirs):
        assert type(ours).__name__ == type(theirs).__name__ and len(ours) == len(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]

    total = a + b
    same(total, ta + tb)
    assert list(total) == [*a, *b]  # the same modules, as torch's
    same(a * 2, ta * 2)
    same(2 * a, 2 * ta)
    assert (a * 2)[2] is a[0]
    for operation, error in ((lambda s: s * 0, ValueError), (lambda s: s * 1.5, TypeError),
                             (lambda s: s + [s[0]], ValueError)):
        with pytest.raises(error):
            operation(a)
        with pytest.raises(error):
            operation(ta)
    with pytest.raises(ValueError, match="supports only objects of Sequential class"):
        a + ud.nn.ModuleList([ud.nn.ReLU()])
    repeated, torch_repeated = build(ud.nn)[0], build(torch.nn)[0]
    repeated *= 3
    torch_repeated *= 3
    same(repeated, torch_repeated)
    grown, torch_grown = build(ud.nn)[0], build(torch.nn)[0]
    grown += b
    torch_grown += tb
    same(grown, torch_grown)
    assert a.insert(1, ud.nn.Tanh()) is a and ta.insert(1, torch.nn.Tanh()) is ta
    same(a, ta)
    listed, torch_listed = ud.nn.ModuleList([ud.nn.Linear(2, 2)]), torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    same(listed + listed, torch_listed + torch_listed)
    same(listed + [ud.nn.ReLU()], torch_listed + [torch.nn.ReLU()])
    assert listed.insert(0, ud.nn.ReLU()) is None and torch_listed.insert(0, torch.nn.ReLU()) is None


def _parameter_net(nn, parameter):
    """The same net in ``torch.nn`` or ``ud.nn`` (``parameter``: its ``Parameter``) with its weights in a
    ParameterList and a ParameterDict, whose plain dict's keys torch adds in sorted order."""
    rng = np.random.default_rng(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ParameterList(parameter(rng.standard_normal(shape).astype(np.float32))
                                           for shape in ((4, 5), (5,)))
            self.layers.append(parameter(rng.standard_normal((5, 3)).astype(np.float32)))
            self.heads = nn.ParameterDict({"scale": parameter(rng.standard_normal(3).astype(np.float32)),
                                           "bias": parameter(rng.standard_normal(3).astype(np.float32))})

        def forward(self, x):
            first, shift, last = self.layers
            tanh = torch.tanh if nn is torch.nn else ud.ops.tanh
            return tanh(x @ first + shift) @ last * self.heads["scale"] + self.heads["bias"]

    return Net()


def test_parameter_list_and_dict_names_load_and_training_are_torchs(backend):
    """Parameters held by a ``ParameterList``/``ParameterDict`` are the owner's under torch's names (``layers.0``,
    ``heads.bias``), a torch state dict of the same architecture loads into them, and a compiled ``train_step`` and
    ``fit`` train them as ``torch.optim`` does."""
    torch.manual_seed(0)
    reference = _parameter_net(torch.nn, lambda array: torch.nn.Parameter(torch.tensor(array)))
    model = _parameter_net(ud.nn, lambda array: ud.nn.Parameter(array * 0))
    assert list(model.state_dict()) == list(reference.state_dict()) == [
        "layers.0", "layers.1", "layers.2", "heads.bias", "heads.scale"]
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert len(model.parameters()) == 5 and all(isinstance(p, ud.nn.Parameter) for p in model.parameters())
    model.load_state_dict(reference.state_dict())  # (torch's own tensors)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)

    def torch_step():
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(torch.tensor(x)), torch.tensor(y)).backward()
        optimizer.step()

    for _ in range(2):
        step(x, y)
        torch_step()
    ud.fit(model, (x, y), loss="mse", optimizer=ud.optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=6,
           verbose=0, shuffle=False)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    torch_step()
    for name, value in reference.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[name], value.numpy(), rtol=1e-5, atol=1e-6)


def test_parameter_list_is_torchs_list(backend):
    """``ParameterList``'s list API and errors are torch's: a tensor or a NumPy array becomes a parameter, a
    parameter is held as it is, another object is kept as one; a bad ``extend``, an index out of range, deleting
    an item, a non-parameter over a parameter and calling the list raise torch's exception types."""
    ours, theirs = ud.nn.ParameterList(), torch.nn.ParameterList()
    kept = ud.nn.Parameter(np.ones(2, np.float32))
    assert ours.append(kept) is ours and theirs.append(torch.nn.Parameter(torch.ones(2))) is theirs
    ours.extend([np.zeros((2, 3), np.float32), ud.tensor(np.ones(3, np.float32))])
    theirs.extend([torch.zeros(2, 3), torch.ones(3)])
    ours += [7]
    theirs += [7]
    assert len(ours) == len(theirs) == 4 and ours[0] is kept and ours[-4] is kept and ours[3] == theirs[3] == 7
    assert all(isinstance(p, ud.nn.Parameter) for p in list(ours)[:3]) and not isinstance(7, ud.nn.Parameter)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["0", "1", "2"]
    np.testing.assert_array_equal(ours.state_dict()["1"], np.zeros((2, 3), np.float32))
    head = ours[1:3]
    assert isinstance(head, ud.nn.ParameterList) and list(head.state_dict()) == ["0", "1"] and head[0] is ours[1]
    ours[0] = np.full(2, 5.0, np.float32)
    assert ours[0] is not kept and isinstance(ours[0], ud.nn.Parameter) and ours.state_dict()["0"][0] == 5.0
    assert repr(ours).splitlines()[1].strip() == "(0): Parameter containing: [float32 of size 2]"
    for operation, error in ((lambda pl: pl.extend(3), TypeError), (lambda pl: pl.extend(pl[1]), TypeError),
                             (lambda pl: pl[4], IndexError), (lambda pl: pl.__setitem__(-5, pl[0]), IndexError),
                             (lambda pl: operator.delitem(pl, 0), AttributeError),
                             (lambda pl: pl.__setitem__(0, 3), TypeError),
                             (lambda pl: pl(1), RuntimeError)):
        with pytest.raises(error):
            operation(ours)
        with pytest.raises(error):
            operation(theirs)
    assert len(ours) == 4 and list(ours.state_dict()) == ["0", "1", "2"]


def test_parameter_dict_is_torchs_dict(backend):
    """``ParameterDict``'s dict API, order and errors are torch's: ``update`` of a plain dict adds its keys sorted,
    of pairs in their order; a key that is no string, holds '.', or names an attribute, a missing key (torch's
    ``AttributeError``, a ``KeyError`` too), a bad ``update`` and calling the dict raise torch's exception types."""
    def build(nn, parameter):
        built = nn.ParameterDict({"b": parameter(np.ones(2, np.float32)), "a": parameter(np.zeros(3, np.float32))})
        built.update([("d", parameter(np.ones(1, np.float32))), ("c", 2)])
        built["e"] = np.ones((2, 2), np.float32) if nn is ud.nn else torch.ones(2, 2)
        return built

    ours, theirs = build(ud.nn, ud.nn.Parameter), build(torch.nn, lambda array: torch.nn.Parameter(torch.tensor(array)))
    assert list(ours) == list(theirs) == ["a", "b", "d", "c", "e"] and list(ours.keys()) == list(theirs.keys())
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["a", "b", "d", "e"]  # (torch's 2 is no tensor)
    assert [k for k, _ in ours.items()] == list(ours) and len(list(ours.values())) == len(ours) == 5
    with pytest.raises(KeyError, match="ParameterDict has no key 'z'; it holds"):
        ours["z"]
    assert "a" in ours and "z" not in ours and ours.get("z", 1) == 1 and ours.get("a") is ours["a"]
    assert ours.setdefault("a") is ours["a"] and list(reversed(ours))[0] == "e"
    assert ours.popitem()[0] == theirs.popitem()[0] == "e" and ours.pop("d") is not None
    theirs.pop("d")
    merged = ours | ud.nn.ParameterDict({"x": np.ones(1, np.float32)})
    assert list(merged) == ["a", "b", "c", "x"] and merged["a"] is ours["a"] and list(ours.copy()) == list(ours)
    assert list(ours.fromkeys(["p", "q"], np.ones(1, np.float32)).state_dict()) == ["p", "q"]
    for operation, error in ((lambda pd: pd.__setitem__(1, pd["a"]), TypeError),
                             (lambda pd: pd.__setitem__("a.b", pd["a"]), KeyError),
                             (lambda pd: pd.__setitem__("keys", pd["a"]), KeyError),
                             (lambda pd: pd["z"], AttributeError), (lambda pd: pd.pop("z"), AttributeError),
                             (lambda pd: operator.delitem(pd, "z"), KeyError),
                             (lambda pd: pd.update(3), TypeError), (lambda pd: pd.update([1]), TypeError),
                             (lambda pd: pd.update([("k", 1, 2)]), ValueError), (lambda pd: pd(1), RuntimeError)):
        with pytest.raises(error):
            operation(ours)
        with pytest.raises(error):
            operation(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["a", "b"]
    ours.clear()
    assert len(ours) == 0 and not ours.parameters()


def test_a_refused_item_leaves_a_parameter_list_or_dict_as_it_was(backend):
    """An item whose registration raises (a module of another backend: ``BackendMismatchError``) leaves
    ``ParameterList.append`` and a new key of ``ParameterDict`` unchanged: the length counted the item, and
    iterating or ``items()`` raised ``AttributeError``; the next item takes the free place."""
    with ud.use_backend("jax" if backend != "jax" else "torch"):
        foreign = ud.nn.Linear(2, 2)
    ours_list, ours_dict = ud.nn.ParameterList([np.ones(2, np.float32)]), ud.nn.ParameterDict()
    for add in (ours_list.append, lambda value: ours_dict.__setitem__("a", value)):
        with pytest.raises(ud.BackendMismatchError):
            add(foreign)
    assert len(ours_list) == 1 and len(list(ours_list)) == 1 and len(ours_dict) == 0 and not list(ours_dict.items())
    ours_list.append(np.zeros(3, np.float32))
    ours_dict["a"] = np.zeros(3, np.float32)
    assert list(ours_list.state_dict()) == ["0", "1"] and list(ours_dict.state_dict()) == ["a"]


def test_parameter_is_a_free_standing_parameter_of_the_backend(backend):
    """``ud.nn.Parameter(data)`` is a parameter of the backend in force (``isinstance`` says so), registered when
    assigned to a module; ``requires_grad=False`` makes it frozen, ``Parameter()`` is empty, as torch's."""
    module = ud.nn.Module()
    module.scale = ud.nn.Parameter([1.0, 2.0])
    module.frozen = ud.nn.Parameter(np.ones(2), requires_grad=False)
    assert [name for name, _ in module.named_parameters()] == ["scale", "frozen"]
    assert ud.nn.Parameter().shape == torch.nn.Parameter().shape == (0,)
    assert module.state_dict()["scale"].dtype == np.float32 and not isinstance(ud.tensor([1.0]), ud.nn.Parameter)
    assert module.scale.requires_grad and not module.frozen.requires_grad
    with pytest.raises(TypeError, match="requires_grad must be True or False"):
        ud.nn.Parameter(np.ones(2), requires_grad=None)
