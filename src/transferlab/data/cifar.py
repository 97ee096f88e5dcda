"""CIFAR-10/100 from the official python pickle batches, via torchvision's dataset classes.

The official ``test`` batch is the test split; validation is carved from the 50k training images by the
base class. Nothing is downloaded unless ``download: true``; a missing dataset is a one-line error naming
the folder and archive to place there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, CIFAR100

from transferlab.data.base import ClassificationDataModule, TensorImageDataset
from transferlab.utils.errors import UserError

ARCHIVES = {CIFAR10: "cifar-10-python.tar.gz", CIFAR100: "cifar-100-python.tar.gz"}
URL = "https://www.cs.toronto.edu/~kriz/"


def _presence_checked(dataset_cls: type[CIFAR10]) -> type[CIFAR10]:
    """The torchvision class, but checking that batch files exist instead of hashing 170 MB on each start.

    Checksums still guard downloads (torchvision verifies the archive); re-hashing extracted files at
    every run buys nothing and rejects batches re-written in the official format (as the tests do).
    """
    return type(
        dataset_cls.__name__,
        (dataset_cls,),
        {
            "train_list": [(name, None) for name, _ in dataset_cls.train_list],
            "test_list": [(name, None) for name, _ in dataset_cls.test_list],
            "meta": {**dataset_cls.meta, "md5": None},
        },
    )


class CIFARDataModule(ClassificationDataModule):
    """CIFAR-10 (`num_classes=10`) or CIFAR-100 (`num_classes=100`) from ``root``."""

    def __init__(self, root: str, variant: int = 10, download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if variant not in (10, 100):
            raise UserError(f"data.variant must be 10 or 100 (CIFAR-10 or CIFAR-100), got {variant}")
        self.root = Path(root).expanduser()
        self.dataset_cls = CIFAR10 if variant == 10 else CIFAR100
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            try:
                self.dataset_cls(str(self.root), train=True, download=True)
            except OSError as err:
                raise UserError(
                    f"could not download {ARCHIVES[self.dataset_cls]} ({err}). Place it, extracted, in "
                    f"{self.root}/{self.dataset_cls.base_folder}/ and set data.download=false"
                ) from err

    def load_split(self, split: str) -> TensorImageDataset:
        cls = _presence_checked(self.dataset_cls)
        try:
            dataset = cls(str(self.root), train=split == "train", download=False)
        except RuntimeError as err:
            raise UserError(
                f"{self.dataset_cls.__name__} not found: expected the python batches in "
                f"{self.root / self.dataset_cls.base_folder}/. Extract {ARCHIVES[self.dataset_cls]} "
                f"(from {URL}) into {self.root}, point data.root at it, or pass data.download=true online"
            ) from err
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        if self.image_size != images.shape[-1]:  # resize once for the whole split, not per sample
            images = resize_uint8(images, self.image_size)
        return TensorImageDataset(images, torch.as_tensor(dataset.targets), dataset.classes)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear (antialiased) resize of a uint8 batch, in chunks to bound memory."""
    out = [
        F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for part in images.split(chunk)
    ]
    return torch.cat(out)
