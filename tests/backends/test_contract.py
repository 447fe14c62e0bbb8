"""The backend contract: ops declared once (the registry), pure ops (batch norm returns its statistics,
dropout takes its generator), and the keras backend delegating to its host framework's backend."""

import inspect
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unidl as ud
from unidl import backends, config
from unidl.backends import interface, load, op_registry, specs
from unidl.errors import BackendInterfaceError, ConfigurationError
from unidl.testing import max_relative_difference

R = np.random.default_rng(11)
IMAGES = (R.standard_normal((6, 3, 5, 5)) * 2 + 1).astype(np.float32)


# ---- the op registry ---------------------------------------------------------
def test_required_ops_are_derived_from_the_declarations():
    declared = [name for name, spec in op_registry.REGISTRY.items() if not spec.optional]
    assert interface.OPS == tuple(declared)
    assert "apply_momentum" in op_registry.optional_ops() and "apply_momentum" not in interface.OPS
    for name in interface.OPS:
        spec = op_registry.REGISTRY[name]
        if spec.public:
            public = getattr(ud.ops, name)
            assert inspect.signature(public) == spec.signature, name
            assert public.__doc__ == spec.declaration.__doc__, name


def test_every_loaded_backend_meets_the_registry(backend):
    ops = config.backend().ops
    op_registry.check_backend_ops(backend, ops)  # raises on any problem
    for name in interface.OPS:
        assert callable(getattr(ops, name)), name


def test_a_backend_missing_an_op_or_a_parameter_fails_naming_both():
    ops = types.SimpleNamespace(**{name: getattr(load("torch").ops, name) for name in interface.OPS})
    del ops.scan
    ops.linear = lambda x, weight: x  # the declaration passes (x, weight, bias)
    with pytest.raises(BackendInterfaceError, match=r"'fake'.*linear \(takes 2 positional.*x, weight, bias\).*scan \(missing\)"):
        op_registry.check_backend_ops("fake", ops)


def test_optional_ops_are_reached_only_by_declared_name():
    with pytest.raises(BackendInterfaceError, match="not a declared optional op"):
        op_registry.optional_op(load("tensorflow").ops, "apply_adam")
    assert op_registry.optional_op(load("torch").ops, "apply_momentum") is None
    assert callable(op_registry.optional_op(load("tensorflow").ops, "apply_momentum"))


def test_an_op_declared_twice_is_an_error():
    def relu(x):
        """A second declaration of an existing op."""

    with pytest.raises(BackendInterfaceError, match="'relu' is declared twice"):
        op_registry.declare(lambda: None)(relu)


# ---- pure ops ----------------------------------------------------------------
def _run_batch_norm(training, compiled):
    mean0, var0 = np.linspace(-1, 1, 3).astype(np.float32), np.linspace(0.5, 2, 3).astype(np.float32)
    running_mean, running_var = ud.tensor(mean0), ud.tensor(var0)
    weight, bias = ud.tensor(np.array([1.5, 0.5, 2.0])), ud.tensor(np.array([0.1, -0.2, 0.3]))

    def norm(x):
        return ud.ops.batch_norm(x, running_mean, running_var, weight, bias, training, 0.2, 1e-5)

    y, new_mean, new_var = (ud.function(norm) if compiled else norm)(ud.tensor(IMAGES))
    # the op is pure: its arguments are unchanged
    assert np.array_equal(ud.to_numpy(running_mean), mean0) and np.array_equal(ud.to_numpy(running_var), var0)
    t_mean, t_var = torch.tensor(mean0), torch.tensor(var0)
    expected = F.batch_norm(torch.tensor(IMAGES), t_mean, t_var, torch.tensor([1.5, 0.5, 2.0]),
                            torch.tensor([0.1, -0.2, 0.3]), training, 0.2, 1e-5)
    assert max_relative_difference(ud.to_numpy(y), expected.numpy()) < 2e-6
    assert max_relative_difference(ud.to_numpy(new_mean), t_mean.numpy()) < 2e-6
    assert max_relative_difference(ud.to_numpy(new_var), t_var.numpy()) < 2e-6


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_batch_norm_op_returns_new_statistics_and_changes_nothing(backend, training, compiled):
    _run_batch_norm(training, compiled)


