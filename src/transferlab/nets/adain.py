"""AdaIN (Huang & Belongie 2017): arbitrary style at inference by matching feature mean/std, then decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.losses import mean_std


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Give `content` features the per-channel mean and std of `style` features."""
    c_mean, c_std = mean_std(content)
    s_mean, s_std = mean_std(style)
    return (content - c_mean) / c_std * s_std + s_mean


class AdaINDecoder(nn.Module):
    """Mirror of the VGG encoder: from `in_channels` features at stride 2^`upsamples` back to RGB."""

    def __init__(self, in_channels: int = 256, upsamples: int = 2, min_channels: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(upsamples):
            out = max(min_channels, channels // 2)
            layers += [
                nn.ReflectionPad2d(1),
                nn.Conv2d(channels, out, 3),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.ReflectionPad2d(1),
                nn.Conv2d(out, out, 3),
                nn.ReLU(inplace=True),
            ]
            channels = out
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, 3, 3)]
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # Resized always (the identity when the size already matches, e.g. a multiple of the encoder's stride),
        # so a traced or exported graph (tl-export) resizes every input size.
        return F.interpolate(self.body(features), size=size, mode="bilinear")
