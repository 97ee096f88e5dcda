"""Neural style transfer with a frozen pretrained loss network (VGG-16/19 or any torchvision backbone).

Two methods (``method``):

* ``johnson`` — a feed-forward `TransformerNet` per style (Johnson et al. 2016), trained on content
  patches with content (feature) + style (Gram) + total-variation losses. Several style images are
  blended: the style target is their average Gram matrix.
* ``adain`` — arbitrary style (Huang & Belongie 2017): the frozen loss network up to `adain_layer` encodes
  content and style, AdaIN matches their channel statistics, a trained decoder maps back to pixels; any
  style image works at inference. Training styles are random crops of the style images.

Style images (embedded names such as ``brick`` or file paths) are read once, resized/cropped to
``style_size`` and kept as a buffer, so a checkpoint is self-contained (`tl-predict` needs no style file
for ``johnson``). Batches are content patches ``{"clean": uint8}`` from `PhotoDataModule`. Logged: each
weighted loss term (``{stage}/loss_content``, ``loss_style``, ``loss_tv``) and their sum ``{stage}/loss``;
validation renders its fixed content patches as a (content | style | output) grid.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from transferlab.callbacks import log_image_rows
from transferlab.data.photos import load_image
from transferlab.losses import LossNetwork, feature_loss, gram_matrix, mean_std, style_loss, total_variation
from transferlab.nets.adain import AdaINDecoder, adain
from transferlab.nets.transformer_net import TransformerNet
from transferlab.tasks.base import TransferTask
from transferlab.utils.config import to_plain
from transferlab.utils.errors import UserError

METHODS = ("johnson", "adain")
GRID_SAMPLES = 4


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to `size` and centre-crop: every style image gets the same shape and scale."""
    return TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])


