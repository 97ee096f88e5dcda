"""File writes that readers see whole or not at all (a crash, a kill or a full disk leaves no half file).

The one home of transferlab's file writes; image decoding and image-file listing live in `data.images`.
Every file is written to a temporary file in its destination directory (a rename across filesystems would be a
copy, which a full disk cuts short), flushed and fsynced, then renamed over the real name. A write that fails
(disk full, I/O error, permission lost mid-run) removes its temporary file and raises `WriteFailed`: one line
naming the file and the free space on its filesystem; the previous version of the file, if any, stays whole.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from transferlab.utils.errors import UserError

TEMP_SUFFIX = ".tmp"  # temporary files are hidden (a leading dot) and end in this
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
SWEEP_ELSEWHERE = "hydra.sweep.dir=<a folder on another disk>"  # what a sweeper's or launcher's failed write suggests
WRITE_FAULTS = {*_FULL, *_DENIED, errno.EIO}  # what a library's failed write becomes one line for (`write_fault`)


class WriteFailed(UserError):
    """A file could not be written (disk full, I/O error, no permission); `path` is the file, `cause` the OS error.

    Without a `path` (a library's writer failed without naming its file) the message names `folder` instead."""

    def __init__(
        self, path: Path | None, cause: OSError, elsewhere: str | None = None, folder: Path | None = None
    ) -> None:
        self.path, self.cause = path, cause
        reason = (cause.strerror or str(cause)).lower() if cause.errno is not None else str(cause)
        near = path if path is not None else (folder or Path.cwd()) / "file"
        blocker = next((p for p in near.parents if p.exists() and not p.is_dir()), None)
        if cause.errno in (errno.EEXIST, errno.ENOTDIR) and blocker is not None:
            reason = f"{blocker} is a file, not a folder"
        if cause.errno in _FULL:
            remedy = "Free space"
        elif cause.errno in _DENIED:
            remedy = f"Make {near.parent} writable again"
        else:
            remedy = "Check the path and the disk"
        where = elsewhere if elsewhere is not None else _default_elsewhere()
        remedy += f" or pass {where}" if where else ""
        what = f"cannot write {path}" if path is not None else f"a write in {near.parent} failed"
        super().__init__(f"{what}: {reason} ({free_space(near)}). {remedy}")


def write_fault(err: BaseException) -> WriteFailed | None:
    """`err` as the one-line `WriteFailed` when it is a failed write inside a library (TensorBoard's event writer,
    a logger's YAML file): an OS error of `WRITE_FAULTS` in its chain. The file is named when the error names it,
    else the job's directory (where a run's writers write), with the free space there."""
    cause = os_error_in(err)
    if cause is None or cause.errno not in WRITE_FAULTS:
        return None
    if cause.filename:
        return WriteFailed(Path(os.fsdecode(cause.filename)), cause)
    return WriteFailed(None, cause, folder=_job_dir())


def _job_dir() -> Path | None:
    """The running Hydra job's directory, if there is one (hydra is never imported here)."""
    hydra_config = sys.modules.get("hydra.core.hydra_config")
    if hydra_config is None or not hydra_config.HydraConfig.initialized():
        return None
    return Path(hydra_config.HydraConfig.get().runtime.output_dir)


def _default_elsewhere() -> str:
    """Where a run's files go (checkpoints, metrics.json, skipped-file records): the run or sweep directory."""
    hydra_config = sys.modules.get("hydra.core.hydra_config")  # only when a Hydra app runs; never imported here
    key = "hydra.run.dir"
    if hydra_config is not None and hydra_config.HydraConfig.initialized():
        mode = hydra_config.HydraConfig.get().mode
        key = "hydra.sweep.dir" if getattr(mode, "name", "") == "MULTIRUN" else key
    return f"{key}=<a folder on another disk>"


def free_space(path: Path) -> str:
    """``"1.2 MB free"`` on the filesystem that holds (or would hold) `path`; ``"free space unknown"`` otherwise."""
    existing = next((p for p in (path.parent, *path.parent.parents) if p.is_dir()), None)
    try:
        free = shutil.disk_usage(existing or ".").free
    except OSError:
        return "free space unknown"
    return f"{human_bytes(free)} free"


def human_bytes(count: float) -> str:
    """A byte count for a message: ``0 B``, ``812.0 kB``, ``1.2 MB`` (powers of 1000, as `df -H`)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def os_error_in(err: BaseException) -> OSError | None:
    """The OS error behind `err`: itself, or the one a library wrapped (torch.save turns a failed write of a file
    object into a RuntimeError whose context is the OSError)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


@contextmanager
def atomic_file(path: Path, elsewhere: str | None = None) -> Iterator[Path]:
    """A temporary path next to `path` to write to; fsynced and renamed onto `path` when the block ends without error.

    For libraries that want a file name (matplotlib's savefig, ONNX). A failed write raises `WriteFailed`, whose
    message suggests `elsewhere` (default: another run directory) and leaves neither a temporary file nor a
    change to `path`. Write through a file object (`atomic_open`) where one can be passed: torch.save given a
    file name reports a full disk as a bare RuntimeError, given a file object as the OSError it was.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        tmp = _temporary(path)
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); the result gets a new file's mode
        os.replace(tmp, path)
        tmp = None
    except BaseException as err:
        if tmp is not None:
            _remove(tmp)
        cause = os_error_in(err) if isinstance(err, OSError | RuntimeError) else None
        if cause is None:
            raise
        raise WriteFailed(path, cause, elsewhere) from err
    _fsync_dir(path.parent)


@contextmanager
def atomic_open(path: Path, elsewhere: str | None = None) -> Iterator[IO[bytes]]:
    """A binary file object to write `path` through, with `atomic_file`'s guarantees (flushed and fsynced)."""
    with atomic_file(path, elsewhere) as tmp, open(tmp, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


def write_bytes_atomic(path: Path, data: bytes, elsewhere: str | None = None) -> None:
    """Readers see the whole file or none."""
    with atomic_open(path, elsewhere) as out:
        out.write(data)


def write_json_atomic(path: Path, payload: Any, elsewhere: str | None = None) -> None:
    """JSON that readers see either whole or not at all."""
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), elsewhere)


def create_atomic(path: Path, data: bytes, elsewhere: str | None = None) -> bool:
    """Write `path` whole only if it does not exist yet; False when it does (another process was first).

    The exclusive create of a record that several processes may try at once (DataLoader workers, DDP ranks):
    the bytes go to a temporary file that is then hard-linked to `path`, which fails when `path` exists, so a
    reader sees no file or the whole one. A filesystem without hard links gets an exclusive open instead
    (a kill mid-write could leave a short record there; a failed write removes it).
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        tmp = _temporary(path)
        tmp.write_bytes(data)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            return _create_exclusive(path, data)
        _fsync_dir(path.parent)
        return True
    except OSError as err:
        raise WriteFailed(path, err, elsewhere) from err
    finally:
        if tmp is not None:
            _remove(tmp)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """`create_atomic` where hard links are refused: an exclusive open, removed again if the write fails."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except OSError:
        _remove(path)
        raise
    return True


def _temporary(path: Path) -> Path:
    """A new empty hidden file in `path`'s directory (created with it), named after `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(name)


def _fsync(path: Path) -> None:
    """Flush `path`'s data to the disk (so the rename never makes a name point at data still in memory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; best effort (the file is whole either way, some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with suppress(OSError):  # the disk that failed the write may fail this too; nothing more can be done
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask
