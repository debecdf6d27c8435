"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "total parameters: 61,706" in out
    loss = float(re.search(r"loss after one epoch: ([0-9.]+)", out).group(1))
    assert loss < 1.0


def test_pytorch_example_runs(capsys):
    import pytest

    pytest.importorskip("torch")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "interop.to_torch" in b]
    assert len(blocks) == 1
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["0.weight (6, 1, 5, 5)", "0.bias (6,)"] and len(lines) == 10
    assert scope["model"].device.xp.__name__.endswith("torch")
