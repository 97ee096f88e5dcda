"""Sweeps through a real SLURM scheduler (tests/slurm/cluster.py): one SLURM job per sweep job, results where a
local sweep puts them, one-line errors for requests the cluster cannot meet, failed jobs that do not sink the
sweep, submit-and-go with tl-report following the jobs, a quiet console,
several tasks of one job forming a DDP group, and a job stopped at its time limit that is requeued and resumes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs_extra, run_cli, start_cli
from transferlab.constants import METRICS_FILE, SLURM_MANIFEST
from transferlab.report import report
from transferlab.sweeps import EXIT_JOBS_FAILED, read_failure

pytestmark = pytest.mark.slurm
needs_extra("slurm")  # every test here submits through submitit

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


def test_a_diverging_job_does_not_sink_the_slurm_sweep(slurm_cluster, tmp_path: Path) -> None:
    """The diverging job records failed.json on the cluster, the other one runs to the end, and the sweep ends
    with the one-line summary (exit status 1); tl-report marks the failed job instead of leaving it out."""
    sweep = tmp_path / "s"
    args = ["-m", "hydra/launcher=slurm", *TINY_JOB, "model.optimizer.lr=1e9,0.001", f"hydra.sweep.dir={sweep}"]
    result = run_cli("tl-train", *args, cwd=tmp_path, timeout=300)
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr[-3000:]
    diverged = sweep / "debug=tiny,model.optimizer.lr=1000000000.0"
    assert (sweep / "debug=tiny,model.optimizer.lr=0.001" / METRICS_FILE).is_file(), "the other job ran"
    record = read_failure(diverged)
    assert record is not None and record["outcome"] == "diverged" and "NaN/Inf" in record["error"], record
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: 1 of 2 jobs failed: {diverged}; see {diverged / 'train.log'}", result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    text = report([str(sweep)])
    assert "status: 1 finished, 1 diverged" in text
    assert f"- {diverged}: diverged: {record['error']}" in text


def test_a_job_killed_on_the_cluster_gets_its_failure_recorded_by_the_launcher(slurm_cluster, tmp_path: Path) -> None:
    """A job that dies without a result (killed, as the OOM killer would) cannot write failed.json itself: the
    launcher writes it, naming the job's SLURM log, and the sweep goes on to its end (exit status 1)."""
    sweep = tmp_path / "s"
    args = ["-m", "hydra/launcher=slurm", *TINY_JOB, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    log = tmp_path / "sweep.log"
    sweep_process = start_cli("tl-train", *args, cwd=tmp_path, log=log)
    try:
        victim = wait_for_state(slurm_cluster, "RUNNING", sweep_process)
        killed = subprocess.run(["scancel", "--signal=KILL", victim], env=slurm_cluster.env, check=False)
        assert killed.returncode == 0
        assert sweep_process.wait(timeout=300) == EXIT_JOBS_FAILED, log.read_text()[-3000:]
    finally:
        if sweep_process.poll() is None:
            os.killpg(sweep_process.pid, signal.SIGKILL)
    job_dir = sweep / f"debug=tiny,seed={victim.split('_')[1]}"
    record = read_failure(job_dir)
    assert record is not None, log.read_text()[-3000:]
    assert re.fullmatch(rf"SLURM job {victim} ended without a result \(state \w+\)", record["error"]), record
    assert record["log"] == str(sweep / ".submitit" / victim / f"{victim}_0_log.err")
    other = sweep / f"debug=tiny,seed={1 - int(victim.split('_')[1])}"
    assert (other / METRICS_FILE).is_file(), "the other job ran to its end"
    last = log.read_text().strip().splitlines()[-1]
    assert last == f"error: 1 of 2 jobs failed: {job_dir}; see {record['log']}"
    assert "failed: SLURM job" in report([str(sweep)])


def test_submit_and_go_returns_at_once_and_tl_report_follows_the_jobs(slurm_cluster, tmp_path: Path) -> None:
    """hydra.launcher.wait=false on a node held full: the command ends while both jobs still wait, printing
    their ids and how to look later; tl-report then sees them pending, running and finished."""
    blocker = sbatch_blocker(slurm_cluster, tmp_path)
    sweep = tmp_path / "s"
    args = [
        "-m",
        "hydra/launcher=slurm",
        *TINY_JOB,
        "seed=0,1",
        "hydra.launcher.wait=false",
        f"hydra.sweep.dir={sweep}",
    ]
    result = run_cli("tl-train", *args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = re.search(r"Submitted 2 SLURM job\(s\): (\S+) (\S+)\n", result.stdout)
    assert ids, result.stdout
    assert f"Sweep directory: {sweep}\n" in result.stdout and f"Look later: tl-report {sweep}\n" in result.stdout
    queue = ["squeue", "--array", "-h", "-o", "%i %T"]
    queued = dict(
        line.split() for line in subprocess.check_output(queue, env=slurm_cluster.env, text=True).splitlines()
    )
    assert [queued.get(job) for job in ids.groups()] == ["PENDING", "PENDING"], queued  # it did not wait
    manifest = json.loads((sweep / SLURM_MANIFEST).read_text())["jobs"]
    assert [(e["job_id"], e["dir"]) for e in manifest] == [
        (ids.group(i + 1), str(sweep / f"debug=tiny,seed={i}")) for i in (0, 1)
    ]
    text = report([str(sweep)])
    assert "status: 2 pending" in text
    assert f"- {sweep / 'debug=tiny,seed=0'}: pending (SLURM job {ids.group(1)})" in text

    subprocess.run(["scancel", blocker], env=slurm_cluster.env, check=True)
    seen = set()
    deadline = time.monotonic() + 300
    while "status: 2 finished" not in text and time.monotonic() < deadline:
        text = report([str(sweep)])
        seen.add(text.splitlines()[1])
        time.sleep(0.5)
    assert "status: 2 finished" in text, text
    assert any("running" in line for line in seen), seen
    (row,) = report_rows(sweep)[2:]  # only seeds vary: one row, no override columns
    assert row.startswith("| 2/2 |"), row
    assert "Unfinished" not in text and "Failed" not in text


def test_submit_and_go_refuses_optuna(slurm_cluster, tmp_path: Path) -> None:
    args = ["-m", "hydra/launcher=slurm", "sweep=optuna", *TINY_JOB, "hydra.launcher.wait=false"]
    result = run_cli("tl-train", *args, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: hydra.launcher.wait=false cannot run sweep=optuna: it picks each new job from the results of the "
        "finished ones, so it must wait for them. Drop hydra.launcher.wait=false (run the sweep inside a SLURM job "
        "or a tmux session to close the laptop meanwhile)"
    ]
    assert not slurm_cluster.squeue().strip(), "nothing was submitted"


def sbatch_blocker(cluster, folder: Path) -> str:
    """A job holding every CPU of the node (so the next ones stay pending), once it runs: its id."""
    command = ["sbatch", "--parsable", f"--cpus-per-task={os.cpu_count()}", "--job-name=blocker"]
    command += [f"--output={folder / 'blocker.out'}", "--wrap=sleep 600"]
    job = subprocess.run(command, env=cluster.env, capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.monotonic() + 60
    while cluster.job(job).get("JobState") != "RUNNING":
        assert time.monotonic() < deadline, cluster.job(job)
        time.sleep(0.2)
    return job


def wait_for_state(cluster, state: str, process: subprocess.Popen, timeout: float = 120) -> str:
    """The first sweep job (``<array>_<i>``) squeue shows in `state`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for line in cluster.squeue().splitlines():
            job, _, job_state = line.split()
            if job_state == state and "_" in job:
                return job
        time.sleep(0.2)
    raise AssertionError(f"no job reached {state} (sweep exit status {process.poll()})")


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
