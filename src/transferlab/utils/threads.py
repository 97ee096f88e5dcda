"""CPU threads and loader workers of a run: the same on every run of the same command on the same machine.

Which count, first match wins:

1. ``cpu_threads=<n>`` in the config (source ``cpu_threads``);
2. ``OMP_NUM_THREADS`` in the environment (source ``OMP_NUM_THREADS``; the parallel launcher sets it per job);
3. ``cpu_threads=auto_idle``: the cores idle when the run starts, sampled from ``/proc/stat`` (source ``auto_idle``);
4. ``cpu_threads: null`` (default): the cores the machine grants this process, i.e. the smallest of CPU affinity,
   the cgroup v2 quota and ``SLURM_CPUS_PER_TASK`` (source ``affinity``, ``cgroup quota`` or
   ``SLURM_CPUS_PER_TASK``; `transferlab.utils.cores`).

3 and 4 are shared between the processes the run starts on this machine (DDP ranks), unless SLURM started each
rank as its own task with its own CPUs. Loader workers (``data.num_workers: null``) are the budget but one.

Why ``auto_idle`` exists: torch starts one OpenMP thread per core it sees. On a shared machine that is a trap:
with one of two cores busy (another job, a compile, a browser), torch's two threads wait on each other at every
parallel region, and the default job took 12.5 min instead of 33 s (18 s with ``OMP_NUM_THREADS=1``); on 2 cores
with one kept busy, its first epoch took 13.1 s with one thread and 30.7 s with two. Sizing from the idle cores
avoids that, but a load sample differs from run to run, so the same seed could train with another
thread count and give other numbers; hence it is opt-in, and the default counts only what the machine grants.
The choice is recorded (`cpu_record`: metrics.json's ``cpu`` and the run header).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from transferlab.constants import AUTO_IDLE
from transferlab.utils.checks import CpuThreads
from transferlab.utils.cores import free_cores, slurm_tasks_per_node, usable_cores
from transferlab.utils.errors import UserError

MAX_LOADER_WORKERS = 8
CPU_THREADS, OMP = "cpu_threads", "OMP_NUM_THREADS"  # sources besides those of `transferlab.utils.cores`


@dataclass(frozen=True)
class CpuChoice:
    """Threads per process and where the count came from (what metrics.json records)."""

    threads: int
    source: str


_choice: CpuChoice | None = None  # decided once per process by `configure_cpu`


def check_cpu_threads(value: Any) -> None:
    """Refuse a ``cpu_threads`` that is not a count, null or auto_idle (API callers skip the CLI's checks)."""
    if (problem := CpuThreads().problem(value)) is not None:
        raise UserError(f"cpu_threads must be {problem}, got {value!r}. Pass cpu_threads=<n>, null or {AUTO_IDLE}")


def sharing(processes: int) -> int:
    """Processes of this run that share this process's cores: the DDP ranks on this machine, or 1 where SLURM
    started every rank as a task of its own (each then has its own affinity and SLURM_CPUS_PER_TASK)."""
    processes = max(1, processes)
    return 1 if processes > 1 and slurm_tasks_per_node() == processes else processes


def configure_cpu(threads: int | str | None, processes: int = 1) -> int:
    """Set torch's intra-op threads as the module docstring says, before any worker or thread pool starts;
    return the per-process budget that loader workers are sized from."""
    global _choice
    check_cpu_threads(threads)
    if isinstance(threads, int):
        _choice = CpuChoice(threads, CPU_THREADS)
    elif os.environ.get(OMP):  # torch already read it; leave it alone
        _choice = CpuChoice(max(1, torch.get_num_threads()), OMP)
        return _choice.threads
    elif threads == AUTO_IDLE:
        _choice = CpuChoice(max(1, free_cores() // sharing(processes)), AUTO_IDLE)
    else:
        cores, source = usable_cores()
        _choice = CpuChoice(max(1, cores // sharing(processes)), source)
    torch.set_num_threads(_choice.threads)
    return _choice.threads


def loader_workers() -> int:
    """DataLoader worker processes when the data config says ``num_workers: null``: the budget but one core
    (which the training loop itself uses), none on a single core."""
    budget = _choice.threads if _choice is not None else usable_cores()[0]
    return min(MAX_LOADER_WORKERS, max(0, budget - 1))


def cpu_record(workers: int | None) -> dict[str, Any]:
    """What metrics.json records: torch's threads, the loader workers (`workers`: the datamodule's own count
    where it set one, else `loader_workers`) and the source of the thread count."""
    return {
        "threads": torch.get_num_threads(),
        "loader_workers": loader_workers() if workers is None else workers,
        "source": _choice.source if _choice is not None else "torch default",
    }
