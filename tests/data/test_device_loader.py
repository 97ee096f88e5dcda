"""Device-resident batches: sharding, coverage, vectorised augmentation (run here on the CPU device)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from transferlab.data.device_loader import DeviceAugment, DeviceBatchLoader, device_augment_from
from transferlab.train import run
from transferlab.utils.errors import UserError


def loader(count: int, shuffle: bool, rank: int = 0, world: int = 1, batch: int = 4) -> DeviceBatchLoader:
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 2, 2).contiguous()
    return DeviceBatchLoader(images, torch.arange(count), batch, shuffle, rank=rank, world_size=world)


def test_training_epochs_shard_disjointly_and_reshuffle() -> None:
    ranks = [loader(21, shuffle=True, rank=r, world=2) for r in range(2)]
    epoch0 = [torch.cat([t for _, t in rank]) for rank in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 10 samples per rank → 2 full batches of 4
    assert not set(epoch0[0].tolist()) & set(epoch0[1].tolist())  # disjoint shards of one permutation
    epoch1 = torch.cat([t for _, t in ranks[0]])
    assert not torch.equal(epoch0[0], epoch1)  # a new permutation every epoch
    images, targets = next(iter(loader(21, shuffle=True)))
    assert torch.equal(images[:, 0, 0, 0].long(), targets)  # images and labels stay paired


def test_evaluation_sees_every_sample() -> None:
    seen = torch.cat([t for r in range(2) for _, t in loader(21, shuffle=False, rank=r, world=2)])
    assert set(seen.tolist()) == set(range(21)) and len(seen) == 22  # padded by one to equal shards


def test_flip_and_reflect_crop_match_torchvision_semantics() -> None:
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(DeviceAugment(flip_p=1.0)(images), images.flip(-1))
    cropped = DeviceAugment(padding=2, padding_mode="reflect")(images)
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    for out, ref in zip(cropped.float(), padded):
        windows = ref.unfold(1, 8, 1).unfold(2, 8, 1)  # (C, 5, 5, 8, 8): every crop position
        assert (windows == out[:, None, None]).flatten(3).all(-1).all(0).any()


def test_constant_padding_is_zero() -> None:
    images = torch.full((64, 1, 4, 4), 255, dtype=torch.uint8)
    out = DeviceAugment(padding=2)(images)
    assert (out == 0).any() and set(out.unique().tolist()) <= {0, 255}


def test_presets_translate_or_refuse() -> None:
    cifar = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip()])
    augment = device_augment_from(cifar, 32)
    assert (augment.padding, augment.padding_mode, augment.flip_p) == (4, "reflect", 0.5)
    assert device_augment_from(torch.nn.Identity(), 32) is None
    with pytest.raises(UserError, match="RandomRotation has no device-resident version.*data.on_gpu=false"):
        device_augment_from(v2.Compose([v2.RandomRotation(10)]), 32)


def test_training_with_device_resident_data(make_cfg) -> None:
    cfg = make_cfg("data.on_gpu=true")
    assert run(cfg) is not None
