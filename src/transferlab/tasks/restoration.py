"""Image restoration: denoising, deblurring, JPEG removal, super-resolution and inpainting.

Batches come from `PhotoDataModule` with a degradation pipeline: ``{"degraded", "clean", "mask"}`` uint8.
The network is ``model.net`` (a ``_target_``, `transferlab.nets.build_network`); it gets ``in_channels`` (3, +1
with a mask), ``out_channels`` (3), the data's up-scale factor ``scale`` and ``model.backbone`` when it declares
them. Shipped: DnCNN from scratch (model=denoise); a U-Net whose encoder is a pretrained backbone
(model=restore_unet: the transfer case, frozen or fine-tuned by the same `finetune` modes as
classification; with a mask channel it inpaints); EDSR super-resolution (model=super_resolution, ×2/×3/×4
from the degradations' `Downscale`).

Metrics (torchmetrics), per stage ``val``/``test``: ``psnr`` and ``ssim`` of the restored image,
``psnr_input`` of the degraded input itself (bicubic up-scaled for SR) as the baseline to beat, and for
inpainting ``psnr_masked`` over the missing pixels only. They are computed as `metrics` says: on images
scaled to [0, `data_range`], on ``rgb`` or on the BT.601 luma ``y`` (as SR papers report), after cropping
`crop_border` pixels from every side.

Libraries: PSNR and SSIM are torchmetrics'; `rgb_to_y` is BT.601 studio-swing luma (16–235, MATLAB's rgb2ycbcr, what
SR papers report), which kornia's full-range rgb_to_ycbcr is not (up to 19/255 apart, measured).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.image import StructuralSimilarityIndexMeasure

from transferlab.inference import (
    IMAGE_AXES,
    OUTPUT_IMAGE,
    Clamped,
    ExportSpec,
    ImageFiles,
    PredictOptions,
    Predictor,
    read_mask,
)
from transferlab.losses import PerceptualLoss, pixel_loss
from transferlab.nets import build_network, network_class, takes
from transferlab.tasks.base import TransferTask
from transferlab.tasks.metrics import PSNR, MaskedPSNR, full_precision
from transferlab.utils.config import to_plain
from transferlab.utils.errors import UserError

CHANNELS = ("rgb", "y")


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of [0, 1] RGB, in [16/255, 235/255] (MATLAB's ``rgb2ycbcr``, as BasicSR computes PSNR-Y)."""
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]  # Python weights: no host→device copy
    return (red * 65.481 + green * 128.553 + blue * 24.966 + 16.0) / 255.0


