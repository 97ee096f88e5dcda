"""Device-resident batches for in-memory datasets: the whole uint8 dataset lives on the GPU.

A small dataset (CIFAR: 150 MB as uint8) fits in GPU memory many times over; keeping it there removes
DataLoader workers, host-side per-sample transforms and host→device copies from every step. Each epoch
draws one permutation (identical on every DDP rank, from the run's seed and the epoch number), each rank
takes a disjoint shard, and the cheap augmentations (pad + random crop, horizontal flip) run vectorised
over the whole batch on the device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import nn
from torchvision.transforms import v2

from transferlab.utils.errors import UserError


class DeviceAugment:
    """Per-sample random crop (after padding) and horizontal flip of a uint8 batch, without a Python loop."""

    def __init__(self, padding: int = 0, padding_mode: str = "constant", flip_p: float = 0.0) -> None:
        self.padding, self.padding_mode, self.flip_p = padding, padding_mode, flip_p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.padding:
            images = self._random_crop(images)
        if self.flip_p:
            flip = torch.rand(images.shape[0], device=images.device) < self.flip_p
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images

    def _random_crop(self, images: torch.Tensor) -> torch.Tensor:
        """Crop at a random offset of the padded image, computed as index arithmetic (no padded copy)."""
        batch, channels, height, width = images.shape
        device, pad = images.device, self.padding
        rows = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(height, device=device) - pad
        cols = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(width, device=device) - pad
        out = images[
            torch.arange(batch, device=device)[:, None, None, None],
            torch.arange(channels, device=device)[None, :, None, None],
            self._source_index(rows, height)[:, None, :, None],
            self._source_index(cols, width)[:, None, None, :],
        ]
        if self.padding_mode == "constant":  # pixels that fell in the padding are zero
            inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
            out = out * inside[:, None].to(out.dtype)
        return out

    def _source_index(self, index: torch.Tensor, size: int) -> torch.Tensor:
        """Where a padded coordinate reads from, for reflect / edge / constant padding."""
        if self.padding_mode == "reflect":
            index = index.abs()
            return torch.where(index > size - 1, 2 * (size - 1) - index, index)
        return index.clamp(0, size - 1)  # edge; constant is masked afterwards


def device_augment_from(transform: nn.Module | None, image_size: int) -> DeviceAugment | None:
    """Translate a CPU augment preset into its vectorised device form (crop + flip presets only)."""
    steps = list(getattr(transform, "transforms", [transform])) if transform is not None else []
    padding, padding_mode, flip_p = 0, "constant", 0.0
    for step in steps:
        if isinstance(step, nn.Identity):
            continue
        if isinstance(step, v2.RandomHorizontalFlip):
            flip_p = step.p
        elif isinstance(step, v2.RandomCrop) and tuple(step.size) == (image_size, image_size):
            padding = max(step.padding) if step.padding else 0
            padding_mode = step.padding_mode
        else:
            raise UserError(
                f"augmentation {type(step).__name__} has no device-resident version (only pad+crop and flip, "
                "e.g. data/augment=cifar). Set data.on_gpu=false to run it on the CPU"
            )
    return DeviceAugment(padding, padding_mode, flip_p) if padding or flip_p else None


class DeviceBatchLoader:
    """Iterate (images, targets) batches of tensors that already sit on the training device."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        augment: DeviceAugment | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.targets = images, targets
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything, equal on every rank

    def _shard_size(self) -> int:
        count = len(self.targets)
        # Training drops the remainder so every rank runs the same number of equal batches; evaluation pads
        # by wrapping around (as DistributedSampler does) so no sample is skipped.
        return count // self.world_size if self.shuffle else -(-count // self.world_size)

    def __len__(self) -> int:
        shard = self._shard_size()
        return shard // self.batch_size if self.shuffle else -(-shard // self.batch_size)

    def _indices(self) -> torch.Tensor:
        count = len(self.targets)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(count, generator=generator)
        else:
            order = torch.arange(count)
        total = self._shard_size() * self.world_size
        order = order[:total] if total <= count else torch.cat([order, order[: total - count]])
        return order[self.rank :: self.world_size].to(self.images.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices()
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = indices[start : start + self.batch_size]
            images = self.images[batch]
            yield (self.augment(images) if self.augment else images), self.targets[batch]
