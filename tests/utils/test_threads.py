"""CPU threads and loader workers follow the cores that are free when a run starts; explicit choices win."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transferlab.utils import threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_budget", None)
    yield
    torch.set_num_threads(before)


def fake_machine(monkeypatch, cores: int, busy: float) -> None:
    """A `cores`-core machine on which other work keeps `busy` cores busy."""
    ticks = iter([(0, 0), (int(busy * 100), cores * 100)])
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)


@pytest.mark.parametrize(
    ("cores", "busy", "processes", "expected"), [(2, 0.0, 1, 2), (2, 1.0, 1, 1), (8, 2.9, 1, 5), (8, 0.1, 2, 4)]
)
def test_threads_are_the_free_cores_shared_by_the_processes(monkeypatch, cores, busy, processes, expected) -> None:
    fake_machine(monkeypatch, cores, busy)
    assert threads.configure_cpu(None, processes) == expected
    assert torch.get_num_threads() == expected
    assert threads.loader_workers() == expected - 1


def test_explicit_threads_and_omp_num_threads_win(monkeypatch) -> None:
    fake_machine(monkeypatch, 2, 1.0)
    assert threads.configure_cpu(3) == 3 and torch.get_num_threads() == 3
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.configure_cpu(None) == 2 and torch.get_num_threads() == 2, "the user's OMP_NUM_THREADS stands"


def test_a_cgroup_quota_caps_the_usable_cores(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "CPU_QUOTA", quota)
    quota.write_text("250000 100000\n")  # 2.5 CPUs
    assert threads.usable_cores() == 2
    quota.write_text("max 100000\n")
    assert threads.usable_cores() == 16


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="measures /proc/stat (Linux)")
def test_a_busy_core_is_measured_on_this_machine() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_cores(0.5) > 0.7  # the spinner alone keeps one core busy
    finally:
        spinner.kill()
        spinner.wait()
