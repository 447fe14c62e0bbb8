"""docs/api.md is the API reference generated from the docstrings (scripts/build-api-docs.py): every public
name has a docstring, and the committed file is what the script writes from the current source."""

import importlib.util

from tests.helpers import ROOT


def build_api_docs():
    spec = importlib.util.spec_from_file_location("build_api_docs", ROOT / "scripts" / "build-api-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_docstring():
    script = build_api_docs()
    undocumented = []
    for module_name, _ in script.SECTIONS:
        module = importlib.import_module(module_name)
        undocumented += [f"{module_name}.{name}" for name in script.public_names(module)
                         if not script.docstring(getattr(module, name)).strip()]
    assert undocumented == []


def test_committed_api_reference_is_current():
    text = build_api_docs().render()
    assert "### `unidl.fit`" in text and "### `unidl.callbacks.TensorBoard`" in text
    assert (ROOT / "docs" / "api.md").read_text() == text, \
        "docs/api.md is out of date: run python scripts/build-api-docs.py and commit the result"
