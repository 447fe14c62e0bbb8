"""Forward hooks (``register_forward_pre_hook``, ``register_forward_hook``) against plain ``torch.nn``'s, on every
backend: the same calls in the same order with the same values, eagerly, in compiled steps and in
``ud.function``, registered or removed after a step was compiled; and ``state_dict``'s pre-hooks."""

import numpy as np
import pytest
import torch

import unidl as ud


def _nets(seed=0):
    """A unidl net and a plain torch.nn net with the same weights (float32)."""
    ud.manual_seed(seed)
    net = ud.nn.Sequential(ud.nn.Linear(4, 3), ud.nn.ReLU(), ud.nn.Linear(3, 2))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    return net, reference


def _register(net, log, as_array):
    """The same hooks on either net: pre-hooks (a plain one, a keyword one, one prepended), forward hooks (one
    replacing the output, one only reading it, one prepended); ``log`` gets each call's name and values."""
    handles = [
        net[0].register_forward_pre_hook(lambda m, args: (log.append(("pre", as_array(args[0]))), args[0] * 2)[1]),
        net[0].register_forward_pre_hook(lambda m, args: log.append(("first", as_array(args[0]))), prepend=True),
        net[2].register_forward_pre_hook(lambda m, args, kwargs: ((args[0] + 1,), kwargs), with_kwargs=True),
        net[1].register_forward_hook(lambda m, args, out: (log.append(("relu", as_array(out))), out - 0.5)[1]),
        net[1].register_forward_hook(lambda m, args, out: log.append(("relu first", as_array(out))), prepend=True),
        net[2].register_forward_hook(lambda m, args, kwargs, out: log.append(("head", as_array(args[0]))),
                                     with_kwargs=True),
    ]
    return handles


def test_forward_hooks_see_and_replace_inputs_and_outputs_as_torchs(backend, rng):
    net, reference = _nets()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    log, expected_log = [], []
    handles = _register(net, log, ud.to_numpy)
    _register(reference, expected_log, lambda t: t.detach().numpy())
    out = ud.to_numpy(net(x))
    expected = reference(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert [name for name, _ in log] == [name for name, _ in expected_log] == [
        "first", "pre", "relu first", "relu", "head"]
    for (_, value), (_, expected_value) in zip(log, expected_log):
        np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6)
    for handle in handles:
        handle.remove()
    handles[0].remove()  # (a second remove does nothing, as torch's)
    log.clear()
    np.testing.assert_allclose(ud.to_numpy(net(x)), _plain(net, x), rtol=1e-5, atol=1e-6)
    assert log == []


def _plain(net, x):
    """``net``'s output with no hooks, from its weights in NumPy."""
    state = net.state_dict()
    hidden = np.maximum(x @ state["0.weight"].T + state["0.bias"], 0)
    return hidden @ state["2.weight"].T + state["2.bias"]


def test_a_hook_added_or_removed_after_a_step_was_compiled_takes_effect(backend, rng):
    """A compiled train step, ``ud.function`` and ``ud.predict`` trace again when a hook comes or goes: the
    graph baked the hooks of its trace in."""
    net, _ = _nets()
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.zeros((6, 2), np.float32)
    step = ud.train_step(net, ud.nn.MSELoss(), ud.optim.SGD(net.parameters(), lr=0.0))
    forward = ud.function(lambda inputs: net(inputs))
    plain = _plain(net, x)
    assert float(ud.to_numpy(step(x, y))) == pytest.approx(np.mean(plain ** 2), rel=1e-5)
    np.testing.assert_allclose(ud.to_numpy(forward(x)), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ud.predict(net, x), plain, rtol=1e-5, atol=1e-6)
    assert ud.evaluate(net, x, y, loss="mse")["loss"] == pytest.approx(np.mean(plain ** 2), rel=1e-5)
    with net[2].register_forward_hook(lambda m, args, out: out * 3):  # (predict and evaluate first: each its own)
        np.testing.assert_allclose(ud.predict(net, x), 3 * plain, rtol=1e-5, atol=1e-6)
        assert ud.evaluate(net, x, y, loss="mse")["loss"] == pytest.approx(np.mean((3 * plain) ** 2), rel=1e-5)
        assert float(ud.to_numpy(step(x, y))) == pytest.approx(np.mean((3 * plain) ** 2), rel=1e-5)
        np.testing.assert_allclose(ud.to_numpy(forward(x)), 3 * plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ud.predict(net, x), plain, rtol=1e-5, atol=1e-6)
    assert ud.evaluate(net, x, y, loss="mse")["loss"] == pytest.approx(np.mean(plain ** 2), rel=1e-5)
    assert float(ud.to_numpy(step(x, y))) == pytest.approx(np.mean(plain ** 2), rel=1e-5)
    np.testing.assert_allclose(ud.to_numpy(forward(x)), plain, rtol=1e-5, atol=1e-6)


