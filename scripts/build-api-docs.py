"""Write docs/api.md, the API reference, from the docstrings of unidl's public names.

    python scripts/build-api-docs.py           # rewrite docs/api.md
    python scripts/build-api-docs.py --check   # exit 1 if docs/api.md is not what this script writes

Public names are each package's ``__all__`` (the functional ops: every function ``unidl.ops`` declares).
For each: its signature and docstring; for a class, also its public methods defined in unidl. No framework
is imported, and the output depends only on the source, so tests/test_api_docs.py can check it is current.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"
# (module, heading); the top-level package lists its functions and classes, not its subpackages
SECTIONS = [
    ("unidl", "unidl: backends, devices, training, saving"),
    ("unidl.nn", "unidl.nn: layers and losses"),
    ("unidl.ops", "unidl.ops: functional ops"),
    ("unidl.optim", "unidl.optim: optimizers"),
    ("unidl.optim.lr_scheduler", "unidl.optim.lr_scheduler: learning-rate schedules"),
    ("unidl.data", "unidl.data: datasets and loaders"),
    ("unidl.callbacks", "unidl.callbacks: callbacks for fit"),
    ("unidl.metrics", "unidl.metrics: metrics"),
    ("unidl.models", "unidl.models: ready-made models"),
    ("unidl.datasets", "unidl.datasets: small datasets"),
    ("unidl.distributed", "unidl.distributed: data-parallel training"),
    ("unidl.testing", "unidl.testing: the parity harness"),
]


def public_names(module) -> list[str]:
    """The names a user imports from ``module``: its ``__all__`` without modules, else its own functions."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name, value in vars(module).items() if not name.startswith("_")
                 and inspect.isfunction(value) and value.__module__ == module.__name__
                 and name not in ("op", "declare")]
    return sorted(name for name in names if not inspect.ismodule(getattr(module, name, None)))


class _Written(str):
    """An annotation as the source writes it (``from __future__ import annotations`` keeps them as text)."""

    def __repr__(self):
        return str(self)


def signature(value) -> str:
    try:
        found = inspect.signature(value)
    except (TypeError, ValueError):
        return "(...)"
    written = lambda annotation: _Written(annotation) if isinstance(annotation, str) else annotation
    found = found.replace(parameters=[p.replace(annotation=written(p.annotation)) for p in found.parameters.values()],
                          return_annotation=written(found.return_annotation))
    text = str(found)
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # object defaults: no addresses, so the output is stable


def docstring(value) -> str:
    return inspect.cleandoc(value.__doc__) if value.__doc__ else ""


def own_methods(cls) -> list[tuple[str, object]]:
    """Public methods and properties that ``cls`` or a unidl base defines (not ``object``'s or a framework's)."""
    methods = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        owner = next((base for base in cls.__mro__ if name in vars(base)), None)
        if owner is None or not owner.__module__.startswith("unidl") or owner is not cls:
            continue
        value = vars(owner)[name]
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            methods.append((name, value))
    return methods


def describe(qualified: str, value) -> list[str]:
    lines = []
    if inspect.isclass(value):
        kind = "exception" if issubclass(value, BaseException) else "class"
        lines += [f"### `{qualified}`", "", f"{kind} `{qualified}{signature(value)}`", ""]
        if docstring(value):
            lines += [docstring(value), ""]
        for name, method in own_methods(value):
            if isinstance(method, property):
                lines += [f"- **`{name}`** (property)" + (f": {docstring(method).splitlines()[0]}"
                                                          if docstring(method) else "")]
            else:
                summary = docstring(method).split("\n\n")[0].replace("\n", " ")
                lines += [f"- **`{name}{signature(method)}`**" + (f": {summary}" if summary else "")]
        if own_methods(value):
            lines.append("")
    elif callable(value):
        lines += [f"### `{qualified}`", "", f"`{qualified}{signature(value)}`", ""]
        if docstring(value):
            lines += [docstring(value), ""]
    else:
        lines += [f"### `{qualified}`", "", f"`{qualified} = {value!r}`", ""]
    return lines


def render() -> str:
    """The whole of docs/api.md."""
    import importlib

    sys.path.insert(0, str(ROOT))
    lines = ["# API reference", "",
             "Generated from the docstrings by `scripts/build-api-docs.py`; do not edit by hand (run the script).",
             "The guide is [guide.md](guide.md).", ""]
    lines += ["## Contents", ""] + [f"- [{heading}](#{_anchor(heading)})" for _, heading in SECTIONS] + [""]
    for module_name, heading in SECTIONS:
        module = importlib.import_module(module_name)
        lines += [f"## {heading}", ""]
        if module.__doc__:
            lines += [inspect.cleandoc(module.__doc__), ""]
        for name in public_names(module):
            lines += describe(f"{module_name}.{name}", getattr(module, name))
    return "\n".join(lines).rstrip() + "\n"


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python scripts/build-api-docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
