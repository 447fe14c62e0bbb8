"""``ud.export``: every format from every backend that writes it, loaded in a fresh process without unidl."""

import json
import os
import sys

import numpy as np
import pytest

import unidl as ud
from unidl.export import FORMATS
from unidl.testing import max_relative_difference
from unidl.testing.pytest_plugin import backends_under_test

from tests.helpers import run_python

TOLERANCE = 2e-6
#: batch sizes other than the one traced with (2), to show that the batch dimension is dynamic; the smaller batch is
#: the larger one's first samples, whose live outputs are the larger batch's first rows (every model here is
#: per-sample in eval mode), so that the live model runs once (on jax each eager primitive compiles per shape)
BATCH_SIZES = (5, 1)

class Joins(ud.nn.Module):
    """Ops whose shape checks meet the exporters' symbolic batch size (torch.export refused a check that hashed or
    compared it): a size taken from the input, a concatenation, a batched matmul and a broadcasting where."""

    def __init__(self):
        super().__init__()
        self.linear = ud.nn.Linear(6, 4)
        self.mix = ud.nn.Linear(6, 6)

    def forward(self, x):
        h = ud.ops.cat([self.linear(x), ud.ops.zeros((ud.ops.shape(x)[0], 2))], 1)
        h = ud.ops.matmul(ud.ops.reshape(h, (-1, 2, 3)), ud.ops.reshape(self.mix.weight, (1, 3, 12))[:, :, :3])
        return ud.ops.where(h > 0.1, h, 0.0)


MODELS = {
    "Joins": (Joins, (6,)),
    "TwoLayerNet": (lambda: ud.models.TwoLayerNet(64, 100, 10), (64,)),
    "CNN": (lambda: ud.models.CNN(in_channels=1, num_classes=10, image_size=8), (1, 8, 8)),
    # layers that build constants while traced (bins, interpolation weights: the torch backend's export of
    # them raised), non-global adaptive pooling with bins of unequal sizes
    "Decoder": (lambda: ud.nn.Sequential(
        ud.nn.ConvTranspose2d(1, 2, 3, stride=2), ud.nn.Upsample(scale_factor=2, mode="bilinear"),
        ud.nn.AdaptiveMaxPool2d((5, 4)), ud.nn.Upsample(scale_factor=2), ud.nn.AdaptiveAvgPool2d(3)), (1, 4, 4)),
}

#: format -> code that loads ``path`` and defines ``run(x) -> [outputs]``, one per way of calling the program
LOADERS = {
    "saved_model": """
import tensorflow as tf
def load(path):
    loaded = tf.saved_model.load(path)
    def run(x):
        by_signature = loaded.signatures["serving_default"](tf.constant(x))
        (output,) = by_signature.values()
        return [loaded.serve(tf.constant(x)).numpy(), output.numpy()]
    return run
""",
    "torch_export": """
import torch
def load(path):
    program = torch.export.load(path).module()
    def run(x):
        with torch.no_grad():
            return [program(torch.from_numpy(x)).numpy()]
    return run
""",
    "stablehlo": """
from jax import export
def load(path):
    with open(path, "rb") as file:
        program = export.deserialize(bytearray(file.read()))
    def run(x):
        return [np.asarray(program.call(x))]
    return run
""",
    "onnx": """
import onnxruntime
def load(path):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    def run(x):
        return [session.run(None, {"x": x})[0]]
    return run
""",
}

#: what runs in the fresh process: load every program listed in the manifest, write its outputs
RUNNER = """
import json, sys
import numpy as np
{loader}
manifest = json.load(open({manifest!r}))
for item in manifest:
    run = load(item["path"])
    for index, input_path in enumerate(item["inputs"]):
        for way, output in enumerate(run(np.load(input_path))):
            np.save(f"{{item['path']}}.out{{index}}.{{way}}.npy", output)
assert "unidl" not in sys.modules, "the exported program needed unidl"
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "tensorflow", "keras"))[:3]))
"""

SUFFIXES = {"saved_model": "", "torch_export": ".pt2", "onnx": ".onnx", "stablehlo": ".stablehlo"}