def test_a_hook_on_the_loss_module_takes_effect_in_a_compiled_step(backend, rng):
    net, _ = _nets()
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.zeros((6, 2), np.float32)
    loss = ud.nn.MSELoss()
    step = ud.train_step(net, loss, ud.optim.SGD(net.parameters(), lr=0.0))
    first = float(ud.to_numpy(step(x, y)))
    handle = loss.register_forward_hook(lambda m, args, out: out * 10)
    assert float(ud.to_numpy(step(x, y))) == pytest.approx(10 * first, rel=1e-5)
    handle.remove()
    assert float(ud.to_numpy(step(x, y))) == pytest.approx(first, rel=1e-5)


class _Failing(ud.nn.Module):
    def forward(self, x):
        raise ValueError("the forward failed")


class _TorchFailing(torch.nn.Module):
    def forward(self, x):
        raise ValueError("the forward failed")


def test_always_call_hooks_run_when_the_forward_raises_as_torchs(backend):
    for module in (_Failing(), _TorchFailing()):
        seen = []
        module.register_forward_hook(lambda m, args, out: seen.append(("always", out)), always_call=True)
        module.register_forward_hook(lambda m, args, out: seen.append(("plain", out)))

        def broken(m, args, out):
            raise RuntimeError("the hook failed")

        module.register_forward_hook(broken, always_call=True)
        with pytest.warns(UserWarning, match="always_call=True.{0,2} raised an exception that was silenced"):
            with pytest.raises(ValueError, match="the forward failed"):
                module(np.ones((1, 2), np.float32) if isinstance(module, ud.nn.Module) else torch.ones(1, 2))
        assert seen == [("always", None)], type(module)


def test_a_keyword_pre_hook_must_give_args_and_kwargs_and_hooks_must_be_callable(backend):
    net, reference = _nets()
    for model, x in ((net, np.ones((1, 4), np.float32)), (reference, torch.ones(1, 4))):
        handle = model[0].register_forward_pre_hook(lambda m, args, kwargs: args, with_kwargs=True)
        with pytest.raises(RuntimeError, match=r"must return None or a tuple of \(new_args, new_kwargs\)"):
            model(x)
        handle.remove()
    with pytest.raises(TypeError, match="the hook must be callable, got int"):
        net.register_forward_hook(3)
    with pytest.raises(TypeError, match="always_call must be True or False, got 'yes'"):
        net.register_forward_hook(lambda *a: None, always_call="yes")
    # NumPy's booleans are booleans, as for unidl's other True/False arguments (they were refused here alone)
    net.register_forward_hook(lambda *a: None, prepend=np.True_, always_call=np.False_).remove()


def test_hooks_run_through_the_native_model_and_survive_a_deepcopy(backend, rng):
    import copy

    net, _ = _nets()
    x = rng.standard_normal((2, 4)).astype(np.float32)
    net[2].register_forward_hook(lambda m, args, out: out * 0)
    assert not np.any(ud.to_numpy(net.native(ud.tensor(x))))
    copied = copy.deepcopy(net)
    assert not np.any(ud.to_numpy(copied(x)))


