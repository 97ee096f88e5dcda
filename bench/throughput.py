"""Training throughput: transferlab's real config/module/trainer vs a hand-written PyTorch loop, one process.

Both train the same backbone + linear head on the same in-memory images with the same optimizer, batch
size, precision and memory format; the data sit on the training device for both (transferlab's
device-resident path is on by default on GPU). Timing skips warm-up steps and synchronises the device only
at the two ends of the timed window.

    python bench/throughput.py                                   # auto device, ResNet-18, 32 px
    python bench/throughput.py --backbone mobilenet_v3_small --steps 30 --batch-size 64   # CPU-sized
    python bench/throughput.py --precision bf16-mixed --compile default   # GPU presets
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path
from tempfile import TemporaryDirectory

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from transferlab.runner import instantiate_named
from transferlab.utils.config import config_dir


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup:
            synchronize(module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args) -> None:
        if trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        synchronize(module.device)
        self.end = time.perf_counter()


def compose_cfg(args: argparse.Namespace, out: Path):
    overrides = [
        f"model.backbone.name={args.backbone}",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"data.train_size={args.dataset_size}",
        "data.test_size=100",
        "data.on_gpu=true",  # device-resident data on both sides (on a CPU run the "device" is the CPU)
        f"data/augment={args.augment}",
        f"trainer.precision={args.precision}",
        f"+trainer.max_steps={args.steps + args.warmup}",
        "trainer.max_epochs=1000",
        "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "callbacks=none",
        "model.scheduler=null",
    ]
    if args.compile:
        overrides.append(f"model.compile={args.compile}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


def transferlab_throughput(cfg, warmup: int) -> float:
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **datamodule.task_args())
    timer = StepTimer(warmup)
    trainer = instantiate(cfg.trainer, callbacks=[timer], logger=instantiate_named(cfg.logger, "logger") or False)
    trainer.fit(model, datamodule=datamodule)
    return timer.steps * cfg.data.batch_size / (timer.end - timer.start)


def raw_loop_throughput(cfg, warmup: int, steps: int) -> float:
    """The hand-written reference: same module weights layout, same optimizer, no framework."""
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **datamodule.task_args())
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    channels_last = device.type == "cuda" if cfg.model.channels_last is None else cfg.model.channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.model.compile:
        model.backbone.compile(mode=cfg.model.compile)
    datamodule.setup("fit")
    source, indices = datamodule._sources["train"]
    images, targets = source.images[indices].to(device), source.targets[indices].to(device)
    optimizer = instantiate(cfg.model.optimizer)(model.parameters())
    bf16 = "bf16" in str(cfg.trainer.precision)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    mean, std = model.pixel_mean.to(device), model.pixel_std.to(device)
    batch_size = cfg.data.batch_size
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = torch.randint(0, len(targets), (batch_size,), device=device)
        x = (images[batch].float() - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model.head(model.backbone(x)), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--dataset-size", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", default="bf16-mixed" if torch.cuda.is_available() else "32-true")
    parser.add_argument("--compile", default=None, help="torch.compile mode for both sides")
    parser.add_argument(
        "--augment", default="none", help="transferlab's augment preset (the raw loop has none): none = model cost only"
    )
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        cfg = compose_cfg(args, Path(tmp))
        raw = raw_loop_throughput(cfg, args.warmup, args.steps)
        framework = transferlab_throughput(cfg, args.warmup)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; {args.backbone} @ {args.image_size}px, batch {args.batch_size}, {args.precision}, "
        f"compile={args.compile}, transferlab augment={args.augment}"
    )
    print(f"hand-written loop : {raw:10.1f} img/s")
    print(f"transferlab       : {framework:10.1f} img/s")
    print(f"ratio             : {framework / raw:10.3f}")


if __name__ == "__main__":
    main()