def export_every_format(backends, directory) -> dict:
    """format -> [{path, inputs, expected, name}] for every model, backend and format the backend writes, written
    into ``directory`` (the inputs as .npy files)."""
    rng = np.random.default_rng(0)
    written = {}
    for backend in backends:
        with ud.use_backend(backend):
            ud.manual_seed(0)
            for model_name, (build, input_shape) in MODELS.items():
                model = build().eval()
                x = rng.random((max(BATCH_SIZES), *input_shape), dtype=np.float32)
                output = ud.to_numpy(model(ud.tensor(x)))
                inputs, expected = [], []
                for batch in BATCH_SIZES:
                    input_path = directory / f"{backend}_{model_name}_x{batch}.npy"
                    np.save(input_path, x[:batch])
                    inputs.append(str(input_path))
                    expected.append(output[:batch])
                for format in model._backend.export_formats():
                    path = directory / f"{backend}_{model_name}_{format}{SUFFIXES[format]}"
                    ud.export(model, path, format=format, input_shape=input_shape)
                    written.setdefault(format, []).append(
                        {"path": str(path), "inputs": inputs, "expected": expected, "name": path.name})
    return written


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """format -> [{path, inputs, expected, name}] for every model, backend under test and format it writes."""
    return export_every_format(backends_under_test(), tmp_path_factory.mktemp("exports"))


def keras_host_exports() -> dict:
    """Where Keras runs on another framework (tests/test_examples.py's Keras interpreters): ``exports`` for the
    keras backend there, in a fresh temporary directory, the expected outputs as lists (JSON)."""
    import pathlib
    import tempfile

    written = export_every_format(["keras"], pathlib.Path(tempfile.mkdtemp(prefix="unidl-keras-exports-")))
    return {format: [dict(item, expected=[e.tolist() for e in item["expected"]]) for item in items]
            for format, items in written.items()}


def check_exports_run_without_unidl(exports, format, tmp_path) -> None:
    """Run ``exports[format]``'s programs in a fresh process without unidl (``RUNNER``); each output as expected."""
    items = exports[format]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"path": item["path"], "inputs": item["inputs"]} for item in items]))
    run_python(RUNNER.format(loader=LOADERS[format], manifest=str(manifest)))
    ways = 2 if format == "saved_model" else 1
    for item in items:
        for index, expected in enumerate(item["expected"]):
            expected = np.asarray(expected, np.float32)
            for way in range(ways):
                output = np.load(f"{item['path']}.out{index}.{way}.npy")
                assert output.shape == expected.shape, item["name"]
                difference = max_relative_difference(output, expected)
                assert difference <= TOLERANCE, f"{item['name']} batch {BATCH_SIZES[index]}: {difference:.2e}"


@pytest.mark.parametrize("format", sorted(FORMATS))
def test_exported_program_runs_without_unidl(exports, format, tmp_path):
    if format not in exports:
        pytest.skip(f"no backend under test exports {format}")
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    check_exports_run_without_unidl(exports, format, tmp_path)


#: the package each backend's ONNX exporter needs beyond onnx itself
ONNX_CONVERTERS = {"torch": "onnxscript", "jax": "jax2onnx"}


