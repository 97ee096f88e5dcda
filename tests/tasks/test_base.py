"""The shared task base: a training step never waits on the device, epoch logging is complete and correct."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch

from conftest import HostReads, fit_briefly
from transferlab.runner import build, build_trainer, instantiate_named
from transferlab.tasks import base
from transferlab.tasks.base import fused_if_supported
from transferlab.utils.errors import UserError


class ArmDuring(pl.Callback):
    """Count host reads per training step for steps [start, stop): from one batch start to the next, so the
    reads of everything that runs after a step (other callbacks, loggers, the progress bar) are included."""

    def __init__(self, reads: HostReads, start: int, stop: int) -> None:
        self.reads, self.start, self.stop = reads, start, stop
        self.reads_by_step: dict[int, int] = {}
        self.before, self.step = 0, -1

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if self.reads.armed:
            self.reads_by_step[self.step] = len(self.reads.calls) - self.before
        self.before, self.step = len(self.reads.calls), trainer.global_step
        self.reads.armed = self.start <= trainer.global_step < self.stop


def fit_counting(make_cfg, host_reads: HostReads, *overrides: str) -> ArmDuring:
    """Fit the default classification config (shrunk) through the real trainer builder, counting host reads."""
    cfg = make_cfg(
        "data.on_gpu=true",  # the device-resident path, as on a GPU (the CPU is the device here)
        "data.train_size=400",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.max_steps=30",
        "trainer.enable_progress_bar=true",  # the default UX: progress bar and TensorBoard on
        "logger=tensorboard",
        "model.optimizer._target_=torch.optim.SGD",  # Adam reads its host-side step counter (not a device sync)
        "~model.optimizer.weight_decay",
        *overrides,
    )
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    arm = ArmDuring(host_reads, start=5, stop=24)
    callbacks = [*instantiate_named(cfg.callbacks, "callbacks"), arm]
    trainer = build_trainer(cfg, callbacks, instantiate_named(cfg.logger, "logger"))
    trainer.fit(task, datamodule=datamodule)
    return arm


def test_training_steps_never_read_device_values(make_cfg, host_reads) -> None:
    """No step between logging steps copies anything to the host (no device sync in the hot path)."""
    arm = fit_counting(make_cfg, host_reads, "trainer.log_every_n_steps=100")
    assert len(arm.reads_by_step) == 19
    assert sum(arm.reads_by_step.values()) == 0, arm.reads_by_step


def test_only_logging_steps_read_values_and_only_a_few(make_cfg, host_reads) -> None:
    arm = fit_counting(make_cfg, host_reads, "trainer.log_every_n_steps=5")
    reading = {step for step, reads in arm.reads_by_step.items() if reads}
    assert reading and all((step + 1) % 5 == 0 for step in reading), arm.reads_by_step
    assert max(arm.reads_by_step.values()) <= 3, arm.reads_by_step


def test_epoch_logging_matches_a_direct_computation(make_cfg) -> None:
    """train/loss is the sample-weighted mean of the step losses; train/acc the fraction of correct argmaxes."""
    cfg = make_cfg("data.train_size=100", "data.batch_size=10", "logger=none", "callbacks=none", "data/augment=none")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    seen: list[tuple[float, int, int]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            module.eval()
            with torch.no_grad():
                logits = module(batch[0])
            module.train()
            loss = torch.nn.functional.cross_entropy(logits, batch[1]).item()
            seen.append((loss, int((logits.argmax(-1) == batch[1]).sum()), len(batch[1])))

    trainer = build_trainer(cfg, [Record()], [])
    task.head[0].p = 0.0  # dropout off, so the recorded forward equals the training forward
    task.backbone.eval()  # BatchNorm in eval in both passes: running stats make the two forwards identical
    task.train = lambda mode=True: torch.nn.Module.train(task, False)  # keep it that way during fit
    trainer.fit(task, datamodule=datamodule)
    total = sum(n for *_, n in seen)
    expected_loss = sum(loss * n for loss, _, n in seen) / total
    expected_acc = sum(hits for _, hits, _ in seen) / total
    logged = trainer.callback_metrics
    assert logged["train/loss"].item() == pytest.approx(expected_loss, rel=1e-4)
    assert logged["train/acc"].item() == pytest.approx(expected_acc, abs=1e-6)
    assert "val/acc" in logged and "val/loss" in logged


@pytest.mark.parametrize(
    ("device", "keywords", "clips", "expected"),
    [
        ("cuda", {}, False, {"fused": True}),
        ("cuda", {}, True, {"foreach": True}),  # a fused step cannot be clipped under mixed precision
        ("cpu", {}, False, {}),
        ("cpu", {}, True, {}),
        ("cuda", {"foreach": False}, False, {}),
        ("cuda", {"fused": False}, True, {}),
    ],
)
def test_fused_optimizer_on_cuda_unless_configured_or_clipped(device, keywords, clips, expected) -> None:
    make = functools.partial(torch.optim.AdamW, lr=0.1, **keywords)
    assert fused_if_supported(make, torch.device(device), clips) == expected


def test_the_validation_grid_keeps_copies_not_views_of_the_outputs(make_cfg) -> None:
    """Under CUDA graphs the next compiled call reuses an output's memory: the grid must not see it change."""
    cfg = make_cfg("logger=none")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    output = torch.rand(8, 3, 4, 4)
    shown = output[:4].clone()
    task.show_images("val", 0, "val/grid", lambda: [output])
    output.fill_(0.5)  # what the next step's compiled call does to the memory of this one's output
    tag, columns = task._grid
    assert tag == "val/grid" and torch.equal(columns[0], shown)


