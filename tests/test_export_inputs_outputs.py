"""``ud.export`` of what is not one float tensor in and one out: integer inputs (token ids), nested outputs, and the
inputs it refuses (a wrong shape, a second input), the same on every backend and format."""

import os

import numpy as np
import pytest

import unidl as ud
from unidl.testing import max_relative_difference

from tests.test_export import SUFFIXES, TOLERANCE


def run_program(path, format, x) -> list:
    """Load the program ``format`` wrote at ``path`` and run it on ``x``: its outputs, flat, as NumPy arrays (a
    SavedModel's ``serve`` and ``serving_default`` both, ``serve``'s first)."""
    if format == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        served = loaded.serve(tf.constant(x))
        served = list(served) if isinstance(served, (tuple, list)) else [served]
        by_signature = loaded.signatures["serving_default"](tf.constant(x))
        assert sorted(by_signature) == [f"output_{index}" for index in range(len(served))]
        return [t.numpy() for t in served] + [by_signature[f"output_{index}"].numpy() for index in range(len(served))]
    if format == "torch_export":
        import torch

        with torch.no_grad():
            output = torch.export.load(str(path)).module()(torch.from_numpy(x))
        return [t.numpy() for t in _leaves(output)]
    if format == "stablehlo":
        from jax import export

        with open(path, "rb") as file:
            output = export.deserialize(bytearray(file.read())).call(x)
        return [np.asarray(t) for t in _leaves(output)]
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def run_as_formats_says(format, path, x):
    """Run the program at ``path`` on ``x`` with the code that ``FORMATS[format]`` shows users (``unidl info``,
    the export errors), executed as they would run it, statement by statement; the last statement's value. (Not
    in the test's own frame: pytest's rewritten asserts keep temporaries alive, and a one-liner that failed as a
    script passed there.)"""
    from unidl.export import FORMATS

    code = FORMATS[format].split(": ", 1)[1]
    *statements, last = code.split("; ")
    namespace = {"path": str(path), "x": x}
    if "tf." in code:
        import tensorflow

        namespace["tf"] = tensorflow
    for statement in statements:
        exec(statement, namespace)
    return eval(last, namespace)


def _leaves(output) -> tuple:
    """The tensors of a program that keeps the nesting (torch_export, stablehlo), in the flat formats' order."""
    from unidl.export import flat_outputs

    flat = flat_outputs(output)
    return flat if isinstance(flat, tuple) else (flat,)


def formats_of(model):
    return [f for f in model._backend.export_formats() if f != "onnx" or _has_onnx_runtime()]


def _has_onnx_runtime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# ---- integer inputs ----------------------------------------------------------------------------------------

TEXT_MODELS = {
    "LSTMClassifier": lambda: ud.models.LSTMClassifier(20, 3, embedding_dim=4, hidden_size=5),
    "TransformerClassifier": lambda: ud.models.TransformerClassifier(20, 3, d_model=8, nhead=2, num_layers=1,
                                                                     dim_feedforward=16),
    # (post-norm: its evaluation takes PyTorch's nested-tensor path, whose masks must export: ONNX Runtime has no
    # Where of booleans)
    "TransformerClassifier-post-norm": lambda: ud.models.TransformerClassifier(20, 3, d_model=8, nhead=2, num_layers=1,
                                                                               dim_feedforward=16, norm_first=False),
}


@pytest.mark.parametrize("model_name", sorted(TEXT_MODELS))
def test_models_of_token_ids_export_with_an_integer_input_dtype(backend, model_name, tmp_path):
    """The text classifiers take int64 token ids: export traced them with a float input, which their Embedding
    refuses, so no format of any backend could export them. With ``input_dtype="int64"`` every format takes int64
    ids and gives the live model's outputs, at another batch size than the one traced."""
    ud.manual_seed(0)
    model = TEXT_MODELS[model_name]().eval()
    tokens = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9], [19, 18, 1, 1, 0, 0]], np.int64)
    expected = ud.to_numpy(model(ud.tensor(tokens)))
    for format in formats_of(model):
        path = tmp_path / f"{model_name}_{format}{SUFFIXES[format]}"
        ud.export(model, path, format=format, input_shape=(6,), input_dtype="int64")
        for output in run_program(path, format, tokens):
            assert output.shape == expected.shape, format
            assert max_relative_difference(output, expected) <= TOLERANCE, format


