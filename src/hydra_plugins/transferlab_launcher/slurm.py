"""transferlab's SLURM launcher (``hydra/launcher=slurm``): hydra-submitit-launcher's, with what a cluster
user needs on top.

* **One-line errors.** A job SLURM refuses (unknown partition, more CPUs or GPUs than a node has) and a job
  that fails on the cluster end the sweep with ``error: …`` and exit status 2 instead of a submitit
  traceback; a failed job's message names its SLURM log and quotes its own ``error:`` line when it has one.
* **Job states from squeue.** submitit polls ``sacct``, which needs SLURM's accounting database: without one
  every poll printed "Slurm accounting storage is disabled" and "Bypassing sacct error" (three times over),
  and a job that died without a result was never noticed. `SqueueWatcher` reads the same states from
  ``squeue``, which every cluster answers, and its error output stays out of the console.
* **Jobs that can never start** (more CPUs, GPUs or time than the partition allows: SLURM leaves them pending
  with reason ``PartitionConfig`` and friends) are cancelled with a one-line error instead of a sweep that
  waits forever.

Hydra only loads launcher plugins from the ``hydra_plugins`` namespace, hence this package's place. It
imports nothing heavy: Hydra imports every plugin module at start-up, ``--help`` included.
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

EXIT_USER_ERROR = 2  # as transferlab.utils.errors (not imported: plugins must load fast)
RESOURCE_KEYS = "hydra.launcher.partition (sinfo lists them), cpus_per_task, mem_gb, gpus_per_node, timeout_min"


# Pending reasons SLURM gives a job that no amount of waiting will start.
NEVER_STARTS = {
    "PartitionConfig": "it asks for more CPUs, GPUs or memory than a node of the partition has",
    "PartitionNodeLimit": "it asks for more nodes than the partition has",
    "PartitionTimeLimit": "its timeout_min exceeds the partition's time limit",
    "BadConstraints": "no node satisfies its constraints",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QOS is not valid",
    "QOSMaxWallDurationPerJobLimit": "its timeout_min exceeds the QOS time limit",
}
# squeue's state names where they differ from sacct's (which submitit's completion test knows).
SQUEUE_STATES = {
    "CONFIGURING": "PENDING",
    "REQUEUE_HOLD": "REQUEUED",
    "REQUEUE_FED": "REQUEUED",
    "SUSPENDED": "RUNNING",
}


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from submitit.core.utils import FailedJobError, UncompletedJobError
        from submitit.slurm.slurm import SlurmJob

        logging.getLogger("submitit").setLevel(logging.ERROR)
        watcher = squeue_watcher_class()(delay_s=5)
        SlurmJob.watcher = watcher  # a class attribute: every job of this process polls through it
        failures = (FailedJobError, UncompletedJobError)
        try:
            returns = super().launch(job_overrides, initial_job_idx)
        except failures as err:
            self.fail(watcher.never_starts or describe_failure(str(err)))
        for job in returns:  # a job submitit gave up on (e.g. requeued max_num_timeout times) returns its error
            error = getattr(job, "_return_value", None)
            if isinstance(error, failures):
                self.fail(describe_failure(str(error)))
        return returns

    @staticmethod
    def fail(message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


@functools.cache
def squeue_watcher_class() -> type:
    """`SqueueWatcher`, defined on first use: submitit is imported only when a sweep is launched."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        """submitit's job-state poller, reading ``squeue`` (all states, one line per array task) instead of sacct."""

        def __init__(self, delay_s: int = 5) -> None:
            super().__init__(delay_s=delay_s)
            self.never_starts: str | None = None

        def _make_command(self) -> list[str] | None:
            ids = sorted({job.split("_")[0] for job in self._registered - self._finished})
            if not ids:
                return None
            squeue = 'squeue --array --states=all --noheader -o "%i|%T|%N|%r" -j "$0" 2>/dev/null || true'
            return ["sh", "-c", f'echo "JobID|State|NodeList|Reason"; {squeue}', ",".join(ids)]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            info = super().read_info(string)
            for job_id, stats in info.items():
                stats["State"] = SQUEUE_STATES.get(stats.get("State", ""), stats.get("State", ""))
                reason = stats.get("Reason", "")
                if stats["State"] == "PENDING" and reason in NEVER_STARTS and self.never_starts is None:
                    self.never_starts = (
                        f"SLURM will never start job {job_id}: {NEVER_STARTS[reason]} (pending reason {reason}); "
                        f"it was cancelled. Check {RESOURCE_KEYS}"
                    )
                    subprocess.run(["scancel", job_id.split("_")[0]], capture_output=True, check=False)
            return info

    return SqueueWatcher


def describe_failure(message: str) -> str:
    """One line for a submitit failure: a refused submission (sbatch's own words) or a failed job (its own
    ``error:`` line, from the error stream submitit quotes or the job's log, and where that log is)."""
    refused = re.search(r"sbatch: error: (.+)", message)
    if refused:
        return f"SLURM refused the job: {refused.group(1).strip()}. Check {RESOURCE_KEYS}"
    if "timed-out too many times" in message:
        return (
            "a SLURM job hit its time limit more than hydra.launcher.max_num_timeout times (each time requeued "
            "from its last.ckpt). Raise hydra.launcher.timeout_min or max_num_timeout; re-launching the same "
            "sweep resumes it"
        )
    logs = [Path(p) for p in re.findall(r"(/\S+_log\.err)", message)]
    logs += [Path(f"{p}_log.err") for p in re.findall(r"(/\S+)_result\.pkl", message)]
    err_log = next((p for p in logs if p.is_file()), logs[0] if logs else None)
    where = f"; its log: {err_log}" if err_log else ""
    own = [line.removeprefix("error: ") for line in message.splitlines() if line.startswith("error: ")]
    if not own and err_log is not None:
        own = [line for line in [last_error_line(err_log)] if line]
    if own:
        return f"a SLURM job failed: {own[-1]}{where}"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)), None)
    reason = reason or (lines[-1] if lines else "no reason given")
    return f"a SLURM job failed ({reason[:200]}){where}"


def last_error_line(log: Path) -> str | None:
    """The job's own one-line ``error: …`` (transferlab's user errors), if its log has one."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")), None)
