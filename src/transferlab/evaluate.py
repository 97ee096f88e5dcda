"""`tl-eval ckpt_path=…`: test a transferlab checkpoint, on the data its run used unless told otherwise."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from transferlab import __version__, api
from transferlab.api import callable_module
from transferlab.cli import hydra_app
from transferlab.console import quiet, results_line
from transferlab.constants import METRICS_FILE
from transferlab.loggers import finishing
from transferlab.runner import (
    build,
    build_trainer,
    instantiate_named,
    output_dir,
    split_metrics,
    task_overrides,
)
from transferlab.trust import open_checkpoint
from transferlab.utils.io import write_json_atomic
from transferlab.utils.threads import cpu_record


def run(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint; return its test metrics (also written to metrics.json)."""
    with quiet(bool(cfg.get("verbose", False))):
        return _test(cfg)


def _test(cfg: DictConfig) -> dict[str, float]:
    started = time.time()
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    checkpoint = open_checkpoint(ckpt_path, cfg.trusted_targets)  # checked before anything is built from it
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True)
    # data=<name> on the command line is the user's own config; otherwise the run's, as checked data
    model = checkpoint.build_task()
    datamodule = build(cfg.data, "data") if cfg.get("data") is not None else checkpoint.build_datamodule()
    datamodule.follow_weights(model.preprocessing)  # the eval resize the run used, unless data.* sets it
    datamodule.record_skipped_files_in(output_dir() / "skipped_files")
    loggers = instantiate_named(cfg.get("logger"), "logger")
    with finishing(loggers):
        trainer = build_trainer(cfg, [], loggers)
        verbose = bool(cfg.get("verbose", False))
        results = trainer.test(model, datamodule=datamodule, verbose=verbose)
    metrics, non_finite = split_metrics(results[0] if results else {})
    if trainer.is_global_zero:
        if not verbose:
            print(results_line(metrics), flush=True)
        write_json_atomic(
            output_dir() / METRICS_FILE,
            {
                "checkpoint": str(ckpt_path.resolve()),
                "metrics": metrics,
                "non_finite_metrics": non_finite,
                "skipped_files": datamodule.skipped_files(),
                "wall_time_s": round(time.time() - started, 2),
                "cpu": cpu_record(getattr(datamodule, "workers_used", None)),  # as tl-train's
                "overrides": task_overrides(),
                "version": __version__,
            },
        )
        print(f"Run directory: {output_dir()}", flush=True)
    return metrics


@hydra_app("eval")
def main(cfg: DictConfig) -> dict[str, float]:
    return run(cfg)


callable_module(__name__, api.evaluate)  # `transferlab.evaluate([...])`: the Python API


if __name__ == "__main__":
    main()
