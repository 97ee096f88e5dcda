"""Experiment loggers (TensorBoard, CSV, MLflow, W&B) and what tasks send them besides scalars.

Scalars and hyper-parameters go through Lightning's logger interface, which every logger implements. Images
(validation grids, confusion matrices) have no common interface, so each logger kind has one small adapter,
looked up by the logger's type (`adapter_for`): a task logs an image once, and every logger that can store
images gets it. A logger without one (CSV) keeps scalars only.

MLflow and W&B are optional (``pip install 'transferlab[trackers]'``). Their builders give the defaults a
researcher comparing runs expects: one MLflow store for every run under ``outputs/`` (a sweep's jobs side by
side in one experiment), and W&B offline unless the user has logged in, so nothing reaches the network or
waits for a prompt by surprise.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import netrc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from transferlab.utils.errors import UserError

TRACKERS_INSTALL = "pip install 'transferlab[trackers]'"
RUN_DIR_TAG = "transferlab.run_dir"  # MLflow tag: where the run's checkpoints and metrics.json are
WANDB_DEFAULT_HOST = "https://api.wandb.ai"


# -- one adapter per logger kind -------------------------------------------------------------------
class LoggerAdapter:
    """What transferlab sends a logger beyond Lightning's interface; the base stores no images (CSV)."""

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """`image`: (H, W, 3) uint8."""

    def finish(self, failed: bool) -> None:
        """End the logger's run once the job is over (Lightning's `finalize` also runs between fit and test)."""


class TensorBoardAdapter(LoggerAdapter):
    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")


class MLflowAdapter(LoggerAdapter):
    """Images as PNG artifacts under ``images/`` with their step (the UI's image view steps through them)."""

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.logger.experiment.log_image(self.logger.run_id, image, key=tag, step=step)

    def finish(self, failed: bool) -> None:
        self.logger.finalize("failed" if failed else "success")


class WandbAdapter(LoggerAdapter):
    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.logger.log_image(key=tag, images=[image], step=step)

    def finish(self, failed: bool) -> None:
        # Lightning leaves the run open; the next job of an in-process sweep would otherwise log into it.
        run = self.logger._experiment
        if run is not None:
            run.finish(exit_code=1 if failed else 0)


ADAPTERS: dict[type[Logger], type[LoggerAdapter]] = {
    TensorBoardLogger: TensorBoardAdapter,
    MLFlowLogger: MLflowAdapter,
    WandbLogger: WandbAdapter,
}


def adapter_for(logger: Logger) -> LoggerAdapter:
    """The adapter of `logger`'s kind (subclasses included), or the scalars-only base."""
    kind = next((ADAPTERS[cls] for cls in type(logger).__mro__ if cls in ADAPTERS), LoggerAdapter)
    return kind(logger)


# -- what tasks and runs call ----------------------------------------------------------------------
def log_image(module: pl.LightningModule, tag: str, image: torch.Tensor) -> None:
    """Send a (3, H, W) image in [0, 1] (e.g. a ``make_grid``) to every logger that stores images, rank zero."""
    if module.trainer.is_global_zero and module.loggers:
        pixels = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        for logger in module.loggers:
            adapter_for(logger).log_image(tag, pixels, module.global_step)


def log_image_rows(module: pl.LightningModule, tag: str, columns: list[torch.Tensor]) -> None:
    """One grid row per sample, one column per tensor (e.g. degraded | restored | clean), values in [0, 1]."""
    from torchvision.utils import make_grid

    rows = torch.stack([c.detach().float().clamp(0, 1) for c in columns], dim=1).flatten(0, 1)
    log_image(module, tag, make_grid(rows, nrow=len(columns), padding=2, pad_value=1.0))


def log_figure(module: pl.LightningModule, tag: str, figure: Any) -> None:
    """Send a matplotlib figure, drawn as an image, to every logger that stores images, on rank zero only."""
    import matplotlib.pyplot as plt

    if module.trainer.is_global_zero and module.loggers:
        figure.canvas.draw()
        pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
        for logger in module.loggers:
            adapter_for(logger).log_image(tag, pixels, module.global_step)
    plt.close(figure)


@rank_zero_only
def log_hyperparameters(trainer: pl.Trainer, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Log the resolved run config once, with final metrics where the logger takes them (TensorBoard's HPARAMS
    tab), so runs can be compared by their settings."""
    for logger in trainer.loggers:
        if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
            logger.log_hyperparams(params, metrics=metrics)
        else:
            logger.log_hyperparams(params)
        logger.save()


@contextlib.contextmanager
def finishing(loggers: list[Logger]) -> Iterator[None]:
    """End every logger's run when the block ends, marked failed if it raised."""
    failed = True
    try:
        yield
        failed = False
    finally:
        if rank_zero_only.rank == 0:
            for logger in loggers:
                adapter_for(logger).finish(failed)


# -- builders for the optional trackers (the configs' _target_s) ---------------------------------
def _require(module: str, logger_name: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"logger={logger_name} needs the '{module}' package. Install it: {TRACKERS_INSTALL}") from err


@contextlib.contextmanager
def _loggers_above(level: int, *names: str) -> Iterator[None]:
    """Raise the named loggers to `level` for the block: a tracker's chatter on creating its store or run."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels):
            logger.setLevel(old)


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` tracking URI (None for servers and other stores)."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def mlflow_logger(
    experiment_name: str,
    tracking_uri: str,
    run_name: str,
    run_dir: str,
    artifact_location: str | None = None,
    **kwargs: Any,
) -> MLFlowLogger:
    """Lightning's MLflow logger, its run named after the run directory and tagged with its path.

    With a local SQLite store the artifacts (image grids) go to ``artifacts/`` beside the database, unless
    `artifact_location` says otherwise; a tracking server chooses its own. The run is created here, at the
    start of the job, so the MLflow UI lists it while it trains.
    """
    _require("mlflow", "mlflow")
    database = _sqlite_file(tracking_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        if artifact_location is None:
            artifact_location = (database.parent / "artifacts").resolve().as_uri()
    # creating the database logs its migrations (alembic, mlflow.store), a new experiment a Lightning warning
    with _loggers_above(logging.ERROR, "alembic", "mlflow.store.db.utils", "pytorch_lightning.loggers.mlflow"):
        logger = MLFlowLogger(
            experiment_name=experiment_name,
            tracking_uri=tracking_uri,
            run_name=run_name,
            tags={RUN_DIR_TAG: run_dir},
            artifact_location=artifact_location,
            **kwargs,
        )
        _ = logger.experiment
    return logger


def wandb_logged_in() -> bool:
    """Whether W&B has credentials here (``WANDB_API_KEY``, or a ``wandb login`` entry in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_HOST)).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return host is not None and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logger(project: str, save_dir: str, name: str, mode: str | None = None, **kwargs: Any) -> WandbLogger:
    """Lightning's W&B logger, offline unless the user has logged in (or chose ``mode``/``WANDB_MODE``).

    An offline run is written under `save_dir` (``wandb/offline-run-…``); ``wandb sync <that dir>`` uploads
    it later. W&B's own console lines are off (``silent``), and so is its copy of the console (``console``).
    """
    _require("wandb", "wandb")
    import wandb

    if mode is None and not os.environ.get("WANDB_MODE"):
        mode = "online" if wandb_logged_in() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(silent=True, console="off")
    logger = WandbLogger(project=project, save_dir=save_dir, name=name, mode=mode, settings=settings, **kwargs)
    if logger._wandb_init.get("anonymous") is None:  # Lightning's anonymous=None makes W&B warn the setting is gone
        logger._wandb_init.pop("anonymous", None)
    return logger