def test_batch_norm_module_writes_the_statistics_in_training_only(backend):
    layer = ud.nn.BatchNorm2d(3, momentum=0.2)
    before = layer.state_dict()
    layer.eval()
    layer(ud.tensor(IMAGES))
    assert all(np.array_equal(v, layer.state_dict()[k]) for k, v in before.items())
    layer.train()
    layer(ud.tensor(IMAGES))
    reference = torch.nn.BatchNorm2d(3, momentum=0.2)
    reference(torch.tensor(IMAGES))
    assert max_relative_difference(layer.state_dict()["running_var"], reference.running_var.numpy()) < 2e-6
    assert max_relative_difference(layer.state_dict()["running_mean"], reference.running_mean.numpy()) < 2e-6


def test_dropout_takes_its_generator_explicitly(backend):
    """The mask comes from the generator passed in: re-seeding the backend reproduces it, and the
    module's masks are the op's masks with the backend's generator."""
    x = ud.tensor(np.ones((64, 32), dtype=np.float32))
    ud.manual_seed(5)
    first = ud.to_numpy(ud.ops.dropout(x, 0.5, True, config.backend().generator()))
    ud.manual_seed(5)
    again = ud.to_numpy(ud.ops.dropout(x, 0.5))
    ud.manual_seed(5)
    module = ud.to_numpy(ud.nn.Dropout(0.5)(x))
    assert np.array_equal(first, again) and np.array_equal(first, module)
    assert set(np.unique(first)) == {0.0, 2.0}
    assert 0.35 < (first == 0).mean() < 0.65
    assert np.array_equal(ud.to_numpy(ud.ops.dropout(x, 0.5, training=False)), np.ones((64, 32)))


def test_torch_dropout_draws_from_a_generator_of_the_callers():
    with ud.use_backend("torch"):
        x = ud.tensor(np.ones((64, 32), dtype=np.float32))
        masks = []
        for _ in range(2):
            generator = torch.Generator().manual_seed(3)
            torch.manual_seed(99)  # the global generator must not matter
            masks.append(ud.to_numpy(ud.ops.dropout(x, 0.25, True, generator)))
            torch.manual_seed(100)
        assert np.array_equal(masks[0], masks[1])
        assert 0.15 < (masks[0] == 0).mean() < 0.35


# ---- keras delegates to its host ---------------------------------------------
def test_keras_delegates_to_the_backend_of_its_framework():
    import keras

    keras_backend = load("keras")
    host = keras_backend.host
    assert host is load(keras.backend.backend())
    assert keras_backend.devices() == host.devices()
    versions = keras_backend.versions()
    assert all(f"keras backend {name}" in versions for name in host.versions())
    for name in host.keras_native_ops:  # the host's own kernel (max pooling's reads a Keras variable's value first)
        op = getattr(keras_backend.ops, name)
        assert (op.__wrapped__ if name in keras_backend.ops._INPUT_READ else op) is getattr(host.ops, name), name


def test_keras_never_branches_on_its_framework():
    """Only host.py asks Keras which framework it runs on (export.py reads its host's capabilities instead)."""
    from pathlib import Path

    folder = Path(interface.__file__).parent / "keras"
    asking = sorted(p.name for p in folder.glob("*.py") if "keras.backend.backend()" in p.read_text())
    assert asking == ["host.py"]


