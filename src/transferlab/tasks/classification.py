"""Image classification on a pretrained backbone: fine-tune, linear probe or gradual unfreezing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.transforms import v2

from transferlab.backbones import build_backbone
from transferlab.callbacks import log_figure
from transferlab.tasks.base import TransferTask
from transferlab.utils.config import to_plain
from transferlab.utils.errors import UserError


class ClassificationTask(TransferTask):
    """Backbone features → dropout → linear head over ``num_classes`` (taken from the datamodule).

    Training batches can be mixed (MixUp/CutMix, ``mixup_alpha``/``cutmix_alpha`` > 0).
    Logs ``{stage}/loss``, ``{stage}/acc`` (top-1), ``{stage}/acc_top5`` (with ≥ 5 classes), per-class
    accuracy ``{stage}/acc_class/<name>``, and a confusion-matrix figure at the end of validation/test.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        head_dropout: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        class_names: list[str] | None = None,
        compile: str | None = None,
        channels_last: bool | None = None,
        load_source_weights: bool = True,
    ) -> None:
        backbone, optimizer, scheduler, finetune = map(to_plain, (backbone, optimizer, scheduler, finetune))
        super().__init__(optimizer, scheduler, finetune, compile, channels_last)
        if num_classes < 2:
            raise UserError(f"classification needs at least 2 classes, the data has {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters(ignore=["load_source_weights"], logger=False)
        source = backbone.get("weights") if load_source_weights else None
        built = build_backbone(backbone["name"], source, backbone.get("kwargs"))
        self.backbone = built.body
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(built.num_features, num_classes))
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.label_smoothing = label_smoothing
        self.batch_mix = batch_mixing(num_classes, mixup_alpha, cutmix_alpha)
        # ModuleDict keys may not shadow Module attributes ("train"), hence the "_metrics" suffix.
        self.metrics = nn.ModuleDict({f"{s}_metrics": self._metrics(num_classes) for s in ("train", "val", "test")})
        self.per_class = nn.ModuleDict({s: MulticlassAccuracy(num_classes, average=None) for s in ("val", "test")})
        self.confusion = nn.ModuleDict({s: MulticlassConfusionMatrix(num_classes) for s in ("val", "test")})

    @staticmethod
    def _metrics(num_classes: int) -> MetricCollection:
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        return MetricCollection(metrics)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of uint8 (or 0–255 float) images."""
        return self.head(self.backbone_features(self.normalize(images)))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (class indices or, after MixUp/CutMix, class probabilities), with label smoothing."""
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if stage == "train" and self.batch_mix is not None:
            images, soft_targets = self.batch_mix(images.float(), targets)  # mixing is linear: 0-255 is fine
            logits = self(images)
            loss = self.loss(logits, soft_targets)
            targets = soft_targets.argmax(dim=-1)  # train accuracy is against each mixed image's dominant label
        else:
            logits = self(images)
            loss = self.loss(logits, targets)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits, targets)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, sync_dist=not on_step)
        self.log_dict({f"{stage}/{k}": m for k, m in metrics.items()}, on_step=False, on_epoch=True)
        if stage in self.per_class:
            self.per_class[stage].update(logits, targets)
            self.confusion[stage].update(logits, targets)
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self(images).softmax(dim=-1)

    def _end_of_evaluation(self, stage: str) -> None:
        per_class = self.per_class[stage].compute()
        self.log_dict(
            {f"{stage}/acc_class/{name}": acc for name, acc in zip(self.class_names, per_class)},
            sync_dist=True,  # compute() already synchronised them: equal on every rank, so the mean is exact
        )
        self.per_class[stage].reset()
        matrix = self.confusion[stage].compute()
        self.confusion[stage].reset()
        if not self.trainer.sanity_checking:
            log_figure(self, f"{stage}/confusion_matrix", confusion_figure(matrix, self.class_names))

    def on_validation_epoch_end(self) -> None:
        self._end_of_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._end_of_evaluation("test")


def batch_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> v2.Transform | None:
    """MixUp and/or CutMix on whole training batches (one of them, chosen per batch, when both are on)."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise UserError(f"model.mixup_alpha and model.cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    mixers = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []
    mixers += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def confusion_figure(matrix: torch.Tensor, class_names: list[str]) -> Any:
    """A row-normalised confusion matrix as a matplotlib figure (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = min(12.0, 2.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    rates = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp(min=1)  # rows: fraction of each true class
    ax.imshow(rates.cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig
