"""Photo patches on the device: real crops of the photos, the CPU path's distribution, seeded and sharded."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_PHOTOS
from transferlab.data.device_patches import DevicePatchLoader, FixedBatchLoader, PhotoBank
from transferlab.runner import build
from transferlab.train import run


def coded_photos() -> list[torch.Tensor]:
    """Pixels: channel 0 = column, channel 1 = row, channel 2 = photo index; sizes differ per photo."""
    out = []
    for index, (h, w) in enumerate([(9, 12), (16, 10), (11, 11)]):
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        out.append(torch.stack([x, y, torch.full_like(x, index)]).to(torch.uint8))
    return out


def test_random_patches_are_crops_of_the_photos_flipped_half_of_the_time() -> None:
    source = coded_photos()
    bank = PhotoBank(source, torch.device("cpu"))
    patches = bank.random_patches(600, 8, torch.Generator().manual_seed(0))
    assert patches.shape == (600, 3, 8, 8) and patches.dtype == torch.uint8
    flipped = 0
    for patch in patches:
        photo = int(patch[2, 0, 0])
        cols, rows = patch[0].long(), patch[1].long()
        if cols[0, 0] > cols[0, -1]:
            flipped += 1
            patch = patch.flip(-1)
            cols, rows = patch[0].long(), patch[1].long()
        top, left = int(rows[0, 0]), int(cols[0, 0])
        assert torch.equal(patch, source[photo][:, top : top + 8, left : left + 8])
    assert 240 < flipped < 360  # p = 0.5


def test_patch_positions_and_photos_are_uniform() -> None:
    bank = PhotoBank(coded_photos(), torch.device("cpu"))
    patches = bank.random_patches(6000, 8, torch.Generator().manual_seed(1))
    photo = patches[:, 2, 0, 0].long()
    assert torch.allclose(torch.bincount(photo, minlength=3).float() / 6000, torch.full((3,), 1 / 3), atol=0.03)
    rows_of_photo1 = patches[photo == 1][:, 1, 0, 0].long()  # 16 rows, patch 8 → tops 0..8, uniform
    counts = torch.bincount(rows_of_photo1, minlength=9).float()
    assert len(counts) == 9 and counts.min() > 0.6 * counts.mean()


def test_loader_is_seeded_per_rank_and_sizes_batches() -> None:
    bank = PhotoBank(coded_photos(), torch.device("cpu"))

    def first(seed: int, rank: int) -> torch.Tensor:
        return next(iter(DevicePatchLoader(bank, 8, 40, 4, None, seed, rank, world_size=2)))["clean"]

    assert torch.equal(first(0, 0), first(0, 0))
    assert not torch.equal(first(0, 0), first(0, 1)) and not torch.equal(first(0, 0), first(1, 0))
    assert len(DevicePatchLoader(bank, 8, 40, 4, None, 0, 0, world_size=2)) == 5


def test_fixed_batches_shard_disjointly_and_cover_everything() -> None:
    samples = {"clean": torch.arange(7).view(7, 1, 1, 1), "mask": torch.arange(7).view(7, 1, 1, 1)}
    shards = [torch.cat([b["clean"].flatten() for b in FixedBatchLoader(samples, 2, r, 2)]) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert set(torch.cat(shards).tolist()) == set(range(7))


def test_style_transfer_trains_on_device_patches(make_cfg) -> None:
    cfg = make_cfg(
        *TINY_PHOTOS,
        "data.on_gpu=true",  # the device path, on the CPU device
        "trainer.max_epochs=1",
        "model=style_transfer",
        "model.style_size=64",
        "model.net.channels=4",
        "logger=none",
        "trainer.limit_train_batches=2",
        tiny=False,
    )
    assert run(cfg) is not None


@pytest.mark.parametrize(
    ("model", "degrade", "extra"),
    [
        ("denoise", "gaussian_noise", ["model.net.depth=4"]),
        ("restore_unet", "inpaint_brush", ["model.net.width=8"]),
        ("super_resolution", "downscale", ["model.net.channels=8", "model.net.blocks=1"]),
    ],
)
def test_restoration_trains_on_device_patches_and_degradations(make_cfg, model, degrade, extra) -> None:
    """The device path end to end: patches cut and degraded on the device feed each restoration model."""
    cfg = make_cfg(
        *TINY_PHOTOS,
        "data.on_gpu=true",
        "trainer.max_epochs=1",
        f"model={model}",
        f"data/degrade={degrade}",
        "logger=none",
        "trainer.limit_train_batches=2",
        *extra,
        tiny=False,
    )
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    datamodule.trainer = None
    batch = next(iter(datamodule._loader("train", shuffle=True)))
    scale = datamodule.degrade.scale
    assert batch["degraded"].shape[-1] * scale == batch["clean"].shape[-1] == 32
    assert batch["degraded"].dtype == torch.uint8 and batch["mask"].dtype == torch.uint8
    if degrade == "inpaint_brush":
        assert batch["mask"].float().mean() > 0.02  # holes were drawn
    assert run(cfg) is not None
