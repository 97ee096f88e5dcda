"""ImageNet-style folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

``val/`` is the held-out split reported as *test* (as ImageNet results are); validation for model
selection is carved from ``train/``. Any image mode is converted to RGB; a file that cannot be decoded
stops the run with its path, so it can be removed or replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from transferlab.data.base import ClassificationDataModule, Transform
from transferlab.utils.errors import UserError

SPLIT_FOLDERS = {"train": "train", "test": "val"}


def load_rgb(path: str) -> torch.Tensor:
    """Decode any image file to a uint8 RGB tensor (C, H, W); grey, palette, CMYK and alpha are converted."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            return v2.functional.pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot decode image {path} ({err}). Remove or replace the file") from err


class ImageFolderDataModule(ClassificationDataModule):
    """Datasets laid out as one sub-folder per class, for a user's own data or ImageNet."""

    def __init__(self, root: str, resize_ratio: float = 256 / 224, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.resize_ratio = resize_ratio

    def load_split(self, split: str) -> ImageFolder:
        folder = self.root / SPLIT_FOLDERS[split]
        if not folder.is_dir():
            raise UserError(
                f"image folder {folder} does not exist. Point data.root at a folder with train/<class>/ "
                "and val/<class>/ image files"
            )
        try:
            return ImageFolder(str(folder), loader=load_rgb)
        except FileNotFoundError as err:
            raise UserError(
                f"no images in {folder} ({err}). Expected {folder}/<class>/<image> with extensions "
                f"{', '.join(IMG_EXTENSIONS)}"
            ) from err

    def _fit_to_size(self) -> list[Transform]:
        return [v2.Resize(round(self.image_size * self.resize_ratio)), v2.CenterCrop(self.image_size)]

    def train_transform(self) -> Transform:
        # The augment preset (e.g. RandomResizedCrop) normally sets the size; the final resize+crop makes
        # presets that do not (flip_rotate, enhance) still produce batchable images. No-op when sized.
        steps = [self.augment] if self.augment is not None else []
        return v2.Compose([*steps, v2.Resize(self.image_size), v2.CenterCrop(self.image_size)])

    def eval_transform(self) -> Transform:
        return v2.Compose(self._fit_to_size())
