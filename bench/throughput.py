"""Training throughput: transferlab's real config → datamodule → task → trainer vs a hand-written loop.

Every case runs both sides **in one process**, on the same model, batch, precision, memory format and
compile mode, with the data already on the device for the hand-written loop. The two sides alternate
(raw, framework, framework, raw, …) for `--repeats` rounds; each case reports the median img/s of each side,
the spread (min–max) and the ratio of the medians. The framework keeps the default user experience: progress
bar and TensorBoard on.

Cases (each named, pick with --case; default: all that fit the device):
  eager_b512, eager_b100        model only (data/augment=none): the framework's cost per step
  e2e_cifar_b512                end to end: device-resident data with the cifar pad-crop + flip preset
  e2e_<preset>_b512             the same for every other built-in preset (--augment-presets)
  compile_<mode>_b512           model.compile=<mode> on the framework side, torch.compile(mode) on the raw side
  cli_epoch                     `tl-train` on CIFAR-10-format files written by the bench: its epoch time
                                (validation included, from time/epoch_s) vs the raw loop's training epoch

    python bench/throughput.py                                  # GPU: every case, ResNet-18 @ 32 px, bf16
    python bench/throughput.py --case eager_b512 --repeats 5
    python bench/throughput.py --smoke                          # CPU: tiny sizes, checks every case runs
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from transferlab.backbones import build_backbone
from transferlab.constants import IMAGENET_MEAN, IMAGENET_STD
from transferlab.runner import build, build_trainer, instantiate_named
from transferlab.utils.config import config_dir

GPU = torch.cuda.is_available()
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
AUGMENT_PRESETS = ("cifar", "flip_rotate", "enhance", "randaugment", "trivialaugment")


@dataclass
class Setup:
    """Sizes shared by all cases (GPU defaults; --smoke shrinks them for a CPU)."""

    backbone: str = "resnet18"
    image_size: int = 32
    steps: int = 100
    warmup: int = 15
    precision: str = "bf16-mixed" if GPU else "32-true"
    repeats: int = 3
    out: Path = field(default_factory=Path)


@dataclass
class Case:
    name: str
    batch_size: int
    augment: str = "none"
    compile: str | None = None
    family: str = "classify"  # classify | folder | restore | style (which hand-written step the raw side runs)
    overrides: list[str] = field(default_factory=list)  # the framework config of a non-default case
    overrides_backbone: str = "resnet18"
    image_size: int = 32


def synchronize() -> None:
    if GPU:
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Wall time of training steps ``warmup``…``warmup + steps`` (device synchronised at both ends only)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.start, self.end = warmup, steps, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup + self.steps:
            synchronize()
            self.end = time.perf_counter()


def compose_cfg(setup: Setup, case: Case, run_dir: Path, data: list[str] | None = None) -> DictConfig:
    """The framework's config for `case`; `data` replaces the default (embedded shapes sized to the steps)."""
    steps = setup.warmup + setup.steps
    shapes = [
        f"data.image_size={setup.image_size}",
        f"data.train_size={int(case.batch_size * (steps + 2) / 0.9) + 10}",  # the timed steps lie in epoch 1
        "data.test_size=100",
    ]
    if case.family == "folder":
        return compose_overrides(
            run_dir,
            [
                *case.overrides,
                f"data.batch_size={case.batch_size}",
                f"model.backbone.name={case.overrides_backbone}",
                "model.backbone.weights=null",  # throughput does not depend on the weights' values
                "model.scheduler=null",
                *common_overrides(setup, steps, epochs=1000),  # a folder is a few batches: epochs wrap
            ],
        )
    if case.family != "classify":
        return compose_overrides(
            run_dir,
            [
                *case.overrides,
                f"data.batch_size={case.batch_size}",
                f"data.train_patches={case.batch_size * (steps + 2)}",
            ]
            + common_overrides(setup, steps),
        )
    overrides = [
        f"model.backbone.name={setup.backbone}",
        "model.backbone.weights=null",
        *(shapes if data is None else data),
        f"data.batch_size={case.batch_size}",
        f"data/augment={case.augment}",
        *common_overrides(setup, steps),
        "model.scheduler=null",
        *([f"model.compile={case.compile}"] if case.compile else []),
    ]
    return compose_overrides(run_dir, overrides)


def common_overrides(setup: Setup, steps: int, epochs: int = 1) -> list[str]:
    """Trainer settings of every case: the timed steps, no validation (``epochs`` > 1 when a small set wraps)."""
    return [
        f"trainer.precision={setup.precision}",
        f"trainer.accelerator={'gpu' if GPU else 'cpu'}",
        f"trainer.max_steps={steps + 1}",
        f"trainer.max_epochs={epochs}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.early_stopping=null",  # acts after validation only, which the timed window never reaches
    ]


