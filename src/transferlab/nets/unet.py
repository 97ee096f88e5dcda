"""U-Net whose encoder is a pretrained torchvision or timm backbone (the transfer-learning restoration model).

The encoder is any classification backbone cut at several named layers (``relu``, ``layer1`` … for a
torchvision ResNet: FX graph nodes; ``act1``, ``layer1`` … for ``timm/resnet18``: timm's ``feature_info``
modules); it is the task's `backbone`, so the fine-tune modes (full, linear_probe, gradual) freeze/unfreeze it
exactly as for classification. The decoder up-samples the deepest features, concatenating each shallower skip,
and finally the input image (and mask) at full resolution; it predicts a residual added to the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.backbones import InputNormalize, build_features
from transferlab.nets.dncnn import zero_last
from transferlab.utils.errors import UserError


def build_encoder(
    name: str, weights: str | None, layers: Sequence[str], kwargs: dict | None = None
) -> tuple[nn.Module, list[int]]:
    """The backbone cut at `layers` (shallow → deep) and the channel count of each returned feature map."""
    encoder = build_features(name, weights, layers, kwargs)
    was_training = encoder.training
    with torch.no_grad():
        features = encoder.eval()(torch.zeros(1, 3, 64, 64))
    encoder.train(was_training)
    return encoder, [features[layer].shape[1] for layer in layers]


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class UNetDecoder(nn.Module):
    """Decoder over encoder skips `skip_channels` (shallow → deep) plus the full-resolution input."""

    def __init__(
        self, skip_channels: Sequence[int], in_channels: int = 3, out_channels: int = 3, width: int = 32
    ) -> None:
        super().__init__()
        deep = list(skip_channels)[::-1]
        self.stages = nn.ModuleList()
        channels = deep[0]
        for skip in deep[1:]:
            out = max(width, skip // 2)
            self.stages.append(conv_block(channels + skip, out))
            channels = out
        self.final = nn.Sequential(conv_block(channels + in_channels, width), nn.Conv2d(width, out_channels, 1))
        zero_last(self.final[-1])  # starts as the identity
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """`x`: the network input (image [+ mask]) in [0, 1]; `skips`: encoder features, shallow → deep."""
        deep = list(skips)[::-1]
        y = deep[0]
        for stage, skip in zip(self.stages, deep[1:]):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = stage(torch.cat([y, skip], dim=1))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x[:, : self.out_channels] + self.final(torch.cat([y, x], dim=1))


class UNet(nn.Module):
    """Pretrained encoder (`backbone`: name, weights, layers, kwargs) + `UNetDecoder`; the encoder is the
    network's `backbone` attribute, which the fine-tune modes freeze. Input: [0, 1] image (+ mask channels)."""

    def __init__(
        self, in_channels: int, out_channels: int, backbone: dict[str, Any], width: int, load_weights: bool = True
    ) -> None:
        super().__init__()
        if not backbone:
            raise UserError("a U-Net needs model.backbone (name, weights, layers) for its encoder")
        self.layers = list(backbone["layers"])
        weights = backbone.get("weights") if load_weights else None
        self.backbone, skips = build_encoder(backbone["name"], weights, self.layers, backbone.get("kwargs"))
        self.decoder = UNetDecoder(skips, in_channels, out_channels, width)
        self.normalize = InputNormalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.normalize(x[:, :3]))
        return self.decoder(x, [features[layer] for layer in self.layers])
