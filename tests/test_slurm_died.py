"""The SLURM launcher's record of a job that ended without a result (no cluster: a stand-in for submitit's job).
The real cluster's version is tests/slurm/test_slurm.py::test_a_job_killed_on_the_cluster_…."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from hydra.core.utils import JobStatus

from hydra_plugins.transferlab_launcher.slurm import died
from transferlab.constants import FAILED_FILE
from transferlab.sweeps import JobFailed, failure_summary, read_failure


def slurm_job(folder: Path, log_text: str, state: str) -> SimpleNamespace:
    folder.mkdir(parents=True, exist_ok=True)
    stderr = folder / "5_1_0_log.err"
    stderr.write_text(log_text)
    return SimpleNamespace(job_id="5_1", state=state, paths=SimpleNamespace(stderr=stderr))


def test_a_job_killed_without_an_error_line_is_recorded_with_its_slurm_state(tmp_path, capsys) -> None:
    job = slurm_job(tmp_path / ".submitit", "srun: error: node1: task 0: Killed\n", "OUT_OF_MEMORY")
    job_dir = tmp_path / "seed=1"  # the job died before Hydra made its folder
    ret = died(job, ["seed=1"], job_dir, RuntimeError("no output"))
    reason = "SLURM job 5_1 ended without a result (state OUT_OF_MEMORY)"
    assert read_failure(job_dir) == {"outcome": "failed", "error": reason, "log": str(job.paths.stderr)}
    assert ret.status == JobStatus.FAILED and isinstance(ret._return_value, JobFailed)
    assert failure_summary([ret]) == f"1 of 1 jobs failed: {job_dir}; see {job.paths.stderr}"
    assert capsys.readouterr().err == f"error: job seed=1: {reason}; its log: {job.paths.stderr}\n"


def test_a_job_that_recorded_its_failure_and_then_died_keeps_its_own_record(tmp_path) -> None:
    job_dir = tmp_path / "lr=1e9"
    job_dir.mkdir()
    own = {"outcome": "diverged", "error": "the training loss became NaN/Inf", "log": str(job_dir / "train.log")}
    (job_dir / FAILED_FILE).write_text(json.dumps(own))
    log = "error: job lr=1e9: the training loss became NaN/Inf\nslurmstepd: error: *** STEP CANCELLED ***\n"
    died(slurm_job(tmp_path / ".submitit", log, "CANCELLED"), ["lr=1e9"], job_dir, RuntimeError("no output"))
    assert read_failure(job_dir) == own

    other = tmp_path / "lr=1"  # no record of its own: its last `error:` line is the reason
    died(slurm_job(tmp_path / ".s2", "error: could not fetch the weights\n", "FAILED"), ["lr=1"], other, OSError())
    assert read_failure(other)["error"] == "could not fetch the weights"
