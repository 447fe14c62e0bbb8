"""``Module.to`` and its shorthands as ``torch.nn.Module``'s are called: the module itself where it already is on
that device in that dtype, a clear error elsewhere (unidl places and types variables when it builds them)."""

import numpy as np
import pytest
import torch

import unidl as ud


def test_to_where_the_model_already_is_returns_it_as_torchs(backend):
    model = ud.nn.Sequential(ud.nn.Linear(2, 2), ud.nn.BatchNorm1d(2))
    reference = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    for module, tensor in ((model, model[0].weight), (reference, reference[0].weight)):
        calls = (lambda: module.to("cpu"), lambda: module.to(torch.device("cpu")), module.cpu, module.float,
                 lambda: module.to(dtype=torch.float32), lambda: module.to("cpu", torch.float32),
                 lambda: module.to(tensor), lambda: module.to(device="cpu", non_blocking=True),
                 lambda: module.to(memory_format=torch.preserve_format))
        assert all(call() is module for call in calls)
    assert model.to(np.float32) is model and model.to("float32") is model
    assert model.to("cpu:0") is model and model.to(torch.device("cpu", 0)) is model  # (torch's forms of the CPU)


def test_to_another_dtype_or_device_is_a_clear_error(backend):
    model = ud.nn.Sequential(ud.nn.Linear(2, 2))
    with pytest.raises(ud.ModelPlacementError, match=r"Sequential\(\)\.double\(\): asks for dtype float64, but its "
                                                     r"variables are on cpu in float32.*ud\.use_dtype\('float64'\)"):
        model.double()
    for call in (model.half, model.bfloat16, lambda: model.to(torch.float16)):
        with pytest.raises(ud.ModelPlacementError, match="precision='bf16-mixed' or '16-mixed'"):
            call()
    with pytest.raises(ud.DeviceUnavailableError, match="device 'cuda:7' is not visible to backend .* it sees: cpu"):
        model.to("cuda:7")
    with pytest.raises(ud.DeviceUnavailableError, match="invalid device 'tpu'; valid devices are"):
        model.to("tpu")
    for call in (lambda: model.to(dtype=torch.int32), lambda: model.to(torch.int64), lambda: model.to(int)):
        with pytest.raises(TypeError, match="dtype must be a floating dtype"):  # (positional: taken as a device)
            call()
    with pytest.raises(ud.ModelPlacementError, match="asks for dtype float64"):
        model.to(float)  # (Python's float: float64, as torch's)
    for device in (torch.device("cuda:7"), np.int64(7), 7):
        with pytest.raises(ud.DeviceUnavailableError, match="device 'cuda:7' is not visible"):
            model.cuda(device)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        model.to("int64")  # (a dtype's name, not a device's)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['copy'\]"):
        model.to("cpu", copy=True)
    with pytest.raises(ValueError, match="memory_format=torch.channels_last is not supported"):
        model.to(memory_format=torch.channels_last)
    with ud.use_dtype("float64"):
        built = ud.nn.Sequential(ud.nn.Linear(2, 2))
    assert built.double() is built
    with pytest.raises(ud.ModelPlacementError, match="asks for dtype float32, but its variables are on cpu in float64"):
        built.float()