def test_input_dtype_takes_names_and_dtype_objects_and_refuses_others(backend, tmp_path):
    model = ud.nn.Sequential(ud.nn.Linear(4, 2))
    format = model._backend.export_formats()[0]
    ud.export(model, tmp_path / f"a{SUFFIXES[format]}", format=format, input_shape=(4,), input_dtype=np.float32)
    ud.export(model, tmp_path / f"b{SUFFIXES[format]}", format=format, input_shape=(4,), input_dtype="float32")
    with pytest.raises(ValueError, match=r"input_dtype must be one of float16, .*int64.* got 'int65'"):
        ud.export(model, tmp_path / f"c{SUFFIXES[format]}", format=format, input_shape=(4,), input_dtype="int65")
    assert sorted(os.listdir(tmp_path)) == [f"a{SUFFIXES[format]}", f"b{SUFFIXES[format]}"]


def test_a_float64_input_to_a_float32_model_is_refused_in_every_format(backend, tmp_path):
    """``input_dtype="float64"`` for a float32 model is the forward's ``DtypeMismatchError`` in every format of every
    backend, as the live model refuses it (jax's ONNX took it: jax2onnx narrowed the input, a Cast before it)."""
    model = ud.nn.Sequential(ud.nn.Linear(4, 2))
    for format in model._backend.export_formats():
        with pytest.raises(ud.errors.DtypeMismatchError):
            ud.export(model, tmp_path / f"m{SUFFIXES[format]}", format=format, input_shape=(4,), input_dtype="float64")
    assert os.listdir(tmp_path) == []


# ---- nested outputs ----------------------------------------------------------------------------------------

class NestedHeads(ud.nn.Module):
    """Outputs nested as an LSTM's ``(output, (h_n, c_n))`` are, with a dict inside whose keys are out of order; the
    hidden values are also an input of the first head (jax2onnx names values of such graphs ``y_1``)."""

    def __init__(self):
        super().__init__()
        self.hidden = ud.nn.Linear(4, 3)
        self.head = ud.nn.Linear(3, 2)

    def forward(self, x):
        h = self.hidden(x)
        return self.head(h), {"z": h, "a": ud.ops.tanh(h)}


def test_nested_outputs_are_flattened_alike_in_savedmodel_and_onnx(backend, tmp_path):
    """A SavedModel signature holds no nesting (TensorFlow's "Got a non-Tensor value" failed every SavedModel
    export of such a model), jax2onnx refused the names y_1, y_2 for a graph that used them inside, and torch named
    the ONNX outputs after its nodes (``stack_1``) and a dict's entries in insertion order. Every format of every
    backend now gives the outputs flat, depth first and a dict's entries by key (head, tanh(h), h); ONNX names
    them y, y_1, y_2 and a SavedModel signature output_0, output_1, output_2. torch_export and stablehlo keep the
    nesting."""
    ud.manual_seed(0)
    model = NestedHeads().eval()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    head, hidden = model(ud.tensor(x))
    expected = [ud.to_numpy(head), ud.to_numpy(hidden["a"]), ud.to_numpy(hidden["z"])]
    for format in formats_of(model):
        path = tmp_path / f"nested{SUFFIXES[format]}"
        ud.export(model, path, format=format, input_shape=(4,))
        outputs = run_program(path, format, x)
        assert len(outputs) == len(expected) * (2 if format == "saved_model" else 1), format
        for index, output in enumerate(outputs):
            assert max_relative_difference(output, expected[index % 3]) <= TOLERANCE, (format, index)
        if format == "onnx":
            import onnx

            graph = onnx.load(str(path)).graph
            assert [value.name for value in graph.output] == ["y", "y_1", "y_2"]
            assert [value.name for value in graph.input] == ["x"]
            assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


