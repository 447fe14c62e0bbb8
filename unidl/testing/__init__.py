"""Tools for testing models on every backend: the parity harness, a pytest fixture, tensor comparison.

    report = ud.testing.compare_backends(MyNet, x, y, loss=ud.nn.MSELoss,
                                         optimizer=lambda p: ud.optim.SGD(p, lr=0.1), steps=20)
    print(report)
    ud.testing.assert_parity(...)        # in a test: fails with the report

In pytest, ``pytest_plugins = ["unidl.testing.pytest_plugin"]`` gives a ``backend`` fixture that
runs a test once per installed backend.
"""

from unidl.testing.compare import max_relative_difference
from unidl.testing.parity import TOLERANCES, ParityReport, Row, assert_parity, compare_backends

__all__ = ["max_relative_difference", "compare_backends", "assert_parity", "ParityReport", "Row", "TOLERANCES"]
