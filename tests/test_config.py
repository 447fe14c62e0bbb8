"""Backend and device selection: names, aliases, scoping, environment variables and their errors."""

import threading

import numpy as np
import pytest

import unidl as ud
from unidl import backends, config
from tests.helpers import run_python


@pytest.fixture
def fresh_defaults(monkeypatch):
    """Forget the process defaults so that environment variables are read again."""
    monkeypatch.setattr(config, "_default_backend", None)
    monkeypatch.setattr(config, "_default_device", None)
    monkeypatch.setattr(config, "_resolved_devices", {})


def test_all_four_backends_installed_here():
    assert ud.available_backends() == ["torch", "tensorflow", "keras", "jax"]


@pytest.mark.parametrize("alias, canonical", [("torch", "torch"), ("pytorch", "torch"), ("PyTorch", "torch"),
                                              ("tf", "tensorflow"), ("tensorflow", "tensorflow"),
                                              ("keras", "keras")])
def test_aliases(alias, canonical):
    with ud.use_backend(alias):
        assert ud.get_backend() == canonical


def test_unknown_backend_lists_valid_and_installed():
    with pytest.raises(ud.UnknownBackendError) as info:
        ud.set_backend("mxnet")
    message = str(info.value)
    for name in ("'mxnet'", "'torch'", "'tensorflow'", "'keras'", "'pytorch'", "'tf'", "installed here"):
        assert name in message


@pytest.mark.parametrize("name", ["torch", "tensorflow", "keras", "jax"])
def test_missing_framework_names_the_extra(monkeypatch, name):
    """The backend's SPEC made to need a module that is not installed (its own install hint kept): loading it names
    the extra that installs it (keras's with its host's, ``unidl[keras,tensorflow]``)."""
    import dataclasses

    spec = backends.specs()[name]
    monkeypatch.setitem(backends._specs, name, dataclasses.replace(
        spec, required_modules=lambda: ("a_framework_that_is_not_installed",)))
    monkeypatch.setattr(backends, "_loaded", {})
    with pytest.raises(ud.BackendNotInstalledError, match=rf"pip install 'unidl\[{name}[],]"):
        ud.set_backend(name)
    assert name not in ud.available_backends()


def test_env_backend_read_at_first_use(monkeypatch, fresh_defaults):
    monkeypatch.setenv("UNIDL_BACKEND", "tf")
    assert ud.get_backend() == "tensorflow"


def test_env_backend_unknown_is_reported(monkeypatch, fresh_defaults):
    monkeypatch.setenv("UNIDL_BACKEND", "caffe")
    with pytest.raises(ud.UnknownBackendError, match="UNIDL_BACKEND='caffe'.*valid backends"):
        ud.get_backend()


def test_default_is_first_installed(monkeypatch, fresh_defaults):
    monkeypatch.delenv("UNIDL_BACKEND", raising=False)
    assert ud.get_backend() == "torch"


def test_use_backend_is_thread_local():
    seen = {}
    barrier = threading.Barrier(2)

    def worker(name):
        with ud.use_backend(name):
            barrier.wait()
            seen[name] = ud.get_backend()
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("torch", "tensorflow")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"torch": "torch", "tensorflow": "tensorflow"}


def test_use_backend_restores_previous():
    with ud.use_backend("torch"):
        with ud.use_backend("keras"):
            assert ud.get_backend() == "keras"
        assert ud.get_backend() == "torch"


@pytest.mark.parametrize("name", ["torch", "tensorflow", "keras"])
def test_cpu_and_auto_devices(name):
    with ud.use_backend(name):
        with ud.use_device("cpu"):
            assert ud.get_device() == "cpu"
        with ud.use_device("auto"):
            assert ud.get_device() in ["cpu"] + [f"cuda:{i}" for i in range(8)]


@pytest.mark.parametrize("name", ["torch", "tensorflow", "keras"])
def test_unseen_gpu_is_an_error_naming_visible_devices(name):
    backend = backends.load(name)
    if len(backend.devices()) > 1:
        pytest.skip("this machine has a GPU; the error case needs a device index it lacks")
    with ud.use_backend(name):
        for device in ("cuda", "gpu:0", "cuda:3"):
            with pytest.raises(ud.DeviceUnavailableError, match=r"it sees: cpu"):
                with ud.use_device(device):
                    pass


class _TwoGPUs:
    """A backend object as ``config.resolve_device`` reads one: a name and the devices it sees."""

    name = "two-gpus"

    @staticmethod
    def devices():
        return ["cpu", "cuda:0", "cuda:1"]


def test_a_data_parallel_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    """In a job of several processes (``config._set_local_gpu``, set by the torch engine from the local rank)
    'auto', 'cuda' and 'gpu' name the rank's own GPU, where every rank took cuda:0 (NCCL refuses two ranks on one
    GPU); an index or 'cpu' is kept; a local rank past the GPUs takes them in turn (a process given one GPU of its
    own by CUDA_VISIBLE_DEVICES sees it as cuda:0, whatever its local rank: TensorFlow's engine's rule); 0 after."""
    monkeypatch.setattr(config, "_resolved_devices", {})
    try:
        config._set_local_gpu(1)
        assert [config.resolve_device(d, _TwoGPUs) for d in ("auto", "cuda", "gpu", "cuda:0", "gpu:1", "cpu")] == \
            ["cuda:1", "cuda:1", "cuda:1", "cuda:0", "cuda:1", "cpu"]
        config._set_local_gpu(2)
        assert [config.resolve_device(d, _TwoGPUs) for d in ("auto", "cuda", "cpu")] == ["cuda:0", "cuda:0", "cpu"]
    finally:
        config._set_local_gpu(0)
    assert [config.resolve_device(d, _TwoGPUs) for d in ("auto", "cuda")] == ["cuda:0", "cuda:0"]


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:1", "", "gpu:-1"])
def test_malformed_device_names(device):
    with pytest.raises(ud.DeviceUnavailableError, match="valid devices are 'auto', 'cpu', 'cuda'"):
        ud.set_device(device)


