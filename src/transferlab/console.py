"""What a run prints: a header, a progress bar, one line per epoch, the final results, where the outputs are.

Lightning's own console output (device banners, a cloud-logging tip, a model table with an empty FLOPs column,
a per-class test table, deprecation warnings from its internals) is kept out unless ``verbose=true``. It is
silenced narrowly: Lightning's informational loggers are raised to WARNING for the duration of the run, and
the few third-party warnings transferlab itself provokes are ignored by message and module, inside the run
only. Warnings caused by the user's settings still show.

Libraries: Lightning's ModelSummary (and RichProgressBar, in callbacks.py) are subclassed, not replaced: the summary
drops the FLOPs column Lightning fills with zeros, the bar copies logged values to the host only on logging steps.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary import get_human_readable_count

from transferlab.upstream.lightning import module_name

# Loggers whose INFO lines are Lightning's chatter (GPU/TPU banners, seed, tips, checkpoint restore notes).
# Named as the running Lightning package names them (transferlab.upstream.lightning: standalone or unified).
_CHATTY_LOGGERS = tuple(
    module_name(name)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.seed", "lightning_fabric")
)
_PL = r"(?:pytorch_lightning|lightning\.pytorch)"  # a warning's module, under either package
_FABRIC = r"(?:lightning_fabric|lightning\.fabric)"
# (message regex, module regex) of warnings that transferlab's own use of its libraries provokes.
_PROVOKED_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\)", _PL + r"\.utilities\._pytree"),  # Lightning vs torch 2.10+
    (r"Found \d+ module\(s\) in eval mode at the start of training", _PL + r"\.loops\.fit_loop"),
    # CSV logs go straight into the job directory, which always holds .hydra/ already
    (r"Experiment logs directory .* exists and is not empty", _FABRIC + r"\.loggers\.csv_logs"),
    # epoch means are logged by transferlab whatever the interval; only the step loss follows log_every_n_steps
    (r"The number of training batches \(\d+\) is smaller than the logging interval", _PL + r"\.loops"),
    # a machine with SLURM's client tools installed, used locally (SLURM jobs run through hydra/launcher=slurm)
    (r"The `srun` command is available on your system but is not used", _FABRIC + r"\.plugins\.environments"),
)


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Warnings and errors only from these loggers for the block (their INFO chatter off)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """Lightning's chatter and the warnings transferlab provokes off for the block (unless `verbose`)."""
    if verbose:
        yield
        return
    with warnings.catch_warnings(), quiet_loggers(*_CHATTY_LOGGERS):
        for message, module in _PROVOKED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, module=module)
        yield


def header(cfg: Any, trainer: pl.Trainer, run_dir: Any, cpu: dict[str, Any] | None = None) -> str:
    """One line: task, model, data, device, and where the outputs go; on a CPU the threads and loader workers
    (`cpu`: `transferlab.utils.threads.cpu_record`) and where their count came from."""
    task = str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1].removesuffix("Task")
    backbone = cfg.model.get("backbone")
    net = cfg.model.get("net")
    if backbone is not None:
        model = f"{backbone.get('name')} ({backbone.get('weights') or 'random init'})"
    elif net is not None:
        model = str(net.get("_target_", "net")).rsplit(".", 1)[-1]
    else:
        model = task
    data = str(cfg.data.get("_target_", "?")).rsplit(".", 1)[-1].removesuffix("DataModule")
    device = trainer.strategy.root_device.type
    devices = f"{trainer.world_size}×{device}" if trainer.world_size > 1 else device
    if device == "cpu":  # what this machine grants the run (transferlab.utils.threads)
        threads = torch.get_num_threads()
        devices += f" ({threads} thread{'s' if threads > 1 else ''}"
        if cpu is not None:
            workers = cpu["loader_workers"]
            devices += f", {workers} loader worker{'' if workers == 1 else 's'}; from {cpu['source']}"
        devices += ")"
    return f"transferlab: {task} · {model} · {data} · {devices}, {trainer.precision} · run dir {run_dir}"


def inputs_line(preprocessing: Any, data: dict[str, Any]) -> str:
    """``inputs: mean […] std […] (where from) · eval resize ×1.143 (where from)``: what the model's weights expect
    (`backbones.Preprocessing`) and the datamodule's eval resize when it has one (`preprocessing_record`)."""
    line = f"inputs: {preprocessing.describe()}"
    if "eval_resize_ratio" in data:
        line += f" · eval resize ×{data['eval_resize_ratio']:.4g} ({data['eval_resize_source']})"
    return line


def results_line(metrics: dict[str, float], prefix: str = "test/") -> str:
    """``test: acc 0.9720 · acc_top5 0.9990 · loss 0.0931`` (per-class values are in metrics.json)."""
    shown = {k.removeprefix(prefix): v for k, v in sorted(metrics.items()) if k.startswith(prefix) and k.count("/") < 2}
    return prefix.rstrip("/") + ": " + " · ".join(f"{name} {value:.4f}" for name, value in shown.items())


class EpochLine(pl.Callback):
    """One line per epoch: training loss, the validation metrics, and the epoch's time.

    Lightning aggregates an epoch's logged values after the epoch-end hooks, so the line for an epoch is
    printed when the next one starts (or training ends), from the trainer's metrics (one host read per epoch).
    """

    def __init__(self) -> None:
        self._epoch: tuple[int, float] | None = None  # (index, start time) of the epoch not yet printed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(trainer)
        self._epoch = (trainer.current_epoch, time.monotonic())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(trainer)

    def _print(self, trainer: pl.Trainer) -> None:
        if self._epoch is None or not trainer.is_global_zero:
            return
        (epoch, started), self._epoch = self._epoch, None
        logged = trainer.callback_metrics
        names = [n for n in ("train/loss",) if n in logged]
        names += sorted(n for n in logged if n.startswith("val/") and n.count("/") == 1)
        values = " · ".join(f"{name} {float(logged[name]):.4f}" for name in names)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {epoch + 1}{total}: {values} ({time.monotonic() - started:.1f} s)", flush=True)


class CompactModelSummary(ModelSummary):
    """The model's top-level modules with their parameter counts; no FLOPs column (Lightning fills it with
    zeros unless a FLOP counter is configured), no per-mode counts."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = dict(summary_data)
        table = zip(columns["Name"], columns["Type"], columns["Params"])
        rows = [f"  {name:<12} {kind:<24} {params.strip():>8}" for name, kind, params in table]
        total, frozen = (
            get_human_readable_count(int(n)).strip()
            for n in (total_parameters, total_parameters - trainable_parameters)
        )
        print(
            f"model: {total} parameters ({frozen} frozen), {model_size:.1f} MB",
            *rows,
            sep="\n",
            flush=True,
        )
