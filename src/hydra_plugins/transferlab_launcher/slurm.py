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
imports nothing heavy: Hydra imports every plugin module at start-up, ``--help`` included. For the same reason
it loads without the ``[slurm]`` extra (hydra-submitit-launcher, submitit): stand-ins then end a SLURM sweep in
the one line ``pip install "transferlab[slurm]"``.
"""

import functools
import logging
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher

EXIT_USER_ERROR = 2  # as transferlab.utils.errors (not imported: plugins must load fast)
log = logging.getLogger(__name__)


@dataclass
class MissingExtraConf:
    """Stands in for submitit's settings without the ``[slurm]`` extra (see `MissingExtraLauncher`)."""


class MissingExtraLauncher(Launcher):
    """Stands in for hydra-submitit-launcher's launcher without the ``[slurm]`` extra: Hydra imports this module
    at every start-up, which must stay quiet (no "Error importing" warning), and a sweep that asks for SLURM
    anyway ends in the one line naming the extra (the CLI's preflight says it first)."""

    def __init__(self, **_params: Any) -> None:
        self.refuse()

    @staticmethod
    def refuse() -> None:
        """End the process in the one line naming the ``[slurm]`` extra."""
        from transferlab.utils.errors import UserError
        from transferlab.utils.extras import require_slurm

        try:
            require_slurm()
        except UserError as err:
            SlurmLauncher.fail(str(err))
        SlurmLauncher.fail("hydra/launcher=slurm could not load hydra-submitit-launcher. Reinstall the [slurm] extra")

    def setup(self, **_kwargs: Any) -> None:  # __init__ already ended the process; refuse again if ever reached
        self.refuse()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        self.refuse()


try:  # the [slurm] extra
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

    HAVE_SLURM_EXTRA = True
except ImportError:
    SlurmQueueConf = MissingExtraConf  # type: ignore[misc,assignment]
    SubmititSlurmLauncher = MissingExtraLauncher  # type: ignore[misc,assignment]
    HAVE_SLURM_EXTRA = False

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


@dataclass
class TransferlabSlurmConf(SlurmQueueConf):
    """submitit's SLURM settings plus ``wait``: false submits the sweep and returns (submit and go)."""

    _target_: str = "hydra_plugins.transferlab_launcher.slurm.SlurmLauncher"
    wait: bool = True


# The schema conf/hydra/launcher/slurm.yaml starts from (a structured config refuses keys it does not declare).
# Without the [slurm] extra there are no submitit settings to declare: a plain node takes slurm.yaml's keys, so
# hydra/launcher=slurm still composes and the launcher (or the CLI's preflight first) says which extra to install.
ConfigStore.instance().store(
    group="hydra/launcher",
    name="transferlab_slurm",
    node=TransferlabSlurmConf if HAVE_SLURM_EXTRA else {"_target_": TransferlabSlurmConf._target_, "wait": True},
    provider="transferlab",
)


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, **params: Any) -> None:
        self.wait = bool(params.pop("wait", True))  # not a submitit parameter: never handed to the executor
        super().__init__(**params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        """Submit one SLURM job per sweep job; with ``wait`` collect every job's `JobReturn` (a job that died
        without a result gets a FAILED one and its ``failed.json``), without it return at once."""
        from hydra.core.utils import JobReturn, JobStatus
        from submitit.core.utils import FailedJobError, UncompletedJobError
        from submitit.slurm.slurm import SlurmJob

        from transferlab.upstream.hydra_job_return import stored_value

        logging.getLogger("submitit").setLevel(logging.ERROR)
        watcher = squeue_watcher_class()(delay_s=5)
        SlurmJob.watcher = watcher  # a class attribute: every job of this process polls through it
        failures = (FailedJobError, UncompletedJobError)
        try:
            jobs = self.submit(job_overrides, initial_job_idx)
        except failures as err:  # sbatch refused the array: nothing runs, a user error for the whole sweep
            self.fail(describe_failure(str(err)))
        dirs = [self.job_dir(o, initial_job_idx + i, job.job_id) for i, (o, job) in enumerate(zip(job_overrides, jobs))]
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        write_manifest(sweep_dir, [(job.job_id, d, list(o)) for job, d, o in zip(jobs, dirs, job_overrides)])
        if not self.wait:
            print_submitted(sweep_dir, [job.job_id for job in jobs])
            return [
                JobReturn(overrides=list(o), hydra_cfg=runtime_cfg(d), status=JobStatus.UNKNOWN)
                for o, d in zip(job_overrides, dirs)
            ]
        returns = []
        for job, overrides, job_dir in zip(jobs, job_overrides, dirs):
            try:
                ret = job.results()[0]
                error = stored_value(ret)  # a job submitit gave up on returns its error
                if isinstance(error, failures):
                    raise error
            except failures as err:
                if watcher.never_starts:  # cancelled by the watcher: the whole sweep asks for the impossible
                    self.fail(watcher.never_starts)
                ret = died(job, list(overrides), job_dir, err)
            returns.append(ret)
        return returns

    def submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """hydra-submitit-launcher's submission (its `launch` without the wait): the submitit jobs, in order."""
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        assert self.config is not None
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": self.params[k] for k in ("max_num_timeout",) if k in self.params},
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return list(executor.map_array(self, *zip(*job_params)))

    def job_dir(self, overrides: Sequence[str], idx: int, job_id: str) -> Path:
        """Where job `idx` writes (what Hydra's `run_job` will make of ``hydra.sweep.dir``/``subdir``), known
        before the job starts: for the manifest and for a job that dies before it gets there."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf, open_dict

        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.id = job_id
            config.hydra.job.num = idx
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the sub-directory's name
        try:
            sub = OmegaConf.select(config, "hydra.sweep.subdir")
            return Path(str(config.hydra.sweep.dir), str(sub)).absolute()
        finally:
            HydraConfig.instance().cfg = saved

    @staticmethod
    def fail(message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def runtime_cfg(job_dir: Path) -> Any:
    """The part of a job's Hydra config that `transferlab.sweeps.failure_summary` reads: its directory."""
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})


