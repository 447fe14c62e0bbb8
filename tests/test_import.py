"""``import unidl`` must not import any framework."""

import functools
import json

from tests.helpers import run_python


@functools.cache
def _fresh_interpreter() -> list:
    """The JSON lines of one fresh interpreter (a start costs ~0.4 s): the frameworks in ``sys.modules`` after
    ``import unidl`` and its subpackages, then after ``ud.set_backend('torch')``."""
    result = run_python(
        "import json, sys, unidl as ud, unidl.nn, unidl.optim, unidl.models\n"
        "assert callable(ud.testing.compare_backends)  # reachable without importing unidl.testing\n"
        "modules = ('torch', 'tensorflow', 'keras', 'jax', 'safetensors')\n"
        "print(json.dumps(sorted(m for m in modules if m in sys.modules)))\n"
        "ud.set_backend('torch')\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules)))")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]


def test_import_unidl_imports_no_framework():
    assert _fresh_interpreter()[0] == []  # safetensors, a dependency, is imported by the first file read


def test_framework_is_imported_on_first_use():
    assert _fresh_interpreter()[1] == ["torch"]
