"""experiments/style_transfer/study.py end to end on tiny sizes: the sweep, tl-report's curves, the cross-judged
table over seeds and the grid, each checked against what the runs themselves wrote."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "style_transfer" / "study.py"


@pytest.mark.slow
def test_style_study_regenerates_its_tables_curves_and_grid(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [sys.executable, str(STUDY), "--tiny", "--work", str(tmp_path / "work"), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    # tl-report's table: one row per loss network, each the mean of its two seeds' own metrics.json
    jobs = [json.loads(path.read_text()) for path in (tmp_path / "work" / "sweep").rglob("metrics.json")]
    assert len(jobs) == 4
    rows = {row["model/loss_network"]: row for row in csv.DictReader((out / "report.csv").open())}
    assert set(rows) == {"vgg16", "efficientnet_lite0"}
    for network, row in rows.items():
        ours = [job for job in jobs if f"model/loss_network={network}" in job["overrides"]]
        losses = [job["metrics"]["test/loss_style"] for job in ours]
        assert len(losses) == 2 and float(row["test/loss_style_mean"]) == pytest.approx(sum(losses) / 2, rel=1e-4)
    for network in ("vgg16", "efficientnet_lite0"):  # a figure per loss network: their scales differ by 1e4
        for curve in ("train_loss_content_step", "train_loss_style_step"):
            assert (out / f"{network}-curve-{curve}.png").stat().st_size > 0

    # compare.py: identity + both stylizers, two seeds each, under both judges; the grid's 4 columns × 3 photos
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")][1:]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table]
    assert [row[0] for row in cells] == [
        "identity (no stylization)",
        "vgg16 (random features)",
        "efficientnet_lite0 (ImageNet)",
    ]
    assert [row[1] for row in cells] == ["1", "2", "2"] and all(" ± " in cell for cell in cells[1][2:])
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (4 * 128, 3 * 128)

    # a second run skips the finished jobs and regenerates the same table
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((tmp_path / "work" / "sweep").rglob("metrics.json"))) == 4
