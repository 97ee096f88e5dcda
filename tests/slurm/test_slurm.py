"""Sweeps through a real SLURM scheduler (tests/slurm/cluster.py): one SLURM job per sweep job, results where a
local sweep puts them, one-line errors for requests the cluster cannot meet or jobs that fail, a quiet console,
several tasks of one job forming a DDP group, and a job stopped at its time limit that is requeued and resumes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import run_cli
from transferlab.report import report

pytestmark = pytest.mark.slurm

# Every test job: tiny, on one CPU, one thread (so a SLURM job and a local one compute the same numbers).
LOCAL_JOB = ["debug=tiny"]
TINY_JOB = [*LOCAL_JOB, "hydra.launcher.cpus_per_task=1"]
NOISE = ("accounting storage is disabled", "Bypassing sacct", "Traceback", "Warning")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # SLURM jobs inherit the submitting environment


def slurm_job_ids(sweep_dir: Path) -> list[str]:
    """The SLURM job ids submitit used for a sweep: its per-job folders (``<array>_<index>`` for a job array)."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]
    array_tasks = sorted(n for n in names if re.fullmatch(r"\d+_\d+", n))
    return array_tasks or sorted(n for n in names if n.isdigit())


def report_rows(sweep_dir: Path) -> list[str]:
    """tl-report's table rows (without the header lines that name the folder)."""
    return [line for line in report([str(sweep_dir)]).splitlines() if line.startswith("|")]


def test_sweep_runs_one_slurm_job_per_sweep_job_like_a_local_sweep(slurm_cluster, tmp_path: Path) -> None:
    sweep = tmp_path / "slurm_sweep"
    result = run_cli(
        "tl-train", "-m", "hydra/launcher=slurm", *TINY_JOB, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert not [line for line in console.splitlines() if any(n in line for n in NOISE)], console[-2000:]
    jobs = slurm_job_ids(sweep)
    assert len(jobs) == 2
    for job in jobs:  # SLURM ran each of them to completion
        state = slurm_cluster.finished(job)
        assert state["JobState"] == "COMPLETED", state
    for seed in (0, 1):
        job_dir = sweep / f"debug=tiny,seed={seed}"
        assert (job_dir / "metrics.json").is_file() and (job_dir / "checkpoints" / "best.ckpt").is_file()
        assert list(job_dir.glob("events.out.tfevents.*")), "the TensorBoard run sits in the job directory"

    local = tmp_path / "local_sweep"
    result = run_cli("tl-train", "-m", *LOCAL_JOB, "seed=0,1", f"hydra.sweep.dir={local}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert report_rows(sweep) == report_rows(local)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra.launcher.cpus_per_task=64"], r"error: SLURM will never start job \d+(_0)?: it asks for more CPUs"),
        (
            ["hydra.launcher.partition=nosuch"],
            r"error: SLURM refused the job: invalid partition specified: nosuch\. Check hydra\.launcher\.partition",
        ),
    ],
)
def test_requests_the_cluster_cannot_meet_are_one_line(
    slurm_cluster, tmp_path: Path, overrides: list[str], message: str
) -> None:
    args = ["-m", "hydra/launcher=slurm", *TINY_JOB, *overrides, f"hydra.sweep.dir={tmp_path / 's'}"]
    result = run_cli("tl-train", *args, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(message, last), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not slurm_cluster.squeue().strip(), "nothing is left waiting in the queue"


def test_a_failed_job_names_its_error_and_its_slurm_log(slurm_cluster, tmp_path: Path) -> None:
    # ImageNet weights cannot be fetched offline: the job itself fails, on the cluster, with a one-line error.
    args = ["-m", "hydra/launcher=slurm", *TINY_JOB, "model.backbone.weights=IMAGENET1K_V1"]
    result = run_cli("tl-train", *args, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a SLURM job failed: could not fetch"), result.stderr[-2000:]
    log = Path(re.search(r"its log: (\S+)", last).group(1))
    assert log.is_file() and log.name.endswith("_log.err")


def test_two_tasks_of_one_job_form_one_ddp_group(slurm_cluster, tmp_path: Path) -> None:
    """trainer=ddp_sim (2 CPU processes, gloo) as one SLURM job of two tasks: Lightning takes the ranks from
    SLURM's variables (no processes of its own), rank 0 alone writes logs and results."""
    sweep = tmp_path / "ddp"
    args = ["-m", "hydra/launcher=slurm", *TINY_JOB, "trainer=ddp_sim", "seed=0", f"hydra.sweep.dir={sweep}"]
    result = run_cli("tl-train", *args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = slurm_job_ids(sweep)
    assert slurm_cluster.finished(job)["NumTasks"] == "2"
    (job_dir,) = [p.parent for p in sweep.rglob("metrics.json")]
    assert sorted(p.name for p in job_dir.glob("*.log")) == ["train.log"]
    writers = {e.name.split(".")[-2] for e in job_dir.glob("events.out.tfevents.*")}  # the writing process ids
    assert len(writers) == 1, writers
    task_logs = (sweep / ".submitit" / job).glob("*_log.out")
    assert len(list(task_logs)) == 2, "both SLURM tasks ran"

    summary = json.loads((job_dir / "metrics.json").read_text())
    ckpt = job_dir / "checkpoints" / "best.ckpt"
    evaluated = run_cli("tl-eval", f"ckpt_path='{ckpt}'", "trainer.devices=1", "hydra.run.dir=eval", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    single = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert summary["metrics"]["test/acc"] == pytest.approx(single["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_a_job_stopped_at_its_time_limit_is_requeued_and_ends_as_an_uninterrupted_run(
    slurm_cluster, tmp_path: Path
) -> None:
    """timeout_min=1: SLURM signals the job 20 s before its limit, submitit requeues it, the SIGTERM that ends it
    writes last.ckpt, and the requeued job resumes in the same directory to the same final metrics."""
    long = [*LOCAL_JOB, "data.train_size=1500", "trainer.max_epochs=6", "trainer.deterministic=true"]
    sweep = tmp_path / "requeue"
    limits = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=20"]
    args = ["-m", "hydra/launcher=slurm", *long, *limits]
    result = run_cli("tl-train", *args, "seed=0", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = slurm_job_ids(sweep)
    assert int(slurm_cluster.job(job).get("Restarts", "0")) >= 1, "the job was requeued"
    (job_dir,) = [p.parent for p in sweep.rglob("metrics.json")]
    resumed = json.loads((job_dir / "metrics.json").read_text())
    assert Path(resumed["resumed_from"]) == job_dir / "checkpoints" / "last.ckpt", "resumed in its own directory"

    local = tmp_path / "local"
    result = run_cli("tl-train", "-m", *long, "seed=0", f"hydra.sweep.dir={local}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (local_dir,) = [p.parent for p in local.rglob("metrics.json")]
    uninterrupted = json.loads((local_dir / "metrics.json").read_text())

    # Every validation and test value (losses, accuracies, per class) bit for bit. Left out: timings, and the
    # interrupted epoch's train/ means and last logged LR, which cover only the steps after the resume.
    def compared(run: dict) -> dict:
        return {k: v for k, v in run["metrics"].items() if k.startswith(("val/", "test/"))}

    assert compared(resumed) == compared(uninterrupted) and len(compared(resumed)) > 20
    assert not [p for p in job_dir.rglob("events.out.tfevents.*") if p.parent != job_dir], "one TensorBoard run"
    assert os.path.basename(job_dir) == os.path.basename(local_dir)
