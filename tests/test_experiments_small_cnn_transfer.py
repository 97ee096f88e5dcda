"""experiments/small_cnn_transfer: its recipe as configured, and study.py end to end (source runs, target sweeps,
tables) in both modes: embedded (shapes → digits) and full (CIFAR-100 → CIFAR-10 on batches in the real format)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import needs_extra
from test_data import write_cifar

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "small_cnn_transfer" / "study.py"


def test_recipe_is_the_papers_for_target_and_source(make_cfg) -> None:
    target = make_cfg("experiment=small_cnn_transfer", "source_weights=/src.ckpt", tiny=False)
    opt = target.model.optimizer
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay) == ("torch.optim.SGD", 0.001, 0.9, 0.0)
    assert target.model.scheduler is None and target.model.head_hidden == 512
    assert (target.data.variant, target.data.image_size, target.data.augment._target_) == (10, 32, "torch.nn.Identity")
    source = make_cfg("experiment=small_cnn_transfer_source", tiny=False)
    assert (source.data.variant, source.model.optimizer.lr, source.model.backbone.weights) == (100, 0.01, None)
    assert source.model.head_hidden == 512 and source.data.image_size == 32  # the target's network and inputs


def run_study(tmp_path: Path, *args: str) -> tuple[Path, Path]:
    work, out = tmp_path / "work", tmp_path / "results"
    command = [sys.executable, str(STUDY), "--tiny", "--work", str(work), "--out", str(out), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return work, out


def table(path: Path) -> list[dict[str, str]]:
    """The Markdown table of a tl-report file as rows of {column: cell}."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def target_jobs(sweep: Path) -> dict[tuple[str, str], Path]:
    """(weights, mode) → job directory, from each job's recorded overrides."""
    jobs = {}
    for overrides_file in sweep.rglob(".hydra/overrides.yaml"):
        overrides = dict(item.split("=", 1) for item in yaml.safe_load(overrides_file.read_text()))
        jobs[overrides["model.backbone.weights"], overrides["model.finetune.mode"]] = overrides_file.parents[1]
    return jobs


def weights(run: Path, prefix: str) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {key: value for key, value in state.items() if key.startswith(prefix)}


@pytest.mark.slow
def test_embedded_study_trains_sources_then_compares_scratch_and_transfer(tmp_path: Path) -> None:
    needs_extra("experiments", "sklearn")  # the target: scikit-learn's digits
    work, out = run_study(tmp_path)
    assert [row["model.backbone.name"] for row in table(out / "sources.md")] == ["resnet18", "small_cnn"]
    assert "data=shapes" in (out / "sources.md").read_text()  # source: the embedded shapes; target: the digits
    assert "data.root=datasets/digits data=imagefolder" in (out / "report.md").read_text()
    rows = table(out / "report.md")
    conditions = {(r["model.backbone.name"], r["model.backbone.weights"], r["model.finetune.mode"]) for r in rows}
    assert conditions == {
        (name, init, mode)
        for name in ("small_cnn", "resnet18")
        for init in ("null", f"sources/{name}/checkpoints/best.ckpt")
        for mode in ("linear_probe", "full")
    }
    assert all(row["jobs"] == "1/1" and 0.0 <= float(row["test/acc"].split()[0]) <= 1.0 for row in rows)
    assert (out / "report.png").is_file() and (out / "report.csv").is_file()
    for name in ("small_cnn", "resnet18"):
        source = weights(work / "sources" / name, "backbone.")
        jobs = target_jobs(work / "target" / name)
        frozen = weights(jobs[f"sources/{name}/checkpoints/best.ckpt", "linear_probe"], "backbone.")
        assert frozen.keys() == source.keys()
        for key in source:  # the target run started from the source trunk and kept it frozen
            torch.testing.assert_close(frozen[key], source[key], msg=f"{name}: {key}")
        scratch = weights(jobs["null", "linear_probe"], "backbone.")
        assert any(not torch.equal(scratch[key], source[key]) for key in source if source[key].is_floating_point())
    assert len(list((work / "datasets" / "digits" / "train").rglob("*.png"))) == 60  # the digits, 6 per class


@pytest.mark.slow
def test_full_mode_study_runs_cifar100_source_and_cifar10_target_from_the_official_batches(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data" / "cifar", 10)
    write_cifar(tmp_path / "data" / "cifar", 100, per_batch=200)
    work, out = run_study(tmp_path, "--full", str(tmp_path / "data"), "--networks", "small_cnn")
    assert weights(work / "sources" / "small_cnn", "head.")["head.3.weight"].shape[0] == 100  # CIFAR-100's classes
    for job in target_jobs(work / "target" / "small_cnn").values():
        assert weights(job, "head.")["head.3.weight"].shape[0] == 10  # a new head for CIFAR-10's
    assert len(table(out / "report.md")) == 4


def test_study_refuses_to_mix_with_an_earlier_one(tmp_path: Path) -> None:
    (tmp_path / "work" / "sources").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, str(STUDY), "--tiny", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "holds an earlier study" in result.stderr
    assert not (tmp_path / "out").exists()