class WithItsInput(ud.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = ud.nn.Linear(4, 3)

    def forward(self, x):
        h = self.linear(x)
        return h, x, h


def test_flat_outputs_that_are_the_input_or_repeated(backend, tmp_path):
    """A forward returning its input, and one tensor twice: torch's exporter wrote ``Identity(x -> x)``, a graph
    no ONNX runtime loads; every backend's ONNX and SavedModel programs now load and give the three outputs (ONNX
    names them y, y_1, y_2)."""
    model = WithItsInput().eval()
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    h = ud.to_numpy(model(ud.tensor(x))[0])
    flat = [format for format in formats_of(model) if format in ("onnx", "saved_model")]
    assert flat  # (every backend writes one of them)
    for format in flat:
        ud.export(model, tmp_path / f"m{SUFFIXES[format]}", format=format, input_shape=(4,))
        outputs = run_program(tmp_path / f"m{SUFFIXES[format]}", format, x)
        expected = [h, x, h] * (2 if format == "saved_model" else 1)  # (serve's, then the signature's)
        for output, wanted in zip(outputs, expected, strict=True):
            assert max_relative_difference(output, wanted) <= TOLERANCE, format


def test_a_single_output_keeps_its_names(backend, tmp_path):
    """One tensor out: ``serve(x)`` returns the tensor itself (not a tuple of one), the ONNX output is ``y``."""
    model = ud.models.TwoLayerNet(4, 3, 2).eval()
    x = np.ones((2, 4), np.float32)
    for format in formats_of(model):
        path = tmp_path / f"net{SUFFIXES[format]}"
        ud.export(model, path, format=format)
        if format == "saved_model":
            import tensorflow as tf

            output = run_as_formats_says(format, path, x)
            assert tf.is_tensor(output)
            assert max_relative_difference(output.numpy(), ud.to_numpy(model(ud.tensor(x)))) <= TOLERANCE
        if format == "onnx":
            import onnx

            assert [value.name for value in onnx.load(str(path)).graph.output] == ["y"]


# ---- inputs export refuses ---------------------------------------------------------------------------------

def test_a_wrong_input_shape_is_unidls_shape_error_in_every_format(backend, tmp_path):
    """torch's ONNX exporter wrapped unidl's ShapeMismatchError in its own TorchExportError (unidl's only as the
    cause): every format now raises unidl's error itself, naming the layer and the shapes, and writes nothing."""
    model = ud.models.TwoLayerNet(8, 5, 3)
    for format in model._backend.export_formats():
        with pytest.raises(ud.ShapeMismatchError, match=r"at 'linear1' expected input of shape \(N, 8\)") as error:
            ud.export(model, tmp_path / f"net{SUFFIXES[format]}", format=format, input_shape=(7,))
        assert type(error.value) is ud.ShapeMismatchError, format
        assert os.listdir(tmp_path) == [], format


class Scaled(ud.nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.linear = ud.nn.Linear(4, 2)
        self.calls = calls

    def forward(self, x, scale):
        self.calls.append(1)
        return self.linear(x) * scale


class OptionallyScaled(Scaled):
    def forward(self, x, scale=2.0):
        return super().forward(x, scale)


def test_a_forward_of_two_inputs_is_refused_before_tracing(backend, tmp_path):
    """An exported program takes one input: a forward that needs two failed inside each framework's tracer with
    Python's own "missing 1 required positional argument" (torch's ONNX exporter: wrapped in TorchExportError).
    ``ExportInputError`` now says so before anything is traced, on every format; an argument with a default is
    no second input."""
    calls = []
    model = Scaled(calls)
    for format in model._backend.export_formats():
        with pytest.raises(ud.ExportInputError, match=r"Scaled.forward with one input, x, but its required "
                                                      r"arguments are 'x', 'scale'"):
            ud.export(model, tmp_path / f"scaled{SUFFIXES[format]}", format=format, input_shape=(4,))
    assert calls == [] and os.listdir(tmp_path) == []
    assert isinstance(ud.ExportInputError("m"), TypeError)
    format = model._backend.export_formats()[0]
    ud.export(OptionallyScaled(calls), tmp_path / f"optional{SUFFIXES[format]}", format=format, input_shape=(4,))
    assert calls and os.listdir(tmp_path) == [f"optional{SUFFIXES[format]}"]


class Counting(ud.nn.Module):
    """A forward that counts its calls in a buffer, in eval mode too."""

    def __init__(self):
        super().__init__()
        self.lin = ud.nn.Linear(4, 2)
        self.register_buffer("calls", np.zeros(2, np.float32))

    def forward(self, x):
        self.calls = self.calls + 1.0
        return self.lin(x) + self.calls


def test_a_forward_that_writes_its_state_is_refused_in_every_format(backend, tmp_path):
    """A program is a function of its input: a forward writing a buffer in eval mode was exported as a program that
    went on counting at every call (torch_export, SavedModels but jax's), one frozen at export (jax's formats), or
    torch's ONNX exporter's opaque ConversionError. ``ExportInputError`` names the buffer in every format; the model
    and the directory are as they were."""
    model = Counting().eval()
    model(ud.tensor(np.ones((1, 4), np.float32)))
    for format in model._backend.export_formats():
        with pytest.raises(ud.ExportInputError, match=r"the forward of Counting\(\) writes its buffer 'calls' in eval "
                                                      r"mode"):
            ud.export(model, tmp_path / f"counting{SUFFIXES[format]}", format=format, input_shape=(4,))
    np.testing.assert_array_equal(ud.to_numpy(model.calls), [1.0, 1.0])
    assert os.listdir(tmp_path) == [] and not model.training


def test_an_export_through_a_symlink_writes_the_links_target(backend, tmp_path):
    """``path`` a symlink to an earlier program: ``overwrite=True`` writes the new program at the link's target and
    the link stays, as ``ud.save`` writes through one (a SavedModel raised NotADirectoryError naming a temporary; a
    file replaced the link and its target kept the old program)."""
    format = ud.nn.Linear(4, 2)._backend.export_formats()[0]
    target, link = tmp_path / f"target{SUFFIXES[format]}", tmp_path / f"link{SUFFIXES[format]}"
    ud.export(ud.nn.Linear(4, 2), target, format=format, input_shape=(4,))
    os.symlink(target, link)
    model = ud.nn.Linear(4, 2)
    ud.export(model, link, format=format, input_shape=(4,), overwrite=True)
    assert os.path.islink(link) and sorted(os.listdir(tmp_path)) == sorted([target.name, link.name])
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(run_program(str(target), format, x)[0], ud.to_numpy(model(ud.tensor(x))), rtol=1e-5)


def test_a_torch_export_archive_names_no_temporary(tmp_path):
    """A ``.pt2`` archive's entries lie under torch's neutral root folder, ``archive/`` (the export's temporary name,
    ``.m.pt2.unidl-<host>-<pid>-<random>.tmp/``, was the root: written under it, the program carried that name)."""
    import zipfile

    with ud.use_backend("torch"):
        ud.export(ud.nn.Linear(2, 1), tmp_path / "m.pt2", format="torch_export", input_shape=(2,))
    roots = {entry.filename.split("/", 1)[0] for entry in zipfile.ZipFile(tmp_path / "m.pt2").infolist()}
    assert roots == {"archive"}
    x = np.ones((1, 2), np.float32)
    assert run_program(str(tmp_path / "m.pt2"), "torch_export", x)[0].shape == (1, 1)
