"""The documentation site (mkdocs.yml: the guide under docs/ and the API reference under docs/reference/,
rendered from the docstrings by mkdocstrings) builds with warnings as errors, without importing any
framework, and its API pages show every public name of the package they document."""

import importlib
import inspect
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

FRAMEWORKS = ("torch", "tensorflow", "jax", "keras")
# Built in a fresh interpreter, as `mkdocs build --strict` does, reporting which frameworks it imported.
BUILD = f"""
import sys
from mkdocs.config import load_config
from mkdocs.commands.build import build
build(load_config("mkdocs.yml", strict=True, site_dir=sys.argv[1]))
print("imported:", sorted(name for name in {FRAMEWORKS!r} if name in sys.modules))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    directory = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-c", BUILD, str(directory)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stderr[-4000:]}"
    assert "imported: []" in run.stdout, f"building the docs imported a framework: {run.stdout}"
    return directory


def reference_pages() -> dict:
    """{module name: its page's source file} for each docs/reference/ page (its first ``::: module``)."""
    pages = {}
    for path in sorted((ROOT / "docs" / "reference").glob("*.md")):
        pages[re.search(r"^::: (\S+)$", path.read_text(), flags=re.M).group(1)] = path
    return pages


def public_names(module) -> list:
    """What a user imports from ``module``: its ``__all__`` less submodules, else (``unidl.ops``) its functions."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name, value in vars(module).items() if not name.startswith("_")
                 and inspect.isfunction(value) and value.__module__ == module.__name__]
    return sorted(name for name in names if not inspect.ismodule(getattr(module, name)))


def test_every_public_package_has_a_reference_page():
    pages = reference_pages()
    for name in ("unidl", "unidl.nn", "unidl.ops", "unidl.optim", "unidl.data", "unidl.callbacks", "unidl.metrics",
                 "unidl.distributed", "unidl.testing", "unidl.models", "unidl.datasets"):
        assert name in pages, f"docs/reference/ has no page for {name}"
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"reference/{path.name}" in nav for path in pages.values())


def test_every_public_name_has_a_docstring():
    undocumented = [f"{module_name}.{name}" for module_name in reference_pages()
                    for name in public_names(importlib.import_module(module_name))
                    if not (inspect.getdoc(getattr(importlib.import_module(module_name), name)) or "").strip()]
    assert undocumented == []


def test_no_docstring_text_is_taken_for_html():
    # Markdown passes <word> through as an HTML tag, which the page then hides: 'epoch_<name>' would show as
    # 'epoch_'; in a code span (``epoch_<name>``) it shows as written
    import griffe

    def tags(obj):
        for member in obj.members.values():
            if member.is_alias:
                continue
            text = re.sub(r"``.*?``|`[^`]*`", "", member.docstring.value if member.docstring else "", flags=re.S)
            yield from (f"{member.path}: {tag}" for tag in re.findall(r"<[A-Za-z/][^>\n]*>", text))
            if member.is_module or member.is_class:
                yield from tags(member)

    assert list(tags(griffe.load("unidl", search_paths=[str(ROOT)], resolve_aliases=False))) == []


def test_site_builds_strict_and_shows_every_public_name(site):
    guide = (site / "guide" / "index.html").read_text()
    assert "unidl user guide" in guide and 'href="../reference/unidl/"' in guide
    assert (site / "index.html").is_file()
    missing = []
    for module_name, path in reference_pages().items():
        html = (site / "reference" / path.stem / "index.html").read_text()
        for name in public_names(importlib.import_module(module_name)):
            # an anchor per object: unidl.nn.Linear, or by full path where a module shares the name (unidl.fit.fit)
            if not re.search(rf'id="{re.escape(module_name)}(\.\w+)*\.{re.escape(name)}"', html):
                missing.append(f"{module_name}.{name}")
    assert missing == [], f"not in the API reference: {missing}"
    nn = (site / "reference" / "nn" / "index.html").read_text()
    # a docstring's Args section rendered as a parameter table, and a signature with its defaults
    assert "in_channels" in nn and "Parameters:" in nn and "padding_mode" in nn
    assert "TensorBoard" in (site / "reference" / "callbacks" / "index.html").read_text()


def test_every_test_the_docs_name_exists():
    # guarantees.md maps each claim to its test: `tests/x.py::test_a`, and `::test_b` after it for another test of
    # that file; a test renamed, moved or named under the wrong file leaves a claim pointing at nothing
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        path = None
        for span in re.findall(r"`([^`\n]+)`", doc.read_text()):
            named = re.fullmatch(r"(tests/[\w/]+\.py)?(?:::(\w+))?(?:\[[^\]]*\])?", span)
            if not named or not any(named.groups()) or (named.group(1) is None and path is None):
                continue
            path = ROOT / named.group(1) if named.group(1) else path
            if not path.is_file():
                missing.append(f"{doc.name}: {span}")
            elif named.group(2) and not re.search(rf"^def {named.group(2)}\(", path.read_text(), flags=re.M):
                missing.append(f"{doc.name}: {path.relative_to(ROOT)}::{named.group(2)}")
    assert missing == []
