"""Datamodules on data written in the real on-disk formats: CIFAR pickle batches, ImageFolder images."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision.transforms import v2

from conftest import make_data
from transferlab.data.base import few_shot, split_train_val
from transferlab.data.cifar import CIFARDataModule
from transferlab.data.imagefolder import ImageFolderDataModule
from transferlab.data.shapes import CLASSES, ShapesDataModule, export_imagefolder, generate
from transferlab.utils.errors import UserError, find_user_error


def write_cifar(root: Path, variant: int = 10, per_batch: int = 20) -> np.ndarray:
    """Write CIFAR python batches exactly as the official archive lays them out; returns the test images."""
    rng = np.random.default_rng(0)
    if variant == 10:
        folder, label_key, names_key, meta_name = root / "cifar-10-batches-py", "labels", "label_names", "batches.meta"
        batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    else:
        folder, label_key, names_key, meta_name = root / "cifar-100-python", "fine_labels", "fine_label_names", "meta"
        batches = ["train", "test"]
        classes = [f"class{i:03d}" for i in range(100)]
    folder.mkdir(parents=True)
    for name in batches:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B
        labels = (np.arange(per_batch) % len(classes)).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, label_key: labels, "data": data, "filenames": []}, f, protocol=2)
        if name in ("test_batch", "test"):
            test_data = data
    with open(folder / meta_name, "wb") as f:
        pickle.dump({names_key: classes}, f, protocol=2)
    return test_data


@pytest.mark.parametrize("variant", [10, 100])
def test_cifar_reads_official_pickle_batches(tmp_path: Path, variant: int) -> None:
    test_data = write_cifar(tmp_path, variant, per_batch=200 if variant == 100 else 20)
    dm = make_data(CIFARDataModule, "cifar10", root=str(tmp_path), variant=variant, batch_size=4, val_fraction=0.2)
    args = dm.task_args()
    assert args["num_classes"] == variant and len(args["class_names"]) == variant
    train_batches = 5 if variant == 10 else 1
    per_batch = 200 if variant == 100 else 20
    assert len(dm._splits["train"]) + len(dm._splits["val"]) == train_batches * per_batch
    assert len(dm._splits["test"]) == per_batch  # the official test batch, untouched
    image, label = dm._splits["test"][3]
    expected = torch.from_numpy(test_data[3].reshape(3, 32, 32))  # channel planes → (C, H, W)
    assert image.dtype == torch.uint8 and torch.equal(image, expected) and label == 3 % variant


def test_cifar_resizes_once_to_image_size(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    dm = make_data(CIFARDataModule, "cifar10", root=str(tmp_path), image_size=48, batch_size=4, augment=None)
    dm.setup("fit")
    assert dm._splits["test"][0][0].shape == (3, 48, 48)


def test_missing_cifar_says_where_to_put_it(tmp_path: Path) -> None:
    dm = make_data(CIFARDataModule, "cifar10", root=str(tmp_path / "nowhere"))
    with pytest.raises(
        UserError, match=r"expected the python batches in .*cifar-10-batches-py.*cifar-10-python.tar.gz"
    ):
        dm.setup("fit")


def write_imagefolder(root: Path) -> None:
    """JPEGs in RGB plus the odd cases real folders contain: greyscale, RGBA PNG, palette, CMYK."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    odd = root / "train" / "cat"
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), mode="L").save(odd / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), mode="RGBA").save(odd / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).convert("P").save(odd / "palette.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).convert("CMYK").save(odd / "cmyk.jpg")


def folder_data(root: Path, **settings: object) -> ImageFolderDataModule:
    """An image-folder datamodule over `root` with the preset's settings and `settings`."""
    return make_data(ImageFolderDataModule, "imagefolder", root=str(root), **settings)


def test_imagefolder_reads_jpegs_of_any_mode(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    augment = v2.Compose([v2.RandomResizedCrop(24), v2.RandomHorizontalFlip()])
    dm = folder_data(tmp_path, image_size=24, batch_size=4, val_fraction=0.25, augment=augment)
    assert dm.task_args() == {"num_classes": 2, "class_names": ["cat", "dog"]}
    for split in ("train", "val", "test"):
        for i in range(len(dm._splits[split])):
            image, _ = dm._splits[split][i]
            assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    assert len(dm._splits["test"]) == 4  # val/ is the held-out split


def test_imagefolder_preset_without_resize_still_batches(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    dm = folder_data(tmp_path, image_size=16, batch_size=4, augment=v2.RandomHorizontalFlip())
    dm.setup("fit")
    assert {dm._splits["train"][i][0].shape for i in range(len(dm._splits["train"]))} == {(3, 16, 16)}


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_corrupt_image_is_skipped_or_names_the_file(tmp_path: Path, policy: str, capsys) -> None:
    write_imagefolder(tmp_path)
    bad = tmp_path / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    dm = folder_data(tmp_path, image_size=16, batch_size=4, val_fraction=0.1, on_bad_file=policy)
    dm.setup("fit")
    dataset = dm._splits["train"].dataset.dataset
    index = [Path(p).name for p, _ in dataset.samples].index("broken.jpg")
    if policy == "error":
        with pytest.raises(UserError, match=r"cannot read image .*broken.jpg.*Remove or replace.*on_bad_file=skip"):
            dataset[index]
        return
    assert dataset[index] == (None, dataset.targets[index])
    assert dataset[index][0] is None  # seen twice, warned once
    warnings = [line for line in capsys.readouterr().err.splitlines() if "broken.jpg" in line]
    assert warnings == [f"warning: skipped unreadable image {bad} (cannot identify image file '{bad}')"]
    assert [entry["path"] for entry in dm.skipped_files()] == [str(bad)]


def test_imagefolder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"image folder .*train does not exist"):
        folder_data(tmp_path, image_size=16).setup("fit")
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match="no images in"):
        folder_data(tmp_path, image_size=16).setup("fit")


def test_shapes_is_seeded_balanced_and_sized() -> None:
    a, la = generate(50, 24, seed=3)
    b, lb = generate(50, 24, seed=3)
    c, _ = generate(50, 24, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert a.shape == (50, 3, 24, 24) and a.dtype == torch.uint8
    assert torch.bincount(la, minlength=10).tolist() == [5] * 10


def test_shapes_train_and_test_never_share_images() -> None:
    dm = make_data(ShapesDataModule, "shapes", train_size=40, test_size=20, batch_size=4, augment=None)
    dm.setup("fit")
    train = dm._splits["train"].dataset.dataset.images.flatten(1)
    test = dm._splits["test"].dataset.images.flatten(1)
    assert not (train[:, None] == test[None]).all(-1).any()


def test_shapes_export_is_a_working_imagefolder(tmp_path: Path) -> None:
    export_imagefolder(tmp_path, image_size=32, train_per_class=3, val_per_class=1)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(CLASSES)
    dm = folder_data(tmp_path, image_size=32, batch_size=4, val_fraction=0.2)
    assert dm.task_args()["class_names"] == sorted(CLASSES)
    assert len(dm._splits["test"]) == 10


def test_validation_split_is_seeded_and_disjoint() -> None:
    train, val = split_train_val(100, 0.2, seed=7)
    assert (train, val) == split_train_val(100, 0.2, seed=7)
    assert len(val) == 20 and not set(train) & set(val) and len(set(train) | set(val)) == 100
    assert val != split_train_val(100, 0.2, seed=8)[1]
    with pytest.raises(UserError, match="val_fraction"):
        split_train_val(100, 1.5, seed=0)


def test_few_shot_keeps_k_per_class_same_for_same_seed() -> None:
    targets = torch.arange(100) % 5
    indices = list(range(100))
    subset = few_shot(indices, targets, per_class=3, seed=1)
    assert torch.bincount(targets[subset]).tolist() == [3] * 5
    assert subset == few_shot(indices, targets, per_class=3, seed=1)
    with pytest.raises(UserError, match="fewer than data.examples_per_class=30"):
        few_shot(indices, targets, per_class=30, seed=1)


def test_global_batch_is_split_per_device() -> None:
    dm = make_data(ShapesDataModule, "shapes", train_size=40, test_size=20, batch_size=8)
    dm.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    assert dm.per_device_batch_size() == 8

    class ThreeDevices:
        world_size = 3

    dm.trainer = ThreeDevices()  # type: ignore[assignment]
    with pytest.raises(UserError, match="must divide evenly across 3 devices"):
        dm.per_device_batch_size()
    dm.batch_size = 9
    assert dm.per_device_batch_size() == 3


def test_cifar_download_offline_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import urllib.error

    import transferlab.data.cifar as cifar_module

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", no_network)
    dm = make_data(CIFARDataModule, "cifar10", root=str(tmp_path), download=True)
    with pytest.raises(UserError, match=r"could not download cifar-10-python.tar.gz.*set data.download=false"):
        dm.prepare_data()


def test_shapes_export_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "transferlab.data.shapes",
            str(tmp_path / "out"),
            "--image-size",
            "16",
            "--train-per-class",
            "2",
            "--val-per-class",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "train").rglob("*.png"))) == 20
    assert len(list((tmp_path / "out" / "val").rglob("*.png"))) == 10


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda canary: _Touch(canary), "refusing to load io.open"),
        (lambda canary: {"labels": [0], "wrong": 1}, "no 'data' entry"),
        (lambda canary: {"labels": [0], "data": np.zeros((1, 10), np.uint8)}, "uint8 rows of 3072"),
        (lambda canary: [1, 2], "not a dict"),
    ],
)
def test_cifar_batch_is_read_as_data_only(tmp_path: Path, payload, message: str) -> None:
    """A CIFAR batch is a pickle: a crafted one must not run code, a malformed one says which file is wrong."""
    write_cifar(tmp_path)
    canary = tmp_path / "canary"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump(payload(canary), f, protocol=2)
    dm = make_data(CIFARDataModule, "cifar10", root=str(tmp_path), batch_size=4)
    with pytest.raises(UserError, match=message) as raised:
        dm.setup("fit")
    assert "data_batch_3" in str(raised.value) and not canary.exists()


