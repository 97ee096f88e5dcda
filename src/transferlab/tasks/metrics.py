"""Evaluation metrics as the tasks update them: in float32 outside autocast, and without host syncs.

Under ``precision=bf16-mixed`` a step runs inside autocast, so a torchmetrics update made there computes in
bfloat16 (SSIM's convolutions, the Y-channel weights) and measures the precision instead of the model: SSIM
0.945 against 0.922 in float32 on the same images. `full_precision` runs an update on float32 copies with
autocast off; every task's metric update goes through it.

Some torchmetrics updates wait for the GPU at every validation step: ``torch.bincount`` (per-class accuracy,
confusion matrix) reads its input's maximum on the host even with ``minlength``, and PSNR makes each batch's
observation count a device tensor from a host value. The subclasses here count with ``index_add_`` into a
fixed-size tensor and fill counts on the device; states and ``compute`` stay torchmetrics' own, so values,
DDP synchronisation and resets are unchanged.

Libraries: torchmetrics computes the metrics; only the per-step counting, which it does with host syncs, is here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.image import PeakSignalNoiseRatio

from transferlab.losses import at_least_float32

Update = TypeVar("Update", bound=Callable[..., None])


def full_precision(update: Update) -> Update:
    """Run a metric update (a method) outside autocast, its floating-point tensor arguments raised to float32.

    Other arguments (a stage name, integer targets, boolean masks) pass unchanged."""

    @functools.wraps(update)
    def in_float32(self: Any, *args: Any) -> None:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        floating = [isinstance(a, torch.Tensor) and a.is_floating_point() for a in args]
        as_float = [at_least_float32(a.detach()) if f else a for a, f in zip(args, floating)]
        with torch.autocast(device.type, enabled=False):
            update(self, *as_float)

    return in_float32  # type: ignore[return-value]


def class_pair_counts(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts of (true, predicted) label pairs: ``torch.bincount`` without its host sync.

    `preds` are labels, or scores with a class dimension 1 (their argmax is taken), as torchmetrics accepts."""
    if preds.ndim == target.ndim + 1:
        preds = preds.argmax(dim=1)
    pairs = target.reshape(-1).long() * num_classes + preds.reshape(-1).long()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=pairs.device)
    return counts.index_add_(0, pairs, torch.ones_like(pairs)).view(num_classes, num_classes)


class ConfusionMatrix(MulticlassConfusionMatrix):
    """torchmetrics' multiclass confusion matrix, counted without a host sync per update."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.confmat += class_pair_counts(preds, target, self.num_classes)


class PerClassAccuracy(MulticlassAccuracy):
    """torchmetrics' per-class accuracy (``average=None``: the recall of each class), counted without a host
    sync per update: the same true/false positive/negative counts, derived from the label-pair counts."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, average=None, validate_args=False, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        counts = class_pair_counts(preds, target, self.num_classes)
        tp = counts.diag()
        fp, fn = counts.sum(0) - tp, counts.sum(1) - tp
        self._update_state(tp, fp, counts.sum() - (fp + fn + tp), fn)


class PSNR(PeakSignalNoiseRatio):
    """torchmetrics' PSNR whose per-update observation counts are filled on the device (torchmetrics copies them
    from the host, a sync per update). With ``dim`` (per-image PSNR) only."""

    def __init__(self, data_range: float, dim: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(data_range=data_range, dim=dim, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        diff = preds - target
        sum_squared_error = (diff * diff).sum(dim=self.dim)
        per_item = math.prod(target.shape[d] for d in self.dim)
        self.sum_squared_error.append(sum_squared_error)
        self.total.append(torch.full_like(sum_squared_error, per_item, dtype=torch.long))


class MaskedPSNR(PeakSignalNoiseRatio):
    """PSNR over the pixels a mask selects, pooled over all images (the missing region of inpainting).

    Masked sums instead of ``preds[mask]``: boolean indexing sizes its result on the host (a sync per update)."""

    def __init__(self, data_range: float, **kwargs: Any) -> None:
        super().__init__(data_range=data_range, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:  # type: ignore[override]
        """`mask` (bool, broadcastable to `preds`): the pixels measured."""
        mask = mask.expand_as(preds)
        diff = preds - target
        self.sum_squared_error += torch.where(mask, diff * diff, 0.0).sum()
        self.total += mask.sum()
