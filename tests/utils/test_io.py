"""Atomic writes: readers see the whole file or none, with the mode any new file gets (not mkstemp's 0600); a write
that fails (full disk, read-only filesystem, I/O error) is one line naming the file and the free space, and leaves
the previous file whole and no temporary file."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from transferlab.runner import AtomicCheckpointIO
from transferlab.utils.errors import UserError
from transferlab.utils.io import (
    WriteFailed,
    atomic_file,
    create_atomic,
    human_bytes,
    write_bytes_atomic,
    write_json_atomic,
)


def test_written_files_get_a_new_files_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "metrics.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


# -- failed writes: one line naming the file and the free space; the previous file whole; no temporary left ------
def fill(folder: Path) -> None:
    """Use up every free byte of the filesystem holding `folder`."""
    with open(folder / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_full_disk_keeps_the_previous_metrics_json_and_says_so_in_one_line(small_disk) -> None:
    disk = small_disk(64 * 1024)
    target = disk / "run" / "metrics.json"
    write_json_atomic(target, {"epoch": 1})
    with pytest.raises(WriteFailed) as failed:
        write_json_atomic(target, {"weights": "x" * 200_000})  # larger than the disk
    message = str(failed.value)
    assert re.fullmatch(
        rf"cannot write {re.escape(str(target))}: no space left on device \(\d+(\.\d)? [kM]?B free\)\. "
        r"Free space or pass hydra\.run\.dir=<a folder on another disk>",
        message,
    ), message
    assert "\n" not in message and isinstance(failed.value, UserError)
    assert json.loads(target.read_text()) == {"epoch": 1}  # the last good version, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temporary file left


def test_a_checkpoint_too_large_for_the_disk_keeps_the_previous_one(small_disk) -> None:
    disk = small_disk(256 * 1024)
    path = disk / "checkpoints" / "best.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 0}, path)
    with pytest.raises(WriteFailed, match=r"cannot write .*best\.ckpt: no space left on device \(.* free\)"):
        writer.save_checkpoint({"state_dict": {"w": torch.ones(200_000)}, "epoch": 1}, path)  # 800 kB
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 0 and torch.equal(kept["state_dict"]["w"], torch.ones(1000))
    assert [p.name for p in path.parent.iterdir()] == ["best.ckpt"]


def test_permission_lost_mid_run_is_one_line_and_changes_nothing(small_disk) -> None:
    disk = small_disk(64 * 1024)
    target = disk / "report.md"
    write_bytes_atomic(target, b"first\n")
    small_disk.remount(disk, "ro")  # as root, chmod would not stop the write: a read-only filesystem does
    with pytest.raises(WriteFailed) as failed:
        write_bytes_atomic(target, b"second\n", elsewhere="--markdown <a file on another disk>")
    assert str(failed.value).startswith(f"cannot write {target}: read-only file system (")
    assert str(failed.value).endswith(f"Make {disk} writable again or pass --markdown <a file on another disk>")
    assert target.read_bytes() == b"first\n" and [p.name for p in disk.iterdir()] == ["report.md"]


def test_an_io_error_when_flushing_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # a disk reports a lost write when the data is flushed
    with pytest.raises(WriteFailed, match=r"cannot write .*model\.onnx: input/output error \(.* free\)\. Check"):
        write_bytes_atomic(tmp_path / "model.onnx", b"graph")
    assert list(tmp_path.iterdir()) == []


def test_a_record_is_created_once_and_whole(tmp_path: Path, small_disk) -> None:
    marker = tmp_path / "skipped" / "abc"
    assert create_atomic(marker, b"a.jpg\ttruncated\n")
    assert not create_atomic(marker, b"a.jpg\tanother reason\n")  # another worker met the same file: no change
    assert marker.read_bytes() == b"a.jpg\ttruncated\n" and len(list(marker.parent.iterdir())) == 1
    disk = small_disk(16 * 1024)
    fill(disk)
    with pytest.raises(WriteFailed, match="no space left on device"):
        create_atomic(disk / "skipped" / "abc", b"a.jpg\ttruncated\n")
    assert [p.name for p in (disk / "skipped").iterdir()] == []


@pytest.mark.parametrize(
    ("count", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"), (5e12, "5.0 TB")]
)
def test_free_space_reads_like_df(count: float, text: str) -> None:
    assert human_bytes(count) == text
