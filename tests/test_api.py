"""The Python API as docs/python-api.md shows it: its code blocks run as they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- test: tests/test_api.py runs this block -->"


def page_blocks() -> list[str]:
    text = (ROOT / "docs" / "python-api.md").read_text()
    return re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", text, re.DOTALL)


def test_the_page_shows_both_styles() -> None:
    blocks = page_blocks()
    assert len(blocks) == 2 and "transferlab.train(" in blocks[0] and "pl.Trainer(" in blocks[1]


@pytest.mark.parametrize("index", [0, 1], ids=["commands-as-functions", "plain-lightning"])
def test_page_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERLAB_ROOT", str(tmp_path))
    exec(compile(page_blocks()[index], f"docs/python-api.md block {index}", "exec"), {})
    if index == 0:
        assert len(list((tmp_path / "outputs" / "runs").glob("*/*/metrics.json"))) == 1
        assert len(list((tmp_path / "outputs" / "eval").glob("*/*/metrics.json"))) == 1


def test_api_mistake_raises_the_commands_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transferlab
    from transferlab.utils.errors import UserError

    monkeypatch.setenv("TRANSFERLAB_ROOT", str(tmp_path))
    with pytest.raises(UserError, match=r"unknown key trainer.max_step\. Did you mean trainer.max_steps"):
        transferlab.train(["debug=tiny", "trainer.max_step=3"])
    assert not (tmp_path / "outputs").exists()
