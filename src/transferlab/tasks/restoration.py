"""Image restoration: denoising, deblurring, JPEG removal, super-resolution and inpainting.

Batches come from `PhotoDataModule` with a degradation pipeline: ``{"degraded", "clean", "mask"}`` uint8.
Three networks (``net.arch``):

* ``dncnn`` — DnCNN from scratch (residual noise prediction);
* ``unet`` — U-Net whose encoder is a pretrained torchvision backbone (`model.backbone`): the transfer case,
  frozen or fine-tuned by the same `finetune` modes as classification; with a mask channel it inpaints;
* ``edsr`` — EDSR super-resolution (×2/×3/×4, from the degradations' `Downscale`).

Metrics (torchmetrics), per stage ``val``/``test``: ``psnr`` and ``ssim`` of the restored image,
``psnr_input`` of the degraded input itself (bicubic up-scaled for SR) as the baseline to beat, and for
inpainting ``psnr_masked`` over the missing pixels only. They are computed as `metrics` says: on images
scaled to [0, `data_range`], on ``rgb`` or on the BT.601 luma ``y`` (as SR papers report), after cropping
`crop_border` pixels from every side.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from transferlab.callbacks import log_image_rows
from transferlab.losses import PerceptualLoss, pixel_loss
from transferlab.nets.dncnn import DnCNN
from transferlab.nets.edsr import EDSR
from transferlab.nets.unet import UNetDecoder, build_encoder
from transferlab.tasks.base import TransferTask
from transferlab.utils.config import to_plain
from transferlab.utils.errors import UserError

ARCHS = ("dncnn", "unet", "edsr")
CHANNELS = ("rgb", "y")
DEFAULT_LAYERS = ("relu", "layer1", "layer2", "layer3")
GRID_SAMPLES = 4


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of [0, 1] RGB, in [16/255, 235/255] (MATLAB's ``rgb2ycbcr``, as BasicSR computes PSNR-Y)."""
    weights = images.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return ((images * weights).sum(dim=1, keepdim=True) + 16.0) / 255.0