class StyleTransferTask(TransferTask):
    """Content patch → stylized image; the loss network never trains."""

    def __init__(
        self,
        optimizer: dict[str, Any],
        styles: list[str],
        method: str = "johnson",
        style_size: int = 256,
        loss_network: dict[str, Any] | None = None,
        content_layers: dict[str, float] | None = None,
        style_layers: dict[str, float] | None = None,
        adain_layer: str = "relu3_1",
        content_weight: float = 1.0,
        style_weight: float = 1e4,
        tv_weight: float = 1e-4,
        net: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        compile: str | None = None,
        channels_last: bool | None = None,
        load_source_weights: bool = True,
    ) -> None:
        optimizer, scheduler, finetune, loss_network, net = map(
            to_plain, (optimizer, scheduler, finetune, loss_network, net)
        )
        styles, content_layers, style_layers = map(to_plain, (styles, content_layers, style_layers))
        super().__init__(optimizer, scheduler, finetune, compile, channels_last)
        if method not in METHODS:
            raise UserError(f"model.method must be one of {', '.join(METHODS)}, got '{method}'")
        if not styles:
            raise UserError("model.styles is empty. Give at least one style image: an embedded name (brick) or a path")
        if min(content_weight, style_weight, tv_weight) < 0:
            raise UserError("model.content_weight, style_weight and tv_weight must be >= 0")
        self.save_hyperparameters(ignore=["load_source_weights"], logger=False)
        self.method = method
        self.content_layers = dict(content_layers or {"relu2_2": 1.0})
        self.style_layers = dict(style_layers or {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0})
        self.adain_layer = adain_layer
        self.weights = {"content": content_weight, "style": style_weight, "tv": tv_weight}

        loss_network = {"name": "vgg16", "weights": None, **(loss_network or {})}
        layers = [*self.content_layers, *self.style_layers] + ([adain_layer] if method == "adain" else [])
        source = loss_network["weights"] if load_source_weights else None  # reloading: the checkpoint has them
        self.loss_net = LossNetwork(loss_network["name"], source, layers)

        # Style images: read now when training; when reloading, the buffer is filled from the checkpoint.
        images = [square(load_image(s), style_size) for s in styles] if load_source_weights else None
        stack = (
            torch.stack(images) if images else torch.zeros(len(styles), 3, style_size, style_size, dtype=torch.uint8)
        )
        self.register_buffer("style_images", stack)

        net = dict(net or {})
        if method == "johnson":
            self.net = TransformerNet(**net)
        else:
            with torch.no_grad():
                probe = self.loss_net(torch.zeros(1, 3, 64, 64))[adain_layer]
            self.net = AdaINDecoder(probe.shape[1], upsamples=round(64 / probe.shape[-1]).bit_length() - 1, **net)
        self._style_grams: dict[str, torch.Tensor] | None = None
        self._grid: list[torch.Tensor] | None = None

    def compiled_modules(self) -> list[nn.Module]:
        return [self.net, self.loss_net]  # the stylizer and the frozen VGG that scores it

    # -- style targets -----------------------------------------------------------------------------
    def style_grams(self) -> dict[str, torch.Tensor]:
        """The Johnson style target: Gram matrices of the style images, averaged over images (computed once)."""
        if self._style_grams is None or next(iter(self._style_grams.values())).device != self.device:
            with torch.no_grad():
                features = self.loss_net(self.style_images.float() / 255)
            self._style_grams = {layer: gram_matrix(features[layer]).mean(0) for layer in self.style_layers}
        return self._style_grams

    def style_batch(self, n: int, size: tuple[int, int], fixed: bool) -> torch.Tensor:
        """`n` style crops of `size` for AdaIN: random styles and positions, or fixed (style i % S, centre)."""
        count, _, s, _ = self.style_images.shape
        h, w = min(size[0], s), min(size[1], s)
        if fixed:
            index = torch.arange(n, device=self.device) % count
            crops = TF.center_crop(self.style_images[index], [h, w])
        else:
            index = torch.randint(0, count, (n,), device=self.device)
            top, left = torch.randint(0, s - h + 1, (2,)).tolist()
            crops = self.style_images[index, :, top : top + h, left : left + w]
        crops = crops.float() / 255
        return crops if (h, w) == tuple(size) else F.interpolate(crops, size=size, mode="bilinear")

    # -- model -------------------------------------------------------------------------------------
    def forward(self, content: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """[0, 1] content images → stylized images (AdaIN also takes [0, 1] style images, default: the first)."""
        if self.method == "johnson":
            return self.net(content)
        if style is None:
            style = self.style_images[:1].float().div(255).expand(content.shape[0], -1, -1, -1)
        return self.net(self.adain_target(content, style)[0], tuple(content.shape[-2:]))

    def adain_target(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """AdaIN'd content features (the decoder's input and content target) and the style's features."""
        with torch.no_grad():
            content_features = self.loss_net(content)[self.adain_layer]
            style_features = self.loss_net(style)
        return adain(content_features, style_features[self.adain_layer]), style_features

    def stylize(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Inference on [0, 1] images, clamped to [0, 1] (what `tl-predict` writes)."""
        return self(images, style).clamp(0, 1)

    @property
    def output_scale(self) -> int:
        return 1

    # -- losses ------------------------------------------------------------------------------------
    def loss_terms(
        self, content: torch.Tensor, fixed_style: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Weighted loss terms, the output and the style images used, for a batch of [0, 1] content images."""
        if self.method == "johnson":
            output = self.net(content)
            features = self.loss_net(output)
            with torch.no_grad():
                targets = self.loss_net(content)
            content_loss = feature_loss(features, targets, self.content_layers)
            style = style_loss(features, self.style_grams(), self.style_layers)
            style_images = self.style_batch(content.shape[0], tuple(content.shape[-2:]), fixed=True)
        else:
            style_images = self.style_batch(content.shape[0], tuple(content.shape[-2:]), fixed_style)
            target, style_features = self.adain_target(content, style_images)
            output = self.net(target, tuple(content.shape[-2:]))
            features = self.loss_net(output)
            content_loss = F.mse_loss(features[self.adain_layer], target)
            style = sum(
                w * sum(F.mse_loss(a, b) for a, b in zip(mean_std(features[k]), mean_std(style_features[k])))
                for k, w in self.style_layers.items()
            )
        terms = {
            "content": self.weights["content"] * content_loss,
            "style": self.weights["style"] * style,
            "tv": self.weights["tv"] * total_variation(output),
        }
        return terms, output, style_images

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
        content = batch["clean"].float() / 255
        terms, output, style = self.loss_terms(content, fixed_style=stage != "train")
        loss = sum(terms.values())
        self.log_losses(stage, {"loss": loss, **{f"loss_{k}": v for k, v in terms.items()}}, len(content))
        if stage == "val" and batch_idx == 0:
            self._grid = [content[:GRID_SAMPLES], style[:GRID_SAMPLES], output[:GRID_SAMPLES].detach()]
        return loss

    def end_of_epoch(self, stage: str) -> None:
        if stage != "val" or self._grid is None or self.trainer.sanity_checking:
            return
        content, style, output = self._grid
        log_image_rows(self, "val/content_style_output", [content, style, output])
        self._grid = None
