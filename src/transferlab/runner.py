"""The core the commands' runs share (their Hydra app is `transferlab.cli`): building trainer, callbacks and
loggers from config, collecting final metrics and writing them atomically, and what makes a job
re-launchable (finished marker, resume from ``last.ckpt``, DDP ranks that re-enter the same job)."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_original_cwd, instantiate
from lightning_utilities.core.apply_func import apply_to_collection
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.callbacks.progress import ProgressBar as ProgressBarBase
from pytorch_lightning.plugins.io import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from transferlab import cli
from transferlab.callbacks import ProgressBar
from transferlab.console import CompactModelSummary, EpochLine
from transferlab.constants import CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE
from transferlab.upstream import lightning_accelerator, lightning_ddp_subprocess, lightning_sigterm
from transferlab.utils.errors import UserError, describe, find_user_error
from transferlab.utils.io import atomic_open
from transferlab.utils.threads import configure_cpu


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate config `node` (found at `key`); a value the target rejects becomes a one-line error.

    Targets reject bad values with ValueError/TypeError (wrong type, unknown keyword, out of range; Lightning
    with its MisconfigurationException);
    Hydra wraps those, so without this the user would see a traceback for a typo in an override.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        found = find_user_error(err)
        if found is not None:  # the target itself explained the problem: surface that, not Hydra's wrapper
            raise found from None
        cause = err.__cause__
        if not isinstance(cause, ValueError | TypeError | OSError | MisconfigurationException):
            raise
        raise UserError(f"invalid {key} settings: {describe(cause)}. Check the {key}.* overrides") from err


def expected_preprocessing(model: dict[str, Any]) -> Any:
    """What the task of resolved ``model`` config expects of its inputs (its class's `expected_preprocessing`;
    None when it has nothing to follow), known before the task or the data are built."""
    from hydra.utils import get_class

    resolve = getattr(get_class(model["_target_"]), "expected_preprocessing", None)  # a trusted non-transferlab task
    return resolve(model) if resolve is not None else None


def instantiate_named(group: DictConfig | None, key: str = "callbacks") -> list[Any]:
    """Instantiate a dict of named configs (``callbacks``/``logger``); a null entry switches one off."""
    if not group:
        return []
    return [build(node, f"{key}.{name}") for name, node in group.items() if node is not None and "_target_" in node]


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    """Build the Lightning trainer of `cfg.trainer` with the run's callbacks and loggers.

    Lightning would add a progress bar that syncs with the device every step, and a checkpoint callback
    writing every epoch even when the config has none (``callbacks=none``); neither happens here.
    """
    callbacks = list(callbacks)
    if not cfg.get("verbose", True):  # transferlab's console: one line per epoch, a compact model summary
        callbacks.append(EpochLine())
        if cfg.trainer.get("enable_model_summary", True):
            callbacks.append(CompactModelSummary())
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBarBase) for c in callbacks):
        monitored = OmegaConf.select(cfg, "monitor.metric")
        callbacks.append(ProgressBar(keys=("train/loss_step", "train/loss", *([monitored] if monitored else []))))
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    # Checkpoints are written by a background thread (tensors are copied to host memory first, so training goes
    # on at once); the trainer waits for the last write before `fit` returns.
    plugins = [HostSnapshotCheckpointIO()] if checkpointing and "plugins" not in cfg.trainer else None
    trainer = build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=checkpointing,
        plugins=plugins,
        **deterministic_on(decided_accelerator(cfg.trainer), cfg.trainer.get("deterministic")),
    )
    check_precision(str(cfg.trainer.get("precision")), trainer)
    configure_cpu(cfg.get("cpu_threads"), processes=trainer.num_devices)  # before any worker or thread pool starts
    return trainer


def host_snapshot(checkpoint: Any) -> Any:
    """`checkpoint` with every tensor copied to host memory, independent of the live tensors.

    GPU tensors go to pinned memory with non-blocking copies, then one synchronisation per device: a save costs
    one device→host transfer and no GPU memory (a clone on the GPU would double the weights and optimizer
    state for as long as the write takes). Host tensors are cloned, so training may change them meanwhile."""
    devices: set[torch.device] = set()

    def to_host(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.device.type == "cpu":
            return tensor.clone()
        if tensor.device.type != "cuda":
            return tensor.to("cpu")
        devices.add(tensor.device)
        return torch.empty_like(tensor, device="cpu", pin_memory=True).copy_(tensor, non_blocking=True)

    snapshot = apply_to_collection(checkpoint, torch.Tensor, to_host)
    for device in devices:  # the copies must land before the writer thread reads them
        torch.cuda.synchronize(device)
    return snapshot


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing through `utils.io.atomic_open`: a temporary file in the checkpoint's own
    directory, fsynced, then renamed onto the real name.

    Lightning's own writer stages the file in the system's temporary directory and copies it into place, so a
    disk that fills mid-copy leaves a truncated ``best.ckpt`` under its real name (and a traceback). Here a failed
    write raises `WriteFailed` (one line naming the file and the free space) and the previous file stays whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's fsspec writer
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_open(Path(path)) as out:  # a file object: torch reports a failed write as the OSError it was
            torch.save(checkpoint, out)


class HostSnapshotCheckpointIO(AsyncCheckpointIO):
    """Lightning's background checkpoint writer, with the snapshot taken in host memory (`host_snapshot`) instead
    of cloned on the device, where a save would briefly double the GPU memory the model and optimizer hold.

    Files are written by `AtomicCheckpointIO` unless another writer is given. A write that fails in the background
    is kept (`failure`) and raised on the training thread: at the next save, when `ModelCheckpoint` asks (every
    step on one process, collectively at each save under DDP) and at teardown. After a failure nothing more is
    written, so the last good checkpoints stay as they are while the run stops."""

    def __init__(self, checkpoint_io: CheckpointIO | None = None) -> None:
        super().__init__(checkpoint_io if checkpoint_io is not None else AtomicCheckpointIO())
        self._failed = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        self.raise_failure()  # a write that failed since the last save
        self._ensure_setup()
        snapshot = host_snapshot(checkpoint)

        def write() -> None:
            if self._failed:  # the run is stopping: keep what is on disk
                return
            try:
                self.checkpoint_io.save_checkpoint(snapshot, path, storage_options=storage_options)
            except BaseException as err:  # raised on the training thread (`raise_failure`)
                self._failed, self._error = True, err

        self._executor.submit(write)

    def failure(self, wait: bool = False) -> BaseException | None:
        """The error of a background write not yet raised; with `wait`, after the writes queued so far ended."""
        if wait and self._executor is not None:
            self._executor.submit(lambda: None).result()  # one writer thread: the writes before it have ended
        return self._error

    def raise_failure(self, wait: bool = False) -> None:
        """Raise the error of a failed background write, once."""
        error, self._error = self.failure(wait), None
        if error is not None:
            raise error

    def teardown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.raise_failure()


def decided_accelerator(trainer_cfg: DictConfig) -> str:
    """The accelerator Lightning will choose for `trainer_cfg` ("cuda", "mps", "cpu", …), known before the trainer
    exists (some trainer settings depend on it); decided by Lightning's own rules for "auto" and "gpu"."""
    flag = trainer_cfg.get("accelerator") or "auto"
    if flag == "auto":
        return lightning_accelerator.auto_accelerator()
    if flag == "gpu":
        try:
            return lightning_accelerator.gpu_accelerator_backend()
        except MisconfigurationException:  # no GPU: building the trainer says so
            return "gpu"
    return str(flag)


