"""A pytest plugin that runs a test once per installed backend.

Enable it with ``pytest_plugins = ["unidl.testing.pytest_plugin"]`` in a ``conftest.py``, then
ask for the ``backend`` fixture: the test runs under ``ud.use_backend(name)`` for every installed
backend (or those listed in ``UNIDL_TEST_BACKENDS``, comma-separated), with seed 0.
"""

from __future__ import annotations

import os

import pytest

from unidl import config
from unidl.random import manual_seed


def backends_under_test() -> list[str]:
    """Installed backends, narrowed by ``UNIDL_TEST_BACKENDS`` if set."""
    installed = config.available_backends()
    wanted = os.environ.get("UNIDL_TEST_BACKENDS", "").strip()
    if not wanted:
        return installed
    from unidl.backends import canonical_name

    return [canonical_name(name) for name in wanted.split(",") if name.strip()]


@pytest.fixture(params=backends_under_test())
def backend(request):
    """The name of the backend this run of the test uses; the test body runs under it."""
    with config.use_backend(request.param):
        manual_seed(0)
        yield request.param


parametrize_backends = pytest.mark.parametrize("backend_name", backends_under_test())
