"""EDSR (Lim et al. 2017): BatchNorm-free residual blocks and a sub-pixel (PixelShuffle) up-sampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.nets.dncnn import zero_last
from transferlab.utils.errors import UserError


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        conv = lambda: nn.Conv2d(channels, channels, 3, padding=1)  # noqa: E731
        self.body = nn.Sequential(conv(), nn.ReLU(inplace=True), conv())
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


def upsampler(channels: int, scale: int) -> nn.Sequential:
    """×2/×3/×4 by PixelShuffle (×4 as two ×2 stages, as in EDSR)."""
    if scale == 1:
        return nn.Sequential()
    if scale not in (2, 3, 4):
        raise UserError(f"super-resolution scale must be 1, 2, 3 or 4, got {scale}")
    factors = [2, 2] if scale == 4 else [scale]
    layers: list[nn.Module] = []
    for factor in factors:
        layers += [nn.Conv2d(channels, channels * factor**2, 3, padding=1), nn.PixelShuffle(factor)]
    return nn.Sequential(*layers)


class EDSR(nn.Module):
    """Head conv → `blocks` residual blocks (+ long skip) → up-sampler → RGB, plus the bicubic up-scaled input.

    The bicubic skip (not in the paper) makes the network learn only the missing detail, which
    converges much faster in short CPU runs; the output size is the input size × `scale`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 2,
        channels: int = 64,
        blocks: int = 16,
        res_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.scale, self.out_channels = scale, out_channels
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(
            *(ResBlock(channels, res_scale) for _ in range(blocks)), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.tail = nn.Sequential(upsampler(channels, scale), nn.Conv2d(channels, out_channels, 3, padding=1))
        zero_last(self.tail[-1])  # starts as bicubic up-scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        out = self.tail(features + self.body(features))
        base = x[:, : self.out_channels]
        if self.scale > 1:
            base = F.interpolate(base, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + out
