"""`photos`: clean photographs for restoration and style transfer — embedded (offline) or a user's folder.

The embedded set is the photographs the installed dependencies ship offline: scikit-image's (astronaut,
coffee, chelsea, rocket, the left view of its stereo motorcycle, …; grey ones repeated to RGB) and
matplotlib's ``grace_hopper``; scikit-image's textures (brick, grass, gravel) serve as style images.

The photos are split *by image* into train, validation and test (`val_fraction`, `test_fraction` of the
photos, seeded by `split_seed`), so the test score is measured on photos that neither training nor model
selection ever saw. Exact duplicates (same decoded pixels under two names) are kept once, so a copied file
cannot land in two splits; near-duplicates (a re-encoded or resized copy) are not detected. Training samples
are random patches (crop + flip) of the training photos; validation and test patches are fixed, seeded crops
of their own photos. With a `degrade` pipeline each sample is (degraded, clean, mask) for restoration,
degraded on the fly; without it, just the clean patch (content images for style transfer). Images leave as
uint8 tensors (C, H, W).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from transferlab.constants import IMAGE_EXTENSIONS
from transferlab.data.base import BatchedDataModule
from transferlab.data.degradations import Degrade
from transferlab.data.device_degrade import DeviceDegrade
from transferlab.data.device_patches import DevicePatchLoader, FixedBatchLoader, PhotoBank
from transferlab.data.images import BadFiles, UnreadableImage, decode_rgb, image_files
from transferlab.utils.errors import UserError

EMBEDDED_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "clock",
    "motorcycle",  # scikit-image's stereo_motorcycle, left view only (the right one shows the same scene)
    "grace_hopper",  # matplotlib's sample photograph
)
EMBEDDED_TEXTURES = ("brick", "grass", "gravel")
SPLITS = ("train", "val", "test")


def embedded_image(name: str) -> torch.Tensor:
    """An embedded sample image as uint8 RGB (3, H, W); all ship with installed packages (no download)."""
    if name == "grace_hopper":
        import matplotlib.cbook

        return load_photo(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    import skimage.data

    array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    pixels = torch.from_numpy(array.copy())
    if pixels.ndim == 2:
        pixels = pixels[..., None].expand(-1, -1, 3)
    return pixels[..., :3].permute(2, 0, 1).contiguous()


def load_photo(path: str | Path) -> torch.Tensor:
    """Decode any image file to uint8 RGB (3, H, W), as every transferlab reader does (`images.decode_rgb`)."""
    return decode_rgb(path)


def load_image(source: str) -> torch.Tensor:
    """An embedded image by name (``astronaut``, ``brick``, …) or an image file path, as uint8 RGB."""
    if source in EMBEDDED_PHOTOS + EMBEDDED_TEXTURES:
        return embedded_image(source)
    path = Path(source).expanduser()
    if not path.is_file():
        names = ", ".join(EMBEDDED_TEXTURES + EMBEDDED_PHOTOS[:3])
        raise UserError(
            f"image '{source}' is neither an embedded image ({names}, …) nor an existing file. Check the path"
        )
    return load_photo(path)


def photo_files(root: Path) -> list[Path]:
    """All image files under `root` (recursively), in a stable order; at least one."""
    if not root.is_dir():
        raise UserError(f"photo folder {root} does not exist. Point data.root at a folder of images")
    files = image_files(root)
    if not files:
        raise UserError(f"{root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}). Point data.root at photos")
    return files


def split_by_image(
    count: int, val_fraction: float, test_fraction: float, seed: int, source: str
) -> dict[str, list[int]]:
    """Seeded, disjoint train/val/test indices of `count` photos (each split non-empty); same seed, same split.

    Validation takes the first ``round(count * val_fraction)`` photos of a seeded permutation, test the next
    ``round(count * test_fraction)`` (at least one each), training the rest.
    """
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise UserError(f"data.{key} must be in (0, 1), got {value}")
    num_val, num_test = max(1, round(count * val_fraction)), max(1, round(count * test_fraction))
    if count - num_val - num_test < 1:
        raise UserError(
            f"{source} has {count} distinct photo(s), too few for non-empty train, validation and test photos "
            f"at data.val_fraction={val_fraction}, data.test_fraction={test_fraction}. "
            f"Add photos (at least {num_val + num_test + 1}){' or lower the fractions' if count >= 3 else ''}"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    val, test = order[:num_val], order[num_val : num_val + num_test]
    return {"train": sorted(order[num_val + num_test :]), "val": sorted(val), "test": sorted(test)}


def content_key(photo: torch.Tensor) -> str:
    """A digest of the decoded pixels: two files with the same image get the same key."""
    return hashlib.sha1(str(tuple(photo.shape)).encode() + photo.contiguous().numpy().tobytes()).hexdigest()


def unique_photos(names: list[str], photos: list[torch.Tensor]) -> tuple[list[str], list[torch.Tensor]]:
    """Drop exact duplicates (first name kept), so one image can never be in two splits."""
    kept: dict[str, int] = {}
    dropped: list[str] = []
    for index, photo in enumerate(photos):
        key = content_key(photo)
        if key in kept:
            dropped.append(f"{names[index]} (= {names[kept[key]]})")
        else:
            kept[key] = index
    if dropped:
        rank_zero_warn(f"ignoring {len(dropped)} duplicate photo(s): {', '.join(dropped)}")
    return [names[i] for i in kept.values()], [photos[i] for i in kept.values()]


def at_least(image: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale (bicubic) so the short side is at least `size`; large photos stay untouched."""
    short = min(image.shape[-2:])
    if short >= size:
        return image
    return TF.resize(image, [size], antialias=True)


