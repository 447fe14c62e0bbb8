"""Device placement made visible: ``ud.log_device_placement``, ``UNIDL_LOG_DEVICE`` and ``ud.info()``."""

import logging

import numpy as np
import pytest

import unidl as ud
from unidl import devices


@pytest.fixture
def device_log(caplog):
    previous = devices._state["enabled"]
    ud.log_device_placement(True)
    caplog.set_level(logging.INFO, logger="unidl")
    yield caplog
    devices._state["enabled"] = previous


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "unidl"]


def test_parameters_report_layer_name_and_device(backend, device_log):
    ud.nn.Linear(3, 2)
    ud.nn.BatchNorm1d(2)
    messages = _messages(device_log)
    assert any("parameter Linear.weight (2, 3) float32 on cpu" in m and backend in m for m in messages)
    assert any("parameter Linear.bias (2,)" in m for m in messages)
    assert any("buffer BatchNorm1d.running_mean" in m and "on cpu" in m for m in messages)


def test_compiled_functions_report_where_they_run(backend, device_log, rng):
    model = ud.nn.Linear(3, 1)

    @ud.function
    def forward(x):
        return model(x)

    forward(rng.standard_normal((4, 3)).astype(np.float32))
    forward(rng.standard_normal((4, 3)).astype(np.float32))
    messages = _messages(device_log)
    first_calls = [m for m in messages if "ud.function 'forward' first call" in m]
    assert len(first_calls) == 1 and "runs on cpu" in first_calls[0] and backend in first_calls[0]
    if backend == "tensorflow":
        assert any("forward traced for (rank, dtype) [(2, 'float32')]" in m and "CPU:0" in m for m in messages)

    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=0.1))
    step(np.ones((2, 3), np.float32), np.ones((2, 1), np.float32))
    assert any("train_step of Linear first call: runs on cpu" in m for m in _messages(device_log))


def test_nothing_is_reported_when_off(backend, caplog):
    previous = devices._state["enabled"]
    ud.log_device_placement(False)
    try:
        caplog.set_level(logging.INFO, logger="unidl")
        ud.nn.Linear(3, 2)
        assert not _messages(caplog)
    finally:
        devices._state["enabled"] = previous


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("0", False), ("", False)])
def test_environment_variable_turns_reports_on(monkeypatch, value, on):
    previous = devices._state["enabled"]
    monkeypatch.setenv("UNIDL_LOG_DEVICE", value)
    devices._state["enabled"] = None  # read the environment again
    try:
        assert devices.logging_device_placement() is on
    finally:
        devices._state["enabled"] = previous


def test_info_names_backend_device_dtype_versions_and_devices(backend):
    info = ud.info()
    assert info["backend"] == backend
    assert info["device"] == ud.get_device() == "cpu" or info["device"].startswith("cuda:")
    assert info["dtype"] == "float32"
    assert "cpu" in info["devices"]
    assert {"unidl", "python", "numpy"} <= set(info["versions"])
    assert any(name.startswith(backend) for name in info["versions"])
    assert backend in info["available_backends"]
    text = str(info)
    assert f"backend:   {backend}" in text and "device:" in text and "versions:" in text


def test_environment_variable_prints_to_stderr_without_logging_setup():
    from tests.helpers import run_python

    result = run_python("import unidl as ud; ud.nn.Linear(3, 2); print(ud.info())",
                        env={"UNIDL_BACKEND": "torch", "UNIDL_LOG_DEVICE": "1"})
    assert "unidl: parameter Linear.weight (2, 3) float32 on cpu (torch)" in result.stderr
    assert "backend:   torch" in result.stdout and "device log: on" in result.stdout
