"""``hydra/launcher=parallel``: jobs side by side, each in its own process, pinned to its own GPUs (a fake
``CUDA_VISIBLE_DEVICES`` list: no GPU is needed) or cores, at most ``jobs`` at once; failures and kills follow
the sweep contract (`transferlab.sweeps`), and Ctrl-C/SIGTERM leaves no job behind.

Most tests run a fake task through transferlab's real Hydra application (``hydra_app("train")``): each job
records its environment, affinity and start/end times in its directory and sleeps, in about a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import needs_extra, run_cli
from transferlab.constants import FAILED_FILE, METRICS_FILE
from transferlab.sweeps import EXIT_JOBS_FAILED, read_failure

SRC = Path(__file__).resolve().parents[1] / "src"

FAKE_TASK = """
import json, os, signal, sys, time
from pathlib import Path
from hydra.core.hydra_config import HydraConfig
from transferlab.cli import hydra_app

def run(cfg):
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    record = {"start": time.time(), "pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "cores": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS")}
    (job_dir / "started.json").write_text(json.dumps(record))
    print("fake job output", flush=True)
    if cfg.seed == int(os.environ.get("FAKE_KILL", -1)):
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.seed == int(os.environ.get("FAKE_FAIL", -1)):
        raise ValueError("planted failure")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "1")))
    value = float(cfg.model.optimizer.lr) if os.environ.get("FAKE_RETURN_LR") else float(cfg.seed)
    (job_dir / "record.json").write_text(json.dumps({**record, "end": time.time(), "value": value}))
    return value

if __name__ == "__main__":
    hydra_app("train")(run)()
"""


def run_fake(tmp_path: Path, *overrides: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """The fake task as a multirun on the parallel launcher, in ``tmp_path/sweep``."""
    script = tmp_path / "fake_task.py"
    script.write_text(FAKE_TASK)
    command = [sys.executable, str(script), "-m", "hydra/launcher=parallel", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    environment = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        [*command, *overrides], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=timeout
    )


def records(sweep: Path, name: str = "record.json") -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(sweep.glob(f"*/{name}"))]


def overlapping(jobs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of jobs that ran at the same time."""
    return [
        (a, b) for i, a in enumerate(jobs) for b in jobs[i + 1 :] if a["start"] < b["end"] and b["start"] < a["end"]
    ]


def most_at_once(jobs: list[dict[str, Any]]) -> int:
    return max(sum(1 for other in jobs if other["start"] <= job["start"] < other["end"]) for job in jobs)


