"""A small CNN for 32 px images: a two-conv trunk and a two-layer FC head (a classic transfer-learning paper's).

Trunk: conv3×3(3→32)-ReLU-maxpool2-conv3×3(32→64)-ReLU-maxpool2-flatten; head: Linear(features → 512)-ReLU-
Linear(512 → classes). With padding 1 the convolutions keep the size and each pool halves it, so a 32 px input
gives 64·8·8 features (the paper's "64·16·16" would need 64 px inputs or a single pool): the first Linear is
sized from `image_size` rather than a hard-coded count. As a backbone (``model.backbone.name=small_cnn``) the
trunk is what transfers; the FC layers are the head a task replaces (``model.head_hidden=512`` rebuilds them).
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.utils.errors import UserError

POOLS = 2  # each halves the image side


class SmallCNN(nn.Module):
    """`features` (the conv trunk, flattened) → `classifier` (the FC head); a torchvision-style classifier."""

    def __init__(self, num_classes: int = 10, image_size: int = 32, hidden: int = 512) -> None:
        super().__init__()
        side = image_size // 2**POOLS
        if side < 1:
            raise UserError(f"small_cnn needs images of at least {2**POOLS} px, got image_size={image_size}")
        self.image_size = image_size
        self.num_features = 64 * side * side
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
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