class RestorationTask(TransferTask):
    """Degraded image (+ mask) → restored image, trained with an L1/L2/Charbonnier (+ perceptual) loss."""

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        backbone: dict[str, Any] | None = None,
        loss: str = "l1",
        perceptual: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        scale: int = 1,
        mask_channel: bool = False,
        compile: str | None = None,
        channels_last: bool | None = None,
        load_source_weights: bool = True,
    ) -> None:
        net, optimizer, scheduler, finetune, backbone, perceptual, metrics = map(
            to_plain, (net, optimizer, scheduler, finetune, backbone, perceptual, metrics)
        )
        super().__init__(optimizer, scheduler, finetune, compile, channels_last)
        self.save_hyperparameters(ignore=["load_source_weights"], logger=False)
        self.scale, self.mask_channel = scale, mask_channel
        self.build_network(dict(net), backbone, load_source_weights)
        self.pixel_loss = pixel_loss(loss)
        perceptual = dict(perceptual or {})
        self.perceptual_weight = float(perceptual.pop("weight", 0.0))
        if self.perceptual_weight > 0:
            if not load_source_weights:  # reloading: the checkpoint holds the loss network's weights
                perceptual["weights"] = None
            self.perceptual = PerceptualLoss(**perceptual)
        self.metric_cfg = self.check_metrics(metrics or {})
        self.quality = nn.ModuleDict({stage: self.quality_metrics() for stage in ("val", "test")})
        self._grid: list[torch.Tensor] | None = None

    # -- construction ------------------------------------------------------------------------------
    def build_network(self, net: dict[str, Any], backbone: dict[str, Any] | None, load_source_weights: bool) -> None:
        arch = net.pop("arch", None)
        if arch not in ARCHS:
            raise UserError(f"model.net.arch must be one of {', '.join(ARCHS)}, got '{arch}'")
        if arch != "edsr" and self.scale != 1:
            raise UserError(
                f"the data down-scale x{self.scale} but model.net.arch={arch} restores at the input size. "
                "Use model=super_resolution (EDSR) for super-resolution"
            )
        in_channels = 3 + int(self.mask_channel)
        if arch == "unet":
            if not backbone:
                raise UserError("model.net.arch=unet needs model.backbone (name, weights, layers)")
            source = backbone.get("weights") if load_source_weights else None
            self.layers = list(backbone.get("layers") or DEFAULT_LAYERS)
            self.backbone, skips = build_encoder(backbone["name"], source, self.layers, backbone.get("kwargs"))
            self.decoder = UNetDecoder(skips, in_channels, 3, **net)
        elif arch == "dncnn":
            self.net = DnCNN(in_channels, 3, **net)
        else:
            self.net = EDSR(in_channels, 3, self.scale, **net)

    @staticmethod
    def check_metrics(cfg: dict[str, Any]) -> dict[str, Any]:
        out = {"data_range": 1.0, "channel": "rgb", "crop_border": 0, **cfg}
        unknown = set(out) - {"data_range", "channel", "crop_border"}
        if unknown:
            raise UserError(f"unknown model.metrics keys {sorted(unknown)}; use data_range, channel, crop_border")
        if out["channel"] not in CHANNELS:
            raise UserError(f"model.metrics.channel must be 'rgb' or 'y', got '{out['channel']}'")
        if out["data_range"] <= 0 or out["crop_border"] < 0:
            raise UserError("model.metrics.data_range must be > 0 and model.metrics.crop_border >= 0")
        return out

    def quality_metrics(self) -> MetricCollection:
        data_range = float(self.metric_cfg["data_range"])
        per_image = {"reduction": "elementwise_mean", "dim": (1, 2, 3)}  # mean of per-image PSNRs
        metrics: dict[str, Any] = {
            "psnr": PeakSignalNoiseRatio(data_range=data_range, **per_image),
            "ssim": StructuralSimilarityIndexMeasure(data_range=data_range),
            "psnr_input": PeakSignalNoiseRatio(data_range=data_range, **per_image),
        }
        if self.mask_channel:
            metrics["psnr_masked"] = PeakSignalNoiseRatio(data_range=data_range)  # over all missing pixels
        return MetricCollection(metrics, compute_groups=False)

    # -- model -------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[0, 1] degraded images (N, 3, H, W) (+ mask (N, 1, H, W), 1 = missing) → restored (N, 3, sH, sW)."""
        x = images
        if self.mask_channel:
            if mask is None:
                raise UserError("this inpainting model needs a mask of the missing region (white = missing)")
            x = torch.cat([images, mask.to(images.dtype)], dim=1)
        if self.backbone is not None:
            features = self.backbone_features(self.normalize(images * 255))
            return self.decoder(x, [features[layer] for layer in self.layers])
        return self.net(x)

    def restore(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inference on [0, 1] images: the restored image clamped to [0, 1] (what `tl-predict` writes)."""
        return self(images, mask).clamp(0, 1)

    @property
    def output_scale(self) -> int:
        return self.scale

    # -- metrics -----------------------------------------------------------------------------------
    def for_metric(self, images: torch.Tensor) -> torch.Tensor:
        """Crop `crop_border`, pick the channel, scale to `data_range`: what PSNR/SSIM see."""
        border = int(self.metric_cfg["crop_border"])
        if border:
            images = images[..., border:-border, border:-border]
        if self.metric_cfg["channel"] == "y":
            images = rgb_to_y(images)
        return images * float(self.metric_cfg["data_range"])

    def upscaled_input(self, degraded: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """The degraded input at the clean size: the no-restoration baseline (bicubic for SR)."""
        if degraded.shape[-2:] == size:
            return degraded
        return F.interpolate(degraded, size=size, mode="bicubic", align_corners=False).clamp(0, 1)

    # -- steps -------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
        degraded = batch["degraded"].float() / 255
        clean = batch["clean"].float() / 255
        mask = batch["mask"].float()
        restored = self(degraded, mask)
        terms = {"pixel": self.pixel_loss(restored, clean)}
        if self.perceptual_weight > 0:
            terms["perceptual"] = self.perceptual_weight * self.perceptual(restored, clean)
        loss = sum(terms.values())
        extra = {f"loss_{k}": v for k, v in terms.items()} if len(terms) > 1 else {}
        self.log_losses(stage, {"loss": loss, **extra}, len(clean))
        if stage in self.quality:
            self.update_quality(stage, degraded, restored.detach().clamp(0, 1), clean, mask)
            if stage == "val" and batch_idx == 0:
                self._grid = [degraded[:GRID_SAMPLES], restored[:GRID_SAMPLES].detach(), clean[:GRID_SAMPLES]]
        return loss

    def update_quality(
        self, stage: str, degraded: torch.Tensor, restored: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor
    ) -> None:
        metrics = self.quality[stage]
        target = self.for_metric(clean)
        out, baseline = self.for_metric(restored), self.for_metric(self.upscaled_input(degraded, clean.shape[-2:]))
        metrics["psnr"].update(out, target)
        metrics["ssim"].update(out, target)
        metrics["psnr_input"].update(baseline, target)
        if self.mask_channel:
            missing = self.for_metric(mask.expand_as(clean)) > 0
            metrics["psnr_masked"].update(out[missing], target[missing])

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """PSNR/SSIM (restored and input) over the epoch's validation/test images."""
        if stage not in self.quality:
            return {}
        metrics = self.quality[stage]
        values = {f"{stage}/{name}": m.compute() for name, m in metrics.items() if m.update_called}
        metrics.reset()
        return values

    def end_of_epoch(self, stage: str) -> None:
        if stage != "val" or self._grid is None or self.trainer.sanity_checking:
            return
        degraded, restored, clean = self._grid
        degraded = F.interpolate(degraded, size=clean.shape[-2:], mode="nearest")  # SR inputs shown blocky
        log_image_rows(self, "val/degraded_restored_clean", [degraded, restored, clean])
        self._grid = None
