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


def flips_drawn(rank: int, seed: int, monkeypatch, epochs: int = 1, device: str = "cpu") -> torch.Tensor:
    """Which images a rank's loader flipped, over `epochs` epochs, after seeding like `seed_everything` (the
    default generators the same on every rank)."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
    torch.manual_seed(seed)  # seeds the CUDA generators too
    count = 64
    images = torch.arange(2, dtype=torch.uint8).view(1, 1, 1, 2).expand(count, 3, 1, 2).contiguous()  # [0, 1] rows
    images = images.to(device)
    augment = device_augment_from(v2.RandomHorizontalFlip())
    ranked = DeviceBatchLoader(images, torch.zeros(count, device=device), 8, True, augment, rank, world_size=2)
    return torch.cat([batch[:, 0, 0, 0] == 1 for _ in range(epochs) for batch, _ in ranked]).cpu()


def test_augmentation_differs_across_ranks_and_repeats_for_a_seed(monkeypatch) -> None:
    """Each rank draws its own flips (not the default generator, seeded alike on all ranks); a seed repeats them."""
    rank0, rank1 = flips_drawn(0, 0, monkeypatch), flips_drawn(1, 0, monkeypatch)
    assert not torch.equal(rank0, rank1)
    assert torch.equal(rank0, flips_drawn(0, 0, monkeypatch))
    assert not torch.equal(rank0, flips_drawn(0, 1, monkeypatch))
    two_epochs = flips_drawn(0, 0, monkeypatch, epochs=2)
    assert not torch.equal(two_epochs[: len(rank0)], two_epochs[len(rank0) :]), "a new draw every epoch"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU box with -m gpu)")
def test_augmentation_on_cuda_draws_per_rank_from_a_cuda_generator(monkeypatch) -> None:
    """On a GPU the augmentation's generator lives on the images' device (a CPU generator would fail there)."""
    rank0, rank1 = (flips_drawn(rank, 0, monkeypatch, device="cuda") for rank in (0, 1))
    assert not torch.equal(rank0, rank1)
    assert torch.equal(rank0, flips_drawn(0, 0, monkeypatch, device="cuda"))