def test_a_hook_that_changes_the_output_shape_holds_for_fits_metrics(backend, rng):
    """fit's forward of one sample before training (the output's shape, for the metrics) runs the hooks: a hook
    that keeps one output column makes a binary model whose accuracy fit computes (without the hooks the shape read
    was the layer's, and fit refused the metrics)."""
    model = ud.nn.Linear(4, 6)
    model.register_forward_hook(lambda m, args, out: out[:, :1])
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 2, (8, 1)).astype(np.float32)
    history = ud.fit(model, x, y, batch_size=4, loss="bce_with_logits", optimizer="sgd", metrics=["accuracy"],
                     verbose=0)
    assert 0.0 <= history.history["accuracy"][0] <= 1.0


def test_hooks_see_a_keyword_input_as_written_as_torchs(backend):
    """``layer(input=x)`` reaches a pre-hook and a hook as a keyword, as torch.nn's (it was moved to the positional
    arguments before the hooks: a torch hook reading ``kwargs["input"]`` failed); a pre-hook may replace it, and the
    forward gets it as its first input."""
    net, reference = _nets()
    x = np.ones((2, 4), np.float32)
    outputs = []
    for layer, value in ((net[0], ud.tensor(x)), (reference[0], torch.from_numpy(x))):
        seen = []
        layer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(("pre", len(args), sorted(kwargs))) or (args, {
                "input": kwargs["input"] * 2}), with_kwargs=True)
        layer.register_forward_hook(lambda module, args, kwargs, output: seen.append(("post", len(args),
                                                                                        sorted(kwargs))),
                                    with_kwargs=True)
        outputs.append(np.asarray(ud.to_numpy(layer(input=value)) if layer is net[0] else layer(input=value).detach()))
        assert seen == [("pre", 0, ["input"]), ("post", 0, ["input"])]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_state_dict_pre_hooks_are_torchs(backend):
    """``register_state_dict_pre_hook``: ``hook(module, prefix, keep_vars)`` runs for a module and those below it
    before ``state_dict`` reads anything (a value it writes is saved), with torch's arguments and order, and
    ``remove()`` takes it off."""
    calls = {}
    for nn in (ud.nn, torch.nn):
        model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
        seen = calls[nn] = []
        for module in (model, model[1], model[1][1]):
            module.register_state_dict_pre_hook(lambda m, prefix, keep: seen.append((type(m).__name__, prefix, keep)))
        zeros = {"weight": np.zeros((2, 2), np.float32), "bias": np.zeros(2, np.float32)}
        handle = model[0].register_state_dict_pre_hook(lambda m, prefix, keep: m.load_state_dict(
            zeros if nn is ud.nn else {key: torch.tensor(value) for key, value in zeros.items()}))
        weight = model.state_dict(prefix="net.", keep_vars=True)["net.0.weight"]
        assert not (ud.to_numpy(weight) if nn is ud.nn else weight.detach().numpy()).any()
        handle.remove()
        model.state_dict()
    assert calls[ud.nn] == calls[torch.nn] == [("Sequential", "net.", True), ("Sequential", "net.1.", True),
                                               ("Linear", "net.1.1.", True), ("Sequential", "", False),
                                               ("Sequential", "1.", False), ("Linear", "1.1.", False)]


def _pair(nn):
    """The same two-layer tree in ``nn`` (unidl's or torch's), with the same weights."""
    ud.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 1)))
    return model


def _torch_like(state):
    return {key: torch.tensor(np.asarray(value)) for key, value in state.items()}


