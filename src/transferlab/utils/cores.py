"""The CPU cores a process may use, and (for ``cpu_threads=auto_idle`` only) how many of them are idle now.

Torch-free: the parallel launcher (a Hydra plugin, imported at every start-up) sizes its jobs from the same
limits as `transferlab.utils.threads` sizes a run's threads.

The limits are what the machine *grants* the process, so the same command on the same machine always gets the
same count: CPU affinity (``taskset``, a container's cpuset, SLURM's task binding), a cgroup v2 CPU quota
(``docker --cpus``, Kubernetes limits) and ``SLURM_CPUS_PER_TASK``. The smallest wins.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

CPU_QUOTA = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
AFFINITY, QUOTA, SLURM = "affinity", "cgroup quota", "SLURM_CPUS_PER_TASK"  # sources, as metrics.json names them
SAMPLE_S = 0.2


def affinity() -> list[int]:
    """The cores this process may be scheduled on (all of them where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def quota_cores() -> int | None:
    """Whole cores a cgroup v2 CPU quota allows (at least 1), or None without a quota."""
    try:
        limit, period = CPU_QUOTA.read_text().split()
        if limit == "max":
            return None
        return max(1, math.floor(int(limit) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def slurm_cores() -> int | None:
    """``SLURM_CPUS_PER_TASK`` (the CPUs SLURM gave each task), or None where unset or not a positive count."""
    value = os.environ.get(SLURM, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def slurm_tasks_per_node() -> int | None:
    """``SLURM_NTASKS_PER_NODE``: how many tasks SLURM started on this node (one per DDP rank), or None."""
    value = os.environ.get("SLURM_NTASKS_PER_NODE", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def core_limits() -> list[tuple[str, int]]:
    """Every limit that applies, as (source, cores), affinity first."""
    limits = [(AFFINITY, max(1, len(affinity())))]
    if (quota := quota_cores()) is not None:
        limits.append((QUOTA, quota))
    if (slurm := slurm_cores()) is not None:
        limits.append((SLURM, slurm))
    return limits


def usable_cores() -> tuple[int, str]:
    """(cores, source): the smallest limit (the first listed on a tie)."""
    source, cores = min(core_limits(), key=lambda limit: limit[1])
    return cores, source


def allowed_cores() -> list[int]:
    """The core ids this process may use, trimmed to the quota / SLURM count (what the parallel launcher pins)."""
    return affinity()[: usable_cores()[0]] or [0]


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat does not exist."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """Cores kept busy by other work over a short sample of ``/proc/stat`` (0 where it cannot be measured)."""
    before = _cpu_times()
    if before is None:
        return 0.0
    time.sleep(sample_s)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return 0.0
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def free_cores() -> int:
    """Usable cores that are idle now (at least one): ``cpu_threads=auto_idle`` only, as it varies with load."""
    return max(1, min(usable_cores()[0], round((os.cpu_count() or 1) - busy_cores())))
