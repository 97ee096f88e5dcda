"""A disk that fills up, through the real commands: each ends with one ``error:`` line naming the file and the free
space, leaves no partial or temporary file, and keeps the last good checkpoint and report whole.

The disks are tmpfs mounts of a chosen size (`small_disk` in conftest: the tests run as root here and in CI, and
skip elsewhere). A run is sized so that its first checkpoints fit and a later write does not."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import KEEP_LAST, SHORT, TINY, compose_config, run_cli, start_cli
from transferlab.trust import open_checkpoint

UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
STEPS_PER_EPOCH = 6  # debug=tiny: 48 training images, batches of 8
RUN_FAILS = ["logger=none", "trainer.max_epochs=3", "callbacks.model_checkpoint.last_every_minutes=0"]


def files_under(folder: Path) -> list[str]:
    """Every file under `folder`, as sorted relative paths (hidden ones too: a temporary file would show)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def fill(folder: Path) -> None:
    """Use up every free byte of the filesystem holding `folder`."""
    with open(folder / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint_sizes(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, int]:
    """The sizes of best.ckpt and last.ckpt after one debug=tiny epoch (a run in this process, on the normal disk)."""
    from transferlab.train import run

    out = tmp_path_factory.mktemp("measure")
    run(compose_config([*TINY, "logger=none", KEEP_LAST, *SHORT], out, "train"))
    GlobalHydra.instance().clear()
    return (out / "checkpoints" / "best.ckpt").stat().st_size, (out / "checkpoints" / "last.ckpt").stat().st_size


@pytest.fixture
def sized_disk(small_disk, checkpoint_sizes: tuple[int, int]) -> Path:
    """A disk where the first epoch's best.ckpt and last.ckpt fit, and then half a best.ckpt (no further write)."""
    best, last = checkpoint_sizes
    return small_disk(best + last + best // 2 + 256 * 1024)


def check_failed_run(result, run_dir: Path, rank_logs: tuple[str, ...] = ()) -> None:
    """One error line naming the checkpoint that did not fit and the space that was free; the first epoch's
    checkpoints whole (best.ckpt evaluable, last.ckpt resumable), nothing else left (but DDP ranks' `rank_logs`)."""
    line = one_error_line(result.stderr)
    found = re.fullmatch(
        rf"error: cannot write ({re.escape(str(run_dir))}/checkpoints/(best|last)\.ckpt): no space left on device "
        r"\((\d+(?:\.\d)?) (B|kB|MB) free\)\. Free space or pass hydra\.run\.dir=<a folder on another disk>",
        line,
    )
    assert found, line
    failed, free = Path(found[1]), float(found[3]) * UNITS[found[4]]
    assert free < failed.stat().st_size  # it could not fit: the file there now is the previous, larger one
    assert result.returncode == 2
    assert files_under(run_dir) == [
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "train.log",
        *rank_logs,
    ]  # no metrics.json (not finished), no temporary file
    best = open_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert best.build_task() is not None and not best.resumable
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == STEPS_PER_EPOCH and last["optimizer_states"]  # epoch 1's state, whole


def test_a_disk_that_fills_mid_run_ends_in_one_line_and_keeps_the_last_good_checkpoints(
    sized_disk: Path, tmp_path: Path
) -> None:
    run_dir = sized_disk / "run"
    result = run_cli("tl-train", *TINY, *RUN_FAILS, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "epoch 1/3" in result.stdout and "epoch 3/3" not in result.stdout, result.stdout
    check_failed_run(result, run_dir)


@pytest.mark.slow
def test_after_a_full_disk_the_same_command_resumes_once_there_is_space(
    sized_disk: Path, small_disk, tmp_path: Path
) -> None:
    run_dir = sized_disk / "run"
    check_failed_run(run_cli("tl-train", *TINY, *RUN_FAILS, f"hydra.run.dir={run_dir}", cwd=tmp_path), run_dir)
    small_disk.remount(sized_disk, "size=256m")  # space freed
    result = run_cli("tl-train", *TINY, *RUN_FAILS, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming unfinished job from {run_dir}/checkpoints/last.ckpt" in result.stdout
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 3 * STEPS_PER_EPOCH and summary["resumed_from"].endswith("last.ckpt")


@pytest.mark.slow
def test_under_ddp_rank_0s_failed_write_stops_every_rank(sized_disk: Path, tmp_path: Path) -> None:
    run_dir = sized_disk / "run"
    command = ["tl-train", *TINY, *RUN_FAILS, "trainer=ddp_sim", f"hydra.run.dir={run_dir}"]
    result = run_cli(*command, cwd=tmp_path, timeout=240)  # a rank left waiting would hang until then
    check_failed_run(result, run_dir, rank_logs=("train_rank1.log",))  # both ranks ended: none left waiting
    rank1 = (run_dir / "train_rank1.log").read_text()
    assert one_error_line(result.stderr) in rank1  # rank 1 stopped with the same error (told by rank 0)


@pytest.mark.parametrize(
    ("args", "unwritten", "key", "left"),
    [
        ([], "run/.hydra/config.yaml", "hydra.run.dir", ["filler", "run/train.log"]),  # Hydra's (empty) log
        (["-m", "seed=0,1"], "sweep/multirun.yaml", "hydra.sweep.dir", ["filler"]),
    ],
    ids=["run", "sweep"],
)
def test_a_disk_full_before_the_run_starts_is_one_line_and_leaves_no_empty_file(
    small_disk, tmp_path: Path, args: list[str], unwritten: str, key: str, left: list[str]
) -> None:
    disk = small_disk(16 * 1024)
    fill(disk)
    result = run_cli("tl-train", *args, *TINY, "logger=none", f"{key}={disk}/{unwritten.split('/')[0]}", cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"error: cannot write {disk}/{unwritten}: no space left on device (0 B free). "
        f"Free space or pass {key}=<a folder on another disk>"
    )
    assert files_under(disk) == left


def test_a_library_writer_on_a_full_disk_is_one_line_too(small_disk, tmp_path: Path) -> None:
    """The disk fills while TensorBoard's event writer (a thread of its own) writes: no traceback from either thread."""
    run_dir = small_disk(1024 * 1024) / "run"
    log = tmp_path / "console.log"
    command = [*TINY, "callbacks=none", "trainer.max_epochs=200", f"hydra.run.dir={run_dir}"]
    job = start_cli("tl-train", *command, cwd=tmp_path, log=log)
    try:
        deadline = time.monotonic() + 120
        while not any(path.stat().st_size for path in run_dir.glob("events.out.tfevents.*")):
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        fill(run_dir)  # the run is training: its next event write fails
        assert job.wait(timeout=120) == 2, log.read_text()[-3000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert re.fullmatch(
        rf"error: a write in {re.escape(str(run_dir))} failed: no space left on device \(0 B free\)\. "
        r"Free space or pass hydra\.run\.dir=<a folder on another disk>",
        one_error_line(log.read_text()),
    )
    assert "Exception in thread" not in log.read_text() and not (run_dir / "metrics.json").exists()


def test_tl_report_on_a_full_disk_keeps_the_previous_report(small_disk, tmp_path: Path) -> None:
    sweep = small_disk(64 * 1024) / "sweep"
    for seed in (0, 1, 2):
        job = sweep / str(seed)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        if seed < 2:
            summary = {"metrics": {"val/acc": 0.5 + seed / 10}, "overrides": [f"seed={seed}"]}
            (job / "metrics.json").write_text(json.dumps(summary))
    first = run_cli("tl-report", str(sweep), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {name: (sweep / name).read_bytes() for name in ("report.md", "report.csv")}
    (sweep / "2" / "metrics.json").write_text(json.dumps({"metrics": {"val/acc": 0.7}, "overrides": ["seed=2"]}))
    fill(sweep)
    result = run_cli("tl-report", str(sweep), cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"error: cannot write {sweep}/report.csv: no space left on device (0 B free). "
        "Free space or pass --csv <a file on another disk>"
    )
    assert {name: (sweep / name).read_bytes() for name in ("report.md", "report.csv")} == before
    assert not [name for name in os.listdir(sweep) if name.endswith(".tmp")]