def test_state_dict_post_hooks_are_torchs(backend):
    """``register_state_dict_post_hook``: ``hook(module, state_dict, prefix, local_metadata)`` after the module and
    those below it are saved (a child's first), changing the state dict in place; a hook that returns something is
    torch's ``RuntimeError``; ``remove()`` takes it off."""
    calls = {}
    for nn in (ud.nn, torch.nn):
        model = _pair(nn)
        seen = calls[nn] = []
        for module in (model, model[1], model[1][0]):
            module.register_state_dict_post_hook(lambda m, state, prefix, metadata: seen.append(
                (type(m).__name__, prefix, list(state), metadata)))
        handle = model[1].register_state_dict_post_hook(
            lambda m, state, prefix, metadata: (state.pop(prefix + "0.bias"), None)[1])
        assert "1.0.bias" not in model.state_dict() and "net.1.0.bias" not in model.state_dict(prefix="net.")
        handle.remove()
        assert "1.0.bias" in model.state_dict()
        returning = model[0].register_state_dict_post_hook(lambda m, state, prefix, metadata: state)
        with pytest.raises(RuntimeError, match="state_dict post-hook must return None"):
            model.state_dict()
        returning.remove()
    assert calls[ud.nn] == calls[torch.nn]
    assert calls[ud.nn][:3] == [("Linear", "1.0.", ["0.weight", "0.bias", "1.0.weight", "1.0.bias"], {"version": 1}),
                                ("Sequential", "1.", ["0.weight", "0.bias", "1.0.weight", "1.0.bias"], {"version": 1}),
                                ("Sequential", "", ["0.weight", "0.bias", "1.0.weight"], {"version": 1})]


def test_state_dict_metadata_gives_each_modules_version_as_torchs(backend):
    """``state_dict()`` holds torch's ``_metadata`` (each module's version: 2 for BatchNorm and InstanceNorm, 1 for
    the others), given to state-dict post-hooks and, from that state dict, to load pre-hooks (a torch-style hook that
    migrates an older layout reads it). unidl gave every module version 1, and load pre-hooks ``{}``."""
    seen, metadata = {}, {}
    for nn in (ud.nn, torch.nn):
        model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.BatchNorm1d(2), nn.InstanceNorm1d(2)))
        calls = seen[nn] = []
        for module in model.modules():
            module.register_state_dict_post_hook(lambda m, state, prefix, md: calls.append((prefix, md)))
            module.register_load_state_dict_pre_hook(lambda m, state, prefix, md, *rest: calls.append((prefix, md)))
        state = model.state_dict()
        metadata[nn] = state._metadata
        model.load_state_dict(state)
    assert seen[ud.nn] == seen[torch.nn]
    assert metadata[ud.nn] == metadata[torch.nn] == {"": {"version": 1}, "0": {"version": 1}, "1": {"version": 1},
                                                     "1.0": {"version": 2}, "1.1": {"version": 2}}


