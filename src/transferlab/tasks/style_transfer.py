"""Neural style transfer with a frozen pretrained loss network (VGG-16/19 or any torchvision backbone).

Two tasks share `StyleTask` (style images, loss network, loss terms and grids):

* `StyleTransferTask` — a feed-forward network per style (Johnson et al. 2016; `TransformerNet`), trained on
  content patches with content (feature) + style (Gram) + total-variation losses. Several style images are
  blended: the style target is their average Gram matrix.
* `AdaINTask` — arbitrary style (Huang & Belongie 2017): the frozen loss network up to `adain_layer` encodes
  content and style, AdaIN matches their channel statistics, a trained decoder maps back to pixels; any
  style image works at inference. Training styles are random crops of the style images.

The trained network is ``model.net`` (a ``_target_``, `transferlab.nets.build_network`).

Style images (embedded names such as ``brick`` or file paths) are read once, resized/cropped to
``style_size`` and kept as a buffer, so a checkpoint is self-contained (`tl-predict` needs no style file
for ``johnson``). Batches are content patches ``{"clean": uint8}`` from `PhotoDataModule`. Logged: each
weighted loss term (``{stage}/loss_content``, ``loss_style``, ``loss_tv``) and their sum ``{stage}/loss``;
validation renders its fixed content patches as a (content | style | output) grid.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from transferlab.data.photos import load_image
from transferlab.inference import (
    IMAGE_AXES,
    OUTPUT_IMAGE,
    Clamped,
    ExportSpec,
    ImageFiles,
    PredictOptions,
    Predictor,
    png_base64,
)
from transferlab.losses import LossNetwork, feature_loss, gram_matrix, mean_std, style_loss, total_variation
from transferlab.nets import build_network
from transferlab.nets.adain import adain
from transferlab.tasks.base import TransferTask
from transferlab.utils.config import to_plain
from transferlab.utils.errors import UserError


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to `size` and centre-crop: every style image gets the same shape and scale."""
    return TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])


def style_input(style: str, size: int) -> torch.Tensor:
    """A style image (embedded name or path) as an AdaIN model takes it: `square` at `size`, [0, 1], (1, 3, S, S)."""
    return square(load_image(style), size)[None].float().div(255)