def died(job: Any, overrides: list[str], job_dir: Path, err: BaseException) -> Any:
    """A FAILED `JobReturn` for a SLURM job that ended without a result (killed, out of memory, cancelled, out
    of time), with its ``failed.json``: the job's own last ``error:`` line, else how SLURM ended it."""
    from hydra.core.utils import JobReturn, JobStatus

    from transferlab.constants import FAILED_FILE
    from transferlab.sweeps import JobFailed, last_error_line, read_failure
    from transferlab.utils.io import write_json_atomic

    err_log = Path(job.paths.stderr)
    own = last_error_line(err_log)
    if own is not None:
        reason = own.split(": ", 1)[1] if own.startswith(f"job {job_dir.name}: ") else own
    elif "timed-out too many times" in str(err):
        reason = describe_failure(str(err))
    else:
        state = getattr(job, "state", "UNKNOWN")
        reason = f"SLURM job {job.job_id} ended without a result (state {state})"
    log_file = err_log if err_log.is_file() else None
    recorded = read_failure(job_dir)
    if recorded is None or recorded.get("error") != reason:  # the job's own record (died after it) stays
        job_dir.mkdir(parents=True, exist_ok=True)
        record = {"outcome": "failed", "error": reason, "log": str(log_file) if log_file else None}
        write_json_atomic(job_dir / FAILED_FILE, record)
    where = f"; its log: {log_file}" if log_file else ""
    print(f"error: job {job_dir.name}: {reason}{where}", file=sys.stderr, flush=True)
    ret = JobReturn(overrides=overrides, hydra_cfg=runtime_cfg(job_dir), status=JobStatus.FAILED)
    ret.return_value = JobFailed(reason)
    return ret


def write_manifest(sweep_dir: Path, jobs: list[tuple[str, Path, list[str]]]) -> None:
    """``<sweep dir>/slurm_jobs.json``: SLURM job id, job directory and overrides of every submitted job, so
    ``tl-report`` can name jobs still pending (which have no directory yet) and ask ``squeue`` about them. A
    re-launch into the same sweep updates the entries of the jobs it submits again."""
    import json

    from transferlab.constants import SLURM_MANIFEST
    from transferlab.utils.io import write_json_atomic

    path = sweep_dir / SLURM_MANIFEST
    try:
        known = {entry["dir"]: entry for entry in json.loads(path.read_text())["jobs"]}
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    for job_id, job_dir, overrides in jobs:
        known[str(job_dir)] = {"job_id": job_id, "dir": str(job_dir), "overrides": overrides}
    write_json_atomic(path, {"jobs": list(known.values())})


def print_submitted(sweep_dir: Path, job_ids: list[str]) -> None:
    """What submit-and-go leaves on the console: the job ids, where the results go and how to look later."""
    print(f"Submitted {len(job_ids)} SLURM job(s): {' '.join(job_ids)}", flush=True)
    print(f"Sweep directory: {sweep_dir}", flush=True)
    print(f"Look later: tl-report {sweep_dir}", flush=True)


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
    from transferlab.sweeps import last_error_line

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
