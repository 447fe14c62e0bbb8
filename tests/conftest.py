import os
import signal
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# JAX's persistent compilation cache, shared by the workers and the subprocesses of one run (set before JAX is
# imported): many tests compile the same step (the digits CNN, the two-layer net on the same shapes), and XLA's
# CPU compiler takes seconds for each. A cache entry is the executable XLA built for the same program, options
# and JAX version, so results are those of a compile; a quarter of the JAX tests' time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"unidl-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

pytest_plugins = ["unidl.testing.pytest_plugin"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_configure(config):
    config.addinivalue_line("markers", "heavy: a test file of tens of seconds; such files run first (see below)")
    config.addinivalue_line("markers", "keras_framework(name): a test of Keras on that framework alone (its own "
                            "jitted steps), collected where KERAS_BACKEND is that framework (see below)")
    config.addinivalue_line("markers", "every_keras_framework: a test that runs the keras backend with no parameter "
                            "naming it (a loop over the backends): UNIDL_TEST_KERAS_ONLY keeps it (see below)")
    # Ctrl-C raises KeyboardInterrupt in every test process, as at a terminal, also where the suite was started in
    # the background of a shell without job control: its children inherit SIGINT ignored (Python then installs no
    # handler), and the tests that send a real SIGINT to this process or to a script it starts (a handler is reset
    # on exec, an ignored signal is not) would see it dropped
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _runs_on_the_keras_backend(item) -> bool:
    """Whether one of the test's parameters is the keras backend (the ``backend`` fixture's, a ``backend_name``'s or
    a pair's first), read from its id: ``test_x[keras-float32]``, ``test_y[keras-eager]``; or the test is marked
    ``every_keras_framework`` (it runs the keras backend among others without such a parameter)."""
    if item.get_closest_marker("every_keras_framework") is not None:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "keras" in callspec.id.split("-")


def _keras_framework() -> str | None:
    """The framework Keras runs on in this interpreter (``KERAS_BACKEND``, read once when Keras is imported); None
    without Keras."""
    try:
        import keras
    except ImportError:
        return None
    return keras.backend.backend()


def pytest_collection_modifyitems(config, items):
    """Test files marked ``heavy`` (``pytestmark = pytest.mark.heavy``) go first, the others keep their order.
    scripts/run-tests.sh hands files to its workers in this order (``--dist loadfile --no-loadscope-reorder``),
    so that the files left at the end, which one worker may run while the other has nothing left, are short;
    xdist's own order (most tests first) would leave the heavy files, which hold few tests each, for the end.

    ``UNIDL_TEST_KERAS_ONLY=1`` keeps only the tests run on the keras backend: scripts/run-tests.sh runs them again
    under ``KERAS_BACKEND=jax`` and ``torch`` (Keras reads it once, at import, so a framework is a process of its
    own), where the other tests would repeat the main run's. An environment variable rather than ``-m``, so that
    the caller's own ``-k``/``-m`` still apply. A test marked ``keras_framework(name)`` is collected only where Keras
    runs on ``name``."""
    elsewhere = [item for item in items if (marker := item.get_closest_marker("keras_framework")) is not None
                 and marker.args[0] != _keras_framework()]
    if elsewhere:  # (run by scripts/run-tests.sh's run on that framework)
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]
    if os.environ.get("UNIDL_TEST_KERAS_ONLY", "") not in ("", "0"):
        deselected = [item for item in items if not _runs_on_the_keras_backend(item)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if _runs_on_the_keras_backend(item)]
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
