"""A failing job does not sink its sweep: the other jobs run, the failure is recorded in the job's directory
(``failed.json``) and the sweep ends with one line and exit status 1 (`transferlab.sweeps`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from conftest import run_cli
from transferlab.callbacks import NonFiniteLoss
from transferlab.constants import FAILED_FILE, METRICS_FILE
from transferlab.sweeps import EXIT_JOBS_FAILED, end_sweep, failure_summary, read_failure, record_failure

FINE = "model.optimizer.lr=0.001"


def test_a_diverging_job_fails_alone_and_the_sweep_ends_with_one_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "model.optimizer.lr=1e9,0.001", "debug=tiny", f"hydra.sweep.dir={sweep}"]
    result = run_cli("tl-train", *args, cwd=tmp_path)
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr
    diverged, fine = sweep / "debug=tiny,model.optimizer.lr=1000000000.0", sweep / "debug=tiny,model.optimizer.lr=0.001"
    assert (fine / METRICS_FILE).is_file(), "the job after the failing one did not run"
    assert not (fine / FAILED_FILE).exists()
    record = read_failure(diverged)
    assert record is not None and record["outcome"] == "diverged" and "NaN/Inf" in record["error"]
    assert record["log"] == str(diverged / "train.log") and "NaN/Inf" in (diverged / "train.log").read_text()
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: 1 of 2 jobs failed: {diverged}; see {diverged / 'train.log'}"
    assert "Traceback" not in result.stderr + result.stdout

    rerun = run_cli(
        "tl-train", "-m", "model.optimizer.lr=0.001", "debug=tiny", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert rerun.returncode == 0, rerun.stderr  # a sweep with no failed job ends as before


def test_a_crash_keeps_its_traceback_in_the_job_log_and_out_of_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        try:
            raise KeyError("lost")
        except KeyError as err:
            reason = record_failure(tmp_path, err)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert reason == "KeyError: 'lost'"
    assert capsys.readouterr().err == f"error: job {tmp_path.name}: KeyError: 'lost'\n"
    assert "Traceback" in (tmp_path / "train.log").read_text()
    assert json.loads((tmp_path / FAILED_FILE).read_text()) == {
        "outcome": "failed",
        "error": "KeyError: 'lost'",
        "log": str(tmp_path / "train.log"),
    }
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    record_failure(diverged, NonFiniteLoss("the training loss became NaN"))
    assert read_failure(diverged)["outcome"] == "diverged"


def _returned(job_dir: Path, status: JobStatus) -> JobReturn:
    ret = JobReturn(status=status)
    ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
    return ret


def test_the_summary_counts_and_names_the_failed_jobs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jobs = [tmp_path / name for name in ("a", "b", "c")]
    for job in jobs:
        job.mkdir()
    (jobs[2] / "train.log").write_text("")
    returns = [
        _returned(jobs[0], JobStatus.COMPLETED),
        _returned(jobs[1], JobStatus.FAILED),
        _returned(jobs[2], JobStatus.FAILED),
    ]
    assert failure_summary(returns[:1]) is None
    assert failure_summary(returns) == f"2 of 3 jobs failed: {jobs[1]}, {jobs[2]}; see {jobs[2] / 'train.log'}"
    end_sweep(returns[:1])  # nothing failed: returns
    with pytest.raises(SystemExit) as stop:
        end_sweep(returns)
    assert stop.value.code == EXIT_JOBS_FAILED
    assert capsys.readouterr().err.startswith("error: 2 of 3 jobs failed")
