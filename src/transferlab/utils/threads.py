"""CPU threads and loader workers from the cores this process can actually use right now.

torch starts one OpenMP thread per core it sees. On a shared machine that is a trap: with one of two cores busy
(another job, a compile, a browser), torch's two threads wait on each other at every parallel region, and the
default job took 12.5 min instead of 33 s (18 s with ``OMP_NUM_THREADS=1``). So the budget is the cores this
process may run on (affinity and cgroup quota) that are idle when the run starts, measured from ``/proc/stat``
over a fifth of a second, shared between the processes a run starts on this machine (DDP ranks). An explicit
choice always wins: ``cpu_threads=<n>`` in the config, or ``OMP_NUM_THREADS`` in the environment.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

CPU_QUOTA = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
SAMPLE_S = 0.2
MAX_LOADER_WORKERS = 8
_budget: int | None = None  # cores per process, decided once by `configure_cpu`


def usable_cores() -> int:
    """Cores this process may be scheduled on: CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        limit, period = CPU_QUOTA.read_text().split()
        if limit != "max":
            cores = min(cores, max(1, math.floor(int(limit) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat does not exist."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """Cores kept busy by other work over a short sample (0 where it cannot be measured)."""
    before = _cpu_times()
    if before is None:
        return 0.0
    time.sleep(sample_s)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return 0.0
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def free_cores() -> int:
    """Usable cores that are idle now (at least one)."""
    return max(1, min(usable_cores(), round((os.cpu_count() or 1) - busy_cores())))


def configure_cpu(threads: int | None, processes: int = 1) -> int:
    """Set torch's intra-op threads: `threads` if given, else this process's share of the free cores.

    ``OMP_NUM_THREADS`` set by the user is left alone. Returns the per-process core budget that loader workers
    are sized from."""
    global _budget
    if threads is not None:
        _budget = max(1, int(threads))
    elif os.environ.get("OMP_NUM_THREADS"):
        _budget = max(1, torch.get_num_threads())
        return _budget
    else:
        _budget = max(1, free_cores() // max(1, processes))
    torch.set_num_threads(_budget)
    return _budget


def loader_workers() -> int:
    """DataLoader worker processes when the data config says ``num_workers: null``: the budget but one core
    (which the training loop itself uses), none on a single core."""
    budget = _budget if _budget is not None else free_cores()
    return min(MAX_LOADER_WORKERS, max(0, budget - 1))
