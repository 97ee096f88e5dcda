"""ImageNet-style folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

``val/`` is the held-out split reported as *test* (as ImageNet results are); validation for model
selection is carved from ``train/``. Any image mode is converted to RGB (`images.decode_rgb`); a file that cannot be
decoded is skipped with a warning naming it and listed in ``metrics.json`` (``data.on_bad_file=skip``, the
default), or stops the run with its path (``data.on_bad_file=error``).

Decoding JPEGs on CPU workers caps a fast GPU (15 workers decode ~3k images/s of 500×375 photos; ResNet-18
at 224 px trains ~11k/s). ``python -m transferlab.data.imagefolder ROOT --size 256`` decodes the folder
once into a pre-resized uint8 cache (``ROOT/cache-256px.pt``: short side resized to 256, centre-cropped
square); ``data.cache=256`` then trains from memory, on the GPU-resident path with the augmentation on the
device, like CIFAR.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from transferlab.constants import DEFAULT_RESIZE_RATIO, IMAGE_EXTENSIONS
from transferlab.data.base import (
    BatchedDataModule,
    ClassificationDataModule,
    TensorImageDataset,
    Transform,
    center_crop_uint8,
    resize_uint8,
)
from transferlab.data.device_augment import flatten_transforms
from transferlab.data.images import BadFiles, SkippingLoader, decode_rgb
from transferlab.data.jpeg_batches import EncodedImages, TrainCrops, collate_encoded, decode_batch, eval_crops
from transferlab.utils.errors import UserError
from transferlab.utils.io import atomic_open

if TYPE_CHECKING:
    from transferlab.backbones import Preprocessing

DECODE_MODES = (None, "cpu", "device")
CACHE_FORMAT = "transferlab-imagefolder-cache"
CACHE_VERSION = 1

SPLIT_FOLDERS = {"train": "train", "test": "val"}


# -- the pre-resized cache -------------------------------------------------------------------------
def cache_path(root: Path, size: int) -> Path:
    return root / f"cache-{size}px.pt"


def square_image(path: str, size: int) -> torch.Tensor:
    """Decode `path`, resize its short side to `size` (antialiased) and centre-crop a `size`² square."""
    image = decode_rgb(path)
    return v2.functional.center_crop(v2.functional.resize(image, [size], antialias=True), [size, size])


def _square_star(args: tuple[str, int]) -> torch.Tensor:
    return square_image(*args)


def write_cache(root: Path, size: int, workers: int = 0) -> Path:
    """Decode every image of ``root/train`` and ``root/val`` once into ``root/cache-<size>px.pt``.

    Written to a temporary file and renamed: a failure (an undecodable file is named) leaves no cache.
    """
    if size < 8:
        raise UserError(f"cache size must be at least 8 px, got {size}")
    splits: dict[str, dict[str, Any]] = {}
    classes: list[str] | None = None
    for folder in SPLIT_FOLDERS.values():
        dataset = _image_folder(root / folder)
        if classes is not None and dataset.classes != classes:
            raise UserError(f"{root}/train and {root}/val have different class folders. Make them match")
        classes = dataset.classes
        jobs = [(path, size) for path, _ in dataset.samples]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                images = list(pool.map(_square_star, jobs, chunksize=32))
        else:
            images = [square_image(*job) for job in jobs]
        splits[folder] = {
            "images": torch.stack(images),
            "targets": torch.tensor(dataset.targets, dtype=torch.long),
            "files": [str(Path(path).relative_to(root)) for path, _ in dataset.samples],
        }
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "size": size, "classes": classes, "splits": splits}
    target = cache_path(root, size)
    with atomic_open(target, elsewhere="") as out:  # a full disk: one line with the free space, no cache left
        torch.save(payload, out)
    return target


def read_cache(root: Path, size: int) -> dict[str, Any]:
    """The cache written by `write_cache`, checked (it is data: loaded with ``weights_only=True``)."""
    path = cache_path(root, size)
    if not path.is_file():
        raise UserError(
            f"no {size} px cache at {path}. Create it once with: python -m transferlab.data.imagefolder {root} "
            f"--size {size}, or set data.cache=null to read the image files"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise UserError(f"cannot read cache {path} ({err}). Delete it and create it again") from err
    ok = isinstance(payload, dict) and payload.get("format") == CACHE_FORMAT and payload.get("size") == size
    splits = payload.get("splits") if ok else None
    if not ok or payload.get("version") != CACHE_VERSION or set(splits or {}) != set(SPLIT_FOLDERS.values()):
        raise UserError(
            f"{path} is not a transferlab {size} px image-folder cache (version {CACHE_VERSION}). "
            "Delete it and create it again"
        )
    for name, split in splits.items():
        images, targets = split.get("images"), split.get("targets")
        if not (
            isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.shape[1:] == (3, size, size)
            and isinstance(targets, torch.Tensor)
            and len(targets) == len(images)
        ):
            raise UserError(f"{path}: the {name} split is malformed. Delete the cache and create it again")
    return payload


def _image_folder(folder: Path, bad_files: BadFiles | None = None) -> ImageFolder:
    if not folder.is_dir():
        raise UserError(
            f"image folder {folder} does not exist. Point data.root at a folder with train/<class>/ "
            "and val/<class>/ image files"
        )
    try:
        return ImageFolder(str(folder), loader=SkippingLoader(bad_files or BadFiles("error")))
    except FileNotFoundError as err:
        raise UserError(
            f"no images in {folder} ({err}). Expected {folder}/<class>/<image> with extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}"
        ) from err


# -- the resolution a folder's images call for ------------------------------------------------------
AUTO_SIZE_BOUNDS = (96, 224)  # ImageNet features: linear probe 0.43 / 0.90 / 0.93 at 32 / 64 / 96 px on digits
AUTO_SIZE_SAMPLE = 256


@cache
def auto_image_size(root: str) -> int:
    """The training resolution for the images under ``root/train``: their median short side, rounded to a
    multiple of 32 and kept within `AUTO_SIZE_BOUNDS` (tiny images are upscaled, photos brought down to 224).

    Only the headers of up to `AUTO_SIZE_SAMPLE` files (evenly spread, in sorted order) are read.
    """
    dataset = _image_folder(Path(root).expanduser() / SPLIT_FOLDERS["train"])
    paths = [path for path, _ in dataset.samples]
    step = max(1, len(paths) // AUTO_SIZE_SAMPLE)
    sides = []
    for path in paths[::step]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (UnidentifiedImageError, OSError):
            continue  # unreadable: skipped or reported by the loader, as data.on_bad_file says
    if not sides:
        raise UserError(f"none of the images under {root}/train can be read. Check data.root")
    median = sorted(sides)[len(sides) // 2]
    low, high = AUTO_SIZE_BOUNDS
    return int(min(max(32 * round(median / 32), low), high))


class ImageFolderDataModule(ClassificationDataModule):
    """Datasets laid out as one sub-folder per class, for a user's own data or ImageNet.

    With `cache` (a size in px) the images come from the pre-resized cache of that size, in memory. Evaluation
    resizes the short side to ``image_size * resize_ratio`` and centre-crops; ``resize_ratio`` null follows the
    model's weights (`follow_weights`: 1 / crop_pct for timm, resize / crop size for torchvision), 256/224 when
    nothing says.
    """

    def __init__(
        self,
        root: str,
        resize_ratio: float | None = None,
        cache: int | None = None,
        decode: str | None = None,
        on_bad_file: str = "skip",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bad_files = BadFiles(on_bad_file)
        if decode not in DECODE_MODES:
            raise UserError(f"data.decode must be one of {', '.join(map(str, DECODE_MODES))}, got '{decode}'")
        self.root = Path(root).expanduser()
        if resize_ratio is not None and (isinstance(resize_ratio, bool) or not resize_ratio >= 1):
            raise UserError(
                f"data.resize_ratio must be >= 1 (eval resizes the short side to image_size * ratio, then crops "
                f"image_size), got {resize_ratio}. Use null to follow the weights"
            )
        self.resize_ratio = DEFAULT_RESIZE_RATIO if resize_ratio is None else float(resize_ratio)
        self.resize_source = "ImageNet's 256/224" if resize_ratio is None else "data.resize_ratio"
        self._resize_from_weights = resize_ratio is None
        self.cache = cache
        self.decode = decode
        self._cache: dict[str, Any] | None = None
        self._train_crops: TrainCrops | None = None

    def follow_weights(self, preprocessing: Preprocessing | None) -> None:
        """``data.resize_ratio: null``: the eval resize the weights expect (before `setup`, which applies it)."""
        if self._resize_from_weights and preprocessing is not None:
            if self._splits:
                raise RuntimeError("follow_weights after setup: the eval transforms are already built")
            self.resize_ratio = preprocessing.resize_ratio
            self.resize_source = preprocessing.source

    def preprocessing_record(self) -> dict[str, Any]:
        return {"eval_resize_ratio": self.resize_ratio, "eval_resize_source": self.resize_source}

    def load_split(self, split: str) -> ImageFolder | TensorImageDataset:
        if self.cache is not None:
            return self._cached_split(split)
        return _image_folder(self.root / SPLIT_FOLDERS[split], self.bad_files)

    # -- JPEG decoding on the device -----------------------------------------------------------------
    def _decodes_on_device(self) -> bool:
        """``data.decode``: device (workers only read file bytes; one batched decode per step on the training
        device, then RandomResizedCrop + flip there), cpu (PIL in the workers), or null = device when
        training on a GPU and the augment preset is RandomResizedCrop + flip (`TrainCrops`), else cpu."""
        if self.cache is not None or self.decode == "cpu":
            return False
        self._train_crops = TrainCrops.from_preset(self.augment, self.image_size)
        if self.decode == "device":
            if self._train_crops is None:
                raise UserError(
                    "data.decode=device supports the imagenet augment preset (RandomResizedCrop + flip) only. "
                    "Use data/augment=imagenet or data.decode=cpu"
                )
            return True
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return on_gpu and self._train_crops is not None

    def _loader(self, split: str, shuffle: bool) -> Any:
        if not self._decodes_on_device():
            return super()._loader(split, shuffle)
        source, indices = self._sources[split]
        encoded: Dataset = EncodedImages(source.samples, source.classes)  # workers only read file bytes
        if indices is not None:
            encoded = Subset(encoded, indices)
        return BatchedDataModule._loader(self, split, shuffle, dataset=encoded, collate_fn=collate_encoded)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, tuple | list) and isinstance(batch[0], list):  # encoded bytes stay on the host
            return batch[0], batch[1].to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not (isinstance(batch, tuple | list) and isinstance(batch[0], list)):
            return batch
        encoded, targets = batch
        images = decode_batch(encoded, targets.device)
        if self.trainer is not None and self.trainer.training:
            return self._train_crops(images), targets
        return eval_crops(images, self.image_size, self.resize_ratio), targets

    def _cached_split(self, split: str) -> TensorImageDataset:
        """A split of the cache: training images kept at the cache size when the augmentation crops and resizes
        them (RandomResizedCrop), otherwise brought to `image_size` once; test images fitted as for evaluation."""
        if self._cache is None:
            self._cache = read_cache(self.root, self.cache)
        stored = self._cache["splits"][SPLIT_FOLDERS[split]]
        images = stored["images"]
        if split == "test":
            images = self.fit_eval_images(images)
        elif not self._augment_sets_size():
            images = resize_uint8(images, self.image_size)
        return TensorImageDataset(images, stored["targets"], self._cache["classes"])

    def _augment_sets_size(self) -> bool:
        return any(isinstance(step, v2.RandomResizedCrop) for step in flatten_transforms(self.augment))

    def fit_eval_images(self, images: torch.Tensor) -> torch.Tensor:
        """Square images resized to ``image_size * resize_ratio`` and centre-cropped, as `eval_transform` does."""
        if images.shape[-1] == self.image_size:
            return images
        return center_crop_uint8(resize_uint8(images, round(self.image_size * self.resize_ratio)), self.image_size)

    def _fit_to_size(self) -> list[Transform]:
        return [v2.Resize(round(self.image_size * self.resize_ratio)), v2.CenterCrop(self.image_size)]

    def train_transform(self) -> Transform | None:
        if self.cache is not None:  # in memory, already at the size the augmentation expects (see _cached_split)
            return self.augment
        # The augment preset (e.g. RandomResizedCrop) normally sets the size; the final resize+crop makes
        # presets that do not (flip_rotate, enhance) still produce batchable images. No-op when sized.
        steps = [self.augment] if self.augment is not None else []
        return v2.Compose([*steps, v2.Resize(self.image_size), v2.CenterCrop(self.image_size)])

    def eval_transform(self) -> Transform:
        return v2.Compose(self._fit_to_size())

    def file_transform(self) -> Transform:
        return self.eval_transform()  # tl-predict prepares a file exactly as tl-eval prepares a test image


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Decode an ImageNet-style folder once into a pre-resized uint8 cache (train with data.cache=SIZE)."
    )
    parser.add_argument("root", type=Path, help="folder with train/<class>/ and val/<class>/ images")
    parser.add_argument("--size", type=int, default=256, help="short side resize, then centre square crop (px)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    args = parser.parse_args()
    try:
        target = write_cache(args.root.expanduser(), args.size, args.workers)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
