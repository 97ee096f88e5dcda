"""`tl-eval ckpt_path=…`: test a transferlab checkpoint, on the data its run used unless told otherwise."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from transferlab import __version__
from transferlab.runner import (
    build,
    build_trainer,
    hydra_app,
    instantiate_named,
    output_dir,
    scalar_metrics,
    task_overrides,
    write_json_atomic,
)
from transferlab.utils.errors import UserError


def read_run_config(ckpt_path: Path) -> dict[str, Any]:
    """The resolved config of the run that wrote `ckpt_path` (stored in it by `RunConfigInCheckpoint`)."""
    if not ckpt_path.is_file():
        raise UserError(f"checkpoint {ckpt_path} does not exist. Pass ckpt_path=<run dir>/checkpoints/best.ckpt")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise UserError(f"cannot read checkpoint {ckpt_path}: {str(err).splitlines()[0]}") from err
    info = checkpoint.get("transferlab") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict) or "config" not in info:
        raise UserError(f"{ckpt_path} was not written by tl-train (no transferlab run config inside)")
    return info["config"]


def load_task(ckpt_path: Path, run_config: dict[str, Any]) -> pl.LightningModule:
    """Rebuild the task from its checkpoint; source weights are not re-fetched (the checkpoint has them)."""
    task_cls = get_class(run_config["model"]["_target_"])
    return task_cls.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True, load_source_weights=False)


def run(cfg: DictConfig) -> dict[str, float]:
    started = time.time()
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    run_config = read_run_config(ckpt_path)
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True)
    data_cfg = cfg.data if cfg.get("data") is not None else OmegaConf.create(run_config["data"])
    datamodule = build(data_cfg, "data")
    model = load_task(ckpt_path, run_config)
    trainer = build_trainer(cfg, [], instantiate_named(cfg.get("logger"), "logger"))
    results = trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics(results[0] if results else {})
    if trainer.is_global_zero:
        write_json_atomic(
            output_dir() / "metrics.json",
            {
                "checkpoint": str(ckpt_path.resolve()),
                "metrics": metrics,
                "wall_time_s": round(time.time() - started, 2),
                "overrides": task_overrides(),
                "version": __version__,
            },
        )
        print(f"Run directory: {output_dir()}", flush=True)
    return metrics


@hydra_app("eval")
def main(cfg: DictConfig) -> dict[str, float]:
    return run(cfg)


if __name__ == "__main__":
    main()
