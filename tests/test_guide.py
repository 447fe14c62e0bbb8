"""Every ``python`` code block of docs/guide.md runs, in order, in one namespace (on torch, in a temporary
directory): the guide shows only what works."""

import re

import pytest

from tests.helpers import ROOT


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_guide_code_blocks_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    pytest.importorskip("tensorboard")
    import unidl as ud

    blocks = python_blocks((ROOT / "docs" / "guide.md").read_text())
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "guide"}
    with ud.use_backend("torch"), ud.use_device("cpu"):
        for index, block in enumerate(blocks):
            try:
                exec(compile(block, f"docs/guide.md block {index + 1}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"docs/guide.md python block {index + 1} failed: {error!r}\n{block}") from error
    out = capsys.readouterr().out
    assert "Total params" in out and "test accuracy" in out and "True" in out