def test_keras_backend_value_names_the_valid_frameworks(monkeypatch):
    """A value that is no framework Keras runs on under unidl is said to be none, with the valid values (the
    registry's hosts); it opened with "needs foo, which is not installed", as if an install would fix it."""
    spec = specs()["keras"]
    monkeypatch.setenv("KERAS_BACKEND", "foo")
    monkeypatch.setattr(backends, "_loaded", {})  # (a keras backend loaded by an earlier test is not reused)
    valid = ", ".join(repr(name) for name in specs() if name != "keras")
    with pytest.raises(ConfigurationError) as caught:
        backends.load("keras")
    assert str(caught.value) == (f"backend 'keras' cannot be used: KERAS_BACKEND='foo' is not a framework unidl's "
                                 f"keras backend runs on; valid values: {valid}")
    assert "keras" not in backends.available_backends()  # (what is listed as available loads)
    monkeypatch.setenv("KERAS_BACKEND", "")  # empty is unset, as Keras reads it: tensorflow
    assert spec.setting_problem() is None and spec.required_modules()[1:] == specs()["tensorflow"].required_modules()
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert spec.install_hint(["torch"]) == "install it with: pip install 'unidl[keras,torch]'"
    assert spec.required_modules() == ("keras", "torch")


# ---- adding a backend means adding a folder --------------------------------------------------------------------
#: a front-end file -> (the framework names it may use, why): each an interop with a framework's own objects or files,
#: which every backend accepts alike, or a text that is an example of a syntax; never a branch on the backend in use
FRONT_END_ALLOWED = {
    "unidl/serialization.py": (("torch",), "reads a native variable's dtype from its name, torch's ('torch.float32') "
                                           "included"),
    "unidl/io/torch_checkpoint.py": (("torch",), "reads PyTorch's torch.save files with torch.load where torch is "
                                                 "installed, on any backend (PyTorch's file format, not the torch "
                                                 "backend)"),
    "unidl/io/torch_archive.py": (("torch",), "reads the same files without torch: its pickle names torch's "
                                              "storage, dtype and rebuild functions, which it maps to NumPy"),
    "unidl/data/worker.py": (("torch",), "seeds torch's global generator in loader workers where the process has "
                                         "imported torch, as torch's DataLoader does, on any backend"),
    "unidl/data/dataset.py": (("torch",), "recognises torch.utils.data.Dataset's placeholder __getitem__ by name, "
                                          "so a torch Dataset is accepted on any backend (torch never imported)"),
    "unidl/fit.py": (("torch", "tensorflow"), "fit takes a torch DataLoader or a tf.data.Dataset as data on any "
                                              "backend: recognised by its module, named in the error"),
    "unidl/metrics/probe.py": (("torch", "tensorflow"), "reads the first sample of those same native pipelines"),
    "unidl/nn/placement.py": (("torch",), "Module.to takes memory_format=torch.preserve_format, as torch.nn.Module.to "
                                          "does (PyTorch's API, on any backend), recognised by its name"),
    "unidl/callbacks/callback.py": (("keras",), "fit takes Keras's own callbacks on any backend: a Keras Callback "
                                                "base class's no-op hooks are recognised by its module"),
    "unidl/distributed/process_group.py": (("torch", "tensorflow", "jax"),
                                           "the data-parallel engines in an error (unidl/distributed/ was being "
                                           "edited apart; to be derived from Backend.distributed_engine)"),
}


def _framework_names() -> dict[str, str]:
    """Each spelling of a framework in code -> its backend-facing name: the backends' names, aliases, modules
    (their SPECs), and the import aliases of their frameworks (``tf``, ``jnp``)."""
    names = {"jnp": "jax", "tf": "tensorflow"}
    for spec in specs().values():
        for spelling in (spec.name, *spec.aliases, *spec.required_modules(), *spec.companion_modules):
            names.setdefault(spelling, spelling)
    return names


def _code_literals(path):
    """``(line, kind, text, statement)`` of the code of ``path``: each identifier, and each string literal
    (implicitly concatenated ones joined), docstrings and comments left out; ``statement`` counts logical lines."""
    import io
    import tokenize

    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL)]
    found, index, statement = [], 0, 0
    while index < len(tokens):
        token = tokens[index]
        statement += token.type == tokenize.NEWLINE
        if token.type == tokenize.NAME:
            found.append((token.start[0], "name", token.string, statement))
        if token.type != tokenize.STRING:
            index += 1
            continue
        end = index
        while end + 1 < len(tokens) and tokens[end + 1].type == tokenize.STRING:
            end += 1
        alone = index == 0 or tokens[index - 1].type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        if not (alone and end + 1 < len(tokens) and tokens[end + 1].type == tokenize.NEWLINE):  # a docstring
            found.append((token.start[0], "string", " ".join(t.string for t in tokens[index:end + 1]), statement))
        index = end + 1
    return found


