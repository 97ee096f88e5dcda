"""What a sweep does with a job that fails: the job records why, the sweep goes on, and ends with one line.

A job of a multirun that raises (a bad value for this job only, a diverged loss, a crash) must not take the
other jobs down with it. `sweep_job` wraps each job's task function: in a multirun it writes
``<job dir>/failed.json`` (the one-line reason, the job's log file and whether the run diverged), prints
``error: job <dir>: <reason>`` and hands Hydra an ordinary exception, which every launcher records as a FAILED
`JobReturn` instead of ending the process. After the last job, `end_sweep` prints one line,
``error: 2 of 12 jobs failed: <dirs>; see <dir>/train.log``, and exits with status 1.

Light on imports (no torch): Hydra plugins and ``tl-report`` use it.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transferlab.constants import FAILED_FILE
from transferlab.utils.errors import error_chain, find_user_error, one_line, process_rank, to_log_files
from transferlab.utils.io import write_json_atomic

EXIT_JOBS_FAILED = 1


class JobFailed(Exception):
    """A sweep job's failure, already reported in one line; Hydra stores it in the job's `JobReturn`."""


def sweep_job(run: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """In a multirun, turn a job's exception into a recorded failure (see the module docstring); single runs
    and interrupts (Ctrl-C, SIGTERM's exit) pass through unchanged."""

    @functools.wraps(run)
    def wrapper(cfg: Any) -> Any:
        job_dir = _multirun_job_dir()
        if job_dir is None:
            return run(cfg)
        (job_dir / FAILED_FILE).unlink(missing_ok=True)  # a re-launched job starts with a clean record
        try:
            return run(cfg)
        except Exception as err:
            message = record_failure(job_dir, err)
        # Raised outside the handler, so it carries no context: the CLI's user-error handler (which ends the
        # process) must not find the original error behind it; Hydra's job runner records it instead.
        raise JobFailed(message)

    return wrapper


def _multirun_job_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def record_failure(job_dir: Path, err: BaseException) -> str:
    """Write `err` to the job's log (with its traceback unless it is a user error) and to ``failed.json``;
    print the one line; return the reason."""
    user_error = find_user_error(err)
    reason = one_line(user_error) if user_error is not None else f"{type(err).__name__}: {one_line(err)}"
    details = "" if user_error is not None else "\n" + "".join(traceback.format_exception(err))
    to_log_files(f"error: {reason}{details}")  # the console gets the one line below, the log the traceback too
    log_file = job_log_file(job_dir)
    outcome = next((e.job_outcome for e in error_chain(err) if hasattr(e, "job_outcome")), "failed")
    if process_rank() == 0:
        record = {"outcome": outcome, "error": reason, "log": str(log_file) if log_file else None}
        write_json_atomic(job_dir / FAILED_FILE, record)
        print(f"error: job {job_dir.name}: {reason}", file=sys.stderr, flush=True)
    return reason


def job_log_file(job_dir: Path) -> Path | None:
    """The job's own log file (Hydra's ``<job dir>/<task>.log``), where the traceback of a crash goes."""
    files = [Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return next((f for f in files if f.parent == job_dir), None)


def last_error_line(log: Path) -> str | None:
    """A job's own one-line ``error: …`` (transferlab's user errors) from its log or console output, if any."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")), None)


def read_failure(job_dir: Path) -> dict[str, Any] | None:
    """A failed job's record (``failed.json``), or None."""
    try:
        return json.loads((job_dir / FAILED_FILE).read_text())
    except (OSError, ValueError):
        return None


def failure_summary(returns: Iterable[Any]) -> str | None:
    """``2 of 12 jobs failed: <dirs>; see <dir>/train.log`` for Hydra `JobReturn`s, or None if none failed."""
    from hydra.core.utils import JobStatus

    returns = list(returns)
    failed = [ret for ret in returns if ret.status == JobStatus.FAILED]
    if not failed:
        return None
    dirs = [_job_dir(ret) for ret in failed]
    where = next((log for d in dirs if d is not None and (log := _log_of(d))), None)  # the first failure's log
    names = ", ".join(str(d) if d is not None else "?" for d in dirs)
    see = f"; see {where}" if where else ""
    return f"{len(failed)} of {len(returns)} jobs failed: {names}{see}"


def _job_dir(ret: Any) -> Path | None:
    try:
        return Path(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:  # a launcher that could not even start the job
        return None


def _log_of(job_dir: Path) -> str | None:
    recorded = (read_failure(job_dir) or {}).get("log")
    return recorded or next((str(log) for log in sorted(job_dir.glob("*.log"))), None)


def end_sweep(returns: Iterable[Any]) -> None:
    """After the last job: one line and exit status 1 when any job failed."""
    summary = failure_summary(returns)
    if summary is not None:
        print(f"error: {summary}", file=sys.stderr, flush=True)
        sys.exit(EXIT_JOBS_FAILED)
