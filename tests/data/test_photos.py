"""The photos datamodule: embedded and folder sources, split by image, seeded patches, degraded samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from transferlab.data.degradations import Degrade, Downscale, GaussianNoise
from transferlab.data.photos import EMBEDDED_PHOTOS, PhotoDataModule, load_image, load_photo
from transferlab.utils.errors import UserError


def test_embedded_photos_split_by_image_and_give_uint8_patches(make_cfg) -> None:
    cfg = make_cfg("data=photos", "data.patch_size=32", "data.val_patches=4", tiny=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    train, val = datamodule.photo_names["train"], datamodule.photo_names["val"]
    assert sorted(train + val) == sorted(EMBEDDED_PHOTOS) and not set(train) & set(val) and len(val) >= 2
    batch = next(iter(datamodule.val_dataloader()))
    assert set(batch) == {"clean"} and batch["clean"].dtype == torch.uint8 and batch["clean"].shape == (4, 3, 32, 32)
    assert datamodule.task_args() == {}


def test_validation_patches_are_fixed_and_training_patches_vary() -> None:
    first, second = PhotoDataModule(patch_size=16), PhotoDataModule(patch_size=16)
    first.setup(), second.setup()
    assert torch.equal(first._splits["val"][3]["clean"], second._splits["val"][3]["clean"])
    assert not torch.equal(first._splits["val"][3]["clean"], first._splits["test"][3]["clean"])
    torch.manual_seed(0)
    a, b = first._splits["train"][0]["clean"], first._splits["train"][0]["clean"]
    assert not torch.equal(a, b)


def test_degraded_samples_and_task_args() -> None:
    degrade = Degrade([Downscale(2), GaussianNoise(10)])
    datamodule = PhotoDataModule(patch_size=32, degrade=degrade, val_patches=2, batch_size=2)
    datamodule.setup()
    sample = datamodule._splits["val"][0]
    assert sample["degraded"].shape == (3, 16, 16) and sample["clean"].shape == (3, 32, 32)
    assert sample["mask"].shape == (1, 16, 16) and sample["degraded"].dtype == torch.uint8
    assert datamodule.task_args() == {"scale": 2, "mask_channel": False}
    assert torch.equal(datamodule._splits["val"][0]["degraded"], sample["degraded"])  # seeded per index
    with pytest.raises(UserError, match="not divisible by the x2 down-scaling"):
        PhotoDataModule(patch_size=33, degrade=degrade)


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(folder / "grey.jpg")  # smaller than a patch
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:15, :, 3] = 255, 255  # top half opaque red, bottom half transparent
    (folder / "sub").mkdir()
    Image.fromarray(rgba, mode="RGBA").save(folder / "sub" / "alpha.png")


def test_folder_source_handles_any_size_and_mode(tmp_path: Path) -> None:
    write_images(tmp_path / "mine")
    datamodule = PhotoDataModule(root=str(tmp_path / "mine"), patch_size=24, val_fraction=0.34, val_patches=3)
    datamodule.setup()
    assert sorted(datamodule.photo_names["train"] + datamodule.photo_names["val"]) == [
        "grey.jpg",
        "rgb.png",
        "sub/alpha.png",
    ]
    for split in ("train", "val"):
        assert datamodule._splits[split][0]["clean"].shape == (3, 24, 24)
    alpha = load_photo(tmp_path / "mine" / "sub" / "alpha.png")
    assert alpha.shape == (3, 30, 30)
    assert alpha[:, 0, 0].tolist() == [255, 0, 0] and alpha[:, -1, 0].tolist() == [255, 255, 255]  # on white
    grey = load_photo(tmp_path / "mine" / "grey.jpg")
    assert grey.shape == (3, 20, 30) and torch.equal(grey[0], grey[1])


def test_bad_sources_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        PhotoDataModule(root=str(tmp_path / "nope")).setup()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_photo(tmp_path / "broken.png")
    with pytest.raises(UserError, match="neither an embedded image"):
        load_image("no_such_style.jpg")
    assert load_image("brick").shape == (3, 512, 512)
