"""`tl-train`: fit a task on a datamodule, test the best checkpoint, return the monitored metric.

Everything comes from the composed Hydra config (``conf/train.yaml``); see ``tl-train --help``.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from transferlab import __version__, api
from transferlab.api import callable_module
from transferlab.backbones import checkpoint_preprocessing
from transferlab.callbacks import ModelCheckpoint as RunCheckpoint
from transferlab.cli import deleted_at_clean_end, hydra_app
from transferlab.console import header, inputs_line, quiet, results_line
from transferlab.constants import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE
from transferlab.loggers import finishing, log_final_metrics, start_runs
from transferlab.runner import (
    build,
    build_trainer,
    expected_preprocessing,
    finished_summary,
    instantiate_named,
    is_multirun,
    output_dir,
    resolved,
    resume_checkpoint,
    split_metrics,
    step_boundary_requeue,
    task_overrides,
)
from transferlab.trust import CheckedCheckpoint, open_checkpoint
from transferlab.utils.checks import check_values
from transferlab.utils.config import flatten
from transferlab.utils.errors import UserError
from transferlab.utils.io import write_json_atomic
from transferlab.utils.threads import cpu_record


def run(cfg: DictConfig) -> float | None:
    """Train and/or test as `cfg` says; return the best monitored value (what sweepers optimise)."""
    with quiet(bool(cfg.get("verbose", False))):
        return _train_and_test(cfg)


def _train_and_test(cfg: DictConfig) -> float | None:
    started = time.time()
    check_values(cfg)  # tl-train checked them already; `run` is also called directly (API, tests)
    job_dir = output_dir()
    if is_multirun() and (done := finished_summary(job_dir)) is not None:  # a re-launched sweep
        print(f"Skipping finished job {job_dir} ({METRICS_FILE} exists)", flush=True)
        return done["monitor"]["best"]
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":  # this run directory's own last.ckpt (with hydra.run.dir=<the interrupted run>)
        last = job_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not last.is_file():
            if finished_summary(job_dir) is not None:
                raise finished_run_error(job_dir, cfg.trusted_targets)
            raise UserError(
                f"ckpt_path=last: {last} does not exist. Re-run into the interrupted run's directory "
                "(hydra.run.dir=<run dir>), or pass ckpt_path=<path to its last.ckpt>"
            )
        ckpt_path = str(last)
    elif cfg.train and ckpt_path is not None:
        refuse_missing_last(Path(ckpt_path).expanduser(), cfg.trusted_targets)
    if cfg.train and ckpt_path is None and (last := resume_checkpoint(job_dir)) is not None:
        print(f"Resuming unfinished job from {last}", flush=True)
        ckpt_path = str(last)
    # a checkpoint is data: refuse one whose stored config names foreign code
    stored = open_checkpoint(Path(ckpt_path).expanduser(), cfg.trusted_targets) if ckpt_path else None
    if cfg.seed is not None:  # seed 0 is a seed
        pl.seed_everything(cfg.seed, workers=True)

    config = resolved(cfg)
    # what the weights expect of their inputs, known before the data is set up: it may leave its eval resize to them
    preprocessing = expected_preprocessing(config["model"])
    if preprocessing is not None and stored is not None:  # resumed or tested: what that checkpoint's model ran on
        preprocessing = checkpoint_preprocessing(stored.path, stored.data)
    datamodule = build(cfg.data, "data")
    datamodule.follow_weights(preprocessing)
    datamodule.record_skipped_files_in(job_dir / "skipped_files")
    resolved_inputs = {"preprocessing": preprocessing.record()} if preprocessing is not None else {}
    model = build(cfg.model, "model", **datamodule.task_args(), **resolved_inputs)
    model.run_record = {"config": config, "version": __version__}  # stored in every checkpoint
    if stored is not None and (why := stored.mismatch(model, cfg.model._target_)) is not None:
        raise UserError(
            f"checkpoint {ckpt_path} does not fit this config: {why}. Use the overrides of the run that wrote it "
            "(its .hydra/overrides.yaml), or start without ckpt_path"
        )
    if cfg.train and stored is not None and not stored.resumable:
        raise UserError(
            f"{ckpt_path} holds weights only (no optimizer state), so training cannot continue from it. "
            f"{use_weights_now(Path(ckpt_path), stored)}; {RESUME_NEXT_TIME}"
        )
    callbacks = instantiate_named(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_named(cfg.get("logger"), "logger")
    with finishing(loggers):  # each tracker's run ends with the job, marked failed if it raised
        trainer = build_trainer(cfg, callbacks, loggers)
        datamodule.trainer = trainer
        datamodule.per_device_batch_size()  # fail on an indivisible global batch before any process starts
        if trainer.is_global_zero and not cfg.get("verbose", False):
            print(header(cfg, trainer, job_dir, cpu_record(getattr(datamodule, "num_workers", None))), flush=True)
            if preprocessing is not None:
                print(inputs_line(preprocessing, datamodule.preprocessing_record()), flush=True)
        start_runs(trainer.loggers, flatten(config), list(cfg.get("tags", [])))  # listed by the trackers from now on

        metrics: dict[str, float] = {}
        diverged: dict[str, str] = {}  # metrics that ended inf/nan
        if cfg.train:
            try:
                with step_boundary_requeue(trainer):
                    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            except SIGTERMException:  # state saved and the resume command printed by the checkpoint callback
                raise SystemExit(128 + signal.SIGTERM) from None
            finite, non_finite = split_metrics(trainer.callback_metrics)  # last epoch's train/val metrics
            metrics.update(finite)
            diverged.update(non_finite)
        checkpoint = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
        best_path = checkpoint.best_model_path if checkpoint is not None else ""
        test_ckpt = (best_path or None) if cfg.train else ckpt_path  # None: the weights as training left them
        if cfg.test:
            verbose = bool(cfg.get("verbose", False))
            trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True, verbose=verbose)
            finite, non_finite = split_metrics(trainer.callback_metrics)
            metrics.update(finite)
            diverged.update(non_finite)
            if trainer.is_global_zero and not verbose:
                print(results_line(metrics), flush=True)

        best = _best_monitored(cfg, checkpoint, metrics)
        summary: dict[str, Any] = {
            "monitor": {"metric": cfg.monitor.metric, "mode": cfg.monitor.mode, "best": best},
            "metrics": metrics,
            "non_finite_metrics": {name: value for name, value in diverged.items() if name not in metrics},
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "best_checkpoint": best_path or None,
            "tested_checkpoint": (test_ckpt or "final weights") if cfg.test else None,
            "skipped_files": datamodule.skipped_files(),
            "preprocessing": (
                {**preprocessing.record(), **datamodule.preprocessing_record()} if preprocessing is not None else None
            ),
            "resumed_from": ckpt_path if cfg.train else None,
            "wall_time_s": round(time.time() - started, 2),
            "cpu": cpu_record(getattr(datamodule, "workers_used", None)),  # threads, loader workers, their source
            "overrides": task_overrides(),
            "version": __version__,
        }
        for callback in callbacks:  # what a callback has to say about the run (e.g. an Optuna trial it pruned)
            summary.update(callback.run_summary() if hasattr(callback, "run_summary") else {})
        log_final_metrics(trainer.loggers, _hparam_metrics(metrics))
    if trainer.is_global_zero:
        write_json_atomic(job_dir / METRICS_FILE, summary)  # last: it marks the job finished
        if cfg.train and isinstance(checkpoint, RunCheckpoint):
            checkpoint.discard_last()  # finished: nothing left to resume
        print(f"Run directory: {job_dir}", flush=True)
    return best


RESUME_NEXT_TIME = "to be able to resume a finished run next time: callbacks.model_checkpoint.keep_last=true"


def use_weights_now(best: Path, stored: CheckedCheckpoint | None) -> str:
    """What can be done with weights-only `best` at once. ``model.backbone.weights`` loads a checkpoint's
    ``backbone.*`` part only (`transferlab.backbones.read_state_dict`), so it is offered only where there is one."""
    if stored is not None and stored.has_backbone:
        return f"To fine-tune from it now (its backbone, a new head): model.backbone.weights={best} without ckpt_path"
    return f"Its weights still serve tl-eval and tl-predict: ckpt_path={best}"


def finished_run_error(run_dir: Path, trusted: Any = ()) -> UserError:
    """Why a cleanly finished run cannot be continued: its last.ckpt went at the end (`ModelCheckpoint.keep_last`),
    and best.ckpt holds weights only."""
    best = run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT
    now = "Start a new run"
    if best.is_file():
        with contextlib.suppress(UserError):  # unreadable or foreign: no advice about it
            now = use_weights_now(best, open_checkpoint(best, trusted))
    return UserError(
        f"{run_dir} finished cleanly and its {LAST_CHECKPOINT} (the only checkpoint with optimizer state) was deleted "
        f"then, so training cannot continue from it. {now}; {RESUME_NEXT_TIME}"
    )


def refuse_missing_last(path: Path, trusted: Any = ()) -> None:
    """``ckpt_path`` naming a run directory, or the last.ckpt a clean end deleted: say what to do instead."""
    if path.is_dir():
        last = path / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not last.is_file() and finished_summary(path) is not None:
            raise finished_run_error(path, trusted)
        hint = f"ckpt_path={last}" if last.is_file() else f"ckpt_path=<run dir>/{CHECKPOINT_DIR}/{LAST_CHECKPOINT}"
        raise UserError(f"ckpt_path={path} is a directory, not a checkpoint. To resume that run: {hint}")
    if deleted_at_clean_end(path):
        raise finished_run_error(path.parent.parent, trusted)


def _best_monitored(cfg: DictConfig, checkpoint: ModelCheckpoint | None, metrics: dict[str, float]) -> float | None:
    if checkpoint is not None and checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    return metrics.get(cfg.monitor.metric)


def _hparam_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The final metrics shown in TensorBoard's HPARAMS tab, under their own tags (``final/…``)."""
    return {f"final/{name}": value for name, value in metrics.items() if "/acc_class/" not in name}


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


callable_module(__name__, api.train)  # `transferlab.train([...])`: the Python API


if __name__ == "__main__":
    main()
