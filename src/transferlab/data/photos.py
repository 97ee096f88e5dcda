"""`photos`: clean photographs for restoration and style transfer — embedded (offline) or a user's folder.

The embedded set is the real photographs scikit-image ships (astronaut, coffee, chelsea, rocket, …; grey
ones repeated to RGB), its textures (brick, grass, gravel) serve as style images. Training samples are
random patches (crop + flip) of the training photos; validation/test patches are fixed, seeded crops of
*other* photos (the split is by image, so no photo contributes to both). With a `degrade` pipeline each
sample is (degraded, clean, mask) for restoration, degraded on the fly; without it, just the clean patch
(content images for style transfer). Images leave as uint8 tensors (C, H, W).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from transferlab.data.base import BatchedDataModule, split_train_val
from transferlab.data.degradations import Degrade
from transferlab.data.device_degrade import DeviceDegrade
from transferlab.data.device_patches import DevicePatchLoader, FixedBatchLoader, PhotoBank
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
)
EMBEDDED_TEXTURES = ("brick", "grass", "gravel")


def embedded_image(name: str) -> torch.Tensor:
    """A scikit-image sample image as uint8 RGB (3, H, W)."""
    import skimage.data

    pixels = torch.from_numpy(getattr(skimage.data, name)().copy())
    if pixels.ndim == 2:
        pixels = pixels[..., None].expand(-1, -1, 3)
    return pixels[..., :3].permute(2, 0, 1).contiguous()


def load_photo(path: str | Path) -> torch.Tensor:
    """Decode any image file to uint8 RGB (3, H, W): grey is repeated, transparency composited on white."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            return TF.pil_to_tensor(image.convert("RGB"))
    except FileNotFoundError as err:
        raise UserError(f"image file {path} does not exist. Check the path") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image {path} ({str(err).splitlines()[0]}). Remove or replace the file") from err


def load_image(source: str) -> torch.Tensor:
    """An embedded image by name (``astronaut``, ``brick``, …) or an image file path, as uint8 RGB."""
    if source in EMBEDDED_PHOTOS + EMBEDDED_TEXTURES:
        return embedded_image(source)
    path = Path(source).expanduser()
    if not path.is_file():
        names = ", ".join(EMBEDDED_TEXTURES + EMBEDDED_PHOTOS[:3])
        raise UserError(f"image '{source}' is neither an embedded image ({names}, …) nor an existing file")
    return load_photo(path)


def image_files(root: Path) -> list[Path]:
    """All image files under `root` (recursively), in a stable order."""
    if not root.is_dir():
        raise UserError(f"photo folder {root} does not exist. Point data.root at a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if len(files) < 2:
        raise UserError(f"{root} holds {len(files)} image files; need at least 2 (train and validation photos)")
    return files


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
    """Patches of photographs: the embedded scikit-image photos (``root: null``) or a folder of your own."""

    def __init__(
        self,
        root: str | None = None,
        patch_size: int = 64,
        train_patches: int = 1024,
        val_patches: int = 32,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        degrade: Degrade | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        on_gpu: bool | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
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
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.degrade = degrade
        self.photo_names: dict[str, list[str]] = {}
        self._train_photos: list[torch.Tensor] = []
        self._on_device: dict[str, Any] = {}

    def task_args(self) -> dict[str, Any]:
        """Restoration models learn the up-scale factor and mask channel from the degradations."""
        return self.degrade.task_args() if self.degrade is not None else {}

    def _photos(self) -> tuple[list[str], list[torch.Tensor]]:
        if self.root is None:
            return list(EMBEDDED_PHOTOS), [embedded_image(name) for name in EMBEDDED_PHOTOS]
        files = image_files(self.root)
        return [str(f.relative_to(self.root)) for f in files], [load_photo(f) for f in files]

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        names, photos = self._photos()
        train_idx, val_idx = split_train_val(len(photos), self.val_fraction, self.split_seed)
        self.photo_names = {"train": [names[i] for i in train_idx], "val": [names[i] for i in val_idx]}
        train = [photos[i] for i in train_idx]
        val = [photos[i] for i in val_idx]
        self._train_photos = [at_least(p, self.patch_size) for p in train]
        self._splits = {
            "train": PatchDataset(train, self.patch_size, self.train_patches, self.degrade, seed=None),
            "val": PatchDataset(val, self.patch_size, self.val_patches, self.degrade, seed=self.split_seed),
            # No third photo set is held out: the test stage re-scores other fixed patches of the val photos.
            "test": PatchDataset(val, self.patch_size, self.val_patches, self.degrade, seed=self.split_seed + 1),
        }

    # -- the device path -----------------------------------------------------------------------------
    def device_resident(self) -> bool:
        """Patches made on the training device (`on_gpu`; auto: when training on a GPU)."""
        if self.on_gpu is None:
            return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return bool(self.on_gpu)

    def _loader(self, split: str, shuffle: bool) -> Any:
        if not self.device_resident():
            return super()._loader(split, shuffle)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
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