def deterministic_on(accelerator: str, requested: Any) -> dict[str, Any]:
    """Trainer arguments for ``trainer.deterministic=true`` on CUDA: ``"warn"`` and no cuDNN benchmark.

    Strict determinism stops a CUDA run at the first op without a deterministic kernel (adaptive average pooling,
    bilinear interpolation, reflection padding and NLL loss backward: most backbones), so such ops warn instead;
    cuDNN's benchmark (on in trainer=gpu) picks algorithms by timing, which no deterministic setting undoes.
    """
    if requested is not True or accelerator != "cuda":
        return {}
    if rank_zero_only.rank == 0:
        print(
            "note: trainer.deterministic=true runs as 'warn' on CUDA: some ops (adaptive pooling, bilinear "
            "interpolation, reflection padding, NLL loss backward) have no deterministic CUDA kernel and warn "
            "instead of stopping the run; cudnn.benchmark is off",
            file=sys.stderr,
            flush=True,
        )
    return {"deterministic": "warn", "benchmark": False}


def check_precision(requested: str, trainer: pl.Trainer) -> None:
    """Refuse a precision Lightning would silently replace (fp16 AMP on a CPU becomes bf16 with a warning).

    The config, the logged hparams and metrics.json would otherwise name a precision the run never used.
    """
    if requested in ("16", "16-mixed") and trainer.precision != "16-mixed":
        device = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
        raise UserError(
            f"trainer.precision={requested} (float16 mixed precision) needs a CUDA GPU, this run is on {device}. "
            "Use trainer.precision=bf16-mixed on CPUs, or trainer=gpu"
        )