def _framework_mentions(path, names) -> list[tuple[int, str, str]]:
    """``(line, framework, code)`` where ``path`` imports or uses a framework (an identifier), uses a framework's
    name as data (a string that is a module path: ``"torch.utils.data"``), names two backends or more in the strings
    of one statement (a list of backends, a table of formats), or names an install extra (``unidl[jax]``). Citing
    one framework's API in a message ("as torch.nn does") is not a mention: unidl follows PyTorch's API on every
    backend."""
    import re

    spelled = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    word, module_path = re.compile(rf"\b({spelled})\b"), re.compile(rf"^['\"]({spelled})(\.\w+)*\.?['\"]$")
    extra = re.compile(rf"unidl\[[^\]]*\b({spelled})\b")
    literals, listed = _code_literals(path), {}
    for _, kind, text, statement in literals:
        if kind == "string":
            listed.setdefault(statement, set()).update(names[m] for m in word.findall(text))
    mentions = []
    for line, kind, text, statement in literals:
        if kind == "name":
            hits = [text] if text in names else []
        else:
            several = listed[statement] if len(listed[statement]) > 1 else set()
            hits = sorted({m.group(1) for m in (module_path.match(text.lstrip("rbfRBF")), extra.search(text)) if m}
                          | {names[m] for m in word.findall(text)} & several)
        mentions += [(line, names[hit], text) for hit in hits]
    return mentions


def test_the_front_end_never_names_a_backend():
    """Adding a backend means adding a folder: outside ``unidl/backends/``, no code imports a framework, branches
    on one by name, or keeps a list of backends, hosts, export formats or install extras by hand (those come from
    the backends' SPECs and capabilities). FRONT_END_ALLOWED holds the justified exceptions, each still needed."""
    from pathlib import Path

    import unidl

    root = Path(unidl.__file__).parent
    names, found, used = _framework_names(), [], set()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).as_posix()
        if relative.startswith("unidl/backends/"):
            continue
        allowed = FRONT_END_ALLOWED.get(relative, ((), ""))[0]
        for line, framework, code in _framework_mentions(path, names):
            if framework in allowed:
                used.add((relative, framework))
            else:
                found.append(f"{relative}:{line}: {framework} in {code[:100]}")
    assert not found, "the front end names a backend (move it into unidl/backends/):\n" + "\n".join(found)
    stale = [(p, f) for p, (allowed, _) in FRONT_END_ALLOWED.items() for f in allowed if (p, f) not in used]
    assert not stale, f"FRONT_END_ALLOWED allows what no longer occurs: {stale}"


def test_the_front_end_check_finds_each_kind_of_mention(tmp_path):
    """The check itself: each kind of mention is found; a docstring, a comment, one framework's API cited in a
    message and a compound identifier are not."""
    path = tmp_path / "front.py"
    path.write_text('"""Runs on torch, tensorflow and jax."""\n'
                    'import jax.numpy as jnp  # torch too\n'
                    'HOSTS = ("tensorflow", "jax")\n'
                    'root = kind.__module__.startswith("torch.utils.data")\n'
                    'hint = f"pip install \'unidl[{x}]\' or \'unidl[keras]\'"\n'
                    'message = "as torch.nn does"; torch_options = 1\n'
                    'FORMATS = {"a": "tf.saved_model.load(path)",\n'
                    '           "b": "jax.export.deserialize(data)"}\n'
                    'def f():\n    """tf.data and keras."""\n')
    mentions = [(line, framework) for line, framework, _ in _framework_mentions(path, _framework_names())]
    assert mentions == [(2, "jax"), (2, "jax"), (3, "tensorflow"), (3, "jax"), (4, "torch"), (5, "keras"),
                        (7, "tensorflow"), (8, "jax")]