class Inpainter(nn.Module):
    """An inpainting network (the mask is its 4th input channel) over image and mask as separate inputs, its
    output clamped to [0, 1] (the exported model)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([images, mask.to(images.dtype)], dim=1)).clamp(0, 1)


class RestorationTask(TransferTask):
    """Degraded image (+ mask) → restored image, trained with an L1/L2/Charbonnier (+ perceptual) loss."""

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        loss: str,
        perceptual: dict[str, Any],
        metrics: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        backbone: dict[str, Any] | None = None,
        scale: int | None = None,
        mask_channel: bool = False,
        compile: str | None = None,
        channels_last: bool | None = None,
        load_source_weights: bool = True,
    ) -> None:
        if scale is None:  # the data's degradation states the scale; without one there is nothing to restore
            raise UserError(
                "restoration needs degraded inputs: add a degradation, e.g. data/degrade=gaussian_noise "
                "(or deblur, downscale, jpeg, inpaint_box, …; see tl-train --help)"
            )
        net, optimizer, scheduler, finetune, backbone, perceptual, metrics = map(
            to_plain, (net, optimizer, scheduler, finetune, backbone, perceptual, metrics)
        )
        super().__init__(optimizer, scheduler, finetune, compile, channels_last)
        self.save_hyperparameters(ignore=["load_source_weights"], logger=False)
        self.scale, self.mask_channel = scale, mask_channel
        self.net = self.build_network(net, backbone, load_source_weights)
        self.pixel_loss = pixel_loss(loss)
        perceptual = dict(perceptual)
        self.perceptual_weight = float(perceptual.pop("weight"))
        if self.perceptual_weight > 0:
            if not load_source_weights:  # reloading: the checkpoint holds the loss network's weights
                perceptual["weights"] = None
            self.perceptual = PerceptualLoss(**perceptual)
        self.metric_cfg = self.check_metrics(metrics)
        self.quality = nn.ModuleDict({stage: self.quality_metrics() for stage in ("val", "test")})

    # -- construction ------------------------------------------------------------------------------
    def build_network(self, net: dict[str, Any], backbone: dict[str, Any] | None, load_weights: bool) -> nn.Module:
        """``model.net`` with what the data says (channels, scale) and ``model.backbone`` for networks built on one."""
        cls = network_class(net, "model.net")
        if self.scale != 1 and not takes(cls, "scale"):
            raise UserError(
                f"the data down-scale x{self.scale} but model.net ({cls.__name__}) restores at the input size. "
                "Use model=super_resolution (EDSR) for super-resolution"
            )
        if backbone and not takes(cls, "backbone"):
            raise UserError(f"model.backbone is set but model.net ({cls.__name__}) builds on no backbone. Remove it")
        context = {"in_channels": 3 + int(self.mask_channel), "out_channels": 3, "scale": self.scale}
        return build_network(net, "model.net", **context, backbone=backbone, load_weights=load_weights)

    def pretrained_part(self) -> nn.Module | None:
        return getattr(self.net, "backbone", None)

    @staticmethod
    def check_metrics(cfg: dict[str, Any]) -> dict[str, Any]:
        keys = {"data_range", "channel", "crop_border"}
        unknown, missing = set(cfg) - keys, keys - set(cfg)
        if unknown:
            raise UserError(f"unknown model.metrics keys {sorted(unknown)}; use data_range, channel, crop_border")
        if missing:
            raise UserError(f"model.metrics lacks {sorted(missing)}: set each of data_range, channel, crop_border")
        out = dict(cfg)
        if out["channel"] not in CHANNELS:
            raise UserError(f"model.metrics.channel must be 'rgb' or 'y', got '{out['channel']}'")
        if out["data_range"] <= 0 or out["crop_border"] < 0:
            raise UserError("model.metrics.data_range must be > 0 and model.metrics.crop_border >= 0")
        return out

    def quality_metrics(self) -> MetricCollection:
        data_range = float(self.metric_cfg["data_range"])
        per_image = (1, 2, 3)  # the mean of per-image PSNRs
        metrics: dict[str, Any] = {
            "psnr": PSNR(data_range, dim=per_image),
            "ssim": StructuralSimilarityIndexMeasure(data_range=data_range),
            "psnr_input": PSNR(data_range, dim=per_image),
        }
        if self.mask_channel:
            metrics["psnr_masked"] = MaskedPSNR(data_range)  # over all missing pixels
        return MetricCollection(metrics, compute_groups=False)

    # -- model -------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[0, 1] degraded images (N, 3, H, W) (+ mask (N, 1, H, W), 1 = missing) → restored (N, 3, sH, sW)."""
        x = images
        if self.mask_channel:
            if mask is None:
                raise UserError("this inpainting model needs a mask of the missing region (white = missing)")
            x = torch.cat([images, mask.to(images.dtype)], dim=1)
        return self.net(x)

    def restore(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inference on [0, 1] images: the restored image clamped to [0, 1] (what `tl-predict` writes)."""
        return self(images, mask).clamp(0, 1)

    def predictor(self, prepare: Callable[[torch.Tensor], torch.Tensor], options: PredictOptions) -> Predictor:
        """One restored PNG per file (`scale` times its size); an inpainting model reads `options.mask`."""
        if options.style is not None:
            raise UserError("style= is for AdaIN style-transfer models; this checkpoint is a restoration model")
        mask = None
        if self.mask_channel:
            if options.mask is None:
                raise UserError("this is an inpainting model: pass mask=<image file, white = missing>")
            mask = read_mask(options.mask, self.device)
        return ImageFiles(self.restore, prepare, options, self.device, scale=self.scale, mask=mask)

    def export_module(self, example: torch.Tensor) -> ExportSpec:
        """[0, 1] images (+ an inpainting model's mask, 1 = missing) of any batch and size → the restored images,
        clamped to [0, 1], `scale` times the input size (what `tl-predict` writes)."""
        inputs = {"image": example}
        module: nn.Module = Clamped(self.net)
        if self.mask_channel:
            inputs["mask"] = (example[:, :1] > 0.5).float()
            module = Inpainter(self.net)
        dynamic = {name: IMAGE_AXES for name in inputs}
        return ExportSpec(module, inputs, OUTPUT_IMAGE, dynamic, {"scale": self.scale})

    # -- metrics -----------------------------------------------------------------------------------
    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """`images` without their `crop_border` pixels on every side."""
        border = int(self.metric_cfg["crop_border"])
        return images[..., border:-border, border:-border] if border else images

    def for_metric(self, images: torch.Tensor) -> torch.Tensor:
        """Crop `crop_border`, pick the channel, scale to `data_range`: what PSNR/SSIM see."""
        images = self.crop(images)
        if self.metric_cfg["channel"] == "y":
            images = rgb_to_y(images)
        return images * float(self.metric_cfg["data_range"])

    def upscaled_input(self, degraded: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """The degraded input at the clean size: the no-restoration baseline (bicubic for SR)."""
        if degraded.shape[-2:] == size:
            return degraded
        return F.interpolate(degraded, size=size, mode="bicubic", align_corners=False).clamp(0, 1)

    # -- steps -------------------------------------------------------------------------------------
    def shared_step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
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
        self.show_images(  # SR inputs shown blocky, at the output size
            stage,
            batch_idx,
            "val/degraded_restored_clean",
            lambda: [F.interpolate(degraded, size=clean.shape[-2:], mode="nearest"), restored, clean],
        )
        return loss

    @full_precision
    def update_quality(
        self, stage: str, degraded: torch.Tensor, restored: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor
    ) -> None:
        """Add a batch to the stage's PSNR/SSIM (in float32 whatever the training precision)."""
        metrics = self.quality[stage]
        target = self.for_metric(clean)
        out, baseline = self.for_metric(restored), self.for_metric(self.upscaled_input(degraded, clean.shape[-2:]))
        metrics["psnr"].update(out, target)
        metrics["ssim"].update(out, target)
        metrics["psnr_input"].update(baseline, target)
        if self.mask_channel:
            metrics["psnr_masked"].update(out, target, self.crop(mask) > 0)  # the mask's pixels, in every channel

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """PSNR/SSIM (restored and input) over the epoch's validation/test images."""
        if stage not in self.quality:
            return {}
        metrics = self.quality[stage]
        values = {f"{stage}/{name}": m.compute() for name, m in metrics.items() if m.update_called}
        metrics.reset()
        return values
