"""Framework cost per training step, measurable on any machine: transferlab vs a hand-written loop.

The model is a one-layer convnet on 8 px images, so its compute is negligible and what remains per step is
host work: Lightning's loop and hooks, the task's step, metric updates, logging, the progress bar, the data
path. Both sides run the same model, optimizer, batch and device-resident data in one process, interleaved
(raw, framework, raw, framework, …) and repeated; the report is the median ms/step of each side, their
spread (min–max over repeats) and the framework's extra milliseconds per step. Progress bar and TensorBoard
stay on: the default user experience is what is measured.

    python bench/host_overhead.py                      # 5 repeats × 150 steps, CPU
    python bench/host_overhead.py --json out.json      # also write the figures as JSON (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from transferlab.constants import IMAGENET_MEAN, IMAGENET_STD
from transferlab.runner import build, build_trainer, instantiate_named
from transferlab.utils.config import config_dir


class TinyNet(nn.Module):
    """conv3x3(3→8) → global average pool: a few microseconds of compute per batch."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, self.num_features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class StepTimer(pl.Callback):
    """Wall time of training steps `warmup`…`warmup + steps` (inside one epoch)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.start, self.end = warmup, steps, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup + self.steps:
            self.end = time.perf_counter()


def compose_cfg(out: Path, batch_size: int, steps: int, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data.image_size=8",
                f"data.batch_size={batch_size}",
                f"data.train_size={batch_size * (steps + 14) * 2}",  # the timed window lies inside epoch 1
                "data.test_size=20",
                "data.on_gpu=true",  # the device-resident path (on a CPU run the "device" is the CPU)
                "data/augment=none",
                "trainer.accelerator=cpu",
                "trainer.max_epochs=1",
                f"trainer.max_steps={steps + 12}",
                "trainer.num_sanity_val_steps=0",
                "trainer.limit_val_batches=0",
                "model.backbone.name=mobilenet_v3_small",  # replaced by TinyNet below
                "model.backbone.weights=null",
                "model.scheduler=null",
                "callbacks.early_stopping=null",  # acts only after validation, which this window never reaches
                "cpu_threads=1",  # as the hand-written side runs (main); the default would take every granted core
                *overrides,
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


def with_tiny_network(task: pl.LightningModule, num_classes: int) -> pl.LightningModule:
    task.backbone = TinyNet()
    task.head = nn.Linear(TinyNet.num_features, num_classes)
    return task


def framework_ms(cfg: DictConfig, warmup: int, steps: int) -> float:
    """ms/step through transferlab's config → datamodule → task → trainer (callbacks and logger as configured)."""
    datamodule = build(cfg.data, "data")
    task = with_tiny_network(build(cfg.model, "model", **datamodule.task_args()), datamodule.num_classes)
    timer = StepTimer(warmup, steps)
    callbacks = [*instantiate_named(cfg.get("callbacks"), "callbacks"), timer]
    trainer = build_trainer(cfg, callbacks, instantiate_named(cfg.get("logger"), "logger"))
    trainer.fit(task, datamodule=datamodule)
    return (timer.end - timer.start) * 1000 / steps


def raw_ms(cfg: DictConfig, warmup: int, steps: int) -> float:
    """ms/step of the loop a researcher writes by hand over the same tensors, model and optimizer."""
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    source, indices = datamodule._sources["train"]
    images, targets = source.images[indices], source.targets[indices]
    model = nn.Sequential(TinyNet(), nn.Linear(TinyNet.num_features, datamodule.num_classes))
    optimizer = build(cfg.model.optimizer, "model.optimizer")(model.parameters())
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    batch_size = cfg.data.batch_size
    order = torch.randperm(len(targets))
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        batch = order[step * batch_size : (step + 1) * batch_size]
        x = (images[batch].float() - mean) / std
        loss = F.cross_entropy(model(x), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) * 1000 / steps


def measure(repeats: int, steps: int, warmup: int, batch_size: int, overrides: list[str]) -> dict[str, Any]:
    """Interleaved repeats of both sides; medians, spreads and the framework's extra ms/step."""
    raw, framework = [], []
    with TemporaryDirectory() as tmp:
        for i in range(repeats):
            cfg = compose_cfg(Path(tmp) / f"run{i}", batch_size, steps, overrides)
            pl.seed_everything(i, verbose=False)
            raw.append(raw_ms(cfg, warmup, steps))
            framework.append(framework_ms(cfg, warmup, steps))
    return {
        "device": f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}, Lightning {pl.__version__}",
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "raw_ms": sorted(raw),
        "framework_ms": sorted(framework),
        "raw_median_ms": statistics.median(raw),
        "framework_median_ms": statistics.median(framework),
        "overhead_ms": statistics.median(framework) - statistics.median(raw),
        "overhead_paired_ms": statistics.median(f - r for f, r in zip(framework, raw)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sides, e.g. logger=none")
    args = parser.parse_args()
    torch.set_num_threads(1)  # negligible compute: threads only add scheduling noise
    result = measure(args.repeats, args.steps, args.warmup, args.batch_size, args.overrides)
    print(f"device: {result['device']}; batch {args.batch_size}, {args.steps} steps × {args.repeats} repeats")
    for side in ("raw", "framework"):
        values, median = result[f"{side}_ms"], result[f"{side}_median_ms"]
        print(f"{side:<10}: median {median:.3f} ms/step (min {values[0]:.3f}, max {values[-1]:.3f})")
    print(f"framework overhead: {result['overhead_ms']:.3f} ms/step (paired median {result['overhead_paired_ms']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