def test_a_load_pre_hook_renames_an_old_checkpoints_keys_as_torchs(backend):
    """``register_load_state_dict_pre_hook``: each module's hook gets the load's copy of its part of the state dict
    (the whole one at the top), with torch's arguments, before it takes its entries, and may rename keys there (an
    old checkpoint's); a message it appends to ``error_msgs`` fails the load (a ``RuntimeError`` as torch's)."""
    old = {"0.weight": np.full((2, 2), 1.0, np.float32), "0.bias": np.zeros(2, np.float32),
           "1.0.w": np.full((1, 2), 3.0, np.float32), "1.0.b": np.full(1, 4.0, np.float32)}

    def rename(module, state, prefix, metadata, strict, missing, unexpected, errors):
        for old_name, name in (("w", "weight"), ("b", "bias")):
            if prefix + old_name in state:
                state[prefix + name] = state.pop(prefix + old_name)

    calls, loaded = {}, {}
    for nn, state in ((ud.nn, old), (torch.nn, _torch_like(old))):
        model = _pair(nn)
        seen = calls[nn] = []
        for module in (model, model[1], model[1][0]):
            module.register_load_state_dict_pre_hook(lambda m, local, prefix, *rest: seen.append(
                (type(m).__name__, prefix, sorted(local), rest[1:])))
        model[1][0].register_load_state_dict_pre_hook(rename)
        keys = model.load_state_dict(state)
        assert (keys.missing_keys, keys.unexpected_keys) == ([], [])
        model.load_state_dict(state, strict=False)  # (the hooks' strict is True all the same, as torch's)
        loaded[nn] = {key: np.asarray(ud.to_numpy(value) if nn is ud.nn else value.detach())
                      for key, value in model.state_dict().items()}
        assert list(state) == list(old)  # (the caller's dict as it was)
        if nn is ud.nn:  # (a key that is no string is an unexpected key, where torch's walk fails on it)
            with pytest.raises(ud.errors.StateDictError, match="unexpected keys: 3 "):
                _pair(nn).load_state_dict({**state, 3: np.zeros(1)})
        failing = model.register_load_state_dict_pre_hook(lambda m, local, prefix, md, strict, missing, unexpected,
                                                          errors: errors.append("too old"))
        with pytest.raises(RuntimeError, match="too old"):
            model.load_state_dict(state)
        failing.remove()
    assert calls[ud.nn] == calls[torch.nn]
    assert calls[ud.nn][2] == ("Linear", "1.0.", ["1.0.b", "1.0.w"], (True, [], [], []))
    assert loaded[ud.nn].keys() == loaded[torch.nn].keys()
    for key, value in loaded[torch.nn].items():
        np.testing.assert_array_equal(loaded[ud.nn][key], value, err_msg=key)


def test_load_post_hooks_see_and_may_clear_the_incompatible_keys_as_torchs(backend):
    """``register_load_state_dict_post_hook``: ``hook(module, incompatible_keys)`` once the module and those below
    it are loaded, with the keys torch's lists hold then; clearing them lets a strict load pass; a hook that returns
    something is torch's ``AssertionError``; a strict load whose keys are still wrong after the hooks raises, and
    unidl's model is then as it was, bit for bit (torch's is half loaded)."""
    state = {"0.weight": np.full((2, 2), 5.0, np.float32), "1.0.weight": np.full((1, 2), 6.0, np.float32),
             "1.0.bias": np.ones(1, np.float32), "1.0.scale": np.ones(1, np.float32)}
    calls = {}
    for nn, given in ((ud.nn, state), (torch.nn, _torch_like(state))):
        model = _pair(nn)
        seen = calls[nn] = []
        for module in (model[1], model):
            module.register_load_state_dict_post_hook(lambda m, keys: seen.append(
                (type(m).__name__, list(keys.missing_keys), list(keys.unexpected_keys))))
        before = {key: np.array(ud.to_numpy(value)) for key, value in model.state_dict().items()} \
            if nn is ud.nn else None
        with pytest.raises(RuntimeError, match="0.bias"):
            model.load_state_dict(given)
        if nn is ud.nn:  # (all or nothing: the refused load, of 5s and 6s, left every weight as it was)
            for key, value in model.state_dict().items():
                np.testing.assert_array_equal(ud.to_numpy(value), before[key], err_msg=key)
        clearing = model.register_load_state_dict_post_hook(lambda m, keys: (keys.missing_keys.clear(),
                                                                            keys.unexpected_keys.clear()) and None)
        assert tuple(model.load_state_dict(given)) == ([], [])
        weight = model.state_dict()["1.0.weight"]
        assert (np.asarray(ud.to_numpy(weight) if nn is ud.nn else weight) == 6.0).all()
        clearing.remove()
        model[1].register_load_state_dict_post_hook(lambda m, keys: keys)
        with pytest.raises(AssertionError, match="not expected to return new values"):
            model.load_state_dict(given, strict=False)
    assert calls[ud.nn] == calls[torch.nn]
    assert calls[ud.nn][:2] == [("Sequential", ["0.bias"], ["1.0.scale"]), ("Sequential", ["0.bias"], ["1.0.scale"])]