@pytest.mark.parametrize("backend_name", [name for name in backends_under_test() if name in ONNX_CONVERTERS])
def test_missing_onnx_converter_names_the_extra(backend_name, monkeypatch, tmp_path):
    converter = ONNX_CONVERTERS[backend_name]
    for name in [m for m in sys.modules if m == converter or m.startswith(converter + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, converter, None)
    with ud.use_backend(backend_name):
        model = ud.models.TwoLayerNet(4, 3, 2)
        with pytest.raises(ImportError, match=rf"{converter}.*pip install 'unidl\[onnx\]'"):
            ud.export(model, tmp_path / "net.onnx", format="onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif("jax" not in backends_under_test(), reason="the jax backend is not under test")
def test_jax_onnx_pools_keep_padding_and_strides(tmp_path):
    """jax2onnx writes unidl's NCHW pools as pools over four axes, which onnxruntime refuses; unidl's exporter
    pools over height and width instead (unidl/backends/jax/export.py). A padded, strided, non-square window on
    inputs of either sign shows that the padding (with -inf, not 0) and the per-axis sizes survive the rewrite; an
    input holding NaN runs (unidl's NaN rule of max pooling lives in the gradient, not in the exported program)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    with ud.use_backend("jax"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0)), ud.nn.Conv2d(1, 2, 3),
                                 ud.nn.MaxPool2d(2), ud.nn.Flatten()).eval()
        ud.export(model, tmp_path / "pools.onnx", format="onnx", input_shape=(1, 9, 8))
        x = np.random.default_rng(0).standard_normal((3, 1, 9, 8)).astype(np.float32)
        with_nan = x.copy()
        with_nan[1, 0, 4, 3] = np.nan  # the program holds no branch for NaN (whose pools onnxruntime refused)
        expected, expected_nan = (ud.to_numpy(model(ud.tensor(array))) for array in (x, with_nan))
    session = onnxruntime.InferenceSession(str(tmp_path / "pools.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"x": x})
    assert output.shape == expected.shape == (3, 4)
    assert max_relative_difference(output, expected) <= TOLERANCE
    # the samples without NaN as unidl's (onnxruntime's MaxPool skips NaN: sample 1's is its own)
    (output,) = session.run(None, {"x": with_nan})
    assert np.isnan(expected_nan[1]).all() and max_relative_difference(output[::2], expected_nan[::2]) <= TOLERANCE


def test_jax_onnx_replication_padding_runs(tmp_path):
    """A replicate pad on the jax backend (``ReplicationPad2d``, ``Conv2d(padding_mode='replicate')``) exports to an
    ONNX program that onnxruntime runs, with unidl's outputs (jnp.pad's 'edge' mode became a Concat whose declared
    shape onnxruntime refused; the backend gathers the edge positions instead)."""
    import onnxruntime

    with ud.use_backend("jax"):
        ud.manual_seed(0)
        model = ud.nn.Sequential(ud.nn.ReplicationPad2d((1, 2, 0, 3)),
                                 ud.nn.Conv2d(2, 2, 3, padding=(1, 2), padding_mode="replicate")).eval()
        ud.export(model, tmp_path / "pads.onnx", format="onnx", input_shape=(2, 4, 5))
        x = np.random.default_rng(0).standard_normal((3, 2, 4, 5)).astype(np.float32)
        expected = ud.to_numpy(model(ud.tensor(x)))
    session = onnxruntime.InferenceSession(str(tmp_path / "pads.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"x": x})
    assert output.shape == expected.shape == (3, 2, 7, 10)
    assert max_relative_difference(output, expected) <= TOLERANCE


def test_an_exporters_missing_conversion_is_an_export_format_error_naming_the_layer(tmp_path):
    """jax2onnx cannot convert max pooling with indices over a symbolic batch size: on jax an ``ExportFormatError``
    naming the layer, the format, the converter's reason and the formats that write it (it was jax's own
    ``InconclusiveDimensionOperation``); nothing written. (``stablehlo`` writes it.)"""
    if "jax" not in backends_under_test():
        pytest.skip("jax is not under test")
    pytest.importorskip("jax2onnx")
    with ud.use_backend("jax"):
        model = ud.nn.MaxPool2d(2, return_indices=True)
        with pytest.raises(ud.ExportFormatError, match=r"the jax backend's 'onnx' exporter cannot convert MaxPool2d's "
                                                       r"forward: NotImplementedError: jax2onnx: "
                                                       r"InconclusiveDimensionOperation: .*'stablehlo'"):
            ud.export(model, tmp_path / "pool.onnx", format="onnx", input_shape=(2, 6, 6))
        assert os.listdir(tmp_path) == []
        ud.export(model, tmp_path / "pool.stablehlo", format="stablehlo", input_shape=(2, 6, 6))
        # an error of the forward's own over the symbolic batch size is its own, as the other formats give it
        with pytest.raises(ValueError, match="a batch size read as an int") as raised:
            ud.export(_BatchSizeAsInt(), tmp_path / "own.onnx", format="onnx", input_shape=(3,))
        assert type(raised.value) is ValueError  # (not the ExportFormatError, a ValueError too, of a conversion)


class _BatchSizeAsInt(ud.nn.Module):
    """A forward that needs its batch size as a Python int (an export's is symbolic)."""

    def forward(self, x):
        if not isinstance(x.shape[0], int):
            raise ValueError("a batch size read as an int")
        return x


def test_jax_onnx_bidirectional_recurrent_layers_match_torch(tmp_path):
    """A bidirectional, two-layer LSTM and GRU on jax export to ONNX (jax2onnx has no reverse scan: the backend's
    reverse direction is a forward scan over the flipped sequence, the same arithmetic; it was an
    ``ExportFormatError``), and onnxruntime's outputs are plain torch's for the same weights."""
    onnxruntime = pytest.importorskip("onnxruntime")
    import torch

    x = np.random.default_rng(0).standard_normal((3, 6, 4)).astype(np.float32)
    for layer, reference in ((ud.nn.LSTM, torch.nn.LSTM), (ud.nn.GRU, torch.nn.GRU)):
        with ud.use_backend("jax"):
            ud.manual_seed(0)
            model = layer(4, 5, num_layers=2, batch_first=True, bidirectional=True)
            ud.export(model, tmp_path / f"{layer.__name__}.onnx", format="onnx", input_shape=(6, 4))
            state = {name: torch.tensor(np.asarray(value)) for name, value in model.state_dict().items()}
        oracle = reference(4, 5, num_layers=2, batch_first=True, bidirectional=True)
        oracle.load_state_dict(state)
        with torch.no_grad():
            expected = oracle(torch.tensor(x))
        session = onnxruntime.InferenceSession(str(tmp_path / f"{layer.__name__}.onnx"),
                                               providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"x": x})
        assert outputs[0].shape == (3, 6, 10), layer
        assert max_relative_difference(outputs[0], expected[0].numpy()) <= TOLERANCE, layer
        final = expected[1] if layer is ud.nn.GRU else expected[1][0]  # (h_n; an LSTM's (h_n, c_n))
        assert max_relative_difference(outputs[1], final.numpy()) <= TOLERANCE, layer


