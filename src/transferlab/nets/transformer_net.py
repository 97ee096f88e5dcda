"""Johnson et al. (2016) feed-forward style transfer network: one forward pass stylizes any image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.nets.dncnn import zero_last


def conv_norm(in_ch: int, out_ch: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Reflection-padded conv + instance norm (+ ReLU): padding by reflection avoids dark borders."""
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(kernel // 2),
        nn.Conv2d(in_ch, out_ch, kernel, stride),
        nn.InstanceNorm2d(out_ch, affine=True),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_norm(channels, channels, 3), conv_norm(channels, channels, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Nearest ×2 then conv (instead of a transposed conv, which leaves checkerboard artefacts)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = conv_norm(in_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TransformerNet(nn.Module):
    """Down-sample ×4, `res_blocks` residual blocks, up-sample ×4; `channels` is the first layer's width (32).

    Unlike Johnson's original, the output is the input plus the network's (zero-initialised) prediction:
    training starts from the content image itself and only adds style, which keeps the content recognisable
    after the few hundred CPU steps of the offline experiment (and with a random-feature loss network).
    """

    def __init__(self, channels: int = 32, res_blocks: int = 5) -> None:
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(conv_norm(3, c, 9), conv_norm(c, 2 * c, 3, 2), conv_norm(2 * c, 4 * c, 3, 2))
        self.residuals = nn.Sequential(*(ResidualBlock(4 * c) for _ in range(res_blocks)))
        self.decoder = nn.Sequential(
            Upsample(4 * c, 2 * c), Upsample(2 * c, c), nn.ReflectionPad2d(4), nn.Conv2d(c, 3, 9)
        )
        zero_last(self.decoder[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images → stylized images (roughly [0, 1]; clamp for display), cropped to the input size."""
        h, w = images.shape[-2:]
        # Sizes not divisible by 4 are reflect-padded, then cropped back. Padded always (by 0 when divisible), so
        # a traced or exported graph (tl-export) keeps the padding for every input size.
        x = F.pad(images, (0, (-w) % 4, 0, (-h) % 4), mode="reflect")
        out = self.decoder(self.residuals(self.encoder(x)))
        return images + out[..., :h, :w]
