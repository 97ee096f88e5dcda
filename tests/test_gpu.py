"""The GPU paths, run where a CUDA device exists, in a process of their own (``python -m pytest -m gpu``);
skipped, with the reason, elsewhere.

Each checks what only a GPU can show: bf16 + channels_last training from device-resident data with no
device→host synchronisation between logging steps (CUDA's own sync checker, in error mode), compiled steps,
fused optimizers, the photos/degradation device path, batched nvJPEG decoding and DDP on one GPU. Every test
asserts that it really ran on CUDA at the precision it claims (`assert_ran_on_cuda`): a value override such as
debug=tiny's ``trainer.accelerator=cpu`` beats ``trainer=gpu``, so the CPU overrides are dropped first.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, TINY_PHOTOS, fit_briefly
from transferlab.runner import build, build_trainer, instantiate_named

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU box with -m gpu)"),
]

GPU = ["trainer=gpu", "trainer.enable_progress_bar=true", "logger=tensorboard"]


def on_gpu(*base: str) -> list[str]:
    """The tiny CPU overrides without their trainer settings, plus the GPU trainer."""
    return [o for o in base if not o.startswith("trainer.")] + GPU


def assert_ran_on_cuda(trainer, precision: str = "bf16-mixed") -> None:
    """The run trained on a CUDA device at `precision`, its parameters on that device."""
    assert trainer.strategy.root_device.type == "cuda", trainer.strategy.root_device
    assert trainer.precision == precision, trainer.precision
    assert next(trainer.lightning_module.parameters()).is_cuda


def fit_with_sync_check(cfg, start: int = 5, stop: int = 25):
    """Fit `cfg`, with CUDA's sync checker raising on any synchronisation during steps [start, stop) that are
    not logging steps."""
    import pytorch_lightning as pl

    class Checker(pl.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            step = trainer.global_step
            logging = (step + 1) % trainer.log_every_n_steps == 0 or step % trainer.log_every_n_steps == 0
            strict = start <= step < stop and not logging
            torch.cuda.set_sync_debug_mode("error" if strict else "default")

        def on_train_end(self, *args) -> None:
            torch.cuda.set_sync_debug_mode("default")

    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    callbacks = [*instantiate_named(cfg.callbacks, "callbacks"), Checker()]
    trainer = build_trainer(cfg, callbacks, instantiate_named(cfg.logger, "logger"))
    try:
        trainer.fit(task, datamodule=datamodule)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return trainer, task


def test_bf16_channels_last_device_resident_training_never_syncs(make_cfg) -> None:
    cfg = make_cfg(
        *on_gpu(*TINY),
        "data.train_size=2000",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "data/augment=randaugment",
        tiny=False,
    )
    trainer, task = fit_with_sync_check(cfg)
    assert_ran_on_cuda(trainer)
    assert task._channels_last_on
    assert type(trainer.train_dataloader).__name__ == "DeviceBatchLoader"
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults.get("fused") is True
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_trains_on_gpu(make_cfg, mode: str) -> None:
    cfg = make_cfg(*on_gpu(*TINY), f"model.compile={mode}", "data.train_size=400", "trainer.max_epochs=2", tiny=False)
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    trainer = fit_briefly(task, datamodule, epochs=2, steps=6, accelerator="gpu", precision="bf16-mixed")
    assert_ran_on_cuda(trainer)
    assert task.forward.compiled is not None and task.forward.first_call_s is not None


@pytest.mark.parametrize(("model", "degrade"), [("denoise", "gaussian_noise"), ("restore_unet", "inpaint_brush")])
def test_photo_patches_and_degradations_on_gpu_never_sync(make_cfg, model: str, degrade: str) -> None:
    overrides = [*TINY_PHOTOS, *GPU, f"model={model}", f"data/degrade={degrade}", "data.train_patches=256"]
    cfg = make_cfg(
        *[o for o in overrides if not o.startswith("trainer.accelerator")], "trainer.max_epochs=1", tiny=False
    )
    trainer, _ = fit_with_sync_check(cfg, start=3, stop=10)
    assert_ran_on_cuda(trainer)
    assert type(trainer.train_dataloader).__name__ == "DevicePatchLoader"


def test_jpeg_batches_decode_on_the_gpu(tmp_path) -> None:
    from PIL import Image

    from transferlab.data.jpeg_batches import EncodedImages, collate_encoded, decode_batch

    paths = []
    for i, size in enumerate([(40, 30), (64, 48)]):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", size, (200, 30, 90)).save(path)
        paths.append((str(path), 0))
    encoded, _ = collate_encoded([EncodedImages(paths)[i] for i in range(2)])
    images = decode_batch(encoded, torch.device("cuda"))
    assert [tuple(im.shape) for im in images] == [(3, 30, 40), (3, 48, 64)] and all(im.is_cuda for im in images)


@pytest.fixture
def ddp_leaves_nothing_behind(monkeypatch):
    """An in-process DDP run sets MASTER_ADDR, WORLD_SIZE, … and creates a process group: both are undone."""
    import os

    import torch.distributed as dist

    saved = dict(os.environ)
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in set(os.environ) - set(saved):
        monkeypatch.delenv(key)
    for key, value in saved.items():
        monkeypatch.setenv(key, value)


def test_ddp_on_one_gpu_trains_tests_and_writes_metrics(make_cfg, monkeypatch, ddp_leaves_nothing_behind) -> None:
    """The DDP strategy (NCCL process group, sharded device data, bf16) on the one GPU a box has."""
    import json
    from pathlib import Path

    from transferlab import train

    built = []

    def recording_build_trainer(*args, **kwargs):
        built.append(build_trainer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train, "build_trainer", recording_build_trainer)
    cfg = make_cfg(*on_gpu(*TINY), "trainer=ddp", "trainer.devices=1", "trainer.max_epochs=2", tiny=False)
    train.run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["epochs"] == 2 and "test/acc" in summary["metrics"]
    trainer = built[0]
    assert type(trainer.strategy).__name__ == "DDPStrategy" and torch.distributed.get_backend() == "nccl"
    assert_ran_on_cuda(trainer)