class AdaINStylizer(nn.Module):
    """AdaIN inference as one module: encode content and style, match statistics, decode at the content's size.

    The style batch is 1 (one style for all contents) or the content's: the style statistics broadcast."""

    def __init__(self, encoder: nn.Module, layer: str, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.layer, self.decoder = encoder, layer, decoder

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        target = adain(self.encoder(content)[self.layer], self.encoder(style)[self.layer])
        return self.decoder(target, tuple(content.shape[-2:])).clamp(0, 1)


class StyleTask(TransferTask, abc.ABC):
    """Content patch → stylized image; the loss network never trains. Subclasses write `loss_terms`, `forward`
    and `style_for_prediction`."""

    def __init__(
        self,
        optimizer: dict[str, Any],
        net: dict[str, Any],
        styles: list[str],
        style_size: int,
        loss_network: dict[str, Any],
        content_layers: dict[str, float],
        style_layers: dict[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        scheduler: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        compile: str | None = None,
        channels_last: bool | None = None,
        load_source_weights: bool = True,
        extra_layers: tuple[str, ...] = (),
    ) -> None:
        optimizer, scheduler, finetune, loss_network = map(to_plain, (optimizer, scheduler, finetune, loss_network))
        styles, content_layers, style_layers = map(to_plain, (styles, content_layers, style_layers))
        super().__init__(optimizer, scheduler, finetune, compile, channels_last)
        if not styles:
            raise UserError("model.styles is empty. Give at least one style image: an embedded name (brick) or a path")
        if min(content_weight, style_weight, tv_weight) < 0:
            raise UserError("model.content_weight, style_weight and tv_weight must be >= 0")
        self.content_layers = dict(content_layers)
        self.style_layers = dict(style_layers)
        self.weights = {"content": content_weight, "style": style_weight, "tv": tv_weight}

        layers = [*self.content_layers, *self.style_layers, *extra_layers]
        source = loss_network["weights"] if load_source_weights else None  # reloading: the checkpoint has them
        self.loss_net = LossNetwork(loss_network["name"], source, layers)

        # Style images: read now when training; when reloading, the buffer is filled from the checkpoint.
        images = [square(load_image(s), style_size) for s in styles] if load_source_weights else None
        stack = (
            torch.stack(images) if images else torch.zeros(len(styles), 3, style_size, style_size, dtype=torch.uint8)
        )
        self.register_buffer("style_images", stack)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.net, self.loss_net]  # the stylizer and the frozen VGG that scores it

    def style_batch(self, n: int, size: tuple[int, int], fixed: bool) -> torch.Tensor:
        """`n` style crops of `size`: random styles and positions, or fixed (style i % S, centre)."""
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

    @abc.abstractmethod
    def loss_terms(
        self, content: torch.Tensor, fixed_style: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Weighted loss terms (content, style, tv), the output and the style images used, for [0, 1] content."""

    @abc.abstractmethod
    def style_for_prediction(self, style: str | None) -> torch.Tensor | None:
        """The style image `tl-predict` applies ([0, 1], (1, 3, S, S)) for the user's ``style=`` (None: the model's)."""

    def stylize(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Inference on [0, 1] images, clamped to [0, 1] (what `tl-predict` writes)."""
        return self(images, style).clamp(0, 1)

    def predictor(self, prepare: Callable[[torch.Tensor], torch.Tensor], options: PredictOptions) -> Predictor:
        """One stylized PNG per file, at the file's size."""
        if options.mask is not None:
            raise UserError("mask= is for inpainting models; this checkpoint is a style-transfer model")
        style = self.style_for_prediction(options.style)
        return ImageFiles(lambda x, _mask: self.stylize(x, style), prepare, options, self.device)

    def shared_step(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
        content = batch["clean"].float() / 255
        terms, output, style = self.loss_terms(content, fixed_style=stage != "train")
        weighted = {name: self.weights[name] * value for name, value in terms.items()}
        loss = sum(weighted.values())
        self.log_losses(stage, {"loss": loss, **{f"loss_{k}": v for k, v in weighted.items()}}, len(content))
        self.show_images(stage, batch_idx, "val/content_style_output", lambda: [content, style, output])
        return loss


class StyleTransferTask(StyleTask):
    """Johnson et al.: one feed-forward network per style (blend), its style built in."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["load_source_weights"], logger=False)
        self.net = build_network(self.hparams.net, "model.net")
        self._style_grams: dict[str, torch.Tensor] | None = None

    def style_grams(self) -> dict[str, torch.Tensor]:
        """The style target: Gram matrices of the style images, averaged over images (computed once)."""
        if self._style_grams is None or next(iter(self._style_grams.values())).device != self.device:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):  # the target, in float32
                features = self.loss_net(self.style_images.float() / 255)
            self._style_grams = {layer: gram_matrix(features[layer]).mean(0) for layer in self.style_layers}
        return self._style_grams

    def forward(self, content: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """[0, 1] content images → stylized images (the style is the model's own)."""
        return self.net(content)

    def export_module(self, example: torch.Tensor) -> ExportSpec:
        """[0, 1] images of any batch and size → stylized images in [0, 1] (the style is built in)."""
        return ExportSpec(Clamped(self.net), {"image": example}, OUTPUT_IMAGE, {"image": IMAGE_AXES}, {})

    def style_for_prediction(self, style: str | None) -> None:
        if style is not None:
            raise UserError("style= needs an AdaIN model (model=adain); this stylizer has its style built in")
        return None

    def loss_terms(
        self, content: torch.Tensor, fixed_style: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        output = self.net(content)
        features = self.loss_net(output)
        with torch.no_grad():
            targets = self.loss_net(content)
        terms = {
            "content": feature_loss(features, targets, self.content_layers),
            "style": style_loss(features, self.style_grams(), self.style_layers),
            "tv": total_variation(output),
        }
        return terms, output, self.style_batch(content.shape[0], tuple(content.shape[-2:]), fixed=True)


class AdaINTask(StyleTask):
    """Huang & Belongie: any style at inference; the decoder (``model.net``) inverts AdaIN'd features."""

    def __init__(self, adain_layer: str, **kwargs: Any) -> None:
        super().__init__(**kwargs, extra_layers=(adain_layer,))
        self.save_hyperparameters(ignore=["load_source_weights"], logger=False)
        self.adain_layer = adain_layer
        with torch.no_grad():
            probe = self.loss_net(torch.zeros(1, 3, 64, 64))[adain_layer]
        upsamples = round(64 / probe.shape[-1]).bit_length() - 1  # the encoder's stride, as powers of two
        self.net = build_network(self.hparams.net, "model.net", in_channels=probe.shape[1], upsamples=upsamples)

    def forward(self, content: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """[0, 1] content images → stylized images; `style`: [0, 1] style images (default: the first training one)."""
        if style is None:
            style = self.style_images[:1].float().div(255)
        style = style.expand(content.shape[0], -1, -1, -1)
        return self.net(self.adain_target(content, style)[0], tuple(content.shape[-2:]))

    def adain_target(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """AdaIN'd content features (the decoder's input and content target) and the style's features."""
        with torch.no_grad():
            content_features = self.loss_net(content)[self.adain_layer]
            style_features = self.loss_net(style)
        return adain(content_features, style_features[self.adain_layer]), style_features

    def style_for_prediction(self, style: str | None) -> torch.Tensor | None:
        if style is None:
            return None
        return style_input(style, self.hparams.style_size).to(self.device)

    def export_module(self, example: torch.Tensor) -> ExportSpec:
        """Content images ([0, 1], any batch and size) and one style image ([0, 1], (1, 3, any size)) → stylized
        images in [0, 1]. The first training style goes along (metadata, PNG) for `tl-predict` without style=."""
        module = AdaINStylizer(self.loss_net, self.adain_layer, self.net)
        default = self.style_images[0]
        inputs = {"image": example, "style": default[None].float().div(255)}
        dynamic = {"image": IMAGE_AXES, "style": {2: "style_height", 3: "style_width"}}
        metadata = {"style_size": self.hparams.style_size, "default_style": png_base64(default)}
        return ExportSpec(module, inputs, OUTPUT_IMAGE, dynamic, metadata)

    def loss_terms(
        self, content: torch.Tensor, fixed_style: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        style_images = self.style_batch(content.shape[0], tuple(content.shape[-2:]), fixed_style)
        target, style_features = self.adain_target(content, style_images)
        output = self.net(target, tuple(content.shape[-2:]))
        features = self.loss_net(output)
        style = sum(
            w * sum(F.mse_loss(a, b) for a, b in zip(mean_std(features[k]), mean_std(style_features[k])))
            for k, w in self.style_layers.items()
        )
        terms = {
            "content": F.mse_loss(features[self.adain_layer], target),
            "style": style,
            "tv": total_variation(output),
        }
        return terms, output, style_images