def compose_overrides(run_dir: Path, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def framework_rate(cfg: DictConfig, setup: Setup) -> float:
    """img/s through transferlab's config → datamodule → task → trainer (default callbacks and logger)."""
    datamodule = build(cfg.data, "data")
    model = build(cfg.model, "model", **datamodule.task_args())
    timer = StepTimer(setup.warmup, setup.steps)
    callbacks = [*instantiate_named(cfg.get("callbacks"), "callbacks"), timer]
    trainer = build_trainer(cfg, callbacks, instantiate_named(cfg.get("logger"), "logger"))
    trainer.fit(model, datamodule=datamodule)
    return setup.steps * cfg.data.batch_size / (timer.end - timer.start)


def raw_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    backbone = build_backbone(cfg.model.backbone.name, None)
    return nn.Sequential(backbone.body, nn.Linear(backbone.num_features, num_classes))


def raw_rate(
    cfg: DictConfig, setup: Setup, case: Case, tensors: tuple[torch.Tensor, torch.Tensor, int] | None = None
) -> float:
    """img/s of the loop a researcher writes by hand: data on the device, no framework, no augmentation."""
    device = torch.device("cuda" if GPU else "cpu")
    if tensors is None:
        datamodule = build(cfg.data, "data")
        datamodule.setup("fit")
        source, indices = datamodule._sources["train"]
        tensors = (source.images[indices], source.targets[indices], datamodule.num_classes)
    images, targets, num_classes = tensors[0].to(device), tensors[1].to(device), tensors[2]
    model = raw_model(cfg, num_classes).to(device)
    channels_last = GPU
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model, mode=case.compile) if case.compile else model
    fused = {"fused": True} if GPU else {}
    optimizer = build(cfg.model.optimizer, "model.optimizer")(model.parameters(), **fused)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in setup.precision else nullcontext()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    batch_size = case.batch_size
    order = torch.randperm(len(targets), device=device)
    model.train()
    for step in range(setup.warmup + setup.steps):
        if step == setup.warmup:
            synchronize()
            start = time.perf_counter()
        batch = order[torch.arange(step * batch_size, (step + 1) * batch_size, device=device) % len(order)]
        x = (images[batch].float() - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(step_model(x), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize()
    return setup.steps * batch_size / (time.perf_counter() - start)


def raw_model_only_rate(cfg: DictConfig, setup: Setup, case: Case) -> float:
    """img/s of the hand-written loop on random images already on the device (model-only throughput)."""
    with open_dict(cfg):
        cfg.model.backbone.name = case.overrides_backbone
    images = torch.randint(0, 256, (4 * case.batch_size, 3, case.image_size, case.image_size), dtype=torch.uint8)
    targets = torch.randint(0, 10, (len(images),))
    return raw_rate(cfg, setup, case, tensors=(images, targets, 10))


def raw_image_rate(cfg: DictConfig, setup: Setup, case: Case) -> float:
    """img/s of a hand-written restoration / style-transfer step over patches already on the device.

    The patches are made once by the CPU path (same degradations) and cycled; the network, loss and
    optimizer are the task's own modules, called directly as a researcher's loop would.
    """
    device = torch.device("cuda" if GPU else "cpu")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args()).to(device)
    datamodule.setup("fit")
    dataset = datamodule._splits["train"]
    samples = [dataset[i] for i in range(min(len(dataset), 4 * case.batch_size))]
    patches = {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}
    if GPU:
        task = task.to(memory_format=torch.channels_last)
    task._channels_last_on = GPU
    optimizer = torch.optim.Adam(
        [p for p in task.parameters() if p.requires_grad], lr=1e-4, **({"fused": True} if GPU else {})
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in setup.precision else nullcontext()
    count, batch_size = len(samples), case.batch_size
    task.train()
    for step in range(setup.warmup + setup.steps):
        if step == setup.warmup:
            synchronize()
            start = time.perf_counter()
        index = torch.arange(step * batch_size, (step + 1) * batch_size, device=device) % count
        clean = patches["clean"][index].float() / 255
        with autocast:
            if case.family == "restore":
                restored = task(patches["degraded"][index].float() / 255, patches["mask"][index].float())
                loss = F.l1_loss(restored, clean)
            else:
                terms, _, _ = task.loss_terms(clean, fixed_style=False)
                loss = sum(task.weights[name] * term for name, term in terms.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize()
    return setup.steps * batch_size / (time.perf_counter() - start)


def interleaved(rounds: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[list[float], list[float]]:
    """ABBA order over rounds, so neither side always runs first (warm caches, clocks, thermal state)."""
    first, second = [], []
    for i in range(rounds):
        if i % 2 == 0:
            first.append(a())
            second.append(b())
        else:
            second.append(b())
            first.append(a())
    return first, second


def summary(name: str, raw: list[float], framework: list[float], unit: str = "img/s") -> dict[str, Any]:
    raw_median, fw_median = statistics.median(raw), statistics.median(framework)
    return {
        "case": name,
        "unit": unit,
        "raw": sorted(raw),
        "framework": sorted(framework),
        "raw_median": raw_median,
        "framework_median": fw_median,
        "ratio": fw_median / raw_median if unit == "img/s" else raw_median / fw_median,
    }


def run_case(setup: Setup, case: Case) -> dict[str, Any]:
    counter = iter(range(10_000))

    def cfg() -> DictConfig:
        return compose_cfg(setup, case, setup.out / f"{case.name}-{next(counter)}")

    raw_side = {"classify": raw_rate, "folder": raw_model_only_rate}.get(case.family, raw_image_rate)
    raw, framework = interleaved(
        setup.repeats, lambda: raw_side(cfg(), setup, case), lambda: framework_rate(cfg(), setup)
    )
    return summary(case.name, raw, framework)


# -- the CLI epoch ---------------------------------------------------------------------------------
def write_cifar10(root: Path, train_images: int, seed: int = 0) -> Path:
    """CIFAR-10 python batches in the official layout (random pixels: only speed is measured)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = train_images // 5
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = per_batch if name != "test_batch" else max(100, per_batch // 5)
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": (np.arange(n) % 10).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    return root


def cli_epoch_seconds(setup: Setup, data_root: Path, batch_size: int, epochs: int, run_dir: Path) -> float:
    """The last epoch's wall time (training + validation) of a real `tl-train` subprocess."""
    command = [
        sys.executable,
        "-m",
        "transferlab.train",
        "data=cifar10",
        f"data.root={data_root}",
        f"data.batch_size={batch_size}",
        f"model.backbone.name={setup.backbone}",
        "model.backbone.weights=null",
        f"trainer.max_epochs={epochs}",
        f"trainer.precision={setup.precision}",
        f"trainer.accelerator={'gpu' if GPU else 'cpu'}",
        "test=false",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"tl-train failed:\n{result.stderr[-3000:]}")
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]["time/epoch_s"]


def raw_epoch_seconds(setup: Setup, data_root: Path, batch_size: int) -> float:
    """The hand-written loop's time for one training epoch over the same training images, timed after the same
    warm-up steps (then a device sync) as the framework side gets: `tl-train`'s figure is its second epoch, past
    cuDNN autotuning, allocator growth and lazy initialisation, which the raw epoch must not pay for either."""
    case = Case("cli_epoch", batch_size)
    run_dir = setup.out / "raw-epoch"
    cfg = compose_cfg(setup, case, run_dir, ["data=cifar10", f"data.root={data_root}", "data.num_workers=0"])
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    steps = len(datamodule._sources["train"][1]) // batch_size
    epoch = Setup(**{**setup.__dict__, "steps": steps, "warmup": max(1, setup.warmup)})
    rate = raw_rate(cfg, epoch, case)
    return steps * batch_size / rate


def run_cli_epoch(setup: Setup, train_images: int, batch_size: int) -> dict[str, Any]:
    data_root = write_cifar10(setup.out / "cifar", train_images)
    counter = iter(range(10_000))
    raw, framework = interleaved(
        setup.repeats,
        lambda: raw_epoch_seconds(setup, data_root, batch_size),
        lambda: cli_epoch_seconds(setup, data_root, batch_size, 2, setup.out / f"cli-{next(counter)}"),
    )
    return summary("cli_epoch", raw, framework, unit="s/epoch")


def cases(args: argparse.Namespace) -> list[Case]:
    big = 16 if args.smoke else 512
    small = 8 if args.smoke else 100
    presets = args.augment_presets.split(",") if args.augment_presets else list(AUGMENT_PRESETS)
    listed = [Case("eager_b512", big), Case("eager_b100", small)]
    listed += [Case(f"e2e_{preset}_b512", big, augment=preset) for preset in presets]
    modes = args.compile_modes.split(",") if args.compile_modes is not None else (COMPILE_MODES if GPU else ())
    listed += [Case(f"compile_{mode}_b512", big, compile=mode) for mode in modes if mode]
    listed += image_to_image_cases(args.smoke)
    listed += folder_cases(args.smoke, args.folder)
    return [c for c in listed if not args.case or c.name in args.case]


def write_jpeg_folder(root: Path, train_per_class: int, val_per_class: int, size: tuple[int, int]) -> Path:
    """An ImageNet-style folder of photo-like JPEGs (smooth colour fields plus grain), 10 classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                coarse = torch.from_numpy(rng.random((1, 3, 6, 8), dtype=np.float32))
                smooth = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0]
                grain = torch.from_numpy(rng.normal(0, 0.03, (3, *size)).astype(np.float32))
                pixels = ((smooth + grain).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def folder_cases(smoke: bool, folder: Path | None) -> list[Case]:
    """ResNet-50 / ResNet-18 @ 224 px from a folder of JPEG files: decoded by workers, and from the cache."""
    if folder is None:
        return []
    size, cache = (32, 40) if smoke else (224, 256)
    workers = max(1, (os.cpu_count() or 2) - 1)
    data = ["data=imagefolder", f"data.root={folder}", f"data.image_size={size}", f"data.num_workers={workers}"]
    backbones = ["mobilenet_v3_small"] if smoke else ["resnet50", "resnet18"]
    batch = 4 if smoke else 256
    return [
        Case(
            f"folder_{source}_{bb}",
            batch,
            family="folder",
            overrides=data + extra,
            overrides_backbone=bb,
            image_size=size,
        )
        for bb in backbones
        for source, extra in (("files", []), ("cache", [f"data.cache={cache}"]))
    ]


def image_to_image_cases(smoke: bool) -> list[Case]:
    """Restoration and style transfer through the photos datamodule (patches cut and degraded on the device)."""
    tiny = ["data.patch_size=32"] if smoke else []
    return [
        Case(
            "dncnn17_b128",
            4 if smoke else 128,
            family="restore",
            overrides=["experiment=denoising", "data.patch_size=64", "model.net.depth=17", "model.net.channels=64"]
            + (["model.net.depth=4", "model.net.channels=8", *tiny] if smoke else []),
        ),
        Case(
            "unet_resnet34_b32",
            4 if smoke else 32,
            family="restore",
            overrides=["experiment=denoising", "model=restore_unet", "model.loss=l1", "data.patch_size=128"]
            + (
                ["model.backbone.name=resnet18", "model.net.width=8", *tiny]
                if smoke
                else ["model.backbone.name=resnet34"]
            ),
        ),
        Case(
            "edsr_x2_b16",
            4 if smoke else 16,
            family="restore",
            overrides=["experiment=denoising", "model=super_resolution", "data/degrade=downscale", "data.patch_size=96"]
            + (["model.net.channels=8", "model.net.blocks=2", *tiny] if smoke else []),
        ),
        Case(
            "johnson_vgg16_b8",
            2 if smoke else 8,
            family="style",
            overrides=[
                "experiment=style_transfer",
                "data.patch_size=256",
                "model.net.channels=32",
                "model.net.res_blocks=5",
            ]
            + (
                ["data.patch_size=64", "model.net.channels=4", "model.net.res_blocks=1", "model.style_size=64"]
                if smoke
                else []
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", help="run only these cases (repeatable); cli_epoch included")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--compile-modes", default=None, help="comma list (default: all on GPU, none on CPU)")
    parser.add_argument("--augment-presets", default=None, help=f"comma list (default: {','.join(AUGMENT_PRESETS)})")
    parser.add_argument("--cli-images", type=int, default=45_000, help="training images of the cli_epoch case")
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: tiny model, few steps, every case once")
    parser.add_argument("--no-folder", action="store_true", help="skip the JPEG-folder cases (they write a folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    setup = Setup(backbone=args.backbone, steps=args.steps, repeats=args.repeats)
    if args.smoke:
        setup = Setup(backbone="mobilenet_v3_small", steps=3, warmup=2, repeats=1)
    device = torch.cuda.get_device_name() if GPU else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; torch {torch.__version__}, Lightning {pl.__version__}; {setup.backbone} @ "
        f"{setup.image_size} px, {setup.precision}, {setup.steps} timed steps × {setup.repeats} rounds",
        flush=True,
    )
    results = []
    with TemporaryDirectory() as tmp:
        setup.out = Path(tmp)
        args.folder = None
        wanted = not args.case or any(name.startswith("folder_") for name in args.case)
        if not args.no_folder and wanted:
            per_class, shape = (4, (48, 64)) if args.smoke else (400, (375, 500))
            args.folder = write_jpeg_folder(setup.out / "jpegs", per_class, max(1, per_class // 10), shape)
            from transferlab.data.imagefolder import write_cache

            write_cache(args.folder, 40 if args.smoke else 256, workers=os.cpu_count() or 1)
        for case in cases(args):
            results.append(run_case(setup, case))
            print_row(results[-1])
        if not args.case or "cli_epoch" in args.case:
            images = 400 if args.smoke else args.cli_images
            results.append(run_cli_epoch(setup, images, 16 if args.smoke else 128))
            print_row(results[-1])
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": results}, indent=2))


def print_row(row: dict[str, Any]) -> None:
    def fmt(values: list[float]) -> str:
        return f"{statistics.median(values):10.1f} ({min(values):.1f}–{max(values):.1f})"

    print(
        f"{row['case']:<26} raw {fmt(row['raw'])}  transferlab {fmt(row['framework'])} {row['unit']}"
        f"  ratio {row['ratio']:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