def fit_as_on_cuda(make_cfg, monkeypatch, *overrides: str) -> pl.Trainer:
    """Two bf16-mixed CPU steps with gradient clipping, the optimizer's kernel chosen as it is on a CUDA device
    (CPU Adam/AdamW/SGD have fused kernels too, so the CUDA choice runs here)."""
    as_cuda = base.fused_if_supported
    monkeypatch.setattr(base, "fused_if_supported", lambda make, _device, *a: as_cuda(make, torch.device("cuda"), *a))
    cfg = make_cfg(
        "trainer.precision=bf16-mixed",
        "trainer.gradient_clip_val=1.0",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=0",
        "logger=none",
        "callbacks=none",
        *overrides,
    )
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    trainer = build_trainer(cfg, [], [])
    trainer.fit(task, datamodule=datamodule)
    return trainer


def test_gradient_clipping_under_mixed_precision_trains_with_the_cuda_optimizer_choice(make_cfg, monkeypatch) -> None:
    trainer = fit_as_on_cuda(make_cfg, monkeypatch)
    assert trainer.global_step == 2
    defaults = trainer.optimizers[0].defaults
    assert not defaults.get("fused") and defaults.get("foreach") is True


def test_configured_fused_optimizer_with_clipping_under_mixed_precision_is_refused(make_cfg, monkeypatch) -> None:
    with pytest.raises(UserError) as err:
        fit_as_on_cuda(make_cfg, monkeypatch, "+model.optimizer.fused=true")
    message = str(err.value)
    assert "model.optimizer.fused=true" in message and "trainer.gradient_clip_val" in message
    assert "\n" not in message


class BuffersUnchanged(pl.Callback):
    """Records every registered buffer a training step changed, BatchNorm running statistics excepted.

    DDP broadcasts a module's buffers from rank 0 before each forward: a buffer a step writes into (a counter,
    an accumulator) would hold rank 0's value on every rank. BatchNorm statistics are the legitimate case."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.changed: set[str] = set()

    @staticmethod
    def buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        batchnorm = {
            f"{name}.{buffer}" if name else buffer
            for name, m in module.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for buffer, _ in m.named_buffers(recurse=False)
        }
        return {name: b.detach().clone() for name, b in module.named_buffers() if name not in batchnorm}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        self.before = self.buffers(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        after = self.buffers(pl_module)
        before = self.before
        self.changed |= {name for name in after if name not in before or not torch.equal(after[name], before[name])}


@pytest.mark.parametrize("kind", ["classify", "denoise", "inpaint", "stylize", "adain"])
def test_no_task_buffer_changes_in_a_training_step(make_cfg, kind: str) -> None:
    """What a training step accumulates lives outside the registered buffers, so DDP cannot overwrite it."""
    from conftest import TINY_MODELS

    cfg = make_cfg(*TINY_MODELS[kind], "trainer.max_steps=2", "trainer.limit_val_batches=0", "test=false", tiny=False)
    datamodule = build(cfg.data, "data")
    model = build(cfg.model, "model", **datamodule.task_args())
    watch = BuffersUnchanged()
    fit_briefly(model, datamodule, steps=2, callbacks=[watch])
    assert watch.before, "the model has buffers to watch"
    assert not watch.changed, f"a training step wrote into registered buffers: {sorted(watch.changed)}"