def test_env_device_errors_at_first_use(monkeypatch, fresh_defaults):
    monkeypatch.setenv("UNIDL_DEVICE", "quantum")
    with ud.use_backend("torch"):
        with pytest.raises(ud.DeviceUnavailableError, match="UNIDL_DEVICE='quantum'"):
            ud.get_device()


def test_env_gpu_without_gpu_errors_at_first_tensor():
    result = run_python("import unidl as ud\nud.tensor([1.0])", env={"UNIDL_BACKEND": "torch", "UNIDL_DEVICE": "cuda:0"},
                        check=False)
    if "it sees: cpu, cuda" in result.stderr:
        pytest.skip("this machine has a GPU")
    assert result.returncode != 0
    assert "DeviceUnavailableError" in result.stderr and "it sees: cpu" in result.stderr


def test_set_dtype_validates():
    with pytest.raises(ValueError, match="float16.*float32, float64"):
        ud.set_dtype("float16")


def test_a_device_the_backend_does_not_see_leaves_the_default_as_it_was(monkeypatch):
    """``set_device`` of an unseen GPU raised but kept it as the default, so every later op raised too."""
    monkeypatch.setattr(config, "_default_device", None)
    with ud.use_backend("torch"):
        ud.set_device("cpu")
        with pytest.raises(ud.DeviceUnavailableError, match="'cuda:99' is not visible.*it sees: cpu"):
            ud.set_device("cuda:99")
        assert ud.get_device() == "cpu"
        assert ud.to_numpy(ud.tensor([1.0]) + 1.0).tolist() == [2.0]


def test_use_dtype_is_thread_local_and_restored_whatever_order_blocks_end(monkeypatch):
    """Two threads' ``use_dtype`` blocks ending in the other order left the process in float64 (the dtype was
    process-wide), and a thread building a model meanwhile got the other thread's dtype; a DataLoader's worker
    threads take the caller's, as they take its backend."""
    monkeypatch.setattr(config, "_default_dtype", "float32")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with ud.use_dtype("float64"):
            a_in.set()
            b_in.wait()
            seen["a"] = ud.get_dtype()
        a_out.set()

    def b():
        a_in.wait()
        seen["b_outside"] = ud.get_dtype()
        with ud.use_dtype("float32"):
            b_in.set()
            a_out.wait()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "float64", "b_outside": "float32"}
    assert ud.get_dtype() == "float32"

    class Dtypes:
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return [float(ud.get_dtype() == "float64")]

    with ud.use_backend("torch"), ud.use_dtype("float64"):
        loader = ud.data.DataLoader(Dtypes(), batch_size=1, num_workers=2)
        batches = [ud.to_numpy(batch[0]).tolist() for batch in loader]
    assert batches == [[1.0], [1.0]]


def test_set_dtype_takes_each_frameworks_dtype_and_points_half_precision_to_mixed_precision(backend, monkeypatch):
    monkeypatch.setattr(config, "_default_dtype", "float32")
    ud.set_dtype(ud.tensor([1.0], dtype="float64").dtype)  # torch.float64, tf.float64, a JAX dtype
    assert ud.get_dtype() == "float64"
    with ud.use_dtype(ud.tensor([1.0], dtype="float32").dtype):
        assert ud.get_dtype() == "float32"
    for half, precision in (("float16", "'16-mixed'"), ("bfloat16", "'bf16-mixed'")):
        with pytest.raises(ValueError, match=f"valid dtypes are float32, float64.*precision={precision}"):
            ud.set_dtype(ud.tensor([1.0], dtype=half).dtype)
    assert ud.get_dtype() == "float64"


class _Masked(ud.nn.Module):
    """A user's module with a keyword tensor argument."""

    def forward(self, x, mask=None):
        return x


def test_a_layer_given_another_frameworks_tensor_is_one_clear_error(backend):
    """torch's and JAX's own TypeErrors, TensorFlow's AttributeError on a ``torch.Size`` before; a torch tensor
    once seen by a torch model passed unchecked into the models of every other backend."""
    with ud.use_backend("torch"):
        ud.nn.ReLU()(ud.tensor([1.0]))  # a torch tensor seen first by a torch layer
    others = {}
    for name in set(ud.available_backends()) & {"torch", "tensorflow", "jax"}:  # (keras's are its host's tensors)
        with ud.use_backend(name):
            others[name] = ud.tensor(np.ones((2, 3), np.float32))
    layer = ud.nn.Linear(3, 2)
    own = backends.specs()[backend].required_modules()
    for framework, value in others.items():
        if framework in own:
            assert tuple(layer(value).shape) == (2, 2)
            continue
        with pytest.raises(ud.BackendMismatchError, match=rf"Linear\(in_features=3.*runs on backend '{backend}' but "
                                                          rf"argument 0 is a {framework} .*ud.tensor\(x\).*"
                                                          rf"ud.use_backend\('{framework}'\)"):
            layer(value)
        with pytest.raises(ud.BackendMismatchError, match=rf"argument mask= is a {framework} "):
            _Masked()(np.ones((2, 3), np.float32), mask=value)  # (a keyword's tensor too: it was taken silently)
