"""Experiment loggers (TensorBoard, CSV, MLflow, W&B) and what tasks send them besides scalars.

Scalars and hyper-parameters go through Lightning's logger interface, which every logger implements. Images
(validation grids, confusion matrices) have no common interface, so each logger kind has one small adapter,
looked up by the logger's type (`adapter_for`): a task logs an image once, and every logger that can store
images gets it. A logger without one (CSV) keeps scalars only.

A run is visible in every tracker from its start: `start_runs` sends the resolved config and the run's tags
before training, `log_final_metrics` adds the final metrics at the end, and `finishing` marks how the run
ended (finished, failed, or killed by SIGTERM/Ctrl-C) where the tracker has a status for it.

MLflow and W&B are optional (``pip install 'transferlab[trackers]'``). Their builders give the defaults a
researcher comparing runs expects: one MLflow store for every run under ``outputs/`` (a sweep's jobs side by
side in one experiment, tagged with their sweep), and W&B offline unless the user has logged in, so nothing
reaches the network or waits for a prompt by surprise; a sweep's W&B runs share a group.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from transferlab.upstream.lightning import module_name
from transferlab.utils import resolvers
from transferlab.utils.extras import require_tracker

RUN_DIR_TAG = "transferlab.run_dir"  # MLflow tag: where the run's checkpoints and metrics.json are
SWEEP_TAG = "transferlab.sweep"  # MLflow tag: the sweep a job belongs to (W&B: the run's group)
STOPPED = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # exit statuses of a run stopped from outside
WANDB_DEFAULT_HOST = "https://api.wandb.ai"


# -- one adapter per logger kind -------------------------------------------------------------------
class LoggerAdapter:
    """What transferlab sends a logger beyond Lightning's interface; the base stores no images (CSV)."""

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """`image`: (H, W, 3) uint8."""

    def start(self, params: dict[str, Any], tags: list[str]) -> None:
        """Record the run's config as it starts (`params` holds the tags too, under ``tags``)."""
        self.logger.log_hyperparams(params)
        self.logger.save()

    def end(self, metrics: dict[str, float]) -> None:
        """Add the final metrics of a finished run; a tracker's metrics already end with their last values."""

    def finish(self, exit_code: int) -> None:
        """End the logger's run once the job is over (Lightning's `finalize` also runs between fit and test).
        `exit_code`: 0 finished, 128 + the signal when stopped (`STOPPED`), anything else failed."""


