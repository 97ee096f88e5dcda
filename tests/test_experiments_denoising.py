"""experiments/denoising/compare.py end to end: a tiny denoiser trained with the real CLI, then the comparison
table on its held-out test photos (noisy / wavelet / BM3D / tl-predict), as a user runs both."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_PHOTOS, make_data, needs_extra, run_cli
from transferlab.data.photos import PhotoDataModule

COMPARE = Path(__file__).resolve().parents[1] / "experiments" / "denoising" / "compare.py"
NOISY_PSNR_SIGMA_25 = 20 * math.log10(255 / 25)  # 20.17 dB; clipping to [0, 1] can only raise it a little


def compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COMPARE), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def table_rows(markdown: str) -> dict[str, dict[str, float]]:
    """``photo -> column -> PSNR`` from the results table (bold mean row included, as ``mean``)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        rows[cells[0]] = {column: float(value) for column, value in zip(header[1:], cells[1:])}
    return rows


@pytest.fixture(scope="module")
def tiny_denoiser(tmp_path_factory) -> Path:
    """A 4-layer DnCNN trained for one tiny epoch by ``tl-train experiment=denoising`` (its best.ckpt)."""
    needs_extra("experiments", "bm3d", "pywt")  # the table's BM3D and wavelet columns (before the training)
    root = tmp_path_factory.mktemp("denoise")
    result = run_cli(
        "tl-train",
        "experiment=denoising",
        *TINY_PHOTOS,
        "trainer.max_epochs=1",
        "model.net.depth=4",
        "model.net.channels=8",
        "logger=none",
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "checkpoints" / "best.ckpt"


def test_compare_scores_every_held_out_photo_at_sigma_25(tiny_denoiser: Path, tmp_path: Path) -> None:
    out = tmp_path / "results" / "table.md"
    result = compare("--ckpt", str(tiny_denoiser), "--tiny", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text in result.stdout  # printed and written alike
    assert not list(out.parent.glob(".*.tmp"))  # written atomically: no temporary file left behind
    rows = table_rows(text)
    datamodule = make_data(PhotoDataModule, "photos")  # the tiny run kept the default split: the same test photos
    datamodule.setup()
    assert list(rows) == [*datamodule.photo_names["test"], "mean"] and len(rows) >= 3
    for name, scores in rows.items():
        assert set(scores) == {"noisy", "wavelet", "BM3D", "transferlab"}
        # sigma 25: ~20.2 dB; sigma 20 would give ~22.1 dB, sigma 30 ~18.6 dB.
        assert NOISY_PSNR_SIGMA_25 - 0.2 < scores["noisy"] < NOISY_PSNR_SIGMA_25 + 0.8, name
        assert scores["BM3D"] > scores["noisy"] + 5 and scores["wavelet"] > scores["noisy"] + 3, name
        assert math.isfinite(scores["transferlab"]) and scores["transferlab"] > scores["noisy"] - 1, name
    assert "crop_border 0" in text and "centred 32 px crops" in text and "RGB" in text


def test_compare_refuses_a_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    result = compare("--ckpt", str(tmp_path / "nope.ckpt"), "--tiny", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: checkpoint") and len(result.stderr.strip().splitlines()) == 1