def output_dir() -> Path:
    """This job's directory (Hydra's run/sweep dir)."""
    return Path(HydraConfig.get().runtime.output_dir)


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Lightning's logged metrics as (finite floats, the others as ``"inf"``/``"nan"`` strings), read once (one host
    sync, at the end of the run). Strict JSON has no infinity, and dropping a diverged metric silently would make
    its metrics.json look merely incomplete, so metrics.json names the non-finite ones."""
    finite: dict[str, float] = {}
    non_finite: dict[str, str] = {}
    for name, value in sorted(metrics.items()):
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
        if math.isfinite(number):
            finite[name] = number
        else:
            non_finite[name] = str(number)
    return finite, non_finite


def task_overrides() -> list[str]:
    """The command-line overrides of this job (what distinguishes it within a sweep)."""
    return list(HydraConfig.get().overrides.task)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config with every ``${…}`` resolved, as plain containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def finished_summary(job_dir: Path) -> dict[str, Any] | None:
    """The stored ``metrics.json`` of a finished job in `job_dir`, or None (it is written last, atomically)."""
    path = job_dir / METRICS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def resume_checkpoint(job_dir: Path) -> Path | None:
    """``last.ckpt`` of an unfinished job in `job_dir` (a killed sweep job), to continue where it stopped."""
    last = job_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    return last if last.is_file() and not (job_dir / METRICS_FILE).is_file() else None


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning's DDP launcher starts for rank `local_rank` > 0 on this node.

    Lightning's own version re-runs ``sys.argv``, which inside a multirun (``-m seed=0,1``) is the whole sweep,
    and under a submitit worker is not a transferlab command at all. This one re-runs exactly this job: its
    own overrides, as a single run, in its own directory, writing no Hydra output of its own.
    """
    hydra_cfg = HydraConfig.get()
    # A user's own config folder (--config-dir, hydra.searchpath) is not among the task overrides: without it a
    # rank > 0 could not find e.g. data=mydata. Hydra's argument parser wants the flag before the overrides.
    own = [source.path for source in hydra_cfg.runtime.config_sources if source.provider == "command-line"]
    command = [sys.executable, "-m", cli.entry_module, *(f"--config-dir={path}" for path in own)]
    command += list(hydra_cfg.overrides.task)
    if hydra_cfg.searchpath:
        command.append("hydra.searchpath=[" + ",".join(f"'{path}'" for path in hydra_cfg.searchpath) + "]")
    command += [
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


# Lightning has no setting for this command (see transferlab.upstream.lightning_ddp_subprocess; tested by
# tests/test_distributed.py, its canary by tests/test_upstream.py).
lightning_ddp_subprocess.install(ddp_child_command)


@contextmanager
def step_boundary_requeue(trainer: pl.Trainer) -> Iterator[None]:
    """Under submitit on SLURM, make the time-limit signal stop training like SIGTERM does, then requeue.

    SLURM signals a job (``--signal=USR2@<signal_delay_s>``) before its time limit; submitit's own handler
    requeues and exits on the spot, mid-step, before any checkpoint exists (and ignores the SIGTERM that
    follows). Here the signal only asks Lightning to stop at the end of the current step, where the
    checkpoint callback writes ``last.ckpt``; then submitit's handler runs (requeue, exit), and the requeued
    job resumes from that checkpoint in the same run directory.
    """
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or not callable(submitit_handler):
        yield
        return
    received: list[int] = []

    def stop_at_step_end(signum: int, _frame: Any) -> None:
        received.append(signum)
        lightning_sigterm.request_stop(trainer)  # Lightning's own stop flag, read at each step's end

    signal.signal(signal.SIGUSR2, stop_at_step_end)
    try:
        yield
    except SIGTERMException:
        if received:
            submitit_handler(received[0], None)  # requeues the job and exits
        raise
    finally:
        signal.signal(signal.SIGUSR2, submitit_handler)
