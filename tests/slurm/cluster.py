"""A real single-node SLURM cluster for the `slurm` tests: munge, slurmctld and slurmd on this machine.

``python tests/slurm/cluster.py start|stop|status`` runs it by hand; the tests use `SlurmCluster` through a
session fixture. Debian's ``slurm-wlm`` and ``munge`` are installed with apt-get when missing (root only).
Everything the daemons write (config, state, spool, logs, pid files) lives under one folder; the cluster
has one partition, ``debug``, with this machine's CPUs as the consumable resource and no accounting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
PARTITION = "debug"


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started; the message says why (tests skip with it)."""


def run(*args: str, timeout: float = 60, check: bool = True, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode:
        raise ClusterUnavailable(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return result.stdout


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable(
            "SLURM is not installed and cannot be (needs root and apt-get): apt-get install slurm-wlm munge"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "install", "-y", "-q", *PACKAGES, timeout=900, env=env)


def ensure_munged() -> None:
    """munged runs (one for the machine: its socket in /run/munge serves every cluster and network namespace)."""
    if run("pgrep", "-x", "munged", check=False).strip() == "":
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            run("mungekey", "--create", "--force")
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        run("munged", "--force", "--num-threads=2")


class SlurmCluster:
    """slurmctld + slurmd for this host, configured under `root`; `env` is what clients need (SLURM_CONF)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.host = socket.gethostname()
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for folder in ("state", "spool", "log", "run"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        settings = [f"{key}={value}" for key, value in self.settings().items()]
        partition = f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
        self.conf.write_text("\n".join([*settings, *self.node_lines(), partition, ""]))

    def settings(self) -> dict[str, str]:
        """slurm.conf's cluster-wide settings (a subclass changes some: tests/slurm/two_nodes.py)."""
        return {
            "ClusterName": "transferlab",
            "SlurmctldHost": self.host,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "StateSaveLocation": str(self.root / "state"),
            "SlurmdSpoolDir": str(self.root / "spool"),
            "SlurmctldPidFile": str(self.root / "run" / "slurmctld.pid"),
            "SlurmdPidFile": str(self.root / "run" / "slurmd.pid"),
            "SlurmctldLogFile": str(self.root / "log" / "slurmctld.log"),
            "SlurmdLogFile": str(self.root / "log" / "slurmd.log"),
            "SlurmctldPort": "6817",
            "SlurmdPort": "6818",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "MpiDefault": "none",
            "ReturnToService": "2",
            "SchedulerType": "sched/backfill",
            "AccountingStorageType": "accounting_storage/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "JobCompType": "jobcomp/none",
            "KillWait": "30",
            "MinJobAge": "3600",  # finished jobs stay visible to scontrol for the tests
            "SchedulerParameters": "bf_interval=1,sched_min_interval=100000",
        }

    def node_lines(self) -> list[str]:
        return [f"NodeName={self.host} CPUs={os.cpu_count() or 1} State=UNKNOWN"]

    def start(self, timeout: float = 60) -> None:
        ensure_installed()
        self.write_config()
        ensure_munged()
        self.stop_daemons()
        run("slurmctld", "-f", str(self.conf), env=self.env)
        run("slurmd", "-f", str(self.conf), env=self.env)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = run("sinfo", "-h", "-o", "%T", env=self.env, check=False).strip()
            if state == "idle":
                return
            time.sleep(0.5)
        log = (self.root / "log" / "slurmctld.log").read_text()[-500:] if (self.root / "log").exists() else ""
        raise ClusterUnavailable(f"the node did not become idle within {timeout:.0f} s (state {state!r}). {log}")

    def stop_daemons(self) -> None:
        for daemon in ("slurmd", "slurmctld"):
            pidfile = self.root / "run" / f"{daemon}.pid"
            pid = int(pidfile.read_text()) if pidfile.exists() and pidfile.read_text().strip() else None
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            run("pkill", "-x", daemon, check=False)
        for _ in range(50):
            if not run("pgrep", "-x", "slurmctld|slurmd", check=False).strip():
                return
            time.sleep(0.1)

    def stop(self) -> None:
        run("scancel", "--full", "-u", "root", env=self.env, check=False)
        self.stop_daemons()

    def settle(self, timeout: float = 60) -> None:
        """Cancel whatever is queued or running and wait until the node is idle again (resumed if drained)."""
        run("scancel", "--full", "-u", "root", env=self.env, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = run("sinfo", "-h", "-o", "%T", env=self.env, check=False).strip()
            if state == "idle" and not self.squeue().strip():
                return
            if state.startswith("drain"):
                run("scontrol", "update", f"nodename={self.host}", "state=resume", env=self.env, check=False)
            time.sleep(0.5)

    def squeue(self) -> str:
        return run("squeue", "-h", "-o", "%i %j %T", env=self.env)

    def finished(self, job_id: str, timeout: float = 120) -> dict[str, str]:
        """`job` once the job has left the RUNNING/COMPLETING states (its result may be read before it exits)."""
        deadline = time.monotonic() + timeout
        fields = self.job(job_id)
        while (
            fields.get("JobState") in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
            fields = self.job(job_id)
        return fields

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields of `job_id` (finished jobs included, for MinJobAge)."""
        text = run("scontrol", "show", "job", "-o", job_id, env=self.env)
        return dict(item.split("=", 1) for item in text.split() if "=" in item)


if __name__ == "__main__":
    cluster = SlurmCluster(Path(os.environ.get("TRANSFERLAB_SLURM_DIR", "/tmp/transferlab-slurm")))
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "start":
        cluster.start()
        print(f"cluster up: export SLURM_CONF={cluster.conf}")
    elif command == "stop":
        cluster.stop()
    else:
        print(run("sinfo", env=cluster.env, check=False))
