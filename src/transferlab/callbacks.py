"""Callbacks shared by all tasks (thin wrappers over Lightning's own); logging helpers are in `transferlab.loggers`."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor as _LearningRateMonitor
from pytorch_lightning.callbacks import ModelCheckpoint as _ModelCheckpoint
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from transferlab.constants import OPTUNA_TRIAL_ENV
from transferlab.utils.errors import UserError


class LearningRateMonitor(_LearningRateMonitor):
    """Lightning's LR monitor, but silently idle when the run has no logger (``logger=none``)."""

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, copying the metrics it shows to the host only every few steps.

    Showing a logged tensor means a device→host copy, which waits for all queued GPU work; Lightning does
    that at every step for every ``prog_bar=True`` value, so a fast GPU idles while the host catches up.
    Tasks therefore log nothing with ``prog_bar=True``; this bar shows `keys` (the step loss and the
    monitored metric) read from the trainer's metrics, refreshed every ``trainer.log_every_n_steps`` steps
    and at the end of each epoch. The step counter and speed still move at every step.
    """

    def __init__(self, keys: tuple[str, ...] = ("train/loss_step",), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(dict.fromkeys(keys))
        self._shown: dict[str, Any] | None = None

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        every = max(1, trainer.log_every_n_steps)
        mid_training = trainer.training and not trainer.sanity_checking
        if self._shown is None or not mid_training or trainer.global_step % every == 0:
            shown = super().get_metrics(trainer, pl_module)
            logged = trainer.callback_metrics
            shown.update({key: float(logged[key]) for key in self.keys if key in logged})
            self._shown = shown
        return self._shown


class ModelCheckpoint(_ModelCheckpoint):
    """Lightning's checkpointing (best by the monitored metric) with a ``last.ckpt`` that resume can rely on.

    ``best.ckpt`` is written only when the monitored metric improves (``save_top_k: 1``). ``last.ckpt`` is the
    latest training state, for resuming a killed run. Lightning 2.6 refreshes it only together with a new
    best (so a killed run could restart from an old epoch), earlier versions at every epoch (a full
    model + optimizer write per epoch: 134 MB for ResNet-18 with AdamW, longer than a GPU epoch of CIFAR).
    Here it is refreshed at the end of an epoch when `last_every_minutes` have passed since the previous
    write (0: every epoch), and always when training ends, so a killed run loses at most that much work.
    Writes go through the trainer's checkpoint IO (asynchronous in transferlab, see `runner.build_trainer`)
    and are atomic (a temporary file in the checkpoint folder, fsynced, then a rename). A write that failed (a
    full disk) stops the run with its one-line error: checked after every step on one process, and collectively
    before each save and at the end of training under DDP (rank 0 writes; the other ranks must stop with it,
    not wait for it in the next collective).

    Sized to their purpose: ``best.ckpt`` is for evaluating, predicting and transferring, so it holds the
    weights without optimizer state (`best_weights_only`; a third of the size with Adam/AdamW); ``last.ckpt``
    is for resuming, so it is deleted once the run has finished cleanly (`discard_last`) unless `keep_last`.
    """

    def __init__(
        self,
        *args: Any,
        last_every_minutes: float = 0.0,
        best_weights_only: bool = True,
        keep_last: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if last_every_minutes < 0:
            raise ValueError(f"last_every_minutes must be >= 0, got {last_every_minutes}")
        self.last_every_s = 60.0 * last_every_minutes
        self.best_weights_only = best_weights_only
        self.keep_last = keep_last
        self._last_written_at: float | None = None
        self._last_written_step = -1
        self._writer: Any = None  # the trainer's checkpoint IO, when it reports background failures

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        writer = trainer.strategy.checkpoint_io
        self._writer = writer if callable(getattr(writer, "failure", None)) else None

    def _stop_if_a_write_failed(self, trainer: pl.Trainer, wait: bool = False) -> None:
        """Raise the error of a failed background checkpoint write, on every rank (rank 0 alone writes); `wait`:
        for the writes queued so far first. Under DDP this is a collective: call it on all ranks at once."""
        if self._writer is None:
            return
        error = self._writer.failure(wait) if trainer.is_global_zero else None
        if trainer.world_size > 1:
            message = trainer.strategy.broadcast(None if error is None else str(error), src=0)
            if error is None and message is not None:
                raise UserError(message)
        if error is not None:
            self._writer.raise_failure()

    def _last_is_due(self, trainer: pl.Trainer) -> bool:
        """Whether to write ``last.ckpt`` now. Writing is collective under DDP (Lightning's save ends in a barrier),
        so rank 0's clock decides for every rank: a rank deciding alone would wait in that barrier forever."""
        if not self.save_last or trainer.global_step == self._last_written_step:
            return False
        due = self._last_written_at is None or time.monotonic() - self._last_written_at >= self.last_every_s
        return bool(trainer.strategy.broadcast(due, src=0))

    def _write_last(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_at, self._last_written_step = time.monotonic(), trainer.global_step

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self._stop_if_a_write_failed(trainer)  # every rank reaches a save (it ends in a barrier)
        full_state = self.save_weights_only
        if self.best_weights_only and filepath != self.last_model_path:  # Lightning sets that path before saving
            self.save_weights_only = True
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self.save_weights_only = full_state

    def discard_last(self) -> None:
        """The run finished cleanly: ``last.ckpt`` has served its purpose (resuming), unless asked to keep it."""
        if not self.keep_last and self.last_model_path and os.path.isfile(self.last_model_path):
            os.remove(self.last_model_path)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        """Lightning's own trigger (e.g. right after a new best): only when due."""
        if self._last_is_due(trainer):
            self._write_last(trainer, monitor_candidates)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        skip = trainer.fast_dev_run or trainer.sanity_checking
        if not skip and self._last_is_due(trainer):
            self._write_last(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.fast_dev_run and trainer.global_step != self._last_written_step:
            self._write_last(trainer, self._monitor_candidates(trainer))  # the final state is always resumable
        self._stop_if_a_write_failed(trainer, wait=True)  # before testing best.ckpt, on every rank

    # -- interruptions -----------------------------------------------------------------------------
    # SIGTERM (a scheduler's time limit, `kill`) and Ctrl-C stop at the end of the current step with the state
    # in last.ckpt; Lightning alone would finish the epoch first (past a scheduler's grace period) and never
    # write last.ckpt for it.
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if trainer.received_sigterm:
            raise SIGTERMException  # saved by on_exception, like Lightning's own stops
        if trainer.world_size == 1 and self._writer is not None and self._writer.failure() is not None:
            self._writer.raise_failure()  # a background write failed: stop now, not at the next save

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning stops on SIGTERM in several places (after a step, mid-validation, at the epoch's end): all
        # of them arrive here, so the state is saved and the hint printed whichever one it was.
        if isinstance(exception, SIGTERMException):
            self._save_interrupted(trainer, "SIGTERM")
        elif isinstance(exception, KeyboardInterrupt):
            self._save_interrupted(trainer, "Ctrl-C")

    def _save_interrupted(self, trainer: pl.Trainer, cause: str) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking or self.dirpath is None:
            return
        if trainer.global_step != self._last_written_step:
            self._write_last(trainer, self._monitor_candidates(trainer))
        if trainer.is_global_zero:
            print(
                f"Interrupted ({cause}) at epoch {trainer.current_epoch}, step {trainer.global_step}; training state "
                f"saved to {self.last_model_path}. Resume: the same command with ckpt_path={self.last_model_path} "
                "(a re-launched sweep resumes its unfinished jobs by itself)",
                file=sys.stderr,
                flush=True,
            )


class NonFiniteLoss(UserError):
    """Training produced a NaN/Inf loss; the run stopped before any checkpoint could store broken weights."""

    job_outcome = "diverged"  # how a sweep records the job (transferlab.sweeps), and tl-report shows it


class StopOnNonFiniteLoss(pl.Callback):
    """Stop the run at the first NaN or Inf training loss, and keep the last good checkpoint.

    Each step's loss is checked on the device (no host sync): the first bad step is remembered in a device
    tensor and read on the host on logging steps (every ``trainer.log_every_n_steps``, when Lightning reads
    values anyway), and always before validation and at an epoch's end, that is before `ModelCheckpoint`
    (which Lightning runs after all other callbacks) could write the broken weights. The message names the
    first bad step; the run stops at the next check.

    Under DDP the decision is collective: every rank reaches the checks at the same points and takes the
    minimum of the ranks' first bad steps (one all-reduce of one number), so all ranks raise together. A rank
    raising alone would leave the others waiting in their next collective until the backend's timeout.
    """

    NONE = torch.iinfo(torch.long).max  # "no bad step yet": neutral for the minimum over ranks

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if self._first_bad is None:
            self._first_bad = torch.full((), self.NONE, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad, self._first_bad.clamp(max=trainer.global_step), self._first_bad)
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if self._first_bad is None:  # no training step yet, on any rank (sanity-check validation)
            return
        first_bad = trainer.strategy.reduce(self._first_bad.clone(), reduce_op="min")  # as is on one device
        if (step := int(first_bad)) == self.NONE:
            return
        checkpoint = trainer.checkpoint_callback
        kept = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
        kept_text = f"the last good checkpoint is {kept}" if kept else "no checkpoint had been written yet"
        raise NonFiniteLoss(
            f"the training loss became NaN/Inf at step {step} (epoch {trainer.current_epoch}); the run stopped and "
            f"{kept_text}. Lower model.optimizer.lr, set trainer.gradient_clip_val=1.0, or check the data"
        )


def synchronize(device: torch.device) -> None:
    """Wait until `device` has run all its queued work (CUDA; CPU ops have finished when they return)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(pl.Callback):
    """Log how long epochs take: ``time/epoch_s`` (training + validation) and ``time/boundary_s``.

    The boundary is the time from one epoch's last training step to the next epoch's first: validation,
    checkpoint writes, loader restarts. It should stay a small fraction of an epoch (BENCHMARKS.md).
    A GPU runs behind the host, so both ends wait for the device first (two syncs per epoch, none in the
    steps between): otherwise the boundary would include the GPU finishing the epoch's queued steps, and
    miss validation work still queued when the next epoch starts.
    """

    def __init__(self) -> None:
        self._epoch_start: float | None = None
        self._last_step_end: float | None = None
        self._boundary: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._last_step_end is not None:  # first step of a new epoch
            synchronize(pl_module.device)
            self._boundary = time.perf_counter() - self._last_step_end
            self._last_step_end = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.done:  # the epoch's last training step
            synchronize(pl_module.device)
            self._last_step_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_start is None:
            return
        times = {"time/epoch_s": time.perf_counter() - self._epoch_start}
        if self._boundary is not None:
            times["time/boundary_s"] = self._boundary
        pl_module.log_dict({k: torch.tensor(v) for k, v in times.items()}, sync_dist=False, rank_zero_only=True)


class OptunaPruning(pl.Callback):
    """Report the monitored metric after each validation to this job's Optuna trial, and stop the run at the end
    of the epoch when the trial's pruner finds it clearly worse than the other trials at the same epoch.

    Hydra's Optuna sweeper keeps trial objects in its own process; transferlab's (``sweep=optuna``) hands the
    job its trial through the environment instead (`OPTUNA_TRIAL_ENV`: storage URL, study name, trial number,
    pruner config), and the job reaches the study through that shared storage. A pruned job exits normally
    (testing its best checkpoint as usual) and says so in ``metrics.json``, from which the sweeper tells
    Optuna the trial was PRUNED. Without a trial in the environment (a single run, another sweeper) the
    callback does nothing.
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        spec = os.environ.get(OPTUNA_TRIAL_ENV)
        self.handover: dict[str, Any] | None = json.loads(spec) if spec else None
        self.pruned_at_epoch: int | None = None
        self._trial: Any = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.handover is None or trainer.sanity_checking or self.pruned_at_epoch is not None:
            return
        if not self.handover.get("report", True):  # a multi-objective trial: Optuna takes no per-epoch values
            return
        prune = False
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.is_global_zero and value is not None:  # one process talks to the storage
            trial = self._connect()
            trial.report(float(value), step=trainer.current_epoch)
            prune = trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at_epoch = trainer.current_epoch
            trainer.should_stop = True

    def _connect(self) -> Any:
        if self._trial is None:
            logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's storage imports it: a line per plugin
            import optuna
            from hydra.utils import instantiate

            assert self.handover is not None
            # No pruner: the job still reports every epoch (the study's learning curves), and is never stopped.
            pruner = instantiate(self.handover["pruner"]) if self.handover["pruner"] else optuna.pruners.NopPruner()
            from transferlab.utils.optuna_storage import open_storage

            storage = open_storage(self.handover["storage"])
            study = optuna.load_study(study_name=self.handover["study_name"], storage=storage, pruner=pruner)
            number = self.handover["trial"]
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            self._trial = optuna.trial.Trial(study, frozen._trial_id)
        return self._trial

    def run_summary(self) -> dict[str, Any]:
        """What ``metrics.json`` records: the trial, and whether (and when) it was pruned."""
        if self.handover is None:
            return {}
        trial = {"study": self.handover["study_name"], "number": self.handover["trial"]}
        return {
            "optuna_trial": {
                **trial,
                "pruned": self.pruned_at_epoch is not None,
                "pruned_at_epoch": self.pruned_at_epoch,
            }
        }
