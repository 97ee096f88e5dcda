"""Photo patches cut, flipped and degraded on the training device, for restoration and style transfer.

The CPU path (`photos.PatchDataset` in a DataLoader) cuts and degrades one patch at a time in Python; on a
GPU that caps a DnCNN at a fifth of its speed. Here the photos are decoded once and kept as uint8 on the
device (any folder of a few GB fits), every batch's patches are gathered from them with index arithmetic,
and the degradations run batched (`device_degrade.DeviceDegrade`). Validation and test patches stay the
fixed, seeded ones of the CPU path: they are made once on the CPU and kept on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from transferlab.utils.seeding import stream_seed

Batch = dict[str, torch.Tensor]


class PhotoBank:
    """Photos of different sizes (uint8 (C, H, W) each) in one flat device tensor, with offsets and sizes."""

    def __init__(self, photos: list[torch.Tensor], device: torch.device) -> None:
        channels = {p.shape[0] for p in photos}
        if channels != {3}:
            raise ValueError(f"photos must be RGB (C=3), got channel counts {sorted(channels)}")
        sizes = torch.tensor([p.shape[-2:] for p in photos], dtype=torch.long)
        lengths = sizes.prod(dim=1) * 3
        self.data = torch.cat([p.reshape(-1) for p in photos]).to(device)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]).to(device)
        self.heights, self.widths = sizes[:, 0].to(device), sizes[:, 1].to(device)
        self.count = len(photos)

    def random_patches(self, batch_size: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`batch_size` random `size`² patches (uniform photo, uniform position), each flipped with p = 0.5."""
        device = self.data.device
        rand = torch.rand(4, batch_size, device=device, generator=generator)
        photo = (rand[0] * self.count).long().clamp_(max=self.count - 1)
        height, width = self.heights[photo], self.widths[photo]
        top = (rand[1] * (height - size + 1)).long()
        left = (rand[2] * (width - size + 1)).long()
        steps = torch.arange(size, device=device)
        rows = (top[:, None] + steps)[:, None, :, None]  # (B, 1, size, 1)
        cols = (left[:, None] + steps)[:, None, None, :]  # (B, 1, 1, size)
        plane = (height * width)[:, None, None, None]
        channel = torch.arange(3, device=device)[None, :, None, None]
        index = self.offsets[photo][:, None, None, None] + channel * plane + rows * width[:, None, None, None] + cols
        patches = self.data[index]
        flip = (rand[3] < 0.5)[:, None, None, None]
        return torch.where(flip, patches.flip(-1), patches)


class DevicePatchLoader:
    """Training batches of random patches made on the device: ``{"clean"}`` or ``{"degraded", "clean", "mask"}``.

    Each rank draws from its own device generator (seeded from the run's seed and the rank), so DDP ranks
    see different patches and a seeded run repeats exactly.
    """

    def __init__(
        self,
        bank: PhotoBank,
        patch_size: int,
        length: int,
        batch_size: int,
        degrade: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.bank, self.patch_size, self.batch_size, self.degrade = bank, patch_size, batch_size, degrade
        self.batches = max(1, (length // world_size) // batch_size)
        self.generator = torch.Generator(device=bank.data.device).manual_seed(stream_seed(seed, rank))

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.batches):
            clean = self.bank.random_patches(self.batch_size, self.patch_size, self.generator)
            if self.degrade is None:
                yield {"clean": clean}
            else:
                degraded, mask = self.degrade(clean, self.generator)
                yield {"degraded": degraded, "clean": clean, "mask": mask}


class FixedBatchLoader:
    """Batches of a fixed set of samples (dict of equally long tensors) already on the device, in order.

    DDP ranks take disjoint strided shards, padded by wrapping around so every rank runs the same number of
    batches (as Lightning's DistributedSampler does).
    """

    def __init__(self, samples: Batch, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        count = len(next(iter(samples.values())))
        self.batch_size, self.count = batch_size, count
        if world_size == 1:  # the samples as they are: an indexed copy would hold them twice on the device
            self.samples = dict(samples)
            return
        per_rank = -(-count // world_size)
        order = torch.arange(per_rank * world_size) % count
        index = order[rank::world_size].to(next(iter(samples.values())).device)
        self.samples = {k: v[index] for k, v in samples.items()}
        self.count = len(index)

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, self.count, self.batch_size):
            yield {k: v[start : start + self.batch_size] for k, v in self.samples.items()}
