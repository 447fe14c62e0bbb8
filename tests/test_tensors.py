"""``ud.tensor`` and ``ud.to_numpy`` copy on every backend: neither side sees later changes of the other; both take
every dtype ``ud.ops.cast`` takes."""

import numpy as np
import pytest

import unidl as ud


def test_tensor_does_not_alias_the_array(backend):
    for array in (np.zeros((2, 3), np.float32), np.arange(6).reshape(2, 3)):
        t = ud.tensor(array)
        array[0, 0] = 7
        assert ud.to_numpy(t)[0, 0] == 0


def test_to_numpy_does_not_alias_the_tensor(backend):
    t = ud.tensor(np.zeros(3, np.float32))
    a = ud.to_numpy(t)
    a[0] = 5
    assert ud.to_numpy(t)[0] == 0


def test_scalars_keep_their_shape(backend):
    assert tuple(ud.tensor(3.0).shape) == () and tuple(ud.tensor(np.float32(2.5)).shape) == ()
    assert float(ud.to_numpy(ud.tensor(3.0))) == 3.0


def test_tensor_takes_every_dtype_cast_takes(backend):
    """``ud.tensor(values, dtype)`` for each dtype ``ud.ops.cast`` takes: that dtype, its values rounded once from
    float64 (NumPy's ``astype``; bfloat16 by ml_dtypes), and back through ``to_numpy`` in that dtype, on every
    backend (torch and TensorFlow raised a ``KeyError`` for all but float32 and float64, torch's ``to_numpy`` a
    ``TypeError`` for bfloat16); an unknown dtype is a ``TypeError`` naming those there are."""
    import ml_dtypes

    floats, integers = np.array([0.1, -2.7, 3e4, 3.0]), np.array([3, 1, 0, 7])
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        got = ud.to_numpy(ud.tensor(floats, dtype))
        want = floats.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        assert got.dtype == want.dtype, (dtype, got.dtype)
        np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))
    for dtype in ("uint8", "int8", "int16", "int32", "int64", "bool", np.dtype("float32"), np.float64):
        got = ud.to_numpy(ud.tensor(integers, dtype))
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, integers.astype(dtype)), (dtype, got)
    with pytest.raises(TypeError, match="unknown dtype 'complex64'; use one of float16"):
        ud.tensor(floats, "complex64")
    # values an integer dtype cannot hold: torch.tensor's error, not a wrap-around ([255, 44] on every backend)
    for values, dtype in [([-1, 300], "uint8"), ([2.0 ** 40], "int32"), ([float("nan")], "int64")]:
        with pytest.raises(ValueError, match=f"do not fit {dtype}, whose range is"):
            ud.tensor(values, dtype)
    # integers beyond int64 without a dtype (uint64 values, a Python int of 2 ** 63): the same error, not a wrap to
    # negative numbers (torch's backend raised a TypeError); uint64 values within int64 are kept
    for values in (np.array([5, 2 ** 63 + 5], np.uint64), [2 ** 63]):
        with pytest.raises(ValueError, match="do not fit int64, whose range is"):
            ud.tensor(values)
    assert ud.to_numpy(ud.tensor(np.array([2 ** 63 - 1], np.uint64))).tolist() == [2 ** 63 - 1]


def test_a_torch_batch_on_another_device_than_the_one_in_force_is_moved_there(monkeypatch):
    """A step's native input on another device (a ``torch.utils.data.DataLoader``'s CPU batch for a model on a GPU)
    goes to the device in force, as an array does (it reached the model as it was: "Expected all tensors to be on
    the same device"); one already there passes through untouched. PyTorch's "meta" device stands in for the GPU
    this machine lacks."""
    torch = pytest.importorskip("torch")
    from unidl import backends

    backend = backends.load("torch")
    monkeypatch.setattr(type(backend), "current_device", lambda self: torch.device("meta"))
    moved = backend.to_input(torch.zeros(2, 3))
    assert moved.device.type == "meta" and moved.shape == (2, 3)
    labels = torch.zeros(2, dtype=torch.int64)
    assert backend.to_input(labels).device.type == "meta"
    there = torch.zeros(2, 3, device="meta")
    assert backend.to_input(there) is there


def test_torch_gradients_go_to_their_parameters_device_not_the_one_in_force(monkeypatch):
    """``optimizer.apply(grads)`` for a model on another device than the one in force (built under
    ``ud.use_device``): each gradient goes to its parameter's device, as torch's ``.grad`` must. PyTorch's "meta"
    device stands in for the device in force."""
    torch = pytest.importorskip("torch")
    from unidl import backends

    backend = backends.load("torch")
    with ud.use_backend("torch"):
        model = ud.nn.Linear(3, 2)  # on the CPU
        optimizer = ud.optim.SGD(model.parameters(), lr=0.5)
        before = ud.to_numpy(model.weight).copy()
        monkeypatch.setattr(type(backend), "current_device", lambda self: torch.device("meta"))
        bias_gradient = np.ones(2, np.float32)
        optimizer.apply([torch.ones(2, 3), bias_gradient])
        np.testing.assert_allclose(ud.to_numpy(model.weight), before - 0.5, rtol=1e-6)
        # an array's gradient is copied: the guard's finite check writes into every .grad (one that shared a
        # read-only memory map crashed the process)
        assert not np.shares_memory(bias_gradient, model.bias.grad.numpy())


def test_torch_array_gradients_keep_their_parameters_float64():
    """A float64 array given as the gradient of a float64 parameter while float32 is the default dtype (a model
    built under ``ud.use_dtype("float64")``): applied in float64, not rounded through float32 on the way."""
    pytest.importorskip("torch")
    with ud.use_backend("torch"):
        with ud.use_dtype("float64"):
            model = ud.nn.Linear(2, 1, bias=False)
        before = ud.to_numpy(model.weight).copy()
        gradient = np.full((1, 2), 1 + 1e-12)
        ud.optim.SGD(model.parameters(), lr=1.0).apply([gradient])
        np.testing.assert_array_equal(ud.to_numpy(model.weight), before - gradient)


def test_to_numpy_of_a_torch_tensor_subclass_and_of_a_type_without_a_module():
    """The converter of a framework's tensors without its backend (``backends.to_numpy_unloaded``) takes a subclass
    defined outside the framework (found through the type's classes) and returns a copy; a class whose
    ``__module__`` is not a string falls through to ``np.asarray``."""
    torch = pytest.importorskip("torch")
    from unidl import backends

    class Mine(torch.Tensor):
        pass

    tensor = torch.zeros(3, requires_grad=True).as_subclass(Mine)
    copied = backends.to_numpy_unloaded(tensor)
    with torch.no_grad():
        tensor.add_(1)
    np.testing.assert_array_equal(copied, np.zeros(3, np.float32))
    Odd = type("Odd", (), {"__array__": lambda self, dtype=None, copy=None: np.ones(2)})
    Odd.__module__ = None
    np.testing.assert_array_equal(ud.to_numpy(Odd()), np.ones(2))


def test_tensor_of_a_reversed_array_of_one_element(backend):
    """A reversed axis of one element (a negative stride NumPy counts as contiguous) makes a tensor on every backend:
    torch.from_numpy refused it (a ConvTranspose2d with a kernel of one along an axis flips its taps so)."""
    for array in (np.arange(1.0)[::-1], np.ones((1, 3))[::-1], np.arange(6.0).reshape(2, 3)[::-1, ::-1]):
        np.testing.assert_array_equal(ud.to_numpy(ud.tensor(array)), array.astype(np.float32))