def test_every_backend_exports_something():
    for backend in backends_under_test():
        with ud.use_backend(backend):
            formats = ud.models.TwoLayerNet(2, 2, 2)._backend.export_formats()
        assert set(formats) <= set(FORMATS), backend


# ---- errors and file handling (one quick format per backend) ---------------------------------

def _model_and_format(tmp_path):
    model = ud.models.TwoLayerNet(4, 3, 2)
    format = model._backend.export_formats()[0]
    return model, format, tmp_path / f"net{SUFFIXES[format]}"


def test_unknown_format_lists_valid_formats(backend, tmp_path):
    model, _, path = _model_and_format(tmp_path)
    with pytest.raises(ValueError, match="unknown export format 'tflite'") as error:
        ud.export(model, path, format="tflite")
    for valid in model._backend.export_formats():
        assert repr(valid) in str(error.value)
    assert isinstance(error.value, ud.ExportFormatError)
    assert os.listdir(tmp_path) == []


def test_format_of_another_backend_is_refused(backend, tmp_path):
    model, _, path = _model_and_format(tmp_path)
    others = [f for f in FORMATS if f not in model._backend.export_formats()]
    with pytest.raises(ud.ExportFormatError, match=f"the {backend} backend cannot export format {others[0]!r}"):
        ud.export(model, path, format=others[0])


def test_existing_path_is_not_clobbered(backend, tmp_path):
    model, format, path = _model_and_format(tmp_path)
    ud.export(model, path, format=format)
    before = sorted(os.listdir(path)) if path.is_dir() else path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ud.export(model, path, format=format)
    assert (sorted(os.listdir(path)) if path.is_dir() else path.read_bytes()) == before
    ud.export(model, path, format=format, overwrite=True)
    assert os.listdir(tmp_path) == [path.name]  # no temporary or moved-aside copy left behind


def test_wrong_kind_of_existing_path(backend, tmp_path):
    model, format, path = _model_and_format(tmp_path)
    if path.suffix:  # a file format: a directory is in the way
        path.mkdir()
        with pytest.raises(IsADirectoryError, match="expected a file path"):
            ud.export(model, path, format=format, overwrite=True)
    else:  # saved_model: a file, or a directory that is no SavedModel, is in the way
        path.write_bytes(b"keep")
        with pytest.raises(NotADirectoryError):
            ud.export(model, path, format=format, overwrite=True)
        other = tmp_path / "data"
        other.mkdir()
        (other / "keep.txt").write_text("keep")
        with pytest.raises(FileExistsError, match="holds no SavedModel"):
            ud.export(model, other, format=format, overwrite=True)
        assert (other / "keep.txt").read_text() == "keep"


