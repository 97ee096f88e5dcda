"""DDP with two CPU processes (`trainer=ddp_sim`, gloo), as single runs and inside a multirun: one directory per
job, rank 1 working in it, metrics synced across ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import run_cli, start_cli


def job_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(".hydra"))


@pytest.mark.slow
def test_ddp_sim_run_test_accuracy_equals_single_process_eval(tmp_path: Path) -> None:
    result = run_cli("tl-train", "debug=tiny", "trainer=ddp_sim", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = job_dirs(tmp_path / "outputs" / "runs")
    assert len(runs) == 1, f"rank 1 must not create a run directory of its own: {runs}"
    run_dir = runs[0]
    assert (run_dir / "train_rank1.log").is_file(), "rank 1 re-ran this job in this directory"
    trained = json.loads((run_dir / "metrics.json").read_text())["metrics"]

    ckpt = run_dir / "checkpoints" / "best.ckpt"
    evaluated = run_cli("tl-eval", f"ckpt_path={ckpt}", "trainer.accelerator=cpu", "trainer.devices=1", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_dir,) = job_dirs(tmp_path / "outputs" / "eval")
    single = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
    assert trained["test/acc"] == pytest.approx(single["test/acc"], abs=1e-6)
    assert trained["test/acc_top5"] == pytest.approx(single["test/acc_top5"], abs=1e-6)


@pytest.mark.slow
def test_ddp_sim_inside_multirun_one_directory_per_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "debug=tiny", "trainer=ddp_sim", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli("tl-train", *args, cwd=tmp_path, timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]
    names = {f"debug=tiny,seed={seed},trainer=ddp_sim": seed for seed in (0, 1)}
    assert {p.name for p in job_dirs(sweep_dir)} == set(names)
    assert not (tmp_path / "outputs").exists(), "no stray run directories from the child ranks"
    for name, seed in names.items():
        job = sweep_dir / name
        assert (job / "train_rank1.log").is_file(), "rank 1 re-ran exactly this job, in this directory"
        summary = json.loads((job / "metrics.json").read_text())
        assert f"seed={seed}" in summary["overrides"] and "test/acc" in summary["metrics"]


@pytest.mark.slow
def test_ddp_sim_on_the_device_paths(tmp_path: Path) -> None:
    """Both device-resident paths under 2-process DDP (on CPU devices): classification batches sharded from the
    in-memory set with device augmentation, and restoration patches cut + degraded per rank."""
    photos = ["data=photos", "data.patch_size=32", "data.batch_size=4", "data.train_patches=16", "data.val_patches=4"]
    runs = {
        "classify": ["debug=tiny", "data.on_gpu=true", "data/augment=randaugment"],
        "denoise": [
            *photos,
            "data.on_gpu=true",
            "model=denoise",
            "data/degrade=gaussian_noise",
            "model.net.depth=4",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
        ],
    }
    for name, overrides in runs.items():
        result = run_cli("tl-train", *overrides, "trainer=ddp_sim", f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
        assert ("test/acc" if name == "classify" else "test/psnr") in metrics, metrics


def with_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make tests/ddp_probes.py importable by the CLI and its DDP child ranks."""
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))


@pytest.mark.slow
def test_ddp_sim_ranks_augment_differently_and_train_acc_is_the_mean_over_ranks(tmp_path: Path, monkeypatch) -> None:
    """Device-resident data under 2-process DDP: each rank draws its own augmentation (both train on copies of one
    image here, so their batches differ only by it), and ``train/acc`` is the mean of the ranks' accuracies
    (rank 0 counts all hits, rank 1 none: 0.5), not rank 0's value broadcast to every rank."""
    with_probes(monkeypatch)
    probe = ["+callbacks.probe._target_=ddp_probes.RankProbe", f"+callbacks.probe.folder={tmp_path / 'probe'}"]
    args = ["debug=tiny", "trainer=ddp_sim", "data.on_gpu=true", "test=false", *probe]
    result = run_cli("tl-train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (torch.load(tmp_path / "probe" / f"batch_rank{rank}.pt") for rank in (0, 1))
    assert not torch.equal(first, second), "both ranks drew the same crops and flips"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["train/acc"] == pytest.approx(0.5, abs=1e-6)


def run_or_kill(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run tl-train (2 DDP ranks) and return its exit code and output; fail the test, killing every rank, if it
    has not ended within `timeout` seconds (far below gloo's 30-minute timeout: a hung collective)."""
    log = tmp_path / "cli.log"
    process = start_cli("tl-train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, log=log)
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # SIGTERM would only ask Lightning to stop at a step's end
        process.wait()
        pytest.fail(f"the ranks hung:\n{log.read_text()[-3000:]}")
    return returncode, log.read_text()


@pytest.mark.slow
def test_ddp_sim_non_finite_loss_on_one_rank_stops_every_rank_with_one_error(tmp_path: Path, monkeypatch) -> None:
    """Only rank 1's loss becomes NaN: both ranks stop at the same check and the user reads one error line, in
    seconds (a rank stopping alone would leave the other waiting in gloo for its 30-minute timeout)."""
    with_probes(monkeypatch)
    nan = ["+callbacks.nan._target_=ddp_probes.NonFiniteLossOnRank", "+callbacks.nan.rank=1"]
    returncode, output = run_or_kill(tmp_path, "debug=tiny", "trainer=ddp_sim", "test=false", *nan)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert returncode == 2, output[-3000:]
    # rank 1's loss is NaN from the step trained at global_step 2; the callback names steps after their update
    assert len(errors) == 1 and errors[0].startswith("error: the training loss became NaN/Inf at step 3"), errors


@pytest.mark.slow
def test_ddp_sim_ranks_agree_on_writing_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """Writing last.ckpt is collective (Lightning's save ends in a barrier): when one rank's clock says it is due and
    the other's does not, rank 0 decides for both, and the run finishes instead of hanging in the barrier."""
    with_probes(monkeypatch)
    skew = ["+callbacks.skew._target_=ddp_probes.SkewedClockOnRank", "+callbacks.skew.rank=1"]
    returncode, output = run_or_kill(tmp_path, "debug=tiny", "trainer=ddp_sim", "trainer.max_epochs=3", *skew)
    assert returncode == 0, output[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