class TensorBoardAdapter(LoggerAdapter):
    """The HPARAMS tab, written in two parts: the config (session start) before training, so a running or
    crashed job is listed with its settings, and the final metrics (experiment and session end) once it ends.

    TensorBoard keeps the first of each part a run directory holds, so a run that fails gets no end: a job
    resumed into the same directory later still ends as a success (its status stays "unknown" until then).
    """

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")

    def start(self, params: dict[str, Any], tags: list[str]) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.logger.log_hyperparams(params, metrics={})  # hparams.yaml only: no metric, so no summary yet
        self.logger.save()
        _, session_start, _ = hparams(_tensorboard_values(params), {})
        self._write(session_start)

    def end(self, metrics: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.logger.log_metrics(metrics)  # the values the HPARAMS tab shows, as scalars
        experiment, _, session_end = hparams(_tensorboard_values(dict(self.logger.hparams)), metrics)
        self._write(experiment, session_end)

    def _write(self, *summaries: Any) -> None:
        from transferlab.upstream.tensorboard_file_writer import add_summaries

        writer = self.logger.experiment
        add_summaries(writer, *summaries)  # as Lightning's own log_hyperparams does
        writer.flush()  # on disk now, not at the writer's next periodic flush


def _tensorboard_values(params: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """HPARAMS values: numbers, strings and booleans as they are, a list as ``a,b`` (``tags``), others as text."""
    return {key: _tensorboard_value(value) for key, value in params.items()}


def _tensorboard_value(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


class MLflowAdapter(LoggerAdapter):
    """Images as PNG artifacts under ``images/`` with their step (the UI's image view steps through them)."""

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.logger.experiment.log_image(self.logger.run_id, image, key=tag, step=step)

    def start(self, params: dict[str, Any], tags: list[str]) -> None:
        from mlflow.entities import RunTag

        super().start(params, tags)  # the config as params
        if tags:  # one MLflow tag per name, searchable as tags.baseline = 'true'
            self.logger.experiment.log_batch(self.logger.run_id, tags=[RunTag(tag, "true") for tag in tags])

    def finish(self, exit_code: int) -> None:
        self.logger.finalize("success" if exit_code == 0 else "KILLED" if exit_code in STOPPED else "failed")


class WandbAdapter(LoggerAdapter):
    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.logger.log_image(key=tag, images=[image], step=step)

    def start(self, params: dict[str, Any], tags: list[str]) -> None:
        super().start(params, tags)  # the config (this starts the W&B run)
        if tags:
            self.logger.experiment.tags = tuple(tags)

    def finish(self, exit_code: int) -> None:
        # Lightning leaves the run open; the next job of an in-process sweep would otherwise log into it. W&B
        # shows a non-zero exit code as a failed run.
        from transferlab.upstream.lightning_wandb_logger import started_run

        run = started_run(self.logger)
        if run is not None:
            run.finish(exit_code=exit_code)


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
def start_runs(loggers: list[Logger], params: dict[str, Any], tags: list[str]) -> None:
    """Send each logger the resolved run config and the run's tags before training, so a running, killed or
    crashed job can be found and compared by its settings."""
    for logger in loggers:
        adapter_for(logger).start(params, tags)


@rank_zero_only
def log_final_metrics(loggers: list[Logger], metrics: dict[str, float]) -> None:
    """Add a finished run's final metrics (TensorBoard's HPARAMS tab shows them next to the config)."""
    for logger in loggers:
        adapter_for(logger).end(metrics)
        logger.save()


def exit_code(error: BaseException | None) -> int:
    """The exit status a job ends with: 0, 128 + the signal for a run stopped by SIGTERM or Ctrl-C, else the
    failure's own (1 for an exception)."""
    if isinstance(error, SIGTERMException):  # a SystemExit without a code
        return 128 + signal.SIGTERM
    ctrl_c = (
        isinstance(error, KeyboardInterrupt)
        or isinstance(error, SystemExit)
        and isinstance(error.__context__, KeyboardInterrupt)
    )  # the second: Lightning's sys.exit(1) after a Ctrl-C
    if ctrl_c:
        return 128 + signal.SIGINT
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else int(error.code is not None)
    return 0 if error is None else 1


@contextlib.contextmanager
def finishing(loggers: list[Logger]) -> Iterator[None]:
    """End every logger's run when the block ends: finished, failed if it raised, killed if it was stopped."""
    error: BaseException | None = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        if rank_zero_only.rank == 0:
            for logger in loggers:
                adapter_for(logger).finish(exit_code(error))


# -- builders for the optional trackers (the configs' _target_s) ---------------------------------
def _require(module: str, logger_name: str) -> None:
    require_tracker(module, logger_name)  # the preflight said it first; this covers configs built in Python


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


def sweep_group(log_dir: str) -> str | None:
    """The group a sweep's jobs share in the trackers: their sweep directory, named as runs are (`run_name`:
    ``multirun/<date>/<time>``). None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return resolvers.run_name(str(HydraConfig.get().sweep.dir), log_dir)  # Hydra's own job directory is under this one


def mlflow_logger(
    experiment_name: str,
    tracking_uri: str,
    run_name: str,
    run_dir: str,
    artifact_location: str | None = None,
    group: str | None = None,
    log_dir: str | None = None,
    **kwargs: Any,
) -> MLFlowLogger:
    """Lightning's MLflow logger, its run named after the run directory and tagged with its path and its group
    (`group`, else the sweep's, named relative to `log_dir`).

    With a local SQLite store the artifacts (image grids) go to ``artifacts/`` beside the database, unless
    `artifact_location` says otherwise; a tracking server chooses its own. The run is created here, at the
    start of the job, so the MLflow UI lists it while it trains.
    """
    _require("mlflow", "mlflow")
    group = group or (sweep_group(log_dir) if log_dir else None)
    database = _sqlite_file(tracking_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        if artifact_location is None:
            artifact_location = (database.parent / "artifacts").resolve().as_uri()
    # creating the database logs its migrations (alembic, mlflow.store), a new experiment a Lightning warning
    with _loggers_above(
        logging.ERROR, "alembic", "mlflow.store.db.utils", module_name("pytorch_lightning.loggers.mlflow")
    ):
        logger = MLFlowLogger(
            experiment_name=experiment_name,
            tracking_uri=tracking_uri,
            run_name=run_name,
            tags={RUN_DIR_TAG: run_dir, **({SWEEP_TAG: group} if group else {})},
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


def wandb_logger(
    project: str,
    save_dir: str,
    name: str,
    mode: str | None = None,
    group: str | None = None,
    log_dir: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """Lightning's W&B logger, offline unless the user has logged in (or chose ``mode``/``WANDB_MODE``), its run
    in `group`, else in its sweep's group (named relative to `log_dir`).

    An offline run is written under `save_dir` (``wandb/offline-run-…``); ``wandb sync <that dir>`` uploads
    it later. W&B's own console lines are off (``silent``), and so is its copy of the console (``console``).
    """
    _require("wandb", "wandb")
    import wandb

    group = group or (sweep_group(log_dir) if log_dir else None)

    if mode is None and not os.environ.get("WANDB_MODE"):
        mode = "online" if wandb_logged_in() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(silent=True, console="off")
    logger = WandbLogger(
        project=project, save_dir=save_dir, name=name, mode=mode, group=group, settings=settings, **kwargs
    )
    from transferlab.upstream.lightning_wandb_logger import drop_unset_anonymous

    drop_unset_anonymous(logger)  # Lightning's anonymous=None makes W&B warn the setting is gone
    return logger
