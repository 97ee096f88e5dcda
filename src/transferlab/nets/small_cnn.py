"""A small CNN for 32 px images: a conv trunk and a two-layer FC head (a classic transfer-learning paper's).

Trunk, one block per entry of `widths`: conv3×3(→width, padding 1)-ReLU-maxpool2, then flatten; the default
``widths=(32, 64)`` is the paper's conv3×3(3→32)-ReLU-maxpool-conv3×3(32→64)-ReLU-maxpool. Head: Linear(features →
512)-ReLU-Linear(512 → classes). The convolutions keep the size and each pool halves it, so the trunk gives
``widths[-1] · (image_size // 2**len(widths))²`` features: 64·8·8 for a 32 px input with the default widths (the
paper's "64·16·16" would need 64 px inputs or a single pool); the first Linear is sized from `image_size` rather
than a hard-coded count. More widths make a deeper trunk (``[32, 64, 128]``: 3 conv layers, 128·4·4 features at
32 px), which the layer-wise transfer study needs. As a backbone (``model.backbone.name=small_cnn``) the trunk is
what transfers; the FC layers are the head a task replaces (``model.head_hidden=512`` rebuilds them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from transferlab.utils.errors import UserError

PAPER_WIDTHS = (32, 64)


class SmallCNN(nn.Module):
    """`features` (the conv trunk, flattened) → `classifier` (the FC head); a torchvision-style classifier."""

    def __init__(
        self, num_classes: int = 10, image_size: int = 32, hidden: int = 512, widths: Sequence[int] = PAPER_WIDTHS
    ) -> None:
        super().__init__()
        widths = list(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise UserError(f"small_cnn widths must be a non-empty list of positive integers, got {widths}")
        side = image_size // 2 ** len(widths)  # each block's pool halves the image side
        if side < 1:
            raise UserError(
                f"small_cnn with {len(widths)} conv blocks needs images of at least {2 ** len(widths)} px, "
                f"got image_size={image_size}. Use fewer widths or larger images"
            )
        self.image_size = image_size
        self.num_features = widths[-1] * side * side
        blocks: list[nn.Module] = []
        for in_channels, out_channels in zip([3, *widths[:-1]], widths, strict=True):
            blocks += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(self.num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = check_size(self.features(images), self.num_features, self.image_size)
        return self.classifier(features)


def check_size(features: torch.Tensor, expected: int, image_size: int) -> torch.Tensor:
    """`features`, or a one-line error when the images were not the size the FC head was built for (a shape
    check: no device sync). A leaf for torch.fx, so U-Net feature extraction can still trace the model."""
    if features.shape[1] != expected:
        raise UserError(
            f"small_cnn was built for {image_size} px images (set model.backbone.kwargs.image_size to the data's "
            f"image size), got features of {features.shape[1]} values, not {expected}"
        )
    return features


torch.fx.wrap("check_size")
