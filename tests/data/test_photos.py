"""The photos datamodule: embedded and folder sources, split by image into train/val/test, seeded patches,
degraded samples, and every loader drawing from its own split's photos (CPU and device-resident paths)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import make_data
from transferlab.data.degradations import Degrade, Downscale, GaussianNoise
from transferlab.data.photos import (
    EMBEDDED_PHOTOS,
    PhotoDataModule,
    content_key,
    embedded_image,
    load_image,
    load_photo,
    split_by_image,
)
from transferlab.utils.errors import UserError


def test_embedded_photos_split_by_image_and_give_uint8_patches(make_cfg) -> None:
    cfg = make_cfg("data=photos", "data.patch_size=32", "data.val_patches=4", tiny=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    names = datamodule.photo_names
    assert sorted(names["train"] + names["val"] + names["test"]) == sorted(EMBEDDED_PHOTOS)
    assert len(names["val"]) >= 2 and len(names["test"]) >= 2 and len(names["train"]) >= 6
    # Disjoint by content, not just by name: no image (e.g. an alias such as skimage's `cat` = `chelsea`)
    # may sit in two splits, and each split holds exactly the photos its names say.
    keys = {split: {content_key(embedded_image(name)) for name in names[split]} for split in names}
    assert sum(map(len, keys.values())) == len(EMBEDDED_PHOTOS)
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert {split: {content_key(p) for p in photos} for split, photos in datamodule.split_photos.items()} == keys
    batch = next(iter(datamodule.val_dataloader()))
    assert set(batch) == {"clean"} and batch["clean"].dtype == torch.uint8 and batch["clean"].shape == (4, 3, 32, 32)
    assert datamodule.task_args() == {}


def test_embedded_photos_all_load_offline_as_rgb() -> None:
    for name in EMBEDDED_PHOTOS:
        photo = load_image(name)
        assert photo.dtype == torch.uint8 and photo.shape[0] == 3 and min(photo.shape[1:]) >= 256, name


def test_split_is_seeded_disjoint_and_covers_every_photo() -> None:
    first = split_by_image(20, 0.2, 0.15, seed=3, source="x")
    assert first == split_by_image(20, 0.2, 0.15, seed=3, source="x")
    assert first != split_by_image(20, 0.2, 0.15, seed=4, source="x")
    assert [len(first[s]) for s in ("train", "val", "test")] == [13, 4, 3]
    assert sorted(first["train"] + first["val"] + first["test"]) == list(range(20))
    again = (
        make_data(PhotoDataModule, "photos", patch_size=16, split_seed=1),
        make_data(PhotoDataModule, "photos", patch_size=16, split_seed=1),
    )
    for datamodule in again:
        datamodule.setup()
    assert again[0].photo_names == again[1].photo_names
    default = make_data(PhotoDataModule, "photos", patch_size=16)
    default.setup()
    assert default.photo_names != again[0].photo_names  # the seed, not the photo order, picks the split


def test_validation_patches_are_fixed_and_training_patches_vary() -> None:
    first, second = (
        make_data(PhotoDataModule, "photos", patch_size=16),
        make_data(PhotoDataModule, "photos", patch_size=16),
    )
    first.setup(), second.setup()
    assert torch.equal(first._splits["val"][3]["clean"], second._splits["val"][3]["clean"])
    assert not torch.equal(first._splits["val"][3]["clean"], first._splits["test"][3]["clean"])
    torch.manual_seed(0)
    a, b = first._splits["train"][0]["clean"], first._splits["train"][0]["clean"]
    assert not torch.equal(a, b)


def test_degraded_samples_and_task_args() -> None:
    degrade = Degrade([Downscale(2), GaussianNoise(10)])
    datamodule = make_data(PhotoDataModule, "photos", patch_size=32, degrade=degrade, val_patches=2, batch_size=2)
    datamodule.setup()
    sample = datamodule._splits["val"][0]
    assert sample["degraded"].shape == (3, 16, 16) and sample["clean"].shape == (3, 32, 32)
    assert sample["mask"].shape == (1, 16, 16) and sample["degraded"].dtype == torch.uint8
    assert datamodule.task_args() == {"scale": 2, "mask_channel": False}
    assert torch.equal(datamodule._splits["val"][0]["degraded"], sample["degraded"])  # seeded per index
    with pytest.raises(UserError, match="not divisible by the x2 down-scaling"):
        make_data(PhotoDataModule, "photos", patch_size=33, degrade=degrade)


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
    datamodule = make_data(
        PhotoDataModule, "photos", root=str(tmp_path / "mine"), patch_size=24, val_fraction=0.34, val_patches=3
    )
    datamodule.setup()
    names = datamodule.photo_names
    assert sorted(names["train"] + names["val"] + names["test"]) == ["grey.jpg", "rgb.png", "sub/alpha.png"]
    assert [len(names[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    for split in ("train", "val", "test"):
        assert datamodule._splits[split][0]["clean"].shape == (3, 24, 24)
    alpha = load_photo(tmp_path / "mine" / "sub" / "alpha.png")
    assert alpha.shape == (3, 30, 30)
    assert alpha[:, 0, 0].tolist() == [255, 0, 0] and alpha[:, -1, 0].tolist() == [255, 255, 255]  # on white
    grey = load_photo(tmp_path / "mine" / "grey.jpg")
    assert grey.shape == (3, 20, 30) and torch.equal(grey[0], grey[1])


def test_bad_sources_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        make_data(PhotoDataModule, "photos", root=str(tmp_path / "nope")).setup()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_photo(tmp_path / "broken.png")
    with pytest.raises(UserError, match="neither an embedded image"):
        load_image("no_such_style.jpg")
    assert load_image("brick").shape == (3, 512, 512)


def test_too_few_photos_for_three_splits_is_a_one_line_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for index in range(2):
        write_coloured(folder / f"{index}.png", 10 + 50 * index)
    with pytest.raises(UserError, match="has 2 distinct photo.*too few .*Add photos") as err:
        make_data(PhotoDataModule, "photos", root=str(folder)).setup()
    assert "\n" not in str(err.value)
    write_coloured(folder / "2.png", 200)  # three photos are enough at the default fractions...
    make_data(PhotoDataModule, "photos", root=str(folder)).setup()
    with pytest.raises(UserError, match="or lower the fractions"):  # ...but not when they leave none for training
        make_data(PhotoDataModule, "photos", root=str(folder), val_fraction=0.5, test_fraction=0.4).setup()
    with pytest.raises(UserError, match=r"data.test_fraction must be in \(0, 1\), got 0"):
        make_data(PhotoDataModule, "photos", root=str(folder), test_fraction=0).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no image files"):
        make_data(PhotoDataModule, "photos", root=str(tmp_path / "empty")).setup()


def write_coloured(path: Path, value: int, size: tuple[int, int] = (20, 26)) -> None:
    """A photo of one uniform grey `value`: every patch of it says which photo it came from."""
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def coloured_folder(tmp_path: Path) -> Path:
    """Seven uniform photos of different sizes, plus an exact copy of one under another name."""
    folder = tmp_path / "coloured"
    folder.mkdir()
    for index in range(7):
        write_coloured(folder / f"photo{index}.png", 10 + 30 * index, (20 + index, 26 + 2 * index))
    shutil.copy(folder / "photo3.png", folder / "zcopy_of_3.png")
    return folder


def values_seen(batches) -> set[int]:
    """The photo values behind every clean patch (each patch must be uniform: a crop of one photo)."""
    seen = set()
    for batch in batches:
        for patch in batch["clean"]:
            assert bool((patch == patch.flatten()[0]).all()), "a patch mixes photos"
            seen.add(int(patch.flatten()[0]))
    return seen


@pytest.mark.parametrize("on_gpu", [False, True], ids=["dataloader", "device_resident"])
def test_each_loader_draws_only_from_its_own_photos(coloured_folder: Path, on_gpu: bool) -> None:
    datamodule = make_data(
        PhotoDataModule,
        "photos",
        root=str(coloured_folder),
        patch_size=8,
        train_patches=64,
        val_patches=24,
        val_fraction=0.2,
        test_fraction=0.3,
        degrade=Degrade([GaussianNoise(10)]),
        batch_size=8,
        on_gpu=on_gpu,
    )
    with pytest.warns(UserWarning, match=r"1 duplicate photo.*zcopy_of_3.png \(= photo3.png\)"):
        datamodule.setup()
    names = datamodule.photo_names
    assert sorted(names["train"] + names["val"] + names["test"]) == [f"photo{i}.png" for i in range(7)]
    assert [len(names[s]) for s in ("train", "val", "test")] == [4, 1, 2]
    value = {f"photo{i}.png": 10 + 30 * i for i in range(7)}
    loaders = {"train": datamodule.train_dataloader(), "val": datamodule.val_dataloader()}
    loaders["test"] = datamodule.test_dataloader()
    if on_gpu:
        assert type(loaders["test"]).__name__ == "FixedBatchLoader"
    for split, loader in loaders.items():
        # Every photo of the split shows up (24+ patches over <= 4 photos), and nothing from another split.
        assert values_seen(loader) == {value[name] for name in names[split]}, split