def test_imagefolder_cache_holds_the_folder_pre_resized(tmp_path: Path) -> None:
    """The cache is every image of train/ and val/, short side resized and centre-cropped, in folder order."""
    from transferlab.data.imagefolder import read_cache, square_image, write_cache

    write_imagefolder(tmp_path)
    path = write_cache(tmp_path, size=20)
    assert path == tmp_path / "cache-20px.pt" and not list(tmp_path.glob(".*.tmp"))
    cache = read_cache(tmp_path, 20)
    train = cache["splits"]["train"]
    assert cache["classes"] == ["cat", "dog"] and train["images"].shape == (len(train["files"]), 3, 20, 20)
    for i in (0, len(train["files"]) - 1):
        assert torch.equal(train["images"][i], square_image(str(tmp_path / train["files"][i]), 20))
    assert train["targets"].tolist() == sorted(train["targets"].tolist())  # class folders in order


def tiny_folder_run(root: Path) -> list[str]:
    """Overrides of a one-epoch CPU run on the image folder at `root`, 24 px."""
    return [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=24",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.backbone.name=mobilenet_v3_small",
        "model.backbone.weights=null",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
    ]


def test_imagefolder_trains_from_the_cache_on_the_device_path(tmp_path: Path, make_cfg) -> None:
    from transferlab.data.imagefolder import write_cache
    from transferlab.train import run

    write_imagefolder(tmp_path / "folder")
    write_cache(tmp_path / "folder", size=28)
    # the GPU-resident path (here on the CPU device) with RandomResizedCrop on the device
    cfg = make_cfg(*tiny_folder_run(tmp_path / "folder"), "data.cache=28", "data.on_gpu=true", tiny=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert datamodule._sources["test"][0].images.shape[-1] == 24  # evaluation images fitted once
    assert datamodule._sources["train"][0].images.shape[-1] == 28  # RandomResizedCrop crops the cache
    assert run(cfg) is not None


def test_imagefolder_cache_errors_are_one_line(tmp_path: Path) -> None:
    from transferlab.data.imagefolder import cache_path, write_cache

    write_imagefolder(tmp_path)
    dm = folder_data(tmp_path, image_size=16, cache=32)
    with pytest.raises(UserError, match=r"no 32 px cache at .*python -m transferlab.data.imagefolder .* --size 32"):
        dm.setup("fit")
    torch.save({"format": "something else"}, cache_path(tmp_path, 32))
    with pytest.raises(UserError, match="is not a transferlab 32 px image-folder cache"):
        folder_data(tmp_path, image_size=16, cache=32).setup("fit")
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    cache_path(tmp_path, 32).unlink()
    with pytest.raises(UserError, match="broken.jpg"):
        write_cache(tmp_path, 32)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*.tmp"))  # nothing half-written


def test_imagefolder_decodes_jpeg_batches_on_the_device(tmp_path: Path, make_cfg) -> None:
    """data.decode=device: workers read bytes, the training device decodes each batch and crops it there."""
    from transferlab.train import run

    write_imagefolder(tmp_path / "folder")
    overrides = tiny_folder_run(tmp_path / "folder")
    cfg = make_cfg(*overrides, "data.decode=device", tiny=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    encoded, targets = next(iter(datamodule.train_dataloader()))
    assert isinstance(encoded, list) and all(e.dtype == torch.uint8 and e.dim() == 1 for e in encoded)
    datamodule.trainer = type("T", (), {"training": True})()
    images, _ = datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device((encoded, targets), "cpu", 0), 0)
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8
    assert run(cfg) is not None
    with pytest.raises(UserError, match="data.decode=device supports the imagenet augment preset"):
        bad = instantiate(make_cfg(*overrides, "data.decode=device", "data/augment=cifar", tiny=False, out="b").data)
        bad.setup("fit")
        bad.train_dataloader()


def write_sized_folder(root: Path, sides: list[int]) -> Path:
    """Two classes of grey PNGs whose short sides are `sides` (long side 1.5×)."""
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, side in enumerate(sides):
                Image.new("L", (side * 3 // 2, side), color=i * 10).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("sides", "expected"),
    [([8, 8, 8], 96), ([25, 26, 25], 96), ([120, 130, 140], 128), ([150, 170, 900], 160), ([500, 375, 480], 224)],
)
def test_auto_image_size_follows_the_images(tmp_path: Path, sides: list[int], expected: int) -> None:
    """Median short side, to a multiple of 32, tiny images upscaled to 96 and photos brought down to 224."""
    from transferlab.data.imagefolder import auto_image_size

    assert auto_image_size(str(write_sized_folder(tmp_path, sides))) == expected


def test_imagefolder_config_resolves_its_size_from_the_folder(tmp_path: Path, make_cfg) -> None:
    root = write_sized_folder(tmp_path / "folder", [130, 130, 130])
    cfg = make_cfg("data=imagefolder", f"data.root={root}", tiny=False)
    assert cfg.data.image_size == 128
    assert cfg.data.augment.transforms[0].size == 128  # the augmentation crops to the same size
    assert [t._target_.rsplit(".", 1)[1] for t in cfg.data.augment.transforms] == ["RandomResizedCrop"]  # no flip
    with pytest.raises(Exception) as err:  # a missing root is the one-line data error, also when resolving
        _ = make_cfg("data=imagefolder", f"data.root={tmp_path / 'nope'}", tiny=False).data.image_size
    assert find_user_error(err.value) is not None and "does not exist" in str(find_user_error(err.value))


# -- DDP without loader workers: each rank augments with its own random stream -------------------------------
class RandomSample(torch.utils.data.Dataset):
    """Each item is a fresh draw from torch's global RNG, as a random transform's parameters are."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(4)


def test_rank_seeded_samples_differ_across_ranks_repeat_for_a_seed_and_leave_the_global_rng() -> None:
    from transferlab.data.base import RankSeededSamples

    epoch = [0]

    def sample(rank: int, seed: int = 0, index: int = 3) -> torch.Tensor:
        return RankSeededSamples(RandomSample(), seed, rank, lambda: epoch[0])[index]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = sample(0)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG (which draws the shuffle) was moved"
    assert torch.equal(sample(0), first)  # a seeded run repeats
    assert not torch.equal(sample(1), first)  # another rank draws its own
    assert not torch.equal(sample(0, seed=1), first) and not torch.equal(sample(0, index=4), first)
    epoch[0] = 1
    assert not torch.equal(sample(0), first)  # and each epoch anew


def test_ddp_ranks_without_workers_augment_differently_but_shuffle_alike() -> None:
    """The CPU DataLoader path under 2-rank DDP with ``num_workers=0``: rank 0 and rank 1 see the same image index
    augmented differently, while the shuffle both draw (and Lightning shards) is the same permutation."""
    from types import SimpleNamespace

    def rank_loader(rank: int) -> torch.utils.data.DataLoader:
        flip_crop = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip()])
        datamodule = make_data(
            ShapesDataModule, "shapes", train_size=40, batch_size=4, on_gpu=False, num_workers=0, augment=flip_crop
        )
        datamodule.trainer = SimpleNamespace(
            world_size=2, global_rank=rank, current_epoch=0, strategy=SimpleNamespace(root_device=torch.device("cpu"))
        )
        datamodule.setup("fit")
        return datamodule.train_dataloader()

    loaders = [rank_loader(rank) for rank in (0, 1)]
    for index in range(4):  # (a crop and flip can coincide by chance for one image: 1 in 162)
        images = [loader.dataset[index][0] for loader in loaders]
        assert torch.equal(loaders[0].dataset[index][0], images[0])  # reproducible on a rank
    differing = sum(not torch.equal(*(loader.dataset[index][0] for loader in loaders)) for index in range(4))
    assert differing >= 3, "both ranks drew the same crops and flips"
    orders = []
    for loader in loaders:
        torch.manual_seed(0)  # seed_everything seeds every rank alike
        orders.append(list(loader.sampler))
    assert orders[0] == orders[1]
