"""Image classification on a pretrained backbone: fine-tune, linear probe or gradual unfreezing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from transferlab.backbones import InputNormalize, Preprocessing, build_backbone, expected_preprocessing, first_layers
from transferlab.inference import BATCH_AXIS, LOGITS, ClassTable, ExportSpec, PredictOptions, Predictor
from transferlab.loggers import log_figure
from transferlab.tasks.base import TransferTask
from transferlab.tasks.metrics import ConfusionMatrix, PerClassAccuracy, full_precision
from transferlab.utils.config import to_plain
from transferlab.utils.errors import UserError


class ClassificationTask(TransferTask):
    """Backbone features → dropout → [hidden Linear-ReLU] → linear head over ``num_classes`` (from the datamodule).

    ``input_norm`` ({mean, std}; null = what the backbone's source weights expect, `expected_preprocessing`) is
    the input normalisation, inside the model for training, reloading, tl-predict and tl-export alike. The
    resolved choice is ``preprocessing`` (a `Preprocessing` record): tl-train passes it (from
    `expected_preprocessing`, as it hands it to the datamodule), a checkpoint stores it, and a checkpoint from
    before it was recorded means ImageNet's. ``head_hidden`` (null or a width) puts a hidden layer in the head.

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
        input_norm: dict[str, Any] | None = None,
        head_hidden: int | None = None,
        preprocessing: dict[str, Any] | None = None,
        load_source_weights: bool = True,
    ) -> None:
        backbone, optimizer, scheduler, finetune, input_norm = map(
            to_plain, (backbone, optimizer, scheduler, finetune, input_norm)
        )
        if preprocessing is not None:  # resolved by tl-train, or read back from a checkpoint
            resolved = Preprocessing.from_record(to_plain(preprocessing))
        elif load_source_weights:
            resolved = self.expected_preprocessing({"backbone": backbone, "input_norm": input_norm})
        else:  # a checkpoint from before the choice was recorded: it trained on ImageNet's (or its input_norm)
            resolved = Preprocessing.imagenet("the checkpoint records none")
            resolved = resolved.with_norm(input_norm) if input_norm is not None else resolved
        super().__init__(optimizer, scheduler, finetune, compile, channels_last, resolved.norm())
        self.preprocessing = resolved
        if num_classes < 2:
            raise UserError(f"classification needs at least 2 classes, the data has {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters(ignore=["load_source_weights"], logger=False)
        self.hparams["preprocessing"] = resolved.record()  # in every checkpoint: what reloading uses
        source = backbone.get("weights") if load_source_weights else None
        transfer_layers = backbone.get("transfer_layers")
        copied = transfer_layers if load_source_weights else None  # reloading: the checkpoint has every layer
        built = build_backbone(backbone["name"], source, backbone.get("kwargs"), copied)
        self.backbone = built.body
        if self.finetune.freeze_transferred and backbone.get("weights") is None:
            raise UserError(
                "model.finetune.freeze_transferred=true freezes transferred layers, but model.backbone.weights is "
                "null (nothing is transferred). Set the weights to a source or freeze_transferred to false"
            )
        # checked on reloading too (no source then): the same layers are the transferred ones in a resumed run
        self._transferred = first_layers(self.backbone, transfer_layers, backbone["name"])
        self.head = classification_head(built.num_features, num_classes, head_dropout, head_hidden)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.label_smoothing = label_smoothing
        self.batch_mix = batch_mixing(num_classes, mixup_alpha, cutmix_alpha)
        # ModuleDict keys may not shadow Module attributes ("train"), hence the "_metrics" suffix.
        self.metrics = nn.ModuleDict({f"{s}_metrics": self._metrics(num_classes) for s in ("val", "test")})
        # Training accuracy as two device counters (top-1, top-k hits): a torchmetrics update costs ~0.2 ms of
        # host time per metric per step (BENCHMARKS.md); evaluation keeps torchmetrics (it also gives per-class).
        # A plain attribute, not a buffer: DDP broadcasts buffers from rank 0 before every forward, which would
        # replace each rank's count with rank 0's. Made on the logits' device at the epoch's first step.
        self.train_hits: torch.Tensor | None = None
        self.train_seen = 0
        self.per_class = nn.ModuleDict({s: PerClassAccuracy(num_classes) for s in ("val", "test")})
        self.confusion = nn.ModuleDict({s: ConfusionMatrix(num_classes, validate_args=False) for s in ("val", "test")})

    @classmethod
    def expected_preprocessing(cls, model: dict[str, Any]) -> Preprocessing:
        """What the backbone's source weights expect; an explicit ``input_norm`` (checked) wins for mean/std."""
        backbone, input_norm = model["backbone"], model.get("input_norm")
        if input_norm is not None:
            InputNormalize.from_config(input_norm)  # one line naming the key when malformed
        expected = expected_preprocessing(backbone["name"], backbone.get("weights"), backbone.get("kwargs"))
        return expected.with_norm(input_norm) if input_norm is not None else expected

    @staticmethod
    def _metrics(num_classes: int) -> MetricCollection:
        # validate_args=False: the checks compare tensor values on the host (a device sync per update); the
        # datamodule already guarantees integer targets in range
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False)
        return MetricCollection(metrics)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of uint8 (or 0–255 float) images."""
        return self.head(self.backbone(self.normalize(images)))

    def pretrained_part(self) -> nn.Module:
        return self.backbone

    def transferred_layers(self) -> list[nn.Module]:
        """The first ``model.backbone.transfer_layers`` layers of the backbone (all of them when null)."""
        return [self.backbone.get_submodule(name) for name in self._transferred]

    def predictor(self, prepare: Callable[[torch.Tensor], torch.Tensor], options: PredictOptions) -> Predictor:
        """Class probabilities per file, of files prepared as the test images were."""
        return ClassTable(self, prepare, self.class_names, options, self.device)

    def export_module(self, example: torch.Tensor) -> ExportSpec:
        """[0, 1] images of the prepared size (any batch) → logits; the input normalisation is inside the model."""
        normalize = InputNormalize.from_config(self.preprocessing.norm())  # the [0, 1] scale exports take
        module = nn.Sequential(normalize, self.backbone, self.head)
        return ExportSpec(module, {"image": example}, LOGITS, {"image": BATCH_AXIS}, {"class_names": self.class_names})

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (class indices or, after MixUp/CutMix, class probabilities), with label smoothing."""
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if stage == "train" and self.batch_mix is not None:
            images, soft_targets = self.batch_mix(images.float(), targets)  # mixing is linear: 0-255 is fine
            logits = self(images)
            loss = self.loss(logits, soft_targets)
            targets = soft_targets.argmax(dim=-1)  # train accuracy is against each mixed image's dominant label
        else:
            logits = self(images)
            loss = self.loss(logits, targets)
        if stage == "train":
            self.count_hits(logits.detach(), targets)
        else:
            self.update_metrics(stage, logits, targets)
        self.log_losses(stage, {"loss": loss}, len(targets))
        return loss

    @full_precision
    def update_metrics(self, stage: str, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add an evaluation batch to the stage's accuracies and confusion matrix (on the device, no host sync)."""
        self.metrics[f"{stage}_metrics"].update(logits, targets)
        self.per_class[stage].update(logits, targets)
        self.confusion[stage].update(logits, targets)

    def count_hits(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add this batch's top-1 and top-5 hits to the training counters (device ops only, no host sync)."""
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == targets[:, None]
        hits = torch.stack((top[:, 0].sum(), top.any(dim=-1).sum())).float()
        self.train_hits = hits if self.train_hits is None else self.train_hits.add_(hits)
        self.train_seen += len(targets)

    def train_accuracy(self) -> dict[str, torch.Tensor]:
        """This rank's ``train/acc`` (and ``train/acc_top5`` with ≥ 5 classes) of the epoch; resets the counters.

        Under DDP every rank trains on equally many samples, so the mean over ranks that `_log_epoch` takes
        (``sync_dist``, one all-reduce per epoch) is the accuracy over all of them."""
        values = {}
        if self.train_seen and self.train_hits is not None:
            acc = self.train_hits / self.train_seen
            values = {"train/acc": acc[0], **({"train/acc_top5": acc[1]} if self.hparams.num_classes >= 5 else {})}
        self.train_hits = None
        self.train_seen = 0
        return values

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """Top-1/top-5 and per-class accuracy over the epoch (torchmetrics synchronises them across ranks)."""
        if stage == "train":
            return self.train_accuracy()
        values: dict[str, torch.Tensor] = {}
        metrics = self.metrics[f"{stage}_metrics"]
        if any(m.update_called for m in metrics.values()):
            values.update({f"{stage}/{name}": value for name, value in metrics.compute().items()})
        metrics.reset()
        if stage in self.per_class and self.per_class[stage].update_called:
            per_class = self.per_class[stage].compute()
            values.update({f"{stage}/acc_class/{name}": acc for name, acc in zip(self.class_names, per_class)})
        if stage in self.per_class:
            self.per_class[stage].reset()
        return values

    def end_of_epoch(self, stage: str) -> None:
        if stage not in self.confusion:
            return
        confusion = self.confusion[stage]
        matrix = confusion.compute() if confusion.update_called else None
        confusion.reset()
        if matrix is not None and not self.trainer.sanity_checking:
            log_figure(self, f"{stage}/confusion_matrix", confusion_figure(matrix, self.class_names))


def classification_head(num_features: int, num_classes: int, dropout: float, hidden: int | None) -> nn.Sequential:
    """Dropout → Linear to the classes, or with `hidden`: dropout → Linear(hidden)-ReLU → Linear to the classes."""
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise UserError(f"model.head_hidden must be null or a width >= 1, got {hidden}")
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
    )


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
