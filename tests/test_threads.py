"""``ud.set_num_threads`` / ``UNIDL_NUM_THREADS``: the framework's thread pools, and clear errors on bad counts."""

import pytest

import unidl as ud
from tests.helpers import run_python
from unidl import backends, threads
from unidl.errors import ConfigurationError


@pytest.fixture
def restored_threads():
    """Leave the process as the test found it (the pools are process-wide)."""
    torch = pytest.importorskip("torch")
    before, requested = torch.get_num_threads(), threads._requested
    yield torch
    torch.set_num_threads(before)
    threads._requested = requested


def test_set_num_threads_sizes_torchs_pool_now_and_for_backends_loaded_later(restored_threads, monkeypatch):
    torch = restored_threads
    backend = backends.load("torch")
    # only torch's pools: the other frameworks of this test process keep theirs for the rest of the suite
    monkeypatch.setattr(backends, "loaded_backends", lambda: {"torch": backend})
    ud.set_num_threads(1)
    assert torch.get_num_threads() == 1 and threads.requested() == 1
    torch.set_num_threads(2)
    threads.apply(backend)  # what loading a backend does
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "two", None, 2**31])
def test_a_bad_thread_count_is_a_clear_error(value, monkeypatch):
    """Refused before any pool or the count kept for backends loaded later changes (2**31 was torch's "Overflow when
    unpacking long", kept for every backend loaded after)."""
    monkeypatch.setattr(threads, "_requested", None)
    with pytest.raises(ValueError, match=r"set_num_threads\(n\) must be a positive integer"):
        ud.set_num_threads(value)
    assert threads._requested is None


def test_a_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setattr(threads, "_requested", None)
    monkeypatch.setenv("UNIDL_NUM_THREADS", "many")
    with pytest.raises(ConfigurationError, match="UNIDL_NUM_THREADS must be a positive integer, got 'many'"):
        threads.requested()
    monkeypatch.setenv("UNIDL_NUM_THREADS", "100000000000")  # (torch's own "Overflow when unpacking long" before)
    with pytest.raises(ConfigurationError, match=r"UNIDL_NUM_THREADS must be a positive integer up to 2\*\*31 - 1"):
        threads.requested()
    monkeypatch.setenv("UNIDL_NUM_THREADS", "3")
    assert threads.requested() == 3


@pytest.mark.skipif("jax" not in ud.available_backends(), reason="the jax backend is not installed")
def test_jaxs_one_thread_flag_leaves_flags_set_after_it_read():
    """``UNIDL_NUM_THREADS=1`` on JAX writes XLA's one-thread flag into ``XLA_FLAGS`` before JAX starts; a flag set
    after it still counts (unidl's flags held the bare ``intra_op_parallelism_threads=1``, at which XLA stopped
    reading: a 2-device flag after it gave one device). A fresh interpreter: XLA reads its flags once."""
    code = ("import os, unidl as ud\nud.set_backend('jax')\nflags = os.environ['XLA_FLAGS']\n"
            "os.environ['XLA_FLAGS'] = flags + ' --xla_force_host_platform_device_count=2'\n"
            "import jax\nprint(repr(flags), len(jax.devices('cpu')))")
    out = run_python(code, env={"UNIDL_NUM_THREADS": "1", "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}).stdout.split()
    assert out == ["'--xla_cpu_multi_thread_eigen=false'", "2"]
