"""experiments/own_data/study.py end to end on tiny sizes: datasets written, baselines scored, the real CLI run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_extra

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "own_data" / "study.py"


@pytest.mark.slow
def test_own_data_study_regenerates_its_table(tmp_path: Path) -> None:
    needs_extra("experiments", "sklearn")
    out = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, str(STUDY), "--tiny", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()[2:]]
    assert [row[0].strip() for row in rows] == ["digits", "faces"]
    for name, row in zip(("digits", "faces"), rows):
        assert row[1].strip() == "96 px"  # 8 px and 25 px images are upscaled to the least useful size
        run = json.loads((tmp_path / "work" / "runs" / name / "metrics.json").read_text())
        assert float(row[5].strip("* ")) == pytest.approx(run["metrics"]["test/acc"], abs=5e-5)
        assert all(0.0 <= float(cell) <= 1.0 for cell in row[2:5])
    assert len(list((tmp_path / "work" / "datasets" / "faces" / "val").rglob("*.png"))) == 12  # 6 per class
