"""tl-report on an unfinished sweep: each job's status (finished, failed, diverged, pending, running, stopped) from
its folder and, for a SLURM sweep, from ``squeue`` (a fake one on PATH here) for the jobs of ``slurm_jobs.json``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from transferlab.constants import FAILED_FILE, SLURM_MANIFEST
from transferlab.report import find_jobs, report


def job_dir(sweep: Path, overrides: list[str], *, started: bool = True, acc: float | None = None) -> Path:
    path = sweep / ",".join(overrides)
    if started:
        (path / ".hydra").mkdir(parents=True)
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if acc is not None:
        summary = {"metrics": {"val/acc": acc}, "overrides": overrides}
        (path / "metrics.json").write_text(json.dumps(summary))
    return path


def failed(path: Path, outcome: str, error: str) -> None:
    record = {"outcome": outcome, "error": error, "log": str(path / "train.log")}
    (path / FAILED_FILE).write_text(json.dumps(record))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Eight jobs of a SLURM sweep in every state, with their SLURM ids in slurm_jobs.json."""
    root = tmp_path / "sweep"
    jobs = {
        "7_0": job_dir(root, ["lr=0.1", "seed=0"], acc=0.5),
        "7_1": job_dir(root, ["lr=0.1", "seed=1"], acc=0.7),
        "7_2": job_dir(root, ["lr=1e9", "seed=0"]),
        "7_3": job_dir(root, ["lr=1e9", "seed=1"]),
        "7_4": job_dir(root, ["lr=0.01", "seed=0"]),
        "7_5": job_dir(root, ["lr=0.01", "seed=1"], started=False),  # pending: no folder yet
        "7_6": job_dir(root, ["lr=0.001", "seed=0"]),  # left the queue without a result
        "7_7": job_dir(root, ["lr=0.001", "seed=1"]),  # failed before, re-launched: waits to run again
    }
    failed(jobs["7_2"], "diverged", "the training loss became NaN/Inf at step 3")
    failed(jobs["7_7"], "failed", "an earlier launch's failure")
    failed(jobs["7_3"], "failed", "KeyError: 'lost'")
    entries = [{"job_id": i, "dir": str(d), "overrides": d.name.split(",")} for i, d in jobs.items()]
    (root / SLURM_MANIFEST).write_text(json.dumps({"jobs": entries}))
    return root


def fake_squeue(folder: Path, lines: list[str], refuse_ids: bool = False) -> Path:
    """An ``squeue`` that prints `lines` (``id|STATE``) and records its arguments; `refuse_ids`: fails with -j
    (as SLURM's does once one of the ids is forgotten)."""
    folder.mkdir(exist_ok=True)
    script = folder / "squeue"
    refuse = 'case "$*" in *--jobs=*) echo "Invalid job id specified" >&2; exit 1;; esac\n' if refuse_ids else ""
    output = "".join(f"echo '{line}'\n" for line in lines)
    script.write_text(f'#!/bin/sh\necho "$*" >> "{folder}/calls"\n{refuse}{output}')
    script.chmod(0o755)
    return folder


def statuses(sweep: Path) -> dict[str, str]:
    return {job.path.name: job.status for job in find_jobs([sweep])}


def test_squeue_says_pending_and_running_the_folders_say_finished_and_failed(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_squeue(
        tmp_path / "bin",
        ["7_2|COMPLETING", "7_4|RUNNING", "7_5|PENDING", "7_6|CANCELLED", "7_7|PENDING", "8_0|RUNNING"],
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert statuses(sweep) == {
        "lr=0.1,seed=0": "finished",
        "lr=0.1,seed=1": "finished",
        "lr=1e9,seed=0": "diverged",
        "lr=1e9,seed=1": "failed",
        "lr=0.01,seed=0": "running",
        "lr=0.01,seed=1": "pending",
        "lr=0.001,seed=0": "stopped (CANCELLED)",
        "lr=0.001,seed=1": "pending",
    }
    assert (bin_dir / "calls").read_text().split()[-1] == "--jobs=7"  # one query, for the sweep's array

    text = report([str(sweep)])
    assert "8 jobs in 4 groups" in text
    assert "status: 2 finished, 1 failed, 1 diverged, 1 running, 2 pending, 1 stopped (CANCELLED)" in text
    assert "| lr | jobs | failed | best" not in text  # no monitor in these jobs: the metric columns follow
    assert "| lr | jobs | failed | val/acc |" in text
    assert "| 1e9 | 0/2 | 1 failed, 1 diverged | – |" in text
    assert "| 0.1 | 2/2 | 0 | 0.6000 ± 0.1414 (n=2) |" in text
    assert "| 0.01 | 0/2 | 0 | – |" in text
    failures = text.split("Failed jobs (left out of the means; the reason from their failed.json):\n")[1]
    assert failures.startswith(
        f"- {sweep / 'lr=1e9,seed=0'}: diverged: the training loss became NaN/Inf at step 3\n"
        f"- {sweep / 'lr=1e9,seed=1'}: failed: KeyError: 'lost'\n"
    )
    assert f"- {sweep / 'lr=0.01,seed=1'}: pending (SLURM job 7_5)" in text
    assert f"- {sweep / 'lr=0.01,seed=0'}: running (SLURM job 7_4)" in text
    rows = {r["lr"]: r for r in csv.DictReader((sweep / "report.csv").open())}
    columns = ("jobs", "finished", "failed", "diverged", "val/acc_n")
    assert [rows["1e9"][k] for k in columns] == ["2", "0", "1", "1", "0"]
    assert rows["0.1"]["failed"] == rows["0.1"]["diverged"] == "0"


def test_a_forgotten_id_makes_squeue_list_everything_instead(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_squeue(tmp_path / "bin", ["7_5|PENDING", "7_4|RUNNING"], refuse_ids=True)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    found = statuses(sweep)
    assert (found["lr=0.01,seed=1"], found["lr=0.01,seed=0"]) == ("pending", "running")
    assert found["lr=0.001,seed=0"] == "stopped"  # squeue no longer lists it, and it left no result
    assert len((bin_dir / "calls").read_text().splitlines()) == 2


def test_without_squeue_the_folders_tell(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "no-slurm"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    found = statuses(sweep)
    assert found["lr=0.01,seed=1"] == "pending"  # submitted, no folder yet
    assert found["lr=0.01,seed=0"] == found["lr=0.001,seed=0"] == "running or stopped"
    assert (found["lr=1e9,seed=0"], found["lr=0.1,seed=0"]) == ("diverged", "finished")


def test_a_failed_job_without_hydra_folder_is_found(tmp_path: Path) -> None:
    """A SLURM job that died before Hydra wrote its folder: the launcher's failed.json alone marks it."""
    path = tmp_path / "sweep" / "seed=3"
    path.mkdir(parents=True)
    failed(path, "failed", "SLURM job 9_0 ended without a result (state OUT_OF_MEMORY)")
    (job,) = find_jobs([tmp_path / "sweep"])
    assert (job.status, job.error) == ("failed", "SLURM job 9_0 ended without a result (state OUT_OF_MEMORY)")
