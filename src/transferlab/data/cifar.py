"""CIFAR-10/100 from the official python pickle batches, laid out as torchvision's dataset classes say.

The official ``test`` batch is the test split; validation is carved from the 50k training images by the
base class. Nothing is downloaded unless ``download: true``; a missing dataset is a one-line error naming
the folder and archive to place there.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive

from transferlab.data.base import ClassificationDataModule, TensorImageDataset, resize_uint8
from transferlab.utils.errors import UserError, describe

ARCHIVES = {CIFAR10: "cifar-10-python.tar.gz", CIFAR100: "cifar-100-python.tar.gz"}
URL = "https://www.cs.toronto.edu/~kriz/"


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles the official batches (dicts, lists, strings, numpy arrays) and nothing that could run code.

    The CIFAR "python version" is a pickle; a plain ``pickle.load`` (torchvision's) runs whatever a crafted
    batch file names. Only the globals numpy needs to rebuild an array are allowed here.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only data")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR python batch (or meta file) as a dict, read without running code."""
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with open(path, "rb") as f:
            entry = _DataOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(
            f"{path} is not a CIFAR python batch ({describe(err)}). Re-extract the official archive"
        ) from err
    if not isinstance(entry, dict):
        raise UserError(f"{path} is not a CIFAR python batch (holds a {type(entry).__name__}, not a dict)")
    return entry


def _field(entry: dict[str, Any], keys: tuple[str, ...], path: Path) -> Any:
    for key in keys:
        if key in entry:
            return entry[key]
    raise UserError(f"{path} is not a CIFAR python batch (no '{keys[0]}' entry). Re-extract the official archive")


def read_cifar(root: Path, dataset_cls: type[CIFAR10], train: bool) -> tuple[np.ndarray, list[int], list[str]]:
    """Images (N, 32, 32, 3) uint8, labels and class names of one official split, laid out as torchvision's
    dataset class expects (its file list and meta names), read with the data-only unpickler."""
    folder = root / dataset_cls.base_folder
    files = dataset_cls.train_list if train else dataset_cls.test_list
    data, labels = [], []
    for name, _md5 in files:
        entry = read_batch(folder / name)
        images = np.asarray(_field(entry, ("data",), folder / name))
        if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
            raise UserError(
                f"{folder / name}: 'data' must be uint8 rows of 3072 values, got {images.dtype} {images.shape}"
            )
        batch_labels = list(_field(entry, ("labels", "fine_labels"), folder / name))
        if len(batch_labels) != len(images):
            raise UserError(f"{folder / name}: {len(images)} images but {len(batch_labels)} labels")
        data.append(images)
        labels += [int(label) for label in batch_labels]
    meta_path = folder / dataset_cls.meta["filename"]
    classes = [str(c) for c in _field(read_batch(meta_path), (dataset_cls.meta["key"],), meta_path)]
    images = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    if labels and not 0 <= min(labels) <= max(labels) < len(classes):
        raise UserError(f"{folder}: labels outside 0..{len(classes) - 1} (the meta file lists {len(classes)} classes)")
    return images, labels, classes


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
            cls = self.dataset_cls
            try:  # the archive's md5 is verified; nothing is unpickled here
                download_and_extract_archive(cls.url, str(self.root), filename=cls.filename, md5=cls.tgz_md5)
            except OSError as err:
                raise UserError(
                    f"could not download {ARCHIVES[self.dataset_cls]} ({err}). Place it, extracted, in "
                    f"{self.root}/{self.dataset_cls.base_folder}/ and set data.download=false"
                ) from err

    def load_split(self, split: str) -> TensorImageDataset:
        try:
            data, labels, classes = read_cifar(self.root, self.dataset_cls, train=split == "train")
        except FileNotFoundError as err:
            raise UserError(
                f"{self.dataset_cls.__name__} not found: expected the python batches in "
                f"{self.root / self.dataset_cls.base_folder}/. Extract {ARCHIVES[self.dataset_cls]} "
                f"(from {URL}) into {self.root}, point data.root at it, or pass data.download=true online"
            ) from err
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
        if self.image_size != images.shape[-1]:  # resize once for the whole split, not per sample
            images = resize_uint8(images, self.image_size)
        return TensorImageDataset(images, torch.as_tensor(labels), classes)
