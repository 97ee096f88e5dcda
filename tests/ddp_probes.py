"""Test-only callbacks that DDP runs load by ``_target_`` (tests/ is put on the children's PYTHONPATH), to make the
ranks differ in a known way and record what each rank saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F


class RankProbe(pl.Callback):
    """Every rank trains on copies of one fixed image, so its batches differ from another rank's only by the
    augmentation, and saves its first augmented batch to `folder`. Training hits are counted as if rank 0 got
    every image right and the others none, so the true mean training accuracy over ranks is 1 / world size."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        noise = torch.randint(0, 256, loader.images.shape[1:], generator=torch.Generator().manual_seed(0))
        loader.images = noise.to(torch.uint8).to(loader.images.device).expand_as(loader.images).contiguous()
        count_hits = pl_module.count_hits

        def rank_dependent_hits(logits: torch.Tensor, targets: torch.Tensor) -> None:
            classes = logits.shape[-1]
            predicted = targets if trainer.global_rank == 0 else (targets + 1) % classes
            count_hits(F.one_hot(predicted, classes).float(), targets)

        pl_module.count_hits = rank_dependent_hits

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if idx == 0 and trainer.current_epoch == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            torch.save(batch[0].cpu(), self.folder / f"batch_rank{trainer.global_rank}.pt")


class NonFiniteLossOnRank(pl.Callback):
    """From step `from_step` on, rank `rank`'s training loss is NaN (its gradients stay finite, so the other
    ranks' losses stay finite too): a non-finite loss on one rank alone."""

    def __init__(self, rank: int = 1, from_step: int = 2) -> None:
        self.rank, self.from_step = rank, from_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != self.rank:
            return
        training_step = pl_module.training_step

        def nan_after(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = training_step(*args, **kwargs)
            return loss + float("nan") if trainer.global_step >= self.from_step else loss

        pl_module.training_step = nan_after


class SkewedClockOnRank(pl.Callback):
    """From the second epoch on, rank `rank` believes ``last.ckpt`` is overdue (as a rank whose clock runs ahead
    would), while the others do not: writing it is collective, so the ranks must decide together."""

    def __init__(self, rank: int = 1) -> None:
        self.rank = rank

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == self.rank and trainer.current_epoch >= 1:
            trainer.checkpoint_callback._last_written_at = float("-inf")