@pytest.mark.parametrize(
    ("visible", "launcher", "devices", "seeds", "per_job", "at_once"),
    [
        ("0,1,2,3", "hydra.launcher.jobs=2", 1, "0,1,2,3", 1, 2),  # 4 jobs on 2 slots
        ("3,5,6,7", "hydra.launcher.jobs=null", 2, "0,1,2", 2, 2),  # one job per 2 GPUs of an existing list
    ],
)
def test_each_job_gets_its_own_gpus_from_the_visible_ones(
    tmp_path: Path, visible: str, launcher: str, devices: int, seeds: str, per_job: int, at_once: int
) -> None:
    result = run_fake(
        tmp_path, launcher, "trainer.accelerator=gpu", f"trainer.devices={devices}", f"seed={seeds}",
        CUDA_VISIBLE_DEVICES=visible,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs = records(tmp_path / "sweep")
    assert len(jobs) == len(seeds.split(","))
    for job in jobs:
        gpus = job["cuda"].split(",")
        assert len(gpus) == per_job == len(set(gpus)) and set(gpus) <= set(visible.split(","))
    for a, b in overlapping(jobs):
        assert not set(a["cuda"].split(",")) & set(b["cuda"].split(",")), "two jobs shared a GPU"
    assert most_at_once(jobs) <= at_once
    assert overlapping(jobs), "the jobs ran one after another"
    assert "#0 started" in result.stdout + result.stderr


def test_cpu_jobs_are_pinned_to_their_own_cores_and_size_their_threads(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    result = run_fake(tmp_path, "seed=0,1,2,3", "hydra.launcher.threads_per_job=1", CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr
    jobs = records(tmp_path / "sweep")
    assert len(jobs) == 4
    for job in jobs:
        assert len(job["cores"]) == 1 and job["omp"] == "1" and job["cuda"] == ""
    for a, b in overlapping(jobs):
        assert a["cores"] != b["cores"], "two jobs shared a core"
    assert most_at_once(jobs) <= cores  # jobs: null = cores ÷ threads
    console = next((tmp_path / "sweep").glob("seed=0*")) / "console.log"
    assert "fake job output" in console.read_text() and "fake job output" not in result.stdout + result.stderr


def test_never_more_than_jobs_at_once(tmp_path: Path) -> None:
    """``jobs`` binds below what the cores allow (two 1-thread jobs would fit on two cores)."""
    result = run_fake(tmp_path, "hydra.launcher.jobs=1", "seed=0,1,2", CUDA_VISIBLE_DEVICES="", FAKE_SLEEP="0.5")
    assert result.returncode == 0, result.stderr
    jobs = records(tmp_path / "sweep")
    assert len(jobs) == 3 and not overlapping(jobs)


def test_a_failed_and_a_killed_job_leave_the_others_finished(tmp_path: Path) -> None:
    result = run_fake(
        tmp_path, "hydra.launcher.jobs=2", "seed=0,1,2,3", CUDA_VISIBLE_DEVICES="", FAKE_KILL="1", FAKE_FAIL="2"
    )
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr
    sweep = tmp_path / "sweep"
    assert sorted(job["value"] for job in records(sweep)) == [0.0, 3.0]
    killed, failed = sweep / "seed=1", sweep / "seed=2"
    record = read_failure(killed)
    assert record is not None and "killed by SIGKILL" in record["error"]
    assert record["log"] == str(killed / "console.log") and (killed / "console.log").is_file()
    assert read_failure(failed) == {
        "outcome": "failed",
        "error": "ValueError: planted failure",
        "log": str(failed / "fake_task.log"),
    }
    assert not (sweep / "seed=0" / FAILED_FILE).exists()
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"error: 2 of 4 jobs failed: {killed}, {failed}; see {killed / 'console.log'}"
    assert any(line.startswith("error: job seed=1: its process was killed by SIGKILL") for line in lines)
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(sweep.glob(".parallel-*")), "the launcher's payloads were left behind"


def test_optuna_gets_each_jobs_value_back(tmp_path: Path) -> None:
    needs_extra("optuna")
    result = run_fake(
        tmp_path, "sweep=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=null",
        CUDA_VISIBLE_DEVICES="", FAKE_RETURN_LR="1", FAKE_SLEEP="0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    values = [job["value"] for job in records(tmp_path / "sweep")]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())["best_value"]
    assert len(values) == 4 and best == max(values)  # the default monitor (val/acc) is maximised


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for its parent to read its exit does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_sweep_stops_every_running_job(tmp_path: Path, stop: signal.Signals) -> None:
    """SIGTERM (and Ctrl-C) stop the jobs through the launcher; a SIGKILLed launcher's jobs end with it."""
    script = tmp_path / "fake_task.py"
    script.write_text(FAKE_TASK)
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(script), "-m", "hydra/launcher=parallel", f"hydra.sweep.dir={sweep}", "seed=0,1,2"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "CUDA_VISIBLE_DEVICES": "", "FAKE_SLEEP": "120"}
    with (tmp_path / "out.log").open("w") as out:
        sweep_process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while len(records(sweep, "started.json")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    started = records(sweep, "started.json")
    assert len(started) == 2, (tmp_path / "out.log").read_text()  # two 1-thread jobs on two cores
    sweep_process.send_signal(stop)
    assert sweep_process.wait(timeout=60) == (128 + stop if stop == signal.SIGTERM else -stop)
    deadline = time.monotonic() + 10
    while any(alive(job["pid"]) for job in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [job["pid"] for job in started if alive(job["pid"])]
    for pid in survivors:  # a failing test leaves no 2-minute sleeper behind
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "a job outlived its sweep"
    if stop == signal.SIGTERM:
        last = (tmp_path / "out.log").read_text().strip().splitlines()[-1]
        assert last.startswith("error: the sweep was stopped (SIGTERM); running jobs stopped: seed=")
    assert len(records(sweep, "started.json")) == 2, "a job started after the stop"


@pytest.mark.slow
def test_a_real_sweep_runs_in_parallel_and_a_relaunch_skips_finished_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=parallel", "hydra.launcher.jobs=2", "debug=tiny", "cpu_threads=1", "seed=0,1"]
    first = run_cli("tl-train", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert [job.name for job in jobs] == ["cpu_threads=1,debug=tiny,seed=0", "cpu_threads=1,debug=tiny,seed=1"]
    finished = {job: (job / METRICS_FILE).stat().st_mtime_ns for job in jobs}
    for job in jobs:
        assert (job / ".hydra" / "config.yaml").is_file() and list(job.glob("events.out.tfevents.*"))
        assert json.loads((job / METRICS_FILE).read_text())["overrides"]
    again = run_cli("tl-train", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for job in jobs:
        assert "Skipping finished job" in (job / "console.log").read_text()
        assert (job / METRICS_FILE).stat().st_mtime_ns == finished[job]
    report = run_cli("tl-report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "seed" in report.stdout


def test_the_gpu_pool_is_the_visible_devices_as_cuda_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra_plugins.transferlab_launcher.parallel import visible_gpus

    for listed, expected in [
        ("0,1,2,3", ["0", "1", "2", "3"]),
        ("2, 5", ["2", "5"]),
        ("GPU-8f2e,MIG-1a2b", ["GPU-8f2e", "MIG-1a2b"]),
        ("0,1,-1,2", ["0", "1"]),  # CUDA stops at the first invalid id
        ("", []),
    ]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
        assert visible_gpus() == expected
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    smi = tmp_path / "nvidia-smi"  # counted without starting CUDA
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert visible_gpus() == ["0", "1"]
    smi.unlink()
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus() == []


def test_a_job_asking_for_more_gpus_than_visible_fails_alone(tmp_path: Path) -> None:
    result = run_fake(
        tmp_path, "trainer.accelerator=gpu", "trainer.devices=1,2", "seed=0", CUDA_VISIBLE_DEVICES="4", FAKE_SLEEP="0"
    )
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr
    too_big = tmp_path / "sweep" / "seed=0,trainer.accelerator=gpu,trainer.devices=2"
    record = read_failure(too_big)
    assert record is not None and record["error"].startswith("it asks for 2 GPUs (trainer.devices) and only 1 (4)")
    assert [job["cuda"] for job in records(tmp_path / "sweep")] == ["4"]


def test_a_bad_jobs_count_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "tl-train", "-m", "hydra/launcher=parallel", "hydra.launcher.jobs=0", "seed=0", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "error: hydra.launcher.jobs=0 must be a whole number ≥ 1, or null (decided at launch)\n"
    assert not sweep.exists()