def random_patch(image: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random `size`² crop of `image`, flipped horizontally half of the time."""
    h, w = image.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (), generator=generator))
    left = int(torch.randint(0, w - size + 1, (), generator=generator))
    patch = image[:, top : top + size, left : left + size]
    return patch.flip(-1) if torch.rand((), generator=generator) < 0.5 else patch


class PatchDataset(Dataset):
    """Patches of `photos`: random ones every access (``seed=None``), or fixed seeded ones (validation)."""

    def __init__(
        self, photos: list[torch.Tensor], patch_size: int, length: int, degrade: Degrade | None, seed: int | None
    ) -> None:
        self.photos = [at_least(p, patch_size) for p in photos]
        self.patch_size, self.length, self.degrade, self.seed = patch_size, length, degrade, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # Fixed samples get their own generator; random ones use torch's global RNG (seeded per worker).
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed * 100_003 + index)
        photo = self.photos[int(torch.randint(0, len(self.photos), (), generator=generator))]
        clean = random_patch(photo, self.patch_size, generator)
        if self.degrade is None:
            return {"clean": clean}
        degraded, mask = self.degrade(clean, generator)
        return {"degraded": degraded, "clean": clean, "mask": mask}


class PhotoDataModule(BatchedDataModule):
    """Patches of photographs, split by photo: the embedded photos (``root: null``) or a folder of your own."""

    def __init__(
        self,
        patch_size: int,
        train_patches: int,
        val_patches: int,
        val_fraction: float,
        test_fraction: float,
        batch_size: int,
        root: str | None = None,
        split_seed: int = 0,
        degrade: Degrade | None = None,
        num_workers: int | None = 0,
        on_gpu: bool | None = None,
        on_bad_file: str = "skip",
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.bad_files = BadFiles(on_bad_file)
        self.on_gpu = on_gpu
        if patch_size < 8:
            raise UserError(f"data.patch_size must be at least 8, got {patch_size}")
        if train_patches < 1 or val_patches < 1:
            raise UserError("data.train_patches and data.val_patches must be positive")
        if degrade is not None and patch_size % degrade.scale:
            raise UserError(
                f"data.patch_size={patch_size} is not divisible by the x{degrade.scale} down-scaling. "
                f"Use a multiple of {degrade.scale}"
            )
        self.root = Path(root).expanduser() if root else None
        self.patch_size, self.train_patches, self.val_patches = patch_size, train_patches, val_patches
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.degrade = degrade
        self.photo_names: dict[str, list[str]] = {}  # per split, in index order
        self.split_photos: dict[str, list[torch.Tensor]] = {}  # the photos themselves, as decoded
        self._train_photos: list[torch.Tensor] = []
        self._on_device: dict[str, Any] = {}

    def task_args(self) -> dict[str, Any]:
        """Restoration models learn the up-scale factor and mask channel from the degradations."""
        return self.degrade.task_args() if self.degrade is not None else {}

    def _photos(self) -> tuple[list[str], list[torch.Tensor]]:
        if self.root is None:
            return list(EMBEDDED_PHOTOS), [embedded_image(name) for name in EMBEDDED_PHOTOS]
        names, photos = [], []
        for file in photo_files(self.root):
            try:
                photos.append(load_photo(file))
            except UnreadableImage as err:
                self.bad_files.handle(err)
                continue
            names.append(str(file.relative_to(self.root)))
        return names, photos

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        names, photos = unique_photos(*self._photos())
        source = str(self.root) if self.root is not None else "the embedded photo set"
        indices = split_by_image(len(photos), self.val_fraction, self.test_fraction, self.split_seed, source)
        self.photo_names = {split: [names[i] for i in indices[split]] for split in SPLITS}
        self.split_photos = {split: [photos[i] for i in indices[split]] for split in SPLITS}
        train, val, test = (self.split_photos[split] for split in SPLITS)
        self._train_photos = [at_least(p, self.patch_size) for p in train]
        self._splits = {
            "train": PatchDataset(train, self.patch_size, self.train_patches, self.degrade, seed=None),
            "val": PatchDataset(val, self.patch_size, self.val_patches, self.degrade, seed=self.split_seed),
            "test": PatchDataset(test, self.patch_size, self.val_patches, self.degrade, seed=self.split_seed + 1),
        }

    # -- the device path -----------------------------------------------------------------------------
    def device_resident(self) -> bool:
        """Patches made on the training device (`on_gpu`; auto: when training on a GPU and the photos take a
        small share of its free memory: `device_memory.keep_on_device`)."""
        device = self.training_device()
        if self.on_gpu is False or (self.on_gpu is None and device.type != "cuda"):
            return False
        what = "the photos (training photos, validation and test patches)"
        return self.fits_on_device(device, what, self.device_bytes, bool(self.on_gpu))

    def device_bytes(self) -> int:
        """What the device path uploads: the training photos as decoded (upscaled where smaller than a patch) and
        the fixed validation and test samples, sized from their first sample (each is the same size)."""
        total = sum(photo.numel() * photo.element_size() for photo in self._train_photos)
        for split in ("val", "test"):
            dataset = self._splits[split]
            total += len(dataset) * sum(t.numel() * t.element_size() for t in dataset[0].values())
        return total

    def _loader(self, split: str, shuffle: bool) -> Any:
        if not self.device_resident():
            return super()._loader(split, shuffle)
        device = self.training_device()
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        batch_size = self.per_device_batch_size()
        if split == "train":
            if "train" not in self._on_device:  # uploaded once, kept for the run
                degrade = DeviceDegrade.from_degrade(self.degrade) if self.degrade is not None else None
                self._on_device["train"] = (PhotoBank(self._train_photos, device), degrade)
            bank, degrade = self._on_device["train"]
            seed = int(os.environ.get("PL_GLOBAL_SEED", self.split_seed))
            return DevicePatchLoader(bank, self.patch_size, self.train_patches, batch_size, degrade, seed, rank, world)
        if split not in self._on_device:  # the fixed, seeded patches of the CPU path, made once
            dataset = self._splits[split]
            samples = [dataset[i] for i in range(len(dataset))]
            self._on_device[split] = {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}
        return FixedBatchLoader(self._on_device[split], batch_size, rank, world)
