"""``import unidl`` must not import any framework."""

from tests.helpers import last_json_line, run_python


def test_import_unidl_imports_no_framework():
    result = run_python(
        "import json, sys, unidl, unidl.nn, unidl.optim, unidl.models\n"
        "assert callable(unidl.testing.compare_backends)  # reachable without importing unidl.testing\n"
        "modules = ('torch', 'tensorflow', 'keras', 'jax', 'safetensors')\n"
        "print(json.dumps(sorted(m for m in modules if m in sys.modules)))")
    assert last_json_line(result.stdout) == []  # safetensors, a dependency, is imported by the first file read


def test_framework_is_imported_on_first_use():
    result = run_python(
        "import json, sys, unidl as ud\n"
        "ud.set_backend('torch')\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules)))")
    assert last_json_line(result.stdout) == ["torch"]
