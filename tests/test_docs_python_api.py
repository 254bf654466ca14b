"""docs/python-api.md runs as written: every ```python block, in order, in one namespace, in an empty folder.

The page promises a number printed at each step of the walk-through; each block's output is checked for one.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    """The code of every fenced ```python block, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)


def test_the_page_has_the_walk_through():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 4
    code = "\n".join(blocks)
    for call in ("da.simulate_dataset", "da.train(", "da.attack_run", "da.attacks.OnePixelDE", "da.robustness_run", "da.Run("):
        assert call in code


def test_every_python_block_of_the_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc__"}
    for number, block in enumerate(python_blocks(DOC.read_text()), 1):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)  # noqa: S102
        printed = out.getvalue()
        assert re.search(r"\d", printed), f"block {number} printed no number: {printed!r}"
    assert (tmp_path / "work" / "run" / "training.json").is_file()
    assert (tmp_path / "work" / "run" / "attack" / "summary.json").is_file()
