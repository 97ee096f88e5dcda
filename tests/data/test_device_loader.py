"""Device-resident batches: sharding, coverage, training (run here on the CPU device); the augmentation
itself is tested in test_device_augment.py."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from transferlab.data import device_augment
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


def test_augment_is_importable_from_the_loader_module() -> None:
    """The augment moved to device_augment; the loader module still exposes it for existing imports."""
    assert DeviceAugment is device_augment.DeviceAugment
    assert device_augment_from is device_augment.device_augment_from


def test_training_with_device_resident_data(make_cfg) -> None:
    cfg = make_cfg("data.on_gpu=true")
    assert run(cfg) is not None


def test_auto_device_path_falls_back_to_the_cpu_loader_for_a_custom_transform(make_cfg, monkeypatch) -> None:
    """data.on_gpu=null never errors: a transform with no device version runs on the CPU DataLoader path."""
    for on_gpu in (None, True):
        cfg = make_cfg(f"data.on_gpu={'null' if on_gpu is None else 'true'}")
        datamodule = instantiate(cfg.data, augment=v2.GaussianBlur(3))
        datamodule.setup("fit")
        monkeypatch.setattr(datamodule, "device_resident", lambda: True)  # as on a GPU
        if on_gpu is None:
            with pytest.warns(UserWarning, match="GaussianBlur has no device-resident version.*CPU DataLoader"):
                assert isinstance(datamodule.train_dataloader(), DataLoader)
        else:
            with pytest.raises(UserError, match="GaussianBlur has no device-resident version"):
                datamodule.train_dataloader()
