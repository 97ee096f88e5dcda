"""CPU threads and loader workers: from what the machine grants (affinity, cgroup quota, SLURM_CPUS_PER_TASK),
never from a load sample unless asked (auto_idle); explicit choices win; the choice is recorded."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transferlab.utils import cores, threads
from transferlab.utils.errors import UserError

BRIEF = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch, tmp_path: Path):
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cores, "CPU_QUOTA", tmp_path / "no-cgroup" / "cpu.max")  # no quota unless a test writes one
    monkeypatch.setattr(threads, "_choice", None)
    yield
    torch.set_num_threads(before)


def fake_machine(monkeypatch, n_cores: int, busy: float = 0.0) -> None:
    """A `n_cores`-core machine on which other work keeps `busy` cores busy (seen only by a /proc/stat sample)."""
    ticks = iter([(0, 0), (int(busy * 100), n_cores * 100)])
    monkeypatch.setattr(cores, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(cores.os, "cpu_count", lambda: n_cores)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(n_cores)), raising=False)
    monkeypatch.setattr(cores.time, "sleep", lambda s: None)


def quota(monkeypatch, tmp_path: Path, text: str) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    monkeypatch.setattr(cores, "CPU_QUOTA", path)


def test_default_threads_follow_the_affinity_not_the_load(monkeypatch) -> None:
    fake_machine(monkeypatch, 8, busy=5.0)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)  # taskset -c 0-3
    assert threads.configure_cpu(None) == 4 and torch.get_num_threads() == 4
    assert threads.loader_workers() == 3
    assert threads.cpu_record(None) == {"threads": 4, "loader_workers": 3, "source": "affinity"}


def test_a_cgroup_quota_caps_the_cores(monkeypatch, tmp_path: Path) -> None:
    fake_machine(monkeypatch, 16)
    quota(monkeypatch, tmp_path, "250000 100000\n")  # docker --cpus=2.5
    assert cores.usable_cores() == (2, "cgroup quota")
    assert threads.configure_cpu(None) == 2 and threads.cpu_record(None)["source"] == "cgroup quota"
    quota(monkeypatch, tmp_path, "max 100000\n")
    assert cores.usable_cores() == (16, "affinity")


def test_slurm_cpus_per_task_caps_the_cores(monkeypatch, tmp_path: Path) -> None:
    fake_machine(monkeypatch, 16)
    quota(monkeypatch, tmp_path, "800000 100000\n")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert threads.configure_cpu(None) == 3 and threads.cpu_record(7) == {
        "threads": 3,
        "loader_workers": 7,  # the datamodule's own count (data.num_workers) is what is recorded
        "source": "SLURM_CPUS_PER_TASK",
    }
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "lots")  # not a count: ignored, the next smallest wins
    assert cores.usable_cores() == (8, "cgroup quota")


def test_the_parallel_launcher_pins_jobs_within_the_same_limits(monkeypatch, tmp_path: Path) -> None:
    from hydra_plugins.transferlab_launcher import parallel

    fake_machine(monkeypatch, 16)
    assert parallel.usable_cores() == list(range(16))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert parallel.usable_cores() == [0, 1, 2]
    quota(monkeypatch, tmp_path, "200000 100000\n")
    assert parallel.usable_cores() == [0, 1]


@pytest.mark.parametrize(("processes", "tasks_per_node", "expected"), [(1, None, 8), (2, None, 4), (2, "2", 8)])
def test_ddp_ranks_share_the_cores_unless_slurm_gave_each_its_own(
    monkeypatch, processes: int, tasks_per_node: str | None, expected: int
) -> None:
    fake_machine(monkeypatch, 8)
    if tasks_per_node is not None:
        monkeypatch.setenv("SLURM_NTASKS_PER_NODE", tasks_per_node)
    assert threads.configure_cpu(None, processes) == expected


@pytest.mark.parametrize(
    ("n_cores", "busy", "processes", "expected"), [(2, 0.0, 1, 2), (2, 1.0, 1, 1), (8, 2.9, 1, 5), (8, 0.1, 2, 4)]
)
def test_auto_idle_uses_the_idle_cores_shared_by_the_processes(monkeypatch, n_cores, busy, processes, expected) -> None:
    fake_machine(monkeypatch, n_cores, busy)
    assert threads.configure_cpu("auto_idle", processes) == expected
    assert torch.get_num_threads() == expected
    assert threads.loader_workers() == expected - 1
    assert threads.cpu_record(None)["source"] == "auto_idle"


def test_explicit_threads_win_then_omp_num_threads(monkeypatch) -> None:
    fake_machine(monkeypatch, 2, 1.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.configure_cpu(3) == 3 and torch.get_num_threads() == 3
    assert threads.cpu_record(None)["source"] == "cpu_threads"
    torch.set_num_threads(2)
    for value in (None, "auto_idle"):
        assert threads.configure_cpu(value) == 2 and torch.get_num_threads() == 2, "the user's OMP_NUM_THREADS stands"
        assert threads.cpu_record(None)["source"] == "OMP_NUM_THREADS"


@pytest.mark.parametrize("value", [0, -1, 1.5, "four", "AUTO_IDLE", True])
def test_a_bad_cpu_threads_is_one_line_that_says_what_is_allowed(value) -> None:
    with pytest.raises(UserError, match=r"^cpu_threads must be an integer >= 1, null \(.*\) or auto_idle .*got"):
        threads.configure_cpu(value)


def test_the_cli_refuses_a_bad_cpu_threads_before_any_run(make_cfg) -> None:
    from transferlab.utils.checks import check_values

    for good in ("cpu_threads=2", "cpu_threads=null", "cpu_threads=auto_idle"):
        check_values(make_cfg(good))
    with pytest.raises(UserError, match=r"cpu_threads must be an integer >= 1, .* or auto_idle .*, got 'idle'"):
        check_values(make_cfg("cpu_threads=idle"))


@pytest.mark.slow  # two short training runs: ~30 s on 2 shared cores
def test_same_seed_same_machine_same_numbers_and_threads_whatever_the_load(monkeypatch, make_cfg, capsys) -> None:
    """The load is faked to differ between the two runs (one busy core, then none): the load-sampling default of
    old gave them 1 and then 2 threads. Now both get what affinity grants, and identical metrics."""
    import json

    from transferlab.train import run

    fake_machine(monkeypatch, 2)
    loads = iter([(0, 0), (100, 200), (0, 0), (0, 200)])  # run a: 1 of 2 cores busy; run b: idle
    monkeypatch.setattr(cores, "_cpu_times", lambda: next(loads))
    summaries = []
    for out in ("a", "b"):
        cfg = make_cfg("seed=0", *BRIEF, out=out)
        run(cfg)
        summaries.append(json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text()))
    a, b = summaries
    assert a["cpu"] == b["cpu"] == {"threads": 2, "loader_workers": a["cpu"]["loader_workers"], "source": "affinity"}
    assert capsys.readouterr().out.count("cpu (2 threads, 0 loader workers; from affinity)") == 2, "the header"
    timings = {name for name in a["metrics"] if name.startswith("time/")}
    assert {k: v for k, v in a["metrics"].items() if k not in timings} == {
        k: v for k, v in b["metrics"].items() if k not in timings
    }


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="measures /proc/stat (Linux)")
def test_a_busy_core_is_measured_on_this_machine() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert cores.busy_cores(0.5) > 0.7  # the spinner alone keeps one core busy
    finally:
        spinner.kill()
        spinner.wait()