def test_missing_parent_directory(backend, tmp_path):
    model, format, path = _model_and_format(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ud.export(model, tmp_path / "missing" / path.name, format=format)


def test_failed_export_leaves_nothing(backend, tmp_path, monkeypatch):
    model, format, path = _model_and_format(tmp_path)

    def half_written(module, temporary, format, input_shape, input_dtype):
        with open(temporary, "wb") as handle:
            handle.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model._backend, "export", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        ud.export(model, path, format=format)
    assert os.listdir(tmp_path) == []


def test_export_is_flushed_to_disk_before_it_is_renamed_into_place(backend, tmp_path, monkeypatch):
    """A power cut after the rename must not leave an empty or partial program under ``path``: every file the
    exporter wrote (each file of a SavedModel directory) is fsynced before the rename, and the directory after it
    (export renamed unsynced files)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to tell which file a descriptor is")
    model, format, path = _model_and_format(tmp_path)
    synced, events = set(), []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        synced.add(os.readlink(f"/proc/self/fd/{descriptor}"))
        return fsync(descriptor)

    def recording_replace(source, target):
        source = os.path.realpath(source)
        files = [os.path.join(root, name) for root, _, names in os.walk(source) for name in names]
        events.append((source, sorted(files or [source]), set(synced)))
        return replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    ud.export(model, path, format=format)
    monkeypatch.undo()
    ((source, files, synced_before),) = events
    assert files and set(files) <= synced_before, f"written but not fsynced before the rename: {files}"
    assert os.path.realpath(tmp_path) in synced  # the rename itself


def test_a_killed_exports_temporary_is_removed_by_the_next_write(backend, tmp_path, monkeypatch):
    """An export killed mid-write leaves its temporary (a file, or a SavedModel directory) beside ``path``. It is
    named as unidl's other temporaries are, so that the next export (or ``ud.save``) into the directory removes it,
    and never while its own export runs (export's temporaries did not match that naming and stayed forever)."""
    export_module = sys.modules["unidl.export"]  # ``unidl.export`` is the function
    model, format, path = _model_and_format(tmp_path)
    left = []

    def killed(module, temporary, format, input_shape, input_dtype):
        if format == "saved_model":
            os.mkdir(temporary)
            temporary = os.path.join(temporary, "saved_model.pb")
        with open(temporary, "wb") as handle:
            handle.write(b"half")
        assert ud.io.remove_stale_temporaries(tmp_path) == []  # one in progress is never touched
        left.append(os.path.basename(temporary if format != "saved_model" else os.path.dirname(temporary)))
        raise KeyboardInterrupt  # as far as this export goes, the process dies here

    monkeypatch.setattr(model._backend, "export", killed)
    monkeypatch.setattr(export_module, "_remove", lambda path: None)  # a killed process removes nothing
    with pytest.raises(KeyboardInterrupt):
        ud.export(model, path, format=format)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == left and left[0].startswith(f".{path.name}.unidl-")
    if format != "saved_model":
        assert left[0].endswith(".tmp" + path.suffix)  # the writers that read the format from the suffix see it
    ud.export(model, path, format=format)
    assert os.listdir(tmp_path) == [path.name]


def test_input_shape_from_config_or_argument(backend, tmp_path):
    model = ud.nn.Sequential(ud.nn.Linear(4, 2))
    format = model._backend.export_formats()[0]
    path = tmp_path / f"seq{SUFFIXES[format]}"
    with pytest.raises(ValueError, match="pass input_shape="):
        ud.export(model, path, format=format)
    with pytest.raises(ValueError, match="positive ints"):
        ud.export(model, path, format=format, input_shape=(0, 4))
    with pytest.raises(ValueError, match="positive ints"):
        ud.export(model, path, format=format, input_shape=(True, 4.0))
    ud.export(model, path, format=format, input_shape=np.array([4]))  # NumPy integers, as the layers take sizes
    assert path.exists()


def test_export_restores_training_mode(backend, tmp_path):
    model, format, path = _model_and_format(tmp_path)
    model.train()
    model.linear2.eval()
    ud.export(model, path, format=format)
    assert model.training and model.linear1.training and not model.linear2.training


def test_export_needs_a_module(tmp_path):
    with pytest.raises(TypeError, match="unidl.nn.Module"):
        ud.export(object(), tmp_path / "x.pt2", format="torch_export")


#: the backends whose SavedModel export traces unidl's compiled functions as TensorFlow graphs (Keras's exporter on
#: TensorFlow; on JAX it converts the JAX program, on torch Keras writes none)
TENSORFLOW_GRAPH_EXPORTS = [name for name in backends_under_test() if name == "tensorflow"
                            or (name == "keras" and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow")]


@pytest.mark.parametrize("backend_name", TENSORFLOW_GRAPH_EXPORTS)
def test_a_function_traced_in_training_is_traced_apart_for_export(backend_name, tmp_path):
    """A ``ud.function`` that a model's forward calls, traced in training before an export (its graph names
    unidl's max-pool gradient, which ``tf.saved_model.save`` failed to trace), or first traced by an export (whose
    graph names none): the export traces it once (it traced it on each of its calls), leaves its ``trace_count``
    as it was, writes a SavedModel naming no gradient of unidl's, and the function's gradient afterwards is still
    torch's (a NaN window's to its last NaN)."""
    torch = pytest.importorskip("torch")
    x = np.array([[[[1.0, np.nan, 2.0, 3.0], [np.nan, 0.5, -1.0, 4.0], [2.0, 1.0, 0.0, 5.0]]]], np.float32)
    r = np.array([[[[1.0, -2.0, 3.0], [0.5, 2.0, -1.0]]]], np.float32)
    tensor = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.max_pool2d(tensor, 2, 2, 1) * torch.tensor(r)).sum().backward()

    class Pooled(ud.nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.pool = pool

        def forward(self, x):
            return self.pool(x) + self.pool(x)  # two calls of one signature: one trace for the export

    with ud.use_backend(backend_name):
        for traced_first_in_training in (True, False):
            traces = []  # the Python body runs once a trace
            pool = ud.function(lambda x: traces.append(1) or ud.ops.max_pool2d(x, 2, 2, 1))

            def gradient(pool=pool):
                return ud.to_numpy(ud.grad(lambda x, r: ud.ops.sum(pool(x) * r))(ud.tensor(x), ud.tensor(r)))

            if traced_first_in_training:
                np.testing.assert_array_equal(gradient(), tensor.grad.numpy())
            path = tmp_path / f"pooled{traced_first_in_training}"
            before, count_before = len(traces), pool.trace_count or 0  # None before a first call
            ud.export(Pooled(pool), path, format="saved_model", input_shape=(1, 3, 4))
            # one trace for the export however often it calls the model (it retraced on each call), left out of
            # the function's trace_count
            assert (len(traces) - before, pool.trace_count or 0) == (1, count_before), f"{traced_first_in_training}"
            with open(path / "saved_model.pb", "rb") as file:
                assert b"UnidlMaxPool" not in file.read()
            np.testing.assert_array_equal(gradient(), tensor.grad.numpy(), err_msg=f"{traced_first_in_training}")


def test_inline_functions_of_a_forward_are_each_exported_as_their_own_graph(backend, tmp_path):
    """A forward that makes a ``ud.function`` inline and drops it after its call, six of them in a row: each
    function freed let the next one be made at its address, and the SavedModel export filed the graphs it traced
    for the functions by ``id``, so the next one got the first one's graph and the exported program silently
    computed something else than the forward (50.86 for 111110.87). The export's program gives the forward's
    output, on every backend in the first format it writes."""

    class Inline(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = ud.nn.Linear(3, 3)

        def forward(self, x):
            h = self.linear(x)
            for k in range(6):
                h = ud.function(lambda t, c=10.0 ** k: t + c)(h)  # a new function each time, dropped after its call
            return h

    model = Inline().eval()
    x = np.random.RandomState(0).rand(2, 3).astype(np.float32)
    expected = ud.to_numpy(model(ud.tensor(x)))
    format = model._backend.export_formats()[0]
    path = tmp_path / f"inline{SUFFIXES[format]}"
    ud.export(model, path, format=format, input_shape=(3,))
    namespace = {"np": np}
    exec(LOADERS[format], namespace)
    for output in namespace["load"](str(path))(x):
        np.testing.assert_allclose(output, expected, rtol=1e-6, err_msg=format)


@pytest.mark.skipif("torch" not in backends_under_test(), reason="the torch backend is not under test")
def test_a_torch_model_with_an_embedding_exports_and_keeps_its_index_check_eagerly(tmp_path):
    """``torch.export`` of a model whose forward looks up an Embedding: unidl's index check reads the indices'
    values, an error while torch.export traces (``GuardOnDataDependentSymNode``), so every such model failed to
    export; the check is left out of the exported program (which runs without unidl) and kept in the model."""
    torch = pytest.importorskip("torch")

    class Bag(ud.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = ud.nn.Embedding(10, 3)

        def forward(self, x):
            return ud.ops.sum(self.embedding(ud.ops.cast(x, "int64")), 1)

    with ud.use_backend("torch"):
        model = Bag().eval()
        ud.export(model, tmp_path / "bag.pt2", format="torch_export", input_shape=(4,))
        x = np.array([[1, 2, 3, 9], [0, 0, 5, 5], [7, 7, 7, 7]], np.float32)
        output = torch.export.load(str(tmp_path / "bag.pt2")).module()(torch.tensor(x)).numpy()
        np.testing.assert_array_equal(output, ud.to_numpy(model(ud.tensor(x))))
        with pytest.raises(ud.IndexOutOfRangeError, match=r"Embedding indices must lie in \[0, 10\)"):
            model(ud.tensor(np.array([[11.0, 0, 0, 0]], np.float32)))
