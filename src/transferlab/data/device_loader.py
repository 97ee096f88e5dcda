"""Device-resident batches for in-memory datasets: the whole uint8 dataset lives on the GPU.

A small dataset (CIFAR: 150 MB as uint8) fits in GPU memory many times over; keeping it there removes
DataLoader workers, host-side per-sample transforms and host→device copies from every step. Each epoch
draws one permutation (identical on every DDP rank, from the run's seed and the epoch number), each rank
takes a disjoint shard, and the augmentation preset runs per sample, vectorised over the whole batch on the
device (`transferlab.data.device_augment`), drawing from its own device generator seeded from (seed, rank,
epoch): `seed_everything` seeds the default generator identically on every rank, so drawing from it would
give every rank the same crops and flips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from transferlab.data.device_augment import DeviceAugment, device_augment_from
from transferlab.utils.seeding import stream_seed

__all__ = ["DeviceAugment", "DeviceBatchLoader", "device_augment_from"]  # the augment lives in device_augment


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

    def augment_generator(self) -> torch.Generator:
        """This rank's generator for this epoch's augmentation, on the images' device: reproducible for a seed,
        different on every rank and every epoch (the default generator is seeded alike on all ranks)."""
        return torch.Generator(device=self.images.device).manual_seed(stream_seed(self.seed, self.rank, self.epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices()
        generator = self.augment_generator() if self.augment else None
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = indices[start : start + self.batch_size]
            images = self.images[batch]
            yield (self.augment(images, generator) if self.augment else images), self.targets[batch]
