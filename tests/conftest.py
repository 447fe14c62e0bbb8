import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["unidl.testing.pytest_plugin"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
